//! `shoal host ls`: the hosts of the cluster.

use std::process::ExitCode;

use kube::api::ListParams;
use shoal_crds::{Host, Task};

use crate::client::{ConnArgs, block_on, connect};
use crate::output::{Format, colour_stdout, print_objects};
use crate::view;

/// Manage the hosts of the cluster
///
/// Hosts join when their agent first connects (`shoal up` makes one for this
/// machine).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: HostCommand,
}

#[derive(Debug, clap::Subcommand)]
enum HostCommand {
    Ls(LsArgs),
}

/// List hosts: readiness, availability, tasks, capacity, engine
///
/// The same as `shoal get hosts`. TASKS counts the tasks that should be
/// running on each host.
#[derive(Debug, clap::Args)]
#[command(visible_alias = "list")]
struct LsArgs {
    /// Output format: wide (address, os/arch, agent, labels), yaml or json.
    #[arg(short, long, value_enum)]
    output: Option<Format>,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        HostCommand::Ls(a) => block_on(ls(a)),
    }
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let hosts = conn
        .cluster::<Host>()
        .list(&ListParams::default())
        .await
        .map_err(|e| conn.explain(e))?
        .items;
    match args.output {
        Some(f @ (Format::Json | Format::Yaml)) => print_objects(&hosts, false, f)?,
        o => {
            let tasks: kube::Api<Task> = kube::Api::all(conn.client.clone());
            let tasks = tasks
                .list(&ListParams::default())
                .await
                .map_err(|e| conn.explain(e))?
                .items;
            if hosts.is_empty() {
                eprintln!("No hosts have joined yet.");
            } else {
                print!(
                    "{}",
                    view::hosts_table(
                        &hosts,
                        &view::tasks_per_host(&tasks),
                        o == Some(Format::Wide)
                    )
                    .render(colour_stdout())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
