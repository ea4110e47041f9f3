//! Packet layout and the one way headers are read and written: read in place
//! when the packet's linear part holds them, else (and for every write)
//! through the kernel's bounds-checked `bpf_skb_load_bytes` and
//! `bpf_skb_store_bytes`, which also work at variable offsets (IP options).

use core::mem;

use aya_ebpf::programs::TcContext;
use fizz_common::drop_reason;

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
/// Offset of the IPv4 header behind an Ethernet header (container veths).
pub const IP_OFF: usize = ETH_LEN;
/// Offset of the IPv4 header on a layer-3 device (the WireGuard TUN).
pub const IP_OFF_L3: usize = 0;
/// Offsets inside the IPv4 header.
pub const IP_CSUM: usize = 10;
pub const IP_SRC: usize = 12;
pub const IP_DST: usize = 16;
/// Offsets inside the TCP and UDP headers.
pub const L4_SPORT: usize = 0;
pub const L4_DPORT: usize = 2;
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The fixed part of an IPv4 header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum_be: u16,
    pub src_be: u32,
    pub dst_be: u32,
}

/// What the parser learned about an IPv4 packet.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub hdr: Ipv4Hdr,
    /// Offset of the IPv4 header (`IP_OFF` or `IP_OFF_L3`).
    pub ip_off: usize,
    /// Offset of the transport header (after IP options).
    pub l4_off: usize,
    /// More-fragments set or a non-zero fragment offset.
    pub is_fragment: bool,
    /// A fragment other than the first: no transport header here.
    pub later_fragment: bool,
}

/// Reads a `T` at `offset`, or names the drop reason: the packet is too short.
/// Headers are read in place when the packet's linear part holds them (the
/// common case, and no helper call); otherwise the helper copies them out.
/// Single bytes always go through the helper: LLVM turns `p + 1 <= end`
/// into `p < end`, which the verifier cannot use as a bound at a variable
/// offset.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if mem::size_of::<T>() >= 2 && start + offset + mem::size_of::<T>() <= end {
        // SAFETY: the bytes lie between `data` and `data_end` (checked just
        // above, as the verifier requires); the read is unaligned-safe.
        return Ok(unsafe { ((start + offset) as *const T).read_unaligned() });
    }
    ctx.load::<T>(offset).map_err(|_| drop_reason::TRUNCATED)
}

/// Writes `v` at `offset`, or names the drop reason.
#[inline(always)]
pub fn store<T>(ctx: &TcContext, offset: usize, v: &T) -> Result<(), u32> {
    ctx.store(offset, v, 0).map_err(|_| drop_reason::REWRITE_FAILED)
}

/// Parses the IPv4 header that follows the Ethernet header.
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Result<Ipv4, u32> {
    parse_ipv4_at(ctx, IP_OFF)
}

/// Parses the IPv4 header at `ip_off`.
#[inline(always)]
pub fn parse_ipv4_at(ctx: &TcContext, ip_off: usize) -> Result<Ipv4, u32> {
    let hdr: Ipv4Hdr = load(ctx, ip_off)?;
    if hdr.ver_ihl >> 4 != 4 {
        return Err(drop_reason::BAD_IP_HEADER);
    }
    let ihl = usize::from(hdr.ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(drop_reason::BAD_IP_HEADER);
    }
    let tot_len = usize::from(u16::from_be(hdr.tot_len_be));
    if tot_len < ihl {
        return Err(drop_reason::BAD_IP_HEADER);
    }
    let frag = u16::from_be(hdr.frag_off_be);
    Ok(Ipv4 {
        hdr,
        ip_off,
        l4_off: ip_off + ihl,
        is_fragment: frag & 0x3fff != 0,
        later_fragment: frag & 0x1fff != 0,
    })
}
