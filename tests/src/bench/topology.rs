//! The benchmark's two simulated nodes, each with a client and a backend
//! container: the Fizz node, whose datapath redirects between containers and
//! serves a VIP; and the kernel node, with no Fizz program, plain kernel
//! forwarding, an iptables DNAT VIP and a userspace proxy. Both can load
//! extra services for the scale runs. Everything is removed on drop.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use fizz::net::{
    conntrack::Timeouts,
    service::{BackendAddr, Frontend, Proto, ServiceSpec},
    Datapath,
};
use fizz_tests::{sh, Container, NetNs, Node};

use super::{interrupt, load::Mode, proxy, servers::Background};

pub const FIZZ_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 2);
pub const FIZZ_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 3);
/// A client on the Fizz node whose TCP connects are not balanced at
/// connect time: its VIP flows are NAT'd packet by packet, as those of a
/// client on another node or of a process outside any container are.
pub const FIZZ_NAT_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 4);
pub const KERNEL_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 2);
pub const KERNEL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 3);
pub const FIZZ_VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);
pub const IPTABLES_VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 2);
pub const PROXY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 1);

/// The VIP range, the datapath's default.
pub const VIP_RANGE: &str = "10.43.0.0/16";

/// The first extra VIP of the scale runs; the others follow it.
const EXTRA_VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 43, 1, 0);

/// The most services the scale runs can load: extra VIPs stay in the range.
pub const MAX_SERVICES: usize = 65_000;

fn extra_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(EXTRA_VIP_BASE) + i as u32)
}

/// Lets a namespace open connections at a high rate: the whole port range,
/// and reuse of ports in TIME_WAIT for new outgoing connections.
fn many_connections(ns: &NetNs) -> Result<()> {
    ns.run(|| -> std::io::Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
    })?
    .with_context(|| format!("setting the port sysctls in {}", ns.name))
}

/// A node with the Fizz datapath on its containers' veths: two clients
/// (one balanced at connect time, one NAT'd per packet) and a backend.
pub struct FizzNode {
    // Fields drop in this order: the servers leave the namespace first.
    _servers: Background,
    pub dp: Datapath,
    pub client: Container,
    pub nat_client: Container,
    _backend: Container,
    node: Node,
    extra: usize,
}

impl FizzNode {
    /// `server_cpu`: the CPU the backend's servers are kept on, if any.
    pub fn build(server_cpu: Option<usize>) -> Result<FizzNode> {
        let node = Node::new()?;
        let mut dp = node.datapath()?;
        let client = node.container(FIZZ_CLIENT)?;
        let nat_client = node.container(FIZZ_NAT_CLIENT)?;
        let backend = node.container(FIZZ_BACKEND)?;
        for (c, ep) in [(&client, client.endpoint()), (&nat_client, nat_client.endpoint_nat_client()), (&backend, backend.endpoint())] {
            node.attach(&mut dp, &c.host_if)?;
            dp.set_endpoint(c.addr, ep)?;
        }
        many_connections(&client.ns)?;
        many_connections(&nat_client.ns)?;
        for mode in Mode::ALL {
            dp.set_service(&service(FIZZ_VIP, mode.vip_port(), mode.proto(), FIZZ_BACKEND, mode.backend_port()))?;
        }
        let servers = super::servers::start(&backend.ns.path(), server_cpu)?;
        Ok(FizzNode { _servers: servers, dp, client, nat_client, _backend: backend, node, extra: 0 })
    }

    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// Loads `fz_floor`, the program that does nothing, without attaching
    /// it: enough for test runs.
    pub fn load_floor(&self) -> Result<Floor> {
        Ok(Floor(fizz::net::ebpf::load_floor(&self.node.pins.0).context("loading the floor program")?))
    }

    /// Attaches `fz_floor` in front of `from_container` on every container's
    /// veth (it passes every packet on, so traffic takes the same path).
    /// Detached when the returned object is dropped.
    pub fn attach_floor(&self) -> Result<Floor> {
        use aya::programs::{links::LinkOrder, tc::TcAttachOptions, TcAttachType};
        let mut floor = self.load_floor()?;
        let prog = floor.program_mut()?;
        for ifname in [&self.client.host_if, &self.nat_client.host_if, &self._backend.host_if] {
            self.node
                .ns
                .run(|| prog.attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::first())))?
                .with_context(|| format!("attaching the floor program to {ifname}"))?;
        }
        Ok(floor)
    }

    /// `from_container`'s (runs, run time) so far, from the kernel's BPF
    /// run-time statistics.
    pub fn program_stats(&self) -> Result<(u64, Duration)> {
        let info = self.dp.program().info().context("reading the program's statistics")?;
        Ok((info.run_count(), info.run_time()))
    }

    /// Each socket program's (runs, run time) so far, by name.
    pub fn sock_program_stats(&self) -> Result<Vec<(&'static str, (u64, Duration))>> {
        fizz::net::ebpf::SOCK_PROGRAMS
            .iter()
            .map(|&(name, kind)| {
                let pin = self.node.pins.0.join(name);
                let prog = aya::programs::CgroupSockAddr::from_pin(&pin, kind)
                    .with_context(|| format!("opening {}", pin.display()))?;
                let info = prog.info().with_context(|| format!("reading the statistics of {name}"))?;
                Ok((name, (info.run_count(), info.run_time())))
            })
            .collect()
    }

    /// Empties the datapath's conntrack (an agent's sweep with every timeout
    /// at zero); returns how many entries went. Closed flows otherwise stay
    /// until an agent sweeps them, 10 s after they closed, and:
    /// - a new VIP connection from a source port in use earlier takes over
    ///   the old flow's entries instead of making its own, unlike the
    ///   kernel's conntrack, which replaces a closed flow with a new one;
    /// - the reply entry of a closed VIP flow (backend port to client port)
    ///   also matches the replies of a later direct connection between the
    ///   same ports, and rewrites their source to the VIP: that connection
    ///   never completes.
    pub fn flush_conntrack(&mut self) -> Result<usize> {
        let zero = Duration::ZERO;
        let all = Timeouts { tcp_established: zero, tcp_unreplied: zero, tcp_closing: zero, udp: zero };
        self.dp.gc_conntrack(&all).context("emptying the datapath's conntrack")
    }

    /// Grows the services to `n`: the measured one plus `n - 1` extra VIPs
    /// on port 80, each with the real backend.
    pub fn set_services(&mut self, n: usize) -> Result<()> {
        let want = n.saturating_sub(1);
        if n > MAX_SERVICES || want < self.extra {
            bail!("the Fizz node can grow from {} to at most {MAX_SERVICES} services, not to {n}", self.extra + 1);
        }
        for i in self.extra..want {
            if i % 1000 == 0 {
                interrupt::check()?;
            }
            let port = Mode::Conn.backend_port();
            self.dp
                .set_service(&service(extra_vip(i), 80, Proto::Tcp, FIZZ_BACKEND, port))
                .with_context(|| format!("adding service {}:80", extra_vip(i)))?;
            self.extra = i + 1;
        }
        Ok(())
    }
}

/// The floor program, loaded and maybe attached; dropping it detaches it.
pub struct Floor(aya::Ebpf);

impl Floor {
    fn program(&self) -> Result<&aya::programs::SchedClassifier> {
        self.0
            .program(fizz_common::PROG_FLOOR)
            .context("no floor program in the object")?
            .try_into()
            .context("the floor program is no classifier")
    }

    fn program_mut(&mut self) -> Result<&mut aya::programs::SchedClassifier> {
        self.0
            .program_mut(fizz_common::PROG_FLOOR)
            .context("no floor program in the object")?
            .try_into()
            .context("the floor program is no classifier")
    }

    /// Its run-time statistics: (runs, run time).
    pub fn stats(&self) -> Result<(u64, Duration)> {
        let info = self.program()?.info().context("reading the floor program's statistics")?;
        Ok((info.run_count(), info.run_time()))
    }

    /// The kernel's mean time per run, in ns, of `repeat` test runs of the
    /// floor program over a minimal frame (`BPF_PROG_TEST_RUN`, no traffic).
    pub fn test_run_ns(&self, repeat: u32) -> Result<u32> {
        let frame = [0u8; 64];
        let (_, ns) = fizz::net::ebpf::test_run::test_run_repeat(self.program()?, &frame, repeat)
            .context("test-running the floor program")?;
        Ok(ns)
    }
}

fn service(vip: Ipv4Addr, port: u16, proto: Proto, backend: Ipv4Addr, backend_port: u16) -> ServiceSpec {
    ServiceSpec {
        frontend: Frontend { vip, port, proto },
        backends: vec![BackendAddr { addr: backend, port: backend_port }],
    }
}

/// A node with no Fizz program: the kernel forwards between containers, an
/// iptables DNAT rule per mode port serves `IPTABLES_VIP`, and a userspace
/// proxy listens on `PROXY_ADDR` (on the node's `lo`).
pub struct KernelNode {
    _proxy: Background,
    _servers: Background,
    pub client: Container,
    _backend: Container,
    node: Node,
}

impl KernelNode {
    /// `server_cpu`: as for `FizzNode::build` (the proxy is not kept on one).
    pub fn build(server_cpu: Option<usize>) -> Result<KernelNode> {
        let node = Node::new()?;
        let client = node.container(KERNEL_CLIENT)?;
        let backend = node.container(KERNEL_BACKEND)?;
        many_connections(&client.ns)?;
        // The proxy's own connections to the backend come from the node.
        many_connections(&node.ns)?;
        node.ns.ip(&["addr", "add", &format!("{PROXY_ADDR}/32"), "dev", "lo"])?;
        let servers = super::servers::start(&backend.ns.path(), server_cpu)?;
        let proxy = proxy::start(&node.ns.path(), PROXY_ADDR, KERNEL_BACKEND)?;
        let kn = KernelNode { _proxy: proxy, _servers: servers, client, _backend: backend, node };
        kn.set_services(1)?;
        Ok(kn)
    }

    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// Replaces the node's nat PREROUTING chain (with `iptables-restore
    /// --noflush` from a generated file) by: a first rule that lets traffic
    /// outside the VIP range skip the VIP rules, the rules of the rr, stream
    /// and UDP rr ports, `n - 1` DNAT rules for other VIPs, and last the measured
    /// rule of the connection port: the worst case for a linear chain.
    pub fn set_services(&self, n: usize) -> Result<()> {
        if n == 0 || n > MAX_SERVICES {
            bail!("the kernel node can load 1 to {MAX_SERVICES} services, not {n}");
        }
        let dnat = |vip: Ipv4Addr, mode: Mode| {
            format!(
                "-A PREROUTING -d {vip}/32 -p {} --dport {} -j DNAT --to-destination {KERNEL_BACKEND}:{}\n",
                mode.proto(),
                mode.vip_port(),
                mode.backend_port()
            )
        };
        let mut rules = format!("*nat\n-F PREROUTING\n-A PREROUTING ! -d {VIP_RANGE} -j ACCEPT\n");
        rules += &dnat(IPTABLES_VIP, Mode::Rr);
        rules += &dnat(IPTABLES_VIP, Mode::Stream);
        rules += &dnat(IPTABLES_VIP, Mode::UdpRr);
        for i in 0..n - 1 {
            rules += &dnat(extra_vip(i), Mode::Conn);
        }
        rules += &dnat(IPTABLES_VIP, Mode::Conn);
        rules += "COMMIT\n";

        let file = TempFile(std::env::temp_dir().join(format!("{}-{n}.rules", self.node.name)));
        std::fs::write(&file.0, rules).with_context(|| format!("writing {}", file.0.display()))?;
        let path = file.0.to_str().context("a temporary path that is not UTF-8")?;
        sh(&["ip", "netns", "exec", &self.node.name, "iptables-restore", "--noflush", path])?;

        // Check what the chain holds now.
        let listed = sh(&["ip", "netns", "exec", &self.node.name, "iptables", "-t", "nat", "-S", "PREROUTING"])?;
        let appended: Vec<&str> = listed.lines().filter(|l| l.starts_with("-A ")).collect();
        let last = appended.last().copied().unwrap_or_default();
        if appended.len() != n + 4 || !last.contains(&format!("-d {IPTABLES_VIP}/32")) || !last.contains("--dport 80") {
            bail!(
                "nat PREROUTING has {} rules, the last `{last}`; expected {} ending with the measured rule",
                appended.len(),
                n + 4
            );
        }
        Ok(())
    }

    /// Connections the kernel's conntrack tracks in the node, and its limit.
    pub fn conntrack(&self) -> Result<(u64, u64)> {
        let read = |p: &str| -> Result<u64> {
            Ok(std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?.trim().parse()?)
        };
        self.node.ns.run(|| -> Result<(u64, u64)> {
            Ok((read("/proc/sys/net/netfilter/nf_conntrack_count")?, read("/proc/sys/net/netfilter/nf_conntrack_max")?))
        })?
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
