//! A cluster on one machine, as `fizz dev up` makes it: nodes are network
//! namespaces on a bridge, each with its agent. They form a cluster with a
//! token, spread a project deployed on one of them, serve it through VIPs on
//! every node, replace a killed node's replica, see it come back, and a node
//! with a wrong token never becomes a member. A node's WireGuard key rotates with traffic
//! flowing again. Rolling updates keep a VIP answering and roll back a failing definition.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use fizz::{
    api::{client::Client, JoinRequest, NodesResponse, PsResponse},
    dev::{self, DevNode, Layout},
    docker::RunState,
};
use fizz_tests::{fizz_bin, fizz_on as cli, require_docker, unique, wait_for, DevCluster};
use hyper::Method;

/// Exactly `want` replicas, each number once, all running.
fn settled(ps: &PsResponse, want: usize) -> bool {
    let numbers: BTreeSet<u32> = ps.replicas.iter().map(|r| r.replica).collect();
    ps.replicas.len() == want && numbers.len() == want && ps.replicas.iter().all(|r| r.state == Some(RunState::Running))
}

fn nodes(rt: &tokio::runtime::Runtime, n: &DevNode) -> NodesResponse {
    rt.block_on(Client::new(&n.socket).call::<(), _>(Method::GET, "/v1/nodes", None)).unwrap()
}

fn state_of(r: &NodesResponse, name: &str) -> Option<String> {
    r.nodes.iter().find(|n| n.name == name).map(|n| n.state.clone())
}

#[test]
fn nodes_form_a_cluster_see_failures_and_refuse_a_wrong_token() {
    require_docker!();
    let tag = unique("D");
    let lan = Ipv4Addr::new(10, 97, (std::process::id() % 250) as u8, 0);
    let cluster = DevCluster(Layout::isolated(&tag, lan));
    let fizz = fizz_bin().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let all = dev::up(&cluster.0, 4, &fizz).unwrap();
    let (members, outsider) = all.split_at(3);
    let token = dev::form_cluster(members).unwrap();
    for n in members {
        wait_for("3 alive members", Duration::from_secs(15), || {
            let r = nodes(&rt, n);
            r.nodes.iter().filter(|m| m.state == "alive").count() == 3
        })
        .unwrap();
    }

    // A node with a wrong token learns nothing and is never seen.
    let wrong = token.replace(&token[token.len() - 4..], "0000");
    let req = JoinRequest { token: wrong, seeds: vec![std::net::SocketAddr::from((members[0].lan_addr, 7946))] };
    let err = rt
        .block_on(Client::new(&outsider[0].socket).call::<_, ()>(Method::POST, "/v1/cluster/join", Some(&req)))
        .expect_err("a wrong token must not join");
    assert!(err.to_string().contains("no member answered"), "{err}");
    assert!(!nodes(&rt, &outsider[0]).clustered, "the failed join left nothing behind");
    for n in members {
        assert_eq!(state_of(&nodes(&rt, n), &outsider[0].name), None, "the outsider is never a member");
    }

    // A project deployed from node 1 spreads over the three nodes, and every node sees all of
    // it: the state and the nodes' reports travel between them.
    let file = cluster
        .file(
            "web.yaml",
            &format!(
                "services:\n  web:\n    image: {}\n    command: [\"sh\", \"-c\", \"hostname > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: 3\n",
                fizz_tests::BUSYBOX_IMAGE
            ),
        )
        .unwrap();
    let cli = |n: &DevNode, args: &[&str]| cli(&fizz, n, args);
    let ps_of = |n: &DevNode, project: &str| -> PsResponse {
        let (_, out) = cli(n, &["ps", "-p", project, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let project = format!("{tag}a").to_lowercase();
    let (ok, out) = cli(&members[0], &["up", "-f", file.to_str().unwrap(), "-p", &project, "--timeout", "60"]);
    assert!(ok, "{out}");
    let running = |n: &DevNode| -> Vec<fizz::api::Replica> {
        ps_of(n, &project).replicas.into_iter().filter(|r| r.state == Some(RunState::Running)).collect()
    };
    let spread = |rs: &[fizz::api::Replica]| rs.iter().map(|r| r.node.clone()).collect::<std::collections::BTreeSet<_>>();
    wait_for("one replica on each node, seen from node 2", Duration::from_secs(30), || {
        let rs = running(&members[1]);
        rs.len() == 3 && spread(&rs).len() == 3
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", running(&members[1])));

    // Labels set from one node steer placement everywhere.
    let (ok, out) = cli(&members[0], &["node", "label", "no-such-node", "zone=b"]);
    assert!(!ok && out.contains("no node named no-such-node"), "{out}");
    let (ok, out) = cli(&members[2], &["node", "label", &members[1].name, "zone=b"]);
    assert!(ok && out.contains("zone=b"), "{out}");
    let pinned = cluster
        .file(
            "pinned.yaml",
            &format!(
                "services:\n  pinned:\n    image: {}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: 2\n      placement:\n        constraints: [\"node.labels.zone == b\"]\n",
                fizz_tests::BUSYBOX_IMAGE
            ),
        )
        .unwrap();
    let pinned_project = format!("{tag}p").to_lowercase();
    let (ok, out) = cli(&members[0], &["up", "-f", pinned.to_str().unwrap(), "-p", &pinned_project]);
    assert!(ok, "{out}");
    let pinned_running = || ps_of(&members[0], &pinned_project).replicas;
    wait_for("both pinned replicas on node 2", Duration::from_secs(30), || {
        let rs = pinned_running();
        rs.len() == 2 && rs.iter().all(|r| r.node == members[1].name && r.state == Some(RunState::Running))
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", pinned_running()));

    // Containers on two nodes reach each other through the WireGuard mesh the agents built
    // from what gossip told them: by address, and through the VIP by name, whose backends
    // are the replicas of every node.
    let rs = running(&members[0]);
    let remote = rs.iter().find(|r| r.node == members[1].name).and_then(|r| r.addr).expect("node 2's replica has an address");
    assert!(remote.octets()[2] == 1, "node 2's range is 10.42.1.0/24: {remote}");
    let fetch = |url: &str| cli(&members[0], &["exec", "-p", &project, "web", "--", "timeout", "3", "wget", "-qO-", url]);
    let mut last = String::new();
    wait_for("node 1's container to reach node 2's", Duration::from_secs(20), || {
        let (ok, out) = fetch(&format!("http://{remote}:8080/"));
        last = out;
        ok && last.contains("-web-")
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (ok, out) = fetch("http://web:8080/");
        if ok {
            seen.insert(out.trim().to_string());
        }
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "the VIP reaches the replicas of all three nodes: {seen:?}");

    // Network isolation holds across nodes: each node learns the networks of the other nodes'
    // containers from their reports. Node 2's pinned containers (another project, so another
    // network) cannot reach node 1's web replica (node 2 drops the SYN before the tunnel, or
    // node 1 on arrival), while node 2's web replica can.
    let inspect = |i: usize| inspect(&fizz, &cluster, members, i);
    let remote_mask = |v: &serde_json::Value, addr: Ipv4Addr| remote_masks(v).get(&addr.to_string()).copied();
    let policy_drops = |v: &serde_json::Value| v["drops"]["policy-denied"]["packets"].as_u64().unwrap_or(0);
    let pinned_addr = pinned_running().iter().find_map(|r| r.addr).expect("a pinned replica has an address");
    wait_for("node 1 to know the networks of node 2's containers", Duration::from_secs(20), || {
        let v = inspect(0);
        matches!((remote_mask(&v, pinned_addr), remote_mask(&v, remote)), (Some(p), Some(w)) if p & w == 0 && p != 0 && w != 0)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", inspect(0)["remote_endpoints"]));
    let on_n1 = rs.iter().find(|r| r.node == members[0].name).and_then(|r| r.addr).expect("node 1's replica has an address");
    let url = format!("http://{on_n1}:8080/");
    let denied_before = policy_drops(&inspect(0)) + policy_drops(&inspect(1));
    let (ok, out) = cli(&members[1], &["exec", "-p", &pinned_project, "pinned", "--", "timeout", "3", "wget", "-qO-", &url]);
    assert!(!ok, "a container on another network reached node 1's web replica: {out}");
    let denied = policy_drops(&inspect(0)) + policy_drops(&inspect(1));
    assert!(denied > denied_before, "dropped as policy: node 1 {}, node 2 {}", inspect(0)["drops"], inspect(1)["drops"]);
    let (ok, out) = cli(&members[1], &["exec", "-p", &project, "web", "--", "timeout", "3", "wget", "-qO-", &url]);
    assert!(ok && out.contains("-web-"), "node 2's web replica reaches node 1's: {out}");
    let (ok, out) = cli(&members[0], &["down", "-p", &pinned_project]);
    assert!(ok, "{out}");
    let (_, out) = cli(&members[0], &["nodes", "--json"]);
    let r: NodesResponse = serde_json::from_str(&out).unwrap();
    let peer = r.nodes.iter().find(|n| n.name == members[1].name).unwrap();
    assert!(peer.wg_handshake_secs.is_some(), "a WireGuard handshake with node 2 happened: {peer:?}");

    // Node 2 takes a new WireGuard key: node 1 learns it by gossip, and node 2's container
    // answers again through the tunnel made with it.
    let old_key = peer.wg_pubkey.clone();
    let (ok, out) = cli(&members[1], &["node", "rotate-key"]);
    assert!(ok, "{out}");
    let new_key = out.split_whitespace().last().unwrap().to_string();
    assert_ne!(new_key, old_key);
    let rotated = Instant::now();
    wait_for("node 1 to know node 2's new key", Duration::from_secs(15), || {
        let (_, out) = cli(&members[0], &["nodes", "--json"]);
        serde_json::from_str::<NodesResponse>(&out).is_ok_and(|r| r.nodes.iter().any(|n| n.name == members[1].name && n.wg_pubkey == new_key))
    })
    .unwrap();
    wait_for("node 2's container reachable with its new key", Duration::from_secs(30), || {
        let (ok, out) = fetch(&format!("http://{remote}:8080/"));
        last = out;
        ok && last.contains("-web-")
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    // How fast is measured by the benchmarks, not asserted here.
    eprintln!("cross-node traffic flowed again {:?} after the key rotation", rotated.elapsed());
    let (ok, out) = cli(&outsider[0], &["node", "rotate-key"]);
    assert!(!ok && out.contains("in no cluster"), "a node outside any cluster has no key to rotate: {out}");

    // Kill node 3's agent: the others see it down, take its replica out of their VIPs, and
    // start it themselves.
    let on_n3 = running(&members[0]).into_iter().find(|r| r.node == members[2].name).and_then(|r| r.addr).unwrap();
    let pid: i32 = std::fs::read_to_string(cluster.0.run_dir.join("node3.pid")).unwrap().trim().parse().unwrap();
    // SAFETY: signalling the agent process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    wait_for("node 3 down on nodes 1 and 2", Duration::from_secs(15), || {
        members[..2].iter().all(|n| state_of(&nodes(&rt, n), &members[2].name).as_deref() == Some("down"))
    })
    .unwrap();
    // How fast is measured by the benchmarks, not asserted here.
    eprintln!("a killed node was down on the others after {:?}", killed.elapsed());
    let backends_on_node1 = || -> Vec<Ipv4Addr> {
        let v = inspect(0);
        let mut addrs = Vec::new();
        for s in v["services"].as_array().into_iter().flatten() {
            for b in s["backends"].as_array().into_iter().flatten() {
                if let Some(a) = b["backend"]["addr"].as_str().and_then(|a| a.parse().ok()) {
                    addrs.push(a);
                }
            }
        }
        addrs
    };
    wait_for("node 3's replica out of node 1's VIP", Duration::from_secs(10), || {
        let addrs = backends_on_node1();
        !addrs.is_empty() && !addrs.contains(&on_n3)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} still has {on_n3}", backends_on_node1()));
    let survivors = [members[0].name.clone(), members[1].name.clone()];
    wait_for("3 replicas running on nodes 1 and 2", Duration::from_secs(40), || {
        let rs = running(&members[0]);
        rs.len() == 3 && rs.iter().all(|r| survivors.contains(&r.node))
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", running(&members[0])));
    eprintln!("the killed node's replica ran elsewhere after {:?}", killed.elapsed());

    // Its agent restarted, it comes back by itself (saved peers), as a new generation, and
    // the declared count holds: exactly 3, each replica number once.
    dev::up(&cluster.0, 3, &fizz).unwrap();
    wait_for("node 3 alive again", Duration::from_secs(15), || {
        members[..2].iter().all(|n| state_of(&nodes(&rt, n), &members[2].name).as_deref() == Some("alive"))
    })
    .unwrap();
    wait_for("exactly 3 replicas, once each", Duration::from_secs(40), || settled(&ps_of(&members[2], &project), 3))
    .unwrap_or_else(|e| panic!("{e}: {:#?}", running(&members[2])));
    let (ok, out) = cli(&members[1], &["down", "-p", &project]);
    assert!(ok, "{out}");
}

/// `fizz net inspect --json` of node `i` (0-based) of a dev cluster, run in its namespace;
/// null when it fails.
fn inspect(fizz: &std::path::Path, cluster: &DevCluster, members: &[DevNode], i: usize) -> serde_json::Value {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", members[i].netns))
        .arg("--")
        .arg(fizz)
        .args(["net", "inspect", "--json", "--pin-dir"])
        .arg(cluster.0.pin_dir.join(format!("node{}", i + 1)))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The other nodes' containers a node's datapath knows, with their network masks.
fn remote_masks(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v["remote_endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["addr"].as_str()?.to_string(), e["net_mask"].as_u64()?)))
        .collect()
}

/// The running replicas a node reports about itself: replica number → container id.
fn own_replicas(ps: &PsResponse, node: &str) -> BTreeMap<u32, String> {
    ps.replicas
        .iter()
        .filter(|r| r.node == node && r.state == Some(RunState::Running))
        .map(|r| (r.replica, r.container_id.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn a_minority_starts_nothing_restarting_every_agent_recreates_nothing_and_removed_nodes_stop_counting() {
    require_docker!();
    let tag = unique("P");
    let lan = Ipv4Addr::new(10, 94, (std::process::id() % 250) as u8, 0);
    let fizz = fizz_bin().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, members) = DevCluster::start(&tag, lan, 3, &fizz, &rt, Duration::from_secs(15)).unwrap();
    let alive_everywhere = || {
        members.iter().all(|n| nodes(&rt, n).nodes.iter().filter(|m| m.state == "alive").count() == 3)
    };

    let file = cluster
        .file(
            "app.yaml",
            &format!(
                "services:\n  app:\n    image: {}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: 3\n",
                fizz_tests::BUSYBOX_IMAGE
            ),
        )
        .unwrap();
    let project = tag.to_lowercase();
    let ps = |n: &DevNode| -> PsResponse {
        rt.block_on(Client::new(&n.socket).call::<(), _>(Method::GET, &format!("/v1/ps?project={project}"), None))
            .unwrap_or_default()
    };
    let (ok, out) = cli(&fizz, &members[0], &["up", "-f", file.to_str().unwrap(), "-p", &project, "--timeout", "60"]);
    assert!(ok, "{out}");
    let settled = |n: &DevNode| settled(&ps(n), 3);
    wait_for("3 replicas running", Duration::from_secs(30), || settled(&members[0])).unwrap();
    let before: Vec<BTreeMap<u32, String>> = members.iter().map(|n| own_replicas(&ps(n), &n.name)).collect();
    assert!(before.iter().all(|r| r.len() == 1), "one replica per node: {before:?}");

    // Every agent killed at once and started again: the state is on disk, the containers are
    // adopted, nothing is recreated.
    // The other nodes' containers' networks, as node 1's datapath holds them: they outlive
    // the agent (pinned), and a restarted agent keeps them until it knows the reports again.
    wait_for("node 1 to know the replicas of nodes 2 and 3", Duration::from_secs(15), || {
        remote_masks(&inspect(&fizz, &cluster, &members, 0)).len() == 2
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", remote_masks(&inspect(&fizz, &cluster, &members, 0))));
    let known = remote_masks(&inspect(&fizz, &cluster, &members, 0));
    let pids: Vec<i32> = (1..=3)
        .map(|i| std::fs::read_to_string(cluster.0.run_dir.join(format!("node{i}.pid"))).unwrap().trim().parse().unwrap())
        .collect();
    for pid in &pids {
        // SAFETY: signalling agent processes this test started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    for pid in &pids {
        // SAFETY: reaping the agents this test started (its children), so that none is left
        // a zombie that still looks alive.
        unsafe { libc::waitpid(*pid, std::ptr::null_mut(), 0) };
    }
    dev::up(&cluster.0, 3, &fizz).unwrap();
    // Before the restarted agents settle a majority view (3 s at least), none knows the
    // others' reports: node 1's datapath must keep what it held.
    for _ in 0..5 {
        assert_eq!(remote_masks(&inspect(&fizz, &cluster, &members, 0)), known, "right after the restart");
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for("3 alive members after the restart", Duration::from_secs(30), alive_everywhere)
        .unwrap_or_else(|e| panic!("{e}: {:#?}", members.iter().map(|n| nodes(&rt, n)).collect::<Vec<_>>()));
    wait_for("every node reports its replica", Duration::from_secs(30), || members.iter().all(settled)).unwrap();
    // Give a wrong decision time to show.
    std::thread::sleep(Duration::from_secs(4));
    let after: Vec<BTreeMap<u32, String>> = members.iter().map(|n| own_replicas(&ps(n), &n.name)).collect();
    assert_eq!(after, before, "the same containers, nothing recreated");

    // Node 3 cut off the LAN: nodes 1 and 2 (a majority) start its replica; node 3 (a
    // minority) keeps its own and starts none of theirs.
    let lan_if = format!("{}3", cluster.0.short);
    let link = |state: &str| {
        let ok = std::process::Command::new("ip").args(["link", "set", &lan_if, state]).status().unwrap().success();
        assert!(ok, "ip link set {lan_if} {state}");
    };
    link("down");
    let (n1, n3) = (&members[0], &members[2]);
    wait_for("each side sees the other down", Duration::from_secs(20), || {
        state_of(&nodes(&rt, n1), &n3.name).as_deref() == Some("down")
            && nodes(&rt, n3).nodes.iter().filter(|m| m.state == "down").count() == 2
    })
    .unwrap();
    let survivors = [members[0].name.clone(), members[1].name.clone()];
    wait_for("the majority runs 3 replicas", Duration::from_secs(30), || {
        let p = ps(n1);
        let running: Vec<_> = p.replicas.iter().filter(|r| r.state == Some(RunState::Running)).collect();
        running.len() == 3 && running.iter().all(|r| survivors.contains(&r.node))
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", ps(n1)));
    std::thread::sleep(Duration::from_secs(4));
    let minority = own_replicas(&ps(n3), &n3.name);
    assert_eq!(minority, before[2], "the minority keeps its replica and starts nothing");

    // Healed: views converge and duplicates go, down to the declared count.
    link("up");
    wait_for("3 alive members after the heal", Duration::from_secs(30), alive_everywhere).unwrap();
    wait_for("exactly 3 replicas, once each, on every node's view", Duration::from_secs(40), || members.iter().all(settled))
        .unwrap_or_else(|e| panic!("{e}: {:#?}", members.iter().map(ps).collect::<Vec<_>>()));

    // Nodes 2 and 3 gone for good: node 1 alone is a minority of the three it knows and starts
    // nothing, until the two are removed (`fizz node rm`, refused while a node is alive).
    let (ok, out) = cli(&fizz, n1, &["node", "rm", &members[1].name]);
    assert!(!ok && out.contains("is alive"), "an alive node is not removed: {out}");
    let (ok, out) = cli(&fizz, n1, &["node", "rm", &n1.name]);
    assert!(!ok && out.contains("is this node"), "{out}");
    for i in [2, 3] {
        let pid: i32 = std::fs::read_to_string(cluster.0.run_dir.join(format!("node{i}.pid"))).unwrap().trim().parse().unwrap();
        // SAFETY: killing and reaping agents this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    wait_for("node 1 sees nodes 2 and 3 down", Duration::from_secs(20), || {
        nodes(&rt, n1).nodes.iter().filter(|m| m.state == "down").count() == 2
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(own_replicas(&ps(n1), &n1.name).len(), 1, "alone among three, node 1 starts nothing");
    for n in &members[1..] {
        let (ok, out) = cli(&fizz, n1, &["node", "rm", &n.name]);
        assert!(ok, "{out}");
    }
    assert_eq!(nodes(&rt, n1).nodes.len(), 1, "removed nodes are no longer listed");
    wait_for("node 1 runs all 3 replicas", Duration::from_secs(30), || own_replicas(&ps(n1), &n1.name).len() == 3)
        .unwrap_or_else(|e| panic!("{e}: {:#?}", ps(n1)));
}

/// A `web` service of three replicas answering with `version`, checked healthy, updated by
/// `order` and rolled back to its previous definition when an update fails.
fn versioned_web(version: &str, command: &str, order: &str) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    environment:
      VERSION: {version}
    command: ["sh", "-c", "{command}"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "wget", "-qO", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 1s
      retries: 2
    deploy:
      replicas: 3
      update_config:
        parallelism: 1
        monitor: 2s
        order: {order}
        failure_action: rollback
      rollback_config:
        monitor: 1s
  client:
    image: {image}
    command: ["sleep", "3600"]
    # Reaps what busybox `timeout` leaves behind (its watcher outlives the command).
    init: true
    stop_grace_period: 1s
    deploy:
      mode: global
"#,
        image = fizz_tests::BUSYBOX_IMAGE
    )
}

const SERVE: &str = "mkdir -p /www && echo $$VERSION > /www/index.html && exec httpd -f -p 8080 -h /www";

#[test]
fn a_rotated_join_token_admits_and_a_rolling_update_keeps_the_vip_answering() {
    require_docker!();
    let tag = unique("U");
    let lan = Ipv4Addr::new(10, 93, (std::process::id() % 250) as u8, 0);
    let cluster = DevCluster(Layout::isolated(&tag, lan));
    let fizz = fizz_bin().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members = dev::up(&cluster.0, 4, &fizz).unwrap();
    let old_token = dev::form_cluster(&members[..3]).unwrap();

    // The join token rotated on node 2: node 3 prints the new one, and node 4 is refused with
    // the old one and joins with the new one.
    let (ok, out) = cli(&fizz, &members[1], &["join-token", "--rotate"]);
    assert!(ok, "{out}");
    let new_token = out.split_whitespace().find(|w| w.starts_with("fizz1-")).expect("a token").to_string();
    assert_ne!(new_token, old_token);
    // The rotation reaches the other members by state sync, eventually.
    let mut seen = Vec::new();
    let spread = wait_for("every member to hold the new token", Duration::from_secs(15), || {
        seen = [&members[0], &members[2]].iter().map(|m| cli(&fizz, m, &["join-token"]).1.trim().to_string()).collect();
        seen.iter().all(|t| *t == new_token)
    });
    assert!(spread.is_ok(), "every member holds the new token {new_token}: {seen:?}");
    let seed = format!("{}:7946", members[0].lan_addr);
    let (ok, out) = cli(&fizz, &members[3], &["join", &seed, "--token", &old_token]);
    assert!(!ok && out.contains("no member answered"), "a rotated-away token is refused: {out}");
    assert!(!nodes(&rt, &members[3]).clustered, "the refused join left nothing behind");
    let (ok, out) = cli(&fizz, &members[3], &["join", &seed, "--token", &new_token]);
    assert!(ok, "{out}");
    wait_for("4 alive members everywhere", Duration::from_secs(20), || {
        members.iter().all(|n| nodes(&rt, n).nodes.iter().filter(|m| m.state == "alive").count() == 4)
    })
    .unwrap();
    let project = tag.to_lowercase();
    let n1 = &members[0];
    let up = |name: &str, text: &str| {
        let file = cluster.file(name, text).unwrap();
        cli(&fizz, n1, &["up", "-f", file.to_str().unwrap(), "-p", &project, "--timeout", "90"])
    };
    let (ok, out) = up("v1.yaml", &versioned_web("v1", SERVE, "start-first"));
    assert!(ok, "{out}");
    let ps = || -> PsResponse {
        rt.block_on(Client::new(&n1.socket).call::<(), _>(Method::GET, &format!("/v1/ps?project={project}"), None)).unwrap_or_default()
    };
    let web_spread = || {
        let p = ps();
        let web: Vec<_> = p.replicas.iter().filter(|r| r.service == "web" && r.state == Some(RunState::Running)).collect();
        web.len() == 3 && web.iter().map(|r| &r.node).collect::<BTreeSet<_>>().len() == 3
    };
    wait_for("web on every node", Duration::from_secs(30), web_spread).unwrap_or_else(|e| panic!("{e}: {:#?}", ps()));
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "-p", project.as_str(), "client", "--"];
        all.extend_from_slice(args);
        cli(&fizz, n1, &all)
    };
    let versions = || -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..12 {
            let (_, out) = exec(&["timeout", "3", "wget", "-qO-", "http://web:8080/"]);
            *seen.entry(out.trim().to_string()).or_default() += 1;
        }
        seen
    };
    wait_for("v1 answers through the VIP", Duration::from_secs(20), || versions().keys().all(|v| v == "v1")).unwrap();

    // Load through the VIP by name from node 1's client while the service is updated: fresh
    // connections, one after the other, until told to stop.
    let load = std::process::Command::new(&fizz)
        .arg("--socket")
        .arg(&n1.socket)
        .args(["exec", "-p", &project, "client", "--", "sh", "-c"])
        .arg(
            "rm -f /tmp/stop; ok=0; fail=0; while [ ! -e /tmp/stop ]; do \
             if timeout 3 wget -qO /dev/null http://web:8080/ 2>/dev/null; then ok=$((ok+1)); else fail=$((fail+1)); fi; \
             done; echo ok=$ok fail=$fail",
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // Started first, one at a time: the update completes, and `up` waits for it.
    let (ok, out) = up("v2.yaml", &versioned_web("v2", SERVE, "start-first"));
    assert!(ok && out.contains("(updated)"), "{out}");
    eprintln!("{out}");
    let web_count = || ps().replicas.iter().filter(|r| r.service == "web").count();
    wait_for("exactly 3 web replicas after the update", Duration::from_secs(20), || web_count() == 3)
        .unwrap_or_else(|e| panic!("{e}: {:#?}", ps()));
    let p = ps();
    let status = p.updates.iter().find(|u| u.service == "web").expect("web's update is recorded");
    assert_eq!(status.phase, fizz::api::UpdatePhase::Done, "{status:?}");
    assert_eq!(versions().keys().collect::<Vec<_>>(), vec!["v2"], "every replica serves v2");

    // A definition whose replicas crash, stopped first: the first new replica fails, the
    // update rolls back, and `up` says so.
    let crash = "echo $$VERSION; exit 3";
    let (ok, out) = up("v3.yaml", &versioned_web("v3", crash, "stop-first"));
    assert!(!ok, "a failing update must fail `up`: {out}");
    assert!(out.contains("rolled back") && out.contains("exited with code 3"), "{out}");
    eprintln!("{out}");
    wait_for("3 v2 replicas again", Duration::from_secs(40), || {
        let p = ps();
        p.replicas.iter().filter(|r| r.service == "web" && r.state == Some(RunState::Running)).count() == 3
            && p.replicas.iter().filter(|r| r.service == "web").count() == 3
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", ps()));
    assert_eq!(versions().keys().collect::<Vec<_>>(), vec!["v2"], "the previous definition serves again");
    let (ok, out) = cli(&fizz, &members[1], &["ps", "-p", &project]);
    assert!(ok && out.contains("rolled back"), "{out}");

    let (ok, _) = exec(&["touch", "/tmp/stop"]);
    assert!(ok);
    let done = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&done.stdout).to_string();
    let count = |key: &str| -> u64 {
        report.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no {key} in {report:?}"))
    };
    let (ok_n, fail_n) = (count("ok="), count("fail="));
    eprintln!("through the VIP during both updates: {ok_n} answered, {fail_n} failed");
    assert!(ok_n > 0 && fail_n * 1000 <= ok_n + fail_n, "at least 99.9% answered: {ok_n} ok, {fail_n} failed");
    let (ok, out) = cli(&fizz, &members[1], &["down", "-p", &project]);
    assert!(ok, "{out}");
}

/// A rule dropping a share of the LAN's frames (iptables' random match on the bridge: this
/// kernel has no netem), removed on drop.
struct LossyLan {
    bridge: String,
}

impl LossyLan {
    fn rule(&self, op: &str) -> bool {
        std::process::Command::new("iptables")
            .args([op, "FORWARD", "-i", &self.bridge, "-o", &self.bridge])
            .args(["-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for LossyLan {
    fn drop(&mut self) {
        while std::process::Command::new("iptables")
            .args(["-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge])
            .args(["-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
    }
}

#[test]
fn ten_percent_loss_declares_no_one_down_and_agent_restarts_keep_connections() {
    require_docker!();
    let tag = unique("L");
    let lan = Ipv4Addr::new(10, 90, (std::process::id() % 250) as u8, 0);
    let fizz = fizz_bin().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, members) = DevCluster::start(&tag, lan, 3, &fizz, &rt, Duration::from_secs(15)).unwrap();
    let alive_everywhere = || members.iter().all(|n| nodes(&rt, n).nodes.iter().filter(|m| m.state == "alive").count() == 3);

    // 10% of every frame on the LAN dropped for 60 s (gossip, state sync, WireGuard): nobody is
    // declared down.
    let loss = LossyLan { bridge: cluster.0.bridge.clone() };
    assert!(loss.rule("-I"), "inserting the loss rule");
    let start = Instant::now();
    let mut suspected = 0;
    while start.elapsed() < Duration::from_secs(60) {
        for n in &members {
            let view = nodes(&rt, n);
            suspected += view.nodes.iter().filter(|m| m.state == "suspect").count();
            let down: Vec<_> = view.nodes.iter().filter(|m| m.state == "down").map(|m| m.name.clone()).collect();
            assert!(down.is_empty(), "{} declared {down:?} down after {:?} of 10% loss", n.name, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(loss);
    eprintln!("60 s of 10% loss: nobody down; {suspected} suspect sightings, refuted");

    // An echo server on node 2, a client on node 1 holding one TCP connection through the
    // WireGuard mesh for 30 s while both agents are stopped and started again.
    let (ok, out) = cli(&fizz, &members[1], &["node", "label", &members[1].name, "role=server"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&fizz, &members[0], &["node", "label", &members[0].name, "role=client"]);
    assert!(ok, "{out}");
    let file = cluster
        .file(
            "echo.yaml",
            &format!(
                "services:\n  echo:\n    image: {image}\n    command: [\"nc\", \"-ll\", \"-p\", \"9000\", \"-e\", \"cat\"]\n    stop_grace_period: 1s\n    deploy:\n      placement:\n        constraints: [\"node.labels.role == server\"]\n  client:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    init: true\n    stop_grace_period: 1s\n    deploy:\n      placement:\n        constraints: [\"node.labels.role == client\"]\n",
                image = fizz_tests::BUSYBOX_IMAGE
            ),
        )
        .unwrap();
    let project = tag.to_lowercase();
    let (ok, out) = cli(&fizz, &members[0], &["up", "-f", file.to_str().unwrap(), "-p", &project, "--timeout", "60"]);
    assert!(ok, "{out}");
    let ps: PsResponse = serde_json::from_str(&cli(&fizz, &members[0], &["ps", "-p", &project, "--json"]).1).unwrap();
    let server = ps.replicas.iter().find(|r| r.service == "echo").and_then(|r| r.addr).expect("the echo server's address");
    let client = ps.replicas.iter().find(|r| r.service == "client").and_then(|r| r.container_id.clone()).expect("the client on node 1");
    // Straight through Docker: `fizz exec` goes through the agent, which restarts.
    let talk = std::process::Command::new("docker")
        .args(["exec", &client, "sh", "-c"])
        .arg(format!("{{ i=0; while [ $i -lt 30 ]; do echo ping$i; i=$((i+1)); sleep 1; done; sleep 3; }} | nc {server} 9000"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    for (i, n) in members[..2].iter().enumerate() {
        let pid: i32 = std::fs::read_to_string(cluster.0.run_dir.join(format!("node{}.pid", i + 1))).unwrap().trim().parse().unwrap();
        // SAFETY: stopping and reaping an agent this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let stopped = wait_for("the agent to stop on SIGTERM", Duration::from_secs(20), || {
            // SAFETY: as above, without blocking.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == pid }
        });
        if stopped.is_err() {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            panic!("{}'s agent ignored SIGTERM", n.name);
        }
        dev::up(&cluster.0, 3, &fizz).unwrap();
        wait_for("the cluster whole again", Duration::from_secs(20), alive_everywhere).unwrap_or_else(|e| panic!("{e} ({})", n.name));
        std::thread::sleep(Duration::from_secs(3));
    }
    let out = talk.wait_with_output().unwrap();
    let echoed = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("ping")).count();
    assert_eq!(echoed, 30, "every line came back over the one connection: {}", String::from_utf8_lossy(&out.stderr));
    let (ok, out) = cli(&fizz, &members[0], &["down", "-p", &project]);
    assert!(ok, "{out}");
}
