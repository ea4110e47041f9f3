//! `fizz net inspect`: the live datapath, from the pinned maps.

use anyhow::{Context as _, Result};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use crate::net::inspect::{self, Snapshot};

use super::PinDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pin: PinDir,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let snap = inspect::snapshot(&args.pin.pin_dir)
        .with_context(|| format!("reading the datapath pinned in {} (is the agent installed?)", args.pin.pin_dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", render(&snap));
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

/// The human view: one table per topic.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    match &s.program {
        Some(p) => {
            let cost = p.ns_per_run.map_or("n/a (kernel.bpf_stats_enabled=0)".to_string(), |n| format!("{n:.1} ns/packet"));
            out += &format!("program {} id {} tag {}: {} runs, {}\n", p.name, p.id, p.tag, p.run_count, cost);
        }
        None => out += "program: not loaded\n",
    }
    let attached: Vec<String> = s
        .attached
        .iter()
        .map(|l| if l.present { l.ifname.clone() } else { format!("{} (gone)", l.ifname) })
        .collect();
    out += &format!("attached to: {}\n\n", if attached.is_empty() { "nothing".into() } else { attached.join(", ") });

    let mut t = table(&["SERVICE", "CONNECTS", "PACKETS", "BYTES", "BACKEND", "CONNECTS", "FLOWS", "PACKETS"]);
    for svc in &s.services {
        let head = [svc.frontend.to_string(), svc.connects.to_string(), svc.packets.to_string(), svc.bytes.to_string()];
        if svc.backends.is_empty() {
            let mut row = head.to_vec();
            row.extend(["(none: rejects)".into(), String::new(), String::new(), String::new()]);
            t.add_row(row);
        }
        for (i, b) in svc.backends.iter().enumerate() {
            let mut row = if i == 0 { head.to_vec() } else { vec![String::new(); 4] };
            row.extend([b.backend.to_string(), b.connects.to_string(), b.flows.to_string(), b.packets.to_string()]);
            t.add_row(row);
        }
    }
    out += &format!("services ({})\n{t}\n", s.services.len());
    out += "CONNECTS: flows balanced at the socket, TCP connections at connect time and unconnected UDP sockets at \
            their first datagram (no NAT: their packets take the direct path); FLOWS, PACKETS, BYTES: flows NAT'd \
            per packet (connected UDP, and clients outside this node's containers).\n\n";

    let mut t = table(&["ENDPOINT", "INTERFACE", "MAC", "NETWORKS"]);
    for e in &s.endpoints {
        let ifname = e.ifname.clone().unwrap_or_else(|| format!("#{}", e.ifindex));
        t.add_row(vec![e.addr.to_string(), ifname, e.mac.clone(), networks(e.net_mask)]);
    }
    out += &format!("endpoints ({})\n{t}\n\n", s.endpoints.len());

    let mut t = table(&["PROTO", "CLIENT", "FRONTEND", "BACKEND", "STATE", "IDLE"]);
    for f in s.conntrack.iter().take(50) {
        t.add_row(vec![f.proto.clone(), f.client.clone(), f.frontend.clone(), f.backend.clone(), f.state.to_string(), format!("{:.0}s", f.idle_s)]);
    }
    let more = s.conntrack.len().saturating_sub(50);
    out += &format!("conntrack ({} flows{})\n{t}\n\n", s.conntrack.len(), if more > 0 { ", first 50 shown; --json for all" } else { "" });

    let mut t = table(&["REMOTE RANGE", "TUNNEL"]);
    for r in &s.remotes {
        t.add_row(vec![r.range.clone(), r.ifname.clone().unwrap_or_else(|| format!("#{}", r.ifindex))]);
    }
    out += &format!("routes to other nodes ({})\n{t}\n\n", s.remotes.len());

    let mut t = table(&["OTHER NODES' CONTAINER", "NETWORKS"]);
    for e in s.remote_endpoints.iter().take(50) {
        t.add_row(vec![e.addr.to_string(), networks(e.net_mask)]);
    }
    let more = s.remote_endpoints.len().saturating_sub(50);
    out += &format!(
        "containers of other nodes ({}{})\n{t}\n",
        s.remote_endpoints.len(),
        if more > 0 { ", first 50 shown; --json for all" } else { "" }
    );
    out += "NETWORKS: the bits of the Compose networks a container is on (two containers may talk when \
            they share one); any: unrestricted.\n\n";

    let mut t = table(&["VERDICT", "PACKETS", "BYTES"]);
    for (k, v) in &s.verdicts {
        t.add_row(vec![k.to_string(), v.packets.to_string(), v.bytes.to_string()]);
    }
    out += &format!("verdicts\n{t}\n\n");
    let mut t = table(&["DROP REASON", "PACKETS", "BYTES"]);
    for (k, v) in &s.drops {
        t.add_row(vec![k.to_string(), v.packets.to_string(), v.bytes.to_string()]);
    }
    out += &format!("drops\n{t}\n");
    out
}

/// A network mask as its bit numbers (`0,3`), or `any` when unrestricted.
fn networks(mask: u64) -> String {
    if mask == 0 {
        return "any".into();
    }
    (0..64).filter(|b| mask & (1 << b) != 0).map(|b: u32| b.to_string()).collect::<Vec<_>>().join(",")
}
