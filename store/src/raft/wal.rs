//! The write-ahead log: raft's entries and hard state between two checkpoints.
//!
//! A durable redb commit costs far more than its fsync (page allocation,
//! checksums, table roots, freed-page bookkeeping): profiled under one
//! writer, redb's commit was two thirds of the Raft thread's time per write.
//! So a `Ready`'s new entries and hard state are appended here as one record,
//! with one write and one `fdatasync`, and redb receives them — together with
//! the objects applied since — in a *checkpoint*: one durable transaction per
//! tick (or sooner when this log grows past [`CHECKPOINT_BYTES`]), after which
//! the log starts over. This is etcd's layout too (a WAL, and bbolt commits
//! batched every 100 ms).
//!
//! File layout: a header block (magic, format version, generation, CRC), then
//! records `[length u32][crc32 u32][generation u64][payload]`, little-endian;
//! the CRC covers the generation and the payload. The payload is the entries
//! (`[count u32]([length u32][protobuf Entry])*`) and the hard state
//! (`[length u32][protobuf HardState]`, length 0 for none).
//!
//! Generations: redb's meta table holds the generation whose records are not
//! yet checkpointed. A checkpoint commits generation + 1 in redb, then
//! rewrites this file's header with it. On open, records are read from the
//! start while they are whole (CRC) and of the header's generation; records
//! of an older generation further on are leftovers of a longer log. A header
//! older than redb's generation is a log already checkpointed (a crash
//! between the commit and the header write): nothing to replay. A torn last
//! record was never acknowledged (its `fdatasync` did not return) and is
//! overwritten by the next append.
//!
//! The file is grown with written zeros, never with holes (as the redb file,
//! see `file.rs`), so an `fdatasync` flushes data only.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use crate::StoreError;

const MAGIC: &[u8; 8] = b"SHOALWAL";
const VERSION: u32 = 1;
/// The header occupies the first block; records start after it.
const HEADER_BYTES: u64 = 4096;
/// Record framing: length, CRC, generation.
const FRAME_BYTES: usize = 16;
/// Size of a new log file (grown by doubling when a record does not fit).
const INITIAL_BYTES: u64 = 4 << 20;
/// A checkpoint is due once the records pass this size.
pub(crate) const CHECKPOINT_BYTES: u64 = 2 << 20;

fn io_err(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Internal(format!("{what} {}: {e}", path.display()))
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("write-ahead log {}: {why}", path.display()))
}

/// What one record holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Record {
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

/// The open log, positioned after its last whole record.
#[derive(Debug)]
pub(crate) struct Wal {
    path: PathBuf,
    file: File,
    generation: u64,
    /// Where the next record goes.
    end: u64,
    /// Bytes allocated (written) in the file.
    size: u64,
    buf: Vec<u8>,
}

fn header(generation: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(28);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// The generation a header block holds.
fn parse_header(path: &Path, h: &[u8]) -> Result<u64, StoreError> {
    if h.len() < 24 || &h[..8] != MAGIC {
        return Err(corrupt(path, "not a Shoal write-ahead log (bad magic)"));
    }
    let word = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[at..at + 4]);
        u32::from_le_bytes(b)
    };
    if word(8) != VERSION {
        return Err(corrupt(path, format!("unknown format version {}", word(8))));
    }
    if word(20) != crc32fast::hash(&h[..20]) {
        return Err(corrupt(path, "the header's checksum does not match"));
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&h[12..20]);
    Ok(u64::from_le_bytes(g))
}

fn encode_payload(
    out: &mut Vec<u8>,
    entries: &[Entry],
    hs: Option<&HardState>,
) -> Result<(), StoreError> {
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        e.write_to_vec(out)
            .map_err(|e| StoreError::Internal(format!("encode entry: {e}")))?;
        let n = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Some(hs) = hs {
        hs.write_to_vec(out)
            .map_err(|e| StoreError::Internal(format!("encode hard state: {e}")))?;
    }
    let n = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    Ok(())
}

/// Reads length-prefixed pieces off a payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

fn decode_payload(path: &Path, payload: &[u8]) -> Result<Record, StoreError> {
    let bad = || corrupt(path, "a record with a valid checksum does not decode");
    let mut c = Cursor(payload);
    let count = c.u32().ok_or_else(bad)?;
    let mut entries = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let b = c.bytes().ok_or_else(bad)?;
        entries.push(Entry::parse_from_bytes(b).map_err(|_| bad())?);
    }
    let hs = c.bytes().ok_or_else(bad)?;
    let hard_state = if hs.is_empty() {
        None
    } else {
        Some(HardState::parse_from_bytes(hs).map_err(|_| bad())?)
    };
    Ok(Record {
        entries,
        hard_state,
    })
}

impl Wal {
    /// Opens (or creates) the log at `path` for redb's `generation`, and
    /// returns the records to replay: those of that generation.
    pub fn open(path: &Path, generation: u64) -> Result<(Wal, Vec<Record>), StoreError> {
        let exists = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_err("opening the write-ahead log", path, e))?;
        let mut wal = Wal {
            path: path.to_owned(),
            file: file
                .try_clone()
                .map_err(|e| io_err("opening the write-ahead log", path, e))?,
            generation,
            end: HEADER_BYTES,
            size: 0,
            buf: Vec::new(),
        };
        let len = file
            .metadata()
            .map_err(|e| io_err("reading the write-ahead log", path, e))?
            .len();
        let mut head = vec![0u8; HEADER_BYTES as usize];
        let unfinished = len < HEADER_BYTES
            || (file.read_exact(&mut head).is_ok() && head.iter().all(|b| *b == 0));
        if !exists || unfinished {
            // New, or its creation was cut short before the header was
            // written (so before any record): zeros, then the header.
            wal.grow(INITIAL_BYTES)?;
            wal.reset(generation)?;
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_err("syncing the directory of", path, e))?;
            }
            return Ok((wal, Vec::new()));
        }
        wal.size = len;
        let mut data = head;
        file.read_to_end(&mut data)
            .map_err(|e| io_err("reading the write-ahead log", path, e))?;
        let on_disk = parse_header(path, &data[..HEADER_BYTES as usize])?;
        if on_disk > generation {
            return Err(corrupt(
                path,
                format!(
                    "its generation {on_disk} is newer than the database's {generation}: \
                     the database file is older than the log (restored from a backup?)"
                ),
            ));
        }
        if on_disk < generation {
            // Checkpointed; the header write did not happen before a crash.
            wal.reset(generation)?;
            return Ok((wal, Vec::new()));
        }
        let mut records = Vec::new();
        let mut at = HEADER_BYTES as usize;
        while let Some(frame) = data.get(at..at + FRAME_BYTES) {
            let word = |i: usize| {
                let mut b = [0u8; 4];
                b.copy_from_slice(&frame[i..i + 4]);
                u32::from_le_bytes(b)
            };
            let (n, crc) = (word(0) as usize, word(4));
            let Some(body) = data.get(at + 8..at + FRAME_BYTES + n) else {
                break;
            };
            if n == 0 || crc32fast::hash(body) != crc {
                break;
            }
            let mut g = [0u8; 8];
            g.copy_from_slice(&body[..8]);
            if u64::from_le_bytes(g) != generation {
                break;
            }
            records.push(decode_payload(path, &body[8..])?);
            at += FRAME_BYTES + n;
        }
        wal.end = at as u64;
        Ok((wal, records))
    }

    /// Bytes of records since the last checkpoint.
    pub fn records_bytes(&self) -> u64 {
        self.end - HEADER_BYTES
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends one record and makes it durable.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StoreError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&self.generation.to_le_bytes());
        encode_payload(&mut buf, entries, hs)?;
        let n = (buf.len() - FRAME_BYTES) as u32;
        let crc = crc32fast::hash(&buf[8..]);
        buf[..4].copy_from_slice(&n.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let r = self.write_durably(&buf);
        self.buf = buf;
        r
    }

    fn write_durably(&mut self, record: &[u8]) -> Result<(), StoreError> {
        let need = self.end + record.len() as u64;
        if need > self.size {
            self.grow((self.size * 2).max(need))?;
        }
        self.file
            .write_all_at(record, self.end)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err("writing the write-ahead log", &self.path, e))?;
        self.end = need;
        Ok(())
    }

    /// Starts `generation` after a checkpoint: the records so far are in redb.
    pub fn reset(&mut self, generation: u64) -> Result<(), StoreError> {
        self.file
            .write_all_at(&header(generation), 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err("writing the write-ahead log", &self.path, e))?;
        self.generation = generation;
        self.end = HEADER_BYTES;
        Ok(())
    }

    /// Extends the file to `size` bytes with zeros and syncs its length.
    fn grow(&mut self, size: u64) -> Result<(), StoreError> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK];
        let mut at = self.size;
        while at < size {
            let n = ((size - at) as usize).min(CHUNK);
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(|e| io_err("growing the write-ahead log", &self.path, e))?;
            at += n as u64;
        }
        self.file
            .sync_all()
            .map_err(|e| io_err("growing the write-ahead log", &self.path, e))?;
        self.size = size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry {
            index,
            term,
            ..Default::default()
        };
        e.set_data(data.to_vec().into());
        e
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            vote: 1,
            ..Default::default()
        }
    }

    #[test]
    fn records_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, recs) = Wal::open(&path, 0).unwrap();
        assert!(recs.is_empty());
        wal.append(&[entry(2, 1, b"a"), entry(3, 1, b"bb")], Some(&hs(1, 1)))
            .unwrap();
        wal.append(&[entry(4, 1, b"ccc")], None).unwrap();
        wal.append(&[], Some(&hs(2, 4))).unwrap();
        drop(wal);
        let (wal, recs) = Wal::open(&path, 0).unwrap();
        assert_eq!(
            recs,
            vec![
                Record {
                    entries: vec![entry(2, 1, b"a"), entry(3, 1, b"bb")],
                    hard_state: Some(hs(1, 1)),
                },
                Record {
                    entries: vec![entry(4, 1, b"ccc")],
                    hard_state: None,
                },
                Record {
                    entries: vec![],
                    hard_state: Some(hs(2, 4)),
                },
            ]
        );
        assert!(wal.records_bytes() > 0);
    }

    #[test]
    fn a_torn_record_ends_the_log_and_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path, 0).unwrap();
        wal.append(&[entry(2, 1, b"kept")], None).unwrap();
        let torn_at = wal.end;
        wal.append(&[entry(3, 1, b"torn")], None).unwrap();
        // Damage the second record's last byte.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], wal.end - 1).unwrap();
        drop(wal);
        let (mut wal, recs) = Wal::open(&path, 0).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].entries, vec![entry(2, 1, b"kept")]);
        assert_eq!(wal.end, torn_at);
        wal.append(&[entry(3, 1, b"again")], None).unwrap();
        drop(wal);
        let (_, recs) = Wal::open(&path, 0).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].entries, vec![entry(3, 1, b"again")]);
    }

    #[test]
    fn a_reset_drops_the_records_even_when_they_were_longer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path, 0).unwrap();
        for i in 0..5 {
            wal.append(&[entry(2 + i, 1, &[7; 300])], None).unwrap();
        }
        wal.reset(1).unwrap();
        wal.append(&[entry(7, 1, b"new")], None).unwrap();
        drop(wal);
        // The old generation's records after the new one are not replayed.
        let (_, recs) = Wal::open(&path, 1).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].entries, vec![entry(7, 1, b"new")]);
    }

    #[test]
    fn generations_decide_what_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path, 3).unwrap();
        wal.append(&[entry(2, 1, b"x")], None).unwrap();
        drop(wal);
        // redb checkpointed generation 3 but the header was not rewritten.
        let (wal, recs) = Wal::open(&path, 4).unwrap();
        assert!(recs.is_empty());
        assert_eq!(wal.generation(), 4);
        drop(wal);
        // A log ahead of its database is refused, with the reason.
        let err = Wal::open(&path, 2).unwrap_err().to_string();
        assert!(err.contains("newer than the database"), "{err}");
    }

    #[test]
    fn a_record_larger_than_the_file_grows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path, 0).unwrap();
        let big = vec![9u8; (INITIAL_BYTES as usize) + 10];
        wal.append(&[entry(2, 1, &big)], None).unwrap();
        wal.append(&[entry(3, 1, b"after")], None).unwrap();
        drop(wal);
        let (_, recs) = Wal::open(&path, 0).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].entries[0].get_data().len(), big.len());
    }

    #[test]
    fn a_creation_cut_short_before_the_header_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        std::fs::write(&path, vec![0u8; 2 * HEADER_BYTES as usize]).unwrap();
        let (mut wal, recs) = Wal::open(&path, 5).unwrap();
        assert!(recs.is_empty());
        wal.append(&[entry(2, 1, b"x")], None).unwrap();
        drop(wal);
        let (_, recs) = Wal::open(&path, 5).unwrap();
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        std::fs::write(&path, vec![1u8; HEADER_BYTES as usize]).unwrap();
        let err = Wal::open(&path, 0).unwrap_err().to_string();
        assert!(err.contains("bad magic"), "{err}");
    }
}
