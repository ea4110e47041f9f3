//! The one-machine test rig: nodes and containers as network namespaces,
//! wired with veths the way the agent wires containers, with guards that
//! remove everything they made, even when a test fails.
//!
//! Names are unique per process and per call (`fz<pid><n>…`), so tests run
//! in parallel and never collide with each other or with a running cluster.

pub mod packet;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use fizz::net::{netns, Datapath, DatapathConfig};
use fizz_common::Endpoint;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `fz<pid36><n36><TAG>`, at
/// most 11 characters, leaving room for a suffix within the 15 of an
/// interface. Tags are upper case and the digits lower case, so no name is
/// a prefix of another one (the agent selects veths by prefix).
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    format!("fz{}{}{tag}", base36(pid % 46_656), base36(n))
}

fn base36(mut n: u32) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("ascii")
}

/// Runs a command, failing with its output when it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("starting {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the process may do what the privileged tests need.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test (returning early) when not root, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::privileged() {
            eprintln!("skipping: needs root (network namespaces, eBPF)");
            return;
        }
    };
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Result<NetNs> {
        sh(&["ip", "netns", "add", name])?;
        let ns = NetNs { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Path of the namespace file.
    pub fn path(&self) -> String {
        netns::named(&self.name)
    }

    /// `ip -n <ns> …`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A command run inside the namespace (network only; the mount namespace
    /// is the caller's, so bpffs and files are shared).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg("--").arg(program);
        c
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        Ok(netns::run_in(&self.path(), f)?)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Proc(child))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: kill with a valid pid of our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        Ok(self.0.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a thread that lives inside the namespace at `path` (for servers
/// whose sockets must belong to it). The thread ends when `f` returns.
pub fn spawn_in<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let path = path.to_string();
    Ok(std::thread::spawn(move || {
        // SAFETY: `file` is an open namespace file; setns changes only this
        // thread, which is dedicated to `f`.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("entering {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    }))
}

/// Keeps the calling thread on CPU `cpu` (threads it starts afterwards
/// inherit that).
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // for any `cpu` below CPU_SETSIZE (checked), and sched_setaffinity only
    // reads it.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("CPU {cpu} is beyond what an affinity mask can name");
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("keeping a thread on CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for the kernel to
    // fill; CPU_ISSET reads inside it for every index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("reading this process's CPUs: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Runs `fizz` against a local cluster node's agent: whether it succeeded, and its output
/// (stdout, then stderr).
pub fn fizz_on(fizz: &std::path::Path, node: &fizz::dev::DevNode, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(fizz).arg("--socket").arg(&node.socket).args(args).output().expect("running fizz");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Runs `fizz` against a local cluster node's agent and returns its standard output, or an
/// error with everything it printed.
pub fn fizz_ok(fizz: &std::path::Path, node: &fizz::dev::DevNode, args: &[&str]) -> Result<String> {
    let out = Command::new(fizz).arg("--socket").arg(&node.socket).args(args).output().context("running fizz")?;
    if !out.status.success() {
        bail!("fizz {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How many members `node`'s agent sees alive (0 while it does not answer).
pub fn alive_members(rt: &tokio::runtime::Runtime, node: &fizz::dev::DevNode) -> usize {
    let r: Option<fizz::api::NodesResponse> = rt
        .block_on(fizz::api::client::Client::new(&node.socket).call::<(), _>(hyper::Method::GET, "/v1/nodes", None))
        .ok();
    r.map_or(0, |r| r.nodes.iter().filter(|m| m.state == "alive").count())
}

/// A local cluster (`fizz dev`) in its own layout, removed whole on drop: agents,
/// namespaces, containers, pins, and the layout's base directory.
pub struct DevCluster(pub fizz::dev::Layout);

impl DevCluster {
    /// Starts `n` agents of `fizz` in a private layout (names from `tag`, the LAN `lan`/24),
    /// forms them into one cluster, and waits up to `timeout` until every node sees all `n`
    /// alive.
    pub fn start(
        tag: &str,
        lan: Ipv4Addr,
        n: u32,
        fizz: &std::path::Path,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> Result<(DevCluster, Vec<fizz::dev::DevNode>)> {
        let cluster = DevCluster(fizz::dev::Layout::isolated(tag, lan));
        let nodes = fizz::dev::up(&cluster.0, n, fizz)?;
        fizz::dev::form_cluster(&nodes)?;
        wait_for(&format!("{n} alive members everywhere"), timeout, || {
            nodes.iter().all(|node| alive_members(rt, node) == n as usize)
        })?;
        Ok((cluster, nodes))
    }

    /// A file in the cluster's base directory (for Compose files), written now.
    pub fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let dir = self.0.run_dir.parent().context("the layout has no base directory")?.join("files");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for DevCluster {
    /// A failing test shows the end of every agent's log; `FIZZ_KEEP_LOGS=<dir>` keeps them.
    fn drop(&mut self) {
        let logs: Vec<PathBuf> = std::fs::read_dir(&self.0.log_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if std::thread::panicking() {
            for log in &logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {} ---", log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if let Ok(keep) = std::env::var("FIZZ_KEEP_LOGS") {
            let dir = PathBuf::from(keep).join(&self.0.short);
            if std::fs::create_dir_all(&dir).is_ok() {
                for log in &logs {
                    if let Some(name) = log.file_name() {
                        let _ = std::fs::copy(log, dir.join(name));
                    }
                }
            }
        }
        let _ = fizz::dev::down(&self.0);
        if let Some(base) = self.0.run_dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Where test pin directories live on bpffs.
pub fn pin_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/fizz-test")
}

/// A pin directory removed on drop (links, program, maps).
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway address containers route through; the host end of their veth
/// answers for it with a permanent neighbour entry.
pub const GATEWAY: &str = "169.254.1.1";

/// A simulated host: a namespace plus a pin directory for its datapath.
pub struct Node {
    /// Also the prefix of the host ends of its containers' veths.
    pub name: String,
    pub ns: NetNs,
    pub pins: PinDir,
    containers: AtomicU32,
}

impl Node {
    pub fn new() -> Result<Node> {
        let name = unique("N");
        let ns = NetNs::new(&name)?;
        ns.ip(&["link", "set", "lo", "up"])?;
        // Forwarding for what the datapath hands to the stack.
        ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))??;
        let pins = PinDir(pin_root().join(&name));
        Ok(Node { name, ns, pins, containers: AtomicU32::new(0) })
    }

    /// Loads (or adopts) the datapath pinned for this node.
    pub fn datapath(&self) -> Result<Datapath> {
        Ok(Datapath::open(&self.pins.0, DatapathConfig::default())?)
    }

    /// Attaches the datapath to `ifname` in this node's namespace.
    pub fn attach(&self, dp: &mut Datapath, ifname: &str) -> Result<()> {
        self.ns.run(|| dp.attach(ifname))??;
        Ok(())
    }

    /// Creates a container namespace with address `addr`, wired to this node
    /// by a veth whose host end is `<node name><k>`.
    pub fn container(&self, addr: Ipv4Addr) -> Result<Container> {
        let k = self.containers.fetch_add(1, Ordering::SeqCst);
        let ns = NetNs::new(&format!("{}c{k}", self.name))?;
        let host_if = format!("{}{k}", self.name);
        let peer_tmp = format!("{}{k}p", self.name);
        let mac = container_mac(addr);
        let mac_s = fmt_mac(&mac);
        sh(&[
            "ip", "link", "add", &host_if, "netns", &self.ns.name, "type", "veth", "peer", "name", &peer_tmp,
            "address", &mac_s, "netns", &ns.name,
        ])?;
        ns.ip(&["link", "set", &peer_tmp, "name", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        self.ns.ip(&["link", "set", &host_if, "address", &mac_s, "up"])?;
        let node_mac = parse_mac(
            self.ns
                .ip(&["-br", "link", "show", &host_if])?
                .split_whitespace()
                .nth(2)
                .context("no MAC in `ip -br link`")?,
        )?;
        ns.ip(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
        ns.ip(&["neigh", "add", GATEWAY, "lladdr", &fmt_mac(&node_mac), "dev", "eth0", "nud", "permanent"])?;
        // The stack's path to the container, for traffic the datapath passes.
        self.ns.ip(&["route", "add", &format!("{addr}/32"), "dev", &host_if])?;
        let host_ifindex: u32 = self
            .ns
            .ip(&["-o", "link", "show", &host_if])?
            .split(':')
            .next()
            .context("no ifindex")?
            .trim()
            .parse()?;
        let netns_cookie = netns::cookie(&ns.path())?;
        Ok(Container { ns, addr, host_if, host_ifindex, mac, node_mac, netns_cookie })
    }
}

/// A container: a namespace with one veth to its node.
pub struct Container {
    pub ns: NetNs,
    pub addr: Ipv4Addr,
    pub host_if: String,
    pub host_ifindex: u32,
    pub mac: [u8; 6],
    pub node_mac: [u8; 6],
    /// Its namespace's cookie: TCP connects to VIPs from it are balanced at
    /// connect time, as the agent's containers are.
    pub netns_cookie: u64,
}

impl Container {
    /// The datapath's entry for this container.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            ifindex: self.host_ifindex,
            mac: self.mac,
            node_mac: self.node_mac,
            net_mask: 0,
            netns_cookie: self.netns_cookie,
        }
    }

    /// Its entry without its namespace's cookie: connect-time balancing
    /// does not know it, so its TCP to a VIP is NAT'd per packet, as a
    /// client on another node or a host process is.
    pub fn endpoint_nat_client(&self) -> Endpoint {
        Endpoint { netns_cookie: 0, ..self.endpoint() }
    }
}

/// The MAC of both ends of every container veth, as the agent plumbs them.
pub fn container_mac(addr: Ipv4Addr) -> [u8; 6] {
    fizz::net::plumb::container_mac(addr)
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("`{s}` is not a MAC address");
    }
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).with_context(|| format!("`{s}` is not a MAC address"))?;
    }
    Ok(m)
}

/// The path of the `fizz` binary built next to the running test.
pub fn fizz_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no parent")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("fizz");
    if !bin.is_file() {
        bail!("{} is missing: build it first (`cargo build -p fizz-agent`)", bin.display());
    }
    Ok(bin)
}

/// The test image: Debian's static busybox in an otherwise empty root,
/// imported once (no registry is needed).
pub const BUSYBOX_IMAGE: &str = "fizz-test/busybox:4";

/// Imports `BUSYBOX_IMAGE` into the Docker engine when it is missing, with
/// the same script the set-up uses (`scripts/busybox-image.sh`).
pub fn ensure_busybox_image() -> Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-image.sh");
    let out = Command::new("bash").arg(&script).output().with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Whether a Docker engine answers.
pub fn docker_available() -> bool {
    Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Skips the calling test when there is no Docker engine, saying why.
#[macro_export]
macro_rules! require_docker {
    () => {
        $crate::require_root!();
        if !$crate::docker_available() {
            eprintln!("skipping: no Docker engine (scripts/setup.sh starts one)");
            return;
        }
        $crate::ensure_busybox_image().expect("importing the busybox test image");
    };
}

/// Removes every container labelled with `fizz.node=<node>` on drop.
pub struct DockerNodeGuard(pub String);

impl Drop for DockerNodeGuard {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=fizz.node={}", self.0)]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).stdout(Stdio::null()).status();
            }
        }
    }
}

/// A `fizz agent` process for a rig node, with its own state directory,
/// API socket and pins; stopped (SIGKILL) and cleaned up on drop.
pub struct AgentProc {
    pub proc: Option<Proc>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    args: Vec<String>,
    ns: String,
}

impl AgentProc {
    /// Starts an agent in `node`'s namespace, managing containers labelled
    /// with the node's name, and waits until its API answers.
    pub fn start(node: &Node, extra: &[&str]) -> Result<AgentProc> {
        let base = std::env::temp_dir().join(format!("{}-agent", node.name));
        let socket = base.join("fizz.sock");
        let state_dir = base.join("state");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--node".into(),
            node.name.clone(),
            "--veth-prefix".into(),
            node.name.clone(),
            "--pin-dir".into(),
            node.pins.0.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--dns-upstream".into(),
            "127.0.0.1:53".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = AgentProc { proc: None, socket, state_dir, args, ns: node.ns.path() };
        a.restart()?;
        Ok(a)
    }

    /// Starts the process again (after `stop` or a crash).
    pub fn restart(&mut self) -> Result<()> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns)).arg("--").arg(fizz_bin()?).args(&self.args);
        let _ = std::fs::remove_file(&self.socket);
        self.proc = Some(Proc::spawn(cmd)?);
        let sock = self.socket.clone();
        wait_for("the agent's API socket", Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&sock).is_ok())
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.proc.take().context("the agent is not running")?.terminate()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.proc.take();
    }

    /// An API client for this agent.
    pub fn client(&self) -> fizz::api::client::Client {
        fizz::api::client::Client::new(&self.socket)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.proc.take();
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
