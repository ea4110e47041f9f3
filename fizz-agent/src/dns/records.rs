//! The record table: which names Fizz answers, and with what (pure, no IO).
//!
//! A `Records` is built from plain descriptions of services and client
//! containers and never changes; an update builds a new table and swaps it
//! into `SharedRecords` whole, so a query sees either the old table or the
//! new one, and a removed service is gone for the very next query.
//!
//! Names (all case-insensitive):
//! - `<service>.<project>.fizz` → the service's VIP, for any client;
//! - `<service>.<project>` → the same, when `<project>` is a known project;
//! - `<service>`, and each network alias of a service on the client's
//!   networks → the VIP, for a client container of that project;
//! - `tasks.` before any of the service forms → the addresses of the
//!   service's running replicas.
//!
//! A name under `.fizz`, or of the form `<x>.<project>` / `tasks.<x>.<project>`
//! for a known project, that names nothing is NXDOMAIN. Any other name that
//! names nothing here is not ours and goes upstream.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, PoisonError, RwLock},
};

use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};

/// The zone every fully qualified Fizz name ends with.
pub const ZONE: &str = "fizz";
/// TTL of VIP answers, in seconds: a VIP is stable for the service's life.
pub const VIP_TTL: u32 = 5;
/// TTL of `tasks.` answers, in seconds: replicas come and go.
pub const TASKS_TTL: u32 = 1;

/// One service as DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The Compose project the service belongs to.
    pub project: String,
    /// The service's name in its Compose file.
    pub name: String,
    /// The service's virtual IP.
    pub vip: Ipv4Addr,
    /// Extra names the service has on some of its networks.
    pub aliases: Vec<NetworkAlias>,
    /// The addresses of the service's running replicas.
    pub tasks: Vec<Ipv4Addr>,
}

/// A name a service answers to on one Compose network of its project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAlias {
    /// The network (its name in the Compose file).
    pub network: String,
    /// The alias.
    pub alias: String,
}

/// A container that may ask us questions: its address tells us its project
/// and networks, which scope the short names it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    /// The container's address.
    pub addr: Ipv4Addr,
    /// The Compose project the container belongs to.
    pub project: String,
    /// The Compose networks the container is attached to.
    pub networks: Vec<String>,
}

/// What a name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name is ours and exists; these are its records of the asked type
    /// (none is NODATA: the name exists but has nothing of that type).
    NameFound(Vec<Record>),
    /// The name is in a Fizz namespace but does not exist.
    NxDomain,
    /// The name is not Fizz's; ask upstream.
    NotOurs,
}

#[derive(Clone, Debug)]
struct Service {
    vip: Ipv4Addr,
    tasks: Vec<Ipv4Addr>,
}

/// The names of one project, all lowercase.
#[derive(Clone, Debug, Default)]
struct Project {
    services: HashMap<String, Service>,
    /// network → alias → VIPs.
    aliases: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
}

#[derive(Clone, Debug)]
struct Client {
    project: String,
    networks: Vec<String>,
}

/// The table of Fizz names. Build it whole, then publish it with
/// `SharedRecords::replace`.
#[derive(Clone, Debug, Default)]
pub struct Records {
    /// By lowercase project name.
    projects: HashMap<String, Project>,
    clients: HashMap<Ipv4Addr, Client>,
}

/// What a name resolved to inside the table, before the query type applies.
enum Hit<'a> {
    Vips(Vec<Ipv4Addr>),
    Tasks(&'a [Ipv4Addr]),
    /// A name that exists only as a parent of other names.
    Empty,
    Missing,
    NotOurs,
}

impl Records {
    /// An empty table: every name is NXDOMAIN under `.fizz`, else not ours.
    pub fn new() -> Records {
        Records::default()
    }

    /// A table of these services and clients.
    pub fn build(
        services: impl IntoIterator<Item = ServiceEntry>,
        clients: impl IntoIterator<Item = ClientEntry>,
    ) -> Records {
        let mut records = Records::new();
        for service in services {
            records.add_service(&service);
        }
        for client in clients {
            records.add_client(&client);
        }
        records
    }

    /// Adds a service, replacing one of the same project and name.
    pub fn add_service(&mut self, service: &ServiceEntry) {
        let project = self
            .projects
            .entry(service.project.to_ascii_lowercase())
            .or_default();
        for alias in &service.aliases {
            let vips = project
                .aliases
                .entry(alias.network.to_ascii_lowercase())
                .or_default()
                .entry(alias.alias.to_ascii_lowercase())
                .or_default();
            if !vips.contains(&service.vip) {
                vips.push(service.vip);
            }
        }
        let mut tasks = Vec::with_capacity(service.tasks.len());
        for addr in &service.tasks {
            if !tasks.contains(addr) {
                tasks.push(*addr);
            }
        }
        project.services.insert(
            service.name.to_ascii_lowercase(),
            Service {
                vip: service.vip,
                tasks,
            },
        );
    }

    /// Adds a client container, replacing one of the same address.
    pub fn add_client(&mut self, client: &ClientEntry) {
        let networks = client
            .networks
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let project = client.project.to_ascii_lowercase();
        self.clients
            .insert(client.addr, Client { project, networks });
    }

    /// The answer to `qtype` questions about `name` asked by `client` (its
    /// address, if the question came over IPv4). The records carry `name`
    /// exactly as asked.
    pub fn lookup(&self, client: Option<Ipv4Addr>, name: &Name, qtype: RecordType) -> Answer {
        let labels: Vec<String> = name
            .iter()
            .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let client = client.and_then(|addr| self.clients.get(&addr));
        let (addrs, ttl) = match self.resolve(client, &labels) {
            Hit::Vips(vips) => (vips, VIP_TTL),
            Hit::Tasks(tasks) => (tasks.to_vec(), TASKS_TTL),
            Hit::Empty => (Vec::new(), 0),
            Hit::Missing => return Answer::NxDomain,
            Hit::NotOurs => return Answer::NotOurs,
        };
        if !matches!(qtype, RecordType::A | RecordType::ANY) {
            return Answer::NameFound(Vec::new());
        }
        let records = addrs
            .into_iter()
            .map(|addr| Record::from_rdata(name.clone(), ttl, RData::A(A(addr))))
            .collect();
        Answer::NameFound(records)
    }

    fn resolve(&self, client: Option<&Client>, labels: &[&str]) -> Hit<'_> {
        if let Some((&ZONE, rest)) = labels.split_last() {
            return match rest {
                [] => Hit::Empty,
                [project] if self.projects.contains_key(*project) => Hit::Empty,
                _ => match self.qualified(rest) {
                    Hit::NotOurs => Hit::Missing,
                    hit => hit,
                },
            };
        }
        if let Some(client) = client {
            match labels {
                [short] => {
                    if let Some(service) = self.service(&client.project, short) {
                        return Hit::Vips(vec![service.vip]);
                    }
                    let vips = self.alias(client, short);
                    if !vips.is_empty() {
                        return Hit::Vips(vips);
                    }
                }
                ["tasks", short] => {
                    if let Some(service) = self.service(&client.project, short) {
                        return Hit::Tasks(&service.tasks);
                    }
                }
                _ => {}
            }
        }
        self.qualified(labels)
    }

    /// `<service>.<project>` and `tasks.<service>.<project>`, the zone removed.
    fn qualified(&self, labels: &[&str]) -> Hit<'_> {
        let (tasks, rest) = match labels {
            [_, _] => (false, labels),
            ["tasks", rest @ ..] if rest.len() == 2 => (true, rest),
            _ => return Hit::NotOurs,
        };
        let Some(project) = self.projects.get(rest[1]) else {
            return Hit::NotOurs;
        };
        match project.services.get(rest[0]) {
            Some(service) if tasks => Hit::Tasks(&service.tasks),
            Some(service) => Hit::Vips(vec![service.vip]),
            None => Hit::Missing,
        }
    }

    fn service(&self, project: &str, name: &str) -> Option<&Service> {
        self.projects.get(project)?.services.get(name)
    }

    fn alias(&self, client: &Client, alias: &str) -> Vec<Ipv4Addr> {
        let mut vips = Vec::new();
        let Some(project) = self.projects.get(&client.project) else {
            return vips;
        };
        for network in &client.networks {
            let found = project
                .aliases
                .get(network)
                .and_then(|aliases| aliases.get(alias));
            for vip in found.into_iter().flatten() {
                if !vips.contains(vip) {
                    vips.push(*vip);
                }
            }
        }
        vips
    }
}

/// The table in use, shared between the server and whoever updates it.
/// Cloning shares the same table.
#[derive(Clone, Debug, Default)]
pub struct SharedRecords(Arc<RwLock<Arc<Records>>>);

impl SharedRecords {
    /// Shares `records`.
    pub fn new(records: Records) -> SharedRecords {
        SharedRecords(Arc::new(RwLock::new(Arc::new(records))))
    }

    /// Replaces the table; every query that starts after this returns sees
    /// the new one.
    pub fn replace(&self, records: Records) {
        let records = Arc::new(records);
        // A writer that panicked held the lock only to store an `Arc`, so the
        // table is whole: ignore the poison.
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = records;
    }

    /// The table now.
    pub fn load(&self) -> Arc<Records> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn service(project: &str, name: &str, vip: &str, tasks: &[&str]) -> ServiceEntry {
        ServiceEntry {
            project: project.into(),
            name: name.into(),
            vip: addr(vip),
            aliases: Vec::new(),
            tasks: tasks.iter().map(|t| addr(t)).collect(),
        }
    }

    /// Two projects: `shop` (web with two replicas and the alias `db` on
    /// `back` for postgres) and `blog` (its own `web`).
    fn table() -> Records {
        table_with(true)
    }

    fn table_with(web: bool) -> Records {
        let mut postgres = service("shop", "Postgres", "10.43.0.3", &["10.42.1.7"]);
        postgres.aliases.push(NetworkAlias {
            network: "back".into(),
            alias: "db".into(),
        });
        let web_replicas = ["10.42.1.5", "10.42.2.5", "10.42.1.5"];
        let services = [
            service("shop", "web", "10.43.0.1", &web_replicas),
            postgres,
            service("shop", "idle", "10.43.0.4", &[]),
            service("blog", "web", "10.43.0.2", &["10.42.3.9"]),
        ];
        Records::build(
            services
                .into_iter()
                .filter(|s| web || !(s.project == "shop" && s.name == "web")),
            [
                ClientEntry {
                    addr: addr("10.42.1.10"),
                    project: "shop".into(),
                    networks: vec!["back".into()],
                },
                ClientEntry {
                    addr: addr("10.42.1.11"),
                    project: "shop".into(),
                    networks: vec!["front".into()],
                },
                ClientEntry {
                    addr: addr("10.42.3.10"),
                    project: "blog".into(),
                    networks: vec![],
                },
            ],
        )
    }

    /// Renders an answer as one line: `A <addr>/<ttl>, ...`, `NODATA`,
    /// `NXDOMAIN` or `NOT OURS`.
    fn render(answer: &Answer, asked: &Name) -> String {
        match answer {
            Answer::NxDomain => "NXDOMAIN".into(),
            Answer::NotOurs => "NOT OURS".into(),
            Answer::NameFound(records) if records.is_empty() => "NODATA".into(),
            Answer::NameFound(records) => records
                .iter()
                .map(|r| {
                    assert!(
                        r.name.eq_case(asked),
                        "owner {} differs from {asked}",
                        r.name
                    );
                    match &r.data {
                        RData::A(a) => format!("A {}/{}", a.0, r.ttl),
                        other => panic!("unexpected record {other:?}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// `input` is `<client or -> <name> [<qtype>]`.
    fn check_in(records: &Records, input: &str, expect: &str) {
        let mut words = input.split_whitespace();
        let client = match words.next().unwrap() {
            "-" => None,
            a => Some(addr(a)),
        };
        let name = Name::from_ascii(words.next().unwrap()).unwrap();
        let qtype = words.next().map_or(RecordType::A, |t| t.parse().unwrap());
        let got = render(&records.lookup(client, &name, qtype), &name);
        assert_eq!(got, expect, "lookup {input}");
    }

    fn check(input: &str, expect: &str) {
        check_in(&table(), input, expect);
    }

    #[test]
    fn fully_qualified_names_work_for_anyone() {
        check("- web.shop.fizz.", "A 10.43.0.1/5");
        check("- web.blog.fizz", "A 10.43.0.2/5");
        check("10.42.3.10 web.shop.fizz.", "A 10.43.0.1/5");
        check("- tasks.web.shop.fizz.", "A 10.42.1.5/1, A 10.42.2.5/1");
        check("- tasks.web.blog.fizz.", "A 10.42.3.9/1");
    }

    #[test]
    fn project_qualified_names_need_a_known_project() {
        check("- web.shop.", "A 10.43.0.1/5");
        check("10.42.3.10 web.shop", "A 10.43.0.1/5");
        check("- tasks.web.shop.", "A 10.42.1.5/1, A 10.42.2.5/1");
        check("- nope.shop.", "NXDOMAIN");
        check("- tasks.nope.shop.", "NXDOMAIN");
        check("- web.example.", "NOT OURS");
        check("- tasks.web.example.", "NOT OURS");
    }

    #[test]
    fn short_names_resolve_in_the_clients_project() {
        check("10.42.1.10 web.", "A 10.43.0.1/5");
        check("10.42.3.10 web.", "A 10.43.0.2/5");
        check("10.42.1.10 tasks.web.", "A 10.42.1.5/1, A 10.42.2.5/1");
        check("10.42.3.10 tasks.web.", "A 10.42.3.9/1");
        check("10.42.3.10 postgres.", "NOT OURS");
        check("- web.", "NOT OURS");
        check("10.42.9.9 web.", "NOT OURS");
        check("- tasks.web.", "NOT OURS");
        check("10.42.1.10 example.com.", "NOT OURS");
    }

    #[test]
    fn names_are_case_insensitive_and_keep_the_askers_case() {
        check("- WEB.Shop.FIZZ.", "A 10.43.0.1/5");
        check("- postgres.shop.fizz.", "A 10.43.0.3/5");
        check("10.42.1.10 PostGres.", "A 10.43.0.3/5");
        check("10.42.1.10 TASKS.Web.", "A 10.42.1.5/1, A 10.42.2.5/1");
        check("10.42.1.10 DB.", "A 10.43.0.3/5");
    }

    #[test]
    fn aliases_resolve_on_their_network_only() {
        check("10.42.1.10 db.", "A 10.43.0.3/5");
        check("10.42.1.11 db.", "NOT OURS");
        check("10.42.3.10 db.", "NOT OURS");
        check("- db.shop.fizz.", "NXDOMAIN");
    }

    #[test]
    fn the_fizz_zone_is_ours_whole() {
        check("- nope.shop.fizz.", "NXDOMAIN");
        check("- web.nope.fizz.", "NXDOMAIN");
        check("- tasks.nope.shop.fizz.", "NXDOMAIN");
        check("- a.web.shop.fizz.", "NXDOMAIN");
        check("- web.fizz.", "NXDOMAIN");
        check("- shop.fizz.", "NODATA");
        check("- fizz.", "NODATA");
    }

    #[test]
    fn other_types_of_existing_names_are_nodata() {
        check("- web.shop.fizz. AAAA", "NODATA");
        check("10.42.1.10 web. MX", "NODATA");
        check("- web.shop.fizz. ANY", "A 10.43.0.1/5");
        check("- nope.shop.fizz. AAAA", "NXDOMAIN");
        check("- example.com. AAAA", "NOT OURS");
    }

    #[test]
    fn a_service_without_replicas_has_no_tasks() {
        check("- idle.shop.fizz.", "A 10.43.0.4/5");
        check("- tasks.idle.shop.fizz.", "NODATA");
    }

    #[test]
    fn a_replaced_table_forgets_removed_services_at_once() {
        let shared = SharedRecords::new(table());
        let name = Name::from_ascii("web.shop.fizz.").unwrap();
        let before = shared.load();
        assert_ne!(before.lookup(None, &name, RecordType::A), Answer::NxDomain);

        shared.replace(table_with(false));

        let after = shared.load();
        check_in(&after, "- web.shop.fizz.", "NXDOMAIN");
        check_in(&after, "- tasks.web.shop.", "NXDOMAIN");
        check_in(&after, "10.42.1.10 web.", "NOT OURS");
        check_in(&after, "- postgres.shop.fizz.", "A 10.43.0.3/5");
        // A reader holding the old table keeps a consistent view.
        check_in(&before, "- web.shop.fizz.", "A 10.43.0.1/5");
    }

    #[test]
    fn an_empty_table_owns_only_the_zone() {
        let empty = Records::new();
        check_in(&empty, "- web.shop.fizz.", "NXDOMAIN");
        check_in(&empty, "- web.shop.", "NOT OURS");
        check_in(&empty, "10.42.1.10 web.", "NOT OURS");
    }

    #[test]
    fn a_later_service_replaces_an_earlier_one() {
        let mut records = table();
        records.add_service(&service("shop", "WEB", "10.43.0.9", &[]));
        check_in(&records, "- web.shop.fizz.", "A 10.43.0.9/5");
        check_in(&records, "- tasks.web.shop.fizz.", "NODATA");
    }
}
