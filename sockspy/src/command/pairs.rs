//! `sockspy pairs`: every connected socket pair right now (Unix, TCP, UDP),
//! with the processes holding both ends; the answer `ss -xp`, `lsof +E`
//! and gdb on /proc/kcore give piecemeal.
//!
//! No eBPF: the kernel's socket lists come from sock_diag ([`crate::table::diag`]),
//! the holders from one pass over /proc/*/fd. It runs as any user; what it
//! could not see (other users' descriptors) it says. The filters are
//! `trace`'s: a line is kept when its sockets pass the socket filters
//! (family, port and path, on either end) and, if process filters are
//! given, some holder of either end passes them. As root it lists every
//! network namespace a process is in (containers' too), pairs IP sockets
//! within their namespace, and names each holder's container.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    net::SocketAddr,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use sockspy_common::{AF_INET, AF_UNIX, FAMILY_UNIX, IPPROTO_TCP, IPPROTO_UDP, wanted};

use crate::{
    capture::events::{UnixName, family_name, proto_name, tcp_state_name, type_name},
    filter::{Filter, Selection},
    output::print::{JsonContext, JsonEnds, JsonPeerName},
    table::container::{Cgroups, Context, NsTable},
    table::diag::{self, InetDiag, STATE_CLOSE, STATE_CONNECTED, STATE_LISTEN, UnixDiag},
    table::procfs::{Procfs, Scan},
};

/// A process holding a socket through a descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub fd: i32,
}

/// What one end of a line is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name<'a> {
    None,
    Unix(&'a UnixName),
    Inet(SocketAddr),
}

impl<'a> Name<'a> {
    fn inet(self) -> Option<SocketAddr> {
        match self {
            Self::Inet(addr) => Some(addr),
            _ => None,
        }
    }

    fn unix(self) -> Option<&'a UnixName> {
        match self {
            Self::Unix(name) => Some(name),
            _ => None,
        }
    }
}

/// How a line's socket stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Connected to `peer`; `mutual` when the peer is connected back (a
    /// datagram socket may send to a receiver that is not).
    Pair { mutual: bool },
    /// Listening, with connections waiting to be accepted.
    Listener { pending: usize },
    /// Named (bound) but neither connected nor listening: a datagram server.
    Bound,
}

/// One line of output: a socket and, for a pair, its peer.
#[derive(Debug, PartialEq, Eq)]
struct Line<'a> {
    family: u16,
    sock_type: u16,
    /// IP protocol; 0 for Unix sockets.
    protocol: u16,
    /// The kernel's state number (TCP's, which Unix and UDP sockets reuse).
    state: u8,
    shape: Shape,
    ino: u64,
    name: Name<'a>,
    /// The peer's inode, when the peer is a socket on this machine.
    peer_ino: Option<u64>,
    /// What the peer is called: its name or address, as it sees itself.
    peer_name: Name<'a>,
    /// An IP socket's remote end, as it sees it (an IPv4 peer of a
    /// dual-stack socket is IPv4-mapped here).
    remote: Option<SocketAddr>,
    rqueue: u32,
    wqueue: u32,
}

impl<'a> Line<'a> {
    /// A socket on its own (`Bound`); the caller makes it a pair or a
    /// listener. `kind` is the family, type and protocol.
    fn alone(
        (family, sock_type, protocol): (u16, u16, u16),
        state: u8,
        ino: u64,
        name: Name<'a>,
        (rqueue, wqueue): (u32, u32),
    ) -> Self {
        Self {
            family,
            sock_type,
            protocol,
            state,
            shape: Shape::Bound,
            ino,
            name,
            peer_ino: None,
            peer_name: Name::None,
            remote: None,
            rqueue,
            wqueue,
        }
    }

    fn is_connection(&self) -> bool {
        matches!(self.shape, Shape::Pair { .. })
    }

    /// `state` as the JSON shows it.
    fn state_name(&self) -> &'static str {
        match (self.protocol, self.shape) {
            (IPPROTO_TCP, _) => tcp_state_name(u16::from(self.state)),
            (_, Shape::Pair { mutual: true }) => "connected",
            (_, Shape::Pair { mutual: false }) => "connected-to",
            (_, Shape::Listener { .. }) => "listen",
            (_, Shape::Bound) => "bound",
        }
    }
}

/// The sockets and who holds them.
pub struct Snapshot {
    unix: Vec<UnixDiag>,
    inet: Vec<InetDiag>,
    holders: HashMap<u64, Vec<Holder>>,
    /// Each holder's cgroup and namespace pid.
    contexts: HashMap<u32, Context>,
    /// Each IP socket's network namespace.
    netns: HashMap<u64, u32>,
    /// Processes whose descriptors could not be read.
    unreadable: usize,
}

impl Snapshot {
    /// Lists the sockets of the families `select` asks for, and their holders.
    fn take(select: &Selection) -> Result<Self> {
        let procfs = Procfs::default();
        let unix = if select.families & FAMILY_UNIX != 0 {
            diag::unix_sockets_everywhere(&procfs)
                .context("cannot list Unix sockets (sock_diag)")?
        } else {
            Vec::new()
        };
        let mut inet = Vec::new();
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            if wanted(select.families, AF_INET, protocol) {
                let name = proto_name(AF_INET, protocol).unwrap_or("IP");
                inet.extend(
                    diag::inet_sockets_everywhere(&procfs, protocol)
                        .with_context(|| format!("cannot list {name} sockets (sock_diag)"))?,
                );
            }
        }
        let scan = procfs.scan().context("cannot read /proc")?;
        let mut snapshot = Self::new(unix, inet, scan);
        let mut cgroups = Cgroups::new();
        let pids: HashSet<u32> = snapshot.holders.values().flatten().map(|h| h.pid).collect();
        for pid in pids {
            let (path, nspid) = procfs.container(pid);
            let context = Context {
                cgroup: path.and_then(|path| cgroups.at_path(&path)),
                netns: None,
                nspid,
            };
            snapshot.contexts.insert(pid, context);
        }
        Ok(snapshot)
    }

    fn new(mut unix: Vec<UnixDiag>, mut inet: Vec<InetDiag>, scan: Scan) -> Self {
        unix.sort_by_key(|s| s.ino);
        inet.sort_by_key(|s| (s.protocol, s.ino));
        let mut holders: HashMap<u64, Vec<Holder>> = HashMap::new();
        for process in scan.processes {
            for (fd, ino) in process.fds {
                holders.entry(ino).or_default().push(Holder {
                    pid: process.pid,
                    comm: process.comm.clone(),
                    fd,
                });
            }
        }
        let netns = inet.iter().map(|s| (s.ino, s.netns)).collect();
        Self {
            unix,
            inet,
            holders,
            contexts: HashMap::new(),
            netns,
            unreadable: scan.unreadable,
        }
    }

    /// The lines to show: Unix sockets in inode order, then TCP and UDP;
    /// each connection once.
    fn lines(&self) -> Vec<Line<'_>> {
        let mut lines = self.unix_lines();
        lines.extend(self.inet_lines());
        lines
    }

    fn unix_lines(&self) -> Vec<Line<'_>> {
        let by_ino: HashMap<u64, &UnixDiag> = self.unix.iter().map(|s| (s.ino, s)).collect();
        fn name(sock: Option<&UnixDiag>) -> Name<'_> {
            sock.and_then(|s| s.name.as_ref())
                .map_or(Name::None, Name::Unix)
        }
        let mut lines = Vec::new();
        for sock in &self.unix {
            let mut line = Line::alone(
                (AF_UNIX, sock.sock_type, 0),
                sock.state,
                sock.ino,
                name(Some(sock)),
                (sock.rqueue, sock.wqueue),
            );
            if sock.state == STATE_LISTEN {
                line.shape = Shape::Listener {
                    pending: sock.pending.len(),
                };
            } else if let Some(peer_ino) = sock.peer {
                let peer = by_ino.get(&peer_ino).copied();
                let mutual = peer.is_some_and(|p| p.peer == Some(sock.ino));
                // A mutual pair is shown from its lower inode only.
                if mutual && sock.ino > peer_ino {
                    continue;
                }
                line.shape = Shape::Pair { mutual };
                line.peer_ino = Some(peer_ino);
                line.peer_name = name(peer);
            } else if sock.name.is_none() || sock.state == STATE_CONNECTED {
                continue;
            }
            lines.push(line);
        }
        lines
    }

    fn inet_lines(&self) -> Vec<Line<'_>> {
        // A local peer is the socket whose ends are this one's, swapped. An
        // IPv4-mapped IPv6 address is the IPv4 one.
        // Within a network namespace; across namespaces (a veth pair) only
        // by a non-loopback address one namespace alone has.
        let canonical = |addr: SocketAddr| SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let mut by_ends: NsTable<(u16, SocketAddr, SocketAddr)> = NsTable::default();
        let by_ino: HashMap<u64, &InetDiag> = self.inet.iter().map(|s| (s.ino, s)).collect();
        for s in self
            .inet
            .iter()
            .filter(|s| s.ino != 0 && s.remote.port() != 0)
        {
            let key = (s.protocol, canonical(s.local), canonical(s.remote));
            by_ends.insert(key, s.netns, s.ino);
        }
        let mut lines = Vec::new();
        // TIME_WAIT and half-open minisockets have no inode: nobody holds them.
        for sock in self.inet.iter().filter(|s| s.ino != 0) {
            let sock_type = if sock.protocol == IPPROTO_TCP { 1 } else { 2 };
            let mut line = Line::alone(
                (sock.family, sock_type, sock.protocol),
                sock.state,
                sock.ino,
                Name::Inet(sock.local),
                (sock.rqueue, sock.wqueue),
            );
            if sock.state == STATE_LISTEN {
                line.shape = Shape::Listener {
                    pending: sock.rqueue as usize,
                };
            } else if sock.remote.port() != 0 {
                let key = (sock.protocol, canonical(sock.remote), canonical(sock.local));
                let across = !sock.remote.ip().to_canonical().is_loopback();
                let peer = by_ends
                    .find(&key, sock.netns, across)
                    .and_then(|ino| by_ino.get(&ino))
                    .filter(|p| p.ino != sock.ino);
                if peer.is_some_and(|p| p.ino < sock.ino) {
                    continue;
                }
                line.shape = Shape::Pair {
                    mutual: peer.is_some(),
                };
                line.peer_ino = peer.map(|p| p.ino);
                line.peer_name = Name::Inet(peer.map_or(sock.remote, |p| p.local));
                line.remote = Some(sock.remote);
            } else if sock.protocol != IPPROTO_UDP
                || sock.state != STATE_CLOSE
                || sock.local.port() == 0
            {
                // Only a bound, unconnected UDP socket is worth a line of
                // its own; an idle TCP socket or an unbound one is not.
                continue;
            }
            lines.push(line);
        }
        lines
    }

    fn holders(&self, ino: u64) -> &[Holder] {
        self.holders.get(&ino).map_or(&[], Vec::as_slice)
    }

    /// Whether `line` passes the filters.
    fn keeps(&self, filter: &mut Filter, users: &Users, line: &Line) -> bool {
        if !filter.keeps_socket(
            line.family,
            line.protocol,
            [line.name.inet(), line.remote],
            [line.name.unix(), line.peer_name.unix()],
        ) {
            return false;
        }
        if !filter.selects_processes() {
            return true;
        }
        let peer_holders = line.peer_ino.map_or(&[][..], |ino| self.holders(ino));
        self.holders(line.ino).iter().chain(peer_holders).any(|h| {
            filter.keeps_process(h.pid, users.uid(h.pid), &h.comm)
                && filter.keeps_context(&self.context(h.pid, None))
        })
    }

    /// Process `pid`'s container context, with its socket's network
    /// namespace when that is `ino`, an IP socket.
    fn context(&self, pid: u32, ino: Option<u64>) -> Context {
        let mut context = self.contexts.get(&pid).cloned().unwrap_or_default();
        context.netns = ino
            .and_then(|ino| self.netns.get(&ino).copied())
            .filter(|&ns| ns != 0);
        context
    }
}

/// Process facts only some filters need, read only when they are given.
#[derive(Default)]
struct Users {
    uids: HashMap<u32, u32>,
}

impl Users {
    /// Reads the user of every holder, when `--uid` asks; adds the
    /// descendants of `--pid-tree` processes to `filter`.
    fn read(procfs: &Procfs, snapshot: &Snapshot, select: &Selection, filter: &mut Filter) -> Self {
        let mut users = Self::default();
        if select.uids.is_empty() && select.pid_trees.is_empty() {
            return users;
        }
        let pids: HashSet<u32> = if select.pid_trees.is_empty() {
            snapshot.holders.values().flatten().map(|h| h.pid).collect()
        } else {
            procfs.pids().unwrap_or_default().into_iter().collect()
        };
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for &pid in &pids {
            let Some(status) = procfs.status(pid) else {
                continue;
            };
            users.uids.insert(pid, status.uid);
            children.entry(status.parent).or_default().push(pid);
        }
        let mut queue: Vec<u32> = select.pid_trees.clone();
        while let Some(parent) = queue.pop() {
            for &child in children.get(&parent).into_iter().flatten() {
                filter.forked(parent, child);
                queue.push(child);
            }
        }
        users
    }

    /// A process's user; one that cannot be read matches no `--uid`.
    fn uid(&self, pid: u32) -> u32 {
        self.uids.get(&pid).copied().unwrap_or(u32::MAX)
    }
}

/// Runs `sockspy pairs`.
pub fn run(select: &Selection, json: bool) -> Result<ExitCode> {
    let snapshot = Snapshot::take(select)?;
    let mut filter = Filter::new(select.clone());
    let users = Users::read(&Procfs::default(), &snapshot, select, &mut filter);
    let lines: Vec<Line> = snapshot
        .lines()
        .into_iter()
        .filter(|line| snapshot.keeps(&mut filter, &users, line))
        .collect();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = lines
        .iter()
        .try_for_each(|line| {
            if json {
                json_line(&mut out, &snapshot, line)
            } else {
                text_line(&mut out, &snapshot, line)
            }
        })
        .and_then(|()| out.flush());
    match written {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other.context("writing to stdout")?,
    }
    let connections = lines.iter().filter(|l| l.is_connection()).count();
    let listeners = lines
        .iter()
        .filter(|l| matches!(l.shape, Shape::Listener { .. }))
        .count();
    eprint!("sockspy: {connections} connections, {listeners} listeners");
    if snapshot.unreadable > 0 {
        eprint!(
            "; the descriptors of {} processes were not readable, so some holders are unknown (root sees all)",
            snapshot.unreadable
        );
    }
    eprintln!();
    Ok(ExitCode::SUCCESS)
}

/// `comm[pid] fd N, comm[pid]@3f2a9c fd M` (the short container id of a
/// holder in a container) or `?` when nobody visible holds it.
fn holders_text(snapshot: &Snapshot, holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "?".into();
    }
    holders
        .iter()
        .map(|h| {
            let context = snapshot.contexts.get(&h.pid);
            match context.and_then(Context::short_container) {
                Some(id) => format!("{}[{}]@{id} fd {}", h.comm, h.pid, h.fd),
                None => format!("{}[{}] fd {}", h.comm, h.pid, h.fd),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One end: its holders, inode and name; a remote end is its address.
fn side_text(snapshot: &Snapshot, ino: Option<u64>, name: Name) -> String {
    let mut text = match ino {
        Some(ino) => format!(
            "{} sock {ino}",
            holders_text(snapshot, snapshot.holders(ino))
        ),
        None => String::new(),
    };
    let name = match name {
        Name::None => return text,
        Name::Unix(name) => name.to_string(),
        Name::Inet(addr) => addr.to_string(),
    };
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(&name);
    text
}

/// The first column: a Unix socket's type, or `tcp`/`udp`.
fn kind_text(line: &Line) -> &'static str {
    proto_name(line.family, line.protocol).unwrap_or_else(|| type_name(line.sock_type))
}

fn text_line(out: &mut impl Write, snapshot: &Snapshot, line: &Line) -> io::Result<()> {
    let kind = kind_text(line);
    let this = side_text(snapshot, Some(line.ino), line.name);
    match line.shape {
        Shape::Pair { mutual } => {
            write!(
                out,
                "{kind:<9} {this}  {}  {}  ",
                if mutual { "<->" } else { "->" },
                side_text(snapshot, line.peer_ino, line.peer_name),
            )?;
            if line.protocol == IPPROTO_TCP {
                write!(out, "{}  ", line.state_name())?;
            }
            writeln!(out, "queued {}/{}", line.rqueue, line.wqueue)
        }
        Shape::Listener { pending } => writeln!(out, "{kind:<9} LISTEN {this}  {pending} pending"),
        Shape::Bound => writeln!(
            out,
            "{kind:<9} BOUND  {this}  queued {}/{}",
            line.rqueue, line.wqueue
        ),
    }
}

/// One end in JSON: the names `trace --json` uses, plus every holder.
#[derive(Serialize)]
struct JsonSide<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sock: Option<u64>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    fd: Option<i32>,
    holders: &'a [Holder],
}

/// A side's first holder's container context, for [`JsonContext`].
fn first_context(snapshot: &Snapshot, ino: Option<u64>) -> Context {
    let first = ino.and_then(|ino| snapshot.holders(ino).first());
    first.map_or_else(Context::default, |h| snapshot.context(h.pid, ino))
}

impl<'a> JsonSide<'a> {
    fn new(snapshot: &'a Snapshot, ino: Option<u64>) -> Self {
        let holders = ino.map_or(&[][..], |ino| snapshot.holders(ino));
        let first = holders.first();
        Self {
            sock: ino,
            pid: first.map(|h| h.pid),
            comm: first.map(|h| h.comm.as_str()),
            fd: first.map(|h| h.fd),
            holders,
        }
    }
}

#[derive(Serialize)]
struct JsonPeer<'a> {
    #[serde(flatten)]
    side: JsonSide<'a>,
    #[serde(flatten)]
    name: JsonPeerName,
    #[serde(flatten)]
    context: JsonContext<'a>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    family: &'static str,
    #[serde(rename = "type")]
    sock_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<&'static str>,
    state: &'static str,
    #[serde(flatten)]
    side: JsonSide<'a>,
    /// Unix sockets only, null when unnamed (as in `trace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<Option<String>>,
    #[serde(flatten)]
    ends: JsonEnds,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<usize>,
    rqueue: u32,
    wqueue: u32,
    #[serde(flatten)]
    context: JsonContext<'a>,
    peer: Option<JsonPeer<'a>>,
}

fn json_line(out: &mut impl Write, snapshot: &Snapshot, line: &Line) -> io::Result<()> {
    let own = first_context(snapshot, Some(line.ino));
    let other = first_context(snapshot, line.peer_ino);
    let peer = line.is_connection().then(|| JsonPeer {
        side: JsonSide::new(snapshot, line.peer_ino),
        name: JsonPeerName::new(line.peer_name.unix(), line.peer_name.inet()),
        context: JsonContext::new(&other),
    });
    let value = JsonLine {
        family: family_name(line.family),
        sock_type: type_name(line.sock_type),
        proto: proto_name(line.family, line.protocol),
        state: line.state_name(),
        side: JsonSide::new(snapshot, Some(line.ino)),
        path: (line.family == AF_UNIX).then(|| line.name.unix().map(ToString::to_string)),
        ends: JsonEnds::new(line.name.inet(), line.remote),
        pending: match line.shape {
            Shape::Listener { pending } => Some(pending),
            _ => None,
        },
        rqueue: line.rqueue,
        wqueue: line.wqueue,
        context: JsonContext::new(&own),
        peer,
    };
    serde_json::to_writer(&mut *out, &value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::procfs::ProcessSockets;
    use sockspy_common::{AF_INET6, FAMILY_INET, FAMILY_INET6, PROTO_TCP, PROTO_UDP};

    fn sock(ino: u64, state: u8, peer: Option<u64>, name: Option<&str>) -> UnixDiag {
        UnixDiag {
            ino,
            sock_type: 1,
            state,
            peer,
            name: name.map(|n| UnixName::Path(n.into())),
            ..UnixDiag::default()
        }
    }

    fn tcp(ino: u64, state: u8, local: &str, remote: &str) -> InetDiag {
        InetDiag {
            ino,
            family: if local.starts_with('[') {
                AF_INET6
            } else {
                AF_INET
            },
            protocol: IPPROTO_TCP,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            rqueue: 0,
            wqueue: 0,
            uid: 0,
            netns: 0,
        }
    }

    fn process(pid: u32, comm: &str, fds: &[(i32, u64)]) -> ProcessSockets {
        ProcessSockets {
            pid,
            comm: comm.into(),
            fds: fds.to_vec(),
        }
    }

    fn snapshot() -> Snapshot {
        let unix = vec![
            sock(12, STATE_CONNECTED, Some(11), Some("/run/s")),
            sock(10, STATE_LISTEN, None, Some("/run/s")),
            sock(11, STATE_CONNECTED, Some(12), None),
            sock(20, 7, None, Some("/dev/log")),
            sock(21, 7, Some(20), None),
            sock(30, 7, None, None),
        ];
        let inet = vec![
            tcp(40, STATE_LISTEN, "[::]:8080", "[::]:0"),
            tcp(
                41,
                STATE_CONNECTED,
                "[::ffff:127.0.0.1]:8080",
                "[::ffff:127.0.0.1]:5000",
            ),
            tcp(42, STATE_CONNECTED, "127.0.0.1:5000", "127.0.0.1:8080"),
            tcp(43, STATE_CONNECTED, "10.0.0.2:6000", "10.0.0.1:22"),
            tcp(0, 6, "127.0.0.1:5001", "127.0.0.1:8080"),
            InetDiag {
                protocol: IPPROTO_UDP,
                ..tcp(50, STATE_CLOSE, "127.0.0.1:53", "0.0.0.0:0")
            },
        ];
        let scan = Scan {
            processes: vec![
                process(100, "server", &[(3, 10), (4, 12), (6, 40), (7, 41)]),
                process(200, "client", &[(5, 11), (6, 42)]),
                process(201, "client", &[(5, 11)]),
                process(300, "ssh", &[(3, 43)]),
            ],
            unreadable: 1,
        };
        Snapshot::new(unix, inet, scan)
    }

    fn text(snapshot: &Snapshot, lines: &[Line]) -> Vec<String> {
        let mut out = Vec::new();
        for line in lines {
            text_line(&mut out, snapshot, line).unwrap();
        }
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn each_connection_once_with_every_holder() {
        let snapshot = snapshot();
        assert_eq!(
            text(&snapshot, &snapshot.lines()),
            [
                "stream    LISTEN server[100] fd 3 sock 10 /run/s  0 pending",
                "stream    client[200] fd 5, client[201] fd 5 sock 11  <->  server[100] fd 4 sock 12 /run/s  queued 0/0",
                "stream    BOUND  ? sock 20 /dev/log  queued 0/0",
                "stream    ? sock 21  ->  ? sock 20 /dev/log  queued 0/0",
                "tcp       LISTEN server[100] fd 6 sock 40 [::]:8080  0 pending",
                "tcp       server[100] fd 7 sock 41 [::ffff:127.0.0.1]:8080  <->  client[200] fd 6 sock 42 127.0.0.1:5000  established  queued 0/0",
                "tcp       ssh[300] fd 3 sock 43 10.0.0.2:6000  ->  10.0.0.1:22  established  queued 0/0",
                "udp       BOUND  ? sock 50 127.0.0.1:53  queued 0/0",
            ]
        );
    }

    #[test]
    fn ip_sockets_pair_within_their_network_namespace() {
        let in_ns = |netns, sock: InetDiag| InetDiag { netns, ..sock };
        let inet = vec![
            in_ns(
                1,
                tcp(41, STATE_CONNECTED, "127.0.0.1:8080", "127.0.0.1:5000"),
            ),
            in_ns(
                1,
                tcp(42, STATE_CONNECTED, "127.0.0.1:5000", "127.0.0.1:8080"),
            ),
            in_ns(
                2,
                tcp(43, STATE_CONNECTED, "127.0.0.1:8080", "127.0.0.1:5000"),
            ),
            in_ns(
                2,
                tcp(44, STATE_CONNECTED, "127.0.0.1:5000", "127.0.0.1:8080"),
            ),
            in_ns(1, tcp(45, STATE_CONNECTED, "10.0.0.2:6000", "10.0.0.1:80")),
            in_ns(3, tcp(46, STATE_CONNECTED, "10.0.0.1:80", "10.0.0.2:6000")),
        ];
        let snapshot = Snapshot::new(Vec::new(), inet, Scan::default());
        let pairs: Vec<_> = snapshot
            .lines()
            .iter()
            .map(|line| (line.ino, line.peer_ino))
            .collect();
        assert_eq!(pairs, [(41, Some(42)), (43, Some(44)), (45, Some(46))]);
    }

    #[test]
    fn json_uses_the_trace_names() {
        let snapshot = snapshot();
        let lines = snapshot.lines();
        let json = |line: &Line| {
            let mut out = Vec::new();
            json_line(&mut out, &snapshot, line).unwrap();
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let value = json(&lines[1]);
        assert_eq!(value["state"], "connected");
        assert_eq!(value["family"], "unix");
        assert_eq!(value["sock"], 11);
        assert!(value["path"].is_null() && value.get("path").is_some());
        assert_eq!(value["pid"], 200);
        assert_eq!(value["holders"].as_array().unwrap().len(), 2);
        assert_eq!(value["peer"]["pid"], 100);
        assert_eq!(value["peer"]["fd"], 4);
        assert_eq!(value["peer"]["path"], "/run/s");
        let value = json(&lines[5]);
        assert_eq!(value["family"], "inet6");
        assert_eq!(value["proto"], "tcp");
        assert_eq!(value["state"], "established");
        assert_eq!(value["laddr"], "::ffff:127.0.0.1");
        assert_eq!(value["lport"], 8080);
        assert_eq!(value["rport"], 5000);
        assert_eq!(value["peer"]["pid"], 200);
        assert_eq!(value["peer"]["sock"], 42);
        assert_eq!(value["peer"]["port"], 5000);
        assert!(value.get("path").is_none());
        let remote = json(&lines[6]);
        assert_eq!(remote["peer"]["addr"], "10.0.0.1");
        assert!(remote["peer"].get("sock").is_none(), "{remote}");
    }

    #[test]
    fn filters_pick_lines() {
        let snapshot = snapshot();
        let kept = |select: Selection| {
            let mut filter = Filter::new(select);
            let users = Users::default();
            let lines: Vec<Line> = snapshot
                .lines()
                .into_iter()
                .filter(|l| snapshot.keeps(&mut filter, &users, l))
                .collect();
            text(&snapshot, &lines)
        };
        let all = FAMILY_UNIX | FAMILY_INET | FAMILY_INET6 | PROTO_TCP | PROTO_UDP;
        let tcp_only = kept(Selection {
            families: FAMILY_INET | FAMILY_INET6 | PROTO_TCP,
            ..Selection::default()
        });
        assert_eq!(tcp_only.len(), 3, "{tcp_only:?}");
        assert!(tcp_only.iter().all(|l| l.starts_with("tcp")));
        let port = kept(Selection {
            families: all,
            ports: vec![5000],
            ..Selection::default()
        });
        assert_eq!(port.len(), 1, "{port:?}");
        // A process filter keeps a line when either end's holder passes.
        let client = kept(Selection {
            families: all,
            comms: vec!["client".into()],
            ..Selection::default()
        });
        assert_eq!(client.len(), 2, "{client:?}");
        let path = kept(Selection {
            families: all,
            paths: vec!["/dev/*".into()],
            ..Selection::default()
        });
        assert_eq!(path.len(), 2, "{path:?}");
        let nobody = kept(Selection {
            families: all,
            uids: vec![0],
            ..Selection::default()
        });
        assert!(nobody.is_empty(), "no uid was read: {nobody:?}");
    }
}
