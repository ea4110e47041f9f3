//! `fizz exec`: runs a command in a replica and prints its output.

use anyhow::Result;
use hyper::Method;

use crate::api::{client::Client, ExecRequest, ExecResponse};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long)]
    project: String,
    /// Which replica of the service (default: one that runs on this node).
    #[arg(long)]
    index: Option<u32>,
    service: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true)]
    cmd: Vec<String>,
}

/// Returns the command's exit code.
pub async fn run(args: Args, client: &Client) -> Result<i32> {
    let req = ExecRequest { project: args.project, service: args.service, replica: args.index, cmd: args.cmd };
    let resp: ExecResponse = client.call(Method::POST, "/v1/exec", Some(&req)).await?;
    print!("{}", resp.output);
    Ok(resp.exit_code as i32)
}
