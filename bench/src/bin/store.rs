//! Durable write latency and throughput of the embedded Raft store (single voter, fsync on, 1 KiB objects), beside the disk's own fsync latency.
//! needs: nothing
//!
//! All files live in one directory on the disk of the working directory
//! (`SHOAL_BENCH_DIR`, default `target/bench-store`, emptied first and removed
//! after). Measured in one run:
//! - `fsync_p50_us`: a 64-byte overwrite of a file followed by `fdatasync`
//!   (what a durable commit costs at least on this disk);
//! - `store_create_p50_us` and `store_creates_per_s_c1`: one writer creating
//!   Services of about 1 KiB one after the other;
//! - `store_creates_per_s_c16`: 16 writers at once on a fresh store — group
//!   commit lets concurrent writes share an fsync.
//!
//! `SHOAL_BENCH_RUNS` sets the number of creates per phase (default 2000;
//! the fsync probe takes at most 500 samples). On a virtual disk that
//! throttles sustained flushes, long runs measure the throttled rate: compare
//! with `fsync_p50_us` and `store_create_p50_over_fsync_p50`. The phases
//! are separated by a rest (`SHOAL_BENCH_REST_S`, default 10 s) so that each
//! starts from a rested disk.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::serde_json::{Value, json};
use shoal_store::{ClusterStore, RaftStore};

const WRITERS: usize = 16;

fn object(name: &str) -> Value {
    let mut obj = json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"}},
        "spec": {"replicas": 3, "template": {"image": "shoal-test/busybox:1", "command": ["sleep", "1000"]}},
    });
    // Pad to about 1 KiB as stored (the store adds uid, timestamps, versions).
    let len = k8s_openapi::serde_json::to_vec(&obj)
        .map(|v| v.len())
        .unwrap_or(0);
    obj["spec"]["template"]["env"] =
        json!([{"name": "PAD", "value": "x".repeat(1024usize.saturating_sub(len + 160))}]);
    obj
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn fsync_latencies(dir: &Path, runs: usize) -> Result<Vec<Duration>> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    f.write_all(&[0u8; 4096])?;
    f.sync_all()?;
    let mut out = Vec::with_capacity(runs);
    for i in 0..runs + 50 {
        let t = Instant::now();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&[(i % 251) as u8; 64])?;
        f.sync_data()?;
        if i >= 50 {
            out.push(t.elapsed());
        }
    }
    std::fs::remove_file(&path)?;
    out.sort();
    Ok(out)
}

async fn one_writer(store: &RaftStore, runs: usize) -> Result<(Vec<Duration>, Duration)> {
    for i in 0..100 {
        store.create(object(&format!("warm-{i}"))).await?;
    }
    let mut lat = Vec::with_capacity(runs);
    let start = Instant::now();
    for i in 0..runs {
        let t = Instant::now();
        store.create(object(&format!("c1-{i}"))).await?;
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    Ok((lat, total))
}

async fn many_writers(store: Arc<RaftStore>, runs: usize) -> Result<Duration> {
    let per_writer = runs.div_ceil(WRITERS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                store.create(object(&format!("c16-{w}-{i}"))).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

fn fresh_dir(base: &Path, name: &str) -> Result<PathBuf> {
    let dir = base.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs: usize = std::env::var("SHOAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rest = Duration::from_secs(
        std::env::var("SHOAL_BENCH_REST_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    let base = PathBuf::from(
        std::env::var("SHOAL_BENCH_DIR").unwrap_or_else(|_| "target/bench-store".into()),
    );
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let size = k8s_openapi::serde_json::to_vec(&object("c1-0000"))?.len();
    eprintln!(
        "store bench: {runs} creates per phase, objects of {size} bytes as submitted, in {}",
        base.display()
    );

    // 500 samples give a stable median without spending the disk's flush budget
    // (some virtual disks throttle sustained fsyncs) before the store runs.
    let fsync = fsync_latencies(&base, runs.min(500))?;
    eprintln!(
        "fsync (64-byte overwrite + fdatasync): p50 {:.0} us, p90 {:.0} us, p99 {:.0} us",
        percentile(&fsync, 0.5),
        percentile(&fsync, 0.9),
        percentile(&fsync, 0.99)
    );

    tokio::time::sleep(rest).await;
    let dir = fresh_dir(&base, "c1")?;
    let store = RaftStore::open_single(&dir)?;
    let (lat, total) = one_writer(&store, runs).await?;
    let stored = store
        .get(&shoal_store::ObjectKey::namespaced(
            shoal_store::Kind::Service,
            "default",
            "c1-0",
        ))
        .await?;
    let stored_len = stored
        .map(|v| {
            k8s_openapi::serde_json::to_vec(&v)
                .map(|b| b.len())
                .unwrap_or(0)
        })
        .unwrap_or(0);
    drop(store);
    let c1 = runs as f64 / total.as_secs_f64();
    eprintln!(
        "1 writer: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, {c1:.0} creates/s (stored object {stored_len} bytes)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99)
    );

    // Each phase starts from a rested disk (see the header).
    tokio::time::sleep(rest).await;
    let dir16 = fresh_dir(&base, "c16")?;
    let store = Arc::new(RaftStore::open_single(&dir16)?);
    let n16 = runs.div_ceil(WRITERS) * WRITERS;
    for i in 0..100 {
        store.create(object(&format!("warm-{i}"))).await?;
    }
    let before = store.status();
    let elapsed = many_writers(store.clone(), n16).await?;
    let after = store.status();
    drop(store);
    let c16 = n16 as f64 / elapsed.as_secs_f64();
    let batch = after.proposals.saturating_sub(before.proposals) as f64
        / after.syncs.saturating_sub(before.syncs).max(1) as f64;
    eprintln!(
        "{WRITERS} writers: {n16} creates in {:.2} s, {c16:.0} creates/s, {batch:.1} writes per fsync",
        elapsed.as_secs_f64()
    );

    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_dir_all(&dir16)?;

    println!("fsync_p50_us: {:.0}", percentile(&fsync, 0.5));
    println!("store_creates_per_s_c1: {c1:.0}");
    println!("store_creates_per_s_c16: {c16:.0}");
    // How many fsyncs of this disk one durable create costs (1.0 is the floor).
    println!(
        "store_create_p50_over_fsync_p50: {:.2}",
        percentile(&lat, 0.5) / percentile(&fsync, 0.5).max(1.0)
    );
    println!("store_create_p50_us: {:.0}", percentile(&lat, 0.5));
    Ok(())
}
