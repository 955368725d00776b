//! The scheduler's inputs from stored resources.

use std::collections::{BTreeMap, BTreeSet};

use shoal_crds::quantity::{parse_bytes, parse_cpu};
use shoal_crds::{
    ConditionStatus, ContainerTemplate, DesiredState, Host, Protocol, Service, Task, TaskPhase,
};

use super::model::{Allocation, Demand, HostPort, PendingTask, SchedHost, ServiceRef, TaskGroup};
use crate::selector::Selector;

/// Label on Global-mode tasks naming the host they are for.
pub const TARGET_HOST_LABEL: &str = "shoal.dev/target-host";

impl SchedHost {
    /// What the scheduler needs of a Host. Unparsable or missing allocatable
    /// amounts count as zero (only tasks reserving nothing fit).
    pub fn from_host(h: &Host) -> Self {
        let status = h.status.as_ref();
        // A host being deleted takes nothing new.
        let ready = h.metadata.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
                });
        let alloc = status.and_then(|s| s.allocatable.as_ref());
        let cpu = alloc
            .and_then(|a| a.cpu.as_ref())
            .and_then(|q| parse_cpu(q.as_str()).ok())
            .unwrap_or(0);
        let memory = alloc
            .and_then(|a| a.memory.as_ref())
            .and_then(|q| parse_bytes(q.as_str()).ok())
            .unwrap_or(0);
        SchedHost {
            name: h.metadata.name.clone().unwrap_or_default(),
            labels: h.metadata.labels.clone().unwrap_or_default(),
            ready,
            availability: h.spec.availability(),
            cpu_millis: cpu,
            memory_bytes: memory,
        }
    }
}

/// Host ports a template publishes (port 0, picked by the engine, holds
/// nothing the scheduler must keep apart).
pub fn host_ports(t: &ContainerTemplate) -> Vec<HostPort> {
    t.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            p.host_port
                .filter(|hp| *hp != 0)
                .map(|hp| (p.protocol.unwrap_or(Protocol::Tcp), hp))
        })
        .collect()
}

impl Demand {
    /// What a task of this template reserves and publishes.
    pub fn from_template(t: &ContainerTemplate) -> Self {
        let res = t.resources.as_ref().and_then(|r| r.reservations.as_ref());
        Demand {
            cpu_millis: res
                .and_then(|r| r.cpu.as_ref())
                .and_then(|q| parse_cpu(q.as_str()).ok())
                .unwrap_or(0),
            memory_bytes: res
                .and_then(|r| r.memory.as_ref())
                .and_then(|q| parse_bytes(q.as_str()).ok())
                .unwrap_or(0),
            host_ports: host_ports(t),
        }
    }
}

/// The phase of a task, defaulted (`Pending`).
pub fn phase_of(t: &Task) -> TaskPhase {
    t.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

impl Allocation {
    /// What a bound task holds on its host: its reservations while its desired
    /// state is Running or it is not terminal; its host ports while its
    /// container may still run (not terminal, or Orphaned: its host is gone
    /// from view but the container may not be). `None` for an unbound task or
    /// one that holds nothing.
    pub fn from_task(t: &Task) -> Option<Self> {
        let host = t.spec.host_name.clone()?;
        let phase = phase_of(t);
        let terminal = phase.is_terminal();
        let running = t.spec.desired_state() == DesiredState::Running;
        let holds_ports = !terminal || phase == TaskPhase::Orphaned;
        if !(running || !terminal || holds_ports) {
            return None;
        }
        let demand = Demand::from_template(&t.spec.template);
        let reserves = running || !terminal;
        Some(Allocation {
            host,
            service: ServiceRef::new(
                t.metadata.namespace.clone().unwrap_or_default(),
                t.spec.service.clone(),
            ),
            cpu_millis: if reserves { demand.cpu_millis } else { 0 },
            memory_bytes: if reserves { demand.memory_bytes } else { 0 },
            host_ports: if holds_ports {
                demand.host_ports
            } else {
                Vec::new()
            },
            live: running && !terminal,
        })
    }
}

/// Whether a task waits for the scheduler: unbound, meant to run, not ended,
/// not being deleted.
pub fn is_unbound(t: &Task) -> bool {
    t.spec.host_name.is_none()
        && t.spec.desired_state() == DesiredState::Running
        && !phase_of(t).is_terminal()
        && t.metadata.deletion_timestamp.is_none()
}

/// Groups the unbound tasks of the given services for [`super::schedule`]:
/// one group per (service, template hash), in (namespace, service, hash)
/// order, tasks by slot then name. Tasks of services not in `services` (or
/// being deleted) are left out. `failed_hosts` gives, per service, the hosts
/// where its tasks failed recently.
pub fn groups_from(
    services: &[Service],
    tasks: &[Task],
    failed_hosts: &BTreeMap<ServiceRef, BTreeSet<String>>,
) -> Vec<TaskGroup> {
    let by_ref: BTreeMap<ServiceRef, &Service> = services
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|s| {
            (
                ServiceRef::new(
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                ),
                s,
            )
        })
        .collect();
    let mut grouped: BTreeMap<(ServiceRef, String), Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| is_unbound(t)) {
        let svc = ServiceRef::new(
            t.metadata.namespace.clone().unwrap_or_default(),
            t.spec.service.clone(),
        );
        if by_ref.contains_key(&svc) {
            grouped
                .entry((svc, t.spec.template_hash.clone()))
                .or_default()
                .push(t);
        }
    }
    let mut out = Vec::with_capacity(grouped.len());
    for ((svc, _hash), mut ts) in grouped {
        let Some(s) = by_ref.get(&svc) else { continue };
        ts.sort_by(|a, b| (a.spec.slot, &a.metadata.name).cmp(&(b.spec.slot, &b.metadata.name)));
        let placement = s.spec.placement.as_ref();
        let Some(first) = ts.first() else { continue };
        out.push(TaskGroup {
            selector: Selector::from_option(placement.and_then(|p| p.host_selector.as_ref())),
            spread_by: placement
                .and_then(|p| p.spread_by.clone())
                .unwrap_or_default(),
            max_per_host: placement
                .and_then(|p| p.max_per_host)
                .and_then(|m| u32::try_from(m).ok()),
            demand: Demand::from_template(&first.spec.template),
            failed_hosts: failed_hosts.get(&svc).cloned().unwrap_or_default(),
            tasks: ts
                .iter()
                .map(|t| PendingTask {
                    name: t.metadata.name.clone().unwrap_or_default(),
                    pinned_host: t
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(TARGET_HOST_LABEL))
                        .cloned(),
                })
                .collect(),
            service: svc,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use shoal_crds::quantity::{ByteQuantity, CpuQuantity};
    use shoal_crds::{
        Condition, HostResources, HostSpec, HostStatus, PortMapping, ResourceReservations,
        Resources, TaskSpec, TaskStatus,
    };

    use super::*;

    fn host(ready: ConditionStatus, alloc: Option<(&str, &str)>) -> Host {
        Host {
            metadata: ObjectMeta {
                name: Some("h1".into()),
                ..Default::default()
            },
            spec: HostSpec::default(),
            status: Some(HostStatus {
                conditions: Some(vec![Condition {
                    type_: "Ready".into(),
                    status: ready,
                    ..Default::default()
                }]),
                allocatable: alloc.map(|(c, m)| HostResources {
                    cpu: Some(CpuQuantity::new(c)),
                    memory: Some(ByteQuantity::new(m)),
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn hosts() {
        let h = SchedHost::from_host(&host(ConditionStatus::True, Some(("2", "1Gi"))));
        assert!(h.ready);
        assert_eq!((h.cpu_millis, h.memory_bytes), (2000, 1 << 30));
        let h = SchedHost::from_host(&host(ConditionStatus::Unknown, None));
        assert!(!h.ready);
        assert_eq!((h.cpu_millis, h.memory_bytes), (0, 0));
        let mut deleting = host(ConditionStatus::True, Some(("2", "1Gi")));
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(!SchedHost::from_host(&deleting).ready);
    }

    #[test]
    fn engine_picked_host_ports_hold_nothing() {
        let t = ContainerTemplate {
            image: "busybox".into(),
            ports: Some(vec![
                PortMapping {
                    container_port: 80,
                    host_port: Some(0),
                    ..Default::default()
                },
                PortMapping {
                    container_port: 81,
                    host_port: Some(18081),
                    ..Default::default()
                },
                PortMapping {
                    container_port: 82,
                    host_port: None,
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        assert_eq!(host_ports(&t), vec![(Protocol::Tcp, 18081)]);
    }

    fn task(host: Option<&str>, desired: DesiredState, phase: TaskPhase) -> Task {
        let template = ContainerTemplate {
            image: "busybox".into(),
            ports: Some(vec![PortMapping {
                container_port: 80,
                host_port: Some(8080),
                protocol: Some(Protocol::Udp),
                ..Default::default()
            }]),
            resources: Some(Resources {
                limits: None,
                reservations: Some(ResourceReservations {
                    cpu: Some(CpuQuantity::new("250m")),
                    memory: Some(ByteQuantity::new("64Mi")),
                }),
            }),
            ..Default::default()
        };
        Task {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: TaskSpec {
                service: "web".into(),
                template,
                template_hash: "x".into(),
                host_name: host.map(str::to_owned),
                desired_state: Some(desired),
                ..Default::default()
            },
            status: Some(TaskStatus {
                phase: Some(phase),
                ..Default::default()
            }),
        }
    }

    /// (host, desired, phase) and what it holds: (cpu, memory, ports, live).
    type Case<'a> = (
        Option<&'a str>,
        DesiredState,
        TaskPhase,
        Option<(u64, u64, bool, bool)>,
    );

    #[test]
    fn allocations() {
        use DesiredState::{Running as Run, Shutdown as Stop};
        use TaskPhase::*;
        const M: u64 = 64 << 20;
        let port = vec![(Protocol::Udp, 8080)];
        // (host, desired, phase) -> (cpu, memory, ports, live), or None.
        let cases: Vec<Case<'_>> = vec![
            (None, Run, Pending, None),
            (Some("h1"), Run, Running, Some((250, M, true, true))),
            (Some("h1"), Run, Pending, Some((250, M, true, true))),
            (Some("h1"), Stop, Running, Some((250, M, true, false))),
            (Some("h1"), Stop, Shutdown, None),
            (Some("h1"), Stop, Orphaned, Some((0, 0, true, false))),
            (Some("h1"), Run, Orphaned, Some((250, M, true, false))),
            (Some("h1"), Run, Failed, Some((250, M, false, false))),
            (Some("h1"), Stop, Rejected, None),
        ];
        for (host, desired, phase, want) in cases {
            let got = Allocation::from_task(&task(host, desired, phase));
            let want = want.map(|(cpu, memory, ports, live)| Allocation {
                host: "h1".into(),
                service: ServiceRef::new("default", "web"),
                cpu_millis: cpu,
                memory_bytes: memory,
                host_ports: if ports { port.clone() } else { vec![] },
                live,
            });
            assert_eq!(got, want, "{host:?} {desired:?} {phase:?}");
        }
        assert!(is_unbound(&task(None, Run, Pending)));
        assert!(!is_unbound(&task(None, Stop, Pending)));
        assert!(!is_unbound(&task(Some("h1"), Run, Pending)));
    }
}
