//! Shoal's resource types in group `shoal.dev`, version `v1alpha1`:
//! [`Service`] and [`Task`] (namespaced) and [`Host`] (cluster-scoped), with
//! the quantity and duration parsers and the one [`validate`] entry point
//! every front door uses.
//!
//! A note on doc comments: the enums' own descriptions are plain `//`
//! comments on purpose. schemars puts an enum type's doc comment in place of
//! the field's in the generated CRD schema, and the field's description is the
//! one that carries the default (what `kubectl explain` shows); the variants
//! keep their `///` docs.

pub mod condition;
pub mod crd;
pub mod host;
pub mod labels;
pub mod manifest;
pub mod quantity;
pub mod service;
pub mod task;
pub mod template;
pub mod validate;

pub use condition::{Condition, ConditionStatus};
pub use host::{
    AGENT_LABELS_ANNOTATION, Availability, CERTIFICATE_ANNOTATION, Host, HostResources, HostSpec,
    HostStatus,
};
pub use quantity::{ByteQuantity, CpuQuantity, DurationValue, QuantityError};
pub use service::{
    FailureAction, HostLossPolicy, Placement, RESUME_ANNOTATION, Service, ServiceMode, ServiceSpec,
    ServiceStatus, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
pub use task::{
    DesiredState, FENCE_TIMEOUT, HealthState, Task, TaskPhase, TaskSpec, TaskStatus, fence_window,
};
pub use template::{
    Capabilities, ContainerTemplate, EnvVar, HealthCheck, ImagePullPolicy, Mount, MountType,
    PortMapping, Protocol, ResourceLimits, ResourceReservations, Resources, RestartCondition,
    RestartPolicy,
};
pub use validate::{FieldError, Validated, ValidationErrors, validate};

/// API group of every Shoal resource.
pub const GROUP: &str = "shoal.dev";
/// API version of every Shoal resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "shoal.dev/v1alpha1";

/// Finalizer on every Task: removed by the dispatcher once the task's
/// container is confirmed gone (or its host is lost), so a replacement never
/// races its predecessor for a host port.
pub const TASK_FINALIZER: &str = "shoal.dev/container";
