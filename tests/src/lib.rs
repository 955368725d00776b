//! Helpers for Shoal's end-to-end tests against real Docker engines.
//!
//! The engines come from `scripts/test-env`: a private main engine (`scripts/test-env up`,
//! found through `SHOAL_TEST_DOCKER_HOST`, `DOCKER_HOST` or the default socket) and extra
//! engines that play separate hosts, each in its own network namespace on the
//! 10.200.0.0/24 test switch ([`Host`]). Every container these helpers create carries the
//! label `shoal.dev/test=1` and a unique name.
//!
//! Tests that use Docker belong to the nextest test group `docker` (see
//! `.config/nextest.toml`), which bounds how many run at once.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use bollard;

/// The test image every engine of `scripts/test-env` has (busybox, all applets, root and
/// nobody users, `/www/index.html`). It has no default command: always give one.
pub const TEST_IMAGE: &str = "shoal-test/busybox:1";
/// Label key every test container carries (value `1`).
pub const TEST_LABEL: &str = "shoal.dev/test";
/// Default state directory of `scripts/test-env` (override: `SHOAL_TEST_STATE`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shoal-test";
/// Address of the root network namespace on the test switch.
pub const ROOT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 254);

/// The repository root (parent of this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `scripts/test-env` (override: `SHOAL_TEST_ENV`).
pub fn test_env_script() -> PathBuf {
    match std::env::var_os("SHOAL_TEST_ENV") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("scripts").join("test-env"),
    }
}

/// The state directory of `scripts/test-env`.
pub fn state_dir() -> PathBuf {
    match std::env::var_os("SHOAL_TEST_STATE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

/// `BIN up` on `data` for the engine at `docker_host`, as the end-to-end tests and
/// benchmarks run it: API and dispatcher on free loopback ports, the local host named
/// `host_name`, stdin closed. The caller adds output redirections and spawns it.
pub fn shoal_up_command(bin: &Path, data: &Path, host_name: &str, docker_host: &str) -> Command {
    let mut c = Command::new(bin);
    c.arg("up")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--dispatcher-listen", "127.0.0.1:0"])
        .args(["--host-name", host_name])
        .env("DOCKER_HOST", docker_host)
        .stdin(std::process::Stdio::null());
    c
}

/// `BIN operator` over the cluster of `kubeconfig`, as the end-to-end tests and benchmarks
/// run kubernetes mode: data in `data`, no join listener, the plain dispatcher on
/// `127.0.0.1:dispatcher_port`, stdin closed. The caller adds arguments and output
/// redirections and spawns it.
pub fn shoal_operator_command(
    bin: &Path,
    kubeconfig: &Path,
    data: &Path,
    dispatcher_port: u16,
) -> Command {
    let mut c = Command::new(bin);
    c.args(["operator", "--no-join"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--data-dir")
        .arg(data)
        .arg("--dispatcher-listen")
        .arg(format!("127.0.0.1:{dispatcher_port}"))
        .stdin(std::process::Stdio::null());
    c
}

/// `BIN agent` dialling `dispatchers` (comma-separated), its state in `state_dir`, for the
/// engine at `docker_host`; stdin and stdout closed. The caller adds the cluster id or
/// join token, the host name and the stderr redirection, and spawns it.
pub fn shoal_agent_command(
    bin: &Path,
    dispatchers: &str,
    state_dir: &Path,
    docker_host: &str,
) -> Command {
    let mut c = Command::new(bin);
    c.args(["agent", "--dispatcher", dispatchers])
        .arg("--state-dir")
        .arg(state_dir)
        .env("DOCKER_HOST", docker_host)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    c
}

/// A loopback port free at the time of the call.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The loopback ports of one server of a replicated control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPorts {
    /// Its Raft node id.
    pub id: u64,
    /// The API (`--listen`).
    pub api: u16,
    /// The plain dispatcher (`--dispatcher-listen`; only the leader's listens).
    pub dispatcher: u16,
    /// Its peers' way in (`--raft-listen`).
    pub raft: u16,
}

/// `BIN server` on `data` as server `me` of `all` (every server, `me` among
/// them), on loopback addresses, as the end-to-end tests and benchmarks run
/// a replicated control plane. The caller adds output redirections and
/// spawns it.
pub fn shoal_server_command(
    bin: &Path,
    data: &Path,
    me: &ServerPorts,
    all: &[ServerPorts],
) -> Command {
    let mut c = Command::new(bin);
    c.arg("server")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{}", me.api)])
        .args([
            "--dispatcher-listen",
            &format!("127.0.0.1:{}", me.dispatcher),
        ])
        .args(["--node-id", &me.id.to_string()])
        .args(["--raft-listen", &format!("127.0.0.1:{}", me.raft)])
        .stdin(std::process::Stdio::null());
    for p in all.iter().filter(|p| p.id != me.id) {
        c.args(["--peer", &format!("{}=https://127.0.0.1:{}", p.id, p.raft)]);
    }
    c
}

/// `unix://…` address of the main test engine: `SHOAL_TEST_DOCKER_HOST`, else a unix
/// `DOCKER_HOST`, else the socket `scripts/test-env` uses.
pub fn main_docker_host() -> String {
    for var in ["SHOAL_TEST_DOCKER_HOST", "DOCKER_HOST"] {
        if let Ok(v) = std::env::var(var)
            && v.starts_with("unix://")
        {
            return v;
        }
    }
    format!(
        "unix://{}",
        state_dir().join("main").join("docker.sock").display()
    )
}

/// Connect to the engine at `docker_host` (`unix://PATH` or a bare path) and negotiate
/// the API version (Debian's engine speaks ≤ 1.41, bollard defaults newer).
pub async fn connect(docker_host: &str) -> Result<Docker> {
    let path = docker_host.strip_prefix("unix://").unwrap_or(docker_host);
    let docker = Docker::connect_with_unix(path, 120, API_DEFAULT_VERSION)
        .with_context(|| format!("connecting to {docker_host}"))?;
    let docker = docker
        .negotiate_version()
        .await
        .with_context(|| format!("negotiating the API version with {docker_host}"))?;
    Ok(docker)
}

/// A connected engine and its address.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The client (API version negotiated).
    pub docker: Docker,
    /// `unix://…` address of the engine.
    pub docker_host: String,
}

impl Engine {
    /// Connect to the engine at `docker_host`.
    pub async fn connect(docker_host: &str) -> Result<Engine> {
        Ok(Engine {
            docker: connect(docker_host).await?,
            docker_host: docker_host.to_string(),
        })
    }

    /// The main test engine. When it does not answer and `SHOAL_TEST_NO_PROVISION` is
    /// unset, runs `scripts/test-env up` first, so `cargo nextest run -p shoal-tests`
    /// also works without `scripts/test`.
    pub async fn main() -> Result<Engine> {
        let host = main_docker_host();
        match Engine::connect(&host).await {
            Ok(e) => Ok(e),
            Err(first) => {
                if std::env::var_os("SHOAL_TEST_NO_PROVISION").is_some() {
                    return Err(
                        first.context("the main test engine is down (run scripts/test-env up)")
                    );
                }
                run_test_env(&["up"])
                    .await
                    .context("provisioning the test engine")?;
                Engine::connect(&host).await
            }
        }
    }

    /// Create and start a container from `spec`.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<TestContainer> {
        TestContainer::run(self, spec).await
    }
}

/// Run `scripts/test-env ARGS…`; its stdout on success, an error with its output otherwise.
pub async fn run_test_env(args: &[&str]) -> Result<String> {
    let script = test_env_script();
    let out = tokio::process::Command::new(&script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    check_output(&script, args, out)
}

fn run_test_env_blocking(args: &[&str]) -> Result<String> {
    let script = test_env_script();
    let out = Command::new(&script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    check_output(&script, args, out)
}

fn check_output(script: &Path, args: &[&str], out: std::process::Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        bail!(
            "{} {} failed ({}):\n{}{}",
            script.display(),
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// A name unique across test processes and runs: `PREFIX-PID-N` plus a time component.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() % 100_000)
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{t}", std::process::id())
}

/// An extra engine playing a separate host: its own network namespace `shoal-NAME`, its
/// own dockerd, address `10.200.0.INDEX` on the test switch. Stopped (engine, namespace,
/// link) when dropped.
#[derive(Debug)]
pub struct Host {
    /// Host name as given to `scripts/test-env host start`.
    pub name: String,
    /// Index on the switch (the last octet of the address).
    pub index: u8,
    /// Address of the host on the test switch.
    pub address: Ipv4Addr,
    /// Its network namespace (under /run/netns).
    pub netns: String,
    /// `unix://…` address of its engine.
    pub docker_host: String,
    stopped: bool,
}

impl Host {
    /// Start a host named `PREFIX-PID-N` (unique across test processes). `prefix` should
    /// be short (the name is limited to 25 characters).
    pub async fn start(prefix: &str) -> Result<Host> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        Host::start_named(&name).await
    }

    /// Start (or find running) the host `name`.
    pub async fn start_named(name: &str) -> Result<Host> {
        let out = run_test_env(&["host", "start", name]).await?;
        Host::parse_info(&out)
    }

    fn parse_info(out: &str) -> Result<Host> {
        let kv: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| -> Result<String> {
            kv.get(k)
                .map(|v| (*v).to_string())
                .ok_or_else(|| anyhow!("test-env host output has no {k}: {out}"))
        };
        Ok(Host {
            name: get("name")?,
            index: get("index")?.parse().context("index")?,
            address: get("address")?.parse().context("address")?,
            netns: get("netns")?,
            docker_host: get("docker_host")?,
            stopped: false,
        })
    }

    /// A client for this host's engine.
    pub async fn engine(&self) -> Result<Engine> {
        Engine::connect(&self.docker_host).await
    }

    /// Cut this host's link to the switch (nobody reaches it, it reaches nobody).
    pub async fn partition(&self) -> Result<()> {
        run_test_env(&["host", "partition", &self.name])
            .await
            .map(drop)
    }

    /// Restore this host's link.
    pub async fn heal(&self) -> Result<()> {
        run_test_env(&["host", "heal", &self.name]).await.map(drop)
    }

    /// SIGKILL this host's dockerd, as a crash would ([`Host::restart`] brings it back).
    pub async fn kill_engine(&self) -> Result<()> {
        run_test_env(&["host", "kill", &self.name]).await.map(drop)
    }

    /// Start the engine again if it is down (same namespace, address and data).
    pub async fn restart(&self) -> Result<()> {
        run_test_env(&["host", "start", &self.name]).await.map(drop)
    }

    /// Stop the engine and remove the namespace now (also done on drop).
    pub async fn stop(mut self) -> Result<()> {
        self.stopped = true;
        run_test_env(&["host", "stop", &self.name]).await.map(drop)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(e) = run_test_env_blocking(&["host", "stop", &self.name])
        {
            eprintln!("stopping test host {}: {e:#}", self.name);
        }
    }
}

/// What to run in a test container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Image (default [`TEST_IMAGE`]).
    pub image: String,
    /// Command (required: the test image has none).
    pub cmd: Vec<String>,
    /// Container name (default: a unique `shoal-test-…` name).
    pub name: String,
    /// Run the engine's init as PID 1 so SIGTERM ends the workload (default true).
    pub init: bool,
    /// Published ports: (container port, host port), TCP.
    pub ports: Vec<(u16, u16)>,
    /// `KEY=value` environment entries.
    pub env: Vec<String>,
    /// Extra labels (`shoal.dev/test=1` is always set).
    pub labels: HashMap<String, String>,
    /// Run as this user (name or uid[:gid]); the image's default (root) when `None`.
    pub user: Option<String>,
    /// Seconds the engine waits after SIGTERM on stop (default 1).
    pub stop_timeout: i64,
}

impl ContainerSpec {
    /// A spec running `cmd` in the test image.
    pub fn new<I, S>(cmd: I) -> ContainerSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ContainerSpec {
            image: TEST_IMAGE.to_string(),
            cmd: cmd.into_iter().map(Into::into).collect(),
            name: unique_name("shoal-test"),
            init: true,
            ports: Vec::new(),
            env: Vec::new(),
            labels: HashMap::new(),
            user: None,
            stop_timeout: 1,
        }
    }

    /// A spec running `sh -c SCRIPT`.
    pub fn shell(script: &str) -> ContainerSpec {
        ContainerSpec::new(["sh", "-c", script])
    }

    /// Publish container port `container` on host port `host` (TCP).
    pub fn publish(mut self, container: u16, host: u16) -> ContainerSpec {
        self.ports.push((container, host));
        self
    }

    /// Set the container name.
    pub fn name(mut self, name: impl Into<String>) -> ContainerSpec {
        self.name = name.into();
        self
    }

    fn body(&self) -> ContainerCreateBody {
        let mut labels = self.labels.clone();
        labels.insert(TEST_LABEL.to_string(), "1".to_string());
        let mut bindings = HashMap::new();
        let mut exposed = Vec::new();
        for (container, host) in &self.ports {
            let key = format!("{container}/tcp");
            exposed.push(key.clone());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(host.to_string()),
                }]),
            );
        }
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(self.cmd.clone()),
            env: (!self.env.is_empty()).then(|| self.env.clone()),
            labels: Some(labels),
            user: self.user.clone(),
            stop_timeout: Some(self.stop_timeout),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                init: Some(self.init),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container created by a test. Removed (forced) on drop if [`TestContainer::remove`]
/// was not called.
#[derive(Debug)]
pub struct TestContainer {
    /// The engine it runs on.
    pub docker: Docker,
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
    docker_host: String,
    removed: bool,
}

impl TestContainer {
    /// Create and start a container from `spec` on `engine`.
    pub async fn run(engine: &Engine, spec: &ContainerSpec) -> Result<TestContainer> {
        let docker = &engine.docker;
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = docker
            .create_container(Some(opts), spec.body())
            .await
            .with_context(|| format!("creating container {}", spec.name))?;
        let mut c = TestContainer {
            docker: docker.clone(),
            id: created.id,
            name: spec.name.clone(),
            docker_host: engine.docker_host.clone(),
            removed: false,
        };
        if let Err(e) = docker.start_container(&c.id, None).await {
            let _ = c.remove_now().await;
            return Err(e).with_context(|| format!("starting container {}", spec.name));
        }
        Ok(c)
    }

    /// Wait for the container to exit; its exit code.
    pub async fn wait(&self, timeout: Duration) -> Result<i64> {
        let opts = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut stream = self.docker.wait_container(&self.id, Some(opts));
        let next = tokio::time::timeout(timeout, stream.next())
            .await
            .with_context(|| format!("container {} still running after {timeout:?}", self.name))?;
        match next {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e).context("waiting for the container"),
            None => bail!("wait stream of {} ended without a status", self.name),
        }
    }

    /// Everything the container wrote so far: (stdout, stderr).
    pub async fn logs(&self) -> Result<(String, String)> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .build();
        let mut stream = self.docker.logs(&self.id, Some(opts));
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(item) = stream.next().await {
            match item.context("reading logs")? {
                bollard::container::LogOutput::StdErr { message } => {
                    err.push_str(&String::from_utf8_lossy(&message))
                }
                other => out.push_str(&String::from_utf8_lossy(&other.into_bytes())),
            }
        }
        Ok((out, err))
    }

    /// Stop (SIGTERM, then SIGKILL after `timeout_s` seconds).
    pub async fn stop(&self, timeout_s: i32) -> Result<()> {
        let opts = StopContainerOptionsBuilder::default().t(timeout_s).build();
        self.docker
            .stop_container(&self.id, Some(opts))
            .await
            .with_context(|| format!("stopping {}", self.name))
    }

    async fn remove_now(&mut self) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(&self.id, Some(opts)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.removed = true;
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("removing {}", self.name)),
        }
    }

    /// Remove the container (forced).
    pub async fn remove(mut self) -> Result<()> {
        self.remove_now().await
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let host = self.docker_host.clone();
        let id = self.id.clone();
        // A fresh runtime on its own thread: drop may run inside or outside a runtime.
        let res = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let docker = connect(&host).await?;
                let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                docker.remove_container(&id, Some(opts)).await?;
                Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = res {
            eprintln!("removing test container {}: {e:#}", self.name);
        }
    }
}

/// Plain HTTP/1.0 GET of `path` from `addr`, retried until `timeout` (servers in fresh
/// containers take a moment). Returns the body of the first 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), http_get_once(addr, path)).await;
        let err = match attempt {
            Ok(Ok(body)) => return Ok(body),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("timed out"),
        };
        if Instant::now() >= deadline {
            return Err(err.context(format!("GET http://{addr}{path} (tried for {timeout:?})")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_get_once(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer: {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("HTTP status {status:?}");
    }
    Ok(body.to_string())
}

/// Polls `check` every 50 ms until it is true; panics with `what` after
/// `secs` seconds.
#[allow(clippy::panic)]
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// Force-removes every container of a Shoal cluster (label
/// `shoal.dev/cluster`) on the main engine when dropped, pass or fail.
#[derive(Debug, Default)]
pub struct RemoveClusterOnDrop(pub Option<String>);

impl Drop for RemoveClusterOnDrop {
    fn drop(&mut self) {
        let Some(cluster) = &self.0 else { return };
        let host = main_docker_host();
        let filter = format!("label=shoal.dev/cluster={cluster}");
        if let Ok(out) = Command::new("docker")
            .args(["-H", &host, "ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids = String::from_utf8_lossy(&out.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["-H", &host, "rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}
