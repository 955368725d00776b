//! The orchestrator: turns Services into Tasks.
//!
//! [`plan()`] decides (pure, table-tested); [`Orchestrator::reconcile`]
//! carries out the plan for one Service with resourceVersion preconditions;
//! [`Orchestrator::run`] is the keyed, level-triggered loop: it watches
//! Services, Tasks and Hosts, keys work by Service, and resyncs periodically.

mod hash;
mod plan;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use shoal_crds::{
    Condition, ConditionStatus, DesiredState, Host, Service, ServiceStatus, Task, TaskPhase,
    TaskSpec, TaskStatus, UpdateState,
};
use shoal_store::events::{EventRecorder, ObjectRef, component};
use shoal_store::typed::{self, StoreKind};
use shoal_store::{ClusterStore, DeletePreconditions, Kind, ListOptions, StoreError, WatchEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

pub use hash::{name_suffix, task_name, template_hash};
pub use plan::{
    ATTEMPT_LABEL, Action, DEFAULT_HISTORY_LIMIT, HASH_LABEL, Plan, PlanInput, REJECTIONS_LABEL,
    SERVICE_FINALIZER, SERVICE_LABEL, SlotKey, TASK_FINALIZER, plan,
};

use crate::reports::SchedulingReports;
use crate::runner::{Queue, event_object, str_at, watch_kinds};
use crate::scheduler::{SchedHost, ServiceRef, TARGET_HOST_LABEL};

/// The Service condition that says its spec breaks Shoal's rules (present
/// only then): `False`, reason `InvalidSpec`.
pub const VALID_CONDITION: &str = "Valid";

/// Orchestrator settings.
#[derive(Clone, Debug)]
pub struct OrchestratorConfig {
    /// Every Service is reconciled at least this often.
    pub resync_interval: Duration,
    /// Ended tasks kept per slot.
    pub history_limit: usize,
    /// How long Events live and how many a namespace keeps (the sweeper
    /// started by [`crate::spawn_controllers`]).
    pub events: crate::events::SweeperConfig,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(30),
            history_limit: DEFAULT_HISTORY_LIMIT,
            events: crate::events::SweeperConfig::default(),
        }
    }
}

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The store refused or failed a call.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Some writes lost a precondition race; the next reconcile re-reads.
    #[error("{0} writes conflicted; will re-read and retry")]
    Conflicts(usize),
}

impl OrchestratorError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            OrchestratorError::Store(e) => e.is_retryable(),
            OrchestratorError::Conflicts(_) => true,
        }
    }
}

/// Turns Services into Tasks; see the module docs.
#[derive(Clone)]
pub struct Orchestrator {
    store: Arc<dyn ClusterStore>,
    config: OrchestratorConfig,
    reports: SchedulingReports,
    events: EventRecorder,
    /// `spec.replicas` of each Replicated Service (by uid) when last
    /// reconciled, to record `Scaled` when it changes.
    replicas: Arc<std::sync::Mutex<HashMap<String, i32>>>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn service_ref(svc: &Service) -> ServiceRef {
    ServiceRef::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// Status equal but for condition timestamps.
fn same_status(a: &ServiceStatus, b: &ServiceStatus) -> bool {
    let strip = |s: &ServiceStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

/// Carries condition timestamps over from `old` where the status did not
/// change; stamps `now` where it did.
fn stamp_conditions(new: &mut ServiceStatus, old: Option<&ServiceStatus>, now: Timestamp) {
    let old_conds: BTreeMap<&str, &Condition> = old
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| cs.iter().map(|c| (c.type_.as_str(), c)).collect())
        .unwrap_or_default();
    for c in new.conditions.iter_mut().flatten() {
        c.last_transition_time = match old_conds.get(c.type_.as_str()) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => Some(Time(now)),
        };
    }
}

impl Orchestrator {
    /// An orchestrator over a store.
    pub fn new(store: Arc<dyn ClusterStore>, config: OrchestratorConfig) -> Self {
        Self {
            events: EventRecorder::new(store.clone(), component::ORCHESTRATOR),
            store,
            config,
            reports: SchedulingReports::new(),
            replicas: Arc::default(),
        }
    }

    /// Records `Scaled` on a Replicated Service whose `spec.replicas`
    /// changed since it was last reconciled (the first sight records
    /// nothing).
    fn scaled_event(&self, svc: &Service) {
        let Some(uid) = svc.metadata.uid.clone() else {
            return;
        };
        let Ok(mut seen) = self.replicas.lock() else {
            return;
        };
        if svc.spec.mode.unwrap_or_default() != shoal_crds::ServiceMode::Replicated
            || svc.metadata.deletion_timestamp.is_some()
        {
            seen.remove(&uid);
            return;
        }
        let now = svc.spec.replicas();
        if let Some(before) = seen.insert(uid, now)
            && before != now
        {
            self.events.normal(
                &ObjectRef::of(svc),
                "Scaled",
                &format!("Scaled from {before} to {now} replicas"),
            );
        }
    }

    /// Records a rollout's change of state (`svc` as it was before `status`).
    fn rollout_event(&self, svc: &Service, status: Option<&ServiceStatus>) {
        let before = svc.status.as_ref().and_then(|s| s.update.as_ref());
        let Some(after) = status.and_then(|s| s.update.as_ref()) else {
            return;
        };
        if before.is_some_and(|b| b.state == after.state && b.template_hash == after.template_hash)
        {
            return;
        }
        let why = after.message.as_deref().unwrap_or("");
        let obj = ObjectRef::of(svc);
        let resumed = before.is_some_and(|b| {
            b.template_hash == after.template_hash
                && matches!(b.state, UpdateState::Paused | UpdateState::RollbackPaused)
        });
        match after.state {
            UpdateState::Updating | UpdateState::RollingBack if resumed => self.events.normal(
                &obj,
                "UpdateResumed",
                &format!(
                    "{} template {} resumed",
                    if after.state == UpdateState::Updating {
                        "Rollout of"
                    } else {
                        "Rollback to"
                    },
                    if after.state == UpdateState::Updating {
                        after.template_hash.as_str()
                    } else {
                        after.rollback_to.as_deref().unwrap_or("")
                    }
                ),
            ),
            UpdateState::Updating => self.events.normal(
                &obj,
                "UpdateStarted",
                &format!("Rolling out template {}", after.template_hash),
            ),
            UpdateState::Completed => {
                if before.is_some_and(|b| b.template_hash == after.template_hash) {
                    self.events.normal(
                        &obj,
                        "UpdateCompleted",
                        &format!("Every task runs template {}", after.template_hash),
                    );
                }
            }
            UpdateState::Paused => {
                self.events
                    .warning(&obj, "UpdatePaused", &format!("Update paused: {why}"))
            }
            UpdateState::RollingBack => self.events.warning(
                &obj,
                "RollbackStarted",
                &format!("Rolling back to the previous template: {why}"),
            ),
            UpdateState::RollbackPaused => {
                self.events
                    .warning(&obj, "RollbackPaused", &format!("Rollback paused: {why}"))
            }
            UpdateState::RolledBack => self.events.normal(
                &obj,
                "RolledBack",
                &format!(
                    "Every task runs the previous template {} again",
                    after.rollback_to.as_deref().unwrap_or("")
                ),
            ),
        }
    }

    /// Forgets a deleted Service.
    fn forget(&self, uid: Option<&str>) {
        if let (Some(uid), Ok(mut seen)) = (uid, self.replicas.lock()) {
            seen.remove(uid);
        }
    }

    /// Reads the scheduler's explanations from `reports` (share them with the
    /// scheduler's [`crate::scheduler::Scheduler::with_reports`]).
    pub fn with_reports(mut self, reports: SchedulingReports) -> Self {
        self.reports = reports;
        self
    }

    /// Builds a new Task for a slot.
    fn new_task(svc: &Service, hash: &str, slot: &SlotKey, attempt: u32, rejections: u32) -> Task {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let uid = svc.metadata.uid.clone().unwrap_or_default();
        let slot_s = slot.to_string();
        let mut labels = BTreeMap::from([
            (SERVICE_LABEL.to_string(), name.clone()),
            (HASH_LABEL.to_string(), hash.to_string()),
            (ATTEMPT_LABEL.to_string(), attempt.to_string()),
        ]);
        if let SlotKey::Host(h) = slot {
            labels.insert(TARGET_HOST_LABEL.to_string(), h.clone());
        }
        if rejections > 0 {
            labels.insert(REJECTIONS_LABEL.to_string(), rejections.to_string());
        }
        Task {
            metadata: ObjectMeta {
                name: Some(task_name(
                    &name,
                    &slot_s,
                    &name_suffix(&uid, &slot_s, attempt),
                )),
                namespace: svc.metadata.namespace.clone(),
                labels: Some(labels),
                finalizers: Some(vec![TASK_FINALIZER.to_string()]),
                owner_references: Some(vec![OwnerReference {
                    api_version: shoal_crds::API_VERSION.to_string(),
                    kind: Service::KIND.name().to_string(),
                    name: name.clone(),
                    uid,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: TaskSpec {
                service: name,
                slot: match slot {
                    SlotKey::Slot(n) => Some(*n),
                    SlotKey::Host(_) => None,
                },
                template: svc.spec.template.clone(),
                template_hash: hash.to_string(),
                restart_policy: svc.spec.restart_policy.clone(),
                host_name: None,
                desired_state: Some(DesiredState::Running),
                on_host_loss: svc.spec.on_host_loss,
            },
            status: Some(TaskStatus {
                phase: Some(TaskPhase::Pending),
                ..Default::default()
            }),
        }
    }

    /// Reconciles one Service: reads it, its Tasks and the Hosts, plans, and
    /// carries out the plan. Returns when to look again, if sooner than the
    /// next event or resync.
    pub async fn reconcile(&self, key: &ServiceRef) -> Result<Option<Duration>, OrchestratorError> {
        let store = self.store.as_ref();
        let svc = typed::get::<Service>(store, Some(&key.namespace), &key.name).await?;
        let opts = ListOptions {
            namespace: Some(key.namespace.clone()),
            label_selector: Some(format!("{SERVICE_LABEL}={}", key.name)),
            field_selector: None,
        };
        let (tasks, _) = typed::list::<Task>(store, &opts).await?;
        let tasks: Vec<Task> = tasks
            .into_iter()
            .filter(|t| t.spec.service == key.name)
            .collect();
        let Some(mut svc) = svc else {
            // The Service is gone without its finalizer having been honoured
            // (e.g. removed by hand): its Tasks must not outlive it.
            return self.remove_orphans(key, &tasks).await;
        };
        // An API server that checks only the CRD's schema (a cluster's, in
        // kubernetes mode) lets through what Shoal's own rules refuse: such
        // a spec is not acted on — what runs keeps running — and says why.
        if svc.metadata.deletion_timestamp.is_none()
            && let Err(errors) = shoal_crds::validate::validate_service(&svc)
        {
            return self.refuse_invalid(&svc, &errors.to_string()).await;
        }
        self.scaled_event(&svc);
        let (hosts, _) = typed::list::<Host>(store, &ListOptions::default()).await?;
        let hosts: Vec<SchedHost> = hosts.iter().map(SchedHost::from_host).collect();
        let report = self.reports.get(key);
        let now = Timestamp::now();
        let p = plan(&PlanInput {
            service: &svc,
            tasks: &tasks,
            hosts: &hosts,
            now,
            history_limit: self.config.history_limit,
            unschedulable: report.as_deref(),
        });
        debug!(service = %key, actions = p.actions.len(), "plan");
        let by_name: BTreeMap<&str, &Task> = tasks
            .iter()
            .map(|t| (t.metadata.name.as_deref().unwrap_or_default(), t))
            .collect();
        let mut conflicts = 0usize;

        for action in &p.actions {
            match action {
                Action::AddServiceFinalizer => {
                    let mut s = svc.clone();
                    s.metadata
                        .finalizers
                        .get_or_insert_with(Vec::new)
                        .push(SERVICE_FINALIZER.to_string());
                    // Nothing else may happen before the finalizer is on.
                    svc = typed::update(store, &s).await?;
                }
                Action::RemoveServiceFinalizer => {
                    let mut s = svc.clone();
                    if let Some(f) = s.metadata.finalizers.as_mut() {
                        f.retain(|f| f != SERVICE_FINALIZER);
                    }
                    match typed::update(store, &s).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => {
                            self.forget(s.metadata.uid.as_deref());
                            info!(service = %key, "service deleted")
                        }
                        Err(e) => return Err(e.into()),
                    }
                    return Ok(None);
                }
                Action::Shutdown(name) => {
                    let Some(t) = by_name.get(name.as_str()) else {
                        continue;
                    };
                    let mut t = (*t).clone();
                    t.spec.desired_state = Some(DesiredState::Shutdown);
                    match typed::update(store, &t).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => {}
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
                Action::Delete(name) => {
                    let uid = by_name
                        .get(name.as_str())
                        .and_then(|t| t.metadata.uid.clone());
                    let k = typed::key::<Task>(Some(&key.namespace), name);
                    let pre = DeletePreconditions {
                        uid,
                        resource_version: None,
                    };
                    match store.delete(&k, &pre).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => {}
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
                Action::Create {
                    slot,
                    attempt,
                    rejections,
                } => {
                    let mut t = Self::new_task(&svc, &p.template_hash, slot, *attempt, *rejections);
                    // Rolling back: the restored template, as a Task has it.
                    if let Some(from) = p.template_from.as_deref() {
                        let Some(src) = by_name.get(from) else {
                            continue;
                        };
                        t.spec.template = src.spec.template.clone();
                        t.spec.restart_policy = src.spec.restart_policy.clone();
                    }
                    match typed::create(store, &t).await {
                        Ok(_) => {}
                        // Another orchestrator created this very attempt.
                        Err(StoreError::AlreadyExists(_)) => conflicts += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }

        if let Some(mut status) = p.status {
            let old = svc.status.as_ref();
            if old.is_none_or(|o| !same_status(o, &status)) {
                stamp_conditions(&mut status, old, now);
                let mut s = svc.clone();
                s.status = Some(status);
                match typed::update_status(store, &s).await {
                    Ok(_) => self.rollout_event(&svc, s.status.as_ref()),
                    Err(StoreError::NotFound(_)) => {}
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if conflicts > 0 {
            return Err(OrchestratorError::Conflicts(conflicts));
        }
        Ok(p.requeue_after)
    }

    /// Reports an invalid spec: the condition `Valid` (`False`, reason
    /// `InvalidSpec`, every problem with its field in the message) with the
    /// spec's generation observed, and a Warning event when that is new.
    async fn refuse_invalid(
        &self,
        svc: &Service,
        problems: &str,
    ) -> Result<Option<Duration>, OrchestratorError> {
        let old = svc.status.as_ref();
        let mut status = old.cloned().unwrap_or_default();
        status.observed_generation = svc.metadata.generation;
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != VALID_CONDITION);
        conditions.push(Condition {
            type_: VALID_CONDITION.into(),
            status: ConditionStatus::False,
            reason: Some("InvalidSpec".into()),
            message: Some(problems.to_string()),
            last_transition_time: None,
        });
        if old.is_some_and(|o| same_status(o, &status)) {
            return Ok(None);
        }
        stamp_conditions(&mut status, old, Timestamp::now());
        let mut s = svc.clone();
        s.status = Some(status);
        match typed::update_status(self.store.as_ref(), &s).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(StoreError::Conflict { .. }) => return Err(OrchestratorError::Conflicts(1)),
            Err(e) => return Err(e.into()),
        }
        warn!(service = ?svc.metadata.name, %problems, "invalid spec: not acted on");
        self.events.warning(
            &ObjectRef::of(svc),
            "InvalidSpec",
            &format!(
                "Not acted on until corrected: {}",
                problems.replace('\n', "; ")
            ),
        );
        Ok(None)
    }

    /// Stops and deletes the Tasks of a Service that no longer exists.
    async fn remove_orphans(
        &self,
        key: &ServiceRef,
        tasks: &[Task],
    ) -> Result<Option<Duration>, OrchestratorError> {
        let store = self.store.as_ref();
        let mut conflicts = 0;
        for t in tasks {
            if t.metadata.deletion_timestamp.is_some() {
                continue;
            }
            info!(service = %key, task = t.metadata.name.as_deref().unwrap_or_default(), "removing task of a deleted service");
            if t.spec.desired_state() == DesiredState::Running {
                let mut t = t.clone();
                t.spec.desired_state = Some(DesiredState::Shutdown);
                match typed::update(store, &t).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            let name = t.metadata.name.as_deref().unwrap_or_default();
            let k = typed::key::<Task>(Some(&key.namespace), name);
            let pre = DeletePreconditions {
                uid: t.metadata.uid.clone(),
                resource_version: None,
            };
            match store.delete(&k, &pre).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(StoreError::Conflict { .. }) => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if conflicts > 0 {
            return Err(OrchestratorError::Conflicts(conflicts));
        }
        Ok(None)
    }

    /// All Services, by key.
    /// All Services, by key, and the keys of Services that are gone but
    /// still have Tasks.
    async fn all_services(&self) -> Result<(Vec<ServiceRef>, Vec<ServiceRef>), StoreError> {
        let all = ListOptions::default();
        let (svcs, _) = typed::list::<Service>(self.store.as_ref(), &all).await?;
        let svcs: Vec<ServiceRef> = svcs.iter().map(service_ref).collect();
        let (tasks, _) = typed::list::<Task>(self.store.as_ref(), &all).await?;
        let known: BTreeSet<&ServiceRef> = svcs.iter().collect();
        let orphans: BTreeSet<ServiceRef> = tasks
            .iter()
            .map(|t| {
                ServiceRef::new(
                    t.metadata.namespace.clone().unwrap_or_default(),
                    t.spec.service.clone(),
                )
            })
            .filter(|k| !known.contains(k))
            .collect();
        Ok((svcs, orphans.into_iter().collect()))
    }

    /// Runs until `shutdown`: watches Services, Tasks and Hosts, reconciles
    /// Services one at a time by key, resyncs every `resync_interval`.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("orchestrator");
        self.run_inner(shutdown).instrument(span).await;
    }

    async fn run_inner(self, shutdown: CancellationToken) {
        let mut queue: Queue<ServiceRef> = Queue::new();
        let mut reports = self.reports.subscribe();
        let mut retry = Duration::from_millis(100);
        'relist: loop {
            if shutdown.is_cancelled() {
                return;
            }
            // List, then watch from the list's revision: nothing is missed.
            let start = async {
                let rev = self.store.revision().await?;
                let svcs = self.all_services().await?;
                let events = watch_kinds(
                    self.store.as_ref(),
                    &[Kind::Service, Kind::Task, Kind::Host],
                    rev,
                )
                .await?;
                Ok::<_, StoreError>((svcs, events))
            };
            let ((svcs, orphans), mut events) = match start.await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cannot list and watch; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            retry = Duration::from_millis(100);
            let mut known: BTreeSet<ServiceRef> = svcs.into_iter().collect();
            for k in known.iter().chain(&orphans) {
                queue.add(k.clone());
            }
            let mut resync = tokio::time::interval(self.config.resync_interval);
            resync.tick().await;
            loop {
                let due = queue.next_due();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.next() => match ev {
                        Some((kind, Ok(e))) => {
                            let Some(obj) = event_object(&e) else { continue };
                            match kind {
                                Kind::Service => {
                                    let k = ServiceRef::new(
                                        str_at(obj, "/metadata/namespace").unwrap_or_default(),
                                        str_at(obj, "/metadata/name").unwrap_or_default(),
                                    );
                                    if matches!(e, WatchEvent::Deleted(_)) {
                                        known.remove(&k);
                                    } else {
                                        known.insert(k.clone());
                                    }
                                    queue.add(k);
                                }
                                Kind::Task => {
                                    if let Some(svc) = str_at(obj, "/spec/service") {
                                        queue.add(ServiceRef::new(
                                            str_at(obj, "/metadata/namespace").unwrap_or_default(),
                                            svc,
                                        ));
                                    }
                                }
                                Kind::Host => {
                                    for k in &known {
                                        queue.add(k.clone());
                                    }
                                }
                                // Not watched.
                                Kind::Event => {}
                            }
                        }
                        Some((_, Err(e))) => {
                            debug!(error = %e, "watch ended; relisting");
                            continue 'relist;
                        }
                        None => continue 'relist,
                    },
                    r = reports.recv() => match r {
                        Ok(k) => queue.add(k),
                        Err(RecvError::Lagged(_)) => {
                            for k in &known {
                                queue.add(k.clone());
                            }
                        }
                        Err(RecvError::Closed) => {}
                    },
                    _ = resync.tick() => {
                        for k in &known {
                            queue.add(k.clone());
                        }
                    }
                    _ = async {
                        match due {
                            Some(t) => tokio::time::sleep_until(t).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        for k in queue.take_due() {
                            if shutdown.is_cancelled() {
                                return;
                            }
                            match self.reconcile(&k).await {
                                Ok(after) => queue.done(k, true, after),
                                Err(e) => {
                                    debug!(service = %k, error = %e, "reconcile failed; requeued");
                                    queue.done(k, false, None);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
