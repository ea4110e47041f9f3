//! Shared build routines. `ebpf::build` is the one way the eBPF object is
//! made: `cargo xtask build-ebpf` and the agent's `build.rs` both call it, so
//! the object embedded in `fizz` is always built from the current sources.

pub mod ebpf;
