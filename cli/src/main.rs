//! `shoal`: the command line of the Shoal orchestrator.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shoal keeps declared services running on one Docker host or a small swarm
/// of them: replicas, restart policies, resource limits, placement and
/// failover, declared as Kubernetes-style resources.
///
/// Built so far: resource types and validation (`shoal validate`) and the
/// CRDs (`shoal crds`). The control plane (`shoal up`, `shoal server`), the
/// host agent and the rest of the CLI arrive in later releases.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Validate(cmd::validate::Args),
    Crds(cmd::crds::Args),
    Server(cmd::server::Args),
    Agent(cmd::agent::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Validate(a) => cmd::validate::run(a),
        Command::Crds(a) => cmd::crds::run(a),
        Command::Server(a) => cmd::server::run(a),
        Command::Agent(a) => cmd::agent::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
