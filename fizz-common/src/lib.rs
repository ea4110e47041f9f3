//! Types shared between the kernel programs (`fizz-ebpf`) and the agent.
//!
//! Everything here is part of the kernel/userspace ABI: map keys and values are
//! `#[repr(C)]`, made of fixed-width integers with explicit padding, with
//! network-order fields named `_be`. Each type has a compile-time size assertion
//! so that a change on one side cannot silently disagree with the other.
//!
//! This crate must stay `no_std` and free of logic beyond constructors: the
//! kernel side links it into an eBPF object.
#![no_std]

pub mod datapath;

pub use datapath::*;
