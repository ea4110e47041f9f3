//! Cluster membership: which nodes are in the cluster, whether they are alive, and how to
//! reach them.
//!
//! This module owns the gossip protocol: SWIM through the `foca` crate (its only user), over
//! UDP (port [`DEFAULT_PORT`] by default), every packet sealed with a key derived from the
//! cluster secret ([`crypto`]) and opened before foca decodes anything. A host without the key
//! can neither join nor disturb the cluster: its packets are dropped and counted.
//!
//! - [`crypto`]: the packet envelope (key derivation, sealing, freshness and replay checks).
//!   Pure.
//! - [`Membership`]: the state machine, foca plus Fizz's view of the members ([`MemberView`]),
//!   fed packets and timeouts with the time, answering with packets to send and events. Pure.
//! - [`sim`]: whole clusters of `Membership`s in memory with a simulated clock and network,
//!   for the tests and `cargo xtask bench gossip`.
//! - [`runtime`]: the task that owns the UDP socket and the clock and drives a `Membership`;
//!   the rest of the agent talks to it through a [`GossipHandle`].
//!
//! It must not: expose foca's types (others see [`MemberView`], [`Event`], [`Stats`]), decide
//! anything from membership (placement and WireGuard peers belong to their own modules, which
//! read the member list), or do IO other than its socket and, when asked, the generation
//! file.
//!
//! A node is its name plus a generation that grows with every start ([`next_generation`]), so
//! an agent restarted with the same name supersedes the process it replaces, and carries its
//! gossip address, container range and WireGuard public key, which peers read from the
//! member list.

pub mod crypto;
mod identity;
mod membership;
pub mod runtime;
pub mod sim;

#[cfg(test)]
mod sim_tests;

pub use identity::{next_generation, GenerationError, MetaError, NodeMeta};
pub use membership::{
    DropCounts, Event, MemberState, MemberView, Membership, Output, Stats, Tuning,
};
pub use runtime::{GossipConfig, GossipHandle};

/// The default gossip port (UDP).
pub const DEFAULT_PORT: u16 = 7946;

/// Errors of the membership layer.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// This node's metadata cannot be gossiped.
    #[error("node metadata: {0}")]
    Meta(#[from] MetaError),
    /// The timing parameters are inconsistent.
    #[error("gossip tuning: {0}")]
    Tuning(&'static str),
    /// The gossip socket could not be bound or inspected.
    #[error("gossip socket {addr}: {source}")]
    Socket {
        /// The address it was bound to.
        addr: std::net::SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system gave no randomness for the session.
    #[error("no randomness from the operating system: {0}")]
    Entropy(#[source] rand::rngs::SysError),
    /// The gossip task has stopped (it left the cluster, or was aborted).
    #[error("the gossip task has stopped")]
    Stopped,
}
