//! The replicated state on this node's disk: one redb database in the state directory, one
//! table of entries (key → JSON of the entry, tombstones included). A batch of entries is one
//! transaction, committed durably before anything is acknowledged.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::{crdt::Entry, Value};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");

/// Errors of the on-disk state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened, read or written.
    #[error("{path}: {source}")]
    Db { path: PathBuf, #[source] source: Box<redb::Error> },
    /// A stored entry cannot be decoded.
    #[error("{path}: entry {key} is damaged: {source}")]
    Decode { path: PathBuf, key: String, #[source] source: serde_json::Error },
}

/// The database of one node.
pub struct Store {
    path: PathBuf,
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating) `state.redb` under `dir`. Only one process may hold it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("state.redb");
        let err = |e: redb::Error| StoreError::Db { path: path.clone(), source: Box::new(e) };
        std::fs::create_dir_all(dir).map_err(|e| err(redb::Error::Io(e)))?;
        let db = Database::create(&path).map_err(|e| err(e.into()))?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.open_table(ENTRIES).map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(Store { path, db })
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db { path: self.path.clone(), source: Box::new(e.into()) }
    }

    /// Every stored entry.
    pub fn load(&self) -> Result<Vec<(String, Entry<Value>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let key = k.value().to_string();
            let entry = serde_json::from_slice(v.value())
                .map_err(|source| StoreError::Decode { path: self.path.clone(), key: key.clone(), source })?;
            out.push((key, entry));
        }
        Ok(out)
    }

    /// Writes a batch of entries in one durable transaction.
    pub fn write(&self, batch: &[(String, Entry<Value>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
            for (key, entry) in batch {
                let bytes = serde_json::to_vec(entry).expect("entries always serialize");
                table.insert(key.as_str(), bytes.as_slice()).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}
