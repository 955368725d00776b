//! Table tests of the planner.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use shoal_crds::{ContainerTemplate, DesiredState, HealthState, RestartCondition, TaskPhase};

use super::*;
use crate::engine::{ContainerInfo, RunState};
use crate::labels::{CLUSTER, TASK_UID};
use crate::task::{AssignedTask, Recorded, RestartSettings};

const C: &str = "c1";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn at(ms: u64) -> SystemTime {
    t0() + Duration::from_millis(ms)
}

fn task(uid: &str, r: RestartSettings) -> AssignedTask {
    AssignedTask {
        uid: uid.into(),
        namespace: "ns".into(),
        name: format!("t-{uid}"),
        service: "web".into(),
        slot: Some(0),
        template_hash: "h".into(),
        template: ContainerTemplate {
            image: "img".into(),
            ..Default::default()
        },
        restart: r,
        desired: DesiredState::Running,
        fence: false,
        recorded: Default::default(),
    }
}

fn policy(condition: RestartCondition, max_attempts: u32) -> RestartSettings {
    RestartSettings {
        condition,
        max_attempts,
        ..Default::default()
    }
}

fn container(id: &str, uid: &str, state: RunState) -> ContainerInfo {
    ContainerInfo {
        id: id.into(),
        name: format!("n-{id}"),
        labels: BTreeMap::from([
            (CLUSTER.to_string(), C.to_string()),
            (TASK_UID.to_string(), uid.to_string()),
        ]),
        state,
        exit_code: None,
        oom_killed: false,
        health: None,
        started_at: Some(at(0)),
        finished_at: None,
        error: None,
        restart_policy: Some("no".into()),
    }
}

/// An exited container whose last run started 1 ms before it finished.
fn exited(id: &str, uid: &str, code: i64, oom: bool, finished_ms: u64) -> ContainerInfo {
    ContainerInfo {
        exit_code: Some(code),
        oom_killed: oom,
        started_at: Some(at(finished_ms.saturating_sub(1))),
        finished_at: Some(at(finished_ms)),
        ..container(id, uid, RunState::Exited)
    }
}

fn ctx(now_ms: u64) -> Ctx {
    Ctx {
        now: at(now_ms),
        outage: None,
    }
}

fn start(uid: &str, id: &str) -> Option<Action> {
    Some(Action::Start {
        uid: uid.into(),
        container_id: id.into(),
    })
}

#[test]
fn exits_under_each_condition() {
    use RestartCondition::*;
    // (condition, exit code, oom, expected action is a start, phase, reason)
    let table: &[(RestartCondition, i64, bool, bool, TaskPhase, &str)] = &[
        (Always, 0, false, true, TaskPhase::Starting, "Completed"),
        (Always, 1, false, true, TaskPhase::Starting, "Error"),
        (Always, 137, true, true, TaskPhase::Starting, "OOMKilled"),
        (
            OnFailure,
            0,
            false,
            false,
            TaskPhase::Succeeded,
            "Completed",
        ),
        (OnFailure, 3, false, true, TaskPhase::Starting, "Error"),
        (OnFailure, 137, true, true, TaskPhase::Starting, "OOMKilled"),
        (Never, 0, false, false, TaskPhase::Succeeded, "Completed"),
        (Never, 2, false, false, TaskPhase::Failed, "Error"),
        (Never, 137, true, false, TaskPhase::Failed, "OOMKilled"),
    ];
    for (cond, code, oom, restarts, phase, reason) in table {
        let t = task("u", policy(*cond, 0));
        let c = exited("x", "u", *code, *oom, 10);
        let p = plan_task(&t, &[&c], &TaskState::default(), ctx(20));
        let case = format!("{cond:?} exit {code} oom {oom}");
        assert_eq!(p.action.is_some(), *restarts, "{case}: {:?}", p.action);
        if *restarts {
            assert_eq!(p.action, start("u", "x"), "{case}");
            assert_eq!(p.state.restart_count, 1, "{case}");
        }
        assert_eq!(p.status.phase, Some(*phase), "{case}");
        assert_eq!(p.status.reason.as_deref(), Some(*reason), "{case}");
        assert_eq!(p.status.exit_code, Some(*code as i32), "{case}");
        assert_eq!(p.status.oom_killed, Some(*oom), "{case}");
    }
}

#[test]
fn backoff_then_max_attempts_then_failed() {
    let t = task("u", policy(RestartCondition::Always, 3));
    let mut st = TaskState::default();
    // Exit at 0 → immediate restart; exit at 1000 → 100 ms; exit at 2000 → 200 ms.
    let expected_delay = [0u64, 100, 200];
    for (i, delay) in expected_delay.iter().enumerate() {
        let finished = 1000 * i as u64;
        let c = exited("x", "u", 1, false, finished);
        let p = plan_task(&t, &[&c], &st, ctx(finished + 1));
        if *delay <= 1 {
            assert_eq!(p.action, start("u", "x"), "restart {i}");
        } else {
            assert_eq!(p.action, None, "restart {i} waits");
            assert_eq!(p.wake_at, Some(at(finished + delay)), "restart {i}");
            assert_eq!(p.status.reason.as_deref(), Some("BackOff"));
            // Planning again at the wake time starts it, without counting again.
            let again = plan_task(&t, &[&c], &p.state, ctx(finished + delay));
            assert_eq!(again.action, start("u", "x"));
            assert_eq!(again.state.restart_count, p.state.restart_count);
        }
        st = p.state;
        assert_eq!(st.restart_count, i as i32 + 1);
    }
    // The fourth failure within the window: Failed, no action.
    let c = exited("x", "u", 1, false, 3000);
    let p = plan_task(&t, &[&c], &st, ctx(3001));
    assert_eq!(p.action, None);
    assert_eq!(p.status.phase, Some(TaskPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some("MaxAttemptsReached"));
    assert!(
        p.status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("exit code 1")
    );
    // And it stays Failed.
    let p2 = plan_task(&t, &[&c], &p.state, ctx(90_000));
    assert_eq!(p2.action, None);
    assert_eq!(p2.status.phase, Some(TaskPhase::Failed));
}

#[test]
fn attempts_outside_the_window_do_not_count() {
    let t = task("u", policy(RestartCondition::Always, 1));
    let c = exited("x", "u", 1, false, 0);
    let p = plan_task(&t, &[&c], &TaskState::default(), ctx(1));
    assert_eq!(p.action, start("u", "x"));
    // Second failure 61 s later (window 60 s): still allowed.
    let c = exited("x", "u", 1, false, 61_000);
    let p = plan_task(&t, &[&c], &p.state, ctx(61_001));
    assert!(
        matches!(p.action, Some(Action::Start { .. })) || p.wake_at.is_some(),
        "{p:?}"
    );
    assert_ne!(p.status.phase, Some(TaskPhase::Failed));
}

#[test]
fn healthy_running_for_the_window_resets_backoff() {
    let t = task("u", policy(RestartCondition::Always, 0));
    let st = TaskState {
        consecutive: 5,
        attempts: vec![at(0)],
        restart_count: 5,
        ..Default::default()
    };
    let mut c = container("x", "u", RunState::Running);
    c.started_at = Some(at(1000));
    let p = plan_task(&t, &[&c], &st, ctx(30_000));
    assert_eq!(p.state.consecutive, 5, "not yet");
    assert_eq!(p.wake_at, Some(at(61_000)));
    let p = plan_task(&t, &[&c], &st, ctx(61_000));
    assert_eq!(p.state.consecutive, 0);
    assert!(p.state.attempts.is_empty());
    assert_eq!(p.state.restart_count, 5, "the restart count is history");
    assert_eq!(p.status.phase, Some(TaskPhase::Running));
}

#[test]
fn unhealthy_is_restarted_and_counted() {
    let t = task("u", policy(RestartCondition::Always, 1));
    let mut c = container("x", "u", RunState::Running);
    c.health = Some(HealthState::Unhealthy);
    let p = plan_task(&t, &[&c], &TaskState::default(), ctx(10));
    assert_eq!(
        p.action,
        Some(Action::Restart {
            uid: "u".into(),
            container_id: "x".into()
        })
    );
    assert_eq!(p.state.restart_count, 1);
    assert_eq!(p.status.reason.as_deref(), Some("Unhealthy"));
    // Restarted (new start time), unhealthy again: attempts used up → Failed and stopped.
    c.started_at = Some(at(500));
    let p = plan_task(&t, &[&c], &p.state, ctx(600));
    assert_eq!(
        p.action,
        Some(Action::Stop {
            uid: "u".into(),
            container_id: "x".into()
        })
    );
    assert_eq!(p.status.phase, Some(TaskPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some("MaxAttemptsReached"));
    // Never: unhealthy is reported, not acted upon.
    let t = task("u", policy(RestartCondition::Never, 0));
    let p = plan_task(&t, &[&c], &TaskState::default(), ctx(10));
    assert_eq!(p.action, None);
    assert_eq!(p.status.phase, Some(TaskPhase::Running));
    assert_eq!(p.status.reason.as_deref(), Some("Unhealthy"));
}

#[test]
fn exits_during_an_engine_outage_are_free() {
    let t = task("u", policy(RestartCondition::Always, 1));
    let st = TaskState {
        attempts: vec![at(0)],
        consecutive: 1,
        restart_count: 1,
        ..Default::default()
    };
    let c = exited("x", "u", 143, false, 5_000);
    let outage = Some((at(4_500), at(8_000)));
    let p = plan_task(
        &t,
        &[&c],
        &st,
        Ctx {
            now: at(8_100),
            outage,
        },
    );
    assert_eq!(p.action, start("u", "x"), "restarted at once, not Failed");
    assert_eq!(p.state.attempts.len(), 1, "not counted");
    // Without the outage the same exit uses up the single attempt.
    let p = plan_task(&t, &[&c], &st, ctx(8_100));
    assert_eq!(p.status.phase, Some(TaskPhase::Failed));
}

#[test]
fn missing_and_created_containers() {
    let t = task("u", RestartSettings::default());
    let p = plan_task(&t, &[], &TaskState::default(), ctx(0));
    assert_eq!(p.action, Some(Action::Create { uid: "u".into() }));
    assert_eq!(p.status.phase, Some(TaskPhase::Starting));
    let mut c = container("x", "u", RunState::Created);
    c.started_at = None;
    let p = plan_task(&t, &[&c], &TaskState::default(), ctx(0));
    assert_eq!(p.action, start("u", "x"));
    assert_eq!(p.state.restart_count, 0, "a first start is not a restart");
    let c = container("x", "u", RunState::Running);
    let p = plan_task(&t, &[&c], &TaskState::default(), ctx(0));
    assert_eq!(p.action, None, "a running container is adopted as is");
    assert_eq!(p.status.phase, Some(TaskPhase::Running));
    assert_eq!(p.status.container_id.as_deref(), Some("x"));
}

#[test]
fn image_not_found_waits_for_its_backoff() {
    let t = task("u", RestartSettings::default());
    let st = TaskState {
        failure: Some(ActionFailure {
            reason: "ImageNotFound".into(),
            message: "img: no registry".into(),
            count: 1,
            retry_at: at(1000),
        }),
        ..Default::default()
    };
    let p = plan_task(&t, &[], &st, ctx(10));
    assert_eq!(p.action, None);
    assert_eq!(p.status.phase, Some(TaskPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("ImageNotFound"));
    assert_eq!(p.wake_at, Some(at(1000)));
    let p = plan_task(&t, &[], &st, ctx(1000));
    assert_eq!(p.action, Some(Action::Create { uid: "u".into() }));
    assert_eq!(p.status.phase, Some(TaskPhase::Pending));
}

#[test]
fn rejected_is_terminal() {
    let t = task("u", RestartSettings::default());
    let st = TaskState {
        outcome: Some(Outcome::Rejected {
            message: "invalid mount".into(),
        }),
        ..Default::default()
    };
    let p = plan_task(&t, &[], &st, ctx(0));
    assert_eq!(p.action, None);
    assert_eq!(p.status.phase, Some(TaskPhase::Rejected));
    assert_eq!(p.status.message.as_deref(), Some("invalid mount"));
}

#[test]
fn duplicates_and_shutdown_are_removed() {
    let t = task("u", RestartSettings::default());
    let mut a = container("a", "u", RunState::Running);
    a.started_at = Some(at(100));
    let b = exited("b", "u", 0, false, 50);
    let p = plan_task(&t, &[&b, &a], &TaskState::default(), ctx(200));
    assert_eq!(
        p.action,
        Some(Action::Remove {
            key: "u".into(),
            container_id: "b".into()
        })
    );
    let mut t2 = t.clone();
    t2.desired = DesiredState::Shutdown;
    let p = plan_task(&t2, &[&a], &TaskState::default(), ctx(200));
    assert_eq!(
        p.action,
        Some(Action::Remove {
            key: "u".into(),
            container_id: "a".into()
        })
    );
    let p = plan_task(&t2, &[], &TaskState::default(), ctx(200));
    assert_eq!(p.action, None);
    assert_eq!(p.status.phase, Some(TaskPhase::Shutdown));
}

#[test]
fn orphans_only_of_this_cluster_and_with_a_task_uid() {
    let assigned = BTreeMap::from([("u1".to_string(), task("u1", RestartSettings::default()))]);
    let mut observed = BTreeMap::new();
    for c in [
        container("mine", "u1", RunState::Running),
        container("orphan", "u9", RunState::Running),
    ] {
        observed.insert(c.id.clone(), c);
    }
    let mut other = container("other-cluster", "u8", RunState::Running);
    other.labels.insert(CLUSTER.into(), "c2".into());
    observed.insert(other.id.clone(), other);
    let mut no_uid = container("no-uid", "x", RunState::Running);
    no_uid.labels.remove(TASK_UID);
    observed.insert(no_uid.id.clone(), no_uid);
    let mut unlabelled = container("plain", "x", RunState::Running);
    unlabelled.labels.clear();
    observed.insert(unlabelled.id.clone(), unlabelled);

    let p = plan(
        C,
        &assigned,
        &observed,
        &BTreeMap::new(),
        &BTreeSet::new(),
        ctx(0),
    );
    let actions = p.actions();
    assert_eq!(
        actions,
        vec![&Action::Remove {
            key: "u9".into(),
            container_id: "orphan".into()
        }],
        "only the unassigned container of this cluster is removed"
    );
    // A task with an action in flight is not planned.
    let skip = BTreeSet::from(["u9".to_string(), "u1".to_string()]);
    let p = plan(C, &assigned, &observed, &BTreeMap::new(), &skip, ctx(0));
    assert!(p.actions().is_empty());
    assert!(p.tasks.is_empty());
}

#[test]
fn one_exit_is_decided_once_even_when_its_finish_time_is_refined() {
    // The die event gives an approximate finish time, the inspect the exact one.
    let t = task("u", policy(RestartCondition::Always, 0));
    let from_event = exited("x", "u", 1, false, 100);
    let p = plan_task(&t, &[&from_event], &TaskState::default(), ctx(100));
    assert_eq!(p.action, start("u", "x"));
    let mut from_inspect = from_event.clone();
    from_inspect.finished_at = Some(at(98));
    let p2 = plan_task(&t, &[&from_inspect], &p.state, ctx(101));
    assert_eq!(p2.state.restart_count, 1, "not counted again");
    assert_eq!(p2.state.attempts.len(), 1);
}

#[test]
fn an_oom_kill_reported_after_its_exit_refines_the_reason() {
    // Never: the exit is final as `Error`, then the engine's late OOM report
    // turns it into `OOMKilled` without a second decision.
    let t = task("u", policy(RestartCondition::Never, 0));
    let plain = exited("x", "u", 137, false, 100);
    let p = plan_task(&t, &[&plain], &TaskState::default(), ctx(100));
    assert_eq!(p.status.phase, Some(TaskPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some("Error"));
    assert_eq!(p.status.message.as_deref(), Some("exited with code 137"));
    let oom = exited("x", "u", 137, true, 100);
    let p2 = plan_task(&t, &[&oom], &p.state, ctx(101));
    assert_eq!(p2.status.phase, Some(TaskPhase::Failed));
    assert_eq!(p2.status.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(p2.status.oom_killed, Some(true));
    // A later inspect without the flag does not take it back.
    let p3 = plan_task(&t, &[&plain], &p2.state, ctx(102));
    assert_eq!(p3.status.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(p3.status.oom_killed, Some(true));

    // Always: restarted once, and the pending restart's reason is refined.
    let t = task("u", policy(RestartCondition::Always, 0));
    let p = plan_task(&t, &[&plain], &TaskState::default(), ctx(100));
    assert_eq!(p.action, start("u", "x"));
    let p2 = plan_task(&t, &[&oom], &p.state, ctx(101));
    assert_eq!(p2.state.restart_count, 1, "not counted again");
    assert_eq!(p2.status.oom_killed, Some(true));
}

#[test]
fn a_sigkill_under_a_memory_limit_names_the_limit() {
    use shoal_crds::{ByteQuantity, ResourceLimits, Resources};
    let mut t = task("u", policy(RestartCondition::Never, 0));
    t.template.resources = Some(Resources {
        limits: Some(ResourceLimits {
            memory: Some(ByteQuantity::new("8Mi")),
            ..Default::default()
        }),
        reservations: None,
    });
    let c = exited("x", "u", 137, false, 100);
    let p = plan_task(&t, &[&c], &TaskState::default(), ctx(100));
    assert_eq!(p.status.reason.as_deref(), Some("Error"));
    let m = p.status.message.unwrap_or_default();
    assert!(m.contains("memory limit (8Mi)"), "{m}");
    // Another exit code under the same limit says nothing about memory.
    let c = exited("x", "u", 1, false, 100);
    let p = plan_task(&t, &[&c], &TaskState::default(), ctx(100));
    assert_eq!(p.status.message.as_deref(), Some("exited with code 1"));
}

#[test]
fn a_failed_task_stopped_by_the_agent_stays_failed() {
    let t = task("u", policy(RestartCondition::Always, 1));
    let st = TaskState {
        outcome: Some(Outcome::Failed {
            reason: "MaxAttemptsReached".into(),
            message: "m".into(),
        }),
        restart_count: 1,
        ..Default::default()
    };
    let c = exited("x", "u", 143, false, 500);
    let p = plan_task(&t, &[&c], &st, ctx(600));
    assert_eq!(p.action, None);
    assert_eq!(p.status.phase, Some(TaskPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some("MaxAttemptsReached"));
    assert_eq!(p.state.restart_count, 1);
}

/// Plans one task through `plan`, as an agent that has no memory of it.
fn plan_fresh(t: &AssignedTask, c: &ContainerInfo, now_ms: u64) -> TaskPlan {
    let assigned = BTreeMap::from([(t.uid.clone(), t.clone())]);
    let observed = BTreeMap::from([(c.id.clone(), c.clone())]);
    let mut p = plan(
        C,
        &assigned,
        &observed,
        &BTreeMap::new(),
        &BTreeSet::new(),
        ctx(now_ms),
    );
    p.tasks.remove(&t.uid).unwrap()
}

fn recorded(phase: TaskPhase, restarts: i32, exit: Option<i32>, started_ms: u64) -> Recorded {
    // The store keeps whole seconds.
    let secs = at(started_ms)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Recorded {
        restart_count: restarts,
        phase: Some(phase),
        exit_code: exit,
        started_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        ..Recorded::default()
    }
}

#[test]
fn a_restarted_agent_keeps_a_final_outcome_and_the_restart_count() {
    let mut t = task("u", policy(RestartCondition::OnFailure, 5));
    t.recorded = Recorded {
        reason: Some("MaxAttemptsReached".into()),
        message: Some("5 restarts within 60s".into()),
        ..recorded(TaskPhase::Failed, 5, Some(3), 500)
    };
    let c = exited("x", "u", 3, false, 600);
    let p = plan_fresh(&t, &c, 700);
    assert_eq!(p.action, None, "a Failed task is not started again");
    assert_eq!(p.status.phase, Some(TaskPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some("MaxAttemptsReached"));
    assert_eq!(p.status.restart_count, Some(5));
    assert_eq!(p.status.exit_code, Some(3));

    // Without the record, the same container would be restarted.
    t.recorded = Recorded::default();
    let p = plan_fresh(&t, &c, 700);
    assert_eq!(p.action, start("u", "x"));
}

#[test]
fn a_restarted_agent_counts_on_from_the_record() {
    let t0 = {
        let mut t = task("u", policy(RestartCondition::Always, 0));
        t.recorded = recorded(TaskPhase::Running, 4, None, 0);
        t
    };
    // Running: the count is the record's.
    let running = container("x", "u", RunState::Running);
    let p = plan_fresh(&t0, &running, 100);
    assert_eq!(p.status.restart_count, Some(4));
    // Its next exit counts on from there.
    let c = exited("x", "u", 1, false, 2000);
    let p2 = plan_task(&t0, &[&c], &p.state, ctx(2001));
    assert_eq!(p2.state.restart_count, 5);

    // A restart pending when the agent stopped: the record already counted
    // that exit (same run, to the second), so it is restarted, not recounted.
    let mut t = task("u", policy(RestartCondition::Always, 0));
    t.recorded = recorded(TaskPhase::Starting, 2, Some(1), 1999);
    let p = plan_fresh(&t, &c, 2100);
    assert_eq!(p.action, start("u", "x"));
    assert_eq!(p.status.restart_count, Some(2));
    assert_eq!(p.status.exit_code, Some(1));
    // An exit of a later run (another second) is new and counted.
    t.recorded = recorded(TaskPhase::Starting, 2, Some(1), 900);
    let p = plan_fresh(&t, &c, 2100);
    assert_eq!(p.status.restart_count, Some(3));
}
