//! A task as the agent sees it: identity, frozen template and parsed restart
//! settings.

use std::time::{Duration, SystemTime};

use shoal_crds::{ContainerTemplate, DesiredState, RestartCondition, Task, TaskPhase, TaskStatus};

use crate::labels::{TaskIdentity, derived_uid};

/// Restart settings with DESIGN.md's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartSettings {
    /// When to restart.
    pub condition: RestartCondition,
    /// Delay before the first restart.
    pub delay: Duration,
    /// Upper bound of the backoff.
    pub max_delay: Duration,
    /// Restarts allowed within `window` (0: unlimited).
    pub max_attempts: u32,
    /// Healthy running time that resets backoff and attempts.
    pub window: Duration,
}

impl Default for RestartSettings {
    fn default() -> Self {
        RestartSettings {
            condition: RestartCondition::Always,
            delay: Duration::ZERO,
            max_delay: Duration::from_secs(30),
            max_attempts: 0,
            window: Duration::from_secs(60),
        }
    }
}

impl RestartSettings {
    /// From the task's policy; unparsable values (validation refuses them)
    /// fall back to the defaults.
    pub fn from_policy(p: Option<&shoal_crds::RestartPolicy>) -> RestartSettings {
        let d = RestartSettings::default();
        let Some(p) = p else { return d };
        let dur = |v: &Option<shoal_crds::DurationValue>, def: Duration| {
            v.as_ref().and_then(|v| v.parse().ok()).unwrap_or(def)
        };
        RestartSettings {
            condition: p.condition.unwrap_or_default(),
            delay: dur(&p.delay, d.delay),
            max_delay: dur(&p.max_delay, d.max_delay),
            max_attempts: p
                .max_attempts
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            window: dur(&p.window, d.window),
        }
    }

    /// Delay before restart number `n` (0-based) since the last reset:
    /// `delay`, then doubling (from 100 ms when `delay` is 0), capped at
    /// `max_delay`.
    pub fn backoff(&self, n: u32) -> Duration {
        let d = if self.delay.is_zero() {
            if n == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(100).saturating_mul(1u32 << (n - 1).min(20))
            }
        } else {
            self.delay.saturating_mul(1u32 << n.min(20))
        };
        d.min(self.max_delay.max(self.delay))
    }
}

/// One task assigned to this host.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignedTask {
    /// Task uid.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Task name.
    pub name: String,
    /// Owning service.
    pub service: String,
    /// Replica slot.
    pub slot: Option<i32>,
    /// Template hash (as the orchestrator computed it).
    pub template_hash: String,
    /// Frozen template.
    pub template: ContainerTemplate,
    /// Restart settings.
    pub restart: RestartSettings,
    /// Run or shut down.
    pub desired: DesiredState,
    /// `onHostLoss: Fence`: killed when the control plane has not been heard
    /// from for [`shoal_crds::FENCE_TIMEOUT`].
    pub fence: bool,
    /// The status the control plane has on record (this or an earlier
    /// agent's last report), where an agent without memory of the task
    /// carries on from.
    pub recorded: Recorded,
}

/// The parts of a recorded status an agent carries on from after a restart:
/// the restart count, the last exit and a final outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Restarts so far.
    pub restart_count: i32,
    /// The phase reported last.
    pub phase: Option<TaskPhase>,
    /// Its reason.
    pub reason: Option<String>,
    /// Its message.
    pub message: Option<String>,
    /// Exit code of the last run, if it ended.
    pub exit_code: Option<i32>,
    /// Whether the last run was OOM-killed.
    pub oom_killed: bool,
    /// When the container's current run started (whole seconds: the store
    /// keeps no more).
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
}

impl Recorded {
    /// From a task's status (absent: nothing on record).
    pub fn from_status(s: Option<&TaskStatus>) -> Recorded {
        let Some(s) = s else {
            return Recorded::default();
        };
        let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
            t.as_ref().map(|t| SystemTime::from(t.0))
        };
        Recorded {
            restart_count: s.restart_count.unwrap_or(0),
            phase: s.phase,
            reason: s.reason.clone(),
            message: s.message.clone(),
            exit_code: s.exit_code,
            oom_killed: s.oom_killed.unwrap_or(false),
            started_at: time(&s.started_at),
            finished_at: time(&s.finished_at),
        }
    }
}

impl AssignedTask {
    /// From a Task; a task without a uid gets one derived from its namespace
    /// and name.
    pub fn from_task(t: &Task) -> AssignedTask {
        let namespace = t
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = t.metadata.name.clone().unwrap_or_default();
        let uid = t
            .metadata
            .uid
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| derived_uid(&namespace, &name));
        AssignedTask {
            uid,
            namespace,
            name,
            service: t.spec.service.clone(),
            slot: t.spec.slot,
            template_hash: t.spec.template_hash.clone(),
            template: t.spec.template.clone(),
            restart: RestartSettings::from_policy(t.spec.restart_policy.as_ref()),
            // A task marked for deletion is on its way out: stop it, so the
            // dispatcher can release it once the container is gone.
            desired: if t.metadata.deletion_timestamp.is_some() {
                DesiredState::Shutdown
            } else {
                t.spec.desired_state()
            },
            fence: t.spec.on_host_loss == Some(shoal_crds::HostLossPolicy::Fence),
            recorded: Recorded::from_status(t.status.as_ref()),
        }
    }

    /// This task fenced: shut down at once (SIGKILL, no grace period).
    pub fn fenced(&self) -> AssignedTask {
        let mut t = self.clone();
        t.desired = DesiredState::Shutdown;
        t.template.stop_grace_period = Some(shoal_crds::DurationValue::new("0s"));
        t
    }

    /// Its identity on the engine in cluster `cluster`.
    pub fn identity<'a>(&'a self, cluster: &'a str) -> TaskIdentity<'a> {
        TaskIdentity {
            cluster,
            namespace: &self.namespace,
            service: &self.service,
            slot: self.slot,
            uid: &self.uid,
            template_hash: &self.template_hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_sequence() {
        let s = RestartSettings::default();
        let ms = |n| s.backoff(n).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3)], [0, 100, 200, 400]);
        assert_eq!(s.backoff(30), Duration::from_secs(30));
        let s = RestartSettings {
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            ..Default::default()
        };
        let secs = |n| s.backoff(n).as_secs();
        assert_eq!([secs(0), secs(1), secs(2), secs(3)], [1, 2, 4, 5]);
    }
}
