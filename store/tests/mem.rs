//! The store semantics through `MemStore`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use shoal_store::{MemStore, WatchConfig};

fn store(history: usize, watch_buffer: usize) -> MemStore {
    MemStore::with_config(WatchConfig {
        history,
        watch_buffer,
        progress_interval: Duration::from_millis(100),
    })
}

#[tokio::test]
async fn crud_and_conflict() {
    common::crud_and_conflict(&store(100, 100)).await;
}

#[tokio::test]
async fn finalizers() {
    common::finalizers(&store(100, 100)).await;
}

#[tokio::test]
async fn watch_ordering_and_resume() {
    common::watch_ordering_and_resume(&store(100, 100)).await;
}

#[tokio::test]
async fn too_old_beyond_history() {
    common::too_old_beyond_history(&store(5, 100), 5).await;
}

#[tokio::test]
async fn slow_watcher_is_cut_off() {
    common::slow_watcher_is_cut_off(&store(1000, 8), 8).await;
}

#[tokio::test]
async fn progress_notifications() {
    common::progress_notifications(&store(100, 100)).await;
}

#[tokio::test]
async fn bad_selectors() {
    common::bad_selectors(&store(100, 100)).await;
}

#[tokio::test]
async fn dropped_watch_streams_are_forgotten() {
    let s = store(100, 100);
    let w =
        shoal_store::ClusterStore::watch(&s, shoal_store::Kind::Service, 0, &Default::default())
            .await
            .unwrap();
    assert_eq!(s.watcher_count(), 1);
    drop(w);
    shoal_store::ClusterStore::create(&s, common::svc("x", 1))
        .await
        .unwrap();
    assert_eq!(s.watcher_count(), 0);
}
