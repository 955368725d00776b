//! Rollouts: order, delay, monitor, failure actions and rollback.

use shoal_crds::{DurationValue, FailureAction, HealthState, UpdateOrder};

use super::*;

fn with_update(s: &Service, u: UpdateConfig) -> Service {
    let mut s = s.clone();
    s.spec.update = Some(u);
    s
}

fn started(mut t: Task, at: i64) -> Task {
    t.status.get_or_insert_with(Default::default).started_at = Some(Time(ts(at)));
    t
}

fn created(mut t: Task, at: i64) -> Task {
    t.metadata.creation_timestamp = Some(Time(ts(at)));
    t
}

fn restarted(mut t: Task, n: i32) -> Task {
    t.status.get_or_insert_with(Default::default).restart_count = Some(n);
    t
}

fn update_of(p: &Plan) -> UpdateStatus {
    p.status
        .as_ref()
        .and_then(|s| s.update.clone())
        .unwrap_or_else(|| panic!("no update status in {p:?}"))
}

/// `s` with the rollout on record rolled back to the template `to` since
/// `since`.
fn rolling_back(s: &Service, state: UpdateState, to: &str, since: i64) -> Service {
    let mut s = rolling(s, state, since);
    if let Some(u) = s.status.as_mut().and_then(|st| st.update.as_mut()) {
        u.rollback_to = Some(to.into());
        u.message = Some("1 of 3 new tasks failed: web-0-a2 (restarted 2x)".into());
    }
    s
}

#[test]
fn a_template_change_starts_a_rollout_on_record() {
    use TaskPhase::*;
    let s = service(2);
    let tasks = [
        old(task(&s, 0, 1, Running, Some("h1"))),
        old(task(&s, 1, 1, Running, Some("h2"))),
    ];
    let p = run(&s, &tasks, &hosts(), 100);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::Updating);
    assert_eq!(u.template_hash, hash_of(&s));
    assert_eq!(u.started_at, Some(Time(ts(100))));
    // A service that never changed its template has no rollout.
    let fresh = [task(&s, 0, 1, Running, Some("h1"))];
    let p = run(&service(1), &fresh, &hosts(), 100);
    assert_eq!(p.status.and_then(|s| s.update), None);
}

#[test]
fn start_first_starts_the_replacement_beside_the_old_task() {
    use TaskPhase::*;
    let s = with_update(
        &service(3),
        UpdateConfig {
            order: Some(UpdateOrder::StartFirst),
            ..Default::default()
        },
    );
    let s = rolling(&s, UpdateState::Updating, 0);
    let olds = || {
        vec![
            old(task(&s, 0, 1, Running, Some("h1"))),
            old(task(&s, 1, 1, Running, Some("h2"))),
            old(task(&s, 2, 1, Running, Some("h3"))),
        ]
    };
    // The first batch: a new task in slot 0, the old one untouched.
    let p = run(&s, &olds(), &hosts(), 100);
    assert_eq!(p.actions, vec![create(0, 2)]);

    // While the new task starts, the old one runs on and nothing else moves.
    let mut tasks = olds();
    tasks.push(task(&s, 0, 2, Starting, Some("h2")));
    let p = run(&s, &tasks, &hosts(), 101);
    assert_eq!(p.actions, vec![]);

    // Once it runs, the old one stops (kept as history) and the next slot
    // gets its new task.
    let mut tasks = olds();
    tasks.push(started(task(&s, 0, 2, Running, Some("h2")), 101));
    let p = run(&s, &tasks, &hosts(), 102);
    assert_eq!(p.actions, vec![shutdown("web-0-a1"), create(1, 2)]);

    // A new task that fails leaves its old one running (failureAction Pause).
    let mut tasks = olds();
    tasks.push(task(&s, 0, 2, Failed, Some("h2")));
    let p = run(&s, &tasks, &hosts(), 102);
    assert_eq!(p.actions, vec![]);
    assert_eq!(update_of(&p).state, UpdateState::Paused);
}

#[test]
fn delay_spaces_the_batches_after_the_new_tasks_are_ready() {
    use TaskPhase::*;
    let s = with_update(
        &service(3),
        UpdateConfig {
            delay: Some(DurationValue::new("10s")),
            ..Default::default()
        },
    );
    let s = rolling(&s, UpdateState::Updating, 0);
    let tasks = [
        stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
        started(task(&s, 0, 2, Running, Some("h1")), 95),
        old(task(&s, 1, 1, Running, Some("h2"))),
        old(task(&s, 2, 1, Running, Some("h3"))),
    ];
    let p = run(&s, &tasks, &hosts(), 100);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(5)));
    let p = run(&s, &tasks, &hosts(), 105);
    assert_eq!(p.actions, vec![shutdown("web-1-a1")]);
}

#[test]
fn the_rollout_completes_only_after_the_new_tasks_stayed_ready_for_monitor() {
    use TaskPhase::*;
    let s = with_update(
        &service(2),
        UpdateConfig {
            monitor: Some(DurationValue::new("10s")),
            ..Default::default()
        },
    );
    let s = rolling(&s, UpdateState::Updating, 0);
    let tasks = [
        stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
        stopped(old(task(&s, 1, 1, Shutdown, Some("h2")))),
        started(task(&s, 0, 2, Running, Some("h1")), 90),
        started(task(&s, 1, 2, Running, Some("h2")), 96),
    ];
    let p = run(&s, &tasks, &hosts(), 100);
    assert_eq!(update_of(&p).state, UpdateState::Updating);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(6)));
    let (st, reason, msg) = condition(&p, "Progressing");
    assert_eq!((st, reason), (ConditionStatus::True, "Updating"));
    assert!(msg.contains("watching the new tasks for 6s"), "{msg}");

    // A restart within the window fails the update.
    let mut bad = tasks.clone();
    bad[3] = restarted(bad[3].clone(), 1);
    let p = run(&s, &bad, &hosts(), 100);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::Paused);
    assert!(
        u.message
            .as_deref()
            .unwrap_or("")
            .contains("web-1-a2 (restarted 1x)"),
        "{u:?}"
    );
    assert_eq!(condition(&p, "Progressing").1, "UpdatePaused");

    let p = run(&s, &tasks, &hosts(), 106);
    assert_eq!(update_of(&p).state, UpdateState::Completed);
    assert_eq!(
        condition(&p, "Progressing"),
        (ConditionStatus::False, "Complete", "2/2 tasks up to date")
    );
    // Once complete, later restarts are the restart policy's business.
    let done = {
        let mut d = s.clone();
        d.status = p.status.clone();
        d
    };
    let p = run(&done, &bad, &hosts(), 200);
    assert_eq!(update_of(&p).state, UpdateState::Completed);
}

#[test]
fn max_failure_ratio_tolerates_that_many_failures() {
    use TaskPhase::*;
    let s = with_update(
        &service(3),
        UpdateConfig {
            max_failure_ratio: Some(0.34),
            ..Default::default()
        },
    );
    let s = rolling(&s, UpdateState::Updating, 0);
    let mut tasks = vec![
        stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
        task(&s, 0, 2, Failed, Some("h1")),
        old(task(&s, 1, 1, Running, Some("h2"))),
        old(task(&s, 2, 1, Running, Some("h3"))),
    ];
    // 1 of 3 failed (0.33 <= 0.34): the rollout goes on.
    let p = run(&s, &tasks, &hosts(), 100);
    assert_eq!(update_of(&p).state, UpdateState::Updating);
    assert_eq!(p.actions, vec![shutdown("web-1-a1")]);
    // 2 of 3: paused.
    tasks[2] = stopped(old(task(&s, 1, 1, Shutdown, Some("h2"))));
    tasks.push(task(&s, 1, 2, Rejected, Some("h2")));
    let p = run(&s, &tasks, &hosts(), 100);
    assert_eq!(update_of(&p).state, UpdateState::Paused);
}

#[test]
fn continue_carries_on_past_failures() {
    use TaskPhase::*;
    let s = with_update(
        &service(2),
        UpdateConfig {
            failure_action: Some(FailureAction::Continue),
            ..Default::default()
        },
    );
    let s = rolling(&s, UpdateState::Updating, 0);
    let mut unhealthy = started(task(&s, 0, 2, Running, Some("h1")), 50);
    if let Some(st) = unhealthy.status.as_mut() {
        st.health = Some(HealthState::Unhealthy);
    }
    let tasks = [
        stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
        task(&s, 0, 2, Failed, Some("h1")),
        old(task(&s, 1, 1, Running, Some("h2"))),
    ];
    let p = run(&s, &tasks, &hosts(), 100);
    assert_eq!(update_of(&p).state, UpdateState::Updating);
    assert_eq!(p.actions, vec![shutdown("web-1-a1")]);
    // The same with Pause: an unhealthy new task stops the rollout.
    let paused = rolling(&service(2), UpdateState::Updating, 0);
    let tasks = [
        stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
        unhealthy,
        old(task(&s, 1, 1, Running, Some("h2"))),
    ];
    let p = run(&paused, &tasks, &hosts(), 100);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::Paused);
    assert!(
        u.message.as_deref().unwrap_or("").contains("unhealthy"),
        "{u:?}"
    );
    assert_eq!(p.actions, vec![]);
}

#[test]
fn rollback_restores_the_previous_template_batch_by_batch() {
    use TaskPhase::*;
    let s = with_update(
        &service(3),
        UpdateConfig {
            failure_action: Some(FailureAction::Rollback),
            ..Default::default()
        },
    );
    let updating = rolling(&s, UpdateState::Updating, 0);
    let tasks = vec![
        stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
        restarted(started(task(&s, 0, 2, Running, Some("h1")), 90), 2),
        old(task(&s, 1, 1, Running, Some("h2"))),
        old(task(&s, 2, 1, Running, Some("h3"))),
    ];
    // The failure turns the rollout around at once: the new task is the
    // first to go, and nothing more of the new template starts.
    let p = run(&updating, &tasks, &hosts(), 100);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::RollingBack);
    assert_eq!(u.rollback_to.as_deref(), Some("old"));
    assert_eq!(u.started_at, Some(Time(ts(100))));
    assert_eq!(p.template_hash, "old");
    assert_eq!(p.actions, vec![shutdown("web-0-a2")]);
    assert_eq!(condition(&p, "Progressing").1, "RollingBack");

    // The slot emptied, its task comes back with the old template, copied
    // from a task that has it.
    let back = rolling_back(&s, UpdateState::RollingBack, "old", 100);
    let mut tasks = tasks;
    tasks[1] = stopped(restarted(task(&s, 0, 2, Shutdown, Some("h1")), 2));
    let p = run(&back, &tasks, &hosts(), 101);
    assert_eq!(p.actions, vec![create(0, 3)]);
    assert_eq!(p.template_hash, "old");
    let from = p.template_from.clone().unwrap_or_default();
    assert!(["web-1-a1", "web-2-a1"].contains(&from.as_str()), "{from}");

    // Restored and ready for the monitor period: rolled back for good.
    tasks.push(created(
        started(old(task(&s, 0, 3, Running, Some("h1"))), 102),
        101,
    ));
    let p = run(&back, &tasks, &hosts(), 110);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::RolledBack);
    let (st, reason, msg) = condition(&p, "Progressing");
    assert_eq!((st, reason), (ConditionStatus::False, "RolledBack"));
    assert!(msg.contains("web-0-a2 (restarted 2x)"), "{msg}");

    // Rolled back, the spec's template does not come back by itself…
    let done = rolling_back(&s, UpdateState::RolledBack, "old", 100);
    let p = run(&done, &tasks, &hosts(), 200);
    assert_eq!(p.actions, vec![]);
    assert_eq!(update_of(&p).state, UpdateState::RolledBack);
    // …but a new template starts a new rollout.
    let mut next = done.clone();
    next.spec.template.image = "busybox:2".into();
    let p = run(&next, &tasks, &hosts(), 200);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::Updating);
    assert_eq!(u.template_hash, hash_of(&next));
    assert_eq!(p.template_from, None);
}

#[test]
fn a_failing_rollback_pauses_and_a_first_template_cannot_roll_back() {
    use TaskPhase::*;
    let s = with_update(
        &service(2),
        UpdateConfig {
            failure_action: Some(FailureAction::Rollback),
            ..Default::default()
        },
    );
    // Rolling back, a restored task that fails pauses the rollback.
    let back = rolling_back(&s, UpdateState::RollingBack, "old", 100);
    let tasks = [
        stopped(task(&s, 0, 2, Shutdown, Some("h1"))),
        created(old(task(&s, 0, 3, Failed, Some("h1"))), 101),
        task(&s, 1, 2, Running, Some("h2")),
    ];
    let p = run(&back, &tasks, &hosts(), 110);
    assert_eq!(update_of(&p).state, UpdateState::RollbackPaused);
    assert_eq!(p.actions, vec![]);
    assert_eq!(condition(&p, "Progressing").1, "RollbackPaused");

    // Nothing ran before: nothing to roll back to, so it pauses and says so.
    let first = rolling(&s, UpdateState::Updating, 0);
    let tasks = [
        task(&s, 0, 1, Failed, Some("h1")),
        task(&s, 1, 1, Running, Some("h2")),
    ];
    let p = run(&first, &tasks, &hosts(), 100);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::Paused);
    assert!(
        u.message
            .as_deref()
            .unwrap_or("")
            .contains("no earlier template"),
        "{u:?}"
    );
}

fn resumed(s: &Service, value: &str) -> Service {
    let mut s = s.clone();
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(shoal_crds::RESUME_ANNOTATION.into(), value.into());
    s
}

#[test]
fn resume_goes_on_with_a_paused_rollout_once_per_value() {
    use TaskPhase::*;
    let s = rolling(&service(3), UpdateState::Paused, 0);
    let tasks = [
        stopped(old(task(&s, 0, 1, Shutdown, Some("h1")))),
        created(task(&s, 0, 2, Failed, Some("h1")), 10),
        old(task(&s, 1, 1, Running, Some("h2"))),
        old(task(&s, 2, 1, Running, Some("h3"))),
    ];
    let p = run(&s, &tasks, &hosts(), 100);
    assert_eq!(update_of(&p).state, UpdateState::Paused);
    assert_eq!(p.actions, vec![]);

    // Resumed as if it started now: the failure that paused it is not
    // counted again, and the next slot is replaced.
    let r = resumed(&s, "1");
    let p = run(&r, &tasks, &hosts(), 100);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::Updating);
    assert_eq!(u.started_at, Some(Time(ts(100))));
    assert_eq!(u.resumed.as_deref(), Some("1"));
    assert_eq!(p.actions, vec![shutdown("web-1-a1")]);

    // Paused again later: the value already seen resumes nothing.
    let mut again = r.clone();
    let mut paused = u.clone();
    paused.state = UpdateState::Paused;
    again.status.get_or_insert_with(Default::default).update = Some(paused);
    let p = run(&again, &tasks, &hosts(), 200);
    assert_eq!(update_of(&p).state, UpdateState::Paused);
    assert_eq!(p.actions, vec![]);
    // A new value does.
    let p = run(&resumed(&again, "2"), &tasks, &hosts(), 200);
    assert_eq!(update_of(&p).state, UpdateState::Updating);
}

#[test]
fn a_rollout_records_the_resume_value_it_starts_with() {
    use TaskPhase::*;
    // An annotation left from an earlier resume must not resume this
    // rollout's future pause.
    let s = resumed(&service(2), "old");
    let tasks = [
        old(task(&s, 0, 1, Running, Some("h1"))),
        old(task(&s, 1, 1, Running, Some("h2"))),
    ];
    let p = run(&s, &tasks, &hosts(), 100);
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::Updating);
    assert_eq!(u.resumed.as_deref(), Some("old"));
}

#[test]
fn resume_goes_on_with_a_paused_rollback() {
    use TaskPhase::*;
    let s = rolling_back(&service(3), UpdateState::RollbackPaused, "old", 0);
    let p = run(
        &resumed(&s, "1"),
        &[old(task(&s, 0, 1, Running, Some("h1")))],
        &hosts(),
        100,
    );
    let u = update_of(&p);
    assert_eq!(u.state, UpdateState::RollingBack);
    assert_eq!(u.message.as_deref(), Some("rollback resumed"));
}
