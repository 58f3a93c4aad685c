//! Filters: `--pid`, `--pid-tree`, `--comm`, `--path`, `--uid`, and how
//! they combine. Two unrelated conversations run under several traces at
//! once; each trace must keep exactly its share.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sockspy_tests::{Collectd, Trace, have_root, kernel_records, python3, socket_dir};

/// A process renamed argv[2] that listens on argv[1], and after a line on
/// stdin connects to itself and talks; then a child it forks talks too.
/// Prints its pid first and its child's pid at the end.
const CONVERSATION: &str = r#"
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print(os.getpid(), flush=True)
sys.stdin.readline()
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
s, _ = srv.accept()
for _ in range(3):
    c.send(b"ping")
    s.recv(10)
pid = os.fork()
if pid == 0:
    c.send(b"child")
    os._exit(0)
os.waitpid(pid, 0)
s.recv(10)
print(pid, flush=True)
"#;

struct Conversation {
    child: Child,
    pid: u64,
}

impl Conversation {
    fn start(path: &str, name: &str) -> Self {
        let mut child = Command::new(python3())
            .args(["-c", CONVERSATION, path, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = read_number(&mut child);
        Conversation { child, pid }
    }

    fn go(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
    }

    /// Waits for the end; returns the forked child's pid.
    fn finish(mut self) -> u64 {
        let child_pid = read_number(&mut self.child);
        assert!(self.child.wait().unwrap().success());
        child_pid
    }
}

fn read_number(child: &mut Child) -> u64 {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {line:?}"))
}

/// Socket events (not the start-up header) of a finished trace.
fn stop(trace: Trace) -> Vec<Value> {
    let done = trace.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    done.events()
}

fn pids(events: &[Value]) -> Vec<u64> {
    let mut pids: Vec<u64> = events.iter().filter_map(|e| e["pid"].as_u64()).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[test]
fn each_filter_keeps_exactly_its_events() {
    if !have_root("each_filter_keeps_exactly_its_events") {
        return;
    }
    let (dir_a, dir_b) = (socket_dir("filter-a"), socket_dir("filter-b"));
    let link = dir_a.join("link.sock");
    std::os::unix::fs::symlink(dir_a.path(), &link).unwrap();
    let mut a = Conversation::start(dir_a.path(), "convA");
    let mut b = Conversation::start(dir_b.path(), "convB");
    let (pid_a, pid_b) = (a.pid.to_string(), b.pid.to_string());
    let path_a = format!("{}*", dir_a.path());
    let base = ["--unix", "--json"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let first = Trace::start(&with(&base, &["--pid", &pid_a])).unwrap();
    let traces = [
        first.also(&with(&base, &["--pid-tree", &pid_b])).unwrap(),
        first.also(&with(&base, &["--comm", "convB"])).unwrap(),
        first
            .also(&with(&base, &["--comm", "conv?", "--uid", "0"]))
            .unwrap(),
        first.also(&with(&base, &["--path", &path_a])).unwrap(),
        first
            .also(&with(&base, &["--path", link.to_str().unwrap()]))
            .unwrap(),
        first
            .also(&with(&base, &["--comm", "convA", "--path", dir_b.path()]))
            .unwrap(),
        first.also(&with(&base, &["--uid", "4242"])).unwrap(),
    ];
    a.go();
    b.go();
    let (child_a, child_b) = (a.finish(), b.finish());
    let [tree_b, comm_b, comm_both, glob_a, link_a, none, other_uid] = traces.map(stop);
    let pid_only_a = stop(first);

    let (pa, pb) = (pid_a.parse::<u64>().unwrap(), pid_b.parse::<u64>().unwrap());
    // --pid: the process itself, not the child it forked.
    assert_eq!(pids(&pid_only_a), [pa], "--pid");
    assert!(pid_only_a.iter().filter(|e| e["event"] == "send").count() >= 3);
    // --pid-tree: the process and the child forked after the trace began.
    assert_eq!(pids(&tree_b), [pb, child_b], "--pid-tree");
    assert!(
        tree_b
            .iter()
            .any(|e| e["pid"] == child_b && e["event"] == "send" && e["bytes"] == 5),
        "the forked child's send"
    );
    // --comm, exact: only convB (its child keeps the name).
    assert!(comm_b.iter().all(|e| e["comm"] == "convB"), "--comm exact");
    assert!(!comm_b.is_empty());
    // A glob takes both; --uid 0 (root runs them) changes nothing.
    let both = pids(&comm_both);
    for pid in [pa, pb, child_a, child_b] {
        assert!(both.contains(&pid), "--comm conv? lacks {pid}: {both:?}");
    }
    // --path: A's events only, the connecting side (unnamed) included by
    // its peer's name; through a symlink, the same.
    for (events, what) in [(&glob_a, "--path glob"), (&link_a, "--path symlink")] {
        assert!(!events.is_empty(), "{what} kept nothing");
        assert!(
            events
                .iter()
                .all(|e| [pa, child_a].contains(&e["pid"].as_u64().unwrap())),
            "{what}: {:?}",
            pids(events)
        );
        assert!(
            events
                .iter()
                .any(|e| e["path"].is_null() && e["event"] == "send"),
            "{what}: the unnamed client end"
        );
    }
    // AND across kinds: convA's events never involve B's socket.
    assert!(none.is_empty(), "--comm convA --path B: {none:?}");
    assert!(other_uid.is_empty(), "--uid 4242: {other_uid:?}");
}

/// With `--comm collectd` the kernel drops rrdcached's events, so the
/// server's end of the connection (accepted after tracing began) is found
/// by a /proc rescan: collectd's sends still name rrdcached, before the
/// accept as the listener's holder, after it with the accepted descriptor.
#[test]
fn a_filtered_trace_still_names_the_peer() {
    if !have_root("a_filtered_trace_still_names_the_peer") {
        return;
    }
    let trace = Trace::start(&["--unix", "--json", "--comm", "collectd"]).unwrap();
    let setup = Collectd::start("filtered").unwrap();
    let rrdcached = setup.rrdcached_pid;
    let accepted = |e: &Value| {
        e["event"] == "send" && e["peer"]["pid"] == rrdcached && e["peer"]["fd"].is_u64()
    };
    let found = trace.wait_for(Duration::from_secs(20), |events| {
        events.iter().any(accepted)
    });
    let events = stop(trace);
    assert!(
        found,
        "no send naming rrdcached's accepted end in {events:#?}"
    );
    assert!(
        events.iter().all(|e| e["comm"] == "collectd"),
        "only collectd"
    );
    let to_rrdcached = |e: &&Value| {
        e["event"] == "send"
            && e["peer"]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("rrdcached.sock"))
    };
    for send in events.iter().filter(to_rrdcached) {
        assert_eq!(send["peer"]["pid"], rrdcached, "{send}");
        assert_eq!(send["peer"]["comm"], "rrdcached", "{send}");
    }
}

/// Sends `ROUNDS` one-byte messages each way over a Unix socketpair and over
/// a loopback TCP connection; prints the TCP server's port first and waits
/// for a line before it starts.
const BULK: &str = r#"
import socket, sys
rounds = int(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
sys.stdin.readline()
u1, u2 = socket.socketpair()
t1 = socket.create_connection(srv.getsockname())
t2, _ = srv.accept()
for a, b in ((u1, u2), (t1, t2)):
    for _ in range(rounds):
        a.send(b"x")
        b.recv(1)
print("done", flush=True)
"#;

/// Filters the kernel can decide are decided there: traffic they exclude
/// never reaches userspace, which the records count in the summary shows.
#[test]
fn the_kernel_drops_what_the_filters_exclude() {
    if !have_root("the_kernel_drops_what_the_filters_exclude") {
        return;
    }
    const ROUNDS: u64 = 3000;
    let mut bulk = Command::new(python3())
        .args(["-c", BULK, &ROUNDS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(bulk.stdout.take().unwrap());
    let mut port = String::new();
    out.read_line(&mut port).unwrap();
    let port = port.trim().to_owned();
    let other_port = if port == "1" { "2" } else { "1" };
    let pid = bulk.id().to_string();
    let control = Trace::start(&["--json", "--pid", &pid]).unwrap();
    let excluding = [
        vec!["--uid", "4242"],
        vec!["--comm", "no-such-process"],
        vec!["--pid", "1"],
        vec!["--port", other_port],
    ];
    let traces: Vec<Trace> = excluding
        .iter()
        .map(|args| control.also(&[&["--json"], &args[..]].concat()).unwrap())
        .collect();
    let tcp_only = control.also(&["--json", "--tcp", "--port", &port]).unwrap();
    writeln!(bulk.stdin.as_mut().unwrap(), "go").unwrap();
    let mut done = String::new();
    out.read_line(&mut done).unwrap();
    assert!(bulk.wait().unwrap().success());

    // The control sees four events a round: a send and a receive on each side.
    let control = control.stop().unwrap();
    let all = kernel_records(&control.stderr);
    assert!(
        all >= 4 * ROUNDS,
        "control: {all} records: {}",
        control.stderr
    );
    for (trace, args) in traces.into_iter().zip(&excluding) {
        let finished = trace.stop().unwrap();
        assert!(finished.status.success(), "{}", finished.stderr);
        let records = kernel_records(&finished.stderr);
        assert!(
            records < ROUNDS / 4,
            "{args:?}: {records} of the control's {all} records reached userspace"
        );
        assert!(finished.events().is_empty(), "{args:?}");
    }
    // --tcp --port: the TCP half only, also decided in the kernel.
    let tcp = tcp_only.stop().unwrap();
    let records = kernel_records(&tcp.stderr);
    assert!(
        (2 * ROUNDS..3 * ROUNDS).contains(&records),
        "--tcp --port {port}: {records} records of {all}"
    );
    let events = tcp.events();
    assert!(events.iter().all(|e| e["proto"] == "tcp"), "--tcp");
    assert!(events.len() as u64 >= 2 * ROUNDS, "{} events", events.len());
}
