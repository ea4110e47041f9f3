//! What the benchmarks need from the host: Debian packages, installed with
//! apt-get when one of their programs is missing, saying what is done (as
//! `cargo xtask build-ebpf` installs what the eBPF build needs), scratch
//! directories, and CPUs kept out of idle for measurements that ask it.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

/// The executable `program` in a directory of `PATH` (or the sbin
/// directories, which a non-login root shell may lack).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Installs the package of every `(program, package)` whose program is
/// missing; fails when a program is still missing afterwards.
pub fn ensure(needed: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = needed.iter().filter(|(p, _)| find(p).is_none()).map(|(_, pkg)| *pkg).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}: apt-get install -y --no-install-recommends {0}", missing.join(" "));
    if let Err(e) = apt_install(&missing) {
        eprintln!("{e:#}; updating the package lists (apt-get update) and trying again");
        run(Command::new("apt-get").arg("update"))?;
        apt_install(&missing)?;
    }
    for (program, package) in needed {
        if find(program).is_none() {
            bail!("the package {package} is installed but its program {program} is still missing");
        }
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A scratch directory, removed with its content on drop.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    /// Makes `<temp dir>/<name>`.
    pub fn new(name: &str) -> Result<WorkDir> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }

    /// A path inside.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Keeps every CPU out of its sleep states while held: the PM QoS request
/// that latency benchmarks make (`/dev/cpu_dma_latency` = 0, as tuned's
/// network-latency profile does), released when dropped. An idle CPU of a
/// virtual machine halts, and each wake-up exits to the hypervisor, which
/// costs more than a packet's path and leaves the caches cold; with this
/// held, a measurement shows the path itself.
pub struct NoIdle(#[allow(dead_code)] std::fs::File);

impl NoIdle {
    pub fn hold() -> Result<NoIdle> {
        use std::io::Write as _;
        let path = "/dev/cpu_dma_latency";
        let mut f = std::fs::OpenOptions::new().write(true).open(path).with_context(|| format!("opening {path}"))?;
        f.write_all(&0i32.to_ne_bytes()).with_context(|| format!("writing {path}"))?;
        Ok(NoIdle(f))
    }
}
