//! `fizz node label`: a node's labels, which placement constraints
//! (`node.labels.<key> == <value>`) match. `fizz node rotate-key`: a new WireGuard key for the
//! node asked.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use hyper::Method;

use crate::api::{client::Client, LabelRequest, NodeRmRequest, RotateKeyResponse};

#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// Set (`key=value`) and remove (`--rm key`) labels of a node; prints its labels.
    Label {
        /// The node, as `fizz nodes` names it.
        node: String,
        /// Labels to set, as `key=value`.
        labels: Vec<String>,
        /// Labels to remove.
        #[arg(long = "rm")]
        remove: Vec<String>,
    },
    /// Give this node (the agent asked) a new WireGuard key; its peers take it from gossip.
    RotateKey,
    /// Forget a node that is gone for good (it must be down): it no longer counts for the
    /// majority, and its replicas are placed elsewhere.
    Rm {
        /// The node, as `fizz nodes` names it.
        node: String,
    },
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    let (node, labels, remove) = match args {
        Args::Label { node, labels, remove } => (node, labels, remove),
        Args::Rm { node } => {
            client.call::<_, ()>(Method::POST, "/v1/nodes/rm", Some(&NodeRmRequest { node: node.clone() })).await?;
            println!("{node}: removed from the cluster");
            return Ok(());
        }
        Args::RotateKey => {
            let r: RotateKeyResponse = client.call::<(), _>(Method::POST, "/v1/node/rotate-key", None).await?;
            println!("{}: new WireGuard public key {}", r.node, r.wg_pubkey);
            return Ok(());
        }
    };
    let mut set = BTreeMap::new();
    for l in &labels {
        let Some((k, v)) = l.split_once('=') else { bail!("label `{l}`: expected key=value") };
        set.insert(k.to_string(), v.to_string());
    }
    if set.is_empty() && remove.is_empty() {
        bail!("nothing to change: give key=value labels or --rm key");
    }
    let now: BTreeMap<String, String> = client.call(Method::POST, "/v1/nodes/labels", Some(&LabelRequest { node: node.clone(), set, remove })).await?;
    let shown: Vec<String> = now.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{node}: {}", if shown.is_empty() { "no labels".to_string() } else { shown.join(", ") });
    Ok(())
}
