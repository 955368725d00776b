//! Median die→start time of a killed container: Shoal's agent vs Docker's own `--restart always`.
//!
//! Runs on the private test engine. Shoal side: the host agent (the library's reconciler,
//! as `shoal agent` runs it) keeps 20 different replicas running (test image, engine init,
//! 1 s grace); the benchmark checks that every one has engine restart policy `no`, then
//! kills the main process of each once (`kill -KILL PID` from the host, as a crash would;
//! `docker kill` counts as a manual stop, which Docker's own policy does not restart) and waits for it to run again. Docker side: 20 containers
//! with `--restart always`, each killed once the same way. Both sides are measured the
//! same way: from the container's `die` event to its next `start` event, both engine
//! timestamps from the engine's event stream. Docker's containers sit on a user-defined
//! bridge with an alias, like Shoal's, so both pay the same network set-up. Kills are one
//! at a time, alternating between the two sides so load changes hit both alike. Prints
//! `docker_restart_p50_ms` and, last, `self_heal_p50_ms`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use shoal_agent::docker::DockerEngine;
use shoal_agent::labels::CLUSTER;
use shoal_agent::{AgentConfig, AssignedTask, CancellationToken, Reconciler, RestartSettings};
use shoal_crds::{ContainerTemplate, DesiredState, DurationValue};
use shoal_tests::{Engine, TEST_IMAGE};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

const N: usize = 20;
const BENCH_LABEL: &str = "shoal.dev/bench";

fn sleeper() -> ContainerTemplate {
    ContainerTemplate {
        image: TEST_IMAGE.into(),
        command: Some(vec!["sleep".into(), "100000".into()]),
        init: Some(true),
        stop_grace_period: Some(DurationValue::new("1s")),
        ..Default::default()
    }
}

fn median(mut v: Vec<i64>) -> f64 {
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    } else {
        v[n / 2] as f64
    }
}

/// (container id, action, engine time in ns) of every die/start event with `label`.
fn subscribe(
    docker: &bollard::Docker,
    label: &str,
) -> mpsc::UnboundedReceiver<(String, String, i64)> {
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["die".to_string(), "start".to_string()]),
        ("label", vec![label.to_string()]),
    ]);
    let opts = EventsOptionsBuilder::default().filters(&filters).build();
    let mut stream = docker.events(Some(opts));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        async move {
            while let Some(Ok(ev)) = stream.next().await {
                let id = ev.actor.and_then(|a| a.id).unwrap_or_default();
                let t = ev.time_nano.unwrap_or(0);
                if tx.send((id, ev.action.unwrap_or_default(), t)).is_err() {
                    break;
                }
            }
        }
        .instrument(tracing::info_span!("bench_events")),
    );
    rx
}

/// Kill each container once and return die→start intervals in ns.
async fn kill_each(
    docker: &bollard::Docker,
    ids: &[String],
    events: &mut mpsc::UnboundedReceiver<(String, String, i64)>,
) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for id in ids {
        while events.try_recv().is_ok() {}
        // Kill the container's main process from outside, as a crash would:
        // `docker kill` counts as a manual stop, which Docker's own restart
        // policy then honours by not restarting.
        let pid = docker
            .inspect_container(id, None)
            .await?
            .state
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .with_context(|| format!("{id} has no process"))?;
        let st = tokio::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .await?;
        ensure!(st.success(), "kill -KILL {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut died = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (cid, action, t) = tokio::time::timeout(left, events.recv())
                .await
                .with_context(|| format!("{id} did not run again within 30 s"))?
                .context("event stream ended")?;
            if &cid != id {
                continue;
            }
            match (action.as_str(), died) {
                ("die", None) => died = Some(t),
                ("start", Some(d)) => {
                    out.push(t - d);
                    break;
                }
                _ => {}
            }
        }
        // Let the engine settle between kills.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(out)
}

async fn remove_labelled(docker: &bollard::Docker, label: &str) -> Result<()> {
    let filters = HashMap::from([("label", vec![label.to_string()])]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for c in docker.list_containers(Some(opts)).await? {
        if let Some(id) = c.id {
            let opts = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(opts)).await;
        }
    }
    Ok(())
}

/// Starts the agent with N replicas; returns their ids once all run, all checked for
/// engine restart policy `no`.
async fn shoal_containers(
    engine: &Engine,
    cluster: &str,
    shutdown: &CancellationToken,
) -> Result<Vec<String>> {
    let label = format!("{CLUSTER}={cluster}");
    let tasks: Vec<AssignedTask> = (0..N)
        .map(|i| {
            let name = format!("heal-{i}");
            AssignedTask {
                uid: shoal_agent::labels::derived_uid(cluster, &name),
                namespace: "bench".into(),
                name,
                service: "heal".into(),
                slot: Some(i32::try_from(i).unwrap_or(0)),
                template_hash: "bench".into(),
                template: sleeper(),
                restart: RestartSettings::default(),
                desired: DesiredState::Running,
                fence: false,
                recorded: Default::default(),
            }
        })
        .collect();
    let docker_engine = Arc::new(DockerEngine::connect(Some(&engine.docker_host)).await?);
    let (tx, rx) = watch::channel(Some(Arc::new(tasks)));
    let (stx, mut srx) = mpsc::unbounded_channel();
    tokio::spawn(
        Reconciler::new(docker_engine, AgentConfig::new(cluster), stx)
            .run(rx, shutdown.clone())
            .instrument(tracing::info_span!("reconciler")),
    );
    // Keep the feeder and drain status updates for the whole run.
    tokio::spawn(
        async move {
            let _tx = tx;
            while srx.recv().await.is_some() {}
        }
        .instrument(tracing::info_span!("status_drain")),
    );
    let docker = &engine.docker;
    let filters = HashMap::from([("label", vec![label.clone()])]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let ids = loop {
        let opts = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let running: Vec<String> = docker
            .list_containers(Some(opts))
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        if running.len() == N {
            break running;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {N} Shoal containers running after 120 s",
                running.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in &ids {
        let i = docker.inspect_container(id, None).await?;
        let policy = i
            .host_config
            .and_then(|h| h.restart_policy)
            .and_then(|p| p.name);
        ensure!(
            policy == Some(RestartPolicyNameEnum::NO),
            "container {id} has engine restart policy {policy:?}, not `no`"
        );
    }
    eprintln!("shoal: {N} containers running, all with engine restart policy `no`");
    Ok(ids)
}

/// N containers with `--restart always` on a user-defined bridge with an alias, like
/// Shoal's (so both sides pay the same network set-up on start).
async fn docker_containers(engine: &Engine, value: &str, network: &str) -> Result<Vec<String>> {
    let req = bollard::models::NetworkCreateRequest {
        name: network.to_string(),
        driver: Some("bridge".into()),
        ..Default::default()
    };
    engine
        .docker
        .create_network(req)
        .await
        .context("creating the Docker side's network")?;
    let mut ids = Vec::new();
    for i in 0..N {
        let body = ContainerCreateBody {
            image: Some(TEST_IMAGE.into()),
            cmd: Some(vec!["sleep".into(), "100000".into()]),
            labels: Some(HashMap::from([
                (BENCH_LABEL.to_string(), value.to_string()),
                (shoal_tests::TEST_LABEL.to_string(), "1".to_string()),
            ])),
            stop_timeout: Some(1),
            host_config: Some(HostConfig {
                init: Some(true),
                network_mode: Some(network.to_string()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ALWAYS),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config: Some(bollard::models::NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.to_string(),
                    bollard::models::EndpointSettings {
                        aliases: Some(vec!["heal".into()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let name = format!("bench-docker-restart-{}-{i}", std::process::id());
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = engine.docker.create_container(Some(opts), body).await?.id;
        engine.docker.start_container(&id, None).await?;
        ids.push(id);
    }
    eprintln!("docker: {N} containers running with --restart always");
    Ok(ids)
}

async fn run(
    engine: &Engine,
    cluster: &str,
    value: &str,
    network: &str,
    shutdown: &CancellationToken,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let mut shoal_events = subscribe(&engine.docker, &format!("{CLUSTER}={cluster}"));
    let mut docker_events = subscribe(&engine.docker, &format!("{BENCH_LABEL}={value}"));
    let shoal_ids = shoal_containers(engine, cluster, shutdown).await?;
    let docker_ids = docker_containers(engine, value, network).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("killing each container once, alternating Shoal's and Docker's");
    let (mut shoal, mut docker) = (Vec::new(), Vec::new());
    for (s, d) in shoal_ids.iter().zip(&docker_ids) {
        shoal.extend(
            kill_each(&engine.docker, std::slice::from_ref(s), &mut shoal_events)
                .await
                .context("shoal side")?,
        );
        docker.extend(
            kill_each(&engine.docker, std::slice::from_ref(d), &mut docker_events)
                .await
                .context("docker side")?,
        );
    }
    Ok((shoal, docker))
}

#[tokio::main]
async fn main() -> Result<()> {
    let engine = Engine::main().await?;
    let cluster = format!("bench-heal-{}", std::process::id());
    let value = format!("self-heal-docker-{}", std::process::id());
    let network = format!("bench-heal-docker-{}", std::process::id());
    let shutdown = CancellationToken::new();
    let result = run(&engine, &cluster, &value, &network, &shutdown).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    remove_labelled(&engine.docker, &format!("{CLUSTER}={cluster}")).await?;
    remove_labelled(&engine.docker, &format!("{BENCH_LABEL}={value}")).await?;
    let _ = engine.docker.remove_network("shoal-bench").await;
    let _ = engine.docker.remove_network(&network).await;
    let (shoal, docker) = result?;
    let ms = |ns: f64| ns / 1e6;
    let (smin, smax) = (
        shoal.iter().min().copied().unwrap_or(0),
        shoal.iter().max().copied().unwrap_or(0),
    );
    let (dmin, dmax) = (
        docker.iter().min().copied().unwrap_or(0),
        docker.iter().max().copied().unwrap_or(0),
    );
    println!("self_heal_runs: {}", shoal.len());
    println!("self_heal_min_ms: {:.1}", ms(smin as f64));
    println!("self_heal_max_ms: {:.1}", ms(smax as f64));
    println!("docker_restart_min_ms: {:.1}", ms(dmin as f64));
    println!("docker_restart_max_ms: {:.1}", ms(dmax as f64));
    println!("docker_restart_p50_ms: {:.1}", ms(median(docker)));
    println!("self_heal_p50_ms: {:.1}", ms(median(shoal)));
    Ok(())
}
