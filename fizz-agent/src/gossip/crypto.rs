//! The gossip packet envelope: every datagram is sealed with a key derived from the cluster
//! secret, and opened (checked, decrypted, de-duplicated) before anything decodes it.
//!
//! This module is pure: it takes the time and the randomness it needs as arguments and does no
//! IO. It knows nothing of SWIM or foca; it only turns plaintext into packets and back.
//!
//! # Wire format (version 1)
//!
//! ```text
//! 0     1                 17           25           33              len-16     len
//! | ver | session (16)    | counter (8) | time_ms (8) | ciphertext ... | tag (16) |
//! ```
//!
//! - `ver` is [`VERSION`]; anything else is dropped before any cryptography.
//! - `session` is 16 random bytes a sender picks when it starts; `counter` counts the packets
//!   that session sealed, from 0. Together they are the 24-byte XChaCha20-Poly1305 nonce, so a
//!   nonce is never reused under one key: a session never repeats a counter and two sessions
//!   collide with negligible probability.
//! - `time_ms` is the sender's wall clock (milliseconds since the Unix epoch) when it sealed.
//! - The 33-byte header is the AEAD's associated data: changing any of it fails authentication.
//!
//! The format has no length field: every size is the datagram's own, checked against
//! [`MIN_PACKET`] and [`MAX_PACKET`] before anything is allocated, so a packet cannot make the
//! receiver allocate more than the bytes it actually sent.
//!
//! # Replay protection
//!
//! A packet is accepted only if it is authentic, *fresh* (its `time_ms` is within
//! `max_skew` of the receiver's clock) and *new* (its `(session, counter)` was not accepted
//! before). [`ReplayGuard`] remembers, per session, the highest counter seen and a bitmap of
//! the [`REPLAY_WINDOW`] counters below it (as WireGuard and IPsec do); a counter further
//! behind is dropped as a replay.
//!
//! - A restarted sender is never locked out: it picks a new session, whose counters start
//!   afresh. No state needs to survive a restart on either side, and a sender's clock may even
//!   have gone backwards across the restart.
//! - A session's entry is forgotten only once its newest accepted `time_ms` is older than
//!   `max_skew`: by then every packet it ever had accepted fails the freshness check, so
//!   forgetting it cannot let one back in. The table is bounded ([`MAX_SESSIONS`]); only
//!   authentic packets create entries, so only key holders can fill it, and if they do the
//!   stalest entry is evicted (the one case where an old packet could be replayed, within the
//!   skew window).
//! - A receiver that restarts loses its table, so a packet captured in the last `max_skew`
//!   could be replayed to it once. The membership layer makes that harmless: every gossip
//!   message names its destination's identity, which carries a generation that changes on
//!   every restart, so replayed messages addressed to the previous process are ignored.
//! - The cost is that clocks must agree within `max_skew` (60 s by default): a node whose clock
//!   is further off has its packets dropped as [`DropReason::Stale`], visibly in the counters.

use std::collections::HashMap;

use chacha20poly1305::{
    aead::{AeadInOut, KeyInit},
    Tag, XChaCha20Poly1305, XNonce,
};
use hkdf::Hkdf;
use sha2::Sha256;

/// The envelope's version byte.
pub const VERSION: u8 = 1;
/// Bytes before the ciphertext: version, session, counter, time.
pub const HEADER_LEN: usize = 1 + 16 + 8 + 8;
/// Bytes of the authentication tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes the envelope adds to a plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest datagram sealed or accepted (below a 1500-byte MTU with IPv6 and UDP headers).
pub const MAX_PACKET: usize = 1400;
/// The smallest datagram that can be authentic (an empty plaintext).
pub const MIN_PACKET: usize = OVERHEAD;
/// The largest plaintext that fits in [`MAX_PACKET`].
pub const MAX_PLAINTEXT: usize = MAX_PACKET - OVERHEAD;
/// How many counters behind a session's highest one are still accepted (reordering tolerance).
pub const REPLAY_WINDOW: u64 = 128;
/// How many sender sessions a [`ReplayGuard`] remembers at most.
pub const MAX_SESSIONS: usize = 1024;

const KDF_SALT: &[u8] = b"fizz cluster secret v1";
const KDF_INFO: &[u8] = b"fizz gossip packet key v1";
const KDF_INFO_STREAM: &[u8] = b"fizz state stream key v1";
const KDF_INFO_JOIN: &[u8] = b"fizz join key v1";

/// The packet key, derived from the cluster secret.
#[derive(Clone)]
pub struct Key {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Derives the gossip packet key from the cluster secret (HKDF-SHA256 with a fixed salt and
    /// a purpose label, so other uses of the secret get unrelated keys).
    pub fn derive(cluster_secret: &[u8]) -> Key {
        Key::derive_for(cluster_secret, KDF_INFO)
    }

    /// Derives the key of the state-sync streams (another purpose label, so a gossip packet
    /// can never be taken for a stream frame or the other way round).
    pub fn derive_stream(cluster_secret: &[u8]) -> Key {
        Key::derive_for(cluster_secret, KDF_INFO_STREAM)
    }

    /// Derives the key a joining node and a member speak under, from the join token's secret
    /// (not the cluster secret: the member hands that over under this key).
    pub fn derive_join(join_secret: &[u8]) -> Key {
        Key::derive_for(join_secret, KDF_INFO_JOIN)
    }

    fn derive_for(cluster_secret: &[u8], purpose: &[u8]) -> Key {
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(KDF_SALT), cluster_secret)
            .expand(purpose, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Key {
            cipher: XChaCha20Poly1305::new(&okm.into()),
        }
    }
}

/// Why a received packet was dropped. Numbered, so counters and logs can name them stably.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the envelope's header and tag.
    #[error("packet shorter than the envelope")]
    Truncated = 1,
    /// Longer than [`MAX_PACKET`].
    #[error("packet longer than {MAX_PACKET} bytes")]
    Oversized = 2,
    /// The version byte is not [`VERSION`] (another protocol, or another Fizz version).
    #[error("unknown envelope version")]
    UnknownVersion = 3,
    /// Sealed at a time further than the allowed clock skew from ours.
    #[error("sealed time outside the clock window")]
    Stale = 4,
    /// Its session and counter were already accepted, or are behind the replay window.
    #[error("replayed packet")]
    Replayed = 5,
    /// Authentication failed: sealed with another key, forged, or altered on the way.
    #[error("authentication failed")]
    Unauthentic = 6,
    /// Authentic, but not a message the membership protocol accepts.
    #[error("malformed message")]
    Malformed = 7,
}

impl DropReason {
    /// Every reason, in number order.
    pub const ALL: [DropReason; 7] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::UnknownVersion,
        DropReason::Stale,
        DropReason::Replayed,
        DropReason::Unauthentic,
        DropReason::Malformed,
    ];

    /// A short stable name, for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::UnknownVersion => "unknown-version",
            DropReason::Stale => "stale",
            DropReason::Replayed => "replayed",
            DropReason::Unauthentic => "unauthentic",
            DropReason::Malformed => "malformed",
        }
    }
}

/// Why a plaintext could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The plaintext does not fit in one packet.
    #[error("plaintext of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The plaintext's length.
        len: usize,
        /// [`MAX_PLAINTEXT`].
        max: usize,
    },
    /// The session sealed 2^64 - 1 packets; a new [`Sealer`] is needed.
    #[error("the sealing session used every counter")]
    SessionExhausted,
}

/// The sender's nonce source: a session id chosen at start and a packet counter.
#[derive(Debug)]
pub struct Sealer {
    session: [u8; 16],
    counter: u64,
}

impl Sealer {
    /// A sealer for a new session. `session` must be random (from the OS) for every process
    /// start; tests may pass fixed values.
    pub fn new(session: [u8; 16]) -> Sealer {
        Sealer {
            session,
            counter: 0,
        }
    }

    /// This sender's session id.
    pub fn session(&self) -> [u8; 16] {
        self.session
    }
}

/// Seals `plaintext` into a packet, stamped with the sender's clock `now_ms` (milliseconds
/// since the Unix epoch).
pub fn seal(
    key: &Key,
    sealer: &mut Sealer,
    now_ms: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge {
            len: plaintext.len(),
            max: MAX_PLAINTEXT,
        });
    }
    seal_any(key, sealer, now_ms, plaintext)
}

/// Seals `plaintext` of any length, in the same format: for frames of a stream, which has its
/// own length prefix and its own limit.
pub fn seal_any(
    key: &Key,
    sealer: &mut Sealer,
    now_ms: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let counter = sealer.counter;
    // A nonce must never repeat: a session that used every counter refuses to seal more.
    sealer.counter = counter.checked_add(1).ok_or(SealError::SessionExhausted)?;

    let mut packet = Vec::with_capacity(plaintext.len() + OVERHEAD);
    packet.push(VERSION);
    packet.extend_from_slice(&sealer.session);
    packet.extend_from_slice(&counter.to_be_bytes());
    packet.extend_from_slice(&now_ms.to_be_bytes());
    packet.extend_from_slice(plaintext);

    let nonce = nonce(&packet[..HEADER_LEN]);
    let (header, body) = packet.split_at_mut(HEADER_LEN);
    let tag = key
        .cipher
        .encrypt_inout_detached(&nonce, header, body.into())
        .expect("the plaintext length was checked against the cipher's limits");
    packet.extend_from_slice(&tag);
    Ok(packet)
}

/// The header fields of an authentic packet, returned with its plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The sender's session id.
    pub session: [u8; 16],
    /// The packet's counter within the session.
    pub counter: u64,
    /// The sender's clock when it sealed the packet.
    pub time_ms: u64,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
}

/// Checks, authenticates and decrypts a packet received at `now_ms`, and records it in
/// `replay` so that it is accepted only once. Every check that needs no key runs before the
/// decryption; the only allocation is the plaintext, at most [`MAX_PLAINTEXT`] bytes.
pub fn open(
    key: &Key,
    replay: &mut ReplayGuard,
    now_ms: u64,
    packet: &[u8],
) -> Result<Opened, DropReason> {
    if packet.len() > MAX_PACKET {
        return Err(DropReason::Oversized);
    }
    let opened = open_any(key, now_ms, replay.max_skew_ms, packet, |s, c| replay.check(s, c))?;
    replay.record(opened.session, opened.counter, opened.time_ms, now_ms);
    Ok(opened)
}

/// Checks, authenticates and decrypts a sealed message of any length received at `now_ms`.
/// `fresh` decides, before the decryption, whether the session and counter are acceptable
/// (a stream accepts exactly the next counter of its peer's session).
pub fn open_any(
    key: &Key,
    now_ms: u64,
    max_skew_ms: u64,
    packet: &[u8],
    fresh: impl FnOnce(&[u8; 16], u64) -> Result<(), DropReason>,
) -> Result<Opened, DropReason> {
    if packet.len() < MIN_PACKET {
        return Err(DropReason::Truncated);
    }
    if packet[0] != VERSION {
        return Err(DropReason::UnknownVersion);
    }
    let (header, rest) = packet.split_at(HEADER_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let session: [u8; 16] = header[1..17].try_into().expect("16-byte slice");
    let counter = u64::from_be_bytes(header[17..25].try_into().expect("8-byte slice"));
    let time_ms = u64::from_be_bytes(header[25..33].try_into().expect("8-byte slice"));

    if time_ms.abs_diff(now_ms) > max_skew_ms {
        return Err(DropReason::Stale);
    }
    // A cheap look before the decryption; the packet is recorded only once it is authentic.
    fresh(&session, counter)?;

    let mut plaintext = ciphertext.to_vec();
    let tag = Tag::try_from(tag).expect("TAG_LEN-byte slice");
    key.cipher
        .decrypt_inout_detached(
            &nonce(header),
            header,
            plaintext.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| DropReason::Unauthentic)?;

    Ok(Opened {
        session,
        counter,
        time_ms,
        plaintext,
    })
}

fn nonce(header: &[u8]) -> XNonce {
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&header[1..25]);
    nonce.into()
}

/// What a receiver remembers of each sender session, to accept every packet at most once.
#[derive(Debug)]
pub struct ReplayGuard {
    max_skew_ms: u64,
    sessions: HashMap<[u8; 16], Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// The highest counter accepted.
    top: u64,
    /// Bit `i` is set when counter `top - i` was accepted.
    seen: u128,
    /// The newest sealed time accepted from this session.
    newest_ms: u64,
}

const _: () = assert!(REPLAY_WINDOW == u128::BITS as u64);

impl ReplayGuard {
    /// A guard accepting packets sealed at most `max_skew_ms` away from the receiver's clock.
    pub fn new(max_skew_ms: u64) -> ReplayGuard {
        ReplayGuard {
            max_skew_ms,
            sessions: HashMap::new(),
        }
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether `(session, counter)` may still be accepted.
    fn check(&self, session: &[u8; 16], counter: u64) -> Result<(), DropReason> {
        let Some(window) = self.sessions.get(session) else {
            return Ok(());
        };
        if counter > window.top {
            return Ok(());
        }
        let behind = window.top - counter;
        if behind >= REPLAY_WINDOW || window.seen & (1u128 << behind) != 0 {
            return Err(DropReason::Replayed);
        }
        Ok(())
    }

    /// Records an authentic packet that passed [`Self::check`].
    fn record(&mut self, session: [u8; 16], counter: u64, time_ms: u64, now_ms: u64) {
        if let Some(window) = self.sessions.get_mut(&session) {
            if counter > window.top {
                let shift = counter - window.top;
                window.seen = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    window.seen << shift
                };
                window.seen |= 1;
                window.top = counter;
            } else {
                window.seen |= 1u128 << (window.top - counter);
            }
            window.newest_ms = window.newest_ms.max(time_ms);
            return;
        }
        if self.sessions.len() >= MAX_SESSIONS {
            self.forget_stale(now_ms);
        }
        if self.sessions.len() >= MAX_SESSIONS {
            let stalest = self
                .sessions
                .iter()
                .min_by_key(|(_, w)| w.newest_ms)
                .map(|(s, _)| *s);
            if let Some(stalest) = stalest {
                self.sessions.remove(&stalest);
            }
        }
        self.sessions.insert(
            session,
            Window {
                top: counter,
                seen: 1,
                newest_ms: time_ms,
            },
        );
    }

    /// Forgets the sessions whose every accepted packet is now too old to pass the freshness
    /// check anyway.
    pub fn forget_stale(&mut self, now_ms: u64) {
        let skew = self.max_skew_ms;
        self.sessions
            .retain(|_, w| w.newest_ms.saturating_add(skew) >= now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const SKEW: u64 = 60_000;

    fn sealed(key: &Key, sealer: &mut Sealer, text: &[u8]) -> Vec<u8> {
        seal(key, sealer, NOW, text).unwrap()
    }

    #[test]
    fn round_trip_and_overhead() {
        let key = Key::derive(b"secret");
        let mut sealer = Sealer::new([7; 16]);
        let mut guard = ReplayGuard::new(SKEW);
        let packet = sealed(&key, &mut sealer, b"hello");
        assert_eq!(packet.len(), 5 + OVERHEAD);
        let opened = open(&key, &mut guard, NOW + 10, &packet).unwrap();
        assert_eq!(opened.plaintext, b"hello");
        assert_eq!(
            (opened.session, opened.counter, opened.time_ms),
            ([7; 16], 0, NOW)
        );
        // The plaintext does not appear in the packet.
        assert!(!packet.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn keys_from_different_secrets_do_not_open_each_other() {
        let mut sealer = Sealer::new([1; 16]);
        let packet = sealed(&Key::derive(b"one"), &mut sealer, b"x");
        let mut guard = ReplayGuard::new(SKEW);
        assert_eq!(
            open(&Key::derive(b"two"), &mut guard, NOW, &packet),
            Err(DropReason::Unauthentic)
        );
        // A failed packet is not recorded: the right key still opens it.
        assert!(open(&Key::derive(b"one"), &mut guard, NOW, &packet).is_ok());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let key = Key::derive(b"secret");
        let mut sealer = Sealer::new([2; 16]);
        let packet = sealed(&key, &mut sealer, b"some payload");
        for bit in 0..packet.len() * 8 {
            let mut bad = packet.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut guard = ReplayGuard::new(SKEW);
            let got = open(&key, &mut guard, NOW, &bad);
            assert!(got.is_err(), "bit {bit} flipped and accepted");
        }
    }

    #[test]
    fn size_and_version_checks() {
        let key = Key::derive(b"secret");
        let mut guard = ReplayGuard::new(SKEW);
        let check = |guard: &mut ReplayGuard, p: &[u8]| open(&key, guard, NOW, p).unwrap_err();
        assert_eq!(check(&mut guard, &[]), DropReason::Truncated);
        assert_eq!(
            check(&mut guard, &[VERSION; MIN_PACKET - 1]),
            DropReason::Truncated
        );
        assert_eq!(
            check(&mut guard, &vec![VERSION; MAX_PACKET + 1]),
            DropReason::Oversized
        );
        assert_eq!(
            check(&mut guard, &[9; MIN_PACKET]),
            DropReason::UnknownVersion
        );

        let mut sealer = Sealer::new([3; 16]);
        let packet = sealed(&key, &mut sealer, b"truncate me");
        for len in 0..packet.len() {
            let got = open(&key, &mut guard, NOW, &packet[..len]).unwrap_err();
            let want = if len < MIN_PACKET {
                DropReason::Truncated
            } else {
                DropReason::Unauthentic
            };
            assert_eq!(got, want, "length {len}");
        }
        assert_eq!(
            seal(&key, &mut sealer, NOW, &[0; MAX_PLAINTEXT + 1]),
            Err(SealError::TooLarge {
                len: MAX_PLAINTEXT + 1,
                max: MAX_PLAINTEXT
            })
        );
        let biggest = seal(&key, &mut sealer, NOW, &[0; MAX_PLAINTEXT]).unwrap();
        assert_eq!(biggest.len(), MAX_PACKET);
        assert!(open(&key, &mut guard, NOW, &biggest).is_ok());
    }

    #[test]
    fn stale_and_future_packets_are_dropped() {
        let key = Key::derive(b"secret");
        let mut sealer = Sealer::new([4; 16]);
        let packet = sealed(&key, &mut sealer, b"t");
        let mut guard = ReplayGuard::new(SKEW);
        assert_eq!(
            open(&key, &mut guard, NOW + SKEW + 1, &packet),
            Err(DropReason::Stale)
        );
        assert_eq!(
            open(&key, &mut guard, NOW - SKEW - 1, &packet),
            Err(DropReason::Stale)
        );
        assert!(open(&key, &mut guard, NOW + SKEW, &packet).is_ok());
    }

    #[test]
    fn replays_are_dropped_and_reordering_is_tolerated() {
        let key = Key::derive(b"secret");
        let mut sealer = Sealer::new([5; 16]);
        let packets: Vec<_> = (0..300).map(|_| sealed(&key, &mut sealer, b"p")).collect();
        let mut guard = ReplayGuard::new(SKEW);
        // Out of order within the window: all accepted once.
        for i in [10usize, 3, 7, 0, 1, 2, 4, 5, 6, 8, 9] {
            assert!(
                open(&key, &mut guard, NOW, &packets[i]).is_ok(),
                "packet {i}"
            );
        }
        for packet in &packets[..=10] {
            assert_eq!(
                open(&key, &mut guard, NOW, packet),
                Err(DropReason::Replayed)
            );
        }
        // Far ahead, then one just inside and one just outside the window.
        assert!(open(&key, &mut guard, NOW, &packets[200]).is_ok());
        assert!(open(&key, &mut guard, NOW, &packets[200 - 127]).is_ok());
        assert_eq!(
            open(&key, &mut guard, NOW, &packets[200 - 128]),
            Err(DropReason::Replayed)
        );
        assert_eq!(
            open(&key, &mut guard, NOW, &packets[200]),
            Err(DropReason::Replayed)
        );
    }

    #[test]
    fn a_restarted_sender_is_not_locked_out() {
        let key = Key::derive(b"secret");
        let mut guard = ReplayGuard::new(SKEW);
        let mut before = Sealer::new([6; 16]);
        for _ in 0..50 {
            let p = sealed(&key, &mut before, b"a");
            open(&key, &mut guard, NOW, &p).unwrap();
        }
        // The restarted process starts its counter over in a new session, even with its clock
        // set back a little.
        let mut after = Sealer::new([8; 16]);
        let p = seal(&key, &mut after, NOW - 5_000, b"b").unwrap();
        assert_eq!(open(&key, &mut guard, NOW, &p).unwrap().plaintext, b"b");
    }

    #[test]
    fn forgetting_a_session_never_readmits_its_packets() {
        let key = Key::derive(b"secret");
        let mut guard = ReplayGuard::new(SKEW);
        let mut sealer = Sealer::new([9; 16]);
        let p = sealed(&key, &mut sealer, b"once");
        open(&key, &mut guard, NOW, &p).unwrap();
        guard.forget_stale(NOW + SKEW);
        assert_eq!(guard.len(), 1, "still within the window: kept");
        guard.forget_stale(NOW + SKEW + 1);
        assert!(guard.is_empty());
        assert_eq!(
            open(&key, &mut guard, NOW + SKEW + 1, &p),
            Err(DropReason::Stale)
        );
    }

    #[test]
    fn the_session_table_is_bounded() {
        let key = Key::derive(b"secret");
        let mut guard = ReplayGuard::new(SKEW);
        for i in 0..(MAX_SESSIONS as u32 + 10) {
            let mut session = [0u8; 16];
            session[..4].copy_from_slice(&i.to_be_bytes());
            let p = seal(&key, &mut Sealer::new(session), NOW + u64::from(i), b"s").unwrap();
            open(&key, &mut guard, NOW + u64::from(i), &p).unwrap();
        }
        assert_eq!(guard.len(), MAX_SESSIONS);
    }

    #[test]
    fn key_derivation_is_deterministic_and_secret_dependent() {
        let mut sealer = Sealer::new([1; 16]);
        let p = sealed(&Key::derive(b"same"), &mut sealer, b"k");
        let mut guard = ReplayGuard::new(SKEW);
        assert!(open(&Key::derive(b"same"), &mut guard, NOW, &p).is_ok());
        assert_eq!(format!("{:?}", Key::derive(b"same")), "Key(..)");
    }
}
