//! Rewrites one file's services into the long forms that merging works on: `KEY=VALUE` lists
//! become mappings, short port and volume specs become long ones (ranges expanded), string
//! health checks become lists, and relative host paths become absolute against the file's base
//! directory. Values stay `serde_yaml::Value`s; types are checked when the model is built.
//!
//! `!reset` and `!override` tags on a service's keys are kept for the merge to act on.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

use super::error::{ErrorKind, KeyPath, LoadError, Warning, WarningKind};
use super::value::{entries, map, scalar_key, seq, string, type_error, untag};

/// What canonicalization needs to know about the file it works on.
pub(crate) struct Ctx<'a> {
    /// The directory relative host paths are resolved against.
    pub base_dir: &'a Path,
    /// `$HOME`, for `~` in host paths.
    pub home: Option<&'a str>,
    /// Where warnings go (paths only; the caller places them).
    pub warnings: &'a mut Vec<Warning>,
}

impl Ctx<'_> {
    /// `p` as an absolute, lexically cleaned path.
    pub(crate) fn resolve(&self, p: &str) -> String {
        let joined = match (p.strip_prefix('~'), self.home) {
            (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
                PathBuf::from(format!("{home}{rest}"))
            }
            _ => self.base_dir.join(p),
        };
        clean(&joined).to_string_lossy().into_owned()
    }
}

/// Removes `.` and resolves `..` without touching the file system.
pub(crate) fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// Splits off a `!reset` or `!override` tag; other tags are dropped.
pub(crate) fn split_tag(v: &Value) -> (Option<Tag>, &Value) {
    match v {
        Value::Tagged(t) if t.tag == "reset" || t.tag == "override" => {
            (Some(t.tag.clone()), untag(&t.value))
        }
        other => (None, untag(other)),
    }
}

fn retag(tag: Option<Tag>, value: Value) -> Value {
    match tag {
        Some(tag) => Value::Tagged(Box::new(TaggedValue { tag, value })),
        None => value,
    }
}

/// One service in long form.
pub(crate) fn service(
    value: &Value,
    path: &KeyPath,
    ctx: &mut Ctx<'_>,
) -> Result<Value, LoadError> {
    let m = map(value, path)?;
    let mut out = Mapping::new();
    for (key, v) in entries(&m) {
        let at = path.key(&key);
        let (tag, v) = split_tag(v);
        if tag.as_ref().is_some_and(|t| *t == "reset") {
            out.insert(s(&key), retag(tag, Value::Null));
            continue;
        }
        let new = match key.as_str() {
            "environment" => pairs(v, &at, Bare::Null)?,
            "labels" | "annotations" | "sysctls" => pairs(v, &at, Bare::Empty)?,
            "extra_hosts" => extra_hosts(v, &at)?,
            "ports" => ports(v, &at, ctx)?,
            "volumes" => volumes(v, &at, ctx)?,
            "tmpfs" | "dns" | "dns_search" | "dns_opt" | "cap_add" | "cap_drop" | "profiles"
            | "security_opt" | "expose" | "group_add" => string_seq(v, &at)?,
            "env_file" => env_files(v, &at, ctx)?,
            "depends_on" => names_to_map(v, &at, Some(dependency_defaults))?,
            "networks" => names_to_map(v, &at, None)?,
            "secrets" | "configs" => file_refs(v, &at)?,
            "healthcheck" => healthcheck(v, &at)?,
            "ulimits" => ulimits(v, &at)?,
            "extends" => extends(v, &at, ctx)?,
            "build" => build(v, &at, ctx)?,
            "deploy" => deploy(v, &at)?,
            _ => v.clone(),
        };
        out.insert(s(&key), retag(tag, new));
    }
    Ok(Value::Mapping(out))
}

/// What a list entry without `=` means.
#[derive(Clone, Copy)]
enum Bare {
    /// A variable taken from the environment (null until resolved).
    Null,
    /// A label with an empty value.
    Empty,
}

/// `[K=V, ...]` or `{K: V}` as a mapping of strings (null for bare environment keys).
fn pairs(v: &Value, path: &KeyPath, bare: Bare) -> Result<Value, LoadError> {
    let mut out = Mapping::new();
    match v {
        Value::Mapping(m) => {
            for (k, val) in entries(m) {
                let val = match untag(val) {
                    Value::Null => match bare {
                        Bare::Null => Value::Null,
                        Bare::Empty => s(""),
                    },
                    other => s(&string(other, &path.key(&k))?),
                };
                out.insert(s(&k), val);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let text = string(item, &path.index(i))?;
                match text.split_once('=') {
                    Some((k, val)) => out.insert(s(k), s(val)),
                    None => out.insert(
                        s(&text),
                        match bare {
                            Bare::Null => Value::Null,
                            Bare::Empty => s(""),
                        },
                    ),
                };
            }
        }
        Value::Null => {}
        other => {
            return Err(type_error(
                path,
                "a mapping or a sequence of KEY=VALUE strings",
                other,
            ))
        }
    }
    Ok(Value::Mapping(out))
}

/// `[host:ip, host=ip]` or `{host: ip}` as a mapping.
fn extra_hosts(v: &Value, path: &KeyPath) -> Result<Value, LoadError> {
    let Value::Sequence(items) = v else {
        return pairs(v, path, Bare::Empty);
    };
    let mut out = Mapping::new();
    for (i, item) in items.iter().enumerate() {
        let text = string(item, &path.index(i))?;
        let split = text.split_once('=').or_else(|| text.split_once(':'));
        match split {
            Some((host, ip)) if !host.is_empty() && !ip.is_empty() => {
                out.insert(s(host), s(ip.trim_start_matches('[').trim_end_matches(']')));
            }
            _ => {
                return Err(super::value::invalid(
                    &path.index(i),
                    text,
                    "expected HOST=IP or HOST:IP",
                ))
            }
        }
    }
    Ok(Value::Mapping(out))
}

/// A string or a sequence of scalars, as a sequence of strings.
fn string_seq(v: &Value, path: &KeyPath) -> Result<Value, LoadError> {
    let items = super::value::string_list(v, path)?;
    Ok(Value::Sequence(items.iter().map(|i| s(i)).collect()))
}

/// A list of names, or a mapping of name to options, as a mapping (options filled by `fill`).
fn names_to_map(
    v: &Value,
    path: &KeyPath,
    fill: Option<fn(&mut Mapping)>,
) -> Result<Value, LoadError> {
    let mut out = Mapping::new();
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = string(item, &path.index(i))?;
                let mut opts = Mapping::new();
                if let Some(fill) = fill {
                    fill(&mut opts);
                }
                let opts = if opts.is_empty() {
                    Value::Null
                } else {
                    Value::Mapping(opts)
                };
                out.insert(s(&name), opts);
            }
        }
        Value::Mapping(m) => {
            for (k, opts) in entries(m) {
                let opts = match (untag(opts), fill) {
                    (Value::Null, Some(fill)) => {
                        let mut o = Mapping::new();
                        fill(&mut o);
                        Value::Mapping(o)
                    }
                    (other, _) => other.clone(),
                };
                out.insert(s(&k), opts);
            }
        }
        Value::Null => {}
        other => return Err(type_error(path, "a sequence of names or a mapping", other)),
    }
    Ok(Value::Mapping(out))
}

fn dependency_defaults(m: &mut Mapping) {
    m.insert(s("condition"), s("service_started"));
    m.insert(s("required"), Value::Bool(true));
}

/// Secrets and configs: `name` becomes `{source: name}`.
fn file_refs(v: &Value, path: &KeyPath) -> Result<Value, LoadError> {
    let mut out = Vec::new();
    for (i, item) in seq(v, path)?.iter().enumerate() {
        match untag(item) {
            Value::Mapping(m) => out.push(Value::Mapping(m.clone())),
            Value::String(name) => {
                let mut m = Mapping::new();
                m.insert(s("source"), s(name));
                out.push(Value::Mapping(m));
            }
            other => return Err(type_error(&path.index(i), "a name or a mapping", other)),
        }
    }
    Ok(Value::Sequence(out))
}

fn healthcheck(v: &Value, path: &KeyPath) -> Result<Value, LoadError> {
    let mut m = map(v, path)?.into_owned();
    if let Some(test) = m.get_mut("test") {
        if let Value::String(cmd) = untag(test) {
            *test = if cmd == "NONE" {
                Value::Sequence(vec![s("NONE")])
            } else {
                Value::Sequence(vec![s("CMD-SHELL"), s(cmd)])
            };
        }
    }
    Ok(Value::Mapping(m))
}

fn ulimits(v: &Value, path: &KeyPath) -> Result<Value, LoadError> {
    let m = map(v, path)?;
    let mut out = Mapping::new();
    for (name, limit) in entries(&m) {
        let limit = match untag(limit) {
            n @ (Value::Number(_) | Value::String(_)) => {
                let mut l = Mapping::new();
                l.insert(s("soft"), n.clone());
                l.insert(s("hard"), n.clone());
                Value::Mapping(l)
            }
            other => other.clone(),
        };
        out.insert(s(&name), limit);
    }
    Ok(Value::Mapping(out))
}

fn extends(v: &Value, path: &KeyPath, ctx: &Ctx<'_>) -> Result<Value, LoadError> {
    let mut m = match v {
        Value::String(service) => {
            let mut m = Mapping::new();
            m.insert(s("service"), s(service));
            m
        }
        other => map(other, path)?.into_owned(),
    };
    if let Some(Value::String(file)) = m.get("file").map(untag) {
        let resolved = ctx.resolve(file);
        m.insert(s("file"), s(&resolved));
    }
    Ok(Value::Mapping(m))
}

fn build(v: &Value, path: &KeyPath, ctx: &Ctx<'_>) -> Result<Value, LoadError> {
    let mut m = match v {
        Value::String(context) => {
            let mut m = Mapping::new();
            m.insert(s("context"), s(context));
            m
        }
        other => map(other, path)?.into_owned(),
    };
    if let Some(Value::String(context)) = m.get("context").map(untag) {
        // Remote contexts (git URLs, http) are kept as written.
        if !context.contains("://") && !context.starts_with("git@") {
            let resolved = ctx.resolve(context);
            m.insert(s("context"), s(&resolved));
        }
    }
    if let Some(args) = m.get("args").cloned() {
        m.insert(
            s("args"),
            pairs(untag(&args), &path.key("args"), Bare::Null)?,
        );
    }
    Ok(Value::Mapping(m))
}

fn deploy(v: &Value, path: &KeyPath) -> Result<Value, LoadError> {
    let mut m = map(v, path)?.into_owned();
    if let Some(labels) = m.get("labels").cloned() {
        m.insert(
            s("labels"),
            pairs(untag(&labels), &path.key("labels"), Bare::Empty)?,
        );
    }
    Ok(Value::Mapping(m))
}

fn env_files(v: &Value, path: &KeyPath, ctx: &Ctx<'_>) -> Result<Value, LoadError> {
    let items: Vec<(KeyPath, &Value)> = match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (path.index(i), item))
            .collect(),
        other => vec![(path.clone(), other)],
    };
    let mut out = Vec::new();
    for (at, item) in items {
        let (file, required) = match untag(item) {
            Value::String(file) => (file.clone(), Value::Bool(true)),
            Value::Mapping(m) => {
                let file = m.get("path").ok_or_else(|| {
                    LoadError::new(at.clone(), ErrorKind::MissingKey { key: "path" })
                })?;
                (
                    string(file, &at.key("path"))?,
                    m.get("required").cloned().unwrap_or(Value::Bool(true)),
                )
            }
            other => return Err(type_error(&at, "a path or a mapping with a path", other)),
        };
        let mut m = Mapping::new();
        m.insert(s("path"), s(&ctx.resolve(&file)));
        m.insert(s("required"), required);
        out.push(Value::Mapping(m));
    }
    Ok(Value::Sequence(out))
}

/// A short port spec, `[[HOST_IP:][PUBLISHED[-END]]:]TARGET[-END][/PROTOCOL]`, as long-form
/// entries (a range gives one entry per port).
pub(crate) fn parse_port(spec: &str) -> Result<(Vec<Mapping>, Option<String>), String> {
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, p)) => (b, p),
        None => (spec, "tcp"),
    };
    if !matches!(protocol, "tcp" | "udp" | "sctp") {
        return Err(format!(
            "unknown protocol {protocol:?} (use tcp, udp or sctp)"
        ));
    }
    let (host_ip, rest) = if let Some(r) = body.strip_prefix('[') {
        let (ip, after) = r.split_once(']').ok_or("unclosed [ in the host address")?;
        let after = after
            .strip_prefix(':')
            .ok_or("expected : after the host address")?;
        (Some(ip.to_string()), after.to_string())
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            1 | 2 => (None, body.to_string()),
            3 => (Some(parts[0].to_string()), parts[1..].join(":")),
            _ => return Err("too many colons (write an IPv6 host address in brackets)".to_string()),
        }
    };
    if let Some(ip) = &host_ip {
        if ip.parse::<IpAddr>().is_err() {
            return Err(format!("{ip:?} is not an IP address"));
        }
    }
    let (published, target) = match rest.split_once(':') {
        Some((p, t)) => (Some(p), t),
        None => (None, rest.as_str()),
    };
    let (t0, t1) = port_range(target, "container")?;
    let published = match published {
        None | Some("") => None,
        Some(p) => Some(port_range(p, "published")?),
    };
    let count = t1 - t0 + 1;
    let mut warning = None;
    let published_for = |i: u32| -> Option<u32> {
        published.map(|(p0, p1)| if p1 - p0 + 1 == count { p0 + i } else { p0 })
    };
    if let Some((p0, p1)) = published {
        let pcount = p1 - p0 + 1;
        if pcount != count {
            if count != 1 {
                return Err(format!(
                    "{pcount} published ports for {count} container ports"
                ));
            }
            warning = Some(format!(
                "a published port range for one container port is not supported by Fizz; publishing {p0} only"
            ));
        }
    }
    let mut out = Vec::new();
    for i in 0..count {
        let mut m = Mapping::new();
        m.insert(s("target"), Value::Number((t0 + i).into()));
        if let Some(p) = published_for(i) {
            m.insert(s("published"), Value::Number(p.into()));
        }
        if let Some(ip) = &host_ip {
            m.insert(s("host_ip"), s(ip));
        }
        m.insert(s("protocol"), s(protocol));
        m.insert(s("mode"), s("ingress"));
        out.push(m);
    }
    Ok((out, warning))
}

/// `80` or `8000-8010` as an inclusive range of valid ports.
fn port_range(text: &str, what: &str) -> Result<(u32, u32), String> {
    let port = |p: &str| -> Result<u32, String> {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n),
            _ => Err(format!("{what} port {p:?} is not a number from 1 to 65535")),
        }
    };
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if a > b {
        return Err(format!("{what} port range {text:?} is backwards"));
    }
    Ok((a, b))
}

fn ports(v: &Value, path: &KeyPath, ctx: &mut Ctx<'_>) -> Result<Value, LoadError> {
    let mut out = Vec::new();
    for (i, item) in seq(v, path)?.iter().enumerate() {
        let at = path.index(i);
        let spec = match untag(item) {
            Value::Mapping(m) => {
                out.push(Value::Mapping(m.clone()));
                continue;
            }
            Value::Number(n) => n.to_string(),
            Value::String(text) => text.clone(),
            other => return Err(type_error(&at, "a port spec or a mapping", other)),
        };
        let (entries, warning) = parse_port(&spec).map_err(|reason| {
            LoadError::new(
                at.clone(),
                ErrorKind::InvalidPort {
                    spec: spec.clone(),
                    reason,
                },
            )
        })?;
        if let Some(w) = warning {
            ctx.warnings
                .push(Warning::new(at, WarningKind::Narrowed(w)));
        }
        out.extend(entries.into_iter().map(Value::Mapping));
    }
    Ok(Value::Sequence(out))
}

/// Whether a short volume source is a host path rather than a volume name.
fn is_host_path(src: &str) -> bool {
    src.starts_with('/') || src.starts_with('.') || src.starts_with('~')
}

/// A short volume spec, `[SOURCE:]TARGET[:OPTIONS]`, in long form.
pub(crate) fn parse_volume(spec: &str, ctx: &Ctx<'_>) -> Result<Mapping, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, o] => (Some(*src), *t, Some(*o)),
        _ => return Err("too many colons".to_string()),
    };
    if !target.starts_with('/') {
        return Err(format!("the container path {target:?} must be absolute"));
    }
    if source == Some("") {
        return Err("the source is empty".to_string());
    }
    let mut read_only = false;
    let (mut bind, mut volume) = (Mapping::new(), Mapping::new());
    let mut consistency = None;
    for opt in options.into_iter().flat_map(|o| o.split(',')) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "z" | "Z" => {
                bind.insert(s("selinux"), s(opt));
            }
            "nocopy" => {
                volume.insert(s("nocopy"), Value::Bool(true));
            }
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                bind.insert(s("propagation"), s(opt));
            }
            "consistent" | "cached" | "delegated" => consistency = Some(opt),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let mut m = Mapping::new();
    match source {
        None => {
            m.insert(s("type"), s("volume"));
        }
        Some(src) if is_host_path(src) => {
            m.insert(s("type"), s("bind"));
            m.insert(s("source"), s(&ctx.resolve(src)));
            bind.insert(s("create_host_path"), Value::Bool(true));
        }
        Some(name) => {
            m.insert(s("type"), s("volume"));
            m.insert(s("source"), s(name));
        }
    }
    m.insert(s("target"), s(target));
    if read_only {
        m.insert(s("read_only"), Value::Bool(true));
    }
    if let Some(c) = consistency {
        m.insert(s("consistency"), s(c));
    }
    let is_bind = m.get("type") == Some(&s("bind"));
    if is_bind && !bind.is_empty() {
        m.insert(s("bind"), Value::Mapping(bind));
    } else if !is_bind && !volume.is_empty() {
        m.insert(s("volume"), Value::Mapping(volume));
    }
    Ok(m)
}

fn volumes(v: &Value, path: &KeyPath, ctx: &Ctx<'_>) -> Result<Value, LoadError> {
    let mut out = Vec::new();
    for (i, item) in seq(v, path)?.iter().enumerate() {
        let at = path.index(i);
        match untag(item) {
            Value::String(spec) => {
                let m = parse_volume(spec, ctx).map_err(|reason| {
                    LoadError::new(
                        at,
                        ErrorKind::InvalidVolume {
                            spec: spec.clone(),
                            reason,
                        },
                    )
                })?;
                out.push(Value::Mapping(m));
            }
            Value::Mapping(m) => {
                let mut m = m.clone();
                let is_bind = m.get("type").map(untag) == Some(&s("bind"));
                if let (true, Some(Value::String(src))) = (is_bind, m.get("source").map(untag)) {
                    let resolved = ctx.resolve(src);
                    m.insert(s("source"), s(&resolved));
                }
                out.push(Value::Mapping(m));
            }
            other => return Err(type_error(&at, "a volume spec or a mapping", other)),
        }
    }
    Ok(Value::Sequence(out))
}

/// The top-level sections of one file: relative `file:` paths of secrets and configs resolved.
pub(crate) fn top_level(root: &mut Mapping, ctx: &Ctx<'_>) -> Result<(), LoadError> {
    for section in ["secrets", "configs"] {
        let Some(Value::Mapping(items)) = root.get_mut(section).map(untag_mut) else {
            continue;
        };
        for (name, def) in items.iter_mut() {
            if let Value::Mapping(def) = untag_mut(def) {
                if let Some(Value::String(file)) = def.get("file").map(untag) {
                    let resolved = ctx.resolve(file);
                    def.insert(s("file"), s(&resolved));
                }
            } else if !matches!(untag(def), Value::Null) {
                return Err(type_error(
                    &KeyPath::of(&[section, &scalar_key(name)]),
                    "a mapping",
                    def,
                ));
            }
        }
    }
    Ok(())
}

fn untag_mut(v: &mut Value) -> &mut Value {
    let mut cur = v;
    while let Value::Tagged(t) = cur {
        cur = &mut t.value;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports_of(spec: &str) -> Vec<String> {
        let (entries, _) = parse_port(spec).unwrap();
        entries
            .iter()
            .map(|m| {
                let get = |k: &str| m.get(k).map(scalar_key).unwrap_or_default();
                format!(
                    "{}|{}|{}|{}",
                    get("host_ip"),
                    get("published"),
                    get("target"),
                    get("protocol")
                )
            })
            .collect()
    }

    #[test]
    fn short_ports() {
        assert_eq!(ports_of("80"), ["||80|tcp"]);
        assert_eq!(ports_of("8080:80"), ["|8080|80|tcp"]);
        assert_eq!(ports_of("127.0.0.1:8080:80/udp"), ["127.0.0.1|8080|80|udp"]);
        assert_eq!(ports_of("127.0.0.1::80"), ["127.0.0.1||80|tcp"]);
        assert_eq!(ports_of("[::1]:53:53/udp"), ["::1|53|53|udp"]);
        assert_eq!(
            ports_of("8000-8001:80-81"),
            ["|8000|80|tcp", "|8001|81|tcp"]
        );
        assert_eq!(ports_of("3000-3001"), ["||3000|tcp", "||3001|tcp"]);
        let (entries, warning) = parse_port("9000-9009:80").unwrap();
        assert_eq!(entries.len(), 1);
        assert!(warning.is_some());
        for bad in [
            "",
            "x",
            "0",
            "70000",
            "80/icmp",
            "1:2:3:4",
            "8000-8002:80-81",
            "81-80",
            "nohost:80:80",
            "80:81-82",
        ] {
            assert!(parse_port(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn short_volumes() {
        let mut warnings = Vec::new();
        let ctx = Ctx {
            base_dir: Path::new("/proj"),
            home: Some("/home/u"),
            warnings: &mut warnings,
        };
        let v = |spec| {
            serde_yaml::to_string(&parse_volume(spec, &ctx).unwrap())
                .unwrap()
                .replace('\n', " ")
        };
        assert_eq!(v("/data"), "type: volume target: /data ");
        assert_eq!(
            v("db:/var/lib/db"),
            "type: volume source: db target: /var/lib/db "
        );
        assert_eq!(
            v("./conf/../etc:/etc/app:ro"),
            "type: bind source: /proj/etc target: /etc/app read_only: true bind:   create_host_path: true "
        );
        assert_eq!(
            v("~/x:/x"),
            "type: bind source: /home/u/x target: /x bind:   create_host_path: true "
        );
        assert!(parse_volume("data", &ctx).is_err());
        assert!(parse_volume("a:b:c:d", &ctx).is_err());
        assert!(parse_volume("a:/b:bogus", &ctx).is_err());
    }
}
