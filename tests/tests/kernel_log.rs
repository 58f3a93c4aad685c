//! `--kernel-log`: the kernel programs say why they count a failure. A
//! read of a bad address and a full ring buffer, made on purpose, each
//! appear on stderr with it and not without it.

use serde_json::Value;
use sockspy_tests::{Trace, find, have_root, python, signal};

/// `connect` given a `sockaddr` pointer that points nowhere (address 8):
/// the kernel answers EFAULT, and sockspy's exit hook, which copies the
/// address the call was given, fails to read it.
const BAD_ADDRESS: &str = r#"
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
assert libc.connect(s.fileno(), ctypes.c_void_p(8), 16) == -1
assert ctypes.get_errno() == 14
print(json.dumps({"pid": os.getpid()}))
"#;

/// The summary's count of failed reads.
fn read_failures(stderr: &str) -> u64 {
    let summary = stderr
        .lines()
        .rfind(|line| line.contains(" read failures"))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));
    let before = summary.split(" read failures").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Runs the bad-address workload under `trace --unix --json ARGS`; gives
/// back what sockspy wrote to stderr and the workload's connect event.
fn bad_address(args: &[&str]) -> (String, Value) {
    let trace = Trace::start(&[&["--unix", "--json"], args].concat()).unwrap();
    let out = python(BAD_ADDRESS, &[]).unwrap();
    let pid = serde_json::from_str::<Value>(out.trim()).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let finished = trace.stop().unwrap();
    let connect = find(&finished.events(), pid, "connect").clone();
    (finished.stderr, connect)
}

#[test]
fn a_failed_read_says_where_and_why() {
    if !have_root("a_failed_read_says_where_and_why") {
        return;
    }
    let (stderr, connect) = bad_address(&["--kernel-log"]);
    assert_eq!(connect["error"], "EFAULT", "{connect}");
    assert!(read_failures(&stderr) >= 1, "{stderr}");
    assert!(
        stderr.lines().any(|line| line
            == "sockspy: kernel warn: address: reading memory at 8 failed with error -14"),
        "no diagnostic for the failed read of address 8: {stderr}"
    );
}

#[test]
fn without_kernel_log_the_kernel_says_nothing() {
    if !have_root("without_kernel_log_the_kernel_says_nothing") {
        return;
    }
    let (stderr, connect) = bad_address(&[]);
    assert_eq!(connect["error"], "EFAULT", "{connect}");
    // The read failed all the same, and was counted.
    assert!(read_failures(&stderr) >= 1, "{stderr}");
    assert!(
        !stderr.contains("sockspy: kernel"),
        "diagnostics without --kernel-log: {stderr}"
    );
}

/// Sixteen 16 KiB sends: the smallest ring buffer (128 KiB) holds fewer
/// records of 16 KiB of payload.
const BIG_SENDS: &str = r#"
import json, os, socket
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
for _ in range(16):
    a.sendall(bytes(16384))
    assert len(b.recv(16384, socket.MSG_WAITALL)) == 16384
print(json.dumps({"pid": os.getpid()}))
"#;

#[test]
fn a_full_ring_buffer_says_what_it_dropped() {
    if !have_root("a_full_ring_buffer_says_what_it_dropped") {
        return;
    }
    let trace = Trace::start(&[
        "--unix",
        "--json",
        "--data=16384",
        "-B",
        "128",
        "--kernel-log",
    ])
    .unwrap();
    // A reader that does not read: the ring buffer fills.
    signal(trace.pid(), libc::SIGSTOP);
    let ran = python(BIG_SENDS, &[]);
    signal(trace.pid(), libc::SIGCONT);
    ran.unwrap();
    let stderr = trace.stop().unwrap().stderr;
    let summary = stderr
        .lines()
        .rfind(|line| line.contains(" lost (ring buffer full)"))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));
    assert!(
        !summary.contains(" 0 lost"),
        "nothing was lost, so nothing was shown: {stderr}"
    );
    assert!(
        stderr.lines().any(|line| line
            .starts_with("sockspy: kernel warn: ring buffer full: a record of kind 7 (")
            && line.ends_with(" bytes) was dropped")),
        "no diagnostic for a dropped send: {stderr}"
    );
}
