//! Conversions between the wire messages ([`crate::v1`]) and the resource
//! types of `shoal-crds`.
//!
//! - resource type → message is [`From`] (it cannot fail);
//! - message → resource type is [`TryFrom`] with a [`ConvertError`] that names
//!   the offending field (proto field names, dotted, with `[i]` for list
//!   items) and says why: an enum number this side does not know, a required
//!   message or enum that is missing, an empty required identity, or a
//!   timestamp out of range.
//!
//! Both directions destructure every struct exhaustively (no `..`), and every
//! enum is matched exhaustively, so adding a field or a variant on either side
//! fails to compile until it is handled here.
//!
//! The round trip resource → message → resource is the identity, including
//! the difference between an absent list or map (`None`) and an empty one
//! (`Some(vec![])`): such lists and maps travel in wrapper messages
//! ([`v1::StringList`], [`v1::StringMap`], [`v1::EnvVarList`], …) whose
//! presence carries the `Option`. Points in time travel as
//! `google.protobuf.Timestamp`, which covers the whole range of
//! `jiff::Timestamp` at nanosecond precision, so they round-trip exactly too.
//!
//! [`v1::StringList`]: crate::v1::StringList
//! [`v1::StringMap`]: crate::v1::StringMap
//! [`v1::EnvVarList`]: crate::v1::EnvVarList

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff;
use shoal_crds as crds;
use shoal_crds::{ByteQuantity, CpuQuantity, DurationValue};

use crate::v1 as pb;

/// A message that cannot become a resource value: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct ConvertError {
    /// Path of the field within the converted message, in proto field names,
    /// e.g. `spec.template.mounts[1].kind`.
    pub field: String,
    /// What is wrong with it.
    pub reason: ConvertErrorReason,
}

/// Why a field could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertErrorReason {
    /// An enum number this side does not know (e.g. sent by a newer peer).
    #[error("unknown {enum_name} value {value}")]
    UnknownEnumValue {
        /// Name of the proto enum.
        enum_name: &'static str,
        /// The number received.
        value: i32,
    },
    /// A required message is absent, or a required enum is `UNSPECIFIED`.
    #[error("required field is missing")]
    Missing,
    /// A required string is empty.
    #[error("required field is empty")]
    Empty,
    /// A timestamp that is not normalised or outside the range of
    /// `jiff::Timestamp` (years -9999..=9999).
    #[error("timestamp {seconds}s + {nanos}ns is not a valid point in time")]
    InvalidTimestamp {
        /// The `seconds` received.
        seconds: i64,
        /// The `nanos` received.
        nanos: i32,
    },
}

impl ConvertError {
    fn new(field: impl Into<String>, reason: ConvertErrorReason) -> Self {
        Self {
            field: field.into(),
            reason,
        }
    }

    fn missing(field: &str) -> Self {
        Self::new(field, ConvertErrorReason::Missing)
    }

    /// Prefixes the path with the field that contains it.
    fn at(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

// ---------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------

/// For an enum `C` mirrored as the proto enum `P`, whose `Unspecified` (0)
/// means `None`: generates `impl From<C> for P`, `to_pb(Option<C>) -> i32`
/// and `from_pb(i32, field) -> Result<Option<C>, ConvertError>`.
macro_rules! enum_conversion {
    (
        $to_pb:ident, $from_pb:ident, $crds:ty, $pb:ty, $name:literal,
        { $($c:ident <=> $p:ident),+ $(,)? }
    ) => {
        impl From<$crds> for $pb {
            fn from(v: $crds) -> Self {
                type C = $crds;
                match v {
                    $(C::$c => Self::$p,)+
                }
            }
        }

        fn $to_pb(v: Option<$crds>) -> i32 {
            v.map_or(<$pb>::Unspecified, <$pb>::from) as i32
        }

        fn $from_pb(v: i32, field: &str) -> Result<Option<$crds>, ConvertError> {
            type C = $crds;
            type P = $pb;
            match P::try_from(v) {
                Ok(P::Unspecified) => Ok(None),
                $(Ok(P::$p) => Ok(Some(C::$c)),)+
                Err(_) => Err(ConvertError::new(
                    field,
                    ConvertErrorReason::UnknownEnumValue { enum_name: $name, value: v },
                )),
            }
        }
    };
}

enum_conversion!(
    pull_policy_to_pb, pull_policy_from_pb, crds::ImagePullPolicy, pb::ImagePullPolicy,
    "ImagePullPolicy",
    { Always <=> Always, IfNotPresent <=> IfNotPresent, Never <=> Never }
);
enum_conversion!(
    protocol_to_pb, protocol_from_pb, crds::Protocol, pb::Protocol, "Protocol",
    { Tcp <=> Tcp, Udp <=> Udp }
);
enum_conversion!(
    mount_type_to_pb, mount_type_from_pb, crds::MountType, pb::MountType, "MountType",
    { Volume <=> Volume, Bind <=> Bind, Tmpfs <=> Tmpfs }
);
enum_conversion!(
    restart_condition_to_pb, restart_condition_from_pb, crds::RestartCondition,
    pb::RestartCondition, "RestartCondition",
    { Always <=> Always, OnFailure <=> OnFailure, Never <=> Never }
);
enum_conversion!(
    desired_state_to_pb, desired_state_from_pb, crds::DesiredState, pb::DesiredState,
    "DesiredState",
    { Running <=> Running, Shutdown <=> Shutdown }
);
enum_conversion!(
    host_loss_to_pb, host_loss_from_pb, crds::HostLossPolicy, pb::HostLossPolicy,
    "HostLossPolicy",
    { Reschedule <=> Reschedule, Fence <=> Fence }
);
enum_conversion!(
    phase_to_pb, phase_from_pb, crds::TaskPhase, pb::TaskPhase, "TaskPhase",
    {
        Pending <=> Pending,
        Assigned <=> Assigned,
        Starting <=> Starting,
        Running <=> Running,
        Succeeded <=> Succeeded,
        Failed <=> Failed,
        Rejected <=> Rejected,
        Shutdown <=> Shutdown,
        Orphaned <=> Orphaned,
    }
);
enum_conversion!(
    health_to_pb, health_from_pb, crds::HealthState, pb::HealthState, "HealthState",
    { Starting <=> Starting, Healthy <=> Healthy, Unhealthy <=> Unhealthy }
);

/// The resource value of a proto health state (`None` for `UNSPECIFIED`), or
/// an error naming `field` for a number this side does not know — for
/// `ContainerEvent.health`. (The other way is `pb::HealthState::from`.)
pub fn health_state_from_pb(
    value: i32,
    field: &str,
) -> Result<Option<crds::HealthState>, ConvertError> {
    health_from_pb(value, field)
}

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

/// A point in time as a normalised `google.protobuf.Timestamp` (`nanos` in
/// `0..=999_999_999`, also before 1970). Exact for every `jiff::Timestamp`.
pub fn timestamp_from_jiff(ts: jiff::Timestamp) -> prost_types::Timestamp {
    let mut seconds = ts.as_second();
    let mut nanos = ts.subsec_nanosecond();
    // jiff truncates toward zero (negative nanos before 1970); protobuf
    // counts nanos forward from the second below.
    if nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    prost_types::Timestamp { seconds, nanos }
}

/// The `jiff::Timestamp` of a normalised `google.protobuf.Timestamp`; `field`
/// names it in the error.
pub fn timestamp_to_jiff(
    ts: &prost_types::Timestamp,
    field: &str,
) -> Result<jiff::Timestamp, ConvertError> {
    let invalid = || {
        ConvertError::new(
            field,
            ConvertErrorReason::InvalidTimestamp {
                seconds: ts.seconds,
                nanos: ts.nanos,
            },
        )
    };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(invalid());
    }
    jiff::Timestamp::new(ts.seconds, ts.nanos).map_err(|_| invalid())
}

fn time_to_pb(t: Option<Time>) -> Option<prost_types::Timestamp> {
    t.map(|Time(ts)| timestamp_from_jiff(ts))
}

fn time_from_pb(
    t: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<Time>, ConvertError> {
    t.map(|ts| timestamp_to_jiff(&ts, field).map(Time))
        .transpose()
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn string_list_to_pb(v: Option<Vec<String>>) -> Option<pb::StringList> {
    v.map(|items| pb::StringList { items })
}

fn string_list_from_pb(v: Option<pb::StringList>) -> Option<Vec<String>> {
    v.map(|pb::StringList { items }| items)
}

fn string_map_to_pb(v: Option<BTreeMap<String, String>>) -> Option<pb::StringMap> {
    v.map(|entries| pb::StringMap { entries })
}

fn string_map_from_pb(v: Option<pb::StringMap>) -> Option<BTreeMap<String, String>> {
    v.map(|pb::StringMap { entries }| entries)
}

/// Converts every item, naming a failing one `field[i]`.
fn items_from_pb<P, C>(items: Vec<P>, field: &str) -> Result<Vec<C>, ConvertError>
where
    C: TryFrom<P, Error = ConvertError>,
{
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| C::try_from(item).map_err(|e| e.at(&format!("{field}[{i}]"))))
        .collect()
}

fn items_to_pb<C, P: From<C>>(items: Vec<C>) -> Vec<P> {
    items.into_iter().map(P::from).collect()
}

/// Converts an optional message, prefixing errors with `field`.
fn message_from_pb<P, C>(v: Option<P>, field: &str) -> Result<Option<C>, ConvertError>
where
    C: TryFrom<P, Error = ConvertError>,
{
    v.map(|m| C::try_from(m).map_err(|e| e.at(field)))
        .transpose()
}

fn cpu_to_pb(v: Option<CpuQuantity>) -> Option<String> {
    v.map(|q| q.as_str().to_owned())
}

fn bytes_to_pb(v: Option<ByteQuantity>) -> Option<String> {
    v.map(|q| q.as_str().to_owned())
}

fn duration_to_pb(v: Option<DurationValue>) -> Option<String> {
    v.map(|d| d.as_str().to_owned())
}

fn cpu_from_pb(v: Option<String>) -> Option<CpuQuantity> {
    v.map(CpuQuantity::new)
}

fn bytes_from_pb(v: Option<String>) -> Option<ByteQuantity> {
    v.map(ByteQuantity::new)
}

fn duration_from_pb(v: Option<String>) -> Option<DurationValue> {
    v.map(DurationValue::new)
}

// ---------------------------------------------------------------------------
// Container template and its parts
// ---------------------------------------------------------------------------

impl From<crds::EnvVar> for pb::EnvVar {
    fn from(v: crds::EnvVar) -> Self {
        let crds::EnvVar { name, value } = v;
        Self { name, value }
    }
}

impl TryFrom<pb::EnvVar> for crds::EnvVar {
    type Error = ConvertError;
    fn try_from(v: pb::EnvVar) -> Result<Self, ConvertError> {
        let pb::EnvVar { name, value } = v;
        Ok(Self { name, value })
    }
}

impl From<crds::PortMapping> for pb::PortMapping {
    fn from(v: crds::PortMapping) -> Self {
        let crds::PortMapping {
            container_port,
            host_port,
            protocol,
            host_ip,
        } = v;
        Self {
            container_port,
            host_port,
            protocol: protocol_to_pb(protocol),
            host_ip,
        }
    }
}

impl TryFrom<pb::PortMapping> for crds::PortMapping {
    type Error = ConvertError;
    fn try_from(v: pb::PortMapping) -> Result<Self, ConvertError> {
        let pb::PortMapping {
            container_port,
            host_port,
            protocol,
            host_ip,
        } = v;
        Ok(Self {
            container_port,
            host_port,
            protocol: protocol_from_pb(protocol, "protocol")?,
            host_ip,
        })
    }
}

impl From<crds::Mount> for pb::Mount {
    fn from(v: crds::Mount) -> Self {
        let crds::Mount {
            kind,
            source,
            target,
            read_only,
            size,
        } = v;
        Self {
            kind: mount_type_to_pb(Some(kind)),
            source,
            target,
            read_only,
            size: bytes_to_pb(size),
        }
    }
}

impl TryFrom<pb::Mount> for crds::Mount {
    type Error = ConvertError;
    fn try_from(v: pb::Mount) -> Result<Self, ConvertError> {
        let pb::Mount {
            kind,
            source,
            target,
            read_only,
            size,
        } = v;
        Ok(Self {
            kind: mount_type_from_pb(kind, "kind")?.ok_or_else(|| ConvertError::missing("kind"))?,
            source,
            target,
            read_only,
            size: bytes_from_pb(size),
        })
    }
}

impl From<crds::ResourceLimits> for pb::ResourceLimits {
    fn from(v: crds::ResourceLimits) -> Self {
        let crds::ResourceLimits { cpu, memory, pids } = v;
        Self {
            cpu: cpu_to_pb(cpu),
            memory: bytes_to_pb(memory),
            pids,
        }
    }
}

impl TryFrom<pb::ResourceLimits> for crds::ResourceLimits {
    type Error = ConvertError;
    fn try_from(v: pb::ResourceLimits) -> Result<Self, ConvertError> {
        let pb::ResourceLimits { cpu, memory, pids } = v;
        Ok(Self {
            cpu: cpu_from_pb(cpu),
            memory: bytes_from_pb(memory),
            pids,
        })
    }
}

impl From<crds::ResourceReservations> for pb::ResourceReservations {
    fn from(v: crds::ResourceReservations) -> Self {
        let crds::ResourceReservations { cpu, memory } = v;
        Self {
            cpu: cpu_to_pb(cpu),
            memory: bytes_to_pb(memory),
        }
    }
}

impl TryFrom<pb::ResourceReservations> for crds::ResourceReservations {
    type Error = ConvertError;
    fn try_from(v: pb::ResourceReservations) -> Result<Self, ConvertError> {
        let pb::ResourceReservations { cpu, memory } = v;
        Ok(Self {
            cpu: cpu_from_pb(cpu),
            memory: bytes_from_pb(memory),
        })
    }
}

impl From<crds::Resources> for pb::Resources {
    fn from(v: crds::Resources) -> Self {
        let crds::Resources {
            limits,
            reservations,
        } = v;
        Self {
            limits: limits.map(Into::into),
            reservations: reservations.map(Into::into),
        }
    }
}

impl TryFrom<pb::Resources> for crds::Resources {
    type Error = ConvertError;
    fn try_from(v: pb::Resources) -> Result<Self, ConvertError> {
        let pb::Resources {
            limits,
            reservations,
        } = v;
        Ok(Self {
            limits: message_from_pb(limits, "limits")?,
            reservations: message_from_pb(reservations, "reservations")?,
        })
    }
}

impl From<crds::Capabilities> for pb::Capabilities {
    fn from(v: crds::Capabilities) -> Self {
        let crds::Capabilities { add, drop } = v;
        Self {
            add: string_list_to_pb(add),
            drop: string_list_to_pb(drop),
        }
    }
}

impl TryFrom<pb::Capabilities> for crds::Capabilities {
    type Error = ConvertError;
    fn try_from(v: pb::Capabilities) -> Result<Self, ConvertError> {
        let pb::Capabilities { add, drop } = v;
        Ok(Self {
            add: string_list_from_pb(add),
            drop: string_list_from_pb(drop),
        })
    }
}

impl From<crds::HealthCheck> for pb::HealthCheck {
    fn from(v: crds::HealthCheck) -> Self {
        let crds::HealthCheck {
            command,
            interval,
            timeout,
            retries,
            start_period,
        } = v;
        Self {
            command,
            interval: duration_to_pb(interval),
            timeout: duration_to_pb(timeout),
            retries,
            start_period: duration_to_pb(start_period),
        }
    }
}

impl TryFrom<pb::HealthCheck> for crds::HealthCheck {
    type Error = ConvertError;
    fn try_from(v: pb::HealthCheck) -> Result<Self, ConvertError> {
        let pb::HealthCheck {
            command,
            interval,
            timeout,
            retries,
            start_period,
        } = v;
        Ok(Self {
            command,
            interval: duration_from_pb(interval),
            timeout: duration_from_pb(timeout),
            retries,
            start_period: duration_from_pb(start_period),
        })
    }
}

impl From<crds::RestartPolicy> for pb::RestartPolicy {
    fn from(v: crds::RestartPolicy) -> Self {
        let crds::RestartPolicy {
            condition,
            delay,
            max_delay,
            max_attempts,
            window,
        } = v;
        Self {
            condition: restart_condition_to_pb(condition),
            delay: duration_to_pb(delay),
            max_delay: duration_to_pb(max_delay),
            max_attempts,
            window: duration_to_pb(window),
        }
    }
}

impl TryFrom<pb::RestartPolicy> for crds::RestartPolicy {
    type Error = ConvertError;
    fn try_from(v: pb::RestartPolicy) -> Result<Self, ConvertError> {
        let pb::RestartPolicy {
            condition,
            delay,
            max_delay,
            max_attempts,
            window,
        } = v;
        Ok(Self {
            condition: restart_condition_from_pb(condition, "condition")?,
            delay: duration_from_pb(delay),
            max_delay: duration_from_pb(max_delay),
            max_attempts,
            window: duration_from_pb(window),
        })
    }
}

impl From<crds::ContainerTemplate> for pb::ContainerTemplate {
    fn from(v: crds::ContainerTemplate) -> Self {
        let crds::ContainerTemplate {
            image,
            image_pull_policy,
            command,
            args,
            init,
            env,
            working_dir,
            user,
            ports,
            mounts,
            resources,
            read_only_root_filesystem,
            capabilities,
            healthcheck,
            stop_grace_period,
            stop_signal,
            labels,
        } = v;
        Self {
            image,
            image_pull_policy: pull_policy_to_pb(image_pull_policy),
            command: string_list_to_pb(command),
            args: string_list_to_pb(args),
            init,
            env: env.map(|items| pb::EnvVarList {
                items: items_to_pb(items),
            }),
            working_dir,
            user,
            ports: ports.map(|items| pb::PortMappingList {
                items: items_to_pb(items),
            }),
            mounts: mounts.map(|items| pb::MountList {
                items: items_to_pb(items),
            }),
            resources: resources.map(Into::into),
            read_only_root_filesystem,
            capabilities: capabilities.map(Into::into),
            healthcheck: healthcheck.map(Into::into),
            stop_grace_period: duration_to_pb(stop_grace_period),
            stop_signal,
            labels: string_map_to_pb(labels),
        }
    }
}

impl TryFrom<pb::ContainerTemplate> for crds::ContainerTemplate {
    type Error = ConvertError;
    fn try_from(v: pb::ContainerTemplate) -> Result<Self, ConvertError> {
        let pb::ContainerTemplate {
            image,
            image_pull_policy,
            command,
            args,
            init,
            env,
            working_dir,
            user,
            ports,
            mounts,
            resources,
            read_only_root_filesystem,
            capabilities,
            healthcheck,
            stop_grace_period,
            stop_signal,
            labels,
        } = v;
        Ok(Self {
            image,
            image_pull_policy: pull_policy_from_pb(image_pull_policy, "image_pull_policy")?,
            command: string_list_from_pb(command),
            args: string_list_from_pb(args),
            init,
            env: env
                .map(|pb::EnvVarList { items }| items_from_pb(items, "env"))
                .transpose()?,
            working_dir,
            user,
            ports: ports
                .map(|pb::PortMappingList { items }| items_from_pb(items, "ports"))
                .transpose()?,
            mounts: mounts
                .map(|pb::MountList { items }| items_from_pb(items, "mounts"))
                .transpose()?,
            resources: message_from_pb(resources, "resources")?,
            read_only_root_filesystem,
            capabilities: message_from_pb(capabilities, "capabilities")?,
            healthcheck: message_from_pb(healthcheck, "healthcheck")?,
            stop_grace_period: duration_from_pb(stop_grace_period),
            stop_signal,
            labels: string_map_from_pb(labels),
        })
    }
}

// ---------------------------------------------------------------------------
// Task spec, status, and Task <-> Assignment
// ---------------------------------------------------------------------------

impl From<crds::TaskSpec> for pb::TaskSpec {
    fn from(v: crds::TaskSpec) -> Self {
        let crds::TaskSpec {
            service,
            slot,
            template,
            template_hash,
            restart_policy,
            host_name,
            desired_state,
            on_host_loss,
        } = v;
        Self {
            service,
            slot,
            template: Some(template.into()),
            template_hash,
            restart_policy: restart_policy.map(Into::into),
            host_name,
            desired_state: desired_state_to_pb(desired_state),
            on_host_loss: host_loss_to_pb(on_host_loss),
        }
    }
}

impl TryFrom<pb::TaskSpec> for crds::TaskSpec {
    type Error = ConvertError;
    fn try_from(v: pb::TaskSpec) -> Result<Self, ConvertError> {
        let pb::TaskSpec {
            service,
            slot,
            template,
            template_hash,
            restart_policy,
            host_name,
            desired_state,
            on_host_loss,
        } = v;
        Ok(Self {
            service,
            slot,
            template: message_from_pb(template, "template")?
                .ok_or_else(|| ConvertError::missing("template"))?,
            template_hash,
            restart_policy: message_from_pb(restart_policy, "restart_policy")?,
            host_name,
            desired_state: desired_state_from_pb(desired_state, "desired_state")?,
            on_host_loss: host_loss_from_pb(on_host_loss, "on_host_loss")?,
        })
    }
}

impl From<crds::TaskStatus> for pb::TaskStatus {
    fn from(v: crds::TaskStatus) -> Self {
        let crds::TaskStatus {
            phase,
            reason,
            message,
            container_id,
            health,
            restart_count,
            exit_code,
            oom_killed,
            started_at,
            finished_at,
            last_transition_time,
        } = v;
        Self {
            phase: phase_to_pb(phase),
            reason,
            message,
            container_id,
            health: health_to_pb(health),
            restart_count,
            exit_code,
            oom_killed,
            started_at: time_to_pb(started_at),
            finished_at: time_to_pb(finished_at),
            last_transition_time: time_to_pb(last_transition_time),
        }
    }
}

impl TryFrom<pb::TaskStatus> for crds::TaskStatus {
    type Error = ConvertError;
    fn try_from(v: pb::TaskStatus) -> Result<Self, ConvertError> {
        let pb::TaskStatus {
            phase,
            reason,
            message,
            container_id,
            health,
            restart_count,
            exit_code,
            oom_killed,
            started_at,
            finished_at,
            last_transition_time,
        } = v;
        Ok(Self {
            phase: phase_from_pb(phase, "phase")?,
            reason,
            message,
            container_id,
            health: health_from_pb(health, "health")?,
            restart_count,
            exit_code,
            oom_killed,
            started_at: time_from_pb(started_at, "started_at")?,
            finished_at: time_from_pb(finished_at, "finished_at")?,
            last_transition_time: time_from_pb(last_transition_time, "last_transition_time")?,
        })
    }
}

/// A task as sent to its host: `metadata.uid`, `namespace`, `name` and
/// `resourceVersion`, the full spec, and the status on record (status
/// changes travel the other way, in [`pb::TaskStatusUpdate`]; the record only
/// lets a restarted agent carry on). The rest of the metadata is not part of
/// an assignment; a missing uid, namespace or name becomes an empty string,
/// which [`crds::Task::try_from`] refuses.
impl From<crds::Task> for pb::Assignment {
    fn from(v: crds::Task) -> Self {
        let crds::Task {
            metadata,
            spec,
            status,
        } = v;
        let ObjectMeta {
            uid,
            namespace,
            name,
            resource_version,
            ..
        } = metadata;
        Self {
            uid: uid.unwrap_or_default(),
            namespace: namespace.unwrap_or_default(),
            name: name.unwrap_or_default(),
            resource_version,
            spec: Some(spec.into()),
            recorded_status: status.map(Into::into),
        }
    }
}

/// The task an assignment describes: metadata with uid, namespace, name and
/// resource version only, and the recorded status as its status. Uid,
/// namespace and name must not be empty, and the spec must be present.
impl TryFrom<pb::Assignment> for crds::Task {
    type Error = ConvertError;
    fn try_from(v: pb::Assignment) -> Result<Self, ConvertError> {
        let pb::Assignment {
            uid,
            namespace,
            name,
            resource_version,
            spec,
            recorded_status,
        } = v;
        let required = |value: String, field: &str| {
            if value.is_empty() {
                Err(ConvertError::new(field, ConvertErrorReason::Empty))
            } else {
                Ok(Some(value))
            }
        };
        Ok(Self {
            metadata: ObjectMeta {
                uid: required(uid, "uid")?,
                namespace: required(namespace, "namespace")?,
                name: required(name, "name")?,
                resource_version,
                ..ObjectMeta::default()
            },
            spec: message_from_pb(spec, "spec")?.ok_or_else(|| ConvertError::missing("spec"))?,
            status: message_from_pb(recorded_status, "recorded_status")?,
        })
    }
}

impl pb::TaskStatusUpdate {
    /// The status report of a task: its identity and its status (`None` status
    /// gives an absent `status` message). Missing identity fields become empty
    /// strings.
    pub fn from_task(task: &crds::Task) -> Self {
        Self {
            task_uid: task.metadata.uid.clone().unwrap_or_default(),
            namespace: task.metadata.namespace.clone().unwrap_or_default(),
            name: task.metadata.name.clone().unwrap_or_default(),
            status: task.status.clone().map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> crds::ContainerTemplate {
        crds::ContainerTemplate {
            image: "shoal-test/busybox:1".into(),
            mounts: Some(vec![
                crds::Mount {
                    kind: crds::MountType::Volume,
                    source: Some("data".into()),
                    target: "/data".into(),
                    ..Default::default()
                },
                crds::Mount {
                    kind: crds::MountType::Tmpfs,
                    target: "/tmp".into(),
                    size: Some(ByteQuantity::new("64Mi")),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    fn assignment() -> pb::Assignment {
        crds::Task {
            metadata: ObjectMeta {
                uid: Some("u-1".into()),
                namespace: Some("default".into()),
                name: Some("web-0".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: crds::TaskSpec {
                service: "web".into(),
                template: template(),
                template_hash: "abc".into(),
                ..Default::default()
            },
            status: None,
        }
        .into()
    }

    #[test]
    fn unknown_enum_number_names_the_field() {
        let mut a = assignment();
        let spec = a.spec.as_mut().unwrap();
        spec.template
            .as_mut()
            .unwrap()
            .mounts
            .as_mut()
            .unwrap()
            .items[1]
            .kind = 42;
        let err = crds::Task::try_from(a).unwrap_err();
        assert_eq!(err.field, "spec.template.mounts[1].kind");
        assert_eq!(
            err.reason,
            ConvertErrorReason::UnknownEnumValue {
                enum_name: "MountType",
                value: 42
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid field `spec.template.mounts[1].kind`: unknown MountType value 42"
        );
    }

    #[test]
    fn unknown_enum_numbers_in_status_and_policy() {
        let status = pb::TaskStatus {
            phase: 99,
            ..Default::default()
        };
        let err = crds::TaskStatus::try_from(status).unwrap_err();
        assert_eq!(err.field, "phase");
        assert!(matches!(
            err.reason,
            ConvertErrorReason::UnknownEnumValue {
                enum_name: "TaskPhase",
                value: 99
            }
        ));

        let mut a = assignment();
        a.spec.as_mut().unwrap().restart_policy = Some(pb::RestartPolicy {
            condition: -1,
            ..Default::default()
        });
        let err = crds::Task::try_from(a).unwrap_err();
        assert_eq!(err.field, "spec.restart_policy.condition");

        let mut a = assignment();
        a.spec.as_mut().unwrap().desired_state = 3;
        assert_eq!(
            crds::Task::try_from(a).unwrap_err().field,
            "spec.desired_state"
        );
    }

    #[test]
    fn unspecified_mount_kind_is_missing() {
        let mut a = assignment();
        let t = a.spec.as_mut().unwrap().template.as_mut().unwrap();
        t.mounts.as_mut().unwrap().items[0].kind = pb::MountType::Unspecified as i32;
        let err = crds::Task::try_from(a).unwrap_err();
        assert_eq!(err.field, "spec.template.mounts[0].kind");
        assert_eq!(err.reason, ConvertErrorReason::Missing);
    }

    #[test]
    fn missing_required_messages_and_identity() {
        let mut a = assignment();
        a.spec.as_mut().unwrap().template = None;
        let err = crds::Task::try_from(a).unwrap_err();
        assert_eq!(err.field, "spec.template");
        assert_eq!(err.reason, ConvertErrorReason::Missing);

        let mut a = assignment();
        a.spec = None;
        assert_eq!(crds::Task::try_from(a).unwrap_err().field, "spec");

        let mut a = assignment();
        a.uid.clear();
        let err = crds::Task::try_from(a).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason),
            ("uid", ConvertErrorReason::Empty)
        );
    }

    #[test]
    fn timestamps_are_normalised_and_checked() {
        let before_epoch = jiff::Timestamp::new(-2, 999_999_999).unwrap();
        let ts = timestamp_from_jiff(before_epoch);
        assert_eq!((ts.seconds, ts.nanos), (-2, 999_999_999));
        assert_eq!(timestamp_to_jiff(&ts, "t").unwrap(), before_epoch);

        let not_normalised = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        let err = timestamp_to_jiff(&not_normalised, "started_at").unwrap_err();
        assert_eq!(err.field, "started_at");
        let out_of_range = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(matches!(
            timestamp_to_jiff(&out_of_range, "t").unwrap_err().reason,
            ConvertErrorReason::InvalidTimestamp { .. }
        ));

        let status = pb::TaskStatus {
            finished_at: Some(out_of_range),
            ..Default::default()
        };
        assert_eq!(
            crds::TaskStatus::try_from(status).unwrap_err().field,
            "finished_at"
        );
    }

    #[test]
    fn absent_and_empty_lists_stay_apart() {
        let absent = crds::ContainerTemplate::default();
        let empty = crds::ContainerTemplate {
            command: Some(vec![]),
            env: Some(vec![]),
            labels: Some(BTreeMap::new()),
            ..Default::default()
        };
        let pa = pb::ContainerTemplate::from(absent.clone());
        let pe = pb::ContainerTemplate::from(empty.clone());
        assert_ne!(pa, pe);
        assert_eq!(crds::ContainerTemplate::try_from(pa).unwrap(), absent);
        assert_eq!(crds::ContainerTemplate::try_from(pe).unwrap(), empty);
    }
}
