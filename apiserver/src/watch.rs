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
//!
//! Every watcher of a change gets the same [`SharedObject`] from the store,
//! whose JSON encoding is computed once: a watch line is that encoding
//! framed by `{"type":"ADDED","object":` and `}`. Events already waiting are
//! written together, in one chunk of at most [`CHUNK_BYTES`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use shoal_store::{SharedEvent, SharedObject, SharedWatchStream, StoreError};
use tokio::time::{Instant, Sleep};

use crate::App;
use crate::error::ApiError;
use crate::model::Resource;
use crate::resources::{Query, Target};
use crate::table::{self, Include};

/// Appends `{"type":TYPE,"object":JSON}` and a newline.
fn push_line(out: &mut Vec<u8>, kind: &str, object_json: &[u8]) {
    out.reserve(object_json.len() + kind.len() + 24);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object_json);
    out.extend_from_slice(b"}\n");
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = Vec::new();
    push_line(&mut out, kind, object.to_string().as_bytes());
    Bytes::from(out)
}

fn error_line(e: &ApiError) -> Bytes {
    line("ERROR", &e.status())
}

struct Encoder {
    res: Resource,
    table: Option<Include>,
    bookmarks: bool,
}

impl Encoder {
    fn table_json(&self, inc: Include, obj: &Value) -> Vec<u8> {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        table::table(&self.res, std::slice::from_ref(obj), inc, rv)
            .to_string()
            .into_bytes()
    }

    /// Appends the line of an event to `out` (nothing for a progress
    /// notification the client did not ask bookmarks for).
    fn event(&self, ev: &SharedEvent, out: &mut Vec<u8>) {
        match (ev, self.table) {
            (SharedEvent::Progress(rev), None) if self.bookmarks => {
                let bookmark = json!({
                    "kind": self.res.kind_name(),
                    "apiVersion": self.res.kind.api_version(),
                    "metadata": { "resourceVersion": rev.to_string() },
                });
                push_line(out, "BOOKMARK", bookmark.to_string().as_bytes());
            }
            (SharedEvent::Progress(_), _) => {}
            (ev, table) => {
                let Some((kind, obj)) = ev.object() else {
                    return;
                };
                match table {
                    Some(inc) => push_line(out, kind, &self.table_json(inc, obj.value())),
                    None => push_line(out, kind, obj.json()),
                }
            }
        }
    }
}

struct State {
    pending: VecDeque<Bytes>,
    stream: Option<SharedWatchStream>,
    enc: Encoder,
    deadline: Pin<Box<Sleep>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// When the last chunk of changes went out (see [`COALESCE`]).
    last_flush: Option<Instant>,
}

/// Chunks are filled with the events already waiting, up to this size: a
/// fast writer then costs a watcher one write per chunk, not per event.
const CHUNK_BYTES: usize = 64 * 1024;

/// A watcher whose last chunk went out less than this long ago waits out the
/// rest of it before the next one, so that the changes of a busy stream
/// share writes (like interrupt coalescing). A change on a quiet stream goes
/// out at once; under a steady stream of changes each one waits at most this
/// long, and every watcher costs one socket write per period instead of one
/// per change.
const COALESCE: Duration = Duration::from_millis(2);

fn stream_error(e: StoreError) -> Bytes {
    // Cut off (too old) or failed: tell the client in-stream, then end.
    let err = match e {
        StoreError::TooOld { requested, oldest } => ApiError::gone(requested, oldest),
        other => ApiError::from_store(&Default::default(), other),
    };
    error_line(&err)
}

/// Appends what a stream item means to `out`; ends the stream on an error
/// (after its in-stream `ERROR` line) or at its end.
fn take(st: &mut State, item: Option<Result<SharedEvent, StoreError>>, out: &mut Vec<u8>) {
    match item {
        Some(Ok(ev)) => st.enc.event(&ev, out),
        Some(Err(e)) => {
            st.stream = None;
            out.extend_from_slice(&stream_error(e));
        }
        None => st.stream = None,
    }
}

/// Appends the events already waiting, up to [`CHUNK_BYTES`].
fn fill(st: &mut State, chunk: &mut Vec<u8>) {
    while chunk.len() < CHUNK_BYTES {
        let Some(stream) = st.stream.as_mut() else {
            break;
        };
        let Some(item) = stream.next().now_or_never() else {
            break;
        };
        take(st, item, chunk);
    }
}

async fn next(mut st: State) -> Option<(Result<Bytes, std::io::Error>, State)> {
    loop {
        if let Some(b) = st.pending.pop_front() {
            return Some((Ok(b), st));
        }
        let stream = st.stream.as_mut()?;
        // The end of the watch first: a busy stream must not delay it.
        let item = tokio::select! {
            biased;
            _ = st.shutdown.wait_for(|v| *v) => None,
            () = st.deadline.as_mut() => None,
            item = stream.next() => item,
        };
        let mut chunk = Vec::new();
        take(&mut st, item, &mut chunk);
        // Whatever is already waiting goes in the same chunk.
        fill(&mut st, &mut chunk);
        if chunk.is_empty() {
            continue;
        }
        if let Some(at) = st.last_flush.map(|t| t + COALESCE)
            && chunk.len() < CHUNK_BYTES
            && st.stream.is_some()
            && at > Instant::now()
        {
            tokio::select! {
                biased;
                _ = st.shutdown.wait_for(|v| *v) => {}
                () = st.deadline.as_mut() => {}
                () = tokio::time::sleep_until(at) => {}
            }
            fill(&mut st, &mut chunk);
        }
        st.last_flush = Some(Instant::now());
        return Some((Ok(Bytes::from(chunk)), st));
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
        Some(from) => match app.store.watch_shared(t.res.kind, from, &opts).await {
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
            app.store
                .linearize()
                .await
                .map_err(|e| ApiError::from_store(&subject, e))?;
            let list = app
                .store
                .list(t.res.kind, &opts)
                .await
                .map_err(|e| ApiError::from_store(&subject, e))?;
            for o in list.items {
                let mut out = Vec::new();
                enc.event(&SharedEvent::Added(SharedObject::new(o)), &mut out);
                pending.push_back(Bytes::from(out));
            }
            if initial_events {
                pending.push_back(line(
                    "BOOKMARK",
                    &json!({
                        "kind": t.res.kind_name(),
                        "apiVersion": t.res.kind.api_version(),
                        "metadata": {
                            "resourceVersion": list.revision.to_string(),
                            "annotations": { "k8s.io/initial-events-end": "true" },
                        },
                    }),
                ));
            }
            match app
                .store
                .watch_shared(t.res.kind, list.revision, &opts)
                .await
            {
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
    stream: Option<SharedWatchStream>,
    enc: Encoder,
    timeout: Duration,
    app: &App,
) -> Response {
    let st = State {
        pending,
        stream,
        enc,
        deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
        shutdown: app.shutdown.clone(),
        last_flush: None,
    };
    streaming(Body::from_stream(futures::stream::unfold(st, next)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::model::Model;
    use shoal_store::Kind;

    fn state(events: Vec<Result<SharedEvent, StoreError>>, table: Option<Include>) -> State {
        let res = Model::from_crds()
            .unwrap()
            .by_kind(Kind::Service)
            .unwrap()
            .clone();
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        State {
            pending: VecDeque::new(),
            stream: Some(futures::stream::iter(events).boxed()),
            enc: Encoder {
                res,
                table,
                bookmarks: true,
            },
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(60))),
            shutdown: rx,
            last_flush: None,
        }
    }

    fn service(name: &str, rv: u64) -> Value {
        json!({
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "Service",
            "metadata": {
                "name": name, "namespace": "default", "resourceVersion": rv.to_string(),
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": { "replicas": 1, "template": { "image": "busybox" } },
        })
    }

    fn lines(chunk: &[u8]) -> Vec<Value> {
        chunk
            .split_inclusive(|b| *b == b'\n')
            .map(|l| {
                assert!(l.ends_with(b"\n"));
                serde_json::from_slice(l).unwrap()
            })
            .collect()
    }

    /// Events already waiting go out as one chunk, in order, one JSON line
    /// each, a shared object written as itself; a bookmark keeps its place
    /// and a cut-off ends the stream with the in-stream 410.
    #[tokio::test]
    async fn ready_events_are_one_chunk_in_order() {
        let shared = SharedObject::new(service("b", 3));
        let events = vec![
            Ok(SharedEvent::Added(SharedObject::new(service("a", 2)))),
            Ok(SharedEvent::Modified(shared.clone())),
            Ok(SharedEvent::Progress(4)),
            Ok(SharedEvent::Deleted(shared.clone())),
            Err(StoreError::TooOld {
                requested: 4,
                oldest: 9,
            }),
        ];
        let (chunk, st) = next(state(events, None)).await.unwrap();
        let got = lines(&chunk.unwrap());
        let types: Vec<&str> = got.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "BOOKMARK", "DELETED", "ERROR"]);
        assert_eq!(got[0]["object"], service("a", 2));
        assert_eq!(&got[1]["object"], shared.value());
        assert_eq!(&got[3]["object"], shared.value());
        assert_eq!(got[2]["object"]["metadata"]["resourceVersion"], "4");
        assert_eq!(got[2]["object"]["kind"], "Service");
        assert_eq!(got[4]["object"]["code"], 410);
        assert_eq!(got[4]["object"]["reason"], "Expired");
        assert!(next(st).await.is_none(), "the stream ends after the 410");
    }

    fn names(chunk: &[u8]) -> Vec<String> {
        lines(chunk)
            .iter()
            .map(|l| l["object"]["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A change on a quiet watch goes out at once; changes that follow
    /// within [`COALESCE`] of the last chunk wait out the rest of it and
    /// share one chunk.
    #[tokio::test(start_paused = true)]
    async fn busy_streams_share_chunks() {
        let added = |n: &str| Ok(SharedEvent::Added(SharedObject::new(service(n, 1))));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut st = state(vec![], None);
        st.stream = Some(rx.boxed());

        tx.unbounded_send(added("a")).unwrap();
        let t0 = Instant::now();
        let (chunk, st) = next(st).await.unwrap();
        assert_eq!(names(&chunk.unwrap()), ["a"]);
        assert_eq!(Instant::now(), t0, "a quiet watch does not wait");

        tx.unbounded_send(added("b")).unwrap();
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            later.unbounded_send(added("c")).unwrap();
        });
        let (chunk, st) = next(st).await.unwrap();
        assert_eq!(names(&chunk.unwrap()), ["b", "c"]);
        assert_eq!(Instant::now(), t0 + COALESCE);

        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.unbounded_send(added("d")).unwrap();
        let t1 = Instant::now();
        let (chunk, _) = next(st).await.unwrap();
        assert_eq!(names(&chunk.unwrap()), ["d"]);
        assert_eq!(Instant::now(), t1, "quiet again: no wait");
    }

    /// Table watches write one Table per event, with the object's version.
    #[tokio::test]
    async fn table_watch_lines() {
        let events = vec![Ok(SharedEvent::Added(SharedObject::new(service("a", 7))))];
        let (chunk, _) = next(state(events, Some(Include::Metadata))).await.unwrap();
        let got = lines(&chunk.unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["type"], "ADDED");
        assert_eq!(got[0]["object"]["kind"], "Table");
        assert_eq!(got[0]["object"]["metadata"]["resourceVersion"], "7");
        assert_eq!(got[0]["object"]["rows"][0]["cells"][0], "a");
    }

    /// More than a chunk's worth of waiting events is split in chunks of
    /// whole lines, none lost.
    #[tokio::test]
    async fn chunks_are_bounded_and_complete() {
        let events: Vec<_> = (0..300)
            .map(|i| {
                let mut o = service(&format!("s{i}"), i);
                o["metadata"]["annotations"] = json!({ "pad": "x".repeat(1000) });
                Ok(SharedEvent::Added(SharedObject::new(o)))
            })
            .collect();
        let mut st = state(events, None);
        let mut names = Vec::new();
        let mut chunks = 0;
        while let Some((chunk, next_st)) = next(st).await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() < CHUNK_BYTES + 2048);
            for l in lines(&chunk) {
                names.push(l["object"]["metadata"]["name"].as_str().unwrap().to_owned());
            }
            chunks += 1;
            st = next_st;
        }
        assert!(chunks > 1);
        let want: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
        assert_eq!(names, want);
    }
}
