//! The agent's event loop and the effects of its actions.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash as _, Hasher as _},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::{
    assign_vips, cluster,
    plan::ProjectPlan,
    reconcile::{self, identity, Action, Identity, NodeContext},
    store::Store,
    ApiError, Command, Config, Target,
};
use crate::{
    api,
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
    /// The stored desired state cannot be read.
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
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
    store: Store,
    desired: BTreeMap<String, ProjectPlan>,
    docker: Docker,
    dp: Datapath,
    /// The containers as last observed.
    observed: Vec<ContainerInfo>,
    /// Why replicas are not running (waiting on a dependency, errors).
    notes: BTreeMap<Identity, String>,
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

/// The host end of a container's veth: the prefix and a hash of its name.
pub fn host_if(prefix: &str, container: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    container.hash(&mut h);
    let mut name = format!("{prefix}{:08x}", h.finish() as u32);
    name.truncate(15);
    name
}

/// Runs the agent until SIGINT/SIGTERM. The datapath stays pinned after it
/// exits; containers keep running.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let store = Store::open(&cfg.state_dir)?;
    let desired = store.load()?;
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
        store,
        desired,
        docker,
        dp,
        observed: Vec::new(),
        notes: BTreeMap::new(),
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
    eprintln!("fizz agent: node {} ready (api {}, datapath {})", agent.cfg.node, agent.cfg.socket.display(), agent.cfg.pin_dir.display());

    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut gc = tokio::time::interval(Duration::from_secs(10));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    let mut dirty = true;
    loop {
        if dirty {
            agent.reconcile().await;
            dirty = false;
        }
        tokio::select! {
            Some(cmd) = cmd_rx.recv() => dirty = agent.command(cmd).await,
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
            }
            _ = gc.tick() => agent.gc(),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&agent.cfg.socket);
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
        NodeContext { node: &self.cfg.node, range: self.cfg.range, dns: plumb::GATEWAY }
    }

    /// Handles one API command; returns whether state changed.
    async fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Up { project, reply } => {
                let r = self.up(*project);
                let changed = matches!(&r, Ok(u) if u.updated);
                let _ = reply.send(r);
                changed
            }
            Command::Down { project, volumes, reply } => {
                let r = self.down(&project, volumes).await;
                let _ = reply.send(r);
                true
            }
            Command::Scale { project, service, replicas, reply } => {
                let r = self.scale(&project, &service, replicas);
                let ok = r.is_ok();
                let _ = reply.send(r);
                ok
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
                cluster::remove_secret(&self.cfg.state_dir);
                let _ = reply.send(Ok(()));
                false
            }
            Command::Nodes { reply } => {
                let _ = reply.send(Ok(self.nodes()));
                false
            }
        }
    }

    /// Creates this node's WireGuard device (key kept in the state
    /// directory) and attaches `from_wireguard` to it; returns its public key.
    fn start_wireguard(&mut self) -> Result<PublicKey, String> {
        let key_path = self.cfg.state_dir.join("wg.key");
        let key = match std::fs::read(&key_path) {
            Ok(b) if b.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&b);
                PrivateKey::from_bytes(k)
            }
            _ => {
                let k = PrivateKey::generate();
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(|e| format!("{}: {e}", key_path.display()))?;
                std::io::Write::write_all(&mut f, &k.to_bytes()).map_err(|e| format!("{}: {e}", key_path.display()))?;
                k
            }
        };
        let public = key.public_key();
        let cfg = WireGuardConfig {
            ifname: wg_ifname(&self.cfg.node),
            private_key: key,
            listen_port: self.cfg.wg_port,
            mtu: crate::net::wireguard::DEFAULT_MTU,
        };
        let wg = WireGuard::create("/proc/thread-self/ns/net", &cfg).map_err(|e| format!("WireGuard device {}: {e}", cfg.ifname))?;
        self.dp.attach_wireguard(wg.ifname()).map_err(|e| format!("attaching to {}: {e}", wg.ifname()))?;
        self.wg = Some(wg);
        Ok(public)
    }

    /// Brings the WireGuard peers and the datapath's remote ranges in line
    /// with the live members: one peer per other node, its range routed
    /// into the tunnel; members that are down lose both.
    fn sync_mesh(&mut self) {
        let (Some(g), Some(wg)) = (&self.gossip, &self.wg) else { return };
        let mut want: BTreeMap<String, (PublicKey, Ipv4Addr, u8, std::net::SocketAddr)> = BTreeMap::new();
        for m in g.members() {
            if m.name == self.cfg.node || m.state == gossip::MemberState::Down {
                continue;
            }
            let Ok(key) = m.wg_pubkey.parse::<PublicKey>() else { continue };
            let Some((net, len)) = m.range.split_once('/').and_then(|(n, l)| Some((n.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?))) else {
                continue;
            };
            want.insert(m.name.clone(), (key, net, len, std::net::SocketAddr::new(m.addr.ip(), self.cfg.wg_port)));
        }
        let ifindex = wg.ifindex();
        let gone: Vec<String> = self.wg_peers.keys().filter(|n| !want.contains_key(*n)).cloned().collect();
        for name in gone {
            if let Some((key, net, len)) = self.wg_peers.remove(&name) {
                let _ = wg.remove_peer(&key);
                let _ = self.dp.remove_remote(net, len);
            }
        }
        for (name, (key, net, len, endpoint)) in want {
            if self.wg_peers.get(&name) == Some(&(key, net, len)) {
                continue;
            }
            let peer = PeerConfig { public_key: key, endpoint, allowed: vec![(net, len)] };
            if let Err(e) = wg.set_peer(&peer) {
                eprintln!("fizz agent: WireGuard peer {name}: {e}");
                continue;
            }
            if let Err(e) = self.dp.set_remote(net, len, ifindex) {
                eprintln!("fizz agent: route to {name}: {e}");
                continue;
            }
            self.wg_peers.insert(name, (key, net, len));
        }
    }

    async fn start_gossip(&mut self, secret: &[u8; 32]) -> Result<(), String> {
        let ip = match self.cfg.advertise {
            Some(ip) => ip,
            None => plumb::primary_ipv4()
                .map_err(|e| e.to_string())?
                .ok_or("this host has no global IPv4 address to advertise; pass --advertise-addr")?,
        };
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let generation = gossip::next_generation(&self.cfg.state_dir.join("generation"), now_ms).map_err(|e| e.to_string())?;
        let cfg = GossipConfig {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.cfg.gossip_port)),
            advertise: Some(SocketAddr::from((ip, self.cfg.gossip_port))),
            name: self.cfg.node.clone(),
            range: format!("{}/{}", self.cfg.range.net, self.cfg.range.len),
            wg_pubkey: match &self.wg {
                Some(wg) => wg.public_key().to_string(),
                None => self.start_wireguard()?.to_string(),
            },
            generation,
            key: gossip::crypto::Key::derive(secret),
            tuning: gossip::Tuning::default(),
        };
        let handle = GossipHandle::start(cfg).await.map_err(|e| e.to_string())?;
        self.gossip = Some(handle);
        Ok(())
    }

    async fn cluster_init(&mut self) -> Result<api::InitResponse, ApiError> {
        if self.gossip.is_some() {
            return Err(ApiError::Invalid("this node is already in a cluster".into()));
        }
        let secret = cluster::new_secret().map_err(|e| ApiError::Failed(format!("generating the cluster secret: {e}")))?;
        self.start_gossip(&secret).await.map_err(ApiError::Failed)?;
        if let Err(e) = cluster::save_secret(&self.cfg.state_dir, &secret) {
            if let Some(g) = self.gossip.take() {
                g.abort();
            }
            return Err(ApiError::Failed(e.to_string()));
        }
        let addr = self.gossip.as_ref().map(|g| g.members()).and_then(|m| m.first().map(|v| v.addr));
        Ok(api::InitResponse { token: cluster::token(&secret), addr: addr.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.cfg.gossip_port))) })
    }

    async fn cluster_join(&mut self, secret: [u8; 32], seeds: Vec<SocketAddr>) -> Result<(), ApiError> {
        if self.gossip.is_some() {
            return Err(ApiError::Invalid("this node is already in a cluster".into()));
        }
        self.start_gossip(&secret).await.map_err(ApiError::Failed)?;
        cluster::save_secret(&self.cfg.state_dir, &secret).map_err(|e| ApiError::Failed(e.to_string()))?;
        if let Some(g) = &self.gossip {
            g.join(seeds).await.map_err(|e| ApiError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    fn nodes(&self) -> api::NodesResponse {
        let Some(g) = &self.gossip else {
            return api::NodesResponse { clustered: false, nodes: Vec::new() };
        };
        let handshakes: Vec<(String, Option<u64>)> = self
            .wg
            .as_ref()
            .and_then(|wg| wg.peers().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.public_key.to_string(), p.last_handshake.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs())))
            .collect();
        let nodes = g
            .members()
            .into_iter()
            .map(|m| api::NodeView {
                wg_handshake_secs: handshakes.iter().find(|(k, _)| *k == m.wg_pubkey).and_then(|(_, s)| *s),
                local: m.name == self.cfg.node,
                state: match m.state {
                    gossip::MemberState::Alive => "alive",
                    gossip::MemberState::Suspect => "suspect",
                    gossip::MemberState::Down => "down",
                }
                .to_string(),
                name: m.name,
                addr: m.addr,
                range: m.range,
                wg_pubkey: m.wg_pubkey,
                generation: m.generation,
            })
            .collect();
        api::NodesResponse { clustered: true, nodes }
    }

    /// Keeps the peers' addresses, so a restarted agent finds the cluster.
    fn remember_peers(&self) {
        if let Some(g) = &self.gossip {
            let peers: Vec<SocketAddr> = g
                .members()
                .into_iter()
                .filter(|m| m.name != self.cfg.node && m.state != gossip::MemberState::Down)
                .map(|m| m.addr)
                .collect();
            if !peers.is_empty() {
                cluster::save_seeds(&self.cfg.state_dir, &peers);
            }
        }
    }

    fn persist(&mut self, next: BTreeMap<String, ProjectPlan>) -> Result<(), ApiError> {
        self.store.save(&next).map_err(|e| ApiError::Failed(format!("saving the desired state: {e}")))?;
        self.desired = next;
        Ok(())
    }

    fn up(&mut self, mut project: ProjectPlan) -> Result<api::UpResponse, ApiError> {
        let old = self.desired.get(&project.name).cloned();
        assign_vips(self.cfg.vip_range, &mut project, old.as_ref(), &self.desired)
            .map_err(|e| ApiError::Invalid(format!("allocating service VIPs: {e}")))?;
        let changed: Vec<String> = project
            .services
            .iter()
            .filter(|(n, s)| old.as_ref().and_then(|o| o.services.get(*n)).map(|o| o.config_hash()) != Some(s.config_hash()))
            .map(|(n, _)| n.clone())
            .collect();
        let updated = old.as_ref() != Some(&project);
        let resp = api::UpResponse {
            project: project.name.clone(),
            services: project.services.iter().map(|(n, s)| (n.clone(), s.vip)).collect(),
            changed,
            updated,
        };
        if updated {
            let mut next = self.desired.clone();
            next.insert(project.name.clone(), project);
            self.persist(next)?;
        }
        Ok(resp)
    }

    async fn down(&mut self, project: &str, volumes: bool) -> Result<(), ApiError> {
        let Some(p) = self.desired.get(project).cloned() else {
            return Err(ApiError::NotFound(format!("project {project} is not deployed")));
        };
        let mut next = self.desired.clone();
        next.remove(project);
        self.persist(next)?;
        // Remove its containers now, so `down` returns when they are gone.
        self.reconcile().await;
        if volumes {
            for v in &p.volumes {
                if let Err(e) = self.docker.remove_volume(v).await {
                    return Err(ApiError::Failed(e.to_string()));
                }
            }
        }
        Ok(())
    }

    fn scale(&mut self, project: &str, service: &str, replicas: u32) -> Result<(), ApiError> {
        let mut next = self.desired.clone();
        let p = next.get_mut(project).ok_or_else(|| ApiError::NotFound(format!("project {project} is not deployed")))?;
        let s = p
            .services
            .get_mut(service)
            .ok_or_else(|| ApiError::NotFound(format!("project {project} has no service {service}")))?;
        s.replicas = replicas;
        self.persist(next)
    }

    fn ps(&self, project: Option<&str>) -> api::PsResponse {
        let mut replicas = Vec::new();
        let mut seen = BTreeSet::new();
        for c in &self.observed {
            let Some((id, addr)) = identity(c) else { continue };
            if project.is_some_and(|p| p != id.project) {
                continue;
            }
            let vip = self.desired.get(&id.project).and_then(|p| p.services.get(&id.service)).and_then(|s| s.vip);
            seen.insert(id.clone());
            replicas.push(api::Replica {
                name: c.name.clone(),
                node: self.cfg.node.clone(),
                state: Some(c.state),
                health: c.health,
                addr,
                vip,
                container_id: Some(c.id.chars().take(12).collect()),
                note: self.notes.get(&id).cloned(),
                project: id.project,
                service: id.service,
                replica: id.replica,
            });
        }
        for (pname, p) in &self.desired {
            if project.is_some_and(|want| want != pname) {
                continue;
            }
            for (sname, s) in &p.services {
                for r in 1..=s.replicas {
                    let id = Identity { project: pname.clone(), service: sname.clone(), replica: r };
                    if seen.contains(&id) {
                        continue;
                    }
                    replicas.push(api::Replica {
                        name: super::plan::container_name(pname, sname, r),
                        node: self.cfg.node.clone(),
                        state: None,
                        health: None,
                        addr: None,
                        vip: s.vip,
                        container_id: None,
                        note: self.notes.get(&id).cloned().or_else(|| Some("pending".into())),
                        project: pname.clone(),
                        service: sname.clone(),
                        replica: r,
                    });
                }
            }
        }
        replicas.sort_by(|a, b| (&a.project, &a.service, a.replica).cmp(&(&b.project, &b.service, b.replica)));
        api::PsResponse { replicas, projects: self.desired.keys().cloned().collect() }
    }

    fn find(&self, t: &Target) -> Result<Vec<ContainerInfo>, ApiError> {
        let p = self.desired.get(&t.project).ok_or_else(|| ApiError::NotFound(format!("project {} is not deployed", t.project)))?;
        if let Some(s) = &t.service {
            if !p.services.contains_key(s) {
                return Err(ApiError::NotFound(format!("project {} has no service {s}", t.project)));
            }
        }
        Ok(self
            .observed
            .iter()
            .filter(|c| {
                identity(c).is_some_and(|(id, _)| {
                    id.project == t.project
                        && t.service.as_ref().is_none_or(|s| *s == id.service)
                        && t.replica.is_none_or(|r| r == id.replica)
                })
            })
            .cloned()
            .collect())
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
        let plan = reconcile::plan(&self.ctx(), &self.desired, &containers);
        self.notes.clear();
        for (id, why) in plan.waiting.iter().chain(&plan.errors) {
            self.notes.insert(id.clone(), why.clone());
        }
        let acted = !plan.actions.is_empty();
        // Network masks follow the desired state: computed once per pass.
        let (masks, _) = reconcile::network_masks(&self.desired);
        for action in plan.actions {
            match action {
                Action::Remove { id, name, reason } => {
                    eprintln!("fizz agent: removing {name} ({reason:?})");
                    let _ = self.dp_remove_container(&name, &containers, &id);
                    if let Err(e) = self.docker.remove(&id, None).await {
                        eprintln!("fizz agent: {e}");
                    }
                }
                Action::Create { id, addr, spec } => {
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
        self.sync_datapath(&containers);
        let (services, clients) = reconcile::dns_entries(&self.desired, &containers);
        self.records.replace(Records::build(services, clients));
        self.observed = containers;
    }

    async fn create(&mut self, spec: &crate::docker::ContainerSpec, addr: Ipv4Addr, mask: u64) -> Result<(), String> {
        self.docker.ensure_image(&spec.image).await.map_err(|e| e.to_string())?;
        let id = self.docker.create(spec).await.map_err(|e| e.to_string())?;
        self.docker.start(&id).await.map_err(|e| e.to_string())?;
        let info = self.docker.inspect(&id).await.map_err(|e| e.to_string())?;
        match info {
            Some(ContainerInfo { state: RunState::Running, pid: Some(pid), .. }) => self.wire(&spec.name, pid, addr, mask),
            // It exited at once (a one-shot task, or a crash): nothing to plumb.
            _ => Ok(()),
        }
    }

    /// Plumbs a running container and hands it to the datapath.
    fn wire(&mut self, name: &str, pid: u32, addr: Ipv4Addr, net_mask: u64) -> Result<(), String> {
        let req = PlumbRequest {
            pid,
            host_if: host_if(&self.cfg.veth_prefix, name),
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

    fn dp_remove_container(&mut self, name: &str, containers: &[ContainerInfo], id: &str) -> Result<(), String> {
        if let Some((_, Some(addr))) = containers.iter().find(|c| c.id == id).and_then(identity) {
            self.dp.remove_endpoint(addr).map_err(|e| e.to_string())?;
        }
        plumb::unplumb(&host_if(&self.cfg.veth_prefix, name)).map_err(|e| e.to_string())
    }

    /// Running containers whose veth is gone (Docker restarted them, so they
    /// have a new namespace, or the agent found them after a crash) are
    /// plumbed again; those with a veth are handed to the datapath as is.
    fn adopt(&mut self, containers: &[ContainerInfo], masks: &BTreeMap<(String, String), u64>) {
        for c in containers {
            let (Some((id, Some(addr))), RunState::Running, Some(pid)) = (identity(c), c.state, c.pid) else { continue };
            let mask = mask_of(masks, &id);
            let name = host_if(&self.cfg.veth_prefix, &c.name);
            match plumb::host_link(&name) {
                Ok(Some((ifindex, node_mac))) => {
                    let _ = self.dp.attach(&name);
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
                    if let Err(e) = self.wire(&c.name, pid, addr, mask) {
                        eprintln!("fizz agent: {e}");
                    }
                }
                Err(e) => eprintln!("fizz agent: {e}"),
            }
        }
    }

    /// Writes the VIP table and removes endpoints of containers that are gone.
    fn sync_datapath(&mut self, containers: &[ContainerInfo]) {
        let table = reconcile::vip_table(&self.desired, containers);
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
