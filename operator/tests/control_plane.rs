//! Store-backed tests of the orchestrator and the scheduler (in-process
//! MemStore, no agent): the agent and dispatcher side is simulated by
//! [`agent_step`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use shoal_crds::quantity::{ByteQuantity, CpuQuantity};
use shoal_crds::{
    Condition, ConditionStatus, ContainerTemplate, DesiredState, Host, HostResources, HostSpec,
    HostStatus, Placement, ResourceReservations, Resources, Service, ServiceMode, ServiceSpec,
    Task, TaskPhase, TaskStatus, UpdateConfig,
};
use shoal_operator::orchestrator::{
    Orchestrator, OrchestratorConfig, SERVICE_FINALIZER, TASK_FINALIZER,
};
use shoal_operator::reports::SchedulingReports;
use shoal_operator::scheduler::{Scheduler, SchedulerConfig, ServiceRef};
use shoal_store::mem::MemStore;
use shoal_store::typed;
use shoal_store::{ClusterStore, DeletePreconditions, ListOptions};
use tokio_util::sync::CancellationToken;

const NS: &str = "default";

struct Cluster {
    store: Arc<dyn ClusterStore>,
    orch: Orchestrator,
    sched: Scheduler,
}

impl Cluster {
    fn new() -> Self {
        let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
        let reports = SchedulingReports::new();
        let orch = Orchestrator::new(store.clone(), OrchestratorConfig::default())
            .with_reports(reports.clone());
        let sched = Scheduler::new(store.clone(), SchedulerConfig::default()).with_reports(reports);
        Self { store, orch, sched }
    }

    fn s(&self) -> &dyn ClusterStore {
        self.store.as_ref()
    }

    async fn add_host(&self, name: &str, labels: &[(&str, &str)], memory: &str) {
        let h = Host {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: HostSpec::default(),
            status: Some(HostStatus {
                conditions: Some(vec![Condition {
                    type_: "Ready".into(),
                    status: ConditionStatus::True,
                    ..Default::default()
                }]),
                allocatable: Some(HostResources {
                    cpu: Some(CpuQuantity::new("4")),
                    memory: Some(ByteQuantity::new(memory)),
                }),
                ..Default::default()
            }),
        };
        typed::create(self.s(), &h).await.unwrap();
    }

    async fn create_service(&self, svc: Service) {
        typed::create(self.s(), &svc).await.unwrap();
    }

    async fn service(&self, name: &str) -> Option<Service> {
        typed::get::<Service>(self.s(), Some(NS), name)
            .await
            .unwrap()
    }

    async fn edit_service(&self, name: &str, f: impl FnOnce(&mut Service)) {
        let mut s = self.service(name).await.unwrap();
        f(&mut s);
        typed::update(self.s(), &s).await.unwrap();
    }

    async fn tasks(&self) -> Vec<Task> {
        typed::list::<Task>(self.s(), &ListOptions::default())
            .await
            .unwrap()
            .0
    }

    /// The tasks the orchestrator wants running.
    async fn current(&self) -> Vec<Task> {
        self.tasks()
            .await
            .into_iter()
            .filter(|t| {
                t.spec.desired_state() == DesiredState::Running
                    && t.metadata.deletion_timestamp.is_none()
            })
            .collect()
    }

    /// Reconcile, schedule and let the simulated agent act until nothing
    /// changes (or `rounds` rounds).
    async fn converge(&self, services: &[&str], rounds: usize) {
        for _ in 0..rounds {
            let before = self.store.revision().await.unwrap();
            for s in services {
                let _ = self.orch.reconcile(&ServiceRef::new(NS, *s)).await;
            }
            self.sched.pass().await.unwrap();
            for s in services {
                let _ = self.orch.reconcile(&ServiceRef::new(NS, *s)).await;
            }
            agent_step(self.s()).await;
            if self.store.revision().await.unwrap() == before {
                return;
            }
        }
    }
}

fn service(name: &str, replicas: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: ServiceSpec {
            replicas: Some(replicas),
            template: ContainerTemplate {
                image: "shoal-test/busybox:1".into(),
                resources: Some(Resources {
                    limits: None,
                    reservations: Some(ResourceReservations {
                        cpu: Some(CpuQuantity::new("100m")),
                        memory: Some(ByteQuantity::new("64Mi")),
                    }),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
        status: None,
    }
}

fn set_phase(t: &mut Task, phase: TaskPhase) {
    t.status.get_or_insert_with(TaskStatus::default).phase = Some(phase);
}

/// What the agents and the dispatcher would do, one step: start bound
/// tasks, stop tasks asked to stop (or deleted), and release the finalizer
/// of deleted tasks whose container is gone.
async fn agent_step(store: &dyn ClusterStore) {
    let (tasks, _) = typed::list::<Task>(store, &ListOptions::default())
        .await
        .unwrap();
    for mut t in tasks {
        let phase = t.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
        let marked = t.metadata.deletion_timestamp.is_some();
        let bound = t.spec.host_name.is_some();
        let stop = t.spec.desired_state() == DesiredState::Shutdown || marked;
        if marked && (phase.is_terminal() || !bound) {
            t.metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .retain(|f| f != TASK_FINALIZER);
            let _ = typed::update(store, &t).await;
        } else if stop && bound && !phase.is_terminal() {
            set_phase(&mut t, TaskPhase::Shutdown);
            let _ = typed::update_status(store, &t).await;
        } else if !stop && bound && phase == TaskPhase::Pending {
            set_phase(&mut t, TaskPhase::Running);
            let _ = typed::update_status(store, &t).await;
        }
    }
}

fn condition(s: &Service, type_: &str) -> (ConditionStatus, String, String) {
    let c = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let c = c.unwrap_or_else(|| panic!("no {type_} condition"));
    (
        c.status,
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    )
}

fn slots(tasks: &[Task]) -> BTreeSet<i32> {
    tasks.iter().filter_map(|t| t.spec.slot).collect()
}

#[tokio::test]
async fn scale_up_and_down() {
    let c = Cluster::new();
    c.add_host("h1", &[], "1Gi").await;
    c.add_host("h2", &[], "1Gi").await;
    c.create_service(service("web", 3)).await;
    c.converge(&["web"], 20).await;

    let cur = c.current().await;
    assert_eq!(slots(&cur), BTreeSet::from([0, 1, 2]));
    for t in &cur {
        assert_eq!(
            t.status.as_ref().and_then(|s| s.phase),
            Some(TaskPhase::Running)
        );
        assert!(
            t.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == TASK_FINALIZER)
        );
        let labels = t.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("shoal.dev/service").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels.get("shoal.dev/template-hash"),
            Some(&t.spec.template_hash)
        );
        let name = t.metadata.name.clone().unwrap();
        assert!(
            name.starts_with(&format!("web-{}-", t.spec.slot.unwrap())),
            "{name}"
        );
        assert_eq!(name.len(), "web-0-".len() + 5);
    }
    let per_host: BTreeMap<String, usize> = cur.iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(t.spec.host_name.clone().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(
        per_host.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2]),
        "spread: {per_host:?}"
    );
    let svc = c.service("web").await.unwrap();
    let st = svc.status.clone().unwrap();
    assert_eq!(
        (st.replicas, st.ready_replicas, st.updated_replicas),
        (Some(3), Some(3), Some(3))
    );
    assert_eq!(st.observed_generation, svc.metadata.generation);
    assert_eq!(condition(&svc, "Available").0, ConditionStatus::True);
    assert!(
        svc.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == SERVICE_FINALIZER)
    );

    c.edit_service("web", |s| s.spec.replicas = Some(1)).await;
    c.converge(&["web"], 20).await;
    let cur = c.current().await;
    assert_eq!(cur.len(), 1);
    // The removed tasks are gone altogether once their containers are.
    assert_eq!(c.tasks().await.len(), 1);
    let st = c.service("web").await.unwrap().status.unwrap();
    assert_eq!((st.replicas, st.ready_replicas), (Some(1), Some(1)));

    c.edit_service("web", |s| s.spec.replicas = Some(4)).await;
    c.converge(&["web"], 20).await;
    assert_eq!(c.current().await.len(), 4);
    assert_eq!(slots(&c.current().await).len(), 4);
}

#[tokio::test]
async fn deleting_a_service_removes_its_tasks_then_itself() {
    let c = Cluster::new();
    c.add_host("h1", &[], "1Gi").await;
    c.create_service(service("web", 2)).await;
    c.converge(&["web"], 20).await;
    assert_eq!(c.current().await.len(), 2);

    let out = c
        .s()
        .delete(
            &typed::key::<Service>(Some(NS), "web"),
            &DeletePreconditions::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(out, shoal_store::DeleteOutcome::Marked(_)),
        "the finalizer keeps it: {out:?}"
    );
    // Tasks go only once their containers are confirmed gone: one step of
    // the orchestrator alone stops and marks them but they stay.
    let _ = c.orch.reconcile(&ServiceRef::new(NS, "web")).await;
    let tasks = c.tasks().await;
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.metadata.deletion_timestamp.is_some()
        && t.spec.desired_state() == DesiredState::Shutdown));
    assert!(c.service("web").await.is_some());

    c.converge(&["web"], 20).await;
    assert!(c.tasks().await.is_empty());
    assert!(c.service("web").await.is_none());
}

#[tokio::test]
async fn global_mode_follows_hosts() {
    let c = Cluster::new();
    c.add_host("h1", &[("zone", "east")], "1Gi").await;
    c.add_host("h2", &[("zone", "east")], "1Gi").await;
    c.add_host("w1", &[("zone", "west")], "1Gi").await;
    let mut g = service("mon", 0);
    g.spec.replicas = None;
    g.spec.mode = Some(ServiceMode::Global);
    g.spec.placement = Some(Placement {
        host_selector: Some(LabelSelector {
            match_labels: Some([("zone".to_string(), "east".to_string())].into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    c.create_service(g).await;
    c.converge(&["mon"], 20).await;
    let hosts = |ts: Vec<Task>| {
        ts.into_iter()
            .map(|t| t.spec.host_name.unwrap_or_default())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        hosts(c.current().await),
        BTreeSet::from(["h1".to_string(), "h2".to_string()])
    );
    for t in c.current().await {
        assert_eq!(t.spec.slot, None);
        assert_eq!(t.status.and_then(|s| s.phase), Some(TaskPhase::Running));
    }

    // A host that appears later gets its task.
    c.add_host("h3", &[("zone", "east")], "1Gi").await;
    c.converge(&["mon"], 20).await;
    assert_eq!(
        hosts(c.current().await),
        BTreeSet::from(["h1".to_string(), "h2".to_string(), "h3".to_string()])
    );
    let st = c.service("mon").await.unwrap().status.unwrap();
    assert_eq!((st.replicas, st.ready_replicas), (Some(3), Some(3)));

    // A host relabelled out of the selector loses it.
    let mut h2 = typed::get::<Host>(c.s(), None, "h2")
        .await
        .unwrap()
        .unwrap();
    h2.metadata.labels = Some([("zone".to_string(), "west".to_string())].into());
    typed::update(c.s(), &h2).await.unwrap();
    c.converge(&["mon"], 20).await;
    assert_eq!(
        hosts(c.current().await),
        BTreeSet::from(["h1".to_string(), "h3".to_string()])
    );
}

#[tokio::test]
async fn a_template_change_replaces_tasks_in_batches() {
    for parallelism in [1, 2] {
        let c = Cluster::new();
        c.add_host("h1", &[], "4Gi").await;
        c.add_host("h2", &[], "4Gi").await;
        let mut svc = service("web", 4);
        svc.spec.update = Some(UpdateConfig {
            parallelism: Some(parallelism),
            ..Default::default()
        });
        c.create_service(svc).await;
        c.converge(&["web"], 20).await;
        let old_hash = c.current().await[0].spec.template_hash.clone();

        c.edit_service("web", |s| {
            s.spec.template.image = "shoal-test/busybox:2".into()
        })
        .await;
        let key = ServiceRef::new(NS, "web");
        let mut most_down = 0;
        for _ in 0..60 {
            let _ = c.orch.reconcile(&key).await;
            c.sched.pass().await.unwrap();
            let _ = c.orch.reconcile(&key).await;
            // Slots without a running task at this moment.
            let tasks = c.tasks().await;
            let running: BTreeSet<i32> = tasks
                .iter()
                .filter(|t| {
                    t.spec.desired_state() == DesiredState::Running
                        && t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running)
                })
                .filter_map(|t| t.spec.slot)
                .collect();
            most_down = most_down.max(4 - running.len());
            agent_step(c.s()).await;
            let cur = c.current().await;
            if cur.len() == 4
                && cur.iter().all(|t| {
                    t.spec.template_hash != old_hash
                        && t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running)
                })
            {
                break;
            }
        }
        let cur = c.current().await;
        assert_eq!(cur.len(), 4);
        assert!(
            cur.iter()
                .all(|t| t.spec.template.image == "shoal-test/busybox:2")
        );
        assert_eq!(slots(&cur), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(
            most_down,
            usize::try_from(parallelism).unwrap(),
            "at most `parallelism` slots down at once"
        );
        // The old tasks stay as history, stopped.
        let old: Vec<Task> = c
            .tasks()
            .await
            .into_iter()
            .filter(|t| t.spec.template_hash == old_hash)
            .collect();
        assert_eq!(old.len(), 4);
        assert!(
            old.iter()
                .all(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Shutdown))
        );
        c.converge(&["web"], 5).await;
        let svc = c.service("web").await.unwrap();
        assert_eq!(
            svc.status.as_ref().and_then(|s| s.updated_replicas),
            Some(4)
        );
        assert_eq!(condition(&svc, "Progressing").1, "Complete");
    }
}

#[tokio::test]
async fn an_unschedulable_service_reports_why() {
    let c = Cluster::new();
    c.add_host("e1", &[("zone", "east")], "256Mi").await;
    c.add_host("e2", &[("zone", "east")], "256Mi").await;
    c.add_host("w1", &[("zone", "west")], "8Gi").await;
    let mut svc = service("big", 1);
    svc.spec.template.resources = Some(Resources {
        limits: None,
        reservations: Some(ResourceReservations {
            cpu: None,
            memory: Some(ByteQuantity::new("512Mi")),
        }),
    });
    svc.spec.placement = Some(Placement {
        host_selector: Some(LabelSelector {
            match_labels: Some([("zone".to_string(), "east".to_string())].into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    c.create_service(svc).await;
    c.converge(&["big"], 10).await;
    let svc = c.service("big").await.unwrap();
    assert_eq!(
        condition(&svc, "Schedulable"),
        (
            ConditionStatus::False,
            "Unschedulable".to_string(),
            "0/3 hosts: 2 insufficient memory, 1 does not match hostSelector zone=east".to_string()
        )
    );
    assert_eq!(condition(&svc, "Available").0, ConditionStatus::False);
    assert!(c.current().await.iter().all(|t| t.spec.host_name.is_none()));

    // A host that fits appears: the task is placed and the condition clears.
    c.add_host("e3", &[("zone", "east")], "1Gi").await;
    c.converge(&["big"], 10).await;
    let cur = c.current().await;
    assert_eq!(cur[0].spec.host_name.as_deref(), Some("e3"));
    let svc = c.service("big").await.unwrap();
    assert_eq!(condition(&svc, "Schedulable").0, ConditionStatus::True);
    assert_eq!(condition(&svc, "Available").0, ConditionStatus::True);
}

#[tokio::test]
async fn two_orchestrators_at_once_never_double_a_slot() {
    let c = Cluster::new();
    c.add_host("h1", &[], "8Gi").await;
    c.create_service(service("web", 5)).await;
    let other = Orchestrator::new(c.store.clone(), OrchestratorConfig::default());
    let key = ServiceRef::new(NS, "web");
    for _ in 0..5 {
        let (a, b) = tokio::join!(c.orch.reconcile(&key), other.reconcile(&key));
        for r in [a, b] {
            if let Err(e) = r {
                assert!(e.is_retryable(), "{e}");
            }
        }
    }
    let cur = c.current().await;
    assert_eq!(
        cur.len(),
        5,
        "{:?}",
        cur.iter()
            .map(|t| t.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(slots(&cur).len(), 5);
}

#[tokio::test]
async fn the_loops_converge_on_their_own() {
    let c = Cluster::new();
    c.add_host("h1", &[], "1Gi").await;
    c.add_host("h2", &[], "1Gi").await;
    let shutdown = CancellationToken::new();
    let handles = shoal_operator::spawn_controllers(
        c.store.clone(),
        OrchestratorConfig::default(),
        SchedulerConfig::default(),
        shutdown.clone(),
    );
    c.create_service(service("web", 3)).await;

    let wait_for = |what: &'static str, want: Option<i32>, gone: Option<String>| {
        let c = &c;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                agent_step(c.s()).await;
                let ready = c
                    .service("web")
                    .await
                    .and_then(|s| s.status)
                    .and_then(|s| s.ready_replicas);
                let cur = c.current().await;
                if ready == want
                    && cur.len() == usize::try_from(want.unwrap_or(0)).unwrap()
                    && cur.iter().all(|t| t.metadata.name != gone)
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: not converged: {ready:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for("create", Some(3), None).await;
    assert!(c.current().await.iter().all(|t| t.spec.host_name.is_some()));

    // A task rejected by the engine is replaced by the loops on their own.
    let mut t = c.current().await.remove(0);
    set_phase(&mut t, TaskPhase::Rejected);
    typed::update_status(c.s(), &t).await.unwrap();
    wait_for("replace", Some(3), t.metadata.name.clone()).await;
    assert!(
        c.current()
            .await
            .iter()
            .all(|x| x.metadata.name != t.metadata.name)
    );

    c.edit_service("web", |s| s.spec.replicas = Some(1)).await;
    wait_for("scale down", Some(1), None).await;

    shutdown.cancel();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn tasks_of_a_service_removed_by_hand_go_too() {
    let c = Cluster::new();
    c.add_host("h1", &[], "1Gi").await;
    c.create_service(service("web", 2)).await;
    c.converge(&["web"], 20).await;
    assert_eq!(c.current().await.len(), 2);
    // Someone strips the finalizer and deletes the Service.
    c.edit_service("web", |s| s.metadata.finalizers = None)
        .await;
    let key = typed::key::<Service>(Some(NS), "web");
    let out = c
        .s()
        .delete(&key, &DeletePreconditions::default())
        .await
        .unwrap();
    assert!(matches!(out, shoal_store::DeleteOutcome::Deleted(_)));
    c.converge(&["web"], 20).await;
    assert!(c.tasks().await.is_empty());
}

async fn set_host(c: &Cluster, name: &str, f: impl FnOnce(&mut Host)) {
    let mut h = typed::get::<Host>(c.s(), None, name)
        .await
        .unwrap()
        .unwrap();
    f(&mut h);
    typed::update(c.s(), &h).await.unwrap();
}

#[tokio::test]
async fn tasks_of_a_lost_host_come_back_elsewhere() {
    let c = Cluster::new();
    c.add_host("h1", &[], "1Gi").await;
    c.add_host("h2", &[], "1Gi").await;
    c.create_service(service("web", 2)).await;
    c.converge(&["web"], 20).await;
    let on_h1: Vec<Task> = c
        .current()
        .await
        .into_iter()
        .filter(|t| t.spec.host_name.as_deref() == Some("h1"))
        .collect();
    assert_eq!(on_h1.len(), 1);

    // The dispatcher's view of a lost host: NotReady, its tasks Orphaned.
    let mut h1 = typed::get::<Host>(c.s(), None, "h1")
        .await
        .unwrap()
        .unwrap();
    h1.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = ConditionStatus::False;
    typed::update_status(c.s(), &h1).await.unwrap();
    for mut t in on_h1 {
        set_phase(&mut t, TaskPhase::Orphaned);
        typed::update_status(c.s(), &t).await.unwrap();
    }
    // One reconcile and one pass replace it on the other host.
    let key = ServiceRef::new(NS, "web");
    c.orch.reconcile(&key).await.unwrap();
    c.sched.pass().await.unwrap();
    let cur = c.current().await;
    assert_eq!(cur.len(), 2);
    assert!(
        cur.iter()
            .all(|t| t.spec.host_name.as_deref() == Some("h2")),
        "{cur:?}"
    );
}

#[tokio::test]
async fn draining_a_host_moves_its_tasks_stop_first() {
    let c = Cluster::new();
    c.add_host("h1", &[], "1Gi").await;
    c.add_host("h2", &[], "1Gi").await;
    let mut svc = service("web", 2);
    svc.spec.template.ports = Some(vec![shoal_crds::PortMapping {
        container_port: 80,
        host_port: Some(18080),
        ..Default::default()
    }]);
    c.create_service(svc).await;
    c.converge(&["web"], 20).await;
    assert_eq!(c.current().await.len(), 2);

    set_host(&c, "h1", |h| {
        h.spec.availability = Some(shoal_crds::Availability::Drain)
    })
    .await;
    let key = ServiceRef::new(NS, "web");
    c.orch.reconcile(&key).await.unwrap();
    // Stop first: the task on h1 is asked to stop, no replacement yet.
    assert_eq!(c.current().await.len(), 1);
    c.converge(&["web"], 20).await;
    // Port 18080 is taken on h2 and h1 drains: the replacement fits nowhere.
    let svc = c.service("web").await.unwrap();
    let (status, reason, message) = condition(&svc, "Schedulable");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "Unschedulable")
    );
    assert_eq!(
        message,
        "0/2 hosts: 1 draining, 1 host port 18080/TCP in use"
    );

    set_host(&c, "h1", |h| {
        h.spec.availability = Some(shoal_crds::Availability::Active)
    })
    .await;
    c.converge(&["web"], 20).await;
    let cur = c.current().await;
    assert_eq!(cur.len(), 2);
    assert!(cur.iter().all(|t| t.spec.host_name.is_some()));
    assert_eq!(
        condition(&c.service("web").await.unwrap(), "Schedulable").0,
        ConditionStatus::True
    );
}

/// A spec that only a schema-checking API server let through (a cluster's,
/// in kubernetes mode) is not acted on, and says why; corrected, it is.
#[tokio::test]
async fn an_invalid_spec_is_reported_and_not_acted_on() {
    let c = Cluster::new();
    c.add_host("h1", &[], "1Gi").await;
    c.create_service(service("web", 2)).await;
    c.converge(&["web"], 20).await;
    let before: BTreeSet<String> = c
        .current()
        .await
        .iter()
        .map(|t| t.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(before.len(), 2);

    // 300m of memory: 0.3 bytes to Kubernetes, 300 MiB to Docker.
    c.edit_service("web", |s| {
        s.spec.replicas = Some(4);
        s.spec.template.resources.as_mut().unwrap().limits = Some(shoal_crds::ResourceLimits {
            memory: Some(ByteQuantity::new("300m")),
            ..Default::default()
        });
    })
    .await;
    c.converge(&["web"], 20).await;
    let after: BTreeSet<String> = c
        .current()
        .await
        .iter()
        .map(|t| t.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(after, before, "neither scaled nor replaced");
    let svc = c.service("web").await.unwrap();
    let (status, reason, message) = condition(&svc, "Valid");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "InvalidSpec")
    );
    assert!(
        message.contains("spec.template.resources.limits.memory") && message.contains("300Mi"),
        "{message}"
    );
    assert_eq!(
        svc.status.as_ref().unwrap().observed_generation,
        svc.metadata.generation
    );
    // Events are written in the background.
    let mut warned = false;
    for _ in 0..100 {
        let raw = c
            .store
            .list(shoal_store::Kind::Event, &ListOptions::default())
            .await
            .unwrap();
        warned = raw
            .items
            .iter()
            .any(|e| e["reason"] == "InvalidSpec" && e["type"] == "Warning");
        if warned {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(warned, "a Warning event InvalidSpec");

    // Corrected: acted on, and the condition is gone.
    c.edit_service("web", |s| {
        s.spec.template.resources.as_mut().unwrap().limits = Some(shoal_crds::ResourceLimits {
            memory: Some(ByteQuantity::new("300Mi")),
            ..Default::default()
        });
    })
    .await;
    c.converge(&["web"], 40).await;
    let cur = c.current().await;
    assert_eq!(cur.len(), 4);
    assert!(
        cur.iter()
            .all(|t| !before.contains(t.metadata.name.as_ref().unwrap()))
    );
    let svc = c.service("web").await.unwrap();
    let conds = svc.status.unwrap().conditions.unwrap();
    assert!(conds.iter().all(|c| c.type_ != "Valid"), "{conds:?}");
}
