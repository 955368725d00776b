//! `shoal server`: the control plane's API server on a data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use shoal_apiserver::{Config, RunningServer};
use shoal_store::ClusterStore;

/// Run the API server (Kubernetes REST dialect for shoal.dev)
///
/// Writes `DATA_DIR/kubeconfig` for kubectl and the shoal CLI once it
/// listens. Listens on loopback only until authentication exists. Stops
/// gracefully on SIGTERM or Ctrl-C.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the store (Raft log and objects, `store.redb`) and the
    /// kubeconfig.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Address to listen on (loopback only; port 0 picks a free port).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_body_bytes: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {}: the API has no authentication yet, so it listens on loopback only",
            args.listen
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let dir = args.data_dir.clone();
    // Opening replays the log: blocking work, off the async threads.
    let store = tokio::task::spawn_blocking(move || shoal_store::RaftStore::open_single(dir))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let store: Arc<dyn ClusterStore> = Arc::new(store);
    tracing::info!(data_dir = %args.data_dir.display(), "store open (single voter, Raft log and objects in redb)");
    let cfg = Config {
        max_body_bytes: args.max_body_bytes,
        ..Config::default()
    };
    let server = RunningServer::start(args.listen, store.clone(), cfg)
        .await
        .with_context(|| format!("starting the API server on {}", args.listen))?;
    let kubeconfig = args.data_dir.join("kubeconfig");
    shoal_apiserver::kubeconfig::write(&kubeconfig, &server.url())
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    tracing::info!(
        url = %server.url(),
        kubeconfig = %kubeconfig.display(),
        "API server listening without authentication (loopback only); use KUBECONFIG={}",
        kubeconfig.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            tracing::info!("interrupted: shutting down");
        }
    }
    server
        .shutdown()
        .await
        .context("shutting down the API server")?;
    // Dropping the last handle stops the Raft thread after a final durable
    // commit; that blocks, so do it off the async threads.
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .context("closing the store")?;
    tracing::info!("stopped");
    Ok(())
}
