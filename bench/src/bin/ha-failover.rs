//! Control-plane failover: three `shoal server`s replicating the store with Raft; SIGKILL of the leader → a write accepted again through a survivor, and no acknowledged write lost.
//! needs: nothing
//!
//! DESIGN.md's target: after the control-plane leader dies, writes are accepted again in
//! < 2 s and no acknowledged write is lost.
//!
//! Setup, as `cli/tests/ha_e2e.rs` does it: three `shoal server --node-id ID --raft-listen
//! 127.0.0.1:P --peer …` on 127.0.0.1 with free ports (API, dispatcher, Raft), data
//! directories in a tempdir; the first one creates `cluster-id` and `pki/`, which are
//! copied into the other two data directories before their first start. No agent and no
//! Docker engine: the Service below only ever has unplaced tasks. Then the benchmark waits
//! until exactly one server leads (only the leader's dispatcher port accepts TCP
//! connections) and every server's API answers, and creates through the leader's API the
//! Service `ha-bench` (test image, 0 replicas).
//!
//! Each run (`SHOAL_BENCH_RUNS`, default 7):
//! 1. creates a marker Service `ha-mark-RUN` (0 replicas) through the leader and, as soon
//!    as that write is acknowledged, SIGKILLs the leader (the clock starts just before);
//! 2. tries `spec.replicas = RUN` on `ha-bench` (a JSON merge patch, what `shoal scale
//!    ha-bench=RUN` sends) through the two surviving servers' APIs: a new attempt every
//!    25 ms, alternating between them, at most 16 in flight, each given up after 3 s;
//!    measured: until the first attempt is answered with success
//!    (`ha_failover_write_ms`). The client's own retries (kube retries 503s with a
//!    backoff) are off for these attempts, so a retry's backoff does not add to the
//!    figure. Every attempt carries the same value, so an attempt that failed but was
//!    applied later changes nothing;
//! 3. alongside, connects to the survivors' dispatcher ports every 10 ms; measured: until
//!    one accepts, i.e. a new leader runs the dispatcher (`ha_failover_dispatcher_ms`);
//! 4. reads back through the survivor that accepted the write: `ha-bench` must have
//!    `RUN` replicas and every marker of this and the earlier runs must exist; each
//!    acknowledged write missing counts towards `ha_failover_lost_writes` (must be 0);
//! 5. starts the killed server again on its data directory and waits until its API shows
//!    the same (caught up), and until one server leads.
//!
//! The `shoal` binary is built first (`cargo build --release -p shoal-cli`) unless
//! `SHOAL_BIN` names one. The servers' logs (`RUST_LOG=info`) go to `ha-failover-logs/`
//! beside this executable. The servers are killed on every exit path (errors, SIGINT,
//! SIGTERM). Prints the runs, `ha_failover_dispatcher_ms` (median),
//! `ha_failover_lost_writes` and, last, `ha_failover_write_ms` (median); every run's
//! figures and the min and max on stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;
use shoal_bench::{SLEEP_SHELL, list_ms, loadavg, logs_dir, median, ms, runs_from_env, shoal_bin};
use shoal_crds::Service;
use shoal_tests::TEST_IMAGE;
use shoal_tests::{ServerPorts, shoal_server_command};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The Service whose replica count the measured writes set.
const SERVICE: &str = "ha-bench";
const NAMESPACE: &str = "default";
/// A new write attempt this often.
const RETRY: Duration = Duration::from_millis(25);
/// Write attempts in flight at most.
const MAX_IN_FLIGHT: usize = 16;
/// One write attempt is given up after this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The dispatcher ports are tried this often.
const DISPATCHER_POLL: Duration = Duration::from_millis(10);
/// No write, or no dispatcher, this long after the kill: the run fails.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// A port free at the moment.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `shoal server`: its ports, data directory and process (SIGKILLed when dropped).
#[derive(Debug)]
struct Server {
    id: u64,
    data: PathBuf,
    api: u16,
    dispatcher: u16,
    raft: u16,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Server {
    fn new(id: u64, root: &Path, logs: &Path) -> Result<Server> {
        Ok(Server {
            id,
            data: root.join(format!("server-{id}")),
            api: free_port()?,
            dispatcher: free_port()?,
            raft: free_port()?,
            log: logs.join(format!("server-{id}.log")),
            child: None,
            starts: 0,
        })
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data.join("kubeconfig")
    }

    fn ports(&self) -> ServerPorts {
        ServerPorts {
            id: self.id,
            api: self.api,
            dispatcher: self.dispatcher,
            raft: self.raft,
        }
    }

    /// Starts it with every other server of `peers` as a peer; its log is started afresh
    /// on the first start and appended to after.
    fn start(&mut self, bin: &Path, peers: &[ServerPorts]) -> Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.starts > 1)
            .truncate(self.starts == 1)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(log, "--- ha-failover: start {} ---", self.starts)?;
        let child = shoal_server_command(bin, &self.data, &self.ports(), peers)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting server {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL (and reap).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process runs; an error with its log's end when it exited.
    fn check_alive(&mut self) -> Result<bool> {
        let Some(c) = self.child.as_mut() else {
            return Ok(false);
        };
        if let Some(st) = c.try_wait()? {
            self.child = None;
            bail!(
                "server {} exited ({st}):\n{}",
                self.id,
                shoal_bench::tail(&self.log)
            );
        }
        Ok(true)
    }

    /// An API client from its kubeconfig; one that `retries` answers 429/503/504 itself
    /// (kube's default), or one that returns them (the measured writes: this benchmark
    /// retries them, so that every attempt's outcome is seen).
    async fn client(&self, retries: bool) -> Result<Client> {
        let kc = Kubeconfig::read_from(self.kubeconfig())
            .with_context(|| format!("reading {}", self.kubeconfig().display()))?;
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .context("kubeconfig")?;
        cfg.default_retry = retries;
        Ok(Client::try_from(cfg)?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` (within 200 ms).
async fn listens(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(200),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Waits up to `secs` until exactly one running server's dispatcher listens; its index.
async fn wait_leader(servers: &mut [Server], secs: u64) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut leading = Vec::new();
        for (i, s) in servers.iter_mut().enumerate() {
            if s.check_alive()? && listens(s.dispatcher).await {
                leading.push(i);
            }
        }
        if let [one] = leading[..] {
            return Ok(one);
        }
        ensure!(
            Instant::now() < deadline,
            "no single leader within {secs} s (dispatchers listening: {leading:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Service of `replicas` replicas of the test image (it needs no engine: without hosts
/// its tasks stay unplaced).
fn service(name: &str, replicas: i32) -> Result<Service> {
    serde_json::from_value(json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "template": {
                "image": TEST_IMAGE,
                "command": ["sh", "-c", SLEEP_SHELL],
                "stopGracePeriod": "1s",
            },
        },
    }))
    .context("building a Service")
}

fn services(client: &Client) -> Api<Service> {
    Api::namespaced(client.clone(), NAMESPACE)
}

/// What a server's API shows: `ha-bench`'s replicas (None: no such Service) and the
/// names of every Service.
async fn read_back(client: &Client) -> Result<(Option<i32>, BTreeSet<String>)> {
    let list = tokio::time::timeout(
        Duration::from_secs(5),
        services(client).list(&ListParams::default()),
    )
    .await
    .context("listing Services: no answer within 5 s")?
    .context("listing Services")?;
    let replicas = list
        .items
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(SERVICE))
        .map(|s| s.spec.replicas());
    let names = list
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    Ok((replicas, names))
}

/// The acknowledged writes missing from a read-back: `ha-bench` not at `replicas`, and each
/// marker absent. Described on stderr.
fn missing(got: &(Option<i32>, BTreeSet<String>), replicas: i32, markers: &[String]) -> usize {
    let mut lost = 0;
    if got.0 != Some(replicas) {
        eprintln!(
            "    LOST: {SERVICE} has replicas {:?}, the last acknowledged write set {replicas}",
            got.0
        );
        lost += 1;
    }
    for m in markers.iter().filter(|m| !got.1.contains(*m)) {
        eprintln!("    LOST: marker Service {m} (its creation was acknowledged) is missing");
        lost += 1;
    }
    lost
}

/// The first write accepted through a survivor after `t0`.
struct Accepted {
    after: Duration,
    /// Index into the survivors.
    via: usize,
    attempts: usize,
    /// Failed attempts' errors, counted.
    errors: BTreeMap<String, usize>,
}

/// Sets `ha-bench`'s replicas to `k` through `survivors` (a new attempt every [`RETRY`],
/// alternating, at most [`MAX_IN_FLIGHT`] at once) until one attempt succeeds.
async fn first_write(survivors: &[Client], k: i32, t0: Instant) -> Result<Accepted> {
    let mut set = JoinSet::new();
    let mut attempts = 0usize;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut next = Instant::now();
    loop {
        ensure!(
            t0.elapsed() < FAILOVER_TIMEOUT,
            "no write accepted within {} s of the kill ({attempts} attempts; errors: {errors:?})",
            FAILOVER_TIMEOUT.as_secs()
        );
        if set.len() < MAX_IN_FLIGHT && Instant::now() >= next {
            let via = attempts % survivors.len();
            let api = services(&survivors[via]);
            attempts += 1;
            set.spawn(async move {
                let patch = json!({"spec": {"replicas": k}});
                let r = tokio::time::timeout(
                    ATTEMPT_TIMEOUT,
                    api.patch(SERVICE, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await;
                let done = Instant::now();
                let r = match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(kube::Error::Api(st))) => Err(format!("{} {}", st.code, st.message)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
                };
                (via, done, r)
            });
            next = Instant::now() + RETRY;
        }
        let wake = if set.len() < MAX_IN_FLIGHT {
            next
        } else {
            Instant::now() + Duration::from_millis(100)
        };
        tokio::select! {
            Some(joined) = set.join_next() => {
                let (via, done, r) = joined.context("a write attempt panicked")?;
                match r {
                    Ok(()) => {
                        set.abort_all();
                        return Ok(Accepted {
                            after: done.saturating_duration_since(t0),
                            via,
                            attempts,
                            errors,
                        });
                    }
                    Err(e) => {
                        let e: String = e.chars().take(120).collect();
                        *errors.entry(e).or_default() += 1;
                    }
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Tries the `dispatchers` (server id, port) every [`DISPATCHER_POLL`] until one accepts a
/// connection: the time since `t0` and that server's id.
async fn first_dispatcher(dispatchers: &[(u64, u16)], t0: Instant) -> Result<(Duration, u64)> {
    loop {
        for (id, port) in dispatchers {
            if listens(*port).await {
                return Ok((t0.elapsed(), *id));
            }
        }
        ensure!(
            t0.elapsed() < FAILOVER_TIMEOUT,
            "no dispatcher listening within {} s of the kill",
            FAILOVER_TIMEOUT.as_secs()
        );
        tokio::time::sleep(DISPATCHER_POLL).await;
    }
}

/// Every run's figures.
#[derive(Default)]
struct Figures {
    write: Vec<f64>,
    dispatcher: Vec<f64>,
    lost: usize,
}

async fn measure(bin: &Path, logs: &Path, runs: usize, figures: &mut Figures) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut servers = (1..=3)
        .map(|id| Server::new(id, tmp.path(), logs))
        .collect::<Result<Vec<_>>>()?;
    let peers: Vec<ServerPorts> = servers.iter().map(Server::ports).collect();

    // The first server makes the cluster's id and CA; the others get copies before their
    // first start.
    servers[0].start(bin, &peers)?;
    let first = servers[0].data.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(first.join("pki/ca.key").exists() && first.join("cluster-id").exists()) {
        servers[0].check_alive()?;
        ensure!(
            Instant::now() < deadline,
            "the first server made no CA and cluster id within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &mut servers[1..] {
        let pki = s.data.join("pki");
        std::fs::create_dir_all(&pki)?;
        for e in std::fs::read_dir(first.join("pki"))? {
            let e = e?;
            std::fs::copy(e.path(), pki.join(e.file_name()))?;
        }
        std::fs::copy(first.join("cluster-id"), s.data.join("cluster-id"))?;
        s.start(bin, &peers)?;
    }
    let t = Instant::now();
    let mut leader = wait_leader(&mut servers, 60).await?;
    eprintln!(
        "three servers up; server {} leads after {:.0} ms",
        servers[leader].id,
        ms(t.elapsed())
    );

    // Every API answers.
    // Per server: a client for the setup and the reads, one without retries for the
    // measured writes.
    let mut clients = Vec::new();
    let mut writers = Vec::new();
    for s in &mut servers {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            s.check_alive()?;
            if s.kubeconfig().exists()
                && let Ok(c) = s.client(true).await
                && read_back(&c).await.is_ok()
            {
                break c;
            }
            ensure!(
                Instant::now() < deadline,
                "server {}'s API did not answer within 30 s",
                s.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        clients.push(client);
        writers.push(s.client(false).await?);
    }
    services(&clients[leader])
        .create(&PostParams::default(), &service(SERVICE, 0)?)
        .await
        .context("creating the Service through the leader")?;
    let mut markers: Vec<String> = Vec::new();

    for run in 1..=runs {
        let load = loadavg();
        // The last acknowledged write before the crash: a new marker through the leader.
        let marker = format!("ha-mark-{run}");
        tokio::time::timeout(
            Duration::from_secs(10),
            services(&clients[leader]).create(&PostParams::default(), &service(&marker, 0)?),
        )
        .await
        .context("creating a marker through the leader: no answer within 10 s")?
        .with_context(|| format!("creating {marker} through the leader"))?;
        markers.push(marker);

        let t0 = Instant::now();
        servers[leader].kill();
        let killed = servers[leader].id;
        let survivors: Vec<usize> = (0..servers.len()).filter(|i| *i != leader).collect();
        let survivor_clients: Vec<Client> = survivors.iter().map(|i| writers[*i].clone()).collect();
        let dispatchers: Vec<(u64, u16)> = survivors
            .iter()
            .map(|i| (servers[*i].id, servers[*i].dispatcher))
            .collect();
        let k = i32::try_from(run)?;
        let (write, dispatcher) = tokio::join!(
            first_write(&survivor_clients, k, t0),
            first_dispatcher(&dispatchers, t0)
        );
        let write = write.with_context(|| format!("run {run}"))?;
        let (dispatcher_after, new_leader) = dispatcher.with_context(|| format!("run {run}"))?;
        let replicas = k;
        let via = survivors[write.via];

        // Every acknowledged write, read back through the survivor that took the last one.
        let got = read_back(&clients[via])
            .await
            .with_context(|| format!("run {run}: reading back through server {}", via + 1))?;
        let lost = missing(&got, replicas, &markers);
        figures.lost += lost;
        figures.write.push(ms(write.after));
        figures.dispatcher.push(ms(dispatcher_after));
        let errors = write
            .errors
            .iter()
            .map(|(e, n)| format!("{n}× {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!(
            "  run {run}: killed leader server {killed} (load {load}); write accepted after {:.0} ms through server {} ({} attempts; failed: {}); dispatcher of server {new_leader} after {:.0} ms; read back: {SERVICE} replicas {:?}, {} of {} markers, lost {lost}",
            ms(write.after),
            servers[via].id,
            write.attempts,
            if errors.is_empty() { "none" } else { &errors },
            ms(dispatcher_after),
            got.0,
            markers.iter().filter(|m| got.1.contains(*m)).count(),
            markers.len(),
        );

        // The killed server back on its data directory, caught up.
        let t1 = Instant::now();
        servers[leader].start(bin, &peers)?;
        clients[leader] = servers[leader].client(true).await?;
        writers[leader] = servers[leader].client(false).await?;
        loop {
            servers[leader].check_alive()?;
            if let Ok(back) = read_back(&clients[leader]).await
                && back.0 == Some(replicas)
                && markers.iter().all(|m| back.1.contains(m))
            {
                break;
            }
            ensure!(
                t1.elapsed() < Duration::from_secs(60),
                "run {run}: server {killed} did not catch up within 60 s of its restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caught_up = t1.elapsed();
        leader = wait_leader(&mut servers, 30).await?;
        eprintln!(
            "    server {killed} restarted and caught up in {:.0} ms; server {} leads",
            ms(caught_up),
            servers[leader].id
        );
    }
    drop(servers);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = runs_from_env(7)?;
    let logs = logs_dir("ha-failover-logs")?;
    eprintln!("logs in {}; load average {}", logs.display(), loadavg());
    let bin = shoal_bin(&logs)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let mut figures = Figures::default();
    let t = Instant::now();
    // The servers are killed when `measure` returns or is dropped (on a signal).
    let measured = tokio::select! {
        r = measure(&bin, &logs, runs, &mut figures) => r,
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for SIGINT")?;
            Err(anyhow::anyhow!("interrupted (SIGINT)"))
        }
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated (SIGTERM)")),
    };
    eprintln!(
        "measured in {:.0} s; load average now {}",
        t.elapsed().as_secs_f64(),
        loadavg()
    );
    measured?;

    let min_max = |v: &[f64]| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("min {min:.0}, max {max:.0}")
    };
    eprintln!(
        "write accepted (ms): {} ({})",
        list_ms(&figures.write),
        min_max(&figures.write)
    );
    eprintln!(
        "dispatcher (ms): {} ({})",
        list_ms(&figures.dispatcher),
        min_max(&figures.dispatcher)
    );
    println!("ha_failover_runs: {runs}");
    println!(
        "ha_failover_dispatcher_ms: {:.0}",
        median(figures.dispatcher.clone())
    );
    println!("ha_failover_lost_writes: {}", figures.lost);
    println!("ha_failover_write_ms: {:.0}", median(figures.write.clone()));
    ensure!(
        figures.lost == 0,
        "{} acknowledged writes were lost",
        figures.lost
    );
    Ok(())
}
