//! Internet checksum (RFC 1071) over small headers built on the stack, and
//! its incremental update (RFC 1624) for a rewritten address.

/// Adds the big-endian 16-bit words of `bytes` to `sum`.
#[inline(always)]
pub fn add_bytes(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if i < bytes.len() {
        sum += u32::from(bytes[i]) << 8;
    }
    sum
}

/// Folds a 32-bit sum into the one's-complement 16-bit checksum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The checksum `csum` once a 4-byte field it covers changed from `old` to
/// `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')). The three are read from
/// packet memory alike (native order), which the one's-complement sum does
/// not mind.
#[inline(always)]
pub fn replace4(csum: u16, old: u32, new: u32) -> u16 {
    let (old, new) = (!old, new);
    fold(u32::from(!csum) + (old >> 16) + (old & 0xffff) + (new >> 16) + (new & 0xffff))
}
