//! Cluster identity on a node: the cluster secret (from which the gossip key
//! is derived), the join token that carries it, and the peers last known
//! (seeds for a restarted agent). Pure apart from reading and writing two
//! small files in the state directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// Errors about cluster identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    /// The token is not one `fizz init` prints.
    #[error("not a join token (expected `fizz1-` and 64 hex digits, as `fizz init` prints)")]
    BadToken,
    /// A file in the state directory cannot be read or written.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

const TOKEN_PREFIX: &str = "fizz1-";

/// The join token for a cluster secret.
pub fn token(secret: &[u8; 32]) -> String {
    let mut s = String::from(TOKEN_PREFIX);
    for b in secret {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The cluster secret in a join token.
pub fn parse_token(token: &str) -> Result<[u8; 32], ClusterError> {
    let hex = token.trim().strip_prefix(TOKEN_PREFIX).ok_or(ClusterError::BadToken)?;
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(ClusterError::BadToken);
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| ClusterError::BadToken)?;
    }
    Ok(out)
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::File { path: path.to_path_buf(), message: e.to_string() }
}

/// Where the secret is kept (mode 0600).
pub fn secret_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster.secret")
}

/// The stored cluster secret, if this node is in a cluster.
pub fn load_secret(state_dir: &Path) -> Result<Option<[u8; 32]>, ClusterError> {
    let path = secret_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) => parse_token(&t).map(Some).map_err(|e| file_err(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(&path, e)),
    }
}

/// Stores the cluster secret, readable by root only.
pub fn save_secret(state_dir: &Path, secret: &[u8; 32]) -> Result<(), ClusterError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = secret_path(state_dir);
    std::fs::create_dir_all(state_dir).map_err(|e| file_err(state_dir, e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| file_err(&path, e))?;
    std::io::Write::write_all(&mut f, token(secret).as_bytes()).map_err(|e| file_err(&path, e))?;
    f.sync_all().map_err(|e| file_err(&path, e))
}

/// Forgets the cluster (a join that failed).
pub fn remove_secret(state_dir: &Path) {
    let _ = std::fs::remove_file(secret_path(state_dir));
}

/// The gossip addresses of the peers last seen, for a restarted agent.
pub fn load_seeds(state_dir: &Path) -> Vec<SocketAddr> {
    std::fs::read_to_string(state_dir.join("peers"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Remembers the peers' gossip addresses.
pub fn save_seeds(state_dir: &Path, seeds: &[SocketAddr]) {
    let text: String = seeds.iter().map(|s| format!("{s}\n")).collect();
    let _ = std::fs::write(state_dir.join("peers"), text);
}

/// A fresh random cluster secret.
pub fn new_secret() -> std::io::Result<[u8; 32]> {
    let mut s = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let s = [7u8; 32];
        let t = token(&s);
        assert!(t.starts_with("fizz1-") && t.len() == 6 + 64);
        assert_eq!(parse_token(&t), Ok(s));
        assert_eq!(parse_token(&format!(" {t}\n")), Ok(s));
        for bad in ["", "fizz1-", "fizz1-zz", &t[..t.len() - 1], &t.replace("fizz1-", "fizz2-"), &format!("{t}0")] {
            assert_eq!(parse_token(bad), Err(ClusterError::BadToken), "{bad:?}");
        }
    }

    #[test]
    fn secrets_and_seeds_persist() {
        let dir = std::env::temp_dir().join(format!("fizz-cluster-{}", std::process::id()));
        assert_eq!(load_secret(&dir).unwrap(), None);
        save_secret(&dir, &[1u8; 32]).unwrap();
        assert_eq!(load_secret(&dir).unwrap(), Some([1u8; 32]));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(secret_path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
        let seeds: Vec<SocketAddr> = vec!["10.0.0.1:7946".parse().unwrap(), "10.0.0.2:7946".parse().unwrap()];
        save_seeds(&dir, &seeds);
        assert_eq!(load_seeds(&dir), seeds);
        remove_secret(&dir);
        assert_eq!(load_secret(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
