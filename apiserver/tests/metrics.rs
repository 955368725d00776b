//! `GET /metrics`: the API's requests and the cluster as the store holds it,
//! in the Prometheus text format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use serde_json::json;
use shoal_apiserver::metrics::{MetricsSource, Sample, SampleKind};
use shoal_apiserver::{Config, RunningServer};
use shoal_store::ClusterStore;
use shoal_store::mem::MemStore;

#[derive(Debug)]
struct Fixed;

impl MetricsSource for Fixed {
    fn samples(&self) -> Vec<Sample> {
        vec![
            Sample {
                name: "shoal_raft_term",
                help: "term",
                kind: SampleKind::Gauge,
                value: 7,
            },
            Sample {
                name: "shoal_raft_proposals",
                help: "proposals",
                kind: SampleKind::Counter,
                value: 42,
            },
        ]
    }
}

fn task(name: &str, phase: &str, restarts: i64) -> serde_json::Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Task",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"service": "web", "slot": 0, "templateHash": "abc", "hostName": "node-1",
                 "template": {"image": "shoal-test/busybox:1"}},
        "status": {"phase": phase, "restartCount": restarts},
    })
}

async fn metrics(url: &str) -> String {
    let client = common::client(url);
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    client.request_text(req).await.unwrap()
}

#[tokio::test]
async fn metrics_show_requests_the_cluster_and_the_servers_own() {
    let store = Arc::new(MemStore::new());
    let mut svc = common::service("web", 3);
    svc["status"] = json!({"replicas": 3, "readyReplicas": 2});
    store.create(svc).await.unwrap();
    store.create(task("web-0", "Running", 2)).await.unwrap();
    store.create(task("web-1", "Running", 1)).await.unwrap();
    store.create(task("web-2", "Pending", 0)).await.unwrap();
    store
        .create(json!({
            "apiVersion": "shoal.dev/v1alpha1", "kind": "Host",
            "metadata": {"name": "node-1"},
            "spec": {"availability": "Drain"},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-11-25T00:00:00Z", "reason": "Heartbeat", "message": ""}],
                "allocatable": {"cpu": "1500m", "memory": "2Gi"}},
        }))
        .await
        .unwrap();
    let server = RunningServer::start(
        "127.0.0.1:0".parse().unwrap(),
        store.clone() as Arc<dyn ClusterStore>,
        Config {
            metrics: Some(Arc::new(Fixed)),
            ..Config::default()
        },
    )
    .await
    .unwrap();
    let url = server.url();
    // Some requests to count: a list and a miss.
    let client = common::client(&url);
    let ok = http::Request::get("/apis/shoal.dev/v1alpha1/namespaces/default/services")
        .body(Vec::new())
        .unwrap();
    client.request_text(ok).await.unwrap();
    let missing = http::Request::get("/apis/shoal.dev/v1alpha1/namespaces/default/services/nope")
        .body(Vec::new())
        .unwrap();
    assert!(client.request_text(missing).await.is_err());

    let text = metrics(&url).await;
    for line in [
        "shoal_services 1",
        r#"shoal_service_replicas_desired{namespace="default",service="web"} 3"#,
        r#"shoal_service_replicas_ready{namespace="default",service="web"} 2"#,
        r#"shoal_service_restarts{namespace="default",service="web"} 3"#,
        r#"shoal_tasks{phase="Running"} 2"#,
        r#"shoal_tasks{phase="Pending"} 1"#,
        r#"shoal_hosts{ready="True",availability="Drain"} 1"#,
        r#"shoal_host_tasks_running{host="node-1"} 2"#,
        r#"shoal_host_allocatable_cpu_millicores{host="node-1"} 1500"#,
        r#"shoal_host_allocatable_memory_bytes{host="node-1"} 2147483648"#,
        r#"shoal_api_requests_total{method="GET",code="200"} 1"#,
        r#"shoal_api_requests_total{method="GET",code="404"} 1"#,
        "shoal_raft_term 7",
        "shoal_raft_proposals_total 42",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }
    assert!(
        text.contains(r#"shoal_api_request_duration_seconds_count{method="GET"}"#),
        "{text}"
    );
    server.shutdown().await.unwrap();
}
