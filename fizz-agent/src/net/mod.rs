//! Node networking: the eBPF datapath (`ebpf`), and the pure service and
//! conntrack logic it is driven by (`service`, `conntrack`).

pub mod conntrack;
pub mod ebpf;
pub mod inspect;
pub mod netns;
pub mod plumb;
pub mod service;
pub mod wireguard;

pub use ebpf::{Datapath, DatapathConfig};
pub use service::{Proto, ServiceSpec};
