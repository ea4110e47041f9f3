//! Map definitions. Keys and values are the `#[repr(C)]` types of
//! `fizz-common`; every map is pinned by name so that an agent restart keeps
//! state and established flows.

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::generated::{bpf_get_smp_processor_id, bpf_sk_storage_get},
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::SockAddrContext,
};
use fizz_common::{
    Backend, BackendKey, Config, Counter, CtKey, CtValue, Endpoint, EndpointKey, SvcKey,
    SvcValue, VipKey, VipValue, MAX_BACKENDS, MAX_BACKEND_IDS, MAX_CONNTRACK, MAX_ENDPOINTS,
    MAX_SERVICES, MAX_VIPS, drop_reason, verdict, Remote, RemoteAddr, MAX_REMOTES, SockClient,
    SockPeer, ADDR_SLOTS, addr_slot, LocalSlot, MAX_CPUS, VERDICT_STRIDE, RemoteEndpoint,
    MAX_REMOTE_ENDPOINTS, SockDgramKey, SockPick, MAX_SOCK_PICKS, BackendRef, SockState,
};

#[map(name = "FZ_SERVICES")]
pub static SERVICES: HashMap<SvcKey, SvcValue> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "FZ_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(MAX_BACKENDS, 0);

#[map(name = "FZ_VIPS")]
pub static VIPS: HashMap<VipKey, VipValue> = HashMap::pinned(MAX_VIPS, 0);

#[map(name = "FZ_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);

#[map(name = "FZ_ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "FZ_BE_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_BACKEND_IDS, 0);

#[map(name = "FZ_DROPS")]
pub static DROPS: PerCpuArray<Counter> = PerCpuArray::pinned(drop_reason::MAX, 0);

/// See `map_names::CPU_VERDICTS`; the agent sets its size when it loads
/// the object.
#[map(name = "FZ_CPU_VERDICTS")]
pub static CPU_VERDICTS: Array<Counter> = Array::pinned(MAX_CPUS * VERDICT_STRIDE, 0);

#[map(name = "FZ_RR")]
pub static RR: PerCpuArray<u32> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "FZ_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "FZ_REMOTES")]
pub static REMOTES: LpmTrie<RemoteAddr, Remote> = LpmTrie::pinned(MAX_REMOTES, 0);

#[map(name = "FZ_REMOTE_ENDPOINTS")]
pub static REMOTE_ENDPOINTS: HashMap<EndpointKey, RemoteEndpoint> = HashMap::pinned(MAX_REMOTE_ENDPOINTS, 0);

#[map(name = "FZ_SOCK_CLIENTS")]
pub static SOCK_CLIENTS: HashMap<u64, SockClient> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// `FZ_SOCK_STATE`: socket local storage, declared with BTF (the kernel
/// creates this map type only with its key's and value's BTF types), in
/// the layout loaders read: each field's pointee array length is a
/// setting. Pinned by name like the others, so sockets balanced before an
/// agent restart keep their state.
#[repr(C)]
pub struct SockStateMap {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockState,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    /// `LIBBPF_PIN_BY_NAME`.
    pinning: *const [i32; 1],
}

// SAFETY: the fields are never dereferenced: they only describe the map
// to the loader, which replaces the static's address with the map's.
unsafe impl Sync for SockStateMap {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "FZ_SOCK_STATE")]
pub static SOCK_STATE: SockStateMap = SockStateMap {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
    pinning: core::ptr::null(),
};

/// The state the socket programs keep on the socket of `ctx`, if any; with
/// `create`, made (zeroed) when missing, or none when that fails.
#[inline(always)]
pub fn sock_state(ctx: &SockAddrContext, create: bool) -> Option<*mut SockState> {
    let mut zero = SockState::default();
    // SAFETY: `sock_addr` is the program's context, whose `sk` the kernel
    // sets for these hooks; the helper takes the map by address and copies
    // the initial value.
    let p = unsafe {
        let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
        let (init, flags) = if create {
            (core::ptr::addr_of_mut!(zero), u64::from(BPF_SK_STORAGE_GET_F_CREATE))
        } else {
            (core::ptr::null_mut(), 0)
        };
        bpf_sk_storage_get(core::ptr::addr_of!(SOCK_STATE).cast_mut().cast(), sk.cast(), init.cast(), flags)
    };
    (!p.is_null()).then_some(p.cast())
}

#[map(name = "FZ_SOCK_PICKS")]
pub static SOCK_PICKS: LruHashMap<SockDgramKey, SockPick> = LruHashMap::pinned(MAX_SOCK_PICKS, 0);

#[map(name = "FZ_SOCK_REPLIES")]
pub static SOCK_REPLIES: LruHashMap<SockDgramKey, SockPeer> = LruHashMap::pinned(MAX_SOCK_PICKS, 0);

#[map(name = "FZ_BACKEND_REFS")]
pub static BACKEND_REFS: Array<BackendRef> = Array::pinned(MAX_BACKEND_IDS, 0);

#[map(name = "FZ_SOCK_CONNECTS")]
pub static SOCK_CONNECTS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_BACKEND_IDS, 0);

/// Memory-mappable, so that the agent changes a slot's endpoint in place
/// and never writes over the NAT-client flag the program sets.
#[map(name = "FZ_LOCAL_SLOTS")]
pub static LOCAL_SLOTS: Array<LocalSlot> = Array::pinned(ADDR_SLOTS, BPF_F_MMAPABLE);

/// Where `LocalSlot`'s endpoint starts, in words; its first word holds the
/// address and `seq`.
const EP_WORD: usize = core::mem::offset_of!(LocalSlot, ep) / 8;
const _: () = assert!(
    core::mem::offset_of!(LocalSlot, ep) % 8 == 0
        && core::mem::offset_of!(LocalSlot, addr_be) == 0
        && core::mem::offset_of!(LocalSlot, seq) == 4
);

/// What the slot of an address in `LOCAL_SLOTS` says about it. Every field
/// is defined on every path (the endpoint zeroed when there is none), so
/// that code merging several of these never copies a register the verifier
/// considers uninitialised, as an `Option`'s empty payload would be.
#[derive(Clone, Copy)]
pub struct Local {
    /// The local endpoint (container) at the address, when `found`.
    ep: Endpoint,
    found: bool,
    /// The slot could not tell (it holds another address of the slot, or
    /// the agent was changing it): `ENDPOINTS` has the answer.
    ask: bool,
    /// Whether conntrack may hold a reply entry addressed to it (it was,
    /// or shares a slot with, the client of a flow NAT'd here). When not,
    /// a packet to it outside the VIP range needs no conntrack lookup.
    pub nat_client: bool,
}

impl Local {
    /// The local endpoint at the address, if there is one (for a slot that
    /// could not tell, once `resolved`).
    #[inline(always)]
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.found.then_some(self.ep)
    }

    /// The answer for `addr_be`, from `ENDPOINTS` when the slot could not
    /// tell.
    #[inline(always)]
    pub fn resolved(self, addr_be: u32) -> Local {
        if !self.ask {
            return self;
        }
        let nat_client = self.nat_client;
        match ENDPOINTS.get_ptr(EndpointKey { addr_be }) {
            // SAFETY: the pointer comes from a successful map lookup and is only read.
            Some(ep) => Local { ep: unsafe { *ep }, found: true, ask: false, nat_client },
            None => Local { ep: Endpoint::default(), found: false, ask: false, nat_client },
        }
    }
}

/// Reads the slot of `addr_be` only: one cache line for the endpoint and
/// the NAT-client flag (an array, no hashing). A slot holding another
/// address that shares it asks `ENDPOINTS` (`Local::resolved`), which a
/// caller may skip when the address turns out to be a VIP.
/// The endpoint is read as a sequence lock (see `LocalSlot`): a copy taken
/// while the agent changes it is not trusted.
#[inline(always)]
pub fn slot(addr_be: u32) -> Local {
    let answer = |ep, found, ask, nat_client| Local { ep, found, ask, nat_client };
    let Some(p) = LOCAL_SLOTS.get_ptr(addr_slot(addr_be)) else {
        return answer(Endpoint::default(), false, true, false);
    };
    let words = p.cast::<u64>();
    // SAFETY: the pointer comes from a successful array lookup: valid and
    // 8-aligned (a slot is 64 bytes of words). Volatile reads keep their
    // order (x86 keeps loads in order): the first word (address and `seq`,
    // read together), the endpoint's four, `seq` again. The flag is a word
    // of its own, outside the lock.
    let (head, ep, again, flag) = unsafe {
        let head = core::ptr::read_volatile(words);
        let ep = [0, 1, 2, 3].map(|i| core::ptr::read_volatile(words.add(EP_WORD + i)));
        let again = core::ptr::read_volatile(core::ptr::addr_of!((*p).seq));
        (head, ep, again, core::ptr::read_volatile(core::ptr::addr_of!((*p).nat_client)))
    };
    let nat_client = flag != 0;
    let [a0, a1, a2, a3, s0, s1, s2, s3] = head.to_ne_bytes();
    let (addr, seq) = (u32::from_ne_bytes([a0, a1, a2, a3]), u32::from_ne_bytes([s0, s1, s2, s3]));
    if seq & 1 == 0 && seq == again {
        if addr == addr_be {
            // SAFETY: `Endpoint` is 32 bytes of plain integers: any four
            // words are one.
            let ep = unsafe { core::mem::transmute::<[u64; 4], Endpoint>(ep) };
            return answer(ep, true, false, nat_client);
        }
        if addr == 0 {
            return answer(Endpoint::default(), false, false, nat_client);
        }
    }
    answer(Endpoint::default(), false, true, nat_client)
}

/// What is known of `addr_be` as a local address: its slot, and
/// `ENDPOINTS` when the slot cannot tell.
#[inline(always)]
pub fn local(addr_be: u32) -> Local {
    slot(addr_be).resolved(addr_be)
}

/// The local endpoint (container) at `addr_be` (see `local`).
#[inline(always)]
pub fn local_endpoint(addr_be: u32) -> Option<Endpoint> {
    local(addr_be).endpoint()
}

/// Whether conntrack may hold a reply entry addressed to `addr_be` (see
/// `Local::nat_client`).
#[inline(always)]
pub fn may_be_nat_client(addr_be: u32) -> bool {
    match LOCAL_SLOTS.get_ptr(addr_slot(addr_be)) {
        // SAFETY: the pointer comes from a successful array lookup: valid and
        // aligned; the agent may change other words of the slot meanwhile.
        Some(p) => (unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).nat_client)) }) != 0,
        None => false,
    }
}

/// Marks `addr_be` as the client of a NAT'd flow, before its conntrack
/// entries are written (so a reply never finds its address unmarked).
#[inline(always)]
pub fn mark_nat_client(addr_be: u32) {
    if let Some(p) = LOCAL_SLOTS.get_ptr_mut(addr_slot(addr_be)) {
        // SAFETY: the pointer comes from a successful array lookup; a plain
        // aligned store of the flag's own word (written only when not set
        // yet, so the cache line stays shared once marked).
        unsafe {
            let m = core::ptr::addr_of_mut!((*p).nat_client);
            if core::ptr::read_volatile(m) == 0 {
                core::ptr::write_volatile(m, 1);
            }
        }
    }
}

/// Whether `addr_be` falls in the configured service VIP range.
#[inline(always)]
pub fn is_vip_range(addr_be: u32) -> bool {
    match CONFIG.get(0) {
        Some(cfg) => cfg.vip_mask_be != 0 && addr_be & cfg.vip_mask_be == cfg.vip_net_be,
        None => false,
    }
}

/// The tunnel device for `addr_be` when it lies in another node's range.
#[inline(always)]
pub fn remote(addr_be: u32) -> Option<Remote> {
    REMOTES.get(Key::new(32, RemoteAddr { addr_be })).copied()
}

/// The networks of `addr_be` when it is a container of another node that
/// its node reported.
#[inline(always)]
pub fn remote_endpoint_mask(addr_be: u32) -> Option<u64> {
    // SAFETY: the pointer comes from a successful lookup and is only read.
    REMOTE_ENDPOINTS.get_ptr(&EndpointKey { addr_be }).map(|p| unsafe { (*p).net_mask })
}

/// Counts what an entry point did with a packet of `len` bytes and returns
/// its TC action: a verdict (none for service traffic, already counted per
/// backend), or a drop with its reason.
#[inline(always)]
pub fn finish(len: u32, outcome: Result<(i32, Option<u32>), u32>) -> i32 {
    match outcome {
        Ok((action, Some(v))) => {
            count_verdict(v, len);
            action
        }
        Ok((action, None)) => action,
        Err(reason) => {
            count(&DROPS, reason, len);
            count_verdict(verdict::DROP, len);
            aya_ebpf::bindings::TC_ACT_SHOT as i32
        }
    }
}

/// Adds one packet of `len` bytes to this CPU's count of verdict `v`.
#[inline(always)]
fn count_verdict(v: u32, len: u32) {
    // SAFETY: a plain helper call with no arguments (inlined by the kernel).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if let Some(c) = CPU_VERDICTS.get_ptr_mut(cpu * VERDICT_STRIDE + v) {
        // SAFETY: the pointer comes from a successful array lookup: valid,
        // aligned, and written only by this CPU (programs do not migrate
        // while they run, and TC programs do not nest on one CPU).
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

/// Adds one packet of `len` bytes to entry `index` of a per-CPU counter map.
#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, len: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU
        // array, so it is valid, aligned, and only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}
