//! `fz_connect4` and `fz_getpeername4`: service load-balancing at connect
//! time, on the root cgroup.
//!
//! A TCP `connect()` to a VIP from a container of this node is pointed at a
//! backend before the SYN leaves: the flow then runs between the two
//! addresses as if the client had dialled the backend, so its packets take
//! the direct path at TC (no conntrack entry, no rewrite, no checksum
//! update). `getpeername()` on such a socket reports the VIP it asked for.
//!
//! Only sockets in a network namespace this node registered (`SOCK_CLIENTS`)
//! are touched: several nodes of a local cluster share one kernel and one
//! cgroup tree, and each balances only its own containers' connects. Every
//! case this does not handle (UDP, no service, no backend, a network that
//! may not reach the service) leaves the address alone, and the TC program
//! treats the SYN as it always did: NAT, reset, or policy drop. So neither
//! program ever refuses a call.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use fizz_common::{BackendKey, SockPeer, IPPROTO_TCP};

use crate::{
    maps::{count, is_vip_range, BACKENDS, SOCK_CLIENTS, SOCK_CONNECTS, SOCK_PEERS},
    nat,
};

/// Lets the call go on (a `cgroup/*` program's "allow").
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn fz_connect4(ctx: SockAddrContext) -> i32 {
    connect4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn fz_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: a plain helper call on this program's context.
    let sock = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(peer) = SOCK_PEERS.get_ptr(&sock) {
        // SAFETY: the pointer comes from a successful lookup and is only
        // read; the context fields are writable in this hook (4-byte stores).
        unsafe {
            let peer = *peer;
            (*ctx.sock_addr).user_ip4 = peer.vip_be;
            (*ctx.sock_addr).user_port = u32::from(peer.port_be);
        }
    }
    ALLOW
}

#[inline(always)]
fn connect4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is this program's context. The reads are volatile so
    // that they stay 4 bytes wide, as the verifier requires of these fields.
    let (protocol, dst_be, port_be) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).protocol),
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port) as u16,
        )
    };
    if protocol != u32::from(IPPROTO_TCP) || !is_vip_range(dst_be) {
        return;
    }
    // SAFETY: a plain helper call on this program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(client) = SOCK_CLIENTS.get_ptr(&netns) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup and is only read.
    let client_mask = unsafe { (*client).net_mask };
    let Some(svc) = nat::service(dst_be, port_be, IPPROTO_TCP) else {
        return;
    };
    if svc.count == 0 || !nat::networks_meet(svc.net_mask, client_mask) {
        return;
    }
    let slot = nat::next_slot(svc.id, svc.count);
    let Some(backend) = BACKENDS.get_ptr(BackendKey { svc_id: svc.id, slot }) else {
        return;
    };
    // SAFETY: as above.
    let backend = unsafe { *backend };
    // Port 0: the backend listens on the port the client asked for.
    let backend_port = if backend.port_be == 0 { port_be } else { backend.port_be };
    // SAFETY: a plain helper call on this program's context.
    let sock = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if SOCK_PEERS.insert(&sock, &SockPeer { vip_be: dst_be, port_be, _pad: 0 }, 0).is_err() {
        // Without the entry `getpeername` would show the backend: leave
        // this one to the TC path.
        return;
    }
    // SAFETY: the context fields are writable in this hook (4-byte stores).
    unsafe {
        (*sa).user_ip4 = backend.addr_be;
        (*sa).user_port = u32::from(backend_port);
    }
    count(&SOCK_CONNECTS, backend.id, 0);
}
