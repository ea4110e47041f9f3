//! The backend servers, one port per load mode, and `Background`: a tokio
//! runtime on a thread inside a network namespace, which the servers and the
//! proxy run on until they are dropped.

use std::{future::Future, net::SocketAddr, thread::JoinHandle, time::Duration};

use anyhow::{anyhow, Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::oneshot,
};

use super::load::Mode;

/// A tokio runtime running on a thread inside a network namespace. Sockets
/// its tasks create belong to that namespace: the runtime's worker threads
/// are started by that thread and inherit it. Stopped and joined on drop.
pub struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Background {
    /// Starts the runtime (`workers` worker threads, or the current-thread
    /// runtime for 0; on CPU `cpu` only, when given) in the namespace at
    /// `ns_path` and runs `setup` on it,
    /// which binds its listeners and spawns its tasks. Returns once `setup`
    /// succeeded, so the listeners accept from then on.
    pub fn start<F, Fut>(what: &str, ns_path: &str, workers: usize, cpu: Option<usize>, setup: F) -> Result<Background>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>>,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = fizz_tests::spawn_in(ns_path, move || {
            if let Some(cpu) = cpu {
                if let Err(e) = fizz_tests::pin_to_cpu(cpu) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let rt = if workers == 0 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
            };
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!(e).context("building a tokio runtime")));
                    return;
                }
            };
            rt.block_on(async move {
                match setup().await {
                    Ok(()) => {
                        let _ = ready_tx.send(Ok(()));
                        // Either a stop or the guard being dropped ends the wait.
                        let _ = stop_rx.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
        let mut bg = Background { stop: Some(stop_tx), thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(bg),
            Ok(Err(e)) => Err(e.context(format!("starting {what}"))),
            // The thread ended before it could answer: it never entered the
            // namespace, or it panicked.
            Err(_) => {
                let thread = bg.thread.take().expect("set above");
                match thread.join() {
                    Ok(Err(e)) => Err(e.context(format!("starting {what}"))),
                    _ => Err(anyhow!("starting {what}: its thread ended early")),
                }
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the servers of every mode on `0.0.0.0:<mode's port>` in the
/// namespace at `ns_path`, on one thread (kept on CPU `cpu` when given).
pub fn start(ns_path: &str, cpu: Option<usize>) -> Result<Background> {
    Background::start("the backend servers", ns_path, 0, cpu, || async {
        for mode in Mode::ALL {
            let addr = SocketAddr::from(([0, 0, 0, 0], mode.backend_port()));
            if mode.is_udp() {
                let socket = UdpSocket::bind(addr).await.with_context(|| format!("binding UDP {addr}"))?;
                tokio::spawn(echo_datagrams(socket));
                continue;
            }
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            tokio::spawn(accept_loop(listener, mode));
        }
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, mode: Mode) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(async move {
                    // A client that goes away mid-exchange is not an error
                    // of the server's; the client loop counts it.
                    let _ = serve(s, mode).await;
                });
            }
            // Out of file descriptors or similar: let connections finish.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Sends every datagram back to where it came from.
async fn echo_datagrams(socket: UdpSocket) {
    let mut buf = [0u8; 64];
    loop {
        if let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    }
}

async fn serve(mut s: TcpStream, mode: Mode) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; if mode == Mode::Stream { 64 * 1024 } else { 64 }];
    match mode {
        // One byte each way, then wait for the client to close first.
        Mode::Conn => {
            s.read_exact(&mut buf[..1]).await?;
            s.write_all(&buf[..1]).await?;
            while s.read(&mut buf).await? != 0 {}
        }
        // Echo each byte until the client closes.
        Mode::Rr => loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await?;
        },
        // Read and discard until the client closes.
        Mode::Stream => while s.read(&mut buf).await? != 0 {},
        Mode::UdpRr => {}
    }
    Ok(())
}
