//! The Raft loop: one thread owns the `RawNode` and its storage and follows
//! raft-rs's `on_ready` order. It is a thread, not a tokio task, because it
//! blocks on fsync.
//!
//! Each turn: wait for a message or the next tick; take every queued message
//! (proposals from clients, messages from peers) — all proposals that arrived
//! during the previous fsync share the next one (group commit), and if the
//! last turn answered several writers, wait up to `group_commit_wait` for
//! their next writes so they do not alternate between two fsyncs; tick if
//! due; then handle the `Ready`:
//! 1. send its messages (a leader may send appends before persisting);
//! 2. apply its committed entries; when raft says the Ready must be synced
//!    (new entries, term or vote), append its entries and hard state to the
//!    write-ahead log (one write, one fdatasync). A Ready with a snapshot is
//!    a checkpoint instead (below), installing the snapshot;
//! 3. answer the clients whose entries were applied; send the persisted
//!    messages; `advance`;
//! 4. the `LightReady`: send its messages; note the commit index; apply its
//!    committed entries and answer their clients — they are durable in the
//!    log, so their objects are written with the next checkpoint;
//!    `advance_apply`.
//!
//! A checkpoint — every tick when anything is pending, when the write-ahead
//! log passes its size limit, and at shutdown — is one durable redb
//! transaction with the entries and hard state only the write-ahead log
//! holds, every object changed by applies since the last one together with
//! the applied index, revision, commit index and membership, and a log
//! compaction when due; the write-ahead log then starts over.
//!
//! Linearizable reads (ReadIndex): the reads that arrive in one turn share
//! one `read_index` request (its context is `(node id, request id)`); raft
//! answers it with the leader's commit index once a quorum confirmed the
//! leadership, and the reads are answered when this node has applied that
//! far. A request raft drops (no leader, a leader that has not committed in
//! its term yet, a lost message) is asked again after a few ticks.
//!
//! A proposal's entry carries `(node id, proposal id)` in its context and the
//! command in its data; when the entry is applied on the node that proposed
//! it, that node answers the client with the apply's result. When the term
//! changes every pending proposal fails with a retryable `Unavailable`: its
//! entry may or may not be committed later.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::storage::{DiskStorage, db_err};
use super::transport::Transport;
use super::{NodeStatus, RaftConfig};
use crate::hub::Hub;
use crate::state::{Command, Outcome};
use crate::{ObjectKey, StoreError};

pub(crate) type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

/// The answer to a linearizable read: the node may serve it now.
pub(crate) type ReadReply = oneshot::Sender<Result<(), StoreError>>;

/// Ticks after which a read index request not answered is asked again.
const READ_RETRY_TICKS: u64 = 3;

/// What the node loop receives.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A client's write.
    Propose { cmd: Command, reply: Reply },
    /// A membership change.
    ConfChange {
        cc: ConfChange,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A message from a peer.
    Raft(Box<Message>),
    /// A linearizable read: answered once this node applied everything
    /// committed when it was asked.
    Read { reply: ReadReply },
    /// Stop.
    Shutdown,
}

/// A proposal waiting for its entry to be applied. The command is kept so
/// the proposing node applies it without decoding its own entry again.
#[derive(Debug)]
struct Pending {
    reply: Reply,
    cmd: Command,
}

/// An entry's context: the proposing node and its proposal id (16 bytes,
/// little-endian); its data is the command as JSON.
fn encode_origin(node: u64, id: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&node.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b
}

fn decode_origin(ctx: &[u8]) -> Option<(u64, u64)> {
    let node = u64::from_le_bytes(ctx.get(..8)?.try_into().ok()?);
    let id = u64::from_le_bytes(ctx.get(8..16)?.try_into().ok()?);
    Some((node, id))
}

pub(crate) struct Node {
    pub raw: RawNode<DiskStorage>,
    pub hub: Arc<Hub>,
    pub rx: Receiver<Msg>,
    pub transport: Arc<dyn Transport>,
    pub status: Arc<Mutex<NodeStatus>>,
    pub config: RaftConfig,
    pending: HashMap<u64, Pending>,
    pending_conf: HashMap<u64, oneshot::Sender<Result<(), StoreError>>>,
    next_id: u64,
    term: u64,
    snapshots_installed: u64,
    proposals: u64,
    syncs: u64,
    /// Clients answered by the last Ready.
    answered_last: u64,
    /// Objects changed by applies and not yet written to redb.
    dirty: Vec<ObjectKey>,
    /// Signalled once everything in the log at start is applied.
    caught_up: Option<(u64, std::sync::mpsc::SyncSender<()>)>,
    /// Ticks since start.
    ticks: u64,
    /// Reads not yet in a read index request.
    reads_new: Vec<ReadReply>,
    /// Read index requests asked: by request id, the tick they were asked
    /// at and their reads.
    reads_asked: HashMap<u64, (u64, Vec<ReadReply>)>,
    /// Reads with their read index, waiting for the apply to reach it.
    reads_ready: Vec<(u64, Vec<ReadReply>)>,
}

type Answers = Vec<(Reply, Result<Outcome, StoreError>)>;

impl Node {
    pub fn new(
        raw: RawNode<DiskStorage>,
        hub: Arc<Hub>,
        rx: Receiver<Msg>,
        transport: Arc<dyn Transport>,
        status: Arc<Mutex<NodeStatus>>,
        config: RaftConfig,
    ) -> Self {
        let term = raw.raft.term;
        Self {
            raw,
            hub,
            rx,
            transport,
            status,
            config,
            pending: HashMap::new(),
            pending_conf: HashMap::new(),
            next_id: 1,
            term,
            snapshots_installed: 0,
            proposals: 0,
            syncs: 0,
            answered_last: 0,
            dirty: Vec::new(),
            caught_up: None,
            ticks: 0,
            reads_new: Vec::new(),
            reads_asked: HashMap::new(),
            reads_ready: Vec::new(),
        }
    }

    /// Signals `done` once the applied index reaches `index`.
    pub fn notify_caught_up(&mut self, index: u64, done: std::sync::mpsc::SyncSender<()>) {
        self.caught_up = Some((index, done));
    }

    /// Runs until shutdown or a storage failure.
    pub fn run(mut self) {
        // A lone voter need not wait an election timeout to lead.
        if self.raw.store().conf_state().voters == [self.config.id]
            && let Err(e) = self.raw.campaign()
        {
            tracing::warn!(error = %e, "campaign failed");
        }
        let tick = self.config.tick;
        let mut next_tick = Instant::now() + tick;
        let mut stop = false;
        while !stop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(msg) => {
                    let proposals_before = self.proposals;
                    stop = self.handle(msg);
                    // Group commit: take everything that queued up meanwhile,
                    // and give the writers answered last turn a moment (at
                    // most `group_commit_wait`) to send their next write, so
                    // they share the next fsync rather than alternate.
                    let expect = self.answered_last;
                    let linger_until = Instant::now() + self.config.group_commit_wait;
                    let mut taken = 1;
                    while !stop && taken < self.config.max_batch {
                        let next = match self.rx.try_recv() {
                            Ok(msg) => Some(msg),
                            Err(TryRecvError::Disconnected) => None,
                            Err(TryRecvError::Empty) => {
                                let now = Instant::now();
                                if self.proposals - proposals_before >= expect
                                    || now >= linger_until
                                {
                                    None
                                } else {
                                    self.rx.recv_timeout(linger_until - now).ok()
                                }
                            }
                        };
                        let Some(msg) = next else { break };
                        stop = self.handle(msg);
                        taken += 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.ticks += 1;
                self.retry_reads();
                next_tick = now + tick;
                self.pending.retain(|_, p| !p.reply.is_closed());
                self.pending_conf.retain(|_, r| !r.is_closed());
                // What the write-ahead log holds reaches redb at the latest
                // one tick later (a restart replays fewer entries).
                if let Err(e) = self.checkpoint() {
                    tracing::error!(error = %e, "raft storage failed: stopping this node");
                    self.fail_pending(&e);
                    self.fail_reads(&e);
                    self.publish_status(true);
                    break;
                }
            }
            self.ask_reads();
            if let Err(e) = self.on_ready() {
                tracing::error!(error = %e, "raft storage failed: stopping this node");
                self.fail_pending(&e);
                self.fail_reads(&e);
                self.publish_status(true);
                break;
            }
            self.answer_reads();
            self.check_term();
            self.publish_status(false);
            if let Some((index, _)) = &self.caught_up
                && self.raw.store().applied() >= *index
                && let Some((_, done)) = self.caught_up.take()
            {
                let _ = done.send(());
            }
        }
        // Checkpoint the last applies, so a restart need not replay them.
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "final sync failed");
        }
        let stopping = StoreError::Unavailable("the store is shutting down".into());
        self.fail_pending(&stopping);
        self.fail_reads(&stopping);
        self.publish_status(true);
        self.hub.shutdown();
        tracing::info!("raft node stopped");
    }

    /// Handles one message; true to stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Shutdown => return true,
            Msg::Raft(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "raft message refused");
                }
            }
            Msg::Read { reply } => self.reads_new.push(reply),
            Msg::ConfChange { cc, reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(StoreError::Unavailable(
                        "no Raft leader at the moment".into(),
                    )));
                    return false;
                }
                let id = self.next_id;
                self.next_id += 1;
                match self
                    .raw
                    .propose_conf_change(encode_origin(self.config.id, id), cc)
                {
                    Ok(()) => {
                        self.pending_conf.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(StoreError::Unavailable(format!(
                            "membership change dropped: {e}"
                        ))));
                    }
                }
            }
            Msg::Propose { cmd, reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(StoreError::Unavailable(
                        "no Raft leader at the moment".into(),
                    )));
                    return false;
                }
                let id = self.next_id;
                self.next_id += 1;
                let data = match serde_json::to_vec(&cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(StoreError::Invalid(format!(
                            "cannot encode the write: {e}"
                        ))));
                        return false;
                    }
                };
                match self.raw.propose(encode_origin(self.config.id, id), data) {
                    Ok(()) => {
                        self.pending.insert(id, Pending { reply, cmd });
                        self.proposals += 1;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(StoreError::Unavailable(format!(
                            "proposal dropped: {e}"
                        ))));
                    }
                }
            }
        }
        false
    }

    /// Asks one read index for the reads that arrived this turn, or fails
    /// them at once without a leader to ask, as writes are (the caller
    /// tries again: an election takes about a second).
    fn ask_reads(&mut self) {
        self.reads_new.retain(|r| !r.is_closed());
        if self.reads_new.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads_new);
        if self.raw.raft.leader_id == raft::INVALID_ID {
            for r in reads {
                let _ = r.send(Err(StoreError::Unavailable(
                    "no Raft leader at the moment".into(),
                )));
            }
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.raw.read_index(encode_origin(self.config.id, id));
        self.reads_asked.insert(id, (self.ticks, reads));
    }

    /// Requests unanswered for a few ticks are asked again (raft drops some
    /// without a word); reads whose caller gave up are forgotten.
    fn retry_reads(&mut self) {
        let now = self.ticks;
        let stale: Vec<u64> = self
            .reads_asked
            .iter()
            .filter(|(_, (at, _))| now.saturating_sub(*at) >= READ_RETRY_TICKS)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some((_, reads)) = self.reads_asked.remove(&id) {
                self.reads_new
                    .extend(reads.into_iter().filter(|r| !r.is_closed()));
            }
        }
    }

    /// Takes raft's answers to read index requests.
    fn take_read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Some((node, id)) = decode_origin(&rs.request_ctx) else {
                continue;
            };
            if node != self.config.id {
                continue;
            }
            if let Some((_, reads)) = self.reads_asked.remove(&id) {
                self.reads_ready.push((rs.index, reads));
            }
        }
    }

    /// Answers the reads whose read index is applied.
    fn answer_reads(&mut self) {
        if self.reads_ready.is_empty() {
            return;
        }
        let applied = self.raw.store().applied();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_ready)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_ready = waiting;
        for (_, reads) in done {
            for r in reads {
                let _ = r.send(Ok(()));
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let (to, snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            let delivered = self.transport.send(m);
            if !delivered {
                self.raw.report_unreachable(to);
            }
            if snapshot {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.send(ready.take_messages());
        self.take_read_states(ready.take_read_states());

        let has_snapshot = !ready.snapshot().is_empty();
        let answers = if has_snapshot {
            // A checkpoint with the snapshot, its entries and hard state.
            self.syncs += 1;
            let txn = self.raw.store().begin(true)?;
            let history = self.hub.config().history;
            let sm = self
                .raw
                .mut_store()
                .apply_snapshot(&txn, ready.snapshot(), history)?;
            tracing::info!(
                index = ready.snapshot().get_metadata().index,
                "installed a snapshot"
            );
            self.hub.lock().replace_state(sm);
            self.dirty.clear();
            self.snapshots_installed += 1;
            for (id, address) in self.raw.store().peer_addresses().clone().iter() {
                self.transport.set_peer(*id, Some(address));
            }
            let answers = self.apply(ready.take_committed_entries())?;
            self.raw.mut_store().append(&txn, ready.entries())?;
            if let Some(hs) = ready.hs() {
                self.raw.mut_store().set_hard_state(&txn, hs.clone())?;
            }
            self.raw.mut_store().write_checkpoint(&txn)?;
            self.write_applied(&txn)?;
            txn.commit().map_err(|e| db_err("commit", e))?;
            self.raw.mut_store().checkpointed()?;
            answers
        } else if ready.must_sync() {
            // New entries, term or vote: one write-ahead log record.
            self.syncs += 1;
            let answers = self.apply(ready.take_committed_entries())?;
            self.raw.mut_store().persist(ready.entries(), ready.hs())?;
            if self.raw.store().checkpoint_due() {
                self.checkpoint()?;
            }
            answers
        } else {
            // Nothing to persist now (no entries, snapshot, term or vote):
            // committed entries are already durable in the log; their
            // objects and the commit index go with the next checkpoint.
            if let Some(hs) = ready.hs() {
                self.raw.mut_store().set_commit(hs.commit);
            }
            self.apply(ready.take_committed_entries())?
        };
        let mut answered = answers.len();
        answer(answers);
        self.send(ready.take_persisted_messages());

        let mut light = self.raw.advance(ready);
        self.send(light.take_messages());
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        // These entries are durable in the log: answer once applied in
        // memory; their objects are written with the next transaction.
        let answers = self.apply(light.take_committed_entries())?;
        answered += answers.len();
        answer(answers);
        self.answered_last = answered as u64;
        self.raw.advance_apply();
        Ok(())
    }

    /// Writes what applies changed (objects, applied index, revision, commit
    /// index, membership) into `txn`, and compacts the log when due.
    fn write_applied(&mut self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        self.dirty.sort();
        self.dirty.dedup();
        let hub = self.hub.clone();
        let core = hub.lock();
        self.raw
            .mut_store()
            .write_applied(txn, core.state(), &self.dirty)?;
        drop(core);
        self.dirty.clear();
        self.maybe_compact(txn)
    }

    /// Writes to redb, in one durable transaction, what only the write-ahead
    /// log and memory hold (entries, hard state, applied objects), then
    /// starts the write-ahead log over.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        if !self.raw.store().needs_checkpoint() && self.dirty.is_empty() {
            return Ok(());
        }
        let txn = self.raw.store().begin(true)?;
        self.raw.mut_store().write_checkpoint(&txn)?;
        self.write_applied(&txn)?;
        txn.commit().map_err(|e| db_err("commit", e))?;
        self.raw.mut_store().checkpointed()
    }

    /// Applies committed entries to the state machine, noting what changed.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<Answers, StoreError> {
        let mut answers = Vec::new();
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(answers);
        };
        let hub = self.hub.clone();
        let mut core = hub.lock();
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    if entry.get_data().is_empty() {
                        continue; // a new leader's empty entry
                    }
                    let mine = decode_origin(entry.get_context())
                        .filter(|(node, _)| *node == self.config.id)
                        .and_then(|(_, id)| self.pending.remove(&id));
                    let decoded;
                    let cmd = match &mine {
                        Some(p) => &p.cmd,
                        None => match serde_json::from_slice::<Command>(entry.get_data()) {
                            Ok(cmd) => {
                                decoded = cmd;
                                &decoded
                            }
                            Err(e) => {
                                tracing::error!(index = entry.index, error = %e, "undecodable log entry skipped");
                                continue;
                            }
                        },
                    };
                    let result = core.apply(cmd);
                    if let Ok(applied) = &result
                        && let Some(change) = &applied.change
                    {
                        self.dirty.push(change.key.clone());
                    }
                    if let Some(p) = mine {
                        answers.push((p.reply, result.map(|a| a.outcome)));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(entry.get_data())
                        .map_err(|e| db_err("conf change", e))?;
                    let cs = self
                        .raw
                        .apply_conf_change(&cc)
                        .map_err(|e| db_err("conf change", e))?;
                    tracing::info!(voters = ?cs.voters, "membership changed");
                    self.raw.mut_store().set_conf_state(cs);
                    // The address travels with the change (etcd's way), so
                    // every server learns where a new voter is reached.
                    let address = std::str::from_utf8(cc.get_context())
                        .ok()
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned);
                    match cc.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            if let Some(a) = address {
                                self.transport.set_peer(cc.node_id, Some(&a));
                                self.raw.mut_store().set_peer_address(cc.node_id, Some(a));
                            }
                        }
                        ConfChangeType::RemoveNode => {
                            self.raw.mut_store().set_peer_address(cc.node_id, None);
                        }
                    }
                    // Committed, hence durable in the log: answer now.
                    if let Some((node, id)) = decode_origin(entry.get_context())
                        && node == self.config.id
                        && let Some(reply) = self.pending_conf.remove(&id)
                    {
                        let _ = reply.send(Ok(()));
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(entry.get_data())
                        .map_err(|e| db_err("conf change", e))?;
                    let cs = self
                        .raw
                        .apply_conf_change(&cc)
                        .map_err(|e| db_err("conf change", e))?;
                    self.raw.mut_store().set_conf_state(cs);
                }
            }
        }
        self.raw.mut_store().set_applied(last);
        Ok(answers)
    }

    /// Compacts the log once `compact_every` entries were applied since the
    /// last compaction, keeping `catch_up_entries` for slow followers.
    fn maybe_compact(&mut self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let store = self.raw.store();
        let applied = store.applied();
        if applied.saturating_sub(store.compacted_index())
            < self.config.compact_every + self.config.catch_up_entries
        {
            return Ok(());
        }
        let to = applied.saturating_sub(self.config.catch_up_entries);
        tracing::debug!(to, "compacting the raft log");
        self.raw.mut_store().compact(txn, to)
    }

    fn check_term(&mut self) {
        let term = self.raw.raft.term;
        if term != self.term {
            tracing::info!(
                from = self.term,
                to = term,
                leader = self.raw.raft.leader_id,
                "term changed"
            );
            self.term = term;
            let err = StoreError::Unavailable(format!(
                "the Raft term changed to {term}: the write may or may not have been applied"
            ));
            self.fail_pending(&err);
        }
    }

    fn fail_pending(&mut self, err: &StoreError) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, r) in self.pending_conf.drain() {
            let _ = r.send(Err(err.clone()));
        }
    }

    /// Fails every read (the node stops; a term change keeps them: their
    /// requests are asked again, their read indexes stay valid).
    fn fail_reads(&mut self, err: &StoreError) {
        let reads = self
            .reads_new
            .drain(..)
            .chain(self.reads_asked.drain().flat_map(|(_, (_, r))| r))
            .chain(self.reads_ready.drain(..).flat_map(|(_, r)| r));
        for r in reads {
            let _ = r.send(Err(err.clone()));
        }
    }

    fn publish_status(&self, stopped: bool) {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let status = NodeStatus {
            id: self.config.id,
            term: raft.term,
            leader_id: raft.leader_id,
            is_leader: raft.state == StateRole::Leader,
            commit: store.hard_state().commit,
            applied: store.applied(),
            first_index: store.compacted_index() + 1,
            snapshots_installed: self.snapshots_installed,
            proposals: self.proposals,
            syncs: self.syncs,
            voters: store.conf_state().voters.clone(),
            peer_addresses: store.peer_addresses().clone(),
            stopped,
        };
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }
}

fn answer(answers: Answers) {
    for (reply, result) in answers {
        let _ = reply.send(result);
    }
}

/// The tick interval default: 100 ms, as raft-rs's examples.
pub(crate) const DEFAULT_TICK: Duration = Duration::from_millis(100);
