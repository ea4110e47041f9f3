//! Services as the datapath sees them, and the pure planning of how a
//! service's backends are laid out in the maps (ids and slots).
//!
//! Nothing here touches the kernel: `plan_service` takes what is in the maps
//! now and what is wanted, and returns the writes, so it is tested without
//! root.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
};

use fizz_common::{IPPROTO_TCP, IPPROTO_UDP, MAX_BACKENDS_PER_SERVICE, MAX_BACKEND_IDS, MAX_SERVICES};
use serde::{Deserialize, Serialize};

/// A transport protocol a service port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    /// The protocol for an IP protocol number, if the datapath handles it.
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(ServiceError::BadProto(other.to_string())),
        }
    }
}

/// One exposed VIP port of a service; port 0 is "any port" (the backend
/// port is then 0 too: the client's port is kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.vip, self.port, self.proto)
    }
}

/// A backend address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl BackendAddr {
    /// The address and port in network byte order, as the datapath's maps
    /// hold them.
    pub fn network_order(&self) -> (u32, u16) {
        (u32::from(self.addr).to_be(), self.port.to_be())
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// What the datapath should do for one VIP port: spread flows over these
/// backends (healthy ones only; empty means reject).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub frontend: Frontend,
    pub backends: Vec<BackendAddr>,
}

/// Errors in a service request, before anything is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    /// The protocol is neither tcp nor udp.
    #[error("unknown protocol `{0}` (expected tcp or udp)")]
    BadProto(String),
    /// Too many backends for one service.
    #[error("service {frontend} has {count} backends; at most {max} are supported")]
    TooManyBackends { frontend: Frontend, count: usize, max: u32 },
    /// A backend is listed twice.
    #[error("service {frontend} lists backend {backend} twice")]
    DuplicateBackend { frontend: Frontend, backend: BackendAddr },
    /// Every service id is in use.
    #[error("no free service id: {max} services are in use")]
    NoServiceId { max: u32 },
    /// Every backend id is in use.
    #[error("no free backend id: {max} backends are in use")]
    NoBackendId { max: u32 },
}

/// What the maps hold for one service now, as read back from them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub id: u32,
    /// Backends in slot order, with their backend ids.
    pub backends: Vec<(BackendAddr, u32)>,
}

/// The writes that turn what is installed into what is wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub id: u32,
    /// The full slot table, in order: `(slot, backend, backend id)`.
    pub slots: Vec<(u32, BackendAddr, u32)>,
    /// Slots at and past this index are to be deleted (they held more backends before).
    pub stale_slots: std::ops::Range<u32>,
    /// Backends that go away: their conntrack entries must be purged.
    pub removed: Vec<(BackendAddr, u32)>,
    /// Backend ids that are new (their counters start from zero).
    pub new_backend_ids: Vec<u32>,
    /// Whether the service id is new (its counters start from zero).
    pub new_id: bool,
}

/// Ids in use across all services, so new ones never collide.
#[derive(Clone, Debug, Default)]
pub struct IdSpace {
    pub service_ids: BTreeSet<u32>,
    pub backend_ids: BTreeSet<u32>,
}

fn lowest_free(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
    let mut want = 0;
    for &id in used {
        if id > want {
            break;
        }
        if id == want {
            want += 1;
        }
    }
    (want < max).then_some(want)
}

/// Plans the writes for `spec` given what is `installed` (if anything).
///
/// Backends that stay keep their backend id, so their counters and
/// conntrack entries stay meaningful; the slot table is rewritten in the
/// order of `spec.backends`. Ids are taken from `ids` and recorded there.
pub fn plan_service(
    spec: &ServiceSpec,
    installed: Option<&Installed>,
    ids: &mut IdSpace,
) -> Result<Plan, ServiceError> {
    let fe = spec.frontend;
    if spec.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
        return Err(ServiceError::TooManyBackends {
            frontend: fe,
            count: spec.backends.len(),
            max: MAX_BACKENDS_PER_SERVICE,
        });
    }
    let mut seen = BTreeSet::new();
    for b in &spec.backends {
        if !seen.insert(*b) {
            return Err(ServiceError::DuplicateBackend { frontend: fe, backend: *b });
        }
    }
    let old: BTreeMap<BackendAddr, u32> = installed
        .map(|i| i.backends.iter().copied().collect())
        .unwrap_or_default();

    // Allocate on a copy so that an error leaves `ids` untouched.
    let mut next = ids.clone();
    let (id, new_id) = match installed {
        Some(i) => (i.id, false),
        None => {
            let id = lowest_free(&next.service_ids, MAX_SERVICES)
                .ok_or(ServiceError::NoServiceId { max: MAX_SERVICES })?;
            next.service_ids.insert(id);
            (id, true)
        }
    };
    let mut slots = Vec::with_capacity(spec.backends.len());
    let mut new_backend_ids = Vec::new();
    for (slot, b) in spec.backends.iter().enumerate() {
        let bid = match old.get(b) {
            Some(&bid) => bid,
            None => {
                let bid = lowest_free(&next.backend_ids, MAX_BACKEND_IDS)
                    .ok_or(ServiceError::NoBackendId { max: MAX_BACKEND_IDS })?;
                next.backend_ids.insert(bid);
                new_backend_ids.push(bid);
                bid
            }
        };
        slots.push((slot as u32, *b, bid));
    }
    let removed: Vec<(BackendAddr, u32)> =
        old.iter().filter(|(b, _)| !seen.contains(*b)).map(|(b, id)| (*b, *id)).collect();
    for (_, bid) in &removed {
        next.backend_ids.remove(bid);
    }
    let old_len = installed.map_or(0, |i| i.backends.len() as u32);
    *ids = next;
    Ok(Plan {
        id,
        stale_slots: (spec.backends.len() as u32)..old_len.max(spec.backends.len() as u32),
        slots,
        removed,
        new_backend_ids,
        new_id,
    })
}

/// Releases the ids of a service that is deleted.
pub fn release(installed: &Installed, ids: &mut IdSpace) {
    ids.service_ids.remove(&installed.id);
    for (_, bid) in &installed.backends {
        ids.backend_ids.remove(bid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe() -> Frontend {
        Frontend { vip: Ipv4Addr::new(10, 43, 0, 1), port: 80, proto: Proto::Tcp }
    }
    fn b(last: u8) -> BackendAddr {
        BackendAddr { addr: Ipv4Addr::new(10, 42, 0, last), port: 8080 }
    }
    fn spec(backends: &[u8]) -> ServiceSpec {
        ServiceSpec { frontend: fe(), backends: backends.iter().map(|&l| b(l)).collect() }
    }
    fn installed(plan: &Plan) -> Installed {
        Installed { id: plan.id, backends: plan.slots.iter().map(|(_, b, id)| (*b, *id)).collect() }
    }

    #[test]
    fn new_service_takes_lowest_ids() {
        let mut ids = IdSpace::default();
        ids.service_ids.insert(0);
        ids.backend_ids.extend([0, 2]);
        let p = plan_service(&spec(&[1, 2, 3]), None, &mut ids).unwrap();
        assert_eq!(p.id, 1);
        assert!(p.new_id);
        let bids: Vec<u32> = p.slots.iter().map(|s| s.2).collect();
        assert_eq!(bids, vec![1, 3, 4]);
        assert_eq!(p.new_backend_ids, vec![1, 3, 4]);
        assert_eq!(p.stale_slots, 3..3);
        assert!(p.removed.is_empty());
    }

    #[test]
    fn removing_a_backend_keeps_the_others_ids_and_marks_stale_slots() {
        let mut ids = IdSpace::default();
        let p1 = plan_service(&spec(&[1, 2, 3]), None, &mut ids).unwrap();
        let p2 = plan_service(&spec(&[1, 3]), Some(&installed(&p1)), &mut ids).unwrap();
        assert_eq!(p2.id, p1.id);
        assert!(!p2.new_id);
        assert_eq!(p2.slots, vec![(0, b(1), 0), (1, b(3), 2)]);
        assert_eq!(p2.stale_slots, 2..3);
        assert_eq!(p2.removed, vec![(b(2), 1)]);
        assert!(!ids.backend_ids.contains(&1), "the removed backend's id is free again");
        let p3 = plan_service(&spec(&[1, 3, 4]), Some(&installed(&p2)), &mut ids).unwrap();
        assert_eq!(p3.slots[2], (2, b(4), 1));
        assert_eq!(p3.new_backend_ids, vec![1]);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut ids = IdSpace::default();
        let err = plan_service(&spec(&[1, 1]), None, &mut ids).unwrap_err();
        assert_eq!(err, ServiceError::DuplicateBackend { frontend: fe(), backend: b(1) });
        assert!(ids.service_ids.is_empty() && ids.backend_ids.is_empty());
        let many = ServiceSpec {
            frontend: fe(),
            backends: (0..=MAX_BACKENDS_PER_SERVICE)
                .map(|i| BackendAddr { addr: Ipv4Addr::from(0x0a2a_0000 + i), port: 1 })
                .collect(),
        };
        assert!(matches!(plan_service(&many, None, &mut ids), Err(ServiceError::TooManyBackends { .. })));
        assert!(ids.service_ids.is_empty());
    }

    #[test]
    fn empty_backends_is_a_service_that_rejects() {
        let mut ids = IdSpace::default();
        let p = plan_service(&spec(&[]), None, &mut ids).unwrap();
        assert!(p.slots.is_empty());
        assert_eq!(p.stale_slots, 0..0);
    }

    #[test]
    fn release_frees_ids() {
        let mut ids = IdSpace::default();
        let p = plan_service(&spec(&[1, 2]), None, &mut ids).unwrap();
        release(&installed(&p), &mut ids);
        assert!(ids.service_ids.is_empty() && ids.backend_ids.is_empty());
    }

    #[test]
    fn proto_round_trips() {
        for p in [Proto::Tcp, Proto::Udp] {
            assert_eq!(p.to_string().parse::<Proto>().unwrap(), p);
            assert_eq!(Proto::from_number(p.number()), Some(p));
        }
        assert!("sctp".parse::<Proto>().is_err());
    }
}
