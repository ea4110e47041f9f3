//! `from_wireguard`: TC ingress of the node's WireGuard device, a layer-3
//! TUN device, so packets start at the IPv4 header (no Ethernet header).
//! It sees every packet another node sent through the tunnel, decrypted.
//!
//! Order of work for an IPv4 packet:
//! 1. TCP/UDP to a client flagged in `FZ_LOCAL_SLOTS`: a conntrack hit
//!    rewrites it. This is how the reply of a flow
//!    that this node load-balanced to a backend on another node gets its
//!    VIP back: the backend's node has no conntrack entry for the flow (it
//!    was translated here), so it routes the reply by address, through the
//!    tunnel, and the reverse NAT happens on arrival. No service lookup is
//!    done: the sending node already translated anything addressed to a VIP.
//! 2. The destination is a container on this node → `bpf_redirect_peer`
//!    into its namespace. (A plain `bpf_redirect` to the veth's egress does
//!    not deliver from a TUN device.) Otherwise the stack has it.
//!
//! Network policy: a packet that sets up a connection (every UDP datagram,
//! a TCP SYN) from a container of another node (`FZ_REMOTE_ENDPOINTS`, from
//! its node's reports) to a local container is dropped when the two share no
//! network, as `from_container` does between two local containers. A
//! source that no report names (a process of another host, a container not
//! reported yet) is let through, as an unknown source is there. A reply
//! this node reverse-NATs was checked when its flow was set up.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::generated::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use fizz_common::{drop_reason, verdict, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{finish, local, remote_endpoint_mask},
    nat::{self, Flow},
    packet::{self, IP_OFF_L3},
};

#[classifier]
pub fn from_wireguard(ctx: TcContext) -> i32 {
    finish(ctx.len(), try_from_wireguard(&ctx))
}

/// Returns the TC action and the verdict to count (none for service
/// traffic, counted per backend), or the drop reason.
#[inline(always)]
fn try_from_wireguard(ctx: &TcContext) -> Result<(i32, Option<u32>), u32> {
    let pass = Ok((TC_ACT_OK as i32, Some(verdict::FROM_TUNNEL_PASS)));
    // Two bytes, so that the read is in place (see `packet::load`).
    let Ok([ver_ihl, _]) = packet::load::<[u8; 2]>(ctx, IP_OFF_L3) else {
        return pass;
    };
    if ver_ihl >> 4 != 4 {
        return pass;
    }
    let ip = packet::parse_ipv4_at(ctx, IP_OFF_L3)?;
    let proto = ip.proto;
    let mut dst = local(ip.dst_be);
    let mut translated = false;
    let mut setup = false;
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && !ip.later_fragment {
        let flow = Flow::parse(ctx, &ip)?;
        setup = proto == IPPROTO_UDP || flow.tcp_flags & packet::TCP_SYN != 0;
        // Packets from the tunnel never start a service flow here.
        match nat::translate(ctx, &ip, &flow, false, dst.nat_client)? {
            nat::Outcome::Translated { dst_be } => {
                // A reply keeps its destination, the client; only a hairpin
                // reply (never one from the tunnel) changes it.
                if dst_be != ip.dst_be {
                    dst = local(dst_be);
                }
                translated = true;
            }
            nat::Outcome::NotService => {}
            // Unreachable without a service lookup; counted if it ever is.
            nat::Outcome::Reject(reason) => return Err(reason),
        }
    }

    let Some(ep) = dst.endpoint() else {
        return Ok((
            TC_ACT_OK as i32,
            (!translated).then_some(verdict::FROM_TUNNEL_PASS),
        ));
    };
    if setup
        && !translated
        && ep.net_mask != 0
        && remote_endpoint_mask(ip.src_be).is_some_and(|src_mask| !nat::networks_meet(src_mask, ep.net_mask))
    {
        return Err(drop_reason::POLICY);
    }
    let ifindex = ep.ifindex;
    // SAFETY: a plain helper call; the kernel checks the ifindex.
    let rc = unsafe { bpf_redirect_peer(ifindex, 0) };
    if rc == i64::from(TC_ACT_REDIRECT) {
        Ok((
            TC_ACT_REDIRECT as i32,
            (!translated).then_some(verdict::FROM_TUNNEL_LOCAL),
        ))
    } else {
        Err(drop_reason::REDIRECT_FAILED)
    }
}
