//! Holding back a record whose peer the table cannot name yet.
//!
//! Takes decoded records in ring order; hands on resolved events in the
//! same order. Between the two, a record may wait for another.
//!
//! The ring holds records in the order programs wrote them, and two CPUs
//! write at once. A client's `send` can read its peer after the server's
//! `accept` has taken the connection in the kernel, and still be written
//! before that `accept`'s record: the send then names a socket that no
//! record has shown anyone holding yet. Such a record waits here until
//! the record that shows its peer's holder arrives (see
//! [`Resolver::awaits`]); that record is resolved first, as it happened
//! first, and the events still leave in ring order. The wait is bounded:
//! once every record written so far is read, [`HOLD_NS`] after the record
//! was written, or [`MAX_HELD`] records behind it, whichever comes first;
//! then /proc is asked and the record goes on with what is known. (A
//! reader that fell behind does not end waits: the record waited for may
//! be among those still unread.) A peer waited for in vain is not waited
//! for again (the last [`GIVEN_UP_KEPT`] are remembered), so a peer whose
//! records the kernel filters out costs one wait, not one per event.

use std::collections::VecDeque;

use sockspy_common::EventKind;

use crate::{
    capture::events::{ProcRecord, SockRecord},
    table::resolve::{Awaited, Event, Resolver},
};

/// How long a record may wait for its peer's record, in nanoseconds after
/// it was written: far longer than a preempted server takes from taking a
/// connection to writing its `accept` record, even on a loaded machine.
pub const HOLD_NS: u64 = 250_000_000;

/// The most records kept behind a waiting one: under a flood the wait ends
/// here rather than memory growing with the rate.
const MAX_HELD: usize = 65_536;

/// Records the drained queue keeps room for.
const SHRINK_ABOVE: usize = 1024;

/// How many peers waited for in vain are remembered.
const GIVEN_UP_KEPT: usize = 256;

/// How long a waiting record may go on waiting.
#[derive(Clone, Copy, Debug)]
pub enum Waits {
    /// While records are still being read: its peer's may be among them,
    /// however late the reader is.
    Read,
    /// With every record written so far read, until [`HOLD_NS`] after it
    /// was written, this being `CLOCK_MONOTONIC` nanoseconds now.
    Until(u64),
    /// Tracing stops: no more.
    End,
}

/// One record in the queue, in ring order.
#[derive(Debug)]
enum Slot {
    Proc(ProcRecord),
    Sock(SockRecord),
    /// Resolved ahead of its turn (it revealed an earlier record's peer).
    Ready(Event),
    /// A process record applied ahead of its turn.
    Applied,
}

/// The queue of records behind a waiting one.
#[derive(Debug, Default)]
pub struct Hold {
    queue: VecDeque<Slot>,
    given_up: VecDeque<Awaited>,
    /// The kernel leaves out other processes' records (`--pid`, `--comm`,
    /// `--uid`): the record a peer waits for may never come.
    filtered: bool,
    /// What the first record waits for, and how much of the queue behind
    /// it was searched for that in vain: a record read since is searched
    /// alone, not the whole queue again (which made a long wait under
    /// load cost the square of the queue's length).
    searched: Option<(Awaited, usize)>,
}

impl Hold {
    /// A queue for a trace whose kernel-side process filters may leave
    /// out the peers' records (`filtered`).
    pub fn new(filtered: bool) -> Self {
        Self {
            filtered,
            ..Self::default()
        }
    }

    /// Takes a socket record: hands it back when it can be resolved now
    /// (nothing waits, and neither does it), else keeps it.
    pub fn admit(&mut self, rec: SockRecord, resolver: &mut Resolver) -> Option<SockRecord> {
        let waits = self.waits(&rec, resolver);
        if self.queue.is_empty() && waits.is_none() {
            return Some(rec);
        }
        if waits.is_some() && self.filtered {
            // Its peer's own records are likely filtered out, and a
            // short-lived peer may be gone from /proc by the time the wait
            // ends: look now, once for all records written before.
            resolver.rescan_since(rec.ev.header.ts_ns);
        }
        self.queue.push_back(Slot::Sock(rec));
        None
    }

    /// Takes a process record: hands it back unless records wait before it.
    pub fn admit_proc(&mut self, rec: ProcRecord) -> Option<ProcRecord> {
        if self.queue.is_empty() {
            return Some(rec);
        }
        self.queue.push_back(Slot::Proc(rec));
        None
    }

    /// Whether records are held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The next event in ring order, if it can be resolved now.
    pub fn next(&mut self, resolver: &mut Resolver, waits: Waits) -> Option<Event> {
        loop {
            let Some(slot) = self.queue.pop_front() else {
                // A long wait under load may have grown the queue: give
                // the memory back once it has drained.
                if self.queue.capacity() > SHRINK_ABOVE {
                    self.queue.shrink_to(SHRINK_ABOVE);
                }
                return None;
            };
            if !matches!(slot, Slot::Sock(_)) {
                // The queue behind the first record is another one now.
                self.searched = None;
            }
            match slot {
                Slot::Ready(event) => return Some(event),
                Slot::Applied => {}
                Slot::Proc(rec) => resolver.apply_proc(&rec),
                Slot::Sock(rec) => {
                    if let Some(awaited) = self.waits(&rec, resolver) {
                        if self.reveal(awaited, resolver) {
                            self.queue.push_front(Slot::Sock(rec));
                            continue;
                        }
                        let written = rec.ev.header.ts_ns;
                        let waiting = self.queue.len() < MAX_HELD
                            && match waits {
                                Waits::Read => true,
                                Waits::Until(now) => now < written + HOLD_NS,
                                Waits::End => false,
                            };
                        if waiting {
                            self.queue.push_front(Slot::Sock(rec));
                            return None;
                        }
                        self.give_up(awaited);
                        resolver.rescan_since(written);
                    }
                    self.searched = None;
                    return Some(resolver.apply(&rec));
                }
            }
        }
    }

    /// What `rec` waits for, unless that was waited for in vain already.
    fn waits(&self, rec: &SockRecord, resolver: &Resolver) -> Option<Awaited> {
        resolver
            .awaits(rec)
            .filter(|awaited| !self.given_up.contains(awaited))
    }

    /// Resolves the record that reveals `awaited`, if it has arrived,
    /// ahead of its turn; with it, the process records before it that
    /// made its process (a fork, an exec), which it builds on.
    fn reveal(&mut self, awaited: Awaited, resolver: &mut Resolver) -> bool {
        let from = match self.searched {
            Some((searched, upto)) if searched == awaited => upto.min(self.queue.len()),
            _ => 0,
        };
        let Some(at) = self
            .queue
            .range(from..)
            .position(|slot| matches!(slot, Slot::Sock(rec) if awaited.revealed_by(rec)))
            .map(|found| from + found)
        else {
            self.searched = Some((awaited, self.queue.len()));
            return false;
        };
        self.searched = None;
        let Slot::Sock(revealer) = std::mem::replace(&mut self.queue[at], Slot::Applied) else {
            unreachable!("position() found a socket record");
        };
        let pid = revealer.ev.header.pid;
        for slot in self.queue.range_mut(..at) {
            if let Slot::Proc(rec) = slot
                && makes(rec, pid)
            {
                resolver.apply_proc(rec);
                *slot = Slot::Applied;
            }
        }
        self.queue[at] = Slot::Ready(resolver.apply(&revealer));
        true
    }

    fn give_up(&mut self, awaited: Awaited) {
        if self.given_up.len() == GIVEN_UP_KEPT {
            self.given_up.pop_front();
        }
        self.given_up.push_back(awaited);
    }
}

/// Whether a process record made process `pid` what it is: forked it, or
/// replaced its program.
fn makes(rec: &ProcRecord, pid: u32) -> bool {
    match rec.kind {
        EventKind::Fork => rec.ev.child_pid == pid,
        EventKind::Exec => rec.ev.header.pid == pid,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use sockspy_common::{AF_UNIX, FLAG_PEER_ACCEPTING, FLAG_PEER_PENDING, ProcEvent, SockEvent};

    use super::*;
    use crate::{
        capture::events::{
            Record, decode,
            tests::{sock_bytes, sockaddr_un, unix_stream},
        },
        table::procfs::Procfs,
    };

    const SERVER: u32 = 100;
    const CLIENT: u32 = 200;
    const LISTENER: u64 = 50;
    const CLIENT_SOCK: u64 = 60;
    const ACCEPTED: u64 = 70;

    /// A Unix stream record of `pid` on `sock` through `fd`, written at `ts_ns`.
    fn unix(
        kind: EventKind,
        pid: u32,
        fd: i32,
        sock: u64,
        ts_ns: u64,
        more: impl FnOnce(&mut SockEvent),
        addr: &[u8],
    ) -> SockRecord {
        let name: &[u8] = if pid == CLIENT { b"client" } else { b"server" };
        unix_stream(
            kind,
            (pid, fd, sock, 0),
            |ev| {
                ev.header.ts_ns = ts_ns;
                ev.header.comm[..6].copy_from_slice(name);
                more(ev);
            },
            addr,
        )
    }

    fn fork(parent: u32, child: u32) -> ProcRecord {
        // SAFETY: ProcEvent is plain integers; all-zero is a valid value.
        let mut ev: ProcEvent = unsafe { std::mem::zeroed() };
        ev.header.pid = parent;
        ev.child_pid = child;
        ProcRecord {
            kind: EventKind::Fork,
            ev,
        }
    }

    /// A table that knows the server listening at /run/app.sock (fd 3)
    /// and the client's socket (fd 4).
    fn table() -> Resolver {
        let mut resolver = Resolver::new(Procfs::at("/nonexistent"));
        let name = sockaddr_un(b"/run/app.sock\0");
        resolver.apply(&unix(
            EventKind::Listen,
            SERVER,
            3,
            LISTENER,
            1,
            |_| {},
            &name,
        ));
        resolver.apply(&unix(
            EventKind::Socket,
            CLIENT,
            4,
            CLIENT_SOCK,
            2,
            |_| {},
            b"",
        ));
        resolver
    }

    /// The client's send on a connection the server has accepted as
    /// `ACCEPTED`, written at `ts_ns`.
    fn client_sends(ts_ns: u64) -> SockRecord {
        unix(
            EventKind::Send,
            CLIENT,
            4,
            CLIENT_SOCK,
            ts_ns,
            |ev| {
                ev.peer_sock = ACCEPTED;
                ev.ret = 6;
            },
            b"",
        )
    }

    /// `pid`'s accept of the client's connection as `ACCEPTED` on fd 5.
    fn accepts(pid: u32, ts_ns: u64) -> SockRecord {
        unix(
            EventKind::Accept,
            pid,
            5,
            ACCEPTED,
            ts_ns,
            |ev| {
                ev.fd2 = 3;
                ev.peer_sock = CLIENT_SOCK;
            },
            &sockaddr_un(b"/run/app.sock\0"),
        )
    }

    /// Everything `hold` hands on at `now_ns`.
    fn drain(hold: &mut Hold, resolver: &mut Resolver, waits: Waits) -> Vec<Event> {
        std::iter::from_fn(|| hold.next(resolver, waits)).collect()
    }

    fn peer_of(event: &Event) -> (Option<u32>, Option<i32>) {
        let peer = event.peer.as_ref().expect("a peer");
        (peer.pid, peer.fd)
    }

    /// Under load many records queue behind a waiting one, each read
    /// followed by a look for its peer's record (only the new ones are
    /// searched): the accept found at the end still names the acceptor,
    /// and every record comes out in ring order.
    #[test]
    fn a_long_queue_behind_a_waiting_record_is_searched_as_it_grows() {
        let mut resolver = table();
        let mut hold = Hold::default();
        assert!(hold.admit(client_sends(10), &mut resolver).is_none());
        for ts in 11..3000 {
            let other = unix(EventKind::Send, 300, 7, 90, ts, |ev| ev.ret = 1, b"");
            assert!(hold.admit(other, &mut resolver).is_none());
            assert!(hold.next(&mut resolver, Waits::Read).is_none(), "{ts}");
        }
        assert!(hold.admit(accepts(SERVER, 3000), &mut resolver).is_none());
        let events = drain(&mut hold, &mut resolver, Waits::Read);
        assert_eq!(events.len(), 2991);
        assert_eq!(peer_of(&events[0]), (Some(SERVER), Some(5)));
        assert!(events.windows(2).all(|pair| pair[0].ts_ns < pair[1].ts_ns));
    }

    /// The client's connect, written while the server's accept was taking
    /// its connection (Linux 6.10+ unlinks the embryo from its listener
    /// before it gives it its socket), to the server's socket reached
    /// through another path: it waits for that accept, which says at
    /// which listener it waited, and shows as a connect written before
    /// the accept does (a tracer beside this one may have seen it so):
    /// pending at the server's listener, by both paths.
    #[test]
    fn a_connect_written_while_it_was_accepted_waits_for_the_accept() {
        let mut resolver = table();
        let mut hold = Hold::default();
        let bytes = sock_bytes(
            EventKind::Connect,
            |ev| {
                (ev.header.pid, ev.header.tid, ev.header.ts_ns) = (CLIENT, CLIENT, 10);
                (ev.fd, ev.sock, ev.family, ev.sock_type) = (4, CLIENT_SOCK, AF_UNIX, 1);
                ev.peer_sk = 0xffff_0000;
                ev.flags = FLAG_PEER_PENDING | FLAG_PEER_ACCEPTING;
            },
            [b"", &sockaddr_un(b"/view/app.sock\0"), b""],
        );
        let Ok(Record::Sock(connect)) = decode(&bytes) else {
            panic!("not a socket record")
        };
        assert!(hold.admit(connect, &mut resolver).is_none(), "it waits");
        assert!(hold.admit(accepts(SERVER, 12), &mut resolver).is_none());
        let events = drain(&mut hold, &mut resolver, Waits::Until(13));
        assert_eq!(events[0].kind, EventKind::Connect, "ring order");
        let peer = events[0].peer.clone().expect("a peer");
        assert!(peer.pending);
        assert_eq!(
            (peer.pid, peer.listen_fd, peer.fd, peer.sock),
            (Some(SERVER), Some(3), None, None)
        );
        assert_eq!(peer.path.unwrap().to_string(), "/run/app.sock");
        assert_eq!(peer.via.unwrap().to_string(), "/view/app.sock");
    }

    /// The client's send was written before the server's accept: the send
    /// waits for it, is resolved after it, and still comes out first.
    #[test]
    fn a_send_written_before_its_accept_names_the_acceptor() {
        let mut resolver = table();
        let mut hold = Hold::default();
        assert!(hold.admit(client_sends(10), &mut resolver).is_none());
        assert!(
            hold.next(&mut resolver, Waits::Until(11)).is_none(),
            "it waits"
        );
        assert!(hold.admit(accepts(SERVER, 12), &mut resolver).is_none());
        let events = drain(&mut hold, &mut resolver, Waits::Until(13));
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Send, EventKind::Accept],
            "ring order"
        );
        assert_eq!(peer_of(&events[0]), (Some(SERVER), Some(5)));
        assert!(!events[0].unresolved);
        assert_eq!(peer_of(&events[1]), (Some(CLIENT), Some(4)));
        assert!(hold.is_empty());
        // Known now: the next send passes straight through.
        assert!(hold.admit(client_sends(14), &mut resolver).is_some());
    }

    /// The acceptor was forked after the send was written: its fork is
    /// taken in before its accept, or the fork would forget what the
    /// accept made it hold.
    #[test]
    fn the_acceptors_fork_is_taken_in_before_its_accept() {
        let mut resolver = table();
        let mut hold = Hold::default();
        let worker = 300;
        assert!(hold.admit(client_sends(10), &mut resolver).is_none());
        assert!(hold.admit_proc(fork(SERVER, worker)).is_none());
        assert!(hold.admit(accepts(worker, 12), &mut resolver).is_none());
        let events = drain(&mut hold, &mut resolver, Waits::Until(13));
        assert_eq!(events.len(), 2);
        assert_eq!(peer_of(&events[0]), (Some(worker), Some(5)));
        // The table still has the worker holding it (a fork taken in after
        // the accept would have dropped it: the listener, the client's
        // socket and the accepted one are three).
        assert_eq!(resolver.size().sockets, 3);
        let again = resolver.apply(&client_sends(14));
        assert_eq!(peer_of(&again), (Some(worker), Some(5)));
    }

    /// No record ever shows the peer's holder: the send waits at most
    /// HOLD_NS, goes out unresolved, and its peer is not waited for again.
    #[test]
    fn a_wait_in_vain_is_bounded_and_not_repeated() {
        let mut resolver = table();
        let mut hold = Hold::default();
        assert!(hold.admit(client_sends(10), &mut resolver).is_none());
        let other = unix(EventKind::Socket, SERVER, 9, 99, 11, |_| {}, b"");
        assert!(hold.admit(other, &mut resolver).is_none());
        assert!(
            hold.next(&mut resolver, Waits::Until(10 + HOLD_NS - 1))
                .is_none()
        );
        let events = drain(&mut hold, &mut resolver, Waits::Until(10 + HOLD_NS));
        assert_eq!(events.len(), 2, "the send, then what waited behind it");
        assert_eq!(events[0].kind, EventKind::Send);
        assert!(events[0].unresolved);
        assert!(hold.admit(client_sends(20), &mut resolver).is_some());
    }

    /// When tracing stops, every held record goes out, in order.
    #[test]
    fn stopping_hands_on_everything_held() {
        let mut resolver = table();
        let mut hold = Hold::default();
        assert!(hold.admit(client_sends(10), &mut resolver).is_none());
        assert!(hold.admit(client_sends(11), &mut resolver).is_none());
        assert!(hold.admit_proc(fork(CLIENT, 201)).is_none());
        assert!(hold.next(&mut resolver, Waits::Until(12)).is_none());
        let events = drain(&mut hold, &mut resolver, Waits::End);
        assert_eq!(events.iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [10, 11]);
        assert!(hold.is_empty());
    }

    /// The client's connection was seen waiting at the listener; its
    /// peer, accepted by a process whose records never came (filtered out
    /// in the kernel) and closed before /proc could show it, was accepted
    /// by the listener's only holder, and is named so.
    #[test]
    fn a_peer_accepted_unseen_is_named_from_its_listener() {
        let mut resolver = table();
        resolver.apply(&pending_connect());
        let event = resolver.apply(&client_sends(20));
        let peer = event.peer.expect("a peer");
        assert_eq!(
            (peer.pid, peer.fd, peer.sock),
            (Some(SERVER), None, Some(ACCEPTED))
        );
        assert_eq!(peer.path.unwrap().to_string(), "/run/app.sock");
        // Shared by two processes, the listener says nothing of who accepted.
        let mut resolver = table();
        resolver.apply_proc(&fork(SERVER, 101));
        resolver.apply(&pending_connect());
        let event = resolver.apply(&client_sends(20));
        assert_eq!(event.peer.expect("a peer").pid, None);
        assert!(event.unresolved);
    }

    /// The client's connect, its connection waiting in the accept queue.
    fn pending_connect() -> SockRecord {
        unix(
            EventKind::Connect,
            CLIENT,
            4,
            CLIENT_SOCK,
            10,
            |ev| {
                ev.peer_sk = 0xffff_0000;
                ev.peer_listener = LISTENER;
                ev.flags = FLAG_PEER_PENDING;
            },
            b"",
        )
    }

    /// A connection still in the accept queue waits for nothing: the
    /// kernel says so, and the listener's holders are named at once, all
    /// of them when the listener is shared.
    #[test]
    fn a_pending_connection_names_every_holder_of_its_listener() {
        let mut resolver = table();
        resolver.apply_proc(&fork(SERVER, 101));
        resolver.apply_proc(&fork(SERVER, 102));
        let mut hold = Hold::default();
        let connect = hold
            .admit(pending_connect(), &mut resolver)
            .expect("no wait");
        let event = resolver.apply(&connect);
        let peer = event.peer.expect("a peer");
        assert!(peer.pending);
        assert_eq!(
            (peer.pid, peer.fd, peer.listen_fd),
            (Some(SERVER), None, Some(3))
        );
        assert_eq!(
            peer.holders.iter().map(|h| h.pid).collect::<Vec<_>>(),
            [SERVER, 101, 102]
        );
        assert_eq!(peer.path.unwrap().to_string(), "/run/app.sock");
        assert!(!event.unresolved);
    }
}
