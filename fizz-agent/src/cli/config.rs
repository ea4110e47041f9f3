//! `fizz config`: the normalized project, as `docker compose config` prints it.

use anyhow::Result;

use super::compose_args::ComposeArgs;
use crate::compose;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    compose: ComposeArgs,
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let project = args.compose.load()?;
    if args.json {
        println!("{}", compose::to_json(&project));
    } else {
        print!("{}", compose::to_yaml(&project));
    }
    Ok(())
}
