//! Three voters in one process over the in-memory transport: writes through
//! the leader, the leader is killed, a new leader is elected, no acknowledged
//! write is lost, a follower that was cut off catches up from a snapshot, and
//! the old leader comes back from its data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_store::raft::{MemTransport, RaftConfig};
use shoal_store::{ClusterStore, Kind, ListOptions, RaftStore, StoreError, typed::revision_of};

const VOTERS: [u64; 3] = [1, 2, 3];

fn config(id: u64, dir: &Path) -> RaftConfig {
    RaftConfig {
        id,
        voters: VOTERS.to_vec(),
        tick: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 2,
        compact_every: 20,
        catch_up_entries: 5,
        propose_timeout: Duration::from_secs(5),
        ..RaftConfig::single(dir)
    }
}

type Nodes = Vec<Option<RaftStore>>;

fn node(nodes: &Nodes, id: u64) -> &RaftStore {
    nodes[(id - 1) as usize].as_ref().expect("node is running")
}

/// The three voters, each in its own directory, over one in-memory
/// transport.
fn three() -> (Vec<tempfile::TempDir>, Arc<MemTransport>, Nodes) {
    let dirs: Vec<_> = VOTERS
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let transport = MemTransport::new();
    let nodes: Nodes = VOTERS
        .iter()
        .map(|&id| {
            Some(
                RaftStore::open(
                    config(id, dirs[(id - 1) as usize].path()),
                    transport.clone(),
                )
                .unwrap(),
            )
        })
        .collect();
    (dirs, transport, nodes)
}

/// Waits until the running nodes agree on one leader, and returns it.
async fn wait_leader(nodes: &Nodes) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let statuses: Vec<_> = nodes.iter().flatten().map(RaftStore::status).collect();
        let leaders: Vec<_> = statuses
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

/// Waits until node `id` has applied the write of revision `rev`.
async fn wait_revision(nodes: &Nodes, id: u64, rev: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while node(nodes, id).revision().await.unwrap() < rev {
        assert!(
            Instant::now() < deadline,
            "node {id} stuck at {:?}, want revision {rev}",
            node(nodes, id).status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_snapshot_catch_up() {
    let (dirs, transport, mut nodes) = three();

    let leader = wait_leader(&nodes).await;
    let followers: Vec<u64> = VOTERS.iter().copied().filter(|&id| id != leader).collect();
    let (behind, other) = (followers[0], followers[1]);
    let mut acked = Vec::new();

    // A write through a follower is forwarded to the leader and answered once applied.
    let obj = node(&nodes, other)
        .create(common::svc("via-follower", 1))
        .await
        .unwrap();
    acked.push(("via-follower".to_owned(), revision_of(&obj).unwrap()));

    // One follower is cut off; the other two keep committing, and compact their logs.
    transport.isolate(behind);
    // A watcher on the node that falls behind: it cannot be given the changes
    // a snapshot skips over, so it must be told to relist.
    let behind_rev = node(&nodes, behind).revision().await.unwrap();
    let mut behind_watch = node(&nodes, behind)
        .watch(Kind::Service, behind_rev, &ListOptions::default())
        .await
        .unwrap();
    for i in 0..100 {
        let name = format!("svc-{i}");
        let obj = node(&nodes, leader)
            .create(common::svc(&name, 1))
            .await
            .unwrap();
        acked.push((name, revision_of(&obj).unwrap()));
    }
    assert!(
        acked.windows(2).all(|p| p[0].1 < p[1].1),
        "revisions strictly increase"
    );
    wait_revision(&nodes, other, acked.last().unwrap().1).await;
    let behind_applied = node(&nodes, behind).status().applied;
    assert!(
        node(&nodes, other).status().first_index > behind_applied + 1,
        "the log the cut-off follower needs is compacted away: other {:?}, behind applied {behind_applied}",
        node(&nodes, other).status()
    );

    // Kill the leader; reconnect the lagging follower.
    drop(nodes[(leader - 1) as usize].take());
    transport.detach(leader);
    transport.heal(behind);

    let new_leader = wait_leader(&nodes).await;
    assert_ne!(new_leader, leader);
    assert_eq!(new_leader, other, "only the up-to-date follower can win");

    // Writes are accepted again, and the lagging follower catches up by snapshot.
    let obj = node(&nodes, new_leader)
        .create(common::svc("after-failover", 1))
        .await
        .unwrap();
    acked.push(("after-failover".to_owned(), revision_of(&obj).unwrap()));
    wait_revision(&nodes, behind, revision_of(&obj).unwrap()).await;
    assert!(
        node(&nodes, behind).status().snapshots_installed >= 1,
        "{:?}",
        node(&nodes, behind).status()
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(10), behind_watch.next())
            .await
            .unwrap()
        {
            Some(Ok(_)) => {}
            Some(Err(StoreError::TooOld { .. })) => break,
            other => panic!("expected TooOld after the snapshot, got {other:?}"),
        }
    }

    // No acknowledged write is lost, on either survivor.
    for id in [new_leader, behind] {
        let store = node(&nodes, id);
        for (name, rev) in &acked {
            let got = store.get(&common::svc_key(name)).await.unwrap();
            let got = got.unwrap_or_else(|| panic!("node {id} lost {name}"));
            assert_eq!(revision_of(&got), Some(*rev), "node {id}, {name}");
        }
        assert_eq!(store.revision().await.unwrap(), acked.last().unwrap().1);
    }

    // The old leader restarts from its data directory and catches up.
    nodes[(leader - 1) as usize] = Some(
        RaftStore::open(
            config(leader, dirs[(leader - 1) as usize].path()),
            transport.clone(),
        )
        .unwrap(),
    );
    let obj = node(&nodes, new_leader)
        .create(common::svc("after-restart", 1))
        .await
        .unwrap();
    wait_revision(&nodes, leader, revision_of(&obj).unwrap()).await;
    let back = node(&nodes, leader);
    assert_eq!(
        back.get(&common::svc_key("after-restart")).await.unwrap(),
        Some(obj)
    );
    for (name, rev) in &acked {
        let got = back.get(&common::svc_key(name)).await.unwrap().unwrap();
        assert_eq!(revision_of(&got), Some(*rev));
    }
    assert_eq!(wait_leader(&nodes).await, new_leader);
}

/// A write to a node that cannot reach a quorum fails with a retryable error
/// instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_write_is_unavailable() {
    let dirs: Vec<_> = VOTERS
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let transport = MemTransport::new();
    let nodes: Nodes = VOTERS
        .iter()
        .map(|&id| {
            let cfg = RaftConfig {
                propose_timeout: Duration::from_millis(500),
                ..config(id, dirs[(id - 1) as usize].path())
            };
            Some(RaftStore::open(cfg, transport.clone()).unwrap())
        })
        .collect();
    let leader = wait_leader(&nodes).await;
    transport.isolate(leader);
    let err = node(&nodes, leader)
        .create(common::svc("lonely", 1))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// A write pending on a leader that loses its term fails at once with a
/// retryable error (not after the proposal timeout), and the new leader takes
/// writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_write_fails_when_the_term_changes() {
    let dirs: Vec<_> = VOTERS
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let transport = MemTransport::new();
    let nodes: Arc<Nodes> = Arc::new(
        VOTERS
            .iter()
            .map(|&id| {
                let cfg = RaftConfig {
                    propose_timeout: Duration::from_secs(30),
                    ..config(id, dirs[(id - 1) as usize].path())
                };
                Some(RaftStore::open(cfg, transport.clone()).unwrap())
            })
            .collect(),
    );
    let old = wait_leader(&nodes).await;
    let old_term = node(&nodes, old).status().term;
    transport.isolate(old);
    let started = Instant::now();
    let pending = {
        let nodes = nodes.clone();
        tokio::spawn(async move { node(&nodes, old).create(common::svc("orphan", 1)).await })
    };
    // The other two elect a leader in a later term.
    let deadline = Instant::now() + Duration::from_secs(15);
    let new = loop {
        let s: Vec<_> = nodes
            .iter()
            .flatten()
            .map(RaftStore::status)
            .filter(|s| s.id != old)
            .collect();
        if let Some(l) = s.iter().find(|s| s.is_leader && s.term > old_term) {
            break l.id;
        }
        assert!(Instant::now() < deadline, "no new leader: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    transport.heal(old);
    let err = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(ref m) if m.contains("term")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed on the term change, not the timeout"
    );
    node(&nodes, new)
        .create(common::svc("after", 1))
        .await
        .unwrap();
}

/// A node's view of the transport: delegates to the shared in-memory one
/// and records the peer addresses the node tells it.
#[derive(Debug)]
struct Tap {
    inner: Arc<MemTransport>,
    told: std::sync::Mutex<std::collections::BTreeMap<u64, String>>,
}

impl Tap {
    fn new(inner: &Arc<MemTransport>) -> Arc<Tap> {
        Arc::new(Tap {
            inner: inner.clone(),
            told: Default::default(),
        })
    }

    fn told(&self) -> std::collections::BTreeMap<u64, String> {
        self.told.lock().unwrap().clone()
    }
}

impl shoal_store::raft::Transport for Tap {
    fn send(&self, msg: raft::eraftpb::Message) -> bool {
        self.inner.send(msg)
    }
    fn attach(&self, id: u64, inbox: shoal_store::raft::Inbox) {
        self.inner.attach(id, inbox);
    }
    fn set_peer(&self, id: u64, address: Option<&str>) {
        let mut told = self.told.lock().unwrap();
        match address {
            Some(a) => told.insert(id, a.to_owned()),
            None => told.remove(&id),
        };
    }
}

fn joiner(id: u64, dir: &Path) -> RaftConfig {
    RaftConfig {
        voters: Vec::new(),
        ..config(id, dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_voters_addresses_reach_every_node_and_survive_restarts_and_snapshots() {
    let dirs: Vec<_> = (1..=5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mem = MemTransport::new();
    let mut taps: Vec<Arc<Tap>> = (1..=5).map(|_| Tap::new(&mem)).collect();
    let mut nodes: Nodes = VOTERS
        .iter()
        .map(|&id| {
            let i = (id - 1) as usize;
            Some(RaftStore::open(config(id, dirs[i].path()), taps[i].clone()).unwrap())
        })
        .collect();
    let leader = wait_leader(&nodes).await;
    node(&nodes, leader)
        .create(common::svc("before", 1))
        .await
        .unwrap();

    // Node 4 joins: every voter's transport learns its address from the change.
    nodes.push(Some(
        RaftStore::open(joiner(4, dirs[3].path()), taps[3].clone()).unwrap(),
    ));
    node(&nodes, leader)
        .add_voter_at(4, "https://n4:6446")
        .await
        .unwrap();
    let rev = node(&nodes, leader).revision().await.unwrap();
    wait_revision(&nodes, 4, rev).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(1..=3)
        .all(|i| taps[i - 1].told().get(&4).map(String::as_str) == Some("https://n4:6446"))
    {
        assert!(
            Instant::now() < deadline,
            "not every voter learned node 4's address"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node(&nodes, leader)
            .status()
            .peer_addresses
            .get(&4)
            .map(String::as_str),
        Some("https://n4:6446")
    );

    // Enough writes to compact the log: node 5 catches up from a snapshot,
    // which carries node 4's address.
    for i in 0..40 {
        node(&nodes, leader)
            .create(common::svc(&format!("svc-{i}"), 1))
            .await
            .unwrap();
    }
    nodes.push(Some(
        RaftStore::open(joiner(5, dirs[4].path()), taps[4].clone()).unwrap(),
    ));
    node(&nodes, leader)
        .add_voter_at(5, "https://n5:6446")
        .await
        .unwrap();
    let rev = node(&nodes, leader).revision().await.unwrap();
    wait_revision(&nodes, 5, rev).await;
    // The snapshot told node 5 where node 4 is (its status and transport
    // follow within the node's turn).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(node(&nodes, 5).status().snapshots_installed >= 1
        && taps[4].told().get(&4).map(String::as_str) == Some("https://n4:6446"))
    {
        assert!(
            Instant::now() < deadline,
            "node 5: {:?}, told {:?}",
            node(&nodes, 5).status(),
            taps[4].told()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A follower restarted from its data directory tells its new transport
    // both addresses at open.
    let follower = VOTERS.iter().copied().find(|&id| id != leader).unwrap();
    let i = (follower - 1) as usize;
    drop(nodes[i].take());
    mem.detach(follower);
    taps[i] = Tap::new(&mem);
    nodes[i] = Some(RaftStore::open(config(follower, dirs[i].path()), taps[i].clone()).unwrap());
    let told = taps[i].told();
    assert_eq!(told.get(&4).map(String::as_str), Some("https://n4:6446"));
    assert_eq!(told.get(&5).map(String::as_str), Some("https://n5:6446"));

    // A removed voter's address is forgotten.
    let leader = wait_leader(&nodes).await;
    node(&nodes, leader).remove_voter(5).await.unwrap();
    // The status follows at the end of the node's turn.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = node(&nodes, leader).status();
        if !s.voters.contains(&5) && !s.peer_addresses.contains_key(&5) {
            break;
        }
        assert!(Instant::now() < deadline, "node 5 still there: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads after `linearize` show every write acknowledged before, whichever
/// node serves them: a follower cut off from the leader does not answer
/// (rather than serve its stale state), and once it hears from the leader
/// again it answers only after applying what the leader had committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearized_reads_on_a_follower_see_every_acknowledged_write() {
    let (_dirs, transport, nodes) = three();
    let leader = wait_leader(&nodes).await;
    let follower = VOTERS.iter().copied().find(|&id| id != leader).unwrap();
    let first = node(&nodes, leader)
        .create(common::svc("web", 1))
        .await
        .unwrap();
    wait_revision(&nodes, follower, revision_of(&first).unwrap()).await;
    // The leader reads linearizably too (it confirms it still leads).
    node(&nodes, leader).linearize().await.unwrap();

    transport.isolate(follower);
    let mut obj = first.clone();
    obj["spec"]["replicas"] = serde_json::json!(2);
    let updated = node(&nodes, leader).update(obj).await.unwrap();
    let stale = node(&nodes, follower)
        .get(&common::svc_key("web"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stale["spec"]["replicas"], 1, "the follower is behind");
    let cut_off = tokio::time::timeout(
        Duration::from_millis(500),
        node(&nodes, follower).linearize(),
    )
    .await;
    eprintln!("linearize on the cut-off follower: {cut_off:?}");
    assert!(
        !matches!(cut_off, Ok(Ok(()))),
        "a cut-off follower must not vouch for its state: {cut_off:?}"
    );

    transport.heal(follower);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match node(&nodes, follower).linearize().await {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "no linearized read after healing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let now = node(&nodes, follower)
        .get(&common::svc_key("web"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now["spec"]["replicas"], 2);
    assert!(revision_of(&now) >= revision_of(&updated));
}
