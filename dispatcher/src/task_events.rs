//! The Events a Task status change means, comparing the stored status with
//! the one the dispatcher is about to write: `Started`, `Restarted`,
//! `Unhealthy`, `OOMKilled`, `Rejected`, `ImageNotFound` and `Failed`.
//!
//! Messages carry no counters, so repeats aggregate into one Event whose
//! `count` says how often it happened.

use shoal_crds::{HealthState, TaskPhase, TaskStatus};
use shoal_store::events::EventType;

/// One Event to record on the Task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    /// `Normal` or `Warning`.
    pub type_: EventType,
    /// The reason.
    pub reason: String,
    /// The message.
    pub message: String,
}

fn ev(type_: EventType, reason: &str, message: String) -> TaskEvent {
    TaskEvent {
        type_,
        reason: reason.to_owned(),
        message,
    }
}

/// How the last exit reads: `exit code 3`, `OOM kill (exit code 137)`, or
/// the status reason if there was no exit (e.g. `Unhealthy`).
fn last_exit(st: &TaskStatus) -> String {
    match (st.exit_code, st.oom_killed == Some(true)) {
        (Some(code), true) => format!("OOM kill (exit code {code})"),
        (Some(code), false) => format!("exit code {code}"),
        (None, true) => "OOM kill".into(),
        (None, false) => match st.reason.as_deref() {
            Some("Unhealthy") => "a failed health check".into(),
            Some(r) if !r.is_empty() => r.to_owned(),
            _ => "an unknown cause".into(),
        },
    }
}

/// The Events for a change from `old` to `new` on `host`.
pub fn transitions(old: Option<&TaskStatus>, new: &TaskStatus, host: &str) -> Vec<TaskEvent> {
    let empty = TaskStatus::default();
    let old = old.unwrap_or(&empty);
    let mut out = Vec::new();
    let on = if host.is_empty() {
        String::new()
    } else {
        format!(" on {host}")
    };

    let restarts = |s: &TaskStatus| s.restart_count.unwrap_or(0);
    let restarted = restarts(new) > restarts(old);
    let exited_again =
        restarted || (new.finished_at.is_some() && new.finished_at != old.finished_at);

    if new.oom_killed == Some(true) && (old.oom_killed != Some(true) || exited_again) {
        let code = new
            .exit_code
            .map(|c| format!(" (exit code {c})"))
            .unwrap_or_default();
        out.push(ev(
            EventType::Warning,
            "OOMKilled",
            format!("Container was killed for running out of memory{code}{on}"),
        ));
    }
    if restarted {
        out.push(ev(
            EventType::Warning,
            "Restarted",
            format!("Container restarted{on} after {}", last_exit(new)),
        ));
    }
    let running = new.phase == Some(TaskPhase::Running);
    let started_again = new.started_at.is_some() && new.started_at != old.started_at;
    if running && (old.phase != Some(TaskPhase::Running) || started_again) {
        out.push(ev(
            EventType::Normal,
            "Started",
            format!("Started container{on}"),
        ));
    }
    if new.health == Some(HealthState::Unhealthy) && old.health != Some(HealthState::Unhealthy) {
        let detail = new
            .message
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        out.push(ev(
            EventType::Warning,
            "Unhealthy",
            format!("Health check failed{on}{detail}"),
        ));
    }
    let message = || {
        new.message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "no details".into())
    };
    if new.phase == Some(TaskPhase::Rejected) && old.phase != Some(TaskPhase::Rejected) {
        out.push(ev(
            EventType::Warning,
            "Rejected",
            format!("Rejected{on}: {}", message()),
        ));
    }
    if new.reason.as_deref() == Some("ImageNotFound")
        && old.reason.as_deref() != Some("ImageNotFound")
    {
        out.push(ev(EventType::Warning, "ImageNotFound", message()));
    }
    if new.phase == Some(TaskPhase::Failed) && old.phase != Some(TaskPhase::Failed) {
        let reason = new
            .reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .unwrap_or("Failed");
        out.push(ev(EventType::Warning, reason, message()));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn running(restarts: i32, started: &str) -> TaskStatus {
        TaskStatus {
            phase: Some(TaskPhase::Running),
            restart_count: Some(restarts),
            started_at: Some(t(started)),
            ..Default::default()
        }
    }

    fn reasons(evs: &[TaskEvent]) -> Vec<&str> {
        evs.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn start_then_restart_then_nothing_new() {
        let starting = TaskStatus {
            phase: Some(TaskPhase::Starting),
            ..Default::default()
        };
        let up = running(0, "2026-01-01T00:00:00Z");
        let evs = transitions(Some(&starting), &up, "host-a");
        assert_eq!(reasons(&evs), ["Started"]);
        assert_eq!(evs[0].message, "Started container on host-a");
        assert_eq!(evs[0].type_, EventType::Normal);

        let mut again = running(1, "2026-01-01T00:00:05Z");
        again.exit_code = Some(3);
        let evs = transitions(Some(&up), &again, "host-a");
        assert_eq!(reasons(&evs), ["Restarted", "Started"]);
        assert_eq!(
            evs[0].message,
            "Container restarted on host-a after exit code 3"
        );
        assert_eq!(evs[0].type_, EventType::Warning);

        assert!(transitions(Some(&again), &again, "host-a").is_empty());
    }

    #[test]
    fn oom_unhealthy_rejected_image_not_found_failed() {
        let up = running(0, "2026-01-01T00:00:00Z");
        let mut oom = running(1, "2026-01-01T00:00:09Z");
        oom.oom_killed = Some(true);
        oom.exit_code = Some(137);
        let evs = transitions(Some(&up), &oom, "h");
        assert_eq!(reasons(&evs), ["OOMKilled", "Restarted", "Started"]);
        assert!(evs[1].message.ends_with("after OOM kill (exit code 137)"));

        let mut sick = up.clone();
        sick.health = Some(HealthState::Unhealthy);
        sick.reason = Some("Unhealthy".into());
        assert_eq!(reasons(&transitions(Some(&up), &sick, "h")), ["Unhealthy"]);

        let rejected = TaskStatus {
            phase: Some(TaskPhase::Rejected),
            reason: Some("Rejected".into()),
            message: Some("invalid mount".into()),
            ..Default::default()
        };
        let evs = transitions(None, &rejected, "h");
        assert_eq!(reasons(&evs), ["Rejected"]);
        assert_eq!(evs[0].message, "Rejected on h: invalid mount");

        let missing = TaskStatus {
            phase: Some(TaskPhase::Pending),
            reason: Some("ImageNotFound".into()),
            message: Some("no such image: x:1".into()),
            ..Default::default()
        };
        let evs = transitions(None, &missing, "h");
        assert_eq!(reasons(&evs), ["ImageNotFound"]);
        assert_eq!(evs[0].message, "no such image: x:1");

        let failed = TaskStatus {
            phase: Some(TaskPhase::Failed),
            reason: Some("MaxAttemptsReached".into()),
            message: Some("restarted 3 times".into()),
            ..Default::default()
        };
        assert_eq!(
            reasons(&transitions(Some(&up), &failed, "h")),
            ["MaxAttemptsReached"]
        );
    }
}
