//! The local reconciler: one task owning the agent's view of the engine. It
//! takes complete assignment sets from a `watch` channel (fed by an
//! assignments file today, by the control-plane session later), follows the
//! engine's event stream, plans with [`crate::plan`] and runs the actions
//! concurrently (bounded, one per task), and emits task status changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use shoal_crds::TaskStatus;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::engine::{ContainerEngine, ContainerInfo, EngineEvent, EventKind};
use crate::error::EngineError;
use crate::executor::{ActionError, ActionResult, ExecCtx, execute};
use crate::labels::CLUSTER;
use crate::plan::{Action, ActionFailure, Ctx, TaskState, plan};
use crate::policy::LocalPolicy;
use crate::task::AssignedTask;

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The cluster id: the agent touches only containers labelled with it.
    pub cluster_id: String,
    /// Actions running at once.
    pub max_concurrency: usize,
    /// Full resync period.
    pub resync_interval: Duration,
    /// Bound on one image pull.
    pub pull_timeout: Duration,
    /// Longest wait between engine reconnect attempts.
    pub max_reconnect_backoff: Duration,
    /// First retry delay after a failed action (doubles, capped at 30 s).
    pub action_retry_base: Duration,
    /// What this host lets a template do, whatever the control plane asks:
    /// a task that breaks it gets no container and ends `Rejected`.
    pub policy: LocalPolicy,
}

impl AgentConfig {
    /// Defaults for cluster `cluster_id`, with a permissive local policy
    /// (set [`AgentConfig::policy`] for an agent that joins a remote
    /// control plane).
    pub fn new(cluster_id: impl Into<String>) -> AgentConfig {
        AgentConfig {
            cluster_id: cluster_id.into(),
            max_concurrency: 16,
            resync_interval: Duration::from_secs(30),
            pull_timeout: Duration::from_secs(30),
            max_reconnect_backoff: Duration::from_secs(5),
            action_retry_base: Duration::from_secs(1),
            policy: LocalPolicy::permissive(),
        }
    }
}

/// A complete set of tasks assigned to this host.
pub type Assignments = Arc<Vec<AssignedTask>>;

/// A task's status changed.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// Task uid.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Task name.
    pub name: String,
    /// The new status.
    pub status: TaskStatus,
}

const MAX_ACTION_RETRY: Duration = Duration::from_secs(30);

/// The reconciler's state; run it with [`Reconciler::run`].
#[derive(Debug)]
pub struct Reconciler {
    engine: Arc<dyn ContainerEngine>,
    config: AgentConfig,
    exec: ExecCtx,
    assigned: Option<BTreeMap<String, AssignedTask>>,
    observed: BTreeMap<String, ContainerInfo>,
    states: BTreeMap<String, TaskState>,
    reported: BTreeMap<String, TaskStatus>,
    in_flight: BTreeSet<String>,
    oom_seen: BTreeSet<String>,
    outage: Option<(SystemTime, SystemTime)>,
    lost_at: Option<SystemTime>,
    wake_at: Option<SystemTime>,
    status_tx: mpsc::UnboundedSender<StatusUpdate>,
    semaphore: Arc<Semaphore>,
    engine_state: watch::Sender<Option<String>>,
}

type Done = (Action, ActionResult);

impl Reconciler {
    /// A reconciler driving `engine`, sending status changes to `status_tx`.
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        config: AgentConfig,
        status_tx: mpsc::UnboundedSender<StatusUpdate>,
    ) -> Reconciler {
        let exec = ExecCtx {
            cluster: config.cluster_id.clone(),
            pull_timeout: config.pull_timeout,
            networks: Arc::new(Mutex::new(BTreeSet::new())),
            policy: Arc::new(config.policy.clone()),
        };
        let semaphore = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        Reconciler {
            engine,
            config,
            exec,
            assigned: None,
            observed: BTreeMap::new(),
            states: BTreeMap::new(),
            reported: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            oom_seen: BTreeSet::new(),
            outage: None,
            lost_at: None,
            wake_at: None,
            status_tx,
            semaphore,
            engine_state: watch::Sender::new(None),
        }
    }

    /// Whether the engine answers: `None` while it does, else why not. The
    /// session reports it to the control plane, which replaces the host's
    /// tasks elsewhere when the engine stays away.
    pub fn engine_state(&self) -> watch::Receiver<Option<String>> {
        self.engine_state.subscribe()
    }

    fn engine_down(&self, why: &EngineError) {
        let why = why.to_string();
        self.engine_state.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(why);
                true
            } else {
                false
            }
        });
    }

    fn cluster_filter(&self) -> Vec<(String, String)> {
        vec![(CLUSTER.to_string(), self.config.cluster_id.clone())]
    }

    /// Runs until `shutdown` is cancelled: connects (with backoff), follows
    /// events, reconciles. Actions in flight are awaited on shutdown.
    pub async fn run(
        mut self,
        mut assignments: watch::Receiver<Option<Assignments>>,
        shutdown: CancellationToken,
    ) {
        info!(policy = %self.config.policy, "local policy");
        let mut joins: JoinSet<Done> = JoinSet::new();
        let mut backoff = Duration::ZERO;
        let mut feeder_open = true;
        self.take_assignments(&assignments);
        'connect: while !shutdown.is_cancelled() {
            if !backoff.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            backoff = (backoff * 2)
                .max(Duration::from_millis(100))
                .min(self.config.max_reconnect_backoff);
            match self.engine.version().await {
                Ok(v) => info!(version = %v.version, api = %v.api_version, "engine reachable"),
                Err(e) => {
                    debug!(error = %e, "engine not reachable");
                    self.engine_down(&e);
                    self.lost_at.get_or_insert_with(SystemTime::now);
                    continue;
                }
            }
            // Subscribe before listing; `since` replays whatever happens
            // between the two.
            let since = SystemTime::now() - Duration::from_secs(1);
            let stream_token = shutdown.child_token();
            let (ev_tx, mut ev_rx) = mpsc::channel::<Result<EngineEvent, EngineError>>(1024);
            let mut stream = self.engine.events(Some(since), &self.cluster_filter());
            let pump_token = stream_token.clone();
            tokio::spawn(
                async move {
                    loop {
                        tokio::select! {
                            _ = pump_token.cancelled() => break,
                            item = stream.next() => {
                                let end = !matches!(item, Some(Ok(_)));
                                let item = item.unwrap_or_else(|| Err(EngineError::Unavailable("event stream ended".into())));
                                if ev_tx.send(item).await.is_err() || end {
                                    break;
                                }
                            }
                        }
                    }
                }
                .instrument(info_span!("engine_events")),
            );
            if let Err(e) = self.resync().await {
                warn!(error = %e, "resync failed; reconnecting");
                self.engine_down(&e);
                self.lost_at.get_or_insert_with(SystemTime::now);
                stream_token.cancel();
                continue;
            }
            self.engine_state
                .send_if_modified(|cur| cur.take().is_some());
            backoff = Duration::ZERO;
            if let Some(lost) = self.lost_at.take() {
                let now = SystemTime::now();
                info!("engine back; converging");
                self.outage = Some((lost, now));
            }
            self.reconcile(&mut joins);
            let mut resync = tokio::time::interval(self.config.resync_interval);
            resync.tick().await;
            loop {
                // A wake time already past means now (the planner only sets
                // future ones, so this cannot spin).
                let wake = self
                    .wake_at
                    .map(|t| {
                        t.duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO)
                    })
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        stream_token.cancel();
                        break 'connect;
                    }
                    ev = ev_rx.recv() => match ev {
                        Some(Ok(ev)) => {
                            self.on_event(ev).await;
                            self.reconcile(&mut joins);
                        }
                        Some(Err(e)) => {
                            warn!(error = %e, "engine event stream lost; reconnecting");
                            self.engine_down(&e);
                            self.lost_at = Some(SystemTime::now());
                            break;
                        }
                        None => {
                            self.engine_down(&EngineError::Unavailable("event stream ended".into()));
                            self.lost_at = Some(SystemTime::now());
                            break;
                        }
                    },
                    changed = assignments.changed(), if feeder_open => {
                        if changed.is_err() {
                            debug!("assignment feeder closed; keeping the last set");
                            feeder_open = false;
                        } else {
                            self.take_assignments(&assignments);
                            self.reconcile(&mut joins);
                        }
                    }
                    Some(done) = joins.join_next(), if !joins.is_empty() => {
                        match done {
                            Ok((action, result)) => self.on_done(action, result).await,
                            Err(e) => warn!(error = %e, "action task failed"),
                        }
                        self.reconcile(&mut joins);
                    }
                    _ = tokio::time::sleep(wake), if self.wake_at.is_some() => {
                        self.reconcile(&mut joins);
                    }
                    _ = resync.tick() => {
                        if let Err(e) = self.resync().await {
                            warn!(error = %e, "periodic resync failed; reconnecting");
                            self.engine_down(&e);
                            self.lost_at = Some(SystemTime::now());
                            break;
                        }
                        self.reconcile(&mut joins);
                    }
                }
            }
            stream_token.cancel();
        }
        // Let actions in flight finish (bounded), so no container is left
        // half-created.
        let drain = async { while joins.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(15), drain)
            .await
            .is_err()
        {
            joins.abort_all();
        }
        info!("reconciler stopped");
    }

    fn take_assignments(&mut self, rx: &watch::Receiver<Option<Assignments>>) {
        let set = rx.borrow().clone();
        if let Some(set) = set {
            let map: BTreeMap<String, AssignedTask> =
                set.iter().map(|t| (t.uid.clone(), t.clone())).collect();
            // Forget tasks no longer assigned.
            self.states.retain(|uid, _| map.contains_key(uid));
            self.reported.retain(|uid, _| map.contains_key(uid));
            info!(tasks = map.len(), "assignment set");
            self.assigned = Some(map);
        }
    }

    /// Full resync: list this cluster's containers and inspect each.
    async fn resync(&mut self) -> Result<(), EngineError> {
        let list = self.engine.list(&self.cluster_filter()).await?;
        let engine = self.engine.clone();
        let infos: Vec<Result<ContainerInfo, EngineError>> = futures::stream::iter(list)
            .map(|c| {
                let engine = engine.clone();
                async move { engine.inspect(&c.id).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut observed = BTreeMap::new();
        for r in infos {
            match r {
                Ok(info) => {
                    observed.insert(info.id.clone(), info);
                }
                Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        debug!(containers = observed.len(), "resynced");
        self.observed = observed;
        Ok(())
    }

    async fn refresh(&mut self, id: &str) {
        match self.engine.inspect(id).await {
            Ok(info) => {
                if info.labels.get(CLUSTER) == Some(&self.config.cluster_id) {
                    self.observed.insert(info.id.clone(), info);
                }
            }
            Err(EngineError::NotFound(_)) => {
                self.observed.remove(id);
            }
            Err(e) => debug!(error = %e, container = %id, "inspect failed"),
        }
    }

    async fn on_event(&mut self, ev: EngineEvent) {
        debug!(container = %ev.container_id, kind = ?ev.kind, "event");
        match ev.kind {
            EventKind::Destroy => {
                self.observed.remove(&ev.container_id);
            }
            EventKind::Oom => match self.observed.get_mut(&ev.container_id) {
                // Usually `oom` comes before the `die` it causes, but the
                // engine can process the exit first: then it belongs to the
                // run that just ended, and the planner refines that exit.
                Some(c) if !c.state.is_up() && c.finished_at.is_some() => c.oom_killed = true,
                _ => {
                    self.oom_seen.insert(ev.container_id.clone());
                }
            },
            // A known container died: the event says all the planner needs
            // (an inspect would wait for the engine's exit handling and
            // delay the restart). The next inspect refines the record; exits
            // are keyed by the run's start time, so it is not counted twice.
            EventKind::Die
                if self
                    .observed
                    .get(&ev.container_id)
                    .is_some_and(|c| c.state.is_up()) =>
            {
                let oom = self.oom_seen.remove(&ev.container_id);
                if let Some(c) = self.observed.get_mut(&ev.container_id) {
                    c.state = crate::engine::RunState::Exited;
                    c.exit_code = ev.exit_code;
                    c.finished_at = Some(ev.time);
                    c.oom_killed = oom;
                }
            }
            _ => {
                if ev.kind == EventKind::Start {
                    self.oom_seen.remove(&ev.container_id);
                }
                if !self.event_is_news(&ev) {
                    return;
                }
                self.refresh(&ev.container_id).await
            }
        }
    }

    /// False for a `create` or `start` event that an inspect would not add to:
    /// the container's task has an action in flight (its end inspects the
    /// container), or the record already holds the container (`create`) or its
    /// run (`start`: a die in between would have been seen first). Saves the
    /// engine two inspects per container the agent starts.
    fn event_is_news(&self, ev: &EngineEvent) -> bool {
        let in_flight = ev
            .labels
            .get(crate::labels::TASK_UID)
            .is_some_and(|uid| self.in_flight.contains(uid));
        let known = self.observed.get(&ev.container_id);
        match ev.kind {
            EventKind::Create => !in_flight && known.is_none(),
            EventKind::Start => !in_flight && !known.is_some_and(|c| c.state.is_up()),
            _ => true,
        }
    }

    async fn on_done(&mut self, action: Action, result: ActionResult) {
        let key = action.key().to_string();
        self.in_flight.remove(&key);
        let now = SystemTime::now();
        match &result {
            Ok(Some(id)) => {
                if let Some(st) = self.states.get_mut(&key) {
                    st.failure = None;
                }
                self.refresh(id).await;
            }
            Ok(None) => {
                if let Action::Remove { container_id, .. } = &action {
                    self.observed.remove(container_id);
                }
            }
            Err(e) => {
                warn!(task = %key, action = ?action, error = ?e, "action failed");
                if let Action::Start { container_id, .. }
                | Action::Restart { container_id, .. }
                | Action::Stop { container_id, .. }
                | Action::Remove { container_id, .. } = &action
                {
                    self.refresh(container_id).await;
                }
                if matches!(action, Action::Create { .. }) {
                    // A create may have left a container behind (start failed).
                    if let Err(e) = self.resync().await {
                        debug!(error = %e, "resync after failed create");
                    }
                }
                let base = self.config.action_retry_base;
                let st = self.states.entry(key.clone()).or_default();
                match e {
                    ActionError::Rejected(m) => {
                        st.outcome = Some(crate::plan::Outcome::Rejected { message: m.clone() });
                    }
                    other => {
                        let (reason, message) = match other {
                            ActionError::ImageNotFound(m) => ("ImageNotFound", m),
                            ActionError::StartFailed(m) => ("StartFailed", m),
                            ActionError::Unavailable(m) => ("EngineUnavailable", m),
                            ActionError::Other(m) | ActionError::Rejected(m) => ("EngineError", m),
                        };
                        let count = st.failure.as_ref().map(|f| f.count).unwrap_or(0) + 1;
                        let delay = base
                            .saturating_mul(1u32 << (count - 1).min(16))
                            .min(MAX_ACTION_RETRY);
                        st.failure = Some(ActionFailure {
                            reason: reason.into(),
                            message: message.clone(),
                            count,
                            retry_at: now + delay,
                        });
                    }
                }
            }
        }
    }

    /// Plan, apply the new states, report status changes, dispatch actions.
    fn reconcile(&mut self, joins: &mut JoinSet<Done>) {
        let Some(assigned) = &self.assigned else {
            return;
        };
        let ctx = Ctx {
            now: SystemTime::now(),
            outage: self.outage,
        };
        let p = plan(
            &self.config.cluster_id,
            assigned,
            &self.observed,
            &self.states,
            &self.in_flight,
            ctx,
        );
        self.wake_at = p.wake_at();
        let mut actions = Vec::new();
        for (uid, tp) in p.tasks {
            self.states.insert(uid.clone(), tp.state);
            let task = &assigned[&uid];
            let prev = self.reported.get(&uid);
            let mut status = tp.status;
            let same = prev.is_some_and(|prev| {
                let mut a = prev.clone();
                a.last_transition_time = None;
                a == status
            });
            if !same {
                status.last_transition_time = match prev {
                    Some(prev) if prev.phase == status.phase => prev.last_transition_time.clone(),
                    _ => crate::plan::now_time(ctx.now),
                };
                let _ = self.status_tx.send(StatusUpdate {
                    uid: uid.clone(),
                    namespace: task.namespace.clone(),
                    name: task.name.clone(),
                    status: status.clone(),
                });
                self.reported.insert(uid.clone(), status);
            }
            if let Some(a) = tp.action {
                actions.push(a);
            }
        }
        actions.extend(p.orphans);
        for action in actions {
            let key = action.key().to_string();
            if !self.in_flight.insert(key.clone()) {
                continue;
            }
            let task = assigned.get(&key).cloned();
            let engine = self.engine.clone();
            let exec = self.exec.clone();
            let sem = self.semaphore.clone();
            let span = info_span!("action", task = %key, kind = action_kind(&action));
            joins.spawn(
                async move {
                    let _permit = sem.acquire_owned().await;
                    debug!(?action, "executing");
                    let r = execute(engine.as_ref(), &action, task.as_ref(), &exec).await;
                    (action, r)
                }
                .instrument(span),
            );
        }
    }
}

fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::Create { .. } => "create",
        Action::Start { .. } => "start",
        Action::Restart { .. } => "restart",
        Action::Stop { .. } => "stop",
        Action::Remove { .. } => "remove",
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
