//! What loading a Compose project can report: [`LoadError`] (the load fails) and [`Warning`]
//! (the load goes on), both naming the file, the line when one can be found, and the key path.
//!
//! This module only defines the types; where in the source a key sits is `locate`'s business.

use std::fmt;

/// One step of a [`KeyPath`]: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A key of a mapping.
    Key(String),
    /// An index into a sequence.
    Index(usize),
}

/// Where a value sits in a Compose document, e.g. `services.web.ports[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The path of the document's root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// A path made of keys only.
    pub fn of(keys: &[&str]) -> Self {
        Self(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
    }

    /// This path, one key deeper.
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        Self(segs)
    }

    /// This path, one sequence index deeper.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    /// Whether this is the root path.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where in which file something was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The file, as it was named to the loader.
    pub file: Option<String>,
    /// The 1-based line, when it could be found.
    pub line: Option<usize>,
}

/// Writes `file:line: path: ` (each part only when known).
fn write_prefix(f: &mut fmt::Formatter<'_>, at: &Location, path: &KeyPath) -> fmt::Result {
    match (&at.file, at.line) {
        (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
        (Some(file), None) => write!(f, "{file}: ")?,
        _ => {}
    }
    if !path.is_empty() {
        write!(f, "{path}: ")?;
    }
    Ok(())
}

/// A Compose project that cannot be loaded: where, and why.
#[derive(Debug)]
pub struct LoadError {
    /// The file and line the problem was found at.
    pub at: Location,
    /// The key the problem is about (empty when it is about a whole file).
    pub path: KeyPath,
    /// What is wrong (boxed to keep `Result<_, LoadError>` small).
    pub kind: Box<ErrorKind>,
}

impl LoadError {
    /// An error about the value at `path`, its file and line to be found later.
    pub(crate) fn new(path: KeyPath, kind: ErrorKind) -> Self {
        Self {
            at: Location::default(),
            path,
            kind: Box::new(kind),
        }
    }

    /// An error about a whole file.
    pub(crate) fn in_file(file: &str, line: Option<usize>, kind: ErrorKind) -> Self {
        Self {
            at: Location {
                file: Some(file.to_string()),
                line,
            },
            path: KeyPath::root(),
            kind: Box::new(kind),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_prefix(f, &self.at, &self.path)?;
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for LoadError {}

/// Why a Compose project cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The loader was given no Compose file.
    #[error("no compose file given")]
    NoFiles,
    /// A Compose file, env file or extended file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file, as named in the options or resolved from the Compose file.
        file: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The text is not valid YAML.
    #[error("invalid yaml: {message}")]
    Yaml {
        /// The parser's message.
        message: String,
    },
    /// A value has the wrong type.
    #[error("expected {expected}, got {got}")]
    Type {
        /// What the key takes.
        expected: &'static str,
        /// What was found.
        got: &'static str,
    },
    /// A value has the right type but is not one the key accepts.
    #[error("invalid value {value:?}: {reason}")]
    InvalidValue {
        /// The value, as written.
        value: String,
        /// What the key accepts.
        reason: String,
    },
    /// A key that must be present is missing.
    #[error("missing required key {key:?}")]
    MissingKey {
        /// The missing key.
        key: &'static str,
    },
    /// A `${VAR?message}` or `${VAR:?message}` variable has no value.
    #[error("required variable {var} is missing a value{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    MissingVariable {
        /// The variable.
        var: String,
        /// The message written after `?`.
        message: String,
    },
    /// A `$` that does not start a valid interpolation.
    #[error("invalid interpolation format in {value:?}: {reason} (write $$ for a literal $)")]
    Interpolation {
        /// The string being interpolated.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A port mapping that cannot be parsed.
    #[error("invalid port {spec:?}: {reason}")]
    InvalidPort {
        /// The port spec, as written.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A volume or mount spec that cannot be parsed.
    #[error("invalid volume {spec:?}: {reason}")]
    InvalidVolume {
        /// The volume spec, as written.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration such as `1m30s` that cannot be parsed.
    #[error("invalid duration {value:?}: {reason}")]
    InvalidDuration {
        /// The duration, as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A byte size such as `512m` that cannot be parsed.
    #[error(
        "invalid size {value:?}: expected a number of bytes with an optional unit (b, k, m, g, t)"
    )]
    InvalidSize {
        /// The size, as written.
        value: String,
    },
    /// A project, service, network, volume, secret or config name that is not allowed.
    #[error("invalid {what} name {name:?}: {rule}")]
    InvalidName {
        /// What is being named.
        what: &'static str,
        /// The name.
        name: String,
        /// What names may look like.
        rule: &'static str,
    },
    /// A line of an env file that cannot be parsed.
    #[error("invalid env file line {text:?}: {reason}")]
    EnvFileLine {
        /// The line.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `depends_on` names a service that does not exist.
    #[error("service {service:?} depends on undefined service {dependency:?}")]
    UnknownDependency {
        /// The dependent service.
        service: String,
        /// The missing service.
        dependency: String,
    },
    /// `depends_on` names a service that exists but no active profile enables.
    #[error("service {service:?} depends on {dependency:?}, which is not enabled by the active profiles (enable one of its profiles, or mark the dependency `required: false`)")]
    DisabledDependency {
        /// The dependent service.
        service: String,
        /// The disabled service.
        dependency: String,
    },
    /// The `depends_on` graph has a cycle.
    #[error("dependency cycle: {}", .cycle.join(" -> "))]
    DependencyCycle {
        /// The services on the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// A service uses a network, volume, secret or config that is not declared at the top level.
    #[error("{what} {name:?} is used but not declared in the top-level `{section}` section")]
    Undeclared {
        /// Network, volume, secret or config.
        what: &'static str,
        /// Its name.
        name: String,
        /// The top-level section it belongs in.
        section: &'static str,
    },
    /// `scale` and `deploy.replicas` disagree.
    #[error("scale {scale} conflicts with deploy.replicas {replicas}")]
    ScaleConflict {
        /// The value of `scale`.
        scale: u64,
        /// The value of `deploy.replicas`.
        replicas: u64,
    },
    /// Two keys that set the same thing disagree (e.g. `mem_limit` and `deploy.resources.limits.memory`).
    #[error("conflicts with {other}")]
    Conflict {
        /// The other key.
        other: &'static str,
    },
    /// `extends` names a service that does not exist.
    #[error("no service {service:?} to extend in {file}")]
    ExtendsUnknown {
        /// The service to extend.
        service: String,
        /// The file it was looked for in.
        file: String,
    },
    /// A chain of `extends` comes back to itself.
    #[error("extends cycle: {}", .chain.join(" -> "))]
    ExtendsCycle {
        /// The services on the cycle, as `file:service`.
        chain: Vec<String>,
    },
    /// Two services publish the same ingress port.
    #[error("published port {port} is already published by service {other:?} (ingress ports are open on every node)")]
    PortConflict {
        /// The port.
        port: u16,
        /// The service that publishes it first.
        other: String,
    },
    /// A secret or config without a source of content.
    #[error("needs one of {what}")]
    Incomplete {
        /// The keys that can give it content.
        what: &'static str,
    },
    /// A secret or config with more than one source of content.
    #[error("sets more than one of file, content, environment and external")]
    AmbiguousSource,
    /// A service names neither an image nor a build.
    #[error("service {service:?} has neither an image nor a build context")]
    NoImage {
        /// The service.
        service: String,
    },
}

/// A problem that does not stop the load: the value is ignored or taken as Fizz understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file and line it was found at.
    pub at: Location,
    /// The key it is about.
    pub path: KeyPath,
    /// What happened.
    pub kind: WarningKind,
}

impl Warning {
    /// A warning about the value at `path`, its file and line to be found later.
    pub(crate) fn new(path: KeyPath, kind: WarningKind) -> Self {
        Self {
            at: Location::default(),
            path,
            kind,
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_prefix(f, &self.at, &self.path)?;
        write!(f, "{}", self.kind)
    }
}

/// What a [`Warning`] is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarningKind {
    /// A key that Compose does not define (extension keys, `x-*`, are ignored silently).
    #[error("unknown key, ignored")]
    UnknownKey,
    /// A key Compose defines but Fizz does not implement.
    #[error("not supported by Fizz yet, ignored{}", .hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Unsupported {
        /// What Fizz does instead, when that helps.
        hint: Option<&'static str>,
    },
    /// A value Compose accepts that Fizz takes in a narrower sense.
    #[error("{0}")]
    Narrowed(String),
    /// A key that Compose no longer uses.
    #[error("obsolete, ignored")]
    Obsolete,
    /// A variable used without a default is not set.
    #[error("variable {var} is not set, substituting an empty string")]
    UnsetVariable {
        /// The variable.
        var: String,
    },
}
