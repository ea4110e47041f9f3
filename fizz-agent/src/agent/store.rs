//! The desired state on disk: every deployed project, as JSON in the node's
//! state directory, replaced atomically (write, fsync, rename) so a crash
//! never leaves half a file. A write is acknowledged only once durable.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use super::plan::ProjectPlan;

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    /// The stored state cannot be decoded.
    #[error("{path} is damaged: {source}")]
    Decode { path: PathBuf, #[source] source: serde_json::Error },
}

/// The desired-state file of one node.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// Opens (creating the directory) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        Ok(Store { path: dir.join("desired.json") })
    }

    /// Every stored project (none on a new node).
    pub fn load(&self) -> Result<BTreeMap<String, ProjectPlan>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Decode { path: self.path.clone(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(StoreError::Io { path: self.path.clone(), source }),
        }
    }

    /// Replaces the stored projects, durably.
    pub fn save(&self, projects: &BTreeMap<String, ProjectPlan>) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| StoreError::Io { path: tmp.clone(), source };
        let bytes = serde_json::to_vec_pretty(projects).expect("plans always serialize");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|source| StoreError::Io { path: self.path.clone(), source })?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("fizz-store-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        assert!(store.load().unwrap().is_empty());
        let mut ps = BTreeMap::new();
        ps.insert("app".to_string(), ProjectPlan { name: "app".into(), ..Default::default() });
        store.save(&ps).unwrap();
        assert_eq!(store.load().unwrap(), ps);
        std::fs::write(dir.join("desired.json"), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Decode { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
