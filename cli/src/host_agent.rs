//! The agent of one host in session with a dispatcher: the engine, the
//! reconciler and the session, as `shoal up` (for its own host) and `shoal
//! agent --dispatcher` (for any other) run them.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_agent::docker::DockerEngine;
use shoal_agent::session::{EngineLogs, HostInfo, SessionConfig};
use shoal_agent::{AgentConfig, CancellationToken, ContainerEngine, Reconciler};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A connected engine and what the agent says about its host.
#[derive(Debug)]
pub struct EngineHost {
    /// The engine.
    pub engine: DockerEngine,
    /// The engine's address, as given.
    pub address: String,
    /// Engine version.
    pub version: String,
    /// Negotiated API version.
    pub api_version: String,
    /// CPUs in millicores, memory in bytes, OS and architecture.
    pub cpu_millicores: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub arch: String,
}

/// Connects to the engine at `docker_host` (default: the standard socket)
/// and reads what the host offers. The error explains how to get an engine.
pub async fn connect_engine(docker_host: Option<&str>) -> anyhow::Result<EngineHost> {
    let address = docker_host
        .map(str::to_owned)
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let engine = match DockerEngine::connect(docker_host).await {
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
    Ok(EngineHost {
        address,
        version: version.version,
        api_version: version.api_version,
        cpu_millicores: info.ncpu.and_then(|n| u64::try_from(n).ok()).unwrap_or(1) * 1000,
        memory_bytes: info
            .mem_total
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0),
        os: info
            .os_type
            .clone()
            .unwrap_or_else(|| std::env::consts::OS.into()),
        arch: info
            .architecture
            .clone()
            .unwrap_or_else(|| std::env::consts::ARCH.into()),
        engine,
    })
}

fn no_engine(address: &str, err: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "no Docker engine answers at {address} ({err}).\n\n\
         Shoal runs containers through the Docker engine of each host, and needs one on this \
         machine. Install and start it (on Debian or Ubuntu: `sudo apt-get install docker.io` then \
         `sudo systemctl start docker`, or start `sudo dockerd` by hand), or point Shoal at a running \
         engine with DOCKER_HOST=unix:///path/to/docker.sock (or --docker-host). Then run the command again."
    )
}

/// This machine's host name, lowercased, as a DNS subdomain.
pub fn machine_host_name() -> String {
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

/// A `KEY=VALUE` host label, checked.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
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

/// Who the agent is and where it reports.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The dispatchers' addresses (`http://HOST:PORT` on loopback, or the
    /// `https://` join addresses of a control plane's servers), dialled in
    /// turn; at least one.
    pub dispatcher_urls: Vec<String>,
    /// The cluster id (the agent refuses another cluster's control plane and
    /// touches only containers labelled with it).
    pub cluster_id: String,
    /// The Host object's name.
    pub host_name: String,
    /// Labels applied when the host first joins.
    pub labels: BTreeMap<String, String>,
    /// Reconciler settings.
    pub config: AgentConfig,
    /// Mutual TLS credentials (a joined host on the dispatcher's join
    /// listener), kept current by renewal; `None` on loopback.
    pub tls: Option<watch::Receiver<shoal_agent::join::Credentials>>,
    /// Where the addresses of the servers the control plane tells are kept
    /// (in the agent's state directory; with `tls`).
    pub dispatchers_file: Option<std::path::PathBuf>,
    /// Whether the control plane may run commands in this host's containers.
    pub exec_allowed: bool,
}

/// The agent's two tasks.
pub struct AgentTasks {
    /// The reconciler; ends at `stop`.
    pub reconciler: JoinHandle<()>,
    /// The session; ends at `stop` (`None`), or when the control plane
    /// refused this host for good (why), once its containers are gone.
    pub session: JoinHandle<Option<String>>,
}

/// Starts the reconciler and the session; both stop when `stop` is
/// cancelled. Containers keep running.
pub fn start(
    host: EngineHost,
    settings: AgentSettings,
    stop: CancellationToken,
) -> anyhow::Result<AgentTasks> {
    if let Some(e) = shoal_crds::labels::dns_subdomain_error(&settings.host_name) {
        anyhow::bail!("host name {:?}: {e}", settings.host_name);
    }
    let info = HostInfo {
        host_name: settings.host_name.clone(),
        labels: settings.labels,
        cpu_millicores: host.cpu_millicores,
        memory_bytes: host.memory_bytes,
        engine_version: host.version,
        engine_api_version: host.api_version,
        os: host.os,
        arch: host.arch,
    };
    let engine: Arc<dyn ContainerEngine> = Arc::new(host.engine);
    let (assigned_tx, assigned_rx) = watch::channel(None);
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let reconciler = Reconciler::new(engine.clone(), settings.config, status_tx);
    let engine_state = reconciler.engine_state();
    let host_name = settings.host_name;
    let reconciler_task = tokio::spawn(
        reconciler
            .run(assigned_rx, stop.clone())
            .instrument(tracing::info_span!("agent", host = %host_name)),
    );
    let logs = Arc::new(EngineLogs {
        engine: engine.clone(),
        cluster_id: settings.cluster_id.clone(),
        exec_allowed: settings.exec_allowed,
    });
    let cluster = settings.cluster_id.clone();
    let session_task = tokio::spawn(
        async move {
            let refused = shoal_agent::session::run(
                SessionConfig {
                    engine_state: Some(engine_state),
                    tls: settings.tls,
                    dispatchers_file: settings.dispatchers_file,
                    ..SessionConfig::with_endpoints(
                        settings.dispatcher_urls,
                        settings.cluster_id,
                        info,
                    )
                },
                assigned_tx,
                status_rx,
                logs,
                stop.clone(),
            )
            .await?;
            // The reconciler removes the cluster's containers: wait for it.
            let label = [(shoal_agent::labels::CLUSTER.to_string(), cluster)];
            for _ in 0..150 {
                match engine.list(&label).await {
                    Ok(l) if l.is_empty() => break,
                    _ => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    () = stop.cancelled() => break,
                }
            }
            Some(refused)
        }
        .instrument(tracing::info_span!("agent-session", host = %host_name)),
    );
    Ok(AgentTasks {
        reconciler: reconciler_task,
        session: session_task,
    })
}
