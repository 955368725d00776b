//! [`MemStore`]: the [`ClusterStore`] semantics in memory, without durability
//! or replication — the fake for other components' tests, and the reference
//! the Raft store is checked against.

use std::sync::Arc;

use serde_json::Value;

use crate::hub::{Hub, WatchConfig};
use crate::state::{Command, Outcome, StateMachine};
use crate::{
    ClusterStore, DeleteOutcome, DeletePreconditions, Kind, ListOptions, ObjectKey, ObjectList,
    Revision, SharedWatchStream, StoreError, WatchStream,
};

/// An in-memory store. Watches, history, progress notifications and every
/// object semantic are the real ones; nothing survives the process.
#[derive(Debug)]
pub struct MemStore {
    hub: Arc<Hub>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// A store with the default watch settings.
    pub fn new() -> Self {
        Self::with_config(WatchConfig::default())
    }

    /// A store with these watch settings (tests use a tiny history or a
    /// short progress interval).
    pub fn with_config(config: WatchConfig) -> Self {
        let sm = StateMachine::new(config.history);
        Self {
            hub: Hub::new(sm, config),
        }
    }

    /// Number of live watchers (for tests of watch cleanup).
    pub fn watcher_count(&self) -> usize {
        self.hub.lock().watcher_count()
    }
}

impl Drop for MemStore {
    fn drop(&mut self) {
        self.hub.shutdown();
    }
}

/// The trait's delete result from a state-machine outcome.
pub(crate) fn delete_outcome(outcome: Outcome) -> DeleteOutcome {
    match outcome {
        Outcome::Deleted(v) => DeleteOutcome::Deleted(v),
        Outcome::Marked(v) | Outcome::Stored(v) => DeleteOutcome::Marked(v),
    }
}

#[async_trait::async_trait]
impl ClusterStore for MemStore {
    async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        Ok(self.hub.get(key))
    }

    async fn list(&self, kind: Kind, opts: &ListOptions) -> Result<ObjectList, StoreError> {
        self.hub.list(kind, opts)
    }

    async fn create(&self, obj: Value) -> Result<Value, StoreError> {
        Ok(self.hub.apply(&Command::create(obj))?.outcome.into_object())
    }

    async fn update(&self, obj: Value) -> Result<Value, StoreError> {
        Ok(self
            .hub
            .apply(&Command::Update { object: obj })?
            .outcome
            .into_object())
    }

    async fn update_status(&self, obj: Value) -> Result<Value, StoreError> {
        Ok(self
            .hub
            .apply(&Command::UpdateStatus { object: obj })?
            .outcome
            .into_object())
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        preconditions: &DeletePreconditions,
    ) -> Result<DeleteOutcome, StoreError> {
        Ok(delete_outcome(
            self.hub
                .apply(&Command::delete(key, preconditions))?
                .outcome,
        ))
    }

    async fn watch(
        &self,
        kind: Kind,
        from: Revision,
        opts: &ListOptions,
    ) -> Result<WatchStream, StoreError> {
        self.hub.watch(kind, from, opts)
    }

    async fn watch_shared(
        &self,
        kind: Kind,
        from: Revision,
        opts: &ListOptions,
    ) -> Result<SharedWatchStream, StoreError> {
        self.hub.watch_shared(kind, from, opts)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.hub.revision())
    }
}
