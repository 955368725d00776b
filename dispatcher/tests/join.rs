//! The join listener over real TLS: a host joins with the token and then
//! holds a session as itself only; a wrong secret, a token of another CA, a
//! session without a certificate and a session in another host's name are
//! refused; removing the Host, or joining it again, revokes its certificate;
//! certificates expire and the agent renews them in time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::join::{Credentials, JoinError, join};
use shoal_crds::{CERTIFICATE_ANNOTATION, Host};
use shoal_dispatcher::pki::ClusterPki;
use shoal_dispatcher::{Dispatcher, DispatcherConfig};
use shoal_proto::join::{DISPATCHER_TLS_NAME, JoinToken};
use shoal_proto::v1::agent_message::Message as FromAgent;
use shoal_proto::v1::control_message::Message as ToAgent;
use shoal_proto::{AgentMessage, DispatcherClient, Hello};
use shoal_store::{ClusterStore, MemStore, typed};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

struct Plane {
    url: String,
    store: Arc<dyn ClusterStore>,
    token: JoinToken,
    ca_pem: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn plane() -> Plane {
    plane_with(DispatcherConfig::default().host_cert_validity).await
}

/// A control plane whose host certificates are valid for `validity`.
async fn plane_with(validity: Duration) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(ClusterPki::load_or_create(dir.path(), "c0ffee").unwrap());
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let shutdown = CancellationToken::new();
    let config = DispatcherConfig {
        cluster_id: "c0ffee".into(),
        host_cert_validity: validity,
        ..Default::default()
    };
    let d = Dispatcher::new(store.clone(), config, shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(d.clone().serve_join(listener, pki.clone()));
    // The loopback listener runs the dispatcher's loops (host removal among them).
    let loopback = Dispatcher::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    tokio::spawn(d.serve(loopback));
    Plane {
        url,
        store,
        token: pki.token().clone(),
        ca_pem: pki.ca_pem().to_string(),
        shutdown,
        _dir: dir,
    }
}

/// Opens a session saying hello as `host`; the first answer, or the error.
async fn session(url: &str, tls: ClientTlsConfig, host: &str) -> Result<ToAgent, tonic::Status> {
    let (first, _open) = open_session(url, tls, host).await?;
    Ok(first)
}

/// Like [`session`], and the session itself, still open.
async fn open_session(
    url: &str,
    tls: ClientTlsConfig,
    host: &str,
) -> Result<(ToAgent, OpenSession), tonic::Status> {
    let channel = Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, out) = mpsc::channel(4);
    tx.send(AgentMessage {
        message: Some(FromAgent::Hello(Hello {
            host_name: host.into(),
            labels: BTreeMap::new(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = DispatcherClient::new(channel)
        .session(ReceiverStream::new(out))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("an answer within 5 s")?;
    Ok((
        first.and_then(|m| m.message).expect("a message"),
        OpenSession { _tx: tx, inbound },
    ))
}

/// A session's two directions, kept open.
struct OpenSession {
    _tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<shoal_proto::ControlMessage>,
}

impl OpenSession {
    /// Whether the control plane ends the session within `secs` (messages
    /// before the end are skipped).
    async fn ends_within(&mut self, secs: u64) -> bool {
        tokio::time::timeout(Duration::from_secs(secs), async {
            while let Ok(Some(_)) = self.inbound.message().await {}
        })
        .await
        .is_ok()
    }
}

#[tokio::test]
async fn removing_a_host_or_joining_it_again_revokes_its_certificate() {
    let p = plane().await;
    let first = join(&p.url, &p.token, "node-2").await.unwrap();
    // The join records the certificate on the Host it creates.
    let host = typed::get::<Host>(p.store.as_ref(), None, "node-2")
        .await
        .unwrap()
        .expect("the Host exists from the join on");
    let recorded = host
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CERTIFICATE_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    assert_eq!(recorded.len(), 64, "{host:?}");

    // Joined again (e.g. a reinstalled machine): the new certificate works,
    // the first one no longer does.
    let (welcome, mut open) = open_session(&p.url, first.client_tls(), "node-2")
        .await
        .unwrap();
    assert!(matches!(welcome, ToAgent::Welcome(_)));
    // Not while the host is connected, though.
    let e = join(&p.url, &p.token, "node-2").await.unwrap_err();
    assert!(e.to_string().contains("is connected"), "{e}");
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = join(&p.url, &p.token, "node-2").await.unwrap();
    let e = session(&p.url, first.client_tls(), "node-2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("newer certificate"), "{e:?}");

    // Removing the Host cuts its open session and refuses the next.
    let (welcome, o) = open_session(&p.url, second.client_tls(), "node-2")
        .await
        .unwrap();
    assert!(matches!(welcome, ToAgent::Welcome(_)));
    open = o;
    let key = typed::key::<Host>(None, "node-2");
    p.store.delete(&key, &Default::default()).await.unwrap();
    assert!(
        open.ends_within(5).await,
        "the removed host's session stays open"
    );
    let e = session(&p.url, second.client_tls(), "node-2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not in the cluster"), "{e:?}");
    assert!(
        typed::get::<Host>(p.store.as_ref(), None, "node-2")
            .await
            .unwrap()
            .is_none(),
        "a refused session must not bring the Host back"
    );
}

#[tokio::test]
async fn a_host_joins_with_the_token_and_holds_sessions_as_itself_only() {
    let p = plane().await;
    let creds: Credentials = join(&p.url, &p.token, "node-2").await.unwrap();
    assert_eq!(creds.ca_fingerprint().unwrap(), p.token.ca_fingerprint);

    // Its session, with its certificate: welcomed into the cluster.
    match session(&p.url, creds.client_tls(), "node-2").await.unwrap() {
        ToAgent::Welcome(w) => assert_eq!(w.cluster_id, "c0ffee"),
        other => panic!("not a welcome: {other:?}"),
    }

    // The same certificate in another host's name: refused.
    let e = session(&p.url, creds.client_tls(), "node-3")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node-2"), "{e:?}");

    // No certificate at all (TLS to the right server, but not joined).
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&p.ca_pem))
        .domain_name(DISPATCHER_TLS_NAME);
    let e = session(&p.url, anonymous, "node-2").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("join"), "{e:?}");
}

#[tokio::test]
async fn a_wrong_secret_or_another_clusters_ca_is_refused() {
    let p = plane().await;
    let mut wrong = p.token.clone();
    wrong.secret = "0".repeat(32);
    let e = join(&p.url, &wrong, "node-2").await.unwrap_err();
    assert!(matches!(e, JoinError::Refused(_)), "{e:?}");
    assert!(e.to_string().contains("secret"), "{e}");
    assert!(!e.is_retryable());

    // A token of another CA: the agent stops at the handshake, before it
    // sends the secret.
    let mut other = p.token.clone();
    other.ca_fingerprint = [7; 32];
    let e = join(&p.url, &other, "node-2").await.unwrap_err();
    assert!(matches!(e, JoinError::Refused(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("not the dispatcher of the token's cluster"),
        "{e}"
    );

    // Nobody listening: worth retrying.
    drop(p);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = join("https://127.0.0.1:1", &wrong, "node-2")
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn certificates_expire_and_are_renewed_in_time() {
    // Host certificates valid for 6 s: renewed with 2 s left.
    let p = plane_with(Duration::from_secs(6)).await;
    let first = join(&p.url, &p.token, "node-2").await.unwrap();
    let (from, until) = first.validity().unwrap();
    let now = now_secs();
    assert!(
        (5..=7).contains(&(until - now)),
        "valid for {}s",
        until - now
    );
    assert_eq!(first.renew_at().unwrap(), until - (until - from) / 3);

    // Renewed by hand: a new certificate, and only it admits the host.
    let second = shoal_agent::join::renew(&p.url, &first).await.unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    assert!(matches!(
        session(&p.url, second.client_tls(), "node-2")
            .await
            .unwrap(),
        ToAgent::Welcome(_)
    ));
    let e = session(&p.url, first.client_tls(), "node-2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // The revoked one cannot renew either.
    let e = shoal_agent::join::renew(&p.url, &first).await.unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");

    // The agent's renewal keeps the host admitted past the first
    // certificate's expiry, and keeps each new one in its state directory.
    let state = tempfile::tempdir().unwrap();
    second.save(state.path()).unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(second.clone());
    let stop = CancellationToken::new();
    let renewal = tokio::spawn(shoal_agent::join::keep_renewed(
        vec![p.url.clone()],
        state.path().to_owned(),
        tx,
        stop.clone(),
    ));
    // Each 6 s certificate is renewed with 2 s left: twice within about 9 s
    // (20 s allowed for a loaded machine), and past the first one's expiry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut renewals = 0;
    while renewals < 2 || now_secs() <= until {
        tokio::select! {
            r = rx.changed() => { r.unwrap(); renewals += 1; }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewed {renewals} times in 20 s of 6 s certificates"
        );
    }
    let current = rx.borrow().clone();
    let (_, until) = current.validity().unwrap();
    assert!(
        until > now + 6,
        "the current certificate outlives the first"
    );
    let kept = Credentials::load(state.path()).unwrap().unwrap();
    assert_eq!(kept.cert_pem, current.cert_pem);
    // The first certificate has expired: the TLS handshake itself fails;
    // the renewed one is welcome.
    let e = session(&p.url, first.client_tls(), "node-2")
        .await
        .unwrap_err();
    assert_ne!(
        e.code(),
        tonic::Code::PermissionDenied,
        "refused at the handshake: {e:?}"
    );
    assert!(matches!(
        session(&p.url, current.client_tls(), "node-2")
            .await
            .unwrap(),
        ToAgent::Welcome(_)
    ));
    stop.cancel();
    renewal.await.unwrap();
}

/// A control-plane server that is not the leader: it answers every call
/// with `Unavailable`, over TLS with the cluster's server certificate (as
/// the followers of a highly available control plane would).
struct Follower;

#[tonic::async_trait]
impl shoal_proto::Dispatcher for Follower {
    type SessionStream = tokio_stream::Empty<Result<shoal_proto::ControlMessage, tonic::Status>>;

    async fn session(
        &self,
        _: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        Err(tonic::Status::unavailable("not the leader"))
    }

    async fn join(
        &self,
        _: tonic::Request<shoal_proto::JoinRequest>,
    ) -> Result<tonic::Response<shoal_proto::JoinResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("not the leader"))
    }

    async fn renew(
        &self,
        _: tonic::Request<shoal_proto::RenewRequest>,
    ) -> Result<tonic::Response<shoal_proto::JoinResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("not the leader"))
    }

    async fn send_logs(
        &self,
        _: tonic::Request<tonic::Streaming<shoal_proto::LogChunk>>,
    ) -> Result<tonic::Response<shoal_proto::DataAck>, tonic::Status> {
        Err(tonic::Status::unavailable("not the leader"))
    }

    async fn send_stats(
        &self,
        _: tonic::Request<tonic::Streaming<shoal_proto::StatsChunk>>,
    ) -> Result<tonic::Response<shoal_proto::DataAck>, tonic::Status> {
        Err(tonic::Status::unavailable("not the leader"))
    }

    type ExecSessionStream = tokio_stream::Empty<Result<shoal_proto::ExecInput, tonic::Status>>;

    async fn exec_session(
        &self,
        _: tonic::Request<tonic::Streaming<shoal_proto::LogChunk>>,
    ) -> Result<tonic::Response<Self::ExecSessionStream>, tonic::Status> {
        Err(tonic::Status::unavailable("not the leader"))
    }
}

/// A follower of the plane `p` (same CA and server certificate): its
/// `https://` address.
async fn follower(p: &Plane) -> String {
    let pki = ClusterPki::load_or_create(p._dir.path(), "c0ffee").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .tls_config(pki.server_tls())
        .unwrap()
        .add_service(shoal_proto::DispatcherServer::new(Follower))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            p.shutdown.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    url
}

/// An `https://` address where nothing listens.
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("https://{}", l.local_addr().unwrap())
}

/// The agent's session loop as host node-2 over `endpoints`: its
/// assignments, its stop token and the task (which ends with why it was
/// refused for good, if it was).
fn agent_session<const N: usize>(
    endpoints: [String; N],
    creds: Credentials,
) -> (
    tokio::sync::watch::Receiver<Option<shoal_agent::Assignments>>,
    CancellationToken,
    tokio::task::JoinHandle<Option<String>>,
) {
    agent_session_keeping(endpoints, creds, None)
}

/// [`agent_session`], keeping the servers it is told in `dispatchers_file`.
fn agent_session_keeping<const N: usize>(
    endpoints: [String; N],
    creds: Credentials,
    dispatchers_file: Option<std::path::PathBuf>,
) -> (
    tokio::sync::watch::Receiver<Option<shoal_agent::Assignments>>,
    CancellationToken,
    tokio::task::JoinHandle<Option<String>>,
) {
    let (creds_tx, creds_rx) = tokio::sync::watch::channel(creds);
    // Kept open for the session's life (renewal would send on it).
    std::mem::forget(creds_tx);
    let host = shoal_agent::session::HostInfo {
        host_name: "node-2".into(),
        cpu_millicores: 1000,
        memory_bytes: 1 << 30,
        ..Default::default()
    };
    let cfg = shoal_agent::session::SessionConfig {
        tls: Some(creds_rx),
        dispatchers_file,
        ..shoal_agent::session::SessionConfig::with_endpoints(endpoints, "c0ffee", host)
    };
    let (assigned_tx, assigned_rx) = tokio::sync::watch::channel(None);
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    std::mem::forget(reports_tx);
    let stop = CancellationToken::new();
    let agent = tokio::spawn(shoal_agent::session::run(
        cfg,
        assigned_tx,
        reports_rx,
        Arc::new(NoLogs),
        stop.clone(),
    ));
    (assigned_rx, stop, agent)
}

/// Logs of no task (the session test serves none).
struct NoLogs;

#[tonic::async_trait]
impl shoal_agent::session::LogSource for NoLogs {
    async fn logs(
        &self,
        _: &shoal_proto::LogsRequest,
    ) -> Result<futures::stream::BoxStream<'static, shoal_proto::v1::LogLine>, String> {
        Err("no logs here".into())
    }
}

/// A dispatcher on the join listener of `pki` over `store`, telling its
/// agents `servers`: its address, and its stop token.
async fn leader_on(
    pki: &Arc<ClusterPki>,
    store: &Arc<dyn ClusterStore>,
    servers: Option<tokio::sync::watch::Receiver<Vec<String>>>,
) -> (String, Dispatcher, CancellationToken) {
    let stop = CancellationToken::new();
    let config = DispatcherConfig {
        cluster_id: "c0ffee".into(),
        servers,
        ..Default::default()
    };
    let d = Dispatcher::new(store.clone(), config, stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(d.clone().serve_join(listener, pki.clone()));
    (url, d, stop)
}

/// Waits up to 10 s for `f`.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn connected(d: &Dispatcher, host: &str) -> bool {
    d.liveness()
        .get(host)
        .is_some_and(|e| matches!(e.link, shoal_dispatcher::Link::Connected { .. }))
}

/// The leader tells its agents every server's join address, now and when
/// they change; an agent given only the first leader's address follows the
/// leadership to a server it was never given, and keeps the addresses for
/// its next start.
#[tokio::test]
async fn agents_are_told_the_servers_and_follow_the_leader_to_one_they_were_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(ClusterPki::load_or_create(dir.path(), "c0ffee").unwrap());
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let (servers_tx, servers_rx) = tokio::sync::watch::channel(Vec::new());
    let (first, first_d, first_stop) = leader_on(&pki, &store, Some(servers_rx)).await;
    let (second, second_d, second_stop) = leader_on(&pki, &store, None).await;
    servers_tx.send_replace(vec![first.clone(), second.clone()]);

    // What a session hears: the Welcome, then the servers, then again when
    // they change.
    let token = pki.token().clone();
    let creds = join(&first, &token, "node-2").await.unwrap();
    let (welcome, mut open) = open_session(&first, creds.client_tls(), "node-2")
        .await
        .unwrap();
    assert!(matches!(welcome, ToAgent::Welcome(_)), "{welcome:?}");
    let mut told = Vec::new();
    while told.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), open.inbound.message())
            .await
            .expect("the servers within 5 s")
            .unwrap()
            .and_then(|m| m.message);
        if let Some(ToAgent::Servers(s)) = m {
            told.push(s.dispatchers);
            if told.len() == 1 {
                servers_tx.send_replace(vec![first.clone(), second.clone(), dead_address()]);
            }
        }
    }
    assert_eq!(told[0], [first.clone(), second.clone()]);
    assert_eq!(told[1].len(), 3);
    servers_tx.send_replace(vec![first.clone(), second.clone()]);
    drop(open);

    // The agent loop, given the first server only.
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join(shoal_agent::dispatchers::FILE);
    let (_assigned, stop, agent) =
        agent_session_keeping([first.clone()], creds, Some(file.clone()));
    until("a session with the first server", || {
        connected(&first_d, "node-2")
    })
    .await;
    until("the servers kept in the file", || {
        std::fs::read_to_string(&file).is_ok_and(|s| s == format!("{first}\n{second}\n"))
    })
    .await;
    assert!(!connected(&second_d, "node-2"));
    // The first leader goes; the agent finds the second.
    first_stop.cancel();
    until("a session with the second server", || {
        connected(&second_d, "node-2")
    })
    .await;

    stop.cancel();
    assert_eq!(agent.await.unwrap(), None);
    second_stop.cancel();
}

#[tokio::test]
async fn joining_tries_the_dispatchers_in_turn_until_one_answers() {
    let p = plane().await;
    let (dead, follower) = (dead_address(), follower(&p).await);

    // A closed port and a follower refusing: both passed over.
    let started = std::time::Instant::now();
    let creds = shoal_agent::join::join_any(
        &[dead.clone(), follower.clone(), p.url.clone()],
        &p.token,
        "node-2",
    )
    .await
    .unwrap();
    assert_eq!(creds.ca_fingerprint().unwrap(), p.token.ca_fingerprint);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Renewed the same way.
    let renewed =
        shoal_agent::join::renew_any(&[follower.clone(), dead.clone(), p.url.clone()], &creds)
            .await
            .unwrap();
    assert_ne!(renewed.cert_pem, creds.cert_pem);

    // A real refusal stops: the leader after it is not asked.
    let mut wrong = p.token.clone();
    wrong.secret = "0".repeat(32);
    let e = shoal_agent::join::join_any(&[dead.clone(), p.url.clone()], &wrong, "node-3")
        .await
        .unwrap_err();
    assert!(matches!(e, JoinError::Refused(_)), "{e:?}");
    assert!(e.to_string().contains("secret"), "{e}");

    // Nobody serving: retryable, and it says where it looked.
    let e = shoal_agent::join::join_any(&[dead.clone(), follower.clone()], &p.token, "node-3")
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("not the leader"), "{text}");
    assert!(text.contains(dead.trim_start_matches("https://")), "{text}");
}

#[tokio::test]
async fn a_session_passes_over_dead_and_refusing_dispatchers_at_once() {
    let p = plane().await;
    let creds = join(&p.url, &p.token, "node-2").await.unwrap();
    let (dead, follower) = (dead_address(), follower(&p).await);

    let started = std::time::Instant::now();
    // A backoff after each failure would take 100 + 200 + 400 + 800 + 1600
    // ms to reach the leader; one round takes none.
    let (mut assigned_rx, stop, agent) = agent_session(
        [&dead, &follower, &dead, &follower, &dead, &p.url].map(String::clone),
        creds,
    );
    // Welcomed by the leader, then its complete (empty) assignment set.
    tokio::time::timeout(
        Duration::from_secs(2),
        assigned_rx.wait_for(|a| a.is_some()),
    )
    .await
    .expect("an assignment set within 2 s")
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The host is connected to the leader: a second join is refused.
    let e = join(&p.url, &p.token, "node-2").await.unwrap_err();
    assert!(e.to_string().contains("is connected"), "{e}");
    stop.cancel();
    assert_eq!(agent.await.unwrap(), None);
}

/// A server that welcomes a session and then says nothing more, without
/// closing it (its machine vanished, say).
#[derive(Default)]
struct Mute {
    open: std::sync::Mutex<Vec<mpsc::Sender<Result<shoal_proto::ControlMessage, tonic::Status>>>>,
}

#[tonic::async_trait]
impl shoal_proto::Dispatcher for Mute {
    type SessionStream = ReceiverStream<Result<shoal_proto::ControlMessage, tonic::Status>>;

    async fn session(
        &self,
        _: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        let welcome = shoal_proto::Welcome {
            cluster_id: "c0ffee".into(),
            heartbeat_interval_ms: 500,
            heartbeat_misses: 4,
            server_version: "mute".into(),
        };
        tx.send(Ok(shoal_proto::ControlMessage {
            message: Some(ToAgent::Welcome(welcome)),
        }))
        .await
        .unwrap();
        self.open.lock().unwrap().push(tx);
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn join(
        &self,
        _: tonic::Request<shoal_proto::JoinRequest>,
    ) -> Result<tonic::Response<shoal_proto::JoinResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("mute"))
    }

    async fn renew(
        &self,
        _: tonic::Request<shoal_proto::RenewRequest>,
    ) -> Result<tonic::Response<shoal_proto::JoinResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("mute"))
    }

    async fn send_logs(
        &self,
        _: tonic::Request<tonic::Streaming<shoal_proto::LogChunk>>,
    ) -> Result<tonic::Response<shoal_proto::DataAck>, tonic::Status> {
        Err(tonic::Status::unimplemented("mute"))
    }

    async fn send_stats(
        &self,
        _: tonic::Request<tonic::Streaming<shoal_proto::StatsChunk>>,
    ) -> Result<tonic::Response<shoal_proto::DataAck>, tonic::Status> {
        Err(tonic::Status::unimplemented("mute"))
    }

    type ExecSessionStream = tokio_stream::Empty<Result<shoal_proto::ExecInput, tonic::Status>>;

    async fn exec_session(
        &self,
        _: tonic::Request<tonic::Streaming<shoal_proto::LogChunk>>,
    ) -> Result<tonic::Response<Self::ExecSessionStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("mute"))
    }
}

#[tokio::test]
async fn a_session_on_a_silent_server_is_given_up_for_the_next() {
    let p = plane().await;
    let creds = join(&p.url, &p.token, "node-2").await.unwrap();
    let pki = ClusterPki::load_or_create(p._dir.path(), "c0ffee").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(pki.server_tls())
            .unwrap()
            .add_service(shoal_proto::DispatcherServer::new(Mute::default()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                p.shutdown.clone().cancelled_owned(),
            ),
    );
    let started = std::time::Instant::now();
    let (mut assigned_rx, stop, agent) = agent_session([mute, p.url.clone()], creds);
    // Welcomed by the mute server, which never sends the assignments nor
    // answers a heartbeat: after 5 s of silence the agent moves on.
    tokio::time::timeout(
        Duration::from_secs(12),
        assigned_rx.wait_for(|a| a.is_some()),
    )
    .await
    .expect("an assignment set from the live server within 12 s (HTTP/2 keepalive alone would take 15 s)")
    .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "left the mute server after {took:?}"
    );
    stop.cancel();
    assert_eq!(agent.await.unwrap(), None);
}

/// Joins `host` with a raw `Join` call carrying `csr_pem`.
async fn raw_join(
    p: &Plane,
    host: &str,
    csr_pem: &str,
) -> Result<shoal_proto::JoinResponse, tonic::Status> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&p.ca_pem))
        .domain_name(DISPATCHER_TLS_NAME);
    let channel = Endpoint::from_shared(p.url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    DispatcherClient::new(channel)
        .join(shoal_proto::JoinRequest {
            secret: p.token.secret.clone(),
            host_name: host.into(),
            csr_pem: csr_pem.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_host_key_stays_on_the_host_and_old_agents_still_join() {
    let p = plane().await;
    // The agent makes its key and sends a signing request: no key comes
    // back, and its sessions work with the key it kept.
    let creds = join(&p.url, &p.token, "node-2").await.unwrap();
    assert!(creds.key_pem.contains("PRIVATE KEY"));
    match session(&p.url, creds.client_tls(), "node-2").await.unwrap() {
        ToAgent::Welcome(_) => {}
        other => panic!("not a welcome: {other:?}"),
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["node-3".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let answer = raw_join(&p, "node-3", &csr).await.unwrap();
    assert_eq!(answer.private_key_pem, "");
    assert!(answer.certificate_pem.contains("CERTIFICATE"));

    // A request that is not one: refused, naming the field.
    let e = raw_join(&p, "node-4", "junk").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("csr_pem:"), "{e:?}");

    // An agent that sends no request gets a key made for it, as before.
    let answer = raw_join(&p, "node-5", "").await.unwrap();
    assert!(answer.private_key_pem.contains("PRIVATE KEY"));
}
