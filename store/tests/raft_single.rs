//! The store semantics through a single-voter `RaftStore`, and what survives
//! a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use serde_json::json;
use shoal_store::raft::RaftConfig;
use shoal_store::{
    ClusterStore, Kind, ListOptions, RaftStore, StoreError, WatchConfig, typed::revision_of,
};

fn config(dir: &std::path::Path, history: usize, watch_buffer: usize) -> RaftConfig {
    RaftConfig {
        watch: WatchConfig {
            history,
            watch_buffer,
            progress_interval: Duration::from_millis(100),
        },
        ..RaftConfig::single(dir)
    }
}

fn open(dir: &std::path::Path, history: usize, watch_buffer: usize) -> RaftStore {
    RaftStore::open(
        config(dir, history, watch_buffer),
        std::sync::Arc::new(shoal_store::raft::NoTransport),
    )
    .unwrap()
}

#[tokio::test]
async fn crud_and_conflict() {
    let dir = tempfile::tempdir().unwrap();
    common::crud_and_conflict(&open(dir.path(), 100, 100)).await;
}

#[tokio::test]
async fn finalizers() {
    let dir = tempfile::tempdir().unwrap();
    common::finalizers(&open(dir.path(), 100, 100)).await;
}

#[tokio::test]
async fn watch_ordering_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    common::watch_ordering_and_resume(&open(dir.path(), 100, 100)).await;
}

#[tokio::test]
async fn too_old_beyond_history() {
    let dir = tempfile::tempdir().unwrap();
    common::too_old_beyond_history(&open(dir.path(), 5, 100), 5).await;
}

#[tokio::test]
async fn slow_watcher_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    common::slow_watcher_is_cut_off(&open(dir.path(), 1000, 8), 8).await;
}

#[tokio::test]
async fn progress_notifications() {
    let dir = tempfile::tempdir().unwrap();
    common::progress_notifications(&open(dir.path(), 100, 100)).await;
}

#[tokio::test]
async fn bad_selectors() {
    let dir = tempfile::tempdir().unwrap();
    common::bad_selectors(&open(dir.path(), 100, 100)).await;
}

/// Everything acknowledged is there after a restart, revisions continue from
/// where they were, and a watch from before the restart is too old.
#[tokio::test]
async fn restart_keeps_state_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let (last_rev, updated) = {
        let store = RaftStore::open(
            RaftConfig {
                compact_every: 7,
                catch_up_entries: 2,
                ..config(dir.path(), 100, 100)
            },
            std::sync::Arc::new(shoal_store::raft::NoTransport),
        )
        .unwrap();
        for i in 0..30 {
            store
                .create(common::svc(&format!("s{i}"), 1))
                .await
                .unwrap();
        }
        let mut obj = store.get(&common::svc_key("s3")).await.unwrap().unwrap();
        obj["spec"]["replicas"] = json!(4);
        let updated = store.update(obj).await.unwrap();
        store
            .delete(&common::svc_key("s4"), &Default::default())
            .await
            .unwrap();
        assert!(
            store.status().first_index > 1,
            "the log was compacted: {:?}",
            store.status()
        );
        (store.revision().await.unwrap(), updated)
    };
    let store = open(dir.path(), 100, 100);
    assert_eq!(store.revision().await.unwrap(), last_rev);
    let list = store
        .list(Kind::Service, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(list.items.len(), 29);
    assert_eq!(
        store.get(&common::svc_key("s3")).await.unwrap(),
        Some(updated)
    );
    assert_eq!(store.get(&common::svc_key("s4")).await.unwrap(), None);
    match store
        .watch(Kind::Service, last_rev - 1, &ListOptions::default())
        .await
    {
        Err(StoreError::TooOld { oldest, .. }) => assert_eq!(oldest, last_rev),
        other => panic!("expected TooOld, got {:?}", other.map(|_| "a stream")),
    }
    let mut w = store
        .watch(Kind::Service, last_rev, &ListOptions::default())
        .await
        .unwrap();
    let created = store.create(common::svc("after", 1)).await.unwrap();
    assert_eq!(revision_of(&created), Some(last_rev + 1));
    let ev = common::next_change(&mut w).await.unwrap();
    assert_eq!(
        common::summary(&ev),
        ("Added", "after".to_owned(), last_rev + 1)
    );
}

/// Concurrent writers all get answers with distinct, increasing revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path(), 100, 100));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..20 {
                let obj = store
                    .create(common::svc(&format!("w{w}-{i}"), 1))
                    .await
                    .unwrap();
                revs.push(revision_of(&obj).unwrap());
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "one writer's revisions increase"
        );
        all.extend(revs);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 320);
    assert_eq!(store.revision().await.unwrap(), 320);
    // Group commit: concurrent writes shared fsyncs. The status is published
    // at the end of the Raft loop's turn, just after the replies went out.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut status = store.status();
    while status.proposals < 320 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        status = store.status();
    }
    assert!(status.proposals >= 320, "{status:?}");
    assert!(status.syncs < status.proposals, "{status:?}");
}

/// A first start killed while the database file was being made leaves at
/// most a half-made file under a temporary name; the next start makes the
/// database afresh and never mistakes the leftover for the database.
#[tokio::test]
async fn a_half_made_database_from_a_killed_first_start_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir.path().join("store.redb.new");
    // What a kill between redb growing the file and writing its header leaves.
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
    let rev = {
        let store = open(dir.path(), 100, 100);
        store.create(common::svc("kept", 1)).await.unwrap();
        store.revision().await.unwrap()
    };
    assert!(!leftover.exists(), "the leftover is replaced, not kept");
    assert!(dir.path().join(shoal_store::raft::DB_FILE).exists());
    let store = open(dir.path(), 100, 100);
    let got = store.get(&common::svc_key("kept")).await.unwrap();
    assert_eq!(got.as_ref().and_then(revision_of), Some(rev));
}

/// An older version killed on its first start could leave the database file
/// itself all zeros; it never held data and is made afresh.
#[tokio::test]
async fn an_all_zero_database_file_is_made_afresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(shoal_store::raft::DB_FILE),
        vec![0u8; 1 << 20],
    )
    .unwrap();
    let store = open(dir.path(), 100, 100);
    store.create(common::svc("kept", 1)).await.unwrap();
    drop(store);
    let store = open(dir.path(), 100, 100);
    assert!(store.get(&common::svc_key("kept")).await.unwrap().is_some());
}
