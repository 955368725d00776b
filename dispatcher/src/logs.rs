//! Log and stats requests: the requester gets a channel; the request goes to
//! the task's agent on its session; the agent answers on a separate
//! `SendLogs`/`SendStats` stream whose chunks carry the request id, and the
//! dispatcher forwards them.

use futures::stream::BoxStream;
use shoal_crds::Task;
use shoal_proto::v1::control_message::Message as ToAgent;
use shoal_proto::{
    CancelRequest, ControlMessage, ExecInput, ExecRequest, LogChunk, LogsRequest, StatsChunk,
    StatsRequest, TerminalSize,
};
use tokio::sync::mpsc;

use crate::{DispatchError, Dispatcher};

/// A chunk of answer data, or the agent's refusal.
#[derive(Debug, Clone)]
pub enum DataChunk {
    /// Log lines.
    Logs(LogChunk),
    /// Stats samples.
    Stats(StatsChunk),
    /// The agent could not serve the request.
    Error(String),
}

/// What logs to read.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep streaming new lines.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u32>,
    /// Only lines after this time.
    pub since: Option<prost_types::Timestamp>,
    /// Ask for timestamps.
    pub timestamps: bool,
}

pub(crate) struct Route {
    pub(crate) tx: mpsc::Sender<DataChunk>,
    pub(crate) host: String,
    /// An interactive command's input, until its agent opens the session
    /// that carries it.
    pub(crate) input: Option<BoxStream<'static, ExecInput>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("host", &self.host)
            .field("input", &self.input.is_some())
            .finish_non_exhaustive()
    }
}

/// A command to run in a task's container.
#[derive(Default)]
pub struct ExecOptions {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Not interactive: all of its standard input (empty: none).
    pub stdin: Vec<u8>,
    /// Give it a terminal.
    pub tty: bool,
    /// The terminal's size at the start.
    pub size: Option<TerminalSize>,
    /// Interactive: its input as it comes (standard input, its end,
    /// terminal sizes); its agent answers on an `ExecSession`.
    pub input: Option<BoxStream<'static, ExecInput>>,
}

impl std::fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecOptions")
            .field("command", &self.command)
            .field("tty", &self.tty)
            .field("size", &self.size)
            .field("input", &self.input.is_some())
            .finish_non_exhaustive()
    }
}

/// Answer chunks that may wait for a slow reader before the request is
/// cancelled.
const ROUTE_BUFFER: usize = 256;

/// Answer chunks of a command on an exec session that may wait for a slow
/// reader: then the command waits (each chunk may hold up to 2 MiB).
const EXEC_BUFFER: usize = 8;

/// The answer to a log or stats request. Dropping it cancels the request
/// on the agent at once (a followed log of a quiet container would
/// otherwise stay open there until the container stops).
#[derive(Debug)]
pub struct Answer {
    rx: mpsc::Receiver<DataChunk>,
    id: u64,
    dispatcher: Dispatcher,
}

impl Answer {
    /// The next chunk; `None` when the agent is done (or gone).
    pub async fn recv(&mut self) -> Option<DataChunk> {
        self.rx.recv().await
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // Nothing to do if the agent already finished the request.
        self.dispatcher.cancel(self.id);
    }
}

/// The host a task is placed on.
fn host_of(task: &Task) -> Result<String, DispatchError> {
    task.spec
        .host_name
        .clone()
        .ok_or_else(|| DispatchError::NotPlaced(task.metadata.name.clone().unwrap_or_default()))
}

impl Dispatcher {
    fn open_route(
        &self,
        host: &str,
        input: Option<BoxStream<'static, ExecInput>>,
    ) -> Result<(u64, mpsc::Receiver<DataChunk>, crate::ControlTx), DispatchError> {
        let (tx, rx) = mpsc::channel(if input.is_some() {
            EXEC_BUFFER
        } else {
            ROUTE_BUFFER
        });
        let mut sh = self.shared();
        let control = sh
            .hosts
            .get(host)
            .and_then(|h| h.session.as_ref())
            .map(|s| s.tx.clone())
            .ok_or_else(|| DispatchError::NotConnected(host.to_string()))?;
        sh.next_id += 1;
        let id = sh.next_id;
        sh.routes.insert(
            id,
            Route {
                tx,
                host: host.to_string(),
                input,
            },
        );
        Ok((id, rx, control))
    }

    /// Asks the agent of the task's host for its logs. The answer yields
    /// chunks until the agent is done; dropping it cancels the request.
    pub async fn logs(&self, task: &Task, opts: LogOptions) -> Result<Answer, DispatchError> {
        let host = host_of(task)?;
        let task_uid = task.metadata.uid.clone().unwrap_or_default();
        self.ask(&host, |request_id| {
            ToAgent::LogsRequest(LogsRequest {
                request_id,
                task_uid,
                follow: opts.follow,
                tail_lines: opts.tail_lines,
                since: opts.since,
                timestamps: opts.timestamps,
            })
        })
        .await
    }

    /// Asks the agent of the task's host to run a command in its running
    /// container. The answer yields log chunks of the output, the last one
    /// with the exit code; dropping it stops the forwarding and, for an
    /// interactive command, ends its input (the command itself runs to its
    /// end: the engine cannot stop it).
    pub async fn exec(&self, task: &Task, opts: ExecOptions) -> Result<Answer, DispatchError> {
        let host = host_of(task)?;
        let task_uid = task.metadata.uid.clone().unwrap_or_default();
        let interactive = opts.input.is_some();
        self.ask_with(&host, opts.input, |request_id| {
            ToAgent::ExecRequest(ExecRequest {
                request_id,
                task_uid,
                command: opts.command,
                stdin: opts.stdin,
                tty: opts.tty,
                interactive,
                size: opts.size,
            })
        })
        .await
    }

    /// Sends the request `make` builds (given its id) to the agent of
    /// `host`; its answer.
    async fn ask(
        &self,
        host: &str,
        make: impl FnOnce(u64) -> ToAgent,
    ) -> Result<Answer, DispatchError> {
        self.ask_with(host, None, make).await
    }

    /// [`Self::ask`], with an interactive command's input.
    async fn ask_with(
        &self,
        host: &str,
        input: Option<BoxStream<'static, ExecInput>>,
        make: impl FnOnce(u64) -> ToAgent,
    ) -> Result<Answer, DispatchError> {
        let (id, rx, control) = self.open_route(host, input)?;
        if control
            .send(Ok(ControlMessage {
                message: Some(make(id)),
            }))
            .await
            .is_err()
        {
            self.finish_route(id);
            return Err(DispatchError::NotConnected(host.to_string()));
        }
        Ok(Answer {
            rx,
            id,
            dispatcher: self.clone(),
        })
    }

    /// Asks the agent of `host` for stats of these tasks.
    pub async fn stats(
        &self,
        host: &str,
        task_uids: Vec<String>,
        stream: bool,
    ) -> Result<Answer, DispatchError> {
        self.ask(host, |request_id| {
            ToAgent::StatsRequest(StatsRequest {
                request_id,
                task_uids,
                stream,
            })
        })
        .await
    }

    /// Forwards a chunk from `caller` (the host proven by its certificate;
    /// `None` on the loopback listener); false if nobody wants it any more
    /// (the request is then cancelled on the agent) or if the request went
    /// to another host (whose answers are not the caller's to give).
    pub(crate) fn route(&self, caller: Option<&str>, id: u64, chunk: DataChunk) -> bool {
        let tx = {
            let sh = self.shared();
            match sh.routes.get(&id) {
                Some(r) if caller.is_some_and(|c| c != r.host) => return false,
                r => r.map(|r| r.tx.clone()),
            }
        };
        let ok = tx.is_some_and(|tx| tx.try_send(chunk).is_ok());
        if !ok {
            self.cancel(id);
        }
        ok
    }

    /// The requester's channel and the input of interactive command `id`,
    /// for the session its agent (`caller`, as for [`Self::route`]) opens.
    pub(crate) fn exec_session(
        &self,
        caller: Option<&str>,
        id: u64,
    ) -> Result<(mpsc::Sender<DataChunk>, BoxStream<'static, ExecInput>), tonic::Status> {
        let mut sh = self.shared();
        let r = sh
            .routes
            .get_mut(&id)
            .ok_or_else(|| tonic::Status::not_found(format!("no request {id}")))?;
        if caller.is_some_and(|c| c != r.host) {
            return Err(tonic::Status::permission_denied(format!(
                "request {id} went to another host"
            )));
        }
        let input = r.input.take().ok_or_else(|| {
            tonic::Status::failed_precondition(format!(
                "request {id} is not an interactive command, or has its session already"
            ))
        })?;
        Ok((r.tx.clone(), input))
    }

    /// The agent finished answering.
    pub(crate) fn finish_route(&self, id: u64) {
        self.shared().routes.remove(&id);
    }

    pub(crate) fn fail_route(&self, id: u64, message: String) {
        if let Some(r) = self.shared().routes.remove(&id) {
            let _ = r.tx.try_send(DataChunk::Error(message));
        }
    }

    pub(crate) fn cancel(&self, id: u64) {
        let mut sh = self.shared();
        if let Some(r) = sh.routes.remove(&id)
            && let Some(s) = sh.hosts.get(&r.host).and_then(|h| h.session.as_ref())
        {
            let _ = s.tx.try_send(Ok(ControlMessage {
                message: Some(ToAgent::CancelRequest(CancelRequest { request_id: id })),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use futures::StreamExt;

    fn dispatcher_with_route(
        input: Option<BoxStream<'static, ExecInput>>,
    ) -> (Dispatcher, mpsc::Receiver<DataChunk>) {
        let d = Dispatcher::new(
            std::sync::Arc::new(shoal_store::MemStore::new()),
            crate::DispatcherConfig::default(),
            tokio_util::sync::CancellationToken::new(),
        );
        let (tx, rx) = mpsc::channel(4);
        d.shared().routes.insert(
            7,
            Route {
                tx,
                host: "node-a".into(),
                input,
            },
        );
        (d, rx)
    }

    /// Why a session is refused (it must be).
    fn refused(d: &Dispatcher, caller: &str, id: u64) -> tonic::Code {
        match d.exec_session(Some(caller), id) {
            Ok(_) => panic!("{caller} got the session of request {id}"),
            Err(e) => e.code(),
        }
    }

    fn chunk() -> DataChunk {
        DataChunk::Logs(LogChunk {
            request_id: 7,
            ..Default::default()
        })
    }

    #[test]
    fn only_the_asked_host_answers_a_request() {
        let (d, mut rx) = dispatcher_with_route(None);
        assert!(
            !d.route(Some("node-b"), 7, chunk()),
            "another host's answer"
        );
        assert!(rx.try_recv().is_err(), "nothing reached the requester");
        assert!(d.route(Some("node-a"), 7, chunk()));
        assert!(matches!(rx.try_recv(), Ok(DataChunk::Logs(_))));
        // The loopback listener proves no host: any answer is taken.
        assert!(d.route(None, 7, chunk()));
        assert!(matches!(rx.try_recv(), Ok(DataChunk::Logs(_))));
        // Not an interactive command: no session for it.
        assert_eq!(refused(&d, "node-a", 7), tonic::Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn an_exec_session_goes_to_its_host_once() {
        let input = futures::stream::iter([ExecInput::default()]).boxed();
        let (d, _rx) = dispatcher_with_route(Some(input));
        assert_eq!(refused(&d, "node-b", 7), tonic::Code::PermissionDenied);
        assert_eq!(refused(&d, "node-a", 8), tonic::Code::NotFound);
        let Ok((_tx, input)) = d.exec_session(Some("node-a"), 7) else {
            panic!("its host was refused")
        };
        assert_eq!(input.collect::<Vec<_>>().await.len(), 1);
        assert_eq!(refused(&d, "node-a", 7), tonic::Code::FailedPrecondition);
    }
}
