//! A local cluster on one machine, for trying Fizz and for its tests: each
//! node is a network namespace on a bridge that plays the LAN, with its own
//! agent, state directory, pins, API socket and container range. Nodes share
//! the one Docker engine; each agent manages only the containers labelled
//! with its node.
//!
//! The namespaces, bridge and veths are made with iproute2 (`ip`), like a
//! person would by hand; the agents themselves use netlink.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Errors setting up or tearing down the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    /// A command could not be started.
    #[error("starting `{cmd}`: {source}")]
    Spawn { cmd: String, #[source] source: std::io::Error },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    /// An agent did not come up.
    #[error("the agent of {node} did not start; see {log}")]
    AgentDown { node: String, log: String },
    /// Bad request.
    #[error("{0}")]
    Invalid(String),
    /// An agent refused a request.
    #[error("node {node}: {source}")]
    Agent { node: String, #[source] source: crate::api::client::ClientError },
    /// The cluster secret of node 1 cannot be read.
    #[error(transparent)]
    Cluster(#[from] crate::agent::cluster::ClusterError),
}

/// Where the pieces of the local cluster live.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Names of nodes and namespaces are `<prefix>-<i>`.
    pub prefix: String,
    /// Host ends of the nodes' LAN veths are `<short><i>`, and of their
    /// containers' veths `<short><i>` + a hash.
    pub short: String,
    pub bridge: String,
    /// The bridge's address; nodes are `.11`, `.12`, …
    pub lan_net: Ipv4Addr,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Routes on this machine to each node's containers (the default
    /// cluster only: two clusters would claim the same ranges).
    pub host_routes: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            prefix: "fizz-dev".into(),
            short: "fzd".into(),
            host_routes: true,
            bridge: "fzdev0".into(),
            lan_net: Ipv4Addr::new(10, 99, 0, 0),
            run_dir: "/run/fizz-dev".into(),
            state_dir: "/var/lib/fizz-dev".into(),
            pin_dir: "/sys/fs/bpf/fizz-dev".into(),
            log_dir: "/var/log/fizz-dev".into(),
        }
    }
}

/// One node of the local cluster.
#[derive(Clone, Debug)]
pub struct DevNode {
    pub index: u32,
    pub name: String,
    pub netns: String,
    pub lan_addr: Ipv4Addr,
    pub range: String,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    /// A private cluster for a test: every name starts with `tag` (at most 7
    /// characters), directories live under the temporary directory, the LAN
    /// is `lan`/24, and no route is added on this machine.
    pub fn isolated(tag: &str, lan: Ipv4Addr) -> Layout {
        let base = std::env::temp_dir().join(tag);
        Layout {
            prefix: tag.to_string(),
            short: tag.to_string(),
            bridge: format!("{tag}b"),
            lan_net: lan,
            run_dir: base.join("run"),
            state_dir: base.join("state"),
            pin_dir: PathBuf::from("/sys/fs/bpf/fizz-test").join(tag),
            log_dir: base.join("log"),
            host_routes: false,
        }
    }

    pub fn node(&self, index: u32) -> DevNode {
        let o = self.lan_net.octets();
        DevNode {
            index,
            name: format!("{}-{index}", self.prefix),
            netns: format!("{}-{index}", self.prefix),
            lan_addr: Ipv4Addr::new(o[0], o[1], o[2], 10 + index as u8),
            range: format!("10.42.{}.0/24", index - 1),
            socket: self.run_dir.join(format!("node{index}.sock")),
            log: self.log_dir.join(format!("node{index}.log")),
        }
    }

    fn bridge_addr(&self) -> Ipv4Addr {
        let o = self.lan_net.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// Nodes that exist now (their namespaces).
    pub fn existing(&self) -> Vec<DevNode> {
        let out = Command::new("ip").args(["netns", "list"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let mut nodes: Vec<DevNode> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|n| n.strip_prefix(&format!("{}-", self.prefix)))
            .filter_map(|i| i.parse().ok())
            .map(|i| self.node(i))
            .collect();
        nodes.sort_by_key(|n| n.index);
        nodes
    }
}

fn sh(args: &[&str]) -> Result<String, DevError> {
    let cmd = args.join(" ");
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|source| DevError::Spawn { cmd: cmd.clone(), source })?;
    if !out.status.success() {
        return Err(DevError::Command { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mkdir(p: &Path) -> Result<(), DevError> {
    std::fs::create_dir_all(p).map_err(|source| DevError::Io { path: p.to_path_buf(), source })
}

/// Creates `n` nodes (keeping any that exist) and starts their agents.
pub fn up(layout: &Layout, n: u32, fizz: &Path) -> Result<Vec<DevNode>, DevError> {
    if n == 0 || n > 200 {
        return Err(DevError::Invalid(format!("--nodes must be 1 to 200, not {n}")));
    }
    for d in [&layout.run_dir, &layout.state_dir, &layout.log_dir] {
        mkdir(d)?;
    }
    if sh(&["ip", "link", "show", &layout.bridge]).is_err() {
        sh(&["ip", "link", "add", &layout.bridge, "type", "bridge"])?;
        sh(&["ip", "addr", "add", &format!("{}/24", layout.bridge_addr()), "dev", &layout.bridge])?;
        sh(&["ip", "link", "set", &layout.bridge, "up"])?;
    }
    // Docker's firewall drops bridged traffic it does not know (FORWARD
    // policy DROP with bridge netfilter on): let the LAN's through.
    let chain = forward_chain();
    if sh(&["iptables", "-C", chain, "-i", &layout.bridge, "-o", &layout.bridge, "-j", "ACCEPT"]).is_err() {
        sh(&["iptables", "-I", chain, "-i", &layout.bridge, "-o", &layout.bridge, "-j", "ACCEPT"])?;
    }
    let mut nodes = Vec::new();
    for i in 1..=n {
        let node = layout.node(i);
        if sh(&["ip", "netns", "pids", &node.netns]).is_err() {
            create_node(layout, &node)?;
        }
        if !agent_alive(&node) {
            start_agent(layout, &node, fizz)?;
        }
        nodes.push(node);
    }
    for node in &nodes {
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&node.socket).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(DevError::AgentDown { node: node.name.clone(), log: node.log.display().to_string() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(nodes)
}

/// Docker's chain for user rules when it exists, else FORWARD.
fn forward_chain() -> &'static str {
    if sh(&["iptables", "-L", "DOCKER-USER", "-n"]).is_ok() {
        "DOCKER-USER"
    } else {
        "FORWARD"
    }
}

fn create_node(layout: &Layout, node: &DevNode) -> Result<(), DevError> {
    let ns = &node.netns;
    let host_end = format!("{}{}", layout.short, node.index);
    sh(&["ip", "netns", "add", ns])?;
    sh(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    sh(&["ip", "link", "set", &host_end, "master", &layout.bridge, "up"])?;
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    sh(&["ip", "-n", ns, "addr", "add", &format!("{}/24", node.lan_addr), "dev", "eth0"])?;
    sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
    sh(&["ip", "-n", ns, "route", "add", "default", "via", &layout.bridge_addr().to_string()])?;
    sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    // The machine reaches each node's containers through the node.
    if layout.host_routes {
        sh(&["ip", "route", "replace", &node.range, "via", &node.lan_addr.to_string()])?;
    }
    Ok(())
}

fn pid_file(layout: &Layout, node: &DevNode) -> PathBuf {
    layout.run_dir.join(format!("node{}.pid", node.index))
}

fn agent_alive(node: &DevNode) -> bool {
    std::os::unix::net::UnixStream::connect(&node.socket).is_ok()
}

fn start_agent(layout: &Layout, node: &DevNode, fizz: &Path) -> Result<(), DevError> {
    let log = std::fs::File::create(&node.log).map_err(|source| DevError::Io { path: node.log.clone(), source })?;
    let err = log.try_clone().map_err(|source| DevError::Io { path: node.log.clone(), source })?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{}", node.netns))
        .arg("--")
        .arg(fizz)
        .args(["agent", "--node", &node.name, "--range", &node.range])
        .args(["--advertise-addr", &node.lan_addr.to_string()])
        .args(["--veth-prefix", &format!("{}{}", layout.short, node.index)])
        .args(["--name-suffix", &format!(".{}", node.name)])
        .args(["--dns-upstream", "127.0.0.1:53"])
        .arg("--pin-dir")
        .arg(layout.pin_dir.join(format!("node{}", node.index)))
        .arg("--state-dir")
        .arg(layout.state_dir.join(format!("node{}", node.index)))
        .arg("--socket")
        .arg(&node.socket)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid is async-signal-safe; the agent outlives this command
    // in a session of its own.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| DevError::Spawn { cmd: "fizz agent".into(), source })?;
    let pf = pid_file(layout, node);
    std::fs::write(&pf, child.id().to_string()).map_err(|source| DevError::Io { path: pf, source })?;
    Ok(())
}

/// Node 1 starts the cluster (unless it is in one) and the other nodes that
/// are in none join it. Returns the join token.
pub fn form_cluster(nodes: &[DevNode]) -> Result<String, DevError> {
    use hyper::Method;

    use crate::api::{client::Client, InitResponse, JoinRequest, NodesResponse};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DevError::Io { path: "tokio runtime".into(), source })?;
    rt.block_on(async {
        let first = &nodes[0];
        let agent_err = |n: &DevNode| {
            let node = n.name.clone();
            move |source| DevError::Agent { node, source }
        };
        let c1 = Client::new(&first.socket);
        let status: NodesResponse = c1.call::<(), _>(Method::GET, "/v1/nodes", None).await.map_err(agent_err(first))?;
        let token = if status.clustered {
            let req = crate::api::JoinTokenRequest { rotate: false };
            let r: crate::api::JoinTokenResponse =
                c1.call(Method::POST, "/v1/cluster/join-token", Some(&req)).await.map_err(agent_err(first))?;
            r.token
        } else {
            let r: InitResponse = c1.call::<(), _>(Method::POST, "/v1/cluster/init", None).await.map_err(agent_err(first))?;
            r.token
        };
        let seed = std::net::SocketAddr::from((first.lan_addr, crate::gossip::DEFAULT_PORT));
        for n in &nodes[1..] {
            let c = Client::new(&n.socket);
            let s: NodesResponse = c.call::<(), _>(Method::GET, "/v1/nodes", None).await.map_err(agent_err(n))?;
            if !s.clustered {
                let req = JoinRequest { token: token.clone(), seeds: vec![seed] };
                c.call::<_, ()>(Method::POST, "/v1/cluster/join", Some(&req)).await.map_err(agent_err(n))?;
            }
        }
        Ok(token)
    })
}

/// Stops every agent, removes every container of the local cluster, its
/// namespaces, bridge, routes, pins, state and sockets.
pub fn down(layout: &Layout) -> Result<(), DevError> {
    let nodes = layout.existing();
    for node in &nodes {
        let pf = pid_file(layout, node);
        if let Ok(pid) = std::fs::read_to_string(&pf).unwrap_or_default().trim().parse::<i32>() {
            // SAFETY: signalling a pid we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            // An agent this process started (tests, benchmarks) stays a zombie, which signal 0
            // still finds, until it is reaped; for any other pid `waitpid` does nothing.
            // SAFETY: reaping our own child without blocking; probing with signal 0 has no effect.
            let gone = || unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
                libc::kill(pid, 0) != 0
            };
            while !gone() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above; an agent that did not stop in time is killed.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(&pf);
        // A killed agent leaves its WireGuard control socket behind.
        let _ = std::fs::remove_file(crate::net::wireguard::socket_path(&crate::agent::wg_ifname(&node.name)));
        if let Ok(ids) = sh(&["docker", "ps", "-aq", "--filter", &format!("label=fizz.node={}", node.name)]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["docker", "rm", "-f", "-v"];
                args.extend(ids);
                sh(&args)?;
            }
        }
        if layout.host_routes {
            let _ = sh(&["ip", "route", "del", &node.range]);
        }
        let _ = sh(&["ip", "link", "del", &format!("{}{}", layout.short, node.index)]);
        sh(&["ip", "netns", "del", &node.netns])?;
    }
    let _ = sh(&["iptables", "-D", forward_chain(), "-i", &layout.bridge, "-o", &layout.bridge, "-j", "ACCEPT"]);
    let _ = sh(&["ip", "link", "del", &layout.bridge]);
    for d in [&layout.pin_dir, &layout.state_dir, &layout.run_dir, &layout.log_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|source| DevError::Io { path: d.clone(), source })?;
        }
    }
    Ok(())
}
