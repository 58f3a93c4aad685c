//! What /proc says about sockets that existed before sockspy started.
//!
//! The kernel programs only see what happens after they attach. A
//! long-lived connection (collectd's to rrdcached) was made earlier, so at
//! start-up sockspy reads who holds which socket from every process's fd
//! table, and the TCP and UDP sockets from /proc/net (the names of Unix
//! sockets come from sock_diag, `diag.rs`). The same reads,
//! for one process, fill gaps later (a descriptor inherited or passed over a
//! socket before sockspy saw it).

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

/// Root of the proc filesystem (tests may point elsewhere).
#[derive(Clone, Debug)]
pub struct Procfs {
    root: PathBuf,
}

impl Default for Procfs {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
        }
    }
}

/// One TCP or UDP socket from /proc/net/{tcp,tcp6,udp,udp6}.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel state (`TCP_LISTEN` = 10, `TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    pub ino: u64,
}

/// Which protocol table to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InetTable {
    Tcp,
    Udp,
}

/// A process's socket descriptors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSockets {
    pub pid: u32,
    pub comm: String,
    /// `(fd, socket inode)`.
    pub fds: Vec<(i32, u64)>,
}

/// What a whole-system scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub processes: Vec<ProcessSockets>,
    /// Processes whose fd table could not be read (permissions, or gone).
    pub unreadable: usize,
}

impl Procfs {
    #[cfg(test)]
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Every process's socket descriptors.
    pub fn scan(&self) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for entry in fs::read_dir(&self.root)? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match self.process_sockets(pid) {
                Ok(process) if !process.fds.is_empty() => scan.processes.push(process),
                Ok(_) => {}
                Err(_) => scan.unreadable += 1,
            }
        }
        Ok(scan)
    }

    /// One process's socket descriptors and command name.
    pub fn process_sockets(&self, pid: u32) -> io::Result<ProcessSockets> {
        let dir = self.root.join(pid.to_string());
        let mut fds = Vec::new();
        for entry in fs::read_dir(dir.join("fd"))? {
            let entry = entry?;
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // A descriptor closed between listing and reading is simply gone.
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            if let Some(ino) = socket_inode(&target.to_string_lossy()) {
                fds.push((fd, ino));
            }
        }
        fds.sort_unstable();
        Ok(ProcessSockets {
            pid,
            comm: self.comm(pid).unwrap_or_default(),
            fds,
        })
    }

    /// A process's command name.
    pub fn comm(&self, pid: u32) -> Option<String> {
        let comm = fs::read_to_string(self.root.join(pid.to_string()).join("comm")).ok()?;
        Some(comm.trim_end_matches('\n').to_owned())
    }

    /// The TCP or UDP sockets (IPv4 and IPv6) of this network namespace.
    pub fn inet_sockets(&self, table: InetTable) -> Vec<InetSocket> {
        let names = match table {
            InetTable::Tcp => ["net/tcp", "net/tcp6"],
            InetTable::Udp => ["net/udp", "net/udp6"],
        };
        names
            .iter()
            .filter_map(|name| fs::read_to_string(self.root.join(name)).ok())
            .flat_map(|text| parse_net_inet(&text))
            .collect()
    }
}

/// The inode in a `socket:[N]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Parses /proc/net/tcp and friends: `sl local_address rem_address st
/// tx_queue:rx_queue tr:when retrnsmt uid timeout inode ...`, addresses as
/// hex words of the kernel's (network-order) bytes read as host integers.
fn parse_net_inet(text: &str) -> Vec<InetSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(InetSocket {
                local: parse_hex_endpoint(fields.get(1)?)?,
                remote: parse_hex_endpoint(fields.get(2)?)?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                ino: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6).
fn parse_hex_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in 0..addr.len() / 8 {
        let word = u32::from_str_radix(addr.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match (addr.len(), bytes.len()) {
        (8, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        (32, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_net_tcp() {
        // As a little-endian kernel prints it.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n   \
            1: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 31338 1 0000000000000000 20 4 30 10 -1\n";
        let socks = parse_net_inet(v4);
        if cfg!(target_endian = "little") {
            assert_eq!(
                socks,
                vec![
                    InetSocket {
                        local: "127.0.0.1:8080".parse().unwrap(),
                        remote: "0.0.0.0:0".parse().unwrap(),
                        state: 0x0a,
                        ino: 31337,
                    },
                    InetSocket {
                        local: "127.0.0.1:41668".parse().unwrap(),
                        remote: "127.0.0.1:8080".parse().unwrap(),
                        state: 1,
                        ino: 31338,
                    },
                ]
            );
            let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                0: 00000000000000000000000001000000:0050 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 0 10 -1\n";
            let socks = parse_net_inet(v6);
            assert_eq!(socks.len(), 1);
            assert_eq!(socks[0].local.to_string(), "[::1]:80");
            assert_eq!(socks[0].remote.to_string(), "[::ffff:127.0.0.1]:54321");
            assert_eq!(socks[0].ino, 4242);
        }
        assert!(parse_net_inet("header\ngarbage line\n").is_empty());
    }

    #[test]
    fn reads_socket_links() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn scans_own_process() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let procfs = Procfs::default();
        let me = procfs.process_sockets(std::process::id()).unwrap();
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", a.as_raw_fd()))
            .unwrap()
            .ino();
        assert!(me.fds.contains(&(a.as_raw_fd(), ino)), "{me:?}");
        assert!(me.fds.iter().any(|&(fd, _)| fd == b.as_raw_fd()));
        let missing = Procfs::at("/nonexistent").scan();
        assert!(missing.is_err());
    }
}
