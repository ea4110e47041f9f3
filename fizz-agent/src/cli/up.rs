//! `fizz up`: deploys a Compose project and shows progress until every
//! replica runs (and, with `--wait`, is healthy).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use hyper::Method;

use super::compose_args::ComposeArgs;
use crate::{
    agent::translate,
    api::{client::Client, PsResponse, Replica, UpRequest, UpResponse},
    docker::{Health, RunState},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    compose: ComposeArgs,
    /// Return once the agent has accepted the project, without waiting.
    #[arg(short, long)]
    detach: bool,
    /// Also wait until replicas with a healthcheck are healthy.
    #[arg(long)]
    wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
}

/// One word for where a replica is.
pub fn status(r: &Replica) -> String {
    let state = match r.state {
        None => return r.note.clone().unwrap_or_else(|| "pending".into()),
        Some(RunState::Running) => "running",
        Some(RunState::Created) => "created",
        Some(RunState::Restarting) => "restarting",
        Some(RunState::Exited) => "exited",
        Some(RunState::Paused) => "paused",
        Some(RunState::Dead) => "dead",
        Some(RunState::Unknown) => "unknown",
    };
    match r.health {
        Some(Health::Healthy) => format!("{state} (healthy)"),
        Some(Health::Starting) => format!("{state} (health: starting)"),
        Some(Health::Unhealthy) => format!("{state} (unhealthy)"),
        None => state.to_string(),
    }
}

fn done(r: &Replica, wait_healthy: bool) -> bool {
    match r.state {
        Some(RunState::Running) => !wait_healthy || r.health.is_none() || r.health == Some(Health::Healthy),
        Some(RunState::Exited) => true,
        _ => false,
    }
}

pub async fn run(args: Args, client: &Client) -> Result<()> {
    let project = args.compose.load()?;
    let (plan, warnings) = translate::project_plan(&project)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let name = plan.name.clone();
    let started = Instant::now();
    let up: UpResponse = client.call(Method::POST, "/v1/up", Some(&UpRequest { project: plan })).await?;
    for (svc, vip) in &up.services {
        let vip = vip.map(|v| v.to_string()).unwrap_or_default();
        let mark = if up.changed.contains(svc) { " (updated)" } else { "" };
        println!("service {name}/{svc}: VIP {vip}{mark}");
    }
    if args.detach {
        return Ok(());
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let ps: PsResponse = client.call::<(), _>(Method::GET, &format!("/v1/ps?project={name}"), None).await?;
        for r in &ps.replicas {
            let s = status(r);
            if last.get(&r.name) != Some(&s) {
                println!("  {:<32} {s}", r.name);
                last.insert(r.name.clone(), s);
            }
        }
        if !ps.replicas.is_empty() && ps.replicas.iter().all(|r| done(r, args.wait)) {
            let failed: Vec<&Replica> = ps.replicas.iter().filter(|r| r.state == Some(RunState::Exited)).collect();
            println!("project {name}: {} replicas up in {:.1}s", ps.replicas.len() - failed.len(), started.elapsed().as_secs_f64());
            return Ok(());
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = ps.replicas.iter().filter(|r| !done(r, args.wait)).map(|r| format!("{} ({})", r.name, status(r))).collect();
            bail!("not ready after {}s: {} (the agent keeps trying; see `fizz ps`)", args.timeout, stuck.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
