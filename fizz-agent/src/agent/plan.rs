//! What the agent is asked to run: projects of services, each a container
//! template plus what the network needs to know. Built from a normalized
//! Compose project by `compose` → `plan` translation (`from_compose`), stored
//! as the desired state, and compared with what runs by `reconcile`.

use std::{collections::BTreeMap, net::Ipv4Addr};

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
    /// How its replicas are replaced when it changes (`deploy.update_config`).
    #[serde(default)]
    pub update: UpdatePolicy,
    /// How they are replaced when a failed update is rolled back (`deploy.rollback_config`).
    #[serde(default)]
    pub rollback: UpdatePolicy,
}

/// How a changed service's replicas are replaced, from `deploy.update_config` (or
/// `rollback_config`). The defaults are Swarm's: one at a time, old stopped first, each new
/// replica watched 5 s, pause on failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdatePolicy {
    /// Replicas being replaced at once, cluster-wide (0: all at once).
    pub parallelism: u32,
    /// The wait after a new replica is done before the next one is replaced, in ms.
    pub delay_ms: u64,
    /// How long a new replica must stay ready before it counts as done, in ms; a failure
    /// before then counts against the update.
    pub monitor_ms: u64,
    pub order: UpdateOrder,
    pub failure_action: FailureAction,
    /// The failures tolerated, in thousandths of the service's replicas.
    pub max_failure_permille: u32,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            parallelism: 1,
            delay_ms: 0,
            monitor_ms: 5_000,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            max_failure_permille: 0,
        }
    }
}

/// `order`: whether the old replica stops before its replacement starts, or after it is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// `failure_action`: what an update does when more replicas fail than it tolerates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
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
    /// Nodes compare it across the cluster, so it is the stable hash.
    pub fn config_hash(&self) -> String {
        let template = serde_json::to_string(&self.template).unwrap_or_default();
        let networks = serde_json::to_string(&self.networks).unwrap_or_default();
        format!("{:016x}", crate::hash::stable_hash(&[template.as_bytes(), networks.as_bytes()]))
    }
}

/// The container name of a replica (as `docker compose` names them).
pub fn container_name(project: &str, service: &str, replica: u32) -> String {
    format!("{project}-{service}-{replica}")
}
