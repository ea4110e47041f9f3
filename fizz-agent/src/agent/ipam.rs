//! Address management, pure: container addresses from the node's range and
//! service VIPs from the cluster's VIP range. Allocations are recorded where
//! they live (container labels, the stored plan), so nothing here keeps
//! state of its own.

use std::{collections::BTreeSet, net::Ipv4Addr};

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub net: Ipv4Addr,
    pub len: u8,
}

/// Errors allocating an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    /// Every address of the range is taken.
    #[error("no free address left in {net}/{len}")]
    Exhausted { net: Ipv4Addr, len: u8 },
    /// The prefix is not usable (host bits set, or too small).
    #[error("{net}/{len} is not a usable range")]
    BadRange { net: Ipv4Addr, len: u8 },
}

impl Cidr {
    pub fn new(net: Ipv4Addr, len: u8) -> Result<Cidr, IpamError> {
        if len > 30 || (u32::from(net) & !mask(len)) != 0 {
            return Err(IpamError::BadRange { net, len });
        }
        Ok(Cidr { net, len })
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask(self.len) == u32::from(self.net)
    }

    /// Whether the two ranges share an address (one holds the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.net) || other.contains(self.net)
    }

    /// Usable hosts: skips the network address, `.1` (kept for the node) and
    /// the broadcast address.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.net);
        let size = 1u64 << (32 - self.len);
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i as u32))
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// The lowest free address of `range` not in `used`.
pub fn allocate(range: Cidr, used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
    range.hosts().find(|a| !used.contains(a)).ok_or(IpamError::Exhausted { net: range.net, len: range.len })
}

/// The first free host address of `range` at or after the one that `name` hashes to
/// (wrapping): nodes that pick addresses for different names at the same time rarely collide,
/// and a name keeps its address while it is free.
pub fn allocate_for(range: Cidr, used: &BTreeSet<Ipv4Addr>, name: &str) -> Result<Ipv4Addr, IpamError> {
    let hosts: Vec<Ipv4Addr> = range.hosts().collect();
    if hosts.is_empty() {
        return Err(IpamError::Exhausted { net: range.net, len: range.len });
    }
    // Stable across builds, so every node computes the same start.
    let start = (crate::hash::stable_hash(&[name.as_bytes()]) % hosts.len() as u64) as usize;
    hosts[start..]
        .iter()
        .chain(&hosts[..start])
        .find(|a| !used.contains(a))
        .copied()
        .ok_or(IpamError::Exhausted { net: range.net, len: range.len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_skipping_reserved() {
        let r = Cidr::new(Ipv4Addr::new(10, 42, 0, 0), 24).unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(allocate(r, &used), Ok(Ipv4Addr::new(10, 42, 0, 2)));
        used.insert(Ipv4Addr::new(10, 42, 0, 2));
        used.insert(Ipv4Addr::new(10, 42, 0, 4));
        assert_eq!(allocate(r, &used), Ok(Ipv4Addr::new(10, 42, 0, 3)));
    }

    #[test]
    fn by_name_is_stable_and_skips_used() {
        let r = Cidr::new(Ipv4Addr::new(10, 43, 0, 0), 16).unwrap();
        let a = allocate_for(r, &BTreeSet::new(), "app/web").unwrap();
        assert_eq!(allocate_for(r, &BTreeSet::new(), "app/web").unwrap(), a);
        assert_ne!(allocate_for(r, &BTreeSet::new(), "app/db").unwrap(), a);
        let next = allocate_for(r, &[a].into(), "app/web").unwrap();
        assert_ne!(next, a);
        let tiny = Cidr::new(Ipv4Addr::new(10, 43, 0, 0), 30).unwrap();
        assert!(allocate_for(tiny, &[Ipv4Addr::new(10, 43, 0, 2)].into(), "x").is_err());
    }

    #[test]
    fn exhaustion_and_bad_ranges() {
        let r = Cidr::new(Ipv4Addr::new(10, 42, 0, 0), 30).unwrap();
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 42, 0, 2)].into();
        assert!(matches!(allocate(r, &used), Err(IpamError::Exhausted { .. })));
        assert!(Cidr::new(Ipv4Addr::new(10, 42, 0, 1), 24).is_err());
        assert!(Cidr::new(Ipv4Addr::new(10, 42, 0, 0), 31).is_err());
        assert!(r.contains(Ipv4Addr::new(10, 42, 0, 3)) && !r.contains(Ipv4Addr::new(10, 42, 1, 3)));
    }
}
