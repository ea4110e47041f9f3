//! Hashing and seeded randomness that must be the same everywhere: the stable hash behind
//! every decision nodes must agree on (placement, VIP picks), and the seeded generator of
//! the random test cases and benchmark inputs. Pure; std only, since `DefaultHasher` may
//! change between Rust versions and nodes built by different compilers must agree.

/// FNV-1a (64-bit) over each field's length (8 bytes, little-endian) and bytes, then
/// SplitMix64's finaliser (FNV alone mixes its last bytes poorly into the high bits). Fixed
/// forever: nodes that disagree on it disagree on placement.
pub fn stable_hash(fields: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for field in fields {
        for &b in (field.len() as u64).to_le_bytes().iter().chain(field.iter()) {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }
    mix(h)
}

/// SplitMix64's finaliser: a bijection that spreads every input bit.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: a seeded generator, so random cases are the same on every run.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `xs` (not empty).
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}
