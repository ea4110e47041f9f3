//! The membership state machine: foca (SWIM) behind the authenticated envelope, with Fizz's
//! own view of the members.
//!
//! [`Membership`] does no IO and reads no clock. It is fed received packets, timeouts and
//! commands, each with the current time, and answers with [`Output`]s: packets to send and
//! membership events. It keeps its own timer queue; the caller sleeps until
//! [`Membership::next_deadline`] and then calls [`Membership::handle_timeout`]. Everything is
//! deterministic given the entropy passed to [`Membership::new`], so a whole cluster can be
//! simulated in memory.
//!
//! # Frames
//!
//! Inside the envelope, the first plaintext byte says what follows:
//! - `0`: a foca message;
//! - `1`: hello, asking the receiver who it is (sent to seeds, whose names a joining node does
//!   not know yet; foca needs a destination identity to announce to);
//! - `2`: welcome, the answer: the sender's identity. The joining node then announces itself
//!   to that identity and gets the member list back in foca's feed.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    num::{NonZeroU8, NonZeroUsize},
    time::Duration,
};

use foca::{
    Codec, Foca, Header, Member, NoCustomBroadcast, OwnedNotification, PeriodicParams,
    PostcardCodec, State, Timer,
};
use rand::{rngs::SmallRng, SeedableRng};
use serde::Serialize;

use super::{
    crypto::{self, DropReason, Key, ReplayGuard, Sealer, MAX_PLAINTEXT},
    identity::{MetaError, NodeId, NodeMeta},
    GossipError,
};

const FRAME_SWIM: u8 = 0;
const FRAME_HELLO: u8 = 1;
const FRAME_WELCOME: u8 = 2;

/// How long a member declared down is remembered (as down) before being forgotten.
const REMEMBER_DOWN: Duration = Duration::from_secs(24 * 60 * 60);
/// How many times an update is piggybacked before it is considered spread. Ample for clusters
/// of up to ~100 nodes, and it keeps updates flowing under packet loss.
const MAX_TRANSMISSIONS: u8 = 10;

/// Failure-detection timing.
///
/// A crashed member is first probed by someone within about one `probe_period` (every member
/// probes one other per period, in a shuffled round-robin, so the crashed one is soon hit by
/// one of its n - 1 probers), is suspected at the end of that probe period, and declared down
/// `suspect_to_down_after` later; the declaration then spreads with the periodic gossip in a
/// few hundred milliseconds. In a period, no prober picks the crashed member with a chance of
/// about 1/e in clusters of more than a few members (1/4 at 3), so the wait for a first probe
/// has a tail of a few periods, which the period's length sets. With the defaults (0.7 s, 2 s), `cargo xtask bench gossip`
/// sees a crash everywhere after 3.1-4.5 s at 3 members and 3.0-5.1 s at 20 (medians 3.2 and
/// 3.55 s, 30 runs each); a 1 s period measured 3.8-5.8 s and 3.4-7.8 s.
///
/// The tradeoff is false positives. Under packet loss a probe fails only if the direct ping or
/// ack is lost *and* every indirect path (4 packets each, through up to `indirect_probes`
/// helpers) fails too; a suspected member then has `suspect_to_down_after` to hear of the
/// suspicion and refute it (the refutation rides on every packet it sends and is regossiped by
/// whoever hears it, every 200 ms). Shorter timeouts detect crashes sooner but leave
/// refutations less time, and a burst of loss longer than the timeout can still take a live
/// member down. In the simulations, 2 s gave no false down in a minute at 10 % loss (3 to 20
/// nodes). At 16 and 20 nodes, 20 % and 30 % loss took live members down in some runs with
/// either period (10 seeded runs each: 0.7 s in 1 and 2 runs, 1 s in 0 and 3), while a 3 s
/// timeout would push the slowest detections past 7 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// How often each member probes another.
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute the suspicion before it is declared down.
    pub suspect_to_down_after: Duration,
    /// How often pending updates are gossiped to a few members, besides the probes.
    pub gossip_period: Duration,
    /// How often a node that is not (or no longer) part of a cluster says hello to its seeds.
    pub join_retry: Duration,
    /// How far a packet's sealed time may be from the receiver's clock.
    pub max_clock_skew: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            probe_period: Duration::from_millis(700),
            probe_rtt: Duration::from_millis(300),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_secs(2),
            gossip_period: Duration::from_millis(200),
            join_retry: Duration::from_secs(1),
            max_clock_skew: Duration::from_secs(60),
        }
    }
}

impl Tuning {
    fn validate(&self) -> Result<(), GossipError> {
        let problem = if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            "probe_rtt must be above zero and below probe_period"
        } else if self.suspect_to_down_after.is_zero() {
            "suspect_to_down_after must be above zero"
        } else if self.indirect_probes == 0 {
            "indirect_probes must be at least 1"
        } else if self.gossip_period.is_zero() || self.join_retry.is_zero() {
            "gossip_period and join_retry must be above zero"
        } else {
            return Ok(());
        };
        Err(GossipError::Tuning(problem))
    }

    fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = NonZeroUsize::new(self.indirect_probes).expect("validated");
        config.max_transmissions = NonZeroU8::new(MAX_TRANSMISSIONS).expect("non-zero");
        config.suspect_to_down_after = self.suspect_to_down_after;
        config.remove_down_after = Some(REMEMBER_DOWN);
        // One byte of every plaintext is the frame kind.
        config.max_packet_size = NonZeroUsize::new(MAX_PLAINTEXT - 1).expect("non-zero");
        // A member wrongly declared down is told so, and comes back as its next generation.
        config.notify_down_members = true;
        config.periodic_announce = Some(PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::MIN,
        });
        // Heals partitions: members on the other side are down to us, so we keep knocking.
        config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::new(2).expect("non-zero"),
        });
        config.periodic_gossip = Some(PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(3).expect("non-zero"),
        });
        config
    }
}

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Failed a probe; declared down unless it refutes the suspicion in time.
    Suspect,
    /// Declared down (crashed, partitioned away, or left).
    Down,
}

/// A member as Fizz's other modules see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct MemberView {
    /// The node's name.
    pub name: String,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// Its container range (opaque here).
    pub range: String,
    /// Its WireGuard public key (opaque here).
    pub wg_pubkey: String,
    /// The generation of the process speaking for it (grows on restarts and rejoins).
    pub generation: u64,
    /// Its SWIM incarnation within the generation (grows when it refutes a suspicion). Zero for
    /// the local node, whose incarnation foca keeps to itself.
    pub incarnation: u16,
}

impl MemberView {
    fn new(id: &NodeId, state: MemberState, incarnation: u16) -> MemberView {
        MemberView {
            name: id.meta.name.clone(),
            addr: id.meta.addr,
            state,
            range: id.meta.range.clone(),
            wg_pubkey: id.meta.wg_pubkey.clone(),
            generation: id.generation,
            incarnation,
        }
    }
}

/// Something that happened to the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member appeared, or came back after being down.
    MemberUp(MemberView),
    /// A member failed a probe and is suspected.
    MemberSuspect(MemberView),
    /// A suspected member refuted the suspicion.
    MemberAlive(MemberView),
    /// A member was declared down, or left.
    MemberDown(MemberView),
    /// A member is now spoken for by a newer generation (it restarted, rejoined, or changed its
    /// metadata). Followed by [`Event::MemberUp`] if it had been down.
    MemberRenewed {
        /// What was known before.
        previous: MemberView,
        /// What is known now.
        current: MemberView,
    },
    /// This node is known by at least one other member.
    Joined,
    /// Every other member is down or gone; this node says hello to its seeds again.
    Isolated,
    /// The cluster declared this node down and it came back as a new generation.
    Rejoined {
        /// The new generation.
        generation: u64,
    },
}

/// What the caller must do after feeding the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `packet` (already sealed) to `to` over UDP.
    Send {
        /// The destination.
        to: SocketAddr,
        /// The datagram.
        packet: Vec<u8>,
    },
    /// Report an event.
    Event(Event),
}

/// Dropped packets, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// [`DropReason::Truncated`].
    pub truncated: u64,
    /// [`DropReason::Oversized`].
    pub oversized: u64,
    /// [`DropReason::UnknownVersion`].
    pub unknown_version: u64,
    /// [`DropReason::Stale`].
    pub stale: u64,
    /// [`DropReason::Replayed`].
    pub replayed: u64,
    /// [`DropReason::Unauthentic`].
    pub unauthentic: u64,
    /// [`DropReason::Malformed`].
    pub malformed: u64,
}

impl DropCounts {
    fn slot(&mut self, reason: DropReason) -> &mut u64 {
        match reason {
            DropReason::Truncated => &mut self.truncated,
            DropReason::Oversized => &mut self.oversized,
            DropReason::UnknownVersion => &mut self.unknown_version,
            DropReason::Stale => &mut self.stale,
            DropReason::Replayed => &mut self.replayed,
            DropReason::Unauthentic => &mut self.unauthentic,
            DropReason::Malformed => &mut self.malformed,
        }
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Truncated => self.truncated,
            DropReason::Oversized => self.oversized,
            DropReason::UnknownVersion => self.unknown_version,
            DropReason::Stale => self.stale,
            DropReason::Replayed => self.replayed,
            DropReason::Unauthentic => self.unauthentic,
            DropReason::Malformed => self.malformed,
        }
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

/// Packet and protocol counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Datagrams fed to [`Membership::handle_packet`].
    pub received: u64,
    /// Datagrams that were authentic and accepted by the protocol.
    pub accepted: u64,
    /// Datagrams dropped, by reason (`received == accepted + dropped.total()`).
    pub dropped: DropCounts,
    /// Datagrams sealed for sending.
    pub sent: u64,
    /// Datagrams that could not be sealed or sent.
    pub send_errors: u64,
    /// Timer events the protocol reported an error for (not expected in normal operation).
    pub protocol_errors: u64,
}

type Swim = Foca<NodeId, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// Collects what foca asks for during one call.
#[derive(Default)]
struct Effects {
    sends: Vec<(NodeId, Vec<u8>)>,
    timers: Vec<(Duration, Timer<NodeId>)>,
    notifications: Vec<OwnedNotification<NodeId>>,
}

impl foca::Runtime<NodeId> for Effects {
    fn notify(&mut self, notification: foca::Notification<'_, NodeId>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// The membership of one node: SWIM over sealed packets, without IO.
///
/// Times are `Duration`s since the Unix epoch, from a clock that does not go backwards (the
/// runtime anchors a monotonic clock at the wall-clock time it started). The wall-clock part
/// matters only for the envelope's freshness check.
pub struct Membership {
    foca: Swim,
    key: Key,
    sealer: Sealer,
    replay: ReplayGuard,
    tuning: Tuning,
    effects: Effects,
    timers: BTreeMap<(Duration, u64), Timer<NodeId>>,
    timer_seq: u64,
    seeds: Vec<SocketAddr>,
    next_hello: Option<Duration>,
    connected: bool,
    left: bool,
    view: BTreeMap<String, MemberView>,
    stats: Stats,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .field("members", &self.view.len())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node that is not part of any cluster yet. `generation` must grow with every start of
    /// the node (see [`super::next_generation`]); `entropy` must be random for every start
    /// (it seeds the envelope's session id and the protocol's choices).
    pub fn new(
        meta: NodeMeta,
        generation: u64,
        key: Key,
        tuning: Tuning,
        entropy: [u8; 32],
    ) -> Result<Membership, GossipError> {
        meta.validate()?;
        tuning.validate()?;
        let session: [u8; 16] = entropy[..16].try_into().expect("16 bytes");
        let rng_seed = u64::from_le_bytes(entropy[16..24].try_into().expect("8 bytes"));
        let identity = NodeId { meta, generation };
        Ok(Membership {
            foca: Foca::new(
                identity,
                tuning.foca_config(),
                SmallRng::seed_from_u64(rng_seed),
                PostcardCodec,
            ),
            key,
            sealer: Sealer::new(session),
            replay: ReplayGuard::new(tuning.max_clock_skew.as_millis() as u64),
            tuning,
            effects: Effects::default(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            seeds: Vec::new(),
            next_hello: None,
            connected: false,
            left: false,
            view: BTreeMap::new(),
            stats: Stats::default(),
        })
    }

    /// This node's metadata.
    pub fn meta(&self) -> &NodeMeta {
        &self.foca.identity().meta
    }

    /// This node's current generation.
    pub fn generation(&self) -> u64 {
        self.foca.identity().generation
    }

    /// Whether at least one other member knows this node.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Every member known, this node first, then the others by name (down ones included, until
    /// they are forgotten a day later).
    pub fn members(&self) -> Vec<MemberView> {
        let state = if self.left {
            MemberState::Down
        } else {
            MemberState::Alive
        };
        let me = MemberView::new(self.foca.identity(), state, 0);
        std::iter::once(me)
            .chain(self.view.values().cloned())
            .collect()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn next_deadline(&self) -> Option<Duration> {
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        match (timer, self.next_hello) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Joins the cluster the `seeds` belong to: says hello to each now, and again every
    /// `join_retry` while this node is not connected (also later, whenever it becomes isolated).
    pub fn join(&mut self, now: Duration, seeds: &[SocketAddr]) -> Vec<Output> {
        let me = self.meta().addr;
        let mut seen = HashSet::new();
        self.seeds = seeds
            .iter()
            .copied()
            .filter(|s| *s != me && seen.insert(*s))
            .collect();
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        self.say_hello(now, &mut out);
        out
    }

    /// Leaves the cluster: tells a few members this node is down. Nothing is sent after this.
    pub fn leave(&mut self, now: Duration) -> Vec<Output> {
        if self.left {
            return Vec::new();
        }
        if self.foca.leave_cluster(&mut self.effects).is_err() {
            self.stats.protocol_errors += 1;
        }
        let mut out = Vec::new();
        self.flush(now, &mut out);
        self.left = true;
        self.next_hello = None;
        self.timers.clear();
        out
    }

    /// Changes this node's metadata (a new WireGuard key, say): it comes back as its next
    /// generation, which supersedes the current one everywhere.
    pub fn update_meta(
        &mut self,
        now: Duration,
        meta: NodeMeta,
    ) -> Result<Vec<Output>, GossipError> {
        meta.validate()?;
        if meta.name != self.meta().name {
            return Err(MetaError::Renamed {
                from: self.meta().name.clone(),
                to: meta.name,
            }
            .into());
        }
        let generation = self.generation() + 1;
        let mut out = Vec::new();
        if self
            .foca
            .change_identity(NodeId { meta, generation }, &mut self.effects)
            .is_err()
        {
            self.stats.protocol_errors += 1;
        }
        self.disconnected(now);
        self.flush(now, &mut out);
        Ok(out)
    }

    /// Handles a datagram received from `from` at `now`.
    pub fn handle_packet(&mut self, now: Duration, from: SocketAddr, packet: &[u8]) -> Vec<Output> {
        self.stats.received += 1;
        let mut out = Vec::new();
        let opened = match crypto::open(&self.key, &mut self.replay, millis(now), packet) {
            Ok(opened) => opened,
            Err(reason) => {
                *self.stats.dropped.slot(reason) += 1;
                return out;
            }
        };
        if self.left {
            // Authentic but too late to matter.
            self.stats.accepted += 1;
            return out;
        }
        let accepted = match opened.plaintext.split_first() {
            Some((&FRAME_SWIM, body)) => {
                if !self.connected {
                    self.answer_previous_self(body);
                }
                self.foca.handle_data(body, &mut self.effects).is_ok()
            }
            Some((&FRAME_HELLO, [])) => {
                let mut welcome = vec![FRAME_WELCOME];
                let me = Member::alive(self.foca.identity().clone());
                match PostcardCodec.encode_member(&me, &mut welcome) {
                    Ok(()) => self.send_sealed(now, from, &welcome, &mut out),
                    Err(_) => self.stats.send_errors += 1,
                }
                true
            }
            Some((&FRAME_WELCOME, mut body)) => {
                let decoded: Result<Member<NodeId>, _> = PostcardCodec.decode_member(&mut body);
                match decoded {
                    Ok(member) if member.id().meta.name != self.meta().name => {
                        if self
                            .foca
                            .announce(member.id().clone(), &mut self.effects)
                            .is_err()
                        {
                            self.stats.protocol_errors += 1;
                        }
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if accepted {
            self.stats.accepted += 1;
        } else {
            self.stats.dropped.malformed += 1;
        }
        self.flush(now, &mut out);
        out
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<Output> {
        let mut due = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        // foca wants a late indirect probe handled before the next probe starts; its ordering
        // of timer kinds says so (a stable sort keeps each kind's deadline order).
        due.sort();
        for timer in due {
            if self.foca.handle_timer(timer, &mut self.effects).is_err() {
                self.stats.protocol_errors += 1;
            }
        }
        let mut out = Vec::new();
        if self.next_hello.is_some_and(|at| at <= now) {
            self.next_hello = None;
            if !self.connected && !self.left {
                self.say_hello(now, &mut out);
            }
        }
        self.flush(now, &mut out);
        out
    }

    /// Counts a datagram the caller failed to send.
    pub fn record_send_error(&mut self) {
        self.stats.send_errors += 1;
    }

    /// A restarted node that has no seeds (or whose seeds are gone) still hears from members
    /// that probe its previous generation. foca ignores those messages, as they are not
    /// addressed to the current identity; announcing to their sender rejoins at once instead
    /// of waiting for the periodic announcements to down members.
    fn answer_previous_self(&mut self, body: &[u8]) {
        let mut data = body;
        let header: Result<Header<NodeId>, _> = PostcardCodec.decode_header(&mut data);
        let Ok(header) = header else {
            return;
        };
        let me = self.foca.identity();
        if header.dst.meta.name == me.meta.name
            && header.dst.generation < me.generation
            && header.src.meta.name != me.meta.name
            && self.foca.announce(header.src, &mut self.effects).is_err()
        {
            self.stats.protocol_errors += 1;
        }
    }

    fn say_hello(&mut self, now: Duration, out: &mut Vec<Output>) {
        for seed in self.seeds.clone() {
            self.send_sealed(now, seed, &[FRAME_HELLO], out);
        }
        if !self.seeds.is_empty() {
            self.next_hello = Some(now + self.tuning.join_retry);
        }
    }

    fn send_sealed(
        &mut self,
        now: Duration,
        to: SocketAddr,
        plaintext: &[u8],
        out: &mut Vec<Output>,
    ) {
        match crypto::seal(&self.key, &mut self.sealer, millis(now), plaintext) {
            Ok(packet) => {
                self.stats.sent += 1;
                out.push(Output::Send { to, packet });
            }
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// No member knows the current identity (yet): say hello to the seeds until one does.
    fn disconnected(&mut self, now: Duration) {
        self.connected = false;
        if !self.seeds.is_empty() && !self.left {
            self.next_hello = Some(now);
        }
    }

    /// Whether `data` is a "you are down" notice (foca's `TurnUndead`) to a member that is
    /// not down. foca 2.0.0 sends one when a suspicion's timer runs out even if the member
    /// refuted the suspicion in time (the timer's conditional update reports a result either
    /// way, and the notice does not look at it). Its receiver would then give up its identity
    /// and rejoin as a new generation: under packet loss, every refuted suspicion would turn
    /// into a needless rejoin, and the churn into real false downs. A notice to a member
    /// that is down here, or whose identity was superseded, is genuine and goes out.
    fn is_refuted_down_notice(&self, to: &NodeId, data: &[u8]) -> bool {
        let mut body = data;
        let header: Result<Header<NodeId>, _> = PostcardCodec.decode_header(&mut body);
        matches!(header, Ok(h) if h.message == foca::Message::TurnUndead)
            && self.foca.iter_members().any(|m| m.id() == to)
    }

    /// Turns what foca asked for into outputs and timers, and reports membership changes.
    fn flush(&mut self, now: Duration, out: &mut Vec<Output>) {
        let me = self.meta().addr;
        for (to, data) in std::mem::take(&mut self.effects.sends) {
            // foca may address our own previous generation (it is down, and foca announces to
            // down members); that is us.
            if to.meta.addr == me || self.is_refuted_down_notice(&to, &data) {
                continue;
            }
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(FRAME_SWIM);
            frame.extend_from_slice(&data);
            self.send_sealed(now, to.meta.addr, &frame, out);
        }
        for (after, timer) in std::mem::take(&mut self.effects.timers) {
            self.timer_seq += 1;
            self.timers.insert((now + after, self.timer_seq), timer);
        }
        for notification in std::mem::take(&mut self.effects.notifications) {
            match notification {
                OwnedNotification::Active => {
                    self.connected = true;
                    self.next_hello = None;
                    out.push(Output::Event(Event::Joined));
                }
                OwnedNotification::Idle => {
                    self.disconnected(now);
                    out.push(Output::Event(Event::Isolated));
                }
                OwnedNotification::Rejoin(id) => {
                    // A new identity starts disconnected, without an `Idle` notification.
                    self.disconnected(now);
                    out.push(Output::Event(Event::Rejoined {
                        generation: id.generation,
                    }));
                }
                // Declared down without a way back (renew never fails for our identity, so
                // this follows only our own leave); member changes come from the diff below.
                _ => {}
            }
        }
        self.diff_view(out);
    }

    /// Compares foca's member list with the last view and reports the differences.
    fn diff_view(&mut self, out: &mut Vec<Output>) {
        let me = &self.foca.identity().meta.name;
        let mut current = BTreeMap::new();
        for member in self.foca.iter_membership_state() {
            // After a restart, peers still gossip about our previous generation for a while;
            // foca records it as down. It is not another member.
            if &member.id().meta.name == me {
                continue;
            }
            let state = match member.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down => MemberState::Down,
            };
            let view = MemberView::new(member.id(), state, member.incarnation());
            current.insert(view.name.clone(), view);
        }
        for (name, now) in &current {
            let Some(before) = self.view.get(name) else {
                if now.state != MemberState::Down {
                    out.push(Output::Event(Event::MemberUp(now.clone())));
                }
                continue;
            };
            if before.generation != now.generation {
                out.push(Output::Event(Event::MemberRenewed {
                    previous: before.clone(),
                    current: now.clone(),
                }));
            }
            use MemberState::{Alive, Down, Suspect};
            let event = match (before.state, now.state) {
                (Down, Alive | Suspect) => Event::MemberUp(now.clone()),
                (Alive, Suspect) => Event::MemberSuspect(now.clone()),
                (Suspect, Alive) => Event::MemberAlive(now.clone()),
                (Alive | Suspect, Down) => Event::MemberDown(now.clone()),
                _ => continue,
            };
            out.push(Output::Event(event));
        }
        self.view = current;
    }
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}
