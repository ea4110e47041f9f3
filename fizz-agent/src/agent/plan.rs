//! What the agent is asked to run: projects of services, each a container
//! template plus what the network needs to know. Built from a normalized
//! Compose project by `compose` → `plan` translation (`from_compose`), stored
//! as the desired state, and compared with what runs by `reconcile`.

use std::{
    collections::BTreeMap,
    hash::{Hash as _, Hasher as _},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

use crate::{docker::ContainerSpec, net::service::Proto};

/// A deployed Compose project.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectPlan {
    pub name: String,
    pub services: BTreeMap<String, ServicePlan>,
    /// Named volumes, as Docker volume names (already prefixed by project).
    pub volumes: Vec<String>,
}

/// One service of a project.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub replicas: u32,
    /// The container every replica is made from; name, labels, address and
    /// DNS are filled in per replica.
    pub template: ContainerSpec,
    pub depends_on: Vec<Dependency>,
    /// Ports the service listens on (its VIP exposes exactly these).
    pub ports: Vec<ServicePort>,
    /// Compose networks the service is on, with its aliases on each.
    pub networks: BTreeMap<String, Vec<String>>,
    /// The service's VIP, allocated when the project is first deployed and
    /// kept across updates.
    pub vip: Option<Ipv4Addr>,
    /// Whether Docker runs a healthcheck: only healthy replicas are backends.
    pub has_healthcheck: bool,
    /// Where its replicas may run (`deploy.mode`, `deploy.placement`, reservations).
    #[serde(default)]
    pub placement: PlacementSpec,
}

/// What placement needs of a service, from its `deploy` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    /// `deploy.mode: global`: one replica on every eligible node.
    #[serde(default)]
    pub global: bool,
    /// `deploy.placement.constraints`, as written (checked when the plan is made).
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub max_per_node: Option<u32>,
    /// `deploy.resources.reservations.cpus`, in thousandths of a CPU.
    #[serde(default)]
    pub millicpus: u64,
    /// `deploy.resources.reservations.memory`, in bytes.
    #[serde(default)]
    pub memory: u64,
}

/// A port a service exposes on its VIP, and the container port behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    pub port: u16,
    pub target: u16,
    pub proto: Proto,
}

/// `depends_on` with its condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

impl ServicePlan {
    /// A hash of everything that, when changed, means the replicas must be
    /// recreated (the template, and what the network gives the container).
    pub fn config_hash(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(&self.template).unwrap_or_default().hash(&mut h);
        serde_json::to_string(&self.networks).unwrap_or_default().hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

/// The container name of a replica (as `docker compose` names them).
pub fn container_name(project: &str, service: &str, replica: u32) -> String {
    format!("{project}-{service}-{replica}")
}
