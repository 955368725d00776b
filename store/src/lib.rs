//! Shoal's store seam: desired and observed state of the cluster, with
//! Kubernetes' object semantics.
//!
//! Every control-plane component (API server, orchestrator, scheduler,
//! dispatcher) talks to a [`ClusterStore`]. Objects travel as JSON values in
//! their Kubernetes shape (`apiVersion`, `kind`, `metadata`, `spec`,
//! `status`), so the API server can patch them without knowing their types and
//! a kube-rs backend can implement the same trait over `DynamicObject`s;
//! [`typed`] adds typed helpers on top.
//!
//! Semantics are Kubernetes':
//! - `metadata.resourceVersion` is the store [`Revision`] (decimal string) of
//!   the last write of that object; revisions are strictly increasing across
//!   the whole store.
//! - `metadata.generation` starts at 1 and is bumped only when `spec` changes.
//! - `metadata.uid` and `metadata.creationTimestamp` are set on create.
//! - `update` and `update_status` with a `metadata.resourceVersion` in the
//!   object are conditional: a stale one is [`StoreError::Conflict`]. Without
//!   one they are unconditional.
//! - `update` never changes `status`; `update_status` changes only `status`.
//! - `delete` of an object with finalizers sets `metadata.deletionTimestamp`
//!   (and `deletionGracePeriodSeconds: 0`) and keeps it; an update that removes
//!   the last finalizer of a marked object deletes it. Once marked, no
//!   finalizer may be added.
//! - `watch` delivers every change after a revision, in revision order, from a
//!   bounded history; a revision older than the history is
//!   [`StoreError::TooOld`] (the API server turns it into the in-stream 410).
//!
//! Backends: [`RaftStore`] (the embedded store: Raft-replicated, kept in
//! redb; see [`raft`]) and [`MemStore`] (the same semantics in memory, for
//! tests). Both share the deterministic [`state`] machine and the watch
//! fan-out of [`hub`] (bounded per-watcher buffers: a slow watcher is cut off
//! with `TooOld`, never blocking writers; progress notifications every
//! [`WatchConfig::progress_interval`]).

pub mod events;
pub mod hub;
pub mod mem;
pub mod raft;
pub mod selector;
pub mod state;
pub mod typed;

pub use hub::{SharedEvent, SharedObject, WatchConfig};
pub use mem::MemStore;
pub use raft::{RaftConfig, RaftStore};

use std::pin::Pin;

use futures::Stream;
use serde_json::Value;

/// A store revision: strictly increasing, one per write.
pub type Revision = u64;

/// The kinds the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `shoal.dev/v1alpha1` Service (namespaced).
    Service,
    /// `shoal.dev/v1alpha1` Task (namespaced).
    Task,
    /// `shoal.dev/v1alpha1` Host (cluster-scoped).
    Host,
    /// Core `v1` Event (namespaced): what happened to an object, see [`events`].
    Event,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 4] = [Kind::Service, Kind::Task, Kind::Host, Kind::Event];

    /// The `kind` field value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Task => "Task",
            Kind::Host => "Host",
            Kind::Event => "Event",
        }
    }
    /// The plural resource name used in API paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Task => "tasks",
            Kind::Host => "hosts",
            Kind::Event => "events",
        }
    }
    /// The `apiVersion` of objects of this kind (`shoal.dev/v1alpha1`, or
    /// `v1` for the core group's Event).
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Event => "v1",
            _ => shoal_crds::API_VERSION,
        }
    }
    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Host)
    }
    /// The kind named by a `kind` field value.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Identity of one object. `namespace` is `None` for cluster-scoped kinds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace (namespaced kinds only).
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectKey {
    /// Key of a namespaced object.
    pub fn namespaced(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }
    /// Key of a cluster-scoped object.
    pub fn cluster(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: None,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind.plural(), ns, self.name),
            None => write!(f, "{}/{}", self.kind.plural(), self.name),
        }
    }
}

/// What to list or watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only this namespace (namespaced kinds); `None` for all namespaces.
    pub namespace: Option<String>,
    /// A Kubernetes label selector string: `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub label_selector: Option<String>,
    /// A field selector string over `metadata.name` and `metadata.namespace`
    /// (`=`, `==`, `!=`), e.g. `metadata.name=web`; Events also take
    /// `involvedObject.*`, `reason`, `type` and `source` (see [`selector`]).
    pub field_selector: Option<String>,
}

/// The result of a list: the items (sorted by namespace, then name) and the
/// store revision they are consistent with (the list's resourceVersion).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectList {
    /// The objects.
    pub items: Vec<Value>,
    /// The store revision of the snapshot.
    pub revision: Revision,
}

/// What a delete did.
#[derive(Clone, Debug, PartialEq)]
pub enum DeleteOutcome {
    /// The object is gone; this was its last state.
    Deleted(Value),
    /// The object has finalizers: it is marked with a `deletionTimestamp` and
    /// stays until the last finalizer is removed.
    Marked(Value),
}

/// Preconditions of a delete (Kubernetes `DeleteOptions.preconditions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletePreconditions {
    /// Delete only the object with this uid.
    pub uid: Option<String>,
    /// Delete only if the object is still at this revision.
    pub resource_version: Option<Revision>,
}

/// One change seen by a watcher.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// An object was created.
    Added(Value),
    /// An object changed (including being marked for deletion).
    Modified(Value),
    /// An object was deleted; its last state, with the deletion's revision as
    /// its resourceVersion.
    Deleted(Value),
    /// Progress notification: every change up to this revision has been
    /// delivered (for bookmarks). Sent periodically.
    Progress(Revision),
}

/// A stream of watch events. It ends with `Err(StoreError::TooOld)` if the
/// watcher fell too far behind (it is cut off rather than blocking writers).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// A [`WatchStream`] whose objects are shared between watchers (see
/// [`SharedObject`]).
pub type SharedWatchStream = Pin<Box<dyn Stream<Item = Result<SharedEvent, StoreError>> + Send>>;

/// Store errors, with Kubernetes' meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (404).
    #[error("{0} not found")]
    NotFound(String),
    /// An object with that name exists already (409).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A resourceVersion or uid precondition failed (409): re-read and retry.
    #[error("conflict on {key}: {message}")]
    Conflict {
        /// The object.
        key: String,
        /// What differed.
        message: String,
    },
    /// The object is malformed for the store (missing name, wrong kind…) (422).
    #[error("invalid object: {0}")]
    Invalid(String),
    /// A selector could not be parsed (400).
    #[error("bad selector: {0}")]
    BadSelector(String),
    /// The requested revision is older than the watch history (410): relist.
    #[error("revision {requested} is too old (oldest available: {oldest}): relist")]
    TooOld {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still watchable.
        oldest: Revision,
    },
    /// This node cannot take writes now (no leader, leader changed, shutting
    /// down); the write may or may not have been applied (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Storage failed (500).
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed. Conflicts are
    /// retryable after re-reading the object.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. } | StoreError::Unavailable(_) | StoreError::TooOld { .. }
        )
    }
}

/// The store seam. Implemented by the Raft-replicated embedded store and, in
/// kubernetes mode, by a kube-rs backend.
#[async_trait::async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// One object, or `None` if it does not exist.
    async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError>;
    /// Objects of a kind matching the options, consistent with one revision.
    async fn list(&self, kind: Kind, opts: &ListOptions) -> Result<ObjectList, StoreError>;
    /// Creates an object (its `kind` field names the kind); sets uid,
    /// creationTimestamp, generation 1 and resourceVersion. `status` is kept
    /// as given. Returns the stored object.
    async fn create(&self, obj: Value) -> Result<Value, StoreError>;
    /// Replaces metadata (labels, annotations, finalizers, ownerReferences)
    /// and spec; keeps status. Conditional on `metadata.resourceVersion` if
    /// set. Returns the stored object (or the deleted one, if this removed the
    /// last finalizer of a marked object).
    async fn update(&self, obj: Value) -> Result<Value, StoreError>;
    /// Replaces status only. Conditional on `metadata.resourceVersion` if set.
    async fn update_status(&self, obj: Value) -> Result<Value, StoreError>;
    /// Deletes an object, or marks it if it has finalizers.
    async fn delete(
        &self,
        key: &ObjectKey,
        preconditions: &DeletePreconditions,
    ) -> Result<DeleteOutcome, StoreError>;
    /// Changes of a kind after revision `from` (exclusive) that match the
    /// options, then live changes, with periodic [`WatchEvent::Progress`].
    async fn watch(
        &self,
        kind: Kind,
        from: Revision,
        opts: &ListOptions,
    ) -> Result<WatchStream, StoreError>;
    /// [`ClusterStore::watch`], with each change's object shared by every
    /// watcher it goes to (and encoded to JSON once): the API server's watch
    /// fan-out. By default, the events of `watch`, each shared once.
    async fn watch_shared(
        &self,
        kind: Kind,
        from: Revision,
        opts: &ListOptions,
    ) -> Result<SharedWatchStream, StoreError> {
        use futures::StreamExt;
        Ok(self
            .watch(kind, from, opts)
            .await?
            .map(|r| r.map(SharedEvent::from))
            .boxed())
    }
    /// The latest applied revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    /// Waits until reads on this handle show every write acknowledged
    /// anywhere before the call (a linearizable read follows): a replica
    /// that does not lead confirms with the leader how far the store is
    /// committed and waits to have applied that far. Stores whose reads are
    /// always current (a lone replica, memory) answer at once.
    async fn linearize(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
