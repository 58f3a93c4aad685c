//! How sockspy behaves at its edges: bad input, unfit environments, and
//! the ways a trace ends.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sockspy_tests::{
    Trace, check_report, have_program, have_root, python, python3, run_sockspy, signal, socket_dir,
    sockspy_bin,
};

/// A clear one-line error and exit status 2, never a panic.
fn assert_usage_error(output: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(mentions),
        "expected {mentions:?} in: {stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn rejects_bad_arguments() {
    if !sockspy_bin().exists() {
        eprintln!("skipped rejects_bad_arguments: sockspy is not built");
        return;
    }
    assert_usage_error(&run_sockspy(&["trace", "--bogus"]), "--bogus");
    assert_usage_error(&run_sockspy(&["trace", "--count", "abc"]), "abc");
    assert_usage_error(&run_sockspy(&["trace", "--duration", "-1"]), "-1");
    assert_usage_error(&run_sockspy(&["trace", "--data=99999"]), "16384");
    assert_usage_error(&run_sockspy(&["frobnicate"]), "frobnicate");
}

#[test]
fn refuses_an_unprivileged_user() {
    if !have_root("refuses_an_unprivileged_user") {
        return;
    }
    assert!(have_program("setpriv"), "setpriv (util-linux) is needed");
    let bin = sockspy_bin();
    for sub in ["trace", "check"] {
        let output = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&bin)
            .arg(sub)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{sub}: {stderr}");
        assert!(stderr.contains("root"), "{sub}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        if sub == "trace" {
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        }
    }
}

#[test]
fn check_reports_every_hook() {
    if !have_root("check_reports_every_hook") {
        return;
    }
    let stdout = check_report();
    for hook in [
        "BTF",
        "privileges",
        "ring buffer",
        "syscall hooks",
        "syscalls:sys_enter_connect",
        "syscalls:sys_exit_accept4",
        "syscalls:sys_enter_close",
        "sock:sock_send_length",
        "sock:sock_recv_length",
        "sched:sched_process_fork",
    ] {
        let line = stdout
            .lines()
            .find(|line| line.contains(hook))
            .unwrap_or_else(|| panic!("no {hook} line in {stdout}"));
        assert!(line.starts_with("ok"), "{line}");
    }
}

/// The verifier checks every path through a program, up to a million
/// instructions per program; a program near that limit is one kernel
/// version away from being refused, and makes sockspy slow to start (each
/// hundred thousand instructions took about a third of a second here, and
/// ten times that in an emulated guest). `check` loads every program with
/// the largest settings and says the most any one took; it must stay
/// under a quarter of the limit.
#[test]
fn programs_stay_far_within_the_verifiers_budget() {
    if !have_root("programs_stay_far_within_the_verifiers_budget") {
        return;
    }
    let stdout = check_report();
    let line = stdout
        .lines()
        .find(|line| line.starts_with("ok    verifier"))
        .unwrap_or_else(|| panic!("no verifier line in {stdout}"));
    let most: u32 = line
        .split("the most, ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(most > 0 && most < 250_000, "{line}");
}

/// A backend this kernel cannot run (here: fentry and kprobe on the
/// host, the tracepoint one on 6.1) is named by `trace --backend` and
/// `check --backend` with exit status 2 and what it lacks.
#[test]
fn a_backend_that_cannot_attach_says_what_it_lacks() {
    if !have_root("a_backend_that_cannot_attach_says_what_it_lacks") {
        return;
    }
    let check = run_sockspy(&["check"]);
    let report = String::from_utf8_lossy(&check.stdout);
    let Some(backend) = report
        .lines()
        .find_map(|line| line.strip_prefix("no    backend "))
        .and_then(|rest| rest.split_whitespace().next())
    else {
        eprintln!(
            "skipped a_backend_that_cannot_attach_says_what_it_lacks: every backend attaches here"
        );
        return;
    };
    // The hook check named first for that backend, and why.
    let hook = report
        .lines()
        .filter_map(|line| line.strip_prefix("no    "))
        .find(|rest| !rest.starts_with("backend "))
        .and_then(|rest| rest.split("  ").next())
        .expect("a `no` line for the hook that did not attach");
    let trace = run_sockspy(&["trace", "--backend", backend, "--duration", "1"]);
    assert_usage_error(&trace, &format!("the {backend} backend cannot run here"));
    let stderr = String::from_utf8_lossy(&trace.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let checked = run_sockspy(&["check", "--backend", backend]);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains(&format!("no    {hook}")), "{stdout}");
    assert!(
        stdout.contains(&format!("the {backend} backend cannot attach here")),
        "{stdout}"
    );
}

/// `sockspy check | head -1`: the report stops quietly, no panic.
#[test]
fn check_into_a_closed_pipe() {
    if !have_root("check_into_a_closed_pipe") {
        return;
    }
    let mut check = Command::new(sockspy_bin())
        .arg("check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(check.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let output = check.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(first.starts_with("ok"), "{first}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{stderr}");
}

/// Keeps Unix sockets busy for `seconds`.
const CHATTER: &str = "
import socket, sys, time
a, b = socket.socketpair()
end = time.time() + float(sys.argv[1])
while time.time() < end:
    a.send(b'tick')
    b.recv(10)
    time.sleep(0.01)
";

#[test]
fn count_stops_after_that_many_events() {
    if !have_root("count_stops_after_that_many_events") {
        return;
    }
    let trace = Trace::start(&["--unix", "--count", "5"]).unwrap();
    let chatter = std::thread::spawn(|| python(CHATTER, &["3"]));
    let done = trace.finish().unwrap();
    chatter.join().unwrap().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    let events: Vec<_> = done
        .stdout
        .iter()
        .filter(|l| !l.starts_with("TIME"))
        .collect();
    assert_eq!(events.len(), 5, "{:?}", done.stdout);
    assert!(
        done.stderr.contains(" lost (ring buffer full)"),
        "{}",
        done.stderr
    );
}

#[test]
fn duration_stops_on_time() {
    if !have_root("duration_stops_on_time") {
        return;
    }
    let started = Instant::now();
    let trace = Trace::start(&["--unix", "--duration", "1.5", "--json"]).unwrap();
    let done = trace.finish().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    done.events();
}

#[test]
fn sigterm_and_sighup_stop_cleanly_with_a_summary() {
    if !have_root("sigterm_and_sighup_stop_cleanly_with_a_summary") {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let trace = Trace::start(&["--unix", "--json", "--stats"]).unwrap();
        python(CHATTER, &["1.5"]).unwrap();
        signal(trace.pid(), sig);
        let done = trace.finish().unwrap();
        assert!(done.status.success(), "{}", done.stderr);
        let events = done.events();
        assert!(
            events
                .iter()
                .any(|ev| ev["event"] == "send" && ev["bytes"] == 4)
        );
        let summary = done.stderr.lines().last().unwrap_or_default();
        assert!(
            summary.starts_with("sockspy: ") && summary.contains(" events, "),
            "{}",
            done.stderr
        );
        assert!(done.stderr.contains("ring buffer"), "{}", done.stderr);
    }
}

/// A script that stops sockspy as soon as it says it is tracing (`sockspy
/// trace ... 2>&1 | grep -m1 tracing && kill -INT ...`) still gets a clean
/// stop and its summary: no signal finds sockspy between its word and
/// being ready to hear one.
#[test]
fn a_signal_right_after_the_ready_line_stops_cleanly() {
    if !have_root("a_signal_right_after_the_ready_line_stops_cleanly") {
        return;
    }
    for (round, sig) in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let trace = Trace::start(&["--unix", "--json"]).unwrap();
        signal(trace.pid(), sig);
        let done = trace.finish().unwrap();
        assert!(
            done.status.success(),
            "round {round}: {}: {}",
            done.status,
            done.stderr
        );
        assert!(done.stderr.contains(" events, "), "{}", done.stderr);
    }
}

#[test]
fn closed_pipe_ends_the_trace() {
    if !have_root("closed_pipe_ends_the_trace") {
        return;
    }
    let bin = sockspy_bin();
    let chatter = std::thread::spawn(|| python(CHATTER, &["4"]));
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' trace --unix | head -n 3", bin.display()))
        .output()
        .unwrap();
    chatter.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 3);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    assert!(stderr.contains(" events, "), "{stderr}");
}

/// A minimal BTF file: an `int` and a `struct task_struct` with only `pid`.
fn btf_lacking_fields() -> Vec<u8> {
    let strings = b"\0int\0task_struct\0pid\0";
    let words: [u32; 10] = [
        // [1] int: name "int", kind INT, size 4, then its encoding word
        1,
        1 << 24,
        4,
        32,
        // [2] struct task_struct, one member, size 8
        5,
        (4 << 24) | 1,
        8,
        // member pid: type 1, bit offset 0
        17,
        1,
        0,
    ];
    let types: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut out = vec![0x9f, 0xeb, 1, 0];
    for word in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&types);
    out.extend_from_slice(strings);
    out
}

#[test]
fn explains_a_kernel_without_usable_btf() {
    if !have_root("explains_a_kernel_without_usable_btf") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sockspy-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, [0x42; 64]).unwrap();
    let lacking = dir.join("lacking");
    std::fs::write(&lacking, btf_lacking_fields()).unwrap();
    let cases = [
        (dir.join("missing"), "has no BTF"),
        (garbage, "malformed BTF"),
        (lacking, "no field tgid in struct task_struct"),
    ];
    for (btf, says) in cases {
        for sub in ["trace", "check"] {
            let output = Command::new(sockspy_bin())
                .arg(sub)
                .env("SOCKSPY_BTF", &btf)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{sub} with {}: {stderr}",
                btf.display()
            );
            assert!(
                stderr.contains(says),
                "{sub}: expected {says:?} in {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            if sub == "trace" {
                assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_instances_each_see_everything() {
    if !have_root("two_instances_each_see_everything") {
        return;
    }
    let first = Trace::start(&["--unix", "--json"]).unwrap();
    let second = first.also(&["--unix", "--json"]).unwrap();
    python(CHATTER, &["1"]).unwrap();
    let ticks = |trace: Trace| {
        let done = trace.stop().unwrap();
        assert!(done.status.success(), "{}", done.stderr);
        done.events()
            .iter()
            .filter(|ev| ev["event"] == "send" && ev["bytes"] == 4)
            .count()
    };
    let (a, b) = (ticks(second), ticks(first));
    assert!(a > 10, "the second trace saw {a} ticks");
    assert_eq!(a, b, "both traces see every tick");
}

/// Ids of the BPF programs or links (`what`) loaded right now.
fn bpf_ids(what: &str) -> Vec<u64> {
    let output = Command::new("bpftool")
        .args([what, "show", "-j"])
        .output()
        .expect("running bpftool");
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|item| item["id"].as_u64())
        .collect()
}

#[test]
fn nothing_stays_in_the_kernel_after_sigkill() {
    if !have_root("nothing_stays_in_the_kernel_after_sigkill") {
        return;
    }
    assert!(
        have_program("bpftool"),
        "cargo xtask setup installs bpftool"
    );
    let before = (bpf_ids("prog"), bpf_ids("link"));
    let trace = Trace::start(&["--unix"]).unwrap();
    let ours = (
        new_ids(&before.0, bpf_ids("prog")),
        new_ids(&before.1, bpf_ids("link")),
    );
    assert!(
        ours.0.len() >= 7 && ours.1.len() >= 7,
        "sockspy's programs and links: {ours:?}"
    );
    signal(trace.pid(), libc::SIGKILL);
    let done = trace.finish().unwrap();
    assert_eq!(done.status.code(), None, "killed by a signal");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = (
            new_ids(&[], bpf_ids("prog"))
                .into_iter()
                .filter(|id| ours.0.contains(id))
                .count(),
            new_ids(&[], bpf_ids("link"))
                .into_iter()
                .filter(|id| ours.1.contains(id))
                .count(),
        );
        if left == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left in the kernel: {left:?} programs, links"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn new_ids(before: &[u64], now: Vec<u64>) -> Vec<u64> {
    now.into_iter().filter(|id| !before.contains(id)).collect()
}

/// Renamed `lossgen` (so the kernel filter keeps only it), makes a
/// socketpair, sends and receives argv[1] one-byte messages, closes both
/// ends: 1 + 2N + 2 socket events. Prints its pid.
const LOSS_GENERATOR: &str = "
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b'lossgen', 0, 0, 0)
a, b = socket.socketpair()
for _ in range(int(sys.argv[1])):
    a.send(b'x')
    b.recv(1)
a.close()
b.close()
print(os.getpid(), flush=True)
";

/// Under overload (sockspy's output blocked, the smallest ring buffer)
/// events are lost, and exactly as many as are missing are reported lost.
#[test]
fn loss_accounting_is_exact() {
    if !have_root("loss_accounting_is_exact") {
        return;
    }
    let messages = 20_000u64;
    let mut sockspy = Command::new(sockspy_bin())
        .args(["trace", "--unix", "--json", "--comm", "lossgen", "-B", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(sockspy.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("sockspy: tracing") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "sockspy exited before tracing"
        );
    }
    // Nobody reads sockspy's output yet: it blocks on the full pipe and the
    // ring buffer overflows.
    let pid: u64 = python(LOSS_GENERATOR, &[&messages.to_string()])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(sockspy.id(), libc::SIGINT);
    let mut stdout = String::new();
    std::io::Read::read_to_string(sockspy.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(sockspy.wait().unwrap().success(), "{rest}");
    let received = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|ev| ev["pid"] == pid)
        .count() as u64;
    let lost_socket: u64 = rest
        .lines()
        .find_map(|l| l.strip_prefix("sockspy: lost records: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no loss line in {rest}"));
    let produced = 1 + 2 * messages + 2;
    eprintln!("received {received}, lost {lost_socket}, produced {produced}");
    assert!(lost_socket > 0, "the overload lost nothing: {rest}");
    assert_eq!(received + lost_socket, produced, "{rest}");
}

/// Makes connections to a listener of its own at argv[1]: connect, one
/// message, close. Says `warm` after argv[2] of them, waits for a line,
/// then makes argv[3] more and says `done`.
const CHURN: &str = r#"
import os, socket, sys
path, warm, more = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(16)
def churn(n):
    for _ in range(n):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        s, _ = srv.accept()
        c.send(b"x")
        s.recv(1)
        c.close()
        s.close()
churn(warm)
print("warm", flush=True)
sys.stdin.readline()
churn(more)
print("done", flush=True)
"#;

/// A process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The table sizes of every `--stats` line: (sockets, processes, keys).
fn table_sizes(stderr: &str) -> Vec<[u64; 3]> {
    stderr
        .lines()
        .filter_map(|line| {
            let table = line.split_once("; table: ")?.1;
            let numbers: Vec<u64> = table
                .split(", ")
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            numbers.try_into().ok()
        })
        .collect()
}

/// 100,000 short connections: afterwards the connection table is back to
/// its size before them, and memory did not grow with them.
#[test]
fn churn_leaves_no_trace_in_the_table() {
    if !have_root("churn_leaves_no_trace_in_the_table") {
        return;
    }
    const WARM: u64 = 10_000;
    const MORE: u64 = 90_000;
    let dir = socket_dir("churn");
    // Every event goes through the resolver; the path filter prints none.
    let trace = Trace::start(&["--unix", "--stats", "--path", "/nonexistent/sockspy"]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut churn = Command::new(python3())
        .args([
            "-c",
            CHURN,
            dir.path(),
            &WARM.to_string(),
            &MORE.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(churn.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "warm");
    std::thread::sleep(Duration::from_millis(1500));
    let warm_rss = rss_kib(trace.pid());
    writeln!(churn.stdin.as_mut().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    assert!(churn.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(2500));
    let end_rss = rss_kib(trace.pid());
    let done = trace.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr.contains(", 0 lost (ring buffer full)"),
        "a lost close would leave its socket in the table: {}",
        done.stderr
    );
    let sizes = table_sizes(&done.stderr);
    let (first, last) = (sizes.first().unwrap(), sizes.last().unwrap());
    // Other programs on the machine may open a few sockets meanwhile.
    for (what, before, after) in [("sockets", first[0], last[0]), ("keys", first[2], last[2])] {
        assert!(
            after <= before + 64,
            "{what}: {before} before, {after} after {} connections; {sizes:?}",
            WARM + MORE
        );
    }
    let peak = sizes.iter().map(|s| s[0]).max().unwrap();
    assert!(peak < first[0] + 1000, "the table peaked at {peak} sockets");
    assert!(
        end_rss < warm_rss + 4096,
        "sockspy grew from {warm_rss} KiB to {end_rss} KiB over {MORE} more connections"
    );
    eprintln!("table {first:?} -> {last:?}, peak {peak}; RSS {warm_rss} -> {end_rss} KiB");
}

/// Sends and receives 16 KiB messages on a socketpair as fast as it can,
/// until killed.
const FLOOD: &str = "
import socket
a, b = socket.socketpair()
while True:
    a.sendall(b'x' * 16384)
    b.recv(16384)
";

/// A load that never lets the ring buffer run dry must not keep sockspy
/// from seeing a signal or a `--duration` deadline.
#[test]
fn stops_under_a_load_that_never_ends() {
    if !have_root("stops_under_a_load_that_never_ends") {
        return;
    }
    let floods: Vec<_> = (0..2)
        .map(|_| {
            Command::new(python3())
                .args(["-c", FLOOD])
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Whole 16 KiB payloads in JSON cost userspace far more than the
    // kernel: the ring never runs dry.
    let trace = Trace::start(&["--unix", "--json", "--data=16384"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let stopped = trace.stop();
    let stop_took = started.elapsed();
    let timed = Trace::start(&["--unix", "--json", "--data=16384", "--duration", "2"])
        .unwrap()
        .finish();
    for mut flood in floods {
        let _ = flood.kill();
        let _ = flood.wait();
    }
    let stopped = stopped.expect("SIGINT under load");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.stderr.contains(" events, "), "{}", stopped.stderr);
    let timed = timed.expect("--duration under load");
    assert!(timed.status.success(), "{}", timed.stderr);
    eprintln!("stopped {stop_took:?} after SIGINT");
}
