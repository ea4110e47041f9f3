//! A userspace TCP proxy in the manner of docker-proxy: a listener per port,
//! a task per connection that connects to the backend and copies both ways
//! until both sides closed. It runs on two worker threads, as many as the
//! machine has cores, with TCP_NODELAY on both sides (Go's default).

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{load::Mode, servers::Background};

/// Buffer size of each direction of a relay.
const COPY_BUF: usize = 32 * 1024;

/// Starts the proxy in the namespace at `ns_path`: `listen:<mode's VIP port>`
/// to `backend:<mode's backend port>` for every TCP mode. Its connections to the
/// backend are bound to `listen`, an address only that namespace has, so
/// they can never leave through another one.
pub fn start(ns_path: &str, listen: Ipv4Addr, backend: Ipv4Addr) -> Result<Background> {
    Background::start("the userspace proxy", ns_path, 2, None, move || async move {
        for mode in Mode::ALL.into_iter().filter(|m| !m.is_udp()) {
            let addr = SocketAddr::from((listen, mode.vip_port()));
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let to = SocketAddr::from((backend, mode.backend_port()));
            tokio::spawn(accept_loop(listener, listen, to));
        }
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, source: Ipv4Addr, to: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(async move {
                    // A failed relay closes the client's connection, which
                    // the client loop counts.
                    let _ = relay(s, source, to).await;
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn relay(mut inbound: TcpStream, source: Ipv4Addr, to: SocketAddr) -> std::io::Result<()> {
    inbound.set_nodelay(true)?;
    let mut outbound = connect_from(source, to).await?;
    outbound.set_nodelay(true)?;
    tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut outbound, COPY_BUF, COPY_BUF).await?;
    Ok(())
}

/// Connects to `to` from `source`, choosing the port at connect time (as an
/// unbound connect does) so ports in TIME_WAIT can be reused.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the open socket above, and the option value
    // points to a c_int that lives across the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(to).await
}
