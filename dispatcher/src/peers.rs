//! Raft messages between the control plane's `shoal server` processes, over
//! the network with mutual TLS (DESIGN.md, "Security"; the service is
//! `RaftPeer` of `proto/shoal/control/v1/raft.proto`).
//!
//! - Outgoing: [`NetTransport`] is the store's Raft [`Transport`]. `send`
//!   never blocks: it encodes the message and puts it on a bounded queue per
//!   peer, or drops it when the queue is full (Raft retries). One task per
//!   peer keeps a client-streaming `Send` call open to that peer and feeds it
//!   from the queue; when the call fails it dials again — at once the first
//!   time, then after 100 ms, doubling up to 1 s — and drops what was queued
//!   while it waited.
//! - Incoming: [`serve_peers`] serves `RaftPeer` on a listener that requires
//!   a client certificate of the cluster CA issued to a peer
//!   ([`ClusterPki::issue_peer`]): other certificates (an agent's, say) are
//!   refused with `PERMISSION_DENIED`. Each message is handed to the local
//!   Raft node's inbox (given to the transport by `attach` when the node
//!   opens) unless its `from` is not the certificate's peer id or its `to`
//!   is not this node.
//! - Membership: a server started with `--join` calls `AddVoter` on the
//!   servers it knows ([`join_voters`]); the one answering adds the caller
//!   (its certificate's id) to the voters with its address, which travels
//!   with the change, so every server's transport learns it
//!   ([`Transport::set_peer`] starts a task for the new peer).
//!
//! - Join addresses: a server with a join listener for agents names its
//!   address in the metadata of every `Send` call it makes
//!   ([`JOIN_URL_HEADER`], see [`NetTransport::set_join_url`]); the receiver
//!   remembers it per peer ([`NetTransport::join_urls`]). Every follower
//!   sends to the leader, so the leader knows them all and tells its agents.
//!
//! Every peer uses one certificate for both directions; peers dial each
//! other as [`crate::pki::PEER_TLS_NAME`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::Message;
use shoal_proto::control_v1::raft_peer_client::RaftPeerClient;
use shoal_proto::control_v1::raft_peer_server::{RaftPeer, RaftPeerServer};
use shoal_proto::control_v1::{
    AddVoterRequest, AddVoterResponse, PeerExecInput, PeerExecOutput, PeerExecRequest,
    PeerLogLines, PeerLogsRequest, PeerStats, PeerStatsRequest, RaftAck, RaftEnvelope,
};
use shoal_store::StoreError;
use shoal_store::raft::{Inbox, RaftStore, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::pki::{ClusterPki, PkiError, peer_of};

/// The metadata key of a `Send` call naming the caller's join address.
pub const JOIN_URL_HEADER: &str = "shoal-join-url";

/// Messages queued per peer before `send` drops them.
pub const PEER_QUEUE: usize = 4096;

/// The largest Raft message carried, either way. A snapshot is the whole
/// state machine in one message; entries come in batches of at most 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Envelopes buffered for the open call of one peer (beyond them HTTP/2
/// flow control is pushing back, and messages wait in the peer's queue).
const CALL_BUFFER: usize = 256;

/// How long dialling a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 pings find a peer that vanished without closing its connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A call that stayed open this long counts as a success: the next failure
/// is retried at once again.
const HEALTHY_CALL: Duration = Duration::from_secs(1);

/// Why the peer transport or listener cannot be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A peer's address is not an `https://host:port` URL.
    #[error("peer {id}: address {address:?}: {reason}")]
    Address {
        /// The peer's Raft id.
        id: u64,
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// This node's peer certificate could not be issued.
    #[error("peer certificate: {0}")]
    Pki(#[from] PkiError),
    /// The peer listener could not start or failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// No server agreed to add this one to the voters (the last answer).
    #[error("joining the control plane: {0}")]
    Join(String),
}

impl PeerError {
    /// Whether trying again later may succeed (a bad address or certificate
    /// needs a person; a listener that failed may be served again).
    pub fn is_retryable(&self) -> bool {
        matches!(self, PeerError::Transport(_) | PeerError::Join(_))
    }
}

/// A join address as `Send` call metadata.
type JoinUrlValue = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// A peer's address and the queue of the task sending to it.
type PeerQueue = (String, mpsc::Sender<Vec<u8>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Raft [`Transport`] between `shoal server` processes (see the module
/// documentation). Messages travel to peers through [`NetTransport::new`]'s
/// tasks; messages from peers arrive through [`serve_peers`], which hands
/// them to the inbox of the node this transport was attached to.
#[derive(Debug)]
pub struct NetTransport {
    self_id: u64,
    /// Per peer: its address and the queue its task sends from.
    queues: Mutex<BTreeMap<u64, PeerQueue>>,
    inbox: Mutex<Option<Inbox>>,
    /// The membership handle answering `AddVoter` (set once the store is open).
    membership: Mutex<Option<Arc<dyn PeerMembership>>>,
    /// This server's join address, named in every `Send` call.
    join_url: Arc<Mutex<Option<JoinUrlValue>>>,
    /// The join addresses the peers named in their `Send` calls.
    peer_join_urls: Mutex<BTreeMap<u64, String>>,
    tls: ClientTlsConfig,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

impl NetTransport {
    /// A transport for node `self_id` to the other voters at `peers` (Raft id
    /// → `https://host:port`; an entry for `self_id` itself is ignored),
    /// dialled with `tls` (see [`ClusterPki::peer_client_tls`]). One task per
    /// peer is spawned on `runtime`; they end at `shutdown` (or when the
    /// transport is dropped). Voters added later reach it through
    /// [`Transport::set_peer`].
    ///
    /// A peer whose address is not valid (check them first with
    /// [`NetTransport::check_peers`]) is logged as an error and stays
    /// unreachable: `send` to it reports false.
    pub fn new(
        self_id: u64,
        peers: BTreeMap<u64, String>,
        tls: ClientTlsConfig,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) -> Arc<NetTransport> {
        let t = NetTransport {
            self_id,
            queues: Mutex::new(BTreeMap::new()),
            inbox: Mutex::new(None),
            membership: Mutex::new(None),
            join_url: Arc::new(Mutex::new(None)),
            peer_join_urls: Mutex::new(BTreeMap::new()),
            tls,
            runtime,
            shutdown,
        };
        for (id, address) in peers {
            t.dial(id, &address);
        }
        Arc::new(t)
    }

    /// Starts (or, for a new address, restarts) the task sending to peer
    /// `id` at `address`.
    fn dial(&self, id: u64, address: &str) {
        if id == self.self_id {
            return;
        }
        let mut queues = lock(&self.queues);
        if queues.get(&id).is_some_and(|(a, _)| a == address) {
            return;
        }
        let endpoint = match endpoint(id, address, &self.tls) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "raft peer left unreachable");
                queues.remove(&id);
                return;
            }
        };
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        // A replaced queue's sender is dropped here: its task ends.
        if queues.insert(id, (address.to_owned(), tx)).is_some() {
            tracing::info!(peer = id, %address, "raft peer moved");
        }
        self.runtime.spawn(
            peer_loop(endpoint, rx, self.join_url.clone(), self.shutdown.clone())
                .instrument(tracing::info_span!("raft-peer", peer = id)),
        );
    }

    /// Every peer's address as this transport dials it.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        lock(&self.queues)
            .iter()
            .map(|(id, (a, _))| (*id, a.clone()))
            .collect()
    }

    /// Names `url` (`https://host:port`, where agents reach this server's
    /// join listener) to the peers in the calls made from now on.
    pub fn set_join_url(&self, url: &str) -> Result<(), PeerError> {
        let bad = |reason: &str| PeerError::Address {
            id: self.self_id,
            address: url.to_owned(),
            reason: reason.to_owned(),
        };
        let valid = join_url(url).ok_or_else(|| bad("not an https://host:port URL"))?;
        let value = valid.parse().map_err(|_| bad("not a valid header value"))?;
        *lock(&self.join_url) = Some(value);
        Ok(())
    }

    /// The join addresses the peers named (Raft id → `https://host:port`),
    /// as last heard; a peer that never called has none.
    pub fn join_urls(&self) -> BTreeMap<u64, String> {
        lock(&self.peer_join_urls).clone()
    }

    /// Lets peers add voters through `AddVoter` (see [`serve_peers`]).
    pub fn set_membership(&self, membership: Arc<dyn PeerMembership>) {
        *lock(&self.membership) = Some(membership);
    }

    fn membership(&self) -> Option<Arc<dyn PeerMembership>> {
        lock(&self.membership).clone()
    }

    /// Whether every address of `peers` is one [`NetTransport::new`] can dial
    /// (an `https://host:port` URL); the first that is not otherwise.
    pub fn check_peers(peers: &BTreeMap<u64, String>) -> Result<(), PeerError> {
        for (&id, address) in peers {
            endpoint(id, address, &ClientTlsConfig::new())?;
        }
        Ok(())
    }

    /// This node's Raft id.
    pub fn self_id(&self) -> u64 {
        self.self_id
    }

    /// Hands a message from a peer to the local node; false if no node is
    /// attached or it has stopped.
    fn deliver(&self, msg: Message) -> bool {
        let inbox = lock(&self.inbox).clone();
        inbox.is_some_and(|i| i.deliver(msg))
    }
}

impl Transport for NetTransport {
    fn send(&self, msg: Message) -> bool {
        let Some(queue) = lock(&self.queues).get(&msg.to).map(|(_, q)| q.clone()) else {
            tracing::debug!(to = msg.to, "raft message to an unknown peer dropped");
            return false;
        };
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(to = msg.to, error = %e, "cannot encode a raft message");
                return false;
            }
        };
        // Full: the peer is slow or unreachable; closed: shutting down.
        queue.try_send(bytes).is_ok()
    }

    fn attach(&self, id: u64, inbox: Inbox) {
        if id != self.self_id {
            tracing::warn!(
                node = id,
                transport = self.self_id,
                "a raft node attached to another node's transport"
            );
        }
        *lock(&self.inbox) = Some(inbox);
    }

    fn set_peer(&self, id: u64, address: Option<&str>) {
        match address {
            Some(a) => self.dial(id, a),
            None => {
                lock(&self.queues).remove(&id);
            }
        }
    }
}

/// How peer `id` at `address` is dialled.
fn endpoint(id: u64, address: &str, tls: &ClientTlsConfig) -> Result<Endpoint, PeerError> {
    let bad = |reason: String| PeerError::Address {
        id,
        address: address.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(address.to_owned()).map_err(|e| bad(error_chain(&e)))?;
    if endpoint.uri().scheme_str() != Some("https") {
        return Err(bad(
            "peers are dialled with TLS: use https://host:port".into()
        ));
    }
    Ok(endpoint
        .tls_config(tls.clone())
        .map_err(|e| bad(error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true))
}

/// `url` if it is an `https://host:port` URL (the form of a join address).
fn join_url(url: &str) -> Option<&str> {
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    (uri.scheme_str() == Some("https")
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty()))
    .then_some(url)
}

/// The wait before dialling again after `failures` failed calls in a row:
/// none after the first, then 100 ms doubling up to 1 s.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_millis(100 << (n - 1).min(4)).min(Duration::from_secs(1)),
    }
}

/// How one call to a peer ended.
enum CallEnd {
    /// The transport was dropped: nothing more will be sent.
    QueueClosed,
    /// The peer ended the call (it is shutting down).
    Ended,
    /// Dialling or the call failed.
    Failed(String),
}

/// Keeps a `Send` call open to a peer (its span names it) and feeds it from
/// `queue`, dialling again with backoff, until `shutdown` or the queue
/// closes.
async fn peer_loop(
    endpoint: Endpoint,
    mut queue: mpsc::Receiver<Vec<u8>>,
    join_url: Arc<Mutex<Option<JoinUrlValue>>>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    let mut was_up = false;
    loop {
        let started = Instant::now();
        let mut up = false;
        let end = tokio::select! {
            end = call(&endpoint, &mut queue, lock(&join_url).clone(), &mut up) => end,
            () = shutdown.cancelled() => return,
        };
        if up && started.elapsed() >= HEALTHY_CALL {
            failures = 0;
        }
        match &end {
            CallEnd::QueueClosed => return,
            CallEnd::Ended => tracing::info!("peer ended the stream"),
            CallEnd::Failed(e) if was_up || up => {
                tracing::warn!(error = %e, "stream to peer broken");
            }
            CallEnd::Failed(e) => tracing::debug!(error = %e, "cannot reach peer"),
        }
        was_up = up;
        let wait = backoff(failures);
        failures = failures.saturating_add(1);
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            // What queued up meanwhile is stale: Raft sends afresh.
            let mut dropped = 0usize;
            while queue.try_recv().is_ok() {
                dropped += 1;
            }
            if dropped > 0 {
                tracing::debug!(
                    dropped,
                    "raft messages dropped while the peer was unreachable"
                );
            }
        }
    }
}

/// Dials the peer and streams queued messages to it until the call ends;
/// `up` is set once connected.
async fn call(
    endpoint: &Endpoint,
    queue: &mut mpsc::Receiver<Vec<u8>>,
    join_url: Option<JoinUrlValue>,
    up: &mut bool,
) -> CallEnd {
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return CallEnd::Failed(error_chain(&e)),
    };
    let mut client = RaftPeerClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(CALL_BUFFER);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(url) = join_url {
        request.metadata_mut().insert(JOIN_URL_HEADER, url);
    }
    let response = client.send(request);
    tokio::pin!(response);
    *up = true;
    tracing::debug!("connected to peer");
    loop {
        tokio::select! {
            res = &mut response => {
                return match res {
                    Ok(_) => CallEnd::Ended,
                    Err(status) => CallEnd::Failed(status.to_string()),
                };
            }
            msg = queue.recv() => match msg {
                // Full: HTTP/2 flow control is pushing back; Raft retries.
                Some(message) => {
                    let _ = tx.try_send(RaftEnvelope { message });
                }
                None => return CallEnd::QueueClosed,
            },
        }
    }
}

/// An error with its sources (tonic's transport errors say little alone).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Serves `RaftPeer` for node `self_id` on `listener` until `shutdown`, with
/// mutual TLS: a peer certificate of `pki` for this node, and client
/// certificates of the cluster CA required — and only peers' accepted
/// (see [`peer_of`]). Messages go to the node attached to `transport`.
pub async fn serve_peers(
    listener: tokio::net::TcpListener,
    pki: Arc<ClusterPki>,
    self_id: u64,
    transport: Arc<NetTransport>,
    logs: Option<Arc<dyn PeerLogs>>,
    shutdown: CancellationToken,
) -> Result<(), PeerError> {
    let tls = pki.peer_server_tls(self_id)?;
    let service = RaftPeerServer::new(PeerService {
        self_id,
        transport,
        logs,
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_adaptive_window(Some(true))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(PeerError::from)
}

/// A task's log lines for the `TaskLogs` call of a peer that does not lead
/// (served by the leader, through its dispatcher).
pub trait PeerLogs: Send + Sync + 'static {
    /// The lines asked for, or why not (NOT_FOUND, INVALID_ARGUMENT or
    /// UNAVAILABLE).
    fn open(
        &self,
        request: PeerLogsRequest,
    ) -> futures::future::BoxFuture<'static, Result<LogLines, Status>>;

    /// A command run in the task's container, with `input` (interactive
    /// requests only) as its input: its output, then its exit code; or why
    /// not (as for `open`).
    fn exec(
        &self,
        request: PeerExecRequest,
        input: Option<futures::stream::BoxStream<'static, PeerExecInput>>,
    ) -> futures::future::BoxFuture<'static, Result<ExecOutputs, Status>>;

    /// A sample of the task's resource use, or why not (as for `open`).
    fn stats(
        &self,
        request: PeerStatsRequest,
    ) -> futures::future::BoxFuture<'static, Result<PeerStats, Status>>;
}

/// A stream of log line batches.
pub type LogLines = futures::stream::BoxStream<'static, PeerLogLines>;

/// A command's output, then its end.
pub type ExecOutputs = futures::stream::BoxStream<'static, PeerExecOutput>;

/// Changes the voters for the `AddVoter` call of a server joining (the
/// Raft store: [`RaftStore`] implements it).
pub trait PeerMembership: Send + Sync + std::fmt::Debug + 'static {
    /// Adds voter `id` reached at `address`; the voters once applied.
    fn add_voter(
        &self,
        id: u64,
        address: String,
    ) -> futures::future::BoxFuture<'_, Result<Vec<u64>, StoreError>>;
}

impl PeerMembership for RaftStore {
    fn add_voter(
        &self,
        id: u64,
        address: String,
    ) -> futures::future::BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        Box::pin(async move {
            self.add_voter_at(id, &address).await?;
            Ok(self.status().voters)
        })
    }
}

/// Asks the servers at `peers` in turn to add this one (`self_id`, reached
/// at `address`) to the voters, over mutual TLS with this server's peer
/// certificate (`tls`); the voters once added. Fails with the last answer
/// when none agreed.
pub async fn join_voters(
    self_id: u64,
    address: &str,
    peers: &BTreeMap<u64, String>,
    tls: &ClientTlsConfig,
) -> Result<Vec<u64>, PeerError> {
    let mut last = None;
    for (&id, url) in peers {
        if id == self_id {
            continue;
        }
        let channel = match endpoint(id, url, tls)?.connect().await {
            Ok(c) => c,
            Err(e) => {
                last = Some(format!("{url}: {}", error_chain(&e)));
                continue;
            }
        };
        let mut client = RaftPeerClient::new(channel);
        match client
            .add_voter(AddVoterRequest {
                address: address.to_owned(),
            })
            .await
        {
            Ok(r) => return Ok(r.into_inner().voters),
            Err(status) => last = Some(format!("{url}: {}", status.message())),
        }
    }
    Err(PeerError::Join(
        last.unwrap_or_else(|| "no other server to ask".into()),
    ))
}

/// The `RaftPeer` service of [`serve_peers`].
#[derive(Clone)]
struct PeerService {
    self_id: u64,
    transport: Arc<NetTransport>,
    logs: Option<Arc<dyn PeerLogs>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService")
            .field("self_id", &self.self_id)
            .finish_non_exhaustive()
    }
}

impl PeerService {
    /// The peer a call comes from: its client certificate's peer id.
    fn caller<T>(request: &Request<T>) -> Result<u64, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let cert = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        peer_of(cert.as_ref()).ok_or_else(|| {
            Status::permission_denied("the client certificate is not a control-plane peer's")
        })
    }

    /// Takes one envelope from `peer`: whether it was delivered.
    fn receive(&self, peer: u64, envelope: &RaftEnvelope, warned: &mut bool) -> bool {
        let msg = match Message::parse_from_bytes(&envelope.message) {
            Ok(m) => m,
            Err(e) => {
                if !std::mem::replace(warned, true) {
                    tracing::warn!(error = %e, "undecodable raft message dropped");
                }
                return false;
            }
        };
        if msg.from != peer || msg.to != self.self_id {
            if !std::mem::replace(warned, true) {
                tracing::warn!(
                    from = msg.from,
                    to = msg.to,
                    "raft message dropped: not from the certificate's peer or not for this node"
                );
            }
            return false;
        }
        self.transport.deliver(msg)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    type TaskLogsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PeerLogLines, Status>> + Send>>;

    async fn task_logs(
        &self,
        request: Request<PeerLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        Self::caller(&request)?;
        let Some(logs) = &self.logs else {
            return Err(Status::unavailable("this server serves no task logs"));
        };
        let lines = logs.open(request.into_inner()).await?;
        Ok(Response::new(Box::pin(futures::StreamExt::map(lines, Ok))))
    }

    type TaskExecStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PeerExecOutput, Status>> + Send>>;

    async fn task_exec(
        &self,
        request: Request<Streaming<PeerExecInput>>,
    ) -> Result<Response<Self::TaskExecStream>, Status> {
        use futures::StreamExt as _;
        use shoal_proto::control_v1::peer_exec_input::Input;
        Self::caller(&request)?;
        let Some(logs) = &self.logs else {
            return Err(Status::unavailable("this server runs no commands"));
        };
        let mut inbound = request.into_inner();
        let Some(Input::Start(start)) = inbound.message().await?.and_then(|m| m.input) else {
            return Err(Status::invalid_argument(
                "the first message of a TaskExec call names the command",
            ));
        };
        // What follows is the command's input, until the asking server ends
        // its side or its stream breaks.
        let input = start.interactive.then(|| {
            inbound
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(|r| futures::future::ready(r.ok()))
                .boxed()
        });
        let out = logs.exec(start, input).await?;
        Ok(Response::new(Box::pin(futures::StreamExt::map(out, Ok))))
    }

    async fn task_stats(
        &self,
        request: Request<PeerStatsRequest>,
    ) -> Result<Response<PeerStats>, Status> {
        Self::caller(&request)?;
        let Some(logs) = &self.logs else {
            return Err(Status::unavailable("this server serves no task stats"));
        };
        Ok(Response::new(logs.stats(request.into_inner()).await?))
    }

    async fn add_voter(
        &self,
        request: Request<AddVoterRequest>,
    ) -> Result<Response<AddVoterResponse>, Status> {
        // A server adds itself: the id is its certificate's.
        let id = Self::caller(&request)?;
        let address = request.into_inner().address;
        NetTransport::check_peers(&BTreeMap::from([(id, address.clone())]))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(membership) = self.transport.membership() else {
            return Err(Status::unavailable("this server is still starting"));
        };
        tracing::info!(peer = id, %address, "a server asks to join the voters");
        match membership.add_voter(id, address).await {
            Ok(voters) => Ok(Response::new(AddVoterResponse { voters })),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn send(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<RaftAck>, Status> {
        let peer = match Self::caller(&request) {
            Ok(p) => p,
            Err(status) => {
                tracing::warn!(address = ?request.remote_addr(), %status, "raft stream refused");
                return Err(status);
            }
        };
        if let Some(url) = request
            .metadata()
            .get(JOIN_URL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(join_url)
        {
            let old = lock(&self.transport.peer_join_urls).insert(peer, url.to_owned());
            if old.as_deref() != Some(url) {
                tracing::info!(peer, join_url = url, "a server's join address");
            }
        }
        let span = tracing::info_span!("raft-peer-in", peer);
        async move {
            tracing::debug!("peer connected");
            let mut stream = request.into_inner();
            // Warn once per stream about dropped messages, not for each.
            let mut warned = false;
            loop {
                let next = tokio::select! {
                    next = stream.message() => next,
                    () = self.shutdown.cancelled() => break,
                };
                match next {
                    Ok(Some(envelope)) => {
                        self.receive(peer, &envelope, &mut warned);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "stream from peer broken");
                        return Err(status);
                    }
                }
            }
            Ok(Response::new(RaftAck {}))
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_addresses_are_https_urls_of_a_host() {
        assert!(join_url("https://10.0.0.1:6445").is_some());
        assert!(join_url("https://node-1.example.com:6445/").is_some());
        for bad in [
            "http://10.0.0.1:6445",
            "10.0.0.1:6445",
            "https://",
            "https://h:1/x",
            "",
        ] {
            assert!(join_url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn backoff_is_immediate_then_doubles_to_a_second() {
        let ms: Vec<u128> = (0..8).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
    }
}
