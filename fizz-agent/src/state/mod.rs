//! The cluster's replicated state: what should run (projects, services, scale), what each
//! node is (capacity, labels) and what each node runs (its report). Every node holds all of
//! it as a last-writer-wins map (`crdt`), persisted in `store`, spread by `sync`.
//!
//! Keys, one per thing that is written on its own (so a `scale` and an `up` of another
//! service do not overwrite each other):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `project/<p>` | [`ProjectMeta`] | `fizz up` / `down` on any node |
//! | `service/<p>/<s>` | [`ServicePlan`] | `fizz up` / `down` |
//! | `scale/<p>/<s>` | replicas | `fizz up` / `scale` / `down` |
//! | `node/<n>` | [`NodeRecord`] | node `n`, when it starts |
//! | `labels/<n>` | labels | `fizz node label` on any node |
//! | `report/<n>` | [`NodeReport`] | node `n`, when what it runs changes |
//! | `rollout/<p>/<s>` | [`Rollout`] | `fizz up` of a changed service; its outcome by any node |
//! | `join` | the join token's secret | `fizz init`, `fizz join-token --rotate` |
//!
//! A batch written by one command carries one stamp, so every node applies it whole. This
//! module only holds and merges; the agent's loop decides what to write and when.

pub mod crdt;
pub mod store;
pub mod sync;

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use self::{
    crdt::{Entry, Lww},
    store::{Store, StoreError},
};
use crate::{
    agent::plan::{ProjectPlan, ServicePlan},
    docker::{Health, RunState},
};

/// What a project is besides its services.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectMeta {
    pub volumes: Vec<String>,
}

/// What a node offers, as it reports itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub hostname: String,
    pub cpus: f64,
    pub memory: u64,
}

/// One replica a node runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub project: String,
    pub service: String,
    pub replica: u32,
    pub addr: Option<Ipv4Addr>,
    pub state: RunState,
    pub health: Option<Health>,
    pub exit_code: Option<i64>,
    /// Whether it may take traffic (running, and healthy when checked).
    pub ready: bool,
    /// The container's config hash (its service definition).
    pub config_hash: String,
    /// It failed while a rolling update watched it (exited, crashed, unhealthy).
    #[serde(default)]
    pub failed: bool,
}

/// The rolling update of a changed service: where it goes, where it came from, how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The config hash being rolled out.
    pub to: String,
    /// The definition it replaces, which a rollback returns to (none while rolling back).
    pub previous: Option<Box<ServicePlan>>,
    pub phase: Phase,
}

/// Where a rolling update stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase", content = "why")]
pub enum Phase {
    Updating,
    /// Every replica runs the new definition.
    Done,
    /// Too many new replicas failed: no more are replaced until the next `fizz up`.
    Paused(String),
    /// Too many failed: the previous definition is being put back.
    RollingBack(String),
    /// The previous definition is back everywhere.
    RolledBack(String),
}

/// Everything a node runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub replicas: Vec<ReplicaReport>,
}

/// A value of the map; the key says which kind it must be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Project(ProjectMeta),
    Service(Box<ServicePlan>),
    Scale(u32),
    Node(NodeRecord),
    Labels(BTreeMap<String, String>),
    Report(NodeReport),
    Rollout(Rollout),
    /// The secret of the join token (a node that knows it is handed the cluster secret).
    Join([u8; 32]),
}

/// A change to write: a key and its new value (`None` deletes).
pub type Change = (String, Option<Value>);

/// A batch of stamped entries, as written, stored and sent.
pub type Batch = Vec<(String, Entry<Value>)>;

pub fn project_key(p: &str) -> String {
    format!("project/{p}")
}
pub fn service_key(p: &str, s: &str) -> String {
    format!("service/{p}/{s}")
}
pub fn scale_key(p: &str, s: &str) -> String {
    format!("scale/{p}/{s}")
}
pub fn node_key(n: &str) -> String {
    format!("node/{n}")
}
pub fn labels_key(n: &str) -> String {
    format!("labels/{n}")
}
pub fn report_key(n: &str) -> String {
    format!("report/{n}")
}
/// The key of the join token's secret.
pub const JOIN_KEY: &str = "join";

pub fn rollout_key(p: &str, s: &str) -> String {
    format!("rollout/{p}/{s}")
}

/// How far ahead of this node's clock a peer's stamp may be before the clock refuses to follow
/// it (the entry is still merged). As the gossip envelope's freshness window.
const MAX_CLOCK_DELTA: Duration = Duration::from_secs(60);

/// The state of this node: the map, its database and the clock that stamps writes.
pub struct State {
    map: Lww<Value>,
    store: Store,
    hlc: uhlc::HLC,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("entries", &self.map.len()).field("store", &self.store).finish()
    }
}

impl State {
    /// Opens the state under `dir`. A `desired.json` left by an agent of before the replicated
    /// state is imported once (and renamed `desired.json.imported`).
    pub fn open(dir: &Path) -> Result<State, StateError> {
        let store = Store::open(dir)?;
        // A random clock id per start: two writes never share a stamp, even across restarts.
        let hlc = uhlc::HLCBuilder::new().with_id(uhlc::ID::rand()).with_max_delta(MAX_CLOCK_DELTA).build();
        let mut map = Lww::default();
        for (k, e) in store.load()? {
            let _ = hlc.update_with_timestamp(&e.stamp);
            map.merge(&k, e);
        }
        let mut state = State { map, store, hlc };
        let legacy = dir.join("desired.json");
        if let Ok(bytes) = std::fs::read(&legacy) {
            let projects: BTreeMap<String, ProjectPlan> = serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Legacy { path: legacy.display().to_string(), source })?;
            for p in projects.into_values() {
                if state.map.entry(&project_key(&p.name)).is_none() {
                    state.write(up_changes(&state.map, p))?;
                }
            }
            let _ = std::fs::rename(&legacy, dir.join("desired.json.imported"));
        }
        Ok(state)
    }

    pub fn map(&self) -> &Lww<Value> {
        &self.map
    }

    /// Writes changes under one new stamp: durable on disk first, then in the map. Returns the
    /// batch, for the peers.
    pub fn write(&mut self, changes: Vec<Change>) -> Result<Batch, StoreError> {
        let stamp = self.hlc.new_timestamp();
        let batch: Batch = changes.into_iter().map(|(k, value)| (k, Entry { stamp, value })).collect();
        self.store.write(&batch)?;
        for (k, e) in &batch {
            self.map.merge(k, e.clone());
        }
        Ok(batch)
    }

    /// Merges a peer's batch: what is newer here is stored, then taken. Returns what was taken.
    pub fn merge(&mut self, batch: Batch) -> Result<Batch, StoreError> {
        let newer: Batch = batch
            .into_iter()
            .filter(|(k, e)| self.map.entry(k).is_none_or(|held| held.stamp < e.stamp) && valid(k, e))
            .collect();
        if let Some(max) = newer.iter().map(|(_, e)| e.stamp).max() {
            // A peer's clock far ahead is not followed; its entries still count.
            let _ = self.hlc.update_with_timestamp(&max);
        }
        self.store.write(&newer)?;
        for (k, e) in &newer {
            self.map.merge(k, e.clone());
        }
        Ok(newer)
    }

    /// Every deployed project, assembled from its keys.
    pub fn projects(&self) -> BTreeMap<String, ProjectPlan> {
        projects(&self.map)
    }

    /// Every node's report.
    pub fn reports(&self) -> BTreeMap<String, NodeReport> {
        self.map
            .live("report/")
            .filter_map(|(k, v)| match v {
                Value::Report(r) => Some((k["report/".len()..].to_string(), r.clone())),
                _ => None,
            })
            .collect()
    }

    /// The rolling update of every service that had one, by (project, service).
    pub fn rollouts(&self) -> BTreeMap<(String, String), Rollout> {
        self.map
            .live("rollout/")
            .filter_map(|(k, v)| {
                let (p, s) = k["rollout/".len()..].split_once('/')?;
                match v {
                    Value::Rollout(r) => Some(((p.to_string(), s.to_string()), r.clone())),
                    _ => None,
                }
            })
            .collect()
    }

    /// Every node's record and labels.
    pub fn nodes(&self) -> BTreeMap<String, (Option<NodeRecord>, BTreeMap<String, String>)> {
        let mut out: BTreeMap<String, (Option<NodeRecord>, BTreeMap<String, String>)> = BTreeMap::new();
        for (k, v) in self.map.live("node/") {
            if let Value::Node(r) = v {
                out.entry(k["node/".len()..].to_string()).or_default().0 = Some(r.clone());
            }
        }
        for (k, v) in self.map.live("labels/") {
            if let Value::Labels(l) = v {
                out.entry(k["labels/".len()..].to_string()).or_default().1 = l.clone();
            }
        }
        out
    }
}

/// Whether a key holds the kind of value it must (a peer's entry that does not is dropped).
fn valid(key: &str, e: &Entry<Value>) -> bool {
    let Some(v) = &e.value else { return true };
    let kind = key.split('/').next().unwrap_or("");
    matches!(
        (kind, v),
        ("project", Value::Project(_))
            | ("service", Value::Service(_))
            | ("scale", Value::Scale(_))
            | ("node", Value::Node(_))
            | ("labels", Value::Labels(_))
            | ("report", Value::Report(_))
            | ("rollout", Value::Rollout(_))
            | ("join", Value::Join(_))
    )
}

/// The projects a map holds.
pub fn projects(map: &Lww<Value>) -> BTreeMap<String, ProjectPlan> {
    let mut out = BTreeMap::new();
    for (k, v) in map.live("project/") {
        let Value::Project(meta) = v else { continue };
        let name = &k["project/".len()..];
        let prefix = format!("service/{name}/");
        let services = map
            .live(&prefix)
            .filter_map(|(sk, sv)| {
                let Value::Service(plan) = sv else { return None };
                let sname = &sk[prefix.len()..];
                let mut plan = (**plan).clone();
                if let Some(Value::Scale(n)) = map.get(&scale_key(name, sname)) {
                    plan.replicas = *n;
                }
                Some((sname.to_string(), plan))
            })
            .collect();
        out.insert(name.to_string(), ProjectPlan { name: name.to_string(), services, volumes: meta.volumes.clone() });
    }
    out
}

/// The changes that deploy `p`: its meta, every service and its scale, and deletes for the
/// services it no longer has.
pub fn up_changes(map: &Lww<Value>, p: ProjectPlan) -> Vec<Change> {
    let mut changes = vec![(project_key(&p.name), Some(Value::Project(ProjectMeta { volumes: p.volumes.clone() })))];
    let prefix = format!("service/{}/", p.name);
    for (k, _) in map.live(&prefix) {
        let sname = &k[prefix.len()..];
        if !p.services.contains_key(sname) {
            changes.push((k.to_string(), None));
            changes.push((scale_key(&p.name, sname), None));
            changes.push((rollout_key(&p.name, sname), None));
        }
    }
    for (sname, svc) in p.services {
        let key = rollout_key(&p.name, &sname);
        let rollout = match (map.get(&service_key(&p.name, &sname)), map.get(&key)) {
            // A changed service is rolled out, and can be rolled back to what it was.
            (Some(Value::Service(old)), _) if old.config_hash() != svc.config_hash() => {
                Some(Rollout { to: svc.config_hash(), previous: Some(old.clone()), phase: Phase::Updating })
            }
            // The same definition again resumes a paused update.
            (_, Some(Value::Rollout(r))) if r.to == svc.config_hash() && matches!(r.phase, Phase::Paused(_)) => {
                Some(Rollout { phase: Phase::Updating, ..r.clone() })
            }
            _ => None,
        };
        if let Some(r) = rollout {
            changes.push((key, Some(Value::Rollout(r))));
        }
        changes.push((scale_key(&p.name, &sname), Some(Value::Scale(svc.replicas))));
        changes.push((service_key(&p.name, &sname), Some(Value::Service(Box::new(svc)))));
    }
    changes
}

/// The changes that remove project `p` (deletes for all its keys).
pub fn down_changes(map: &Lww<Value>, p: &str) -> Vec<Change> {
    let mut changes = vec![(project_key(p), None)];
    for prefix in [format!("service/{p}/"), format!("scale/{p}/"), format!("rollout/{p}/")] {
        changes.extend(map.live(&prefix).map(|(k, _)| (k.to_string(), None)));
    }
    changes
}

/// Errors opening the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The desired-state file of an older agent cannot be read.
    #[error("{path} is damaged: {source}")]
    Legacy { path: String, #[source] source: serde_json::Error },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::plan::ServicePlan;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("fizz-state-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn project(name: &str, services: &[(&str, u32)]) -> ProjectPlan {
        ProjectPlan {
            name: name.into(),
            services: services.iter().map(|(s, r)| (s.to_string(), ServicePlan { replicas: *r, ..Default::default() })).collect(),
            volumes: vec![format!("{name}_data")],
        }
    }

    #[test]
    fn up_scale_down_and_a_restart_lose_nothing() {
        let d = dir("restart");
        let mut s = State::open(&d).unwrap();
        s.write(up_changes(s.map(), project("app", &[("web", 2), ("db", 1)]))).unwrap();
        s.write(vec![(scale_key("app", "web"), Some(Value::Scale(5)))]).unwrap();
        s.write(up_changes(s.map(), project("other", &[("x", 1)]))).unwrap();
        s.write(down_changes(s.map(), "other")).unwrap();
        // A new `up` without `db` deletes it.
        let mut app = project("app", &[("web", 3)]);
        app.volumes.clear();
        s.write(up_changes(s.map(), app.clone())).unwrap();
        let before = s.projects();
        assert_eq!(before.len(), 1);
        assert_eq!(before["app"], app);
        drop(s);
        let s = State::open(&d).unwrap();
        assert_eq!(s.projects(), before);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_changed_service_gets_a_rollout_that_remembers_what_it_replaces() {
        let d = dir("rollout");
        let mut s = State::open(&d).unwrap();
        let v1 = project("app", &[("web", 2), ("db", 1)]);
        s.write(up_changes(s.map(), v1.clone())).unwrap();
        assert!(s.rollouts().is_empty(), "a first deploy is no update");
        let mut v2 = v1.clone();
        v2.services.get_mut("web").unwrap().template.image = "web:2".into();
        s.write(up_changes(s.map(), v2.clone())).unwrap();
        let r = &s.rollouts()[&("app".to_string(), "web".to_string())];
        assert_eq!(r.to, v2.services["web"].config_hash());
        assert_eq!(r.previous.as_deref(), Some(&v1.services["web"]));
        assert_eq!((r.phase.clone(), s.rollouts().len()), (Phase::Updating, 1), "db did not change");
        // Paused, the same definition again resumes it; an `up` of nothing new writes none.
        let paused = Rollout { phase: Phase::Paused("replica 1 exited".into()), ..r.clone() };
        s.write(vec![(rollout_key("app", "web"), Some(Value::Rollout(paused)))]).unwrap();
        s.write(up_changes(s.map(), v2.clone())).unwrap();
        assert_eq!(s.rollouts()[&("app".to_string(), "web".to_string())].phase, Phase::Updating);
        let again = up_changes(s.map(), v2);
        assert!(again.iter().all(|(k, _)| !k.starts_with("rollout/")));
        s.write(down_changes(s.map(), "app")).unwrap();
        assert!(s.rollouts().is_empty() && s.projects().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn peers_converge_and_wrong_kinds_are_refused() {
        let (da, db) = (dir("a"), dir("b"));
        let (mut a, mut b) = (State::open(&da).unwrap(), State::open(&db).unwrap());
        let w1 = a.write(up_changes(a.map(), project("app", &[("web", 2)]))).unwrap();
        let w2 = b.write(vec![(scale_key("app", "web"), Some(Value::Scale(4)))]).unwrap();
        assert_eq!(b.merge(w1.clone()).unwrap().len(), w1.len() - 1, "b's scale is newer than a's");
        a.merge(w2).unwrap();
        assert_eq!(a.projects(), b.projects());
        assert_eq!(a.projects()["app"].services["web"].replicas, 4);
        let stamp = a.write(vec![]).unwrap();
        assert!(stamp.is_empty());
        let bad = vec![(scale_key("app", "web"), Entry { stamp: a.hlc.new_timestamp(), value: Some(Value::Labels(BTreeMap::new())) })];
        assert!(b.merge(bad).unwrap().is_empty());
        assert_eq!(a.map().summary(), b.map().summary());
        std::fs::remove_dir_all(&da).unwrap();
        std::fs::remove_dir_all(&db).unwrap();
    }

    #[test]
    fn an_older_agents_desired_state_is_imported_once() {
        let d = dir("legacy");
        std::fs::create_dir_all(&d).unwrap();
        let mut old = BTreeMap::new();
        old.insert("app".to_string(), project("app", &[("web", 2)]));
        std::fs::write(d.join("desired.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        let s = State::open(&d).unwrap();
        assert_eq!(s.projects(), old);
        assert!(!d.join("desired.json").exists() && d.join("desired.json.imported").exists());
        drop(s);
        std::fs::write(d.join("desired.json"), b"{damaged").unwrap();
        assert!(matches!(State::open(&d), Err(StateError::Legacy { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
