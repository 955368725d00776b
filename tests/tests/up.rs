//! `shoal up` end to end on a real engine, driven through `kubectl` and
//! kube-rs: apply the web example, self-heal a killed container, scale up and
//! down, roll out a template change in batches, delete, and survive `kill -9`
//! of the whole process in the middle of a scale-up without restarting a
//! surviving container.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, ListParams};
use shoal_crds::{Service, Task, TaskPhase};
use shoal_tests::bollard::Docker;
use shoal_tests::bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder,
};
use shoal_tests::{connect, eventually, main_docker_host, repo_root};

/// The `shoal` binary next to this test's executable (cargo builds the
/// workspace's binaries before its tests).
fn shoal_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("shoal");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build) first",
        bin.display()
    );
    bin
}

struct Up {
    child: Child,
}

impl Up {
    fn start(data: &Path) -> Up {
        let log = std::fs::File::create(data.with_extension("log")).unwrap();
        let child =
            shoal_tests::shoal_up_command(&shoal_bin(), data, "e2e-host", &main_docker_host())
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
        Up { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..100 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("shoal up did not stop within 10s of SIGTERM");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Running containers of the cluster: id → (slot, started at).
async fn running(docker: &Docker, cluster: &str) -> BTreeMap<String, (String, String)> {
    let filters = std::collections::HashMap::from([
        (
            "label".to_string(),
            vec![format!("shoal.dev/cluster={cluster}")],
        ),
        ("status".to_string(), vec!["running".to_string()]),
    ]);
    let opts = ListContainersOptionsBuilder::default()
        .all(false)
        .filters(&filters)
        .build();
    let mut out = BTreeMap::new();
    for c in docker.list_containers(Some(opts)).await.unwrap() {
        let id = c.id.unwrap_or_default();
        let slot = c
            .labels
            .unwrap_or_default()
            .get("shoal.dev/slot")
            .cloned()
            .unwrap_or_default();
        let started = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.started_at)
            .unwrap_or_default();
        out.insert(id, (slot, started));
    }
    out
}

/// `StartedAt` of every container of a service, running or not.
async fn started_of(docker: &Docker, cluster: &str, service: &str) -> Vec<String> {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![
            format!("shoal.dev/cluster={cluster}"),
            format!("shoal.dev/service={service}"),
        ],
    )]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut out = Vec::new();
    for c in docker.list_containers(Some(opts)).await.unwrap() {
        let info = docker
            .inspect_container(&c.id.unwrap_or_default(), None::<InspectContainerOptions>)
            .await
            .unwrap();
        out.push(info.state.and_then(|s| s.started_at).unwrap_or_default());
    }
    out
}

/// (phase, restart count) of every task of a service.
async fn task_states(kube: &kube::Client, service: &str) -> Vec<(Option<TaskPhase>, Option<i32>)> {
    let tasks: Api<Task> = Api::namespaced(kube.clone(), "default");
    tasks
        .list(&ListParams::default().labels(&format!("shoal.dev/service={service}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|t| {
            let s = t.status.unwrap_or_default();
            (s.phase, s.restart_count)
        })
        .collect()
}

/// A service that fails for good at once: two restarts, then Failed.
const QUITTER: &str = r#"
apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: { name: quitter, namespace: default }
spec:
  replicas: 1
  template:
    image: shoal-test/busybox:1
    command: ["sh", "-c", "exit 3"]
  restartPolicy: { condition: OnFailure, maxAttempts: 2, maxDelay: 100ms, window: 60s }
"#;

async fn all_containers(docker: &Docker, cluster: &str) -> usize {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("shoal.dev/cluster={cluster}")],
    )]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker.list_containers(Some(opts)).await.unwrap().len()
}

async fn wait_kubeconfig(data: &Path, previous: Option<&str>) -> PathBuf {
    let kc = data.join("kubeconfig");
    eventually("the kubeconfig", 30, || {
        let kc = kc.clone();
        async move {
            std::fs::read_to_string(&kc)
                .is_ok_and(|s| Some(s.as_str()) != previous && s.contains("server:"))
        }
    })
    .await;
    kc
}

async fn ready_replicas(client: &kube::Client) -> (i32, i32) {
    let svc: Api<Service> = Api::namespaced(client.clone(), "default");
    match svc.get_opt("web").await.unwrap() {
        Some(s) => (
            s.spec.replicas(),
            s.status.and_then(|st| st.ready_replicas).unwrap_or(0),
        ),
        None => (-1, -1),
    }
}

/// The replica answers HTTP on its published host port (picked by the
/// engine: the example asks for hostPort 0).
async fn http_ok(docker: &Docker, id: &str) -> bool {
    let Ok(info) = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    else {
        return false;
    };
    let ports = info
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default();
    let host_ports: Vec<u16> = ports
        .get("8080/tcp")
        .cloned()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| b.host_port.and_then(|p| p.parse().ok()))
        .collect();
    for port in host_ports {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if shoal_tests::http_get(addr, "/etc/hostname", Duration::from_secs(3))
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_up_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cache = tmp.path().join("kube-cache");
    let mut cleanup = shoal_tests::RemoveClusterOnDrop(None);
    let docker = connect(&main_docker_host()).await.unwrap();

    let mut up = Up::start(&data);
    let kc = wait_kubeconfig(&data, None).await;
    let cluster = std::fs::read_to_string(data.join("cluster-id"))
        .unwrap()
        .trim()
        .to_string();
    cleanup.0 = Some(cluster.clone());
    let kube = client(&kc).await;

    // Apply the web example: 3 containers, each serving HTTP.
    let example = repo_root().join("examples/web.yaml");
    kubectl(&kc, &cache, &["apply", "-f", example.to_str().unwrap()]);
    eventually("3 ready replicas", 60, || {
        let kube = kube.clone();
        async move { ready_replicas(&kube).await == (3, 3) }
    })
    .await;
    let first = running(&docker, &cluster).await;
    assert_eq!(first.len(), 3, "{first:?}");
    for id in first.keys() {
        assert!(
            http_ok(&docker, id).await,
            "replica {id} does not answer on 8080"
        );
    }
    let tasks: Api<Task> = Api::namespaced(kube.clone(), "default");
    let placed = tasks
        .list(&ListParams::default().labels("shoal.dev/service=web"))
        .await
        .unwrap();
    assert!(
        placed
            .items
            .iter()
            .all(|t| t.spec.host_name.as_deref() == Some("e2e-host"))
    );

    // docker kill one: running again, restarted in place by the agent.
    let victim = first.keys().next().unwrap().clone();
    Command::new("docker")
        .args(["-H", &main_docker_host(), "kill", &victim])
        .output()
        .unwrap();
    eventually("the killed container to run again", 20, || {
        let docker = docker.clone();
        let victim = victim.clone();
        async move {
            docker
                .inspect_container(&victim, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.running)
                == Some(true)
        }
    })
    .await;

    // Scale to 5, then 1.
    kubectl(&kc, &cache, &["scale", "ssvc/web", "--replicas=5"]);
    eventually("5 running", 60, || {
        let docker = docker.clone();
        let cluster = cluster.clone();
        async move { running(&docker, &cluster).await.len() == 5 }
    })
    .await;
    kubectl(&kc, &cache, &["scale", "ssvc/web", "--replicas=1"]);
    eventually("1 running, the others removed", 60, || {
        let docker = docker.clone();
        let cluster = cluster.clone();
        async move {
            running(&docker, &cluster).await.len() == 1
                && all_containers(&docker, &cluster).await == 1
        }
    })
    .await;

    // Template change with 3 replicas: replaced one at a time (parallelism 1).
    kubectl(&kc, &cache, &["scale", "ssvc/web", "--replicas=3"]);
    eventually("3 ready again", 60, || {
        let kube = kube.clone();
        async move { ready_replicas(&kube).await == (3, 3) }
    })
    .await;
    let old_hash = tasks.list(&ListParams::default()).await.unwrap().items[0]
        .spec
        .template_hash
        .clone();
    kubectl(
        &kc,
        &cache,
        &[
            "patch",
            "ssvc/web",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"env":[{"name":"GREETING","value":"bonjour"}]}}}"#,
        ],
    );
    let max_old_down = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    eventually("every task on the new template", 90, || {
        let tasks = tasks.clone();
        let old_hash = old_hash.clone();
        let max_old_down = max_old_down.clone();
        async move {
            let items = tasks.list(&ListParams::default()).await.unwrap().items;
            let live_new = items
                .iter()
                .filter(|t| {
                    t.spec.template_hash != old_hash
                        && t.spec.desired_state() == shoal_crds::DesiredState::Running
                })
                .count();
            let live_old = items
                .iter()
                .filter(|t| {
                    t.spec.template_hash == old_hash
                        && t.spec.desired_state() == shoal_crds::DesiredState::Running
                })
                .count();
            // Batches of one: never more than one slot without a live task.
            max_old_down.fetch_max(
                3usize.saturating_sub(live_new + live_old),
                std::sync::atomic::Ordering::SeqCst,
            );
            live_new == 3
                && items
                    .iter()
                    .filter(|t| t.spec.template_hash != old_hash)
                    .all(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running))
        }
    })
    .await;
    let down = max_old_down.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        down <= 1,
        "{down} slots were down at once with parallelism 1"
    );
    let env_now = Command::new("docker")
        .args([
            "-H",
            &main_docker_host(),
            "ps",
            "-q",
            "--filter",
            &format!("label=shoal.dev/cluster={cluster}"),
        ])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&env_now.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        let info = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .unwrap();
        let env = info.config.and_then(|c| c.env).unwrap_or_default();
        assert!(
            env.contains(&"GREETING=bonjour".to_string()),
            "{id}: {env:?}"
        );
    }

    // A task that failed for good stays so across the restart below: its
    // restart count kept, its container not started again.
    let quitter = tmp.path().join("quitter.yaml");
    std::fs::write(&quitter, QUITTER).unwrap();
    kubectl(&kc, &cache, &["apply", "-f", quitter.to_str().unwrap()]);
    let failed = vec![(Some(TaskPhase::Failed), Some(2))];
    eventually("quitter Failed after 2 restarts", 30, || {
        let (kube, failed) = (kube.clone(), failed.clone());
        async move { task_states(&kube, "quitter").await == failed }
    })
    .await;
    let quitter_started = started_of(&docker, &cluster, "quitter").await;
    assert_eq!(quitter_started.len(), 1, "{quitter_started:?}");

    // kill -9 in the middle of a scale-up, then `shoal up` again.
    let before = running(&docker, &cluster).await;
    kubectl(&kc, &cache, &["scale", "ssvc/web", "--replicas=8"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.kill9();
    let old_kc = std::fs::read_to_string(&kc).unwrap();
    up = Up::start(&data);
    let kc = wait_kubeconfig(&data, Some(&old_kc)).await;
    let kube = client(&kc).await;
    eventually("8 ready after the restart", 90, || {
        let kube = kube.clone();
        async move { ready_replicas(&kube).await == (8, 8) }
    })
    .await;
    let after = running(&docker, &cluster).await;
    assert_eq!(after.len(), 8, "exactly the desired number: {after:?}");
    // The new agent has planned every task by now; give a wrong restart of
    // the failed one a moment to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        started_of(&docker, &cluster, "quitter").await,
        quitter_started,
        "the Failed task's container was started again"
    );
    assert_eq!(task_states(&kube, "quitter").await, failed);
    for (id, (slot, started)) in &before {
        assert_eq!(
            after.get(id),
            Some(&(slot.clone(), started.clone())),
            "container {id} (slot {slot}) was restarted or lost"
        );
    }

    // Delete: every container goes, and the Task objects with them.
    kubectl(
        &kc,
        &cache,
        &[
            "delete",
            "ssvc/web",
            "ssvc/quitter",
            "--wait=true",
            "--timeout=60s",
        ],
    );
    eventually("no containers and no tasks", 60, || {
        let docker = docker.clone();
        let cluster = cluster.clone();
        let tasks: Api<Task> = Api::namespaced(kube.clone(), "default");
        async move {
            all_containers(&docker, &cluster).await == 0
                && tasks
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .is_empty()
        }
    })
    .await;

    // SIGTERM stops Shoal cleanly.
    assert!(up.terminate().success());
    drop(up);
}
