//! Running code inside another network namespace. A namespace is entered only
//! on a dedicated thread (`setns` is per thread), never on a shared worker, so
//! nothing else ever runs in the wrong namespace by accident.

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

/// Errors entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("opening network namespace {path}: {source}")]
    Open { path: String, #[source] source: std::io::Error },
    /// `setns` failed.
    #[error("entering network namespace {path}: {source}")]
    Enter { path: String, #[source] source: std::io::Error },
    /// The thread running the closure panicked.
    #[error("the thread in network namespace {0} panicked")]
    Panicked(String),
}

/// The path of a named namespace as `ip netns` makes it.
pub fn named(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Runs `f` on a new thread inside the namespace at `path`, and returns its
/// result. The calling thread's namespace is untouched.
pub fn run_in<T, F>(path: &str, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(Path::new(path)).map_err(|source| NetnsError::Open { path: path.to_string(), source })?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // SAFETY: `file` is an open namespace file; setns only changes
            // this thread's namespace, and this thread ends with the scope.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NetnsError::Enter { path: path.to_string(), source: std::io::Error::last_os_error() });
            }
            Ok(f())
        });
        handle.join().map_err(|_| NetnsError::Panicked(path.to_string()))?
    })
}
