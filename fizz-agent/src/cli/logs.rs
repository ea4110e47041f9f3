//! `fizz logs`: a service's output, every replica, prefixed by its name.

use std::io::Write as _;

use anyhow::Result;

use crate::api::client::Client;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long)]
    project: String,
    /// Only this service.
    service: Option<String>,
    /// Keep following the output.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each replica.
    #[arg(long)]
    tail: Option<usize>,
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    let mut path = format!("/v1/logs?project={}&follow={}", args.project, args.follow);
    if let Some(s) = &args.service {
        path += &format!("&service={s}");
    }
    if let Some(n) = args.tail {
        path += &format!("&tail={n}");
    }
    let mut out = std::io::stdout();
    client
        .stream(&path, |chunk| {
            let _ = out.write_all(chunk);
            let _ = out.flush();
        })
        .await?;
    Ok(())
}
