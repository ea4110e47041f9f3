//! The service-VIP and container datapath: map names, keys, values, verdicts
//! and drop reasons.

/// Version of the map layout. Maps are pinned under `maps-v<ABI_VERSION>/`,
/// so a datapath whose keys or values changed never reads old pins as new.
pub const ABI_VERSION: u32 = 5;

/// Names of the maps in the eBPF object, as pinned under a node's pin
/// directory. The agent and `fizz net inspect` open them by these names.
pub mod map_names {
    /// `SvcKey` → `SvcValue`: one entry per exposed VIP:port/proto.
    pub const SERVICES: &str = "FZ_SERVICES";
    /// `BackendKey` → `Backend`: the backend slots of each service.
    pub const BACKENDS: &str = "FZ_BACKENDS";
    /// `VipKey` → `VipValue`: every VIP address that is in use, whatever the port.
    pub const VIPS: &str = "FZ_VIPS";
    /// `CtKey` → `CtValue`: NAT'd flows, one entry per direction (LRU).
    pub const CONNTRACK: &str = "FZ_CONNTRACK";
    /// `EndpointKey` → `Endpoint`: containers attached on this node.
    pub const ENDPOINTS: &str = "FZ_ENDPOINTS";
    /// Per-CPU array indexed by backend id: `Counter`. Backend ids are per
    /// service, so a service's traffic is the sum over its backends.
    pub const BACKEND_STATS: &str = "FZ_BE_STATS";
    /// Per-CPU array indexed by `DropReason`: `Counter`.
    pub const DROPS: &str = "FZ_DROPS";
    /// Array of `Counter`: the verdicts on packets that are not service
    /// traffic (that is counted per backend), `VERDICT_STRIDE` entries per
    /// CPU, at `cpu * VERDICT_STRIDE + verdict`. Sized by the loader to the
    /// machine's possible CPUs.
    ///
    /// Not a per-CPU array, although every packet writes it: the kernel
    /// takes a per-CPU map's memory from its per-CPU chunks, mapped in 4 KiB
    /// pages, where a counter costs a TLB miss on a cold path; a small plain
    /// array comes from its direct mapping (huge pages). Each CPU writes
    /// only its own entries, on cache lines of their own (the stride).
    pub const CPU_VERDICTS: &str = "FZ_CPU_VERDICTS";
    /// The per-CPU array of verdicts of datapaths before `CPU_VERDICTS`;
    /// the agent removes its pin.
    pub const VERDICTS: &str = "FZ_VERDICTS";
    /// Per-CPU array indexed by service id: `u32`, the next slot to hand a
    /// new flow (round robin).
    pub const RR: &str = "FZ_RR";
    /// Array with one `Config` at index 0.
    pub const CONFIG: &str = "FZ_CONFIG";
    /// LPM trie `RemoteAddr` (with a prefix length) → `Remote`: the
    /// container ranges of other nodes and the tunnel device that reaches them.
    pub const REMOTES: &str = "FZ_REMOTES";
    /// Hash `EndpointKey` → `RemoteEndpoint`: the networks of the
    /// containers of other nodes, from their nodes' reports, so that a new
    /// flow arriving through the tunnel is checked against the networks of
    /// the local container it is for.
    pub const REMOTE_ENDPOINTS: &str = "FZ_REMOTE_ENDPOINTS";
    /// `u64` network-namespace cookie → `SockClient`: the containers whose
    /// TCP connects to a VIP are balanced at connect time.
    pub const SOCK_CLIENTS: &str = "FZ_SOCK_CLIENTS";
    /// The VIPs that sockets connected to, in an LRU hash by socket cookie,
    /// in datapaths before `SOCK_STATE`: unpinned when a datapath opens.
    pub const SOCK_PEERS: &str = "FZ_SOCK_PEERS";
    /// Socket local storage (kept on each socket, freed with it): a
    /// `SockState`, only on sockets the socket programs balanced.
    pub const SOCK_STATE: &str = "FZ_SOCK_STATE";
    /// Per-CPU array indexed by backend id: `Counter` of connections
    /// balanced at connect time (`packets` counts connections, `bytes` is 0;
    /// their packets are not NAT'd, so they are not in `BACKEND_STATS`).
    pub const SOCK_CONNECTS: &str = "FZ_SOCK_CONNECTS";
    /// `SockDgramKey` (a socket, a VIP and port) → `SockPick` (LRU): the
    /// backend that an unconnected UDP socket's datagrams to that VIP go
    /// to, picked at its first `sendmsg` and kept while the backend stays.
    pub const SOCK_PICKS: &str = "FZ_SOCK_PICKS";
    /// `SockDgramKey` (a socket, a backend address and port) → `SockPeer`
    /// (LRU): the VIP that `recvmsg` reports as the source of datagrams from
    /// that backend, on that socket.
    pub const SOCK_REPLIES: &str = "FZ_SOCK_REPLIES";
    /// Array indexed by backend id: `BackendRef`, the service and address
    /// that hold the id now (all zero while it is free). A socket's pick is
    /// checked against it, so that the pick stays while its backend stays in
    /// the service, wherever the backend's slot moves.
    pub const BACKEND_REFS: &str = "FZ_BACKEND_REFS";
    /// The NAT-client flags of datapaths before `LOCAL_SLOTS` held them (an
    /// array of `ADDR_SLOTS` `u32`): unpinned when a datapath opens.
    pub const NAT_CLIENTS: &str = "FZ_NAT_CLIENTS";
    /// Array of `ADDR_SLOTS` `LocalSlot` (memory-mappable, one cache line
    /// each), indexed by `addr_slot` of an address. It holds:
    /// - the local endpoint in `ENDPOINTS` whose address has that slot (its
    ///   first, when several share one), so that delivery reads an array
    ///   instead of hashing. An address whose slot holds another address is
    ///   looked up in `ENDPOINTS`; an empty slot means no local endpoint has it;
    /// - the slot's NAT-client flag: non-zero when conntrack may hold a reply
    ///   entry addressed to an address of the slot (a client of a flow NAT'd
    ///   here). Packets to an address whose flag is zero, outside the VIP
    ///   range, skip the conntrack lookup.
    pub const LOCAL_SLOTS: &str = "FZ_LOCAL_SLOTS";
    /// Array of `FlowCacheSlot` (memory-mappable, one cache line each):
    /// `FLOW_CACHE_SLOTS` for each possible CPU, at
    /// `cpu * FLOW_CACHE_SLOTS + flow_slot(key)`; sized by the loader. Each CPU's copy of what
    /// conntrack says about the flows whose packets it rewrote lately, so
    /// that an established flow's packet reads one line of its own instead
    /// of hashing into conntrack. Only the CPU that owns a region writes it.
    pub const FLOW_CACHE: &str = "FZ_FLOW_CACHE";
    /// Array of `FLOW_CACHE_SLOTS` `u64` (memory-mappable): the epoch of
    /// each flow-cache slot, shared by all CPUs. Whoever changes a flow in
    /// conntrack (the programs starting or forgetting one, the agent
    /// purging or expiring one) adds 1 to the epoch of its key's slot
    /// afterwards, atomically; a cached copy filed under an older epoch is
    /// not used.
    pub const FLOW_EPOCHS: &str = "FZ_FLOW_EPOCHS";
}

/// Name of the TC program attached at ingress of the host end of each
/// container veth ("from the container's point of view": traffic leaving it).
pub const PROG_FROM_CONTAINER: &str = "from_container";

/// Name of the TC program attached at ingress of the node's WireGuard device
/// (a layer-3 TUN device: packets start at the IPv4 header). It sees every
/// packet that arrives from another node through the tunnel.
pub const PROG_FROM_WIREGUARD: &str = "from_wireguard";

/// Name of a classifier that does nothing (it passes each packet to the
/// next program): the benchmarks' measure of what running any program costs.
/// The agent never loads it.
pub const PROG_FLOOR: &str = "fz_floor";

/// Name of the `cgroup/connect4` program: a TCP connect to a VIP from a
/// container of this node is pointed at a backend before the SYN is sent,
/// so the flow's packets need no NAT.
pub const PROG_SOCK_CONNECT4: &str = "fz_connect4";

/// Name of the `cgroup/getpeername4` program: a socket balanced at connect
/// time reports the VIP as its peer.
pub const PROG_SOCK_GETPEERNAME4: &str = "fz_getpeername4";

/// Name of the `cgroup/sendmsg4` program: a datagram that an unconnected
/// UDP socket of a container of this node sends to a VIP goes to the backend
/// the socket was given for it, so its packets need no NAT.
pub const PROG_SOCK_SENDMSG4: &str = "fz_sendmsg4";

/// Name of the `cgroup/recvmsg4` program: a datagram from a backend that
/// `fz_sendmsg4` gave a socket is reported as coming from the VIP.
pub const PROG_SOCK_RECVMSG4: &str = "fz_recvmsg4";

/// Capacities of the maps. The agent checks its inputs against these before
/// writing, so a full map is an error at the API, not a silent drop.
pub const MAX_SERVICES: u32 = 65_536;
/// Backend slots in all, over all services.
pub const MAX_BACKENDS: u32 = 262_144;
/// Backends one service may have; slots are `0..count`.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 1_024;
/// Entries of `CPU_VERDICTS` per CPU: 256 bytes, of which the verdicts
/// take the first 128, so that two CPUs' verdicts never share a cache line
/// wherever the array's values start.
pub const VERDICT_STRIDE: u32 = 16;
/// The largest number of CPUs `CPU_VERDICTS` is declared for; the loader
/// sizes it to the possible CPUs.
pub const MAX_CPUS: u32 = 4_096;
const _: () = assert!(verdict::MAX <= VERDICT_STRIDE / 2);

/// Distinct backend ids (index of `BACKEND_STATS`).
pub const MAX_BACKEND_IDS: u32 = 65_536;
/// VIP addresses in use.
pub const MAX_VIPS: u32 = 65_536;
/// Conntrack entries (each NAT'd flow takes two).
pub const MAX_CONNTRACK: u32 = 262_144;
/// Local endpoints (containers) per node.
pub const MAX_ENDPOINTS: u32 = 4_096;
/// Pairs of an unconnected UDP socket and a VIP it sends to (`SOCK_PICKS`,
/// and as many in `SOCK_REPLIES`); the least recently used go first.
pub const MAX_SOCK_PICKS: u32 = 65_536;
/// Containers of other nodes whose networks are known here.
pub const MAX_REMOTE_ENDPOINTS: u32 = 65_536;
/// Remote container ranges (one per other node).
pub const MAX_REMOTES: u32 = 1_024;
/// Slots of `LOCAL_SLOTS` (a power of two).
pub const ADDR_SLOTS: u32 = 4_096;
const _: () = assert!(ADDR_SLOTS.is_power_of_two());

/// The `LOCAL_SLOTS` slot of an address: its low bits. Addresses that share
/// a slot share its NAT-client flag and its endpoint entry, which costs a
/// lookup, never a wrong answer; a node range of up to `ADDR_SLOTS`
/// addresses gives each its own.
#[inline(always)]
pub const fn addr_slot(addr_be: u32) -> u32 {
    u32::from_be(addr_be) & (ADDR_SLOTS - 1)
}

/// IP protocol numbers the datapath understands.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

/// Key of `FZ_SERVICES`: a VIP, a port and a protocol. Port 0 is the
/// service's "any port" entry, used when no exact port matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SvcKey {
    pub vip_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
assert_size!(SvcKey, 8);

/// Value of `FZ_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvcValue {
    /// The first half of `BackendKey`.
    pub id: u32,
    /// Number of backend slots in use, `0..=MAX_BACKENDS_PER_SERVICE`.
    /// Zero means the service exists but has no healthy backend: rejected.
    pub count: u32,
    /// The networks the service is on (one bit each); a local client on
    /// none of them may not open flows to it. Zero: no restriction.
    pub net_mask: u64,
}
assert_size!(SvcValue, 16);

/// Key of `FZ_BACKENDS`: a service id and a slot in `0..count`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendKey {
    pub svc_id: u32,
    pub slot: u32,
}
assert_size!(BackendKey, 8);

/// Value of `FZ_BACKENDS`: where a flow is sent. Port 0 keeps the port the
/// client asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
    /// Index into `FZ_BACKEND_STATS`.
    pub id: u32,
}
assert_size!(Backend, 12);

/// Value of `FZ_BACKEND_REFS`, indexed by backend id: the backend that
/// holds the id and its service; all zero while the id is free (no backend
/// has address 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendRef {
    pub svc_id: u32,
    /// `Backend::addr_be` and `Backend::port_be`.
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
assert_size!(BackendRef, 12);

/// Key of `FZ_VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub vip_be: u32,
}
assert_size!(VipKey, 4);

/// Value of `FZ_VIPS`: how many service ports use this VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipValue {
    pub ports: u32,
}
assert_size!(VipValue, 4);

/// Key of `FZ_CONNTRACK`: a flow as the hook sees it. A NAT'd flow has two
/// entries: the client's direction (`dst` = the VIP) and the backend's reply
/// direction (`src` = the backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
assert_size!(CtKey, 16);

impl CtKey {
    /// A key from its fields, the padding zero. It is assembled as four
    /// words, so that the datapath writes it with four stores: a 3-byte
    /// zero padding on its own compiles to a call to `memset`.
    #[inline(always)]
    pub fn new(src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16, proto: u8) -> CtKey {
        let [s0, s1] = sport_be.to_ne_bytes();
        let [d0, d1] = dport_be.to_ne_bytes();
        let words = [src_be, dst_be, u32::from_ne_bytes([s0, s1, d0, d1]), u32::from_ne_bytes([proto, 0, 0, 0])];
        // SAFETY: `CtKey` is `repr(C)`, 16 bytes of integers with no implicit
        // padding, so every bit pattern of four words is a valid key, and
        // the words lie in its field order.
        unsafe { core::mem::transmute::<[u32; 4], CtKey>(words) }
    }

    /// The key of the other direction of a NAT'd flow, from one of its
    /// entries. The one definition of how the two entries pair up, for the
    /// datapath that writes them and the agent that expires them.
    #[inline(always)]
    pub fn peer(&self, value: &CtValue) -> CtKey {
        let hairpin = value.kind & CT_HAIRPIN != 0;
        if value.kind & !CT_HAIRPIN == CT_FORWARD {
            // client → VIP; the reply comes from the backend to the client
            // (to the VIP for a hairpin flow, whose client sees the VIP as
            // its peer).
            CtKey::new(
                value.nat_addr_be,
                if hairpin { self.dst_be } else { self.src_be },
                value.nat_port_be,
                self.sport_be,
                self.proto,
            )
        } else {
            // backend → client; the forward entry is client → VIP.
            CtKey::new(
                if hairpin { self.src_be } else { self.dst_be },
                value.nat_addr_be,
                self.dport_be,
                value.nat_port_be,
                self.proto,
            )
        }
    }

    /// The same tuple seen from the other end (source and destination swapped).
    #[inline(always)]
    pub fn reversed(&self) -> CtKey {
        CtKey::new(self.dst_be, self.src_be, self.dport_be, self.sport_be, self.proto)
    }
}

/// `CtValue::kind`: the client's direction; rewrite the destination.
pub const CT_FORWARD: u8 = 1;
/// `CtValue::kind`: the reply direction; rewrite the source.
pub const CT_REPLY: u8 = 2;
/// Or'ed into `CtValue::kind` for a hairpin flow (a client that the VIP
/// sent to itself): the forward direction also rewrites the source to the
/// VIP, and the reply direction the destination back to the client.
pub const CT_HAIRPIN: u8 = 0x80;

/// `CtValue::flags`: a FIN was seen in this direction.
pub const CT_FLAG_FIN: u8 = 1;
/// `CtValue::flags`: a RST was seen.
pub const CT_FLAG_RST: u8 = 2;
/// `CtValue::flags`: a packet was seen in the reply direction.
pub const CT_FLAG_REPLIED: u8 = 4;

/// Value of `FZ_CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// The address written into the packet (forward: the backend's, as
    /// destination; reply: the VIP, as source).
    pub nat_addr_be: u32,
    pub nat_port_be: u16,
    /// `CT_FORWARD` or `CT_REPLY`, with `CT_HAIRPIN` or'ed in for hairpin flows.
    pub kind: u8,
    /// `CT_FLAG_*`, or'ed in by the datapath.
    pub flags: u8,
    pub svc_id: u32,
    pub backend_id: u32,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC) when the entry was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
}
assert_size!(CtValue, 32);

/// Key of `FZ_ENDPOINTS`: a container address on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr_be: u32,
}
assert_size!(EndpointKey, 4);

/// Value of `FZ_ENDPOINTS`: how to hand a packet to a local container.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    /// Index of the host end of the container's veth.
    pub ifindex: u32,
    /// MAC of the container's `eth0` (destination of delivered frames).
    pub mac: [u8; 6],
    /// MAC of the host end (source of delivered frames).
    pub node_mac: [u8; 6],
    /// The networks the container is on (one bit each). Two local
    /// containers talk only if they share one. Zero: no restriction.
    pub net_mask: u64,
    /// Cookie of the container's network namespace (`SO_NETNS_COOKIE`);
    /// non-zero: its TCP connects to VIPs are balanced at connect time
    /// (an entry in `SOCK_CLIENTS`).
    pub netns_cookie: u64,
}
assert_size!(Endpoint, 32);

/// Value of `FZ_LOCAL_SLOTS`: a local endpoint, by the slot of its address,
/// and the slot's NAT-client flag: 64 bytes, one cache line each in the
/// page-aligned memory of a mappable array.
///
/// The agent changes the endpoint in place (the map is memory-mapped) under a
/// sequence lock: `seq` made odd, then the new address and endpoint, then
/// `seq` made even. A reader copies the slot between two reads of `seq` and
/// trusts the copy only when both are the same even number; otherwise it
/// looks the address up in `ENDPOINTS`. So a packet never reads one
/// container's address with another's endpoint. `nat_client` is a word of
/// its own, which an endpoint change never writes: the program sets it (a
/// flow starts) while the agent changes the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LocalSlot {
    /// The endpoint's address; 0: the slot is empty.
    pub addr_be: u32,
    /// Odd while the agent changes the slot.
    pub seq: u32,
    /// Non-zero: an address of this slot may be the client of a NAT'd flow.
    pub nat_client: u32,
    pub _pad: u32,
    /// What `ENDPOINTS` holds for that address.
    pub ep: Endpoint,
    pub _tail: [u8; 16],
}
assert_size!(LocalSlot, 64);

/// Slots of each CPU's region of `FLOW_CACHE`, and of `FLOW_EPOCHS`.
pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_BITS;
const FLOW_CACHE_BITS: u32 = 11;

/// How long a copy in the flow cache is trusted, in jiffies: 64 ms at
/// HZ=1000, 256 ms at 250. A flow's conntrack entry is then read (and its
/// age refreshed) again by the next packet.
pub const FLOW_CACHE_JIFFIES: u64 = 64;

/// Value of `FZ_FLOW_CACHE`: one CPU's copy of a conntrack entry, as far as
/// rewriting a packet needs it, and when the copy stops counting. A slot
/// holds one key at a time (direct-mapped); a zeroed slot is never valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCacheSlot {
    pub key: CtKey,
    /// As in `CtValue`.
    pub nat_addr_be: u32,
    pub nat_port_be: u16,
    pub kind: u8,
    pub _pad: u8,
    pub backend_id: u32,
    pub _pad2: u32,
    /// The slot's epoch in `FLOW_EPOCHS` when it was read, before the
    /// conntrack lookup the copy was made from.
    pub epoch: u64,
    /// `jiffies` from which the copy is no longer used.
    pub until_jiffies: u64,
    pub _tail: [u8; 16],
}
assert_size!(FlowCacheSlot, 64);

/// The flow-cache slot of a conntrack key: a hash of the whole tuple (two
/// multiply-xorshift rounds, so that keys differing only in a port spread
/// evenly; the two directions of a flow land apart).
#[inline(always)]
pub fn flow_slot(key: &CtKey) -> u32 {
    let addrs = (u64::from(key.src_be) << 32) | u64::from(key.dst_be);
    let rest = (u64::from(key.sport_be) << 24) | (u64::from(key.dport_be) << 8) | u64::from(key.proto);
    let mut h = (addrs ^ rest.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h >> (64 - FLOW_CACHE_BITS)) as u32
}

/// Value of `FZ_SOCK_CLIENTS`: a container whose sockets are balanced at
/// connect time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockClient {
    /// The container's address.
    pub addr_be: u32,
    pub _pad: u32,
    /// Its networks, checked against a service's as at TC.
    pub net_mask: u64,
}
assert_size!(SockClient, 16);

/// What the socket programs keep on a socket they balanced
/// (`FZ_SOCK_STATE`, socket local storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockState {
    /// The VIP and port a TCP connect asked for, which `getpeername`
    /// reports instead of the backend; 0 when the connect was not balanced.
    pub peer_vip_be: u32,
    pub peer_port_be: u16,
    /// Non-zero once the socket's datagrams to a VIP went to a backend:
    /// `FZ_SOCK_REPLIES` may then hold entries for it.
    pub dgram: u8,
    pub _pad: u8,
}
assert_size!(SockState, 8);

/// Value of `FZ_SOCK_REPLIES`: the VIP and port a socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockPeer {
    pub vip_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
assert_size!(SockPeer, 8);

/// Key of `FZ_SOCK_PICKS` and `FZ_SOCK_REPLIES`: a socket (its cookie) and
/// an address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockDgramKey {
    pub sock: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
assert_size!(SockDgramKey, 16);

impl SockDgramKey {
    #[inline(always)]
    pub fn new(sock: u64, addr_be: u32, port_be: u16) -> SockDgramKey {
        SockDgramKey { sock, addr_be, port_be, _pad: 0 }
    }
}

/// Value of `FZ_SOCK_PICKS`: the backend a socket's datagrams to a VIP go
/// to, with its service and backend id, so that each datagram can check
/// (in `BACKEND_REFS`) that the service still has it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockPick {
    pub svc_id: u32,
    /// The slot the backend was picked from (it may have moved since).
    pub slot: u32,
    /// `Backend::id` and `Backend::addr_be` as found in the slot.
    pub backend_id: u32,
    pub addr_be: u32,
    /// The port datagrams go to (the VIP's own when the backend's is 0).
    pub port_be: u16,
    pub _pad: u16,
}
assert_size!(SockPick, 20);

/// The data half of a `FZ_REMOTES` key. The map's key is the LPM trie key
/// `{ prefix_len: u32, data: RemoteAddr }` (8 bytes), `prefix_len` counting
/// the leading bits of `addr_be` that match.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RemoteAddr {
    pub addr_be: u32,
}
assert_size!(RemoteAddr, 4);

/// Value of `FZ_REMOTES`: where packets for another node's range go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Remote {
    /// Index of the node's WireGuard device (`bpf_redirect` to its egress).
    pub ifindex: u32,
}
assert_size!(Remote, 4);

/// Value of `FZ_REMOTE_ENDPOINTS`: a container of another node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RemoteEndpoint {
    /// Its networks (one bit each; 0: unrestricted), as `Endpoint::net_mask`.
    pub net_mask: u64,
}
assert_size!(RemoteEndpoint, 8);

/// Packet and byte counter, one per CPU in per-CPU arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
assert_size!(Counter, 16);

impl Counter {
    /// Adds another counter (used to sum per-CPU values).
    pub fn add(&mut self, other: &Counter) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Value at index 0 of `FZ_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// The service VIP range; a destination outside it skips service lookup.
    pub vip_net_be: u32,
    pub vip_mask_be: u32,
}
assert_size!(Config, 8);

/// Why a packet was dropped (or answered with a reject). Index of `FZ_DROPS`.
pub mod drop_reason {
    /// TCP or UDP to a VIP port with no backend: answered with RST / ICMP.
    pub const NO_BACKEND: u32 = 1;
    /// TCP or UDP to a VIP on a port no service exposes: answered likewise.
    pub const NO_SERVICE_PORT: u32 = 2;
    /// A fragment addressed to a VIP (NAT needs the ports of every packet).
    pub const VIP_FRAGMENT: u32 = 3;
    /// Reserved (was: the TTL would reach zero; local delivery keeps the TTL).
    pub const TTL_EXCEEDED: u32 = 4;
    /// The IPv4 or transport header is cut short.
    pub const TRUNCATED: u32 = 5;
    /// The IPv4 header is malformed (bad version or header length).
    pub const BAD_IP_HEADER: u32 = 6;
    /// A reject could not be built (IP options, or a helper failed).
    pub const REJECT_FAILED: u32 = 7;
    /// Rewriting the packet failed in a kernel helper.
    pub const REWRITE_FAILED: u32 = 8;
    /// The conntrack map refused a new entry.
    pub const CT_FULL: u32 = 9;
    /// A service lists a backend slot that is missing (agent mid-update).
    pub const BACKEND_MISSING: u32 = 10;
    /// Any other protocol addressed to a VIP (ICMP echo and the like).
    pub const VIP_PROTO: u32 = 11;
    /// Source and destination share no Compose network.
    pub const POLICY: u32 = 12;
    /// A redirect into the tunnel or into a container failed.
    pub const REDIRECT_FAILED: u32 = 13;
    /// One past the largest reason; the size of `FZ_DROPS`.
    pub const MAX: u32 = 14;

    /// A short, stable name for tables and JSON.
    pub fn name(reason: u32) -> &'static str {
        match reason {
            NO_BACKEND => "no-backend",
            NO_SERVICE_PORT => "no-service-port",
            VIP_FRAGMENT => "vip-fragment",
            TTL_EXCEEDED => "ttl-exceeded",
            TRUNCATED => "truncated",
            BAD_IP_HEADER => "bad-ip-header",
            REJECT_FAILED => "reject-failed",
            REWRITE_FAILED => "rewrite-failed",
            CT_FULL => "conntrack-full",
            BACKEND_MISSING => "backend-missing",
            VIP_PROTO => "vip-protocol",
            POLICY => "policy-denied",
            REDIRECT_FAILED => "redirect-failed",
            _ => "unknown",
        }
    }
}

/// What the program did with a packet. Index of a CPU's entries in
/// `FZ_CPU_VERDICTS`.
pub mod verdict {
    /// Handed to the kernel stack unchanged (not for us).
    pub const PASS: u32 = 0;
    /// Redirected to a local container.
    pub const REDIRECT_LOCAL: u32 = 1;
    /// NAT'd, then handed to the kernel stack (destination not local).
    pub const NAT_PASS: u32 = 2;
    /// Answered with a TCP reset or ICMP unreachable.
    pub const REJECT: u32 = 3;
    /// Dropped; see `FZ_DROPS` for the reason.
    pub const DROP: u32 = 4;
    /// Redirected into the WireGuard device, towards another node.
    pub const REDIRECT_TUNNEL: u32 = 5;
    /// Arrived through the tunnel and handed to a local container.
    pub const FROM_TUNNEL_LOCAL: u32 = 6;
    /// Arrived through the tunnel for no local container: to the stack.
    pub const FROM_TUNNEL_PASS: u32 = 7;
    /// One past the largest verdict.
    pub const MAX: u32 = 8;

    /// A short, stable name for tables and JSON.
    pub fn name(v: u32) -> &'static str {
        match v {
            PASS => "pass",
            REDIRECT_LOCAL => "redirect-local",
            NAT_PASS => "nat-pass",
            REJECT => "reject",
            DROP => "drop",
            REDIRECT_TUNNEL => "redirect-tunnel",
            FROM_TUNNEL_LOCAL => "from-tunnel-local",
            FROM_TUNNEL_PASS => "from-tunnel-pass",
            _ => "unknown",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and
    // byte arrays with explicit padding fields, so every bit pattern is valid
    // and there are no uninitialised padding bytes.
    unsafe impl aya::Pod for SvcKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SvcValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowCacheSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RemoteAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Remote {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RemoteEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockClient {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockPeer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockDgramKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockPick {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendRef {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conntrack_key_built_from_words_has_its_fields_and_zero_padding() {
        let k = CtKey::new(0x0a00_0001, 0x0a60_0002, 0x1234, 0xabcd, IPPROTO_UDP);
        let by_field = CtKey {
            src_be: 0x0a00_0001,
            dst_be: 0x0a60_0002,
            sport_be: 0x1234,
            dport_be: 0xabcd,
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        assert_eq!(k, by_field);
        let r = k.reversed();
        assert_eq!((r.src_be, r.dst_be, r.sport_be, r.dport_be, r.proto, r._pad), (k.dst_be, k.src_be, 0xabcd, 0x1234, IPPROTO_UDP, [0; 3]));
    }

    /// One client's connections to one VIP differ only in the source port:
    /// they must spread over the cache, and a flow's two directions should
    /// share a slot no more often than chance has it (1 in 2,048).
    #[test]
    fn flow_slots_spread_one_clients_ports_and_part_a_flows_directions() {
        let (client, vip, backend) = (0x0a2a_0002u32.to_be(), 0x0a2b_000au32.to_be(), 0x0a2a_0005u32.to_be());
        let mut used = [0u8; FLOW_CACHE_SLOTS as usize];
        let mut shared = 0;
        for port in 40_000u16..41_024 {
            let fwd = CtKey::new(client, vip, port.to_be(), 80u16.to_be(), IPPROTO_TCP);
            let rev = CtKey::new(backend, client, 8080u16.to_be(), port.to_be(), IPPROTO_TCP);
            let (f, r) = (flow_slot(&fwd), flow_slot(&rev));
            assert!(f < FLOW_CACHE_SLOTS && r < FLOW_CACHE_SLOTS);
            shared += usize::from(f == r);
            used[f as usize] = used[f as usize].saturating_add(1);
        }
        // 1,024 keys over 2,048 slots: about 800 distinct slots if the hash
        // is uniform; a weak one (ports in the low bits only) gives far fewer.
        assert!(shared <= 4, "{shared} of 1,024 flows have both directions in one slot");
        let distinct = used.iter().filter(|&&n| n > 0).count();
        assert!(distinct > 700, "1,024 ports took {distinct} slots");
        assert!(used.iter().all(|&n| n <= 6), "a slot took {} ports", used.iter().max().unwrap());
    }

    #[test]
    fn a_node_range_of_4096_addresses_gives_each_its_own_addr_slot() {
        let addr = |a: u8, b: u8, c: u8, d: u8| u32::from_be_bytes([a, b, c, d]).to_be();
        assert_eq!(addr_slot(addr(10, 42, 0, 5)), 5);
        assert_eq!(addr_slot(addr(10, 42, 1, 5)), 0x105);
        // A /20 maps one to one; addresses 4,096 apart share a slot.
        let mut seen = [false; ADDR_SLOTS as usize];
        for i in 0..ADDR_SLOTS {
            let slot = addr_slot((u32::from_be_bytes([10, 42, 16, 0]) + i).to_be()) as usize;
            assert!(!seen[slot], "slot {slot} taken twice");
            seen[slot] = true;
        }
        assert_eq!(addr_slot(addr(10, 42, 16, 5)), addr_slot(addr(10, 42, 0, 5)));
    }

    #[test]
    fn drop_reasons_have_names() {
        for r in 1..drop_reason::MAX {
            assert_ne!(drop_reason::name(r), "unknown", "reason {r}");
        }
        assert_eq!(drop_reason::name(drop_reason::MAX), "unknown");
    }

    #[test]
    fn verdicts_have_names() {
        for v in 0..verdict::MAX {
            assert_ne!(verdict::name(v), "unknown", "verdict {v}");
        }
    }

    #[test]
    fn counters_add() {
        let mut a = Counter { packets: 1, bytes: 10 };
        a.add(&Counter { packets: 2, bytes: 5 });
        assert_eq!(a, Counter { packets: 3, bytes: 15 });
    }
}
