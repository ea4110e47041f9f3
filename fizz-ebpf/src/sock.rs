//! `fz_connect4`, `fz_getpeername4`, `fz_sendmsg4` and `fz_recvmsg4`:
//! service load-balancing at the socket, on the root cgroup.
//!
//! A TCP `connect()` to a VIP from a container of this node is pointed at a
//! backend before the SYN leaves: the flow then runs between the two
//! addresses as if the client had dialled the backend, so its packets take
//! the direct path at TC (no conntrack entry, no rewrite, no checksum
//! update). `getpeername()` on such a socket reports the VIP it asked for,
//! which is kept on the socket (`SOCK_STATE`, socket local storage).
//!
//! A datagram that an unconnected UDP socket sends to a VIP (`sendto`) goes
//! likewise to a backend: the one picked at the socket's first datagram to
//! that VIP and port (`SOCK_PICKS`), as long as the service still has it
//! (`BACKEND_REFS`, by backend id: a backend keeps its picks when the
//! removal of another moves its slot); else a new one is picked.
//! `recvmsg()` reports datagrams from that backend as coming from the VIP
//! (`SOCK_REPLIES`, read only for sockets marked in `SOCK_STATE`), so
//! a client that checks who answered (as DNS resolvers do) sees the address
//! it asked. A connected UDP socket is not balanced here: it has no end the
//! way a TCP connection does, and would keep sending to a backend after its
//! removal; its datagrams are NAT'd at TC, whose flows are purged then.
//!
//! Only sockets in a network namespace this node registered (`SOCK_CLIENTS`)
//! are touched: several nodes of a local cluster share one kernel and one
//! cgroup tree, and each balances only its own containers' sockets. Every
//! case this does not handle (connected UDP, no service, no backend, a
//! network that may not reach the service, a full map) leaves the address
//! alone, and the TC program treats the packet as it always did: NAT, reset
//! or ICMP unreachable, or policy drop. So no program here ever refuses a
//! call.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use fizz_common::{Backend, BackendKey, SockDgramKey, SockPeer, SockPick, SvcValue, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{count, is_vip_range, sock_state, BACKENDS, BACKEND_REFS, SOCK_CLIENTS, SOCK_CONNECTS, SOCK_PICKS, SOCK_REPLIES},
    nat,
};

/// Lets the call go on (a `cgroup/*` program's "allow").
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn fz_connect4(ctx: SockAddrContext) -> i32 {
    connect4(&ctx);
    ALLOW
}

/// Also runs for every `accept()` that asks for the peer's address, on
/// any socket of the host: a socket with no state returns at once.
#[cgroup_sock_addr(getpeername4)]
pub fn fz_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(state) = sock_state(&ctx, false) {
        // SAFETY: the socket's own storage, from a successful lookup; only read.
        let state = unsafe { *state };
        if state.peer_vip_be != 0 {
            redirect(&ctx, state.peer_vip_be, state.peer_port_be);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn fz_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg4(&ctx);
    ALLOW
}

/// Runs for every datagram any UDP socket of the host receives: a socket
/// that never had a datagram balanced returns at once.
#[cgroup_sock_addr(recvmsg4)]
pub fn fz_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the socket's own storage, from a successful lookup; only read.
    if !sock_state(&ctx, false).is_some_and(|s| unsafe { (*s).dgram } != 0) {
        return ALLOW;
    }
    let (src_be, port_be) = address(&ctx);
    // SAFETY: a plain helper call on this program's context.
    let sock = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(peer) = SOCK_REPLIES.get_ptr(&SockDgramKey::new(sock, src_be, port_be)) {
        // SAFETY: as above.
        let peer = unsafe { *peer };
        redirect(&ctx, peer.vip_be, peer.port_be);
    }
    ALLOW
}

/// The address and port in the context (the destination of a connect or a
/// datagram sent, the source of one received).
#[inline(always)]
fn address(ctx: &SockAddrContext) -> (u32, u16) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is this program's context. The reads are volatile so
    // that they stay 4 bytes wide, as the verifier requires of these fields.
    unsafe { (core::ptr::read_volatile(&(*sa).user_ip4), core::ptr::read_volatile(&(*sa).user_port) as u16) }
}

/// Writes `addr_be:port_be` into the context: where a connect or datagram
/// goes, or the peer or source a call reports.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, addr_be: u32, port_be: u16) {
    // SAFETY: the context fields are writable in these hooks (4-byte stores).
    unsafe {
        (*ctx.sock_addr).user_ip4 = addr_be;
        (*ctx.sock_addr).user_port = u32::from(port_be);
    }
}

/// The service at `dst_be:port_be/proto` when this node balances the
/// calling socket's traffic to it: a VIP, from a container this node
/// registered, to a service with backends on a network the container is on.
#[inline(always)]
fn balanced_service(ctx: &SockAddrContext, dst_be: u32, port_be: u16, proto: u8) -> Option<SvcValue> {
    if !is_vip_range(dst_be) {
        return None;
    }
    // SAFETY: a plain helper call on this program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let client = SOCK_CLIENTS.get_ptr(&netns)?;
    // SAFETY: the pointer comes from a successful lookup and is only read.
    let client_mask = unsafe { (*client).net_mask };
    let svc = nat::service(dst_be, port_be, proto)?;
    if svc.count == 0 || !nat::networks_meet(svc.net_mask, client_mask) {
        return None;
    }
    Some(svc)
}

/// A backend for a new flow of `svc`, and its slot.
#[inline(always)]
fn pick(svc: &SvcValue) -> Option<(u32, Backend)> {
    let slot = nat::next_slot(svc.id, svc.count);
    let backend = BACKENDS.get_ptr(BackendKey { svc_id: svc.id, slot })?;
    // SAFETY: the pointer comes from a successful lookup and is only read.
    Some((slot, unsafe { *backend }))
}

/// The port a backend is reached on: its own (`port_be`), or when that
/// is 0, the one the client asked for.
#[inline(always)]
fn backend_port(port_be: u16, asked_be: u16) -> u16 {
    if port_be == 0 {
        asked_be
    } else {
        port_be
    }
}

#[inline(always)]
fn connect4(ctx: &SockAddrContext) {
    // SAFETY: `sock_addr` is this program's context; a volatile read keeps
    // the field's access 4 bytes wide.
    let protocol = unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).protocol) };
    if protocol != u32::from(IPPROTO_TCP) {
        return;
    }
    let (dst_be, port_be) = address(ctx);
    let Some((_, backend)) = balanced_service(ctx, dst_be, port_be, IPPROTO_TCP).and_then(|svc| pick(&svc)) else {
        // A socket that connects again after a failed connect to a VIP
        // must not report that VIP any more.
        if let Some(state) = sock_state(ctx, false) {
            // SAFETY: the socket's own storage, from a successful lookup;
            // a connect holds the socket's lock.
            unsafe { (*state).peer_vip_be = 0 };
        }
        return;
    };
    let Some(state) = sock_state(ctx, true) else {
        // Without its state `getpeername` would show the backend: leave
        // this one to the TC path.
        return;
    };
    // SAFETY: the socket's own storage, from a successful lookup; a
    // connect holds the socket's lock, so nothing else writes it now.
    unsafe {
        (*state).peer_vip_be = dst_be;
        (*state).peer_port_be = port_be;
    }
    redirect(ctx, backend.addr_be, backend_port(backend.port_be, port_be));
    count(&SOCK_CONNECTS, backend.id, 0);
}

#[inline(always)]
fn sendmsg4(ctx: &SockAddrContext) {
    let (dst_be, port_be) = address(ctx);
    let Some(svc) = balanced_service(ctx, dst_be, port_be, IPPROTO_UDP) else {
        return;
    };
    // SAFETY: a plain helper call on this program's context.
    let sock = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockDgramKey::new(sock, dst_be, port_be);
    if let Some(p) = SOCK_PICKS.get_ptr(&key) {
        // SAFETY: the pointer comes from a successful lookup and is only read.
        let p = unsafe { *p };
        if still_there(&p, &svc, port_be) {
            redirect(ctx, p.addr_be, p.port_be);
            return;
        }
    }
    let Some((slot, backend)) = pick(&svc) else {
        return;
    };
    let to_port_be = backend_port(backend.port_be, port_be);
    // The socket's mark, then the reply entry: a datagram from the backend
    // is never seen without either. Any step failing leaves the datagram to
    // the TC path.
    let Some(state) = sock_state(ctx, true) else {
        return;
    };
    // SAFETY: the socket's own storage, from a successful lookup; a plain
    // byte store (a racing sender on the same socket stores the same).
    unsafe { (*state).dgram = 1 };
    let reply = SockDgramKey::new(sock, backend.addr_be, to_port_be);
    if SOCK_REPLIES.insert(&reply, &SockPeer { vip_be: dst_be, port_be, _pad: 0 }, 0).is_err() {
        return;
    }
    let p = SockPick { svc_id: svc.id, slot, backend_id: backend.id, addr_be: backend.addr_be, port_be: to_port_be, _pad: 0 };
    if SOCK_PICKS.insert(&key, &p, 0).is_err() {
        return;
    }
    redirect(ctx, backend.addr_be, to_port_be);
    count(&SOCK_CONNECTS, backend.id, 0);
}

/// Whether a socket's pick is still a backend of the service: the
/// pick's backend id is still held by the same service, address and port
/// (an id freed is zeroed, and may be given to another backend later).
#[inline(always)]
fn still_there(p: &SockPick, svc: &SvcValue, asked_be: u16) -> bool {
    if p.svc_id != svc.id {
        return false;
    }
    match BACKEND_REFS.get(p.backend_id) {
        Some(r) => r.svc_id == p.svc_id && r.addr_be == p.addr_be && backend_port(r.port_be, asked_be) == p.port_be,
        None => false,
    }
}
