//! Task logs for the API server, read through the dispatcher: the bridge
//! between the API's `tasks/NAME/log` and the agents' log streams.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use shoal_apiserver::exec::{ExecCall, ExecEvent, ExecInput, TaskExec, TermSize};
use shoal_apiserver::logs::{LogError, LogLine, LogRequest, TaskLogs};
use shoal_apiserver::stats::{StatsSample, TaskStats};
use shoal_crds::Task;
use shoal_dispatcher::peers::PeerLogs;
use shoal_dispatcher::{DataChunk, DispatchError, Dispatcher, ExecOptions, LogOptions};
use shoal_proto::control_v1::raft_peer_client::RaftPeerClient;
use shoal_proto::control_v1::{
    PeerExecInput, PeerExecOutput, PeerExecRequest, PeerLogLine, PeerLogLines, PeerLogsRequest,
    PeerStats, PeerStatsRequest,
};
use shoal_proto::convert::{timestamp_from_jiff, timestamp_to_jiff};
use shoal_store::raft::RaftStore;
use shoal_store::{ClusterStore, typed};
use tonic::transport::{ClientTlsConfig, Endpoint};
use tracing::Instrument;

/// How long the task's agent may take to start answering.
const FIRST_ANSWER: Duration = Duration::from_secs(10);

/// [`TaskLogs`] over the dispatcher of the moment; while another server of
/// a replicated control plane leads (no dispatcher here), through that
/// leader, if a route to it is given.
#[derive(Clone)]
pub struct DispatcherLogs {
    /// This server's dispatcher while it leads.
    pub current: tokio::sync::watch::Receiver<Option<Dispatcher>>,
    /// How to ask the leader otherwise.
    pub via_leader: Option<LeaderRoute>,
}

impl std::fmt::Debug for DispatcherLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherLogs").finish_non_exhaustive()
    }
}

/// The way to the leader's `TaskLogs` (its peer listener) from a server
/// that does not lead.
#[derive(Clone)]
pub struct LeaderRoute {
    /// This server's Raft node: who leads.
    pub raft: Arc<RaftStore>,
    /// The peers' `https://` addresses by node id.
    pub peers: BTreeMap<u64, String>,
    /// This server's peer TLS (client side).
    pub tls: ClientTlsConfig,
}

impl LeaderRoute {
    /// A channel to the leader's peer listener, and its address.
    async fn leader(&self) -> Result<(tonic::transport::Channel, String), LogError> {
        let status = self.raft.status();
        let leader = status.leader_id;
        // The servers given at start, and those added since.
        let added = status.peer_addresses;
        let url = added
            .get(&leader)
            .or_else(|| self.peers.get(&leader))
            .ok_or_else(|| {
                LogError::Unavailable("the control plane has no leader at the moment".into())
            })?;
        let unavailable = |e: String| LogError::Unavailable(format!("the leader at {url}: {e}"));
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| unavailable(e.to_string()))?
            .tls_config(self.tls.clone())
            .map_err(|e| unavailable(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok((channel, url.clone()))
    }

    /// A command run by the leader in the task's container.
    async fn exec(
        &self,
        task: &Task,
        call: ExecCall,
    ) -> Result<BoxStream<'static, ExecEvent>, LogError> {
        use shoal_proto::control_v1::peer_exec_input::Input;
        use shoal_proto::control_v1::peer_exec_output::Output;
        let (channel, url) = self.leader().await?;
        let start = PeerExecInput {
            input: Some(Input::Start(PeerExecRequest {
                namespace: task.metadata.namespace.clone().unwrap_or_default(),
                task: task.metadata.name.clone().unwrap_or_default(),
                command: call.command,
                tty: call.tty,
                interactive: call.input.is_some(),
                size: None,
            })),
        };
        // The request, then the input as it comes, through a channel (a
        // boxed stream makes the call's future not provably Send).
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let _ = tx.try_send(start);
        if let Some(mut input) = call.input {
            let forward = async move {
                loop {
                    let next = tokio::select! {
                        next = input.next() => next,
                        () = tx.closed() => return,
                    };
                    let Some(i) = next else { return };
                    if tx.send(peer_input(i)).await.is_err() {
                        return;
                    }
                }
            };
            tokio::spawn(forward.instrument(tracing::debug_span!("exec-input")));
        }
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut client = RaftPeerClient::new(channel);
        let out = client
            .task_exec(tonic::Request::new(outbound))
            .await
            .map_err(|s| peer_error(&url, &s))?
            .into_inner();
        Ok(out
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| {
                futures::future::ready(r.ok().and_then(|o| o.output).map(|o| match o {
                    Output::Stdout(b) => ExecEvent::Stdout(b),
                    Output::Stderr(b) => ExecEvent::Stderr(b),
                    Output::ExitCode(c) => ExecEvent::Exit(c),
                }))
            })
            .boxed())
    }

    /// A sample of the task's resource use, taken by the leader.
    async fn stats(&self, task: &Task) -> Result<StatsSample, LogError> {
        let (channel, url) = self.leader().await?;
        let request = PeerStatsRequest {
            namespace: task.metadata.namespace.clone().unwrap_or_default(),
            task: task.metadata.name.clone().unwrap_or_default(),
        };
        let s = RaftPeerClient::new(channel)
            .task_stats(request)
            .await
            .map_err(|s| peer_error(&url, &s))?
            .into_inner();
        Ok(sample_of(&shoal_proto::v1::StatsSample {
            task_uid: String::new(),
            time: s.time,
            cpu_usage_ns: 0,
            memory_bytes: s.memory_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            cpu_millicores: s.cpu_millicores,
        }))
    }

    /// The task's lines, read by the leader.
    async fn open(
        &self,
        task: &Task,
        req: &LogRequest,
    ) -> Result<BoxStream<'static, LogLine>, LogError> {
        let (channel, url) = self.leader().await?;
        let request = PeerLogsRequest {
            namespace: task.metadata.namespace.clone().unwrap_or_default(),
            task: task.metadata.name.clone().unwrap_or_default(),
            follow: req.follow,
            tail_lines: req.tail_lines,
            since: req
                .since
                .and_then(|t| jiff::Timestamp::try_from(t).ok())
                .map(timestamp_from_jiff),
        };
        let lines = RaftPeerClient::new(channel)
            .task_logs(request)
            .await
            .map_err(|s| peer_error(&url, &s))?
            .into_inner();
        Ok(lines
            .take_while(|r| futures::future::ready(r.is_ok()))
            .flat_map(|r| {
                let lines = r.map(|b| b.lines).unwrap_or_default();
                futures::stream::iter(lines.into_iter().map(|l| log_line(l.time.as_ref(), l.data)))
            })
            .boxed())
    }
}

/// The agent's first answer to `what` on `rx`: a chunk, or (as the API's
/// error) its refusal, its silence for `wait`, or its going away.
async fn first_answer(
    rx: &mut shoal_dispatcher::Answer,
    host: &str,
    what: &str,
    wait: Duration,
) -> Result<DataChunk, LogError> {
    match tokio::time::timeout(wait, rx.recv()).await {
        Err(_) => Err(LogError::Unavailable(format!(
            "host {host} did not answer {what} within {} s",
            wait.as_secs()
        ))),
        Ok(None) => Err(LogError::Unavailable(format!(
            "host {host} went away before answering {what}"
        ))),
        Ok(Some(DataChunk::Error(m))) if m.contains("disconnected") => {
            Err(LogError::Unavailable(m))
        }
        Ok(Some(DataChunk::Error(m))) => Err(LogError::BadRequest(m)),
        Ok(Some(chunk)) => Ok(chunk),
    }
}

/// The dispatcher's refusal as the API's error.
fn dispatch_error(e: DispatchError) -> LogError {
    match e {
        DispatchError::NotConnected(h) => LogError::Unavailable(format!(
            "host {h} cannot be reached: its agent is not connected"
        )),
        DispatchError::NotPlaced(n) => {
            LogError::BadRequest(format!("task {n} is not placed on a host yet"))
        }
        other => LogError::Unavailable(other.to_string()),
    }
}

/// The leader's answer as the API's error.
fn peer_error(url: &str, s: &tonic::Status) -> LogError {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            LogError::BadRequest(s.message().to_string())
        }
        _ => LogError::Unavailable(format!("the leader at {url}: {}", s.message())),
    }
}

/// The leader's side of [`LeaderRoute`]: a peer's `TaskLogs` call served
/// through this server's dispatcher.
pub struct LeaderLogs {
    /// The store, once open (the peer listener starts before it).
    pub store: Arc<std::sync::OnceLock<Arc<dyn ClusterStore>>>,
    /// This server's dispatcher while it leads.
    pub logs: DispatcherLogs,
}

impl LeaderLogs {
    /// The store (if open yet) and this server's own dispatcher route.
    fn parts(&self) -> (Option<Arc<dyn ClusterStore>>, DispatcherLogs) {
        let logs = DispatcherLogs {
            current: self.logs.current.clone(),
            via_leader: None,
        };
        (self.store.get().cloned(), logs)
    }
}

/// The task a peer asks about.
async fn peer_task(
    store: Option<Arc<dyn ClusterStore>>,
    namespace: &str,
    name: &str,
) -> Result<Task, tonic::Status> {
    let store = store.ok_or_else(|| tonic::Status::unavailable("the store is not open yet"))?;
    typed::get::<Task>(store.as_ref(), Some(namespace), name)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .ok_or_else(|| tonic::Status::not_found(format!("task {namespace}/{name} not found")))
}

/// The API's error as the peer call's.
fn peer_status(e: LogError) -> tonic::Status {
    match e {
        LogError::BadRequest(m) => tonic::Status::invalid_argument(m),
        LogError::Unavailable(m) => tonic::Status::unavailable(m),
    }
}

impl PeerLogs for LeaderLogs {
    fn open(
        &self,
        request: PeerLogsRequest,
    ) -> BoxFuture<'static, Result<shoal_dispatcher::peers::LogLines, tonic::Status>> {
        let (store, logs) = self.parts();
        Box::pin(async move {
            let task = peer_task(store, &request.namespace, &request.task).await?;
            let req = LogRequest {
                follow: request.follow,
                tail_lines: request.tail_lines,
                since: request
                    .since
                    .as_ref()
                    .and_then(|t| timestamp_to_jiff(t, "since").ok())
                    .map(SystemTime::from),
                timestamps: true,
            };
            let lines = logs.open(&task, req).await.map_err(peer_status)?;
            Ok(lines
                .ready_chunks(64)
                .map(|chunk| PeerLogLines {
                    lines: chunk
                        .into_iter()
                        .map(|l| PeerLogLine {
                            time: l
                                .time
                                .and_then(|t| jiff::Timestamp::try_from(t).ok())
                                .map(timestamp_from_jiff),
                            data: l.data,
                        })
                        .collect(),
                })
                .boxed())
        })
    }

    fn exec(
        &self,
        request: PeerExecRequest,
        input: Option<BoxStream<'static, PeerExecInput>>,
    ) -> BoxFuture<'static, Result<shoal_dispatcher::peers::ExecOutputs, tonic::Status>> {
        use shoal_proto::control_v1::peer_exec_output::Output;
        let (store, logs) = self.parts();
        Box::pin(async move {
            let task = peer_task(store, &request.namespace, &request.task).await?;
            let call = ExecCall {
                command: request.command,
                tty: request.tty,
                input: input.map(|i| {
                    i.filter_map(|m| futures::future::ready(input_of_peer(m)))
                        .boxed()
                }),
            };
            let events = logs.exec(&task, call).await.map_err(peer_status)?;
            Ok(events
                .map(|e| PeerExecOutput {
                    output: Some(match e {
                        ExecEvent::Stdout(b) => Output::Stdout(b),
                        ExecEvent::Stderr(b) => Output::Stderr(b),
                        ExecEvent::Exit(c) => Output::ExitCode(c),
                    }),
                })
                .boxed())
        })
    }

    fn stats(
        &self,
        request: PeerStatsRequest,
    ) -> BoxFuture<'static, Result<PeerStats, tonic::Status>> {
        let (store, logs) = self.parts();
        Box::pin(async move {
            let task = peer_task(store, &request.namespace, &request.task).await?;
            let s = logs.sample(&task).await.map_err(peer_status)?;
            Ok(PeerStats {
                time: jiff::Timestamp::try_from(s.time)
                    .ok()
                    .map(timestamp_from_jiff),
                cpu_millicores: s.cpu_millicores,
                memory_bytes: s.memory_bytes,
                memory_limit_bytes: s.memory_limit_bytes,
            })
        })
    }
}

/// An input message for the agent protocol.
fn agent_input(i: ExecInput) -> shoal_proto::ExecInput {
    use shoal_proto::v1::exec_input::Input;
    shoal_proto::ExecInput {
        input: Some(match i {
            ExecInput::Stdin(b) => Input::Stdin(b),
            ExecInput::Close => Input::CloseStdin(true),
            ExecInput::Resize(s) => Input::Resize(shoal_proto::TerminalSize {
                cols: s.cols.into(),
                rows: s.rows.into(),
            }),
        }),
    }
}

/// An input message for the leader.
fn peer_input(i: ExecInput) -> PeerExecInput {
    use shoal_proto::control_v1::peer_exec_input::Input;
    PeerExecInput {
        input: Some(match i {
            ExecInput::Stdin(b) => Input::Stdin(b),
            ExecInput::Close => Input::CloseStdin(true),
            ExecInput::Resize(s) => Input::Resize(shoal_proto::control_v1::TerminalSize {
                cols: s.cols.into(),
                rows: s.rows.into(),
            }),
        }),
    }
}

/// An input message from a server that does not lead (its first, the
/// request, is not input).
fn input_of_peer(m: PeerExecInput) -> Option<ExecInput> {
    use shoal_proto::control_v1::peer_exec_input::Input;
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    match m.input? {
        Input::Stdin(b) => Some(ExecInput::Stdin(b)),
        Input::CloseStdin(_) => Some(ExecInput::Close),
        Input::Resize(s) => Some(ExecInput::Resize(TermSize {
            cols: clamp(s.cols),
            rows: clamp(s.rows),
        })),
        Input::Start(_) => None,
    }
}

/// A line as the API gives it, from its time and bytes on the wire.
fn log_line(time: Option<&prost_types::Timestamp>, data: Vec<u8>) -> LogLine {
    LogLine {
        time: time
            .and_then(|t| timestamp_to_jiff(t, "time").ok())
            .map(SystemTime::from),
        data,
    }
}

fn lines_of(chunk: DataChunk) -> Vec<LogLine> {
    match chunk {
        DataChunk::Logs(c) => c
            .lines
            .into_iter()
            .map(|l| log_line(l.time.as_ref(), l.data))
            .collect(),
        DataChunk::Error(message) => {
            tracing::debug!(%message, "log stream ended by the agent");
            Vec::new()
        }
        DataChunk::Stats(_) => Vec::new(),
    }
}

impl TaskLogs for DispatcherLogs {
    fn open<'a>(
        &'a self,
        task: &'a Task,
        req: LogRequest,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogLine>, LogError>> {
        Box::pin(async move {
            let host = task.spec.host_name.clone().unwrap_or_default();
            let opts = LogOptions {
                follow: req.follow,
                tail_lines: req.tail_lines,
                since: req
                    .since
                    .and_then(|t| jiff::Timestamp::try_from(t).ok())
                    .map(timestamp_from_jiff),
                // Always: the API adds them when asked.
                timestamps: true,
            };
            let Some(dispatcher) = self.current.borrow().clone() else {
                return match &self.via_leader {
                    Some(route) => route.open(task, &req).await,
                    None => Err(LogError::Unavailable(
                        "this server does not lead the control plane: read logs through the leader's API".into(),
                    )),
                };
            };
            let mut rx = dispatcher.logs(task, opts).await.map_err(dispatch_error)?;
            // The agent answers first with an empty chunk or its refusal.
            let first =
                lines_of(first_answer(&mut rx, &host, "the log request", FIRST_ANSWER).await?);
            // The answer lives in the stream: dropping the stream (the
            // reader went away) cancels the request on the agent.
            let rest = futures::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((futures::stream::iter(lines_of(chunk)), rx))
            })
            .flatten();
            Ok(futures::stream::iter(first).chain(rest).boxed())
        })
    }
}

/// How long the task's agent may take to measure (the engine's two
/// readings take about a second).
const STATS_ANSWER: Duration = Duration::from_secs(10);

impl TaskStats for DispatcherLogs {
    fn sample<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<StatsSample, LogError>> {
        Box::pin(async move {
            let host = task.spec.host_name.clone().unwrap_or_default();
            let uid = task.metadata.uid.clone().unwrap_or_default();
            let name = task.metadata.name.clone().unwrap_or_default();
            let Some(dispatcher) = self.current.borrow().clone() else {
                return match &self.via_leader {
                    Some(route) => route.stats(task).await,
                    None => Err(LogError::Unavailable(
                        "this server does not lead the control plane: read stats through the leader's API".into(),
                    )),
                };
            };
            let mut rx = dispatcher
                .stats(&host, vec![uid.clone()], false)
                .await
                .map_err(dispatch_error)?;
            match first_answer(&mut rx, &host, "the stats request", STATS_ANSWER).await? {
                DataChunk::Stats(chunk) => chunk
                    .samples
                    .into_iter()
                    .find(|s| s.task_uid == uid)
                    .map(|s| sample_of(&s))
                    .ok_or_else(|| {
                        LogError::BadRequest(format!(
                            "task {name} has no running container on host {host}"
                        ))
                    }),
                _ => Err(LogError::Unavailable(format!(
                    "host {host} answered the stats request with something else"
                ))),
            }
        })
    }
}

/// A sample as the API gives it, from the agent's (or the leader's, which
/// carries no task uid or CPU time).
fn sample_of(s: &shoal_proto::v1::StatsSample) -> StatsSample {
    StatsSample {
        time: s
            .time
            .as_ref()
            .and_then(|t| timestamp_to_jiff(t, "time").ok())
            .map_or_else(SystemTime::now, SystemTime::from),
        cpu_millicores: s.cpu_millicores,
        memory_bytes: s.memory_bytes,
        memory_limit_bytes: s.memory_limit_bytes,
    }
}

impl TaskExec for DispatcherLogs {
    fn exec<'a>(
        &'a self,
        task: &'a Task,
        call: ExecCall,
    ) -> BoxFuture<'a, Result<BoxStream<'static, ExecEvent>, LogError>> {
        Box::pin(async move {
            let host = task.spec.host_name.clone().unwrap_or_default();
            let Some(dispatcher) = self.current.borrow().clone() else {
                return match &self.via_leader {
                    Some(route) => route.exec(task, call).await,
                    None => Err(LogError::Unavailable(
                        "this server does not lead the control plane: run commands through the leader's API".into(),
                    )),
                };
            };
            // Always on an exec session, for its flow control: a command
            // without input gets its standard input closed at once.
            let input = call
                .input
                .unwrap_or_else(|| futures::stream::empty().boxed());
            let opts = ExecOptions {
                command: call.command,
                tty: call.tty,
                input: Some(input.map(agent_input).boxed()),
                ..ExecOptions::default()
            };
            let mut rx = dispatcher.exec(task, opts).await.map_err(dispatch_error)?;
            // The agent answers first with an empty chunk or its refusal.
            first_answer(&mut rx, &host, "the command", FIRST_ANSWER).await?;
            // The answer lives in the stream: dropping it (the caller went
            // away) stops the forwarding.
            let events = futures::stream::unfold(rx, |mut rx| async move {
                let events = match rx.recv().await? {
                    DataChunk::Logs(c) => {
                        let mut out: Vec<ExecEvent> = c
                            .lines
                            .into_iter()
                            .map(|l| {
                                if l.stream == shoal_proto::v1::LogStream::Stderr as i32 {
                                    ExecEvent::Stderr(l.data)
                                } else {
                                    ExecEvent::Stdout(l.data)
                                }
                            })
                            .collect();
                        out.extend(c.exit_code.map(ExecEvent::Exit));
                        out
                    }
                    DataChunk::Error(m) => {
                        vec![ExecEvent::Stderr(format!("shoal: {m}\n").into_bytes())]
                    }
                    DataChunk::Stats(_) => Vec::new(),
                };
                Some((futures::stream::iter(events), rx))
            })
            .flatten();
            Ok(events.boxed())
        })
    }
}
