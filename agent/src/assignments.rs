//! The `--assignments FILE` feeder: a YAML file of Tasks (one document each,
//! or a list) is the complete assignment set; the file is re-read when it
//! changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use shoal_crds::{Validated, validate};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::error::AgentError;
use crate::reconciler::Assignments;
use crate::task::AssignedTask;

/// Reads and validates the tasks of `path`. A document may be a Task or a
/// YAML list of Tasks; tasks without a uid get one derived from their
/// namespace and name.
pub fn read_file(path: &Path) -> Result<Vec<AssignedTask>, AgentError> {
    let docs = shoal_crds::manifest::read_path(path)
        .map_err(|e| AgentError::Assignments(e.to_string()))?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for doc in docs {
        let items: Vec<Value> = match doc.value {
            Value::Array(items) => items,
            v => vec![v],
        };
        for (i, item) in items.iter().enumerate() {
            match validate(item) {
                Ok(Validated::Task(t)) => out.push(AssignedTask::from_task(&t)),
                Ok(_) => errors.push(format!("{}[{i}]: not a Task", doc.source)),
                Err(e) => errors.push(format!("{}[{i}]: {e}", doc.source)),
            }
        }
    }
    if !errors.is_empty() {
        return Err(AgentError::Assignments(errors.join("\n")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &out {
        if !seen.insert(t.uid.clone()) {
            return Err(AgentError::Assignments(format!(
                "task {}/{} appears twice (uid {})",
                t.namespace, t.name, t.uid
            )));
        }
    }
    Ok(out)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads `path` once (an error is returned), then re-reads it every `poll`
/// when it changed, sending each complete set on `tx`; a bad edit is logged
/// and the previous set kept. Stops on `shutdown`.
pub async fn feed_file(
    path: PathBuf,
    poll: Duration,
    tx: watch::Sender<Option<Assignments>>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let first = read_file(&path)?;
    tx.send_replace(Some(Arc::new(first)));
    let mut last = mtime(&path);
    let handle = tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(poll) => {}
                }
                let now = mtime(&path);
                if now == last {
                    continue;
                }
                last = now;
                match read_file(&path) {
                    Ok(set) => {
                        tx.send_replace(Some(Arc::new(set)));
                    }
                    Err(e) => {
                        warn!(error = %e, "assignments file unreadable; keeping the last set")
                    }
                }
            }
        }
        .instrument(info_span!("assignments_file")),
    );
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = r#"
apiVersion: shoal.dev/v1alpha1
kind: Task
metadata: { name: web-0, namespace: default }
spec:
  service: web
  slot: 0
  templateHash: h1
  template: { image: "shoal-test/busybox:1", command: [sleep, "100"] }
"#;

    #[test]
    fn reads_tasks_and_derives_uids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.yaml");
        std::fs::write(&p, format!("{TASK}---\n{}", TASK.replace("web-0", "web-1"))).unwrap();
        let tasks = read_file(&p).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].uid, crate::labels::derived_uid("default", "web-0"));
        assert_ne!(tasks[0].uid, tasks[1].uid);
        assert_eq!(tasks[0].service, "web");
    }

    #[test]
    fn invalid_tasks_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.yaml");
        std::fs::write(
            &p,
            TASK.replace("templateHash: h1", "templateHash: h1\n  bogus: 1"),
        )
        .unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("a.yaml#0"), "{e}");
        std::fs::write(&p, format!("{TASK}---\n{TASK}")).unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
    }
}
