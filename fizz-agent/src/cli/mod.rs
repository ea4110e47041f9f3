//! The `fizz` command line: one file per verb, each a thin layer over the
//! library. Verbs other than `agent` and `net inspect` talk to the agent
//! through its API socket.

mod agent;
mod compose_args;
mod config;
mod dev;
mod down;
mod exec;
mod init;
mod join;
mod logs;
mod node;
mod nodes;
pub mod net_inspect;
pub mod ps;
mod scale;
pub mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::{client::Client, DEFAULT_SOCKET};

/// Fizz: Docker Compose across a cluster of Docker hosts, networked in eBPF.
#[derive(Debug, Parser)]
#[command(name = "fizz", version, about)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "FIZZ_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the per-host agent in the foreground.
    Agent(agent::Args),
    /// Start a new cluster on this node; prints the join token.
    Init,
    /// Join this node to a cluster.
    Join(join::Args),
    /// Print the cluster's join token, or make a new one with --rotate.
    JoinToken(init::TokenArgs),
    /// List the cluster's nodes.
    Nodes(nodes::Args),
    /// Change a node of the cluster.
    Node {
        #[command(subcommand)]
        command: node::Args,
    },
    /// Deploy a Compose project (or update it) and show progress.
    Up(up::Args),
    /// Print the normalized Compose project.
    Config(config::Args),
    /// List replicas: service, node, state, health, address, VIP.
    Ps(ps::Args),
    /// Remove a project: containers, VIPs, names, and volumes if asked.
    Down(down::Args),
    /// Set the number of replicas of services.
    Scale(scale::Args),
    /// Show a project's output.
    Logs(logs::Args),
    /// Run a command in a replica.
    Exec(exec::Args),
    /// A local cluster on this machine (network namespaces), to try Fizz.
    Dev {
        #[command(subcommand)]
        command: dev::Args,
    },
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

/// An error and its causes on one line, each cause once: a message that
/// already quotes its cause is not followed by it again.
pub fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

/// Parses the command line and runs it; returns the process exit code.
pub fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let client = Client::new(&cli.socket);
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    match cli.command {
        Command::Agent(args) => agent::run(args, cli.socket).map(|()| 0),
        Command::Net { command: NetCommand::Inspect(args) } => net_inspect::run(args).map(|()| 0),
        Command::Dev { command } => dev::run(command).map(|()| 0),
        Command::Init => rt()?.block_on(init::run(&client)).map(|()| 0),
        Command::Join(args) => rt()?.block_on(join::run(args, &client)).map(|()| 0),
        Command::JoinToken(args) => rt()?.block_on(init::token(args, &client)).map(|()| 0),
        Command::Nodes(args) => rt()?.block_on(nodes::run(args, &client)).map(|()| 0),
        Command::Node { command } => rt()?.block_on(node::run(command, &client)).map(|()| 0),
        Command::Up(args) => rt()?.block_on(up::run(args, &client)).map(|()| 0),
        Command::Config(args) => config::run(args).map(|()| 0),
        Command::Ps(args) => rt()?.block_on(ps::run(args, &client)).map(|()| 0),
        Command::Down(args) => rt()?.block_on(down::run(args, &client)).map(|()| 0),
        Command::Scale(args) => rt()?.block_on(scale::run(args, &client)).map(|()| 0),
        Command::Logs(args) => rt()?.block_on(logs::run(args, &client)).map(|()| 0),
        Command::Exec(args) => rt()?.block_on(exec::run(args, &client)),
    }
}
