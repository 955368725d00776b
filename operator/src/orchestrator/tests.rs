use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use shoal_crds::{
    Availability, ConditionStatus, ContainerTemplate, DesiredState, Placement, Service,
    ServiceMode, ServiceSpec, ServiceStatus, Task, TaskPhase, TaskSpec, TaskStatus, UpdateConfig,
    UpdateState, UpdateStatus,
};

use super::*;
use crate::scheduler::SchedHost;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn service(replicas: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("uid-web".into()),
            generation: Some(3),
            finalizers: Some(vec![SERVICE_FINALIZER.into()]),
            ..Default::default()
        },
        spec: ServiceSpec {
            replicas: Some(replicas),
            template: ContainerTemplate {
                image: "busybox:1".into(),
                ..Default::default()
            },
            ..Default::default()
        },
        status: None,
    }
}

fn global(selector_zone: Option<&str>) -> Service {
    let mut s = service(0);
    s.spec.replicas = None;
    s.spec.mode = Some(ServiceMode::Global);
    s.spec.placement = selector_zone.map(|z| Placement {
        host_selector: Some(LabelSelector {
            match_labels: Some([("zone".to_string(), z.to_string())].into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    s
}

fn hash_of(s: &Service) -> String {
    template_hash(&s.spec.template, s.spec.restart_policy.as_ref())
}

/// A task `web-<slot>-a<attempt>`, current template, desired Running.
fn task(s: &Service, slot: i32, attempt: u32, phase: TaskPhase, host: Option<&str>) -> Task {
    Task {
        metadata: ObjectMeta {
            name: Some(format!("web-{slot}-a{attempt}")),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                ATTEMPT_LABEL.to_string(),
                attempt.to_string(),
            )])),
            creation_timestamp: Some(Time(ts(i64::from(attempt)))),
            ..Default::default()
        },
        spec: TaskSpec {
            service: "web".into(),
            slot: Some(slot),
            template: s.spec.template.clone(),
            template_hash: hash_of(s),
            host_name: host.map(str::to_owned),
            desired_state: Some(DesiredState::Running),
            ..Default::default()
        },
        status: Some(TaskStatus {
            phase: Some(phase),
            finished_at: phase.is_terminal().then(|| Time(ts(100))),
            ..Default::default()
        }),
    }
}

fn global_task(s: &Service, host: &str, attempt: u32, phase: TaskPhase) -> Task {
    let mut t = task(s, 0, attempt, phase, Some(host));
    t.metadata.name = Some(format!("web-{host}-a{attempt}"));
    t.spec.slot = None;
    t.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(crate::scheduler::TARGET_HOST_LABEL.into(), host.into());
    t
}

fn stopped(mut t: Task) -> Task {
    t.spec.desired_state = Some(DesiredState::Shutdown);
    t
}

fn old(mut t: Task) -> Task {
    t.spec.template_hash = "old".into();
    t
}

/// `s` with a rollout of its template on record, in `state` since `started`.
fn rolling(s: &Service, state: UpdateState, started: i64) -> Service {
    let mut s = s.clone();
    s.status = Some(ServiceStatus {
        update: Some(UpdateStatus {
            state,
            template_hash: hash_of(&s),
            rollback_to: None,
            started_at: Some(Time(ts(started))),
            message: None,
            resumed: None,
        }),
        ..Default::default()
    });
    s
}

fn host(name: &str) -> SchedHost {
    SchedHost {
        name: name.into(),
        labels: BTreeMap::from([("zone".to_string(), "east".to_string())]),
        ready: true,
        availability: Availability::Active,
        cpu_millis: 4000,
        memory_bytes: 1 << 33,
    }
}

fn hosts() -> Vec<SchedHost> {
    vec![host("h1"), host("h2"), host("h3")]
}

fn run(s: &Service, tasks: &[Task], hosts: &[SchedHost], now: i64) -> Plan {
    plan(&PlanInput {
        service: s,
        tasks,
        hosts,
        now: ts(now),
        history_limit: DEFAULT_HISTORY_LIMIT,
        unschedulable: None,
    })
}

fn create(n: i32, attempt: u32) -> Action {
    create_after(n, attempt, 0)
}
fn create_after(n: i32, attempt: u32, rejections: u32) -> Action {
    Action::Create {
        slot: SlotKey::Slot(n),
        attempt,
        rejections,
    }
}
fn create_on(h: &str) -> Action {
    Action::Create {
        slot: SlotKey::Host(h.into()),
        attempt: 1,
        rejections: 0,
    }
}
fn shutdown(n: &str) -> Action {
    Action::Shutdown(n.into())
}
fn delete(n: &str) -> Action {
    Action::Delete(n.into())
}

struct Case {
    name: &'static str,
    service: Service,
    tasks: Vec<Task>,
    hosts: Vec<SchedHost>,
    now: i64,
    want: Vec<Action>,
    requeue: Option<Duration>,
}

fn case(name: &'static str, service: Service, tasks: Vec<Task>, want: Vec<Action>) -> Case {
    Case {
        name,
        service,
        tasks,
        hosts: hosts(),
        now: 100,
        want,
        requeue: None,
    }
}

fn cases() -> Vec<Case> {
    use TaskPhase::*;
    let s = service(3);
    let mut cases = Vec::new();

    let mut fresh = service(3);
    fresh.metadata.finalizers = None;
    cases.push(case(
        "a new service gets its finalizer, then slots 0..N-1",
        fresh,
        vec![],
        vec![
            Action::AddServiceFinalizer,
            create(0, 1),
            create(1, 1),
            create(2, 1),
        ],
    ));
    cases.push(case(
        "scale up fills the missing slots",
        s.clone(),
        vec![task(&s, 0, 1, Running, Some("h1"))],
        vec![create(1, 1), create(2, 1)],
    ));
    cases.push(case(
        "steady state: nothing to do",
        s.clone(),
        vec![
            task(&s, 0, 1, Running, Some("h1")),
            task(&s, 1, 1, Running, Some("h2")),
            task(&s, 2, 1, Starting, Some("h3")),
        ],
        vec![],
    ));
    cases.push(case(
        "scale down: non-running first, then the most loaded host, then the highest slot",
        service(2),
        vec![
            task(&s, 0, 1, Running, Some("h1")),
            task(&s, 1, 1, Running, Some("h2")),
            task(&s, 2, 1, Pending, None),
            task(&s, 3, 1, Running, Some("h1")),
        ],
        vec![
            shutdown("web-2-a1"),
            shutdown("web-3-a1"),
            delete("web-2-a1"),
            delete("web-3-a1"),
        ],
    ));
    cases.push(case(
        "scale down removes the history of removed slots too",
        service(1),
        vec![
            task(&s, 0, 2, Running, Some("h1")),
            task(&s, 1, 2, Running, Some("h2")),
            stopped(task(&s, 1, 1, Rejected, Some("h2"))),
        ],
        vec![shutdown("web-1-a2"), delete("web-1-a1"), delete("web-1-a2")],
    ));
    cases.push(case(
        "scale up reuses the lowest free slots",
        service(2),
        vec![task(&s, 1, 1, Running, Some("h1"))],
        vec![create(0, 1)],
    ));
    cases.push(case(
        "a rejected task is replaced (first time: the restart delay, 0s)",
        service(1),
        vec![task(&s, 0, 1, Rejected, Some("h1"))],
        vec![shutdown("web-0-a1"), create_after(0, 2, 1)],
    ));
    cases.push(Case {
        requeue: Some(Duration::from_millis(100)),
        ..case(
            "a second rejection in a row backs off",
            service(1),
            vec![
                stopped(task(&s, 0, 1, Rejected, Some("h1"))),
                task(&s, 0, 2, Rejected, Some("h2")),
            ],
            vec![shutdown("web-0-a2")],
        )
    });
    cases.push(Case {
        now: 101,
        ..case(
            "after the backoff the replacement comes",
            service(1),
            vec![
                stopped(task(&s, 0, 1, Rejected, Some("h1"))),
                stopped(task(&s, 0, 2, Rejected, Some("h2"))),
            ],
            vec![create_after(0, 3, 2)],
        )
    });
    // The count carried on the task keeps the backoff growing after the
    // older rejected tasks have left the history: 7 in a row wait
    // 100ms × 2^5.
    let mut seventh = task(&s, 0, 9, Rejected, Some("h1"));
    seventh
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REJECTIONS_LABEL.into(), "6".into());
    cases.push(Case {
        requeue: Some(Duration::from_millis(3200)),
        ..case(
            "rejections in a row beyond the history back off further",
            service(1),
            vec![seventh],
            vec![shutdown("web-0-a9")],
        )
    });
    cases.push(case(
        "an orphaned task is replaced at once",
        service(1),
        vec![task(&s, 0, 1, Orphaned, Some("h1"))],
        vec![shutdown("web-0-a1"), create(0, 2)],
    ));
    cases.push(case(
        "a task whose host is gone is replaced at once",
        service(1),
        vec![task(&s, 0, 1, Running, Some("gone"))],
        vec![shutdown("web-0-a1"), create(0, 2)],
    ));
    cases.push(case(
        "failed and succeeded tasks are not replaced",
        service(2),
        vec![
            task(&s, 0, 1, Failed, Some("h1")),
            task(&s, 1, 1, Succeeded, Some("h2")),
        ],
        vec![],
    ));
    let mut drained = hosts();
    drained[0].availability = Availability::Drain;
    cases.push(Case {
        hosts: drained.clone(),
        ..case(
            "a task on a draining host is stopped, its replacement waits for the stop",
            service(1),
            vec![task(&s, 0, 1, Running, Some("h1"))],
            vec![shutdown("web-0-a1")],
        )
    });
    cases.push(Case {
        hosts: drained,
        ..case(
            "once stopped, the replacement is created",
            service(1),
            vec![stopped(task(&s, 0, 1, Shutdown, Some("h1")))],
            vec![create(0, 2)],
        )
    });
    cases.push(case(
        "two current tasks in one slot: the newest stays",
        service(1),
        vec![
            task(&s, 0, 1, Running, Some("h1")),
            task(&s, 0, 2, Running, Some("h2")),
        ],
        vec![shutdown("web-0-a1"), delete("web-0-a1")],
    ));

    // Rolling update, stop first, parallelism 1 (the default).
    cases.push(case(
        "update: the first batch is stopped",
        s.clone(),
        vec![
            old(task(&s, 0, 1, Running, Some("h1"))),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![shutdown("web-0-a1")],
    ));
    cases.push(case(
        "update: nothing more while the old task stops",
        s.clone(),
        vec![
            stopped(old(task(&s, 0, 1, Running, Some("h1")))),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![],
    ));
    cases.push(case(
        "update: the old task stopped, its replacement is created",
        s.clone(),
        vec![
            stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![create(0, 2)],
    ));
    cases.push(case(
        "update: the next batch waits until the new task runs",
        s.clone(),
        vec![
            stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
            task(&s, 0, 2, Starting, Some("h1")),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![],
    ));
    cases.push(case(
        "update: the next batch",
        s.clone(),
        vec![
            stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
            task(&s, 0, 2, Running, Some("h1")),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![shutdown("web-1-a1")],
    ));
    cases.push(case(
        "update: a new task that failed pauses the rollout",
        rolling(&s, UpdateState::Updating, 0),
        vec![
            stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
            task(&s, 0, 2, Failed, Some("h1")),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![],
    ));
    let mut p2 = s.clone();
    p2.spec.update = Some(UpdateConfig {
        parallelism: Some(2),
        ..Default::default()
    });
    cases.push(case(
        "update: parallelism 2",
        p2,
        vec![
            old(task(&s, 0, 1, Running, Some("h1"))),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![shutdown("web-0-a1"), shutdown("web-1-a1")],
    ));
    let mut p0 = s.clone();
    p0.spec.update = Some(UpdateConfig {
        parallelism: Some(0),
        ..Default::default()
    });
    cases.push(case(
        "update: parallelism 0 is all at once; an ended old task is replaced at once",
        p0,
        vec![
            old(task(&s, 0, 1, Running, Some("h1"))),
            old(task(&s, 1, 1, Failed, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ],
        vec![
            shutdown("web-0-a1"),
            shutdown("web-1-a1"),
            shutdown("web-2-a1"),
            create(1, 2),
        ],
    ));

    let mut history: Vec<Task> = (1..=7)
        .map(|a| stopped(task(&s, 0, a, Rejected, Some("h1"))))
        .collect();
    history.push(task(&s, 0, 8, Running, Some("h1")));
    cases.push(case(
        "history: the newest 5 ended tasks of a slot are kept",
        service(1),
        history,
        vec![delete("web-0-a1"), delete("web-0-a2")],
    ));

    let mut deleting = service(2);
    deleting.metadata.deletion_timestamp = Some(Time(ts(50)));
    cases.push(case(
        "a deleted service stops and deletes its tasks",
        deleting.clone(),
        vec![
            task(&s, 0, 1, Running, Some("h1")),
            stopped(task(&s, 1, 1, Shutdown, Some("h2"))),
        ],
        vec![shutdown("web-0-a1"), delete("web-0-a1"), delete("web-1-a1")],
    ));
    let mut marked = task(&s, 0, 1, Running, Some("h1"));
    marked.metadata.deletion_timestamp = Some(Time(ts(60)));
    cases.push(case(
        "a deleted service waits for its marked tasks to go",
        deleting.clone(),
        vec![stopped(marked)],
        vec![],
    ));
    cases.push(case(
        "a deleted service without tasks loses its finalizer",
        deleting,
        vec![],
        vec![Action::RemoveServiceFinalizer],
    ));

    // Global mode.
    let g = global(Some("east"));
    let mut west = host("w1");
    west.labels.insert("zone".into(), "west".into());
    let mut not_ready = host("h4");
    not_ready.ready = false;
    cases.push(Case {
        hosts: vec![host("h1"), host("h2"), west.clone(), not_ready.clone()],
        ..case(
            "global: one task per eligible host",
            g.clone(),
            vec![global_task(&g, "h1", 1, Running)],
            vec![create_on("h2")],
        )
    });
    cases.push(Case {
        hosts: vec![host("h1"), not_ready.clone()],
        ..case(
            "global: a task on a host that is not ready stays",
            g.clone(),
            vec![
                global_task(&g, "h1", 1, Running),
                global_task(&g, "h4", 1, Running),
            ],
            vec![],
        )
    });
    let mut drain = host("h2");
    drain.availability = Availability::Drain;
    cases.push(Case {
        hosts: vec![host("h1"), drain, west],
        ..case(
            "global: tasks on draining or no longer matching hosts go",
            g.clone(),
            vec![
                global_task(&g, "h1", 1, Running),
                global_task(&g, "h2", 1, Running),
                global_task(&g, "w1", 1, Running),
            ],
            vec![
                shutdown("web-h2-a1"),
                shutdown("web-w1-a1"),
                delete("web-h2-a1"),
                delete("web-w1-a1"),
            ],
        )
    });
    cases.push(Case {
        hosts: vec![host("h1")],
        ..case(
            "global: switching to Replicated mode replaces per-host tasks",
            service(1),
            vec![global_task(&g, "h1", 1, Running)],
            vec![shutdown("web-h1-a1"), delete("web-h1-a1"), create(0, 1)],
        )
    });
    cases
}

#[test]
fn plan_table() {
    for c in cases() {
        let p = run(&c.service, &c.tasks, &c.hosts, c.now);
        assert_eq!(p.actions, c.want, "{}", c.name);
        assert_eq!(p.requeue_after, c.requeue, "{}: requeue", c.name);
    }
}

fn condition<'a>(p: &'a Plan, type_: &str) -> (ConditionStatus, &'a str, &'a str) {
    let c = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    match c {
        Some(c) => (
            c.status,
            c.reason.as_deref().unwrap_or(""),
            c.message.as_deref().unwrap_or(""),
        ),
        None => (ConditionStatus::Unknown, "", ""),
    }
}

#[test]
fn a_fenced_task_is_replaced_only_after_the_fence_window() {
    let s = service(1);
    let mut t = task(&s, 0, 1, TaskPhase::Orphaned, Some("h1"));
    t.spec.on_host_loss = Some(shoal_crds::HostLossPolicy::Fence);
    t.status.as_mut().unwrap().last_transition_time = Some(Time(ts(100)));
    let window = shoal_crds::fence_window();
    // Orphaned at 100 s; one second later: the old task goes, the slot
    // waits for the rest of the window.
    let p = run(&s, std::slice::from_ref(&t), &hosts(), 101);
    assert_eq!(p.actions, vec![shutdown("web-0-a1")]);
    assert_eq!(p.requeue_after, Some(window - Duration::from_secs(1)));
    // Once the window has passed, the replacement.
    let after = 100 + i64::try_from(window.as_secs()).unwrap();
    let p = run(&s, std::slice::from_ref(&t), &hosts(), after);
    assert_eq!(p.actions, vec![shutdown("web-0-a1"), create(0, 2)]);
    // Without Fence, at once (the table's case), whatever the time.
    t.spec.on_host_loss = None;
    let p = run(&s, std::slice::from_ref(&t), &hosts(), 101);
    assert_eq!(p.actions, vec![shutdown("web-0-a1"), create(0, 2)]);
}

#[test]
fn status_counts_and_conditions() {
    use TaskPhase::*;
    let s = service(3);
    let tasks = vec![
        task(&s, 0, 1, Running, Some("h1")),
        old(task(&s, 1, 1, Running, Some("h2"))),
        task(&s, 2, 1, Pending, None),
    ];
    let p = plan(&PlanInput {
        service: &s,
        tasks: &tasks,
        hosts: &hosts(),
        now: ts(100),
        history_limit: 5,
        unschedulable: Some("0/3 hosts: 3 insufficient memory"),
    });
    let st = p.status.clone().unwrap_or_default();
    assert_eq!(st.observed_generation, Some(3));
    assert_eq!(st.replicas, Some(3));
    assert_eq!(st.ready_replicas, Some(2));
    assert_eq!(st.updated_replicas, Some(2));
    assert_eq!(
        condition(&p, "Available"),
        (
            ConditionStatus::False,
            "ReplicasUnavailable",
            "2/3 replicas ready"
        )
    );
    assert_eq!(condition(&p, "Progressing").0, ConditionStatus::True);
    assert_eq!(condition(&p, "Progressing").1, "Updating");
    assert_eq!(
        condition(&p, "Schedulable"),
        (
            ConditionStatus::False,
            "Unschedulable",
            "0/3 hosts: 3 insufficient memory"
        )
    );

    let done = vec![
        task(&s, 0, 1, Running, Some("h1")),
        task(&s, 1, 1, Running, Some("h2")),
        task(&s, 2, 1, Running, Some("h3")),
    ];
    let p = run(&s, &done, &hosts(), 100);
    assert_eq!(condition(&p, "Available").0, ConditionStatus::True);
    assert_eq!(
        condition(&p, "Progressing"),
        (ConditionStatus::False, "Complete", "3/3 tasks up to date")
    );
    assert_eq!(
        condition(&p, "Schedulable"),
        (ConditionStatus::True, "Scheduled", "")
    );
}

#[test]
fn health_gates_readiness() {
    use shoal_crds::{HealthCheck, HealthState};
    let mut s = service(1);
    s.spec.template.healthcheck = Some(HealthCheck {
        command: vec!["CMD".into(), "true".into()],
        ..Default::default()
    });
    let mut t = task(&s, 0, 1, TaskPhase::Running, Some("h1"));
    let p = run(&s, std::slice::from_ref(&t), &hosts(), 100);
    assert_eq!(p.status.as_ref().and_then(|s| s.ready_replicas), Some(0));
    if let Some(st) = t.status.as_mut() {
        st.health = Some(HealthState::Healthy);
    }
    let p = run(&s, &[t], &hosts(), 100);
    assert_eq!(p.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
}

#[path = "rollout_tests.rs"]
mod rollout;

// ---- a simulated world: the planner's invariants under random events ----

mod sim {
    use proptest::prelude::*;

    use super::*;

    /// What the world does between two plans.
    #[derive(Clone, Debug)]
    pub enum Event {
        Scale(i32),
        NewImage(u8),
        /// Task at this index (mod len) gets this phase, if it is bound.
        Phase(usize, TaskPhase),
        /// The agents and the dispatcher make progress.
        Progress,
        /// Task at this index (mod len) restarted in place, if it runs.
        Restart(usize),
        /// `update.failureAction` (0 Pause, 1 Continue, 2 Rollback) and
        /// whether the order is StartFirst.
        Policy(u8, bool),
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            1 => (0i32..6).prop_map(Event::Scale),
            1 => (0u8..3).prop_map(Event::NewImage),
            2 => (0usize..50, prop::sample::select(vec![
                TaskPhase::Rejected, TaskPhase::Orphaned, TaskPhase::Failed, TaskPhase::Running,
            ])).prop_map(|(i, p)| Event::Phase(i, p)),
            4 => Just(Event::Progress),
            1 => (0usize..50).prop_map(Event::Restart),
            1 => (0u8..3, any::<bool>()).prop_map(|(a, o)| Event::Policy(a, o)),
        ]
    }

    struct World {
        svc: Service,
        tasks: Vec<Task>,
        hosts: Vec<SchedHost>,
        now: i64,
        next_name: u32,
    }

    impl World {
        fn apply(&mut self, p: &Plan) -> Result<(), TestCaseError> {
            for a in &p.actions {
                match a {
                    Action::AddServiceFinalizer | Action::RemoveServiceFinalizer => {}
                    Action::Shutdown(n) => {
                        if let Some(t) = self
                            .tasks
                            .iter_mut()
                            .find(|t| t.metadata.name.as_deref() == Some(n))
                        {
                            t.spec.desired_state = Some(DesiredState::Shutdown);
                        }
                    }
                    Action::Delete(n) => {
                        if let Some(t) = self
                            .tasks
                            .iter_mut()
                            .find(|t| t.metadata.name.as_deref() == Some(n))
                        {
                            t.metadata.deletion_timestamp = Some(Time(ts(self.now)));
                        }
                    }
                    Action::Create {
                        slot: SlotKey::Slot(n),
                        attempt,
                        rejections,
                    } => {
                        self.next_name += 1;
                        let mut t = task(&self.svc, *n, *attempt, TaskPhase::Pending, None);
                        if let Some(from) = &p.template_from {
                            let src = self
                                .tasks
                                .iter()
                                .find(|t| t.metadata.name.as_ref() == Some(from));
                            prop_assert!(src.is_some(), "template from {} which is gone", from);
                            if let Some(src) = src {
                                t.spec.template = src.spec.template.clone();
                            }
                        }
                        t.spec.template_hash = p.template_hash.clone();
                        if *rejections > 0 {
                            t.metadata
                                .labels
                                .get_or_insert_with(BTreeMap::new)
                                .insert(REJECTIONS_LABEL.into(), rejections.to_string());
                        }
                        t.metadata.name = Some(format!("t{:04}", self.next_name));
                        t.metadata.creation_timestamp = Some(Time(ts(self.now)));
                        self.tasks.push(t);
                    }
                    Action::Create {
                        slot: SlotKey::Host(_),
                        ..
                    } => {}
                }
            }
            self.svc.status.clone_from(&p.status);
            Ok(())
        }

        /// Binds and starts pending tasks, stops tasks asked to stop, and
        /// drops deleted ones whose container is gone.
        fn progress(&mut self) {
            let n_hosts = self.hosts.len();
            let mut i = 0usize;
            self.tasks.retain(|t| {
                let phase = t.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
                !(t.metadata.deletion_timestamp.is_some()
                    && (phase.is_terminal() || t.spec.host_name.is_none()))
            });
            for t in &mut self.tasks {
                i += 1;
                let phase = t.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
                let stop = t.spec.desired_state() == DesiredState::Shutdown
                    || t.metadata.deletion_timestamp.is_some();
                let st = t.status.get_or_insert_with(Default::default);
                if stop {
                    if t.spec.host_name.is_some() && !phase.is_terminal() {
                        st.phase = Some(TaskPhase::Shutdown);
                    }
                } else if t.spec.host_name.is_none() {
                    t.spec.host_name = Some(format!("h{}", 1 + i % n_hosts));
                } else if phase == TaskPhase::Pending {
                    st.phase = Some(TaskPhase::Running);
                }
            }
        }

        fn plan(&self) -> Plan {
            plan(&PlanInput {
                service: &self.svc,
                tasks: &self.tasks,
                hosts: &self.hosts,
                now: ts(self.now),
                history_limit: 2,
                unschedulable: None,
            })
        }

        fn check(&self, p: &Plan) -> Result<(), TestCaseError> {
            let wanted: Vec<&Task> = self
                .tasks
                .iter()
                .filter(|t| {
                    t.spec.desired_state() == DesiredState::Running
                        && t.metadata.deletion_timestamp.is_none()
                })
                .collect();
            let shut: BTreeSet<&str> = p
                .actions
                .iter()
                .filter_map(|a| match a {
                    Action::Shutdown(n) => Some(n.as_str()),
                    _ => None,
                })
                .collect();
            let start_first = self.svc.spec.update.as_ref().and_then(|u| u.order)
                == Some(shoal_crds::UpdateOrder::StartFirst);
            for a in &p.actions {
                if let Action::Create {
                    slot: SlotKey::Slot(n),
                    ..
                } = a
                {
                    // Never a second wanted task in a slot; start first: one
                    // of another template may run on beside it.
                    let taken: Vec<&&Task> = wanted
                        .iter()
                        .filter(|t| {
                            t.spec.slot == Some(*n)
                                && !shut.contains(t.metadata.name.as_deref().unwrap_or(""))
                        })
                        .collect();
                    let beside = start_first
                        && taken.len() == 1
                        && taken[0].spec.template_hash != p.template_hash;
                    prop_assert!(
                        taken.is_empty() || beside,
                        "slot {} created while it has a task",
                        n
                    );
                    if start_first {
                        continue;
                    }
                    // Stop first: never while an earlier task of the slot may still run.
                    let running = self.tasks.iter().any(|t| {
                        let phase = t.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
                        t.spec.slot == Some(*n)
                            && t.spec.host_name.is_some()
                            && !phase.is_terminal()
                            && (t.spec.desired_state() == DesiredState::Shutdown
                                || shut.contains(t.metadata.name.as_deref().unwrap_or("")))
                    });
                    prop_assert!(
                        !running,
                        "slot {} created before its predecessor stopped",
                        n
                    );
                }
            }
            let creates = p
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Create { .. }))
                .count();
            let kept = wanted
                .iter()
                .filter(|t| !shut.contains(t.metadata.name.as_deref().unwrap_or("")))
                .count();
            let want = usize::try_from(self.svc.spec.replicas()).unwrap_or(0);
            prop_assert!(
                kept + creates
                    <= if start_first {
                        2 * want.max(kept)
                    } else {
                        want.max(kept)
                    },
                "more tasks than replicas: {} kept + {} created",
                kept,
                creates
            );
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn the_planner_keeps_its_invariants_and_converges(events in prop::collection::vec(arb_event(), 0..40)) {
            let mut w = World { svc: service(3), tasks: Vec::new(), hosts: hosts(), now: 0, next_name: 0 };
            for e in events {
                match e {
                    Event::Scale(n) => w.svc.spec.replicas = Some(n),
                    Event::NewImage(i) => w.svc.spec.template.image = format!("busybox:{i}"),
                    Event::Phase(i, phase) => {
                        let n = w.tasks.len();
                        if n > 0 && w.tasks[i % n].spec.host_name.is_some() {
                            w.tasks[i % n].status.get_or_insert_with(Default::default).phase = Some(phase);
                            w.tasks[i % n].status.get_or_insert_with(Default::default).finished_at = Some(Time(ts(w.now)));
                        }
                    }
                    Event::Progress => w.progress(),
                    Event::Restart(i) => {
                        let n = w.tasks.len();
                        if n > 0 {
                            let st = w.tasks[i % n].status.get_or_insert_with(Default::default);
                            if st.phase == Some(TaskPhase::Running) {
                                st.restart_count = Some(st.restart_count.unwrap_or(0) + 1);
                            }
                        }
                    }
                    Event::Policy(action, start_first) => {
                        w.svc.spec.update = Some(UpdateConfig {
                            failure_action: Some([
                                shoal_crds::FailureAction::Pause,
                                shoal_crds::FailureAction::Continue,
                                shoal_crds::FailureAction::Rollback,
                            ][usize::from(action)]),
                            order: start_first.then_some(shoal_crds::UpdateOrder::StartFirst),
                            ..Default::default()
                        });
                    }
                }
                w.now += 1;
                let p = w.plan();
                w.check(&p)?;
                w.apply(&p)?;
            }
            // A calm world converges: N tasks of the current template, running,
            // in distinct slots (Failed and Succeeded ones stay as they are).
            for _ in 0..40 {
                w.now += 60;
                w.progress();
                let p = w.plan();
                w.check(&p)?;
                w.apply(&p)?;
            }
            let want = usize::try_from(w.svc.spec.replicas()).unwrap_or(0);
            // The template that should run: the spec's, or the one a
            // rollback restored; a paused rollout may leave others.
            let update = w.svc.status.as_ref().and_then(|s| s.update.clone());
            let state = update.as_ref().map(|u| u.state);
            let hash = match &update {
                Some(u) if matches!(u.state, UpdateState::RolledBack | UpdateState::RollbackPaused) => {
                    u.rollback_to.clone().unwrap_or_default()
                }
                _ => template_hash(&w.svc.spec.template, None),
            };
            prop_assert!(
                !matches!(state, Some(UpdateState::Updating | UpdateState::RollingBack)),
                "a calm world finishes its rollout: {:?}", update
            );
            let paused = matches!(state, Some(UpdateState::Paused | UpdateState::RollbackPaused));
            let start_first = w.svc.spec.update.as_ref().and_then(|u| u.order)
                == Some(shoal_crds::UpdateOrder::StartFirst);
            let wanted: Vec<&Task> = w.tasks.iter()
                .filter(|t| t.spec.desired_state() == DesiredState::Running && t.metadata.deletion_timestamp.is_none())
                .collect();
            if start_first && paused {
                // A failed new task keeps its old one beside it.
                prop_assert!(wanted.len() >= want && wanted.len() <= 2 * want);
            } else {
                prop_assert_eq!(wanted.len(), want);
            }
            let slots: BTreeSet<i32> = wanted.iter().filter_map(|t| t.spec.slot).collect();
            prop_assert_eq!(slots.len(), want);
            for t in &wanted {
                let phase = t.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
                prop_assert!(paused || t.spec.template_hash == hash || phase == TaskPhase::Failed, "{:?} {:?}", t.metadata.name, update);
                prop_assert!(matches!(phase, TaskPhase::Running | TaskPhase::Failed), "{:?} {:?}", t.metadata.name, phase);
            }
            // History is bounded: at most 2 ended tasks per slot besides the live ones.
            let mut per_slot: BTreeMap<i32, usize> = BTreeMap::new();
            for t in &w.tasks {
                if let Some(s) = t.spec.slot {
                    *per_slot.entry(s).or_default() += 1;
                }
            }
            for (s, n) in per_slot {
                // Start first: an old task may run beside the current one.
                prop_assert!(n <= 3 + usize::from(start_first), "slot {} keeps {} tasks", s, n);
            }
        }
    }
}
