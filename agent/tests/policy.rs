//! The local policy against the real engine: a task whose template the host
//! does not allow gets no container and ends Rejected, naming the field;
//! what the host allows runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use shoal_agent::policy::LocalPolicy;
use shoal_agent::{AgentConfig, ContainerEngine, RestartSettings};
use shoal_crds::{Mount, MountType, TaskPhase};

const T: Duration = Duration::from_secs(30);

fn bind(source: &str) -> Mount {
    Mount {
        kind: MountType::Bind,
        source: Some(source.into()),
        target: "/data".into(),
        read_only: Some(true),
        size: None,
    }
}

#[tokio::test]
async fn a_bind_mount_outside_the_allowed_paths_is_rejected_without_a_container() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    // The main test engine shares this machine's filesystem.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/hello"), "hello-from-the-host\n").unwrap();
    let allowed = dir.path().to_str().unwrap().to_string();

    let mut bad = shell("cat /data/hostname; sleep 100000");
    bad.mounts = Some(vec![bind("/etc")]);
    let mut good = shell("cat /data/hello; sleep 100000");
    good.mounts = Some(vec![bind(&format!("{allowed}/sub"))]);

    let mut config = AgentConfig::new(&cluster);
    // As `shoal agent --allow-bind DIR` builds it.
    config.policy = LocalPolicy::allowing([allowed.parse().unwrap()], []);
    let mut agent = TestAgent::start_with(
        &host,
        config,
        vec![
            task(&ns, "bad", 0, bad, RestartSettings::default()),
            task(&ns, "good", 0, good, RestartSettings::default()),
        ],
    )
    .await;

    let u = agent
        .wait_status("bad-0 Rejected", T, |u| {
            u.name == "bad-0" && u.status.phase == Some(TaskPhase::Rejected)
        })
        .await;
    assert_eq!(
        u.status.message.as_deref(),
        Some(
            "template.mounts[0].source: \"/etc\" is outside the paths this host allows for bind mounts (shoal agent --allow-bind)"
        )
    );
    assert_eq!(u.status.container_id, None);

    // The allowed one runs, and sees the host's file.
    let cs = agent.wait_running(1, T).await;
    assert!(cs[0].name.contains(".good."), "{}", cs[0].name);
    let deadline = Instant::now() + T;
    loop {
        let l = agent.engine.logs(&cs[0].id, 50).await.unwrap_or_default();
        if l.contains("hello-from-the-host") {
            break;
        }
        assert!(Instant::now() < deadline, "logs of good-0: {l}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Still no container for the refused task, and it stays Rejected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cs = agent.containers().await;
    assert_eq!(cs.len(), 1, "{cs:#?}");
    assert_eq!(
        agent.latest("bad-0").unwrap().status.phase,
        Some(TaskPhase::Rejected)
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_strict_agent_refuses_every_bind_mount() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let mut t = sleeper();
    t.mounts = Some(vec![bind("/srv/data/../../etc")]);
    let mut config = AgentConfig::new(&cluster);
    config.policy = LocalPolicy::strict();
    let mut agent = TestAgent::start_with(
        &host,
        config,
        vec![task(&ns, "sneaky", 0, t, RestartSettings::default())],
    )
    .await;
    let m = agent.rejection(T).await;
    assert!(
        m.starts_with("template.mounts[0].source: \"/srv/data/../../etc\" must not contain \"..\""),
        "{m}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(agent.containers().await.is_empty());
    agent.stop().await;
}
