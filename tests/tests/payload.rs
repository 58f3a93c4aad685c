//! Payload capture (`--data`): byte-exact snippets, limits and rendering.

use std::time::Duration;

use serde_json::Value;
use sockspy_tests::{Collectd, Trace, find_data, have_root, payload, python, traced_script};

/// The bytes of the test message of `size` bytes: a pattern that differs
/// per size and per position, so a misplaced chunk shows.
fn message(size: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + size) % 251) as u8).collect()
}

/// Sends messages of the sizes given over a stream socketpair; the reader
/// takes each whole (MSG_WAITALL), in its own thread.
const SIZES: &str = r#"
import json, os, socket, sys, threading
def message(size):
    return bytes((i * 7 + size) % 251 for i in range(size))
sizes = [int(s) for s in sys.argv[1:]]
a, b = socket.socketpair()
def reader():
    for size in sizes:
        assert b.recv(size, socket.MSG_WAITALL) == message(size)
t = threading.Thread(target=reader)
t.start()
for size in sizes:
    a.sendall(message(size))
t.join()
print(json.dumps({"pid": os.getpid(), "tx": a.fileno(), "rx": b.fileno()}))
"#;

#[test]
fn captures_the_first_bytes_of_each_call() {
    if !have_root("captures_the_first_bytes_of_each_call") {
        return;
    }
    let (events, facts) = traced_script(
        &["--unix", "--json", "--data=4096"],
        SIZES,
        &["1", "100", "4096", "100000"],
    );
    let pid = facts["pid"].as_u64().unwrap();
    for size in [1usize, 100, 4096, 100000] {
        let sent = message(size);
        let want = size.min(4096);
        for (event, fd) in [("send", &facts["tx"]), ("recv", &facts["rx"])] {
            let ev = find_data(&events, pid, event, size as u64);
            assert_eq!(&ev["fd"], fd, "{ev}");
            assert_eq!(ev["captured"], want as u64, "{event} of {size}: {ev}");
            assert_eq!(ev["truncated"], size > 4096, "{event} of {size}: {ev}");
            assert_eq!(payload(ev), sent[..want], "{event} of {size} bytes");
        }
    }
}

/// Scatter/gather both ways: writev of three iovecs read by recvmsg into
/// two buffers, sendmsg of two read by readv into two.
const VECTORS: &str = r#"
import json, os, socket
a, b = socket.socketpair()
assert os.writev(a.fileno(), [b"abc", b"defgh", b"ij"]) == 10
n, _, _, _ = b.recvmsg_into([bytearray(4), bytearray(20)])
assert n == 10
assert a.sendmsg([b"KLMNOPQ", b"rstu"]) == 11
assert os.readv(b.fileno(), [bytearray(3), bytearray(30)]) == 11
print(json.dumps({"pid": os.getpid()}))
"#;

#[test]
fn vectored_calls_capture_the_concatenation() {
    if !have_root("vectored_calls_capture_the_concatenation") {
        return;
    }
    let (events, facts) = traced_script(&["--unix", "--json", "--data"], VECTORS, &[]);
    let pid = facts["pid"].as_u64().unwrap();
    let expect = [
        ("send", 10, "writev", "abcdefghij"),
        ("recv", 10, "recvmsg", "abcdefghij"),
        ("send", 11, "sendmsg", "KLMNOPQrstu"),
        ("recv", 11, "readv", "KLMNOPQrstu"),
    ];
    for (event, bytes, call, text) in expect {
        let ev = find_data(&events, pid, event, bytes);
        assert_eq!(ev["call"], call, "{ev}");
        assert_eq!(payload(ev), text.as_bytes(), "{ev}");
        assert_eq!(ev["truncated"], false, "{ev}");
    }
}

/// `sendmmsg` of three datagrams, each from its own iovecs, and `recvmmsg`
/// of all three into two buffers each (through ctypes: Python has neither).
const MESSAGE_VECTORS: &str = r#"
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
keep = []
def vector(msgs, parts_of_each):
    """Points each message at iovecs over buffers holding its parts."""
    buffers = []
    for msg, parts in zip(msgs, parts_of_each):
        bufs = [ctypes.create_string_buffer(part, len(part)) for part in parts]
        iovs = (iovec * len(bufs))(*[iovec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in bufs])
        keep.append(iovs)
        msg.hdr.iov = iovs
        msg.hdr.iovlen = len(bufs)
        buffers.append(bufs)
    return buffers
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
sent = (mmsghdr * 3)()
vector(sent, [[b"one"], [b"sec", b"ond"], [b"the ", b"third"]])
assert libc.sendmmsg(a.fileno(), sent, 3, 0) == 3, ctypes.get_errno()
got = (mmsghdr * 3)()
buffers = vector(got, [[bytes(2), bytes(20)] for _ in range(3)])
assert libc.recvmmsg(b.fileno(), got, 3, 0, None) == 3, ctypes.get_errno()
assert [m.len for m in got] == [3, 6, 9]
received = [b"".join(buf.raw for buf in buffers[i])[: got[i].len] for i in range(3)]
assert received == [b"one", b"second", b"the third"], received
print(json.dumps({"pid": os.getpid(), "tx": a.fileno(), "rx": b.fileno()}))
"#;

#[test]
fn message_vectors_capture_each_message() {
    if !have_root("message_vectors_capture_each_message") {
        return;
    }
    let (events, facts) = traced_script(&["--unix", "--json", "--data"], MESSAGE_VECTORS, &[]);
    let pid = facts["pid"].as_u64().unwrap();
    for text in ["one", "second", "the third"] {
        for (event, call, fd) in [
            ("send", "sendmmsg", &facts["tx"]),
            ("recv", "recvmmsg", &facts["rx"]),
        ] {
            let ev = find_data(&events, pid, event, text.len() as u64);
            assert_eq!(ev["call"], call, "{ev}");
            assert_eq!(&ev["fd"], fd, "{ev}");
            assert_eq!(payload(ev), text.as_bytes(), "{ev}");
        }
    }
}

/// Runs `script` (which prints its pid) under a text-mode trace and returns
/// the lines printed after its first `send` event: the payload rendering.
fn text_after_send(args: &[&str], script: &str) -> Vec<String> {
    let trace = Trace::start(args).unwrap();
    let pid = python(script, &[]).unwrap().trim().to_owned();
    let done = trace.stop().unwrap();
    let send = done
        .stdout
        .iter()
        .position(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&pid.as_str()) && fields.contains(&"send")
        })
        .unwrap_or_else(|| panic!("no send line of {pid} in {:#?}", done.stdout));
    done.stdout[send + 1..].to_vec()
}

const BINARY: &str = r#"
import os, socket
a, b = socket.socketpair()
a.send(bytes(range(256)))
assert b.recv(1000) == bytes(range(256))
print(os.getpid())
"#;

#[test]
fn binary_payload_renders_as_hex_and_round_trips() {
    if !have_root("binary_payload_renders_as_hex_and_round_trips") {
        return;
    }
    let all: Vec<u8> = (0..=255).collect();
    let trace = Trace::start(&["--unix", "--json", "--data=1024"]).unwrap();
    let pid: u64 = python(BINARY, &[]).unwrap().trim().parse().unwrap();
    let events = trace.stop().unwrap().events();
    for event in ["send", "recv"] {
        let ev = find_data(&events, pid, event, 256);
        assert_eq!(payload(ev), all, "{ev}");
        assert_eq!(ev["captured"], 256, "{ev}");
    }

    let lines = text_after_send(&["--unix", "--data=1024"], BINARY);
    let dump = &lines[..16];
    assert_eq!(
        dump[0].trim(),
        "0x0000:  0001 0203 0405 0607 0809 0a0b 0c0d 0e0f  ................"
    );
    assert_eq!(
        dump[4].trim(),
        "0x0040:  4041 4243 4445 4647 4849 4a4b 4c4d 4e4f  @ABCDEFGHIJKLMNO"
    );
    assert!(
        dump[15].trim().starts_with("0x00f0:  f0f1 f2f3"),
        "{dump:#?}"
    );
}

const TEXT: &str = r#"
import os, socket
a, b = socket.socketpair()
a.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
b.recv(1000)
print(os.getpid())
"#;

#[test]
fn text_payload_shows_as_text_or_hex_on_request() {
    if !have_root("text_payload_shows_as_text_or_hex_on_request") {
        return;
    }
    for hex in [false, true] {
        let mut args = vec!["--unix", "--data"];
        if hex {
            args.push("--hex");
        }
        let lines = text_after_send(&args, TEXT);
        let next = lines[0].trim();
        if hex {
            assert!(next.starts_with("0x0000:  4745 5420"), "{next}");
        } else {
            assert_eq!(next, r"GET / HTTP/1.0\r\n");
            assert_eq!(lines[1].trim(), r"Host: x\r\n");
        }
    }
}

/// The commands of rrdcached's protocol (rrdcached(1)), and `.`, which ends a batch.
const RRDCACHED_COMMANDS: &[&str] = &[
    "UPDATE", "FORGET", "FLUSH", "FLUSHALL", "PENDING", "STATS", "BATCH", "WROTE", "QUIT", "HELP",
    "FETCH", "CREATE", "INFO", "FIRST", "LAST", ".",
];

#[test]
fn collectd_and_rrdcached_protocol() {
    if !have_root("collectd_and_rrdcached_protocol") {
        return;
    }
    let trace = Trace::start(&["--unix", "--json", "--data=4096"]).unwrap();
    let setup = Collectd::start("payload").unwrap();
    let collectd = setup.collectd_pid();
    let rrdcached = setup.rrdcached_pid;
    let text = |ev: &Value| String::from_utf8_lossy(&payload(ev)).into_owned();
    let request =
        |ev: &Value| ev["pid"] == collectd && ev["event"] == "send" && ev["data"].is_string();
    let answer = |ev: &Value| {
        ev["pid"] == rrdcached
            && ev["event"] == "send"
            && ev["peer"]["pid"] == collectd
            && ev["data"].is_string()
    };
    let seen = trace.wait_for(Duration::from_secs(20), |events| {
        events.iter().any(request) && events.iter().any(answer)
    });
    let events = trace.stop().unwrap().events();
    assert!(seen, "no exchange with payload in {} events", events.len());
    for ev in events.iter().filter(|ev| request(ev)) {
        let line = text(ev);
        let command = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        assert!(
            RRDCACHED_COMMANDS.contains(&command.as_str()),
            "collectd sent {line:?}, not an rrdcached command"
        );
    }
    assert!(
        events
            .iter()
            .filter(|ev| request(ev))
            .any(|ev| text(ev).starts_with("update "))
    );
    let replies: Vec<String> = events.iter().filter(|ev| answer(ev)).map(text).collect();
    assert!(
        replies
            .iter()
            .any(|r| r.contains("value(s)") || r.contains("Statistics")),
        "rrdcached answered {replies:?}"
    );
}

/// Passes both ends of a pipe and a listening socket over a socketpair.
const RIGHTS: &str = r#"
import json, os, socket, sys
a, b = socket.socketpair()
r, w = os.pipe()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
fds = [r, w, srv.fileno()]
socket.send_fds(a, [b"fds"], fds)
msg, got, _, _ = socket.recv_fds(b, 100, 4)
assert msg == b"fds" and len(got) == 3
print(json.dumps({"pid": os.getpid(), "fds": fds, "inos": [os.fstat(fd).st_ino for fd in fds]}))
"#;

#[test]
fn passing_descriptors_is_reported() {
    if !have_root("passing_descriptors_is_reported") {
        return;
    }
    let dir = sockspy_tests::socket_dir("rights");
    let path = dir.path();
    let (events, facts) = traced_script(&["--unix", "--json"], RIGHTS, &[path]);
    let pid = facts["pid"].as_u64().unwrap();
    let send = find_data(&events, pid, "send", 3);
    assert_eq!(send["call"], "sendmsg", "{send}");
    assert_eq!(send["passed_fds"], 3, "{send}");
    assert!(
        send.get("data").is_none(),
        "no payload without --data: {send}"
    );
    let files = send["passed_files"].as_array().expect("passed_files");
    assert_eq!(files.len(), 3, "{send}");
    for (i, kind) in ["pipe", "pipe", "socket"].into_iter().enumerate() {
        assert_eq!(files[i]["fd"], facts["fds"][i], "{send}");
        assert_eq!(files[i]["type"], kind, "{send}");
        assert_eq!(files[i]["ino"], facts["inos"][i], "{send}");
    }
    assert_eq!(files[2]["path"], path, "{send}");
    let recv = find_data(&events, pid, "recv", 3);
    assert!(recv.get("passed_fds").is_none(), "{recv}");
}
