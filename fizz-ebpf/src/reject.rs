//! Answers for traffic to a VIP that has nowhere to go: a TCP reset, or an
//! ICMP port-unreachable for UDP, sent straight back out of the veth the
//! packet came in on, so the client fails at once instead of timing out.
//!
//! The answer is built on the stack and written over the packet after
//! resizing it. Packets with IP options are not answered (dropped, counted).

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use fizz_common::{drop_reason, verdict, IPPROTO_TCP};

use crate::{
    checksum,
    nat::Flow,
    packet::{self, Ipv4, ETH_LEN, IPV4_MIN_LEN as IP_HDR, IP_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const TCP_HDR: usize = 20;
const ICMP_HDR: usize = 8;
/// What an ICMP error quotes: the offending IP header and 8 bytes after it.
const QUOTE: usize = IP_HDR + 8;
const RST_LEN: usize = ETH_LEN + IP_HDR + TCP_HDR;
const ICMP_LEN: usize = ETH_LEN + IP_HDR + ICMP_HDR + QUOTE;
const IPPROTO_ICMP: u8 = 1;

/// Answers the sender at once: a TCP reset, or an ICMP port unreachable.
/// Returns the TC action and the verdict, or the drop reason.
#[inline(always)]
pub fn reject(ctx: &TcContext, ip: &Ipv4, flow: &Flow) -> Result<(i32, u32), u32> {
    let v = reject_out_of_line(ctx, ip, flow);
    let low = v as u32;
    if v >> 63 != 0 {
        Err(low)
    } else {
        Ok(((v >> 32) as i32, low))
    }
}

/// `build_reject` out of line (a BPF subprogram: rare, and kept out of the
/// hot path), its result packed in one fully defined register (the verifier
/// refuses a return value built on bits a register held before): bit 63
/// set for a drop, then the action, then the verdict or drop reason.
#[inline(never)]
fn reject_out_of_line(ctx: &TcContext, ip: &Ipv4, flow: &Flow) -> u64 {
    match build_reject(ctx, ip, flow) {
        Ok((action, verdict)) => (u64::from(action as u32 & 0x7fff_ffff) << 32) | u64::from(verdict),
        Err(reason) => (1 << 63) | u64::from(reason),
    }
}

#[inline(always)]
fn build_reject(ctx: &TcContext, ip: &Ipv4, flow: &Flow) -> Result<(i32, u32), u32> {
    if ip.l4_off != ETH_LEN + IP_HDR {
        return Err(drop_reason::REJECT_FAILED);
    }
    if ip.proto == IPPROTO_TCP {
        if flow.tcp_flags & TCP_RST != 0 {
            // Never answer a reset with a reset.
            return Ok((TC_ACT_SHOT as i32, verdict::DROP));
        }
        tcp_reset(ctx, ip, flow)?;
    } else {
        icmp_port_unreachable(ctx, ip)?;
    }
    // SAFETY: the packet belongs to this hook; the skb's ifindex is the veth
    // it arrived on, and its egress leads back into the sender's namespace.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call; the kernel checks the ifindex.
    let rc = unsafe { bpf_redirect(ifindex, 0) };
    if rc == i64::from(TC_ACT_REDIRECT) {
        Ok((TC_ACT_REDIRECT as i32, verdict::REJECT))
    } else {
        Err(drop_reason::REJECT_FAILED)
    }
}

/// Writes the Ethernet header (source and destination swapped) and an IPv4
/// header from `dst` back to `src` into `buf`.
#[inline(always)]
fn reply_headers(ctx: &TcContext, ip: &Ipv4, buf: &mut [u8], tot_len: u16, proto: u8) -> Result<(), u32> {
    let macs: [u8; 12] = packet::load(ctx, 0)?;
    buf[0..6].copy_from_slice(&macs[6..12]);
    buf[6..12].copy_from_slice(&macs[0..6]);
    buf[12] = 0x08;
    buf[13] = 0x00;
    let h = &mut buf[ETH_LEN..ETH_LEN + IP_HDR];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[4] = 0;
    h[5] = 0;
    h[6] = 0x40; // don't fragment
    h[7] = 0;
    h[8] = 64;
    h[9] = proto;
    h[10] = 0;
    h[11] = 0;
    h[12..16].copy_from_slice(&ip.dst_be.to_ne_bytes());
    h[16..20].copy_from_slice(&ip.src_be.to_ne_bytes());
    let csum = checksum::fold(checksum::add_bytes(0, h));
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Result<(), u32> {
    // SAFETY: a plain helper call on this hook's own skb.
    let rc = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) };
    if rc == 0 { Ok(()) } else { Err(drop_reason::REJECT_FAILED) }
}

#[inline(always)]
fn tcp_reset(ctx: &TcContext, ip: &Ipv4, flow: &Flow) -> Result<(), u32> {
    let l4 = ip.l4_off;
    let seq_be: u32 = packet::load(ctx, l4 + 4)?;
    let ack_be: u32 = packet::load(ctx, l4 + 8)?;
    let doff = usize::from(packet::load::<u8>(ctx, l4 + 12)? >> 4) * 4;
    let ip_len = usize::from(u16::from_be(ip.tot_len_be));
    let payload = ip_len.saturating_sub(IP_HDR + doff) as u32;
    let f = flow.tcp_flags;

    let mut buf = [0u8; RST_LEN];
    reply_headers(ctx, ip, &mut buf, (IP_HDR + TCP_HDR) as u16, IPPROTO_TCP)?;
    let t = &mut buf[ETH_LEN + IP_HDR..];
    t[0..2].copy_from_slice(&flow.key.dport_be.to_ne_bytes());
    t[2..4].copy_from_slice(&flow.key.sport_be.to_ne_bytes());
    let (seq, ack, flags) = if f & TCP_ACK != 0 {
        (u32::from_be(ack_be), 0, TCP_RST)
    } else {
        let mut ack = u32::from_be(seq_be).wrapping_add(payload);
        if f & TCP_SYN != 0 {
            ack = ack.wrapping_add(1);
        }
        if f & TCP_FIN != 0 {
            ack = ack.wrapping_add(1);
        }
        (0, ack, TCP_RST | TCP_ACK)
    };
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = (TCP_HDR as u8 / 4) << 4;
    t[13] = flags;
    // Window, checksum and urgent pointer stay zero until the checksum below.
    let mut sum = pseudo_header(ip.dst_be, ip.src_be, IPPROTO_TCP, TCP_HDR as u16);
    sum = checksum::add_bytes(sum, t);
    let csum = checksum::fold(sum);
    t[16..18].copy_from_slice(&csum.to_be_bytes());

    resize(ctx, RST_LEN)?;
    packet::store(ctx, 0, &buf).map_err(|_| drop_reason::REJECT_FAILED)
}

#[inline(always)]
fn icmp_port_unreachable(ctx: &TcContext, ip: &Ipv4) -> Result<(), u32> {
    let quote: [u8; QUOTE] = packet::load(ctx, IP_OFF)?;
    let mut buf = [0u8; ICMP_LEN];
    reply_headers(ctx, ip, &mut buf, (IP_HDR + ICMP_HDR + QUOTE) as u16, IPPROTO_ICMP)?;
    let m = &mut buf[ETH_LEN + IP_HDR..];
    m[0] = 3; // destination unreachable
    m[1] = 3; // port unreachable
    m[ICMP_HDR..ICMP_HDR + QUOTE].copy_from_slice(&quote);
    let csum = checksum::fold(checksum::add_bytes(0, m));
    m[2..4].copy_from_slice(&csum.to_be_bytes());

    resize(ctx, ICMP_LEN)?;
    packet::store(ctx, 0, &buf).map_err(|_| drop_reason::REJECT_FAILED)
}

#[inline(always)]
fn pseudo_header(src_be: u32, dst_be: u32, proto: u8, len: u16) -> u32 {
    let mut sum = checksum::add_bytes(0, &src_be.to_ne_bytes());
    sum = checksum::add_bytes(sum, &dst_be.to_ne_bytes());
    sum + u32::from(proto) + u32::from(len)
}
