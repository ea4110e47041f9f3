//! `fizz-bench update`: a local cluster of 3 nodes (`fizz dev`, the release `fizz`), a `web`
//! service of N healthy replicas spread over them, and a client on every node. Per run, for
//! each way of updating, interleaved:
//!
//! - **rolling, start-first** (`parallelism: 1`, `monitor: 1s`): each new replica is started
//!   and healthy before its old one drains and stops;
//! - **rolling, stop-first** (`parallelism: 1`, `monitor: 1s`): each old replica drains and
//!   stops before its new one starts;
//! - **all at once** (`parallelism: 0`, `monitor: 0s`): every old replica drains and stops at
//!   once, then the new ones start (what recreating a changed service does without a rolling
//!   update, drained);
//!
//! `fizz up` with a changed definition runs on node 1 while node 1's client requests the VIP
//! by name, one fresh connection after the other; measured: how long `fizz up` takes (until the
//! update is done on every node), and the share of requests answered during it.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use fizz::{
    api::{client::Client, PsResponse},
    dev::DevNode,
    docker::{Health, RunState},
};
use hyper::Method;

use super::report::{self, Line, Results};
use fizz_tests::{fizz_bin, fizz_ok, wait_for, DevCluster, BUSYBOX_IMAGE};

/// Options of `fizz-bench update`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Runs of each way of updating; the report gives their median and range.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Replicas of the updated service.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..=30))]
    pub replicas: u32,
}

/// The ways of updating compared: (key, name, `update_config`).
const WAYS: [(&str, &str, &str); 3] = [
    ("start_first", "rolling, start-first", "parallelism: 1\n        monitor: 1s\n        order: start-first"),
    ("stop_first", "rolling, stop-first", "parallelism: 1\n        monitor: 1s\n        order: stop-first"),
    ("all_at_once", "all at once", "parallelism: 0\n        monitor: 0s\n        order: stop-first"),
];

fn compose(replicas: u32, version: u32, update: &str) -> String {
    format!(
        r#"services:
  web:
    image: {BUSYBOX_IMAGE}
    environment:
      VERSION: "{version}"
    command: ["sh", "-c", "mkdir -p /www && echo $$VERSION > /www/index.html && exec httpd -f -p 8080 -h /www"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "wget", "-qO", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 1s
      retries: 2
    deploy:
      replicas: {replicas}
      update_config:
        {update}
  client:
    image: {BUSYBOX_IMAGE}
    command: ["sleep", "86400"]
    # Reaps what busybox `timeout` leaves behind (its watcher outlives the command).
    init: true
    stop_grace_period: 1s
    deploy:
      mode: global
"#
    )
}

/// The request loop run in node 1's client: until /tmp/stop exists, then `ok=N fail=M`.
const LOAD: &str = "rm -f /tmp/stop; ok=0; fail=0; while [ ! -e /tmp/stop ]; do \
    if timeout 3 wget -qO /dev/null http://web:8080/ 2>/dev/null; then ok=$((ok+1)); else fail=$((fail+1)); fi; \
    done; echo ok=$ok fail=$fail";

struct Bench {
    rt: tokio::runtime::Runtime,
    fizz: PathBuf,
    cluster: DevCluster,
    nodes: Vec<DevNode>,
}

impl Bench {
    fn fizz(&self, n: &DevNode) -> Command {
        let mut c = Command::new(&self.fizz);
        c.arg("--socket").arg(&n.socket);
        c
    }

    fn cli(&self, n: &DevNode, args: &[&str]) -> Result<String> {
        fizz_ok(&self.fizz, n, args)
    }

    fn ps(&self, n: &DevNode, project: &str) -> Option<PsResponse> {
        self.rt.block_on(Client::new(&n.socket).call::<(), _>(Method::GET, &format!("/v1/ps?project={project}"), None)).ok()
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let fizz = fizz_bin().context("the benchmark runs the release `fizz`, which `cargo xtask bench update` builds")?;
    let tag = format!("fzbu{}", std::process::id() % 10_000);
    let lan = Ipv4Addr::new(10, 91, (std::process::id() % 250) as u8, 0);
    eprintln!("starting a 3-node local cluster ({tag})");
    let rt = tokio::runtime::Runtime::new()?;
    let (cluster, nodes) = DevCluster::start(&tag, lan, 3, &fizz, &rt, Duration::from_secs(30))?;
    let b = Bench { rt, fizz, cluster, nodes };
    let project = "update";
    let mut version = 0;
    let mut deploy = |way: &str| -> Result<(f64, String)> {
        version += 1;
        let file = b.cluster.file(&format!("v{version}.yaml"), &compose(opts.replicas, version, way))?;
        let start = Instant::now();
        let out = b.cli(&b.nodes[0], &["up", "--wait", "--timeout", "300", "-f", file.to_str().context("path")?, "-p", project])?;
        Ok((start.elapsed().as_secs_f64(), out))
    };
    deploy(WAYS[0].2)?;
    let healthy = |p: &PsResponse, svc: &str, want: usize| {
        let r: Vec<_> = p.replicas.iter().filter(|r| r.service == svc).collect();
        r.len() == want && r.iter().all(|r| r.state == Some(RunState::Running) && r.health.is_none_or(|h| h == Health::Healthy))
    };
    wait_for("web healthy on every node", Duration::from_secs(60), || {
        b.ps(&b.nodes[0], project).is_some_and(|p| healthy(&p, "web", opts.replicas as usize) && healthy(&p, "client", 3))
    })?;

    let mut results = Results::default();
    for run in 0..opts.runs {
        for (key, name, way) in WAYS {
            eprintln!("run {}/{}: {name}", run + 1, opts.runs);
            let load = b
                .fizz(&b.nodes[0])
                .args(["exec", "-p", project, "client", "--", "sh", "-c", LOAD])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting the load")?;
            std::thread::sleep(Duration::from_secs(1));
            let (secs, _) = deploy(way)?;
            b.cli(&b.nodes[0], &["exec", "-p", project, "client", "--", "touch", "/tmp/stop"])?;
            let out = load.wait_with_output()?;
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            let count = |k: &str| -> Result<f64> {
                said.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|n| n.parse().ok()).with_context(|| format!("no {k} in {said:?}"))
            };
            let (ok, failed) = (count("ok=")?, count("fail=")?);
            results.push(&format!("{key}_secs"), "s", secs);
            results.push(&format!("{key}_answered"), "%", 100.0 * ok / (ok + failed).max(1.0));
            results.push(&format!("{key}_failed"), "requests", failed);
            results.push(&format!("{key}_requests"), "requests", ok + failed);
        }
    }
    b.cli(&b.nodes[0], &["down", "-p", project])?;
    report(&results, opts)
}

fn report(results: &Results, opts: &Options) -> Result<()> {
    let mut sections = Vec::new();
    for (key, name, _) in WAYS {
        let scenario = format!("{name}, {} replicas", opts.replicas);
        let mut lines = Vec::new();
        for (suffix, metric) in
            [
            ("secs", "fizz up → update done everywhere"),
            ("requests", "requests made during it"),
            ("answered", "requests answered"),
            ("failed", "requests failed"),
        ]
        {
            let k = format!("{key}_{suffix}");
            if let Some(entry) = results.entry(&k, None) {
                lines.push(Line { key: k, scenario: scenario.clone(), metric: metric.to_string(), entry });
            }
        }
        sections.push(lines);
    }
    println!(
        "Updating a service under load on a local 3-node cluster: median and range over {} runs (release build).\n\n{}",
        opts.runs,
        report::table(&sections)
    );
    println!("Target: ≥ 99.9% of requests answered during a rolling update of a healthy service.");
    let path = report::out_dir()?.join("update.json");
    let all: Vec<Line> = sections.into_iter().flatten().collect();
    report::write_json(&path, &all)?;
    println!("\nwrote {}", report::display(&path));
    Ok(())
}
