//! Shared harness of the agent's integration tests: an in-process agent
//! (the library's reconciler, as `shoal agent` runs it) against a real
//! engine, with its own cluster id and namespace, cleaned up on drop.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shoal_agent::docker::DockerEngine;
use shoal_agent::engine::{ContainerEngine, ContainerInfo, RunState};
use shoal_agent::labels::{CLUSTER, network_name};
use shoal_agent::{
    AgentConfig, AssignedTask, Assignments, CancellationToken, Reconciler, RestartSettings,
    StatusUpdate,
};
use shoal_crds::{ContainerTemplate, DesiredState, DurationValue};
use tokio::sync::{mpsc, watch};

pub use shoal_tests::TEST_IMAGE;

/// A unique DNS-label-safe name: `PREFIX-PID-N`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The main test engine's address (provisioned if needed).
pub async fn main_host() -> String {
    let e = shoal_tests::Engine::main().await.expect("main test engine");
    e.docker_host
}

/// A template running `sh -c SCRIPT` with init and a 1 s grace period.
pub fn shell(script: &str) -> ContainerTemplate {
    ContainerTemplate {
        image: TEST_IMAGE.into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        init: Some(true),
        stop_grace_period: Some(DurationValue::new("1s")),
        ..Default::default()
    }
}

/// A template that sleeps forever.
pub fn sleeper() -> ContainerTemplate {
    shell("sleep 100000")
}

/// A task `SERVICE-SLOT` in `namespace`.
pub fn task(
    namespace: &str,
    service: &str,
    slot: i32,
    template: ContainerTemplate,
    restart: RestartSettings,
) -> AssignedTask {
    let name = format!("{service}-{slot}");
    AssignedTask {
        uid: shoal_agent::labels::derived_uid(namespace, &name),
        namespace: namespace.into(),
        name,
        service: service.into(),
        slot: Some(slot),
        template_hash: "h1".into(),
        template,
        restart,
        desired: DesiredState::Running,
        fence: false,
        recorded: Default::default(),
    }
}

/// Removes a cluster's containers and a namespace's network when dropped.
#[derive(Debug)]
pub struct Cleanup {
    pub docker_host: String,
    pub cluster: String,
    pub namespace: String,
}

impl Cleanup {
    /// A unique cluster id and namespace on the main test engine, whose
    /// containers and network go when this is dropped.
    pub async fn fresh() -> Cleanup {
        Cleanup {
            docker_host: main_host().await,
            cluster: unique("c"),
            namespace: unique("ns"),
        }
    }

    /// (engine address, cluster id, namespace).
    pub fn names(&self) -> (String, String, String) {
        (
            self.docker_host.clone(),
            self.cluster.clone(),
            self.namespace.clone(),
        )
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let host = self.docker_host.clone();
        let cluster = self.cluster.clone();
        let net = network_name(&self.namespace);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(e) = DockerEngine::connect(Some(&host)).await else {
                    return;
                };
                if let Ok(list) = e.list(&[(CLUSTER.to_string(), cluster)]).await {
                    for c in list {
                        let _ = e.remove(&c.id).await;
                    }
                }
                let _ = e.client().remove_network(&net).await;
            });
        })
        .join();
    }
}

/// An agent running in this process.
pub struct TestAgent {
    pub engine: Arc<DockerEngine>,
    pub cluster: String,
    pub tx: watch::Sender<Option<Assignments>>,
    status: mpsc::UnboundedReceiver<StatusUpdate>,
    pub seen: Vec<StatusUpdate>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl TestAgent {
    pub async fn start(docker_host: &str, cluster: &str, tasks: Vec<AssignedTask>) -> TestAgent {
        Self::start_with(docker_host, AgentConfig::new(cluster), tasks).await
    }

    pub async fn start_with(
        docker_host: &str,
        config: AgentConfig,
        tasks: Vec<AssignedTask>,
    ) -> TestAgent {
        let engine = Arc::new(
            DockerEngine::connect(Some(docker_host))
                .await
                .expect("connect"),
        );
        let cluster = config.cluster_id.clone();
        let (tx, rx) = watch::channel(Some(Arc::new(tasks)));
        let (stx, srx) = mpsc::unbounded_channel();
        let r = Reconciler::new(engine.clone(), config, stx);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(r.run(rx, shutdown.clone()));
        TestAgent {
            engine,
            cluster,
            tx,
            status: srx,
            seen: Vec::new(),
            shutdown,
            handle,
        }
    }

    fn drain(&mut self) {
        while let Ok(u) = self.status.try_recv() {
            self.seen.push(u);
        }
    }

    /// Waits for a status update matching `pred` (also among those seen).
    pub async fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&StatusUpdate) -> bool,
    ) -> StatusUpdate {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(u) = self.seen.iter().find(|u| pred(u)) {
                return u.clone();
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; seen: {:#?}", self.seen);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a task to be Rejected; its message.
    pub async fn rejection(&mut self, timeout: Duration) -> String {
        let u = self
            .wait_status("Rejected", timeout, |u| {
                u.status.phase == Some(shoal_crds::TaskPhase::Rejected)
            })
            .await;
        u.status.message.unwrap_or_default()
    }

    /// The latest status of task `name`.
    pub fn latest(&mut self, name: &str) -> Option<StatusUpdate> {
        self.drain();
        self.seen.iter().rev().find(|u| u.name == name).cloned()
    }

    /// Containers of this cluster.
    pub async fn containers(&self) -> Vec<ContainerInfo> {
        cluster_containers(&self.engine, &self.cluster).await
    }

    /// Waits until exactly `n` containers of the cluster run.
    pub async fn wait_running(&self, n: usize, timeout: Duration) -> Vec<ContainerInfo> {
        wait_running(&self.engine, &self.cluster, n, timeout).await
    }

    /// Graceful stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }

    /// Abrupt end, as if the process were killed: no cleanup code runs.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

pub async fn cluster_containers(engine: &DockerEngine, cluster: &str) -> Vec<ContainerInfo> {
    let list = engine
        .list(&[(CLUSTER.to_string(), cluster.to_string())])
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    for c in list {
        if let Ok(i) = engine.inspect(&c.id).await {
            out.push(i);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub async fn wait_running(
    engine: &DockerEngine,
    cluster: &str,
    n: usize,
    timeout: Duration,
) -> Vec<ContainerInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let cs = cluster_containers(engine, cluster).await;
        let running = cs.iter().filter(|c| c.state == RunState::Running).count();
        if running == n && cs.len() == n {
            return cs;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {n} running containers; have {cs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `f` holds, polling.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
