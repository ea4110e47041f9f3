//! Builds a [`Service`] from its merged long-form YAML: type checks, value checks (ports,
//! durations, sizes, enumerations), defaults, the environment from `env_file`s and
//! `environment`, and the folding of `scale` and the legacy resource keys into `deploy`.
//!
//! Unknown and unsupported keys were warned about per file and are skipped here. References
//! between services and to top-level objects are checked in `validate`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde_yaml::{Mapping, Value};

use super::deploy;
use super::dotenv;
use super::error::{ErrorKind, KeyPath, LoadError, Location, Warning, WarningKind};
use super::model::*;
use super::value::{
    boolean, duration, entries, get, int, invalid, map, opt_string, seq, shell_split, size, string,
    string_list, type_error, uint, uint_as, untag,
};

/// What building the model needs besides the YAML.
pub(crate) struct Ctx<'a> {
    /// The project name.
    pub project: &'a str,
    /// The variables `environment` entries without a value, and env files, are resolved from.
    pub env: &'a BTreeMap<String, String>,
    /// Reads an env file.
    pub read: &'a dyn Fn(&Path) -> std::io::Result<String>,
    /// Warnings found on the way.
    pub warnings: Vec<Warning>,
}

impl Ctx<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}

/// A mapping of strings (null reads as empty); a sequence of `KEY=VALUE` strings is accepted
/// too, for the sections that are not rewritten into long form before merging.
pub(crate) fn string_map(v: &Value, path: &KeyPath) -> Result<BTreeMap<String, String>, LoadError> {
    let mut out = BTreeMap::new();
    if let Value::Sequence(items) = untag(v) {
        for (i, item) in items.iter().enumerate() {
            let text = string(item, &path.index(i))?;
            let (k, val) = text.split_once('=').unwrap_or((&text, ""));
            out.insert(k.to_string(), val.to_string());
        }
        return Ok(out);
    }
    let m = map(v, path)?;
    for (k, val) in entries(&m) {
        let val = match untag(val) {
            Value::Null => String::new(),
            other => string(other, &path.key(&k))?,
        };
        out.insert(k, val);
    }
    Ok(out)
}

pub(crate) fn one_of(v: &Value, path: &KeyPath, allowed: &[&str]) -> Result<String, LoadError> {
    let s = string(v, path)?;
    if allowed.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(invalid(
            path,
            s,
            format!("expected one of {}", allowed.join(", ")),
        ))
    }
}

fn exec_form(v: &Value, path: &KeyPath) -> Result<Option<Vec<String>>, LoadError> {
    match untag(v) {
        Value::Null => Ok(None),
        Value::String(s) => shell_split(s)
            .map(Some)
            .map_err(|reason| invalid(path, s.as_str(), reason)),
        Value::Sequence(_) => string_list(v, path).map(Some),
        other => Err(type_error(path, "a string or a sequence of strings", other)),
    }
}

/// A file mode: an integer, or a string read as octal when it starts with `0`.
fn file_mode(v: &Value, path: &KeyPath) -> Result<u32, LoadError> {
    match untag(v) {
        Value::String(s) if s.starts_with('0') => {
            let digits = s.trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .map_err(|_| invalid(path, s.as_str(), "expected an octal file mode"))
        }
        other => uint_as(other, path, "a file mode"),
    }
}

/// One service.
pub(crate) fn service(name: &str, v: &Value, cx: &mut Ctx<'_>) -> Result<Service, LoadError> {
    let path = KeyPath::of(&["services", name]);
    let m = map(v, &path)?;
    let mut svc = Service::default();
    let mut deploy_value = None;
    let mut scale = None;
    let mut legacy: Vec<(&'static str, KeyPath, &Value)> = Vec::new();
    let mut environment = None;
    let mut env_files = None;
    let mut networks = None;
    for (key, val) in entries(&m) {
        let at = path.key(&key);
        match key.as_str() {
            "image" => svc.image = string(val, &at)?,
            "build" => svc.build = Some(build(val, &at, cx)?),
            "command" => svc.command = exec_form(val, &at)?,
            "entrypoint" => svc.entrypoint = exec_form(val, &at)?,
            "environment" => environment = Some((val, at)),
            "env_file" => env_files = Some((val, at)),
            "ports" => {
                for (i, p) in seq(val, &at)?.iter().enumerate() {
                    svc.ports.push(port(p, &at.index(i), cx)?);
                }
            }
            "expose" => svc.expose = string_list(val, &at)?,
            "volumes" => {
                for (i, mnt) in seq(val, &at)?.iter().enumerate() {
                    svc.volumes.push(mount(mnt, &at.index(i))?);
                }
            }
            "tmpfs" => svc.tmpfs = string_list(val, &at)?,
            "depends_on" => {
                for (dep, opts) in entries(&*map(val, &at)?) {
                    let d = dependency(opts, &at.key(&dep))?;
                    svc.depends_on.insert(dep, d);
                }
            }
            "healthcheck" => svc.healthcheck = Some(healthcheck(val, &at, &mut cx.warnings)?),
            "deploy" => deploy_value = Some((val, at)),
            "scale" => scale = Some((uint(val, &at)?, at)),
            "restart" => svc.restart = Some(restart(val, &at)?),
            "labels" => svc.labels = string_map(val, &at)?,
            "networks" => networks = Some((val, at)),
            "working_dir" => svc.working_dir = opt_string(Some(val), &at)?,
            "user" => svc.user = opt_string(Some(val), &at)?,
            "hostname" => svc.hostname = opt_string(Some(val), &at)?,
            "domainname" => svc.domainname = opt_string(Some(val), &at)?,
            "stop_signal" => svc.stop_signal = opt_string(Some(val), &at)?,
            "pid" => svc.pid = opt_string(Some(val), &at)?,
            "ipc" => svc.ipc = opt_string(Some(val), &at)?,
            "cap_add" => svc.cap_add = string_list(val, &at)?,
            "cap_drop" => svc.cap_drop = string_list(val, &at)?,
            "dns" => svc.dns = string_list(val, &at)?,
            "dns_search" => svc.dns_search = string_list(val, &at)?,
            "dns_opt" => svc.dns_opt = string_list(val, &at)?,
            "security_opt" => svc.security_opt = string_list(val, &at)?,
            "group_add" => svc.group_add = string_list(val, &at)?,
            "profiles" => svc.profiles = string_list(val, &at)?,
            "devices" => {
                for (i, d) in seq(val, &at)?.iter().enumerate() {
                    svc.devices.push(device(d, &at.index(i))?);
                }
            }
            "privileged" => svc.privileged = boolean(val, &at)?,
            "read_only" => svc.read_only = boolean(val, &at)?,
            "tty" => svc.tty = boolean(val, &at)?,
            "stdin_open" => svc.stdin_open = boolean(val, &at)?,
            "init" => svc.init = Some(boolean(val, &at)?),
            "ulimits" => {
                for (name, limit) in entries(&*map(val, &at)?) {
                    let l = ulimit(limit, &at.key(&name))?;
                    svc.ulimits.insert(name, l);
                }
            }
            "shm_size" => svc.shm_size = Some(size(val, &at)?),
            "stop_grace_period" => svc.stop_grace_period = Some(duration(val, &at)?),
            "sysctls" => svc.sysctls = string_map(val, &at)?,
            "extra_hosts" => svc.extra_hosts = string_map(val, &at)?,
            "secrets" => svc.secrets = file_refs(val, &at, "/run/secrets/")?,
            "configs" => svc.configs = file_refs(val, &at, "/")?,
            "logging" => svc.logging = Some(logging(val, &at)?),
            "cpus" => legacy.push(("cpus", at, val)),
            "mem_limit" => legacy.push(("mem_limit", at, val)),
            "mem_reservation" => legacy.push(("mem_reservation", at, val)),
            "pids_limit" => legacy.push(("pids_limit", at, val)),
            _ => {}
        }
    }
    if svc.image.is_empty() {
        if svc.build.is_none() {
            return Err(LoadError::new(
                path,
                ErrorKind::NoImage {
                    service: name.to_string(),
                },
            ));
        }
        svc.image = format!("{}-{name}", cx.project);
    }
    svc.environment = environment_of(env_files, environment, cx)?;
    svc.networks = match networks {
        Some((val, at)) => service_networks(val, &at)?,
        None => BTreeMap::from([("default".to_string(), ServiceNetwork::default())]),
    };
    svc.deploy = match deploy_value {
        Some((val, at)) => deploy::deploy(val, &at)?,
        None => Deploy::default(),
    };
    deploy::fold_legacy(&mut svc.deploy, &legacy)?;
    if let Some((scale, at)) = scale {
        match svc.deploy.replicas {
            Some(r) if u64::from(r) != scale => {
                return Err(LoadError::new(
                    at,
                    ErrorKind::ScaleConflict {
                        scale,
                        replicas: r.into(),
                    },
                ));
            }
            _ => {
                let n = u32::try_from(scale)
                    .map_err(|_| invalid(&at, scale.to_string(), "too many replicas"))?;
                svc.deploy.replicas = Some(n);
            }
        }
    }
    match svc.deploy.mode {
        DeployMode::Replicated => {
            svc.deploy.replicas.get_or_insert(1);
        }
        DeployMode::Global if svc.deploy.replicas.is_some() => {
            let at = path.key("deploy").key("replicas");
            return Err(LoadError::new(
                at,
                ErrorKind::Conflict {
                    other: "deploy.mode: global",
                },
            ));
        }
        DeployMode::Global => {}
    }
    Ok(svc)
}

fn build(v: &Value, path: &KeyPath, cx: &Ctx<'_>) -> Result<Build, LoadError> {
    let m = map(v, path)?;
    let mut args = BTreeMap::new();
    if let Some(a) = get(&m, "args") {
        for (k, val) in entries(&*map(a, &path.key("args"))?) {
            let val = match untag(val) {
                Value::Null => cx.lookup(&k),
                other => Some(string(other, &path.key("args").key(&k))?),
            };
            if let Some(val) = val {
                args.insert(k, val);
            }
        }
    }
    Ok(Build {
        args,
        context: opt_string(m.get("context"), &path.key("context"))?
            .unwrap_or_else(|| ".".to_string()),
        dockerfile: opt_string(m.get("dockerfile"), &path.key("dockerfile"))?,
        target: opt_string(m.get("target"), &path.key("target"))?,
    })
}

/// `env_file`s in order, then `environment` on top; a key without a value is taken from the
/// project environment (and left as the env files set it, or out, when that has none).
fn environment_of(
    env_files: Option<(&Value, KeyPath)>,
    environment: Option<(&Value, KeyPath)>,
    cx: &mut Ctx<'_>,
) -> Result<BTreeMap<String, String>, LoadError> {
    let mut env = BTreeMap::new();
    if let Some((files, at)) = env_files {
        for (i, f) in seq(files, &at)?.iter().enumerate() {
            let fat = at.index(i);
            let fm = map(f, &fat)?;
            let file = string(fm.get("path").unwrap_or(&Value::Null), &fat.key("path"))?;
            let required = match fm.get("required") {
                Some(r) => boolean(r, &fat.key("required"))?,
                None => true,
            };
            let text = match (cx.read)(Path::new(&file)) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(source) => return Err(LoadError::new(fat, ErrorKind::Read { file, source })),
            };
            let mut unset = Vec::new();
            let lookup = |name: &str| cx.lookup(name);
            let vars = dotenv::parse(&text, &lookup, &mut unset)
                .map_err(|e| LoadError::in_file(&file, Some(e.line), e.kind))?;
            for (line, var) in unset {
                cx.warnings.push(Warning {
                    at: Location {
                        file: Some(file.clone()),
                        line: Some(line),
                    },
                    path: KeyPath::root(),
                    kind: WarningKind::UnsetVariable { var },
                });
            }
            env.extend(vars.into_iter().map(|v| (v.key, v.value)));
        }
    }
    if let Some((vars, at)) = environment {
        for (k, val) in entries(&*map(vars, &at)?) {
            match untag(val) {
                Value::Null => {
                    if let Some(v) = cx.lookup(&k) {
                        env.insert(k, v);
                    }
                }
                other => {
                    let v = string(other, &at.key(&k))?;
                    env.insert(k, v);
                }
            }
        }
    }
    Ok(env)
}

fn port(v: &Value, path: &KeyPath, cx: &mut Ctx<'_>) -> Result<Port, LoadError> {
    let m = map(v, path)?;
    let target_v = m
        .get("target")
        .ok_or_else(|| LoadError::new(path.clone(), ErrorKind::MissingKey { key: "target" }))?;
    let target: u16 = uint_as(target_v, &path.key("target"), "a port")?;
    if target == 0 {
        return Err(invalid(
            &path.key("target"),
            "0",
            "expected a port from 1 to 65535",
        ));
    }
    let published = match m.get("published").map(untag) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(uint_as::<u16>(
            &Value::Number(n.clone()),
            &path.key("published"),
            "a port",
        )?),
        Some(other) => {
            let text = string(other, &path.key("published"))?;
            let bad = |reason: &str| {
                LoadError::new(
                    path.key("published"),
                    ErrorKind::InvalidPort {
                        spec: text.clone(),
                        reason: reason.to_string(),
                    },
                )
            };
            let first = text.split('-').next().unwrap_or_default();
            if text.is_empty() {
                None
            } else {
                let p: u16 = first
                    .parse()
                    .map_err(|_| bad("expected a port from 1 to 65535"))?;
                if text.contains('-') {
                    cx.warnings.push(Warning::new(
                        path.key("published"),
                        WarningKind::Narrowed(format!(
                            "a published port range is not supported by Fizz; publishing {p} only"
                        )),
                    ));
                }
                Some(p)
            }
        }
    };
    let host_ip = opt_string(m.get("host_ip"), &path.key("host_ip"))?.filter(|ip| !ip.is_empty());
    if let Some(ip) = &host_ip {
        if ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                &path.key("host_ip"),
                ip.as_str(),
                "expected an IP address",
            ));
        }
    }
    let protocol = match get(&m, "protocol") {
        None => Protocol::Tcp,
        Some(p) => match one_of(p, &path.key("protocol"), &["tcp", "udp", "sctp"])?.as_str() {
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => Protocol::Tcp,
        },
    };
    let mode = match get(&m, "mode") {
        None => PortMode::Ingress,
        Some(p) => match one_of(p, &path.key("mode"), &["ingress", "host"])?.as_str() {
            "host" => PortMode::Host,
            _ => PortMode::Ingress,
        },
    };
    Ok(Port {
        app_protocol: opt_string(m.get("app_protocol"), &path.key("app_protocol"))?,
        host_ip,
        mode,
        name: opt_string(m.get("name"), &path.key("name"))?,
        protocol,
        published,
        target,
    })
}

fn mount(v: &Value, path: &KeyPath) -> Result<Mount, LoadError> {
    let m = map(v, path)?;
    let kind_v = get(&m, "type")
        .ok_or_else(|| LoadError::new(path.clone(), ErrorKind::MissingKey { key: "type" }))?;
    let kind = match one_of(kind_v, &path.key("type"), &["bind", "volume", "tmpfs"])?.as_str() {
        "bind" => MountType::Bind,
        "tmpfs" => MountType::Tmpfs,
        _ => MountType::Volume,
    };
    let target = match get(&m, "target") {
        Some(t) => string(t, &path.key("target"))?,
        None => {
            return Err(LoadError::new(
                path.clone(),
                ErrorKind::MissingKey { key: "target" },
            ))
        }
    };
    if !target.starts_with('/') {
        return Err(invalid(
            &path.key("target"),
            target,
            "the container path must be absolute",
        ));
    }
    let source = opt_string(m.get("source"), &path.key("source"))?.filter(|s| !s.is_empty());
    if kind == MountType::Bind && source.is_none() {
        return Err(LoadError::new(
            path.clone(),
            ErrorKind::MissingKey { key: "source" },
        ));
    }
    let read_only = match m.get("read_only") {
        Some(r) => boolean(r, &path.key("read_only"))?,
        None => false,
    };
    let bind = match get(&m, "bind") {
        Some(b) => {
            let at = path.key("bind");
            let b = map(b, &at)?;
            Some(BindOptions {
                create_host_path: match b.get("create_host_path") {
                    Some(c) => boolean(c, &at.key("create_host_path"))?,
                    None => false,
                },
                propagation: opt_string(b.get("propagation"), &at.key("propagation"))?,
                selinux: opt_string(b.get("selinux"), &at.key("selinux"))?,
            })
        }
        None => None,
    };
    let volume = match get(&m, "volume") {
        Some(o) => {
            let at = path.key("volume");
            let o = map(o, &at)?;
            Some(VolumeOptions {
                nocopy: match o.get("nocopy") {
                    Some(c) => boolean(c, &at.key("nocopy"))?,
                    None => false,
                },
                subpath: opt_string(o.get("subpath"), &at.key("subpath"))?,
            })
        }
        None => None,
    };
    let tmpfs = match get(&m, "tmpfs") {
        Some(o) => {
            let at = path.key("tmpfs");
            let o = map(o, &at)?;
            Some(TmpfsOptions {
                mode: get(&o, "mode")
                    .map(|v| file_mode(v, &at.key("mode")))
                    .transpose()?,
                size: get(&o, "size")
                    .map(|v| size(v, &at.key("size")))
                    .transpose()?,
            })
        }
        None => None,
    };
    Ok(Mount {
        bind,
        consistency: opt_string(m.get("consistency"), &path.key("consistency"))?,
        read_only,
        source,
        target,
        tmpfs,
        kind,
        volume,
    })
}

fn dependency(v: &Value, path: &KeyPath) -> Result<Dependency, LoadError> {
    let m = map(v, path)?;
    let mut d = Dependency::started();
    if let Some(c) = get(&m, "condition") {
        let allowed = [
            "service_started",
            "service_healthy",
            "service_completed_successfully",
        ];
        d.condition = match one_of(c, &path.key("condition"), &allowed)?.as_str() {
            "service_healthy" => Condition::ServiceHealthy,
            "service_completed_successfully" => Condition::ServiceCompletedSuccessfully,
            _ => Condition::ServiceStarted,
        };
    }
    if let Some(r) = get(&m, "required") {
        d.required = boolean(r, &path.key("required"))?;
    }
    if let Some(r) = get(&m, "restart") {
        d.restart = boolean(r, &path.key("restart"))?;
    }
    Ok(d)
}

fn healthcheck(
    v: &Value,
    path: &KeyPath,
    warnings: &mut Vec<Warning>,
) -> Result<Healthcheck, LoadError> {
    let m = map(v, path)?;
    let opt_duration = |key: &str| {
        get(&m, key)
            .map(|d| duration(d, &path.key(key)))
            .transpose()
    };
    let mut h = Healthcheck {
        disable: match m.get("disable") {
            Some(d) => boolean(d, &path.key("disable"))?,
            None => false,
        },
        interval: opt_duration("interval")?,
        retries: get(&m, "retries")
            .map(|r| uint(r, &path.key("retries")))
            .transpose()?,
        start_interval: opt_duration("start_interval")?,
        start_period: opt_duration("start_period")?,
        test: match m.get("test") {
            Some(t) => string_list(t, &path.key("test"))?,
            None => Vec::new(),
        },
        timeout: opt_duration("timeout")?,
    };
    match h.test.first().map(String::as_str) {
        None | Some("CMD" | "CMD-SHELL") => {}
        Some("NONE") => h.disable = true,
        Some(other) => {
            return Err(invalid(
                &path.key("test"),
                other,
                "a test list must start with CMD, CMD-SHELL or NONE",
            ));
        }
    }
    if h.disable {
        let disabled = Healthcheck {
            disable: true,
            ..Healthcheck::default()
        };
        let command = h.test.first().is_some_and(|t| t != "NONE");
        let timing = h.interval.is_some()
            || h.timeout.is_some()
            || h.retries.is_some()
            || h.start_period.is_some()
            || h.start_interval.is_some();
        if command || timing {
            warnings.push(Warning::new(
                path.clone(),
                WarningKind::Narrowed(
                    "the health check is disabled; its other settings are ignored".into(),
                ),
            ));
        }
        h = disabled;
    }
    Ok(h)
}

fn restart(v: &Value, path: &KeyPath) -> Result<String, LoadError> {
    let s = string(v, path)?;
    let ok = match s.as_str() {
        "no" | "always" | "unless-stopped" | "on-failure" => true,
        other => other
            .strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
    };
    if ok {
        Ok(s)
    } else {
        Err(invalid(
            path,
            s,
            "expected no, always, on-failure[:max-retries] or unless-stopped",
        ))
    }
}

fn service_networks(
    v: &Value,
    path: &KeyPath,
) -> Result<BTreeMap<String, ServiceNetwork>, LoadError> {
    let mut out = BTreeMap::new();
    for (name, opts) in entries(&*map(v, path)?) {
        let at = path.key(&name);
        let o = map(opts, &at)?;
        let net = ServiceNetwork {
            aliases: match o.get("aliases") {
                Some(a) => string_list(a, &at.key("aliases"))?,
                None => Vec::new(),
            },
            ipv4_address: opt_string(o.get("ipv4_address"), &at.key("ipv4_address"))?,
            priority: get(&o, "priority")
                .map(|p| int(p, &at.key("priority")))
                .transpose()?,
        };
        out.insert(name, net);
    }
    Ok(out)
}

fn device(v: &Value, path: &KeyPath) -> Result<String, LoadError> {
    match untag(v) {
        Value::Mapping(m) => {
            let source = string(m.get("source").unwrap_or(&Value::Null), &path.key("source"))?;
            let target =
                opt_string(m.get("target"), &path.key("target"))?.unwrap_or_else(|| source.clone());
            let perms = opt_string(m.get("permissions"), &path.key("permissions"))?
                .unwrap_or_else(|| "rwm".into());
            Ok(format!("{source}:{target}:{perms}"))
        }
        other => string(other, path),
    }
}

fn ulimit(v: &Value, path: &KeyPath) -> Result<Ulimit, LoadError> {
    let m = map(v, path)?;
    let need = |key: &'static str| -> Result<i64, LoadError> {
        let val = m
            .get(key)
            .ok_or_else(|| LoadError::new(path.clone(), ErrorKind::MissingKey { key }))?;
        int(val, &path.key(key))
    };
    Ok(Ulimit {
        hard: need("hard")?,
        soft: need("soft")?,
    })
}

fn file_refs(v: &Value, path: &KeyPath, default_dir: &str) -> Result<Vec<FileRef>, LoadError> {
    let mut out = Vec::new();
    for (i, item) in seq(v, path)?.iter().enumerate() {
        let at = path.index(i);
        let m = map(item, &at)?;
        let source = match get(&m, "source") {
            Some(s) => string(s, &at.key("source"))?,
            None => return Err(LoadError::new(at, ErrorKind::MissingKey { key: "source" })),
        };
        let target = match opt_string(m.get("target"), &at.key("target"))? {
            Some(t) if t.starts_with('/') => t,
            Some(t) => format!("{default_dir}{t}"),
            None => format!("{default_dir}{source}"),
        };
        out.push(FileRef {
            gid: opt_string(m.get("gid"), &at.key("gid"))?,
            mode: get(&m, "mode")
                .map(|v| file_mode(v, &at.key("mode")))
                .transpose()?,
            source,
            target,
            uid: opt_string(m.get("uid"), &at.key("uid"))?,
        });
    }
    Ok(out)
}

fn logging(v: &Value, path: &KeyPath) -> Result<Logging, LoadError> {
    let m = map(v, path)?;
    Ok(Logging {
        driver: opt_string(m.get("driver"), &path.key("driver"))?,
        options: match get(&m, "options") {
            Some(o) => string_map(o, &path.key("options"))?,
            None => BTreeMap::new(),
        },
    })
}

/// `m[key]` as a mapping, for the top-level sections.
pub(crate) fn section<'a>(
    root: &'a Mapping,
    key: &str,
) -> Result<std::borrow::Cow<'a, Mapping>, LoadError> {
    map(root.get(key).unwrap_or(&Value::Null), &KeyPath::of(&[key]))
}
