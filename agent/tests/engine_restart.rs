//! The engine restarts under the agent (dockerd SIGKILLed and started again,
//! which kills the containers without live-restore): the agent reconnects,
//! converges without duplicates, and does not count those exits against the
//! tasks' attempts. Uses an engine of its own (`scripts/test-env host`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use shoal_agent::engine::{ContainerEngine, RunState};
use shoal_agent::{AgentConfig, RestartSettings};
use shoal_crds::{RestartCondition, TaskPhase};
use shoal_tests::Host;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn converges_after_dockerd_restarts_without_duplicates_or_counted_attempts() {
    let host = Host::start("ag-rs").await.expect("extra engine");
    let (cluster, ns) = (unique("c"), unique("ns"));
    // One attempt allowed: if the engine's kills counted, the tasks would fail.
    let policy = RestartSettings {
        condition: RestartCondition::Always,
        max_attempts: 1,
        ..Default::default()
    };
    let tasks: Vec<_> = (0..2)
        .map(|i| task(&ns, "web", i, sleeper(), policy.clone()))
        .collect();
    let mut config = AgentConfig::new(&cluster);
    config.max_reconnect_backoff = Duration::from_millis(500);
    let mut agent = TestAgent::start_with(&host.docker_host, config, tasks).await;
    let before = agent.wait_running(2, T).await;

    host.kill_engine().await.expect("kill dockerd");
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.restart().await.expect("start dockerd again");

    // The agent reconnects on its own; its engine client is the same.
    let after = agent.wait_running(2, T).await;
    let ids = |cs: &[shoal_agent::engine::ContainerInfo]| {
        cs.iter().map(|c| c.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "the same two containers, restarted in place, no duplicates"
    );
    for (b, a) in before.iter().zip(&after) {
        assert!(a.started_at > b.started_at, "{} was restarted", a.name);
    }
    // Stable: still exactly two, none Failed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cs = agent.containers().await;
    assert_eq!(cs.len(), 2, "{cs:#?}");
    assert!(cs.iter().all(|c| c.state == RunState::Running));
    for t in 0..2 {
        let l = agent.latest(&format!("web-{t}")).unwrap();
        assert_eq!(l.status.phase, Some(TaskPhase::Running), "{l:?}");
    }
    // The one allowed attempt is still there: a real kill is restarted.
    agent.engine.kill(&cs[0].id, "SIGKILL").await.unwrap();
    let victim = cs[0].clone();
    common::eventually("restart after a real kill", T, || {
        let engine = agent.engine.clone();
        let victim = victim.clone();
        async move {
            engine
                .inspect(&victim.id)
                .await
                .is_ok_and(|i| i.state == RunState::Running && i.started_at > victim.started_at)
        }
    })
    .await;
    agent.stop().await;
    host.stop().await.unwrap();
}
