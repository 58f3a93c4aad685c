//! The workloads the bench measures, each run as `xtask workload NAME`, a
//! program of its own: so that `strace -f` attaches to a workload as it
//! would to any program, and so that a workload forks from a process with
//! one thread. Throughput workloads time themselves (start-up is not
//! measured) and print one line, `COUNT SECONDS`, the ping-pong `COUNT
//! SECONDS CPU_SECONDS`. The bench's side of
//! them is here too: the command that starts one, reading its result,
//! and driving the holders of many connections.

use std::{
    fmt,
    io::{self, BufRead, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    positive_seconds,
    process::{Fork, Lines, Running, exit, fork, own_cpu, pin, reap, signal},
};
use crate::exec;

/// `xtask workload`: the programs `cargo xtask bench` measures.
#[derive(clap::Subcommand)]
pub enum Workload {
    /// Round trips of SIZE-byte messages over a Unix stream socket pair,
    /// between this process and a forked echo process, for SECONDS; both
    /// on CPU alone when given
    PingPong {
        #[arg(long)]
        size: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// SENDERS processes writing SIZE-byte messages (Redis SET commands)
    /// to Unix stream sockets as fast as they can for SECONDS, each
    /// drained by a reader process of its own; counts the writes
    Flood {
        #[arg(long)]
        senders: usize,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// PAIRS connected Unix socket pairs held by PROCESSES processes, each
    /// pair's ends in two neighbouring processes, until stdin closes. One
    /// byte crosses every pair at the start (`ready` on stdout) and at each
    /// `poke` line on stdin (`poked`).
    Hold {
        #[arg(long)]
        pairs: usize,
        #[arg(long)]
        processes: usize,
    },
}

/// Runs a workload in this process.
pub fn run(workload: Workload) -> Result<()> {
    match workload {
        Workload::PingPong { size, seconds, cpu } => {
            if let Some(cpu) = cpu {
                pin(cpu).with_context(|| format!("ping-pong: cannot run on CPU {cpu} alone"))?;
            }
            println!("{}", ping_pong(size, positive_seconds(seconds)?)?);
            Ok(())
        }
        Workload::Flood {
            senders,
            size,
            seconds,
        } => {
            println!("{}", flood(senders, size, positive_seconds(seconds)?)?);
            Ok(())
        }
        Workload::Hold { pairs, processes } => hold(pairs, processes),
    }
}

/// What a throughput workload did: COUNT things in SECONDS.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counted {
    pub count: u64,
    pub seconds: f64,
    /// CPU time, user and system, the workload's processes spent doing
    /// it, where the workload measures it (the ping-pong does).
    pub cpu: Option<Duration>,
}

impl Counted {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }

    /// CPU seconds per thing done, where measured.
    pub fn cpu_each(&self) -> Option<f64> {
        Some(self.cpu?.as_secs_f64() / self.count as f64)
    }
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:.6}", self.count, self.seconds)?;
        match self.cpu {
            Some(cpu) => write!(f, " {:.6}", cpu.as_secs_f64()),
            None => Ok(()),
        }
    }
}

impl FromStr for Counted {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> Result<Self> {
        let mut fields = line.split(' ');
        let mut next = || fields.next().filter(|field| !field.is_empty());
        let parsed = (|| {
            let counted = Self {
                count: next()?.parse().ok()?,
                seconds: next()?.parse().ok()?,
                cpu: match next() {
                    Some(cpu) => Some(Duration::try_from_secs_f64(cpu.parse().ok()?).ok()?),
                    None => None,
                },
            };
            next().is_none().then_some(counted)
        })();
        match parsed {
            Some(counted) if counted.seconds > 0.0 => Ok(counted),
            _ => bail!("`{line}` is not `COUNT SECONDS [CPU_SECONDS]`"),
        }
    }
}

/// The command that runs `workload` (its arguments as the subcommand
/// takes them) from `xtask`, the bench's own executable, behind `prefix`
/// (`strace -f -o /dev/null`, or nothing).
pub fn command(xtask: &Path, prefix: &[&str], workload: &[String]) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(xtask);
            cmd
        }
        None => Command::new(xtask),
    };
    cmd.arg("workload").args(workload);
    cmd
}

/// Runs a throughput workload to its end and reads its result line; a
/// workload that did nothing is a harness failure.
pub fn counted(cmd: &mut Command) -> Result<Counted> {
    let out = exec::stdout(cmd)?;
    let line = out.lines().last().unwrap_or_default();
    let counted: Counted = line
        .parse()
        .with_context(|| format!("the result of `{}`", exec::describe(cmd)))?;
    ensure!(
        counted.count > 0,
        "`{}` did nothing: {line}",
        exec::describe(cmd)
    );
    Ok(counted)
}

/// Round trips of `size`-byte messages between this process and a forked
/// echo process: two processes, as real peers are (two threads would
/// share an address space and switch more cheaply than real peers do).
/// Their CPU time is the echo's whole life and this process's exchange:
/// time the CPUs sat idle waiting to wake up is in the seconds, not here.
pub fn ping_pong(size: usize, run_for: Duration) -> Result<Counted> {
    let (mut socket, theirs) = UnixStream::pair().context("ping-pong: socketpair")?;
    let mut buf = vec![0x5a; size];
    let echo = match fork()? {
        Fork::Child => {
            drop(socket);
            exit(echo(theirs, &mut buf))
        }
        Fork::Parent(pid) => pid,
    };
    drop(theirs);
    let cpu_before = own_cpu();
    let started = Instant::now();
    let mut round_trips = 0u64;
    let exchanged = loop {
        if started.elapsed() >= run_for {
            break Ok(());
        }
        if let Err(err) = socket
            .write_all(&buf)
            .and_then(|()| socket.read_exact(&mut buf))
        {
            break Err(err).context("ping-pong");
        }
        round_trips += 1;
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu = own_cpu().saturating_sub(cpu_before);
    // Closing our end ends the echo process, whether the exchange worked or not.
    drop(socket);
    let echo_cpu = reap(echo, "the ping-pong's echo process")?;
    exchanged?;
    Ok(Counted {
        count: round_trips,
        seconds,
        cpu: Some(cpu + echo_cpu),
    })
}

/// The echo process's whole life: return every message until the stream ends.
fn echo(mut socket: UnixStream, buf: &mut [u8]) -> i32 {
    loop {
        match socket.read_exact(buf) {
            Ok(()) if socket.write_all(buf).is_ok() => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return 0,
            _ => return 1,
        }
    }
}

/// `senders` writers of `size`-byte messages, each to a socket of its
/// own that a reader process drains in large reads, so that nearly every
/// system call is a small send. Each message is a Redis `SET` command, so
/// that `--decode` has a protocol to follow (nobody answers it). Returns
/// the writes of all senders over their mean running time.
pub fn flood(senders: usize, size: usize, run_for: Duration) -> Result<Counted> {
    ensure!(senders > 0, "flood: no senders");
    let message = redis_set(size)?;
    // Each sender reports its count and seconds, 16 bytes (one atomic pipe write).
    let (mut reports, report) = io::pipe().context("flood: pipe")?;
    let mut drain_buf = vec![0; 1 << 16];
    let mut children = Vec::new();
    for _ in 0..senders {
        let (mut sender, mut reader) = UnixStream::pair().context("flood: socketpair")?;
        match fork()? {
            Fork::Child => {
                drop(sender);
                exit(drain(&mut reader, &mut drain_buf))
            }
            Fork::Parent(pid) => children.push(pid),
        }
        match fork()? {
            Fork::Child => {
                drop(reader);
                exit(send_for(&mut sender, &message, run_for, &report))
            }
            Fork::Parent(pid) => children.push(pid),
        }
    }
    drop(report);
    let mut total = Counted {
        count: 0,
        seconds: 0.0,
        cpu: None,
    };
    let mut record = [0u8; 16];
    let mut received = Ok(());
    for _ in 0..senders {
        if let Err(err) = reports.read_exact(&mut record) {
            received = Err(err).context("flood: a sender did not report");
            break;
        }
        let (count, seconds) = record.split_at(8);
        total.count += u64::from_ne_bytes(count.try_into().expect("8 bytes"));
        total.seconds += f64::from_ne_bytes(seconds.try_into().expect("8 bytes"));
    }
    for pid in children {
        reap(pid, "a flood process")?;
    }
    received?;
    total.seconds /= senders as f64;
    Ok(total)
}

/// A RESP `SET key VALUE` command of exactly `size` bytes.
fn redis_set(size: usize) -> Result<Vec<u8>> {
    const HEAD: &str = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n";
    // The value's length line and its ending take 5 to 8 more bytes.
    for digits in 1..=4 {
        let Some(value) = size.checked_sub(HEAD.len() + digits + 5) else {
            break;
        };
        if value.to_string().len() == digits {
            let mut message = format!("{HEAD}${value}\r\n").into_bytes();
            message.resize(message.len() + value, b'v');
            message.extend_from_slice(b"\r\n");
            return Ok(message);
        }
    }
    anyhow::bail!("flood: no SET command of {size} B (28 to 10,030 B)")
}

/// A flood sender's life: write `message` until `run_for` has passed, then
/// report how many writes it made and in how long.
fn send_for(
    socket: &mut UnixStream,
    message: &[u8],
    run_for: Duration,
    mut report: &io::PipeWriter,
) -> i32 {
    let started = Instant::now();
    let mut sends = 0u64;
    while started.elapsed() < run_for {
        if socket.write_all(message).is_err() {
            return 1;
        }
        sends += 1;
    }
    let mut record = [0u8; 16];
    record[..8].copy_from_slice(&sends.to_ne_bytes());
    record[8..].copy_from_slice(&started.elapsed().as_secs_f64().to_ne_bytes());
    i32::from(report.write_all(&record).is_err())
}

/// A flood reader's life: read until the sender closes its end.
fn drain(socket: &mut UnixStream, buf: &mut [u8]) -> i32 {
    loop {
        match socket.read(buf) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return 1,
        }
    }
}

/// `xtask workload hold`: holds the pairs until stdin closes.
fn hold(pairs: usize, processes: usize) -> Result<()> {
    let mut holders = Holders::start(pairs, processes)?;
    let mut out = io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        match line?.as_str() {
            "poke" => holders.poke()?,
            other => bail!("hold: unknown command `{other}`"),
        }
        writeln!(out, "poked")?;
        out.flush()?;
    }
    holders.stop()
}

/// Connected Unix socket pairs held across processes, as on a busy
/// server: the pairs are cut into one chunk per process, and chunk `i`
/// has one end in process `i` and the other in process `i + 1` (the
/// last chunk's other end is in this process).
pub struct Holders {
    children: Vec<libc::pid_t>,
    /// The other ends of the last chunk.
    last: Vec<UnixStream>,
    /// One byte from each child after each exchange.
    acks: io::PipeReader,
}

impl Holders {
    /// Forks the holders and returns once one byte has crossed every pair.
    pub fn start(pairs: usize, processes: usize) -> Result<Self> {
        ensure!(
            processes > 0 && pairs >= processes,
            "hold: {pairs} pairs cannot be spread over {processes} processes"
        );
        let chunk = |i: usize| pairs / processes + usize::from(i < pairs % processes);
        // This process holds three chunks at a time while it forks.
        raise_descriptor_limit(3 * chunk(0) + 64)?;
        let (acks, ack) = io::pipe().context("hold: pipe")?;
        let parent = std::process::id();
        let mut holders = Self {
            children: Vec::with_capacity(processes),
            last: Vec::new(),
            acks,
        };
        for i in 0..processes {
            let (mine, next): (Vec<UnixStream>, Vec<UnixStream>) = (0..chunk(i))
                .map(|_| UnixStream::pair())
                .collect::<io::Result<Vec<_>>>()
                .context("hold: socketpair")?
                .into_iter()
                .unzip();
            match fork()? {
                Fork::Child => {
                    drop(next);
                    exit(hold_ends(parent, &mine, &holders.last, &ack))
                }
                Fork::Parent(pid) => holders.children.push(pid),
            }
            holders.last = next;
        }
        drop(ack);
        holders.exchanged()?;
        Ok(holders)
    }

    /// Sends one more byte over every pair.
    pub fn poke(&mut self) -> Result<()> {
        for &pid in &self.children {
            signal(pid, libc::SIGUSR1)?;
        }
        self.exchanged()
    }

    /// Waits until every child has sent its bytes and read its neighbour's,
    /// and reads the last chunk's.
    fn exchanged(&mut self) -> Result<()> {
        let mut byte = [0u8; 1];
        for mut socket in &self.last {
            socket
                .read_exact(&mut byte)
                .context("hold: reading a pair")?;
        }
        let mut acks = vec![0u8; self.children.len()];
        self.acks
            .read_exact(&mut acks)
            .context("hold: a holder process failed")
    }

    /// Ends the holders and checks that each exited cleanly.
    pub fn stop(mut self) -> Result<()> {
        let children = std::mem::take(&mut self.children);
        for &pid in &children {
            signal(pid, libc::SIGTERM)?;
        }
        for pid in children {
            reap(pid, "a holder process")?;
        }
        Ok(())
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for &pid in &self.children {
            // Best effort on the way out of an error.
            let _ = signal(pid, libc::SIGKILL);
            let _ = reap(pid, "a holder process");
        }
    }
}

/// A holder process's life: one byte out over each of its own ends, one
/// byte in from each of its neighbour's, an ack; again at each SIGUSR1,
/// until SIGTERM (or its parent's death).
fn hold_ends(
    parent: u32,
    mine: &[UnixStream],
    previous: &[UnixStream],
    mut ack: &io::PipeWriter,
) -> i32 {
    let mut signals = SignalSet::new(&[libc::SIGUSR1, libc::SIGTERM]);
    // SAFETY: prctl and getppid have no memory effects; the signals are
    // blocked so that sigwait takes them instead of their default action.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() as u32 != parent {
            return 1;
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &signals.0, std::ptr::null_mut());
    }
    let mut byte = [0u8; 1];
    loop {
        for mut socket in mine {
            if socket.write_all(b"!").is_err() {
                return 1;
            }
        }
        for mut socket in previous {
            if socket.read_exact(&mut byte).is_err() {
                return 1;
            }
        }
        if ack.write_all(b"+").is_err() {
            return 1;
        }
        match signals.wait() {
            libc::SIGUSR1 => {}
            _ => return 0,
        }
    }
}

struct SignalSet(libc::sigset_t);

impl SignalSet {
    fn new(signals: &[libc::c_int]) -> Self {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: the set is a valid local; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
        }
        Self(set)
    }

    /// Waits for one of the (blocked) signals of the set and returns it.
    fn wait(&mut self) -> libc::c_int {
        let mut signal = 0;
        // SAFETY: both pointers are to valid locals.
        unsafe { libc::sigwait(&self.0, &mut signal) };
        signal
    }
}

/// Lets this process (and the processes it forks) hold `needed`
/// descriptors, raising the hard limit too where that is lower (root may).
fn raise_descriptor_limit(needed: usize) -> Result<()> {
    let needed = needed as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a valid local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == -1 {
            return Err(io::Error::last_os_error()).context("getrlimit");
        }
        if limit.rlim_cur >= needed {
            return Ok(());
        }
        limit.rlim_cur = needed;
        limit.rlim_max = limit.rlim_max.max(needed);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == -1 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("raising the descriptor limit to {needed}"));
        }
    }
    Ok(())
}

/// A running `xtask workload hold`, as the bench drives it.
pub struct HoldProcess {
    process: Running,
    stdin: Option<std::process::ChildStdin>,
    stdout: Lines,
}

/// How long the holders may take to set up their pairs or exchange a byte
/// over each (all of them traced, on a busy machine).
const HOLD_TIMEOUT: Duration = Duration::from_secs(120);

impl HoldProcess {
    /// Starts the holders and returns once every pair has carried a byte.
    pub fn start(xtask: &Path, pairs: usize, processes: usize) -> Result<Self> {
        let args = [
            "hold".to_owned(),
            format!("--pairs={pairs}"),
            format!("--processes={processes}"),
        ];
        let mut process = Running::spawn(
            command(xtask, &[], &args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )?;
        let stdin = process.child().stdin.take();
        let stdout = Lines::new(process.child().stdout.take().context("hold's stdout")?);
        let mut holders = Self {
            process,
            stdin,
            stdout,
        };
        holders
            .stdout
            .wait_for("ready", HOLD_TIMEOUT)
            .with_context(|| format!("`{}`", holders.process.label))?;
        Ok(holders)
    }

    /// Sends one more byte over every pair and waits until all have arrived.
    pub fn poke(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("hold's stdin")?;
        stdin
            .write_all(b"poke\n")
            .and_then(|()| stdin.flush())
            .context("poking the holders")?;
        self.stdout
            .wait_for("poked", HOLD_TIMEOUT)
            .with_context(|| format!("`{}`", self.process.label))
    }

    /// Closes the pairs: the holders end when their stdin does.
    pub fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let ended = self.process.wait(HOLD_TIMEOUT)?;
        ensure!(
            ended.status.success(),
            "`{}` failed ({})",
            self.process.label,
            ended.status
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_result_line() {
        let counted: Counted = "1200 2.000000".parse().expect("a result line");
        assert_eq!(
            counted,
            Counted {
                count: 1200,
                seconds: 2.0,
                cpu: None,
            }
        );
        assert_eq!(counted.per_second(), 600.0);
        assert_eq!(counted.cpu_each(), None);
        assert_eq!(counted.to_string().parse::<Counted>().ok(), Some(counted));
        let timed: Counted = "1200 2.000000 0.024000".parse().expect("with CPU time");
        assert_eq!(timed.cpu, Some(Duration::from_millis(24)));
        assert_eq!(timed.cpu_each(), Some(0.000_02));
        assert_eq!(timed.to_string(), "1200 2.000000 0.024000");
        for wrong in [
            "1200",
            "1200 0",
            "many 2.0",
            "1200 2.0 -1",
            "1200 2.0 0.1 7",
        ] {
            assert!(wrong.parse::<Counted>().is_err(), "{wrong}");
        }
    }

    #[test]
    fn a_workload_command_behind_a_prefix() {
        let cmd = command(
            Path::new("/x/xtask"),
            &["strace", "-f"],
            &["ping-pong".to_owned(), "--size=64".to_owned()],
        );
        assert_eq!(
            exec::describe(&cmd),
            "strace -f /x/xtask workload ping-pong --size=64"
        );
        let cmd = command(Path::new("/x/xtask"), &[], &["hold".to_owned()]);
        assert_eq!(exec::describe(&cmd), "xtask workload hold");
    }

    #[test]
    fn the_ping_pong_moves_data() {
        let counted = ping_pong(256, Duration::from_millis(50)).expect("the ping-pong runs");
        assert!(counted.count > 0, "{counted}");
        let cpu = counted.cpu.expect("the ping-pong times its CPU");
        assert!(
            cpu > Duration::ZERO && cpu.as_secs_f64() < 2.0 * counted.seconds,
            "{counted}"
        );
    }

    #[test]
    fn flood_messages_are_set_commands_of_their_size() {
        for size in [28, 32, 64, 4096, 10_030] {
            let message = redis_set(size).expect("a command");
            assert_eq!(message.len(), size);
            let text = String::from_utf8(message).expect("text");
            let value = text.split("\r\n").nth(6).expect("a value");
            assert_eq!(
                text.split("\r\n").nth(5),
                Some(&*format!("${}", value.len()))
            );
        }
        assert!(redis_set(27).is_err());
        assert!(redis_set(10_031).is_err());
    }

    #[test]
    fn the_flood_counts_every_senders_writes() {
        let counted = flood(2, 64, Duration::from_millis(50)).expect("the flood runs");
        assert!(counted.count > 0, "{counted}");
        assert!(counted.seconds >= 0.05, "{counted}");
    }

    #[test]
    fn the_holders_exchange_over_every_pair_and_stop() {
        let mut holders = Holders::start(10, 3).expect("the holders start");
        assert_eq!(holders.children.len(), 3);
        assert_eq!(holders.last.len(), 3, "the last chunk of 10 over 3");
        holders.poke().expect("a poke crosses every pair");
        holders.stop().expect("the holders stop cleanly");
    }
}
