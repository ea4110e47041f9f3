//! `fizz up`: deploys a Compose project and shows progress until every
//! replica runs (and, with `--wait`, is healthy), and every changed service's rolling update
//! is done. An update that pauses or rolls back fails the command, saying why.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use hyper::Method;

use super::compose_args::ComposeArgs;
use crate::{
    agent::translate,
    api::{client::Client, PsResponse, Replica, UpRequest, UpResponse, UpdatePhase, UpdateStatus},
    cli::ps::update_line,
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
    // Each replica's last status, by name and node (during an update two containers of one
    // replica may run: the new one is shown once it differs from both).
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut shown: BTreeSet<String> = BTreeSet::new();
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let ps: PsResponse = client.call::<(), _>(Method::GET, &format!("/v1/ps?project={name}"), None).await?;
        for r in &ps.replicas {
            let s = status(r);
            let line = format!("  {:<32} {s}", r.name);
            if shown.insert(format!("{line} {} {:?}", r.node, r.container_id)) && last.get(&r.name) != Some(&line) {
                println!("{line}");
                last.insert(r.name.clone(), line);
            }
        }
        for u in &ps.updates {
            let line = update_line(u);
            if last.get(&format!("update {}", u.service)) != Some(&line) {
                println!("  {line}");
                last.insert(format!("update {}", u.service), line);
            }
        }
        // A rollback of an earlier update of a service this `up` did not change is old news.
        let failed = |u: &&UpdateStatus| match u.phase {
            UpdatePhase::Paused => true,
            UpdatePhase::RolledBack => up.changed.contains(&u.service),
            _ => false,
        };
        if let Some(u) = ps.updates.iter().find(failed) {
            bail!("the update of {}/{} {}: {}", u.project, u.service, u.phase, u.why.as_deref().unwrap_or("no reason recorded"));
        }
        let updating = ps.updates.iter().any(|u| matches!(u.phase, UpdatePhase::Updating | UpdatePhase::RollingBack));
        if !updating && !ps.replicas.is_empty() && ps.replicas.iter().all(|r| done(r, args.wait)) {
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
