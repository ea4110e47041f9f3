//! The `fizz` command line: one file per verb, each a thin layer over the
//! library.

mod agent;
pub mod net_inspect;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Fizz: Docker Compose across a cluster of Docker hosts, networked in eBPF.
#[derive(Debug, Parser)]
#[command(name = "fizz", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the per-host agent in the foreground.
    Agent(agent::Args),
    /// Look at the node's datapath.
    Net {
        #[command(subcommand)]
        command: NetCommand,
    },
}

#[derive(Debug, Subcommand)]
enum NetCommand {
    /// Show services → VIP → backends, conntrack, counters and drops.
    Inspect(net_inspect::Args),
}

/// Options every datapath command shares.
#[derive(Debug, clap::Args)]
pub struct PinDir {
    /// The node's directory on bpffs where programs, maps and links are pinned.
    #[arg(long, env = "FIZZ_PIN_DIR", default_value = "/sys/fs/bpf/fizz")]
    pub pin_dir: PathBuf,
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Net { command: NetCommand::Inspect(args) } => net_inspect::run(args),
    }
}
