//! What /proc says about sockets that existed before sockspy started.
//!
//! The kernel programs only see what happens after they attach. A
//! long-lived connection (collectd's to rrdcached) was made earlier, so at
//! start-up sockspy reads who holds which socket from every process's fd
//! table, and the names of Unix sockets from /proc/net/unix. The same reads,
//! for one process, fill gaps later (a descriptor inherited or passed over a
//! socket before sockspy saw it).

use std::{fs, io, path::PathBuf};

use crate::events::UnixName;

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

/// One Unix socket from /proc/net/unix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocket {
    pub ino: u64,
    pub name: Option<UnixName>,
    /// The socket is listening for connections.
    pub listening: bool,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    pub sock_type: u16,
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

    /// The Unix sockets of this network namespace.
    pub fn unix_sockets(&self) -> io::Result<Vec<UnixSocket>> {
        let text = fs::read_to_string(self.root.join("net/unix"))?;
        Ok(parse_net_unix(&text))
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

/// Parses /proc/net/unix: `Num RefCount Protocol Flags Type St Inode [Path]`.
fn parse_net_unix(text: &str) -> Vec<UnixSocket> {
    /// `__SO_ACCEPTCON` in the Flags column: a listening socket.
    const ACCEPTCON: u32 = 1 << 16;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.splitn(8, ' ').filter(|f| !f.is_empty());
            let _num = fields.next()?;
            let _refcount = fields.next()?;
            let _protocol = fields.next()?;
            let flags = u32::from_str_radix(fields.next()?, 16).ok()?;
            let sock_type = u16::from_str_radix(fields.next()?, 16).ok()?;
            let _state = fields.next()?;
            let ino = fields.next()?.parse().ok()?;
            let name =
                fields
                    .next()
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|path| match path.strip_prefix('@') {
                        Some(name) => UnixName::Abstract(name.to_owned()),
                        None => UnixName::Path(path.to_owned()),
                    });
            Some(UnixSocket {
                ino,
                name,
                listening: flags & ACCEPTCON != 0,
                sock_type,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_net_unix() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 2218742 /run/rrdcached.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 2218741\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 77 @abstract name\n";
        let socks = parse_net_unix(text);
        assert_eq!(
            socks,
            vec![
                UnixSocket {
                    ino: 2218742,
                    name: Some(UnixName::Path("/run/rrdcached.sock".into())),
                    listening: true,
                    sock_type: 1,
                },
                UnixSocket {
                    ino: 2218741,
                    name: None,
                    listening: false,
                    sock_type: 1,
                },
                UnixSocket {
                    ino: 77,
                    name: Some(UnixName::Abstract("abstract name".into())),
                    listening: false,
                    sock_type: 2,
                },
            ]
        );
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
