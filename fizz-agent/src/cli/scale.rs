//! `fizz scale svc=N`: changes a service's replica count.

use anyhow::{Context as _, Result};
use hyper::Method;

use crate::api::{client::Client, ScaleRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long)]
    project: String,
    /// `service=replicas`, one or more.
    #[arg(required = true)]
    targets: Vec<String>,
}

/// Parses `service=N`.
pub fn parse_target(s: &str) -> Result<(String, u32)> {
    let (svc, n) = s.split_once('=').with_context(|| format!("`{s}`: expected service=replicas"))?;
    let n = n.parse().with_context(|| format!("`{s}`: `{n}` is not a replica count"))?;
    Ok((svc.to_string(), n))
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    let targets = args.targets.iter().map(|t| parse_target(t)).collect::<Result<Vec<_>>>()?;
    for (service, replicas) in targets {
        client
            .call::<_, ()>(Method::POST, "/v1/scale", Some(&ScaleRequest { project: args.project.clone(), service: service.clone(), replicas }))
            .await?;
        println!("{}/{service} scaled to {replicas}", args.project);
    }
    Ok(())
}
