//! [`RaftStore`]: the embedded store, replicated with Raft (raft-rs) and kept
//! in redb.
//!
//! - One thread per node owns the `RawNode` (see `raft/node.rs` for the `on_ready`
//!   order, the transactions and group commit).
//! - Writes are proposed to Raft and answered once applied on this node;
//!   reads (get, list, watch) are served from this node's state machine
//!   (what it has applied: on the leader, every acknowledged write).
//! - One redb file in the data directory (`store.redb`) holds the log, hard
//!   state, conf state, compaction point and the state machine as of the
//!   last checkpoint; what came after it is in the write-ahead log next to it
//!   (`store.wal`), one fdatasync'd record per write batch, replayed on open
//!   (see `raft/storage.rs` and `raft/wal.rs`).
//! - The log is compacted every [`RaftConfig::compact_every`] applied entries
//!   (the state machine in redb is the snapshot); a follower too far behind
//!   gets a snapshot of the state machine.
//! - Membership is bootstrapped from [`RaftConfig::voters`] only on an empty
//!   store. A single voter is the default; more voters need only their ids in
//!   the configuration and a [`Transport`].

mod file;
mod logger;
mod node;
mod storage;
mod transport;
mod wal;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use raft::eraftpb::{ConfChange, ConfChangeType};
use serde_json::Value;
use tokio::sync::oneshot;

pub use transport::{Inbox, MemTransport, NoTransport, Transport};

use crate::hub::{Hub, WatchConfig};
use crate::mem::delete_outcome;
use crate::state::{Command, Outcome};
use crate::{
    ClusterStore, DeleteOutcome, DeletePreconditions, Kind, ListOptions, ObjectKey, ObjectList,
    Revision, SharedWatchStream, StoreError, WatchStream,
};
use node::{Msg, Node};
use storage::DiskStorage;

/// Name of the database file in the data directory.
pub const DB_FILE: &str = "store.redb";

/// Settings of one Raft node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// This node's id (non-zero).
    pub id: u64,
    /// The voters to bootstrap an empty store with (default: this node
    /// alone). Empty: this node joins an existing cluster — it waits to be
    /// added ([`RaftStore::add_voter`] on the leader) and catches up from a
    /// snapshot.
    pub voters: Vec<u64>,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// One Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Compact the log once this many entries were applied since the last
    /// compaction.
    pub compact_every: u64,
    /// Entries kept after a compaction for followers that are a little behind
    /// (further behind, they get a snapshot).
    pub catch_up_entries: u64,
    /// How long a write waits to be applied before `Unavailable`.
    pub propose_timeout: Duration,
    /// At most this many queued messages are taken per turn.
    pub max_batch: usize,
    /// How long a turn may wait for the writers answered by the previous
    /// turn to send their next write, so that they share an fsync (0: never
    /// wait; a lone writer never waits).
    pub group_commit_wait: Duration,
    /// Watch history and fan-out.
    pub watch: WatchConfig,
}

impl RaftConfig {
    /// A single voter (id 1) in `data_dir`, with the default settings.
    pub fn single(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id: 1,
            voters: vec![1],
            data_dir: data_dir.into(),
            tick: node::DEFAULT_TICK,
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_every: 10_000,
            catch_up_entries: 1_000,
            propose_timeout: Duration::from_secs(10),
            max_batch: 4_096,
            group_commit_wait: Duration::from_micros(200),
            watch: WatchConfig::default(),
        }
    }
}

/// What a node reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// The leader it knows (0: none).
    pub leader_id: u64,
    /// Whether it leads.
    pub is_leader: bool,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Snapshots installed from a leader since start.
    pub snapshots_installed: u64,
    /// Proposals accepted since start.
    pub proposals: u64,
    /// fsync'd writes since start: write-ahead log records and snapshot
    /// installs (proposals / syncs is the group commit batch size).
    pub syncs: u64,
    /// The voters.
    pub voters: Vec<u64>,
    /// Where the voters added with [`RaftStore::add_voter_at`] are reached.
    pub peer_addresses: Arc<std::collections::BTreeMap<u64, String>>,
    /// The node loop has stopped.
    pub stopped: bool,
}

/// A Raft-replicated, redb-backed [`ClusterStore`].
#[derive(Debug)]
pub struct RaftStore {
    hub: Arc<Hub>,
    tx: std::sync::mpsc::Sender<Msg>,
    status: Arc<Mutex<NodeStatus>>,
    thread: Option<JoinHandle<()>>,
    propose_timeout: Duration,
}

impl RaftStore {
    /// Opens a single voter in `data_dir` (created if missing).
    pub fn open_single(data_dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open(RaftConfig::single(data_dir), Arc::new(NoTransport))
    }

    /// Opens a node: loads its state from the data directory (bootstrapping
    /// membership if the store is empty), starts its Raft thread and returns
    /// once the entries committed in its log are applied (for a lone voter:
    /// its whole log), so that reads show every acknowledged write. A node of
    /// several voters that finds no quorum within `propose_timeout` opens
    /// anyway and catches up when it can.
    pub fn open(config: RaftConfig, transport: Arc<dyn Transport>) -> Result<Self, StoreError> {
        if config.id == 0 {
            return Err(StoreError::Invalid("a Raft node id must not be 0".into()));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StoreError::Internal(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let voters = config.voters.clone();
        let loaded = DiskStorage::open(
            &config.data_dir.join(DB_FILE),
            &voters,
            config.watch.history,
        )?;
        let mut storage = loaded.storage;
        let hub = Hub::new(loaded.state, config.watch.clone());
        storage.set_hub(hub.clone());

        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: storage.applied(),
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let raw = raft::RawNode::new(&raft_config, storage, &logger::logger(config.id))
            .map_err(|e| StoreError::Internal(format!("starting raft: {e}")))?;

        let (tx, rx) = std::sync::mpsc::channel();
        transport.attach(config.id, Inbox(tx.clone()));
        for (id, address) in raw.store().peer_addresses().iter() {
            transport.set_peer(*id, Some(address));
        }
        let status = Arc::new(Mutex::new(NodeStatus {
            id: config.id,
            ..Default::default()
        }));
        let propose_timeout = config.propose_timeout;
        let span = tracing::info_span!("raft", id = config.id);
        // What must be applied before reads are served: everything committed
        // (a lone voter commits its whole log as soon as it leads).
        let lone = raw.store().conf_state().voters == [config.id];
        let catch_up_to = if lone {
            raw.raft.raft_log.last_index()
        } else {
            raw.store().hard_state().commit
        };
        let (caught_up_tx, caught_up) = std::sync::mpsc::sync_channel(1);
        let mut node = Node::new(raw, hub.clone(), rx, transport, status.clone(), config);
        node.notify_caught_up(catch_up_to, caught_up_tx);
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", node.config.id))
            .spawn(move || {
                let _entered = span.enter();
                node.run();
            })
            .map_err(|e| StoreError::Internal(format!("starting the raft thread: {e}")))?;
        let mut store = Self {
            hub,
            tx,
            status,
            thread: Some(thread),
            propose_timeout,
        };
        // Serve no read before the log is replayed: acknowledged writes whose
        // apply was not yet durable are applied again first.
        match caught_up.recv_timeout(propose_timeout) {
            Ok(()) => Ok(store),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !lone => {
                tracing::warn!(
                    catch_up_to,
                    "opened before catching up with the committed log (no quorum yet)"
                );
                Ok(store)
            }
            Err(e) => {
                store.shutdown();
                Err(StoreError::Internal(format!(
                    "the raft node did not replay its log to {catch_up_to}: {e}"
                )))
            }
        }
    }

    /// Where peers' messages for this node go.
    pub fn inbox(&self) -> Inbox {
        Inbox(self.tx.clone())
    }

    /// The revision of this node's state machine (what [`ClusterStore::revision`]
    /// answers), without an await.
    pub fn revision_now(&self) -> Revision {
        self.hub.revision()
    }

    /// The node's status as of the end of the Raft loop's last turn (a write
    /// may be answered a moment before the status counts it).
    pub fn status(&self) -> NodeStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops the Raft thread and waits for it (also done on drop).
    pub fn shutdown(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Adds voter `id` (running with an empty store and no `voters`,
    /// reachable through the transport); answered once the change is applied
    /// on this node. Call it on the leader; one change at a time.
    pub async fn add_voter(&self, id: u64) -> Result<(), StoreError> {
        self.change_membership(id, ConfChangeType::AddNode, None)
            .await
    }

    /// Adds voter `id`, reached by the others at `address`: the address is
    /// part of the change, so every node's transport learns it
    /// ([`Transport::set_peer`]) and keeps it across restarts and snapshots.
    /// Answered once the change is applied on this node; any node may call
    /// it (a follower forwards it to the leader).
    pub async fn add_voter_at(&self, id: u64, address: &str) -> Result<(), StoreError> {
        self.change_membership(id, ConfChangeType::AddNode, Some(address))
            .await
    }

    /// Removes voter `id`; answered once the change is applied on this node.
    pub async fn remove_voter(&self, id: u64) -> Result<(), StoreError> {
        self.change_membership(id, ConfChangeType::RemoveNode, None)
            .await
    }

    async fn change_membership(
        &self,
        id: u64,
        change: ConfChangeType,
        address: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = id;
        if let Some(a) = address {
            cc.context = a.as_bytes().to_vec().into();
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::ConfChange { cc, reply })
            .map_err(|_| StoreError::Unavailable("the raft node has stopped".into()))?;
        match tokio::time::timeout(self.propose_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable("the raft node has stopped".into())),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for the membership change; it may or may not have been applied"
                    .into(),
            )),
        }
    }

    async fn propose(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Propose { cmd, reply })
            .map_err(|_| StoreError::Unavailable("the raft node has stopped".into()))?;
        match tokio::time::timeout(self.propose_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable("the raft node has stopped".into())),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for the write to be committed; it may or may not have been applied".into(),
            )),
        }
    }
}

impl Drop for RaftStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[async_trait::async_trait]
impl ClusterStore for RaftStore {
    async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        Ok(self.hub.get(key))
    }

    async fn list(&self, kind: Kind, opts: &ListOptions) -> Result<ObjectList, StoreError> {
        self.hub.list(kind, opts)
    }

    async fn create(&self, obj: Value) -> Result<Value, StoreError> {
        Ok(self.propose(Command::create(obj)).await?.into_object())
    }

    async fn update(&self, obj: Value) -> Result<Value, StoreError> {
        Ok(self
            .propose(Command::Update { object: obj })
            .await?
            .into_object())
    }

    async fn update_status(&self, obj: Value) -> Result<Value, StoreError> {
        Ok(self
            .propose(Command::UpdateStatus { object: obj })
            .await?
            .into_object())
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        preconditions: &DeletePreconditions,
    ) -> Result<DeleteOutcome, StoreError> {
        Ok(delete_outcome(
            self.propose(Command::delete(key, preconditions)).await?,
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

    async fn linearize(&self) -> Result<(), StoreError> {
        // A lone voter answers writes once applied: its reads are current.
        let status = self.status();
        if status.is_leader && status.voters.len() <= 1 {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Read { reply })
            .map_err(|_| StoreError::Unavailable("the raft node has stopped".into()))?;
        match tokio::time::timeout(self.propose_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable("the raft node has stopped".into())),
            Err(_) => Err(StoreError::Unavailable(
                "timed out confirming the store's state with the Raft leader".into(),
            )),
        }
    }
}
