//! Helpers shared by the benchmarks in `src/bin`: running and logging commands, medians,
//! the `shoal` binary and a `shoal up` process, and counting a label's containers on an
//! engine.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use shoal_tests::{TEST_IMAGE, repo_root};

/// The workload of the container benchmarks (run with `sh -c`): sleeps until SIGTERM, then
/// exits at once.
pub const SLEEP_SHELL: &str = "trap 'exit 0' TERM; sleep 100000 & wait";

/// A Shoal Service `name` (namespace default) of `replicas` replicas of the test image
/// running [`SLEEP_SHELL`], stop grace period 1 s, no reservations.
pub fn sleep_service_yaml(name: &str, replicas: usize) -> String {
    let cmd = serde_json::to_string(&["sh", "-c", SLEEP_SHELL]).unwrap_or_default();
    format!(
        "apiVersion: shoal.dev/v1alpha1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  replicas: {replicas}
  template:
    image: {TEST_IMAGE}
    command: {cmd}
    stopGracePeriod: 1s
"
    )
}

/// `SHOAL_BENCH_RUNS` (at least 1), else `default`.
pub fn runs_from_env(default: usize) -> Result<usize> {
    let runs: usize = match std::env::var("SHOAL_BENCH_RUNS") {
        Ok(v) => v.parse().context("SHOAL_BENCH_RUNS")?,
        Err(_) => default,
    };
    ensure!(runs >= 1, "SHOAL_BENCH_RUNS must be at least 1");
    Ok(runs)
}

/// `NAME/` beside this executable (created): where a benchmark keeps its runs' logs.
pub fn logs_dir(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let logs = exe
        .parent()
        .context("executable has no directory")?
        .join(name);
    std::fs::create_dir_all(&logs)?;
    Ok(logs)
}

/// The 1-minute load average (other work on the machine skews every figure).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Spawn `cmd` with stdin closed and both outputs to `log` (never this process's pipes).
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))
}

/// The last 15 lines of `log`.
pub fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Wait for a spawned command (already running or done) and insist on success.
pub async fn finish(mut child: Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait()? {
            ensure!(st.success(), "{what} failed ({st}):\n{}", tail(log));
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within 120 s:\n{}", tail(log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run a command to completion, output to `log`.
pub async fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> Result<()> {
    let child = spawn_logged(cmd, log)?;
    finish(child, what, log).await
}

/// The median (NaN when `v` is empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Figures in milliseconds, one line: "12 34 56".
pub fn list_ms(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `shoal` binary: `SHOAL_BIN`, else built now beside this executable (cargo's
/// output in `logs`).
pub fn shoal_bin(logs: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    eprintln!("building shoal (cargo build --release -p shoal-cli)");
    let log = logs.join("cargo-build.log");
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "shoal-cli"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(File::create(&log)?)
        .stderr(File::create(logs.join("cargo-build.err"))?)
        .status()
        .context("running cargo (set SHOAL_BIN to a built shoal binary instead)")?;
    ensure!(
        st.success(),
        "cargo build --release -p shoal-cli failed ({st}):\n{}",
        tail(&logs.join("cargo-build.err"))
    );
    let bin = dir.join("shoal");
    ensure!(
        bin.exists(),
        "{} is missing after cargo build --release -p shoal-cli (CARGO_TARGET_DIR differs?); set SHOAL_BIN",
        bin.display()
    );
    Ok(bin)
}

/// The engine's containers carrying every label of `labels` (`key=value`): running ones
/// only, or all.
async fn list_labelled(
    docker: &Docker,
    labels: &[String],
    running_only: bool,
) -> Result<Vec<ContainerSummary>> {
    let mut filters = HashMap::from([("label", labels.to_vec())]);
    if running_only {
        filters.insert("status", vec!["running".to_string()]);
    }
    let opts = ListContainersOptionsBuilder::default()
        .all(!running_only)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .context("listing containers")
}

/// How many of the engine's containers carrying every label of `labels` run.
pub async fn count_running(docker: &Docker, labels: &[String]) -> Result<usize> {
    Ok(list_labelled(docker, labels, true).await?.len())
}

/// The one polling function the container benchmarks are measured with: list the
/// engine's running containers carrying `labels` every `poll`; the time since `t0` when
/// there are `n`. An error after `timeout`.
pub async fn wait_running(
    docker: &Docker,
    labels: &[String],
    n: usize,
    t0: Instant,
    poll: Duration,
    timeout: Duration,
) -> Result<Duration> {
    loop {
        let count = count_running(docker, labels).await?;
        if count >= n {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            bail!(
                "only {count}/{n} containers with {} running after {} s",
                labels.join(","),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(poll).await;
    }
}

/// Containers (running or not) carrying `label`.
pub async fn count_all(docker: &Docker, label: &str) -> Result<Vec<String>> {
    Ok(list_labelled(docker, &[label.to_string()], false)
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect())
}

/// Wait up to `secs` for every container with `label` to be gone; then force-remove what is
/// left (and its networks when `networks`), and insist on zero.
pub async fn clear(docker: &Docker, label: &str, secs: u64, networks: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline && !count_all(docker, label).await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = count_all(docker, label).await?;
    if !left.is_empty() {
        eprintln!("  force-removing {} containers with {label}", left.len());
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        let removals = left.iter().map(|id| {
            let opts = opts.clone();
            async move { docker.remove_container(id, Some(opts)).await }
        });
        for r in futures::future::join_all(removals).await {
            if let Err(e) = r {
                eprintln!("  removing a container: {e}");
            }
        }
    }
    if networks {
        let filters = HashMap::from([("label", vec![label.to_string()])]);
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        for n in docker
            .list_networks(Some(opts))
            .await
            .context("listing networks")?
        {
            if let Some(id) = n.id
                && let Err(e) = docker.remove_network(&id).await
            {
                eprintln!("  removing network {id}: {e}");
            }
        }
    }
    let left = count_all(docker, label).await?;
    ensure!(
        left.is_empty(),
        "{} containers with {label} remain",
        left.len()
    );
    Ok(())
}

/// A `shoal up` process (fresh data directory, API and dispatcher on 127.0.0.1:0):
/// SIGKILLed when dropped unless stopped.
#[derive(Debug)]
pub struct ShoalUp {
    child: Option<Child>,
    /// Its data directory (kubeconfig, cluster-id).
    pub data: PathBuf,
    /// Its stdout ("Shoal is up", the addresses).
    pub out_path: PathBuf,
    /// Its stderr.
    pub log_path: PathBuf,
}

impl ShoalUp {
    /// Start `bin up` on the engine `docker_host` with data directory `data` and host name
    /// `host_name`, stdout to `out_path` and stderr to `log_path`, and wait (up to 60 s)
    /// until it prints "Shoal is up".
    pub async fn start(
        bin: &Path,
        data: &Path,
        host_name: &str,
        docker_host: &str,
        out_path: &Path,
        log_path: &Path,
    ) -> Result<ShoalUp> {
        let started = Instant::now();
        let child = shoal_tests::shoal_up_command(bin, data, host_name, docker_host)
            .stdout(File::create(out_path)?)
            .stderr(File::create(log_path)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut up = ShoalUp {
            child: Some(child),
            data: data.to_path_buf(),
            out_path: out_path.to_path_buf(),
            log_path: log_path.to_path_buf(),
        };
        loop {
            if std::fs::read_to_string(out_path).is_ok_and(|s| s.contains("Shoal is up")) {
                return Ok(up);
            }
            if let Some(c) = up.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!(
                    "shoal up exited ({st}) before it was up:\n{}",
                    tail(log_path)
                );
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "shoal up did not report ready within 60 s:\n{}",
                tail(log_path)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id (while running).
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The cluster id (`DATA/cluster-id`).
    pub fn cluster_id(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.data.join("cluster-id"))
            .context("reading the cluster id")?
            .trim()
            .to_string())
    }

    /// `DATA/kubeconfig`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data.join("kubeconfig")
    }

    /// The dispatcher's URL, from the "dispatcher:" line of its output.
    pub fn dispatcher(&self) -> Result<String> {
        let out = std::fs::read_to_string(&self.out_path)?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("dispatcher:"))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .with_context(|| format!("shoal up printed no dispatcher address:\n{out}"))
    }

    /// SIGTERM, wait up to 15 s, then SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("kill -TERM")?;
        for _ in 0..150 {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("  shoal up did not stop within 15 s of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }
}

impl Drop for ShoalUp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
