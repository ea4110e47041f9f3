//! Privileged integration tests: real eBPF programs, network namespaces and
//! veths. One test binary; every test makes uniquely named objects and
//! removes them through guards, so tests run in parallel and leave nothing.

mod agent;
mod cli;
mod cluster;
mod cross_node;
mod docker;
mod prog;
mod sequence;
mod vip;
