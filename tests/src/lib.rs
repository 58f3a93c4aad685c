//! Harness for the root integration tests.
//!
//! Each test starts the real `sockspy` binary (built by `cargo xtask test`,
//! found through `SOCKSPY_BIN`), waits for its readiness line, drives real
//! programs, stops it as an operator would (SIGINT) and asserts on what it
//! printed. sockspy sees the whole machine, so tests pick their own events
//! out by the pids of the programs they started.
//!
//! Traces run one at a time within a test binary: the machine has two
//! cores, and a tracer competing with another for them would make
//! timing-dependent waits flaky.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// How long sockspy may take to load its programs and announce itself.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long sockspy may take to stop after SIGINT: a bound on a hang, not
/// a measure of speed. Detaching waits for the kernel's RCU grace periods
/// one program after the other, about 1 s here when idle and 2.4 s with
/// three first_contact loads running; a virtual CPU that its host does
/// not run stretches each one.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

static ONE_TRACE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The sockspy binary under test.
pub fn sockspy_bin() -> PathBuf {
    match std::env::var_os("SOCKSPY_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sockspy"),
    }
}

/// Takes this test binary's turn to trace, for a test that runs sockspy
/// its own way (under a terminal, say).
pub fn one_trace_at_a_time() -> MutexGuard<'static, ()> {
    ONE_TRACE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether tests that need root may run. Without root they skip, saying
/// why, unless `SOCKSPY_REQUIRE_ROOT` is set (as in CI), where a skip would
/// hide a broken set-up and so fails instead.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let binary = sockspy_bin();
    let reason = if !root {
        "needs root (loads eBPF programs)".to_owned()
    } else if !binary.exists() {
        format!(
            "{} is not built (cargo xtask test builds it)",
            binary.display()
        )
    } else {
        return true;
    };
    skip(test, &reason)
}

/// Skips `test`, saying why (`reason`): returns false, for a test to
/// return on. Where `SOCKSPY_REQUIRE_ROOT` is set (as in CI), a skip would
/// hide a broken set-up, so it fails instead.
pub fn skip(test: &str, reason: &str) -> bool {
    if std::env::var_os("SOCKSPY_REQUIRE_ROOT").is_some() {
        panic!("{test}: {reason}, and SOCKSPY_REQUIRE_ROOT is set");
    }
    eprintln!("skipped {test}: {reason}");
    false
}

/// How many records the kernel passed to a trace, from its summary.
pub fn kernel_records(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|line| line.strip_suffix(" records from the kernel"))
        .and_then(|line| line.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no kernel record count in: {stderr}"))
}

/// Whether the backend under test sees a receive that was already
/// blocked when tracing started. The tracepoints fire after the call
/// returns, so they do; fentry's trampoline and a kretprobe only catch
/// returns of calls that entered through them, so they miss it
/// (docs/kernels.md). The backend is `SOCKSPY_BACKEND`'s, which sockspy
/// takes as its `--backend` default (`cargo xtask vm-test` sets it).
pub fn sees_receives_in_flight() -> bool {
    !matches!(
        std::env::var("SOCKSPY_BACKEND").as_deref(),
        Ok("fentry" | "kprobe")
    )
}

/// Whether `program` can be found on PATH.
pub fn have_program(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What a finished sockspy run left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Finished {
    /// stdout parsed as JSON Lines.
    pub fn events(&self) -> Vec<Value> {
        parse_events(&self.stdout)
    }
}

fn parse_events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("bad JSON line {line:?}: {err}"))
        })
        .collect()
}

/// A running `sockspy trace`.
pub struct Trace {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    /// Taken by [`Trace::finish`]; a trace dropped with them still there
    /// (a test that panicked) kills its sockspy.
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
    /// The turn of this test binary; `None` for a second trace of a test
    /// that already holds it.
    _turn: Option<MutexGuard<'static, ()>>,
}

impl Trace {
    /// Starts `sockspy trace ARGS` and returns once it says it is tracing.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::spawn("trace", args, Some(one_trace_at_a_time()))
    }

    /// Starts `sockspy top ARGS` (batch mode: it says it is tracing as
    /// `trace` does) and returns once it says so.
    pub fn top(args: &[&str]) -> Result<Self> {
        Self::spawn("top", args, Some(one_trace_at_a_time()))
    }

    /// Starts a second `sockspy trace ARGS` beside this one.
    pub fn also(&self, args: &[&str]) -> Result<Self> {
        Self::spawn("trace", args, None)
    }

    fn spawn(command: &str, args: &[&str], turn: Option<MutexGuard<'static, ()>>) -> Result<Self> {
        let mut child = Command::new(sockspy_bin())
            .arg(command)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sockspy")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stdout);
        let out = child.stdout.take().context("sockspy stdout")?;
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let mut err = BufReader::new(child.stderr.take().context("sockspy stderr")?);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr_reader = thread::spawn(move || {
            let mut seen = String::new();
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with("sockspy: tracing") {
                    let _ = ready_tx.send(());
                }
                seen.push_str(&line);
                line.clear();
            }
            seen
        });
        let mut trace = Trace {
            child,
            stdout,
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
            _turn: turn,
        };
        if ready_rx.recv_timeout(READY_TIMEOUT).is_err() {
            let _ = trace.child.kill();
            let finished = trace.finish()?;
            bail!(
                "sockspy did not start tracing ({}); stderr:\n{}",
                finished.status,
                finished.stderr
            );
        }
        Ok(trace)
    }

    /// sockspy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JSON events printed so far.
    pub fn events_so_far(&self) -> Vec<Value> {
        parse_events(&self.stdout.lock().unwrap())
    }

    /// Waits until `done` holds for the events printed so far, or `timeout`.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.events_so_far()) {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Stops sockspy with SIGINT, as Ctrl-C would, and collects its output.
    pub fn stop(self) -> Result<Finished> {
        // Events still in flight reach the ring buffer within its poll period.
        thread::sleep(Duration::from_millis(300));
        signal(self.child.id(), libc::SIGINT);
        self.finish()
    }

    /// Waits for sockspy to exit on its own (`--count`, `--duration`).
    pub fn finish(mut self) -> Result<Finished> {
        let (status, stuck) = match exited_within(&mut self.child, STOP_TIMEOUT)? {
            Some(status) => (status, None),
            None => {
                let stuck = where_stuck(self.child.id());
                let _ = self.child.kill();
                (self.child.wait()?, Some(stuck))
            }
        };
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
        let stderr = self
            .stderr_reader
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        if let Some(stuck) = stuck {
            bail!("sockspy did not exit within {STOP_TIMEOUT:?}; its stderr:\n{stderr}\n{stuck}");
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        Ok(Finished {
            status,
            stdout,
            stderr,
        })
    }
}

/// A trace left running by a test that failed would go on tracing the
/// whole machine, slowing every later test and bench.
impl Drop for Trace {
    fn drop(&mut self) {
        if self.stderr_reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}

/// The Python interpreter itself. `python3` on PATH may be a wrapper
/// script (pyenv's shim is bash, which connects to nscd's socket before it
/// execs the interpreter); tests that pick events by pid must see only the
/// programs they wrote.
pub fn python3() -> &'static str {
    static INTERPRETER: OnceLock<String> = OnceLock::new();
    INTERPRETER.get_or_init(|| {
        let output = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("running python3");
        let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success() && !path.is_empty(),
            "python3 did not say where its interpreter is"
        );
        path
    })
}

/// Runs a Python script with arguments, returning its stdout; fails on a
/// non-zero exit.
pub fn python(script: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(python3())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running python3")?;
    if !output.status.success() {
        bail!(
            "python script failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a Python `script` under `sockspy trace ARGS --json` (the args
/// must include `--json`) and returns the events printed and the JSON
/// object the script printed last (its pid and descriptors).
pub fn traced_script(trace_args: &[&str], script: &str, args: &[&str]) -> (Vec<Value>, Value) {
    let trace = Trace::start(trace_args).unwrap();
    let out = python(script, args).unwrap();
    let events = trace.stop().unwrap().events();
    let facts = serde_json::from_str(out.trim()).unwrap_or_else(|err| {
        panic!("the script printed no JSON ({err}): {out}");
    });
    (events, facts)
}

/// A directory of one test for its socket, removed when dropped.
pub struct SocketDir {
    dir: PathBuf,
    sock: PathBuf,
}

impl SocketDir {
    /// The socket's path in the directory.
    pub fn path(&self) -> &str {
        self.sock.to_str().expect("temp paths are UTF-8")
    }
}

/// The directory itself, for a test's other files.
impl std::ops::Deref for SocketDir {
    type Target = std::path::Path;

    fn deref(&self) -> &Self::Target {
        &self.dir
    }
}

impl AsRef<std::path::Path> for SocketDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for a socket of this test, in a directory only it uses.
pub fn socket_dir(test: &str) -> SocketDir {
    let dir = std::env::temp_dir().join(format!("sockspy-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a socket directory");
    let sock = dir.join("sock");
    SocketDir { dir, sock }
}

/// Events of process `pid`.
pub fn by_pid(events: &[Value], pid: u64) -> Vec<&Value> {
    events.iter().filter(|ev| ev["pid"] == pid).collect()
}

/// The first event of `pid` named `event`, with a readable failure.
pub fn find<'a>(events: &'a [Value], pid: u64, event: &str) -> &'a Value {
    events
        .iter()
        .find(|ev| ev["pid"] == pid && ev["event"] == event)
        .unwrap_or_else(|| {
            let mine: Vec<String> = by_pid(events, pid).iter().map(|e| e.to_string()).collect();
            panic!(
                "no {event} event of pid {pid}; its events:\n{}",
                mine.join("\n")
            )
        })
}

/// The first event of `pid` named `event` moving `bytes` bytes.
pub fn find_data<'a>(events: &'a [Value], pid: u64, event: &str, bytes: u64) -> &'a Value {
    events
        .iter()
        .find(|ev| ev["pid"] == pid && ev["event"] == event && ev["bytes"] == bytes)
        .unwrap_or_else(|| {
            let mine: Vec<String> = by_pid(events, pid).iter().map(|e| e.to_string()).collect();
            panic!(
                "no {event} of {bytes} bytes by pid {pid}; its events:\n{}",
                mine.join("\n")
            )
        })
}

/// redis-server answering on a Unix socket only, keeping nothing on disk;
/// stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub pid: u32,
}

impl RedisServer {
    /// Starts redis-server at socket `path` (its directory holds nothing
    /// else of another test) and waits for the socket; `None`, with the
    /// reason said, when redis-server is not installed and this is not
    /// CI, where a missing program fails the test.
    pub fn start(test: &str, path: &str) -> Option<Self> {
        if !have_program("redis-server") {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is missing (cargo xtask setup installs it)"
            );
            eprintln!("skipped {test}: redis-server is not installed");
            return None;
        }
        let dir = std::path::Path::new(path)
            .parent()
            .expect("a socket in a directory");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket", path])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        for _ in 0..100 {
            if std::path::Path::new(path).exists() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id();
        Some(Self { child, pid })
    }

    /// Runs `redis-cli` on the server at `path` with `args`, which must succeed.
    pub fn cli(path: &str, args: &[&str]) {
        let out = Command::new("redis-cli")
            .args(["-s", path])
            .args(args)
            .output()
            .expect("running redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// collectd writing to rrdcached over a Unix socket, configured as in the
/// field; both are stopped when this is dropped.
pub struct Collectd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub rrdcached_pid: u64,
    pub collectd: Child,
}

impl Collectd {
    /// Starts rrdcached (which daemonizes and writes a pid file), then
    /// collectd in the foreground.
    pub fn start(test: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("sockspy-collectd-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rrd"))?;
        std::fs::create_dir_all(dir.join("journal"))?;
        let socket = dir.join("rrdcached.sock");
        let pid_file = dir.join("rrdcached.pid");
        let status = Command::new("rrdcached")
            .arg("-l")
            .arg(format!("unix:{}", socket.display()))
            .arg("-b")
            .arg(dir.join("rrd"))
            .arg("-B")
            .arg("-j")
            .arg(dir.join("journal"))
            .arg("-p")
            .arg(&pid_file)
            .args(["-w", "5", "-z", "1", "-F"])
            .status()
            .context("starting rrdcached")?;
        if !status.success() {
            bail!("rrdcached failed to start: {status}");
        }
        let rrdcached_pid = wait_for_pid_file(&pid_file)?;
        let conf = dir.join("collectd.conf");
        std::fs::write(
            &conf,
            format!(
                "Interval 1\nFQDNLookup false\nHostname \"testhost\"\nBaseDir \"{dir}\"\n\
                 PIDFile \"{dir}/collectd.pid\"\nLoadPlugin load\nLoadPlugin memory\n\
                 LoadPlugin rrdcached\n<Plugin rrdcached>\n  DaemonAddress \"unix:{socket}\"\n  \
                 DataDir \"{dir}/rrd\"\n  CreateFiles true\n</Plugin>\n",
                dir = dir.display(),
                socket = socket.display()
            ),
        )?;
        let collectd = Command::new("collectd")
            .arg("-f")
            .arg("-C")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting collectd")?;
        Ok(Collectd {
            dir,
            socket,
            rrdcached_pid,
            collectd,
        })
    }

    pub fn collectd_pid(&self) -> u64 {
        u64::from(self.collectd.id())
    }
}

impl Drop for Collectd {
    /// Stops collectd as its service manager would (SIGTERM), so that an
    /// update it sent has its answer read before it exits; killed only if
    /// it takes longer than ten seconds.
    fn drop(&mut self) {
        signal(self.collectd.id(), libc::SIGTERM);
        let _ = exited_within(&mut self.collectd, Duration::from_secs(10));
        let _ = self.collectd.kill();
        let _ = self.collectd.wait();
        signal(self.rrdcached_pid as u32, libc::SIGTERM);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_pid_file(path: &std::path::Path) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("{} did not appear", path.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// How `child` exited, if it did within `timeout`.
fn exited_within(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Where process `pid` is stuck, for a test's failure message: each
/// thread's state and kernel stack, and its own stacks as gdb sees them.
fn where_stuck(pid: u32) -> String {
    let mut said = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        let dir = task.path();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        said.push_str(&format!(
            "thread {}: {} wchan {}\n{}",
            task.file_name().to_string_lossy(),
            read("stat").trim(),
            read("wchan"),
            read("stack")
        ));
    }
    if have_program("gdb") {
        let gdb = Command::new("gdb")
            .args([
                "-batch",
                "-p",
                &pid.to_string(),
                "-ex",
                "thread apply all bt",
            ])
            .stdin(Stdio::null())
            .output();
        if let Ok(gdb) = gdb {
            said.push_str(&String::from_utf8_lossy(&gdb.stdout));
        }
    }
    said
}

/// Runs `sockspy ARGS` to the end.
pub fn run_sockspy(args: &[&str]) -> Output {
    Command::new(sockspy_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running sockspy")
}

/// What `sockspy check` printed; it must have succeeded.
pub fn check_report() -> String {
    let output = run_sockspy(&["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "sockspy check failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts a Python script with piped stdin and stdout.
pub fn spawn_python(script: &str, args: &[&str]) -> Child {
    Command::new(python3())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting python3")
}

/// The numbers on the next line `child` prints.
pub fn first_line(child: &mut Child) -> Vec<u64> {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("a piped stdout"))
        .read_line(&mut line)
        .expect("reading a child's line");
    line.split_whitespace()
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"))
        })
        .collect()
}

/// Waits for `child`, which must succeed.
pub fn wait_ok(child: &mut Child) {
    let status = child.wait().expect("waiting for a child");
    assert!(status.success(), "child failed: {status}");
}

/// The captured payload of an event (`--data`), decoded from base64.
pub fn payload(ev: &Value) -> Vec<u8> {
    use base64::Engine as _;
    let text = ev["data"]
        .as_str()
        .unwrap_or_else(|| panic!("no data in {ev}"));
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|err| panic!("bad base64 in {ev}: {err}"))
}
