//! `cargo xtask <task>`: build-ebpf, bench.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use xtask::ebpf;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  build-ebpf          install what the eBPF build needs (rust-src, bpf-linker) when
                      missing, then build fizz-ebpf for bpfel-unknown-none
  bench <name> [...]  run a benchmark: vip, up, dns, failover, update, tunnel (these six as root), gossip,
                      placement;
                      arguments after the name go to the benchmark (--help lists them)";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-ebpf") => {
            ebpf::install_prerequisites()?;
            let obj = ebpf::build(&ebpf::workspace_root())?;
            println!("{}", obj.display());
            Ok(())
        }
        Some("bench") => bench(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

/// Benchmarks live in the `fizz-tests` crate next to the test rig they share;
/// this builds them in release mode (with the `fizz` binary for `up`) and
/// runs the one asked for.
fn bench(args: &[String]) -> Result<()> {
    if args.is_empty() {
        bail!("bench needs a name: vip, up, dns, failover, update, tunnel, gossip or placement\n\n{USAGE}");
    }
    ebpf::install_prerequisites()?;
    let root = ebpf::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if ["up", "failover", "update", "tunnel"].contains(&args[0].as_str()) {
        // Those benchmarks run the release `fizz` found next to fizz-bench.
        let status = Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "--release", "--quiet", "-p", "fizz-agent", "--bin", "fizz"])
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("building fizz failed: {status}");
        }
    }
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["run", "--release", "--quiet", "-p", "fizz-tests", "--bin", "fizz-bench", "--"])
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("benchmark failed: {status}");
    }
    Ok(())
}
