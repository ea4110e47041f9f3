//! The cluster DNS server each agent runs for its containers.
//!
//! Owns: the record table of Fizz names (`records`: services, their VIPs,
//! their replicas and aliases, and which project each client container is
//! in), the wire format (`wire`: decoding, hostile-input checks, EDNS,
//! truncation), forwarding other names upstream (`forward`) and the UDP/TCP
//! sockets (`server`).
//!
//! This is the only module that uses hickory. Other modules describe services
//! and containers with Fizz's own types (`ServiceEntry`, `ClientEntry`),
//! build a `Records` from them and publish it with `SharedRecords::replace`;
//! they never see a DNS message.
//!
//! It must not decide anything about the cluster: it does not watch Docker,
//! gossip or the datapath, and it never changes the table itself. A question
//! never blocks an update, and an update is seen whole by the next question.
//! Nothing a client sends may panic it or make it allocate without bound:
//! at most one 64 KiB message per socket, TCP connection or forwarded
//! question in flight, and a fixed number of each (`Options`).

mod forward;
mod records;
mod server;
mod wire;

#[cfg(test)]
mod tests;

pub use records::{
    Answer, ClientEntry, NetworkAlias, Records, ServiceEntry, SharedRecords, TASKS_TTL, VIP_TTL,
    ZONE,
};
pub use server::{DnsError, Options, Server, Stats};
