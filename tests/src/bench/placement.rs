//! `fizz-bench placement`: the scheduler (`fizz::agent::placement::place`,
//! pure) on 1,000 services over 100 nodes. Needs neither root nor Docker.
//!
//! Measured:
//! - the time of one full placement (every run times `--calls` calls and
//!   takes their mean), as services and replicas placed per second;
//! - movement: each node in turn leaves; the replicas that move (the leaving
//!   node's own and any others) per replica the leaving node ran, and the share
//!   of the other replicas that keep their node.
//!
//! The cluster is generated from a fixed seed: every run places the same one.

use std::{hint::black_box, time::Instant};

use anyhow::{ensure, Result};
use fizz::{
    agent::placement::{place, Constraint, Demand, NodeInfo},
    hash::SplitMix64 as Rng,
};

use super::report::{self, Line, Results};

/// Options of `fizz-bench placement`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Timed runs; the report gives their median and range.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Full placements per run (the run's figure is their mean).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub calls: u32,
}

const NODES: usize = 100;
const SERVICES: usize = 1000;
const SEED: u64 = 0x5eed;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

pub fn run(opts: &Options) -> Result<()> {
    let (nodes, demands) = cluster(SEED);
    let base = place(&nodes, &demands);
    let replicas = base.assigned.len() + base.unplaced.len();
    ensure!(base.assigned.len() > SERVICES, "only {} replicas placed", base.assigned.len());
    let mut results = Results::default();

    eprintln!("{} runs of {} placements", opts.runs, opts.calls);
    black_box(place(&nodes, &demands));
    for _ in 0..opts.runs {
        let start = Instant::now();
        for _ in 0..opts.calls {
            black_box(place(black_box(&nodes), black_box(&demands)));
        }
        let each = start.elapsed().as_secs_f64() / f64::from(opts.calls);
        results.push("place_ms", "ms", each * 1e3);
        results.push("services_per_s", "services/s", SERVICES as f64 / each);
        results.push("replicas_per_s", "replicas/s", replicas as f64 / each);
    }

    eprintln!("removing each of the {NODES} nodes in turn");
    for i in 0..NODES {
        let mut rest = nodes.clone();
        let gone = rest.remove(i);
        let after = place(&rest, &demands);
        let on_gone = base.assigned.values().filter(|n| **n == gone.name).count();
        let others = base.assigned.len() - on_gone;
        let others_moved =
            base.assigned.iter().filter(|(s, n)| **n != gone.name && after.assigned.get(*s) != Some(*n)).count();
        if on_gone > 0 {
            results.push("moved_per_replica_of_removed", "×", (on_gone + others_moved) as f64 / on_gone as f64);
        }
        results.push("others_kept", "%", 100.0 * (others - others_moved) as f64 / others as f64);
    }

    let scenario = format!("{NODES} nodes, {SERVICES} services");
    let mut timing = Vec::new();
    for (key, metric) in [
        ("place_ms", "one full placement"),
        ("services_per_s", "services placed"),
        ("replicas_per_s", "replicas placed"),
    ] {
        if let Some(entry) = results.entry(key, None) {
            timing.push(Line { key: key.to_string(), scenario: scenario.clone(), metric: metric.to_string(), entry });
        }
    }
    let mut movement = Vec::new();
    for (key, metric) in [
        ("moved_per_replica_of_removed", "replicas moved per replica it ran"),
        ("others_kept", "other replicas that keep their node"),
    ] {
        if let Some(entry) = results.entry(key, None) {
            let scenario = format!("1 of {NODES} nodes leaves");
            movement.push(Line { key: key.to_string(), scenario, metric: metric.to_string(), entry });
        }
    }

    println!(
        "\nPlacement of {SERVICES} services ({replicas} replicas, {} unplaced) on {NODES} nodes: median and range \
         over {} runs of {} placements each; movement over each node leaving in turn.",
        base.unplaced.len(),
        opts.runs,
        opts.calls
    );
    println!();
    let sections = [timing, movement];
    print!("{}", report::table(&sections));
    println!();
    println!("Target: at least 1,000 services/s.");
    let json = report::out_dir()?.join("placement.json");
    let lines: Vec<Line> = sections.into_iter().flatten().collect();
    report::write_json(&json, &lines)?;
    println!("\nwrote {}", report::display(&json));
    Ok(())
}

/// 100 nodes in four zones, half with SSDs, 4–16 CPUs, 8–32 GiB; 1,000
/// services of 1–5 replicas in 50 projects, a third constrained to labels, a
/// third with reservations, one in ten at most one replica per node.
fn cluster(seed: u64) -> (Vec<NodeInfo>, Vec<Demand>) {
    let mut rng = Rng(seed);
    let nodes = (0..NODES)
        .map(|i| NodeInfo {
            name: format!("node-{i:03}"),
            hostname: format!("host-{i:03}"),
            role: if i < 3 { "manager" } else { "worker" }.to_string(),
            labels: [("zone", rng.pick(&["a", "b", "c", "d"])), ("disk", rng.pick(&["ssd", "hdd"]))]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            cpus: rng.pick(&[4.0, 8.0, 16.0]),
            memory: rng.pick(&[8 * GIB, 16 * GIB, 32 * GIB]),
        })
        .collect();
    let forms = ["node.labels.zone == a", "node.labels.zone == b", "node.labels.zone != c", "node.labels.disk == ssd"];
    let demands = (0..SERVICES)
        .map(|j| {
            let reserve = rng.chance(33);
            Demand {
                project: format!("proj-{:02}", j / 20),
                service: format!("svc-{:02}", j % 20),
                replicas: 1 + rng.below(5) as u32,
                global: false,
                constraints: if rng.chance(33) {
                    vec![Constraint::parse(rng.pick(&forms)).expect("a valid constraint")]
                } else {
                    vec![]
                },
                max_per_node: rng.chance(10).then_some(1),
                cpus: if reserve { rng.pick(&[0.25, 0.5, 1.0]) } else { 0.0 },
                memory: if reserve { rng.pick(&[128 * MIB, 512 * MIB, GIB]) } else { 0 },
            }
        })
        .collect();
    (nodes, demands)
}
