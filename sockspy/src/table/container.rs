//! Which container each end is in: cgroup path, container id, namespaces.
//!
//! Takes the cgroup v2 id the kernel put in each record (and, for a
//! process known only from /proc, its `/proc/PID/cgroup`) and hands on a
//! [`Cgroup`]: its path as `/proc/PID/cgroup` shows it on the host, and
//! the container and Kubernetes pod that path names. A cgroup's id is the
//! inode number of its directory in the cgroup2 mount, so the paths come
//! from walking that mount, once at start-up and again (at most every
//! [`REWALK_EVERY`]) when a record names a cgroup made since; every event
//! after that is a map lookup.
//!
//! Container ids are read from the names the common engines give their
//! cgroups: docker (`docker-ID.scope`, `/docker/ID`), containerd
//! (`cri-containerd-ID.scope`), CRI-O (`crio-ID.scope`), podman
//! (`libpod-ID.scope`, `/libpod_parent/libpod-ID`), Kubernetes with the
//! cgroupfs driver (`/kubepods/QOS/podUID/ID`) and systemd-nspawn
//! (`machine-NAME.scope`); a Kubernetes pod slice (`...-podUID.slice`,
//! `podUID`) names the pod.
//!
//! Addresses repeat across network namespaces, so tables that pair IP
//! sockets by address keep them per namespace ([`NsTable`]).

use std::{
    collections::HashMap,
    fs,
    hash::Hash,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use crate::idmap::IdMap;

/// A cgroup v2 directory and the container it belongs to, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// The cgroup id (its directory's inode number).
    pub id: u64,
    /// Path below the cgroup2 mount, as `/proc/PID/cgroup` shows it (`/` for the root).
    pub path: Rc<str>,
    /// The container id (64 hex digits for the OCI engines, the machine
    /// name for systemd-nspawn); `None` on the host.
    pub container: Option<Rc<str>>,
    /// A Kubernetes pod's uid.
    pub pod: Option<Rc<str>>,
}

impl Cgroup {
    /// A cgroup of `id` at `path`, with the container and pod its path names.
    pub fn new(id: u64, path: &str) -> Self {
        let (container, pod) = parse(path);
        Self {
            id,
            path: path.into(),
            container: container.map(Into::into),
            pod: pod.map(Into::into),
        }
    }

    /// The container id as the text output shows it: the first
    /// [`SHORT_ID`] digits of a hex id, a name whole.
    pub fn short_container(&self) -> Option<&str> {
        let id = self.container.as_deref()?;
        Some(if is_hex_id(id) { &id[..SHORT_ID] } else { id })
    }
}

/// Digits of a container id the text output shows (`curl[4512]@3f2a9c`).
pub const SHORT_ID: usize = 6;

/// Where one end of an event is: its process's cgroup and pid as its own
/// pid namespace sees it, its socket's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub cgroup: Option<Rc<Cgroup>>,
    /// The network namespace's inode (IP sockets).
    pub netns: Option<u32>,
    /// The pid inside the process's pid namespace, when that is not the initial one.
    pub nspid: Option<u32>,
}

impl Context {
    /// The short container id, if the process is in a container.
    pub fn short_container(&self) -> Option<&str> {
        self.cgroup.as_deref()?.short_container()
    }
}

/// Sockets by address, kept per network namespace: the same address can
/// be in use in many (identical replicas), and nearly always is in one.
#[derive(Debug)]
pub struct NsTable<K> {
    map: HashMap<K, Vec<(u32, u64)>>,
}

impl<K> Default for NsTable<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> NsTable<K> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Enters `ino` at `key` in namespace `netns`, in place of another
    /// socket there (0: not known, which replaces and matches any).
    pub fn insert(&mut self, key: K, netns: u32, ino: u64) {
        let entries = self.map.entry(key).or_default();
        entries.retain(|&(ns, _)| ns != netns && ns != 0 && netns != 0);
        entries.push((netns, ino));
    }

    /// Takes `ino` out of `key`, if it is there.
    pub fn remove(&mut self, key: &K, ino: u64) {
        if let Some(entries) = self.map.get_mut(key) {
            entries.retain(|&(_, i)| i != ino);
            if entries.is_empty() {
                self.map.remove(key);
            }
        }
    }

    /// The socket at `key` in namespace `netns`; with `across`, else the
    /// one socket at `key` in any namespace, if only one has it (a veth
    /// pair's other end).
    pub fn find(&self, key: &K, netns: u32, across: bool) -> Option<u64> {
        let entries = self.map.get(key)?;
        let same = entries
            .iter()
            .find(|&&(ns, _)| ns == netns || ns == 0 || netns == 0);
        match (same, entries.as_slice()) {
            (Some(&(_, ino)), _) => Some(ino),
            (None, [(_, ino)]) if across => Some(*ino),
            _ => None,
        }
    }
}

/// The shortest time between two walks of the cgroup tree for the same id
/// not found: a walk costs a directory read per cgroup. A new id has the
/// tree walked at once (a container just started: the sooner it is named,
/// the sooner a filter tells the kernel about it).
const REWALK_EVERY: Duration = Duration::from_millis(200);

/// The cgroup tree of this machine, by id.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// The cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
    /// a hybrid hierarchy); `None` when there is none.
    root: Option<PathBuf>,
    by_id: IdMap<u64, Rc<Cgroup>>,
    /// Ids a walk did not find, and when it was.
    missed: IdMap<u64, Instant>,
}

impl Cgroups {
    /// The tree of the cgroup2 mount this process sees, walked once.
    pub fn new() -> Self {
        let root = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| cgroup2_mount(&text));
        Self::at(root)
    }

    /// The tree below `root` (tests point it at a directory of their own).
    pub fn at(root: Option<PathBuf>) -> Self {
        let mut cgroups = Self {
            root,
            ..Self::default()
        };
        cgroups.walk();
        cgroups
    }

    /// The cgroup of `id`; an id not seen before has the tree walked
    /// again, unless a walk missed it a moment ago.
    pub fn get(&mut self, id: u64) -> Option<Rc<Cgroup>> {
        if id == 0 {
            return None;
        }
        if let Some(cgroup) = self.by_id.get(&id) {
            return Some(Rc::clone(cgroup));
        }
        if self
            .missed
            .get(&id)
            .is_some_and(|last| last.elapsed() < REWALK_EVERY)
        {
            return None;
        }
        self.walk();
        match self.by_id.get(&id) {
            Some(cgroup) => Some(Rc::clone(cgroup)),
            None => {
                // Bounded: ids missed long ago are walked for again anyway.
                self.missed.retain(|_, last| last.elapsed() < REWALK_EVERY);
                self.missed.insert(id, Instant::now());
                None
            }
        }
    }

    /// The cgroup at `path` (as `/proc/PID/cgroup` has it).
    pub fn at_path(&mut self, path: &str) -> Option<Rc<Cgroup>> {
        let root = self.root.as_ref()?;
        let id = fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        if let Some(cgroup) = self.by_id.get(&id) {
            return Some(Rc::clone(cgroup));
        }
        let cgroup = Rc::new(Cgroup::new(id, path));
        self.by_id.insert(id, Rc::clone(&cgroup));
        Some(cgroup)
    }

    /// Every cgroup on the machine now.
    pub fn all(&mut self) -> impl Iterator<Item = &Rc<Cgroup>> {
        self.walk();
        self.by_id.values()
    }

    /// Reads the whole tree again, keeping the cgroups already known
    /// (an id is never reused while the machine is up).
    fn walk(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![(root, String::from("/"))];
        while let Some((dir, path)) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            self.by_id
                .entry(meta.ino())
                .or_insert_with(|| Rc::new(Cgroup::new(meta.ino(), &path)));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let child = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((entry.path(), child));
                }
            }
        }
    }
}

/// The mount point of the cgroup2 file system in `/proc/self/mountinfo`
/// text: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE ...`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let point = mount.split(' ').nth(4)?;
        // Spaces and the like are octal escapes (`\040`).
        Some(PathBuf::from(unescape_octal(point)))
    })
}

fn unescape_octal(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = text
                .get(i + 1..i + 4)
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path in `/proc/PID/cgroup` text (its `0::` line).
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// Whether `id` is an OCI container id: 64 lowercase hex digits.
fn is_hex_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Engines' prefixes of a container's cgroup name (before the id).
const ENGINE_PREFIXES: [&str; 6] = [
    "docker-",
    "libpod-",
    "crio-",
    "cri-containerd-",
    "containerd-",
    "",
];

/// The container id and pod uid a cgroup path names, innermost first.
pub fn parse(path: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for part in path.split('/').rev().filter(|p| !p.is_empty()) {
        if container.is_none() {
            container = container_id(part);
        }
        if pod.is_none() {
            pod = pod_uid(part);
        }
    }
    (container, pod)
}

/// A container id from one cgroup directory name.
fn container_id(part: &str) -> Option<String> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if let Some(id) = ENGINE_PREFIXES
        .iter()
        .filter_map(|prefix| name.strip_prefix(prefix))
        .find(|id| is_hex_id(id))
    {
        return Some(id.to_owned());
    }
    // systemd-nspawn: machine-NAME.scope, NAME escaped as systemd does.
    let machine = part.strip_prefix("machine-")?.strip_suffix(".scope")?;
    (!machine.is_empty()).then(|| unescape_systemd(machine))
}

/// A Kubernetes pod uid from one cgroup directory name: `pod<uid>` (the
/// cgroupfs driver) or `kubepods-<qos>-pod<uid>.slice` (systemd's, with
/// the uid's dashes as underscores).
fn pod_uid(part: &str) -> Option<String> {
    let uid = match part.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods") => slice.rsplit_once("-pod")?.1,
        Some(_) => return None,
        None => part.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    let is_uid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    is_uid.then_some(uid)
}

/// Undoes systemd's unit name escaping (`\x2d` for `-`).
fn unescape_systemd(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("\\x") {
        out.push_str(&rest[..at]);
        match rest
            .get(at + 2..at + 4)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push_str("\\x");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a `--cgroup` or `--container` prefix is compared with.
pub fn path_matches(prefixes: &[String], cgroup: &Cgroup) -> bool {
    prefixes.iter().any(|p| cgroup.path.starts_with(p.as_str()))
}

/// Whether a `--container` prefix names `cgroup`'s container.
pub fn container_matches(prefixes: &[String], cgroup: &Cgroup) -> bool {
    cgroup
        .container
        .as_deref()
        .is_some_and(|id| prefixes.iter().any(|p| id.starts_with(p.as_str())))
}

/// The root of a cgroup2 mount, for tests that build a tree of their own.
#[cfg(test)]
fn tree(name: &str, dirs: &[&str]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("sockspy-cg-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for dir in dirs {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3";

    #[test]
    fn engines_name_their_containers() {
        let cases = [
            (format!("/libpod_parent/libpod-{ID}"), Some(ID), None),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(ID),
                None,
            ),
            (format!("/system.slice/docker-{ID}.scope"), Some(ID), None),
            (format!("/docker/{ID}"), Some(ID), None),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{ID}.scope"
                ),
                Some(ID),
                Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789"),
            ),
            (
                format!("/kubepods/besteffort/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{ID}"),
                Some(ID),
                Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789"),
            ),
            (format!("/system.slice/crio-{ID}.scope"), Some(ID), None),
            (
                "/machine.slice/machine-web\\x2d1.scope/payload".to_owned(),
                Some("web-1"),
                None,
            ),
            (format!("/libpod_parent/libpod-conmon-{ID}"), None, None),
            (
                "/user.slice/user-0.slice/session-3.scope".to_owned(),
                None,
                None,
            ),
            ("/".to_owned(), None, None),
        ];
        for (path, container, pod) in cases {
            let (c, p) = parse(&path);
            assert_eq!(c.as_deref(), container, "{path}");
            assert_eq!(p.as_deref(), pod, "{path}");
        }
        let cgroup = Cgroup::new(7, &format!("/docker/{ID}"));
        assert_eq!(cgroup.short_container(), Some("3f2a9c"));
        let nspawn = Cgroup::new(8, "/machine.slice/machine-web.scope");
        assert_eq!(nspawn.short_container(), Some("web"));
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let spaced = "30 1 0:26 / /mnt/c\\040g rw - cgroup2 none rw";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/c g")));
        assert_eq!(cgroup2_mount("garbage\n\n - "), None);
        assert_eq!(
            v2_path("12:cpu:/x\n0::/libpod_parent/libpod-1\n"),
            Some("/libpod_parent/libpod-1")
        );
    }

    #[test]
    fn ids_are_directory_inodes_and_new_ones_are_found() {
        let root = tree("walk", &["a/b"]);
        let mut cgroups = Cgroups::at(Some(root.clone()));
        let b = fs::metadata(root.join("a/b")).unwrap().ino();
        assert_eq!(cgroups.get(b).unwrap().path.as_ref(), "/a/b");
        let top = fs::metadata(&root).unwrap().ino();
        assert_eq!(cgroups.get(top).unwrap().path.as_ref(), "/");
        fs::create_dir_all(root.join(format!("c/libpod-{ID}"))).unwrap();
        let c = fs::metadata(root.join(format!("c/libpod-{ID}")))
            .unwrap()
            .ino();
        let found = cgroups.get(c).expect("a cgroup made since is found");
        assert_eq!(found.container.as_deref(), Some(ID));
        assert_eq!(cgroups.at_path("/a").unwrap().path.as_ref(), "/a");
        assert!(cgroups.get(u64::MAX).is_none());
        assert!(cgroups.missed.contains_key(&u64::MAX));
        assert_eq!(cgroups.all().count(), 5);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn filters_match_prefixes() {
        let cgroup = Cgroup::new(1, &format!("/libpod_parent/libpod-{ID}"));
        assert!(path_matches(&["/libpod_parent".into()], &cgroup));
        assert!(!path_matches(&["/system.slice".into()], &cgroup));
        assert!(container_matches(&["3f2a".into()], &cgroup));
        assert!(!container_matches(&["3f2b".into()], &cgroup));
        assert!(!container_matches(&["".into()], &Cgroup::new(2, "/")));
    }
}
