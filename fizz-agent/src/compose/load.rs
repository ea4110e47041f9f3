//! The loading pipeline: read the `.env` file and each Compose file, parse (anchors and `<<`
//! merge keys applied), interpolate, check keys, rewrite into long form, resolve `extends`,
//! merge the files in order, then build and check the model and apply profiles.
//!
//! Every error and warning leaves here placed at a file and, when it can be found, a line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::canonical::{self, clean};
use super::dotenv;
use super::error::{ErrorKind, KeyPath, LoadError, Location, Warning, WarningKind};
use super::interpolate::interpolate_tree;
use super::keys;
use super::locate::{locate, Source};
use super::merge::{extend_service, merge_documents};
use super::model::{Network, Project};
use super::normalize;
use super::top;
use super::validate;
use super::value::{map, scalar_key, string, untag};
use super::{LoadOptions, Loaded};

/// Reads a file; the one way the loader touches the file system.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// One parsed file: a `-f` file or a file named by `extends`.
struct Doc {
    /// Absolute path, to load each file once.
    path: PathBuf,
    /// Its index in `Loader::sources`.
    source: usize,
    /// The directory its relative paths are resolved against.
    base_dir: PathBuf,
    /// The document after `<<` merges (services not yet interpolated).
    raw: Mapping,
    /// Services already interpolated and in long form.
    services: BTreeMap<String, Value>,
}

struct Loader<'a> {
    read: ReadFile<'a>,
    env: BTreeMap<String, String>,
    sources: Vec<Source>,
    warnings: Vec<Warning>,
    docs: Vec<Doc>,
}

/// Sets the file and line of an error found in `sources`, unless it has them already.
fn place(mut err: LoadError, sources: &[&Source]) -> LoadError {
    if err.at.file.is_none() {
        err.at = locate(sources, &err.path);
    }
    err
}

fn place_warning(mut w: Warning, sources: &[&Source]) -> Warning {
    if w.at.file.is_none() {
        w.at = locate(sources, &w.path);
    }
    w
}

/// The message of a YAML error, without the position it repeats.
fn yaml_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(l) => msg.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        ),
        None => msg,
    }
}

impl Loader<'_> {
    fn lookup(env: &BTreeMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
        move |name: &str| env.get(name).cloned()
    }

    /// Reads and parses `path` (once), shown to the user as `name`.
    fn load_doc(
        &mut self,
        path: &Path,
        name: String,
        base_dir: PathBuf,
    ) -> Result<usize, LoadError> {
        let abs = clean(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        if let Some(i) = self.docs.iter().position(|d| d.path == abs) {
            return Ok(i);
        }
        let text = (self.read)(path).map_err(|source| {
            LoadError::new(
                KeyPath::root(),
                ErrorKind::Read {
                    file: name.clone(),
                    source,
                },
            )
        })?;
        let mut value: Value = serde_yaml::from_str(&text).map_err(|e| {
            LoadError::in_file(
                &name,
                e.location().map(|l| l.line()),
                ErrorKind::Yaml {
                    message: yaml_message(&e),
                },
            )
        })?;
        value.apply_merge().map_err(|e| {
            LoadError::in_file(
                &name,
                None,
                ErrorKind::Yaml {
                    message: yaml_message(&e),
                },
            )
        })?;
        let raw = match value {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            other => {
                return Err(LoadError::in_file(
                    &name,
                    None,
                    ErrorKind::Type {
                        expected: "a mapping at the top level",
                        got: super::value::type_name(&other),
                    },
                ))
            }
        };
        self.sources.push(Source { name, text });
        self.docs.push(Doc {
            path: abs,
            source: self.sources.len() - 1,
            base_dir,
            raw,
            services: BTreeMap::new(),
        });
        Ok(self.docs.len() - 1)
    }

    /// Places errors and warnings found in document `doc`.
    fn in_doc<T>(
        &mut self,
        doc: usize,
        found: Vec<Warning>,
        result: Result<T, LoadError>,
    ) -> Result<T, LoadError> {
        let src = &self.sources[self.docs[doc].source];
        self.warnings
            .extend(found.into_iter().map(|w| place_warning(w, &[src])));
        result.map_err(|e| place(e, &[src]))
    }

    /// The names of the services of document `doc`.
    fn service_names(&self, doc: usize) -> Result<Vec<String>, LoadError> {
        let services = self.docs[doc].raw.get("services").unwrap_or(&Value::Null);
        let m = map(services, &KeyPath::of(&["services"]))?;
        Ok(m.keys().map(scalar_key).collect())
    }

    /// The top level of a `-f` document, outside `services`: interpolated, keys checked, paths resolved.
    fn top_level(&mut self, doc: usize) -> Result<Mapping, LoadError> {
        let mut found = Vec::new();
        let mut top = self.docs[doc].raw.clone();
        top.shift_remove("services");
        let result = (|| {
            let lookup = Self::lookup(&self.env);
            for (k, v) in top.iter_mut() {
                let key = scalar_key(k);
                if !key.starts_with("x-") {
                    interpolate_tree(v, &KeyPath::of(&[&key]), &lookup, &mut found)?;
                }
            }
            found.extend(keys::check_file(&Value::Mapping(top.clone())));
            let home = self.env.get("HOME").map(String::as_str);
            let ctx = canonical::Ctx {
                base_dir: &self.docs[doc].base_dir,
                home,
                warnings: &mut found,
            };
            canonical::top_level(&mut top, &ctx)?;
            top.retain(|k, _| !scalar_key(k).starts_with("x-"));
            Ok(top)
        })();
        self.in_doc(doc, found, result)
    }

    /// Service `name` of document `doc`, interpolated, checked and in long form.
    fn service(&mut self, doc: usize, name: &str) -> Result<Value, LoadError> {
        if let Some(v) = self.docs[doc].services.get(name) {
            return Ok(v.clone());
        }
        let path = KeyPath::of(&["services", name]);
        let mut found = Vec::new();
        let mut value = self.docs[doc]
            .raw
            .get("services")
            .and_then(|s| untag(s).get(name))
            .cloned()
            .unwrap_or(Value::Null);
        let result = (|| {
            interpolate_tree(&mut value, &path, &Self::lookup(&self.env), &mut found)?;
            found.extend(keys::check_service(&value, &path));
            let home = self.env.get("HOME").map(String::as_str);
            let mut ctx = canonical::Ctx {
                base_dir: &self.docs[doc].base_dir,
                home,
                warnings: &mut found,
            };
            canonical::service(&value, &path, &mut ctx)
        })();
        let v = self.in_doc(doc, found, result)?;
        self.docs[doc].services.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// Service `name` of document `doc` with its `extends` chain applied.
    fn resolved(
        &mut self,
        doc: usize,
        name: &str,
        stack: &mut Vec<(usize, String)>,
    ) -> Result<Value, LoadError> {
        let svc = self.service(doc, name)?;
        let Some(ext) = untag(&svc).get("extends").cloned() else {
            return Ok(svc);
        };
        let path = KeyPath::of(&["services", name, "extends"]);
        let result = (|| {
            let em = map(&ext, &path)?;
            let base = match em.get("service") {
                Some(s) => string(s, &path.key("service"))?,
                None => {
                    return Err(LoadError::new(
                        path.clone(),
                        ErrorKind::MissingKey { key: "service" },
                    ))
                }
            };
            let base_doc = match em.get("file") {
                Some(f) => {
                    let file = PathBuf::from(string(f, &path.key("file"))?);
                    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                    self.load_doc(&file, file.display().to_string(), dir)
                        .map_err(|mut e| {
                            // An unreadable file is the fault of the `extends` that names it.
                            if matches!(*e.kind, ErrorKind::Read { .. }) {
                                e.path = path.key("file");
                            }
                            e
                        })?
                }
                None => doc,
            };
            if !self.service_names(base_doc)?.contains(&base) {
                let file = self.sources[self.docs[base_doc].source].name.clone();
                return Err(LoadError::new(
                    path.key("service"),
                    ErrorKind::ExtendsUnknown {
                        service: base,
                        file,
                    },
                ));
            }
            stack.push((doc, name.to_string()));
            if stack.iter().any(|(d, s)| *d == base_doc && *s == base) {
                let mut chain: Vec<String> = stack.iter().map(|(_, s)| s.clone()).collect();
                chain.push(base);
                return Err(LoadError::new(
                    path.clone(),
                    ErrorKind::ExtendsCycle { chain },
                ));
            }
            let base_value = self.resolved(base_doc, &base, stack)?;
            stack.pop();
            Ok(extend_service(&base_value, &svc))
        })();
        self.in_doc(doc, Vec::new(), result)
    }

    /// A `-f` document in long form, with `extends` resolved.
    fn document(&mut self, doc: usize) -> Result<Mapping, LoadError> {
        let mut top = self.top_level(doc)?;
        let names = self
            .service_names(doc)
            .map_err(|e| place(e, &[&self.sources[self.docs[doc].source]]))?;
        let mut services = Mapping::new();
        for name in names {
            self.service(doc, &name)?;
        }
        for name in self.service_names(doc)? {
            let v = self.resolved(doc, &name, &mut Vec::new())?;
            services.insert(Value::String(name), v);
        }
        top.insert(Value::String("services".into()), Value::Mapping(services));
        Ok(top)
    }
}

/// The project's variables: the `.env` file under the process environment.
fn project_env(
    opts: &LoadOptions,
    project_dir: &Path,
    read: ReadFile<'_>,
    warnings: &mut Vec<Warning>,
) -> Result<BTreeMap<String, String>, LoadError> {
    let (path, explicit) = match &opts.env_file {
        Some(p) => (p.clone(), true),
        None => (project_dir.join(".env"), false),
    };
    let name = path.display().to_string();
    let mut env = BTreeMap::new();
    match read(&path) {
        Ok(text) => {
            let mut unset = Vec::new();
            let process = |k: &str| opts.env.get(k).cloned();
            let vars = dotenv::parse(&text, &process, &mut unset)
                .map_err(|e| LoadError::in_file(&name, Some(e.line), e.kind))?;
            for (line, var) in unset {
                warnings.push(Warning {
                    at: Location {
                        file: Some(name.clone()),
                        line: Some(line),
                    },
                    path: KeyPath::root(),
                    kind: WarningKind::UnsetVariable { var },
                });
            }
            env.extend(vars.into_iter().map(|v| (v.key, v.value)));
        }
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(LoadError::new(
                KeyPath::root(),
                ErrorKind::Read {
                    file: name.clone(),
                    source,
                },
            ))
        }
    }
    env.extend(opts.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

/// Loads a project, reading files with `read`.
pub(crate) fn load(opts: &LoadOptions, read: ReadFile<'_>) -> Result<Loaded, LoadError> {
    let first = opts
        .files
        .first()
        .ok_or_else(|| LoadError::new(KeyPath::root(), ErrorKind::NoFiles))?;
    let first_abs = clean(&std::path::absolute(first).unwrap_or_else(|_| first.clone()));
    let project_dir = first_abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut warnings = Vec::new();
    let env = project_env(opts, &project_dir, read, &mut warnings)?;
    let mut loader = Loader {
        read,
        env,
        sources: Vec::new(),
        warnings,
        docs: Vec::new(),
    };

    let mut main_docs = Vec::new();
    for file in &opts.files {
        main_docs.push(loader.load_doc(file, file.display().to_string(), project_dir.clone())?);
    }
    let mut merged = Mapping::new();
    for &doc in &main_docs {
        let d = loader.document(doc)?;
        merged = merge_documents(merged, &d);
    }

    // Later `-f` files take precedence when placing; files reached by `extends` come first.
    let mut order: Vec<usize> = (0..loader.sources.len())
        .filter(|i| !main_docs.iter().any(|d| loader.docs[*d].source == *i))
        .collect();
    order.extend(main_docs.iter().map(|d| loader.docs[*d].source));
    let sources: Vec<&Source> = order.iter().map(|i| &loader.sources[*i]).collect();

    let result = build(
        opts,
        &loader.env,
        &project_dir,
        &merged,
        read,
        &mut loader.warnings,
    );
    let mut placed: Vec<Warning> = Vec::new();
    for w in std::mem::take(&mut loader.warnings) {
        let w = place_warning(w, &sources);
        if !placed.contains(&w) {
            placed.push(w);
        }
    }
    // By file (in the order they were read), then by line.
    let file_rank = |w: &Warning| {
        let name = w.at.file.as_deref();
        loader
            .sources
            .iter()
            .position(|s| Some(s.name.as_str()) == name)
            .unwrap_or(usize::MAX)
    };
    placed.sort_by_key(|w| (file_rank(w), w.at.line.unwrap_or(0)));
    let project = result.map_err(|e| place(e, &sources))?;
    Ok(Loaded {
        project,
        warnings: placed,
    })
}

/// The name: the option, `COMPOSE_PROJECT_NAME`, the `name:` key, or the directory's name.
fn project_name(
    opts: &LoadOptions,
    env: &BTreeMap<String, String>,
    dir: &Path,
    merged: &Mapping,
) -> Result<String, LoadError> {
    if let Some(name) = &opts.project_name {
        validate::project_name(name, KeyPath::root())?;
        return Ok(name.clone());
    }
    if let Some(name) = env.get("COMPOSE_PROJECT_NAME").filter(|n| !n.is_empty()) {
        validate::project_name(name, KeyPath::root())?;
        return Ok(name.clone());
    }
    if let Some(v) = merged
        .get("name")
        .filter(|v| !matches!(untag(v), Value::Null))
    {
        let name = string(v, &KeyPath::of(&["name"]))?;
        validate::project_name(&name, KeyPath::of(&["name"]))?;
        return Ok(name);
    }
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    validate::project_name_from_dir(&dir_name).ok_or_else(|| {
        LoadError::new(
            KeyPath::root(),
            ErrorKind::InvalidName {
                what: "project",
                name: dir_name,
                rule: "name the project with -p or a top-level `name:`",
            },
        )
    })
}

/// The model from the merged document.
fn build(
    opts: &LoadOptions,
    env: &BTreeMap<String, String>,
    dir: &Path,
    merged: &Mapping,
    read: ReadFile<'_>,
    warnings: &mut Vec<Warning>,
) -> Result<Project, LoadError> {
    let name = project_name(opts, env, dir, merged)?;
    let mut project = Project {
        networks: top::networks(merged, &name, warnings)?,
        volumes: top::volumes(merged, &name, warnings)?,
        secrets: top::file_objects(merged, "secrets", &name, warnings)?,
        configs: top::file_objects(merged, "configs", &name, warnings)?,
        name,
        services: BTreeMap::new(),
    };
    for (section, keys) in [
        ("network", project.networks.keys().collect::<Vec<_>>()),
        ("volume", project.volumes.keys().collect()),
        ("secret", project.secrets.keys().collect()),
        ("config", project.configs.keys().collect()),
    ] {
        for key in keys {
            validate::name(section, key, KeyPath::of(&[&format!("{section}s"), key]))?;
        }
    }
    let mut cx = normalize::Ctx {
        project: &project.name,
        env,
        read,
        warnings: Vec::new(),
    };
    let mut all = BTreeMap::new();
    for (svc_name, v) in super::value::entries(&*normalize::section(merged, "services")?) {
        validate::name("service", &svc_name, KeyPath::of(&["services", &svc_name]))?;
        let svc = normalize::service(&svc_name, v, &mut cx)?;
        all.insert(svc_name, svc);
    }
    warnings.append(&mut cx.warnings);
    validate::references(&project, &all)?;
    validate::no_cycles(&all)?;
    let active: Vec<String> = if opts.profiles.is_empty() {
        env.get("COMPOSE_PROFILES")
            .map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        opts.profiles.clone()
    };
    project.services = validate::apply_profiles(all, &active)?;
    validate::no_port_conflicts(&project.services)?;
    if project
        .services
        .values()
        .any(|s| s.networks.contains_key("default"))
        && !project.networks.contains_key("default")
    {
        let network = Network {
            name: format!("{}_default", project.name),
            ..Network::default()
        };
        project.networks.insert("default".to_string(), network);
    }
    Ok(project)
}
