//! Recording resolved events to pcapng files (`-w`), and reading them back.
//!
//! What is recorded is what the printers show: the resolved [`Event`], peer
//! process included, so `sockspy read` prints a recording exactly as the
//! live view did, on any machine. Every event is one Enhanced Packet Block:
//! its captured payload is the packet data (so Wireshark shows the bytes)
//! and its facts are the packet comment as one JSON object (so `tshark -r`
//! and Wireshark show them too). The packet timestamp is the event's wall
//! clock time in nanoseconds.
//!
//! The payload of a TCP or UDP socket's `send` or `recv` is always written
//! as a real IP packet (IPv4 or IPv6, then TCP or UDP, with the event's own
//! addresses and ports, correct checksums and, for TCP, sequence numbers
//! consistent per direction) on the second interface, so Wireshark's
//! dissectors decode it (see [`IpFramer`]). Each direction of a
//! conversation is written once: by its sender's sends when they are seen
//! first (both ends traced on this machine), else by its receiver's recvs
//! (a remote peer, or a sender not traced).
//!
//! With `--pcap-framing tcp`, each `send` on a connected Unix stream socket
//! is wrapped in synthetic IPv4 + TCP headers (one stable address and port
//! pair per connection, consistent sequence numbers) on that interface too,
//! so Wireshark follows the conversation and its dissectors decode the
//! protocol. Every other event stays on the plain interface: a `recv` would
//! repeat bytes the stream already has.
//!
//! Blocks are built in memory and written whole, a batch per write, so a
//! capture killed at any moment leaves a file of complete blocks followed
//! at most by one torn block, which the reader reports and steps over.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    fs::{File, OpenOptions},
    hash::Hash,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    rc::Rc,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sockspy_common::{AF_INET, AF_INET6, Call, EventKind, FLAG_PEEK, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    capture::events::{UnixName, comm_text, kind_name},
    idmap::{IdMap, IdSet},
    output::pcapng::{self, Block, BlockReader, Packet, ParseError},
    output::print::Clock,
    output::side::BySocket,
    table::container::{Cgroup, Context},
    table::resolve::{Event, Passed, Peer, PeerHolder},
};

/// Link type of the plain interface: raw payload, no framing (`LINKTYPE_USER0`).
const LINKTYPE_USER0: u16 = 147;
/// Link type of the framed interface: IPv4 or IPv6 packets (`LINKTYPE_RAW`).
const LINKTYPE_RAW: u16 = 101;
/// Synthetic IPv4 + TCP header length of a framed Unix stream send.
const TCP_HEADERS: usize = 40;
/// Identifies sockspy's section header comment and its version. Version 1
/// framed only Unix streams (IPv4 + TCP) and had the framed interface only
/// with `--pcap-framing tcp`; version 2 frames TCP and UDP payloads in
/// IPv4 or IPv6 too, so a version 1 reader must not take its files.
const FORMAT_VERSION: u32 = 2;
/// The oldest version this reader reads.
const OLDEST_VERSION: u32 = 1;

/// How payload appears as packet data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Unix socket payload bytes as they are (TCP and UDP payloads are IP
    /// packets whatever the framing).
    #[default]
    Raw,
    /// Unix stream sends wrapped in synthetic IPv4 + TCP headers.
    Tcp,
}

/// What `-w` and friends asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOptions {
    /// `-` is stdout.
    pub path: PathBuf,
    /// Overwrite existing files.
    pub force: bool,
    /// `-C`: start a new file once one reaches this many bytes.
    pub rotate_bytes: Option<u64>,
    /// `-W`: keep at most this many files.
    pub max_files: Option<u32>,
    pub framing: Framing,
    /// `--pcap-port`: the port of the named (server) end of a framed connection.
    pub port: Option<u16>,
    /// Payload bytes captured per call (0 when off), recorded for the reader.
    pub capture_bytes: u32,
}

/// The output could not be opened: a usage problem (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{0} exists; an earlier capture is evidence (use --force to overwrite it)")]
    Exists(PathBuf),
    #[error("cannot create {path}: {err}")]
    Create { path: PathBuf, err: io::Error },
}

/// Facts of a recording's section, in the section header's comment.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SectionFacts {
    sockspy: u32,
    capture_bytes: u32,
    framing: Framing,
}

/// An event's facts as the packet comment carries them: one JSON object,
/// of its call's facts and its socket's. Names follow the JSON output where
/// they mean the same; numbers are kept raw where the printed name would
/// lose them.
///
/// Text fields borrow: from the event when writing, from the comment when
/// reading (unless JSON escapes made a copy necessary), so that recording
/// an event allocates no strings.
#[derive(Debug, PartialEq, Eq)]
struct Facts<'a> {
    call: CallFacts<'a>,
    socket: SocketFacts<'a>,
}

/// What differs from one event on a socket to the next.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct CallFacts<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    tid: u32,
    uid: u32,
    #[serde(borrow)]
    thread: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "is_zero")]
    state: u16,
    call: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen_fd: Option<i32>,
    ret: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    flags: u16,
    #[serde(default, skip_serializing_if = "is_zero")]
    passed_fds: u16,
    /// `close`: the socket's last descriptor went (`Event::released`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    released: bool,
    #[serde(default, borrow, skip_serializing_if = "Vec::is_empty")]
    passed_files: Vec<PassedFacts<'a>>,
}

/// What stays the same while a socket's holder and peer do: written once
/// per socket and copied after that (see [`crate::output::side`]).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SocketFacts<'a> {
    pid: u32,
    #[serde(borrow)]
    comm: Cow<'a, str>,
    family: u16,
    #[serde(rename = "type")]
    sock_type: u16,
    #[serde(default, skip_serializing_if = "is_zero")]
    protocol: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sock: Option<u64>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    path: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "ContextFacts::is_empty")]
    context: ContextFacts<'a>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    peer: Option<PeerFacts<'a>>,
}

/// One end's container context; the container and pod are read from the
/// cgroup path again.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct ContextFacts<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    cgroup: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nspid: Option<u32>,
}

impl<'a> ContextFacts<'a> {
    fn of(context: &'a Context) -> Self {
        Self {
            cgroup: context.cgroup.as_ref().map(|c| Cow::Borrowed(&*c.path)),
            netns: context.netns,
            nspid: context.nspid,
        }
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn into_context(self) -> Context {
        Context {
            cgroup: self.cgroup.map(|path| Rc::new(Cgroup::new(0, &path))),
            netns: self.netns,
            nspid: self.nspid,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PassedFacts<'a> {
    fd: i32,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    ino: u64,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    path: Option<Cow<'a, str>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PeerFacts<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sock: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    comm: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    path: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    via: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pending: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen_fd: Option<i32>,
    #[serde(default, borrow, skip_serializing_if = "Vec::is_empty")]
    holders: Vec<HolderFacts<'a>>,
    #[serde(default, borrow, skip_serializing_if = "ContextFacts::is_empty")]
    context: ContextFacts<'a>,
}

/// One holder of a pending peer's listener.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct HolderFacts<'a> {
    pid: u32,
    #[serde(borrow)]
    comm: Cow<'a, str>,
    fd: i32,
}

fn is_zero(value: &u16) -> bool {
    *value == 0
}

/// Names a passed descriptor's file type can have (see `events::file_type`).
const FILE_KINDS: [&str; 9] = [
    "socket",
    "pipe",
    "file",
    "dir",
    "chr",
    "blk",
    "link",
    "anon_inode",
    "closed",
];

/// A name as `UnixName`'s display shows it; a path is borrowed as it is.
fn name_text(name: &Option<Rc<UnixName>>) -> Option<Cow<'_, str>> {
    name.as_deref().map(UnixName::text)
}

/// The reverse of `UnixName`'s display: `@name` is abstract.
fn name_from(text: Option<Cow<'_, str>>) -> Option<Rc<UnixName>> {
    text.map(|text| {
        Rc::new(match text.strip_prefix('@') {
            Some(name) => UnixName::Abstract(name.to_owned()),
            None => UnixName::Path(text.into_owned()),
        })
    })
}

impl<'a> CallFacts<'a> {
    fn of(event: &'a Event) -> Self {
        Self {
            event: Cow::Borrowed(kind_name(event.kind)),
            tid: event.tid,
            uid: event.uid,
            thread: comm_text(&event.thread),
            state: event.state,
            call: event.call as u16,
            listen_fd: event.listen_fd,
            ret: event.ret,
            flags: event.flags,
            passed_fds: event.passed_fds,
            released: event.released,
            passed_files: event
                .passed
                .iter()
                .map(|file| PassedFacts {
                    fd: file.fd,
                    kind: Cow::Borrowed(file.kind),
                    ino: file.ino,
                    path: name_text(&file.path),
                })
                .collect(),
        }
    }
}

impl<'a> SocketFacts<'a> {
    fn of(event: &'a Event) -> Self {
        Self {
            pid: event.pid,
            comm: Cow::Borrowed(&event.comm),
            family: event.family,
            sock_type: event.sock_type,
            protocol: event.protocol,
            local: event.local,
            remote: event.remote,
            fd: event.fd,
            sock: event.sock,
            path: name_text(&event.path),
            context: ContextFacts::of(&event.context),
            peer: event.peer.as_ref().map(|peer| PeerFacts {
                sock: peer.sock,
                pid: peer.pid,
                comm: peer.comm.as_deref().map(Cow::Borrowed),
                fd: peer.fd,
                path: name_text(&peer.path),
                via: name_text(&peer.via),
                addr: peer.addr,
                pending: peer.pending,
                listen_fd: peer.listen_fd,
                holders: peer
                    .holders
                    .iter()
                    .map(|h| HolderFacts {
                        pid: h.pid,
                        comm: Cow::Borrowed(&h.comm),
                        fd: h.fd,
                    })
                    .collect(),
                context: ContextFacts::of(&peer.context),
            }),
        }
    }
}

impl<'a> Facts<'a> {
    /// Reads both parts from one comment. Each takes its own keys and
    /// passes over the other's: two passes over the text cost less than
    /// serde's `flatten`, which collects every key and value first.
    fn parse(comment: &'a str) -> serde_json::Result<Self> {
        Ok(Self {
            call: serde_json::from_str(comment)?,
            socket: serde_json::from_str(comment)?,
        })
    }

    fn into_event(self, ts_ns: u64, data: Bytes) -> Result<Event, String> {
        let Self { call, socket } = self;
        let kind = (1..64)
            .filter_map(EventKind::from_u32)
            .find(|kind| kind_name(*kind) == call.event)
            .ok_or_else(|| format!("unknown event `{}`", call.event))?;
        let mut thread = [0u8; sockspy_common::COMM_LEN];
        let name = call.thread.as_bytes();
        let len = name.len().min(thread.len());
        thread[..len].copy_from_slice(&name[..len]);
        let passed = call
            .passed_files
            .into_iter()
            .map(|file| {
                let kind = FILE_KINDS
                    .into_iter()
                    .find(|k| *k == file.kind)
                    .ok_or_else(|| format!("unknown file type `{}`", file.kind))?;
                Ok(Passed {
                    fd: file.fd,
                    kind,
                    ino: file.ino,
                    path: name_from(file.path),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Event {
            kind,
            ts_ns,
            pid: socket.pid,
            tid: call.tid,
            uid: call.uid,
            comm: socket.comm.as_ref().into(),
            thread,
            family: socket.family,
            sock_type: socket.sock_type,
            protocol: socket.protocol,
            state: call.state,
            local: socket.local,
            remote: socket.remote,
            call: Call::from_u16(call.call),
            fd: socket.fd,
            listen_fd: call.listen_fd,
            sock: socket.sock,
            path: name_from(socket.path),
            ret: call.ret,
            flags: call.flags,
            data,
            passed_fds: call.passed_fds,
            passed,
            context: socket.context.into_context(),
            peer: socket.peer.map(|peer| Peer {
                sock: peer.sock,
                pid: peer.pid,
                comm: peer.comm.as_deref().map(Into::into),
                fd: peer.fd,
                path: name_from(peer.path),
                via: name_from(peer.via),
                addr: peer.addr,
                pending: peer.pending,
                listen_fd: peer.listen_fd,
                holders: peer
                    .holders
                    .into_iter()
                    .map(|h| PeerHolder {
                        pid: h.pid,
                        comm: h.comm.as_ref().into(),
                        fd: h.fd,
                    })
                    .collect(),
                context: peer.context.into_context(),
            }),
            unresolved: false,
            released: call.released,
        })
    }
}

/// The port of a framed connection's server end without `--pcap-port`.
const SERVER_PORT: u16 = 9000;

/// Gives each stream connection synthetic TCP framing that stays the same
/// for its whole life.
///
/// A connection is named after its client's socket inode (the unnamed end),
/// because a client may send before its connection is accepted, when
/// nothing yet knows the server's end: both ends get the address
/// 127.x.y.z from the low 24 bits of that inode; the client a port from the
/// rest, the server `--pcap-port` (default 9000). A socketpair, both ends
/// unnamed, is named after its lower inode, which plays the client.
#[derive(Debug, Default)]
struct TcpFramer {
    port: Option<u16>,
    /// (connection, from the client) -> next sequence number that way.
    seq: IdMap<(u64, bool), u32>,
    /// Connected pairs seen in any event, both ways: a send whose event
    /// lacks its peer still belongs to its connection.
    peers: IdMap<u64, u64>,
    /// Sockets seen with a name: the server ends.
    named: IdSet<u64>,
    /// Sockets seen calling `connect`: the client ends.
    clients: IdSet<u64>,
    /// Socket -> its connection and whether it is the client, fixed at
    /// its first framed send so that a stream never changes its ports.
    decided: IdMap<u64, (u64, bool)>,
    /// Sockets closed while their peer is still open.
    closed: IdSet<u64>,
}

impl TcpFramer {
    /// Learns what an event says about who is connected to whom.
    fn learn(&mut self, event: &Event) {
        let Some(sock) = event.sock else { return };
        if event.path.is_some() {
            self.named.insert(sock);
        }
        if event.kind == EventKind::Connect {
            self.clients.insert(sock);
        }
        if let Some(peer) = &event.peer
            && let Some(to) = peer.sock
        {
            self.peers.insert(sock, to);
            self.peers.insert(to, sock);
            if peer.path.is_some() {
                self.named.insert(to);
            }
        }
    }

    /// The connection a send from `from` belongs to, and whether it goes
    /// from the client; `None` for a named socket whose peer is unknown.
    fn connection(&mut self, from: u64) -> Option<(u64, bool)> {
        if let Some(&decided) = self.decided.get(&from) {
            return Some(decided);
        }
        let client = |ino| self.clients.contains(&ino) || !self.named.contains(&ino);
        let to = self.peers.get(&from).copied();
        let known = to
            .and_then(|to| self.decided.get(&to))
            .map(|&(key, c)| (key, !c));
        let decided = match to {
            _ if known.is_some() => known?,
            None => client(from).then_some((from, true))?,
            Some(_) if self.clients.contains(&from) => (from, true),
            Some(to) if self.clients.contains(&to) => (to, false),
            Some(to) => match (client(from), client(to)) {
                (true, false) => (from, true),
                (false, true) => (to, false),
                _ => (from.min(to), from < to),
            },
        };
        self.decided.insert(from, decided);
        if let Some(to) = to {
            self.decided.insert(to, (decided.0, !decided.1));
        }
        Some(decided)
    }

    /// A segment carrying a send's payload, or `None` when the event is not
    /// a send on a stream socket of a known connection.
    fn segment(&mut self, event: &Event) -> Option<Vec<u8>> {
        self.learn(event);
        if event.kind != EventKind::Send || event.sock_type != 1 || event.ret < 0 {
            return None;
        }
        let (key, from_client) = self.connection(event.sock?)?;
        let [_, _, _, _, _, a, b, c] = key.to_be_bytes();
        let ip = [127, a, b, c];
        let server_port = self.port.unwrap_or(SERVER_PORT);
        let mut client_port = 10_000 + ((key >> 24) % 50_000) as u16;
        if client_port == server_port {
            client_port += 1;
        }
        let (sport, dport) = if from_client {
            (client_port, server_port)
        } else {
            (server_port, client_port)
        };
        let initial = |from_client: bool| {
            (key.wrapping_mul(0x9E37_79B9) as u32) ^ u32::from(from_client) << 31
        };
        let seq = *self
            .seq
            .entry((key, from_client))
            .or_insert(initial(from_client));
        let ack = *self
            .seq
            .entry((key, !from_client))
            .or_insert(initial(!from_client));
        // The stream advances by what the call moved, captured or not, so a
        // cut snippet shows in Wireshark as bytes not captured.
        self.seq
            .insert((key, from_client), seq.wrapping_add(event.ret as u32));
        let data = &event.data[..];
        let mut packet = Vec::with_capacity(TCP_HEADERS + data.len());
        let total = (TCP_HEADERS + data.len()) as u16;
        packet.extend_from_slice(&[0x45, 0]);
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        packet.extend_from_slice(&ip);
        packet.extend_from_slice(&ip);
        let ip_sum = checksum(0, &packet[..20]);
        packet[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        packet.extend_from_slice(&sport.to_be_bytes());
        packet.extend_from_slice(&dport.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&ack.to_be_bytes());
        // Header length 5 words; flags PSH + ACK; a wide window; checksum later.
        packet.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        packet.extend_from_slice(data);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&ip);
        pseudo.extend_from_slice(&ip);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        let tcp_sum = checksum(sum_words(0, &pseudo), &packet[20..]);
        packet[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
        Some(packet)
    }

    /// Forgets a connection once both its ends were closed (the open end
    /// may still send or receive).
    fn close(&mut self, ino: u64) {
        let peer = self.peers.get(&ino).copied();
        if let Some(peer) = peer
            && !self.closed.contains(&peer)
        {
            self.closed.insert(ino);
            return;
        }
        if let Some(&(key, _)) = self.decided.get(&ino) {
            self.seq.remove(&(key, true));
            self.seq.remove(&(key, false));
        }
        for ino in std::iter::once(ino).chain(peer) {
            self.decided.remove(&ino);
            self.clients.remove(&ino);
            self.closed.remove(&ino);
            self.named.remove(&ino);
            self.peers.remove(&ino);
        }
    }
}

fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

/// The Internet checksum of `bytes`, continuing from `sum`.
fn checksum(sum: u32, bytes: &[u8]) -> u16 {
    let mut sum = sum_words(sum, bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// How many entries each generation of a [`Recent`] table holds.
const RECENT_LIMIT: usize = 1 << 14;
/// How many conversations the IP framer tells apart on one pair of ports.
const OWNERS_PER_PORTS: usize = 64;

/// A table that forgets what was not used for a while: entries live in the
/// current generation; when it is full it becomes the old one (the one
/// before is dropped), and an old entry used again moves back. Its size is
/// bounded whatever a long capture sees.
#[derive(Debug)]
struct Recent<K, V> {
    now: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Self {
            now: HashMap::new(),
            old: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, V> Recent<K, V> {
    /// The entry for `key`, made with `new` when there is none.
    fn entry(&mut self, key: K, new: impl FnOnce() -> V) -> &mut V {
        if !self.now.contains_key(&key) {
            let value = self.old.remove(&key).unwrap_or_else(new);
            if self.now.len() >= RECENT_LIMIT {
                self.old = std::mem::take(&mut self.now);
            }
            self.now.insert(key, value);
        }
        self.now.get_mut(&key).expect("inserted above")
    }
}

/// One direction of a conversation: source, destination.
type Way = (SocketAddr, SocketAddr);

/// A direction the IP framer has written: source and destination address,
/// and whether sends (else recvs) write it.
type Owner = (IpAddr, IpAddr, bool);

/// Writes the payload of TCP and UDP events as the IP packets that carried
/// it, from the event's own addresses and ports.
///
/// A `send` is a packet from the local end to the remote one; a `recv` one
/// from the remote end to the local one. On this machine both ends of a
/// conversation are traced, and the sender's send and the receiver's recv
/// carry the same bytes: each direction is written by whichever kind of
/// event shows it first, and only by that kind afterwards. The sender's
/// send comes first unless tracing began between the two; a remote sender,
/// or one the tracer does not see, shows its data only in recvs, which are
/// then the packets. A `MSG_PEEK` recv is never a packet (its bytes come
/// again), nor a TCP call that moved nothing, nor an event without both
/// addresses (a UDP recv that did not ask for the source).
///
/// IPv4-mapped IPv6 addresses are written as IPv4. An unconnected UDP
/// socket's local address is the wildcard (0.0.0.0 or ::): it is written so
/// rather than guessed, and stands for any address when matching a send to
/// the recv of the same datagram.
#[derive(Debug, Default)]
struct IpFramer {
    /// (TCP, source port, destination port) -> the directions using those
    /// ports, most recent last.
    owners: Recent<(bool, u16, u16), Vec<Owner>>,
    /// A TCP direction -> the sequence number of its next byte.
    seq: Recent<Way, u32>,
}

/// Whether two addresses may name the same end: equal, or one is the
/// wildcard an unconnected socket reports.
fn same_end(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// Both ends in one family: IPv4 when both are IPv4 (mapped ones
/// included), else IPv6.
fn one_family(from: SocketAddr, to: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |addr: SocketAddr| SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let (from, to) = (canonical(from), canonical(to));
    let v4 = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(_) => addr,
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port())
        }
        IpAddr::V6(_) => addr,
    };
    let v6 = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), addr.port()),
        IpAddr::V6(_) => addr,
    };
    match (v4(from), v4(to)) {
        (from @ SocketAddr::V4(_), to @ SocketAddr::V4(_)) => (from, to),
        _ => (v6(from), v6(to)),
    }
}

/// A direction's first sequence number: stable, and different per direction.
fn initial_seq((from, to): Way) -> u32 {
    // FNV-1a over both ends.
    let mut hash: u32 = 0x811c_9dc5;
    for addr in [from, to] {
        let ip = match addr.ip() {
            IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            IpAddr::V6(ip) => ip.octets(),
        };
        for byte in ip.into_iter().chain(addr.port().to_be_bytes()) {
            hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
    }
    hash
}

impl IpFramer {
    /// The packet carrying an event's payload, or `None` when the event is
    /// not one (see the type's description).
    fn packet(&mut self, event: &Event) -> Option<Vec<u8>> {
        if !matches!(event.family, AF_INET | AF_INET6) || event.ret < 0 {
            return None;
        }
        let tcp = match event.protocol {
            IPPROTO_TCP => true,
            IPPROTO_UDP => false,
            _ => return None,
        };
        let by_send = match event.kind {
            EventKind::Send => true,
            EventKind::Recv if event.flags & FLAG_PEEK == 0 => false,
            _ => return None,
        };
        if tcp && event.ret == 0 {
            return None;
        }
        let (local, remote) = (event.local?, event.remote?);
        let (from, to) = if by_send {
            one_family(local, remote)
        } else {
            one_family(remote, local)
        };
        let owners = self.owners.entry((tcp, from.port(), to.port()), Vec::new);
        let owner = owners
            .iter()
            .find(|(src, dst, _)| same_end(*src, from.ip()) && same_end(*dst, to.ip()));
        match owner {
            Some(&(_, _, owner)) if owner != by_send => return None,
            Some(_) => {}
            None => {
                if owners.len() >= OWNERS_PER_PORTS {
                    owners.remove(0);
                }
                owners.push((from.ip(), to.ip(), by_send));
            }
        }
        let moved = event.ret as usize;
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(&from.port().to_be_bytes());
        header.extend_from_slice(&to.port().to_be_bytes());
        if tcp {
            let next = self.seq.entry((from, to), || initial_seq((from, to)));
            let seq = *next;
            // The stream advances by what the call moved, captured or not.
            *next = seq.wrapping_add(moved as u32);
            let ack = *self.seq.entry((to, from), || initial_seq((to, from)));
            header.extend_from_slice(&seq.to_be_bytes());
            header.extend_from_slice(&ack.to_be_bytes());
            // Header length 5 words; flags PSH + ACK; a wide window;
            // checksum and urgent pointer.
            header.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
            Some(ip_packet(
                from,
                to,
                IPPROTO_TCP as u8,
                header,
                &event.data,
                moved,
            ))
        } else {
            // Length and checksum.
            header.extend_from_slice(&[0, 0, 0, 0]);
            Some(ip_packet(
                from,
                to,
                IPPROTO_UDP as u8,
                header,
                &event.data,
                moved,
            ))
        }
    }
}

/// An IP packet from `from` to `to` whose TCP or UDP `header` (checksum
/// zero) is followed by `data`, the captured start of `moved` bytes. The
/// length fields say what was moved (as a capture cut to a snap length
/// does), so a checksum can only be right when the whole payload was
/// captured; the IPv4 header checksum always is.
fn ip_packet(
    from: SocketAddr,
    to: SocketAddr,
    protocol: u8,
    mut header: Vec<u8>,
    data: &[u8],
    moved: usize,
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(40 + header.len() + data.len());
    let mut pseudo = Vec::with_capacity(40);
    let moved = moved.max(data.len());
    let length = match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let length = (header.len() + moved).min(0xffff - 20) as u16;
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&(20 + length).to_be_bytes());
            // No id; don't fragment; TTL 64; header checksum later.
            packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
            packet.extend_from_slice(&src.octets());
            packet.extend_from_slice(&dst.octets());
            let sum = checksum(0, &packet);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&length.to_be_bytes());
            length
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            let (src, dst) = (v6(src).octets(), v6(dst).octets());
            let length = (header.len() + moved).min(0xffff) as u16;
            // Version 6, no traffic class or flow label; hop limit 64.
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&length.to_be_bytes());
            packet.extend_from_slice(&[protocol, 64]);
            packet.extend_from_slice(&src);
            packet.extend_from_slice(&dst);
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&u32::from(length).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
            length
        }
    };
    let udp = u16::from(protocol) == IPPROTO_UDP;
    if udp {
        header[4..6].copy_from_slice(&length.to_be_bytes());
    }
    let mut sum = checksum(sum_words(sum_words(0, &pseudo), &header), data);
    if udp && sum == 0 {
        // Zero would mean "no checksum".
        sum = 0xffff;
    }
    let at = if udp { 6 } else { 16 };
    header[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&header);
    packet.extend_from_slice(data);
    packet
}

/// The payload of a packet on the framed interface: what follows its IPv4
/// or IPv6 header and its TCP or UDP header; `None` if it is no such packet.
fn unframe(data: &Bytes) -> Option<Bytes> {
    let (ip_header, protocol) = match data.first()? >> 4 {
        4 => (usize::from(data[0] & 0x0f) * 4, *data.get(9)?),
        6 => (40, *data.get(6)?),
        _ => return None,
    };
    let transport = match u16::from(protocol) {
        IPPROTO_TCP => usize::from(data.get(ip_header + 12)? >> 4) * 4,
        IPPROTO_UDP => 8,
        _ => return None,
    };
    let start = ip_header + transport;
    (ip_header >= 20 && transport >= 8 && start <= data.len()).then(|| data.slice(start..))
}

/// Turns events into pcapng blocks (no files involved).
#[derive(Debug)]
struct Encoder {
    clock: Clock,
    capture_bytes: u32,
    framing: Framing,
    tcp: TcpFramer,
    ip: IpFramer,
    /// The last event's facts, its buffer kept for the next.
    comment: Vec<u8>,
    /// Busy sockets' facts, as JSON.
    sockets: BySocket<Vec<u8>>,
}

impl Encoder {
    /// An encoder whose framed Unix streams use server port `port` (`--pcap-port`).
    fn new(clock: Clock, capture_bytes: u32, framing: Framing, port: Option<u16>) -> Self {
        Self {
            clock,
            capture_bytes,
            framing,
            tcp: TcpFramer {
                port,
                ..TcpFramer::default()
            },
            ip: IpFramer::default(),
            comment: Vec::new(),
            sockets: BySocket::default(),
        }
    }

    /// The blocks that open every file: section header, interfaces.
    fn header(&self, out: &mut Vec<u8>) {
        let facts = serde_json::to_string(&SectionFacts {
            sockspy: FORMAT_VERSION,
            capture_bytes: self.capture_bytes,
            framing: self.framing,
        })
        .expect("plain struct serializes");
        let app = format!("sockspy {}", env!("CARGO_PKG_VERSION"));
        pcapng::section_header(
            out,
            &[
                (pcapng::SHB_USERAPPL, app.as_bytes()),
                (pcapng::OPT_COMMENT, facts.as_bytes()),
            ],
        );
        pcapng::interface(out, LINKTYPE_USER0, "sockspy");
        pcapng::interface(out, LINKTYPE_RAW, "sockspy-ip");
    }

    fn event(&mut self, out: &mut Vec<u8>, event: &Event) {
        // One object of the call's facts and the socket's: `{call..,socket..}`.
        self.comment.clear();
        serde_json::to_writer(&mut self.comment, &CallFacts::of(event))
            .expect("plain struct serializes");
        self.comment.pop();
        self.comment.push(b',');
        match self.sockets.find(event) {
            Some(socket) => self.comment.extend_from_slice(&socket[1..]),
            None => {
                let socket =
                    serde_json::to_vec(&SocketFacts::of(event)).expect("plain struct serializes");
                self.comment.extend_from_slice(&socket[1..]);
                self.sockets.keep(event, socket);
            }
        }
        // serde_json writes UTF-8.
        let text = std::str::from_utf8(&self.comment).unwrap_or_default();
        let ts_ns = u64::try_from(self.clock.wall_ns(event.ts_ns)).unwrap_or(0);
        let moved = if event.ret > 0 { event.ret as u32 } else { 0 };
        let segment = if matches!(event.family, AF_INET | AF_INET6) {
            self.ip.packet(event)
        } else {
            match self.framing {
                Framing::Tcp => self.tcp.segment(event),
                Framing::Raw => None,
            }
        };
        let packet = match &segment {
            Some(segment) => Packet {
                interface: 1,
                ts_ns,
                data: segment,
                orig_len: moved.saturating_add((segment.len() - event.data.len()) as u32),
                comment: Some(text),
            },
            None => Packet {
                interface: 0,
                ts_ns,
                data: &event.data,
                orig_len: moved,
                comment: Some(text),
            },
        };
        pcapng::packet(out, &packet);
        if event.kind == EventKind::Close
            && let Some(sock) = event.sock
        {
            self.tcp.close(sock);
        }
    }
}

/// Where blocks go: stdout, or a file (of a rotating set).
enum Output {
    Stdout(io::Stdout),
    File(File),
}

impl Output {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout(out) => out.write_all(bytes).and_then(|()| out.flush()),
            Self::File(file) => file.write_all(bytes),
        }
    }
}

/// Writes a recording: `-w FILE`, with `-C`/`-W` rotation.
pub struct Recorder {
    options: RecordOptions,
    encoder: Encoder,
    output: Output,
    /// Blocks not written yet, always whole.
    pending: Vec<u8>,
    /// Bytes in the current file, pending ones included.
    file_bytes: u64,
    /// Whether the current file holds an event yet (a file always gets one
    /// before rotation, however small `-C` is).
    file_has_events: bool,
    /// Files of this capture still on disk, oldest first.
    files: VecDeque<PathBuf>,
    /// Number of the next rotated file.
    next_index: u64,
    /// Events and bytes written so far (headers included in bytes).
    pub events: u64,
    pub bytes: u64,
    /// Events in `pending`, counted once written.
    pending_events: u64,
}

/// Flush pending blocks once they reach this size.
const PENDING_LIMIT: usize = 1 << 20;

impl Recorder {
    /// Opens the first file and writes its header.
    pub fn create(options: RecordOptions, clock: Clock) -> Result<Self, OutputError> {
        let output = if options.path == Path::new("-") {
            Output::Stdout(io::stdout())
        } else {
            Output::File(open(&options.path, options.force)?)
        };
        let encoder = Encoder::new(clock, options.capture_bytes, options.framing, options.port);
        let mut recorder = Self {
            files: VecDeque::from([options.path.clone()]),
            next_index: 1,
            options,
            encoder,
            output,
            pending: Vec::with_capacity(PENDING_LIMIT),
            file_bytes: 0,
            file_has_events: false,
            events: 0,
            bytes: 0,
            pending_events: 0,
        };
        recorder.start_file();
        // The header reaches the disk now: even a capture that records
        // nothing leaves a valid, empty recording.
        recorder.flush().map_err(|err| OutputError::Create {
            path: recorder.options.path.clone(),
            err,
        })?;
        Ok(recorder)
    }

    /// The file being written.
    pub fn current(&self) -> &Path {
        self.files.back().map_or(Path::new("-"), PathBuf::as_path)
    }

    fn start_file(&mut self) {
        let before = self.pending.len();
        self.encoder.header(&mut self.pending);
        self.file_bytes = (self.pending.len() - before) as u64;
        self.file_has_events = false;
    }

    /// Records one event (written on the next [`flush`](Self::flush) or
    /// when enough is pending).
    pub fn record(&mut self, event: &Event) -> anyhow::Result<()> {
        // Encoded in place; moved aside only when it opens the next file.
        let start = self.pending.len();
        self.encoder.event(&mut self.pending, event);
        let size = (self.pending.len() - start) as u64;
        if let Some(limit) = self.options.rotate_bytes
            && self.file_has_events
            && self.file_bytes + size > limit
        {
            let blocks = self.pending.split_off(start);
            self.rotate()?;
            self.pending.extend_from_slice(&blocks);
        }
        self.file_bytes += size;
        self.file_has_events = true;
        self.pending_events += 1;
        if self.pending.len() >= PENDING_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending blocks, whole, in one write.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.output.write_all(&self.pending);
        if result.is_ok() {
            self.events += self.pending_events;
            self.bytes += self.pending.len() as u64;
        }
        self.pending_events = 0;
        self.pending.clear();
        result
    }

    /// Closes the current file and opens the next: FILE, FILE1, FILE2, ...;
    /// with `-W COUNT`, the oldest of this capture's files is removed once
    /// there are more than COUNT.
    fn rotate(&mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.flush()
            .with_context(|| format!("cannot write {}", self.current().display()))?;
        let next = rotated_name(&self.options.path, self.next_index);
        self.next_index += 1;
        self.output = Output::File(open(&next, self.options.force)?);
        self.files.push_back(next);
        if let Some(max) = self.options.max_files {
            while self.files.len() > max as usize {
                if let Some(oldest) = self.files.pop_front() {
                    std::fs::remove_file(&oldest)
                        .with_context(|| format!("cannot remove {}", oldest.display()))?;
                }
            }
        }
        self.start_file();
        Ok(())
    }
}

/// The name of rotated file number `index` (1, 2, ...): `FILE1`, `FILE2`.
pub fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(index.to_string());
    PathBuf::from(name)
}

/// Creates a recording file, readable by its owner only: payloads can hold
/// secrets. An existing file is kept unless `force`.
fn open(path: &Path, force: bool) -> Result<File, OutputError> {
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    options.open(path).map_err(|err| {
        if err.kind() == io::ErrorKind::AlreadyExists {
            OutputError::Exists(path.to_owned())
        } else {
            OutputError::Create {
                path: path.to_owned(),
                err,
            }
        }
    })
}

/// What a recording says about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Payload capture was on, with this many bytes per call.
    pub capture_bytes: u32,
}

/// One item read back from a recording.
#[derive(Debug)]
pub enum Item {
    /// A new section began (each file of a rotated set has one).
    Section(Section),
    Event(Box<Event>),
}

/// Why a recording cannot be read (further).
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct ReadError {
    /// Byte offset of the damaged block.
    pub offset: u64,
    pub what: String,
    /// The file ends inside its last block: a capture cut short. Everything
    /// before it is complete.
    pub torn: bool,
}

impl From<ParseError> for ReadError {
    fn from(err: ParseError) -> Self {
        Self {
            what: format!("at offset {}: {}", err.offset, err.what),
            offset: err.offset,
            torn: err.torn,
        }
    }
}

/// Reads events back from a recording, in order, a block at a time.
pub struct Reader<R> {
    blocks: BlockReader<R>,
    /// Link type of each interface of the current section.
    interfaces: Vec<u16>,
    failed: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(input: R) -> Self {
        Self {
            blocks: BlockReader::new(input),
            interfaces: Vec::new(),
            failed: false,
        }
    }

    fn error(&self, offset: u64, what: impl std::fmt::Display) -> ReadError {
        ReadError {
            offset,
            what: format!("at offset {offset}: {what}"),
            torn: false,
        }
    }

    fn item(&mut self, offset: u64, block: Block) -> Result<Option<Item>, ReadError> {
        match block {
            Block::Section { options } => {
                self.interfaces.clear();
                let facts = options
                    .iter()
                    .filter(|(code, _)| *code == pcapng::OPT_COMMENT)
                    .find_map(|(_, text)| serde_json::from_slice::<SectionFacts>(text).ok());
                let Some(facts) = facts else {
                    return Err(self.error(
                        offset,
                        "a pcapng file, but not a sockspy recording (no sockspy section facts)",
                    ));
                };
                if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&facts.sockspy) {
                    return Err(self.error(
                        offset,
                        format!("recording format {} is not supported", facts.sockspy),
                    ));
                }
                Ok(Some(Item::Section(Section {
                    capture_bytes: facts.capture_bytes,
                })))
            }
            Block::Interface { link_type, .. } => {
                self.interfaces.push(link_type);
                Ok(None)
            }
            Block::Packet(packet) => {
                let link = self.interfaces.get(packet.interface as usize).copied();
                let data = Bytes::from(packet.data);
                let data = match link {
                    Some(LINKTYPE_USER0) => data,
                    Some(LINKTYPE_RAW) => unframe(&data).ok_or_else(|| {
                        self.error(offset, "a framed packet without IP and TCP or UDP headers")
                    })?,
                    _ => {
                        return Err(self.error(
                            offset,
                            format!("packet on interface {} of no known kind", packet.interface),
                        ));
                    }
                };
                let comment = packet
                    .comment
                    .ok_or_else(|| self.error(offset, "packet without sockspy facts"))?;
                let facts = Facts::parse(&comment)
                    .map_err(|err| self.error(offset, format!("bad event facts: {err}")))?;
                let event = facts
                    .into_event(packet.ts_ns, data)
                    .map_err(|err| self.error(offset, err))?;
                Ok(Some(Item::Event(Box::new(event))))
            }
            Block::Other(_) => Ok(None),
        }
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Item, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            let offset = self.blocks.offset();
            let block = match self.blocks.next()? {
                Ok(block) => block,
                Err(err) => return Some(Err(err.into())),
            };
            match self.item(offset, block) {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => {}
                Err(err) => {
                    // Nothing after damage is trusted.
                    self.failed = true;
                    return Some(Err(err));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::table::resolve::tests::make_pending;

    fn event(kind: EventKind, data: &[u8], ret: i64) -> Event {
        let mut thread = [0u8; 16];
        thread[..8].copy_from_slice(b"writer#0");
        Event {
            kind,
            ts_ns: 1_700_000_000_000_000_123,
            pid: 10,
            tid: 11,
            uid: 1000,
            comm: "collectd".into(),
            thread,
            family: 1,
            sock_type: 1,
            // Not what a Unix socket has, but every field must round-trip.
            protocol: 6,
            state: 1,
            local: Some("[::ffff:127.0.0.1]:8080".parse().unwrap()),
            remote: Some("10.0.0.1:53".parse().unwrap()),
            call: Call::Sendto,
            fd: Some(9),
            listen_fd: None,
            sock: Some(100),
            path: None,
            ret,
            flags: sockspy_common::FLAG_CREDENTIALS,
            data: Bytes::copy_from_slice(data),
            passed_fds: 2,
            passed: vec![
                Passed {
                    fd: 5,
                    kind: "pipe",
                    ino: 37078,
                    path: None,
                },
                Passed {
                    fd: 3,
                    kind: "socket",
                    ino: 37076,
                    path: Some(Rc::new(UnixName::Abstract("abs@x".into()))),
                },
            ],
            context: Context {
                cgroup: Some(Rc::new(Cgroup::new(
                    0,
                    "/libpod_parent/libpod-3f2a9c0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3",
                ))),
                netns: Some(4026532176),
                nspid: Some(7),
            },
            peer: Some(Peer {
                sock: Some(101),
                pid: Some(20),
                comm: Some("rrdcached".into()),
                fd: Some(12),
                path: Some(Rc::new(UnixName::Path("/run/rrdcached.sock".into()))),
                addr: Some("[::1]:443".parse().unwrap()),
                context: Context {
                    cgroup: Some(Rc::new(Cgroup::new(0, "/system.slice/rrdcached.service"))),
                    netns: Some(4026531840),
                    nspid: None,
                },
                ..Peer::default()
            }),
            unresolved: false,
            released: false,
        }
    }

    fn encoder(framing: Framing) -> Encoder {
        Encoder::new(Clock::epoch(), 256, framing, Some(80))
    }

    fn encode(framing: Framing, events: &[Event]) -> Vec<u8> {
        let mut encoder = encoder(framing);
        let mut out = Vec::new();
        encoder.header(&mut out);
        for event in events {
            encoder.event(&mut out, event);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Vec<Event> {
        Reader::new(bytes)
            .filter_map(|item| match item.unwrap() {
                Item::Event(event) => Some(*event),
                Item::Section(section) => {
                    assert_eq!(section.capture_bytes, 256);
                    None
                }
            })
            .collect()
    }

    #[test]
    fn events_round_trip_exactly() {
        let mut bare = event(EventKind::Connect, b"", -111);
        bare.peer = None;
        bare.passed = Vec::new();
        bare.passed_fds = 0;
        bare.fd = None;
        // Characters JSON escapes: the comment's text is no longer borrowable.
        bare.path = Some(Rc::new(UnixName::Path("/tmp/\"s\"\\\n".into())));
        // The close of a socket's last descriptor says so (conversations
        // end on it, read back as live).
        let mut last_close = event(EventKind::Close, b"", 0);
        last_close.released = true;
        let events = [
            event(EventKind::Send, b"update x 1:2\n", 13),
            event(EventKind::Recv, &[0, 1, 2, 255], 4000),
            bare,
            last_close,
        ];
        for framing in [Framing::Raw, Framing::Tcp] {
            assert_eq!(decode(&encode(framing, &events)), events, "{framing:?}");
        }
    }

    /// A socket's facts are written once and copied while they stay the
    /// same: every event must still read back as it was, whatever changed.
    #[test]
    fn kept_socket_facts_round_trip_exactly() {
        let plain = || {
            let mut event = event(EventKind::Send, b"x", 1);
            event.passed = Vec::new();
            event.passed_fds = 0;
            event
        };
        let changes: [fn(&mut Event); 11] = [
            |e| e.kind = EventKind::Recv,
            |e| e.ret = -11,
            |e| e.tid = 12,
            |e| e.flags = sockspy_common::FLAG_PEEK,
            |e| e.pid = 11,
            |e| e.comm = "collectd-2".into(),
            |e| e.fd = Some(10),
            |e| e.path = Some(Rc::new(UnixName::Path("/run/a.sock".into()))),
            |e| e.remote = None,
            |e| e.peer.as_mut().unwrap().pid = Some(21),
            |e| make_pending(e.peer.as_mut().unwrap(), &[20, 22]),
        ];
        let mut events = vec![plain(), plain()];
        for change in changes {
            let mut event = plain();
            change(&mut event);
            events.extend([event, plain()]);
        }
        events.push(event(EventKind::Send, b"fds", 3));
        events.push(plain());
        assert_eq!(decode(&encode(Framing::Raw, &events)), events);
    }

    /// Earlier sockspy wrote a comment's keys in another order (the call's
    /// and the socket's mixed); the same version 2 facts read the same.
    #[test]
    fn facts_read_in_any_key_order() {
        let earlier = r#"{"event":"recv","pid":8101,"tid":8101,"uid":0,"comm":"rrdcached","thread":"rrdcached","family":1,"type":1,"call":1,"fd":12,"sock":2218742,"path":"/run/rrdcached.sock","ret":97,"peer":{"sock":2218741,"pid":8123,"comm":"collectd","fd":9}}"#;
        let now = r#"{"event":"recv","tid":8101,"uid":0,"thread":"rrdcached","call":1,"ret":97,"pid":8101,"comm":"rrdcached","family":1,"type":1,"fd":12,"sock":2218742,"path":"/run/rrdcached.sock","peer":{"sock":2218741,"pid":8123,"comm":"collectd","fd":9}}"#;
        let read = |text| {
            Facts::parse(text)
                .unwrap()
                .into_event(1, Bytes::new())
                .unwrap()
        };
        let event = read(earlier);
        assert_eq!(event, read(now));
        assert_eq!((event.pid, event.ret), (8101, 97));
        assert_eq!(event.peer.and_then(|peer| peer.pid), Some(8123));
    }

    #[test]
    fn a_recording_prints_as_the_live_view_did() {
        use crate::output::print::{Format, PayloadStyle, Printer};
        let mut live = event(EventKind::Send, b"update x 1:2\n", 13);
        live.ts_ns = 5_000_123; // monotonic, as the kernel stamps it
        let clock = Clock::now();
        let mut encoder = Encoder {
            clock,
            ..encoder(Framing::Raw)
        };
        let mut bytes = Vec::new();
        encoder.header(&mut bytes);
        encoder.event(&mut bytes, &live);
        let read = decode(&bytes);
        for format in [Format::Text, Format::Json] {
            for hex in [false, true] {
                let style = PayloadStyle {
                    captured: true,
                    hex,
                };
                let print = |clock, event: &Event| {
                    let mut out = Vec::new();
                    Printer::new(format, clock, style)
                        .call(&mut out, event, &crate::conversation::CallDecoding::NONE)
                        .unwrap();
                    String::from_utf8(out).unwrap()
                };
                assert_eq!(print(clock, &live), print(Clock::epoch(), &read[0]));
            }
        }
    }

    #[test]
    fn tcp_framing_keeps_one_stream_per_connection() {
        let mut reply = event(EventKind::Send, b"pong", 4);
        reply.sock = Some(101);
        reply.path = Some(Rc::new(UnixName::Path("/run/rrdcached.sock".into())));
        reply.peer = Some(Peer {
            sock: Some(100),
            ..Peer::default()
        });
        // A client may send before anything knows its peer's name (before
        // the accept), with a lower or higher inode than the server's end;
        // later sends may lack the peer altogether.
        let mut connect = event(EventKind::Connect, b"", 0);
        connect.sock = Some(102);
        connect.peer = Some(Peer {
            path: Some(Rc::new(UnixName::Path("/run/rrdcached.sock".into()))),
            ..Peer::default()
        });
        let mut first = event(EventKind::Send, b"ping", 4);
        first.sock = Some(102);
        first.peer = Some(Peer {
            sock: Some(101),
            ..Peer::default()
        });
        reply.peer = Some(Peer {
            sock: Some(102),
            ..Peer::default()
        });
        let mut again = event(EventKind::Send, b"again", 5);
        again.sock = Some(102);
        again.peer = None;
        let events = [connect, first, reply, again];
        let bytes = encode(Framing::Tcp, &events);
        let packets: Vec<Vec<u8>> = BlockReader::new(&bytes[..])
            .filter_map(|block| match block.unwrap() {
                Block::Packet(packet) if packet.interface == 1 => Some(packet.data),
                _ => None,
            })
            .collect();
        let seq = |p: &[u8]| u32::from_be_bytes(p[24..28].try_into().unwrap());
        let ack = |p: &[u8]| u32::from_be_bytes(p[28..32].try_into().unwrap());
        let ports = |p: &[u8]| p[12..24].to_vec();
        // The named end is the server, on --pcap-port.
        assert_eq!(&packets[0][22..24], &80u16.to_be_bytes());
        assert_eq!(&packets[1][20..22], &80u16.to_be_bytes());
        assert_eq!(ports(&packets[0]), ports(&packets[2]));
        assert_eq!(seq(&packets[2]), seq(&packets[0]) + 4);
        assert_eq!(ack(&packets[2]), seq(&packets[1]) + 4);
        assert_eq!(ack(&packets[1]), seq(&packets[0]) + 4);
        // Checksums verify: summing a header with its checksum gives 0.
        assert_eq!(checksum(0, &packets[0][..20]), 0);
        assert_eq!(&packets[0][TCP_HEADERS..], b"ping");
    }

    /// A TCP or UDP event of this machine's end `local`, talking to `remote`.
    fn ip_event(kind: EventKind, protocol: u16, local: &str, remote: &str, data: &[u8]) -> Event {
        let local: SocketAddr = local.parse().unwrap();
        let mut event = event(kind, data, data.len() as i64);
        event.family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        event.sock_type = if protocol == IPPROTO_TCP { 1 } else { 2 };
        event.protocol = protocol;
        event.flags = 0;
        event.local = Some(local);
        event.remote = Some(remote.parse().unwrap());
        event.passed = Vec::new();
        event.passed_fds = 0;
        event.peer = None;
        event
    }

    /// The packets of the framed interface, in order, with the index of
    /// the event each one carries.
    fn framed(bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
        BlockReader::new(bytes)
            .filter_map(|block| match block.unwrap() {
                Block::Packet(packet) => Some(packet),
                _ => None,
            })
            .enumerate()
            .filter(|(_, packet)| packet.interface == 1)
            .map(|(i, packet)| (i, packet.data))
            .collect()
    }

    /// The IP header length, and the TCP or UDP checksum check: the sum
    /// over pseudo-header, header and payload with its checksum is 0.
    fn check_packet(packet: &[u8]) -> usize {
        let (ip, protocol, length, pseudo) = if packet[0] >> 4 == 4 {
            assert_eq!(checksum(0, &packet[..20]), 0, "IPv4 header checksum");
            let total = u16::from_be_bytes([packet[2], packet[3]]);
            assert_eq!(usize::from(total), packet.len(), "whole payload captured");
            let mut pseudo = packet[12..20].to_vec();
            pseudo.extend_from_slice(&[0, packet[9]]);
            pseudo.extend_from_slice(&(total - 20).to_be_bytes());
            (20, packet[9], total - 20, pseudo)
        } else {
            assert_eq!(packet[0] >> 4, 6);
            let length = u16::from_be_bytes([packet[4], packet[5]]);
            assert_eq!(
                usize::from(length) + 40,
                packet.len(),
                "whole payload captured"
            );
            let mut pseudo = packet[8..40].to_vec();
            pseudo.extend_from_slice(&u32::from(length).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, packet[6]]);
            (40, packet[6], length, pseudo)
        };
        if u16::from(protocol) == IPPROTO_UDP {
            assert_eq!(&packet[ip + 4..ip + 6], &length.to_be_bytes(), "UDP length");
        }
        assert_eq!(
            checksum(sum_words(0, &pseudo), &packet[ip..]),
            0,
            "checksum"
        );
        ip
    }

    #[test]
    fn ip_payloads_round_trip_exactly() {
        let mut cut = ip_event(
            EventKind::Recv,
            IPPROTO_TCP,
            "10.0.0.2:40000",
            "10.0.0.1:80",
            b"HTTP",
        );
        cut.ret = 9000; // a snippet of a longer call
        let mut peek = ip_event(EventKind::Recv, IPPROTO_UDP, "[::1]:53", "[::1]:5353", b"q");
        peek.flags = FLAG_PEEK;
        let events = [
            ip_event(
                EventKind::Send,
                IPPROTO_TCP,
                "127.0.0.1:40000",
                "127.0.0.1:80",
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            ip_event(
                EventKind::Send,
                IPPROTO_TCP,
                "[::1]:80",
                "[::1]:40000",
                b"HTTP/1.1 200 OK\r\n\r\n",
            ),
            ip_event(
                EventKind::Send,
                IPPROTO_TCP,
                "[::ffff:127.0.0.1]:80",
                "[::ffff:127.0.0.1]:40001",
                b"mapped",
            ),
            ip_event(
                EventKind::Send,
                IPPROTO_UDP,
                "0.0.0.0:5353",
                "127.0.0.1:53",
                b"odd",
            ),
            ip_event(EventKind::Recv, IPPROTO_UDP, "[::1]:5353", "[::1]:53", b""),
            cut,
            peek,
            ip_event(
                EventKind::Connect,
                IPPROTO_TCP,
                "127.0.0.1:40000",
                "127.0.0.1:80",
                b"",
            ),
        ];
        for framing in [Framing::Raw, Framing::Tcp] {
            let bytes = encode(framing, &events);
            let on_ip: Vec<usize> = framed(&bytes).into_iter().map(|(i, _)| i).collect();
            assert_eq!(on_ip, [0, 1, 2, 3, 4, 5], "{framing:?}");
            assert_eq!(decode(&bytes), events, "{framing:?}");
        }
    }

    #[test]
    fn ip_packets_carry_the_real_addresses() {
        let events = [
            ip_event(
                EventKind::Send,
                IPPROTO_TCP,
                "127.0.0.1:40000",
                "127.0.0.2:80",
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            // The server's recv of that request repeats its bytes.
            ip_event(
                EventKind::Recv,
                IPPROTO_TCP,
                "127.0.0.2:80",
                "127.0.0.1:40000",
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            ip_event(
                EventKind::Send,
                IPPROTO_TCP,
                "[::ffff:127.0.0.2]:80",
                "[::ffff:127.0.0.1]:40000",
                b"HTTP/1.1 200 OK\r\n\r\n",
            ),
            ip_event(
                EventKind::Send,
                IPPROTO_TCP,
                "127.0.0.1:40000",
                "127.0.0.2:80",
                b"odd",
            ),
            ip_event(
                EventKind::Send,
                IPPROTO_UDP,
                "[fe80::1]:5353",
                "[2001:db8::53]:53",
                b"query",
            ),
            // A remote peer: its data shows only in our recvs.
            ip_event(
                EventKind::Recv,
                IPPROTO_UDP,
                "[fe80::1]:5353",
                "[2001:db8::53]:53",
                b"answer!",
            ),
            // An unconnected socket's datagram, seen by both ends.
            ip_event(
                EventKind::Send,
                IPPROTO_UDP,
                "0.0.0.0:5000",
                "127.0.0.1:53",
                b"dns",
            ),
            ip_event(
                EventKind::Recv,
                IPPROTO_UDP,
                "127.0.0.1:53",
                "127.0.0.1:5000",
                b"dns",
            ),
        ];
        let packets = framed(&encode(Framing::Raw, &events));
        let order: Vec<usize> = packets.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [0, 2, 3, 4, 5, 6]);
        let p: Vec<&[u8]> = packets.iter().map(|(_, p)| &p[..]).collect();
        for packet in &p {
            check_packet(packet);
        }
        let port = |p: &[u8], at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
        let seq = |p: &[u8]| u32::from_be_bytes(p[24..28].try_into().unwrap());
        let ack = |p: &[u8]| u32::from_be_bytes(p[28..32].try_into().unwrap());
        // IPv4 TCP, the mapped reply as IPv4 too.
        assert_eq!(
            (p[0][0], p[0][9], &p[0][12..20]),
            (0x45, 6, &[127, 0, 0, 1, 127, 0, 0, 2][..])
        );
        assert_eq!((port(p[0], 20), port(p[0], 22)), (40000, 80));
        assert_eq!(
            (p[1][0], &p[1][12..20]),
            (0x45, &[127, 0, 0, 2, 127, 0, 0, 1][..])
        );
        assert_eq!((port(p[1], 20), port(p[1], 22)), (80, 40000));
        assert_eq!(p[0][33], 0x18, "PSH ACK");
        assert_eq!(&p[0][40..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(ack(p[1]), seq(p[0]) + 18);
        assert_eq!(seq(p[2]), seq(p[0]) + 18);
        assert_eq!(ack(p[2]), seq(p[1]) + 19);
        // IPv6 UDP, both ways.
        assert_eq!((p[3][0] >> 4, p[3][6]), (6, 17));
        assert_eq!(
            &p[3][8..24],
            &"fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!((port(p[3], 40), port(p[3], 42)), (5353, 53));
        assert_eq!(&p[3][48..], b"query");
        assert_eq!(
            &p[4][8..24],
            &"2001:db8::53"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!((port(p[4], 40), port(p[4], 42)), (53, 5353));
        // The wildcard is written as it is.
        assert_eq!(&p[5][12..20], &[0, 0, 0, 0, 127, 0, 0, 1]);
        assert_eq!(&p[5][28..], b"dns");
    }

    #[test]
    fn a_cut_snippet_keeps_the_real_lengths() {
        let mut cut = ip_event(
            EventKind::Send,
            IPPROTO_UDP,
            "127.0.0.1:5000",
            "127.0.0.1:53",
            b"abc",
        );
        cut.ret = 1000;
        let bytes = encode(Framing::Raw, &[cut]);
        let packet = BlockReader::new(&bytes[..])
            .find_map(|block| match block.unwrap() {
                Block::Packet(packet) => Some(packet),
                _ => None,
            })
            .unwrap();
        assert_eq!(packet.data.len(), 28 + 3);
        assert_eq!(packet.orig_len, 28 + 1000);
        assert_eq!(&packet.data[2..4], &1028u16.to_be_bytes());
        assert_eq!(&packet.data[24..26], &1008u16.to_be_bytes());
    }

    #[test]
    fn version_1_recordings_are_read_and_newer_ones_refused() {
        let events = [event(EventKind::Send, b"ping", 4)];
        let bytes = encode(Framing::Tcp, &events);
        let with_version = |version: &str| {
            let at = bytes
                .windows(13)
                .position(|w| w == b"{\"sockspy\":2,")
                .expect("section facts");
            let mut bytes = bytes.clone();
            bytes[at + 11..at + 12].copy_from_slice(version.as_bytes());
            bytes
        };
        assert_eq!(decode(&with_version("1")), events);
        let err = Reader::new(&with_version("3")[..])
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.what.contains("format 3 is not supported"), "{err}");
    }

    #[test]
    fn a_torn_tail_keeps_every_whole_event() {
        let events: Vec<Event> = (0..5)
            .map(|i| event(EventKind::Send, format!("message {i}").as_bytes(), 9))
            .collect();
        let bytes = encode(Framing::Raw, &events);
        for cut in 0..bytes.len() {
            let mut read = Vec::new();
            let mut failure = None;
            for item in Reader::new(&bytes[..cut]) {
                match item {
                    Ok(Item::Event(event)) => read.push(*event),
                    Ok(Item::Section(_)) => {}
                    Err(err) => failure = Some(err),
                }
            }
            assert_eq!(read[..], events[..read.len()], "cut at {cut}");
            if let Some(err) = failure {
                assert!(err.offset <= cut as u64, "{err}");
            }
        }
    }

    #[test]
    fn foreign_and_damaged_files_are_errors() {
        let mut foreign = Vec::new();
        pcapng::section_header(&mut foreign, &[]);
        let err = Reader::new(&foreign[..]).next().unwrap().unwrap_err();
        assert!(err.what.contains("not a sockspy recording"), "{err}");
        let mut bytes = encode(Framing::Raw, &[event(EventKind::Send, b"x", 1)]);
        let at = bytes.len() - 30;
        bytes[at..at + 4].copy_from_slice(b"}}}}");
        for item in Reader::new(&bytes[..]) {
            let _ = item;
        }
    }

    #[test]
    fn files_are_private_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("sockspy-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cap.pcapng");
        let options = RecordOptions {
            path: path.clone(),
            force: false,
            rotate_bytes: Some(1000),
            max_files: Some(2),
            framing: Framing::Raw,
            port: None,
            capture_bytes: 256,
        };
        let mut recorder = Recorder::create(options.clone(), Clock::epoch()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            Recorder::create(options.clone(), Clock::epoch()),
            Err(OutputError::Exists(_))
        ));
        for i in 0..20 {
            let payload = vec![b'a' + i as u8; 200];
            recorder
                .record(&event(EventKind::Send, &payload, 200))
                .unwrap();
        }
        recorder.flush().unwrap();
        assert_eq!(recorder.events, 20);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        let mut total = 0;
        for name in &names {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert!(bytes.len() <= 1000 + 600, "{name}: {}", bytes.len());
            total += decode(&bytes).len();
        }
        assert!((2..20).contains(&total), "{total}");
        let forced = RecordOptions {
            force: true,
            ..options
        };
        Recorder::create(forced, Clock::epoch()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
