//! `shoal up`: the whole of Shoal on this host in one command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use shoal_agent::docker::DockerEngine;
use shoal_agent::session::{EngineLogs, HostInfo, SessionConfig};
use shoal_agent::{AgentConfig, ContainerEngine, Reconciler};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::control_plane::{ControlPlane, Settings, default_data_dir, stop_signal};

/// Start Shoal on this host: control plane and local agent
///
/// Starts the store, the API server (Kubernetes dialect: kubectl and the
/// shoal CLI work against it), the orchestrator, the scheduler and the
/// dispatcher, plus an agent driving the local Docker engine; writes a
/// kubeconfig; prints what to run next. Run it again on the same data
/// directory to resume: running containers are adopted, not restarted.
/// SIGTERM or Ctrl-C stops Shoal gracefully and leaves the containers
/// running.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data directory (store, cluster id, kubeconfig). Default:
    /// /var/lib/shoal for root, else ~/.local/share/shoal.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// API server address (loopback only until authentication exists).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address agents dial (loopback only until mutual TLS exists).
    #[arg(long, default_value = "127.0.0.1:6444")]
    dispatcher_listen: SocketAddr,
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
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if let Some(e) =
        shoal_crds::labels::label_key_error(k).or_else(|| shoal_crds::labels::label_value_error(v))
    {
        return Err(e);
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(up(args))
}

/// This machine's host name, lowercased, as a DNS subdomain.
fn machine_host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c| c == '-' || c == '.').to_string();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

fn no_engine(address: &str, err: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "no Docker engine answers at {address} ({err}).\n\n\
         Shoal runs containers through the Docker engine of each host, and `shoal up` needs one on this \
         machine. Install and start it (on Debian or Ubuntu: `sudo apt-get install docker.io` then \
         `sudo systemctl start docker`, or start `sudo dockerd` by hand), or point Shoal at a running \
         engine with DOCKER_HOST=unix:///path/to/docker.sock (or --docker-host). Then run `shoal up` again."
    )
}

async fn up(args: Args) -> anyhow::Result<ExitCode> {
    let address = args
        .docker_host
        .clone()
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let engine = match DockerEngine::connect(args.docker_host.as_deref()).await {
        Ok(e) => e,
        Err(e) => return Err(no_engine(&address, &e)),
    };
    let version = match engine.version().await {
        Ok(v) => v,
        Err(e) => return Err(no_engine(engine.address(), &e)),
    };
    let info = engine
        .client()
        .info()
        .await
        .map_err(|e| no_engine(engine.address(), &e))?;

    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let settings = Settings {
        data_dir: data_dir.clone(),
        api_listen: args.listen,
        dispatcher_listen: args.dispatcher_listen,
        max_body_bytes: 3 * 1024 * 1024,
    };
    let cp = ControlPlane::start(&settings).await?;

    let host_name = args.host_name.clone().unwrap_or_else(machine_host_name);
    if let Some(e) = shoal_crds::labels::dns_subdomain_error(&host_name) {
        anyhow::bail!("--host-name: {e}");
    }
    let host = HostInfo {
        host_name: host_name.clone(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        cpu_millicores: info.ncpu.and_then(|n| u64::try_from(n).ok()).unwrap_or(1) * 1000,
        memory_bytes: info
            .mem_total
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0),
        engine_version: version.version.clone(),
        engine_api_version: version.api_version.clone(),
        os: info
            .os_type
            .clone()
            .unwrap_or_else(|| std::env::consts::OS.into()),
        arch: info
            .architecture
            .clone()
            .unwrap_or_else(|| std::env::consts::ARCH.into()),
    };
    let engine: Arc<dyn ContainerEngine> = Arc::new(engine);
    let (assigned_tx, assigned_rx) = watch::channel(None);
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let reconciler = Reconciler::new(
        engine.clone(),
        AgentConfig::new(cp.cluster_id.clone()),
        status_tx,
    );
    let agent_stop = cp.child_token();
    let reconciler_task = tokio::spawn(
        reconciler
            .run(assigned_rx, agent_stop.clone())
            .instrument(tracing::info_span!("agent", host = %host_name)),
    );
    let logs = Arc::new(EngineLogs {
        engine: engine.clone(),
        cluster_id: cp.cluster_id.clone(),
    });
    let session_task = tokio::spawn(
        shoal_agent::session::run(
            SessionConfig::new(cp.dispatcher_url.clone(), cp.cluster_id.clone(), host),
            assigned_tx,
            status_rx,
            logs,
            agent_stop,
        )
        .instrument(tracing::info_span!("agent-session", host = %host_name)),
    );

    println!("Shoal is up on {host_name} (cluster {}).", cp.cluster_id);
    println!(
        "  API:        {}   (no authentication: loopback only)",
        cp.api_url
    );
    println!("  kubeconfig: {}", cp.kubeconfig.display());
    println!("  data:       {}", data_dir.display());
    println!(
        "  engine:     Docker {} (API {}) at {}",
        version.version, version.api_version, address
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
