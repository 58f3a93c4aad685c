//! The processes the bench starts: forks inside a workload, and programs
//! (sockspy, the workloads, dd) started as children. None may outlive a
//! failed run, since a forgotten tracer goes on tracing the machine, and
//! none may hang the bench: every wait has a deadline.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::exec;

/// What [`fork`] returned in this process.
pub enum Fork {
    /// This is the new process. It must end with [`exit`], never by
    /// returning into the caller's code (that would run the parent's work
    /// twice).
    Child,
    /// This is the parent of the new process.
    Parent(libc::pid_t),
}

/// Forks this process.
pub fn fork() -> Result<Fork> {
    // SAFETY: fork has no memory effects in the parent. glibc's fork
    // takes the allocator's locks across it, so the child may allocate;
    // the children here touch nothing else that a thread could hold.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// Ends a forked child at once with `code`, running nothing of the
/// parent's (no destructors, no atexit handlers, no buffered output).
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process; nothing after it runs.
    unsafe { libc::_exit(code) }
}

/// Waits for a forked child and fails unless it exited with status 0;
/// gives back the CPU time it used, user and system.
pub fn reap(pid: libc::pid_t, what: &str) -> Result<Duration> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for this process's own child, into locals.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } == -1 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("waiting for {what}"));
    }
    let status = ExitStatus::from_raw(status);
    ensure!(status.success(), "{what} failed ({status})");
    Ok(cpu(&usage))
}

/// The CPU time this process has used so far, user and system.
pub fn own_cpu() -> Duration {
    // SAFETY: rusage is plain data that getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: fills in a local; RUSAGE_SELF cannot be refused.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    cpu(&usage)
}

/// Binds the calling process (and what it forks from now on) to one CPU.
/// Async-signal-safe (one system call), so a `pre_exec` hook may call it.
pub fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET sets one bit of it, and
    // the CPUs pinned to here (0 and 1) are far below its 1024.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    };
    // SAFETY: reads the set from a local.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `cmd`, set to run on `cpu` only, when given.
pub fn placed(cmd: &mut Command, cpu: Option<usize>) -> &mut Command {
    if let Some(cpu) = cpu {
        // SAFETY: pin is async-signal-safe, as a hook between fork and
        // exec must be.
        unsafe { cmd.pre_exec(move || pin(cpu)) };
    }
    cmd
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: libc::pid_t, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sending signal {signal} to process {pid}"));
    }
    Ok(())
}

/// A program the bench started, killed if it is dropped before it was
/// waited for (on the way out of an error).
pub struct Running {
    child: Child,
    /// The command as one would type it, for messages.
    pub label: String,
    reaped: bool,
}

/// How a [`Running`] program ended.
pub struct Ended {
    pub status: ExitStatus,
    /// CPU time the program used, user and system.
    pub cpu: Duration,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let label = exec::describe(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{label}`"))?;
        Ok(Self {
            child,
            label,
            reaped: false,
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        // A pid always fits: the kernel hands out at most 2^22.
        self.child.id() as libc::pid_t
    }

    /// The child's pipes (stdin, stdout, stderr), to take.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `timeout` for the program to end. Waiting with wait4
    /// rather than std's wait gives its CPU time as well.
    pub fn wait(&mut self, timeout: Duration) -> Result<Ended> {
        let deadline = Instant::now() + timeout;
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waits for our own unreaped child, into locals.
            match unsafe { libc::wait4(self.pid(), &mut status, libc::WNOHANG, &mut usage) } {
                -1 => {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("waiting for `{}`", self.label));
                }
                0 => {}
                _ => break,
            }
            ensure!(
                Instant::now() < deadline,
                "`{}` still running {:.0}s after it was asked to stop",
                self.label,
                timeout.as_secs_f64()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reaped = true;
        Ok(Ended {
            status: ExitStatus::from_raw(status),
            cpu: cpu(&usage),
        })
    }
}

/// User and system time of `usage`.
fn cpu(usage: &libc::rusage) -> Duration {
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(time: libc::timeval) -> Duration {
    Duration::new(time.tv_sec.max(0) as u64, 0) + Duration::from_micros(time.tv_usec.max(0) as u64)
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            // Best effort on the way out of an error: nothing to report to.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A program run beside a workload (a tracer, a counter) until told to
/// stop: its stderr is read line by line, its other streams go nowhere.
pub struct Beside {
    process: Running,
    stderr: Lines,
}

/// How a [`Beside`] program ended, with everything it said on stderr.
pub struct Stopped {
    pub ended: Ended,
    pub said: Vec<String>,
    pub label: String,
}

impl Beside {
    /// Starts `cmd` and returns once a line of its stderr starts with `ready`.
    pub fn start(cmd: &mut Command, ready: &str, timeout: Duration) -> Result<Self> {
        let mut process = Running::spawn(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let pipe = process.child().stderr.take();
        let mut stderr = Lines::new(pipe.with_context(|| format!("`{}`'s stderr", process.label))?);
        stderr
            .wait_for(ready, timeout)
            .with_context(|| format!("`{}`", process.label))?;
        Ok(Self { process, stderr })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.process.pid()
    }

    /// Stops the program with SIGINT, as Ctrl-C would, and waits up to
    /// `timeout` for it to end. It must exit with success, or, where
    /// `dies_of_sigint`, may die of the signal.
    pub fn interrupt(mut self, timeout: Duration, dies_of_sigint: bool) -> Result<Stopped> {
        signal(self.process.pid(), libc::SIGINT)?;
        let ended = self.process.wait(timeout)?;
        // The reader thread ends at the pipe's end, which the exit is.
        let said = self.stderr.finish();
        let label = self.process.label.clone();
        let by_sigint = dies_of_sigint && ended.status.signal() == Some(libc::SIGINT);
        ensure!(
            ended.status.success() || by_sigint,
            "`{label}` failed ({}): {}",
            ended.status,
            said.join(" / ")
        );
        Ok(Stopped { ended, said, label })
    }
}

/// A child's output, read line by line by a thread of its own, so that a
/// chatty child never blocks on a full pipe and waiting for a line can
/// time out.
pub struct Lines {
    lines: Receiver<String>,
    /// Every line received so far, for messages.
    seen: Vec<String>,
}

impl Lines {
    pub fn new(pipe: impl Read + Send + 'static) -> Self {
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `timeout` for a line that starts with `prefix`, after
    /// any indentation.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.trim_start().starts_with(prefix);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "did not say `{prefix}` within {:.0}s: {}",
                    timeout.as_secs_f64(),
                    self.said()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("ended without saying `{prefix}`: {}", self.said())
                }
            }
        }
    }

    /// Every line up to the end of the output; call it once the child
    /// has ended.
    pub fn finish(mut self) -> Vec<String> {
        self.seen.extend(self.lines.iter());
        self.seen
    }

    /// What the child said so far, on one line.
    pub fn said(&self) -> String {
        self.seen.join(" / ")
    }
}
