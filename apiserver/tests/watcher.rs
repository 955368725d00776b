//! Conformance with `kube::runtime::watcher`: order of events, resuming
//! from the last resourceVersion across a server restart, and the relist
//! after an in-stream 410.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use shoal_crds::Service;
use shoal_store::ClusterStore;
use shoal_store::hub::WatchConfig;
use shoal_store::mem::MemStore;

type Events =
    std::pin::Pin<Box<dyn Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + Send>>;

/// The next event that is not an error (errors happen while the server is down).
async fn next(w: &mut Events) -> watcher::Event<Service> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Some(Ok(ev))) => return ev,
            Ok(Some(Err(_))) => continue,
            Ok(None) => panic!("the watcher stream ended"),
            Err(_) => panic!("no watcher event within 20 s"),
        }
    }
}

fn describe(ev: &watcher::Event<Service>) -> String {
    let name = |s: &Service| s.metadata.name.clone().unwrap_or_default();
    match ev {
        watcher::Event::Apply(s) => format!("apply {} {}", name(s), s.spec.replicas.unwrap_or(0)),
        watcher::Event::Delete(s) => format!("delete {}", name(s)),
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(s) => format!("initapply {}", name(s)),
        watcher::Event::InitDone => "initdone".into(),
    }
}

async fn expect(w: &mut Events, want: &str) {
    let ev = next(w).await;
    assert_eq!(describe(&ev), want);
}

fn events(api: Api<Service>) -> Events {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed()
}

#[tokio::test]
async fn watcher_sees_create_update_delete_in_order() {
    let (server, _store) = common::start().await;
    let api: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    let mut w = events(api.clone());
    expect(&mut w, "init").await;
    expect(&mut w, "initdone").await;

    api.create(&PostParams::default(), &common::typed_service("web", 1))
        .await
        .unwrap();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
    )
    .await
    .unwrap();
    api.delete("web", &DeleteParams::default()).await.unwrap();
    expect(&mut w, "apply web 1").await;
    expect(&mut w, "apply web 2").await;
    expect(&mut w, "delete web").await;
    drop(w);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn watcher_resumes_from_its_resource_version_across_a_server_restart() {
    let store = Arc::new(MemStore::new());
    let server = common::start_on("127.0.0.1:0".parse().unwrap(), store.clone()).await;
    let addr = server.addr();
    let api: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    api.create(&PostParams::default(), &common::typed_service("a", 1))
        .await
        .unwrap();
    let mut w = events(api.clone());
    expect(&mut w, "init").await;
    expect(&mut w, "initapply a").await;
    expect(&mut w, "initdone").await;

    // The server goes away (its watches end); a change lands meanwhile.
    server.shutdown().await.unwrap();
    store.create(common::service("c", 3)).await.unwrap();
    let server = common::start_on(addr, store.clone()).await;
    api.create(&PostParams::default(), &common::typed_service("b", 2))
        .await
        .unwrap();
    // Resumed from its last resourceVersion: the missed change first, then
    // the new one, and no relist (no Init).
    expect(&mut w, "apply c 3").await;
    expect(&mut w, "apply b 2").await;
    drop(w);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn watcher_relists_on_the_in_stream_410() {
    let store = Arc::new(MemStore::with_config(WatchConfig {
        history: 2,
        ..WatchConfig::default()
    }));
    let server = common::start_on("127.0.0.1:0".parse().unwrap(), store.clone()).await;
    let addr = server.addr();
    let api: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    // (A non-empty store, so the watcher's version is not "0", which means "any".)
    store.create(common::service("first", 1)).await.unwrap();
    let mut w = events(api.clone());
    expect(&mut w, "init").await;
    expect(&mut w, "initapply first").await;
    expect(&mut w, "initdone").await;

    server.shutdown().await.unwrap();
    // More changes than the history holds: the watcher's version expires.
    for i in 0..5 {
        store
            .create(common::service(&format!("s{i}"), 1))
            .await
            .unwrap();
    }
    let server = common::start_on(addr, store.clone()).await;
    // It gets the in-stream 410 (an error event, skipped by `next`) and relists.
    expect(&mut w, "init").await;
    expect(&mut w, "initapply first").await;
    for i in 0..5 {
        expect(&mut w, &format!("initapply s{i}")).await;
    }
    expect(&mut w, "initdone").await;
    api.delete("s0", &DeleteParams::default()).await.unwrap();
    expect(&mut w, "delete s0").await;
    drop(w);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_watch_answers_an_expired_version_with_200_and_an_error_event() {
    let store = Arc::new(MemStore::with_config(WatchConfig {
        history: 2,
        ..WatchConfig::default()
    }));
    for i in 0..5 {
        store
            .create(common::service(&format!("s{i}"), 1))
            .await
            .unwrap();
    }
    let server = common::start_on("127.0.0.1:0".parse().unwrap(), store.clone()).await;
    let client = common::client(&server.url());
    let req = http::Request::get(
        "/apis/shoal.dev/v1alpha1/namespaces/default/services?watch=1&resourceVersion=1&allowWatchBookmarks=true",
    )
    .body(kube::client::Body::from(Vec::new()))
    .unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let ev: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");

    // A current version with bookmarks: a BOOKMARK arrives within a few
    // seconds, and timeoutSeconds ends the stream.
    let rv = store.revision().await.unwrap();
    let req = http::Request::get(format!(
        "/apis/shoal.dev/v1alpha1/namespaces/default/services?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=3"
    ))
    .body(kube::client::Body::from(Vec::new()))
    .unwrap();
    let resp = client.send(req).await.unwrap();
    let started = std::time::Instant::now();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(started.elapsed() >= Duration::from_secs(2));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "BOOKMARK");
    assert_eq!(
        first["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let (server, store) = common::start().await;
    store.create(common::service("a", 1)).await.unwrap();
    let api: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    let mut w: Events = watcher(api.clone(), watcher::Config::default().streaming_lists())
        .default_backoff()
        .boxed();
    expect(&mut w, "init").await;
    expect(&mut w, "initapply a").await;
    expect(&mut w, "initdone").await;
    api.create(&PostParams::default(), &common::typed_service("b", 2))
        .await
        .unwrap();
    expect(&mut w, "apply b 2").await;
    drop(w);
    server.shutdown().await.unwrap();
}

/// Opens the durable store of `dir` (blocking: replays the log).
async fn open_raft(dir: &std::path::Path) -> Arc<shoal_store::RaftStore> {
    let dir = dir.to_owned();
    let s = tokio::task::spawn_blocking(move || shoal_store::RaftStore::open_single(dir))
        .await
        .unwrap()
        .unwrap();
    Arc::new(s)
}

/// Closes the store once the server's last handle on it is gone (its
/// connection tasks may still be finishing when `shutdown` returns).
async fn close_raft(mut store: Arc<shoal_store::RaftStore>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let s = loop {
        match Arc::try_unwrap(store) {
            Ok(s) => break s,
            Err(again) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the server still holds the store"
                );
                store = again;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    tokio::task::spawn_blocking(move || drop(s)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_across_a_restart_of_server_and_durable_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_raft(dir.path()).await;
    let server = common::start_on("127.0.0.1:0".parse().unwrap(), store.clone()).await;
    let addr = server.addr();
    let api: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    api.create(&PostParams::default(), &common::typed_service("a", 1))
        .await
        .unwrap();
    let mut w = events(api.clone());
    expect(&mut w, "init").await;
    expect(&mut w, "initapply a").await;
    expect(&mut w, "initdone").await;

    // Everything stops: server and store; both come back from the data dir.
    server.shutdown().await.unwrap();
    close_raft(store).await;
    let store = open_raft(dir.path()).await;
    let server = common::start_on(addr, store.clone()).await;
    api.create(&PostParams::default(), &common::typed_service("b", 2))
        .await
        .unwrap();
    // Resumed at its version: the new object, without a relist.
    expect(&mut w, "apply b 2").await;
    assert_eq!(api.get("a").await.unwrap().spec.replicas, Some(1));
    drop(w);
    server.shutdown().await.unwrap();
    close_raft(store).await;
}
