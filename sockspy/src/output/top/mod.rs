//! `top`'s rows: what each connection, or each server endpoint, did over
//! the last interval.
//!
//! Takes resolved events and runs them through the conversation stage,
//! which hands on each finished exchange and each ended connection's
//! summary; at the end of every interval reads the live connections'
//! byte and error counts, and hands on one [`Row`] per connection (or per
//! server with [`by_server`]) for `table` to print and `screen` to show.
//!
//! What is kept per connection between intervals is bounded: the counts
//! seen at the last refresh, and the interval's exchanges and their waits
//! ([`Waits`]: the values themselves while there are few, then a
//! fixed-bucket histogram; dropped at the refresh). Ended connections are
//! shown in the interval they ended in, then forgotten.

pub mod screen;
pub mod table;

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, SocketAddr},
    rc::Rc,
};

use clap::ValueEnum;
use sockspy_common::{AF_UNIX, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    capture::events::UnixName,
    conversation::{Conversation, End, Finding, Kind, Summary, Wanted, histogram::Histogram},
    idmap::IdMap,
    table::{diag, resolve::Event},
};

/// Waits kept as they are before they go into a histogram's buckets.
const EXACT: usize = 32;

/// The waits of one interval: the values themselves while there are at
/// most [`EXACT`] (exact percentiles in at most a quarter kilobyte: most
/// connections finish a few exchanges a second), then a fixed-bucket
/// histogram (a kilobyte, percentiles within 1/16).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waits {
    /// In order, while at most [`EXACT`].
    few: Vec<u64>,
    /// Every value, once there were more.
    many: Histogram,
}

impl Waits {
    pub fn add(&mut self, us: u64) {
        if self.many.count() == 0 && self.few.len() < EXACT {
            let at = self.few.partition_point(|value| *value <= us);
            self.few.insert(at, us);
            return;
        }
        for value in std::mem::take(&mut self.few) {
            self.many.add(value);
        }
        self.many.add(us);
    }

    /// Adds every value of `other` (a server's row of many connections).
    pub fn merge(&mut self, other: &Self) {
        for value in &other.few {
            self.add(*value);
        }
        if other.many.count() > 0 {
            for value in std::mem::take(&mut self.few) {
                self.many.add(value);
            }
            self.many.merge(&other.many);
        }
    }

    /// How many (the tests' view: the table shows percentiles only).
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.many.count() + self.few.len() as u64
    }

    pub fn max(&self) -> Option<u64> {
        self.few.last().copied().or(self.many.max())
    }

    /// The nearest-rank `percent`ile, none when empty.
    pub fn percentile(&self, percent: u32) -> Option<u64> {
        if self.few.is_empty() {
            return self.many.percentile(percent);
        }
        let rank = (self.few.len() * percent as usize).div_ceil(100).max(1);
        self.few.get(rank - 1).copied()
    }
}

/// One line of the table: a connection, or a server endpoint and all its
/// clients' connections.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub kind: Kind,
    /// The client's end; with `--by server`, what every client has in
    /// common (the process, when one process made every connection).
    pub client: End,
    pub server: End,
    /// The connection's number (as in `exchange` records); none for a
    /// server's row.
    pub connection: Option<u64>,
    pub connections: u64,
    /// Client processes.
    pub clients: u64,
    /// Exchanges finished in the interval.
    pub requests: u64,
    /// Bytes each way in the interval, the client's view: [sent, received].
    pub bytes: [u64; 2],
    /// The client's wait (or with the client elsewhere, the server's
    /// time) of each exchange finished in the interval.
    pub wait: Waits,
    /// Failed calls and socket errors in the interval.
    pub errors: u64,
    /// Bytes unread in the connections' sockets at the refresh (sock_diag);
    /// none when not known (a recording).
    pub queued: Option<u64>,
}

/// The columns, in the order shown; `--sort` takes their names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Column {
    Client,
    Server,
    Connections,
    #[default]
    Requests,
    Sent,
    Received,
    P50,
    P99,
    Max,
    Queued,
    Errors,
}

impl Column {
    /// The next column to sort by (`>`), or the one before (`<`).
    pub fn step(self, forward: bool) -> Self {
        let all = Self::value_variants();
        let at = all.iter().position(|c| *c == self).unwrap_or(0);
        let next = if forward {
            (at + 1) % all.len()
        } else {
            (at + all.len() - 1) % all.len()
        };
        all[next]
    }

    /// The name `--sort` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Connections => "connections",
            Self::Requests => "requests",
            Self::Sent => "sent",
            Self::Received => "received",
            Self::P50 => "p50",
            Self::P99 => "p99",
            Self::Max => "max",
            Self::Queued => "queued",
            Self::Errors => "errors",
        }
    }
}

/// What `top` keeps of a connection between refreshes.
#[derive(Debug, Default)]
struct Seen {
    /// The connection's totals at the last refresh.
    bytes: [u64; 2],
    errors: u64,
    /// Since the last refresh.
    requests: u64,
    wait: Waits,
    /// The refresh that last found it live.
    refresh: u64,
}

/// The conversations of a trace or a recording, and what each did since
/// the last refresh.
#[derive(Debug)]
pub struct Top {
    conversation: Conversation,
    seen: IdMap<u64, Seen>,
    /// Connections that ended since the last refresh, as they ended.
    ended: Vec<Row>,
    refreshes: u64,
}

impl Default for Top {
    fn default() -> Self {
        Self::new()
    }
}

impl Top {
    pub fn new() -> Self {
        Self {
            conversation: Conversation::new(Wanted {
                exchanges: true,
                // For what ended connections moved since the last refresh.
                summaries: true,
                no_wait_percentiles: true,
                slower_than_us: None,
                ..Wanted::default()
            }),
            seen: IdMap::default(),
            ended: Vec::new(),
            refreshes: 0,
        }
    }

    pub fn event(&mut self, event: &Event) {
        self.conversation.event(event);
        self.take_found();
    }

    /// The trace or the recording ended: every connection still open is
    /// summarised now, and shown by the next [`Self::refresh`].
    pub fn finish(&mut self) {
        self.conversation.finish();
        self.take_found();
    }

    fn take_found(&mut self) {
        let found = self.conversation.take();
        for finding in &found {
            match finding {
                Finding::Exchange(exchange) => {
                    let seen = self.seen.entry(exchange.connection).or_default();
                    seen.requests += 1;
                    if let Some(us) = exchange.times.seen_us() {
                        seen.wait.add(us);
                    }
                }
                Finding::Summary(summary) => {
                    let seen = self.seen.remove(&summary.connection).unwrap_or_default();
                    self.ended.push(ended_row(summary, seen));
                }
                // Not asked for: top does not decode (yet).
                Finding::Message(_) => {}
            }
        }
        self.conversation.give_back(found);
    }

    /// The rows of the interval that ends now: every connection live or
    /// ended since the last refresh. The next interval starts empty.
    pub fn refresh(&mut self, queues: Option<&Queues>) -> Vec<Row> {
        self.refreshes += 1;
        let refresh = self.refreshes;
        let mut rows = std::mem::take(&mut self.ended);
        for conn in self.conversation.connections() {
            let seen = self.seen.entry(conn.id).or_default();
            let (client, server) = conn.client_server();
            let bytes = conn.bytes();
            let errors = conn.error_count();
            rows.push(Row {
                kind: conn.kind,
                client: client.clone(),
                server: server.clone(),
                connection: Some(conn.id),
                connections: 1,
                clients: 1,
                requests: seen.requests,
                bytes: [0, 1].map(|dir| bytes[dir].saturating_sub(seen.bytes[dir])),
                wait: std::mem::take(&mut seen.wait),
                errors: errors.saturating_sub(seen.errors),
                queued: queues.map(|queues| queues.of(client, server)),
            });
            *seen = Seen {
                bytes,
                errors,
                refresh,
                ..Seen::default()
            };
        }
        // Connections dropped for room go without a summary.
        self.seen.retain(|_, seen| seen.refresh == refresh);
        rows
    }
}

/// The last row of a connection that ended.
fn ended_row(summary: &Summary, seen: Seen) -> Row {
    Row {
        kind: summary.kind,
        client: summary.client.clone(),
        server: summary.server.clone(),
        connection: Some(summary.connection),
        connections: 1,
        clients: 1,
        requests: seen.requests,
        bytes: [0, 1].map(|dir| summary.bytes[dir].saturating_sub(seen.bytes[dir])),
        wait: seen.wait,
        errors: summary
            .errors
            .iter()
            .map(|(_, count)| count)
            .sum::<u64>()
            .saturating_sub(seen.errors),
        queued: None,
    }
}

/// Bytes waiting in sockets' queues, by inode, as sock_diag reports them
/// (what `sockspy pairs` shows as `queued`).
#[derive(Debug, Default)]
pub struct Queues {
    /// Bytes unread, and bytes sent but not yet taken (or acknowledged).
    by_sock: IdMap<u64, (u32, u32)>,
}

impl Queues {
    /// Reads the queues of the families in `families` (`FAMILY_*` bits);
    /// a family the kernel cannot list is left out.
    pub fn read(families: u32) -> Self {
        use sockspy_common::{FAMILY_UNIX, PROTO_TCP, PROTO_UDP};
        let mut by_sock = IdMap::default();
        if families & FAMILY_UNIX != 0 {
            for sock in diag::unix_sockets().unwrap_or_default() {
                if sock.state != diag::STATE_LISTEN {
                    by_sock.insert(sock.ino, (sock.rqueue, sock.wqueue));
                }
            }
        }
        for (bit, protocol) in [(PROTO_TCP, IPPROTO_TCP), (PROTO_UDP, IPPROTO_UDP)] {
            if families & bit != 0 {
                for sock in diag::inet_sockets(protocol).unwrap_or_default() {
                    if sock.state != diag::STATE_LISTEN {
                        by_sock.insert(sock.ino, (sock.rqueue, sock.wqueue));
                    }
                }
            }
        }
        Self { by_sock }
    }

    /// A connection's queued bytes: what each end here has unread; and
    /// with the other end not here, what this end has not yet sent or
    /// had acknowledged.
    pub fn of(&self, client: &End, server: &End) -> u64 {
        let queue = |end: &End| end.sock.and_then(|sock| self.by_sock.get(&sock).copied());
        let (client_queue, server_queue) = (queue(client), queue(server));
        let one = |this: Option<(u32, u32)>, other: Option<(u32, u32)>| match (this, other) {
            (Some((unread, _)), Some(_)) => u64::from(unread),
            (Some((unread, unsent)), None) => u64::from(unread) + u64::from(unsent),
            (None, _) => 0,
        };
        one(client_queue, server_queue) + one(server_queue, client_queue)
    }
}

/// What identifies a server endpoint: its socket's name (a listener's
/// path, or its address and port), or for an unnamed one, the socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ServerKey {
    Path(u16, Rc<UnixName>),
    Addr(u16, SocketAddr),
    Sock(u64),
    Connection(u64),
}

impl ServerKey {
    fn of(row: &Row) -> Self {
        let server = &row.server;
        if let Some(path) = &server.path {
            return Self::Path(row.kind.sock_type, Rc::clone(path));
        }
        if row.kind.family != AF_UNIX
            && let Some(addr) = server.addr
        {
            return Self::Addr(row.kind.protocol, canonical(addr));
        }
        match server.sock {
            Some(sock) => Self::Sock(sock),
            None => Self::Connection(row.connection.unwrap_or_default()),
        }
    }
}

/// An address with an IPv4-mapped IPv6 address as the IPv4 one.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What tells clients apart: their process; for one on another machine,
/// its address; else its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ClientKey {
    Process(u32),
    Host(IpAddr),
    Sock(Option<u64>),
}

impl ClientKey {
    fn of(end: &End) -> Self {
        match (end.pid, end.addr) {
            (Some(pid), _) => Self::Process(pid),
            (None, Some(addr)) => Self::Host(addr.ip().to_canonical()),
            (None, None) => Self::Sock(end.sock),
        }
    }
}

/// Keeps of `end` only what `other` has too.
fn common(end: &mut End, other: &End) {
    fn keep<T: PartialEq>(field: &mut Option<T>, other: &Option<T>) {
        if field != other {
            *field = None;
        }
    }
    keep(&mut end.pid, &other.pid);
    keep(&mut end.comm, &other.comm);
    keep(&mut end.fd, &other.fd);
    keep(&mut end.sock, &other.sock);
    keep(&mut end.path, &other.path);
    keep(&mut end.addr, &other.addr);
}

/// One row per server endpoint, adding up its connections' rows.
pub fn by_server(rows: Vec<Row>) -> Vec<Row> {
    let mut servers: Vec<(Row, Vec<ClientKey>)> = Vec::new();
    let mut index: HashMap<ServerKey, usize> = HashMap::new();
    for mut row in rows {
        let client = ClientKey::of(&row.client);
        // One listener, as its IPv4 and its IPv4-mapped IPv6 clients see it.
        row.server.addr = row.server.addr.map(canonical);
        match index.entry(ServerKey::of(&row)) {
            Entry::Vacant(slot) => {
                slot.insert(servers.len());
                servers.push((
                    Row {
                        connection: None,
                        ..row
                    },
                    vec![client],
                ));
            }
            Entry::Occupied(slot) => {
                let (server, clients) = &mut servers[*slot.get()];
                common(&mut server.client, &row.client);
                common(&mut server.server, &row.server);
                server.connections += row.connections;
                server.requests += row.requests;
                server.bytes[0] += row.bytes[0];
                server.bytes[1] += row.bytes[1];
                server.wait.merge(&row.wait);
                server.errors += row.errors;
                server.queued = match (server.queued, row.queued) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
                };
                clients.push(client);
            }
        }
    }
    servers
        .into_iter()
        .map(|(mut row, mut clients)| {
            clients.sort_unstable();
            clients.dedup();
            row.clients = clients.len() as u64;
            row
        })
        .collect()
}

/// Sorts `rows` by `column`: the largest numbers first, names in order;
/// ties by bytes moved, then as they were (a steady order keeps rows from
/// jumping between refreshes).
pub fn sort(rows: &mut [Row], column: Column) {
    let number = |row: &Row| -> Option<u64> {
        match column {
            Column::Client | Column::Server => None,
            Column::Connections => Some(row.connections),
            Column::Requests => Some(row.requests),
            Column::Sent => Some(row.bytes[0]),
            Column::Received => Some(row.bytes[1]),
            Column::P50 => row.wait.percentile(50),
            Column::P99 => row.wait.percentile(99),
            Column::Max => row.wait.max(),
            Column::Queued => row.queued,
            Column::Errors => Some(row.errors),
        }
    };
    rows.sort_by(|a, b| {
        let by_column = match column {
            Column::Client => table::client_text(a).cmp(&table::client_text(b)),
            Column::Server => table::server_text(a).cmp(&table::server_text(b)),
            _ => number(b).cmp(&number(a)),
        };
        by_column
            .then_with(|| (b.bytes[0] + b.bytes[1]).cmp(&(a.bytes[0] + a.bytes[1])))
            .then_with(|| a.connection.cmp(&b.connection))
            .then_with(|| table::server_text(a).cmp(&table::server_text(b)))
    });
}

#[cfg(test)]
mod tests {
    use sockspy_common::EventKind;

    use super::*;
    use crate::{output::print::tests::send_event, table::resolve::Peer};

    /// A call of collectd (`client`) or rrdcached on their connection,
    /// moving `bytes` at `ms` milliseconds; `client_pid` tells collectds
    /// apart, each on a connection of its own.
    fn call(client_pid: u32, client: bool, kind: EventKind, bytes: i64, ms: u64) -> Event {
        let mut event = send_event();
        let (client_sock, server_sock) = (u64::from(client_pid) * 2, u64::from(client_pid) * 2 + 1);
        event.kind = kind;
        event.ret = bytes;
        event.ts_ns = ms * 1_000_000;
        event.pid = client_pid;
        event.sock = Some(client_sock);
        if let Some(peer) = &mut event.peer {
            peer.sock = Some(server_sock);
        }
        if !client {
            let path = event.peer.as_ref().and_then(|peer| peer.path.clone());
            event.peer = Some(Peer {
                sock: Some(client_sock),
                pid: Some(client_pid),
                comm: Some("collectd".into()),
                fd: Some(9),
                ..Peer::default()
            });
            (event.pid, event.comm, event.fd) = (20, "rrdcached".into(), Some(12));
            (event.sock, event.path) = (Some(server_sock), path);
        }
        event
    }

    /// One exchange on collectd `pid`'s connection starting at `ms`: a
    /// 10-byte request, a 4-byte answer `wait_ms` later.
    fn exchange(top: &mut Top, pid: u32, ms: u64, wait_ms: u64) {
        top.event(&call(pid, true, EventKind::Send, 10, ms));
        top.event(&call(pid, false, EventKind::Recv, 10, ms));
        top.event(&call(pid, false, EventKind::Send, 4, ms + wait_ms));
        top.event(&call(pid, true, EventKind::Recv, 4, ms + wait_ms));
    }

    fn close(top: &mut Top, pid: u32, ms: u64) {
        for client in [true, false] {
            let mut event = call(pid, client, EventKind::Close, 0, ms);
            event.released = true;
            top.event(&event);
        }
    }

    #[test]
    fn each_refresh_counts_its_own_interval() {
        let mut top = Top::new();
        for (at, wait) in [(0, 5), (100, 80), (200, 5)] {
            exchange(&mut top, 10, at, wait);
        }
        let rows = top.refresh(None);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.connection, Some(1));
        assert_eq!(row.client.pid, Some(10));
        assert_eq!(row.server.pid, Some(20));
        assert_eq!(
            row.server.path.as_deref().map(|p| p.to_string()).as_deref(),
            Some("/run/rrdcached.sock")
        );
        // The third exchange is not finished until the next request.
        assert_eq!(row.requests, 2);
        assert_eq!(row.bytes, [30, 12]);
        assert_eq!(row.wait.percentile(50), Some(5_000));
        assert_eq!(row.wait.max(), Some(80_000));
        assert_eq!(row.queued, None);

        exchange(&mut top, 10, 300, 20);
        let rows = top.refresh(None);
        assert_eq!((rows[0].requests, rows[0].bytes), (1, [10, 4]));
        assert_eq!(rows[0].wait.max(), Some(5_000), "only this interval's");

        let rows = top.refresh(None);
        assert_eq!((rows[0].requests, rows[0].bytes), (0, [0, 0]));
        assert_eq!(rows[0].wait.count(), 0);
    }

    #[test]
    fn an_ended_connection_shows_once_with_what_it_did_last() {
        let mut top = Top::new();
        exchange(&mut top, 10, 0, 5);
        assert_eq!(top.refresh(None)[0].requests, 0);
        exchange(&mut top, 10, 100, 7);
        close(&mut top, 10, 200);
        let rows = top.refresh(None);
        assert_eq!(rows.len(), 1);
        // Both exchanges finish now: the first at the second request, the
        // second when the connection closed.
        assert_eq!((rows[0].requests, rows[0].bytes), (2, [10, 4]));
        assert_eq!(rows[0].wait.percentile(99), Some(7_000));
        assert!(top.refresh(None).is_empty());
        assert!(top.seen.is_empty(), "nothing kept of an ended connection");
    }

    #[test]
    fn a_recording_ends_with_every_connection_summarised() {
        let mut top = Top::new();
        exchange(&mut top, 10, 0, 5);
        exchange(&mut top, 10, 100, 9);
        top.finish();
        let rows = top.refresh(None);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].requests, rows[0].bytes), (2, [20, 8]));
        assert_eq!(rows[0].wait.percentile(50), Some(5_000));
    }

    #[test]
    fn server_rows_add_up_their_clients() {
        let mut top = Top::new();
        exchange(&mut top, 10, 0, 5);
        exchange(&mut top, 10, 50, 5);
        exchange(&mut top, 11, 0, 40);
        exchange(&mut top, 11, 50, 40);
        let mut queues = Queues::default();
        queues.by_sock.insert(21, (100, 0));
        queues.by_sock.insert(22, (0, 0));
        queues.by_sock.insert(23, (7, 0));
        let rows = by_server(top.refresh(Some(&queues)));
        assert_eq!(rows.len(), 1, "one server: {rows:?}");
        let row = &rows[0];
        assert_eq!((row.connections, row.clients, row.connection), (2, 2, None));
        assert_eq!(row.requests, 2);
        assert_eq!(row.bytes, [40, 16]);
        assert_eq!(row.wait.count(), 2);
        assert_eq!(row.wait.max(), Some(40_000));
        // pid 10's ends are socks 20 and 21, pid 11's 22 and 23.
        assert_eq!(row.queued, Some(107));
        // What the clients share: their name, not a process.
        assert_eq!(
            (row.client.pid, row.client.comm.as_deref()),
            (None, Some("collectd"))
        );
        assert_eq!(row.server.pid, Some(20));
        assert_eq!(table::client_text(row), "2 clients");
        assert_eq!(table::server_text(row), "rrdcached[20] /run/rrdcached.sock");
    }

    #[test]
    fn remote_clients_count_by_host() {
        let row = |client: &str, server_sock: u64| Row {
            kind: Kind {
                family: sockspy_common::AF_INET,
                sock_type: 1,
                protocol: IPPROTO_TCP,
            },
            client: End {
                addr: Some(client.parse().unwrap()),
                ..End::default()
            },
            server: End {
                pid: Some(7),
                comm: Some("nginx".into()),
                sock: Some(server_sock),
                // One listener, seen as IPv4 and as IPv4-mapped IPv6.
                addr: Some(
                    if server_sock == 1 {
                        "10.0.0.9:80"
                    } else {
                        "[::ffff:10.0.0.9]:80"
                    }
                    .parse()
                    .unwrap(),
                ),
                ..End::default()
            },
            connections: 1,
            clients: 1,
            ..Row::default()
        };
        let rows = by_server(vec![
            row("10.0.0.1:5000", 1),
            row("10.0.0.1:5001", 2),
            row("10.0.0.2:5000", 3),
        ]);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].connections, rows[0].clients), (3, 2));
        assert_eq!(table::client_text(&rows[0]), "2 clients");
        assert_eq!(table::server_text(&rows[0]), "nginx[7] 10.0.0.9:80");
        let one_host = by_server(vec![row("10.0.0.1:5000", 1), row("10.0.0.1:5001", 1)]);
        assert_eq!(table::client_text(&one_host[0]), "1 client");
    }

    #[test]
    fn queued_bytes_count_both_ends_or_the_unsent_of_a_lone_one() {
        let mut queues = Queues::default();
        queues.by_sock.insert(1, (10, 99));
        queues.by_sock.insert(2, (5, 99));
        queues.by_sock.insert(3, (7, 3));
        let end = |sock| End {
            sock: Some(sock),
            ..End::default()
        };
        assert_eq!(queues.of(&end(1), &end(2)), 15);
        // The server is elsewhere: what the client has not sent counts.
        assert_eq!(queues.of(&end(3), &End::default()), 10);
        assert_eq!(queues.of(&End::default(), &end(4)), 0);
    }

    #[test]
    fn sorting_puts_the_largest_first_and_names_in_order() {
        let row = |pid: u32, requests: u64, wait: u64| {
            let mut row = Row {
                client: End {
                    pid: Some(pid),
                    comm: Some("c".into()),
                    ..End::default()
                },
                connection: Some(u64::from(pid)),
                requests,
                ..Row::default()
            };
            row.wait.add(wait);
            row
        };
        let mut rows = vec![row(3, 5, 10), row(1, 9, 1000), row(2, 1, 50_000)];
        let pids = |rows: &[Row]| {
            rows.iter()
                .map(|r| r.client.pid.unwrap())
                .collect::<Vec<_>>()
        };
        sort(&mut rows, Column::Requests);
        assert_eq!(pids(&rows), [1, 3, 2]);
        sort(&mut rows, Column::P99);
        assert_eq!(pids(&rows), [2, 1, 3]);
        sort(&mut rows, Column::Client);
        assert_eq!(pids(&rows), [1, 2, 3]);
        // Ties keep a steady order: by connection.
        sort(&mut rows, Column::Errors);
        assert_eq!(pids(&rows), [1, 2, 3]);
    }

    #[test]
    fn waits_are_exact_while_few_then_bucketed() {
        let mut few = Waits::default();
        for us in [900, 100, 500] {
            few.add(us);
        }
        assert_eq!(
            (few.percentile(1), few.percentile(50), few.max()),
            (Some(100), Some(500), Some(900))
        );
        let mut many = Waits::default();
        for us in 0..100 {
            many.add(1_000 + us * 10);
        }
        assert!(many.few.is_empty(), "past {EXACT} values they are bucketed");
        assert_eq!((many.count(), many.max()), (100, Some(1_990)));
        let p50 = many.percentile(50).unwrap();
        assert!(p50.abs_diff(1_490) <= 1_490 / 16, "{p50}");
        // Few and many merge either way, into buckets past EXACT.
        let mut merged = few.clone();
        merged.merge(&many);
        assert_eq!((merged.count(), merged.max()), (103, Some(1_990)));
        assert!(merged.few.is_empty());
        let mut merged = many.clone();
        merged.merge(&few);
        // The smallest is kept exactly.
        assert_eq!((merged.count(), merged.percentile(0)), (103, Some(100)));
        let mut both = few.clone();
        both.merge(&few);
        assert_eq!((both.count(), both.percentile(50)), (6, Some(500)));
        assert_eq!(Waits::default().percentile(50), None);
    }

    #[test]
    fn the_sort_key_steps_through_every_column() {
        let mut column = Column::Requests;
        let mut seen = Vec::new();
        for _ in 0..Column::value_variants().len() {
            column = column.step(true);
            seen.push(column);
        }
        assert_eq!(column, Column::Requests);
        assert_eq!(seen.len(), 11);
        assert_eq!(Column::Client.step(false), Column::Errors);
        for column in Column::value_variants() {
            let value = column.to_possible_value().unwrap();
            assert_eq!(value.get_name(), column.name(), "--sort's name");
        }
    }
}
