//! Raft's storage on redb: the log, hard state, conf state, the compaction
//! point and the state machine (objects, revision, applied index), all in one
//! database file, plus the write-ahead log next to it (`store.wal`, see
//! `wal.rs`) for what came after the last checkpoint.
//!
//! Reads (raft's [`Storage`] trait) are served from memory: the entries since
//! the last compaction, the hard and conf states. A `Ready`'s new entries and
//! hard state are made durable by one record appended to the write-ahead log
//! ([`DiskStorage::persist`]); everything else reaches redb in checkpoints,
//! durable transactions the node loop commits once per tick (or when the
//! write-ahead log grows large, or with a snapshot): the log entries and hard
//! state since the last one, the objects changed by applies with the applied
//! index, the revision, the commit index and the membership, and the
//! write-ahead log's next generation. If the process dies with applies not
//! yet checkpointed, the state goes back to an older applied index whose
//! entries are still in redb's log or the write-ahead log, and they are
//! applied again on open — the state machine is deterministic, so the same
//! revisions come out. The log is only compacted up to what is written.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde_json::Value;

use super::wal::{self, Wal};
use crate::hub::Hub;
use crate::state::{SnapshotData, StateMachine, key_of};
use crate::{ObjectKey, Revision, StoreError};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
/// JSON map of Raft id → address of the voters added by membership changes.
const PEER_ADDRESSES: &str = "peer_addresses";
/// Index and term of the last entry removed by compaction (or of the
/// installed snapshot): 16 bytes, little-endian.
const COMPACTED: &str = "compacted";
const APPLIED: &str = "applied";
const REVISION: &str = "revision";
/// The write-ahead log generation not yet checkpointed (see `wal.rs`).
const WAL_GENERATION: &str = "wal_generation";

pub(crate) fn db_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{what}: {e}"))
}

fn raft_err(e: StoreError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

fn encode_key(key: &ObjectKey) -> String {
    format!(
        "{}/{}/{}",
        key.kind.name(),
        key.namespace.as_deref().unwrap_or(""),
        key.name
    )
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

/// What was loaded at open.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub storage: DiskStorage,
    pub state: StateMachine,
}

/// Raft's storage; owned by the `RawNode`, changed only by the node loop.
#[derive(Debug)]
pub(crate) struct DiskStorage {
    db: Database,
    hard_state: HardState,
    conf_state: ConfState,
    compacted_index: u64,
    compacted_term: u64,
    /// Entries `compacted_index + 1 ..= last`.
    entries: VecDeque<Entry>,
    /// Applied to the in-memory state machine.
    applied: u64,
    /// Applied and written to redb (the objects table is at this index).
    applied_on_disk: u64,
    /// The hard state, conf state or peer addresses changed since last
    /// written.
    unwritten_states: bool,
    /// Where the voters added by membership changes are reached.
    /// Shared with every status the node publishes (no copy per turn).
    peer_addresses: Arc<BTreeMap<u64, String>>,
    /// Entries from this index on may differ from redb's log (they are in
    /// the write-ahead log only).
    log_unwritten_from: Option<u64>,
    wal: Wal,
    hub: Option<Arc<Hub>>,
}

/// Opens the database at `path`, creating it if there is none.
///
/// A new database is made under a temporary name, synced and then renamed
/// into place: a kill while redb writes a new file's header must not leave a
/// file at `path` that is not a database (every later start would fail on
/// it). The rename is atomic, so `path` either does not exist or holds a
/// complete empty database.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let io = |what: &str, e: std::io::Error| db_err(what, e);
    if !path.exists() || never_written(path)? {
        let tmp = path.with_extension("redb.new");
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing a half-made store database", e)),
        }
        let file = super::file::ZeroFilledFile::open(&tmp)
            .map_err(|e| db_err("creating the store database", e))?;
        let db = Database::builder()
            .create_with_backend(file)
            .map_err(|e| db_err("creating the store database", e))?;
        drop(db);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing the new store database", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("placing the new store database", e))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing the data directory", e))?;
        }
    }
    let file = super::file::ZeroFilledFile::open(path)
        .map_err(|e| db_err("opening the store database", e))?;
    Database::builder()
        .create_with_backend(file)
        .map_err(|e| db_err("opening the store database", e))
}

/// Whether the file at `path` holds nothing but zeros: what a first start of
/// an older version, killed before redb wrote the header, left behind. It
/// never held data, so it is made afresh.
fn never_written(path: &Path) -> Result<bool, StoreError> {
    use std::io::Read;
    const LIMIT: u64 = 64 << 20;
    let mut file =
        std::fs::File::open(path).map_err(|e| db_err("opening the store database", e))?;
    let len = file
        .metadata()
        .map_err(|e| db_err("opening the store database", e))?
        .len();
    if len > LIMIT {
        return Ok(false);
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| db_err("reading the store database", e))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

impl DiskStorage {
    /// Opens (or creates) the database. Membership is bootstrapped with
    /// `voters` only if the database is empty.
    pub fn open(path: &Path, voters: &[u64], history: usize) -> Result<Loaded, StoreError> {
        let db = open_database(path)?;
        let txn = db.begin_write().map_err(|e| db_err("begin", e))?;
        let mut meta_vals: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut entries = VecDeque::new();
        let mut objects = BTreeMap::new();
        {
            let meta = txn.open_table(META).map_err(|e| db_err("meta table", e))?;
            for row in meta.iter().map_err(|e| db_err("meta", e))? {
                let (k, v) = row.map_err(|e| db_err("meta", e))?;
                meta_vals.insert(k.value().to_owned(), v.value().to_vec());
            }
            let log = txn.open_table(LOG).map_err(|e| db_err("log table", e))?;
            for row in log.iter().map_err(|e| db_err("log", e))? {
                let (_, v) = row.map_err(|e| db_err("log", e))?;
                entries.push_back(
                    Entry::parse_from_bytes(v.value()).map_err(|e| db_err("log entry", e))?,
                );
            }
            let objs = txn
                .open_table(OBJECTS)
                .map_err(|e| db_err("objects table", e))?;
            for row in objs.iter().map_err(|e| db_err("objects", e))? {
                let (_, v) = row.map_err(|e| db_err("objects", e))?;
                let obj: Value =
                    serde_json::from_slice(v.value()).map_err(|e| db_err("stored object", e))?;
                objects.insert(key_of(&obj)?, obj);
            }
        }
        let fresh = meta_vals.is_empty() && entries.is_empty() && objects.is_empty();
        if fresh && !voters.is_empty() {
            // As raft-rs recommends, the log of a bootstrapped store starts
            // after a snapshot (index 1, term 1) holding the membership and the
            // empty state machine: a node added later, with an empty log,
            // then always catches up from a snapshot.
            let cs = ConfState::from((voters.to_vec(), Vec::<u64>::new()));
            let hs = HardState {
                term: 1,
                commit: 1,
                ..Default::default()
            };
            let mut compacted = [0u8; 16];
            compacted[..8].copy_from_slice(&1u64.to_le_bytes());
            compacted[8..].copy_from_slice(&1u64.to_le_bytes());
            let rows = [
                (
                    CONF_STATE,
                    cs.write_to_bytes().map_err(|e| db_err("conf state", e))?,
                ),
                (
                    HARD_STATE,
                    hs.write_to_bytes().map_err(|e| db_err("hard state", e))?,
                ),
                (COMPACTED, compacted.to_vec()),
                (APPLIED, 1u64.to_le_bytes().to_vec()),
            ];
            let mut meta = txn.open_table(META).map_err(|e| db_err("meta table", e))?;
            for (k, v) in rows {
                meta.insert(k, v.as_slice())
                    .map_err(|e| db_err("bootstrap", e))?;
                meta_vals.insert(k.to_owned(), v);
            }
            tracing::info!(?voters, "bootstrapped an empty store");
        }
        // No membership: a node waiting to be added to an existing cluster.
        let conf_state = match meta_vals.get(CONF_STATE) {
            Some(b) => ConfState::parse_from_bytes(b).map_err(|e| db_err("conf state", e))?,
            None => ConfState::default(),
        };
        txn.commit().map_err(|e| db_err("bootstrap commit", e))?;

        let hard_state = match meta_vals.get(HARD_STATE) {
            Some(b) => HardState::parse_from_bytes(b).map_err(|e| db_err("hard state", e))?,
            None => HardState::default(),
        };
        let (compacted_index, compacted_term) = match meta_vals.get(COMPACTED) {
            Some(b) if b.len() == 16 => (u64_of(&b[..8]), u64_of(&b[8..])),
            _ => (0, 0),
        };
        let applied = meta_vals.get(APPLIED).map_or(0, |b| u64_of(b));
        let revision: Revision = meta_vals.get(REVISION).map_or(0, |b| u64_of(b));
        if let Some(first) = entries.front()
            && first.index != compacted_index + 1
        {
            return Err(StoreError::Internal(format!(
                "the raft log starts at {} but was compacted to {compacted_index}",
                first.index
            )));
        }
        let peer_addresses: BTreeMap<u64, String> = match meta_vals.get(PEER_ADDRESSES) {
            Some(b) => serde_json::from_slice(b).map_err(|e| db_err("peer addresses", e))?,
            None => BTreeMap::new(),
        };
        let generation = meta_vals.get(WAL_GENERATION).map_or(0, |b| u64_of(b));
        let (wal, records) = Wal::open(&path.with_extension("wal"), generation)?;
        let mut storage = DiskStorage {
            db,
            hard_state,
            conf_state,
            compacted_index,
            compacted_term,
            entries,
            applied,
            applied_on_disk: applied,
            unwritten_states: false,
            peer_addresses: Arc::new(peer_addresses),
            log_unwritten_from: None,
            wal,
            hub: None,
        };
        // What was made durable after the last checkpoint; the next
        // checkpoint writes it to redb.
        let replayed = records.len();
        for rec in records {
            storage.append_in_memory(&rec.entries)?;
            if let Some(hs) = rec.hard_state {
                storage.hard_state = hs;
                storage.unwritten_states = true;
            }
        }
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                last = storage.last(),
                "replayed the write-ahead log"
            );
        }
        Ok(Loaded {
            storage,
            state: StateMachine::restore(objects, revision, history),
        })
    }

    pub fn set_hub(&mut self, hub: Arc<Hub>) {
        self.hub = Some(hub);
    }

    pub fn begin(&self, durable: bool) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| db_err("durability", e))?;
        Ok(txn)
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn compacted_index(&self) -> u64 {
        self.compacted_index
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn last(&self) -> u64 {
        self.compacted_index + self.entries.len() as u64
    }

    fn put_meta(txn: &WriteTransaction, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META).map_err(|e| db_err("meta table", e))?;
        meta.insert(key, value)
            .map_err(|e| db_err("meta write", e))?;
        Ok(())
    }

    fn check_append(&self, ents: &[Entry]) -> Result<(), StoreError> {
        match ents.first() {
            Some(first) if first.index <= self.compacted_index || first.index > self.last() + 1 => {
                Err(StoreError::Internal(format!(
                    "append at {} to a log holding {}..={}",
                    first.index,
                    self.compacted_index + 1,
                    self.last()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Appends entries in memory only, replacing any conflicting suffix; the
    /// next checkpoint writes them to redb.
    fn append_in_memory(&mut self, ents: &[Entry]) -> Result<(), StoreError> {
        self.check_append(ents)?;
        let Some(first) = ents.first() else {
            return Ok(());
        };
        self.entries
            .truncate((first.index - self.compacted_index - 1) as usize);
        self.entries.extend(ents.iter().cloned());
        self.log_unwritten_from = Some(
            self.log_unwritten_from
                .map_or(first.index, |f| f.min(first.index)),
        );
        Ok(())
    }

    /// Makes a `Ready`'s new entries (replacing any conflicting suffix) and
    /// hard state durable: one write-ahead log record.
    pub fn persist(&mut self, ents: &[Entry], hs: Option<&HardState>) -> Result<(), StoreError> {
        self.check_append(ents)?;
        self.wal.append(ents, hs)?;
        self.append_in_memory(ents)?;
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
            self.unwritten_states = true;
        }
        Ok(())
    }

    /// Whether a checkpoint would write anything.
    pub fn needs_checkpoint(&self) -> bool {
        self.has_unwritten() || self.log_unwritten_from.is_some() || self.wal.records_bytes() > 0
    }

    /// Whether the write-ahead log has grown enough to checkpoint now.
    pub fn checkpoint_due(&self) -> bool {
        self.wal.records_bytes() >= wal::CHECKPOINT_BYTES
    }

    /// Writes into `txn` the log entries that are only in the write-ahead
    /// log, and the write-ahead log's next generation; after `txn` commits,
    /// [`DiskStorage::checkpointed`] starts that generation. (The hard state
    /// goes with [`DiskStorage::write_applied`].)
    pub fn write_checkpoint(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        if let Some(from) = self.log_unwritten_from.take() {
            let mut log = txn.open_table(LOG).map_err(|e| db_err("log table", e))?;
            log.retain_in(from.., |_, _| false)
                .map_err(|e| db_err("log truncate", e))?;
            let skip = from.saturating_sub(self.compacted_index + 1) as usize;
            for e in self.entries.iter().skip(skip) {
                let bytes = e.write_to_bytes().map_err(|e| db_err("encode entry", e))?;
                log.insert(e.index, bytes.as_slice())
                    .map_err(|e| db_err("log write", e))?;
            }
        }
        let next = self.wal.generation() + 1;
        Self::put_meta(txn, WAL_GENERATION, &next.to_le_bytes())
    }

    /// The checkpoint written by [`DiskStorage::write_checkpoint`] is committed.
    pub fn checkpointed(&mut self) -> Result<(), StoreError> {
        self.wal.reset(self.wal.generation() + 1)
    }

    /// Appends entries, replacing any conflicting suffix.
    pub fn append(&mut self, txn: &WriteTransaction, ents: &[Entry]) -> Result<(), StoreError> {
        self.check_append(ents)?;
        let Some(first) = ents.first() else {
            return Ok(());
        };
        let mut log = txn.open_table(LOG).map_err(|e| db_err("log table", e))?;
        if first.index <= self.last() {
            log.retain_in(first.index.., |_, _| false)
                .map_err(|e| db_err("log truncate", e))?;
            self.entries
                .truncate((first.index - self.compacted_index - 1) as usize);
        }
        for e in ents {
            let bytes = e.write_to_bytes().map_err(|e| db_err("encode entry", e))?;
            log.insert(e.index, bytes.as_slice())
                .map_err(|e| db_err("log write", e))?;
        }
        self.entries.extend(ents.iter().cloned());
        Ok(())
    }

    pub fn set_hard_state(
        &mut self,
        txn: &WriteTransaction,
        hs: HardState,
    ) -> Result<(), StoreError> {
        let bytes = hs
            .write_to_bytes()
            .map_err(|e| db_err("encode hard state", e))?;
        Self::put_meta(txn, HARD_STATE, &bytes)?;
        self.hard_state = hs;
        Ok(())
    }

    /// A new commit index, written with the next [`DiskStorage::write_applied`]
    /// (raft does not need it durable).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
        self.unwritten_states = true;
    }

    /// A new membership from an applied conf change, written with the next
    /// [`DiskStorage::write_applied`] (with the applied index of the change).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
        self.unwritten_states = true;
    }

    fn write_conf_state(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let bytes = self
            .conf_state
            .write_to_bytes()
            .map_err(|e| db_err("encode conf state", e))?;
        Self::put_meta(txn, CONF_STATE, &bytes)?;
        let peers = serde_json::to_vec(&*self.peer_addresses)
            .map_err(|e| db_err("encode peer addresses", e))?;
        Self::put_meta(txn, PEER_ADDRESSES, &peers)
    }

    /// Where the voters added by membership changes are reached.
    pub fn peer_addresses(&self) -> &Arc<BTreeMap<u64, String>> {
        &self.peer_addresses
    }

    /// Voter `id` is reached at `address` (`None`: it was removed), written
    /// with the next [`DiskStorage::write_applied`] like the conf state.
    pub fn set_peer_address(&mut self, id: u64, address: Option<String>) {
        match address {
            Some(a) => Arc::make_mut(&mut self.peer_addresses).insert(id, a),
            None => Arc::make_mut(&mut self.peer_addresses).remove(&id),
        };
        self.unwritten_states = true;
    }

    /// Entries were applied to the in-memory state machine up to `index`.
    pub fn set_applied(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Whether applied state, commit index or membership wait to be written.
    pub fn has_unwritten(&self) -> bool {
        self.unwritten_states || self.applied_on_disk < self.applied
    }

    /// Writes what applies changed since the last call: the objects (current
    /// value, or deleted), the applied index and revision of `state`, and the
    /// hard and conf states — all in `txn`.
    pub fn write_applied(
        &mut self,
        txn: &WriteTransaction,
        state: &StateMachine,
        dirty: &[ObjectKey],
    ) -> Result<(), StoreError> {
        if !self.has_unwritten() && dirty.is_empty() {
            return Ok(());
        }
        let applied = self.applied;
        {
            let mut objs = txn
                .open_table(OBJECTS)
                .map_err(|e| db_err("objects table", e))?;
            for key in dirty {
                let k = encode_key(key);
                match state.get(key) {
                    Some(obj) => {
                        let bytes =
                            serde_json::to_vec(obj).map_err(|e| db_err("encode object", e))?;
                        objs.insert(k.as_str(), bytes.as_slice())
                            .map_err(|e| db_err("object write", e))?;
                    }
                    None => {
                        objs.remove(k.as_str())
                            .map_err(|e| db_err("object delete", e))?;
                    }
                }
            }
        }
        Self::put_meta(txn, APPLIED, &applied.to_le_bytes())?;
        Self::put_meta(txn, REVISION, &state.revision().to_le_bytes())?;
        if self.unwritten_states {
            let hs = self.hard_state.clone();
            self.set_hard_state(txn, hs)?;
            self.write_conf_state(txn)?;
            self.unwritten_states = false;
        }
        self.applied_on_disk = applied;
        Ok(())
    }

    /// Drops the log up to `index` (inclusive; at most the applied index
    /// already written).
    pub fn compact(&mut self, txn: &WriteTransaction, index: u64) -> Result<(), StoreError> {
        let index = index.min(self.applied_on_disk);
        if index <= self.compacted_index {
            return Ok(());
        }
        let term = self.term(index).map_err(|e| db_err("compaction term", e))?;
        let mut log = txn.open_table(LOG).map_err(|e| db_err("log table", e))?;
        log.retain_in(..=index, |_, _| false)
            .map_err(|e| db_err("log compaction", e))?;
        drop(log);
        let drop_n = (index - self.compacted_index) as usize;
        self.entries.drain(..drop_n.min(self.entries.len()));
        self.set_compacted(txn, index, term)
    }

    fn set_compacted(
        &mut self,
        txn: &WriteTransaction,
        index: u64,
        term: u64,
    ) -> Result<(), StoreError> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&index.to_le_bytes());
        b[8..].copy_from_slice(&term.to_le_bytes());
        Self::put_meta(txn, COMPACTED, &b)?;
        self.compacted_index = index;
        self.compacted_term = term;
        Ok(())
    }

    /// Installs a snapshot from the leader: the whole state machine, the
    /// membership, and an empty log after it. Returns the new state machine.
    pub fn apply_snapshot(
        &mut self,
        txn: &WriteTransaction,
        snap: &Snapshot,
        history: usize,
    ) -> Result<StateMachine, StoreError> {
        let meta = snap.get_metadata();
        let mut data: SnapshotData =
            serde_json::from_slice(snap.get_data()).map_err(|e| db_err("decode snapshot", e))?;
        self.peer_addresses = Arc::new(std::mem::take(&mut data.peer_addresses));
        let sm = StateMachine::from_snapshot(data, history)?;
        {
            let mut objs = txn
                .open_table(OBJECTS)
                .map_err(|e| db_err("objects table", e))?;
            objs.retain(|_, _| false)
                .map_err(|e| db_err("objects clear", e))?;
            for (key, obj) in sm.objects() {
                let bytes = serde_json::to_vec(obj).map_err(|e| db_err("encode object", e))?;
                objs.insert(encode_key(key).as_str(), bytes.as_slice())
                    .map_err(|e| db_err("object write", e))?;
            }
            let mut log = txn.open_table(LOG).map_err(|e| db_err("log table", e))?;
            log.retain(|_, _| false)
                .map_err(|e| db_err("log clear", e))?;
        }
        self.entries.clear();
        self.log_unwritten_from = None;
        self.set_compacted(txn, meta.index, meta.term)?;
        self.conf_state = meta.get_conf_state().clone();
        self.write_conf_state(txn)?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.set_hard_state(txn, hs)?;
        Self::put_meta(txn, APPLIED, &meta.index.to_le_bytes())?;
        Self::put_meta(txn, REVISION, &sm.revision().to_le_bytes())?;
        self.applied = meta.index;
        self.applied_on_disk = meta.index;
        Ok(sm)
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let lo = (low - self.compacted_index - 1) as usize;
        let hi = (high - self.compacted_index - 1) as usize;
        let mut ents: Vec<Entry> = self.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted_index {
            return Ok(self.compacted_term);
        }
        if idx < self.compacted_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.compacted_index - 1) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// A snapshot of the state machine at the applied index, made on demand
    /// (the state machine is always at the applied index between readies).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if self.applied < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let hub = self
            .hub
            .as_ref()
            .ok_or_else(|| raft_err(StoreError::Internal("no state machine attached".into())))?;
        let mut data = hub.lock().state().snapshot();
        data.peer_addresses = (*self.peer_addresses).clone();
        let data = serde_json::to_vec(&data).map_err(|e| raft_err(db_err("encode snapshot", e)))?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = self.term(self.applied)?;
        meta.set_conf_state(self.conf_state.clone());
        tracing::info!(to, index = self.applied, "sending a snapshot");
        Ok(snap)
    }
}
