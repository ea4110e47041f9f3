//! `from_container`: TC ingress of the host end of each container veth.
//!
//! Order of work for an IPv4 TCP/UDP packet:
//! 1. the destination's slot in `FZ_LOCAL_SLOTS` (one cache line): its
//!    endpoint when it is a container on this node, and whether it may be
//!    the client of a NAT'd flow. Only for a destination that is not local
//!    is the VIP range read (the ranges never overlap); a slot holding
//!    another address sends a destination outside the range, never a VIP,
//!    to `FZ_ENDPOINTS`;
//! 2. conntrack hit → rewrite (forward: destination to the backend; reply:
//!    source back to the VIP). Looked up only where an entry can be: for a
//!    destination in the VIP range, or a flagged one; a plain
//!    container-to-container packet skips it;
//! 3. otherwise, destination in the VIP range → pick a backend, create both
//!    conntrack entries, rewrite; or reject when there is nowhere to go;
//! 4. destination is a container on this node → set MACs if needed and
//!    `bpf_redirect_peer` into its namespace; destination in another node's
//!    range (`FZ_REMOTES`) → `bpf_redirect` into the WireGuard device;
//!    otherwise hand it to the stack. A new connection between two
//!    containers that share no network is dropped, whichever node the
//!    destination is on (when its node reported it).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use fizz_common::{drop_reason, verdict, VipKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{count, finish, is_vip_range, local, local_endpoint, remote, remote_endpoint_mask, slot, Local, DROPS, VIPS},
    nat::{self, Flow},
    packet::{self, Ipv4, ETH_P_IP},
    reject,
};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    finish(ctx.len(), try_from_container(&ctx))
}

/// Returns the TC action and the verdict to count (none for service
/// traffic, counted per backend), or the drop reason.
#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<(i32, Option<u32>), u32> {
    let Ok(eth_proto_be) = packet::load::<u16>(ctx, 12) else {
        return Ok((TC_ACT_OK as i32, Some(verdict::PASS)));
    };
    if u16::from_be(eth_proto_be) != ETH_P_IP {
        return Ok((TC_ACT_OK as i32, Some(verdict::PASS)));
    }
    let ip = packet::parse_ipv4(ctx)?;
    let proto = ip.proto;

    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || ip.later_fragment {
        if is_vip_range(ip.dst_be) && VIPS.get_ptr(VipKey { vip_be: ip.dst_be }).is_some() {
            let reason = if ip.is_fragment {
                drop_reason::VIP_FRAGMENT
            } else {
                drop_reason::VIP_PROTO
            };
            return Err(reason);
        }
        return deliver(ctx, &ip, ip.dst_be, local(ip.dst_be), false, true);
    }

    let flow = Flow::parse(ctx, &ip)?;
    // A connection is checked against policy when it is set up: every UDP
    // datagram, a TCP SYN. (A segment of a connection whose SYN was refused
    // reaches a socket that does not know it, and draws a reset.)
    let setup = proto == IPPROTO_UDP || flow.tcp_flags & packet::TCP_SYN != 0;
    // The destination's slot: its endpoint if it is local, and whether it
    // may be the client of a NAT'd flow. A local container's address is
    // never in the VIP range (the agent refuses ranges that overlap), so
    // the range is read only for other destinations.
    let dst = slot(ip.dst_be);
    let to_vip = dst.endpoint().is_none() && is_vip_range(ip.dst_be);
    // A VIP is not looked up in `ENDPOINTS` when its slot is another's.
    let known = |dst: Local| dst.resolved(ip.dst_be);
    // Every outcome yields a defined destination, so that no merged path
    // reads a register the verifier considers uninitialised.
    let (dst_be, dst, translated) = match nat::translate(ctx, &ip, &flow, to_vip, dst.nat_client)? {
        // A reply keeps its destination (the client, whose slot was read);
        // a forward packet now goes to its backend.
        nat::Outcome::Translated { dst_be } if dst_be == ip.dst_be => (dst_be, known(dst), true),
        nat::Outcome::Translated { dst_be } => (dst_be, local(dst_be), true),
        nat::Outcome::NotService => (ip.dst_be, known(dst), false),
        nat::Outcome::Reject(reason) => {
            count(&DROPS, reason, ctx.len());
            return reject::reject(ctx, &ip, &flow).map(|(a, v)| (a, Some(v)));
        }
    };
    deliver(ctx, &ip, dst_be, dst, translated, setup && !translated)
}

/// Hands the packet to the local container at `dst_be` (`dst`, its slot),
/// or when there is none to another node or the kernel stack. Local
/// delivery is a switch's, not a router's: the TTL is kept, and the MACs are
/// written only when the destination's differs (the agent gives every
/// container veth the same MAC, so its containers' packets are not written
/// at all, and a cloned TCP segment is never copied to be made writable).
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    ip: &Ipv4,
    dst_be: u32,
    dst: Local,
    translated: bool,
    check_policy: bool,
) -> Result<(i32, Option<u32>), u32> {
    let Some(ep) = dst.endpoint() else {
        return to_remote(ip, dst_be, translated, check_policy);
    };
    // Network isolation for flows that conntrack has not vouched for.
    if check_policy && ep.net_mask != 0 {
        if let Some(src) = local_endpoint(ip.src_be) {
            if !nat::networks_meet(src.net_mask, ep.net_mask) {
                return Err(drop_reason::POLICY);
            }
        }
    }

    let dst_mac: [u8; 6] = packet::load(ctx, 0)?;
    if dst_mac != ep.mac {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&ep.mac);
        macs[6..].copy_from_slice(&ep.node_mac);
        packet::store(ctx, 0, &macs)?;
    }

    // SAFETY: a plain helper call; the kernel checks the ifindex.
    let rc = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    if rc == i64::from(TC_ACT_REDIRECT) {
        Ok((TC_ACT_REDIRECT as i32, (!translated).then_some(verdict::REDIRECT_LOCAL)))
    } else {
        Err(drop_reason::REWRITE_FAILED)
    }
}

/// Sends a packet for another node's container range into the WireGuard
/// device (its egress: the tunnel encrypts it), or hands it to the stack
/// when no node owns the destination. The TTL is kept, as for local
/// delivery: the cluster's container network is one segment.
///
/// A connection set up (`check_policy`) from a local container to one of
/// another node that shares none of its networks is dropped here already,
/// when that node reported the container (`FZ_REMOTE_ENDPOINTS`): the
/// destination's node would drop it too (`from_wireguard`), and this
/// spares the tunnel, and holds while that node runs an agent that does
/// not check yet.
#[inline(always)]
fn to_remote(ip: &Ipv4, dst_be: u32, translated: bool, check_policy: bool) -> Result<(i32, Option<u32>), u32> {
    let Some(r) = remote(dst_be) else {
        let v = if translated { None } else { Some(verdict::PASS) };
        return Ok((TC_ACT_OK as i32, v));
    };
    if check_policy {
        let dst_mask = remote_endpoint_mask(dst_be).unwrap_or(0);
        if dst_mask != 0 && local_endpoint(ip.src_be).is_some_and(|src| !nat::networks_meet(src.net_mask, dst_mask)) {
            return Err(drop_reason::POLICY);
        }
    }
    // SAFETY: a plain helper call; the kernel checks the ifindex.
    let rc = unsafe { bpf_redirect(r.ifindex, 0) };
    if rc == i64::from(TC_ACT_REDIRECT) {
        Ok((TC_ACT_REDIRECT as i32, (!translated).then_some(verdict::REDIRECT_TUNNEL)))
    } else {
        Err(drop_reason::REDIRECT_FAILED)
    }
}
