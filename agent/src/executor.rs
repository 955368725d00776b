//! The thin executor: carries out one planned action against the engine.
//! The reconciler runs several at once (bounded) and at most one per task.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_crds::ImagePullPolicy;

use bollard::models::ContainerCreateBody;

use crate::engine::{ContainerEngine, create_for_task};
use crate::error::EngineError;
use crate::labels::network_name;
use crate::plan::Action;
use crate::policy::LocalPolicy;
use crate::spec::{create_body, network_labels, stop_grace_secs};
use crate::task::AssignedTask;

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// The image is missing and could not be pulled.
    ImageNotFound(String),
    /// The engine refused the template (terminal for the task).
    Rejected(String),
    /// Start failed (retried with backoff).
    StartFailed(String),
    /// The engine is unreachable (retried once it is back).
    Unavailable(String),
    /// Anything else (retried with backoff).
    Other(String),
}

impl ActionError {
    /// False for a refusal: the same action fails the same way.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Rejected(_))
    }
}

fn classify(e: EngineError, starting: bool) -> ActionError {
    match e {
        EngineError::ImageNotFound(m) => ActionError::ImageNotFound(m),
        EngineError::Rejected(m) | EngineError::Conflict(m) => ActionError::Rejected(m),
        EngineError::Unavailable(m) => ActionError::Unavailable(m),
        EngineError::NotFound(m) | EngineError::Other(m) if starting => ActionError::StartFailed(m),
        EngineError::NotFound(m) | EngineError::Other(m) => ActionError::Other(m),
    }
}

/// The result of one action: the container it concerns, if known.
pub type ActionResult = Result<Option<String>, ActionError>;

/// What an action needs besides the engine.
#[derive(Debug, Clone)]
pub struct ExecCtx {
    /// Cluster id.
    pub cluster: String,
    /// Bound on one image pull.
    pub pull_timeout: Duration,
    /// Networks known to exist (saves an inspect per create).
    pub networks: Arc<Mutex<BTreeSet<String>>>,
    /// The host's local policy, checked before anything is created.
    pub policy: Arc<LocalPolicy>,
}

/// Before a create with `imagePullPolicy: Always`: pull, or run what the host
/// has when no registry answers. The other policies pull nothing up front: the
/// create itself says whether the image is there ([`create_with_image`]), which
/// saves an image inspect per container.
async fn pull_always(
    engine: &dyn ContainerEngine,
    task: &AssignedTask,
    ctx: &ExecCtx,
) -> Result<(), ActionError> {
    let image = &task.template.image;
    if task.template.image_pull_policy.unwrap_or_default() != ImagePullPolicy::Always {
        return Ok(());
    }
    match engine.pull(image, ctx.pull_timeout).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let present = engine
                .image_present(image)
                .await
                .map_err(|e| classify(e, false))?;
            if present {
                // No registry reachable: run what the host has.
                tracing::warn!(%image, error = %e, "pull failed; using the image on the host");
                Ok(())
            } else {
                Err(classify(e, false))
            }
        }
    }
}

/// Creates the task's container; a missing image is pulled and the create
/// made again (`IfNotPresent`), or refused (`Never`).
async fn create_with_image(
    engine: &dyn ContainerEngine,
    task: &AssignedTask,
    name: &str,
    body: ContainerCreateBody,
    ctx: &ExecCtx,
) -> Result<String, EngineError> {
    let image = &task.template.image;
    match create_for_task(engine, name, body.clone(), &ctx.cluster, &task.uid).await {
        Err(EngineError::ImageNotFound(_)) => {
            match task.template.image_pull_policy.unwrap_or_default() {
                ImagePullPolicy::Never => Err(EngineError::ImageNotFound(format!(
                    "{image} is not on this host and imagePullPolicy is Never"
                ))),
                ImagePullPolicy::IfNotPresent | ImagePullPolicy::Always => {
                    engine.pull(image, ctx.pull_timeout).await?;
                    create_for_task(engine, name, body, &ctx.cluster, &task.uid).await
                }
            }
        }
        other => other,
    }
}

async fn stop_then(
    engine: &dyn ContainerEngine,
    id: &str,
    grace: Option<i64>,
) -> Result<(), ActionError> {
    engine.stop(id, grace).await.map_err(|e| classify(e, false))
}

/// Carries out `action`; `task` is the action's task when it has one.
pub async fn execute(
    engine: &dyn ContainerEngine,
    action: &Action,
    task: Option<&AssignedTask>,
    ctx: &ExecCtx,
) -> ActionResult {
    let grace = task.and_then(|t| stop_grace_secs(&t.template).ok());
    match action {
        Action::Create { .. } => {
            let task = task.ok_or_else(|| ActionError::Other("task no longer assigned".into()))?;
            // Before the pull: a refused task costs the host nothing.
            ctx.policy
                .check(&task.template)
                .map_err(|e| ActionError::Rejected(e.to_string()))?;
            let id = task.identity(&ctx.cluster);
            let body = create_body(&id, &task.template)
                .map_err(|e| ActionError::Rejected(e.to_string()))?;
            pull_always(engine, task, ctx).await?;
            let net = network_name(&task.namespace);
            let known = ctx
                .networks
                .lock()
                .map(|n| n.contains(&net))
                .unwrap_or(false);
            if !known {
                engine
                    .ensure_network(&net, &network_labels(&ctx.cluster))
                    .await
                    .map_err(|e| classify(e, false))?;
                if let Ok(mut n) = ctx.networks.lock() {
                    n.insert(net.clone());
                }
            }
            let created = create_with_image(engine, task, &id.container_name(), body, ctx).await;
            let cid = match created {
                Ok(cid) => cid,
                Err(EngineError::NotFound(m)) if m.contains("network") => {
                    // The network vanished (e.g. pruned): forget it, retry later.
                    if let Ok(mut n) = ctx.networks.lock() {
                        n.remove(&net);
                    }
                    return Err(ActionError::Other(m));
                }
                Err(e) => return Err(classify(e, false)),
            };
            engine
                .start(&cid)
                .await
                .map_err(|e| match classify(e, true) {
                    // A fresh container the engine will not start: its template is refused.
                    ActionError::StartFailed(m) => ActionError::Rejected(m),
                    other => other,
                })?;
            Ok(Some(cid))
        }
        Action::Start { container_id, .. } => {
            engine
                .start(container_id)
                .await
                .map_err(|e| classify(e, true))?;
            Ok(Some(container_id.clone()))
        }
        Action::Restart { container_id, .. } => {
            stop_then(engine, container_id, grace).await?;
            engine
                .start(container_id)
                .await
                .map_err(|e| classify(e, true))?;
            Ok(Some(container_id.clone()))
        }
        Action::Stop { container_id, .. } => {
            stop_then(engine, container_id, grace).await?;
            Ok(Some(container_id.clone()))
        }
        Action::Remove { container_id, .. } => {
            stop_then(engine, container_id, grace).await?;
            engine
                .remove(container_id)
                .await
                .map_err(|e| classify(e, false))?;
            Ok(None)
        }
    }
}
