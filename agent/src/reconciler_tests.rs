//! The reconciler against the in-memory engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_crds::{ContainerTemplate, DesiredState, TaskPhase};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::engine::RunState;
use crate::fake::FakeEngine;
use crate::labels::{CLUSTER, TASK_UID};
use crate::task::{AssignedTask, RestartSettings};

const IMG: &str = "img:1";

fn task(i: usize) -> AssignedTask {
    AssignedTask {
        uid: format!("uid-{i:04}"),
        namespace: "ns".into(),
        name: format!("web-{i}"),
        service: "web".into(),
        slot: Some(i as i32),
        template_hash: "h".into(),
        template: ContainerTemplate {
            image: IMG.into(),
            ..Default::default()
        },
        restart: RestartSettings::default(),
        desired: DesiredState::Running,
        fence: false,
        recorded: Default::default(),
    }
}

struct Harness {
    fake: FakeEngine,
    tx: watch::Sender<Option<Assignments>>,
    status: mpsc::UnboundedReceiver<StatusUpdate>,
    seen: Vec<StatusUpdate>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

fn start(fake: &FakeEngine, config: AgentConfig, set: Option<Vec<AssignedTask>>) -> Harness {
    let (tx, rx) = watch::channel(set.map(Arc::new));
    let (stx, srx) = mpsc::unbounded_channel();
    let r = Reconciler::new(Arc::new(fake.clone()), config, stx);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(r.run(rx, shutdown.clone()));
    Harness {
        fake: fake.clone(),
        tx,
        status: srx,
        seen: Vec::new(),
        shutdown,
        handle,
    }
}

impl Harness {
    async fn until(&mut self, what: &str, mut f: impl FnMut(&FakeEngine, &[StatusUpdate]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            while let Ok(u) = self.status.try_recv() {
                self.seen.push(u);
            }
            if f(&self.fake, &self.seen) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; statuses: {:#?}",
                self.seen.last()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap();
    }
}

fn running(fake: &FakeEngine) -> usize {
    fake.containers()
        .iter()
        .filter(|c| c.state == RunState::Running)
        .count()
}

#[tokio::test]
async fn creates_replicas_and_restarts_an_exited_one() {
    let fake = FakeEngine::new();
    fake.add_image(IMG);
    let tasks: Vec<_> = (0..5).map(task).collect();
    let mut h = start(&fake, AgentConfig::new("c1"), Some(tasks));
    h.until("5 running", |f, _| running(f) == 5).await;
    for c in fake.containers() {
        assert_eq!(c.labels[CLUSTER], "c1");
        assert_eq!(c.restart_policy.as_deref(), Some("no"));
        assert!(c.name.starts_with("shoal.ns.web."), "{}", c.name);
    }
    let victim = fake.containers()[0].clone();
    let starts = fake.calls("start");
    fake.exit(&victim.id, 137, false);
    h.until("restarted in place", |f, _| {
        f.containers()
            .iter()
            .any(|c| c.id == victim.id && c.state == RunState::Running)
            && f.calls("start") == starts + 1
    })
    .await;
    assert_eq!(
        fake.calls("create"),
        5,
        "restarted in place, not re-created"
    );
    let uid = victim.labels[TASK_UID].clone();
    h.until("status with a restart", |_, seen| {
        seen.iter().any(|u| {
            u.uid == uid
                && u.status.restart_count == Some(1)
                && u.status.phase == Some(TaskPhase::Running)
        })
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_started_container_is_inspected_once() {
    let fake = FakeEngine::new();
    fake.add_image(IMG);
    let tasks: Vec<_> = (0..5).map(task).collect();
    let mut h = start(&fake, AgentConfig::new("c1"), Some(tasks));
    h.until("5 reported running", |f, seen| {
        running(f) == 5
            && seen
                .iter()
                .filter(|u| u.status.phase == Some(TaskPhase::Running))
                .count()
                == 5
    })
    .await;
    // Let the create and start events of the last containers arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The end of each create+start inspects the container; its `create` and
    // `start` events add nothing to that and are not inspected again.
    assert_eq!(fake.calls("inspect"), 5);
    assert_eq!(fake.calls("image_present"), 0);
    h.stop().await;
}

#[tokio::test]
async fn missing_image_is_pending_with_a_bounded_number_of_pulls() {
    let fake = FakeEngine::new();
    let mut config = AgentConfig::new("c1");
    config.action_retry_base = Duration::from_millis(200);
    let mut h = start(&fake, config, Some(vec![task(0)]));
    h.until("ImageNotFound", |_, seen| {
        seen.iter().any(|u| {
            u.status.phase == Some(TaskPhase::Pending)
                && u.status.reason.as_deref() == Some("ImageNotFound")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Backoff 200, 400, 800 ms: attempts at about 0, 0.2, 0.6 (and 1.4) s.
    let pulls = fake.calls("pull");
    assert!((2..=4).contains(&pulls), "pulls within ~1.1 s: {pulls}");
    // The create is the presence check: one refused create, then one pull,
    // per attempt; no image inspect.
    assert_eq!(fake.calls("create"), pulls, "one create per pull");
    assert_eq!(
        fake.calls("image_present"),
        0,
        "the create says the image is missing"
    );
    assert_eq!(running(&fake), 0);
    // The image arrives: the next retry runs the task.
    fake.add_image(IMG);
    h.until("running after the image arrived", |f, _| running(f) == 1)
        .await;
    h.stop().await;
}

#[tokio::test]
async fn pull_never_with_a_missing_image_pulls_nothing() {
    let fake = FakeEngine::new();
    let mut t = task(0);
    t.template.image_pull_policy = Some(shoal_crds::ImagePullPolicy::Never);
    let mut h = start(&fake, AgentConfig::new("c1"), Some(vec![t]));
    h.until("ImageNotFound", |_, seen| {
        seen.iter().any(|u| {
            u.status.reason.as_deref() == Some("ImageNotFound")
                && u.status
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("imagePullPolicy is Never"))
        })
    })
    .await;
    assert_eq!(fake.calls("pull"), 0);
    fake.add_image(IMG);
    h.until("running once the image is there", |f, _| running(f) == 1)
        .await;
    h.stop().await;
}

#[tokio::test]
async fn a_refused_template_is_rejected_once() {
    let fake = FakeEngine::new();
    fake.add_image(IMG);
    fake.reject_creates(Some(
        "invalid mount config: bind source path does not exist",
    ));
    let mut h = start(&fake, AgentConfig::new("c1"), Some(vec![task(0)]));
    h.until("Rejected", |_, seen| {
        seen.iter().any(|u| {
            u.status.phase == Some(TaskPhase::Rejected)
                && u.status
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("bind source path"))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.calls("create"), 1, "a rejection is not retried");
    h.stop().await;
}

#[tokio::test]
async fn the_local_policy_rejects_a_task_before_any_engine_call() {
    let fake = FakeEngine::new();
    fake.add_image(IMG);
    let mut config = AgentConfig::new("c1");
    config.policy = crate::policy::LocalPolicy::strict();
    let mut bad = task(0);
    bad.template.capabilities = Some(shoal_crds::Capabilities {
        add: Some(vec!["SYS_ADMIN".into()]),
        drop: None,
    });
    let mut h = start(&fake, config, Some(vec![bad, task(1)]));
    h.until("Rejected by the policy, the other running", |f, seen| {
        running(f) == 1
            && seen.iter().any(|u| {
                u.status.phase == Some(TaskPhase::Rejected)
                    && u.status.message.as_deref()
                        == Some("template.capabilities.add[0]: SYS_ADMIN is not allowed on this host (shoal agent --allow-cap)")
            })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.calls("create"), 1, "only the allowed task is created");
    assert_eq!(fake.calls("pull"), 0);
    h.stop().await;
}

#[tokio::test]
async fn removes_unassigned_containers_only_with_a_complete_set() {
    let fake = FakeEngine::new();
    fake.add_image(IMG);
    let orphan = fake.insert_running(
        "shoal.ns.old.0.x",
        BTreeMap::from([
            (CLUSTER.to_string(), "c1".to_string()),
            (TASK_UID.to_string(), "gone".to_string()),
        ]),
    );
    let foreign = fake.insert_running(
        "shoal.ns.old.0.y",
        BTreeMap::from([
            (CLUSTER.to_string(), "c2".to_string()),
            (TASK_UID.to_string(), "gone".to_string()),
        ]),
    );
    let plain = fake.insert_running("someone-elses", BTreeMap::new());
    let mut h = start(&fake, AgentConfig::new("c1"), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.containers().len(),
        3,
        "nothing removed without a complete set"
    );
    h.tx.send_replace(Some(Arc::new(vec![task(0)])));
    h.until("orphan removed, task running", |f, _| {
        let ids: Vec<String> = f.containers().iter().map(|c| c.id.clone()).collect();
        !ids.contains(&orphan) && running(f) == 3
    })
    .await;
    let ids: Vec<String> = fake.containers().iter().map(|c| c.id.clone()).collect();
    assert!(
        ids.contains(&foreign) && ids.contains(&plain),
        "other cluster and unlabelled untouched"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_name_taken_by_another_cluster_is_rejected_not_adopted() {
    let fake = FakeEngine::new();
    fake.add_image(IMG);
    let t = task(0);
    let name = t.identity("c1").container_name();
    let other = fake.insert_running(
        &name,
        BTreeMap::from([
            (CLUSTER.to_string(), "c2".to_string()),
            (TASK_UID.to_string(), t.uid.clone()),
        ]),
    );
    let mut h = start(&fake, AgentConfig::new("c1"), Some(vec![t]));
    h.until("Rejected", |_, seen| {
        seen.iter()
            .any(|u| u.status.phase == Some(TaskPhase::Rejected))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.calls("create"), 1, "no hot loop");
    assert_eq!(
        fake.calls("start"),
        0,
        "the other cluster's container is not started"
    );
    assert_eq!(fake.containers().len(), 1);
    assert_eq!(fake.containers()[0].id, other);
    h.stop().await;
}

#[tokio::test]
async fn a_name_conflict_with_its_own_container_is_adopted() {
    let fake = FakeEngine::new();
    fake.add_image(IMG);
    let t = task(0);
    let name = t.identity("c1").container_name();
    // Created by a previous agent that died before starting it: not yet listed
    // under our labels when the plan was made is simulated by a plain create conflict.
    let id = fake.insert_running(
        &name,
        BTreeMap::from([
            (CLUSTER.to_string(), "c1".to_string()),
            (TASK_UID.to_string(), t.uid.clone()),
        ]),
    );
    let mut h = start(&fake, AgentConfig::new("c1"), Some(vec![t]));
    h.until("Running", |_, seen| {
        seen.iter()
            .any(|u| u.status.phase == Some(TaskPhase::Running))
    })
    .await;
    assert_eq!(fake.containers().len(), 1);
    assert_eq!(fake.containers()[0].id, id);
    assert_eq!(
        fake.calls("create"),
        0,
        "listed and adopted without a create"
    );
    h.stop().await;
}
