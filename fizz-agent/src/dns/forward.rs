//! Asking the upstream servers about names that are not Fizz's.
//!
//! Each question goes out on a fresh UDP socket (a new source port) under a
//! fresh unpredictable id, to one server after the other until one answers,
//! all within one deadline. A reply counts only if it comes from the server
//! asked, carries our id, is a response and repeats our question. A
//! truncated reply is asked again over TCP.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::{timeout, Instant},
};

use super::wire::{HEADER_LEN, MAX_TCP_MESSAGE};

/// The receive buffer for an upstream UDP reply. Bigger replies are rare
/// (the client would have to advertise more than this) and are fetched over
/// TCP instead, so a forward in flight holds only this much.
const UDP_BUFFER: usize = 4096;

/// The upstream servers, tried in order.
#[derive(Debug)]
pub(crate) struct Upstream {
    servers: Vec<SocketAddr>,
    deadline: Duration,
    /// Keyed hashing of a counter: ids an off-path sender cannot predict,
    /// with no random number crate.
    ids: RandomState,
    next: AtomicU64,
}

impl Upstream {
    /// Forwards to `servers`, giving up on a question after `deadline`.
    pub(crate) fn new(servers: Vec<SocketAddr>, deadline: Duration) -> Upstream {
        Upstream {
            servers,
            deadline,
            ids: RandomState::new(),
            next: AtomicU64::new(0),
        }
    }

    /// Whether there is anyone to forward to.
    pub(crate) fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The reply to `query` (a whole message whose question section ends at
    /// `question_end`), under our own id, or `None` if no server answered in
    /// time. The servers share the deadline: each gets an equal part of what
    /// is left when its turn comes.
    pub(crate) async fn ask(&self, query: &[u8], question_end: usize) -> Option<Vec<u8>> {
        if query.len() < HEADER_LEN || query.len() > MAX_TCP_MESSAGE {
            return None;
        }
        let end = Instant::now() + self.deadline;
        for (i, server) in self.servers.iter().enumerate() {
            let left = end.saturating_duration_since(Instant::now());
            let share = left / u32::try_from(self.servers.len() - i).unwrap_or(u32::MAX);
            if share.is_zero() {
                break;
            }
            let mut query = query.to_vec();
            let id = self.next_id();
            query[..2].copy_from_slice(&id.to_be_bytes());
            if let Ok(Some(reply)) = timeout(share, ask_one(*server, &query, question_end)).await {
                return Some(reply);
            }
        }
        None
    }

    fn next_id(&self) -> u16 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Truncation keeps the low 16 bits of a keyed hash: all of them are
        // equally unpredictable.
        self.ids.hash_one(n) as u16
    }
}

/// Asks one server over UDP, then over TCP if the reply is truncated.
async fn ask_one(server: SocketAddr, query: &[u8], question_end: usize) -> Option<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    // Connected: the kernel drops datagrams from anyone else, and a closed
    // port comes back as an error at once instead of a timeout.
    socket.connect(server).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; UDP_BUFFER];
    let reply = loop {
        let n = socket.recv(&mut buf).await.ok()?;
        if answers(&buf[..n], query, question_end) {
            break &buf[..n];
        }
    };
    // TC is bit 1 of the third header byte. A reply that fills the buffer
    // may have been cut by it: treat it as truncated too.
    if reply[2] & 0x02 == 0 && reply.len() < UDP_BUFFER {
        return Some(reply.to_vec());
    }
    // Relay the truncated reply if TCP fails: the client may retry over TCP.
    Some(
        ask_tcp(server, query, question_end)
            .await
            .unwrap_or_else(|| reply.to_vec()),
    )
}

async fn ask_tcp(server: SocketAddr, query: &[u8], question_end: usize) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await.ok()?;
    let len = u16::try_from(query.len()).ok()?;
    let mut frame = Vec::with_capacity(query.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(query);
    stream.write_all(&frame).await.ok()?;
    loop {
        let len = stream.read_u16().await.ok()?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await.ok()?;
        if answers(&reply, query, question_end) {
            return Some(reply);
        }
    }
}

/// Whether `reply` answers `query`: same id, QR set, and the same question
/// (names compared without case), or no question at all (some servers send
/// errors without one).
fn answers(reply: &[u8], query: &[u8], question_end: usize) -> bool {
    if reply.len() < HEADER_LEN || reply[..2] != query[..2] || reply[2] & 0x80 == 0 {
        return false;
    }
    match u16::from_be_bytes([reply[4], reply[5]]) {
        0 => true,
        1 => {
            let question = &query[HEADER_LEN..question_end];
            reply
                .get(HEADER_LEN..question_end)
                .is_some_and(|theirs| theirs.eq_ignore_ascii_case(question))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_must_match_the_question() {
        // id 0xabcd, RD; one question: a.b. IN A
        let query = [
            0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 1, b'b', 0, 0, 1, 0, 1,
        ];
        let end = query.len();
        let mut reply = query.to_vec();
        reply[2] |= 0x80;
        assert!(answers(&reply, &query, end));
        reply[13] = b'A';
        assert!(answers(&reply, &query, end), "case differs");
        reply[15] = b'c';
        assert!(!answers(&reply, &query, end), "other name");
        let mut other_id = query.to_vec();
        other_id[2] |= 0x80;
        other_id[1] ^= 1;
        assert!(!answers(&other_id, &query, end));
        assert!(!answers(&query, &query, end), "not a response");
        let mut no_question = query[..HEADER_LEN].to_vec();
        no_question[2] |= 0x80;
        no_question[5] = 0;
        assert!(answers(&no_question, &query, end));
        assert!(!answers(&reply[..HEADER_LEN + 2], &query, end), "cut short");
    }

    #[test]
    fn ids_vary() {
        let upstream = Upstream::new(vec![], Duration::from_secs(1));
        let ids: std::collections::HashSet<u16> = (0..100).map(|_| upstream.next_id()).collect();
        assert!(ids.len() > 90, "{} distinct ids of 100", ids.len());
    }
}
