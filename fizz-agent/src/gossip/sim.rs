//! Whole clusters of [`Membership`]s in memory: a simulated clock, a network with latency,
//! loss and partitions, all driven by a seeded PRNG so every run is reproducible. Used by the
//! membership tests and by `cargo xtask bench gossip`.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use rand::{rngs::SmallRng, Rng, RngExt, SeedableRng};

use super::{crypto::Key, Event, MemberState, Membership, NodeMeta, Output, Tuning};

pub const T0: Duration = Duration::from_secs(1_700_000_000);
pub const SECRET: &[u8] = b"the cluster secret";

pub struct Node {
    pub membership: Membership,
    pub running: bool,
    pub events: Vec<(Duration, Event)>,
}

pub struct Sim {
    pub now: Duration,
    pub nodes: Vec<Node>,
    pub flights: BTreeMap<(Duration, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    pub seq: u64,
    pub rng: SmallRng,
    pub loss: f64,
    /// Nodes cut off from everyone.
    pub isolated: HashSet<usize>,
    /// Copies of every packet delivered to node 0.
    pub tap: Vec<Vec<u8>>,
    pub tuning: Tuning,
}

pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7946))
}

pub fn meta(i: usize, name: &str) -> NodeMeta {
    NodeMeta {
        name: name.into(),
        addr: addr(i),
        range: format!("10.42.{i}.0/24"),
        wg_pubkey: format!("wg-key-of-{name}"),
    }
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: T0,
            nodes: Vec::new(),
            flights: BTreeMap::new(),
            seq: 0,
            rng: SmallRng::seed_from_u64(seed),
            loss: 0.0,
            isolated: HashSet::new(),
            tap: Vec::new(),
            tuning: Tuning::default(),
        }
    }

    pub fn membership(&mut self, i: usize, name: &str, generation: u64, secret: &[u8]) -> Membership {
        let mut entropy = [0u8; 32];
        self.rng.fill_bytes(&mut entropy);
        Membership::new(
            meta(i, name),
            generation,
            Key::derive(secret),
            self.tuning.clone(),
            entropy,
        )
        .unwrap()
    }

    /// Adds a node that joins through node 0 (node 0 itself just starts).
    pub fn add(&mut self, name: &str, secret: &[u8]) -> usize {
        let i = self.nodes.len();
        let membership = self.membership(i, name, 1, secret);
        self.nodes.push(Node {
            membership,
            running: true,
            events: Vec::new(),
        });
        if i > 0 {
            self.join(i, &[0]);
        }
        i
    }

    pub fn cluster(seed: u64, n: usize) -> Sim {
        Sim::cluster_with(seed, n, Tuning::default())
    }

    pub fn cluster_with(seed: u64, n: usize, tuning: Tuning) -> Sim {
        let mut sim = Sim::new(seed);
        sim.tuning = tuning;
        for i in 0..n {
            sim.add(&format!("node{i}"), SECRET);
        }
        sim
    }

    pub fn join(&mut self, i: usize, seeds: &[usize]) {
        let seeds: Vec<_> = seeds.iter().map(|s| addr(*s)).collect();
        let out = self.nodes[i].membership.join(self.now, &seeds);
        self.apply(i, out);
    }

    /// Replaces node `i` with a fresh process (same name and address), which joins node 0.
    pub fn restart(&mut self, i: usize, generation: u64) {
        let name = self.nodes[i].membership.meta().name.clone();
        self.nodes[i].membership = self.membership(i, &name, generation, SECRET);
        self.nodes[i].running = true;
        self.join(i, &[0]);
    }

    pub fn apply(&mut self, from: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, packet } => {
                    if self.rng.random_bool(self.loss) {
                        continue;
                    }
                    let latency = Duration::from_micros(self.rng.random_range(500..5_000));
                    self.seq += 1;
                    self.flights
                        .insert((self.now + latency, self.seq), (addr(from), to, packet));
                }
                Output::Event(event) => self.nodes[from].events.push((self.now, event)),
            }
        }
    }

    /// Runs the cluster until `until`.
    pub fn run_until(&mut self, until: Duration) {
        loop {
            let flight = self.flights.keys().next().map(|k| k.0);
            let timer = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].running)
                .filter_map(|i| self.nodes[i].membership.next_deadline().map(|t| (t, i)))
                .min();
            let next = match (flight, timer) {
                (Some(f), Some((t, _))) => f.min(t),
                (Some(f), None) => f,
                (None, Some((t, _))) => t,
                (None, None) => until,
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            if flight == Some(next) {
                let (_, (from, to, packet)) = self.flights.pop_first().unwrap();
                let Some(i) = (0..self.nodes.len()).find(|i| addr(*i) == to) else {
                    continue;
                };
                let cut = self.isolated.iter().any(|n| addr(*n) == from || *n == i);
                if !self.nodes[i].running || cut {
                    continue;
                }
                if i == 0 {
                    self.tap.push(packet.clone());
                }
                let out = self.nodes[i]
                    .membership
                    .handle_packet(self.now, from, &packet);
                self.apply(i, out);
            } else if let Some((_, i)) = timer {
                let out = self.nodes[i].membership.handle_timeout(self.now);
                self.apply(i, out);
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    pub fn state(&self, observer: usize, name: &str) -> Option<MemberState> {
        self.nodes[observer]
            .membership
            .members()
            .into_iter()
            .skip(1)
            .find(|m| m.name == name)
            .map(|m| m.state)
    }

    pub fn all_alive(&self, nodes: &[usize]) -> bool {
        nodes.iter().all(|o| {
            nodes.iter().filter(|n| *n != o).all(|n| {
                let name = &self.nodes[*n].membership.meta().name;
                self.state(*o, name) == Some(MemberState::Alive)
            })
        })
    }

    /// Runs until every node sees every other alive; returns how long that took.
    pub fn converge(&mut self, limit: Duration) -> Result<Duration, String> {
        let all: Vec<_> = (0..self.nodes.len()).collect();
        self.converge_among(&all, limit)
    }

    /// Runs until each of `nodes` sees every other of them alive; returns how long that took.
    pub fn converge_among(&mut self, nodes: &[usize], limit: Duration) -> Result<Duration, String> {
        let start = self.now;
        while !self.all_alive(nodes) {
            if self.now - start >= limit {
                return Err(format!("no convergence within {limit:?}"));
            }
            self.run_for(Duration::from_millis(10));
        }
        Ok(self.now - start)
    }

    /// Runs until every running node other than `victim` sees it down; returns how long that
    /// took for each.
    pub fn time_to_down(&mut self, victim: usize, limit: Duration) -> Result<Vec<Duration>, String> {
        let name = self.nodes[victim].membership.meta().name.clone();
        let start = self.now;
        let observers: Vec<_> = (0..self.nodes.len())
            .filter(|i| *i != victim && self.nodes[*i].running)
            .collect();
        let mut seen = vec![None; self.nodes.len()];
        while observers.iter().any(|o| seen[*o].is_none()) {
            if self.now - start >= limit {
                return Err(format!("{name} not down everywhere within {limit:?}"));
            }
            self.run_for(Duration::from_millis(10));
            for o in &observers {
                if seen[*o].is_none() && self.state(*o, &name) == Some(MemberState::Down) {
                    seen[*o] = Some(self.now - start);
                }
            }
        }
        Ok(observers.iter().map(|o| seen[*o].unwrap_or_default()).collect())
    }

    pub fn downs(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::MemberDown(v) => Some(v.name.clone()),
                _ => None,
            })
            .collect()
    }
}
