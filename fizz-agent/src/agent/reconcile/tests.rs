use std::{collections::BTreeMap, net::Ipv4Addr};

use super::*;
use crate::{
    state::ReplicaReport,
    agent::plan::{Dependency, ServicePort},
    docker::{ContainerInfo, ContainerSpec, Health, RunState},
    net::service::Proto,
};

fn ctx() -> NodeContext<'static> {
    NodeContext {
        node: "n1",
        range: Cidr::new(Ipv4Addr::new(10, 42, 0, 0), 24).unwrap(),
        dns: Ipv4Addr::new(169, 254, 1, 1),
        name_suffix: "",
    }
}

fn svc(replicas: u32, deps: &[(&str, Condition)], health: bool) -> ServicePlan {
    ServicePlan {
        replicas,
        template: ContainerSpec { image: "busybox".into(), ..Default::default() },
        depends_on: deps.iter().map(|(s, c)| Dependency { service: s.to_string(), condition: *c }).collect(),
        ports: vec![ServicePort { port: 80, target: 8080, proto: Proto::Tcp }],
        networks: BTreeMap::new(),
        vip: Some(Ipv4Addr::new(10, 43, 0, replicas as u8)),
        has_healthcheck: health,
        ..Default::default()
    }
}

fn project(services: Vec<(&str, ServicePlan)>) -> BTreeMap<String, ProjectPlan> {
    let p = ProjectPlan {
        name: "app".into(),
        services: services.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
        volumes: vec![],
    };
    [("app".to_string(), p)].into()
}

/// A container as the reconciler would have made it.
fn running(projects: &BTreeMap<String, ProjectPlan>, service: &str, replica: u32, last: u8, health: Option<Health>) -> ContainerInfo {
    let p = &projects["app"];
    let spec = replica_spec(&ctx(), "app", service, &p.services[service], replica, Ipv4Addr::new(10, 42, 0, last));
    ContainerInfo {
        id: format!("{service}{replica}"),
        name: spec.name.clone(),
        labels: spec.labels,
        state: RunState::Running,
        health,
        pid: Some(100),
        exit_code: None,
    }
}

/// Renders a plan as lines, for compact expectations.
fn render(p: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for a in &p.actions {
        out.push(match a {
            Action::Drain { name, .. } => format!("drain {name}"),
            Action::Remove { name, reason, .. } => format!("remove {name} {reason:?}"),
            Action::Rename { name, to, .. } => format!("rename {name} {to}"),
            Action::Create { spec, addr, .. } => format!("create {} {addr}", spec.name),
        });
    }
    for (id, why) in &p.waiting {
        out.push(format!("wait {}-{} {why}", id.service, id.replica));
    }
    out
}

/// Every replica placed on `node`.
fn all_on(projects: &BTreeMap<String, ProjectPlan>, node: &str) -> BTreeMap<Slot, String> {
    let mut out = BTreeMap::new();
    for (pname, p) in projects {
        for (sname, s) in &p.services {
            for replica in 1..=s.replicas {
                out.insert(Slot { project: pname.clone(), service: sname.clone(), replica }, node.to_string());
            }
        }
    }
    out
}

static NO_UPDATES: BTreeMap<(String, String), Window> = BTreeMap::new();
static NONE_DRAINING: BTreeMap<String, bool> = BTreeMap::new();

fn share<'a>(placed: &'a BTreeMap<Slot, String>, remote: &'a [(String, ReplicaReport)], hold: bool) -> Share<'a> {
    Share { placed, remote, hold, updates: &NO_UPDATES, draining: &NONE_DRAINING }
}

fn check(projects: &BTreeMap<String, ProjectPlan>, containers: &[ContainerInfo], expect: &[&str]) {
    let placed = all_on(projects, "n1");
    check_shared(projects, containers, share(&placed, &[], false), expect);
}

/// As `check`, with the containers `ids` drained.
fn check_drained(projects: &BTreeMap<String, ProjectPlan>, containers: &[ContainerInfo], ids: &[&str], expect: &[&str]) {
    let placed = all_on(projects, "n1");
    let drained: BTreeMap<String, bool> = ids.iter().map(|id| (id.to_string(), true)).collect();
    check_shared(projects, containers, Share { draining: &drained, ..share(&placed, &[], false) }, expect);
}

fn check_shared(projects: &BTreeMap<String, ProjectPlan>, containers: &[ContainerInfo], share: Share<'_>, expect: &[&str]) {
    let got = render(&plan(&ctx(), projects, containers, share));
    assert_eq!(got, expect, "\n got: {got:#?}\nwant: {expect:#?}");
}

/// A replica another node reports.
fn reported(projects: &BTreeMap<String, ProjectPlan>, node: &str, service: &str, replica: u32, last: u8, ready: bool) -> (String, ReplicaReport) {
    let r = ReplicaReport {
        project: "app".into(),
        service: service.into(),
        replica,
        addr: Some(Ipv4Addr::new(10, 42, 1, last)),
        state: RunState::Running,
        health: if ready { Some(Health::Healthy) } else { Some(Health::Starting) },
        exit_code: None,
        ready,
        config_hash: projects["app"].services[service].config_hash(),
        failed: false,
    };
    (node.to_string(), r)
}

#[test]
fn only_the_replicas_placed_here_are_created_and_a_move_waits_for_its_new_node() {
    let ps = project(vec![("web", svc(3, &[], false))]);
    let mut placed = all_on(&ps, "n1");
    placed.insert(Slot { project: "app".into(), service: "web".into(), replica: 2 }, "n2".into());
    check_shared(&ps, &[], share(&placed, &[], false), &["create app-web-1 10.42.0.2", "create app-web-3 10.42.0.3"]);
    // web-2 runs here but is placed on n2: kept until n2 reports it ready.
    let cs: Vec<_> = (1..=3).map(|r| running(&ps, "web", r, 1 + r as u8, None)).collect();
    check_shared(&ps, &cs, share(&placed, &[], false), &[]);
    let starting = [reported(&ps, "n2", "web", 2, 9, false)];
    check_shared(&ps, &cs, share(&placed, &starting, false), &[]);
    let elsewhere = [reported(&ps, "n3", "web", 2, 9, true)];
    check_shared(&ps, &cs, share(&placed, &elsewhere, false), &[]);
    let ready = [reported(&ps, "n2", "web", 2, 9, true)];
    check_shared(&ps, &cs, share(&placed, &ready, false), &["drain app-web-2"]);
    let drained = [("web2".to_string(), true)].into();
    check_shared(&ps, &cs, Share { draining: &drained, ..share(&placed, &ready, false) }, &["remove app-web-2 Moved"]);
    // Holding (no majority seen yet): nothing moves and nothing starts.
    let none = BTreeMap::new();
    check_shared(&ps, &cs, share(&none, &ready, true), &[]);
    check_shared(&ps, &[], share(&none, &[], true), &[]);
}

#[test]
fn dependencies_and_backends_count_every_nodes_replicas() {
    let ps = project(vec![("db", svc(2, &[], true)), ("web", svc(1, &[("db", Condition::ServiceHealthy)], false))]);
    let mut placed = all_on(&ps, "n1");
    placed.insert(Slot { project: "app".into(), service: "db".into(), replica: 2 }, "n2".into());
    let db1 = running(&ps, "db", 1, 2, Some(Health::Healthy));
    let starting = [reported(&ps, "n2", "db", 2, 9, false)];
    check_shared(&ps, std::slice::from_ref(&db1), share(&placed, &starting, false), &["wait web-1 waiting for db to be healthy"]);
    let ready = [reported(&ps, "n2", "db", 2, 9, true)];
    check_shared(&ps, std::slice::from_ref(&db1), share(&placed, &ready, false), &["create app-web-1 10.42.0.3"]);
    let table = vip_table(&ps, &[db1], &ready);
    let db = table.iter().find(|(s, _)| s.frontend.vip == ps["app"].services["db"].vip.unwrap()).unwrap();
    let addrs: Vec<String> = db.0.backends.iter().map(|b| b.to_string()).collect();
    assert_eq!(addrs, vec!["10.42.0.2:8080", "10.42.1.9:8080"]);
}

#[test]
fn fresh_project_starts_dependencies_first() {
    let ps = project(vec![("db", svc(1, &[], true)), ("web", svc(2, &[("db", Condition::ServiceHealthy)], false))]);
    check(&ps, &[], &["create app-db-1 10.42.0.2", "wait web-1 waiting for db to be healthy", "wait web-2 waiting for db to be healthy"]);
    let db_starting = running(&ps, "db", 1, 2, Some(Health::Starting));
    check(&ps, &[db_starting], &["wait web-1 waiting for db to be healthy", "wait web-2 waiting for db to be healthy"]);
    let db_healthy = running(&ps, "db", 1, 2, Some(Health::Healthy));
    check(&ps, &[db_healthy], &["create app-web-1 10.42.0.3", "create app-web-2 10.42.0.4"]);
}

#[test]
fn completed_successfully_needs_exit_zero() {
    let ps = project(vec![("init", svc(1, &[], false)), ("app", svc(1, &[("init", Condition::ServiceCompletedSuccessfully)], false))]);
    let mut init = running(&ps, "init", 1, 2, None);
    check(&ps, &[init.clone()], &["wait app-1 waiting for init to complete successfully"]);
    init.state = RunState::Exited;
    init.exit_code = Some(1);
    check(&ps, &[init.clone()], &["wait app-1 waiting for init to complete successfully"]);
    init.exit_code = Some(0);
    check(&ps, &[init], &["create app-app-1 10.42.0.3"]);
}

#[test]
fn up_twice_changes_nothing_and_scaling_down_removes_the_highest() {
    let ps = project(vec![("web", svc(3, &[], false))]);
    let cs: Vec<_> = (1..=3).map(|r| running(&ps, "web", r, 1 + r as u8, None)).collect();
    check(&ps, &cs, &[]);
    let mut ps2 = ps.clone();
    ps2.get_mut("app").unwrap().services.get_mut("web").unwrap().replicas = 1;
    check(&ps2, &cs, &["drain app-web-2", "drain app-web-3"]);
    check_drained(&ps2, &cs, &["web2", "web3"], &["remove app-web-2 ScaledDown", "remove app-web-3 ScaledDown"]);
}

#[test]
fn a_changed_service_is_recreated_and_others_are_left_alone() {
    let ps = project(vec![("web", svc(1, &[], false)), ("db", svc(1, &[], false))]);
    let cs = vec![running(&ps, "web", 1, 2, None), running(&ps, "db", 1, 3, None)];
    let mut ps2 = ps.clone();
    ps2.get_mut("app").unwrap().services.get_mut("web").unwrap().template.env.insert("X".into(), "1".into());
    // Stopped first: drained, and replaced once removed.
    check(&ps2, &cs, &["drain app-web-1"]);
    check_drained(&ps2, &cs, &["web1"], &["remove app-web-1 Changed", "create app-web-1 10.42.0.2"]);
}

/// `web` (3 replicas, old definition, running here) with a changed definition.
fn changed_web() -> (BTreeMap<String, ProjectPlan>, Vec<ContainerInfo>) {
    let ps = project(vec![("web", svc(3, &[], false))]);
    let cs = (1..=3).map(|r| running(&ps, "web", r, 1 + r as u8, None)).collect();
    let mut ps2 = ps.clone();
    ps2.get_mut("app").unwrap().services.get_mut("web").unwrap().template.env.insert("X".into(), "1".into());
    (ps2, cs)
}

#[test]
fn an_update_replaces_only_the_replicas_in_its_window() {
    let (ps, cs) = changed_web();
    let placed = all_on(&ps, "n1");
    let key = ("app".to_string(), "web".to_string());
    let window = |replicas: &[u32], order| [(key.clone(), Window { replicas: replicas.iter().copied().collect(), order })].into();
    let none: BTreeMap<_, _> = window(&[], UpdateOrder::StopFirst);
    check_shared(&ps, &cs, Share { updates: &none, ..share(&placed, &[], false) }, &[]);
    let second: BTreeMap<_, _> = window(&[2], UpdateOrder::StopFirst);
    let drained = [("web2".to_string(), true)].into();
    check_shared(&ps, &cs, Share { updates: &second, ..share(&placed, &[], false) }, &["drain app-web-2"]);
    check_shared(
        &ps,
        &cs,
        Share { updates: &second, draining: &drained, ..share(&placed, &[], false) },
        &["remove app-web-2 Changed", "create app-web-2 10.42.0.3"],
    );
    // Holding, nothing is replaced whatever the window.
    check_shared(&ps, &cs, Share { updates: &second, ..share(&placed, &[], true) }, &[]);
    // Draining is one way: even if it is no longer its turn, web-2 is replaced once drained.
    check_shared(
        &ps,
        &cs,
        Share { updates: &none, draining: &drained, ..share(&placed, &[], false) },
        &["remove app-web-2 Changed", "create app-web-2 10.42.0.3"],
    );
}

#[test]
fn started_first_the_old_replica_gives_its_name_and_goes_once_the_new_one_is_ready() {
    let (ps, cs) = changed_web();
    let placed = all_on(&ps, "n1");
    let first: BTreeMap<_, _> =
        [(("app".to_string(), "web".to_string()), Window { replicas: [1].into(), order: UpdateOrder::StartFirst })].into();
    let sf = |remote| Share { updates: &first, ..share(&placed, remote, false) };
    check_shared(&ps, &cs, sf(&[]), &["rename app-web-1 app-web-1-web1", "create app-web-1 10.42.0.5"]);
    // The new one starting: both stay. Ready: the old one drains.
    let mut new = running(&ps, "web", 1, 5, Some(Health::Starting));
    new.id = "new1".into();
    let mut renamed = cs.clone();
    renamed[0].name = "app-web-1-web1".into();
    for c in &mut renamed {
        c.health = Some(Health::Healthy);
    }
    let mut ps_health = ps.clone();
    ps_health.get_mut("app").unwrap().services.get_mut("web").unwrap().has_healthcheck = true;
    let with_new: Vec<_> = renamed.iter().cloned().chain([new.clone()]).collect();
    check_shared(&ps_health, &with_new, sf(&[]), &[]);
    new.health = Some(Health::Healthy);
    let with_ready: Vec<_> = renamed.iter().cloned().chain([new]).collect();
    check_shared(&ps_health, &with_ready, sf(&[]), &["drain app-web-1-web1"]);
}

#[test]
fn strays_and_duplicates_are_removed() {
    let ps = project(vec![("web", svc(1, &[], false))]);
    let mut dup = running(&ps, "web", 1, 5, None);
    dup.id = "dup".into();
    dup.name = "app-web-1-dup".into();
    let mut stray = running(&ps, "web", 1, 6, None);
    stray.labels.insert(crate::docker::labels::PROJECT.into(), "gone".into());
    stray.name = "gone-web-1".into();
    let mut broken = running(&ps, "web", 1, 7, None);
    broken.labels.remove(crate::docker::labels::SERVICE);
    broken.name = "broken".into();
    check(
        &ps,
        &[running(&ps, "web", 1, 2, None), dup, stray, broken],
        &["remove broken Unlabelled", "drain app-web-1-dup", "remove gone-web-1 NotDesired"],
    );
}

#[test]
fn only_ready_replicas_back_the_vip() {
    let ps = project(vec![("web", svc(3, &[], true))]);
    let mut cs = vec![
        running(&ps, "web", 1, 2, Some(Health::Healthy)),
        running(&ps, "web", 2, 3, Some(Health::Unhealthy)),
        running(&ps, "web", 3, 4, Some(Health::Starting)),
    ];
    let table = vip_table(&ps, &cs, &[]);
    assert_eq!(table.len(), 1);
    let addrs: Vec<String> = table[0].0.backends.iter().map(|b| b.to_string()).collect();
    assert_eq!(addrs, vec!["10.42.0.2:8080"]);
    cs[0].state = RunState::Exited;
    assert!(vip_table(&ps, &cs, &[])[0].0.backends.is_empty(), "no ready replica: the VIP rejects");
}

#[test]
fn services_share_a_bit_only_when_they_share_a_network() {
    let mut front = svc(1, &[], false);
    front.networks = [("front".to_string(), vec![])].into();
    let mut both = svc(1, &[], false);
    both.networks = [("front".to_string(), vec![]), ("back".to_string(), vec![])].into();
    let mut back = svc(1, &[], false);
    back.networks = [("back".to_string(), vec![])].into();
    back.vip = Some(Ipv4Addr::new(10, 43, 0, 99));
    let ps = project(vec![("web", front), ("api", both), ("db", back), ("other", svc(1, &[], false))]);
    let (m, overflow) = network_masks(&ps);
    let get = |s: &str| m[&("app".to_string(), s.to_string())];
    assert!(!overflow);
    assert_ne!(get("web") & get("api"), 0);
    assert_ne!(get("api") & get("db"), 0);
    assert_eq!(get("web") & get("db"), 0, "web and db share no network");
    assert_eq!(get("other") & (get("web") | get("db") | get("api")), 0, "default is a network of its own");
    assert_eq!(vip_table(&ps, &[], &[]).iter().find(|(s, _)| s.frontend.vip == ps["app"].services["db"].vip.unwrap()).unwrap().1, get("db"));
}

#[test]
fn remote_containers_carry_their_services_networks_and_only_running_ones_count() {
    let mut front = svc(1, &[], false);
    front.networks = [("front".to_string(), vec![])].into();
    let mut back = svc(1, &[], false);
    back.networks = [("back".to_string(), vec![])].into();
    let ps = project(vec![("web", front), ("db", back)]);
    let (m, _) = network_masks(&ps);
    let get = |s: &str| m[&("app".to_string(), s.to_string())];
    let web = reported(&ps, "n2", "web", 1, 5, true);
    let db = reported(&ps, "n3", "db", 1, 6, false);
    let mut exited = reported(&ps, "n3", "db", 2, 7, false);
    exited.1.state = RunState::Exited;
    let mut gone = reported(&ps, "n2", "web", 2, 8, true);
    gone.1.service = "removed".into();
    let got = remote_masks(&[web, db, exited, gone], &m);
    let at = |last: u8| got.get(&Ipv4Addr::new(10, 42, 1, last)).copied();
    assert_eq!(at(5), Some(get("web")));
    assert_eq!(at(6), Some(get("db")), "a replica that is not ready yet still sends");
    assert_eq!(at(7), None, "an exited replica's address is free");
    assert_eq!(at(8), Some(0), "a service no longer desired is unrestricted, as locally");

    // One address reported twice (reused while a report lags): both masks.
    let twice = [reported(&ps, "n2", "web", 1, 5, true), reported(&ps, "n2", "db", 1, 5, true)];
    assert_eq!(remote_masks(&twice, &m)[&Ipv4Addr::new(10, 42, 1, 5)], get("web") | get("db"));
}
