//! The eBPF datapath: loading and pinning the programs and maps, attaching
//! `from_container` to container veths and `from_wireguard` to the node's
//! WireGuard device, and writing services, backends, endpoints and other
//! nodes' ranges into the maps. The only module that uses aya.
//!
//! Pin layout under a node's pin directory (on bpffs):
//! - `maps-v<ABI_VERSION>/FZ_*`: every map, pinned by name by the loader (a
//!   new map layout gets a new directory, never old pins);
//! - `from_container`, `from_wireguard`: the TC programs;
//! - `links/<ifname>@<ifindex>`: one TCX link per attached veth (bpffs allows no dots in names);
//! - `wg-links/<ifname>@<ifindex>`: the TCX link of `from_wireguard` on the WireGuard device;
//! - `fz_connect4`, `fz_getpeername4` and their links to the root cgroup
//!   (v2) in `sock-links/`: connect-time balancing of TCP.
//!
//! Everything lives in pins, so an agent that exits leaves the datapath
//! running, and the next one adopts it: same maps, same links; the program
//! is replaced in place (`bpf_link_update`) only when its code changed. (The
//! userspace WireGuard device lives in the agent's process, so its link
//! outlives it only as a pin that `gc_links` removes.)

mod cgroup;
pub mod maps;
pub mod test_run;

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        CgroupSockAddr, CgroupSockAddrAttachType, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use fizz_common::{
    Backend, BackendKey, BackendRef, Config, CtKey, Endpoint, EndpointKey, Remote, RemoteEndpoint, SockClient, SvcKey, SvcValue,
    VipKey, VipValue, PROG_FROM_CONTAINER, PROG_FROM_WIREGUARD, PROG_SOCK_CONNECT4, PROG_SOCK_GETPEERNAME4,
    PROG_SOCK_RECVMSG4, PROG_SOCK_SENDMSG4,
};

pub use self::maps::Maps;
use crate::net::{
    conntrack::{self, Timeouts},
    service::{self, BackendAddr, Frontend, IdSpace, Installed, Proto, ServiceError, ServiceSpec},
};

/// The eBPF object, built from `fizz-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fizz.bpf.o"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors of the datapath, naming the map, interface or path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pin directory is not on a mounted bpffs.
    #[error("{0} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs(PathBuf),
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io { what: String, #[source] source: std::io::Error },
    /// Loading the eBPF object or its maps failed.
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// The program is missing from the object.
    #[error("the eBPF object has no program `{0}`")]
    NoProgram(&'static str),
    /// Loading, pinning or attaching a program failed.
    #[error("{what}: {source}")]
    Program { what: String, #[source] source: aya::programs::ProgramError },
    /// Creating, pinning or updating a link failed.
    #[error("{what}: {source}")]
    Link { what: String, #[source] source: Box<dyn std::error::Error + Send + Sync> },
    /// A pinned map could not be opened.
    #[error("opening pinned map {path}: {source}")]
    OpenMap { path: PathBuf, #[source] source: aya::maps::MapError },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map { name: &'static str, #[source] source: aya::maps::MapError },
    /// No interface of that name in this network namespace.
    #[error("no interface named {0} in this network namespace")]
    NoInterface(String),
    /// The service request is invalid; nothing was written.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The VIP range is not a valid IPv4 prefix.
    #[error("VIP range {0}/{1} is not a valid IPv4 prefix")]
    BadVipRange(Ipv4Addr, u8),
    /// A remote node's range is not a valid IPv4 prefix.
    #[error("remote range {0}/{1} is not a valid IPv4 prefix")]
    BadRemoteRange(Ipv4Addr, u8),
}

/// Where the links of `from_container` are pinned, under the pin directory.
const LINKS: &str = "links";
/// Where the link of `from_wireguard` is pinned, under the pin directory.
const WG_LINKS: &str = "wg-links";
/// Where the root-cgroup links of the socket programs are pinned.
const SOCK_LINKS: &str = "sock-links";

/// What the datapath needs to know at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The service VIP range: a destination inside it is looked up as a VIP.
    pub vip_net: Ipv4Addr,
    pub vip_prefix: u8,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig { vip_net: Ipv4Addr::new(10, 43, 0, 0), vip_prefix: 16 }
    }
}

impl DatapathConfig {
    fn to_map(self) -> Result<Config, Error> {
        if self.vip_prefix > 32 {
            return Err(Error::BadVipRange(self.vip_net, self.vip_prefix));
        }
        let mask: u32 = if self.vip_prefix == 0 { 0 } else { u32::MAX << (32 - self.vip_prefix) };
        let net = u32::from(self.vip_net);
        if net & !mask != 0 || self.vip_prefix == 0 {
            return Err(Error::BadVipRange(self.vip_net, self.vip_prefix));
        }
        Ok(Config { vip_net_be: net.to_be(), vip_mask_be: mask.to_be() })
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The conventional bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at `/sys/fs/bpf` when `dir` lies under it and nothing is
/// mounted there yet, as an agent on a fresh host must.
fn ensure_bpffs(dir: &Path) -> Result<(), Error> {
    if !dir.starts_with(BPFFS) || check_bpffs(Path::new(BPFFS)).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).map_err(io(format!("creating {BPFFS}")))?;
    let target = CString::new(BPFFS).expect("no NUL in a constant");
    let fstype = CString::new("bpf").expect("no NUL in a constant");
    // SAFETY: all pointers are valid NUL-terminated strings alive for the call.
    let rc = unsafe {
        libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(io(format!("mounting bpffs at {BPFFS}"))(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Checks that `dir` (or its nearest existing parent) is on bpffs.
fn check_bpffs(dir: &Path) -> Result<(), Error> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().ok_or_else(|| Error::NotBpffs(dir.to_path_buf()))?;
    }
    let c = CString::new(probe.as_os_str().as_encoded_bytes()).map_err(|_| Error::NotBpffs(dir.to_path_buf()))?;
    // SAFETY: `statfs` only writes into the zeroed struct we pass, and `c`
    // is a valid NUL-terminated path that outlives the call.
    let magic = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return Err(io(format!("statfs {}", probe.display()))(std::io::Error::last_os_error()));
        }
        st.f_type
    };
    if magic != BPF_FS_MAGIC {
        return Err(Error::NotBpffs(dir.to_path_buf()));
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = CString::new(name).map_err(|_| Error::NoInterface(name.to_string()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::NoInterface(name.to_string()));
    }
    Ok(idx)
}

/// The name of interface `index` in the calling thread's network namespace.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// The socket programs, each pinned in the pin directory under its name,
/// and the hook it is attached to on the root cgroup.
pub const SOCK_PROGRAMS: [(&str, CgroupSockAddrAttachType); 4] = [
    (PROG_SOCK_CONNECT4, CgroupSockAddrAttachType::Connect4),
    (PROG_SOCK_GETPEERNAME4, CgroupSockAddrAttachType::GetPeerName4),
    (PROG_SOCK_SENDMSG4, CgroupSockAddrAttachType::UDPSendMsg4),
    (PROG_SOCK_RECVMSG4, CgroupSockAddrAttachType::UDPRecvMsg4),
];

/// A node's loaded datapath. Dropping it leaves everything in place (pins).
pub struct Datapath {
    pin_dir: PathBuf,
    prog: SchedClassifier,
    wg_prog: SchedClassifier,
    maps: Maps,
    ids: IdSpace,
    installed: BTreeMap<Frontend, Installed>,
}

impl Datapath {
    /// Loads the datapath into `pin_dir`, or adopts the one already there.
    pub fn open(pin_dir: &Path, config: DatapathConfig) -> Result<Datapath, Error> {
        let cfg = config.to_map()?;
        ensure_bpffs(pin_dir)?;
        check_bpffs(pin_dir)?;
        let maps_dir = maps_dir(pin_dir);
        for d in [pin_dir.to_path_buf(), maps_dir.clone(), pin_dir.join(LINKS), pin_dir.join(WG_LINKS), pin_dir.join(SOCK_LINKS)] {
            std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        }
        let mut ebpf = load_object(&maps_dir)?;
        // Every client of a flow in conntrack is marked, and every endpoint
        // has its slot, before the programs are replaced: programs older than
        // the marks and slots, or a map lost, would otherwise let replies skip
        // their reverse NAT and packets miss their container.
        let mut maps = Maps::open(&maps_dir)?;
        mark_nat_clients(&mut maps)?;
        fill_local_slots(&mut maps)?;
        let (installed, ids) = read_installed(&maps)?;
        fill_backend_refs(&mut maps, &installed)?;
        let prog = adopt_program(&mut ebpf, PROG_FROM_CONTAINER, pin_dir, LINKS)?;
        let wg_prog = adopt_program(&mut ebpf, PROG_FROM_WIREGUARD, pin_dir, WG_LINKS)?;
        let cgroup = cgroup::root()?;
        for (name, kind) in SOCK_PROGRAMS {
            adopt_sock_program(&mut ebpf, name, kind, pin_dir, &cgroup)?;
        }
        // The pins hold the programs now; the loader's copies can go.
        drop(ebpf);
        // Flows the replaced programs started meanwhile marked their clients
        // where those programs kept the flags (older datapaths: `NAT_CLIENTS`):
        // mark from conntrack once more, now that only the new programs run,
        // and drop the old flags' map.
        mark_nat_clients(&mut maps)?;
        // Also the per-CPU verdict counters those datapaths kept (their
        // counts start again in `CPU_VERDICTS`), and the VIPs their sockets
        // connected to (now kept on each socket: a connection balanced
        // before this reports its backend to `getpeername`).
        for old in [
            fizz_common::map_names::NAT_CLIENTS,
            fizz_common::map_names::VERDICTS,
            fizz_common::map_names::SOCK_PEERS,
        ] {
            let old = maps_dir.join(old);
            match std::fs::remove_file(&old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io { what: format!("unpinning {}", old.display()), source: e })
                }
                _ => {}
            }
        }

        maps.config.set(&cfg)?;
        Ok(Datapath { pin_dir: pin_dir.to_path_buf(), prog, wg_prog, maps, ids, installed })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The maps, for reading (inspection, tests).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The program, for test runs and statistics.
    pub fn program(&self) -> &SchedClassifier {
        &self.prog
    }

    /// The WireGuard ingress program, for test runs and statistics.
    pub fn wireguard_program(&self) -> &SchedClassifier {
        &self.wg_prog
    }

    /// The pin of the link on interface `name`/`index`, under `dir`
    /// (`LINKS` or `WG_LINKS`).
    fn link_pin_in(&self, dir: &str, name: &str, index: u32) -> PathBuf {
        self.pin_dir.join(dir).join(format!("{name}@{index}"))
    }

    /// Attaches `from_container` at TCX ingress of `ifname` (in the calling
    /// thread's network namespace). Attaching twice is a no-op.
    pub fn attach(&mut self, ifname: &str) -> Result<(), Error> {
        let pin = self.link_pin_in(LINKS, ifname, ifindex(ifname)?);
        attach_pinned(&mut self.prog, ifname, &pin)
    }

    /// Attaches `from_wireguard` at TCX ingress of the WireGuard device
    /// `ifname` (in the calling thread's network namespace). Attaching twice
    /// is a no-op.
    pub fn attach_wireguard(&mut self, ifname: &str) -> Result<(), Error> {
        let pin = self.link_pin_in(WG_LINKS, ifname, ifindex(ifname)?);
        attach_pinned(&mut self.wg_prog, ifname, &pin)
    }

    /// The WireGuard devices attached now, as `(name, index)`.
    pub fn attached_wireguard(&self) -> Result<Vec<(String, u32)>, Error> {
        list_links_in(&self.pin_dir.join(WG_LINKS))
    }

    /// Declares another node's container range: packets from local
    /// containers to `net/prefix` go into the WireGuard device `ifindex`.
    pub fn set_remote(&mut self, net: Ipv4Addr, prefix: u8, ifindex: u32) -> Result<(), Error> {
        check_prefix(net, prefix).ok_or(Error::BadRemoteRange(net, prefix))?;
        self.maps.remotes.set(net, prefix, &Remote { ifindex })
    }

    /// Forgets another node's container range.
    pub fn remove_remote(&mut self, net: Ipv4Addr, prefix: u8) -> Result<(), Error> {
        check_prefix(net, prefix).ok_or(Error::BadRemoteRange(net, prefix))?;
        self.maps.remotes.remove(net, prefix)
    }

    /// Declares the networks of other nodes' containers (address → mask,
    /// as `Endpoint::net_mask`), replacing the set declared before:
    /// `from_wireguard` drops a new flow from one of them to a local
    /// container when the two share no network. Entries that go are removed
    /// first, so a full map only refuses what is new. Returns how many
    /// entries changed.
    pub fn set_remote_endpoints(&mut self, masks: &BTreeMap<Ipv4Addr, u64>) -> Result<usize, Error> {
        let key = |a: Ipv4Addr| EndpointKey { addr_be: u32::from(a).to_be() };
        let have = self.remote_endpoints()?;
        let mut changed = 0;
        for a in have.keys().filter(|a| !masks.contains_key(a)) {
            self.maps.remote_endpoints.remove(&key(*a))?;
            changed += 1;
        }
        for (a, m) in masks {
            if have.get(a) != Some(m) {
                self.maps.remote_endpoints.set(&key(*a), &RemoteEndpoint { net_mask: *m })?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The other nodes' containers declared now, with their network masks.
    pub fn remote_endpoints(&self) -> Result<BTreeMap<Ipv4Addr, u64>, Error> {
        Ok(self
            .maps
            .remote_endpoints
            .entries()?
            .into_iter()
            .map(|(k, v)| (Ipv4Addr::from(u32::from_be(k.addr_be)), v.net_mask))
            .collect())
    }

    /// The remote ranges declared now, as `(network, prefix, ifindex)`.
    pub fn remotes(&self) -> Result<Vec<(Ipv4Addr, u8, u32)>, Error> {
        Ok(self.maps.remotes.entries()?.into_iter().map(|(n, p, r)| (n, p, r.ifindex)).collect())
    }

    /// Removes the pins of links whose interface is gone (a deleted veth).
    /// Returns how many were removed.
    pub fn gc_links(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        for dir in [LINKS, WG_LINKS] {
            let dir = self.pin_dir.join(dir);
            for (name, index) in list_links_in(&dir)? {
                if ifname(index).as_deref() != Some(name.as_str()) {
                    let pin = dir.join(format!("{name}@{index}"));
                    std::fs::remove_file(&pin).map_err(io(format!("unpinning {}", pin.display())))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Declares a local container: packets for `addr` go straight into it,
    /// and, when `ep.netns_cookie` names its network namespace, its TCP
    /// connects to VIPs are balanced at connect time.
    pub fn set_endpoint(&mut self, addr: Ipv4Addr, ep: Endpoint) -> Result<(), Error> {
        let key = EndpointKey { addr_be: u32::from(addr).to_be() };
        let old = self.maps.endpoints.get(&key)?;
        if ep.netns_cookie != 0 {
            let client = SockClient { addr_be: key.addr_be, _pad: 0, net_mask: ep.net_mask };
            self.maps.sock_clients.set(&ep.netns_cookie, &client)?;
        }
        self.maps.endpoints.set(&key, &ep)?;
        // The slot goes to this address if free or already its; an address
        // sharing a taken slot is found in `ENDPOINTS`.
        let slot = self.maps.local_slots.get(key.addr_be);
        if slot.addr_be == 0 || slot.addr_be == key.addr_be {
            self.maps.local_slots.set(key.addr_be, key.addr_be, ep);
        }
        match old {
            Some(o) if o.netns_cookie != 0 && o.netns_cookie != ep.netns_cookie => {
                self.maps.sock_clients.remove(&o.netns_cookie)
            }
            _ => Ok(()),
        }
    }

    /// The entry of local container `addr`, if declared.
    pub fn endpoint(&self, addr: Ipv4Addr) -> Result<Option<Endpoint>, Error> {
        self.maps.endpoints.get(&EndpointKey { addr_be: u32::from(addr).to_be() })
    }

    /// Forgets a local container. Its `LOCAL_SLOTS` slot goes to a container
    /// sharing it, or is emptied; the slot's NAT-client flag is cleared unless
    /// another local container shares it: the flows it was the client of are
    /// over, and the next container at its address starts unflagged.
    pub fn remove_endpoint(&mut self, addr: Ipv4Addr) -> Result<(), Error> {
        let key = EndpointKey { addr_be: u32::from(addr).to_be() };
        let old = self.maps.endpoints.get(&key)?;
        self.maps.endpoints.remove(&key)?;
        let slot = fizz_common::addr_slot(key.addr_be);
        let sharer = self.maps.endpoints.entries()?.into_iter().find(|(k, _)| fizz_common::addr_slot(k.addr_be) == slot);
        if sharer.is_none() {
            self.maps.local_slots.mark(key.addr_be, false);
        }
        if self.maps.local_slots.get(key.addr_be).addr_be == key.addr_be {
            let (addr_be, ep) = sharer.map(|(k, ep)| (k.addr_be, ep)).unwrap_or_default();
            self.maps.local_slots.set(key.addr_be, addr_be, ep);
        }
        match old {
            Some(o) if o.netns_cookie != 0 => self.maps.sock_clients.remove(&o.netns_cookie),
            _ => Ok(()),
        }
    }

    /// The services installed now.
    pub fn services(&self) -> Vec<ServiceSpec> {
        self.installed
            .iter()
            .map(|(fe, i)| ServiceSpec { frontend: *fe, backends: i.backends.iter().map(|b| b.0).collect() })
            .collect()
    }

    /// Creates or updates a service. A backend that goes away gets no new
    /// flows, and its conntrack entries are purged. An invalid request
    /// changes nothing.
    pub fn set_service(&mut self, spec: &ServiceSpec) -> Result<(), Error> {
        self.set_service_in(spec, 0)
    }

    /// Like `set_service`, for a service on the networks of `net_mask` (one
    /// bit each): local clients on none of them cannot open flows to it.
    pub fn set_service_in(&mut self, spec: &ServiceSpec, net_mask: u64) -> Result<(), Error> {
        let fe = spec.frontend;
        let mut ids = self.ids.clone();
        let plan = service::plan_service(spec, self.installed.get(&fe), &mut ids)?;

        // A removed backend's id is freed before its slot is.
        self.free_backend_refs(plan.removed.iter().map(|(_, bid)| *bid))?;
        for bid in &plan.new_backend_ids {
            self.maps.backend_stats.reset(*bid)?;
            self.maps.sock_connects.reset(*bid)?;
        }
        for (_, b, bid) in plan.slots.iter().filter(|(_, _, bid)| plan.new_backend_ids.contains(bid)) {
            self.maps.backend_refs.set(*bid, &backend_ref(plan.id, b))?;
        }
        for (slot, b, bid) in &plan.slots {
            let (addr_be, port_be) = b.network_order();
            let value = Backend { addr_be, port_be, _pad: 0, id: *bid };
            self.maps.backends.set(&BackendKey { svc_id: plan.id, slot: *slot }, &value)?;
        }
        let key = svc_key(&fe);
        self.maps.services.set(&key, &SvcValue { id: plan.id, count: plan.slots.len() as u32, net_mask })?;
        if plan.new_id {
            self.add_vip_port(fe.vip, 1)?;
        }
        for slot in plan.stale_slots.clone() {
            self.maps.backends.remove(&BackendKey { svc_id: plan.id, slot })?;
        }
        let removed: Vec<u32> = plan.removed.iter().map(|(_, bid)| *bid).collect();
        self.purge_backends(plan.id, &removed)?;
        self.ids = ids;
        self.installed.insert(
            fe,
            Installed { id: plan.id, backends: plan.slots.iter().map(|(_, b, id)| (*b, *id)).collect() },
        );
        Ok(())
    }

    /// Deletes a service: its VIP port is rejected from now on if the VIP has
    /// other ports, and passed to the stack otherwise. Its flows are purged.
    pub fn remove_service(&mut self, fe: &Frontend) -> Result<(), Error> {
        let Some(inst) = self.installed.get(fe).cloned() else {
            return Ok(());
        };
        self.free_backend_refs(inst.backends.iter().map(|(_, bid)| *bid))?;
        self.maps.services.remove(&svc_key(fe))?;
        for slot in 0..inst.backends.len() as u32 {
            self.maps.backends.remove(&BackendKey { svc_id: inst.id, slot })?;
        }
        self.add_vip_port(fe.vip, -1)?;
        let all: Vec<u32> = inst.backends.iter().map(|(_, bid)| *bid).collect();
        self.purge_backends(inst.id, &all)?;
        service::release(&inst, &mut self.ids);
        self.installed.remove(fe);
        Ok(())
    }

    /// Clears the `BACKEND_REFS` entries of backend ids about to lose their
    /// slots (see `fill_backend_refs`): sockets' picks of them are refused
    /// from here on.
    fn free_backend_refs(&mut self, ids: impl Iterator<Item = u32>) -> Result<(), Error> {
        for bid in ids {
            self.maps.backend_refs.set(bid, &BackendRef::default())?;
        }
        Ok(())
    }

    fn add_vip_port(&mut self, vip: Ipv4Addr, delta: i32) -> Result<(), Error> {
        let key = VipKey { vip_be: u32::from(vip).to_be() };
        let ports = self.maps.vips.get(&key)?.map_or(0, |v| v.ports) as i64 + i64::from(delta);
        if ports <= 0 {
            self.maps.vips.remove(&key)
        } else {
            self.maps.vips.set(&key, &VipValue { ports: ports as u32 })
        }
    }

    /// Deletes every conntrack entry of flows through these backends of a
    /// service, in one pass over the table.
    fn purge_backends(&mut self, svc_id: u32, backend_ids: &[u32]) -> Result<usize, Error> {
        if backend_ids.is_empty() {
            return Ok(0);
        }
        let doomed: Vec<CtKey> = self
            .maps
            .conntrack
            .entries()?
            .into_iter()
            .filter(|(_, v)| backend_ids.iter().any(|&bid| conntrack::uses_backend(v, svc_id, bid)))
            .map(|(k, _)| k)
            .collect();
        self.forget_flows(&doomed)
    }

    /// Deletes conntrack entries idle past their timeout; returns how many.
    pub fn gc_conntrack(&mut self, timeouts: &Timeouts) -> Result<usize, Error> {
        let entries = self.maps.conntrack.entries()?;
        let doomed = conntrack::sweep(&entries, monotonic_ns(), timeouts);
        self.forget_flows(&doomed)
    }

    /// Deletes these conntrack entries, and then every CPU's cached copy of
    /// them; returns how many.
    fn forget_flows(&mut self, keys: &[CtKey]) -> Result<usize, Error> {
        for k in keys {
            self.maps.conntrack.remove(k)?;
            self.maps.flow_epochs.forget(k);
        }
        Ok(keys.len())
    }

}

/// Loads the datapath's object with its maps pinned in `maps_dir`: maps
/// pinned by name are reused when their pins exist, the others created and
/// pinned. `CPU_VERDICTS` and `FLOW_CACHE` are sized to the machine's
/// possible CPUs.
fn load_object(maps_dir: &Path) -> Result<Ebpf, Error> {
    let cpus = u32::try_from(maps::possible_cpus()?).unwrap_or(u32::MAX).min(fizz_common::MAX_CPUS);
    EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .map_max_entries(fizz_common::map_names::CPU_VERDICTS, cpus * fizz_common::VERDICT_STRIDE)
        .map_max_entries(fizz_common::map_names::FLOW_CACHE, cpus * fizz_common::FLOW_CACHE_SLOTS)
        .load(OBJECT)
        .map_err(|e| Error::Load(Box::new(e)))
}

/// Loads `fz_floor`, the program that does nothing, from the datapath's
/// object (its maps are those pinned in `pin_dir`), for a benchmark to attach
/// beside `from_container`. The returned object owns the program and its
/// links: dropping it detaches them.
pub fn load_floor(pin_dir: &Path) -> Result<Ebpf, Error> {
    let mut ebpf = load_object(&maps_dir(pin_dir))?;
    let what = || format!("loading {}", fizz_common::PROG_FLOOR);
    let prog: &mut SchedClassifier = ebpf
        .program_mut(fizz_common::PROG_FLOOR)
        .ok_or_else(|| Error::Program { what: what(), source: aya::programs::ProgramError::UnexpectedProgramType })?
        .try_into()
        .map_err(|source| Error::Program { what: what(), source })?;
    prog.load().map_err(|source| Error::Program { what: what(), source })?;
    Ok(ebpf)
}

/// Flags the slot of the client of every NAT'd flow in conntrack (the
/// destination of each reply entry) in `LOCAL_SLOTS`.
fn mark_nat_clients(maps: &mut Maps) -> Result<(), Error> {
    // One write per slot, however many flows its clients have.
    let clients: BTreeMap<u32, u32> = maps
        .conntrack
        .entries()?
        .into_iter()
        .filter(|(_, v)| v.kind & !fizz_common::CT_HAIRPIN == fizz_common::CT_REPLY)
        .map(|(k, _)| (fizz_common::addr_slot(k.dst_be), k.dst_be))
        .collect();
    for addr_be in clients.into_values() {
        maps.local_slots.mark(addr_be, true);
    }
    Ok(())
}

/// Gives every endpoint in `ENDPOINTS` whose slot in `LOCAL_SLOTS` is empty
/// (or points at an address no longer there) that slot, and the endpoint's
/// current entry to a slot that points at it.
fn fill_local_slots(maps: &mut Maps) -> Result<(), Error> {
    let endpoints: BTreeMap<u32, Endpoint> = maps.endpoints.entries()?.into_iter().map(|(k, v)| (k.addr_be, v)).collect();
    for (&addr_be, &ep) in &endpoints {
        let slot = maps.local_slots.get(addr_be);
        if slot.addr_be == addr_be || slot.addr_be == 0 || !endpoints.contains_key(&slot.addr_be) {
            maps.local_slots.set(addr_be, addr_be, ep);
        }
    }
    // Slots of addresses that left `ENDPOINTS` while no agent kept them.
    for index in 0..fizz_common::ADDR_SLOTS {
        let slot = maps.local_slots.get(index.to_be());
        if slot.addr_be != 0 && !endpoints.contains_key(&slot.addr_be) {
            maps.local_slots.set(index.to_be(), 0, Endpoint::default());
        }
    }
    Ok(())
}

/// Writes the `BACKEND_REFS` entry of every installed backend: the map is
/// empty under a datapath from before it, and an agent stopped half-way
/// through a change may have left one unwritten. (An entry is written
/// before its backend gets a slot and cleared before the slot goes, so one
/// that a stopped agent left set belongs to a backend no socket picked.)
fn fill_backend_refs(maps: &mut Maps, installed: &BTreeMap<Frontend, Installed>) -> Result<(), Error> {
    for inst in installed.values() {
        for (b, bid) in &inst.backends {
            maps.backend_refs.set(*bid, &backend_ref(inst.id, b))?;
        }
    }
    Ok(())
}

/// The `BACKEND_REFS` entry of backend `b` of service `svc_id`.
fn backend_ref(svc_id: u32, b: &BackendAddr) -> BackendRef {
    let (addr_be, port_be) = b.network_order();
    BackendRef { svc_id, addr_be, port_be, _pad: 0 }
}

/// Where the maps of the current layout are pinned under a pin directory.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("maps-v{}", fizz_common::ABI_VERSION))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32).as_nanos() as u64
}

fn svc_key(fe: &Frontend) -> SvcKey {
    SvcKey { vip_be: u32::from(fe.vip).to_be(), port_be: fe.port.to_be(), proto: fe.proto.number(), _pad: 0 }
}

/// The network address and mask of `net/prefix`, if it is a valid prefix
/// (no host bits set).
fn check_prefix(net: Ipv4Addr, prefix: u8) -> Option<u32> {
    if prefix > 32 {
        return None;
    }
    let mask: u32 = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    (u32::from(net) & !mask == 0).then_some(mask)
}

/// Loads program `name` from the object, or adopts the pinned one when its
/// code is the same. New code is moved onto every link pinned under
/// `links` first, then pinned in place of the old.
fn adopt_program(ebpf: &mut Ebpf, name: &'static str, pin_dir: &Path, links: &str) -> Result<SchedClassifier, Error> {
    let prog_pin = pin_dir.join(name);
    let fresh: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(Error::NoProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { what: format!("program type of {name}"), source })?;
    fresh.load().map_err(|source| Error::Program { what: format!("loading {name}"), source })?;

    let reuse = match SchedClassifier::from_pin(&prog_pin) {
        Ok(pinned) if same_code(&pinned, fresh) => true,
        Ok(_old) => {
            // New code: move every link to it, then replace the pin.
            upgrade_links(&pin_dir.join(links), fresh)?;
            std::fs::remove_file(&prog_pin).map_err(io(format!("unpinning {}", prog_pin.display())))?;
            false
        }
        Err(_) => false,
    };
    if !reuse {
        pin_program(fresh, &prog_pin)?;
    }
    SchedClassifier::from_pin(&prog_pin)
        .map_err(|source| Error::Program { what: format!("opening {}", prog_pin.display()), source })
}

/// Loads socket program `name` and makes sure a link of it to the root
/// cgroup is pinned under `sock-links/`. A pinned link of the same code is
/// kept; new code is attached beside the old, then takes its pin (the old
/// link goes with its pin). For that moment both run, which is harmless:
/// the first points a connect at a backend, the second then sees no VIP.
fn adopt_sock_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: CgroupSockAddrAttachType,
    pin_dir: &Path,
    cgroup: &std::fs::File,
) -> Result<(), Error> {
    let prog_pin = pin_dir.join(name);
    let link_pin = pin_dir.join(SOCK_LINKS).join(name);
    let fresh: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(Error::NoProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { what: format!("program type of {name}"), source })?;
    fresh.load().map_err(|source| Error::Program { what: format!("loading {name}"), source })?;
    let same = match (CgroupSockAddr::from_pin(&prog_pin, kind), fresh.info()) {
        (Ok(pinned), Ok(new)) => pinned.info().is_ok_and(|old| old.tag() == new.tag()),
        _ => false,
    };
    if same && link_pin.exists() {
        return Ok(());
    }
    let what = format!("attaching {name} to the root cgroup");
    // A cgroup link is always one of many (the kernel takes no flags for
    // it): `Single` here means "no flags", not exclusive.
    let id = fresh.attach(cgroup, CgroupAttachMode::Single).map_err(|source| Error::Program { what: what.clone(), source })?;
    let link: FdLink = fresh
        .take_link(id)
        .map_err(|source| Error::Program { what: what.clone(), source })?
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| Error::Link { what: what.clone(), source: Box::new(e) })?;
    for old in [&link_pin, &prog_pin] {
        match std::fs::remove_file(old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("unpinning {}", old.display()))(e));
            }
            _ => {}
        }
    }
    link.pin(&link_pin).map_err(|e| Error::Link { what: format!("pinning the link of {name}"), source: Box::new(e) })?;
    fresh.pin(&prog_pin).map_err(|e| Error::Link { what: format!("pinning {name}"), source: Box::new(e) })
}

/// Attaches `prog` at TCX ingress of `ifname` and pins the link at `pin`;
/// a link already pinned there is kept.
fn attach_pinned(prog: &mut SchedClassifier, ifname: &str, pin: &Path) -> Result<(), Error> {
    if pin.exists() {
        return Ok(());
    }
    let id = prog
        .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(|source| Error::Program { what: format!("attaching to {ifname} ingress"), source })?;
    let link = prog
        .take_link(id)
        .map_err(|source| Error::Program { what: format!("taking the link on {ifname}"), source })?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| Error::Link { what: format!("link on {ifname}"), source: Box::new(e) })?;
    fd.pin(pin)
        .map_err(|e| Error::Link { what: format!("pinning the link on {ifname}"), source: Box::new(e) })?;
    Ok(())
}

fn same_code(a: &SchedClassifier, b: &SchedClassifier) -> bool {
    match (a.info(), b.info()) {
        (Ok(a), Ok(b)) => a.tag() == b.tag(),
        _ => false,
    }
}

fn pin_program(prog: &mut SchedClassifier, path: &Path) -> Result<(), Error> {
    prog.pin(path)
        .map_err(|e| Error::Link { what: format!("pinning the program at {}", path.display()), source: Box::new(e) })
}

/// Points every link pinned in `dir` at `new` (an upgrade: atomic per interface).
fn upgrade_links(dir: &Path, new: &mut SchedClassifier) -> Result<(), Error> {
    for (name, index) in list_links_in(dir)? {
        let path = dir.join(format!("{name}@{index}"));
        let what = format!("updating the link on {name}");
        let pinned = PinnedLink::from_pin(&path).map_err(|e| Error::Link { what: what.clone(), source: Box::new(e) })?;
        let fd: FdLink = pinned.into();
        let link = SchedClassifierLink::try_from(fd).map_err(|e| Error::Link { what: what.clone(), source: Box::new(e) })?;
        let id = new.attach_to_link(link).map_err(|source| Error::Program { what: what.clone(), source })?;
        // The pin keeps the link attached; dropping our handle only closes
        // a file descriptor.
        drop(new.take_link(id).map_err(|source| Error::Program { what, source })?);
    }
    Ok(())
}

/// Parses `links/<name>@<index>` entries: the interfaces with a pinned link
/// of `from_container`.
pub fn list_links(pin_dir: &Path) -> Result<Vec<(String, u32)>, Error> {
    list_links_in(&pin_dir.join(LINKS))
}

/// Parses the `<name>@<index>` link pins in `dir`.
fn list_links_in(dir: &Path) -> Result<Vec<(String, u32)>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
        let file = entry.file_name();
        let Some(s) = file.to_str() else { continue };
        if let Some((name, idx)) = s.rsplit_once('@') {
            if let Ok(idx) = idx.parse() {
                out.push((name.to_string(), idx));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Rebuilds what is installed (and the ids in use) from the maps.
fn read_installed(maps: &Maps) -> Result<(BTreeMap<Frontend, Installed>, IdSpace), Error> {
    let mut installed = BTreeMap::new();
    let mut ids = IdSpace::default();
    for (k, v) in maps.services.entries()? {
        let Some(proto) = Proto::from_number(k.proto) else { continue };
        let fe = Frontend { vip: Ipv4Addr::from(u32::from_be(k.vip_be)), port: u16::from_be(k.port_be), proto };
        let mut backends = Vec::with_capacity(v.count as usize);
        for slot in 0..v.count {
            if let Some(b) = maps.backends.get(&BackendKey { svc_id: v.id, slot })? {
                backends.push((BackendAddr { addr: Ipv4Addr::from(u32::from_be(b.addr_be)), port: u16::from_be(b.port_be) }, b.id));
                ids.backend_ids.insert(b.id);
            }
        }
        ids.service_ids.insert(v.id);
        installed.insert(fe, Installed { id: v.id, backends });
    }
    Ok((installed, ids))
}
