//! redb's file backend, except that the file grows with written zeros instead
//! of holes.
//!
//! redb grows its file with `set_len`, which leaves a hole; a commit that
//! later writes into the hole makes the filesystem allocate blocks, and its
//! fsync then has to commit the filesystem's journal too (on ext4, under a
//! busy disk, several milliseconds instead of a fraction of one). Writing
//! zeros when the file grows (geometrically, so rarely) allocates the blocks
//! once; commits then overwrite allocated blocks and their fsync flushes data
//! only.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// A redb storage backend over one file, grown with zeros.
#[derive(Debug)]
pub(crate) struct ZeroFilledFile {
    inner: FileBackend,
}

impl ZeroFilledFile {
    pub fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        Ok(Self {
            inner: FileBackend::new(file)?,
        })
    }
}

const CHUNK: usize = 1 << 20;

impl StorageBackend for ZeroFilledFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let old = self.inner.len()?;
        self.inner.set_len(len)?;
        if len > old {
            let zeros = vec![0u8; CHUNK];
            let mut at = old;
            while at < len {
                let n = (len - at).min(CHUNK as u64) as usize;
                self.inner.write(at, &zeros[..n])?;
                at += n as u64;
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
