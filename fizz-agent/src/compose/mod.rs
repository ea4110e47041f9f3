//! Compose files: loading, interpolation, merging, validation and normalization (pure; the
//! only user of serde_yaml).
//!
//! [`load`] turns `-f` files, the process environment and a `.env` file into a [`Project`]:
//! Fizz's own model of the application, every value in long form. It reads the files it is
//! given (and the env files and `extends` files they name) and nothing else; it talks to no
//! daemon. Problems that make the project unusable are a [`LoadError`] naming the file, line
//! and key; keys Fizz does not know or does not implement are [`Warning`]s, never silently
//! dropped.
//!
//! The pipeline, one file per step:
//! - `load`: orchestration, file reading, placing errors at a file and line;
//! - `dotenv`: `.env` and `env_file:` files; `interpolate`: `${VAR}` and friends;
//! - `keys`: which keys exist and which Fizz honours; `canonical`: short forms to long forms;
//! - `merge`: several files and `extends`; `normalize`, `deploy` and `top`: YAML to the
//!   `model`;
//! - `validate`: references, cycles, names, profiles; `locate`: the line of a key path;
//! - `value`: typed reading of YAML values, durations, sizes, shell words;
//! - `yaml_out`: printing a project for `fizz config`.
//!
//! Honoured service keys: image, command, entrypoint, environment, env_file, ports, expose,
//! volumes, tmpfs, depends_on, healthcheck, deploy (mode, replicas, placement constraints and
//! max_replicas_per_node, resources, restart_policy, update_config, rollback_config, labels,
//! endpoint_mode), scale, restart, labels, networks (aliases, priority), working_dir, user,
//! hostname, domainname, cap_add, cap_drop, privileged, read_only, devices, ulimits, init,
//! stop_signal, stop_grace_period, secrets, configs, profiles, extends, extra_hosts, dns,
//! dns_search, dns_opt, shm_size, sysctls, pid, ipc, tty, stdin_open, group_add,
//! security_opt, logging, and cpus/mem_limit/mem_reservation/pids_limit (folded into
//! `deploy.resources`). `build` and `ipv4_address` are kept in the model but warned about;
//! the other keys Compose defines are warned about and dropped (see `keys.rs`).

mod canonical;
mod deploy;
mod dotenv;
mod error;
mod interpolate;
mod keys;
mod load;
mod locate;
mod merge;
pub mod model;
mod normalize;
mod top;
mod validate;
mod value;
mod yaml_out;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use error::{ErrorKind, KeyPath, LoadError, Location, Seg, Warning, WarningKind};
pub use interpolate::{interpolate, InterpolateError, Interpolated};
pub use load::ReadFile;
pub use model::*;

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The Compose files, merged in order; the first one's directory is the project directory.
    pub files: Vec<PathBuf>,
    /// The project name (`-p`); else `COMPOSE_PROJECT_NAME`, the `name:` key, or the project
    /// directory's name.
    pub project_name: Option<String>,
    /// Active profiles (`--profile`; `*` enables all); when empty, `COMPOSE_PROFILES`.
    pub profiles: Vec<String>,
    /// The process environment, passed in so that loading stays pure. It overrides `.env`.
    pub env: BTreeMap<String, String>,
    /// The `.env` file; by default `.env` in the project directory, if it exists.
    pub env_file: Option<PathBuf>,
}

/// A loaded project and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The normalized project (enabled services only).
    pub project: Project,
    /// Unknown keys, unsupported keys, unset variables and the like, in the order found.
    pub warnings: Vec<Warning>,
}

/// Loads a Compose project from the file system.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    load_with(opts, &|path| std::fs::read_to_string(path))
}

/// Loads a Compose project, reading every file through `read`.
pub fn load_with(opts: &LoadOptions, read: ReadFile<'_>) -> Result<Loaded, LoadError> {
    load::load(opts, read)
}

/// The project as YAML, in the style of `docker compose config` (keys sorted, long forms).
pub fn to_yaml(project: &Project) -> String {
    yaml_out::to_yaml(project)
}

/// The project as pretty-printed JSON.
pub fn to_json(project: &Project) -> String {
    serde_json::to_string_pretty(project)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot print the project: {e}\"}}"))
}
