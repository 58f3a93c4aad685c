//! Conversations: `--exchanges`, `--summaries` and `--slower-than`, live
//! and read back from a recording, against real servers whose delays are
//! scripted, collectd and rrdcached, pipelining, a client that goes away
//! mid-response, a reset, a socketpair across a fork, and a connection
//! whose other end is not traced.

use std::{path::PathBuf, process::Child, thread, time::Duration};

use serde_json::Value;
use sockspy_tests::{
    Collectd, Finished, Trace, first_line, have_root, python, run_sockspy, socket_dir,
    spawn_python, wait_ok,
};

/// A server on a Unix socket (ARGV[1] `unix`, path ARGV[2]) or on
/// 127.0.0.1 (`tcp`, any port), named ARGV[3] (its comm), that answers
/// ARGV[5] requests of one client in mode ARGV[4]: `work` sleeps 5 ms and
/// 80 ms in turn before each answer; `lazy` sleeps 30 ms before each read;
/// `pipelined` reads three requests before it answers all three; `flood`
/// answers the first request with 4 MiB and reports how its sends ended;
/// `reset` reads once and then waits to be reset. Prints `pid port`, and
/// at the end in `work` and `lazy` modes when each read returned and each
/// answer was sent (`CLOCK_MONOTONIC` ns): what the times must match.
const SERVER: &str = r#"
import ctypes, os, socket, sys, time
kind, address, name, mode, rounds = sys.argv[1:6]
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
if kind == 'unix':
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(address)
else:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(('127.0.0.1', 0))
srv.listen(1)
port = srv.getsockname()[1] if kind != 'unix' else 0
print(os.getpid(), port, flush=True)
c, _ = srv.accept()
if mode == 'flood':
    c.recv(100)
    try:
        for _ in range(64):
            c.sendall(b'x' * 65536)
    except OSError:
        pass
elif mode == 'reset':
    c.recv(100)
    try:
        c.recv(100)
    except OSError:
        pass
elif mode == 'pipelined':
    for i in range(int(rounds)):
        got = b''
        while got.count(b'\n') < 3:
            got += c.recv(4096)
        for j in range(3):
            c.send(b'answer %d.%d\n' % (i, j))
else:
    stamps = []
    for i in range(int(rounds)):
        if mode == 'lazy':
            time.sleep(0.03)
        if not c.recv(4096):
            break
        stamps.append(time.monotonic_ns())
        if mode == 'work':
            time.sleep((0.005, 0.08)[i % 2])
        stamps.append(time.monotonic_ns())
        c.sendall(b'answer %d\n' % i)
    c.recv(4096)
    print(*stamps, flush=True)
c.close()
"#;

/// The client of [`SERVER`]: connects to ARGV[2] (`unix` path or `tcp`
/// port), names itself ARGV[3], and in mode ARGV[4] asks ARGV[5] times
/// and reads each answer (`pipelined`: three requests, then three
/// answers; `flood`: asks once, reads 64 KiB and closes; `reset`: asks
/// once, then resets the connection; `exit`: as the default, then exits
/// without closing; `shutdown`: asks once, shuts down its sending side,
/// and reads the answer 0.3 s later). Prints its pid and when it sent each
/// request (`CLOCK_MONOTONIC` ns).
const CLIENT: &str = r#"
import ctypes, os, socket, struct, sys, time
kind, address, name, mode, rounds = sys.argv[1:6]
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
sent = []
if kind == 'unix':
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(address)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(('127.0.0.1', int(address)))
if mode == 'flood':
    s.send(b'give me everything\n')
    got = 0
    while got < 65536:
        got += len(s.recv(65536))
elif mode == 'reset':
    s.send(b'hello\n')
    time.sleep(0.1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
elif mode == 'pipelined':
    for i in range(int(rounds)):
        for j in range(3):
            s.send(b'question %d.%d\n' % (i, j))
        got = b''
        while got.count(b'\n') < 3:
            got += s.recv(4096)
        time.sleep(0.01)
elif mode == 'shutdown':
    s.send(b'question 0\n')
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.3)
    while s.recv(4096):
        pass
else:
    for i in range(int(rounds)):
        sent.append(time.monotonic_ns())
        s.send(b'question %d\n' % i)
        s.recv(4096)
        if mode != 'lazy':
            time.sleep(0.01)
print(os.getpid(), *sent, flush=True)
if mode == 'exit':
    os._exit(0)
s.close()
"#;

/// A server of [`SERVER`] with its pid and port.
struct Server {
    child: Child,
    pid: u64,
    port: u64,
}

fn server(kind: &str, address: &str, name: &str, mode: &str, rounds: u32) -> Server {
    let mut child = spawn_python(SERVER, &[kind, address, name, mode, &rounds.to_string()]);
    let line = first_line(&mut child);
    Server {
        child,
        pid: line[0],
        port: line[1],
    }
}

/// Runs the client to the end; its pid and when it sent each request.
fn client(kind: &str, address: &str, name: &str, mode: &str, rounds: u32) -> (u64, Vec<u64>) {
    let out = python(CLIENT, &[kind, address, name, mode, &rounds.to_string()]).unwrap();
    let numbers: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    (numbers[0], numbers[1..].to_vec())
}

/// The records of one kind (`exchange`, `summary`).
fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == kind).collect()
}

fn us(record: &Value, field: &str) -> u64 {
    record[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {record}"))
}

/// `got` is within 2 ms or 10 % of `want` microseconds, whichever is larger.
fn close_to(got: u64, want: u64) -> bool {
    got.abs_diff(want) <= (want / 10).max(2_000)
}

/// The nearest-rank percentile of `values`, as the summary computes it exactly.
fn percentile(values: &[u64], percent: u64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() as u64 * percent).div_ceil(100).max(1);
    sorted[rank as usize - 1]
}

/// Runs a [`SERVER`] in `mode` and its client on a Unix socket of test
/// `name` under `sockspy trace --unix --json --path SOCKET EXTRA`; the
/// records printed, when the client sent each request and when the
/// server's reads returned (`work` and `lazy` modes).
fn unix_conversation(
    name: &str,
    mode: &str,
    rounds: u32,
    extra: &[&str],
) -> (Vec<Value>, Vec<u64>, Vec<u64>) {
    let dir = socket_dir(name);
    let path = dir.path();
    let args = [&["--unix", "--json", "--path", path][..], extra].concat();
    let trace = Trace::start(&args).unwrap();
    let mut srv = server("unix", path, name, mode, rounds);
    let (_, sent) = client("unix", path, "asker", mode, rounds);
    let reads = if matches!(mode, "work" | "lazy") {
        first_line(&mut srv.child).into_iter().step_by(2).collect()
    } else {
        Vec::new()
    };
    wait_ok(&mut srv.child);
    (stopped(trace).events(), sent, reads)
}

fn stopped(trace: Trace) -> Finished {
    let finished = trace.stop().unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished
}

/// A server that works 5 ms and 80 ms in turn: each exchange's
/// `server_us` is that delay, the parts add up to `wait_us`, both ends are
/// named, and the summary's percentiles are those of the exchanges. A
/// recording of the same trace reads back into the same exchanges.
#[test]
fn server_time_is_the_scripted_delay() {
    if !have_root("server_time_is_the_scripted_delay") {
        return;
    }
    let dir = socket_dir("conv-work");
    let recording = PathBuf::from(dir.path()).with_extension("pcapng");
    let _ = std::fs::remove_file(&recording);
    let path = dir.path();
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--summaries",
        "--path",
        path,
    ])
    .unwrap();
    let record = trace
        .also(&["--unix", "--path", path, "-w", recording.to_str().unwrap()])
        .unwrap();
    let mut srv = server("unix", path, "worker", "work", 10);
    let (client_pid, _) = client("unix", path, "asker", "work", 10);
    let stamps = first_line(&mut srv.child);
    wait_ok(&mut srv.child);
    let live = stopped(trace).events();
    let _ = stopped(record);

    let exchanges = of_kind(&live, "exchange");
    assert_eq!(exchanges.len(), 10, "{live:#?}");
    for (i, exchange) in exchanges.iter().enumerate() {
        assert_eq!(exchange["client"]["pid"], client_pid, "{exchange}");
        assert_eq!(exchange["client"]["comm"], "asker", "{exchange}");
        assert_eq!(exchange["server"]["pid"], srv.pid, "{exchange}");
        assert_eq!(exchange["server"]["path"], path, "{exchange}");
        assert!(exchange["server"]["fd"].is_u64(), "{exchange}");
        assert_eq!(
            us(exchange, "request_bytes"),
            format!("question {i}\n").len() as u64
        );
        assert_eq!(
            us(exchange, "response_bytes"),
            format!("answer {i}\n").len() as u64
        );
        assert_eq!(us(exchange, "request_messages"), 1);
        // What the server measured itself: from its read's return to its
        // answer (5 ms or 80 ms, more on a loaded machine).
        let worked = (stamps[2 * i + 1] - stamps[2 * i]) / 1000;
        assert!(worked >= [5_000, 80_000][i % 2]);
        let server_us = us(exchange, "server_us");
        assert!(
            close_to(server_us, worked),
            "server_us {server_us} for {worked}: {exchange}"
        );
        let parts: u64 = ["queue_us", "read_us", "server_us", "return_us"]
            .iter()
            .map(|part| us(exchange, part))
            .sum();
        assert_eq!(parts, us(exchange, "wait_us"), "{exchange}");
    }

    let summaries = of_kind(&live, "summary");
    assert_eq!(summaries.len(), 1, "{live:#?}");
    let summary = summaries[0];
    assert_eq!(summary["exchanges"], 10);
    assert_eq!(summary["closed_by"], "client", "{summary}");
    assert_eq!(summary["open"], false);
    assert_eq!(summary["client"]["pid"], client_pid);
    let waits: Vec<u64> = exchanges.iter().map(|e| us(e, "wait_us")).collect();
    for (field, percent) in [
        ("wait_p50_us", 50),
        ("wait_p90_us", 90),
        ("wait_p99_us", 99),
    ] {
        let want = percentile(&waits, percent);
        let got = us(summary, field);
        assert!(got.abs_diff(want) <= want / 16, "{field} {got} vs {want}");
    }
    assert_eq!(us(summary, "wait_max_us"), *waits.iter().max().unwrap());
    let sent: u64 = exchanges.iter().map(|e| us(e, "request_bytes")).sum();
    assert_eq!(us(summary, "sent_bytes"), sent);

    // The recording gives the same exchanges, and --slower-than keeps the slow ones.
    let file = recording.to_str().unwrap();
    let read = run_sockspy(&["read", file, "--json", "--exchanges"]);
    assert!(read.status.success());
    let text = String::from_utf8_lossy(&read.stdout);
    let from_file: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The recording was made by a second sockspy, whose programs read the
    // clock right after (or before) the first one's, a microsecond or so
    // apart, more on a loaded machine: the same exchanges, their times
    // within 50 us.
    assert_eq!(exchanges.len(), from_file.len(), "{from_file:#?}");
    for (live, read) in exchanges.iter().zip(&from_file) {
        for field in [
            "request_bytes",
            "response_bytes",
            "request_messages",
            "response_messages",
        ] {
            assert_eq!(live[field], read[field], "{field}: {live} vs {read}");
        }
        for field in ["queue_us", "server_us", "return_us", "wait_us"] {
            assert!(
                us(live, field).abs_diff(us(read, field)) <= 50,
                "{field}: {live} vs {read}"
            );
        }
        assert_eq!(live["server"]["pid"], read["server"]["pid"]);
    }
    let slow = run_sockspy(&["read", file, "--json", "--slower-than", "50ms"]);
    let slow: Vec<Value> = String::from_utf8_lossy(&slow.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(slow.len(), 5, "{slow:#?}");
    assert!(slow.iter().all(|e| us(e, "wait_us") >= 50_000));
    let _ = std::fs::remove_file(&recording);
}

/// A server that sleeps 30 ms before each read: the time goes to
/// `queue_us` (the request unread in the socket), not `server_us`.
#[test]
fn a_busy_server_shows_as_queueing() {
    if !have_root("a_busy_server_shows_as_queueing") {
        return;
    }
    let (records, sent, reads) = unix_conversation("conv-lazy", "lazy", 8, &["--exchanges"]);
    let exchanges = of_kind(&records, "exchange");
    assert_eq!(exchanges.len(), 8, "{records:#?}");
    // The first request waits for the accept as well.
    for (i, exchange) in exchanges.iter().enumerate().skip(1) {
        // From the client's send to the server's read, as the two
        // measured it: 30 ms and a little, more on a loaded machine.
        let unread = (reads[i] - sent[i]) / 1000;
        assert!(unread >= 25_000, "{unread}");
        let queue = us(exchange, "queue_us");
        assert!(
            close_to(queue, unread),
            "queue_us {queue} for {unread}: {exchange}"
        );
        assert!(us(exchange, "server_us") < 2_000, "{exchange}");
    }
}

/// Three requests before any answer are one request turn of three
/// messages, and the three answers one response turn.
#[test]
fn pipelined_requests_are_one_turn() {
    if !have_root("pipelined_requests_are_one_turn") {
        return;
    }
    let (records, ..) = unix_conversation("conv-pipe", "pipelined", 4, &["--exchanges"]);
    let exchanges = of_kind(&records, "exchange");
    assert_eq!(exchanges.len(), 4, "{records:#?}");
    for (i, exchange) in exchanges.iter().enumerate() {
        assert_eq!(exchange["request_messages"], 3, "{exchange}");
        assert_eq!(exchange["response_messages"], 3, "{exchange}");
        let asked: usize = (0..3).map(|j| format!("question {i}.{j}\n").len()).sum();
        let answered: usize = (0..3).map(|j| format!("answer {i}.{j}\n").len()).sum();
        assert_eq!(us(exchange, "request_bytes"), asked as u64);
        assert_eq!(us(exchange, "response_bytes"), answered as u64);
    }
}

/// A client that reads 64 KiB of a 4 MiB answer and closes: one exchange
/// (what moved until then), the client closed first, and the server's
/// failed send is the connection's error.
#[test]
fn a_client_that_leaves_mid_response() {
    if !have_root("a_client_that_leaves_mid_response") {
        return;
    }
    let (records, ..) =
        unix_conversation("conv-flood", "flood", 1, &["--exchanges", "--summaries"]);
    let exchanges = of_kind(&records, "exchange");
    assert_eq!(exchanges.len(), 1, "{records:#?}");
    assert!(us(exchanges[0], "response_bytes") >= 65536);
    assert!(exchanges[0]["wait_us"].is_u64());
    let summary = of_kind(&records, "summary")[0];
    assert_eq!(summary["closed_by"], "client", "{summary}");
    assert!(us(summary, "errors") >= 1, "{summary}");
    let names = summary["error_names"].as_object().unwrap();
    assert!(
        names.contains_key("EPIPE") || names.contains_key("ECONNRESET"),
        "{summary}"
    );
}

/// A TCP client that resets its connection: the server's read fails, and
/// the summary counts the reset.
#[test]
fn a_reset_is_an_error_of_the_connection() {
    if !have_root("a_reset_is_an_error_of_the_connection") {
        return;
    }
    let trace = Trace::start(&[
        "--tcp",
        "--json",
        "--summaries",
        "--comm",
        "resetter",
        "--comm",
        "reset-srv",
    ])
    .unwrap();
    let mut srv = server("tcp", "", "reset-srv", "reset", 1);
    let (client_pid, _) = client("tcp", &srv.port.to_string(), "resetter", "reset", 1);
    wait_ok(&mut srv.child);
    let records = stopped(trace).events();
    let summaries: Vec<&Value> = of_kind(&records, "summary")
        .into_iter()
        .filter(|s| s["client"]["pid"] == client_pid)
        .collect();
    assert_eq!(summaries.len(), 1, "{records:#?}");
    let summary = summaries[0];
    assert_eq!(summary["server"]["pid"], srv.pid, "{summary}");
    assert!(
        summary["error_names"]
            .as_object()
            .unwrap()
            .contains_key("ECONNRESET"),
        "{summary}"
    );
}

/// A socketpair shared across a fork: the child, which speaks first, is
/// the client; the parent answers.
#[test]
fn a_socketpair_between_parent_and_child() {
    if !have_root("a_socketpair_between_parent_and_child") {
        return;
    }
    const PAIR: &str = r#"
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b'pairparent', 0, 0, 0)
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(15, b'pairchild', 0, 0, 0)
    a.close()
    for i in range(3):
        b.send(b'ping %d' % i)
        b.recv(100)
    os._exit(0)
b.close()
for i in range(3):
    a.recv(100)
    a.send(b'pong %d' % i)
os.waitpid(pid, 0)
print(os.getpid(), pid, flush=True)
"#;
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--comm",
        "pairparent",
        "--comm",
        "pairchild",
    ])
    .unwrap();
    let out = python(PAIR, &[]).unwrap();
    let pids: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    let records = stopped(trace).events();
    let exchanges = of_kind(&records, "exchange");
    assert_eq!(exchanges.len(), 3, "{records:#?}");
    for exchange in exchanges {
        assert_eq!(exchange["client"]["pid"], pids[1], "{exchange}");
        assert_eq!(exchange["client"]["comm"], "pairchild");
        assert_eq!(exchange["server"]["pid"], pids[0], "{exchange}");
        assert_eq!(us(exchange, "request_bytes"), 6);
        assert!(exchange["wait_us"].is_u64() && exchange["server_us"].is_u64());
    }
}

/// Only the client's calls traced (its server's are filtered out in the
/// kernel, as a remote server's would be missing): each exchange has the
/// client's `wait_us` and nothing of what only the server's calls show.
#[test]
fn one_end_seen_gives_what_it_can() {
    if !have_root("one_end_seen_gives_what_it_can") {
        return;
    }
    let trace = Trace::start(&["--tcp", "--json", "--exchanges", "--comm", "lonely"]).unwrap();
    let mut srv = server("tcp", "", "unseen", "work", 4);
    let (client_pid, _) = client("tcp", &srv.port.to_string(), "lonely", "work", 4);
    wait_ok(&mut srv.child);
    let records = stopped(trace).events();
    let exchanges = of_kind(&records, "exchange");
    assert_eq!(exchanges.len(), 4, "{records:#?}");
    for (i, exchange) in exchanges.iter().enumerate() {
        assert_eq!(exchange["client"]["pid"], client_pid, "{exchange}");
        assert_eq!(exchange["server"]["port"], srv.port, "{exchange}");
        for part in ["queue_us", "read_us", "server_us", "return_us"] {
            assert!(exchange[part].is_null(), "{part} in {exchange}");
        }
        let wait = us(exchange, "wait_us");
        assert!(wait >= [5_000, 80_000][i % 2], "{exchange}");
    }
}

/// collectd and rrdcached: every `update` and its answer are one exchange
/// between the right ends, as many as collectd sent updates.
#[test]
fn collectd_updates_are_exchanges() {
    if !have_root("collectd_updates_are_exchanges") {
        return;
    }
    let dir = socket_dir("conv-collectd");
    let recording = PathBuf::from(dir.path()).with_extension("pcapng");
    let _ = std::fs::remove_file(&recording);
    let file = recording.to_str().unwrap();
    let trace = Trace::start(&[
        "--unix",
        "--path",
        "*rrdcached.sock",
        "--data=4096",
        "-w",
        file,
    ])
    .unwrap();
    let setup = Collectd::start("conversation").unwrap();
    let setup_pid = setup.rrdcached_pid;
    thread::sleep(Duration::from_secs(5));
    drop(setup);
    let _ = stopped(trace);

    let read = |args: &[&str]| -> Vec<Value> {
        let output = run_sockspy(&[&["read", file, "--json"], args].concat());
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let events = read(&[]);
    let sends: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "send" && e["comm"] == "collectd")
        .map(|e| String::from_utf8_lossy(&sockspy_tests::payload(e)).into_owned())
        .collect();
    let updates = sends.iter().filter(|s| s.starts_with("update ")).count();
    assert!(updates >= 2, "too few updates in {events:#?}");
    let text = |e: &Value, field: &str| {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(e[field].as_str().unwrap_or_default())
            .unwrap();
        String::from_utf8_lossy(&data).into_owned()
    };
    let exchanges = read(&["--exchanges"]);
    // collectd asks one thing at a time (update, forget, STATS): one
    // exchange per request it sent.
    assert_eq!(exchanges.len(), sends.len(), "{exchanges:#?}");
    let mut answered = 0;
    for exchange in &exchanges {
        assert_eq!(exchange["client"]["comm"], "collectd", "{exchange}");
        assert_eq!(exchange["server"]["comm"], "rrdcached", "{exchange}");
        assert_eq!(exchange["server"]["pid"], setup_pid, "{exchange}");
        assert!(exchange["wait_us"].is_u64() && exchange["server_us"].is_u64());
        if text(exchange, "request_data").starts_with("update ") {
            assert!(
                text(exchange, "response_data").starts_with("0 errors, enqueued"),
                "{exchange}"
            );
            answered += 1;
        }
    }
    assert_eq!(answered, updates);
    let _ = std::fs::remove_file(&recording);
}

/// UDP: every datagram and the reply from the socket it went to are an
/// exchange; a datagram nobody answers is one with an empty response.
#[test]
fn datagrams_and_their_replies() {
    if !have_root("datagrams_and_their_replies") {
        return;
    }
    const UDP: &str = r#"
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b'udp-echo', 0, 0, 0)
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(('127.0.0.1', 0))
pid = os.fork()
if pid == 0:
    for _ in range(5):
        data, addr = srv.recvfrom(100)
        srv.sendto(b'reply ' + data, addr)
    srv.recvfrom(100)
    os._exit(0)
ctypes.CDLL(None).prctl(15, b'udp-asker', 0, 0, 0)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    c.sendto(b'ask %d' % i, srv.getsockname())
    c.recvfrom(100)
c.sendto(b'bye', srv.getsockname())
os.waitpid(pid, 0)
print(os.getpid(), pid, srv.getsockname()[1], flush=True)
"#;
    let trace = Trace::start(&[
        "--udp",
        "--json",
        "--exchanges",
        "--comm",
        "udp-echo",
        "--comm",
        "udp-asker",
    ])
    .unwrap();
    let out = python(UDP, &[]).unwrap();
    let [asker, echo, port]: [u64; 3] = out
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let records = stopped(trace).events();
    let exchanges = of_kind(&records, "exchange");
    assert_eq!(exchanges.len(), 6, "{records:#?}");
    for (i, exchange) in exchanges.iter().enumerate() {
        assert_eq!(exchange["proto"], "udp");
        assert_eq!(exchange["client"]["pid"], asker, "{exchange}");
        assert_eq!(exchange["server"]["pid"], echo, "{exchange}");
        assert_eq!(exchange["server"]["port"], port, "{exchange}");
        assert_eq!(exchange["request_messages"], 1, "{exchange}");
        let answered = i < 5;
        assert_eq!(
            exchange["response_messages"],
            u64::from(answered),
            "{exchange}"
        );
        assert_eq!(exchange["wait_us"].is_u64(), answered, "{exchange}");
    }
}

/// A forking server: the parent accepts, forks a worker and closes its
/// copy. That close ends nothing: the worker's three answers are three
/// exchanges of one connection, summarised once, when the worker closes.
#[test]
fn a_forking_servers_parent_closing_its_copy_ends_nothing() {
    if !have_root("a_forking_servers_parent_closing_its_copy_ends_nothing") {
        return;
    }
    const FORKING: &str = r#"
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b'forking', 0, 0, 0)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print(os.getpid(), flush=True)
c, _ = srv.accept()
pid = os.fork()
if pid == 0:
    for i in range(3):
        c.recv(100)
        c.send(b'answer %d\n' % i)
    c.recv(100)
    os._exit(0)
c.close()
print(pid, flush=True)
os.waitpid(pid, 0)
"#;
    let dir = socket_dir("conv-fork");
    let path = dir.path();
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--summaries",
        "--path",
        path,
    ])
    .unwrap();
    let mut srv = spawn_python(FORKING, &[path]);
    first_line(&mut srv);
    let (client_pid, _) = client("unix", path, "asker", "plain", 3);
    let worker = first_line(&mut srv)[0];
    wait_ok(&mut srv);
    let records = stopped(trace).events();
    let exchanges = of_kind(&records, "exchange");
    assert_eq!(exchanges.len(), 3, "{records:#?}");
    for exchange in &exchanges {
        assert_eq!(exchange["server"]["pid"], worker, "{exchange}");
        assert_eq!(exchange["client"]["pid"], client_pid, "{exchange}");
    }
    let summaries = of_kind(&records, "summary");
    assert_eq!(summaries.len(), 1, "{records:#?}");
    assert_eq!(summaries[0]["exchanges"], 3);
    assert_eq!(summaries[0]["open"], false);
    assert_eq!(summaries[0]["closed_by"], "client");
}

/// A connect refused (no listener at the port, none at the path) is a
/// connection with one error, summarised when the client closes.
#[test]
fn a_refused_connection_is_summarised() {
    if !have_root("a_refused_connection_is_summarised") {
        return;
    }
    const REFUSED: &str = r#"
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b'refused', 0, 0, 0)
probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
probe.bind(('127.0.0.1', 0))
port = probe.getsockname()[1]
probe.close()
for family, address in ((socket.AF_INET, ('127.0.0.1', port)), (socket.AF_UNIX, sys.argv[1])):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.connect(address)
    except OSError:
        pass
    s.close()
print(os.getpid(), port, flush=True)
"#;
    let dir = socket_dir("conv-refused");
    let path = dir.path();
    std::fs::write(path, b"").unwrap();
    let trace = Trace::start(&["--json", "--summaries", "--comm", "refused"]).unwrap();
    let out = python(REFUSED, &[path]).unwrap();
    let numbers: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    let records = stopped(trace).events();
    let summaries = of_kind(&records, "summary");
    assert_eq!(summaries.len(), 2, "{records:#?}");
    for summary in &summaries {
        assert_eq!(summary["client"]["pid"], numbers[0], "{summary}");
        assert_eq!(summary["open"], false, "{summary}");
        assert_eq!(summary["exchanges"], 0, "{summary}");
        assert_eq!(summary["errors"], 1, "{summary}");
        assert_eq!(summary["error_names"]["ECONNREFUSED"], 1, "{summary}");
    }
    assert_eq!(summaries[0]["server"]["port"], numbers[1]);
    assert_eq!(summaries[1]["server"]["path"], path);
}

/// A client that exits without closing its socket (the kernel closes it,
/// with no system call): its connection ends when the server has read
/// the end of the stream and closed, not when the trace stops. A client
/// that only shut down its sending side still reads the answer after the
/// server closed: its connection ends after that read.
#[test]
fn a_client_gone_without_a_close_ends_its_connection() {
    if !have_root("a_client_gone_without_a_close_ends_its_connection") {
        return;
    }
    let dir = socket_dir("conv-exit");
    let path = dir.path();
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--summaries",
        "--exchanges",
        "--path",
        path,
    ])
    .unwrap();
    for (mode, rounds) in [("exit", 3), ("shutdown", 1)] {
        let mut srv = server("unix", path, "exitsrv", "plain", rounds);
        let (client_pid, _) = client("unix", path, "exitcli", mode, rounds);
        wait_ok(&mut srv.child);
        // The server's close is the last record of the connection.
        thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_file(path);
        let records = trace.events_so_far();
        let summary = of_kind(&records, "summary")
            .into_iter()
            .find(|s| s["client"]["pid"] == client_pid)
            .unwrap_or_else(|| panic!("{mode}: no summary before the trace stopped: {records:#?}"));
        assert_eq!(summary["open"], false, "{mode}: {summary}");
        assert_eq!(summary["closed_by"], "client", "{mode}: {summary}");
        assert_eq!(summary["exchanges"], rounds, "{mode}: {summary}");
        let answered = of_kind(&records, "exchange")
            .into_iter()
            .filter(|e| e["client"]["pid"] == client_pid)
            .all(|e| e["return_us"].is_u64());
        assert!(answered, "{mode}: every answer was read: {records:#?}");
    }
    let _ = stopped(trace);
}
