//! What /proc says about sockets that existed before sockspy started.
//!
//! The kernel programs only see what happens after they attach. A
//! long-lived connection (collectd's to rrdcached) was made earlier, so at
//! start-up sockspy reads who holds which socket from every process's fd
//! table (the sockets themselves come from sock_diag, `diag.rs`). The same
//! reads, for one process, fill gaps later (a descriptor inherited or
//! passed over a socket before sockspy saw it).

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use crate::capture::events::UnixName;

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

/// A process's socket descriptors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSockets {
    pub pid: u32,
    pub comm: String,
    /// `(fd, socket inode)`.
    pub fds: Vec<(i32, u64)>,
}

/// What /proc/PID/status says about a process's ancestry and user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub parent: u32,
    /// The real user id, as `trace` reports it.
    pub uid: u32,
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
        for pid in self.pids()? {
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

    /// Every process's id.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        Ok(fs::read_dir(&self.root)?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect())
    }

    /// A process's parent and real user, from /proc/PID/status.
    pub fn status(&self, pid: u32) -> Option<Status> {
        let text = fs::read_to_string(self.root.join(pid.to_string()).join("status")).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(Status {
            parent: field("PPid:")?,
            uid: field("Uid:")?,
        })
    }

    /// The named Unix sockets of this network namespace, by inode, from
    /// /proc/net/unix (an accepted socket has its listener's name there,
    /// which otherwise only its `accept` record tells).
    pub fn unix_names(&self) -> io::Result<Vec<(u64, UnixName)>> {
        let text = fs::read_to_string(self.root.join("net/unix"))?;
        Ok(text.lines().skip(1).filter_map(unix_names_line).collect())
    }

    /// A process's cgroup v2 path and its pid as its own pid namespace
    /// sees it (when that is not the initial one): what the kernel's
    /// records say of a process whose records were not seen.
    pub fn container(&self, pid: u32) -> (Option<String>, Option<u32>) {
        let dir = self.root.join(pid.to_string());
        let cgroup = fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|text| crate::table::container::v2_path(&text).map(str::to_owned));
        let nspid = fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|text| nspid_of(&text));
        (cgroup, nspid)
    }

    /// The inode of a process's network namespace (`net:[N]`).
    pub fn netns(&self, pid: u32) -> Option<u32> {
        let target = fs::read_link(self.root.join(pid.to_string()).join("ns/net")).ok()?;
        target
            .to_str()?
            .strip_prefix("net:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }

    /// The addresses of this network namespace's interfaces: IPv4 from
    /// the local routing table (/proc/net/fib_trie), IPv6 from
    /// /proc/net/if_inet6. Empty where neither can be read.
    pub fn local_ips(&self) -> Vec<IpAddr> {
        let read = |name| fs::read_to_string(self.root.join("net").join(name)).unwrap_or_default();
        let mut ips = local_ipv4s(&read("fib_trie"));
        ips.extend(read("if_inet6").lines().filter_map(if_inet6_line));
        ips
    }

    /// A process's command name.
    pub fn comm(&self, pid: u32) -> Option<String> {
        let comm = fs::read_to_string(self.root.join(pid.to_string()).join("comm")).ok()?;
        Some(comm.trim_end_matches('\n').to_owned())
    }
}

/// A line of /proc/net/unix: `Num RefCount Protocol Flags Type St Inode
/// Path`, the path `@`-prefixed for an abstract name and absent for an
/// unnamed socket.
fn unix_names_line(line: &str) -> Option<(u64, UnixName)> {
    // Fields are padded, the path is not: it is all after the inode's space.
    let mut rest = line;
    let mut ino = "";
    for _ in 0..7 {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        (ino, rest) = rest.split_at(end);
    }
    let path = rest.strip_prefix(' ').filter(|path| !path.is_empty())?;
    let name = match path.strip_prefix('@') {
        Some(name) => UnixName::Abstract(name.to_owned()),
        None => UnixName::Path(path.to_owned()),
    };
    Some((ino.parse().ok()?, name))
}

/// The addresses /proc/net/fib_trie lists as `/32 host LOCAL`: each leaf
/// (`|-- 10.0.0.5`) is followed by its routes' lines.
fn local_ipv4s(fib_trie: &str) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    let mut leaf = None;
    for line in fib_trie.lines().map(str::trim) {
        if let Some(ip) = line.strip_prefix("|-- ") {
            leaf = ip.parse::<Ipv4Addr>().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = leaf.take()
            && !ips.contains(&IpAddr::V4(ip))
        {
            ips.push(IpAddr::V4(ip));
        }
    }
    ips
}

/// The address of a /proc/net/if_inet6 line: 32 hex digits first.
fn if_inet6_line(line: &str) -> Option<IpAddr> {
    let hex = line
        .split_whitespace()
        .next()
        .filter(|hex| hex.len() == 32)?;
    let bits = u128::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(bits)))
}

/// The innermost pid of /proc/PID/status's `NSpid:` line, when the
/// process is in a pid namespace below the initial one (more than one pid).
fn nspid_of(status: &str) -> Option<u32> {
    let pids: Vec<u32> = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    if pids.len() > 1 {
        pids.last().copied()
    } else {
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pid_a_namespace_sees() {
        assert_eq!(nspid_of("Name:\tcurl\nNSpid:\t4512\t7\n"), Some(7));
        assert_eq!(nspid_of("NSpid:\t4512\n"), None);
        assert_eq!(nspid_of("Name:\tx\n"), None);
        let procfs = Procfs::default();
        let (cgroup, nspid) = procfs.container(std::process::id());
        assert!(cgroup.is_some_and(|c| c.starts_with('/')));
        assert_eq!(nspid, None, "the tests run in the initial pid namespace");
        assert!(procfs.netns(std::process::id()).is_some());
    }

    #[test]
    fn reads_the_local_addresses() {
        let fib_trie = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.2
              /32 host LOCAL
Local:
           |-- 192.0.2.2
              /32 host LOCAL
";
        assert_eq!(
            local_ipv4s(fib_trie),
            ["127.0.0.1", "192.0.2.2"].map(|ip| ip.parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            if_inet6_line("fd000000000000000000000000000002 04 40 00 82     eth0"),
            Some("fd00::2".parse().unwrap())
        );
        assert_eq!(if_inet6_line("garbage"), None);
        let here = Procfs::default().local_ips();
        assert!(here.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{here:?}");
    }

    #[test]
    fn reads_socket_links() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn reads_unix_socket_names() {
        let lines = [
            "00000000321a002a: 00000002 00000000 00010000 0001 01 479492 /tmp/a b/sock",
            "00000000fedcbe5b: 00000003 00000000 00000000 0001 03   214 @abs@x",
            "000000001cc3bda9: 00000003 00000000 00000000 0001 03   213",
        ];
        let names: Vec<_> = lines.into_iter().filter_map(unix_names_line).collect();
        assert_eq!(
            names,
            [
                (479492, UnixName::Path("/tmp/a b/sock".into())),
                (214, UnixName::Abstract("abs@x".into())),
            ]
        );
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
        let status = procfs.status(std::process::id()).unwrap();
        assert_eq!(status.parent, std::os::unix::process::parent_id());
        // SAFETY: getuid has no preconditions.
        assert_eq!(status.uid, unsafe { libc::getuid() });
        assert!(procfs.pids().unwrap().contains(&std::process::id()));
        let missing = Procfs::at("/nonexistent").scan();
        assert!(missing.is_err());
    }
}
