//! The `log` subresource of tasks: `GET .../namespaces/NS/tasks/NAME/log`,
//! the container output of a task as plain text, like a pod's `log`.
//!
//! Query parameters (those of Kubernetes' `PodLogOptions` that apply):
//! `follow`, `tailLines`, `sinceSeconds` or `sinceTime` (RFC 3339), and
//! `timestamps` (each line starts with its RFC 3339 time and a space). The
//! lines come from the task's host through a [`TaskLogs`] provider — the
//! dispatcher in `shoal up` and `shoal server`. A followed stream ends when
//! the container stops; a reader following a task across restarts asks
//! again with `sinceTime` set to the last time it saw. A host that cannot
//! be reached answers 502, with a message naming it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use shoal_crds::Task;

use crate::App;
use crate::error::ApiError;
use crate::resources::{Query, Target};

/// What log lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    /// Keep streaming new lines until the container stops.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u32>,
    /// Only lines at or after this time.
    pub since: Option<SystemTime>,
    /// Whether the lines' times are wanted.
    pub timestamps: bool,
}

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the engine received it, if known.
    pub time: Option<SystemTime>,
    /// Its bytes, with the trailing newline if there was one.
    pub data: Vec<u8>,
}

/// Why logs cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The request cannot be served as asked (the task has no container on
    /// its host, or is not placed): 400. Not retryable as such.
    #[error("{0}")]
    BadRequest(String),
    /// The task's host cannot be reached now: 502 Bad Gateway (the API is
    /// the gateway to the host's agent). Not 503: kube-rs retries 503 for
    /// minutes, and a reader of several tasks wants the others meanwhile.
    /// Retryable.
    #[error("{0}")]
    Unavailable(String),
}

impl LogError {
    /// Whether asking again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }
}

/// Where the log lines of a task come from.
pub trait TaskLogs: Send + Sync + std::fmt::Debug + 'static {
    /// Opens the task's log stream. An error before any line is returned
    /// here; the stream ends when the lines do (or the host goes away).
    fn open<'a>(
        &'a self,
        task: &'a Task,
        req: LogRequest,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogLine>, LogError>>;
}

fn bad_param(name: &str, value: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("invalid {name} {value:?}: {why}"))
}

/// Reads the query parameters of a log request.
pub(crate) fn parse_request(q: &Query, now: SystemTime) -> Result<LogRequest, ApiError> {
    let tail_lines = match q.get("tailLines") {
        None | Some("") => None,
        Some(v) => {
            let n: i64 = v
                .parse()
                .map_err(|_| bad_param("tailLines", v, "not an integer"))?;
            if n < 0 {
                return Err(bad_param("tailLines", v, "must be 0 or more"));
            }
            Some(u32::try_from(n).unwrap_or(u32::MAX))
        }
    };
    let since_seconds = match q.get("sinceSeconds") {
        None | Some("") => None,
        Some(v) => {
            let n: i64 = v
                .parse()
                .map_err(|_| bad_param("sinceSeconds", v, "not an integer"))?;
            if n < 1 {
                return Err(bad_param("sinceSeconds", v, "must be 1 or more"));
            }
            Some(now - Duration::from_secs(n.unsigned_abs()))
        }
    };
    let since_time = match q.get("sinceTime") {
        None | Some("") => None,
        Some(v) => {
            let ts: jiff::Timestamp = v
                .parse()
                .map_err(|_| bad_param("sinceTime", v, "not an RFC 3339 time"))?;
            Some(SystemTime::from(ts))
        }
    };
    if since_seconds.is_some() && since_time.is_some() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "at most one of sinceTime or sinceSeconds may be given",
        ));
    }
    if q.flag("previous") {
        return Err(ApiError::bad_request(
            "previous: a restarted task keeps its container, so its earlier output is in the same log; ask without previous",
        ));
    }
    Ok(LogRequest {
        follow: q.flag("follow"),
        tail_lines,
        since: since_seconds.or(since_time),
        timestamps: q.flag("timestamps"),
    })
}

/// A line as sent: with `timestamps`, its RFC 3339 time (nanoseconds) and a
/// space first.
pub fn format_line(line: &LogLine, timestamps: bool) -> Bytes {
    if !timestamps {
        return Bytes::from(line.data.clone());
    }
    let mut out = Vec::with_capacity(line.data.len() + 32);
    if let Some(t) = line.time.and_then(|t| jiff::Timestamp::try_from(t).ok()) {
        out.extend_from_slice(format!("{t:.9} ").as_bytes());
    }
    out.extend_from_slice(&line.data);
    Bytes::from(out)
}

/// Serves `GET .../tasks/NAME/log`.
/// 501: this server has no way to the hosts for `what`.
pub(crate) fn not_served(what: &str) -> ApiError {
    ApiError::new(
        501,
        "NotImplemented",
        format!("task {what} are read through the dispatcher, which this server does not run"),
    )
}

/// The task `t` names, placed on a host (else 400: `unplaced`).
pub(crate) async fn placed_task(
    app: &Arc<App>,
    t: &Target<'_>,
    unplaced: &str,
) -> Result<Task, ApiError> {
    let obj = crate::resources::current(app, t).await?;
    let task: Task = serde_json::from_value(obj)
        .map_err(|e| ApiError::new(500, "InternalError", format!("reading the task: {e}")))?;
    if task.spec.host_name.is_none() {
        let name = task.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::bad_request(format!(
            "task {name} is not placed on a host yet: {unplaced}"
        )));
    }
    Ok(task)
}

/// A provider's error as the API answers it (the API is the gateway to the
/// host: an unreachable one is 502).
pub(crate) fn api_error(e: LogError) -> ApiError {
    match e {
        LogError::BadRequest(m) => ApiError::bad_request(m),
        LogError::Unavailable(m) => ApiError::new(502, "BadGateway", m),
    }
}

pub(crate) async fn serve(app: &Arc<App>, t: &Target<'_>, q: &Query) -> Result<Response, ApiError> {
    let req = parse_request(q, SystemTime::now())?;
    let Some(provider) = app.cfg.logs.clone() else {
        return Err(not_served("logs"));
    };
    let task = placed_task(app, t, "it has no logs").await?;
    let timestamps = req.timestamps;
    let lines = provider.open(&task, req).await.map_err(api_error)?;
    let mut shutdown = app.shutdown.clone();
    let stop = async move {
        // An error means the server is gone: stop as well.
        let _ = shutdown.wait_for(|v| *v).await;
    };
    let body = lines
        .map(move |l| Ok::<_, Infallible>(format_line(&l, timestamps)))
        .take_until(Box::pin(stop));
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    #[test]
    fn parses_the_pod_log_options() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let r = parse_request(&q("follow=true&tailLines=5&timestamps=true"), now).unwrap();
        assert_eq!(
            r,
            LogRequest {
                follow: true,
                tail_lines: Some(5),
                since: None,
                timestamps: true
            }
        );
        let r = parse_request(&q("sinceSeconds=10"), now).unwrap();
        assert_eq!(
            r.since,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(990))
        );
        let r = parse_request(&q("sinceTime=1970-01-01T00:00:05.25Z"), now).unwrap();
        assert_eq!(
            r.since,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(5_250))
        );
        assert_eq!(parse_request(&q(""), now).unwrap(), LogRequest::default());
    }

    #[test]
    fn refuses_bad_parameters_naming_them() {
        let now = SystemTime::now();
        for (query, word, code) in [
            ("tailLines=x", "tailLines", 400),
            ("tailLines=-1", "tailLines", 400),
            ("sinceSeconds=0", "sinceSeconds", 400),
            ("sinceTime=yesterday", "sinceTime", 400),
            (
                "sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z",
                "sinceTime",
                422,
            ),
            ("previous=true", "previous", 400),
        ] {
            let e = parse_request(&q(query), now).unwrap_err();
            assert_eq!(e.code, code, "{query}");
            assert!(e.message.contains(word), "{query}: {}", e.message);
        }
    }

    #[test]
    fn timestamps_prefix_lines_in_rfc3339_with_nanoseconds() {
        let line = LogLine {
            time: Some(SystemTime::UNIX_EPOCH + Duration::new(1_764_012_600, 5)),
            data: b"hello\n".to_vec(),
        };
        assert_eq!(
            format_line(&line, true),
            Bytes::from_static(b"2025-11-24T19:30:00.000000005Z hello\n")
        );
        assert_eq!(format_line(&line, false), Bytes::from_static(b"hello\n"));
        let untimed = LogLine {
            time: None,
            data: b"x\n".to_vec(),
        };
        assert_eq!(format_line(&untimed, true), Bytes::from_static(b"x\n"));
    }
}
