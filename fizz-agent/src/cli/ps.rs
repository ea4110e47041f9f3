//! `fizz ps`: every replica, its node, state, health, address and VIP.

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use hyper::Method;

use crate::api::{client::Client, PsResponse, UpdatePhase, UpdateStatus};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this project.
    #[arg(short, long)]
    project: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Formats replicas as a table.
pub fn render(ps: &PsResponse) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(vec!["NAME", "SERVICE", "NODE", "STATE", "HEALTH", "ADDRESS", "VIP", "NOTE"]);
    for r in &ps.replicas {
        let state = r.state.map_or("-".to_string(), |s| serde_json::to_value(s).map(|v| v.as_str().unwrap_or("?").to_string()).unwrap_or_default());
        let health = r.health.map_or(String::new(), |h| serde_json::to_value(h).map(|v| v.as_str().unwrap_or("?").to_string()).unwrap_or_default());
        t.add_row(vec![
            r.name.clone(),
            format!("{}/{}", r.project, r.service),
            r.node.clone(),
            state,
            health,
            r.addr.map(|a| a.to_string()).unwrap_or_default(),
            r.vip.map(|a| a.to_string()).unwrap_or_default(),
            r.note.clone().unwrap_or_default(),
        ]);
    }
    let mut out = format!("{t}\n");
    for u in ps.updates.iter().filter(|u| u.phase != UpdatePhase::Done) {
        out.push_str(&update_line(u));
        out.push('\n');
    }
    out
}

/// One line for a service's rolling update.
pub fn update_line(u: &UpdateStatus) -> String {
    let why = u.why.as_ref().map(|w| format!(": {w}")).unwrap_or_default();
    let count = match u.phase {
        UpdatePhase::Done | UpdatePhase::RolledBack => String::new(),
        _ => format!(" ({}/{} replicas updated)", u.updated, u.total),
    };
    format!("update {}/{}: {}{count}{why}", u.project, u.service, u.phase)
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    let path = match &args.project {
        Some(p) => format!("/v1/ps?project={p}"),
        None => "/v1/ps".to_string(),
    };
    let ps: PsResponse = client.call::<(), _>(Method::GET, &path, None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ps)?);
    } else {
        print!("{}", render(&ps));
    }
    Ok(())
}
