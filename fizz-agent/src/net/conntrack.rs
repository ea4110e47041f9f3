//! Conntrack entry lifetimes and purges, as pure functions over the entries
//! read from `FZ_CONNTRACK`. The datapath only creates and refreshes entries;
//! the agent decides when they expire and deletes both directions together.

use std::time::Duration;

use fizz_common::{
    CtKey, CtValue, CT_FLAG_FIN, CT_FLAG_REPLIED, CT_FLAG_RST, CT_FORWARD, CT_HAIRPIN, CT_REPLY, IPPROTO_TCP,
};

/// Idle timeouts by flow state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP with a reply seen and no FIN/RST.
    pub tcp_established: Duration,
    /// TCP with no reply yet (a SYN that went nowhere).
    pub tcp_unreplied: Duration,
    /// TCP after a FIN or RST in either direction.
    pub tcp_closing: Duration,
    /// UDP, whatever its state.
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_unreplied: Duration::from_secs(60),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// Whether a flow has been idle past its timeout. `other` is the entry of
/// the other direction, when it still exists.
pub fn expired(
    key: &CtKey,
    value: &CtValue,
    other: Option<&CtValue>,
    now_ns: u64,
    t: &Timeouts,
) -> bool {
    let last = other.map_or(value.last_seen_ns, |o| o.last_seen_ns.max(value.last_seen_ns));
    let flags = other.map_or(value.flags, |o| o.flags | value.flags);
    let idle = Duration::from_nanos(now_ns.saturating_sub(last));
    let limit = if key.proto == IPPROTO_TCP {
        if flags & (CT_FLAG_FIN | CT_FLAG_RST) != 0 {
            t.tcp_closing
        } else if flags & CT_FLAG_REPLIED != 0 {
            t.tcp_established
        } else {
            t.tcp_unreplied
        }
    } else {
        t.udp
    };
    idle > limit
}

/// Whether an entry belongs to a flow through backend `backend_id` of
/// service `svc_id` (to purge when that backend is removed).
pub fn uses_backend(value: &CtValue, svc_id: u32, backend_id: u32) -> bool {
    let kind = value.kind & !CT_HAIRPIN;
    (kind == CT_FORWARD || kind == CT_REPLY)
        && value.svc_id == svc_id
        && value.backend_id == backend_id
}

/// The keys to delete among `entries`: expired flows, both directions.
pub fn sweep(entries: &[(CtKey, CtValue)], now_ns: u64, t: &Timeouts) -> Vec<CtKey> {
    let index: std::collections::HashMap<CtKey, &CtValue> =
        entries.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = Vec::new();
    for (k, v) in entries {
        let peer = k.peer(v);
        let other = index.get(&peer).copied();
        if expired(k, v, other, now_ns, t) {
            out.push(*k);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn pair(proto: u8, flags_fwd: u8, flags_rev: u8, last: u64) -> [(CtKey, CtValue); 2] {
        let client = u32::from_ne_bytes([10, 42, 0, 2]);
        let vip = u32::from_ne_bytes([10, 43, 0, 1]);
        let backend = u32::from_ne_bytes([10, 42, 0, 3]);
        let fk = CtKey { src_be: client, dst_be: vip, sport_be: 1000u16.to_be(), dport_be: 80u16.to_be(), proto, _pad: [0; 3] };
        let fv = CtValue {
            nat_addr_be: backend,
            nat_port_be: 8080u16.to_be(),
            kind: CT_FORWARD,
            flags: flags_fwd,
            svc_id: 1,
            backend_id: 7,
            created_ns: 0,
            last_seen_ns: last,
        };
        let rk = fk.peer(&fv);
        let rv = CtValue { nat_addr_be: vip, nat_port_be: 80u16.to_be(), kind: CT_REPLY, flags: flags_rev, ..fv };
        [(fk, fv), (rk, rv)]
    }

    #[test]
    fn peer_keys_are_inverse() {
        let [(fk, fv), (rk, rv)] = pair(IPPROTO_TCP, 0, 0, 0);
        assert_eq!(fk.peer(&fv), rk);
        assert_eq!(rk.peer(&rv), fk);
    }

    #[test]
    fn hairpin_peer_keys_are_inverse() {
        // Client 10.42.0.3 is sent to itself: the reply is addressed to the VIP.
        let [(mut fk, mut fv), _] = pair(IPPROTO_TCP, 0, 0, 0);
        fk.src_be = fv.nat_addr_be;
        fv.kind |= CT_HAIRPIN;
        let rk = fk.peer(&fv);
        assert_eq!((rk.src_be, rk.dst_be), (fv.nat_addr_be, fk.dst_be));
        let rv = CtValue { nat_addr_be: fk.dst_be, nat_port_be: fk.dport_be, kind: CT_REPLY | CT_HAIRPIN, ..fv };
        assert_eq!(rk.peer(&rv), fk);
    }

    /// (protocol, forward flags, reply flags, idle seconds) → expired?
    #[test]
    fn lifetimes() {
        let t = Timeouts::default();
        let cases: &[(u8, u8, u8, u64, bool)] = &[
            (IPPROTO_TCP, 0, 0, 59, false),
            (IPPROTO_TCP, 0, 0, 61, true),
            (IPPROTO_TCP, 0, CT_FLAG_REPLIED, 61, false),
            (IPPROTO_TCP, 0, CT_FLAG_REPLIED, 6 * 3600 + 1, true),
            (IPPROTO_TCP, CT_FLAG_FIN, CT_FLAG_REPLIED, 11, true),
            (IPPROTO_TCP, 0, CT_FLAG_REPLIED | CT_FLAG_RST, 9, false),
            (IPPROTO_TCP, 0, CT_FLAG_REPLIED | CT_FLAG_RST, 11, true),
            (fizz_common::IPPROTO_UDP, 0, 0, 59, false),
            (fizz_common::IPPROTO_UDP, 0, 0, 61, true),
        ];
        for &(proto, ff, rf, idle, want) in cases {
            let entries = pair(proto, ff, rf, 1000 * S);
            let dead = sweep(&entries, (1000 + idle) * S, &t);
            let got = dead.len() == 2;
            assert_eq!(got, want, "proto {proto} flags {ff}/{rf} idle {idle}s");
            assert!(dead.is_empty() || dead.len() == 2, "both directions go together");
        }
    }

    #[test]
    fn the_newer_direction_keeps_the_flow_alive() {
        let t = Timeouts::default();
        let mut entries = pair(fizz_common::IPPROTO_UDP, 0, 0, 0);
        entries[1].1.last_seen_ns = 100 * S;
        assert!(sweep(&entries, 120 * S, &t).is_empty());
    }

    #[test]
    fn purge_matches_only_that_backend() {
        let [(_, fv), (_, rv)] = pair(IPPROTO_TCP, 0, 0, 0);
        assert!(uses_backend(&fv, 1, 7) && uses_backend(&rv, 1, 7));
        assert!(!uses_backend(&fv, 1, 8) && !uses_backend(&fv, 2, 7));
    }
}
