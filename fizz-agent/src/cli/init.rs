//! `fizz init`: starts a new cluster on this node and prints the join token.

use anyhow::Result;
use hyper::Method;

use crate::api::{client::Client, InitResponse};

pub async fn run(client: &Client) -> Result<()> {
    let r: InitResponse = client.call::<(), _>(Method::POST, "/v1/cluster/init", None).await?;
    println!("cluster started on this node ({})", r.addr);
    println!("join other nodes with:\n  fizz join {} --token {}", r.addr, r.token);
    Ok(())
}
