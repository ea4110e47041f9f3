//! Service VIPs end to end on a simulated node: containers are network
//! namespaces wired by veth, the datapath is attached to the host ends.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use fizz::net::service::{BackendAddr, Frontend, Proto, ServiceSpec};
use fizz_tests::{require_root, wait_for, Container, Node, Proc};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);

/// One HTTP/1.0 GET; returns the body.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
}

/// Starts busybox httpd on :8080 in `c`, serving `name`.
fn httpd(c: &Container, name: &str, dir: &std::path::Path) -> Proc {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), name).unwrap();
    let mut cmd = c.ns.command("busybox");
    cmd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&root);
    Proc::spawn(cmd).unwrap()
}

fn spec(port: u16, backends: &[&Container], bport: u16) -> ServiceSpec {
    ServiceSpec {
        frontend: Frontend { vip: VIP, port, proto: Proto::Tcp },
        backends: backends.iter().map(|c| BackendAddr { addr: c.addr, port: bport }).collect(),
    }
}

fn count_backends(client: &Container, n: usize) -> BTreeMap<String, usize> {
    client
        .ns
        .run(move || {
            let mut seen = BTreeMap::new();
            for _ in 0..n {
                let body = http_get(SocketAddr::from((VIP, 80))).expect("request through the VIP");
                *seen.entry(body).or_insert(0) += 1;
            }
            seen
        })
        .unwrap()
}

#[test]
fn three_backends_share_requests_and_a_removed_backend_gets_none() {
    require_root!();
    let node = Node::new().unwrap();
    let mut dp = node.datapath().unwrap();
    let client = node.container(Ipv4Addr::new(10, 42, 0, 2)).unwrap();
    let backends: Vec<Container> =
        (11..14).map(|i| node.container(Ipv4Addr::new(10, 42, 0, i)).unwrap()).collect();
    for c in std::iter::once(&client).chain(&backends) {
        node.attach(&mut dp, &c.host_if).unwrap();
        dp.set_endpoint(c.addr, c.endpoint()).unwrap();
    }
    let dir = tempdir();
    let _servers: Vec<Proc> =
        backends.iter().enumerate().map(|(i, c)| httpd(c, &format!("b{i}"), &dir.0)).collect();
    for (i, b) in backends.iter().enumerate() {
        // Container to container by address, through the datapath's redirect.
        let addr = SocketAddr::from((b.addr, 8080));
        client
            .ns
            .run(|| wait_for("httpd", Duration::from_secs(10), || http_get(addr).is_ok_and(|s| s == format!("b{i}"))))
            .unwrap()
            .unwrap();
    }

    // A second client that is not declared with its namespace: its
    // connections are balanced per packet, at TC, with conntrack.
    let tc_client = node.container(Ipv4Addr::new(10, 42, 0, 3)).unwrap();
    node.attach(&mut dp, &tc_client.host_if).unwrap();
    dp.set_endpoint(tc_client.addr, tc_client.endpoint_nat_client()).unwrap();

    let all: Vec<&Container> = backends.iter().collect();
    dp.set_service(&spec(80, &all, 8080)).unwrap();
    for (who, c) in [("connect-time", &client), ("per-packet", &tc_client)] {
        let seen = count_backends(c, 300);
        assert_eq!(seen.len(), 3, "{who}: all three backends answer: {seen:?}");
        for (b, n) in &seen {
            assert!((80..=120).contains(n), "{who}: {b} got {n} of 300 (want 100 ± 20%): {seen:?}");
        }
    }
    let snap = fizz::net::inspect::snapshot(node.pins.0.as_path()).unwrap();
    let svc = &snap.services[0];
    assert_eq!(svc.connects, 300, "the declared client's connections are balanced at connect time");
    assert!(svc.packets > 0, "the other client's are NAT'd per packet");
    let tc_addr = tc_client.addr.to_string();
    assert!(
        !snap.conntrack.is_empty() && snap.conntrack.iter().all(|f| f.client.starts_with(&format!("{tc_addr}:"))),
        "only the per-packet client's flows are in conntrack: {:?}",
        snap.conntrack
    );
    // Either way the client sees the VIP as its peer.
    for c in [&client, &tc_client] {
        let peer = c
            .ns
            .run(|| TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(2)).and_then(|s| s.peer_addr()))
            .unwrap()
            .unwrap();
        assert_eq!(peer, SocketAddr::from((VIP, 80)));
    }
    // What a balanced socket asked for is kept on the socket, in a map
    // pinned with the others: it still reports the VIP when the datapath
    // is opened again (an agent restart or upgrade reuses the pinned map).
    let held = client
        .ns
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    let pin = fizz::net::ebpf::maps_dir(&node.pins.0).join(fizz_common::map_names::SOCK_STATE);
    assert!(pin.exists(), "{} is pinned", pin.display());
    drop(dp);
    let mut dp = node.datapath().unwrap();
    assert_eq!(held.peer_addr().unwrap(), SocketAddr::from((VIP, 80)));
    drop(held);

    // Remove b1: it gets no new flows, and its flows are purged.
    dp.set_service(&spec(80, &[&backends[0], &backends[2]], 8080)).unwrap();
    let snap = fizz::net::inspect::snapshot(node.pins.0.as_path()).unwrap();
    let gone = format!("{}:8080", backends[1].addr);
    assert!(snap.conntrack.iter().all(|f| f.backend != gone), "flows through the removed backend are purged");
    for c in [&client, &tc_client] {
        let seen = count_backends(c, 90);
        assert_eq!(seen.get("b1"), None, "the removed backend got requests: {seen:?}");
        assert_eq!(seen.values().sum::<usize>(), 90);
    }
    let snap = fizz::net::inspect::snapshot(node.pins.0.as_path()).unwrap();
    assert_eq!(snap.services[0].backends.len(), 2);

    // A socket whose balanced connect was refused (port 81's backends do
    // not listen on 8081) and that then connects to a backend by address
    // reports that backend as its peer, not the VIP it asked for first.
    dp.set_service(&spec(81, &[&backends[0]], 8081)).unwrap();
    let direct = SocketAddr::from((backends[0].addr, 8080));
    let peer = client.ns.run(|| peer_after_refused_connect(SocketAddr::from((VIP, 81)), direct)).unwrap();
    assert_eq!(peer, direct);
}

/// Connects one TCP socket to `first`, which must refuse, then the same
/// socket to `then`; returns the peer the socket reports.
fn peer_after_refused_connect(first: SocketAddr, then: SocketAddr) -> SocketAddr {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let connect = |fd: &OwnedFd, to: SocketAddr| {
        let SocketAddr::V4(to) = to else { panic!("{to} is not IPv4") };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.ip().octets()) },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sa` is a valid sockaddr_in of `len` bytes; `fd` is open.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(sa).cast(), len) };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    };
    // SAFETY: a plain socket(2) call; the descriptor is checked, then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let err = connect(&fd, first).expect_err("the first connect is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    connect(&fd, then).unwrap();
    TcpStream::from(fd).peer_addr().unwrap()
}

#[test]
fn a_vip_with_nowhere_to_go_fails_at_once() {
    require_root!();
    let node = Node::new().unwrap();
    let mut dp = node.datapath().unwrap();
    let client = node.container(Ipv4Addr::new(10, 42, 0, 2)).unwrap();
    node.attach(&mut dp, &client.host_if).unwrap();
    dp.set_endpoint(client.addr, client.endpoint()).unwrap();
    dp.set_service(&spec(80, &[], 8080)).unwrap();

    client
        .ns
        .run(|| {
            for port in [80, 81] {
                let start = Instant::now();
                let err = TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), Duration::from_secs(5))
                    .expect_err("nothing listens behind the VIP");
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "port {port}: {err}");
                assert!(start.elapsed() < Duration::from_secs(2), "refused at once, not a timeout");
            }
            // UDP to a port the VIP does not expose: ICMP port unreachable,
            // which a connected socket reports as refused.
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.connect(SocketAddr::from((VIP, 53))).unwrap();
            s.send(b"x").unwrap();
            let mut buf = [0u8; 16];
            let err = s.recv(&mut buf).expect_err("no answer but the ICMP error");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        })
        .unwrap();
}

#[test]
fn nat_d_flows_keep_their_checksums_right_whether_the_sender_or_its_device_computes_them() {
    require_root!();
    let node = Node::new().unwrap();
    let mut dp = node.datapath().unwrap();
    // Clients not declared with their namespace: NAT'd per packet, the
    // port rewritten too (80 → 8080). One client and one backend compute
    // their checksums themselves (transmit offload off: complete checksums);
    // the others leave them to the device, as sockets on a veth do.
    let containers: Vec<Container> =
        [2, 3, 11, 12].into_iter().map(|i| node.container(Ipv4Addr::new(10, 42, 0, i)).unwrap()).collect();
    for c in &containers {
        node.attach(&mut dp, &c.host_if).unwrap();
        dp.set_endpoint(c.addr, c.endpoint_nat_client()).unwrap();
    }
    let (clients, backends) = containers.split_at(2);
    for c in [&clients[0], &backends[0]] {
        let out = c.ns.command("ethtool").args(["-K", "eth0", "tx", "off"]).output().unwrap();
        assert!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = tempdir();
    let _servers: Vec<Proc> = backends.iter().enumerate().map(|(i, c)| httpd(c, &format!("b{i}"), &dir.0)).collect();
    for b in backends {
        let addr = SocketAddr::from((b.addr, 8080));
        clients[1]
            .ns
            .run(|| wait_for("httpd", Duration::from_secs(10), || http_get(addr).is_ok()))
            .unwrap()
            .unwrap();
    }
    dp.set_service(&spec(80, &backends.iter().collect::<Vec<_>>(), 8080)).unwrap();
    // Round robin: each client's requests alternate between the backends,
    // so every pairing of the two kinds of sender carries a flow both ways.
    for (who, c) in [("complete checksums", &clients[0]), ("device-finished checksums", &clients[1])] {
        let seen = count_backends(c, 20);
        assert_eq!(seen.values().sum::<usize>(), 20, "{who}: {seen:?}");
        assert_eq!(seen.len(), 2, "{who}: both backends answer: {seen:?}");
    }
    let snap = fizz::net::inspect::snapshot(node.pins.0.as_path()).unwrap();
    assert!(snap.conntrack.iter().any(|f| f.backend == format!("{}:8080", backends[0].addr)), "NAT'd: {:?}", snap.conntrack);
}

/// A UDP server in a container that answers every datagram with its name.
/// Stopped and joined on drop.
struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    fn start(c: &Container, port: u16, name: &str) -> NameServer {
        // A socket belongs to the namespace it is made in, whatever thread
        // serves it.
        let socket = c.ns.run(move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap()).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, name) = (stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(name.as_bytes(), from);
                }
            }
        });
        NameServer { stop, thread: Some(thread) }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An unconnected UDP socket on any port, whose reads time out after 2 s.
/// (Made in the calling thread's namespace.)
fn udp_socket() -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends one datagram from `socket` to `to` and returns the answer and
/// where `recv_from` says it came from.
fn ask(socket: &UdpSocket, to: SocketAddr) -> (String, SocketAddr) {
    socket.send_to(b"?", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer from {to}: {e}"));
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

#[test]
fn unconnected_udp_to_a_vip_is_balanced_at_the_socket_and_answered_from_the_vip() {
    require_root!();
    let node = Node::new().unwrap();
    let mut dp = node.datapath().unwrap();
    let client = node.container(Ipv4Addr::new(10, 42, 0, 2)).unwrap();
    let nat_client = node.container(Ipv4Addr::new(10, 42, 0, 3)).unwrap();
    let backends: Vec<Container> =
        (11..14).map(|i| node.container(Ipv4Addr::new(10, 42, 0, i)).unwrap()).collect();
    for c in [&client, &nat_client].into_iter().chain(&backends) {
        node.attach(&mut dp, &c.host_if).unwrap();
        let e = if c.addr == nat_client.addr { c.endpoint_nat_client() } else { c.endpoint() };
        dp.set_endpoint(c.addr, e).unwrap();
    }
    let _servers: Vec<NameServer> =
        backends.iter().enumerate().map(|(i, c)| NameServer::start(c, 5353, &format!("b{i}"))).collect();
    let udp_spec = |bs: &[&Container]| ServiceSpec {
        frontend: Frontend { vip: VIP, port: 53, proto: Proto::Udp },
        backends: bs.iter().map(|c| BackendAddr { addr: c.addr, port: 5353 }).collect(),
    };
    dp.set_service(&udp_spec(&backends.iter().collect::<Vec<_>>())).unwrap();
    let vip = SocketAddr::from((VIP, 53));

    // 30 sockets, three datagrams each: each socket keeps its backend, and
    // every answer comes from the VIP, as a resolver checks.
    let sockets: Vec<UdpSocket> = client.ns.run(|| (0..30).map(|_| udp_socket()).collect()).unwrap();
    let mut first = Vec::new();
    for s in &sockets {
        let answers: Vec<(String, SocketAddr)> = (0..3).map(|_| ask(s, vip)).collect();
        assert!(answers.iter().all(|(_, from)| *from == vip), "answers come from the VIP: {answers:?}");
        assert!(answers.iter().all(|(b, _)| *b == answers[0].0), "a socket keeps its backend: {answers:?}");
        first.push(answers[0].0.clone());
    }
    let mut seen = BTreeMap::new();
    for b in &first {
        *seen.entry(b.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "the sockets are spread over all three backends: {seen:?}");
    let snap = fizz::net::inspect::snapshot(node.pins.0.as_path()).unwrap();
    assert_eq!(snap.services[0].connects, 30, "one pick per socket");
    assert_eq!(snap.services[0].packets, 0, "nothing was NAT'd per packet");
    assert!(snap.conntrack.is_empty(), "no flow in conntrack: {:?}", snap.conntrack);
    let picks = dp.maps().sock_picks.entries().unwrap();
    assert_eq!(picks.len(), 30, "one pick per socket and VIP: {picks:?}");
    let vip_be = u32::from_ne_bytes(VIP.octets());
    assert!(picks.iter().all(|(k, _)| k.addr_be == vip_be && k.port_be == 53u16.to_be()), "{picks:?}");
    let replies = dp.maps().sock_replies.entries().unwrap();
    assert!(replies.len() == 30 && replies.iter().all(|(_, peer)| peer.vip_be == vip_be), "{replies:?}");

    // A connected socket, and a client this node did not declare, are NAT'd
    // at TC; they are answered from the VIP too.
    let connected = client
        .ns
        .run(|| {
            let s = udp_socket();
            s.connect(vip).unwrap();
            s.send(b"?").unwrap();
            let mut buf = [0u8; 64];
            let (_, from) = s.recv_from(&mut buf).unwrap();
            (from, s.peer_addr().unwrap())
        })
        .unwrap();
    assert_eq!(connected, (vip, vip));
    let (_, from) = nat_client.ns.run(|| ask(&udp_socket(), vip)).unwrap();
    assert_eq!(from, vip);
    let snap = fizz::net::inspect::snapshot(node.pins.0.as_path()).unwrap();
    let clients: Vec<&str> = snap.conntrack.iter().map(|f| f.client.split(':').next().unwrap()).collect();
    assert!(clients.contains(&client.addr.to_string().as_str()), "the connected socket is NAT'd: {clients:?}");
    assert!(clients.contains(&nat_client.addr.to_string().as_str()), "the undeclared client is NAT'd: {clients:?}");

    // b0 goes, from the first slot, so the other two backends' slots move:
    // no socket's datagram reaches b0 afterwards, and every socket on b1 or
    // b2 keeps its backend.
    dp.set_service(&udp_spec(&[&backends[1], &backends[2]])).unwrap();
    let mut second = Vec::new();
    for (s, was) in sockets.iter().zip(&first) {
        let (now, from) = ask(s, vip);
        assert_eq!(from, vip);
        assert_ne!(now, "b0", "a removed backend got a datagram");
        if was != "b0" {
            assert_eq!(&now, was, "a socket whose backend stayed keeps it, though its slot moved");
        }
        second.push(now);
    }
    // b0 comes back in front of them: every socket keeps its backend, and a
    // new socket's picks reach b0 again.
    dp.set_service(&udp_spec(&backends.iter().collect::<Vec<_>>())).unwrap();
    for (s, was) in sockets.iter().zip(&second) {
        assert_eq!(&ask(s, vip).0, was, "a socket keeps its backend when another joins");
    }
    let fresh: Vec<String> = client.ns.run(|| (0..6).map(|_| ask(&udp_socket(), vip).0).collect()).unwrap();
    assert!(fresh.iter().any(|b| b == "b0"), "new sockets reach the backend that came back: {fresh:?}");

    // A datapath whose backends have no entries there (one from before
    // them) writes them when it opens: the sockets keep their backends.
    drop(dp);
    let mut maps = fizz::net::ebpf::maps::Maps::open(&fizz::net::ebpf::maps_dir(&node.pins.0)).unwrap();
    for bid in 0..16 {
        maps.backend_refs.set(bid, &fizz_common::BackendRef::default()).unwrap();
    }
    let _dp = node.datapath().unwrap();
    for (s, was) in sockets.iter().zip(&second) {
        assert_eq!(&ask(s, vip).0, was, "a socket keeps its backend when the datapath opens again");
    }
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let d = std::env::temp_dir().join(fizz_tests::unique("T"));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}
