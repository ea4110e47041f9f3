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
/// Length of an IPv4 header without options.
pub const IPV4_MIN_LEN: usize = 20;
/// Offsets inside the IPv4 header.
pub const IP_TTL: usize = 8;
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

/// What the parser learned about an IPv4 packet: only what later steps
/// use, so that the little the program keeps on its stack across calls
/// stays little.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub src_be: u32,
    pub dst_be: u32,
    pub tot_len_be: u16,
    pub proto: u8,
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
/// common case, and no helper call), a machine word at a time (see
/// `copy_words`); otherwise the helper copies them out.
/// Single bytes always go through the helper: LLVM turns `p + 1 <= end`
/// into `p < end`, which the verifier cannot use as a bound at a variable
/// offset.
#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if mem::size_of::<T>() >= 2 && start + offset + mem::size_of::<T>() <= end {
        // SAFETY: the bytes lie between `data` and `data_end` (checked just
        // above, as the verifier requires).
        return Ok(unsafe { copy_words(start + offset) });
    }
    ctx.load::<T>(offset).map_err(|_| drop_reason::TRUNCATED)
}

/// Copies a `T` out of packet memory at `p`, four bytes to a load, then two,
/// then one.
///
/// Headers in a packet have no alignment Rust could rely on (an Ethernet
/// header leaves the IP header 2 bytes off a word), so an ordinary read
/// must be `read_unaligned`, and the BPF backend, which assumes strict
/// alignment, splits that into single-byte loads: about four instructions
/// per byte, on every packet. Packet memory does not need that: the
/// verifier accepts unaligned packet loads wherever the architecture does
/// them efficiently (x86-64, arm64; `CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`),
/// so the loads are written as instructions here. (The `+allows-misaligned-
/// mem-access` target feature would also make LLVM merge stack stores into
/// unaligned ones, which the verifier refuses everywhere.)
///
/// # Safety
/// `p .. p + size_of::<T>()` must lie inside the packet (checked against
/// `data_end` where the verifier sees it), and any bit pattern must be a
/// valid `T`.
#[inline(always)]
unsafe fn copy_words<T: Copy>(p: usize) -> T {
    #[repr(C, align(8))]
    struct Aligned<T>(mem::MaybeUninit<T>);
    let mut out = Aligned::<T>(mem::MaybeUninit::uninit());
    let dst = out.0.as_mut_ptr().cast::<u8>();
    let size = mem::size_of::<T>();
    let mut i = 0;
    while i + 4 <= size {
        // SAFETY: `i + 4 <= size`, and `out` is 8-aligned, so the word is
        // in bounds and aligned; the source lies in the packet (caller).
        unsafe { dst.add(i).cast::<u32>().write(load_u32(p + i) as u32) };
        i += 4;
    }
    if i + 2 <= size {
        // SAFETY: as above, for two bytes at an even offset.
        unsafe { dst.add(i).cast::<u16>().write(load_u16(p + i) as u16) };
        i += 2;
    }
    if i < size {
        // SAFETY: as above, for the last byte.
        unsafe { dst.add(i).write(*((p + i) as *const u8)) };
    }
    // SAFETY: every byte was written; the caller vouches for the type.
    unsafe { out.0.assume_init() }
}

/// One 4-byte load from packet memory at `p`, at any alignment.
#[inline(always)]
fn load_u32(p: usize) -> u64 {
    let v: u64;
    // SAFETY: a single load, which only reads memory; the callers check the
    // bounds the verifier enforces.
    unsafe {
        core::arch::asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(readonly, nostack, preserves_flags))
    };
    v
}

/// One 2-byte load from packet memory at `p`, at any alignment.
#[inline(always)]
fn load_u16(p: usize) -> u64 {
    let v: u64;
    // SAFETY: as for `load_u32`.
    unsafe {
        core::arch::asm!("{v} = *(u16 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(readonly, nostack, preserves_flags))
    };
    v
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
    if ihl < IPV4_MIN_LEN {
        return Err(drop_reason::BAD_IP_HEADER);
    }
    let tot_len = usize::from(u16::from_be(hdr.tot_len_be));
    if tot_len < ihl {
        return Err(drop_reason::BAD_IP_HEADER);
    }
    let frag = u16::from_be(hdr.frag_off_be);
    Ok(Ipv4 {
        src_be: hdr.src_be,
        dst_be: hdr.dst_be,
        tot_len_be: hdr.tot_len_be,
        proto: hdr.proto,
        ip_off,
        l4_off: ip_off + ihl,
        is_fragment: frag & 0x3fff != 0,
        later_fragment: frag & 0x1fff != 0,
    })
}
