//! Which events the user asked to see: `--pid`, `--pid-tree`, `--comm`,
//! `--path`, `--uid`, `--port`, `--cgroup`, `--container` and the family
//! flags.
//!
//! Kinds combine with AND, values of one kind with OR: `--pid 1 --pid 2
//! --port 80` keeps events of process 1 or 2 that involve port 80. What
//! the kernel programs can decide (families, processes, users, exact names,
//! ports of connected sockets, cgroups) they decide too, so that unrelated traffic
//! costs next to nothing; everything is decided again here, exactly, after
//! the resolver has seen what came through.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::Path,
};

use sockspy_common::{
    COMM_LEN, FAMILY_UNIX, FILTER_CGROUP, FILTER_COMM, FILTER_PID, FILTER_PID_TREE, FILTER_PORT,
    FILTER_UID, wanted,
};

use crate::{
    capture::events::UnixName,
    capture::loader::{CgroupVerdicts, KernelFilter},
    idmap::IdMap,
    table::container::{self, Cgroup, Cgroups, Context},
    table::resolve::Event,
};

/// The filters as given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// `FAMILY_*` and `PROTO_*` bits.
    pub families: u32,
    pub ports: Vec<u16>,
    pub pids: Vec<u32>,
    /// Processes whose descendants (also ones forked later) are kept too.
    pub pid_trees: Vec<u32>,
    /// Exact names or globs (`*`, `?`) of the process command.
    pub comms: Vec<String>,
    /// Globs of a Unix socket's name, on either end.
    pub paths: Vec<String>,
    pub uids: Vec<u32>,
    /// Prefixes of the process's cgroup path.
    pub cgroups: Vec<String>,
    /// Prefixes of the process's container id.
    pub containers: Vec<String>,
}

impl Selection {
    /// The processes `--pid` and `--pid-tree` name (without descendants).
    fn named_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.pids.iter().chain(&self.pid_trees).copied()
    }

    /// What the kernel programs can decide by themselves: the families,
    /// the `FILTER_*` bits and their maps. Processes (`--pid`,
    /// `--pid-tree`) and users (`--uid`) always; names (`--comm`) when none
    /// is a glob; ports (`--port`) for connected IP sockets, and no Unix
    /// sockets at all under `--port`, since they have no ports to match.
    /// The rest, and the exact `--pid` semantics (no children), stay with
    /// [`Filter`].
    pub fn kernel(&self) -> KernelFilter {
        let mut filter = KernelFilter {
            families: self.families,
            pids: self.named_pids().collect(),
            uids: self.uids.clone(),
            ports: self.ports.clone(),
            ..KernelFilter::default()
        };
        if !filter.pids.is_empty() {
            filter.bits |= FILTER_PID;
        }
        if !self.pid_trees.is_empty() {
            filter.bits |= FILTER_PID_TREE;
        }
        if !self.uids.is_empty() {
            filter.bits |= FILTER_UID;
        }
        if !self.ports.is_empty() {
            filter.bits |= FILTER_PORT;
            filter.families &= !FAMILY_UNIX;
        }
        if !self.comms.is_empty() && !self.comms.iter().any(|c| is_glob(c)) {
            filter.bits |= FILTER_COMM;
            filter.comms = self.comms.iter().map(|c| comm_key(c)).collect();
        }
        if self.selects_cgroups() {
            filter.bits |= FILTER_CGROUP;
            filter.cgroups = Cgroups::new()
                .all()
                .map(|cgroup| (cgroup.id, u8::from(self.keeps_cgroup(cgroup))))
                .collect();
        }
        filter
    }

    /// Whether `--cgroup` or `--container` is given.
    fn selects_cgroups(&self) -> bool {
        !self.cgroups.is_empty() || !self.containers.is_empty()
    }

    /// Whether `--cgroup` and `--container` keep the processes of `cgroup`.
    fn keeps_cgroup(&self, cgroup: &Cgroup) -> bool {
        (self.cgroups.is_empty() || container::path_matches(&self.cgroups, cgroup))
            && (self.containers.is_empty()
                || container::container_matches(&self.containers, cgroup))
    }
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// A name as the kernel stores it: at most 15 bytes, NUL-padded.
fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0; COMM_LEN];
    let bytes = &name.as_bytes()[..name.len().min(COMM_LEN - 1)];
    key[..bytes.len()].copy_from_slice(bytes);
    key
}

/// Whether process name `comm` (as the kernel cut it) is `pattern`.
fn comm_matches(pattern: &str, comm: &str) -> bool {
    if is_glob(pattern) {
        glob(pattern, comm)
    } else {
        comm_key(pattern) == comm_key(comm)
    }
}

/// A [`Selection`] being applied: it learns the descendants of
/// `--pid-tree` processes and the identity of `--path` files.
#[derive(Debug)]
pub struct Filter {
    select: Selection,
    /// `--pid` and `--pid-tree` processes and the descendants seen so far.
    pids: HashSet<u32>,
    /// (device, inode) of each `--path` that names an existing file: a
    /// socket reached through a symlink or a bind mount is the same file.
    files: HashSet<(u64, u64)>,
    /// Socket names already looked up on disk.
    seen: HashMap<String, Option<(u64, u64)>>,
    /// `--cgroup`/`--container`'s verdict on each cgroup id seen.
    cgroup_verdicts: IdMap<u64, bool>,
    /// The kernel's map of those verdicts, told of each cgroup made since
    /// it was filled, so that it drops their events from then on.
    kernel_verdicts: Option<CgroupVerdicts>,
}

impl Filter {
    pub fn new(select: Selection) -> Self {
        let pids = select.named_pids().collect();
        let files = select
            .paths
            .iter()
            .filter_map(|path| file_identity(Path::new(path)))
            .collect();
        Self {
            select,
            pids,
            files,
            seen: HashMap::new(),
            cgroup_verdicts: IdMap::default(),
            kernel_verdicts: None,
        }
    }

    /// Tells `verdicts`, the kernel's map, of each cgroup the filter
    /// decides on from now on.
    pub fn tell_kernel(&mut self, verdicts: CgroupVerdicts) {
        self.kernel_verdicts = Some(verdicts);
    }

    /// A process forked: a child of a `--pid-tree` process joins it.
    pub fn forked(&mut self, parent: u32, child: u32) {
        if !self.select.pid_trees.is_empty() && self.pids.contains(&parent) {
            self.pids.insert(child);
        }
    }

    /// Whether `event` is one the user asked for.
    pub fn keeps(&mut self, event: &Event) -> bool {
        self.keeps_process(event.pid, event.uid, &event.comm)
            && self.keeps_context(&event.context)
            && self.keeps_socket(
                event.family,
                event.protocol,
                [event.local, event.remote],
                [
                    event.path.as_deref(),
                    event.peer.as_ref().and_then(|p| p.path.as_deref()),
                ],
            )
    }

    /// Whether any process filter (`--pid`, `--pid-tree`, `--uid`,
    /// `--comm`, `--cgroup`, `--container`) is given.
    pub fn selects_processes(&self) -> bool {
        !self.pids.is_empty()
            || !self.select.uids.is_empty()
            || !self.select.comms.is_empty()
            || self.select.selects_cgroups()
    }

    /// Whether `--cgroup` and `--container` keep a process in `context`
    /// (one whose cgroup is not known, they do not). A verdict is made once
    /// per cgroup, and the kernel told of it.
    pub fn keeps_context(&mut self, context: &Context) -> bool {
        if !self.select.selects_cgroups() {
            return true;
        }
        let Some(cgroup) = context.cgroup.as_deref() else {
            return false;
        };
        if cgroup.id == 0 {
            // Read from a recording: no id to keep the verdict by.
            return self.select.keeps_cgroup(cgroup);
        }
        if let Some(&verdict) = self.cgroup_verdicts.get(&cgroup.id) {
            return verdict;
        }
        let verdict = self.select.keeps_cgroup(cgroup);
        self.cgroup_verdicts.insert(cgroup.id, verdict);
        if let Some(kernel) = &mut self.kernel_verdicts {
            kernel.insert(cgroup.id, u8::from(verdict));
        }
        verdict
    }

    /// Whether the process filters keep process `pid` of user `uid` named `comm`.
    pub fn keeps_process(&self, pid: u32, uid: u32, comm: &str) -> bool {
        let select = &self.select;
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (select.uids.is_empty() || select.uids.contains(&uid))
            && (select.comms.is_empty() || select.comms.iter().any(|c| comm_matches(c, comm)))
    }

    /// Whether the socket filters (family, `--port`, `--path`) keep a
    /// socket of `family` and `protocol` whose IP ends or Unix names (its
    /// own and its peer's) are `ends` and `names`.
    pub fn keeps_socket(
        &mut self,
        family: u16,
        protocol: u16,
        ends: [Option<SocketAddr>; 2],
        names: [Option<&UnixName>; 2],
    ) -> bool {
        let select = &self.select;
        wanted(select.families, family, protocol)
            && (select.ports.is_empty()
                || ends
                    .iter()
                    .flatten()
                    .any(|addr| select.ports.contains(&addr.port())))
            && (select.paths.is_empty() || self.path_matches(names))
    }

    /// Either name matches a `--path` glob, or names the same file.
    fn path_matches(&mut self, names: [Option<&UnixName>; 2]) -> bool {
        names.into_iter().flatten().any(|name| {
            let name = name.to_string();
            self.select.paths.iter().any(|pattern| glob(pattern, &name))
                || (!self.files.is_empty() && self.same_file(&name))
        })
    }

    fn same_file(&mut self, name: &str) -> bool {
        let identity = *self
            .seen
            .entry(name.to_owned())
            .or_insert_with(|| file_identity(Path::new(name)));
        identity.is_some_and(|id| self.files.contains(&id))
    }
}

/// Device and inode of the file at `path` (following symlinks).
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    if !path.is_absolute() {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Shell-style match: `*` any run, `?` any one character; the rest literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use sockspy_common::{FAMILY_INET, FAMILY_INET6, PROTO_TCP, PROTO_UDP};

    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*rrdcached*", "/run/rrdcached.sock"));
        assert!(glob("collectd", "collectd"));
        assert!(!glob("collectd", "collectd2"));
        assert!(glob("coll?ctd", "collectd"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("@*", "@abstract"));
    }

    #[test]
    fn the_kernel_takes_what_it_can_decide() {
        let all = FAMILY_UNIX | FAMILY_INET | FAMILY_INET6 | PROTO_TCP | PROTO_UDP;
        let select = Selection {
            families: all,
            pids: vec![1],
            pid_trees: vec![2],
            comms: vec!["collectd".into(), "a-very-long-process-name".into()],
            uids: vec![0],
            ..Selection::default()
        };
        let filter = select.kernel();
        assert_eq!(
            filter.bits,
            FILTER_PID | FILTER_PID_TREE | FILTER_COMM | FILTER_UID
        );
        assert_eq!(filter.families, all);
        assert_eq!(filter.pids, [1, 2]);
        assert_eq!(filter.uids, [0]);
        assert_eq!(&filter.comms[1], b"a-very-long-pro\0");
        assert!(comm_matches("a-very-long-process-name", "a-very-long-pro"));
        let globbed = Selection {
            comms: vec!["collectd".into(), "rrd*".into()],
            ..Selection::default()
        };
        assert_eq!(globbed.kernel().bits, 0, "a glob leaves names to userspace");
        let ported = Selection {
            families: all,
            ports: vec![80],
            ..Selection::default()
        };
        let filter = ported.kernel();
        assert_eq!(filter.bits, FILTER_PORT);
        assert_eq!(filter.ports, [80]);
        assert_eq!(
            filter.families,
            all & !FAMILY_UNIX,
            "Unix sockets have no ports"
        );
    }

    #[test]
    fn cgroups_and_containers_are_decided_once_per_cgroup() {
        use std::rc::Rc;
        let id = "3f2a9c0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3";
        let select = Selection {
            cgroups: vec!["/machine.slice".into()],
            containers: vec!["3f2a".into()],
            ..Selection::default()
        };
        assert_eq!(select.kernel().bits, FILTER_CGROUP);
        let mut filter = Filter::new(select);
        assert!(filter.selects_processes());
        let context = |id: u64, path: &str| Context {
            cgroup: Some(Rc::new(Cgroup::new(id, path))),
            ..Context::default()
        };
        let inside = context(1, &format!("/machine.slice/libpod-{id}.scope"));
        assert!(filter.keeps_context(&inside));
        assert!(!filter.keeps_context(&context(2, &format!("/system.slice/docker-{id}.scope"))));
        assert!(!filter.keeps_context(&context(3, "/machine.slice/machine-web.scope")));
        assert!(
            !filter.keeps_context(&Context::default()),
            "an unknown cgroup"
        );
        assert_eq!(filter.cgroup_verdicts.len(), 3);
        // A recording's cgroup has no id: decided by its path each time.
        assert!(filter.keeps_context(&context(0, &format!("/machine.slice/libpod-{id}"))));
        assert!(Filter::new(Selection::default()).keeps_context(&Context::default()));
    }

    #[test]
    fn pid_trees_grow_with_forks() {
        let mut filter = Filter::new(Selection {
            pid_trees: vec![10],
            ..Selection::default()
        });
        filter.forked(10, 11);
        filter.forked(11, 12);
        filter.forked(99, 100);
        assert!(filter.pids.contains(&12));
        assert!(!filter.pids.contains(&100));
        let mut plain = Filter::new(Selection {
            pids: vec![10],
            ..Selection::default()
        });
        plain.forked(10, 11);
        assert!(!plain.pids.contains(&11), "--pid does not follow children");
    }

    #[test]
    fn a_path_is_also_its_file() {
        let dir = std::env::temp_dir().join(format!("sockspy-filter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real.sock");
        std::fs::write(&real, "").unwrap();
        let link = dir.join("link.sock");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut filter = Filter::new(Selection {
            paths: vec![link.to_str().unwrap().to_owned()],
            ..Selection::default()
        });
        assert!(filter.same_file(real.to_str().unwrap()));
        assert!(!filter.same_file("/nonexistent.sock"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
