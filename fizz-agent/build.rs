//! Embeds the eBPF object in `fizz`. The object is always rebuilt from the
//! current sources through the same routine as `cargo xtask build-ebpf`, so a
//! stale object is never embedded silently. `FIZZ_EBPF_OBJECT` may name a
//! prebuilt object instead (for packaging on a machine without nightly).

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=FIZZ_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fizz.bpf.o");
    let obj = match env::var_os("FIZZ_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let root = xtask::ebpf::workspace_root();
            for src in xtask::ebpf::sources(&root) {
                println!("cargo::rerun-if-changed={}", src.display());
            }
            match xtask::ebpf::build(&root) {
                Ok(obj) => obj,
                Err(e) => {
                    println!("cargo::error={e:#}");
                    std::process::exit(1);
                }
            }
        }
    };
    if let Err(e) = fs::copy(&obj, &out) {
        println!("cargo::error=copying {} to {}: {e}", obj.display(), out.display());
        std::process::exit(1);
    }
}
