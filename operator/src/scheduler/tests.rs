use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;
use shoal_crds::{Availability, Protocol};

use super::*;
use crate::selector::Selector;

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

fn host(name: &str, labels: &[(&str, &str)], cpu: u64, mem: u64) -> SchedHost {
    SchedHost {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ready: true,
        availability: Availability::Active,
        cpu_millis: cpu,
        memory_bytes: mem,
    }
}

fn svc(name: &str) -> ServiceRef {
    ServiceRef::new("default", name)
}

fn group(service: &str, n: usize) -> TaskGroup {
    TaskGroup {
        service: svc(service),
        selector: Selector::default(),
        spread_by: Vec::new(),
        max_per_host: None,
        demand: Demand::default(),
        failed_hosts: BTreeSet::new(),
        tasks: (0..n)
            .map(|i| PendingTask {
                name: format!("{service}-{i}"),
                pinned_host: None,
            })
            .collect(),
    }
}

fn alloc(host: &str, service: &str, cpu: u64, mem: u64) -> Allocation {
    Allocation {
        host: host.into(),
        service: svc(service),
        cpu_millis: cpu,
        memory_bytes: mem,
        host_ports: Vec::new(),
        live: true,
    }
}

fn zone_east() -> Selector {
    Selector::new(&LabelSelector {
        match_labels: Some([("zone".to_string(), "east".to_string())].into()),
        ..Default::default()
    })
}

/// task name -> host name.
fn placed(out: &ScheduleOutcome) -> BTreeMap<String, String> {
    out.bindings
        .iter()
        .map(|b| (b.task.clone(), b.host.clone()))
        .collect()
}

fn hosts_used(out: &ScheduleOutcome) -> Vec<String> {
    out.bindings.iter().map(|b| b.host.clone()).collect()
}

struct Case {
    name: &'static str,
    hosts: Vec<SchedHost>,
    allocations: Vec<Allocation>,
    groups: Vec<TaskGroup>,
    /// Hosts of the bindings, in order.
    want_hosts: Vec<&'static str>,
    /// Messages of the unschedulable groups.
    want_unschedulable: Vec<&'static str>,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    let mut not_ready = host("a", &[], 4000, 8 * GI);
    not_ready.ready = false;
    let mut paused = host("b", &[], 4000, 8 * GI);
    paused.availability = Availability::Pause;
    let mut draining = host("c", &[], 4000, 8 * GI);
    draining.availability = Availability::Drain;
    cases.push(Case {
        name: "only Ready and Active hosts take tasks",
        hosts: vec![
            not_ready.clone(),
            paused.clone(),
            draining.clone(),
            host("d", &[], 4000, 8 * GI),
        ],
        allocations: vec![],
        groups: vec![group("web", 2)],
        want_hosts: vec!["d", "d"],
        want_unschedulable: vec![],
    });
    cases.push(Case {
        name: "no usable host: every reason counted",
        hosts: vec![not_ready, paused, draining],
        allocations: vec![],
        groups: vec![group("web", 1)],
        want_hosts: vec![],
        want_unschedulable: vec!["0/3 hosts: 1 not ready, 1 paused, 1 draining"],
    });

    let mut g = group("web", 1);
    g.selector = zone_east();
    g.demand.memory_bytes = 512 * MI;
    cases.push(Case {
        name: "reasons are aggregated, most common first",
        hosts: vec![
            host("e1", &[("zone", "east")], 4000, 256 * MI),
            host("e2", &[("zone", "east")], 4000, 256 * MI),
            host("w1", &[("zone", "west")], 4000, 8 * GI),
        ],
        allocations: vec![],
        groups: vec![g],
        want_hosts: vec![],
        want_unschedulable: vec![
            "0/3 hosts: 2 insufficient memory, 1 does not match hostSelector zone=east",
        ],
    });

    let mut g = group("web", 3);
    g.demand.cpu_millis = 600;
    cases.push(Case {
        name: "cpu reservations are packed against allocatable, existing ones count",
        hosts: vec![host("a", &[], 1000, GI), host("b", &[], 1000, GI)],
        allocations: vec![alloc("a", "other", 300, 0)],
        groups: vec![g],
        want_hosts: vec!["b", "a"],
        want_unschedulable: vec!["0/2 hosts: 2 insufficient cpu"],
    });

    let mut g = group("web", 2);
    g.demand.host_ports = vec![(Protocol::Tcp, 18080)];
    let mut shutting_down = alloc("a", "web", 0, 0);
    shutting_down.live = false;
    shutting_down.host_ports = vec![(Protocol::Tcp, 18080)];
    cases.push(Case {
        name: "a host port held by a task still shutting down is taken",
        hosts: vec![host("a", &[], 1000, GI), host("b", &[], 1000, GI)],
        allocations: vec![shutting_down],
        groups: vec![g],
        want_hosts: vec!["b"],
        want_unschedulable: vec!["0/2 hosts: 2 host port 18080/TCP in use"],
    });

    let mut g = group("web", 2);
    g.demand.host_ports = vec![(Protocol::Udp, 53)];
    let mut tcp = alloc("a", "dns", 0, 0);
    tcp.host_ports = vec![(Protocol::Tcp, 53)];
    cases.push(Case {
        name: "the same port number on another protocol does not conflict",
        hosts: vec![host("a", &[], 1000, GI)],
        allocations: vec![tcp],
        groups: vec![g],
        want_hosts: vec!["a"],
        want_unschedulable: vec!["0/1 hosts: 1 host port 53/UDP in use"],
    });

    let mut g = group("web", 3);
    g.max_per_host = Some(1);
    cases.push(Case {
        name: "maxPerHost",
        hosts: vec![host("a", &[], 1000, GI), host("b", &[], 1000, GI)],
        allocations: vec![],
        groups: vec![g],
        want_hosts: vec!["a", "b"],
        want_unschedulable: vec!["0/2 hosts: 2 already at maxPerHost 1"],
    });

    let mut g = group("web", 4);
    g.spread_by = vec!["zone".into()];
    cases.push(Case {
        name: "spread across zones before hosts",
        hosts: vec![
            host("e1", &[("zone", "east")], 1000, GI),
            host("e2", &[("zone", "east")], 1000, GI),
            host("e3", &[("zone", "east")], 1000, GI),
            host("w1", &[("zone", "west")], 1000, GI),
        ],
        allocations: vec![],
        groups: vec![g],
        want_hosts: vec!["e1", "w1", "e2", "w1"],
        want_unschedulable: vec![],
    });

    let mut g = group("web", 2);
    g.spread_by = vec!["zone".into()];
    cases.push(Case {
        name: "spread counts the service's existing live tasks",
        hosts: vec![
            host("e1", &[("zone", "east")], 1000, GI),
            host("w1", &[("zone", "west")], 1000, GI),
        ],
        allocations: vec![alloc("e1", "web", 0, 0), alloc("e1", "web", 0, 0)],
        groups: vec![g],
        want_hosts: vec!["w1", "w1"],
        want_unschedulable: vec![],
    });

    cases.push(Case {
        name: "fewest tasks of the service first, then least allocated",
        hosts: vec![
            host("a", &[], 1000, GI),
            host("b", &[], 1000, GI),
            host("c", &[], 1000, GI),
        ],
        allocations: vec![alloc("a", "web", 0, 0), alloc("b", "other", 500, 0)],
        groups: vec![group("web", 3)],
        want_hosts: vec!["c", "b", "a"],
        want_unschedulable: vec![],
    });

    let mut g = group("web", 2);
    g.failed_hosts = ["a".to_string()].into();
    cases.push(Case {
        name: "hosts where the service failed recently go last",
        hosts: vec![host("a", &[], 1000, GI), host("b", &[], 1000, GI)],
        allocations: vec![],
        groups: vec![g],
        want_hosts: vec!["b", "b"],
        want_unschedulable: vec![],
    });

    let mut g = group("web", 1);
    g.failed_hosts = ["b".to_string()].into();
    cases.push(Case {
        name: "a failed host is still used when nothing else fits",
        hosts: vec![host("a", &[], 0, 0), host("b", &[], 1000, GI)],
        allocations: vec![],
        groups: vec![{
            let mut g = g;
            g.demand.cpu_millis = 1;
            g
        }],
        want_hosts: vec!["b"],
        want_unschedulable: vec![],
    });

    cases.push(Case {
        name: "ties go by host name, whatever the input order",
        hosts: vec![
            host("c", &[], 1000, GI),
            host("a", &[], 1000, GI),
            host("b", &[], 1000, GI),
        ],
        allocations: vec![],
        groups: vec![group("web", 3)],
        want_hosts: vec!["a", "b", "c"],
        want_unschedulable: vec![],
    });

    let mut g = group("mon", 0);
    g.demand.memory_bytes = 512 * MI;
    g.tasks = ["a", "b", "c"]
        .iter()
        .map(|h| PendingTask {
            name: format!("mon-{h}"),
            pinned_host: Some(h.to_string()),
        })
        .collect();
    cases.push(Case {
        name: "global-mode tasks go to their host or nowhere",
        hosts: vec![
            host("a", &[], 1000, GI),
            host("b", &[], 1000, 128 * MI),
            host("c", &[], 1000, GI),
        ],
        allocations: vec![],
        groups: vec![g],
        want_hosts: vec!["a", "c"],
        want_unschedulable: vec!["2/3 hosts: 1 insufficient memory"],
    });

    let mut first = group("big", 1);
    first.demand.memory_bytes = 768 * MI;
    let mut second = group("small", 3);
    second.demand.memory_bytes = 384 * MI;
    cases.push(Case {
        name: "groups placed earlier in the call count for later ones",
        hosts: vec![host("a", &[], 1000, GI), host("b", &[], 1000, GI)],
        allocations: vec![],
        groups: vec![first, second],
        want_hosts: vec!["a", "b", "b"],
        want_unschedulable: vec!["0/2 hosts: 2 insufficient memory"],
    });

    let mut g = group("web", 4);
    g.spread_by = vec!["zone".into(), "rack".into()];
    cases.push(Case {
        name: "nested spread: zone, then rack",
        hosts: vec![
            host("e-r1-a", &[("zone", "east"), ("rack", "r1")], 1000, GI),
            host("e-r1-b", &[("zone", "east"), ("rack", "r1")], 1000, GI),
            host("e-r2-a", &[("zone", "east"), ("rack", "r2")], 1000, GI),
            host("w-r1-a", &[("zone", "west"), ("rack", "r1")], 1000, GI),
        ],
        allocations: vec![],
        groups: vec![g],
        want_hosts: vec!["e-r1-a", "w-r1-a", "e-r2-a", "w-r1-a"],
        want_unschedulable: vec![],
    });

    cases
}

#[test]
fn schedule_table() {
    for c in cases() {
        let out = schedule(&c.hosts, &c.allocations, &c.groups);
        assert_eq!(hosts_used(&out), c.want_hosts, "{}: hosts", c.name);
        let msgs: Vec<String> = out
            .unschedulable
            .iter()
            .map(Unschedulable::message)
            .collect();
        assert_eq!(msgs, c.want_unschedulable, "{}: unschedulable", c.name);
        assert_eq!(
            verify(&c.hosts, &c.allocations, &c.groups, &out.bindings),
            Vec::<String>::new(),
            "{}",
            c.name
        );
        // Every task is either bound or reported, once.
        let total: usize = c.groups.iter().map(|g| g.tasks.len()).sum();
        let reported: usize = out.unschedulable.iter().map(|u| u.tasks.len()).sum();
        assert_eq!(
            out.bindings.len() + reported,
            total,
            "{}: accounting",
            c.name
        );
    }
}

#[test]
fn bindings_name_the_tasks_in_order() {
    let out = schedule(&[host("a", &[], 1000, GI)], &[], &[group("web", 2)]);
    let want: BTreeMap<String, String> = [
        ("web-0".to_string(), "a".to_string()),
        ("web-1".to_string(), "a".to_string()),
    ]
    .into();
    assert_eq!(placed(&out), want);
    assert_eq!(out.unschedulable[..], []);
}

#[test]
fn verify_catches_violations() {
    let hosts = vec![host("a", &[], 1000, GI)];
    let mut g = group("web", 2);
    g.demand.cpu_millis = 600;
    let bindings: Vec<Binding> = g
        .tasks
        .iter()
        .map(|t| Binding {
            service: svc("web"),
            task: t.name.clone(),
            host: "a".into(),
        })
        .collect();
    let bad = verify(&hosts, &[], &[g], &bindings);
    assert_eq!(
        bad,
        vec!["default/web web-1 on a: insufficient cpu".to_string()]
    );
}

// ---- properties ----

fn arb_host(i: usize) -> impl Strategy<Value = SchedHost> {
    (
        prop_oneof![8 => Just(Availability::Active), 1 => Just(Availability::Pause), 1 => Just(Availability::Drain)],
        prop::sample::select(vec!["a", "b", "c"]),
        prop::option::of(prop::sample::select(vec!["ssd", "hdd"])),
        0u64..4000,
        0u64..(4 * GI),
        prop::bool::weighted(0.9),
    )
        .prop_map(move |(availability, zone, disk, cpu, mem, ready)| {
            let mut labels = BTreeMap::from([("zone".to_string(), zone.to_string())]);
            if let Some(d) = disk {
                labels.insert("disk".into(), d.into());
            }
            SchedHost {
                name: format!("h{i:02}"),
                labels,
                ready,
                availability,
                cpu_millis: cpu,
                memory_bytes: mem,
            }
        })
}

fn arb_hosts() -> impl Strategy<Value = Vec<SchedHost>> {
    (1usize..12).prop_flat_map(|n| (0..n).map(arb_host).collect::<Vec<_>>())
}

fn arb_group(i: usize) -> impl Strategy<Value = TaskGroup> {
    (
        0usize..3,
        1usize..20,
        0u64..800,
        0u64..(GI / 2),
        prop::option::of(prop::sample::select(vec![8080, 9090])),
        prop::option::of(1u32..3),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["h00", "h01", "h02"])),
    )
        .prop_map(move |(svc_i, n, cpu, mem, port, max, spread, failed)| {
            let name = format!("s{svc_i}");
            let mut g = group(&name, 0);
            g.tasks = (0..n)
                .map(|t| PendingTask {
                    name: format!("{name}-g{i}-{t}"),
                    pinned_host: None,
                })
                .collect();
            g.demand = Demand {
                cpu_millis: cpu,
                memory_bytes: mem,
                host_ports: port.map(|p| vec![(Protocol::Tcp, p)]).unwrap_or_default(),
            };
            g.max_per_host = max;
            if spread {
                g.spread_by = vec!["zone".into()];
            }
            if svc_i == 1 {
                g.selector = Selector::new(&LabelSelector {
                    match_labels: Some([("disk".to_string(), "ssd".to_string())].into()),
                    ..Default::default()
                });
            }
            g.failed_hosts = failed
                .map(|h| BTreeSet::from([h.to_string()]))
                .unwrap_or_default();
            g
        })
}

fn arb_allocs() -> impl Strategy<Value = Vec<Allocation>> {
    prop::collection::vec(
        (
            0usize..12,
            0usize..3,
            0u64..1000,
            0u64..GI,
            prop::option::of(prop::sample::select(vec![8080, 9090])),
            any::<bool>(),
        ),
        0..10,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(h, s, cpu, mem, port, live)| Allocation {
                host: format!("h{h:02}"),
                service: svc(&format!("s{s}")),
                cpu_millis: cpu,
                memory_bytes: mem,
                host_ports: port.map(|p| vec![(Protocol::Tcp, p)]).unwrap_or_default(),
                live,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn no_binding_violates_a_filter(
        hosts in arb_hosts(),
        allocations in arb_allocs(),
        groups in (0usize..4).prop_flat_map(|n| (0..n).map(arb_group).collect::<Vec<_>>()),
    ) {
        let out = schedule(&hosts, &allocations, &groups);
        prop_assert_eq!(verify(&hosts, &allocations, &groups, &out.bindings), Vec::<String>::new());
        let total: usize = groups.iter().map(|g| g.tasks.len()).sum();
        let reported: usize = out.unschedulable.iter().map(|u| u.tasks.len()).sum();
        prop_assert_eq!(out.bindings.len() + reported, total);
        // An unschedulable group saw no host that could take one more task.
        for u in &out.unschedulable {
            prop_assert_eq!(u.fitting, 0, "{}", u.message());
            prop_assert_eq!(u.considered, hosts.len());
        }
        // Deterministic.
        prop_assert_eq!(schedule(&hosts, &allocations, &groups), out);
    }

    #[test]
    fn spread_is_even_within_one(
        zones in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 1..16),
        n in 0usize..60,
        existing in prop::collection::vec(0usize..16, 0..3),
    ) {
        let hosts: Vec<SchedHost> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| host(&format!("h{i:02}"), &[("zone", z)], 100_000, 100 * GI))
            .collect();
        // A few live tasks already running, fewer than one per zone so that
        // evening out is always possible.
        let allocations: Vec<Allocation> = existing
            .iter()
            .filter(|&&i| i < hosts.len())
            .take(1)
            .map(|&i| alloc(&hosts[i].name, "web", 10, MI))
            .collect();
        let mut g = group("web", n);
        g.spread_by = vec!["zone".into()];
        g.demand = Demand { cpu_millis: 10, memory_bytes: MI, host_ports: vec![] };
        let out = schedule(&hosts, &allocations, &[g]);
        prop_assert_eq!(out.bindings.len(), n);
        let mut per_zone: BTreeMap<&str, usize> = zones.iter().map(|z| (*z, 0)).collect();
        let mut per_host: BTreeMap<&str, usize> = hosts.iter().map(|h| (h.name.as_str(), 0)).collect();
        let zone_of: BTreeMap<&str, &str> = hosts.iter().zip(&zones).map(|(h, z)| (h.name.as_str(), *z)).collect();
        let hosts_of = allocations.iter().map(|a| a.host.as_str()).chain(out.bindings.iter().map(|b| b.host.as_str()));
        for h in hosts_of {
            *per_zone.entry(zone_of[h]).or_default() += 1;
            *per_host.entry(h).or_default() += 1;
        }
        let (min, max) = (per_zone.values().min().copied().unwrap_or(0), per_zone.values().max().copied().unwrap_or(0));
        if n + allocations.len() >= per_zone.len() {
            prop_assert!(max - min <= 1, "zones {:?}", per_zone);
        }
        // Within a zone, hosts are even within one too.
        for z in per_zone.keys() {
            let counts: Vec<usize> = per_host.iter().filter(|(h, _)| zone_of[*h] == *z).map(|(_, c)| *c).collect();
            let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "zone {} hosts {:?}", z, counts);
        }
    }
}
