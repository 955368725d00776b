//! The scheduler's thin loop: read hosts and tasks from the store, call
//! [`schedule`], write `spec.hostName` once per task with a resourceVersion
//! precondition, publish the reasons for what fits nowhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::jiff::Timestamp;
use shoal_crds::{Host, Service, Task, TaskPhase};
use shoal_store::events::{EventRecorder, ObjectRef, component};
use shoal_store::typed;
use shoal_store::{ClusterStore, Kind, ListOptions, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::input::{groups_from, phase_of};
use super::model::{Allocation, Binding, SchedHost, ServiceRef};
use super::place::schedule;
use crate::reports::SchedulingReports;
use crate::runner::watch_kinds;

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// A pass runs at least this often.
    pub resync_interval: Duration,
    /// A host where a task of a service failed or was rejected within this
    /// window is tried last for that service.
    pub failure_window: Duration,
    /// Binding writes in flight at once.
    pub write_concurrency: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(30),
            failure_window: Duration::from_secs(300),
            write_concurrency: 32,
        }
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Tasks bound.
    pub bound: usize,
    /// Bindings not written because the task changed meanwhile (retried on
    /// the next pass).
    pub conflicts: usize,
    /// Tasks that fit nowhere.
    pub unschedulable: usize,
}

/// Places unbound Tasks; see the module docs.
#[derive(Clone)]
pub struct Scheduler {
    store: Arc<dyn ClusterStore>,
    config: SchedulerConfig,
    reports: SchedulingReports,
    events: EventRecorder,
    /// The last `FailedScheduling` message per task and when it was
    /// recorded: a pass repeats it only when it changes or once per
    /// `resync_interval`, not on every pass.
    failed_events: Arc<std::sync::Mutex<FailedEvents>>,
}

/// Per task (namespace, name): the last `FailedScheduling` message and when
/// it was recorded.
type FailedEvents = HashMap<(String, String), (String, tokio::time::Instant)>;

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Writes bindings: sets `spec.hostName` on each task (taken from `tasks`,
/// keyed by namespace and name) with its resourceVersion as precondition,
/// `concurrency` writes at a time. A task that changed meanwhile (conflict),
/// is gone, or is already bound is skipped. Returns (written, skipped).
pub async fn write_bindings(
    store: &dyn ClusterStore,
    tasks: &HashMap<(String, String), Task>,
    bindings: &[Binding],
    concurrency: usize,
) -> Result<(usize, usize), StoreError> {
    write_bindings_then(store, tasks, bindings, concurrency, |_| {}).await
}

/// [`write_bindings`], calling `bound` with each task written.
async fn write_bindings_then(
    store: &dyn ClusterStore,
    tasks: &HashMap<(String, String), Task>,
    bindings: &[Binding],
    concurrency: usize,
    bound: impl Fn(&Task),
) -> Result<(usize, usize), StoreError> {
    let mut updated: Vec<Task> = Vec::with_capacity(bindings.len());
    for b in bindings {
        let Some(t) = tasks.get(&(b.service.namespace.clone(), b.task.clone())) else {
            continue;
        };
        if t.spec.host_name.is_some() {
            continue;
        }
        let mut t = t.clone();
        t.spec.host_name = Some(b.host.clone());
        updated.push(t);
    }
    let mut queue = updated.into_iter();
    let mut pending = FuturesUnordered::new();
    let (mut written, mut skipped) = (0, bindings.len());
    loop {
        while pending.len() < concurrency.max(1) {
            let Some(t) = queue.next() else { break };
            pending.push(bind_one(store, t));
        }
        let Some(r) = pending.next().await else { break };
        match r {
            Ok(t) => {
                bound(&t);
                written += 1;
                skipped -= 1;
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((written, skipped))
}

async fn bind_one(store: &dyn ClusterStore, t: Task) -> Result<Task, StoreError> {
    typed::update(store, &t).await
}

impl Scheduler {
    /// A scheduler over a store.
    pub fn new(store: Arc<dyn ClusterStore>, config: SchedulerConfig) -> Self {
        Self {
            events: EventRecorder::new(store.clone(), component::SCHEDULER),
            store,
            config,
            reports: SchedulingReports::new(),
            failed_events: Arc::default(),
        }
    }

    /// Publishes its explanations to `reports` (share them with the
    /// orchestrator, the writer of Service status).
    pub fn with_reports(mut self, reports: SchedulingReports) -> Self {
        self.reports = reports;
        self
    }

    /// One pass: reads everything, places every unbound task, writes the
    /// bindings and publishes the reasons.
    pub async fn pass(&self) -> Result<PassStats, StoreError> {
        let store = self.store.as_ref();
        let all = ListOptions::default();
        let (hosts, _) = typed::list::<Host>(store, &all).await?;
        let (services, _) = typed::list::<Service>(store, &all).await?;
        let (tasks, _) = typed::list::<Task>(store, &all).await?;
        let hosts: Vec<SchedHost> = hosts.iter().map(SchedHost::from_host).collect();
        let allocations: Vec<Allocation> = tasks.iter().filter_map(Allocation::from_task).collect();

        let now = Timestamp::now();
        let mut failed: BTreeMap<ServiceRef, BTreeSet<String>> = BTreeMap::new();
        for t in &tasks {
            if !matches!(phase_of(t), TaskPhase::Failed | TaskPhase::Rejected) {
                continue;
            }
            let (Some(host), Some(at)) = (
                t.spec.host_name.as_ref(),
                t.status
                    .as_ref()
                    .and_then(|s| s.finished_at.as_ref().or(s.last_transition_time.as_ref())),
            ) else {
                continue;
            };
            let recent = Duration::try_from(now.duration_since(at.0))
                .is_ok_and(|d| d <= self.config.failure_window);
            if recent {
                let svc = ServiceRef::new(
                    t.metadata.namespace.clone().unwrap_or_default(),
                    t.spec.service.clone(),
                );
                failed.entry(svc).or_default().insert(host.clone());
            }
        }

        let groups = groups_from(&services, &tasks, &failed);
        if groups.is_empty() {
            self.reports.replace(BTreeMap::new());
            return Ok(PassStats::default());
        }
        let out = schedule(&hosts, &allocations, &groups);
        let by_key: HashMap<(String, String), Task> = tasks
            .into_iter()
            .map(|t| {
                (
                    (
                        t.metadata.namespace.clone().unwrap_or_default(),
                        t.metadata.name.clone().unwrap_or_default(),
                    ),
                    t,
                )
            })
            .collect();
        let (bound, conflicts) = write_bindings_then(
            store,
            &by_key,
            &out.bindings,
            self.config.write_concurrency,
            |t| {
                let ns = t.metadata.namespace.as_deref().unwrap_or_default();
                let name = t.metadata.name.as_deref().unwrap_or_default();
                let host = t.spec.host_name.as_deref().unwrap_or_default();
                self.events.normal(
                    &ObjectRef::of(t),
                    "Scheduled",
                    &format!("Assigned {ns}/{name} to {host}"),
                );
            },
        )
        .await?;
        self.failed_scheduling_events(&by_key, &out.unschedulable);

        let mut reports: BTreeMap<ServiceRef, String> = BTreeMap::new();
        let mut unschedulable = 0;
        for u in &out.unschedulable {
            unschedulable += u.tasks.len();
            let msg = u.message();
            reports
                .entry(u.service.clone())
                .and_modify(|m| {
                    m.push_str("; ");
                    m.push_str(&msg);
                })
                .or_insert(msg);
        }
        self.reports.replace(reports);
        Ok(PassStats {
            bound,
            conflicts,
            unschedulable,
        })
    }

    /// Records `FailedScheduling` on each task that fits nowhere, when its
    /// message is new or at most once per `resync_interval`.
    fn failed_scheduling_events(
        &self,
        tasks: &HashMap<(String, String), Task>,
        unschedulable: &[super::model::Unschedulable],
    ) {
        let Ok(mut last) = self.failed_events.lock() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut seen = BTreeSet::new();
        for u in unschedulable {
            let msg = u.message();
            for name in &u.tasks {
                let key = (u.service.namespace.clone(), name.clone());
                seen.insert(key.clone());
                let Some(t) = tasks.get(&key) else { continue };
                let repeat = last.get(&key).is_some_and(|(m, at)| {
                    *m == msg && now.duration_since(*at) < self.config.resync_interval
                });
                if !repeat {
                    self.events
                        .warning(&ObjectRef::of(t), "FailedScheduling", &msg);
                    last.insert(key, (msg.clone(), now));
                }
            }
        }
        last.retain(|k, _| seen.contains(k));
    }

    /// Runs until `shutdown`: a pass after every change of Hosts, Tasks or
    /// Services (changes during a pass are folded into the next), and every
    /// `resync_interval`.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("scheduler");
        self.run_inner(shutdown).instrument(span).await;
    }

    async fn run_inner(self, shutdown: CancellationToken) {
        let mut retry = Duration::from_millis(100);
        'relist: loop {
            if shutdown.is_cancelled() {
                return;
            }
            let start = async {
                let rev = self.store.revision().await?;
                watch_kinds(
                    self.store.as_ref(),
                    &[Kind::Host, Kind::Task, Kind::Service],
                    rev,
                )
                .await
            };
            let mut events = match start.await {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "cannot watch; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            retry = Duration::from_millis(100);
            let mut resync = tokio::time::interval(self.config.resync_interval);
            let mut dirty = true;
            let mut backoff = Duration::from_millis(100);
            loop {
                if dirty {
                    dirty = false;
                    match self.pass().await {
                        Ok(stats) => {
                            backoff = Duration::from_millis(100);
                            if stats.bound > 0 || stats.unschedulable > 0 {
                                info!(
                                    bound = stats.bound,
                                    unschedulable = stats.unschedulable,
                                    "pass"
                                );
                            }
                            if stats.conflicts > 0 {
                                debug!(
                                    conflicts = stats.conflicts,
                                    "bindings conflicted; next pass retries"
                                );
                                dirty = true;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "pass failed; retrying");
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            dirty = true;
                            continue;
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.next() => match ev {
                        Some((_, Ok(shoal_store::WatchEvent::Progress(_)))) => {}
                        Some((_, Ok(_))) => dirty = true,
                        Some((_, Err(_))) | None => continue 'relist,
                    },
                    _ = resync.tick() => dirty = true,
                }
            }
        }
    }
}
