//! A `sockspy trace` running beside a workload: started, waited for until
//! it traces, and stopped with SIGINT as Ctrl-C would, giving back what
//! its summary line counted and what it cost (CPU time, peak memory).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};

use super::process::{Beside, Stopped, placed};

/// How long sockspy may take to load its programs and snapshot /proc.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long sockspy may take to drain its ring buffer and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `sockspy trace` whose output is thrown away (its stdout is
/// /dev/null; `-w FILE` among the arguments records instead).
pub struct Tracer {
    process: Beside,
    /// CPU time spent starting up (reading BTF, the verifier checking
    /// the programs: seconds with payload capture), left out of [`Usage::cpu`].
    start_up: Duration,
}

/// What one sockspy run reported and used; [`Usage::add`] sums runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Events printed or recorded, from the summary line.
    pub events: u64,
    /// Records the kernel could not deliver, from the summary line.
    pub lost: u64,
    /// User and system CPU time from the start of tracing to the exit.
    pub cpu: Duration,
    /// Peak resident memory (VmHWM), bytes.
    pub peak_rss: u64,
}

impl Usage {
    /// Two runs together: counts and time add up, the peak is the larger.
    pub fn add(self, other: Self) -> Self {
        Self {
            events: self.events + other.events,
            lost: self.lost + other.lost,
            cpu: self.cpu + other.cpu,
            peak_rss: self.peak_rss.max(other.peak_rss),
        }
    }

    /// CPU seconds per million events delivered; None when too few events
    /// were delivered for start-up not to dominate.
    pub fn cpu_per_million(&self) -> Option<f64> {
        (self.events >= 100_000).then(|| self.cpu.as_secs_f64() * 1e6 / self.events as f64)
    }
}

impl Tracer {
    /// Starts `sockspy ARGS`, on `cpu` alone when given, and returns once
    /// it says it is tracing.
    pub fn start(sockspy: &Path, args: &[String], cpu: Option<usize>) -> Result<Self> {
        let mut cmd = Command::new(sockspy);
        placed(cmd.args(args), cpu);
        let mut tracer = Self {
            process: Beside::start(&mut cmd, "sockspy: tracing", START_TIMEOUT)?,
            start_up: Duration::ZERO,
        };
        tracer.start_up = tracer.cpu()?;
        Ok(tracer)
    }

    pub fn pid(&self) -> libc::pid_t {
        self.process.pid()
    }

    /// sockspy's CPU time so far, user and system, all threads.
    fn cpu(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.process.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        stat_cpu(&stat, ticks_per_second as f64).with_context(|| format!("cannot parse {path}"))
    }

    /// sockspy's resident memory now and at its peak so far, bytes.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.process.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field =
            |name| status_kib(&status, name).with_context(|| format!("no {name} in {path}"));
        Ok((field("VmRSS")? * 1024, field("VmHWM")? * 1024))
    }

    /// Stops sockspy with SIGINT and returns its counts and costs.
    pub fn stop(self) -> Result<Usage> {
        // Read before the signal: a process that has exited has no memory to show.
        let (_, peak_rss) = self.memory()?;
        let Stopped { ended, said, label } = self.process.interrupt(STOP_TIMEOUT, false)?;
        let (events, lost) = said
            .iter()
            .rev()
            .find_map(|line| summary(line))
            .with_context(|| format!("no summary line from `{label}`: {}", said.join(" / ")))?;
        Ok(Usage {
            events,
            lost,
            cpu: ended.cpu.saturating_sub(self.start_up),
            peak_rss,
        })
    }
}

/// utime + stime of a /proc/PID/stat line, in `ticks_per_second` units.
fn stat_cpu(stat: &str, ticks_per_second: f64) -> Option<Duration> {
    // The command name may hold spaces and parentheses: count from the last `)`.
    let (_, fields) = stat.rsplit_once(") ")?;
    let mut fields = fields.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Duration::try_from_secs_f64((utime + stime) as f64 / ticks_per_second).ok()
}

/// A `NAME:   1234 kB` line of /proc/PID/status, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.trim().strip_suffix(" kB")?.trim().parse().ok()
    })
}

/// Events and lost records from sockspy's summary line, printing
/// (`sockspy: N events, L lost (ring buffer full), ...`) or recording
/// (`sockspy: N events recorded (B bytes, last file F), L lost (ring
/// buffer full), ...`).
fn summary(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("sockspy: ")?;
    let (events, rest) = rest.split_once(" events")?;
    let (before_lost, _) = rest.split_once(" lost (ring buffer full)")?;
    let (_, lost) = before_lost.rsplit_once(' ')?;
    Some((events.parse().ok()?, lost.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line() {
        let line = "sockspy: 1234 events, 5 lost (ring buffer full), 0 read failures";
        assert_eq!(summary(line), Some((1234, 5)));
        let recorded = "sockspy: 99 events recorded (5230 bytes, last file /tmp/a b, c.pcapng), \
                        7 lost (ring buffer full), 0 read failures";
        assert_eq!(summary(recorded), Some((99, 7)));
        assert_eq!(
            summary("sockspy: tracing unix sockets (Ctrl-C to stop)"),
            None
        );
        let stats = "sockspy: stats: 10 records, 0 lost (ring buffer full), 0 read failures";
        assert_eq!(summary(stats), None);
        let split = "sockspy: lost records: 38801 socket events, 0 process events";
        assert_eq!(summary(split), None);
    }

    #[test]
    fn reads_memory_from_proc_status() {
        let status = "Name:\tsockspy\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(23456));
        assert_eq!(status_kib(status, "VmRSS"), Some(20000));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_cpu_time_from_proc_stat() {
        let stat = "4242 (sock spy) S 1 4242 4242 0 -1 4194560 2254 0 0 0 \
                    150 275 0 0 20 0 2 0 123 456 789";
        assert_eq!(stat_cpu(stat, 100.0), Some(Duration::from_millis(4250)));
        assert_eq!(stat_cpu("4242 (sockspy) S 1", 100.0), None);
    }

    #[test]
    fn usage_adds_up_runs() {
        let run = |events, lost, ms, peak_rss| Usage {
            events,
            lost,
            cpu: Duration::from_millis(ms),
            peak_rss,
        };
        let both = run(300_000, 2, 100, 10).add(run(200_000, 3, 50, 30));
        assert_eq!(both, run(500_000, 5, 150, 30));
        let per_million = both.cpu_per_million().expect("enough events");
        assert!((per_million - 0.3).abs() < 1e-9, "{per_million}");
        assert_eq!(run(10, 0, 100, 0).cpu_per_million(), None);
    }
}
