//! The local planner: from the assigned tasks, the observed containers and
//! each task's restart state, decide what to do now. Pure: no I/O, the clock
//! is an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shoal_crds::{DesiredState, HealthState, RestartCondition, TaskPhase, TaskStatus};

use crate::engine::{ContainerInfo, RunState};
use crate::labels::CLUSTER;
use crate::task::AssignedTask;

/// Something the executor does to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start the task's container (pulling the image per policy).
    Create {
        /// Task uid.
        uid: String,
    },
    /// Start an existing (exited or never started) container in place.
    Start {
        /// Task uid.
        uid: String,
        /// Container id.
        container_id: String,
    },
    /// Stop, then start again (an unhealthy container).
    Restart {
        /// Task uid.
        uid: String,
        /// Container id.
        container_id: String,
    },
    /// Stop (a task that is `Failed` while its container still runs).
    Stop {
        /// Task uid.
        uid: String,
        /// Container id.
        container_id: String,
    },
    /// Stop and remove a container.
    Remove {
        /// Serialization key: the task uid, or `container:<id>` for a
        /// container without a task.
        key: String,
        /// Container id.
        container_id: String,
    },
}

impl Action {
    /// The key actions are serialized by (one in flight per key).
    pub fn key(&self) -> &str {
        match self {
            Action::Create { uid }
            | Action::Start { uid, .. }
            | Action::Restart { uid, .. }
            | Action::Stop { uid, .. } => uid,
            Action::Remove { key, .. } => key,
        }
    }
}

/// A terminal outcome decided by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited cleanly and the policy does not restart it.
    Succeeded,
    /// Will not be restarted.
    Failed {
        /// `MaxAttemptsReached`, `Error`, `OOMKilled`, `Unhealthy`.
        reason: String,
        /// For a person.
        message: String,
    },
    /// The engine refused the template.
    Rejected {
        /// The engine's message.
        message: String,
    },
}

/// The last action error of a task, retried with backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionFailure {
    /// `ImageNotFound`, `StartFailed`, `EngineUnavailable`.
    pub reason: String,
    /// Details.
    pub message: String,
    /// Failures in a row.
    pub count: u32,
    /// No new attempt before this.
    pub retry_at: SystemTime,
}

/// What the agent remembers of a task between plans (in memory only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskState {
    /// In-place restarts so far.
    pub restart_count: i32,
    /// Counted restarts within the window (their times).
    pub attempts: Vec<SystemTime>,
    /// Restarts since the last reset (drives the backoff).
    pub consecutive: u32,
    /// `startedAt` of the run whose exit was last decided upon.
    pub handled_exit: Option<SystemTime>,
    /// `startedAt` of the instance already restarted for being unhealthy.
    pub handled_unhealthy: Option<SystemTime>,
    /// A pending restart may not happen before this.
    pub not_before: Option<SystemTime>,
    /// Exit code, OOM flag and time of the last exit.
    pub last_exit: Option<(i64, bool, SystemTime)>,
    /// Terminal outcome, once decided.
    pub outcome: Option<Outcome>,
    /// Last action failure.
    pub failure: Option<ActionFailure>,
    /// Start (whole seconds) of the run whose exit the record already
    /// counted, for a state seeded from the record: that exit is not decided
    /// again.
    pub recorded_run: Option<u64>,
}

fn whole_seconds(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

impl TaskState {
    /// The state of a task this agent has no memory of (it restarted):
    /// carried on from the control plane's record, so the restart count goes
    /// on and a final outcome stays final. The backoff and the attempts in
    /// the window start afresh.
    pub fn seeded(task: &AssignedTask) -> TaskState {
        let r = &task.recorded;
        let outcome = match r.phase {
            Some(TaskPhase::Failed) => Some(Outcome::Failed {
                reason: r.reason.clone().unwrap_or_else(|| "Error".into()),
                message: r.message.clone().unwrap_or_default(),
            }),
            Some(TaskPhase::Succeeded) => Some(Outcome::Succeeded),
            Some(TaskPhase::Rejected) => Some(Outcome::Rejected {
                message: r.message.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let last_exit = r.exit_code.map(|code| {
            (
                i64::from(code),
                r.oom_killed,
                r.finished_at.unwrap_or(SystemTime::UNIX_EPOCH),
            )
        });
        TaskState {
            restart_count: r.restart_count,
            last_exit,
            outcome,
            recorded_run: last_exit.and(r.started_at).and_then(whole_seconds),
            ..TaskState::default()
        }
    }
}

/// Planning inputs besides the tasks and containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Now.
    pub now: SystemTime,
    /// The last engine outage (stream lost, reconnected): exits inside it
    /// were caused by the engine restarting and do not count as attempts.
    pub outage: Option<(SystemTime, SystemTime)>,
}

/// Slack around an outage for clock and ordering differences.
const OUTAGE_SLACK: Duration = Duration::from_secs(2);

/// The plan of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// What to do now, if anything.
    pub action: Option<Action>,
    /// The task's new state.
    pub state: TaskState,
    /// The task's status as of this plan (without `lastTransitionTime`).
    pub status: TaskStatus,
    /// Plan again at this time (a backoff ends, a window completes).
    pub wake_at: Option<SystemTime>,
}

/// `t` as a Kubernetes `Time`.
pub fn now_time(t: SystemTime) -> Option<Time> {
    time(t)
}

fn time(t: SystemTime) -> Option<Time> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let ns = i128::try_from(d.as_nanos()).ok()?;
    k8s_openapi::jiff::Timestamp::from_nanosecond(ns)
        .ok()
        .map(Time)
}

fn min_time(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Picks the container that represents the task (running first, then the
/// most recently started/created); the others are duplicates.
fn primary<'a>(
    containers: &[&'a ContainerInfo],
) -> Option<(&'a ContainerInfo, Vec<&'a ContainerInfo>)> {
    let mut sorted: Vec<&ContainerInfo> = containers.to_vec();
    sorted.sort_by_key(|c| {
        (
            std::cmp::Reverse(c.state.is_up()),
            std::cmp::Reverse(c.started_at),
            c.id.clone(),
        )
    });
    let mut it = sorted.into_iter();
    let first = it.next()?;
    Some((first, it.collect()))
}

/// Plans one task given its containers (those carrying its uid).
pub fn plan_task(
    task: &AssignedTask,
    containers: &[&ContainerInfo],
    state: &TaskState,
    ctx: Ctx,
) -> TaskPlan {
    let mut st = state.clone();
    let now = ctx.now;
    let mut status = TaskStatus {
        restart_count: Some(st.restart_count),
        ..Default::default()
    };
    let mut wake_at = None;
    let uid = task.uid.clone();

    let pick = primary(containers);
    if let Some((c, _)) = &pick {
        status.container_id = Some(c.id.clone());
        status.health = c.health;
        status.started_at = c.started_at.and_then(time);
        status.finished_at = c.finished_at.and_then(time);
    }
    let fill_exit = |status: &mut TaskStatus, st: &TaskState| {
        if let Some((code, oom, _)) = st.last_exit {
            status.exit_code = i32::try_from(code).ok();
            status.oom_killed = Some(oom);
        }
    };

    // Shutdown requested: remove whatever exists.
    if task.desired == DesiredState::Shutdown {
        status.phase = Some(TaskPhase::Shutdown);
        fill_exit(&mut status, &st);
        let action = pick.map(|(c, _)| Action::Remove {
            key: uid.clone(),
            container_id: c.id.clone(),
        });
        if action.is_some() {
            status.reason = Some("Stopping".into());
        }
        return TaskPlan {
            action,
            state: st,
            status,
            wake_at,
        };
    }

    // Duplicates (e.g. a create raced a restart): remove the extras first.
    if let Some((_, extras)) = &pick
        && let Some(extra) = extras.first()
    {
        let action = Some(Action::Remove {
            key: uid.clone(),
            container_id: extra.id.clone(),
        });
        status.phase = Some(TaskPhase::Starting);
        status.reason = Some("RemovingDuplicate".into());
        return TaskPlan {
            action,
            state: st,
            status,
            wake_at,
        };
    }

    if let Some(Outcome::Rejected { message }) = &st.outcome {
        status.phase = Some(TaskPhase::Rejected);
        status.reason = Some("Rejected".into());
        status.message = Some(message.clone());
        return TaskPlan {
            action: None,
            state: st,
            status,
            wake_at,
        };
    }

    // An action failed recently: wait for its backoff.
    let blocked = st.failure.as_ref().is_some_and(|f| f.retry_at > now);
    let failure_wake = st.failure.as_ref().map(|f| f.retry_at).filter(|t| *t > now);

    let mut action = None;
    match pick.map(|(c, _)| c) {
        None => {
            if let Some(o) = &st.outcome {
                terminal_status(&mut status, o);
            } else if let Some(f) = &st.failure {
                status.phase = Some(if f.reason == "ImageNotFound" {
                    TaskPhase::Pending
                } else {
                    TaskPhase::Starting
                });
                status.reason = Some(f.reason.clone());
                status.message = Some(f.message.clone());
                if !blocked {
                    action = Some(Action::Create { uid: uid.clone() });
                }
                wake_at = failure_wake;
            } else {
                status.phase = Some(TaskPhase::Starting);
                action = Some(Action::Create { uid: uid.clone() });
            }
        }
        Some(c) if c.state.is_up() => {
            st.failure = None;
            let r = &task.restart;
            let unhealthy = c.health == Some(HealthState::Unhealthy);
            if let Some(o) = st.outcome.clone() {
                // Failed (e.g. unhealthy with attempts used up) yet running: stop it.
                terminal_status(&mut status, &o);
                action = Some(Action::Stop {
                    uid: uid.clone(),
                    container_id: c.id.clone(),
                });
            } else if unhealthy && r.condition != RestartCondition::Never {
                if st.handled_unhealthy != c.started_at {
                    st.handled_unhealthy = c.started_at;
                    st.last_exit = None;
                    match count_failure(&mut st, task, now, false) {
                        Some(o) => {
                            terminal_status(&mut status, &o);
                            st.outcome = Some(o);
                            action = Some(Action::Stop {
                                uid: uid.clone(),
                                container_id: c.id.clone(),
                            });
                        }
                        None => {
                            st.not_before = Some(now + r.backoff(st.consecutive.saturating_sub(1)))
                        }
                    }
                }
                if st.outcome.is_none() {
                    status.phase = Some(TaskPhase::Running);
                    status.reason = Some("Unhealthy".into());
                    match st.not_before {
                        Some(t) if t > now => wake_at = Some(t),
                        _ => {
                            action = Some(Action::Restart {
                                uid: uid.clone(),
                                container_id: c.id.clone(),
                            })
                        }
                    }
                }
            } else {
                status.phase = Some(TaskPhase::Running);
                if unhealthy {
                    status.reason = Some("Unhealthy".into());
                }
                // Healthy running for the window resets backoff and attempts.
                if (st.consecutive > 0 || !st.attempts.is_empty())
                    && let Some(started) = c.started_at
                {
                    let reset_at = started + r.window;
                    if reset_at <= now && !unhealthy {
                        st.consecutive = 0;
                        st.attempts.clear();
                    } else if reset_at > now {
                        wake_at = Some(reset_at);
                    }
                }
            }
        }
        Some(c) => match (c.state, c.finished_at) {
            // Created but never started (a create whose start failed).
            (_, None) | (RunState::Created, _) => {
                status.phase = Some(TaskPhase::Starting);
                if let Some(f) = &st.failure {
                    status.reason = Some(f.reason.clone());
                    status.message = Some(f.message.clone());
                }
                if !blocked {
                    action = Some(Action::Start {
                        uid: uid.clone(),
                        container_id: c.id.clone(),
                    });
                }
                wake_at = failure_wake;
            }
            (_, Some(finished)) => {
                // An exit is identified by the run it ended (its start time).
                let run = c.started_at.unwrap_or(finished);
                if st.handled_exit.is_none()
                    && st.recorded_run.is_some()
                    && st.recorded_run == whole_seconds(run)
                {
                    // Decided before this agent restarted (and counted).
                    st.handled_exit = Some(run);
                }
                // A decided outcome (e.g. Failed, then stopped) is final.
                if st.handled_exit != Some(run) && st.outcome.is_none() {
                    st.handled_exit = Some(run);
                    let code = c.exit_code.unwrap_or(0);
                    st.last_exit = Some((code, c.oom_killed, finished));
                    st.handled_unhealthy = None;
                    decide_exit(&mut st, task, ctx, code, c.oom_killed, finished);
                } else if st.handled_exit == Some(run) && c.oom_killed {
                    refine_oom(&mut st);
                }
                fill_exit(&mut status, &st);
                if let Some(o) = &st.outcome {
                    terminal_status(&mut status, o);
                } else {
                    status.phase = Some(TaskPhase::Starting);
                    status.reason = Some(exit_reason(&st).into());
                    if let Some(f) = &st.failure {
                        status.reason = Some(f.reason.clone());
                        status.message = Some(f.message.clone());
                    }
                    match st.not_before {
                        Some(t) if t > now => {
                            status.reason = Some("BackOff".into());
                            status.message = Some(format!(
                                "restarting in {} ms",
                                t.duration_since(now).unwrap_or_default().as_millis()
                            ));
                            wake_at = Some(t);
                        }
                        _ if blocked => wake_at = failure_wake,
                        _ => {
                            action = Some(Action::Start {
                                uid: uid.clone(),
                                container_id: c.id.clone(),
                            })
                        }
                    }
                }
            }
        },
    }
    fill_exit(&mut status, &st);
    status.restart_count = Some(st.restart_count);
    TaskPlan {
        action,
        state: st,
        status,
        wake_at,
    }
}

/// The engine can report an OOM kill after the exit it caused (its `oom`
/// event and the inspect's flag may trail the `die`). The decision stands (an
/// OOM kill is a failure, as the nonzero exit already was); the record and a
/// final `Error` become `OOMKilled`. Only ever false → true.
fn refine_oom(st: &mut TaskState) {
    let Some((code, oom, _)) = st.last_exit.as_mut() else {
        return;
    };
    *oom = true;
    let code = *code;
    if let Some(Outcome::Failed { reason, message }) = st.outcome.as_mut()
        && reason == "Error"
    {
        *reason = "OOMKilled".into();
        *message = format!("exited with code {code}");
    }
}

/// A SIGKILL under a memory limit is most likely an OOM kill even when the
/// engine did not see it: containerd misses the kill of a process that
/// exceeds the limit within milliseconds of starting.
fn exit_message(task: &AssignedTask, code: i64, oom: bool) -> String {
    let limit = task
        .template
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.memory.as_ref());
    match limit {
        Some(limit) if code == 137 && !oom => format!(
            "exited with code 137 (SIGKILL); the engine reported no OOM kill, \
             but the memory limit ({limit}) is the likely cause"
        ),
        _ => format!("exited with code {code}"),
    }
}

fn exit_reason(st: &TaskState) -> &'static str {
    match st.last_exit {
        Some((_, true, _)) => "OOMKilled",
        Some((0, false, _)) => "Completed",
        Some(_) => "Error",
        None => "Restarting",
    }
}

fn terminal_status(status: &mut TaskStatus, o: &Outcome) {
    match o {
        Outcome::Succeeded => {
            status.phase = Some(TaskPhase::Succeeded);
            status.reason = Some("Completed".into());
        }
        Outcome::Failed { reason, message } => {
            status.phase = Some(TaskPhase::Failed);
            status.reason = Some(reason.clone());
            status.message = Some(message.clone());
        }
        Outcome::Rejected { message } => {
            status.phase = Some(TaskPhase::Rejected);
            status.reason = Some("Rejected".into());
            status.message = Some(message.clone());
        }
    }
}

/// Counts one failure against the policy: `Some(outcome)` when attempts are
/// used up, else records the attempt.
fn count_failure(
    st: &mut TaskState,
    task: &AssignedTask,
    now: SystemTime,
    free: bool,
) -> Option<Outcome> {
    let r = &task.restart;
    if free {
        st.restart_count = st.restart_count.saturating_add(1);
        st.not_before = Some(now);
        return None;
    }
    st.attempts
        .retain(|t| now.duration_since(*t).map(|d| d < r.window).unwrap_or(true));
    if r.max_attempts > 0 && st.attempts.len() >= r.max_attempts as usize {
        return Some(Outcome::Failed {
            reason: "MaxAttemptsReached".into(),
            message: format!(
                "restarted {} times within {:?} (maxAttempts {}); last failure: {}",
                st.attempts.len(),
                r.window,
                r.max_attempts,
                match st.last_exit {
                    Some((code, true, _)) => format!("OOM kill (exit code {code})"),
                    Some((code, false, _)) => format!("exit code {code}"),
                    None => "unhealthy".into(),
                }
            ),
        });
    }
    st.attempts.push(now);
    st.consecutive = st.consecutive.saturating_add(1);
    st.restart_count = st.restart_count.saturating_add(1);
    None
}

/// Decides what a new exit means under the restart policy.
fn decide_exit(
    st: &mut TaskState,
    task: &AssignedTask,
    ctx: Ctx,
    code: i64,
    oom: bool,
    finished: SystemTime,
) {
    let success = code == 0 && !oom;
    let restart = match task.restart.condition {
        RestartCondition::Always => true,
        RestartCondition::OnFailure => !success,
        RestartCondition::Never => false,
    };
    if !restart {
        st.outcome = Some(if success {
            Outcome::Succeeded
        } else {
            Outcome::Failed {
                reason: if oom { "OOMKilled" } else { "Error" }.into(),
                message: exit_message(task, code, oom),
            }
        });
        return;
    }
    let engine_caused = ctx
        .outage
        .is_some_and(|(from, to)| finished + OUTAGE_SLACK >= from && finished <= to + OUTAGE_SLACK);
    if engine_caused {
        count_failure(st, task, ctx.now, true);
        return;
    }
    match count_failure(st, task, ctx.now, false) {
        Some(o) => st.outcome = Some(o),
        None => {
            let delay = task.restart.backoff(st.consecutive.saturating_sub(1));
            st.not_before = Some(finished + delay);
        }
    }
}

/// Removals of containers of this cluster whose task is not assigned. Only
/// with a complete assignment set; containers without a task uid are left
/// alone.
pub fn plan_orphans(
    cluster: &str,
    assigned: &BTreeSet<&str>,
    observed: &BTreeMap<String, ContainerInfo>,
) -> Vec<Action> {
    observed
        .values()
        .filter(|c| c.labels.get(CLUSTER).map(String::as_str) == Some(cluster))
        .filter_map(|c| {
            let uid = c.task_uid()?;
            (!assigned.contains(uid)).then(|| Action::Remove {
                key: uid.to_string(),
                container_id: c.id.clone(),
            })
        })
        .collect()
}

/// The whole plan: every task's plan and the orphan removals.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Per task uid.
    pub tasks: BTreeMap<String, TaskPlan>,
    /// Removals of containers whose task is not assigned.
    pub orphans: Vec<Action>,
}

impl Plan {
    /// Every action, tasks first.
    pub fn actions(&self) -> Vec<&Action> {
        self.tasks
            .values()
            .filter_map(|p| p.action.as_ref())
            .chain(self.orphans.iter())
            .collect()
    }

    /// The earliest wake-up time.
    pub fn wake_at(&self) -> Option<SystemTime> {
        self.tasks
            .values()
            .fold(None, |acc, p| min_time(acc, p.wake_at))
    }
}

/// Plans every assigned task (those in `skip` — actions in flight — are left
/// out) and, with a complete set, the orphan removals.
pub fn plan(
    cluster: &str,
    assigned: &BTreeMap<String, AssignedTask>,
    observed: &BTreeMap<String, ContainerInfo>,
    states: &BTreeMap<String, TaskState>,
    skip: &BTreeSet<String>,
    ctx: Ctx,
) -> Plan {
    let mut by_task: BTreeMap<&str, Vec<&ContainerInfo>> = BTreeMap::new();
    for c in observed.values() {
        if c.labels.get(CLUSTER).map(String::as_str) != Some(cluster) {
            continue;
        }
        if let Some(uid) = c.task_uid() {
            by_task.entry(uid).or_default().push(c);
        }
    }
    let tasks = assigned
        .iter()
        .filter(|(uid, _)| !skip.contains(*uid))
        .map(|(uid, t)| {
            let cs = by_task.get(uid.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let plan = match states.get(uid) {
                Some(st) => plan_task(t, cs, st, ctx),
                None => plan_task(t, cs, &TaskState::seeded(t), ctx),
            };
            (uid.clone(), plan)
        })
        .collect();
    let keys: BTreeSet<&str> = assigned.keys().map(String::as_str).collect();
    let orphans = plan_orphans(cluster, &keys, observed)
        .into_iter()
        .filter(|a| !skip.contains(a.key()))
        .collect();
    Plan { tasks, orphans }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
