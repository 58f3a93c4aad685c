//! An event's socket side: the process and descriptor it came through,
//! the socket, and who is at the other end.
//!
//! On a busy connection this is the same from one send or receive to the
//! next; only the call, its result and its time change. The printers and
//! the recorder render the socket side once and keep the rendering per
//! socket ([`BySocket`]) for as long as it stays the same: rendering it
//! was most of what printing or recording a busy trace cost.

use std::{net::SocketAddr, rc::Rc};

use crate::{
    events::UnixName,
    resolve::{Event, Peer},
};

/// Everything of an event's socket side, as a key: what was rendered from
/// it holds for another event exactly when this compares equal.
#[derive(Debug)]
struct Side {
    pid: u32,
    comm: Rc<str>,
    fd: Option<i32>,
    family: u16,
    protocol: u16,
    sock_type: u16,
    sock: u64,
    path: Option<Rc<UnixName>>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    peer: Option<Peer>,
}

impl Side {
    /// None for an event on no socket, or one that passes descriptors
    /// (what it passes is seldom the same twice).
    fn of(event: &Event) -> Option<Self> {
        if event.passed_fds > 0 {
            return None;
        }
        Some(Self {
            pid: event.pid,
            comm: Rc::clone(&event.comm),
            fd: event.fd,
            family: event.family,
            protocol: event.protocol,
            sock_type: event.sock_type,
            sock: event.sock?,
            path: event.path.clone(),
            local: event.local,
            remote: event.remote,
            peer: event.peer.clone(),
        })
    }

    /// Whether `event`'s socket side is this one (compared cheapest first;
    /// shared names compare by pointer before their text).
    fn matches(&self, event: &Event) -> bool {
        event.sock == Some(self.sock)
            && event.pid == self.pid
            && event.fd == self.fd
            && event.passed_fds == 0
            && event.family == self.family
            && event.protocol == self.protocol
            && event.sock_type == self.sock_type
            && event.local == self.local
            && event.remote == self.remote
            && same_text(&event.comm, &self.comm)
            && event.path == self.path
            && same_peer(event.peer.as_ref(), self.peer.as_ref())
    }
}

/// Shared text compared by pointer first (`Rc`'s own comparison does that
/// only for sized values).
fn same_text(a: &Rc<str>, b: &Rc<str>) -> bool {
    Rc::ptr_eq(a, b) || a == b
}

fn same_peer(a: Option<&Peer>, b: Option<&Peer>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return a.is_none() && b.is_none();
    };
    // Every field, by name: a field added to Peer must be added here.
    let Peer {
        sock,
        pid,
        comm,
        fd,
        path,
        addr,
    } = a;
    *sock == b.sock
        && *pid == b.pid
        && *fd == b.fd
        && *addr == b.addr
        && *path == b.path
        && match (comm, &b.comm) {
            (Some(x), Some(y)) => same_text(x, y),
            (x, y) => x.is_none() && y.is_none(),
        }
}

/// How many sockets' renderings are kept.
const SLOTS: usize = 64;

/// Something made from an event's socket side, kept per socket:
/// direct-mapped by inode, so that a few busy sockets each keep theirs and
/// the memory stays bounded whatever the number of sockets.
#[derive(Debug)]
pub struct BySocket<T> {
    slots: Vec<Option<(Side, T)>>,
}

impl<T> Default for BySocket<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> BySocket<T> {
    fn slot(sock: u64) -> usize {
        (sock % SLOTS as u64) as usize
    }

    /// What was kept for `event`'s socket, if its socket side is the same now.
    pub fn find(&mut self, event: &Event) -> Option<&mut T> {
        let (side, kept) = self.slots.get_mut(Self::slot(event.sock?))?.as_mut()?;
        side.matches(event).then_some(kept)
    }

    /// Keeps `made` for `event`'s socket side, in place of what its socket
    /// (or another in the same slot) had.
    pub fn keep(&mut self, event: &Event, made: T) {
        let Some(side) = Side::of(event) else { return };
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        let slot = Self::slot(side.sock);
        self.slots[slot] = Some((side, made));
    }
}
