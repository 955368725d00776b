//! `shoal agent`: the host agent against the local Docker engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_agent::assignments::feed_file;
use shoal_agent::docker::DockerEngine;
use shoal_agent::{AgentConfig, CancellationToken, ContainerEngine, Reconciler, StatusUpdate};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Run the host agent: make the local Docker engine run exactly the tasks
/// assigned to this host, and keep them running
///
/// Until the control-plane session exists, the assigned tasks come from a
/// YAML file of Task objects (`--assignments`), re-read when it changes.
/// Task status changes are printed one per line. Containers keep running
/// when the agent stops; a new agent adopts them. Stops on SIGTERM or Ctrl-C.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML file of Tasks: the complete set assigned to this host.
    #[arg(long, value_name = "FILE")]
    assignments: PathBuf,
    /// Cluster id: the agent touches only containers labelled with it.
    #[arg(long, env = "SHOAL_CLUSTER_ID", default_value = "local")]
    cluster_id: String,
    /// Docker engine address (unix:///path); default DOCKER_HOST, else the
    /// standard socket.
    #[arg(long, env = "DOCKER_HOST", value_name = "ADDRESS")]
    docker_host: Option<String>,
    /// Engine actions (create, start, stop) running at once.
    #[arg(long, default_value_t = 16)]
    max_concurrency: usize,
    /// Full resync period, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// Bound on one image pull, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pull_timeout: Duration,
    /// Print status changes as JSON lines.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_crds::quantity::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(agent(args))?;
    Ok(ExitCode::SUCCESS)
}

fn line(u: &StatusUpdate) -> String {
    let s = &u.status;
    let mut out = format!(
        "{}/{} {:?}",
        u.namespace,
        u.name,
        s.phase.unwrap_or_default()
    );
    if let Some(r) = &s.reason {
        out.push_str(&format!(" reason={r}"));
    }
    if let Some(c) = &s.container_id {
        out.push_str(&format!(" container={}", &c[..c.len().min(12)]));
    }
    if let Some(h) = s.health {
        out.push_str(&format!(" health={h:?}"));
    }
    out.push_str(&format!(" restarts={}", s.restart_count.unwrap_or(0)));
    if let Some(code) = s.exit_code {
        out.push_str(&format!(" exit={code}"));
    }
    if s.oom_killed == Some(true) {
        out.push_str(" oom=true");
    }
    if let Some(m) = &s.message {
        out.push_str(&format!(" message={m:?}"));
    }
    out
}

async fn agent(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let engine = DockerEngine::connect(args.docker_host.as_deref())
        .await
        .with_context(|| {
            format!(
                "connecting to the Docker engine at {}",
                args.docker_host.as_deref().unwrap_or("the default socket")
            )
        })?;
    let version = engine.version().await.context("engine version")?;
    tracing::info!(
        engine = %version.version,
        api = %version.api_version,
        address = %engine.address(),
        cluster = %args.cluster_id,
        "connected to the engine"
    );
    let (tx, rx) = watch::channel(None);
    let feeder = feed_file(
        args.assignments.clone(),
        Duration::from_secs(2),
        tx,
        shutdown.child_token(),
    )
    .await
    .with_context(|| format!("reading {}", args.assignments.display()))?;

    let mut config = AgentConfig::new(args.cluster_id);
    config.max_concurrency = args.max_concurrency;
    config.resync_interval = args.resync_interval;
    config.pull_timeout = args.pull_timeout;
    let (status_tx, mut status_rx) = mpsc::unbounded_channel();
    let reconciler = Reconciler::new(Arc::new(engine), config, status_tx);
    let handle = tokio::spawn(
        reconciler
            .run(rx, shutdown.child_token())
            .instrument(tracing::info_span!("reconciler")),
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping (containers keep running)"); break; }
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                tracing::info!("interrupted: stopping (containers keep running)");
                break;
            }
            u = status_rx.recv() => match u {
                Some(u) if args.json => println!("{}", serde_json::json!({
                    "uid": u.uid, "namespace": u.namespace, "name": u.name, "status": u.status,
                })),
                Some(u) => println!("{}", line(&u)),
                None => break,
            }
        }
    }
    shutdown.cancel();
    let _ = feeder.await;
    let _ = handle.await;
    Ok(())
}
