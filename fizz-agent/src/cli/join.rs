//! `fizz join ADDR --token T`: joins this node to a cluster.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use hyper::Method;

use crate::api::{client::Client, JoinRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A member's gossip address (port 7946 when left out).
    #[arg(required = true)]
    addrs: Vec<String>,
    /// The token `fizz init` printed.
    #[arg(long, env = "FIZZ_TOKEN")]
    token: String,
}

fn parse_addr(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s.parse().with_context(|| format!("`{s}` is not an address (ip or ip:port)"))?;
    Ok(SocketAddr::new(ip, crate::gossip::DEFAULT_PORT))
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    let seeds = args.addrs.iter().map(|a| parse_addr(a)).collect::<Result<Vec<_>>>()?;
    client.call::<_, ()>(Method::POST, "/v1/cluster/join", Some(&JoinRequest { token: args.token, seeds })).await?;
    println!("joined the cluster");
    Ok(())
}
