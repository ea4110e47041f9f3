//! The keys Compose defines, and which of them Fizz honours: a schema walked over each parsed
//! file to warn about unknown keys (a typo must not vanish silently) and about keys Fizz does
//! not implement yet. Types are checked later, when the model is built.

use serde_yaml::Value;

use super::error::{KeyPath, Warning, WarningKind};
use super::value::{scalar_key, untag};

/// What Fizz does with a key.
#[derive(Debug, Clone, Copy)]
enum Support {
    /// Honoured.
    Yes,
    /// Parsed, ignored with a warning; the hint says what Fizz does instead.
    No(Option<&'static str>),
    /// No longer part of Compose.
    Obsolete,
}

/// The shape of a value, as far as its keys are concerned.
#[derive(Debug)]
enum Shape {
    /// A mapping with fixed keys.
    Map(&'static [Field]),
    /// A mapping whose keys are names the user chooses.
    Dict(&'static Shape),
    /// A sequence.
    List(&'static Shape),
    /// Anything; its keys are not checked.
    Leaf,
}

type Field = (&'static str, Support, &'static Shape);

use Shape::{Dict, Leaf, List, Map};
use Support::{No, Obsolete, Yes};

const NO: Support = No(None);
const ADDRESSES: Support = No(Some("Fizz assigns container addresses itself"));

static TOP: Shape = Map(&[
    ("version", Obsolete, &Leaf),
    ("name", Yes, &Leaf),
    // Services are checked one by one (`check_service`), as they are loaded.
    ("services", Yes, &Leaf),
    ("networks", Yes, &Dict(&NETWORK)),
    ("volumes", Yes, &Dict(&VOLUME)),
    ("secrets", Yes, &Dict(&SECRET)),
    ("configs", Yes, &Dict(&CONFIG)),
    ("include", NO, &Leaf),
    ("models", NO, &Leaf),
]);

static SERVICE: Shape = Map(&[
    (
        "build",
        No(Some(
            "Fizz does not build images; the image must exist on every node",
        )),
        &Leaf,
    ),
    ("cap_add", Yes, &Leaf),
    ("cap_drop", Yes, &Leaf),
    ("command", Yes, &Leaf),
    ("configs", Yes, &List(&FILE_REF)),
    ("cpus", Yes, &Leaf),
    ("depends_on", Yes, &Dict(&DEPENDENCY)),
    ("deploy", Yes, &DEPLOY),
    ("devices", Yes, &Leaf),
    ("dns", Yes, &Leaf),
    ("dns_opt", Yes, &Leaf),
    ("dns_search", Yes, &Leaf),
    ("domainname", Yes, &Leaf),
    ("entrypoint", Yes, &Leaf),
    ("env_file", Yes, &List(&ENV_FILE)),
    ("environment", Yes, &Leaf),
    ("expose", Yes, &Leaf),
    ("extends", Yes, &EXTENDS),
    ("extra_hosts", Yes, &Leaf),
    ("group_add", Yes, &Leaf),
    ("healthcheck", Yes, &HEALTHCHECK),
    ("hostname", Yes, &Leaf),
    ("image", Yes, &Leaf),
    ("init", Yes, &Leaf),
    ("ipc", Yes, &Leaf),
    ("labels", Yes, &Leaf),
    ("logging", Yes, &LOGGING),
    ("mem_limit", Yes, &Leaf),
    ("mem_reservation", Yes, &Leaf),
    ("networks", Yes, &Dict(&SERVICE_NETWORK)),
    ("pid", Yes, &Leaf),
    ("pids_limit", Yes, &Leaf),
    ("ports", Yes, &List(&PORT)),
    ("privileged", Yes, &Leaf),
    ("profiles", Yes, &Leaf),
    ("read_only", Yes, &Leaf),
    ("restart", Yes, &Leaf),
    ("scale", Yes, &Leaf),
    ("secrets", Yes, &List(&FILE_REF)),
    ("security_opt", Yes, &Leaf),
    ("shm_size", Yes, &Leaf),
    ("stdin_open", Yes, &Leaf),
    ("stop_grace_period", Yes, &Leaf),
    ("stop_signal", Yes, &Leaf),
    ("sysctls", Yes, &Leaf),
    ("tmpfs", Yes, &Leaf),
    ("tty", Yes, &Leaf),
    ("ulimits", Yes, &Dict(&ULIMIT)),
    ("user", Yes, &Leaf),
    ("volumes", Yes, &List(&MOUNT)),
    ("working_dir", Yes, &Leaf),
    // Defined by Compose, not implemented by Fizz.
    ("annotations", NO, &Leaf),
    ("attach", NO, &Leaf),
    ("blkio_config", NO, &Leaf),
    ("cgroup", NO, &Leaf),
    ("cgroup_parent", NO, &Leaf),
    (
        "container_name",
        No(Some("Fizz names containers itself")),
        &Leaf,
    ),
    ("cpu_count", NO, &Leaf),
    ("cpu_percent", NO, &Leaf),
    ("cpu_period", NO, &Leaf),
    ("cpu_quota", NO, &Leaf),
    ("cpu_rt_period", NO, &Leaf),
    ("cpu_rt_runtime", NO, &Leaf),
    ("cpu_shares", NO, &Leaf),
    ("cpuset", NO, &Leaf),
    ("credential_spec", NO, &Leaf),
    ("develop", NO, &Leaf),
    ("device_cgroup_rules", NO, &Leaf),
    ("external_links", NO, &Leaf),
    ("gpus", NO, &Leaf),
    ("isolation", NO, &Leaf),
    ("label_file", NO, &Leaf),
    (
        "links",
        No(Some("services reach each other by name through Fizz DNS")),
        &Leaf,
    ),
    ("mac_address", ADDRESSES, &Leaf),
    ("mem_swappiness", NO, &Leaf),
    ("memswap_limit", NO, &Leaf),
    ("models", NO, &Leaf),
    (
        "network_mode",
        No(Some(
            "Fizz connects every container to its Compose networks itself",
        )),
        &Leaf,
    ),
    ("oom_kill_disable", NO, &Leaf),
    ("oom_score_adj", NO, &Leaf),
    ("platform", NO, &Leaf),
    ("post_start", NO, &Leaf),
    ("pre_stop", NO, &Leaf),
    ("provider", NO, &Leaf),
    ("pull_policy", NO, &Leaf),
    ("runtime", NO, &Leaf),
    ("storage_opt", NO, &Leaf),
    ("use_api_socket", NO, &Leaf),
    ("userns_mode", NO, &Leaf),
    ("uts", NO, &Leaf),
    ("volumes_from", NO, &Leaf),
]);

static DEPENDENCY: Shape = Map(&[
    ("condition", Yes, &Leaf),
    ("restart", Yes, &Leaf),
    ("required", Yes, &Leaf),
]);

static EXTENDS: Shape = Map(&[("service", Yes, &Leaf), ("file", Yes, &Leaf)]);

static ENV_FILE: Shape = Map(&[
    ("path", Yes, &Leaf),
    ("required", Yes, &Leaf),
    ("format", NO, &Leaf),
]);

static HEALTHCHECK: Shape = Map(&[
    ("test", Yes, &Leaf),
    ("interval", Yes, &Leaf),
    ("timeout", Yes, &Leaf),
    ("retries", Yes, &Leaf),
    ("start_period", Yes, &Leaf),
    ("start_interval", Yes, &Leaf),
    ("disable", Yes, &Leaf),
]);

static LOGGING: Shape = Map(&[("driver", Yes, &Leaf), ("options", Yes, &Leaf)]);

static SERVICE_NETWORK: Shape = Map(&[
    ("aliases", Yes, &Leaf),
    ("ipv4_address", ADDRESSES, &Leaf),
    ("ipv6_address", ADDRESSES, &Leaf),
    ("link_local_ips", ADDRESSES, &Leaf),
    ("mac_address", ADDRESSES, &Leaf),
    ("priority", Yes, &Leaf),
    ("gw_priority", NO, &Leaf),
    ("driver_opts", NO, &Leaf),
    ("interface_name", NO, &Leaf),
]);

static PORT: Shape = Map(&[
    ("target", Yes, &Leaf),
    ("published", Yes, &Leaf),
    ("host_ip", Yes, &Leaf),
    ("protocol", Yes, &Leaf),
    ("mode", Yes, &Leaf),
    ("name", Yes, &Leaf),
    ("app_protocol", Yes, &Leaf),
]);

static MOUNT: Shape = Map(&[
    ("type", Yes, &Leaf),
    ("source", Yes, &Leaf),
    ("target", Yes, &Leaf),
    ("read_only", Yes, &Leaf),
    ("consistency", Yes, &Leaf),
    (
        "bind",
        Yes,
        &Map(&[
            ("propagation", Yes, &Leaf),
            ("create_host_path", Yes, &Leaf),
            ("selinux", Yes, &Leaf),
            ("recursive", NO, &Leaf),
        ]),
    ),
    (
        "volume",
        Yes,
        &Map(&[
            ("nocopy", Yes, &Leaf),
            ("subpath", Yes, &Leaf),
            ("labels", NO, &Leaf),
        ]),
    ),
    (
        "tmpfs",
        Yes,
        &Map(&[("size", Yes, &Leaf), ("mode", Yes, &Leaf)]),
    ),
    ("image", NO, &Leaf),
]);

static FILE_REF: Shape = Map(&[
    ("source", Yes, &Leaf),
    ("target", Yes, &Leaf),
    ("uid", Yes, &Leaf),
    ("gid", Yes, &Leaf),
    ("mode", Yes, &Leaf),
]);

static ULIMIT: Shape = Map(&[("soft", Yes, &Leaf), ("hard", Yes, &Leaf)]);

static UPDATE: Shape = Map(&[
    ("parallelism", Yes, &Leaf),
    ("delay", Yes, &Leaf),
    ("failure_action", Yes, &Leaf),
    ("monitor", Yes, &Leaf),
    ("max_failure_ratio", Yes, &Leaf),
    ("order", Yes, &Leaf),
]);

static RESOURCE: Shape = Map(&[
    ("cpus", Yes, &Leaf),
    ("memory", Yes, &Leaf),
    ("pids", Yes, &Leaf),
    ("devices", NO, &Leaf),
    ("generic_resources", NO, &Leaf),
]);

static DEPLOY: Shape = Map(&[
    ("mode", Yes, &Leaf),
    ("replicas", Yes, &Leaf),
    ("endpoint_mode", Yes, &Leaf),
    ("labels", Yes, &Leaf),
    (
        "placement",
        Yes,
        &Map(&[
            ("constraints", Yes, &Leaf),
            ("max_replicas_per_node", Yes, &Leaf),
            ("preferences", NO, &Leaf),
        ]),
    ),
    (
        "resources",
        Yes,
        &Map(&[("limits", Yes, &RESOURCE), ("reservations", Yes, &RESOURCE)]),
    ),
    (
        "restart_policy",
        Yes,
        &Map(&[
            ("condition", Yes, &Leaf),
            ("delay", Yes, &Leaf),
            ("max_attempts", Yes, &Leaf),
            ("window", Yes, &Leaf),
        ]),
    ),
    ("update_config", Yes, &UPDATE),
    ("rollback_config", Yes, &UPDATE),
]);

static NETWORK: Shape = Map(&[
    ("name", Yes, &Leaf),
    ("driver", Yes, &Leaf),
    ("driver_opts", Yes, &Leaf),
    ("external", Yes, &Leaf),
    ("internal", Yes, &Leaf),
    ("attachable", Yes, &Leaf),
    ("labels", Yes, &Leaf),
    ("ipam", ADDRESSES, &Leaf),
    ("enable_ipv6", NO, &Leaf),
    ("enable_ipv4", NO, &Leaf),
]);

static VOLUME: Shape = Map(&[
    ("name", Yes, &Leaf),
    ("driver", Yes, &Leaf),
    ("driver_opts", Yes, &Leaf),
    ("external", Yes, &Leaf),
    ("labels", Yes, &Leaf),
]);

static SECRET: Shape = Map(&[
    ("name", Yes, &Leaf),
    ("file", Yes, &Leaf),
    ("environment", Yes, &Leaf),
    ("external", Yes, &Leaf),
    ("labels", Yes, &Leaf),
    ("driver", NO, &Leaf),
    ("driver_opts", NO, &Leaf),
    ("template_driver", NO, &Leaf),
]);

static CONFIG: Shape = Map(&[
    ("name", Yes, &Leaf),
    ("file", Yes, &Leaf),
    ("content", Yes, &Leaf),
    ("environment", Yes, &Leaf),
    ("external", Yes, &Leaf),
    ("labels", Yes, &Leaf),
    ("template_driver", NO, &Leaf),
]);

fn walk(value: &Value, shape: &Shape, path: &KeyPath, out: &mut Vec<Warning>) {
    match (shape, untag(value)) {
        (Map(fields), Value::Mapping(m)) => {
            for (k, v) in m {
                let key = scalar_key(k);
                if key.starts_with("x-") {
                    continue;
                }
                let at = path.key(&key);
                match fields.iter().find(|(name, _, _)| *name == key) {
                    Some((_, Yes, sub)) => walk(v, sub, &at, out),
                    Some((_, No(hint), _)) => {
                        out.push(Warning::new(at, WarningKind::Unsupported { hint: *hint }))
                    }
                    Some((_, Obsolete, _)) => out.push(Warning::new(at, WarningKind::Obsolete)),
                    None => out.push(Warning::new(at, WarningKind::UnknownKey)),
                }
            }
        }
        (Dict(sub), Value::Mapping(m)) => {
            for (k, v) in m {
                walk(v, sub, &path.key(&scalar_key(k)), out);
            }
        }
        (List(sub), Value::Sequence(items)) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, sub, &path.index(i), out);
            }
        }
        _ => {}
    }
}

/// Warnings for the unknown and unsupported keys of a Compose file, outside `services`.
pub(crate) fn check_file(root: &Value) -> Vec<Warning> {
    let mut out = Vec::new();
    walk(root, &TOP, &KeyPath::root(), &mut out);
    out
}

/// Warnings for the unknown and unsupported keys of one service, at `path`.
pub(crate) fn check_service(service: &Value, path: &KeyPath) -> Vec<Warning> {
    let mut out = Vec::new();
    walk(service, &SERVICE, path, &mut out);
    out
}
