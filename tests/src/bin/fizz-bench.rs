//! `fizz-bench <name> [options]`: Fizz's benchmarks, run as root by
//! `cargo xtask bench <name>`. `fizz-bench <name> --help` lists the options.

#[path = "../bench/mod.rs"]
mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fizz's benchmarks (run as root; everything happens in network namespaces
/// that the benchmark creates and removes).
#[derive(Parser)]
#[command(name = "fizz-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Service VIPs: Fizz vs direct vs iptables DNAT vs a userspace proxy;
    /// connection rate, request/response, stream, scale to 10,000 services,
    /// per-packet program cost.
    Vip(bench::vip::Options),
    /// Deploying a project: `fizz up` until every replica runs vs
    /// `docker-compose up -d` (Compose v1) of the same file.
    Up(bench::up::Options),
    /// Fizz's DNS server vs NSD on loopback: queries per second (dnsperf)
    /// and latency percentiles at a fixed rate.
    Dns(bench::dns::Options),
    /// Membership on simulated clusters of 3 and 20 members: failure
    /// detection, convergence after a join and after a leave.
    Gossip(bench::gossip::Options),
    /// The scheduler on 1,000 services over 100 nodes: time per full
    /// placement, and the replicas moved when a node leaves (no root needed).
    Placement(bench::placement::Options),
    /// A local 3-node cluster: `fizz up` reaching every node, a node's agent
    /// killed → its replicas running on the others, and its return.
    Failover(bench::failover::Options),
    /// A local 3-node cluster: a service updated under load, rolling
    /// start-first, rolling stop-first and all at once; time and requests
    /// answered.
    Update(bench::update::Options),
    /// A local 2-node cluster: cross-node container → container stream
    /// throughput and round trips through Fizz vs a bare userspace WireGuard
    /// tunnel (boringtun-cli) between the same nodes.
    Tunnel(bench::tunnel::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.bench {
        Bench::Vip(opts) => bench::vip::run(&opts),
        Bench::Up(opts) => bench::up::run(&opts),
        Bench::Dns(opts) => bench::dns::run(&opts),
        Bench::Gossip(opts) => bench::gossip::run(&opts),
        Bench::Placement(opts) => bench::placement::run(&opts),
        Bench::Failover(opts) => bench::failover::run(&opts),
        Bench::Update(opts) => bench::update::run(&opts),
        Bench::Tunnel(opts) => bench::tunnel::run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
