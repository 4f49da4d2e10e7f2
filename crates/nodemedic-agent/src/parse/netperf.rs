//! Network measurements: `iperf3 -J`, `ping` summary text and Ookla `speedtest --format=json` (result or error
//! log line). A test that could not measure (peer unreachable, no servers) is Unknown, not Unhealthy: the ping
//! probe is what says a link is dead.

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::verdict::{Reason, Verdict};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetperfError {
    #[error("iperf3 output is not JSON ({message}); first line: {first_line:?}")]
    IperfNotJson { message: String, first_line: String },
    #[error("iperf3 JSON has neither an error nor end.sum_received / end.sum_sent / end.sum with bits_per_second")]
    IperfNoSummary,
    #[error("ping output has no 'packets transmitted' summary line")]
    PingNoSummary,
    #[error("ping summary {0:?} cannot be read")]
    PingBadSummary(String),
    #[error("speedtest output is not JSON ({message}); first line: {first_line:?}")]
    SpeedtestNotJson { message: String, first_line: String },
    #[error("speedtest JSON has type {0:?}; expected \"result\" or an error \"log\" line")]
    SpeedtestUnexpected(String),
    #[error("speedtest result lacks {0}")]
    SpeedtestMissing(&'static str),
}

fn first_line(text: &str) -> String {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(200).collect()
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum IperfResult {
    Throughput { bits_per_second: f64, reverse: bool },
    Error(String),
}

/// Parses `iperf3 -J` output: the receiver-side sum when present (what actually arrived), else the sender's.
pub fn parse_iperf3(text: &str) -> Result<IperfResult, NetperfError> {
    let value: Value = nodemedic_core::input::from_json_str(text)
        .map_err(|e| NetperfError::IperfNotJson { message: e.to_string(), first_line: first_line(text) })?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Ok(IperfResult::Error(error.to_string()));
    }
    let reverse = value.pointer("/start/test_start/reverse").and_then(Value::as_i64).is_some_and(|r| r != 0);
    let end = value.get("end").ok_or(NetperfError::IperfNoSummary)?;
    let bits = ["sum_received", "sum_sent", "sum"]
        .iter()
        .find_map(|k| end.get(*k).and_then(|s| s.get("bits_per_second")).and_then(Value::as_f64))
        .ok_or(NetperfError::IperfNoSummary)?;
    Ok(IperfResult::Throughput { bits_per_second: bits, reverse })
}

fn gbits(bits: f64) -> String {
    format!("{:.3} Gbit/s", bits / 1e9)
}

pub fn iperf3_verdict(result: &IperfResult, min_bits_per_second: f64) -> Verdict {
    match result {
        IperfResult::Error(error) => Verdict::unknown(Reason::ThroughputTestFailed, format!("iperf3: {error}")),
        IperfResult::Throughput { bits_per_second, .. } if *bits_per_second < min_bits_per_second => Verdict::unhealthy(
            Reason::ThroughputLow,
            format!("iperf3 measured {}, below {}", gbits(*bits_per_second), gbits(min_bits_per_second)),
        ),
        IperfResult::Throughput { bits_per_second, .. } => Verdict::healthy(format!("iperf3 measured {}", gbits(*bits_per_second))),
    }
}

/// The summary of one `ping -c N` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
    pub loss_percent: f64,
    pub avg_rtt_ms: Option<f64>,
}

/// Parses iputils / busybox ping summaries.
pub fn parse_ping(text: &str) -> Result<PingSummary, NetperfError> {
    let summary = text.lines().find(|l| l.contains("packets transmitted")).ok_or(NetperfError::PingNoSummary)?;
    let bad = || NetperfError::PingBadSummary(summary.trim().to_string());
    let mut transmitted = None;
    let mut received = None;
    let mut loss = None;
    for part in summary.split(',') {
        let part = part.trim();
        let number = part.split_whitespace().next().unwrap_or("");
        if part.ends_with("packets transmitted") {
            transmitted = number.parse::<u32>().ok();
        } else if part.ends_with("received") || part.ends_with("packets received") {
            received = number.parse::<u32>().ok();
        } else if part.ends_with("packet loss") {
            loss = number.trim_end_matches('%').parse::<f64>().ok();
        }
    }
    let transmitted = transmitted.ok_or_else(bad)?;
    let received = received.ok_or_else(bad)?;
    let loss_percent = loss.ok_or_else(bad)?;
    let avg_rtt_ms = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split_once('='))
        .and_then(|(_, values)| values.trim().split('/').nth(1))
        .and_then(|avg| avg.trim().parse::<f64>().ok());
    Ok(PingSummary { transmitted, received, loss_percent, avg_rtt_ms })
}

pub fn ping_verdict(summary: &PingSummary, max_loss_percent: f64, max_avg_rtt_ms: Option<f64>) -> Verdict {
    if summary.loss_percent > max_loss_percent {
        return Verdict::unhealthy(
            Reason::PacketLoss,
            format!(
                "ping lost {}% ({} of {} answered), bound {max_loss_percent}%",
                summary.loss_percent, summary.received, summary.transmitted
            ),
        );
    }
    if let (Some(bound), Some(avg)) = (max_avg_rtt_ms, summary.avg_rtt_ms)
        && avg > bound
    {
        return Verdict::unhealthy(Reason::LatencyHigh, format!("ping average {avg} ms above {bound} ms"));
    }
    let rtt = summary.avg_rtt_ms.map(|a| format!(", avg {a} ms")).unwrap_or_default();
    Verdict::healthy(format!("ping {}% loss{rtt}", summary.loss_percent))
}

/// An Ookla speedtest outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum SpeedtestResult {
    Measured { download_bits_per_second: f64, upload_bits_per_second: f64, latency_ms: Option<f64>, packet_loss_percent: Option<f64> },
    Error(String),
}

/// Parses `speedtest --format=json` (bandwidth is in bytes per second there).
pub fn parse_speedtest(text: &str) -> Result<SpeedtestResult, NetperfError> {
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
    let value: Value = nodemedic_core::input::from_json_str(text.trim())
        .or_else(|_| nodemedic_core::input::from_json_str(line))
        .map_err(|e| NetperfError::SpeedtestNotJson { message: e.to_string(), first_line: first_line(text) })?;
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "result" => {
            let bandwidth = |key: &'static str| {
                value
                    .pointer(&format!("/{key}/bandwidth"))
                    .and_then(Value::as_f64)
                    .map(|b| b * 8.0)
                    .ok_or(NetperfError::SpeedtestMissing(key))
            };
            Ok(SpeedtestResult::Measured {
                download_bits_per_second: bandwidth("download")?,
                upload_bits_per_second: bandwidth("upload")?,
                latency_ms: value.pointer("/ping/latency").and_then(Value::as_f64),
                packet_loss_percent: value.get("packetLoss").and_then(Value::as_f64),
            })
        }
        "log" if value.get("level").and_then(Value::as_str) == Some("error") => {
            Ok(SpeedtestResult::Error(value.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string()))
        }
        other => Err(NetperfError::SpeedtestUnexpected(other.to_string())),
    }
}

pub fn speedtest_verdict(result: &SpeedtestResult, min_download_bits_per_second: f64) -> Verdict {
    match result {
        SpeedtestResult::Error(message) => Verdict::unknown(Reason::ThroughputTestFailed, format!("speedtest: {message}")),
        SpeedtestResult::Measured { download_bits_per_second, upload_bits_per_second, .. } => {
            if *download_bits_per_second < min_download_bits_per_second {
                Verdict::unhealthy(
                    Reason::ThroughputLow,
                    format!("speedtest download {}, below {}", gbits(*download_bits_per_second), gbits(min_download_bits_per_second)),
                )
            } else {
                Verdict::healthy(format!(
                    "speedtest download {}, upload {}",
                    gbits(*download_bits_per_second),
                    gbits(*upload_bits_per_second)
                ))
            }
        }
    }
}
