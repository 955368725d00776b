//! Median time from a create+start request to the engine's `start` event (test image, private engine).
//!
//! Runs on the private test engine (`scripts/test-env up`; found like the tests find it:
//! `SHOAL_TEST_DOCKER_HOST`, `DOCKER_HOST`, or test-env's default socket). Each run
//! creates and starts a `shoal-test/busybox:1` container (`sleep`, engine init, labels
//! `shoal.dev/test=1` and `shoal.dev/bench=engine-start`), waits for its `start` event on
//! the engine's event stream, and removes it. The interval is measured from just before
//! the create request to the event's own timestamp (same clock: the engine is local).
//! One warm-up run is not counted. `SHOAL_BENCH_RUNS` sets the number of runs (default 20).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use shoal_tests::{ContainerSpec, Engine, unique_name};
use tokio::sync::mpsc;

const BENCH_LABEL: &str = "shoal.dev/bench";
const NAME: &str = "engine-start";

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Nanoseconds from the create request to the start event of one container.
async fn one_run(engine: &Engine, events: &mut mpsc::Receiver<(String, i64)>) -> Result<i64> {
    let mut spec = ContainerSpec::new(["sleep", "100000"]).name(unique_name("shoal-bench"));
    spec.labels
        .insert(BENCH_LABEL.to_string(), NAME.to_string());
    let t0 = now_ns();
    let c = engine.run(&spec).await?;
    let result = async {
        loop {
            let (id, t) = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .context("no start event within 30 s")?
                .context("event stream ended")?;
            if id == c.id {
                return Ok::<i64, anyhow::Error>(t - t0);
            }
        }
    }
    .await;
    c.remove().await?;
    result
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest-rank on the sorted samples; the median of an even count averages the middle two.
    let n = sorted.len();
    if (p - 50.0).abs() < f64::EPSILON && n.is_multiple_of(2) {
        return (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0;
    }
    let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
    sorted[rank.min(n) - 1] as f64
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs: usize = match std::env::var("SHOAL_BENCH_RUNS") {
        Ok(v) => v.parse().context("SHOAL_BENCH_RUNS")?,
        Err(_) => 20,
    };
    if runs == 0 {
        bail!("SHOAL_BENCH_RUNS must be at least 1");
    }
    let engine = Engine::main().await?;
    let version = engine.docker.version().await.context("engine version")?;
    eprintln!(
        "engine {} (API {}) at {}",
        version.version.unwrap_or_default(),
        version.api_version.unwrap_or_default(),
        engine.docker_host
    );

    // One event subscription for the whole run, forwarded to a channel.
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["start".to_string()]),
        ("label", vec![format!("{BENCH_LABEL}={NAME}")]),
    ]);
    let opts = EventsOptionsBuilder::default().filters(&filters).build();
    let mut stream = engine.docker.events(Some(opts));
    let (tx, mut rx) = mpsc::channel(64);
    let pump = tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { break };
            let id = ev.actor.and_then(|a| a.id).unwrap_or_default();
            let t = ev.time_nano.unwrap_or_else(now_ns);
            if tx.send((id, t)).await.is_err() {
                break;
            }
        }
    });

    // The warm-up also proves the subscription is live before anything is measured.
    one_run(&engine, &mut rx).await.context("warm-up run")?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let ns = one_run(&engine, &mut rx)
            .await
            .with_context(|| format!("run {}", i + 1))?;
        samples.push(ns);
    }
    pump.abort();
    samples.sort_unstable();
    let ms = |ns: f64| ns / 1e6;
    println!("engine_start_runs: {runs}");
    println!("engine_start_min_ms: {:.1}", ms(samples[0] as f64));
    println!("engine_start_p90_ms: {:.1}", ms(percentile(&samples, 90.0)));
    println!("engine_start_max_ms: {:.1}", ms(samples[runs - 1] as f64));
    println!("engine_start_p50_ms: {:.1}", ms(percentile(&samples, 50.0)));
    Ok(())
}
