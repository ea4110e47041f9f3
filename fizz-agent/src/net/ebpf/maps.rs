//! One typed wrapper per pinned map. They open the maps by name under a
//! node's pin directory, so the running agent and `fizz net inspect` (even
//! with the agent stopped) read and write the same kernel objects.

use std::path::{Path, PathBuf};

use std::net::Ipv4Addr;

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
};
use fizz_common::{
    map_names, Backend, BackendKey, BackendRef, Config, Counter, CtKey, CtValue, Endpoint, EndpointKey,
    Remote, RemoteAddr, RemoteEndpoint, SockClient, SockDgramKey, SockPeer, SockPick, SvcKey, SvcValue, VipKey, VipValue, addr_slot, LocalSlot, VERDICT_STRIDE,
};

use super::Error;

fn open(dir: &Path, name: &'static str) -> Result<Map, Error> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| Error::OpenMap { path: path.clone(), source })?;
    Map::from_map_data(data).map_err(|source| Error::OpenMap { path, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// A hash map with typed keys and values, named for errors.
pub struct TypedHash<K: aya::Pod, V: aya::Pod> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
}

impl<K: aya::Pod, V: aya::Pod> TypedHash<K, V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, Error> {
        let map = HashMap::try_from(open(dir, name)?).map_err(map_err(name))?;
        Ok(TypedHash { name, map })
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>, Error> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(self.name)(e)),
        }
    }

    /// Inserts or replaces.
    pub fn set(&mut self, key: &K, value: &V) -> Result<(), Error> {
        self.map.insert(key, value, 0).map_err(map_err(self.name))
    }

    /// Deletes; a missing key is not an error.
    pub fn remove(&mut self, key: &K) -> Result<(), Error> {
        match self.map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(self.name)(e)),
        }
    }

    /// Every entry. Entries that vanish while iterating are skipped.
    pub fn entries(&self) -> Result<Vec<(K, V)>, Error> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok(kv) => out.push(kv),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(self.name)(e)),
            }
        }
        Ok(out)
    }
}

/// The machine's possible CPUs (per-CPU maps have an entry for each).
pub(super) fn possible_cpus() -> Result<usize, Error> {
    aya::util::nr_cpus().map_err(|(_, e)| Error::Io { what: "counting CPUs".into(), source: e })
}

/// An array with typed values, named for errors.
pub struct TypedArray<V: aya::Pod> {
    name: &'static str,
    map: Array<MapData, V>,
}

impl<V: aya::Pod> TypedArray<V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, Error> {
        let map = Array::try_from(open(dir, name)?).map_err(map_err(name))?;
        Ok(TypedArray { name, map })
    }

    /// The value at `index`.
    pub fn get(&self, index: u32) -> Result<V, Error> {
        self.map.get(&index, 0).map_err(map_err(self.name))
    }

    /// Writes the value at `index`.
    pub fn set(&mut self, index: u32, value: &V) -> Result<(), Error> {
        self.map.set(index, value, 0).map_err(map_err(self.name))
    }
}

/// A per-CPU array of counters.
pub struct Counters {
    name: &'static str,
    map: PerCpuArray<MapData, Counter>,
}

impl Counters {
    fn open(dir: &Path, name: &'static str) -> Result<Self, Error> {
        let map = PerCpuArray::try_from(open(dir, name)?).map_err(map_err(name))?;
        Ok(Counters { name, map })
    }

    /// The sum over CPUs of entry `index`.
    pub fn get(&self, index: u32) -> Result<Counter, Error> {
        let values = self.map.get(&index, 0).map_err(map_err(self.name))?;
        let mut sum = Counter::default();
        for v in values.iter() {
            sum.add(v);
        }
        Ok(sum)
    }

    /// Sets entry `index` to zero on every CPU (before an id is reused).
    pub fn reset(&mut self, index: u32) -> Result<(), Error> {
        let cpus = possible_cpus()?;
        let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|e| Error::Io {
            what: "building per-CPU values".into(),
            source: e,
        })?;
        self.map.set(index, zeros, 0).map_err(map_err(self.name))
    }

    /// The number of entries.
    pub fn len(&self) -> u32 {
        self.map.len()
    }

    /// Whether the array has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `CPU_VERDICTS`: counters kept `VERDICT_STRIDE` entries apart for each
/// CPU in a plain array.
pub struct CpuCounters {
    map: Array<MapData, Counter>,
}

impl CpuCounters {
    fn open(dir: &Path) -> Result<Self, Error> {
        let name = map_names::CPU_VERDICTS;
        let map = Array::try_from(open(dir, name)?).map_err(map_err(name))?;
        Ok(CpuCounters { map })
    }

    /// The sum over CPUs of counter `index`.
    pub fn get(&self, index: u32) -> Result<Counter, Error> {
        let mut sum = Counter::default();
        let mut at = index;
        while at < self.map.len() {
            sum.add(&self.map.get(&at, 0).map_err(map_err(map_names::CPU_VERDICTS))?);
            at += VERDICT_STRIDE;
        }
        Ok(sum)
    }
}

/// The datapath's configuration array (one entry).
pub struct ConfigMap {
    map: Array<MapData, Config>,
}

impl ConfigMap {
    fn open(dir: &Path) -> Result<Self, Error> {
        let map = Array::try_from(open(dir, map_names::CONFIG)?).map_err(map_err(map_names::CONFIG))?;
        Ok(ConfigMap { map })
    }

    pub fn get(&self) -> Result<Config, Error> {
        self.map.get(&0, 0).map_err(map_err(map_names::CONFIG))
    }

    pub fn set(&mut self, cfg: &Config) -> Result<(), Error> {
        self.map.set(0, cfg, 0).map_err(map_err(map_names::CONFIG))
    }
}

/// The local endpoints and NAT-client flags by address slot
/// (`FZ_LOCAL_SLOTS`), memory-mapped: the agent writes a slot's words in
/// place, so that changing an endpoint never writes over the flag the
/// program sets when a flow starts.
/// - Endpoints: written only here, under the sequence lock of `LocalSlot`.
/// - Flags: the program sets a slot's before it writes a flow's conntrack
///   entries; the agent clears one only when no container that can have such
///   flows is left in the slot, and sets those of the flows in conntrack when
///   the datapath opens.
pub struct LocalSlots {
    /// `ADDR_SLOTS` slots.
    slots: Mapping<LocalSlot>,
}

impl LocalSlots {
    fn open(dir: &Path) -> Result<Self, Error> {
        Ok(LocalSlots { slots: Mapping::open(dir, map_names::LOCAL_SLOTS, fizz_common::ADDR_SLOTS)? })
    }

    fn slot(&self, addr_be: u32) -> *mut LocalSlot {
        self.slots.at(addr_slot(addr_be))
    }

    /// The slot of `addr_be`, as it is now.
    pub fn get(&self, addr_be: u32) -> LocalSlot {
        // SAFETY: a valid slot of the mapping; a torn read is possible while
        // the program sets the flag, and harmless (its word is read whole).
        unsafe { std::ptr::read_volatile(self.slot(addr_be)) }
    }

    /// Points the slot of `slot_of` (an address) at `addr_be` and `ep`, or
    /// empties it (`addr_be` 0): `seq` made odd, the new address and
    /// endpoint, `seq` made even, each step visible before the next, so that
    /// a program reading meanwhile falls back to `ENDPOINTS`. The NAT-client
    /// flag is left alone.
    pub fn set(&mut self, slot_of: u32, addr_be: u32, ep: Endpoint) {
        use std::sync::atomic::{fence, Ordering};
        let p = self.slot(slot_of);
        // SAFETY: a valid slot of the mapping; only this agent writes these words.
        unsafe {
            let cur = std::ptr::read_volatile(p);
            if cur.addr_be == addr_be && cur.ep == ep && cur.seq & 1 == 0 {
                return;
            }
            let odd = cur.seq | 1;
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).seq), odd);
            fence(Ordering::SeqCst);
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).addr_be), addr_be);
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).ep), ep);
            fence(Ordering::SeqCst);
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).seq), odd.wrapping_add(1));
        }
    }

    /// Writes the address, `seq` and endpoint of `slot_of`'s slot as given:
    /// for tests that show what a program does with a slot caught mid-change
    /// or left stale.
    pub fn write_raw(&mut self, slot_of: u32, v: LocalSlot) {
        let p = self.slot(slot_of);
        // SAFETY: a valid slot of the mapping.
        unsafe {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).seq), v.seq);
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).addr_be), v.addr_be);
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).ep), v.ep);
        }
    }

    /// Whether `addr_be`'s slot is flagged as holding a NAT client.
    pub fn is_marked(&self, addr_be: u32) -> bool {
        // SAFETY: a valid slot of the mapping; the flag's own word.
        unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*self.slot(addr_be)).nat_client)) != 0 }
    }

    /// Flags (or clears) `addr_be`'s slot as holding a NAT client.
    pub fn mark(&mut self, addr_be: u32, marked: bool) {
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*self.slot(addr_be)).nat_client), u32::from(marked)) }
    }
}

/// The epochs of the flow cache's slots (`FZ_FLOW_EPOCHS`), memory-mapped so
/// that the agent adds to one atomically, as the programs do.
pub struct FlowEpochs {
    epochs: Mapping<u64>,
}

impl FlowEpochs {
    fn open(dir: &Path) -> Result<Self, Error> {
        Ok(FlowEpochs { epochs: Mapping::open(dir, map_names::FLOW_EPOCHS, fizz_common::FLOW_CACHE_SLOTS)? })
    }

    /// Stops every CPU's cached copy of the flow `key` from being used: to
    /// call after its conntrack entry was removed or written.
    pub fn forget(&self, key: &CtKey) {
        // SAFETY: a valid, 8-aligned slot of the mapping; every writer of
        // these words (the programs and this) adds to them atomically.
        let epoch = unsafe { std::sync::atomic::AtomicU64::from_ptr(self.epochs.at(fizz_common::flow_slot(key))) };
        epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `count` values of an array map, memory-mapped (the map is created
/// memory-mappable): plain memory shared with the programs.
struct Mapping<T> {
    base: std::ptr::NonNull<T>,
    count: u32,
}

// SAFETY: the mapping is plain shared memory, valid until `drop`; its users
// access it through volatile or atomic reads and writes.
unsafe impl<T> Send for Mapping<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Mapping<T> {}

impl<T> Mapping<T> {
    fn open(dir: &Path, name: &'static str, count: u32) -> Result<Self, Error> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let path = dir.join(name);
        let data = MapData::from_pin(&path).map_err(|source| Error::OpenMap { path: path.clone(), source })?;
        // SAFETY: a shared read-write mapping of the array's memory, which the
        // kernel keeps (the mapping holds the map) until `munmap` in `drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::len(count),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Io { what: format!("mapping {}", path.display()), source: std::io::Error::last_os_error() });
        }
        let base = std::ptr::NonNull::new(p.cast::<T>()).expect("mmap returned a non-null address");
        Ok(Mapping { base, count })
    }

    fn len(count: u32) -> usize {
        std::mem::size_of::<T>() * count as usize
    }

    /// Value `i` (below `count`).
    fn at(&self, i: u32) -> *mut T {
        assert!(i < self.count, "index {i} of a mapping of {}", self.count);
        // SAFETY: in bounds, just checked.
        unsafe { self.base.as_ptr().add(i as usize) }
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, not used after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), Self::len(self.count)) };
    }
}

/// The container ranges of other nodes (`FZ_REMOTES`, an LPM trie), keyed
/// by network address and prefix length.
pub struct Remotes {
    map: LpmTrie<MapData, RemoteAddr, Remote>,
}

impl Remotes {
    fn open(dir: &Path) -> Result<Self, Error> {
        let map = LpmTrie::try_from(open(dir, map_names::REMOTES)?).map_err(map_err(map_names::REMOTES))?;
        Ok(Remotes { map })
    }

    fn key(net: Ipv4Addr, prefix: u8) -> Key<RemoteAddr> {
        Key::new(u32::from(prefix), RemoteAddr { addr_be: u32::from(net).to_be() })
    }

    /// The entry for exactly `net/prefix`, if any.
    pub fn get(&self, net: Ipv4Addr, prefix: u8) -> Result<Option<Remote>, Error> {
        match self.map.get(&Self::key(net, prefix), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::REMOTES)(e)),
        }
    }

    /// Inserts or replaces `net/prefix`.
    pub fn set(&mut self, net: Ipv4Addr, prefix: u8, value: &Remote) -> Result<(), Error> {
        self.map.insert(&Self::key(net, prefix), value, 0).map_err(map_err(map_names::REMOTES))
    }

    /// Deletes `net/prefix`; a missing entry is not an error.
    pub fn remove(&mut self, net: Ipv4Addr, prefix: u8) -> Result<(), Error> {
        match self.map.remove(&Self::key(net, prefix)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::REMOTES)(e)),
        }
    }

    /// Every entry, as `(network, prefix length, value)`.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, u8, Remote)>, Error> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok((k, v)) => {
                    let data = k.data();
                    out.push((Ipv4Addr::from(u32::from_be(data.addr_be)), k.prefix_len() as u8, v));
                }
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::REMOTES)(e)),
            }
        }
        Ok(out)
    }
}

/// All the datapath's maps, opened from a pin directory.
pub struct Maps {
    pub dir: PathBuf,
    pub services: TypedHash<SvcKey, SvcValue>,
    pub backends: TypedHash<BackendKey, Backend>,
    pub vips: TypedHash<VipKey, VipValue>,
    pub conntrack: TypedHash<CtKey, CtValue>,
    pub endpoints: TypedHash<EndpointKey, Endpoint>,
    pub backend_stats: Counters,
    pub drops: Counters,
    pub verdicts: CpuCounters,
    pub config: ConfigMap,
    pub remotes: Remotes,
    /// Other nodes' containers → their networks.
    pub remote_endpoints: TypedHash<EndpointKey, RemoteEndpoint>,
    /// Network-namespace cookie → the container whose connects are balanced.
    pub sock_clients: TypedHash<u64, SockClient>,
    /// (Socket, VIP) → the backend its datagrams go to.
    pub sock_picks: TypedHash<SockDgramKey, SockPick>,
    /// (Socket, backend) → the VIP its datagrams are reported from.
    pub sock_replies: TypedHash<SockDgramKey, SockPeer>,
    /// Per backend: connections and datagram sockets balanced at the socket.
    pub sock_connects: Counters,
    /// Backend id → the service and address holding it (zero: free).
    pub backend_refs: TypedArray<BackendRef>,
    pub local_slots: LocalSlots,
    pub flow_epochs: FlowEpochs,
}

impl Maps {
    /// Opens every map pinned in `dir` (a node's `maps/` pin directory).
    pub fn open(dir: &Path) -> Result<Maps, Error> {
        Ok(Maps {
            dir: dir.to_path_buf(),
            services: TypedHash::open(dir, map_names::SERVICES)?,
            backends: TypedHash::open(dir, map_names::BACKENDS)?,
            vips: TypedHash::open(dir, map_names::VIPS)?,
            conntrack: TypedHash::open(dir, map_names::CONNTRACK)?,
            endpoints: TypedHash::open(dir, map_names::ENDPOINTS)?,
            backend_stats: Counters::open(dir, map_names::BACKEND_STATS)?,
            drops: Counters::open(dir, map_names::DROPS)?,
            verdicts: CpuCounters::open(dir)?,
            config: ConfigMap::open(dir)?,
            remotes: Remotes::open(dir)?,
            remote_endpoints: TypedHash::open(dir, map_names::REMOTE_ENDPOINTS)?,
            sock_clients: TypedHash::open(dir, map_names::SOCK_CLIENTS)?,
            sock_picks: TypedHash::open(dir, map_names::SOCK_PICKS)?,
            sock_replies: TypedHash::open(dir, map_names::SOCK_REPLIES)?,
            sock_connects: Counters::open(dir, map_names::SOCK_CONNECTS)?,
            backend_refs: TypedArray::open(dir, map_names::BACKEND_REFS)?,
            local_slots: LocalSlots::open(dir)?,
            flow_epochs: FlowEpochs::open(dir)?,
        })
    }
}
