//! `fizz-bench failover`: a local cluster of 3 nodes (`fizz dev`, the release `fizz`), a
//! project of N replicas deployed from node 1, then per run:
//!
//! - **up → known everywhere**: from starting `fizz up -d` on node 1 until nodes 2 and 3 list
//!   the project (the replicated state reached them);
//! - **up → running**: until every replica runs somewhere (node 1's `ps`, cluster-wide);
//! - **key rotated → traffic again**: node 2 takes a new WireGuard key (`fizz node rotate-key`);
//!   until a replica on node 1 fetches a page from one on node 2 again;
//! - **kill → down**: node 3's agent is killed (SIGKILL; its containers stay, as on a host
//!   whose agent died); until nodes 1 and 2 both see it down;
//! - **down → out of its VIPs**: on each of nodes 1 and 2, from seeing node 3 down until node
//!   3's replicas are no longer backends of the service's VIP in that node's datapath (`fizz
//!   net inspect --json` on its pins); the worse node counts; and **kill → out of every VIP**;
//! - **kill → replacements running**: until nodes 1 and 2 run all N replicas themselves;
//! - **restart → declared count**: node 3's agent starts again; until exactly N replicas run,
//!   each number once, node 3 among their nodes (its own come back, the replacements go).
//!
//! Timings come from polling the agents' APIs (`fizz_tests::wait_for`, every 20 ms).
//! References at defaults: Docker Swarm ≈ 15 s, Nomad ≈ 20 s, Kubernetes ≈ 5–6 min from a
//! node's death to its work running elsewhere.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use fizz::{
    api::{client::Client, NodesResponse, PsResponse},
    dev::{self, DevNode},
    docker::RunState,
};
use hyper::Method;

use super::report::{self, Line, Results};
use fizz_tests::{fizz_bin, fizz_ok, wait_for, DevCluster, BUSYBOX_IMAGE};

/// Options of `fizz-bench failover`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Kill-and-restart runs; the report gives their median and range.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Replicas of the project's one service.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(3..=60))]
    pub replicas: u32,
}

const LIMIT: Duration = Duration::from_secs(90);

struct Bench {
    rt: tokio::runtime::Runtime,
    fizz: PathBuf,
    cluster: DevCluster,
    nodes: Vec<DevNode>,
}

impl Bench {
    fn ps(&self, n: &DevNode, project: &str) -> Option<PsResponse> {
        self.rt.block_on(Client::new(&n.socket).call::<(), _>(Method::GET, &format!("/v1/ps?project={project}"), None)).ok()
    }

    fn state_of(&self, n: &DevNode, name: &str) -> Option<String> {
        let r: NodesResponse = self.rt.block_on(Client::new(&n.socket).call::<(), _>(Method::GET, "/v1/nodes", None)).ok()?;
        r.nodes.into_iter().find(|m| m.name == name).map(|m| m.state)
    }

    fn cli(&self, n: &DevNode, args: &[&str]) -> Result<()> {
        fizz_ok(&self.fizz, n, args).map(drop)
    }

    /// Seconds from `since` until `f` holds.
    fn until(&self, what: &str, since: Instant, f: impl FnMut() -> bool) -> Result<f64> {
        wait_for(what, LIMIT, f)?;
        Ok(since.elapsed().as_secs_f64())
    }
}

/// The running replicas in a `ps` answer: (node, replica number).
fn running(ps: &PsResponse) -> Vec<(String, u32)> {
    ps.replicas.iter().filter(|r| r.state == Some(RunState::Running)).map(|r| (r.node.clone(), r.replica)).collect()
}

fn compose(replicas: u32) -> String {
    format!(
        "services:\n  web:\n    image: {BUSYBOX_IMAGE}\n    command: [\"sh\", \"-c\", \"hostname > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {replicas}\n"
    )
}

pub fn run(opts: &Options) -> Result<()> {
    let fizz = fizz_bin().context("the benchmark runs the release `fizz`, which `cargo xtask bench failover` builds")?;
    let tag = format!("fzbf{}", std::process::id() % 10_000);
    let lan = Ipv4Addr::new(10, 95, (std::process::id() % 250) as u8, 0);
    eprintln!("starting a 3-node local cluster ({tag})");
    let rt = tokio::runtime::Runtime::new()?;
    let (cluster, nodes) = DevCluster::start(&tag, lan, 3, &fizz, &rt, LIMIT)?;
    let b = Bench { rt, fizz, cluster, nodes };
    let file = b.cluster.file("compose.yaml", &compose(opts.replicas))?;

    let mut results = Results::default();
    let want = opts.replicas as usize;
    for run in 0..opts.runs {
        let project = format!("failover{run}");
        eprintln!("run {}/{}", run + 1, opts.runs);
        measure(&b, &file, &project, want, &mut results).with_context(|| format!("run {}", run + 1))?;
    }
    report(&results, opts)
}

fn measure(b: &Bench, file: &Path, project: &str, want: usize, results: &mut Results) -> Result<()> {
    let (n1, n3) = (&b.nodes[0], &b.nodes[2]);
    let start = Instant::now();
    b.cli(n1, &["up", "-d", "-f", file.to_str().context("path")?, "-p", project])?;
    let known = b.until("the project known on every node", start, || {
        b.nodes.iter().all(|n| b.ps(n, project).is_some_and(|p| p.projects.iter().any(|x| x == project)))
    })?;
    let up = b.until("every replica running", start, || b.ps(n1, project).is_some_and(|p| running(&p).len() == want))?;
    results.push("up_known_all", "s", known);
    results.push("up_running", "s", up);
    let on_victim = b.ps(n1, project).map(|p| running(&p).iter().filter(|(n, _)| *n == n3.name).count()).unwrap_or(0);
    if on_victim == 0 {
        bail!("node 3 runs no replica of {project}: nothing to fail over");
    }

    // Node 2's WireGuard key rotated: how long until cross-node traffic flows again.
    let target = b
        .ps(n1, project)
        .and_then(|p| p.replicas.into_iter().find(|r| r.node == b.nodes[1].name && r.state == Some(RunState::Running)))
        .and_then(|r| r.addr)
        .context("node 2 runs no replica")?;
    let url = format!("http://{target}:8080/");
    let fetch = || {
        Command::new(&b.fizz)
            .arg("--socket")
            .arg(&n1.socket)
            .args(["exec", "-p", project, "web", "--", "timeout", "2", "wget", "-qO", "/dev/null", &url])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    b.until("node 2 reachable from node 1", Instant::now(), fetch)?;
    b.cli(&b.nodes[1], &["node", "rotate-key"])?;
    let rotated = Instant::now();
    let flowing = b.until("traffic with node 2's new key", rotated, fetch)?;
    results.push("rotate_flowing", "s", flowing);

    let victims: Vec<std::net::Ipv4Addr> = b
        .ps(n1, project)
        .map(|p| p.replicas.into_iter().filter(|r| r.node == n3.name).filter_map(|r| r.addr).collect())
        .unwrap_or_default();
    // The backends in node `n`'s datapath, read from its pinned maps.
    let backends = |n: &DevNode| -> Vec<std::net::Ipv4Addr> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", n.netns))
            .arg("--")
            .arg(&b.fizz)
            .args(["net", "inspect", "--json", "--pin-dir"])
            .arg(b.cluster.0.pin_dir.join(format!("node{}", n.index)))
            .output();
        let v: serde_json::Value = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
        let mut addrs = Vec::new();
        for s in v["services"].as_array().into_iter().flatten() {
            for be in s["backends"].as_array().into_iter().flatten() {
                addrs.extend(be["backend"]["addr"].as_str().and_then(|a| a.parse::<std::net::Ipv4Addr>().ok()));
            }
        }
        addrs
    };
    let survivors = [&b.nodes[0], &b.nodes[1]];
    for n in survivors {
        if !backends(n).iter().any(|a| victims.contains(a)) {
            bail!("node 3's replicas are not backends on {} before the kill", n.name);
        }
    }

    let pid: i32 = std::fs::read_to_string(b.cluster.0.run_dir.join("node3.pid"))?.trim().parse()?;
    // SAFETY: signalling the agent process this benchmark started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    let names = [b.nodes[0].name.clone(), b.nodes[1].name.clone()];
    // Per survivor: when it saw node 3 down, and when node 3's replicas left
    // its VIPs.
    let mut down = [None; 2];
    let mut out_of_vip = [None; 2];
    let replaced = b.until("replacements running", killed, || {
        for (i, n) in survivors.iter().enumerate() {
            if down[i].is_none() && b.state_of(n, &n3.name).as_deref() == Some("down") {
                down[i] = Some(killed.elapsed().as_secs_f64());
            }
            if out_of_vip[i].is_none() && !backends(n).iter().any(|a| victims.contains(a)) {
                out_of_vip[i] = Some(killed.elapsed().as_secs_f64());
            }
        }
        b.ps(n1, project).is_some_and(|p| {
            let r = running(&p);
            let numbers: BTreeSet<u32> = r.iter().map(|(_, i)| *i).collect();
            r.len() == want && numbers.len() == want && r.iter().all(|(n, _)| names.contains(n))
        })
    })?;
    if let [Some(d1), Some(d2)] = down {
        results.push("kill_down", "s", d1.max(d2));
    }
    if let ([Some(d1), Some(d2)], [Some(v1), Some(v2)]) = (down, out_of_vip) {
        // Negative if a VIP dropped them before the poll saw the node down.
        results.push("down_out_of_vip", "s", (v1 - d1).max(v2 - d2));
        results.push("kill_out_of_vip", "s", v1.max(v2));
    }
    results.push("kill_replaced", "s", replaced);

    dev::up(&b.cluster.0, 3, &b.fizz)?;
    let restarted = Instant::now();
    let settled = b.until("exactly the declared count after the rejoin", restarted, || {
        b.state_of(n1, &n3.name).as_deref() == Some("alive")
            && b.ps(n1, project).is_some_and(|p| {
                let numbers: BTreeSet<u32> = p.replicas.iter().map(|r| r.replica).collect();
                // Node 3 back in the view, running its own share again, and the
                // replacements gone.
                p.replicas.len() == want
                    && numbers.len() == want
                    && running(&p).len() == want
                    && running(&p).iter().any(|(n, _)| *n == n3.name)
            })
    })?;
    results.push("rejoin_settled", "s", settled);
    b.cli(n1, &["down", "-p", project])?;
    b.until("the project gone", Instant::now(), || b.nodes.iter().all(|n| b.ps(n, project).is_some_and(|p| p.replicas.is_empty())))?;
    Ok(())
}

fn report(results: &Results, opts: &Options) -> Result<()> {
    let scenario = format!("3 nodes, {} replicas", opts.replicas);
    let mut lines = Vec::new();
    for (key, metric) in [
        ("up_known_all", "fizz up → project known on every node"),
        ("up_running", "fizz up → every replica running"),
        ("rotate_flowing", "node 2's key rotated → cross-node request answered"),
        ("kill_down", "node killed → down on both other nodes"),
        ("down_out_of_vip", "down on a node → out of its VIPs (worst node)"),
        ("kill_out_of_vip", "node killed → out of every VIP"),
        ("kill_replaced", "node killed → replacements running"),
        ("rejoin_settled", "node back → exactly the declared count"),
    ] {
        if let Some(entry) = results.entry(key, None) {
            lines.push(Line { key: key.to_string(), scenario: scenario.clone(), metric: metric.to_string(), entry });
        }
    }
    println!(
        "Failover on a local cluster: median and range over {} runs (release build).\n\n{}",
        opts.runs,
        report::table(std::slice::from_ref(&lines))
    );
    println!("Targets: node killed → down on the others ≤ 7 s, and out of every VIP ≤ 1 s after; node killed → replacements running ≤ 10 s (Swarm ≈ 15 s, Nomad ≈ 20 s, Kubernetes ≈ 5–6 min at defaults); key rotated → traffic again ≤ 10 s.");
    let path = report::out_dir()?.join("failover.json");
    report::write_json(&path, &lines)?;
    println!("\nwrote {}", report::display(&path));
    Ok(())
}
