//! Kubernetes mode end to end: `shoal operator` keeps its desired state in
//! a Kubernetes-dialect API server through the kube-rs backend, and a real
//! agent runs the tasks on the test engine. No kube-apiserver can be had
//! here, so "the cluster" is Shoal's embedded API server over a memory
//! store, started by this test with no controllers of its own: everything
//! that happens to the containers comes from the operator process, which
//! talks to it over HTTP exactly as it would to a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Killed, eventually, host_ready, ok, running};
use shoal_store::{ClusterStore, MemStore};
use shoal_tests::{
    RemoveClusterOnDrop, free_port, main_docker_host, shoal_agent_command, shoal_operator_command,
};

fn start_operator(kc: &Path, data: &Path, port: u16, log: &Path) -> (Killed, String, String) {
    let out = log.with_extension("out");
    let child = Killed(
        shoal_operator_command(Path::new(env!("CARGO_BIN_EXE_shoal")), kc, data, port)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut dispatcher = String::new();
    eventually("the operator to print its dispatcher", 30, || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let found = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("dispatcher:"))
            .and_then(|rest| rest.split_whitespace().next().map(str::to_owned));
        found.map(|d| dispatcher = d).is_some()
    });
    let cluster = std::fs::read_to_string(data.join("cluster-id"))
        .unwrap()
        .trim()
        .to_string();
    (child, dispatcher, cluster)
}

#[test]
fn the_operator_runs_services_from_the_clusters_api() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(shoal_tests::Engine::main()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // "The cluster": an API server and nothing else, over HTTPS with its
    // own CA and a bearer token, as a cluster's is.
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let ca =
        shoal_dispatcher::pki::ClusterPki::load_or_create(&tmp.path().join("ca"), "kube").unwrap();
    let (cert_chain_pem, key_pem) = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
    let token = "a-service-account-token".to_string();
    let security = shoal_apiserver::Security {
        cert_chain_pem,
        key_pem,
        token: token.clone(),
        view_token: None,
    };
    let api = rt
        .block_on(shoal_apiserver::RunningServer::start(
            "127.0.0.1:0".parse().unwrap(),
            store,
            shoal_apiserver::Config {
                security: Some(security),
                ..shoal_apiserver::Config::default()
            },
        ))
        .unwrap();
    assert!(api.url().starts_with("https://"));
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(
        &kc,
        shoal_apiserver::kubeconfig::kubeconfig_secure(&api.url(), "default", ca.ca_pem(), &token),
    )
    .unwrap();

    // The dispatcher keeps its port across restarts, as behind a
    // Kubernetes Service.
    let port = free_port().unwrap();
    let data = tmp.path().join("operator");
    let (operator, dispatcher, cluster) =
        start_operator(&kc, &data, port, &tmp.path().join("operator.log"));
    let _cleanup = RemoveClusterOnDrop(Some(cluster.clone()));
    let host = shoal_tests::unique_name("kube-mode");
    let _agent = Killed(
        shoal_agent_command(
            Path::new(env!("CARGO_BIN_EXE_shoal")),
            &dispatcher,
            &tmp.path().join("agent"),
            &main_docker_host(),
        )
        .args(["--cluster-id", &cluster, "--host-name", &host])
        .stderr(std::fs::File::create(tmp.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    // The Host object is written into the cluster from the agent's hello.
    eventually("the host to join", 30, || {
        common::shoal(&kc, &["host", "ls"]).status.success()
            && ok(&kc, &["host", "ls"]).contains(&host)
    });

    common::apply_web(&kc, 2);
    eventually("2 running containers", 60, || {
        running(&cluster, "web").len() == 2
    });
    eventually("the service's status to say 2 ready", 30, || {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&kc, &["get", "services", "web", "-o", "json"])).unwrap();
        v["status"]["readyReplicas"] == 2
    });
    let before = running(&cluster, "web");

    // The operator dies: the containers run on, and a new one takes over
    // from the cluster's state without restarting any of them.
    drop(operator);
    let (_operator, dispatcher2, cluster2) =
        start_operator(&kc, &data, port, &tmp.path().join("operator2.log"));
    assert_eq!(cluster2, cluster, "the data directory keeps the cluster id");
    assert_eq!(dispatcher2, dispatcher);
    // Past the new operator's start-up grace (10 s): the host is Ready again
    // and its tasks are still the same running containers.
    std::thread::sleep(std::time::Duration::from_secs(11));
    eventually("the host to be Ready again", 30, || host_ready(&kc, &host));
    assert_eq!(running(&cluster, "web"), before, "no container restarted");

    // What the cluster's API cannot serve, the operator's own does: logs
    // and exec of the tasks, through the leader's dispatcher.
    let own = data.join("kubeconfig");
    let logs = ok(&own, &["logs", "web"]);
    assert_eq!(logs.matches("hello from ").count(), 2, "{logs}");
    assert_eq!(ok(&own, &["exec", "web", "--", "echo", "hi"]).trim(), "hi");
    assert!(ok(&own, &["get", "services"]).contains("web"));

    // Scale and delete through the cluster's API: the operator acts on it.
    ok(&kc, &["scale", "web=1"]);
    eventually("1 running container", 60, || {
        running(&cluster, "web").len() == 1
    });
    assert!(before.contains(&running(&cluster, "web")[0]));
    ok(&kc, &["delete", "service", "web"]);
    eventually("the containers to go", 60, || {
        running(&cluster, "web").is_empty()
    });
    eventually("the service and its tasks to go", 60, || {
        let tasks: serde_json::Value =
            serde_json::from_str(&ok(&kc, &["get", "tasks", "-o", "json"])).unwrap();
        tasks["items"].as_array().is_some_and(Vec::is_empty)
            && !common::shoal(&kc, &["get", "services", "web"])
                .status
                .success()
    });
}
