//! The client loops, run on a thread inside a client container: connection
//! rate, request/response rate (TCP, and UDP from an unconnected socket) and
//! stream throughput against one address.
//! Each loop runs for its duration plus at most one I/O timeout, and stops
//! early when a stop was asked for.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use fizz::net::service::Proto;

use super::interrupt;

/// The longest any single connect, read or write may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Size of the stream mode's writes.
const STREAM_BUF: usize = 64 * 1024;

/// What is measured; each mode has its own server port on the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Connect, one byte each way, close.
    Conn,
    /// One-byte ping-pong on one connection.
    Rr,
    /// One connection, the client writes as fast as it can.
    Stream,
    /// One-byte datagram ping-pong from an unconnected socket (`sendto`,
    /// `recvfrom`); an answer must come from the address asked.
    UdpRr,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Conn, Mode::Rr, Mode::Stream, Mode::UdpRr];

    /// The transport the mode runs over.
    pub fn proto(self) -> Proto {
        match self {
            Mode::Conn | Mode::Rr | Mode::Stream => Proto::Tcp,
            Mode::UdpRr => Proto::Udp,
        }
    }

    /// Whether the mode runs over UDP.
    pub fn is_udp(self) -> bool {
        self.proto() == Proto::Udp
    }

    /// The port the backend servers listen on for this mode.
    pub fn backend_port(self) -> u16 {
        match self {
            Mode::Conn => 8080,
            Mode::Rr => 8081,
            Mode::Stream => 8082,
            Mode::UdpRr => 8083,
        }
    }

    /// The service port of this mode on every VIP and on the proxy.
    pub fn vip_port(self) -> u16 {
        match self {
            Mode::Conn => 80,
            Mode::Rr => 81,
            Mode::Stream => 82,
            Mode::UdpRr => 83,
        }
    }

    /// The metric's key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Mode::Conn => "conn_rate",
            Mode::Rr => "rr",
            Mode::Stream => "stream",
            Mode::UdpRr => "udp_rr",
        }
    }

    /// The metric's name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Conn => "connection rate",
            Mode::Rr => "request/response",
            Mode::Stream => "stream",
            Mode::UdpRr => "UDP request/response",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Mode::Conn => "conn/s",
            Mode::Rr | Mode::UdpRr => "trans/s",
            Mode::Stream => "Gbit/s",
        }
    }
}

/// The result of one measurement.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// In the mode's unit.
    pub value: f64,
    /// Connections that failed (connection-rate mode), or datagrams not
    /// answered in time (UDP); the other modes fail on the first error.
    pub errors: u64,
}

/// Measures `mode` against `addr` for `dur`.
pub fn measure(mode: Mode, addr: SocketAddr, dur: Duration) -> Result<Outcome> {
    match mode {
        Mode::Conn => conn_rate(addr, dur),
        Mode::Rr => request_response(addr, dur),
        Mode::Stream => stream(addr, dur),
        Mode::UdpRr => udp_request_response(addr, dur),
    }
    .with_context(|| format!("{} against {addr}", mode.label()))
}

/// One exchange of the mode, to check that `addr` answers.
pub fn probe(mode: Mode, addr: SocketAddr) -> io::Result<()> {
    match mode {
        Mode::Conn => one_connection(addr),
        Mode::Rr => {
            let mut s = connect(addr)?;
            let mut b = [7u8];
            s.write_all(&b)?;
            s.read_exact(&mut b)
        }
        Mode::Stream => {
            let mut s = connect(addr)?;
            s.write_all(&[0u8; 1024])?;
            drain_after_shutdown(&mut s)
        }
        Mode::UdpRr => udp_exchange(&udp_socket()?, addr),
    }
}

fn udp_socket() -> io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// One byte to `addr` and its echo back, which must come from `addr`.
fn udp_exchange(s: &UdpSocket, addr: SocketAddr) -> io::Result<()> {
    s.send_to(&[7], addr)?;
    let mut b = [0u8; 16];
    let (_, from) = s.recv_from(&mut b)?;
    if from != addr {
        return Err(io::Error::other(format!("the answer came from {from}, not {addr}")));
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Connect, one byte each way, close. The client closes first (after it
/// read the answer), so the TIME_WAIT sockets are the client's.
fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[1])?;
    let mut b = [0u8];
    s.read_exact(&mut b)
}

fn conn_rate(addr: SocketAddr, dur: Duration) -> Result<Outcome> {
    let start = Instant::now();
    let (mut done, mut errors) = (0u64, 0u64);
    let mut last_error = None;
    while start.elapsed() < dur {
        interrupt::check()?;
        match one_connection(addr) {
            Ok(()) => done += 1,
            Err(e) => {
                errors += 1;
                last_error = Some(e);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if done == 0 {
        bail!("no connection succeeded ({errors} failed, the last with {last_error:?})");
    }
    Ok(Outcome { value: done as f64 / secs, errors })
}

fn request_response(addr: SocketAddr, dur: Duration) -> Result<Outcome> {
    let mut s = connect(addr).context("connecting")?;
    let mut b = [0u8];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        s.write_all(&b).context("writing a request")?;
        s.read_exact(&mut b).context("reading the answer")?;
        n += 1;
        interrupt::check()?;
    }
    Ok(Outcome { value: n as f64 / start.elapsed().as_secs_f64(), errors: 0 })
}

/// Datagram ping-pong on one unconnected socket. A datagram not answered
/// within the I/O timeout is counted as an error (and costs that time); an
/// answer from another address fails the measurement.
fn udp_request_response(addr: SocketAddr, dur: Duration) -> Result<Outcome> {
    let s = udp_socket().context("binding a UDP socket")?;
    let start = Instant::now();
    let (mut n, mut errors) = (0u64, 0u64);
    while start.elapsed() < dur {
        match udp_exchange(&s, addr) {
            Ok(()) => n += 1,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => errors += 1,
            Err(e) => return Err(e).context("a datagram exchange"),
        }
        interrupt::check()?;
    }
    if n == 0 {
        bail!("no datagram was answered ({errors} timed out)");
    }
    Ok(Outcome { value: n as f64 / start.elapsed().as_secs_f64(), errors })
}

/// Writes for `dur`, then half-closes and waits for the server to close
/// after reading everything: the time counted ends when the last byte was
/// received, not when it was queued.
fn stream(addr: SocketAddr, dur: Duration) -> Result<Outcome> {
    let mut s = connect(addr).context("connecting")?;
    let buf = vec![0x5au8; STREAM_BUF];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        s.write_all(&buf).context("writing")?;
        sent += buf.len() as u64;
        interrupt::check()?;
    }
    drain_after_shutdown(&mut s).context("waiting for the server to read everything")?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Outcome { value: sent as f64 * 8.0 / secs / 1e9, errors: 0 })
}

/// Half-closes and reads until the server closes.
fn drain_after_shutdown(s: &mut TcpStream) -> io::Result<()> {
    s.shutdown(Shutdown::Write)?;
    let mut b = [0u8; 64];
    while s.read(&mut b)? != 0 {}
    Ok(())
}
