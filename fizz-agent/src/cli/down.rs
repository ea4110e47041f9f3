//! `fizz down`: removes a project everywhere.

use anyhow::Result;
use hyper::Method;

use crate::api::{client::Client, DownRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The project to remove.
    #[arg(short, long)]
    project: String,
    /// Also remove its named volumes.
    #[arg(short, long)]
    volumes: bool,
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    client.call::<_, ()>(Method::POST, "/v1/down", Some(&DownRequest { project: args.project.clone(), volumes: args.volumes })).await?;
    println!("project {} removed", args.project);
    Ok(())
}
