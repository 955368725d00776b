//! `shoal operator`: the control plane of kubernetes mode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use shoal_kubestore::KubeStore;
use shoal_store::{ClusterStore, StoreError};

use crate::control_plane::{Operator, OperatorSettings, default_data_dir, dialable, stop_signal};

/// Run the control plane against a Kubernetes cluster (kubernetes mode)
///
/// Desired state lives in the cluster you already run, as shoal.dev custom
/// resources: install the CRDs first (`shoal crds | kubectl apply -f -`, or
/// the Helm chart in charts/shoal, which runs this command in a pod). Then
/// `kubectl apply -f examples/web.yaml` (or `shoal apply` with the
/// cluster's kubeconfig) declares a service, and this process runs the
/// orchestrator, the scheduler and the dispatcher over the cluster's API.
/// Docker hosts join with `shoal agent --dispatcher https://ADDRESS:6445
/// --join-token TOKEN` (the token is in DATA_DIR/join-token).
///
/// The cluster is found as kubectl finds it: --kubeconfig, else KUBECONFIG
/// or ~/.kube/config, else the pod's service account. It needs get, list,
/// watch, create, update, patch and delete on services, tasks and hosts of
/// shoal.dev (and their /status) and on core events. Run one operator per
/// cluster. Logs, exec and top of tasks go through `shoal server`'s API
/// only: in kubernetes mode they are not served yet.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cluster's kubeconfig (its current context). Default: KUBECONFIG,
    /// ~/.kube/config, else the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Data directory (cluster id, cluster CA, join token). Default:
    /// /var/lib/shoal for root, else ~/.local/share/shoal.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address agents of other hosts dial, with mutual TLS, after joining
    /// with the token in DATA_DIR/join-token.
    #[arg(long, value_name = "ADDRESS", default_value = "0.0.0.0:6445")]
    join_listen: SocketAddr,
    /// Accept agents only on the loopback dispatcher (no join listener, no
    /// cluster CA).
    #[arg(long, conflicts_with = "join_listen")]
    no_join: bool,
    /// Address an agent on this machine dials, without TLS (loopback only).
    #[arg(long, default_value = "127.0.0.1:6444")]
    dispatcher_listen: SocketAddr,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let kube = match &args.kubeconfig {
        Some(path) => KubeStore::from_kubeconfig(path).await?,
        None => KubeStore::infer().await?,
    };
    // The CRDs must be there; say so plainly rather than log watch errors.
    match kube.check_kinds().await {
        Ok(()) => {}
        Err(StoreError::NotFound(what)) => anyhow::bail!("the cluster does not serve {what}"),
        Err(e) => {
            return Err(anyhow::anyhow!("{e}")).context("reaching the cluster's API server");
        }
    }
    let store: Arc<dyn ClusterStore> = Arc::new(kube);
    let settings = OperatorSettings {
        data_dir: args.data_dir.unwrap_or_else(default_data_dir),
        dispatcher_listen: args.dispatcher_listen,
        join_listen: (!args.no_join).then_some(args.join_listen),
    };
    let op = Operator::start(store, &settings).await?;
    println!("Shoal's operator is up (cluster {}).", op.cluster_id);
    println!("  data:       {}", settings.data_dir.display());
    println!("  dispatcher: {}   (loopback)", op.dispatcher_url);
    if let Some((url, _)) = &op.join {
        println!("  join:       {url}   (mutual TLS)");
        println!(
            "  hosts join with: shoal agent --dispatcher {} --join-token \"$(cat {})\"",
            dialable(url),
            settings.data_dir.join("join-token").display()
        );
    }
    tracing::info!(
        cluster = %op.cluster_id,
        dispatcher = %op.dispatcher_url,
        "operator up (kubernetes mode)"
    );
    let why = stop_signal().await?;
    tracing::info!("{why}: shutting down");
    op.stop().await;
    tracing::info!("stopped");
    Ok(())
}
