//! Building `fizz-ebpf` for `bpfel-unknown-none` with the nightly toolchain,
//! and installing what that needs (rust-src, bpf-linker) when it is missing.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The eBPF target triple.
pub const TARGET: &str = "bpfel-unknown-none";

/// The toolchain that builds the eBPF crate (`-Z build-std` needs nightly).
pub const TOOLCHAIN: &str = "nightly";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where the eBPF build writes its artefacts: a target directory of its own,
/// inside the workspace's, so that a nested build from `build.rs` never waits
/// on the lock of the outer build.
pub fn target_dir(root: &Path) -> PathBuf {
    root.join("target").join("ebpf")
}

/// Environment variables that an outer cargo sets for build scripts and that
/// would otherwise leak into the nested nightly build and break it.
const LEAKY_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTUP_TOOLCHAIN",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO",
];

fn cargo_nightly() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo"]);
    for var in LEAKY_ENV {
        cmd.env_remove(var);
    }
    // Cargo sets CARGO_CFG_*, CARGO_FEATURE_*, CARGO_PKG_* and so on for build
    // scripts; none of them belongs to the nested build.
    for (key, _) in env::vars_os() {
        if let Some(k) = key.to_str() {
            if k.starts_with("CARGO_CFG_")
                || k.starts_with("CARGO_FEATURE_")
                || k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST")
                || k.starts_with("DEP_")
            {
                cmd.env_remove(&key);
            }
        }
    }
    cmd
}

/// Checks that the nightly toolchain, its rust-src and bpf-linker are there,
/// without installing anything. Returns what is missing, as advice.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    match Command::new("rustup").args(["component", "list", "--installed", "--toolchain", TOOLCHAIN]).output() {
        Ok(out) if out.status.success() => {
            if !String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
                missing.push(format!("rust-src for the {TOOLCHAIN} toolchain"));
            }
        }
        _ => missing.push(format!("the {TOOLCHAIN} toolchain (rustup)")),
    }
    if find_bpf_linker().is_none() {
        missing.push("bpf-linker".to_string());
    }
    missing
}

fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("bpf-linker")).find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Installs rust-src for the nightly toolchain and bpf-linker (built against
/// the nightly's own libLLVM, whose major version is read from `rustc -vV`),
/// each only when missing.
pub fn install_prerequisites() -> Result<()> {
    let missing = missing_prerequisites();
    if missing.iter().any(|m| m.contains("rust-src") || m.contains("toolchain")) {
        eprintln!("installing rust-src for {TOOLCHAIN}");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]))?;
    }
    if find_bpf_linker().is_none() {
        install_bpf_linker()?;
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    let sysroot = Command::new("rustc").args([&format!("+{TOOLCHAIN}"), "--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim());
    let vv = Command::new("rustc").args([&format!("+{TOOLCHAIN}"), "-vV"]).output()?;
    let vv = String::from_utf8(vv.stdout)?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc +nightly -vV` names no LLVM version")?
        .to_string();
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")) || n.starts_with(&format!("libLLVM-{major}")))
        })
        .with_context(|| format!("no libLLVM {major} in {}", lib.display()))?;
    let home = env::var_os("HOME").context("HOME is not set")?;
    // The prefix must outlive the install: bpf-linker loads libLLVM through it.
    let prefix = PathBuf::from(home).join(".local/rust-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    eprintln!("building bpf-linker against {} (LLVM {major})", llvm.display());
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "bpf-linker", "--locked", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix);
    for var in LEAKY_ENV {
        cmd.env_remove(var);
    }
    run(&mut cmd)
}

/// Builds the eBPF object and returns its path. `release` selects the
/// profile (the agent always embeds the release build: the verifier needs the
/// optimised code).
pub fn build(root: &Path) -> Result<PathBuf> {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        bail!(
            "cannot build the eBPF programs: missing {}; run `cargo xtask build-ebpf` once, which installs them",
            missing.join(", ")
        );
    }
    let crate_dir = root.join("fizz-ebpf");
    let target = target_dir(root);
    let mut cmd = cargo_nightly();
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target);
    if let Some(linker) = find_bpf_linker() {
        if let Some(dir) = linker.parent() {
            let path = env::var_os("PATH").unwrap_or_default();
            let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
            dirs.insert(0, dir.to_path_buf());
            cmd.env("PATH", env::join_paths(dirs)?);
        }
    }
    run(&mut cmd).context("building fizz-ebpf")?;
    let obj = target.join(TARGET).join("release").join("fizz");
    if !obj.is_file() {
        bail!("the eBPF build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}

/// The sources whose change must rebuild the object (for `rerun-if-changed`).
pub fn sources(root: &Path) -> Vec<PathBuf> {
    vec![
        root.join("fizz-ebpf/src"),
        root.join("fizz-ebpf/Cargo.toml"),
        root.join("fizz-ebpf/Cargo.lock"),
        root.join("fizz-ebpf/.cargo/config.toml"),
        root.join("fizz-common/src"),
        root.join("fizz-common/Cargo.toml"),
    ]
}
