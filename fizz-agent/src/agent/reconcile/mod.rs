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
    plan::{container_name, Condition, ProjectPlan, ServicePlan, ServicePort},
};
use crate::{
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
    /// Its labels are not Fizz's (damaged): it cannot be managed.
    Unlabelled,
}

/// One step for the agent to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Remove { id: String, name: String, reason: RemoveReason },
    Create { id: Identity, addr: Ipv4Addr, spec: Box<ContainerSpec> },
}

/// What `plan` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Removals first, then creations in dependency order.
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
}

fn satisfied(cond: Condition, reps: &[&ContainerInfo], want: u32) -> bool {
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

/// Compares what should run with what exists.
pub fn plan(ctx: &NodeContext<'_>, projects: &BTreeMap<String, ProjectPlan>, containers: &[ContainerInfo]) -> Plan {
    let mut out = Plan::default();
    let mut kept: BTreeMap<Identity, &ContainerInfo> = BTreeMap::new();
    let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();

    for c in containers {
        let Some((id, addr)) = identity(c) else {
            out.actions.push(Action::Remove { id: c.id.clone(), name: c.name.clone(), reason: RemoveReason::Unlabelled });
            continue;
        };
        let reason = match projects.get(&id.project).and_then(|p| p.services.get(&id.service)) {
            None => Some(RemoveReason::NotDesired),
            Some(svc) if id.replica == 0 || id.replica > svc.replicas => Some(RemoveReason::ScaledDown),
            Some(svc) if c.labels.get(labels::CONFIG_HASH) != Some(&svc.config_hash()) => Some(RemoveReason::Changed),
            Some(_) if kept.contains_key(&id) => Some(RemoveReason::Duplicate),
            Some(_) => None,
        };
        match reason {
            Some(reason) => out.actions.push(Action::Remove { id: c.id.clone(), name: c.name.clone(), reason }),
            None => {
                if let Some(a) = addr {
                    used.insert(a);
                }
                kept.insert(id, c);
            }
        }
    }

    for (pname, p) in projects {
        for sname in dependency_order(p) {
            let svc = &p.services[sname];
            let mut blocked = None;
            for dep in &svc.depends_on {
                let Some(dsvc) = p.services.get(&dep.service) else { continue };
                let reps: Vec<&ContainerInfo> = kept
                    .iter()
                    .filter(|(i, _)| i.project == *pname && i.service == dep.service)
                    .map(|(_, c)| *c)
                    .collect();
                if !satisfied(dep.condition, &reps, dsvc.replicas) {
                    let what = match dep.condition {
                        Condition::ServiceStarted => "to start",
                        Condition::ServiceHealthy => "to be healthy",
                        Condition::ServiceCompletedSuccessfully => "to complete successfully",
                    };
                    blocked = Some(format!("waiting for {} {what}", dep.service));
                    break;
                }
            }
            for replica in 1..=svc.replicas {
                let id = Identity { project: pname.clone(), service: sname.clone(), replica };
                if kept.contains_key(&id) {
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

/// The addresses of a service's ready replicas, sorted.
fn ready_addrs(project: &str, service: &str, svc: &ServicePlan, containers: &[ContainerInfo]) -> Vec<Ipv4Addr> {
    let mut addrs: Vec<Ipv4Addr> = containers
        .iter()
        .filter_map(|c| {
            let (id, addr) = identity(c)?;
            (id.project == project && id.service == service && ready(svc, c)).then_some(addr?)
        })
        .collect();
    addrs.sort();
    addrs
}

/// The VIP table: every exposed port of every service with a VIP, backed by
/// its ready replicas (none: the VIP rejects).
/// Each entry comes with the service's network mask.
pub fn vip_table(projects: &BTreeMap<String, ProjectPlan>, containers: &[ContainerInfo]) -> Vec<(ServiceSpec, u64)> {
    let (masks, _) = network_masks(projects);
    let mut out = Vec::new();
    for (pname, p) in projects {
        for (sname, svc) in &p.services {
            let Some(vip) = svc.vip else { continue };
            let addrs = ready_addrs(pname, sname, svc, containers);
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

/// The names the DNS server answers: every service with a VIP (its aliases
/// per network, its running replicas as `tasks.`), and every container as a
/// client of its project and networks.
pub fn dns_entries(
    projects: &BTreeMap<String, ProjectPlan>,
    containers: &[ContainerInfo],
) -> (Vec<dns::ServiceEntry>, Vec<dns::ClientEntry>) {
    let mut services = Vec::new();
    let mut clients = Vec::new();
    for (pname, p) in projects {
        for (sname, svc) in &p.services {
            let Some(vip) = svc.vip else { continue };
            let tasks = ready_addrs(pname, sname, svc, containers);
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
