//! The per-host agent: one loop that owns all state. Events come in (API
//! commands, Docker events, a timer); the loop compares desired with actual
//! (`reconcile::plan`, pure) and carries out the actions: Docker
//! containers, their plumbing, the datapath's maps and DNS names. No other
//! task changes state.

pub mod cluster;
pub mod ipam;
pub mod placement;
pub mod plan;
pub mod reconcile;
pub mod rollout;
pub mod translate;
mod run;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use tokio::sync::oneshot;

pub use self::run::{host_if as host_if_name, run, wg_ifname};
use self::{ipam::Cidr, plan::ProjectPlan};
use crate::{api, docker::ContainerInfo};

/// How the agent is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name; its containers are labelled with it.
    pub node: String,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// This node's container range.
    pub range: Cidr,
    /// The cluster's service VIP range.
    pub vip_range: Cidr,
    /// Prefix of the host ends of container veths (≤ 9 bytes; the rest of
    /// the 15 is a hash of the container's name).
    pub veth_prefix: String,
    /// Where the DNS server listens (the containers' gateway).
    pub dns_listen: SocketAddr,
    /// Where names that are not Fizz's are forwarded.
    pub dns_upstream: Vec<SocketAddr>,
    pub mtu: u32,
    /// The UDP port of gossip (on every address).
    pub gossip_port: u16,
    /// The address peers reach this node at (default: its first global IPv4).
    pub advertise: Option<Ipv4Addr>,
    /// The UDP port of this node's WireGuard device.
    pub wg_port: u16,
    /// Appended to Docker container names (nodes sharing one engine).
    pub name_suffix: String,
}

/// What an API call can fail with; the message goes to the user.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The project, service or replica does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// The agent cannot serve now (Docker down, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// Carrying out the request failed.
    #[error("{0}")]
    Failed(String),
}

/// Which containers a command is about.
#[derive(Clone, Debug)]
pub struct Target {
    pub project: String,
    pub service: Option<String>,
    pub replica: Option<u32>,
}

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// A request for the loop, with where to send the answer.
pub enum Command {
    Up { project: Box<ProjectPlan>, reply: Reply<api::UpResponse> },
    Down { project: String, volumes: bool, reply: Reply<()> },
    Scale { project: String, service: String, replicas: u32, reply: Reply<()> },
    Ps { project: Option<String>, reply: Reply<api::PsResponse> },
    Find { target: Target, reply: Reply<Vec<ContainerInfo>> },
    /// Start a new cluster on this node.
    ClusterInit { reply: Reply<api::InitResponse> },
    /// Join a cluster: start gossip with its secret and contact the seeds.
    ClusterJoin { secret: [u8; 32], seeds: Vec<SocketAddr>, reply: Reply<()> },
    /// Undo a join that found no one (stop gossip, forget the secret).
    ClusterAbort { reply: Reply<()> },
    /// The join token; with `rotate`, a new one (every member refuses the old one then).
    JoinToken { rotate: bool, reply: Reply<api::JoinTokenResponse> },
    Nodes { reply: Reply<api::NodesResponse> },
    /// Set and remove a node's labels.
    Label { req: api::LabelRequest, reply: Reply<BTreeMap<String, String>> },
    /// Forget a node that is gone for good.
    NodeRm { node: String, reply: Reply<()> },
    /// Give this node a new WireGuard key.
    RotateKey { reply: Reply<api::RotateKeyResponse> },
}

/// Allocates VIPs for the services of `new` that have none: a service keeps
/// the VIP it had in `old`; others take the first free one from where their
/// name hashes to, so that two nodes deploying different projects at once
/// rarely pick the same.
pub fn assign_vips(
    range: Cidr,
    new: &mut ProjectPlan,
    old: Option<&ProjectPlan>,
    all: &BTreeMap<String, ProjectPlan>,
) -> Result<(), ipam::IpamError> {
    let mut used: std::collections::BTreeSet<Ipv4Addr> = all
        .values()
        .filter(|p| p.name != new.name)
        .flat_map(|p| p.services.values().filter_map(|s| s.vip))
        .collect();
    for (name, svc) in new.services.iter_mut() {
        if let Some(vip) = old.and_then(|o| o.services.get(name)).and_then(|s| s.vip) {
            svc.vip = Some(vip);
            used.insert(vip);
        }
    }
    for (name, svc) in new.services.iter_mut() {
        if svc.vip.is_none() {
            let vip = ipam::allocate_for(range, &used, &format!("{}/{name}", new.name))?;
            used.insert(vip);
            svc.vip = Some(vip);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{plan::ServicePlan, *};

    #[test]
    fn vips_are_kept_across_updates_and_never_shared() {
        let range = Cidr::new(Ipv4Addr::new(10, 43, 0, 0), 16).unwrap();
        let mk = |name: &str, svcs: &[&str]| ProjectPlan {
            name: name.into(),
            services: svcs.iter().map(|s| (s.to_string(), ServicePlan::default())).collect(),
            volumes: vec![],
        };
        let mut all = BTreeMap::new();
        let mut a = mk("a", &["web", "db"]);
        assign_vips(range, &mut a, None, &all).unwrap();
        let (web, db) = (a.services["web"].vip.unwrap(), a.services["db"].vip.unwrap());
        assert_ne!(web, db);
        all.insert("a".into(), a.clone());
        let mut b = mk("b", &["web"]);
        assign_vips(range, &mut b, None, &all).unwrap();
        assert!(![web, db].contains(&b.services["web"].vip.unwrap()));
        let mut a2 = mk("a", &["api", "web"]);
        assign_vips(range, &mut a2, Some(&a), &all).unwrap();
        assert_eq!(a2.services["web"].vip, Some(web), "kept");
        // The same project deployed from another node with nothing known gets the same VIPs.
        let mut again = mk("a", &["web", "db"]);
        assign_vips(range, &mut again, None, &BTreeMap::new()).unwrap();
        assert_eq!(again, a);
    }
}
