//! Shared helpers of the API server's conformance tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use serde_json::{Value, json};
use shoal_apiserver::{Config, RunningServer};
use shoal_store::ClusterStore;
use shoal_store::mem::MemStore;

/// A server on a free loopback port over `store`.
pub async fn start_on(addr: SocketAddr, store: Arc<dyn ClusterStore>) -> RunningServer {
    RunningServer::start(addr, store, Config::default())
        .await
        .unwrap()
}

/// A server over a fresh MemStore.
pub async fn start() -> (RunningServer, Arc<MemStore>) {
    let store = Arc::new(MemStore::new());
    let s = start_on("127.0.0.1:0".parse().unwrap(), store.clone()).await;
    (s, store)
}

/// A kube-rs client for a server URL, default namespace `default`.
pub fn client(url: &str) -> Client {
    let cfg = kube::Config::new(url.parse().unwrap());
    Client::try_from(cfg).unwrap()
}

/// A valid Service manifest.
pub fn service(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default", "labels": { "app": name } },
        "spec": {
            "replicas": replicas,
            "template": { "image": "shoal-test/busybox:1", "command": ["sleep", "1000"] },
        },
    })
}

/// A typed Service.
pub fn typed_service(name: &str, replicas: i64) -> shoal_crds::Service {
    serde_json::from_value(service(name, replicas)).unwrap()
}
