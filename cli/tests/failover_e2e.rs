//! Host loss end to end on two real engines: `shoal up` on the main engine,
//! `shoal agent --dispatcher` for an extra engine. When the extra host's
//! engine is killed (its agent still running and heartbeating), the agent
//! says so, the control plane declares the host lost (`EngineUnavailable`)
//! after the reconnect grace, and its replicas run again on the main host.
//! When the engine returns, the host rejoins (Ready again) and keeps no
//! container of the replaced tasks: never more replicas than desired.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{TwoHosts, eventually, ok, task_hosts};
use shoal_tests::{main_docker_host, test_env_script};

const REPLICAS: usize = 6;

const SERVICE: &str = r#"
apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: { name: sleeper, namespace: default }
spec:
  replicas: 6
  template:
    image: shoal-test/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
    stopGracePeriod: 1s
"#;

fn test_env(args: &[&str]) {
    let o = Command::new(test_env_script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "test-env {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Running containers of the service on an engine.
fn running(docker_host: &str, cluster: &str, all: bool) -> usize {
    let mut c = Command::new("docker");
    c.args(["-H", docker_host, "ps", "-q"]);
    if all {
        c.arg("-a");
    }
    let o = c
        .args(["--filter", &format!("label=shoal.dev/cluster={cluster}")])
        .args(["--filter", "label=shoal.dev/service=sleeper"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).lines().count()
}

fn host_condition_reason(kc: &std::path::Path, host: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&ok(kc, &["get", "hosts", host, "-o", "json"])).unwrap();
    v["status"]["conditions"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_dead_engine_loses_its_host_and_its_replicas_run_elsewhere() {
    let hosts = TwoHosts::start("fo-main", "fo");
    let (kc, extra) = (&hosts.kc, &hosts.extra);
    let _agent = hosts.start_agent();
    let manifest = hosts.tmp.path().join("sleeper.yaml");
    std::fs::write(&manifest, SERVICE).unwrap();
    ok(kc, &["apply", "-f", manifest.to_str().unwrap()]);
    eventually("replicas running on both hosts", 60, || {
        let t = task_hosts(kc, "sleeper");
        let on = |h: &str| {
            t.iter()
                .filter(|(_, host, p)| host == h && p == "Running")
                .count()
        };
        on(&hosts.main) + on(&extra.name) == REPLICAS && on(&extra.name) > 0
    });
    let on_extra = task_hosts(kc, "sleeper")
        .iter()
        .filter(|(_, h, _)| h == &extra.name)
        .count();

    // SIGKILL of the extra engine (its containers die with it); the agent
    // lives on and keeps its session.
    let killed = Instant::now();
    test_env(&["host", "kill", &extra.name]);
    eventually("all replicas running on the main host", 30, || {
        running(&main_docker_host(), &hosts.cluster, false) == REPLICAS
    });
    eprintln!(
        "{on_extra} replicas back on the main host {:.1} s after the engine kill",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(host_condition_reason(kc, &extra.name), "EngineUnavailable");
    let t = task_hosts(kc, "sleeper");
    let orphaned = t
        .iter()
        .filter(|(_, h, p)| h == &extra.name && p == "Orphaned")
        .count();
    assert_eq!(orphaned, on_extra, "{t:?}");

    // The engine returns: the host rejoins and removes the stale containers;
    // the replicas stay where they run now.
    test_env(&["host", "start", &extra.name]);
    hosts.wait_ready(&[&hosts.main, &extra.name]);
    eventually(
        "no container of the replaced tasks on the extra host",
        30,
        || running(&extra.docker_host, &hosts.cluster, true) == 0,
    );
    assert_eq!(
        running(&main_docker_host(), &hosts.cluster, false),
        REPLICAS
    );
    ok(kc, &["delete", "service", "sleeper", "--wait"]);
}
