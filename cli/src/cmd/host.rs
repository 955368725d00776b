//! `shoal host ls|update|rm`: the hosts of the cluster.

use std::process::ExitCode;

use anyhow::Context;
use kube::api::{DeleteParams, ListParams, PostParams};
use shoal_crds::{Availability, Host, Task};

use crate::client::{ConnArgs, block_on, connect};
use crate::output::{Format, colour_stdout, print_objects};
use crate::view;

/// Manage the hosts of the cluster
///
/// Hosts join when their agent first connects (`shoal up` makes one for this
/// machine; `shoal agent --join-token` joins another).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: HostCommand,
}

#[derive(Debug, clap::Subcommand)]
enum HostCommand {
    Ls(LsArgs),
    Update(UpdateArgs),
    Rm(RmArgs),
}

/// Change a host's availability or labels
///
/// `--availability Drain` moves its tasks to other hosts (global services
/// stop there); `Pause` keeps its tasks but places no new ones; `Active`
/// takes tasks again. Labels are what `placement.hostSelector` and
/// `placement.spreadBy` match.
///
/// Examples:
///   shoal host update node-2 --availability Drain
///   shoal host update node-2 --label-add zone=east --label-rm rack
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct UpdateArgs {
    /// The host.
    name: String,
    /// Active, Pause or Drain (any case).
    #[arg(long, value_enum, ignore_case = true)]
    availability: Option<AvailabilityArg>,
    /// Add or change a label (KEY=VALUE); repeatable.
    #[arg(long = "label-add", value_name = "KEY=VALUE", value_parser = crate::host_agent::parse_label)]
    label_add: Vec<(String, String)>,
    /// Remove a label (KEY); repeatable.
    #[arg(long = "label-rm", value_name = "KEY")]
    label_rm: Vec<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

impl From<AvailabilityArg> for Availability {
    fn from(a: AvailabilityArg) -> Self {
        match a {
            AvailabilityArg::Active => Availability::Active,
            AvailabilityArg::Pause => Availability::Pause,
            AvailabilityArg::Drain => Availability::Drain,
        }
    }
}

/// Remove hosts from the cluster
///
/// A Ready host is refused unless --force: drain it first
/// (`shoal host update NAME --availability Drain`) and stop its agent, or
/// force. Removing a host revokes its certificate at once: its agent is cut
/// off, removes the cluster's containers from its engine, forgets its
/// credentials and stops; its tasks are replaced on the other hosts. The
/// machine can join again with a join token. (The host of `shoal up`, whose
/// agent uses the loopback dispatcher, comes back at its next session.)
///
/// Examples:
///   shoal host rm node-2
///   shoal host rm --force node-3
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, visible_alias = "remove")]
struct RmArgs {
    /// The hosts.
    #[arg(required = true)]
    names: Vec<String>,
    /// Remove even a Ready host.
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    conn: ConnArgs,
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
        HostCommand::Update(a) => block_on(update(a)),
        HostCommand::Rm(a) => block_on(rm(a)),
    }
}

async fn update(args: UpdateArgs) -> anyhow::Result<ExitCode> {
    if args.availability.is_none() && args.label_add.is_empty() && args.label_rm.is_empty() {
        anyhow::bail!("nothing to change: give --availability, --label-add or --label-rm");
    }
    let conn = connect(&args.conn).await?;
    let api = conn.cluster::<Host>();
    // Read, change, write with the read's resourceVersion; again on a conflict.
    for _ in 0..5 {
        let Some(mut host) = api.get_opt(&args.name).await.map_err(|e| conn.explain(e))? else {
            eprintln!("error: host {:?} not found (shoal host ls)", args.name);
            return Ok(ExitCode::FAILURE);
        };
        if let Some(a) = args.availability {
            host.spec.availability = Some(a.into());
        }
        let labels = host.metadata.labels.get_or_insert_with(Default::default);
        for k in &args.label_rm {
            labels.remove(k);
        }
        labels.extend(args.label_add.iter().cloned());
        match api.replace(&args.name, &PostParams::default(), &host).await {
            Ok(_) => {
                println!("host/{} updated", args.name);
                return Ok(ExitCode::SUCCESS);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(conn.explain(e)),
        }
    }
    anyhow::bail!("host {:?} kept changing; try again", args.name)
}

async fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let api = conn.cluster::<Host>();
    let mut code = ExitCode::SUCCESS;
    for name in &args.names {
        let Some(host) = api.get_opt(name).await.map_err(|e| conn.explain(e))? else {
            eprintln!("error: host {name:?} not found");
            code = ExitCode::FAILURE;
            continue;
        };
        if shoal_dispatcher::is_ready(&host) && !args.force {
            eprintln!(
                "error: host {name:?} is Ready: drain it (shoal host update {name} --availability Drain) and stop its agent first, or remove it with --force"
            );
            code = ExitCode::FAILURE;
            continue;
        }
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(|e| conn.explain(e))
            .with_context(|| format!("removing host {name}"))?;
        println!("host/{name} removed");
    }
    Ok(code)
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
