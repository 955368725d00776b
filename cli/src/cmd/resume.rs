//! `shoal resume SERVICE [--wait]`: go on with a paused rollout or rollback.

use std::process::ExitCode;
use std::time::Duration;

use kube::api::PostParams;
use shoal_crds::{RESUME_ANNOTATION, Service, UpdateState};

use crate::client::{ConnArgs, block_on, connect};
use crate::cmd::apply::{Applied, WaitArgs, wait_ready};

/// Go on with a service's paused rollout (or rollback)
///
/// A rollout pauses when its new tasks fail (spec.update.failureAction
/// Pause, or a rollback that failed itself) and holds until told to go on:
/// once the cause is fixed outside the template (a missing file, a
/// database that was down), `shoal resume` carries on from where it
/// stopped, counting failures afresh, as `kubectl rollout resume` and
/// `docker service update` do. A changed template starts a new rollout
/// without it; `shoal rollback` goes back instead.
///
/// It sets the service's shoal.dev/resume annotation to a new value; the
/// orchestrator resumes once per value.
///
/// Examples:
///   shoal resume web
///   shoal resume web --wait
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
    block_on(resume(args))
}

/// A value the annotation has not had: the time, to the nanosecond.
fn fresh_value(previous: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let v = now.to_string();
    if previous == Some(v.as_str()) {
        format!("{v}-1")
    } else {
        v
    }
}

async fn resume(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let api = conn.namespaced::<Service>();
    for _ in 0..5 {
        let Some(mut svc) = crate::cmd::service_or_report(&conn, &args.service).await? else {
            return Ok(ExitCode::FAILURE);
        };
        let update = svc.status.as_ref().and_then(|s| s.update.clone());
        let what = match update.as_ref().map(|u| u.state) {
            Some(UpdateState::Paused) => "update",
            Some(UpdateState::RollbackPaused) => "rollback",
            other => {
                let now = match other {
                    Some(s) => format!("its update is {s:?}"),
                    None => "it has no update on record".into(),
                };
                eprintln!(
                    "error: service {:?} has no paused update to resume: {now}",
                    args.service
                );
                return Ok(ExitCode::FAILURE);
            }
        };
        let annotations = svc
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        let value = fresh_value(annotations.get(RESUME_ANNOTATION).map(String::as_str));
        annotations.insert(RESUME_ANNOTATION.into(), value.clone());
        match api
            .replace(&args.service, &PostParams::default(), &svc)
            .await
        {
            Ok(s) => {
                if let Some(why) = update.as_ref().and_then(|u| u.message.as_deref()) {
                    println!("service/{} {what} resumed (it paused: {why})", args.service);
                } else {
                    println!("service/{} {what} resumed", args.service);
                }
                if !args.wait.wait {
                    return Ok(ExitCode::SUCCESS);
                }
                // The service still says Paused until the orchestrator has
                // seen the value; --wait would take that for the answer.
                seen(&conn, &args.service, &value, args.wait.timeout).await?;
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

/// Waits until the service's rollout has seen the resume `value`.
async fn seen(
    conn: &crate::client::Conn,
    service: &str,
    value: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = conn.namespaced::<Service>();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let svc = api.get_opt(service).await.map_err(|e| conn.explain(e))?;
        let update = svc.and_then(|s| s.status).and_then(|s| s.update);
        if update.is_none_or(|u| u.resumed.as_deref() == Some(value)) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out: the control plane has not taken up the resume of service {service:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
