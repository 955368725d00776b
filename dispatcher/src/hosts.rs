//! Host objects: created when an agent first joins, their status kept current
//! from its hello, and the Ready transitions (with the tasks of a lost host
//! marked `Orphaned`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shoal_crds::{
    AGENT_LABELS_ANNOTATION, ByteQuantity, CERTIFICATE_ANNOTATION, Condition, ConditionStatus,
    CpuQuantity, Host, HostResources, HostSpec, HostStatus, Task, TaskPhase,
};
use shoal_proto::Hello;
use shoal_store::{ClusterStore, ListOptions, StoreError, typed};

use crate::DispatchError;

/// Kubernetes-style timestamp of now.
pub(crate) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn ready_condition(ready: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ready {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(now()),
    }
}

/// Whether a Host object says Ready.
pub fn is_ready(host: &Host) -> bool {
    host.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == ConditionStatus::True)
}

/// Creates the Host of a joining agent (its labels apply only now) or
/// refreshes its status, and marks it Ready.
pub async fn register(
    store: &dyn ClusterStore,
    hello: &Hello,
    address: Option<String>,
) -> Result<Host, DispatchError> {
    let name = hello.host_name.as_str();
    let mut host = get_or_create(store, name).await?;
    // The agent's `--label`s seed the labels once (a host that joined over
    // TLS was created at its join, before any hello); then they are the
    // users'.
    let annotations = host
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    if !annotations.contains_key(AGENT_LABELS_ANNOTATION) {
        annotations.insert(AGENT_LABELS_ANNOTATION.into(), "true".into());
        if !hello.labels.is_empty() {
            host.metadata
                .labels
                .get_or_insert_with(Default::default)
                .extend(hello.labels.clone());
        }
        host = typed::update(store, &host).await?;
    }
    let resources = hello.capacity.as_ref().map(|c| HostResources {
        cpu: Some(CpuQuantity::new(format!("{}m", c.cpu_millicores))),
        memory: Some(ByteQuantity::new(c.memory_bytes.to_string())),
    });
    let status = HostStatus {
        conditions: Some(vec![ready_condition(
            true,
            "AgentConnected",
            "the agent is connected and sends heartbeats",
        )]),
        capacity: resources.clone(),
        allocatable: resources,
        engine_version: Some(hello.engine_version.clone()),
        engine_api_version: Some(hello.engine_api_version.clone()),
        os: Some(hello.os.clone()),
        arch: Some(hello.arch.clone()),
        agent_version: Some(hello.agent_version.clone()),
        address,
    };
    host.status = Some(status);
    host.metadata.resource_version = None;
    Ok(typed::update_status(store, &host).await?)
}

/// Marks a host NotReady and its live tasks `Orphaned`, so the orchestrator
/// replaces them. Returns how many tasks were orphaned.
/// The Host named `name`, created (bare) if missing: another session of the
/// same host may win the race, then its object is used.
async fn get_or_create(store: &dyn ClusterStore, name: &str) -> Result<Host, DispatchError> {
    if let Some(h) = typed::get::<Host>(store, None, name).await? {
        return Ok(h);
    }
    match typed::create(store, &Host::new(name, HostSpec::default())).await {
        Ok(h) => Ok(h),
        Err(StoreError::AlreadyExists(_)) => typed::get::<Host>(store, None, name)
            .await?
            .ok_or_else(|| DispatchError::Store(StoreError::NotFound(name.into()))),
        Err(e) => Err(e.into()),
    }
}

/// Records that the certificate with SHA-256 `fingerprint` (hex) speaks for
/// host `name` from now on (its join), creating the Host if needed; an
/// earlier certificate of the host stops working.
pub async fn enroll(
    store: &dyn ClusterStore,
    name: &str,
    fingerprint: &str,
) -> Result<(), DispatchError> {
    for _ in 0..5 {
        let mut host = get_or_create(store, name).await?;
        host.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CERTIFICATE_ANNOTATION.into(), fingerprint.into());
        match typed::update(store, &host).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DispatchError::Store(StoreError::Unavailable(format!(
        "host {name} kept changing while it joined"
    ))))
}

/// Whether the certificate with SHA-256 `fingerprint` (hex) still speaks
/// for host `name`: `Err` says why not. A host that joined before hosts
/// recorded their certificate adopts the one it presents.
pub async fn admit(
    store: &dyn ClusterStore,
    name: &str,
    fingerprint: &str,
) -> Result<Result<(), String>, DispatchError> {
    let Some(mut host) = typed::get::<Host>(store, None, name).await? else {
        return Ok(Err(format!(
            "host {name:?} is not in the cluster (removed with `shoal host rm`?), so its certificate no longer admits it; join again with a join token"
        )));
    };
    let annotations = host
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match annotations.get(CERTIFICATE_ANNOTATION) {
        Some(f) if f == fingerprint => Ok(Ok(())),
        Some(_) => Ok(Err(format!(
            "host {name:?} was issued a newer certificate since this one (it joined again, or renewed), so this one no longer admits it; join again with a join token"
        ))),
        None => {
            annotations.insert(CERTIFICATE_ANNOTATION.into(), fingerprint.into());
            typed::update(store, &host).await?;
            Ok(Ok(()))
        }
    }
}

/// Marks the live tasks bound to host `name` `Orphaned` (reason `reason`,
/// `message`) so the orchestrator replaces them and their finalizers can
/// go; returns how many.
pub async fn orphan_tasks(
    store: &dyn ClusterStore,
    name: &str,
    reason: &str,
    message: &str,
) -> Result<usize, DispatchError> {
    let (tasks, _) = typed::list::<Task>(store, &ListOptions::default()).await?;
    let mut orphaned = 0;
    for mut t in tasks
        .into_iter()
        .filter(|t| t.spec.host_name.as_deref() == Some(name))
    {
        let status = t.status.get_or_insert_with(Default::default);
        if status.phase.is_some_and(TaskPhase::is_terminal) {
            continue;
        }
        status.phase = Some(TaskPhase::Orphaned);
        status.reason = Some(reason.into());
        status.message = Some(message.into());
        status.last_transition_time = Some(now());
        t.metadata.resource_version = None;
        match typed::update_status(store, &t).await {
            Ok(_) => orphaned += 1,
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(orphaned)
}

pub async fn mark_lost(
    store: &dyn ClusterStore,
    name: &str,
    reason: &str,
) -> Result<usize, DispatchError> {
    if let Some(mut host) = typed::get::<Host>(store, None, name).await? {
        let status = host.status.get_or_insert_with(HostStatus::default);
        let message = match reason {
            "HeartbeatsMissed" => "the agent stopped sending heartbeats",
            _ => "the agent's stream closed and it did not come back in time",
        };
        status.conditions = Some(vec![ready_condition(false, reason, message)]);
        host.metadata.resource_version = None;
        typed::update_status(store, &host).await?;
    }
    orphan_tasks(
        store,
        name,
        "HostLost",
        &format!("host {name} was lost ({reason})"),
    )
    .await
}
