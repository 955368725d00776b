//! `Task`: one replica slot placed on one host. Created and deleted by the
//! control plane, never by users.

// kube's `printcolumn(...)` repeats keys such as `type_`, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::template::{ContainerTemplate, RestartPolicy};

/// One replica slot of a service, placed on one host. Its spec is frozen at
/// creation except `hostName` (set once by the scheduler) and `desiredState`
/// (set by the orchestrator).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shoal.dev",
    doc = "One replica slot of a service placed on one host; created and deleted by the control plane, never by users.",
    version = "v1alpha1",
    kind = "Task",
    plural = "tasks",
    singular = "task",
    shortname = "stask",
    category = "shoal",
    namespaced,
    status = "TaskStatus",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Slot", type_ = "integer", json_path = ".spec.slot"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.hostName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Restarts",
        type_ = "integer",
        json_path = ".status.restartCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// Name of the owning Service (same namespace).
    pub service: String,
    /// Replica slot (0..replicas-1) in `Replicated` mode; absent in `Global`
    /// mode, where the host identifies the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<i32>,
    /// The service's container template, frozen when the task was created.
    pub template: ContainerTemplate,
    /// Hash of the frozen template (and restart policy), computed once by the
    /// orchestrator; a spec change makes new tasks with a new hash. Agents
    /// never re-derive it.
    pub template_hash: String,
    /// The service's restart policy, frozen with the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Host the task is placed on; set once by the scheduler. Moving a task
    /// means a new Task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// `Running` or `Shutdown`, set by the orchestrator. Default: `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state: Option<DesiredState>,
    /// The service's `onHostLoss`, frozen with the template. With `Fence`,
    /// an agent cut off from the control plane for [`FENCE_TIMEOUT`] kills
    /// the task's container, and a replacement starts only [`fence_window`]
    /// after the task was orphaned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_host_loss: Option<crate::HostLossPolicy>,
}

/// How long an agent with `Fence` tasks waits without a word from the
/// control plane before it kills them (it hears from it every heartbeat,
/// 500 ms by default).
pub const FENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long after a `Fence` task is orphaned its replacement may start: the
/// agent's timeout, counted from no earlier than the orphaning (the control
/// plane orphans after it stopped hearing from the agent), plus time to kill
/// and remove the container.
pub fn fence_window() -> std::time::Duration {
    FENCE_TIMEOUT + std::time::Duration::from_secs(2)
}

impl TaskSpec {
    /// Desired state, defaulted (`Running`).
    pub fn desired_state(&self) -> DesiredState {
        self.desired_state.unwrap_or_default()
    }
}

// What the control plane wants of a task.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum DesiredState {
    /// Keep the container running (the default).
    #[default]
    Running,
    /// Stop and remove the container.
    Shutdown,
}

// Where a task is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum TaskPhase {
    /// Created, not yet placed or not yet startable (see `reason`).
    #[default]
    Pending,
    /// Sent to its host's agent.
    Assigned,
    /// The agent is creating or starting the container.
    Starting,
    /// The container runs.
    Running,
    /// The container exited cleanly and the restart policy does not restart it.
    Succeeded,
    /// Restart attempts are used up.
    Failed,
    /// The engine refused the template (terminal for this task).
    Rejected,
    /// Stopped on request.
    Shutdown,
    /// Its host was lost.
    Orphaned,
}

impl TaskPhase {
    /// True once the task will never run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Rejected | Self::Shutdown | Self::Orphaned
        )
    }
}

// Health as reported by the engine's health check.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum HealthState {
    /// Within the start period, or no check has finished yet.
    #[default]
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

/// Observed state of a task, written by the dispatcher from agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Where the task is in its life. Default: `Pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,
    /// One CamelCase word saying why, e.g. `ImageNotFound`, `OOMKilled`,
    /// `Unhealthy`, `HostLost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for a person, e.g. the engine's error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The engine's id of the current container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Health-check state, if the container has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    /// In-place restarts by the agent so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    /// Exit code of the last exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether the last exit was an out-of-memory kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_killed: Option<bool>,
    /// When the current container last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the container last exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// When `phase` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}
