//! `sockspy trace --tcp/--udp` against real programs over loopback: the
//! addresses and ports of both ends, and the process at the other end.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use sockspy_tests::{
    Trace, by_pid, find, find_data, first_line, have_root, payload, python3, spawn_python, wait_ok,
};

/// Renames the process (its comm) so that the two ends are told apart by name.
const RENAME: &str = "import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)
FAMILY = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
";

/// TCP server on address argv[1], any port: prints its pid and port,
/// accepts one connection, greets with `+`, reads `hello`, answers
/// `welcome`, waits for the client to close.
const SERVER: &str = "
srv = socket.socket(FAMILY, socket.SOCK_STREAM)
srv.bind((sys.argv[1], 0))
srv.listen(4)
print(os.getpid(), srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.sendall(b'+')
assert conn.recv(100) == b'hello'
conn.sendall(b'welcome')
conn.recv(100)
conn.close()
";

/// TCP client of argv[1] port argv[3]: connects, takes the greeting, prints
/// its pid, fd and local port, waits for a line on stdin when asked to,
/// sends `hello`, reads the answer, closes.
const CLIENT: &str = "
c = socket.socket(FAMILY, socket.SOCK_STREAM)
c.connect((sys.argv[1], int(sys.argv[3])))
assert c.recv(1) == b'+'
print(os.getpid(), c.fileno(), c.getsockname()[1], flush=True)
if len(sys.argv) > 4:
    sys.stdin.readline()
c.sendall(b'hello')
assert c.recv(100) == b'welcome'
c.close()
";

/// A TCP server and a connected client, renamed `comm`s `tcpserver` and `tcpclient`.
struct Pair {
    server: Child,
    server_pid: u64,
    port: u64,
    client: Child,
    client_pid: u64,
    client_fd: u64,
    client_port: u64,
}

impl Pair {
    /// Starts both; with `wait`, the client waits for a line on stdin before talking.
    fn start(addr: &str, wait: bool) -> Self {
        let mut server = spawn_python(&format!("{RENAME}{SERVER}"), &[addr, "tcpserver"]);
        let ids = first_line(&mut server);
        let (server_pid, port) = (ids[0], ids[1]);
        let port_arg = port.to_string();
        let mut args = vec![addr, "tcpclient", &port_arg];
        if wait {
            args.push("wait");
        }
        let mut client = spawn_python(&format!("{RENAME}{CLIENT}"), &args);
        let ids = first_line(&mut client);
        Pair {
            server,
            server_pid,
            port,
            client,
            client_pid: ids[0],
            client_fd: ids[1],
            client_port: ids[2],
        }
    }

    fn go(&mut self) {
        writeln!(self.client.stdin.as_mut().unwrap(), "go").unwrap();
    }

    fn finish(&mut self) {
        wait_ok(&mut self.client);
        wait_ok(&mut self.server);
    }
}

/// Checks the hello/welcome exchange: byte counts, both ends' addresses,
/// and each side naming the other process.
fn assert_conversation(events: &[Value], pair: &Pair, ip: &str, family: &str) {
    let (server, client) = (pair.server_pid, pair.client_pid);
    let send = find_data(events, client, "send", 5);
    let recv = find_data(events, server, "recv", 5);
    let answer = find_data(events, server, "send", 7);
    let got = find_data(events, client, "recv", 7);
    for ev in [send, recv, answer, got] {
        assert_eq!(ev["family"], family, "{ev}");
        assert_eq!(ev["proto"], "tcp", "{ev}");
        assert_eq!(ev["type"], "stream", "{ev}");
        assert_eq!(ev["laddr"], ip, "{ev}");
        assert_eq!(ev["raddr"], ip, "{ev}");
    }
    for ev in [send, got] {
        assert_eq!(ev["comm"], "tcpclient", "{ev}");
        assert_eq!(ev["fd"], pair.client_fd, "{ev}");
        assert_eq!(ev["lport"], pair.client_port, "{ev}");
        assert_eq!(ev["rport"], pair.port, "{ev}");
        assert_eq!(ev["peer"]["pid"], server, "{ev}");
        assert_eq!(ev["peer"]["comm"], "tcpserver", "{ev}");
        assert_eq!(ev["peer"]["fd"], recv["fd"], "{ev}");
        assert_eq!(ev["peer"]["sock"], recv["sock"], "{ev}");
        assert_eq!(ev["peer"]["addr"], ip, "{ev}");
        assert_eq!(ev["peer"]["port"], pair.port, "{ev}");
    }
    for ev in [recv, answer] {
        assert_eq!(ev["comm"], "tcpserver", "{ev}");
        assert_eq!(ev["lport"], pair.port, "{ev}");
        assert_eq!(ev["rport"], pair.client_port, "{ev}");
        assert_eq!(ev["peer"]["pid"], client, "{ev}");
        assert_eq!(ev["peer"]["comm"], "tcpclient", "{ev}");
        assert_eq!(ev["peer"]["fd"], pair.client_fd, "{ev}");
        assert_eq!(ev["peer"]["sock"], send["sock"], "{ev}");
    }
}

/// A full connection traced from the start over `ip`.
fn tcp_server_and_client(ip: &str, family: &str) {
    let trace = Trace::start(&["--tcp", "--json", "--data"]).unwrap();
    let mut pair = Pair::start(ip, false);
    pair.finish();
    let done = trace.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    let events = done.events();
    let connect = find(&events, pair.client_pid, "connect");
    assert_eq!(connect["fd"], pair.client_fd, "{connect}");
    assert_eq!(connect["laddr"], ip, "{connect}");
    assert_eq!(connect["lport"], pair.client_port, "{connect}");
    assert_eq!(connect["raddr"], ip, "{connect}");
    assert_eq!(connect["rport"], pair.port, "{connect}");
    assert_eq!(connect["peer"]["pid"], pair.server_pid, "{connect}");
    assert_eq!(connect["peer"]["comm"], "tcpserver", "{connect}");
    assert!(connect.get("error").is_none(), "{connect}");
    let accept = find(&events, pair.server_pid, "accept");
    assert_eq!(accept["lport"], pair.port, "{accept}");
    assert_eq!(accept["rport"], pair.client_port, "{accept}");
    assert_eq!(accept["peer"]["pid"], pair.client_pid, "{accept}");
    assert_eq!(accept["peer"]["fd"], pair.client_fd, "{accept}");
    assert_eq!(accept["peer"]["comm"], "tcpclient", "{accept}");
    assert_conversation(&events, &pair, ip, family);
    assert_eq!(
        payload(find_data(&events, pair.server_pid, "recv", 5)),
        b"hello"
    );
    assert_eq!(
        payload(find_data(&events, pair.client_pid, "recv", 7)),
        b"welcome"
    );
    find(&events, pair.client_pid, "close");
    find(&events, pair.server_pid, "close");
    // The client's socket became established and later closed.
    let client_sock = connect["sock"].clone();
    let states: Vec<&str> = events
        .iter()
        .filter(|ev| ev["event"] == "state" && ev["sock"] == client_sock)
        .filter_map(|ev| ev["state"].as_str())
        .collect();
    assert!(states.contains(&"established"), "client states: {states:?}");
}

#[test]
fn tcp_over_ipv4_loopback() {
    if !have_root("tcp_over_ipv4_loopback") {
        return;
    }
    tcp_server_and_client("127.0.0.1", "inet");
}

#[test]
fn tcp_over_ipv6_loopback() {
    if !have_root("tcp_over_ipv6_loopback") {
        return;
    }
    tcp_server_and_client("::1", "inet6");
}

#[test]
fn tcp_connection_made_before_tracing() {
    if !have_root("tcp_connection_made_before_tracing") {
        return;
    }
    let mut pair = Pair::start("127.0.0.1", true);
    // Connected and accepted; only now does tracing start.
    let trace = Trace::start(&["--tcp", "--json"]).unwrap();
    pair.go();
    pair.finish();
    let done = trace.stop().unwrap();
    let events = done.events();
    assert!(
        by_pid(&events, pair.client_pid)
            .iter()
            .all(|ev| ev["event"] != "connect"),
        "the connection predates the trace"
    );
    assert_conversation(&events, &pair, "127.0.0.1", "inet");
}

/// UDP: a receiver bound on 127.0.0.1 answers each datagram to its source;
/// one sender uses `sendto`/`recvfrom`, another `connect` + `send`/`recv`.
const UDP: &str = "
r = socket.socket(FAMILY, socket.SOCK_DGRAM)
r.bind((sys.argv[1], 0))
port = r.getsockname()[1]
s = socket.socket(FAMILY, socket.SOCK_DGRAM)
s.sendto(b'query', (sys.argv[1], port))
data, source = r.recvfrom(100)
r.sendto(b'answer!', source)
assert s.recvfrom(100)[0] == b'answer!'
c = socket.socket(FAMILY, socket.SOCK_DGRAM)
c.connect((sys.argv[1], port))
c.send(b'connected')
data, source2 = r.recvfrom(100)
print(os.getpid(), port, source[1], source2[1], r.fileno(), s.fileno(), c.fileno(), flush=True)
";

#[test]
fn udp_sendto_and_recvfrom_carry_addresses() {
    if !have_root("udp_sendto_and_recvfrom_carry_addresses") {
        return;
    }
    let trace = Trace::start(&["--udp", "--json", "--data"]).unwrap();
    let mut child = spawn_python(&format!("{RENAME}{UDP}"), &["127.0.0.1", "udpdemo"]);
    let ids = first_line(&mut child);
    wait_ok(&mut child);
    let done = trace.stop().unwrap();
    let events = done.events();
    let [pid, port, sender_port, connected_port, r_fd, s_fd, c_fd] = ids[..] else {
        panic!("unexpected child output {ids:?}")
    };
    let query = find_data(&events, pid, "send", 5);
    assert_eq!(query["proto"], "udp", "{query}");
    assert_eq!(query["type"], "dgram", "{query}");
    assert_eq!(query["call"], "sendto", "{query}");
    assert_eq!(query["fd"], s_fd, "{query}");
    assert_eq!(query["raddr"], "127.0.0.1", "{query}");
    assert_eq!(query["rport"], port, "{query}");
    assert_eq!(query["lport"], sender_port, "{query}");
    assert_eq!(query["peer"]["fd"], r_fd, "{query}");
    let got = find_data(&events, pid, "recv", 5);
    assert_eq!(got["fd"], r_fd, "{got}");
    assert_eq!(got["lport"], port, "{got}");
    assert_eq!(got["raddr"], "127.0.0.1", "{got}");
    assert_eq!(got["rport"], sender_port, "{got}");
    assert_eq!(got["peer"]["fd"], s_fd, "{got}");
    // Reported at sys_exit (for the source address), payload included.
    assert_eq!(payload(got), b"query", "{got}");
    assert_eq!(payload(query), b"query", "{query}");
    let answer = find_data(&events, pid, "send", 7);
    assert_eq!(answer["rport"], sender_port, "{answer}");
    let back = find_data(&events, pid, "recv", 7);
    assert_eq!(back["rport"], port, "{back}");
    // connect + send: the destination is the connected remote end.
    let sent = find_data(&events, pid, "send", 9);
    assert_eq!(sent["fd"], c_fd, "{sent}");
    assert_eq!(sent["raddr"], "127.0.0.1", "{sent}");
    assert_eq!(sent["rport"], port, "{sent}");
    assert_eq!(sent["lport"], connected_port, "{sent}");
    let received = find_data(&events, pid, "recv", 9);
    assert_eq!(received["rport"], connected_port, "{received}");
}

#[test]
fn port_filter_keeps_one_connection() {
    if !have_root("port_filter_keeps_one_connection") {
        return;
    }
    // Two servers on ports we choose: the trace must exist before the
    // connections, and the port must be on its command line.
    let mut kept = Pair::start("127.0.0.1", true);
    let mut other = Pair::start("127.0.0.1", true);
    let port = kept.port.to_string();
    let trace = Trace::start(&["--json", "--port", &port]).unwrap();
    kept.go();
    other.go();
    kept.finish();
    other.finish();
    let done = trace.stop().unwrap();
    let events = done.events();
    find_data(&events, kept.client_pid, "send", 5);
    find_data(&events, kept.server_pid, "recv", 5);
    for ev in &events {
        assert!(
            ev["lport"] == kept.port || ev["rport"] == kept.port,
            "an event without port {}: {ev}",
            kept.port
        );
    }
    assert!(by_pid(&events, other.client_pid).is_empty());
    assert!(by_pid(&events, other.server_pid).is_empty());
}

/// A process that talks over both a Unix socket pair and TCP.
const BOTH: &str = "
a, b = socket.socketpair()
a.send(b'unix!')
b.recv(100)
srv = socket.socket(FAMILY, socket.SOCK_STREAM)
srv.bind((sys.argv[1], 0))
srv.listen(1)
c = socket.create_connection(srv.getsockname())
conn, _ = srv.accept()
c.sendall(b'tcp!!!')
conn.recv(100)
print(os.getpid(), flush=True)
";

#[test]
fn tcp_flag_excludes_unix_sockets() {
    if !have_root("tcp_flag_excludes_unix_sockets") {
        return;
    }
    let trace = Trace::start(&["--tcp", "--json"]).unwrap();
    let mut child = spawn_python(&format!("{RENAME}{BOTH}"), &["127.0.0.1", "bothkinds"]);
    let pid = first_line(&mut child)[0];
    wait_ok(&mut child);
    let done = trace.stop().unwrap();
    let events = done.events();
    let send = find_data(&events, pid, "send", 6);
    assert_eq!(send["proto"], "tcp", "{send}");
    for ev in by_pid(&events, pid) {
        assert_eq!(ev["proto"], "tcp", "{ev}");
        assert_ne!(ev["family"], "unix", "{ev}");
    }
}

/// A connection refused (a port bound but not listening), then one reset
/// by the server (`SO_LINGER` 0 and close). Prints the pid and the two
/// clients' fds.
const REFUSED_AND_RESET: &str = "
import struct
idle = socket.socket(FAMILY, socket.SOCK_STREAM)
idle.bind((sys.argv[1], 0))
refused = socket.socket(FAMILY, socket.SOCK_STREAM)
try:
    refused.connect(idle.getsockname())
    raise SystemExit('connected to a port nobody listens on')
except ConnectionRefusedError:
    pass
srv = socket.socket(FAMILY, socket.SOCK_STREAM)
srv.bind((sys.argv[1], 0))
srv.listen(1)
c = socket.create_connection(srv.getsockname()[:2])
conn, _ = srv.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
conn.close()
try:
    c.recv(100)
    raise SystemExit('no reset')
except ConnectionResetError:
    pass
print(os.getpid(), refused.fileno(), c.fileno(), flush=True)
";

#[test]
fn refused_and_reset_connections_say_so() {
    if !have_root("refused_and_reset_connections_say_so") {
        return;
    }
    let trace = Trace::start(&["--tcp", "--json"]).unwrap();
    let mut child = spawn_python(
        &format!("{RENAME}{REFUSED_AND_RESET}"),
        &["127.0.0.1", "tcpreset"],
    );
    let ids = first_line(&mut child);
    wait_ok(&mut child);
    let done = trace.stop().unwrap();
    let events = done.events();
    let (pid, refused_fd, reset_fd) = (ids[0], ids[1], ids[2]);
    let connect = events
        .iter()
        .find(|ev| ev["pid"] == pid && ev["event"] == "connect" && ev["fd"] == refused_fd)
        .expect("the refused connect");
    assert_eq!(connect["error"], "ECONNREFUSED", "{connect}");
    let closed_with = |error: &str| {
        events.iter().any(|ev| {
            ev["event"] == "state"
                && ev["state"] == "close"
                && ev["error"] == error
                && ev["pid"] == pid
        })
    };
    assert!(
        closed_with("ECONNREFUSED"),
        "no state event for the refusal"
    );
    assert!(closed_with("ECONNRESET"), "no state event for the reset");
    let recv = events
        .iter()
        .find(|ev| ev["pid"] == pid && ev["event"] == "recv" && ev["fd"] == reset_fd)
        .expect("the failed recv");
    assert_eq!(recv["error"], "ECONNRESET", "{recv}");
}

/// Two network namespaces joined by a veth pair, addresses only inside
/// them; removed when dropped.
struct Namespaces {
    names: [String; 2],
}

impl Namespaces {
    const ADDRS: [&str; 2] = ["10.231.0.1", "10.231.0.2"];

    fn create() -> Self {
        let id = std::process::id();
        let names = [format!("sockspy-a{id}"), format!("sockspy-b{id}")];
        let ns = Namespaces { names };
        let [a, b] = &ns.names;
        let (veth_a, veth_b) = (format!("ssa{id}"), format!("ssb{id}"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
            ],
            vec!["link", "set", &veth_a, "netns", a],
            vec!["link", "set", &veth_b, "netns", b],
            vec!["-n", a, "addr", "add", "10.231.0.1/30", "dev", &veth_a],
            vec!["-n", b, "addr", "add", "10.231.0.2/30", "dev", &veth_b],
            vec!["-n", a, "link", "set", &veth_a, "up"],
            vec!["-n", b, "link", "set", &veth_b, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let status = Command::new("ip").args(&step).status().expect("running ip");
            assert!(status.success(), "ip {}", step.join(" "));
        }
        ns
    }

    /// A python script run inside namespace `which`.
    fn python(&self, which: usize, script: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.names[which], python3(), "-c", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3 in a namespace")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

#[test]
fn connection_between_network_namespaces() {
    if !have_root("connection_between_network_namespaces") {
        return;
    }
    let ns = Namespaces::create();
    let [server_ip, client_ip] = Namespaces::ADDRS;
    let trace = Trace::start(&["--tcp", "--json"]).unwrap();
    let mut server = ns.python(0, &format!("{RENAME}{SERVER}"), &[server_ip, "tcpserver"]);
    let ids = first_line(&mut server);
    let (server_pid, port) = (ids[0], ids[1]);
    let port_arg = port.to_string();
    let mut client = ns.python(
        1,
        &format!("{RENAME}{CLIENT}"),
        &[server_ip, "tcpclient", &port_arg],
    );
    let ids = first_line(&mut client);
    let (client_pid, client_port) = (ids[0], ids[2]);
    wait_ok(&mut client);
    wait_ok(&mut server);
    let done = trace.stop().unwrap();
    let events = done.events();
    let send = find_data(&events, client_pid, "send", 5);
    assert_eq!(send["laddr"], client_ip, "{send}");
    assert_eq!(send["lport"], client_port, "{send}");
    assert_eq!(send["raddr"], server_ip, "{send}");
    assert_eq!(send["rport"], port, "{send}");
    let recv = find_data(&events, server_pid, "recv", 5);
    assert_eq!(recv["laddr"], server_ip, "{recv}");
    assert_eq!(recv["lport"], port, "{recv}");
    assert_eq!(recv["raddr"], client_ip, "{recv}");
    assert_eq!(recv["rport"], client_port, "{recv}");
    // Both ends are on this machine, each in its own namespace.
    assert_eq!(send["peer"]["pid"], server_pid, "{send}");
    assert_eq!(recv["peer"]["pid"], client_pid, "{recv}");
    let accept = find(&events, server_pid, "accept");
    assert_eq!(accept["raddr"], client_ip, "{accept}");
}

/// A client that half-closes (as `nc` does at the end of its input), and
/// a server that answers and closes before its client reads: both
/// sockets reach CLOSE (the client's through TIME_WAIT) while their
/// descriptors are open, unhashed, reading local port 0 in the kernel; yet every
/// event of both ends stays that connection's, with its ports and the
/// process at the other end, and `--port` keeps them all (the server's
/// close included).
#[test]
fn a_connection_after_its_close_is_still_itself() {
    if !have_root("a_connection_after_its_close_is_still_itself") {
        return;
    }
    const EARLY_CLOSE: &str = "
srv = socket.socket(FAMILY, socket.SOCK_STREAM)
srv.bind((sys.argv[1], int(sys.argv[3])))
srv.listen(1)
pid = os.fork()
if pid == 0:
    c = socket.socket(FAMILY, socket.SOCK_STREAM)
    c.connect((sys.argv[1], int(sys.argv[3])))
    c.send(b'GET')
    c.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    while c.recv(100):
        pass
    c.close()
    os._exit(0)
conn, _ = srv.accept()
while conn.recv(100):
    pass
conn.sendall(b'answer')
conn.close()
os.waitpid(pid, 0)
print(os.getpid(), pid, flush=True)
";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let trace = Trace::start(&["--tcp", "--json", "--port", &port]).unwrap();
    let script = format!("{RENAME}import time\n{EARLY_CLOSE}");
    let mut child = spawn_python(&script, &["127.0.0.1", "closer", &port]);
    let pids = first_line(&mut child);
    wait_ok(&mut child);
    let events = trace.stop().unwrap().events();
    let (server, client) = (pids[0], pids[1]);
    let close = |pid| {
        events
            .iter()
            .find(|e| e["event"] == "close" && e["pid"] == pid && e["lport"].is_u64())
            .unwrap_or_else(|| panic!("no close of {pid} in {events:#?}"))
    };
    let server_close = close(server);
    let client_close = close(client);
    assert_eq!(server_close["lport"].to_string(), port);
    assert_eq!(client_close["rport"].to_string(), port);
    let client_port = &client_close["lport"];
    assert_ne!(client_port, 0);
    let late: Vec<&Value> = events
        .iter()
        .filter(|e| e["pid"] == client && ["recv", "close"].contains(&e["event"].as_str().unwrap()))
        .collect();
    assert!(late.len() >= 3, "{events:#?}");
    for event in late {
        assert_eq!(&event["lport"], client_port, "{event}");
        assert_eq!(event["peer"]["pid"], server, "{event}");
        assert!(event["peer"]["pending"].is_null(), "{event}");
    }
}

/// A server on every address, any port: prints its pid and port; once it
/// reads a line, connects without waiting to that port of another machine
/// (TEST-NET-2, never this one's address) and to its own port on
/// loopback, which it accepts.
const WILDCARD_AND_ELSEWHERE: &str = "
import os, socket, sys
srv = socket.socket()
srv.bind(('0.0.0.0', 0))
srv.listen(4)
port = srv.getsockname()[1]
print(os.getpid(), port, flush=True)
sys.stdin.readline()
away = socket.socket()
away.setblocking(False)
try:
    away.connect(('198.51.100.77', port))
except OSError:
    pass
near = socket.socket()
near.connect(('127.0.0.1', port))
srv.accept()
";

/// A server bound to every address (`0.0.0.0`) is the peer of a connect
/// to its port on this machine, never of one to the same port of another
/// machine.
#[test]
fn a_wildcard_server_is_no_peer_of_another_machines_port() {
    if !have_root("a_wildcard_server_is_no_peer_of_another_machines_port") {
        return;
    }
    let mut server = spawn_python(WILDCARD_AND_ELSEWHERE, &[]);
    let [pid, port] = first_line(&mut server)[..] else {
        panic!("no pid and port")
    };
    let trace = Trace::start(&["--tcp", "--json", "--port", &port.to_string()]).unwrap();
    writeln!(server.stdin.as_mut().unwrap()).unwrap();
    wait_ok(&mut server);
    let events = trace.stop().unwrap().events();
    let connects: Vec<&Value> = by_pid(&events, pid)
        .into_iter()
        .filter(|ev| ev["event"] == "connect")
        .collect();
    let to = |addr: &str| {
        connects
            .iter()
            .find(|ev| ev["raddr"] == addr)
            .unwrap_or_else(|| panic!("no connect to {addr} in {events:#?}"))
    };
    let away = &to("198.51.100.77")["peer"];
    assert!(
        away.get("pid").is_none() && away.get("pending").is_none(),
        "{away}"
    );
    assert_eq!(away["addr"], "198.51.100.77");
    let near = &to("127.0.0.1")["peer"];
    assert_eq!(near["pid"], pid, "{near}");
}
