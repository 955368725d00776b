//! Host objects: created when an agent first joins, their status kept current
//! from its hello, and the Ready transitions (with the tasks of a lost host
//! marked `Orphaned`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shoal_crds::{
    ByteQuantity, Condition, ConditionStatus, CpuQuantity, Host, HostResources, HostSpec,
    HostStatus, Task, TaskPhase,
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
    let existing = typed::get::<Host>(store, None, name).await?;
    let mut host =
        match existing {
            Some(h) => h,
            None => {
                let mut h = Host::new(name, HostSpec::default());
                if !hello.labels.is_empty() {
                    h.metadata.labels = Some(hello.labels.clone());
                }
                match typed::create(store, &h).await {
                    Ok(h) => h,
                    // Another session of the same host won the race: use its object.
                    Err(StoreError::AlreadyExists(_)) => typed::get::<Host>(store, None, name)
                        .await?
                        .ok_or_else(|| DispatchError::Store(StoreError::NotFound(name.into())))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
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
        status.reason = Some("HostLost".into());
        status.message = Some(format!("host {name} was lost ({reason})"));
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
