//! `ember`: every Ember role is a subcommand of this one binary.
//!
//! Only this crate parses arguments, installs the tracing subscriber and the metrics recorder;
//! the role crates are libraries. Logs go to stderr; machine-readable output (the listening
//! address line, bench JSON) goes to stdout.

mod bench;
mod demo;
mod observability;
mod ps;

use clap::{Parser, Subcommand};

/// Ember: a parameter-server system for real-time sparse models.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a parameter server.
    Ps(ps::PsArgs),
    /// Load generators that print JSON figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Start an in-process ps-server, drive pulls and pushes over gRPC, report what was measured.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Drive pulls, lookups or pushes against a ps-server.
    Ps(bench::BenchPsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    observability::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Ps(args) => ps::run(args).await,
            Command::Bench(BenchCommand::Ps(args)) => bench::run(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    })
}
