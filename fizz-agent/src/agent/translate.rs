//! From a loaded Compose project to what the agent runs (`ProjectPlan`):
//! pure. Everything Compose says that Fizz cannot honour yet is reported as
//! a warning naming the service and key, never dropped silently.

use std::collections::BTreeMap;

use super::{
    placement::Constraint,
    plan::{Condition, Dependency, FailureAction, PlacementSpec, ProjectPlan, ServicePlan, ServicePort, UpdateOrder, UpdatePolicy},
};
use crate::{
    compose::model::{self as cm, MountType, Protocol},
    docker::{ContainerSpec, Healthcheck, Mount, MountKind, RestartPolicy, Ulimit},
    net::service::Proto,
};

/// Errors that make a project impossible to run (nothing is deployed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// A service has no image (Fizz does not build images).
    #[error("services.{service}: no `image` (Fizz runs images; it does not build them)")]
    NoImage { service: String },
    /// A restart policy Docker does not know.
    #[error("services.{service}.restart: unknown policy `{value}` (no, always, on-failure, unless-stopped)")]
    Restart { service: String, value: String },
    /// A placement constraint Fizz cannot read.
    #[error("services.{service}.deploy.placement.constraints[{index}]: {message}")]
    Constraint { service: String, index: usize, message: String },
}

fn restart_policy(service: &str, s: &cm::Service) -> Result<RestartPolicy, TranslateError> {
    if let Some(p) = &s.deploy.restart_policy {
        return Ok(match p.condition.as_str() {
            "none" => RestartPolicy::No,
            "on-failure" => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        });
    }
    match s.restart.as_deref() {
        None | Some("no") => Ok(RestartPolicy::No),
        Some("always") => Ok(RestartPolicy::Always),
        Some(p) if p.starts_with("on-failure") => Ok(RestartPolicy::OnFailure),
        Some("unless-stopped") => Ok(RestartPolicy::UnlessStopped),
        Some(other) => Err(TranslateError::Restart { service: service.to_string(), value: other.to_string() }),
    }
}

/// `deploy.update_config` / `rollback_config` (validated by the loader), over Swarm's defaults.
fn update_policy(c: Option<&cm::UpdateConfig>) -> UpdatePolicy {
    let mut p = UpdatePolicy::default();
    let Some(c) = c else { return p };
    if let Some(n) = c.parallelism {
        p.parallelism = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(d) = c.delay {
        p.delay_ms = d.as_millis() as u64;
    }
    if let Some(d) = c.monitor {
        p.monitor_ms = d.as_millis() as u64;
    }
    if c.order.as_deref() == Some("start-first") {
        p.order = UpdateOrder::StartFirst;
    }
    p.failure_action = match c.failure_action.as_deref() {
        Some("continue") => FailureAction::Continue,
        Some("rollback") => FailureAction::Rollback,
        _ => FailureAction::Pause,
    };
    if let Some(r) = c.max_failure_ratio {
        p.max_failure_permille = (r.clamp(0.0, 1.0) * 1000.0).round() as u32;
    }
    p
}

fn healthcheck(h: &Option<cm::Healthcheck>) -> Option<Healthcheck> {
    let h = h.as_ref()?;
    if h.disable || h.test.first().map(String::as_str) == Some("NONE") {
        return Some(Healthcheck {
            test: vec!["NONE".into()],
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        });
    }
    if h.test.is_empty() {
        return None;
    }
    Some(Healthcheck {
        test: h.test.clone(),
        interval: h.interval,
        timeout: h.timeout,
        start_period: h.start_period,
        start_interval: h.start_interval,
        retries: h.retries.map(|r| r.min(u64::from(u32::MAX)) as u32),
    })
}

/// The plan for a project, and warnings for what is not honoured.
pub fn project_plan(p: &cm::Project) -> Result<(ProjectPlan, Vec<String>), TranslateError> {
    let mut warnings = Vec::new();
    let mut warn = |service: &str, key: &str, what: &str| warnings.push(format!("services.{service}.{key}: {what}"));
    let mut services = BTreeMap::new();
    for (name, s) in &p.services {
        // Compose names the image of a build-only service `<project>-<service>`.
        if s.image.is_empty() || (s.build.is_some() && s.image == format!("{}-{name}", p.name)) {
            return Err(TranslateError::NoImage { service: name.clone() });
        }
        if s.build.is_some() {
            warn(name, "build", "ignored: Fizz runs the `image`, it does not build it");
        }
        let mut mounts = Vec::new();
        let mut tmpfs: BTreeMap<String, String> = s.tmpfs.iter().map(|t| (t.clone(), String::new())).collect();
        for m in &s.volumes {
            match m.kind {
                MountType::Bind => mounts.push(Mount {
                    kind: MountKind::Bind,
                    source: m.source.clone().unwrap_or_default(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                }),
                MountType::Volume => {
                    let source = match &m.source {
                        Some(key) => p.volumes.get(key).map_or_else(|| format!("{}_{key}", p.name), |v| v.name.clone()),
                        None => String::new(),
                    };
                    mounts.push(Mount { kind: MountKind::Volume, source, target: m.target.clone(), read_only: m.read_only });
                }
                MountType::Tmpfs => {
                    let opts = m.tmpfs.as_ref().and_then(|t| t.size).map(|s| format!("size={s}")).unwrap_or_default();
                    tmpfs.insert(m.target.clone(), opts);
                }
            }
        }
        let limits = &s.deploy.resources.limits;
        if !s.dns.is_empty() {
            warn(name, "dns", "ignored: containers use the node's Fizz DNS, which forwards other names upstream");
        }
        if !s.ports.iter().all(|p| p.published.is_none()) {
            warn(name, "ports", "published host ports are not supported by Fizz yet; the service is reachable at its VIP");
        }
        if !s.secrets.is_empty() {
            warn(name, "secrets", "not supported by Fizz yet");
        }
        if !s.configs.is_empty() {
            warn(name, "configs", "not supported by Fizz yet");
        }
        for (key, set) in [
            ("sysctls", !s.sysctls.is_empty()),
            ("security_opt", !s.security_opt.is_empty()),
            ("pid", s.pid.is_some()),
            ("ipc", s.ipc.is_some()),
            ("shm_size", s.shm_size.is_some()),
            ("logging", s.logging.is_some()),
            ("group_add", !s.group_add.is_empty()),
        ] {
            if set {
                warn(name, key, "not supported by Fizz yet, ignored");
            }
        }
        for port in &s.ports {
            if port.protocol == Protocol::Sctp {
                warn(name, "ports", "sctp is not load-balanced by Fizz; ignored");
            }
        }
        let template = ContainerSpec {
            image: s.image.clone(),
            labels: s.labels.clone(),
            env: s.environment.clone(),
            command: s.command.clone(),
            entrypoint: s.entrypoint.clone(),
            working_dir: s.working_dir.clone(),
            user: s.user.clone(),
            hostname: s.hostname.clone(),
            mounts,
            tmpfs,
            cap_add: s.cap_add.clone(),
            cap_drop: s.cap_drop.clone(),
            privileged: s.privileged,
            devices: s.devices.clone(),
            ulimits: s.ulimits.iter().map(|(n, u)| Ulimit { name: n.clone(), soft: u.soft, hard: u.hard }).collect(),
            init: s.init,
            stop_signal: s.stop_signal.clone(),
            stop_grace_period: s.stop_grace_period,
            restart: restart_policy(name, s)?,
            nano_cpus: limits.cpus.map(|c| (c * 1e9) as i64),
            memory_bytes: limits.memory.map(|m| m as i64),
            healthcheck: healthcheck(&s.healthcheck),
            dns: Vec::new(),
            dns_search: Vec::new(),
            extra_hosts: s.extra_hosts.iter().map(|(h, ip)| format!("{h}:{ip}")).collect(),
            read_only: s.read_only,
            name: String::new(),
        };
        // The VIP exposes the container ports the service declares (`ports`
        // targets and `expose`); a service that declares none takes any port.
        let mut ports: Vec<ServicePort> = Vec::new();
        for port in &s.ports {
            let proto = match port.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                Protocol::Sctp => continue,
            };
            ports.push(ServicePort { port: port.target, target: port.target, proto });
        }
        for e in &s.expose {
            let (num, proto) = match e.split_once('/') {
                Some((n, "udp")) => (n, Proto::Udp),
                Some((n, _)) => (n, Proto::Tcp),
                None => (e.as_str(), Proto::Tcp),
            };
            let range = num.split_once('-').map_or((num, num), |(a, b)| (a, b));
            if let (Ok(a), Ok(b)) = (range.0.parse::<u16>(), range.1.parse::<u16>()) {
                for port in a..=b.max(a) {
                    ports.push(ServicePort { port, target: port, proto });
                }
            }
        }
        ports.sort();
        ports.dedup();
        let replicas = match s.deploy.mode {
            cm::DeployMode::Global => 1,
            cm::DeployMode::Replicated => s.deploy.replicas.unwrap_or(1),
        };
        let has_healthcheck = template.healthcheck.as_ref().is_some_and(|h| h.test.first().map(String::as_str) != Some("NONE"));
        for (index, c) in s.deploy.placement.constraints.iter().enumerate() {
            Constraint::parse(c).map_err(|e| TranslateError::Constraint { service: name.clone(), index, message: e.to_string() })?;
        }
        let reservations = &s.deploy.resources.reservations;
        let placement = PlacementSpec {
            global: s.deploy.mode == cm::DeployMode::Global,
            constraints: s.deploy.placement.constraints.clone(),
            max_per_node: s.deploy.placement.max_replicas_per_node,
            millicpus: reservations.cpus.map_or(0, |c| (c * 1000.0).round().max(0.0) as u64),
            memory: reservations.memory.unwrap_or(0),
        };
        services.insert(
            name.clone(),
            ServicePlan {
                replicas,
                template,
                depends_on: s
                    .depends_on
                    .iter()
                    .map(|(dep, d)| Dependency {
                        service: dep.clone(),
                        condition: match d.condition {
                            cm::Condition::ServiceStarted => Condition::ServiceStarted,
                            cm::Condition::ServiceHealthy => Condition::ServiceHealthy,
                            cm::Condition::ServiceCompletedSuccessfully => Condition::ServiceCompletedSuccessfully,
                        },
                    })
                    .collect(),
                ports,
                networks: s.networks.iter().map(|(n, sn)| (n.clone(), sn.aliases.clone())).collect(),
                vip: None,
                has_healthcheck,
                placement,
                update: update_policy(s.deploy.update_config.as_ref()),
                rollback: update_policy(s.deploy.rollback_config.as_ref()),
            },
        );
    }
    let volumes = p.volumes.values().filter(|v| !v.external).map(|v| v.name.clone()).collect();
    Ok((ProjectPlan { name: p.name.clone(), services, volumes }, warnings))
}
