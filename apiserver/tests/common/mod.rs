//! Shared helpers of the API server's conformance tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

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

/// The real `kubectl` with a kubeconfig for a server and a fresh cache.
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a kubectl run printed.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn new(url: &str) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        shoal_apiserver::kubeconfig::write(&kubeconfig, url).unwrap();
        let cache = dir.path().join("cache");
        Kubectl {
            kubeconfig,
            cache,
            _dir: dir,
        }
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    pub async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} took more than 60 s"))
            .unwrap_or_else(|e| panic!("kubectl could not run ({e}): it must be installed"));
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(o.ok, "kubectl {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
        o.stdout
    }
}
