//! Container traffic between two nodes through the encrypted tunnel: two rig
//! nodes joined by a "LAN" (a veth pair between their namespaces, with
//! 192.0.2.x addresses), each with a userspace WireGuard device that
//! `from_wireguard` is attached to, and a container in its own range. The
//! nodes have no routes to each other's ranges: only the datapath's
//! redirects (into the device, and from it into the container) move the
//! packets.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use fizz::net::{
    service::{BackendAddr, Frontend, Proto, ServiceSpec},
    wireguard::{self, PeerConfig, PrivateKey, WireGuard, WireGuardConfig, DEFAULT_MTU},
    Datapath,
};
use fizz_common::{drop_reason, verdict, Endpoint};
use fizz_tests::{require_root, sh, unique, wait_for, Container, Node};

const WG_PORT: u16 = 51820;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);
const ECHO_PORT: u16 = 8080;
const SINK_PORT: u16 = 9;
const MARKER: &[u8] = b"FIZZ-PLAINTEXT-MARKER";

/// One rig node with its datapath, one container and (once wired) its
/// WireGuard device. Fields drop in order: the device first, the node last.
struct Side {
    wg: Option<WireGuard>,
    c: Container,
    dp: Datapath,
    node: Node,
    lan_if: String,
    lan_addr: Ipv4Addr,
    range: Ipv4Addr,
}

/// Two nodes joined by a veth pair (the LAN).
struct Pair {
    a: Side,
    b: Side,
}

fn side(node: Node, lan_if: String, lan_addr: Ipv4Addr, range: Ipv4Addr) -> Side {
    let mut dp = node.datapath().unwrap();
    let o = range.octets();
    let c = node.container(Ipv4Addr::new(o[0], o[1], o[2], 2)).unwrap();
    // Packets are redirected into the tunnel past its MTU check, so the
    // container's own MTU must leave room for WireGuard's headers.
    c.ns.ip(&["link", "set", "eth0", "mtu", &DEFAULT_MTU.to_string()])
        .unwrap();
    node.attach(&mut dp, &c.host_if).unwrap();
    dp.set_endpoint(c.addr, c.endpoint()).unwrap();
    node.ns
        .ip(&["addr", "add", &format!("{lan_addr}/24"), "dev", &lan_if])
        .unwrap();
    node.ns.ip(&["link", "set", &lan_if, "up"]).unwrap();
    Side {
        wg: None,
        c,
        dp,
        node,
        lan_if,
        lan_addr,
        range,
    }
}

fn pair() -> Pair {
    let (n1, n2) = (Node::new().unwrap(), Node::new().unwrap());
    let (l1, l2) = (format!("{}L", n1.name), format!("{}L", n2.name));
    sh(&[
        "ip",
        "link",
        "add",
        &l1,
        "netns",
        &n1.ns.name,
        "type",
        "veth",
        "peer",
        "name",
        &l2,
        "netns",
        &n2.ns.name,
    ])
    .unwrap();
    Pair {
        a: side(
            n1,
            l1,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(10, 42, 0, 0),
        ),
        b: side(
            n2,
            l2,
            Ipv4Addr::new(192, 0, 2, 2),
            Ipv4Addr::new(10, 42, 1, 0),
        ),
    }
}

impl Pair {
    /// Gives each node a WireGuard device, attaches `from_wireguard` to it,
    /// and declares the other node as its peer and its range as remote.
    fn wire_wireguard(&mut self) {
        let keys = [PrivateKey::generate(), PrivateKey::generate()];
        for (s, key) in [&mut self.a, &mut self.b].into_iter().zip(&keys) {
            let cfg = WireGuardConfig {
                ifname: unique("W"),
                private_key: key.clone(),
                listen_port: WG_PORT,
                mtu: DEFAULT_MTU,
            };
            let wg = WireGuard::create(&s.node.ns.path(), &cfg).unwrap();
            let name = wg.ifname().to_string();
            s.node
                .ns
                .run(|| s.dp.attach_wireguard(&name))
                .unwrap()
                .unwrap();
            s.wg = Some(wg);
        }
        let (pa, pb) = (keys[0].public_key(), keys[1].public_key());
        let (oa, ob) = (
            (self.a.lan_addr, self.a.range),
            (self.b.lan_addr, self.b.range),
        );
        for (s, (lan, range), pk) in [(&mut self.a, ob, pb), (&mut self.b, oa, pa)] {
            let wg = s.wg.as_ref().unwrap();
            wg.set_peer(&PeerConfig {
                public_key: pk,
                endpoint: SocketAddr::from((lan, WG_PORT)),
                allowed: vec![(range, 24)],
            })
            .unwrap();
            s.dp.set_remote(range, 24, wg.ifindex()).unwrap();
        }
    }

    /// Plain routing over the LAN, no tunnel: the control case.
    fn route_plainly(&self, add: bool) {
        let verb = if add { "add" } else { "del" };
        for (s, o) in [(&self.a, &self.b), (&self.b, &self.a)] {
            s.node
                .ns
                .ip(&[
                    "route",
                    verb,
                    &format!("{}/24", o.range),
                    "via",
                    &o.lan_addr.to_string(),
                ])
                .unwrap();
        }
    }
}

/// TCP and UDP servers in a container: echo on `ECHO_PORT`, and a sink on
/// `SINK_PORT` that reads to the end and answers with the byte count.
/// Stopped and joined on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(c: &Container) -> Servers {
        // Sockets belong to the namespace they are made in, whatever thread
        // serves them later.
        let (echo, sink, udp) =
            c.ns.run(|| {
                let any = Ipv4Addr::UNSPECIFIED;
                (
                    TcpListener::bind((any, ECHO_PORT)).unwrap(),
                    TcpListener::bind((any, SINK_PORT)).unwrap(),
                    UdpSocket::bind((any, ECHO_PORT)).unwrap(),
                )
            })
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (listener, is_sink) in [(echo, false), (sink, true)] {
            let stop = stop.clone();
            listener.set_nonblocking(true).unwrap();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => serve(s, is_sink),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        let stop2 = stop.clone();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        }));
        Servers { stop, threads }
    }
}

fn serve(mut s: TcpStream, is_sink: bool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                if !is_sink && s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    if is_sink {
        let _ = s.write_all(&total.to_be_bytes());
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP echo exchange with `to` from inside `c`.
fn tcp_echo(c: &Container, to: SocketAddr, msg: &[u8]) -> std::io::Result<(Vec<u8>, SocketAddr)> {
    c.ns.run(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        let peer = s.peer_addr()?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.set_write_timeout(Some(Duration::from_secs(3)))?;
        let mut w = s.try_clone()?;
        // Written while the echo is read, so neither side's buffers fill up.
        std::thread::scope(|sc| {
            let writer =
                sc.spawn(move || w.write_all(msg).and_then(|()| w.shutdown(Shutdown::Write)));
            let mut out = Vec::new();
            let read = s.read_to_end(&mut out);
            writer.join().expect("writer thread")?;
            read?;
            Ok((out, peer))
        })
    })
    .unwrap()
}

/// `n` UDP request/answer rounds with `to` from inside `c` (a ping over UDP);
/// returns how many were answered with the same bytes, from `to`.
fn udp_pings(c: &Container, to: SocketAddr, n: u32, how: Udp) -> u32 {
    c.ns.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        if how == Udp::Connected {
            s.connect(to).unwrap();
        }
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut ok = 0;
        for i in 0..n {
            let msg = format!("ping {i}");
            let sent = match how {
                Udp::Connected => s.send(msg.as_bytes()),
                Udp::Unconnected => s.send_to(msg.as_bytes(), to),
            };
            if sent.is_err() {
                continue;
            }
            let mut buf = [0u8; 64];
            if let Ok((k, from)) = s.recv_from(&mut buf) {
                ok += u32::from(&buf[..k] == msg.as_bytes() && from == to);
            }
        }
        ok
    })
    .unwrap()
}

/// How `udp_pings` sends: from a connected socket (`send`; the kernel then
/// takes answers from `to` only) or an unconnected one (`send_to`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Udp {
    Connected,
    Unconnected,
}

/// Sends `total` bytes (a repeated pattern of `chunk`) to the sink at `to`
/// from inside `c`; returns the count the sink reports and the seconds taken.
fn send_to_sink(
    c: &Container,
    to: SocketAddr,
    chunk: &[u8],
    total: usize,
) -> std::io::Result<(u64, f64)> {
    c.ns.run(|| {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            s.write_all(&chunk[..n])?;
            sent += n;
        }
        s.shutdown(Shutdown::Write)?;
        let mut count = [0u8; 8];
        s.read_exact(&mut count)?;
        Ok((u64::from_be_bytes(count), start.elapsed().as_secs_f64()))
    })
    .unwrap()
}

/// Waits until a first TCP echo from node 1's container to node 2's
/// succeeds (the first packets wait for the WireGuard handshake); says
/// what both nodes saw when it does not.
fn wait_tunnel(p: &Pair) {
    let to = SocketAddr::from((p.b.c.addr, ECHO_PORT));
    let r = wait_for(
        "a first exchange through the tunnel",
        Duration::from_secs(15),
        || tcp_echo(&p.a.c, to, b"hello").is_ok_and(|(b, _)| b == b"hello"),
    );
    if r.is_err() {
        for s in [&p.a, &p.b] {
            let v: Vec<(&str, u64)> = (0..verdict::MAX)
                .map(|v| (verdict::name(v), verdicts(&s.dp, v)))
                .collect();
            let d: Vec<(&str, u64)> = (1..drop_reason::MAX)
                .map(|r| {
                    (
                        drop_reason::name(r),
                        s.dp.maps().drops.get(r).unwrap().packets,
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            let wg =
                s.wg.as_ref()
                    .map(|w| (w.peers(), s.node.ns.ip(&["-s", "link", "show", w.ifname()])));
            eprintln!("{}: verdicts {v:?} drops {d:?}\n{wg:#?}", s.node.name);
        }
    }
    r.unwrap();
}

fn verdicts(dp: &Datapath, v: u32) -> u64 {
    dp.maps().verdicts.get(v).unwrap().packets
}

/// Network isolation holds across nodes: node 2 knows the networks of node
/// 1's container (as node 1 reports them) and refuses new connections and
/// datagrams from it to its own container while the two share no network.
#[test]
fn a_container_on_another_node_reaches_only_containers_it_shares_a_network_with() {
    require_root!();
    let mut p = pair();
    p.wire_wireguard();
    let _s2 = Servers::start(&p.b.c);
    let to_b = SocketAddr::from((p.b.c.addr, ECHO_PORT));
    wait_tunnel(&p);
    let policy_drops = |s: &Side| s.dp.maps().drops.get(drop_reason::POLICY).unwrap().packets;

    p.b.dp.set_endpoint(p.b.c.addr, Endpoint { net_mask: 0b01, ..p.b.c.endpoint() }).unwrap();
    p.b.dp.set_remote_endpoints(&[(p.a.c.addr, 0b10)].into()).unwrap();
    assert!(tcp_echo(&p.a.c, to_b, b"denied").is_err(), "a connection between two networks");
    assert_eq!(udp_pings(&p.a.c, to_b, 3, Udp::Connected), 0, "datagrams between two networks");
    assert!(policy_drops(&p.b) >= 2, "node 2 dropped them as policy");
    assert_eq!(policy_drops(&p.a), 0, "node 1 did not: it does not know node 2's container");

    p.b.dp.set_remote_endpoints(&[(p.a.c.addr, 0b11)].into()).unwrap();
    assert_eq!(tcp_echo(&p.a.c, to_b, b"shared").unwrap().0, b"shared");
    assert_eq!(udp_pings(&p.a.c, to_b, 5, Udp::Connected), 5);

    // Node 1 knows node 2's container too, and drops before the tunnel what node 2 (here
    // still letting it in) would take.
    p.a.dp.set_endpoint(p.a.c.addr, Endpoint { net_mask: 0b10, ..p.a.c.endpoint() }).unwrap();
    p.a.dp.set_remote_endpoints(&[(p.b.c.addr, 0b01)].into()).unwrap();
    let (a_before, b_before) = (policy_drops(&p.a), verdicts(&p.b.dp, verdict::FROM_TUNNEL_LOCAL));
    assert!(tcp_echo(&p.a.c, to_b, b"denied").is_err(), "refused by the sending node");
    assert!(policy_drops(&p.a) > a_before, "node 1 dropped it as policy");
    assert_eq!(verdicts(&p.b.dp, verdict::FROM_TUNNEL_LOCAL), b_before, "nothing reached node 2's container");
}

#[test]
fn containers_on_two_nodes_talk_through_the_tunnel() {
    require_root!();
    let mut p = pair();
    p.wire_wireguard();
    let _s1 = Servers::start(&p.a.c);
    let _s2 = Servers::start(&p.b.c);
    let to_b = SocketAddr::from((p.b.c.addr, ECHO_PORT));
    let to_a = SocketAddr::from((p.a.c.addr, ECHO_PORT));
    wait_tunnel(&p);

    // TCP both ways, the peer seen by its own address (no NAT).
    let (echo, peer) = tcp_echo(&p.a.c, to_b, b"from node 1").unwrap();
    assert_eq!((echo.as_slice(), peer), (&b"from node 1"[..], to_b));
    let (echo, _) = tcp_echo(&p.b.c, to_a, b"from node 2").unwrap();
    assert_eq!(echo, b"from node 2");
    // A payload larger than the tunnel's MTU, in many segments.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(tcp_echo(&p.a.c, to_b, &big).unwrap().0, big);
    // UDP request/answer both ways.
    assert_eq!(udp_pings(&p.a.c, to_b, 20, Udp::Connected), 20);
    assert_eq!(udp_pings(&p.b.c, to_a, 20, Udp::Connected), 20);

    // Both directions went through eBPF: into the device on the sender, out
    // of it into the container on the receiver. Nothing was dropped.
    for s in [&p.a, &p.b] {
        assert!(
            verdicts(&s.dp, verdict::REDIRECT_TUNNEL) > 0,
            "into the tunnel on {}",
            s.node.name
        );
        assert!(
            verdicts(&s.dp, verdict::FROM_TUNNEL_LOCAL) > 0,
            "out of the tunnel on {}",
            s.node.name
        );
        assert_eq!(
            verdicts(&s.dp, verdict::DROP),
            0,
            "drops on {}",
            s.node.name
        );
        let peers = s.wg.as_ref().unwrap().peers().unwrap();
        assert_eq!(peers.len(), 1);
        assert!(
            peers[0].last_handshake.is_some(),
            "a handshake was made: {peers:?}"
        );
        assert!(peers[0].rx_bytes > 0 && peers[0].tx_bytes > 0, "{peers:?}");
        // The device's sockets: its listening ones and the one it connected to the peer at
        // the first packet, which the next sizing catches; every one gets Fizz's buffers.
        let wg = s.wg.as_ref().unwrap();
        let before = wg.socket_buffers();
        assert!(before.len() >= 2, "listening and per-peer sockets: {before:?}");
        wg.size_socket_buffers();
        let after = wg.socket_buffers();
        assert_eq!(after.len(), before.len(), "{after:?}");
        let want = 2 * wireguard::SOCKET_BUFFER;
        assert!(after.iter().all(|&(r, w)| r >= want && w >= want), "{after:?}");
        assert_eq!(wg.size_socket_buffers(), 0, "nothing left to size");
        assert_eq!(
            peers[0].allowed,
            vec![(
                if s.range == p.a.range {
                    p.b.range
                } else {
                    p.a.range
                },
                24
            )]
        );
    }

    // A quick throughput figure (not an assertion).
    let chunk = vec![7u8; 64 * 1024];
    let total = 64 << 20;
    let (got, secs) = send_to_sink(
        &p.a.c,
        SocketAddr::from((p.b.c.addr, SINK_PORT)),
        &chunk,
        total,
    )
    .unwrap();
    assert_eq!(got, total as u64);
    eprintln!(
        "cross-node TCP through the tunnel: {:.2} Gbit/s",
        total as f64 * 8.0 / secs / 1e9
    );

    // A restarted agent adopts the pinned program and the device's link.
    drop(std::mem::replace(&mut p.a.dp, p.a.node.datapath().unwrap()));
    let wg_name = p.a.wg.as_ref().unwrap().ifname().to_string();
    let attached = p.a.dp.attached_wireguard().unwrap();
    assert_eq!(
        attached.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec![wg_name.as_str()]
    );
    assert_eq!(
        tcp_echo(&p.a.c, to_b, b"after restart").unwrap().0,
        b"after restart"
    );

    // Without the remote range, node 1 has no way to node 2's containers.
    p.a.dp.remove_remote(p.b.range, 24).unwrap();
    assert!(p.a.dp.remotes().unwrap().is_empty());
    assert!(
        tcp_echo(&p.a.c, to_b, b"x").is_err(),
        "no route without the tunnel"
    );
    assert!(
        p.a.dp
            .set_remote(Ipv4Addr::new(10, 42, 1, 1), 24, 1)
            .is_err(),
        "host bits are refused"
    );

    // Removal leaves no socket and no interface.
    for s in [&mut p.a, &mut p.b] {
        let wg = s.wg.take().unwrap();
        let name = wg.ifname().to_string();
        wg.destroy().unwrap();
        assert!(
            !wireguard::socket_path(&name).exists(),
            "{name}'s control socket is removed"
        );
        assert!(
            s.node.ns.ip(&["link", "show", &name]).is_err(),
            "{name} is gone"
        );
        s.node.ns.run(|| s.dp.gc_links()).unwrap().unwrap();
        assert!(s.dp.attached_wireguard().unwrap().is_empty());
    }
}

#[test]
fn a_vip_on_one_node_reaches_its_backend_on_the_other() {
    require_root!();
    let mut p = pair();
    p.wire_wireguard();
    let _s2 = Servers::start(&p.b.c);
    wait_tunnel(&p);
    let backend = BackendAddr {
        addr: p.b.c.addr,
        port: ECHO_PORT,
    };
    for proto in [Proto::Tcp, Proto::Udp] {
        let spec = ServiceSpec {
            frontend: Frontend {
                vip: VIP,
                port: 80,
                proto,
            },
            backends: vec![backend],
        };
        p.a.dp.set_service(&spec).unwrap();
    }
    let vip = SocketAddr::from((VIP, 80));
    // The reply comes back through the tunnel from the backend's address;
    // node 1 reverses the NAT on arrival, so the client sees the VIP (a TCP
    // handshake answered from another address would never complete).
    // First balanced at connect time (the client's namespace is declared),
    // then, with the namespace forgotten, NAT'd per packet at TC.
    for connect_time in [true, false] {
        if !connect_time {
            p.a.dp.set_endpoint(p.a.c.addr, p.a.c.endpoint_nat_client()).unwrap();
        }
        for i in 0..20 {
            let msg = format!("request {i}");
            let (echo, peer) = tcp_echo(&p.a.c, vip, msg.as_bytes()).unwrap();
            assert_eq!((echo, peer), (msg.into_bytes(), vip), "connect-time: {connect_time}");
        }
        // An unconnected UDP socket: its datagrams are sent to the backend
        // (declared namespace) or NAT'd; either way the answers are
        // reported from the VIP.
        assert_eq!(udp_pings(&p.a.c, vip, 10, Udp::Unconnected), 10, "connect-time: {connect_time}");
    }
    // A connected UDP socket accepts answers from the VIP only.
    assert_eq!(udp_pings(&p.a.c, vip, 20, Udp::Connected), 20);

    let snap = fizz::net::inspect::snapshot(p.a.node.pins.0.as_path()).unwrap();
    let tcp = snap.services.iter().find(|s| s.frontend.proto == Proto::Tcp).unwrap();
    assert_eq!(tcp.connects, 20, "{tcp:?}");
    let udp = snap.services.iter().find(|s| s.frontend.proto == Proto::Udp).unwrap();
    assert_eq!(udp.connects, 1, "the declared client's unconnected socket: {udp:?}");
    assert!(
        snap.services.iter().all(|s| s.packets > 0),
        "{:?}",
        snap.services
    );
    // The backend's node saw direct traffic only: no conntrack there.
    assert!(p.b.dp.maps().conntrack.entries().unwrap().is_empty());
    assert_eq!(verdicts(&p.a.dp, verdict::DROP), 0);
    assert_eq!(
        p.a.dp
            .maps()
            .drops
            .get(drop_reason::REDIRECT_FAILED)
            .unwrap()
            .packets,
        0
    );
}

/// A raw capture of every frame on one interface, from inside a namespace.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    fn start(side: &Side) -> Capture {
        let ifname = side.lan_if.clone();
        let fd = side.node.ns.run(move || packet_socket(&ifname)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65_536];
            // Until stopped and drained: on a busy machine this thread may first run after
            // the traffic is over, with every frame still queued on the socket.
            loop {
                // SAFETY: `buf` is writable for its length; `fd` is an open socket.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                } else if stop2.load(Ordering::Relaxed) {
                    break;
                }
            }
            frames
        });
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An `AF_PACKET` socket bound to `ifname` that sees every frame, both
/// directions, with a large buffer and a short receive timeout.
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain system calls on a socket this function owns; every
    // pointer passed is to a local that outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = fizz::net::ebpf::ifindex(ifname).unwrap() as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let size: i32 = 64 << 20;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        for (opt, ptr, len) in [
            (libc::SO_RCVBUFFORCE, (&size as *const i32).cast(), 4),
            (
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>(),
            ),
        ] {
            let rc = libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, ptr, len as u32);
            assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
        }
        fd
    }
}

fn contains(frame: &[u8], needle: &[u8]) -> bool {
    frame.windows(needle.len()).any(|w| w == needle)
}

/// The UDP ports of an IPv4/UDP Ethernet frame; `None` for other IPv4
/// traffic; `Some(None)` for frames that are not IPv4 (ARP, IPv6).
fn udp_ports(frame: &[u8]) -> Option<Option<(u16, u16)>> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return Some(None);
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    if ip.len() < ihl + 4 || ip[9] != 17 || frag & 0x3fff != 0 {
        return None;
    }
    let l4 = &ip[ihl..];
    Some(Some((
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )))
}

#[test]
fn the_lan_carries_only_ciphertext() {
    require_root!();
    let mut p = pair();
    let _s2 = Servers::start(&p.b.c);
    let sink = SocketAddr::from((p.b.c.addr, SINK_PORT));
    let chunk: Vec<u8> = MARKER.iter().copied().cycle().take(16 * 1024).collect();
    let total = 512 * 1024;

    // Control: plain routing over the LAN. The capture sees the plaintext,
    // so it would see it in the tunnel's case too if it were there.
    p.route_plainly(true);
    let cap = Capture::start(&p.a);
    assert_eq!(
        send_to_sink(&p.a.c, sink, &chunk, total).unwrap().0,
        total as u64
    );
    let frames = cap.finish();
    assert!(
        frames.iter().any(|f| contains(f, MARKER)),
        "the control capture sees the plaintext ({} frames)",
        frames.len()
    );
    p.route_plainly(false);

    // Through WireGuard: only UDP to or from its port, never the plaintext.
    p.wire_wireguard();
    wait_tunnel(&p);
    let cap = Capture::start(&p.a);
    assert_eq!(
        send_to_sink(&p.a.c, sink, &chunk, total).unwrap().0,
        total as u64
    );
    let frames = cap.finish();
    let mut tunnel = 0usize;
    for f in &frames {
        assert!(
            !contains(f, MARKER),
            "plaintext on the LAN: {:02x?}",
            &f[..f.len().min(64)]
        );
        match udp_ports(f) {
            Some(Some((sport, dport))) => {
                assert!(
                    sport == WG_PORT && dport == WG_PORT,
                    "UDP {sport} → {dport} on the LAN"
                );
                tunnel += f.len();
            }
            Some(None) => {}
            None => panic!(
                "IPv4 that is not the tunnel's unfragmented UDP on the LAN: {:02x?}",
                &f[..f.len().min(64)]
            ),
        }
    }
    assert!(
        tunnel > total,
        "the transfer crossed the LAN in the tunnel ({tunnel} bytes of UDP)"
    );
}

/// Removes a file on drop.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_stale_control_socket_is_replaced_and_a_running_name_refused() {
    require_root!();
    let (n1, n2) = (Node::new().unwrap(), Node::new().unwrap());
    let name = unique("W");
    let path = wireguard::socket_path(&name);
    let _guard = RemoveOnDrop(path.clone());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // A socket file nobody listens on, as a killed process leaves it. (Bound as a datagram
    // socket: a stream listener, even dropped at once, stays open in any child another test
    // thread is forking meanwhile, and a connect in that window succeeds.)
    drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
    assert!(path.exists());
    let cfg = WireGuardConfig {
        ifname: name.clone(),
        private_key: PrivateKey::generate(),
        listen_port: 0,
        mtu: DEFAULT_MTU,
    };
    let wg = WireGuard::create(&n1.ns.path(), &cfg).unwrap();
    assert!(wg.listen_port().unwrap() > 0);
    assert!(wg.peers().unwrap().is_empty());
    let mtu = n1.ns.ip(&["-o", "link", "show", &name]).unwrap();
    assert!(mtu.contains("mtu 1420"), "{mtu}");
    // The control socket's path is the same in every namespace.
    assert!(matches!(
        WireGuard::create(&n2.ns.path(), &cfg),
        Err(wireguard::WireGuardError::InUse(_))
    ));
    wg.destroy().unwrap();
    assert!(!path.exists());
    assert!(n1.ns.ip(&["link", "show", &name]).is_err());
}
