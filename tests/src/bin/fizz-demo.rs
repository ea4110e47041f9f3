//! A one-minute look at Fizz's datapath on this machine: a simulated node
//! (a network namespace) with three busybox httpd containers behind one
//! service VIP, a client that calls the VIP, and `fizz net inspect` of the
//! result. Everything is removed at the end. Needs root.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};
use fizz::net::service::{BackendAddr, Frontend, Proto, ServiceSpec};
use fizz_tests::{wait_for, Node, Proc};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
}

fn main() -> Result<()> {
    if !fizz_tests::privileged() {
        anyhow::bail!("the demo needs root (network namespaces and eBPF)");
    }
    let node = Node::new()?;
    println!("node {}: namespace with the Fizz datapath pinned at {}", node.name, node.pins.0.display());
    let mut dp = node.datapath()?;
    let client = node.container(Ipv4Addr::new(10, 42, 0, 2))?;
    let web: Vec<_> = (0..3).map(|i| node.container(Ipv4Addr::new(10, 42, 0, 10 + i))).collect::<Result<_>>()?;
    for c in std::iter::once(&client).chain(&web) {
        node.attach(&mut dp, &c.host_if)?;
        dp.set_endpoint(c.addr, c.endpoint())?;
    }
    let dir = std::env::temp_dir().join(format!("{}-www", node.name));
    let mut servers = Vec::new();
    for (i, c) in web.iter().enumerate() {
        let root = dir.join(format!("web-{i}"));
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), format!("hello from web-{i} ({})", c.addr))?;
        let mut cmd = c.ns.command("busybox");
        cmd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&root);
        servers.push(Proc::spawn(cmd)?);
        println!("container web-{i}: {} (busybox httpd :8080)", c.addr);
    }
    for c in &web {
        let addr = SocketAddr::from((c.addr, 8080));
        client.ns.run(|| wait_for("httpd", Duration::from_secs(10), || get(addr).is_ok()))??;
    }
    dp.set_service(&ServiceSpec {
        frontend: Frontend { vip: VIP, port: 80, proto: Proto::Tcp },
        backends: web.iter().map(|c| BackendAddr { addr: c.addr, port: 8080 }).collect(),
    })?;
    println!("service web: VIP {VIP}:80 → 3 backends, load-balanced in eBPF\n");

    let answers = client.ns.run(|| -> Result<BTreeMap<String, usize>> {
        let mut seen = BTreeMap::new();
        for _ in 0..30 {
            let body = get(SocketAddr::from((VIP, 80))).context("GET http://10.43.0.1/")?;
            *seen.entry(body).or_insert(0) += 1;
        }
        Ok(seen)
    })??;
    println!("client {} → http://{VIP}/ ×30:", client.addr);
    for (body, n) in &answers {
        println!("  {n:>2} × {body}");
    }
    println!("\n$ fizz net inspect --pin-dir {}", node.pins.0.display());
    // Inspect from inside the node's namespace, where its interfaces are.
    let snap = node.ns.run(|| fizz::net::inspect::snapshot(&node.pins.0))??;
    print!("{}", fizz::cli::net_inspect::render(&snap));
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    println!("\ncleaning up: namespaces, veths and pins are removed");
    Ok(())
}
