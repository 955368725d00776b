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
/// One server of a highly available control plane: this node's id, where
/// it listens for its peers, and the peers.
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// This server's Raft node id (non-zero, unique in the cluster).
    pub node_id: u64,
    /// Where the other servers reach this one (mutual TLS, cluster CA).
    pub raft_listen: SocketAddr,
    /// The other servers: node id → `https://HOST:PORT` of their
    /// `raft_listen`.
    pub peers: std::collections::BTreeMap<u64, String>,
    /// Join a running control plane (`peers` are some of its servers): an
    /// empty store waits to be added as a voter instead of bootstrapping.
    pub join: bool,
    /// `https://HOST:PORT` where the others reach this server (told them when
    /// joining).
    pub advertise: String,
    /// `https://HOST:PORT` where agents of other hosts reach this server's
    /// join listener: named to the peers, and told by the leader to its
    /// agents with every other server's. `None`: not told.
    pub join_advertise: Option<String>,
}

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
    /// One server of several (Raft peers); `None`: a lone server.
    pub ha: Option<HaSettings>,
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
pub(crate) fn random_hex(n: usize) -> anyhow::Result<String> {
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

/// Checks the plain dispatcher's address (loopback only), makes the data
/// directory and returns its cluster id.
fn prepare(dispatcher_listen: SocketAddr, data_dir: &Path) -> anyhow::Result<String> {
    if !dispatcher_listen.ip().is_loopback() {
        anyhow::bail!(
            "--dispatcher-listen {dispatcher_listen}: the plain dispatcher listens on loopback only; agents of other hosts join over mutual TLS on --join-listen"
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    cluster_id(data_dir)
}

/// The cluster CA of `DATA_DIR/pki`, made on first use (blocking work, off
/// the async threads).
pub(crate) async fn load_pki(
    data_dir: &Path,
    cluster_id: &str,
) -> anyhow::Result<Arc<shoal_dispatcher::pki::ClusterPki>> {
    let (dir, id) = (data_dir.join("pki"), cluster_id.to_owned());
    let pki = tokio::task::spawn_blocking(move || {
        shoal_dispatcher::pki::ClusterPki::load_or_create(&dir, &id)
    })
    .await
    .context("loading the cluster CA")?
    .context("loading the cluster CA")?;
    Ok(Arc::new(pki))
}

/// The API's TLS and tokens when it listens beyond loopback (`None` on
/// loopback: dev mode): a certificate of the cluster CA for 127.0.0.1,
/// localhost, the host name, the listen address and `names`; the tokens of
/// `DATA_DIR/api-token` and `api-token-view`, made on first use.
fn api_security(
    pki: Option<&shoal_dispatcher::pki::ClusterPki>,
    data_dir: &Path,
    listen: SocketAddr,
    names: &[String],
) -> anyhow::Result<Option<shoal_apiserver::Security>> {
    let Some(pki) = pki.filter(|_| !listen.ip().is_loopback()) else {
        return Ok(None);
    };
    let token = api_token(data_dir, "api-token")?;
    let view_token = api_token(data_dir, "api-token-view")?;
    let mut all = vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
        crate::host_agent::machine_host_name(),
    ];
    if !listen.ip().is_unspecified() {
        all.push(listen.ip().to_string());
    }
    all.extend(names.iter().cloned());
    all.sort();
    all.dedup();
    let (cert_chain_pem, key_pem) = pki
        .issue_server(&all)
        .context("issuing the API server's certificate")?;
    Ok(Some(shoal_apiserver::Security {
        cert_chain_pem,
        key_pem,
        token,
        view_token: Some(view_token),
    }))
}

/// Writes `DATA_DIR/kubeconfig` for the running API (and, with a read-only
/// token, `kubeconfig-view`); returns its path and the URL a client on
/// this machine dials.
fn write_kubeconfigs(
    data_dir: &Path,
    api: &RunningServer,
    security: Option<&shoal_apiserver::Security>,
    pki: Option<&shoal_dispatcher::pki::ClusterPki>,
) -> anyhow::Result<(PathBuf, String)> {
    let kubeconfig = data_dir.join("kubeconfig");
    // A client on this machine dials loopback when the API listens on
    // every address.
    let api_url = api
        .url()
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    match (security, pki) {
        (Some(sec), Some(pki)) => {
            write_private(
                &kubeconfig,
                &shoal_apiserver::kubeconfig::kubeconfig_secure(
                    &api_url,
                    "default",
                    pki.ca_pem(),
                    &sec.token,
                ),
            )?;
            // The same with the read-only token: for dashboards,
            // monitoring and people who only look.
            if let Some(view) = &sec.view_token {
                write_private(
                    &data_dir.join("kubeconfig-view"),
                    &shoal_apiserver::kubeconfig::kubeconfig_secure(
                        &api_url,
                        "default",
                        pki.ca_pem(),
                        view,
                    ),
                )?;
            }
        }
        _ => shoal_apiserver::kubeconfig::write(&kubeconfig, &api_url)
            .with_context(|| format!("writing {}", kubeconfig.display()))?,
    }
    Ok((kubeconfig, api_url))
}

impl ControlPlane {
    /// Opens the store and starts every component. In a highly available
    /// control plane (`settings.ha`), the store is one Raft voter among the
    /// peers, and the orchestrator, the scheduler and the dispatcher run
    /// only while this server leads (the API serves on every server).
    pub async fn start(settings: &Settings) -> anyhow::Result<ControlPlane> {
        let cluster_id = prepare(settings.dispatcher_listen, &settings.data_dir)?;
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        // The cluster CA: for the join listener, for an API beyond loopback,
        // and between the servers of a highly available control plane.
        let secure_api = !settings.api_listen.ip().is_loopback();
        let pki = if settings.join_listen.is_some() || secure_api || settings.ha.is_some() {
            Some(load_pki(&settings.data_dir, &cluster_id).await?)
        } else {
            None
        };

        // The dispatcher of the moment (none while another server leads):
        // logs are read through it.
        let (current, current_rx) = tokio::sync::watch::channel(None);
        // A leader serves its peers' log requests through it.
        let peer_logs = Arc::new(crate::task_logs::LeaderLogs {
            store: Arc::default(),
            logs: crate::task_logs::DispatcherLogs {
                current: current_rx.clone(),
                via_leader: None,
            },
        });
        let store_dir = settings.data_dir.join("store");
        let raft = match (&settings.ha, &pki) {
            (Some(ha), Some(pki)) => {
                open_replicated(
                    ha,
                    pki,
                    &store_dir,
                    peer_logs.clone(),
                    &shutdown,
                    &mut tasks,
                )
                .await?
            }
            _ => {
                let dir = store_dir.clone();
                // Opening replays the log: blocking work, off the async threads.
                let raft = tokio::task::spawn_blocking(move || RaftStore::open_single(dir))
                    .await
                    .context("opening the store")?
                    .with_context(|| format!("opening the store in {}", store_dir.display()))?;
                (Arc::new(raft), None)
            }
        };
        let (raft, members) = raft;
        // The servers' join addresses, for the leader's agents: this one's
        // first, then every other voter's as it named it.
        let servers = match (
            &members,
            settings.ha.as_ref().and_then(|h| h.join_advertise.clone()),
        ) {
            (Some(m), Some(own)) => {
                let (tx, rx) = tokio::sync::watch::channel(m.join_addresses(&own));
                let (m, stop) = (m.clone(), shutdown.child_token());
                tasks.push(tokio::spawn(
                    async move {
                        loop {
                            tokio::select! {
                                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                                () = stop.cancelled() => return,
                            }
                            let now = m.join_addresses(&own);
                            tx.send_if_modified(|old| {
                                let changed = *old != now;
                                if changed {
                                    tracing::info!(servers = ?now, "the servers' join addresses");
                                    *old = now;
                                }
                                changed
                            });
                        }
                    }
                    .instrument(tracing::info_span!("server-addresses")),
                ));
                Some(rx)
            }
            _ => None,
        };
        let store: Arc<dyn ClusterStore> = raft.clone();
        let _ = peer_logs.store.set(store.clone());
        // A server that does not lead reads logs through the leader.
        let via_leader = match (&settings.ha, &pki) {
            (Some(ha), Some(pki)) => Some(crate::task_logs::LeaderRoute {
                raft: raft.clone(),
                peers: ha.peers.clone(),
                tls: pki
                    .peer_client_tls(ha.node_id)
                    .context("issuing this server's peer certificate")?,
            }),
            _ => None,
        };

        let security = api_security(
            pki.as_deref(),
            &settings.data_dir,
            settings.api_listen,
            &settings.api_names,
        )?;
        let server_metrics = Arc::new(crate::server_metrics::ServerMetrics {
            raft: raft.clone(),
            current: current_rx.clone(),
        });
        // Logs and stats of tasks come through the same bridge.
        let bridge = Arc::new(crate::task_logs::DispatcherLogs {
            current: current_rx,
            via_leader,
        });
        let api_config = shoal_apiserver::Config {
            max_body_bytes: settings.max_body_bytes,
            logs: Some(bridge.clone()),
            stats: Some(bridge.clone()),
            exec: Some(bridge),
            metrics: Some(server_metrics),
            security: security.clone(),
            members: members.map(|m| m as Arc<dyn shoal_apiserver::Members>),
            ..shoal_apiserver::Config::default()
        };
        let api = RunningServer::start(settings.api_listen, store.clone(), api_config)
            .await
            .with_context(|| format!("starting the API server on {}", settings.api_listen))?;
        let (kubeconfig, api_url) =
            write_kubeconfigs(&settings.data_dir, &api, security.as_ref(), pki.as_deref())?;

        let join_token = match (settings.join_listen, &pki) {
            (Some(_), Some(pki)) => {
                let token = pki.token().to_string();
                write_private(&settings.data_dir.join("join-token"), &format!("{token}\n"))?;
                Some(token)
            }
            _ => None,
        };
        let leader = Leader {
            store: store.clone(),
            cluster_id: cluster_id.clone(),
            pki: pki.clone(),
            dispatcher_listen: settings.dispatcher_listen,
            join_listen: settings.join_listen.filter(|_| join_token.is_some()),
            data_dir: settings.data_dir.clone(),
            current,
            // After a leader change agents look for the new leader first.
            startup_grace: settings.ha.as_ref().map(|_| HA_STARTUP_GRACE),
            servers,
        };
        let (dispatcher_url, join_url) = if settings.ha.is_none() {
            // A lone server leads from the start: its listeners' errors
            // are start-up errors.
            let running = leader.start(shutdown.child_token()).await?;
            let urls = (running.dispatcher_url.clone(), running.join_url.clone());
            tasks.extend(running.tasks);
            urls
        } else {
            let urls = (
                format!("http://{}", settings.dispatcher_listen),
                settings.join_listen.map(|a| format!("https://{a}")),
            );
            let r = raft.clone();
            let stop = shutdown.child_token();
            tasks.push(tokio::spawn(
                async move { lead_while(Leadership::Raft(r), leader, stop).await }
                    .instrument(tracing::info_span!("leadership")),
            ));
            urls
        };
        Ok(ControlPlane {
            store,
            cluster_id,
            api_url,
            dispatcher_url,
            join: join_url.zip(join_token),
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

/// How long a new operator's dispatcher waits for the hosts it has not
/// heard from yet before it declares them lost.
const OPERATOR_STARTUP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a new leader's dispatcher waits for the hosts it has not heard
/// from yet before it declares them lost: they first have to find it.
const HA_STARTUP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens this server's Raft voter among its peers: the peer listener (mutual
/// TLS with the cluster CA) and the network transport first, then the store,
/// which waits for a quorum.
async fn open_replicated(
    ha: &HaSettings,
    pki: &Arc<shoal_dispatcher::pki::ClusterPki>,
    store_dir: &Path,
    logs: Arc<crate::task_logs::LeaderLogs>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<(Arc<RaftStore>, Option<Arc<RaftMembers>>)> {
    use shoal_dispatcher::peers::{NetTransport, serve_peers};
    if ha.peers.contains_key(&ha.node_id) {
        anyhow::bail!("--peer: node {} is this server (--node-id)", ha.node_id);
    }
    NetTransport::check_peers(&ha.peers).context("--peer")?;
    let listener = tokio::net::TcpListener::bind(ha.raft_listen)
        .await
        .with_context(|| format!("binding the peer listener on {}", ha.raft_listen))?;
    let tls = pki
        .peer_client_tls(ha.node_id)
        .context("issuing this server's peer certificate")?;
    // The join address is set before the peers are dialled: every call
    // names it.
    let transport = NetTransport::new(
        ha.node_id,
        std::collections::BTreeMap::new(),
        tls.clone(),
        tokio::runtime::Handle::current(),
        shutdown.child_token(),
    );
    if let Some(url) = &ha.join_advertise {
        transport.set_join_url(url).context("--join-advertise")?;
    }
    for (id, address) in &ha.peers {
        shoal_store::raft::Transport::set_peer(transport.as_ref(), *id, Some(address));
    }
    let (p, id, t, stop) = (
        pki.clone(),
        ha.node_id,
        transport.clone(),
        shutdown.child_token(),
    );
    tasks.push(tokio::spawn(
        async move {
            if let Err(e) = serve_peers(listener, p, id, t, Some(logs), stop).await {
                tracing::error!(error = %e, "peer listener stopped");
            }
        }
        .instrument(tracing::info_span!("raft-peers")),
    ));
    // A joining server bootstraps nothing: it waits to be added.
    let voters: Vec<u64> = if ha.join {
        Vec::new()
    } else {
        let mut v: Vec<u64> = ha.peers.keys().copied().collect();
        v.push(ha.node_id);
        v.sort_unstable();
        v
    };
    // A shorter tick than a lone server's: a dead leader is replaced after
    // 0.5-1 s without a word from it.
    let config = shoal_store::raft::RaftConfig {
        id: ha.node_id,
        voters,
        tick: std::time::Duration::from_millis(50),
        ..shoal_store::raft::RaftConfig::single(store_dir)
    };
    let dir = store_dir.to_owned();
    let dyn_transport: Arc<dyn shoal_store::raft::Transport> = transport.clone();
    let raft = tokio::task::spawn_blocking(move || RaftStore::open(config, dyn_transport))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let raft = Arc::new(raft);
    transport.set_membership(raft.clone());
    if raft.status().voters.is_empty() {
        if !ha.join {
            anyhow::bail!(
                "this server's store has no members: it was started with --join and never added; start it with --join again"
            );
        }
        join(ha, &raft, &tls, shutdown).await?;
    }
    let members = Arc::new(RaftMembers {
        raft: raft.clone(),
        transport,
        self_id: ha.node_id,
        self_address: ha.advertise.clone(),
        self_join_address: ha.join_advertise.clone(),
    });
    Ok((raft, Some(members)))
}

/// Asks the servers of `ha.peers` to add this one to the voters (again
/// every second while none agrees), then waits for the leader's snapshot.
async fn join(
    ha: &HaSettings,
    raft: &RaftStore,
    tls: &tonic::transport::ClientTlsConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(address = %ha.advertise, "joining the control plane");
    loop {
        match shoal_dispatcher::peers::join_voters(ha.node_id, &ha.advertise, &ha.peers, tls).await
        {
            Ok(voters) => {
                tracing::info!(?voters, "added to the voters");
                break;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "not added yet; trying again in 1 s");
            }
            Err(e) => return Err(e).context("--join"),
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => anyhow::bail!("stopped before joining"),
        }
    }
    // The leader sends the state with a snapshot; serve nothing before.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !raft.status().voters.contains(&ha.node_id) {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("added to the voters, but no state came from the leader within 60 s");
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            () = shutdown.cancelled() => anyhow::bail!("stopped before catching up"),
        }
    }
    tracing::info!(voters = ?raft.status().voters, "caught up with the control plane");
    Ok(())
}

/// The servers of a replicated control plane, for the API's
/// `/shoal/v1/servers`.
#[derive(Debug)]
pub struct RaftMembers {
    raft: Arc<RaftStore>,
    transport: Arc<shoal_dispatcher::peers::NetTransport>,
    self_id: u64,
    self_address: String,
    self_join_address: Option<String>,
}

impl RaftMembers {
    /// The voters' join addresses: `own` (this server's) first, then the
    /// others' in id order, as they named them to this server (a voter not
    /// heard from yet is left out).
    fn join_addresses(&self, own: &str) -> Vec<String> {
        let mut voters = self.raft.status().voters;
        voters.sort_unstable();
        let named = self.transport.join_urls();
        let mut list = vec![own.to_owned()];
        for id in voters.iter().filter(|id| **id != self.self_id) {
            if let Some(url) = named.get(id)
                && !list.contains(url)
            {
                list.push(url.clone());
            }
        }
        list
    }
}

impl shoal_apiserver::Members for RaftMembers {
    fn list(&self) -> Vec<shoal_apiserver::Member> {
        let mut status = self.raft.status();
        status.voters.sort_unstable();
        let mut addresses = self.transport.peers();
        addresses.insert(self.self_id, self.self_address.clone());
        let mut joins = self.transport.join_urls();
        if let Some(own) = &self.self_join_address {
            joins.insert(self.self_id, own.clone());
        }
        status
            .voters
            .iter()
            .map(|id| shoal_apiserver::Member {
                id: *id,
                address: addresses.get(id).cloned().unwrap_or_default(),
                leader: status.leader_id == *id,
                answering: *id == self.self_id,
                join_address: joins.get(id).cloned(),
            })
            .collect()
    }

    fn remove(
        &self,
        id: u64,
    ) -> futures::future::BoxFuture<'_, Result<Vec<u64>, shoal_store::StoreError>> {
        Box::pin(async move {
            let voters = self.raft.status().voters;
            if !voters.contains(&id) {
                return Err(shoal_store::StoreError::NotFound(format!(
                    "server {id} is not a voter (voters: {voters:?})"
                )));
            }
            if voters.len() == 1 {
                return Err(shoal_store::StoreError::Invalid(format!(
                    "server {id} is the last voter: removing it would leave no control plane"
                )));
            }
            self.raft.remove_voter(id).await?;
            Ok(self.raft.status().voters)
        })
    }
}

/// What runs only on the leader: the orchestrator, the scheduler and the
/// dispatcher (its listeners too, so agents find the leader by trying the
/// servers in turn).
#[derive(Clone)]
struct Leader {
    store: Arc<dyn ClusterStore>,
    cluster_id: String,
    pki: Option<Arc<shoal_dispatcher::pki::ClusterPki>>,
    dispatcher_listen: SocketAddr,
    join_listen: Option<SocketAddr>,
    data_dir: PathBuf,
    current: tokio::sync::watch::Sender<Option<Dispatcher>>,
    startup_grace: Option<std::time::Duration>,
    /// The servers' join addresses, told to agents.
    servers: Option<tokio::sync::watch::Receiver<Vec<String>>>,
}

/// The leader's components, running.
struct Running {
    tasks: Vec<JoinHandle<()>>,
    dispatcher_url: String,
    join_url: Option<String>,
}

impl Leader {
    /// Starts the components; they stop at `stop`.
    async fn start(&self, stop: CancellationToken) -> anyhow::Result<Running> {
        // The listeners first: a port not yet free fails the start before
        // anything runs.
        let join = match (self.join_listen, &self.pki) {
            (Some(addr), Some(pki)) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the join listener on {addr}"))?;
                let local = listener.local_addr().context("join listener address")?;
                let join_address = self.data_dir.join("join-address");
                std::fs::write(&join_address, format!("https://{local}\n"))
                    .with_context(|| format!("writing {}", join_address.display()))?;
                Some((listener, pki.clone(), format!("https://{local}")))
            }
            _ => None,
        };
        let listener = Dispatcher::bind(self.dispatcher_listen)
            .await
            .with_context(|| format!("binding the dispatcher on {}", self.dispatcher_listen))?;
        let dispatcher_url = format!(
            "http://{}",
            listener.local_addr().context("dispatcher address")?
        );

        let config = DispatcherConfig {
            cluster_id: self.cluster_id.clone(),
            startup_grace: self.startup_grace,
            servers: self.servers.clone(),
            ..Default::default()
        };
        let dispatcher = Dispatcher::new(self.store.clone(), config, stop.clone());
        let mut tasks: Vec<JoinHandle<()>> = shoal_operator::spawn_controllers(
            self.store.clone(),
            Default::default(),
            Default::default(),
            stop.clone(),
        )
        .into();
        let join_url = join.map(|(listener, pki, url)| {
            let d = dispatcher.clone();
            tasks.push(tokio::spawn(
                async move {
                    if let Err(e) = d.serve_join(listener, pki).await {
                        tracing::error!(error = %e, "join listener stopped");
                    }
                }
                .instrument(tracing::info_span!("join-listener")),
            ));
            url
        });
        self.current.send_replace(Some(dispatcher.clone()));
        tasks.push(tokio::spawn(
            async move {
                if let Err(e) = dispatcher.serve(listener).await {
                    tracing::error!(error = %e, "dispatcher stopped");
                }
            }
            .instrument(tracing::info_span!("dispatcher")),
        ));
        Ok(Running {
            tasks,
            dispatcher_url,
            join_url,
        })
    }
}

/// Who leads: the Raft leader among `shoal server`s, or the holder of a
/// Kubernetes Lease among operators.
pub(crate) enum Leadership {
    Raft(Arc<RaftStore>),
    /// A lease, and the pod to label while holding it.
    Lease(Box<LeaseHolder>),
}

/// A candidate for the operators' lease.
pub(crate) struct LeaseHolder {
    elector: shoal_kubestore::lease::LeaseElector,
    pod: Option<shoal_kubestore::lease::LeaderPod>,
}

impl Leadership {
    /// Waits until this process leads: `false` if `stop` came first.
    async fn acquire(&mut self, stop: &CancellationToken) -> bool {
        loop {
            let pause = match self {
                Leadership::Raft(raft) => {
                    if raft.status().is_leader {
                        return true;
                    }
                    RAFT_POLL
                }
                Leadership::Lease(h) => {
                    match h.elector.try_acquire_or_renew().await {
                        Ok(true) => return true,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot read the lease; retrying"),
                    }
                    h.elector.config().retry
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return false,
            }
        }
    }

    /// Returns when this process no longer leads, or at `stop`. A lease
    /// holder renews it; one that could not for its renew deadline stops
    /// leading before any other candidate may start.
    async fn hold(&mut self, stop: &CancellationToken) {
        let mut renewed = tokio::time::Instant::now();
        loop {
            let pause = match self {
                Leadership::Raft(_) => RAFT_POLL,
                Leadership::Lease(h) => h.elector.config().retry,
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
            match self {
                Leadership::Raft(raft) => {
                    if !raft.status().is_leader {
                        return;
                    }
                }
                Leadership::Lease(h) => match h.elector.try_acquire_or_renew().await {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::warn!("the lease went to another operator");
                        return;
                    }
                    Err(e) if renewed.elapsed() >= h.elector.config().renew_deadline => {
                        tracing::warn!(error = %e, "could not renew the lease in time");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the lease; retrying"),
                },
            }
        }
    }

    /// Labels this operator's pod as the leader's (or no longer): a
    /// Service selecting the label reaches the leader only. A failure is
    /// logged; the next term tries again.
    async fn mark(&self, leading: bool) {
        if let Leadership::Lease(h) = self
            && let Some(pod) = &h.pod
            && let Err(e) = pod.mark(leading).await
        {
            tracing::warn!(error = %e, leading, "cannot label this operator's pod");
        }
    }

    /// Lets another take over at once (after this one stopped leading).
    async fn resign(&mut self) {
        if let Leadership::Lease(h) = self
            && let Err(e) = h.elector.release().await
        {
            tracing::warn!(error = %e, "cannot release the lease (it expires on its own)");
        }
    }
}

/// How often a server checks whether it leads the Raft group.
const RAFT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs the leader's components while this process leads, until `stop`.
async fn lead_while(mut leadership: Leadership, leader: Leader, stop: CancellationToken) {
    // A label left by this pod's previous process (one that crashed while
    // leading) would send agents to a standby.
    leadership.mark(false).await;
    loop {
        if !leadership.acquire(&stop).await {
            return;
        }
        let term = stop.child_token();
        let running = match leader.start(term.clone()).await {
            Ok(r) => r,
            Err(e) => {
                // E.g. the old listener's port not yet free: again shortly.
                tracing::warn!(error = %format!("{e:#}"), "cannot start leading yet");
                term.cancel();
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue,
                    () = stop.cancelled() => {
                        leadership.resign().await;
                        return;
                    }
                }
            }
        };
        tracing::info!("leading: orchestrator, scheduler and dispatcher started");
        leadership.mark(true).await;
        // Lead until another process does (or this one stops).
        leadership.hold(&stop).await;
        leadership.mark(false).await;
        term.cancel();
        leader.current.send_replace(None);
        for t in running.tasks {
            let _ = t.await;
        }
        if stop.is_cancelled() {
            leadership.resign().await;
            return;
        }
        tracing::warn!("no longer the leader: orchestrator, scheduler and dispatcher stopped");
    }
}

/// A URL another host can dial: an unspecified listen address (0.0.0.0)
/// stands for this host's address.
pub fn dialable(url: &str) -> String {
    url.replace("0.0.0.0", "<this host's address>")
        .replace("[::]", "<this host's address>")
}

/// A bearer token of the API, made on first use (`DATA_DIR/FILE`, readable
/// by its owner only; a kubeconfig carries it too): `api-token` may do
/// anything, `api-token-view` only read.
pub(crate) fn api_token(data_dir: &Path, file: &str) -> anyhow::Result<String> {
    let path = data_dir.join(file);
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

/// Where `shoal operator` (kubernetes mode) keeps its own state and
/// listens: desired state lives in the cluster, so only the cluster id and
/// the cluster CA are on disk.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// `cluster-id`, `pki/`, `join-token`, `join-address`.
    pub data_dir: PathBuf,
    /// Address an agent on the same machine dials, without TLS (loopback).
    pub dispatcher_listen: SocketAddr,
    /// Address agents of other hosts dial, with mutual TLS, after joining
    /// with the token in `DATA_DIR/join-token`. `None`: loopback only.
    pub join_listen: Option<SocketAddr>,
    /// Shoal's own API in front of the cluster (its resources, and the
    /// logs, stats and exec of tasks through the dispatcher): plain HTTP on
    /// loopback, HTTPS with the cluster CA and the tokens of `DATA_DIR`
    /// beyond. `None`: not served.
    pub api_listen: Option<SocketAddr>,
    /// Extra names or addresses for the API's certificate.
    pub api_names: Vec<String>,
}

/// The control plane over a Kubernetes cluster's API: the orchestrator,
/// the scheduler and the dispatcher on a [`ClusterStore`] of CRDs — one
/// shutdown tree.
pub struct Operator {
    /// The cluster id (persisted in the data directory).
    pub cluster_id: String,
    /// `http://127.0.0.1:PORT` agents on this machine dial.
    pub dispatcher_url: String,
    /// `https://ADDRESS:PORT` agents of other hosts dial, with the join
    /// token (also in `DATA_DIR/join-token`, readable by the owner only).
    pub join: Option<(String, String)>,
    /// The URL of Shoal's API and the kubeconfig written for it (with
    /// `api_listen`).
    pub api: Option<(String, PathBuf)>,
    api_server: Option<RunningServer>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Operator {
    /// Starts the components on `store`.
    /// With `lease`, the components run only while this operator holds it
    /// (the others stand by, their listeners closed).
    pub async fn start(
        store: Arc<dyn ClusterStore>,
        settings: &OperatorSettings,
        lease: Option<(
            shoal_kubestore::lease::LeaseElector,
            Option<shoal_kubestore::lease::LeaderPod>,
        )>,
    ) -> anyhow::Result<Operator> {
        let cluster_id = prepare(settings.dispatcher_listen, &settings.data_dir)?;
        let secure_api = settings.api_listen.is_some_and(|a| !a.ip().is_loopback());
        let pki = if settings.join_listen.is_some() || secure_api {
            Some(load_pki(&settings.data_dir, &cluster_id).await?)
        } else {
            None
        };
        let join_token = match &pki {
            Some(pki) => {
                let token = pki.token().to_string();
                write_private(&settings.data_dir.join("join-token"), &format!("{token}\n"))?;
                Some(token)
            }
            None => None,
        };
        let shutdown = CancellationToken::new();
        let (current, current_rx) = tokio::sync::watch::channel(None);
        let (api_server, api) = match settings.api_listen {
            Some(addr) => {
                let security = api_security(
                    pki.as_deref(),
                    &settings.data_dir,
                    addr,
                    &settings.api_names,
                )?;
                // Logs, stats and exec through this operator's dispatcher
                // while it leads (a standby answers that it is unavailable).
                let bridge = Arc::new(crate::task_logs::DispatcherLogs {
                    current: current_rx,
                    via_leader: None,
                });
                let config = shoal_apiserver::Config {
                    logs: Some(bridge.clone()),
                    stats: Some(bridge.clone()),
                    exec: Some(bridge),
                    security: security.clone(),
                    ..shoal_apiserver::Config::default()
                };
                let server = RunningServer::start(addr, store.clone(), config)
                    .await
                    .with_context(|| format!("starting the API server on {addr}"))?;
                let (kubeconfig, url) = write_kubeconfigs(
                    &settings.data_dir,
                    &server,
                    security.as_ref(),
                    pki.as_deref(),
                )?;
                (Some(server), Some((url, kubeconfig)))
            }
            None => (None, None),
        };
        let leader = Leader {
            store,
            cluster_id: cluster_id.clone(),
            pki,
            dispatcher_listen: settings.dispatcher_listen,
            join_listen: settings.join_listen,
            data_dir: settings.data_dir.clone(),
            current,
            // A restarted operator (a new pod) or a new leader waits for its
            // agents to find it before it declares their hosts lost. They
            // come back within their longest backoff (5 s) after it
            // listens — twice that here, as its predecessor may have been
            // gone for a lease's 15 s, long enough for every agent's
            // backoff to reach its longest.
            startup_grace: Some(OPERATOR_STARTUP_GRACE),
            servers: None,
        };
        let Some((lease, pod)) = lease else {
            let running = leader.start(shutdown.child_token()).await?;
            return Ok(Operator {
                cluster_id,
                dispatcher_url: running.dispatcher_url,
                join: running.join_url.zip(join_token),
                api,
                api_server,
                tasks: running.tasks,
                shutdown,
            });
        };
        let urls = (
            format!("http://{}", settings.dispatcher_listen),
            settings.join_listen.map(|a| format!("https://{a}")),
        );
        let stop = shutdown.child_token();
        let task = tokio::spawn(
            async move {
                let holder = LeaseHolder {
                    elector: lease,
                    pod,
                };
                lead_while(Leadership::Lease(Box::new(holder)), leader, stop).await
            }
            .instrument(tracing::info_span!("leadership")),
        );
        Ok(Operator {
            cluster_id,
            dispatcher_url: urls.0,
            join: urls.1.zip(join_token),
            api,
            api_server,
            tasks: vec![task],
            shutdown,
        })
    }

    /// Stops every component and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let api = match self.api_server {
            Some(api) => api.shutdown().await,
            None => Ok(()),
        };
        for t in self.tasks {
            let _ = t.await;
        }
        api.context("stopping the API server")
    }
}
