//! Host loss: time until all 10 replicas run on the surviving host after the other host's agent (or engine) is SIGKILLed.
//!
//! DESIGN.md's target: all replicas running again < 2 s after an agent/engine kill.
//!
//! Setup: a fresh extra engine (`Host::start`, its own network namespace, stopped at the
//! end), `shoal up` on the main test engine (a fresh data directory in a tempdir, API and
//! dispatcher on 127.0.0.1:0, host name `failover-main`) and `shoal agent --dispatcher URL
//! --cluster-id ID --host-name NAME` for the extra engine.
//!
//! Each run applies (`shoal apply -f`) a Service, named afresh per run, of 10 replicas of
//! `shoal-test/busybox:1` running `sh -c "trap 'exit 0' TERM; sleep 100000 & wait"` with a
//! 1 s stop grace period, and waits until all 10 run with some on each host. Then the clock
//! starts and the extra host is killed:
//!
//! - agent kill: SIGKILL of the extra host's `shoal agent` (its containers keep running on
//!   its engine, unmanaged);
//! - engine kill: `scripts/test-env host kill NAME`, SIGKILL of the extra host's dockerd
//!   (its containerd, shims and containers are left as a crash leaves them; the agent keeps
//!   running);
//! - silent loss: SIGSTOP of the extra host's agent. Its connection stays open (the kernel
//!   still acknowledges TCP) but nothing answers: only the missing heartbeats tell
//!   (DESIGN.md's third case, target < 3 s). Afterwards the agent gets SIGCONT, and the
//!   run reports whether the host rejoined and its stale containers went.
//!
//! Measured: from just before the kill until one polling function, listing the main
//! engine's running containers with the service's label every 25 ms, counts 10. Alongside,
//! watches on the Host and the service's Tasks record when the extra host was marked lost
//! (its Ready condition False, with the reason) and when its first task became Orphaned
//! (stderr, per run). An engine-kill run that does not converge within 30 s is reported as
//! `never`, with what the Host and Tasks showed at that point. After each run the service
//! is deleted, leftovers are removed on both engines, the engine is restarted (`host
//! start`) and the agent too, and the extra Host is Ready again before the next run.
//!
//! All agent-kill runs come first, then the engine-kill runs, then the silent ones;
//! `SHOAL_BENCH_RUNS` of each (default 5). The `shoal` binary is built first (`cargo build --release -p shoal-cli`)
//! unless `SHOAL_BIN` names one. Logs go to `failover-logs/` beside this executable.
//! Prints `failover_engine_kill_ms` and `failover_silent_loss_ms` (medians, or `never
//! (…)`), the medians of the lost-marking times, and, last, `failover_agent_kill_ms`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use shoal_bench::{
    ShoalUp, clear, count_all, count_running, list_ms, loadavg, logs_dir, median, ms, run_logged,
    runs_from_env, shoal_bin, sleep_service_yaml, spawn_logged, wait_running,
};
use shoal_crds::{ConditionStatus, Host as HostObj, Task, TaskPhase};
use shoal_tests::{Engine, Host};

const REPLICAS: usize = 10;
const POLL: Duration = Duration::from_millis(25);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
const MAIN_HOST: &str = "failover-main";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kill {
    Agent,
    Engine,
    /// SIGSTOP of the agent.
    Silent,
}

impl Kill {
    fn name(self) -> &'static str {
        match self {
            Kill::Agent => "agent",
            Kill::Engine => "engine",
            Kill::Silent => "silent",
        }
    }

    /// Whether the agent process outlives the kill (its state is worth reporting).
    fn agent_survives(self) -> bool {
        self != Kill::Agent
    }
}

/// What the Host and Task watches saw after the kill.
#[derive(Default, Debug)]
struct Seen {
    /// The extra Host's Ready condition turned False: when, and its reason.
    lost: Option<(Instant, String)>,
    /// The first of the extra host's tasks Orphaned.
    orphaned: Option<Instant>,
}

/// The cluster: `shoal up`, its API client, the agent for the extra host.
struct Cluster {
    bin: std::path::PathBuf,
    up: ShoalUp,
    client: Client,
    kubeconfig: std::path::PathBuf,
    dispatcher: String,
    cluster: String,
    extra: Host,
    main_docker: Docker,
    extra_docker: Docker,
    agent: Option<Child>,
    agents_started: usize,
    logs: std::path::PathBuf,
}

impl Cluster {
    fn shoal(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("KUBECONFIG", &self.kubeconfig).env("NO_COLOR", "1");
        c
    }

    fn start_agent(&mut self) -> Result<()> {
        self.agents_started += 1;
        let log = self.logs.join(format!("agent-{}.log", self.agents_started));
        let child = spawn_logged(
            Command::new(&self.bin)
                .args(["agent", "--dispatcher", &self.dispatcher])
                .args(["--cluster-id", &self.cluster])
                .args(["--host-name", &self.extra.name])
                .env("DOCKER_HOST", &self.extra.docker_host),
            &log,
        )?;
        self.agent = Some(child);
        Ok(())
    }

    /// SIGKILL the agent (and reap it).
    fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the agent.
    fn signal_agent(&self, signal: &str) -> Result<()> {
        let pid = self
            .agent
            .as_ref()
            .map(Child::id)
            .context("no agent to signal")?;
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !st.success() {
            bail!("kill -{signal} {pid}: {st}");
        }
        Ok(())
    }

    /// Whether the agent process still runs (its exit status when not).
    fn agent_state(&mut self) -> String {
        match self.agent.as_mut().map(Child::try_wait) {
            None => "not started".into(),
            Some(Ok(None)) => "running".into(),
            Some(Ok(Some(st))) => format!("exited ({st})"),
            Some(Err(e)) => format!("unknown ({e})"),
        }
    }

    /// The Host `name`'s Ready condition: (status True?, reason).
    async fn host_ready(&self, name: &str) -> Result<Option<(bool, String)>> {
        let hosts: Api<HostObj> = Api::all(self.client.clone());
        let Some(h) = hosts.get_opt(name).await.context("reading a Host")? else {
            return Ok(None);
        };
        Ok(h.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| {
                (
                    c.status == ConditionStatus::True,
                    c.reason.unwrap_or_default(),
                )
            }))
    }

    /// Wait up to 60 s until both Hosts are Ready.
    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let main = self.host_ready(MAIN_HOST).await?;
            let extra = self.host_ready(&self.extra.name).await?;
            if matches!(main, Some((true, _))) && matches!(extra, Some((true, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("hosts not Ready within 60 s: {MAIN_HOST} {main:?}, extra {extra:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Phases of the service's tasks by host: "host: Phase×n …".
    async fn task_summary(&self, service: &str) -> Result<String> {
        let tasks: Api<Task> = Api::namespaced(self.client.clone(), "default");
        let lp = kube::api::ListParams::default().labels(&format!("shoal.dev/service={service}"));
        let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
        for t in tasks.list(&lp).await.context("listing tasks")? {
            let host = t.spec.host_name.clone().unwrap_or_else(|| "-".into());
            let phase = t
                .status
                .and_then(|s| s.phase)
                .map_or_else(|| "None".into(), |p| format!("{p:?}"));
            *by.entry((host, phase)).or_default() += 1;
        }
        Ok(by
            .iter()
            .map(|((h, p), n)| format!("{h}: {p}×{n}"))
            .collect::<Vec<_>>()
            .join(", "))
    }
}

/// Watch the extra Host and the service's Tasks, recording into `seen` the first time the
/// host is not Ready and the first time one of its tasks is Orphaned.
fn watch(
    client: &Client,
    host: &str,
    service: &str,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let hosts: Api<HostObj> = Api::all(client.clone());
    let cfg = watcher::Config::default();
    let s = seen.clone();
    let name = host.to_string();
    let h = tokio::spawn(async move {
        let mut stream = watcher(hosts, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(h)) = stream.next().await {
            if h.metadata.name.as_deref() != Some(name.as_str()) {
                continue;
            }
            let cond = h
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready");
            if let Some(c) = cond
                && c.status != ConditionStatus::True
                && let Ok(mut s) = s.lock()
                && s.lost.is_none()
            {
                s.lost = Some((Instant::now(), c.reason.unwrap_or_default()));
            }
        }
    });
    let tasks: Api<Task> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().labels(&format!("shoal.dev/service={service}"));
    let host = host.to_string();
    let t = tokio::spawn(async move {
        let mut stream = watcher(tasks, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(t)) = stream.next().await {
            let orphaned = t.spec.host_name.as_deref() == Some(host.as_str())
                && t.status.and_then(|s| s.phase) == Some(TaskPhase::Orphaned);
            if orphaned
                && let Ok(mut s) = seen.lock()
                && s.orphaned.is_none()
            {
                s.orphaned = Some(Instant::now());
            }
        }
    });
    vec![h, t]
}

/// Processes of the extra host's containers (cgroup parent `/shoal-test-host-NAME`, see
/// scripts/test-env) running `sleep`: the workload, alive or not without its dockerd.
fn workload_procs(host: &str) -> usize {
    let cgroup = format!("/shoal-test-host-{host}/");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            let p = e.path();
            std::fs::read_to_string(p.join("cgroup")).is_ok_and(|c| c.contains(&cgroup))
                && std::fs::read(p.join("cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
        })
        .count()
}

/// One run's result: the time to 10 running on the main engine (None: not within 30 s).
struct Outcome {
    converged: Option<Duration>,
    lost: Option<Duration>,
}

/// The runs of one kind: converged times, host-lost times (ms), runs that never converged.
struct Series {
    kind: Kill,
    done: Vec<f64>,
    lost: Vec<f64>,
    never: usize,
}

async fn series(c: &mut Cluster, kind: Kill, runs: usize, dir: &Path) -> Result<Series> {
    let mut s = Series {
        kind,
        done: Vec::new(),
        lost: Vec::new(),
        never: 0,
    };
    for run in 1..=runs {
        let o = run_once(c, kind, run, dir)
            .await
            .with_context(|| format!("{} kill run {run}", kind.name()))?;
        match o.converged {
            Some(d) => s.done.push(ms(d)),
            None => s.never += 1,
        }
        s.lost.extend(o.lost.map(ms));
    }
    Ok(s)
}

impl Series {
    fn metric(&self) -> &'static str {
        match self.kind {
            Kill::Agent => "failover_agent_kill",
            Kill::Engine => "failover_engine_kill",
            Kill::Silent => "failover_silent_loss",
        }
    }

    /// Prints `<metric>_host_lost_ms` (when the host was ever marked lost), then
    /// `<metric>_ms`: a median, or `never …` with what was seen.
    fn report(&self, runs: usize) {
        let m = self.metric();
        if !self.lost.is_empty() {
            println!("{m}_host_lost_ms: {:.0}", median(self.lost.clone()));
        }
        let limit = FAILOVER_TIMEOUT.as_secs();
        let never = self.never;
        if never == 0 {
            println!("{m}_ms: {:.0}", median(self.done.clone()));
        } else if self.done.is_empty() {
            println!(
                "{m}_ms: never (no replacement within {limit} s in {never}/{runs} runs: {})",
                if self.lost.is_empty() {
                    "the host was never marked lost, so its tasks stayed Running; none was Orphaned"
                } else {
                    "the host was marked lost in some runs, yet the replicas were not all replaced"
                }
            );
        } else {
            println!(
                "{m}_ms: never in {never}/{runs} runs (no replacement within {limit} s); median of the others {:.0}",
                median(self.done.clone())
            );
        }
    }
}

/// Waits (up to the failover timeout) until no container with `label` is left on
/// `docker`; says when, counted from `since` (named `what`), or that they stayed.
async fn stale_removed(docker: &Docker, label: &str, since: Instant, what: &str) -> Result<String> {
    while since.elapsed() < FAILOVER_TIMEOUT {
        if count_all(docker, label).await?.is_empty() {
            return Ok(format!("{:.0} ms after {what}", ms(since.elapsed())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(format!(
        "no, still there after {} s",
        FAILOVER_TIMEOUT.as_secs()
    ))
}

async fn run_once(c: &mut Cluster, kind: Kill, run: usize, dir: &Path) -> Result<Outcome> {
    let name = format!("fo-{}-{run}", kind.name());
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, sleep_service_yaml(&name, REPLICAS))?;
    let labels = vec![
        format!("shoal.dev/cluster={}", c.cluster),
        format!("shoal.dev/service={name}"),
    ];
    let logs = c.logs.clone();
    let log = |what: &str| logs.join(format!("{what}-{name}.log"));
    run_logged(
        c.shoal().arg("apply").arg("-f").arg(&file),
        "shoal apply",
        &log("apply"),
    )
    .await?;

    // All 10 running, spread over both hosts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (on_main, on_extra) = loop {
        let m = count_running(&c.main_docker, &labels).await?;
        let x = count_running(&c.extra_docker, &labels).await?;
        if m + x >= REPLICAS && m > 0 && x > 0 {
            break (m, x);
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: {m} running on the main engine and {x} on the extra one after 60 s ({})",
                c.task_summary(&name).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let seen = Arc::new(Mutex::new(Seen::default()));
    let watches = watch(&c.client, &c.extra.name, &name, seen.clone());
    // Let the watches list and connect.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    match kind {
        Kill::Agent => c.kill_agent(),
        Kill::Engine => c.extra.kill_engine().await?,
        Kill::Silent => c.signal_agent("STOP")?,
    }
    let killed = t0.elapsed();
    let waited = wait_running(
        &c.main_docker,
        &labels,
        REPLICAS,
        t0,
        POLL,
        FAILOVER_TIMEOUT,
    )
    .await;
    let (converged, note) = match waited {
        // Whether the agent outlived its engine (it should: a SIGTERM from elsewhere would
        // make this an agent loss).
        Ok(d) if kind.agent_survives() => (Some(d), format!("; agent process {}", c.agent_state())),
        Ok(d) => (Some(d), String::new()),
        Err(e) if kind.agent_survives() => {
            let host = c.host_ready(&c.extra.name).await?;
            let note = format!(
                "; NOT converged: {e:#}; extra Host Ready {host:?}; agent process {}; {} container processes still alive on the extra host; tasks: {}",
                c.agent_state(),
                workload_procs(&c.extra.name),
                c.task_summary(&name).await?
            );
            (None, note)
        }
        Err(e) => return Err(e),
    };
    // Watch events trail the containers a little.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for w in watches {
        w.abort();
    }
    let (lost, lost_reason, orphaned) = {
        let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (
            s.lost
                .as_ref()
                .map(|(t, _)| t.saturating_duration_since(t0)),
            s.lost.as_ref().map(|(_, r)| r.clone()),
            s.orphaned.map(|t| t.saturating_duration_since(t0)),
        )
    };
    let fmt =
        |d: Option<Duration>| d.map_or_else(|| "never".into(), |d| format!("{:.0} ms", ms(d)));
    eprintln!(
        "  {} kill run {run}: spread {on_main} main + {on_extra} extra; kill took {:.0} ms; host marked lost at {} ({}); first task Orphaned at {}; 10 running on main at {}{note} (load {})",
        kind.name(),
        ms(killed),
        fmt(lost),
        lost_reason.unwrap_or_else(|| "-".into()),
        fmt(orphaned),
        fmt(converged),
        loadavg()
    );

    // The engine back (`host start`): the host rejoins (its agent, still connected, is asked
    // to) and removes the containers of the replaced tasks; the replicas stay where they run.
    if kind == Kill::Engine {
        let t1 = Instant::now();
        c.extra
            .restart()
            .await
            .context("restarting the extra engine")?;
        let restarted = t1.elapsed();
        c.extra_docker = c.extra.engine().await?.docker;
        let cleaned = stale_removed(&c.extra_docker, &labels[1], t1, "the restart began").await?;
        eprintln!(
            "    engine restarted in {:.0} ms; stale containers on it removed: {cleaned}; Host Ready {:?}; tasks: {}",
            ms(restarted),
            c.host_ready(&c.extra.name).await?,
            c.task_summary(&name).await?
        );
    }

    // The agent resumes: its host is whole again, so it rejoins and removes the
    // containers of the replaced tasks.
    if kind == Kill::Silent {
        let t1 = Instant::now();
        c.signal_agent("CONT")?;
        let cleaned = stale_removed(&c.extra_docker, &labels[1], t1, "SIGCONT").await?;
        eprintln!(
            "    agent resumed; stale containers on its engine removed: {cleaned}; Host Ready {:?}; tasks: {}",
            c.host_ready(&c.extra.name).await?,
            c.task_summary(&name).await?
        );
    }

    // Clean up: the service, leftovers on both engines; the agent back.
    run_logged(
        c.shoal().args(["delete", "service", &name]),
        "shoal delete",
        &log("delete"),
    )
    .await?;
    clear(&c.extra_docker, &labels[1], 0, false).await?;
    clear(&c.main_docker, &labels[1], 30, false).await?;
    if c.agent_state() != "running" {
        c.kill_agent();
        c.start_agent()?;
    }
    c.wait_ready().await?;
    Ok(Outcome { converged, lost })
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = runs_from_env(5)?;
    let logs = logs_dir("failover-logs")?;
    eprintln!("logs in {}", logs.display());
    let bin = shoal_bin(&logs)?;
    let main_engine = Engine::main().await?;
    let extra = Host::start("fo")
        .await
        .context("starting an extra engine")?;
    let extra_docker = extra.engine().await?.docker;
    eprintln!(
        "extra engine {} at {} ({}); load average {}",
        extra.name,
        extra.docker_host,
        extra.address,
        loadavg()
    );

    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let up = ShoalUp::start(
        &bin,
        &data,
        MAIN_HOST,
        &main_engine.docker_host,
        &logs.join("shoal-up.out"),
        &logs.join("shoal-up.log"),
    )
    .await?;
    let kubeconfig = up.kubeconfig();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).context("reading the kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .context("kubeconfig")?;
    let mut c = Cluster {
        dispatcher: up.dispatcher()?,
        cluster: up.cluster_id()?,
        client: Client::try_from(cfg)?,
        kubeconfig,
        bin,
        up,
        extra,
        main_docker: main_engine.docker.clone(),
        extra_docker,
        agent: None,
        agents_started: 0,
        logs,
    };
    let cluster_label = format!("shoal.dev/cluster={}", c.cluster);

    let t = Instant::now();
    let measured = async {
        c.start_agent()?;
        c.wait_ready().await?;
        let mut all = Vec::new();
        for kind in [Kill::Agent, Kill::Engine, Kill::Silent] {
            all.push(series(&mut c, kind, runs, tmp.path()).await?);
        }
        Ok::<_, anyhow::Error>(all)
    }
    .await;
    eprintln!(
        "measured in {:.0} s; load average now {}",
        t.elapsed().as_secs_f64(),
        loadavg()
    );

    c.kill_agent();
    let stopped = c.up.stop();
    let cleared = clear(&c.main_docker, &cluster_label, 0, true).await;
    let Cluster { extra, .. } = c;
    if let Err(e) = extra.stop().await {
        eprintln!("stopping the extra engine: {e:#}");
    }
    let all = measured?;
    stopped?;
    cleared?;

    for s in &all {
        eprintln!(
            "{} runs (ms): {} ({} never)",
            s.kind.name(),
            list_ms(&s.done),
            s.never
        );
    }
    println!("failover_runs: {runs}");
    // The agent-kill figure last.
    for s in all.iter().rev() {
        s.report(runs);
    }
    Ok(())
}
