//! The reconciler, pure: desired projects and the containers that exist →
//! the actions that close the gap, and the views the datapath and DNS are
//! given (VIP backends, names). No IO: the agent's loop observes, calls
//! `plan`, and carries the actions out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::{
    ipam::{self, Cidr},
    placement::Slot,
    plan::{container_name, Condition, ProjectPlan, ServicePlan, ServicePort, UpdateOrder},
};
use crate::{
    state::ReplicaReport,
    dns,
    docker::{labels, ContainerInfo, ContainerSpec, Health, RunState},
    net::service::{BackendAddr, Frontend, Proto, ServiceSpec},
};

/// Who a container is, from its labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    pub project: String,
    pub service: String,
    pub replica: u32,
}

/// Reads a container's identity and address from its labels.
pub fn identity(c: &ContainerInfo) -> Option<(Identity, Option<Ipv4Addr>)> {
    let project = c.labels.get(labels::PROJECT)?.clone();
    let service = c.labels.get(labels::SERVICE)?.clone();
    let replica = c.labels.get(labels::REPLICA)?.parse().ok()?;
    let addr = c.labels.get(labels::ADDR).and_then(|a| a.parse().ok());
    Some((Identity { project, service, replica }, addr))
}

/// Why a container is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its project or service is no longer deployed.
    NotDesired,
    /// The service was scaled below its replica number.
    ScaledDown,
    /// The service definition changed: it is recreated.
    Changed,
    /// Another container holds the same replica.
    Duplicate,
    /// The replica is placed on another node, which runs it now.
    Moved,
    /// The replica is placed nowhere (a global service's node no longer eligible).
    NotPlaced,
    /// Its labels are not Fizz's (damaged): it cannot be managed.
    Unlabelled,
}

/// One step for the agent to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take a container out of service (no VIP sends it new flows); it is removed once
    /// `Share::draining` says it has drained.
    Drain { id: String, name: String },
    Remove { id: String, name: String, reason: RemoveReason },
    /// Free a replica's name for its replacement (an update that starts the new one first).
    Rename { id: String, name: String, to: String },
    Create { id: Identity, addr: Ipv4Addr, spec: Box<ContainerSpec> },
}

/// Which replicas of a service being updated may be replaced now, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub replicas: BTreeSet<u32>,
    pub order: UpdateOrder,
}

/// What `plan` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Drains and removals first, then renames, then creations in dependency order.
    pub actions: Vec<Action>,
    /// Replicas held back, with the reason (a dependency not yet met).
    pub waiting: Vec<(Identity, String)>,
    /// Replicas that cannot be created (no address left, …).
    pub errors: Vec<(Identity, String)>,
}

/// Node-wide settings the plan depends on.
#[derive(Clone, Debug)]
pub struct NodeContext<'a> {
    pub node: &'a str,
    pub range: Cidr,
    /// The DNS server containers use.
    pub dns: Ipv4Addr,
    /// Appended to container names (`.<node>` when nodes share one Docker engine, as in a
    /// local cluster); empty on a real host.
    pub name_suffix: &'a str,
}

/// Where replicas run across the cluster, as this node sees it.
#[derive(Clone, Copy, Debug)]
pub struct Share<'a> {
    /// The node of every placed replica (all nodes').
    pub placed: &'a BTreeMap<Slot, String>,
    /// What the other live nodes run, as they report it.
    pub remote: &'a [(String, ReplicaReport)],
    /// Placement is unknown (no majority seen yet): keep every replica that runs, for any
    /// placement reason, and start none.
    pub hold: bool,
    /// The services being updated, by (project, service): which replicas may be replaced
    /// now. A service not here with an old container replaces it at once.
    pub updates: &'a BTreeMap<(String, String), Window>,
    /// Containers being drained, by id: whether they have drained.
    pub draining: &'a BTreeMap<String, bool>,
}

impl<'a> Share<'a> {
    /// The placed replicas of one service, in replica order, with their nodes.
    fn of_service(&self, project: &str, service: &str) -> impl Iterator<Item = (u32, &'a str)> + 'a {
        let slot = |replica| Slot { project: project.to_string(), service: service.to_string(), replica };
        self.placed.range(slot(0)..=slot(u32::MAX)).map(|(s, n)| (s.replica, n.as_str()))
    }

    fn node_of(&self, id: &Identity) -> Option<&str> {
        let slot = Slot { project: id.project.clone(), service: id.service.clone(), replica: id.replica };
        self.placed.get(&slot).map(String::as_str)
    }

    /// Whether `node` reports `id` ready with the service's current definition.
    fn ready_on(&self, node: &str, id: &Identity, hash: &str) -> bool {
        self.remote.iter().any(|(n, r)| {
            n == node && r.project == id.project && r.service == id.service && r.replica == id.replica && r.ready && r.config_hash == hash
        })
    }
}

/// A replica's state for a dependency check, local or reported.
struct DepState {
    state: RunState,
    health: Option<Health>,
    exit_code: Option<i64>,
}

fn satisfied(cond: Condition, reps: &[DepState], want: u32) -> bool {
    if (reps.len() as u32) < want {
        return false;
    }
    reps.iter().all(|c| match cond {
        Condition::ServiceStarted => c.state == RunState::Running,
        Condition::ServiceHealthy => c.state == RunState::Running && c.health == Some(Health::Healthy),
        Condition::ServiceCompletedSuccessfully => c.state == RunState::Exited && c.exit_code == Some(0),
    })
}

/// The full spec of one replica.
pub fn replica_spec(
    ctx: &NodeContext<'_>,
    project: &str,
    service: &str,
    svc: &ServicePlan,
    replica: u32,
    addr: Ipv4Addr,
) -> ContainerSpec {
    let mut spec = svc.template.clone();
    spec.name = container_name(project, service, replica);
    if spec.hostname.is_none() {
        spec.hostname = Some(spec.name.clone());
    }
    spec.name.push_str(ctx.name_suffix);
    spec.labels.insert(labels::NODE.into(), ctx.node.to_string());
    spec.labels.insert(labels::PROJECT.into(), project.to_string());
    spec.labels.insert(labels::SERVICE.into(), service.to_string());
    spec.labels.insert(labels::REPLICA.into(), replica.to_string());
    spec.labels.insert(labels::ADDR.into(), addr.to_string());
    spec.labels.insert(labels::CONFIG_HASH.into(), svc.config_hash());
    spec.dns = vec![ctx.dns.to_string()];
    spec.dns_search = vec![format!("{project}.fizz")];
    spec
}

/// Services of a project in an order where dependencies come first (the
/// loader rejects cycles; any left over come last, in name order).
fn dependency_order(p: &ProjectPlan) -> Vec<&String> {
    let mut out: Vec<&String> = Vec::new();
    let mut done = BTreeSet::new();
    while out.len() < p.services.len() {
        let before = out.len();
        for (name, svc) in &p.services {
            if done.contains(name) {
                continue;
            }
            if svc.depends_on.iter().all(|d| done.contains(&d.service) || !p.services.contains_key(&d.service)) {
                done.insert(name.clone());
                out.push(name);
            }
        }
        if out.len() == before {
            for name in p.services.keys() {
                if done.insert(name.clone()) {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Whether removing a container for this reason first takes it out of service (so requests
/// in flight end and peers stop sending new ones before it stops).
fn drains(reason: RemoveReason) -> bool {
    !matches!(reason, RemoveReason::NotDesired | RemoveReason::Unlabelled)
}

/// Compares what should run on this node with what exists: creates the replicas placed here,
/// removes what is not desired, and a replica placed elsewhere once its new node reports it
/// ready (so a move never leaves a gap). A changed service's replicas are replaced when
/// `share.updates` lets them (a rolling update), the old one stopped first or after its
/// replacement is ready. A container that serves is drained before it is removed.
pub fn plan(
    ctx: &NodeContext<'_>,
    projects: &BTreeMap<String, ProjectPlan>,
    containers: &[ContainerInfo],
    share: Share<'_>,
) -> Plan {
    let mut out = Plan::default();
    // What serves each replica here (its current container, else the old one kept), for
    // dependencies; replicas that must not be created now (one runs, or the old one stays).
    let mut kept: BTreeMap<Identity, &ContainerInfo> = BTreeMap::new();
    let mut occupied: BTreeSet<Identity> = BTreeSet::new();
    let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut groups: BTreeMap<Identity, Vec<(&ContainerInfo, Option<Ipv4Addr>)>> = BTreeMap::new();
    for c in containers {
        match identity(c) {
            Some((id, addr)) => groups.entry(id).or_default().push((c, addr)),
            None => out.actions.push(Action::Remove { id: c.id.clone(), name: c.name.clone(), reason: RemoveReason::Unlabelled }),
        }
    }
    let mut removals = Vec::new();
    let mut renames = Vec::new();
    for (id, group) in groups {
        let svc = projects.get(&id.project).and_then(|p| p.services.get(&id.service));
        let placed = share.node_of(&id);
        let gone = match svc {
            None => Some(RemoveReason::NotDesired),
            Some(svc) if !svc.placement.global && (id.replica == 0 || id.replica > svc.replicas) => Some(RemoveReason::ScaledDown),
            Some(svc) if svc.placement.global && placed.is_none() && !share.hold => Some(RemoveReason::NotPlaced),
            Some(svc) if !share.hold && placed.is_some_and(|n| n != ctx.node && share.ready_on(n, &id, &svc.config_hash())) => {
                Some(RemoveReason::Moved)
            }
            Some(_) => None,
        };
        let (Some(svc), None) = (svc, gone) else {
            for (c, addr) in group {
                removals.push((c, addr, gone.unwrap_or(RemoveReason::NotDesired), svc));
            }
            continue;
        };
        let hash = svc.config_hash();
        // Draining is one way: a container taken out of service is removed, whatever changed
        // since (kept, it would count as running while no VIP sends it anything).
        let (leaving, group): (Vec<_>, Vec<_>) = group.into_iter().partition(|(c, _)| share.draining.contains_key(&c.id));
        for (c, addr) in leaving {
            let current = c.labels.get(labels::CONFIG_HASH) == Some(&hash);
            removals.push((c, addr, if current { RemoveReason::Duplicate } else { RemoveReason::Changed }, Some(svc)));
        }
        let (mut current, mut outdated): (Vec<_>, Vec<_>) =
            group.into_iter().partition(|(c, _)| c.labels.get(labels::CONFIG_HASH) == Some(&hash));
        // One container of each kind stays, a ready one first.
        current.sort_by_key(|(c, _)| !ready(svc, c));
        outdated.sort_by_key(|(c, _)| !ready(svc, c));
        for (c, addr) in current.drain(1.min(current.len())..).chain(outdated.drain(1.min(outdated.len())..)) {
            removals.push((c, addr, RemoveReason::Duplicate, Some(svc)));
        }
        let keep = current.first().copied();
        if let Some((c, addr)) = keep {
            used.extend(addr);
            kept.insert(id.clone(), c);
            occupied.insert(id.clone());
        }
        let Some((old, addr)) = outdated.first().copied() else { continue };
        let window = share.updates.get(&(id.project.clone(), id.service.clone()));
        let turn = !share.hold && window.is_none_or(|w| w.replicas.contains(&id.replica));
        let start_first = window.is_some_and(|w| w.order == UpdateOrder::StartFirst);
        let stays = match keep {
            // Its replacement serves: the old one goes.
            Some((new, _)) => !ready(svc, new) && start_first,
            None => !turn || start_first,
        };
        if !stays {
            removals.push((old, addr, RemoveReason::Changed, Some(svc)));
            continue;
        }
        used.extend(addr);
        kept.entry(id.clone()).or_insert(old);
        if !(turn && start_first) {
            // Not its turn: nothing is created in its place yet.
            occupied.insert(id.clone());
        } else if keep.is_none() {
            // Started first: the old container gives its name to the new one.
            let name = format!("{}{}", container_name(&id.project, &id.service, id.replica), ctx.name_suffix);
            if old.name == name {
                let to = format!("{name}-{}", old.id.chars().take(12).collect::<String>());
                renames.push(Action::Rename { id: old.id.clone(), name, to });
            }
        }
    }
    for (c, addr, reason, svc) in removals {
        let drained = share.draining.get(&c.id).copied().unwrap_or(false);
        if drains(reason) && svc.is_some_and(|svc| ready(svc, c)) && !drained {
            // Still serving: out of service first, removed on a later pass.
            out.actions.push(Action::Drain { id: c.id.clone(), name: c.name.clone() });
            used.extend(addr);
            if let Some((id, _)) = identity(c) {
                if reason == RemoveReason::Changed {
                    occupied.insert(id);
                }
            }
        } else {
            out.actions.push(Action::Remove { id: c.id.clone(), name: c.name.clone(), reason });
        }
    }
    out.actions.extend(renames);

    for (pname, p) in projects {
        for sname in dependency_order(p) {
            let svc = &p.services[sname];
            let mut blocked = None;
            for dep in &svc.depends_on {
                let Some(dsvc) = p.services.get(&dep.service) else { continue };
                let is_dep = |proj: &str, s: &str| proj == pname && s == dep.service;
                let reps: Vec<DepState> = kept
                    .iter()
                    .filter(|(i, _)| is_dep(&i.project, &i.service))
                    .map(|(_, c)| DepState { state: c.state, health: c.health, exit_code: c.exit_code })
                    .chain(
                        share
                            .remote
                            .iter()
                            .filter(|(_, r)| is_dep(&r.project, &r.service))
                            .map(|(_, r)| DepState { state: r.state, health: r.health, exit_code: r.exit_code }),
                    )
                    .collect();
                let want = if dsvc.placement.global {
                    share.of_service(pname, &dep.service).count() as u32
                } else {
                    dsvc.replicas
                };
                if !satisfied(dep.condition, &reps, want) {
                    let what = match dep.condition {
                        Condition::ServiceStarted => "to start",
                        Condition::ServiceHealthy => "to be healthy",
                        Condition::ServiceCompletedSuccessfully => "to complete successfully",
                    };
                    blocked = Some(format!("waiting for {} {what}", dep.service));
                    break;
                }
            }
            let mine = share.of_service(pname, sname).filter(|(_, n)| *n == ctx.node).map(|(r, _)| r);
            for replica in mine {
                let id = Identity { project: pname.clone(), service: sname.clone(), replica };
                if occupied.contains(&id) {
                    continue;
                }
                if let Some(why) = &blocked {
                    out.waiting.push((id, why.clone()));
                    continue;
                }
                match ipam::allocate(ctx.range, &used) {
                    Ok(addr) => {
                        used.insert(addr);
                        let spec = replica_spec(ctx, pname, sname, svc, replica, addr);
                        out.actions.push(Action::Create { id, addr, spec: Box::new(spec) });
                    }
                    Err(e) => out.errors.push((id, e.to_string())),
                }
            }
        }
    }
    out
}

/// The networks of a service (Compose puts a service with none on
/// `default`).
pub fn service_networks(svc: &ServicePlan) -> Vec<String> {
    if svc.networks.is_empty() {
        vec!["default".to_string()]
    } else {
        svc.networks.keys().cloned().collect()
    }
}

/// One bit per (project, network) in use, in a deterministic order, and the
/// resulting mask of every service: two containers may talk when their
/// masks share a bit. Past 64 networks, masks are 0 (unrestricted) and the
/// second value says so.
pub fn network_masks(projects: &BTreeMap<String, ProjectPlan>) -> (BTreeMap<(String, String), u64>, bool) {
    let mut bits: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (pname, p) in projects {
        for svc in p.services.values() {
            for n in service_networks(svc) {
                let next = bits.len() as u32;
                bits.entry((pname.clone(), n)).or_insert(next);
            }
        }
    }
    // Renumber in sorted order so every node agrees whatever the insertion.
    let overflow = bits.len() > 64;
    let index: BTreeMap<(String, String), u32> = bits.keys().cloned().enumerate().map(|(i, k)| (k, i as u32)).collect();
    let mut out = BTreeMap::new();
    for (pname, p) in projects {
        for (sname, svc) in &p.services {
            let mask = if overflow {
                0
            } else {
                service_networks(svc).iter().fold(0u64, |m, n| m | 1u64 << index[&(pname.clone(), n.clone())])
            };
            out.insert((pname.clone(), sname.clone()), mask);
        }
    }
    (out, overflow)
}

/// Whether a replica may receive traffic: running, and healthy when Docker
/// runs a healthcheck for it (from the service or from its image).
pub fn ready(svc: &ServicePlan, c: &ContainerInfo) -> bool {
    let healthy = match c.health {
        Some(h) => h == Health::Healthy,
        None => !svc.has_healthcheck,
    };
    c.state == RunState::Running && healthy
}

/// The addresses of a service's ready replicas, here and on the other live nodes, sorted.
fn ready_addrs(
    project: &str,
    service: &str,
    svc: &ServicePlan,
    containers: &[ContainerInfo],
    remote: &[(String, ReplicaReport)],
) -> Vec<Ipv4Addr> {
    let mut addrs: Vec<Ipv4Addr> = containers
        .iter()
        .filter_map(|c| {
            let (id, addr) = identity(c)?;
            (id.project == project && id.service == service && ready(svc, c)).then_some(addr?)
        })
        .chain(remote.iter().filter_map(|(_, r)| (r.project == project && r.service == service && r.ready).then_some(r.addr?)))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The VIP table: every exposed port of every service with a VIP, backed by
/// its ready replicas (none: the VIP rejects).
/// Each entry comes with the service's network mask.
pub fn vip_table(
    projects: &BTreeMap<String, ProjectPlan>,
    containers: &[ContainerInfo],
    remote: &[(String, ReplicaReport)],
) -> Vec<(ServiceSpec, u64)> {
    let (masks, _) = network_masks(projects);
    let mut out = Vec::new();
    for (pname, p) in projects {
        for (sname, svc) in &p.services {
            let Some(vip) = svc.vip else { continue };
            let addrs = ready_addrs(pname, sname, svc, containers, remote);
            let mask = masks.get(&(pname.clone(), sname.clone())).copied().unwrap_or(0);
            // A service that declares no port takes connections on any port,
            // as containers on a Compose network would.
            let any = [
                ServicePort { port: 0, target: 0, proto: Proto::Tcp },
                ServicePort { port: 0, target: 0, proto: Proto::Udp },
            ];
            let ports: &[ServicePort] = if svc.ports.is_empty() { &any } else { &svc.ports };
            for port in ports {
                let spec = ServiceSpec {
                    frontend: Frontend { vip, port: port.port, proto: port.proto },
                    backends: addrs.iter().map(|&addr| BackendAddr { addr, port: port.target }).collect(),
                };
                out.push((spec, mask));
            }
        }
    }
    out
}

/// The networks of the other nodes' containers, by address, from their
/// reports: what `from_wireguard` checks a new flow's source against.
/// Only running replicas count (an exited one's address may be taken
/// again); a replica of a project or service no longer in the desired
/// state gets mask 0 (unrestricted), as a local one would. Two reports of
/// one address (a moment while a node reuses it) get both masks.
pub fn remote_masks(remote: &[(String, ReplicaReport)], masks: &BTreeMap<(String, String), u64>) -> BTreeMap<Ipv4Addr, u64> {
    let mut out = BTreeMap::new();
    for (_, r) in remote {
        let Some(addr) = r.addr else { continue };
        if r.state != RunState::Running {
            continue;
        }
        let mask = masks.get(&(r.project.clone(), r.service.clone())).copied().unwrap_or(0);
        out.entry(addr)
            .and_modify(|m: &mut u64| *m = if *m == 0 || mask == 0 { 0 } else { *m | mask })
            .or_insert(mask);
    }
    out
}

/// The names the DNS server answers: every service with a VIP (its aliases
/// per network, its running replicas as `tasks.`), and every container as a
/// client of its project and networks.
pub fn dns_entries(
    projects: &BTreeMap<String, ProjectPlan>,
    containers: &[ContainerInfo],
    remote: &[(String, ReplicaReport)],
) -> (Vec<dns::ServiceEntry>, Vec<dns::ClientEntry>) {
    let mut services = Vec::new();
    let mut clients = Vec::new();
    for (pname, p) in projects {
        for (sname, svc) in &p.services {
            let Some(vip) = svc.vip else { continue };
            let tasks = ready_addrs(pname, sname, svc, containers, remote);
            let aliases = svc
                .networks
                .iter()
                .flat_map(|(net, names)| names.iter().map(move |a| dns::NetworkAlias { network: net.clone(), alias: a.clone() }))
                .collect();
            services.push(dns::ServiceEntry { project: pname.clone(), name: sname.clone(), vip, aliases, tasks });
        }
    }
    for c in containers {
        let Some((id, Some(addr))) = identity(c) else { continue };
        let Some(svc) = projects.get(&id.project).and_then(|p| p.services.get(&id.service)) else { continue };
        clients.push(dns::ClientEntry { addr, project: id.project.clone(), networks: service_networks(svc) });
    }
    (services, clients)
}

#[cfg(test)]
mod tests;
