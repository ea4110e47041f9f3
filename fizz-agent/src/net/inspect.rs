//! A read-only view of a node's live datapath, read from the pinned maps and
//! program: it works whether or not the agent is running.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::programs::SchedClassifier;
use fizz_common::{drop_reason, verdict, Counter, CT_FLAG_FIN, CT_FLAG_REPLIED, CT_FLAG_RST, CT_FORWARD, PROG_FROM_CONTAINER};
use serde::Serialize;

use super::{
    ebpf::{self, ifname, Error, Maps},
    service::{BackendAddr, Frontend, Proto},
};

/// Everything `fizz net inspect` shows.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub pin_dir: String,
    pub program: Option<ProgramView>,
    pub attached: Vec<LinkView>,
    pub services: Vec<ServiceView>,
    pub endpoints: Vec<EndpointView>,
    pub conntrack: Vec<FlowView>,
    /// Other nodes' container ranges and the tunnel they are sent into.
    pub remotes: Vec<RemoteView>,
    /// Other nodes' containers whose networks are checked on arrival.
    pub remote_endpoints: Vec<RemoteEndpointView>,
    pub verdicts: BTreeMap<&'static str, CountView>,
    pub drops: BTreeMap<&'static str, CountView>,
}

/// A route to another node's containers.
#[derive(Debug, Serialize)]
pub struct RemoteView {
    pub range: String,
    pub ifindex: u32,
    pub ifname: Option<String>,
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CountView {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CountView {
    fn from(c: Counter) -> Self {
        CountView { packets: c.packets, bytes: c.bytes }
    }
}

#[derive(Debug, Serialize)]
pub struct ProgramView {
    pub name: &'static str,
    pub id: u32,
    pub tag: String,
    /// Runs counted while `kernel.bpf_stats_enabled` was 1.
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_run: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LinkView {
    pub ifname: String,
    pub ifindex: u32,
    /// Whether the interface still exists in this network namespace.
    pub present: bool,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub frontend: Frontend,
    pub id: u32,
    /// Packets and bytes of flows NAT'd per packet (at TC).
    pub packets: u64,
    pub bytes: u64,
    /// Flows balanced at the socket: TCP connections at connect time, and
    /// unconnected UDP sockets' first datagram to the VIP (their packets
    /// take the direct path and are not counted above).
    pub connects: u64,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub slot: u32,
    pub backend: BackendAddr,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    /// Flows balanced to it at the socket (as `ServiceView::connects`).
    pub connects: u64,
    /// Conntrack flows through this backend now.
    pub flows: u64,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub addr: Ipv4Addr,
    pub ifindex: u32,
    pub ifname: Option<String>,
    pub mac: String,
    /// Its networks, one bit each (0: unrestricted).
    pub net_mask: u64,
}

/// A container of another node, with the networks its node reported.
#[derive(Debug, Serialize)]
pub struct RemoteEndpointView {
    pub addr: Ipv4Addr,
    pub net_mask: u64,
}

#[derive(Debug, Serialize)]
pub struct FlowView {
    pub proto: String,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    pub state: &'static str,
    pub idle_s: f64,
    pub age_s: f64,
}

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn sock(addr_be: u32, port_be: u16) -> String {
    format!("{}:{}", Ipv4Addr::from(u32::from_be(addr_be)), u16::from_be(port_be))
}

/// Reads the datapath pinned under `pin_dir`.
pub fn snapshot(pin_dir: &Path) -> Result<Snapshot, Error> {
    let maps = Maps::open(&ebpf::maps_dir(pin_dir))?;
    let now = ebpf::monotonic_ns();

    let program = SchedClassifier::from_pin(pin_dir.join(PROG_FROM_CONTAINER)).ok().and_then(|p| {
        let info = p.info().ok()?;
        let runs = info.run_count();
        let ns = info.run_time().as_nanos() as u64;
        Some(ProgramView {
            name: PROG_FROM_CONTAINER,
            id: info.id(),
            tag: format!("{:016x}", info.tag()),
            run_count: runs,
            run_time_ns: ns,
            ns_per_run: (runs > 0).then(|| ns as f64 / runs as f64),
        })
    });

    let mut attached: Vec<LinkView> = ebpf::list_links(pin_dir)?
        .into_iter()
        .map(|(name, ifindex)| LinkView { present: ifname(ifindex).as_deref() == Some(name.as_str()), ifname: name, ifindex })
        .collect();
    attached.sort_by(|a, b| a.ifname.cmp(&b.ifname));

    let ct = maps.conntrack.entries()?;
    let by_key: std::collections::HashMap<fizz_common::CtKey, &fizz_common::CtValue> = ct.iter().map(|(k, v)| (*k, v)).collect();
    let mut flows_per_backend: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut conntrack = Vec::new();
    for (k, v) in &ct {
        if v.kind & !fizz_common::CT_HAIRPIN != CT_FORWARD {
            continue;
        }
        *flows_per_backend.entry((v.svc_id, v.backend_id)).or_default() += 1;
        let rev_flags = by_key.get(&k.peer(v)).map_or(0, |pv| pv.flags);
        let flags = v.flags | rev_flags;
        let state = if flags & CT_FLAG_RST != 0 {
            "reset"
        } else if flags & CT_FLAG_FIN != 0 {
            "closing"
        } else if flags & CT_FLAG_REPLIED != 0 {
            "established"
        } else {
            "new"
        };
        conntrack.push(FlowView {
            proto: Proto::from_number(k.proto).map_or_else(|| k.proto.to_string(), |p| p.to_string()),
            client: sock(k.src_be, k.sport_be),
            frontend: sock(k.dst_be, k.dport_be),
            backend: sock(v.nat_addr_be, v.nat_port_be),
            state,
            idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
            age_s: now.saturating_sub(v.created_ns) as f64 / 1e9,
        });
    }
    conntrack.sort_by(|a, b| (&a.frontend, &a.client).cmp(&(&b.frontend, &b.client)));

    let mut services = Vec::new();
    for (k, v) in maps.services.entries()? {
        let Some(proto) = Proto::from_number(k.proto) else { continue };
        let frontend = Frontend { vip: Ipv4Addr::from(u32::from_be(k.vip_be)), port: u16::from_be(k.port_be), proto };
        let mut backends = Vec::new();
        for slot in 0..v.count {
            if let Some(b) = maps.backends.get(&fizz_common::BackendKey { svc_id: v.id, slot })? {
                let bs = maps.backend_stats.get(b.id)?;
                backends.push(BackendView {
                    slot,
                    backend: BackendAddr { addr: Ipv4Addr::from(u32::from_be(b.addr_be)), port: u16::from_be(b.port_be) },
                    id: b.id,
                    packets: bs.packets,
                    bytes: bs.bytes,
                    connects: maps.sock_connects.get(b.id)?.packets,
                    flows: flows_per_backend.get(&(v.id, b.id)).copied().unwrap_or(0),
                });
            }
        }
        // A service's traffic is the sum over its backends (ids are per service).
        let packets = backends.iter().map(|b| b.packets).sum();
        let bytes = backends.iter().map(|b| b.bytes).sum();
        let connects = backends.iter().map(|b| b.connects).sum();
        services.push(ServiceView { frontend, id: v.id, packets, bytes, connects, backends });
    }
    services.sort_by_key(|s| s.frontend);

    let mut endpoints: Vec<EndpointView> = maps
        .endpoints
        .entries()?
        .into_iter()
        .map(|(k, v)| EndpointView {
            addr: Ipv4Addr::from(u32::from_be(k.addr_be)),
            ifindex: v.ifindex,
            ifname: ifname(v.ifindex),
            mac: mac(&v.mac),
            net_mask: v.net_mask,
        })
        .collect();
    endpoints.sort_by_key(|e| e.addr);

    let mut verdicts = BTreeMap::new();
    for i in 0..verdict::MAX {
        verdicts.insert(verdict::name(i), maps.verdicts.get(i)?.into());
    }
    let mut drops = BTreeMap::new();
    for i in 1..drop_reason::MAX {
        let c = maps.drops.get(i)?;
        if c.packets > 0 {
            drops.insert(drop_reason::name(i), c.into());
        }
    }

    let remotes = maps
        .remotes
        .entries()?
        .into_iter()
        .map(|(net, len, r)| RemoteView { range: format!("{net}/{len}"), ifindex: r.ifindex, ifname: ifname(r.ifindex) })
        .collect();

    let mut remote_endpoints: Vec<RemoteEndpointView> = maps
        .remote_endpoints
        .entries()?
        .into_iter()
        .map(|(k, v)| RemoteEndpointView { addr: Ipv4Addr::from(u32::from_be(k.addr_be)), net_mask: v.net_mask })
        .collect();
    remote_endpoints.sort_by_key(|e| e.addr);

    Ok(Snapshot {
        remotes,
        remote_endpoints,
        pin_dir: pin_dir.display().to_string(),
        program,
        attached,
        services,
        endpoints,
        conntrack,
        verdicts,
        drops,
    })
}
