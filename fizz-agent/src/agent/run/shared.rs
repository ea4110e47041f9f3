//! The replicated state as the loop uses it: writing and merging, spreading writes and
//! anti-entropy, this node's record and report, placement, and the commands that change or
//! read the cluster's projects (`up`, `down`, `scale`, `ps`).

use super::*;

/// How long a view of the live members must hold still before placement follows it.
pub(super) const VIEW_SETTLE: Duration = Duration::from_secs(3);

impl Agent {
    /// Writes changes to the replicated state (durable here before it returns).
    pub(super) fn commit(&mut self, changes: Vec<Change>) -> Result<Batch, ApiError> {
        let batch = self.state.write(changes).map_err(|e| ApiError::Failed(format!("saving the state: {e}")))?;
        self.refresh();
        Ok(batch)
    }

    /// Takes a peer's entries; returns whether anything changed.
    pub(super) fn absorb(&mut self, batch: Batch) -> Result<bool, state::store::StoreError> {
        let taken = self.state.merge(batch)?;
        if taken.is_empty() {
            return Ok(false);
        }
        self.refresh();
        Ok(true)
    }

    /// Rebuilds what derives from the state after a change.
    pub(super) fn refresh(&mut self) {
        self.desired = self.state.projects();
        self.snapshot.send_replace(Arc::new(Snapshot::of(self.state.map())));
    }

    /// The gossip addresses of the live peers (the state sync server listens at the same
    /// port number, over TCP).
    pub(super) fn live_peers(&self) -> Vec<(String, SocketAddr)> {
        let Some(g) = &self.gossip else { return Vec::new() };
        g.members()
            .into_iter()
            .filter(|m| m.name != self.cfg.node && m.state != gossip::MemberState::Down)
            .map(|m| (m.name, m.addr))
            .collect()
    }

    /// Sends a batch to every live peer; the future ends when each has stored it or failed
    /// (anti-entropy repairs those that failed).
    pub(super) fn spread(&self, batch: Batch) -> impl std::future::Future<Output = ()> + Send + 'static {
        let key = self.sync.as_ref().map(|(k, _)| k.clone());
        let peers = self.live_peers();
        async move {
            let Some(key) = key else { return };
            let pushes = peers.into_iter().map(|(name, addr)| {
                let (key, batch) = (key.clone(), batch.clone());
                async move {
                    if let Err(e) = state_sync::push(addr, &key, batch).await {
                        eprintln!("fizz agent: telling {name}: {e}");
                    }
                }
            });
            futures_util::future::join_all(pushes).await;
        }
    }

    /// Answers a write once it is durable here and sent to the live peers.
    pub(super) fn reply_when_spread<T: Send + 'static>(&self, batch: Batch, reply: Reply<T>, value: T) {
        let spread = self.spread(batch);
        tokio::spawn(async move {
            spread.await;
            let _ = reply.send(Ok(value));
        });
    }

    /// Answers a write command: once the write is spread when it succeeded, at once with the
    /// error otherwise. Returns `changed` when it succeeded (whether a pass is due), else false.
    pub(super) fn answer_write<T: Send + 'static>(&self, result: Result<(T, Batch), ApiError>, reply: Reply<T>, changed: bool) -> bool {
        match result {
            Ok((value, batch)) => {
                self.reply_when_spread(batch, reply, value);
                changed
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                false
            }
        }
    }

    /// Compares state with one random live peer, and with every peer that just appeared.
    pub(super) fn anti_entropy(&mut self) {
        let Some((key, _)) = &self.sync else { return };
        let peers = self.live_peers();
        let names: BTreeSet<String> = peers.iter().map(|(n, _)| n.clone()).collect();
        let mut pick: Vec<SocketAddr> = peers.iter().filter(|(n, _)| !self.peers_seen.contains(n)).map(|(_, a)| *a).collect();
        if !peers.is_empty() {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let random = peers[nanos as usize % peers.len()].1;
            if !pick.contains(&random) {
                pick.push(random);
            }
        }
        self.peers_seen = names;
        let ours = self.snapshot.borrow().clone();
        for addr in pick {
            let (key, ours, incoming) = (key.clone(), ours.clone(), self.incoming.clone());
            tokio::spawn(async move {
                match state_sync::exchange(addr, &key, ours).await {
                    Ok(batch) if !batch.is_empty() => {
                        // Merged like a push; nobody waits for it to be stored.
                        let (done, _) = tokio::sync::oneshot::channel();
                        let _ = incoming.send(Incoming { batch, done }).await;
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("fizz agent: {e}"),
                }
            });
        }
    }

    /// Publishes what this node offers, when it changed.
    pub(super) fn record_node(&mut self) {
        let record = NodeRecord {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| self.cfg.node.clone()),
            cpus: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
            memory: mem_total().unwrap_or(0),
        };
        self.publish(state::node_key(&self.cfg.node), Value::Node(record));
    }

    /// Writes one of this node's own keys when its value changed, and tells the peers.
    fn publish(&mut self, key: String, value: Value) {
        if self.state.map().get(&key) == Some(&value) {
            return;
        }
        match self.commit(vec![(key, Some(value))]) {
            Ok(batch) => {
                tokio::spawn(self.spread(batch));
            }
            Err(e) => eprintln!("fizz agent: {e}"),
        }
    }

    /// The members placement counts: the last view of live members that held still for
    /// [`VIEW_SETTLE`] while this node saw in it a majority of the members it knows (the live
    /// ones and those with a record in the state). A minority keeps placing by the
    /// last such view, so it starts nothing for nodes it merely cannot reach; and since the
    /// two sides of a partition notice each other's members one by one, a view must settle
    /// before it counts. None when this node never had such a view since it started (a
    /// restarted node before it rejoined): it holds what it runs and starts nothing.
    /// `info` is the state's node records and labels; `self.view.0` is left holding the live
    /// members as seen now.
    fn placement_members(&mut self, info: &BTreeMap<String, (Option<NodeRecord>, BTreeMap<String, String>)>) -> Option<BTreeSet<String>> {
        let Some(g) = &self.gossip else { return Some([self.cfg.node.clone()].into()) };
        let view = g.members();
        let live: BTreeSet<String> =
            view.iter().filter(|m| m.state != gossip::MemberState::Down).map(|m| m.name.clone()).chain([self.cfg.node.clone()]).collect();
        // Live members, and every node with a record (those down count too, until `fizz node
        // rm` deletes their record).
        let known: BTreeSet<String> =
            live.iter().cloned().chain(info.iter().filter(|(_, (r, _))| r.is_some()).map(|(n, _)| n.clone())).collect();
        if live != self.view.0 {
            self.view = (live.clone(), std::time::Instant::now());
        }
        if self.view.1.elapsed() >= VIEW_SETTLE && live.len() * 2 > known.len() {
            self.quorum = live;
        }
        (!self.quorum.is_empty()).then(|| self.quorum.clone())
    }

    /// Where every replica of the cluster goes, computed from the same inputs on every node.
    /// Returns false when placement is unknown (no settled majority view yet): nothing is
    /// placed then, and this node must hold what it runs.
    pub(super) fn place(&mut self) -> bool {
        let info = self.state.nodes();
        let Some(members) = self.placement_members(&info) else {
            self.placement = Placement::default();
            self.remote = Vec::new();
            return false;
        };
        // A member whose record has not arrived yet is not placed on: every node must weigh
        // the same nodes the same way.
        let nodes: Vec<placement::NodeInfo> = members
            .iter()
            .filter(|name| info.get(*name).is_some_and(|(r, _)| r.is_some()))
            .map(|name| {
                let (record, labels) = info.get(name).cloned().unwrap_or_default();
                placement::NodeInfo {
                    name: name.clone(),
                    hostname: record.as_ref().map_or_else(|| name.clone(), |r| r.hostname.clone()),
                    role: "manager".into(),
                    labels,
                    cpus: record.as_ref().map_or(1.0, |r| r.cpus),
                    memory: record.as_ref().map_or(u64::MAX, |r| if r.memory == 0 { u64::MAX } else { r.memory }),
                }
            })
            .collect();
        let demands = demands(&self.desired);
        self.placement = placement::place(&nodes, &demands);
        // What the other members of the view that are live now run, as they report it.
        let live = &self.view.0;
        self.remote = self
            .state
            .reports()
            .into_iter()
            .filter(|(n, _)| *n != self.cfg.node && members.contains(n) && live.contains(n))
            .flat_map(|(n, r)| r.replicas.into_iter().map(move |rep| (n.clone(), rep)))
            .collect();
        true
    }

    /// Publishes what this node runs, when it changed.
    pub(super) fn report(&mut self, containers: &[ContainerInfo]) {
        let mut replicas: Vec<ReplicaReport> = containers
            .iter()
            .filter_map(|c| {
                let (id, addr) = identity(c)?;
                let svc = self.desired.get(&id.project)?.services.get(&id.service)?;
                Some(ReplicaReport {
                    ready: reconcile::ready(svc, c) && !self.updates.is_draining(&c.id),
                    failed: self.updates.failed(&c.id),
                    config_hash: c.labels.get(crate::docker::labels::CONFIG_HASH).cloned().unwrap_or_default(),
                    project: id.project,
                    service: id.service,
                    replica: id.replica,
                    addr,
                    state: c.state,
                    health: c.health,
                    exit_code: c.exit_code,
                })
            })
            .collect();
        replicas.sort_by(|a, b| (&a.project, &a.service, a.replica).cmp(&(&b.project, &b.service, b.replica)));
        self.publish(state::report_key(&self.cfg.node), Value::Report(NodeReport { replicas }));
    }

    pub(super) fn up(&mut self, mut project: ProjectPlan) -> Result<(api::UpResponse, Batch), ApiError> {
        let old = self.desired.get(&project.name).cloned();
        assign_vips(self.cfg.vip_range, &mut project, old.as_ref(), &self.desired)
            .map_err(|e| ApiError::Invalid(format!("allocating service VIPs: {e}")))?;
        let changed: Vec<String> = project
            .services
            .iter()
            .filter(|(n, s)| old.as_ref().and_then(|o| o.services.get(*n)).map(|o| o.config_hash()) != Some(s.config_hash()))
            .map(|(n, _)| n.clone())
            .collect();
        // The same definition again resumes a paused update.
        let resume = self.state.rollouts().iter().any(|((p, s), r)| {
            *p == project.name
                && matches!(r.phase, state::Phase::Paused(_))
                && project.services.get(s).is_some_and(|svc| svc.config_hash() == r.to)
        });
        let updated = old.as_ref() != Some(&project) || resume;
        let resp = api::UpResponse {
            project: project.name.clone(),
            services: project.services.iter().map(|(n, s)| (n.clone(), s.vip)).collect(),
            changed,
            updated,
        };
        let batch = if updated { self.commit(state::up_changes(self.state.map(), project))? } else { Vec::new() };
        Ok((resp, batch))
    }

    pub(super) async fn down(&mut self, project: &str, volumes: bool) -> Result<Batch, ApiError> {
        let Some(p) = self.desired.get(project).cloned() else {
            return Err(ApiError::NotFound(format!("project {project} is not deployed")));
        };
        let batch = self.commit(state::down_changes(self.state.map(), project))?;
        // Remove its containers here now, so `down` returns when they are gone.
        self.reconcile().await;
        if volumes {
            for v in &p.volumes {
                if let Err(e) = self.docker.remove_volume(v).await {
                    return Err(ApiError::Failed(e.to_string()));
                }
            }
        }
        Ok(batch)
    }

    pub(super) fn scale(&mut self, project: &str, service: &str, replicas: u32) -> Result<Batch, ApiError> {
        let p = self.desired.get(project).ok_or_else(|| ApiError::NotFound(format!("project {project} is not deployed")))?;
        let s = p.services.get(service).ok_or_else(|| ApiError::NotFound(format!("project {project} has no service {service}")))?;
        if s.placement.global {
            return Err(ApiError::Invalid(format!("service {service} is global: it runs one replica on every eligible node")));
        }
        self.commit(vec![(state::scale_key(project, service), Some(Value::Scale(replicas)))])
    }

    /// Every replica of the cluster: what each live node reports, and what is placed but
    /// not running yet (with why, when known).
    pub(super) fn ps(&self, project: Option<&str>) -> api::PsResponse {
        let mut replicas = Vec::new();
        let mut seen = BTreeSet::new();
        let vip_of = |p: &str, s: &str| self.desired.get(p).and_then(|p| p.services.get(s)).and_then(|s| s.vip);
        for c in &self.observed {
            let Some((id, addr)) = identity(c) else { continue };
            if project.is_some_and(|p| p != id.project) {
                continue;
            }
            seen.insert((self.cfg.node.clone(), id.clone()));
            replicas.push(api::Replica {
                name: crate::agent::plan::container_name(&id.project, &id.service, id.replica),
                node: self.cfg.node.clone(),
                state: Some(c.state),
                health: c.health,
                addr,
                vip: vip_of(&id.project, &id.service),
                container_id: Some(c.id.chars().take(12).collect()),
                note: self.notes.get(&id).cloned(),
                project: id.project,
                service: id.service,
                replica: id.replica,
            });
        }
        for (node, r) in &self.remote {
            if project.is_some_and(|p| p != r.project) {
                continue;
            }
            let id = Identity { project: r.project.clone(), service: r.service.clone(), replica: r.replica };
            seen.insert((node.clone(), id));
            replicas.push(api::Replica {
                name: crate::agent::plan::container_name(&r.project, &r.service, r.replica),
                node: node.clone(),
                state: Some(r.state),
                health: r.health,
                addr: r.addr,
                vip: vip_of(&r.project, &r.service),
                container_id: None,
                note: None,
                project: r.project.clone(),
                service: r.service.clone(),
                replica: r.replica,
            });
        }
        let pending = self.placement.assigned.iter().map(|(slot, n)| (slot, n.clone(), None)).chain(
            self.placement.unplaced.iter().map(|(slot, why)| (slot, String::new(), Some(why.clone()))),
        );
        for (slot, node, why) in pending {
            if project.is_some_and(|p| p != slot.project) {
                continue;
            }
            let id = Identity { project: slot.project.clone(), service: slot.service.clone(), replica: slot.replica };
            if seen.contains(&(node.clone(), id.clone())) {
                continue;
            }
            let note = why.or_else(|| (node == self.cfg.node).then(|| self.notes.get(&id).cloned()).flatten()).unwrap_or_else(|| "pending".into());
            replicas.push(api::Replica {
                name: crate::agent::plan::container_name(&slot.project, &slot.service, slot.replica),
                node,
                state: None,
                health: None,
                addr: None,
                vip: vip_of(&slot.project, &slot.service),
                container_id: None,
                note: Some(note),
                project: id.project,
                service: id.service,
                replica: id.replica,
            });
        }
        replicas.sort_by(|a, b| (&a.project, &a.service, a.replica, &a.node).cmp(&(&b.project, &b.service, b.replica, &b.node)));
        api::PsResponse { replicas, projects: self.desired.keys().cloned().collect(), updates: self.update_statuses(project) }
    }

    pub(super) fn find(&self, t: &Target) -> Result<Vec<ContainerInfo>, ApiError> {
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
}

/// What placement needs of every deployed service.
fn demands(projects: &BTreeMap<String, ProjectPlan>) -> Vec<placement::Demand> {
    let mut out = Vec::new();
    for (pname, p) in projects {
        for (sname, svc) in &p.services {
            let spec = &svc.placement;
            // Constraints were checked when the project was made; one that no longer parses
            // (written by a newer agent) matches no node rather than every node.
            let constraints = spec
                .constraints
                .iter()
                .map(|c| {
                    placement::Constraint::parse(c)
                        .unwrap_or(placement::Constraint::Name { op: placement::Op::Eq, value: String::new() })
                })
                .collect();
            out.push(placement::Demand {
                project: pname.clone(),
                service: sname.clone(),
                replicas: svc.replicas,
                global: spec.global,
                constraints,
                max_per_node: spec.max_per_node,
                cpus: spec.millicpus as f64 / 1000.0,
                memory: spec.memory,
            });
        }
    }
    out
}

/// The host's memory in bytes (`MemTotal` of /proc/meminfo).
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
