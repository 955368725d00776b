//! `shoal`: the command line of the Shoal orchestrator.

mod client;
mod cmd;
mod control_plane;
mod host_agent;
mod logging;
mod output;
mod policy_args;
mod server_metrics;
mod task_logs;
mod view;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Shoal keeps declared services running on one Docker host or a small swarm
/// of them: replicas, restart policies, resource limits, placement and
/// failover, declared as Kubernetes-style resources.
///
/// Start everything on this host with `shoal up`, then `shoal apply -f
/// examples/web.yaml --wait`, `shoal get services`, `shoal ps web`. The API
/// speaks the Kubernetes dialect, so kubectl works too. Check manifests
/// offline with `shoal validate`.
#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    propagate_version = true,
    args_override_self = true
)]
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
    Operator(cmd::operator::Args),
    Agent(cmd::agent::Args),
    Apply(cmd::apply::Args),
    Get(cmd::get::Args),
    Ps(cmd::ps::Args),
    Describe(cmd::describe::Args),
    Events(cmd::events::Args),
    Logs(cmd::logs::Args),
    Exec(cmd::exec::Args),
    Top(cmd::top::Args),
    Scale(cmd::scale::Args),
    Rollback(cmd::rollback::Args),
    Resume(cmd::resume::Args),
    Delete(cmd::delete::Args),
    Host(cmd::host::Args),
    JoinToken(cmd::join_token::Args),
    Completion(cmd::completion::Args),
}

/// Output piped into a reader that quits early (`shoal get tasks -w | head`)
/// ends the command quietly, as for other Unix tools, instead of a panic
/// report: Rust ignores SIGPIPE, so `print!` panics on the broken pipe.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Up(a) => cmd::up::run(a),
        Command::JoinToken(a) => cmd::join_token::run(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Crds(a) => cmd::crds::run(a),
        Command::Server(a) => cmd::server::run(a),
        Command::Operator(a) => cmd::operator::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Apply(a) => cmd::apply::run(a),
        Command::Get(a) => cmd::get::run(a),
        Command::Ps(a) => cmd::ps::run(a),
        Command::Describe(a) => cmd::describe::run(a),
        Command::Events(a) => cmd::events::run(a),
        Command::Logs(a) => cmd::logs::run(a),
        Command::Exec(a) => cmd::exec::run(a),
        Command::Top(a) => cmd::top::run(a),
        Command::Scale(a) => cmd::scale::run(a),
        Command::Rollback(a) => cmd::rollback::run(a),
        Command::Resume(a) => cmd::resume::run(a),
        Command::Delete(a) => cmd::delete::run(a),
        Command::Host(a) => cmd::host::run(a),
        Command::Completion(a) => cmd::completion::run(a, Cli::command()),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
