//! `shoal server`: the control plane on a data directory, without a local
//! agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::control_plane::{ControlPlane, Settings, default_data_dir, stop_signal};

/// Run the control plane: store, API server, orchestrator, scheduler and
/// dispatcher
///
/// The store (Raft, single voter) lives in `DATA_DIR/store`; the API speaks
/// the Kubernetes REST dialect for shoal.dev and `DATA_DIR/kubeconfig` points
/// kubectl and the shoal CLI at it. Agents dial the dispatcher: on this
/// machine over loopback, from other hosts over mutual TLS on --join-listen
/// once they joined with the token in DATA_DIR/join-token. The API is plain
/// HTTP without authentication on loopback (dev mode), and HTTPS with a
/// bearer token beyond. Stops gracefully on SIGTERM or Ctrl-C. `shoal up`
/// runs the same plus a local agent.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data directory (store, cluster id, kubeconfig). Default:
    /// /var/lib/shoal for root, else ~/.local/share/shoal.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// API server address (port 0 picks a free port). On loopback: plain
    /// HTTP without authentication (dev mode). Beyond (e.g. 0.0.0.0:6443):
    /// HTTPS with the cluster CA and a bearer token, both in the kubeconfig.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address this machine's agents dial, without TLS (loopback only).
    #[arg(long, default_value = "127.0.0.1:6444")]
    dispatcher_listen: SocketAddr,
    /// Address agents of other hosts dial, with mutual TLS, after joining
    /// with the token in DATA_DIR/join-token (e.g. 0.0.0.0:6445). Off by
    /// default.
    #[arg(long, value_name = "ADDRESS")]
    join_listen: Option<SocketAddr>,
    /// Another name or address clients use for the API, for its certificate
    /// (repeatable; with a --listen beyond loopback, e.g. 10.0.0.1 or
    /// shoal.example.com).
    #[arg(long = "api-name", value_name = "NAME")]
    api_names: Vec<String>,
    /// Largest accepted API request body, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_body_bytes: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let settings = Settings {
        data_dir: args.data_dir.unwrap_or_else(default_data_dir),
        api_listen: args.listen,
        dispatcher_listen: args.dispatcher_listen,
        join_listen: args.join_listen,
        api_names: args.api_names.clone(),
        max_body_bytes: args.max_body_bytes,
    };
    let cp = ControlPlane::start(&settings).await?;
    tracing::info!(
        api = %cp.api_url,
        dispatcher = %cp.dispatcher_url,
        cluster = %cp.cluster_id,
        kubeconfig = %cp.kubeconfig.display(),
        "control plane up, {}; use KUBECONFIG={}",
        if cp.api_url.starts_with("https://") {
            "the API with HTTPS and a bearer token"
        } else {
            "the API in dev mode: no authentication, loopback only"
        },
        cp.kubeconfig.display()
    );
    if let Some((url, _)) = &cp.join {
        tracing::info!(
            join = %url,
            "agents of other hosts join with: shoal agent --dispatcher {} --join-token \"$(cat {})\"",
            crate::control_plane::dialable(url),
            settings.data_dir.join("join-token").display()
        );
    }
    let why = stop_signal().await?;
    tracing::info!("{why}: shutting down");
    cp.stop().await?;
    tracing::info!("stopped");
    Ok(())
}
