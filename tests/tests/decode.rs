//! Protocol decoding (`--decode`, `--decode-as`) against real programs:
//! collectd and rrdcached, curl and an HTTP server on a Unix socket, a
//! client pipelining HTTP requests, redis-server and redis-cli, a
//! resolver asking A and AAAA at once of a DNS server that answers them
//! in the other order, and connections opened before the trace started
//! (picked up at a request's start, or said not to be).

use std::{
    io::Write,
    path::Path,
    process::{Child, Command},
    thread,
    time::Duration,
};

use serde_json::Value;
use sockspy_tests::{
    Collectd, SocketDir, Trace, first_line, have_program, have_root, python, run_sockspy,
    socket_dir, spawn_python, wait_ok,
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
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        self.do_GET()
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
    let mut server = spawn_python(HTTP_SERVER, &[path]);
    let server_pid = first_line(&mut server)[0];
    let curl = Command::new("curl")
        .args(["-s", "--unix-socket", path])
        .args([
            "-o",
            "/dev/null",
            "http://api/ok",
            "-o",
            "/dev/null",
            "http://api/missing",
        ])
        .status()
        .unwrap();
    assert!(curl.success());
    let client_pid: u64 = python(PIPELINING_CLIENT, &[path])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    let _ = server.kill();
    let _ = server.wait();
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

/// redis-server on the Unix socket `dir.path()`, listening once this
/// returns; `None` (the test skips) when it is not installed.
fn redis_server(dir: &SocketDir) -> Option<Child> {
    if !have_program("redis-server") {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is missing (cargo xtask setup installs it)"
        );
        eprintln!("skipped: redis-server is not installed");
        return None;
    }
    let path = dir.path();
    let server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--unixsocket",
            path,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&**dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if Path::new(path).exists() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Some(server)
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
    let Some(mut server) = redis_server(&dir) else {
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
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-s", path])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
    };
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
    let _ = server.kill();
    let _ = server.wait();
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
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--exchanges",
        "--decode",
        "--path",
        path,
    ])
    .unwrap();
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

/// A RESP client on the Unix socket: most of a SET of a 1000-byte value,
/// its pid printed; once it reads a line, the rest, then GET, INCR and
/// an LPUSH on a string (an error), each answer read before the next.
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
big = command(b'SET', b'big', b'v' * 1000)
s.sendall(big[:600])
print(os.getpid(), flush=True)
sys.stdin.readline()
s.sendall(big[600:])
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
    let Some(mut server) = redis_server(&dir) else {
        return;
    };
    let (mut client, client_pid) = connected_before(REDIS_CLIENT, path);
    let trace = Trace::start(&["--unix", "--exchanges", "--decode", "--path", path]).unwrap();
    go_on(&mut client);
    let finished = trace.stop().unwrap();
    let _ = server.kill();
    let _ = server.wait();
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
/// after as many calls as said, once.
#[test]
fn a_forced_protocol_joined_mid_stream_says_it_cannot_resynchronise() {
    if !have_root("a_forced_protocol_joined_mid_stream_says_it_cannot_resynchronise") {
        return;
    }
    let dir = socket_dir("decode-resync-binary");
    let path = dir.path();
    let (mut pair, _) = connected_before(BINARY_PAIR, path);
    let rule = format!("{path}=http");
    let trace = Trace::start(&[
        "--unix",
        "--exchanges",
        "--decode-as",
        &rule,
        "--path",
        path,
    ])
    .unwrap();
    go_on(&mut pair);
    let finished = trace.stop().unwrap();
    let text = finished.stdout.join("\n");
    assert_eq!(
        text.matches(
            "\n    (joined mid-connection: no http request start in the first 16 calls; \
             plain turns from here)"
        )
        .count(),
        1,
        "{text}"
    );
    assert!(!text.contains("http: "), "{text}");
    assert!(text.matches("64 B -> 32 B").count() >= 15, "{text}");
}
