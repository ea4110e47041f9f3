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

/// Node 1 starts the cluster (unless it is in one) and the others join it.
fn form_cluster(nodes: &[dev::DevNode]) -> Result<()> {
    use hyper::Method;

    use crate::api::{client::Client, InitResponse, JoinRequest, NodesResponse};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let first = Client::new(&nodes[0].socket);
        let status: NodesResponse = first.call::<(), _>(Method::GET, "/v1/nodes", None).await?;
        let token = if status.clustered {
            let secret = crate::agent::cluster::load_secret(&Layout::default().state_dir.join("node1"))?
                .ok_or_else(|| anyhow::anyhow!("node 1 is clustered but its secret is missing"))?;
            crate::agent::cluster::token(&secret)
        } else {
            let r: InitResponse = first.call::<(), _>(Method::POST, "/v1/cluster/init", None).await?;
            r.token
        };
        let seed = std::net::SocketAddr::from((nodes[0].lan_addr, crate::gossip::DEFAULT_PORT));
        for n in &nodes[1..] {
            let c = Client::new(&n.socket);
            let s: NodesResponse = c.call::<(), _>(Method::GET, "/v1/nodes", None).await?;
            if !s.clustered {
                c.call::<_, ()>(Method::POST, "/v1/cluster/join", Some(&JoinRequest { token: token.clone(), seeds: vec![seed] })).await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

pub fn run(args: Args) -> Result<()> {
    let layout = Layout::default();
    match args {
        Args::Up { nodes } => {
            let fizz = std::env::current_exe()?;
            let nodes = dev::up(&layout, nodes, &fizz)?;
            form_cluster(&nodes)?;
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
