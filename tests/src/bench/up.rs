//! `fizz-bench up`: how long `fizz up` takes until every replica of a small
//! project runs, against Debian's `docker-compose up -d` (Compose v1), which
//! returns once its containers are started, of the same Compose file. Both
//! are timed as whole processes, in interleaved rounds (Fizz, docker-compose,
//! Fizz, …); each project is removed after its round, untimed.
//!
//! Fizz runs as one agent on a simulated node (a network namespace, as in the
//! integration tests), its containers plumbed into that namespace;
//! docker-compose puts its containers on the bridge network it makes for the
//! project (`<project>_default`) and removes with `down`. Every project name
//! is unique to the run, and guards remove whatever is left on any exit.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use fizz_tests::{fizz_bin, wait_for, AgentProc, DockerNodeGuard, Node, BUSYBOX_IMAGE};

use super::{
    host::{self, WorkDir},
    interrupt, plot,
    report::{self, Line, Results},
};

/// Options of `fizz-bench up`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Rounds, each one `fizz up` and one `docker-compose up -d`; the report
    /// gives their median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Replicas of the `web` service (the project has two more containers).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub web_replicas: u32,
    /// Seconds one `up` may take before the benchmark fails.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// How long removing a project may take.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a timed process is checked for its end.
const POLL: Duration = Duration::from_millis(1);

/// The project both tools start: a store with a healthcheck, an api started
/// after it (`service_started`, so neither tool waits for health), and a
/// replicated web tier. Compose v1 honours `deploy.replicas` as Fizz does
/// (and refuses `scale` next to it), so one file serves both.
fn compose_file(web_replicas: u32) -> String {
    format!(
        r#"# Written by `fizz-bench up`: started by `fizz up` and by `docker-compose up -d`.
services:
  store:
    image: {BUSYBOX_IMAGE}
    command: ["sh", "-c", "touch /www/ok && exec httpd -f -p 8080 -h /www"]
    healthcheck:
      test: ["CMD", "test", "-f", "/www/ok"]
      interval: 1s
      retries: 3
  api:
    image: {BUSYBOX_IMAGE}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    depends_on:
      store:
        condition: service_started
  web:
    image: {BUSYBOX_IMAGE}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    deploy:
      replicas: {web_replicas}
    depends_on: [api]
"#
    )
}

/// The docker-compose projects of this run that may have left something:
/// on drop, their containers and networks are removed by their Compose
/// project label (and the default network by its name).
struct ComposeProjects(Vec<String>);

impl Drop for ComposeProjects {
    fn drop(&mut self) {
        for project in &self.0 {
            let label = compose_label(project);
            if let Ok(ids) = docker_ids(&["ps", "-aq"], &label) {
                if !ids.is_empty() {
                    let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
                }
            }
            if let Ok(ids) = docker_ids(&["network", "ls", "-q"], &label) {
                if !ids.is_empty() {
                    let _ = Command::new("docker").args(["network", "rm"]).args(&ids).output();
                }
            }
            let _ = Command::new("docker").args(["network", "rm", &format!("{project}_default")]).output();
        }
    }
}

fn compose_label(project: &str) -> String {
    format!("label=com.docker.compose.project={project}")
}

/// The IDs `docker <list…> --filter <filter>` prints.
fn docker_ids(list: &[&str], filter: &str) -> Result<Vec<String>> {
    let out = Command::new("docker").args(list).args(["--filter", filter]).output().context("running docker")?;
    if !out.status.success() {
        bail!("`docker {} --filter {filter}` failed: {}", list.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect())
}

/// While alive, this process's standard error goes to a file; processes
/// started meanwhile keep writing there (the agent's log).
struct StderrTo {
    saved: libc::c_int,
}

impl StderrTo {
    fn file(path: &Path) -> Result<StderrTo> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: dup of standard error, an open descriptor of this process.
        let saved = unsafe { libc::dup(2) };
        if saved < 0 {
            bail!("duplicating standard error: {}", std::io::Error::last_os_error());
        }
        let guard = StderrTo { saved };
        // SAFETY: both descriptors are open (the file's until the end of
        // this function); only descriptor 2 is replaced, and no other thread
        // writes to it during the set-up.
        if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
            bail!("redirecting standard error: {}", std::io::Error::last_os_error());
        }
        Ok(guard)
    }
}

impl Drop for StderrTo {
    fn drop(&mut self) {
        // SAFETY: `saved` is the descriptor dup returned, owned here.
        unsafe {
            libc::dup2(self.saved, 2);
            libc::close(self.saved);
        }
    }
}

/// Everything the rounds use; dropped in field order: the Compose projects,
/// the agent, its containers, its node, then the directory.
struct Bench {
    compose: ComposeProjects,
    agent: AgentProc,
    _containers: DockerNodeGuard,
    _node: Node,
    work: WorkDir,
    file: PathBuf,
    fizz: PathBuf,
    /// The prefix of every project name of this run.
    base: String,
    /// Containers the project has.
    containers: usize,
    timeout: Duration,
    results: Results,
    /// Per round: Fizz's and docker-compose's time.
    rounds: Vec<(f64, f64)>,
}

pub fn run(opts: &Options) -> Result<()> {
    if !fizz_tests::privileged() {
        bail!("the benchmark needs root (network namespaces, eBPF, Docker)");
    }
    interrupt::install()?;
    if !fizz_tests::docker_available() {
        bail!("no Docker engine answers (`docker info` fails)");
    }
    host::ensure(&[("docker-compose", "docker-compose")])?;
    let version =
        Command::new("docker-compose").args(["version", "--short"]).output().context("running docker-compose")?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    fizz_tests::ensure_busybox_image().context("importing the busybox image")?;
    let fizz = fizz_bin().context("the benchmark runs the release `fizz`, which `cargo xtask bench up` builds")?;
    let out_dir = report::out_dir()?;

    let base = fizz_tests::unique("U").to_lowercase();
    let work = WorkDir::new(&format!("{base}-bench"))?;
    let file = work.join("compose.yaml");
    std::fs::write(&file, compose_file(opts.web_replicas)).with_context(|| format!("writing {}", file.display()))?;

    eprintln!("setting up: a node with a Fizz agent");
    let node = Node::new().context("creating the node")?;
    let containers = DockerNodeGuard(node.name.clone());
    let agent_log = out_dir.join("up-agent.log");
    let agent = {
        let _log = StderrTo::file(&agent_log)?;
        AgentProc::start(&node, &[])
    }
    .with_context(|| format!("starting the agent (its log: {})", agent_log.display()))?;
    eprintln!("  node {}, agent log {}", node.name, report::display(&agent_log));
    let mut bench = Bench {
        compose: ComposeProjects(Vec::new()),
        agent,
        _containers: containers,
        _node: node,
        work,
        file,
        fizz,
        base,
        containers: opts.web_replicas as usize + 2,
        timeout: Duration::from_secs(opts.timeout),
        results: Results::default(),
        rounds: Vec::new(),
    };
    eprintln!("warming up: one unrecorded round");
    bench.round("w")?;
    for r in 1..=opts.rounds {
        eprintln!("round {r}/{}", opts.rounds);
        let (fizz, compose) = bench.round(&r.to_string())?;
        bench.results.push("up/fizz", "s", fizz);
        bench.results.push("up/docker_compose", "s", compose);
        bench.rounds.push((fizz, compose));
        eprintln!("  fizz up {fizz:.3} s, docker-compose up -d {compose:.3} s");
    }
    bench.report(&out_dir, opts.rounds, &version)
}

impl Bench {
    /// One `fizz up` then one `docker-compose up -d`, each removed after;
    /// their times in seconds.
    fn round(&mut self, tag: &str) -> Result<(f64, f64)> {
        let project = format!("{}f{tag}", self.base);
        let fizz = self.fizz_up(&project)?;
        self.fizz_down(&project)?;
        let project = format!("{}c{tag}", self.base);
        let compose = self.compose_up(&project)?;
        self.compose_down(&project)?;
        Ok((fizz, compose))
    }

    fn fizz_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.fizz);
        cmd.arg("--socket").arg(&self.agent.socket);
        cmd
    }

    fn compose_cmd(&self, project: &str) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", project, "-f"]).arg(&self.file);
        cmd
    }

    fn fizz_up(&mut self, project: &str) -> Result<f64> {
        let mut cmd = self.fizz_cmd();
        cmd.args(["up", "-f"]).arg(&self.file).args(["-p", project]);
        let (took, out) = timed(cmd, &format!("`fizz up -p {project}`"), &self.work.join("fizz-up.log"), self.timeout)?;
        // `fizz up` also returns when a replica exited: it must say all run.
        let want = format!("project {project}: {} replicas up", self.containers);
        if !out.contains(&want) {
            bail!("`fizz up -p {project}` returned without every replica running (no `{want}`):\n{}", out.trim());
        }
        Ok(took)
    }

    fn fizz_down(&mut self, project: &str) -> Result<()> {
        let out = self.fizz_cmd().args(["down", "-p", project]).output().context("running fizz down")?;
        if !out.status.success() {
            bail!("`fizz down -p {project}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let label = format!("label=fizz.project={project}");
        wait_for(&format!("the containers of Fizz project {project} to be removed"), DOWN_TIMEOUT, || {
            docker_ids(&["ps", "-aq"], &label).is_ok_and(|ids| ids.is_empty())
        })
    }

    fn compose_up(&mut self, project: &str) -> Result<f64> {
        // Registered first: a failed `up` may leave containers behind.
        self.compose.0.push(project.to_string());
        let mut cmd = self.compose_cmd(project);
        cmd.args(["up", "-d"]);
        let what = format!("`docker-compose -p {project} up -d`");
        let (took, out) = timed(cmd, &what, &self.work.join("compose-up.log"), self.timeout)?;
        let running = docker_ids(&["ps", "-q", "--filter", "status=running"], &compose_label(project))?;
        if running.len() != self.containers {
            bail!("{what} returned with {} of {} containers running:\n{}", running.len(), self.containers, out.trim());
        }
        Ok(took)
    }

    fn compose_down(&mut self, project: &str) -> Result<()> {
        let out = self
            .compose_cmd(project)
            .args(["down", "-t", "1", "-v", "--remove-orphans"])
            .output()
            .context("running docker-compose down")?;
        if !out.status.success() {
            bail!("`docker-compose -p {project} down` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let label = compose_label(project);
        let containers = docker_ids(&["ps", "-aq"], &label)?;
        let networks = docker_ids(&["network", "ls", "-q"], &label)?;
        if !containers.is_empty() || !networks.is_empty() {
            bail!(
                "`docker-compose -p {project} down` left {} containers and {} networks",
                containers.len(),
                networks.len()
            );
        }
        self.compose.0.retain(|p| p != project);
        Ok(())
    }

    fn report(&self, out_dir: &Path, rounds: u32, version: &str) -> Result<()> {
        let metric = format!("time to {} containers running", self.containers);
        let compose_name = format!("docker-compose up -d ({version})");
        let mut lines = Vec::new();
        for (key, scenario, against) in [
            ("up/fizz", "fizz up (until every replica runs)".to_string(), Some("up/docker_compose")),
            ("up/docker_compose", compose_name.clone(), None),
        ] {
            if let Some(entry) = self.results.entry(key, against) {
                lines.push(Line { key: key.into(), scenario, metric: metric.clone(), entry });
            }
        }
        println!("\n`up` benchmark: median of {rounds} interleaved rounds (after one unrecorded warm-up round).");
        println!(
            "Each tool is timed as a whole process, from its start to its exit (checked every {} ms): `fizz up` \
             (no -d) exits once every replica runs; `docker-compose up -d` once it started every container.",
            POLL.as_millis()
        );
        println!(
            "The project: store (healthcheck), api (depends_on store: service_started), web ({} replicas), all \
             {BUSYBOX_IMAGE}, one Compose file for both (Compose v1 honours deploy.replicas).",
            self.containers - 2
        );
        println!("ratio = median over rounds of fizz / docker-compose in the same round.");
        println!();
        print!("{}", report::table(std::slice::from_ref(&lines)));
        println!();
        if let Some(ratio) = lines.first().and_then(|l| l.entry.ratio_to_direct) {
            let verdict = if ratio <= 1.2 { "met" } else { "NOT met" };
            println!("fizz up / docker-compose up -d: {ratio:.2}x (target <= 1.2x: {verdict})");
        }
        println!(
            "Fizz: one agent on a simulated node; `fizz up` polls the agent every 200 ms, so its times are \
             quantized that much. docker-compose: containers on the bridge network it makes, <project>_default."
        );

        let json = out_dir.join("up.json");
        report::write_json(&json, &lines)?;
        println!("\nwrote {}", report::display(&json));
        match self.plot(out_dir, &compose_name) {
            Ok(png) => println!("wrote {}", report::display(&png)),
            Err(e) => println!("plot skipped: {e:#}"),
        }
        Ok(())
    }

    /// Bars of both tools' time per round, then their medians.
    fn plot(&self, out_dir: &Path, compose_name: &str) -> Result<PathBuf> {
        let mut data = String::from("# round, seconds: fizz docker_compose\n");
        for (i, (fizz, compose)) in self.rounds.iter().enumerate() {
            data += &format!("\"{}\" {fizz:.4} {compose:.4}\n", i + 1);
        }
        let median = |key| self.results.entry(key, None).map_or(f64::NAN, |e| e.median);
        data += &format!("\"median\" {:.4} {:.4}\n", median("up/fizz"), median("up/docker_compose"));
        let n = self.containers;
        plot::draw_with(out_dir, "up", &data, |png, dat| {
            format!(
                r#"set terminal pngcairo size 800,450 font "sans,10"
set output '{png}'
set title "Time until {n} containers run: fizz up vs docker-compose up -d"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set ylabel "seconds"
set xlabel "round"
set grid ytics
set key top left
plot '{dat}' using 2:xtic(1) title 'fizz up (until every replica runs)', \
     '' using 3 title '{compose_name}'
"#,
                png = png.display(),
                dat = dat.display(),
            )
        })
    }
}

/// Runs `cmd` to its end, its output going to `log`; returns the seconds it
/// took and its output. Fails with the output when it fails, takes longer
/// than `timeout` (it is killed) or a stop is asked for.
fn timed(mut cmd: Command, what: &str, log: &Path, timeout: Duration) -> Result<(f64, String)> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break status;
        }
        if interrupt::requested() || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            interrupt::check()?;
            bail!("{what} took more than {timeout:?}:\n{}", read_log().trim());
        }
        std::thread::sleep(POLL);
    };
    let took = start.elapsed().as_secs_f64();
    let output = read_log();
    if !status.success() {
        bail!("{what} failed ({status}):\n{}", output.trim());
    }
    Ok((took, output))
}
