//! The dispatcher of the Shoal control plane (DESIGN.md, "Agent protocol" and
//! "Failure model"): it serves the `Dispatcher` gRPC service that every
//! host's agent dials, and
//!
//! - creates the Host object when an agent first joins and keeps its status
//!   current from the agent's hello;
//! - sends each agent its `Welcome`, the **complete** set of tasks bound to
//!   its host, then incremental deltas with sequence numbers, from a store
//!   watch;
//! - ingests task status batches, coalesced and written off the session's
//!   path (heartbeat handling never waits on a store write), and removes a
//!   Task's finalizer once its container is confirmed gone;
//! - keeps liveness in memory and writes only transitions: a closed stream
//!   starts the reconnect grace, missed heartbeats make a connected host
//!   NotReady; a lost host's live tasks become `Orphaned` so the orchestrator
//!   replaces them; after a (re)start every host gets a fresh grace;
//! - routes log and stats requests to agents and their answers, which arrive
//!   on separate agent-initiated streams, back to the requester.
//!
//! It listens on loopback only until the security work (mutual TLS) lands.

mod assign;
mod config;
mod hosts;
mod liveness;
mod logs;
pub mod peers;
pub mod pki;
mod session;
mod status;
pub mod task_events;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_crds::{Host, Task};
use shoal_proto::{ControlMessage, DispatcherServer};
use shoal_store::{ClusterStore, Kind, ListOptions, StoreError, WatchEvent, typed};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::DispatcherConfig;
pub use hosts::is_ready;
pub use liveness::{Entry, Link, LostReason, lost_hosts};
pub use logs::{Answer, DataChunk, ExecOptions, LogOptions};
pub use peers::{NetTransport, PeerError, serve_peers};
pub use status::container_gone;

/// Dispatcher errors.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The store refused or failed (see its own retryability).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server could not start or failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The host has no open session (its agent is not connected).
    #[error("host {0} is not connected")]
    NotConnected(String),
    /// The task is not bound to a host yet.
    #[error("task {0} is not placed on a host")]
    NotPlaced(String),
}

impl DispatchError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DispatchError::Store(e) => e.is_retryable(),
            DispatchError::Transport(_) | DispatchError::NotConnected(_) => true,
            DispatchError::NotPlaced(_) => false,
        }
    }
}

type ControlTx = mpsc::Sender<Result<ControlMessage, tonic::Status>>;

/// The open session of a host.
#[derive(Debug)]
struct SessionSlot {
    id: u64,
    tx: ControlTx,
    /// Ends the session from the control plane's side (the host was removed).
    end: CancellationToken,
}

#[derive(Debug)]
struct HostState {
    entry: Entry,
    session: Option<SessionSlot>,
}

#[derive(Debug, Default)]
struct Shared {
    hosts: BTreeMap<String, HostState>,
    routes: HashMap<u64, logs::Route>,
    next_id: u64,
}

/// The dispatcher. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ClusterStore>,
    config: DispatcherConfig,
    shared: Mutex<Shared>,
    status_tx: mpsc::UnboundedSender<status::Report>,
    status_rx: Mutex<Option<mpsc::UnboundedReceiver<status::Report>>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over a store; `shutdown` ends its sessions and loops.
    pub fn new(
        store: Arc<dyn ClusterStore>,
        config: DispatcherConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                shared: Mutex::new(Shared::default()),
                status_tx,
                status_rx: Mutex::new(Some(status_rx)),
                shutdown,
            }),
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way worse than losing one update: keep serving.
        self.inner
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration.
    pub fn config(&self) -> &DispatcherConfig {
        &self.inner.config
    }

    /// The gRPC service to mount on a tonic server.
    pub fn service(&self) -> DispatcherServer<session::Service> {
        DispatcherServer::new(session::Service {
            d: self.clone(),
            pki: None,
        })
    }

    /// Serves agents from other hosts on `listener` with mutual TLS (the
    /// cluster CA of `pki`): joining with the token, then sessions and data
    /// streams from hosts with a certificate, each only as its own host.
    /// Runs until shutdown, beside [`Dispatcher::serve`] (which runs the
    /// background loops).
    pub async fn serve_join(
        self,
        listener: tokio::net::TcpListener,
        pki: Arc<pki::ClusterPki>,
    ) -> Result<(), DispatchError> {
        let shutdown = self.inner.shutdown.clone();
        let service = DispatcherServer::new(session::Service {
            d: self.clone(),
            pki: Some(pki.clone()),
        });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .tls_config(pki.server_tls())?
            .tcp_nodelay(true)
            .initial_stream_window_size(shoal_proto::STREAM_WINDOW)
            .initial_connection_window_size(shoal_proto::CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .map_err(DispatchError::from)
    }

    /// Serves agents on `listener` and runs the background loops (status
    /// writer, liveness monitor, finalizer release) until shutdown.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<(), DispatchError> {
        let shutdown = self.inner.shutdown.clone();
        let mut loops = tokio::task::JoinSet::new();
        if let Some(rx) = self
            .inner
            .status_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let store = self.inner.store.clone();
            let window = self.inner.config.status_batch_window;
            let s = shutdown.clone();
            loops.spawn(
                status::writer(store, rx, window, s)
                    .instrument(tracing::info_span!("status-writer")),
            );
        }
        let me = self.clone();
        loops.spawn(
            async move { me.liveness_loop().await }.instrument(tracing::info_span!("liveness")),
        );
        let me = self.clone();
        loops.spawn(
            async move { me.release_loop().await }.instrument(tracing::info_span!("task-release")),
        );
        let me = self.clone();
        loops.spawn(
            async move { me.removal_loop().await }.instrument(tracing::info_span!("host-removal")),
        );
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let res = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(shoal_proto::STREAM_WINDOW)
            .initial_connection_window_size(shoal_proto::CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        while loops.join_next().await.is_some() {}
        res.map_err(DispatchError::from)
    }

    /// Binds a loopback address and serves (see [`Dispatcher::serve`]).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the dispatcher listens on loopback only until agents authenticate with mutual TLS",
            ));
        }
        tokio::net::TcpListener::bind(addr).await
    }

    /// Liveness of every known host, as the dispatcher sees it.
    pub fn liveness(&self) -> BTreeMap<String, Entry> {
        self.shared()
            .hosts
            .iter()
            .map(|(k, v)| (k.clone(), v.entry))
            .collect()
    }

    async fn liveness_loop(&self) {
        let cfg = &self.inner.config;
        // After a (re)start every host gets a fresh grace: a Ready host with
        // no session counts as disconnected from now, for at least a
        // heartbeat timeout (agents reconnect at once, without backoff).
        let startup_grace = cfg
            .startup_grace
            .unwrap_or_else(|| cfg.heartbeat_timeout().max(cfg.reconnect_grace))
            .max(cfg.reconnect_grace);
        let start = Instant::now() + (startup_grace - cfg.reconnect_grace);
        match typed::list::<Host>(self.inner.store.as_ref(), &ListOptions::default()).await {
            Ok((hosts, _)) => {
                let mut sh = self.shared();
                for h in hosts {
                    let Some(name) = h.metadata.name.clone() else {
                        continue;
                    };
                    sh.hosts.entry(name).or_insert(HostState {
                        entry: Entry {
                            link: Link::Disconnected { since: start },
                            ready: is_ready(&h),
                        },
                        session: None,
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list hosts at start"),
        }
        let tick = (cfg.heartbeat_interval / 4).max(Duration::from_millis(20));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            let lost = {
                let mut sh = self.shared();
                let entries: BTreeMap<String, Entry> =
                    sh.hosts.iter().map(|(k, v)| (k.clone(), v.entry)).collect();
                let lost = lost_hosts(
                    Instant::now(),
                    &entries,
                    cfg.heartbeat_timeout(),
                    cfg.reconnect_grace,
                );
                for (name, _) in &lost {
                    if let Some(h) = sh.hosts.get_mut(name) {
                        h.entry.ready = false;
                    }
                }
                lost
            };
            for (name, reason) in lost {
                let store = self.inner.store.clone();
                let span = tracing::info_span!("host-lost", host = %name);
                tokio::spawn(
                    async move {
                        match hosts::mark_lost(store.as_ref(), &name, reason.as_str()).await {
                            Ok(n) => {
                                tracing::warn!(reason = reason.as_str(), orphaned = n, "host lost")
                            }
                            Err(e) => tracing::error!(error = %e, "cannot mark host lost"),
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Whether host `name` has a session open now.
    pub(crate) fn connected(&self, name: &str) -> bool {
        self.shared().hosts.get(name).is_some_and(|h| {
            h.session.is_some() && !matches!(h.entry.link, Link::Disconnected { .. })
        })
    }

    /// Watches tasks and releases the finalizer of those marked for deletion
    /// whose container is gone (the status writer does it too, as reports
    /// arrive; this catches tasks marked after their last report).
    async fn release_loop(&self) {
        let store = self.inner.store.clone();
        self.watch_loop(Kind::Task, |ev| {
            let store = store.clone();
            async move {
                match ev {
                    Seen::Listed(v) | Seen::Changed(v) => {
                        if let Ok(t) = typed::from_value::<Task>(v) {
                            status::release_if_gone(store.as_ref(), t).await?;
                        }
                        Ok(())
                    }
                    Seen::Deleted(_) | Seen::ListDone(_) => Ok(()),
                }
            }
        })
        .await;
    }

    /// Watches hosts: a deleted Host (`shoal host rm`) loses its session at
    /// once (its certificate no longer admits it, see `hosts::admit`) and its
    /// live tasks become `Orphaned`, so they are replaced and their Task
    /// objects can go; tasks bound to a host that is gone while the
    /// dispatcher was down are orphaned the same way.
    async fn removal_loop(&self) {
        let me = self.clone();
        self.watch_loop(Kind::Host, |ev| {
            let me = me.clone();
            async move {
                match ev {
                    Seen::Deleted(v) => {
                        if let Ok(h) = typed::from_value::<Host>(v) {
                            me.host_removed(h.metadata.name.as_deref().unwrap_or_default())
                                .await?;
                        }
                    }
                    Seen::ListDone(present) => {
                        let (tasks, _) =
                            typed::list::<Task>(me.inner.store.as_ref(), &ListOptions::default())
                                .await?;
                        let gone: std::collections::BTreeSet<String> = tasks
                            .iter()
                            .filter(|t| {
                                !t.status
                                    .as_ref()
                                    .and_then(|s| s.phase)
                                    .is_some_and(shoal_crds::TaskPhase::is_terminal)
                            })
                            .filter_map(|t| t.spec.host_name.clone())
                            .filter(|h| !present.contains(h))
                            .collect();
                        for h in gone {
                            // Looked up again: it may have joined since the list.
                            if typed::get::<Host>(me.inner.store.as_ref(), None, &h)
                                .await?
                                .is_none()
                            {
                                me.host_removed(&h).await?;
                            }
                        }
                    }
                    Seen::Listed(_) | Seen::Changed(_) => {}
                }
                Ok(())
            }
        })
        .await;
    }

    async fn host_removed(&self, name: &str) -> Result<(), StoreError> {
        let had_session = match self.shared().hosts.remove(name).and_then(|h| h.session) {
            Some(s) => {
                s.end.cancel();
                true
            }
            None => false,
        };
        let n = hosts::orphan_tasks(
            self.inner.store.as_ref(),
            name,
            "HostRemoved",
            &format!("host {name} was removed from the cluster"),
        )
        .await
        .map_err(|e| match e {
            DispatchError::Store(e) => e,
            other => StoreError::Unavailable(other.to_string()),
        })?;
        tracing::warn!(host = %name, orphaned = n, session_closed = had_session, "host removed");
        Ok(())
    }

    /// Lists `kind` (each object, then the names seen), then follows its
    /// watch, handing everything to `on`; on a store error it starts over
    /// with backoff, until shutdown.
    async fn watch_loop<F, Fut>(&self, kind: Kind, mut on: F)
    where
        F: FnMut(Seen) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let store = self.inner.store.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            let res = async {
                let list = store.list(kind, &ListOptions::default()).await?;
                let mut names = std::collections::BTreeSet::new();
                for v in list.items {
                    if let Some(n) = v.pointer("/metadata/name").and_then(|n| n.as_str()) {
                        names.insert(n.to_owned());
                    }
                    on(Seen::Listed(v)).await?;
                }
                on(Seen::ListDone(names)).await?;
                let mut w = store
                    .watch(kind, list.revision, &ListOptions::default())
                    .await?;
                loop {
                    let ev = tokio::select! {
                        ev = w.next() => ev,
                        () = self.inner.shutdown.cancelled() => return Ok::<(), StoreError>(()),
                    };
                    match ev {
                        Some(Ok(WatchEvent::Modified(v) | WatchEvent::Added(v))) => {
                            on(Seen::Changed(v)).await?;
                        }
                        Some(Ok(WatchEvent::Deleted(v))) => on(Seen::Deleted(v)).await?,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Err(StoreError::Unavailable("watch ended".into())),
                    }
                }
            }
            .await;
            match res {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, ?kind, "watch restarts");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.inner.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// What [`Dispatcher::watch_loop`] saw.
enum Seen {
    /// An object of the initial list.
    Listed(serde_json::Value),
    /// The names of the initial list, after its objects.
    ListDone(std::collections::BTreeSet<String>),
    /// Added or modified since.
    Changed(serde_json::Value),
    /// Deleted since (its last state).
    Deleted(serde_json::Value),
}
