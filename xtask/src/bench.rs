//! `cargo xtask bench`: what tracing costs a workload, as a ratio of its
//! throughput traced to its throughput untraced, measured in one
//! invocation with traced and untraced runs alternating, so that machine
//! noise hits both alike. Never a timed assertion: `--quick` (run by
//! `cargo xtask test`) only checks that every scenario ran and was seen.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per run
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs of each mode (the table shows their median, min and max)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// One short run per mode: proves the harness works, measures nothing
    #[arg(long)]
    quick: bool,
}

/// How the workload runs: untraced, or under sockspy with these arguments.
struct Mode {
    name: &'static str,
    sockspy: Option<&'static [&'static str]>,
}

const MODES: &[Mode] = &[
    Mode {
        name: "untraced",
        sockspy: None,
    },
    Mode {
        name: "trace --unix",
        sockspy: Some(&["trace", "--unix"]),
    },
    Mode {
        name: "trace --unix --data=256",
        sockspy: Some(&["trace", "--unix", "--data=256"]),
    },
];

/// Message sizes of the Unix ping-pong.
const SIZES: &[usize] = &[64, 4096];

/// One run's outcome.
struct Sample {
    round_trips_per_s: f64,
    events: u64,
    lost: u64,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "bench loads eBPF programs: run it as root"
    );
    let (seconds, rounds) = if options.quick {
        (0.3, 1)
    } else {
        (options.seconds, options.rounds)
    };
    let run_for = Duration::from_secs_f64(seconds);
    let bin = root.join("target/release/sockspy");
    let mut table = String::from(
        "| workload | mode | round trips/s (median) | ratio (median, min-max) | events | lost |\n\
         |---|---|---|---|---|---|\n",
    );
    for &size in SIZES {
        let mut samples: Vec<Vec<Sample>> = MODES.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (mode, runs) in MODES.iter().zip(&mut samples) {
                runs.push(measure(&bin, mode, size, run_for)?);
            }
        }
        let base = median(samples[0].iter().map(|s| s.round_trips_per_s).collect());
        for (mode, runs) in MODES.iter().zip(&samples) {
            check_ran(mode, runs)?;
            let rates: Vec<f64> = runs.iter().map(|s| s.round_trips_per_s).collect();
            let ratios: Vec<f64> = rates.iter().map(|r| r / base).collect();
            let (min, max) = min_max(&ratios);
            table.push_str(&format!(
                "| Unix ping-pong, {size} B | {} | {:.0} | {:.2}x ({:.2}-{:.2}) | {} | {} |\n",
                mode.name,
                median(rates),
                median(ratios),
                min,
                max,
                runs.iter().map(|s| s.events).sum::<u64>(),
                runs.iter().map(|s| s.lost).sum::<u64>(),
            ));
        }
    }
    print!("{table}");
    let path = root.join("target/bench.md");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A harness check, not a performance one: every run moved data, and a
/// tracer that saw none of it would mean the trace was not measured.
fn check_ran(mode: &Mode, runs: &[Sample]) -> Result<()> {
    ensure!(
        runs.iter().all(|s| s.round_trips_per_s > 0.0),
        "{}: the workload made no progress",
        mode.name
    );
    if mode.sockspy.is_some() {
        ensure!(
            runs.iter().all(|s| s.events > 0),
            "{}: sockspy reported no events",
            mode.name
        );
    }
    Ok(())
}

fn measure(bin: &Path, mode: &Mode, size: usize, run_for: Duration) -> Result<Sample> {
    let tracer = match mode.sockspy {
        Some(args) => Some(Tracer::start(bin, args)?),
        None => None,
    };
    let round_trips_per_s = ping_pong(size, run_for)?;
    let (events, lost) = match tracer {
        Some(tracer) => tracer.stop()?,
        None => (0, 0),
    };
    Ok(Sample {
        round_trips_per_s,
        events,
        lost,
    })
}

/// Ping-pong of `size`-byte messages with an echo process over a Unix
/// stream socketpair, for `run_for`; returns round trips per second.
fn ping_pong(size: usize, run_for: Duration) -> Result<f64> {
    let (mut mine, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    // The echo process inherits its end by number.
    // SAFETY: fcntl on a descriptor this function owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        bail!("clearing FD_CLOEXEC: {}", std::io::Error::last_os_error());
    }
    let mut echo = Command::new(std::env::current_exe()?)
        .args(["echo", &fd.to_string(), &size.to_string()])
        .spawn()
        .context("starting the echo process")?;
    drop(theirs);
    let message = vec![0x5a; size];
    let mut reply = vec![0; size];
    let started = Instant::now();
    let mut round_trips = 0u64;
    while started.elapsed() < run_for {
        mine.write_all(&message)?;
        mine.read_exact(&mut reply)?;
        round_trips += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(mine);
    echo.wait()?;
    Ok(round_trips as f64 / elapsed)
}

/// The echo side: returns every message until the other end closes.
pub fn echo(fd: i32, size: usize) -> Result<()> {
    // SAFETY: the parent handed this process the descriptor and nothing else owns it.
    let mut socket = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut buf = vec![0; size];
    loop {
        match socket.read_exact(&mut buf) {
            Ok(()) => socket.write_all(&buf)?,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

/// A running sockspy whose output is thrown away.
struct Tracer {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Tracer {
    /// Starts sockspy and waits until it traces.
    fn start(bin: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut stderr = BufReader::new(child.stderr.take().context("sockspy stderr")?);
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("sockspy exited before tracing ({})", child.wait()?);
            }
            if line.starts_with("sockspy: tracing") {
                return Ok(Self { child, stderr });
            }
        }
    }

    /// Stops sockspy (SIGINT) and returns its event and lost counts.
    fn stop(mut self) -> Result<(u64, u64)> {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest)?;
        let status = self.child.wait()?;
        ensure!(status.success(), "sockspy failed ({status}): {rest}");
        rest.lines()
            .rev()
            .find_map(summary_counts)
            .with_context(|| format!("no summary line from sockspy in {rest:?}"))
    }
}

/// Events and lost records from `sockspy: N events, M lost (...), ...`.
fn summary_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("sockspy: ")?;
    let (events, rest) = rest.split_once(" events, ")?;
    let (lost, _) = rest.split_once(" lost")?;
    Some((events.parse().ok()?, lost.parse().ok()?))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line() {
        assert_eq!(
            summary_counts("sockspy: 1234 events, 5 lost (ring buffer full), 0 read failures"),
            Some((1234, 5))
        );
        assert_eq!(summary_counts("sockspy: tracing unix sockets"), None);
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min_max(&[0.9, 1.1, 1.0]), (0.9, 1.1));
    }
}
