//! The agent end to end on a simulated node: a project deployed through its
//! API runs as Docker containers plumbed by the agent behind a VIP; the
//! agent can be stopped and killed under traffic without cutting flows or
//! recreating anything; `down` leaves nothing behind.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use fizz::{
    agent::plan::{ProjectPlan, ServicePlan, ServicePort},
    api::{DownRequest, PsResponse, UpRequest, UpResponse},
    docker::{ContainerSpec, RunState},
    net::service::Proto,
};
use fizz_tests::{require_docker, spawn_in, wait_for, AgentProc, DockerNodeGuard, Node, BUSYBOX_IMAGE};
use hyper::Method;

fn echo_project(name: &str, replicas: u32) -> ProjectPlan {
    let svc = ServicePlan {
        replicas,
        template: ContainerSpec {
            image: BUSYBOX_IMAGE.into(),
            command: Some(vec!["nc".into(), "-ll".into(), "-p".into(), "9000".into(), "-e".into(), "cat".into()]),
            stop_grace_period: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        ports: vec![ServicePort { port: 9000, target: 9000, proto: Proto::Tcp }],
        ..Default::default()
    };
    ProjectPlan { name: name.into(), services: [("echo".to_string(), svc)].into(), volumes: vec![] }
}

fn ps(rt: &tokio::runtime::Runtime, agent: &AgentProc) -> PsResponse {
    rt.block_on(agent.client().call::<(), _>(Method::GET, "/v1/ps", None)).unwrap()
}

fn wait_running(rt: &tokio::runtime::Runtime, agent: &AgentProc, n: usize) -> PsResponse {
    let mut last = PsResponse::default();
    wait_for("replicas to run", Duration::from_secs(60), || {
        last = ps(rt, agent);
        last.replicas.iter().filter(|r| r.state == Some(RunState::Running)).count() == n
    })
    .unwrap_or_else(|e| panic!("{e}: {last:#?}"));
    last
}

#[test]
fn deploys_survives_agent_restarts_under_traffic_and_downs_cleanly() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut agent = AgentProc::start(&node, &[]).unwrap();
    let project = format!("{}p", node.name.to_lowercase());

    let up: UpResponse = rt
        .block_on(agent.client().call(Method::POST, "/v1/up", Some(&UpRequest { project: echo_project(&project, 2) })))
        .unwrap();
    let vip = up.services[0].1.expect("a VIP was allocated");
    let before = wait_running(&rt, &agent, 2);
    let ids: Vec<_> = before.replicas.iter().map(|r| r.container_id.clone()).collect();

    // A client outside the agent's range, wired by the rig.
    let mut dp = node.datapath().unwrap();
    let client = node.container(Ipv4Addr::new(10, 42, 9, 2)).unwrap();
    node.attach(&mut dp, &client.host_if).unwrap();
    let prog_id = dp.program().info().unwrap().id();

    let transfer = spawn_in(&client.ns.path(), move || -> std::io::Result<u64> {
        let addr = SocketAddr::from((vip, 9000));
        let start = Instant::now();
        let mut s = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(20) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let start = Instant::now();
        let mut total = 0u64;
        let mut i = 0u8;
        while start.elapsed() < Duration::from_secs(6) {
            let chunk = [i; 512];
            s.write_all(&chunk)?;
            let mut back = [0u8; 512];
            s.read_exact(&mut back)?;
            assert_eq!(back, chunk, "echo intact");
            total += 512;
            i = i.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(total)
    })
    .unwrap();

    std::thread::sleep(Duration::from_millis(1500));
    let status = agent.stop().unwrap();
    assert!(status.success(), "SIGTERM ends the agent cleanly: {status}");
    agent.restart().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    agent.kill();
    agent.restart().unwrap();
    let sent = transfer.join().unwrap().unwrap().expect("the transfer through the VIP never broke");
    assert!(sent > 50 * 1024, "only {sent} bytes went through");

    let after = wait_running(&rt, &agent, 2);
    let ids_after: Vec<_> = after.replicas.iter().map(|r| r.container_id.clone()).collect();
    assert_eq!(ids, ids_after, "the restarted agent adopted the containers, recreating nothing");
    let backend_if = fizz::agent::host_if_name(&node.name, after.replicas[0].container_id.as_deref().unwrap());
    let progs = node
        .ns
        .run(|| aya::programs::SchedClassifier::query_tcx(&backend_if, aya::programs::TcAttachType::Ingress))
        .unwrap()
        .unwrap()
        .1;
    assert_eq!(progs.len(), 1, "one program on {backend_if}");
    assert_eq!(progs[0].id(), prog_id, "the program was adopted, not replaced");

    // `up` again with the same project changes nothing.
    let again: UpResponse = rt
        .block_on(agent.client().call(Method::POST, "/v1/up", Some(&UpRequest { project: echo_project(&project, 2) })))
        .unwrap();
    assert!(!again.updated && again.changed.is_empty());

    // `down` removes containers, veths, VIP and endpoints.
    rt.block_on(agent.client().call::<_, ()>(Method::POST, "/v1/down", Some(&DownRequest { project: project.clone(), volumes: true })))
        .unwrap();
    let gone = ps(&rt, &agent);
    assert!(gone.replicas.is_empty() && gone.projects.is_empty(), "{gone:#?}");
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=fizz.node={}", node.name)])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "no container left");
    assert!(node.ns.run(|| fizz::net::plumb::host_link(&backend_if)).unwrap().unwrap().is_none(), "veth removed");
    let snap = node.ns.run(|| fizz::net::inspect::snapshot(&node.pins.0)).unwrap().unwrap();
    assert!(snap.services.is_empty(), "VIP removed: {:?}", snap.services);
    assert!(snap.endpoints.is_empty(), "endpoints removed: {:?}", snap.endpoints);
}

fn httpd_service(body: &str, networks: &[&str], aliases: &[&str]) -> ServicePlan {
    ServicePlan {
        replicas: 1,
        template: ContainerSpec {
            image: BUSYBOX_IMAGE.into(),
            command: Some(vec!["sh".into(), "-c".into(), format!("echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www")]),
            stop_grace_period: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        ports: vec![ServicePort { port: 80, target: 8080, proto: Proto::Tcp }],
        networks: networks.iter().map(|n| (n.to_string(), aliases.iter().map(|a| a.to_string()).collect())).collect(),
        ..Default::default()
    }
}

fn exec(rt: &tokio::runtime::Runtime, agent: &AgentProc, project: &str, service: &str, cmd: &str) -> (i64, String) {
    let req = fizz::api::ExecRequest {
        project: project.into(),
        service: service.into(),
        replica: Some(1),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
    };
    let r: fizz::api::ExecResponse = rt.block_on(agent.client().call(Method::POST, "/v1/exec", Some(&req))).unwrap();
    (r.exit_code, r.output.trim().to_string())
}

#[test]
fn names_resolve_and_networks_isolate() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = AgentProc::start(&node, &[]).unwrap();
    let project = format!("{}q", node.name.to_lowercase());
    let plan = ProjectPlan {
        name: project.clone(),
        services: [
            ("web".to_string(), httpd_service("web", &["front"], &[])),
            ("api".to_string(), httpd_service("api", &["front", "back"], &["backend"])),
            ("db".to_string(), httpd_service("db", &["back"], &[])),
        ]
        .into(),
        volumes: vec![],
    };
    let _: UpResponse = rt.block_on(agent.client().call(Method::POST, "/v1/up", Some(&UpRequest { project: plan }))).unwrap();
    let ps = wait_running(&rt, &agent, 3);
    let db_addr = ps.replicas.iter().find(|r| r.service == "db").unwrap().addr.unwrap();

    // Names: <service>, <service>.<project>, <service>.<project>.fizz, tasks.
    for name in ["api", &format!("api.{project}"), &format!("api.{project}.fizz")] {
        let (code, out) = exec(&rt, &agent, &project, "web", &format!("timeout 5 wget -qO- http://{name}/"));
        assert_eq!((code, out.as_str()), (0, "api"), "web → http://{name}/");
    }
    let (code, out) = exec(&rt, &agent, &project, "web", "nslookup tasks.api");
    let api_addr = ps.replicas.iter().find(|r| r.service == "api").unwrap().addr.unwrap();
    assert!(code == 0 && out.contains(&api_addr.to_string()), "tasks.api lists the replica: {out}");
    // An alias resolves for containers on its network only.
    let (code, out) = exec(&rt, &agent, &project, "db", "timeout 5 wget -qO- http://backend/");
    assert_eq!((code, out.as_str()), (0, "api"), "db reaches api by its alias on `back`");

    // Isolation: web shares no network with db, by VIP or by address.
    let (code, _) = exec(&rt, &agent, &project, "web", "timeout 2 wget -qO- http://db/");
    assert_ne!(code, 0, "web must not reach db through its VIP");
    let (code, _) = exec(&rt, &agent, &project, "web", &format!("timeout 2 wget -qO- http://{db_addr}:8080/"));
    assert_ne!(code, 0, "web must not reach db directly");
    let (code, out) = exec(&rt, &agent, &project, "api", "timeout 5 wget -qO- http://db/");
    assert_eq!((code, out.as_str()), (0, "db"), "api shares `back` with db");
    let (code, out) = exec(&rt, &agent, &project, "api", "cat /sys/class/net/eth0/mtu");
    let tunnel_mtu = fizz::net::wireguard::DEFAULT_MTU.to_string();
    assert_eq!((code, out.trim()), (0, tunnel_mtu.as_str()), "a container's eth0 has the tunnel's MTU");
    let snap = node.ns.run(|| fizz::net::inspect::snapshot(&node.pins.0)).unwrap().unwrap();
    assert!(snap.drops.get("policy-denied").is_some_and(|c| c.packets > 0), "the denied packets are counted: {:?}", snap.drops);
    // The five allowed requests by name were TCP to a VIP from a container:
    // balanced at connect time (the agent registered each container's
    // namespace), so none of them needed a conntrack entry.
    let connects: u64 = snap.services.iter().map(|s| s.connects).sum();
    assert!(connects >= 5, "connections balanced at connect time: {:?}", snap.services);
    assert!(snap.conntrack.iter().all(|f| f.proto != "tcp"), "no TCP flow NAT'd per packet: {:?}", snap.conntrack);

    // A removed service is NXDOMAIN at once.
    rt.block_on(agent.client().call::<_, ()>(Method::POST, "/v1/down", Some(&DownRequest { project: project.clone(), volumes: false })))
        .unwrap();
}

/// GETs through the VIP from inside a replica of `from`, `n` times, and
/// counts the answers.
fn spread(rt: &tokio::runtime::Runtime, agent: &AgentProc, project: &str, from: &str, url: &str, n: u32) -> std::collections::BTreeMap<String, u32> {
    let (code, out) = exec(rt, agent, project, from, &format!("for i in $(seq {n}); do timeout 5 wget -qO- {url}; done"));
    assert_eq!(code, 0, "requests from {from} to {url}: {out}");
    let mut seen = std::collections::BTreeMap::new();
    for line in out.lines() {
        *seen.entry(line.trim().to_string()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn only_healthy_replicas_get_traffic_and_scaling_and_updates_touch_only_what_changed() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = AgentProc::start(&node, &[]).unwrap();
    let project = format!("{}h", node.name.to_lowercase());
    let mut web = httpd_service("unused", &[], &[]);
    web.replicas = 2;
    // Each replica serves its hostname; only replica 1 starts healthy.
    web.template.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "hostname > /www/index.html; case $(hostname) in *-1) touch /tmp/healthy;; esac; exec httpd -f -p 8080 -h /www".into(),
    ]);
    web.template.healthcheck = Some(fizz::docker::Healthcheck {
        test: vec!["CMD".into(), "test".into(), "-f".into(), "/tmp/healthy".into()],
        interval: Some(Duration::from_millis(500)),
        timeout: Some(Duration::from_secs(2)),
        start_period: None,
        start_interval: None,
        retries: Some(1),
    });
    web.has_healthcheck = true;
    let client = httpd_service("client", &[], &[]);
    let plan = |web: &ServicePlan| ProjectPlan {
        name: project.clone(),
        services: [("web".to_string(), web.clone()), ("client".to_string(), client.clone())].into(),
        volumes: vec![],
    };
    let _: UpResponse = rt.block_on(agent.client().call(Method::POST, "/v1/up", Some(&UpRequest { project: plan(&web) }))).unwrap();
    wait_running(&rt, &agent, 3);
    wait_for("web-1 healthy", Duration::from_secs(30), || {
        ps(&rt, &agent).replicas.iter().any(|r| r.name.ends_with("web-1") && r.health == Some(fizz::docker::Health::Healthy))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let seen = spread(&rt, &agent, &project, "client", "http://web/", 20);
    assert_eq!(seen.len(), 1, "only the healthy replica answers: {seen:?}");
    assert!(seen.keys().all(|k| k.ends_with("web-1")), "{seen:?}");

    // Replica 2 turns healthy: it joins the VIP.
    let req = fizz::api::ExecRequest { project: project.clone(), service: "web".into(), replica: Some(2), cmd: vec!["touch".into(), "/tmp/healthy".into()] };
    let r: fizz::api::ExecResponse = rt.block_on(agent.client().call(Method::POST, "/v1/exec", Some(&req))).unwrap();
    assert_eq!(r.exit_code, 0, "touch in web-2: {}", r.output);
    wait_for("web-2 in the VIP", Duration::from_secs(30), || spread(&rt, &agent, &project, "client", "http://web/", 6).len() == 2).unwrap();

    // Scale up and down.
    let scale = |n: u32| {
        let req = fizz::api::ScaleRequest { project: project.clone(), service: "client".into(), replicas: n };
        rt.block_on(agent.client().call::<_, ()>(Method::POST, "/v1/scale", Some(&req))).unwrap();
    };
    scale(3);
    wait_running(&rt, &agent, 5);
    scale(1);
    wait_running(&rt, &agent, 3);
    assert_eq!(ps(&rt, &agent).replicas.iter().filter(|r| r.service == "client").count(), 1);

    // Changing one service recreates only its replicas.
    let ids = |svc: &str| -> Vec<Option<String>> {
        ps(&rt, &agent).replicas.iter().filter(|r| r.service == svc).map(|r| r.container_id.clone()).collect()
    };
    let (web_before, client_before) = (ids("web"), ids("client"));
    let mut web2 = web.clone();
    web2.template.env.insert("VERSION".into(), "2".into());
    let up: UpResponse = rt.block_on(agent.client().call(Method::POST, "/v1/up", Some(&UpRequest { project: plan(&web2) }))).unwrap();
    assert_eq!(up.changed, vec!["web".to_string()]);
    wait_for("web recreated", Duration::from_secs(60), || {
        let now = ids("web");
        now.len() == 2 && now.iter().all(|i| i.is_some() && !web_before.contains(i))
            && ps(&rt, &agent).replicas.iter().filter(|r| r.state == Some(RunState::Running)).count() == 3
    })
    .unwrap();
    assert_eq!(ids("client"), client_before, "the unchanged service was not touched");
}
