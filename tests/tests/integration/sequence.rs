//! A random sequence of `up`, `scale` and `down` sent to random nodes of a local 3-node
//! cluster while its nodes are killed, restarted, cut off the LAN and healed. Afterwards, every
//! command that was acknowledged counts, in the order it was acknowledged, and nothing else:
//! each project runs exactly the replicas and the definition the last acknowledged command
//! for it says, on every node's view, and a project last taken down runs nothing.
//!
//! The sequence comes from a seed, printed first; `FIZZ_SEED=<n>` replays one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use fizz::{
    api::{client::Client, PsResponse},
    dev::{self, DevNode},
    docker::RunState,
    hash::SplitMix64,
};
use fizz_tests::{alive_members, fizz_bin, fizz_on as cli, require_docker, unique, wait_for, DevCluster};
use hyper::Method;

/// A project of one service, `replicas` of it, its definition marked by `variant` (a label:
/// changing it is an update).
fn compose(replicas: u32, variant: u64) -> String {
    format!(
        "services:\n  web:\n    image: {}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    labels:\n      variant: \"{variant}\"\n    deploy:\n      replicas: {replicas}\n      update_config:\n        parallelism: 2\n        monitor: 1s\n        order: start-first\n",
        fizz_tests::BUSYBOX_IMAGE
    )
}

/// What a project's containers are: (replica, variant, running) of each, from Docker itself
/// (the nodes of a local cluster share one engine).
fn containers(project: &str) -> Vec<(u32, String, bool)> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("label=fizz.project={project}")])
        .args(["--format", "{{.Label \"fizz.replica\"}} {{.Label \"variant\"}} {{.State}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.to_string(), w.next()? == "running"))
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Killed(usize),
    Cut(usize),
}

#[test]
fn a_random_sequence_during_faults_ends_as_acknowledged() {
    require_docker!();
    let seed: u64 = std::env::var("FIZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("sequence seed {seed} (FIZZ_SEED={seed} replays it)");
    let mut rng = SplitMix64(seed);
    let tag = unique("Q");
    let lan = Ipv4Addr::new(10, 92, (std::process::id() % 250) as u8, 0);
    let fizz = fizz_bin().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, members) = DevCluster::start(&tag, lan, 3, &fizz, &rt, Duration::from_secs(15)).unwrap();
    let alive_everywhere = || members.iter().all(|n| alive_members(&rt, n) == 3);

    let projects = [format!("{}a", tag.to_lowercase()), format!("{}b", tag.to_lowercase())];
    // What the acknowledged commands say each project runs: (replicas, variant), or nothing.
    let mut expect: BTreeMap<String, Option<(u32, u64)>> = projects.iter().map(|p| (p.clone(), None)).collect();
    let pid_of = |i: usize| -> i32 {
        std::fs::read_to_string(cluster.0.run_dir.join(format!("node{}.pid", i + 1))).unwrap().trim().parse().unwrap()
    };
    let link = |i: usize, state: &str| {
        let lan_if = format!("{}{}", cluster.0.short, i + 1);
        let ok = std::process::Command::new("ip").args(["link", "set", &lan_if, state]).status().unwrap().success();
        assert!(ok, "ip link set {lan_if} {state}");
    };
    let heal = |f: Fault| match f {
        Fault::Killed(_) => {
            dev::up(&cluster.0, 3, &fizz).unwrap();
        }
        Fault::Cut(i) => link(i, "up"),
    };
    let mut fault: Option<(Fault, u64)> = None;
    let mut acked = 0;
    for step in 0..20 {
        // One fault at a time, lasting one to three commands.
        match fault {
            Some((f, 0)) => {
                eprintln!("step {step}: heal {f:?}");
                heal(f);
                fault = None;
            }
            Some((f, n)) => fault = Some((f, n - 1)),
            None if rng.chance(40) => {
                let i = rng.below(3) as usize;
                let f = if rng.chance(50) { Fault::Killed(i) } else { Fault::Cut(i) };
                eprintln!("step {step}: {f:?}");
                match f {
                    Fault::Killed(i) => {
                        let pid = pid_of(i);
                        // SAFETY: signalling and reaping an agent this test started.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                            libc::waitpid(pid, std::ptr::null_mut(), 0);
                        }
                    }
                    Fault::Cut(i) => link(i, "down"),
                }
                fault = Some((f, rng.below(3)));
            }
            None => {}
        }
        let n = &members[rng.below(3) as usize];
        let p = projects[rng.below(2) as usize].clone();
        // A project known to be down is mostly deployed again (scaling or downing it proves little).
        let op = if expect[&p].is_none() && rng.chance(75) { 0 } else { rng.below(4) };
        let (what, ok, out) = match op {
            0 | 1 => {
                let (replicas, variant) = (1 + rng.below(4) as u32, rng.below(3));
                let file = cluster.file(&format!("s{step}.yaml"), &compose(replicas, variant)).unwrap();
                let (ok, out) = cli(&fizz, n, &["up", "-d", "-f", file.to_str().unwrap(), "-p", &p]);
                if ok {
                    expect.insert(p.clone(), Some((replicas, variant)));
                }
                (format!("up {replicas}×v{variant}"), ok, out)
            }
            2 => {
                let replicas = 1 + rng.below(4) as u32;
                let (ok, out) = cli(&fizz, n, &["scale", "-p", &p, &format!("web={replicas}")]);
                if ok {
                    // A project taken down stays down whatever its scale says.
                    if let Some(Some((r, _))) = expect.get_mut(&p) {
                        *r = replicas;
                    }
                }
                (format!("scale {replicas}"), ok, out)
            }
            _ => {
                let (ok, out) = cli(&fizz, n, &["down", "-p", &p]);
                if ok {
                    expect.insert(p.clone(), None);
                }
                ("down".to_string(), ok, out)
            }
        };
        acked += usize::from(ok);
        let said = if ok { "acknowledged".to_string() } else { format!("refused: {}", out.trim().lines().last().unwrap_or("")) };
        eprintln!("step {step}: {what} {p} on {}: {said}", n.name);
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
    }
    if let Some((f, _)) = fault {
        eprintln!("end: heal {f:?}");
        heal(f);
    }
    eprintln!("{acked} commands acknowledged; expecting {expect:?}");
    assert!(acked > 0, "no command was acknowledged: the sequence proved nothing");

    wait_for("3 alive members after the faults", Duration::from_secs(40), alive_everywhere).unwrap();
    let ps = |n: &DevNode, p: &str| -> PsResponse {
        rt.block_on(Client::new(&n.socket).call::<(), _>(Method::GET, &format!("/v1/ps?project={p}"), None)).unwrap_or_default()
    };
    let as_acknowledged = || {
        expect.iter().all(|(p, want)| {
            let got = containers(p);
            let views_agree = members.iter().all(|n| {
                let view = ps(n, p);
                let deployed = view.projects.contains(p);
                match want {
                    Some((r, _)) => {
                        deployed
                            && view.replicas.len() == *r as usize
                            && view.replicas.iter().all(|x| x.state == Some(RunState::Running))
                    }
                    None => !deployed && view.replicas.is_empty(),
                }
            });
            let engine_agrees = match want {
                Some((r, v)) => {
                    let numbers: BTreeSet<u32> = got.iter().map(|(n, _, _)| *n).collect();
                    got.len() == *r as usize
                        && numbers == (1..=*r).collect()
                        && got.iter().all(|(_, variant, running)| *running && *variant == v.to_string())
                }
                None => got.is_empty(),
            };
            views_agree && engine_agrees
        })
    };
    wait_for("every project as the acknowledged commands say", Duration::from_secs(90), as_acknowledged).unwrap_or_else(|e| {
        let got: BTreeMap<&String, _> = expect.keys().map(|p| (p, containers(p))).collect();
        panic!("{e} (seed {seed}): expected {expect:?}, Docker has {got:?}, views {:#?}", members.iter().map(|n| ps(n, &projects[0])).collect::<Vec<_>>())
    });
    for p in &projects {
        let _ = cli(&fizz, &members[0], &["down", "-p", p]);
    }
}
