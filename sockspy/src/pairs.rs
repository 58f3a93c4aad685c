//! `sockspy pairs`: every connected Unix socket pair right now, with the
//! processes holding both ends; the answer `ss -xp`, `lsof +E` and gdb on
//! /proc/kcore give piecemeal.
//!
//! No eBPF: the kernel's socket list comes from sock_diag ([`crate::diag`]),
//! the holders from one pass over /proc/*/fd. It runs as any user; what it
//! could not see (other users' descriptors) it says.

use std::{
    collections::HashMap,
    io::{self, Write},
    process::ExitCode,
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    diag::{self, STATE_CONNECTED, STATE_LISTEN, UnixDiag},
    events::type_name,
    procfs::{Procfs, Scan},
};

/// A process holding a socket through a descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub fd: i32,
}

/// What one line shows.
#[derive(Debug, PartialEq, Eq)]
enum Entry<'a> {
    /// Two sockets connected to each other (or a datagram socket connected
    /// to a receiver that is not connected back: `mutual` false).
    Pair {
        a: &'a UnixDiag,
        b: Option<&'a UnixDiag>,
        peer_ino: u64,
        mutual: bool,
    },
    /// A listening socket.
    Listener(&'a UnixDiag),
    /// A named socket that is neither connected nor listening (a datagram server).
    Bound(&'a UnixDiag),
}

/// The sockets and who holds them.
pub struct Snapshot {
    sockets: Vec<UnixDiag>,
    holders: HashMap<u64, Vec<Holder>>,
    /// Processes whose descriptors could not be read.
    unreadable: usize,
}

impl Snapshot {
    pub fn take() -> Result<Self> {
        let sockets = diag::unix_sockets().context("cannot list Unix sockets (sock_diag)")?;
        let scan = Procfs::default().scan().context("cannot read /proc")?;
        Ok(Self::new(sockets, scan))
    }

    fn new(mut sockets: Vec<UnixDiag>, scan: Scan) -> Self {
        sockets.sort_by_key(|s| s.ino);
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
        Self {
            sockets,
            holders,
            unreadable: scan.unreadable,
        }
    }

    /// The lines to show, in inode order; each connection once.
    fn entries(&self) -> Vec<Entry<'_>> {
        let by_ino: HashMap<u64, &UnixDiag> = self.sockets.iter().map(|s| (s.ino, s)).collect();
        let mut entries = Vec::new();
        for sock in &self.sockets {
            if sock.state == STATE_LISTEN {
                entries.push(Entry::Listener(sock));
            } else if let Some(peer_ino) = sock.peer {
                let peer = by_ino.get(&peer_ino).copied();
                let mutual = peer.is_some_and(|p| p.peer == Some(sock.ino));
                // A mutual pair is shown from its lower inode only.
                if !mutual || sock.ino < peer_ino {
                    entries.push(Entry::Pair {
                        a: sock,
                        b: peer,
                        peer_ino,
                        mutual,
                    });
                }
            } else if sock.name.is_some() && sock.state != STATE_CONNECTED {
                entries.push(Entry::Bound(sock));
            }
        }
        entries
    }

    fn holders(&self, ino: u64) -> &[Holder] {
        self.holders.get(&ino).map_or(&[], Vec::as_slice)
    }
}

/// Runs `sockspy pairs`.
pub fn run(json: bool) -> Result<ExitCode> {
    let snapshot = Snapshot::take()?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let entries = snapshot.entries();
    let written = if json {
        entries
            .iter()
            .try_for_each(|entry| json_line(&mut out, &snapshot, entry))
    } else {
        entries
            .iter()
            .try_for_each(|entry| text_line(&mut out, &snapshot, entry))
    }
    .and_then(|()| out.flush());
    match written {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other.context("writing to stdout")?,
    }
    let connections = entries
        .iter()
        .filter(|e| matches!(e, Entry::Pair { .. }))
        .count();
    let listeners = entries
        .iter()
        .filter(|e| matches!(e, Entry::Listener(_)))
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

/// `comm[pid] fd N, comm[pid] fd M` or `?` when nobody visible holds it.
fn holders_text(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "?".into();
    }
    holders
        .iter()
        .map(|h| format!("{}[{}] fd {}", h.comm, h.pid, h.fd))
        .collect::<Vec<_>>()
        .join(", ")
}

fn side_text(snapshot: &Snapshot, ino: u64, sock: Option<&UnixDiag>) -> String {
    let mut text = format!("{} sock {ino}", holders_text(snapshot.holders(ino)));
    if let Some(name) = sock.and_then(|s| s.name.as_ref()) {
        text.push(' ');
        text.push_str(&name.to_string());
    }
    text
}

fn text_line(out: &mut impl Write, snapshot: &Snapshot, entry: &Entry) -> io::Result<()> {
    match entry {
        Entry::Pair {
            a,
            b,
            peer_ino,
            mutual,
        } => writeln!(
            out,
            "{:<9} {}  {}  {}  queued {}/{}",
            type_name(a.sock_type),
            side_text(snapshot, a.ino, Some(a)),
            if *mutual { "<->" } else { "->" },
            side_text(snapshot, *peer_ino, *b),
            a.rqueue,
            a.wqueue,
        ),
        Entry::Listener(sock) => writeln!(
            out,
            "{:<9} LISTEN {}  {} pending",
            type_name(sock.sock_type),
            side_text(snapshot, sock.ino, Some(sock)),
            sock.pending.len(),
        ),
        Entry::Bound(sock) => writeln!(
            out,
            "{:<9} BOUND  {}  queued {}/{}",
            type_name(sock.sock_type),
            side_text(snapshot, sock.ino, Some(sock)),
            sock.rqueue,
            sock.wqueue,
        ),
    }
}

/// One end in JSON: the names `trace --json` uses, plus every holder.
#[derive(Serialize)]
struct JsonSide<'a> {
    sock: u64,
    path: Option<String>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    fd: Option<i32>,
    holders: &'a [Holder],
}

impl<'a> JsonSide<'a> {
    fn new(snapshot: &'a Snapshot, ino: u64, sock: Option<&UnixDiag>) -> Self {
        let holders = snapshot.holders(ino);
        let first = holders.first();
        Self {
            sock: ino,
            path: sock.and_then(|s| s.name.as_ref()).map(|n| n.to_string()),
            pid: first.map(|h| h.pid),
            comm: first.map(|h| h.comm.as_str()),
            fd: first.map(|h| h.fd),
            holders,
        }
    }
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    family: &'static str,
    #[serde(rename = "type")]
    sock_type: &'static str,
    state: &'static str,
    #[serde(flatten)]
    side: JsonSide<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<usize>,
    rqueue: u32,
    wqueue: u32,
    peer: Option<JsonSide<'a>>,
}

fn json_line(out: &mut impl Write, snapshot: &Snapshot, entry: &Entry) -> io::Result<()> {
    let (sock, state, peer) = match entry {
        Entry::Pair {
            a,
            b,
            peer_ino,
            mutual,
        } => (
            *a,
            if *mutual { "connected" } else { "connected-to" },
            Some(JsonSide::new(snapshot, *peer_ino, *b)),
        ),
        Entry::Listener(sock) => (*sock, "listen", None),
        Entry::Bound(sock) => (*sock, "bound", None),
    };
    let line = JsonEntry {
        family: "unix",
        sock_type: type_name(sock.sock_type),
        state,
        side: JsonSide::new(snapshot, sock.ino, Some(sock)),
        pending: (sock.state == STATE_LISTEN).then_some(sock.pending.len()),
        rqueue: sock.rqueue,
        wqueue: sock.wqueue,
        peer,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{events::UnixName, procfs::ProcessSockets};

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

    fn snapshot() -> Snapshot {
        let sockets = vec![
            sock(12, STATE_CONNECTED, Some(11), Some("/run/s")),
            sock(10, STATE_LISTEN, None, Some("/run/s")),
            sock(11, STATE_CONNECTED, Some(12), None),
            sock(20, 7, None, Some("/dev/log")),
            sock(21, 7, Some(20), None),
            sock(30, 7, None, None),
        ];
        let scan = Scan {
            processes: vec![
                ProcessSockets {
                    pid: 100,
                    comm: "server".into(),
                    fds: vec![(3, 10), (4, 12)],
                },
                ProcessSockets {
                    pid: 200,
                    comm: "client".into(),
                    fds: vec![(5, 11)],
                },
                ProcessSockets {
                    pid: 201,
                    comm: "client".into(),
                    fds: vec![(5, 11)],
                },
            ],
            unreadable: 1,
        };
        Snapshot::new(sockets, scan)
    }

    fn text(snapshot: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for entry in snapshot.entries() {
            text_line(&mut out, snapshot, &entry).unwrap();
        }
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn each_connection_once_with_every_holder() {
        let lines = text(&snapshot());
        assert_eq!(
            lines,
            [
                "stream    LISTEN server[100] fd 3 sock 10 /run/s  0 pending",
                "stream    client[200] fd 5, client[201] fd 5 sock 11  <->  server[100] fd 4 sock 12 /run/s  queued 0/0",
                "stream    BOUND  ? sock 20 /dev/log  queued 0/0",
                "stream    ? sock 21  ->  ? sock 20 /dev/log  queued 0/0",
            ]
        );
    }

    #[test]
    fn json_uses_the_trace_names() {
        let snapshot = snapshot();
        let entries = snapshot.entries();
        let mut out = Vec::new();
        json_line(&mut out, &snapshot, &entries[1]).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["state"], "connected");
        assert_eq!(value["sock"], 11);
        assert_eq!(value["pid"], 200);
        assert_eq!(value["holders"].as_array().unwrap().len(), 2);
        assert_eq!(value["peer"]["pid"], 100);
        assert_eq!(value["peer"]["fd"], 4);
        assert_eq!(value["peer"]["path"], "/run/s");
    }
}
