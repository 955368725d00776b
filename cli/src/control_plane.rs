//! The control plane in one process, as `shoal server` and `shoal up` run
//! it: the Raft store on a data directory, the API server, the orchestrator
//! and scheduler, and the dispatcher — one shutdown tree.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use shoal_apiserver::RunningServer;
use shoal_dispatcher::{Dispatcher, DispatcherConfig};
use shoal_store::ClusterStore;
use shoal_store::raft::RaftStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where the control plane keeps its state and listens.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory: `store/` (the Raft store), `cluster-id`, `kubeconfig`.
    pub data_dir: PathBuf,
    /// API server address (loopback).
    pub api_listen: SocketAddr,
    /// Dispatcher address for agents (loopback).
    pub dispatcher_listen: SocketAddr,
    /// Mutual TLS address for agents of other hosts (joining with the
    /// token); any address. `None`: only the loopback dispatcher.
    pub join_listen: Option<SocketAddr>,
    /// Extra names or addresses for the API's certificate (an API beyond
    /// loopback serves HTTPS for 127.0.0.1, localhost, the host name, the
    /// listen address and these).
    pub api_names: Vec<String>,
    /// Largest accepted API request body (larger ones get 413).
    pub max_body_bytes: usize,
}

/// A running control plane.
pub struct ControlPlane {
    /// The store (shared by every component).
    pub store: Arc<dyn ClusterStore>,
    /// The cluster id (persisted in the data directory).
    pub cluster_id: String,
    /// `http://127.0.0.1:PORT` of the API.
    pub api_url: String,
    /// `http://127.0.0.1:PORT` agents dial.
    pub dispatcher_url: String,
    /// `https://ADDRESS:PORT` agents of other hosts dial, with the join token
    /// (also in `DATA_DIR/join-token`, readable by the owner only).
    pub join: Option<(String, String)>,
    /// The kubeconfig written for the API.
    pub kubeconfig: PathBuf,
    api: RunningServer,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

/// `n` random bytes from the kernel, in hex.
fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut bytes,
    )
    .context("reading /dev/urandom")?;
    Ok(shoal_proto::join::hex(&bytes))
}

/// The data directory's cluster id, created (random) on first start.
pub fn cluster_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("cluster-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = random_hex(6)?;
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

impl ControlPlane {
    /// Opens the store and starts every component.
    pub async fn start(settings: &Settings) -> anyhow::Result<ControlPlane> {
        if !settings.dispatcher_listen.ip().is_loopback() {
            anyhow::bail!(
                "--dispatcher-listen {}: the plain dispatcher listens on loopback only; agents of other hosts join over mutual TLS on --join-listen",
                settings.dispatcher_listen
            );
        }
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let cluster_id = cluster_id(&settings.data_dir)?;
        let store_dir = settings.data_dir.join("store");
        let store_dir_for_open = store_dir.clone();
        // Opening replays the log: blocking work, off the async threads.
        let raft = tokio::task::spawn_blocking(move || RaftStore::open_single(store_dir_for_open))
            .await
            .context("opening the store")?
            .with_context(|| format!("opening the store in {}", store_dir.display()))?;
        let store: Arc<dyn ClusterStore> = Arc::new(raft);
        let shutdown = CancellationToken::new();

        let dispatcher = Dispatcher::new(
            store.clone(),
            DispatcherConfig {
                cluster_id: cluster_id.clone(),
                ..Default::default()
            },
            shutdown.child_token(),
        );
        // The cluster CA: for the join listener and for an API beyond
        // loopback.
        let secure_api = !settings.api_listen.ip().is_loopback();
        let pki = if settings.join_listen.is_some() || secure_api {
            let dir = settings.data_dir.join("pki");
            let id = cluster_id.clone();
            let pki = tokio::task::spawn_blocking(move || {
                shoal_dispatcher::pki::ClusterPki::load_or_create(&dir, &id)
            })
            .await
            .context("loading the cluster CA")?
            .context("loading the cluster CA")?;
            Some(Arc::new(pki))
        } else {
            None
        };
        let security = match (&pki, secure_api) {
            (Some(pki), true) => {
                let token = api_token(&settings.data_dir)?;
                let mut names = vec![
                    "127.0.0.1".to_string(),
                    "::1".to_string(),
                    "localhost".to_string(),
                    crate::host_agent::machine_host_name(),
                ];
                if !settings.api_listen.ip().is_unspecified() {
                    names.push(settings.api_listen.ip().to_string());
                }
                names.extend(settings.api_names.iter().cloned());
                names.sort();
                names.dedup();
                let (cert_chain_pem, key_pem) = pki
                    .issue_server(&names)
                    .context("issuing the API server's certificate")?;
                Some(shoal_apiserver::Security {
                    cert_chain_pem,
                    key_pem,
                    token,
                })
            }
            _ => None,
        };
        let api_config = shoal_apiserver::Config {
            max_body_bytes: settings.max_body_bytes,
            logs: Some(Arc::new(crate::task_logs::DispatcherLogs(
                dispatcher.clone(),
            ))),
            security: security.clone(),
            ..shoal_apiserver::Config::default()
        };
        let api = RunningServer::start(settings.api_listen, store.clone(), api_config)
            .await
            .with_context(|| format!("starting the API server on {}", settings.api_listen))?;
        let kubeconfig = settings.data_dir.join("kubeconfig");
        // A client on this machine dials loopback when the API listens on
        // every address.
        let api_url = api
            .url()
            .replace("0.0.0.0", "127.0.0.1")
            .replace("[::]", "[::1]");
        match (&security, &pki) {
            (Some(sec), Some(pki)) => write_private(
                &kubeconfig,
                &shoal_apiserver::kubeconfig::kubeconfig_secure(
                    &api_url,
                    "default",
                    pki.ca_pem(),
                    &sec.token,
                ),
            )?,
            _ => shoal_apiserver::kubeconfig::write(&kubeconfig, &api_url)
                .with_context(|| format!("writing {}", kubeconfig.display()))?,
        }

        let mut tasks = Vec::new();
        tasks.extend(shoal_operator::spawn_controllers(
            store.clone(),
            Default::default(),
            Default::default(),
            shutdown.child_token(),
        ));

        let join = match (settings.join_listen, &pki) {
            (Some(addr), Some(pki)) => {
                let token = pki.token().to_string();
                write_private(&settings.data_dir.join("join-token"), &format!("{token}\n"))?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the join listener on {addr}"))?;
                let local = listener.local_addr().context("join listener address")?;
                let join_address = settings.data_dir.join("join-address");
                std::fs::write(&join_address, format!("https://{local}\n"))
                    .with_context(|| format!("writing {}", join_address.display()))?;
                let d = dispatcher.clone();
                let pki = pki.clone();
                tasks.push(tokio::spawn(
                    async move {
                        if let Err(e) = d.serve_join(listener, pki).await {
                            tracing::error!(error = %e, "join listener stopped");
                        }
                    }
                    .instrument(tracing::info_span!("join-listener")),
                ));
                Some((format!("https://{local}"), token))
            }
            _ => None,
        };

        let listener = Dispatcher::bind(settings.dispatcher_listen)
            .await
            .with_context(|| format!("binding the dispatcher on {}", settings.dispatcher_listen))?;
        let dispatcher_url = format!(
            "http://{}",
            listener.local_addr().context("dispatcher address")?
        );
        tasks.push(tokio::spawn(
            async move {
                if let Err(e) = dispatcher.serve(listener).await {
                    tracing::error!(error = %e, "dispatcher stopped");
                }
            }
            .instrument(tracing::info_span!("dispatcher")),
        ));
        Ok(ControlPlane {
            store,
            cluster_id,
            api_url,
            dispatcher_url,
            join,
            kubeconfig,
            api,
            tasks,
            shutdown,
        })
    }

    /// A token cancelled when the control plane stops (for components
    /// started beside it, like `shoal up`'s agent).
    pub fn child_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Stops every component and waits for them; the store is closed (and
    /// its last writes made durable) when its last user is gone.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let api = self.api.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
        // Dropping the last handle stops the Raft thread after a final
        // durable commit; that blocks, so do it off the async threads.
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        api.context("stopping the API server")
    }
}

/// A URL another host can dial: an unspecified listen address (0.0.0.0)
/// stands for this host's address.
pub fn dialable(url: &str) -> String {
    url.replace("0.0.0.0", "<this host's address>")
        .replace("[::]", "<this host's address>")
}

/// The API's bearer token, made on first use (`DATA_DIR/api-token`,
/// readable by its owner only; the kubeconfig carries it too).
fn api_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("api-token");
    if let Ok(s) = std::fs::read_to_string(&path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_string());
    }
    let token = random_hex(24)?;
    write_private(&path, &format!("{token}\n"))?;
    Ok(token)
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    shoal_proto::join::write_private(path, contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Default data directory: `/var/lib/shoal` for root, else
/// `$XDG_DATA_HOME/shoal` or `~/.local/share/shoal`.
pub fn default_data_dir() -> PathBuf {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if is_root {
        return PathBuf::from("/var/lib/shoal");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/shoal"),
        None => PathBuf::from(".shoal"),
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn stop_signal() -> anyhow::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; Ok("interrupt") }
    }
}
