//! Spreading the state: TCP between nodes, on the gossip port's number, every frame sealed
//! with a key derived from the cluster secret (`gossip::crypto`, its stream purpose).
//!
//! Two conversations, both started by the node that has something to say:
//!
//! - **push** (after a local write): `Entries` → the peer stores them durably → `Ack`;
//! - **anti-entropy** (every few seconds with a random peer, and with a peer that appears):
//!   `Hello{summary}` → `Same`, or `Differ` → `Entries{all of ours}` → `Entries{what the peer
//!   has newer or we lack}`. After it both sides hold the union.
//!
//! And one started by a node that is not a member yet, **join**: `Join` → `Welcome{cluster
//! secret}`, both sealed under the key derived from the join token's secret, which the
//! members hold in the replicated state (`join` key). A token rotated away is no longer
//! answered.
//!
//! A frame is `u32` big-endian length, then the sealed message (version, session, counter,
//! time, ciphertext, tag). Each side of a connection picks a random session; a frame is
//! accepted only with the next counter of the session the peer opened with, fresh within the
//! clock window, and authentic. Lengths are checked before anything is allocated
//! ([`MAX_FRAME`]). A replayed conversation can only deliver entries already written, which
//! merging ignores. This module does IO only; merging is the agent loop's ([`Incoming`]).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
};

use super::{crdt::Lww, Batch, Value};
use crate::gossip::crypto::{self, DropReason, Key, Sealer};

/// The largest frame accepted (the whole state of a big cluster fits).
pub const MAX_FRAME: usize = 64 << 20;
/// How long one conversation may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The clock window of frames (as gossip packets').
const MAX_SKEW_MS: u64 = 60_000;

/// What this node holds, as the sync server answers from it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub map: Lww<Value>,
    pub summary: [u8; 32],
}

impl Snapshot {
    pub fn of(map: &Lww<Value>) -> Snapshot {
        Snapshot { map: map.clone(), summary: map.summary() }
    }
}

/// Entries a peer sent, for the loop to merge; `done` is answered once they are durable.
#[derive(Debug)]
pub struct Incoming {
    pub batch: Batch,
    pub done: oneshot::Sender<()>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Hello { summary: [u8; 32] },
    Same,
    Differ,
    Entries { batch: Batch },
    Ack,
    Join,
    Welcome { cluster_secret: [u8; 32] },
}

/// Why a conversation failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer cannot be reached or the connection broke.
    #[error("state sync with {peer}: {source}")]
    Io { peer: SocketAddr, #[source] source: std::io::Error },
    /// The conversation took longer than its deadline.
    #[error("state sync with {peer}: no answer within {TIMEOUT:?}")]
    Timeout { peer: SocketAddr },
    /// A frame failed its checks.
    #[error("state sync with {peer}: frame dropped: {reason}")]
    Frame { peer: SocketAddr, reason: FrameError },
    /// The peer said something out of turn.
    #[error("state sync with {peer}: unexpected {what}")]
    Protocol { peer: SocketAddr, what: &'static str },
}

/// What is wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Longer than [`MAX_FRAME`].
    #[error("{0} bytes exceed the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    /// The envelope's checks failed.
    #[error("{0}")]
    Envelope(DropReason),
    /// Authentic but not a message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One side of a connection: our sealing session and what we expect of the peer's.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    key: Key,
    sealer: Sealer,
    peer_session: Option<[u8; 16]>,
    peer_next: u64,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, key: Key) -> Conn {
        let mut session = [0u8; 16];
        rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, &mut session).expect("the OS random source");
        Conn { stream, peer, key, sealer: Sealer::new(session), peer_session: None, peer_next: 0 }
    }

    async fn send(&mut self, msg: &Msg) -> Result<(), SyncError> {
        let plain = serde_json::to_vec(msg).expect("messages always serialize");
        let frame = crypto::seal_any(&self.key, &mut self.sealer, now_ms(), &plain)
            .map_err(|_| SyncError::Protocol { peer: self.peer, what: "end of the sealing session" })?;
        if frame.len() > MAX_FRAME {
            return Err(SyncError::Frame { peer: self.peer, reason: FrameError::TooLong(frame.len()) });
        }
        let io = |source| SyncError::Io { peer: self.peer, source };
        self.stream.write_all(&(frame.len() as u32).to_be_bytes()).await.map_err(io)?;
        self.stream.write_all(&frame).await.map_err(io)
    }

    async fn recv(&mut self) -> Result<Msg, SyncError> {
        let frame = self.read_frame().await?;
        self.open(&frame)
    }

    async fn read_frame(&mut self) -> Result<Vec<u8>, SyncError> {
        let peer = self.peer;
        let io = |source| SyncError::Io { peer, source };
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(SyncError::Frame { peer, reason: FrameError::TooLong(len) });
        }
        let mut frame = vec![0u8; len];
        self.stream.read_exact(&mut frame).await.map_err(io)?;
        Ok(frame)
    }

    fn open(&mut self, frame: &[u8]) -> Result<Msg, SyncError> {
        let peer = self.peer;
        let (want_session, want_counter) = (self.peer_session, self.peer_next);
        let opened = crypto::open_any(&self.key, now_ms(), MAX_SKEW_MS, frame, |s, c| {
            // The first frame opens the peer's session; every later one is its next counter.
            if want_session.is_some_and(|w| w != *s) || c != want_counter {
                return Err(DropReason::Replayed);
            }
            Ok(())
        })
        .map_err(|r| SyncError::Frame { peer, reason: FrameError::Envelope(r) })?;
        self.peer_session = Some(opened.session);
        self.peer_next += 1;
        serde_json::from_slice(&opened.plaintext)
            .map_err(|e| SyncError::Frame { peer, reason: FrameError::Malformed(e.to_string()) })
    }
}

async fn connect(peer: SocketAddr, key: &Key) -> Result<Conn, SyncError> {
    let stream = TcpStream::connect(peer).await.map_err(|source| SyncError::Io { peer, source })?;
    let _ = stream.set_nodelay(true);
    Ok(Conn::new(stream, peer, key.clone()))
}

async fn deadline<T>(peer: SocketAddr, f: impl std::future::Future<Output = Result<T, SyncError>>) -> Result<T, SyncError> {
    tokio::time::timeout(TIMEOUT, f).await.map_err(|_| SyncError::Timeout { peer })?
}

/// Sends a batch to a peer and waits until it holds it durably.
pub async fn push(peer: SocketAddr, key: &Key, batch: Batch) -> Result<(), SyncError> {
    deadline(peer, async {
        let mut c = connect(peer, key).await?;
        c.send(&Msg::Entries { batch }).await?;
        match c.recv().await? {
            Msg::Ack => Ok(()),
            _ => Err(SyncError::Protocol { peer, what: "answer to a push" }),
        }
    })
    .await
}

/// Compares states with a peer and exchanges what differs. Returns what the peer had that
/// we lack, for the loop to merge (the peer merges ours itself).
pub async fn exchange(peer: SocketAddr, key: &Key, ours: Arc<Snapshot>) -> Result<Batch, SyncError> {
    deadline(peer, async {
        let mut c = connect(peer, key).await?;
        c.send(&Msg::Hello { summary: ours.summary }).await?;
        match c.recv().await? {
            Msg::Same => return Ok(Vec::new()),
            Msg::Differ => {}
            _ => return Err(SyncError::Protocol { peer, what: "answer to hello" }),
        }
        let all: Batch = ours.map.entries().map(|(k, e)| (k.to_string(), e.clone())).collect();
        c.send(&Msg::Entries { batch: all }).await?;
        match c.recv().await? {
            Msg::Entries { batch } => Ok(batch),
            _ => Err(SyncError::Protocol { peer, what: "answer to entries" }),
        }
    })
    .await
}

/// Asks a member for the cluster secret with a join token's secret: what a node that joins
/// needs before it can speak to the cluster at all.
pub async fn welcome(peer: SocketAddr, join_secret: &[u8; 32]) -> Result<[u8; 32], SyncError> {
    deadline(peer, async {
        let mut c = connect(peer, &Key::derive_join(join_secret)).await?;
        c.send(&Msg::Join).await?;
        match c.recv().await? {
            Msg::Welcome { cluster_secret } => Ok(cluster_secret),
            _ => Err(SyncError::Protocol { peer, what: "answer to join" }),
        }
    })
    .await
}

/// What the sync server answers with: the cluster's secret, and where the join token's secret
/// is found (the snapshot's `join` entry; the cluster secret itself for a cluster made before
/// join tokens had their own secret).
#[derive(Clone)]
pub struct Secrets {
    pub cluster: [u8; 32],
}

impl Secrets {
    fn join_key(&self, snapshot: &Snapshot) -> Key {
        match snapshot.map.get(super::JOIN_KEY) {
            Some(Value::Join(j)) => Key::derive_join(j),
            _ => Key::derive_join(&self.cluster),
        }
    }
}

/// Serves peers on `listener` until the task is dropped: answers from the latest snapshot and
/// hands what they send to the loop.
pub async fn serve(
    listener: TcpListener,
    secrets: Secrets,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    incoming: mpsc::Sender<Incoming>,
) {
    let key = Key::derive_stream(&secrets.cluster);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (key, secrets, snapshot, incoming) = (key.clone(), secrets.clone(), snapshot.clone(), incoming.clone());
        tokio::spawn(async move {
            let conn = Conn::new(stream, peer, key);
            if let Err(e) = deadline(peer, answer(conn, secrets, snapshot, incoming)).await {
                // Strangers and garbage end here; a peer retries by itself.
                if !matches!(e, SyncError::Frame { .. }) {
                    eprintln!("fizz agent: {e}");
                }
            }
        });
    }
}

async fn answer(
    mut c: Conn,
    secrets: Secrets,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    incoming: mpsc::Sender<Incoming>,
) -> Result<(), SyncError> {
    let peer = c.peer;
    let merge = |batch: Batch| async {
        let (done, wait) = oneshot::channel();
        if incoming.send(Incoming { batch, done }).await.is_err() {
            return Err(SyncError::Protocol { peer, what: "shutdown" });
        }
        wait.await.map_err(|_| SyncError::Protocol { peer, what: "entries the store refused" })
    };
    let frame = c.read_frame().await?;
    let first = match c.open(&frame) {
        Ok(m) => m,
        Err(member) => {
            // Not a member's frame: a node joining with the current token, or a stranger.
            let join = secrets.join_key(&snapshot.borrow());
            c.key = join;
            return match c.open(&frame) {
                Ok(Msg::Join) => c.send(&Msg::Welcome { cluster_secret: secrets.cluster }).await,
                Ok(_) => Err(SyncError::Protocol { peer, what: "first message of a join" }),
                Err(_) => Err(member),
            };
        }
    };
    match first {
        Msg::Entries { batch } => {
            merge(batch).await?;
            c.send(&Msg::Ack).await
        }
        Msg::Hello { summary } => {
            let ours = snapshot.borrow().clone();
            if summary == ours.summary {
                return c.send(&Msg::Same).await;
            }
            c.send(&Msg::Differ).await?;
            let Msg::Entries { batch } = c.recv().await? else {
                return Err(SyncError::Protocol { peer, what: "message after differ" });
            };
            let theirs = batch.iter().map(|(k, e)| (k.clone(), e.stamp)).collect();
            c.send(&Msg::Entries { batch: ours.map.newer_than(&theirs) }).await?;
            merge(batch).await
        }
        _ => Err(SyncError::Protocol { peer, what: "first message" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{crdt::Entry, scale_key};

    fn entry(t: u64, n: u32) -> Entry<Value> {
        Entry { stamp: uhlc::Timestamp::new(uhlc::NTP64(t), uhlc::ID::try_from(1u8).unwrap()), value: Some(Value::Scale(n)) }
    }

    /// A server whose "loop" merges into a map it publishes.
    async fn server(secret: [u8; 32], map: Lww<Value>) -> (SocketAddr, watch::Receiver<Arc<Snapshot>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::of(&map)));
        let (in_tx, mut in_rx) = mpsc::channel::<Incoming>(8);
        tokio::spawn(serve(listener, Secrets { cluster: secret }, snap_rx.clone(), in_tx));
        tokio::spawn(async move {
            let mut map = map;
            while let Some(i) = in_rx.recv().await {
                for (k, e) in i.batch {
                    map.merge(&k, e);
                }
                snap_tx.send_replace(Arc::new(Snapshot::of(&map)));
                let _ = i.done.send(());
            }
        });
        (addr, snap_rx)
    }

    #[tokio::test]
    async fn push_and_anti_entropy_reach_the_union() {
        let key = Key::derive_stream(&[3u8; 32]);
        let mut theirs = Lww::default();
        theirs.merge(&scale_key("p", "a"), entry(5, 1));
        theirs.merge(&scale_key("p", "b"), entry(5, 2));
        let (addr, snap) = server([3u8; 32], theirs).await;

        push(addr, &key, vec![(scale_key("p", "c"), entry(6, 3))]).await.unwrap();
        assert_eq!(snap.borrow().map.get(&scale_key("p", "c")), Some(&Value::Scale(3)), "durable before the ack");

        let mut ours = Lww::default();
        ours.merge(&scale_key("p", "a"), entry(9, 10));
        let got = exchange(addr, &key, Arc::new(Snapshot::of(&ours))).await.unwrap();
        for (k, e) in got {
            ours.merge(&k, e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ours, snap.borrow().map, "both hold the union");
        assert_eq!(ours.get(&scale_key("p", "a")), Some(&Value::Scale(10)), "the newer write wins on both");
        assert!(exchange(addr, &key, Arc::new(Snapshot::of(&ours))).await.unwrap().is_empty(), "same summary: nothing sent");
    }

    #[tokio::test]
    async fn strangers_and_garbage_change_nothing() {
        let (addr, snap) = server([3u8; 32], Lww::default()).await;
        let wrong = Key::derive_stream(&[4u8; 32]);
        let e = push(addr, &wrong, vec![(scale_key("p", "a"), entry(1, 1))]).await.unwrap_err();
        assert!(matches!(e, SyncError::Io { .. } | SyncError::Timeout { .. }), "{e}");
        // A huge claimed length, then garbage of the right length.
        for bytes in [vec![0xff, 0xff, 0xff, 0xff], [&40u32.to_be_bytes()[..], &[7u8; 40]].concat()] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
            assert!(buf.is_empty());
        }
        assert!(snap.borrow().map.is_empty());
    }

    #[tokio::test]
    async fn a_join_gets_the_cluster_secret_only_with_the_current_token() {
        let cluster = [3u8; 32];
        let (first, second) = ([8u8; 32], [9u8; 32]);
        let mut map = Lww::default();
        map.merge(crate::state::JOIN_KEY, Entry { value: Some(Value::Join(first)), ..entry(1, 0) });
        let (addr, _) = server(cluster, map).await;
        assert_eq!(welcome(addr, &first).await.unwrap(), cluster);
        assert!(welcome(addr, &second).await.is_err(), "not the current token");
        assert!(welcome(addr, &cluster).await.is_err(), "the cluster secret is not a token once a join secret exists");
        // Rotated: the new token is answered, the old one no longer.
        push(addr, &Key::derive_stream(&cluster), vec![(crate::state::JOIN_KEY.to_string(), Entry { value: Some(Value::Join(second)), ..entry(2, 0) })])
            .await
            .unwrap();
        assert_eq!(welcome(addr, &second).await.unwrap(), cluster);
        assert!(welcome(addr, &first).await.is_err(), "a rotated-away token is refused");
    }

    #[tokio::test]
    async fn a_cluster_without_a_join_secret_takes_its_own_secret_as_the_token() {
        let (addr, _) = server([5u8; 32], Lww::default()).await;
        assert_eq!(welcome(addr, &[5u8; 32]).await.unwrap(), [5u8; 32]);
    }
}
