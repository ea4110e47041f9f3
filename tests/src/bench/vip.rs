//! `fizz-bench vip`: service VIPs through Fizz's datapath against the direct
//! path, an iptables DNAT rule and a userspace proxy, on two simulated nodes
//! (see `topology`). Measurements are interleaved: every round measures every
//! scenario once, and the report gives the median of the rounds. Then the
//! connection rate with 1 to 10,000 services loaded, and the program's run
//! time per packet from the kernel's BPF statistics.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use fizz_tests::{wait_for, Container};

use super::{
    host, interrupt,
    load::{self, Mode},
    plot,
    report::{self, Entry, Line, Results},
    topology::{FizzNode, Floor, KernelNode, FIZZ_BACKEND, FIZZ_VIP, IPTABLES_VIP, KERNEL_BACKEND, PROXY_ADDR, VIP_RANGE},
};

/// Options of `fizz-bench vip`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Rounds of every measurement; the report gives their median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 1.0, value_parser = parse_secs)]
    pub secs: f64,
    /// Measure only the program's cost per packet, at 10,000 services
    /// (skips the rate comparisons and the scale runs; writes vip-cost.json).
    #[arg(long)]
    pub cost_only: bool,
    /// Let the scheduler place the client and the backend's servers, rather
    /// than keeping them on two CPUs of their own.
    #[arg(long)]
    pub no_pin: bool,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds from 0.01 to 600")),
    }
}

/// Services loaded in the scale runs.
const SCALES: [usize; 4] = [1, 100, 1_000, 10_000];

/// The scenarios of the scale runs, in measuring order.
const SCALED: [Scenario; 5] =
    [Scenario::Direct, Scenario::FizzVip, Scenario::FizzVipNat, Scenario::DirectKernel, Scenario::IptablesVip];

/// Service counts at which the program's cost per packet is measured.
const COST_AT: [usize; 2] = [1, 10_000];

/// How long to wait for every path to answer after the set-up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Stream measurements per scenario in each round, interleaved like the
/// rounds. A 1 s stream's throughput here varies by 13% (standard deviation)
/// whatever the path (the program's share of a 64 KiB segment's time is
/// tiny), and two streams measured one after the other hardly vary together,
/// so a pair's ratio varies by 16%: with 15 pairs, the median of two equal
/// paths' ratios falls below 0.95 one time in six; with 40, one in twenty.
const STREAM_REPEATS: u32 = 8;

/// Measurements per scenario in each round of the other metrics (for the
/// connection rate also in the scale runs), interleaved like the rounds. A
/// 1 s connection or transaction rate here varies by about 9% from one pair
/// of runs to the next (the ratio of 20 pairs of the direct and NAT'd
/// connection rates ranged from 0.78 to 1.11): the median of 5 pairs then
/// moves by about 5% between runs of the benchmark, the size of the margin
/// it is read against; the median of 20, by about half that.
const RATE_REPEATS: u32 = 4;

/// The longest warm-up measurement.
const WARM_UP: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Fizz node: client to backend by address, through the datapath's
    /// container-to-container redirect.
    Direct,
    /// Kernel node: client to backend by address, forwarded by the kernel.
    DirectKernel,
    /// Fizz node: client to the Fizz VIP, balanced at the socket (the path
    /// of TCP and unconnected UDP from the node's own containers).
    FizzVip,
    /// Fizz node: another client to the Fizz VIP, NAT'd packet by packet
    /// (the path of connected UDP, and of clients the node did not
    /// register: host processes, say).
    FizzVipNat,
    /// Kernel node: client to the iptables DNAT VIP.
    IptablesVip,
    /// Kernel node: client to the userspace proxy.
    Proxy,
}

impl Scenario {
    /// In measuring order: each path right after the direct path it is
    /// compared with, so that a ratio's two runs are close in time.
    const ALL: [Scenario; 6] = [
        Scenario::Direct,
        Scenario::FizzVip,
        Scenario::FizzVipNat,
        Scenario::DirectKernel,
        Scenario::IptablesVip,
        Scenario::Proxy,
    ];

    /// The Fizz node's scenarios, whose program cost is measured.
    const FIZZ: [Scenario; 3] = [Scenario::Direct, Scenario::FizzVip, Scenario::FizzVipNat];

    /// The scenarios that have a server for `mode`, in measuring order (the
    /// userspace proxy relays TCP only).
    fn serving(mode: Mode) -> impl Iterator<Item = Scenario> {
        Scenario::ALL.into_iter().filter(move |&s| !(s == Scenario::Proxy && mode.is_udp()))
    }

    fn key(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::DirectKernel => "direct_kernel",
            Scenario::FizzVip => "fizz_vip",
            Scenario::FizzVipNat => "fizz_vip_nat",
            Scenario::IptablesVip => "iptables_vip",
            Scenario::Proxy => "userspace_proxy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::Direct => "direct (fizz node)",
            Scenario::DirectKernel => "direct (kernel node)",
            Scenario::FizzVip => "fizz VIP (at the socket)",
            Scenario::FizzVipNat => "fizz VIP (NAT per packet)",
            Scenario::IptablesVip => "iptables DNAT VIP",
            Scenario::Proxy => "userspace proxy",
        }
    }

    fn on_fizz_node(self) -> bool {
        matches!(self, Scenario::Direct | Scenario::FizzVip | Scenario::FizzVipNat)
    }

    /// The direct path of the same node, which ratios are taken against.
    fn direct(self) -> Option<Scenario> {
        match self {
            Scenario::Direct | Scenario::DirectKernel => None,
            Scenario::FizzVip | Scenario::FizzVipNat => Some(Scenario::Direct),
            Scenario::IptablesVip | Scenario::Proxy => Some(Scenario::DirectKernel),
        }
    }
}

/// The two CPUs a measurement's client and the backend's servers are kept
/// on, the same in every scenario: where the scheduler puts two threads on a
/// small host (both on one CPU, or one each) changes a stream's throughput
/// by a third from one run to the next, and is not what is measured.
#[derive(Clone, Copy, Debug)]
struct Cpus {
    client: usize,
    server: usize,
}

impl Cpus {
    /// The last two CPUs this process may run on (the first ones take more
    /// of the host's interrupts), or none when it has fewer than two.
    fn pick() -> Result<Option<Cpus>> {
        let allowed = fizz_tests::allowed_cpus()?;
        Ok(match allowed[..] {
            [.., client, server] => Some(Cpus { client, server }),
            _ => None,
        })
    }
}

struct Bench {
    fizz: FizzNode,
    kernel: KernelNode,
    /// Where the client runs (the servers were placed when they started).
    cpus: Option<Cpus>,
    rounds: u32,
    dur: Duration,
    results: Results,
    /// Failed connections per series.
    errors: BTreeMap<String, u64>,
    /// The most conntrack entries seen in the kernel node, and the limit.
    conntrack_peak: Option<(u64, u64)>,
}

pub fn run(opts: &Options) -> Result<()> {
    if !fizz_tests::privileged() {
        bail!("the benchmark needs root (network namespaces, eBPF, iptables)");
    }
    interrupt::install()?;
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let cpus = if opts.no_pin { None } else { Cpus::pick()? };
    match cpus {
        Some(c) => eprintln!("clients run on CPU {}, the backends' servers on CPU {}", c.client, c.server),
        None => eprintln!("clients and servers run where the scheduler puts them"),
    }
    eprintln!("setting up: two nodes, each with a client and a backend container");
    let server_cpu = cpus.map(|c| c.server);
    let fizz = FizzNode::build(server_cpu).context("setting up the Fizz node")?;
    let kernel = KernelNode::build(server_cpu).context("setting up the kernel node")?;
    eprintln!("  fizz node {}, kernel node {}", fizz.name(), kernel.name());
    let mut bench = Bench {
        fizz,
        kernel,
        cpus,
        rounds: opts.rounds,
        dur: Duration::from_secs_f64(opts.secs),
        results: Results::default(),
        errors: BTreeMap::new(),
        conntrack_peak: None,
    };
    bench.wait_ready()?;
    bench.warm_up()?;
    if opts.cost_only {
        bench.cost_only()?;
        return bench.report(&out_dir, "vip-cost");
    }
    bench.main_rounds()?;
    bench.scale()?;
    bench.report(&out_dir, "vip")
}

/// The smallest and the largest of `values`.
fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// How far from the midpoint of `min` and `max` either lies, in percent:
/// every value between them is within ± that of the midpoint.
fn spread_pct(min: f64, max: f64) -> f64 {
    100.0 * (max - min) / (max + min)
}

/// Test runs per measurement of what the run-time statistics cost.
const STATISTICS_REPEAT: u32 = 1_000_000;
const STATISTICS_OFF: &str = "cost/statistics_off";
const STATISTICS_ON: &str = "cost/statistics_on";

/// Measurements of `mode` per scenario in each round.
fn mode_repeats(mode: Mode) -> u32 {
    match mode {
        Mode::Stream => STREAM_REPEATS,
        Mode::Conn | Mode::Rr | Mode::UdpRr => RATE_REPEATS,
    }
}

impl Bench {
    /// The client container and the address a scenario connects to.
    fn target(&self, s: Scenario, mode: Mode) -> (&Container, SocketAddr) {
        let (b, v) = (mode.backend_port(), mode.vip_port());
        match s {
            Scenario::Direct => (&self.fizz.client, SocketAddr::from((FIZZ_BACKEND, b))),
            Scenario::DirectKernel => (&self.kernel.client, SocketAddr::from((KERNEL_BACKEND, b))),
            Scenario::FizzVip => (&self.fizz.client, SocketAddr::from((FIZZ_VIP, v))),
            Scenario::FizzVipNat => (&self.fizz.nat_client, SocketAddr::from((FIZZ_VIP, v))),
            Scenario::IptablesVip => (&self.kernel.client, SocketAddr::from((IPTABLES_VIP, v))),
            Scenario::Proxy => (&self.kernel.client, SocketAddr::from((PROXY_ADDR, v))),
        }
    }

    /// One measurement from inside the scenario's client container; failed
    /// connections are counted under `series`.
    fn measure(&mut self, series: &str, s: Scenario, mode: Mode, dur: Duration) -> Result<f64> {
        interrupt::check()?;
        if s.on_fizz_node() {
            // Every VIP connection then makes its own flow, as with the
            // kernel's conntrack, and no closed flow can capture a direct one.
            self.fizz.flush_conntrack()?;
        }
        let (client, addr) = self.target(s, mode);
        let client_cpu = self.cpus.map(|c| c.client);
        let outcome = client.ns.run(move || {
            if let Some(cpu) = client_cpu {
                fizz_tests::pin_to_cpu(cpu)?;
            }
            load::measure(mode, addr, dur)
        })??;
        if outcome.errors > 0 {
            *self.errors.entry(series.to_string()).or_default() += outcome.errors;
        }
        if mode == Mode::Conn && !s.on_fizz_node() {
            if let Ok((count, max)) = self.kernel.conntrack() {
                let peak = self.conntrack_peak.get_or_insert((0, max));
                peak.0 = peak.0.max(count);
            }
        }
        Ok(outcome.value)
    }

    /// Measures and records under `series`.
    fn record(&mut self, series: &str, s: Scenario, mode: Mode) -> Result<()> {
        let v = self.measure(series, s, mode, self.dur)?;
        self.results.push(series, mode.unit(), v);
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        for mode in Mode::ALL {
            for s in Scenario::serving(mode) {
                let (client, addr) = self.target(s, mode);
                let what = format!("{} ({}) to answer on {addr}", s.label(), mode.label());
                client.ns.run(|| wait_for(&what, READY_TIMEOUT, || load::probe(mode, addr).is_ok()))??;
            }
        }
        Ok(())
    }

    /// A short unrecorded pass of everything: caches, ARP and routes warm.
    fn warm_up(&mut self) -> Result<()> {
        eprintln!("warming up");
        for mode in Mode::ALL {
            for s in Scenario::serving(mode) {
                self.measure("warm-up", s, mode, self.dur.min(WARM_UP))?;
            }
        }
        Ok(())
    }

    fn main_rounds(&mut self) -> Result<()> {
        for r in 1..=self.rounds {
            eprintln!("round {r}/{}: every scenario, every metric", self.rounds);
            for mode in Mode::ALL {
                for _ in 0..mode_repeats(mode) {
                    for s in Scenario::serving(mode) {
                        self.record(&format!("{}/{}", mode.key(), s.key()), s, mode)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn scale(&mut self) -> Result<()> {
        for n in SCALES {
            eprintln!("scale: loading {} on both nodes", services(n));
            self.fizz.set_services(n)?;
            self.kernel.set_services(n)?;
            for r in 1..=self.rounds {
                eprintln!("scale {n}, round {r}/{}", self.rounds);
                for _ in 0..RATE_REPEATS {
                    for s in SCALED {
                        self.record(&format!("scale/{n}/{}", s.key()), s, Mode::Conn)?;
                    }
                }
            }
            if COST_AT.contains(&n) {
                self.program_cost(n)?;
            }
        }
        Ok(())
    }

    /// `--cost-only`: the program's cost with the most services loaded.
    fn cost_only(&mut self) -> Result<()> {
        let n = COST_AT[COST_AT.len() - 1];
        eprintln!("loading {} on the Fizz node", services(n));
        self.fizz.set_services(n)?;
        self.program_cost(n)
    }

    /// The program's run time per packet, from the kernel's BPF run-time
    /// statistics (enabled only for these runs, as they add a clock read to
    /// every run): for every metric, through the Fizz VIP and on the direct
    /// path (which runs the same program, without NAT), with the CPUs free to
    /// go idle between packets and kept out of idle (`host::NoIdle`), in turn.
    fn program_cost(&mut self, n: usize) -> Result<()> {
        eprintln!("program cost with {}", services(n));
        self.statistics_cost()?;
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
        for _ in 0..self.rounds {
            for idle in [Idle::Allowed, Idle::Kept] {
                let _no_idle = match idle {
                    Idle::Allowed => None,
                    Idle::Kept => Some(host::NoIdle::hold()?),
                };
                self.program_cost_round(None, n, idle)?;
                let floor = self.fizz.attach_floor()?;
                self.program_cost_round(Some(&floor), n, idle)?;
            }
        }
        Ok(())
    }

    /// What the run-time statistics themselves cost a run: the empty program
    /// test-run with them off, then on, in turn (each time the kernel's own
    /// mean over `STATISTICS_REPEAT` runs).
    fn statistics_cost(&mut self) -> Result<()> {
        let floor = self.fizz.load_floor()?;
        for _ in 0..self.rounds {
            let off = floor.test_run_ns(STATISTICS_REPEAT)?;
            let on = {
                let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
                floor.test_run_ns(STATISTICS_REPEAT)?
            };
            self.results.push(STATISTICS_OFF, "ns/run", f64::from(off));
            self.results.push(STATISTICS_ON, "ns/run", f64::from(on));
        }
        Ok(())
    }

    /// One round of every metric: the program's time per run, alone on its
    /// hook (`floor` none: as the agent runs it, so it also pays for the
    /// first touch of what any program touches), or behind the floor
    /// program, whose own time per run comes from the same packets.
    fn program_cost_round(&mut self, floor: Option<&Floor>, n: usize, idle: Idle) -> Result<()> {
        let read_floor = |f: Option<&Floor>| f.map(Floor::stats).transpose();
        for mode in Mode::ALL {
            for s in Scenario::FIZZ {
                let what = if floor.is_some() { Cost::Program } else { Cost::Alone };
                let series = cost_key(what, n, mode, s, idle);
                let before = self.fizz.program_stats()?;
                let floor_before = read_floor(floor)?;
                let sock_before = self.fizz.sock_program_stats()?;
                self.measure(&series, s, mode, self.dur)?;
                for ((name, b), (_, a)) in sock_before.into_iter().zip(self.fizz.sock_program_stats()?) {
                    if let Some(ns) = ns_per_run(b, a) {
                        self.results.push(&sock_cost_key(name, n, mode, s, idle), "ns/call", ns);
                    }
                }
                let zero_runs = || anyhow::anyhow!("a program ran 0 times during {series}: are BPF statistics supported?");
                let program = ns_per_run(before, self.fizz.program_stats()?).ok_or_else(zero_runs)?;
                self.results.push(&series, "ns/run", program);
                if let (Some(floor_before), Some(floor_after)) = (floor_before, read_floor(floor)?) {
                    let empty = ns_per_run(floor_before, floor_after).ok_or_else(zero_runs)?;
                    self.results.push(&cost_key(Cost::Floor, n, mode, s, idle), "ns/run", empty);
                    self.results.push(&cost_key(Cost::AboveFloor, n, mode, s, idle), "ns/run", program - empty);
                }
            }
        }
        Ok(())
    }

    /// A path's connection-rate ratio at each service count, when every
    /// count has one.
    fn scale_ratios(&self, s: Scenario) -> Option<Vec<f64>> {
        SCALES
            .iter()
            .map(|n| {
                let key = |s: Scenario| format!("scale/{n}/{}", s.key());
                self.results.entry(&key(s), s.direct().map(key).as_deref()).and_then(|e| e.ratio_to_direct)
            })
            .collect()
    }

    /// The datapath's targets for both Fizz VIP paths, each with what this run
    /// measured and whether it is met; a target this run did not measure
    /// (`--cost-only`) is left out.
    fn targets(&self) -> Vec<String> {
        let paths = [Scenario::FizzVip, Scenario::FizzVipNat];
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let mut out = Vec::new();
        for (mode, min) in [(Mode::Conn, 0.90), (Mode::Rr, 0.95), (Mode::Stream, 0.95)] {
            let key = |s: Scenario| format!("{}/{}", mode.key(), s.key());
            let cells: Vec<String> = paths
                .iter()
                .filter_map(|&s| {
                    let e = self.results.entry(&key(s), s.direct().map(key).as_deref())?;
                    let r = e.ratio_to_direct?;
                    let interval = e.ratio_interval.map_or(String::new(), |[lo, hi]| format!(" [{lo:.3}-{hi:.3}]"));
                    Some(format!("{} {r:.3}{interval} {}", s.label(), verdict(r >= min)))
                })
                .collect();
            if !cells.is_empty() {
                out.push(format!("{} ≥ {min:.2}× direct: {}", mode.label(), cells.join("; ")));
            }
        }
        let cells: Vec<String> = paths
            .iter()
            .filter_map(|&s| {
                let (min, max) = min_max(&self.scale_ratios(s)?);
                let spread = spread_pct(min, max);
                Some(format!("{} ±{spread:.1}% {}", s.label(), verdict(spread <= 5.0)))
            })
            .collect();
        if !cells.is_empty() {
            out.push(format!(
                "connection rate flat within ±5% from 1 to 10,000 services (around the midpoint of the four points): {}",
                cells.join("; ")
            ));
        }
        let n = COST_AT[COST_AT.len() - 1];
        for idle in [Idle::Kept, Idle::Allowed] {
            let cells: Vec<String> = paths
                .iter()
                .filter_map(|&s| {
                    let ns = Mode::ALL
                        .iter()
                        .map(|&m| self.results.entry(&cost_key(Cost::Alone, n, m, s, idle), None).map(|e| e.median))
                        .collect::<Option<Vec<f64>>>()?;
                    let (_, worst) = min_max(&ns);
                    let each: Vec<String> = Mode::ALL.iter().zip(&ns).map(|(m, v)| format!("{} {v:.0}", m.key())).collect();
                    Some(format!("{} {} ns {}", s.label(), each.join(" / "), verdict(worst <= 100.0)))
                })
                .collect();
            if !cells.is_empty() {
                out.push(format!(
                    "≤ 100 ns per packet at {} (the program alone, in each metric's runs), {}: {}",
                    services(n),
                    idle.label(),
                    cells.join("; ")
                ));
            }
        }
        out
    }

    fn line(&self, key: &str, source: &str, direct: Option<String>, scenario: String, metric: &str) -> Option<Line> {
        let entry = self.results.entry(source, direct.as_deref())?;
        Some(Line { key: key.to_string(), scenario, metric: metric.to_string(), entry })
    }

    /// Prints the table and writes `<name>.json` and the plot.
    fn report(&self, out_dir: &Path, name: &str) -> Result<()> {
        let mut sections: Vec<Vec<Line>> = Vec::new();
        for mode in Mode::ALL {
            let mut lines = Vec::new();
            let key = |s: Scenario| format!("{}/{}", mode.key(), s.key());
            for s in Scenario::ALL {
                let direct = s.direct().map(key);
                lines.extend(self.line(&key(s), &key(s), direct, s.label().into(), mode.label()));
                // For transparency, the Fizz node's paths against the
                // kernel's direct path: a container-to-container redirect
                // against the kernel's forwarding, and the VIP.
                let against_kernel = match s {
                    Scenario::Direct => Some(("direct_vs_direct_kernel", "fizz direct vs direct (kernel node)")),
                    Scenario::FizzVip => Some(("fizz_vip_vs_direct_kernel", "fizz VIP vs direct (kernel node)")),
                    _ => None,
                };
                if let Some((suffix, label)) = against_kernel {
                    lines.extend(self.line(
                        &format!("{}/{suffix}", mode.key()),
                        &key(s),
                        Some(key(Scenario::DirectKernel)),
                        label.into(),
                        mode.label(),
                    ));
                }
            }
            sections.push(lines);
        }

        let mut scale_lines = Vec::new();
        for n in SCALES {
            let key = |s: Scenario| format!("scale/{n}/{}", s.key());
            for s in SCALED {
                let label = format!("{}, {}", s.label(), services(n));
                scale_lines.extend(self.line(&key(s), &key(s), s.direct().map(key), label, Mode::Conn.label()));
            }
        }
        for s in [Scenario::FizzVip, Scenario::FizzVipNat, Scenario::IptablesVip] {
            let Some(ratios) = self.scale_ratios(s) else { continue };
            let (min, max) = min_max(&ratios);
            if min > 0.0 {
                scale_lines.push(Line {
                    key: format!("scale/flatness/{}", s.key()),
                    scenario: format!("{}, flatness over 1-10,000 services", s.label()),
                    metric: "max/min of ratio".into(),
                    entry: Entry::single(max / min, "x"),
                });
                // The same spread as ± around the midpoint of the four
                // points: every point lies within it.
                scale_lines.push(Line {
                    key: format!("scale/spread/{}", s.key()),
                    scenario: format!("{}, spread over 1-10,000 services", s.label()),
                    metric: "± around the midpoint".into(),
                    entry: Entry::single(spread_pct(min, max), "%"),
                });
            }
        }
        let ratios = [Scenario::FizzVip, Scenario::FizzVipNat, Scenario::IptablesVip].map(|s| self.scale_ratios(s));
        let points: Vec<plot::ScalePoint> = match ratios {
            [Some(socket), Some(nat), Some(iptables)] => (0..SCALES.len())
                .map(|i| plot::ScalePoint { services: SCALES[i], socket: socket[i], nat: nat[i], iptables: iptables[i] })
                .collect(),
            _ => Vec::new(),
        };
        sections.push(scale_lines);

        for idle in [Idle::Allowed, Idle::Kept] {
            let mut cost = Vec::new();
            for n in COST_AT {
                for mode in Mode::ALL {
                    for s in Scenario::FIZZ {
                        for what in [Cost::Alone, Cost::Program, Cost::Floor, Cost::AboveFloor] {
                            let key = cost_key(what, n, mode, s, idle);
                            let label = format!("{}, {}, {}, {}", what.label(), s.label(), services(n), idle.label());
                            cost.extend(self.line(&key, &key, None, label, &format!("ns per packet, {}", mode.label())));
                        }
                    }
                    for s in Scenario::FIZZ {
                        for (name, _) in fizz::net::ebpf::SOCK_PROGRAMS {
                            let key = sock_cost_key(name, n, mode, s, idle);
                            let label = format!("{name}, {}, {}, {}", s.label(), services(n), idle.label());
                            cost.extend(self.line(&key, &key, None, label, &format!("ns per call, {}", mode.label())));
                        }
                    }
                }
            }
            sections.push(cost);
        }
        let mut statistics = Vec::new();
        for (key, label) in [
            (STATISTICS_OFF, "empty program, test runs, run-time statistics off"),
            (STATISTICS_ON, "empty program, test runs, run-time statistics on"),
        ] {
            statistics.extend(self.line(key, key, None, label.into(), "time per run, BPF_PROG_TEST_RUN"));
        }
        sections.push(statistics);

        println!(
            "\nService VIP benchmark: median of {} interleaved rounds of {} s per measurement ({} measurements \
             per scenario and round for the rates, also at each service count; {} for the stream).",
            self.rounds,
            self.dur.as_secs_f64(),
            RATE_REPEATS,
            STREAM_REPEATS
        );
        println!(
            "ratio = median over rounds (and a round's passes) of value / the direct path's value in \
             the same pass (Fizz VIP: the Fizz \
             node's; iptables, proxy: the kernel node's). The rows \"vs direct (kernel node)\" compare the Fizz \
             node's paths with the kernel node's direct path, measured in the same pass but not right after: two \
             simulated nodes, so they show the datapaths and whatever else differs between the nodes (their \
             conntrack, say). The ratio's 95% interval: the k-th smallest and k-th largest of those per-pass \
             ratios, which hold the true median with at least 95% confidence when the passes vary independently; \
             a target inside it is neither clearly met nor clearly missed by this run."
        );
        println!();
        print!("{}", report::table(&sections));
        println!();
        match self.cpus {
            Some(c) => println!(
                "Placement: every client ran on CPU {}, the backends' servers on CPU {} (the userspace proxy where \
                 the scheduler put it); --no-pin leaves both to the scheduler.",
                c.client, c.server
            ),
            None => println!("Placement: clients and servers ran where the scheduler put them."),
        }
        println!(
            "iptables: the measured rule is the LAST of the nat PREROUTING chain (worst case), behind N-1 DNAT rules \
             for other VIPs; its first rule sends traffic outside {VIP_RANGE} past them, so the kernel node's direct \
             path does not pay for them."
        );
        println!(
            "The kernel node runs the kernel's conntrack (its nat table is loaded); the Fizz node has no iptables \
             rules and no conntrack."
        );
        println!(
            "Fizz's conntrack is emptied before each Fizz-node measurement, so that every round starts alike \
             (a SYN reusing the ports of a closed flow is balanced afresh either way)."
        );
        println!(
            "Program cost: BPF run-time statistics (run time / runs, every packet of both directions) during \
             each metric's runs, enabled only for those runs; the connection-rate runs are mostly set-up and \
             teardown packets (new conntrack entries), the stream and request/response runs established flows. \
             Measured twice per round: with the CPUs free to idle between packets (on a virtual machine each \
             wake-up exits to the hypervisor and leaves the caches cold) and with them kept out of idle \
             (PM QoS /dev/cpu_dma_latency = 0, as tuned's network-latency profile sets); every other figure \
             is taken with idle allowed. \"Alone\": the Fizz program as the agent runs it, nothing else on its \
             hook. Then the floor: fz_floor, a program that does nothing, attached in front of the Fizz program \
             on the same veths, measured on the same packets: what running any program costs here (dispatch, \
             the statistics' clock reads, the first touch of the packet's metadata), which the Fizz program \
             behind it no longer pays. The statistics' own cost: the empty program test-run {STATISTICS_REPEAT} \
             times with them off, then on (the kernel's mean per run; the difference is what they add to every \
             run, part of it inside the time they record)."
        );
        println!(
            "Socket programs (the Fizz VIP at the socket): each one's run time per call, over every call on the \
             host during that path's runs, which the TC figures leave out: fz_connect4 once per connect(), \
             fz_sendmsg4 once per datagram sent to an address (the client's to the VIP, the server's answers), \
             fz_recvmsg4 once per datagram received (client and server), fz_getpeername4 once per getpeername(). \
             A UDP request/response from an unconnected socket thus pays sendmsg4 and recvmsg4 twice each, \
             besides the TC program on its two packets; a TCP connection pays connect4 once."
        );
        if let Some((peak, max)) = self.conntrack_peak {
            let note = if peak * 100 >= max * 95 {
                " — the table was FULL: kernel-node connection rates are suspect"
            } else {
                ""
            };
            println!("Kernel node conntrack: at most {peak} of {max} entries seen{note}.");
        }
        for (series, n) in &self.errors {
            println!("warning: {n} connections failed in {series}");
        }

        let lines: Vec<Line> = sections.into_iter().flatten().collect();
        let json = out_dir.join(format!("{name}.json"));
        report::write_json(&json, &lines)?;
        println!("\nTargets (in brackets: the ratio's 95% interval):");
        for t in self.targets() {
            println!("  {t}");
        }
        println!("\nwrote {}", display(&json));
        let bars: Vec<plot::Bars> = [Scenario::FizzVip, Scenario::FizzVipNat, Scenario::IptablesVip, Scenario::Proxy]
            .into_iter()
            .map(|s| {
                let entry = |m: Mode| lines.iter().find(|l| l.key == format!("{}/{}", m.key(), s.key())).map(|l| &l.entry);
                plot::Bars {
                    label: s.label().to_string(),
                    ratios: Mode::ALL.map(|m| entry(m).and_then(|e| e.ratio_to_direct).unwrap_or(f64::NAN)),
                    intervals: Mode::ALL.map(|m| entry(m).and_then(|e| e.ratio_interval)),
                }
            })
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        match plot::draw(out_dir, name, &bars, &points) {
            Ok(png) => println!("wrote {}", display(&png)),
            Err(e) => println!("plot skipped: {e:#}"),
        }
        Ok(())
    }
}

/// Whether the CPUs may go idle during a program-cost measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    Allowed,
    Kept,
}

impl Idle {
    fn label(self) -> &'static str {
        match self {
            Idle::Allowed => "CPUs idle between packets",
            Idle::Kept => "CPUs kept out of idle",
        }
    }

    /// What a cost series' key adds for this setting.
    fn key_suffix(self) -> &'static str {
        match self {
            Idle::Allowed => "",
            Idle::Kept => "_no_idle",
        }
    }
}

/// What a program-cost series measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cost {
    /// `from_container`'s time per run, alone on its hook.
    Alone,
    /// `from_container`'s time per run, behind `fz_floor`.
    Program,
    /// `fz_floor`'s (a program that does nothing) on the same packets.
    Floor,
    /// The difference: what `from_container`'s own work costs.
    AboveFloor,
}

impl Cost {
    fn label(self) -> &'static str {
        match self {
            Cost::Alone => "fizz program alone",
            Cost::Program => "fizz program behind the floor",
            Cost::Floor => "empty program (floor)",
            Cost::AboveFloor => "fizz program above the floor",
        }
    }
}

/// Time per run between two readings of a program's (runs, run time), or
/// none if it did not run.
fn ns_per_run(before: (u64, Duration), after: (u64, Duration)) -> Option<f64> {
    let runs = after.0.saturating_sub(before.0);
    let time = after.1.saturating_sub(before.1);
    (runs > 0).then(|| time.as_nanos() as f64 / runs as f64)
}

/// The series of a program cost per packet.
fn cost_key(what: Cost, n: usize, mode: Mode, s: Scenario, idle: Idle) -> String {
    let prefix = match what {
        Cost::Alone => "prog_alone_ns_per_packet",
        Cost::Program => "prog_ns_per_packet",
        Cost::Floor => "floor_ns_per_packet",
        Cost::AboveFloor => "prog_above_floor_ns_per_packet",
    };
    format!("{prefix}{}/{n}/{}/{}", idle.key_suffix(), mode.key(), s.key())
}

/// The series of a socket program's cost per call.
fn sock_cost_key(name: &str, n: usize, mode: Mode, s: Scenario, idle: Idle) -> String {
    format!("sock_ns_per_call{}/{name}/{n}/{}/{}", idle.key_suffix(), mode.key(), s.key())
}

/// "1 service", "100 services".
fn services(n: usize) -> String {
    if n == 1 {
        "1 service".to_string()
    } else {
        format!("{n} services")
    }
}

/// A path without the `tests/..` detour.
fn display(p: &Path) -> String {
    p.canonicalize().unwrap_or_else(|_| PathBuf::from(p)).display().to_string()
}
