//! `?watch=1`: a stream of `{"type": ..., "object": ...}` lines.
//!
//! Without a resourceVersion (or with `sendInitialEvents=true`, then
//! followed by a bookmark annotated `k8s.io/initial-events-end`) the current
//! objects come first as ADDED events; "0" replays the store's history from its start when it reaches
//! that far back (a list of an empty store has version 0), else acts the same. A resourceVersion older than the store's history answers
//! HTTP 200 with one in-stream `ERROR` event carrying a 410 `Status` — that
//! is what makes clients relist (an HTTP 410 makes kube-rs retry forever).
//! The stream ends after `timeoutSeconds`, when the store cuts the watcher
//! off, or when the server shuts down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use shoal_store::{StoreError, WatchEvent, WatchStream};
use tokio::time::Instant;

use crate::App;
use crate::error::ApiError;
use crate::model::Resource;
use crate::resources::{Query, Target};
use crate::table::{self, Include};

fn line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({ "type": kind, "object": object }).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn error_line(e: &ApiError) -> Bytes {
    line("ERROR", e.status())
}

struct Encoder {
    res: Resource,
    table: Option<Include>,
    bookmarks: bool,
}

impl Encoder {
    fn object(&self, obj: Value) -> Value {
        match self.table {
            Some(inc) => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                table::table(&self.res, std::slice::from_ref(&obj), inc, &rv)
            }
            None => obj,
        }
    }
    fn event(&self, ev: WatchEvent) -> Option<Bytes> {
        match ev {
            WatchEvent::Added(o) => Some(line("ADDED", self.object(o))),
            WatchEvent::Modified(o) => Some(line("MODIFIED", self.object(o))),
            WatchEvent::Deleted(o) => Some(line("DELETED", self.object(o))),
            WatchEvent::Progress(rev) if self.bookmarks && self.table.is_none() => Some(line(
                "BOOKMARK",
                json!({
                    "kind": self.res.kind_name(),
                    "apiVersion": shoal_crds::API_VERSION,
                    "metadata": { "resourceVersion": rev.to_string() },
                }),
            )),
            WatchEvent::Progress(_) => None,
        }
    }
}

struct State {
    pending: VecDeque<Bytes>,
    stream: Option<WatchStream>,
    enc: Encoder,
    deadline: Instant,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Chunks are filled with the events already waiting, up to this size: a
/// fast writer then costs a watcher one write per chunk, not per event.
const CHUNK_BYTES: usize = 64 * 1024;

fn stream_error(e: StoreError) -> Bytes {
    // Cut off (too old) or failed: tell the client in-stream, then end.
    let err = match e {
        StoreError::TooOld { requested, oldest } => ApiError::gone(requested, oldest),
        other => ApiError::from_store(&Default::default(), other),
    };
    error_line(&err)
}

async fn next(mut st: State) -> Option<(Result<Bytes, std::io::Error>, State)> {
    loop {
        if let Some(b) = st.pending.pop_front() {
            return Some((Ok(b), st));
        }
        let stream = st.stream.as_mut()?;
        let item = tokio::select! {
            item = stream.next() => item,
            _ = tokio::time::sleep_until(st.deadline) => None,
            _ = st.shutdown.wait_for(|v| *v) => None,
        };
        let first = match item {
            None => {
                st.stream = None;
                return None;
            }
            Some(Ok(ev)) => match st.enc.event(ev) {
                Some(b) => b,
                None => continue,
            },
            Some(Err(e)) => {
                st.stream = None;
                return Some((Ok(stream_error(e)), st));
            }
        };
        let mut chunk: Option<Vec<u8>> = None;
        while chunk.as_ref().map_or(first.len(), Vec::len) < CHUNK_BYTES {
            let Some(stream) = st.stream.as_mut() else {
                break;
            };
            let more = match stream.next().now_or_never() {
                None => break,
                Some(Some(Ok(ev))) => st.enc.event(ev),
                Some(Some(Err(e))) => {
                    st.stream = None;
                    Some(stream_error(e))
                }
                Some(None) => {
                    st.stream = None;
                    None
                }
            };
            if let Some(b) = more {
                chunk
                    .get_or_insert_with(|| first.to_vec())
                    .extend_from_slice(&b);
            }
        }
        let out = chunk.map_or(first, Bytes::from);
        return Some((Ok(out), st));
    }
}

fn streaming(body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// Serves a watch.
pub(crate) async fn watch(
    app: Arc<App>,
    t: &Target<'_>,
    q: &Query,
    as_table: Option<Include>,
) -> Result<Response, ApiError> {
    let opts = t.list_options(q);
    let subject = t.subject();
    let enc = Encoder {
        res: t.res.clone(),
        table: as_table,
        bookmarks: q.flag("allowWatchBookmarks"),
    };
    let timeout =
        match q.get("timeoutSeconds").filter(|s| !s.is_empty()) {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds {s:?} is not a number"))
            })?),
            None => app.cfg.watch_timeout,
        };
    let mut pending = VecDeque::new();
    let rv = q.get("resourceVersion").filter(|s| !s.is_empty());
    let from = match rv {
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion {rv:?} is not a resource version"))
        })?),
        None => None,
    };
    // "0" is both "any starting point" and the version of a list of an empty
    // store: replaying from revision 0 serves both while the history reaches
    // back that far.
    // `sendInitialEvents=true` (kube-rs streaming lists, kubectl's WatchList):
    // the current objects (at a version not older than the one asked for),
    // then a bookmark marking their end, then changes.
    let initial_events = q.flag("sendInitialEvents");
    if initial_events && !enc.bookmarks {
        return Err(ApiError::bad_request(
            "sendInitialEvents=true requires allowWatchBookmarks=true",
        ));
    }
    let stream = match from.filter(|_| !initial_events) {
        Some(from) => match app.store.watch(t.res.kind, from, &opts).await {
            Ok(s) => Some(s),
            Err(StoreError::TooOld { .. }) if from == 0 => None,
            Err(StoreError::TooOld { requested, oldest }) => {
                pending.push_back(error_line(&ApiError::gone(requested, oldest)));
                return Ok(respond(pending, None, enc, timeout, &app));
            }
            Err(e) => return Err(ApiError::from_store(&subject, e)),
        },
        None => None,
    };
    let stream = match stream {
        Some(s) => s,
        None => {
            // No version: the current objects as ADDED, then changes after them.
            let list = app
                .store
                .list(t.res.kind, &opts)
                .await
                .map_err(|e| ApiError::from_store(&subject, e))?;
            for o in list.items {
                if let Some(b) = enc.event(WatchEvent::Added(o)) {
                    pending.push_back(b);
                }
            }
            if initial_events {
                pending.push_back(line(
                    "BOOKMARK",
                    json!({
                        "kind": t.res.kind_name(),
                        "apiVersion": shoal_crds::API_VERSION,
                        "metadata": {
                            "resourceVersion": list.revision.to_string(),
                            "annotations": { "k8s.io/initial-events-end": "true" },
                        },
                    }),
                ));
            }
            match app.store.watch(t.res.kind, list.revision, &opts).await {
                Ok(s) => s,
                Err(StoreError::TooOld { requested, oldest }) => {
                    pending.push_back(error_line(&ApiError::gone(requested, oldest)));
                    return Ok(respond(pending, None, enc, timeout, &app));
                }
                Err(e) => return Err(ApiError::from_store(&subject, e)),
            }
        }
    };
    Ok(respond(pending, Some(stream), enc, timeout, &app))
}

fn respond(
    pending: VecDeque<Bytes>,
    stream: Option<WatchStream>,
    enc: Encoder,
    timeout: Duration,
    app: &App,
) -> Response {
    let st = State {
        pending,
        stream,
        enc,
        deadline: Instant::now() + timeout,
        shutdown: app.shutdown.clone(),
    };
    streaming(Body::from_stream(futures::stream::unfold(st, next)))
}
