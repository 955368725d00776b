//! `shoal ps SERVICE`: the tasks of a service.

use std::process::ExitCode;

use kube::api::ListParams;
use shoal_crds::{Service, Task};

use crate::client::{ConnArgs, block_on, connect};
use crate::output::{Format, colour_stdout, print_objects};
use crate::view;

/// List the tasks of a service: slot, host, state, health, restarts, age, last error
///
/// Shows every task of the service, including the ended ones kept as
/// history (newest first within a slot), so a crash loop or a rollout reads
/// at a glance. `-o json|yaml` prints the Task objects.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    service: String,
    /// Only tasks that should be running (hide ended history).
    #[arg(long)]
    running: bool,
    /// Output format: wide (container id, template hash), yaml or json.
    #[arg(short, long, value_enum)]
    output: Option<Format>,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(ps(args))
}

async fn ps(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let svc = conn
        .namespaced::<Service>()
        .get_opt(&args.service)
        .await
        .map_err(|e| conn.explain(e))?;
    let mut tasks = conn
        .namespaced::<Task>()
        .list(&ListParams::default().labels(&format!("{}={}", view::SERVICE_LABEL, args.service)))
        .await
        .map_err(|e| conn.explain(e))?
        .items;
    if svc.is_none() && tasks.is_empty() {
        anyhow::bail!(
            "service {:?} not found in namespace {}",
            args.service,
            conn.namespace
        );
    }
    if args.running {
        tasks.retain(|t| t.spec.desired_state() == shoal_crds::DesiredState::Running);
    }
    view::sort_tasks(&mut tasks);
    match args.output {
        Some(f @ (Format::Json | Format::Yaml)) => print_objects(&tasks, false, f)?,
        o => {
            if tasks.is_empty() {
                eprintln!("No tasks for service {} yet.", args.service);
            } else {
                print!(
                    "{}",
                    view::tasks_table(&tasks, false, o == Some(Format::Wide))
                        .render(colour_stdout())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
