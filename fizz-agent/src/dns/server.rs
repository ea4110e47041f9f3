//! The sockets: one UDP socket and one TCP listener on the same port, the
//! tasks that read them, and the counters they keep.
//!
//! Local answers are computed inline on the UDP task (a table lookup is
//! cheaper than a task); forwarded questions each get a task, up to a limit.
//! TCP connections each get a task, up to a limit, and are closed when idle.
//! All tasks live in `JoinSet`s owned by the `Server`, so dropping it or
//! `shutdown` stops everything.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinSet,
    time::timeout,
};

use super::{
    forward::Upstream,
    records::SharedRecords,
    wire::{self, Counters, Outcome, Transport},
};

/// Errors starting the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the dns udp socket on {addr}")]
    BindUdp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The TCP listener could not be bound.
    #[error("cannot bind the dns tcp listener on {addr}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Asked for any port, no port was found free for both UDP and TCP.
    #[error("no port on {ip} is free for both dns over udp and over tcp")]
    NoCommonPort { ip: IpAddr },
}

/// How the server behaves; `Options::new` has the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Servers to forward names that are not Fizz's to, tried in order.
    pub upstream: Vec<SocketAddr>,
    /// How long a forwarded question may take, over all upstream servers,
    /// before the client gets SERVFAIL.
    pub upstream_timeout: Duration,
    /// How long a TCP connection may stay silent (or half-way through a
    /// message) before it is closed.
    pub tcp_idle_timeout: Duration,
    /// TCP connections served at once; more are closed at accept.
    pub max_tcp_connections: usize,
    /// Forwarded UDP questions in flight at once; more are dropped.
    pub max_forwards: usize,
}

impl Options {
    /// The defaults, forwarding to `upstream`.
    pub fn new(upstream: Vec<SocketAddr>) -> Options {
        Options {
            upstream,
            upstream_timeout: Duration::from_secs(3),
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 256,
            max_forwards: 1024,
        }
    }
}

/// A snapshot of the server's counters, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages received, over UDP and TCP.
    pub received: u64,
    /// Questions answered from the table (found, NODATA or NXDOMAIN).
    pub answered: u64,
    /// Questions sent upstream.
    pub forwarded: u64,
    /// SERVFAIL replies: no upstream configured, or none answered in time.
    pub upstream_failed: u64,
    /// Messages that could not be decoded, or did not hold exactly one
    /// question: dropped when shorter than a header, else FORMERR.
    pub malformed: u64,
    /// Responses (QR=1) received, dropped without a reply.
    pub responses_dropped: u64,
    /// Opcodes other than QUERY, answered with NOTIMP.
    pub not_implemented: u64,
    /// EDNS versions other than 0, answered with BADVERS.
    pub bad_version: u64,
    /// Replies cut to a header and question because they did not fit.
    pub truncated: u64,
    /// Questions and connections dropped because too many were in flight.
    pub overloaded: u64,
}

struct Shared {
    records: SharedRecords,
    upstream: Upstream,
    counters: Counters,
    options: Options,
}

/// A running DNS server. Dropping it stops it.
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds UDP and TCP on `addr` (port 0: one port free for both) and
    /// starts serving `records`, forwarding other names to `upstream`.
    ///
    /// # Errors
    ///
    /// When either socket cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        records: SharedRecords,
        upstream: Vec<SocketAddr>,
    ) -> Result<Server, DnsError> {
        Server::bind_with(addr, records, Options::new(upstream)).await
    }

    /// `bind`, with options.
    ///
    /// # Errors
    ///
    /// When either socket cannot be bound.
    pub async fn bind_with(
        addr: SocketAddr,
        records: SharedRecords,
        options: Options,
    ) -> Result<Server, DnsError> {
        let (udp, tcp) = bind_pair(addr).await?;
        let local_addr = udp
            .local_addr()
            .map_err(|source| DnsError::BindUdp { addr, source })?;
        let shared = Arc::new(Shared {
            records,
            upstream: Upstream::new(options.upstream.clone(), options.upstream_timeout),
            counters: Counters::default(),
            options,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(Arc::new(udp), shared.clone()));
        tasks.spawn(serve_tcp(tcp, shared.clone()));
        Ok(Server {
            local_addr,
            shared,
            tasks,
        })
    }

    /// The address served, on both UDP and TCP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            received: get(&c.received),
            answered: get(&c.answered),
            forwarded: get(&c.forwarded),
            upstream_failed: get(&c.upstream_failed),
            malformed: get(&c.malformed),
            responses_dropped: get(&c.responses_dropped),
            not_implemented: get(&c.not_implemented),
            bad_version: get(&c.bad_version),
            truncated: get(&c.truncated),
            overloaded: get(&c.overloaded),
        }
    }

    /// Stops serving and waits until the sockets are closed.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// A UDP socket and a TCP listener on the same address and port.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_udp = |addr| async move {
        UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::BindUdp { addr, source })
    };
    if addr.port() != 0 {
        let udp = bind_udp(addr).await?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| DnsError::BindTcp { addr, source })?;
        return Ok((udp, tcp));
    }
    // The port the kernel picks for UDP may be taken for TCP: try a few.
    for _ in 0..16 {
        let udp = bind_udp(addr).await?;
        let port = udp
            .local_addr()
            .map_err(|source| DnsError::BindUdp { addr, source })?
            .port();
        let at = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(source) => return Err(DnsError::BindTcp { addr: at, source }),
        }
    }
    Err(DnsError::NoCommonPort { ip: addr.ip() })
}

/// The client's IPv4 address, which the table knows containers by.
fn client_ip(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

fn handle(shared: &Shared, bytes: &[u8], transport: Transport, peer: SocketAddr) -> Outcome {
    let records = shared.records.load();
    let recursion = !shared.upstream.is_empty();
    wire::handle(
        bytes,
        transport,
        client_ip(peer),
        &records,
        recursion,
        &shared.counters,
    )
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    // One buffer for the largest datagram: a longer one cannot arrive.
    let mut buf = vec![0u8; wire::MAX_TCP_MESSAGE];
    let mut forwards = JoinSet::new();
    loop {
        while forwards.try_join_next().is_some() {}
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(_) => {
                // Errors here are transient (e.g. out of buffers); do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if peer.port() == 0 {
            // Nowhere to reply to; such a source is forged.
            Counters::bump(&shared.counters.received);
            Counters::bump(&shared.counters.malformed);
            continue;
        }
        match handle(&shared, &buf[..n], Transport::Udp, peer) {
            Outcome::Drop => {}
            Outcome::Reply(reply) => {
                // A lost reply is retried by the client, like a lost query.
                let _ = socket.send_to(&reply, peer).await;
            }
            Outcome::Forward(pending) => {
                if forwards.len() >= shared.options.max_forwards {
                    Counters::bump(&shared.counters.overloaded);
                    continue;
                }
                Counters::bump(&shared.counters.forwarded);
                let (socket, shared) = (socket.clone(), shared.clone());
                forwards.spawn(async move {
                    let upstream = shared
                        .upstream
                        .ask(&pending.query, pending.question_end)
                        .await;
                    let reply = pending.finish(upstream, &shared.counters);
                    let _ = socket.send_to(&reply, peer).await;
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of file descriptors, or a connection reset before
                // accept: wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if connections.len() >= shared.options.max_tcp_connections {
            Counters::bump(&shared.counters.overloaded);
            continue;
        }
        connections.spawn(serve_connection(stream, peer, shared.clone()));
    }
}

/// Serves one TCP connection: length-prefixed messages, answered in order,
/// until the peer closes it, stays idle too long, or breaks the framing.
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let idle = shared.options.tcp_idle_timeout;
    loop {
        let len = match timeout(idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            // Closed between messages, or idle: a normal end.
            _ => return,
        };
        // At most 64 KiB, as the prefix is 16 bits.
        let mut message = vec![0u8; len];
        if !matches!(
            timeout(idle, stream.read_exact(&mut message)).await,
            Ok(Ok(_))
        ) {
            // Closed or stalled half-way through a message.
            Counters::bump(&shared.counters.received);
            Counters::bump(&shared.counters.malformed);
            return;
        }
        let reply = match handle(&shared, &message, Transport::Tcp, peer) {
            Outcome::Drop => continue,
            Outcome::Reply(reply) => reply,
            Outcome::Forward(pending) => {
                Counters::bump(&shared.counters.forwarded);
                let upstream = shared
                    .upstream
                    .ask(&pending.query, pending.question_end)
                    .await;
                pending.finish(upstream, &shared.counters)
            }
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(reply.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&reply);
        if !matches!(timeout(idle, stream.write_all(&frame)).await, Ok(Ok(()))) {
            return;
        }
    }
}
