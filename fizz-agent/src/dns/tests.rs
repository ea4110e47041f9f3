//! The server over real sockets on 127.0.0.1: answers, scoping, updates,
//! hostile input, truncation and forwarding.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{rdata::A, Name, RData, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    time::timeout,
};

use super::*;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn service(name: &str, vip: [u8; 4], replicas: usize) -> ServiceEntry {
    let tasks = (0..replicas).map(|i| Ipv4Addr::new(10, 42, (i / 250) as u8, (i % 250) as u8 + 1));
    ServiceEntry {
        project: "shop".into(),
        name: name.into(),
        vip: vip.into(),
        aliases: vec![],
        tasks: tasks.collect(),
    }
}

/// `web` (3 replicas) and `big` (100 replicas) in project `shop`, whose
/// client is 127.0.0.1 (every test client).
fn table(with_web: bool) -> Records {
    let mut services = vec![service("big", [10, 43, 0, 2], 100)];
    if with_web {
        services.push(service("web", [10, 43, 0, 1], 3));
    }
    let client = ClientEntry {
        addr: LOCALHOST,
        project: "shop".into(),
        networks: vec![],
    };
    Records::build(services, [client])
}

async fn start(records: SharedRecords, upstream: Vec<SocketAddr>) -> Server {
    let options = Options {
        upstream_timeout: Duration::from_millis(500),
        tcp_idle_timeout: Duration::from_millis(500),
        ..Options::new(upstream)
    };
    Server::bind_with((LOCALHOST, 0).into(), records, options)
        .await
        .unwrap()
}

fn query(id: u16, name: &str, qtype: RecordType, edns: Option<(u16, u8)>) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some((size, version)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size).set_version(version);
        m.set_edns(e);
    }
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

/// Sends `message` over UDP and waits `wait` for one reply.
async fn udp_raw(server: SocketAddr, message: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    socket.send_to(message, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

async fn udp(server: SocketAddr, message: &Message) -> Message {
    let reply = udp_raw(server, &bytes(message), Duration::from_secs(5))
        .await
        .expect("a reply");
    Message::from_vec(&reply).unwrap()
}

async fn tcp(server: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let body = bytes(message);
    stream
        .write_all(&(body.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
    Message::from_vec(&reply).unwrap()
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0,
            other => panic!("unexpected record {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn names_are_answered_over_udp_and_tcp() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let at = server.local_addr();
    for name in ["web.shop.fizz.", "WEB.shop.", "web."] {
        let q = query(0x4242, name, RecordType::A, None);
        for reply in [udp(at, &q).await, tcp(at, &q).await] {
            assert_eq!(reply.metadata.id, 0x4242, "{name}");
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert!(reply.metadata.authoritative && reply.metadata.recursion_desired);
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert_eq!(addrs(&reply), [Ipv4Addr::new(10, 43, 0, 1)], "{name}");
            assert_eq!(reply.answers[0].ttl, VIP_TTL);
            assert_eq!(reply.answers[0].name, Name::from_ascii(name).unwrap());
        }
    }
    let nodata = udp(at, &query(1, "web.shop.fizz.", RecordType::AAAA, None)).await;
    assert_eq!(
        (nodata.metadata.response_code, nodata.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_eq!(server.stats().answered, 7);
}

#[tokio::test]
async fn tasks_lists_every_replica() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let reply = udp(
        server.local_addr(),
        &query(7, "tasks.web.", RecordType::A, None),
    )
    .await;
    let expect: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 42, 0, i)).collect();
    assert_eq!(addrs(&reply), expect);
    assert!(reply.answers.iter().all(|r| r.ttl == TASKS_TTL));
}

#[tokio::test]
async fn a_removed_service_is_nxdomain_at_once() {
    let records = SharedRecords::new(table(true));
    let server = start(records.clone(), vec![]).await;
    let q = query(9, "web.shop.fizz.", RecordType::A, None);
    assert_eq!(addrs(&udp(server.local_addr(), &q).await).len(), 1);
    records.replace(table(false));
    let reply = udp(server.local_addr(), &q).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.metadata.authoritative && reply.answers.is_empty());
    let over_tcp = tcp(server.local_addr(), &q).await;
    assert_eq!(over_tcp.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn responses_get_no_reply() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let mut m = query(3, "web.shop.fizz.", RecordType::A, None);
    m.metadata.message_type = MessageType::Response;
    let reply = udp_raw(server.local_addr(), &bytes(&m), Duration::from_millis(300)).await;
    assert_eq!(reply, None);
    // Garbage with QR set is dropped too, not answered with FORMERR.
    let garbage = [0u8, 1, 0x80, 0, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7];
    let reply = udp_raw(server.local_addr(), &garbage, Duration::from_millis(300)).await;
    assert_eq!(reply, None);
    assert_eq!(server.stats().responses_dropped, 2);
}

#[tokio::test]
async fn other_opcodes_are_notimp() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    for op in [
        OpCode::Status,
        OpCode::Notify,
        OpCode::Update,
        OpCode::Unknown(3),
    ] {
        let mut m = query(11, "web.shop.fizz.", RecordType::A, None);
        m.metadata.op_code = op;
        let reply = udp(server.local_addr(), &m).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp, "{op:?}");
        assert_eq!((reply.metadata.id, reply.metadata.op_code), (11, op));
        assert!(reply.answers.is_empty());
    }
    assert_eq!(server.stats().not_implemented, 4);
}

#[tokio::test]
async fn anything_but_one_question_is_formerr() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let mut two = query(12, "web.shop.fizz.", RecordType::A, None);
    two.add_query(Query::query(
        Name::from_ascii("big.shop.fizz.").unwrap(),
        RecordType::A,
    ));
    let mut none = query(13, "web.shop.fizz.", RecordType::A, None);
    none.queries.clear();
    for m in [two, none] {
        let reply = udp(server.local_addr(), &m).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(reply.metadata.id, m.metadata.id);
        assert!(reply.queries.is_empty() && reply.answers.is_empty());
    }
    // A question cut short: the header is sound, the rest is not.
    let cut = bytes(&query(14, "web.shop.fizz.", RecordType::A, None));
    let reply = udp_raw(
        server.local_addr(),
        &cut[..cut.len() - 3],
        Duration::from_secs(5),
    )
    .await;
    let reply = Message::from_vec(&reply.unwrap()).unwrap();
    assert_eq!(
        (reply.metadata.id, reply.metadata.response_code),
        (14, ResponseCode::FormErr)
    );
    assert_eq!(server.stats().malformed, 3);
}

#[tokio::test]
async fn edns_is_answered_with_opt_and_badvers_for_other_versions() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let reply = udp(
        server.local_addr(),
        &query(15, "web.", RecordType::A, Some((4096, 0))),
    )
    .await;
    let edns = reply.edns.as_ref().expect("an OPT record");
    assert_eq!((edns.version(), edns.max_payload()), (0, 1232));
    assert_eq!(addrs(&reply).len(), 1);

    let reply = udp(
        server.local_addr(),
        &query(16, "web.", RecordType::A, Some((1232, 1))),
    )
    .await;
    assert_eq!(u16::from(reply.metadata.response_code), 16, "BADVERS");
    assert_eq!(reply.edns.as_ref().map(Edns::version), Some(0));
    assert_eq!(reply.queries.len(), 1);
    assert!(reply.answers.is_empty());
    assert_eq!(server.stats().bad_version, 1);

    let plain = udp(server.local_addr(), &query(17, "web.", RecordType::A, None)).await;
    assert!(plain.edns.is_none());
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let q = query(18, "tasks.big.", RecordType::A, None);
    let reply = udp(server.local_addr(), &q).await;
    assert!(reply.metadata.truncation);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.queries.len(), 1);
    let reply = tcp(server.local_addr(), &q).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(addrs(&reply).len(), 100);
    // 100 records do not fit 1232 bytes either.
    let with_edns = query(19, "tasks.big.", RecordType::A, Some((4096, 0)));
    assert!(
        udp(server.local_addr(), &with_edns)
            .await
            .metadata
            .truncation
    );
    assert_eq!(server.stats().truncated, 2);
}

/// A fake upstream on one port: over UDP it answers `example.com.` with
/// 192.0.2.1, and `big.example.com.` with a truncated reply; over TCP it
/// answers `big.example.com.` with 50 addresses. It records the ids it saw.
async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let udp = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let at = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(at).await.unwrap();
    let answer = |q: &Message| {
        let name = q.queries[0].name().clone();
        let mut reply = Message::response(q.metadata.id, OpCode::Query);
        reply.metadata.recursion_available = true;
        reply.add_query(q.queries[0].clone());
        let count = if name.to_ascii().starts_with("big.") {
            50
        } else {
            1
        };
        for i in 0..count {
            let a = RData::A(A(Ipv4Addr::new(192, 0, 2, i + 1)));
            reply.add_answer(Record::from_rdata(name.clone(), 60, a));
        }
        reply
    };
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            tokio::select! {
                Ok((n, peer)) = udp.recv_from(&mut buf) => {
                    let q = Message::from_vec(&buf[..n]).unwrap();
                    let mut reply = answer(&q);
                    if reply.answers.len() > 1 {
                        reply = reply.truncate();
                    }
                    udp.send_to(&bytes(&reply), peer).await.unwrap();
                }
                Ok((mut stream, _)) = tcp.accept() => {
                    let len = stream.read_u16().await.unwrap();
                    let mut body = vec![0u8; usize::from(len)];
                    stream.read_exact(&mut body).await.unwrap();
                    let reply = bytes(&answer(&Message::from_vec(&body).unwrap()));
                    stream.write_all(&(reply.len() as u16).to_be_bytes()).await.unwrap();
                    stream.write_all(&reply).await.unwrap();
                }
            }
        }
    });
    (at, task)
}

#[tokio::test]
async fn other_names_are_forwarded_and_relayed_under_the_clients_id() {
    let (upstream, fake) = fake_upstream().await;
    let server = start(SharedRecords::new(table(true)), vec![upstream]).await;
    let at = server.local_addr();

    let q = query(0xbeef, "example.com.", RecordType::A, None);
    for reply in [udp(at, &q).await, tcp(at, &q).await] {
        assert_eq!(reply.metadata.id, 0xbeef);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(!reply.metadata.authoritative);
        assert_eq!(addrs(&reply), [Ipv4Addr::new(192, 0, 2, 1)]);
    }
    // Truncated upstream over UDP: fetched again over TCP. The client asked
    // over UDP with room for it, so it gets all 50.
    let big = query(0xcafe, "big.example.com.", RecordType::A, Some((1232, 0)));
    let reply = udp(at, &big).await;
    assert_eq!(
        (reply.metadata.id, reply.metadata.truncation),
        (0xcafe, false)
    );
    assert_eq!(addrs(&reply).len(), 50);
    // Without EDNS 50 records do not fit 512 bytes: truncated for the client,
    // whole over TCP.
    let small = query(0xcaff, "big.example.com.", RecordType::A, None);
    let reply = udp(at, &small).await;
    assert_eq!(
        (reply.metadata.id, reply.metadata.truncation),
        (0xcaff, true)
    );
    assert_eq!(addrs(&tcp(at, &small).await).len(), 50);

    // Fizz names never go upstream, even when they do not exist.
    let reply = udp(at, &query(1, "nope.shop.fizz.", RecordType::A, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(server.stats().forwarded, 5);
    assert_eq!(server.stats().upstream_failed, 0);
    fake.abort();
}

#[tokio::test]
async fn upstream_down_or_missing_is_servfail_within_the_timeout() {
    // A port with nobody behind it refuses at once; a silent socket never
    // answers, so only the deadline ends the wait.
    let closed = UdpSocket::bind((LOCALHOST, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    for upstream in [
        vec![closed],
        vec![silent.local_addr().unwrap()],
        vec![closed, closed],
        vec![],
    ] {
        let server = start(SharedRecords::new(table(true)), upstream.clone()).await;
        let started = Instant::now();
        let reply = udp(
            server.local_addr(),
            &query(21, "example.com.", RecordType::A, None),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(reply.metadata.id, 21);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{upstream:?}"
        );
        assert_eq!(reply.queries.len(), 1);
        assert!(
            took < Duration::from_millis(1500),
            "{upstream:?} took {took:?}"
        );
        assert_eq!(server.stats().upstream_failed, 1);
    }
}

/// xorshift64*: a fixed seed gives the same inputs every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Random bytes, or a valid query mangled: cut, bytes flipped, or a
    /// plausible header (a query, one question) over random bytes.
    fn message(&mut self, valid: &[u8]) -> Vec<u8> {
        match self.below(4) {
            0 => {
                let len = self.below(600);
                self.bytes(len)
            }
            1 => valid[..self.below(valid.len())].to_vec(),
            2 => {
                let mut m = valid.to_vec();
                for _ in 0..1 + self.below(4) {
                    let at = self.below(m.len());
                    m[at] = self.next() as u8;
                }
                m
            }
            _ => {
                let mut m = valid[..12].to_vec();
                m[2] &= 0x01;
                let len = self.below(300);
                m.extend(self.bytes(len));
                m
            }
        }
    }
}

async fn wait_for_received(server: &Server, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().received < count {
        assert!(
            Instant::now() < deadline,
            "server saw {:?} of {count}",
            server.stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn random_bytes_are_survived_and_counted() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let at = server.local_addr();
    let valid = bytes(&query(
        0x5151,
        "web.shop.fizz.",
        RecordType::A,
        Some((1232, 0)),
    ));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let mut sent = 0u64;
    for _ in 0..100 {
        // In batches, so the server's receive buffer never overflows and
        // every datagram is counted.
        for _ in 0..100 {
            socket.send_to(&rng.message(&valid), at).await.unwrap();
            sent += 1;
        }
        wait_for_received(&server, sent).await;
    }
    let after_udp = server.stats();
    assert_eq!(after_udp.received, 10_000);
    let classified = after_udp.answered
        + after_udp.forwarded
        + after_udp.upstream_failed
        + after_udp.malformed
        + after_udp.responses_dropped
        + after_udp.not_implemented
        + after_udp.bad_version;
    assert_eq!(classified, after_udp.received, "{after_udp:?}");
    assert!(after_udp.malformed > 1_000, "{after_udp:?}");
    assert!(
        after_udp.responses_dropped > 0 && after_udp.not_implemented > 0,
        "{after_udp:?}"
    );

    // Over TCP: a random length prefix with fewer bytes behind it, then EOF
    // (counted, connection closed without a reply); and whole frames of
    // garbage, answered or dropped one by one.
    for i in 0..8 {
        let mut stream = TcpStream::connect(at).await.unwrap();
        let (len, body) = if i % 2 == 0 {
            let len = 13 + rng.below(65_000);
            let short = 1 + rng.below(12);
            (len, rng.bytes(len - short))
        } else {
            let body = rng.message(&valid);
            (body.len(), body)
        };
        stream.write_all(&(len as u16).to_be_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        if i % 2 == 0 {
            assert!(rest.is_empty(), "a cut message got a reply");
        }
    }
    let after_tcp = server.stats();
    assert!(
        after_tcp.malformed >= after_udp.malformed + 4,
        "{after_tcp:?}"
    );

    let q = query(0x7777, "web.shop.fizz.", RecordType::A, None);
    assert_eq!(addrs(&udp(at, &q).await), [Ipv4Addr::new(10, 43, 0, 1)]);
    assert_eq!(addrs(&tcp(at, &q).await), [Ipv4Addr::new(10, 43, 0, 1)]);
}

#[tokio::test]
async fn a_stalled_tcp_client_is_closed_and_others_are_served() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let at = server.local_addr();
    let mut stalled = TcpStream::connect(at).await.unwrap();
    stalled.write_all(&[0x10, 0x00, 1, 2, 3]).await.unwrap();
    let q = query(0x7878, "web.shop.fizz.", RecordType::A, None);
    assert_eq!(addrs(&tcp(at, &q).await).len(), 1);
    let mut rest = Vec::new();
    let closed = timeout(Duration::from_secs(3), stalled.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    assert_eq!(server.stats().malformed, 1);
}

#[tokio::test]
async fn shutdown_frees_the_port() {
    let server = start(SharedRecords::new(table(true)), vec![]).await;
    let at = server.local_addr();
    server.shutdown().await;
    let again = Server::bind(at, SharedRecords::new(table(true)), vec![])
        .await
        .unwrap();
    assert_eq!(again.local_addr(), at);
    let reply = udp(at, &query(1, "web.shop.fizz.", RecordType::A, None)).await;
    assert_eq!(addrs(&reply).len(), 1);
}
