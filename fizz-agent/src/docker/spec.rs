//! `ContainerSpec`: everything Fizz asks of Docker for one container, in
//! Fizz's own terms, and its translation to the engine's create body.

use std::{collections::BTreeMap, time::Duration};

use bollard::models::{
    ContainerCreateBody, DeviceMapping, HealthConfig, HostConfig, MountType, ResourcesUlimits,
    RestartPolicyNameEnum,
};
use serde::{Deserialize, Serialize};

/// A container to create. Networking is always Fizz's: the container gets no
/// Docker network (`network_mode: none`) and Fizz plumbs its `eth0`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Vec<Mount>,
    pub tmpfs: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    /// `host:container[:permissions]`.
    pub devices: Vec<String>,
    pub ulimits: Vec<Ulimit>,
    pub init: Option<bool>,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<Duration>,
    pub restart: RestartPolicy,
    /// CPUs, in billionths.
    pub nano_cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub healthcheck: Option<Healthcheck>,
    /// Name servers written into the container's resolv.conf.
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub read_only: bool,
}

/// A mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Host path (bind) or volume name (volume).
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Volume,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Docker's restart policy; Fizz's agent also restarts what dies, but the
/// engine does it faster for a crash loop on one host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    OnFailure,
    UnlessStopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

fn nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_nanos() as i64)
}

impl ContainerSpec {
    /// The engine's create body.
    pub fn to_bollard(&self) -> ContainerCreateBody {
        let mounts = self
            .mounts
            .iter()
            .map(|m| bollard::models::Mount {
                typ: Some(match m.kind {
                    MountKind::Bind => MountType::BIND,
                    MountKind::Volume => MountType::VOLUME,
                }),
                source: Some(m.source.clone()),
                target: Some(m.target.clone()),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        let devices = self
            .devices
            .iter()
            .map(|d| {
                let mut parts = d.splitn(3, ':');
                let host = parts.next().unwrap_or_default().to_string();
                let inside = parts.next().map_or_else(|| host.clone(), str::to_string);
                DeviceMapping {
                    path_on_host: Some(host),
                    path_in_container: Some(inside),
                    cgroup_permissions: Some(parts.next().unwrap_or("rwm").to_string()),
                }
            })
            .collect::<Vec<_>>();
        let host_config = HostConfig {
            network_mode: Some("none".to_string()),
            mounts: (!mounts.is_empty()).then_some(mounts),
            tmpfs: (!self.tmpfs.is_empty()).then(|| self.tmpfs.clone().into_iter().collect()),
            cap_add: (!self.cap_add.is_empty()).then(|| self.cap_add.clone()),
            cap_drop: (!self.cap_drop.is_empty()).then(|| self.cap_drop.clone()),
            privileged: Some(self.privileged),
            devices: (!devices.is_empty()).then_some(devices),
            ulimits: (!self.ulimits.is_empty()).then(|| {
                self.ulimits
                    .iter()
                    .map(|u| ResourcesUlimits { name: Some(u.name.clone()), soft: Some(u.soft), hard: Some(u.hard) })
                    .collect()
            }),
            init: self.init,
            restart_policy: Some(bollard::models::RestartPolicy {
                name: Some(match self.restart {
                    RestartPolicy::No => RestartPolicyNameEnum::NO,
                    RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
                    RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
                    RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
                }),
                maximum_retry_count: None,
            }),
            nano_cpus: self.nano_cpus,
            memory: self.memory_bytes,
            dns: (!self.dns.is_empty()).then(|| self.dns.clone()),
            dns_search: (!self.dns_search.is_empty()).then(|| self.dns_search.clone()),
            extra_hosts: (!self.extra_hosts.is_empty()).then(|| self.extra_hosts.clone()),
            readonly_rootfs: Some(self.read_only),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            labels: Some(self.labels.clone().into_iter().collect()),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: self.command.clone(),
            entrypoint: self.entrypoint.clone(),
            working_dir: self.working_dir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            stop_signal: self.stop_signal.clone(),
            stop_timeout: self.stop_grace_period.map(|d| d.as_secs() as i64),
            healthcheck: self.healthcheck.as_ref().map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: nanos(h.interval),
                timeout: nanos(h.timeout),
                start_period: nanos(h.start_period),
                start_interval: nanos(h.start_interval),
                retries: h.retries.map(i64::from),
            }),
            network_disabled: None,
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_get_no_docker_network_and_their_settings() {
        let spec = ContainerSpec {
            name: "p-web-1".into(),
            image: "busybox".into(),
            env: [("A".to_string(), "1".to_string())].into(),
            devices: vec!["/dev/null:/dev/nil".into()],
            healthcheck: Some(Healthcheck {
                test: vec!["CMD".into(), "true".into()],
                interval: Some(Duration::from_secs(2)),
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: Some(3),
            }),
            restart: RestartPolicy::UnlessStopped,
            ..Default::default()
        };
        let body = spec.to_bollard();
        let hc = body.host_config.as_ref().unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let dev = &hc.devices.as_ref().unwrap()[0];
        assert_eq!(dev.path_in_container.as_deref(), Some("/dev/nil"));
        assert_eq!(dev.cgroup_permissions.as_deref(), Some("rwm"));
        assert_eq!(body.healthcheck.unwrap().interval, Some(2_000_000_000));
        assert_eq!(hc.restart_policy.as_ref().unwrap().name, Some(RestartPolicyNameEnum::UNLESS_STOPPED));
    }
}
