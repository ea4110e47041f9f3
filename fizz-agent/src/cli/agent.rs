//! `fizz agent`: the per-host daemon, in the foreground.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::agent::{ipam::Cidr, Config};

use super::PinDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pin: PinDir,
    /// This node's name (labels its containers); defaults to the hostname.
    #[arg(long, env = "FIZZ_NODE")]
    node: Option<String>,
    /// Where the desired state is kept.
    #[arg(long, env = "FIZZ_STATE_DIR", default_value = "/var/lib/fizz")]
    state_dir: PathBuf,
    /// This node's container range.
    #[arg(long, default_value = "10.42.0.0/24")]
    range: String,
    /// The service VIP range.
    #[arg(long, default_value = "10.43.0.0/16")]
    vip_range: String,
    /// Prefix of the host ends of container veths (at most 9 characters).
    #[arg(long, default_value = "fz")]
    veth_prefix: String,
    /// Upstream DNS servers for names outside the cluster (default: /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<SocketAddr>,
    /// MTU of container interfaces (leaves room for WireGuard's overhead
    /// on a 1500-byte network).
    #[arg(long, default_value_t = crate::net::wireguard::DEFAULT_MTU)]
    mtu: u32,
    /// UDP port of this node's WireGuard device.
    #[arg(long, default_value_t = crate::net::wireguard::DEFAULT_PORT)]
    wg_port: u16,
    /// UDP port of gossip between nodes.
    #[arg(long, default_value_t = crate::gossip::DEFAULT_PORT)]
    gossip_port: u16,
    /// The address other nodes reach this one at (default: the first global IPv4).
    #[arg(long)]
    advertise_addr: Option<std::net::Ipv4Addr>,
    /// Appended to the Docker names of this node's containers, for nodes that share one
    /// Docker engine (a local cluster); Fizz's own names are unchanged.
    #[arg(long, default_value = "")]
    name_suffix: String,
}

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Result<Cidr> {
    let (addr, len) = s.split_once('/').with_context(|| format!("`{s}` is not a CIDR (a.b.c.d/n)"))?;
    let addr = addr.parse().with_context(|| format!("`{addr}` in `{s}` is not an IPv4 address"))?;
    let len: u8 = len.parse().with_context(|| format!("`{len}` in `{s}` is not a prefix length"))?;
    Ok(Cidr::new(addr, len)?)
}

/// The nameservers of /etc/resolv.conf, port 53.
fn resolv_conf() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "node".into())
}

pub fn run(args: Args, socket: PathBuf) -> Result<()> {
    if args.veth_prefix.is_empty() || args.veth_prefix.len() > 9 {
        bail!("--veth-prefix must be 1 to 9 characters, not `{}`", args.veth_prefix);
    }
    let range = parse_cidr(&args.range).context("--range")?;
    let vip_range = parse_cidr(&args.vip_range).context("--vip-range")?;
    // The datapath takes an address in this node's range for a container,
    // never for a VIP.
    if range.overlaps(&vip_range) {
        bail!(
            "--vip-range {}/{} overlaps --range {}/{}: service VIPs and container addresses must not share addresses",
            vip_range.net,
            vip_range.len,
            range.net,
            range.len
        );
    }
    let cfg = Config {
        node: args.node.unwrap_or_else(hostname),
        state_dir: args.state_dir,
        pin_dir: args.pin.pin_dir,
        socket,
        range,
        vip_range,
        veth_prefix: args.veth_prefix,
        dns_listen: SocketAddr::from((crate::net::plumb::GATEWAY, 53)),
        dns_upstream: if args.dns_upstream.is_empty() { resolv_conf() } else { args.dns_upstream },
        mtu: args.mtu,
        gossip_port: args.gossip_port,
        advertise: args.advertise_addr,
        wg_port: args.wg_port,
        name_suffix: args.name_suffix,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(crate::agent::run(cfg))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_when_one_holds_the_other() {
        let c = |s| parse_cidr(s).unwrap();
        assert!(c("10.42.0.0/16").overlaps(&c("10.42.3.0/24")));
        assert!(c("10.42.3.0/24").overlaps(&c("10.42.0.0/16")));
        assert!(!c("10.42.0.0/16").overlaps(&c("10.43.0.0/16")));
        assert!(!c("10.42.0.0/24").overlaps(&c("10.42.1.0/24")));
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr("10.43.0.0/16").unwrap();
        assert_eq!((c.net, c.len), ("10.43.0.0".parse().unwrap(), 16));
        for bad in ["10.43.0.0", "10.43.0/16", "10.43.0.0/33", "10.43.0.0/x", "10.43.0.1/16"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
