//! Peak resident memory (VmHWM) of the host agent while it creates 50 containers and restarts 10 killed ones.
//!
//! Runs on the private test engine. The benchmark re-executes itself as the agent
//! (`agent-rss --agent FILE CLUSTER`): the same library code `shoal agent --assignments`
//! runs (file feeder, reconciler, Docker engine, a 2-worker runtime), in a process of its
//! own so its memory is its own. The parent writes 50 Tasks (test image, engine init, 1 s
//! grace) to a file, starts the agent, waits until all 50 containers run, kills the main
//! process of 10 of them from the host and waits until they run again, then reads the
//! agent's VmHWM from /proc. Prints `dockerd_rss_mib` (the engine's VmHWM, i.e. its peak
//! since it started, for scale) and, last, `agent_rss_mib`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use shoal_agent::assignments::feed_file;
use shoal_agent::docker::DockerEngine;
use shoal_agent::labels::CLUSTER;
use shoal_agent::{AgentConfig, CancellationToken, Reconciler};
use shoal_tests::{Engine, TEST_IMAGE};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

const N: usize = 50;
const KILLED: usize = 10;

/// The agent process: like `shoal agent --assignments FILE --cluster-id CLUSTER`.
fn agent_child(file: PathBuf, cluster: String) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let engine = DockerEngine::connect(std::env::var("DOCKER_HOST").ok().as_deref()).await?;
        let (tx, rx) = watch::channel(None);
        let feeder = feed_file(file, Duration::from_secs(2), tx, shutdown.child_token()).await?;
        let (stx, mut srx) = mpsc::unbounded_channel();
        let agent = tokio::spawn(
            Reconciler::new(Arc::new(engine), AgentConfig::new(cluster), stx)
                .run(rx, shutdown.child_token())
                .instrument(tracing::info_span!("reconciler")),
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                u = srx.recv() => if u.is_none() { break },
            }
        }
        shutdown.cancel();
        let _ = feeder.await;
        let _ = agent.await;
        Ok(())
    })
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM line")
}

fn tasks_yaml(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "---\napiVersion: shoal.dev/v1alpha1\nkind: Task\nmetadata: {{ name: rss-{i}, namespace: bench-rss }}\nspec:\n  service: rss\n  slot: {i}\n  templateHash: bench\n  template:\n    image: \"{TEST_IMAGE}\"\n    command: [sleep, \"100000\"]\n    init: true\n    stopGracePeriod: 1s\n"
        ));
    }
    out
}

async fn running(docker: &bollard::Docker, label: &str) -> Result<Vec<(String, i64)>> {
    let filters = HashMap::from([("label", vec![label.to_string()])]);
    let opts = ListContainersOptionsBuilder::default()
        .filters(&filters)
        .build();
    let mut out = Vec::new();
    for c in docker.list_containers(Some(opts)).await? {
        if let Some(id) = c.id {
            let pid = docker
                .inspect_container(&id, None)
                .await?
                .state
                .and_then(|s| s.pid)
                .unwrap_or(0);
            out.push((id, pid));
        }
    }
    Ok(out)
}

async fn wait_running(
    docker: &bollard::Docker,
    label: &str,
    n: usize,
    not: &[i64],
) -> Result<Vec<(String, i64)>> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = running(docker, label).await?;
        if r.len() == n && r.iter().all(|(_, pid)| *pid > 0 && !not.contains(pid)) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("{} of {n} containers running after 180 s", r.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dockerd_pid() -> Option<u32> {
    let dir = shoal_tests::state_dir().join("main").join("dockerd.pid");
    std::fs::read_to_string(dir).ok()?.trim().parse().ok()
}

async fn measure(engine: &Engine, dir: &Path) -> Result<(f64, Option<f64>)> {
    let cluster = format!("bench-rss-{}", std::process::id());
    let label = format!("{CLUSTER}={cluster}");
    let file = dir.join("tasks.yaml");
    std::fs::write(&file, tasks_yaml(N))?;
    let me = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(me)
        .arg("--agent")
        .arg(&file)
        .arg(&cluster)
        .env("DOCKER_HOST", &engine.docker_host)
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let pid = child.id().context("agent pid")?;
    let result = async {
        let t0 = Instant::now();
        let first = wait_running(&engine.docker, &label, N, &[]).await?;
        eprintln!(
            "agent: {N} containers running after {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let mut killed = Vec::new();
        for (_, p) in first.iter().take(KILLED) {
            let st = tokio::process::Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status()
                .await?;
            ensure!(st.success(), "kill -KILL {p}");
            killed.push(*p);
        }
        wait_running(&engine.docker, &label, N, &killed).await?;
        eprintln!("agent: {KILLED} killed containers running again");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let agent_kib = vm_hwm_kib(pid)?;
        let dockerd = dockerd_pid()
            .and_then(|p| vm_hwm_kib(p).ok())
            .map(|k| k as f64 / 1024.0);
        Ok((agent_kib as f64 / 1024.0, dockerd))
    }
    .await;
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let _ = child.kill().await;
    let filters = HashMap::from([("label", vec![label.clone()])]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for c in engine
        .docker
        .list_containers(Some(opts))
        .await
        .unwrap_or_default()
    {
        if let Some(id) = c.id {
            let opts = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = engine.docker.remove_container(&id, Some(opts)).await;
        }
    }
    let _ = engine.docker.remove_network("shoal-bench-rss").await;
    result
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--agent") {
        let (Some(file), Some(cluster)) = (args.get(2), args.get(3)) else {
            bail!("usage: agent-rss --agent FILE CLUSTER");
        };
        return agent_child(PathBuf::from(file), cluster.clone());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let engine = Engine::main().await?;
        let dir = std::env::temp_dir().join(format!("shoal-agent-rss-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let r = measure(&engine, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        let (agent, dockerd) = r?;
        match dockerd {
            Some(d) => println!("dockerd_rss_mib: {d:.1}"),
            None => println!("dockerd_rss_mib: unknown"),
        }
        println!("agent_rss_mib: {agent:.1}");
        Ok(())
    })
}
