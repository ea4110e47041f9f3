//! The datapath program on crafted packets, through `BPF_PROG_TEST_RUN`:
//! every input yields a defined verdict, and a rewrite only where one is due.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use fizz::net::{
    ebpf::test_run::{test_run, TestRun},
    service::{BackendAddr, Frontend, Proto, ServiceSpec},
    Datapath,
};
use fizz_common::{drop_reason, CtKey, Endpoint, CT_FLAG_FIN, IPPROTO_TCP};
use fizz_tests::{
    packet::{parse, Frame, ICMP, TCP, UDP},
    pin_root, require_root, unique, PinDir,
};

const OK: u32 = 0;
const SHOT: u32 = 2;
const REDIRECT: u32 = 7;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 11);
const ANY_PORT_VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 12);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 5);
const BACKEND_MAC: [u8; 6] = [0x0a, 0x58, 10, 42, 0, 5];
const NODE_MAC: [u8; 6] = [0x0a, 0x58, 0xee, 0, 0, 1];

struct Fixture {
    dp: Datapath,
    _pins: PinDir,
}

fn fixture() -> Fixture {
    let pins = PinDir(pin_root().join(unique("P")));
    let mut dp = Datapath::open(&pins.0, Default::default()).expect("load datapath");
    let svc = |vip, port, proto, backends: &[(Ipv4Addr, u16)]| ServiceSpec {
        frontend: Frontend { vip, port, proto },
        backends: backends.iter().map(|&(addr, port)| BackendAddr { addr, port }).collect(),
    };
    dp.set_service(&svc(VIP, 80, Proto::Tcp, &[(BACKEND, 8080)])).unwrap();
    dp.set_service(&svc(VIP, 53, Proto::Udp, &[(BACKEND, 5353)])).unwrap();
    dp.set_service(&svc(EMPTY_VIP, 80, Proto::Tcp, &[])).unwrap();
    dp.set_service(&svc(ANY_PORT_VIP, 0, Proto::Tcp, &[(BACKEND, 0)])).unwrap();
    dp.set_service(&svc(ANY_PORT_VIP, 443, Proto::Tcp, &[(BACKEND, 8443)])).unwrap();
    dp.set_endpoint(BACKEND, Endpoint { ifindex: 1, mac: BACKEND_MAC, node_mac: NODE_MAC, net_mask: 0, netns_cookie: 0 }).unwrap();
    Fixture { dp, _pins: pins }
}

fn run(f: &Fixture, frame: &[u8]) -> TestRun {
    test_run(f.dp.program(), frame).expect("BPF_PROG_TEST_RUN")
}

fn drops(f: &Fixture, reason: u32) -> u64 {
    f.dp.maps().drops.get(reason).unwrap().packets
}

#[test]
fn vip_tcp_is_dnatted_to_the_backend_and_replies_are_reverse_natted() {
    require_root!();
    let f = fixture();
    let mut syn = Frame::tcp(CLIENT, 40000, VIP, 80);
    syn.payload = b"hello".to_vec();
    let out = run(&f, &syn.build());
    assert_eq!(out.retval, REDIRECT, "redirected to the local backend");
    let p = parse(&out.data).expect("IPv4 out");
    assert_eq!((p.src, p.sport, p.dst, p.dport), (CLIENT, 40000, BACKEND, 8080));
    assert_eq!(p.ttl, 64, "local delivery is a switch's: the TTL is kept");
    assert_eq!(p.dst_mac, BACKEND_MAC);
    assert_eq!(p.src_mac, NODE_MAC);
    assert!(p.ip_csum_ok && p.l4_csum_ok, "checksums fixed: {p:?}");
    assert_eq!(p.payload, b"hello");

    // The backend's reply goes back out as the VIP.
    let mut reply = Frame::tcp(BACKEND, 8080, CLIENT, 40000);
    reply.tcp_flags = 0x12;
    let out = run(&f, &reply.build());
    assert_eq!(out.retval, OK, "the client is not local here: handed to the stack");
    let p = parse(&out.data).unwrap();
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 80, CLIENT, 40000));
    assert!(p.ip_csum_ok && p.l4_csum_ok);

    // Later packets of the flow stick to the same backend.
    let mut ack = Frame::tcp(CLIENT, 40000, VIP, 80);
    ack.tcp_flags = 0x10;
    let p = parse(&run(&f, &ack.build()).data).unwrap();
    assert_eq!((p.dst, p.dport), (BACKEND, 8080));

    let snap = fizz::net::inspect::snapshot(f.dp.pin_dir()).unwrap();
    let flow = snap.conntrack.iter().find(|c| c.client == "10.42.0.2:40000").expect("flow tracked");
    assert_eq!(flow.backend, "10.42.0.5:8080");
    assert_eq!(flow.state, "established");
    let svc = snap.services.iter().find(|s| s.frontend.port == 80 && s.frontend.vip == VIP).unwrap();
    assert_eq!(svc.packets, 3, "both directions count for the service");
}

#[test]
fn vip_udp_is_dnatted_and_a_zero_checksum_stays_zero() {
    require_root!();
    let f = fixture();
    let frame = Frame::udp(CLIENT, 5000, VIP, 53).build();
    let p = parse(&run(&f, &frame).data).unwrap();
    assert_eq!((p.dst, p.dport), (BACKEND, 5353));
    assert!(p.ip_csum_ok && p.l4_csum_ok);

    let mut zero = Frame::udp(CLIENT, 5001, VIP, 53).build();
    zero[14 + 20 + 6] = 0;
    zero[14 + 20 + 7] = 0;
    let out = run(&f, &zero);
    assert_eq!(out.data[14 + 20 + 6..14 + 20 + 8], [0, 0], "no checksum means none is invented");
    assert_eq!(parse(&out.data).unwrap().dport, 5353);
}

/// Outside the VIP range, conntrack is consulted only for a destination
/// marked as the client of a flow NAT'd here: a new flow marks its client,
/// removing the client's endpoint clears the mark (its flows are over), and a
/// datapath opened over existing flows (an agent restart, an upgrade) marks
/// their clients again before its programs run.
#[test]
fn replies_are_looked_up_only_for_marked_clients() {
    require_root!();
    let mut f = fixture();
    let marked = |dp: &Datapath, a: Ipv4Addr| dp.maps().local_slots.is_marked(u32::from(a).to_be());
    let client = Endpoint { ifindex: 1, mac: [0x0a, 0x58, 10, 42, 0, 2], node_mac: NODE_MAC, net_mask: 0, netns_cookie: 0 };
    f.dp.set_endpoint(CLIENT, client).unwrap();
    assert!(!marked(&f.dp, CLIENT), "no flow yet");

    let _ = run(&f, &Frame::udp(CLIENT, 5100, VIP, 53).build());
    assert!(marked(&f.dp, CLIENT), "a NAT'd flow marks its client");
    assert!(!marked(&f.dp, BACKEND), "and only its client");
    // The flag shares the endpoint's slot: changing the endpoint keeps it.
    f.dp.set_endpoint(CLIENT, Endpoint { ifindex: 2, ..client }).unwrap();
    assert_eq!(f.dp.maps().local_slots.get(u32::from(CLIENT).to_be()).ep.ifindex, 2);
    assert!(marked(&f.dp, CLIENT), "an endpoint change leaves the flag");
    let reply = Frame::udp(BACKEND, 5353, CLIENT, 5100).build();
    let p = parse(&run(&f, &reply).data).unwrap();
    assert_eq!((p.src, p.sport), (VIP, 53), "the reply is reverse-NAT'd");

    f.dp.remove_endpoint(CLIENT).unwrap();
    assert!(!marked(&f.dp, CLIENT), "a removed client is unmarked");
    let p = parse(&run(&f, &reply).data).unwrap();
    assert_eq!((p.src, p.sport), (BACKEND, 5353), "an unmarked destination is not looked up");

    let reopened = Datapath::open(f.dp.pin_dir(), Default::default()).expect("reopen the datapath");
    assert!(marked(&reopened, CLIENT), "the client of a flow in conntrack is marked again");
    let p = parse(&test_run(reopened.program(), &reply).unwrap().data).unwrap();
    assert_eq!((p.src, p.sport), (VIP, 53));
}

/// Local delivery reads an endpoint from its address's slot in
/// `LOCAL_SLOTS`: addresses sharing a slot are found in `ENDPOINTS`, a slot
/// being changed (odd `seq`) is not trusted, a removed endpoint's slot goes
/// to one sharing it, and a datapath opened over stale slots mends them
/// before its programs run.
#[test]
fn endpoints_are_read_from_their_slot_and_a_shared_or_changing_slot_falls_back() {
    require_root!();
    let mut f = fixture();
    // 4,096 addresses apart: the same slot.
    let a = Ipv4Addr::new(10, 42, 0, 7);
    let b = Ipv4Addr::new(10, 42, 16, 7);
    let ep = |last: u8| Endpoint { ifindex: 1, mac: [0x0a, 0x58, 0, 0, 0, last], node_mac: NODE_MAC, net_mask: 0, netns_cookie: 0 };
    let be = |x: Ipv4Addr| u32::from(x).to_be();
    let to = |f: &Fixture, dst: Ipv4Addr| {
        let out = run(f, &Frame::udp(CLIENT, 6000, dst, 7).build());
        (out.retval, parse(&out.data).unwrap().dst_mac[5])
    };
    f.dp.set_endpoint(a, ep(0xa)).unwrap();
    f.dp.set_endpoint(b, ep(0xb)).unwrap();
    let slot = f.dp.maps().local_slots.get(be(a));
    assert_eq!((slot.addr_be, slot.ep, slot.seq % 2), (be(a), ep(0xa), 0), "the first address takes the slot");
    assert_eq!(to(&f, a), (REDIRECT, 0xa));
    assert_eq!(to(&f, b), (REDIRECT, 0xb), "the second is found in ENDPOINTS");

    // A slot caught mid-change (odd seq, another container's endpoint) is not trusted.
    let maps_dir = fizz::net::ebpf::maps_dir(f.dp.pin_dir());
    let mut maps = fizz::net::ebpf::maps::Maps::open(&maps_dir).unwrap();
    let torn = fizz_common::LocalSlot { addr_be: be(a), seq: slot.seq + 1, ep: ep(0xb), ..Default::default() };
    maps.local_slots.set(be(a), be(a), ep(0xb));
    assert_eq!(to(&f, a), (REDIRECT, 0xb), "a settled slot is trusted as it is");
    maps.local_slots.set(be(a), be(a), ep(0xa));
    let raw = |m: &mut fizz::net::ebpf::maps::Maps, v: fizz_common::LocalSlot| m.local_slots.write_raw(be(a), v);
    raw(&mut maps, torn);
    assert_eq!(to(&f, a), (REDIRECT, 0xa), "a changing slot: ENDPOINTS answers");
    maps.local_slots.set(be(a), be(a), ep(0xa));
    assert_eq!(f.dp.maps().local_slots.get(be(a)).seq % 2, 0, "a change ends even");

    // The slot's owner leaves: the address sharing it takes the slot.
    f.dp.remove_endpoint(a).unwrap();
    let slot = f.dp.maps().local_slots.get(be(b));
    assert_eq!((slot.addr_be, slot.ep), (be(b), ep(0xb)));
    assert_eq!(to(&f, b), (REDIRECT, 0xb));
    assert_eq!(to(&f, a).0, OK, "a removed container is not delivered to");
    f.dp.remove_endpoint(b).unwrap();
    assert_eq!(f.dp.maps().local_slots.get(be(b)).addr_be, 0, "the last one empties the slot");

    // Stale slots (an address no longer in ENDPOINTS; an endpoint without
    // its slot) are mended when the datapath opens.
    f.dp.set_endpoint(b, ep(0xb)).unwrap();
    raw(&mut maps, fizz_common::LocalSlot { addr_be: be(a), seq: 0, ep: ep(0xa), ..Default::default() });
    assert_eq!(to(&f, a), (REDIRECT, 0xa), "a stale slot misleads the program");
    let reopened = Datapath::open(f.dp.pin_dir(), Default::default()).expect("reopen the datapath");
    let slot = reopened.maps().local_slots.get(be(b));
    assert_eq!((slot.addr_be, slot.ep, slot.seq % 2), (be(b), ep(0xb), 0), "the slot is the endpoint's again");
    let out = test_run(reopened.program(), &Frame::udp(CLIENT, 6000, a, 7).build()).unwrap();
    assert_eq!(out.retval, OK, "the departed address is not delivered to");
}

#[test]
fn a_vip_whose_slot_holds_a_container_is_still_balanced() {
    require_root!();
    let mut f = fixture();
    // 10.42.0.10 and the VIP 10.43.0.10 share a slot (the low 12 bits).
    let neighbour = Ipv4Addr::new(10, 42, 0, 10);
    let ep = Endpoint { ifindex: 1, mac: [0x0a, 0x58, 10, 42, 0, 10], node_mac: NODE_MAC, net_mask: 0, netns_cookie: 0 };
    f.dp.set_endpoint(neighbour, ep).unwrap();
    assert_eq!(f.dp.maps().local_slots.get(u32::from(VIP).to_be()).addr_be, u32::from(neighbour).to_be());
    let out = run(&f, &Frame::tcp(CLIENT, 40001, VIP, 80).build());
    assert_eq!(out.retval, REDIRECT);
    let p = parse(&out.data).unwrap();
    assert_eq!((p.dst, p.dport, p.dst_mac), (BACKEND, 8080, BACKEND_MAC), "the VIP is balanced");
    let out = run(&f, &Frame::udp(CLIENT, 6000, neighbour, 7).build());
    assert_eq!((out.retval, parse(&out.data).unwrap().dst_mac[5]), (REDIRECT, 10), "the container is delivered to");
}

#[test]
fn maps_of_an_older_layout_are_unpinned_when_the_datapath_opens_and_verdicts_still_count() {
    require_root!();
    let f = fixture();
    let maps_dir = fizz::net::ebpf::maps_dir(f.dp.pin_dir());
    // Stand-ins for the maps older datapaths pinned under these names.
    let old = [fizz_common::map_names::NAT_CLIENTS, fizz_common::map_names::VERDICTS];
    for name in old {
        let any = aya::maps::MapData::from_pin(maps_dir.join(fizz_common::map_names::CONFIG)).unwrap();
        any.pin(maps_dir.join(name)).unwrap();
    }
    let reopened = Datapath::open(f.dp.pin_dir(), Default::default()).expect("reopen the datapath");
    for name in old {
        assert!(!maps_dir.join(name).exists(), "{name} is unpinned");
    }
    let before = reopened.maps().verdicts.get(fizz_common::verdict::REDIRECT_LOCAL).unwrap().packets;
    let out = test_run(reopened.program(), &Frame::udp(CLIENT, 6000, BACKEND, 7).build()).unwrap();
    assert_eq!(out.retval, REDIRECT);
    let after = reopened.maps().verdicts.get(fizz_common::verdict::REDIRECT_LOCAL).unwrap().packets;
    assert_eq!(after, before + 1, "the verdict is counted in FZ_CPU_VERDICTS");
}

#[test]
fn a_service_without_declared_ports_takes_any_port_and_exact_ports_win() {
    require_root!();
    let f = fixture();
    let p = parse(&run(&f, &Frame::tcp(CLIENT, 40020, ANY_PORT_VIP, 5432).build()).data).unwrap();
    assert_eq!((p.dst, p.dport), (BACKEND, 5432), "the client's port is kept");
    assert!(p.ip_csum_ok && p.l4_csum_ok);
    let p = parse(&run(&f, &Frame::tcp(CLIENT, 40021, ANY_PORT_VIP, 443).build()).data).unwrap();
    assert_eq!((p.dst, p.dport), (BACKEND, 8443), "an exact entry wins");
    // Replies of the any-port flow come back from the VIP's port.
    let mut reply = Frame::tcp(BACKEND, 5432, CLIENT, 40020);
    reply.tcp_flags = 0x12;
    let p = parse(&run(&f, &reply.build()).data).unwrap();
    assert_eq!((p.src, p.sport), (ANY_PORT_VIP, 5432));
    // UDP has no any-port entry here: the VIP rejects it.
    let p = parse(&run(&f, &Frame::udp(CLIENT, 40022, ANY_PORT_VIP, 53).build()).data).unwrap();
    assert_eq!(p.proto, ICMP);
}

#[test]
fn a_client_sent_to_itself_sees_the_vip_as_its_peer() {
    require_root!();
    let f = fixture();
    // The backend calls its own service, and is picked.
    let out = run(&f, &Frame::tcp(BACKEND, 40030, VIP, 80).build());
    assert_eq!(out.retval, REDIRECT);
    let p = parse(&out.data).unwrap();
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 40030, BACKEND, 8080), "not a martian: the source is the VIP");
    assert!(p.ip_csum_ok && p.l4_csum_ok, "{p:?}");
    // Its server's reply goes to the VIP, and comes back as VIP:80 → client.
    let mut reply = Frame::tcp(BACKEND, 8080, VIP, 40030);
    reply.tcp_flags = 0x12;
    let out = run(&f, &reply.build());
    assert_eq!(out.retval, REDIRECT);
    let p = parse(&out.data).unwrap();
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 80, BACKEND, 40030));
    assert!(p.ip_csum_ok && p.l4_csum_ok, "{p:?}");
    let snap = fizz::net::inspect::snapshot(f.dp.pin_dir()).unwrap();
    let flow = snap.conntrack.iter().find(|c| c.client == "10.42.0.5:40030").expect("tracked");
    assert_eq!(flow.state, "established", "both directions paired");
}

#[test]
fn a_direct_connection_reusing_a_closed_vip_flows_ports_is_not_rewritten() {
    require_root!();
    let f = fixture();
    let _ = run(&f, &Frame::tcp(CLIENT, 40041, VIP, 80).build());
    let mut fin = Frame::tcp(CLIENT, 40041, VIP, 80);
    fin.tcp_flags = 0x11;
    let _ = run(&f, &fin.build());
    // The same client port, straight to the backend.
    let out = run(&f, &Frame::tcp(CLIENT, 40041, BACKEND, 8080).build());
    assert_eq!(parse(&out.data).unwrap().dst, BACKEND);
    let mut synack = Frame::tcp(BACKEND, 8080, CLIENT, 40041);
    synack.tcp_flags = 0x12;
    let p = parse(&run(&f, &synack.build()).data).unwrap();
    assert_eq!((p.src, p.sport), (BACKEND, 8080), "the answer of a direct connection keeps its source");
    // And a new SYN to the VIP from that port is a new flow again.
    let p = parse(&run(&f, &Frame::tcp(CLIENT, 40041, VIP, 80).build()).data).unwrap();
    assert_eq!((p.dst, p.dport), (BACKEND, 8080));
    let mut synack = Frame::tcp(BACKEND, 8080, CLIENT, 40041);
    synack.tcp_flags = 0x12;
    let p = parse(&run(&f, &synack.build()).data).unwrap();
    assert_eq!((p.src, p.sport), (VIP, 80));
}

/// The conntrack key of a TCP flow from `src` to `dst`.
fn tcp_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> CtKey {
    CtKey::new(u32::from(src.0).to_be(), u32::from(dst.0).to_be(), src.1.to_be(), dst.1.to_be(), IPPROTO_TCP)
}

/// A TCP segment from `src` to `dst` with these flags.
fn segment(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), tcp_flags: u8) -> Vec<u8> {
    let mut f = Frame::tcp(src.0, src.1, dst.0, dst.1);
    f.tcp_flags = tcp_flags;
    f.build()
}

/// A new flow through the tunnel (a SYN, any UDP datagram) from a container
/// of another node reaches a local container only when the two share a
/// network; a source no node reported is let through, as locally, and so are
/// a flow's later segments (its SYN was checked).
#[test]
fn a_new_flow_from_another_nodes_container_must_share_a_network_with_its_local_destination() {
    require_root!();
    let mut f = fixture();
    let same = Ipv4Addr::new(10, 42, 1, 7);
    let other = Ipv4Addr::new(10, 42, 1, 8);
    let stranger = Ipv4Addr::new(10, 42, 1, 9);
    f.dp.set_endpoint(BACKEND, Endpoint { ifindex: 1, mac: BACKEND_MAC, node_mac: NODE_MAC, net_mask: 0b01, netns_cookie: 0 })
        .unwrap();
    assert_eq!(f.dp.set_remote_endpoints(&[(same, 0b11), (other, 0b10)].into()).unwrap(), 2);
    // The tunnel carries bare IPv4: the frame without its Ethernet header.
    let from = |src: Ipv4Addr, tcp_flags: Option<u8>| -> Vec<u8> {
        let frame = match tcp_flags {
            Some(flags) => segment((src, 40000), (BACKEND, 8080), flags),
            None => Frame::udp(src, 40000, BACKEND, 5353).build(),
        };
        frame[14..].to_vec()
    };
    let wg = |f: &Fixture, pkt: Vec<u8>| test_run(f.dp.wireguard_program(), &pkt).expect("BPF_PROG_TEST_RUN").retval;
    let denied = drops(&f, drop_reason::POLICY);

    assert_eq!(wg(&f, from(other, Some(0x02))), SHOT, "a SYN from a container on other networks");
    assert_eq!(wg(&f, from(other, None)), SHOT, "a datagram from a container on other networks");
    assert_eq!(drops(&f, drop_reason::POLICY), denied + 2, "both counted as policy drops");
    assert_eq!(wg(&f, from(other, Some(0x10))), REDIRECT, "later segments are not checked");
    assert_eq!(wg(&f, from(same, Some(0x02))), REDIRECT, "a shared network");
    assert_eq!(wg(&f, from(same, None)), REDIRECT);
    assert_eq!(wg(&f, from(stranger, Some(0x02))), REDIRECT, "no report names it");

    // Reports change: the other container joins the network, then leaves
    // (its node no longer reports it).
    assert_eq!(f.dp.set_remote_endpoints(&[(same, 0b11), (other, 0b01)].into()).unwrap(), 1);
    assert_eq!(wg(&f, from(other, Some(0x02))), REDIRECT);
    assert_eq!(f.dp.set_remote_endpoints(&[(same, 0b11)].into()).unwrap(), 1);
    assert_eq!(f.dp.remote_endpoints().unwrap(), [(same, 0b11)].into());
    assert_eq!(drops(&f, drop_reason::POLICY), denied + 2);

    // A local container on no network in particular takes anyone.
    f.dp.set_remote_endpoints(&[(other, 0b10)].into()).unwrap();
    f.dp.set_endpoint(BACKEND, Endpoint { ifindex: 1, mac: BACKEND_MAC, node_mac: NODE_MAC, net_mask: 0, netns_cookie: 0 }).unwrap();
    assert_eq!(wg(&f, from(other, Some(0x02))), REDIRECT);
}

/// The sending node drops it already: a new flow from a local container to
/// another node's container that shares none of its networks never enters
/// the tunnel, when that node reported the container.
#[test]
fn a_new_flow_to_another_nodes_container_on_other_networks_does_not_enter_the_tunnel() {
    require_root!();
    let mut f = fixture();
    let (same, other, stranger) = (Ipv4Addr::new(10, 42, 1, 7), Ipv4Addr::new(10, 42, 1, 8), Ipv4Addr::new(10, 42, 1, 9));
    f.dp.set_remote(Ipv4Addr::new(10, 42, 1, 0), 24, 1).unwrap();
    f.dp.set_endpoint(CLIENT, Endpoint { ifindex: 1, mac: [0x0a, 0x58, 10, 42, 0, 2], node_mac: NODE_MAC, net_mask: 0b01, netns_cookie: 0 })
        .unwrap();
    f.dp.set_remote_endpoints(&[(same, 0b11), (other, 0b10)].into()).unwrap();
    let to = |dst: Ipv4Addr, tcp_flags: Option<u8>| match tcp_flags {
        Some(flags) => segment((CLIENT, 40000), (dst, 8080), flags),
        None => Frame::udp(CLIENT, 40000, dst, 5353).build(),
    };
    let denied = drops(&f, drop_reason::POLICY);
    assert_eq!(run(&f, &to(other, Some(0x02))).retval, SHOT, "a SYN to a container on other networks");
    assert_eq!(run(&f, &to(other, None)).retval, SHOT, "a datagram to a container on other networks");
    assert_eq!(drops(&f, drop_reason::POLICY), denied + 2);
    assert_eq!(run(&f, &to(other, Some(0x10))).retval, REDIRECT, "later segments are not checked");
    assert_eq!(run(&f, &to(same, Some(0x02))).retval, REDIRECT, "into the tunnel: a shared network");
    assert_eq!(run(&f, &to(stranger, Some(0x02))).retval, REDIRECT, "no report names it");
}

/// Copies in the flow cache are per CPU: this thread's test runs stay on one.
fn stay_on_one_cpu() {
    let cpu = *fizz_tests::allowed_cpus().unwrap().first().expect("a CPU to run on");
    fizz_tests::pin_to_cpu(cpu).unwrap();
}

/// An established flow's packets are rewritten from the CPU's flow cache.
/// While the copy is good a packet does not read conntrack: an entry
/// removed behind the agent's back stays gone. A FIN still goes to
/// conntrack; the agent forgetting the flow, or the copy's age, sends the
/// next packet back to conntrack.
#[test]
fn established_packets_are_rewritten_from_the_flow_cache_until_the_flow_changes_or_the_copy_ages() {
    require_root!();
    stay_on_one_cpu();
    let f = fixture();
    let mut maps = fizz::net::ebpf::maps::Maps::open(&fizz::net::ebpf::maps_dir(f.dp.pin_dir())).unwrap();
    let (client, vip) = ((CLIENT, 40060), (VIP, 80));
    let key = tcp_key(client, vip);
    let ack = segment(client, vip, 0x10);
    let to_backend = |frame: &[u8]| {
        let p = parse(&run(&f, frame).data).unwrap();
        (p.dst, p.dport) == (BACKEND, 8080) && p.ip_csum_ok && p.l4_csum_ok
    };
    // A copy is good for at least 63 ms (64 jiffies at HZ=1000): a try
    // that took longer (the thread was held up) is tried again.
    let mut tries = 0;
    loop {
        let start = Instant::now();
        assert!(to_backend(&segment(client, vip, 0x02)), "the SYN starts the flow");
        assert!(to_backend(&ack), "the first ACK reads conntrack, and files a copy");
        maps.conntrack.remove(&key).unwrap();
        assert!(to_backend(&ack), "rewritten from the copy");
        let read_conntrack = maps.conntrack.get(&key).unwrap().is_some();
        if !read_conntrack {
            break;
        }
        tries += 1;
        assert!(
            start.elapsed() > Duration::from_millis(50) && tries < 5,
            "conntrack was read (a miss starts the flow again) though the copy was {:?} old",
            start.elapsed()
        );
        maps.conntrack.remove(&key).unwrap();
    }

    maps.flow_epochs.forget(&key);
    assert!(to_backend(&ack));
    assert!(maps.conntrack.get(&key).unwrap().is_some(), "forgotten: conntrack read again (the flow started again)");
    assert!(to_backend(&ack), "the new entries changed the epochs: conntrack read, a copy filed again");

    assert!(to_backend(&segment(client, vip, 0x11)));
    let ct = maps.conntrack.get(&key).unwrap().expect("tracked");
    assert_ne!(ct.flags & CT_FLAG_FIN, 0, "a FIN is recorded in conntrack, not served from the copy");

    maps.conntrack.remove(&key).unwrap();
    // Past `FLOW_CACHE_JIFFIES` at any HZ of 100 or more.
    std::thread::sleep(Duration::from_millis(700));
    assert!(to_backend(&ack));
    assert!(maps.conntrack.get(&key).unwrap().is_some(), "an aged copy is not used: conntrack read again");
}

/// A backend taken out of a service loses its flows at once: the agent's
/// purge also stops the CPUs' cached copies of them.
#[test]
fn a_removed_backends_flows_are_not_served_from_the_flow_cache() {
    require_root!();
    stay_on_one_cpu();
    let mut f = fixture();
    let other = Ipv4Addr::new(10, 42, 0, 6);
    let svc = |backends: &[Ipv4Addr]| ServiceSpec {
        frontend: Frontend { vip: VIP, port: 81, proto: Proto::Tcp },
        backends: backends.iter().map(|&addr| BackendAddr { addr, port: 8081 }).collect(),
    };
    f.dp.set_service(&svc(&[BACKEND, other])).unwrap();
    let (client, vip) = ((CLIENT, 40070), (VIP, 81));
    let ack = segment(client, vip, 0x10);
    let dst = |f: &Fixture, frame: &[u8]| parse(&run(f, frame).data).unwrap().dst;
    let first = dst(&f, &segment(client, vip, 0x02));
    assert_eq!(dst(&f, &ack), first, "the ACK reads conntrack, and files a copy");
    assert_eq!(dst(&f, &ack), first, "and the next is served from it");

    let kept = if first == BACKEND { other } else { BACKEND };
    f.dp.set_service(&svc(&[kept])).unwrap();
    assert_eq!(dst(&f, &ack), kept, "the flow's copy went with its conntrack entries");
}

#[test]
fn ip_options_shift_the_transport_header_and_are_kept() {
    require_root!();
    let f = fixture();
    let mut frame = Frame::tcp(CLIENT, 40001, VIP, 80);
    frame.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let out = run(&f, &frame.build());
    assert_eq!(out.retval, REDIRECT);
    let p = parse(&out.data).unwrap();
    assert_eq!(p.ihl, 24);
    assert_eq!((p.dst, p.sport, p.dport), (BACKEND, 40001, 8080));
    assert!(p.ip_csum_ok && p.l4_csum_ok, "{p:?}");
    assert_eq!(out.data[34..38], [1, 1, 1, 0]);
}

#[test]
fn undeclared_port_gets_a_tcp_reset_at_once() {
    require_root!();
    let f = fixture();
    let before = drops(&f, drop_reason::NO_SERVICE_PORT);
    let mut syn = Frame::tcp(CLIENT, 40002, VIP, 81);
    syn.seq = 7777;
    let out = run(&f, &syn.build());
    assert_eq!(out.retval, REDIRECT, "sent back out of the veth it came in on");
    let p = parse(&out.data).unwrap();
    assert_eq!(p.proto, TCP);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 81, CLIENT, 40002));
    assert_eq!(p.tcp_flags, 0x14, "RST|ACK");
    assert_eq!(p.ack, 7778, "acknowledges the SYN");
    assert!(p.ip_csum_ok && p.l4_csum_ok, "{p:?}");
    assert_eq!(p.dst_mac, syn.src_mac);
    assert_eq!(drops(&f, drop_reason::NO_SERVICE_PORT), before + 1);

    // An ACK segment gets a bare RST carrying its acknowledgment number.
    let mut ack = Frame::tcp(CLIENT, 40002, VIP, 81);
    ack.tcp_flags = 0x10;
    ack.ack = 4242;
    let p = parse(&run(&f, &ack.build()).data).unwrap();
    assert_eq!((p.tcp_flags, p.seq), (0x04, 4242));

    // A reset is never answered.
    let mut rst = Frame::tcp(CLIENT, 40002, VIP, 81);
    rst.tcp_flags = 0x04;
    let out = run(&f, &rst.build());
    assert_eq!(out.retval, SHOT);
}

#[test]
fn service_without_backends_gets_a_reset() {
    require_root!();
    let f = fixture();
    let before = drops(&f, drop_reason::NO_BACKEND);
    let out = run(&f, &Frame::tcp(CLIENT, 40003, EMPTY_VIP, 80).build());
    assert_eq!(out.retval, REDIRECT);
    let p = parse(&out.data).unwrap();
    assert_eq!(p.tcp_flags & 0x04, 0x04);
    assert_eq!((p.src, p.dst), (EMPTY_VIP, CLIENT));
    assert_eq!(drops(&f, drop_reason::NO_BACKEND), before + 1);
}

#[test]
fn udp_to_undeclared_port_gets_icmp_port_unreachable() {
    require_root!();
    let f = fixture();
    let mut frame = Frame::udp(CLIENT, 5002, VIP, 54);
    frame.payload = vec![0xab; 100];
    let sent = frame.build();
    let out = run(&f, &sent);
    assert_eq!(out.retval, REDIRECT);
    let p = parse(&out.data).unwrap();
    assert_eq!(p.proto, ICMP);
    assert_eq!((p.sport, p.dport), (3, 3), "destination unreachable / port unreachable");
    assert_eq!((p.src, p.dst), (VIP, CLIENT));
    assert!(p.ip_csum_ok && p.l4_csum_ok, "{p:?}");
    assert_eq!(p.payload, sent[14..14 + 28], "quotes the IP header and 8 bytes");
}

/// (what, frame, expected verdict, expected drop reason or 0)
#[test]
fn malformed_and_unusual_packets_get_defined_verdicts() {
    require_root!();
    let f = fixture();
    let vip_syn = Frame::tcp(CLIENT, 40010, VIP, 80);
    let mut arp = vip_syn.build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // The kernel refuses to test-run an IPv4 frame shorter than an IP
    // header, so truncation is tested where the header claims more than
    // there is: options running past the end of the frame.
    let truncated_ip = {
        let mut v = vip_syn.build()[..14 + 20 + 4].to_vec();
        v[14] = 0x4f;
        v[16..18].copy_from_slice(&64u16.to_be_bytes());
        v
    };
    let truncated_tcp = {
        let mut v = vip_syn.build()[..14 + 20 + 2].to_vec();
        v[16..18].copy_from_slice(&22u16.to_be_bytes());
        v
    };
    let mut bad_version = vip_syn.build();
    bad_version[14] = 0x65;
    let mut short_ihl = vip_syn.build();
    short_ihl[14] = 0x44;
    let first_fragment = Frame { frag: 0x2000, ..vip_syn.clone() }.build();
    let later_fragment = Frame { frag: 0x0010, ..vip_syn.clone() }.build();
    let ttl1 = Frame { ttl: 1, sport: 40011, ..vip_syn.clone() }.build();
    let icmp_to_vip = {
        let mut v = vip_syn.build();
        v[14 + 9] = ICMP;
        v
    };
    let elsewhere = Frame::tcp(CLIENT, 40012, Ipv4Addr::new(192, 0, 2, 1), 80).build();
    let udp_elsewhere = Frame::udp(CLIENT, 40013, Ipv4Addr::new(10, 42, 9, 9), 53).build();

    let cases: Vec<(&str, Vec<u8>, u32, u32)> = vec![
        ("non-IP (ARP)", arp, OK, 0),
        ("IP header length past the end", truncated_ip, SHOT, drop_reason::TRUNCATED),
        ("truncated TCP header", truncated_tcp, SHOT, drop_reason::TRUNCATED),
        ("IP version 6 in an IPv4 frame", bad_version, SHOT, drop_reason::BAD_IP_HEADER),
        ("IHL below 5", short_ihl, SHOT, drop_reason::BAD_IP_HEADER),
        ("first fragment to a VIP", first_fragment, SHOT, drop_reason::VIP_FRAGMENT),
        ("later fragment to a VIP", later_fragment, SHOT, drop_reason::VIP_FRAGMENT),
        ("TTL 1 to a VIP (delivered: local hops keep the TTL)", ttl1, REDIRECT, 0),
        ("ICMP to a VIP", icmp_to_vip, SHOT, drop_reason::VIP_PROTO),
        ("TCP outside the cluster", elsewhere, OK, 0),
        ("UDP to an unknown container", udp_elsewhere, OK, 0),
    ];
    for (what, frame, verdict, reason) in cases {
        let before = if reason != 0 { drops(&f, reason) } else { 0 };
        let out = test_run(f.dp.program(), &frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(out.retval, verdict, "{what}: verdict");
        if reason != 0 {
            assert_eq!(drops(&f, reason), before + 1, "{what}: counted as {}", drop_reason::name(reason));
        }
        if verdict == OK {
            assert_eq!(out.data, frame, "{what}: passed unchanged");
        }
    }
    let _ = UDP;
}

/// Not a timing assertion: prints the kernel's mean run time of the program
/// on an established VIP flow and on a direct packet, for the record.
#[test]
fn program_cost_on_crafted_packets_is_reported() {
    require_root!();
    let f = fixture();
    let syn = Frame::tcp(CLIENT, 40050, VIP, 80).build();
    let _ = run(&f, &syn);
    let mut est = Frame::tcp(CLIENT, 40050, VIP, 80);
    est.tcp_flags = 0x10;
    est.payload = vec![0; 100];
    let est = est.build();
    let ns_est = cost(f.dp.program(), &est);
    let p = parse(&run(&f, &est).data).unwrap();
    assert_eq!((p.dst, p.dport), (BACKEND, 8080), "the measured packet is NAT'd on every run");
    let mut direct = Frame::tcp(CLIENT, 40051, BACKEND, 8080);
    direct.tcp_flags = 0x10;
    let direct = direct.build();
    let ns_direct = cost(f.dp.program(), &direct);
    let mut other = Frame::tcp(CLIENT, 40052, Ipv4Addr::new(192, 0, 2, 1), 80);
    other.tcp_flags = 0x10;
    let ns_pass = cost(f.dp.program(), &other.build());
    // An empty program on the same packet: what the test run itself costs.
    let floor = fizz::net::ebpf::load_floor(f.dp.pin_dir()).unwrap();
    let floor: &aya::programs::SchedClassifier = floor.program(fizz_common::PROG_FLOOR).unwrap().try_into().unwrap();
    let ns_floor = cost(floor, &direct);
    eprintln!(
        "program cost (BPF_PROG_TEST_RUN, mean of single runs): established VIP flow {ns_est:.1} ns, direct to a local \
         container {ns_direct:.1} ns, pass-through {ns_pass:.1} ns; an empty program {ns_floor:.1} ns"
    );
    assert!(ns_est > 0.0 && ns_direct > 0.0);
}

/// The kernel's mean run time of `prog` over `packet`, from single runs:
/// a run that rewrites the packet would otherwise see its own output on
/// the next repeat (a NAT'd packet turns into a direct one).
fn cost(prog: &aya::programs::SchedClassifier, packet: &[u8]) -> f64 {
    const RUNS: u32 = 20_000;
    let total: u64 = (0..RUNS)
        .map(|_| u64::from(fizz::net::ebpf::test_run::test_run_repeat(prog, packet, 1).unwrap().1))
        .sum();
    total as f64 / f64::from(RUNS)
}
