//! Fizz's model of a Compose project: every value in one canonical (long) form, interpolated,
//! merged and checked. The rest of Fizz sees only these types, never YAML.
//!
//! Fields are declared in alphabetical order so that serializing a project (for `fizz config`)
//! prints keys sorted, as `docker compose config` does; empty values are left out.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

fn is_false(b: &bool) -> bool {
    !*b
}

fn go_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&super::value::format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// A loaded Compose project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    /// The project name (lowercase letters, digits, `-`, `_`).
    pub name: String,
    /// The enabled services, by name.
    pub services: BTreeMap<String, Service>,
    /// Networks, by their key in the file (the implicit `default` included when used).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    /// Named volumes, by key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Volume>,
    /// Secrets, by key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileObject>,
    /// Configs, by key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, FileObject>,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Service {
    /// The build section, kept for reference: Fizz does not build images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Capabilities added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// The command, in exec form (`Some(vec![])` clears the image's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Configs mounted as files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// Services this one waits for, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    /// Replicas, placement, resources and policies.
    pub deploy: Deploy,
    /// Devices, as `host[:container[:permissions]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// DNS servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DNS resolver options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_opt: Vec<String>,
    /// DNS search domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// The container's domain name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// The entrypoint, in exec form (`Some(vec![])` clears the image's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The environment: `env_file`s, then `environment`, all resolved.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Ports exposed to other containers, as written (`80`, `8000-8010/udp`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// Extra `/etc/hosts` entries, host name to address.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_hosts: BTreeMap<String, String>,
    /// Supplementary groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    /// The health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// The container's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The image to run.
    pub image: String,
    /// Whether to run an init process as PID 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// The IPC namespace mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    /// Container labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The logging driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// The networks the service joins (`default` when none is named).
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// The PID namespace mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// Published ports, one entry per port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Whether the container runs privileged.
    #[serde(skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// The profiles that enable this service (none: always enabled).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Whether the root file system is read-only.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// The container restart policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Secrets mounted as files under `/run/secrets`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// Security options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// The size of `/dev/shm`, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// Whether stdin stays open.
    #[serde(skip_serializing_if = "is_false")]
    pub stdin_open: bool,
    /// How long to wait after the stop signal before killing.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub stop_grace_period: Option<Duration>,
    /// The signal that stops the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Kernel parameters.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// tmpfs mounts, as `path[:options]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// Whether a TTY is allocated.
    #[serde(skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Resource limits, by name (`nofile`, `nproc`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// The user (and group) the process runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Mounts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Mount>,
    /// The working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// A build section (not acted on by Fizz).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Build {
    /// Build arguments (unset ones left out).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// The build context: an absolute path or a URL.
    pub context: String,
    /// The Dockerfile, relative to the context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The build stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// When a dependency counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Its containers have started.
    ServiceStarted,
    /// Its containers are healthy.
    ServiceHealthy,
    /// It has run to completion with exit code 0.
    ServiceCompletedSuccessfully,
}

/// One entry of `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// When the dependency is ready.
    pub condition: Condition,
    /// Whether the dependency must exist (a missing optional one is dropped).
    pub required: bool,
    /// Whether this service restarts when the dependency is updated.
    #[serde(skip_serializing_if = "is_false")]
    pub restart: bool,
}

/// Replicated (a number of replicas) or global (one per eligible node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployMode {
    /// A fixed number of replicas.
    #[default]
    Replicated,
    /// One replica on every node that fits the placement constraints.
    Global,
}

/// The `deploy` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Deploy {
    /// `vip` (the default) or `dnsrr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<String>,
    /// Service labels (not container labels).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Replicated or global.
    pub mode: DeployMode,
    /// Where replicas may run.
    #[serde(skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
    /// The number of replicas (always set in replicated mode; none in global mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Resource limits and reservations.
    #[serde(skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// When replicas are restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// How a failed update is rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    /// How updates roll out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
}

/// `deploy.placement`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Constraints such as `node.labels.zone == a`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// At most this many replicas on one node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
}

impl Placement {
    fn is_empty(&self) -> bool {
        self.constraints.is_empty() && self.max_replicas_per_node.is_none()
    }
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    /// Hard limits.
    #[serde(skip_serializing_if = "ResourceSpec::is_empty")]
    pub limits: ResourceSpec,
    /// Guaranteed amounts (used for placement).
    #[serde(skip_serializing_if = "ResourceSpec::is_empty")]
    pub reservations: ResourceSpec,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.reservations.is_empty()
    }
}

/// CPU, memory and process amounts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceSpec {
    /// CPUs (fractions allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl ResourceSpec {
    fn is_empty(&self) -> bool {
        self.cpus.is_none() && self.memory.is_none() && self.pids.is_none()
    }
}

/// `deploy.restart_policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any`.
    pub condition: String,
    /// The wait between restarts.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub delay: Option<Duration>,
    /// How many restarts are tried (unlimited when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
    /// How long to wait before deciding a restart worked.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub window: Option<Duration>,
}

/// `deploy.update_config` and `deploy.rollback_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateConfig {
    /// The wait between batches.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub delay: Option<Duration>,
    /// `continue`, `rollback` or `pause`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    /// The failure rate tolerated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
    /// How long each task is watched for failure.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub monitor: Option<Duration>,
    /// `stop-first` or `start-first`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// How many replicas are updated at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u64>,
}

/// The health check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// Whether the image's health check is turned off.
    #[serde(skip_serializing_if = "is_false")]
    pub disable: bool,
    /// Time between checks.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub interval: Option<Duration>,
    /// Failures in a row before the container is unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// Time between checks during the start period.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub start_interval: Option<Duration>,
    /// Time during which failures do not count.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub start_period: Option<Duration>,
    /// The check: `["CMD", ...]` or `["CMD-SHELL", "..."]` (empty: the image's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// How long one check may take.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub timeout: Option<Duration>,
}

/// The logging driver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Logging {
    /// The driver name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Its options.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// How a service joins one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceNetwork {
    /// Extra names of the service on this network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// A fixed address asked for (kept for reference: Fizz assigns addresses itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Order of attachment (higher first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// How a published port is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortMode {
    /// On every node, balanced across replicas.
    #[default]
    Ingress,
    /// Only on the nodes that run a replica, to that replica.
    Host,
}

/// One published (or only declared) container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// The application protocol (e.g. `http`), informative.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The host address to bind (all when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Ingress or host.
    pub mode: PortMode,
    /// A name for the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The port on the nodes (none: not published on a fixed port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// The port in the container.
    pub target: u16,
}

/// Kind of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountType {
    /// A host path.
    Bind,
    /// A named or anonymous volume.
    Volume,
    /// An in-memory file system.
    Tmpfs,
}

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Options of a bind mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    /// `consistent`, `cached` or `delegated` (no effect on Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// Whether the mount is read-only.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// The host path (bind) or volume name (none for anonymous volumes and tmpfs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The path in the container.
    pub target: String,
    /// Options of a tmpfs mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
    /// Bind, volume or tmpfs.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Options of a volume mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
}

/// `bind:` options of a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BindOptions {
    /// Whether a missing host path is created.
    #[serde(skip_serializing_if = "is_false")]
    pub create_host_path: bool,
    /// Mount propagation (`rprivate`, `shared`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// SELinux relabelling, `z` or `Z`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selinux: Option<String>,
}

/// `volume:` options of a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VolumeOptions {
    /// Whether the image's data is not copied into a new volume.
    #[serde(skip_serializing_if = "is_false")]
    pub nocopy: bool,
    /// A path inside the volume to mount instead of its root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

/// `tmpfs:` options of a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TmpfsOptions {
    /// File mode of the mount point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Size, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A service's use of a secret or config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRef {
    /// Group owning the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// File mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// The secret or config's key in the top-level section.
    pub source: String,
    /// The absolute path in the container.
    pub target: String,
    /// User owning the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One `ulimits` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    /// The hard limit.
    pub hard: i64,
    /// The soft limit.
    pub soft: i64,
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Network {
    /// Whether containers outside the project may attach.
    #[serde(skip_serializing_if = "is_false")]
    pub attachable: bool,
    /// The driver, as written (Fizz networks containers itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Whether the network exists outside the project.
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    /// Whether the network has no route outside.
    #[serde(skip_serializing_if = "is_false")]
    pub internal: bool,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The full name (`<project>_<key>` unless given or external).
    pub name: String,
}

/// A top-level named volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// The volume driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Whether the volume exists outside the project.
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The full name (`<project>_<key>` unless given or external).
    pub name: String,
}

/// A top-level secret or config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileObject {
    /// Inline content (configs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The environment variable holding the content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Whether it exists outside the project (e.g. `fizz secret create`).
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    /// The file holding the content, absolute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The full name (`<project>_<key>` unless given or external).
    pub name: String,
}

impl Dependency {
    /// The default of a short-form entry.
    pub fn started() -> Self {
        Self {
            condition: Condition::ServiceStarted,
            required: true,
            restart: false,
        }
    }
}
