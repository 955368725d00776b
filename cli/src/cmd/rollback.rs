//! `shoal rollback SERVICE [--wait]`: back to the template that ran before.

use std::process::ExitCode;

use kube::api::{ListParams, PostParams};
use shoal_crds::{DesiredState, Service, Task};

use crate::client::{ConnArgs, block_on, connect};
use crate::cmd::apply::{Applied, WaitArgs, wait_ready};

/// Roll a service back to the template that ran before the current one
///
/// Sets the service's template (and restart policy) to those of the tasks
/// that ran before the last template change, as kept in the tasks' history,
/// the way `docker service rollback` and `kubectl rollout undo` do. It then
/// rolls out like any change (spec.update). A rollout that failed and
/// paused is rolled back this way; one that rolled back by itself
/// (failureAction Rollback) gets its spec brought in line with what runs.
///
/// Examples:
///   shoal rollback web
///   shoal rollback web --wait
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The service.
    service: String,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(rollback(args))
}

/// The task whose template ran before `current` (a template hash): one still
/// running it first (an update paused half-way), else the newest.
pub fn previous<'a>(tasks: &'a [Task], current: &str) -> Option<&'a Task> {
    tasks
        .iter()
        .filter(|t| t.spec.template_hash != current)
        .max_by_key(|t| {
            (
                t.spec.desired_state() == DesiredState::Running,
                t.metadata.creation_timestamp.as_ref().map(|c| c.0),
            )
        })
}

async fn rollback(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let api = conn.namespaced::<Service>();
    let tasks: kube::Api<Task> = conn.namespaced();
    for _ in 0..5 {
        let Some(mut svc) = crate::cmd::service_or_report(&conn, &args.service).await? else {
            return Ok(ExitCode::FAILURE);
        };
        let selector = format!("shoal.dev/service={}", args.service);
        let list = tasks
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| conn.explain(e))?
            .items;
        // What the spec asks for now.
        let current = shoal_operator::orchestrator::template_hash(
            &svc.spec.template,
            svc.spec.restart_policy.as_ref(),
        );
        let Some(prev) = previous(&list, &current) else {
            eprintln!(
                "error: service {:?} has no earlier template in its tasks' history to roll back to",
                args.service
            );
            return Ok(ExitCode::FAILURE);
        };
        let hash = prev.spec.template_hash.clone();
        svc.spec.template = prev.spec.template.clone();
        svc.spec.restart_policy = prev.spec.restart_policy.clone();
        match api
            .replace(&args.service, &PostParams::default(), &svc)
            .await
        {
            Ok(s) => {
                println!("service/{} rolled back to template {hash}", args.service);
                if !args.wait.wait {
                    return Ok(ExitCode::SUCCESS);
                }
                let applied = Applied {
                    namespace: conn.namespace.clone(),
                    name: args.service.clone(),
                    generation: s.metadata.generation.unwrap_or(0),
                };
                return wait_ready(&conn, &[applied], args.wait.timeout).await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(conn.explain(e)),
        }
    }
    anyhow::bail!("service {:?} kept changing; try again", args.service)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use shoal_crds::TaskSpec;

    use super::*;

    fn task(name: &str, hash: &str, at: i64, running: bool) -> Task {
        let mut t = Task::new(
            name,
            TaskSpec {
                template_hash: hash.into(),
                desired_state: Some(if running {
                    DesiredState::Running
                } else {
                    DesiredState::Shutdown
                }),
                ..Default::default()
            },
        );
        t.metadata.creation_timestamp = Timestamp::from_second(at).ok().map(Time);
        t
    }

    #[test]
    fn the_previous_template_is_the_one_still_running_else_the_newest_ended() {
        let history = [
            task("a", "v1", 1, false),
            task("b", "v2", 2, false),
            task("c", "v3", 3, true),
        ];
        let name = |t: Option<&Task>| t.and_then(|t| t.metadata.name.clone());
        assert_eq!(name(previous(&history, "v3")), Some("b".into()));
        // A paused update: the old template still runs beside the new one.
        let paused = [
            task("a", "v1", 1, true),
            task("b", "v2", 5, false),
            task("c", "v2", 6, true),
        ];
        assert_eq!(name(previous(&paused, "v2")), Some("a".into()));
        assert_eq!(name(previous(&history[2..], "v3")), None);
    }
}
