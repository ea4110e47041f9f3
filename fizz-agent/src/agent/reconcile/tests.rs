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
        placement: Default::default(),
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
            Action::Remove { name, reason, .. } => format!("remove {name} {reason:?}"),
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

fn check(projects: &BTreeMap<String, ProjectPlan>, containers: &[ContainerInfo], expect: &[&str]) {
    let placed = all_on(projects, "n1");
    check_shared(projects, containers, Share { placed: &placed, remote: &[], hold: false }, expect);
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
    };
    (node.to_string(), r)
}

#[test]
fn only_the_replicas_placed_here_are_created_and_a_move_waits_for_its_new_node() {
    let ps = project(vec![("web", svc(3, &[], false))]);
    let mut placed = all_on(&ps, "n1");
    placed.insert(Slot { project: "app".into(), service: "web".into(), replica: 2 }, "n2".into());
    check_shared(&ps, &[], Share { placed: &placed, remote: &[], hold: false }, &["create app-web-1 10.42.0.2", "create app-web-3 10.42.0.3"]);
    // web-2 runs here but is placed on n2: kept until n2 reports it ready.
    let cs: Vec<_> = (1..=3).map(|r| running(&ps, "web", r, 1 + r as u8, None)).collect();
    check_shared(&ps, &cs, Share { placed: &placed, remote: &[], hold: false }, &[]);
    let starting = [reported(&ps, "n2", "web", 2, 9, false)];
    check_shared(&ps, &cs, Share { placed: &placed, remote: &starting, hold: false }, &[]);
    let elsewhere = [reported(&ps, "n3", "web", 2, 9, true)];
    check_shared(&ps, &cs, Share { placed: &placed, remote: &elsewhere, hold: false }, &[]);
    let ready = [reported(&ps, "n2", "web", 2, 9, true)];
    check_shared(&ps, &cs, Share { placed: &placed, remote: &ready, hold: false }, &["remove app-web-2 Moved"]);
    // Holding (no majority seen yet): nothing moves and nothing starts.
    let none = BTreeMap::new();
    check_shared(&ps, &cs, Share { placed: &none, remote: &ready, hold: true }, &[]);
    check_shared(&ps, &[], Share { placed: &none, remote: &[], hold: true }, &[]);
}

#[test]
fn dependencies_and_backends_count_every_nodes_replicas() {
    let ps = project(vec![("db", svc(2, &[], true)), ("web", svc(1, &[("db", Condition::ServiceHealthy)], false))]);
    let mut placed = all_on(&ps, "n1");
    placed.insert(Slot { project: "app".into(), service: "db".into(), replica: 2 }, "n2".into());
    let db1 = running(&ps, "db", 1, 2, Some(Health::Healthy));
    let starting = [reported(&ps, "n2", "db", 2, 9, false)];
    check_shared(&ps, std::slice::from_ref(&db1), Share { placed: &placed, remote: &starting, hold: false }, &["wait web-1 waiting for db to be healthy"]);
    let ready = [reported(&ps, "n2", "db", 2, 9, true)];
    check_shared(&ps, std::slice::from_ref(&db1), Share { placed: &placed, remote: &ready, hold: false }, &["create app-web-1 10.42.0.3"]);
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
    check(&ps2, &cs, &["remove app-web-2 ScaledDown", "remove app-web-3 ScaledDown"]);
}

#[test]
fn a_changed_service_is_recreated_and_others_are_left_alone() {
    let ps = project(vec![("web", svc(1, &[], false)), ("db", svc(1, &[], false))]);
    let cs = vec![running(&ps, "web", 1, 2, None), running(&ps, "db", 1, 3, None)];
    let mut ps2 = ps.clone();
    ps2.get_mut("app").unwrap().services.get_mut("web").unwrap().template.env.insert("X".into(), "1".into());
    check(&ps2, &cs, &["remove app-web-1 Changed", "create app-web-1 10.42.0.2"]);
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
        &["remove app-web-1-dup Duplicate", "remove gone-web-1 NotDesired", "remove broken Unlabelled"],
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
