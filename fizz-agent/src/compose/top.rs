//! The top-level sections besides `services`: networks, volumes, secrets and configs, with
//! their full names (`<project>_<key>` unless named or external).

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::error::{ErrorKind, KeyPath, LoadError, Warning, WarningKind};
use super::model::{FileObject, Network, Volume};
use super::normalize::{section, string_map};
use super::value::{boolean, entries, get, map, opt_string, untag};

/// `external: true`, or the obsolete `external: {name: x}` (which also names the object).
fn external(
    m: &Mapping,
    path: &KeyPath,
    warnings: &mut Vec<Warning>,
) -> Result<(bool, Option<String>), LoadError> {
    match m.get("external").map(untag) {
        None | Some(Value::Null) => Ok((false, None)),
        Some(Value::Mapping(e)) => {
            let at = path.key("external");
            warnings.push(Warning::new(
                at.key("name"),
                WarningKind::Narrowed(
                    "obsolete form, write `name:` beside `external: true`".into(),
                ),
            ));
            Ok((true, opt_string(e.get("name"), &at.key("name"))?))
        }
        Some(other) => Ok((boolean(other, &path.key("external"))?, None)),
    }
}

/// The full name of a top-level object.
fn full_name(project: &str, key: &str, given: Option<String>, external: bool) -> String {
    match given {
        Some(name) => name,
        None if external => key.to_string(),
        None => format!("{project}_{key}"),
    }
}

fn opt_map(m: &Mapping, key: &str, path: &KeyPath) -> Result<BTreeMap<String, String>, LoadError> {
    match get(m, key) {
        Some(v) => string_map(v, &path.key(key)),
        None => Ok(BTreeMap::new()),
    }
}

/// The top-level `networks`.
pub(crate) fn networks(
    root: &Mapping,
    project: &str,
    warnings: &mut Vec<Warning>,
) -> Result<BTreeMap<String, Network>, LoadError> {
    let mut out = BTreeMap::new();
    for (key, def) in entries(&*section(root, "networks")?) {
        let path = KeyPath::of(&["networks", &key]);
        let m = map(def, &path)?;
        let (is_external, ext_name) = external(&m, &path, warnings)?;
        let name = opt_string(m.get("name"), &path.key("name"))?.or(ext_name);
        if is_external {
            warnings.push(Warning::new(
                path.key("external"),
                WarningKind::Narrowed("external networks are not supported by Fizz yet; the network is kept for reference".into()),
            ));
        }
        let driver = opt_string(m.get("driver"), &path.key("driver"))?;
        if let Some(d) = driver
            .as_deref()
            .filter(|d| !matches!(*d, "bridge" | "overlay"))
        {
            warnings.push(Warning::new(
                path.key("driver"),
                WarningKind::Narrowed(format!(
                    "driver {d:?} is not supported by Fizz; its own network is used"
                )),
            ));
        }
        let flag = |k: &str| {
            m.get(k)
                .map(|v| boolean(v, &path.key(k)))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        out.insert(
            key.clone(),
            Network {
                attachable: flag("attachable")?,
                driver,
                driver_opts: opt_map(&m, "driver_opts", &path)?,
                external: is_external,
                internal: flag("internal")?,
                labels: opt_map(&m, "labels", &path)?,
                name: full_name(project, &key, name, is_external),
            },
        );
    }
    Ok(out)
}

/// The top-level `volumes`.
pub(crate) fn volumes(
    root: &Mapping,
    project: &str,
    warnings: &mut Vec<Warning>,
) -> Result<BTreeMap<String, Volume>, LoadError> {
    let mut out = BTreeMap::new();
    for (key, def) in entries(&*section(root, "volumes")?) {
        let path = KeyPath::of(&["volumes", &key]);
        let m = map(def, &path)?;
        let (is_external, ext_name) = external(&m, &path, warnings)?;
        let name = opt_string(m.get("name"), &path.key("name"))?.or(ext_name);
        out.insert(
            key.clone(),
            Volume {
                driver: opt_string(m.get("driver"), &path.key("driver"))?,
                driver_opts: opt_map(&m, "driver_opts", &path)?,
                external: is_external,
                labels: opt_map(&m, "labels", &path)?,
                name: full_name(project, &key, name, is_external),
            },
        );
    }
    Ok(out)
}

/// The top-level `secrets` or `configs` (`section`); each needs a source of content.
pub(crate) fn file_objects(
    root: &Mapping,
    section_name: &'static str,
    project: &str,
    warnings: &mut Vec<Warning>,
) -> Result<BTreeMap<String, FileObject>, LoadError> {
    let mut out = BTreeMap::new();
    for (key, def) in entries(&*section(root, section_name)?) {
        let path = KeyPath::of(&[section_name, &key]);
        let m = map(def, &path)?;
        let (is_external, ext_name) = external(&m, &path, warnings)?;
        let name = opt_string(m.get("name"), &path.key("name"))?.or(ext_name);
        let obj = FileObject {
            content: if section_name == "configs" {
                opt_string(m.get("content"), &path.key("content"))?
            } else {
                None
            },
            environment: opt_string(m.get("environment"), &path.key("environment"))?,
            external: is_external,
            file: opt_string(m.get("file"), &path.key("file"))?,
            labels: opt_map(&m, "labels", &path)?,
            name: full_name(project, &key, name, is_external),
        };
        let sources = [
            obj.content.is_some(),
            obj.environment.is_some(),
            obj.external,
            obj.file.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            1 => {}
            0 => {
                let what = if section_name == "configs" {
                    "file, content, environment or external"
                } else {
                    "file, environment or external"
                };
                return Err(LoadError::new(path, ErrorKind::Incomplete { what }));
            }
            _ => return Err(LoadError::new(path, ErrorKind::AmbiguousSource)),
        }
        out.insert(key, obj);
    }
    Ok(out)
}
