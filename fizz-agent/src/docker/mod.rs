//! The Docker engine, through bollard: the only module that uses it.
//!
//! Other modules describe containers with Fizz's own `ContainerSpec` and see
//! them as `ContainerInfo`; this module turns those into Docker API calls.
//! Containers Fizz owns carry the label `fizz.node=<node>`; nothing here
//! touches a container without it.

mod spec;

use std::{collections::BTreeMap, time::Duration};

use bollard::{
    models::{ContainerStateStatusEnum, EventMessage, HealthStatusEnum},
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
        ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    },
};
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};

pub use self::spec::{ContainerSpec, Healthcheck, Mount, MountKind, RestartPolicy, Ulimit};

/// Label keys Fizz puts on its containers.
pub mod labels {
    /// The node (agent) that owns the container.
    pub const NODE: &str = "fizz.node";
    /// The Compose project.
    pub const PROJECT: &str = "fizz.project";
    /// The Compose service.
    pub const SERVICE: &str = "fizz.service";
    /// The replica number, from 1.
    pub const REPLICA: &str = "fizz.replica";
    /// The container's address in the cluster range.
    pub const ADDR: &str = "fizz.addr";
    /// A hash of the service definition the container was made from.
    pub const CONFIG_HASH: &str = "fizz.config-hash";
}

/// Errors talking to the Docker engine, naming the container or image.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine cannot be reached.
    #[error("cannot reach the Docker engine: {0}")]
    Connect(#[source] bollard::errors::Error),
    /// An image is missing and cannot be pulled.
    #[error("image {image} is not on this host and cannot be pulled: {source}")]
    Image { image: String, #[source] source: bollard::errors::Error },
    /// An API call about one container failed.
    #[error("container {name}: {what}: {source}")]
    Container { name: String, what: &'static str, #[source] source: bollard::errors::Error },
    /// Listing or watching containers failed.
    #[error("{what}: {source}")]
    Engine { what: &'static str, #[source] source: bollard::errors::Error },
}

/// The run state of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Created,
    Running,
    Restarting,
    Exited,
    Paused,
    Dead,
    Unknown,
}

/// Docker's health verdict, when the container has a healthcheck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// What Fizz knows of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: RunState,
    pub health: Option<Health>,
    /// The init process, while running.
    pub pid: Option<u32>,
    pub exit_code: Option<i64>,
}

/// Something that happened to a container Fizz owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// Docker's action: `start`, `die`, `health_status: healthy`, `destroy`, …
    pub action: String,
}

/// A connection to the engine.
#[derive(Clone)]
pub struct Docker {
    api: bollard::Docker,
}

fn run_state(s: Option<ContainerStateStatusEnum>) -> RunState {
    match s {
        Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
        Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) => RunState::Exited,
        Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
        Some(ContainerStateStatusEnum::DEAD) => RunState::Dead,
        _ => RunState::Unknown,
    }
}

fn health(s: Option<HealthStatusEnum>) -> Option<Health> {
    match s {
        Some(HealthStatusEnum::STARTING) => Some(Health::Starting),
        Some(HealthStatusEnum::HEALTHY) => Some(Health::Healthy),
        Some(HealthStatusEnum::UNHEALTHY) => Some(Health::Unhealthy),
        _ => None,
    }
}

impl Docker {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket)
    /// and negotiates the API version down to what it speaks.
    pub async fn connect() -> Result<Docker, DockerError> {
        let api = bollard::Docker::connect_with_local_defaults().map_err(DockerError::Connect)?;
        let api = api.negotiate_version().await.map_err(DockerError::Connect)?;
        api.ping().await.map_err(DockerError::Connect)?;
        Ok(Docker { api })
    }

    /// Whether the engine answers.
    pub async fn ping(&self) -> bool {
        self.api.ping().await.is_ok()
    }

    /// Every container (running or not) labelled as owned by `node`.
    pub async fn list_owned(&self, node: &str) -> Result<Vec<ContainerInfo>, DockerError> {
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_string(), vec![format!("{}={node}", labels::NODE)]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self
            .api
            .list_containers(Some(opts))
            .await
            .map_err(|source| DockerError::Engine { what: "listing containers", source })?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            // The summary has no pid or health detail: inspect each one.
            match self.inspect(&id).await {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One container, or `None` when it no longer exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        let c = match self.api.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
            Err(source) => return Err(DockerError::Container { name: id.to_string(), what: "inspecting", source }),
        };
        let state = c.state.unwrap_or_default();
        Ok(Some(ContainerInfo {
            id: c.id.unwrap_or_else(|| id.to_string()),
            name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
            labels: c.config.and_then(|cfg| cfg.labels).unwrap_or_default().into_iter().collect(),
            state: run_state(state.status),
            health: health(state.health.and_then(|h| h.status)),
            pid: state.pid.filter(|&p| p > 0).map(|p| p as u32),
            exit_code: state.exit_code,
        }))
    }

    /// Makes sure `image` is on the host, pulling it when missing.
    pub async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        if self.api.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let opts = CreateImageOptionsBuilder::default().from_image(image).build();
        let mut pull = self.api.create_image(Some(opts), None, None);
        while let Some(step) = pull.next().await {
            step.map_err(|source| DockerError::Image { image: image.to_string(), source })?;
        }
        Ok(())
    }

    /// Creates (not starts) a container; returns its id.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let created = self
            .api
            .create_container(Some(opts), spec.to_bollard())
            .await
            .map_err(|source| DockerError::Container { name: spec.name.clone(), what: "creating", source })?;
        Ok(created.id)
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.api
            .start_container(id, None)
            .await
            .map_err(|source| DockerError::Container { name: id.to_string(), what: "starting", source })
    }

    /// Stops (with the container's own grace period unless `timeout` is
    /// given) and removes a container, with its anonymous volumes.
    pub async fn remove(&self, id: &str, timeout: Option<Duration>) -> Result<(), DockerError> {
        let mut stop = StopContainerOptionsBuilder::default();
        if let Some(t) = timeout {
            stop = stop.t(t.as_secs() as i32);
        }
        match self.api.stop_container(id, Some(stop.build())).await {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304 | 404, .. }) => {}
            Err(source) => return Err(DockerError::Container { name: id.to_string(), what: "stopping", source }),
        }
        let rm = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.api.remove_container(id, Some(rm)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(source) => Err(DockerError::Container { name: id.to_string(), what: "removing", source }),
        }
    }

    /// Renames a container (a replica's name is freed for its replacement).
    pub async fn rename(&self, id: &str, to: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::RenameContainerOptions { name: to.to_string() };
        self.api
            .rename_container(id, opts)
            .await
            .map_err(|source| DockerError::Container { name: id.to_string(), what: "renaming", source })
    }

    /// Removes a named volume; a missing one is not an error.
    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        match self.api.remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(source) => Err(DockerError::Container { name: format!("volume {name}"), what: "removing", source }),
        }
    }

    /// Events of containers owned by `node`, as they happen.
    pub fn events(&self, node: &str) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static {
        let mut filters = std::collections::HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert("label".to_string(), vec![format!("{}={node}", labels::NODE)]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        self.api
            .events(Some(opts))
            .map_err(|source| DockerError::Engine { what: "watching events", source })
            .filter_map(|ev: Result<EventMessage, DockerError>| async move {
                match ev {
                    Ok(m) => {
                        let id = m.actor.and_then(|a| a.id)?;
                        Some(Ok(ContainerEvent { id, action: m.action.unwrap_or_default() }))
                    }
                    Err(e) => Some(Err(e)),
                }
            })
    }

    /// A container's output, stdout and stderr interleaved, as lines.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Stream<Item = Result<String, DockerError>> + Send + 'static {
        let mut b = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(follow);
        if let Some(n) = tail {
            b = b.tail(&n.to_string());
        }
        let name = id.to_string();
        self.api
            .logs(id, Some(b.build()))
            .map_ok(|chunk| String::from_utf8_lossy(&chunk.into_bytes()).into_owned())
            .map_err(move |source| DockerError::Container { name: name.clone(), what: "reading logs", source })
    }

    /// Runs a command in a running container and returns its exit code and
    /// combined output.
    pub async fn exec(&self, id: &str, cmd: &[String]) -> Result<(i64, String), DockerError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let err = |what| {
            let name = id.to_string();
            move |source| DockerError::Container { name, what, source }
        };
        let created = self
            .api
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(err("creating an exec"))?;
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.api.start_exec(&created.id, None).await.map_err(err("starting an exec"))?
        {
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(err("reading exec output"))?;
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        let inspect = self.api.inspect_exec(&created.id).await.map_err(err("inspecting an exec"))?;
        Ok((inspect.exit_code.unwrap_or(-1), out))
    }
}
