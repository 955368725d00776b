//! Time until 50 replicas run on a fresh engine: Shoal (`shoal up` + kubectl apply) vs Docker Swarm mode vs Docker Compose, beside the engine's own floor.
//!
//! Starts a fresh extra engine (`scripts/test-env host start conv-PID-N`, its own network
//! namespace, stopped at the end) and runs the same workload on it with each system: 50
//! replicas of `shoal-test/busybox:1` running `sh -c 'trap "exit 0" TERM; sleep 100000 &
//! wait'` with a 1 s stop grace period and no resource reservations.
//!
//! - Shoal: `shoal up` (a fresh data directory, API and dispatcher on 127.0.0.1:0) is
//!   started and waited for until it prints "Shoal is up" and its Host is Ready (read with
//!   `kubectl get shost`, which also fills kubectl's discovery cache); then the clock starts
//!   and `kubectl apply -f` creates a 50-replica Service. Containers counted: label
//!   `shoal.dev/cluster=<cluster id>`. Afterwards Shoal gets SIGTERM and its containers and
//!   networks are removed.
//! - Shoal in kubernetes mode (`kube_converge_50_ms`): `shoal operator` over an API
//!   server this process starts (Shoal's embedded one over memory, with no controllers:
//!   the stand-in for a cluster's, reached over HTTP through the kube-rs store, since no
//!   kube-apiserver can be had here) and `shoal agent` on the engine; timed like Shoal.
//! - Swarm: `docker swarm init --advertise-addr <host address>`; the clock starts and
//!   `docker service create --detach --no-resolve-image --replicas 50` runs. Counted: label
//!   `com.docker.swarm.service.name=conv`. Afterwards `docker service rm`, wait for the
//!   containers to go, `docker swarm leave --force`.
//! - Swarm with service discovery (extra figure, `swarm_overlay_converge_50_ms`): the same,
//!   with the tasks on an overlay network (`docker network create -d overlay`, then
//!   `--network`). Swarm's tasks get service-name DNS only on such a network; Shoal's
//!   always have it (their namespace's bridge network), and so do Compose's. Not part of
//!   the comparison, which is plain `docker service create`.
//! - Compose: `docker-compose` (Debian's package, installed with apt-get when missing; the
//!   figure is `unavailable` if that fails); the clock starts and
//!   `docker-compose -p convbench up -d --scale conv=50` runs. Counted: label
//!   `com.docker.compose.project=convbench`. Afterwards `docker-compose down -t 1`.
//! - Engine floor (`engine_floor_50_ms`): no orchestrator at all. The clock starts and
//!   this process creates and starts the 50 containers itself, straight through the
//!   Engine API (the same client as the other systems' polling), 8 create+start pairs in
//!   flight, `NetworkMode: none`, no name, restart policy `no`. Counted: label
//!   `shoal.dev/bench=engine-floor`. Afterwards they are force-removed.
//! - Engine floor with a namespace network (`engine_floor_netns_50_ms`): the same, each
//!   container on a user-defined bridge network (`shoal-convfloor`, created before the
//!   clock starts, like Shoal's per-namespace `shoal-<namespace>`) with the DNS alias
//!   `conv`, so it pays for Docker's embedded DNS as Shoal's and Compose's containers do.
//!   Counted: label `shoal.dev/bench=engine-floor-netns`; the network is removed after.
//!
//! Every system is timed the same way: from just before its command is spawned (for the
//! floors: its first request) until one polling function, listing the engine's running
//! containers with the system's label every 50 ms, counts 50. Each run also reports
//! (stderr) the CPU time the engine's process tree (dockerd, containerd, shims) and
//! `shoal up` used meanwhile, and the engine's own timeline (its container
//! `create`/`start` events relative to the start). The systems take turns (Shoal, Swarm,
//! Swarm with an overlay, Compose, the two floors, then again), so load from elsewhere on
//! the machine spreads over all of them; every run starts from zero containers. Median of
//! `SHOAL_BENCH_RUNS` runs each (default 3).
//!
//! The floors bound what any orchestrator can reach on this engine: `swarm_vs_floor` and
//! `swarm_vs_floor_netns` (Swarm's median over each floor's) below 1.5 mean that being
//! 1.5× faster than Swarm would take less time than the engine alone needs.
//!
//! The `shoal` binary is built first (`cargo build --release -p shoal-cli`, into the
//! directory holding this executable) unless `SHOAL_BIN` names one. Logs of every run
//! (`shoal up`'s stderr, the commands' output) go to `converge-logs/` beside this
//! executable. Prints `engine_floor_50_ms`, `engine_floor_netns_50_ms`, `converge_runs`,
//! `swarm_converge_50_ms`, `kube_converge_50_ms`, `swarm_overlay_converge_50_ms`, `compose_converge_50_ms`,
//! `swarm_vs_floor`, `swarm_vs_floor_netns` and, last, `converge_50_ms`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use futures::TryStreamExt;
use shoal_bench::{
    SLEEP_SHELL, ShoalUp, clear, finish, list_ms, loadavg, logs_dir, median, ms, run_logged,
    runs_from_env, shoal_bin, sleep_service_yaml, spawn_logged, wait_running,
};
use shoal_tests::{Host, TEST_IMAGE};

const REPLICAS: usize = 50;
const POLL: Duration = Duration::from_millis(50);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
const SHOAL_HOST_NAME: &str = "conv-bench";
const SWARM_SERVICE: &str = "conv";
const SWARM_NETWORK: &str = "convnet";
const COMPOSE_PROJECT: &str = "convbench";
/// The label key of the engine floors' containers and network (value: the floor's tag).
const FLOOR_LABEL: &str = "shoal.dev/bench";
/// The floor's namespace network, named like Shoal's `shoal-<namespace>`.
const FLOOR_NETWORK: &str = "shoal-convfloor";
/// The floor's DNS alias on that network (Shoal gives each task its service's name).
const FLOOR_ALIAS: &str = "conv";
/// Create+start pairs the floor keeps in flight (`SHOAL_BENCH_FLOOR_CONCURRENCY` to try
/// others).
const FLOOR_CONCURRENCY: usize = 8;

fn floor_concurrency() -> usize {
    std::env::var("SHOAL_BENCH_FLOOR_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(FLOOR_CONCURRENCY)
}

/// The time since `t0` until the engine runs 50 containers with `label`: the one polling
/// function every system is measured with (every 50 ms).
async fn converged(docker: &Docker, label: &str, t0: Instant) -> Result<Duration> {
    let labels = [label.to_string()];
    wait_running(docker, &labels, REPLICAS, t0, POLL, CONVERGE_TIMEOUT).await
}

/// CPU time (utime + stime, clock ticks of 10 ms) of process `root` and all its
/// descendants now, from /proc: for the engine, dockerd + containerd + the shims.
fn tree_cpu_ticks(root: u32) -> u64 {
    let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after "(comm)": state ppid … utime(12th) stime(13th).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // utime + stime + the reaped children's (runc, iptables, …).
        let ticks = num(11) + num(12) + num(13) + num(14);
        procs.insert(pid, (u32::try_from(num(1)).unwrap_or(0), ticks));
    }
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        total += procs.get(&p).map_or(0, |v| v.1);
        stack.extend(procs.iter().filter(|(_, v)| v.0 == p).map(|(k, _)| *k));
    }
    total
}

/// CPU seconds used by the engine's process tree (`pid`) and by `other` (if any) since
/// `before`; prints them with `what`.
struct CpuMeter {
    engine: u32,
    other: Option<u32>,
    before: (u64, u64),
}

impl CpuMeter {
    fn start(engine: u32, other: Option<u32>) -> CpuMeter {
        let before = (tree_cpu_ticks(engine), other.map_or(0, tree_cpu_ticks));
        CpuMeter {
            engine,
            other,
            before,
        }
    }

    fn report(&self) -> String {
        let e = tree_cpu_ticks(self.engine).saturating_sub(self.before.0) as f64 / 100.0;
        match self.other {
            Some(o) => {
                let s = tree_cpu_ticks(o).saturating_sub(self.before.1) as f64 / 100.0;
                format!("engine CPU {e:.1} s, shoal CPU {s:.1} s")
            }
            None => format!("engine CPU {e:.1} s"),
        }
    }
}

fn engine_pid(host: &Host) -> u32 {
    let f = shoal_tests::state_dir()
        .join("hosts")
        .join(&host.name)
        .join("dockerd.pid");
    std::fs::read_to_string(f)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The engine's container `create` and `start` events with `label`, from a subscription
/// made before the clock starts: where the time goes, relative to the start.
struct Timeline {
    t0_ns: i64,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, String, i64)>,
    pump: tokio::task::JoinHandle<()>,
}

impl Timeline {
    async fn start(docker: &Docker, label: &str) -> Timeline {
        use futures::StreamExt;
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["create".to_string(), "start".to_string()]),
            ("label", vec![label.to_string()]),
        ]);
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut stream = docker.events(Some(opts));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            while let Some(Ok(ev)) = stream.next().await {
                let id = ev.actor.and_then(|a| a.id).unwrap_or_default();
                let t = ev.time_nano.unwrap_or(0);
                if tx.send((id, ev.action.unwrap_or_default(), t)).is_err() {
                    break;
                }
            }
        });
        // Give the subscription a moment to be registered by the engine.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Timeline { t0_ns: 0, rx, pump }
    }

    /// Mark the clock's start (just before the command is spawned).
    fn mark(&mut self) {
        self.t0_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
    }

    /// "first create X ms, first start Y ms, last start Z ms, create→start p50 W ms".
    async fn report(mut self) -> String {
        // Events trail the container list a little.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.pump.abort();
        let mut creates = HashMap::new();
        let mut starts = HashMap::new();
        while let Ok((id, action, t)) = self.rx.try_recv() {
            match action.as_str() {
                "create" => {
                    creates.entry(id).or_insert(t);
                }
                "start" => {
                    starts.entry(id).or_insert(t);
                }
                _ => {}
            }
        }
        let rel = |t: i64| (t - self.t0_ns) as f64 / 1e6;
        let first_create = creates.values().min().map_or(f64::NAN, |t| rel(*t));
        let first_start = starts.values().min().map_or(f64::NAN, |t| rel(*t));
        let last_start = starts.values().max().map_or(f64::NAN, |t| rel(*t));
        let gaps: Vec<f64> = starts
            .iter()
            .filter_map(|(id, s)| creates.get(id).map(|c| (s - c) as f64 / 1e6))
            .collect();
        format!(
            "{} creates, first at {first_create:.0} ms; {} starts, first at {first_start:.0} ms, last at {last_start:.0} ms; create→start p50 {:.0} ms",
            creates.len(),
            starts.len(),
            median(gaps)
        )
    }
}

/// The Debian docker client when present (it matches the engine), else `docker`.
fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

/// `docker-compose` if it runs, installing Debian's package when missing; `None` if that fails.
fn ensure_compose(logs: &Path) -> Option<PathBuf> {
    let works = || {
        Command::new("docker-compose")
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return Some("docker-compose".into());
    }
    eprintln!("installing docker-compose (apt-get install docker-compose)");
    let apt = |args: &[&str], log: &str| {
        let Ok(out) = File::create(logs.join(log)) else {
            return false;
        };
        let Ok(err) = out.try_clone() else {
            return false;
        };
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "-q"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "--no-install-recommends", "docker-compose"];
    if !apt(&install, "apt-install.log") {
        let _ = apt(&["update"], "apt-update.log");
        if !apt(&install, "apt-install.log") {
            eprintln!(
                "docker-compose could not be installed (see {})",
                logs.join("apt-install.log").display()
            );
            return None;
        }
    }
    works().then(|| "docker-compose".into())
}

fn kubectl(kubeconfig: &Path, cache: &Path) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache);
    c
}

/// One Shoal run: the time from `kubectl apply` to 50 running containers.
async fn shoal_run(
    bin: &Path,
    host: &Host,
    docker: &Docker,
    logs: &Path,
    run: usize,
) -> Result<Duration> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let cache = tmp.path().join("kube-cache");
    let out_path = logs.join(format!("shoal-up-{run}.out"));
    let log_path = logs.join(format!("shoal-up-{run}.log"));
    let started = Instant::now();
    let mut up = ShoalUp::start(
        bin,
        &data,
        SHOAL_HOST_NAME,
        &host.docker_host,
        &out_path,
        &log_path,
    )
    .await?;
    let up_at = started.elapsed();
    let cluster = up.cluster_id()?;
    let label = format!("shoal.dev/cluster={cluster}");
    let kubeconfig = up.kubeconfig();

    let measured = measure_apply(
        &Measure {
            kubeconfig: &kubeconfig,
            cache: &cache,
            docker,
            host,
            label: &label,
            logs,
            run,
            system: "shoal",
            pid: up.id(),
        },
        started,
        up_at,
    )
    .await;

    let stopped = up.stop();
    let cleared = clear(docker, &label, 0, true).await;
    let d = measured?;
    stopped?;
    cleared?;
    Ok(d)
}

/// What [`measure_apply`] measures: a control plane reached through `kubeconfig` whose
/// containers carry `label`.
struct Measure<'a> {
    kubeconfig: &'a Path,
    cache: &'a Path,
    docker: &'a Docker,
    host: &'a Host,
    label: &'a str,
    logs: &'a Path,
    run: usize,
    /// Its name in the progress lines and log files.
    system: &'a str,
    /// Its process (for its CPU time).
    pid: Option<u32>,
}

/// Waits for the control plane's Host to be Ready (and kubectl's discovery cache to be
/// warm), then times `kubectl apply` of the 50-replica Service until 50 run.
async fn measure_apply(m: &Measure<'_>, started: Instant, up_at: Duration) -> Result<Duration> {
    let tmp = tempfile::tempdir()?;
    loop {
        let out = kubectl(m.kubeconfig, m.cache)
            .args([
                "get",
                "shost",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running kubectl")?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("True") {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "the host did not become Ready: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_at = started.elapsed();
    let file = tmp.path().join("conv.yaml");
    std::fs::write(&file, sleep_service_yaml("conv", REPLICAS))?;
    let apply_log = m.logs.join(format!("{}-apply-{}.log", m.system, m.run));
    let mut timeline = Timeline::start(m.docker, m.label).await;
    let cpu = CpuMeter::start(engine_pid(m.host), m.pid);
    timeline.mark();
    let t0 = Instant::now();
    let apply = spawn_logged(
        kubectl(m.kubeconfig, m.cache)
            .arg("apply")
            .arg("-f")
            .arg(&file),
        &apply_log,
    )?;
    let d = converged(m.docker, m.label, t0).await;
    finish(apply, "kubectl apply", &apply_log).await?;
    let d = d?;
    eprintln!(
        "  {} run {}: up in {:.0} ms, host Ready at {:.0} ms; 50 running {:.0} ms after apply ({})",
        m.system,
        m.run,
        ms(up_at),
        ms(ready_at),
        ms(d),
        cpu.report()
    );
    eprintln!("    {}", timeline.report().await);
    Ok(d)
}

/// One run of kubernetes mode: `shoal operator` over an API server started here (the
/// embedded one over memory, no controllers of its own: a stand-in for a cluster's, spoken
/// to over HTTP through the kube-rs store) and `shoal agent` on the engine; the time from
/// `kubectl apply` to 50 running containers.
async fn kube_run(
    bin: &Path,
    host: &Host,
    docker: &Docker,
    logs: &Path,
    run: usize,
) -> Result<Duration> {
    let tmp = tempfile::tempdir()?;
    let started = Instant::now();
    let store: std::sync::Arc<dyn shoal_store::ClusterStore> =
        std::sync::Arc::new(shoal_store::MemStore::new());
    let api = shoal_apiserver::RunningServer::start(
        "127.0.0.1:0".parse()?,
        store,
        shoal_apiserver::Config::default(),
    )
    .await?;
    let kubeconfig = tmp.path().join("kubeconfig");
    shoal_apiserver::kubeconfig::write(&kubeconfig, &api.url())?;
    let port = shoal_tests::free_port()?;
    let data = tmp.path().join("operator");
    let out = logs.join(format!("shoal-kube-operator-{run}.out"));
    let mut operator = shoal_tests::shoal_operator_command(bin, &kubeconfig, &data, port)
        .stdout(File::create(&out)?)
        .stderr(File::create(
            logs.join(format!("shoal-kube-operator-{run}.log")),
        )?)
        .spawn()
        .context("starting shoal operator")?;
    let measured = async {
        while !std::fs::read_to_string(&out).is_ok_and(|s| s.contains("dispatcher:")) {
            ensure!(
                operator.try_wait()?.is_none(),
                "shoal operator ended; see its log"
            );
            ensure!(started.elapsed() < Duration::from_secs(60), "no operator");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cluster = std::fs::read_to_string(data.join("cluster-id"))?
            .trim()
            .to_string();
        let agent = shoal_tests::shoal_agent_command(
            bin,
            &format!("http://127.0.0.1:{port}"),
            &tmp.path().join("agent"),
            &host.docker_host,
        )
        .args(["--cluster-id", &cluster, "--host-name", SHOAL_HOST_NAME])
        .stderr(File::create(
            logs.join(format!("shoal-kube-agent-{run}.log")),
        )?)
        .spawn()
        .context("starting shoal agent")?;
        let up_at = started.elapsed();
        let label = format!("shoal.dev/cluster={cluster}");
        let d = measure_apply(
            &Measure {
                kubeconfig: &kubeconfig,
                cache: &tmp.path().join("kube-cache"),
                docker,
                host,
                label: &label,
                logs,
                run,
                system: "shoal-kube",
                pid: Some(operator.id()),
            },
            started,
            up_at,
        )
        .await;
        Ok::<_, anyhow::Error>((d, agent, label))
    }
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    let (d, mut agent, label) = measured?;
    let _ = agent.kill();
    let _ = agent.wait();
    let cleared = clear(docker, &label, 0, true).await;
    let _ = api.shutdown().await;
    let d = d?;
    cleared?;
    Ok(d)
}

/// One Swarm run: init, time `docker service create` to 50 running, remove, leave. With
/// `overlay`, the tasks join an overlay network created after the init (not timed).
async fn swarm_run(
    host: &Host,
    docker: &Docker,
    logs: &Path,
    run: usize,
    overlay: bool,
) -> Result<Duration> {
    let tag = if overlay { "swarm-overlay" } else { "swarm" };
    let cli = docker_cli();
    let dk = || {
        let mut c = Command::new(&cli);
        c.arg("-H").arg(&host.docker_host);
        c
    };
    let log = |what: &str| logs.join(format!("{tag}-{what}-{run}.log"));
    run_logged(
        dk().args([
            "swarm",
            "init",
            "--advertise-addr",
            &host.address.to_string(),
        ]),
        "docker swarm init",
        &log("init"),
    )
    .await?;
    let mut network = Vec::new();
    if overlay {
        let made = run_logged(
            dk().args(["network", "create", "-d", "overlay", SWARM_NETWORK]),
            "docker network create -d overlay",
            &log("network"),
        )
        .await;
        if let Err(e) = made {
            let _ = run_logged(
                dk().args(["swarm", "leave", "--force"]),
                "docker swarm leave",
                &log("leave"),
            )
            .await;
            return Err(e);
        }
        network = vec!["--network", SWARM_NETWORK];
    }
    let label = format!("com.docker.swarm.service.name={SWARM_SERVICE}");
    let measured = async {
        let create_log = log("create");
        let mut timeline = Timeline::start(docker, &label).await;
        let cpu = CpuMeter::start(engine_pid(host), None);
        timeline.mark();
        let t0 = Instant::now();
        let create = spawn_logged(
            dk().args([
                "service",
                "create",
                "--detach",
                "--no-resolve-image",
                "--replicas",
                &REPLICAS.to_string(),
                "--name",
                SWARM_SERVICE,
            ])
            .args(&network)
            .args([
                "--stop-grace-period",
                "1s",
                TEST_IMAGE,
                "sh",
                "-c",
                SLEEP_SHELL,
            ]),
            &create_log,
        )?;
        let d = converged(docker, &label, t0).await;
        finish(create, "docker service create", &create_log).await?;
        let d = d?;
        eprintln!(
            "  {tag} run {run}: 50 running {:.0} ms after service create ({})",
            ms(d),
            cpu.report()
        );
        eprintln!("    {}", timeline.report().await);
        Ok::<Duration, anyhow::Error>(d)
    }
    .await;
    let removed = run_logged(
        dk().args(["service", "rm", SWARM_SERVICE]),
        "docker service rm",
        &log("rm"),
    )
    .await;
    let cleared = clear(docker, &label, 60, false).await;
    if overlay {
        // Gone with the swarm anyway; removing it first keeps the leave quick.
        let _ = run_logged(
            dk().args(["network", "rm", SWARM_NETWORK]),
            "docker network rm",
            &log("network-rm"),
        )
        .await;
    }
    let left = run_logged(
        dk().args(["swarm", "leave", "--force"]),
        "docker swarm leave",
        &log("leave"),
    )
    .await;
    let d = measured?;
    removed?;
    cleared?;
    left?;
    Ok(d)
}

/// One Compose run: time `docker-compose up -d --scale conv=50` to 50 running, then down.
async fn compose_run(
    compose: &Path,
    host: &Host,
    docker: &Docker,
    logs: &Path,
    dir: &Path,
    run: usize,
) -> Result<Duration> {
    let file = dir.join("docker-compose.yml");
    let cmd = serde_json::to_string(&["sh", "-c", SLEEP_SHELL])?;
    std::fs::write(
        &file,
        format!(
            "version: \"2.4\"\nservices:\n  conv:\n    image: {TEST_IMAGE}\n    command: {cmd}\n    stop_grace_period: 1s\n"
        ),
    )?;
    let dc = || {
        let mut c = Command::new(compose);
        c.env("DOCKER_HOST", &host.docker_host)
            .current_dir(dir)
            .arg("-p")
            .arg(COMPOSE_PROJECT)
            .arg("-f")
            .arg(&file);
        c
    };
    let log = |what: &str| logs.join(format!("compose-{what}-{run}.log"));
    let label = format!("com.docker.compose.project={COMPOSE_PROJECT}");
    let measured = async {
        let up_log = log("up");
        let mut timeline = Timeline::start(docker, &label).await;
        let cpu = CpuMeter::start(engine_pid(host), None);
        timeline.mark();
        let t0 = Instant::now();
        let up = spawn_logged(
            dc().args(["up", "-d", "--scale", &format!("conv={REPLICAS}")]),
            &up_log,
        )?;
        let d = converged(docker, &label, t0).await;
        finish(up, "docker-compose up", &up_log).await?;
        let d = d?;
        eprintln!(
            "  compose run {run}: 50 running {:.0} ms after up ({})",
            ms(d),
            cpu.report()
        );
        eprintln!("    {}", timeline.report().await);
        Ok::<Duration, anyhow::Error>(d)
    }
    .await;
    let down = run_logged(
        dc().args(["down", "-t", "1"]),
        "docker-compose down",
        &log("down"),
    )
    .await;
    // docker-compose 1.29 sometimes fails to remove its network while the
    // engine still tears down endpoints; `clear` force-removes what is left
    // and insists on zero containers, so the next run still starts clean.
    if let Err(e) = down {
        eprintln!("  {e:#}; clearing by label instead");
    }
    let cleared = clear(docker, &label, 0, true).await;
    let d = measured?;
    cleared?;
    Ok(d)
}

/// The floor's container: the test image running [`SLEEP_SHELL`], 1 s stop grace, restart
/// policy `no`, labelled `labels`; on [`FLOOR_NETWORK`] with alias [`FLOOR_ALIAS`] when
/// `netns`, else `NetworkMode: none`.
fn floor_container(labels: &HashMap<String, String>, netns: bool) -> ContainerCreateBody {
    let (network_mode, networking_config) = if netns {
        let endpoint = EndpointSettings {
            aliases: Some(vec![FLOOR_ALIAS.to_string()]),
            ..Default::default()
        };
        (
            FLOOR_NETWORK.to_string(),
            Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(FLOOR_NETWORK.to_string(), endpoint)])),
            }),
        )
    } else {
        ("none".to_string(), None)
    };
    ContainerCreateBody {
        image: Some(TEST_IMAGE.to_string()),
        cmd: Some(vec!["sh".into(), "-c".into(), SLEEP_SHELL.into()]),
        labels: Some(labels.clone()),
        stop_timeout: Some(1),
        host_config: Some(HostConfig {
            network_mode: Some(network_mode),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    }
}

/// One engine-floor run: the 50 containers created and started by this process straight
/// through the Engine API, [`floor_concurrency`] create+start pairs in flight, timed from
/// the first request to 50 running; then force-removed. With `netns` they join
/// [`FLOOR_NETWORK`] (created before the clock starts, removed after).
async fn floor_run(host: &Host, docker: &Docker, run: usize, netns: bool) -> Result<Duration> {
    let tag = if netns {
        "engine-floor-netns"
    } else {
        "engine-floor"
    };
    let label = format!("{FLOOR_LABEL}={tag}");
    let labels = HashMap::from([(FLOOR_LABEL.to_string(), tag.to_string())]);
    if netns {
        docker
            .create_network(NetworkCreateRequest {
                name: FLOOR_NETWORK.to_string(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating network {FLOOR_NETWORK}"))?;
    }
    let body = floor_container(&labels, netns);
    let measured = async {
        let mut timeline = Timeline::start(docker, &label).await;
        let cpu = CpuMeter::start(engine_pid(host), None);
        timeline.mark();
        let t0 = Instant::now();
        let started = futures::stream::iter((0..REPLICAS).map(Ok::<usize, anyhow::Error>))
            .try_for_each_concurrent(floor_concurrency(), |i| {
                let body = body.clone();
                async move {
                    let created = docker
                        .create_container(None, body)
                        .await
                        .with_context(|| format!("creating container {i}"))?;
                    docker
                        .start_container(&created.id, None)
                        .await
                        .with_context(|| format!("starting container {i}"))
                }
            });
        let ((), d) = tokio::try_join!(started, converged(docker, &label, t0))?;
        eprintln!(
            "  {tag} run {run}: 50 running {:.0} ms after the first create ({})",
            ms(d),
            cpu.report()
        );
        eprintln!("    {}", timeline.report().await);
        Ok::<Duration, anyhow::Error>(d)
    }
    .await;
    // Force-removes the containers (and, with `netns`, the network: it carries the label).
    let cleared = clear(docker, &label, 0, netns).await;
    let d = measured?;
    cleared?;
    Ok(d)
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = runs_from_env(3)?;
    // `SHOAL_BENCH_ONLY=shoal,floor-netns` measures only those systems (for quick
    // comparisons while working on one); the figures of the others print `skipped`.
    let only: Option<Vec<String>> = std::env::var("SHOAL_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == name));
    let logs = logs_dir("converge-logs")?;
    eprintln!("logs in {}", logs.display());

    let bin = shoal_bin(&logs)?;
    let compose = ensure_compose(&logs);

    let t = Instant::now();
    let host = Host::start("conv")
        .await
        .context("starting a fresh engine")?;
    let engine = host.engine().await?;
    let version = engine.docker.version().await.context("engine version")?;
    eprintln!(
        "fresh engine {} (Docker {}, API {}) at {} ({}), up in {:.1} s; load average {}",
        host.name,
        version.version.unwrap_or_default(),
        version.api_version.unwrap_or_default(),
        host.docker_host,
        host.address,
        t.elapsed().as_secs_f64(),
        loadavg()
    );
    let docker = engine.docker.clone();
    let compose_dir = tempfile::tempdir()?;

    let mut shoal = Vec::new();
    let mut kube = Vec::new();
    let mut swarm = Vec::new();
    let mut swarm_overlay = Vec::new();
    let mut comp = Vec::new();
    let mut floor = Vec::new();
    let mut floor_netns = Vec::new();
    let mut failure = None;
    for run in 1..=runs {
        if wanted("shoal") {
            match shoal_run(&bin, &host, &docker, &logs, run).await {
                Ok(d) => shoal.push(ms(d)),
                Err(e) => {
                    failure = Some(e.context(format!("shoal run {run}")));
                    break;
                }
            }
        }
        if wanted("shoal-kube") {
            match kube_run(&bin, &host, &docker, &logs, run).await {
                Ok(d) => kube.push(ms(d)),
                Err(e) => {
                    failure = Some(e.context(format!("shoal-kube run {run}")));
                    break;
                }
            }
        }
        if wanted("swarm") {
            match swarm_run(&host, &docker, &logs, run, false).await {
                Ok(d) => swarm.push(ms(d)),
                Err(e) => {
                    failure = Some(e.context(format!("swarm run {run}")));
                    break;
                }
            }
        }
        // An engine without overlay support only loses the extra figure.
        if wanted("swarm-overlay") && swarm_overlay.len() + 1 == run {
            match swarm_run(&host, &docker, &logs, run, true).await {
                Ok(d) => swarm_overlay.push(ms(d)),
                Err(e) => eprintln!("  swarm-overlay run {run} failed: {e:#}"),
            }
        }
        if wanted("compose")
            && let Some(c) = &compose
        {
            match compose_run(c, &host, &docker, &logs, compose_dir.path(), run).await {
                Ok(d) => comp.push(ms(d)),
                Err(e) => {
                    failure = Some(e.context(format!("compose run {run}")));
                    break;
                }
            }
        }
        // The floors last in each round: a fresh engine's first starts fall on Shoal, as
        // before the floors were measured, not on the bound.
        if wanted("floor") {
            match floor_run(&host, &docker, run, false).await {
                Ok(d) => floor.push(ms(d)),
                Err(e) => {
                    failure = Some(e.context(format!("engine-floor run {run}")));
                    break;
                }
            }
        }
        if wanted("floor-netns") {
            match floor_run(&host, &docker, run, true).await {
                Ok(d) => floor_netns.push(ms(d)),
                Err(e) => {
                    failure = Some(e.context(format!("engine-floor-netns run {run}")));
                    break;
                }
            }
        }
    }
    eprintln!(
        "measured in {:.0} s; load average now {}",
        t.elapsed().as_secs_f64(),
        loadavg()
    );
    if let Err(e) = host.stop().await {
        eprintln!("stopping the engine: {e:#}");
    }
    if let Some(e) = failure {
        return Err(e);
    }

    eprintln!("shoal runs (ms):   {}", list_ms(&shoal));
    eprintln!("shoal kubernetes-mode runs (ms): {}", list_ms(&kube));
    eprintln!("swarm runs (ms):   {}", list_ms(&swarm));
    eprintln!("swarm overlay runs (ms): {}", list_ms(&swarm_overlay));
    eprintln!("compose runs (ms): {}", list_ms(&comp));
    eprintln!("engine floor runs (ms): {}", list_ms(&floor));
    eprintln!("engine floor netns runs (ms): {}", list_ms(&floor_netns));
    let (s, w) = (median(shoal), median(swarm));
    let (f, fnet) = (median(floor), median(floor_netns));
    println!("engine_floor_50_ms: {f:.0}");
    println!("engine_floor_netns_50_ms: {fnet:.0}");
    println!("converge_runs: {runs}");
    println!("swarm_converge_50_ms: {w:.0}");
    if swarm_overlay.len() == runs {
        let o = median(swarm_overlay);
        println!("swarm_overlay_converge_50_ms: {o:.0}");
        eprintln!(
            "shoal vs swarm with an overlay network: {:.2}x faster",
            o / s
        );
    } else {
        println!("swarm_overlay_converge_50_ms: unavailable (see the failed runs above)");
    }
    if compose.is_some() {
        let c = median(comp);
        println!("compose_converge_50_ms: {c:.0}");
        eprintln!(
            "shoal vs swarm: {:.2}x faster; vs compose: {:.2}x",
            w / s,
            c / s
        );
    } else {
        println!("compose_converge_50_ms: unavailable");
        eprintln!("shoal vs swarm: {:.2}x faster", w / s);
    }
    let k = median(kube);
    println!("kube_converge_50_ms: {k:.0}");
    eprintln!("kubernetes mode vs standalone: {:.2}x the time", k / s);
    println!("swarm_vs_floor: {:.2}", w / f);
    println!("swarm_vs_floor_netns: {:.2}", w / fnet);
    let target = w / 1.5;
    let side = |floor: f64| if target < floor { "below" } else { "above" };
    eprintln!(
        "1.5x faster than swarm = {target:.0} ms: {} the engine floor ({f:.0} ms), {} the floor with a namespace network ({fnet:.0} ms); shoal takes {:.2}x the latter",
        side(f),
        side(fnet),
        s / fnet
    );
    println!("converge_50_ms: {s:.0}");
    Ok(())
}
