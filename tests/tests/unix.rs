//! `sockspy trace --unix` against real programs: who talks to whom.

use std::{io::Write, time::Duration};

use serde_json::Value;
use sockspy_tests::{
    Collectd, Trace, by_pid, find, find_data, first_line, have_program, have_root, python,
    sees_receives_in_flight, socket_dir, spawn_python, wait_ok,
};

/// Renames the process (its comm) so that peers are told apart by name.
const RENAME: &str = "import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)
";

/// Server: accepts one connection, greets with `+` (so the client's data
/// goes to an accepted socket, not one still in the listen queue), reads
/// `hello`, answers `welcome`, waits for the client to close.
const SERVER: &str = "
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(4)
print(os.getpid(), flush=True)
conn, _ = srv.accept()
conn.sendall(b'+')
assert conn.recv(100) == b'hello'
conn.sendall(b'welcome')
conn.recv(100)
conn.close()
";

/// Client: connects, takes the greeting, waits for a line on stdin when asked to, sends
/// `hello`, reads the answer, closes. Prints its pid and fd.
const CLIENT: &str = "
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
assert c.recv(1) == b'+'
print(os.getpid(), c.fileno(), flush=True)
if len(sys.argv) > 3:
    sys.stdin.readline()
c.sendall(b'hello')
assert c.recv(100) == b'welcome'
c.close()
";

/// Checks both sides of one hello/welcome exchange: each names the other.
/// The server's receive of `hello` is left out unless `server_recv`.
fn assert_conversation(
    events: &[Value],
    server: u64,
    client: u64,
    client_fd: u64,
    server_recv: bool,
) {
    let send = find_data(events, client, "send", 5);
    let answer = find_data(events, server, "send", 7);
    let got = find_data(events, client, "recv", 7);
    for ev in [send, answer, got] {
        assert_eq!(ev["family"], "unix", "{ev}");
        assert_eq!(ev["type"], "stream", "{ev}");
    }
    assert_eq!(send["comm"], "uxclient", "{send}");
    assert_eq!(send["fd"], client_fd, "{send}");
    assert_eq!(send["peer"]["pid"], server, "{send}");
    assert_eq!(send["peer"]["comm"], "uxserver", "{send}");
    assert_eq!(answer["peer"]["pid"], client, "{answer}");
    assert_eq!(answer["peer"]["fd"], client_fd, "{answer}");
    assert_eq!(answer["sock"], send["peer"]["sock"], "{answer}");
    assert_eq!(got["peer"]["pid"], server, "{got}");
    assert_eq!(got["sock"], send["sock"], "{got}");
    // The server's socket carries the listening path, as `ss -x` shows.
    assert!(answer["path"].is_string(), "{answer}");
    if !server_recv {
        return;
    }
    let recv = find_data(events, server, "recv", 5);
    assert_eq!(recv["type"], "stream", "{recv}");
    assert_eq!(send["peer"]["fd"], recv["fd"], "{send}");
    assert_eq!(send["peer"]["sock"], recv["sock"], "{send}");
    assert_eq!(recv["comm"], "uxserver", "{recv}");
    assert_eq!(recv["peer"]["pid"], client, "{recv}");
    assert_eq!(recv["peer"]["comm"], "uxclient", "{recv}");
    assert_eq!(recv["peer"]["fd"], client_fd, "{recv}");
    assert_eq!(recv["peer"]["sock"], send["sock"], "{recv}");
    assert_eq!(recv["path"], answer["path"], "{recv}");
}

#[test]
fn stream_server_and_client() {
    if !have_root("stream_server_and_client") {
        return;
    }
    let dir = socket_dir("stream");
    let path = dir.path();
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    let mut server = spawn_python(&format!("{RENAME}{SERVER}"), &[path, "uxserver"]);
    let server_pid = first_line(&mut server)[0];
    let mut client = spawn_python(&format!("{RENAME}{CLIENT}"), &[path, "uxclient"]);
    let client_ids = first_line(&mut client);
    wait_ok(&mut client);
    wait_ok(&mut server);
    let done = trace.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    let events = done.events();
    let (client_pid, client_fd) = (client_ids[0], client_ids[1]);

    let connect = find(&events, client_pid, "connect");
    assert_eq!(connect["fd"], client_fd, "{connect}");
    assert_eq!(connect["peer"]["pid"], server_pid, "{connect}");
    assert_eq!(connect["peer"]["path"], path, "{connect}");
    assert!(connect.get("error").is_none(), "{connect}");
    let accept = find(&events, server_pid, "accept");
    assert_eq!(accept["peer"]["pid"], client_pid, "{accept}");
    assert_eq!(accept["peer"]["fd"], client_fd, "{accept}");
    assert_eq!(accept["path"], path, "{accept}");
    let bind = find(&events, server_pid, "bind");
    assert_eq!(bind["path"], path, "{bind}");
    assert_conversation(&events, server_pid, client_pid, client_fd, true);
    find(&events, client_pid, "close");
    find(&events, server_pid, "close");
    assert!(
        done.stderr.contains("sockspy: ") && done.stderr.contains(" lost (ring buffer full)"),
        "no summary: {}",
        done.stderr
    );
}

#[test]
fn connection_made_before_tracing() {
    if !have_root("connection_made_before_tracing") {
        return;
    }
    let dir = socket_dir("before");
    let path = dir.path();
    let mut server = spawn_python(&format!("{RENAME}{SERVER}"), &[path, "uxserver"]);
    let server_pid = first_line(&mut server)[0];
    let mut client = spawn_python(&format!("{RENAME}{CLIENT}"), &[path, "uxclient", "wait"]);
    let client_ids = first_line(&mut client);
    // Connected and accepted; only now does tracing start.
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    writeln!(client.stdin.as_mut().unwrap(), "go").unwrap();
    wait_ok(&mut client);
    wait_ok(&mut server);
    let done = trace.stop().unwrap();
    let events = done.events();
    assert!(
        by_pid(&events, client_ids[0])
            .iter()
            .all(|ev| ev["event"] != "connect"),
        "the connection predates the trace"
    );
    // The server has been waiting in recv since before the trace.
    let server_recv = sees_receives_in_flight();
    assert_conversation(
        &events,
        server_pid,
        client_ids[0],
        client_ids[1],
        server_recv,
    );
}

/// Parent with one socketpair per child; the first child keeps running the
/// forked interpreter, the second execs a new one that finds its end by fd
/// number. Each child sends a message of its own length and reads a reply.
const PAIRS: &str = r#"
import json, os, socket, sys
CHILD = "import os, sys; fd = int(sys.argv[1]); n = int(sys.argv[2]); os.write(fd, b'x' * n); os.read(fd, 100)"
ends, kids = [], []
for n in (11, 22):
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        mine.close()
        for end in ends:
            end.close()
        fd = theirs.fileno()
        if n == 11:
            os.write(fd, b"x" * n)
            os.read(fd, 100)
            os._exit(0)
        os.set_inheritable(fd, True)
        os.execv(sys.executable, [sys.executable, "-c", CHILD, str(fd), str(n)])
    theirs.close()
    ends.append(mine)
    kids.append(pid)
for end in ends:
    end.recv(100)
    end.send(b"ok")
for pid in kids:
    os.waitpid(pid, 0)
print(json.dumps({"parent": os.getpid(), "kids": kids, "fds": [e.fileno() for e in ends]}))
"#;

#[test]
fn socketpair_fork_and_exec() {
    if !have_root("socketpair_fork_and_exec") {
        return;
    }
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    let out = python(PAIRS, &[]).unwrap();
    let done = trace.stop().unwrap();
    let events = done.events();
    let facts: Value = serde_json::from_str(out.trim()).unwrap();
    let parent = facts["parent"].as_u64().unwrap();
    let pairs = facts["kids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(facts["fds"].as_array().unwrap());
    for ((kid, fd), bytes) in pairs.zip([11, 22]) {
        let kid = kid.as_u64().unwrap();
        let recv = find_data(&events, parent, "recv", bytes);
        assert_eq!(&recv["fd"], fd, "{recv}");
        assert_eq!(
            recv["peer"]["pid"], kid,
            "parent fd {fd} talks to {kid}: {recv}"
        );
        let send = find_data(&events, kid, "send", bytes);
        assert_eq!(send["peer"]["pid"], parent, "{send}");
        assert_eq!(&send["peer"]["fd"], fd, "{send}");
        let reply = events
            .iter()
            .find(|ev| ev["pid"] == parent && ev["event"] == "send" && &ev["fd"] == fd)
            .expect("the parent's reply");
        assert_eq!(reply["peer"]["pid"], kid, "{reply}");
    }
    let pair = find(&events, parent, "socketpair");
    assert_eq!(pair["peer"]["pid"], parent, "{pair}");
    assert!(pair["peer"]["fd"].is_u64(), "{pair}");
}

/// A server that forks one handler per connection and serves two clients
/// at once; the parent closes its copy of each connection.
const FORKING_SERVER: &str = r#"
import json, os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(4)
cl = []
for i in range(2):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(sys.argv[1])
    cl.append(c)
handlers = []
for i in range(2):
    conn, _ = srv.accept()
    pid = os.fork()
    if pid == 0:
        conn.send(conn.recv(100))
        os._exit(0)
    conn.close()
    handlers.append(pid)
# Each client runs in its own process too.
clients = []
for i, c in enumerate(cl):
    pid = os.fork()
    if pid == 0:
        c.send(b"y" * (30 + i))
        c.recv(100)
        os._exit(0)
    c.close()
    clients.append(pid)
for pid in handlers + clients:
    os.waitpid(pid, 0)
print(json.dumps({"server": os.getpid(), "handlers": handlers, "clients": clients}))
"#;

#[test]
fn server_with_a_process_per_connection() {
    if !have_root("server_with_a_process_per_connection") {
        return;
    }
    let dir = socket_dir("forking");
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    let out = python(FORKING_SERVER, &[dir.path()]).unwrap();
    let done = trace.stop().unwrap();
    let events = done.events();
    let facts: Value = serde_json::from_str(out.trim()).unwrap();
    let server = facts["server"].as_u64().unwrap();
    let handlers: Vec<u64> = facts["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for (i, client) in facts["clients"].as_array().unwrap().iter().enumerate() {
        let client = client.as_u64().unwrap();
        let bytes = 30 + i as u64;
        let send = find_data(&events, client, "send", bytes);
        let handler = send["peer"]["pid"].as_u64().expect("a peer pid");
        assert!(
            handlers.contains(&handler),
            "peer is a handler, not {handler}: {send}"
        );
        assert_ne!(handler, server, "{send}");
        let recv = find_data(&events, handler, "recv", bytes);
        assert_eq!(recv["sock"], send["peer"]["sock"], "{recv}");
        assert_eq!(recv["peer"]["pid"], client, "{recv}");
    }
}

/// A datagram receiver bound to a path and a sender that never connects.
const DGRAM: &str = r#"
import json, os, socket, sys
rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
rx.bind(sys.argv[1])
tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
tx.sendto(b"z" * 42, sys.argv[1])
assert len(rx.recv(100)) == 42
print(json.dumps({"pid": os.getpid(), "tx": tx.fileno(), "rx": rx.fileno()}))
"#;

#[test]
fn datagram_sendto_names_the_destination() {
    if !have_root("datagram_sendto_names_the_destination") {
        return;
    }
    let dir = socket_dir("dgram");
    let path = dir.path();
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    let out = python(DGRAM, &[path]).unwrap();
    let done = trace.stop().unwrap();
    let events = done.events();
    let facts: Value = serde_json::from_str(out.trim()).unwrap();
    let pid = facts["pid"].as_u64().unwrap();
    let send = find_data(&events, pid, "send", 42);
    assert_eq!(send["type"], "dgram", "{send}");
    assert_eq!(send["call"], "sendto", "{send}");
    assert_eq!(send["fd"], facts["tx"], "{send}");
    assert_eq!(send["peer"]["path"], path, "{send}");
    let recv = find_data(&events, pid, "recv", 42);
    assert_eq!(recv["fd"], facts["rx"], "{recv}");
    assert_eq!(recv["path"], path, "{recv}");
}

/// collectd's long-lived connection to rrdcached: the update lines go from
/// the collectd process to rrdcached and the answers come back.
fn assert_collectd_talks(trace: Trace, setup: &Collectd) {
    let collectd = setup.collectd_pid();
    let rrdcached = setup.rrdcached_pid;
    let seen = trace.wait_for(Duration::from_secs(20), |events| {
        events.iter().any(|ev| {
            ev["pid"] == collectd && ev["event"] == "send" && ev["peer"]["pid"] == rrdcached
        }) && events.iter().any(|ev| {
            ev["pid"] == rrdcached && ev["event"] == "send" && ev["peer"]["pid"] == collectd
        })
    });
    let done = trace.stop().unwrap();
    let events = done.events();
    assert!(
        seen,
        "no collectd <-> rrdcached exchange in {} events",
        events.len()
    );
    let socket = setup.socket.to_str().unwrap();
    let send = events
        .iter()
        .find(|ev| ev["pid"] == collectd && ev["event"] == "send" && ev["peer"]["pid"] == rrdcached)
        .unwrap();
    assert_eq!(send["comm"], "collectd", "{send}");
    assert_eq!(send["peer"]["comm"], "rrdcached", "{send}");
    assert_eq!(send["peer"]["path"], socket, "{send}");
    assert!(send["bytes"].as_u64().unwrap() > 0, "{send}");
    let answer = events
        .iter()
        .find(|ev| ev["pid"] == rrdcached && ev["event"] == "send" && ev["peer"]["pid"] == collectd)
        .unwrap();
    assert_eq!(answer["path"], socket, "{answer}");
    assert_eq!(answer["peer"]["comm"], "collectd", "{answer}");
}

#[test]
fn collectd_and_rrdcached() {
    if !have_root("collectd_and_rrdcached") {
        return;
    }
    assert!(
        have_program("collectd") && have_program("rrdcached"),
        "cargo xtask setup installs collectd-core and rrdcached"
    );
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    let setup = Collectd::start("live").unwrap();
    assert_collectd_talks(trace, &setup);
}

#[test]
fn collectd_connected_before_tracing() {
    if !have_root("collectd_connected_before_tracing") {
        return;
    }
    assert!(
        have_program("collectd") && have_program("rrdcached"),
        "cargo xtask setup installs collectd-core and rrdcached"
    );
    let setup = Collectd::start("before").unwrap();
    // collectd connects on its first write, within an interval or two.
    std::thread::sleep(Duration::from_secs(3));
    let trace = Trace::start(&["--unix", "--json"]).unwrap();
    assert_collectd_talks(trace, &setup);
}

/// A server already waiting in `accept()` when the trace starts: its
/// `accept` returns after, with no record (the call began before the
/// programs were attached). The accepted socket still gets its name from
/// what the client's records say of it, so `--path` keeps the server's
/// side and both ends name each other.
#[test]
fn a_server_waiting_in_accept_before_tracing() {
    if !have_root("a_server_waiting_in_accept_before_tracing") {
        return;
    }
    const WAITING: &str = r#"
import os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print(os.getpid(), flush=True)
c, _ = srv.accept()
c.send(b'hello')
c.recv(10)
c.close()
"#;
    let dir = socket_dir("waiting-accept");
    let path = dir.path();
    let mut server = spawn_python(WAITING, &[path]);
    let server_pid = first_line(&mut server)[0];
    // Inside accept() by now, well before the programs attach.
    std::thread::sleep(Duration::from_millis(200));
    let trace = Trace::start(&["--unix", "--json", "--path", path]).unwrap();
    let client_pid: u64 = python(
        "import os, socket, sys\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         s.connect(sys.argv[1])\n\
         s.recv(10)\n\
         s.send(b'bye')\n\
         s.close()\n\
         print(os.getpid())",
        &[path],
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    wait_ok(&mut server);
    let events = trace.stop().unwrap().events();
    let server_side: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["pid"] == server_pid && ["send", "recv"].contains(&e["event"].as_str().unwrap())
        })
        .collect();
    assert_eq!(server_side.len(), 2, "{events:#?}");
    for event in server_side {
        assert_eq!(event["path"], path, "{event}");
        assert_eq!(event["peer"]["pid"], client_pid, "{event}");
    }
    let client_send = events
        .iter()
        .find(|e| e["pid"] == client_pid && e["event"] == "send")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(client_send["peer"]["pid"], server_pid, "{client_send}");
}
