//! `shoal`: the command line of the Shoal orchestrator.

mod cmd;
mod control_plane;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shoal keeps declared services running on one Docker host or a small swarm
/// of them: replicas, restart policies, resource limits, placement and
/// failover, declared as Kubernetes-style resources.
///
/// Start everything on this host with `shoal up`, then apply Services with
/// kubectl (the API speaks the Kubernetes dialect) or check them offline with
/// `shoal validate`.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Up(cmd::up::Args),
    Validate(cmd::validate::Args),
    Crds(cmd::crds::Args),
    Server(cmd::server::Args),
    Agent(cmd::agent::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Up(a) => cmd::up::run(a),
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
