//! The options `fizz up` and `fizz config` share: which Compose files, which
//! project, which profiles; and loading them.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::compose::{self, LoadOptions, Project};

#[derive(Debug, clap::Args)]
pub struct ComposeArgs {
    /// Compose files, merged in order (default: compose.yaml, compose.yml,
    /// docker-compose.yml or docker-compose.yaml here).
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Project name (default: `name:`, else the directory's name).
    #[arg(short = 'p', long = "project-name")]
    pub project: Option<String>,
    /// Enable services of these profiles.
    #[arg(long)]
    pub profile: Vec<String>,
    /// An env file instead of `.env` beside the first Compose file.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
}

const DEFAULT_FILES: &[&str] = &["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];

impl ComposeArgs {
    /// Loads and validates the project; prints warnings to stderr.
    pub fn load(&self) -> Result<Project> {
        let files = if self.files.is_empty() {
            match DEFAULT_FILES.iter().map(PathBuf::from).find(|p| p.is_file()) {
                Some(f) => vec![f],
                None => bail!("no Compose file here ({}); name one with -f", DEFAULT_FILES.join(", ")),
            }
        } else {
            self.files.clone()
        };
        let opts = LoadOptions {
            files,
            project_name: self.project.clone(),
            profiles: self.profile.clone(),
            env: std::env::vars().collect(),
            env_file: self.env_file.clone(),
        };
        let loaded = compose::load(&opts)?;
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        Ok(loaded.project)
    }
}
