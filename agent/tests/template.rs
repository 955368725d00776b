//! Every part of the container template takes effect, checked from inside
//! the container and from outside (published port, DNS between replicas);
//! health checks, OOM kills, refused templates and missing images.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shoal_agent::engine::{ContainerEngine, RunState};
use shoal_agent::{AgentConfig, RestartSettings};
use shoal_crds::{
    ByteQuantity, Capabilities, CpuQuantity, DurationValue, EnvVar, HealthCheck, HealthState,
    ImagePullPolicy, Mount, MountType, PortMapping, ResourceLimits, ResourceReservations,
    Resources, RestartCondition, TaskPhase,
};

const T: Duration = Duration::from_secs(30);

async fn logs_until(agent: &TestAgent, id: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let l = agent.engine.logs(id, 200).await.unwrap_or_default();
        if f(&l) {
            return l;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what} in the logs:\n{l}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_template_takes_effect_inside_and_outside_the_container() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let port = 20000 + (std::process::id() % 20000) as i32;
    let script = r#"echo "uid=$(id -u)"
echo "mem=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
echo "swap=$(cat /sys/fs/cgroup/memory.swap.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes)"
if touch /rootfs-probe 2>/dev/null; then echo rootfs=rw; else echo rootfs=ro; fi
echo "env=$GREETING"
echo "pwd=$(pwd)"
echo "$GREETING" > /scratch/index.html
echo ready
exec httpd -f -p 8080 -h /scratch"#;
    let mut t = shell(script);
    t.user = Some("65534".into());
    t.read_only_root_filesystem = Some(true);
    t.env = Some(vec![EnvVar {
        name: "GREETING".into(),
        value: Some("hello-shoal".into()),
    }]);
    // Not the tmpfs: a working dir on a tmpfs makes the engine mount it 0755.
    t.working_dir = Some("/www".into());
    t.mounts = Some(vec![Mount {
        kind: MountType::Tmpfs,
        source: None,
        target: "/scratch".into(),
        read_only: None,
        size: Some(ByteQuantity::new("1Mi")),
    }]);
    t.ports = Some(vec![PortMapping {
        container_port: 8080,
        host_port: Some(port),
        protocol: None,
        host_ip: Some("127.0.0.1".into()),
    }]);
    t.resources = Some(Resources {
        limits: Some(ResourceLimits {
            cpu: Some(CpuQuantity::new("500m")),
            memory: Some(ByteQuantity::new("64Mi")),
            pids: Some(64),
        }),
        reservations: Some(ResourceReservations {
            cpu: None,
            memory: Some(ByteQuantity::new("32Mi")),
        }),
    });
    t.capabilities = Some(Capabilities {
        add: Some(vec!["NET_ADMIN".into()]),
        drop: Some(vec!["MKNOD".into()]),
    });
    t.stop_signal = Some("SIGINT".into());
    t.stop_grace_period = Some(DurationValue::new("1500ms"));
    t.labels = Some(BTreeMap::from([("app".to_string(), "web".to_string())]));
    let agent = TestAgent::start(
        &host,
        &cluster,
        vec![task(&ns, "web", 0, t, RestartSettings::default())],
    )
    .await;
    let c = agent.wait_running(1, T).await.remove(0);
    let logs = logs_until(&agent, &c.id, "ready", |l| l.contains("ready")).await;
    assert!(logs.contains("uid=65534"), "user: {logs}");
    assert!(
        logs.contains(&format!("mem={}", 64 << 20)),
        "memory limit in the cgroup: {logs}"
    );
    assert!(logs.contains("rootfs=ro"), "read-only rootfs: {logs}");
    assert!(logs.contains("env=hello-shoal"), "env: {logs}");
    assert!(logs.contains("pwd=/www"), "working dir: {logs}");
    // The published port answers.
    let body = match shoal_tests::http_get(
        SocketAddr::from(([127, 0, 0, 1], port as u16)),
        "/",
        Duration::from_secs(5),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => panic!(
            "{e:#}\nlogs: {}",
            agent.engine.logs(&c.id, 100).await.unwrap_or_default()
        ),
    };
    assert_eq!(body.trim(), "hello-shoal");
    // What the engine was told.
    let i = agent
        .engine
        .client()
        .inspect_container(&c.id, None)
        .await
        .unwrap();
    let h = i.host_config.unwrap();
    assert_eq!(h.memory, Some(64 << 20));
    assert_eq!(h.memory_swap, Some(64 << 20), "no swap escape");
    assert_eq!(h.memory_reservation, Some(32 << 20));
    assert_eq!(h.nano_cpus, Some(500_000_000));
    assert_eq!(h.pids_limit, Some(64));
    assert_eq!(h.init, Some(true));
    assert_eq!(h.cap_add, Some(vec!["NET_ADMIN".to_string()]));
    assert_eq!(h.cap_drop, Some(vec!["MKNOD".to_string()]));
    let cfg = i.config.unwrap();
    assert_eq!(cfg.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(cfg.stop_timeout, Some(2), "whole seconds, rounded up");
    assert_eq!(cfg.labels.unwrap()["app"], "web");
    agent.stop().await;
}

#[tokio::test]
async fn replicas_resolve_each_other_by_service_name() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let t = shell("while true; do nslookup peer 2>&1; sleep 0.5; done");
    let tasks = vec![
        task(&ns, "peer", 0, t.clone(), RestartSettings::default()),
        task(&ns, "peer", 1, t, RestartSettings::default()),
    ];
    let agent = TestAgent::start(&host, &cluster, tasks).await;
    let cs = agent.wait_running(2, T).await;
    let net = shoal_agent::labels::network_name(&ns);
    let mut ips = Vec::new();
    for c in &cs {
        let i = agent
            .engine
            .client()
            .inspect_container(&c.id, None)
            .await
            .unwrap();
        let ip = i.network_settings.unwrap().networks.unwrap()[&net]
            .ip_address
            .clone()
            .unwrap();
        assert!(!ip.is_empty());
        ips.push(ip);
    }
    for c in &cs {
        logs_until(&agent, &c.id, "both replicas' addresses", |l| {
            ips.iter().all(|ip| l.contains(ip.as_str()))
        })
        .await;
    }
    agent.stop().await;
}

#[tokio::test]
async fn an_unhealthy_container_is_restarted() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let mut t = sleeper();
    t.healthcheck = Some(HealthCheck {
        command: vec!["CMD-SHELL".into(), "test -f /tmp/healthy".into()],
        interval: Some(DurationValue::new("300ms")),
        timeout: Some(DurationValue::new("1s")),
        retries: Some(2),
        start_period: None,
    });
    let mut agent = TestAgent::start(
        &host,
        &cluster,
        vec![task(&ns, "sick", 0, t, RestartSettings::default())],
    )
    .await;
    let c = agent.wait_running(1, T).await.remove(0);
    let u = agent
        .wait_status("unhealthy reported", T, |u| {
            u.status.health == Some(HealthState::Unhealthy)
        })
        .await;
    assert_eq!(u.status.reason.as_deref(), Some("Unhealthy"));
    agent
        .wait_status("restarted", T, |u| {
            u.status.restart_count.unwrap_or(0) >= 1
                && u.status.phase == Some(TaskPhase::Running)
                && u.status.health == Some(HealthState::Starting)
        })
        .await;
    let i = agent.engine.inspect(&c.id).await.unwrap();
    assert!(i.started_at > c.started_at, "restarted in place");
    agent.stop().await;
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_such() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    // The pause lets containerd watch the cgroup first: it misses an OOM kill
    // within milliseconds of the start (the planner's message covers that).
    let mut t = shell("sleep 1; exec tail /dev/zero");
    t.init = Some(false);
    t.resources = Some(Resources {
        limits: Some(ResourceLimits {
            cpu: None,
            memory: Some(ByteQuantity::new("8Mi")),
            pids: None,
        }),
        reservations: None,
    });
    let policy = RestartSettings {
        condition: RestartCondition::Never,
        ..Default::default()
    };
    let mut agent = TestAgent::start(&host, &cluster, vec![task(&ns, "hog", 0, t, policy)]).await;
    // The engine may report the exit before the OOM kill that caused it: the
    // first Failed status can say `Error` and a refined one `OOMKilled`.
    let u = agent
        .wait_status("OOM kill", T, |u| {
            u.status.phase == Some(TaskPhase::Failed) && u.status.oom_killed == Some(true)
        })
        .await;
    assert_eq!(u.status.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(u.status.exit_code, Some(137));
    agent.stop().await;
}

#[tokio::test]
async fn a_template_the_engine_refuses_is_rejected_with_its_message() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let mut t = sleeper();
    t.mounts = Some(vec![Mount {
        kind: MountType::Bind,
        source: Some("/nonexistent/shoal-test-path".into()),
        target: "/data".into(),
        read_only: None,
        size: None,
    }]);
    let mut agent = TestAgent::start(
        &host,
        &cluster,
        vec![task(&ns, "bad", 0, t, RestartSettings::default())],
    )
    .await;
    let m = agent.rejection(T).await;
    assert!(
        m.contains("/nonexistent/shoal-test-path"),
        "engine's message: {m}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        agent.latest("bad-0").unwrap().status.phase,
        Some(TaskPhase::Rejected),
        "stays rejected"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_missing_image_leaves_the_task_pending_without_a_hot_loop() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let mut t = sleeper();
    t.image = "shoal-test/missing:1".into();
    t.image_pull_policy = Some(ImagePullPolicy::IfNotPresent);
    let mut config = AgentConfig::new(&cluster);
    config.pull_timeout = Duration::from_secs(5);
    let mut agent = TestAgent::start_with(
        &host,
        config,
        vec![task(&ns, "ghost", 0, t, RestartSettings::default())],
    )
    .await;
    let u = agent
        .wait_status("ImageNotFound", T, |u| {
            u.status.reason.as_deref() == Some("ImageNotFound")
        })
        .await;
    assert_eq!(u.status.phase, Some(TaskPhase::Pending));
    assert!(u.status.message.unwrap().contains("shoal-test/missing:1"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent.containers().await.is_empty(),
        "no container without the image"
    );
    let l = agent.latest("ghost-0").unwrap();
    assert_eq!(l.status.phase, Some(TaskPhase::Pending));
    agent.stop().await;
    let _ = RunState::Running;
}
