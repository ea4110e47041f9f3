//! The benchmarks behind `cargo xtask bench`, built on the test rig of
//! `fizz_tests`: simulated nodes and containers as network namespaces.

pub mod dns;
pub mod failover;
pub mod gossip;
pub mod host;
pub mod interrupt;
pub mod load;
pub mod placement;
pub mod plot;
pub mod proxy;
pub mod report;
pub mod servers;
pub mod topology;
pub mod tunnel;
pub mod up;
pub mod update;
pub mod vip;
