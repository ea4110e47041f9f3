//! The agent's event loop and the effects of its actions: Docker containers, their plumbing,
//! the datapath and DNS. `mesh.rs` and `shared.rs` hold the loop's other duties.

mod mesh;
mod shared;
mod update;

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash as _, Hasher as _},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

use super::{
    assign_vips, cluster,
    placement::{self, Placement},
    plan::ProjectPlan,
    reconcile::{self, identity, Action, Identity, NodeContext, Share},
    ApiError, Command, Config, Reply, Target,
};
use crate::{
    api,
    state::{
        self,
        sync::{self as state_sync, Incoming, Snapshot},
        Batch, Change, NodeRecord, NodeReport, ReplicaReport, State, Value,
    },
    dns::{Records, Server as DnsServer, SharedRecords},
    gossip::{self, GossipConfig, GossipHandle},
    net::wireguard::{PeerConfig, PrivateKey, PublicKey, WireGuard, WireGuardConfig},
    docker::{ContainerInfo, Docker, RunState},
    net::{
        conntrack::Timeouts,
        plumb::{self, PlumbRequest},
        service::Frontend,
        Datapath, DatapathConfig,
    },
};

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The stored state cannot be read.
    #[error("opening the state: {0}")]
    State(#[from] state::StateError),
    /// The datapath cannot be loaded.
    #[error("loading the datapath: {0}")]
    Datapath(#[from] crate::net::ebpf::Error),
    /// The node's gateway address cannot be set up.
    #[error("setting up the container gateway: {0}")]
    Gateway(#[from] plumb::PlumbError),
    /// The DNS server cannot listen.
    #[error("starting the DNS server: {0}")]
    Dns(#[from] crate::dns::DnsError),
    /// The API socket cannot be bound.
    #[error("binding the API socket {path}: {source}")]
    Socket { path: String, #[source] source: std::io::Error },
}

/// Events the loop reacts to, besides API commands.
enum Event {
    /// Something happened to one of our containers (or Docker came back).
    Docker,
    /// The engine went away.
    DockerLost(String),
}

struct Agent {
    cfg: Config,
    /// The replicated state, and the projects it holds (rebuilt after every change).
    state: State,
    desired: BTreeMap<String, ProjectPlan>,
    /// What the sync server answers peers from, published after every change.
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Entries from peers, for the loop to merge (its sender): what the sync server is
    /// pushed, and what anti-entropy brings back.
    incoming: mpsc::Sender<Incoming>,
    /// The sync server and its key, once in a cluster.
    sync: Option<(crate::gossip::crypto::Key, tokio::task::JoinHandle<()>)>,
    /// The last placement, and what the other live nodes run.
    placement: Placement,
    remote: Vec<(String, ReplicaReport)>,
    /// The members of the last view in which this node saw a majority alive: a minority
    /// places by it, so it starts no replacement for nodes it merely cannot reach.
    quorum: BTreeSet<String>,
    /// The live members as last seen (this node's own view, not the quorum), and since when.
    view: (BTreeSet<String>, std::time::Instant),
    /// The live peers at the last tick (a new one gets an anti-entropy exchange at once).
    peers_seen: BTreeSet<String>,
    docker: Docker,
    dp: Datapath,
    /// The containers as last observed.
    observed: Vec<ContainerInfo>,
    /// Why replicas are not running (waiting on a dependency, errors).
    notes: BTreeMap<Identity, String>,
    /// Rolling updates and draining.
    updates: update::Updates,
    /// Containers adopted with a veth whose `eth0` MTU this agent has set
    /// (older agents left it at 1500, over the tunnel's).
    mtu_set: BTreeSet<String>,
    docker_ok: bool,
    /// The last Docker error reported, so an outage is logged once.
    docker_error: Option<String>,
    /// Cluster membership, once this node is in a cluster.
    gossip: Option<GossipHandle>,
    /// This node's WireGuard device, once in a cluster, and the peers set
    /// on it (node name → public key and range).
    wg: Option<WireGuard>,
    wg_peers: BTreeMap<String, (PublicKey, Ipv4Addr, u8)>,
    /// The names the DNS server answers, replaced after each pass.
    records: SharedRecords,
    _dns: DnsServer,
}

/// The network mask of the service a replica belongs to.
fn mask_of(masks: &BTreeMap<(String, String), u64>, id: &Identity) -> u64 {
    masks.get(&(id.project.clone(), id.service.clone())).copied().unwrap_or(0)
}

/// The name of a node's WireGuard device: unique on the machine (the
/// userspace device's control socket is named after it), stable per node.
pub fn wg_ifname(node: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut h);
    format!("fzw{:08x}", h.finish() as u32)
}

/// The host end of a container's veth: the prefix and a hash of its short id (the first 12
/// characters, as `fizz ps` shows it). Not its name: an update that starts the new replica
/// first renames the old one.
pub fn host_if(prefix: &str, container_id: &str) -> String {
    let short: String = container_id.chars().take(12).collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    short.hash(&mut h);
    let mut name = format!("{prefix}{:08x}", h.finish() as u32);
    name.truncate(15);
    name
}

/// Runs the agent until SIGINT/SIGTERM. The datapath stays pinned after it
/// exits; containers keep running.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let state = State::open(&cfg.state_dir)?;
    let desired = state.projects();
    let (snapshot, _) = watch::channel(Arc::new(Snapshot::of(state.map())));
    let (incoming, mut incoming_rx) = mpsc::channel::<Incoming>(64);
    let dp = Datapath::open(&cfg.pin_dir, DatapathConfig { vip_net: cfg.vip_range.net, vip_prefix: cfg.vip_range.len })?;
    plumb::ensure_gateway()?;
    let records = SharedRecords::new(Records::new());
    let dns = DnsServer::bind(cfg.dns_listen, records.clone(), cfg.dns_upstream.clone()).await?;

    // Docker may not be up yet: retry with backoff without blocking the API.
    let docker = connect_docker().await;
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(256);
    tokio::spawn(watch_docker(docker.clone(), cfg.node.clone(), ev_tx));

    let router = api::server::router(cmd_tx, docker.clone());
    let socket = cfg.socket.clone();
    let listener =
        api::server::bind(&socket).map_err(|source| StartError::Socket { path: socket.display().to_string(), source })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("fizz agent: API server stopped: {e}");
        }
    });

    let mut agent = Agent {
        cfg,
        state,
        desired,
        snapshot,
        incoming,
        sync: None,
        placement: Placement::default(),
        remote: Vec::new(),
        quorum: BTreeSet::new(),
        view: (BTreeSet::new(), std::time::Instant::now()),
        peers_seen: BTreeSet::new(),
        docker,
        dp,
        observed: Vec::new(),
        notes: BTreeMap::new(),
        updates: update::Updates::default(),
        mtu_set: BTreeSet::new(),
        docker_ok: true,
        docker_error: None,
        gossip: None,
        wg: None,
        wg_peers: BTreeMap::new(),
        records,
        _dns: dns,
    };
    match cluster::load_secret(&agent.cfg.state_dir) {
        Ok(Some(secret)) => {
            // A restarted member: rejoin through the peers it knew.
            match agent.start_gossip(&secret).await {
                Ok(()) => {
                    let seeds = cluster::load_seeds(&agent.cfg.state_dir);
                    if let Some(g) = &agent.gossip {
                        let _ = g.join(seeds).await;
                    }
                }
                Err(e) => eprintln!("fizz agent: gossip: {e}"),
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("fizz agent: {e}"),
    }
    agent.record_node();
    eprintln!("fizz agent: node {} ready (api {}, datapath {})", agent.cfg.node, agent.cfg.socket.display(), agent.cfg.pin_dir.display());
    let mut members_rx = agent.gossip.as_ref().map(|g| g.subscribe());

    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut gc = tokio::time::interval(Duration::from_secs(10));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    let mut dirty = true;
    // When a new view of the members will have settled (placement follows it then).
    let mut settle: Option<tokio::time::Instant> = None;
    loop {
        if dirty {
            agent.reconcile().await;
            dirty = false;
        }
        tokio::select! {
            Some(cmd) = cmd_rx.recv() => {
                dirty = agent.command(cmd).await;
                if members_rx.is_none() {
                    members_rx = agent.gossip.as_ref().map(|g| g.subscribe());
                }
            }
            Some(inc) = incoming_rx.recv() => {
                match agent.absorb(inc.batch) {
                    Ok(changed) => {
                        dirty |= changed;
                        let _ = inc.done.send(());
                    }
                    Err(e) => eprintln!("fizz agent: storing a peer's entries: {e}"),
                }
            }
            _ = async { tokio::time::sleep_until(settle.unwrap_or_else(tokio::time::Instant::now)).await }, if settle.is_some() => {
                settle = None;
                dirty = true;
            }
            // A drain ends, or a new replica of an update settles.
            _ = async { tokio::time::sleep_until(agent.updates.wake.unwrap_or_else(tokio::time::Instant::now)).await }, if agent.updates.wake.is_some() => {
                agent.updates.wake = None;
                dirty = true;
            }
            _ = members_changed(&mut members_rx) => {
                dirty = true;
                settle = Some(tokio::time::Instant::now() + shared::VIEW_SETTLE + Duration::from_millis(50));
                // Remembered at once: a node that crashes seconds after meeting its peers
                // still finds them when it restarts.
                agent.remember_peers();
                agent.anti_entropy();
            }
            Some(ev) = ev_rx.recv() => match ev {
                Event::Docker => { agent.docker_ok = true; dirty = true; }
                Event::DockerLost(why) => {
                    if agent.docker_ok {
                        eprintln!("fizz agent: lost the Docker engine: {why}; retrying");
                    }
                    agent.docker_ok = false;
                }
            },
            _ = tick.tick() => {
                dirty = true;
                agent.remember_peers();
                agent.sync_mesh();
                agent.anti_entropy();
            }
            _ = gc.tick() => agent.gc(),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&agent.cfg.socket);
    if let Some((_, server)) = agent.sync.take() {
        server.abort();
    }
    if let Some(g) = agent.gossip.take() {
        // A graceful leave: the others see this node go at once.
        let _ = tokio::time::timeout(Duration::from_secs(2), g.leave()).await;
    }
    // The userspace device does not end with the process on its own.
    if let Some(wg) = agent.wg.take() {
        if let Err(e) = wg.destroy() {
            eprintln!("fizz agent: removing the WireGuard device: {e}");
        }
    }
    eprintln!("fizz agent: stopping; containers and the datapath keep running");
    Ok(())
}

/// Resolves when the member list changes (never without a cluster).
async fn members_changed(rx: &mut Option<watch::Receiver<Vec<gossip::MemberView>>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn connect_docker() -> Docker {
    let mut delay = Duration::from_millis(200);
    loop {
        match Docker::connect().await {
            Ok(d) => return d,
            Err(e) => {
                eprintln!("fizz agent: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Forwards Docker events for our containers to the loop; reconnects with
/// backoff when the engine goes away (a restarted engine is re-adopted).
async fn watch_docker(docker: Docker, node: String, tx: mpsc::Sender<Event>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let mut events = Box::pin(docker.events(&node));
        let mut ok = false;
        if docker.ping().await {
            ok = true;
            let _ = tx.send(Event::Docker).await;
        }
        while let Some(ev) = events.next().await {
            match ev {
                Ok(_) => {
                    delay = Duration::from_millis(200);
                    if tx.send(Event::Docker).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Event::DockerLost(e.to_string())).await;
                    break;
                }
            }
        }
        if !ok {
            let _ = tx.send(Event::DockerLost("the engine does not answer".into())).await;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

impl Agent {
    fn ctx(&self) -> NodeContext<'_> {
        NodeContext { node: &self.cfg.node, range: self.cfg.range, dns: plumb::GATEWAY, name_suffix: &self.cfg.name_suffix }
    }

    /// Handles one API command; returns whether state changed.
    async fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Up { project, reply } => {
                let result = self.up(*project);
                let changed = result.as_ref().is_ok_and(|(resp, _)| resp.updated);
                self.answer_write(result, reply, changed)
            }
            Command::Down { project, volumes, reply } => {
                let result = self.down(&project, volumes).await.map(|batch| ((), batch));
                self.answer_write(result, reply, true);
                // Even a failed `down` may have removed containers here.
                true
            }
            Command::Scale { project, service, replicas, reply } => {
                let result = self.scale(&project, &service, replicas).map(|batch| ((), batch));
                self.answer_write(result, reply, true)
            }
            Command::Ps { project, reply } => {
                let _ = reply.send(Ok(self.ps(project.as_deref())));
                false
            }
            Command::Find { target, reply } => {
                let _ = reply.send(self.find(&target));
                false
            }
            Command::ClusterInit { reply } => {
                let _ = reply.send(self.cluster_init().await);
                false
            }
            Command::ClusterJoin { secret, seeds, reply } => {
                let _ = reply.send(self.cluster_join(secret, seeds).await);
                false
            }
            Command::ClusterAbort { reply } => {
                if let Some(g) = self.gossip.take() {
                    g.abort();
                }
                if let Some((_, server)) = self.sync.take() {
                    server.abort();
                }
                cluster::remove_secret(&self.cfg.state_dir);
                let _ = reply.send(Ok(()));
                false
            }
            Command::Nodes { reply } => {
                let _ = reply.send(Ok(self.nodes()));
                false
            }
            Command::JoinToken { rotate, reply } => {
                let result = self.join_token(rotate);
                self.answer_write(result, reply, false)
            }
            Command::NodeRm { node, reply } => {
                let result = self.node_rm(&node).map(|batch| ((), batch));
                self.answer_write(result, reply, true)
            }
            Command::RotateKey { reply } => {
                let _ = reply.send(self.rotate_key().await);
                false
            }
            Command::Label { req, reply } => {
                let result = self.label(req);
                self.answer_write(result, reply, true)
            }
        }
    }

    /// One pass: observe, plan, act, then bring the datapath in line.
    async fn reconcile(&mut self) {
        let containers = match self.docker.list_owned(&self.cfg.node).await {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                if self.docker_error.as_deref() != Some(msg.as_str()) {
                    eprintln!("fizz agent: {msg} (retrying)");
                    self.docker_error = Some(msg);
                }
                self.docker_ok = false;
                return;
            }
        };
        if self.docker_error.take().is_some() {
            eprintln!("fizz agent: the Docker engine is back; adopting what runs");
        }
        self.docker_ok = true;
        let placed = self.place();
        let windows = self.survey(&containers);
        let draining = self.updates.drained(&containers);
        let share = Share { placed: &self.placement.assigned, remote: &self.remote, hold: !placed, updates: &windows, draining: &draining };
        let plan = reconcile::plan(&self.ctx(), &self.desired, &containers, share);
        self.notes.clear();
        for (id, why) in plan.waiting.iter().chain(&plan.errors) {
            self.notes.insert(id.clone(), why.clone());
        }
        let acted = !plan.actions.is_empty();
        // Network masks follow the desired state: computed once per pass.
        let (masks, _) = reconcile::network_masks(&self.desired);
        for action in plan.actions {
            match action {
                Action::Drain { id, name } => {
                    if !self.updates.is_draining(&id) {
                        eprintln!("fizz agent: draining {name}");
                        self.updates.drain(&id);
                        self.updates.wake = Some(tokio::time::Instant::now() + update::DRAIN + Duration::from_millis(20));
                    }
                }
                Action::Remove { id, name, reason } => {
                    eprintln!("fizz agent: removing {name} ({reason:?})");
                    let _ = self.dp_remove_container(&id, &containers);
                    if let Err(e) = self.docker.remove(&id, None).await {
                        eprintln!("fizz agent: {e}");
                    }
                    self.updates.removed(&id);
                }
                Action::Rename { id, name, to } => {
                    eprintln!("fizz agent: renaming {name} to {to} (its replacement starts first)");
                    if let Err(e) = self.docker.rename(&id, &to).await {
                        eprintln!("fizz agent: {name}: {e}");
                    }
                }
                Action::Create { id, addr, spec } => {
                    eprintln!("fizz agent: creating {} ({addr})", spec.name);
                    if let Err(e) = self.create(&spec, addr, mask_of(&masks, &id)).await {
                        eprintln!("fizz agent: {e}");
                        self.notes.insert(id, e);
                    }
                }
            }
        }
        let containers = if acted {
            self.docker.list_owned(&self.cfg.node).await.unwrap_or(containers)
        } else {
            containers
        };
        self.adopt(&containers, &masks);
        // What drains takes no new flows, and its name no longer resolves to it.
        let serving: Vec<ContainerInfo> = containers.iter().filter(|c| !self.updates.is_draining(&c.id)).cloned().collect();
        self.sync_datapath(&containers, &serving, &masks, placed);
        let (services, clients) = reconcile::dns_entries(&self.desired, &serving, &self.remote);
        self.records.replace(Records::build(services, clients));
        self.report(&containers);
        self.observed = containers;
    }

    async fn create(&mut self, spec: &crate::docker::ContainerSpec, addr: Ipv4Addr, mask: u64) -> Result<(), String> {
        self.docker.ensure_image(&spec.image).await.map_err(|e| e.to_string())?;
        let id = self.docker.create(spec).await.map_err(|e| e.to_string())?;
        self.docker.start(&id).await.map_err(|e| e.to_string())?;
        let info = self.docker.inspect(&id).await.map_err(|e| e.to_string())?;
        match info {
            Some(ContainerInfo { state: RunState::Running, pid: Some(pid), .. }) => self.wire(&id, &spec.name, pid, addr, mask),
            // It exited at once (a one-shot task, or a crash): nothing to plumb.
            _ => Ok(()),
        }
    }

    /// Plumbs a running container and hands it to the datapath.
    fn wire(&mut self, id: &str, name: &str, pid: u32, addr: Ipv4Addr, net_mask: u64) -> Result<(), String> {
        let req = PlumbRequest {
            pid,
            host_if: host_if(&self.cfg.veth_prefix, id),
            addr,
            mac: plumb::container_mac(addr),
            mtu: self.cfg.mtu,
        };
        let wired = plumb::plumb(&req).map_err(|e| format!("plumbing {name}: {e}"))?;
        self.dp.attach(&wired.host_if).map_err(|e| format!("attaching to {}: {e}", wired.host_if))?;
        let netns_cookie = container_netns_cookie(name, pid);
        let ep = fizz_common::Endpoint { ifindex: wired.host_ifindex, mac: req.mac, node_mac: wired.node_mac, net_mask, netns_cookie };
        self.dp.set_endpoint(addr, ep).map_err(|e| e.to_string())
    }

    fn dp_remove_container(&mut self, id: &str, containers: &[ContainerInfo]) -> Result<(), String> {
        self.mtu_set.remove(id);
        if let Some((_, Some(addr))) = containers.iter().find(|c| c.id == id).and_then(identity) {
            self.dp.remove_endpoint(addr).map_err(|e| e.to_string())?;
        }
        plumb::unplumb(&host_if(&self.cfg.veth_prefix, id)).map_err(|e| e.to_string())
    }

    /// Running containers whose veth is gone (Docker restarted them, so they
    /// have a new namespace, or the agent found them after a crash) are
    /// plumbed again; those with a veth are handed to the datapath as is.
    fn adopt(&mut self, containers: &[ContainerInfo], masks: &BTreeMap<(String, String), u64>) {
        for c in containers {
            let (Some((id, Some(addr))), RunState::Running, Some(pid)) = (identity(c), c.state, c.pid) else { continue };
            let mask = mask_of(masks, &id);
            let name = host_if(&self.cfg.veth_prefix, &c.id);
            match plumb::host_link(&name) {
                Ok(Some((ifindex, node_mac))) => {
                    let _ = self.dp.attach(&name);
                    if !self.mtu_set.contains(&c.id) {
                        match plumb::set_container_mtu(pid, self.cfg.mtu) {
                            Ok(()) => {
                                self.mtu_set.insert(c.id.clone());
                            }
                            Err(e) => eprintln!("fizz agent: setting the MTU of {}: {e}", c.name),
                        }
                    }
                    // The namespace is the one the endpoint was declared
                    // with while its veth lives: no need to enter it again.
                    let netns_cookie = match self.dp.endpoint(addr) {
                        Ok(Some(ep)) if ep.ifindex == ifindex && ep.netns_cookie != 0 => ep.netns_cookie,
                        _ => container_netns_cookie(&c.name, pid),
                    };
                    let ep = fizz_common::Endpoint { ifindex, mac: plumb::container_mac(addr), node_mac, net_mask: mask, netns_cookie };
                    let _ = self.dp.set_endpoint(addr, ep);
                }
                Ok(None) => {
                    if let Err(e) = self.wire(&c.id, &c.name, pid, addr, mask) {
                        eprintln!("fizz agent: {e}");
                    }
                }
                Err(e) => eprintln!("fizz agent: {e}"),
            }
        }
    }

    /// Writes the VIP table (backed by the containers that serve) and the
    /// networks of the other nodes' containers, and removes endpoints of
    /// containers that are gone. While placement is unknown (`placed`
    /// false: a restarted agent that has not rejoined) the other nodes'
    /// reports are not known either, and the networks the datapath holds
    /// (pinned, from before the restart) are kept.
    fn sync_datapath(
        &mut self,
        containers: &[ContainerInfo],
        serving: &[ContainerInfo],
        masks: &BTreeMap<(String, String), u64>,
        placed: bool,
    ) {
        if placed {
            if let Err(e) = self.dp.set_remote_endpoints(&reconcile::remote_masks(&self.remote, masks)) {
                eprintln!("fizz agent: the networks of other nodes' containers: {e}");
            }
        }
        let table = reconcile::vip_table(&self.desired, serving, &self.remote);
        let wanted: BTreeSet<Frontend> = table.iter().map(|(s, _)| s.frontend).collect();
        for (spec, mask) in &table {
            if let Err(e) = self.dp.set_service_in(spec, *mask) {
                eprintln!("fizz agent: service {}: {e}", spec.frontend);
            }
        }
        for spec in self.dp.services() {
            if !wanted.contains(&spec.frontend) {
                if let Err(e) = self.dp.remove_service(&spec.frontend) {
                    eprintln!("fizz agent: service {}: {e}", spec.frontend);
                }
            }
        }
        let live: BTreeSet<Ipv4Addr> = containers
            .iter()
            .filter(|c| c.state == RunState::Running)
            .filter_map(|c| identity(c).and_then(|(_, a)| a))
            .collect();
        if let Ok(eps) = self.dp.maps().endpoints.entries() {
            for (k, _) in eps {
                let a = Ipv4Addr::from(u32::from_be(k.addr_be));
                if self.cfg.range.contains(a) && !live.contains(&a) {
                    let _ = self.dp.remove_endpoint(a);
                }
            }
        }
    }

    fn gc(&mut self) {
        if let Err(e) = self.dp.gc_links() {
            eprintln!("fizz agent: {e}");
        }
        if let Err(e) = self.dp.gc_conntrack(&Timeouts::default()) {
            eprintln!("fizz agent: {e}");
        }
    }
}

/// The cookie of a container's network namespace, for connect-time
/// balancing; 0 (balanced per packet at TC instead) if it cannot be read.
fn container_netns_cookie(name: &str, pid: u32) -> u64 {
    match crate::net::netns::cookie(&format!("/proc/{pid}/ns/net")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fizz agent: {name}: no connect-time balancing: {e}");
            0
        }
    }
}
