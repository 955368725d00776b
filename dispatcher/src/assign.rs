//! Which tasks a host's agent must know, and the set/delta messages that tell
//! it: a pure tracker per session, fed with task objects.

use std::collections::BTreeMap;

use shoal_crds::Task;
use shoal_proto::{Assignment, AssignmentDelta, AssignmentSet};

/// Whether the agent of `host` must be told about `task`: it is bound to the
/// host. Tasks with desired state Shutdown or marked for deletion stay in the
/// set until they are deleted, so the agent stops their containers and
/// reports it.
pub fn assigned_to(task: &Task, host: &str) -> bool {
    task.spec.host_name.as_deref() == Some(host)
}

/// The assignment for a task: a task marked for deletion goes out with
/// desired state Shutdown, so the agent stops its container and reports it
/// gone (which releases the finalizer).
pub fn assignment(mut task: Task) -> Assignment {
    if task.metadata.deletion_timestamp.is_some() {
        task.spec.desired_state = Some(shoal_crds::DesiredState::Shutdown);
    }
    Assignment::from(task)
}

/// The assignments sent on one session, with their sequence numbers.
#[derive(Debug, Default)]
pub struct Tracker {
    sequence: u64,
    /// Task uid → resourceVersion last sent.
    sent: BTreeMap<String, Option<String>>,
}

impl Tracker {
    /// A tracker for a new session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The complete set for these tasks (already filtered to the host).
    pub fn complete(&mut self, tasks: impl IntoIterator<Item = Task>) -> AssignmentSet {
        self.sequence += 1;
        self.sent.clear();
        let mut assignments = Vec::new();
        for t in tasks {
            if let Some(uid) = t.metadata.uid.clone() {
                self.sent.insert(uid, t.metadata.resource_version.clone());
                assignments.push(assignment(t));
            }
        }
        AssignmentSet {
            sequence: self.sequence,
            assignments,
        }
    }

    /// The delta for one changed task (`assigned` = still assigned to this
    /// host and not deleted), or `None` if the agent already has it.
    pub fn change(&mut self, task: Task, assigned: bool) -> Option<AssignmentDelta> {
        let uid = task.metadata.uid.clone()?;
        let previous_sequence = self.sequence;
        if assigned {
            if self.sent.get(&uid) == Some(&task.metadata.resource_version) {
                return None;
            }
            self.sequence += 1;
            self.sent
                .insert(uid, task.metadata.resource_version.clone());
            Some(AssignmentDelta {
                sequence: self.sequence,
                previous_sequence,
                upserted: vec![assignment(task)],
                removed_task_uids: vec![],
            })
        } else {
            self.sent.remove(&uid)?;
            self.sequence += 1;
            Some(AssignmentDelta {
                sequence: self.sequence,
                previous_sequence,
                upserted: vec![],
                removed_task_uids: vec![uid],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crds::{ContainerTemplate, TaskSpec};

    fn task(uid: &str, rv: &str, host: Option<&str>) -> Task {
        let mut t = Task::new(
            uid,
            TaskSpec {
                service: "web".into(),
                slot: Some(0),
                template: ContainerTemplate {
                    image: "x".into(),
                    ..Default::default()
                },
                template_hash: "h".into(),
                host_name: host.map(str::to_owned),
                ..Default::default()
            },
        );
        t.metadata.uid = Some(uid.into());
        t.metadata.namespace = Some("default".into());
        t.metadata.resource_version = Some(rv.into());
        t
    }

    #[test]
    fn set_then_deltas_with_increasing_sequences() {
        let mut tr = Tracker::new();
        let set = tr.complete([task("a", "1", Some("h1"))]);
        assert_eq!(set.sequence, 1);
        assert_eq!(set.assignments.len(), 1);
        // Same version again: nothing to send.
        assert!(tr.change(task("a", "1", Some("h1")), true).is_none());
        let d = tr.change(task("a", "2", Some("h1")), true).unwrap();
        assert_eq!(
            (d.sequence, d.previous_sequence, d.upserted.len()),
            (2, 1, 1)
        );
        let d = tr.change(task("b", "3", Some("h1")), true).unwrap();
        assert_eq!((d.sequence, d.previous_sequence), (3, 2));
        let d = tr.change(task("a", "4", Some("h1")), false).unwrap();
        assert_eq!(d.removed_task_uids, ["a"]);
        // Removing what the agent does not have sends nothing.
        assert!(tr.change(task("z", "5", None), false).is_none());
        // A new complete set resets what was sent.
        let set = tr.complete([task("b", "3", Some("h1"))]);
        assert_eq!(set.sequence, 5);
        assert!(tr.change(task("b", "3", Some("h1")), true).is_none());
    }

    #[test]
    fn only_tasks_bound_to_the_host_are_assigned() {
        assert!(assigned_to(&task("a", "1", Some("h1")), "h1"));
        assert!(!assigned_to(&task("a", "1", Some("h2")), "h1"));
        assert!(!assigned_to(&task("a", "1", None), "h1"));
    }
}
