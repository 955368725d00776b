//! Kubernetes-style Events: core `v1` [`Event`] objects in the store, written
//! by [`EventRecorder`] with Kubernetes' semantics.
//!
//! - An Event names the object it is about in `involvedObject` (kind, name,
//!   namespace, uid, `apiVersion: shoal.dev/v1alpha1`) and lives in that
//!   object's namespace (`default` for cluster-scoped objects such as Hosts,
//!   as in Kubernetes).
//! - `type` is `Normal` or `Warning`; `reason` is one CamelCase word
//!   (`Scheduled`, `Restarted`…); `source.component` and
//!   `reportingComponent` name the writer (`shoal-scheduler`…).
//! - **Aggregation**: the same (object, type, reason, message) from the same
//!   component is one Event, named `<object>.<16 hex digits>` from a hash of
//!   those; a repeat bumps `count` and `lastTimestamp` (conditional write,
//!   retried on conflict) instead of creating a new object.
//! - Recording is best effort: [`EventRecorder::emit`] never blocks nor fails
//!   its caller; at most [`MAX_IN_FLIGHT`] writes run at once per recorder and
//!   the rest are dropped (logged at debug). Old Events are deleted by the
//!   operator's sweeper (TTL and a per-namespace cap).

use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::state::rfc3339;
use crate::{ClusterStore, Kind, ObjectKey, StoreError};

/// `type` of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong, or may need a look.
    Warning,
}

impl EventType {
    /// The `type` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The component names used as `source.component`.
pub mod component {
    /// The scheduler (placements).
    pub const SCHEDULER: &str = "shoal-scheduler";
    /// The dispatcher (task status from the agents).
    pub const DISPATCHER: &str = "shoal-dispatcher";
    /// The orchestrator (scaling).
    pub const ORCHESTRATOR: &str = "shoal-orchestrator";
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`, if known.
    pub uid: Option<String>,
}

impl ObjectRef {
    /// The reference to an object of `kind` with this metadata.
    pub fn new(kind: Kind, meta: &ObjectMeta) -> Self {
        Self {
            kind,
            namespace: if kind.namespaced() {
                meta.namespace.clone()
            } else {
                None
            },
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
        }
    }

    /// The reference to a typed object.
    pub fn of<T: crate::typed::StoreKind + HasMeta>(obj: &T) -> Self {
        Self::new(T::KIND, obj.meta())
    }

    /// The namespace the Event goes to: the object's, or `default` for
    /// cluster-scoped objects.
    pub fn event_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// Typed objects with Kubernetes metadata.
pub trait HasMeta {
    /// `metadata`.
    fn meta(&self) -> &ObjectMeta;
}

impl HasMeta for shoal_crds::Service {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}
impl HasMeta for shoal_crds::Task {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}
impl HasMeta for shoal_crds::Host {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// Why an Event was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The store refused or failed a call.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The Event did not encode (a bug).
    #[error("encoding the event: {0}")]
    Encode(#[from] serde_json::Error),
    /// Concurrent writers kept winning; gave up after a few attempts.
    #[error("event {0} kept conflicting with concurrent writes")]
    Contended(String),
}

impl EventError {
    /// Whether recording the same Event later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EventError::Store(e) => e.is_retryable(),
            EventError::Encode(_) => false,
            EventError::Contended(_) => true,
        }
    }
}

/// How many Event writes of one recorder may be in flight at once; more are
/// dropped.
pub const MAX_IN_FLIGHT: usize = 64;
/// How many times a conflicting write is retried.
const ATTEMPTS: usize = 6;
/// Longest `message` kept, in bytes (Kubernetes: 1 KiB).
const MAX_MESSAGE: usize = 1024;

/// Writes Events for one component.
#[derive(Clone)]
pub struct EventRecorder {
    store: Arc<dyn ClusterStore>,
    component: String,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (names of Events
/// must not change when the compiler does).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl EventRecorder {
    /// A recorder writing as `component` (see [`component`]).
    pub fn new(store: Arc<dyn ClusterStore>, component: impl Into<String>) -> Self {
        Self {
            store,
            component: component.into(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The component name.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// The name of the Event aggregating (object, type, reason, message)
    /// from this component.
    pub fn event_name(&self, obj: &ObjectRef, type_: EventType, reason: &str, msg: &str) -> String {
        let h = fnv1a(&[
            obj.kind.name(),
            obj.namespace.as_deref().unwrap_or(""),
            &obj.name,
            obj.uid.as_deref().unwrap_or(""),
            type_.as_str(),
            reason,
            msg,
            &self.component,
        ]);
        format!("{}.{h:016x}", truncate(&obj.name, 200))
    }

    fn new_event(
        &self,
        name: String,
        obj: &ObjectRef,
        type_: EventType,
        reason: &str,
        message: &str,
        now: &str,
    ) -> Result<Value, EventError> {
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(obj.event_namespace().to_owned()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(obj.kind.api_version().to_owned()),
                kind: Some(obj.kind.name().to_owned()),
                name: Some(obj.name.clone()),
                namespace: obj.namespace.clone(),
                uid: obj.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Default::default()
        };
        let mut v = serde_json::to_value(&ev)?;
        v["firstTimestamp"] = json!(now);
        v["lastTimestamp"] = json!(now);
        Ok(v)
    }

    /// Records one occurrence: creates the Event, or bumps `count` and
    /// `lastTimestamp` of the existing one. Returns the stored Event.
    pub async fn record(
        &self,
        obj: &ObjectRef,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<Value, EventError> {
        let message = truncate(message, MAX_MESSAGE);
        let name = self.event_name(obj, type_, reason, message);
        let key = ObjectKey::namespaced(Kind::Event, obj.event_namespace(), name.clone());
        for _ in 0..ATTEMPTS {
            let now = rfc3339(SystemTime::now());
            match self.store.get(&key).await? {
                None => {
                    let ev = self.new_event(name.clone(), obj, type_, reason, message, &now)?;
                    match self.store.create(ev).await {
                        Ok(v) => return Ok(v),
                        Err(StoreError::AlreadyExists(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(mut cur) => {
                    let count = cur.get("count").and_then(Value::as_i64).unwrap_or(1);
                    cur["count"] = json!(count.saturating_add(1));
                    cur["lastTimestamp"] = json!(now);
                    // Conditional on the resourceVersion read.
                    match self.store.update(cur).await {
                        Ok(v) => return Ok(v),
                        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(EventError::Contended(key.to_string()))
    }

    /// Records in the background: never blocks nor fails the caller. A
    /// failure is logged at debug; with [`MAX_IN_FLIGHT`] writes pending (or
    /// outside a Tokio runtime) the Event is dropped.
    pub fn emit(&self, obj: &ObjectRef, type_: EventType, reason: &str, message: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(reason, "event dropped: no runtime");
            return;
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!(reason, object = %obj.name, "event dropped: too many in flight");
            return;
        };
        let this = self.clone();
        let obj = obj.clone();
        let reason = reason.to_owned();
        let message = message.to_owned();
        // Short-lived and bounded (MAX_IN_FLIGHT): it ends with its write,
        // inside the caller's span so it belongs to the caller's tree.
        let span = tracing::debug_span!("event", %reason, object = %obj.name);
        rt.spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = this.record(&obj, type_, &reason, &message).await {
                    tracing::debug!(error = %e, "event not recorded");
                }
                drop(permit);
            },
            span,
        ));
    }

    /// [`emit`](Self::emit) of a `Normal` Event.
    pub fn normal(&self, obj: &ObjectRef, reason: &str, message: &str) {
        self.emit(obj, EventType::Normal, reason, message);
    }

    /// [`emit`](Self::emit) of a `Warning` Event.
    pub fn warning(&self, obj: &ObjectRef, reason: &str, message: &str) {
        self.emit(obj, EventType::Warning, reason, message);
    }
}

/// When an Event last happened: `lastTimestamp`, else `eventTime`, else
/// `firstTimestamp`, else `metadata.creationTimestamp` (RFC 3339).
pub fn last_seen(ev: &Value) -> Option<&str> {
    ["/lastTimestamp", "/eventTime", "/firstTimestamp"]
        .iter()
        .chain(std::iter::once(&"/metadata/creationTimestamp"))
        .find_map(|p| {
            ev.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::typed;
    use crate::{
        DeleteOutcome, DeletePreconditions, ListOptions, MemStore, ObjectList, Revision,
        WatchStream,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn svc_ref() -> ObjectRef {
        ObjectRef {
            kind: Kind::Service,
            namespace: Some("default".into()),
            name: "web".into(),
            uid: Some("u-1".into()),
        }
    }

    async fn events(store: &dyn ClusterStore) -> Vec<Value> {
        store
            .list(Kind::Event, &ListOptions::default())
            .await
            .unwrap()
            .items
    }

    #[tokio::test]
    async fn record_creates_an_event_with_kubernetes_fields() {
        let store = Arc::new(MemStore::new());
        let r = EventRecorder::new(store.clone(), component::ORCHESTRATOR);
        let ev = r
            .record(
                &svc_ref(),
                EventType::Normal,
                "Scaled",
                "Scaled from 3 to 5 replicas",
            )
            .await
            .unwrap();
        assert_eq!(ev["apiVersion"], "v1");
        assert_eq!(ev["kind"], "Event");
        assert_eq!(ev["metadata"]["namespace"], "default");
        let name = ev["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web."), "{name}");
        assert_eq!(name.len(), "web.".len() + 16);
        assert_eq!(
            ev["involvedObject"],
            json!({"apiVersion": "shoal.dev/v1alpha1", "kind": "Service", "name": "web",
                   "namespace": "default", "uid": "u-1"})
        );
        assert_eq!(ev["reason"], "Scaled");
        assert_eq!(ev["type"], "Normal");
        assert_eq!(ev["source"]["component"], "shoal-orchestrator");
        assert_eq!(ev["count"], 1);
        assert_eq!(ev["firstTimestamp"], ev["lastTimestamp"]);
        // It decodes as a core/v1 Event.
        let typed: Event = typed::from_value(ev).unwrap();
        assert_eq!(typed.count, Some(1));
        assert!(typed.last_timestamp.is_some());
    }

    #[tokio::test]
    async fn repeats_aggregate_into_one_event() {
        let store = Arc::new(MemStore::new());
        let r = EventRecorder::new(store.clone(), component::DISPATCHER);
        let o = svc_ref();
        for _ in 0..3 {
            r.record(&o, EventType::Warning, "Restarted", "exit code 3")
                .await
                .unwrap();
        }
        r.record(&o, EventType::Warning, "Restarted", "exit code 4")
            .await
            .unwrap();
        let all = events(store.as_ref()).await;
        assert_eq!(all.len(), 2);
        let counts: Vec<i64> = all.iter().map(|e| e["count"].as_i64().unwrap()).collect();
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 3]);
        // Another object, or another uid of the same name, is another Event.
        let mut again = o.clone();
        again.uid = Some("u-2".into());
        r.record(&again, EventType::Warning, "Restarted", "exit code 3")
            .await
            .unwrap();
        assert_eq!(events(store.as_ref()).await.len(), 3);
    }

    #[tokio::test]
    async fn cluster_scoped_objects_get_events_in_default() {
        let store = Arc::new(MemStore::new());
        let r = EventRecorder::new(store.clone(), component::DISPATCHER);
        let host = ObjectRef {
            kind: Kind::Host,
            namespace: None,
            name: "host-a".into(),
            uid: None,
        };
        let ev = r
            .record(&host, EventType::Warning, "HostLost", "no heartbeat")
            .await
            .unwrap();
        assert_eq!(ev["metadata"]["namespace"], "default");
        assert!(ev["involvedObject"].get("namespace").is_none());
    }

    /// A store whose first `update` loses a race: another writer bumps the
    /// Event just before it.
    struct Racy {
        inner: Arc<MemStore>,
        raced: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ClusterStore for Racy {
        async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, kind: Kind, opts: &ListOptions) -> Result<ObjectList, StoreError> {
            self.inner.list(kind, opts).await
        }
        async fn create(&self, obj: Value) -> Result<Value, StoreError> {
            self.inner.create(obj).await
        }
        async fn update(&self, obj: Value) -> Result<Value, StoreError> {
            if self.raced.fetch_add(1, Ordering::SeqCst) == 0 {
                let other = EventRecorder::new(self.inner.clone(), component::DISPATCHER);
                other
                    .record(&svc_ref(), EventType::Warning, "Unhealthy", "check failed")
                    .await
                    .unwrap();
            }
            self.inner.update(obj).await
        }
        async fn update_status(&self, obj: Value) -> Result<Value, StoreError> {
            self.inner.update_status(obj).await
        }
        async fn delete(
            &self,
            key: &ObjectKey,
            pre: &DeletePreconditions,
        ) -> Result<DeleteOutcome, StoreError> {
            self.inner.delete(key, pre).await
        }
        async fn watch(
            &self,
            kind: Kind,
            from: Revision,
            opts: &ListOptions,
        ) -> Result<WatchStream, StoreError> {
            self.inner.watch(kind, from, opts).await
        }
        async fn revision(&self) -> Result<Revision, StoreError> {
            self.inner.revision().await
        }
    }

    #[tokio::test]
    async fn a_conflicting_bump_is_retried_and_counts_both() {
        let inner = Arc::new(MemStore::new());
        let racy = Arc::new(Racy {
            inner: inner.clone(),
            raced: AtomicUsize::new(0),
        });
        let r = EventRecorder::new(racy.clone(), component::DISPATCHER);
        let o = svc_ref();
        r.record(&o, EventType::Warning, "Unhealthy", "check failed")
            .await
            .unwrap();
        // The bump conflicts with the racing one, re-reads and lands on top.
        let ev = r
            .record(&o, EventType::Warning, "Unhealthy", "check failed")
            .await
            .unwrap();
        assert_eq!(ev["count"], 3);
        assert!(racy.raced.load(Ordering::SeqCst) >= 2);
        assert_eq!(events(inner.as_ref()).await.len(), 1);
    }

    #[tokio::test]
    async fn emit_is_fire_and_forget() {
        let store = Arc::new(MemStore::new());
        let r = EventRecorder::new(store.clone(), component::SCHEDULER);
        r.normal(&svc_ref(), "Scheduled", "Assigned default/web.1 to host-a");
        r.warning(
            &svc_ref(),
            "FailedScheduling",
            "0/3 hosts: 3 insufficient memory",
        );
        for _ in 0..100 {
            if events(store.as_ref()).await.len() == 2 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("events not recorded");
    }

    #[test]
    fn names_are_stable_and_messages_truncated_on_char_boundaries() {
        assert_eq!(fnv1a(&["a"]), fnv1a(&["a"]));
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
        let s = "é".repeat(600);
        let t = truncate(&s, MAX_MESSAGE);
        assert!(t.len() <= MAX_MESSAGE && t.is_char_boundary(t.len()));
        let ev = json!({"lastTimestamp": null, "firstTimestamp": "2026-01-01T00:00:00Z"});
        assert_eq!(last_seen(&ev), Some("2026-01-01T00:00:00Z"));
    }
}
