//! Who a node is in the membership protocol: its name, the generation of the process that
//! runs it, and the metadata other nodes need to reach it.
//!
//! The identity is foca's `Identity`. Its *address* (what makes two identities the same
//! member) is the node name; the generation decides which of two identities with that name is
//! current, so a restarted agent supersedes the process it replaces as soon as it speaks.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The longest node name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 63;
/// The longest container range text accepted, in bytes.
pub const MAX_RANGE_LEN: usize = 43;
/// The longest WireGuard public key text accepted, in bytes.
pub const MAX_WG_KEY_LEN: usize = 64;

/// What a node tells the cluster about itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The node's name, unique in the cluster.
    pub name: String,
    /// The address other nodes send gossip to.
    pub addr: SocketAddr,
    /// The node's container range, e.g. `10.42.3.0/24` (opaque here).
    pub range: String,
    /// The node's WireGuard public key, e.g. base64 (opaque here).
    pub wg_pubkey: String,
}

/// Why a node's own metadata was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The name is empty, too long or has characters other than `[A-Za-z0-9._-]`.
    #[error("node name {0:?} must be 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9._-]")]
    BadName(String),
    /// A metadata field is longer than the protocol carries.
    #[error("node {field} is {len} bytes, more than {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The gossip address is unspecified (`0.0.0.0`, `::`) or has port 0: peers cannot use it.
    #[error("gossip address {0} cannot be reached by peers")]
    Unreachable(SocketAddr),
    /// A running node was asked to take another name; that is another node.
    #[error("node {from:?} cannot be renamed to {to:?}")]
    Renamed {
        /// The current name.
        from: String,
        /// The name asked for.
        to: String,
    },
}

impl NodeMeta {
    /// Checks that the metadata can be carried by the protocol and used by peers.
    pub fn validate(&self) -> Result<(), MetaError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(MetaError::BadName(self.name.clone()));
        }
        for (field, len, max) in [
            ("range", self.range.len(), MAX_RANGE_LEN),
            ("wireguard key", self.wg_pubkey.len(), MAX_WG_KEY_LEN),
        ] {
            if len > max {
                return Err(MetaError::TooLong { field, len, max });
            }
        }
        if self.addr.ip().is_unspecified() || self.addr.port() == 0 {
            return Err(MetaError::Unreachable(self.addr));
        }
        Ok(())
    }
}

/// A node's identity in foca: its metadata and the generation of the process speaking for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeId {
    pub(crate) meta: NodeMeta,
    /// Grows with every restart (see [`next_generation`]) and every automatic rejoin.
    pub(crate) generation: u64,
}

impl foca::Identity for NodeId {
    type Addr = String;

    /// When the cluster declares this process down (a false positive, a partition), it comes
    /// back at once as the next generation, which wins over the one declared down.
    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            meta: self.meta.clone(),
            generation: self.generation.checked_add(1)?,
        })
    }

    fn addr(&self) -> String {
        self.meta.name.clone()
    }

    /// The newer generation wins. Equal generations with different metadata can only come
    /// from a misconfiguration (two live processes sharing a name and generation); ordering the
    /// metadata still gives every node the same answer, so the cluster does not flap.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        let key = |id: &NodeId| {
            (
                id.generation,
                id.meta.addr,
                id.meta.range.clone(),
                id.meta.wg_pubkey.clone(),
            )
        };
        key(self) > key(adversary)
    }
}

/// Why the generation file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The file could not be read or written.
    #[error("generation file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a decimal number.
    #[error("generation file {path} does not hold a number")]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
}

/// Picks the generation for a process starting now and persists it in `path`: one more than
/// the stored one, and at least the wall clock in milliseconds (`now_ms`).
///
/// The stored value makes restarts increase even if the clock went backwards; the clock makes
/// them increase even if the file was lost (a new disk, a reinstall), which would otherwise
/// leave the node unable to supersede the generation peers still remember. Automatic rejoins
/// add 1 at a time, far slower than the clock, so they never catch up with a later restart.
pub fn next_generation(path: &Path, now_ms: u64) -> Result<u64, GenerationError> {
    let io = |source| GenerationError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stored = match std::fs::read_to_string(path) {
        Ok(text) => Some(
            text.trim()
                .parse::<u64>()
                .map_err(|_| GenerationError::Corrupt {
                    path: path.to_path_buf(),
                })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let generation = stored.map_or(0, |g| g.saturating_add(1)).max(now_ms);

    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    writeln!(file, "{generation}").map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn meta(name: &str) -> NodeMeta {
        NodeMeta {
            name: name.into(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            range: "10.42.1.0/24".into(),
            wg_pubkey: "k".repeat(44),
        }
    }

    #[test]
    fn a_newer_generation_supersedes_and_renew_wins() {
        let old = NodeId {
            meta: meta("a"),
            generation: 5,
        };
        let new = old.renew().unwrap();
        assert_eq!(new.generation, 6);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        // Same generation, different metadata: exactly one side wins.
        let mut other = old.clone();
        other.meta.wg_pubkey = "z".into();
        assert_ne!(other.win_addr_conflict(&old), old.win_addr_conflict(&other));
    }

    #[test]
    fn metadata_is_validated() {
        assert_eq!(meta("node-1.eu").validate(), Ok(()));
        for bad in ["", "a b", "ü", &"n".repeat(64)] {
            assert_eq!(meta(bad).validate(), Err(MetaError::BadName(bad.into())));
        }
        let mut m = meta("a");
        m.wg_pubkey = "k".repeat(65);
        assert!(matches!(
            m.validate(),
            Err(MetaError::TooLong {
                field: "wireguard key",
                ..
            })
        ));
        let mut m = meta("a");
        m.addr = "0.0.0.0:7946".parse().unwrap();
        assert_eq!(m.validate(), Err(MetaError::Unreachable(m.addr)));
    }

    #[test]
    fn generations_grow_across_restarts_and_lost_files() {
        let dir = std::env::temp_dir().join(format!("fizz-gossip-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("generation");
        let _ = std::fs::remove_file(&path);
        let first = next_generation(&path, 1_000).unwrap();
        assert_eq!(first, 1_000);
        // The clock went backwards: the stored value still moves it forward.
        assert_eq!(next_generation(&path, 10).unwrap(), 1_001);
        // The file was lost: the clock alone is ahead of what peers remember.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(next_generation(&path, 5_000).unwrap(), 5_000);
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            next_generation(&path, 6_000),
            Err(GenerationError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
