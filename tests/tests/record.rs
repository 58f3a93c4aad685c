//! Recordings (`-w`): read back as the live view printed, opened by tshark,
//! private, never overwritten, rotated, and readable after a crash.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, mpsc},
    thread,
    time::Duration,
};

use serde_json::Value;
use sockspy_tests::{
    SocketDir, Trace, have_program, have_root, python, python3, run_sockspy, signal, socket_dir,
    sockspy_bin,
};

/// A Unix stream conversation: an HTTP request and its answer, with a
/// marker unique to the run. Prints the pid. The client sends only once the
/// server has accepted, so that every event has a peer to name (two tracers
/// may otherwise see a send into the listen queue differently).
const HTTP: &str = r#"
import os, socket, sys, threading
path = sys.argv[1]
marker = "/sockspy-%d" % os.getpid()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
accepted = threading.Event()
# The client closes first: two threads closing at once would reach the
# ring buffers of two tracers in either order.
client_closed = threading.Event()
def server():
    c, _ = srv.accept()
    accepted.set()
    assert c.recv(1000).startswith(b"GET ")
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    client_closed.wait()
    c.close()
t = threading.Thread(target=server)
t.start()
cl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
cl.connect(path)
accepted.wait()
cl.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % marker).encode())
assert cl.recv(1000).endswith(b"hello")
cl.close()
client_closed.set()
t.join()
print(os.getpid())
"#;

/// Keeps a socketpair busy for `seconds`, with 200-byte messages.
const CHATTER: &str = "
import socket, sys, time
a, b = socket.socketpair()
end = time.time() + float(sys.argv[1])
while time.time() < end:
    a.send(b'x' * 200)
    b.recv(1000)
    time.sleep(0.002)
";

/// Tests here run one at a time: each traces the whole machine, and two
/// cores shared by several tracers make waits flaky.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory of this test's own, removed afterwards.
fn test_dir(test: &str) -> SocketDir {
    socket_dir(test)
}

/// A `sockspy trace` writing a recording, started without the harness's
/// one-trace lock so that a live trace can run beside it.
struct Recording {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Recording {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(sockspy_bin())
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sockspy");
        let (tx, rx) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in err.lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let recording = Self { child, stderr: rx };
        loop {
            match recording.stderr.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with("sockspy: tracing") => break,
                Ok(_) => {}
                Err(_) => panic!("sockspy did not start recording"),
            }
        }
        recording
    }

    /// Stops with `sig` and returns the exit code and the rest of stderr.
    fn stop(mut self, sig: i32) -> (Option<i32>, String) {
        thread::sleep(Duration::from_millis(300));
        signal(self.child.id(), sig);
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.stderr.iter().collect();
        (status.code(), rest.join("\n"))
    }
}

/// `sockspy read --json FILES`, which must succeed; its events.
fn read_json(files: &[&Path]) -> Vec<Value> {
    let mut args = vec!["read".to_owned(), "--json".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_sockspy(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "read failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// Events of `pid` without their time stamps (two tracers measure the
/// wall clock offset apart, a microsecond may differ), thread by thread:
/// the records two threads write at once on two CPUs can reach two
/// tracers' ring buffers in either order, each thread's in its own.
fn untimed(events: &[Value], pid: u64) -> Vec<Value> {
    let mut mine: Vec<Value> = events
        .iter()
        .filter(|ev| ev["pid"] == pid)
        .map(|ev| {
            let mut ev = ev.clone();
            ev.as_object_mut().unwrap().remove("ts");
            ev
        })
        .collect();
    mine.sort_by_key(|ev| ev["tid"].as_u64());
    mine
}

#[test]
fn read_prints_what_the_live_view_printed() {
    if !have_root("read_prints_what_the_live_view_printed") {
        return;
    }
    let _turn = turn();
    let dir = test_dir("live-vs-read");
    let file = dir.join("cap.pcapng");
    let recording = Recording::start(&["--unix", "--data", "-w", file.to_str().unwrap()]);
    let live = Trace::start(&["--unix", "--json", "--data"]).unwrap();
    let pid: u64 = python(HTTP, &[dir.join("s").to_str().unwrap()])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let live = live.stop().unwrap();
    let (code, stderr) = recording.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(" events recorded"), "{stderr}");

    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "recordings are private");
    let read = untimed(&read_json(&[&file]), pid);
    let shown = untimed(&live.events(), pid);
    assert!(
        read.iter()
            .any(|ev| ev["event"] == "send" && ev["data"].is_string()),
        "{read:#?}"
    );
    assert_eq!(read, shown);
}

/// The lines of `pid`'s events in the text view, payload lines included,
/// without the time column (two tracers measure the wall clock apart).
fn text_of(lines: &[String], pid: u64) -> Vec<String> {
    let pid = pid.to_string();
    let mut mine = Vec::new();
    let mut in_event = false;
    for line in lines {
        if line.starts_with(' ') {
            if in_event {
                mine.push(line.clone());
            }
            continue;
        }
        in_event = line.split_whitespace().nth(1) == Some(pid.as_str());
        if in_event {
            mine.push(line.get(16..).unwrap_or_default().to_owned());
        }
    }
    mine
}

#[test]
fn read_prints_the_text_view_too() {
    if !have_root("read_prints_the_text_view_too") {
        return;
    }
    let _turn = turn();
    let dir = test_dir("text-vs-read");
    let file = dir.join("cap.pcapng");
    let recording = Recording::start(&["--data", "-w", file.to_str().unwrap()]);
    let live = Trace::start(&["--data"]).unwrap();
    let pid: u64 = python(HTTP, &[dir.join("s").to_str().unwrap()])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let live = live.stop().unwrap();
    recording.stop(libc::SIGINT);
    let output = run_sockspy(&["trace", "-r", file.to_str().unwrap()]);
    assert!(output.status.success());
    let text: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(text[0], live.stdout[0], "the same header row");
    let read = text_of(&text, pid);
    let marker = format!("    GET /sockspy-{pid} HTTP/1.1\\r\\n");
    assert!(read.contains(&marker), "{read:#?}");
    assert_eq!(read, text_of(&live.stdout, pid));
}

/// Runs tshark, which must succeed; its stdout.
fn tshark(args: &[&str]) -> String {
    let output = Command::new("tshark").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tshark {args:?}: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn tshark_reads_recordings_and_follows_the_stream() {
    if !have_root("tshark_reads_recordings_and_follows_the_stream") {
        return;
    }
    let _turn = turn();
    assert!(have_program("tshark"), "tshark (Debian package) is needed");
    let dir = test_dir("tshark");
    let raw = dir.join("raw.pcapng");
    let framed = dir.join("tcp.pcapng");
    let recording = Recording::start(&["--data", "-w", raw.to_str().unwrap()]);
    let pid_raw = python(HTTP, &[dir.join("s1").to_str().unwrap()]).unwrap();
    recording.stop(libc::SIGINT);
    let recording = Recording::start(&[
        "--data",
        "-w",
        framed.to_str().unwrap(),
        "--pcap-framing",
        "tcp",
        "--pcap-port",
        "80",
    ]);
    let pid = python(HTTP, &[dir.join("s2").to_str().unwrap()]).unwrap();
    recording.stop(libc::SIGINT);

    // Plain: every event is a packet, its facts the comment, the payload its bytes.
    let raw = raw.to_str().unwrap();
    let packets = tshark(&["-r", raw]).lines().count();
    assert_eq!(packets, read_json(&[Path::new(raw)]).len());
    let marker = format!("/sockspy-{}", pid_raw.trim());
    let filter = format!("frame contains \"GET {marker}\"");
    let hits = tshark(&[
        "-r",
        raw,
        "-Y",
        &filter,
        "-T",
        "fields",
        "-e",
        "frame.comment",
    ]);
    let comments: Vec<&str> = hits.lines().collect();
    // The client's send and the server's recv.
    assert_eq!(comments.len(), 2, "{hits}");
    assert!(
        comments.iter().any(|c| c.contains("\"event\":\"send\"")),
        "{hits}"
    );

    // TCP framing: Wireshark's HTTP dissector decodes it, Follow TCP Stream shows both ways.
    let framed = framed.to_str().unwrap();
    let marker = format!("/sockspy-{}", pid.trim());
    let uris = tshark(&[
        "-r",
        framed,
        "-Y",
        "http.request",
        "-T",
        "fields",
        "-e",
        "tcp.stream",
        "-e",
        "http.request.uri",
    ]);
    let stream = uris
        .lines()
        .find_map(|line| line.strip_suffix(&format!("\t{marker}")))
        .unwrap_or_else(|| panic!("no HTTP request for {marker} in:\n{uris}"));
    let follow = tshark(&[
        "-r",
        framed,
        "-q",
        "-z",
        &format!("follow,tcp,ascii,{stream}"),
    ]);
    let request = follow
        .find(&format!("GET {marker} HTTP/1.1"))
        .unwrap_or_else(|| panic!("{follow}"));
    let response = follow
        .find("HTTP/1.1 200 OK")
        .unwrap_or_else(|| panic!("{follow}"));
    assert!(request < response, "{follow}");
    assert!(follow.contains("hello"), "{follow}");
}

/// An HTTP exchange over TCP on 127.0.0.1, on a port the kernel picks, with
/// a marker unique to the run. Prints the pid and the server's port. The
/// client sends only once the server has accepted (see `HTTP`).
const TCP_HTTP: &str = r#"
import os, socket, threading
marker = "/sockspy-%d" % os.getpid()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
accepted = threading.Event()
def server():
    c, _ = srv.accept()
    accepted.set()
    assert c.recv(1000).startswith(b"GET ")
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
    c.close()
t = threading.Thread(target=server)
t.start()
cl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
cl.connect(("127.0.0.1", port))
accepted.wait()
cl.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % marker).encode())
assert cl.recv(1000).endswith(b"hello")
cl.close()
t.join()
srv.close()
print(os.getpid(), port)
"#;

/// A DNS query for `example.test` (type A) from an unbound UDP socket to a
/// server bound on 127.0.0.1 at a port the kernel picks, which answers
/// 127.0.0.1. Prints the pid and the server's port.
const UDP_DNS: &str = r#"
import os, socket, struct, threading
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("127.0.0.1", 0))
port = srv.getsockname()[1]
question = b"\x07example\x04test\x00" + struct.pack("!HH", 1, 1)
def server():
    query, addr = srv.recvfrom(512)
    answer = struct.pack("!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180, 1, 1, 0, 0)
    answer += question + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
    srv.sendto(answer, addr)
t = threading.Thread(target=server)
t.start()
cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cl.sendto(struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question, ("127.0.0.1", port))
reply, _ = cl.recvfrom(512)
assert reply[:2] == b"\x12\x34" and reply.endswith(bytes([127, 0, 0, 1]))
t.join()
cl.close()
srv.close()
print(os.getpid(), port)
"#;

/// Runs `script` (which prints its pid and a port) while a recording with
/// `args` and a live JSON trace with the same selection run; the recording,
/// the live events, the pid and the port.
fn record_ip(test: &str, script: &str, args: &[&str]) -> (SocketDir, Vec<Value>, u64, u16) {
    let dir = test_dir(test);
    let file = dir.join("cap.pcapng");
    let mut recording_args = args.to_vec();
    recording_args.extend(["--data", "-w", file.to_str().unwrap()]);
    let recording = Recording::start(&recording_args);
    let mut live_args = args.to_vec();
    live_args.extend(["--json", "--data"]);
    let live = Trace::start(&live_args).unwrap();
    let printed = python(script, &[]).unwrap();
    let live = live.stop().unwrap();
    let (code, stderr) = recording.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{stderr}");
    let mut words = printed.split_whitespace();
    let pid = words.next().unwrap().parse().unwrap();
    let port = words.next().unwrap().parse().unwrap();
    (dir, live.events(), pid, port)
}

#[test]
fn tcp_payloads_are_packets_wireshark_decodes() {
    if !have_root("tcp_payloads_are_packets_wireshark_decodes") {
        return;
    }
    let _turn = turn();
    assert!(have_program("tshark"), "tshark (Debian package) is needed");
    let (dir, live, pid, port) = record_ip("tcp-http", TCP_HTTP, &["--tcp"]);
    let file = dir.join("cap.pcapng");

    // `read` gives back exactly what the live view printed, addresses included.
    let read = untimed(&read_json(&[&file]), pid);
    assert_eq!(read, untimed(&live, pid));
    let sends: Vec<&Value> = read.iter().filter(|ev| ev["event"] == "send").collect();
    assert_eq!(sends.len(), 2, "{read:#?}");
    for send in &sends {
        assert_eq!(send["laddr"], "127.0.0.1", "{send}");
        assert_eq!(send["raddr"], "127.0.0.1", "{send}");
        assert!(send["lport"] == port || send["rport"] == port, "{send}");
        assert!(send["data"].is_string(), "{send}");
    }

    // Wireshark's HTTP dissector decodes the request and the response.
    let file = file.to_str().unwrap();
    let decode_as = format!("tcp.port=={port},http");
    let http = tshark(&[
        "-r",
        file,
        "-d",
        &decode_as,
        "-Y",
        &format!("http && tcp.port=={port}"),
        "-T",
        "fields",
        "-e",
        "ip.src",
        "-e",
        "http.request.method",
        "-e",
        "http.request.uri",
        "-e",
        "http.response.code",
        "-e",
        "http.file_data",
    ]);
    let lines: Vec<Vec<&str>> = http.lines().map(|l| l.split('\t').collect()).collect();
    let marker = format!("/sockspy-{pid}");
    assert_eq!(lines.len(), 2, "{http}");
    assert_eq!(
        lines[0][..3],
        ["127.0.0.1", "GET", marker.as_str()],
        "{http}"
    );
    assert_eq!(lines[1][3], "200", "{http}");
    assert!(
        lines[1][4].contains("hello") || lines[1][4] == "68656c6c6f",
        "{http}"
    );
    // Each way is written once: the client's and the server's sends.
    let segments = tshark(&[
        "-r",
        file,
        "-Y",
        &format!("tcp.port=={port} && tcp.len > 0"),
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-T",
        "fields",
        "-e",
        "ip.checksum.status",
        "-e",
        "tcp.checksum.status",
        "-e",
        "tcp.analysis.flags",
    ]);
    let segments: Vec<&str> = segments.lines().collect();
    // Checksums verify (status 1 is good); no retransmissions or gaps.
    assert_eq!(segments, ["1\t1\t"; 2], "{segments:?}");
}

#[test]
fn udp_payloads_are_datagrams_wireshark_decodes() {
    if !have_root("udp_payloads_are_datagrams_wireshark_decodes") {
        return;
    }
    let _turn = turn();
    assert!(have_program("tshark"), "tshark (Debian package) is needed");
    let (dir, live, pid, port) = record_ip("udp-dns", UDP_DNS, &["--udp"]);
    let file = dir.join("cap.pcapng");
    let read = untimed(&read_json(&[&file]), pid);
    assert_eq!(read, untimed(&live, pid));

    // The query and the answer, each once.
    let file = file.to_str().unwrap();
    let decode_as = format!("udp.port=={port},dns");
    let dns = tshark(&[
        "-r",
        file,
        "-d",
        &decode_as,
        "-Y",
        &format!("dns && udp.port=={port}"),
        "-o",
        "udp.check_checksum:TRUE",
        "-T",
        "fields",
        "-e",
        "dns.qry.name",
        "-e",
        "dns.flags.response",
        "-e",
        "dns.a",
        "-e",
        "udp.checksum.status",
    ]);
    let lines: Vec<Vec<&str>> = dns.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{dns}");
    assert_eq!(lines[0][..3], ["example.test", "0", ""], "{dns}");
    assert_eq!(lines[1][0], "example.test", "{dns}");
    assert!(["1", "True"].contains(&lines[1][1]), "{dns}");
    assert_eq!(lines[1][2], "127.0.0.1", "{dns}");
    // Checksums verify (status 1 is good).
    assert!(lines.iter().all(|l| l[3] == "1"), "{dns}");
}

#[test]
fn never_overwrites_and_fails_cleanly_on_a_bad_path() {
    if !have_root("never_overwrites_and_fails_cleanly_on_a_bad_path") {
        return;
    }
    let _turn = turn();
    let dir = test_dir("overwrite");
    let file = dir.join("evidence.pcapng");
    std::fs::write(&file, b"earlier capture").unwrap();
    let output = run_sockspy(&["trace", "-w", file.to_str().unwrap(), "--duration", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"earlier capture");

    let output = run_sockspy(&[
        "trace",
        "-w",
        file.to_str().unwrap(),
        "--force",
        "--duration",
        "0.5",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    read_json(&[&file]);

    let output = run_sockspy(&[
        "trace",
        "-w",
        "/nonexistent/dir/cap.pcapng",
        "--duration",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/dir/cap.pcapng"), "{stderr}");
}

#[test]
fn sigkill_leaves_every_complete_record_readable() {
    if !have_root("sigkill_leaves_every_complete_record_readable") {
        return;
    }
    let _turn = turn();
    let dir = test_dir("sigkill");
    let file = dir.join("cap.pcapng");
    let recording = Recording::start(&["--data", "-w", file.to_str().unwrap()]);
    python(CHATTER, &["1.5"]).unwrap();
    let (code, _) = recording.stop(libc::SIGKILL);
    assert_eq!(code, None, "killed");
    let events = read_json(&[&file]);
    assert!(
        events
            .iter()
            .any(|ev| ev["event"] == "send" && ev["bytes"] == 200),
        "{} events",
        events.len()
    );

    // Cut inside the last record: a warning, every whole event, exit 0.
    let bytes = std::fs::read(&file).unwrap();
    let torn = dir.join("torn.pcapng");
    std::fs::write(&torn, &bytes[..bytes.len() - 10]).unwrap();
    let output = run_sockspy(&["read", "--json", torn.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("offset"),
        "{stderr}"
    );
    let lines = String::from_utf8_lossy(&output.stdout).lines().count();
    assert_eq!(lines, events.len() - 1);

    // A bad block length in the middle: every event before it, then one
    // line naming the file and the block's offset, exit 1.
    let mut offset = 0;
    let mut blocks = Vec::new();
    while offset + 8 <= bytes.len() {
        blocks.push(offset);
        offset += u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
    }
    assert_eq!(offset, bytes.len(), "whole blocks");
    // Section header and interfaces come first; the rest are events.
    let block_type = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let headers = blocks
        .iter()
        .take_while(|&&at| matches!(block_type(at), 0x0A0D_0D0A | 1))
        .count();
    let bad_block = headers + (blocks.len() - headers) / 2;
    let at = blocks[bad_block];
    let mut damaged = bytes.clone();
    damaged[at + 4..at + 8].copy_from_slice(&7u32.to_le_bytes());
    let path = dir.join("damaged.pcapng");
    std::fs::write(&path, &damaged).unwrap();
    let output = run_sockspy(&["read", "--json", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("damaged.pcapng") && stderr.contains(&format!("offset {at}")),
        "{stderr}"
    );
    let lines = String::from_utf8_lossy(&output.stdout).lines().count();
    assert_eq!(lines, bad_block - headers);
}

#[test]
fn rotation_keeps_at_most_count_files() {
    if !have_root("rotation_keeps_at_most_count_files") {
        return;
    }
    let _turn = turn();
    let dir = test_dir("rotation");
    let file = dir.join("cap.pcapng");
    let recording = Recording::start(&[
        "--data",
        "-w",
        file.to_str().unwrap(),
        "-C",
        "0.02",
        "-W",
        "3",
    ]);
    python(CHATTER, &["2"]).unwrap();
    let (code, stderr) = recording.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{stderr}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains("cap.pcapng"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    // The first ones were rotated away: the survivors are numbered.
    assert!(!file.exists(), "{files:?}");
    for path in &files {
        let size = std::fs::metadata(path).unwrap().len();
        assert!(size <= 20_000 + 20_000, "{}: {size}", path.display());
        let events = read_json(&[path]);
        assert!(!events.is_empty(), "{}", path.display());
    }
}

#[test]
fn stdout_recording_pipes_into_read() {
    if !have_root("stdout_recording_pipes_into_read") {
        return;
    }
    let _turn = turn();
    let dir = test_dir("pipe");
    let bin = sockspy_bin();
    let bin = bin.display();
    let mut pipeline = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{bin}' trace --data --duration 4 -w - | '{bin}' read - --json"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(pipeline.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.starts_with("sockspy: tracing") {
        line.clear();
    }
    let pid: u64 = python(HTTP, &[dir.join("s").to_str().unwrap()])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let output = pipeline.wait_with_output().unwrap();
    assert!(output.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mine = untimed(&events, pid);
    assert!(
        mine.iter().any(|ev| ev["event"] == "accept")
            && mine
                .iter()
                .any(|ev| ev["event"] == "send" && ev["data"].is_string()),
        "{mine:#?}"
    );
}

#[test]
fn damaged_and_foreign_files_are_clear_errors() {
    if !sockspy_bin().exists() {
        eprintln!("skipped damaged_and_foreign_files_are_clear_errors: sockspy is not built");
        return;
    }
    let dir = test_dir("damaged");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let pcap = [
        0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ];
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty", b"", "empty"),
        ("noise", &noise, "offset 0"),
        ("classic.pcap", &pcap, "not a pcapng"),
    ];
    for (name, bytes, mentions) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let output = run_sockspy(&["read", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(mentions),
            "{name}: {stderr}"
        );
    }
    let output = run_sockspy(&["read", dir.join("missing").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing"));
}

#[test]
fn a_full_disk_stops_the_capture_and_keeps_the_file_readable() {
    if !have_root("a_full_disk_stops_the_capture_and_keeps_the_file_readable") {
        return;
    }
    let _turn = turn();
    let dir = test_dir("full-disk");
    /// Unmounts the small file system however the test ends.
    struct Mounted<'a>(&'a str);
    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let dir_arg = dir.to_str().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "sockspy-test", dir_arg])
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 64 KiB tmpfs");
    let mounted = Mounted(dir_arg);
    let file = dir.join("cap.pcapng");
    let mut capture = Command::new(sockspy_bin())
        .args(["trace", "--data", "-w", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Traffic starts once sockspy traces, and lasts until the disk is full
    // and sockspy has stopped (or the deadline, when sockspy is killed).
    let mut stderr = String::new();
    let mut err = BufReader::new(capture.stderr.take().unwrap());
    while !stderr.contains("sockspy: tracing") && err.read_line(&mut stderr).unwrap() > 0 {}
    let mut chatter = Command::new(python3())
        .args(["-c", CHATTER, "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = capture.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = capture.kill();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let _ = chatter.kill();
    let _ = chatter.wait();
    std::io::Read::read_to_string(&mut err, &mut stderr).unwrap();
    let status = status.unwrap_or_else(|| panic!("sockspy did not stop: {stderr}"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write") && stderr.contains("cap.pcapng"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let events = read_json(&[&file]);
    assert!(!events.is_empty());
    drop(mounted);
}

/// On a terminal, a recording shows a running count instead of events:
/// `script` gives sockspy a pseudo-terminal for its stderr.
#[test]
fn a_terminal_sees_the_live_count() {
    if !have_root("a_terminal_sees_the_live_count") {
        return;
    }
    assert!(have_program("script"), "script (util-linux) is needed");
    let _turn = turn();
    let dir = test_dir("live-count");
    let file = dir.join("cap.pcapng");
    let command = format!(
        "'{}' trace --unix -w '{}' --duration 2.5",
        sockspy_bin().display(),
        file.display()
    );
    let chatter = thread::spawn(|| python(CHATTER, &["2"]));
    let output = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    chatter.join().unwrap().unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    let counts: Vec<u64> = shown
        .split('\r')
        .filter_map(|part| part.strip_prefix("sockspy: "))
        .filter_map(|part| part.split(" events recorded, ").next())
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert!(!counts.is_empty(), "no live count in {shown:?}");
    assert!(
        counts.iter().any(|&n| n > 0),
        "the count never moved: {shown:?}"
    );
    assert!(
        shown.contains(" lost, ") && shown.contains(" bytes"),
        "{shown:?}"
    );
}
