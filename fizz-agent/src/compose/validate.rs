//! Checks across the model: names, references from services to other services and to
//! top-level networks, volumes, secrets and configs, `depends_on` cycles, and profiles (which
//! services are enabled, and that what they need is enabled too).

use std::collections::{BTreeMap, BTreeSet};

use super::error::{ErrorKind, KeyPath, LoadError};
use super::model::{MountType, PortMode, Project, Protocol, Service};

const NAME_RULE: &str = "use letters, digits, '.', '_' and '-'";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks a service, network, volume, secret or config name.
pub(crate) fn name(what: &'static str, name: &str, path: KeyPath) -> Result<(), LoadError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(LoadError::new(
            path,
            ErrorKind::InvalidName {
                what,
                name: name.to_string(),
                rule: NAME_RULE,
            },
        ))
    }
}

/// A project name from a directory: lowercase, only `[a-z0-9_-]`, starting with a letter or
/// digit (none if nothing is left).
pub(crate) fn project_name_from_dir(dir: &str) -> Option<String> {
    let lower: String = dir
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let trimmed = lower.trim_start_matches(['_', '-']);
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Checks a project name given explicitly.
pub(crate) fn project_name(name: &str, path: KeyPath) -> Result<(), LoadError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LoadError::new(
            path,
            ErrorKind::InvalidName {
                what: "project",
                name: name.to_string(),
                rule: "use lowercase letters, digits, '_' and '-', starting with a letter or digit",
            },
        ))
    }
}

/// References from every service (enabled or not) to others and to top-level objects.
pub(crate) fn references(
    project: &Project,
    all: &BTreeMap<String, Service>,
) -> Result<(), LoadError> {
    for (svc_name, svc) in all {
        let path = KeyPath::of(&["services", svc_name]);
        for dep in svc.depends_on.keys() {
            if !all.contains_key(dep) {
                return Err(LoadError::new(
                    path.key("depends_on").key(dep),
                    ErrorKind::UnknownDependency {
                        service: svc_name.clone(),
                        dependency: dep.clone(),
                    },
                ));
            }
        }
        for net in svc.networks.keys() {
            if net != "default" && !project.networks.contains_key(net) {
                return Err(LoadError::new(
                    path.key("networks").key(net),
                    ErrorKind::Undeclared {
                        what: "network",
                        name: net.clone(),
                        section: "networks",
                    },
                ));
            }
        }
        for (i, m) in svc.volumes.iter().enumerate() {
            if let (MountType::Volume, Some(source)) = (m.kind, &m.source) {
                if !project.volumes.contains_key(source) {
                    return Err(LoadError::new(
                        path.key("volumes").index(i),
                        ErrorKind::Undeclared {
                            what: "volume",
                            name: source.clone(),
                            section: "volumes",
                        },
                    ));
                }
            }
        }
        for (key, what, declared) in [
            ("secrets", "secret", &project.secrets),
            ("configs", "config", &project.configs),
        ] {
            let refs = if key == "secrets" {
                &svc.secrets
            } else {
                &svc.configs
            };
            for (i, r) in refs.iter().enumerate() {
                if !declared.contains_key(&r.source) {
                    return Err(LoadError::new(
                        path.key(key).index(i),
                        ErrorKind::Undeclared {
                            what,
                            name: r.source.clone(),
                            section: key,
                        },
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Fails when two enabled services publish the same ingress port: ingress ports are open on
/// every node, so each one can belong to one service only.
pub(crate) fn no_port_conflicts(services: &BTreeMap<String, Service>) -> Result<(), LoadError> {
    let mut seen: BTreeMap<(u16, Protocol), (&str, Option<&str>)> = BTreeMap::new();
    for (name, svc) in services {
        for (i, p) in svc.ports.iter().enumerate() {
            let (Some(published), PortMode::Ingress) = (p.published, p.mode) else {
                continue;
            };
            let host_ip = p.host_ip.as_deref();
            match seen.get(&(published, p.protocol)) {
                Some((other, other_ip))
                    if *other_ip == host_ip || other_ip.is_none() || host_ip.is_none() =>
                {
                    return Err(LoadError::new(
                        KeyPath::of(&["services", name, "ports"]).index(i),
                        ErrorKind::PortConflict {
                            port: published,
                            other: other.to_string(),
                        },
                    ));
                }
                _ => {
                    seen.insert((published, p.protocol), (name, host_ip));
                }
            }
        }
    }
    Ok(())
}

/// Fails on a cycle in `depends_on` (all dependencies must exist).
pub(crate) fn no_cycles(all: &BTreeMap<String, Service>) -> Result<(), LoadError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        all: &'a BTreeMap<String, Service>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Result<(), Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|s| *s == name).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_string());
                return Err(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        stack.push(name);
        if let Some(svc) = all.get(name) {
            for dep in svc.depends_on.keys() {
                visit(dep, all, marks, stack)?;
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
        Ok(())
    }
    let mut marks = BTreeMap::new();
    for name in all.keys() {
        let mut stack = Vec::new();
        if let Err(cycle) = visit(name, all, &mut marks, &mut stack) {
            let path = KeyPath::of(&["services", &cycle[0], "depends_on", &cycle[1]]);
            return Err(LoadError::new(path, ErrorKind::DependencyCycle { cycle }));
        }
    }
    Ok(())
}

/// The services the active profiles enable (`*` enables all), with optional dependencies on
/// disabled services dropped; a required one is an error.
pub(crate) fn apply_profiles(
    mut all: BTreeMap<String, Service>,
    active: &[String],
) -> Result<BTreeMap<String, Service>, LoadError> {
    let any = active.iter().any(|p| p == "*");
    let enabled: BTreeSet<String> = all
        .iter()
        .filter(|(_, s)| {
            any || s.profiles.is_empty() || s.profiles.iter().any(|p| active.contains(p))
        })
        .map(|(n, _)| n.clone())
        .collect();
    all.retain(|n, _| enabled.contains(n));
    for (name, svc) in all.iter_mut() {
        for (dep, d) in &svc.depends_on {
            if d.required && !enabled.contains(dep) {
                return Err(LoadError::new(
                    KeyPath::of(&["services", name, "depends_on", dep]),
                    ErrorKind::DisabledDependency {
                        service: name.clone(),
                        dependency: dep.clone(),
                    },
                ));
            }
        }
        svc.depends_on.retain(|dep, _| enabled.contains(dep));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_from_directories() {
        assert_eq!(
            project_name_from_dir("My App.v2").as_deref(),
            Some("myappv2")
        );
        assert_eq!(project_name_from_dir("__x-y").as_deref(), Some("x-y"));
        assert_eq!(project_name_from_dir("..."), None);
    }

    #[test]
    fn explicit_project_names() {
        assert!(project_name("web-1_a", KeyPath::root()).is_ok());
        assert!(project_name("Web", KeyPath::root()).is_err());
        assert!(project_name("-web", KeyPath::root()).is_err());
        assert!(project_name("", KeyPath::root()).is_err());
    }
}
