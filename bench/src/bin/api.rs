//! API server over HTTP: create latency and throughput (1 and 16 clients), watch fan-out to 10 watchers.
//! needs: nothing
//!
//! Starts the embedded API server on loopback over the durable store `shoal
//! server` uses (single-voter Raft, redb, fsync on; see the `store:` report
//! line) and drives it with kube's HTTP client, as the shoal CLI does:
//!
//! - `api_create_p50_ms`: median latency of sequential Service creates
//!   (`api_create_p99_ms` too);
//! - `api_creates_per_s_c1` / `_c16`: creates per second with 1 and 16
//!   concurrent clients (each its own connection pool);
//! - `api_watch_events_per_s`: events delivered per second in total to 10
//!   watchers of Services while one writer creates 1 KiB objects as fast as
//!   it can (counted until every watcher has seen every write).
//!
//! `bench/run api mem` runs the same over the in-memory store: the API
//! server's ceiling. `store_direct_creates_per_s_c16` is the same store
//! written directly by 16 tasks, without HTTP: the API server's own cost is
//! the difference.
//!
//! Targets, against etcd 3.4's gRPC API on this machine kind: creates with 16
//! clients >= 5,873/s; watch delivery >= 13,259 events/s for 10 watchers and
//! one writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use kube::Client;
use serde_json::json;
use shoal_apiserver::{Config, RunningServer};
use shoal_store::ClusterStore;

const COLLECTION: &str = "/apis/shoal.dev/v1alpha1/namespaces/default/services";
const LATENCY_CREATES: usize = 2_000;
const THROUGHPUT_SECS: u64 = 5;
const WATCHERS: usize = 10;
const WATCH_SECS: u64 = 5;

fn client(url: &str) -> anyhow::Result<Client> {
    let cfg = kube::Config::new(url.parse()?);
    Ok(Client::try_from(cfg)?)
}

fn service(name: &str, pad: usize) -> Vec<u8> {
    let mut v = json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "replicas": 1, "template": { "image": "shoal-test/busybox:1" } },
    });
    if pad > 0 {
        v["metadata"]["annotations"] = json!({ "bench.shoal.dev/pad": "x".repeat(pad) });
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

async fn create(c: &Client, body: Vec<u8>) -> anyhow::Result<()> {
    let req = http::Request::post(COLLECTION)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body))?;
    let resp = c.send(req).await?;
    let code = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if code.as_u16() != 201 {
        bail!("create answered {code}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// (p50, p99) of sequential create latencies, in ms.
async fn latency(c: &Client) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(LATENCY_CREATES);
    for i in 0..LATENCY_CREATES {
        let body = service(&format!("lat-{i}"), 0);
        let t = Instant::now();
        create(c, body).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.5), at(0.99)))
}

async fn throughput(url: &str, clients: usize, tag: &str) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(THROUGHPUT_SECS);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let c = client(url)?;
        let done = done.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                create(&c, service(&format!("{tag}-{w}-{i}"), 0)).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Creates per second straight into the store (no HTTP) with `tasks`
/// concurrent writers: what the API server's own cost is measured against.
async fn store_throughput(store: Arc<dyn ClusterStore>, tasks: usize) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(THROUGHPUT_SECS);
    let mut handles = Vec::new();
    for w in 0..tasks {
        let store = store.clone();
        let done = done.clone();
        handles.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let obj: serde_json::Value =
                    serde_json::from_slice(&service(&format!("direct-{w}-{i}"), 0))?;
                store.create(obj).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Counts events on one watch until it has seen `expect` (set when the
/// writer is done) ADDED events; returns (events, instant of the last one).
/// Bookmarks (every second) wake it up when it is already done.
async fn watcher(
    c: Client,
    from: u64,
    expect: Arc<AtomicU64>,
    seen_total: Arc<AtomicU64>,
) -> anyhow::Result<(u64, Instant)> {
    let req = http::Request::get(format!(
        "{COLLECTION}?watch=1&resourceVersion={from}&timeoutSeconds=120&allowWatchBookmarks=true"
    ))
    .body(kube::client::Body::from(Vec::new()))?;
    let resp = c.send(req).await?;
    let mut body = resp.into_body();
    let mut events = 0u64;
    let mut last = Instant::now();
    let mut partial = Vec::new();
    loop {
        let target = expect.load(Ordering::Acquire);
        if target != 0 && events >= target {
            return Ok((events, last));
        }
        let frame = match tokio::time::timeout(Duration::from_secs(30), body.frame()).await {
            Ok(Some(f)) => f?,
            Ok(None) => bail!("a watch ended after {events} events"),
            Err(_) => bail!("a watch stalled after {events} events"),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=pos).collect();
            // `type` is the first or the last key, depending on serde_json's
            // map order.
            let is = |t: &[u8]| {
                let head = [br#"{"type":""#.as_slice(), t, b"\""].concat();
                let tail = [br#""type":""#.as_slice(), t, b"\"}\n"].concat();
                line.starts_with(&head) || line.ends_with(&tail)
            };
            if is(b"ERROR") {
                bail!(
                    "a watcher got an ERROR event: {}",
                    String::from_utf8_lossy(&line)
                );
            }
            if is(b"ADDED") {
                events += 1;
                seen_total.fetch_add(1, Ordering::Relaxed);
                last = Instant::now();
            }
        }
    }
}

async fn watch_fanout(url: &str, store: &dyn ClusterStore) -> anyhow::Result<(f64, u64)> {
    let from = store.revision().await?;
    let expect = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let c = client(url)?;
        watchers.push(tokio::spawn(watcher(c, from, expect.clone(), seen.clone())));
    }
    // Let the watches connect before writing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = client(url)?;
    // A Service of about 1 KiB as JSON.
    let base = service("w-0000000", 0).len();
    let pad = 1024usize.saturating_sub(base + 40);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(WATCH_SECS);
    let mut written = 0u64;
    while Instant::now() < deadline {
        create(&writer, service(&format!("w-{written:07}"), pad)).await?;
        written += 1;
    }
    expect.store(written, Ordering::Release);
    let mut total = 0u64;
    let mut last = start;
    for w in watchers {
        let (n, at) = w.await??;
        total += n;
        last = last.max(at);
    }
    Ok((total as f64 / (last - start).as_secs_f64(), written))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The durable store, as `shoal server` runs it: a single Raft voter with
    // its log and objects in redb (every acknowledged write is fsynced).
    // `api mem` measures over the in-memory store instead: the API server's
    // ceiling on this machine.
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let mut raft = None;
    let (store, store_name): (Arc<dyn ClusterStore>, &str) =
        if std::env::args().nth(1).as_deref() == Some("mem") {
            (
                Arc::new(shoal_store::mem::MemStore::new()),
                "mem (no durability: ceiling of the API server)",
            )
        } else {
            let path = dir.path().to_owned();
            let r = tokio::task::spawn_blocking(move || shoal_store::RaftStore::open_single(path))
                .await??;
            let r = Arc::new(r);
            raft = Some(r.clone());
            (r, "raft (single voter, redb, fsync on)")
        };
    let server = RunningServer::start(
        "127.0.0.1:0".parse().context("address")?,
        store.clone(),
        Config::default(),
    )
    .await?;
    let url = server.url();
    let c = client(&url)?;

    let (p50, p99) = latency(&c).await?;
    eprintln!("create p50 {p50:.3} ms, p99 {p99:.3} ms");
    let c1 = throughput(&url, 1, "c1").await?;
    eprintln!("1 client: {c1:.0} creates/s");
    let c16 = throughput(&url, 16, "c16").await?;
    eprintln!("16 clients: {c16:.0} creates/s");
    let (events, written) = watch_fanout(&url, store.as_ref()).await?;
    let direct = store_throughput(store.clone(), 16).await?;
    server.shutdown().await?;
    drop(store);
    if let Some(r) = raft.and_then(|r| Arc::try_unwrap(r).ok()) {
        // Stopping the Raft thread blocks (final commit).
        tokio::task::spawn_blocking(move || drop(r)).await?;
    }

    println!("store: {store_name}");
    println!("watch_writes: {written}");
    println!("store_direct_creates_per_s_c16: {direct:.0}");
    println!("api_create_p99_ms: {p99:.3}");
    println!("api_create_p50_ms: {p50:.3}");
    println!("api_creates_per_s_c1: {c1:.0}");
    println!("api_creates_per_s_c16: {c16:.0}");
    println!("api_watch_events_per_s: {events:.0}");
    Ok(())
}
