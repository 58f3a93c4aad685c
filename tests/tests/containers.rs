//! Containers and namespaces: each end's cgroup, container id, network
//! namespace and pid as its own namespace sees it; IP pairing that never
//! mixes up replicas in two network namespaces; Unix paths as each side
//! sees them; `--cgroup` and `--container` decided in the kernel.
//!
//! The scenarios are built twice: from `unshare` (network, mount and pid
//! namespaces) and cgroup directories the tests make and remove, so that
//! any machine with cgroup v2 runs them, and with a real container engine
//! (podman with runc, an image made from busybox and a client of ours).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use sockspy_tests::{
    Trace, first_line, have_program, have_root, kernel_records as records, python3, skip,
    socket_dir, spawn_python, wait_ok,
};

/// A container id for a test's cgroup: 64 hex digits that start with the
/// test's own number, so that two runs never share one.
fn container_id(test: u32) -> String {
    format!("{:08x}{test:08x}{}", std::process::id(), "c0ffee".repeat(8))
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup/unified` on a hybrid
/// hierarchy, `/sys/fs/cgroup` on a pure one).
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let point = mount.split(' ').nth(4)?;
        fs.starts_with("cgroup2 ").then(|| PathBuf::from(point))
    })
}

/// Whether the kernel says which listener a connection not accepted yet
/// waits at (`unix_sock.listener`, Linux 6.10+). Before that a `connect`
/// made before the accept names the listener's name only, not the one
/// the client used (docs/events.md).
fn kernel_names_listeners() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 10)
}

/// A cgroup named as podman names a container's (`libpod-ID`), under a
/// parent of this test's; processes left in it are killed and both
/// directories removed when it is dropped.
struct TestCgroup {
    parent: PathBuf,
    dir: PathBuf,
    /// The path as /proc/PID/cgroup shows it.
    path: String,
    id: String,
}

impl TestCgroup {
    fn new(test: &str, number: u32) -> Self {
        let root = cgroup2_root().expect("a cgroup2 mount");
        let id = container_id(number);
        let parent_name = format!("sockspy-test-{}-{test}", std::process::id());
        let parent = root.join(&parent_name);
        let dir = parent.join(format!("libpod-{id}"));
        fs::create_dir_all(&dir).expect("making a cgroup");
        let path = format!("/{parent_name}/libpod-{id}");
        Self {
            parent,
            dir,
            path,
            id,
        }
    }

    /// `sh -c 'move into the cgroup; exec ARGS'`.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && shift && exec "$@""#)
            .arg(&self.dir)
            .arg("--")
            .args(args);
        command
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|pid| pid.parse::<i32>().ok()) {
            // SAFETY: kill(2) on processes this test put there.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.parent);
    }
}

/// Whether this machine can build the namespace scenarios, saying why not.
fn have_namespaces(test: &str) -> bool {
    if cgroup2_root().is_none() {
        skip(test, "no cgroup2 mount")
    } else if !have_program("unshare") {
        skip(test, "no unshare (util-linux)")
    } else {
        true
    }
}

/// A daemon on the host: listens at argv[1], prints its pid, answers one
/// client (a line per message it reads) until it closes.
const DAEMON: &str = r#"
import os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print(os.getpid(), flush=True)
conn, _ = srv.accept()
while conn.recv(100):
    conn.send(b"ok\n")
conn.close()
"#;

/// A client: connects to argv[1], sends twice, reads the answers.
const CLIENT: &str = r#"
import socket, sys
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
for _ in range(2):
    c.send(b"ping")
    c.recv(100)
c.close()
"#;

/// The events of `pid` (host pid).
fn of(events: &[Value], pid: u64) -> Vec<&Value> {
    events.iter().filter(|ev| ev["pid"] == pid).collect()
}

/// Checks what a client in the test's cgroup and a pid namespace (as
/// pid 1), reaching the daemon's socket at `seen` through a bind mount,
/// and the daemon at `bound` printed, and returns the client's host pid.
fn check_both_ends(
    events: &[Value],
    daemon: u64,
    cgroup: &TestCgroup,
    (bound, seen): (&str, &str),
) -> u64 {
    let accept = of(events, daemon)
        .into_iter()
        .find(|ev| ev["event"] == "accept")
        .unwrap_or_else(|| panic!("no accept of the daemon in {events:#?}"));
    assert_eq!(accept["path"], bound, "{accept}");
    assert!(
        accept.get("container").is_none(),
        "the daemon is on the host: {accept}"
    );
    assert!(accept.get("nspid").is_none(), "{accept}");
    let peer = &accept["peer"];
    let client = peer["pid"].as_u64().unwrap_or_else(|| panic!("{accept}"));
    assert_eq!(peer["container"], cgroup.id.as_str(), "{accept}");
    assert_eq!(peer["cgroup"], cgroup.path.as_str(), "{accept}");
    assert_eq!(peer["nspid"], 1, "{accept}");

    let mine = of(events, client);
    let connect = mine
        .iter()
        .find(|ev| ev["event"] == "connect")
        .unwrap_or_else(|| panic!("no connect of the client {client} in {events:#?}"));
    for ev in &mine {
        assert_eq!(ev["container"], cgroup.id.as_str(), "{ev}");
        assert_eq!(ev["cgroup"], cgroup.path.as_str(), "{ev}");
        assert_eq!(ev["nspid"], 1, "{ev}");
    }
    assert_eq!(connect["peer"]["pid"], daemon, "{connect}");
    assert_eq!(connect["peer"]["path"], bound, "{connect}");
    if kernel_names_listeners() || connect["peer"]["pending"].is_null() {
        assert_eq!(connect["peer"]["via"], seen, "{connect}");
    }
    let send = mine
        .iter()
        .find(|ev| ev["event"] == "send")
        .unwrap_or_else(|| panic!("no send of the client in {mine:#?}"));
    assert_eq!(send["peer"]["pid"], daemon, "{send}");
    assert_eq!(send["peer"]["path"], bound, "{send}");
    assert!(send["peer"].get("container").is_none(), "{send}");
    client
}

/// A client in a cgroup of its own, in new mount and pid namespaces,
/// talks to a host daemon over its socket bind-mounted elsewhere: both
/// ends are named, each path as its side sees it, with the client's
/// container id, cgroup and pid in its namespace.
#[test]
fn a_client_in_namespaces_reaches_a_host_daemon_through_a_bind_mount() {
    let test = "a_client_in_namespaces_reaches_a_host_daemon_through_a_bind_mount";
    if !have_root(test) || !have_namespaces(test) {
        return;
    }
    let dir = socket_dir("ns-bind");
    let host = dir.join("run");
    let view = dir.join("view");
    fs::create_dir_all(&host).unwrap();
    fs::create_dir_all(&view).unwrap();
    let bound = format!("{}/engine.sock", host.display());
    let seen = format!("{}/engine.sock", view.display());
    let cgroup = TestCgroup::new("bind", 1);

    let json = Trace::start(&["--unix", "--json"]).unwrap();
    let text = json.also(&["--unix", "--wide"]).unwrap();
    let mut daemon = spawn_python(DAEMON, &[&bound]);
    let daemon_pid = first_line(&mut daemon)[0];
    let inside = format!(
        "mount --bind {} {} && exec {} -c \"$0\" {seen}",
        host.display(),
        view.display(),
        python3()
    );
    let status = cgroup
        .command(&[
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &inside,
            CLIENT,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "the client failed: {status}");
    wait_ok(&mut daemon);
    let events = json.stop().unwrap().events();
    let text = text.stop().unwrap();

    let client = check_both_ends(&events, daemon_pid, &cgroup, (&bound, &seen));
    // The text: `python3@ID` with the cgroup path, and as the daemon's peer
    // `python3[PID]@ID`.
    let short = &cgroup.id[..6];
    let client_line = text
        .stdout
        .iter()
        .find(|line| line.contains(" connect ") && line.contains(&format!(" {client} ")))
        .unwrap_or_else(|| panic!("no connect line of {client}: {:#?}", text.stdout));
    assert!(
        client_line.contains(&format!("python3@{short} "))
            && client_line.contains(&cgroup.path)
            && client_line.contains(&bound),
        "{client_line}"
    );
    if kernel_names_listeners() {
        assert!(
            client_line.contains(&format!("{bound} (via {seen})")),
            "{client_line}"
        );
    }
    assert!(
        text.stdout
            .iter()
            .any(|line| line.contains(" accept ") && line.contains(&format!("[{client}]@{short} "))),
        "no accept naming the client in its container: {:#?}",
        text.stdout
    );
}

/// A process in its own network namespace (loopback up) that serves on
/// 127.0.0.1:argv[1] and talks to itself from a forked child through the
/// same 4-tuple each time: prints `server client`, waits for a line, talks.
const REPLICA: &str = r#"
import os, socket, sys
port = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.read(r, 1)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("127.0.0.1", port + 1))
    c.connect(("127.0.0.1", port))
    for _ in range(50):
        c.send(b"ping")
        c.recv(4)
    c.close()
    os._exit(0)
print(os.getpid(), child, flush=True)
sys.stdin.readline()
os.write(w, b"g")
conn, _ = srv.accept()
while True:
    data = conn.recv(4)
    if not data:
        break
    conn.send(b"pong")
os.waitpid(child, 0)
"#;

/// Runs Python `script` with argument `port` in a new network namespace
/// whose loopback is up, with piped stdin and stdout.
fn in_new_netns(script: &str, port: &str) -> Child {
    let shell = format!("ip link set lo up && exec {} -c \"$0\" {port}", python3());
    Command::new("unshare")
        .args(["--net", "sh", "-c", &shell, script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two replicas in two network namespaces hold the same loopback 4-tuple
/// conversation at the same time: every event's peer is in its own
/// namespace, and every event says which namespace that is.
#[test]
fn replicas_in_two_network_namespaces_are_never_mixed_up() {
    let test = "replicas_in_two_network_namespaces_are_never_mixed_up";
    if !have_root(test) || !have_namespaces(test) {
        return;
    }
    let port = "47310";
    let trace = Trace::start(&["--tcp", "--json", "--port", port]).unwrap();
    let mut replicas: Vec<(Child, Vec<u64>)> = (0..2)
        .map(|_| {
            let mut child = in_new_netns(REPLICA, port);
            let pids = first_line(&mut child);
            (child, pids)
        })
        .collect();
    for (child, _) in &mut replicas {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    for (child, _) in &mut replicas {
        wait_ok(child);
    }
    let events = trace.stop().unwrap().events();
    let mut namespaces = Vec::new();
    for (_, pids) in &replicas {
        let mine: Vec<&Value> = events
            .iter()
            .filter(|ev| pids.contains(&ev["pid"].as_u64().unwrap_or(0)))
            .collect();
        let data = mine
            .iter()
            .filter(|ev| ev["event"] == "send" || ev["event"] == "recv")
            .count();
        assert!(
            data >= 150,
            "{pids:?}: {data} sends and receives: {mine:#?}"
        );
        let netns = mine[0]["netns"].as_u64().expect("netns on an IP event");
        for ev in &mine {
            assert_eq!(ev["netns"], netns, "{ev}");
            if ["send", "recv", "connect", "accept"].contains(&ev["event"].as_str().unwrap()) {
                let peer = ev["peer"]["pid"].as_u64().unwrap_or(0);
                assert!(
                    pids.contains(&peer) && peer != ev["pid"],
                    "{pids:?}: a peer outside the replica: {ev}"
                );
                assert_eq!(ev["peer"]["netns"], netns, "{ev}");
            }
        }
        namespaces.push(netns);
    }
    assert_ne!(namespaces[0], namespaces[1], "two namespaces");
}

/// In its own network namespace: a server on 127.0.0.1:argv[1] and a
/// client connected to it from 127.0.0.1:argv[1]+1, both held until a
/// line comes on stdin; prints `pid` first.
const HOLD: &str = r#"
import os, socket, sys
port = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen(1)
c = socket.socket()
c.bind(("127.0.0.1", port + 1))
c.connect(("127.0.0.1", port))
s, _ = srv.accept()
print(os.getpid(), flush=True)
sys.stdin.readline()
"#;

/// `pairs` lists the sockets of every network namespace and pairs each
/// replica's identical loopback connection inside its own namespace.
#[test]
fn pairs_keeps_replicas_in_their_network_namespaces() {
    let test = "pairs_keeps_replicas_in_their_network_namespaces";
    if !have_root(test) || !have_namespaces(test) {
        return;
    }
    let port = "47320";
    let mut replicas: Vec<(Child, u64)> = (0..2)
        .map(|_| {
            let mut child = in_new_netns(HOLD, port);
            let pid = first_line(&mut child)[0];
            (child, pid)
        })
        .collect();
    let output = sockspy_tests::run_sockspy(&["pairs", "--tcp", "--port", port, "--json"]);
    for (child, _) in &mut replicas {
        writeln!(child.stdin.as_mut().unwrap(), "done").unwrap();
        wait_ok(child);
    }
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let connections: Vec<&Value> = lines.iter().filter(|l| !l["peer"].is_null()).collect();
    assert_eq!(
        connections.len(),
        2,
        "one connection per replica: {lines:#?}"
    );
    let mut namespaces = Vec::new();
    for (_, pid) in &replicas {
        let line = connections
            .iter()
            .find(|l| l["pid"] == *pid)
            .unwrap_or_else(|| panic!("no connection of replica {pid}: {lines:#?}"));
        assert_eq!(
            line["peer"]["pid"], *pid,
            "paired inside the replica: {line}"
        );
        assert_eq!(line["peer"]["netns"], line["netns"], "{line}");
        namespaces.push(line["netns"].as_u64().expect("netns"));
    }
    assert_ne!(namespaces[0], namespaces[1]);
}

/// One conversation in the test's cgroup, the same one outside it, under
/// `--container`, `--cgroup` and an unfiltered control: each filtered
/// trace keeps exactly the events inside, and the kernel passed it few
/// records besides (the summary's count), where the control got them all.
/// The cgroup is made after the traces started, as a container started
/// while tracing: the kernel learns its verdict from userspace.
#[test]
fn cgroup_and_container_filters_keep_their_events_and_the_kernel_drops_the_rest() {
    let test = "cgroup_and_container_filters_keep_their_events_and_the_kernel_drops_the_rest";
    if !have_root(test) || !have_namespaces(test) {
        return;
    }
    const ROUNDS: &str = "2000";
    let dir = socket_dir("ns-filter");
    let control = Trace::start(&["--unix", "--json"]).unwrap();
    let outside = control
        .also(&["--unix", "--json", "--container", "0000000000"])
        .unwrap();
    // The records every trace gets whatever its filters: fork, exec and
    // exit of every process (other work on the machine makes many).
    let baseline = control
        .also(&["--unix", "--json", "--comm", "no-such-process"])
        .unwrap();
    let cgroup = TestCgroup::new("filter", 2);
    let by_container = control
        .also(&["--unix", "--json", "--container", &cgroup.id[..10]])
        .unwrap();
    let by_cgroup = control
        .also(&["--unix", "--json", "--cgroup", &cgroup.path])
        .unwrap();
    let talk = |path: &Path, command: Command| -> u32 {
        let mut command = command;
        let mut child = command
            .args(["-c", BULK, path.to_str().unwrap(), ROUNDS])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = first_line(&mut child)[0];
        wait_ok(&mut child);
        pid as u32
    };
    let inside = talk(&dir.join("in.sock"), cgroup.command(&[python3()]));
    let host = talk(&dir.join("out.sock"), Command::new(python3()));
    assert_ne!(inside, host);

    let control = control.stop().unwrap();
    let all = records(&control.stderr);
    let rounds: u64 = ROUNDS.parse().unwrap();
    assert!(all >= 8 * rounds, "control: {all} records");
    let control_events = control.events();
    let count = |events: &[Value], pid: u32| events.iter().filter(|ev| ev["pid"] == pid).count();
    let inside_events = count(&control_events, inside);
    assert!(inside_events as u64 >= 4 * rounds);
    for (trace, what) in [(by_container, "--container"), (by_cgroup, "--cgroup")] {
        let finished = trace.stop().unwrap();
        assert!(finished.status.success(), "{}", finished.stderr);
        let events = finished.events();
        assert!(
            events.iter().all(|ev| ev["pid"] == inside),
            "{what} kept another process's events"
        );
        assert_eq!(count(&events, inside), inside_events, "{what}");
        let kept = records(&finished.stderr);
        assert!(
            kept < all - 3 * rounds,
            "{what}: {kept} of the control's {all} records reached userspace"
        );
    }
    let outside = outside.stop().unwrap();
    let baseline = records(&baseline.stop().unwrap().stderr);
    assert!(outside.events().is_empty());
    // The first records of the cgroup made while tracing wake the reader
    // and reach userspace until it has decided; the rest, nearly all of
    // its 4 * ROUNDS, stop in the kernel.
    assert!(
        records(&outside.stderr) < baseline + rounds / 4,
        "an excluded cgroup's records reached userspace ({baseline} records of no socket): {}",
        outside.stderr
    );
}

/// Listens at argv[1], connects to itself and exchanges argv[2] rounds;
/// prints its pid first.
const BULK: &str = r#"
import os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print(os.getpid(), flush=True)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
s, _ = srv.accept()
for _ in range(int(sys.argv[2])):
    c.send(b"ping")
    s.recv(4)
    s.send(b"pong")
    c.recv(4)
"#;

/// An image for podman from local files: a static busybox and our
/// connect_at_once client with the libraries it links; `None` when
/// podman cannot build or run it here.
fn podman_image(dir: &Path) -> Option<String> {
    let name = format!("localhost/sockspy-test-{}:1", std::process::id());
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).ok()?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).ok()?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).ok()?;
    let client = env!("CARGO_BIN_EXE_connect_at_once");
    fs::copy(client, rootfs.join("bin/client")).ok()?;
    let ldd = Command::new("ldd").arg(client).output().ok()?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        let to = rootfs.join(lib.trim_start_matches('/'));
        fs::create_dir_all(to.parent()?).ok()?;
        fs::copy(lib, &to).ok()?;
    }
    let tar = dir.join("rootfs.tar");
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .ok()?;
    let imported = Command::new("podman")
        .arg("import")
        .arg(&tar)
        .arg(&name)
        .stdout(Stdio::null())
        .status()
        .ok()?;
    (tarred.success() && imported.success()).then_some(name)
}

/// podman with runc runs a container whose client talks to a host daemon
/// over the daemon's socket bind-mounted into it: both ends are named,
/// each path as its side sees it, with the container's id (the one podman
/// reports) and the client's pid inside it.
#[test]
fn a_podman_container_talks_to_a_host_daemon() {
    let test = "a_podman_container_talks_to_a_host_daemon";
    if !have_root(test) {
        return;
    }
    if !have_program("podman") || !have_program("runc") {
        skip(
            test,
            "podman and runc are not installed (cargo xtask setup installs them)",
        );
        return;
    }
    let dir = socket_dir("podman");
    let image = podman_image(&dir).expect("building a podman image from local files");
    let host = dir.join("run");
    fs::create_dir_all(&host).unwrap();
    let bound = format!("{}/engine.sock", host.display());
    let seen = "/var/run/engine/engine.sock";
    let cidfile = dir.join("cid");

    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    let mut daemon = spawn_python(DAEMON, &[&bound]);
    let daemon_pid = first_line(&mut daemon)[0];
    let run = Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "--network", "none"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg("--cidfile")
        .arg(&cidfile)
        .arg("-v")
        .arg(format!("{}:/var/run/engine", host.display()))
        .args([&image, "/bin/client", "stream", seen])
        .output()
        .unwrap();
    let _ = Command::new("podman")
        .args(["rmi", "-f", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        run.status.success(),
        "podman run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    wait_ok(&mut daemon);
    let events = trace.stop().unwrap().events();
    let id = fs::read_to_string(&cidfile).unwrap().trim().to_owned();
    assert_eq!(id.len(), 64, "podman's container id: {id}");

    let accept = of(&events, daemon_pid)
        .into_iter()
        .find(|ev| ev["event"] == "accept")
        .unwrap_or_else(|| panic!("no accept of the daemon in {events:#?}"));
    assert_eq!(accept["path"], bound.as_str(), "{accept}");
    let peer = &accept["peer"];
    assert_eq!(peer["container"], id.as_str(), "{accept}");
    assert!(
        peer["cgroup"].as_str().is_some_and(|c| c.contains(&id)),
        "{accept}"
    );
    // The container's first process, as the container sees it.
    assert_eq!(peer["nspid"], 1, "{accept}");
    let client = peer["pid"].as_u64().unwrap();
    let connect = of(&events, client)
        .into_iter()
        .find(|ev| ev["event"] == "connect")
        .unwrap_or_else(|| panic!("no connect of the client in {events:#?}"));
    assert_eq!(connect["container"], id.as_str(), "{connect}");
    assert_eq!(connect["nspid"], 1, "{connect}");
    assert_eq!(connect["comm"], "client", "{connect}");
    assert_eq!(connect["peer"]["pid"], daemon_pid, "{connect}");
    assert_eq!(connect["peer"]["path"], bound.as_str(), "{connect}");
    assert_eq!(connect["peer"]["via"], seen, "{connect}");
}
