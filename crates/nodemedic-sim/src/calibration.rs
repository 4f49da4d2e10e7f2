//! The fault model held against a second public dataset (issue 17, point 8): Meta's research clusters
//! (Kokolis et al., HPCA 2025, arXiv:2410.21680), whose mean time between failures by job size is
//! quoted by Crusoe's AutoClusters post (docs/fault-model.md, sources 2 and 4). The model's rate comes
//! from Llama 3 alone; this module says how far the two disagree, and [`rate_points`] feeds that
//! disagreement to the sensitivity sweep as the fault rate's plausible range.

use crate::faults::FaultModel;
use crate::sweep::{Param, Point};

/// One published figure: a job on `gpus` GPUs fails on average every `mtbf_hours`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishedMtbf {
    pub gpus: u32,
    pub mtbf_hours: f64,
    /// Where the figure is read.
    pub source: &'static str,
}

const CRUSOE_QUOTING_KOKOLIS: &str = "Kokolis et al. 2025 (RSC-1/RSC-2, 150 M A100 GPU-hours) as quoted by Crusoe's AutoClusters post";

/// "At 8 GPUs, mean time between failures (MTBF) is around 47 days … At 1,024 GPUs, MTBF drops to
/// about 8 hours … At 16,384 GPUs, MTBF is around 1.8 hours."
pub const KOKOLIS_JOB_MTBF: [PublishedMtbf; 3] = [
    PublishedMtbf { gpus: 8, mtbf_hours: 47.0 * 24.0, source: CRUSOE_QUOTING_KOKOLIS },
    PublishedMtbf { gpus: 1_024, mtbf_hours: 8.0, source: CRUSOE_QUOTING_KOKOLIS },
    PublishedMtbf { gpus: 16_384, mtbf_hours: 1.8, source: CRUSOE_QUOTING_KOKOLIS },
];

/// The model's mean time between unexpected interruptions for a job spread over `gpus` GPUs, in hours:
/// every GPU-day carries `unexpected_per_gpu_day` interruptions on average (lemons included: they move
/// faults between nodes, not the fleet's total).
pub fn model_job_mtbf_hours(model: &FaultModel, gpus: u32) -> f64 {
    24.0 / (model.unexpected_per_gpu_day * f64::from(gpus))
}

/// One comparison: how many times more often the published figure says a job fails than the model does
/// (above 1: the model is the more optimistic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disagreement {
    pub published: PublishedMtbf,
    pub model_mtbf_hours: f64,
    pub rate_ratio: f64,
}

/// The model against each published figure.
pub fn against_kokolis(model: &FaultModel) -> Vec<Disagreement> {
    KOKOLIS_JOB_MTBF
        .iter()
        .map(|&published| {
            let model_mtbf_hours = model_job_mtbf_hours(model, published.gpus);
            Disagreement { published, model_mtbf_hours, rate_ratio: model_mtbf_hours / published.mtbf_hours }
        })
        .collect()
}

/// The sweep's fault-rate scenarios: the model's rate multiplied by the smallest and the largest ratio
/// the second dataset implies.
pub fn rate_points(model: &FaultModel) -> Vec<Point> {
    let ratios: Vec<f64> = against_kokolis(model).iter().map(|d| d.rate_ratio).collect();
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(0.0, f64::max);
    // One decimal: a scenario label people can read, and the same every run.
    let round = |x: f64| (x * 10.0).round() / 10.0;
    vec![Point { param: Param::FaultRateMultiplier, value: round(low) }, Point { param: Param::FaultRateMultiplier, value: round(high) }]
}

/// The comparison as text, for `nodemedic simulate --calibration` and docs/fault-model.md.
pub fn render(model: &FaultModel) -> String {
    let mut out = String::from("| job size (GPUs) | published MTBF | model MTBF | published rate / model rate |\n|---:|---:|---:|---:|\n");
    for d in against_kokolis(model) {
        out.push_str(&format!(
            "| {} | {:.1} h | {:.1} h | {:.1}x |\n",
            d.published.gpus, d.published.mtbf_hours, d.model_mtbf_hours, d.rate_ratio
        ));
    }
    out.push_str(&format!("source: {CRUSOE_QUOTING_KOKOLIS}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llama3_rate_is_more_optimistic_than_metas_research_clusters_at_every_job_size() {
        let model = FaultModel::default();
        let found = against_kokolis(&model);
        let ratios: Vec<f64> = found.iter().map(|d| (d.rate_ratio * 10.0).round() / 10.0).collect();
        // 16,384 GPUs: 3.1 h against 1.8 h; 1,024: 49.5 h against 8 h; 8: 264 days against 47.
        assert_eq!(ratios, vec![5.6, 6.2, 1.7], "{found:?}");
        assert!((found[2].model_mtbf_hours - 3.09).abs() < 0.01, "{found:?}");
    }

    #[test]
    fn the_sweep_covers_the_rates_the_second_dataset_implies() {
        let points = rate_points(&FaultModel::default());
        assert_eq!(points.iter().map(|p| p.value).collect::<Vec<_>>(), vec![1.7, 6.2]);
        let faster = points[1].apply(&FaultModel::default());
        let ratio = faster.unexpected_per_gpu_day / FaultModel::default().unexpected_per_gpu_day;
        assert!((ratio - 6.2).abs() < 1e-9, "{ratio}");
    }
}
