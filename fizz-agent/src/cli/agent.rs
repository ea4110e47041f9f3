//! `fizz agent`: the per-host daemon (foreground).
//!
//! Today it owns the node's datapath: it loads or adopts the pinned programs
//! and maps, attaches `from_container` to every container veth (host ends
//! named with the veth prefix) as they appear, drops link pins of veths that
//! are gone, and expires conntrack entries. It exits on SIGINT/SIGTERM and
//! leaves the datapath running for the next agent to adopt.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use crate::net::{conntrack::Timeouts, Datapath, DatapathConfig};

use super::PinDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pin: PinDir,
    /// The service VIP range.
    #[arg(long, default_value = "10.43.0.0/16")]
    vip_range: String,
    /// Attach to interfaces whose names start with this (host ends of container veths).
    #[arg(long, default_value = "fz")]
    veth_prefix: String,
    /// How often to look for new veths, in milliseconds.
    #[arg(long, default_value_t = 500)]
    scan_ms: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/').with_context(|| format!("`{s}` is not a CIDR (a.b.c.d/n)"))?;
    let addr: Ipv4Addr = addr.parse().with_context(|| format!("`{addr}` in `{s}` is not an IPv4 address"))?;
    let len: u8 = len.parse().with_context(|| format!("`{len}` in `{s}` is not a prefix length"))?;
    if len > 32 {
        bail!("prefix length {len} in `{s}` is over 32");
    }
    Ok((addr, len))
}

/// The interfaces of this network namespace.
fn interfaces() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns a NULL-terminated array that we free with
    // if_freenameindex after copying the names out.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push(std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

pub fn run(args: Args) -> Result<()> {
    let (vip_net, vip_prefix) = parse_cidr(&args.vip_range).context("--vip-range")?;
    let mut dp = Datapath::open(&args.pin.pin_dir, DatapathConfig { vip_net, vip_prefix })
        .with_context(|| format!("loading the datapath into {}", args.pin.pin_dir.display()))?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!("fizz agent: datapath ready in {}", args.pin.pin_dir.display());
    let timeouts = Timeouts::default();
    let mut last_gc = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        for name in interfaces().iter().filter(|n| n.starts_with(&args.veth_prefix)) {
            if let Err(e) = dp.attach(name) {
                eprintln!("fizz agent: {e}");
            }
        }
        if last_gc.elapsed() > Duration::from_secs(5) {
            last_gc = Instant::now();
            if let Err(e) = dp.gc_links() {
                eprintln!("fizz agent: {e}");
            }
            if let Err(e) = dp.gc_conntrack(&timeouts) {
                eprintln!("fizz agent: {e}");
            }
        }
        std::thread::sleep(Duration::from_millis(args.scan_ms));
    }
    eprintln!("fizz agent: stopping; the datapath stays pinned in {}", args.pin.pin_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.43.0.0/16").unwrap(), (Ipv4Addr::new(10, 43, 0, 0), 16));
        for bad in ["10.43.0.0", "10.43.0/16", "10.43.0.0/33", "10.43.0.0/x"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
