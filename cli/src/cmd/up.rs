//! `shoal up`: the whole of Shoal on this host in one command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shoal_agent::AgentConfig;

use crate::control_plane::{ControlPlane, Settings, default_data_dir, stop_signal};
use crate::host_agent::{self, AgentSettings, connect_engine, machine_host_name, parse_label};

/// Start Shoal on this host: control plane and local agent
///
/// Starts the store, the API server (Kubernetes dialect: kubectl and the
/// shoal CLI work against it), the orchestrator, the scheduler and the
/// dispatcher, plus an agent driving the local Docker engine; writes a
/// kubeconfig; prints what to run next. Run it again on the same data
/// directory to resume: running containers are adopted, not restarted.
/// SIGTERM or Ctrl-C stops Shoal gracefully and leaves the containers
/// running.
///
/// With --join-listen, other machines join as hosts over mutual TLS (`shoal
/// agent --dispatcher https://… --join-token …`, the token in
/// DATA_DIR/join-token); with a --listen beyond loopback, the API serves
/// HTTPS and requires the token in the kubeconfig it writes.
///
/// The local agent allows any bind mount and added capability, since the
/// control plane is on this machine; give --allow-bind or --allow-cap to
/// allow exactly those instead (`shoal agent` allows none unless told).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data directory (store, cluster id, kubeconfig). Default:
    /// /var/lib/shoal for root, else ~/.local/share/shoal.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// API server address. On loopback: plain HTTP without authentication
    /// (dev mode). Beyond (e.g. 0.0.0.0:6443): HTTPS with the cluster CA and
    /// a bearer token, both in the kubeconfig written.
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
    /// Name of this host (default: the machine's host name).
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// Label of this host as KEY=VALUE, applied when it first joins
    /// (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Docker engine address (unix:///path); default DOCKER_HOST, else the
    /// standard socket.
    #[arg(long, env = "DOCKER_HOST", value_name = "ADDRESS")]
    docker_host: Option<String>,
    /// Engine actions (create, start, stop) the local agent runs at once.
    #[arg(long, env = "SHOAL_AGENT_MAX_CONCURRENCY", default_value_t = 16)]
    max_concurrency: usize,
    #[command(flatten)]
    policy: crate::policy_args::PolicyArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(up(args))
}

async fn up(args: Args) -> anyhow::Result<ExitCode> {
    let host = connect_engine(args.docker_host.as_deref()).await?;
    let (version, api_version, address) = (
        host.version.clone(),
        host.api_version.clone(),
        host.address.clone(),
    );
    let host_name = args.host_name.clone().unwrap_or_else(machine_host_name);
    if let Some(e) = shoal_crds::labels::dns_subdomain_error(&host_name) {
        anyhow::bail!("--host-name: {e}");
    }

    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let settings = Settings {
        data_dir: data_dir.clone(),
        api_listen: args.listen,
        dispatcher_listen: args.dispatcher_listen,
        join_listen: args.join_listen,
        api_names: args.api_names.clone(),
        max_body_bytes: 3 * 1024 * 1024,
        ha: None,
    };
    let cp = ControlPlane::start(&settings).await?;
    let agent = AgentSettings {
        dispatcher_urls: vec![cp.dispatcher_url.clone()],
        cluster_id: cp.cluster_id.clone(),
        host_name: host_name.clone(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        config: AgentConfig {
            policy: args.policy.to_policy(true),
            max_concurrency: args.max_concurrency,
            ..AgentConfig::new(cp.cluster_id.clone())
        },
        tls: None,
        dispatchers_file: None,
        exec_allowed: !args.policy.no_exec,
    };
    let host_agent::AgentTasks {
        reconciler: reconciler_task,
        session: session_task,
    } = host_agent::start(host, agent, cp.child_token())?;

    println!("Shoal is up on {host_name} (cluster {}).", cp.cluster_id);
    if cp.api_url.starts_with("https://") {
        println!(
            "  API:        {}   (HTTPS; the kubeconfig holds the CA and the token)",
            cp.api_url
        );
    } else {
        println!(
            "  API:        {}   (dev mode: no authentication, loopback only)",
            cp.api_url
        );
    }
    println!("  kubeconfig: {}", cp.kubeconfig.display());
    println!("  data:       {}", data_dir.display());
    match &cp.join {
        Some((url, _)) => {
            println!("  dispatcher: {}   (loopback)", cp.dispatcher_url);
            println!("  join:       {url}   (mutual TLS)");
            println!(
                "              another host joins with: shoal agent --dispatcher {} --join-token \"$(cat {})\"",
                crate::control_plane::dialable(url),
                data_dir.join("join-token").display()
            );
            println!("              (`shoal join-token` prints that command with the token)");
        }
        None => println!(
            "  dispatcher: {}   (loopback; for other hosts, start with --join-listen 0.0.0.0:6445)",
            cp.dispatcher_url
        ),
    }
    println!(
        "  engine:     Docker {} (API {}) at {}",
        version, api_version, address
    );
    println!();
    println!("Next:");
    println!("  export KUBECONFIG={}", cp.kubeconfig.display());
    println!("  kubectl apply -f examples/web.yaml");
    println!("  kubectl get ssvc,tasks");
    println!();
    println!("Stop with Ctrl-C (containers keep running; `shoal up` again resumes).");

    let why = stop_signal().await?;
    tracing::info!("{why}: stopping Shoal (containers keep running)");
    cp.stop().await?;
    let _ = reconciler_task.await;
    let _ = session_task.await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
