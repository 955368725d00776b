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

/// What an agent needs to hear again about: the spec (its generation) and
/// whether the task is being deleted. Status changes come from the agent
/// itself, so they are not sent back. Without a generation (a store that does
/// not keep one), any change of the object counts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    Spec { generation: i64, deleting: bool },
    Object(Option<String>),
}

fn version(task: &Task) -> Version {
    match task.metadata.generation {
        Some(generation) => Version::Spec {
            generation,
            deleting: task.metadata.deletion_timestamp.is_some(),
        },
        None => Version::Object(task.metadata.resource_version.clone()),
    }
}

/// The assignments sent on one session, with their sequence numbers.
#[derive(Debug, Default)]
pub struct Tracker {
    sequence: u64,
    /// Task uid → version last sent.
    sent: BTreeMap<String, Version>,
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
                self.sent.insert(uid, version(&t));
                assignments.push(assignment(t));
            }
        }
        AssignmentSet {
            sequence: self.sequence,
            assignments,
        }
    }

    /// The delta for one changed task (`assigned` = still assigned to this
    /// host and not deleted), or `None` if the agent already has it (only
    /// its status changed, or nothing).
    pub fn change(&mut self, task: Task, assigned: bool) -> Option<AssignmentDelta> {
        let uid = task.metadata.uid.clone()?;
        let previous_sequence = self.sequence;
        if assigned {
            let v = version(&task);
            if self.sent.get(&uid) == Some(&v) {
                return None;
            }
            self.sequence += 1;
            self.sent.insert(uid, v);
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
    fn status_changes_are_not_sent_back_spec_changes_and_deletion_are() {
        let mut tr = Tracker::new();
        let with = |rv: &str, generation: i64| {
            let mut t = task("a", rv, Some("h1"));
            t.metadata.generation = Some(generation);
            t
        };
        tr.complete([with("1", 1)]);
        // The agent's own status report: a new resourceVersion, same spec.
        let mut reported = with("2", 1);
        reported.status = Some(shoal_crds::TaskStatus {
            restart_count: Some(3),
            ..Default::default()
        });
        assert!(tr.change(reported, true).is_none());
        // A spec change (e.g. desired state Shutdown) is sent.
        let d = tr.change(with("3", 2), true).unwrap();
        assert_eq!(d.upserted.len(), 1);
        // So is the deletion mark, which turns into Shutdown.
        let mut deleting = with("4", 2);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let d = tr.change(deleting, true).unwrap();
        assert_eq!(
            d.upserted[0].spec.as_ref().unwrap().desired_state,
            shoal_proto::v1::DesiredState::Shutdown as i32
        );
    }

    #[test]
    fn only_tasks_bound_to_the_host_are_assigned() {
        assert!(assigned_to(&task("a", "1", Some("h1")), "h1"));
        assert!(!assigned_to(&task("a", "1", Some("h2")), "h1"));
        assert!(!assigned_to(&task("a", "1", None), "h1"));
    }
}
