//! `fizz init`: starts a new cluster on this node and prints the join token. `fizz join-token`:
//! prints it again, or makes a new one (`--rotate`: every member refuses the old one then;
//! nodes already in the cluster are not affected).

use anyhow::Result;
use hyper::Method;

use crate::api::{client::Client, InitResponse, JoinTokenRequest, JoinTokenResponse};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Make a new token; the old one stops working on every member.
    #[arg(long)]
    rotate: bool,
}

pub async fn token(args: TokenArgs, client: &Client) -> Result<()> {
    let r: JoinTokenResponse = client.call(Method::POST, "/v1/cluster/join-token", Some(&JoinTokenRequest { rotate: args.rotate })).await?;
    if args.rotate {
        eprintln!("new join token (the old one no longer works):");
    }
    println!("{}", r.token);
    Ok(())
}

pub async fn run(client: &Client) -> Result<()> {
    let r: InitResponse = client.call::<(), _>(Method::POST, "/v1/cluster/init", None).await?;
    println!("cluster started on this node ({})", r.addr);
    println!("join other nodes with:\n  fizz join {} --token {}", r.addr, r.token);
    Ok(())
}
