//! Protocol decoding (`--decode`, `--decode-as`) against real programs:
//! collectd and rrdcached (and a batch sent with socat), curl and an HTTP
//! server on a Unix socket and over loopback TCP, a client pipelining
//! HTTP requests, redis-server and redis-cli, glibc (getent) asking A
//! and AAAA at once of a DNS server that answers them in the other order, dig
//! asking a small server that exits after answering, dbus-send and a
//! Python service on a private dbus-daemon, a PostgreSQL server with psql
//! and pgbench, and connections opened before the trace started (picked
//! up at a request's start, or said not to be).

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::{Value, json};
use sockspy_tests::{
    Collectd, RedisServer, SocketDir, Trace, first_line, have_program, have_root, python, python3,
    run_sockspy, skip, socket_dir, spawn_python, wait_ok,
};

/// Runs `command` with `input` on its stdin (closed after it) and its
/// output thrown away; how it ended.
fn fed(command: &mut Command, input: &[u8]) -> std::process::ExitStatus {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input).unwrap();
    drop(child.stdin.take());
    child.wait().unwrap()
}

fn exchanges(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["event"] == "exchange")
        .collect()
}

/// Each exchange's values at `fields` (`request.target`, `failed`), in an
/// array, once it is seen decoded as `app`.
fn decoded_as(exchanges: &[&Value], app: &str, fields: &[&str]) -> Vec<Value> {
    exchanges
        .iter()
        .map(|e| {
            assert_eq!(e["app"], app, "{e}");
            let at = |field: &&str| field.split('.').fold(*e, |value, key| &value[key]).clone();
            Value::Array(fields.iter().map(at).collect())
        })
        .collect()
}

/// A trace of the exchanges, decoded, in JSON, of the Unix sockets at `path`.
fn decoded_exchanges(path: &str) -> Trace {
    Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--decode",
        "--path",
        path,
    ])
    .unwrap()
}

/// A Python server of `script` (printing its pid and port first) and a
/// trace of the exchanges on its port over `transports` (`--tcp`,
/// `--udp`), decoded, in JSON.
fn served_and_traced(script: &str, args: &[&str], transports: &[&str]) -> (Child, String, Trace) {
    let mut server = spawn_python(script, args);
    let port = first_line(&mut server)[1].to_string();
    let decoded = ["--json", "--exchanges", "--decode", "--port", &port];
    let trace = Trace::start(&[transports, &decoded[..]].concat()).unwrap();
    (server, port, trace)
}

fn stopped(trace: Trace) -> Vec<Value> {
    let finished = trace.stop().unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished.events()
}

/// collectd's requests to rrdcached: each decoded with its command and
/// answer, failed exactly when the status is negative.
#[test]
fn rrdcached_commands_and_statuses() {
    if !have_root("rrdcached_commands_and_statuses") {
        return;
    }
    let trace = decoded_exchanges("*rrdcached.sock");
    let setup = Collectd::start("decode").unwrap();
    thread::sleep(Duration::from_secs(4));
    // A batch sent with socat: its two updates of a file that is not there
    // come back as two errors after the batch's `.`.
    let socat = fed(
        Command::new("socat")
            .arg("-")
            .arg(format!("UNIX-CONNECT:{}", setup.socket.display())),
        b"BATCH\nupdate missing.rrd N:1\nupdate missing.rrd N:2\n.\n",
    );
    assert!(socat.success(), "socat: {socat}");
    drop(setup);
    let records = stopped(trace);
    let exchanges = exchanges(&records);
    let mut updates = 0;
    for exchange in &exchanges {
        assert_eq!(exchange["app"], "rrdcached", "{exchange}");
        let status = exchange["response"]["status"]
            .as_i64()
            .unwrap_or_else(|| panic!("no status in {exchange}"));
        assert_eq!(exchange["failed"], status < 0, "{exchange}");
        let command = exchange["request"]["command"].as_str().unwrap();
        if command == "update" {
            updates += 1;
            assert_eq!(status, 0, "{exchange}");
            assert!(
                exchange["response"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("errors, enqueued"),
                "{exchange}"
            );
            assert!(
                exchange["request"]["args"][0]
                    .as_str()
                    .unwrap()
                    .ends_with(".rrd")
            );
        }
    }
    assert!(updates >= 2, "{records:#?}");
    let batch: Vec<(i64, &str)> = exchanges
        .iter()
        .filter(|e| e["request"]["command"] == "BATCH")
        .map(|e| {
            (
                e["response"]["status"].as_i64().unwrap(),
                e["response"]["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(batch.len(), 2, "the BATCH and its `.`: {records:#?}");
    assert_eq!(batch[0].0, 0, "go ahead: {batch:?}");
    assert_eq!(batch[1], (2, "errors"), "{batch:?}");
}

/// An HTTP/1.1 server on a Unix socket (or, given `tcp`, on a loopback
/// port) that keeps connections open and answers by path: `/ok` 200 with
/// a body, `/missing` 404, `/boom` 500 (chunked). Prints its pid (and its
/// port).
const HTTP_SERVER: &str = r#"
import http.server, os, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        if self.path == '/boom':
            self.send_response(500)
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()
            self.wfile.write(b'4\r\nboom\r\n0\r\n\r\n')
            return
        body = b'{"ok": true}' if self.path == '/ok' else b'nothing here'
        self.send_response(200 if self.path == '/ok' else 404)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        self.do_GET()
    def log_message(self, *args):
        pass
class Server(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = self.socket.accept()
        return request, ('local', 0)
if sys.argv[1] == 'tcp':
    server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
    print(os.getpid(), server.server_address[1], flush=True)
else:
    server = Server(sys.argv[1], Handler)
    print(os.getpid(), flush=True)
server.serve_forever()
"#;

/// A client that writes three requests at once on one connection, then
/// reads the three answers.
const PIPELINING_CLIENT: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b''.join(b'GET %s HTTP/1.1\r\nHost: api\r\n\r\n' % p for p in (b'/ok', b'/missing', b'/boom')))
got = b''
while not got.endswith(b'0\r\n\r\n'):
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
s.close()
print(os.getpid(), flush=True)
"#;

/// Starts [`HTTP_SERVER`] at `path`; curl asks it for `targets` on one
/// connection, then [`PIPELINING_CLIENT`] sends its three at once; the
/// server is stopped. The pids of the server, curl and that client.
fn http_clients(path: &str, targets: &[&str]) -> [u64; 3] {
    let mut server = spawn_python(HTTP_SERVER, &[path]);
    let server_pid = first_line(&mut server)[0];
    let mut curl = Command::new("curl");
    curl.args(["-s", "--unix-socket", path]);
    for target in targets {
        curl.args(["-o", "/dev/null", &format!("http://api{target}")]);
    }
    let mut curl = curl.spawn().unwrap();
    let curl_pid = u64::from(curl.id());
    wait_ok(&mut curl);
    let client_pid: u64 = python(PIPELINING_CLIENT, &[path])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    let _ = server.kill();
    let _ = server.wait();
    [server_pid, curl_pid, client_pid]
}

/// curl on a Unix socket (two requests on one connection), and pipelined
/// requests: each request its own exchange with its method, target and
/// host, each answer its status and body length; 5xx failed, 4xx marked.
#[test]
fn http_requests_each_get_their_answer() {
    if !have_root("http_requests_each_get_their_answer") {
        return;
    }
    let dir = socket_dir("decode-http");
    let path = dir.path();
    let trace = decoded_exchanges(path);
    let [server_pid, _, client_pid] = http_clients(path, &["/ok", "/missing"]);
    let records = stopped(trace);
    let exchanges = exchanges(&records);
    for e in &exchanges {
        assert_eq!(e["server"]["pid"], server_pid, "{e}");
    }
    let fields = ["client.comm", "request.target", "response.status", "failed"];
    let want = [
        json!(["curl", "/ok", 200, false]),
        json!(["curl", "/missing", 404, false]),
        json!(["python3", "/ok", 200, false]),
        json!(["python3", "/missing", 404, false]),
        json!(["python3", "/boom", 500, true]),
    ];
    assert_eq!(
        decoded_as(&exchanges, "http", &fields),
        want,
        "{records:#?}"
    );
    let pipelined: Vec<&&Value> = exchanges
        .iter()
        .filter(|e| e["client"]["pid"] == client_pid)
        .collect();
    assert_eq!(pipelined[0]["request"]["host"], "api");
    assert_eq!(pipelined[0]["response"]["body_bytes"], 12);
    assert_eq!(pipelined[1]["response"]["client_error"], true);
    assert_eq!(pipelined[2]["response"]["body_bytes"], 4);
    assert_eq!(
        pipelined[0]["request_messages"], 1,
        "one send carried all three"
    );
}

/// `--errors` alone (implying `--exchanges` and `--decode`): of curl's
/// keep-alive requests and a client's pipelined ones, only those the
/// server answered with a 500 are printed; a 404 is no failure.
#[test]
fn errors_keeps_only_failed_exchanges() {
    if !have_root("errors_keeps_only_failed_exchanges") {
        return;
    }
    let dir = socket_dir("decode-errors");
    let path = dir.path();
    let trace = Trace::start(&["--unix", "--json", "--errors", "--path", path]).unwrap();
    let [server_pid, curl_pid, client_pid] =
        http_clients(path, &["/ok", "/boom", "/missing", "/ok", "/boom"]);
    let records = stopped(trace);
    assert!(
        records.iter().all(|r| r["event"] == "exchange"),
        "exchanges only, no calls: {records:#?}"
    );
    let failed: Vec<(u64, &str, u64)> = records
        .iter()
        .map(|e| {
            assert_eq!(e["server"]["pid"], server_pid, "{e}");
            assert_eq!((&e["app"], &e["failed"]), (&"http".into(), &true.into()));
            (
                e["client"]["pid"].as_u64().unwrap(),
                e["request"]["target"].as_str().unwrap(),
                e["response"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            (curl_pid, "/boom", 500),
            (curl_pid, "/boom", 500),
            (client_pid, "/boom", 500)
        ],
        "{records:#?}"
    );
}

/// redis-server on a Unix socket, redis-cli and a client pipelining:
/// commands with their keys, replies with their types, errors failed.
#[test]
fn redis_commands_and_replies() {
    if !have_root("redis_commands_and_replies") {
        return;
    }
    let dir = socket_dir("decode-redis");
    let path = dir.path();
    let Some(server) = RedisServer::start("redis_commands_and_replies", path) else {
        return;
    };
    let trace = decoded_exchanges(path);
    let cli = |args: &[&str]| RedisServer::cli(path, args);
    cli(&["SET", "user:1", "alice"]);
    cli(&["GET", "user:1"]);
    cli(&["NOSUCHCOMMAND", "x"]);
    const PIPELINE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$6\r\nLRANGE\r\n$1\r\nl\r\n')
got = b''
while got.count(b'\r\n') < 3:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
s.close()
"#;
    python(PIPELINE, &[path]).unwrap();
    // redis-cli --pipe writes every command at once, then an ECHO of its
    // own, and reads the replies.
    let pipe = fed(
        Command::new("redis-cli").args(["-s", path, "--pipe"]),
        b"SET p:1 one\r\nINCR p:1\r\nGET p:1\r\n",
    );
    // Its status says an error came back (INCR of a string).
    assert_eq!(pipe.code(), Some(1));
    let records = stopped(trace);
    drop(server);
    let decoded: Vec<(String, String, bool)> = exchanges(&records)
        .iter()
        .filter(|e| e["request"]["command"] != "COMMAND")
        .map(|e| {
            assert_eq!(e["app"], "redis", "{e}");
            (
                e["request"]["command"].as_str().unwrap().to_owned(),
                e["response"]["type"].as_str().unwrap().to_owned(),
                e["failed"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [
        ("SET", "simple", false),
        ("GET", "bulk", false),
        ("NOSUCHCOMMAND", "error", true),
        ("INCR", "integer", false),
        ("INCR", "integer", false),
        ("LRANGE", "error", true),
        ("SET", "simple", false),
        ("INCR", "error", true),
        ("GET", "bulk", false),
        ("ECHO", "bulk", false),
    ];
    assert_eq!(
        decoded,
        want.map(|(c, t, f)| (c.to_owned(), t.to_owned(), f)),
        "{records:#?}"
    );
}

/// glibc, a real resolver (`getent ahosts`, in a mount namespace whose
/// /etc/resolv.conf names the test's server at 127.0.0.153), asks A and
/// AAAA at once on one socket; the server answers each pair in the other
/// order: every answer still pairs with its query, by id.
#[test]
fn dns_answers_pair_with_their_queries() {
    let test = "dns_answers_pair_with_their_queries";
    if !have_root(test) {
        return;
    }
    if !have_program("getent") || !have_program("unshare") {
        skip(test, "getent (libc-bin) or unshare (util-linux) is missing");
        return;
    }
    let dir = socket_dir("decode-dns");
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.153\n").unwrap();
    let resolv = resolv.display();
    let mut server = spawn_python(DNS_SERVER, &["127.0.0.153", "53", "4", "2"]);
    first_line(&mut server);
    let trace =
        Trace::start(&["--udp", "--port", "53", "--json", "--exchanges", "--decode"]).unwrap();
    for name in ["example.org", "nx.example.org"] {
        let script = format!("mount --bind {resolv} /etc/resolv.conf && getent ahosts {name}");
        let getent = Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .output()
            .unwrap();
        let found = String::from_utf8_lossy(&getent.stdout);
        assert_eq!(
            found.contains("192.0.2.1"),
            name == "example.org",
            "{found}"
        );
    }
    wait_ok(&mut server);
    let records = stopped(trace);
    let exchanges: Vec<&Value> = exchanges(&records)
        .into_iter()
        .filter(|e| e["client"]["comm"] == "getent")
        .collect();
    for e in &exchanges {
        assert_eq!(e["request"]["id"], e["response"]["id"], "{e}");
    }
    let fields = ["request.name", "request.qtype", "response.rcode", "failed"];
    let mut decoded = decoded_as(&exchanges, "dns", &fields);
    // The two queries of a pair go out in one call, in either order.
    decoded.sort_by_key(Value::to_string);
    let want = [
        json!(["example.org", "A", "NOERROR", false]),
        json!(["example.org", "AAAA", "NOERROR", false]),
        json!(["nx.example.org", "A", "NXDOMAIN", true]),
        json!(["nx.example.org", "AAAA", "NXDOMAIN", true]),
    ];
    assert_eq!(decoded, want, "{records:#?}");
}

/// Without `--exchanges`, each message is a line under the call that
/// carried it; `--decode-as PATH=none` leaves a server undecoded; a
/// protocol sockspy does not know is a usage error.
#[test]
fn decoded_lines_under_calls_and_decode_as() {
    if !have_root("decoded_lines_under_calls_and_decode_as") {
        return;
    }
    let dir = socket_dir("decode-lines");
    let path = dir.path();
    let run = |extra: &[&str]| {
        let args = [&["--unix", "--path", path][..], extra].concat();
        let trace = Trace::start(&args).unwrap();
        let mut server = spawn_python(HTTP_SERVER, &[path]);
        first_line(&mut server);
        let status = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--unix-socket",
                path,
                "http://api/ok",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = server.kill();
        let _ = server.wait();
        let finished = trace.stop().unwrap();
        let _ = std::fs::remove_file(path);
        finished.stdout.join("\n")
    };
    let text = run(&["--decode"]);
    assert!(text.contains("    = http: GET /ok\n"), "{text}");
    assert!(text.contains("    = http: 200 OK 12 B"), "{text}");
    // In JSON the call that completed a message carries it.
    let json: Vec<Value> = run(&["--decode", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(json.iter().all(|record| record["event"] != "message"));
    let carried = |field: &str, value: Value| {
        json.iter().any(|record| {
            ["send", "recv"].contains(&record["event"].as_str().unwrap_or_default())
                && record["app"] == "http"
                && record["message"][field] == value
        })
    };
    assert!(carried("method", "GET".into()), "{json:#?}");
    assert!(carried("target", "/ok".into()), "{json:#?}");
    assert!(carried("status", 200.into()), "{json:#?}");
    let glob = format!("{}*=none", &path[..path.len() - 2]);
    let plain = run(&["--decode-as", &glob]);
    assert!(!plain.contains("= http"), "{plain}");
    let bad = run_sockspy(&["trace", "--decode-as", "80=gopher"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`gopher` is not a protocol"), "{err}");
}

/// A private bus: dbus-daemon on its own socket, stopped when dropped.
struct Bus(Child);

impl Bus {
    /// Starts one listening on `path`, once it says it is.
    fn start(path: &str) -> Self {
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address"])
            .arg(format!("--address=unix:path={path}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dbus-daemon");
        let mut address = String::new();
        BufReader::new(daemon.stdout.as_mut().expect("piped"))
            .read_line(&mut address)
            .expect("reading dbus-daemon's address");
        assert!(address.starts_with("unix:path="), "{address}");
        Self(daemon)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A service on the bus (python3-dbus with GLib's loop): it owns
/// `org.sockspy.Test` and answers `Echo`. Prints its pid once it does.
const DBUS_SERVICE: &str = r#"
import os, sys
import dbus, dbus.service, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(sys.argv[1])
class Test(dbus.service.Object):
    @dbus.service.method('org.sockspy.Test', in_signature='s', out_signature='s')
    def Echo(self, text):
        return text
name = dbus.service.BusName('org.sockspy.Test', bus)
Test(bus, '/org/sockspy/Test')
print(os.getpid(), flush=True)
GLib.MainLoop().run()
"#;

/// A Python that has the D-Bus bindings and GLib (Debian's python3-dbus
/// and python3-gi are the system interpreter's, which may not be the one
/// on PATH).
fn python_with_dbus() -> Option<&'static str> {
    [python3(), "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args([
                "-c",
                "import dbus.mainloop.glib; from gi.repository import GLib",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// dbus-send against a private dbus-daemon: a call and its return, a
/// call that fails, a signal; and a Python service answering a call the
/// bus passes it (an exchange the server asked). Each call pairs with
/// its answer by serial; signals are one-way exchanges.
#[test]
fn dbus_calls_errors_and_signals() {
    let test = "dbus_calls_errors_and_signals";
    if !have_root(test) {
        return;
    }
    if !have_program("dbus-daemon") || !have_program("dbus-send") {
        skip(
            test,
            "dbus-daemon or dbus-send is missing (cargo xtask setup installs them)",
        );
        return;
    }
    let Some(service_python) = python_with_dbus() else {
        skip(
            test,
            "no python3 with dbus and gi (python3-dbus, python3-gi)",
        );
        return;
    };
    let dir = socket_dir("decode-dbus");
    let path = dir.path();
    let address = format!("--bus=unix:path={path}");
    let bus = Bus::start(path);
    let args = ["--unix", "--exchanges", "--decode", "--path", path];
    let trace = Trace::start(&[&args[..], &["--json"]].concat()).unwrap();
    let text_trace = trace.also(&args).unwrap();
    let mut service = Command::new(service_python)
        .arg("-c")
        .arg(DBUS_SERVICE)
        .arg(format!("unix:path={path}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let service_pid = first_line(&mut service)[0];
    let send = |args: &[&str]| {
        Command::new("dbus-send")
            .arg(&address)
            .args(args)
            .output()
            .unwrap()
    };
    let bus_method = |method: &str| {
        send(&[
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            &format!("org.freedesktop.DBus.{method}"),
        ])
    };
    assert!(bus_method("ListNames").status.success());
    let failed = bus_method("NoSuchMethod");
    assert!(!failed.status.success(), "{failed:?}");
    let signal = send(&[
        "--type=signal",
        "/org/sockspy",
        "org.sockspy.Test.Ping",
        "string:hi",
    ]);
    assert!(signal.status.success(), "{signal:?}");
    // The second larger than what a call captures, each way.
    let long = "x".repeat(6000);
    for text in ["hello", &long] {
        let echo = send(&[
            "--print-reply",
            "--dest=org.sockspy.Test",
            "/org/sockspy/Test",
            "org.sockspy.Test.Echo",
            &format!("string:{text}"),
        ]);
        assert!(
            String::from_utf8_lossy(&echo.stdout).contains(text),
            "{echo:?}"
        );
    }
    thread::sleep(Duration::from_millis(200));
    let text = text_trace.stop().unwrap().stdout.join("\n");
    let records = stopped(trace);
    let _ = service.kill();
    let _ = service.wait();
    drop(bus);

    let exchanges = exchanges(&records);
    for exchange in &exchanges {
        assert_eq!(exchange["app"], "dbus", "{exchange}");
    }
    let by_member = |member: &str| -> Vec<&&Value> {
        exchanges
            .iter()
            .filter(|e| e["request"]["member"] == member)
            .collect()
    };
    let one = |member: &str| -> &Value {
        let found = by_member(member);
        assert_eq!(found.len(), 1, "{member}: {records:#?}");
        found[0]
    };
    // A call and its return, paired by serial.
    let list = one("ListNames");
    assert_eq!(list["client"]["comm"], "dbus-send", "{list}");
    assert_eq!(list["request"]["type"], "method_call");
    assert_eq!(list["request"]["destination"], "org.freedesktop.DBus");
    assert_eq!(list["request"]["path"], "/org/freedesktop/DBus");
    assert_eq!(list["request"]["interface"], "org.freedesktop.DBus");
    assert_eq!(list["response"]["type"], "method_return");
    assert_eq!(list["response"]["reply_serial"], list["request"]["serial"]);
    assert_eq!(list["failed"], false);
    assert!(list.get("asked_by").is_none(), "{list}");
    assert!(list["wait_us"].is_u64(), "{list}");
    // An error: its name, and its message from the body.
    let error = one("NoSuchMethod");
    assert_eq!(error["response"]["type"], "error");
    assert_eq!(
        error["response"]["error_name"],
        "org.freedesktop.DBus.Error.UnknownMethod"
    );
    assert_eq!(
        error["response"]["reply_serial"],
        error["request"]["serial"]
    );
    assert!(
        error["response"]["message"]
            .as_str()
            .unwrap()
            .contains("NoSuchMethod"),
        "{error}"
    );
    assert_eq!(error["failed"], true);
    // A signal the client sends: one-way, no response.
    let ping = one("Ping");
    assert_eq!(ping["request"]["type"], "signal");
    assert_eq!(ping["one_way"], true);
    assert_eq!(ping["response_bytes"], 0);
    assert!(ping["response"].is_null(), "{ping}");
    assert_eq!(ping["failed"], false);
    // The bus's NameAcquired to every client: one-way, asked by the server.
    let acquired = by_member("NameAcquired");
    assert!(acquired.len() >= 4, "{records:#?}");
    for signal in &acquired {
        assert_eq!(signal["asked_by"], "server", "{signal}");
        assert_eq!(signal["one_way"], true, "{signal}");
    }
    // Authentication: lines of their own.
    let auth: Vec<_> = exchanges
        .iter()
        .filter(|e| e["request"]["type"] == "auth" && e["request"]["command"] == "AUTH")
        .collect();
    assert!(
        !auth.is_empty() && auth.iter().all(|e| e["response"]["command"] == "OK"),
        "{records:#?}"
    );
    // Echo: dbus-send asks the bus; the bus asks the service, which answers.
    // Echo: dbus-send asks the bus; the bus asks the service, which
    // answers; twice, the second message larger than the capture.
    let echoes = by_member("Echo");
    let (asked, passed): (Vec<&&Value>, Vec<&&Value>) = echoes
        .iter()
        .partition(|e| e["client"]["comm"] == "dbus-send");
    assert_eq!((asked.len(), passed.len()), (2, 2), "{records:#?}");
    for served in &passed {
        assert_eq!(served["client"]["pid"], service_pid, "{served}");
        assert_eq!(served["asked_by"], "server", "{served}");
        assert!(served.get("one_way").is_none(), "{served}");
        assert!(served["wait_us"].is_u64(), "the bus's wait: {served}");
    }
    for echo in asked.iter().chain(&passed) {
        assert_eq!(echo["response"]["type"], "method_return", "{echo}");
        assert_eq!(
            echo["response"]["reply_serial"], echo["request"]["serial"],
            "{echo}"
        );
        if echo["request"]["body_bytes"].as_u64().unwrap() > 6000 {
            assert!(
                echo["request_bytes"].as_u64().unwrap() > 6000
                    && echo["response_bytes"].as_u64().unwrap() > 6000,
                "{echo}"
            );
        }
    }
    assert!(asked.iter().all(|e| e.get("asked_by").is_none()));
    let long_ones = echoes
        .iter()
        .filter(|e| e["response"]["body_bytes"].as_u64().unwrap() > 6000)
        .count();
    assert_eq!(long_ones, 2, "{records:#?}");
    assert!(
        exchanges.iter().all(|e| e.get("undecoded").is_none()),
        "{records:#?}"
    );

    for line in [
        "dbus: call org.freedesktop.DBus.ListNames -> return\n",
        "dbus: call org.freedesktop.DBus.NoSuchMethod -> error org.freedesktop.DBus.Error.UnknownMethod (failed)\n",
        "one-way = queue ",
        "dbus: signal org.sockspy.Test.Ping\n",
        "dbus: signal org.freedesktop.DBus.NameAcquired\n",
        "dbus: AUTH EXTERNAL -> OK\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let served_line = text
        .lines()
        .find(|line| {
            line.ends_with("dbus: call org.sockspy.Test.Echo -> return") && line.contains(" <- ")
        })
        .unwrap_or_else(|| panic!("no Echo asked by the server in:\n{text}"));
    assert!(
        served_line.contains(&format!(" python3[{service_pid}] "))
            && served_line.contains(" (asked by server)  "),
        "{served_line}"
    );
}

/// A PostgreSQL server of the test's own, in a temporary directory,
/// listening only on a Unix socket there, trusting every local user; run
/// as the `postgres` user (its programs refuse root). Stopped when dropped,
/// whether the test passed or not.
struct Postgres {
    bin: PathBuf,
    dir: SocketDir,
}

impl Postgres {
    /// Runs one of the server's programs as `postgres`.
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("running {program}: {err}"))
    }

    /// Starts a server, or says why it cannot (`None`: the test skips,
    /// or fails where `SOCKSPY_REQUIRE_ROOT` is set).
    fn start(test: &str) -> Option<Self> {
        // Debian's server programs: /usr/lib/postgresql/VERSION/bin.
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max();
        let Some(bin) = bin else {
            skip(
                test,
                "PostgreSQL's server is missing (cargo xtask setup installs postgresql)",
            );
            return None;
        };
        for program in ["psql", "pgbench", "runuser"] {
            if !have_program(program) {
                skip(
                    test,
                    &format!("{program} is missing (cargo xtask setup installs it)"),
                );
                return None;
            }
        }
        let dir = socket_dir(test);
        let chown = Command::new("chown")
            .args(["postgres:"])
            .arg(&*dir)
            .status()
            .unwrap();
        assert!(chown.success(), "no postgres user to run the server as");
        let server = Postgres { bin, dir };
        let data = server.dir.join("data");
        let data = data.to_str().unwrap();
        let init = server.run("initdb", &["-D", data, "-A", "trust", "-U", "postgres"]);
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off",
            server.dir.display()
        );
        let log = server.dir.join("log");
        let started = server.run(
            "pg_ctl",
            &[
                "-D",
                data,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            started.status.success(),
            "the server did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(server)
    }

    /// The directory of its socket (psql's `-h`).
    fn host(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// psql running `sql` in one connection; whether it succeeded.
    fn psql(&self, sql: &str) -> bool {
        Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                self.host(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// psql's query with rows and its failing query, and pgbench's extended
/// protocol (Parse, Bind, Describe, Execute, Sync in one request): each
/// request with its SQL, each answer with its tag, rows or SQLSTATE; the
/// startup with its user and database; the failure failed. The same on
/// the text lines of a second trace.
#[test]
fn postgresql_queries_errors_and_the_extended_protocol() {
    let test = "postgresql_queries_errors_and_the_extended_protocol";
    if !have_root(test) {
        return;
    }
    let Some(server) = Postgres::start("decode-postgresql") else {
        return;
    };
    let socket = format!("{}/.s.PGSQL.*", server.host());
    let trace = decoded_exchanges(&socket);
    let text = trace
        .also(&["--unix", "--exchanges", "--decode", "--path", &socket])
        .unwrap();
    assert!(server.psql("select generate_series(1, 3)"));
    assert!(!server.psql("selec 1"), "a syntax error must fail");
    let script = server.dir.join("script.sql");
    std::fs::write(&script, "\\set n 4\nselect generate_series(1, :n);\n").unwrap();
    let bench = Command::new("pgbench")
        .args([
            "-h",
            server.host(),
            "-U",
            "postgres",
            "-n",
            "-M",
            "extended",
        ])
        .args(["-t", "2", "-f"])
        .arg(&script)
        .arg("postgres")
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&bench.stderr)
    );
    thread::sleep(Duration::from_millis(200));
    let records = stopped(trace);
    let lines = text.stop().unwrap().stdout.join("\n");
    drop(server);
    // Each connection ends with a Terminate, which nothing answers.
    let (terminates, answered): (Vec<&Value>, Vec<&Value>) = exchanges(&records)
        .into_iter()
        .partition(|e| e["request"]["type"] == "terminate");
    assert_eq!(terminates.len(), 4, "{records:#?}");
    let decoded: Vec<(String, String, String, String, bool)> = answered
        .iter()
        .map(|e| {
            assert_eq!(e["app"], "postgresql", "{e}");
            let (request, response) = (&e["request"], &e["response"]);
            let asked = match request["type"].as_str().unwrap() {
                "startup" => format!(
                    "startup {} {}",
                    request["user"].as_str().unwrap(),
                    request["database"].as_str().unwrap()
                ),
                kind => format!("{kind} {}", request["query"].as_str().unwrap_or("-")),
            };
            let answered = match response["sqlstate"].as_str() {
                Some(sqlstate) => format!("{sqlstate} {}", response["message"].as_str().unwrap()),
                None => format!("{} {}", response["tag"], response["rows"]),
            };
            (
                e["client"]["comm"].as_str().unwrap().to_owned(),
                asked,
                answered,
                request["batch"].to_string(),
                e["failed"].as_bool().unwrap(),
            )
        })
        .collect();
    let startup = (
        "startup postgres postgres",
        "null null",
        r#"["startup"]"#,
        false,
    );
    let extended = (
        "execute select generate_series(1, $1);",
        r#""SELECT 4" 4"#,
        r#"["parse","bind","describe","execute","sync"]"#,
        false,
    );
    let want = [
        ("psql", startup),
        (
            "psql",
            (
                "query select generate_series(1, 3)",
                r#""SELECT 3" 3"#,
                r#"["query"]"#,
                false,
            ),
        ),
        ("psql", startup),
        (
            "psql",
            (
                "query selec 1",
                r#"42601 syntax error at or near "selec""#,
                r#"["query"]"#,
                true,
            ),
        ),
        // pgbench connects once to check the server, then for its client.
        ("pgbench", startup),
        ("pgbench", startup),
        ("pgbench", extended),
        ("pgbench", extended),
    ];
    assert_eq!(
        decoded,
        want.map(|(c, (q, r, b, f))| (c.to_owned(), q.to_owned(), r.to_owned(), b.to_owned(), f)),
        "{records:#?}"
    );
    for line in [
        r#"postgresql: Query "select generate_series(1, 3)" -> SELECT 3"#,
        r#"postgresql: Query "selec 1" -> ERROR 42601 syntax error at or near "selec" (failed)"#,
        r#"postgresql: Execute "select generate_series(1, $1);" -> SELECT 4"#,
        "postgresql: Startup user=postgres database=postgres -> AuthenticationOk",
    ] {
        assert!(lines.contains(line), "no `{line}` in:\n{lines}");
    }
}

/// Starts `script`, which connects to `path`, prints its pid and waits
/// for a line (see [`go_on`]); returns it once it has printed, and the pid.
fn connected_before(script: &str, path: &str) -> (Child, u64) {
    let mut client = spawn_python(script, &[path]);
    let pid = first_line(&mut client)[0];
    (client, pid)
}

/// Lets a client spawned by [`connected_before`] go on past its
/// `sys.stdin.readline()`, and waits for it.
fn go_on(client: &mut std::process::Child) {
    client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    wait_ok(client);
}

/// A keep-alive client (python's http.client on the Unix socket): half
/// of a POST's body, its pid printed; once it reads a line, the other
/// half, and three GETs on the same connection.
const KEEP_ALIVE_CLIENT: &str = r#"
import http.client, os, socket, sys
class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
c = UnixConnection('api')
c.putrequest('POST', '/missing')
c.putheader('Content-Length', '1000')
c.endheaders()
c.send(b'x' * 500)
print(os.getpid(), flush=True)
sys.stdin.readline()
c.send(b'y' * 500)
c.getresponse().read()
for path in ('/ok', '/missing', '/boom'):
    c.request('GET', path)
    c.getresponse().read()
c.close()
"#;

/// A keep-alive connection opened before the trace, which starts in the
/// middle of a POST's body: decoding picks it up at the next request,
/// says where, and pairs each request with its own answer (the POST's
/// 404, sent after the trace started, is no GET's).
#[test]
fn http_keep_alive_joined_mid_body_resynchronises() {
    if !have_root("http_keep_alive_joined_mid_body_resynchronises") {
        return;
    }
    let dir = socket_dir("decode-resync-http");
    let path = dir.path();
    let mut server = spawn_python(HTTP_SERVER, &[path]);
    first_line(&mut server);
    let (mut client, client_pid) = connected_before(KEEP_ALIVE_CLIENT, path);
    // The server has read the first half before the trace starts.
    thread::sleep(Duration::from_millis(200));
    let trace = decoded_exchanges(path);
    go_on(&mut client);
    thread::sleep(Duration::from_millis(200));
    let _ = server.kill();
    let _ = server.wait();
    let records = stopped(trace);
    let mine: Vec<&Value> = exchanges(&records)
        .into_iter()
        .filter(|e| e["client"]["pid"] == client_pid)
        .collect();
    assert_eq!(mine.len(), 4, "{records:#?}");
    // The POST's rest and its answer: plain.
    assert_eq!(mine[0]["request_bytes"], 500, "{records:#?}");
    assert!(mine[0].get("app").is_none(), "{}", mine[0]);
    let decoded: Vec<(&str, u64, bool)> = mine[1..]
        .iter()
        .map(|e| {
            assert_eq!(e["app"], "http", "{e}");
            (
                e["request"]["target"].as_str().unwrap(),
                e["response"]["status"].as_u64().unwrap(),
                e["failed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decoded,
        [
            ("/ok", 200, false),
            ("/missing", 404, false),
            ("/boom", 500, true)
        ],
        "{records:#?}"
    );
    assert_eq!(mine[1]["resync_offset"], 500, "{}", mine[1]);
    assert!(mine[2].get("resync_offset").is_none() && mine[3].get("resync_offset").is_none());
    assert!(
        mine.iter().all(|e| e.get("undecoded").is_none()),
        "{records:#?}"
    );
}

/// A RESP client on the Unix socket: most of a SET of a 1000-byte value
/// (with argv[2] `answer`: a BLPOP of an empty list that times out in 3
/// s), its pid printed; once it reads a line, the rest, then GET, INCR
/// and an LPUSH on `big` (an error after the SET), each answer read
/// before the next.
const REDIS_CLIENT: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def command(*words):
    return b'*%d\r\n' % len(words) + b''.join(b'$%d\r\n%s\r\n' % (len(w), w) for w in words)
def reply():
    got = b''
    while not got.endswith(b'\r\n'):
        got += s.recv(4096)
first = command(b'SET', b'big', b'v' * 1000)
if sys.argv[2:] == ['answer']:
    first = command(b'BLPOP', b'empty', b'3')
s.sendall(first[:600])
print(os.getpid(), flush=True)
sys.stdin.readline()
if first[600:]:
    s.sendall(first[600:])
reply()
for words in ((b'GET', b'missing'), (b'INCR', b'n'), (b'LPUSH', b'big', b'x')):
    s.sendall(command(*words))
    reply()
s.close()
"#;

/// redis-server and a connection opened before the trace, which starts
/// inside a SET's value: in the text, the exchanges after it decoded,
/// the first saying where decoding picked the connection up (offsets
/// count from the first byte the trace saw).
#[test]
fn redis_joined_mid_value_resynchronises() {
    if !have_root("redis_joined_mid_value_resynchronises") {
        return;
    }
    let dir = socket_dir("decode-resync-redis");
    let path = dir.path();
    let Some(server) = RedisServer::start("redis_joined_mid_value_resynchronises", path) else {
        return;
    };
    let (mut client, client_pid) = connected_before(REDIS_CLIENT, path);
    let trace = Trace::start(&["--unix", "--exchanges", "--decode", "--path", path]).unwrap();
    go_on(&mut client);
    let finished = trace.stop().unwrap();
    drop(server);
    let text = finished.stdout.join("\n");
    let client = format!("[{client_pid}] fd");
    let lines: Vec<&str> = finished
        .stdout
        .iter()
        .map(String::as_str)
        .skip_while(|line| !line.contains(&client))
        .collect();
    let decoded: Vec<&str> = lines
        .iter()
        .filter_map(|line| Some(line.split_once("  redis: ")?.1))
        .collect();
    assert_eq!(decoded.len(), 3, "{text}");
    assert_eq!(
        decoded[..2],
        ["GET missing -> bulk", "INCR n -> :1"],
        "{text}"
    );
    assert!(
        decoded[2].starts_with("LPUSH big -> -WRONGTYPE ") && decoded[2].ends_with(" (failed)"),
        "{text}"
    );
    let first = lines
        .iter()
        .position(|line| line.contains("redis: GET missing"))
        .unwrap();
    // The 431 bytes of the SET the trace saw come before the GET.
    assert_eq!(
        lines[first + 1],
        "    (joined mid-connection: resynchronised at byte offset 431 of its requests)",
        "{text}"
    );
    assert_eq!(text.matches("joined mid-connection").count(), 1, "{text}");
}

/// redis-server and a connection opened before the trace, which starts
/// while the server holds a BLPOP's answer: the first call seen is the
/// server's, and the ends' names still say which is the client (the
/// server's socket has its listener's name), so the next requests decode.
#[test]
fn redis_joined_at_an_answer_knows_its_client() {
    let test = "redis_joined_at_an_answer_knows_its_client";
    if !have_root(test) {
        return;
    }
    let dir = socket_dir("decode-resync-answer");
    let path = dir.path();
    let Some(server) = RedisServer::start(test, path) else {
        return;
    };
    let mut client = spawn_python(REDIS_CLIENT, &[path, "answer"]);
    let client_pid = first_line(&mut client)[0];
    let trace = decoded_exchanges(path);
    go_on(&mut client);
    let records = stopped(trace);
    drop(server);
    let ours: Vec<&Value> = exchanges(&records)
        .into_iter()
        .filter(|e| e["client"]["pid"] == client_pid || e["server"]["pid"] == client_pid)
        .collect();
    assert!(
        ours.iter().all(|e| e["client"]["pid"] == client_pid),
        "{records:#?}"
    );
    // The BLPOP's answer, its request sent before the trace: plain.
    assert!(ours[0].get("app").is_none(), "{}", ours[0]);
    let fields = ["request.command", "response.type"];
    let want = [
        json!(["GET", "bulk"]),
        json!(["INCR", "integer"]),
        json!(["LPUSH", "integer"]),
    ];
    assert_eq!(
        decoded_as(&ours[1..], "redis", &fields),
        want,
        "{records:#?}"
    );
}

/// Both ends of a connection made before it prints its pid, in one
/// process: once it reads a line, twenty rounds of random bytes each way.
const BINARY_PAIR: &str = r#"
import os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen()
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
s, _ = srv.accept()
print(os.getpid(), flush=True)
sys.stdin.readline()
for _ in range(20):
    c.sendall(os.urandom(64))
    s.recv(64, socket.MSG_WAITALL)
    s.sendall(os.urandom(32))
    c.recv(32, socket.MSG_WAITALL)
"#;

/// `--decode-as PATH=http` on a connection older than the trace whose
/// bytes are no HTTP: still looked at for a request's start, given up
/// after as many calls as said, once: on an exchange, or without
/// `--exchanges` on the call where it gave up.
#[test]
fn a_forced_protocol_joined_mid_stream_says_it_cannot_resynchronise() {
    if !have_root("a_forced_protocol_joined_mid_stream_says_it_cannot_resynchronise") {
        return;
    }
    let said = "joined mid-connection: no http request start in the first 16 calls";
    let finished = |how: &str| {
        let dir = socket_dir("decode-resync-binary");
        let path = dir.path();
        let (mut pair, _) = connected_before(BINARY_PAIR, path);
        let rule = format!("{path}=http");
        let args = ["--unix", how, "--decode-as", &rule, "--path", path];
        let trace = Trace::start(&args).unwrap();
        go_on(&mut pair);
        trace.stop().unwrap()
    };
    let text = finished("--exchanges").stdout.join("\n");
    let line = format!("\n    ({said}; plain turns from here)");
    assert_eq!(text.matches(&line).count(), 1, "{text}");
    assert!(!text.contains("http: "), "{text}");
    assert!(text.matches("64 B -> 32 B").count() >= 15, "{text}");

    let calls = finished("--json").events();
    let noted: Vec<&Value> = calls
        .iter()
        .filter(|c| c.get("undecoded").is_some())
        .collect();
    assert_eq!(noted.len(), 1, "{calls:#?}");
    assert_eq!(noted[0]["undecoded"], said);
    assert!(["send", "recv"].contains(&noted[0]["event"].as_str().unwrap()));
    assert!(calls.iter().all(|c| c.get("app").is_none()), "{calls:#?}");
}

/// curl over loopback TCP, two requests on one kept-alive connection to a
/// small server: each decoded with its answer, the 500 failed.
#[test]
fn http_over_loopback_tcp() {
    if !have_root("http_over_loopback_tcp") {
        return;
    }
    let (mut server, port, trace) = served_and_traced(HTTP_SERVER, &["tcp"], &["--tcp"]);
    let url = |target: &str| format!("http://127.0.0.1:{port}{target}");
    let curl = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &url("/ok"),
            "-o",
            "/dev/null",
            &url("/boom"),
        ])
        .status()
        .unwrap();
    assert!(curl.success());
    let records = stopped(trace);
    let _ = server.kill();
    let _ = server.wait();
    let decoded: Vec<(String, String, u64, bool)> = exchanges(&records)
        .iter()
        .map(|e| {
            assert_eq!(e["app"], "http", "{e}");
            assert_eq!(e["request"]["host"], format!("127.0.0.1:{port}"), "{e}");
            (
                e["request"]["method"].as_str().unwrap().to_owned(),
                e["request"]["target"].as_str().unwrap().to_owned(),
                e["response"]["status"].as_u64().unwrap(),
                e["failed"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [("GET", "/ok", 200, false), ("GET", "/boom", 500, true)];
    assert_eq!(
        decoded,
        want.map(|(m, t, s, f)| (m.to_owned(), t.to_owned(), s, f)),
        "{records:#?}"
    );
}

/// A DNS server on argv[1] port argv[2] (0: any), UDP and TCP: prints
/// its pid and port, answers argv[3] queries and exits. Over UDP it reads
/// argv[4] queries before it answers them, in the other order. Names
/// starting `nx.` are NXDOMAIN; others get an A (192.0.2.1) or AAAA (::1)
/// answer, as asked.
const DNS_SERVER: &str = r#"
import os, select, socket, struct, sys
addr, port, queries, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((addr, port))
port = u.getsockname()[1]
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.bind((addr, port))
t.listen()
print(os.getpid(), port, flush=True)

def answer(query):
    at = 12
    while query[at]:
        at += query[at] + 1
    question = query[12:at + 5]
    qtype = struct.unpack('>H', question[-4:-2])[0]
    nx = question.startswith(b'\x02nx')
    flags = 0x8180 | (3 if nx else 0)
    header = query[:2] + struct.pack('>HHHHH', flags, 1, 0 if nx else 1, 0, 0)
    data = bytes(15) + b'\x01' if qtype == 28 else bytes([192, 0, 2, 1])
    rr = b'\xc0\x0c' + struct.pack('>HHIH', qtype, 1, 60, len(data)) + data
    return header + question + (b'' if nx else rr)

def exactly(c, n):
    data = b''
    while len(data) < n:
        data += c.recv(n - len(data))
    return data

served = 0
while served < queries:
    ready, _, _ = select.select([u, t], [], [])
    if u in ready:
        got = [u.recvfrom(4096) for _ in range(batch)]
        for query, peer in reversed(got):
            u.sendto(answer(query), peer)
        served += batch
    else:
        c, _ = t.accept()
        query = exactly(c, struct.unpack('>H', exactly(c, 2))[0])
        reply = answer(query)
        c.sendall(struct.pack('>H', len(reply)) + reply)
        c.close()
        served += 1
"#;

/// dig, a real resolver client, asks a small server on loopback: an
/// answer and an NXDOMAIN over UDP and an answer over TCP, each paired
/// with its query. The server exits
/// after its last answer, often before dig's read of it is recorded
/// (the conversation waits for that read), and its first read began
/// before the trace (it names no address).
#[test]
fn dig_gets_an_answer_and_an_nxdomain() {
    let test = "dig_gets_an_answer_and_an_nxdomain";
    if !have_root(test) {
        return;
    }
    if !have_program("dig") {
        skip(
            test,
            "dig is not installed (cargo xtask setup installs bind9-dnsutils)",
        );
        return;
    }
    let (mut server, port, trace) = served_and_traced(
        DNS_SERVER,
        &["127.0.0.1", "0", "3", "1"],
        &["--udp", "--tcp"],
    );
    for (name, over) in [
        ("example.com", "+notcp"),
        ("nx.example.com", "+notcp"),
        ("tcp.example.com", "+tcp"),
    ] {
        let dig = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, over, "+tries=1", "+time=3"])
            .args([name, "A"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&dig.stdout);
        assert!(said.contains("status: "), "{said}");
    }
    wait_ok(&mut server);
    let records = stopped(trace);
    let exchanges = exchanges(&records);
    for e in &exchanges {
        assert_eq!(e["request"]["id"], e["response"]["id"], "{e}");
    }
    let fields = [
        "proto",
        "request.name",
        "request.qtype",
        "response.rcode",
        "response.answers",
        "failed",
    ];
    let want = [
        json!(["udp", "example.com", "A", "NOERROR", 1, false]),
        json!(["udp", "nx.example.com", "A", "NXDOMAIN", 0, true]),
        json!(["tcp", "tcp.example.com", "A", "NOERROR", 1, false]),
    ];
    assert_eq!(decoded_as(&exchanges, "dns", &fields), want, "{records:#?}");
}
