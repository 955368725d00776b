//! Rollouts end to end against `shoal up` on a real engine: a template
//! change with `order: StartFirst` never has fewer running containers than
//! replicas (judged from the engine's own start/die events), `apply --wait`
//! waits out `monitor`; a template that crashes is rolled back by
//! `failureAction: Rollback` (the engine runs the previous template again,
//! the crashing one nowhere), `apply --wait` fails saying so, and `describe`
//! and `events` tell the story; `shoal rollback` restores the template that
//! ran before the current one; a rollout paused by a failing template holds
//! after the cause is fixed outside it, until `shoal resume` carries it on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{eventually, ok, shoal};
use shoal_tests::{Engine, main_docker_host};

const HOST: &str = "e2e-rollout";

/// The service at `version`: `command` runs in its containers.
fn service(version: &str, command: &str) -> String {
    format!(
        r#"apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: {{ name: roll, namespace: default }}
spec:
  replicas: 3
  template:
    image: shoal-test/busybox:1
    command: ["sh", "-c", "{command}"]
    env: [{{ name: VERSION, value: "{version}" }}]
    stopGracePeriod: 1s
  restartPolicy: {{ condition: Always, delay: 0s, maxDelay: 1s }}
  update:
    parallelism: 1
    order: StartFirst
    failureAction: Rollback
    monitor: 2s
"#
    )
}

const SERVES: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";
const CRASHES: &str = "sleep 1; exit 7";

fn apply(kc: &Path, dir: &Path, yaml: &str) -> (Option<i32>, String) {
    let file = dir.join("roll.yaml");
    std::fs::write(&file, yaml).unwrap();
    let o = shoal(
        kc,
        &[
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn docker(args: &[&str]) -> String {
    let o = Command::new("docker")
        .arg("-H")
        .arg(main_docker_host())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "docker {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The template hash of each running container of the service.
fn running_hashes(cluster: &str) -> Vec<String> {
    docker(&[
        "ps",
        "--filter",
        &format!("label=shoal.dev/cluster={cluster}"),
        "--filter",
        "label=shoal.dev/service=roll",
        "--format",
        "{{.Label \"shoal.dev/template-hash\"}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

fn update_status(kc: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&ok(kc, &["get", "service", "roll", "-o", "json"])).unwrap();
    v["status"]["update"].clone()
}

/// The fewest containers of the service running at once between `since`
/// and `until` (unix seconds), replayed from the engine's start and die
/// events in the order the engine recorded them.
fn fewest_running(cluster: &str, since: u64, until: u64) -> (usize, usize) {
    let out = docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=container",
        "--filter",
        &format!("label=shoal.dev/cluster={cluster}"),
        "--filter",
        "label=shoal.dev/service=roll",
        "--format",
        "{{json .}}",
    ]);
    let mut running: BTreeSet<String> = running_at_start(cluster, &out);
    let mut fewest = running.len();
    let mut starts = 0;
    for line in out.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = e["id"].as_str().unwrap().to_owned();
        match e["Action"].as_str().unwrap() {
            "start" => {
                starts += 1;
                running.insert(id);
            }
            "die" => {
                running.remove(&id);
                fewest = fewest.min(running.len());
            }
            _ => {}
        }
    }
    (fewest, starts)
}

/// Containers running when the event window opened: those running now, plus
/// those that died in the window, minus those that started in it.
fn running_at_start(cluster: &str, events: &str) -> BTreeSet<String> {
    let mut now: BTreeSet<String> = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=shoal.dev/cluster={cluster}"),
        "--filter",
        "label=shoal.dev/service=roll",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    for line in events.lines().rev() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = e["id"].as_str().unwrap().to_owned();
        match e["Action"].as_str().unwrap() {
            "start" => {
                now.remove(&id);
            }
            "die" => {
                now.insert(id);
            }
            _ => {}
        }
    }
    now
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn start_first_and_rollback_on_a_real_engine() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Engine::main()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let up = common::start_single(&tmp.path().join("data"), HOST, &tmp.path().join("up.log"));
    let (kc, cluster) = (up.kc.clone(), up.cluster.clone());

    let (code, out) = apply(&kc, tmp.path(), &service("v1", SERVES));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(running_hashes(&cluster).len(), 3);

    // A good template change, start first: never fewer than 3 running, and
    // --wait returns only once the new tasks stayed ready for `monitor`.
    let since = unix_now();
    let t0 = Instant::now();
    let (code, out) = apply(&kc, tmp.path(), &service("v2", SERVES));
    assert_eq!(code, Some(0), "{out}");
    let took = t0.elapsed();
    let u = update_status(&kc);
    assert_eq!(u["state"], "Completed", "{u}");
    let v2 = u["templateHash"].as_str().unwrap().to_owned();
    assert!(took >= Duration::from_secs(2), "--wait took only {took:?}");
    let hashes = running_hashes(&cluster);
    assert_eq!(hashes, vec![v2.clone(); 3], "{hashes:?}");
    std::thread::sleep(Duration::from_secs(1));
    let (fewest, starts) = fewest_running(&cluster, since, unix_now());
    assert_eq!(starts, 3, "three new containers");
    assert!(fewest >= 3, "start first dropped to {fewest} running");

    // A template that crashes: the first new task restarts, the rollout
    // turns around, and the engine runs v2 again.
    let (code, out) = apply(&kc, tmp.path(), &service("v3", CRASHES));
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("rolling back") || out.contains("rolled back"),
        "{out}"
    );
    eventually("the rollback to finish", 60, || {
        update_status(&kc)["state"] == "RolledBack"
    });
    let u = update_status(&kc);
    assert_eq!(u["rollbackTo"], v2.as_str(), "{u}");
    assert!(u["message"].as_str().unwrap().contains("restarted"), "{u}");
    eventually("only v2 containers running", 30, || {
        running_hashes(&cluster) == vec![v2.clone(); 3]
    });
    // And it stays that way: the spec's crashing template is not retried.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(running_hashes(&cluster), vec![v2.clone(); 3]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&kc, &["get", "service", "roll", "-o", "json"])).unwrap();
    assert_eq!(
        v["spec"]["template"]["env"][0]["value"], "v3",
        "the spec is the user's"
    );

    let d = ok(&kc, &["describe", "service", "roll"]);
    assert!(d.contains("RolledBack (template"), "{d}");
    let ev = ok(&kc, &["events"]);
    for reason in [
        "UpdateStarted",
        "UpdateCompleted",
        "RollbackStarted",
        "RolledBack",
    ] {
        assert!(ev.contains(reason), "no {reason} in\n{ev}");
    }

    // A new template rolls out again.
    let (code, out) = apply(&kc, tmp.path(), &service("v4", SERVES));
    assert_eq!(code, Some(0), "{out}");
    let u = update_status(&kc);
    assert_eq!(u["state"], "Completed", "{u}");
    assert_eq!(
        running_hashes(&cluster),
        vec![u["templateHash"].as_str().unwrap().to_owned(); 3]
    );

    // And `shoal rollback` goes back to what ran before it: v2.
    let out = ok(&kc, &["rollback", "roll", "--wait", "--timeout", "60s"]);
    assert!(
        out.contains(&format!("rolled back to template {v2}")),
        "{out}"
    );
    assert_eq!(running_hashes(&cluster), vec![v2.clone(); 3]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&kc, &["get", "service", "roll", "-o", "json"])).unwrap();
    assert_eq!(v["spec"]["template"]["env"][0]["value"], "v2");
}

/// A service whose `version` template runs only once `gate/open` exists
/// on the host (`gated`), else serves at once; failures pause the rollout.
/// The next batch waits 2 s after one is ready: a gated task is Running for
/// a moment before it exits, and without the delay the rollout may move on
/// to the next slot before that exit is seen (as Swarm's would), so how
/// many slots run the new template when it pauses would be a race.
fn gated_service(version: &str, gate: &Path, gated: bool) -> String {
    let command = if gated {
        format!("test -f /gate/open || exit 3; {SERVES}")
    } else {
        SERVES.to_string()
    };
    format!(
        r#"apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: {{ name: gate, namespace: default }}
spec:
  replicas: 3
  template:
    image: shoal-test/busybox:1
    command: ["sh", "-c", "{command}"]
    env: [{{ name: VERSION, value: "{version}" }}]
    mounts: [{{ type: Bind, source: "{}", target: /gate, readOnly: true }}]
    stopGracePeriod: 1s
  restartPolicy: {{ condition: Always, delay: 0s, maxDelay: 1s }}
  update:
    parallelism: 1
    delay: 2s
    failureAction: Pause
    monitor: 2s
"#,
        gate.display()
    )
}

fn gate_status(kc: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&ok(kc, &["get", "service", "gate", "-o", "json"])).unwrap();
    v["status"]["update"].clone()
}

/// The template hash of each running container of service `gate`.
fn gate_hashes(cluster: &str) -> Vec<String> {
    let mut v: Vec<String> = docker(&[
        "ps",
        "--filter",
        &format!("label=shoal.dev/cluster={cluster}"),
        "--filter",
        "label=shoal.dev/service=gate",
        "--format",
        "{{.Label \"shoal.dev/template-hash\"}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    v.sort();
    v
}

#[test]
fn resume_goes_on_with_a_paused_update_on_a_real_engine() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Engine::main()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate");
    std::fs::create_dir(&gate).unwrap();
    let up = common::start_single(
        &tmp.path().join("data"),
        "e2e-resume",
        &tmp.path().join("up.log"),
    );
    let (kc, cluster) = (up.kc.clone(), up.cluster.clone());
    let file = tmp.path().join("gate.yaml");
    let apply = |yaml: String, wait: bool| {
        std::fs::write(&file, yaml).unwrap();
        let mut args = vec!["apply", "-f", file.to_str().unwrap()];
        if wait {
            args.extend(["--wait", "--timeout", "60s"]);
        }
        let o = shoal(&kc, &args);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), out)
    };

    let (code, out) = apply(gated_service("v1", &gate, false), true);
    assert_eq!(code, Some(0), "{out}");
    let v1 = gate_hashes(&cluster);
    assert_eq!(v1.len(), 3, "{v1:?}");

    // The new template fails while the gate is shut: the first new task
    // restarts and the rollout pauses with the other two slots on v1.
    let (code, out) = apply(gated_service("v2", &gate, true), true);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("paused"), "{out}");
    let u = gate_status(&kc);
    assert_eq!(u["state"], "Paused", "{u}");
    let v2 = u["templateHash"].as_str().unwrap().to_owned();

    // The cause goes away outside the template; the paused rollout holds.
    std::fs::write(gate.join("open"), "").unwrap();
    eventually("the new task running", 30, || {
        gate_hashes(&cluster).iter().filter(|h| **h == v2).count() == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gate_status(&kc)["state"], "Paused");
    assert_eq!(
        gate_hashes(&cluster).iter().filter(|h| **h == v2).count(),
        1,
        "nothing more replaced while paused"
    );

    // `shoal resume` carries on to the end.
    let out = ok(&kc, &["resume", "gate", "--wait", "--timeout", "60s"]);
    assert!(out.contains("service/gate update resumed"), "{out}");
    let u = gate_status(&kc);
    assert_eq!(u["state"], "Completed", "{u}");
    assert_eq!(gate_hashes(&cluster), vec![v2.clone(); 3]);
    let ev = ok(&kc, &["events"]);
    assert!(ev.contains("UpdateResumed"), "{ev}");

    // Nothing paused any more: a clear refusal.
    let o = shoal(&kc, &["resume", "gate"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no paused update to resume: its update is Completed"),
        "{err}"
    );

    // A lone control plane has no servers to list or remove.
    let o = shoal(&kc, &["server", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("a single server"), "{err}");
}
