//! Two operators in kubernetes mode, one leading: the leader is SIGKILLed
//! and the other takes over — through the Lease, with the cluster's
//! identity from the state Secret — and a real agent follows it without a
//! container restarted.
//!
//! "The cluster" is Shoal's embedded API server (the shoal.dev kinds and
//! Events) with, in front of it, this test's own handlers of the two
//! cluster APIs the embedded one does not serve: Leases and Secrets, kept
//! in memory with Kubernetes' create/read/replace semantics (409 on an
//! existing name or a stale resourceVersion). No kube-apiserver can be had
//! here; the operators speak to this over HTTP through kube-rs as to a
//! cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::{Killed, eventually, host_ready, ok, running};
use serde_json::{Value, json};
use shoal_store::{ClusterStore, MemStore};
use shoal_tests::{
    RemoveClusterOnDrop, free_port, main_docker_host, shoal_agent_command, shoal_operator_command,
};

/// Objects by path, and the last resourceVersion handed out.
#[derive(Default)]
struct Extra {
    objects: HashMap<String, Value>,
    revision: u64,
}

type Shared = Arc<Mutex<Extra>>;

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "code": code.as_u16(), "reason": reason, "message": message});
    (code, Json(body)).into_response()
}

async fn create(State(s): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let mut obj: Value = serde_json::from_slice(&bytes).unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let key = format!("{path}/{name}");
    let mut s = s.lock().unwrap();
    if s.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{name} exists"),
        );
    }
    s.revision += 1;
    obj["metadata"]["resourceVersion"] = json!(s.revision.to_string());
    s.objects.insert(key, obj.clone());
    (StatusCode::CREATED, Json(obj)).into_response()
}

async fn read(State(s): State<Shared>, req: Request) -> Response {
    match s.lock().unwrap().objects.get(req.uri().path()) {
        Some(obj) => Json(obj.clone()).into_response(),
        None => status(StatusCode::NOT_FOUND, "NotFound", "not found".into()),
    }
}

async fn replace(State(s): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let mut obj: Value = serde_json::from_slice(&bytes).unwrap();
    let mut s = s.lock().unwrap();
    let Some(cur) = s.objects.get(&path) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "not found".into());
    };
    if cur["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified".into(),
        );
    }
    s.revision += 1;
    obj["metadata"]["resourceVersion"] = json!(s.revision.to_string());
    s.objects.insert(path, obj.clone());
    Json(obj).into_response()
}

/// Serves the stand-in cluster on a loopback port; returns its URL, the
/// Leases and Secrets, and the sender whose drop ends its watches.
async fn serve_cluster() -> (String, Shared, tokio::sync::watch::Sender<bool>) {
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let api = shoal_apiserver::router(store, shoal_apiserver::Config::default(), rx).unwrap();
    let extra = Shared::default();
    let leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
    let secrets = "/api/v1/namespaces/{ns}/secrets";
    let app = axum::Router::new()
        .route(leases, post(create))
        .route(&format!("{leases}/{{name}}"), get(read).put(replace))
        .route(secrets, post(create))
        .route(&format!("{secrets}/{{name}}"), get(read))
        .with_state(extra.clone())
        .fallback_service(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, extra, stop)
}

fn operator(kc: &Path, data: &Path, port: u16, log: &Path) -> Killed {
    Killed(
        shoal_operator_command(Path::new(env!("CARGO_BIN_EXE_shoal")), kc, data, port)
            .arg("--leader-elect")
            .args(["--state-secret", "shoal-state", "--namespace", "shoal"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn holder(extra: &Shared) -> Option<String> {
    let s = extra.lock().unwrap();
    s.objects
        .get("/apis/coordination.k8s.io/v1/namespaces/shoal/leases/shoal-operator")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
}

#[test]
fn a_standby_operator_takes_over_from_a_killed_leader() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(shoal_tests::Engine::main()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (url, extra, _stop) = rt.block_on(serve_cluster());
    let kc = tmp.path().join("kubeconfig");
    shoal_apiserver::kubeconfig::write(&kc, &url).unwrap();

    // Two operators, each with its own data directory and dispatcher port.
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let data_a = tmp.path().join("a");
    let data_b = tmp.path().join("b");
    let op_a = operator(&kc, &data_a, port_a, &tmp.path().join("a.log"));
    eventually("the first operator to lead", 30, || listening(port_a));
    let mut op_b = Some(operator(&kc, &data_b, port_b, &tmp.path().join("b.log")));
    // The second shares the first's cluster through the Secret, and waits.
    eventually("the second operator's cluster id", 30, || {
        data_b.join("cluster-id").exists()
    });
    let cluster = std::fs::read_to_string(data_a.join("cluster-id")).unwrap();
    assert_eq!(
        std::fs::read_to_string(data_b.join("cluster-id")).unwrap(),
        cluster
    );
    let cluster = cluster.trim().to_string();
    let _cleanup = RemoveClusterOnDrop(Some(cluster.clone()));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!listening(port_b), "a standby runs no dispatcher");
    let first = holder(&extra).expect("a lease holder");

    // One agent, given both operators' addresses.
    let host = shoal_tests::unique_name("kube-ha");
    let _agent = Killed(
        shoal_agent_command(
            Path::new(env!("CARGO_BIN_EXE_shoal")),
            &format!("http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}"),
            &tmp.path().join("agent"),
            &main_docker_host(),
        )
        .args(["--cluster-id", &cluster, "--host-name", &host])
        .stderr(std::fs::File::create(tmp.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    eventually("the host to be Ready", 30, || host_ready(&kc, &host));
    common::apply_web(&kc, 2);
    eventually("2 running containers", 60, || {
        running(&cluster, "web").len() == 2
    });
    let before = running(&cluster, "web");

    // The leader dies without a word: the standby takes the lease once its
    // record has not changed for the lease's 15 s, and leads.
    let killed = Instant::now();
    drop(op_a);
    eventually("the standby to lead", 40, || listening(port_b));
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(10),
        "not before the lease could expire: {took:?}"
    );
    let second = holder(&extra).expect("a lease holder");
    assert_ne!(second, first);
    // The agent finds it; no container restarted; the new leader acts.
    eventually("the host to be Ready under the new leader", 30, || {
        host_ready(&kc, &host)
    });
    assert_eq!(running(&cluster, "web"), before, "no container restarted");
    ok(&kc, &["scale", "web=3"]);
    eventually("3 running containers", 60, || {
        running(&cluster, "web").len() == 3
    });

    // A clean stop gives the lease up at once.
    let b = op_b.take().unwrap();
    let pid = b.0.id().to_string();
    let t = Instant::now();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    eventually("the lease to be given up", 20, || holder(&extra).is_none());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(b);
}
