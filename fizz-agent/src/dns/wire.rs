//! From the bytes of one DNS message to the bytes of its reply (pure, no IO).
//!
//! Every check on hostile input happens here, in this order: too short for a
//! header → dropped; a response (QR=1) → dropped; an opcode other than QUERY
//! → NOTIMP; not exactly one question → FORMERR; undecodable → FORMERR; an
//! EDNS version other than 0 → BADVERS. What survives is looked up in the
//! record table, or handed back to the caller to forward upstream.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
    rr::DNSClass,
    serialize::binary::{BinDecodable, BinDecoder},
};

use super::records::{Answer, Records};

/// The UDP payload size we advertise, and the most we send over UDP.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP payload size every client accepts.
pub(crate) const MIN_UDP_PAYLOAD: u16 = 512;
/// The largest message a TCP frame holds.
pub(crate) const MAX_TCP_MESSAGE: usize = u16::MAX as usize;
/// Length of the fixed header.
pub(crate) const HEADER_LEN: usize = 12;

/// How the message came in, which bounds the size of the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// Counts of what the server saw. Every message bumps `received` and
/// exactly one of `answered`, `forwarded`, `upstream_failed`, `malformed`,
/// `responses_dropped`, `not_implemented`, `bad_version` and `overloaded`;
/// a forwarded question that no upstream answers also bumps
/// `upstream_failed`, and `truncated` comes on top of any reply.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) upstream_failed: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) responses_dropped: AtomicU64,
    pub(crate) not_implemented: AtomicU64,
    pub(crate) bad_version: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) overloaded: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What to do with a message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send nothing.
    Drop,
    /// The name is not ours: ask upstream (and count it as forwarded, or
    /// as overloaded if it cannot be), then `Pending::finish`.
    Forward(Pending),
}

/// A query waiting for an upstream answer.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The client's query as it came, to be sent upstream.
    pub(crate) query: Vec<u8>,
    /// Where the question section ends in `query`.
    pub(crate) question_end: usize,
    request: Message,
    limit: usize,
}

/// Handles one message from `client` (its IPv4 address, if it has one).
/// `recursion` says whether there are upstream servers to forward to.
pub(crate) fn handle(
    bytes: &[u8],
    transport: Transport,
    client: Option<Ipv4Addr>,
    records: &Records,
    recursion: bool,
    counters: &Counters,
) -> Outcome {
    Counters::bump(&counters.received);
    let mut decoder = BinDecoder::new(bytes);
    let Ok(header) = Header::read(&mut decoder) else {
        // Shorter than a header: nothing to address a reply to.
        Counters::bump(&counters.malformed);
        return Outcome::Drop;
    };
    if header.metadata.message_type == MessageType::Response {
        // Never answer an answer: that is how reflection loops start.
        Counters::bump(&counters.responses_dropped);
        return Outcome::Drop;
    }
    if header.metadata.op_code != OpCode::Query {
        Counters::bump(&counters.not_implemented);
        return Outcome::Reply(header_only(&header.metadata, ResponseCode::NotImp));
    }
    if header.counts.queries != 1 {
        Counters::bump(&counters.malformed);
        return Outcome::Reply(header_only(&header.metadata, ResponseCode::FormErr));
    }
    // One question, so the message can be decoded without allocating for
    // what the header counts claim; record vectors grow only as records
    // actually decode.
    let Ok(request) = Message::from_vec(bytes) else {
        Counters::bump(&counters.malformed);
        return Outcome::Reply(header_only(&header.metadata, ResponseCode::FormErr));
    };
    let limit = reply_limit(&request, transport);
    if request
        .edns
        .as_ref()
        .is_some_and(|edns| edns.version() != 0)
    {
        Counters::bump(&counters.bad_version);
        let reply = response(&request, ResponseCode::BADVERS, recursion);
        return Outcome::Reply(encode(&reply, limit, counters));
    }

    let query = &request.queries[0];
    let answer = if query.query_class() == DNSClass::IN {
        records.lookup(client, query.name(), query.query_type())
    } else {
        Answer::NotOurs
    };
    let (code, answers) = match answer {
        Answer::NameFound(records) => (ResponseCode::NoError, records),
        Answer::NxDomain => (ResponseCode::NXDomain, Vec::new()),
        Answer::NotOurs if recursion => {
            let question_end = question_end(bytes);
            return Outcome::Forward(Pending {
                query: bytes.to_vec(),
                question_end,
                request,
                limit,
            });
        }
        Answer::NotOurs => {
            Counters::bump(&counters.upstream_failed);
            let reply = response(&request, ResponseCode::ServFail, recursion);
            return Outcome::Reply(encode(&reply, limit, counters));
        }
    };
    Counters::bump(&counters.answered);
    let mut reply = response(&request, code, recursion);
    reply.metadata.authoritative = true;
    reply.answers = answers;
    Outcome::Reply(encode(&reply, limit, counters))
}

impl Pending {
    /// The reply to send the client, given the upstream's (`None` if no
    /// upstream answered): the upstream's bytes under the client's query id,
    /// or SERVFAIL; truncated if too big for the client.
    pub(crate) fn finish(&self, upstream: Option<Vec<u8>>, counters: &Counters) -> Vec<u8> {
        let servfail = |counters: &Counters| {
            Counters::bump(&counters.upstream_failed);
            let reply = response(&self.request, ResponseCode::ServFail, true);
            encode(&reply, self.limit, counters)
        };
        let Some(mut reply) = upstream.filter(|r| r.len() >= HEADER_LEN) else {
            return servfail(counters);
        };
        reply[..2].copy_from_slice(&self.request.metadata.id.to_be_bytes());
        if reply.len() <= self.limit {
            return reply;
        }
        match Message::from_vec(&reply) {
            Ok(message) => truncated(&message, counters),
            Err(_) => servfail(counters),
        }
    }
}

/// The most a reply may hold: 512 bytes over UDP without EDNS, else what the
/// client advertised, between 512 and our own limit; a TCP frame over TCP.
fn reply_limit(request: &Message, transport: Transport) -> usize {
    match (transport, &request.edns) {
        (Transport::Tcp, _) => MAX_TCP_MESSAGE,
        (Transport::Udp, None) => MIN_UDP_PAYLOAD as usize,
        (Transport::Udp, Some(edns)) => {
            edns.max_payload().clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize
        }
    }
}

/// Where the question section of a decodable one-question message ends.
fn question_end(bytes: &[u8]) -> usize {
    let mut decoder = BinDecoder::new(bytes);
    match Header::read(&mut decoder).and_then(|_| Query::read(&mut decoder)) {
        Ok(_) => decoder.index(),
        // The caller decoded the whole message already; keep to the header.
        Err(_) => HEADER_LEN,
    }
}

/// A reply to `request` with its question, and an OPT record if it had one.
fn response(request: &Message, code: ResponseCode, recursion: bool) -> Message {
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.recursion_available = recursion;
    reply.metadata.response_code = code;
    reply.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD).set_version(0);
        reply.set_edns(edns);
    }
    reply
}

/// A reply with only a header: for messages whose question we do not trust.
fn header_only(request: &Metadata, code: ResponseCode) -> Vec<u8> {
    let mut reply = Message::response(request.id, request.op_code);
    reply.metadata = Metadata::response_from_request(request);
    reply.metadata.response_code = code;
    match reply.to_vec() {
        Ok(bytes) => bytes,
        // A header with no records always encodes; keep the id at least.
        Err(_) => fallback_header(request.id, code),
    }
}

/// `message` encoded, or its truncated form (TC=1, no records) if it does
/// not fit in `limit` bytes.
fn encode(message: &Message, limit: usize, counters: &Counters) -> Vec<u8> {
    match message.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        _ => truncated(message, counters),
    }
}

fn truncated(message: &Message, counters: &Counters) -> Vec<u8> {
    Counters::bump(&counters.truncated);
    // The header (with TC set), the question and the OPT record; no records.
    match message.truncate().to_vec() {
        Ok(bytes) => bytes,
        Err(_) => fallback_header(message.metadata.id, ResponseCode::ServFail),
    }
}

/// A bare response header, built by hand for when encoding fails.
fn fallback_header(id: u16, code: ResponseCode) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    bytes[2] = 0x80;
    bytes[3] = code.low();
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
    use std::net::Ipv4Addr;

    use crate::dns::records::ServiceEntry;

    fn records(replicas: usize) -> Records {
        let tasks =
            (0..replicas).map(|i| Ipv4Addr::new(10, 42, (i / 250) as u8, (i % 250) as u8 + 1));
        Records::build(
            [ServiceEntry {
                project: "shop".into(),
                name: "web".into(),
                vip: Ipv4Addr::new(10, 43, 0, 1),
                aliases: vec![],
                tasks: tasks.collect(),
            }],
            [],
        )
    }

    fn query(name: &str, edns: Option<(u16, u8)>) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if let Some((size, version)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size).set_version(version);
            m.set_edns(e);
        }
        m
    }

    fn reply(bytes: &[u8], transport: Transport, table: &Records) -> Message {
        let counters = Counters::default();
        match handle(bytes, transport, None, table, false, &counters) {
            Outcome::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn udp_limit_follows_edns_within_bounds() {
        let table = records(100);
        let name = "tasks.web.shop.fizz.";
        // 100 A records are about 1.6 KB: too big for 512 and for 1232.
        for edns in [None, Some((100, 0)), Some((4096, 0))] {
            let r = reply(&query(name, edns).to_vec().unwrap(), Transport::Udp, &table);
            assert!(r.metadata.truncation, "edns {edns:?}");
            assert!(r.answers.is_empty());
            assert_eq!(r.queries.len(), 1);
            assert_eq!(r.edns.is_some(), edns.is_some());
        }
        let r = reply(&query(name, None).to_vec().unwrap(), Transport::Tcp, &table);
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 100);
        // 40 records fit in 1232 but not in 512.
        let table = records(40);
        let r = reply(
            &query(name, Some((1232, 0))).to_vec().unwrap(),
            Transport::Udp,
            &table,
        );
        assert_eq!((r.metadata.truncation, r.answers.len()), (false, 40));
        let r = reply(&query(name, None).to_vec().unwrap(), Transport::Udp, &table);
        assert_eq!((r.metadata.truncation, r.answers.len()), (true, 0));
    }

    #[test]
    fn badvers_carries_question_and_opt() {
        let table = records(1);
        let r = reply(
            &query("web.shop.fizz.", Some((1232, 1))).to_vec().unwrap(),
            Transport::Udp,
            &table,
        );
        assert_eq!(u16::from(r.metadata.response_code), 16);
        assert_eq!(r.queries.len(), 1);
        let edns = r.edns.expect("opt record");
        assert_eq!((edns.version(), edns.max_payload()), (0, MAX_UDP_PAYLOAD));
    }

    #[test]
    fn forwarded_replies_take_the_clients_id_and_limit() {
        let table = records(0);
        let counters = Counters::default();
        let q = query("example.com.", None).to_vec().unwrap();
        let Outcome::Forward(pending) = handle(&q, Transport::Udp, None, &table, true, &counters)
        else {
            panic!("expected forward");
        };
        assert_eq!(&pending.query[12..pending.question_end], &q[12..q.len()]);

        let mut upstream = query("example.com.", None);
        upstream.metadata.id = 0x9999;
        upstream.metadata.message_type = MessageType::Response;
        let small = pending.finish(Some(upstream.to_vec().unwrap()), &counters);
        assert_eq!(Message::from_vec(&small).unwrap().metadata.id, 0x1234);

        for i in 0..40u8 {
            upstream.add_answer(Record::from_rdata(
                Name::from_ascii("example.com.").unwrap(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
            ));
        }
        let big = Message::from_vec(&pending.finish(Some(upstream.to_vec().unwrap()), &counters))
            .unwrap();
        assert_eq!(
            (big.metadata.id, big.metadata.truncation, big.answers.len()),
            (0x1234, true, 0)
        );

        let failed = Message::from_vec(&pending.finish(None, &counters)).unwrap();
        assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(counters.upstream_failed.load(Ordering::Relaxed), 1);
    }
}
