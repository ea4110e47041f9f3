//! Rolling updates and draining as the loop runs them: which replicas have been ready for how
//! long, which of this node's new replicas failed while watched, the window each changed
//! service is replaced in (from the pure `rollout`), an update's outcome written to the
//! state, and containers taken out of service before they are removed.

use std::time::Instant;

use super::*;
use crate::{
    agent::{
        plan::FailureAction,
        rollout::{self, Seen},
    },
    docker::{labels, Health},
    state::{Phase, Rollout},
};

/// How long a container is out of service before it is stopped: the peers hear of it (its
/// report is pushed to them) and drop it from their VIPs, and requests in flight end.
pub(super) const DRAIN: Duration = Duration::from_secs(2);

/// A replica (node, identity, config hash).
pub(super) type ReplicaKey = (String, Identity, String);

/// What the loop keeps between passes for updates and draining.
#[derive(Default)]
pub(super) struct Updates {
    /// Since when each replica has been seen ready, here or in a peer's report.
    ready_since: BTreeMap<ReplicaKey, Instant>,
    /// This node's containers that failed while an update watched them, with why.
    failed: BTreeMap<String, String>,
    /// Containers being drained, since when.
    draining: BTreeMap<String, Instant>,
    /// The last progress of each service with old replicas or an update under way.
    progress: BTreeMap<(String, String), rollout::Progress>,
    /// When a pass is next due (a drain ends, a new replica settles).
    pub(super) wake: Option<tokio::time::Instant>,
}

/// Why a container of a definition being rolled out counts as failed.
fn failure(c: &ContainerInfo) -> Option<String> {
    match (c.state, c.exit_code, c.health) {
        (RunState::Exited, Some(code), _) if code != 0 => Some(format!("exited with code {code}")),
        (RunState::Dead, ..) => Some("dead".into()),
        (RunState::Restarting, ..) => Some("crashed (restarting)".into()),
        (_, _, Some(Health::Unhealthy)) => Some("unhealthy".into()),
        _ => None,
    }
}

fn key_of(node: &str, id: &Identity, hash: &str) -> ReplicaKey {
    (node.to_string(), id.clone(), hash.to_string())
}

impl Updates {
    pub(super) fn is_draining(&self, id: &str) -> bool {
        self.draining.contains_key(id)
    }

    pub(super) fn failed(&self, id: &str) -> bool {
        self.failed.contains_key(id)
    }

    /// Starts draining a container (once).
    pub(super) fn drain(&mut self, id: &str) {
        self.draining.entry(id.to_string()).or_insert_with(Instant::now);
    }

    /// Forgets a removed container.
    pub(super) fn removed(&mut self, id: &str) {
        self.draining.remove(id);
        self.failed.remove(id);
    }

    /// The draining containers, and whether each has drained; forgets containers gone.
    pub(super) fn drained(&mut self, containers: &[ContainerInfo]) -> BTreeMap<String, bool> {
        self.draining.retain(|id, _| containers.iter().any(|c| c.id == *id));
        self.failed.retain(|id, _| containers.iter().any(|c| c.id == *id));
        self.draining.iter().map(|(id, since)| (id.clone(), since.elapsed() >= DRAIN)).collect()
    }

    /// The progress of every service as last surveyed.
    pub(super) fn progress(&self) -> &BTreeMap<(String, String), rollout::Progress> {
        &self.progress
    }
}

impl Agent {
    /// Surveys every service with old replicas or an update under way: notes what is ready
    /// since when, marks this node's new replicas that fail while watched, writes the
    /// update's outcome when this node sees it, and returns the windows the plan follows.
    pub(super) fn survey(&mut self, containers: &[ContainerInfo]) -> BTreeMap<(String, String), reconcile::Window> {
        let node = self.cfg.node.clone();
        let now = Instant::now();
        // Ready since: kept while ready, forgotten when not.
        let mut ready_since = BTreeMap::new();
        for c in containers {
            let Some((id, _)) = identity(c) else { continue };
            let Some(svc) = self.desired.get(&id.project).and_then(|p| p.services.get(&id.service)) else { continue };
            if reconcile::ready(svc, c) && !self.updates.is_draining(&c.id) {
                let key = key_of(&node, &id, c.labels.get(labels::CONFIG_HASH).map_or("", String::as_str));
                let since = self.updates.ready_since.get(&key).copied().unwrap_or(now);
                ready_since.insert(key, since);
            }
        }
        for (n, r) in self.remote.iter().filter(|(_, r)| r.ready) {
            let id = Identity { project: r.project.clone(), service: r.service.clone(), replica: r.replica };
            let key = key_of(n, &id, &r.config_hash);
            let since = self.updates.ready_since.get(&key).copied().unwrap_or(now);
            ready_since.insert(key, since);
        }
        self.updates.ready_since = ready_since;

        let rollouts = self.state.rollouts();
        let mut windows = BTreeMap::new();
        let mut changes = Vec::new();
        let mut wake: Option<Duration> = None;
        self.updates.progress.clear();
        for (pname, p) in &self.desired {
            for (sname, svc) in &p.services {
                let hash = svc.config_hash();
                let key = (pname.clone(), sname.clone());
                let rollout = rollouts.get(&key).filter(|r| r.to == hash);
                let watching = rollout.filter(|r| matches!(r.phase, Phase::Updating | Phase::RollingBack(_)));
                let policy = match rollout.map(|r| &r.phase) {
                    Some(Phase::RollingBack(_)) => &svc.rollback,
                    _ => &svc.update,
                };
                let settle = rollout::settle_time(policy);
                let of_service = |id: &Identity| id.project == *pname && id.service == *sname;
                if watching.is_some() {
                    for c in containers {
                        let Some((id, _)) = identity(c).filter(|(id, _)| of_service(id)) else { continue };
                        if c.labels.get(labels::CONFIG_HASH) != Some(&hash) || self.updates.failed(&c.id) {
                            continue;
                        }
                        let settled = self.updates.ready_since.get(&key_of(&node, &id, &hash)).is_some_and(|t| now - *t >= settle);
                        if let Some(why) = failure(c).filter(|_| !settled) {
                            self.updates.failed.insert(c.id.clone(), format!("replica {} on {node} {why}", id.replica));
                        }
                    }
                }
                let replicas: Vec<u32> = if svc.placement.global {
                    self.placement.assigned.keys().filter(|s| s.project == *pname && s.service == *sname).map(|s| s.replica).collect()
                } else {
                    (1..=svc.replicas).collect()
                };
                let ready_for = |n: &str, id: &Identity, h: &str| self.updates.ready_since.get(&key_of(n, id, h)).map(|t| now - *t);
                let mut slots = Vec::new();
                let mut old = false;
                for replica in replicas {
                    let id = Identity { project: pname.clone(), service: sname.clone(), replica };
                    let mut seen = Vec::new();
                    for c in containers.iter().filter(|c| identity(c).is_some_and(|(i, _)| i == id)) {
                        let h = c.labels.get(labels::CONFIG_HASH).map_or("", String::as_str);
                        seen.push(Seen { current: h == hash, ready_for: ready_for(&node, &id, h), failed: self.updates.failed(&c.id) });
                    }
                    for (n, r) in self.remote.iter().filter(|(_, r)| r.project == *pname && r.service == *sname && r.replica == replica) {
                        seen.push(Seen { current: r.config_hash == hash, ready_for: ready_for(n, &id, &r.config_hash), failed: r.failed });
                    }
                    // Old containers left anywhere (draining after their replacement is
                    // ready, say): the update is not over.
                    old |= seen.iter().any(|s| !s.current);
                    slots.push((replica, rollout::slot(policy, &seen)));
                }
                if !old && watching.is_none() {
                    continue;
                }
                let progress = rollout::progress(policy, &slots);
                wake = [wake, progress.wake].into_iter().flatten().min();
                let paused = rollout.is_some_and(|r| matches!(r.phase, Phase::Paused(_)));
                let replicas = if paused { BTreeSet::new() } else { progress.window.clone() };
                windows.insert(key.clone(), reconcile::Window { replicas, order: policy.order });
                if let Some(r) = watching {
                    if progress.exceeded {
                        // Written by a node that runs a failed replica (it saw the failure first).
                        let why = containers
                            .iter()
                            .filter(|c| identity(c).is_some_and(|(id, _)| of_service(&id)))
                            .find_map(|c| self.updates.failed.get(&c.id).filter(|_| c.labels.get(labels::CONFIG_HASH) == Some(&hash)));
                        if let Some(why) = why {
                            eprintln!("fizz agent: update of {pname}/{sname}: {why}");
                            changes.extend(verdict(pname, sname, r, policy.failure_action, why));
                        }
                    } else if progress.complete && !old {
                        let phase = match &r.phase {
                            Phase::RollingBack(why) => Phase::RolledBack(why.clone()),
                            _ => Phase::Done,
                        };
                        changes.push((state::rollout_key(pname, sname), Some(Value::Rollout(Rollout { phase, ..r.clone() }))));
                    }
                }
                self.updates.progress.insert(key, progress);
            }
        }
        let drains = self.updates.draining.values().map(|t| (*t + DRAIN).saturating_duration_since(now)).min();
        let next = [wake, drains].into_iter().flatten().min();
        self.updates.wake = next.map(|d| tokio::time::Instant::now() + d + Duration::from_millis(20));
        if !changes.is_empty() {
            match self.commit(changes) {
                Ok(batch) => {
                    tokio::spawn(self.spread(batch));
                }
                Err(e) => eprintln!("fizz agent: {e}"),
            }
        }
        windows
    }

    /// Where every service's update stands, for `fizz ps` and `fizz up`.
    pub(super) fn update_statuses(&self, project: Option<&str>) -> Vec<api::UpdateStatus> {
        let mut out = Vec::new();
        for ((p, s), r) in self.state.rollouts() {
            if project.is_some_and(|want| want != p) {
                continue;
            }
            let Some(svc) = self.desired.get(&p).and_then(|pp| pp.services.get(&s)) else { continue };
            let (phase, why) = match &r.phase {
                Phase::Updating => (api::UpdatePhase::Updating, None),
                Phase::Done => (api::UpdatePhase::Done, None),
                Phase::Paused(w) => (api::UpdatePhase::Paused, Some(w.clone())),
                Phase::RollingBack(w) => (api::UpdatePhase::RollingBack, Some(w.clone())),
                Phase::RolledBack(w) => (api::UpdatePhase::RolledBack, Some(w.clone())),
            };
            // A record of an earlier definition (replaced since by an `up` that made none).
            if r.to != svc.config_hash() {
                continue;
            }
            let (updated, total) = match self.updates.progress().get(&(p.clone(), s.clone())) {
                Some(pr) => (pr.settled, pr.total),
                None => (svc.replicas as usize, svc.replicas as usize),
            };
            out.push(api::UpdateStatus { project: p, service: s, phase, why, updated, total });
        }
        out
    }
}

/// What an update that failed beyond its tolerance writes: a rollback to the previous
/// definition, or a pause (a rollback that fails too pauses).
fn verdict(project: &str, service: &str, r: &Rollout, action: FailureAction, why: &str) -> Vec<Change> {
    let key = state::rollout_key(project, service);
    let paused = |why: String| vec![(key.clone(), Some(Value::Rollout(Rollout { phase: Phase::Paused(why), ..r.clone() })))];
    match (&r.phase, action, &r.previous) {
        (Phase::Updating, FailureAction::Rollback, Some(previous)) => vec![
            (state::service_key(project, service), Some(Value::Service(previous.clone()))),
            (
                key.clone(),
                Some(Value::Rollout(Rollout { to: previous.config_hash(), previous: None, phase: Phase::RollingBack(why.to_string()) })),
            ),
        ],
        (Phase::RollingBack(first), ..) => paused(format!("{first}; the rollback failed too: {why}")),
        _ => paused(why.to_string()),
    }
}
