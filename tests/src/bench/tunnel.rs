//! `fizz-bench tunnel`: cross-node container → container traffic through Fizz against a bare
//! userspace WireGuard tunnel, on a local cluster of 2 nodes (`fizz dev`, the release `fizz`).
//!
//! - **Fizz**: a service of 2 replicas, one per node (`max_replicas_per_node: 1`). The
//!   backend servers (`servers`) run inside node 2's replica (its network namespace, entered
//!   through `/proc/<pid>/ns/net`), the client loops (`load`) inside node 1's, against the
//!   peer replica's address: container veth → `from_container` → node 1's WireGuard device
//!   (the agent's embedded boringtun) → the LAN bridge → node 2's device → `from_wireguard` →
//!   the container.
//! - **Bare**: `boringtun-cli` in the same two node namespaces, over the same LAN veths and
//!   bridge: a TUN device per node, keyed and peered with `wg` through boringtun's control
//!   socket, on another UDP port and a /30 of its own, with the MTU of Fizz's device and as
//!   many worker threads as the embedded device has. The same servers run in node 2's
//!   namespace on the tunnel's address, the same client loops in node 1's.
//!
//! Both paths use the same client and server code and the same WireGuard implementation.
//! Fizz gives its device's UDP sockets 7 MiB buffers (`wireguard::SOCKET_BUFFER`), which
//! boringtun-cli does not; so the bare tunnel is measured twice: as boringtun-cli runs (the
//! kernel's default buffers) and with its sockets given Fizz's buffers (taken from its process
//! with `pidfd_getfd` and set before each measurement). The ratio to the latter is Fizz's
//! overhead: the container veth hop, the eBPF redirects, and the agent's device as the agent
//! runs it. Per run, for each metric, the three are measured one after the other (the order
//! rotating between runs): stream throughput, request/response rate (mean round trip =
//! 1 / rate), and the latency of single 1-byte round trips (p50, p99). Targets: throughput
//! ≥ 0.90× the bare tunnel's, mean round trip ≤ +50 µs.
//!
//! Also reported per stream, to explain throughput: the sender's tunnel device's TX drops
//! (its queue to the WireGuard process full), the sender's TCP retransmits, and the UDP
//! datagrams both nodes dropped for a full receive buffer (the WireGuard sockets of both
//! paths live in the node namespaces). The warm-up checks that each path's stream went through
//! its own device alone (`wg show … transfer`). Containers whose `eth0` MTU exceeds Fizz's
//! WireGuard device's (packets longer than the device's MTU are dropped at the redirect) get
//! the device's MTU for the measurement, with a warning, unless `--keep-container-mtu`.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use fizz::{
    api::{client::Client, PsResponse, Replica},
    dev::DevNode,
    docker::RunState,
    net::{netns, wireguard},
};
use hyper::Method;

use super::{
    host, interrupt,
    load::{self, Mode, IO_TIMEOUT},
    report::{self, Entry, Line, Results},
    servers,
};
use fizz_tests::{fizz_bin, fizz_ok, sh, wait_for, DevCluster, BUSYBOX_IMAGE};

/// Options of `fizz-bench tunnel`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Interleaved runs of every measurement; the report gives their median and range.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 5.0, value_parser = parse_secs)]
    pub seconds: f64,
    /// Leave the containers' `eth0` MTU as Fizz plumbs it, even when it exceeds the WireGuard
    /// device's (then packets longer than the device's MTU are dropped at the redirect and a
    /// cross-node TCP stream stalls).
    #[arg(long)]
    pub keep_container_mtu: bool,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds from 0.1 to 600")),
    }
}

/// The bare tunnel's addresses (node 1, node 2), in a /30 outside every range of the local
/// cluster (containers 10.42.0.0/16, VIPs 10.43.0.0/16, the LAN 10.93.x.0/24).
const BARE_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2)];

/// The bare tunnel's UDP port, beside Fizz's.
const BARE_PORT: u16 = 51899;
const _: () = assert!(BARE_PORT != wireguard::DEFAULT_PORT);

/// Worker threads of `boringtun-cli`: the embedded device's (defguard's `DeviceConfig::default()`).
const BORINGTUN_THREADS: u32 = 4;

/// The project deployed on the cluster.
const PROJECT: &str = "tunnel";

/// How long the cluster, the replicas and both paths get to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The longest warm-up measurement.
const WARM_UP: Duration = Duration::from_secs(1);

/// Bytes a path's device must carry during its warm-up stream to count as the path taken.
const MIN_DEVICE_BYTES: u64 = 1 << 20;

/// Targets of the comparison.
const TARGET_THROUGHPUT_RATIO: f64 = 0.90;
const TARGET_RTT_DIFF_US: f64 = 50.0;

/// The paths compared; the discriminant indexes per-scenario arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Container → container through Fizz.
    Fizz = 0,
    /// Node → node through `boringtun-cli`, its sockets' buffers the kernel's defaults (as
    /// boringtun opens them).
    Bare = 1,
    /// The same, its sockets given the buffers Fizz gives its own device's
    /// (`wireguard::SOCKET_BUFFER`): the comparison that isolates Fizz's datapath.
    BareSized = 2,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Fizz, Scenario::Bare, Scenario::BareSized];

    fn key(self) -> &'static str {
        match self {
            Scenario::Fizz => "fizz",
            Scenario::Bare => "bare",
            Scenario::BareSized => "bare_sized",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::Fizz => "fizz (container → container)",
            Scenario::Bare => "bare boringtun-cli (node → node)",
            Scenario::BareSized => "bare, Fizz's socket buffers",
        }
    }
}

/// What one run measures, per scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    /// `load`'s stream loop (Gbit/s).
    Stream,
    /// `load`'s request/response loop (trans/s, and the mean round trip from it).
    Rr,
    /// Single 1-byte round trips, each timed (p50, p99).
    Latency,
}

impl Metric {
    const ALL: [Metric; 3] = [Metric::Stream, Metric::Rr, Metric::Latency];
}

/// Where a scenario's client runs and what it connects to.
struct Target {
    /// The client's network namespace.
    client_ns: String,
    /// The server's address.
    server: Ipv4Addr,
    /// The name of the WireGuard device on the client's side, and its node's namespace.
    device: String,
    device_ns: String,
}

impl Target {
    fn addr(&self, mode: Mode) -> SocketAddr {
        SocketAddr::from((self.server, mode.backend_port()))
    }
}

/// What the report says about the set-up.
struct SetUp {
    boringtun_version: String,
    fizz_mtu: u32,
    /// The containers' `eth0` MTU as Fizz set it, and as measured.
    plumbed_mtu: u32,
    container_mtu: u32,
    bare_mtu: u32,
}

struct Bench {
    /// The named namespaces of nodes 1 and 2.
    nodes_ns: [String; 2],
    bare_tunnel: BareTunnel,
    fizz: Target,
    bare: Target,
    runs: u32,
    dur: Duration,
    results: Results,
}

pub fn run(opts: &Options) -> Result<()> {
    if !fizz_tests::privileged() {
        bail!("the benchmark needs root (network namespaces, eBPF, TUN devices)");
    }
    interrupt::install()?;
    let fizz = fizz_bin().context("the benchmark runs the release `fizz`, which `cargo xtask bench tunnel` builds")?;
    let boringtun = boringtun_cli()?;
    let boringtun_version = check_boringtun(&boringtun)?;
    sh(&["wg", "--version"]).context("`wg` (Debian's wireguard-tools, which scripts/setup.sh installs) is needed")?;
    fizz_tests::ensure_busybox_image()?;

    // Locals drop in reverse: the servers, then the bare tunnel, then the cluster.
    let tag = format!("fzbt{}", std::process::id() % 10_000);
    let lan = Ipv4Addr::new(10, 93, (std::process::id() % 250) as u8, 0);
    eprintln!("starting a 2-node local cluster ({tag})");
    let rt = tokio::runtime::Runtime::new()?;
    let (cluster, nodes) = DevCluster::start(&tag, lan, 2, &fizz, &rt, READY_TIMEOUT)?;

    eprintln!("deploying 2 replicas, one per node");
    let file = cluster.file("compose.yaml", &compose())?;
    let file = file.to_str().context("the Compose file's path is not UTF-8")?;
    fizz_ok(&fizz, &nodes[0], &["up", "-d", "-f", file, "-p", PROJECT])?;
    let [client, server] = replicas(&rt, &nodes)?;
    let client_ns = container_netns(&client)?;
    let server_ns = container_netns(&server)?;
    let server_addr = server.addr.context("node 2's replica has no address")?;

    let fizz_wg = fizz::agent::wg_ifname(&nodes[0].name);
    let fizz_mtu = mtu(&netns::named(&nodes[0].netns), &fizz_wg)?;
    let plumbed_mtu = mtu(&client_ns, "eth0")?.max(mtu(&server_ns, "eth0")?);
    if plumbed_mtu > fizz_mtu {
        eprintln!(
            "WARNING: the containers' eth0 MTU is {plumbed_mtu}, over the WireGuard device's {fizz_mtu}: cross-node \
             packets longer than {fizz_mtu} bytes are dropped at the redirect (no fragmentation, no ICMP){}",
            if opts.keep_container_mtu {
                "; kept (--keep-container-mtu)".to_string()
            } else {
                format!("; setting eth0 to {fizz_mtu} in both containers for the measurement")
            }
        );
        if !opts.keep_container_mtu {
            for ns in [&client_ns, &server_ns] {
                ip_in(ns, &["link", "set", "eth0", "mtu", &fizz_mtu.to_string()])?;
            }
        }
    }
    let container_mtu = mtu(&client_ns, "eth0")?;
    eprintln!(
        "starting boringtun-cli on both nodes ({BORINGTUN_THREADS} threads, MTU {fizz_mtu}, UDP port {BARE_PORT})"
    );
    let bare = BareTunnel::start(&boringtun, &nodes, fizz_mtu)?;
    let bare_device = bare.devices[0].ifname.clone();
    let bare_mtu = mtu(&netns::named(&nodes[0].netns), &bare_device)?;

    let _servers = [
        servers::start(&server_ns, None).context("the servers in node 2's replica")?,
        servers::start(&netns::named(&nodes[1].netns), None).context("the servers in node 2's namespace")?,
    ];
    let mut bench = Bench {
        nodes_ns: [nodes[0].netns.clone(), nodes[1].netns.clone()],
        bare_tunnel: bare,
        fizz: Target { client_ns, server: server_addr, device: fizz_wg, device_ns: nodes[0].netns.clone() },
        bare: Target {
            client_ns: netns::named(&nodes[0].netns),
            server: BARE_ADDRS[1],
            device: bare_device,
            device_ns: nodes[0].netns.clone(),
        },
        runs: opts.runs,
        dur: Duration::from_secs_f64(opts.seconds),
        results: Results::default(),
    };
    bench.wait_ready()?;
    bench.warm_up()?;
    bench.main_runs()?;
    bench.report(&SetUp { boringtun_version, fizz_mtu, plumbed_mtu, container_mtu, bare_mtu })
}

fn compose() -> String {
    format!(
        "services:\n  peer:\n    image: {BUSYBOX_IMAGE}\n    command: [\"sleep\", \"1000000\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: 2\n      placement:\n        max_replicas_per_node: 1\n"
    )
}

/// The running replicas on node 1 and on node 2, once both run with an address. Each from
/// its own node's `ps`, which alone knows its containers' ids.
fn replicas(rt: &tokio::runtime::Runtime, nodes: &[DevNode]) -> Result<[Replica; 2]> {
    let path = format!("/v1/ps?project={PROJECT}");
    let ps = |n: &DevNode| -> Option<PsResponse> {
        rt.block_on(Client::new(&n.socket).call::<(), _>(Method::GET, &path, None)).ok()
    };
    let own = |n: &DevNode| {
        ps(n)?.replicas.into_iter().find(|r| {
            r.node == n.name && r.state == Some(RunState::Running) && r.addr.is_some() && r.container_id.is_some()
        })
    };
    let mut found = None;
    let waited = wait_for("a running replica on each node", READY_TIMEOUT, || {
        found = own(&nodes[0]).zip(own(&nodes[1])).map(|(a, b)| [a, b]);
        found.is_some()
    });
    if let Err(e) = waited {
        let seen: Vec<String> = ps(&nodes[0])
            .map(|p| {
                p.replicas
                    .iter()
                    .map(|r| format!("{} on {}: {:?} {}", r.name, r.node, r.state, r.note.as_deref().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        return Err(e.context(format!("replicas seen from node 1: {seen:?}")));
    }
    Ok(found.expect("set when the wait succeeded"))
}

/// The network namespace of a replica's container.
fn container_netns(r: &Replica) -> Result<String> {
    let id = r.container_id.as_deref().context("the replica has no container")?;
    let pid = sh(&["docker", "inspect", "-f", "{{.State.Pid}}", id])?;
    let pid: u32 = pid.trim().parse().with_context(|| format!("container {id}: no pid in `{}`", pid.trim()))?;
    if pid == 0 {
        bail!("container {id} is not running");
    }
    Ok(format!("/proc/{pid}/ns/net"))
}

/// `ip …` in the namespace at `ns` (a path: named namespaces and containers' alike).
fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let net = format!("--net={ns}");
    sh(&[&["nsenter", &net, "--", "ip"][..], args].concat())
}

/// The MTU of `ifname` in the namespace at `ns`.
fn mtu(ns: &str, ifname: &str) -> Result<u32> {
    let out = ip_in(ns, &["-o", "link", "show", ifname])?;
    let mut words = out.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "mtu")
        .and_then(|_| words.next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU of {ifname} in `{}`", out.trim()))
}

/// Bytes a WireGuard device sent (to every peer), from its control socket (`wg show`).
fn device_tx_bytes(ifname: &str) -> Result<u64> {
    let out = sh(&["wg", "show", ifname, "transfer"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()).sum())
}

/// Packets a device dropped on transmit (for a TUN device: its queue to the WireGuard
/// process was full), in the named namespace `ns`.
fn tx_dropped(ns: &str, ifname: &str) -> Result<u64> {
    let out = sh(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -s -j link show {ifname}`"))?;
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .with_context(|| format!("no TX drop count of {ifname} in `{}`", out.trim()))
}

/// A counter of `/proc/net/snmp` (`table` is e.g. `Tcp`) in the calling thread's network
/// namespace.
fn snmp(table: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").context("reading /proc/thread-self/net/snmp")?;
    let prefix = format!("{table}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) =
        lines.next().zip(lines.next()).with_context(|| format!("no {table} lines in /proc/net/snmp"))?;
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no {table} {field} in /proc/net/snmp"))
}

/// UDP datagrams dropped for a full receive buffer in both nodes' namespaces, where the
/// WireGuard sockets of both paths are.
fn udp_rcvbuf_errors(nodes_ns: &[String; 2]) -> Result<u64> {
    let mut sum = 0;
    for ns in nodes_ns {
        sum += netns::run_in(&netns::named(ns), || snmp("Udp", "RcvbufErrors"))??;
    }
    Ok(sum)
}

/// `boringtun-cli` from the PATH or `target/tools/bin`, installed there when missing.
fn boringtun_cli() -> Result<PathBuf> {
    const NAME: &str = "boringtun-cli";
    if let Some(p) = host::find(NAME) {
        return Ok(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest).join("target").join("tools");
    let bin = root.join("bin").join(NAME);
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "{NAME} is neither on the PATH nor in {}: installing it (`cargo install --locked boringtun-cli --root {}`, a few minutes)",
        bin.display(),
        root.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["install", "--locked", "boringtun-cli", "--root"])
        .arg(&root)
        .status()
        .with_context(|| format!("running {cargo} install"))?;
    if !status.success() || !bin.is_file() {
        bail!("installing boringtun-cli failed ({status})");
    }
    Ok(bin)
}

/// Checks that `boringtun-cli` has the flags the benchmark passes; returns its version.
fn check_boringtun(bin: &Path) -> Result<String> {
    let bin_s = bin.to_str().context("boringtun-cli's path is not UTF-8")?;
    let help = sh(&[bin_s, "--help"])?;
    for flag in ["--foreground", "--disable-drop-privileges", "--threads", "--verbosity"] {
        if !help.contains(flag) {
            bail!("{} has no {flag} flag (its --help: {help})", bin.display());
        }
    }
    Ok(sh(&[bin_s, "--version"])?.trim().to_string())
}

/// One `boringtun-cli` process in a node's namespace and its TUN device. Stopped on drop:
/// SIGTERM (it then removes its device and control socket), SIGKILL if it lingers, and
/// waited for.
struct BoringTun {
    ifname: String,
    child: Option<Child>,
}

impl BoringTun {
    fn start(bin: &Path, ns: &str, ifname: &str) -> Result<BoringTun> {
        // Its log (errors only) goes to stdout in the foreground: send it to our stderr.
        let log = std::io::stderr().as_fd().try_clone_to_owned().context("duplicating stderr")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::named(ns)))
            .arg("--")
            .arg(bin)
            .args(["--foreground", "--disable-drop-privileges", "--verbosity", "error"])
            .args(["--threads", &BORINGTUN_THREADS.to_string()])
            .arg(ifname)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} {ifname}", bin.display()))?;
        let mut bt = BoringTun { ifname: ifname.to_string(), child: Some(child) };
        let sock = bt.socket();
        let mut exited = None;
        wait_for(&format!("{} to accept", sock.display()), Duration::from_secs(10), || {
            if let Some(Ok(Some(status))) = bt.child.as_mut().map(Child::try_wait) {
                exited = Some(status);
                return true;
            }
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })
        .with_context(|| format!("boringtun-cli {ifname} did not open its control socket"))?;
        if let Some(status) = exited {
            bt.child = None;
            bail!("boringtun-cli {ifname} exited at start ({status})");
        }
        Ok(bt)
    }

    fn socket(&self) -> PathBuf {
        wireguard::socket_path(&self.ifname)
    }
}

impl Drop for BoringTun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

/// The bare tunnel: a `boringtun-cli` device in each node's namespace, peered with the other.
struct BareTunnel {
    devices: Vec<BoringTun>,
    /// The network namespaces (inodes) the devices' sockets live in.
    netns_inos: Vec<u64>,
}

impl BareTunnel {
    fn start(bin: &Path, nodes: &[DevNode], mtu: u32) -> Result<BareTunnel> {
        let mut t = BareTunnel { devices: Vec::new(), netns_inos: Vec::new() };
        let mut keys = Vec::new();
        for (i, n) in nodes.iter().take(2).enumerate() {
            let ifname = format!("bt{}-{}", std::process::id(), i + 1);
            t.devices.push(BoringTun::start(bin, &n.netns, &ifname)?);
            t.netns_inos.push(wireguard::namespace_ino(&netns::named(&n.netns)));
            let private = sh(&["wg", "genkey"])?.trim().to_string();
            let public = pipe(&["wg", "pubkey"], &private)?.trim().to_string();
            keys.push((private, public));
        }
        for i in 0..2 {
            let (dev, node, peer) = (&t.devices[i], &nodes[i], &nodes[1 - i]);
            let port = BARE_PORT.to_string();
            let endpoint = format!("{}:{BARE_PORT}", peer.lan_addr);
            let allowed = format!("{}/32", BARE_ADDRS[1 - i]);
            let args = [
                "wg",
                "set",
                &dev.ifname,
                "listen-port",
                &port,
                "private-key",
                "/dev/stdin",
                "peer",
                &keys[1 - i].1,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ];
            pipe(&args, &keys[i].0).with_context(|| format!("configuring {}", dev.ifname))?;
            let ns = ["ip", "-n", &node.netns];
            let addr = format!("{}/30", BARE_ADDRS[i]);
            sh(&[&ns[..], &["addr", "add", &addr, "dev", &dev.ifname]].concat())?;
            sh(&[&ns[..], &["link", "set", &dev.ifname, "mtu", &mtu.to_string(), "up"]].concat())?;
        }
        Ok(t)
    }

    /// Sets the receive and send buffers of every UDP socket of both devices (each process's
    /// own, taken with `pidfd_getfd`); returns how many sockets that was.
    fn set_buffers(&self, rcv: u32, snd: u32) -> Result<usize> {
        let mut n = 0;
        for (dev, &ino) in self.devices.iter().zip(&self.netns_inos) {
            let pid = dev.child.as_ref().context("boringtun-cli is not running")?.id();
            for fd in process_sockets(pid)? {
                if wireguard::is_device_socket(fd.as_fd(), BARE_PORT, ino) {
                    wireguard::set_socket_buffers(fd.as_fd(), rcv, snd)
                        .with_context(|| format!("sizing a socket of {}", dev.ifname))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Copies of the sockets among process `pid`'s file descriptors (`pidfd_getfd`).
fn process_sockets(pid: u32) -> Result<Vec<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pidfd_open({pid})"));
    }
    // SAFETY: just opened, owned here.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    let mut out = Vec::new();
    for (fd, target) in wireguard::fd_links(&format!("/proc/{pid}/fd")) {
        if !target.starts_with("socket:") {
            continue;
        }
        // SAFETY: pidfd_getfd duplicates the target's descriptor into this process, or fails.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0) };
        if got >= 0 {
            // SAFETY: just made, owned here.
            out.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(got as i32) });
        }
    }
    Ok(out)
}

/// The kernel's default receive and send buffers (what a socket gets unless it asks), halved
/// as `SO_RCVBUF` and `SO_SNDBUF` take them.
fn default_buffers() -> Result<(u32, u32)> {
    let read = |name: &str| -> Result<u32> {
        let path = format!("/proc/sys/net/core/{name}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        text.trim().parse::<u32>().with_context(|| format!("{path}: `{}` is not a number", text.trim()))
    };
    Ok((read("rmem_default")? / 2, read("wmem_default")? / 2))
}

/// Runs a command with `input` on its stdin, failing with its output when it fails.
fn pipe(args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", args[0]))?;
    child.stdin.take().context("no stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args[..2.min(args.len())].join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Times single 1-byte round trips on one connection for `dur`; each in µs.
fn round_trips(addr: SocketAddr, dur: Duration) -> Result<Vec<f64>> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut b = [0u8];
    let mut trips = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        s.write_all(&b).context("writing a request")?;
        s.read_exact(&mut b).context("reading the answer")?;
        trips.push(t.elapsed().as_secs_f64() * 1e6);
        interrupt::check()?;
    }
    Ok(trips)
}


impl Bench {
    fn target(&self, s: Scenario) -> &Target {
        match s {
            Scenario::Fizz => &self.fizz,
            Scenario::Bare | Scenario::BareSized => &self.bare,
        }
    }

    /// Gives the bare tunnel's sockets the buffers of scenario `s`, before it is measured.
    /// Each device has a listening socket and one connected to its peer.
    fn size_bare(&self, s: Scenario) -> Result<()> {
        let (rcv, snd) = match s {
            Scenario::Fizz => return Ok(()),
            Scenario::Bare => default_buffers()?,
            Scenario::BareSized => (wireguard::SOCKET_BUFFER, wireguard::SOCKET_BUFFER),
        };
        let n = self.bare_tunnel.set_buffers(rcv, snd)?;
        if n < 4 {
            bail!("found {n} UDP sockets of the bare tunnel's devices on port {BARE_PORT}, not the 4 or more expected");
        }
        Ok(())
    }

    /// One `load` measurement from the scenario's client namespace.
    fn measure(&self, s: Scenario, mode: Mode, dur: Duration) -> Result<f64> {
        interrupt::check()?;
        let t = self.target(s);
        let addr = t.addr(mode);
        let outcome = netns::run_in(&t.client_ns, || load::measure(mode, addr, dur))??;
        Ok(outcome.value)
    }

    /// A stream from the scenario's client namespace: Gbit/s, and the TCP segments its
    /// namespace retransmitted meanwhile.
    fn stream(&self, s: Scenario, dur: Duration) -> Result<(f64, u64)> {
        interrupt::check()?;
        let t = self.target(s);
        let addr = t.addr(Mode::Stream);
        netns::run_in(&t.client_ns, || -> Result<(f64, u64)> {
            let before = snmp("Tcp", "RetransSegs")?;
            let outcome = load::measure(Mode::Stream, addr, dur)?;
            Ok((outcome.value, snmp("Tcp", "RetransSegs")?.saturating_sub(before)))
        })?
    }

    /// Timed round trips from the scenario's client namespace, sorted.
    fn latencies(&self, s: Scenario, dur: Duration) -> Result<Vec<f64>> {
        interrupt::check()?;
        let t = self.target(s);
        let addr = t.addr(Mode::Rr);
        let mut v = netns::run_in(&t.client_ns, || round_trips(addr, dur))??;
        if v.is_empty() {
            bail!("no round trip to {addr} completed");
        }
        v.sort_by(f64::total_cmp);
        Ok(v)
    }

    /// Measures `metric` on scenario `s` and records it; returns the mean round trip (µs) of
    /// a request/response measurement.
    fn record(&mut self, s: Scenario, metric: Metric) -> Result<Option<f64>> {
        let k = s.key();
        self.size_bare(s)?;
        match metric {
            Metric::Stream => {
                let t = self.target(s);
                let before = (tx_dropped(&t.device_ns, &t.device)?, udp_rcvbuf_errors(&self.nodes_ns)?);
                let (v, retransmits) = self.stream(s, self.dur)?;
                let drops = tx_dropped(&t.device_ns, &t.device)?.saturating_sub(before.0);
                let udp_drops = udp_rcvbuf_errors(&self.nodes_ns)?.saturating_sub(before.1);
                self.results.push(&format!("stream/{k}"), Mode::Stream.unit(), v);
                self.results.push(&format!("stream_tx_drops/{k}"), "packets", drops as f64);
                self.results.push(&format!("stream_retransmits/{k}"), "segments", retransmits as f64);
                self.results.push(&format!("stream_udp_rcvbuf_drops/{k}"), "datagrams", udp_drops as f64);
                Ok(None)
            }
            Metric::Rr => {
                let v = self.measure(s, Mode::Rr, self.dur)?;
                self.results.push(&format!("rr/{k}"), Mode::Rr.unit(), v);
                self.results.push(&format!("rtt_mean/{k}"), "µs", 1e6 / v);
                Ok(Some(1e6 / v))
            }
            Metric::Latency => {
                let v = self.latencies(s, self.dur)?;
                self.results.push(&format!("rtt_p50/{k}"), "µs", report::percentile(&v, 0.5));
                self.results.push(&format!("rtt_p99/{k}"), "µs", report::percentile(&v, 0.99));
                Ok(None)
            }
        }
    }

    fn wait_ready(&self) -> Result<()> {
        for s in Scenario::ALL {
            for mode in [Mode::Rr, Mode::Stream] {
                let t = self.target(s);
                let addr = t.addr(mode);
                let what = format!("{} ({}) to answer on {addr}", s.label(), mode.label());
                netns::run_in(&t.client_ns, || wait_for(&what, READY_TIMEOUT, || load::probe(mode, addr).is_ok()))??;
            }
        }
        Ok(())
    }

    /// A short unrecorded pass of everything, which also checks that each path's traffic went
    /// through its own WireGuard device (and not, say, around it).
    fn warm_up(&mut self) -> Result<()> {
        eprintln!("warming up");
        let dur = self.dur.min(WARM_UP);
        for s in Scenario::ALL {
            self.size_bare(s).or_else(|e| if s == Scenario::Fizz { Err(e) } else { Ok(()) })?;
            let before = [device_tx_bytes(&self.fizz.device)?, device_tx_bytes(&self.bare.device)?];
            self.measure(s, Mode::Stream, dur)?;
            let after = [device_tx_bytes(&self.fizz.device)?, device_tx_bytes(&self.bare.device)?];
            let (own, other) = match s {
                Scenario::Fizz => (after[0].saturating_sub(before[0]), after[1].saturating_sub(before[1])),
                Scenario::Bare | Scenario::BareSized => {
                    (after[1].saturating_sub(before[1]), after[0].saturating_sub(before[0]))
                }
            };
            if own < MIN_DEVICE_BYTES || other >= MIN_DEVICE_BYTES {
                bail!(
                    "{}: the stream did not go through {} alone ({own} bytes sent by it, {other} by the other path's device)",
                    s.label(),
                    self.target(s).device
                );
            }
            self.measure(s, Mode::Rr, dur)?;
            self.latencies(s, dur)?;
        }
        Ok(())
    }

    fn main_runs(&mut self) -> Result<()> {
        for r in 0..self.runs {
            eprintln!("run {}/{}: stream, request/response, round-trip latency", r + 1, self.runs);
            // Alternate which path goes first, so neither always follows the other.
            let mut order = Scenario::ALL;
            order.rotate_left(r as usize % Scenario::ALL.len());
            let mut rtt = [f64::NAN; 3];
            for metric in Metric::ALL {
                for s in order {
                    if let Some(us) = self.record(s, metric)? {
                        rtt[s as usize] = us;
                    }
                }
            }
            self.results.push("rtt_mean_diff", "µs", rtt[Scenario::Fizz as usize] - rtt[Scenario::BareSized as usize]);
            self.results.push("rtt_mean_diff_default", "µs", rtt[Scenario::Fizz as usize] - rtt[Scenario::Bare as usize]);
        }
        Ok(())
    }

    /// The line of `key`; a Fizz line with `ratio` gets its ratio to the bare tunnel given
    /// the same socket buffers.
    fn line(&self, key: &str, scenario: &str, metric: &str, ratio: bool) -> Option<Line> {
        let bare = key.replace("/fizz", "/bare_sized");
        let entry =
            self.results.entry(key, if ratio && key.ends_with("/fizz") { Some(bare.as_str()) } else { None })?;
        Some(Line { key: key.to_string(), scenario: scenario.to_string(), metric: metric.to_string(), entry })
    }

    /// Fizz's `series` against the bare tunnel with the kernel's default buffers.
    fn line_vs_default(&self, series: &str, metric: &str) -> Option<Line> {
        let entry = self.results.entry(&format!("{series}/fizz"), Some(&format!("{series}/bare")))?;
        Some(Line {
            key: format!("{series}/fizz_vs_bare"),
            scenario: "fizz, ratio to bare at default buffers".into(),
            metric: metric.to_string(),
            entry,
        })
    }

    fn report(&self, setup: &SetUp) -> Result<()> {
        let mut sections = Vec::new();
        for (series, metric) in [
            ("stream", "stream"),
            ("rr", "request/response"),
            ("rtt_mean", "mean round trip (1/rate)"),
            ("rtt_p50", "round trip p50"),
            ("rtt_p99", "round trip p99"),
            ("stream_tx_drops", "sender's tunnel device TX drops, per stream"),
            ("stream_retransmits", "sender's TCP retransmits, per stream"),
            ("stream_udp_rcvbuf_drops", "WireGuard UDP receive-buffer drops, per stream"),
        ] {
            let ratio = !series.starts_with("stream_");
            let mut lines: Vec<Line> = [Scenario::Bare, Scenario::BareSized, Scenario::Fizz]
                .into_iter()
                .filter_map(|s| self.line(&format!("{series}/{}", s.key()), s.label(), metric, ratio))
                .collect();
            if ratio {
                lines.extend(self.line_vs_default(series, metric));
            }
            sections.push(lines);
        }
        sections.push(
            [
                self.line("rtt_mean_diff", "fizz − bare (Fizz's buffers)", "mean round trip", false),
                self.line("rtt_mean_diff_default", "fizz − bare (default buffers)", "mean round trip", false),
            ]
            .into_iter()
            .flatten()
            .collect(),
        );

        println!(
            "\nCross-node container → container through Fizz vs a bare boringtun-cli tunnel on the same LAN veths:\n\
             median and range of {} interleaved runs of {} s per measurement (release build).",
            self.runs,
            self.dur.as_secs_f64()
        );
        println!(
            "ratio = median over runs of fizz / bare in the same run, the bare tunnel's sockets given the buffers \
             Fizz gives its own ({} MiB, past net.core.rmem_max; boringtun leaves the kernel's default), so that \
             the ratio is the cost of Fizz's datapath; the ratio to bare as boringtun-cli runs by default is \
             shown beside it.\n",
            wireguard::SOCKET_BUFFER >> 20
        );
        print!("{}", report::table(&sections));
        println!();
        println!(
            "{}, {BORINGTUN_THREADS} threads per device (as Fizz's embedded device); MTU: Fizz's WireGuard device \
             {}, containers' eth0 {}, bare tunnel {}. Fizz listens on UDP {}, the bare tunnel on {BARE_PORT}.",
            setup.boringtun_version,
            setup.fizz_mtu,
            setup.container_mtu,
            setup.bare_mtu,
            wireguard::DEFAULT_PORT
        );
        if setup.plumbed_mtu > setup.fizz_mtu {
            println!(
                "WARNING: Fizz plumbed the containers' eth0 with MTU {}, over its WireGuard device's {}: cross-node \
                 packets longer than that are dropped, and a TCP stream stalls.{}",
                setup.plumbed_mtu,
                setup.fizz_mtu,
                if setup.container_mtu < setup.plumbed_mtu {
                    format!(" The benchmark set eth0 to {} in both containers to measure.", setup.container_mtu)
                } else {
                    String::new()
                }
            );
        }

        let ratio = self.results.entry("stream/fizz", Some("stream/bare_sized")).and_then(|e| e.ratio_to_direct);
        let ratio_default = self.results.entry("stream/fizz", Some("stream/bare")).and_then(|e| e.ratio_to_direct);
        let diff = self.results.entry("rtt_mean_diff", None).map(|e| e.median);
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        match ratio {
            Some(r) => println!(
                "Target: throughput ≥ {TARGET_THROUGHPUT_RATIO:.2}× the bare tunnel's (same socket buffers): {r:.3}× — {}{}",
                verdict(r >= TARGET_THROUGHPUT_RATIO),
                ratio_default.map(|d| format!(" ({d:.3}× bare boringtun-cli at its default buffers)")).unwrap_or_default()
            ),
            None => println!("Target: throughput ≥ {TARGET_THROUGHPUT_RATIO:.2}× the bare tunnel's: no result"),
        }
        match diff {
            Some(d) => println!(
                "Target: mean round trip ≤ bare + {TARGET_RTT_DIFF_US:.0} µs (same socket buffers): {d:+.1} µs — {}",
                verdict(d <= TARGET_RTT_DIFF_US)
            ),
            None => println!("Target: mean round trip ≤ bare + {TARGET_RTT_DIFF_US:.0} µs: no result"),
        }

        let mut lines: Vec<Line> = sections.into_iter().flatten().collect();
        for (key, v, unit) in [
            ("mtu/fizz_wg", setup.fizz_mtu, "bytes"),
            ("mtu/container_plumbed", setup.plumbed_mtu, "bytes"),
            ("mtu/container", setup.container_mtu, "bytes"),
            ("mtu/bare", setup.bare_mtu, "bytes"),
            ("boringtun_threads", BORINGTUN_THREADS, "threads"),
        ] {
            lines.push(Line {
                key: key.into(),
                scenario: String::new(),
                metric: String::new(),
                entry: Entry::single(v.into(), unit),
            });
        }
        let path = report::out_dir()?.join("tunnel.json");
        report::write_json(&path, &lines)?;
        println!("\nwrote {}", report::display(&path));
        Ok(())
    }
}
