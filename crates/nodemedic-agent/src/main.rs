//! `nodemedic-agent`: the node agent's operator CLI. `check --once` runs the configured probes one time and
//! prints each probe's verdict as a table or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nodemedic_agent::check::{load_catalog, render_table, run_once};
use nodemedic_agent::{AgentConfig, Health};

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
        Command::Check { once, config, json } => {
            anyhow::ensure!(once, "only `check --once` is available; the continuous agent loop is not part of this build");
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
