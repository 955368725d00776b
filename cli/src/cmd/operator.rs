//! `shoal operator`: the control plane of kubernetes mode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use shoal_kubestore::KubeStore;
use shoal_kubestore::lease::{LeaderPod, LeaseConfig, LeaseElector};
use shoal_kubestore::secret::{Published, SecretFiles};
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
/// shoal.dev (and their /status) and on core events; with --state-secret,
/// get and create on that Secret; with --leader-elect, get, create and
/// update on its Lease (and get and patch on --leader-pod). Logs, exec and
/// top of tasks need Shoal's own API (--listen): the cluster's cannot
/// reach the hosts.
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
    /// Also serve Shoal's own API here, in front of the cluster: its
    /// resources as the cluster has them, plus what the cluster's API cannot
    /// serve — `shoal logs`, `exec` and `top` (the tasks' log, stats and
    /// exec subresources) through the leader's dispatcher. On loopback:
    /// plain HTTP without authentication; beyond (e.g. 0.0.0.0:6443): HTTPS
    /// with the cluster CA and the bearer tokens of DATA_DIR/api-token and
    /// api-token-view; DATA_DIR/kubeconfig points at it. Off by default.
    #[arg(long, value_name = "ADDRESS")]
    listen: Option<SocketAddr>,
    /// Another name or address clients use for --listen, for its
    /// certificate (repeatable).
    #[arg(long = "api-name", value_name = "NAME", requires = "listen")]
    api_names: Vec<String>,
    /// Keep the cluster id, the cluster CA and the join secret in this
    /// Secret (in --namespace) as well as in --data-dir: every replica
    /// shares them, and a pod moved to another node keeps them. The first
    /// operator creates it; its `join-token` key holds the agents' token.
    #[arg(long, value_name = "NAME")]
    state_secret: Option<String>,
    /// Several operators may run: one leads (holding the Lease
    /// --lease-name in --namespace) and runs the components; the others
    /// wait with their listeners closed, and one takes over within the
    /// lease's 15 s when the leader is gone (at once when it stops
    /// cleanly). Needs --state-secret, so that they share one cluster.
    #[arg(long, requires = "state_secret")]
    leader_elect: bool,
    /// The Lease of --leader-elect.
    #[arg(long, value_name = "NAME", default_value = "shoal-operator")]
    lease_name: String,
    /// With --leader-elect: this operator's pod (in --namespace), labelled
    /// shoal.dev/leader=true while it leads, so that a Service selecting
    /// that label sends agents to the leader (the Helm chart passes the
    /// pod's name).
    #[arg(
        long,
        value_name = "POD",
        env = "SHOAL_POD_NAME",
        requires = "leader_elect"
    )]
    leader_pod: Option<String>,
    /// Namespace of the Secret and the Lease. Default: the pod's own (in a
    /// cluster), else the kubeconfig context's, else `default`.
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
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
    let client = kube.client().clone();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let store: Arc<dyn ClusterStore> = Arc::new(kube);
    let settings = OperatorSettings {
        data_dir: args.data_dir.unwrap_or_else(default_data_dir),
        dispatcher_listen: args.dispatcher_listen,
        join_listen: (!args.no_join).then_some(args.join_listen),
        api_listen: args.listen,
        api_names: args.api_names.clone(),
    };
    if let Some(name) = &args.state_secret {
        share_state(&client, &namespace, name, &settings).await?;
    }
    let lease = args.leader_elect.then(|| {
        let identity = format!(
            "{}-{}",
            crate::host_agent::machine_host_name(),
            crate::control_plane::random_hex(3).unwrap_or_default()
        );
        tracing::info!(%identity, lease = %args.lease_name, %namespace, "standing for the lease");
        let pod = args
            .leader_pod
            .as_deref()
            .map(|pod| LeaderPod::new(client.clone(), &namespace, pod));
        let elector = LeaseElector::new(
            client.clone(),
            LeaseConfig::new(&namespace, &args.lease_name, &identity),
        );
        (elector, pod)
    });
    let op = Operator::start(store, &settings, lease).await?;
    println!("Shoal's operator is up (cluster {}).", op.cluster_id);
    println!("  data:       {}", settings.data_dir.display());
    println!("  dispatcher: {}   (loopback)", op.dispatcher_url);
    if let Some((url, kubeconfig)) = &op.api {
        println!("  api:        {url}");
        println!(
            "  kubeconfig: {}   (for shoal logs, exec and top)",
            kubeconfig.display()
        );
    }
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
    op.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The operator's own state shared through the Secret `namespace/name`:
/// taken from it when it exists, else made here and published (and, when
/// another replica published first, replaced with its).
async fn share_state(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    settings: &OperatorSettings,
) -> anyhow::Result<()> {
    let dir = &settings.data_dir;
    let pki = dir.join("pki");
    let files = [
        ("cluster-id", dir.join("cluster-id")),
        ("ca.crt", pki.join("ca.crt")),
        ("ca.key", pki.join("ca.key")),
        ("join-secret", pki.join("join-secret")),
        ("api-token", dir.join("api-token")),
        ("api-token-view", dir.join("api-token-view")),
    ]
    .map(|(k, p)| (k.to_string(), p));
    let secret = SecretFiles::new(client.clone(), namespace, name, files);
    let subject = format!("the Secret {namespace}/{name}");
    if secret
        .fetch()
        .await
        .with_context(|| format!("reading {subject}"))?
    {
        tracing::info!("cluster state taken from {subject}");
        return Ok(());
    }
    // None yet: this operator makes the cluster's identity.
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let id = crate::control_plane::cluster_id(dir)?;
    let made = crate::control_plane::load_pki(dir, &id).await?;
    for file in ["api-token", "api-token-view"] {
        crate::control_plane::api_token(dir, file)?;
    }
    let token = std::collections::BTreeMap::from([(
        "join-token".to_string(),
        format!("{}\n", made.token()).into_bytes(),
    )]);
    match secret
        .publish(token)
        .await
        .with_context(|| format!("creating {subject}"))?
    {
        Published::Created => tracing::info!("cluster state kept in {subject}"),
        Published::TookTheirs => {
            tracing::info!("another operator made the cluster first: its state from {subject}");
        }
    }
    Ok(())
}
