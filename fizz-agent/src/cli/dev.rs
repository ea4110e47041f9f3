//! `fizz dev up|down`: a local cluster of network namespaces on this machine.

use anyhow::Result;

use crate::dev::{self, Layout};

#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// Create N nodes (network namespaces on a bridge), each with an agent.
    Up {
        #[arg(long, default_value_t = 1)]
        nodes: u32,
    },
    /// Remove the local cluster and everything it ran.
    Down,
}

pub fn run(args: Args) -> Result<()> {
    let layout = Layout::default();
    match args {
        Args::Up { nodes } => {
            let fizz = std::env::current_exe()?;
            let nodes = dev::up(&layout, nodes, &fizz)?;
            dev::form_cluster(&nodes)?;
            for n in &nodes {
                println!("node {}: namespace {}, LAN {}, containers {}, api {}", n.name, n.netns, n.lan_addr, n.range, n.socket.display());
            }
            println!("\nuse it with: export FIZZ_SOCKET={}", nodes[0].socket.display());
        }
        Args::Down => {
            dev::down(&layout)?;
            println!("local cluster removed");
        }
    }
    Ok(())
}
