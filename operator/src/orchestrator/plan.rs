//! The orchestrator's decisions for one Service, as a pure function of the
//! Service, its Tasks and the Hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use shoal_crds::{
    Availability, Condition, ConditionStatus, DesiredState, FailureAction, HealthState,
    HostLossPolicy, Service, ServiceMode, ServiceStatus, Task, TaskPhase, UpdateOrder, UpdateState,
    UpdateStatus, fence_window,
};

use super::hash::template_hash;
use crate::scheduler::{SchedHost, TARGET_HOST_LABEL, phase_of, static_filter};
use crate::selector::Selector;

/// Finalizer on a Service: removed by the orchestrator once all its Tasks are gone.
pub const SERVICE_FINALIZER: &str = "shoal.dev/tasks";
/// Finalizer on a Task: removed by the dispatcher once the container is gone.
pub use shoal_crds::TASK_FINALIZER;
/// Label on every Task naming its Service.
pub const SERVICE_LABEL: &str = "shoal.dev/service";
/// Label on every Task with its template hash.
pub const HASH_LABEL: &str = "shoal.dev/template-hash";
/// Label on every Task: which attempt of its slot it is (1, 2, …).
pub const ATTEMPT_LABEL: &str = "shoal.dev/attempt";
/// Label on a Task replacing rejected ones: how many rejections in a row
/// came before it in its slot.
pub const REJECTIONS_LABEL: &str = "shoal.dev/rejections";
/// Ended tasks kept per slot, by default (Swarm keeps 5).
pub const DEFAULT_HISTORY_LIMIT: usize = 5;

/// A replica slot: a number in Replicated mode, a host in Global mode.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    /// Replicated mode.
    Slot(i32),
    /// Global mode.
    Host(String),
}

impl std::fmt::Display for SlotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotKey::Slot(n) => write!(f, "{n}"),
            SlotKey::Host(h) => f.write_str(h),
        }
    }
}

/// One step the executor carries out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put [`SERVICE_FINALIZER`] on the Service (before any Task exists).
    AddServiceFinalizer,
    /// Take [`SERVICE_FINALIZER`] off a Service being deleted (no Task left).
    RemoveServiceFinalizer,
    /// Create a Task for this slot, attempt number `attempt`.
    Create {
        /// The slot.
        slot: SlotKey,
        /// Attempt number (one more than any earlier task of the slot).
        attempt: u32,
        /// Rejections in a row of its predecessors in the slot (the
        /// [`REJECTIONS_LABEL`] of the new task), so the backoff keeps
        /// growing beyond the kept history.
        rejections: u32,
    },
    /// Set `spec.desiredState: Shutdown`.
    Shutdown(String),
    /// Delete the Task object (its finalizer keeps it until the container is gone).
    Delete(String),
}

/// What one reconcile of a Service decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Steps, in order: finalizer, shutdowns, deletes, creates.
    pub actions: Vec<Action>,
    /// The status to write (conditions without timestamps); `None` for a
    /// Service being deleted.
    pub status: Option<ServiceStatus>,
    /// Look again after this long (a replacement waiting for its backoff).
    pub requeue_after: Option<Duration>,
    /// The hash of the template new Tasks carry: the Service's, or while
    /// rolling back the one restored.
    pub template_hash: String,
    /// Rolling back: new Tasks take their template and restart policy from
    /// this Task (one of the restored template) instead of the Service.
    pub template_from: Option<String>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// The Service.
    pub service: &'a Service,
    /// Every Task of the Service, including ended ones and ones being deleted.
    pub tasks: &'a [Task],
    /// Every Host.
    pub hosts: &'a [SchedHost],
    /// The time now.
    pub now: Timestamp,
    /// Ended tasks kept per slot.
    pub history_limit: usize,
    /// The scheduler's explanation, if tasks of this Service fit nowhere.
    pub unschedulable: Option<&'a str>,
}

/// A Task as the planner sees it.
#[derive(Debug)]
struct View<'a> {
    name: &'a str,
    slot: Option<SlotKey>,
    phase: TaskPhase,
    /// Desired Running and not being deleted.
    wanted: bool,
    /// Marked for deletion.
    marked: bool,
    host: Option<&'a str>,
    hash: &'a str,
    attempt: u32,
    rejections: u32,
    created: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    health: Option<HealthState>,
    restarts: i32,
    started_at: Option<Timestamp>,
    reason: Option<&'a str>,
    /// `onHostLoss: Fence`.
    fence: bool,
    /// When it was orphaned (its host lost), if it was.
    orphaned_at: Option<Timestamp>,
}

impl<'a> View<'a> {
    fn new(t: &'a Task, mode: ServiceMode) -> Self {
        let labels = t.metadata.labels.as_ref();
        let slot = match mode {
            ServiceMode::Replicated => t.spec.slot.map(SlotKey::Slot),
            ServiceMode::Global => labels
                .and_then(|l| l.get(TARGET_HOST_LABEL))
                .or(t.spec.host_name.as_ref())
                .filter(|_| t.spec.slot.is_none())
                .map(|h| SlotKey::Host(h.clone())),
        };
        let marked = t.metadata.deletion_timestamp.is_some();
        let status = t.status.as_ref();
        View {
            name: t.metadata.name.as_deref().unwrap_or_default(),
            slot,
            phase: phase_of(t),
            wanted: t.spec.desired_state() == DesiredState::Running && !marked,
            marked,
            host: t.spec.host_name.as_deref(),
            hash: &t.spec.template_hash,
            attempt: labels
                .and_then(|l| l.get(ATTEMPT_LABEL))
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            rejections: labels
                .and_then(|l| l.get(REJECTIONS_LABEL))
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            created: t.metadata.creation_timestamp.as_ref().map(|t| t.0),
            ended_at: status
                .and_then(|s| s.finished_at.as_ref().or(s.last_transition_time.as_ref()))
                .map(|t| t.0),
            health: status.and_then(|s| s.health),
            restarts: status.and_then(|s| s.restart_count).unwrap_or(0),
            started_at: status.and_then(|s| s.started_at.as_ref()).map(|t| t.0),
            reason: status.and_then(|s| s.reason.as_deref()),
            fence: t.spec.on_host_loss == Some(HostLossPolicy::Fence),
            orphaned_at: status
                .filter(|s| s.phase == Some(TaskPhase::Orphaned))
                .and_then(|s| s.last_transition_time.as_ref())
                .map(|t| t.0),
        }
    }
    fn terminal(&self) -> bool {
        self.phase.is_terminal()
    }
    /// Its container may still run: bound and not terminal.
    fn may_run(&self) -> bool {
        self.host.is_some() && !self.terminal()
    }
    /// A sign that its template does not work: it ended `Failed` or was
    /// `Rejected`, restarted, or turned unhealthy.
    fn failing(&self) -> bool {
        matches!(self.phase, TaskPhase::Failed | TaskPhase::Rejected)
            || self.restarts > 0
            || self.health == Some(HealthState::Unhealthy)
    }
    /// What [`View::failing`] saw, for messages.
    fn failure(&self) -> String {
        let what = match self.phase {
            TaskPhase::Failed | TaskPhase::Rejected => format!("{:?}", self.phase),
            _ if self.health == Some(HealthState::Unhealthy) => "unhealthy".to_owned(),
            _ => format!("restarted {}x", self.restarts),
        };
        match self.reason {
            Some(r) => format!("{} ({what}: {r})", self.name),
            None => format!("{} ({what})", self.name),
        }
    }
    fn ready(&self, has_healthcheck: bool) -> bool {
        self.phase == TaskPhase::Running
            && match self.health {
                Some(HealthState::Healthy) => true,
                Some(HealthState::Starting | HealthState::Unhealthy) => false,
                None => !has_healthcheck,
            }
    }
}

fn service_status_condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: Option<String>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: Some(reason.into()),
        message,
        last_transition_time: None,
    }
}

/// Backoff before replacing a `Rejected` task: the restart policy's delay
/// for the first, then doubling from 100ms, capped at its maxDelay (30s).
fn rejection_backoff(svc: &Service, rejections: u32) -> Duration {
    let rp = svc.spec.restart_policy.as_ref();
    let base = rp
        .and_then(|r| r.delay.as_ref())
        .and_then(|d| d.parse().ok())
        .unwrap_or_default();
    let max = rp
        .and_then(|r| r.max_delay.as_ref())
        .and_then(|d| d.parse().ok())
        .unwrap_or(Duration::from_secs(30));
    if rejections <= 1 {
        return base.min(max);
    }
    let step = base.max(Duration::from_millis(100));
    let factor = 1u32 << (rejections - 2).min(20);
    step.saturating_mul(factor).min(max)
}

/// A Service's rollout settings, defaulted.
#[derive(Clone, Copy, Debug)]
struct Rollout {
    parallelism: i32,
    delay: Duration,
    start_first: bool,
    failure_action: FailureAction,
    monitor: Duration,
    max_failure_ratio: f64,
}

impl Rollout {
    fn of(svc: &Service) -> Self {
        let u = svc.spec.update.as_ref();
        let duration = |d: Option<&shoal_crds::DurationValue>, default: Duration| {
            d.and_then(|d| d.parse().ok()).unwrap_or(default)
        };
        Rollout {
            parallelism: u.and_then(|u| u.parallelism).unwrap_or(1),
            delay: duration(u.and_then(|u| u.delay.as_ref()), Duration::ZERO),
            start_first: u.and_then(|u| u.order) == Some(UpdateOrder::StartFirst),
            failure_action: u.and_then(|u| u.failure_action).unwrap_or_default(),
            monitor: duration(u.and_then(|u| u.monitor.as_ref()), Duration::from_secs(5)),
            max_failure_ratio: u.and_then(|u| u.max_failure_ratio).unwrap_or(0.0),
        }
    }
}

/// How much of `wait` is left `since` that time, if any.
fn left_of(wait: Duration, since: Timestamp, now: Timestamp) -> Option<Duration> {
    let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    wait.checked_sub(elapsed).filter(|d| !d.is_zero())
}

fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Decides what to do for one Service.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let svc = input.service;
    let mode = svc.spec.mode();
    let views: Vec<View<'_>> = input.tasks.iter().map(|t| View::new(t, mode)).collect();
    let mut out = Plan::default();
    let finalizers = svc.metadata.finalizers.as_deref().unwrap_or_default();
    let has_finalizer = finalizers.iter().any(|f| f == SERVICE_FINALIZER);

    // A Service being deleted: stop and delete everything, then let it go.
    if svc.metadata.deletion_timestamp.is_some() {
        for v in &views {
            if v.wanted {
                out.actions.push(Action::Shutdown(v.name.to_owned()));
            }
        }
        for v in &views {
            if !v.marked {
                out.actions.push(Action::Delete(v.name.to_owned()));
            }
        }
        if views.is_empty() && has_finalizer {
            out.actions.push(Action::RemoveServiceFinalizer);
        }
        return out;
    }
    if !has_finalizer {
        out.actions.push(Action::AddServiceFinalizer);
    }

    let spec_hash = template_hash(&svc.spec.template, svc.spec.restart_policy.as_ref());
    let rollout = Rollout::of(svc);
    let ratio_base = match mode {
        ServiceMode::Replicated => svc.spec.replicas().max(1),
        ServiceMode::Global => i32::try_from(input.hosts.len().max(1)).unwrap_or(i32::MAX),
    };

    // The rollout on record for the spec's template (a new template starts a
    // new one), and the template to run: the spec's, or the one a rollback
    // restored, copied from a Task that has it.
    let mut update: Option<UpdateStatus> = svc
        .status
        .as_ref()
        .and_then(|s| s.update.clone())
        .filter(|u| u.template_hash == spec_hash);
    let source = |h: &str| {
        views
            .iter()
            .filter(|v| v.hash == h)
            .max_by_key(|v| (v.wanted, !v.marked, v.created, v.name))
    };
    let mut template_from: Option<&str> = None;
    let mut hash = spec_hash.clone();
    if let Some(u) = &update
        && matches!(
            u.state,
            UpdateState::RollingBack | UpdateState::RollbackPaused | UpdateState::RolledBack
        )
    {
        match u.rollback_to.as_deref().and_then(source) {
            Some(v) => {
                hash = v.hash.to_owned();
                template_from = Some(v.name);
            }
            // Nothing of the restored template is left to copy: start over.
            None => update = None,
        }
    }

    // `shoal resume`: a new value of the annotation resumes a paused rollout
    // (or rollback) as if it started now, so the failures that paused it are
    // not counted again. Every rollout records the value it has seen, so an
    // old value resumes nothing.
    let resume = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(shoal_crds::RESUME_ANNOTATION))
        .cloned();
    if let Some(u) = update.as_mut()
        && u.resumed != resume
    {
        let resumed = match u.state {
            UpdateState::Paused => Some(UpdateState::Updating),
            UpdateState::RollbackPaused => Some(UpdateState::RollingBack),
            _ => None,
        };
        if let (Some(state), Some(_)) = (resumed, &resume) {
            u.state = state;
            u.started_at = Some(Time(input.now));
            u.message = Some(match state {
                UpdateState::RollingBack => "rollback resumed".into(),
                _ => "resumed".into(),
            });
        }
        u.resumed = resume.clone();
    }

    // Failures of the tasks this rollout (or rollback) started decide
    // `failureAction` before anything else is planned.
    if let Some(u) = update.as_mut()
        && matches!(u.state, UpdateState::Updating | UpdateState::RollingBack)
    {
        let since = u.started_at.as_ref().map(|t| t.0.as_second());
        let failed: Vec<&View<'_>> = views
            .iter()
            .filter(|v| v.hash == hash && v.failing())
            .filter(|v| since.is_none_or(|s| v.created.is_some_and(|c| c.as_second() >= s)))
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let too_many = !failed.is_empty()
            && failed.len() as f64 > rollout.max_failure_ratio * f64::from(ratio_base);
        if too_many {
            let what = format!(
                "{} of {ratio_base} new tasks failed: {}",
                failed.len(),
                failed
                    .iter()
                    .map(|v| v.failure())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match (u.state, rollout.failure_action) {
                (UpdateState::Updating, FailureAction::Continue) => {}
                (UpdateState::Updating, FailureAction::Rollback) => {
                    // The template the update was replacing: that of the
                    // tasks still running it, else the newest ended one.
                    let previous = views
                        .iter()
                        .filter(|v| v.hash != spec_hash)
                        .max_by_key(|v| (v.wanted && !v.marked, v.may_run(), v.created, v.name));
                    match previous {
                        Some(v) => {
                            *u = UpdateStatus {
                                state: UpdateState::RollingBack,
                                template_hash: spec_hash.clone(),
                                rollback_to: Some(v.hash.to_owned()),
                                started_at: Some(Time(input.now)),
                                message: Some(what),
                                resumed: resume.clone(),
                            };
                            hash = v.hash.to_owned();
                            template_from = Some(v.name);
                        }
                        None => {
                            u.state = UpdateState::Paused;
                            u.message =
                                Some(format!("{what}; no earlier template to roll back to"));
                        }
                    }
                }
                (UpdateState::Updating, FailureAction::Pause) => {
                    u.state = UpdateState::Paused;
                    u.message = Some(what);
                }
                (_, _) => {
                    u.state = UpdateState::RollbackPaused;
                    u.message = Some(format!("rollback: {what}"));
                }
            }
        }
    }
    let has_healthcheck = svc
        .spec
        .template
        .healthcheck
        .as_ref()
        .is_some_and(|h| h.command.first().map(String::as_str) != Some("NONE"));
    let selector = Selector::from_option(
        svc.spec
            .placement
            .as_ref()
            .and_then(|p| p.host_selector.as_ref()),
    );
    let hosts: BTreeMap<&str, &SchedHost> =
        input.hosts.iter().map(|h| (h.name.as_str(), h)).collect();

    let mut shutdown: BTreeSet<&str> = BTreeSet::new();
    let mut delete: BTreeSet<&str> = BTreeSet::new();
    let mut creates: Vec<Action> = Vec::new();

    // Tasks by slot; tasks of the other mode (or without a slot) go.
    let mut slots: BTreeMap<SlotKey, Vec<&View<'_>>> = BTreeMap::new();
    for v in &views {
        match &v.slot {
            Some(k) => slots.entry(k.clone()).or_default().push(v),
            None => {
                if v.wanted {
                    shutdown.insert(v.name);
                }
                if !v.marked {
                    delete.insert(v.name);
                }
            }
        }
    }

    // The current task of each slot: the wanted one (the newest if there are
    // several, e.g. after two orchestrators raced; the others go).
    let mut current: BTreeMap<SlotKey, &View<'_>> = BTreeMap::new();
    for (k, ts) in &slots {
        let mut wanted: Vec<&View<'_>> = ts.iter().copied().filter(|v| v.wanted).collect();
        wanted.sort_by(|a, b| {
            (b.hash == hash, b.attempt, b.name).cmp(&(a.hash == hash, a.attempt, a.name))
        });
        if let Some((first, rest)) = wanted.split_first() {
            current.insert(k.clone(), first);
            // Start first: one task of the old template runs on until its
            // replacement is ready (or has failed for good and
            // `failureAction: Continue` moves on).
            let given_up = first.terminal() && rollout.failure_action == FailureAction::Continue;
            let mut spare = rollout.start_first
                && first.hash == hash
                && !first.ready(has_healthcheck)
                && !given_up;
            for v in rest {
                if spare && v.hash != hash && v.may_run() {
                    spare = false;
                    continue;
                }
                shutdown.insert(v.name);
                // A replaced template's task stays in the history; a
                // duplicate of the current one goes.
                if v.hash == first.hash {
                    delete.insert(v.name);
                }
            }
        }
    }

    // Which slots should exist.
    let occupied: BTreeSet<SlotKey> = slots
        .iter()
        .filter(|(_, ts)| ts.iter().any(|v| !v.marked))
        .map(|(k, _)| k.clone())
        .collect();
    let mut keep: BTreeSet<SlotKey> = BTreeSet::new();
    // Global-mode hosts that may take a new task now.
    let mut can_start: BTreeSet<String> = BTreeSet::new();
    match mode {
        ServiceMode::Replicated => {
            let want = usize::try_from(svc.spec.replicas().max(0)).unwrap_or(0);
            let mut live: Vec<SlotKey> = occupied.iter().cloned().collect();
            if live.len() > want {
                // Scale down: non-running first, then the most loaded hosts,
                // then the highest slots.
                let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
                for k in &live {
                    if let Some(h) = current.get(k).and_then(|v| v.host) {
                        *per_host.entry(h).or_default() += 1;
                    }
                }
                let mut remove = live.len() - want;
                while remove > 0 {
                    let pick = live
                        .iter()
                        .enumerate()
                        .max_by_key(|(_, k)| {
                            let cur = current.get(*k);
                            let not_running = cur.is_none_or(|v| v.phase != TaskPhase::Running);
                            let load = cur
                                .and_then(|v| v.host)
                                .and_then(|h| per_host.get(h))
                                .copied()
                                .unwrap_or(0);
                            (not_running, load, (*k).clone())
                        })
                        .map(|(i, _)| i);
                    let Some(i) = pick else { break };
                    let k = live.remove(i);
                    if let Some(h) = current.get(&k).and_then(|v| v.host)
                        && let Some(c) = per_host.get_mut(h)
                    {
                        *c = c.saturating_sub(1);
                    }
                    remove -= 1;
                }
            }
            keep.extend(live);
            let mut n = 0;
            while keep.len() < want {
                if !keep.contains(&SlotKey::Slot(n)) {
                    keep.insert(SlotKey::Slot(n));
                }
                n += 1;
            }
        }
        ServiceMode::Global => {
            for h in input.hosts {
                let may_keep = h.availability != Availability::Drain && selector.matches(&h.labels);
                let key = SlotKey::Host(h.name.clone());
                if static_filter(h, &selector).is_ok() {
                    can_start.insert(h.name.clone());
                    keep.insert(key);
                } else if may_keep && occupied.contains(&key) {
                    keep.insert(key);
                }
            }
        }
    }

    // Slots that should not exist: stop and delete all their tasks.
    for (k, ts) in &slots {
        if keep.contains(k) {
            continue;
        }
        for v in ts {
            if v.wanted {
                shutdown.insert(v.name);
            }
            if !v.marked {
                delete.insert(v.name);
            }
        }
    }

    // An update is under way while a kept slot has a task of another template
    // that is wanted or still stopping.
    let updating = keep.iter().any(|k| {
        slots.get(k).is_some_and(|ts| {
            ts.iter()
                .any(|v| v.hash != hash && (v.wanted || v.may_run()))
        })
    });
    let mut in_flight = 0usize;
    // Slots still on another template: (slot, its task, the next attempt).
    let mut update_candidates: Vec<(&SlotKey, &str, u32)> = Vec::new();
    let mut requeue: Option<Duration> = None;

    for k in &keep {
        let ts = slots.get(k).map(Vec::as_slice).unwrap_or_default();
        let mut cur = current.get(k).copied();
        // A task to replace at once: refused by the engine, its host lost,
        // gone or draining; or ended under an old template.
        if let Some(v) = cur {
            let host_gone = v.host.is_some_and(|h| !hosts.contains_key(h));
            let draining = v
                .host
                .and_then(|h| hosts.get(h))
                .is_some_and(|h| h.availability == Availability::Drain);
            let replace = matches!(v.phase, TaskPhase::Rejected | TaskPhase::Orphaned)
                || host_gone
                || (draining && mode == ServiceMode::Replicated)
                || (v.hash != hash && v.terminal());
            if replace {
                shutdown.insert(v.name);
                cur = None;
            } else if v.hash != hash {
                let next = ts.iter().map(|v| v.attempt).max().unwrap_or(0) + 1;
                update_candidates.push((k, v.name, next));
                continue;
            } else if updating && v.phase == TaskPhase::Failed {
                // Used up its restarts: counted by failureAction, not awaited.
            } else if updating && !v.ready(has_healthcheck) {
                in_flight += 1;
            }
        }
        if cur.is_some() {
            continue;
        }
        // An empty slot. Stop first: wait while an earlier task of the slot
        // may still run (unless its host is gone for good).
        let stopping = ts.iter().any(|v| {
            v.may_run()
                && v.host.is_some_and(|h| hosts.contains_key(h))
                && (!v.wanted || shutdown.contains(v.name))
        });
        if updating {
            in_flight += 1;
        }
        if stopping {
            continue;
        }
        // onHostLoss Fence: the lost host's agent kills the task once it has
        // not heard from the control plane for the fence timeout; the
        // replacement waits out the fence window from the orphaning, so the
        // two never run together.
        let fence_left = ts
            .iter()
            .filter(|v| v.fence)
            .filter_map(|v| v.orphaned_at)
            .filter_map(|at| {
                let elapsed = Duration::try_from(input.now.duration_since(at)).unwrap_or_default();
                fence_window().checked_sub(elapsed).filter(|d| !d.is_zero())
            })
            .max();
        if let Some(left) = fence_left {
            requeue = Some(requeue.map_or(left, |r| r.min(left)));
            continue;
        }
        if let SlotKey::Host(h) = k
            && !can_start.contains(h)
        {
            continue;
        }
        // Back off after rejections.
        let mut ended: Vec<&View<'_>> = ts
            .iter()
            .copied()
            .filter(|v| !v.wanted || shutdown.contains(v.name))
            .collect();
        ended.sort_by_key(|v| std::cmp::Reverse((v.attempt, v.created)));
        // Rejections in a row: the latest task's own count plus itself; the
        // history seen here as a floor for tasks without the label.
        let seen = ended
            .iter()
            .take_while(|v| v.phase == TaskPhase::Rejected)
            .count();
        let rejections = match ended.first() {
            Some(v) if v.phase == TaskPhase::Rejected => {
                (v.rejections.saturating_add(1)).max(u32::try_from(seen).unwrap_or(u32::MAX))
            }
            _ => 0,
        };
        if rejections > 0 {
            let wait = rejection_backoff(svc, rejections);
            let since = ended.first().and_then(|v| v.ended_at.or(v.created));
            let elapsed = since
                .map(|t| input.now.duration_since(t))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(Duration::MAX);
            if elapsed < wait {
                let left = wait - elapsed;
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
                continue;
            }
        }
        let attempt = ts.iter().map(|v| v.attempt).max().unwrap_or(0) + 1;
        creates.push(Action::Create {
            slot: k.clone(),
            attempt,
            rejections,
        });
    }

    // A rollout begins when a kept slot runs another template; a template
    // changed back to what runs needs none.
    let rollout_started = update
        .as_ref()
        .and_then(|u| u.started_at.as_ref())
        .map(|t| t.0.as_second());
    if update.is_none() && (updating || svc.status.as_ref().is_some_and(|s| s.update.is_some())) {
        update = Some(UpdateStatus {
            state: if updating {
                UpdateState::Updating
            } else {
                UpdateState::Completed
            },
            template_hash: spec_hash.clone(),
            rollback_to: None,
            started_at: Some(Time(input.now)),
            message: None,
            resumed: resume.clone(),
        });
    }
    let state = update.as_ref().map(|u| u.state);
    let moving = matches!(
        state,
        Some(UpdateState::Updating | UpdateState::RollingBack)
    );
    let paused = matches!(
        state,
        Some(UpdateState::Paused | UpdateState::RollbackPaused)
    );
    // This rollout's new tasks (a rollback's restored template may also be
    // that of tasks it never replaced).
    let fresh = |v: &View<'_>| {
        v.hash == hash
            && rollout_started.is_none_or(|s| v.created.is_some_and(|c| c.as_second() >= s))
    };
    // `delay` after the latest new task became ready.
    let delay_left = if moving && !rollout.delay.is_zero() {
        views
            .iter()
            .filter(|v| v.wanted && fresh(v) && v.ready(has_healthcheck))
            .filter_map(|v| v.started_at)
            .max()
            .and_then(|at| left_of(rollout.delay, at, input.now))
    } else {
        None
    };
    if let Some(left) = delay_left.filter(|_| !update_candidates.is_empty()) {
        requeue = earliest(requeue, left);
    }

    // Rolling update, `parallelism` slots at a time (0: all): stop first
    // shuts the old task down (its replacement follows once it stopped);
    // start first creates the replacement beside it.
    let budget = if paused || delay_left.is_some() {
        0
    } else if rollout.parallelism <= 0 {
        usize::MAX
    } else {
        usize::try_from(rollout.parallelism)
            .unwrap_or(1)
            .saturating_sub(in_flight)
    };
    for (slot, name, attempt) in update_candidates.iter().take(budget) {
        if rollout.start_first {
            creates.push(Action::Create {
                slot: (*slot).clone(),
                attempt: *attempt,
                rejections: 0,
            });
        } else {
            shutdown.insert(name);
        }
    }

    // History: keep the newest `history_limit` ended tasks of each kept slot.
    for k in &keep {
        let Some(ts) = slots.get(k) else { continue };
        let mut ended: Vec<&View<'_>> = ts
            .iter()
            .copied()
            .filter(|v| !v.marked && (!v.wanted || shutdown.contains(v.name)) && !v.may_run())
            .collect();
        ended.sort_by(|a, b| (b.attempt, b.created, b.name).cmp(&(a.attempt, a.created, a.name)));
        for v in ended.iter().skip(input.history_limit) {
            delete.insert(v.name);
        }
    }

    let wanted: BTreeSet<&str> = views.iter().filter(|v| v.wanted).map(|v| v.name).collect();
    out.actions.extend(
        shutdown
            .iter()
            .filter(|n| wanted.contains(**n))
            .map(|n| Action::Shutdown((*n).to_owned())),
    );
    out.actions
        .extend(delete.iter().map(|n| Action::Delete((*n).to_owned())));
    out.actions.extend(creates);
    out.template_hash = hash.clone();
    out.template_from = template_from.map(str::to_owned);

    // Status.
    let desired = match mode {
        ServiceMode::Replicated => svc.spec.replicas().max(0),
        ServiceMode::Global => i32::try_from(keep.len()).unwrap_or(i32::MAX),
    };
    let live: Vec<&View<'_>> = current
        .iter()
        .filter(|(k, v)| keep.contains(*k) && !shutdown.contains(v.name))
        .map(|(_, v)| *v)
        .collect();
    let count = |f: &dyn Fn(&View<'_>) -> bool| {
        i32::try_from(live.iter().filter(|v| f(v)).count()).unwrap_or(i32::MAX)
    };
    let replicas = count(&|_| true);
    let ready = count(&|v| v.ready(has_healthcheck));
    let updated = count(&|v| v.hash == hash);
    let unbound = count(&|v| v.host.is_none());
    let updated_ready = count(&|v| v.hash == hash && v.ready(has_healthcheck));
    let mut conditions = vec![service_status_condition(
        "Available",
        ready >= desired,
        if ready >= desired {
            "MinimumReplicasAvailable"
        } else {
            "ReplicasUnavailable"
        },
        Some(format!("{ready}/{desired} replicas ready")),
    )];
    let mut done = updated_ready >= desired
        && replicas == desired
        && out.actions.iter().all(|a| matches!(a, Action::Delete(_)));
    // A rollout completes once no task of another template may still run
    // and every new task stayed ready for `monitor` since it started (or
    // ended for good, which `failureAction: Continue` lets pass).
    let tried = replicas == desired
        && live
            .iter()
            .all(|v| v.hash == hash && (v.ready(has_healthcheck) || v.terminal()))
        && out.actions.iter().all(|a| matches!(a, Action::Delete(_)));
    let mut watching = None;
    if let Some(u) = update.as_mut()
        && moving
        && tried
        && !updating
    {
        let left = live
            .iter()
            .filter(|v| fresh(v) && !v.terminal())
            .filter_map(|v| v.started_at)
            .filter_map(|at| left_of(rollout.monitor, at, input.now))
            .max();
        match left {
            Some(left) => {
                requeue = earliest(requeue, left);
                watching = Some(left);
                done = false;
            }
            None => {
                u.state = if u.state == UpdateState::RollingBack {
                    UpdateState::RolledBack
                } else {
                    UpdateState::Completed
                };
            }
        }
    }
    out.requeue_after = requeue;
    let state = update.as_ref().map(|u| u.state);
    let why = update
        .as_ref()
        .and_then(|u| u.message.as_deref())
        .unwrap_or("failed");
    let up_to_date = format!("{updated}/{desired} tasks up to date");
    conditions.push(match state {
        Some(UpdateState::RolledBack) if done => service_status_condition(
            "Progressing",
            false,
            "RolledBack",
            Some(format!(
                "{up_to_date} with the previous template; the update was rolled back: {why}"
            )),
        ),
        Some(UpdateState::Paused) => service_status_condition(
            "Progressing",
            true,
            "UpdatePaused",
            Some(format!("{up_to_date}; update paused: {why}")),
        ),
        Some(UpdateState::RollbackPaused) => service_status_condition(
            "Progressing",
            true,
            "RollbackPaused",
            Some(format!("{up_to_date}; rollback paused: {why}")),
        ),
        _ if done => service_status_condition("Progressing", false, "Complete", Some(up_to_date)),
        Some(UpdateState::RollingBack) => service_status_condition(
            "Progressing",
            true,
            "RollingBack",
            Some(format!(
                "{up_to_date} with the previous template, {ready} ready; the update failed: {why}"
            )),
        ),
        _ => service_status_condition(
            "Progressing",
            true,
            if updating || moving {
                "Updating"
            } else {
                "Converging"
            },
            Some(match watching {
                Some(left) => format!(
                    "{up_to_date}, {ready} ready; watching the new tasks for {}s more",
                    left.as_secs_f64().ceil()
                ),
                None => format!("{up_to_date}, {ready} ready"),
            }),
        ),
    });
    conditions.push(match (unbound, input.unschedulable) {
        (n, Some(msg)) if n > 0 => {
            service_status_condition("Schedulable", false, "Unschedulable", Some(msg.to_owned()))
        }
        _ => service_status_condition("Schedulable", true, "Scheduled", None),
    });
    out.status = Some(ServiceStatus {
        observed_generation: svc.metadata.generation,
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        updated_replicas: Some(updated),
        update,
        conditions: Some(conditions),
    });
    out
}
