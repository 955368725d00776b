//! Raft between control-plane servers over real TCP and mutual TLS on
//! 127.0.0.1: three `RaftStore` voters, each with its own `NetTransport`
//! and peer listener, replicate writes made on the leader and on a follower
//! and elect a new leader when the leader stops; clients that are not peers
//! (another CA, an agent's host certificate of the same CA) are refused, and
//! a peer cannot speak for another peer or reach the wrong node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use serde_json::{Value, json};
use shoal_dispatcher::peers::{NetTransport, PeerError, serve_peers};
use shoal_dispatcher::pki::{ClusterPki, PEER_TLS_NAME};
use shoal_proto::control_v1::RaftEnvelope;
use shoal_proto::control_v1::raft_peer_client::RaftPeerClient;
use shoal_store::raft::{RaftConfig, Transport};
use shoal_store::typed::revision_of;
use shoal_store::{ClusterStore, Kind, ObjectKey, RaftStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const VOTERS: [u64; 3] = [1, 2, 3];

fn svc(name: &str) -> Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": 1}
    })
}

fn svc_key(name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Service, "default", name)
}

/// The production timings (100 ms ticks, elections after 10 to 20 ticks),
/// so the failover time measured is the one a real cluster sees.
fn config(id: u64, voters: &[u64], dir: &Path) -> RaftConfig {
    RaftConfig {
        id,
        voters: voters.to_vec(),
        propose_timeout: Duration::from_secs(5),
        ..RaftConfig::single(dir)
    }
}

/// One `shoal server`'s Raft side.
struct Server {
    store: Option<RaftStore>,
    shutdown: CancellationToken,
    listener: Option<JoinHandle<Result<(), PeerError>>>,
}

impl Server {
    fn store(&self) -> &RaftStore {
        self.store.as_ref().expect("the server is running")
    }

    /// Stops the server as its process would: listener, transport and node.
    async fn stop(&mut self) {
        let started = Instant::now();
        self.shutdown.cancel();
        if let Some(store) = self.store.take() {
            tokio::task::spawn_blocking(move || drop(store))
                .await
                .unwrap();
        }
        if let Some(listener) = self.listener.take() {
            tokio::time::timeout(Duration::from_secs(5), listener)
                .await
                .expect("the peer listener ends at shutdown")
                .unwrap()
                .unwrap();
        }
        eprintln!("server stopped in {} ms", started.elapsed().as_millis());
    }
}

async fn listeners(n: usize) -> (Vec<TcpListener>, BTreeMap<u64, String>) {
    let mut ls = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=n as u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, format!("https://{}", l.local_addr().unwrap()));
        ls.push(l);
    }
    (ls, peers)
}

/// Starts the listener and transport of node `id`; the store is opened by
/// the caller (it blocks until there is a quorum).
fn start(
    id: u64,
    listener: TcpListener,
    peers: &BTreeMap<u64, String>,
    pki: &Arc<ClusterPki>,
) -> (
    Arc<NetTransport>,
    CancellationToken,
    JoinHandle<Result<(), PeerError>>,
) {
    let shutdown = CancellationToken::new();
    let transport = NetTransport::new(
        id,
        peers.clone(),
        pki.peer_client_tls(id).unwrap(),
        tokio::runtime::Handle::current(),
        shutdown.clone(),
    );
    let server = tokio::spawn(serve_peers(
        listener,
        pki.clone(),
        id,
        transport.clone(),
        None,
        shutdown.clone(),
    ));
    (transport, shutdown, server)
}

/// The leader the running servers agree on.
async fn wait_leader(servers: &[Server]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses: Vec<_> = servers
            .iter()
            .filter_map(|s| s.store.as_ref())
            .map(RaftStore::status)
            .collect();
        let leaders: Vec<u64> = statuses
            .iter()
            .filter(|s| s.is_leader)
            .map(|s| s.id)
            .collect();
        if let [leader] = leaders[..]
            && statuses.iter().all(|s| s.leader_id == leader)
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed leader: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `server` has applied revision `rev`, then returns the object.
async fn read_on(server: &Server, name: &str, rev: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.store().revision_now() < rev {
        assert!(
            Instant::now() < deadline,
            "stuck before revision {rev}: {:?}",
            server.store().status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.store().get(&svc_key(name)).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_replicate_and_fail_over() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(ClusterPki::load_or_create(pki_dir.path(), "c0ffee").unwrap());
    let dirs: Vec<_> = VOTERS
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let (ls, peers) = listeners(VOTERS.len()).await;

    let mut opening = Vec::new();
    let mut started = Vec::new();
    for (&id, l) in VOTERS.iter().zip(ls) {
        let (transport, shutdown, listener) = start(id, l, &peers, &pki);
        let cfg = config(id, &VOTERS, dirs[(id - 1) as usize].path());
        let transport: Arc<dyn Transport> = transport;
        opening.push(tokio::task::spawn_blocking(move || {
            RaftStore::open(cfg, transport)
        }));
        started.push((shutdown, listener));
    }
    let t0 = Instant::now();
    let mut servers = Vec::new();
    for (open, (shutdown, listener)) in opening.into_iter().zip(started) {
        servers.push(Server {
            store: Some(open.await.unwrap().unwrap()),
            shutdown,
            listener: Some(listener),
        });
    }
    let leader = wait_leader(&servers).await;
    eprintln!(
        "first leader: node {leader} after {} ms",
        t0.elapsed().as_millis()
    );
    let at = |id: u64| &servers[(id - 1) as usize];
    let followers: Vec<u64> = VOTERS.iter().copied().filter(|&i| i != leader).collect();

    // A write on the leader is readable on both followers.
    let on_leader = at(leader).store().create(svc("on-leader")).await.unwrap();
    let rev = revision_of(&on_leader).unwrap();
    for &f in &followers {
        assert_eq!(read_on(at(f), "on-leader", rev).await, on_leader);
    }

    // A write proposed on a follower goes through the leader.
    let started = Instant::now();
    let obj = at(followers[0])
        .store()
        .create(svc("via-follower"))
        .await
        .unwrap();
    eprintln!(
        "write proposed on follower {}: {} ms",
        followers[0],
        started.elapsed().as_millis()
    );
    let rev = revision_of(&obj).unwrap();
    for id in VOTERS {
        assert_eq!(read_on(at(id), "via-follower", rev).await, obj);
    }
    let mut acked = vec![("on-leader", on_leader), ("via-follower", obj)];

    // The leader's server stops; the other two elect a leader and take
    // writes again.
    let old_term = at(leader).store().status().term;
    let killed = Instant::now();
    servers[(leader - 1) as usize].stop().await;
    let at = |id: u64| &servers[(id - 1) as usize];

    let (new_leader, elected_ms) = loop {
        let found = followers
            .iter()
            .map(|&f| at(f).store().status())
            .find(|s| s.is_leader && s.term > old_term);
        if let Some(s) = found {
            break (s.id, killed.elapsed().as_millis());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no new leader: {:?}",
            followers
                .iter()
                .map(|&f| at(f).store().status())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let obj = loop {
        match at(new_leader).store().create(svc("after-failover")).await {
            Ok(obj) => break obj,
            Err(e) => {
                assert!(e.is_retryable(), "{e:?}");
                assert!(killed.elapsed() < Duration::from_secs(10), "{e:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let failover = killed.elapsed();
    eprintln!(
        "leader failover: {} ms (node {new_leader} elected after {elected_ms} ms)",
        failover.as_millis()
    );
    assert!(failover < Duration::from_secs(10), "{failover:?}");
    let rev = revision_of(&obj).unwrap();
    acked.push(("after-failover", obj));
    for &f in &followers {
        read_on(at(f), "after-failover", rev).await;
        for (name, want) in &acked {
            let got = at(f).store().get(&svc_key(name)).await.unwrap();
            assert_eq!(got.as_ref(), Some(want), "node {f} lost {name}");
        }
    }

    for s in &mut servers {
        s.stop().await;
    }
}

/// Client TLS trusting `ca_pem`, presenting `cert_pem`/`key_pem`.
fn client_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(PEER_TLS_NAME)
        .identity(Identity::from_pem(cert_pem, key_pem))
}

/// A channel to the peer listener at `url`.
async fn dial(url: &str, tls: ClientTlsConfig) -> Result<tonic::transport::Channel, tonic::Status> {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))
}

/// Sends `msgs` to `url` on one `Send` stream, which it then closes.
async fn send_raw(
    url: &str,
    tls: ClientTlsConfig,
    msgs: Vec<Message>,
) -> Result<(), tonic::Status> {
    let channel = dial(url, tls).await?;
    let envelopes: Vec<RaftEnvelope> = msgs
        .iter()
        .map(|m| RaftEnvelope {
            message: m.write_to_bytes().unwrap(),
        })
        .collect();
    RaftPeerClient::new(channel)
        .send(tokio_stream::iter(envelopes))
        .await
        .map(drop)
}

/// Calls `AddVoter` at `url` asking to be reached at `address`.
async fn add_voter_raw(
    url: &str,
    tls: ClientTlsConfig,
    address: &str,
) -> Result<Vec<u64>, tonic::Status> {
    let channel = dial(url, tls).await?;
    RaftPeerClient::new(channel)
        .add_voter(shoal_proto::control_v1::AddVoterRequest {
            address: address.to_owned(),
        })
        .await
        .map(|r| r.into_inner().voters)
}

fn heartbeat(from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// Node 1 of three, alone: peers 2 and 3 are this test's clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peers_speak_and_only_for_themselves() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(ClusterPki::load_or_create(pki_dir.path(), "c0ffee").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (mut ls, mut peers) = listeners(1).await;
    // Nobody listens for 2 and 3: what node 1 sends them is dropped.
    peers.insert(2, "https://127.0.0.1:9".into());
    peers.insert(3, "https://127.0.0.1:9".into());
    let url = peers[&1].clone();
    let (transport, shutdown, listener) = start(1, ls.remove(0), &peers, &pki);
    let cfg = RaftConfig {
        propose_timeout: Duration::from_millis(500),
        ..config(1, &VOTERS, dir.path())
    };
    let transport: Arc<dyn Transport> = transport;
    let mut server = Server {
        store: Some(
            tokio::task::spawn_blocking(move || RaftStore::open(cfg, transport))
                .await
                .unwrap()
                .unwrap(),
        ),
        shutdown,
        listener: Some(listener),
    };
    let term = |s: &Server| s.store().status().term;
    let ca = pki.ca_pem().to_owned();

    // Another cluster's peer certificate: the TLS handshake fails.
    let other_dir = tempfile::tempdir().unwrap();
    let other = ClusterPki::load_or_create(other_dir.path(), "bad").unwrap();
    let (cert, key) = other.issue_peer(2).unwrap();
    let err = send_raw(
        &url,
        client_tls(&ca, &cert, &key),
        vec![heartbeat(2, 1, 50)],
    )
    .await
    .unwrap_err();
    eprintln!("another CA: {err}");
    assert_ne!(err.code(), tonic::Code::Ok);

    // Agents' host certificates of this CA, even one named like a peer.
    for host in ["node-2", "shoal-peer-2"] {
        let creds = pki.issue(host, Duration::from_secs(3600)).unwrap();
        let err = send_raw(
            &url,
            client_tls(&ca, &creds.certificate_pem, &creds.private_key_pem),
            vec![heartbeat(2, 1, 50)],
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{host}: {err}");
    }

    // No client certificate at all: the handshake fails.
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name(PEER_TLS_NAME);
    assert!(
        send_raw(&url, no_cert, vec![heartbeat(2, 1, 50)])
            .await
            .is_err()
    );

    // Peer 3 speaking for peer 2, and to a node that is not this one: the
    // stream is accepted, the messages dropped.
    let (cert3, key3) = pki.issue_peer(3).unwrap();
    send_raw(
        &url,
        client_tls(&ca, &cert3, &key3),
        vec![heartbeat(2, 1, 50), heartbeat(3, 7, 60)],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(term(&server) < 50, "{:?}", server.store().status());

    // Peer 2 as itself: delivered (node 1 follows it in its term).
    let (cert2, key2) = pki.issue_peer(2).unwrap();
    send_raw(
        &url,
        client_tls(&ca, &cert2, &key2),
        vec![heartbeat(2, 1, 100)],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = server.store().status();
        if s.term == 100 && s.leader_id == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Joining the voters: only a peer, for itself, at an https address, and
    // only once the server has its store (this one never gets a membership
    // handle).
    let host = pki
        .issue("shoal-peer-4", Duration::from_secs(3600))
        .unwrap();
    let err = add_voter_raw(
        &url,
        client_tls(&ca, &host.certificate_pem, &host.private_key_pem),
        "https://127.0.0.1:9",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let (cert4, key4) = pki.issue_peer(4).unwrap();
    let err = add_voter_raw(&url, client_tls(&ca, &cert4, &key4), "http://127.0.0.1:9")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = add_voter_raw(&url, client_tls(&ca, &cert4, &key4), "https://127.0.0.1:9")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("still starting"), "{err}");

    server.stop().await;
}

/// A server names its join address to its peers on every `Send` call; the
/// receiver keeps it under the caller's certificate id, and only a valid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_name_their_join_address_to_their_peers() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(ClusterPki::load_or_create(pki_dir.path(), "c0ffee").unwrap());
    let (mut ls, peers) = listeners(2).await;
    let (receiver, stop2, listener2) = start(2, ls.remove(1), &BTreeMap::new(), &pki);
    let stop1 = CancellationToken::new();
    let sender = NetTransport::new(
        1,
        BTreeMap::new(),
        pki.peer_client_tls(1).unwrap(),
        tokio::runtime::Handle::current(),
        stop1.clone(),
    );
    sender.set_join_url("https://10.0.0.1:6445").unwrap();
    let err = sender.set_join_url("http://10.0.0.1:6445").unwrap_err();
    assert!(err.to_string().contains("https://host:port"), "{err}");
    assert!(receiver.join_urls().is_empty());
    sender.set_peer(2, Some(&peers[&2]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.join_urls().is_empty() {
        assert!(Instant::now() < deadline, "no join address received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        receiver.join_urls(),
        BTreeMap::from([(1, "https://10.0.0.1:6445".to_owned())])
    );

    // Peer 3 naming an address that is not https: not kept.
    let (cert3, key3) = pki.issue_peer(3).unwrap();
    let channel = dial(&peers[&2], client_tls(pki.ca_pem(), &cert3, &key3))
        .await
        .unwrap();
    let mut request = tonic::Request::new(tokio_stream::iter(Vec::<RaftEnvelope>::new()));
    request.metadata_mut().insert(
        shoal_dispatcher::peers::JOIN_URL_HEADER,
        "http://10.0.0.3:6445".parse().unwrap(),
    );
    RaftPeerClient::new(channel).send(request).await.unwrap();
    assert_eq!(receiver.join_urls().len(), 1, "{:?}", receiver.join_urls());

    stop1.cancel();
    stop2.cancel();
    listener2.await.unwrap().unwrap();
}

#[test]
fn peer_addresses_must_be_https_urls() {
    let ok = BTreeMap::from([(2, "https://10.0.0.2:7443".to_owned())]);
    assert!(NetTransport::check_peers(&ok).is_ok());
    for bad in ["http://10.0.0.2:7443", "10.0.0.2:7443", "https://"] {
        let peers = BTreeMap::from([(2, bad.to_owned())]);
        let err = NetTransport::check_peers(&peers).unwrap_err();
        assert!(
            matches!(err, PeerError::Address { id: 2, .. }),
            "{bad}: {err}"
        );
        assert!(!err.is_retryable());
    }
}
