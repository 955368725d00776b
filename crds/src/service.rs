//! `Service`: what users declare.

// kube's `printcolumn(...)` repeats keys such as `type_`, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::quantity::DurationValue;
use crate::template::{ContainerTemplate, RestartPolicy};

/// A declared service: N replicas (or one per host) of a container template,
/// kept running by Shoal.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shoal.dev",
    doc = "A declared service: replicas (or one task per host) of a container template, kept running by Shoal.",
    version = "v1alpha1",
    kind = "Service",
    plural = "services",
    singular = "service",
    shortname = "ssvc",
    category = "shoal",
    namespaced,
    status = "ServiceStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.template.image",
        priority = 1
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
pub struct ServiceSpec {
    /// `Replicated` (run `replicas` tasks) or `Global` (one task on every
    /// eligible host). Default: `Replicated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServiceMode>,
    /// Number of tasks in `Replicated` mode. Default: 1. Must not be set in
    /// `Global` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The container every task runs.
    pub template: ContainerTemplate,
    /// How the agent restarts a task's container in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Where tasks may run and how they spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// How a template change rolls out. Default: parallelism 1, delay 0s,
    /// StopFirst, failureAction Pause, monitor 5s, maxFailureRatio 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateConfig>,
    /// What to do with the tasks of a lost host: `Reschedule` them elsewhere
    /// at once, or `Fence` (at most N replicas even under partition). Default:
    /// `Reschedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_host_loss: Option<HostLossPolicy>,
}

impl ServiceSpec {
    /// The mode, defaulted.
    pub fn mode(&self) -> ServiceMode {
        self.mode.unwrap_or_default()
    }
    /// Desired replicas in `Replicated` mode, defaulted (1).
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }
}

// How many tasks a service runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ServiceMode {
    /// `replicas` tasks, placed by the scheduler (the default).
    #[default]
    Replicated,
    /// One task on every eligible host, including hosts that join later.
    Global,
}

/// Placement constraints and preferences.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Only hosts whose labels match (Kubernetes label-selector shape:
    /// `matchLabels` and `matchExpressions`). Default: every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selector: Option<LabelSelector>,
    /// Host label keys to even tasks out across (e.g. `[zone]`), in order of
    /// priority. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<Vec<String>>,
    /// At most this many tasks of the service on one host. Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_host: Option<i32>,
}

/// Rolling update settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateConfig {
    /// Tasks replaced at once; 0 means all at once. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Pause after a batch's new tasks are ready before the next batch
    /// starts. Default: `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DurationValue>,
    /// `StopFirst` (stop the old task, then start the new) or `StartFirst`.
    /// Default: `StopFirst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<UpdateOrder>,
    /// What a failed update does: `Pause` (replace no more tasks until the
    /// template changes again), `Continue`, or `Rollback` (go back to the
    /// template that ran before, `parallelism` tasks at a time; a failure
    /// while rolling back pauses). Default: `Pause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<FailureAction>,
    /// How long every new task must stay ready after it starts before the
    /// update counts as complete; until then, a new task that restarts, turns
    /// unhealthy, fails or is rejected counts as failed. Default: `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<DurationValue>,
    /// Fraction of tasks (0 to 1) that may fail during an update before
    /// `failureAction` applies. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
}

// Order of stop and start during an update.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum UpdateOrder {
    /// Stop the old task before starting its replacement (the default).
    #[default]
    StopFirst,
    /// Start the replacement first, then stop the old task.
    StartFirst,
}

// What happens when an update fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum FailureAction {
    /// Stop the rollout where it is (the default).
    #[default]
    Pause,
    /// Carry on with the next batch.
    Continue,
    /// Go back to the previous template.
    Rollback,
}

/// Where the rollout of a template change stands, written by the
/// orchestrator (Swarm's `UpdateStatus`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStatus {
    /// `Updating`, `Paused`, `Completed`, `RollingBack`, `RollbackPaused` or
    /// `RolledBack`.
    pub state: UpdateState,
    /// The template hash (`shoal.dev/template-hash`) of the spec this rollout
    /// is for. A new template starts a new rollout.
    pub template_hash: String,
    /// While rolling back and after: the template hash restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// When the rollout (or the rollback) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Why it paused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The value of the service's `shoal.dev/resume` annotation ([`RESUME_ANNOTATION`])
    /// this rollout has seen. A paused rollout (or rollback) goes on when the
    /// annotation takes another value (`shoal resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<String>,
}

/// The annotation `shoal resume SERVICE` sets to a new value to resume the
/// service's paused rollout (or rollback), like `kubectl rollout resume`.
pub const RESUME_ANNOTATION: &str = "shoal.dev/resume";

// The states of a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum UpdateState {
    /// Replacing tasks, `parallelism` at a time.
    Updating,
    /// Stopped after failures (`failureAction: Pause`); `shoal resume` or a
    /// template change goes on.
    Paused,
    /// Every task runs the new template and stayed ready for `monitor`.
    Completed,
    /// Going back to the previous template after failures
    /// (`failureAction: Rollback`).
    RollingBack,
    /// The rollback itself failed and stopped; `shoal resume` goes on.
    RollbackPaused,
    /// Every task runs the previous template again. The spec's template is
    /// not run until it changes.
    RolledBack,
}

// What happens to the tasks of a host that is lost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum HostLossPolicy {
    /// Replace them on other hosts at once (the default).
    #[default]
    Reschedule,
    /// The isolated agent kills them once it has not heard from the control
    /// plane for the fence timeout (3 s); replacements start only after the
    /// fence window (5 s from the host's loss), so at most N replicas run
    /// across a partition. An agent that is dead cannot fence.
    Fence,
}

/// Observed state of a service, written by the orchestrator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Tasks that should be running (desired state Running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Tasks running and, if they have a health check, healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Tasks running the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// The last template change's rollout; absent until the template first
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
    /// `Available`, `Progressing` and `Schedulable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}
