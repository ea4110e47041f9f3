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
        // A thread that cannot be made (the system is out of them) is an error, not a panic.
        let handle = std::thread::Builder::new()
            .spawn_scoped(s, move || {
                // SAFETY: `file` is an open namespace file; setns only changes
                // this thread's namespace, and this thread ends with the scope.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetnsError::Enter { path: path.to_string(), source: std::io::Error::last_os_error() });
                }
                Ok(f())
            })
            .map_err(|source| NetnsError::Enter { path: path.to_string(), source })?;
        handle.join().map_err(|_| NetnsError::Panicked(path.to_string()))?
    })
}

/// The kernel's cookie of the network namespace at `path` (`SO_NETNS_COOKIE`
/// of a socket made inside it): what an eBPF program sees as
/// `bpf_get_netns_cookie`. Unique for the life of the system.
pub fn cookie(path: &str) -> Result<u64, NetnsError> {
    let enter = |source| NetnsError::Enter { path: path.to_string(), source };
    run_in(path, || {
        // SAFETY: plain socket calls; the descriptor is closed before return
        // and `cookie` is a valid u64 for getsockopt to fill.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            let rc = libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(cookie)
        }
    })?
    .map_err(enter)
}
