//! The kernel's own list of Unix sockets, through sock_diag netlink (what
//! `ss -x` reads): every socket with its type, state, name, peer inode and
//! queue lengths, in one request, without eBPF and without root.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::events::{UnixName, unix_name_bytes};

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
    send_request(&socket)?;
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
        if parse_batch(&buf[..n as usize], &mut sockets)? {
            return Ok(sockets);
        }
    }
}

fn send_request(socket: &OwnedFd) -> io::Result<()> {
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + 24);
    let len = (NLMSG_HDRLEN + 24) as u32;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    // struct unix_diag_req
    msg.push(libc::AF_UNIX as u8);
    msg.push(0); // protocol
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    msg.extend_from_slice(&0u32.to_ne_bytes()); // every inode
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    msg.extend_from_slice(&show.to_ne_bytes());
    msg.extend_from_slice(&[0xff; 8]); // no cookie
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
fn parse_batch(mut bytes: &[u8], out: &mut Vec<UnixDiag>) -> io::Result<bool> {
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
                out.push(parse_socket(body).ok_or_else(|| malformed("short socket record"))?)
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
        assert!(parse_batch(&batch, &mut out).unwrap());
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
        assert!(parse_batch(&batch, &mut out).is_err());
        batch = message(NLMSG_ERROR, &(-13i32).to_ne_bytes());
        let err = parse_batch(&batch, &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(13));
        let mut lying = message(NLMSG_DONE, &[]);
        lying[0] = 200;
        assert!(parse_batch(&lying, &mut out).is_err());
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
}
