//! `cargo xtask bench`: what tracing costs a workload, as the workload's
//! throughput traced divided by its throughput untraced. Both are measured
//! in the same invocation, the modes taking turns round by round, because
//! these machines are shared and noisy: only ratios measured side by side
//! mean anything. It is never part of `cargo xtask test` and asserts
//! nothing about time; it fails only when the harness itself did not work.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

/// What `cargo xtask bench` measures, and for how long.
#[derive(clap::Args)]
pub struct Options {
    /// Seconds each run of the workload lasts
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs of each mode; the table shows their medians
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bytes in each message of the ping-pong
    #[arg(long, default_value_t = 256)]
    size: usize,
}

/// The sockspy arguments of each mode; none is the untraced baseline,
/// which comes first in every round. Metadata only, payload capture (the
/// copy the kernel makes), and JSON output (userspace formatting) each add
/// a cost of their own; the last mode traces only pid 1, so the workload is
/// excluded by the kernel-side filter and pays only for the hooks' checks.
const MODES: &[&[&str]] = &[
    &[],
    &["trace", "--unix"],
    &["trace", "--unix", "--data=256"],
    &["trace", "--unix", "--json", "--data=256"],
    EXCLUDED,
];

/// The mode whose filter leaves the workload out.
const EXCLUDED: &[&str] = &["trace", "--unix", "--pid", "1"];

/// How long sockspy may take to load its programs and snapshot /proc.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long sockspy may take to drain its ring buffer and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One run of the workload in one mode.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    round_trips_per_s: f64,
    /// sockspy's own counts from its summary line (0 when untraced).
    events: u64,
    lost: u64,
}

/// Measures every mode `options.rounds` times, prints the table and
/// writes it, as markdown a note can quote, to `report`.
pub fn run(sockspy: &Path, report: &Path, options: &Options) -> Result<()> {
    ensure!(
        options.seconds > 0.0 && options.rounds > 0 && options.size > 0,
        "--seconds, --rounds and --size must be positive"
    );
    let run_for = Duration::from_secs_f64(options.seconds);
    let mut samples: Vec<Vec<Sample>> = MODES.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        eprintln!("xtask bench: round {round} of {}", options.rounds);
        for (args, runs) in MODES.iter().zip(&mut samples) {
            runs.push(measure(sockspy, args, options.size, run_for)?);
        }
    }
    let text = format!("{}\n\n{}", caption(options), table(&samples));
    print!("{text}");
    std::fs::write(report, &text).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("xtask bench: table written to {}", report.display());
    Ok(())
}

/// A mode as the table names it.
fn label(args: &[&str]) -> String {
    if args.is_empty() {
        "untraced".to_owned()
    } else {
        format!("sockspy {}", args.join(" "))
    }
}

fn measure(sockspy: &Path, args: &[&str], size: usize, run_for: Duration) -> Result<Sample> {
    if args.is_empty() {
        return Ok(Sample {
            round_trips_per_s: ping_pong(size, run_for)?,
            events: 0,
            lost: 0,
        });
    }
    let tracer = Tracer::start(sockspy, args)?;
    let round_trips_per_s = ping_pong(size, run_for)?;
    let (events, lost) = tracer.stop()?;
    // The ping-pong alone makes four events a round trip: none at all means
    // the numbers measured nothing; under the excluding filter, any number
    // near that means the filter did not exclude it.
    let round_trips = round_trips_per_s * run_for.as_secs_f64();
    if args == EXCLUDED {
        ensure!(
            (events as f64) < round_trips / 10.0,
            "`{}` printed {events} events: the filter let the workload through",
            label(args)
        );
    } else {
        ensure!(
            events > 0,
            "`{}` reported no events: the workload was not traced",
            label(args)
        );
    }
    Ok(Sample {
        round_trips_per_s,
        events,
        lost,
    })
}

/// Round trips per second of `size`-byte messages over a Unix stream
/// socket pair, between this process and a forked echo process: two
/// processes, as real peers are (two threads would share an address space
/// and switch more cheaply than real peers do).
fn ping_pong(size: usize, run_for: Duration) -> Result<f64> {
    let (socket, echo) = fork_echo(size)?;
    let rate = exchange(socket, size, run_for);
    // `exchange` has closed our end, so the echo process sees the end of
    // the stream and exits, whether the exchange worked or not.
    echo.wait()?;
    rate
}

/// Sends and receives until `run_for` has passed; closes `socket` on return.
fn exchange(mut socket: UnixStream, size: usize, run_for: Duration) -> Result<f64> {
    let message = vec![0x5a; size];
    let mut reply = vec![0; size];
    let started = Instant::now();
    let mut round_trips = 0u64;
    while started.elapsed() < run_for {
        socket.write_all(&message).context("ping-pong: write")?;
        socket.read_exact(&mut reply).context("ping-pong: read")?;
        round_trips += 1;
    }
    Ok(round_trips as f64 / started.elapsed().as_secs_f64())
}

/// The forked echo process of the ping-pong.
struct Echo {
    pid: libc::pid_t,
}

/// Forks the echo process; returns this process's end of the socket pair.
fn fork_echo(size: usize) -> Result<(UnixStream, Echo)> {
    let (mine, theirs) = UnixStream::pair().context("ping-pong: socketpair")?;
    // Allocated before the fork: the child must not allocate, since a
    // thread of the parent (the tracer's stderr reader) may hold the
    // allocator's lock at the moment of the fork.
    let mut buf = vec![0u8; size];
    // SAFETY: the child only closes a descriptor, reads and writes its
    // socket into a buffer it already has, and leaves with `_exit`; it
    // takes no lock and never returns into the parent's code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("ping-pong: fork"),
        0 => {
            drop(mine);
            echo(theirs, &mut buf)
        }
        pid => Ok((mine, Echo { pid })),
    }
}

/// The child's whole life: return every message until the stream ends.
fn echo(mut socket: UnixStream, buf: &mut [u8]) -> ! {
    let code = loop {
        match socket.read_exact(buf) {
            Ok(()) if socket.write_all(buf).is_ok() => continue,
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => break 0,
            _ => break 1,
        }
    };
    // SAFETY: _exit ends the process at once; the child has nothing to
    // flush or drop that belongs to it.
    unsafe { libc::_exit(code) }
}

impl Echo {
    fn wait(self) -> Result<()> {
        let mut status = 0;
        // SAFETY: waits for this process's own child, into a local.
        if unsafe { libc::waitpid(self.pid, &mut status, 0) } == -1 {
            return Err(std::io::Error::last_os_error()).context("ping-pong: waitpid");
        }
        ensure!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "ping-pong: the echo process failed (wait status {status})"
        );
        Ok(())
    }
}

/// A running `sockspy trace` whose output is thrown away. Its stderr is
/// read by a thread all along, so a chatty sockspy never blocks on a full
/// pipe, and so waiting for its lines can time out.
struct Tracer {
    child: Child,
    label: String,
    stderr: Receiver<String>,
}

impl Tracer {
    /// Starts sockspy and returns once it says it is tracing.
    fn start(sockspy: &Path, args: &[&str]) -> Result<Self> {
        let label = label(args);
        let mut child = Command::new(sockspy)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", sockspy.display()))?;
        let pipe = child.stderr.take().context("sockspy's stderr")?;
        let (lines, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let tracer = Self {
            child,
            label,
            stderr,
        };
        tracer.wait_until_tracing()?;
        Ok(tracer)
    }

    fn wait_until_tracing(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.starts_with("sockspy: tracing") => return Ok(()),
                Ok(line) => said.push(line),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "`{}` did not start tracing within {}s: {}",
                    self.label,
                    START_TIMEOUT.as_secs(),
                    said.join(" / ")
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "`{}` exited before tracing: {}",
                        self.label,
                        said.join(" / ")
                    )
                }
            }
        }
    }

    /// Stops sockspy with SIGINT, as Ctrl-C would, and returns the events
    /// and lost records of its summary line.
    fn stop(mut self) -> Result<(u64, u64)> {
        let pid = libc::pid_t::try_from(self.child.id()).context("sockspy's pid")?;
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        if unsafe { libc::kill(pid, libc::SIGINT) } == -1 {
            return Err(std::io::Error::last_os_error()).context("sending SIGINT to sockspy");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for sockspy")? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "`{}` still running {}s after SIGINT",
                self.label,
                STOP_TIMEOUT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at the pipe's end, which sockspy's exit is.
        let said: Vec<String> = self.stderr.iter().collect();
        ensure!(
            status.success(),
            "`{}` failed ({status}): {}",
            self.label,
            said.join(" / ")
        );
        said.iter()
            .rev()
            .find_map(|line| summary(line))
            .with_context(|| {
                format!(
                    "no summary line from `{}`: {}",
                    self.label,
                    said.join(" / ")
                )
            })
    }
}

impl Drop for Tracer {
    /// A tracer left running by an error would go on tracing the machine.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Best effort on the way out of an error: nothing to report to.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Events and lost records from sockspy's last line,
/// `sockspy: N events, N lost (ring buffer full), N read failures`.
fn summary(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("sockspy: ")?;
    let (events, rest) = rest.split_once(" events, ")?;
    let (lost, _) = rest.split_once(" lost ")?;
    Some((events.parse().ok()?, lost.parse().ok()?))
}

fn caption(options: &Options) -> String {
    format!(
        "Unix stream ping-pong between two processes, {} B messages, {} runs of {} s \
         per mode, modes taking turns. Medians; a ratio is a run's throughput over \
         the untraced run of the same round (range in brackets). sockspy traces the \
         whole machine: events and lost are totals over a mode's runs.",
        options.size, options.rounds, options.seconds
    )
}

/// The markdown table: one row per mode, in [`MODES`] order.
fn table(samples: &[Vec<Sample>]) -> String {
    let mut text = String::from(
        "| mode | round trips/s | vs untraced | events | lost |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let baseline = &samples[0];
    for (args, runs) in MODES.iter().zip(samples) {
        let ratios: Vec<f64> = runs
            .iter()
            .zip(baseline)
            .map(|(run, base)| run.round_trips_per_s / base.round_trips_per_s)
            .collect();
        let (events, lost) = if args.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                runs.iter().map(|run| run.events).sum::<u64>().to_string(),
                runs.iter().map(|run| run.lost).sum::<u64>().to_string(),
            )
        };
        text.push_str(&format!(
            "| {} | {:.0} | {} | {events} | {lost} |\n",
            label(args),
            median(runs.iter().map(|run| run.round_trips_per_s)),
            ratio_cell(&ratios),
        ));
    }
    text
}

/// `0.62x (0.60-0.65)`: the median ratio and, when the runs differ, their range.
fn ratio_cell(ratios: &[f64]) -> String {
    let median = median(ratios.iter().copied());
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if min == max {
        format!("{median:.2}x")
    } else {
        format!("{median:.2}x ({min:.2}-{max:.2})")
    }
}

/// The median (NaN when there is nothing to take it of).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round_trips_per_s: f64, events: u64, lost: u64) -> Sample {
        Sample {
            round_trips_per_s,
            events,
            lost,
        }
    }

    #[test]
    fn reads_the_summary_line() {
        let line = "sockspy: 1234 events, 5 lost (ring buffer full), 0 read failures";
        assert_eq!(summary(line), Some((1234, 5)));
        assert_eq!(
            summary("sockspy: tracing unix sockets (Ctrl-C to stop)"),
            None
        );
        let stats = "sockspy: stats: 10 records, 0 lost (ring buffer full), 0 read failures";
        assert_eq!(summary(stats), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn ratio_cells() {
        assert_eq!(ratio_cell(&[0.6234]), "0.62x");
        assert_eq!(ratio_cell(&[0.65, 0.6, 0.62]), "0.62x (0.60-0.65)");
    }

    #[test]
    fn a_table_row_per_mode_against_the_same_rounds_baseline() {
        let samples = vec![
            vec![sample(100_000.0, 0, 0), sample(80_000.0, 0, 0)],
            vec![sample(50_000.0, 10, 0), sample(56_000.0, 20, 1)],
            vec![sample(40_000.0, 10, 0), sample(48_000.0, 10, 0)],
            vec![sample(20_000.0, 10, 2), sample(16_000.0, 10, 3)],
        ];
        let rows: Vec<String> = table(&samples).lines().skip(2).map(str::to_owned).collect();
        assert_eq!(
            rows,
            [
                "| untraced | 90000 | 1.00x | - | - |",
                "| sockspy trace --unix | 53000 | 0.60x (0.50-0.70) | 30 | 1 |",
                "| sockspy trace --unix --data=256 | 44000 | 0.50x (0.40-0.60) | 20 | 0 |",
                "| sockspy trace --unix --json --data=256 | 18000 | 0.20x | 20 | 5 |",
            ]
        );
    }

    #[test]
    fn the_ping_pong_moves_data() {
        let rate = ping_pong(256, Duration::from_millis(50)).expect("the ping-pong runs");
        assert!(rate > 0.0, "{rate} round trips/s");
    }
}
