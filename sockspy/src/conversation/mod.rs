//! Conversations: from resolved events to exchanges and connection summaries.
//!
//! Takes the resolved events the user asked to see, in order (live, or
//! read back from a recording: the same events give the same answers);
//! follows every connection's two ends and its turns (`turns`); hands on
//! each finished exchange (a request and its response, with where the
//! time went) and, when a connection ends, its summary (latency
//! percentiles from fixed buckets: `histogram`). `top` reads the live
//! connections as well.
//!
//! A connection is a pair of sockets: a connected stream's two ends
//! (Unix stream or seqpacket, TCP), found through each event's peer; or
//! a datagram socket and the one it sends to or receives from, found
//! through the peer or the address each record names ([`Datagrams`]). An
//! end on another machine is its address. Memory is bounded: a connection's
//! state is small and fixed, ended connections are summarised and
//! dropped, and past [`MAX_CONNECTIONS`] the least recently active are
//! summarised as they stand.

pub mod decode;
pub mod histogram;
pub mod turns;

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    rc::Rc,
};

use sockspy_common::{EventKind, FLAG_PEEK};

use self::{
    decode::{Change, Decoding, Opening, Piece},
    histogram::Histogram,
    turns::{REQUEST, RESPONSE, Turn, Turns},
};
use crate::{
    capture::events::UnixName,
    idmap::IdMap,
    table::resolve::{Event, Peer, at_or_wildcard, canonical, plainly_here},
};

/// Connections followed at once; past this the least recently active
/// eighth is summarised and dropped.
pub const MAX_CONNECTIONS: usize = 65_536;

const SOCK_DGRAM: u16 = libc::SOCK_DGRAM as u16;

/// One end of a connection, as `trace --json` names a socket's holder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct End {
    pub pid: Option<u32>,
    pub comm: Option<Rc<str>>,
    pub fd: Option<i32>,
    pub sock: Option<u64>,
    pub path: Option<Rc<UnixName>>,
    pub addr: Option<SocketAddr>,
    /// This end's own records were seen (not only its name, as a peer).
    pub seen: bool,
}

impl End {
    /// The end whose event this is.
    fn of(event: &Event) -> Self {
        Self {
            pid: Some(event.pid),
            comm: Some(Rc::clone(&event.comm)),
            fd: event.fd,
            sock: event.sock,
            path: event.path.clone(),
            addr: event.local,
            seen: true,
        }
    }

    /// The other end of `event`, as far as the event names it.
    fn peer_of(event: &Event) -> Self {
        let Some(peer) = &event.peer else {
            return Self {
                addr: event.remote,
                ..Self::default()
            };
        };
        let Peer {
            sock,
            pid,
            comm,
            fd,
            path,
            addr,
            ..
        } = peer;
        Self {
            pid: *pid,
            comm: comm.clone(),
            fd: *fd,
            sock: *sock,
            path: path.clone(),
            addr: addr.or(event.remote),
            seen: false,
        }
    }

    /// Takes what `event` says of this end (its own record) if anything changed.
    fn update_own(&mut self, event: &Event) {
        if !self.seen
            || self.pid != Some(event.pid)
            || self.fd != event.fd
            || (self.path.is_none() && event.path.is_some())
        {
            *self = Self::of(event);
        }
    }

    /// Takes what `event`, from the other end, says of this one, unless
    /// this end's own records were seen: a holder named replaces what was
    /// known; otherwise what the event names fills what was not.
    fn update_peer(&mut self, event: &Event) {
        if self.seen {
            return;
        }
        let named = Self::peer_of(event);
        if named.pid.is_some() {
            *self = Self {
                sock: named.sock.or(self.sock),
                ..named
            };
            return;
        }
        self.sock = self.sock.or(named.sock);
        self.addr = self.addr.or(named.addr);
        if self.path.is_none() {
            self.path = named.path;
        }
    }
}

/// Where an exchange's time went, in microseconds; each part is there
/// when the records it needs were seen. They are the asker's: in an
/// exchange the server asked ([`Turn::asked_by_server`]), `queue_us` is
/// the server's send until the client read it, `server_us` the client's
/// time to answer, `wait_us` what the server waited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    /// The request's first send until the server first read it.
    pub queue_us: Option<u64>,
    /// The server's first read of the request until its last.
    pub read_us: Option<u64>,
    /// The server's last read of the request until its first send of the response.
    pub server_us: Option<u64>,
    /// That send until the client first read it.
    pub return_us: Option<u64>,
    /// The client's first send until its first read of the response.
    pub wait_us: Option<u64>,
}

impl Times {
    pub fn of(turn: &Turn) -> Self {
        let (request, response) = (&turn.request, &turn.response);
        // Differences of whole microseconds since the first of the times:
        // the parts add up to the whole, and a recording (whose clock is
        // the wall clock) gives the same numbers as the live trace.
        let base = [request.first_send, request.first_read, response.first_send]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_default();
        let mut stamps = [
            request.first_send,
            request.first_read,
            request.last_read,
            response.first_send,
            response.first_read,
        ]
        .map(|ns| ns.map(|ns| ns.saturating_sub(base) / 1000));
        // In the order the exchange went, and none past the client's read
        // of the answer: a stamp taken as a call returned (a hook at a
        // function's exit, a sender preempted by the reader it woke) can
        // come after one the other end took as its call went on.
        let last = stamps[4];
        let mut floor = None;
        for stamp in stamps.iter_mut().flatten() {
            *stamp = (*stamp).max(floor.unwrap_or(0));
            *stamp = last.map_or(*stamp, |last| (*stamp).min(last));
            floor = Some(*stamp);
        }
        let between = |from: usize, to: usize| Some(stamps[to]? - stamps[from]?);
        Self {
            queue_us: between(0, 1),
            read_us: between(1, 2),
            server_us: between(2, 3),
            return_us: between(3, 4),
            wait_us: between(0, 4),
        }
    }

    /// What the client waited, or with the client on another machine, what
    /// the server took: what `--slower-than` and the latency columns use.
    pub fn seen_us(&self) -> Option<u64> {
        self.wait_us.or(self.server_us)
    }
}

/// What kind of socket a connection is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kind {
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
}

/// A request and its response (`"event": "exchange"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The connection's number in this trace.
    pub connection: u64,
    pub kind: Kind,
    /// The connection's ends (whichever asked: [`Turn::asked_by_server`]).
    pub client: End,
    pub server: End,
    /// When it started: the request's first send (or first read).
    pub start_ns: u64,
    pub turn: Turn,
    pub times: Times,
    /// The protocol decoded (`--decode`).
    pub app: Option<&'static str>,
    /// Why this connection is no longer decoded, said once.
    pub undecoded: Option<String>,
    /// Decoding picked up this connection, older than the trace, at this
    /// offset of its requests (said once, on its first decoded exchange).
    pub resync_offset: Option<u64>,
}

impl Exchange {
    /// Its response says the request failed (decoded exchanges only).
    pub fn failed(&self) -> bool {
        self.turn
            .response
            .message
            .as_ref()
            .is_some_and(|message| message.failed)
    }

    /// Its request's kind ([`decode::Message::kind`]), when decoded.
    pub fn request_kind(&self) -> Option<&str> {
        self.turn.request.message.as_ref()?.kind.as_deref()
    }
}

/// A connection, when it ended or when the trace did (`"event": "summary"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub connection: u64,
    pub kind: Kind,
    pub client: End,
    pub server: End,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Bytes and messages each way, the client's view: [sent, received].
    pub bytes: [u64; 2],
    pub messages: [u64; 2],
    pub exchanges: u64,
    pub wait: Histogram,
    /// `client` or `server`: whose end closed first.
    pub closed_by: Option<&'static str>,
    /// Failed calls and socket errors, by errno, in the order first seen.
    pub errors: Vec<(i64, u64)>,
    /// Still open when the trace stopped (or dropped for room).
    pub open: bool,
}

/// A message a call's bytes completed (`--decode` without `--exchanges`):
/// shown with the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub app: &'static str,
    pub message: decode::Message,
}

/// What decoding made of one call (`--decode` without `--exchanges`):
/// the messages its bytes completed, and what decoding says once per
/// connection, at the call it happened at (as an exchange says it with
/// `--exchanges`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallDecoding {
    pub messages: Vec<Decoded>,
    /// Why the connection went back to plain turns.
    pub undecoded: Option<String>,
    /// Where decoding picked up a connection joined mid-stream.
    pub resync_offset: Option<u64>,
}

impl CallDecoding {
    /// A call that decoding made nothing of.
    pub const NONE: Self = Self {
        messages: Vec::new(),
        undecoded: None,
        resync_offset: None,
    };

    fn clear(&mut self) {
        self.messages.clear();
        self.undecoded = None;
        self.resync_offset = None;
    }
}

/// What the tracker found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Exchange(Box<Exchange>),
    Summary(Box<Summary>),
}

/// What to hand on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub exchanges: bool,
    pub summaries: bool,
    /// Summaries without `wait` percentiles: no connection keeps a
    /// histogram (a kilobyte each). `top` keeps its own, per interval.
    pub no_wait_percentiles: bool,
    /// Only exchanges whose [`Times::seen_us`] is at least this.
    pub slower_than_us: Option<u64>,
    /// `--errors`: only exchanges whose response says they failed.
    pub errors_only: bool,
    /// `--decode`: protocols decoded, exchanges split at their messages.
    pub decode: bool,
    /// `--decode-as`: the protocol of a server's connections, by its path or port.
    pub decode_as: Vec<decode::Rule>,
}

impl Wanted {
    /// Whether `exchange` passes `--slower-than` and `--errors`.
    fn keeps(&self, exchange: &Exchange) -> bool {
        let slow_enough = self
            .slower_than_us
            .is_none_or(|threshold| exchange.times.seen_us().is_some_and(|us| us >= threshold));
        slow_enough && (!self.errors_only || exchange.failed())
    }
}

/// The conversation stage of a trace or a reading: the tracker, what it
/// found since last asked, and whether calls are printed as well.
#[derive(Debug)]
pub struct Conversation {
    tracker: Tracker,
    found: Vec<Finding>,
    calls_too: bool,
}

impl Conversation {
    pub fn new(wanted: Wanted) -> Self {
        Self {
            calls_too: !wanted.exchanges,
            found: Vec::new(),
            tracker: Tracker::new(wanted),
        }
    }

    /// Every live connection, in no order (what `top` reads).
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.tracker.connections()
    }

    /// What decoding made of the last event's call.
    pub fn decoded(&self) -> &CallDecoding {
        self.tracker.decoded()
    }

    /// Calls are printed too (`--summaries` alone), not only exchanges.
    pub fn calls_too(&self) -> bool {
        self.calls_too
    }

    pub fn event(&mut self, event: &Event) {
        let found = &mut self.found;
        self.tracker
            .event(event, &mut |finding| found.push(finding));
    }

    /// The trace ended: everything still open.
    pub fn finish(&mut self) {
        let found = &mut self.found;
        self.tracker.finish(&mut |finding| found.push(finding));
    }

    /// What was found since last asked; hand the list back with
    /// [`Self::give_back`] to keep its memory.
    pub fn take(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.found)
    }

    pub fn give_back(&mut self, mut found: Vec<Finding>) {
        found.clear();
        if self.found.is_empty() {
            self.found = found;
        }
    }
}

/// Where a datagram conversation is found: by its two sockets (in order),
/// or by one of its sockets and the address the other end sends from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum DatagramKey {
    Socks(u64, u64),
    Addr(u64, SocketAddr),
}

/// Keys kept per datagram conversation: a record gives at most three, and
/// the two ends' records the same few.
const DATAGRAM_KEYS: usize = 8;

impl DatagramKey {
    /// The sockets it names.
    fn socks(self) -> [Option<u64>; 2] {
        match self {
            Self::Socks(a, b) => [Some(a), Some(b)],
            Self::Addr(sock, _) => [Some(sock), None],
        }
    }
}

/// The datagram conversations by [`DatagramKey`]. Records name the other
/// end as they can: its socket when the resolver knew it, else only its
/// address; and a socket bound to a wildcard address (a server on
/// `0.0.0.0`) knows its own port but not the address its peers reach it
/// at. Every key a record gives is kept, so the two ends' records find one
/// conversation whichever came first and however much of it was named.
#[derive(Debug, Default)]
struct Datagrams {
    by_socks: HashMap<(u64, u64), u64>,
    /// (socket, the other end's port) -> the other end's address (any when
    /// unspecified) and the conversation.
    by_port: HashMap<(u64, u16), Vec<(IpAddr, u64)>>,
    /// (network namespace, address) -> the datagram socket seen bound
    /// there, and back: the other end of a record that names it only by
    /// its address, when the resolver could not (yet) say whose it is.
    at: HashMap<(u32, SocketAddr), u64>,
    addr_of: IdMap<u64, (u32, SocketAddr)>,
}

impl Datagrams {
    /// Socket `sock` is at `addr` in network namespace `netns`.
    fn learn(&mut self, sock: u64, netns: u32, addr: SocketAddr) {
        let place = (netns, canonical(addr));
        if addr.port() == 0 || self.addr_of.get(&sock) == Some(&place) {
            return;
        }
        // Hints only: past the bound, start again.
        if self.addr_of.len() >= 2 * MAX_CONNECTIONS {
            self.at.clear();
            self.addr_of.clear();
        }
        self.forget_socket(sock);
        self.at.insert(place, sock);
        self.addr_of.insert(sock, place);
    }

    /// The socket seen at `addr` in `netns`, or bound to its port's
    /// wildcard when `addr` is this machine's (`here`).
    fn socket_at(&self, netns: u32, addr: SocketAddr, here: bool) -> Option<u64> {
        at_or_wildcard(canonical(addr), here, |addr| {
            self.at.get(&(netns, addr)).copied()
        })
    }

    /// Socket `sock` closed: it is at no address any more.
    fn forget_socket(&mut self, sock: u64) {
        if let Some(place) = self.addr_of.remove(&sock)
            && self.at.get(&place) == Some(&sock)
        {
            self.at.remove(&place);
        }
    }

    fn get(&self, key: DatagramKey) -> Option<u64> {
        match key {
            DatagramKey::Socks(a, b) => self.by_socks.get(&(a, b)).copied(),
            DatagramKey::Addr(sock, addr) => {
                let ip = addr.ip().to_canonical();
                let known = self.by_port.get(&(sock, addr.port()))?;
                known
                    .iter()
                    .find(|(other, _)| *other == ip)
                    .or_else(|| {
                        known
                            .iter()
                            .find(|(other, _)| other.is_unspecified() || ip.is_unspecified())
                    })
                    .map(|(_, id)| *id)
            }
        }
    }

    /// Files `key` under `id`, unless it already names a conversation.
    fn insert(&mut self, key: DatagramKey, id: u64) -> bool {
        match key {
            DatagramKey::Socks(a, b) => match self.by_socks.entry((a, b)) {
                Entry::Occupied(_) => false,
                Entry::Vacant(entry) => {
                    entry.insert(id);
                    true
                }
            },
            DatagramKey::Addr(sock, addr) => {
                let ip = addr.ip().to_canonical();
                let known = self.by_port.entry((sock, addr.port())).or_default();
                if known.iter().any(|(other, _)| *other == ip) {
                    return false;
                }
                known.push((ip, id));
                true
            }
        }
    }

    fn remove(&mut self, key: DatagramKey, id: u64) {
        match key {
            DatagramKey::Socks(a, b) => {
                if self.by_socks.get(&(a, b)) == Some(&id) {
                    self.by_socks.remove(&(a, b));
                }
            }
            DatagramKey::Addr(sock, addr) => {
                if let Entry::Occupied(mut known) = self.by_port.entry((sock, addr.port())) {
                    known.get_mut().retain(|(_, other)| *other != id);
                    if known.get().is_empty() {
                        known.remove();
                    }
                }
            }
        }
    }
}

/// One connection's state.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub kind: Kind,
    ends: [End; 2],
    /// Which of `ends` is the client, once known.
    client: Option<usize>,
    /// Its connect, accept or socketpair was seen: its streams' offsets
    /// count from their start (otherwise it is older than the trace).
    opened: bool,
    pub turns: Turns,
    pub decoding: Decoding,
    /// The protocol its messages were decoded as.
    app: Option<&'static str>,
    /// Messages each way (sends, or reads where no send was seen).
    sent_messages: [u64; 2],
    read_messages: [u64; 2],
    pub wait: Histogram,
    pub start_ns: u64,
    pub last_ns: u64,
    closed: [bool; 2],
    /// Each end read the end of the stream.
    eof: [bool; 2],
    /// The socket error each end's `state` record reported last.
    socket_error: [Option<i64>; 2],
    closed_by: Option<usize>,
    pub errors: Vec<(i64, u64)>,
    /// A datagram conversation's keys (at most [`DATAGRAM_KEYS`]).
    datagram: Option<Vec<DatagramKey>>,
}

impl Connection {
    fn new(id: u64, event: &Event, datagram: Option<Vec<DatagramKey>>) -> Self {
        Self {
            id,
            kind: Kind {
                family: event.family,
                sock_type: event.sock_type,
                protocol: event.protocol,
            },
            ends: [End::default(), End::default()],
            client: None,
            opened: false,
            turns: Turns::new(datagram.is_some()),
            decoding: Decoding::default(),
            app: None,
            sent_messages: [0; 2],
            read_messages: [0; 2],
            wait: Histogram::default(),
            start_ns: event.ts_ns,
            last_ns: event.ts_ns,
            closed: [false; 2],
            eof: [false; 2],
            socket_error: [None; 2],
            closed_by: None,
            errors: Vec::new(),
            datagram,
        }
    }

    /// Which end `sock` is, making it one if there is room.
    fn end_of(&mut self, sock: u64) -> usize {
        if let Some(index) = self.ends.iter().position(|end| end.sock == Some(sock)) {
            return index;
        }
        let index = usize::from(self.ends[0].sock.is_some() || self.ends[0].seen);
        self.ends[index].sock = Some(sock);
        index
    }

    /// The client's end and the server's, in that order (the first end is
    /// the client while nobody has spoken).
    pub fn client_server(&self) -> (&End, &End) {
        let client = self.client.unwrap_or(0);
        (&self.ends[client], &self.ends[1 - client])
    }

    /// Bytes each way, the client's view: [sent, received].
    pub fn bytes(&self) -> [u64; 2] {
        [self.turns.bytes(REQUEST), self.turns.bytes(RESPONSE)]
    }

    /// Messages each way, the client's view: [sent, received].
    pub fn messages(&self) -> [u64; 2] {
        [REQUEST, RESPONSE].map(|dir| {
            if self.sent_messages[dir] > 0 {
                self.sent_messages[dir]
            } else {
                self.read_messages[dir]
            }
        })
    }

    /// Failed calls and socket errors so far.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, count)| count).sum()
    }

    /// Every end whose records were seen is done with the connection: it
    /// closed it, or read its end after the other end closed (a process
    /// that then exits closes nothing the trace sees), or it is gone
    /// without a close the trace saw (its process exited: the kernel
    /// closes what an exiting process holds, with no system call): the
    /// other end read the end of the stream, closed, and nothing it sent
    /// is still to be read (an end that only shut down its sending side
    /// still reads the answer, and is done once it has).
    fn done(&self) -> bool {
        (0..2).all(|i| {
            !self.ends[i].seen
                || self.closed[i]
                || (self.eof[i] && self.closed[1 - i])
                || (self.eof[1 - i] && self.closed[1 - i] && !self.turns.unread(self.toward(i)))
        })
    }

    /// A datagram conversation is done when an end closed, unless the
    /// other, seen and open, has still to read what the closed one sent
    /// (a server that answers and exits before its client reads).
    fn datagram_done(&self) -> bool {
        (0..2).any(|i| {
            self.closed[i]
                && (!self.ends[1 - i].seen
                    || self.closed[1 - i]
                    || !self.turns.unread(self.toward(1 - i)))
        })
    }

    /// The direction of the bytes `end` reads.
    fn toward(&self, end: usize) -> usize {
        if self.client == Some(end) {
            RESPONSE
        } else {
            REQUEST
        }
    }

    /// What a `--decode-as` rule says of this connection's server: its
    /// protocol, or `Some(None)` to leave it undecoded.
    fn forced_protocol(&self, rules: &[decode::Rule]) -> Option<Option<&'static str>> {
        let (_, server) = self.client_server();
        let path = server.path.as_deref().map(UnixName::text);
        let port = server.addr.map(|addr| addr.port());
        rules
            .iter()
            .find(|rule| rule.applies(path.as_deref(), port))
            .map(|rule| rule.protocol)
    }

    /// Counts a failed call, or a socket error (`state`) of `end`; the
    /// call that then fails with that socket's error (a reset, a refused
    /// connect) is the same error, counted once.
    fn error(&mut self, end: usize, errno: i64, socket_error: bool) {
        if socket_error {
            self.socket_error[end] = Some(errno);
        } else if self.socket_error[end].take() == Some(errno) {
            return;
        }
        match self.errors.iter_mut().find(|(e, _)| *e == errno) {
            Some((_, count)) => *count += 1,
            None => self.errors.push((errno, 1)),
        }
    }

    /// Where the time of `turn` went; its wait goes into the connection's
    /// histogram when `percentiles` are wanted and the client asked (an
    /// exchange the server asked times the client's answer).
    fn timed(&mut self, turn: &Turn, percentiles: bool) -> Times {
        let times = Times::of(turn);
        if let Some(wait) = times.seen_us()
            && percentiles
            && !turn.asked_by_server()
        {
            self.wait.add(wait);
        }
        times
    }

    /// Makes `turn` an exchange (see [`Self::timed`]).
    fn exchange(&mut self, turn: Turn, percentiles: bool) -> Exchange {
        let times = self.timed(&turn, percentiles);
        let (client, server) = self.client_server();
        let start_ns = [
            turn.request.first_send,
            turn.request.first_read,
            turn.response.first_send,
            turn.response.first_read,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.last_ns);
        let app = turn
            .request
            .message
            .as_ref()
            .or(turn.response.message.as_ref())
            .and(self.app);
        Exchange {
            connection: self.id,
            kind: self.kind,
            client: client.clone(),
            server: server.clone(),
            start_ns,
            turn,
            times,
            app,
            undecoded: self.decoding.take_reason(),
            resync_offset: app.and_then(|_| self.decoding.take_resynced()),
        }
    }

    fn summary(&self, open: bool) -> Summary {
        let (client, server) = self.client_server();
        let client_index = self.client.unwrap_or(0);
        Summary {
            connection: self.id,
            kind: self.kind,
            client: client.clone(),
            server: server.clone(),
            start_ns: self.start_ns,
            end_ns: self.last_ns,
            bytes: self.bytes(),
            messages: self.messages(),
            exchanges: self.turns.finished,
            wait: self.wait.clone(),
            closed_by: self.closed_by.map(|end| {
                if end == client_index {
                    "client"
                } else {
                    "server"
                }
            }),
            errors: self.errors.clone(),
            open,
        }
    }
}

/// The ephemeral ports Linux gives a connecting socket: this machine's
/// `net.ipv4.ip_local_port_range`, else its default.
fn ephemeral_ports() -> RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| port_range(&text))
        .unwrap_or(32768..=60999)
}

/// The range `ip_local_port_range` says: two ports, the lower first.
fn port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let ends: Option<Vec<u16>> = text.split_whitespace().map(|n| n.parse().ok()).collect();
    match ends.as_deref()? {
        &[low, high] if low <= high => Some(low..=high),
        _ => None,
    }
}

/// Whether the end whose event this is serves its connection, when the
/// ends say so by themselves (a connection older than the trace, whose
/// connect and accept were not seen): of a Unix connection, the end that
/// has a name (an accepted socket has its listener's) and the other not;
/// of a TCP connection, the end whose port is not `ephemeral` and the
/// other's is.
fn is_server(event: &Event, ephemeral: &RangeInclusive<u16>) -> Option<bool> {
    let peer = event.peer.as_ref();
    if event.family == sockspy_common::AF_UNIX {
        let peer_named = peer.is_some_and(|peer| peer.path.is_some());
        return (event.path.is_some() != peer_named).then_some(event.path.is_some());
    }
    if event.protocol != sockspy_common::IPPROTO_TCP {
        return None;
    }
    let local = ephemeral.contains(&event.local?.port());
    let remote = ephemeral.contains(&event.remote?.port());
    (local != remote).then_some(remote)
}

/// Errors that are not failures: retry, would block, in progress.
fn is_failure(errno: i64) -> bool {
    !matches!(
        errno as i32,
        libc::EAGAIN | libc::EINTR | libc::EINPROGRESS | libc::EALREADY
    )
}

/// Every connection of the trace.
#[derive(Debug)]
pub struct Tracker {
    wanted: Wanted,
    connections: IdMap<u64, Connection>,
    /// A connected stream's socket -> its connection.
    streams: IdMap<u64, u64>,
    datagrams: Datagrams,
    /// A datagram socket -> its conversations.
    datagram_socks: IdMap<u64, Vec<u64>>,
    next_id: u64,
    /// What decoding made of the last event's call.
    decoded: CallDecoding,
    /// Room for the messages a call completes, kept from call to call.
    completed: Vec<decode::Message>,
    /// The ports a connecting TCP socket is given.
    ephemeral: RangeInclusive<u16>,
}

impl Tracker {
    pub fn new(wanted: Wanted) -> Self {
        Self {
            wanted,
            connections: IdMap::default(),
            streams: IdMap::default(),
            datagrams: Datagrams::default(),
            datagram_socks: IdMap::default(),
            next_id: 0,
            decoded: CallDecoding::default(),
            completed: Vec::new(),
            ephemeral: ephemeral_ports(),
        }
    }

    /// Every live connection, in no order.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.connections.values()
    }

    /// What decoding made of the last event's call (decoding without
    /// exchanges).
    pub fn decoded(&self) -> &CallDecoding {
        &self.decoded
    }

    /// Takes one event; hands what it finished to `found`.
    pub fn event(&mut self, event: &Event, found: &mut impl FnMut(Finding)) {
        self.decoded.clear();
        let Some(sock) = event.sock else { return };
        if event.kind == EventKind::Close && event.sock_type == SOCK_DGRAM {
            // A datagram socket's conversations end with it (see
            // `Connection::datagram_done`).
            if event.released {
                self.datagrams.forget_socket(sock);
                for id in self.datagram_socks.get(&sock).cloned().unwrap_or_default() {
                    let Some(conn) = self.connections.get_mut(&id) else {
                        continue;
                    };
                    conn.last_ns = conn.last_ns.max(event.ts_ns);
                    let end = conn.end_of(sock);
                    conn.closed_by.get_or_insert(end);
                    conn.closed[end] = true;
                    if conn.datagram_done() {
                        self.end(id, false, found);
                    }
                }
            }
            return;
        }
        let failed = event.ret < 0;
        let data = matches!(event.kind, EventKind::Send | EventKind::Recv);
        let tracked = match event.kind {
            EventKind::Send | EventKind::Recv => event.flags & FLAG_PEEK == 0,
            EventKind::Connect
            | EventKind::Accept
            | EventKind::Socketpair
            | EventKind::Close
            | EventKind::State => true,
            _ => false,
        };
        if !tracked || (data && event.ret == 0 && event.kind == EventKind::Send) {
            return;
        }
        // Only a record that moved bytes, made a connection or failed one
        // starts following one; closing or a state change of an unknown
        // one does not.
        let starts = (data && event.ret > 0)
            || (event.kind == EventKind::Connect && (!failed || is_failure(-event.ret)))
            || (event.kind == EventKind::State && failed)
            || (event.kind == EventKind::Accept && !failed)
            || (event.kind == EventKind::Socketpair && !failed && event.sock_type != SOCK_DGRAM);
        let Some(id) = self.connection_of(sock, event, starts) else {
            return;
        };
        let conn = self.connections.get_mut(&id).expect("indexed");
        conn.last_ns = conn.last_ns.max(event.ts_ns);
        let end = conn.end_of(sock);
        conn.ends[end].update_own(event);
        conn.ends[1 - end].update_peer(event);
        if failed && is_failure(-event.ret) {
            conn.error(end, -event.ret, event.kind == EventKind::State);
        }
        match event.kind {
            EventKind::Connect if !failed || !is_failure(-event.ret) => {
                conn.client.get_or_insert(end);
                conn.opened = true;
            }
            EventKind::Accept => {
                conn.client.get_or_insert(1 - end);
                conn.opened = true;
            }
            // Both ends at once; the first to send is the client.
            EventKind::Socketpair if !failed => conn.opened = true,
            EventKind::Send | EventKind::Recv if event.ret > 0 => {
                let read = event.kind == EventKind::Recv;
                // The first to send is the client, unless a connect or an
                // accept said, or the ends' names or ports do; a send to a
                // connection not yet accepted is from its client.
                let pending = event.peer.as_ref().is_some_and(|peer| peer.pending);
                let client = *conn
                    .client
                    .get_or_insert(match is_server(event, &self.ephemeral) {
                        Some(server) => usize::from(server) ^ end,
                        None if read && !pending => 1 - end,
                        None => end,
                    });
                let dir = if (end == client) != read {
                    REQUEST
                } else {
                    RESPONSE
                };
                if read {
                    conn.read_messages[dir] += 1;
                } else {
                    conn.sent_messages[dir] += 1;
                }
                if self.wanted.decode {
                    let offset = conn.turns.offset(dir, read);
                    let mut messages = std::mem::take(&mut self.completed);
                    let len = event.ret as u64;
                    // Asked only while the connection's protocol is undecided.
                    let forced = matches!(conn.decoding, Decoding::Undecided)
                        .then(|| conn.forced_protocol(&self.wanted.decode_as))
                        .flatten();
                    let opening = Opening {
                        forced,
                        datagram: conn.datagram.is_some(),
                        joined: !conn.opened,
                    };
                    let piece = Piece {
                        dir,
                        offset,
                        data: &event.data,
                        len,
                    };
                    let change = conn.decoding.feed(opening, piece, &mut messages);
                    match change {
                        Change::Started(from) => {
                            conn.app = conn.decoding.app();
                            conn.turns.by_message(from);
                        }
                        Change::Stopped => conn.turns.by_direction(),
                        Change::None => {}
                    }
                    for message in messages.drain(..) {
                        // Without exchanges the turns need only where it ends.
                        let (dir, end) = (message.dir, message.end);
                        let kept = if self.wanted.exchanges {
                            message
                        } else {
                            let bare = message.bare();
                            self.decoded.messages.push(Decoded {
                                app: conn.app.unwrap_or_default(),
                                message,
                            });
                            bare
                        };
                        conn.turns.end_message(dir, end, kept);
                    }
                    self.completed = messages;
                    if !self.wanted.exchanges {
                        self.decoded.undecoded = conn.decoding.take_reason();
                        self.decoded.resync_offset = conn.decoding.take_resynced();
                    }
                }
                conn.turns
                    .data(dir, read, event.ret as u64, event.ts_ns, &event.data);
                while let Some(turn) = conn.turns.next_finished() {
                    Self::hand_on(&self.wanted, conn, turn, found);
                }
            }
            EventKind::Recv if event.ret == 0 && conn.datagram.is_none() => {
                // End of stream: the other end closed (or shut down) first.
                conn.closed_by.get_or_insert(1 - end);
                conn.eof[end] = true;
                if conn.done() {
                    self.end(id, false, found);
                }
            }
            // A descriptor closed that others still hold (a forking
            // server's parent, say) ends nothing.
            EventKind::Close if event.released => {
                conn.closed_by.get_or_insert(end);
                conn.closed[end] = true;
                if conn.done() {
                    self.end(id, false, found);
                }
            }
            _ => {}
        }
    }

    /// Hands on `turn` of `conn` as an exchange, if exchanges are wanted
    /// (its wait counts in the summary's percentiles either way).
    fn hand_on(
        wanted: &Wanted,
        conn: &mut Connection,
        turn: Turn,
        found: &mut impl FnMut(Finding),
    ) {
        let percentiles = !wanted.no_wait_percentiles;
        if !wanted.exchanges {
            conn.timed(&turn, percentiles);
            return;
        }
        let exchange = conn.exchange(turn, percentiles);
        if wanted.keeps(&exchange) {
            found(Finding::Exchange(Box::new(exchange)));
        }
    }

    /// The connection `event` (on `sock`) belongs to; a new one if
    /// `starts` and there is none.
    fn connection_of(&mut self, sock: u64, event: &Event, starts: bool) -> Option<u64> {
        if event.sock_type == SOCK_DGRAM {
            return self.datagram_of(sock, event, starts);
        }
        let peer = event.peer.as_ref().and_then(|peer| peer.sock);
        if let Some(&id) = self.streams.get(&sock) {
            if let Some(peer) = peer
                && !self.streams.contains_key(&peer)
                && let Some(conn) = self.connections.get_mut(&id)
            {
                let end = conn.end_of(sock);
                conn.ends[1 - end].sock = Some(peer);
                self.streams.insert(peer, id);
            }
            return Some(id);
        }
        if let Some(peer) = peer
            && let Some(&id) = self.streams.get(&peer)
        {
            self.streams.insert(sock, id);
            return Some(id);
        }
        if !starts {
            return None;
        }
        let id = self.open(event, None);
        self.streams.insert(sock, id);
        if let Some(peer) = peer {
            self.streams.insert(peer, id);
        }
        Some(id)
    }

    fn datagram_of(&mut self, sock: u64, event: &Event, starts: bool) -> Option<u64> {
        let netns = event.context.netns.unwrap_or(0);
        if let Some(local) = event.local {
            self.datagrams.learn(sock, netns, local);
        }
        let remote = event
            .peer
            .as_ref()
            .and_then(|peer| peer.addr)
            .or(event.remote);
        let peer = event
            .peer
            .as_ref()
            .and_then(|peer| peer.sock)
            .or_else(|| {
                // This machine's, plainly or as the resolver found (it
                // knows a socket here at it).
                let remote = remote?;
                let here = plainly_here(event.local, remote) || event.unresolved;
                self.datagrams.socket_at(netns, remote, here)
            })
            .filter(|&peer| peer != sock);
        // The other end by its address from here; this end by its own
        // address from the other end's socket; the two sockets.
        let keys = [
            remote.map(|addr| DatagramKey::Addr(sock, addr)),
            peer.zip(event.local)
                .map(|(peer, local)| DatagramKey::Addr(peer, local)),
            peer.map(|peer| DatagramKey::Socks(sock.min(peer), sock.max(peer))),
        ];
        if keys.iter().all(Option::is_none) {
            // Nothing says where it went or came from (a read that began
            // before the trace): the socket's one conversation, if it has one.
            return match self.datagram_socks.get(&sock).map(Vec::as_slice) {
                Some(&[id]) => Some(id),
                _ => None,
            };
        }
        let id = match keys
            .iter()
            .flatten()
            .find_map(|key| self.datagrams.get(*key))
        {
            Some(id) => id,
            None if starts => self.open(event, Some(Vec::new())),
            None => return None,
        };
        let filed = self
            .connections
            .get_mut(&id)
            .and_then(|conn| conn.datagram.as_mut())
            .expect("a datagram conversation");
        for key in keys.into_iter().flatten() {
            if filed.contains(&key)
                || filed.len() >= DATAGRAM_KEYS
                || !self.datagrams.insert(key, id)
            {
                continue;
            }
            for ino in key.socks().into_iter().flatten() {
                if !filed.iter().any(|known| known.socks().contains(&Some(ino))) {
                    self.datagram_socks.entry(ino).or_default().push(id);
                }
            }
            filed.push(key);
        }
        Some(id)
    }

    fn open(&mut self, event: &Event, datagram: Option<Vec<DatagramKey>>) -> u64 {
        if self.connections.len() >= MAX_CONNECTIONS {
            self.make_room();
        }
        self.next_id += 1;
        let id = self.next_id;
        self.connections
            .insert(id, Connection::new(id, event, datagram));
        id
    }

    /// Summarises and drops the least recently active eighth (their
    /// summaries are not handed on: they are still open, and would be
    /// summarised again if they went on).
    fn make_room(&mut self) {
        let mut by_age: Vec<(u64, u64)> = self
            .connections
            .values()
            .map(|conn| (conn.last_ns, conn.id))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(MAX_CONNECTIONS / 8) {
            self.forget(id);
        }
    }

    /// Hands on what is left of connection `id` and its summary; drops it.
    fn end(&mut self, id: u64, open: bool, found: &mut impl FnMut(Finding)) {
        let Some(mut conn) = self.forget(id) else {
            return;
        };
        let turns: Vec<Turn> = conn.turns.drain().collect();
        for turn in turns {
            Self::hand_on(&self.wanted, &mut conn, turn, found);
        }
        if self.wanted.summaries {
            found(Finding::Summary(Box::new(conn.summary(open))));
        }
    }

    fn forget(&mut self, id: u64) -> Option<Connection> {
        let conn = self.connections.remove(&id)?;
        for end in &conn.ends {
            if let Some(sock) = end.sock
                && self.streams.get(&sock) == Some(&id)
            {
                self.streams.remove(&sock);
            }
        }
        for &key in conn.datagram.iter().flatten() {
            self.datagrams.remove(key, id);
            for ino in key.socks().into_iter().flatten() {
                if let Some(ids) = self.datagram_socks.get_mut(&ino) {
                    ids.retain(|other| *other != id);
                    if ids.is_empty() {
                        self.datagram_socks.remove(&ino);
                    }
                }
            }
        }
        Some(conn)
    }

    /// The trace ended: what every connection still has, and its summary
    /// marked open, oldest connection first.
    pub fn finish(&mut self, found: &mut impl FnMut(Finding)) {
        let mut ids: Vec<u64> = self.connections.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.end(id, true, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{decode::RESYNC_CALLS, *};
    use crate::output::print::tests::{send_event, tcp_event};

    /// A call moving `data` on collectd's connection to rrdcached (pid 10,
    /// sock 100; pid 20, sock 101): a send of the client's, or of the server's.
    fn send(client: bool, data: &'static [u8], ms: u64) -> Event {
        call(client, EventKind::Send, data, ms)
    }

    /// Its read by the other end.
    fn read(client: bool, data: &'static [u8], ms: u64) -> Event {
        call(client, EventKind::Recv, data, ms)
    }

    fn call(client: bool, kind: EventKind, data: &'static [u8], ms: u64) -> Event {
        let mut event = send_event();
        event.kind = kind;
        event.ts_ns = ms * 1_000_000;
        event.ret = data.len() as i64;
        event.data = Bytes::from_static(data);
        if !client {
            event.path = event.peer.as_ref().and_then(|peer| peer.path.clone());
            (event.pid, event.comm, event.sock) = (20, "rrdcached".into(), Some(101));
            event.peer = Some(Peer {
                sock: Some(100),
                pid: Some(10),
                comm: Some("collectd".into()),
                ..Peer::default()
            });
        }
        event
    }

    /// The exchanges `events` make, decoded (as `decode_as` says).
    fn exchanges(events: &[Event], decode_as: &[&str]) -> Vec<Exchange> {
        let mut conversation = Conversation::new(Wanted {
            exchanges: true,
            decode: true,
            decode_as: decode_as.iter().map(|rule| rule.parse().unwrap()).collect(),
            ..Wanted::default()
        });
        for event in events {
            conversation.event(event);
        }
        conversation.finish();
        conversation
            .take()
            .into_iter()
            .filter_map(|finding| match finding {
                Finding::Exchange(exchange) => Some(*exchange),
                _ => None,
            })
            .collect()
    }

    fn texts(exchange: &Exchange) -> [Option<&str>; 2] {
        [&exchange.turn.request, &exchange.turn.response]
            .map(|span| span.message.as_ref().map(|m| m.text.as_str()))
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    /// One call of a DNS client (sock 100, connected from 127.0.0.1:40000)
    /// or of its server (sock 101, bound to 0.0.0.0:5353), naming the other
    /// end's socket or only its address.
    fn udp(client: bool, kind: EventKind, data: &'static [u8], named: bool) -> Event {
        let mut event = call(true, kind, data, 1);
        event.family = sockspy_common::AF_INET;
        event.sock_type = SOCK_DGRAM;
        event.protocol = sockspy_common::IPPROTO_UDP;
        let client_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (sock, local, remote, peer) = if client {
            (100, client_addr, "127.0.0.1:5353".parse().unwrap(), 101)
        } else {
            (101, "0.0.0.0:5353".parse().unwrap(), client_addr, 100)
        };
        (event.sock, event.local, event.remote) = (Some(sock), Some(local), Some(remote));
        (event.pid, event.comm) = if client {
            (10, "dig".into())
        } else {
            (20, "named".into())
        };
        event.peer = named.then(|| Peer {
            sock: Some(peer),
            addr: Some(remote),
            ..Peer::default()
        });
        event
    }

    #[test]
    fn a_datagram_exchange_is_one_whatever_its_records_name_and_their_order() {
        use EventKind::{Close, Recv, Send};
        let calls = [
            (true, Send, &b"ask"[..]),
            (false, Recv, b"ask"),
            (false, Send, b"answer"),
            (true, Recv, b"answer"),
            (false, Close, b""),
            (true, Close, b""),
        ];
        // The order the calls were made in, orders records of calls on two
        // CPUs can come in (a read before the send it read), and the server
        // closing before the client read its answer.
        let orders = [
            [0, 1, 2, 3, 4, 5],
            [1, 0, 2, 3, 4, 5],
            [0, 1, 3, 2, 4, 5],
            [1, 0, 3, 2, 4, 5],
            [1, 3, 0, 2, 4, 5],
            [0, 1, 2, 4, 3, 5],
        ];
        for order in orders {
            for named in 0..16 {
                let events: Vec<Event> = order
                    .iter()
                    .map(|&i| {
                        let (client, kind, data) = calls[i];
                        let mut event = udp(client, kind, data, named & (1 << i) != 0);
                        event.released = kind == Close;
                        event.ts_ns = i as u64 * 1_000;
                        event
                    })
                    .collect();
                let found = exchanges(&events, &[]);
                let why = format!("order {order:?}, peers named {named:04b}: {found:#?}");
                assert_eq!(found.len(), 1, "{why}");
                let turn = &found[0].turn;
                assert_eq!(found[0].client.sock, Some(100), "{why}");
                assert_eq!(found[0].server.sock, Some(101), "{why}");
                assert_eq!(
                    turn.request.sent_bytes + turn.request.read_bytes,
                    6,
                    "{why}"
                );
                assert_eq!(
                    turn.response.sent_bytes + turn.response.read_bytes,
                    12,
                    "{why}"
                );
            }
        }
    }

    #[test]
    fn a_datagram_conversation_ends_at_a_close_once_nothing_sent_is_unread() {
        use EventKind::{Close, Recv, Send};
        // After which of `events` the conversation was still open.
        let open_after = |events: &[Event]| {
            let mut conversation = Conversation::new(Wanted {
                summaries: true,
                ..Wanted::default()
            });
            events
                .iter()
                .map(|event| {
                    conversation.event(event);
                    let taken = conversation.take();
                    !taken
                        .iter()
                        .any(|found| matches!(found, Finding::Summary(_)))
                })
                .collect::<Vec<bool>>()
        };
        let call = |client, kind, data| {
            let mut event = udp(client, kind, data, true);
            event.released = kind == Close;
            event
        };
        let mut query = [
            call(true, Send, b"ask"),
            call(false, Recv, b"ask"),
            call(false, Send, b"answer"),
        ];
        let answered = call(true, Recv, b"answer");
        let (client_closes, server_closes) = (call(true, Close, b""), call(false, Close, b""));
        // A client that closes after its answer; a server that stays.
        let client_done = [&query[..], &[answered.clone(), client_closes.clone()]].concat();
        assert_eq!(open_after(&client_done), [true, true, true, true, false]);
        // The same, the server's read named by nothing (it began before the
        // trace): the socket's one conversation.
        (query[1].remote, query[1].peer) = (None, None);
        let unnamed = [&query[..], &[answered.clone(), client_closes.clone()]].concat();
        assert_eq!(open_after(&unnamed), [true, true, true, true, false]);
        // A server that exits before its client read the answer.
        let server_gone = [&query[..], &[server_closes, answered, client_closes]].concat();
        assert_eq!(
            open_after(&server_gone),
            [true, true, true, true, true, false]
        );
    }

    /// A connection older than the trace, joined in the middle of a
    /// request's body and its answer: then GET /a (a 404) and GET /b.
    fn joined_mid_body() -> [Event; 6] {
        [
            send(true, b"rest of a body", 1),
            send(false, OK, 2),
            send(true, b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n", 3),
            send(
                false,
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
                4,
            ),
            send(true, b"GET /b HTTP/1.1\r\n\r\n", 5),
            send(false, OK, 6),
        ]
    }

    #[test]
    fn a_connection_older_than_the_trace_resynchronises_at_a_request() {
        let events = joined_mid_body();
        let found = exchanges(&events, &[]);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert_eq!(found[0].app, None);
        assert_eq!(
            (
                found[0].turn.request.bytes(),
                found[0].turn.response.bytes()
            ),
            (14, OK.len() as u64)
        );
        assert_eq!(found[1].app, Some("http"));
        assert_eq!(
            texts(&found[1]),
            [Some("GET /a"), Some("404 Not Found 2 B")]
        );
        assert_eq!(found[1].resync_offset, Some(14), "said once, where");
        assert_eq!(texts(&found[2]), [Some("GET /b"), Some("200 OK 0 B")]);
        assert_eq!(found[2].resync_offset, None);
        assert!(found.iter().all(|e| e.undecoded.is_none()));

        // Its connect seen, the same bytes are a connection whose first
        // bytes are no protocol's: plain turns, nothing looked for.
        let mut connect = send(true, b"", 0);
        (connect.kind, connect.ret) = (EventKind::Connect, 0);
        let found = exchanges(&[&[connect][..], &events].concat(), &[]);
        assert!(
            found
                .iter()
                .all(|e| e.app.is_none() && e.undecoded.is_none())
        );
    }

    /// Joined as the server sent the end of an answer: the ends' names
    /// (the server's socket has its listener's) say who is the client, and
    /// decoding picks up at the client's next request.
    #[test]
    fn a_connection_joined_at_an_answer_knows_its_client_by_name() {
        let events = [
            send(false, b"end of an earlier answer", 1),
            send(true, b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n", 2),
            send(false, OK, 3),
        ];
        let found = exchanges(&events, &[]);
        assert!(found.iter().all(|e| e.client.pid == Some(10)), "{found:#?}");
        let last = found.last().expect("exchanges");
        assert_eq!(texts(last), [Some("GET /a"), Some("200 OK 0 B")]);
        // Two unnamed ends (a socketpair's) say nothing: the first to
        // send is the client.
        let unnamed: Vec<Event> = events
            .iter()
            .cloned()
            .map(|mut event| {
                event.path = None;
                event.peer.as_mut().unwrap().path = None;
                event
            })
            .collect();
        let found = exchanges(&unnamed, &[]);
        assert_eq!(found[0].client.pid, Some(20));
        assert!(found.iter().all(|e| e.app.is_none()));
        // TCP: the end whose port is not ephemeral, when the other's is.
        const EPHEMERAL: RangeInclusive<u16> = 32768..=60999;
        let mut client = tcp_event();
        client.local = Some("127.0.0.1:41000".parse().unwrap());
        client.remote = Some("127.0.0.1:6379".parse().unwrap());
        assert_eq!(super::is_server(&client, &EPHEMERAL), Some(false));
        (client.local, client.remote) = (client.remote, client.local);
        assert_eq!(super::is_server(&client, &EPHEMERAL), Some(true));
        client.remote = Some("127.0.0.1:5432".parse().unwrap());
        assert_eq!(
            super::is_server(&client, &EPHEMERAL),
            None,
            "neither is ephemeral"
        );
        // A machine whose connecting sockets get ports from 1024 up.
        assert_eq!(super::is_server(&client, &(1024..=65535)), None, "both are");
        assert_eq!(super::port_range("1024\t65000\n"), Some(1024..=65000));
        for bad in ["", "60999 32768", "1 2 3", "x 5"] {
            assert_eq!(super::port_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_forced_protocol_mid_stream_still_needs_a_request_start() {
        let mut events = Vec::new();
        for ms in (0..RESYNC_CALLS as u64 + 2).map(|i| 4 * i) {
            let (request, response) = (b"\x00\x17binary\xff", b"\x01ok");
            events.push(send(true, request, ms));
            events.push(read(false, request, ms + 1));
            events.push(send(false, response, ms + 2));
            events.push(read(true, response, ms + 3));
        }
        let found = exchanges(&events, &["/run/rrdcached.sock=http"]);
        let noted: Vec<(usize, &str)> = found
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.undecoded.as_deref()?)))
            .collect();
        assert_eq!(
            noted,
            [(
                RESYNC_CALLS as usize - 2,
                "joined mid-connection: no http request start in the first 16 calls"
            )],
            "said once, on the exchange handed on as it gave up"
        );
        assert!(found.iter().all(|e| e.app.is_none()));
    }

    /// Without `--exchanges`, what decoding says once goes with the call it
    /// happened at: (index of the call, what it carries) for each.
    fn said_on_calls(events: &[Event], decode_as: &[&str]) -> Vec<(usize, CallDecoding)> {
        let mut conversation = Conversation::new(Wanted {
            decode: true,
            decode_as: decode_as.iter().map(|rule| rule.parse().unwrap()).collect(),
            ..Wanted::default()
        });
        let mut said = Vec::new();
        for (i, event) in events.iter().enumerate() {
            conversation.event(event);
            let decoded = conversation.decoded();
            if decoded.undecoded.is_some() || decoded.resync_offset.is_some() {
                said.push((i, decoded.clone()));
            }
        }
        said
    }

    #[test]
    fn calls_say_where_decoding_picked_up_or_gave_up() {
        let said = said_on_calls(&joined_mid_body(), &[]);
        assert_eq!(said.len(), 1, "{said:#?}");
        assert_eq!(said[0].0, 2, "the request decoding picked up at");
        assert_eq!(said[0].1.resync_offset, Some(14));
        assert_eq!(said[0].1.messages[0].message.text, "GET /a");

        let binary: Vec<Event> = (0..RESYNC_CALLS as u64 + 2)
            .flat_map(|i| {
                [
                    send(true, b"\x00\x17binary\xff", 2 * i),
                    send(false, b"\x01ok", 2 * i + 1),
                ]
            })
            .collect();
        let said = said_on_calls(&binary, &["/run/rrdcached.sock=http"]);
        assert_eq!(said.len(), 1, "{said:#?}");
        assert_eq!(
            said[0].1.undecoded.as_deref(),
            Some("joined mid-connection: no http request start in the first 16 calls")
        );
        assert!(said[0].1.messages.is_empty());
    }

    /// An exchange the client waited `wait_us` for; decoded when `failed`
    /// says whether its response failed.
    fn exchange(wait_us: u64, failed: Option<bool>) -> Exchange {
        let mut turn = Turn::default();
        turn.response.message = failed.map(|failed| {
            Box::new(decode::Message {
                dir: RESPONSE,
                end: 0,
                text: String::new(),
                fields: serde_json::Map::new(),
                failed,
                key: None,
                role: decode::Role::Answers,
                kind: None,
            })
        });
        Exchange {
            connection: 1,
            kind: Kind::default(),
            client: End::default(),
            server: End::default(),
            start_ns: 0,
            turn,
            times: Times {
                wait_us: Some(wait_us),
                ..Times::default()
            },
            app: failed.map(|_| "http"),
            undecoded: None,
            resync_offset: None,
        }
    }

    /// The parts of an exchange's time always add up to its wait, even
    /// when a stamp taken as a call returned comes after one the other end
    /// took later in the exchange (a sender preempted by the reader it
    /// woke, hooks at a function's exit).
    #[test]
    fn the_parts_add_up_whatever_order_the_stamps_came_in() {
        let turn = |stamps_us: [u64; 5]| {
            let ns = stamps_us.map(|us| Some(1_000_000 + us * 1000));
            let mut turn = Turn::default();
            turn.request.first_send = ns[0];
            turn.request.first_read = ns[1];
            turn.request.last_read = ns[2];
            turn.response.first_send = ns[3];
            turn.response.first_read = ns[4];
            turn
        };
        let parts = |times: &Times| {
            [
                times.queue_us,
                times.read_us,
                times.server_us,
                times.return_us,
            ]
            .map(Option::unwrap)
        };
        // In order: each part as it was.
        let times = Times::of(&turn([0, 30, 30, 5_030, 5_040]));
        assert_eq!(parts(&times), [30, 0, 5_000, 10]);
        assert_eq!(times.wait_us, Some(5_040));
        // The client's send stamped 800 us late, after the server read it;
        // the server's answer stamped after the client read it.
        let times = Times::of(&turn([800, 0, 0, 5_800, 5_750]));
        assert_eq!(parts(&times), [0, 0, 4_950, 0]);
        assert_eq!(times.wait_us, Some(4_950));
        assert_eq!(parts(&times).iter().sum::<u64>(), 4_950);
    }

    /// `--errors` keeps failed exchanges only; with `--slower-than`, an
    /// exchange must be both.
    #[test]
    fn errors_and_slower_than_must_both_hold() {
        let kept = |errors_only: bool, slower_than_us: Option<u64>| {
            let wanted = Wanted {
                exchanges: true,
                errors_only,
                slower_than_us,
                decode: true,
                ..Wanted::default()
            };
            let all = [
                (100, Some(false)),
                (200, Some(true)),
                (5_000, Some(true)),
                (6_000, Some(false)),
                (7_000, None),
            ];
            all.into_iter()
                .map(|(wait, failed)| exchange(wait, failed))
                .filter(|exchange| wanted.keeps(exchange))
                .map(|exchange| exchange.times.wait_us.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(false, None).len(), 5);
        assert_eq!(kept(true, None), [200, 5_000]);
        assert_eq!(kept(true, Some(1_000)), [5_000]);
        assert_eq!(kept(false, Some(1_000)), [5_000, 6_000, 7_000]);
    }
}
