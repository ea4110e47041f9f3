//! Fizz: Docker Compose applications across a cluster of Docker hosts, with
//! service load-balancing and container routing in eBPF.
//!
//! This crate is both the `fizz` command line and the per-host agent. See
//! `ARCHITECTURE.md` at the repository root for the map of modules and the
//! rules between them.

pub mod agent;
pub mod api;
pub mod cli;
pub mod compose;
pub mod dev;
pub mod dns;
pub mod docker;
pub mod gossip;
pub mod hash;
pub mod net;
pub mod state;
