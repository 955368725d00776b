//! The agent against the real test engine: replicas, self-healing, restart
//! conditions, attempts, adoption after an agent restart, and what it must
//! never touch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use shoal_agent::RestartSettings;
use shoal_agent::engine::{ContainerEngine, RunState};
use shoal_agent::labels::{CLUSTER, TASK_UID};
use shoal_crds::{RestartCondition, TaskPhase};
use shoal_tests::{ContainerSpec, Engine};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn replicas_run_and_a_killed_one_runs_again_in_place() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let tasks: Vec<_> = (0..4)
        .map(|i| task(&ns, "web", i, sleeper(), RestartSettings::default()))
        .collect();
    let mut agent = TestAgent::start(&host, &cluster, tasks).await;
    let before = agent.wait_running(4, T).await;
    for c in &before {
        assert_eq!(
            c.restart_policy.as_deref(),
            Some("no"),
            "the engine never restarts Shoal's containers"
        );
        assert_eq!(c.labels[CLUSTER], cluster);
        assert!(
            c.name.starts_with(&format!("shoal.{ns}.web.")),
            "{}",
            c.name
        );
    }
    let victim = before[1].clone();
    agent.engine.kill(&victim.id, "SIGKILL").await.unwrap();
    common::eventually("the killed container runs again", T, || {
        let engine = agent.engine.clone();
        let victim = victim.clone();
        async move {
            let i = engine.inspect(&victim.id).await.unwrap();
            i.state == RunState::Running && i.started_at > victim.started_at
        }
    })
    .await;
    let after = agent.wait_running(4, T).await;
    let ids = |cs: &[shoal_agent::engine::ContainerInfo]| {
        cs.iter().map(|c| c.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "restarted in place: same containers"
    );
    let uid = victim.labels[TASK_UID].clone();
    let u = agent
        .wait_status("restart counted", T, |u| {
            u.uid == uid
                && u.status.restart_count == Some(1)
                && u.status.phase == Some(TaskPhase::Running)
        })
        .await;
    assert_eq!(u.status.exit_code, Some(137));
    assert_eq!(u.status.container_id.as_deref(), Some(victim.id.as_str()));
    agent.stop().await;
}

#[tokio::test]
async fn restart_conditions_follow_the_exit_code() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let policy = |condition| RestartSettings {
        condition,
        ..Default::default()
    };
    // Exit after a moment so the start is observed first.
    let exit = |code: i32| shell(&format!("sleep 0.3; exit {code}"));
    let tasks = vec![
        task(
            &ns,
            "always-ok",
            0,
            exit(0),
            policy(RestartCondition::Always),
        ),
        task(
            &ns,
            "onfail-ok",
            0,
            exit(0),
            policy(RestartCondition::OnFailure),
        ),
        task(
            &ns,
            "onfail-bad",
            0,
            exit(3),
            policy(RestartCondition::OnFailure),
        ),
        task(
            &ns,
            "never-bad",
            0,
            exit(3),
            policy(RestartCondition::Never),
        ),
        task(&ns, "never-ok", 0, exit(0), policy(RestartCondition::Never)),
    ];
    let mut agent = TestAgent::start(&host, &cluster, tasks).await;
    let restarted = |name: &'static str| {
        move |u: &shoal_agent::StatusUpdate| {
            u.name == name && u.status.restart_count.unwrap_or(0) >= 2
        }
    };
    agent
        .wait_status("Always restarts after exit 0", T, restarted("always-ok-0"))
        .await;
    agent
        .wait_status(
            "OnFailure restarts after exit 3",
            T,
            restarted("onfail-bad-0"),
        )
        .await;
    let s = agent
        .wait_status("OnFailure exit 0 succeeds", T, |u| {
            u.name == "onfail-ok-0" && u.status.phase == Some(TaskPhase::Succeeded)
        })
        .await;
    assert_eq!(s.status.exit_code, Some(0));
    let f = agent
        .wait_status("Never exit 3 fails", T, |u| {
            u.name == "never-bad-0" && u.status.phase == Some(TaskPhase::Failed)
        })
        .await;
    assert_eq!(f.status.reason.as_deref(), Some("Error"));
    assert_eq!(f.status.exit_code, Some(3));
    agent
        .wait_status("Never exit 0 succeeds", T, |u| {
            u.name == "never-ok-0" && u.status.phase == Some(TaskPhase::Succeeded)
        })
        .await;
    // Terminal tasks are not restarted later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for name in ["onfail-ok-0", "never-bad-0", "never-ok-0"] {
        let l = agent.latest(name).unwrap();
        assert_eq!(l.status.restart_count, Some(0), "{name}: {l:?}");
        assert!(l.status.phase.unwrap().is_terminal(), "{name}: {l:?}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn max_attempts_used_up_fails_the_task_with_a_reason() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let policy = RestartSettings {
        condition: RestartCondition::OnFailure,
        max_attempts: 2,
        ..Default::default()
    };
    let t = task(&ns, "crash", 0, shell("exit 7"), policy);
    let mut agent = TestAgent::start(&host, &cluster, vec![t]).await;
    let f = agent
        .wait_status("Failed", T, |u| u.status.phase == Some(TaskPhase::Failed))
        .await;
    assert_eq!(f.status.reason.as_deref(), Some("MaxAttemptsReached"));
    assert_eq!(f.status.restart_count, Some(2));
    assert_eq!(f.status.exit_code, Some(7));
    assert!(
        f.status.message.as_deref().unwrap().contains("exit code 7"),
        "{f:?}"
    );
    // It stays down: the container is exited and not started again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cs = agent.containers().await;
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].state, RunState::Exited);
    agent.stop().await;
}

#[tokio::test]
async fn a_restarted_agent_adopts_running_containers_without_restarting_them() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let tasks: Vec<_> = (0..3)
        .map(|i| task(&ns, "web", i, sleeper(), RestartSettings::default()))
        .collect();
    let agent = TestAgent::start(&host, &cluster, tasks.clone()).await;
    let before = agent.wait_running(3, T).await;
    agent.kill().await;
    let mut agent = TestAgent::start(&host, &cluster, tasks).await;
    for t in 0..3 {
        let name = format!("web-{t}");
        agent
            .wait_status("Running", T, |u| {
                u.name == name && u.status.phase == Some(TaskPhase::Running)
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = agent.wait_running(3, T).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.id, a.id, "same container");
        assert_eq!(b.started_at, a.started_at, "not restarted: {}", a.name);
    }
    agent.stop().await;
}

#[tokio::test]
async fn other_clusters_and_unlabelled_containers_are_untouched() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let engine = Engine::connect(&host).await.unwrap();
    let mut foreign = ContainerSpec::new(["sleep", "100000"]);
    foreign.labels = HashMap::from([
        (CLUSTER.to_string(), unique("other")),
        (TASK_UID.to_string(), "x".into()),
    ]);
    let foreign = engine.run(&foreign).await.unwrap();
    let plain = engine
        .run(&ContainerSpec::new(["sleep", "100000"]))
        .await
        .unwrap();
    // A container of this cluster whose task is not assigned: removed.
    let mut orphan = ContainerSpec::new(["sleep", "100000"]);
    orphan.labels = HashMap::from([
        (CLUSTER.to_string(), cluster.clone()),
        (TASK_UID.to_string(), "gone".into()),
    ]);
    let orphan = engine.run(&orphan).await.unwrap();

    let t = task(&ns, "web", 0, sleeper(), RestartSettings::default());
    let uid = t.uid.clone();
    let agent = TestAgent::start(&host, &cluster, vec![t]).await;
    common::eventually("the orphan removed and the task running", T, || {
        let engine = agent.engine.clone();
        let (cluster, uid) = (cluster.clone(), uid.clone());
        async move {
            let cs = cluster_containers(&engine, &cluster).await;
            cs.len() == 1
                && cs[0].task_uid() == Some(uid.as_str())
                && cs[0].state == RunState::Running
        }
    })
    .await;
    assert!(
        agent.engine.inspect(&orphan.id).await.is_err(),
        "orphan removed"
    );
    for c in [&foreign, &plain] {
        let i = agent.engine.inspect(&c.id).await.unwrap();
        assert_eq!(i.state, RunState::Running, "{} untouched", c.name);
    }
    agent.stop().await;
    foreign.remove().await.unwrap();
    plain.remove().await.unwrap();
}
