//! The node's WireGuard device: the only user of `defguard_wireguard_rs`.
//! Other modules see Fizz's own types (keys, peers, peer status).
//!
//! The device is the userspace implementation (the embedded boringtun: a TUN
//! device and worker threads in this process), since the machines Fizz runs
//! on may lack the kernel module. What that means for its owner:
//! - it is created inside the node's network namespace, on a dedicated
//!   thread (`netns::run_in`). boringtun's worker threads are spawned by that
//!   thread and inherit its namespace, so the TUN queues they open and the UDP
//!   sockets they bind (the listen socket, and the connected socket per peer
//!   they open later) all belong to the node's namespace. (The integration
//!   tests show it: the peers' endpoints exist only inside the nodes'
//!   namespaces.) boringtun also blocks SIGINT and SIGTERM (for a signalfd)
//!   in the creating thread, which its workers inherit: on a dedicated thread
//!   that leaves the rest of the process's signal handling alone;
//! - its control socket, `/var/run/wireguard/<ifname>.sock`, is shared by
//!   every namespace on the machine, so interface names must be unique
//!   machine-wide; a live socket of that name is refused, a stale one removed;
//! - it lives as long as this process and does not stop on SIGTERM: the owner
//!   removes it with `destroy` (or by dropping it), which stops the workers,
//!   removes the socket and waits for the interface to go.
//!
//! Nothing here adds addresses or routes: the datapath redirects packets
//! into the device and out of it (`Datapath::set_remote`, `attach_wireguard`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _},
        unix::net::UnixStream,
    },
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant, SystemTime},
};

use defguard_wireguard_rs::{
    error::WireguardInterfaceError, key::Key, net::IpAddrMask, peer::Peer, InterfaceConfiguration,
    Userspace, WGApi, WireguardInterfaceApi as _,
};

use crate::net::netns::{self, NetnsError};

/// The MTU of a WireGuard device over a 1500-byte underlay (IPv4 or IPv6
/// outer header, UDP, WireGuard's 32 bytes).
pub const DEFAULT_MTU: u32 = 1420;

/// The port WireGuard listens on by convention.
pub const DEFAULT_PORT: u16 = 51820;

/// How long `destroy` waits for the interface to disappear.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory of the userspace control sockets, shared by all namespaces.
const SOCKET_DIR: &str = "/var/run/wireguard";

/// The receive and send buffer Fizz gives each UDP socket of its device (the kernel reports
/// and allows twice this). At the kernel's default (`net.core.rmem_default`, 208 KiB) the
/// receiving device drops a sixth of a TCP stream's datagrams whenever its worker falls
/// behind for a moment; 7 MiB is what wireguard-go sets for the same reason.
pub const SOCKET_BUFFER: u32 = 7 << 20;

/// Errors of the WireGuard device, naming the interface.
#[derive(Debug, thiserror::Error)]
pub enum WireGuardError {
    /// The interface name is empty, too long (over 15 bytes) or has a `/`.
    #[error("`{0}` is not a valid interface name")]
    BadName(String),
    /// A live device of that name already answers on the control socket,
    /// possibly in another network namespace.
    #[error("a WireGuard device named {0} already runs on this machine")]
    InUse(String),
    /// Entering the node's network namespace failed.
    #[error("wireguard {ifname}: {source}")]
    Netns {
        ifname: String,
        #[source]
        source: NetnsError,
    },
    /// The userspace implementation refused an operation.
    #[error("wireguard {ifname}: {what}: {source}")]
    Device {
        ifname: String,
        what: &'static str,
        #[source]
        source: WireguardInterfaceError,
    },
    /// A file system operation on the control socket failed.
    #[error("wireguard {ifname}: {what}: {source}")]
    Io {
        ifname: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The interface did not appear after creation, or stayed after removal.
    #[error("wireguard {ifname}: {what}")]
    Interface { ifname: String, what: &'static str },
    /// A key is not 32 bytes of base64.
    #[error("`{0}` is not a WireGuard key")]
    BadKey(String),
}

/// A WireGuard private key (Curve25519). Its `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A new random key, from the operating system's generator.
    pub fn generate() -> PrivateKey {
        PrivateKey(Key::generate().as_array())
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PrivateKey {
        PrivateKey(bytes)
    }

    /// The 32 bytes, for storing the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The public half, which peers are told.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(Key::new(self.0).public_key().as_array())
    }

    fn to_base64(&self) -> String {
        Key::new(self.0).to_string()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// A WireGuard public key; shown and parsed as base64, as `wg` does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Key::new(self.0), f)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = WireGuardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Key::try_from(s)
            .map(|k| PublicKey(k.as_array()))
            .map_err(|_| WireGuardError::BadKey(s.to_string()))
    }
}

/// How to create a node's device.
#[derive(Clone, Debug)]
pub struct WireGuardConfig {
    /// The interface name: at most 15 bytes, unique on the machine.
    pub ifname: String,
    pub private_key: PrivateKey,
    /// The UDP port, in the node's namespace.
    pub listen_port: u16,
    /// Usually `DEFAULT_MTU`.
    pub mtu: u32,
}

/// Another node, as this node's device knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// Where the other node's device listens.
    pub endpoint: SocketAddr,
    /// The other node's container ranges, as `(network, prefix length)`:
    /// the addresses that may arrive from it and that are sent to it.
    pub allowed: Vec<(Ipv4Addr, u8)>,
}

/// What the device reports about a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    /// The endpoint configured, or last seen.
    pub endpoint: Option<SocketAddr>,
    /// The last completed handshake; `None` before the first.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub allowed: Vec<(Ipv4Addr, u8)>,
}

/// A running userspace WireGuard device. Dropping it destroys it (errors
/// ignored); `destroy` reports them.
pub struct WireGuard {
    api: Option<WGApi<Userspace>>,
    ifname: String,
    netns: String,
    ifindex: u32,
    public_key: PublicKey,
    /// The UDP port and the network namespace (its inode) of the device's sockets.
    port: u16,
    netns_ino: u64,
}

/// The file descriptors of a process (`fd_dir` is `/proc/self/fd` or `/proc/<pid>/fd`) with
/// what each points at (`socket:[…]`, `anon_inode:[signalfd]`, a path), as they were when
/// read; an unreadable directory lists none.
pub fn fd_links(fd_dir: &str) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir(fd_dir) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned()))
        })
        .collect()
}

/// The signalfds open in this process.
fn signalfds() -> std::collections::BTreeSet<i32> {
    fd_links("/proc/self/fd").into_iter().filter(|(_, t)| t == "anon_inode:[signalfd]").map(|(fd, _)| fd).collect()
}

/// The embedded implementation reads SIGINT and SIGTERM from signalfds of its own and stops
/// the device when one comes: it races the agent's handler for the signal meant for the agent,
/// and when it wins, the agent runs on with a dead device (and blocks on its control socket).
/// The signalfds it made are replaced by /dev/null (their epoll registrations go with them):
/// stopping the device is the agent's decision.
fn disarm_signalfds(before: &std::collections::BTreeSet<i32>) {
    let Ok(null) = std::fs::File::open("/dev/null") else { return };
    for fd in signalfds().difference(before) {
        // SAFETY: `fd` is a signalfd the device just opened; dup2 atomically points that
        // number at /dev/null, which the device may close later like its own.
        unsafe { libc::dup2(null.as_raw_fd(), *fd) };
    }
}

/// The inode of the network namespace at `path` (0 if it cannot be read).
pub fn namespace_ino(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

/// Calls `f` with each socket among this process's file descriptors.
fn for_own_sockets(mut f: impl FnMut(BorrowedFd<'_>)) {
    for (fd, target) in fd_links("/proc/self/fd") {
        if target.starts_with("socket:") {
            // SAFETY: the descriptor was open a moment ago. Another thread may close it (every
            // call then fails with EBADF) or reuse its number; `is_device_socket` checks what
            // it is before anything is changed, and the worst a reuse in between can do is
            // give another socket of this process bigger buffers.
            f(unsafe { BorrowedFd::borrow_raw(fd) });
        }
    }
}

fn getsockopt_u32(fd: BorrowedFd<'_>, level: i32, name: i32) -> std::io::Result<u32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the kernel to write an int into.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v as u32)
}

fn setsockopt_u32(fd: BorrowedFd<'_>, level: i32, name: i32, v: u32) -> std::io::Result<()> {
    let v = v as libc::c_int;
    // SAFETY: `v` is a valid int for the kernel to read.
    let rc = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is an IPv4 or IPv6 UDP socket bound to `port` in the network namespace whose
/// inode is `netns_ino`: one of the sockets of the WireGuard device listening there.
pub fn is_device_socket(fd: BorrowedFd<'_>, port: u16, netns_ino: u64) -> bool {
    /// `ioctl(SIOCGSKNS)`: a descriptor of a socket's network namespace.
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    let udp = getsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).is_ok_and(|p| p == libc::IPPROTO_UDP as u32);
    if !udp {
        return false;
    }
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` has room for any address and `len` says how much.
    if unsafe { libc::getsockname(fd.as_raw_fd(), (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return false;
    }
    // sin_port and sin6_port sit at the same offset, after the family.
    let bound = match addr.ss_family as i32 {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: for both families the port follows the 2-byte family.
            u16::from_be(unsafe { *(&addr as *const libc::sockaddr_storage).cast::<u8>().add(2).cast::<u16>() })
        }
        _ => return false,
    };
    if bound != port {
        return false;
    }
    // SAFETY: the ioctl takes no argument and returns a new descriptor, owned here.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS as _) };
    if ns < 0 {
        return false;
    }
    // SAFETY: `ns` was just opened for us.
    let ns = unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) };
    use std::os::unix::fs::MetadataExt as _;
    std::fs::File::from(ns).metadata().is_ok_and(|m| m.ino() == netns_ino)
}

/// The receive and send buffer sizes of a socket, as the kernel reports them.
pub fn socket_buffers(fd: BorrowedFd<'_>) -> std::io::Result<(u32, u32)> {
    Ok((getsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?, getsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?))
}

/// Sets a socket's receive and send buffers to `rcv` and `snd` bytes (the kernel doubles
/// them), past the `net.core.rmem_max`/`wmem_max` limits (which needs CAP_NET_ADMIN).
pub fn set_socket_buffers(fd: BorrowedFd<'_>, rcv: u32, snd: u32) -> std::io::Result<()> {
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv)?;
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, snd)
}

/// The control socket of the device named `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{ifname}.sock"))
}

impl WireGuard {
    /// Creates the device in the network namespace at `netns_path` (for
    /// example `/var/run/netns/<name>`, or `/proc/self/ns/net` for the
    /// process's own), brings it up with the key, port and MTU of `cfg`,
    /// and no peers.
    pub fn create(netns_path: &str, cfg: &WireGuardConfig) -> Result<WireGuard, WireGuardError> {
        let ifname = cfg.ifname.clone();
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') {
            return Err(WireGuardError::BadName(ifname));
        }
        claim_socket(&ifname)?;
        let config = InterfaceConfiguration {
            name: ifname.clone(),
            prvkey: cfg.private_key.to_base64(),
            addresses: Vec::new(),
            port: cfg.listen_port,
            peers: Vec::new(),
            mtu: Some(cfg.mtu),
            fwmark: None,
        };
        let name = ifname.clone();
        let made = netns::run_in(
            netns_path,
            move || -> Result<(WGApi<Userspace>, u32, u64), WireGuardError> {
                let dev = |what, source| WireGuardError::Device {
                    ifname: name.clone(),
                    what,
                    source,
                };
                let mut api =
                    WGApi::<Userspace>::new(name.clone()).map_err(|e| dev("preparing", e))?;
                // The worker threads are spawned here, so they live in this
                // thread's namespace (the node's) after it ends.
                let before = signalfds();
                api.create_interface()
                    .map_err(|e| dev("creating the interface", e))?;
                disarm_signalfds(&before);
                // From here on a failure must stop the workers again.
                let finish = || -> Result<u32, WireGuardError> {
                    api.configure_interface(&config)
                        .map_err(|e| dev("configuring", e))?;
                    let index =
                        super::ebpf::ifindex(&name).map_err(|_| WireGuardError::Interface {
                            ifname: name.clone(),
                            what: "no interface after creation",
                        })?;
                    Ok(index)
                };
                match finish() {
                    Ok(index) => Ok((api, index, namespace_ino("/proc/thread-self/ns/net"))),
                    Err(e) => {
                        drop(api);
                        let _ = std::fs::remove_file(socket_path(&name));
                        Err(e)
                    }
                }
            },
        );
        let (api, ifindex, netns_ino) = made.map_err(|source| WireGuardError::Netns {
            ifname: ifname.clone(),
            source,
        })??;
        let mut wg = WireGuard {
            api: Some(api),
            ifname,
            netns: netns_path.to_string(),
            ifindex,
            public_key: cfg.private_key.public_key(),
            port: cfg.listen_port,
            netns_ino,
        };
        if wg.port == 0 {
            wg.port = wg.listen_port()?;
        }
        wg.size_socket_buffers();
        Ok(wg)
    }

    /// The interface name.
    /// The device's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index, in the node's namespace.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn api(&self) -> &WGApi<Userspace> {
        self.api
            .as_ref()
            .expect("the device is only taken by destroy")
    }

    fn dev_err(
        &self,
        what: &'static str,
    ) -> impl FnOnce(WireguardInterfaceError) -> WireGuardError + '_ {
        move |source| WireGuardError::Device {
            ifname: self.ifname.clone(),
            what,
            source,
        }
    }

    /// Replaces the device's private key (and so its public key). Every peer is dropped with
    /// the old key's sessions: the caller sets them again.
    pub fn set_private_key(&mut self, key: &PrivateKey, listen_port: u16) -> Result<(), WireGuardError> {
        let config = InterfaceConfiguration {
            name: self.ifname.clone(),
            prvkey: key.to_base64(),
            addresses: Vec::new(),
            port: listen_port,
            peers: Vec::new(),
            // Unchanged; setting it would need the node's namespace.
            mtu: None,
            fwmark: None,
        };
        self.api().configure_interface(&config).map_err(self.dev_err("setting the private key"))?;
        self.public_key = key.public_key();
        self.port = if listen_port == 0 { self.listen_port()? } else { listen_port };
        self.size_socket_buffers();
        Ok(())
    }

    /// Gives every UDP socket of the device buffers of `SOCKET_BUFFER` bytes, past the
    /// `net.core` limits, and returns how many it changed. The embedded implementation opens
    /// its sockets with the kernel's default buffers and one more per peer, connected to it,
    /// when the peer's first packet comes: the agent calls this on every tick to size those
    /// too. The sockets are found among the process's file descriptors as UDP sockets on the
    /// device's port in the device's namespace.
    pub fn size_socket_buffers(&self) -> usize {
        let mut changed = 0;
        for_own_sockets(|fd| {
            if is_device_socket(fd, self.port, self.netns_ino)
                && socket_buffers(fd).is_ok_and(|(r, s)| r.min(s) < 2 * SOCKET_BUFFER)
                && set_socket_buffers(fd, SOCKET_BUFFER, SOCKET_BUFFER).is_ok()
            {
                changed += 1;
            }
        });
        changed
    }

    /// The receive and send buffers (as the kernel reports them: twice what was asked) of
    /// each UDP socket of the device.
    pub fn socket_buffers(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for_own_sockets(|fd| {
            if is_device_socket(fd, self.port, self.netns_ino) {
                out.extend(socket_buffers(fd).ok());
            }
        });
        out
    }

    /// Adds a peer, or replaces its endpoint and allowed ranges.
    pub fn set_peer(&self, peer: &PeerConfig) -> Result<(), WireGuardError> {
        let mut p = Peer::new(Key::new(peer.public_key.0));
        p.endpoint = Some(peer.endpoint);
        p.allowed_ips = peer
            .allowed
            .iter()
            .map(|(net, len)| IpAddrMask::new(IpAddr::V4(*net), *len))
            .collect();
        // The control socket is a path, the same in every namespace: no
        // need to enter the node's.
        self.api()
            .configure_peer(&p)
            .map_err(self.dev_err("setting a peer"))
    }

    /// Removes a peer; removing an unknown peer is not an error.
    pub fn remove_peer(&self, key: &PublicKey) -> Result<(), WireGuardError> {
        self.api()
            .remove_peer(&Key::new(key.0))
            .map_err(self.dev_err("removing a peer"))
    }

    /// The peers and their handshakes and traffic, sorted by key.
    pub fn peers(&self) -> Result<Vec<PeerStatus>, WireGuardError> {
        let host = self
            .api()
            .read_interface_data()
            .map_err(self.dev_err("reading peers"))?;
        let mut out: Vec<PeerStatus> = host
            .peers
            .values()
            .map(|p| PeerStatus {
                public_key: PublicKey(p.public_key.as_array()),
                endpoint: p.endpoint,
                last_handshake: p.last_handshake.filter(|t| *t != SystemTime::UNIX_EPOCH),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                allowed: p
                    .allowed_ips
                    .iter()
                    .filter_map(|m| match m.address {
                        IpAddr::V4(a) => Some((a, m.cidr)),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
            })
            .collect();
        out.sort_by_key(|p| p.public_key);
        Ok(out)
    }

    /// The UDP port the device listens on.
    pub fn listen_port(&self) -> Result<u16, WireGuardError> {
        Ok(self
            .api()
            .read_interface_data()
            .map_err(self.dev_err("reading the port"))?
            .listen_port)
    }

    /// Stops the device: its workers end, the control socket is removed and
    /// the interface disappears (waited for).
    pub fn destroy(mut self) -> Result<(), WireGuardError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), WireGuardError> {
        let Some(api) = self.api.take() else {
            return Ok(());
        };
        // Dropping the handle tells every worker to exit; when the last one
        // closes its TUN queue, the kernel deletes the interface.
        drop(api);
        let sock = socket_path(&self.ifname);
        match std::fs::remove_file(&sock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WireGuardError::Io {
                    ifname: self.ifname.clone(),
                    what: "removing the control socket",
                    source,
                });
            }
        }
        let name = self.ifname.clone();
        let gone = netns::run_in(&self.netns, move || {
            let start = Instant::now();
            while start.elapsed() < TEARDOWN_TIMEOUT {
                if super::ebpf::ifindex(&name).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        });
        match gone {
            Ok(true) => Ok(()),
            Ok(false) => Err(WireGuardError::Interface {
                ifname: self.ifname.clone(),
                what: "still present after removal",
            }),
            // The namespace is gone, and the interface with it.
            Err(NetnsError::Open { .. }) => Ok(()),
            Err(source) => Err(WireGuardError::Netns {
                ifname: self.ifname.clone(),
                source,
            }),
        }
    }
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// Makes sure the control socket of `ifname` is free: a device that answers
/// on it is refused, a stale socket file (its process died) is removed.
fn claim_socket(ifname: &str) -> Result<(), WireGuardError> {
    let path = socket_path(ifname);
    if !path.exists() {
        return Ok(());
    }
    if UnixStream::connect(&path).is_ok() {
        return Err(WireGuardError::InUse(ifname.to_string()));
    }
    std::fs::remove_file(&path).map_err(|source| WireGuardError::Io {
        ifname: ifname.to_string(),
        what: "removing a stale control socket",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_hide() {
        let k = PrivateKey::generate();
        let p = k.public_key();
        assert_eq!(p, PrivateKey::from_bytes(k.to_bytes()).public_key());
        assert_eq!(p.to_string().parse::<PublicKey>().unwrap(), p);
        assert_eq!(format!("{k:?}"), "PrivateKey(..)");
        assert_ne!(PrivateKey::generate().public_key(), p);
        assert!("not a key".parse::<PublicKey>().is_err());
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_made() {
        for name in ["", "sixteen-chars-xx", "a/b"] {
            let cfg = WireGuardConfig {
                ifname: name.to_string(),
                private_key: PrivateKey::generate(),
                listen_port: 0,
                mtu: DEFAULT_MTU,
            };
            assert!(
                matches!(
                    WireGuard::create("/proc/self/ns/net", &cfg),
                    Err(WireGuardError::BadName(_))
                ),
                "{name:?}"
            );
        }
    }
}
