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
    capture::events::UnixName,
    table::container::Context,
    table::resolve::{Event, Peer},
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
    context: Context,
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
            context: event.context.clone(),
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
            && same_context(&event.context, &self.context)
            && same_peer(event.peer.as_ref(), self.peer.as_ref())
    }
}

/// Shared text compared by pointer first (`Rc`'s own comparison does that
/// only for sized values).
fn same_text(a: &Rc<str>, b: &Rc<str>) -> bool {
    Rc::ptr_eq(a, b) || a == b
}

/// Contexts compared by their shared cgroup's pointer first.
fn same_context(a: &Context, b: &Context) -> bool {
    a.netns == b.netns
        && a.nspid == b.nspid
        && match (&a.cgroup, &b.cgroup) {
            (Some(x), Some(y)) => Rc::ptr_eq(x, y) || x == y,
            (x, y) => x.is_none() && y.is_none(),
        }
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
        via,
        addr,
        pending,
        listen_fd,
        holders,
        context,
    } = a;
    *sock == b.sock
        && *pid == b.pid
        && *fd == b.fd
        && *addr == b.addr
        && *path == b.path
        && *via == b.via
        && *pending == b.pending
        && *listen_fd == b.listen_fd
        && *holders == b.holders
        && same_context(context, &b.context)
        && match (comm, &b.comm) {
            (Some(x), Some(y)) => same_text(x, y),
            (x, y) => x.is_none() && y.is_none(),
        }
}

/// How many sockets a [`ByInode`] keeps values for.
const SLOTS: usize = 64;

/// A value kept per socket, direct-mapped by inode: a few busy sockets
/// each keep theirs, and the memory stays bounded whatever the number of
/// sockets. Sockets that share a slot push each other out, so a value must
/// say which socket it is for, and a lookup check it.
#[derive(Debug)]
pub struct ByInode<T> {
    slots: Vec<Option<T>>,
}

impl<T> Default for ByInode<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> ByInode<T> {
    fn slot(ino: u64) -> usize {
        (ino % SLOTS as u64) as usize
    }

    /// What the slot of `ino` holds, whichever socket it is for.
    pub fn get_mut(&mut self, ino: u64) -> Option<&mut T> {
        self.slots.get_mut(Self::slot(ino))?.as_mut()
    }

    /// What the slot of `ino` holds, whichever socket it is for.
    pub fn get(&self, ino: u64) -> Option<&T> {
        self.slots.get(Self::slot(ino))?.as_ref()
    }

    /// Keeps `value` for `ino`, in place of what its slot held.
    pub fn put(&mut self, ino: u64, value: T) {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        self.slots[Self::slot(ino)] = Some(value);
    }
}

/// Something made from an event's socket side, kept per socket
/// ([`ByInode`]) while that side stays the same.
#[derive(Debug)]
pub struct BySocket<T> {
    kept: ByInode<(Side, T)>,
}

impl<T> Default for BySocket<T> {
    fn default() -> Self {
        Self {
            kept: ByInode::default(),
        }
    }
}

impl<T> BySocket<T> {
    /// What was kept for `event`'s socket, if its socket side is the same now.
    pub fn find(&mut self, event: &Event) -> Option<&mut T> {
        let (side, kept) = self.kept.get_mut(event.sock?)?;
        side.matches(event).then_some(kept)
    }

    /// Keeps `made` for `event`'s socket side, in place of what its socket
    /// (or another in the same slot) had.
    pub fn keep(&mut self, event: &Event, made: T) {
        let Some(side) = Side::of(event) else { return };
        self.kept.put(side.sock, (side, made));
    }
}
