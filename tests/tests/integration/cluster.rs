//! A cluster on one machine, as `fizz dev up` makes it: nodes are network
//! namespaces on a bridge, each with its agent. They form a cluster with a
//! token, see a killed node go down, see it come back, and a node with a
//! wrong token never becomes a member.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use fizz::{
    api::{client::Client, JoinRequest, NodesResponse},
    dev::{self, Layout},
};
use fizz_tests::{fizz_bin, require_docker, unique, wait_for};
use hyper::Method;

/// Removes the whole test cluster on drop.
struct Cluster(Layout);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = dev::down(&self.0);
        if let Some(base) = self.0.run_dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

fn nodes(rt: &tokio::runtime::Runtime, n: &dev::DevNode) -> NodesResponse {
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
    let layout = Layout::isolated(&tag, lan);
    let cluster = Cluster(layout.clone());
    let fizz = fizz_bin().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let all = dev::up(&cluster.0, 4, &fizz).unwrap();
    let (members, outsider) = all.split_at(3);
    let token = dev::form_cluster(&cluster.0, members).unwrap();
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

    // Kill node 3's agent: the others see it down.
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

    // Its agent restarted, it comes back by itself (saved peers), as a new generation.
    dev::up(&cluster.0, 3, &fizz).unwrap();
    wait_for("node 3 alive again", Duration::from_secs(15), || {
        members[..2].iter().all(|n| state_of(&nodes(&rt, n), &members[2].name).as_deref() == Some("alive"))
    })
    .unwrap();
}
