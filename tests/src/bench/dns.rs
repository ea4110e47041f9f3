//! `fizz-bench dns`: Fizz's DNS server against NSD, an authoritative server,
//! serving the same A records (`svc<i>.bench.fizz`) on loopback.
//!
//! Fizz's server is the library's (`fizz::dns::Server`) on a tokio runtime
//! of two workers in this process, as in the agent, with no upstream; NSD
//! runs as a child process (one server process, response rate limiting off)
//! with its own configuration, zone and state files in a scratch directory.
//! Both listen on 127.0.0.1 only.
//!
//! Throughput comes from dnsperf (one client, then four); latency from a
//! paced client here, which sends at a fixed rate, timestamps every query and
//! its answer and reports percentiles (dnsperf 2.10 reports only the mean).
//! Measurements are interleaved: every round measures each metric on Fizz,
//! then on NSD.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use fizz::dns::{Records, ServiceEntry, SharedRecords};

use super::{
    host::{self, WorkDir},
    interrupt, plot,
    report::{self, Line, Results},
};

/// Options of `fizz-bench dns`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Rounds of every measurement; the report gives their median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 5.0, value_parser = parse_secs)]
    pub secs: f64,
    /// Names served by both (`svc0.bench.fizz` …), each an A record.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub names: u32,
    /// Queries per second of the latency measurement.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds from 1 to 600")),
    }
}

/// The project the names belong to: `svc<i>.bench.fizz`.
const PROJECT: &str = "bench";

/// TTL of NSD's records, as Fizz's VIP answers have.
const TTL: u32 = fizz::dns::VIP_TTL;

/// How long the paced client waits for the last answers.
const GRACE: Duration = Duration::from_secs(1);

/// How long NSD may take to answer after its start.
const NSD_READY: Duration = Duration::from_secs(10);

/// Seconds of each warm-up measurement.
const WARM_UP_SECS: f64 = 1.0;

/// dnsperf loads: (key, clients, threads, queries in flight).
const LOADS: [(&str, u32, u32, u32); 2] = [("qps_1_client", 1, 1, 100), ("qps_4_clients", 4, 2, 100)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Fizz,
    Nsd,
}

impl Target {
    const ALL: [Target; 2] = [Target::Fizz, Target::Nsd];

    fn key(self) -> &'static str {
        match self {
            Target::Fizz => "fizz",
            Target::Nsd => "nsd",
        }
    }
}

/// The name of service `i` and its address.
fn name(i: u32) -> String {
    format!("svc{i}.{PROJECT}.fizz")
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 43, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Fizz's server on its own runtime; stopped on drop (the server first).
struct FizzDns {
    server: fizz::dns::Server,
    _rt: tokio::runtime::Runtime,
}

impl FizzDns {
    fn start(names: u32) -> Result<FizzDns> {
        let services = (0..names).map(|i| ServiceEntry {
            project: PROJECT.into(),
            name: format!("svc{i}"),
            vip: vip(i),
            aliases: Vec::new(),
            tasks: Vec::new(),
        });
        let records = SharedRecords::new(Records::build(services, []));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server =
            rt.block_on(fizz::dns::Server::bind(addr, records, Vec::new())).context("binding Fizz's DNS server")?;
        Ok(FizzDns { server, _rt: rt })
    }
}

/// NSD as a child process in a process group of its own (its server and
/// transfer processes are forked from it); the group is stopped on drop.
struct Nsd {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Nsd {
    fn start(dir: &Path, names: u32) -> Result<Nsd> {
        let nsd = host::find("nsd").context("nsd is missing")?;
        let port = free_port().context("finding a free port for NSD")?;
        let d = dir.display();
        let mut zone = format!(
            "$ORIGIN {PROJECT}.fizz.\n$TTL {TTL}\n@ IN SOA ns.{PROJECT}.fizz. hostmaster.{PROJECT}.fizz. 1 3600 600 86400 {TTL}\n\
             @ IN NS ns.{PROJECT}.fizz.\nns IN A 127.0.0.1\n"
        );
        for i in 0..names {
            zone += &format!("svc{i} IN A {}\n", vip(i));
        }
        let zone_file = dir.join("zone");
        std::fs::write(&zone_file, zone).with_context(|| format!("writing {}", zone_file.display()))?;
        let conf = format!(
            r#"server:
    ip-address: 127.0.0.1
    port: {port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    verbosity: 1
    hide-version: yes
    minimal-responses: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "{PROJECT}.fizz"
    zonefile: "{d}/zone"
"#
        );
        let conf_file = dir.join("nsd.conf");
        std::fs::write(&conf_file, conf).with_context(|| format!("writing {}", conf_file.display()))?;
        let log = dir.join("nsd.log");
        let stderr = std::fs::File::create(dir.join("nsd.stderr")).context("creating nsd.stderr")?;
        let child = Command::new(nsd)
            .arg("-d")
            .arg("-c")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .context("starting nsd")?;
        Ok(Nsd { child, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), log })
    }

    /// Fails with NSD's log once it has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let stderr = self.log.with_file_name("nsd.stderr");
            let text = std::fs::read_to_string(&self.log).unwrap_or_default()
                + &std::fs::read_to_string(stderr).unwrap_or_default();
            bail!("nsd exited ({status}):\n{}", text.trim());
        }
        Ok(())
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill on the process group this struct's child leads; it
        // is not reaped yet, so its id (and so the group's) is still ours.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                // Its server process may outlive it by a moment: wait until
                // the group is empty (a group's id is not reused while it
                // has members).
                // SAFETY: signal 0 only checks whether the group exists.
                while start.elapsed() < Duration::from_secs(5) && unsafe { libc::kill(group, 0) } == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above; the leader did not exit, so it is not reaped.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 at the time of the call.
fn free_port() -> Result<u16> {
    for _ in 0..32 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port of 127.0.0.1 was free for both UDP and TCP")
}

/// A query for the A record of `name`, recursion desired (as dnsperf sends).
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}

/// Whether `reply` is a whole response (not truncated) with NOERROR and at
/// least one answer.
fn answered(reply: &[u8]) -> bool {
    reply.len() >= 12
        && reply[2] & 0x80 != 0
        && reply[2] & 0x02 == 0
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) >= 1
}

/// Asks `server` for every name once and checks the address of each answer
/// (the last four bytes: with no EDNS and minimal answers, the A record is
/// the reply's last record).
fn verify(server: SocketAddr, names: u32) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 512];
    for i in 0..names {
        let id = (i % 65_536) as u16;
        let q = query(id, &name(i));
        let reply = (0..3)
            .find_map(|_| {
                socket.send(&q).ok()?;
                loop {
                    let n = socket.recv(&mut buf).ok()?;
                    if n >= 12 && buf[..2] == id.to_be_bytes() {
                        return Some(buf[..n].to_vec());
                    }
                }
            })
            .ok_or_else(|| anyhow!("no answer for {} from {server}", name(i)))?;
        if !answered(&reply) || reply[reply.len() - 4..] != vip(i).octets() {
            bail!("{server} answered {} wrongly: {reply:02x?}", name(i));
        }
    }
    Ok(())
}

/// A dnsperf run's numbers.
#[derive(Debug)]
struct Perf {
    qps: f64,
    lost: u64,
}

/// Runs dnsperf against `server` with the queries in `file`.
fn dnsperf(server: SocketAddr, file: &Path, secs: f64, clients: u32, threads: u32, in_flight: u32) -> Result<Perf> {
    interrupt::check()?;
    let out = Command::new("dnsperf")
        .args(["-s", &server.ip().to_string(), "-p", &server.port().to_string(), "-d"])
        .arg(file)
        .args(["-l", &secs.to_string(), "-c", &clients.to_string(), "-T", &threads.to_string()])
        .args(["-q", &in_flight.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf")?;
    interrupt::check()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("dnsperf failed ({}): {}{}", out.status, text.trim(), String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_dnsperf(&text)
}

/// The numbers of dnsperf's statistics; fails when nothing was answered or
/// some answers were not NOERROR.
fn parse_dnsperf(text: &str) -> Result<Perf> {
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
            .with_context(|| format!("no `{label}` in dnsperf's output:\n{text}"))
    };
    let first_number = |label: &str| -> Result<f64> {
        let v = field(label)?;
        v.split_whitespace().next().and_then(|w| w.parse().ok()).with_context(|| format!("`{label} {v}` from dnsperf"))
    };
    if first_number("Queries completed:")? == 0.0 {
        bail!("no query was answered:\n{text}");
    }
    let codes = field("Response codes:")?;
    if !codes.starts_with("NOERROR") || codes.contains(',') {
        bail!("answers other than NOERROR: {codes}");
    }
    Ok(Perf { qps: first_number("Queries per second:")?, lost: first_number("Queries lost:")? as u64 })
}

/// What the paced client measured.
#[derive(Default)]
struct Paced {
    /// Of every good answer, in microseconds.
    latencies: Vec<f64>,
    sent: u64,
    /// Unanswered after the grace time, or overtaken by a query of the same ID.
    lost: u64,
    /// Answers that were not NOERROR with an answer, or matched no query.
    bad: u64,
}

/// Sends `rate` queries a second to `server` for `dur`, open loop (a late
/// send is made up at once), cycling through `names`, and times every answer.
fn paced(server: SocketAddr, names: &[String], rate: u32, dur: Duration) -> Result<Paced> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.connect(server)?;
    socket.set_nonblocking(true)?;
    let mut queries: Vec<Vec<u8>> = names.iter().map(|n| query(0, n)).collect();
    let mut sent_at: Vec<Option<Instant>> = vec![None; 1 << 16];
    let mut in_flight = 0usize;
    let mut buf = [0u8; 512];
    let mut p =
        Paced { latencies: Vec::with_capacity((f64::from(rate) * dur.as_secs_f64()) as usize + 1), ..Paced::default() };
    let interval = 1.0 / f64::from(rate);
    let start = Instant::now();
    let end = start + dur;
    let mut next = start;
    loop {
        let now = Instant::now();
        if next < end && now >= next {
            let id = (p.sent % 65_536) as u16;
            let q = &mut queries[p.sent as usize % names.len()];
            q[..2].copy_from_slice(&id.to_be_bytes());
            if sent_at[usize::from(id)].replace(Instant::now()).is_some() {
                p.lost += 1;
            } else {
                in_flight += 1;
            }
            match socket.send(q) {
                Ok(_) => {}
                // A full socket buffer loses the query, as the network would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).with_context(|| format!("sending to {server}")),
            }
            p.sent += 1;
            next = start + Duration::from_secs_f64(interval * p.sent as f64);
            continue;
        }
        if next >= end && (in_flight == 0 || now >= end + GRACE) {
            break;
        }
        interrupt::check()?;
        let until = if next < end { next } else { end + GRACE };
        if !wait_readable(&socket, until.saturating_duration_since(now))? {
            continue;
        }
        loop {
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).with_context(|| format!("receiving from {server}")),
            };
            let at = Instant::now();
            let sent = if n >= 12 { sent_at[usize::from(u16::from_be_bytes([buf[0], buf[1]]))].take() } else { None };
            match sent {
                Some(t) if answered(&buf[..n]) => {
                    in_flight -= 1;
                    p.latencies.push(at.duration_since(t).as_secs_f64() * 1e6);
                }
                Some(_) => {
                    in_flight -= 1;
                    p.bad += 1;
                }
                None => p.bad += 1,
            }
        }
    }
    p.lost += in_flight as u64;
    Ok(p)
}

/// Waits at most `timeout` (with the precision of a high-resolution timer,
/// unlike a socket timeout) for `socket` to be readable.
fn wait_readable(socket: &UdpSocket, timeout: Duration) -> Result<bool> {
    let mut fd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos().into() };
    // SAFETY: one valid pollfd and a valid timespec, both outliving the
    // call; no signal mask is passed.
    let rc = unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e).context("waiting for an answer");
    }
    Ok(rc > 0)
}

/// A deterministic shuffle of `0..n`, each index `times` times.
fn shuffled(n: u32, times: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..times).flat_map(|_| 0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

struct Bench {
    fizz: FizzDns,
    nsd: Nsd,
    nsd_version: String,
    dnsperf_version: String,
    /// dnsperf's input and the paced client's names, in the same order.
    query_file: PathBuf,
    names: Vec<String>,
    secs: f64,
    rate: u32,
    results: Results,
    /// Lost or bad queries per series.
    losses: std::collections::BTreeMap<String, u64>,
    _work: WorkDir,
}

pub fn run(opts: &Options) -> Result<()> {
    interrupt::install()?;
    host::ensure(&[("dnsperf", "dnsperf"), ("nsd", "nsd")])?;
    let out_dir = report::out_dir()?;
    let work = WorkDir::new(&format!("{}-bench", fizz_tests::unique("D").to_lowercase()))?;

    let order = shuffled(opts.names, 1 + 999 / opts.names);
    let names: Vec<String> = order.iter().map(|&i| name(i)).collect();
    let query_file = work.join("queries");
    let lines: String = names.iter().map(|n| format!("{n} A\n")).collect();
    std::fs::write(&query_file, lines).with_context(|| format!("writing {}", query_file.display()))?;

    eprintln!("starting Fizz's DNS server and NSD with {} names", opts.names);
    let fizz = FizzDns::start(opts.names)?;
    let mut nsd = Nsd::start(&work.0, opts.names)?;
    let nsd_addr = nsd.addr;
    let first = query(1, &name(0));
    let mut last_check = Ok(());
    let ready = fizz_tests::wait_for("NSD to answer", NSD_READY, || {
        last_check = nsd.check_alive();
        last_check.is_err() || ask_once(nsd_addr, &first)
    });
    last_check?;
    ready?;
    eprintln!("  fizz on {}, nsd on {nsd_addr}", fizz.server.local_addr());
    verify(fizz.server.local_addr(), opts.names).context("checking Fizz's answers")?;
    verify(nsd_addr, opts.names).context("checking NSD's answers")?;
    let nsd_version = nsd_version();

    let mut bench = Bench {
        fizz,
        nsd,
        nsd_version,
        dnsperf_version: dnsperf_version(),
        query_file,
        names,
        secs: opts.secs,
        rate: opts.rate,
        results: Results::default(),
        losses: Default::default(),
        _work: work,
    };
    eprintln!("warming up");
    for t in Target::ALL {
        bench.throughput(t, LOADS[0], WARM_UP_SECS, None)?;
    }
    for r in 1..=opts.rounds {
        eprintln!("round {r}/{}", opts.rounds);
        for load in LOADS {
            for t in Target::ALL {
                bench.throughput(t, load, opts.secs, Some(load.0))?;
            }
        }
        for t in Target::ALL {
            bench.latency(t)?;
        }
        bench.nsd.check_alive()?;
    }
    bench.report(&out_dir, opts)
}

/// Whether `server` answers `q` within 200 ms.
fn ask_once(server: SocketAddr, q: &[u8]) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else { return false };
    let mut buf = [0u8; 512];
    socket.set_read_timeout(Some(Duration::from_millis(200))).is_ok()
        && socket.send_to(q, server).is_ok()
        && socket.recv(&mut buf).is_ok_and(|n| answered(&buf[..n]))
}

/// "dnsperf <version>", from its help.
fn dnsperf_version() -> String {
    let out = Command::new("dnsperf").arg("-h").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
        .unwrap_or_default();
    let version = text.lines().find_map(|l| l.trim().strip_prefix("Version ")).unwrap_or("?");
    format!("dnsperf {version}")
}

/// `nsd -v`'s first line.
fn nsd_version() -> String {
    let Some(nsd) = host::find("nsd") else { return "NSD".into() };
    let out = Command::new(nsd).arg("-v").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
        .unwrap_or_default();
    text.lines()
        .next()
        .map(|l| l.trim().replace("NSD version", "NSD"))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "NSD".into())
}

impl Bench {
    fn addr(&self, t: Target) -> SocketAddr {
        match t {
            Target::Fizz => self.fizz.server.local_addr(),
            Target::Nsd => self.nsd.addr,
        }
    }

    /// A dnsperf run, recorded under `dns/<key>/<target>` unless `key` is None.
    fn throughput(&mut self, t: Target, load: (&str, u32, u32, u32), secs: f64, key: Option<&str>) -> Result<()> {
        let (_, clients, threads, in_flight) = load;
        let perf = dnsperf(self.addr(t), &self.query_file, secs, clients, threads, in_flight)
            .with_context(|| format!("dnsperf against {}", t.key()))?;
        if let Some(key) = key {
            let series = format!("dns/{key}/{}", t.key());
            if perf.lost > 0 {
                *self.losses.entry(series.clone()).or_default() += perf.lost;
            }
            self.results.push(&series, "q/s", perf.qps);
            eprintln!("  {series}: {:.0} q/s", perf.qps);
        }
        Ok(())
    }

    fn latency(&mut self, t: Target) -> Result<()> {
        let addr = self.addr(t);
        let p = paced(addr, &self.names, self.rate, Duration::from_secs_f64(self.secs))
            .with_context(|| format!("the paced client against {}", t.key()))?;
        let mut l = p.latencies;
        if l.is_empty() {
            bail!("no query to {} was answered ({} sent)", t.key(), p.sent);
        }
        l.sort_by(f64::total_cmp);
        let series = format!("dns/latency/{}", t.key());
        if p.lost + p.bad > 0 {
            *self.losses.entry(series).or_default() += p.lost + p.bad;
        }
        let (p50, p99) = (report::percentile(&l, 0.5), report::percentile(&l, 0.99));
        self.results.push(&format!("dns/latency_p50/{}", t.key()), "us", p50);
        self.results.push(&format!("dns/latency_p99/{}", t.key()), "us", p99);
        eprintln!("  dns/latency/{}: p50 {p50:.0} us, p99 {p99:.0} us ({} answers)", t.key(), l.len());
        Ok(())
    }

    fn report(&self, out_dir: &Path, opts: &Options) -> Result<()> {
        let label = |t: Target| match t {
            Target::Fizz => "fizz DNS (library, this process)".to_string(),
            Target::Nsd => format!("{} (server-count 1)", self.nsd_version),
        };
        let mut sections: Vec<Vec<Line>> = Vec::new();
        let metrics: Vec<(String, String)> = LOADS
            .iter()
            .map(|(key, c, t, q)| (key.to_string(), format!("dnsperf -c {c} -T {t} -q {q}")))
            .chain([
                ("latency_p50".to_string(), format!("p50 latency at {} q/s", self.rate)),
                ("latency_p99".to_string(), format!("p99 latency at {} q/s", self.rate)),
            ])
            .collect();
        for (key, metric) in &metrics {
            let mut lines = Vec::new();
            for t in Target::ALL {
                let series = format!("dns/{key}/{}", t.key());
                let against = (t == Target::Fizz).then(|| format!("dns/{key}/nsd"));
                if let Some(entry) = self.results.entry(&series, against.as_deref()) {
                    lines.push(Line { key: series, scenario: label(t), metric: metric.clone(), entry });
                }
            }
            sections.push(lines);
        }
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "\nDNS benchmark: {} A records on 127.0.0.1, median of {} interleaved rounds of {} s per measurement.",
            opts.names, opts.rounds, opts.secs
        );
        println!("ratio = median over rounds of fizz / NSD in the same round (throughput: higher is better; latency: lower).");
        println!();
        print!("{}", report::table(&sections));
        println!();
        for (key, _) in &metrics[..LOADS.len()] {
            let ratio = self
                .results
                .entry(&format!("dns/{key}/fizz"), Some(&format!("dns/{key}/nsd")))
                .and_then(|e| e.ratio_to_direct);
            if let Some(r) = ratio {
                let verdict = if r >= 0.5 { "met" } else { "NOT met" };
                println!("{key}: fizz / NSD {r:.2}x (target >= 0.5x: {verdict})");
            }
        }
        println!(
            "Throughput: {} (its query file cycles through every name in a shuffled order). Latency: a paced \
             client in this process sending {} q/s open loop on one socket, every answer timed (this dnsperf \
             reports no percentiles).",
            self.dnsperf_version, self.rate
        );
        println!(
            "This machine has {cores} cores, not pinned: Fizz's server (2 tokio workers in this process) and NSD \
             (one server process) share them with the load generator (dnsperf, or the paced client), which \
             competes with the server measured."
        );
        println!(
            "NSD: minimal-responses and no response rate limiting; no EDNS asked: both answer with the A record \
             alone. Fizz has no upstream."
        );
        let stats = self.fizz.server.stats();
        if stats.malformed + stats.overloaded + stats.forwarded + stats.truncated > 0 {
            println!(
                "warning: Fizz's server counted {} malformed, {} overloaded, {} forwarded, {} truncated",
                stats.malformed, stats.overloaded, stats.forwarded, stats.truncated
            );
        }
        for (series, n) in &self.losses {
            println!("warning: {n} queries lost or answered wrongly in {series}");
        }

        let lines: Vec<Line> = sections.into_iter().flatten().collect();
        let json = out_dir.join("dns.json");
        report::write_json(&json, &lines)?;
        println!("\nwrote {}", report::display(&json));
        match self.plot(out_dir, &metrics) {
            Ok(png) => println!("wrote {}", report::display(&png)),
            Err(e) => println!("plot skipped: {e:#}"),
        }
        Ok(())
    }

    /// Bars of the medians: throughput per load, latency per percentile.
    fn plot(&self, out_dir: &Path, metrics: &[(String, String)]) -> Result<PathBuf> {
        let median = |key: &str, t: Target| {
            self.results.entry(&format!("dns/{key}/{}", t.key()), None).map_or(f64::NAN, |e| e.median)
        };
        let mut data = String::from("# dnsperf clients, queries/s: fizz nsd\n");
        for (key, clients, ..) in LOADS {
            let label = if clients == 1 { "1 client".to_string() } else { format!("{clients} clients") };
            data += &format!("\"{label}\" {:.1} {:.1}\n", median(key, Target::Fizz), median(key, Target::Nsd));
        }
        data += "\n\n# percentile, microseconds: fizz nsd\n";
        for (key, _) in &metrics[LOADS.len()..] {
            let label = key.trim_start_matches("latency_");
            data += &format!("\"{label}\" {:.1} {:.1}\n", median(key, Target::Fizz), median(key, Target::Nsd));
        }
        let rate = self.rate;
        plot::draw_with(out_dir, "dns", &data, |png, dat| {
            format!(
                r#"set terminal pngcairo size 1100,450 font "sans,10"
set output '{png}'
set multiplot layout 1,2 title "Fizz's DNS server vs NSD on 127.0.0.1 (median of rounds)"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set grid ytics
set key top right
set title "Throughput (dnsperf, most queries/s)"
set ylabel "queries/s"
plot '{dat}' index 0 using 2:xtic(1) title 'Fizz', '' index 0 using 3 title 'NSD'
set title "Latency at {rate} queries/s (paced client)"
set ylabel "microseconds (log scale)"
set logscale y
set yrange [1:*]
plot '{dat}' index 1 using 2:xtic(1) title 'Fizz', '' index 1 using 3 title 'NSD'
unset multiplot
"#,
                png = png.display(),
                dat = dat.display(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_well_formed() {
        let q = query(0x1234, "svc7.bench.fizz");
        let want: &[u8] =
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04svc7\x05bench\x04fizz\x00\x00\x01\x00\x01";
        assert_eq!(q, want);
        let mut reply = q.clone();
        reply[2] |= 0x80;
        assert!(!answered(&reply), "no answer record");
        reply[7] = 1;
        assert!(answered(&reply));
        reply[2] |= 0x02;
        assert!(!answered(&reply), "truncated");
    }

    #[test]
    fn the_shuffle_keeps_every_name() {
        let mut v = shuffled(100, 3);
        assert_ne!(v[..100], (0..100).collect::<Vec<u32>>()[..]);
        v.sort_unstable();
        assert_eq!(v, (0..100).flat_map(|i| [i, i, i]).collect::<Vec<u32>>());
    }

    #[test]
    fn dnsperf_statistics_are_read() {
        let ok = "Statistics:\n\n  Queries sent:         1000\n  Queries completed:    998 (99.80%)\n  \
                  Queries lost:         2 (0.20%)\n\n  Response codes:       NOERROR 998 (100.00%)\n  \
                  Run time (s):         1.000259\n  Queries per second:   997.742\n";
        let perf = parse_dnsperf(ok).unwrap();
        assert_eq!((perf.qps, perf.lost), (997.742, 2));
        let nx = ok.replace("NOERROR 998 (100.00%)", "NOERROR 990 (99.20%), NXDOMAIN 8 (0.80%)");
        assert!(parse_dnsperf(&nx).is_err());
        let none = "  Queries completed:    0 (0.00%)\n  Response codes:       \n  Queries per second:   0.000000\n";
        assert!(format!("{:#}", parse_dnsperf(none).unwrap_err()).contains("no query was answered"));
    }
}
