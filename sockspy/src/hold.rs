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
//! [`HOLD_NS`] after the record was written, or [`MAX_HELD`] records
//! behind it, whichever comes first; then /proc is asked and the record
//! goes on with what is known. A peer waited for in vain is not waited
//! for again (the last [`GIVEN_UP_KEPT`] are remembered), so a peer whose
//! records the kernel filters out costs one wait, not one per event.

use std::collections::VecDeque;

use sockspy_common::EventKind;

use crate::{
    events::{ProcRecord, SockRecord},
    resolve::{Awaited, Event, Resolver},
};

/// How long a record may wait for its peer's record, in nanoseconds after
/// it was written: far longer than a preempted server takes from taking a
/// connection to writing its `accept` record, even on a loaded machine.
pub const HOLD_NS: u64 = 100_000_000;

/// The most records kept behind a waiting one: under a flood the wait ends
/// here rather than memory growing with the rate.
const MAX_HELD: usize = 65_536;

/// How many peers waited for in vain are remembered.
const GIVEN_UP_KEPT: usize = 256;

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
}

impl Hold {
    /// Takes a socket record: hands it back when it can be resolved now
    /// (nothing waits, and neither does it), else keeps it.
    pub fn admit(&mut self, rec: SockRecord, resolver: &Resolver) -> Option<SockRecord> {
        if self.queue.is_empty() && self.waits(&rec, resolver).is_none() {
            return Some(rec);
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

    /// The next event in ring order, if it can be resolved now
    /// (`now_ns`: `CLOCK_MONOTONIC` nanoseconds; `None` to end every wait,
    /// when tracing stops).
    pub fn next(&mut self, resolver: &mut Resolver, now_ns: Option<u64>) -> Option<Event> {
        loop {
            match self.queue.pop_front()? {
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
                        let waiting = now_ns.is_some_and(|now| now < written + HOLD_NS)
                            && self.queue.len() < MAX_HELD;
                        if waiting {
                            self.queue.push_front(Slot::Sock(rec));
                            return None;
                        }
                        self.give_up(awaited);
                        resolver.rescan_since(written);
                    }
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
        let Some(at) = self
            .queue
            .iter()
            .position(|slot| matches!(slot, Slot::Sock(rec) if awaited.revealed_by(rec)))
        else {
            return false;
        };
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
