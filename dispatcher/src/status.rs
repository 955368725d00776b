//! Task status ingestion: agent reports coalesced per task and written in
//! batches, off the session's path (a heartbeat never waits on a store
//! write), with the Events their transitions mean ([`crate::task_events`]);
//! and the Task finalizer, removed once a container is confirmed gone.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use shoal_crds::{TASK_FINALIZER, Task, TaskPhase, TaskStatus};
use shoal_store::events::{EventRecorder, ObjectRef, component};
use shoal_store::{ClusterStore, StoreError, typed};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One reported status, already converted.
#[derive(Debug, Clone)]
pub struct Report {
    /// Task namespace.
    pub namespace: String,
    /// Task name.
    pub name: String,
    /// Task uid (a report for a recreated task of the same name is dropped).
    pub uid: String,
    /// The full status.
    pub status: TaskStatus,
}

/// How many status writes run at once.
const WRITE_CONCURRENCY: usize = 32;

/// Writes reports as they come, coalescing those for the same task that
/// arrive while a batch is being written (the latest wins).
pub async fn writer(
    store: Arc<dyn ClusterStore>,
    mut rx: mpsc::UnboundedReceiver<Report>,
    window: std::time::Duration,
    shutdown: CancellationToken,
) {
    let events = EventRecorder::new(store.clone(), component::DISPATCHER);
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            () = shutdown.cancelled() => return,
        };
        let mut batch: HashMap<(String, String), Report> = HashMap::new();
        batch.insert((first.namespace.clone(), first.name.clone()), first);
        let deadline = tokio::time::sleep(window);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => { batch.insert((r.namespace.clone(), r.name.clone()), r); }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let store = &store;
        let events = &events;
        futures::stream::iter(batch.into_values())
            .for_each_concurrent(WRITE_CONCURRENCY, |r| async move {
                if let Err(e) = write_one(store.as_ref(), events, r).await {
                    tracing::warn!(error = %e, "task status not written");
                }
            })
            .await;
    }
}

async fn write_one(
    store: &dyn ClusterStore,
    events: &EventRecorder,
    r: Report,
) -> Result<(), StoreError> {
    for _ in 0..5 {
        let Some(mut task) = typed::get::<Task>(store, Some(&r.namespace), &r.name).await? else {
            return Ok(());
        };
        if task.metadata.uid.as_deref() != Some(r.uid.as_str()) {
            return Ok(());
        }
        let old = task.status.replace(r.status.clone());
        match typed::update_status(store, &task).await {
            Ok(t) => {
                let host = t.spec.host_name.as_deref().unwrap_or_default();
                let obj = ObjectRef::of(&t);
                for e in crate::task_events::transitions(old.as_ref(), &r.status, host) {
                    events.emit(&obj, e.type_, &e.reason, &e.message);
                }
                release_if_gone(store, t).await?;
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a task's container is known to be gone (or can never be
/// confirmed: no host, host lost).
pub fn container_gone(task: &Task) -> bool {
    if task.spec.host_name.is_none() {
        return true;
    }
    let Some(status) = &task.status else {
        return false;
    };
    match status.phase {
        Some(TaskPhase::Orphaned) => true,
        Some(p) if p.is_terminal() || p == TaskPhase::Pending => status.container_id.is_none(),
        _ => false,
    }
}

/// Removes the Task finalizer of a task marked for deletion whose container
/// is gone; the store then deletes it.
pub async fn release_if_gone(store: &dyn ClusterStore, mut task: Task) -> Result<(), StoreError> {
    let marked = task.metadata.deletion_timestamp.is_some();
    let has = task
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TASK_FINALIZER);
    if !(marked && has && container_gone(&task)) {
        return Ok(());
    }
    if let Some(f) = task.metadata.finalizers.as_mut() {
        f.retain(|f| f != TASK_FINALIZER);
    }
    match typed::update(store, &task).await {
        Ok(_) | Err(StoreError::NotFound(_)) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crds::{ContainerTemplate, TaskSpec};

    fn task(host: Option<&str>, phase: Option<TaskPhase>, container: Option<&str>) -> Task {
        let mut t = Task::new(
            "t",
            TaskSpec {
                service: "web".into(),
                template: ContainerTemplate {
                    image: "x".into(),
                    ..Default::default()
                },
                template_hash: "h".into(),
                host_name: host.map(str::to_owned),
                ..Default::default()
            },
        );
        t.status = Some(TaskStatus {
            phase,
            container_id: container.map(str::to_owned),
            ..Default::default()
        });
        t
    }

    #[test]
    fn container_gone_table() {
        use TaskPhase::*;
        let cases = [
            (None, Some(Running), Some("c"), true),
            (Some("h"), None, None, false),
            (Some("h"), Some(Running), Some("c"), false),
            (Some("h"), Some(Shutdown), Some("c"), false),
            (Some("h"), Some(Shutdown), None, true),
            (Some("h"), Some(Rejected), None, true),
            (Some("h"), Some(Pending), None, true),
            (Some("h"), Some(Orphaned), Some("c"), true),
            (Some("h"), Some(Failed), Some("c"), false),
            (Some("h"), Some(Failed), None, true),
            (Some("h"), Some(Starting), None, false),
        ];
        for (host, phase, container, want) in cases {
            assert_eq!(
                container_gone(&task(host, phase, container)),
                want,
                "{host:?} {phase:?} {container:?}"
            );
        }
    }
}
