//! The kernel's own list of sockets, through sock_diag netlink (what `ss`
//! reads): every Unix socket with its type, state, name, peer inode and
//! queue lengths, and every TCP and UDP socket with its addresses, in one
//! request per family, without eBPF and without root. A netlink socket
//! lists its own network namespace; [`in_every_netns`] lists the others
//! too, from a thread that enters each (as root).

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use sockspy_common::{AF_INET, AF_INET6};

use crate::{
    capture::events::{UnixName, unix_name_bytes},
    table::procfs::Procfs,
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;

/// `TCP_LISTEN`, which Unix sockets reuse for listeners.
pub const STATE_LISTEN: u8 = 10;
/// `TCP_ESTABLISHED`: connected.
pub const STATE_CONNECTED: u8 = 1;

/// One Unix socket as the kernel describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u64,
    pub sock_type: u16,
    pub state: u8,
    pub name: Option<UnixName>,
    /// Device and inode of the socket file a path names (bound sockets).
    pub file: Option<(u32, u32)>,
    /// Inode of the connected peer, if any.
    pub peer: Option<u64>,
    /// Listeners: connections waiting in the accept queue (their inodes).
    pub pending: Vec<u64>,
    /// Bytes queued to read (connected) or the accept backlog (listeners).
    pub rqueue: u32,
    /// Bytes queued to the peer (connected) or the backlog limit (listeners).
    pub wqueue: u32,
}

/// Every Unix socket on the machine (in this network namespace).
pub fn unix_sockets() -> io::Result<Vec<UnixDiag>> {
    // struct unix_diag_req
    let mut req = vec![libc::AF_UNIX as u8, 0];
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // every inode
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    dump(&req, parse_socket)
}

/// One TCP or UDP socket as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetDiag {
    pub ino: u64,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u16,
    /// TCP state (`STATE_LISTEN`, `STATE_CONNECTED`, ...); UDP sockets are
    /// `STATE_CONNECTED` when connected, `STATE_CLOSE` otherwise.
    pub state: u8,
    pub local: SocketAddr,
    /// Port 0 when not connected.
    pub remote: SocketAddr,
    /// Bytes queued to read, or a listener's pending connections.
    pub rqueue: u32,
    /// Bytes not yet sent (or acknowledged), or a listener's backlog.
    pub wqueue: u32,
    pub uid: u32,
    /// The network namespace's inode (0 when not known).
    pub netns: u32,
}

/// `TCP_CLOSE`: an unconnected UDP socket, or a TCP socket not yet
/// connected or listening.
pub const STATE_CLOSE: u8 = 7;

/// Every IPv4 and IPv6 socket of `protocol` (`IPPROTO_TCP` or
/// `IPPROTO_UDP`) in this network namespace.
pub fn inet_sockets(protocol: u16) -> io::Result<Vec<InetDiag>> {
    let mut sockets = Vec::new();
    for family in [AF_INET, AF_INET6] {
        // struct inet_diag_req_v2: family, protocol, extensions, padding,
        // states, then a struct inet_diag_sockid that matches every socket.
        let mut req = vec![family as u8, protocol as u8, 0, 0];
        req.extend_from_slice(&u32::MAX.to_ne_bytes());
        req.extend_from_slice(&[0; 40]);
        req.extend_from_slice(&[0xff; 8]); // no cookie
        sockets.extend(dump(&req, |body| parse_inet(body, protocol))?);
    }
    Ok(sockets)
}

/// What `list` finds in this process's network namespace and in every
/// other one that some process is in, each item with its namespace's
/// inode. Another namespace is listed from a thread that enters it
/// (`setns`, which needs CAP_SYS_ADMIN) and ends; one that cannot be
/// entered is left out. An error listing this namespace is an error.
pub fn in_every_netns<T: Send>(
    procfs: &Procfs,
    list: impl Fn() -> io::Result<Vec<T>> + Sync,
) -> io::Result<Vec<(u32, T)>> {
    let own = procfs.netns(std::process::id()).unwrap_or(0);
    let mut found: Vec<(u32, T)> = list()?.into_iter().map(|item| (own, item)).collect();
    // One process per namespace, to enter it through.
    let mut others = BTreeMap::new();
    for pid in procfs.pids().unwrap_or_default() {
        if let Some(netns) = procfs.netns(pid).filter(|&ns| ns != own) {
            others.entry(netns).or_insert(pid);
        }
    }
    let list = &list;
    for (netns, pid) in others {
        let Ok(handle) = File::open(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let listed = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on a namespace descriptor; it moves only
                    // this thread, which ends when the listing is done.
                    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    list()
                })
                .join()
        });
        if let Ok(Ok(items)) = listed {
            found.extend(items.into_iter().map(|item| (netns, item)));
        }
    }
    Ok(found)
}

/// Every TCP or UDP socket ([`inet_sockets`]) of every network namespace
/// ([`in_every_netns`]), each with its namespace.
pub fn inet_sockets_everywhere(procfs: &Procfs, protocol: u16) -> io::Result<Vec<InetDiag>> {
    let found = in_every_netns(procfs, || inet_sockets(protocol))?;
    Ok(found
        .into_iter()
        .map(|(netns, sock)| InetDiag { netns, ..sock })
        .collect())
}

/// Every Unix socket ([`unix_sockets`]) of every network namespace
/// ([`in_every_netns`]).
pub fn unix_sockets_everywhere(procfs: &Procfs) -> io::Result<Vec<UnixDiag>> {
    let found = in_every_netns(procfs, unix_sockets)?;
    Ok(found.into_iter().map(|(_, sock)| sock).collect())
}

/// Sends a dump request (the body after the netlink header) and parses
/// every socket record of the answer with `parse`.
fn dump<T>(request: &[u8], parse: impl Fn(&[u8]) -> Option<T>) -> io::Result<Vec<T>> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made and owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    send_request(&socket, request)?;
    let mut sockets = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv into a buffer of the given length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if parse_batch(&buf[..n as usize], &mut sockets, &parse)? {
            return Ok(sockets);
        }
    }
}

fn send_request(socket: &OwnedFd, request: &[u8]) -> io::Result<()> {
    let len = (NLMSG_HDRLEN + request.len()) as u32;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(request);
    // SAFETY: send from a buffer of the given length.
    let n = unsafe { libc::send(socket.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// Parses one datagram of netlink messages; true once the dump is done.
fn parse_batch<T>(
    mut bytes: &[u8],
    out: &mut Vec<T>,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> io::Result<bool> {
    while bytes.len() >= NLMSG_HDRLEN {
        let len = u32_at(bytes, 0).unwrap_or(0) as usize;
        let kind = u16_at(bytes, 4).unwrap_or(0);
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return Err(malformed("bad message length"));
        }
        let body = &bytes[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map_or(0, |e| e as i32);
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                out.push(parse(body).ok_or_else(|| malformed("short socket record"))?)
            }
            _ => {}
        }
        bytes = &bytes[align4(len).min(bytes.len())..];
    }
    Ok(false)
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Parses a `unix_diag_msg` and its attributes.
fn parse_socket(body: &[u8]) -> Option<UnixDiag> {
    let mut sock = UnixDiag {
        sock_type: u16::from(*body.get(1)?),
        state: *body.get(2)?,
        ino: u64::from(u32_at(body, 4)?),
        ..UnixDiag::default()
    };
    let mut attrs = body.get(16..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0)?);
        let kind = u16_at(attrs, 2)?;
        if len < 4 || len > attrs.len() {
            return None;
        }
        let value = &attrs[4..len];
        match kind {
            UNIX_DIAG_NAME => sock.name = unix_name_bytes(value),
            UNIX_DIAG_VFS => sock.file = Some((u32_at(value, 4)?, u32_at(value, 0)?)),
            UNIX_DIAG_PEER => sock.peer = u32_at(value, 0).map(u64::from).filter(|&p| p != 0),
            UNIX_DIAG_ICONS => {
                sock.pending = value
                    .chunks_exact(4)
                    .filter_map(|c| u32_at(c, 0))
                    .map(u64::from)
                    .collect()
            }
            UNIX_DIAG_RQLEN => {
                sock.rqueue = u32_at(value, 0)?;
                sock.wqueue = u32_at(value, 4)?;
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(sock)
}

/// Parses a `struct inet_diag_msg`: family, state, timer, retransmits,
/// the socket id (ports and addresses in network order, interface,
/// cookie), expiry, queues, uid, inode.
fn parse_inet(body: &[u8], protocol: u16) -> Option<InetDiag> {
    let family = u16::from(*body.first()?);
    let port = |at: usize| Some(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?));
    let addr = |at: usize| -> Option<IpAddr> {
        Some(if family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(body.get(at..at + 16)?).ok()?,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(body.get(at..at + 4)?).ok()?,
            ))
        })
    };
    Some(InetDiag {
        ino: u64::from(u32_at(body, 68)?),
        family,
        protocol,
        state: *body.get(1)?,
        local: SocketAddr::new(addr(8)?, port(4)?),
        remote: SocketAddr::new(addr(24)?, port(6)?),
        rqueue: u32_at(body, 56)?,
        wqueue: u32_at(body, 60)?,
        uid: u32_at(body, 64)?,
        netns: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn parses_a_dump() {
        let mut body = vec![libc::AF_UNIX as u8, 1, STATE_CONNECTED, 0];
        body.extend_from_slice(&4242u32.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"/run/x.sock"));
        body.extend(attr(UNIX_DIAG_PEER, &4243u32.to_ne_bytes()));
        body.extend(attr(UNIX_DIAG_RQLEN, &[5, 0, 0, 0, 7, 0, 0, 0]));
        let mut batch = message(SOCK_DIAG_BY_FAMILY, &body);
        batch.extend(message(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse_batch(&batch, &mut out, parse_socket).unwrap());
        assert_eq!(
            out,
            [UnixDiag {
                ino: 4242,
                sock_type: 1,
                state: STATE_CONNECTED,
                name: Some(UnixName::Path("/run/x.sock".into())),
                peer: Some(4243),
                rqueue: 5,
                wqueue: 7,
                ..UnixDiag::default()
            }]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = Vec::new();
        let mut batch = message(SOCK_DIAG_BY_FAMILY, &[1, 1, 1]);
        assert!(parse_batch(&batch, &mut out, parse_socket).is_err());
        batch = message(NLMSG_ERROR, &(-13i32).to_ne_bytes());
        let err = parse_batch(&batch, &mut out, parse_socket).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(13));
        let mut lying = message(NLMSG_DONE, &[]);
        lying[0] = 200;
        assert!(parse_batch(&lying, &mut out, parse_socket).is_err());
    }

    #[test]
    fn lists_a_real_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let sockets = unix_sockets().unwrap();
        let mine = sockets
            .iter()
            .find(|s| s.ino == ino(&a))
            .expect("our socket");
        assert_eq!(mine.peer, Some(ino(&b)));
        assert_eq!(mine.state, STATE_CONNECTED);
    }

    #[test]
    fn lists_a_real_tcp_connection() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let sockets = inet_sockets(libc::IPPROTO_TCP as u16).unwrap();
        let find = |local: SocketAddr, remote: SocketAddr| {
            sockets
                .iter()
                .find(|s| s.local == local && s.remote == remote)
                .unwrap_or_else(|| panic!("no {local} -> {remote} in {sockets:?}"))
        };
        let mine = find(client.local_addr().unwrap(), server.local_addr().unwrap());
        assert_eq!(mine.state, STATE_CONNECTED);
        assert_eq!(mine.family, AF_INET);
        assert_ne!(mine.ino, 0);
        let theirs = find(server.local_addr().unwrap(), client.local_addr().unwrap());
        assert_ne!(theirs.ino, mine.ino);
        let listening = listener.local_addr().unwrap();
        let wildcard = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        assert_eq!(find(listening, wildcard).state, STATE_LISTEN);
    }

    #[test]
    fn lists_a_real_udp_socket() {
        let socket = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let sockets = inet_sockets(libc::IPPROTO_UDP as u16).unwrap();
        let mine = sockets
            .iter()
            .find(|s| s.local == socket.local_addr().unwrap())
            .expect("our socket");
        assert_eq!((mine.family, mine.state), (AF_INET6, STATE_CLOSE));
        assert_eq!(mine.remote.port(), 0);
    }
}
