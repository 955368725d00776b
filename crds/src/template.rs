//! The container template: what every replica of a service runs. A Task
//! carries a frozen copy of it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::{ByteQuantity, CpuQuantity, DurationValue};

/// What each replica runs: one container on one Docker host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerTemplate {
    /// Image reference, e.g. `shoal-test/busybox:1` or `nginx:1.27`.
    pub image: String,
    /// When to pull the image. Default: `IfNotPresent` (a pull is bounded by a
    /// timeout, so a missing registry never hangs a task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Entrypoint, replacing the image's (Kubernetes `command`, Docker
    /// `--entrypoint`). Default: the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments to the entrypoint (Docker `CMD`). Default: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Run an init process as PID 1 that forwards signals and reaps zombies
    /// (the engine's `--init`), so SIGTERM stops the workload. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Environment variables, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Working directory (absolute). Default: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User to run as: `name`, `uid`, `uid:gid` or `name:group`. Default: the
    /// image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports to publish on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortMapping>>,
    /// Volumes, bind mounts and tmpfs mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    /// CPU, memory and process limits, and what the scheduler reserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Mount the container's root filesystem read-only. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    /// Linux capabilities to add to or drop from the engine's default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Container health check; an unhealthy container is restarted by the
    /// agent. Default: the image's health check, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Time between the stop signal and SIGKILL. Default: `10s`. The engine
    /// counts whole seconds: fractions are rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<DurationValue>,
    /// Signal that asks the container to stop, e.g. `SIGTERM`, `SIGINT`,
    /// `SIGQUIT`. Default: the image's, else `SIGTERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Extra labels on the container. Keys under `shoal.dev/` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

// When the agent pulls the image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull before every container start.
    Always,
    /// Pull only if the engine does not have the image (the default).
    #[default]
    IfNotPresent,
    /// Never pull: the image must already be on the host.
    Never,
}

/// One environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct EnvVar {
    /// Variable name; must not be empty or contain `=`.
    pub name: String,
    /// Value. Default: empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A container port published on the host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port inside the container (1-65535).
    pub container_port: i32,
    /// Port on the host (1-65535), or 0 for a free port the engine picks for
    /// each replica (like `docker run -p 8080`; `docker port` shows it), so
    /// replicas on one host can all be published. Default: not published on
    /// the host (reachable only on the namespace network). Two replicas with
    /// the same non-zero host port never share a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    /// `TCP` or `UDP`. Default: `TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Host address to bind the published port to. Default: all addresses.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

// Transport protocol of a port.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// A filesystem mount.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// `Volume` (a named engine volume), `Bind` (a host path; the agent's local
    /// policy may refuse it) or `Tmpfs`.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Volume name (`Volume`) or absolute host path (`Bind`); must be empty for
    /// `Tmpfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Size limit of a `Tmpfs` mount. Default: unlimited (bounded by the
    /// memory limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteQuantity>,
}

// Kind of mount.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum MountType {
    /// A named volume managed by the engine (created on first use).
    #[default]
    Volume,
    /// A path of the host.
    Bind,
    /// A memory-backed filesystem.
    Tmpfs,
}

/// Limits and reservations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Resources {
    /// Hard limits enforced by the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
    /// What the scheduler sets aside on a host for each replica; must not
    /// exceed the limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceReservations>,
}

/// Hard limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ResourceLimits {
    /// CPU limit, e.g. `500m`, `"0.5"`, `2`. Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuQuantity>,
    /// Memory limit, e.g. `128Mi` (at least 6Mi, the engine's minimum); swap
    /// is limited to the same value, so there is no swap escape. Default:
    /// unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteQuantity>,
    /// Maximum number of processes. Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

/// Reservations the scheduler packs by.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ResourceReservations {
    /// CPU set aside per replica. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuQuantity>,
    /// Memory set aside per replica (also the engine's soft memory limit).
    /// Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteQuantity>,
}

/// Linux capabilities, named like `NET_ADMIN` or `CAP_NET_ADMIN`, or `ALL`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Capabilities {
    /// Capabilities to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<String>>,
    /// Capabilities to drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<Vec<String>>,
}

/// A container health check, run by the engine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `["CMD", prog, args…]`, `["CMD-SHELL", "shell command"]`, or `["NONE"]`
    /// to disable the image's health check.
    pub command: Vec<String>,
    /// Time between checks. Default: `30s` (the engine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationValue>,
    /// Time a check may take. Default: `30s` (the engine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationValue>,
    /// Consecutive failures that make the container unhealthy. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    /// Time after start during which failures do not count. Default: `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<DurationValue>,
}

/// Restart behaviour, applied in place by the agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicy {
    /// When to restart an exited container. Default: `Always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<RestartCondition>,
    /// Delay before the first restart; later restarts double it up to
    /// `maxDelay`. Default: `0s` (the first restart is immediate; then 100ms,
    /// 200ms, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DurationValue>,
    /// Upper bound of the exponential backoff. Default: `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<DurationValue>,
    /// Restarts allowed within `window` before the task is `Failed`; 0 means
    /// unlimited. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
    /// Healthy running time that resets the backoff and the attempt count.
    /// Default: `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationValue>,
}

// When the agent restarts an exited container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RestartCondition {
    /// Always restart (the default).
    #[default]
    Always,
    /// Restart only after a non-zero exit, an OOM kill or an unhealthy state.
    OnFailure,
    /// Never restart.
    Never,
}
