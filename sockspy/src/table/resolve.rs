//! Who holds which socket, and so who is at the other end of each event.
//!
//! The kernel tells us, per event, the socket's inode and its peer's inode
//! (or kernel address, before the peer has an inode). It does not tell us
//! which process holds that peer: a socket belongs to descriptors, and
//! descriptors to processes, through `socket`, `accept`, `socketpair`,
//! `fork`, `exec`, `close` and `exit`. This module keeps that table: seeded
//! from /proc at start-up, kept current from events, and patched from
//! /proc for one process when an event shows a descriptor it had not seen.
//! Entries go when their last holder closes or exits, so the table is as
//! large as the set of live sockets, not the history.
//!
//! TCP and UDP sockets have no peer inode in the kernel's view. Their peer
//! is found by address: a TCP connection's other end is the local socket
//! whose (local, remote) pair is this one's (remote, local); a connect not
//! yet accepted, or a datagram, goes to the socket listening or bound at
//! the remote address. Both tables are seeded from /proc/net/{tcp,udp}{,6}.
//! Addresses repeat across network namespaces (two replicas of one
//! container each talk to 127.0.0.1:8080), so each address keeps its
//! sockets by namespace ([`NsTable`]): an event pairs within its own
//! namespace, and across namespaces (a veth pair) only by a non-loopback
//! address that one namespace alone has.

use std::{
    collections::{HashMap, HashSet, VecDeque, hash_map::Entry},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    rc::Rc,
};

use bytes::Bytes;
use sockspy_common::{
    AF_UNIX, COMM_LEN, Call, EventKind, FLAG_PEER_ACCEPTING, FLAG_PEER_PENDING, IPPROTO_TCP,
    IPPROTO_UDP, PassedFile,
};

use crate::{
    capture::events::{
        ProcRecord, SockRecord, UnixName, clock_ns, comm_str, file_type, inet_addr, unix_name,
    },
    idmap::IdMap,
    output::side::ByInode,
    table::container::{Cgroups, Context, NsTable},
    table::diag::{InetDiag, STATE_LISTEN, UnixDiag},
    table::procfs::{ProcessSockets, Procfs, Scan},
};

/// One descriptor of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holder {
    pid: u32,
    fd: i32,
}

#[derive(Debug, Default)]
struct Sock {
    /// Oldest first: the creator, then inheritors.
    holders: Vec<Holder>,
    /// The holder that last sent, received, connected or accepted on it.
    last_user: Option<Holder>,
    name: Option<Rc<UnixName>>,
    /// The connected peer's inode, 0 if unknown.
    peer: u64,
    /// Kernel address of the `struct sock`, 0 if unknown.
    sk: u64,
    /// An IP socket's ends (canonical), as entered in the address tables.
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    /// The listener in whose accept queue this socket's connection was
    /// seen waiting (0 if none): the one its peer was accepted from.
    listener: u64,
    /// The name the kernel gave this socket's connected peer (a Unix
    /// socket's records carry it): an accepted socket whose `accept` was
    /// not seen (its server was already waiting in it when tracing began)
    /// learns its own name from it.
    peer_name: Option<Rc<UnixName>>,
    /// Found in /proc while tracing, before any record about it: who
    /// holds it is known, not yet what only its records tell (an accepted
    /// socket's name comes with its `accept`).
    unseen: bool,
    /// An IP socket's network namespace, 0 if unknown.
    netns: u32,
}

#[derive(Debug, Default)]
struct Process {
    comm: Rc<str>,
    /// Socket descriptors: fd -> inode.
    fds: IdMap<i32, u64>,
    /// The fd table was read from /proc already (do not read it per event).
    scanned: bool,
    /// Its cgroup id and pid in its own pid namespace (0: the initial
    /// one), from its last record.
    cgroup: u64,
    nspid: u32,
    /// Those were asked of /proc already, for a process whose records
    /// were not seen (do not read it per event).
    placed: bool,
}

/// The other end of an event, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub sock: Option<u64>,
    pub pid: Option<u32>,
    pub comm: Option<Rc<str>>,
    pub fd: Option<i32>,
    /// A Unix peer's name as its holder bound it.
    pub path: Option<Rc<UnixName>>,
    /// The name this end reached the peer by, when it is not `path`: a
    /// bind mount into a container, another mount namespace, a symlink.
    pub via: Option<Rc<UnixName>>,
    /// An IP peer's address and port.
    pub addr: Option<SocketAddr>,
    /// The other end is a connection still in a listener's accept queue:
    /// nobody holds it yet, and `pid` and `comm` name the listener's
    /// (first) holder, who will accept it.
    pub pending: bool,
    /// A `pending` peer's listener: its descriptor in `pid`.
    pub listen_fd: Option<i32>,
    /// A `pending` peer's listener: every process that holds it (a prefork
    /// server's workers, a listener inherited across `fork`).
    pub holders: Vec<PeerHolder>,
    /// The other end's container context (of `pid`, and its socket's namespace).
    pub context: Context,
}

/// One holder of a pending peer's listener (`peer.holders` in JSON).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerHolder {
    pub pid: u32,
    pub comm: Rc<str>,
    pub fd: i32,
}

/// A descriptor passed with `SCM_RIGHTS`, identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passed {
    /// The sender's descriptor number.
    pub fd: i32,
    /// `socket`, `pipe`, `file`, ... (see [`file_type`]); `closed` when the
    /// sender had no such descriptor.
    pub kind: &'static str,
    /// Inode number, 0 when closed.
    pub ino: u64,
    /// A passed Unix socket's name, when it has one.
    pub path: Option<Rc<UnixName>>,
}

/// An event with everything the printers show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: Rc<str>,
    pub thread: [u8; COMM_LEN],
    pub family: u16,
    pub sock_type: u16,
    /// IP protocol (`IPPROTO_TCP`, ...), 0 for Unix sockets.
    pub protocol: u16,
    /// `state`: the TCP state entered.
    pub state: u16,
    /// An IP socket's local address and port.
    pub local: Option<SocketAddr>,
    /// An IP socket's remote address and port: where it is connected, or a
    /// datagram's destination (send) or source (recv).
    pub remote: Option<SocketAddr>,
    pub call: Call,
    pub fd: Option<i32>,
    /// `accept`: the listening descriptor.
    pub listen_fd: Option<i32>,
    pub sock: Option<u64>,
    pub path: Option<Rc<UnixName>>,
    /// The call's result (bytes moved for `send`/`recv`; negative errno on failure).
    pub ret: i64,
    /// `FLAG_*` bits from the kernel.
    pub flags: u16,
    /// Captured payload (empty when capture is off).
    pub data: Bytes,
    /// Descriptors passed with `SCM_RIGHTS`.
    pub passed_fds: u16,
    /// The first of those, identified.
    pub passed: Vec<Passed>,
    /// The process's cgroup and pid namespace, the socket's network namespace.
    pub context: Context,
    pub peer: Option<Peer>,
    /// The other end is a socket on this machine (the kernel named it, or
    /// it is at a local address), but no process holding it is known.
    pub unresolved: bool,
    /// `close`: no descriptor refers to the socket any more (the close of a
    /// descriptor that another process still holds ends nothing).
    pub released: bool,
}

/// The table.
#[derive(Debug, Default)]
pub struct Resolver {
    socks: IdMap<u64, Sock>,
    procs: IdMap<u32, Process>,
    /// Kernel `struct sock` address -> inode, for peers reported by address.
    sk_ino: IdMap<u64, u64>,
    /// Bound names of listening and datagram sockets -> inode: where a
    /// `connect` or `sendto` to a name arrives.
    named: HashMap<Rc<UnixName>, u64>,
    /// TCP connections: (local, remote) -> inode, by network namespace.
    conns: NsTable<Conn>,
    /// TCP listeners and bound UDP sockets: (protocol, local) -> inode, by
    /// network namespace.
    bound: NsTable<(u16, SocketAddr)>,
    /// The last [`CLOSED_KEPT`] sockets to lose their last holder.
    closed: Closed,
    procfs: Procfs,
    /// Cgroup ids to paths and containers.
    cgroups: Cgroups,
    /// sockspy's own network namespace: that of the sockets read at start-up.
    own_netns: u32,
    /// The addresses of this machine: its interfaces' (read at start-up
    /// and with every /proc rescan) and every one a socket here was seen
    /// bound to, in any network namespace (canonical).
    local_ips: HashSet<IpAddr>,
    /// When /proc was last rescanned for a peer nobody was known to hold
    /// (`CLOCK_MONOTONIC` nanoseconds, the records' clock).
    last_rescan: Option<i128>,
    /// Counts the changes to the table: what is kept in `recent` holds
    /// while it stays the same. Every change a [`repeatable`] event's
    /// resolution can make counts it up where it is made (and any other
    /// event, process event or /proc read counts it up as a whole), so a
    /// new change must too, or a repetition shows what the table said before.
    version: u64,
    /// The last [`repeatable`] event's resolution per socket.
    recent: ByInode<Recent>,
}

/// What the table says of one event: whose it is and who is at the other end.
#[derive(Clone, Debug)]
struct Resolved {
    pid: u32,
    comm: Rc<str>,
    fd: Option<i32>,
    ino: u64,
    path: Option<Rc<UnixName>>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    peer: Option<Peer>,
    unresolved: bool,
    released: bool,
}

/// A [`repeatable`] event's resolution, with everything of the record it
/// was made from and the table's version then.
#[derive(Debug)]
struct Recent {
    version: u64,
    sock: u64,
    pid: u32,
    fd: i32,
    event_comm: [u8; COMM_LEN],
    sk: u64,
    peer_sock: u64,
    peer_sk: u64,
    resolved: Resolved,
}

/// Whether a record is a plain Unix send or receive through a descriptor,
/// on a connected socket whose peer the kernel named: the bulk of a busy
/// trace. Once the table has taken in one such event, it changes only if
/// its process, descriptor, name or kernel ids differ, so with those and
/// the table's version the same, the resolution is the same too.
fn repeatable(rec: &SockRecord) -> bool {
    let ev = &rec.ev;
    matches!(rec.kind, EventKind::Send | EventKind::Recv)
        && ev.family == AF_UNIX
        && ev.protocol == 0
        && ev.fd >= 0
        && ev.sock != 0
        && ev.peer_sock != 0
        && rec.addr.is_empty()
        && rec.peer_addr.is_empty()
        && rec.passed.is_empty()
}

/// A TCP connection by its (local, remote) ends, canonical (see [`canonical`]).
type Conn = (SocketAddr, SocketAddr);

/// Sockets whose last holder let go lately, remembered for the events
/// still to be read that name them: the other end's send that the kernel
/// reported after this end had already read the data and closed (two CPUs,
/// two programs, the later write to the ring wins), or a TCP state change
/// in softirq after the close.
#[derive(Debug, Default)]
struct Closed {
    /// Oldest first.
    order: VecDeque<ClosedSock>,
    /// Their TCP connections -> inode: every IP event whose peer is not a
    /// live local socket (any remote peer) looks here, so by key, not by
    /// walking `order`.
    conns: NsTable<Conn>,
}

/// What is remembered of a closed socket.
#[derive(Debug)]
struct ClosedSock {
    ino: u64,
    /// Its last holder.
    holder: Holder,
    /// A TCP connection's (local, remote).
    conn: Option<Conn>,
    /// Its network namespace.
    netns: u32,
    /// A Unix socket's name.
    name: Option<Rc<UnixName>>,
}

impl Closed {
    /// Remembers a socket, forgetting the oldest when [`CLOSED_KEPT`] are
    /// kept (and its connection, unless a newer socket has that key now).
    fn remember(&mut self, closed: ClosedSock) {
        if self.order.len() == CLOSED_KEPT
            && let Some(ClosedSock {
                ino: old,
                conn: Some(key),
                ..
            }) = self.order.pop_front()
        {
            self.conns.remove(&key, old);
        }
        if let Some(key) = closed.conn {
            self.conns.insert(key, closed.netns, closed.ino);
        }
        self.order.push_back(closed);
    }

    /// What is remembered of `ino`, if anything.
    fn find(&self, ino: u64) -> Option<&ClosedSock> {
        self.order.iter().rev().find(|closed| closed.ino == ino)
    }

    /// The last holder of `ino`, if it is remembered.
    fn holder(&self, ino: u64) -> Option<Holder> {
        self.find(ino).map(|closed| closed.holder)
    }
}

/// How many closed sockets are remembered: a bound, so that the table
/// does not grow with the history (one burst of closes is enough).
const CLOSED_KEPT: usize = 256;

/// The shortest interval between two /proc rescans, in nanoseconds: one
/// costs a few milliseconds on a busy machine, and most misses are
/// answered by the first.
const RESCAN_EVERY_NS: i128 = 200_000_000;

/// What a record held back by [`crate::table::hold`] waits for: the record that
/// shows who holds its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaited {
    /// A Unix socket the kernel named as the peer (accepted, by a call
    /// whose record is still to come).
    Sock(u64),
    /// A TCP connection's other end, by its (local, remote) pair, in a
    /// network namespace (where a loopback address pairs only inside it).
    Conn(Conn, u32),
    /// The accepted end of Unix socket `.0`'s connection, being accepted
    /// as its record was written ([`FLAG_PEER_ACCEPTING`]): the `accept`
    /// that names it.
    Accepted(u64),
}

impl Awaited {
    /// Whether `rec` is about the awaited socket, from its holder's side.
    pub fn revealed_by(&self, rec: &SockRecord) -> bool {
        match *self {
            Self::Sock(ino) => rec.ev.sock == ino,
            Self::Accepted(ino) => rec.kind == EventKind::Accept && rec.ev.peer_sock == ino,
            Self::Conn(key, netns) => {
                rec.ev.protocol == IPPROTO_TCP
                    && inet_addr(&rec.addr).map(canonical) == Some(key.0)
                    && inet_addr(&rec.peer_addr).map(canonical) == Some(key.1)
                    && (rec.ev.netns == netns || !key.0.ip().is_loopback())
            }
        }
    }
}

/// A peer's name as its holder bound it (`bound`, what the table knows),
/// and the name an event used for it (`used`) when that is another: the
/// same socket file reached by another path.
fn as_bound(
    bound: Option<Rc<UnixName>>,
    used: Option<Rc<UnixName>>,
) -> (Option<Rc<UnixName>>, Option<Rc<UnixName>>) {
    match (bound, used) {
        (Some(bound), Some(used)) if bound != used => (Some(bound), Some(used)),
        (bound, used) => (bound.or(used), None),
    }
}

/// An address as a table key: IPv4-mapped IPv6 as plain IPv4, so both
/// ends of a dual-stack connection meet.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What `at` finds at `addr`, or else, when `addr` is this machine's
/// (`here`), at the wildcard address of its port (a socket bound to every
/// address of the machine): of its family, or IPv6's (a dual-stack socket
/// takes IPv4 too). A server on `0.0.0.0:80` is no peer of a connection
/// to port 80 of another machine.
pub fn at_or_wildcard<T>(
    addr: SocketAddr,
    here: bool,
    at: impl Fn(SocketAddr) -> Option<T>,
) -> Option<T> {
    let any = |ip| SocketAddr::new(ip, addr.port());
    let family_any = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    if let Some(found) = at(addr) {
        return Some(found);
    }
    if !here {
        return None;
    }
    at(any(family_any)).or_else(|| at(any(IpAddr::V6(Ipv6Addr::UNSPECIFIED))))
}

/// Whether `remote` is plainly an address of this machine, whose socket
/// at `local` sends to it: loopback, or that socket's own address.
pub fn plainly_here(local: Option<SocketAddr>, remote: SocketAddr) -> bool {
    let remote = remote.ip().to_canonical();
    remote.is_loopback() || local.is_some_and(|local| local.ip().to_canonical() == remote)
}

/// How much the table holds, for `--stats`: it must follow what is live
/// now, not grow with everything ever seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize {
    pub sockets: usize,
    pub processes: usize,
    /// Entries of the lookup tables by name, address and kernel pointer.
    pub keys: usize,
}

impl Resolver {
    pub fn size(&self) -> TableSize {
        TableSize {
            sockets: self.socks.len(),
            processes: self.procs.len(),
            keys: self.sk_ino.len() + self.named.len() + self.conns.len() + self.bound.len(),
        }
    }

    pub fn new(procfs: Procfs) -> Self {
        let own_netns = procfs.netns(std::process::id()).unwrap_or(0);
        let mut resolver = Self {
            procfs,
            cgroups: Cgroups::new(),
            own_netns,
            ..Self::default()
        };
        resolver.read_local_ips();
        resolver
    }

    /// Adds the addresses of this network namespace's interfaces to
    /// `local_ips` (an interface made since the last read has new ones).
    fn read_local_ips(&mut self) {
        let ips = self.procfs.local_ips();
        self.local_ips
            .extend(ips.into_iter().map(|ip| ip.to_canonical()));
    }

    /// Seeds the address tables with the TCP and UDP sockets that existed
    /// before tracing started (call after [`Resolver::seed`]).
    pub fn seed_inet(&mut self, sockets: Vec<InetDiag>) {
        self.version += 1;
        for socket in sockets {
            let remote = (socket.remote.port() != 0).then_some(socket.remote);
            let bound = socket.protocol == IPPROTO_UDP || socket.state == STATE_LISTEN;
            let netns = if socket.netns == 0 {
                self.own_netns
            } else {
                socket.netns
            };
            self.note_inet(
                socket.ino,
                (socket.protocol, netns),
                Some(socket.local),
                remote,
                bound,
            );
        }
    }

    /// Enters an IP socket of someone's in the address tables.
    /// `(protocol, netns)`: its IP protocol and network namespace.
    fn note_inet(
        &mut self,
        ino: u64,
        (protocol, netns): (u16, u32),
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        bound: bool,
    ) {
        let Some(sock) = self.socks.get_mut(&ino) else {
            return;
        };
        if netns != 0 {
            sock.netns = netns;
        }
        let local = local.filter(|l| l.port() != 0).map(canonical);
        let remote = remote.filter(|r| r.port() != 0).map(canonical);
        if local.is_some() {
            sock.local = local;
        }
        if remote.is_some() {
            sock.remote = remote;
        }
        let Some(local) = local else { return };
        if !local.ip().is_unspecified() {
            self.local_ips.insert(local.ip());
        }
        if protocol == IPPROTO_TCP
            && let Some(remote) = remote
        {
            self.conns.insert((local, remote), netns, ino);
        } else if bound {
            self.bound.insert((protocol, local), netns, ino);
        }
    }

    /// The local socket at the other end of an IP conversation, by address:
    /// the connection's other end, or else (a TCP connection not accepted
    /// yet, a datagram) the socket listening or bound at the remote address.
    /// `(protocol, netns)`: the IP protocol and the namespace of the
    /// socket whose peer is looked for; a loopback address pairs only
    /// inside it.
    fn inet_peer(
        &self,
        (protocol, netns): (u16, u32),
        local: Option<SocketAddr>,
        remote: SocketAddr,
    ) -> Option<(u64, bool)> {
        let remote = canonical(remote);
        let across = !remote.ip().is_loopback();
        if protocol == IPPROTO_TCP
            && let Some(local) = local
        {
            let key = (remote, canonical(local));
            if let Some(ino) = self
                .conns
                .find(&key, netns, across)
                .or_else(|| self.closed.conns.find(&key, netns, across))
            {
                return Some((ino, true));
            }
        }
        let here = plainly_here(local, remote) || self.local_ips.contains(&remote.ip());
        let ino = at_or_wildcard(remote, here, |addr| {
            self.bound.find(&(protocol, addr), netns, across)
        })?;
        // A listener is not the connection itself; a UDP socket is.
        Some((ino, protocol == IPPROTO_UDP))
    }

    /// Seeds the table with what existed before tracing started.
    pub fn seed(&mut self, scan: Scan, unix: Vec<UnixDiag>) {
        self.version += 1;
        for process in scan.processes {
            self.add_process(process, false);
        }
        for socket in unix {
            let Some(name) = socket.name else { continue };
            let name = Rc::new(name);
            if socket.state == STATE_LISTEN || socket.sock_type == libc::SOCK_DGRAM as u16 {
                self.named.insert(Rc::clone(&name), socket.ino);
            }
            // Only sockets someone holds are worth remembering.
            if let Some(sock) = self.socks.get_mut(&socket.ino) {
                sock.name = Some(name);
            }
        }
    }

    /// Takes in what /proc shows of one process: its name and the sockets
    /// its descriptors hold (`tracing`: read while tracing, not at the
    /// start). Whether it found sockets the table did not have.
    fn add_process(&mut self, process: ProcessSockets, tracing: bool) -> bool {
        let mut found = false;
        let ProcessSockets { pid, comm, fds } = process;
        self.version += 1;
        let entry = self.procs.entry(pid).or_default();
        entry.scanned = true;
        if !comm.is_empty() {
            entry.comm = comm.into();
        }
        for (fd, ino) in fds {
            // /proc shows the present and the events the past: a descriptor
            // the table has on another socket may have been closed and
            // reused since, and that close is still to be read. The events
            // will show the change; taking it now would forget a socket
            // whose events are yet to come.
            if self.procs[&pid]
                .fds
                .get(&fd)
                .is_some_and(|&known| known != ino)
            {
                continue;
            }
            let new = !self.socks.contains_key(&ino);
            self.hold(ino, Holder { pid, fd });
            if new
                && tracing
                && let Some(sock) = self.socks.get_mut(&ino)
            {
                sock.unseen = true;
                found = true;
            }
        }
        found
    }

    /// Names the sockets found in /proc that no record has shown yet,
    /// from /proc/net/unix: when the records that would tell never come
    /// (the kernel filters them out), the name is still known.
    fn name_unseen(&mut self) {
        let Ok(names) = self.procfs.unix_names() else {
            return;
        };
        for (ino, name) in names {
            if let Some(sock) = self.socks.get_mut(&ino)
                && sock.unseen
                && sock.name.is_none()
            {
                sock.name = Some(Rc::new(name));
                self.version += 1;
            }
        }
    }

    /// Records that `holder` has `ino` open.
    fn hold(&mut self, ino: u64, holder: Holder) {
        if ino == 0 || holder.fd < 0 {
            return;
        }
        let process = self.procs.entry(holder.pid).or_default();
        let old = process.fds.insert(holder.fd, ino);
        if old != Some(ino) {
            self.version += 1;
        }
        if let Some(old) = old
            && old != ino
        {
            // The fd was reused after a close we did not see.
            self.drop_holder(old, holder);
        }
        let sock = self.socks.entry(ino).or_default();
        if !sock.holders.contains(&holder) {
            sock.holders.push(holder);
            self.version += 1;
        }
    }

    /// Gives socket `ino`, if it has no name, the one its connected peer's
    /// records gave it.
    fn name_from_peer(&mut self, ino: u64, peer_ino: u64) {
        if self.socks.get(&ino).is_none_or(|sock| sock.name.is_some()) {
            return;
        }
        let Some(name) = self
            .socks
            .get(&peer_ino)
            .filter(|peer| peer.peer == ino)
            .and_then(|peer| peer.peer_name.clone())
        else {
            return;
        };
        if let Some(sock) = self.socks.get_mut(&ino) {
            sock.name = Some(name);
            self.version += 1;
        }
    }

    /// Records that `holder` no longer has `ino` open.
    fn release(&mut self, ino: u64, holder: Holder) {
        if let Some(process) = self.procs.get_mut(&holder.pid)
            && process.fds.get(&holder.fd) == Some(&ino)
        {
            process.fds.remove(&holder.fd);
        }
        self.drop_holder(ino, holder);
    }

    fn drop_holder(&mut self, ino: u64, holder: Holder) {
        self.version += 1;
        let Entry::Occupied(mut entry) = self.socks.entry(ino) else {
            return;
        };
        let sock = entry.get_mut();
        sock.holders.retain(|h| *h != holder);
        if sock.last_user == Some(holder) {
            sock.last_user = None;
        }
        if sock.holders.is_empty() {
            let sock = entry.remove();
            self.closed.remember(ClosedSock {
                ino,
                holder,
                conn: sock.local.zip(sock.remote),
                netns: sock.netns,
                name: sock.name.clone(),
            });
            self.sk_ino.remove(&sock.sk);
            if let Some(local) = sock.local {
                if let Some(remote) = sock.remote {
                    self.conns.remove(&(local, remote), ino);
                }
                for key in [(IPPROTO_TCP, local), (IPPROTO_UDP, local)] {
                    self.bound.remove(&key, ino);
                }
            }
            if let Some(name) = sock.name
                && self.named.get(&name) == Some(&ino)
            {
                self.named.remove(&name);
            }
        }
    }

    /// Applies a process event.
    pub fn apply_proc(&mut self, rec: &ProcRecord) {
        self.version += 1;
        let pid = rec.ev.header.pid;
        match rec.kind {
            EventKind::Fork => {
                let child = rec.ev.child_pid;
                let (comm, fds) = match self.procs.get(&pid) {
                    Some(parent) => (
                        Rc::clone(&parent.comm),
                        parent.fds.iter().map(|(&fd, &ino)| (fd, ino)).collect(),
                    ),
                    None => (comm_str(&rec.ev.header.comm).into(), Vec::new()),
                };
                self.forget_process(child);
                let entry = self.procs.entry(child).or_default();
                entry.comm = comm;
                entry.scanned = true;
                for (fd, ino) in fds {
                    self.hold(ino, Holder { pid: child, fd });
                }
            }
            EventKind::Exec => {
                let comm: Rc<str> = comm_str(&rec.ev.header.comm).into();
                let Some(process) = self.procs.get_mut(&pid) else {
                    self.procs.insert(
                        pid,
                        Process {
                            comm,
                            ..Process::default()
                        },
                    );
                    return;
                };
                process.comm = comm;
                // Descriptors marked close-on-exec are gone now: keep only
                // what /proc still shows. A process that has exited since
                // (its exit record is still to come) keeps what it had:
                // the record of its last sends may be ahead of us yet.
                let held: Vec<(i32, u64)> = process.fds.iter().map(|(&f, &i)| (f, i)).collect();
                let Ok(now) = self.procfs.process_sockets(pid).map(|p| p.fds) else {
                    return;
                };
                for (fd, ino) in held {
                    if !now.contains(&(fd, ino)) {
                        self.release(ino, Holder { pid, fd });
                    }
                }
            }
            EventKind::Exit => self.forget_process(pid),
            _ => {}
        }
    }

    fn forget_process(&mut self, pid: u32) {
        if let Some(process) = self.procs.remove(&pid) {
            for (fd, ino) in process.fds {
                self.drop_holder(ino, Holder { pid, fd });
            }
        }
    }

    /// Names a passed descriptor; a socket also by its path, if it has one.
    fn passed(&self, file: &PassedFile) -> Passed {
        let kind = if file.ino == 0 {
            "closed"
        } else {
            file_type(file.mode)
        };
        Passed {
            fd: file.fd,
            kind,
            ino: file.ino,
            path: self.socks.get(&file.ino).and_then(|s| s.name.clone()),
        }
    }

    /// The process's command name as of this event (the kernel read it just
    /// now, so it also catches a rename by `prctl(PR_SET_NAME)`), kept for
    /// naming the process as somebody's peer.
    fn comm(&mut self, pid: u32, event_comm: &[u8; COMM_LEN]) -> Rc<str> {
        let process = self.procs.entry(pid).or_default();
        // Compared as bytes: this runs for every event, and a new string
        // is only needed when the name changed.
        let len = event_comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        let current = &event_comm[..len];
        if !current.is_empty() && process.comm.as_bytes() != current {
            process.comm = comm_str(event_comm).into();
            self.version += 1;
        }
        Rc::clone(&process.comm)
    }

    /// The descriptor through which `pid` uses `ino`, reading /proc once if needed.
    fn fd_of(&mut self, pid: u32, ino: u64) -> Option<i32> {
        let find = |process: &Process| {
            process
                .fds
                .iter()
                .filter(|&(_, &i)| i == ino)
                .map(|(&fd, _)| fd)
                .min()
        };
        let process = self.procs.entry(pid).or_default();
        if let Some(fd) = find(process) {
            return Some(fd);
        }
        if process.scanned {
            return None;
        }
        process.scanned = true;
        let sockets = self.procfs.process_sockets(pid).ok()?;
        if self.add_process(sockets, true) {
            self.name_unseen();
        }
        find(self.procs.get(&pid)?)
    }

    /// The holder to name as the peer: the last one to use the socket, else
    /// the oldest; for a socket closed lately, its last holder.
    fn holder_of(&self, ino: u64) -> Option<Holder> {
        let Some(sock) = self.socks.get(&ino) else {
            return self.closed.holder(ino);
        };
        sock.last_user
            .filter(|h| sock.holders.contains(h))
            .or_else(|| sock.holders.first().copied())
    }

    /// What `rec` waits for before it can be resolved right: the record of
    /// the other end that a call on another CPU may not have written yet
    /// (an `accept` that the kernel finished before this send read its
    /// peer, a client's `connect`). `None` for the usual event, whose
    /// other end the table knows, or could not know from any record.
    pub fn awaits(&self, rec: &SockRecord) -> Option<Awaited> {
        let ev = &rec.ev;
        if ev.ret < 0 || matches!(rec.kind, EventKind::Socketpair | EventKind::State) {
            return None;
        }
        if ev.family == AF_UNIX {
            if ev.flags & FLAG_PEER_ACCEPTING != 0 {
                let known = self.socks.get(&ev.sock).is_some_and(|sock| sock.peer != 0);
                return (!known).then_some(Awaited::Accepted(ev.sock));
            }
            let peer = ev.peer_sock;
            if peer == 0 {
                return None;
            }
            let unknown = match self.socks.get(&peer) {
                Some(sock) => sock.unseen,
                None => self.closed.holder(peer).is_none(),
            };
            return unknown.then_some(Awaited::Sock(peer));
        }
        if ev.protocol != IPPROTO_TCP {
            return None;
        }
        let local = canonical(inet_addr(&rec.addr)?);
        let remote = canonical(inet_addr(&rec.peer_addr)?);
        let key = (remote, local);
        let (netns, across) = (ev.netns, !remote.ip().is_loopback());
        if remote.port() == 0
            || self.conns.find(&key, netns, across).is_some()
            || self.closed.conns.find(&key, netns, across).is_some()
        {
            return None;
        }
        // The other end is on this machine when something listens at the
        // remote address (this is the client) or the client's address is
        // this one's or loopback (this is the server).
        let here = remote.ip().is_loopback()
            || remote.ip() == local.ip()
            || self.inet_peer((IPPROTO_TCP, netns), None, remote).is_some();
        here.then_some(Awaited::Conn(key, netns))
    }

    /// Reads /proc again for a record written at `ts_ns` that waited in
    /// vain for its peer's record, unless a read made since it was
    /// written already said what /proc can.
    pub fn rescan_since(&mut self, ts_ns: u64) {
        if self.last_rescan.is_none_or(|last| last < i128::from(ts_ns)) {
            self.last_rescan = None;
            self.rescan();
        }
    }

    /// Updates the table from a socket event and resolves its peer.
    pub fn apply(&mut self, rec: &SockRecord) -> Event {
        let repeatable = repeatable(rec);
        let kept = if repeatable { self.repeat(rec) } else { None };
        let resolved = match kept {
            Some(resolved) => resolved,
            None => self.resolve(rec, repeatable),
        };
        let ev = &rec.ev;
        let header = &ev.header;
        let context = self.own_context(rec, resolved.pid);
        Event {
            kind: rec.kind,
            ts_ns: header.ts_ns,
            pid: resolved.pid,
            tid: header.tid,
            uid: header.uid,
            comm: resolved.comm,
            thread: header.tcomm,
            family: ev.family,
            sock_type: ev.sock_type,
            protocol: ev.protocol,
            state: ev.state,
            local: resolved.local,
            remote: resolved.remote,
            call: rec.call(),
            fd: resolved.fd,
            listen_fd: (rec.kind == EventKind::Accept && ev.fd2 >= 0).then_some(ev.fd2),
            sock: (resolved.ino != 0).then_some(resolved.ino),
            path: resolved.path,
            ret: ev.ret,
            flags: ev.flags,
            data: rec.data.clone(),
            passed_fds: ev.passed_fds,
            passed: rec.passed.iter().map(|file| self.passed(file)).collect(),
            context,
            peer: resolved.peer,
            unresolved: resolved.unresolved,
            released: resolved.released,
        }
    }

    /// The container context of `rec`'s own end: what the kernel read for
    /// it, except for a TCP state change, which the kernel may report
    /// while another task runs: that one is its holder `pid`'s.
    fn own_context(&mut self, rec: &SockRecord, pid: u32) -> Context {
        let ev = &rec.ev;
        if rec.kind == EventKind::State {
            return self.context_of(pid, ev.netns);
        }
        Context {
            cgroup: self.cgroups.get(ev.cgroup),
            netns: (ev.netns != 0).then_some(ev.netns),
            nspid: (ev.nspid != 0).then_some(ev.nspid),
        }
    }

    /// Notes the cgroup and namespace pid the kernel read for process
    /// `pid`, for when it is somebody's peer.
    fn place(&mut self, pid: u32, cgroup: u64, nspid: u32) {
        let process = self.procs.entry(pid).or_default();
        if cgroup != 0 && (process.cgroup != cgroup || process.nspid != nspid) {
            process.cgroup = cgroup;
            process.nspid = nspid;
            self.version += 1;
        }
    }

    /// The container context of process `pid` with a socket in network
    /// namespace `netns` (0: not an IP socket, or unknown): as its last
    /// record said, or, for a process no record has shown, as /proc says
    /// (read once).
    fn context_of(&mut self, pid: u32, netns: u32) -> Context {
        let netns = (netns != 0).then_some(netns);
        // A process the table no longer has (it exited) is not added back.
        let Some(process) = self.procs.get_mut(&pid) else {
            return Context {
                netns,
                ..Context::default()
            };
        };
        if process.cgroup == 0 && !process.placed {
            process.placed = true;
            let (path, nspid) = self.procfs.container(pid);
            if let Some(cgroup) = path.and_then(|path| self.cgroups.at_path(&path)) {
                process.cgroup = cgroup.id;
            }
            process.nspid = nspid.unwrap_or(0);
        }
        let (cgroup, nspid) = (process.cgroup, process.nspid);
        Context {
            cgroup: self.cgroups.get(cgroup),
            netns,
            nspid: (nspid != 0).then_some(nspid),
        }
    }

    /// What the table said of the last event like `rec` (a [`repeatable`]
    /// one) on its socket, if the table has not changed since.
    fn repeat(&self, rec: &SockRecord) -> Option<Resolved> {
        let ev = &rec.ev;
        let recent = self.recent.get(ev.sock)?;
        (recent.version == self.version
            && recent.sock == ev.sock
            && recent.pid == ev.header.pid
            && recent.fd == ev.fd
            && recent.event_comm == ev.header.comm
            && recent.sk == ev.sk
            && recent.peer_sock == ev.peer_sock
            && recent.peer_sk == ev.peer_sk)
            .then(|| recent.resolved.clone())
    }

    /// Resolves an event from the table, updating the table as it goes
    /// (`repeatable`: what [`repeatable`] says of `rec`).
    fn resolve(&mut self, rec: &SockRecord, repeatable: bool) -> Resolved {
        if !repeatable {
            // Whatever this changes, what was kept for repetitions may be stale.
            self.version += 1;
        }
        let ev = &rec.ev;
        let header = &ev.header;
        let kind = rec.kind;
        let mut ino = ev.sock;
        if ino == 0 && kind == EventKind::State {
            // Detached from its inode (closing): known by its kernel address.
            ino = self.sk_ino.get(&ev.sk).copied().unwrap_or(0);
        }
        let mut pid = header.pid;
        let mut fd = (ev.fd >= 0).then_some(ev.fd);
        let comm = if kind == EventKind::State {
            // Often softirq context: the running task is nobody in
            // particular. The socket's holder is who the event is about.
            match self.holder_of(ino) {
                Some(holder) => {
                    pid = holder.pid;
                    fd = (holder.fd >= 0).then_some(holder.fd);
                    self.procs
                        .get(&pid)
                        .map(|p| Rc::clone(&p.comm))
                        .unwrap_or_else(|| comm_str(&header.comm).into())
                }
                None => comm_str(&header.comm).into(),
            }
        } else {
            self.place(pid, ev.cgroup, ev.nspid);
            self.comm(pid, &header.comm)
        };
        let own_name = unix_name(&rec.addr).map(Rc::new);
        let peer_name = unix_name(&rec.peer_addr).map(Rc::new);
        let mut local = inet_addr(&rec.addr);
        let remote = inet_addr(&rec.peer_addr);
        let inet = local.is_some() || remote.is_some() || ev.protocol != 0;
        // A TCP socket that left its port (closed: the kernel unhashed it)
        // reads port 0; it is still the connection it was.
        if ev.protocol == IPPROTO_TCP
            && local.is_some_and(|l| l.port() == 0)
            && let Some(known) = self.socks.get(&ino).and_then(|sock| sock.local)
        {
            local = Some(known);
        }

        let failed = ev.ret < 0;
        if ino != 0 && kind != EventKind::State {
            if let Some(fd) = fd
                && kind != EventKind::Close
            {
                self.hold(ino, Holder { pid, fd });
            }
            if fd.is_none() {
                fd = self.fd_of(pid, ino);
            }
            if let Some(sock) = self.socks.get_mut(&ino) {
                sock.unseen = false;
                if ev.sk != 0 && sock.sk != ev.sk {
                    sock.sk = ev.sk;
                    self.sk_ino.insert(ev.sk, ino);
                    self.version += 1;
                }
                if own_name.is_some() && !failed {
                    sock.name.clone_from(&own_name);
                }
                if let Some(fd) = fd
                    && matches!(
                        kind,
                        EventKind::Send | EventKind::Recv | EventKind::Connect | EventKind::Accept
                    )
                    && sock.last_user != Some(Holder { pid, fd })
                {
                    sock.last_user = Some(Holder { pid, fd });
                    self.version += 1;
                }
            }
        }
        if !failed
            && matches!(kind, EventKind::Bind | EventKind::Listen)
            && let Some(name) = &own_name
        {
            self.named.insert(Rc::clone(name), ino);
        }

        let mut peer_ino = ev.peer_sock;
        let mut listener = None;
        let pending = ev.flags & FLAG_PEER_PENDING != 0;
        if inet {
            let tcp = ev.protocol == IPPROTO_TCP;
            if !failed {
                // A datagram's address is where it went or came from, not a connection.
                let connected = if tcp { remote } else { None };
                let bound = kind == EventKind::Listen || !tcp;
                self.note_inet(ino, (ev.protocol, ev.netns), local, connected, bound);
            }
            if let Some(remote) = remote
                && let Some((found, is_socket)) =
                    self.inet_peer((ev.protocol, ev.netns), local, remote)
                && found != ino
            {
                if is_socket {
                    peer_ino = found;
                } else {
                    listener = Some(found);
                }
            }
        } else if pending {
            // An embryo: it has no inode, and its kernel address is not
            // the accepted socket's identity yet. Its listener is: the
            // kernel's link, else the one the accept named (a record
            // written while it was being accepted, which waited for that
            // accept, shows as one written before it), else its name's.
            let accepted_at = self.socks.get(&ino).map_or(0, |sock| sock.listener);
            listener = if ev.peer_listener != 0 {
                Some(ev.peer_listener)
            } else if accepted_at != 0 {
                Some(accepted_at)
            } else {
                peer_name
                    .as_ref()
                    .and_then(|name| self.named.get(name).copied())
            };
            if let Some(listener) = listener
                && let Some(sock) = self.socks.get_mut(&ino)
                && sock.listener != listener
            {
                sock.listener = listener;
                self.version += 1;
            }
        } else {
            if peer_ino == 0 && ev.peer_sk != 0 {
                peer_ino = self.sk_ino.get(&ev.peer_sk).copied().unwrap_or(0);
            }
            if kind == EventKind::Socketpair && ev.fd2 >= 0 {
                self.hold(peer_ino, Holder { pid, fd: ev.fd2 });
            }
            // The listener at which an accepted connection waited, for
            // its client's records written while it was being accepted.
            let accepted_at = match kind {
                EventKind::Accept => self
                    .procs
                    .get(&pid)
                    .and_then(|process| process.fds.get(&ev.fd2).copied()),
                _ => None,
            };
            if peer_ino != 0 {
                if let Some(sock) = self.socks.get_mut(&ino)
                    && sock.peer != peer_ino
                {
                    sock.peer = peer_ino;
                    self.version += 1;
                }
                if let Some(peer) = self.socks.get_mut(&peer_ino) {
                    if peer.peer != ino {
                        peer.peer = ino;
                        self.version += 1;
                    }
                    if peer.sk == 0 && ev.peer_sk != 0 {
                        peer.sk = ev.peer_sk;
                        self.sk_ino.insert(ev.peer_sk, peer_ino);
                        self.version += 1;
                    }
                    if let Some(listener) = accepted_at
                        && peer.listener == 0
                    {
                        peer.listener = listener;
                        self.version += 1;
                    }
                }
            } else if let Some(sock) = self.socks.get(&ino) {
                peer_ino = sock.peer;
            }
        }

        // What the kernel calls the peer (an embryo's name is the one its
        // accepted socket will have) names an accepted socket whose
        // `accept` was not seen, both ways.
        if let Some(name) = &peer_name
            && !inet
            && let Some(sock) = self.socks.get_mut(&ino)
            && sock.peer_name.as_ref() != Some(name)
        {
            sock.peer_name = Some(Rc::clone(name));
            self.version += 1;
        }
        if !inet && peer_ino != 0 {
            self.name_from_peer(ino, peer_ino);
            self.name_from_peer(peer_ino, ino);
        }
        let mut peer = match listener {
            // A TCP connection's other end at a listener is not accepted yet.
            Some(listener) if pending || inet => Some(self.pending_peer(listener, peer_name)),
            _ => self.peer(kind, peer_ino, peer_name, ev.fd2),
        };
        if !inet && !pending && (ev.peer_sk != 0 || peer_ino != 0) {
            let found = peer.get_or_insert_with(Peer::default);
            self.accepted_from(ino, found);
            if *found == Peer::default() {
                peer = None;
            }
        }
        if let Some(found) = &mut peer
            && let Some(peer_pid) = found.pid
        {
            let at = listener.unwrap_or(peer_ino);
            let netns = match self.socks.get(&at) {
                Some(sock) => sock.netns,
                None => self.closed.find(at).map_or(0, |closed| closed.netns),
            };
            found.context = self.context_of(peer_pid, netns);
        }
        // The kernel named a peer, or the other end is a socket here.
        let local_peer = ev.peer_sk != 0 || peer_ino != 0 || listener.is_some();
        if let Some(remote) = remote {
            peer.get_or_insert_with(Peer::default).addr = Some(remote);
        }
        let unresolved = !failed && local_peer && peer.as_ref().is_none_or(|p| p.pid.is_none());
        let path = own_name.or_else(|| self.socks.get(&ino).and_then(|s| s.name.clone()));
        if kind == EventKind::Close
            && let Some(fd) = fd
        {
            self.release(ino, Holder { pid, fd });
        }
        let released = kind == EventKind::Close
            && self
                .socks
                .get(&ino)
                .is_none_or(|sock| sock.holders.is_empty());
        let resolved = Resolved {
            pid,
            comm,
            fd,
            ino,
            path,
            local,
            remote,
            peer,
            unresolved,
            released,
        };
        // Kept only with the peer's holder and descriptor known: a peer
        // nobody is known to hold (named by its listener, if at all) sends
        // the next event to /proc again, which may find the holder.
        if repeatable
            && resolved
                .peer
                .as_ref()
                .is_some_and(|peer| peer.pid.is_some() && peer.fd.is_some())
        {
            self.recent.put(
                ino,
                Recent {
                    version: self.version,
                    sock: ino,
                    pid,
                    fd: ev.fd,
                    event_comm: header.comm,
                    sk: ev.sk,
                    peer_sock: ev.peer_sock,
                    peer_sk: ev.peer_sk,
                    resolved: resolved.clone(),
                },
            );
        }
        resolved
    }

    /// Reads every process's descriptors again, at most every
    /// [`RESCAN_EVERY_NS`]; true when it did.
    fn rescan(&mut self) -> bool {
        let now = clock_ns(libc::CLOCK_MONOTONIC);
        if self
            .last_rescan
            .is_some_and(|last| now - last < RESCAN_EVERY_NS)
        {
            return false;
        }
        self.last_rescan = Some(now);
        self.read_local_ips();
        let Ok(scan) = self.procfs.scan() else {
            return false;
        };
        let mut found = false;
        for process in scan.processes {
            found |= self.add_process(process, true);
        }
        if found {
            self.name_unseen();
        }
        true
    }

    /// A connection in `listener`'s accept queue: the listener's holders,
    /// who may accept it, and its name.
    fn pending_peer(&mut self, listener: u64, name: Option<Rc<UnixName>>) -> Peer {
        if self.holders(listener).is_empty() {
            self.rescan();
        }
        let holders: Vec<PeerHolder> = self
            .holders(listener)
            .iter()
            .map(|h| PeerHolder {
                pid: h.pid,
                comm: self
                    .procs
                    .get(&h.pid)
                    .map_or_else(|| "?".into(), |p| Rc::clone(&p.comm)),
                fd: h.fd,
            })
            .collect();
        let first = holders.first();
        let (path, via) = as_bound(self.name_of(listener), name);
        Peer {
            pid: first.map(|h| h.pid),
            comm: first.map(|h| Rc::clone(&h.comm)),
            listen_fd: first.map(|h| h.fd),
            path,
            via,
            pending: true,
            holders,
            ..Peer::default()
        }
    }

    /// A Unix peer nobody is known to hold (or already released, known
    /// only by its kernel address), accepted from the listener this
    /// socket's connection waited at: it was accepted by a holder of
    /// that listener, so when only one process holds it, that process
    /// (its descriptor unknown), and the listener's name either way. This
    /// is how a peer whose records the kernel filters out, and which closed
    /// before /proc could show it, is still named.
    fn accepted_from(&self, ino: u64, peer: &mut Peer) {
        if peer.pid.is_some() {
            return;
        }
        let Some(listener) = self.socks.get(&ino).map(|s| s.listener).filter(|&l| l != 0) else {
            return;
        };
        if peer.path.is_none() {
            peer.path = self.name_of(listener);
        }
        let holders = self.holders(listener);
        if let Some(first) = holders.first()
            && holders.iter().all(|h| h.pid == first.pid)
        {
            peer.pid = Some(first.pid);
            peer.comm = self.procs.get(&first.pid).map(|p| Rc::clone(&p.comm));
        }
    }

    /// The name of socket `ino`, also of one closed lately.
    fn name_of(&self, ino: u64) -> Option<Rc<UnixName>> {
        match self.socks.get(&ino) {
            Some(sock) => sock.name.clone(),
            None => self.closed.find(ino).and_then(|c| c.name.clone()),
        }
    }

    /// Everyone holding `ino`, oldest first; for a socket closed lately,
    /// its last holder.
    fn holders(&self, ino: u64) -> Vec<Holder> {
        match self.socks.get(&ino) {
            Some(sock) => sock.holders.clone(),
            None => self.closed.holder(ino).into_iter().collect(),
        }
    }

    /// Resolves the other end: by peer inode when the kernel knew it, else
    /// (a datagram to a name) by the name.
    fn peer(
        &mut self,
        kind: EventKind,
        peer_ino: u64,
        peer_name: Option<Rc<UnixName>>,
        fd2: i32,
    ) -> Option<Peer> {
        let mut peer = Peer {
            sock: (peer_ino != 0).then_some(peer_ino),
            path: peer_name,
            ..Peer::default()
        };
        let mut holder = None;
        if peer_ino != 0 {
            holder = self.holder_of(peer_ino);
            // A process whose events the kernel filters left out (or that
            // made its socket in a way no event showed) is found in /proc.
            if holder.is_none() && self.rescan() {
                holder = self.holder_of(peer_ino);
            }
            (peer.path, peer.via) = as_bound(self.name_of(peer_ino), peer.path.take());
            if kind == EventKind::Socketpair && fd2 >= 0 {
                holder = holder.map(|h| Holder { fd: fd2, ..h });
            }
        }
        if holder.is_none()
            && let Some(bound) = peer
                .path
                .as_ref()
                .and_then(|name| self.named.get(name).copied())
        {
            // The process bound there (a datagram's receiver).
            holder = self.holder_of(bound).map(|h| Holder { fd: -1, ..h });
        }
        if let Some(holder) = holder {
            peer.pid = Some(holder.pid);
            peer.comm = self.procs.get(&holder.pid).map(|p| Rc::clone(&p.comm));
            peer.fd = (holder.fd >= 0).then_some(holder.fd);
        }
        (peer != Peer::default()).then_some(peer)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use sockspy_common::{AF_INET, AF_INET6, ProcEvent};

    use super::*;
    use crate::capture::events::{
        Record, decode,
        tests::{sock_bytes, sockaddr_in, sockaddr_in6, sockaddr_un, unix_stream},
    };

    /// A server (pid 100, fd 5, inode 1001, IPv6 dual-stack) and a client
    /// (pid 200, fd 3, inode 2002, IPv4) connected before tracing started.
    fn seeded() -> Resolver {
        let mut resolver = Resolver::new(Procfs::at("/nonexistent"));
        let process = |pid, comm: &str, fd, ino| ProcessSockets {
            pid,
            comm: comm.into(),
            fds: vec![(fd, ino)],
        };
        resolver.seed(
            Scan {
                processes: vec![
                    process(100, "server", 5, 1001),
                    process(200, "client", 3, 2002),
                ],
                unreadable: 0,
            },
            Vec::new(),
        );
        let server = "[::ffff:127.0.0.1]:8080".parse().unwrap();
        let client = "127.0.0.1:40000".parse().unwrap();
        let connected = |ino, family, local, remote: &str| InetDiag {
            ino,
            family,
            protocol: IPPROTO_TCP,
            state: 1,
            local,
            remote: remote.parse().unwrap(),
            rqueue: 0,
            wqueue: 0,
            uid: 0,
            netns: 0,
        };
        resolver.seed_inet(vec![
            connected(1001, AF_INET6, server, "[::ffff:127.0.0.1]:40000"),
            connected(2002, AF_INET, client, "127.0.0.1:8080"),
        ]);
        resolver
    }

    fn send(pid: u32, fd: i32, ino: u64, family: u16, local: &[u8], remote: &[u8]) -> Event {
        send_to(&mut seeded(), pid, fd, ino, family, [local, remote])
    }

    fn send_to(
        resolver: &mut Resolver,
        pid: u32,
        fd: i32,
        ino: u64,
        family: u16,
        ends: [&[u8]; 2],
    ) -> Event {
        event_to(resolver, EventKind::Send, pid, fd, ino, family, ends)
    }

    /// A TCP event of `kind` that moved 4 bytes, applied to `resolver`.
    fn event_to(
        resolver: &mut Resolver,
        kind: EventKind,
        pid: u32,
        fd: i32,
        ino: u64,
        family: u16,
        [local, remote]: [&[u8]; 2],
    ) -> Event {
        let bytes = sock_bytes(
            kind,
            |ev| {
                ev.header.pid = pid;
                ev.fd = fd;
                ev.sock = ino;
                ev.family = family;
                ev.sock_type = 1;
                ev.protocol = IPPROTO_TCP;
                ev.ret = 4;
            },
            [local, remote, b""],
        );
        applied(resolver, &bytes)
    }

    /// The seeded server (dual-stack, so IPv4-mapped addresses) sends to
    /// the seeded client.
    fn server_sends(resolver: &mut Resolver) -> Event {
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        send_to(
            resolver,
            100,
            5,
            1001,
            AF_INET6,
            [&sockaddr_in6(mapped, 8080), &sockaddr_in6(mapped, 40000)],
        )
    }

    /// The event `resolver` makes of the record `bytes`.
    fn applied(resolver: &mut Resolver, bytes: &[u8]) -> Event {
        let Ok(Record::Sock(rec)) = decode(bytes) else {
            panic!("not a socket record")
        };
        resolver.apply(&rec)
    }

    /// Makes `peer` a connection waiting in the accept queue of a
    /// listener that `rrdcached` processes `pids` hold at fd 4.
    pub fn make_pending(peer: &mut Peer, pids: &[u32]) {
        (peer.pending, peer.listen_fd, peer.fd, peer.sock) = (true, Some(4), None, None);
        peer.holders = pids
            .iter()
            .map(|&pid| PeerHolder {
                pid,
                comm: "rrdcached".into(),
                fd: 4,
            })
            .collect();
    }

    /// A /proc of its own for test `name`: process `pid`, named `comm`,
    /// holding socket `ino` at descriptor `fd`.
    fn fake_proc(name: &str, pid: u32, comm: &str, fd: i32, ino: u64) -> std::path::PathBuf {
        let proc = std::env::temp_dir().join(format!("sockspy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        let process = proc.join(pid.to_string());
        std::fs::create_dir_all(process.join("fd")).unwrap();
        std::fs::write(process.join("comm"), format!("{comm}\n")).unwrap();
        let link = process.join("fd").join(fd.to_string());
        std::os::unix::fs::symlink(format!("socket:[{ino}]"), link).unwrap();
        proc
    }

    /// The trace runs behind the processes: by the time a socket's events
    /// are read, its descriptor may hold another socket. Looking for an
    /// unknown peer rescans /proc, which shows that; the table must keep the
    /// socket its events are about, with its path, until its close.
    #[test]
    fn a_rescan_while_resolving_keeps_the_events_own_socket() {
        let proc = fake_proc("rescan", 254, "python3", 5, 999);
        let mut resolver = Resolver::new(Procfs::at(&proc));
        let name = crate::capture::events::tests::sockaddr_un(b"/run/app.sock\0");
        let mut unix = |kind, own: &[u8]| {
            let bytes = sock_bytes(
                kind,
                |ev| {
                    ev.header.pid = 254;
                    ev.fd = 5;
                    ev.sock = 10918;
                    ev.peer_sock = 10917;
                    ev.family = sockspy_common::AF_UNIX;
                    ev.sock_type = 1;
                },
                [own, b"", b""],
            );
            applied(&mut resolver, &bytes)
        };
        unix(EventKind::Send, &name);
        let closed = unix(EventKind::Close, b"");
        std::fs::remove_dir_all(&proc).unwrap();
        assert_eq!(
            closed.path.as_deref(),
            Some(&UnixName::Path("/run/app.sock".into()))
        );
        assert_eq!(closed.fd, Some(5));
    }

    /// A peer whose own records never come (the kernel filters them out)
    /// is found in /proc, with the name /proc/net/unix gives it: an
    /// accepted socket's is its listener's, which only its `accept`
    /// record would otherwise have told.
    #[test]
    fn a_peer_found_in_proc_is_named_from_proc_net_unix() {
        let proc = fake_proc("names", 300, "dockerd", 4, 7001);
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::fs::write(
            proc.join("net").join("unix"),
            "Num       RefCount Protocol Flags    Type St Inode Path\n\
             0000000000000001: 00000003 00000000 00000000 0001 03  7001 /run/docker.sock\n",
        )
        .unwrap();
        let mut resolver = Resolver::new(Procfs::at(&proc));
        let rec = unix_stream(EventKind::Send, (200, 3, 7000, 7001), |_| {}, b"");
        let event = resolver.apply(&rec);
        std::fs::remove_dir_all(&proc).unwrap();
        let peer = event.peer.expect("a peer");
        assert_eq!((peer.pid, peer.fd), (Some(300), Some(4)));
        assert_eq!(peer.path.unwrap().to_string(), "/run/docker.sock");
        assert!(!event.unresolved);
        // Its own records have not come: one naming it would still wait.
        assert_eq!(resolver.awaits(&rec), Some(Awaited::Sock(7001)));
    }

    /// The client reads the answer and closes before the server's send of
    /// it is read (the kernel reports a send after the fact): the send
    /// still names the client.
    #[test]
    fn a_peer_closed_before_its_data_is_read_is_still_named() {
        let mut resolver = seeded();
        let localhost = Ipv4Addr::LOCALHOST;
        let [client, server] = [40000, 8080].map(|port| sockaddr_in(localhost.octets(), port));
        let close = event_to(
            &mut resolver,
            EventKind::Close,
            200,
            3,
            2002,
            AF_INET,
            [&client, &server],
        );
        assert_eq!(close.peer.and_then(|peer| peer.pid), Some(100));
        let peer = server_sends(&mut resolver).peer.expect("a peer");
        assert_eq!(
            (peer.pid, peer.fd, peer.sock),
            (Some(200), Some(3), Some(2002))
        );
    }

    /// A process that execs and exits before its exec record is read:
    /// /proc no longer has it, and what it held is still known (its exit
    /// record, later in the stream, releases it).
    #[test]
    fn an_exec_read_after_the_exit_keeps_the_holders() {
        let mut resolver = seeded();
        // SAFETY: ProcEvent is plain integers; all-zero is a valid value.
        let mut ev: ProcEvent = unsafe { std::mem::zeroed() };
        ev.header.pid = 200;
        let exec = ProcRecord {
            kind: EventKind::Exec,
            ev,
        };
        resolver.apply_proc(&exec);
        let peer = server_sends(&mut resolver).peer.expect("a peer");
        assert_eq!((peer.pid, peer.fd), (Some(200), Some(3)));
    }

    /// A close ends the socket only with its last descriptor: a forking
    /// server's parent that closes its copy of a connection does not.
    #[test]
    fn a_close_releases_the_socket_with_its_last_descriptor() {
        let proc = fake_proc("released", 300, "server", 4, 3003);
        let mut resolver = Resolver::new(Procfs::at(&proc));
        let unix = |resolver: &mut Resolver, kind, pid: u32| {
            let bytes = sock_bytes(
                kind,
                |ev| {
                    ev.header.pid = pid;
                    ev.header.tid = pid;
                    ev.fd = 4;
                    ev.sock = 3003;
                    ev.peer_sock = 3004;
                    ev.family = AF_UNIX;
                    ev.sock_type = 1;
                },
                [b"", b"", b""],
            );
            applied(resolver, &bytes)
        };
        assert!(!unix(&mut resolver, EventKind::Send, 300).released);
        // SAFETY: ProcEvent is plain integers; all-zero is a valid value.
        let mut fork: ProcEvent = unsafe { std::mem::zeroed() };
        fork.header.pid = 300;
        fork.child_pid = 301;
        resolver.apply_proc(&ProcRecord {
            kind: EventKind::Fork,
            ev: fork,
        });
        assert!(!unix(&mut resolver, EventKind::Close, 300).released);
        assert!(unix(&mut resolver, EventKind::Close, 301).released);
        std::fs::remove_dir_all(&proc).unwrap();
    }

    /// Plain Unix sends and receives reuse their socket's last resolution
    /// while the table stays the same: every event must still resolve as
    /// it does with nothing kept, through forks, renames, exits, closes and
    /// a reused descriptor.
    #[test]
    fn repeated_events_resolve_as_they_do_afresh() {
        enum Step {
            Sock(Vec<u8>),
            Proc(ProcRecord),
        }
        let named = |kind, pid: u32, comm: &[u8], fd: i32, [ino, peer]: [u64; 2], own: &[u8]| {
            Step::Sock(sock_bytes(
                kind,
                |ev| {
                    ev.header.pid = pid;
                    ev.header.tid = pid;
                    ev.header.comm[..comm.len()].copy_from_slice(comm);
                    ev.fd = fd;
                    ev.sock = ino;
                    ev.peer_sock = peer;
                    ev.family = AF_UNIX;
                    ev.sock_type = 1;
                    ev.ret = 8;
                },
                [own, b"", b""],
            ))
        };
        let unix = |kind, pid, comm: &[u8], fd, socks| named(kind, pid, comm, fd, socks, b"");
        let process = |kind, pid, child_pid| {
            // SAFETY: ProcEvent is plain integers; all-zero is a valid value.
            let mut ev: ProcEvent = unsafe { std::mem::zeroed() };
            ev.header.pid = pid;
            ev.child_pid = child_pid;
            Step::Proc(ProcRecord { kind, ev })
        };
        let (a, b) = ([1001, 2002], [2002, 1001]);
        let a_sends = || unix(EventKind::Send, 100, b"server", 5, a);
        let mut steps = vec![a_sends(), a_sends()];
        steps.extend([
            unix(EventKind::Recv, 200, b"client", 3, b),
            unix(EventKind::Recv, 200, b"client", 3, b),
            unix(EventKind::Send, 200, b"client", 3, b),
            unix(EventKind::Recv, 100, b"server", 5, a),
            // The client forks: the child's use makes it the one named.
            process(EventKind::Fork, 200, 201),
            a_sends(),
            unix(EventKind::Send, 201, b"client", 3, b),
            a_sends(),
            // The child renames itself.
            unix(EventKind::Send, 201, b"worker", 3, b),
            a_sends(),
            a_sends(),
            process(EventKind::Exit, 201, 0),
            a_sends(),
            // The server's socket gets a name.
            named(
                EventKind::Bind,
                100,
                b"server",
                5,
                a,
                &sockaddr_un(b"/run/a.sock\0"),
            ),
            a_sends(),
            // The server's descriptor goes to another socket, unseen.
            unix(EventKind::Send, 100, b"server", 5, [3003, 4004]),
            a_sends(),
            unix(EventKind::Recv, 200, b"client", 3, b),
            unix(EventKind::Close, 200, b"client", 3, b),
            a_sends(),
            a_sends(),
        ]);
        let mut kept = seeded();
        let mut afresh = seeded();
        let mut repeats = 0;
        for step in &steps {
            match step {
                Step::Sock(bytes) => {
                    let Ok(Record::Sock(rec)) = decode(bytes) else {
                        panic!("not a socket record")
                    };
                    repeats += usize::from(repeatable(&rec) && kept.repeat(&rec).is_some());
                    afresh.recent = ByInode::default();
                    assert_eq!(kept.apply(&rec), afresh.apply(&rec), "{:?}", rec.kind);
                }
                Step::Proc(rec) => {
                    kept.apply_proc(rec);
                    afresh.apply_proc(rec);
                }
            }
        }
        assert!(repeats >= 4, "only {repeats} events were repeats");
    }

    /// A server listening on every address (`0.0.0.0:80`) is the peer of
    /// a connection to port 80 of this machine, not of another machine's.
    #[test]
    fn a_wildcard_listener_is_no_peer_of_another_machines_port() {
        let peer_of = |local: [u8; 4], remote: [u8; 4]| {
            let mut resolver = Resolver::new(Procfs::at("/nonexistent"));
            let process = |pid, comm: &str, fd, ino| ProcessSockets {
                pid,
                comm: comm.into(),
                fds: vec![(fd, ino)],
            };
            let scan = Scan {
                processes: vec![
                    process(100, "nginx", 5, 1001),
                    process(200, "curl", 3, 2002),
                ],
                unreadable: 0,
            };
            resolver.seed(scan, Vec::new());
            resolver.seed_inet(vec![InetDiag {
                ino: 1001,
                family: AF_INET,
                protocol: IPPROTO_TCP,
                state: STATE_LISTEN,
                local: "0.0.0.0:80".parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                rqueue: 0,
                wqueue: 0,
                uid: 0,
                netns: 0,
            }]);
            let ends = [&sockaddr_in(local, 50000)[..], &sockaddr_in(remote, 80)];
            let event = send_to(&mut resolver, 200, 3, 2002, AF_INET, ends);
            (event.peer.and_then(|peer| peer.pid), event.unresolved)
        };
        let (here, elsewhere) = ([192, 0, 2, 2], [93, 184, 216, 34]);
        assert_eq!(peer_of(here, elsewhere), (None, false));
        assert_eq!(peer_of(here, here), (Some(100), false));
        assert_eq!(peer_of([127, 0, 0, 1], [127, 0, 0, 1]), (Some(100), false));
    }

    #[test]
    fn tcp_peers_pair_by_address_across_ipv4_and_mapped_ipv6() {
        let localhost = Ipv4Addr::LOCALHOST;
        let client = send(
            200,
            3,
            2002,
            AF_INET,
            &sockaddr_in(localhost.octets(), 40000),
            &sockaddr_in(localhost.octets(), 8080),
        );
        let peer = client.peer.expect("a peer");
        assert_eq!(peer.pid, Some(100));
        assert_eq!(peer.comm.as_deref(), Some("server"));
        assert_eq!(peer.fd, Some(5));
        assert_eq!(peer.sock, Some(1001));
        assert_eq!(peer.addr, Some("127.0.0.1:8080".parse().unwrap()));

        let server = server_sends(&mut seeded());
        assert_eq!(server.local.unwrap().to_string(), "[::ffff:127.0.0.1]:8080");
        let peer = server.peer.expect("a peer");
        assert_eq!(
            (peer.pid, peer.fd, peer.sock),
            (Some(200), Some(3), Some(2002))
        );
    }

    #[test]
    fn replicas_in_two_network_namespaces_pair_inside_each_and_a_veth_pair_across() {
        let mut resolver = Resolver::new(Procfs::at("/nonexistent"));
        let lo = Ipv4Addr::LOCALHOST.octets();
        // pid, inode, network namespace, local and remote ends.
        let sockets = [
            (10, 1, 111, (lo, 8080), (lo, 40000)),
            (11, 2, 111, (lo, 40000), (lo, 8080)),
            (20, 3, 222, (lo, 8080), (lo, 40000)),
            (21, 4, 222, (lo, 40000), (lo, 8080)),
            (30, 5, 111, ([10, 0, 0, 2], 5000), ([10, 0, 0, 1], 80)),
            (40, 6, 333, ([10, 0, 0, 1], 80), ([10, 0, 0, 2], 5000)),
        ];
        let mut send = |(pid, ino, netns, local, remote): (u32, u64, u32, _, _)| {
            let (local, remote): (([u8; 4], u16), ([u8; 4], u16)) = (local, remote);
            let bytes = sock_bytes(
                EventKind::Send,
                |ev| {
                    (ev.header.pid, ev.fd, ev.sock, ev.netns) = (pid, 3, ino, netns);
                    (ev.family, ev.sock_type, ev.protocol, ev.ret) = (AF_INET, 1, IPPROTO_TCP, 4);
                },
                [
                    &sockaddr_in(local.0, local.1),
                    &sockaddr_in(remote.0, remote.1),
                    b"",
                ],
            );
            applied(&mut resolver, &bytes)
        };
        for socket in sockets {
            send(socket);
        }
        let peers: Vec<_> = sockets
            .into_iter()
            .map(|socket| {
                let event = send(socket);
                assert_eq!(event.context.netns, Some(socket.2));
                let peer = event.peer.expect("a peer");
                (peer.pid, peer.sock)
            })
            .collect();
        assert_eq!(
            peers,
            [
                (Some(11), Some(2)),
                (Some(10), Some(1)),
                (Some(21), Some(4)),
                (Some(20), Some(3)),
                (Some(40), Some(6)),
                (Some(30), Some(5)),
            ]
        );
    }

    #[test]
    fn a_peer_is_named_as_its_holder_bound_it_and_as_this_end_reached_it() {
        let bound = Some(Rc::new(UnixName::Path("/run/engine.sock".into())));
        let used = Some(Rc::new(UnixName::Path("/var/run/engine.sock".into())));
        assert_eq!(
            as_bound(bound.clone(), used.clone()),
            (bound.clone(), used.clone())
        );
        assert_eq!(
            as_bound(bound.clone(), bound.clone()),
            (bound.clone(), None)
        );
        assert_eq!(as_bound(None, used.clone()), (used, None));
        assert_eq!(as_bound(bound.clone(), None), (bound, None));
    }

    #[test]
    fn a_remote_peer_is_only_an_address() {
        let event = send(
            200,
            3,
            2002,
            AF_INET,
            &sockaddr_in([10, 0, 0, 2], 40000),
            &sockaddr_in([192, 0, 2, 1], 443),
        );
        assert_eq!(
            event.peer,
            Some(Peer {
                addr: Some("192.0.2.1:443".parse().unwrap()),
                ..Peer::default()
            })
        );
    }
}
