//! The deterministic state machine behind every backend: the objects, the
//! current revision, and a bounded history of changes for watches.
//!
//! A [`Command`] carries everything that is chosen at proposal time (the new
//! object's uid, the clock reading), so applying the same commands in the same
//! order gives the same state on every replica. A command that fails (a
//! conflict, a missing object) changes nothing and takes no revision; a command
//! that changes nothing (an update to identical content, deleting an object that
//! is already marked) takes no revision either, as in Kubernetes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::selector::Selector;
use crate::{DeletePreconditions, Kind, ObjectKey, ObjectList, Revision, StoreError};

/// A write, as proposed (and, for Raft, as logged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Command {
    /// Create `object` with this uid and creation time.
    Create {
        /// The object as submitted.
        object: Value,
        /// Its uid, chosen by the proposer.
        uid: String,
        /// Its `creationTimestamp` (RFC 3339), chosen by the proposer.
        now: String,
    },
    /// Replace metadata and spec.
    Update {
        /// The object as submitted.
        object: Value,
    },
    /// Replace status.
    UpdateStatus {
        /// The object as submitted.
        object: Value,
    },
    /// Delete (or mark) an object.
    #[serde(rename_all = "camelCase")]
    Delete {
        /// Kind name (`Service`, `Task`, `Host`, `Event`).
        kind: String,
        /// Namespace (namespaced kinds).
        namespace: Option<String>,
        /// Name.
        name: String,
        /// uid precondition.
        uid: Option<String>,
        /// resourceVersion precondition.
        resource_version: Option<Revision>,
        /// The `deletionTimestamp` to set if the object has finalizers.
        now: String,
    },
}

impl Command {
    /// A create with a fresh uid and the current time.
    pub fn create(object: Value) -> Self {
        Command::Create {
            object,
            uid: new_uid(),
            now: rfc3339(SystemTime::now()),
        }
    }

    /// A delete stamped with the current time.
    pub fn delete(key: &ObjectKey, pre: &DeletePreconditions) -> Self {
        Command::Delete {
            kind: key.kind.name().to_owned(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: pre.uid.clone(),
            resource_version: pre.resource_version,
            now: rfc3339(SystemTime::now()),
        }
    }
}

/// A fresh Kubernetes uid (a v4 UUID).
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A time as Kubernetes writes it: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// What kind of change a history entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Changed (including marked for deletion).
    Modified,
    /// Deleted.
    Deleted,
}

/// One successful write, kept in the history for watches.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The revision of the write.
    pub revision: Revision,
    /// The object written.
    pub key: ObjectKey,
    /// What happened.
    pub kind: ChangeKind,
    /// The new state (for a delete: the last state, at `revision`).
    pub object: Value,
    /// The state before, if any (filtered watches turn a change that leaves
    /// or enters the selection into a delete or an add).
    pub prev: Option<Value>,
}

/// The result of a command that succeeded.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The object as stored now.
    Stored(Value),
    /// The object was deleted; its last state.
    Deleted(Value),
    /// The object has finalizers and is marked for deletion.
    Marked(Value),
}

impl Outcome {
    /// The object, whatever happened to it.
    pub fn into_object(self) -> Value {
        match self {
            Outcome::Stored(v) | Outcome::Deleted(v) | Outcome::Marked(v) => v,
        }
    }
}

/// A successful apply: the outcome and the change it recorded (none if the
/// command changed nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// What the caller gets back.
    pub outcome: Outcome,
    /// The recorded change, if there was a write.
    pub change: Option<Arc<Change>>,
}

/// The state machine.
#[derive(Debug)]
pub struct StateMachine {
    objects: BTreeMap<ObjectKey, Value>,
    revision: Revision,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// A watch may start from any revision `>= history_start`.
    history_start: Revision,
}

/// The serialized state machine, as put in a Raft snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotData {
    /// The revision of the state.
    pub revision: Revision,
    /// Every object.
    pub objects: Vec<Value>,
    /// Where the voters added by a membership change are reached (Raft id →
    /// address, from the change), so that a server catching up from the
    /// snapshot learns them too. Filled by the Raft storage, not the state
    /// machine.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub peer_addresses: std::collections::BTreeMap<u64, String>,
}

const CONFLICT_MESSAGE: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

impl StateMachine {
    /// An empty state machine keeping at most `history_limit` changes.
    pub fn new(history_limit: usize) -> Self {
        Self::restore(BTreeMap::new(), 0, history_limit)
    }

    /// A state machine holding `objects` at `revision`, with an empty history
    /// (a watch from before `revision` is too old).
    pub fn restore(
        objects: BTreeMap<ObjectKey, Value>,
        revision: Revision,
        history_limit: usize,
    ) -> Self {
        Self {
            objects,
            revision,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            history_start: revision,
        }
    }

    /// Restores from serialized snapshot data.
    pub fn from_snapshot(data: SnapshotData, history_limit: usize) -> Result<Self, StoreError> {
        let mut objects = BTreeMap::new();
        for obj in data.objects {
            objects.insert(key_of(&obj)?, obj);
        }
        Ok(Self::restore(objects, data.revision, history_limit))
    }

    /// The whole state, for a snapshot.
    pub fn snapshot(&self) -> SnapshotData {
        SnapshotData {
            revision: self.revision,
            objects: self.objects.values().cloned().collect(),
            peer_addresses: Default::default(),
        }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The oldest revision a watch may start from.
    pub fn oldest_watchable(&self) -> Revision {
        self.history_start
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every object, in key order.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.iter()
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects matching a selector, sorted by namespace then name.
    pub fn list(&self, sel: &Selector) -> ObjectList {
        let start = ObjectKey {
            kind: sel.kind,
            namespace: sel.namespace.clone(),
            name: String::new(),
        };
        let items = self
            .objects
            .range(start..)
            .take_while(|(k, _)| {
                k.kind == sel.kind && (sel.namespace.is_none() || k.namespace == sel.namespace)
            })
            .filter(|(_, v)| sel.matches(v))
            .map(|(_, v)| v.clone())
            .collect();
        ObjectList {
            items,
            revision: self.revision,
        }
    }

    /// The recorded changes after `from` (exclusive), or `TooOld` if some of
    /// them are no longer in the history.
    pub fn changes_since(&self, from: Revision) -> Result<Vec<Arc<Change>>, StoreError> {
        if from < self.history_start {
            return Err(StoreError::TooOld {
                requested: from,
                oldest: self.history_start,
            });
        }
        let first = self.history.partition_point(|c| c.revision <= from);
        Ok(self.history.iter().skip(first).cloned().collect())
    }

    /// Applies one command.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, StoreError> {
        match cmd {
            Command::Create { object, uid, now } => self.create(object, uid, now),
            Command::Update { object } => self.update(object),
            Command::UpdateStatus { object } => self.update_status(object),
            Command::Delete {
                kind,
                namespace,
                name,
                uid,
                resource_version,
                now,
            } => {
                let kind = Kind::from_name(kind)
                    .ok_or_else(|| StoreError::Invalid(format!("unknown kind {kind:?}")))?;
                let key = ObjectKey {
                    kind,
                    namespace: if kind.namespaced() {
                        namespace.clone()
                    } else {
                        None
                    },
                    name: name.clone(),
                };
                let pre = DeletePreconditions {
                    uid: uid.clone(),
                    resource_version: *resource_version,
                };
                self.delete(&key, &pre, now)
            }
        }
    }

    fn record(
        &mut self,
        key: ObjectKey,
        kind: ChangeKind,
        object: Value,
        prev: Option<Value>,
    ) -> Arc<Change> {
        let change = Arc::new(Change {
            revision: self.revision,
            key,
            kind,
            object,
            prev,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_start = old.revision;
            }
        }
        change
    }

    fn create(&mut self, object: &Value, uid: &str, now: &str) -> Result<Applied, StoreError> {
        let key = key_of(object)?;
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        let mut obj = object.clone();
        let rv = precondition(&obj)?;
        if rv.is_some() {
            return Err(StoreError::Invalid(format!(
                "{key}: metadata.resourceVersion must not be set on create"
            )));
        }
        check_finalizers(&obj)?;
        let revision = self.revision + 1;
        let root = as_object_mut(&mut obj)?;
        root.entry("apiVersion")
            .or_insert_with(|| Value::String(key.kind.api_version().into()));
        let meta = metadata_mut(&mut obj)?;
        if key.namespace.is_none() {
            meta.remove("namespace");
        }
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.insert("uid".into(), Value::String(uid.to_owned()));
        meta.insert("creationTimestamp".into(), Value::String(now.to_owned()));
        meta.insert("generation".into(), Value::from(1u64));
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
        self.revision = revision;
        self.objects.insert(key.clone(), obj.clone());
        let change = self.record(key, ChangeKind::Added, obj.clone(), None);
        Ok(Applied {
            outcome: Outcome::Stored(obj),
            change: Some(change),
        })
    }

    fn current(&self, key: &ObjectKey, object: &Value) -> Result<&Value, StoreError> {
        let cur = self
            .objects
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        if let Some(rv) = precondition(object)?
            && Some(rv) != revision_of(cur)
        {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                message: CONFLICT_MESSAGE.into(),
            });
        }
        if let Some(uid) = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            && Some(uid) != cur.pointer("/metadata/uid").and_then(Value::as_str)
        {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                message: format!("uid {uid} does not match the stored object's"),
            });
        }
        Ok(cur)
    }

    fn update(&mut self, object: &Value) -> Result<Applied, StoreError> {
        let key = key_of(object)?;
        let cur = self.current(&key, object)?.clone();
        check_finalizers(object)?;
        let marked = cur.pointer("/metadata/deletionTimestamp").is_some();
        if marked {
            let old = finalizers(&cur);
            if let Some(added) = finalizers(object).into_iter().find(|f| !old.contains(f)) {
                return Err(StoreError::Invalid(format!(
                    "{key}: no new finalizers can be added if the object is being deleted (found {added:?})"
                )));
            }
        }
        let mut new = object.clone();
        let root = as_object_mut(&mut new)?;
        match cur.get("status") {
            Some(s) => root.insert("status".into(), s.clone()),
            None => root.remove("status"),
        };
        root.entry("apiVersion")
            .or_insert_with(|| Value::String(key.kind.api_version().into()));
        let generation = cur
            .pointer("/metadata/generation")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let generation = if object.get("spec") != cur.get("spec") {
            generation + 1
        } else {
            generation
        };
        let meta = metadata_mut(&mut new)?;
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
        ] {
            match cur.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert("generation".into(), Value::from(generation));
        let last_finalizer_gone = marked && finalizers(&new).is_empty();
        self.write(key, cur, new, last_finalizer_gone)
    }

    fn update_status(&mut self, object: &Value) -> Result<Applied, StoreError> {
        let key = key_of(object)?;
        let cur = self.current(&key, object)?.clone();
        let mut new = cur.clone();
        let root = as_object_mut(&mut new)?;
        match object.get("status") {
            Some(s) => root.insert("status".into(), s.clone()),
            None => root.remove("status"),
        };
        self.write(key, cur, new, false)
    }

    /// Stores `new` in place of `cur` (or deletes it), unless nothing changed.
    fn write(
        &mut self,
        key: ObjectKey,
        cur: Value,
        mut new: Value,
        delete: bool,
    ) -> Result<Applied, StoreError> {
        let cur_rv = cur
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        metadata_mut(&mut new)?.insert("resourceVersion".into(), cur_rv);
        if new == cur && !delete {
            return Ok(Applied {
                outcome: Outcome::Stored(cur),
                change: None,
            });
        }
        self.revision += 1;
        metadata_mut(&mut new)?.insert(
            "resourceVersion".into(),
            Value::String(self.revision.to_string()),
        );
        if delete {
            self.objects.remove(&key);
            let change = self.record(key, ChangeKind::Deleted, new.clone(), Some(cur));
            Ok(Applied {
                outcome: Outcome::Deleted(new),
                change: Some(change),
            })
        } else {
            self.objects.insert(key.clone(), new.clone());
            let change = self.record(key, ChangeKind::Modified, new.clone(), Some(cur));
            Ok(Applied {
                outcome: Outcome::Stored(new),
                change: Some(change),
            })
        }
    }

    fn delete(
        &mut self,
        key: &ObjectKey,
        pre: &DeletePreconditions,
        now: &str,
    ) -> Result<Applied, StoreError> {
        let cur = self
            .objects
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.to_string()))?
            .clone();
        if let Some(uid) = &pre.uid
            && cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
        {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                message: format!(
                    "precondition failed: uid {uid} does not match the stored object's"
                ),
            });
        }
        if let Some(rv) = pre.resource_version
            && revision_of(&cur) != Some(rv)
        {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                message: format!(
                    "precondition failed: resourceVersion {rv} is not the stored object's"
                ),
            });
        }
        if finalizers(&cur).is_empty() {
            return self.write(key.clone(), cur.clone(), cur, true);
        }
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Applied {
                outcome: Outcome::Marked(cur),
                change: None,
            });
        }
        let mut new = cur.clone();
        let meta = metadata_mut(&mut new)?;
        meta.insert("deletionTimestamp".into(), Value::String(now.to_owned()));
        meta.insert("deletionGracePeriodSeconds".into(), Value::from(0u64));
        let applied = self.write(key.clone(), cur, new, false)?;
        Ok(Applied {
            outcome: Outcome::Marked(applied.outcome.into_object()),
            change: applied.change,
        })
    }
}

/// The key of an object from its `kind`, `metadata.namespace` and
/// `metadata.name`.
pub fn key_of(obj: &Value) -> Result<ObjectKey, StoreError> {
    let kind_name = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Invalid("kind is missing".into()))?;
    let kind = Kind::from_name(kind_name)
        .ok_or_else(|| StoreError::Invalid(format!("unknown kind {kind_name:?}")))?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StoreError::Invalid(format!("{kind_name}: metadata.name is missing")))?;
    let namespace = if kind.namespaced() {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                StoreError::Invalid(format!("{kind_name} {name}: metadata.namespace is missing"))
            })?;
        Some(ns.to_owned())
    } else {
        None
    };
    Ok(ObjectKey {
        kind,
        namespace,
        name: name.to_owned(),
    })
}

/// `metadata.resourceVersion` as a revision.
pub fn revision_of(obj: &Value) -> Option<Revision> {
    obj.pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}

/// The resourceVersion precondition an object carries (`None` if absent or
/// empty); a malformed one is invalid.
fn precondition(obj: &Value) -> Result<Option<Revision>, StoreError> {
    match obj.pointer("/metadata/resourceVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            StoreError::Invalid(format!("metadata.resourceVersion {s:?} is not a revision"))
        }),
        Some(other) => Err(StoreError::Invalid(format!(
            "metadata.resourceVersion {other} is not a string"
        ))),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn check_finalizers(obj: &Value) -> Result<(), StoreError> {
    match obj.pointer("/metadata/finalizers") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(StoreError::Invalid(
            "metadata.finalizers must be a list of strings".into(),
        )),
    }
}

fn as_object_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    obj.as_object_mut()
        .ok_or_else(|| StoreError::Invalid("an object must be a JSON object".into()))
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    as_object_mut(obj)?
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Invalid("metadata must be an object".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ListOptions;
    use serde_json::json;

    fn svc(name: &str, replicas: u64) -> Value {
        json!({
            "apiVersion": "shoal.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"replicas": replicas}
        })
    }

    fn create(sm: &mut StateMachine, obj: Value) -> Value {
        let cmd = Command::Create {
            object: obj,
            uid: "uid-1".into(),
            now: "2026-01-01T00:00:00Z".into(),
        };
        sm.apply(&cmd).unwrap().outcome.into_object()
    }

    fn update(sm: &mut StateMachine, obj: Value) -> Result<Outcome, StoreError> {
        sm.apply(&Command::Update { object: obj })
            .map(|a| a.outcome)
    }

    fn delete(
        sm: &mut StateMachine,
        key: &ObjectKey,
        pre: DeletePreconditions,
    ) -> Result<Outcome, StoreError> {
        let cmd = Command::Delete {
            kind: key.kind.name().into(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: pre.uid,
            resource_version: pre.resource_version,
            now: "2026-01-02T00:00:00Z".into(),
        };
        sm.apply(&cmd).map(|a| a.outcome)
    }

    fn web_key() -> ObjectKey {
        ObjectKey::namespaced(Kind::Service, "default", "web")
    }

    #[test]
    fn create_sets_system_fields() {
        let mut sm = StateMachine::new(100);
        let mut obj = svc("web", 1);
        obj["status"] = json!({"replicas": 0});
        obj["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        let got = create(&mut sm, obj);
        assert_eq!(got["metadata"]["uid"], "uid-1");
        assert_eq!(got["metadata"]["creationTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(got["metadata"]["generation"], 1);
        assert_eq!(got["metadata"]["resourceVersion"], "1");
        assert_eq!(
            got["status"],
            json!({"replicas": 0}),
            "status is kept on create"
        );
        assert!(got["metadata"].get("deletionTimestamp").is_none());
        assert_eq!(sm.revision(), 1);
        assert_eq!(sm.get(&web_key()), Some(&got));
    }

    #[test]
    fn create_errors() {
        let mut sm = StateMachine::new(100);
        create(&mut sm, svc("web", 1));
        let dup = sm.apply(&Command::create(svc("web", 2)));
        assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");
        let cases = [
            json!({"kind": "Service", "metadata": {"namespace": "default"}}),
            json!({"kind": "Service", "metadata": {"name": "x"}}),
            json!({"kind": "Pod", "metadata": {"name": "x", "namespace": "default"}}),
            json!({"metadata": {"name": "x", "namespace": "default"}}),
            json!({"kind": "Service", "metadata": {"name": "x", "namespace": "default", "resourceVersion": "3"}}),
            json!({"kind": "Service", "metadata": {"name": "x", "namespace": "default", "finalizers": [1]}}),
        ];
        for c in cases {
            let got = sm.apply(&Command::create(c.clone()));
            assert!(matches!(got, Err(StoreError::Invalid(_))), "{c}: {got:?}");
        }
        assert_eq!(sm.revision(), 1, "failed commands take no revision");
    }

    #[test]
    fn cluster_scoped_objects_drop_namespace() {
        let mut sm = StateMachine::new(100);
        let got = create(
            &mut sm,
            json!({"kind": "Host", "metadata": {"name": "h1", "namespace": "x"}}),
        );
        assert!(got["metadata"].get("namespace").is_none());
        assert!(sm.get(&ObjectKey::cluster(Kind::Host, "h1")).is_some());
    }

    #[test]
    fn update_keeps_status_and_bumps_generation_on_spec_change_only() {
        let mut sm = StateMachine::new(100);
        let mut obj = svc("web", 1);
        obj["status"] = json!({"replicas": 1});
        let stored = create(&mut sm, obj);

        // A label change: no generation bump; status kept despite the request.
        let mut req = stored.clone();
        req["metadata"]["labels"]["tier"] = json!("front");
        req["status"] = json!({"replicas": 99});
        let got = update(&mut sm, req).unwrap().into_object();
        assert_eq!(got["metadata"]["generation"], 1);
        assert_eq!(got["metadata"]["resourceVersion"], "2");
        assert_eq!(got["status"], json!({"replicas": 1}));
        assert_eq!(got["metadata"]["labels"]["tier"], "front");

        // A spec change bumps the generation; system fields cannot be overwritten.
        let mut req = got.clone();
        req["spec"]["replicas"] = json!(3);
        req["metadata"]["generation"] = json!(42);
        req["metadata"]["creationTimestamp"] = json!("1999-01-01T00:00:00Z");
        let got = update(&mut sm, req).unwrap().into_object();
        assert_eq!(got["metadata"]["generation"], 2);
        assert_eq!(got["metadata"]["creationTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(got["metadata"]["uid"], "uid-1");
        assert_eq!(got["metadata"]["resourceVersion"], "3");
    }

    #[test]
    fn unconditional_and_noop_updates() {
        let mut sm = StateMachine::new(100);
        let stored = create(&mut sm, svc("web", 1));
        // Without a resourceVersion the update is unconditional.
        let got = update(&mut sm, svc("web", 2)).unwrap().into_object();
        assert_eq!(got["metadata"]["resourceVersion"], "2");
        // The same content again: no write, no revision.
        let applied = sm
            .apply(&Command::Update {
                object: svc("web", 2),
            })
            .unwrap();
        assert!(applied.change.is_none());
        assert_eq!(
            applied.outcome.into_object()["metadata"]["resourceVersion"],
            "2"
        );
        assert_eq!(sm.revision(), 2);
        // Stale precondition.
        let got = update(&mut sm, stored);
        assert!(matches!(got, Err(StoreError::Conflict { .. })), "{got:?}");
        // Missing object.
        assert!(matches!(
            update(&mut sm, svc("db", 1)),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn update_with_wrong_uid_conflicts() {
        let mut sm = StateMachine::new(100);
        create(&mut sm, svc("web", 1));
        let mut req = svc("web", 2);
        req["metadata"]["uid"] = json!("someone-else");
        assert!(matches!(
            update(&mut sm, req),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn update_status_changes_only_status() {
        let mut sm = StateMachine::new(100);
        let stored = create(&mut sm, svc("web", 1));
        let mut req = stored.clone();
        req["spec"]["replicas"] = json!(7);
        req["metadata"]["labels"] = json!({});
        req["status"] = json!({"readyReplicas": 1});
        let got = sm
            .apply(&Command::UpdateStatus { object: req })
            .unwrap()
            .outcome
            .into_object();
        assert_eq!(got["spec"]["replicas"], 1);
        assert_eq!(got["metadata"]["labels"]["app"], "web");
        assert_eq!(got["status"], json!({"readyReplicas": 1}));
        assert_eq!(got["metadata"]["generation"], 1);
        assert_eq!(got["metadata"]["resourceVersion"], "2");
        // Stale.
        let stale = sm.apply(&Command::UpdateStatus { object: stored });
        assert!(matches!(stale, Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn delete_without_finalizers_deletes() {
        let mut sm = StateMachine::new(100);
        let stored = create(&mut sm, svc("web", 1));
        let got = delete(&mut sm, &web_key(), DeletePreconditions::default()).unwrap();
        let Outcome::Deleted(last) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            last["metadata"]["resourceVersion"], "2",
            "the deletion's revision"
        );
        assert_eq!(last["spec"], stored["spec"]);
        assert!(sm.get(&web_key()).is_none());
        assert!(matches!(
            delete(&mut sm, &web_key(), DeletePreconditions::default()),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn delete_preconditions() {
        let mut sm = StateMachine::new(100);
        create(&mut sm, svc("web", 1));
        let wrong_uid = DeletePreconditions {
            uid: Some("other".into()),
            resource_version: None,
        };
        assert!(matches!(
            delete(&mut sm, &web_key(), wrong_uid),
            Err(StoreError::Conflict { .. })
        ));
        let stale = DeletePreconditions {
            uid: None,
            resource_version: Some(7),
        };
        assert!(matches!(
            delete(&mut sm, &web_key(), stale),
            Err(StoreError::Conflict { .. })
        ));
        let ok = DeletePreconditions {
            uid: Some("uid-1".into()),
            resource_version: Some(1),
        };
        assert!(matches!(
            delete(&mut sm, &web_key(), ok),
            Ok(Outcome::Deleted(_))
        ));
    }

    #[test]
    fn finalizers_mark_then_last_removal_deletes() {
        let mut sm = StateMachine::new(100);
        let mut obj = svc("web", 1);
        obj["metadata"]["finalizers"] = json!(["a", "b"]);
        create(&mut sm, obj);

        let got = delete(&mut sm, &web_key(), DeletePreconditions::default()).unwrap();
        let Outcome::Marked(marked) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 0);
        assert_eq!(marked["metadata"]["resourceVersion"], "2");

        // Deleting again changes nothing.
        let again = sm
            .apply(&Command::delete(
                &web_key(),
                &DeletePreconditions::default(),
            ))
            .unwrap();
        assert!(matches!(again.outcome, Outcome::Marked(_)));
        assert!(again.change.is_none());
        assert_eq!(sm.revision(), 2);

        // No new finalizer once marked.
        let mut req = marked.clone();
        req["metadata"]["finalizers"] = json!(["a", "b", "c"]);
        assert!(matches!(update(&mut sm, req), Err(StoreError::Invalid(_))));

        // The client cannot clear the deletion timestamp.
        let mut req = marked.clone();
        req["metadata"]["finalizers"] = json!(["b"]);
        req["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        let got = update(&mut sm, req).unwrap();
        let Outcome::Stored(one_left) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            one_left["metadata"]["deletionTimestamp"],
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(one_left["metadata"]["resourceVersion"], "3");

        // Removing the last finalizer deletes.
        let mut req = one_left.clone();
        req["metadata"]["finalizers"] = json!([]);
        let got = update(&mut sm, req).unwrap();
        let Outcome::Deleted(last) = got else {
            panic!("{got:?}")
        };
        assert_eq!(last["metadata"]["resourceVersion"], "4");
        assert!(sm.get(&web_key()).is_none());
        let changes = sm.changes_since(3).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, ChangeKind::Deleted);
    }

    #[test]
    fn list_filters_and_sorts() {
        let mut sm = StateMachine::new(100);
        for (ns, name) in [("b", "z"), ("a", "y"), ("b", "x")] {
            let obj = json!({"kind": "Task", "metadata": {"name": name, "namespace": ns, "labels": {"n": name}}});
            create(&mut sm, obj);
        }
        create(&mut sm, svc("web", 1));
        create(&mut sm, json!({"kind": "Host", "metadata": {"name": "h"}}));
        let names = |opts: ListOptions, kind: Kind| -> Vec<String> {
            let sel = Selector::new(kind, &opts).unwrap();
            let list = sm.list(&sel);
            assert_eq!(list.revision, 5);
            list.items
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(ListOptions::default(), Kind::Task), ["y", "x", "z"]);
        let in_b = ListOptions {
            namespace: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(names(in_b, Kind::Task), ["x", "z"]);
        let labels = ListOptions {
            label_selector: Some("n in (x,y)".into()),
            ..Default::default()
        };
        assert_eq!(names(labels, Kind::Task), ["y", "x"]);
        let fields = ListOptions {
            field_selector: Some("metadata.name!=x".into()),
            ..Default::default()
        };
        assert_eq!(names(fields, Kind::Task), ["y", "z"]);
        assert_eq!(names(ListOptions::default(), Kind::Host), ["h"]);
        assert_eq!(names(ListOptions::default(), Kind::Service), ["web"]);
    }

    #[test]
    fn history_is_bounded() {
        let mut sm = StateMachine::new(3);
        for i in 0..5 {
            create(&mut sm, svc(&format!("s{i}"), 1));
        }
        assert_eq!(sm.revision(), 5);
        assert_eq!(sm.oldest_watchable(), 2);
        let revs: Vec<_> = sm
            .changes_since(2)
            .unwrap()
            .iter()
            .map(|c| c.revision)
            .collect();
        assert_eq!(revs, [3, 4, 5]);
        assert!(sm.changes_since(5).unwrap().is_empty());
        assert_eq!(
            sm.changes_since(1),
            Err(StoreError::TooOld {
                requested: 1,
                oldest: 2
            })
        );
    }

    #[test]
    fn snapshot_round_trip() {
        let mut sm = StateMachine::new(10);
        create(&mut sm, svc("web", 1));
        create(&mut sm, json!({"kind": "Host", "metadata": {"name": "h"}}));
        let data = sm.snapshot();
        let bytes = serde_json::to_vec(&data).unwrap();
        let back =
            StateMachine::from_snapshot(serde_json::from_slice(&bytes).unwrap(), 10).unwrap();
        assert_eq!(back.revision(), 2);
        assert_eq!(back.get(&web_key()), sm.get(&web_key()));
        assert_eq!(back.oldest_watchable(), 2);
        assert!(back.changes_since(1).is_err());
    }

    #[test]
    fn replicas_applying_the_same_commands_agree() {
        let cmds = [
            Command::create(svc("web", 1)),
            Command::create(svc("web", 2)),
            Command::Update {
                object: svc("web", 3),
            },
            Command::delete(&web_key(), &DeletePreconditions::default()),
        ];
        let wire: Vec<Command> = cmds
            .iter()
            .map(|c| serde_json::from_slice(&serde_json::to_vec(c).unwrap()).unwrap())
            .collect();
        let (mut a, mut b) = (StateMachine::new(10), StateMachine::new(10));
        for (x, y) in cmds.iter().zip(&wire) {
            assert_eq!(a.apply(x).map(|o| o.outcome), b.apply(y).map(|o| o.outcome));
        }
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn rfc3339_formats_utc_seconds() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_999_611);
        assert_eq!(rfc3339(t), "2026-11-30T00:46:51Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
