//! `top`'s rows: what each connection, or each server endpoint, did over
//! the last interval.
//!
//! Takes resolved events and runs them through the conversation stage,
//! which hands on each finished exchange and each ended connection's
//! summary; at the end of every interval reads the live connections'
//! byte and error counts, and hands on one [`Row`] per connection (or per
//! server with [`by_server`]) for `table` to print and `screen` to show.
//!
//! With `--by kind` (decoding), each connection's exchanges are tallied
//! by request kind (what its decoder calls the request:
//! [`Message::kind`](crate::conversation::decode::Message::kind)) and the
//! rows are one per connection and kind, which [`by_server`] adds up per
//! server endpoint and kind.
//!
//! What is kept per connection between intervals is bounded: the counts
//! seen at the last refresh, and the interval's exchanges and their waits
//! ([`Waits`]: the values themselves while there are few, then a
//! fixed-bucket histogram; dropped at the refresh), by kind for at most
//! [`MAX_KINDS`] kinds. Ended connections are shown in the interval they
//! ended in, then forgotten.

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
    conversation::{
        Conversation, End, Exchange, Finding, Kind, Summary, Wanted, decode::Rule,
        histogram::Histogram,
    },
    idmap::IdMap,
    table::{diag, resolve::Event},
};

/// Request kinds tallied apart per connection in an interval; the
/// exchanges of any more count under [`OTHER_KINDS`].
pub const MAX_KINDS: usize = 32;

/// The kind that exchanges of kinds past [`MAX_KINDS`] count under.
pub const OTHER_KINDS: &str = "(other kinds)";

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
    /// Failed calls and socket errors, and failed decoded exchanges, in
    /// the interval; a kind's row: its failed exchanges.
    pub errors: u64,
    /// Bytes unread in the connections' sockets at the refresh (sock_diag);
    /// none when not known (a recording, a kind's row).
    pub queued: Option<u64>,
    /// A kind's row (`--by kind`): the protocol decoded, if any.
    pub app: Option<&'static str>,
    /// A kind's row: the requests' kind (`kind` in JSON); none for
    /// exchanges not decoded.
    pub request_kind: Option<Rc<str>>,
}

/// What `top` makes a row of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RowsBy {
    #[default]
    Connection,
    Server,
    /// A server endpoint and a request kind.
    Kind,
}

/// The columns, in the order shown; `--sort` takes their names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Column {
    Client,
    Server,
    Kind,
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
    /// The columns shown for rows `by`, in order: a connection count for
    /// rows of several connections, a kind for kinds' rows, and no queue
    /// for them (a socket's queue is of no one kind).
    pub fn shown(by: RowsBy) -> Vec<Self> {
        Self::value_variants()
            .iter()
            .copied()
            .filter(|column| match column {
                Self::Connections => by != RowsBy::Connection,
                Self::Kind => by == RowsBy::Kind,
                Self::Queued => by != RowsBy::Kind,
                _ => true,
            })
            .collect()
    }

    /// The next column shown for rows `by` to sort by (`>`), or the one
    /// before (`<`).
    pub fn step(self, forward: bool, by: RowsBy) -> Self {
        let shown = Self::shown(by);
        let Some(at) = shown.iter().position(|c| *c == self) else {
            return Self::default();
        };
        let next = if forward {
            (at + 1) % shown.len()
        } else {
            (at + shown.len() - 1) % shown.len()
        };
        shown[next]
    }

    /// The name `--sort` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Kind => "kind",
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

/// Exchanges finished in an interval: of a connection, or of one kind of
/// request on it.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    /// The exchanges' request and response bytes.
    bytes: [u64; 2],
    wait: Waits,
    /// Those whose response says they failed.
    failed: u64,
}

impl Tally {
    fn add(&mut self, exchange: &Exchange) {
        self.requests += 1;
        self.bytes[0] += exchange.turn.request.bytes();
        self.bytes[1] += exchange.turn.response.bytes();
        if let Some(us) = exchange.times.seen_us() {
            self.wait.add(us);
        }
        self.failed += u64::from(exchange.failed());
    }
}

/// One request kind's exchanges on a connection in an interval.
#[derive(Debug)]
struct KindTally {
    /// The protocol, and the kind (none for exchanges not decoded).
    app: Option<&'static str>,
    kind: Option<Rc<str>>,
    tally: Tally,
}

/// Counts `exchange` among a connection's `kinds`, under its own kind
/// while there are fewer than [`MAX_KINDS`].
fn add_by_kind(kinds: &mut Vec<KindTally>, exchange: &Exchange) {
    let app = exchange.app;
    let find = |kinds: &[KindTally], kind: Option<&str>| {
        kinds
            .iter()
            .position(|of| of.app == app && of.kind.as_deref() == kind)
    };
    let mut kind = exchange.request_kind();
    let mut at = find(kinds, kind);
    if at.is_none() && kinds.len() >= MAX_KINDS {
        kind = Some(OTHER_KINDS);
        at = find(kinds, kind);
    }
    let at = at.unwrap_or_else(|| {
        kinds.push(KindTally {
            app,
            kind: kind.map(Rc::from),
            tally: Tally::default(),
        });
        kinds.len() - 1
    });
    kinds[at].tally.add(exchange);
}

/// What `top` keeps of a connection between refreshes.
#[derive(Debug, Default)]
struct Seen {
    /// The connection's totals at the last refresh.
    bytes: [u64; 2],
    errors: u64,
    /// Its exchanges since the last refresh.
    all: Tally,
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
    /// `--by kind`: each connection's exchanges since the last refresh by
    /// request kind (kept apart from [`Seen`], which stays small).
    kinds: Option<IdMap<u64, Vec<KindTally>>>,
}

impl Default for Top {
    fn default() -> Self {
        Self::new()
    }
}

impl Top {
    /// Rows per connection, exchanges by direction (no decoding).
    pub fn new() -> Self {
        Self::with(None, false)
    }

    /// `decode`: decode each connection's protocol (with these
    /// `--decode-as` rules); `by_kind`: a row per connection and request
    /// kind.
    pub fn with(decode: Option<Vec<Rule>>, by_kind: bool) -> Self {
        Self {
            conversation: Conversation::new(Wanted {
                exchanges: true,
                // For what ended connections moved since the last refresh.
                summaries: true,
                no_wait_percentiles: true,
                decode: decode.is_some(),
                decode_as: decode.unwrap_or_default(),
                ..Wanted::default()
            }),
            seen: IdMap::default(),
            ended: Vec::new(),
            refreshes: 0,
            kinds: by_kind.then(IdMap::default),
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
                    let id = exchange.connection;
                    match &mut self.kinds {
                        Some(kinds) => add_by_kind(kinds.entry(id).or_default(), exchange),
                        None => self.seen.entry(id).or_default().all.add(exchange),
                    }
                }
                Finding::Summary(summary) => {
                    let seen = self.seen.remove(&summary.connection).unwrap_or_default();
                    if let Some(kinds) = &mut self.kinds {
                        let ends = (&summary.client, &summary.server);
                        let of = kinds.remove(&summary.connection).unwrap_or_default();
                        let rows = kind_rows(summary.kind, ends, summary.connection, of);
                        self.ended.extend(rows);
                    } else {
                        self.ended.push(ended_row(summary, seen));
                    }
                }
                // Not asked for: top hands on exchanges only.
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
            if let Some(kinds) = &mut self.kinds {
                let of = kinds.remove(&conn.id).unwrap_or_default();
                rows.extend(kind_rows(conn.kind, (client, server), conn.id, of));
            } else {
                let all = std::mem::take(&mut seen.all);
                rows.push(Row {
                    kind: conn.kind,
                    client: client.clone(),
                    server: server.clone(),
                    connection: Some(conn.id),
                    connections: 1,
                    clients: 1,
                    requests: all.requests,
                    bytes: [0, 1].map(|dir| bytes[dir].saturating_sub(seen.bytes[dir])),
                    wait: all.wait,
                    errors: errors.saturating_sub(seen.errors) + all.failed,
                    queued: queues.map(|queues| queues.of(client, server)),
                    ..Row::default()
                });
            }
            *seen = Seen {
                bytes,
                errors,
                refresh,
                ..Seen::default()
            };
        }
        // Connections dropped for room go without a summary.
        self.seen.retain(|_, seen| seen.refresh == refresh);
        if let Some(kinds) = &mut self.kinds {
            kinds.clear();
        }
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
        requests: seen.all.requests,
        bytes: [0, 1].map(|dir| summary.bytes[dir].saturating_sub(seen.bytes[dir])),
        wait: seen.all.wait,
        errors: summary
            .errors
            .iter()
            .map(|(_, count)| count)
            .sum::<u64>()
            .saturating_sub(seen.errors)
            + seen.all.failed,
        queued: None,
        ..Row::default()
    }
}

/// A row per request kind of connection `connection` (its `socket`'s
/// kind and its `(client, server)` ends): the exchanges of each kind, their
/// bytes and their failures.
fn kind_rows(
    socket: Kind,
    (client, server): (&End, &End),
    connection: u64,
    kinds: Vec<KindTally>,
) -> impl Iterator<Item = Row> {
    let (client, server) = (client.clone(), server.clone());
    kinds
        .into_iter()
        .map(move |KindTally { app, kind, tally }| Row {
            kind: socket,
            client: client.clone(),
            server: server.clone(),
            connection: Some(connection),
            connections: 1,
            clients: 1,
            requests: tally.requests,
            bytes: tally.bytes,
            wait: tally.wait,
            errors: tally.failed,
            queued: None,
            app,
            request_kind: kind,
        })
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

/// One row per server endpoint (and for kinds' rows, per server endpoint
/// and kind), adding up its connections' rows.
pub fn by_server(rows: Vec<Row>) -> Vec<Row> {
    type Key = (ServerKey, Option<&'static str>, Option<Rc<str>>);
    let mut servers: Vec<(Row, Vec<ClientKey>)> = Vec::new();
    let mut index: HashMap<Key, usize> = HashMap::new();
    for mut row in rows {
        let client = ClientKey::of(&row.client);
        // One listener, as its IPv4 and its IPv4-mapped IPv6 clients see it.
        row.server.addr = row.server.addr.map(canonical);
        let key = (ServerKey::of(&row), row.app, row.request_kind.clone());
        match index.entry(key) {
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
            Column::Client | Column::Server | Column::Kind => None,
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
            Column::Kind => a.request_kind.cmp(&b.request_kind),
            _ => number(b).cmp(&number(a)),
        };
        by_column
            .then_with(|| (b.bytes[0] + b.bytes[1]).cmp(&(a.bytes[0] + a.bytes[1])))
            .then_with(|| a.connection.cmp(&b.connection))
            .then_with(|| table::server_text(a).cmp(&table::server_text(b)))
            .then_with(|| a.request_kind.cmp(&b.request_kind))
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

    /// One decoded exchange on collectd `pid`'s connection: `request`
    /// sent at `ms`, `response` read `wait_ms` later (each call carrying
    /// its bytes, as `--decode` captures them).
    fn said(top: &mut Top, pid: u32, ms: u64, wait_ms: u64, request: &[u8], response: &[u8]) {
        let calls = [
            (true, EventKind::Send, request, ms),
            (false, EventKind::Recv, request, ms),
            (false, EventKind::Send, response, ms + wait_ms),
            (true, EventKind::Recv, response, ms + wait_ms),
        ];
        for (client, kind, bytes, at) in calls {
            let mut event = call(pid, client, kind, bytes.len() as i64, at);
            event.data = bytes::Bytes::copy_from_slice(bytes);
            top.event(&event);
        }
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

    /// Rows per server and request kind, from two clients: each kind's
    /// exchanges, bytes, waits and failures; failures count as errors in
    /// a connection's row too.
    #[test]
    fn decoded_exchanges_make_rows_per_kind() {
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        let (ok, value, err) = (&b"+OK\r\n"[..], &b"$1\r\nv\r\n"[..], &b"-ERR no\r\n"[..]);
        let run = |by_kind| {
            let mut top = Top::with(Some(Vec::new()), by_kind);
            said(&mut top, 10, 0, 2, set, ok);
            said(&mut top, 10, 10, 4, get, value);
            said(&mut top, 10, 20, 6, get, value);
            said(&mut top, 11, 0, 30, get, err);
            // An inline command, after the connection was recognised.
            said(&mut top, 11, 50, 1, b"PING\r\n", b"+PONG\r\n");
            close(&mut top, 10, 100);
            close(&mut top, 11, 100);
            let rows = top.refresh(None);
            let kept = top.kinds.as_ref().map_or(0, |kinds| kinds.len());
            assert_eq!(kept, 0, "nothing kept of ended connections");
            rows
        };
        let rows = by_server(run(true));
        type Counts<'a> = (Option<&'a str>, Option<&'a str>, u64, u64, u64, [u64; 2]);
        let mut kinds: Vec<Counts> = rows
            .iter()
            .map(|row| {
                (
                    row.app,
                    row.request_kind.as_deref(),
                    row.requests,
                    row.connections,
                    row.errors,
                    row.bytes,
                )
            })
            .collect();
        kinds.sort();
        let (get, set) = (get.len() as u64, set.len() as u64);
        let (ok, value, err) = (ok.len() as u64, value.len() as u64, err.len() as u64);
        assert_eq!(
            kinds,
            [
                (
                    Some("redis"),
                    Some("GET"),
                    3,
                    2,
                    1,
                    [3 * get, 2 * value + err]
                ),
                (Some("redis"), Some("PING"), 1, 1, 0, [6, 7]),
                (Some("redis"), Some("SET"), 1, 1, 0, [set, ok]),
            ]
        );
        let gets = rows
            .iter()
            .find(|row| row.request_kind.as_deref() == Some("GET"))
            .unwrap();
        assert_eq!(gets.clients, 2);
        assert_eq!(gets.wait.max(), Some(30_000));
        assert_eq!(gets.wait.percentile(50), Some(6_000));
        assert_eq!(gets.queued, None);
        // By connection, failed exchanges count as errors.
        let mut rows = run(false);
        rows.sort_by_key(|row| row.client.pid);
        let counts: Vec<(u64, u64)> = rows.iter().map(|r| (r.requests, r.errors)).collect();
        assert_eq!(counts, [(3, 0), (2, 1)]);
        assert!(rows.iter().all(|row| row.request_kind.is_none()));
    }

    #[test]
    fn kinds_past_the_bound_count_together() {
        let mut top = Top::with(Some(Vec::new()), true);
        let mut at = 0;
        for n in 0..MAX_KINDS + 5 {
            let command = format!("CMD{n:02}");
            let request = format!("*1\r\n${}\r\n{command}\r\n", command.len());
            said(&mut top, 10, at, 1, request.as_bytes(), b"+OK\r\n");
            at += 10;
        }
        close(&mut top, 10, at);
        let rows = top.refresh(None);
        assert_eq!(rows.len(), MAX_KINDS + 1);
        let other = rows
            .iter()
            .find(|row| row.request_kind.as_deref() == Some(OTHER_KINDS))
            .unwrap();
        assert_eq!(other.requests, 5);
        let all = MAX_KINDS as u64 + 5;
        assert_eq!(rows.iter().map(|row| row.requests).sum::<u64>(), all);
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
    fn the_sort_key_steps_through_every_column_shown() {
        for (by, count) in [
            (RowsBy::Connection, 10),
            (RowsBy::Server, 11),
            (RowsBy::Kind, 11),
        ] {
            let shown = Column::shown(by);
            assert_eq!(shown.len(), count, "{by:?}");
            let mut column = Column::Requests;
            let mut seen = Vec::new();
            for _ in 0..count {
                column = column.step(true, by);
                seen.push(column);
            }
            assert_eq!(column, Column::Requests);
            seen.sort_by_key(|column| shown.iter().position(|c| c == column));
            assert_eq!(seen, shown, "every column shown, once");
            assert_eq!(Column::Client.step(false, by), Column::Errors);
        }
        assert!(!Column::shown(RowsBy::Connection).contains(&Column::Connections));
        assert!(!Column::shown(RowsBy::Kind).contains(&Column::Queued));
        assert!(Column::shown(RowsBy::Kind).contains(&Column::Kind));
        for column in Column::value_variants() {
            let value = column.to_possible_value().unwrap();
            assert_eq!(value.get_name(), column.name(), "--sort's name");
        }
    }
}
