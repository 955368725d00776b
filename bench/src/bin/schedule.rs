//! Scheduler throughput: 100,000 tasks on 1,000 hosts (reservations, hostSelector, spreadBy), every binding re-checked.
//! needs: nothing
//!
//! Hosts and services are generated from a fixed seed: hosts have 16/32/64
//! cores and 64/128/256 GiB, a `zone` label (4 zones) and half of them
//! `disk=ssd`; 200 services of 500 tasks each reserve 50m–200m cpu and
//! 64Mi–512Mi memory, spread by `zone`, and every other service selects
//! `disk=ssd`. The production `shoal_operator::scheduler::schedule()` places
//! them all in one call; `verify()` then replays every binding against every
//! filter. Then the first `SHOAL_BENCH_BIND_WRITES` (default 20,000) bindings
//! are written by the production binder (`write_bindings`: one conditional
//! update of `spec.hostName` per task, 32 in flight) through a single-voter
//! `RaftStore` in a temporary directory (redb, fsync on every Raft ready
//! that must be durable, group commit).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use shoal_crds::{Availability, ContainerTemplate, DesiredState, Task, TaskSpec};
use shoal_operator::scheduler::{
    Binding, Demand, PendingTask, SchedHost, ServiceRef, TaskGroup, schedule, verify,
    write_bindings,
};
use shoal_operator::selector::Selector;
use shoal_store::raft::RaftStore;
use shoal_store::{ClusterStore, typed};

const SEED: u64 = 0x5eed_5ca1_ab1e_0001;
const HOSTS: usize = 1_000;
const SERVICES: usize = 200;
const TASKS_PER_SERVICE: usize = 500;
const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

/// SplitMix64: a tiny fixed-seed generator, so the workload is the same on
/// every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        // xs is never empty here; index is in range by construction.
        &xs[usize::try_from(self.below(xs.len() as u64)).unwrap_or(0)]
    }
}

fn hosts(rng: &mut Rng) -> Vec<SchedHost> {
    (0..HOSTS)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert(
                "zone".to_string(),
                format!("zone-{}", (b'a' + (i % 4) as u8) as char),
            );
            if rng.below(2) == 0 {
                labels.insert("disk".to_string(), "ssd".to_string());
            }
            SchedHost {
                name: format!("host-{i:04}"),
                labels,
                ready: true,
                availability: Availability::Active,
                cpu_millis: *rng.pick(&[16_000, 32_000, 64_000]),
                memory_bytes: *rng.pick(&[64 * GI, 128 * GI, 256 * GI]),
            }
        })
        .collect()
}

fn groups(rng: &mut Rng) -> Vec<TaskGroup> {
    let ssd = Selector::new(&LabelSelector {
        match_labels: Some([("disk".to_string(), "ssd".to_string())].into()),
        ..Default::default()
    });
    (0..SERVICES)
        .map(|s| {
            let name = format!("svc-{s:03}");
            TaskGroup {
                service: ServiceRef::new("default", &name),
                selector: if s % 2 == 0 {
                    ssd.clone()
                } else {
                    Selector::default()
                },
                spread_by: vec!["zone".into()],
                max_per_host: None,
                demand: Demand {
                    cpu_millis: *rng.pick(&[50, 100, 150, 200]),
                    memory_bytes: *rng.pick(&[64 * MI, 128 * MI, 256 * MI, 512 * MI]),
                    host_ports: Vec::new(),
                },
                failed_hosts: BTreeSet::new(),
                tasks: (0..TASKS_PER_SERVICE)
                    .map(|t| PendingTask {
                        name: format!("{name}-{t}-x{:04x}", rng.below(1 << 16)),
                        pinned_host: None,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut rng = Rng(SEED);
    let hosts = hosts(&mut rng);
    let groups = groups(&mut rng);
    let total: usize = groups.iter().map(|g| g.tasks.len()).sum();
    eprintln!(
        "schedule: {} hosts, {} services, {total} tasks",
        hosts.len(),
        groups.len()
    );

    // Warm-up run (allocator, caches), then the measured runs; report the median.
    let _ = schedule(&hosts, &[], &groups);
    let mut times = Vec::new();
    let mut outcome = None;
    for _ in 0..5 {
        let start = Instant::now();
        let out = schedule(&hosts, &[], &groups);
        times.push(start.elapsed());
        outcome = Some(out);
    }
    let out = outcome.context("no run")?;
    times.sort();
    let median = times[times.len() / 2];

    if !out.unschedulable.is_empty() {
        for u in &out.unschedulable {
            eprintln!(
                "unschedulable {}: {} tasks: {}",
                u.service,
                u.tasks.len(),
                u.message()
            );
        }
        bail!(
            "{} groups had unschedulable tasks: the workload should fit",
            out.unschedulable.len()
        );
    }
    if out.bindings.len() != total {
        bail!("{} bindings for {total} tasks", out.bindings.len());
    }
    let start = Instant::now();
    let bad = verify(&hosts, &[], &groups, &out.bindings);
    eprintln!(
        "schedule: verified {} bindings in {:.0} ms",
        out.bindings.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    if !bad.is_empty() {
        for b in bad.iter().take(10) {
            eprintln!("violation: {b}");
        }
        bail!("{} bindings violate a filter", bad.len());
    }
    // Spread check: per service, zones within one.
    let zone_of: BTreeMap<&str, &str> = hosts
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                h.labels.get("zone").map(String::as_str).unwrap_or(""),
            )
        })
        .collect();
    let mut per: BTreeMap<(&ServiceRef, &str), usize> = BTreeMap::new();
    for b in &out.bindings {
        *per.entry((
            &b.service,
            zone_of.get(b.host.as_str()).copied().unwrap_or(""),
        ))
        .or_default() += 1;
    }
    for g in &groups {
        let counts: Vec<usize> = per
            .range((&g.service, "")..)
            .take_while(|((s, _), _)| *s == &g.service)
            .map(|(_, c)| *c)
            .collect();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        if hi - lo > 1 {
            bail!("service {} is spread {counts:?} across zones", g.service);
        }
    }
    eprintln!(
        "schedule: runs {:?}",
        times
            .iter()
            .map(|t| format!("{:.0}ms", t.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
    );

    let n: usize = std::env::var("SHOAL_BENCH_BIND_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
        .min(out.bindings.len());
    let bind_per_s = bind_writes(&out.bindings[..n])?;

    let ms = median.as_secs_f64() * 1e3;
    println!("bind_writes_per_s: {bind_per_s:.0}");
    println!("schedule_100k_tasks_ms: {ms:.0}");
    println!(
        "placements_per_s: {:.0}",
        total as f64 / median.as_secs_f64()
    );
    Ok(())
}

/// Creates the bound tasks unbound in a fresh durable store (not timed), then
/// times writing their bindings.
fn bind_writes(bindings: &[Binding]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut raft = RaftStore::open_single(dir.path())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !raft.status().is_leader {
            if Instant::now() > deadline {
                bail!("the raft store did not elect itself");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let store: &dyn ClusterStore = &raft;
        let mut tasks: HashMap<(String, String), Task> = HashMap::with_capacity(bindings.len());
        for chunk in bindings.chunks(256) {
            let created = futures::future::join_all(chunk.iter().map(|b| {
                let t = Task {
                    metadata: ObjectMeta {
                        name: Some(b.task.clone()),
                        namespace: Some(b.service.namespace.clone()),
                        labels: Some(
                            [("shoal.dev/service".to_string(), b.service.name.clone())].into(),
                        ),
                        ..Default::default()
                    },
                    spec: TaskSpec {
                        service: b.service.name.clone(),
                        template: ContainerTemplate {
                            image: "shoal-test/busybox:1".into(),
                            ..Default::default()
                        },
                        template_hash: "0123456789abcdef".into(),
                        desired_state: Some(DesiredState::Running),
                        ..Default::default()
                    },
                    status: None,
                };
                async move { typed::create(store, &t).await }
            }))
            .await;
            for t in created {
                let t = t?;
                let key = (
                    t.metadata.namespace.clone().unwrap_or_default(),
                    t.metadata.name.clone().unwrap_or_default(),
                );
                tasks.insert(key, t);
            }
        }
        eprintln!(
            "schedule: {} tasks created in the raft store; writing their bindings",
            tasks.len()
        );
        let start = Instant::now();
        let (written, skipped) = write_bindings(store, &tasks, bindings, 32).await?;
        let secs = start.elapsed().as_secs_f64();
        if written != bindings.len() {
            bail!("{written} bindings written, {skipped} skipped");
        }
        eprintln!(
            "schedule: {written} bindings written in {:.0} ms",
            secs * 1e3
        );
        raft.shutdown();
        Ok(written as f64 / secs)
    })
}
