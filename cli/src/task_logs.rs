//! Task logs for the API server, read through the dispatcher: the bridge
//! between the API's `tasks/NAME/log` and the agents' log streams.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use shoal_apiserver::logs::{LogError, LogLine, LogRequest, TaskLogs};
use shoal_crds::Task;
use shoal_dispatcher::{DataChunk, DispatchError, Dispatcher, LogOptions};
use shoal_proto::convert::{timestamp_from_jiff, timestamp_to_jiff};

/// How long the task's agent may take to start answering.
const FIRST_ANSWER: Duration = Duration::from_secs(10);

/// [`TaskLogs`] over the dispatcher of the moment (`None` while another
/// server of a replicated control plane leads).
#[derive(Debug, Clone)]
pub struct DispatcherLogs(pub tokio::sync::watch::Receiver<Option<Dispatcher>>);

fn lines_of(chunk: DataChunk) -> Vec<LogLine> {
    match chunk {
        DataChunk::Logs(c) => c
            .lines
            .into_iter()
            .map(|l| LogLine {
                time: l
                    .time
                    .as_ref()
                    .and_then(|t| timestamp_to_jiff(t, "time").ok())
                    .map(SystemTime::from),
                data: l.data,
            })
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
            let Some(dispatcher) = self.0.borrow().clone() else {
                return Err(LogError::Unavailable(
                    "this server does not lead the control plane: read logs through the leader's API".into(),
                ));
            };
            let mut rx = dispatcher.logs(task, opts).await.map_err(|e| match e {
                DispatchError::NotConnected(h) => LogError::Unavailable(format!(
                    "host {h} cannot be reached: its agent is not connected"
                )),
                DispatchError::NotPlaced(n) => {
                    LogError::BadRequest(format!("task {n} is not placed on a host yet"))
                }
                other => LogError::Unavailable(other.to_string()),
            })?;
            // The agent answers first with an empty chunk or its refusal.
            let first = match tokio::time::timeout(FIRST_ANSWER, rx.recv()).await {
                Err(_) => {
                    return Err(LogError::Unavailable(format!(
                        "host {host} did not answer the log request within {} s",
                        FIRST_ANSWER.as_secs()
                    )));
                }
                Ok(None) => {
                    return Err(LogError::Unavailable(format!(
                        "host {host} went away before answering"
                    )));
                }
                Ok(Some(DataChunk::Error(m))) => {
                    return Err(if m.contains("disconnected") {
                        LogError::Unavailable(m)
                    } else {
                        LogError::BadRequest(m)
                    });
                }
                Ok(Some(chunk)) => lines_of(chunk),
            };
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
