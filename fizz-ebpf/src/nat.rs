//! Service load-balancing: conntrack lookup, backend selection and the
//! header rewrites of DNAT and reverse NAT.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_ktime_get_coarse_ns,
    programs::TcContext,
};
use fizz_common::{
    drop_reason, BackendKey, CtKey, CtValue, SvcKey, SvcValue, VipKey, CT_FLAG_FIN, CT_FLAG_REPLIED,
    CT_FLAG_RST, CT_FORWARD, CT_HAIRPIN, CT_REPLY, IPPROTO_TCP,
};

use crate::{
    checksum,
    flow_cache::{self, Nat, Slot},
    maps::{count, local_endpoint, mark_nat_client, may_be_nat_client, BACKENDS, BACKEND_STATS, CONNTRACK, RR, SERVICES, VIPS},
    packet::{self, Ipv4, IPV4_MIN_LEN, IP_CSUM, IP_DST, IP_SRC, IP_TTL, L4_DPORT, L4_SPORT, TCP_CSUM, UDP_CSUM},
};

/// How often a conntrack entry's `last_seen_ns` is refreshed at most.
const REFRESH_NS: u64 = 1_000_000_000;

/// The transport 5-tuple of a packet, plus TCP flags.
pub struct Flow {
    pub key: CtKey,
    pub tcp_flags: u8,
}

impl Flow {
    #[inline(always)]
    pub fn parse(ctx: &TcContext, ip: &Ipv4) -> Result<Flow, u32> {
        let ports: [u16; 2] = packet::load(ctx, ip.l4_off)?;
        let tcp_flags = if ip.proto == IPPROTO_TCP {
            // Data offset and flags as one read (see `packet::load`).
            let [_, flags] = packet::load::<[u8; 2]>(ctx, ip.l4_off + 12)?;
            flags
        } else {
            0
        };
        Ok(Flow {
            key: CtKey::new(ip.src_be, ip.dst_be, ports[0], ports[1], ip.proto),
            tcp_flags,
        })
    }
}

pub enum Outcome {
    /// The packet was rewritten; `dst_be` is where it now goes.
    Translated { dst_be: u32 },
    /// Not a service flow: leave the packet alone.
    NotService,
    /// A VIP with nowhere to go: answer with a reset or ICMP unreachable.
    Reject(u32),
}

/// Translates a packet of a NAT'd flow, or starts one when `to_vip` (the
/// destination is in the VIP range). Conntrack is looked up only where an
/// entry can be: towards a VIP, or towards the client of a flow NAT'd here
/// (`dst_marked`: the flag in the destination's slot, which the caller has
/// read with its endpoint); any other packet is left alone. A packet that
/// changes no TCP state is rewritten from this CPU's flow cache when it
/// holds the flow (see `flow_cache`); conntrack is read otherwise, and the
/// cache filled from it.
///
/// Only these checks are inlined into the entry points: the work behind them
/// (`forget_stale`, `follow`, `start_flow`) is out of line, in BPF
/// subprograms laid out after the hot path, so that the instructions every
/// packet runs stay few and contiguous in the instruction cache.
#[inline(always)]
pub fn translate(ctx: &TcContext, ip: &Ipv4, flow: &Flow, to_vip: bool, dst_marked: bool) -> Result<Outcome, u32> {
    let syn = flow.key.proto == IPPROTO_TCP && flow.tcp_flags & (packet::TCP_SYN | packet::TCP_ACK) == packet::TCP_SYN;
    let marked_src = syn && may_be_nat_client(flow.key.src_be);
    if syn && (to_vip || marked_src) {
        forget_stale(&flow.key, to_vip, marked_src);
    }
    if !to_vip && !dst_marked {
        return Ok(Outcome::NotService);
    }
    // Packets that change the flow's state go to conntrack, and leave the
    // cache alone.
    let stateful = flow.tcp_flags & (packet::TCP_SYN | packet::TCP_FIN | packet::TCP_RST) != 0;
    let slot = if stateful { Slot::none() } else { Slot::of(&flow.key) };
    if let Some(nat) = slot.get(&flow.key) {
        return unpack(follow_out_of_line(ctx, ip, flow, &nat));
    }
    if let Some(ct) = CONNTRACK.get_ptr_mut(&flow.key) {
        // SAFETY: the pointer comes from a successful lookup; the value is
        // plain data and a racing update can at worst lose a flag bit.
        let ct = unsafe { &mut *ct };
        touch(ct, flow.tcp_flags);
        let nat = Nat::of(ct);
        slot.fill(&flow.key, &nat);
        return unpack(follow_out_of_line(ctx, ip, flow, &nat));
    }
    if !to_vip {
        return Ok(Outcome::NotService);
    }
    unpack(start_flow_out_of_line(ctx, ip, flow))
}

/// An outcome packed in one fully defined register, as out-of-line
/// functions return it (the verifier refuses a return value built on bits a
/// register held before, which an enum's unused payload would leave): the
/// variant in bits 32–33, the address or reason below.
#[inline(always)]
fn pack(r: Result<Outcome, u32>) -> u64 {
    match r {
        Ok(Outcome::Translated { dst_be }) => u64::from(dst_be),
        Ok(Outcome::NotService) => 1 << 32,
        Ok(Outcome::Reject(reason)) => (2 << 32) | u64::from(reason),
        Err(reason) => (3 << 32) | u64::from(reason),
    }
}

#[inline(always)]
fn unpack(v: u64) -> Result<Outcome, u32> {
    let low = v as u32;
    match v >> 32 {
        0 => Ok(Outcome::Translated { dst_be: low }),
        1 => Ok(Outcome::NotService),
        2 => Ok(Outcome::Reject(low)),
        _ => Err(low),
    }
}

#[inline(never)]
fn follow_out_of_line(ctx: &TcContext, ip: &Ipv4, flow: &Flow, nat: &Nat) -> u64 {
    pack(follow(ctx, ip, flow, nat))
}

#[inline(never)]
fn start_flow_out_of_line(ctx: &TcContext, ip: &Ipv4, flow: &Flow) -> u64 {
    pack(start_flow(ctx, ip, flow))
}

/// Rewrites a packet of a flow in conntrack (`nat`, from its entry or a
/// cached copy) and counts it for the flow's backend.
#[inline(always)]
fn follow(ctx: &TcContext, ip: &Ipv4, flow: &Flow, nat: &Nat) -> Result<Outcome, u32> {
    count(&BACKEND_STATS, nat.backend_id, ctx.len());
    let hairpin = nat.kind & CT_HAIRPIN != 0;
    let kind = nat.kind & !CT_HAIRPIN;
    if kind == CT_FORWARD {
        rewrite(ctx, ip, true, flow.key.dst_be, flow.key.dport_be, nat.addr_be, nat.port_be)?;
        if hairpin {
            // The client is its own backend: it must see the VIP as the peer.
            rewrite_addr(ctx, ip, false, flow.key.src_be, flow.key.dst_be)?;
        }
        Ok(Outcome::Translated { dst_be: nat.addr_be })
    } else if kind == CT_REPLY {
        rewrite(ctx, ip, false, flow.key.src_be, flow.key.sport_be, nat.addr_be, nat.port_be)?;
        if hairpin {
            rewrite_addr(ctx, ip, true, flow.key.dst_be, flow.key.src_be)?;
            return Ok(Outcome::Translated { dst_be: flow.key.src_be });
        }
        Ok(Outcome::Translated { dst_be: flow.key.dst_be })
    } else {
        Ok(Outcome::NotService)
    }
}

/// A packet to a VIP that no flow in conntrack covers: picks a backend,
/// writes both conntrack entries and rewrites the packet, or says why not.
#[inline(always)]
fn start_flow(ctx: &TcContext, ip: &Ipv4, flow: &Flow) -> Result<Outcome, u32> {
    let len = ctx.len();
    let Some(svc) = service(flow.key.dst_be, flow.key.dport_be, flow.key.proto) else {
        if VIPS.get_ptr(VipKey { vip_be: flow.key.dst_be }).is_some() {
            return Ok(Outcome::Reject(drop_reason::NO_SERVICE_PORT));
        }
        return Ok(Outcome::NotService);
    };
    if ip.is_fragment {
        return Err(drop_reason::VIP_FRAGMENT);
    }
    if svc.count == 0 {
        return Ok(Outcome::Reject(drop_reason::NO_BACKEND));
    }
    if svc.net_mask != 0 {
        if let Some(client) = local_endpoint(flow.key.src_be) {
            if !networks_meet(svc.net_mask, client.net_mask) {
                return Err(drop_reason::POLICY);
            }
        }
    }
    let slot = next_slot(svc.id, svc.count);
    let Some(backend) = BACKENDS.get_ptr(BackendKey { svc_id: svc.id, slot }) else {
        return Err(drop_reason::BACKEND_MISSING);
    };
    // SAFETY: as above.
    let mut backend = unsafe { *backend };
    // Port 0: the backend listens on the port the client asked for.
    if backend.port_be == 0 {
        backend.port_be = flow.key.dport_be;
    }

    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let hairpin = backend.addr_be == flow.key.src_be;
    let hp = if hairpin { CT_HAIRPIN } else { 0 };
    let mut fwd = CtValue {
        nat_addr_be: backend.addr_be,
        nat_port_be: backend.port_be,
        kind: CT_FORWARD | hp,
        flags: 0,
        svc_id: svc.id,
        backend_id: backend.id,
        created_ns: now,
        last_seen_ns: now,
    };
    fwd.flags = tcp_ct_flags(flow.tcp_flags);
    // A hairpin client sees the VIP as its peer, so the reply is addressed
    // to the VIP.
    let rev_key = flow.key.peer(&fwd);
    let rev = CtValue {
        nat_addr_be: flow.key.dst_be,
        nat_port_be: flow.key.dport_be,
        kind: CT_REPLY | hp,
        flags: 0,
        ..fwd
    };
    // The client is marked, then the reply entry goes in: a reply can never
    // find a half-made flow, nor be let past unlooked-up.
    mark_nat_client(flow.key.src_be);
    CONNTRACK.insert(&rev_key, &rev, 0).map_err(|_| drop_reason::CT_FULL)?;
    flow_cache::forget(&rev_key);
    if CONNTRACK.insert(&flow.key, &fwd, 0).is_err() {
        let _ = CONNTRACK.remove(&rev_key);
        flow_cache::forget(&rev_key);
        return Err(drop_reason::CT_FULL);
    }
    flow_cache::forget(&flow.key);
    count(&BACKEND_STATS, backend.id, len);
    rewrite(ctx, ip, true, flow.key.dst_be, flow.key.dport_be, backend.addr_be, backend.port_be)?;
    if hairpin {
        rewrite_addr(ctx, ip, false, flow.key.src_be, flow.key.dst_be)?;
    }
    Ok(Outcome::Translated { dst_be: backend.addr_be })
}

/// The service at `vip:port/proto`: an exact port first, then the
/// service's "any port" entry (port 0).
#[inline(always)]
pub fn service(vip_be: u32, port_be: u16, proto: u8) -> Option<SvcValue> {
    let key = SvcKey { vip_be, port_be, proto, _pad: 0 };
    let svc = match SERVICES.get_ptr(&key) {
        Some(s) => s,
        None => SERVICES.get_ptr(&SvcKey { port_be: 0, ..key })?,
    };
    // SAFETY: the pointer comes from a successful map lookup and is only read.
    Some(unsafe { *svc })
}

/// Whether two parties on networks `a` and `b` (one bit each) may talk:
/// they share one, or either is unrestricted (zero).
#[inline(always)]
pub fn networks_meet(a: u64, b: u64) -> bool {
    a == 0 || b == 0 || a & b != 0
}

/// Rewrites only the destination (`dst == true`) or source address.
#[inline(always)]
fn rewrite_addr(ctx: &TcContext, ip: &Ipv4, dst: bool, old_be: u32, new_be: u32) -> Result<(), u32> {
    rewrite(ctx, ip, dst, old_be, 0, new_be, 0)
}

/// A new TCP connection (a SYN) reuses the ports of an older flow: entries
/// left by that flow must not capture it. Drops a closed forward entry on
/// the same tuple (the connection is a new flow, balanced afresh; only a
/// SYN to a VIP can have one), and a reply entry on the reverse tuple (else
/// the answer to a direct connection would be rewritten as if from a VIP;
/// only a marked client, `marked_src`, can have one).
#[inline(never)]
fn forget_stale(key: &CtKey, to_vip: bool, marked_src: bool) {
    if to_vip {
        if let Some(ct) = CONNTRACK.get_ptr(key) {
            // SAFETY: the pointer comes from a successful lookup and is only read.
            let ct = unsafe { *ct };
            if ct.kind & !CT_HAIRPIN == CT_FORWARD && ct.flags & (CT_FLAG_FIN | CT_FLAG_RST) != 0 {
                let peer = key.peer(&ct);
                let _ = CONNTRACK.remove(&peer);
                let _ = CONNTRACK.remove(key);
                flow_cache::forget(&peer);
                flow_cache::forget(key);
            }
        }
    }
    if marked_src {
        let reverse = key.reversed();
        if let Some(ct) = CONNTRACK.get_ptr(&reverse) {
            // SAFETY: as above.
            if unsafe { (*ct).kind } & !CT_HAIRPIN == CT_REPLY {
                let _ = CONNTRACK.remove(&reverse);
                flow_cache::forget(&reverse);
            }
        }
    }
}

/// Records TCP teardown flags and refreshes the entry's age.
#[inline(always)]
fn touch(ct: &mut CtValue, tcp_flags: u8) {
    let mut flags = ct.flags | tcp_ct_flags(tcp_flags);
    if ct.kind & !CT_HAIRPIN == CT_REPLY {
        flags |= CT_FLAG_REPLIED;
    }
    if flags != ct.flags {
        ct.flags = flags;
    }
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(ct.last_seen_ns) > REFRESH_NS {
        ct.last_seen_ns = now;
    }
}

#[inline(always)]
fn tcp_ct_flags(tcp_flags: u8) -> u8 {
    let mut f = 0;
    if tcp_flags & packet::TCP_FIN != 0 {
        f |= CT_FLAG_FIN;
    }
    if tcp_flags & packet::TCP_RST != 0 {
        f |= CT_FLAG_RST;
    }
    f
}

/// The slot for a new flow: round robin over the service's backends, with
/// one cursor per CPU (no contention). Flows then stick to their backend
/// through conntrack.
#[inline(always)]
pub fn next_slot(svc_id: u32, count: u32) -> u32 {
    match RR.get_ptr_mut(svc_id) {
        Some(p) => {
            // SAFETY: a per-CPU array element from a successful lookup: valid,
            // aligned, and written only by this CPU.
            let cur = unsafe { &mut *p };
            let slot = *cur % count;
            *cur = slot.wrapping_add(1);
            slot
        }
        None => 0,
    }
}

/// Rewrites the destination (`dst == true`) or source address and port from
/// `old` to `new`, fixing the IP and transport checksums incrementally.
///
/// The transport checksum goes through the kernel's helpers, which know the
/// packet's checksum state (a checksum the device is to finish covers the
/// pseudo-header only, so a port change must leave it alone). The IP
/// header's checksum covers the header alone and is updated here; the
/// checksum, both addresses and, when the header has no options, the ports
/// behind them are then written back with one store: three helper calls
/// per packet where a call per field made five.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4,
    dst: bool,
    old_addr_be: u32,
    old_port_be: u16,
    new_addr_be: u32,
    new_port_be: u16,
) -> Result<(), u32> {
    let (new_addr, new_port) = (old_addr_be != new_addr_be, old_port_be != new_port_be);
    if !new_addr && !new_port {
        return Ok(());
    }
    let (csum_off, mangled) = if ip.proto == IPPROTO_TCP {
        (ip.l4_off + TCP_CSUM, 0)
    } else {
        (ip.l4_off + UDP_CSUM, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let fail = |_| drop_reason::REWRITE_FAILED;
    if new_addr {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_addr_be),
            u64::from(new_addr_be),
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .map_err(fail)?;
    }
    if new_port {
        ctx.l4_csum_replace(csum_off, u64::from(old_port_be), u64::from(new_port_be), mangled | 2)
            .map_err(fail)?;
    }
    // The span is read and written as 32-bit words: TTL, protocol and
    // checksum; the source address; the destination address; and, when the
    // header has no options, the two ports.
    const _: () = assert!(
        IP_CSUM == IP_TTL + 2 && IP_SRC == IP_TTL + 4 && IP_DST == IP_TTL + 8 && IPV4_MIN_LEN == IP_TTL + 12
    );
    let span = ip.ip_off + IP_TTL;
    let addr = if dst { 2 } else { 1 };
    if ip.l4_off == ip.ip_off + IPV4_MIN_LEN {
        let mut w: [u32; 4] = packet::load(ctx, span)?;
        if new_addr {
            set_addr(&mut w, addr, new_addr_be);
        }
        if new_port {
            let [s0, s1, d0, d1] = w[3].to_ne_bytes();
            let [p0, p1] = new_port_be.to_ne_bytes();
            w[3] = u32::from_ne_bytes(if dst { [s0, s1, p0, p1] } else { [p0, p1, d0, d1] });
        }
        return packet::store(ctx, span, &w);
    }
    // IP options lie between the addresses and the ports.
    if new_addr {
        let mut w: [u32; 3] = packet::load(ctx, span)?;
        set_addr(&mut w, addr, new_addr_be);
        packet::store(ctx, span, &w)?;
    }
    if new_port {
        packet::store(ctx, ip.l4_off + if dst { L4_DPORT } else { L4_SPORT }, &new_port_be)?;
    }
    Ok(())
}

/// Writes `new_be` over the address in word `at` (1: source, 2:
/// destination) of a span that starts at the IP header's TTL, and updates
/// the header checksum in word 0 for it.
#[inline(always)]
fn set_addr<const N: usize>(w: &mut [u32; N], at: usize, new_be: u32) {
    let [ttl, proto, c0, c1] = w[0].to_ne_bytes();
    let [c0, c1] = checksum::replace4(u16::from_ne_bytes([c0, c1]), w[at], new_be).to_ne_bytes();
    w[0] = u32::from_ne_bytes([ttl, proto, c0, c1]);
    w[at] = new_be;
}
