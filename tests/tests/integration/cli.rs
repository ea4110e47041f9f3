//! The `fizz` command line against an agent on a simulated node: the
//! README's example app deployed with `fizz up`, answering by name through
//! VIPs; `up` twice recreates nothing; invalid input creates nothing;
//! `down` leaves nothing.

use std::{path::Path, process::Command};

use fizz_tests::{fizz_bin, require_docker, AgentProc, DockerNodeGuard, Node};

/// A directory removed on drop, even when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fizz(agent: &AgentProc, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fizz_bin().unwrap()).arg("--socket").arg(&agent.socket).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/compose.yaml").display().to_string()
}

fn container_ids(agent: &AgentProc, project: &str) -> Vec<String> {
    let (ok, out, err) = fizz(agent, &["ps", "-p", project, "--json"]);
    assert!(ok, "{err}");
    let ps: fizz::api::PsResponse = serde_json::from_str(&out).unwrap();
    ps.replicas.into_iter().filter_map(|r| r.container_id).collect()
}

#[test]
fn the_example_app_runs_and_answers_by_name() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let agent = AgentProc::start(&node, &[]).unwrap();
    let project = format!("{}d", node.name.to_lowercase());

    let (ok, out, err) = fizz(&agent, &["up", "-f", &example(), "-p", &project, "--wait"]);
    assert!(ok, "fizz up failed: {out}\n{err}");
    assert!(out.contains("5 replicas up"), "{out}");
    assert!(out.contains(&format!("service {project}/web: VIP 10.43.")), "{out}");

    // web → api (by name, through its VIP) → store (by name).
    let mut webs = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (ok, out, err) = fizz(&agent, &["exec", "-p", &project, "web", "--", "wget", "-qO-", "http://web:8080/cgi-bin/hello"]);
        assert!(ok, "{err}");
        assert!(out.contains("read the store: hello from the store"), "{out}");
        webs.insert(out.split_whitespace().nth(1).unwrap_or_default().to_string());
    }
    assert_eq!(webs.len(), 3, "the web VIP spreads over its 3 replicas: {webs:?}");

    // `up` again: nothing is recreated.
    let before = container_ids(&agent, &project);
    assert_eq!(before.len(), 5);
    let (ok, out, err) = fizz(&agent, &["up", "-f", &example(), "-p", &project, "--wait"]);
    assert!(ok && !out.contains("(updated)"), "{out}\n{err}");
    assert_eq!(container_ids(&agent, &project), before);

    // `config` prints the normalized project without an agent.
    let (ok, out, _) = fizz(&agent, &["config", "-f", &example(), "-p", &project]);
    assert!(ok && out.contains("replicas: 3") && out.contains("condition: service_healthy"), "{out}");

    let (ok, _, err) = fizz(&agent, &["down", "-p", &project]);
    assert!(ok, "{err}");
    assert!(container_ids(&agent, &project).is_empty());
    let left = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=fizz.project={project}")]).output().unwrap();
    assert!(left.stdout.is_empty(), "no container left");
}

/// (file content, what the error must mention)
#[test]
fn invalid_compose_files_name_the_problem_and_create_nothing() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let agent = AgentProc::start(&node, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!("{}-compose", node.name));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = RemoveOnDrop(dir.clone());
    let cases: &[(&str, &str)] = &[
        ("services:\n  web:\n    image: x\n    depends_on: [db]\n", "depends_on"),
        ("services:\n  web:\n    image: x\n    ports: 80\n", "ports"),
        ("services:\n  web:\n    image: [x\n", "line 3 column 12"),
        ("services:\n  web:\n    image: x\n    healthcheck:\n      interval: soon\n", "interval"),
        ("services:\n  web:\n    image: ${MISSING?set MISSING first}\n", "set MISSING first"),
        ("services:\n  web:\n    build: .\n", "image"),
        (
            "services:\n  web:\n    image: x\n    deploy:\n      placement:\n        constraints: [\"node.labels.zone = a\"]\n",
            "services.web.deploy.placement.constraints[0]: constraint \"node.labels.zone = a\": expected == or !=",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.join("compose.yaml");
        std::fs::write(&file, text).unwrap();
        let project = format!("{}bad{i}", node.name.to_lowercase());
        let (ok, out, err) = fizz(&agent, &["up", "-f", file.to_str().unwrap(), "-p", &project]);
        assert!(!ok, "case {i} must fail: {out}");
        assert!(err.contains(want), "case {i}: the error should mention `{want}`: {err}");
        let (_, ps, _) = fizz(&agent, &["ps", "--json"]);
        let ps: fizz::api::PsResponse = serde_json::from_str(&ps).unwrap();
        assert!(ps.projects.is_empty() && ps.replicas.is_empty(), "case {i} created something: {ps:?}");
    }
    let (ok, _, err) = fizz(&agent, &["down", "-p", "nothing-here"]);
    assert!(!ok && err.contains("not deployed"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn volumes_bind_mounts_logs_and_down_with_volumes() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let agent = AgentProc::start(&node, &[]).unwrap();
    let project = format!("{}v", node.name.to_lowercase());
    let dir = std::env::temp_dir().join(format!("{}-vol", node.name));
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let _dir = RemoveOnDrop(dir.clone());
    std::fs::write(dir.join("conf/c"), "from the bind mount\n").unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            "services:\n  writer:\n    image: {}\n    command: [\"sh\", \"-c\", \"echo started; echo kept > /data/f; cat /conf/c; exec sleep 3600\"]\n    volumes: [\"store:/data\", \"./conf:/conf:ro\"]\n    stop_grace_period: 1s\nvolumes:\n  store: {{}}\n",
            fizz_tests::BUSYBOX_IMAGE
        ),
    )
    .unwrap();
    let file = dir.join("compose.yaml");
    let (ok, out, err) = fizz(&agent, &["up", "-f", file.to_str().unwrap(), "-p", &project]);
    assert!(ok, "{out}\n{err}");
    let mut logs = String::new();
    fizz_tests::wait_for("the writer's output", std::time::Duration::from_secs(20), || {
        logs = fizz(&agent, &["logs", "-p", &project, "writer"]).1;
        logs.contains("from the bind mount")
    })
    .unwrap_or_else(|e| panic!("{e}: {logs}"));
    assert!(logs.contains("started") && logs.contains(&format!("{project}-writer-1 | ")), "{logs}");
    // `logs -f` keeps streaming: a line written later arrives.
    let mut follow = std::process::Command::new(fizz_bin().unwrap())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["logs", "-p", &project, "writer", "-f", "--tail", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    // A watchdog: if no line comes, the read ends when `logs -f` is killed.
    let pid = follow.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(20));
        // SAFETY: signalling a child this test started (harmless if it is gone).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (ok, _, err) = fizz(&agent, &["exec", "-p", &project, "writer", "--", "sh", "-c", "echo followed > /proc/1/fd/1"]);
    assert!(ok, "{err}");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.contains("followed"), "{line}");
    let _ = follow.kill();
    let _ = follow.wait();

    let (ok, out, _) = fizz(&agent, &["exec", "-p", &project, "writer", "--", "cat", "/data/f"]);
    assert!(ok && out.trim() == "kept", "{out}");
    let volume = format!("{project}_store");
    let has_volume = || Command::new("docker").args(["volume", "inspect", &volume]).output().unwrap().status.success();
    assert!(has_volume(), "the named volume exists");
    let (ok, _, err) = fizz(&agent, &["down", "-p", &project, "--volumes"]);
    assert!(ok, "{err}");
    assert!(!has_volume(), "down --volumes removed {volume}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The keys `fizz up` honours reach Docker: checked on the created container
/// with `docker inspect`.
#[test]
fn compose_keys_reach_the_container() {
    require_docker!();
    let node = Node::new().unwrap();
    let _containers = DockerNodeGuard(node.name.clone());
    let agent = AgentProc::start(&node, &[]).unwrap();
    let project = format!("{}k", node.name.to_lowercase());
    let dir = std::env::temp_dir().join(format!("{}-keys", node.name));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = RemoveOnDrop(dir.clone());
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            r#"services:
  app:
    image: {image}
    entrypoint: ["sh", "-c"]
    command: ["echo ready; exec sleep 3600"]
    working_dir: /tmp
    user: "1000:1000"
    environment:
      GREETING: hello
    labels:
      team: core
    tmpfs: ["/scratch"]
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    ulimits:
      nofile: {{soft: 1024, hard: 2048}}
    init: true
    stop_signal: SIGINT
    stop_grace_period: 3s
    restart: unless-stopped
    read_only: true
    deploy:
      resources:
        limits: {{cpus: "0.5", memory: 64M}}
"#,
            image = fizz_tests::BUSYBOX_IMAGE
        ),
    )
    .unwrap();
    let file = dir.join("compose.yaml");
    let (ok, out, err) = fizz(&agent, &["up", "-f", file.to_str().unwrap(), "-p", &project]);
    assert!(ok, "{out}\n{err}");
    let name = format!("{project}-app-1");
    let inspect = Command::new("docker").args(["inspect", &name]).output().unwrap();
    assert!(inspect.status.success());
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let c = &v[0];
    let cfg = &c["Config"];
    let host = &c["HostConfig"];
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["sh", "-c"]));
    assert_eq!(cfg["Cmd"], serde_json::json!(["echo ready; exec sleep 3600"]));
    assert_eq!(cfg["WorkingDir"], "/tmp");
    assert_eq!(cfg["User"], "1000:1000");
    assert!(cfg["Env"].as_array().unwrap().iter().any(|e| e == "GREETING=hello"), "{}", cfg["Env"]);
    assert_eq!(cfg["Labels"]["team"], "core");
    assert_eq!(cfg["Labels"]["fizz.project"], project.as_str());
    assert_eq!(cfg["StopSignal"], "SIGINT");
    assert_eq!(cfg["StopTimeout"], 3);
    assert_eq!(host["NetworkMode"], "none", "Fizz plumbs the network itself");
    assert!(host["Tmpfs"].get("/scratch").is_some(), "{}", host["Tmpfs"]);
    assert_eq!(host["CapAdd"], serde_json::json!(["NET_ADMIN"]));
    assert_eq!(host["CapDrop"], serde_json::json!(["MKNOD"]));
    assert_eq!(host["Ulimits"][0]["Name"], "nofile");
    assert_eq!(host["Ulimits"][0]["Hard"], 2048);
    assert_eq!(host["Init"], true);
    assert_eq!(host["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["Memory"], 64 * 1024 * 1024);
    assert_eq!(host["Dns"], serde_json::json!(["169.254.1.1"]), "containers ask the node's Fizz DNS");
    let (ok, _, err) = fizz(&agent, &["down", "-p", &project]);
    assert!(ok, "{err}");
}
