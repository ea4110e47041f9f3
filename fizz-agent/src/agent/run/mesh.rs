//! The agent's part in the cluster: its WireGuard device and the mesh of peers, gossip, and
//! what `fizz init`, `join`, `nodes` and `node label` do.

use super::*;

impl Agent {
    /// Creates this node's WireGuard device (key kept in the state
    /// directory) and attaches `from_wireguard` to it; returns its public key.
    pub(super) fn start_wireguard(&mut self) -> Result<PublicKey, String> {
        let key_path = self.cfg.state_dir.join("wg.key");
        let key = match std::fs::read(&key_path) {
            Ok(b) if b.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&b);
                PrivateKey::from_bytes(k)
            }
            _ => {
                let k = PrivateKey::generate();
                save_key(&key_path, &k)?;
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

    /// Gives this node a new WireGuard key: saved, set on the device, and announced by gossip
    /// (this node's next generation), so every peer replaces the old key; the peers are set
    /// again here at once.
    pub(super) async fn rotate_key(&mut self) -> Result<api::RotateKeyResponse, ApiError> {
        let (Some(g), Some(wg)) = (&self.gossip, &mut self.wg) else {
            return Err(ApiError::Invalid("this node is in no cluster: it has no WireGuard key".into()));
        };
        let key = PrivateKey::generate();
        let path = self.cfg.state_dir.join("wg.key");
        save_key(&path, &key).map_err(ApiError::Failed)?;
        wg.set_private_key(&key, self.cfg.wg_port).map_err(|e| ApiError::Failed(e.to_string()))?;
        let public = key.public_key();
        let range = format!("{}/{}", self.cfg.range.net, self.cfg.range.len);
        g.update_meta(range, public.to_string()).await.map_err(|e| ApiError::Failed(format!("announcing the new key: {e}")))?;
        // The device lost its peers with its key.
        self.wg_peers.clear();
        self.sync_mesh();
        eprintln!("fizz agent: new WireGuard key {public}");
        Ok(api::RotateKeyResponse { node: self.cfg.node.clone(), wg_pubkey: public.to_string() })
    }

    /// Brings the WireGuard peers and the datapath's remote ranges in line
    /// with the live members: one peer per other node, its range routed
    /// into the tunnel; members that are down lose both. Sizes the device's
    /// new sockets' buffers.
    pub(super) fn sync_mesh(&mut self) {
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
            match self.wg_peers.get(&name) {
                Some(had) if *had == (key, net, len) => continue,
                // A new key (the peer rotated it): the old one goes.
                Some((old, ..)) if *old != key => {
                    let _ = wg.remove_peer(old);
                }
                _ => {}
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
        // The device opens a socket per peer when the peer's first packet comes.
        wg.size_socket_buffers();
    }

    pub(super) async fn start_gossip(&mut self, secret: &[u8; 32]) -> Result<(), String> {
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
        // State sync listens on TCP at the gossip port's number, on every address.
        let port = handle.local_addr().port();
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .await
            .map_err(|e| format!("binding the state sync port tcp/{port}: {e}"))?;
        let key = gossip::crypto::Key::derive_stream(secret);
        let secrets = state_sync::Secrets { cluster: *secret };
        let server = tokio::spawn(state_sync::serve(listener, secrets, self.snapshot.subscribe(), self.incoming.clone()));
        self.sync = Some((key, server));
        self.gossip = Some(handle);
        Ok(())
    }

    pub(super) async fn cluster_init(&mut self) -> Result<api::InitResponse, ApiError> {
        if self.gossip.is_some() {
            return Err(ApiError::Invalid("this node is already in a cluster".into()));
        }
        let secret = cluster::new_secret().map_err(|e| ApiError::Failed(format!("generating the cluster secret: {e}")))?;
        let join = cluster::new_secret().map_err(|e| ApiError::Failed(format!("generating the join secret: {e}")))?;
        self.start_gossip(&secret).await.map_err(ApiError::Failed)?;
        let saved = cluster::save_secret(&self.cfg.state_dir, &secret)
            .map_err(|e| ApiError::Failed(e.to_string()))
            .and_then(|()| self.commit(vec![(state::JOIN_KEY.to_string(), Some(Value::Join(join)))]));
        if let Err(e) = saved {
            if let Some(g) = self.gossip.take() {
                g.abort();
            }
            cluster::remove_secret(&self.cfg.state_dir);
            return Err(e);
        }
        let addr = self.gossip.as_ref().map(|g| g.members()).and_then(|m| m.first().map(|v| v.addr));
        Ok(api::InitResponse { token: cluster::token(&join), addr: addr.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.cfg.gossip_port))) })
    }

    /// The join token, or a new one: written to the state, so every member answers only it.
    pub(super) fn join_token(&mut self, rotate: bool) -> Result<(api::JoinTokenResponse, Batch), ApiError> {
        if self.gossip.is_none() {
            return Err(ApiError::Invalid("this node is in no cluster (see `fizz init` and `fizz join`)".into()));
        }
        if rotate {
            let join = cluster::new_secret().map_err(|e| ApiError::Failed(format!("generating the join secret: {e}")))?;
            let batch = self.commit(vec![(state::JOIN_KEY.to_string(), Some(Value::Join(join)))])?;
            return Ok((api::JoinTokenResponse { token: cluster::token(&join) }, batch));
        }
        let join = match self.state.map().get(state::JOIN_KEY) {
            Some(Value::Join(j)) => *j,
            // A cluster made before join tokens had their own secret: its token is the
            // cluster secret.
            _ => cluster::load_secret(&self.cfg.state_dir)
                .map_err(|e| ApiError::Failed(e.to_string()))?
                .ok_or_else(|| ApiError::Failed("the cluster secret is missing".into()))?,
        };
        Ok((api::JoinTokenResponse { token: cluster::token(&join) }, Vec::new()))
    }

    pub(super) async fn cluster_join(&mut self, secret: [u8; 32], seeds: Vec<SocketAddr>) -> Result<(), ApiError> {
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

    pub(super) fn nodes(&self) -> api::NodesResponse {
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
        let labels = self.state.nodes();
        let nodes = g
            .members()
            .into_iter()
            // A node removed with `fizz node rm` (down, and no record) is not shown.
            .filter(|m| m.state != gossip::MemberState::Down || labels.get(&m.name).is_some_and(|(r, _)| r.is_some()))
            .map(|m| api::NodeView {
                wg_handshake_secs: handshakes.iter().find(|(k, _)| *k == m.wg_pubkey).and_then(|(_, s)| *s),
                labels: labels.get(&m.name).map(|(_, l)| l.clone()).unwrap_or_default(),
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

    /// Sets and removes labels of a node of the cluster.
    pub(super) fn label(&mut self, req: api::LabelRequest) -> Result<(BTreeMap<String, String>, Batch), ApiError> {
        let mut nodes = self.state.nodes();
        let known = req.node == self.cfg.node
            || nodes.contains_key(&req.node)
            || self.gossip.as_ref().is_some_and(|g| g.members().iter().any(|m| m.name == req.node));
        if !known {
            return Err(ApiError::NotFound(format!("no node named {} in this cluster (see `fizz nodes`)", req.node)));
        }
        for key in req.set.keys().chain(&req.remove) {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '=' || c.is_control()) {
                return Err(ApiError::Invalid(format!("label key {key:?}: must be non-empty, without spaces or `=`")));
            }
        }
        for (key, value) in &req.set {
            if value.chars().any(|c| c.is_control()) {
                return Err(ApiError::Invalid(format!("label {key}: the value has a control character")));
            }
        }
        let mut labels = nodes.remove(&req.node).map(|(_, l)| l).unwrap_or_default();
        for key in &req.remove {
            labels.remove(key);
        }
        labels.extend(req.set);
        let batch = self.commit(vec![(state::labels_key(&req.node), Some(Value::Labels(labels.clone())))])?;
        Ok((labels, batch))
    }

    /// Forgets a node that is gone for good: its record, labels and report are deleted, so it
    /// no longer counts among the members a majority is reckoned from, nor is placed on. A node
    /// that is alive is refused. If it ever starts again, it writes its record anew and counts
    /// again.
    pub(super) fn node_rm(&mut self, node: &str) -> Result<Batch, ApiError> {
        let Some(g) = &self.gossip else {
            return Err(ApiError::Invalid("this node is in no cluster".into()));
        };
        if node == self.cfg.node {
            return Err(ApiError::Invalid(format!("{node} is this node: remove it from another one, once its agent is stopped")));
        }
        let in_view = g.members().into_iter().find(|m| m.name == node);
        if let Some(m) = in_view.as_ref().filter(|m| m.state != gossip::MemberState::Down) {
            let state = if m.state == gossip::MemberState::Alive { "alive" } else { "suspect" };
            return Err(ApiError::Invalid(format!("{node} is {state}: only a node that is down can be removed (stop its agent first)")));
        }
        let known = self.state.nodes().contains_key(node);
        if in_view.is_none() && !known {
            return Err(ApiError::NotFound(format!("no node named {node} in this cluster (see `fizz nodes`)")));
        }
        self.commit(vec![(state::node_key(node), None), (state::labels_key(node), None), (state::report_key(node), None)])
    }

    /// Keeps the peers' addresses, so a restarted agent finds the cluster.
    pub(super) fn remember_peers(&self) {
        let peers: Vec<SocketAddr> = self.live_peers().into_iter().map(|(_, addr)| addr).collect();
        if !peers.is_empty() {
            cluster::save_seeds(&self.cfg.state_dir, &peers);
        }
    }
}

/// Writes a WireGuard private key, readable by root only, replacing the file whole.
fn save_key(path: &std::path::Path, key: &PrivateKey) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("new");
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    std::io::Write::write_all(&mut f, &key.to_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
