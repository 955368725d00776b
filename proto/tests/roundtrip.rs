//! Property tests: resource → message → bytes → message → resource is the
//! identity, and so is message → resource → message for messages made from
//! resources. Generated values exercise every optional field present and
//! absent, every enum variant, and lists and maps absent, empty and full.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use proptest::collection::{btree_map, vec};
use proptest::option::of;
use proptest::prelude::*;
use prost::Message;
use shoal_crds::{
    ByteQuantity, Capabilities, ContainerTemplate, CpuQuantity, DesiredState, DurationValue,
    EnvVar, HealthCheck, HealthState, ImagePullPolicy, Mount, MountType, PortMapping, Protocol,
    ResourceLimits, ResourceReservations, Resources, RestartCondition, RestartPolicy, Task,
    TaskPhase, TaskSpec, TaskStatus,
};
use shoal_proto::v1 as pb;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Any short string, including the empty one and non-ASCII.
fn text() -> BoxedStrategy<String> {
    prop_oneof![Just(String::new()), "\\PC{1,8}", "[a-z0-9:/._-]{1,12}"].boxed()
}

fn ident() -> BoxedStrategy<String> {
    "[a-z0-9][a-z0-9-]{0,15}".boxed()
}

fn strings() -> BoxedStrategy<Option<Vec<String>>> {
    of(vec(text(), 0..4)).boxed()
}

fn labels() -> BoxedStrategy<Option<BTreeMap<String, String>>> {
    of(btree_map(text(), text(), 0..4)).boxed()
}

fn cpu() -> BoxedStrategy<Option<CpuQuantity>> {
    of(prop_oneof!["[0-9]{1,4}m", "[0-9]\\.[0-9]{1,3}", text()].prop_map(CpuQuantity::new)).boxed()
}

fn bytes() -> BoxedStrategy<Option<ByteQuantity>> {
    of(prop_oneof!["[0-9]{1,4}(Ki|Mi|Gi|M|G|mb|b)", text()].prop_map(ByteQuantity::new)).boxed()
}

fn duration() -> BoxedStrategy<Option<DurationValue>> {
    of(prop_oneof!["([0-9]{1,3}(ms|s|m|h)){1,3}", text()].prop_map(DurationValue::new)).boxed()
}

fn pull_policy() -> BoxedStrategy<Option<ImagePullPolicy>> {
    of(prop_oneof![
        Just(ImagePullPolicy::Always),
        Just(ImagePullPolicy::IfNotPresent),
        Just(ImagePullPolicy::Never),
    ])
    .boxed()
}

fn protocol() -> BoxedStrategy<Option<Protocol>> {
    of(prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]).boxed()
}

fn mount_type() -> BoxedStrategy<MountType> {
    prop_oneof![
        Just(MountType::Volume),
        Just(MountType::Bind),
        Just(MountType::Tmpfs),
    ]
    .boxed()
}

fn restart_condition() -> BoxedStrategy<Option<RestartCondition>> {
    of(prop_oneof![
        Just(RestartCondition::Always),
        Just(RestartCondition::OnFailure),
        Just(RestartCondition::Never),
    ])
    .boxed()
}

fn desired_state() -> BoxedStrategy<Option<DesiredState>> {
    of(prop_oneof![
        Just(DesiredState::Running),
        Just(DesiredState::Shutdown),
    ])
    .boxed()
}

fn host_loss() -> BoxedStrategy<Option<shoal_crds::HostLossPolicy>> {
    of(prop_oneof![
        Just(shoal_crds::HostLossPolicy::Reschedule),
        Just(shoal_crds::HostLossPolicy::Fence),
    ])
    .boxed()
}

fn phase() -> BoxedStrategy<Option<TaskPhase>> {
    of(prop_oneof![
        Just(TaskPhase::Pending),
        Just(TaskPhase::Assigned),
        Just(TaskPhase::Starting),
        Just(TaskPhase::Running),
        Just(TaskPhase::Succeeded),
        Just(TaskPhase::Failed),
        Just(TaskPhase::Rejected),
        Just(TaskPhase::Shutdown),
        Just(TaskPhase::Orphaned),
    ])
    .boxed()
}

fn health() -> BoxedStrategy<Option<HealthState>> {
    of(prop_oneof![
        Just(HealthState::Starting),
        Just(HealthState::Healthy),
        Just(HealthState::Unhealthy),
    ])
    .boxed()
}

/// Any instant jiff can represent (years -9999..=9999, nanosecond
/// precision), with the edges and recent times well represented.
fn time() -> BoxedStrategy<Option<Time>> {
    let min = Timestamp::MIN.as_nanosecond();
    let max = Timestamp::MAX.as_nanosecond();
    let recent = 1_600_000_000_000_000_000i128..1_900_000_000_000_000_000i128;
    of(prop_oneof![
        (min..=max),
        recent,
        (-2_000_000_000i128..2_000_000_000i128),
        Just(min),
        Just(max),
    ]
    .prop_map(|ns| Time(Timestamp::from_nanosecond(ns).unwrap())))
    .boxed()
}

fn env_var() -> BoxedStrategy<EnvVar> {
    (text(), of(text()))
        .prop_map(|(name, value)| EnvVar { name, value })
        .boxed()
}

fn port() -> BoxedStrategy<PortMapping> {
    (any::<i32>(), of(any::<i32>()), protocol(), of(text()))
        .prop_map(
            |(container_port, host_port, protocol, host_ip)| PortMapping {
                container_port,
                host_port,
                protocol,
                host_ip,
            },
        )
        .boxed()
}

fn mount() -> BoxedStrategy<Mount> {
    (mount_type(), of(text()), text(), of(any::<bool>()), bytes())
        .prop_map(|(kind, source, target, read_only, size)| Mount {
            kind,
            source,
            target,
            read_only,
            size,
        })
        .boxed()
}

fn resources() -> BoxedStrategy<Option<Resources>> {
    let limits = (cpu(), bytes(), of(any::<i64>()))
        .prop_map(|(cpu, memory, pids)| ResourceLimits { cpu, memory, pids });
    let reservations =
        (cpu(), bytes()).prop_map(|(cpu, memory)| ResourceReservations { cpu, memory });
    of(
        (of(limits), of(reservations)).prop_map(|(limits, reservations)| Resources {
            limits,
            reservations,
        }),
    )
    .boxed()
}

fn capabilities() -> BoxedStrategy<Option<Capabilities>> {
    of((strings(), strings()).prop_map(|(add, drop)| Capabilities { add, drop })).boxed()
}

fn healthcheck() -> BoxedStrategy<Option<HealthCheck>> {
    of((
        vec(text(), 0..4),
        duration(),
        duration(),
        of(any::<i32>()),
        duration(),
    )
        .prop_map(
            |(command, interval, timeout, retries, start_period)| HealthCheck {
                command,
                interval,
                timeout,
                retries,
                start_period,
            },
        ))
    .boxed()
}

fn restart_policy() -> BoxedStrategy<Option<RestartPolicy>> {
    of((
        restart_condition(),
        duration(),
        duration(),
        of(any::<i32>()),
        duration(),
    )
        .prop_map(
            |(condition, delay, max_delay, max_attempts, window)| RestartPolicy {
                condition,
                delay,
                max_delay,
                max_attempts,
                window,
            },
        ))
    .boxed()
}

fn template() -> BoxedStrategy<ContainerTemplate> {
    let head = (
        text(),
        pull_policy(),
        strings(),
        strings(),
        of(any::<bool>()),
        of(vec(env_var(), 0..4)),
        of(text()),
        of(text()),
        of(vec(port(), 0..4)),
    );
    let tail = (
        of(vec(mount(), 0..4)),
        resources(),
        of(any::<bool>()),
        capabilities(),
        healthcheck(),
        duration(),
        of(text()),
        labels(),
    );
    (head, tail)
        .prop_map(
            |(
                (image, image_pull_policy, command, args, init, env, working_dir, user, ports),
                (
                    mounts,
                    resources,
                    read_only_root_filesystem,
                    capabilities,
                    healthcheck,
                    stop_grace_period,
                    stop_signal,
                    labels,
                ),
            )| ContainerTemplate {
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
            },
        )
        .boxed()
}

fn spec() -> BoxedStrategy<TaskSpec> {
    (
        text(),
        of(any::<i32>()),
        template(),
        text(),
        restart_policy(),
        of(text()),
        desired_state(),
        host_loss(),
    )
        .prop_map(
            |(
                service,
                slot,
                template,
                template_hash,
                restart_policy,
                host_name,
                desired_state,
                on_host_loss,
            )| {
                TaskSpec {
                    service,
                    slot,
                    template,
                    template_hash,
                    restart_policy,
                    host_name,
                    desired_state,
                    on_host_loss,
                }
            },
        )
        .boxed()
}

fn status() -> BoxedStrategy<TaskStatus> {
    (
        phase(),
        of(text()),
        of(text()),
        of(text()),
        health(),
        of(any::<i32>()),
        of(any::<i32>()),
        of(any::<bool>()),
        time(),
        time(),
        time(),
    )
        .prop_map(
            |(
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
            )| TaskStatus {
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
            },
        )
        .boxed()
}

/// A task as the control plane stores it: uid, namespace and name always set
/// (an assignment requires them), the resource version present or absent.
fn task() -> BoxedStrategy<Task> {
    (ident(), ident(), ident(), of(text()), spec(), of(status()))
        .prop_map(
            |(uid, namespace, name, resource_version, spec, status)| Task {
                metadata: ObjectMeta {
                    uid: Some(uid),
                    namespace: Some(namespace),
                    name: Some(name),
                    resource_version,
                    ..ObjectMeta::default()
                },
                spec,
                status,
            },
        )
        .boxed()
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Encodes and decodes, asserting the bytes give back the same message.
fn through_bytes<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) -> M {
    let bytes = m.encode_to_vec();
    let decoded = M::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(&decoded, m);
    decoded
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn template_round_trips(t in template()) {
        let msg = pb::ContainerTemplate::from(t.clone());
        let msg = through_bytes(&msg);
        let back = ContainerTemplate::try_from(msg.clone()).unwrap();
        prop_assert_eq!(&back, &t);
        prop_assert_eq!(pb::ContainerTemplate::from(back), msg);
    }

    #[test]
    fn status_round_trips(s in status()) {
        let msg = through_bytes(&pb::TaskStatus::from(s.clone()));
        let back = TaskStatus::try_from(msg.clone()).unwrap();
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(pb::TaskStatus::from(back), msg);
    }

    #[test]
    fn spec_round_trips(s in spec()) {
        let msg = through_bytes(&pb::TaskSpec::from(s.clone()));
        let back = TaskSpec::try_from(msg.clone()).unwrap();
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(pb::TaskSpec::from(back), msg);
    }

    /// A full task travels as an assignment (identity, spec and the status
    /// on record) one way and as a status update the other; each gives the
    /// task back.
    #[test]
    fn task_round_trips(task in task()) {
        let assignment = through_bytes(&pb::Assignment::from(task.clone()));
        let update = through_bytes(&pb::TaskStatusUpdate::from_task(&task));
        prop_assert_eq!(Some(&update.task_uid), task.metadata.uid.as_ref());
        prop_assert_eq!(Some(&update.namespace), task.metadata.namespace.as_ref());
        prop_assert_eq!(Some(&update.name), task.metadata.name.as_ref());

        let back = Task::try_from(assignment.clone()).unwrap();
        prop_assert_eq!(&back, &task);
        let status = update.status.clone().map(TaskStatus::try_from).transpose().unwrap();
        prop_assert_eq!(status.as_ref(), task.status.as_ref());

        // message -> resource -> message
        prop_assert_eq!(pb::Assignment::from(back.clone()), assignment);
        prop_assert_eq!(pb::TaskStatusUpdate::from_task(&back), update);
    }

    /// The same values inside the session envelopes (oneofs, deltas, batches).
    #[test]
    fn envelopes_round_trip(tasks in vec(task(), 0..4), seq in any::<u64>()) {
        let assignments: Vec<pb::Assignment> =
            tasks.iter().cloned().map(pb::Assignment::from).collect();
        let set = pb::ControlMessage {
            message: Some(pb::control_message::Message::AssignmentSet(pb::AssignmentSet {
                sequence: seq,
                assignments: assignments.clone(),
            })),
        };
        let delta = pb::ControlMessage {
            message: Some(pb::control_message::Message::AssignmentDelta(pb::AssignmentDelta {
                sequence: seq.wrapping_add(1),
                previous_sequence: seq,
                upserted: assignments,
                removed_task_uids: tasks.iter().filter_map(|t| t.metadata.uid.clone()).collect(),
            })),
        };
        let batch = pb::AgentMessage {
            message: Some(pb::agent_message::Message::TaskStatus(pb::TaskStatusBatch {
                updates: tasks.iter().map(pb::TaskStatusUpdate::from_task).collect(),
            })),
        };
        through_bytes(&set);
        through_bytes(&batch);
        let Some(pb::control_message::Message::AssignmentDelta(d)) =
            through_bytes(&delta).message
        else {
            panic!("not a delta");
        };
        let back: Vec<Task> = d.upserted.into_iter().map(|a| Task::try_from(a).unwrap()).collect();
        prop_assert_eq!(back, tasks);
    }

    #[test]
    fn timestamps_round_trip(t in time()) {
        if let Some(Time(ts)) = t {
            let msg = shoal_proto::convert::timestamp_from_jiff(ts);
            prop_assert!((0..1_000_000_000).contains(&msg.nanos));
            let msg = through_bytes(&msg);
            prop_assert_eq!(shoal_proto::convert::timestamp_to_jiff(&msg, "t").unwrap(), ts);
        }
    }
}
