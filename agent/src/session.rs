//! The agent's session to the control plane (DESIGN.md, "Agent protocol"):
//! dial out, say hello, receive the complete assignment set and then deltas,
//! report task status changes in batches, send heartbeats, and answer log
//! requests on separate streams.
//!
//! The session is a feeder of the local reconciler, like `--assignments
//! FILE`: it publishes the assigned tasks on a `watch` channel — `None` until
//! a complete set arrived, so nothing is removed on a guess — and takes the
//! reconciler's status reports from a channel.
//!
//! The agent may know several dispatchers (the servers of a highly
//! available control plane, of which only the leader serves agents): it
//! dials them in turn, moving to the next one when a connection fails, a
//! server refuses the session (one that is not the leader answers
//! `Unavailable`) or a session ends. Reconnects use exponential backoff, but
//! only once a whole round of dispatchers failed, so that a leader change
//! costs one quick hop; the first attempt after a session that lived a
//! while is immediate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_crds::Task;
use shoal_proto::v1::agent_message::Message as ToPlane;
use shoal_proto::v1::control_message::Message as FromPlane;
use shoal_proto::v1::{HostCapacity, LogLine, LogStream, StatsSample, TaskStatusUpdate};
use shoal_proto::{
    AgentMessage, DispatcherClient, ExecInput, ExecRequest, Heartbeat, Hello, LogChunk,
    LogsRequest, RequestError, StatsChunk, StatsRequest, TaskStatusBatch,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::reconciler::{Assignments, StatusUpdate};
use crate::task::AssignedTask;

/// What the agent tells the control plane about its host.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    /// Host name (the Host object's name).
    pub host_name: String,
    /// Labels applied when the host first joins.
    pub labels: BTreeMap<String, String>,
    /// CPUs, in millicores.
    pub cpu_millicores: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Docker engine version.
    pub engine_version: String,
    /// Negotiated Docker API version.
    pub engine_api_version: String,
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub arch: String,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The dispatchers' addresses, e.g. `http://127.0.0.1:7444`, dialled in
    /// turn (the first first); all `https://` with [`Self::tls`], else all
    /// `http://`. Never empty.
    pub endpoints: Vec<String>,
    /// The cluster this agent belongs to; a control plane of another cluster
    /// is refused.
    pub cluster_id: String,
    /// The host's description.
    pub host: HostInfo,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Longest time status reports wait to be sent together.
    pub status_batch_window: Duration,
    /// The engine's state from [`crate::Reconciler::engine_state`]: `None`
    /// while it answers, else why not; sent with every heartbeat (and at
    /// once when it changes). Without it the engine is taken as up.
    pub engine_state: Option<watch::Receiver<Option<String>>>,
    /// Mutual TLS with these credentials (an `https://` endpoint, the
    /// dispatcher's join listener); without, plain HTTP/2 (loopback).
    /// The host's credentials, current: renewal replaces them (see
    /// [`crate::join::keep_renewed`]) and the next connection uses the new ones.
    pub tls: Option<watch::Receiver<crate::join::Credentials>>,
    /// Where the join addresses the control plane tells (its servers') are
    /// kept, dialled after [`Self::endpoints`]; see [`crate::dispatchers`].
    /// Only told on sessions with [`Self::tls`]. `None`: kept in memory only.
    pub dispatchers_file: Option<std::path::PathBuf>,
}

impl SessionConfig {
    /// Settings with the defaults (backoff up to 5 s, 10 ms status batches)
    /// for one dispatcher.
    pub fn new(endpoint: impl Into<String>, cluster_id: impl Into<String>, host: HostInfo) -> Self {
        Self::with_endpoints([endpoint], cluster_id, host)
    }

    /// Settings with the defaults for several dispatchers, dialled in turn
    /// (see [`run`]).
    pub fn with_endpoints<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
        cluster_id: impl Into<String>,
        host: HostInfo,
    ) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            cluster_id: cluster_id.into(),
            host,
            max_backoff: Duration::from_secs(5),
            status_batch_window: Duration::from_millis(10),
            engine_state: None,
            tls: None,
            dispatchers_file: None,
        }
    }
}

/// Reads tasks' container logs and resource use for the control plane.
#[async_trait::async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// Log lines of the current container of the task with this uid.
    async fn logs(&self, req: &LogsRequest) -> Result<BoxStream<'static, LogLine>, String>;

    /// One resource sample of the current container of each task with these
    /// uids (every task of the host when empty); tasks without a running
    /// container are left out.
    async fn stats(&self, task_uids: &[String]) -> Result<Vec<StatsSample>, String> {
        let _ = task_uids;
        Err("stats are not served by this agent".into())
    }

    /// Runs the request's command in the running container of its task;
    /// `input` is its input when the request is interactive.
    async fn exec(
        &self,
        req: &ExecRequest,
        input: Option<BoxStream<'static, crate::engine::ExecInput>>,
    ) -> Result<BoxStream<'static, ExecEvent>, String> {
        let _ = (req, input);
        Err("commands are not run by this agent".into())
    }
}

/// What a command run in a task's container gives.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Some of its output.
    Line(LogLine),
    /// It ended with this exit code.
    Exit(i64),
}

/// How often a streamed stats request gets samples.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Why a session ended (each leads to a reconnect).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Could not connect.
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The control plane refused or the stream failed.
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    /// The control plane broke the protocol (e.g. a delta on an unknown
    /// sequence).
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Runs sessions until shutdown, publishing assignments on `assigned` (the
/// reconciler's input) and sending the reconciler's status changes that
/// arrive on `reports`. The control plane must be of cluster `cluster_id`.
///
/// The endpoints are dialled in turn, starting with the first: a failed
/// connection, a refused session (e.g. `Unavailable` from a server that is
/// not the leader) or a session that ends moves to the next at once; the
/// backoff (100 ms doubling up to `max_backoff`) comes only after a whole
/// round of endpoints failed, and a session that lived more than 2 s resets
/// it.
///
/// Returns `None` at shutdown, or why the control plane refused this host's
/// certificate for good (the host was removed from the cluster, or joined
/// again elsewhere): retrying cannot help, the host must join again.
pub async fn run(
    cfg: SessionConfig,
    assigned: watch::Sender<Option<Assignments>>,
    reports: mpsc::UnboundedReceiver<StatusUpdate>,
    logs: Arc<dyn LogSource>,
    shutdown: CancellationToken,
) -> Option<String> {
    // Latest status per task, re-sent on every new session so the control
    // plane is current after a reconnect.
    let mut reports = Reports {
        rx: reports,
        latest: HashMap::new(),
    };
    // When the control plane was last heard from (ms since SESSION_START;
    // NEVER before the first session): Fence tasks go when it is too long.
    let heard = Arc::new(AtomicU64::new(NEVER));
    let assigned = Arc::new(assigned);
    let watchdog = tokio::spawn(
        fence_watchdog(assigned.clone(), heard.clone(), shutdown.clone())
            .instrument(tracing::info_span!("fence-watchdog")),
    );
    let _stop_watchdog = AbortOnDrop(watchdog);
    let dispatchers =
        crate::dispatchers::Dispatchers::new(cfg.endpoints.clone(), cfg.dispatchers_file.clone());
    if dispatchers.all().is_empty() {
        tracing::error!("no dispatcher address: the agent cannot reach the control plane");
        shutdown.cancelled().await;
        return None;
    }
    let mut rotation = Rotation::new(dispatchers.all().len(), cfg.max_backoff);
    let mut wait = Duration::ZERO;
    loop {
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return None,
            }
        }
        // The control plane may have told other servers meanwhile.
        let endpoints = dispatchers.all();
        rotation.resize(endpoints.len());
        let several = endpoints.len() > 1;
        let endpoint = endpoints[rotation.current()].as_str();
        let started = tokio::time::Instant::now();
        let res = session(
            &cfg,
            endpoint,
            &dispatchers,
            &assigned,
            &heard,
            &mut reports,
            &logs,
            &shutdown,
        )
        .await;
        if shutdown.is_cancelled() {
            return None;
        }
        match res {
            Ok(()) => tracing::info!(endpoint, "session closed by the control plane"),
            Err(SessionError::Stream(s))
                if cfg.tls.is_some() && s.code() == tonic::Code::PermissionDenied =>
            {
                tracing::error!(endpoint, why = %s.message(), "the control plane refused this host");
                // No longer of the cluster: its replicas run elsewhere, so
                // its containers go (a complete, empty assignment set).
                assigned.send_replace(Some(Arc::new(Vec::new())));
                return Some(s.message().to_owned());
            }
            // With several dispatchers, those that do not serve agents (not
            // the leader) are expected: no warning for each.
            Err(SessionError::Stream(s))
                if several
                    && matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                    ) =>
            {
                tracing::info!(endpoint, why = %s.message(), "this dispatcher does not serve agents now; trying the next");
            }
            Err(SessionError::Connect(e)) if several => {
                tracing::info!(endpoint, error = %chain(&e), "cannot connect to this dispatcher; trying the next");
            }
            Err(e) => tracing::warn!(endpoint, error = %chain(&e), "session ended"),
        }
        // A session that lived a while resets the backoff and earns an
        // immediate first reconnect.
        wait = rotation.next(started.elapsed() > Duration::from_secs(2));
        if several && !wait.is_zero() {
            tracing::warn!(
                endpoints = endpoints.len(),
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "no dispatcher serves this agent; trying them again"
            );
        }
    }
}

/// An error with its causes (a transport error alone says only "transport
/// error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Which endpoint to dial next, and how long to wait first: the endpoints
/// in turn, the next one at once after each attempt, and the backoff only
/// once a whole round of attempts failed in a row.
#[derive(Debug, Clone)]
struct Rotation {
    /// How many endpoints (at least 1).
    len: usize,
    /// The endpoint to dial.
    current: usize,
    /// Attempts that failed in a row since the last session that lived.
    failures: usize,
    /// The next wait after a failed round.
    backoff: Duration,
    max_backoff: Duration,
}

impl Rotation {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);

    fn new(len: usize, max_backoff: Duration) -> Self {
        Self {
            len: len.max(1),
            current: 0,
            failures: 0,
            backoff: Self::FIRST_BACKOFF,
            max_backoff,
        }
    }

    /// The index of the endpoint to dial.
    fn current(&self) -> usize {
        self.current
    }

    /// The number of endpoints changed to `len` (new ones are added at the
    /// end, so the current index stays valid unless the list shrank).
    fn resize(&mut self, len: usize) {
        self.len = len.max(1);
        self.current %= self.len;
    }

    /// The attempt on the current endpoint ended (`lived`: it held a session
    /// for a while, which resets the backoff): moves to the next endpoint,
    /// and says how long to wait before dialling it.
    fn next(&mut self, lived: bool) -> Duration {
        self.current = (self.current + 1) % self.len;
        if lived {
            self.failures = 0;
            self.backoff = Self::FIRST_BACKOFF;
            return Duration::ZERO;
        }
        self.failures += 1;
        if !self.failures.is_multiple_of(self.len) {
            return Duration::ZERO;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        wait
    }
}

fn hello(h: &HostInfo, last_applied: Option<u64>) -> Hello {
    Hello {
        host_name: h.host_name.clone(),
        labels: h.labels.clone(),
        capacity: Some(HostCapacity {
            cpu_millicores: h.cpu_millicores,
            memory_bytes: h.memory_bytes,
        }),
        engine_version: h.engine_version.clone(),
        engine_api_version: h.engine_api_version.clone(),
        os: h.os.clone(),
        arch: h.arch.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        last_applied_sequence: last_applied,
        session_id: format!(
            "{}-{}",
            std::process::id(),
            SESSION_START.elapsed().as_nanos()
        ),
    }
}

static SESSION_START: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// The reconciler's status reports, and the latest of each task (re-sent on
/// every new session).
#[derive(Debug)]
struct Reports {
    rx: mpsc::UnboundedReceiver<StatusUpdate>,
    latest: HashMap<String, StatusUpdate>,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &SessionConfig,
    url: &str,
    dispatchers: &crate::dispatchers::Dispatchers,
    assigned: &watch::Sender<Option<Assignments>>,
    heard: &AtomicU64,
    reports: &mut Reports,
    logs: &Arc<dyn LogSource>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    // With other dispatchers to try, a silent one is given up sooner.
    let connect_timeout = if dispatchers.all().len() > 1 {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(SessionError::Connect)?
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .initial_stream_window_size(shoal_proto::STREAM_WINDOW)
        .initial_connection_window_size(shoal_proto::CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10));
    let endpoint = match &cfg.tls {
        Some(creds) => endpoint
            .tls_config(creds.borrow().client_tls())
            .map_err(SessionError::Connect)?,
        None => endpoint,
    };
    let channel = endpoint.connect().await?;
    let mut client = DispatcherClient::new(channel);
    let (tx, out) = mpsc::channel::<AgentMessage>(256);
    let send = |m: ToPlane| AgentMessage { message: Some(m) };
    let _ = tx.send(send(ToPlane::Hello(hello(&cfg.host, None)))).await;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out))
        .await?
        .into_inner();

    let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence: Option<u64> = None;
    let mut tasks: BTreeMap<String, Task> = BTreeMap::new();
    let mut pending: Vec<TaskStatusUpdate> = reports.latest.values().map(to_update).collect();
    let mut flush = tokio::time::interval(cfg.status_batch_window.max(Duration::from_millis(1)));
    let session_token = shutdown.child_token();
    let _guard = session_token.clone().drop_guard();
    // Log requests being served, to cancel on the control plane's word.
    let mut requests: HashMap<u64, CancellationToken> = HashMap::new();
    // The engine's state; a fixed "up" without a reconciler to say.
    let (_up, fixed) = watch::channel(None::<String>);
    let mut engine_state = cfg.engine_state.clone().unwrap_or(fixed);
    engine_state.mark_changed();
    let mut engine_reported: Option<String> = None;

    // The control plane answers every heartbeat: a session that stays silent
    // this long is on a server that vanished (its machine gone, a partition)
    // without closing the connection, so try the others.
    let mut last_word = tokio::time::Instant::now();
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                heard.store(since_start(), Ordering::Relaxed);
                last_word = tokio::time::Instant::now();
                match msg.message {
                    Some(FromPlane::Welcome(w)) => {
                        if w.cluster_id != cfg.cluster_id {
                            return Err(SessionError::Protocol(format!(
                                "the control plane is of cluster {:?}, this agent of {:?}",
                                w.cluster_id, cfg.cluster_id
                            )));
                        }
                        let every = Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(10)));
                        heartbeat = tokio::time::interval(every);
                        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tracing::info!(endpoint = %url, cluster = %cfg.cluster_id, "welcomed by the control plane");
                    }
                    Some(FromPlane::AssignmentSet(set)) => {
                        tasks.clear();
                        for a in set.assignments {
                            match Task::try_from(a) {
                                Ok(t) => { tasks.insert(t.metadata.uid.clone().unwrap_or_default(), t); }
                                Err(e) => return Err(SessionError::Protocol(format!("bad assignment: {e}"))),
                            }
                        }
                        sequence = Some(set.sequence);
                        publish(assigned, &tasks);
                    }
                    Some(FromPlane::AssignmentDelta(d)) => {
                        if sequence != Some(d.previous_sequence) {
                            return Err(SessionError::Protocol(format!(
                                "delta {} applies on {} but this agent holds {sequence:?}",
                                d.sequence, d.previous_sequence
                            )));
                        }
                        for uid in d.removed_task_uids {
                            tasks.remove(&uid);
                        }
                        for a in d.upserted {
                            match Task::try_from(a) {
                                Ok(t) => { tasks.insert(t.metadata.uid.clone().unwrap_or_default(), t); }
                                Err(e) => return Err(SessionError::Protocol(format!("bad assignment: {e}"))),
                            }
                        }
                        sequence = Some(d.sequence);
                        publish(assigned, &tasks);
                    }
                    Some(FromPlane::LogsRequest(req)) => {
                        let (span, stop) = (tracing::info_span!("logs", request = req.request_id), track(&mut requests, &session_token, req.request_id));
                        tokio::spawn(serve_logs(client.clone(), logs.clone(), req, tx.clone(), stop).instrument(span));
                    }
                    Some(FromPlane::StatsRequest(req)) => {
                        let (span, stop) = (tracing::info_span!("stats", request = req.request_id), track(&mut requests, &session_token, req.request_id));
                        tokio::spawn(serve_stats(client.clone(), logs.clone(), req, tx.clone(), stop).instrument(span));
                    }
                    Some(FromPlane::ExecRequest(req)) => {
                        let (span, stop) = (tracing::info_span!("exec", request = req.request_id), track(&mut requests, &session_token, req.request_id));
                        tokio::spawn(serve_exec(client.clone(), logs.clone(), req, tx.clone(), stop).instrument(span));
                    }
                    Some(FromPlane::CancelRequest(c)) => {
                        if let Some(t) = requests.remove(&c.request_id) {
                            t.cancel();
                        }
                    }
                    Some(FromPlane::Servers(s)) => {
                        // Join addresses mean something only to an agent
                        // holding a certificate.
                        if cfg.tls.is_some() && dispatchers.tell(s.dispatchers) {
                            tracing::info!(dispatchers = ?dispatchers.all(), "the control plane's servers");
                        }
                    }
                    Some(FromPlane::HeartbeatAck(_)) | None => {}
                }
            }
            r = reports.rx.recv() => {
                let Some(r) = r else { return Ok(()) };
                pending.push(to_update(&r));
                reports.latest.insert(r.uid.clone(), r);
            }
            _ = flush.tick(), if !pending.is_empty() => {
                let batch = TaskStatusBatch { updates: std::mem::take(&mut pending) };
                if tx.send(send(ToPlane::TaskStatus(batch))).await.is_err() {
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => {
                if last_word.elapsed() > SILENCE_LIMIT {
                    return Err(SessionError::Protocol(format!(
                        "the control plane has been silent for {} s",
                        SILENCE_LIMIT.as_secs()
                    )));
                }
                let hb = Heartbeat {
                    agent_time: None,
                    last_applied_sequence: sequence,
                    engine_unavailable: engine_state.borrow().clone(),
                };
                if tx.try_send(send(ToPlane::Heartbeat(hb))).is_err() {
                    return Err(SessionError::Protocol("outbound queue full".into()));
                }
            }
            // The engine went away or came back: say so at once.
            Ok(()) = engine_state.changed() => {
                let down = engine_state.borrow_and_update().clone();
                match (&down, &engine_reported) {
                    (Some(why), None) => tracing::warn!(%why, "engine unavailable; telling the control plane"),
                    (None, Some(_)) => tracing::info!("engine available again"),
                    _ => {}
                }
                engine_reported.clone_from(&down);
                let hb = Heartbeat { agent_time: None, last_applied_sequence: sequence, engine_unavailable: down };
                if tx.try_send(send(ToPlane::Heartbeat(hb))).is_err() {
                    return Err(SessionError::Protocol("outbound queue full".into()));
                }
            }
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

fn to_update(r: &StatusUpdate) -> TaskStatusUpdate {
    TaskStatusUpdate {
        task_uid: r.uid.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        status: Some(r.status.clone().into()),
    }
}

/// `heard` before any session.
const NEVER: u64 = u64::MAX;

/// How long a session may go without a word from the control plane (which
/// answers every heartbeat) before the agent gives up on it and reconnects.
const SILENCE_LIMIT: Duration = Duration::from_secs(5);

fn since_start() -> u64 {
    u64::try_from(SESSION_START.elapsed().as_millis()).unwrap_or(NEVER - 1)
}

/// Aborts a task when dropped (the watchdog ends with `run`).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `onHostLoss: Fence`: once the control plane has not been heard from for
/// [`shoal_crds::FENCE_TIMEOUT`] (it answers every heartbeat), the tasks
/// with `Fence` are shut down at once, so that the replacements the control
/// plane starts after its fence window never run beside them. The next
/// assignment set from the control plane replaces the fenced one.
async fn fence_watchdog(
    assigned: Arc<watch::Sender<Option<Assignments>>>,
    heard: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let timeout = u64::try_from(shoal_crds::FENCE_TIMEOUT.as_millis()).unwrap_or(3000);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let last = heard.load(Ordering::Relaxed);
        if last == NEVER || since_start().saturating_sub(last) < timeout {
            continue;
        }
        assigned.send_if_modified(|cur| {
            let Some(tasks) = cur else { return false };
            let due = tasks
                .iter()
                .filter(|t| t.fence && t.desired == shoal_crds::DesiredState::Running)
                .count();
            if due == 0 {
                return false;
            }
            tracing::warn!(
                tasks = due,
                silent_ms = since_start().saturating_sub(last),
                "no word from the control plane for the fence timeout: killing the tasks with onHostLoss Fence"
            );
            let fenced: Vec<AssignedTask> = tasks
                .iter()
                .map(|t| {
                    if t.fence && t.desired == shoal_crds::DesiredState::Running {
                        t.fenced()
                    } else {
                        t.clone()
                    }
                })
                .collect();
            *cur = Some(Arc::new(fenced));
            true
        });
    }
}

fn publish(assigned: &watch::Sender<Option<Assignments>>, tasks: &BTreeMap<String, Task>) {
    let set: Vec<AssignedTask> = tasks.values().map(AssignedTask::from_task).collect();
    assigned.send_replace(Some(Arc::new(set)));
}

/// A new data request's stop token, kept to cancel it on the control
/// plane's word (finished requests cancel their own token: forgotten here).
fn track(
    requests: &mut HashMap<u64, CancellationToken>,
    session: &CancellationToken,
    id: u64,
) -> CancellationToken {
    requests.retain(|_, t| !t.is_cancelled());
    let stop = session.child_token();
    requests.insert(id, stop.clone());
    stop
}

/// The answer to request `id` as log chunks: an empty first chunk (it
/// names the request even if nothing follows), then the events in chunks of
/// up to 64 as they come; an exit code ends it. The chunks come from a task
/// (a concrete channel stream, not a combinator, keeps a gRPC call's future
/// provably Send).
fn chunks(
    id: u64,
    events: BoxStream<'static, ExecEvent>,
    stop: CancellationToken,
) -> (
    tokio_stream::wrappers::ReceiverStream<LogChunk>,
    CancellationToken,
) {
    let (chunk_tx, chunk_rx) = mpsc::channel::<LogChunk>(16);
    // Cancelled once every chunk is handed over (or the answer stopped).
    let answered = CancellationToken::new();
    let done = answered.clone().drop_guard();
    let pump = async move {
        let _done = done;
        let chunk = |lines, exit_code| LogChunk {
            request_id: id,
            lines,
            exit_code,
        };
        if chunk_tx.send(chunk(vec![], None)).await.is_err() {
            return;
        }
        let mut events = events.ready_chunks(64);
        loop {
            let batch = tokio::select! {
                next = events.next() => match next {
                    Some(b) => b,
                    None => return,
                },
                () = stop.cancelled() => return,
            };
            let mut lines = Vec::new();
            let mut exit = None;
            for e in batch {
                match e {
                    ExecEvent::Line(l) => lines.push(l),
                    ExecEvent::Exit(code) => exit = Some(code),
                }
            }
            if chunk_tx.send(chunk(lines, exit)).await.is_err() || exit.is_some() {
                return;
            }
        }
    };
    tokio::spawn(pump.instrument(tracing::Span::current()));
    (
        tokio_stream::wrappers::ReceiverStream::new(chunk_rx),
        answered,
    )
}

/// Answers request `id` on a `SendLogs` stream (see [`chunks`]).
async fn send_chunked(
    mut client: DispatcherClient<tonic::transport::Channel>,
    id: u64,
    events: BoxStream<'static, ExecEvent>,
    stop: CancellationToken,
) {
    if let Err(e) = client.send_logs(chunks(id, events, stop).0).await {
        tracing::debug!(error = %e, "answer stream ended");
    }
}

/// Tells the control plane why request `id` cannot be served.
async fn refuse(control: &mpsc::Sender<AgentMessage>, id: u64, message: String) {
    let _ = control
        .send(AgentMessage {
            message: Some(ToPlane::RequestError(RequestError {
                request_id: id,
                message,
            })),
        })
        .await;
}

/// Runs an exec request's command and answers: an empty first chunk, the
/// output in chunks as it comes, the exit code on the last; on a `SendLogs`
/// stream, or, for an interactive command, on an `ExecSession` whose
/// answer is the command's input.
async fn serve_exec(
    mut client: DispatcherClient<tonic::transport::Channel>,
    source: Arc<dyn LogSource>,
    req: ExecRequest,
    control: mpsc::Sender<AgentMessage>,
    stop: CancellationToken,
) {
    let _done = stop.clone().drop_guard();
    let id = req.request_id;
    if !req.interactive {
        let events = match source.exec(&req, None).await {
            Ok(e) => e,
            Err(message) => return refuse(&control, id, message).await,
        };
        return send_chunked(client, id, events, stop).await;
    }
    // The input arrives once the session is open, after the command has
    // started: through a channel (whose wait slows the session's reader,
    // and so the sender, when the command reads slowly).
    let (input_tx, input_rx) = mpsc::channel::<crate::engine::ExecInput>(16);
    let input = tokio_stream::wrappers::ReceiverStream::new(input_rx).boxed();
    let events = match source.exec(&req, Some(input)).await {
        Ok(e) => e,
        Err(message) => return refuse(&control, id, message).await,
    };
    let (output, answered) = chunks(id, events, stop.clone());
    let mut inbound = match client.exec_session(output).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::debug!(error = %e, "exec session refused");
            return;
        }
    };
    loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            () = stop.cancelled() => return,
        };
        let input = match next {
            Ok(Some(i)) => i,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "exec session ended");
                break;
            }
        };
        if let Some(i) = exec_input(input)
            && input_tx.send(i).await.is_err()
        {
            break;
        }
    }
    // The input has ended (all of it given, as by a POST with its standard
    // input); the output goes on to the command's end, unless the request
    // is cancelled.
    drop(input_tx);
    tokio::select! {
        () = answered.cancelled() => {}
        () = stop.cancelled() => {}
    }
}

/// The engine's form of an input message (`None`: empty or unknown).
fn exec_input(i: ExecInput) -> Option<crate::engine::ExecInput> {
    use crate::engine::ExecInput as E;
    use shoal_proto::v1::exec_input::Input;
    match i.input? {
        Input::Stdin(b) => Some(E::Stdin(b)),
        Input::CloseStdin(_) => Some(E::Close),
        Input::Resize(s) => Some(E::Resize(term_size(s))),
    }
}

/// A terminal size from the wire, clamped to what the engine takes.
fn term_size(s: shoal_proto::TerminalSize) -> crate::engine::TermSize {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    crate::engine::TermSize {
        cols: clamp(s.cols),
        rows: clamp(s.rows),
    }
}

/// Answers a stats request on a `SendStats` stream: one chunk of samples,
/// or (streamed) one every [`STATS_EVERY`] until cancelled.
async fn serve_stats(
    mut client: DispatcherClient<tonic::transport::Channel>,
    source: Arc<dyn LogSource>,
    req: StatsRequest,
    control: mpsc::Sender<AgentMessage>,
    stop: CancellationToken,
) {
    let _done = stop.clone().drop_guard();
    let id = req.request_id;
    let first = match source.stats(&req.task_uids).await {
        Ok(s) => s,
        Err(message) => return refuse(&control, id, message).await,
    };
    let (chunk_tx, chunk_rx) = mpsc::channel::<StatsChunk>(4);
    let pump = async move {
        let mut samples = first;
        loop {
            let chunk = StatsChunk {
                request_id: id,
                samples: std::mem::take(&mut samples),
            };
            if chunk_tx.send(chunk).await.is_err() || !req.stream {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(STATS_EVERY) => {}
                () = stop.cancelled() => return,
            }
            match source.stats(&req.task_uids).await {
                Ok(s) => samples = s,
                Err(e) => {
                    tracing::debug!(error = %e, "stats ended");
                    return;
                }
            }
        }
    };
    tokio::spawn(pump.instrument(tracing::Span::current()));
    let stream = tokio_stream::wrappers::ReceiverStream::new(chunk_rx);
    if let Err(e) = client.send_stats(stream).await {
        tracing::debug!(error = %e, "stats stream ended");
    }
}

async fn serve_logs(
    client: DispatcherClient<tonic::transport::Channel>,
    source: Arc<dyn LogSource>,
    req: LogsRequest,
    control: mpsc::Sender<AgentMessage>,
    stop: CancellationToken,
) {
    // However this ends, the session then forgets the request, and a pump
    // still waiting for a line stops.
    let _done = stop.clone().drop_guard();
    let id = req.request_id;
    let lines = match source.logs(&req).await {
        Ok(l) => l,
        Err(message) => return refuse(&control, id, message).await,
    };
    send_chunked(client, id, lines.map(ExecEvent::Line).boxed(), stop).await;
}

/// Logs read from the local engine: the container of the task with the
/// requested uid (of this agent's cluster), stdout and stderr with the
/// engine's timestamps, from `since` (exact to the nanosecond) and the last
/// `tail_lines`. A followed stream ends when the container stops; following
/// a task across restarts is the reader's part (it asks again from the last
/// time it saw).
#[derive(Debug)]
pub struct EngineLogs {
    /// The engine.
    pub engine: Arc<dyn crate::ContainerEngine>,
    /// This agent's cluster id.
    pub cluster_id: String,
    /// Whether the control plane may run commands in this host's containers
    /// (`shoal exec`); the host's own choice (`shoal agent --no-exec`).
    pub exec_allowed: bool,
}

#[async_trait::async_trait]
impl LogSource for EngineLogs {
    async fn logs(&self, req: &LogsRequest) -> Result<BoxStream<'static, LogLine>, String> {
        let filter = [
            (crate::labels::CLUSTER.to_string(), self.cluster_id.clone()),
            (crate::labels::TASK_UID.to_string(), req.task_uid.clone()),
        ];
        let found = self.engine.list(&filter).await.map_err(|e| e.to_string())?;
        let Some(c) = found.first() else {
            return Err(format!(
                "no container for task {} on this host",
                req.task_uid
            ));
        };
        let opts = crate::engine::LogStreamOptions {
            follow: req.follow,
            tail: req.tail_lines.map(|n| n as usize),
            since: req
                .since
                .as_ref()
                .and_then(|t| shoal_proto::convert::timestamp_to_jiff(t, "since").ok())
                .map(std::time::SystemTime::from),
        };
        let with_time = req.timestamps;
        let lines = self
            .engine
            .log_stream(&c.id, &opts)
            // An engine error mid-stream ends the stream; the reader sees
            // the end and may ask again.
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(move |r| {
                futures::future::ready(r.ok().map(|e| LogLine {
                    time: if with_time {
                        e.time
                            .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
                            .map(shoal_proto::convert::timestamp_from_jiff)
                    } else {
                        None
                    },
                    stream: match e.origin {
                        crate::engine::LogOrigin::Stdout => LogStream::Stdout as i32,
                        crate::engine::LogOrigin::Stderr => LogStream::Stderr as i32,
                        crate::engine::LogOrigin::Console => LogStream::Unspecified as i32,
                    },
                    data: e.data,
                }))
            });
        Ok(lines.boxed())
    }

    async fn exec(
        &self,
        req: &ExecRequest,
        input: Option<BoxStream<'static, crate::engine::ExecInput>>,
    ) -> Result<BoxStream<'static, ExecEvent>, String> {
        if !self.exec_allowed {
            return Err(
                "this host runs no commands for the control plane (its agent was started with --no-exec)"
                    .into(),
            );
        }
        if req.command.is_empty() {
            return Err("no command to run".into());
        }
        let filter = [
            (crate::labels::CLUSTER.to_string(), self.cluster_id.clone()),
            (crate::labels::TASK_UID.to_string(), req.task_uid.clone()),
        ];
        let found = self.engine.list(&filter).await.map_err(|e| e.to_string())?;
        let Some(c) = found.first() else {
            return Err(format!(
                "no container for task {} on this host",
                req.task_uid
            ));
        };
        let info = self
            .engine
            .inspect(&c.id)
            .await
            .map_err(|e| e.to_string())?;
        if info.state != crate::engine::RunState::Running {
            return Err(format!(
                "the container of task {} is not running ({:?})",
                req.task_uid, info.state
            ));
        }
        // Not interactive: the request's bytes, if any, are all its input.
        let input = input.or_else(|| {
            (!req.stdin.is_empty()).then(|| {
                use crate::engine::ExecInput as E;
                futures::stream::iter([E::Stdin(req.stdin.clone()), E::Close]).boxed()
            })
        });
        let spec = crate::engine::ExecSpec {
            command: req.command.clone(),
            tty: req.tty,
            size: req.size.map(term_size),
            input,
        };
        let events = self.engine.exec(&c.id, spec).map(|r| match r {
            Ok(crate::engine::ExecOutput::Output(e)) => ExecEvent::Line(LogLine {
                time: None,
                stream: match e.origin {
                    crate::engine::LogOrigin::Stdout => LogStream::Stdout as i32,
                    crate::engine::LogOrigin::Stderr => LogStream::Stderr as i32,
                    crate::engine::LogOrigin::Console => LogStream::Unspecified as i32,
                },
                data: e.data,
            }),
            Ok(crate::engine::ExecOutput::Exit(code)) => ExecEvent::Exit(code),
            // The engine failed mid-way: say so, as a command would.
            Err(e) => ExecEvent::Line(LogLine {
                time: None,
                stream: LogStream::Stderr as i32,
                data: format!("shoal: {e}\n").into_bytes(),
            }),
        });
        Ok(events.boxed())
    }

    async fn stats(&self, task_uids: &[String]) -> Result<Vec<StatsSample>, String> {
        let filter = [(crate::labels::CLUSTER.to_string(), self.cluster_id.clone())];
        let found = self.engine.list(&filter).await.map_err(|e| e.to_string())?;
        let wanted: Vec<(String, String)> = found
            .into_iter()
            .filter_map(|c| {
                let uid = c.labels.get(crate::labels::TASK_UID)?.clone();
                (task_uids.is_empty() || task_uids.contains(&uid)).then_some((uid, c.id))
            })
            .collect();
        // The engine takes about a second per sample (its two readings):
        // all containers at once. A container not running has nothing to
        // measure.
        let samples = futures::future::join_all(wanted.into_iter().map(|(uid, id)| async move {
            let info = self.engine.inspect(&id).await.ok()?;
            if info.state != crate::engine::RunState::Running {
                return None;
            }
            let s = self.engine.stats(&id).await.ok()?;
            Some(StatsSample {
                task_uid: uid,
                time: k8s_openapi::jiff::Timestamp::try_from(std::time::SystemTime::now())
                    .ok()
                    .map(shoal_proto::convert::timestamp_from_jiff),
                cpu_usage_ns: s.cpu_total_ns,
                memory_bytes: s.memory_bytes,
                // The engine reports the host's memory when unlimited.
                memory_limit_bytes: (s.memory_limit_bytes > 0).then_some(s.memory_limit_bytes),
                cpu_millicores: s.cpu_millicores,
            })
        }))
        .await;
        Ok(samples.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_host_started_with_no_exec_refuses_commands() {
        let engine = Arc::new(crate::fake::FakeEngine::new());
        let req = ExecRequest {
            request_id: 1,
            task_uid: "uid-1".into(),
            command: vec!["true".into()],
            ..Default::default()
        };
        let refusing = EngineLogs {
            engine: engine.clone(),
            cluster_id: "c0ffee".into(),
            exec_allowed: false,
        };
        let Err(e) = refusing.exec(&req, None).await else {
            panic!("a --no-exec host ran a command")
        };
        assert!(e.contains("--no-exec"), "{e}");
        let allowing = EngineLogs {
            exec_allowed: true,
            ..refusing
        };
        // Allowed, it looks for the task's container (the fake has none).
        let Err(e) = allowing.exec(&req, None).await else {
            panic!("a command ran without a container")
        };
        assert!(e.contains("no container for task uid-1"), "{e}");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Dials `attempts` times, each failing except those listed in `lived`:
    /// the endpoint of each attempt and the wait after it.
    fn trace(r: &mut Rotation, attempts: usize, lived: &[usize]) -> Vec<(usize, Duration)> {
        (0..attempts)
            .map(|i| {
                let at = r.current();
                (at, r.next(lived.contains(&i)))
            })
            .collect()
    }

    #[test]
    fn endpoints_are_dialled_in_turn_with_backoff_only_after_a_failed_round() {
        let mut r = Rotation::new(3, Duration::from_secs(5));
        let z = Duration::ZERO;
        assert_eq!(
            trace(&mut r, 9, &[]),
            [
                (0, z),
                (1, z),
                (2, ms(100)),
                (0, z),
                (1, z),
                (2, ms(200)),
                (0, z),
                (1, z),
                (2, ms(400)),
            ]
        );
    }

    #[test]
    fn a_session_that_lived_moves_on_at_once_and_resets_the_backoff() {
        let mut r = Rotation::new(3, Duration::from_secs(5));
        let z = Duration::ZERO;
        // A leader change: the session on 1 ends, 2 is tried at once, and
        // the round (2, 0) fails only back on 1.
        assert_eq!(
            trace(&mut r, 9, &[4]),
            [
                (0, z),
                (1, z),
                (2, ms(100)),
                (0, z),
                (1, z), // lived
                (2, z),
                (0, z),
                (1, ms(100)),
                (2, z),
            ]
        );
    }

    #[test]
    fn one_endpoint_keeps_the_plain_backoff() {
        let mut r = Rotation::new(1, ms(300));
        assert_eq!(
            trace(&mut r, 6, &[3]),
            [
                (0, ms(100)),
                (0, ms(200)),
                (0, ms(300)),
                (0, Duration::ZERO),
                (0, ms(100)),
                (0, ms(200)),
            ]
        );
        // No endpoint at all still names one (run refuses that case).
        assert_eq!(Rotation::new(0, ms(300)).current(), 0);
    }
}
