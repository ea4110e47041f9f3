//! The gossip task: owns the UDP socket and the clock, and drives a [`Membership`] with them.
//!
//! Nothing here decides anything about the protocol; it receives datagrams, sleeps until the
//! next deadline, forwards commands from the [`GossipHandle`], sends what the state machine
//! asks for, and publishes the member list. Stopping the task without [`GossipHandle::leave`]
//! (dropping or aborting the handle, a crash) sends nothing: peers find out by probing.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use rand::TryRng;
use tokio::{
    net::UdpSocket,
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    crypto::{Key, MAX_PACKET},
    Event, GossipError, MemberView, Membership, NodeMeta, Output, Stats, Tuning,
};

/// How many events a slow subscriber may fall behind before it misses some (the member list
/// in [`GossipHandle::subscribe`] is always complete).
const EVENT_BACKLOG: usize = 256;

/// What a gossip task needs to start.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// The address to bind, e.g. `0.0.0.0:7946`.
    pub bind: SocketAddr,
    /// The address peers send to; by default the bound address, which must then be specific.
    pub advertise: Option<SocketAddr>,
    /// The node's name.
    pub name: String,
    /// The node's container range (opaque here).
    pub range: String,
    /// The node's WireGuard public key (opaque here).
    pub wg_pubkey: String,
    /// This start's generation (see [`super::next_generation`]).
    pub generation: u64,
    /// The packet key.
    pub key: Key,
    /// Failure-detection timing.
    pub tuning: Tuning,
}

enum Command {
    Join(Vec<SocketAddr>),
    Stats(oneshot::Sender<Stats>),
    UpdateMeta(NodeMeta, oneshot::Sender<Result<(), GossipError>>),
    Leave(oneshot::Sender<()>),
}

/// The handle to a running gossip task. Dropping it stops the task without leaving.
#[derive(Debug)]
pub struct GossipHandle {
    commands: mpsc::Sender<Command>,
    members: watch::Receiver<Vec<MemberView>>,
    events: broadcast::Sender<Event>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GossipHandle {
    /// Binds the socket and starts the task. The node is alone until [`Self::join`].
    pub async fn start(config: GossipConfig) -> Result<GossipHandle, GossipError> {
        let socket_error = |source| GossipError::Socket {
            addr: config.bind,
            source,
        };
        let socket = UdpSocket::bind(config.bind).await.map_err(socket_error)?;
        let local_addr = socket.local_addr().map_err(socket_error)?;
        let meta = NodeMeta {
            name: config.name,
            addr: config.advertise.unwrap_or(local_addr),
            range: config.range,
            wg_pubkey: config.wg_pubkey,
        };
        let mut entropy = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut entropy)
            .map_err(GossipError::Entropy)?;
        let membership =
            Membership::new(meta, config.generation, config.key, config.tuning, entropy)?;

        let (commands, command_rx) = mpsc::channel(16);
        let (members_tx, members) = watch::channel(membership.members());
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let task = tokio::spawn(
            Driver {
                socket,
                membership,
                clock: Clock::start(),
                members: members_tx,
                events: events.clone(),
            }
            .run(command_rx),
        );
        Ok(GossipHandle {
            commands,
            members,
            events,
            local_addr,
            task,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Joins the cluster the seeds belong to (retried until some member answers).
    pub async fn join(&self, seeds: Vec<SocketAddr>) -> Result<(), GossipError> {
        self.command(Command::Join(seeds)).await
    }

    /// The members known now, this node first.
    pub fn members(&self) -> Vec<MemberView> {
        self.members.borrow().clone()
    }

    /// The member list, updated whenever it changes.
    pub fn subscribe(&self) -> watch::Receiver<Vec<MemberView>> {
        self.members.clone()
    }

    /// Membership events as they happen.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The packet and protocol counters.
    pub async fn stats(&self) -> Result<Stats, GossipError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Stats(tx)).await?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// Changes the node's range or WireGuard key; peers see it as a new generation.
    pub async fn update_meta(&self, range: String, wg_pubkey: String) -> Result<(), GossipError> {
        let me = self
            .members
            .borrow()
            .first()
            .cloned()
            .ok_or(GossipError::Stopped)?;
        let meta = NodeMeta {
            name: me.name,
            addr: me.addr,
            range,
            wg_pubkey,
        };
        let (tx, rx) = oneshot::channel();
        self.command(Command::UpdateMeta(meta, tx)).await?;
        rx.await.map_err(|_| GossipError::Stopped)?
    }

    /// Leaves the cluster gracefully: peers are told at once, then the task stops.
    pub async fn leave(mut self) -> Result<(), GossipError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Leave(tx)).await?;
        rx.await.map_err(|_| GossipError::Stopped)?;
        let _ = (&mut self.task).await;
        Ok(())
    }

    /// Stops the task at once, as a crash would: nothing is sent.
    pub fn abort(self) {
        self.task.abort();
    }

    async fn command(&self, command: Command) -> Result<(), GossipError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| GossipError::Stopped)
    }
}

impl Drop for GossipHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A monotonic clock anchored at the wall-clock time it started, in the form
/// [`Membership`] takes.
struct Clock {
    start: Instant,
    start_unix: Duration,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            start: Instant::now(),
            start_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    fn now(&self) -> Duration {
        self.start_unix + self.start.elapsed()
    }

    fn instant(&self, at: Duration) -> Instant {
        self.start + at.saturating_sub(self.start_unix)
    }
}

struct Driver {
    socket: UdpSocket,
    membership: Membership,
    clock: Clock,
    members: watch::Sender<Vec<MemberView>>,
    events: broadcast::Sender<Event>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        // One byte more than the largest packet, so an oversized datagram is seen as such
        // rather than silently cut to a size that looks valid.
        let mut buf = vec![0u8; MAX_PACKET + 1];
        loop {
            let deadline = self
                .membership
                .next_deadline()
                .map(|at| self.clock.instant(at));
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let outputs = tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        self.membership.handle_packet(self.clock.now(), from, &buf[..len])
                    }
                    // Unconnected UDP sockets report little; go on, without spinning if the
                    // error persists.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Vec::new()
                    }
                },
                () = sleep => self.membership.handle_timeout(self.clock.now()),
                command = commands.recv() => match command {
                    // Every handle is gone: stop without a word.
                    None => return,
                    Some(Command::Join(seeds)) => self.membership.join(self.clock.now(), &seeds),
                    Some(Command::Stats(reply)) => {
                        let _ = reply.send(self.membership.stats());
                        Vec::new()
                    }
                    Some(Command::UpdateMeta(meta, reply)) => {
                        match self.membership.update_meta(self.clock.now(), meta) {
                            Ok(outputs) => {
                                let _ = reply.send(Ok(()));
                                outputs
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                                Vec::new()
                            }
                        }
                    }
                    Some(Command::Leave(done)) => {
                        let outputs = self.membership.leave(self.clock.now());
                        self.apply(outputs).await;
                        let _ = done.send(());
                        return;
                    }
                },
            };
            self.apply(outputs).await;
        }
    }

    async fn apply(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, packet } => {
                    if self.socket.send_to(&packet, to).await.is_err() {
                        self.membership.record_send_error();
                    }
                }
                Output::Event(event) => {
                    // No subscriber is fine.
                    let _ = self.events.send(event);
                }
            }
        }
        let members = self.membership.members();
        self.members.send_if_modified(|current| {
            if *current == members {
                false
            } else {
                *current = members;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gossip::{crypto::DropReason, MemberState};

    async fn start(name: &str, secret: &[u8]) -> GossipHandle {
        GossipHandle::start(GossipConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            name: name.into(),
            range: format!("10.42.{}.0/24", name.len()),
            wg_pubkey: format!("wg-{name}"),
            generation: 1,
            key: Key::derive(secret),
            tuning: Tuning::default(),
        })
        .await
        .unwrap()
    }

    fn state_of(handle: &GossipHandle, name: &str) -> Option<MemberState> {
        handle
            .members()
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.state)
    }

    /// Waits until `check` holds for `handle`'s member list, returning how long it took.
    async fn until(
        handle: &GossipHandle,
        limit: Duration,
        check: impl Fn(&[MemberView]) -> bool,
    ) -> Duration {
        let started = Instant::now();
        let mut rx = handle.subscribe();
        let result = tokio::time::timeout(limit, rx.wait_for(|m| check(m))).await;
        assert!(
            matches!(result, Ok(Ok(_))),
            "not reached within {limit:?}: {:#?}",
            handle.members()
        );
        started.elapsed()
    }

    #[tokio::test]
    async fn three_agents_on_loopback() {
        let a = start("a", b"cluster").await;
        let b = start("b", b"cluster").await;
        let c = start("c", b"cluster").await;
        let intruder = start("intruder", b"another secret").await;
        b.join(vec![a.local_addr()]).await.unwrap();
        c.join(vec![a.local_addr()]).await.unwrap();
        intruder
            .join(vec![a.local_addr(), b.local_addr()])
            .await
            .unwrap();

        let all_alive = |m: &[MemberView]| {
            ["a", "b", "c"].iter().all(|n| {
                m.iter()
                    .any(|v| v.name == *n && v.state == MemberState::Alive)
            })
        };
        for h in [&a, &b, &c] {
            let took = until(h, Duration::from_secs(5), all_alive).await;
            eprintln!("{} converged in {took:?}", h.members()[0].name);
        }
        // Metadata travels with the identity.
        let seen_c = a.members().into_iter().find(|m| m.name == "c").unwrap();
        assert_eq!(seen_c.addr, c.local_addr());
        assert_eq!(
            (seen_c.range.as_str(), seen_c.wg_pubkey.as_str()),
            ("10.42.1.0/24", "wg-c")
        );

        // A graceful leave is seen at once.
        let mut events = a.events();
        c.leave().await.unwrap();
        let took = until(&a, Duration::from_secs(2), |m| {
            m.iter()
                .any(|v| v.name == "c" && v.state == MemberState::Down)
        })
        .await;
        eprintln!("leave seen in {took:?}");
        assert!(took < Duration::from_secs(1));
        let mut saw_down = false;
        while let Ok(event) = events.try_recv() {
            saw_down |= matches!(event, Event::MemberDown(v) if v.name == "c");
        }
        assert!(saw_down);

        // A crash (no leave) is detected by probing.
        b.abort();
        // With one other member left, `a` probes `b` every period: the next probe fails within
        // two periods, then the suspicion runs out (4 s with the defaults).
        let took = until(&a, Duration::from_secs(10), |m| {
            m.iter()
                .any(|v| v.name == "b" && v.state == MemberState::Down)
        })
        .await;
        eprintln!("crash detected in {took:?}");
        assert!(
            took <= Duration::from_secs(7),
            "crash detected after {took:?}"
        );

        // The intruder never became a member, and learnt nothing.
        assert_eq!(state_of(&a, "intruder"), None);
        assert_eq!(intruder.members().len(), 1);
        let stats = a.stats().await.unwrap();
        assert!(stats.dropped.get(DropReason::Unauthentic) > 0, "{stats:?}");
        assert_eq!(stats.received, stats.accepted + stats.dropped.total());
        assert!(stats.sent > 0);
        a.leave().await.unwrap();
        intruder.abort();
    }
}
