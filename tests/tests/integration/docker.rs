//! Docker containers with no Docker networking, plumbed by Fizz and reached
//! through the datapath.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use fizz::{
    docker::{labels, ContainerSpec, Docker, RunState},
    net::plumb::{self, PlumbRequest},
};
use fizz_tests::{require_docker, wait_for, DockerNodeGuard, Node, BUSYBOX_IMAGE};

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
}

#[test]
fn a_docker_container_is_plumbed_and_reached_through_the_datapath() {
    require_docker!();
    let node = Node::new().unwrap();
    let _guard = DockerNodeGuard(node.name.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let docker = rt.block_on(Docker::connect()).unwrap();
    let addr = Ipv4Addr::new(10, 42, 0, 9);
    let spec = ContainerSpec {
        name: format!("{}-web-1", node.name),
        image: BUSYBOX_IMAGE.into(),
        labels: [(labels::NODE.to_string(), node.name.clone())].into(),
        command: Some(vec!["sh".into(), "-c".into(), "echo hi > /www/index.html && exec httpd -f -p 8080 -h /www".into()]),
        ..Default::default()
    };
    let id = rt.block_on(async {
        let id = docker.create(&spec).await?;
        docker.start(&id).await?;
        Ok::<_, fizz::docker::DockerError>(id)
    })
    .unwrap();
    let info = rt.block_on(docker.inspect(&id)).unwrap().unwrap();
    assert_eq!(info.state, RunState::Running);
    let pid = info.pid.expect("a running container has a pid");

    let mut dp = node.datapath().unwrap();
    let client = node.container(Ipv4Addr::new(10, 42, 0, 2)).unwrap();
    node.attach(&mut dp, &client.host_if).unwrap();
    dp.set_endpoint(client.addr, client.endpoint()).unwrap();

    let host_if = format!("{}w", node.name);
    let req = PlumbRequest { pid, host_if: host_if.clone(), addr, mac: plumb::container_mac(addr), mtu: 1500 };
    let wired = node.ns.run(|| plumb::plumb(&req)).unwrap().unwrap();
    node.attach(&mut dp, &wired.host_if).unwrap();
    dp.set_endpoint(addr, fizz_common::Endpoint { ifindex: wired.host_ifindex, mac: req.mac, node_mac: wired.node_mac, net_mask: 0, netns_cookie: 0 }).unwrap();

    let target = SocketAddr::from((addr, 8080));
    let body = client
        .ns
        .run(|| {
            let mut last = String::new();
            wait_for("httpd in the container", Duration::from_secs(10), || match get(target) {
                Ok(b) => {
                    last = b;
                    true
                }
                Err(_) => false,
            })
            .map(|()| last)
        })
        .unwrap()
        .unwrap();
    assert_eq!(body, "hi");

    // Plumbing again (an agent adopting after a crash) replaces the veth.
    let again = node.ns.run(|| plumb::plumb(&req)).unwrap().unwrap();
    assert_ne!(again.host_ifindex, wired.host_ifindex);
    node.ns.run(|| plumb::unplumb(&host_if)).unwrap().unwrap();
    assert_eq!(node.ns.run(|| plumb::host_link(&host_if)).unwrap().unwrap(), None);
    rt.block_on(docker.remove(&id, Some(Duration::from_secs(1)))).unwrap();
    assert_eq!(rt.block_on(docker.inspect(&id)).unwrap(), None);
}
