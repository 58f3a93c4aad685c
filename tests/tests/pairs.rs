//! `sockspy pairs`: a snapshot of who is connected to whom.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sockspy_tests::{Collectd, have_program, have_root, python3, sockspy_bin};

fn pairs(args: &[&str]) -> (Vec<Value>, String) {
    let output = Command::new(sockspy_bin())
        .arg("pairs")
        .args(args)
        .arg("--json")
        .output()
        .expect("running sockspy pairs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    (lines, stderr)
}

/// Starts a Python script that prints its facts as one JSON line, then
/// waits for stdin to close.
fn start(script: &str) -> (Child, Value) {
    let mut child = Command::new(python3())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let facts = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    (child, facts)
}

/// A socketpair whose one end the parent keeps and whose other end two
/// forked children share; prints the pids and fds, then waits for stdin.
const SHARED: &str = r#"
import json, os, socket, sys
mine, theirs = socket.socketpair()
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        mine.close()
        sys.stdin.read()
        os._exit(0)
    kids.append(pid)
print(json.dumps({"parent": os.getpid(), "kids": kids, "mine": mine.fileno(), "theirs": theirs.fileno()}), flush=True)
theirs.close()
sys.stdin.read()
for pid in kids:
    os.waitpid(pid, 0)
"#;

#[test]
fn lists_both_ends_and_every_holder() {
    if !have_root("lists_both_ends_and_every_holder") {
        return;
    }
    let (mut child, facts) = start(SHARED);
    // The parent closes its copy of the children's end after printing.
    std::thread::sleep(Duration::from_millis(200));
    let (entries, _) = pairs(&[]);
    drop(child.stdin.take());
    child.wait().unwrap();

    let parent = &facts["parent"];
    let entry = entries
        .iter()
        .find(|e| e["state"] == "connected" && (e["pid"] == *parent || e["peer"]["pid"] == *parent))
        .expect("the parent's pair");
    let (mine, theirs) = if entry["pid"] == *parent {
        (entry, &entry["peer"])
    } else {
        (&entry["peer"], entry)
    };
    assert_eq!(mine["fd"], facts["mine"], "{entry}");
    let mut holders: Vec<u64> = theirs["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["fd"], facts["theirs"], "{entry}");
            h["pid"].as_u64().unwrap()
        })
        .collect();
    holders.sort_unstable();
    let mut kids: Vec<u64> = facts["kids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap())
        .collect();
    kids.sort_unstable();
    assert_eq!(holders, kids, "{entry}");
    assert_eq!(entry["type"], "stream");
    assert_eq!(entry["family"], "unix");
}

#[test]
fn collectd_and_rrdcached_are_a_pair() {
    if !have_root("collectd_and_rrdcached_are_a_pair") {
        return;
    }
    assert!(have_program("collectd") && have_program("rrdcached"));
    let setup = Collectd::start("pairs").unwrap();
    let collectd = setup.collectd_pid();
    let rrdcached = setup.rrdcached_pid;
    let socket = setup.socket.to_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let (entries, _) = pairs(&["--unix"]);
        let found = entries.into_iter().find(|e| {
            e["state"] == "connected"
                && [&e["pid"], &e["peer"]["pid"]].contains(&&Value::from(collectd))
                && [&e["pid"], &e["peer"]["pid"]].contains(&&Value::from(rrdcached))
        });
        if let Some(entry) = found {
            break entry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "collectd never connected"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let (client, server) = if entry["pid"] == collectd {
        (&entry, &entry["peer"])
    } else {
        (&entry["peer"], &entry)
    };
    assert_eq!(client["comm"], "collectd", "{entry}");
    assert_eq!(server["comm"], "rrdcached", "{entry}");
    assert_eq!(server["path"], socket, "{entry}");
    assert!(client["fd"].is_u64() && server["fd"].is_u64(), "{entry}");
    let (entries, _) = pairs(&[]);
    let listener = entries
        .iter()
        .find(|e| e["state"] == "listen" && e["path"] == socket)
        .expect("rrdcached's listener");
    assert_eq!(listener["pid"], rrdcached, "{listener}");
}

#[test]
fn unprivileged_users_see_what_they_may() {
    if !have_root("unprivileged_users_see_what_they_may") {
        return;
    }
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sockspy_bin())
        .arg("pairs")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("were not readable"),
        "says what it could not see: {stderr}"
    );
}

/// A TCP server on 127.0.0.1 and a client in another process, connected,
/// and a connected UDP pair on [::1]; prints pids, fds and ports as JSON,
/// then waits for stdin.
const LOOPBACK: &str = r#"
import json, os, socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    c = socket.create_connection(("127.0.0.1", port))
    os.write(w, json.dumps({"fd": c.fileno(), "port": c.getsockname()[1]}).encode())
    sys.stdin.read()
    os._exit(0)
conn, _ = srv.accept()
client = json.loads(os.read(r, 200))
u1 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u2 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u1.bind(("::1", 0))
u2.bind(("::1", 0))
u1.connect(u2.getsockname())
u2.connect(u1.getsockname())
print(json.dumps({"server": os.getpid(), "client": pid, "port": port, "accepted": conn.fileno(),
                  "client_fd": client["fd"], "client_port": client["port"], "listener": srv.fileno(),
                  "udp_fds": [u1.fileno(), u2.fileno()], "udp_ports": [u1.getsockname()[1], u2.getsockname()[1]]}),
      flush=True)
sys.stdin.read()
os.waitpid(pid, 0)
"#;

#[test]
fn a_loopback_tcp_connection_and_a_udp_pair() {
    if !have_root("a_loopback_tcp_connection_and_a_udp_pair") {
        return;
    }
    let (mut child, facts) = start(LOOPBACK);
    let port = facts["port"].to_string();
    let server = facts["server"].to_string();
    let (tcp, _) = pairs(&["--tcp", "--port", &port]);
    let (udp, _) = pairs(&["--udp", "--pid", &server]);
    let (by_client, _) = pairs(&["--inet", "--pid", &facts["client"].to_string()]);
    let (unix_only, _) = pairs(&["--unix", "--port", &port]);
    drop(child.stdin.take());
    child.wait().unwrap();

    // The listener and one connection, seen from either end.
    let listener = tcp
        .iter()
        .find(|e| e["state"] == "listen")
        .expect("the listener");
    assert_eq!(listener["pid"], facts["server"], "{listener}");
    assert_eq!(listener["fd"], facts["listener"], "{listener}");
    assert_eq!(listener["lport"], facts["port"], "{listener}");
    let connections: Vec<&Value> = tcp.iter().filter(|e| e["state"] == "established").collect();
    assert_eq!(connections.len(), 1, "{tcp:?}");
    let entry = connections[0];
    assert_eq!(entry["family"], "inet");
    assert_eq!(entry["proto"], "tcp");
    let (client_end, server_end) = if entry["pid"] == facts["client"] {
        (entry, &entry["peer"])
    } else {
        (&entry["peer"], entry)
    };
    assert_eq!(client_end["pid"], facts["client"], "{entry}");
    assert_eq!(client_end["fd"], facts["client_fd"], "{entry}");
    assert_eq!(server_end["pid"], facts["server"], "{entry}");
    assert_eq!(server_end["fd"], facts["accepted"], "{entry}");
    assert!(server_end["sock"].is_u64() && client_end["sock"].is_u64());
    assert_ne!(server_end["sock"], client_end["sock"]);
    let ports = [&entry["lport"], &entry["peer"]["port"]];
    assert!(ports.contains(&&facts["port"]) && ports.contains(&&facts["client_port"]));

    // The UDP pair: one line, both fds of the same process.
    let pair: Vec<&Value> = udp.iter().filter(|e| e["state"] == "connected").collect();
    assert_eq!(pair.len(), 1, "{udp:?}");
    let mut fds = [pair[0]["fd"].clone(), pair[0]["peer"]["fd"].clone()];
    fds.sort_by_key(|v| v.as_u64());
    assert_eq!(fds[..], facts["udp_fds"].as_array().unwrap()[..], "{udp:?}");
    assert_eq!(pair[0]["family"], "inet6");
    assert_eq!(pair[0]["laddr"], "::1");

    // --pid keeps a line when either end's holder is that process.
    let ends = |e: &Value| [e["pid"].clone(), e["peer"]["pid"].clone()];
    assert!(
        by_client.iter().any(|e| e["state"] == "established"
            && ends(e).contains(&facts["server"])
            && ends(e).contains(&facts["client"])),
        "{by_client:?}"
    );
    assert!(
        by_client.iter().all(|e| e["proto"] == "tcp"),
        "{by_client:?}"
    );
    // Unix sockets have no ports.
    assert!(unix_only.is_empty(), "{unix_only:?}");
}
