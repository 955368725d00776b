//! Shared setup of the two-host end-to-end tests: `shoal up` on the main
//! test engine plus `shoal agent --dispatcher` for an extra engine in its own
//! network namespace, and small helpers around the `shoal` binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shoal_tests::{Engine, Host, RemoveClusterOnDrop, main_docker_host, shoal_up_command};

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `shoal ARGS` against the kubeconfig, without colours.
pub fn shoal(kc: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env("KUBECONFIG", kc)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs and expects success; returns stdout.
pub fn ok(kc: &Path, args: &[&str]) -> String {
    let o = shoal(kc, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "shoal {args:?}: {:?}\n{out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Polls `f` every 200 ms until true; panics after `secs`.
pub fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// `shoal up` on the main engine as host `host`, its stderr in `log`:
/// killed when dropped, then its containers removed (fields drop in order).
pub struct SingleHost {
    _up: Killed,
    _cleanup: RemoveClusterOnDrop,
    /// The kubeconfig it wrote.
    pub kc: PathBuf,
    /// Its cluster id.
    pub cluster: String,
}

/// Starts [`SingleHost`] in `data` and returns once its host has joined.
pub fn start_single(data: &Path, host: &str, log: &Path) -> SingleHost {
    let up = Killed(
        shoal_up_command(
            Path::new(env!("CARGO_BIN_EXE_shoal")),
            data,
            host,
            &main_docker_host(),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap(),
    );
    let kc = data.join("kubeconfig");
    eventually("the kubeconfig", 30, || {
        std::fs::read_to_string(&kc).is_ok_and(|s| s.contains("server:"))
    });
    let cluster = std::fs::read_to_string(data.join("cluster-id"))
        .unwrap()
        .trim()
        .to_string();
    let single = SingleHost {
        _up: up,
        _cleanup: RemoveClusterOnDrop(Some(cluster.clone())),
        kc,
        cluster,
    };
    eventually("the host to join", 30, || {
        let o = shoal(&single.kc, &["host", "ls"]);
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(host)
    });
    single
}

/// (name, host, phase) of every task of `service`.
pub fn task_hosts(kc: &Path, service: &str) -> Vec<(String, String, String)> {
    let selector = format!("shoal.dev/service={service}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(kc, &["get", "tasks", "-l", &selector, "-o", "json"])).unwrap();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                s(&t["metadata"]["name"]),
                s(&t["spec"]["hostName"]),
                s(&t["status"]["phase"]),
            )
        })
        .collect()
}

/// `shoal up` on the main engine (host `main`) and an extra engine whose
/// agent is started with [`TwoHosts::start_agent`].
pub struct TwoHosts {
    // Fields drop in order: `shoal up` first (its agent would restart what
    // the cleanup removes), then its containers, then the rest.
    _up: Killed,
    _cleanup: RemoveClusterOnDrop,
    /// The main host's name.
    pub main: String,
    /// The extra engine (stopped when dropped).
    pub extra: Host,
    /// The kubeconfig `shoal up` wrote.
    pub kc: PathBuf,
    /// The dispatcher address `shoal up` printed.
    pub dispatcher: String,
    /// The join address `shoal up` printed (with `--join-listen`).
    pub join: Option<String>,
    /// The data directory of `shoal up`.
    pub data: PathBuf,
    /// The cluster id.
    pub cluster: String,
    /// Scratch directory (data, logs).
    pub tmp: tempfile::TempDir,
}

impl TwoHosts {
    /// Starts the extra engine and `shoal up`; returns once the dispatcher
    /// address is printed.
    pub fn start(main: &str, extra_prefix: &str) -> TwoHosts {
        Self::start_with(main, extra_prefix, &[])
    }

    /// [`TwoHosts::start`] with more arguments for `shoal up`.
    pub fn start_with(main: &str, extra_prefix: &str, up_args: &[&str]) -> TwoHosts {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(Engine::main()).unwrap();
        let extra = rt.block_on(Host::start(extra_prefix)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let out_path = tmp.path().join("up.out");
        let up = Killed(
            shoal_up_command(
                Path::new(env!("CARGO_BIN_EXE_shoal")),
                &data,
                main,
                &main_docker_host(),
            )
            .args(up_args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(tmp.path().join("up.log")).unwrap())
            .spawn()
            .unwrap(),
        );
        let mut dispatcher = String::new();
        eventually("shoal up to print the dispatcher", 30, || {
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            let found = out
                .lines()
                .find_map(|l| {
                    let l = l.trim();
                    l.strip_prefix("dispatcher:").or(l.strip_prefix("join:"))
                })
                .and_then(|rest| rest.split_whitespace().next().map(str::to_owned));
            found.map(|d| dispatcher = d).is_some()
        });
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        let join = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("join:"))
            .and_then(|rest| rest.split_whitespace().next().map(str::to_owned));
        let cluster = std::fs::read_to_string(data.join("cluster-id"))
            .unwrap()
            .trim()
            .to_string();
        TwoHosts {
            main: main.to_string(),
            extra,
            kc: data.join("kubeconfig"),
            dispatcher,
            join,
            data,
            _cleanup: RemoveClusterOnDrop(Some(cluster.clone())),
            cluster,
            tmp,
            _up: up,
        }
    }

    /// Starts the extra host's agent and waits until both hosts are Ready.
    pub fn start_agent(&self) -> Killed {
        let agent = Killed(
            Command::new(env!("CARGO_BIN_EXE_shoal"))
                .args(["agent", "--dispatcher", &self.dispatcher])
                .args(["--cluster-id", &self.cluster])
                .args(["--host-name", &self.extra.name])
                .env("DOCKER_HOST", &self.extra.docker_host)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(self.tmp.path().join("agent.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        self.wait_ready(&[&self.main, &self.extra.name]);
        agent
    }

    /// Waits until every host named is Ready (`shoal host ls`).
    pub fn wait_ready(&self, names: &[&str]) {
        eventually("the hosts to be Ready", 30, || {
            names.iter().all(|n| host_ready(&self.kc, n))
        });
    }
}

/// The ids of the running containers of `service` in `cluster` on the main
/// engine, sorted.
pub fn running(cluster: &str, service: &str) -> Vec<String> {
    let o = Command::new("docker")
        .args(["-H", &main_docker_host(), "ps", "-q", "--no-trunc"])
        .args(["--filter", &format!("label=shoal.dev/cluster={cluster}")])
        .args(["--filter", &format!("label=shoal.dev/service={service}")])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Applies (`shoal apply -f`) a Service `web` of `replicas` replicas of the
/// test image that print `hello from HOSTNAME` and stop at once on
/// SIGTERM; its manifest is written beside the kubeconfig.
pub fn apply_web(kc: &Path, replicas: u32) {
    let manifest = kc.with_file_name("web.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: {{ name: web, namespace: default }}
spec:
  replicas: {replicas}
  template:
    image: shoal-test/busybox:1
    command: ["sh", "-c", "echo hello from $(hostname); trap 'exit 0' TERM; sleep 100000 & wait"]
    stopGracePeriod: 1s
"#
        ),
    )
    .unwrap();
    ok(kc, &["apply", "-f", manifest.to_str().unwrap()]);
}

/// Whether `shoal host ls` shows host `name` Ready.
pub fn host_ready(kc: &Path, name: &str) -> bool {
    let o = shoal(kc, &["host", "ls"]);
    o.status.success()
        && String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.split_whitespace().take(2).eq([name, "True"]))
}
