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
    map_names, Backend, BackendKey, Config, Counter, CtKey, CtValue, Endpoint, EndpointKey,
    Remote, RemoteAddr, SockClient, SockPeer, SvcKey, SvcValue, VipKey, VipValue, addr_slot, LocalSlot,
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
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Io { what: "counting CPUs".into(), source: e })?;
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

/// The clients of NAT'd flows (`FZ_NAT_CLIENTS`): one flag per slot of
/// addresses. The program sets a flag before it writes a flow's conntrack
/// entries; the agent clears one only when no container that can have such
/// flows is left in the slot.
pub struct NatClients {
    map: Array<MapData, u32>,
}

impl NatClients {
    fn open(dir: &Path) -> Result<Self, Error> {
        let name = map_names::NAT_CLIENTS;
        let map = Array::try_from(open(dir, name)?).map_err(map_err(name))?;
        Ok(NatClients { map })
    }

    /// Whether `addr`'s slot is marked.
    pub fn is_marked(&self, addr_be: u32) -> Result<bool, Error> {
        Ok(self.map.get(&addr_slot(addr_be), 0).map_err(map_err(map_names::NAT_CLIENTS))? != 0)
    }

    /// Marks (or clears) `addr`'s slot.
    pub fn set(&mut self, addr_be: u32, marked: bool) -> Result<(), Error> {
        self.map.set(addr_slot(addr_be), u32::from(marked), 0).map_err(map_err(map_names::NAT_CLIENTS))
    }
}

/// The local endpoints by address slot (`FZ_LOCAL_SLOTS`), which the
/// program reads instead of hashing into `ENDPOINTS`. Written only here, as
/// a sequence lock (see `LocalSlot`).
pub struct LocalSlots {
    map: Array<MapData, LocalSlot>,
}

impl LocalSlots {
    fn open(dir: &Path) -> Result<Self, Error> {
        let name = map_names::LOCAL_SLOTS;
        let map = Array::try_from(open(dir, name)?).map_err(map_err(name))?;
        Ok(LocalSlots { map })
    }

    /// The slot of `addr_be`.
    pub fn get(&self, addr_be: u32) -> Result<LocalSlot, Error> {
        self.map.get(&addr_slot(addr_be), 0).map_err(map_err(map_names::LOCAL_SLOTS))
    }

    /// Writes the slot of `slot_of` as given, in one write: for tests that
    /// show what a program does with a slot caught mid-change or left stale.
    pub fn write_raw(&mut self, slot_of: u32, v: LocalSlot) -> Result<(), Error> {
        self.map.set(addr_slot(slot_of), v, 0).map_err(map_err(map_names::LOCAL_SLOTS))
    }

    /// Points the slot of `slot_of` (an address) at `addr_be` and `ep`, or empties it
    /// (`addr_be` 0): `seq` made odd, the new contents, `seq` made even, in three writes,
    /// so that a program reading meanwhile falls back to `ENDPOINTS`.
    pub fn set(&mut self, slot_of: u32, addr_be: u32, ep: Endpoint) -> Result<(), Error> {
        let index = addr_slot(slot_of);
        let mut cur = self.get(slot_of)?;
        if cur.addr_be == addr_be && cur.ep == ep && cur.seq & 1 == 0 {
            return Ok(());
        }
        let err = map_err(map_names::LOCAL_SLOTS);
        if cur.seq & 1 == 0 {
            cur.seq = cur.seq.wrapping_add(1);
            self.map.set(index, cur, 0).map_err(&err)?;
        }
        let changing = LocalSlot { addr_be, seq: cur.seq, ep };
        self.map.set(index, changing, 0).map_err(&err)?;
        self.map.set(index, LocalSlot { seq: cur.seq.wrapping_add(1), ..changing }, 0).map_err(&err)
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
    pub verdicts: Counters,
    pub config: ConfigMap,
    pub remotes: Remotes,
    /// Network-namespace cookie → the container whose connects are balanced.
    pub sock_clients: TypedHash<u64, SockClient>,
    /// Socket cookie → the VIP it connected to.
    pub sock_peers: TypedHash<u64, SockPeer>,
    pub sock_connects: Counters,
    pub nat_clients: NatClients,
    pub local_slots: LocalSlots,
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
            verdicts: Counters::open(dir, map_names::VERDICTS)?,
            config: ConfigMap::open(dir)?,
            remotes: Remotes::open(dir)?,
            sock_clients: TypedHash::open(dir, map_names::SOCK_CLIENTS)?,
            sock_peers: TypedHash::open(dir, map_names::SOCK_PEERS)?,
            sock_connects: Counters::open(dir, map_names::SOCK_CONNECTS)?,
            nat_clients: NatClients::open(dir)?,
            local_slots: LocalSlots::open(dir)?,
        })
    }
}
