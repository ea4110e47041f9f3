//! The Docker engine restarted under a running agent: the agent reconnects,
//! adopts the containers that come back (re-plumbing them: they return in new
//! network namespaces) and serves again, recreating nothing.
//!
//! This is its own test binary because restarting the engine disturbs every
//! other test that uses Docker; cargo runs test binaries one at a time.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use fizz_tests::{fizz_bin, require_docker, wait_for, AgentProc, DockerNodeGuard, Node, BUSYBOX_IMAGE};

fn fizz(agent: &AgentProc, args: &[&str]) -> (bool, String) {
    let out = Command::new(fizz_bin().unwrap()).arg("--socket").arg(&agent.socket).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[allow(clippy::zombie_processes, reason = "the engine must outlive this test; init reaps it")]
fn restart_engine() {
    let pid = String::from_utf8_lossy(&Command::new("pidof").arg("dockerd").output().unwrap().stdout).trim().to_string();
    assert!(!pid.is_empty(), "no dockerd to restart");
    Command::new("kill").arg(&pid).status().unwrap();
    wait_for("dockerd to stop", Duration::from_secs(60), || !Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().unwrap().success()).unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open("/var/log/fizz-dockerd.log").unwrap();
    let mut cmd = Command::new("dockerd");
    cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid is async-signal-safe; the engine must outlive this test.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().unwrap();
    wait_for("dockerd to answer", Duration::from_secs(60), fizz_tests::docker_available).unwrap();
}

#[test]
fn the_agent_adopts_what_comes_back_after_an_engine_restart() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let agent = AgentProc::start(&node, &[]).unwrap();
    let project = format!("{}e", node.name.to_lowercase());
    let dir = std::env::temp_dir().join(format!("{}-engine", node.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("compose.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  web:\n    image: {BUSYBOX_IMAGE}\n    restart: always\n    command: [\"sh\", \"-c\", \"echo up > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n    ports: [\"8080\"]\n  client:\n    image: {BUSYBOX_IMAGE}\n    restart: always\n    command: [\"sleep\", \"3600\"]\n"
        ),
    )
    .unwrap();
    let (ok, out) = fizz(&agent, &["up", "-f", file.to_str().unwrap(), "-p", &project]);
    assert!(ok, "{out}");
    let call = || fizz(&agent, &["exec", "-p", &project, "client", "--", "wget", "-qO-", "http://web:8080/"]);
    wait_for("web to answer", Duration::from_secs(30), || call().1.trim() == "up").unwrap();
    let ids = |a: &AgentProc| {
        let (_, out) = fizz(a, &["ps", "-p", &project, "--json"]);
        let ps: fizz::api::PsResponse = serde_json::from_str(&out).unwrap();
        ps.replicas.into_iter().filter_map(|r| r.container_id).collect::<Vec<_>>()
    };
    let before = ids(&agent);
    assert_eq!(before.len(), 2);

    restart_engine();
    let mut last = String::new();
    wait_for("web to answer again", Duration::from_secs(90), || {
        last = call().1;
        last.trim() == "up"
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(ids(&agent), before, "the same containers, adopted and re-plumbed");
    let (ok, out) = fizz(&agent, &["down", "-p", &project]);
    assert!(ok, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
