//! The raw `sys_enter`/`sys_exit` hooks, which sockspy uses where the
//! kernel has no per-syscall tracepoints, chosen here through
//! `SOCKSPY_RAW_SYSCALLS` (this test binary is a process of its own, so
//! the variable reaches only its traces).

use std::process::Command;

use sockspy_tests::{
    Trace, find, find_data, first_line, have_root, payload, socket_dir, sockspy_bin, spawn_python,
    wait_ok,
};

/// Listens on argv[1], accepts one connection, reads `hello`, answers
/// `welcome`; prints its pid first.
const SERVER: &str = "
import os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
print(os.getpid(), flush=True)
conn, _ = srv.accept()
conn.recv(100)
conn.sendall(b'welcome')
conn.recv(100)
";

/// Connects to argv[1] with `sendmsg` and `recvfrom`; prints its pid and fd.
const CLIENT: &str = "
import os, socket, sys, time
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
for _ in range(100):
    try:
        c.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.05)
print(os.getpid(), c.fileno(), flush=True)
c.sendmsg([b'hel', b'lo'])
c.recvfrom(100)
c.close()
";

#[test]
fn raw_syscall_hooks_give_the_same_events() {
    if !have_root("raw_syscall_hooks_give_the_same_events") {
        return;
    }
    // SAFETY: set before any thread of this binary starts a process.
    unsafe { std::env::set_var("SOCKSPY_RAW_SYSCALLS", "1") };
    let check = Command::new(sockspy_bin()).arg("check").output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}");
    assert!(report.contains("raw sys_enter/sys_exit"), "{report}");
    for hook in ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit"] {
        let line = report.lines().find(|l| l.contains(hook)).unwrap_or("");
        assert!(line.starts_with("ok"), "{hook}: {report}");
    }

    let dir = socket_dir("raw");
    let path = dir.path();
    let trace = Trace::start(&["--unix", "--json", "--data"]).unwrap();
    let mut server = spawn_python(SERVER, &[path]);
    let server_pid = first_line(&mut server)[0];
    let mut client = spawn_python(CLIENT, &[path]);
    let ids = first_line(&mut client);
    wait_ok(&mut client);
    wait_ok(&mut server);
    let done = trace.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    let events = done.events();
    let (client_pid, client_fd) = (ids[0], ids[1]);
    let connect = find(&events, client_pid, "connect");
    assert_eq!(connect["fd"], client_fd, "{connect}");
    assert_eq!(connect["peer"]["pid"], server_pid, "{connect}");
    let accept = find(&events, server_pid, "accept");
    assert_eq!(accept["peer"]["fd"], client_fd, "{accept}");
    let send = find_data(&events, client_pid, "send", 5);
    assert_eq!(send["call"], "sendmsg", "{send}");
    assert_eq!(send["fd"], client_fd, "{send}");
    assert_eq!(payload(send), b"hello", "{send}");
    let recv = find_data(&events, client_pid, "recv", 7);
    assert_eq!(recv["call"], "recvfrom", "{recv}");
    assert_eq!(recv["peer"]["pid"], server_pid, "{recv}");
    find(&events, client_pid, "close");
}
