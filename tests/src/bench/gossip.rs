//! `fizz-bench gossip`: membership timings on simulated clusters of 3 and 20
//! members (the agent's own `Membership` state machine, its timing and its
//! packet envelope, over a simulated network with 0.5–5 ms latency; see
//! `fizz::gossip::sim`). Every run has its own seed, so the figures are
//! reproducible and independent of the machine's load.
//!
//! Measured per run, in simulated time:
//! - failure detection: a member crashes (stops answering); until it is
//!   `down` on the first and on every other member;
//! - join: a new member contacts one seed; until every member sees every
//!   other alive;
//! - leave: a member leaves gracefully; until it is `down` on every member.

use std::{path::Path, time::Duration};

use anyhow::{anyhow, Context as _, Result};
use fizz::gossip::sim::{Sim, SECRET};

use super::report::{self, Line, Results};

/// Options of `fizz-bench gossip`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Runs per cluster size (each with its own seed); the report gives
    /// their median and range.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
}

const SIZES: [usize; 2] = [3, 20];

/// Generous bounds: a run that exceeds one is reported as an error.
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);
const DOWN_LIMIT: Duration = Duration::from_secs(60);

pub fn run(opts: &Options) -> Result<()> {
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut results = Results::default();
    for n in SIZES {
        eprintln!("{n} members: {} runs", opts.runs);
        for run in 0..opts.runs {
            let seed = (n as u64) << 32 | u64::from(run);
            measure(n, seed, &mut results).with_context(|| format!("{n} members, seed {seed}"))?;
        }
    }

    let mut lines = Vec::new();
    for n in SIZES {
        for (metric, what) in [
            ("detect_first", "crash → down on the first member"),
            ("detect_all", "crash → down on every member"),
            ("join", "join → everyone sees everyone"),
            ("leave", "graceful leave → down on every member"),
        ] {
            let key = format!("{n}/{metric}");
            if let Some(entry) = results.entry(&key, None) {
                lines.push(Line { key, scenario: format!("{n} members"), metric: what.to_string(), entry });
            }
        }
    }
    let t = fizz::gossip::Tuning::default();
    println!(
        "\nMembership on simulated clusters: median and range over {} runs per size (simulated time; \
         probe every {:?}, ack awaited {:?}, suspect → down after {:?}; latency 0.5-5 ms, no loss).",
        opts.runs, t.probe_period, t.probe_rtt, t.suspect_to_down_after
    );
    println!();
    let sections = [lines];
    print!("{}", report::table(&sections));
    println!();
    println!("Target: a killed node is down on the others within 7 s.");
    let json = out_dir.join("gossip.json");
    report::write_json(&json, &sections[0])?;
    println!("\nwrote {}", json.canonicalize().unwrap_or(json).display());
    Ok(())
}

/// One run on a fresh cluster of `n` members: a crash, a join, a leave.
fn measure(n: usize, seed: u64, results: &mut Results) -> Result<()> {
    let mut sim = Sim::cluster(seed, n);
    sim.converge(CONVERGE_LIMIT).map_err(|e| anyhow!("forming the cluster: {e}"))?;
    // Settle: the first probes and suspicions of start-up are over.
    sim.run_for(Duration::from_secs(5));

    // Crash the last member (not the seed the others joined through).
    let victim = n - 1;
    sim.nodes[victim].running = false;
    let times = sim.time_to_down(victim, DOWN_LIMIT).map_err(|e| anyhow!("crash: {e}"))?;
    push(results, n, "detect_first", times.iter().min());
    push(results, n, "detect_all", times.iter().max());

    // A newcomer joins through member 0; the crashed member stays down.
    let joined = sim.add(&format!("new{seed}"), SECRET);
    let members: Vec<usize> = (0..sim.nodes.len()).filter(|i| *i != victim).collect();
    let took = sim.converge_among(&members, CONVERGE_LIMIT).map_err(|e| anyhow!("join: {e}"))?;
    results.push(&format!("{n}/join"), "s", took.as_secs_f64());

    // It leaves again, gracefully.
    sim.run_for(Duration::from_secs(2));
    let out = sim.nodes[joined].membership.leave(sim.now);
    sim.apply(joined, out);
    sim.nodes[joined].running = false;
    let times = sim.time_to_down(joined, DOWN_LIMIT).map_err(|e| anyhow!("leave: {e}"))?;
    push(results, n, "leave", times.iter().max());
    Ok(())
}

fn push(results: &mut Results, n: usize, metric: &str, d: Option<&Duration>) {
    if let Some(d) = d {
        results.push(&format!("{n}/{metric}"), "s", d.as_secs_f64());
    }
}
