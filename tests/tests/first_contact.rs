//! First contact: clients that connect and write at once, before the
//! server has accepted, get the server named as their peer, every time.
//!
//! The server sleeps 200-500 ms before each round of accepts, so most
//! clients connect, send twice and wait with their connection still in the
//! listener's accept queue; many records of the client and the server's
//! `accept` are then written on two CPUs at nearly the same moment. Every
//! client event (connect, send, recv) must name the server process and
//! its socket's name or address, and say `pending` exactly while nobody
//! has accepted. Each scenario runs on an idle machine and again while a
//! flood of socket traffic keeps the other CPU (and the tracer) busy.

use std::{
    collections::{BTreeSet, HashMap},
    io::Write,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sockspy_tests::{Trace, first_line, have_program, have_root, python3, signal, socket_dir};

/// The server: listens at ARGV[2] (kind ARGV[1]), forks ARGV[3] workers
/// when more than one (the parent lets go of the listener, so the workers
/// alone hold it), prints `[pids] fd`, then each worker sleeps 200-500 ms
/// before every round of accepts, answers `ok` to each client and waits
/// for it to close.
const SERVER: &str = r#"
import os, random, select, socket, sys, time
kind, address, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind in ('stream', 'seqpacket'):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if kind == 'stream' else socket.SOCK_SEQPACKET)
    srv.bind('\0' + address[1:] if address.startswith('@') else address)
else:
    srv = socket.socket(socket.AF_INET if kind == 'tcp4' else socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(('127.0.0.1' if kind == 'tcp4' else '::1', int(address)))
srv.listen(1024)
srv.setblocking(False)

def serve():
    while True:
        time.sleep(random.uniform(0.2, 0.5))
        # Then everything queued, and for 100 ms whatever comes in: those
        # clients race their first send against the accept.
        while True:
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                if not select.select([srv], [], [], 0.1)[0]:
                    break
                continue
            conn.setblocking(True)
            conn.settimeout(10)
            try:
                conn.recv(100)
                conn.sendall(b'ok\n')
                while conn.recv(100):
                    pass
            except OSError:
                pass
            conn.close()

if workers == 1:
    print(os.getpid(), srv.fileno(), flush=True)
    serve()
pids = []
for _ in range(workers):
    pid = os.fork()
    if pid == 0:
        serve()
    pids.append(pid)
fd = srv.fileno()
srv.close()
print(*pids, fd, flush=True)
while True:
    time.sleep(60)
"#;

/// A Python client: connects, sends twice at once, reads the answer, closes.
const PY_CLIENT: &str = r#"
import socket, sys
kind, address = sys.argv[1], sys.argv[2]
if kind in ('stream', 'seqpacket'):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if kind == 'stream' else socket.SOCK_SEQPACKET)
    c.connect('\0' + address[1:] if address.startswith('@') else address)
else:
    c = socket.socket(socket.AF_INET if kind == 'tcp4' else socket.AF_INET6)
    c.connect(('127.0.0.1' if kind == 'tcp4' else '::1', int(address)))
c.sendall(b'hello\n')
c.sendall(b'again\n')
c.recv(100)
c.close()
"#;

/// Load for the busy rounds: a socket pair flooded with 64-byte messages
/// (about 20,000 a second, so that the tracer keeps up and loses nothing)
/// by a process that spins between them, keeping a CPU busy.
const LOAD: &str = r#"
import os, socket, time
a, b = socket.socketpair()
if os.fork() == 0:
    a.close()
    while b.recv(65536):
        pass
    os._exit(0)
msg = b'x' * 64
nxt = time.monotonic()
while True:
    nxt += 0.00005
    a.send(msg)
    while time.monotonic() < nxt:
        pass
"#;

/// The load process, stopped when dropped, also by a test that failed.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One kind of listener and how its events name it.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// `stream`, `seqpacket`, `tcp4` or `tcp6` (the clients' first argument).
    kind: &'static str,
    /// A path (made absolute in the test's directory), `@name`, or a port.
    address: &'static str,
    workers: usize,
    clients: usize,
    /// Times the test runs idle and then busy.
    rounds: usize,
}

impl Scenario {
    fn unix(&self) -> bool {
        matches!(self.kind, "stream" | "seqpacket")
    }
}

/// A running server: its processes (the workers) and listener fd.
struct Server {
    child: Child,
    workers: Vec<u64>,
    listen_fd: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        for &pid in &self.workers {
            signal(pid as u32, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(scenario: &Scenario, address: &str) -> Server {
    let mut child = Command::new(python3())
        .args(["-c", SERVER, scenario.kind, address])
        .arg(scenario.workers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the server");
    let mut numbers = first_line(&mut child);
    let listen_fd = numbers.pop().expect("the server's listener fd");
    assert_eq!(numbers.len(), scenario.workers, "server pids: {numbers:?}");
    Server {
        child,
        workers: numbers,
        listen_fd,
    }
}

/// Starts client number `i`: a Rust client, a Python one or socat, in turn.
fn start_client(i: usize, scenario: &Scenario, address: &str) -> Child {
    let mut command = match i % 3 {
        0 => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_connect_at_once"));
            c.args([scenario.kind, address]);
            c
        }
        1 => {
            let mut c = Command::new(python3());
            c.args(["-c", PY_CLIENT, scenario.kind, address]);
            c
        }
        _ => {
            let target = match (scenario.kind, address.strip_prefix('@')) {
                ("tcp4", _) => format!("TCP4:127.0.0.1:{address}"),
                ("tcp6", _) => format!("TCP6:[::1]:{address}"),
                (kind, Some(name)) => format!("ABSTRACT-CONNECT:{name}{}", socat_type(kind)),
                (kind, None) => format!("UNIX-CONNECT:{address}{}", socat_type(kind)),
            };
            let mut c = Command::new("socat");
            c.args(["-t", "10", "-", &target]);
            c
        }
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting a client");
    // socat sends its input and half-closes; the others ignore it.
    let _ = child.stdin.take().expect("stdin").write_all(b"hello\n");
    child
}

fn socat_type(kind: &str) -> &'static str {
    if kind == "seqpacket" { ",type=5" } else { "" }
}

/// Runs one round: the server, `scenario.clients` clients started over
/// about two seconds, optionally under load; returns the events and
/// sockspy's stderr.
fn round(scenario: &Scenario, busy: bool) -> (Vec<Value>, String, Server, BTreeSet<u64>) {
    let dir = socket_dir(scenario.name);
    let address = match scenario.address {
        path if path.starts_with('/') => format!("{}{path}", dir.display()),
        other => other.to_owned(),
    };
    let family = if scenario.unix() { "--unix" } else { "--tcp" };
    // Only this round's events are printed (the load's and the rest of
    // the machine's are not), so that the summary's count is this round's.
    let selection = [if scenario.unix() { "--path" } else { "--port" }, &address];
    // The load runs only while this round traces (the trace's turn taken
    // first, so that another test's round waiting for its turn adds none)
    // and ends before the trace is stopped: in CI, with loads running, the
    // kernel once took more than 60 s to detach sockspy's programs (a
    // grace period in perf_trace_event_unreg), which no load here shows.
    let trace = Trace::start(&[family, "--json", selection[0], selection[1]]).unwrap();
    let load = busy.then(|| {
        Load(
            Command::new(python3())
                .args(["-c", LOAD])
                .spawn()
                .expect("starting the load"),
        )
    });
    let server = start_server(scenario, &address);
    let mut clients: Vec<Child> = Vec::new();
    let spread = Duration::from_secs(2).div_f64(scenario.clients as f64);
    for i in 0..scenario.clients {
        clients.push(start_client(i, scenario, &address));
        thread::sleep(spread);
    }
    let pids: BTreeSet<u64> = clients.iter().map(|c| u64::from(c.id())).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for client in &mut clients {
        loop {
            if let Some(status) = client.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{}: a client failed: {status}",
                    scenario.name
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: clients did not finish",
                scenario.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    drop(load);
    let finished = trace.stop().unwrap();
    (finished.events(), finished.stderr, server, pids)
}

/// What each client connection is: the client's socket and, once
/// accepted, which worker took it and when.
fn accepts(events: &[Value], server: &Server, unix: bool) -> HashMap<String, (u64, String)> {
    events
        .iter()
        .filter(|ev| {
            ev["event"] == "accept" && server.workers.contains(&ev["pid"].as_u64().unwrap())
        })
        .map(|ev| {
            let key = if unix {
                ev["peer"]["sock"].to_string()
            } else {
                format!("{}:{}", ev["raddr"], ev["rport"])
            };
            (
                key,
                (
                    ev["pid"].as_u64().unwrap(),
                    ev["ts"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// Checks every client event of one round.
fn check_round(scenario: &Scenario, busy: bool) {
    let (events, stderr, server, clients) = round(scenario, busy);
    let label = format!("{} ({})", scenario.name, if busy { "busy" } else { "idle" });
    let unix = scenario.unix();
    let accepted = accepts(&events, &server, unix);
    let mut pending = 0;
    let mut seen: HashMap<u64, BTreeSet<&str>> = HashMap::new();
    for ev in &events {
        let pid = ev["pid"].as_u64().unwrap();
        let kind = ev["event"].as_str().unwrap();
        if !clients.contains(&pid) || !matches!(kind, "connect" | "send" | "recv") {
            continue;
        }
        seen.entry(pid).or_default().insert(kind);
        let peer = &ev["peer"];
        let peer_pid = peer["pid"].as_u64();
        assert!(
            peer_pid.is_some_and(|p| server.workers.contains(&p)),
            "{label}: a client event does not name the server {:?}: {ev}",
            server.workers
        );
        if unix {
            let name = if scenario.address.starts_with('/') {
                ev["peer"]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with(scenario.address)
            } else {
                peer["path"] == scenario.address
            };
            assert!(name, "{label}: the peer's name is missing or wrong: {ev}");
        } else {
            let loopback = if scenario.kind == "tcp4" {
                "127.0.0.1"
            } else {
                "::1"
            };
            assert_eq!(peer["addr"], loopback, "{label}: {ev}");
            assert_eq!(
                peer["port"].as_u64(),
                scenario.address.parse().ok(),
                "{label}: {ev}"
            );
        }
        let key = if unix {
            ev["sock"].to_string()
        } else {
            format!("{}:{}", ev["laddr"], ev["lport"])
        };
        let acceptance = accepted.get(&key);
        if peer["pending"] == true {
            pending += 1;
            let holders: BTreeSet<u64> = peer["holders"]
                .as_array()
                .unwrap_or_else(|| panic!("{label}: a pending peer without holders: {ev}"))
                .iter()
                .map(|h| h["pid"].as_u64().unwrap())
                .collect();
            assert_eq!(
                holders,
                server.workers.iter().copied().collect(),
                "{label}: every holder of the listener: {ev}"
            );
            assert_eq!(
                peer["listen_fd"].as_u64(),
                Some(server.listen_fd),
                "{label}: {ev}"
            );
            assert!(peer["fd"].is_null(), "{label}: nobody holds it yet: {ev}");
            if let Some((_, when)) = acceptance {
                assert!(
                    ev["ts"].as_str().unwrap() <= when.as_str(),
                    "{label}: pending after the accept at {when}: {ev}"
                );
            }
        } else {
            let (worker, _) = acceptance
                .unwrap_or_else(|| panic!("{label}: accepted, but no accept was seen: {ev}"));
            assert_eq!(
                peer_pid,
                Some(*worker),
                "{label}: the worker that accepted: {ev}"
            );
            assert!(
                peer["fd"].is_u64(),
                "{label}: the accepted descriptor: {ev}"
            );
        }
    }
    for pid in &clients {
        let kinds = seen.get(pid).cloned().unwrap_or_default();
        assert!(
            kinds.contains("connect") && kinds.contains("send") && kinds.contains("recv"),
            "{label}: client {pid} has only {kinds:?}"
        );
    }
    // A Unix client's records before the accept say so from the kernel.
    // A TCP client's wait in the hold for the server's accept (up to
    // 250 ms once the ring is read dry) and are then named by the worker
    // that accepted; they show the listener as pending only when the
    // accept comes later than that, which the server's 200-500 ms sleep
    // makes likely but does not guarantee. (Until the records of a closed
    // TCP socket were named by their remembered address, their local port
    // 0 made them count here as pending, after the accept.)
    if unix {
        assert!(
            pending > 0,
            "{label}: no client event found the server still to accept"
        );
    }
    assert!(
        !stderr.contains("unresolved"),
        "{label}: sockspy counted unresolved peers: {stderr}"
    );
    drop(server);
}

fn run(scenario: Scenario) {
    if !have_root(scenario.name) {
        return;
    }
    assert!(
        have_program("socat"),
        "socat is needed (cargo xtask setup installs it)"
    );
    for _ in 0..scenario.rounds {
        for busy in [false, true] {
            check_round(&scenario, busy);
        }
    }
}

#[test]
fn clients_of_a_unix_path_name_the_server_before_accept() {
    run(Scenario {
        name: "first-contact-path",
        kind: "stream",
        address: "/first-contact.sock",
        workers: 1,
        clients: 200,
        rounds: 2,
    });
}

#[test]
fn clients_of_an_abstract_name_name_the_server_before_accept() {
    run(Scenario {
        name: "first-contact-abstract",
        kind: "stream",
        address: "@sockspy-first-contact",
        workers: 1,
        clients: 60,
        rounds: 1,
    });
}

#[test]
fn seqpacket_clients_name_the_server_before_accept() {
    run(Scenario {
        name: "first-contact-seqpacket",
        kind: "seqpacket",
        address: "/first-contact.seq",
        workers: 1,
        clients: 60,
        rounds: 1,
    });
}

#[test]
fn tcp_clients_on_127_0_0_1_name_the_server_before_accept() {
    run(Scenario {
        name: "first-contact-tcp4",
        kind: "tcp4",
        address: "47611",
        workers: 1,
        clients: 60,
        rounds: 1,
    });
}

#[test]
fn tcp_clients_on_ipv6_loopback_name_the_server_before_accept() {
    run(Scenario {
        name: "first-contact-tcp6",
        kind: "tcp6",
        address: "47612",
        workers: 1,
        clients: 60,
        rounds: 1,
    });
}

/// Three workers share one listener: until one accepts, the peer lists
/// all three; then it names the one that did.
#[test]
fn a_prefork_servers_clients_name_every_worker_then_the_acceptor() {
    run(Scenario {
        name: "first-contact-prefork",
        kind: "stream",
        address: "/first-contact-prefork.sock",
        workers: 3,
        clients: 90,
        rounds: 1,
    });
}

/// Starts a Python server `script` at `path` that runs until its stdin
/// closes; returns it and the pid it printed first.
fn daemon(script: &str, path: &str) -> (Child, u64) {
    let mut server = Command::new(python3())
        .args(["-c", script, path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the server");
    let pid = first_line(&mut server)[0];
    (server, pid)
}

/// Runs a Python client `script` against `path` to its end; returns the
/// pid it printed.
fn client(script: &str, path: &str) -> u64 {
    let out = sockspy_tests::python(script, &[path]).unwrap();
    out.trim().parse().unwrap()
}

/// The lonely test's server: listens, says so, and exits when its stdin closes.
const LONELY_SERVER: &str = r#"
import os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(4)
print(os.getpid(), flush=True)
sys.stdin.read()
"#;

/// The lonely test's client: renamed so that the kernel keeps only its
/// records, connects, sends, and exits without waiting for an answer.
const LONELY_CLIENT: &str = r#"
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b'fc-lonely', 0, 0, 0)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
c.sendall(b'anyone there?')
print(os.getpid(), flush=True)
"#;

/// A peer that cannot be known: the kernel filters out the server's own
/// records (`--comm`), and the server has closed its listener and exited
/// before sockspy reads the client's send (sockspy is stopped meanwhile,
/// so /proc no longer shows it either). The send says nothing of a peer
/// process, and the summary counts it, rather than a guess being printed.
#[test]
fn a_peer_gone_before_anything_showed_it_is_counted_unresolved() {
    if !have_root("a_peer_gone_before_anything_showed_it_is_counted_unresolved") {
        return;
    }
    let dir = socket_dir("first-contact-lonely");
    let path = dir.path().to_owned();
    let trace = Trace::start(&["--unix", "--json", "--comm", "fc-lonely"]).unwrap();
    let (mut server, _) = daemon(LONELY_SERVER, &path);
    signal(trace.pid(), libc::SIGSTOP);
    let client = client(LONELY_CLIENT, &path);
    drop(server.stdin.take());
    assert!(server.wait().unwrap().success());
    signal(trace.pid(), libc::SIGCONT);
    let finished = trace.stop().unwrap();
    let events = finished.events();
    let send = sockspy_tests::find(&events, client, "send");
    assert!(
        send["peer"]["pid"].is_null(),
        "no process can be named: {send}"
    );
    let unresolved = finished
        .stderr
        .split(", ")
        .find_map(|part| part.strip_suffix(" peers unresolved"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no unresolved count in the summary: {}", finished.stderr));
    assert!(unresolved >= 1, "{}", finished.stderr);
}

/// The filtered test's server: answers one client at once, closes that
/// connection, and keeps listening until its stdin closes, as a daemon.
const QUICK_SERVER: &str = r#"
import os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(4)
print(os.getpid(), srv.fileno(), flush=True)
conn, _ = srv.accept()
conn.recv(100)
conn.sendall(b'ok\n')
conn.close()
sys.stdin.read()
"#;

/// The filtered test's client: renamed so that the kernel keeps only its
/// records; sends, reads the answer, closes.
const FILTERED_CLIENT: &str = r#"
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b'fc-filtered', 0, 0, 0)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
c.sendall(b'hello\n')
c.recv(100)
c.close()
print(os.getpid(), flush=True)
"#;

/// `--comm` keeps only the client's records in the kernel: the server's
/// accept never comes, and the server has closed its end long before
/// /proc is read. Every client event still names the server (the only
/// holder of the listener the connection waited at) and the socket's path.
#[test]
fn a_server_the_kernel_filters_out_is_still_named() {
    if !have_root("a_server_the_kernel_filters_out_is_still_named") {
        return;
    }
    let dir = socket_dir("first-contact-filtered");
    let path = dir.path().to_owned();
    let trace = Trace::start(&["--unix", "--json", "--comm", "fc-filtered"]).unwrap();
    let (mut server, server_pid) = daemon(QUICK_SERVER, &path);
    let client = client(FILTERED_CLIENT, &path);
    let finished = trace.stop().unwrap();
    drop(server.stdin.take());
    assert!(server.wait().unwrap().success());
    let events = finished.events();
    let mine: Vec<&Value> = events
        .iter()
        .filter(|ev| ev["pid"] == client && ev["event"] != "socket")
        .collect();
    for kind in ["connect", "send", "recv", "close"] {
        assert!(
            mine.iter().any(|ev| ev["event"] == kind),
            "no {kind} of the client: {mine:?}"
        );
    }
    for ev in mine {
        assert_eq!(ev["peer"]["pid"], server_pid, "{ev}");
        assert_eq!(ev["peer"]["path"], path.as_str(), "{ev}");
    }
    assert!(
        !finished.stderr.contains("unresolved"),
        "{}",
        finished.stderr
    );
}

/// A client that reaches the socket through a symlink still gets the
/// listener's holder, and the name the server bound, before the accept:
/// the listener is found from the kernel's view of the connection, not
/// from the path the client passed.
#[test]
fn a_client_through_a_symlink_names_the_listener() {
    if !have_root("a_client_through_a_symlink_names_the_listener") {
        return;
    }
    let dir = socket_dir("first-contact-symlink");
    let real = format!("{}/real.sock", dir.display());
    let link = format!("{}/link.sock", dir.display());
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    let (mut server, server_pid) = daemon(LONELY_SERVER, &real);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let client = client(LONELY_CLIENT, &link);
    let events = trace.stop().unwrap().events();
    drop(server.stdin.take());
    assert!(server.wait().unwrap().success());
    for kind in ["connect", "send"] {
        let ev = sockspy_tests::find(&events, client, kind);
        assert_eq!(ev["peer"]["pid"], server_pid, "{ev}");
        assert_eq!(ev["peer"]["path"], real.as_str(), "{ev}");
        assert_eq!(ev["peer"]["pending"], true, "{ev}");
    }
}
