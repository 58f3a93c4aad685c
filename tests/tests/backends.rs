//! The backends (`--backend tracepoint|fentry|kprobe`) see the same
//! events: one workload, traced by every backend this kernel allows at
//! once, must print the same events apart from their time stamps.
//!
//! This host allows only the tracepoint backend; `cargo xtask vm-test`
//! runs this test in guests whose kernels allow fentry and kprobes.

use std::collections::BTreeSet;

use serde_json::Value;
use sockspy_tests::{Trace, check_report, have_root, python};

/// One process, one thread, so that its events have one order: a Unix
/// stream listener and connection (send/recv, sendmsg/recvmsg, writev/
/// readv), a Unix datagram to a path, a seqpacket pair, TCP over 127.0.0.1
/// and ::1, and UDP both unconnected (sendto/recvfrom) and connected.
const WORKLOAD: &str = r#"
import json, os, socket, sys
d = sys.argv[1]
path = os.path.join(d, "stream")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen()
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(path)
s, _ = srv.accept()
c.send(b"ping")
assert s.recv(64) == b"ping"
s.sendmsg([b"po", b"ng"])
assert c.recvmsg(64)[0] == b"pong"
os.writev(c.fileno(), [b"ab", b"cd"])
assert os.readv(s.fileno(), [bytearray(2), bytearray(2)]) == 4
for sock in (c, s, srv):
    sock.close()

dpath = os.path.join(d, "dgram")
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
r.bind(dpath)
w = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
w.sendto(b"datagram", dpath)
assert r.recv(64) == b"datagram"
w.close(); r.close()

a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
a.send(b"packet")
assert b.recv(64) == b"packet"
a.close(); b.close()

for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    lst = socket.socket(family, socket.SOCK_STREAM)
    lst.bind((host, 0))
    lst.listen()
    c = socket.create_connection(lst.getsockname()[:2])
    s, _ = lst.accept()
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert s.recv(64) == b"GET / HTTP/1.0\r\n\r\n"
    s.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
    assert c.recv(64) == b"HTTP/1.0 200 OK\r\n\r\n"
    for sock in (c, s, lst):
        sock.close()
    r = socket.socket(family, socket.SOCK_DGRAM)
    r.bind((host, 0))
    w = socket.socket(family, socket.SOCK_DGRAM)
    w.sendto(b"query", r.getsockname())
    data, source = r.recvfrom(64)
    assert data == b"query"
    r.connect(source)
    r.send(b"answer")
    assert w.recv(64) == b"answer"
    w.close(); r.close()
print(json.dumps({"pid": os.getpid()}))
"#;

/// The backends `sockspy check` says attach all their hooks here.
fn working_backends() -> Vec<String> {
    check_report()
        .lines()
        .filter_map(|line| line.strip_prefix("ok    backend "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The events of `pid` without their time stamps.
fn timeless(events: &[Value], pid: u64) -> Vec<Value> {
    events
        .iter()
        .filter(|ev| ev["pid"] == pid)
        .cloned()
        .map(|mut ev| {
            ev.as_object_mut().expect("events are objects").remove("ts");
            ev
        })
        .collect()
}

/// What each backend's trace is started with.
fn trace_args(backend: &str) -> [&str; 4] {
    ["--json", "--data=64", "--backend", backend]
}

#[test]
fn every_backend_sees_the_same_events() {
    if !have_root("every_backend_sees_the_same_events") {
        return;
    }
    let backends = working_backends();
    if backends.len() < 2 {
        eprintln!(
            "skipped every_backend_sees_the_same_events: only {backends:?} can attach on this \
             kernel (cargo xtask vm-test runs it where fentry and kprobes work)"
        );
        return;
    }
    let first = Trace::start(&trace_args(&backends[0])).unwrap();
    let others: Vec<Trace> = backends[1..]
        .iter()
        .map(|backend| first.also(&trace_args(backend)).unwrap())
        .collect();
    let dir = sockspy_tests::socket_dir("backends");
    let out = python(WORKLOAD, &[dir.to_str().unwrap()]).unwrap();
    let pid = serde_json::from_str::<Value>(out.trim()).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let reference = timeless(&first.stop().unwrap().events(), pid);

    // The workload's every kind of data event is there, so that agreeing
    // on nothing cannot pass.
    let seen: BTreeSet<String> = reference
        .iter()
        .filter(|ev| ev["event"] == "send" || ev["event"] == "recv")
        .map(|ev| {
            let field = |name: &str| ev[name].as_str().unwrap_or("-").to_owned();
            format!("{} {} {}", field("event"), field("family"), field("type"))
        })
        .collect();
    for event in ["send", "recv"] {
        for (family, kind) in [
            ("unix", "stream"),
            ("unix", "dgram"),
            ("unix", "seqpacket"),
            ("inet", "stream"),
            ("inet6", "stream"),
            ("inet", "dgram"),
            ("inet6", "dgram"),
        ] {
            let want = format!("{event} {family} {kind}");
            assert!(
                seen.contains(&want),
                "{} saw no {want}: {seen:?}",
                backends[0]
            );
        }
    }

    for (backend, trace) in backends[1..].iter().zip(others) {
        let events = timeless(&trace.stop().unwrap().events(), pid);
        let show = |events: &[Value]| {
            events
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            events == reference,
            "{backend} saw other events than {}:\n--- {}\n{}\n--- {backend}\n{}",
            backends[0],
            backends[0],
            show(&reference),
            show(&events)
        );
    }
}
