//! The `stats` subresource of tasks: `GET .../namespaces/NS/tasks/NAME/stats`,
//! the resource use of a task's running container as its host's engine
//! measures it (what `docker stats --no-stream` shows): CPU over about the
//! last second, memory in use and the memory limit. The sample comes from
//! the task's host through a [`TaskStats`] provider — the dispatcher in
//! `shoal up` and `shoal server`. It takes about a second (the engine's two
//! readings). A host that cannot be reached answers 502, naming it.

use std::sync::Arc;
use std::time::SystemTime;

use axum::response::Response;
use futures::future::BoxFuture;
use serde_json::json;
use shoal_crds::Task;

use crate::App;
use crate::error::ApiError;
use crate::logs::LogError;
use crate::resources::Target;

/// One resource sample of a task's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSample {
    /// When it was taken.
    pub time: SystemTime,
    /// CPU used over about the last second, in millicores; `None` when the
    /// engine could not tell.
    pub cpu_millicores: Option<u64>,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (the host's memory when the task has none).
    pub memory_limit_bytes: Option<u64>,
}

/// Where the resource samples of a task come from.
pub trait TaskStats: Send + Sync + std::fmt::Debug + 'static {
    /// One sample of the task's running container. Errors as for logs:
    /// [`LogError::BadRequest`] when the task has no running container (or
    /// is not placed), [`LogError::Unavailable`] when its host cannot be
    /// reached.
    fn sample<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<StatsSample, LogError>>;
}

/// The sample as the API answers it.
pub fn to_json(task: &Task, s: &StatsSample) -> serde_json::Value {
    let time = jiff::Timestamp::try_from(s.time)
        .map(|t| t.to_string())
        .unwrap_or_default();
    json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "TaskStats",
        "metadata": {
            "name": task.metadata.name,
            "namespace": task.metadata.namespace,
        },
        "hostName": task.spec.host_name,
        "time": time,
        "cpuMillicores": s.cpu_millicores,
        "memoryBytes": s.memory_bytes,
        "memoryLimitBytes": s.memory_limit_bytes,
    })
}

pub(crate) async fn serve(app: &Arc<App>, t: &Target<'_>) -> Result<Response, ApiError> {
    let Some(provider) = app.cfg.stats.clone() else {
        return Err(crate::logs::not_served("stats"));
    };
    let task = crate::logs::placed_task(app, t, "it has no container to measure").await?;
    let sample = provider
        .sample(&task)
        .await
        .map_err(crate::logs::api_error)?;
    Ok(crate::resources::ok(&to_json(&task, &sample)))
}
