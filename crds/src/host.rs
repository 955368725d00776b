//! `Host`: one Docker host with an agent (cluster-scoped, like a Node).

// kube's `printcolumn(...)` repeats keys such as `type_`, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::quantity::{ByteQuantity, CpuQuantity};

/// A Docker host running a Shoal agent. Created when its agent first joins
/// (the agent's `--label`s apply only then; afterwards `shoal host label`
/// wins). Labels live in `metadata.labels`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "shoal.dev",
    doc = "A Docker host running a Shoal agent (cluster-scoped); created when its agent first joins.",
    version = "v1alpha1",
    kind = "Host",
    plural = "hosts",
    singular = "host",
    shortname = "shost",
    category = "shoal",
    status = "HostStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Availability",
        type_ = "string",
        json_path = ".spec.availability"
    ),
    printcolumn(name = "Engine", type_ = "string", json_path = ".status.engineVersion"),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.address",
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
pub struct HostSpec {
    /// `Active` (takes new tasks), `Pause` (keeps its tasks, takes no new
    /// ones) or `Drain` (its tasks move elsewhere). Default: `Active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<Availability>,
}

impl HostSpec {
    /// Availability, defaulted (`Active`).
    pub fn availability(&self) -> Availability {
        self.availability.unwrap_or_default()
    }
}

// Whether a host takes tasks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Availability {
    /// Takes new tasks (the default).
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Takes no tasks; its tasks are moved elsewhere.
    Drain,
}

/// Annotation on a Host joined over mutual TLS: the SHA-256 (hex) of the
/// one certificate that speaks for it, written when it joins. Deleting the
/// Host revokes that certificate; joining again replaces it.
pub const CERTIFICATE_ANNOTATION: &str = "shoal.dev/certificate-sha256";

/// Annotation on a Host once its agent's `--label`s were applied (at its
/// first session): from then on the labels are the users'.
pub const AGENT_LABELS_ANNOTATION: &str = "shoal.dev/agent-labels-applied";

/// CPU and memory of a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HostResources {
    /// CPU, e.g. `2` or `1500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuQuantity>,
    /// Memory, e.g. `24Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteQuantity>,
}

/// Observed state of a host, written by the dispatcher from agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// `Ready`: the agent is connected and its heartbeats arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// What the host has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<HostResources>,
    /// What tasks may reserve (capacity less what the host keeps back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<HostResources>,
    /// Docker engine version, e.g. `20.10.24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    /// Docker API version the agent negotiated, e.g. `1.41`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_api_version: Option<String>,
    /// Operating system, e.g. `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// CPU architecture, e.g. `x86_64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Version of the Shoal agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Address the agent connected from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}
