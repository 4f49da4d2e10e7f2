//! `nodemedic-agent`: the node agent. `run` is the DaemonSet's loop (probes → Node conditions, node-local
//! reboot / reimage); `check --once` runs the configured probes one time and prints each probe's verdict as a
//! table or JSON; `bench` measures memory and CPU per probe cycle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nodemedic_agent::agent::Agent;
use nodemedic_agent::check::{load_catalog, render_table, run_once};
use nodemedic_agent::metrics::AgentMetrics;
use nodemedic_agent::remediate::CommandHost;
use nodemedic_agent::selffence::{self, SelfFencer};
use nodemedic_agent::{AgentConfig, Health};
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "nodemedic-agent", version, about = "nodemedic's node agent: GPU, kernel-log, network and custom health probes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the configured probes and print their verdicts.
    Check {
        /// Run every probe once and exit (the only mode this build has).
        #[arg(long)]
        once: bool,
        /// The agent configuration (YAML). Without it, only the NVML probe runs.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the embedded fault catalog (YAML).
    Catalog,
    /// Run the agent on this node: probes on their schedules publish Node conditions, and reboot / reimage
    /// requests in this node's NodeRemediation are carried out once per attempt.
    Run {
        /// The agent configuration (YAML).
        #[arg(long, value_name = "FILE", env = "NODEMEDIC_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// This node's name (the DaemonSet passes it through the downward API).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// Replaces `remediation.state_file`.
        #[arg(long, value_name = "FILE", env = "NODEMEDIC_STATE_FILE")]
        state_file: Option<PathBuf>,
        /// Replaces `taint_prefix`.
        #[arg(long, env = "NODEMEDIC_TAINT_PREFIX")]
        taint_prefix: Option<String>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
        /// Serve Prometheus metrics (`/metrics`) and `/healthz` on this address, e.g. 0.0.0.0:9465.
        /// Off when not given.
        #[arg(long, env = "NODEMEDIC_AGENT_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Run every configured probe for a number of cycles and print peak RSS and CPU per cycle.
    Bench {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, default_value_t = 100)]
        cycles: u32,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("nodemedic-agent: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Catalog => {
            print!("{}", nodemedic_agent::catalog::DEFAULT_CATALOG_YAML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, node, state_file, taint_prefix, json_logs, metrics_listen } => {
            let mut config = match config {
                Some(path) => AgentConfig::load(&path).with_context(|| format!("loading {}", path.display()))?,
                None => AgentConfig::default(),
            };
            if let Some(path) = state_file {
                config.remediation.state_file = path;
            }
            if let Some(prefix) = taint_prefix {
                config.taint_prefix = prefix;
            }
            anyhow::ensure!(!node.trim().is_empty(), "the node name is empty (set NODE_NAME or --node)");
            init_logging(json_logs);
            let catalog = load_catalog(&config).context("loading the fault catalog")?;
            // One thread runs the async loops (API calls, the watch); probes and the kernel-log follower have threads of
            // their own, so no worker pool is needed.
            let runtime = tokio::runtime::Builder::new_current_thread().max_blocking_threads(4).enable_all().build()?;
            runtime.block_on(run_agent(config, catalog, node, metrics_listen))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { config, cycles, json } => {
            let config = AgentConfig::load(&config).with_context(|| format!("loading {}", config.display()))?;
            let catalog = load_catalog(&config).context("loading the fault catalog")?;
            let report = nodemedic_agent::bench::run(&config, &catalog, cycles);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).context("rendering JSON")?);
            } else {
                print!("{}", nodemedic_agent::bench::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { once, config, json } => {
            anyhow::ensure!(once, "use `check --once` (the continuous agent is `nodemedic-agent run`)");
            let config = match config {
                Some(path) => AgentConfig::load(&path).with_context(|| format!("loading {}", path.display()))?,
                None => {
                    let mut config = AgentConfig::default();
                    config.probes.nvml = Some(Default::default());
                    config
                }
            };
            let catalog = load_catalog(&config).context("loading the fault catalog")?;
            let reports = run_once(&config, &catalog);
            if json {
                println!("{}", serde_json::to_string_pretty(&reports).context("rendering JSON")?);
            } else {
                print!("{}", render_table(&reports));
            }
            let unhealthy = reports.iter().any(|r| r.verdict.health == Health::Unhealthy);
            Ok(if unhealthy { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run_agent(
    config: AgentConfig,
    catalog: nodemedic_agent::Catalog,
    node: String,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(AgentMetrics::new(&node));
    if let Some(address) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("listening on {address}"))?;
        let bound = listener.local_addr().context("reading the metrics address")?;
        tracing::info!(address = %bound, "serving /metrics");
        let served = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = nodemedic_agent::metrics::serve(listener, served, std::future::pending()).await {
                tracing::error!(%error, "the metrics listener stopped");
            }
        });
    }
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let host = CommandHost { config: config.remediation.clone() };
    let fencer = config.self_fencing.clone().map(|config| SelfFencer { client: client.clone(), node: node.clone(), config });
    let slot = match &fencer {
        Some(f) => f.open_watchdog().context("self-fencing")?,
        None => Default::default(),
    };
    let self_fencing = async {
        match fencer {
            Some(f) => f.run(slot.clone()).await.context("self-fencing stopped"),
            None => std::future::pending().await,
        }
    };
    let agent = Agent { client, node, config: Arc::new(config), catalog: Arc::new(catalog), host: &host };
    tracing::info!(node = %agent.node, probes = ?nodemedic_agent::check::configured_probes(&agent.config), "nodemedic-agent running");
    let ended = tokio::select! {
        result = agent.run_measured(&metrics) => result.context("the agent stopped"),
        result = self_fencing => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminated() => Ok(()),
    };
    // A deliberate stop (or an error) disarms the watchdog; once self-fencing started, it holds the
    // watchdog and nothing disarms it.
    selffence::disarm(&slot);
    ended
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
