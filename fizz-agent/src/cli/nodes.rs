//! `fizz nodes`: the cluster's members and their state.

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use hyper::Method;

use crate::api::{client::Client, NodesResponse};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    let r: NodesResponse = client.call::<(), _>(Method::GET, "/v1/nodes", None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if !r.clustered {
        println!("this node is in no cluster: `fizz init` starts one, `fizz join` joins one");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(vec!["NODE", "ADDRESS", "STATE", "RANGE", "WIREGUARD KEY", "HANDSHAKE", "GENERATION", "LABELS"]);
    for n in &r.nodes {
        let name = if n.local { format!("{} (this node)", n.name) } else { n.name.clone() };
        let handshake = match (n.local, n.wg_handshake_secs) {
            (true, _) => "-".to_string(),
            (false, Some(s)) => format!("{s}s ago"),
            (false, None) => "never".to_string(),
        };
        let key: String = n.wg_pubkey.chars().take(12).collect();
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.add_row(vec![
            name,
            n.addr.to_string(),
            n.state.clone(),
            n.range.clone(),
            format!("{key}…"),
            handshake,
            n.generation.to_string(),
            labels.join(","),
        ]);
    }
    println!("{t}");
    Ok(())
}
