//! The gRPC service: one session per connected agent, and the data streams.

use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_crds::Task;
use shoal_proto::v1::agent_message::Message as FromAgent;
use shoal_proto::v1::control_message::Message as ToAgent;
use shoal_proto::{
    AgentMessage, ControlMessage, ControlPlaneServers, DataAck, ExecInput, Hello, JoinRequest,
    JoinResponse, LogChunk, RenewRequest, StatsChunk, Welcome,
};
use shoal_store::{Kind, ListOptions, StoreError, WatchEvent, typed};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::assign::{Tracker, assigned_to};
use crate::liveness::{Entry, Link};
use crate::logs::DataChunk;
use crate::{Dispatcher, HostState, SessionSlot, hosts, status};

/// How long an agent has to send its hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Control messages that may wait for one agent before its session is
/// dropped (it reconnects and gets a complete set).
const CONTROL_BUFFER: usize = 1024;

/// The tonic service (see [`Dispatcher::service`]).
#[derive(Debug, Clone)]
pub struct Service {
    pub(crate) d: Dispatcher,
    /// On the mutual TLS listener: joining is served, and every other call
    /// needs a client certificate of the cluster CA.
    pub(crate) pki: Option<std::sync::Arc<crate::pki::ClusterPki>>,
}

impl Service {
    /// The host a call comes from, when it must prove it: `Ok(None)` on the
    /// loopback listener (no TLS); on the TLS one the certificate's host and
    /// the certificate's fingerprint.
    fn caller<T>(&self, request: &Request<T>) -> Result<Option<(String, String)>, Status> {
        if self.pki.is_none() {
            return Ok(None);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: join the cluster first (shoal agent --join-token)",
            )
        })?;
        let cert = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let host = crate::pki::host_of(cert.as_ref())
            .ok_or_else(|| Status::unauthenticated("the client certificate names no host"))?;
        Ok(Some((host, crate::pki::fingerprint(cert.as_ref()))))
    }
}

/// A host certificate for `host`: for the key of `csr_pem` when the agent
/// sent a signing request (the key stays on the host), else with a key made
/// here (agents before 0.2).
fn issue(
    pki: &crate::pki::ClusterPki,
    host: &str,
    csr_pem: &str,
    validity: std::time::Duration,
) -> Result<JoinResponse, Status> {
    if csr_pem.is_empty() {
        return pki
            .issue(host, validity)
            .map_err(|e| Status::internal(format!("cannot issue a certificate: {e}")));
    }
    pki.issue_for_request(host, csr_pem, validity)
        .map_err(|e| match e {
            crate::pki::PkiError::Request(_) => Status::invalid_argument(format!("csr_pem: {e}")),
            other => Status::internal(format!("cannot issue a certificate: {other}")),
        })
}

#[tonic::async_trait]
impl shoal_proto::Dispatcher for Service {
    type SessionStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let address = request.remote_addr().map(|a| a.ip().to_string());
        let certified = self.caller(&request)?;
        let certified_session = certified.is_some();
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                message: Some(FromAgent::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be a Hello",
                ));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
        };
        if let Some(e) = shoal_crds::labels::dns_subdomain_error(&hello.host_name) {
            return Err(Status::invalid_argument(format!("host name: {e}")));
        }
        let d = self.d.clone();
        if let Some((host, fingerprint)) = certified {
            if host != hello.host_name {
                return Err(Status::permission_denied(format!(
                    "this certificate is host {host:?}'s, not {:?}'s",
                    hello.host_name
                )));
            }
            // Removing the Host, or joining it again, revokes the certificate.
            match hosts::admit(d.inner.store.as_ref(), &host, &fingerprint).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    tracing::warn!(%host, "session refused: {why}");
                    return Err(Status::permission_denied(why));
                }
                Err(e) => return Err(Status::unavailable(format!("cannot check the host: {e}"))),
            }
        }
        hosts::register(d.inner.store.as_ref(), &hello, address)
            .await
            .map_err(|e| Status::unavailable(format!("cannot register host: {e}")))?;
        let (tx, rx) = mpsc::channel(CONTROL_BUFFER);
        let end = d.inner.shutdown.child_token();
        let session_id = {
            let mut sh = d.shared();
            sh.next_id += 1;
            let id = sh.next_id;
            let state = sh
                .hosts
                .entry(hello.host_name.clone())
                .or_insert(HostState {
                    entry: Entry {
                        link: Link::Connected {
                            last_seen: Instant::now(),
                        },
                        ready: true,
                    },
                    session: None,
                });
            state.entry = Entry {
                link: Link::Connected {
                    last_seen: Instant::now(),
                },
                ready: true,
            };
            // A newer session replaces an older one of the same host: dropping
            // the old sender ends the old outbound stream.
            state.session = Some(SessionSlot {
                id,
                tx: tx.clone(),
                end: end.clone(),
            });
            id
        };
        let welcome = Welcome {
            cluster_id: d.inner.config.cluster_id.clone(),
            heartbeat_interval_ms: u32::try_from(d.inner.config.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            heartbeat_misses: d.inner.config.heartbeat_misses,
            server_version: d.inner.config.server_version.clone(),
        };
        tx.send(Ok(ControlMessage {
            message: Some(ToAgent::Welcome(welcome)),
        }))
        .await
        .map_err(|_| Status::cancelled("session closed"))?;
        let span = tracing::info_span!("session", host = %hello.host_name, session = session_id);
        tracing::info!(parent: &span, agent = %hello.agent_version, engine = %hello.engine_version, "agent connected");
        // Agents over mutual TLS learn where the other servers are.
        let servers = d.inner.config.servers.clone().filter(|_| certified_session);
        tokio::spawn(run_session(d, hello, session_id, inbound, tx, end, servers).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let Some(pki) = &self.pki else {
            return Err(Status::failed_precondition(
                "joining is served on the control plane's join listener (shoal server --join-listen)",
            ));
        };
        let address = request.remote_addr();
        let req = request.into_inner();
        if !pki.secret_matches(&req.secret) {
            tracing::warn!(?address, host = %req.host_name, "join refused: wrong secret");
            return Err(Status::permission_denied(
                "the join token's secret is not this cluster's",
            ));
        }
        if let Some(e) = shoal_crds::labels::dns_subdomain_error(&req.host_name) {
            return Err(Status::invalid_argument(format!("host_name: {e}")));
        }
        if self.d.connected(&req.host_name) {
            return Err(Status::already_exists(format!(
                "a host named {:?} is connected: give this one another --host-name, or remove that one first (shoal host rm)",
                req.host_name
            )));
        }
        let creds = issue(
            pki,
            &req.host_name,
            &req.csr_pem,
            self.d.inner.config.host_cert_validity,
        )?;
        let fingerprint = crate::pki::fingerprint_pem(&creds.certificate_pem)
            .map_err(|e| Status::internal(format!("cannot read the new certificate: {e}")))?;
        hosts::enroll(self.d.inner.store.as_ref(), &req.host_name, &fingerprint)
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the host: {e}")))?;
        tracing::info!(?address, host = %req.host_name, "host joined: certificate issued");
        Ok(Response::new(creds))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<JoinResponse>, Status> {
        let (Some(pki), Some((host, fingerprint))) = (&self.pki, self.caller(&request)?) else {
            return Err(Status::failed_precondition(
                "renewal is served on the control plane's join listener, to joined hosts",
            ));
        };
        let store = self.d.inner.store.as_ref();
        match hosts::admit(store, &host, &fingerprint).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(Status::permission_denied(why)),
            Err(e) => return Err(Status::unavailable(format!("cannot check the host: {e}"))),
        }
        let csr_pem = request.get_ref().csr_pem.clone();
        let creds = issue(pki, &host, &csr_pem, self.d.inner.config.host_cert_validity)?;
        let new = crate::pki::fingerprint_pem(&creds.certificate_pem)
            .map_err(|e| Status::internal(format!("cannot read the new certificate: {e}")))?;
        hosts::enroll(store, &host, &new)
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the host: {e}")))?;
        tracing::info!(%host, "certificate renewed");
        Ok(Response::new(creds))
    }

    async fn send_logs(
        &self,
        request: Request<Streaming<LogChunk>>,
    ) -> Result<Response<DataAck>, Status> {
        let caller = self.caller(&request)?.map(|(host, _)| host);
        let ack = forward(&self.d, caller.as_deref(), request.into_inner(), |c| {
            (c.request_id, DataChunk::Logs(c))
        })
        .await?;
        Ok(Response::new(ack))
    }

    async fn send_stats(
        &self,
        request: Request<Streaming<StatsChunk>>,
    ) -> Result<Response<DataAck>, Status> {
        let caller = self.caller(&request)?.map(|(host, _)| host);
        let ack = forward(&self.d, caller.as_deref(), request.into_inner(), |c| {
            (c.request_id, DataChunk::Stats(c))
        })
        .await?;
        Ok(Response::new(ack))
    }

    type ExecSessionStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<ExecInput, Status>> + Send>>;

    async fn exec_session(
        &self,
        request: Request<Streaming<LogChunk>>,
    ) -> Result<Response<Self::ExecSessionStream>, Status> {
        let caller = self.caller(&request)?.map(|(host, _)| host);
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an exec session names its request first"))?;
        let id = first.request_id;
        let (tx, input) = self.d.exec_session(caller.as_deref(), id)?;
        // The output goes to the requester at its pace (so a slow reader
        // slows the command); the input ends with the output.
        let done = tokio_util::sync::CancellationToken::new();
        let (d, ended) = (self.d.clone(), done.clone());
        let pump = async move {
            let _ended = ended.drop_guard();
            let mut next = Some(first);
            while let Some(chunk) = next.take() {
                if tx.send(DataChunk::Logs(chunk)).await.is_err() {
                    // Nobody reads any more: stop the command's session.
                    d.cancel(id);
                    return;
                }
                next = match inbound.message().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "exec output ended");
                        None
                    }
                };
            }
            d.finish_route(id);
        };
        tokio::spawn(pump.instrument(tracing::debug_span!("exec-session", request = id)));
        // The input's end closes the command's standard input, and the
        // answer stays open until the output is all here (ending it first
        // would cut the agent's side of the call).
        let close = ExecInput {
            input: Some(shoal_proto::v1::exec_input::Input::CloseStdin(true)),
        };
        let input = input
            .chain(futures::stream::once(futures::future::ready(close)))
            .chain(futures::stream::pending())
            .take_until(async move { done.cancelled().await })
            .map(Ok);
        Ok(Response::new(Box::pin(input)))
    }
}

/// Forwards the chunks of one agent data stream to the requester of their
/// request id; stops early when nobody wants them any more.
async fn forward<T>(
    d: &Dispatcher,
    caller: Option<&str>,
    mut inbound: Streaming<T>,
    chunk: impl Fn(T) -> (u64, DataChunk),
) -> Result<DataAck, Status> {
    let mut n = 0;
    let mut id = None;
    let end = loop {
        match inbound.message().await {
            Ok(Some(msg)) => {
                n += 1;
                let (request_id, data) = chunk(msg);
                id = Some(request_id);
                if !d.route(caller, request_id, data) {
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // Ended or broken, the requester hears of it: its channel closes.
    if let Some(id) = id {
        d.finish_route(id);
    }
    end?;
    Ok(DataAck { chunks_received: n })
}

type Tx = mpsc::Sender<Result<ControlMessage, Status>>;

async fn run_session(
    d: Dispatcher,
    hello: Hello,
    session_id: u64,
    mut inbound: Streaming<AgentMessage>,
    tx: Tx,
    end: tokio_util::sync::CancellationToken,
    servers: Option<watch::Receiver<Vec<String>>>,
) {
    let host = hello.host_name.clone();
    let assign = assignments(&d, &host, &tx);
    tokio::pin!(assign);
    let tell = tell_servers(servers, &tx);
    tokio::pin!(tell);
    loop {
        tokio::select! {
            () = &mut tell => {}
            msg = inbound.message() => match msg {
                Ok(Some(m)) => d.on_agent_message(&host, m),
                Ok(None) => { tracing::info!("agent closed its stream"); break; }
                Err(e) => { tracing::info!(error = %e, "agent stream failed"); break; }
            },
            res = &mut assign => {
                match res {
                    // The outbound side is gone (the agent went away or a newer
                    // session replaced this one).
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "assignments failed; closing the session so the agent reconnects");
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        break;
                    }
                }
            },
            // Shutdown, or the host was removed: its certificate is revoked.
            () = end.cancelled() => {
                if !d.inner.shutdown.is_cancelled() {
                    let _ = tx
                        .send(Err(Status::permission_denied(format!(
                            "host {host:?} was removed from the cluster, so its certificate no longer admits it; join again with a join token"
                        ))))
                        .await;
                }
                break;
            }
        }
    }
    let mut sh = d.shared();
    if let Some(state) = sh.hosts.get_mut(&host)
        && state.session.as_ref().is_some_and(|s| s.id == session_id)
    {
        state.session = None;
        state.entry.link = Link::Disconnected {
            since: Instant::now(),
        };
        // Requests the host will never answer now end with a message.
        let gone: Vec<u64> = sh
            .routes
            .iter()
            .filter(|(_, r)| r.host == host)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(r) = sh.routes.remove(&id) {
                let _ =
                    r.tx.try_send(crate::DataChunk::Error(format!("host {host} disconnected")));
            }
        }
    }
}

/// Tells the agent the servers' join addresses now (if any are known) and
/// again whenever they change; pending forever without a list to tell (a
/// lone server, or a session without mutual TLS) or once the outbound side
/// closes.
async fn tell_servers(servers: Option<watch::Receiver<Vec<String>>>, tx: &Tx) {
    let Some(mut servers) = servers else {
        return std::future::pending().await;
    };
    loop {
        let list = servers.borrow_and_update().clone();
        if !list.is_empty()
            && tx
                .send(Ok(ControlMessage {
                    message: Some(ToAgent::Servers(ControlPlaneServers { dispatchers: list })),
                }))
                .await
                .is_err()
        {
            return std::future::pending().await;
        }
        if servers.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Sends the complete set, then deltas from a watch, until the outbound side
/// closes (`Ok`) or the store fails (`Err`). A watch that falls behind
/// ("too old") relists and sends a new complete set.
async fn assignments(d: &Dispatcher, host: &str, tx: &Tx) -> Result<(), StoreError> {
    let store = d.inner.store.clone();
    let mut tracker = Tracker::new();
    loop {
        let list = store.list(Kind::Task, &ListOptions::default()).await?;
        let mine: Vec<Task> = list
            .items
            .into_iter()
            .filter_map(|v| typed::from_value::<Task>(v).ok())
            .filter(|t| assigned_to(t, host))
            .collect();
        let set = tracker.complete(mine);
        tracing::debug!(
            tasks = set.assignments.len(),
            sequence = set.sequence,
            "complete assignment set"
        );
        if tx
            .send(Ok(ControlMessage {
                message: Some(ToAgent::AssignmentSet(set)),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut watch = store
            .watch(Kind::Task, list.revision, &ListOptions::default())
            .await?;
        loop {
            let ev = tokio::select! {
                ev = watch.next() => ev,
                () = tx.closed() => return Ok(()),
            };
            let (task, live) = match ev {
                Some(Ok(WatchEvent::Added(v) | WatchEvent::Modified(v))) => (v, true),
                Some(Ok(WatchEvent::Deleted(v))) => (v, false),
                Some(Ok(WatchEvent::Progress(_))) => continue,
                Some(Err(StoreError::TooOld { .. })) => break,
                Some(Err(e)) => return Err(e),
                None => return Err(StoreError::Unavailable("task watch ended".into())),
            };
            let Ok(task) = typed::from_value::<Task>(task) else {
                continue;
            };
            let assigned = live && assigned_to(&task, host);
            if let Some(delta) = tracker.change(task, assigned) {
                // A full buffer means the agent cannot keep up: end the
                // session rather than block; it reconnects and gets a set.
                match tx.try_send(Ok(ControlMessage {
                    message: Some(ToAgent::AssignmentDelta(delta)),
                })) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Err(StoreError::Unavailable(
                            "agent too slow to take assignments".into(),
                        ));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                }
            }
        }
    }
}

impl Dispatcher {
    fn on_agent_message(&self, host: &str, m: AgentMessage) {
        let now = Instant::now();
        if let Some(state) = self.shared().hosts.get_mut(host) {
            state.entry.link.seen(now);
        }
        match m.message {
            Some(FromAgent::Heartbeat(hb)) => {
                let mut sh = self.shared();
                let Some(state) = sh.hosts.get_mut(host) else {
                    return;
                };
                if let Some(why) = &hb.engine_unavailable
                    && matches!(state.entry.link, Link::Connected { .. })
                {
                    tracing::warn!(%why, "the host's engine is unavailable");
                }
                state
                    .entry
                    .link
                    .engine(hb.engine_unavailable.is_none(), now);
                // A host declared lost (its engine stayed away, or its
                // heartbeats stopped) that is whole again on the same
                // session rejoins: a fresh Hello makes it Ready and sends it
                // the complete set.
                if !state.entry.ready
                    && matches!(state.entry.link, Link::Connected { .. })
                    && let Some(s) = &state.session
                {
                    tracing::info!("the lost host is back; asking its agent to rejoin");
                    let _ = s.tx.try_send(Err(Status::unavailable(
                        "this host was declared lost; rejoin",
                    )));
                } else if state.entry.ready
                    && let Some(s) = &state.session
                {
                    // Heard: an agent with Fence tasks counts its timeout
                    // from this (a full buffer only delays the next one).
                    let _ = s.tx.try_send(Ok(ControlMessage {
                        message: Some(ToAgent::HeartbeatAck(shoal_proto::HeartbeatAck {})),
                    }));
                }
            }
            None => {}
            Some(FromAgent::TaskStatus(batch)) => {
                for u in batch.updates {
                    let Some(status) = u.status else { continue };
                    match shoal_crds::TaskStatus::try_from(status) {
                        Ok(status) => {
                            let _ = self.inner.status_tx.send(status::Report {
                                namespace: u.namespace,
                                name: u.name,
                                uid: u.task_uid,
                                status,
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, task = %u.name, "bad task status from agent")
                        }
                    }
                }
            }
            Some(FromAgent::ContainerEvent(ev)) => {
                tracing::debug!(task = %ev.task_uid, action = ev.action, "container event");
            }
            Some(FromAgent::RequestError(e)) => {
                self.fail_route(e.request_id, e.message);
            }
            Some(FromAgent::Hello(_)) => tracing::warn!("a second Hello on one session is ignored"),
        }
    }
}
