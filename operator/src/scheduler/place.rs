//! The placement algorithm: filters, then ordering by a spread tree.
//!
//! For each group the candidate hosts (Ready, Active, matching the
//! hostSelector) are arranged in a tree by the values of the `spreadBy` label
//! keys; each leaf holds a heap of hosts ordered by (recent failure, tasks of
//! this service, allocated share, name). A placement descends into the child
//! with the fewest tasks of the service (children whose best host failed
//! recently go last), takes the leaf's best host, and puts it back with its
//! new key. A host found unable to take a task of the group is dropped from
//! the group's tree for good: within one call resources are only consumed,
//! ports only taken and counts only grow. Each placement costs
//! O(tree width + log hosts).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use super::model::{
    Allocation, Binding, HostPort, Reason, SchedHost, ScheduleOutcome, ServiceRef, TaskGroup,
    Unschedulable, static_filter,
};

/// What is taken on one host.
#[derive(Clone, Debug, Default)]
struct HostUse {
    cpu: u64,
    memory: u64,
    ports: HashSet<HostPort>,
}

/// Tasks of one service per host (indexed by host rank).
#[derive(Clone, Debug)]
struct ServiceCounts {
    /// Live replicas (spreading, ordering).
    live: Vec<u32>,
    /// Every task still holding the host (maxPerHost).
    present: Vec<u32>,
}

/// Hosts sorted by name (a host's rank is its index here) and what is taken.
struct State<'a> {
    hosts: Vec<&'a SchedHost>,
    rank_of: HashMap<&'a str, usize>,
    usage: Vec<HostUse>,
    services: HashMap<ServiceRef, ServiceCounts>,
}

impl<'a> State<'a> {
    fn new(hosts: &'a [SchedHost], allocations: &[Allocation]) -> Self {
        let mut sorted: Vec<&SchedHost> = hosts.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.dedup_by(|a, b| a.name == b.name);
        let rank_of: HashMap<&str, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.as_str(), i))
            .collect();
        let mut st = State {
            usage: vec![HostUse::default(); sorted.len()],
            hosts: sorted,
            rank_of,
            services: HashMap::new(),
        };
        for a in allocations {
            let Some(&r) = st.rank_of.get(a.host.as_str()) else {
                continue;
            };
            let u = &mut st.usage[r];
            u.cpu = u.cpu.saturating_add(a.cpu_millis);
            u.memory = u.memory.saturating_add(a.memory_bytes);
            u.ports.extend(a.host_ports.iter().copied());
            let c = st.counts(&a.service);
            c.present[r] += 1;
            if a.live {
                c.live[r] += 1;
            }
        }
        st
    }

    fn counts(&mut self, svc: &ServiceRef) -> &mut ServiceCounts {
        let n = self.hosts.len();
        self.services
            .entry(svc.clone())
            .or_insert_with(|| ServiceCounts {
                live: vec![0; n],
                present: vec![0; n],
            })
    }

    /// The filters that depend on what is placed: resources, ports, maxPerHost.
    fn dynamic_filter(
        &self,
        r: usize,
        g: &TaskGroup,
        counts: &ServiceCounts,
    ) -> Result<(), Reason> {
        let h = self.hosts[r];
        let u = &self.usage[r];
        if u.cpu.saturating_add(g.demand.cpu_millis) > h.cpu_millis {
            return Err(Reason::InsufficientCpu);
        }
        if u.memory.saturating_add(g.demand.memory_bytes) > h.memory_bytes {
            return Err(Reason::InsufficientMemory);
        }
        if let Some(p) = g.demand.host_ports.iter().find(|p| u.ports.contains(p)) {
            return Err(Reason::PortInUse(*p));
        }
        if let Some(max) = g.max_per_host
            && counts.present[r] >= max
        {
            return Err(Reason::MaxPerHost(max));
        }
        Ok(())
    }

    fn filter(&self, r: usize, g: &TaskGroup, counts: &ServiceCounts) -> Result<(), Reason> {
        static_filter(self.hosts[r], &g.selector)?;
        self.dynamic_filter(r, g, counts)
    }

    /// Takes what one task of `g` needs on host `r`.
    fn apply(&mut self, r: usize, g: &TaskGroup, counts: &mut ServiceCounts) {
        let u = &mut self.usage[r];
        u.cpu = u.cpu.saturating_add(g.demand.cpu_millis);
        u.memory = u.memory.saturating_add(g.demand.memory_bytes);
        u.ports.extend(g.demand.host_ports.iter().copied());
        counts.live[r] += 1;
        counts.present[r] += 1;
    }

    /// Share of the host allocated, in millionths, cpu plus memory.
    fn score(&self, r: usize) -> u64 {
        fn ppm(used: u64, cap: u64) -> u64 {
            if cap == 0 {
                if used == 0 { 0 } else { 1_000_000 }
            } else {
                u64::try_from(u128::from(used) * 1_000_000 / u128::from(cap)).unwrap_or(u64::MAX)
            }
        }
        let h = self.hosts[r];
        let u = &self.usage[r];
        ppm(u.cpu, h.cpu_millis).saturating_add(ppm(u.memory, h.memory_bytes))
    }
}

/// Order of hosts within a leaf: smallest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    failed: bool,
    live: u32,
    score: u64,
    rank: usize,
}

/// Everything a tree walk needs.
struct Ctx<'s, 'a> {
    st: &'s mut State<'a>,
    g: &'s TaskGroup,
    counts: ServiceCounts,
    failed: Vec<bool>,
}

impl Ctx<'_, '_> {
    fn key(&self, r: usize) -> Key {
        Key {
            failed: self.failed[r],
            live: self.counts.live[r],
            score: self.st.score(r),
            rank: r,
        }
    }
    fn fits(&self, r: usize) -> bool {
        self.st.dynamic_filter(r, self.g, &self.counts).is_ok()
    }
}

enum NodeKind {
    Leaf(BinaryHeap<Reverse<Key>>),
    Inner(Vec<Node>),
}

struct Node {
    /// Live tasks of the service under this node.
    count: u64,
    kind: NodeKind,
}

impl Node {
    fn build(cands: &[usize], level: usize, ctx: &Ctx<'_, '_>) -> Node {
        let count = cands.iter().map(|&r| u64::from(ctx.counts.live[r])).sum();
        if level == ctx.g.spread_by.len() {
            let heap = cands.iter().map(|&r| Reverse(ctx.key(r))).collect();
            return Node {
                count,
                kind: NodeKind::Leaf(heap),
            };
        }
        let key = &ctx.g.spread_by[level];
        // Hosts without the label form their own group (BTreeMap: `None` first).
        let mut by_value: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
        for &r in cands {
            by_value
                .entry(ctx.st.hosts[r].labels.get(key).map(String::as_str))
                .or_default()
                .push(r);
        }
        let children = by_value
            .values()
            .map(|c| Node::build(c, level + 1, ctx))
            .collect();
        Node {
            count,
            kind: NodeKind::Inner(children),
        }
    }

    /// The best host under this node by spread order, dropping hosts that no
    /// longer fit; `None` when none fits. For inner nodes also the child.
    fn choose(&mut self, ctx: &Ctx<'_, '_>) -> Option<(usize, Key)> {
        match &mut self.kind {
            NodeKind::Leaf(heap) => {
                while let Some(Reverse(k)) = heap.peek() {
                    if ctx.fits(k.rank) {
                        return Some((0, *k));
                    }
                    heap.pop();
                }
                None
            }
            NodeKind::Inner(children) => {
                let mut best: Option<((bool, u64, Key), usize)> = None;
                for (i, c) in children.iter_mut().enumerate() {
                    if let Some((_, k)) = c.choose(ctx) {
                        let ord = (k.failed, c.count, k);
                        if best.as_ref().is_none_or(|(b, _)| ord < *b) {
                            best = Some((ord, i));
                        }
                    }
                }
                best.map(|((_, _, k), i)| (i, k))
            }
        }
    }

    /// Places one task of the group under this node; the host's rank.
    fn place(&mut self, ctx: &mut Ctx<'_, '_>) -> Option<usize> {
        let (child, key) = self.choose(ctx)?;
        let r = match &mut self.kind {
            NodeKind::Leaf(heap) => {
                heap.pop();
                ctx.st.apply(key.rank, ctx.g, &mut ctx.counts);
                heap.push(Reverse(ctx.key(key.rank)));
                key.rank
            }
            NodeKind::Inner(children) => children[child].place(ctx)?,
        };
        self.count += 1;
        Some(r)
    }
}

/// Why each host cannot take a task of `g` now, aggregated.
fn explain(
    st: &State<'_>,
    g: &TaskGroup,
    counts: &ServiceCounts,
    ranks: impl Iterator<Item = usize>,
    tasks: Vec<String>,
) -> Unschedulable {
    let mut fitting = 0;
    let mut considered = 0;
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    for r in ranks {
        considered += 1;
        match st.filter(r, g, counts) {
            Ok(()) => fitting += 1,
            Err(reason) => *reasons.entry(reason).or_default() += 1,
        }
    }
    let mut reasons: Vec<(Reason, usize)> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Unschedulable {
        service: g.service.clone(),
        tasks,
        fitting,
        considered,
        reasons: reasons
            .into_iter()
            .map(|(r, n)| (r.to_string(), n))
            .collect(),
    }
}

/// Places unbound tasks on hosts.
///
/// `allocations` are the tasks already bound (what they reserve and hold);
/// `groups` are the unbound tasks, grouped by service and template. Groups are
/// placed in the order given, tasks in their order; the result is
/// deterministic. A Global-mode task (`pinned_host`) goes to its host or
/// nowhere. Tasks that fit nowhere are reported per group with the reason
/// each host gave.
pub fn schedule(
    hosts: &[SchedHost],
    allocations: &[Allocation],
    groups: &[TaskGroup],
) -> ScheduleOutcome {
    let mut st = State::new(hosts, allocations);
    let mut out = ScheduleOutcome::default();
    for g in groups {
        let counts = st.counts(&g.service).clone();
        let failed = st
            .hosts
            .iter()
            .map(|h| g.failed_hosts.contains(&h.name))
            .collect();
        let mut ctx = Ctx {
            st: &mut st,
            g,
            counts,
            failed,
        };

        // Global-mode tasks: their host or nowhere.
        let mut pinned_failed: Vec<(String, usize)> = Vec::new();
        let mut pinned_reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut pinned_total = 0;
        for t in g.tasks.iter() {
            let Some(host) = &t.pinned_host else { continue };
            pinned_total += 1;
            let Some(&r) = ctx.st.rank_of.get(host.as_str()) else {
                *pinned_reasons.entry(Reason::NotReady).or_default() += 1;
                pinned_failed.push((t.name.clone(), usize::MAX));
                continue;
            };
            match ctx.st.filter(r, g, &ctx.counts) {
                Ok(()) => {
                    ctx.st.apply(r, g, &mut ctx.counts);
                    out.bindings.push(Binding {
                        service: g.service.clone(),
                        task: t.name.clone(),
                        host: host.clone(),
                    });
                }
                Err(reason) => {
                    *pinned_reasons.entry(reason).or_default() += 1;
                    pinned_failed.push((t.name.clone(), r));
                }
            }
        }
        if !pinned_failed.is_empty() {
            let mut reasons: Vec<(Reason, usize)> = pinned_reasons.into_iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            out.unschedulable.push(Unschedulable {
                service: g.service.clone(),
                fitting: pinned_total - pinned_failed.len(),
                considered: pinned_total,
                tasks: pinned_failed.into_iter().map(|(n, _)| n).collect(),
                reasons: reasons
                    .into_iter()
                    .map(|(r, n)| (r.to_string(), n))
                    .collect(),
            });
        }

        // Everything else: through the spread tree.
        let free: Vec<&str> = g
            .tasks
            .iter()
            .filter(|t| t.pinned_host.is_none())
            .map(|t| t.name.as_str())
            .collect();
        if !free.is_empty() {
            let cands: Vec<usize> = (0..ctx.st.hosts.len())
                .filter(|&r| static_filter(ctx.st.hosts[r], &g.selector).is_ok())
                .collect();
            let mut tree = Node::build(&cands, 0, &ctx);
            let mut placed = 0;
            for name in &free {
                let Some(r) = tree.place(&mut ctx) else { break };
                out.bindings.push(Binding {
                    service: g.service.clone(),
                    task: (*name).to_owned(),
                    host: ctx.st.hosts[r].name.clone(),
                });
                placed += 1;
            }
            if placed < free.len() {
                let left = free[placed..].iter().map(|s| (*s).to_owned()).collect();
                out.unschedulable.push(explain(
                    ctx.st,
                    g,
                    &ctx.counts,
                    0..ctx.st.hosts.len(),
                    left,
                ));
            }
        }
        let counts = ctx.counts;
        st.services.insert(g.service.clone(), counts);
    }
    out
}

/// Re-checks bindings against every filter, replaying them in order on top
/// of `allocations`; returns one line per violation (empty when all hold).
/// Used by the property tests and the benchmark.
pub fn verify(
    hosts: &[SchedHost],
    allocations: &[Allocation],
    groups: &[TaskGroup],
    bindings: &[Binding],
) -> Vec<String> {
    let mut st = State::new(hosts, allocations);
    let mut task_group: HashMap<(&ServiceRef, &str), (usize, Option<&str>)> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        for t in &g.tasks {
            task_group.insert((&g.service, t.name.as_str()), (i, t.pinned_host.as_deref()));
        }
    }
    let mut bound: HashSet<(&ServiceRef, &str)> = HashSet::new();
    let mut bad = Vec::new();
    for b in bindings {
        let Some(&(gi, pinned)) = task_group.get(&(&b.service, b.task.as_str())) else {
            bad.push(format!("{} {}: not an unbound task", b.service, b.task));
            continue;
        };
        if !bound.insert((&b.service, b.task.as_str())) {
            bad.push(format!("{} {}: bound twice", b.service, b.task));
            continue;
        }
        let g = &groups[gi];
        let Some(&r) = st.rank_of.get(b.host.as_str()) else {
            bad.push(format!("{} {}: unknown host {}", b.service, b.task, b.host));
            continue;
        };
        if pinned.is_some_and(|p| p != b.host) {
            bad.push(format!(
                "{} {}: {}",
                b.service,
                b.task,
                Reason::NotPinnedHost
            ));
        }
        let mut counts = st.counts(&g.service).clone();
        if let Err(reason) = st.filter(r, g, &counts) {
            bad.push(format!("{} {} on {}: {reason}", b.service, b.task, b.host));
        }
        st.apply(r, g, &mut counts);
        st.services.insert(g.service.clone(), counts);
    }
    bad
}
