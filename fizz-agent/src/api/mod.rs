//! The agent's API: HTTP/JSON on a unix socket. `server` runs in the agent
//! and turns requests into commands for its loop; `client` is what the CLI
//! uses. The types here are the wire format.

pub mod client;
pub mod server;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{
    agent::plan::ProjectPlan,
    docker::{Health, RunState},
};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/fizz/fizz.sock";

/// `POST /v1/up`: deploy or update a project.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpRequest {
    pub project: ProjectPlan,
}

/// The answer to `up`: what was accepted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpResponse {
    pub project: String,
    /// Each service and its VIP.
    pub services: Vec<(String, Option<Ipv4Addr>)>,
    /// Services whose definition changed (their replicas are recreated).
    pub changed: Vec<String>,
    /// Whether anything changed at all.
    pub updated: bool,
}

/// `POST /v1/down`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DownRequest {
    pub project: String,
    /// Also remove the project's named volumes.
    pub volumes: bool,
}

/// `POST /v1/scale`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub project: String,
    pub service: String,
    pub replicas: u32,
}

/// One replica in `GET /v1/ps`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replica {
    pub project: String,
    pub service: String,
    pub replica: u32,
    pub name: String,
    pub node: String,
    /// `None` while the replica is not created yet.
    pub state: Option<RunState>,
    pub health: Option<Health>,
    pub addr: Option<Ipv4Addr>,
    pub vip: Option<Ipv4Addr>,
    pub container_id: Option<String>,
    /// Why the replica is not running yet, or what went wrong.
    pub note: Option<String>,
}

/// `GET /v1/ps` answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PsResponse {
    pub replicas: Vec<Replica>,
    /// Projects deployed (even with no replica running).
    pub projects: Vec<String>,
    /// The rolling updates of their services.
    #[serde(default)]
    pub updates: Vec<UpdateStatus>,
}

/// Where the rolling update of one service stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateStatus {
    pub project: String,
    pub service: String,
    pub phase: UpdatePhase,
    /// Why it paused or rolled back.
    pub why: Option<String>,
    /// Replicas running the definition being rolled out, settled, of all.
    pub updated: usize,
    pub total: usize,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpdatePhase {
    Updating,
    Done,
    Paused,
    RollingBack,
    RolledBack,
}

impl std::fmt::Display for UpdatePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdatePhase::Updating => "updating",
            UpdatePhase::Done => "done",
            UpdatePhase::Paused => "paused",
            UpdatePhase::RollingBack => "rolling back",
            UpdatePhase::RolledBack => "rolled back",
        })
    }
}

/// `POST /v1/exec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    pub project: String,
    pub service: String,
    /// Which replica; none: any that runs on this node.
    pub replica: Option<u32>,
    pub cmd: Vec<String>,
}

/// The answer to `exec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecResponse {
    pub exit_code: i64,
    pub output: String,
}

/// The answer to `POST /v1/cluster/init`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitResponse {
    /// What other nodes pass to `fizz join`.
    pub token: String,
    /// Where they reach this node.
    pub addr: std::net::SocketAddr,
}

/// `POST /v1/cluster/join`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub seeds: Vec<std::net::SocketAddr>,
}

/// One member in `GET /v1/nodes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub addr: std::net::SocketAddr,
    /// alive, suspect or down.
    pub state: String,
    /// The node's container range.
    pub range: String,
    pub wg_pubkey: String,
    /// Grows each time the node's agent restarts.
    pub generation: u64,
    /// Seconds since the last WireGuard handshake with this node (none yet,
    /// or this node itself: `None`).
    #[serde(default)]
    pub wg_handshake_secs: Option<u64>,
    /// Whether this is the node that answered.
    pub local: bool,
    /// Its labels (`fizz node label`), for placement constraints.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/nodes/labels`: set and remove a node's labels.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabelRequest {
    pub node: String,
    pub set: std::collections::BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// `POST /v1/nodes/rm`: forget a node that is gone for good.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRmRequest {
    pub node: String,
}

/// `POST /v1/cluster/join-token`: the current token, or (`rotate`) a new one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinTokenRequest {
    pub rotate: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinTokenResponse {
    pub token: String,
}

/// `POST /v1/node/rotate-key` answer: this node's new WireGuard public key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotateKeyResponse {
    pub node: String,
    pub wg_pubkey: String,
}

/// `GET /v1/nodes` answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodesResponse {
    /// Whether this node is in a cluster at all.
    pub clustered: bool,
    pub nodes: Vec<NodeView>,
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
