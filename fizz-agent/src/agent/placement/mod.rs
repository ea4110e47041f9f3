//! Placement, the scheduler: which node runs which replica. Every node
//! computes it from the same inputs (the members, the desired services) and
//! starts only its own share, so this module is pure and deterministic: no IO,
//! no clock, no randomness but a hash of its own. It owns nothing else: the
//! agent builds the inputs and acts on the result.
//!
//! Agreement between nodes rests on three rules:
//! - The result depends on the *sets* given, not their order: nodes are sorted
//!   (by name, then every other field) and a repeated name counts once (the
//!   first); services are sorted by project and service, a repeated pair also
//!   counting once.
//! - Hashing is [`stable_hash`](crate::hash::stable_hash): FNV-1a (64-bit) over length-prefixed fields,
//!   finished by SplitMix64's mixer. std's `DefaultHasher` may change between
//!   Rust versions, and nodes built by different compilers must agree.
//! - Decisions are made on integers: CPUs become nano-CPUs (as Docker counts
//!   them; one exactly rounded multiplication), scores are hashes, fair shares
//!   integer quotients. No `ln` (weighted rendezvous): it is not bit-identical
//!   across C libraries.
//!
//! Replicated services: a node is eligible when every constraint matches. Its
//! fair share of the service is its quota `replicas × cpus / Σ cpus` over the
//! eligible nodes (equal quotas when none declares CPUs), rounded down, or up
//! for only as many nodes as the floors leave replicas over; never more than
//! `max_per_node`. Replica 1, 2, … in turn goes to the node with the highest
//! rendezvous score `hash(project, service, replica, node)` among the eligible
//! nodes under their fair share with room for its reservation; when there is
//! none, among those under `max_per_node` with room (tight capacity degrades the
//! spread rather than leaving replicas out); when there is none either, the
//! replica is unplaced, with the reason. A replica's choice depends on its own
//! ranking of nodes, so a node that leaves takes away mostly its own replicas.
//!
//! Global services: one replica per eligible node, numbered by the node alone
//! ([`global_replica`]) so the number does not change when other nodes come
//! and go.
//!
//! Capacity: a node starts with its CPUs and memory; each replica placed
//! subtracts its reservation, in the order of services (project, service) and
//! of replicas (ascending). A reservation of 0 always fits.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use crate::hash::{mix, stable_hash};

/// A member that can run replicas.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// The member's name in the cluster (also `node.id` in constraints).
    pub name: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    pub labels: BTreeMap<String, String>,
    /// CPUs that replicas may reserve; also the node's weight when spreading.
    pub cpus: f64,
    /// Bytes of memory that replicas may reserve.
    pub memory: u64,
}

/// What one service asks for (built by the agent from its desired state).
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    pub project: String,
    pub service: String,
    /// Replicas of a replicated service; ignored for a global one.
    pub replicas: u32,
    /// One replica on every eligible node (`deploy.mode: global`).
    pub global: bool,
    /// All must match for a node to be eligible.
    pub constraints: Vec<Constraint>,
    /// `deploy.placement.max_replicas_per_node`.
    pub max_per_node: Option<u32>,
    /// Reserved per replica (`deploy.resources.reservations`).
    pub cpus: f64,
    /// Bytes reserved per replica.
    pub memory: u64,
}

/// One replica of one service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub project: String,
    pub service: String,
    pub replica: u32,
}

/// Where every replica goes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// Slot → node name.
    pub assigned: BTreeMap<Slot, String>,
    /// Slots no node can take, sorted, with why (for `fizz ps`).
    pub unplaced: Vec<(Slot, String)>,
}

impl Placement {
    /// The slots a node runs.
    pub fn on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Slot> + 'a {
        self.assigned.iter().filter(move |(_, n)| *n == node).map(|(s, _)| s)
    }
}

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Eq,
    Ne,
}

/// A placement constraint in Docker Swarm's syntax, `<attribute> == <value>`
/// or `<attribute> != <value>`. Attributes are case-insensitive; values are
/// compared ignoring ASCII case, as Swarm does; label keys are exact.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Constraint {
    /// `node.labels.<key>`: a node without the label differs from every value.
    Label { key: String, op: Op, value: String },
    /// `node.hostname`.
    Hostname { op: Op, value: String },
    /// `node.role`: `manager` or `worker` (stored lowercase).
    Role { op: Op, value: String },
    /// `node.name`, or `node.id` (a node's id is its name here).
    Name { op: Op, value: String },
}

/// Why a constraint does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// Neither `==` nor `!=` separates attribute and value.
    #[error("constraint {text:?}: expected == or !=")]
    NoOperator { text: String },
    /// The attribute is not one Fizz knows.
    #[error(
        "constraint {text:?}: unknown attribute {attribute:?} \
         (expected node.labels.<key>, node.hostname, node.role, node.id or node.name)"
    )]
    UnknownAttribute { text: String, attribute: String },
    /// `node.labels.` without a key, or a key with spaces in it.
    #[error("constraint {text:?}: invalid label key {key:?}")]
    BadLabelKey { text: String, key: String },
    /// Nothing after the operator.
    #[error("constraint {text:?}: expected a value after the operator")]
    NoValue { text: String },
    /// The value holds a character no value may (`=`, `!`, `<`, `>`, `~`, a
    /// quote inside, a control character).
    #[error("constraint {text:?}: invalid value {value:?}")]
    BadValue { text: String, value: String },
    /// `node.role` compared with something other than `manager` or `worker`.
    #[error("constraint {text:?}: node.role is manager or worker, not {value:?}")]
    BadRole { text: String, value: String },
}

impl Constraint {
    /// Parses Swarm's form: attribute, operator and value, with or without
    /// spaces around the operator. A value may be quoted ('a' or "a").
    pub fn parse(s: &str) -> Result<Constraint, ConstraintError> {
        let text = || s.to_string();
        let at = |pat: &str| s.find(pat);
        let (pos, op) = match (at("=="), at("!=")) {
            (Some(e), Some(n)) if n < e => (n, Op::Ne),
            (Some(e), _) => (e, Op::Eq),
            (None, Some(n)) => (n, Op::Ne),
            (None, None) => return Err(ConstraintError::NoOperator { text: text() }),
        };
        let attribute = s[..pos].trim();
        let mut value = s[pos + 2..].trim();
        for q in ['"', '\''] {
            if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
                value = &value[1..value.len() - 1];
            }
        }
        if value.is_empty() {
            return Err(ConstraintError::NoValue { text: text() });
        }
        if value.chars().any(|c| "=!<>~\"'".contains(c) || c.is_control()) {
            return Err(ConstraintError::BadValue { text: text(), value: value.to_string() });
        }
        let value = value.to_string();
        let lower = attribute.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "node.hostname" => Constraint::Hostname { op, value },
            "node.id" | "node.name" => Constraint::Name { op, value },
            "node.role" => {
                let role = value.to_ascii_lowercase();
                if role != "manager" && role != "worker" {
                    return Err(ConstraintError::BadRole { text: text(), value });
                }
                Constraint::Role { op, value: role }
            }
            _ if lower.starts_with("node.labels.") => {
                let key = &attribute["node.labels.".len()..];
                if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(ConstraintError::BadLabelKey { text: text(), key: key.to_string() });
                }
                Constraint::Label { key: key.to_string(), op, value }
            }
            _ => return Err(ConstraintError::UnknownAttribute { text: text(), attribute: attribute.to_string() }),
        })
    }

    /// Whether node `n` satisfies the constraint.
    pub fn matches(&self, n: &NodeInfo) -> bool {
        let (op, value, have) = match self {
            Constraint::Label { key, op, value } => (op, value, n.labels.get(key).map(String::as_str)),
            Constraint::Hostname { op, value } => (op, value, Some(n.hostname.as_str())),
            Constraint::Role { op, value } => (op, value, Some(n.role.as_str())),
            Constraint::Name { op, value } => (op, value, Some(n.name.as_str())),
        };
        let equal = have.is_some_and(|h| h.eq_ignore_ascii_case(value));
        equal == (*op == Op::Eq)
    }
}

impl std::str::FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Constraint, ConstraintError> {
        Constraint::parse(s)
    }
}

/// The canonical text, e.g. `node.labels.zone == b`.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (attribute, op, value) = match self {
            Constraint::Label { key, op, value } => (format!("node.labels.{key}"), op, value),
            Constraint::Hostname { op, value } => ("node.hostname".to_string(), op, value),
            Constraint::Role { op, value } => ("node.role".to_string(), op, value),
            Constraint::Name { op, value } => ("node.name".to_string(), op, value),
        };
        let op = if *op == Op::Eq { "==" } else { "!=" };
        write!(f, "{attribute} {op} {value}")
    }
}

/// The replica number a global service has on node `name`:
/// `1 + stable_hash([name]) % 1_000_000_000`, whatever other nodes exist. When
/// two eligible nodes have the same number (a chance of about 1 in 2,000 per
/// service at 1,000 nodes), the lower name keeps it and the other takes the
/// next free one (after 10⁹ comes 1).
pub fn global_replica(name: &str) -> u32 {
    1 + (stable_hash(&[name.as_bytes()]) % GLOBAL_SPACE) as u32
}

const GLOBAL_SPACE: u64 = 1_000_000_000;

/// The rendezvous score of (a replica's hash, a node's hash).
fn score(slot: u64, node: u64) -> u64 {
    mix(slot ^ node)
}

fn nano_cpus(cpus: f64) -> u64 {
    // `as` saturates; NaN and negatives count as none.
    if cpus > 0.0 {
        (cpus * 1e9).round() as u64
    } else {
        0
    }
}

/// A node as placement sees it: its hash and what is still free.
struct Node<'a> {
    info: &'a NodeInfo,
    hash: u64,
    weight: u64,
    free_cpus: u64,
    free_memory: u64,
}

/// A replica's reservation.
#[derive(Clone, Copy)]
struct Reservation {
    cpus: u64,
    memory: u64,
}

impl Reservation {
    fn fits(self, n: &Node) -> bool {
        self.cpus <= n.free_cpus && self.memory <= n.free_memory
    }

    fn take(self, n: &mut Node) {
        n.free_cpus -= self.cpus;
        n.free_memory -= self.memory;
    }
}

/// Places every replica of `demands` on `nodes`; see the module's doc.
pub fn place(nodes: &[NodeInfo], demands: &[Demand]) -> Placement {
    let mut infos: Vec<&NodeInfo> = nodes.iter().collect();
    infos.sort_by(|a, b| node_order(a, b));
    infos.dedup_by(|later, first| later.name == first.name);
    let mut nodes: Vec<Node> = infos
        .into_iter()
        .map(|info| Node {
            info,
            hash: stable_hash(&[info.name.as_bytes()]),
            weight: nano_cpus(info.cpus),
            free_cpus: nano_cpus(info.cpus),
            free_memory: info.memory,
        })
        .collect();
    let mut demands: Vec<&Demand> = demands.iter().collect();
    demands.sort_by(|a, b| demand_order(a, b));
    demands.dedup_by(|later, first| later.project == first.project && later.service == first.service);

    let mut out = Placement::default();
    for d in demands {
        if d.global {
            place_global(&mut nodes, d, &mut out);
        } else {
            place_replicated(&mut nodes, d, &mut out);
        }
    }
    out.unplaced.sort();
    out
}

fn node_order(a: &NodeInfo, b: &NodeInfo) -> Ordering {
    (&a.name, &a.hostname, &a.role, &a.labels, a.memory)
        .cmp(&(&b.name, &b.hostname, &b.role, &b.labels, b.memory))
        .then(a.cpus.total_cmp(&b.cpus))
}

fn demand_order(a: &Demand, b: &Demand) -> Ordering {
    (&a.project, &a.service, a.global, a.replicas, a.max_per_node, &a.constraints, a.memory)
        .cmp(&(&b.project, &b.service, b.global, b.replicas, b.max_per_node, &b.constraints, b.memory))
        .then(a.cpus.total_cmp(&b.cpus))
}

/// The indices of the nodes that satisfy every constraint of `d`, or why
/// there are none.
fn eligible(nodes: &[Node], d: &Demand) -> Result<Vec<usize>, String> {
    let found: Vec<usize> =
        (0..nodes.len()).filter(|&i| d.constraints.iter().all(|c| c.matches(nodes[i].info))).collect();
    if !found.is_empty() {
        return Ok(found);
    }
    if nodes.is_empty() {
        return Err("no nodes".to_string());
    }
    if let Some(c) = d.constraints.iter().find(|c| !nodes.iter().any(|n| c.matches(n.info))) {
        return Err(format!("no node satisfies {c}"));
    }
    let all: Vec<String> = d.constraints.iter().map(ToString::to_string).collect();
    Err(format!("no node satisfies {} together", all.join(" and ")))
}

fn place_replicated(nodes: &mut [Node], d: &Demand, out: &mut Placement) {
    let slot = |replica| Slot { project: d.project.clone(), service: d.service.clone(), replica };
    let elig = match eligible(nodes, d) {
        Ok(e) => e,
        Err(why) => {
            out.unplaced.extend((1..=d.replicas).map(|r| (slot(r), why.clone())));
            return;
        }
    };
    // Fair shares: quotas by weight; floors for all, one more for as many
    // nodes as the floors leave replicas over (`extra`).
    let mut weights: Vec<u128> = elig.iter().map(|&i| u128::from(nodes[i].weight)).collect();
    if weights.iter().all(|&w| w == 0) {
        weights.fill(1);
    }
    let total: u128 = weights.iter().sum();
    let replicas = u128::from(d.replicas);
    let floor: Vec<u128> = weights.iter().map(|w| replicas * w / total).collect();
    let ceil: Vec<u128> = weights.iter().map(|w| (replicas * w).div_ceil(total)).collect();
    let mut extra = replicas - floor.iter().sum::<u128>();
    let max = d.max_per_node.unwrap_or(u32::MAX);
    let mut counts = vec![0u32; elig.len()];
    let res = Reservation { cpus: nano_cpus(d.cpus), memory: d.memory };

    for r in 1..=d.replicas {
        let h = stable_hash(&[d.project.as_bytes(), d.service.as_bytes(), &r.to_le_bytes()]);
        let best = |ok: &dyn Fn(usize) -> bool| {
            (0..elig.len())
                .filter(|&k| counts[k] < max && ok(k) && res.fits(&nodes[elig[k]]))
                // Highest score; on a tie (as likely as a 64-bit collision), the lower name.
                .max_by_key(|&k| (score(h, nodes[elig[k]].hash), std::cmp::Reverse(k)))
        };
        let c = |k: usize| u128::from(counts[k]);
        let fair = best(&|k| c(k) < floor[k] || (c(k) < ceil[k] && extra > 0));
        let chosen = match fair {
            Some(k) => {
                if c(k) >= floor[k] {
                    extra -= 1;
                }
                Some(k)
            }
            None => best(&|_| true),
        };
        match chosen {
            Some(k) => {
                counts[k] += 1;
                let n = &mut nodes[elig[k]];
                res.take(n);
                out.assigned.insert(slot(r), n.info.name.clone());
            }
            None => {
                let why = if max == 0 {
                    "max_replicas_per_node is 0".to_string()
                } else if counts.iter().all(|&c| c >= max) {
                    format!("every eligible node already runs {max} replicas (max_replicas_per_node)")
                } else {
                    let which = if d.constraints.is_empty() { "no node" } else { "no eligible node" };
                    format!("{which} has {} free", describe(d))
                };
                out.unplaced.push((slot(r), why));
            }
        }
    }
}

fn place_global(nodes: &mut [Node], d: &Demand, out: &mut Placement) {
    // A global service no node satisfies has no replicas, so no slots.
    let Ok(elig) = eligible(nodes, d) else { return };
    // Numbers: each node's own first, in name order; then, for the nodes that
    // found theirs taken, the next free one.
    let mut taken = BTreeSet::new();
    let mut number = vec![0u32; elig.len()];
    for (k, &i) in elig.iter().enumerate() {
        let n = global_replica(&nodes[i].info.name);
        if taken.insert(n) {
            number[k] = n;
        }
    }
    for (k, &i) in elig.iter().enumerate() {
        if number[k] == 0 {
            let mut n = global_replica(&nodes[i].info.name);
            while !taken.insert(n) {
                n = if u64::from(n) == GLOBAL_SPACE { 1 } else { n + 1 };
            }
            number[k] = n;
        }
    }
    let res = Reservation { cpus: nano_cpus(d.cpus), memory: d.memory };
    for (k, &i) in elig.iter().enumerate() {
        let slot = Slot { project: d.project.clone(), service: d.service.clone(), replica: number[k] };
        let n = &mut nodes[i];
        if d.max_per_node == Some(0) {
            out.unplaced.push((slot, "max_replicas_per_node is 0".to_string()));
        } else if res.fits(n) {
            res.take(n);
            out.assigned.insert(slot, n.info.name.clone());
        } else {
            out.unplaced.push((slot, format!("node {} does not have {} free", n.info.name, describe(d))));
        }
    }
}

/// A reservation in words: `2 CPUs and 1 GiB`, `0.5 CPUs`, `512 MiB of memory`.
fn describe(d: &Demand) -> String {
    let cpus = if d.cpus == 1.0 { "1 CPU".to_string() } else { format!("{} CPUs", d.cpus) };
    match (nano_cpus(d.cpus) > 0, d.memory > 0) {
        (true, true) => format!("{cpus} and {}", bytes(d.memory)),
        (true, false) => cpus,
        (false, _) => format!("{} of memory", bytes(d.memory)),
    }
}

fn bytes(b: u64) -> String {
    for (size, unit) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if b >= size {
            let text = format!("{:.2}", b as f64 / size as f64);
            return format!("{} {unit}", text.trim_end_matches('0').trim_end_matches('.'));
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests;
