//! `sockspy top` against real programs: a Unix stream server that answers
//! each request after a scripted delay (5 ms and 80 ms in turn), and a
//! client that makes a counted number of requests.
//!
//! Batch mode's text and JSON rows must name the pair and count every
//! request and byte; a recording's table (`top -r`) must agree with the
//! exchanges `read --exchanges` finds in the same file, percentiles
//! included; the live screen, run under tmux, must show the pair, follow
//! the sort keys, fit 80 columns and a resized window, and give the
//! terminal back after `q`, Ctrl-C and SIGTERM; bytes a server leaves
//! unread must show as queued; and 10,000 live connections must fit in
//! 64 MiB.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sockspy_tests::{
    RedisServer, SocketDir, Trace, first_line, have_program, have_root, one_trace_at_a_time,
    python3, run_sockspy, signal, socket_dir, sockspy_bin, spawn_python, wait_ok,
};

/// Names the process `NAME`: the tests trace only these two names, which
/// the kernel filters on, so that the rest of a busy machine's sockets
/// cannot crowd their records out of the ring buffer.
const NAMED: &str = r#"
import ctypes
ctypes.CDLL(None).prctl(15, NAME.encode(), 0, 0, 0)
"#;

const SERVER_NAME: &str = "topserver";
const CLIENT_NAME: &str = "topclient";

/// Listens at argv[1], prints its pid, and answers each 13-byte request
/// with 20 bytes after the next of the delays in argv[2] (milliseconds,
/// in turn), one connection after another as requests come; closes a
/// connection when its client does (its last exchange ends with it).
const SERVER: &str = r#"
import os, selectors, socket, sys, time
path, delays = sys.argv[1], [int(d) / 1000 for d in sys.argv[2].split(',')]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(16)
print(os.getpid(), flush=True)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
answered = {}
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            conn, _ = srv.accept()
            answered[conn] = 0
            sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        got = conn.recv(13)
        if not got:
            sel.unregister(conn)
            del answered[conn]
            conn.close()
            continue
        while len(got) < 13:
            got += conn.recv(13 - len(got))
        time.sleep(delays[answered[conn] % len(delays)])
        answered[conn] += 1
        conn.sendall(b'answer %013d' % answered[conn])
"#;

/// Connects to argv[1], prints its pid, makes argv[2] requests of 13
/// bytes, reading each 20-byte answer and pausing argv[3] ms before the
/// next; closes.
const CLIENT: &str = r#"
import os, socket, sys, time
path, count, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(path)
print(os.getpid(), flush=True)
for i in range(count):
    conn.sendall(b'request %04d\n' % i)
    got = b''
    while len(got) < 20:
        got += conn.recv(20 - len(got))
    time.sleep(pause)
conn.close()
"#;

/// Listens at argv[1], prints its pid, accepts one connection and reads
/// nothing from it for argv[2] ms; then reads argv[3] bytes and closes.
const LATE_READER: &str = r#"
import os, socket, sys, time
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print(os.getpid(), flush=True)
conn, _ = srv.accept()
time.sleep(int(sys.argv[2]) / 1000)
got = 0
while got < int(sys.argv[3]):
    got += len(conn.recv(65536))
conn.close()
"#;

/// Connects to argv[1], prints its pid, sends argv[2] bytes and waits
/// for the server to close.
const SENDER: &str = r#"
import os, socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
print(os.getpid(), flush=True)
conn.sendall(b'x' * int(sys.argv[2]))
conn.recv(1)
"#;

/// Raises its descriptor limit as far as it may, listens at argv[1], has
/// a child make argv[2] connections to it and, until argv[3] seconds have
/// passed, send 13 bytes on each in turn and read the 20-byte answer. The
/// parent answers; the child prints its pid once connected.
const MANY: &str = r#"
import os, resource, selectors, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, count, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(4096)
if os.fork() == 0:
    conns = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]
    for conn in conns:
        conn.connect(path)
    print(os.getpid(), flush=True)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for conn in conns:
            conn.sendall(b'request 0000\n')
            conn.recv(20)
    os._exit(0)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            sel.register(srv.accept()[0], selectors.EVENT_READ)
        elif key.fileobj.recv(13):
            key.fileobj.sendall(b'answer 0000000000000')
        else:
            sel.unregister(key.fileobj)
            key.fileobj.close()
"#;

/// `script`, run under the process name `name`.
fn named(name: &str, script: &str) -> String {
    format!("NAME = '{name}'{NAMED}{script}")
}

/// What every sockspy of these tests traces: the two programs, by name.
const SELECT: [&str; 5] = ["--unix", "--comm", SERVER_NAME, "--comm", CLIENT_NAME];

const REQUEST_BYTES: u64 = 13;
const RESPONSE_BYTES: u64 = 20;

/// A process of a test, killed when dropped (also by a test that failed).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server at `path`; returns it and its pid.
fn server(path: &str, delays: &str) -> (Running, u64) {
    let mut child = Command::new(python3())
        .arg("-c")
        .arg(named(SERVER_NAME, SERVER))
        .args([path, delays])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the server");
    let pid = first_line(&mut child)[0];
    (Running(child), pid)
}

/// A directory of test `name`, the server answering at its socket after
/// `delays`, its pid, and `sockspy top -b ARGS` tracing the two programs.
fn server_and_top(name: &str, delays: &str, args: &[&str]) -> (SocketDir, Running, u64, Trace) {
    let dir = socket_dir(name);
    let (server, pid) = server(dir.path(), delays);
    let top = Trace::top(&[&["-b"][..], args, &SELECT].concat()).unwrap();
    (dir, server, pid, top)
}

/// Starts a client of `count` requests; returns it and its pid.
fn client(path: &str, count: u64, pause_ms: u64) -> (Child, u64) {
    let script = named(CLIENT_NAME, CLIENT);
    let mut child = spawn_python(&script, &[path, &count.to_string(), &pause_ms.to_string()]);
    let pid = first_line(&mut child)[0];
    (child, pid)
}

/// The rows whose client is process `pid`.
fn rows_of(rows: &[Value], pid: u64) -> Vec<&Value> {
    rows.iter()
        .filter(|row| row["client"]["pid"] == pid)
        .collect()
}

fn sum(rows: &[&Value], field: &str) -> u64 {
    rows.iter()
        .map(|row| {
            row[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field} in {row}"))
        })
        .sum()
}

/// The nearest-rank percentile of sorted values.
fn exact(sorted: &[u64], percent: u64) -> u64 {
    let rank = (sorted.len() as u64 * percent).div_ceil(100).max(1);
    sorted[rank as usize - 1]
}

/// Whether top's percentile (from fixed buckets) is the exact one: its
/// bucket is at most 1/16 of the value away.
fn close_to(got: &Value, exact: u64) -> bool {
    got.as_u64()
        .is_some_and(|got| got.abs_diff(exact) <= exact / 16)
}

#[test]
fn batch_json_rows_count_every_request_and_byte() {
    if !have_root("batch_json_rows_count_every_request_and_byte") {
        return;
    }
    let (dir, _server, server_pid, top) =
        server_and_top("top-json", "5,80", &["--json", "-d", "0.5"]);
    let count = 24;
    let (mut client, client_pid) = client(dir.path(), count, 10);
    wait_ok(&mut client);
    // The connection's last row comes with the refresh after it closed.
    thread::sleep(Duration::from_millis(1200));
    let finished = top.stop().unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    let all = finished.events();
    let rows = rows_of(&all, client_pid);
    assert!(rows.len() >= 3, "a row every refresh: {rows:#?}");
    for row in &rows {
        assert_eq!(row["server"]["pid"], server_pid, "{row}");
        assert_eq!(row["server"]["path"], dir.path(), "{row}");
        assert_eq!(row["client"]["comm"], CLIENT_NAME, "{row}");
        assert_eq!(
            (row["connections"].as_u64(), row["errors"].as_u64()),
            (Some(1), Some(0))
        );
        let secs = row["interval_s"].as_f64().unwrap();
        assert!((0.3..3.0).contains(&secs), "{row}");
        for (count, rate) in [
            ("requests", "requests_per_s"),
            ("sent_bytes", "sent_bytes_per_s"),
            ("received_bytes", "received_bytes_per_s"),
        ] {
            let want = row[count].as_f64().unwrap() / secs;
            assert!(
                (row[rate].as_f64().unwrap() - want).abs() < 1e-6,
                "{rate} in {row}"
            );
        }
        // Every wait is at least the server's scripted delay.
        if row["requests"].as_u64() > Some(0) {
            let (p50, p99, max) = (
                row["wait_p50_us"].as_u64().unwrap(),
                row["wait_p99_us"].as_u64().unwrap(),
                row["wait_max_us"].as_u64().unwrap(),
            );
            assert!(5_000 <= p50 && p50 <= p99 && p99 <= max, "{row}");
        } else {
            assert!(row["wait_p50_us"].is_null(), "{row}");
        }
        assert!(row["queued_bytes"].is_u64() || row["queued_bytes"].is_null());
    }
    assert_eq!(sum(&rows, "requests"), count, "{rows:#?}");
    assert_eq!(sum(&rows, "sent_bytes"), count * REQUEST_BYTES);
    assert_eq!(sum(&rows, "received_bytes"), count * RESPONSE_BYTES);
    let slowest = rows
        .iter()
        .filter_map(|row| row["wait_max_us"].as_u64())
        .max();
    assert!(slowest >= Some(80_000), "an 80 ms answer: {rows:#?}");
}

#[test]
fn bytes_left_unread_are_queued() {
    if !have_root("bytes_left_unread_are_queued") {
        return;
    }
    let dir = socket_dir("top-queued");
    let server = spawn_python(
        &named(SERVER_NAME, LATE_READER),
        &[dir.path(), "2500", "6000"],
    );
    let mut server = Running(server);
    first_line(&mut server.0);
    let top = Trace::top(&[&["-b", "--json", "-d", "0.5"][..], &SELECT].concat()).unwrap();
    let mut sender = spawn_python(&named(CLIENT_NAME, SENDER), &[dir.path(), "6000"]);
    let client_pid = first_line(&mut sender)[0];
    wait_ok(&mut sender);
    wait_ok(&mut server.0);
    thread::sleep(Duration::from_millis(800));
    let rows = top.stop().unwrap().events();
    let rows = rows_of(&rows, client_pid);
    let queued: Vec<Option<u64>> = rows
        .iter()
        .map(|row| row["queued_bytes"].as_u64())
        .collect();
    // Unread while the server slept; nothing once it read (or the
    // connection ended, when there is no queue to read).
    assert!(queued.contains(&Some(6000)), "{rows:#?}");
    assert!(matches!(queued.last(), Some(None | Some(0))), "{rows:#?}");
    assert_eq!(sum(&rows, "sent_bytes"), 6000);
}

/// sockspy's peak resident memory (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

#[test]
fn ten_thousand_live_connections_fit_in_64_mib() {
    if !have_root("ten_thousand_live_connections_fit_in_64_mib") {
        return;
    }
    const CONNECTIONS: u64 = 10_000;
    let dir = socket_dir("top-memory");
    let top = Trace::top(&[&["-b", "-d", "1"][..], &SELECT].concat()).unwrap();
    // One process (the server) and its child (the client), both named as
    // the client, started in this test's turn (they would load the
    // machine under another test's trace).
    let mut load = spawn_python(&named(CLIENT_NAME, MANY), &[dir.path(), "10000", "12"]);
    let client_pid = first_line(&mut load)[0];
    let load = Running(load);
    thread::sleep(Duration::from_secs(8));
    let peak = peak_kib(top.pid());
    signal(client_pid as u32, libc::SIGKILL);
    drop(load);
    let finished = top.stop().unwrap();
    let all = format!("{CONNECTIONS} connections");
    assert!(
        finished
            .stdout
            .iter()
            .any(|line| line.starts_with("sockspy top ") && line.contains(&all)),
        "no refresh saw {all}: {:?}",
        finished
            .stdout
            .iter()
            .filter(|line| line.starts_with("sockspy top "))
            .collect::<Vec<_>>()
    );
    assert!(peak <= 64 * 1024, "top's peak RSS with {all}: {peak} KiB");
    eprintln!("top with {all}: peak RSS {:.1} MiB", peak as f64 / 1024.0);
}

#[test]
fn batch_text_shows_the_pair_and_stops_after_n_refreshes() {
    if !have_root("batch_text_shows_the_pair_and_stops_after_n_refreshes") {
        return;
    }
    let (dir, _server, server_pid, top) =
        server_and_top("top-text", "5,80", &["-d", "1", "-n", "3"]);
    let (mut client, client_pid) = client(dir.path(), 40, 10);
    let finished = top.finish().unwrap();
    wait_ok(&mut client);
    assert!(finished.status.success(), "{}", finished.stderr);
    let text = finished.stdout.join("\n");
    let snapshots: Vec<&str> = text.split("sockspy top ").skip(1).collect();
    assert_eq!(snapshots.len(), 3, "-n 3:\n{text}");
    let header = "CLIENT";
    let mut busy = 0;
    for snapshot in &snapshots {
        let lines: Vec<&str> = snapshot.lines().collect();
        assert!(lines[0].contains("sorted by requests"), "{snapshot}");
        assert!(lines[1].starts_with(header), "{snapshot}");
        let titles: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            titles,
            [
                "CLIENT", "SERVER", "REQ/S", "SENT/S", "RECV/S", "P50", "P99", "MAX", "QUEUED",
                "ERR"
            ]
        );
        let client = format!("{CLIENT_NAME}[{client_pid}]");
        let Some(line) = lines.iter().find(|line| line.starts_with(&client)) else {
            continue;
        };
        assert!(
            line.contains(&format!("{SERVER_NAME}[{server_pid}] {}", dir.path())),
            "{line}"
        );
        // The eight numbers, from the right.
        let words: Vec<&str> = line.split_whitespace().collect();
        let numbers = &words[words.len() - 8..];
        let rate: f64 = numbers[0].parse().unwrap_or(0.0);
        if rate > 0.0 {
            busy += 1;
            assert!(numbers[3].ends_with("ms"), "p50 in ms: {line}");
            assert!(numbers[4].ends_with("ms"), "p99 in ms: {line}");
            assert_eq!(numbers[7], "0", "errors: {line}");
        }
    }
    assert!(busy >= 2, "the pair busy in two snapshots:\n{text}");
}

/// Records the client's `count` requests with `trace -w`; returns the
/// file and the client's pid.
fn recorded(dir: &Path, path: &str, clients: usize, count: u64) -> (String, Vec<u64>) {
    let file = dir.join("cap.pcapng").to_str().unwrap().to_owned();
    let trace = Trace::start(&[&["-w", &file][..], &SELECT].concat()).unwrap();
    let mut children = Vec::new();
    for _ in 0..clients {
        children.push(client(path, count, 5));
    }
    let pids = children
        .iter_mut()
        .map(|(child, pid)| {
            wait_ok(child);
            *pid
        })
        .collect();
    let finished = trace.stop().unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    (file, pids)
}

fn json_lines(args: &[&str]) -> Vec<Value> {
    let output = run_sockspy(args);
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line}: {err}")))
        .collect()
}

#[test]
fn a_recordings_table_agrees_with_its_exchanges() {
    if !have_root("a_recordings_table_agrees_with_its_exchanges") {
        return;
    }
    let dir = socket_dir("top-recording");
    let (_server, server_pid) = server(dir.path(), "5,80,20");
    let count = 30;
    let (file, pids) = recorded(&dir, dir.path(), 2, count);
    let select = ["--path", dir.path()];
    let exchanges = json_lines(&[&["read", &file, "--exchanges", "--json"][..], &select].concat());
    let rows = json_lines(&[&["top", "-r", &file, "--json"][..], &select].concat());
    for pid in &pids {
        let mine: Vec<&Value> = exchanges
            .iter()
            .filter(|ex| ex["client"]["pid"] == *pid)
            .collect();
        assert_eq!(mine.len() as u64, count, "exchanges of {pid}");
        let mut waits: Vec<u64> = mine
            .iter()
            .map(|ex| ex["wait_us"].as_u64().unwrap())
            .collect();
        waits.sort_unstable();
        let row = rows_of(&rows, *pid);
        assert_eq!(row.len(), 1, "one row per connection: {rows:#?}");
        let row = row[0];
        assert_eq!(row["server"]["pid"], server_pid);
        assert_eq!(row["requests"].as_u64(), Some(count), "{row}");
        let bytes = |field: &str| {
            mine.iter()
                .map(|ex| ex[field].as_u64().unwrap())
                .sum::<u64>()
        };
        assert_eq!(row["sent_bytes"].as_u64(), Some(bytes("request_bytes")));
        assert_eq!(
            row["received_bytes"].as_u64(),
            Some(bytes("response_bytes"))
        );
        assert_eq!(row["sent_bytes"].as_u64(), Some(count * REQUEST_BYTES));
        assert!(row["queued_bytes"].is_null(), "a recording has no queues");
        assert_eq!(row["wait_max_us"].as_u64(), waits.last().copied(), "{row}");
        for (field, percent) in [("wait_p50_us", 50), ("wait_p99_us", 99)] {
            let want = exact(&waits, percent);
            assert!(
                close_to(&row[field], want),
                "{field} {} vs {want}: {waits:?}",
                row[field]
            );
        }
        // The rates are over the recording's span.
        let secs = row["interval_s"].as_f64().unwrap();
        assert!(secs > 1.0, "{row}");
        assert!((row["requests_per_s"].as_f64().unwrap() - count as f64 / secs).abs() < 1e-6);
    }

    // One row for the server: both clients' connections.
    let servers = json_lines(
        &[
            &["top", "-r", &file, "--json", "--by", "server"][..],
            &select,
        ]
        .concat(),
    );
    let server: Vec<&Value> = servers
        .iter()
        .filter(|row| row["server"]["path"] == dir.path())
        .collect();
    assert_eq!(server.len(), 1, "{servers:#?}");
    let server = server[0];
    assert_eq!(
        (server["connections"].as_u64(), server["clients"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(server["requests"].as_u64(), Some(2 * count));
    assert_eq!(server["server"]["pid"], server_pid);
    assert!(
        server["client"].get("pid").is_none(),
        "two client processes: {server}"
    );
    let mut waits: Vec<u64> = exchanges
        .iter()
        .filter(|ex| pids.iter().any(|pid| ex["client"]["pid"] == *pid))
        .map(|ex| ex["wait_us"].as_u64().unwrap())
        .collect();
    waits.sort_unstable();
    assert!(
        close_to(&server["wait_p99_us"], exact(&waits, 99)),
        "{server}"
    );

    // The text table: a header and a line per connection, sorted by p99.
    let output = run_sockspy(&[&["top", "-r", &file, "--sort", "p99"][..], &select].concat());
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("sockspy top ") && lines[0].ends_with("sorted by p99"),
        "{text}"
    );
    assert!(lines[1].starts_with("CLIENT"), "{text}");
    for pid in &pids {
        assert!(text.contains(&format!("{CLIENT_NAME}[{pid}] ")), "{text}");
    }
}

#[test]
fn bad_input_is_one_line_and_a_usage_error() {
    if !sockspy_bin().exists() {
        eprintln!("skipped bad_input_is_one_line_and_a_usage_error: sockspy is not built");
        return;
    }
    for args in [
        &["top", "--sort", "speed"][..],
        &["top", "-d", "0"],
        &["top", "-n", "0"],
        &["top", "-r", "x", "-d", "2"],
        &["top", "--sort", "connections"],
    ] {
        let output = run_sockspy(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
    let output = run_sockspy(&["top", "-r", "/nonexistent/cap.pcapng"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/cap.pcapng"),
        "{stderr}"
    );
}

/// A tmux session of its own, with a shell, killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn new(name: &str, width: u16, height: u16) -> Self {
        let name = format!("sockspy-{name}-{}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .args(["bash", "--norc", "--noprofile"])
            .status()
            .expect("running tmux");
        assert!(status.success(), "tmux new-session failed");
        Self { name }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(args)
            .output()
            .expect("running tmux");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `keys` (tmux key names) into the pane.
    fn keys(&self, keys: &[&str]) {
        self.tmux(&[&["send-keys", "-t", &self.name][..], keys].concat());
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.name])
    }

    fn show(&self, format: &str) -> String {
        self.tmux(&["display", "-p", "-t", &self.name, format])
            .trim()
            .to_owned()
    }

    /// Waits until the screen satisfies `done`; fails with the screen.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a line of the screen satisfies `done`; returns the
    /// screen and that line.
    fn wait_for_line(&self, what: &str, done: impl Fn(&str) -> bool) -> (String, String) {
        let screen = self.wait_for(what, |screen| screen.lines().any(&done));
        let line = screen.lines().find(|line| done(line)).unwrap().to_owned();
        (screen, line)
    }

    /// The pid of the program the shell runs now.
    fn program_pid(&self) -> u32 {
        let shell = self.show("#{pane_pid}");
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("the shell {shell} runs nothing"))
    }

    /// After the program exited: the shell's screen is back, in cooked
    /// mode with echo, the cursor shown, and the program said `exited 0`.
    fn assert_restored(&self, how: &str) {
        self.wait_for(&format!("exit after {how}"), |screen| {
            screen.contains("exited 0")
        });
        assert_eq!(
            self.show("#{alternate_on}"),
            "0",
            "{how}: still on the alternate screen"
        );
        assert_eq!(
            self.show("#{cursor_flag}"),
            "1",
            "{how}: the cursor is hidden"
        );
        self.keys(&[
            "clear; echo modes: $(stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)')",
            "Enter",
        ]);
        // The line the shell printed, not the command typed.
        let (_, modes) = self.wait_for_line("stty's modes", |line| line.starts_with("modes:"));
        assert_eq!(
            modes.trim(),
            "modes: icanon echo",
            "{how}: the terminal is still raw"
        );
        self.keys(&["clear", "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-session", "-t", &self.name]);
    }
}

#[test]
fn the_live_screen_shows_the_pair_and_gives_the_terminal_back() {
    if !have_root("the_live_screen_shows_the_pair_and_gives_the_terminal_back") {
        return;
    }
    if !have_program("tmux") {
        assert!(
            std::env::var_os("SOCKSPY_REQUIRE_ROOT").is_none(),
            "tmux is missing (cargo xtask setup installs it)"
        );
        eprintln!("skipped the_live_screen_shows_the_pair_and_gives_the_terminal_back: no tmux");
        return;
    }
    let _turn = one_trace_at_a_time();
    let dir = socket_dir("top-screen");
    let (_server, server_pid) = server(dir.path(), "5,80");
    let tmux = Tmux::new("top", 80, 24);
    let top = format!(
        "{} top {} -d 0.5; echo exited $?",
        sockspy_bin().display(),
        SELECT.join(" ")
    );
    let titles = [
        "CLIENT", "SERVER", "REQ/S", "SENT/S", "RECV/S", "P50", "P99", "MAX", "QUEUED", "ERR",
    ];

    // q, after the screen showed the pair busy, in 80 columns and resized.
    tmux.keys(&[&top, "Enter"]);
    tmux.wait_for("sockspy top's header", |screen| screen.contains("QUEUED"));
    let (mut busy, client_pid) = client(dir.path(), 200, 10);
    // In 80 columns the ends are cut short; the numbers are whole.
    let (screen, line) =
        tmux.wait_for_line("the pair with its latencies", |line| line.contains("ms"));
    let header = screen
        .lines()
        .find(|line| line.starts_with("CLIENT"))
        .unwrap();
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(words, titles, "every column in 80 columns:\n{screen}");
    assert!(screen.lines().all(|line| line.chars().count() <= 80));
    let numbers: Vec<&str> = line.split_whitespace().rev().take(8).collect();
    assert!(
        numbers[7].parse::<f64>().is_ok_and(|rate| rate > 0.0),
        "requests/s: {line}"
    );
    assert!(
        numbers[4].ends_with("ms") && numbers[3].ends_with("ms"),
        "p50, p99: {line}"
    );
    assert!(screen.contains("sort (by requests)"), "{screen}");
    tmux.keys(&[">"]);
    tmux.wait_for("the next sort column", |screen| {
        screen.contains("sort (by sent)")
    });
    tmux.keys(&["<", "<"]);
    tmux.wait_for("the sort column before", |screen| {
        screen.contains("sort (by server)")
    });
    // Wider: the ends are shown whole.
    tmux.tmux(&["resize-window", "-t", &tmux.name, "-x", "140", "-y", "20"]);
    let whole = format!("{SERVER_NAME}[{server_pid}] {}", dir.path());
    tmux.wait_for("both ends whole", |screen| {
        screen.contains(&whole) && screen.contains(&format!("{CLIENT_NAME}[{client_pid}]"))
    });
    tmux.keys(&["q"]);
    tmux.assert_restored("q");
    let _ = busy.kill();
    let _ = busy.wait();

    // Ctrl-C, a key to the raw terminal.
    tmux.keys(&[&top, "Enter"]);
    tmux.wait_for("sockspy top's header", |screen| screen.contains("QUEUED"));
    tmux.keys(&["C-c"]);
    tmux.assert_restored("Ctrl-C");

    // SIGTERM, from outside.
    tmux.keys(&[&top, "Enter"]);
    tmux.wait_for("sockspy top's header", |screen| screen.contains("QUEUED"));
    signal(tmux.program_pid(), libc::SIGTERM);
    tmux.assert_restored("SIGTERM");
}

/// The bytes of a RESP request of `words`, as redis-cli sends it.
fn resp(words: &[&str]) -> u64 {
    let mut bytes = format!("*{}\r\n", words.len());
    for word in words {
        bytes += &format!("${}\r\n{word}\r\n", word.len());
    }
    bytes.len() as u64
}

/// `top --decode` against redis-server and redis-cli: one row per server
/// and command (redis-cli's connections added up), each command's count,
/// bytes and failures (INCR of a string is an error reply), rates and
/// waits; and the text table's KIND column.
#[test]
fn decoded_rows_per_request_kind() {
    if !have_root("decoded_rows_per_request_kind") {
        return;
    }
    let dir = socket_dir("top-kinds");
    let path = dir.path();
    let Some(redis) = RedisServer::start("decoded_rows_per_request_kind", path) else {
        return;
    };
    let select = ["--unix", "--path", path];
    let top =
        Trace::top(&[&["-b", "--json", "-d", "0.5", "--decode"][..], &select].concat()).unwrap();
    RedisServer::cli(path, &["-r", "6", "SET", "k", "v"]);
    RedisServer::cli(path, &["-r", "3", "GET", "k"]);
    RedisServer::cli(path, &["-r", "2", "INCR", "k"]);
    RedisServer::cli(path, &["GET", "k"]);
    // The last connection's rows come with the refresh after it closed.
    thread::sleep(Duration::from_millis(1200));
    let finished = top.stop().unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    let all = finished.events();
    let rows: Vec<&Value> = all
        .iter()
        .filter(|row| row["server"]["path"] == path)
        .collect();
    for row in &rows {
        assert_eq!(row["server"]["pid"], redis.pid, "{row}");
        assert_eq!(row["app"], "redis", "{row}");
        assert!(row["kind"].is_string(), "{row}");
        assert!(row.get("connection").is_none(), "a kind's row: {row}");
        assert!(row["queued_bytes"].is_null(), "{row}");
        let secs = row["interval_s"].as_f64().unwrap();
        let requests = row["requests"].as_u64().unwrap();
        assert!(
            (row["requests_per_s"].as_f64().unwrap() - requests as f64 / secs).abs() < 1e-6,
            "{row}"
        );
        if requests > 0 {
            let (p50, p99, max) = (
                row["wait_p50_us"].as_u64().unwrap(),
                row["wait_p99_us"].as_u64().unwrap(),
                row["wait_max_us"].as_u64().unwrap(),
            );
            assert!(0 < p50 && p50 <= p99 && p99 <= max, "{row}");
        }
    }
    let of_kind = |kind: &str| -> Vec<&Value> {
        rows.iter()
            .copied()
            .filter(|row| row["kind"] == kind)
            .collect()
    };
    let (ok, value) = ("+OK\r\n".len() as u64, "$1\r\nv\r\n".len() as u64);
    for (kind, count, errors, sent, received) in [
        ("SET", 6, 0, 6 * resp(&["SET", "k", "v"]), 6 * ok),
        ("GET", 4, 0, 4 * resp(&["GET", "k"]), 4 * value),
        ("INCR", 2, 2, 2 * resp(&["INCR", "k"]), 0),
    ] {
        let mine = of_kind(kind);
        assert_eq!(sum(&mine, "requests"), count, "{kind}: {rows:#?}");
        assert_eq!(sum(&mine, "errors"), errors, "{kind}: {rows:#?}");
        assert_eq!(sum(&mine, "sent_bytes"), sent, "{kind}: {rows:#?}");
        if received > 0 {
            assert_eq!(sum(&mine, "received_bytes"), received, "{kind}");
        }
    }
    // Two redis-cli made GETs: a row adds up what both did in its interval.
    assert!(
        of_kind("GET")
            .iter()
            .all(|row| row["clients"].as_u64() <= Some(2)),
        "{rows:#?}"
    );

    // The text table, sorted by kind: a KIND column, and no QUEUED.
    let top = Trace::top(
        &[
            &["-b", "-n", "3", "-d", "0.5", "--decode", "--sort", "kind"][..],
            &select,
        ]
        .concat(),
    )
    .unwrap();
    RedisServer::cli(path, &["-r", "50", "-i", "0.02", "PING"]);
    let finished = top.finish().unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    let text = finished.stdout.join("\n");
    let header: Vec<&str> = finished.stdout[1].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "CLIENT", "SERVER", "KIND", "CONNS", "REQ/S", "SENT/S", "RECV/S", "P50", "P99", "MAX",
            "ERR"
        ],
        "{text}"
    );
    let server = format!("redis-server[{}] {path}", redis.pid);
    assert!(
        finished
            .stdout
            .iter()
            .any(|line| line.starts_with("redis-cli[")
                && line.contains(&server)
                && line.contains(" PING ")),
        "{text}"
    );
    assert!(text.contains("request kind"), "{text}");
}
