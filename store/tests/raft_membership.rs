//! Growing a single voter into three: voters are added to a running store
//! (configuration plus a transport), catch up from a snapshot, and the grown
//! cluster survives the loss of the original node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_store::raft::{MemTransport, RaftConfig};
use shoal_store::{ClusterStore, RaftStore, typed::revision_of};

fn config(id: u64, voters: Vec<u64>, dir: &Path) -> RaftConfig {
    RaftConfig {
        id,
        voters,
        tick: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 2,
        compact_every: 20,
        catch_up_entries: 5,
        propose_timeout: Duration::from_secs(5),
        ..RaftConfig::single(dir)
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_grows_to_three() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let transport = MemTransport::new();
    let n1 = RaftStore::open(config(1, vec![1], dirs[0].path()), transport.clone()).unwrap();
    let mut acked = Vec::new();
    for i in 0..40 {
        let obj = n1.create(common::svc(&format!("s{i}"), 1)).await.unwrap();
        acked.push((format!("s{i}"), revision_of(&obj).unwrap()));
    }

    // Two nodes with empty stores and no bootstrap membership join.
    let n2 = RaftStore::open(config(2, vec![], dirs[1].path()), transport.clone()).unwrap();
    let n3 = RaftStore::open(config(3, vec![], dirs[2].path()), transport.clone()).unwrap();
    assert!(n2.status().voters.is_empty());
    n1.add_voter(2).await.unwrap();
    n1.add_voter(3).await.unwrap();
    let rev = n1.revision().await.unwrap();
    for n in [&n2, &n3] {
        wait_until("the new voter to catch up", || {
            let s = n.status();
            s.voters == [1, 2, 3] && s.snapshots_installed >= 1 && n.revision_now() >= rev
        })
        .await;
    }
    assert_eq!(n1.status().voters, [1, 2, 3]);

    // The grown cluster commits with the new voters, and survives losing node 1.
    let obj = n1.create(common::svc("grown", 1)).await.unwrap();
    acked.push(("grown".to_owned(), revision_of(&obj).unwrap()));
    wait_until("replication", || {
        n2.revision_now() >= revision_of(&obj).unwrap()
    })
    .await;
    drop(n1);
    transport.detach(1);
    wait_until("a new leader", || {
        n2.status().is_leader || n3.status().is_leader
    })
    .await;
    let leader = if n2.status().is_leader { &n2 } else { &n3 };
    let obj = leader.create(common::svc("after-loss", 1)).await.unwrap();
    acked.push(("after-loss".to_owned(), revision_of(&obj).unwrap()));
    for n in [&n2, &n3] {
        wait_until("replication", || {
            n.revision_now() >= revision_of(&obj).unwrap()
        })
        .await;
        for (name, rev) in &acked {
            let got = n
                .get(&common::svc_key(name))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name} lost"));
            assert_eq!(revision_of(&got), Some(*rev));
        }
    }
}
