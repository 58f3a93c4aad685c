//! Decoding ring buffer records into typed events.
//!
//! The kernel writes `#[repr(C)]` structs from sockspy-common followed by
//! variable-length addresses and payload; this module checks every length
//! before it trusts it, so a short or corrupt record is an error, never a
//! panic (the same decoder will read recordings from disk).

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use bytes::Bytes;
use sockspy_common::{
    AF_INET, AF_INET6, AF_UNIX, COMM_LEN, Call, EventHeader, EventKind, IPPROTO_TCP, IPPROTO_UDP,
    PassedFile, ProcEvent, SockEvent,
};

/// Why a record could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record says it has {said} bytes but has {has}")]
    Length { said: usize, has: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every record is a socket event: boxing it would cost an allocation each"
)]
pub enum Record {
    /// Something a socket did.
    Sock(SockRecord),
    /// A process forked, exec'd or exited.
    Proc(ProcRecord),
}

/// A socket event with its trailing bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockRecord {
    pub kind: EventKind,
    pub ev: SockEvent,
    /// The socket's own address as the kernel had it (raw `sockaddr`).
    pub addr: Bytes,
    /// The peer's address (raw `sockaddr`): a connect target, a datagram's destination, ...
    pub peer_addr: Bytes,
    /// Descriptors passed with `SCM_RIGHTS`, as far as the kernel identified them.
    pub passed: Vec<PassedFile>,
    /// Captured payload.
    pub data: Bytes,
}

/// A process event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcRecord {
    pub kind: EventKind,
    pub ev: ProcEvent,
}

impl SockRecord {
    pub fn call(&self) -> Call {
        Call::from_u16(self.ev.call)
    }
}

/// Reads a `#[repr(C)]` plain-data struct from the front of `bytes`.
fn read_struct<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked, the types are plain integers and arrays
    // (any bit pattern is valid), and read_unaligned needs no alignment.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Decodes one record.
pub fn decode(record: &[u8]) -> Result<Record, DecodeError> {
    let header: EventHeader = read_struct(record).ok_or(DecodeError::Short(record.len()))?;
    let said = header.size as usize;
    if said > record.len() {
        return Err(DecodeError::Length {
            said,
            has: record.len(),
        });
    }
    let record = &record[..said];
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    match kind {
        EventKind::Fork | EventKind::Exec | EventKind::Exit => {
            let ev: ProcEvent = read_struct(record).ok_or(DecodeError::Short(record.len()))?;
            Ok(Record::Proc(ProcRecord { kind, ev }))
        }
        _ => {
            let ev: SockEvent = read_struct(record).ok_or(DecodeError::Short(record.len()))?;
            let fixed = size_of::<SockEvent>();
            let addr_end = fixed + usize::from(ev.addr_len);
            let peer_end = addr_end + usize::from(ev.peer_addr_len);
            let files_end = peer_end + usize::from(ev.passed_files) * size_of::<PassedFile>();
            let data_end = files_end + ev.data_len as usize;
            if data_end != record.len() {
                return Err(DecodeError::Length {
                    said: data_end,
                    has: record.len(),
                });
            }
            // Most records (no data, no addresses) have no tail to copy.
            let tail = match &record[fixed..] {
                [] => Bytes::new(),
                tail => Bytes::copy_from_slice(tail),
            };
            Ok(Record::Sock(SockRecord {
                kind,
                ev,
                addr: tail.slice(..addr_end - fixed),
                peer_addr: tail.slice(addr_end - fixed..peer_end - fixed),
                passed: record[peer_end..files_end]
                    .chunks_exact(size_of::<PassedFile>())
                    .filter_map(read_struct)
                    .collect(),
                data: tail.slice(files_end - fixed..),
            }))
        }
    }
}

/// A C string from a fixed `comm` buffer.
pub fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    comm_text(comm).into_owned()
}

/// A C string from a fixed `comm` buffer, borrowed when it is UTF-8.
pub fn comm_text(comm: &[u8; COMM_LEN]) -> Cow<'_, str> {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..len])
}

/// A Unix socket name as `ss` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnixName {
    /// A filesystem path.
    Path(String),
    /// An abstract name, shown with a leading `@` (and `@` for embedded NULs).
    Abstract(String),
}

impl UnixName {
    /// The name as displayed; a path borrowed as it is.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Self::Path(path) => Cow::Borrowed(path),
            Self::Abstract(_) => Cow::Owned(self.to_string()),
        }
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => f.write_str(path),
            Self::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

/// Nanoseconds on `clock` now (`CLOCK_MONOTONIC` is the records' own clock).
pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Decodes a raw `sockaddr_un`; `None` for an unnamed socket or another family.
pub fn unix_name(addr: &[u8]) -> Option<UnixName> {
    if addr.len() <= 2 || u16::from_ne_bytes([addr[0], addr[1]]) != AF_UNIX {
        return None;
    }
    unix_name_bytes(&addr[2..])
}

/// A Unix socket name from the bytes of `sun_path` (a leading NUL makes it
/// abstract); `None` when empty (unnamed).
pub fn unix_name_bytes(path: &[u8]) -> Option<UnixName> {
    let first = *path.first()?;
    if first == 0 {
        let name: String = String::from_utf8_lossy(&path[1..])
            .chars()
            .map(|c| if c == '\0' { '@' } else { c })
            .collect();
        Some(UnixName::Abstract(name))
    } else {
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        Some(UnixName::Path(
            String::from_utf8_lossy(&path[..end]).into_owned(),
        ))
    }
}

/// Decodes a raw `sockaddr_in` or `sockaddr_in6`; `None` for another family
/// or a short buffer. An IPv4-mapped IPv6 address stays IPv6, so it prints
/// as `ss` shows it: `[::ffff:127.0.0.1]:80`.
pub fn inet_addr(addr: &[u8]) -> Option<SocketAddr> {
    if addr.len() < 4 {
        return None;
    }
    let family = u16::from_ne_bytes([addr[0], addr[1]]);
    let port = u16::from_be_bytes([addr[2], addr[3]]);
    let ip = match family {
        AF_INET if addr.len() >= 8 => IpAddr::V4(Ipv4Addr::new(addr[4], addr[5], addr[6], addr[7])),
        AF_INET6 if addr.len() >= 24 => {
            let bytes: [u8; 16] = addr[8..24].try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Name of an IP protocol number, for IP sockets.
pub fn proto_name(family: u16, protocol: u16) -> Option<&'static str> {
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some(match protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "other",
    })
}

/// Name of a TCP state (`include/net/tcp_states.h`), lower case.
pub fn tcp_state_name(state: u16) -> &'static str {
    match state {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        _ => "unknown",
    }
}

/// Name of a socket type number.
pub fn type_name(sock_type: u16) -> &'static str {
    match sock_type {
        1 => "stream",
        2 => "dgram",
        3 => "raw",
        4 => "rdm",
        5 => "seqpacket",
        _ => "unknown",
    }
}

/// What kind of file an inode mode (`S_IFMT` bits) says, as /proc and
/// `lsof` name them.
pub fn file_type(mode: u16) -> &'static str {
    match mode & 0o170000 {
        0o140000 => "socket",
        0o010000 => "pipe",
        0o100000 => "file",
        0o040000 => "dir",
        0o020000 => "chr",
        0o060000 => "blk",
        0o120000 => "link",
        // eventfd, signalfd, epoll and friends live on an anonymous inode.
        _ => "anon_inode",
    }
}

/// Name of an address family number.
pub fn family_name(family: u16) -> &'static str {
    match family {
        AF_UNIX => "unix",
        sockspy_common::AF_INET => "inet",
        sockspy_common::AF_INET6 => "inet6",
        _ => "other",
    }
}

/// The event's name, as printed and in JSON.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Socket => "socket",
        EventKind::Bind => "bind",
        EventKind::Listen => "listen",
        EventKind::Connect => "connect",
        EventKind::Accept => "accept",
        EventKind::Socketpair => "socketpair",
        EventKind::Send => "send",
        EventKind::Recv => "recv",
        EventKind::Close => "close",
        EventKind::State => "state",
        EventKind::Fork => "fork",
        EventKind::Exec => "exec",
        EventKind::Exit => "exit",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds the bytes of a socket record as the kernel would.
    pub fn sock_bytes(
        kind: EventKind,
        f: impl FnOnce(&mut SockEvent),
        tail: [&[u8]; 3],
    ) -> Vec<u8> {
        sock_bytes_with_files(kind, f, tail, &[])
    }

    /// As [`sock_bytes`], with passed-file records between addresses and payload.
    pub fn sock_bytes_with_files(
        kind: EventKind,
        f: impl FnOnce(&mut SockEvent),
        tail: [&[u8]; 3],
        files: &[PassedFile],
    ) -> Vec<u8> {
        // SAFETY: SockEvent is plain integers; all-zero is a valid value.
        let mut ev: SockEvent = unsafe { std::mem::zeroed() };
        ev.header.kind = kind as u32;
        ev.fd = -1;
        ev.fd2 = -1;
        f(&mut ev);
        ev.addr_len = tail[0].len() as u16;
        ev.peer_addr_len = tail[1].len() as u16;
        ev.data_len = tail[2].len() as u32;
        ev.passed_files = files.len() as u16;
        let files_len = size_of_val(files);
        ev.header.size = (size_of::<SockEvent>()
            + tail.iter().map(|t| t.len()).sum::<usize>()
            + files_len) as u32;
        // SAFETY: reading the bytes of a plain struct.
        let mut bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<SockEvent>())
        }
        .to_vec();
        bytes.extend_from_slice(tail[0]);
        bytes.extend_from_slice(tail[1]);
        for file in files {
            // SAFETY: reading the bytes of a plain struct.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts((&raw const *file).cast::<u8>(), size_of::<PassedFile>())
            });
        }
        bytes.extend_from_slice(tail[2]);
        bytes
    }

    /// A Unix stream record of process `pid` on socket `sock` through
    /// `fd`, connected to `peer_sock`, with own address `addr`; `more`
    /// fills in the rest.
    pub fn unix_stream(
        kind: EventKind,
        (pid, fd, sock, peer_sock): (u32, i32, u64, u64),
        more: impl FnOnce(&mut SockEvent),
        addr: &[u8],
    ) -> SockRecord {
        let bytes = sock_bytes(
            kind,
            |ev| {
                ev.header.pid = pid;
                ev.header.tid = pid;
                ev.fd = fd;
                ev.sock = sock;
                ev.peer_sock = peer_sock;
                ev.family = AF_UNIX;
                ev.sock_type = 1;
                more(ev);
            },
            [addr, b"", b""],
        );
        let Ok(Record::Sock(rec)) = decode(&bytes) else {
            panic!("not a socket record")
        };
        rec
    }

    /// A raw `sockaddr_un` for `path` (abstract when it starts with a NUL).
    pub fn sockaddr_un(path: &[u8]) -> Vec<u8> {
        let mut addr = AF_UNIX.to_ne_bytes().to_vec();
        addr.extend_from_slice(path);
        addr
    }

    #[test]
    fn decodes_a_send_with_addresses_and_data() {
        let bytes = sock_bytes(
            EventKind::Send,
            |ev| {
                ev.sock = 42;
                ev.ret = 5;
            },
            [b"", &sockaddr_un(b"/tmp/x.sock\0"), b"hello"],
        );
        let Record::Sock(rec) = decode(&bytes).unwrap() else {
            panic!("not a socket record")
        };
        assert_eq!(rec.kind, EventKind::Send);
        assert_eq!(rec.ev.sock, 42);
        assert!(rec.addr.is_empty());
        assert_eq!(
            unix_name(&rec.peer_addr),
            Some(UnixName::Path("/tmp/x.sock".into()))
        );
        assert_eq!(&rec.data[..], b"hello");
    }

    #[test]
    fn decodes_passed_files_between_addresses_and_data() {
        let pipe = PassedFile {
            ino: 77,
            fd: 5,
            mode: 0o010600,
            _pad: 0,
        };
        let bytes = sock_bytes_with_files(
            EventKind::Send,
            |ev| ev.passed_fds = 1,
            [b"", b"", b"fds"],
            &[pipe],
        );
        let Record::Sock(rec) = decode(&bytes).unwrap() else {
            panic!("not a socket record")
        };
        assert_eq!(rec.passed, [pipe]);
        assert_eq!(&rec.data[..], b"fds");
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        let bytes = sock_bytes(EventKind::Recv, |_| {}, [b"", b"", b"abc"]);
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = 99; // kind
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn file_types_by_mode() {
        assert_eq!(file_type(0o140777), "socket");
        assert_eq!(file_type(0o010600), "pipe");
        assert_eq!(file_type(0o100644), "file");
        assert_eq!(file_type(0o600), "anon_inode");
    }

    #[test]
    fn unix_names_render_like_ss() {
        assert_eq!(unix_name(&sockaddr_un(b"")), None);
        assert_eq!(
            unix_name(&sockaddr_un(b"\0abs\0x")).unwrap().to_string(),
            "@abs@x"
        );
        assert_eq!(
            unix_name(&sockaddr_un(b"/run/a.sock\0\0\0"))
                .unwrap()
                .to_string(),
            "/run/a.sock"
        );
        assert_eq!(unix_name(&[2, 0, 1, 2]), None);
    }

    /// A raw `sockaddr_in`.
    pub fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut addr = AF_INET.to_ne_bytes().to_vec();
        addr.extend_from_slice(&port.to_be_bytes());
        addr.extend_from_slice(&ip);
        addr.extend_from_slice(&[0; 8]);
        addr
    }

    /// A raw `sockaddr_in6`.
    pub fn sockaddr_in6(ip: Ipv6Addr, port: u16) -> Vec<u8> {
        let mut addr = AF_INET6.to_ne_bytes().to_vec();
        addr.extend_from_slice(&port.to_be_bytes());
        addr.extend_from_slice(&[0; 4]);
        addr.extend_from_slice(&ip.octets());
        addr.extend_from_slice(&[0; 4]);
        addr
    }

    #[test]
    fn inet_addresses_render_like_ss() {
        let v4 = inet_addr(&sockaddr_in([127, 0, 0, 1], 8080)).unwrap();
        assert_eq!(v4.to_string(), "127.0.0.1:8080");
        let v6 = inet_addr(&sockaddr_in6(Ipv6Addr::LOCALHOST, 443)).unwrap();
        assert_eq!(v6.to_string(), "[::1]:443");
        let mapped = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped();
        let mapped = inet_addr(&sockaddr_in6(mapped, 80)).unwrap();
        assert_eq!(mapped.to_string(), "[::ffff:127.0.0.1]:80");
        assert_eq!(mapped.ip().to_string(), "::ffff:127.0.0.1");
        assert_eq!(inet_addr(&sockaddr_un(b"/tmp/x")), None);
        assert_eq!(inet_addr(&sockaddr_in([1, 2, 3, 4], 1)[..6]), None);
        assert_eq!(proto_name(AF_INET6, IPPROTO_UDP), Some("udp"));
        assert_eq!(proto_name(AF_UNIX, 0), None);
        assert_eq!(tcp_state_name(1), "established");
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut comm = [0u8; COMM_LEN];
        comm[..8].copy_from_slice(b"writer#0");
        assert_eq!(comm_str(&comm), "writer#0");
        assert_eq!(comm_str(&[b'x'; COMM_LEN]), "x".repeat(COMM_LEN));
    }
}
