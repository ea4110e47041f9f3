//! The `deploy` section of a service, and the legacy keys (`cpus`, `mem_limit`,
//! `mem_reservation`, `pids_limit`) that fold into it.

use serde_yaml::Value;

use super::error::{ErrorKind, KeyPath, LoadError};
use super::model::{Deploy, DeployMode, ResourceSpec, RestartPolicy, UpdateConfig};
use super::normalize::{one_of, string_map};
use super::value::{
    duration, entries, float, get, int, map, size, string_list, uint, uint_as, untag,
};

pub(crate) fn deploy(v: &Value, path: &KeyPath) -> Result<Deploy, LoadError> {
    let m = map(v, path)?;
    let mut d = Deploy::default();
    for (key, val) in entries(&m) {
        let at = path.key(&key);
        if matches!(untag(val), Value::Null) {
            continue;
        }
        match key.as_str() {
            "mode" => {
                d.mode = match one_of(val, &at, &["replicated", "global"])?.as_str() {
                    "global" => DeployMode::Global,
                    _ => DeployMode::Replicated,
                }
            }
            "replicas" => d.replicas = Some(uint_as(val, &at, "replicas")?),
            "endpoint_mode" => d.endpoint_mode = Some(one_of(val, &at, &["vip", "dnsrr"])?),
            "labels" => d.labels = string_map(val, &at)?,
            "placement" => {
                let p = map(val, &at)?;
                if let Some(c) = get(&p, "constraints") {
                    d.placement.constraints = string_list(c, &at.key("constraints"))?;
                }
                if let Some(n) = get(&p, "max_replicas_per_node") {
                    d.placement.max_replicas_per_node =
                        Some(uint_as(n, &at.key("max_replicas_per_node"), "replicas")?);
                }
            }
            "resources" => {
                let r = map(val, &at)?;
                if let Some(l) = get(&r, "limits") {
                    d.resources.limits = resource_spec(l, &at.key("limits"))?;
                }
                if let Some(l) = get(&r, "reservations") {
                    d.resources.reservations = resource_spec(l, &at.key("reservations"))?;
                }
            }
            "restart_policy" => {
                let r = map(val, &at)?;
                d.restart_policy = Some(RestartPolicy {
                    condition: match get(&r, "condition") {
                        Some(c) => one_of(c, &at.key("condition"), &["none", "on-failure", "any"])?,
                        None => "any".to_string(),
                    },
                    delay: get(&r, "delay")
                        .map(|v| duration(v, &at.key("delay")))
                        .transpose()?,
                    max_attempts: get(&r, "max_attempts")
                        .map(|v| uint(v, &at.key("max_attempts")))
                        .transpose()?,
                    window: get(&r, "window")
                        .map(|v| duration(v, &at.key("window")))
                        .transpose()?,
                });
            }
            "update_config" => d.update_config = Some(update_config(val, &at)?),
            "rollback_config" => d.rollback_config = Some(update_config(val, &at)?),
            _ => {}
        }
    }
    Ok(d)
}

fn resource_spec(v: &Value, path: &KeyPath) -> Result<ResourceSpec, LoadError> {
    let m = map(v, path)?;
    Ok(ResourceSpec {
        cpus: get(&m, "cpus")
            .map(|c| float(c, &path.key("cpus")))
            .transpose()?,
        memory: get(&m, "memory")
            .map(|c| size(c, &path.key("memory")))
            .transpose()?,
        pids: get(&m, "pids")
            .map(|c| int(c, &path.key("pids")))
            .transpose()?,
    })
}

fn update_config(v: &Value, path: &KeyPath) -> Result<UpdateConfig, LoadError> {
    let m = map(v, path)?;
    Ok(UpdateConfig {
        delay: get(&m, "delay")
            .map(|v| duration(v, &path.key("delay")))
            .transpose()?,
        failure_action: get(&m, "failure_action")
            .map(|v| {
                one_of(
                    v,
                    &path.key("failure_action"),
                    &["continue", "rollback", "pause"],
                )
            })
            .transpose()?,
        max_failure_ratio: get(&m, "max_failure_ratio")
            .map(|v| float(v, &path.key("max_failure_ratio")))
            .transpose()?,
        monitor: get(&m, "monitor")
            .map(|v| duration(v, &path.key("monitor")))
            .transpose()?,
        order: get(&m, "order")
            .map(|v| one_of(v, &path.key("order"), &["stop-first", "start-first"]))
            .transpose()?,
        parallelism: get(&m, "parallelism")
            .map(|v| uint(v, &path.key("parallelism")))
            .transpose()?,
    })
}

/// Folds `cpus`, `mem_limit`, `mem_reservation` and `pids_limit` into `deploy.resources`;
/// a different value already there is a conflict.
pub(crate) fn fold_legacy(
    d: &mut Deploy,
    legacy: &[(&'static str, KeyPath, &Value)],
) -> Result<(), LoadError> {
    fn set<T: PartialEq>(
        slot: &mut Option<T>,
        v: T,
        at: &KeyPath,
        other: &'static str,
    ) -> Result<(), LoadError> {
        match slot {
            Some(existing) if *existing != v => {
                Err(LoadError::new(at.clone(), ErrorKind::Conflict { other }))
            }
            _ => {
                *slot = Some(v);
                Ok(())
            }
        }
    }
    for (key, at, val) in legacy {
        if matches!(untag(val), Value::Null) {
            continue;
        }
        match *key {
            "cpus" => set(
                &mut d.resources.limits.cpus,
                float(val, at)?,
                at,
                "deploy.resources.limits.cpus",
            )?,
            "mem_limit" => set(
                &mut d.resources.limits.memory,
                size(val, at)?,
                at,
                "deploy.resources.limits.memory",
            )?,
            "mem_reservation" => set(
                &mut d.resources.reservations.memory,
                size(val, at)?,
                at,
                "deploy.resources.reservations.memory",
            )?,
            _ => set(
                &mut d.resources.limits.pids,
                int(val, at)?,
                at,
                "deploy.resources.limits.pids",
            )?,
        }
    }
    Ok(())
}
