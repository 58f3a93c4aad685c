//! `sockspy pairs`: a snapshot of who is connected to whom.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
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
    let mut child = Command::new(python3())
        .args(["-c", SHARED])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let facts: Value = serde_json::from_str(&line).unwrap();
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
