//! Protocol decoding (`--decode`, `--decode-as`) against real programs:
//! collectd and rrdcached, curl and an HTTP server on a Unix socket, a
//! client pipelining HTTP requests, redis-server and redis-cli, and a
//! resolver asking A and AAAA at once of a DNS server that answers them
//! in the other order.

use std::{process::Command, thread, time::Duration};

use serde_json::Value;
use sockspy_tests::{
    Collectd, RedisServer, Trace, first_line, have_root, python, run_sockspy, socket_dir,
    spawn_python, wait_ok,
};

fn exchanges(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["event"] == "exchange")
        .collect()
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
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--decode",
        "--path",
        "*rrdcached.sock",
    ])
    .unwrap();
    let setup = Collectd::start("decode").unwrap();
    thread::sleep(Duration::from_secs(4));
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
}

/// An HTTP/1.1 server on a Unix socket that keeps connections open and
/// answers by path: `/ok` 200 with a body, `/missing` 404, `/boom` 500
/// (chunked). Prints its pid.
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
    def log_message(self, *args):
        pass
class Server(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = self.socket.accept()
        return request, ('local', 0)
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
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--decode",
        "--path",
        path,
    ])
    .unwrap();
    let [server_pid, _, client_pid] = http_clients(path, &["/ok", "/missing"]);
    let records = stopped(trace);
    let exchanges = exchanges(&records);
    let summary: Vec<(String, String, u64, bool)> = exchanges
        .iter()
        .map(|e| {
            assert_eq!(e["app"], "http", "{e}");
            assert_eq!(e["server"]["pid"], server_pid, "{e}");
            (
                e["client"]["comm"].as_str().unwrap().to_owned(),
                e["request"]["target"].as_str().unwrap().to_owned(),
                e["response"]["status"].as_u64().unwrap(),
                e["failed"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [
        ("curl", "/ok", 200, false),
        ("curl", "/missing", 404, false),
        ("python3", "/ok", 200, false),
        ("python3", "/missing", 404, false),
        ("python3", "/boom", 500, true),
    ];
    assert_eq!(
        summary,
        want.map(|(c, t, s, f)| (c.to_owned(), t.to_owned(), s, f)),
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
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--decode",
        "--path",
        path,
    ])
    .unwrap();
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
    ];
    assert_eq!(
        decoded,
        want.map(|(c, t, f)| (c.to_owned(), t.to_owned(), f)),
        "{records:#?}"
    );
}

/// A DNS server on 127.0.0.1 that answers each pair of queries in the
/// other order (NXDOMAIN for `nx.` names), and a client that asks A and
/// AAAA at once on one socket, as glibc's resolver does. Prints the
/// server's port first, then waits for a line before it serves.
const DNS: &str = r#"
import os, socket, struct, sys
def query(qid, name, qtype):
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\0' + struct.pack('>HH', qtype, 1)
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(('127.0.0.1', 0))
port = srv.getsockname()[1]
pid = os.fork()
if pid == 0:
    for _ in range(2):
        pair = [srv.recvfrom(512), srv.recvfrom(512)]
        for data, addr in reversed(pair):
            rcode = 3 if b'\x02nx' in data else 0
            flags = 0x8180 | rcode
            srv.sendto(data[:2] + struct.pack('>H', flags) + data[4:], addr)
    os._exit(0)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for qid, name in ((0x1111, 'example.com'), (0x2222, 'nx.example.com')):
    c.sendto(query(qid, name, 1), ('127.0.0.1', port))
    c.sendto(query(qid + 1, name, 28), ('127.0.0.1', port))
    c.recvfrom(512)
    c.recvfrom(512)
os.waitpid(pid, 0)
print(os.getpid(), port, flush=True)
"#;

/// Answers in the other order still pair with their queries, by id.
#[test]
fn dns_answers_pair_with_their_queries() {
    if !have_root("dns_answers_pair_with_their_queries") {
        return;
    }
    let trace = Trace::start(&[
        "--udp",
        "--json",
        "--exchanges",
        "--decode",
        "--comm",
        "python3",
    ])
    .unwrap();
    let mut child = spawn_python(DNS, &[]);
    let line = first_line(&mut child);
    wait_ok(&mut child);
    let records = stopped(trace);
    let decoded: Vec<(String, String, String, bool)> = exchanges(&records)
        .iter()
        .filter(|e| e["client"]["pid"] == line[0])
        .map(|e| {
            assert_eq!(e["app"], "dns", "{e}");
            assert_eq!(e["request"]["id"], e["response"]["id"], "{e}");
            (
                e["request"]["name"].as_str().unwrap().to_owned(),
                e["request"]["type"].as_str().unwrap().to_owned(),
                e["response"]["rcode"].as_str().unwrap().to_owned(),
                e["failed"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [
        ("example.com", "A", "NOERROR", false),
        ("example.com", "AAAA", "NOERROR", false),
        ("nx.example.com", "A", "NXDOMAIN", true),
        ("nx.example.com", "AAAA", "NXDOMAIN", true),
    ];
    assert_eq!(
        decoded,
        want.map(|(n, t, r, f)| (n.to_owned(), t.to_owned(), r.to_owned(), f)),
        "{records:#?}"
    );
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
    let glob = format!("{}*=none", &path[..path.len() - 2]);
    let plain = run(&["--decode-as", &glob]);
    assert!(!plain.contains("= http"), "{plain}");
    let bad = run_sockspy(&["trace", "--decode-as", "80=gopher"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`gopher` is not a protocol"), "{err}");
}
