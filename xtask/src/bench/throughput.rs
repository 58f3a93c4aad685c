//! Throughput scenarios: a workload run untraced and then in each mode
//! (under sockspy, strace, or perf counting the tracepoints), round after
//! round, each mode's ratio taken against the untraced run of its own
//! round. Besides its rate, a ping-pong gives its own CPU time per round
//! trip, and a sockspy mode the kernel's time per run of each of its
//! programs (bpf_stats), where the bench turned bpf_stats on.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use super::{
    Programs,
    bpf_stats::{self, ProgramRuns},
    floor::Counter,
    process::{Running, placed, signal},
    report::{Check, Row, median, rate},
    tracer::{Tracer, Usage},
    workload::{self, Counted},
};

/// A workload and the modes it is run in besides untraced.
pub struct Scenario {
    name: String,
    workload: Workload,
    modes: Vec<Mode>,
}

enum Workload {
    /// `xtask workload ping-pong` with messages of this many bytes.
    PingPong { size: usize, placement: Placement },
    /// `dd if=/dev/zero of=/dev/null bs=1`: system calls, no socket.
    Dd,
}

/// Where a ping-pong and its tracer run. On a machine of two CPUs an idle
/// CPU's wake-up dominates a small round trip, and a tracer that keeps the
/// other CPU busy can make a traced run look faster than the untraced one:
/// pinned, both ping-pong processes share one CPU (a round trip is two
/// context switches there, no wake-up of an idle CPU) and the tracer has
/// the other to itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    /// The ping-pong on [`WORKLOAD_CPU`], the tracer on [`TRACER_CPU`].
    Pinned,
    /// Wherever the scheduler puts them.
    Unpinned,
}

/// The CPU of a pinned ping-pong's two processes.
const WORKLOAD_CPU: usize = 0;

/// The CPU of a pinned ping-pong's tracer (sockspy, strace or perf).
const TRACER_CPU: usize = 1;

impl Placement {
    /// The placements this machine allows: pinned needs two CPUs.
    pub fn available() -> Vec<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus > TRACER_CPU {
            vec![Self::Pinned, Self::Unpinned]
        } else {
            eprintln!("xtask bench: one CPU: the ping-pong runs unpinned only");
            vec![Self::Unpinned]
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Unpinned => "unpinned",
        }
    }
}

struct Mode {
    /// The mode as the table names it.
    name: String,
    run: Under,
    /// The least ratio to the untraced run it should keep.
    goal: Option<f64>,
    note: &'static str,
}

enum Under {
    Sockspy {
        args: Vec<String>,
        expect: Expect,
    },
    /// `strace -f`, attached to the workload and every process it forks.
    Strace,
    /// `perf stat` counting these tracepoints machine-wide (`floor.rs`).
    Floor(Vec<String>),
}

/// What sockspy's event count must show for the run to have measured
/// what it claims to.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// The workload was traced: some events.
    Events,
    /// The filter left the workload out: far fewer events than it made.
    Excluded,
    /// The workload makes no socket events: anything.
    Anything,
}

const STRACE: &[&str] = &["strace", "-f", "-o", "/dev/null", "--"];

fn sockspy(args: &[&str], expect: Expect, goal: Option<f64>) -> Mode {
    Mode {
        name: args.join(" "),
        run: Under::Sockspy {
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
            expect,
        },
        goal,
        note: "",
    }
}

/// The kernel's floor under `tracepoints`, where perf can count them.
fn floor(tracepoints: Option<&[String]>) -> Option<Mode> {
    Some(Mode {
        name: "perf stat counting trace's tracepoints".to_owned(),
        run: Under::Floor(tracepoints?.to_vec()),
        goal: None,
        note: "the kernel's floor: the same hooks with no program on them",
    })
}

/// Scenario 1: the ping-pong with `size`-byte messages, placed as
/// `placement` says, traced for metadata, with payload capture, as JSON,
/// and under strace; and two floors: sockspy's programs attached but
/// returning early (the kernel-side `--pid` filter leaves the ping-pong
/// out), and the kernel's hooks with no program, under `tracepoints`.
pub fn ping_pong(size: usize, placement: Placement, tracepoints: Option<&[String]>) -> Scenario {
    Scenario {
        name: format!("Unix ping-pong, {size} B messages, {}", placement.name()),
        workload: Workload::PingPong { size, placement },
        modes: [
            sockspy(&["trace", "--unix"], Expect::Events, Some(0.93)),
            sockspy(
                &["trace", "--unix", "--data=256"],
                Expect::Events,
                Some(0.85),
            ),
            sockspy(
                &["trace", "--unix", "--json", "--data=256"],
                Expect::Events,
                None,
            ),
            Mode {
                name: "strace -f".to_owned(),
                run: Under::Strace,
                goal: None,
                note: "for comparison (about 0.15 expected)",
            },
            sockspy(
                &["trace", "--unix", "--pid", "1"],
                Expect::Excluded,
                Some(0.97),
            ),
        ]
        .into_iter()
        .chain(floor(tracepoints))
        .collect(),
    }
}

/// Scenario 2: system calls on no socket, with every family traced; and
/// the kernel's floor under `tracepoints`.
pub fn dd(tracepoints: Option<&[String]>) -> Scenario {
    Scenario {
        name: "dd if=/dev/zero of=/dev/null bs=1 (no sockets)".to_owned(),
        workload: Workload::Dd,
        modes: [sockspy(&["trace"], Expect::Anything, Some(0.90))]
            .into_iter()
            .chain(floor(tracepoints))
            .collect(),
    }
}

/// One run of a workload in one mode.
#[derive(Default)]
struct Sample {
    per_second: f64,
    /// The workload's CPU seconds per thing done, where it measures them.
    cpu_each: Option<f64>,
    usage: Option<Usage>,
    /// What sockspy's programs ran during the run, with bpf_stats on.
    programs: Option<ProgramRuns>,
}

impl Sample {
    fn of(counted: Counted) -> Self {
        Self {
            per_second: counted.per_second(),
            cpu_each: counted.cpu_each(),
            ..Self::default()
        }
    }
}

/// Runs every scenario `rounds` times, each round every scenario's
/// untraced run followed by its modes, and makes their rows; with
/// `stats`, sockspy's modes read what its programs ran.
pub fn run(
    programs: &Programs,
    scenarios: &[Scenario],
    rounds: usize,
    run_for: Duration,
    stats: Option<&bpf_stats::Enabled>,
) -> Result<Vec<Row>> {
    // samples[scenario][0] is untraced, [1..] the modes.
    let mut samples: Vec<Vec<Vec<Sample>>> = scenarios
        .iter()
        .map(|scenario| (0..=scenario.modes.len()).map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=rounds {
        for (scenario, samples) in scenarios.iter().zip(&mut samples) {
            eprintln!("xtask bench: round {round} of {rounds}: {}", scenario.name);
            samples[0].push(Sample::of(scenario.workload.run(programs, &[], run_for)?));
            for (mode, samples) in scenario.modes.iter().zip(&mut samples[1..]) {
                samples.push(scenario.measure(programs, mode, run_for, stats)?);
            }
        }
    }
    Ok(scenarios
        .iter()
        .zip(&samples)
        .flat_map(|(scenario, samples)| scenario.rows(samples))
        .collect())
}

impl Scenario {
    fn measure(
        &self,
        programs: &Programs,
        mode: &Mode,
        run_for: Duration,
        stats: Option<&bpf_stats::Enabled>,
    ) -> Result<Sample> {
        let cpu = self.workload.tracer_cpu();
        let (args, expect) = match &mode.run {
            Under::Strace => {
                return Ok(Sample::of(self.workload.run(programs, STRACE, run_for)?));
            }
            Under::Floor(tracepoints) => {
                let counter = Counter::start(tracepoints, cpu)?;
                let counted = self.workload.run(programs, &[], run_for)?;
                counter.stop()?;
                return Ok(Sample::of(counted));
            }
            Under::Sockspy { args, expect } => (args, *expect),
        };
        let tracer = Tracer::start(&programs.sockspy, args, cpu)?;
        let before = stats.map(|stats| stats.read(tracer.pid())).transpose()?;
        let counted = self.workload.run(programs, &[], run_for)?;
        let ran = match (stats, before) {
            (Some(stats), Some(before)) => Some(stats.read(tracer.pid())?.since(&before)),
            _ => None,
        };
        let usage = tracer.stop()?;
        // The ping-pong makes four events a round trip.
        match expect {
            Expect::Events => ensure!(
                usage.events > 0,
                "`sockspy {}` reported no events: the workload was not traced",
                mode.name
            ),
            Expect::Excluded => ensure!(
                (usage.events as f64) < counted.count as f64 / 10.0,
                "`sockspy {}` reported {} events: the filter let the workload through",
                mode.name,
                usage.events
            ),
            Expect::Anything => {}
        }
        Ok(Sample {
            usage: Some(usage),
            programs: ran,
            ..Sample::of(counted)
        })
    }

    fn rows(&self, samples: &[Vec<Sample>]) -> Vec<Row> {
        let untraced = &samples[0];
        let mut rows = vec![Row {
            scenario: self.name.clone(),
            mode: "untraced".to_owned(),
            result: self.workload.rate(untraced),
            baseline: true,
            workload_cpu: cpu_each(untraced),
            ..Row::default()
        }];
        for (mode, samples) in self.modes.iter().zip(&samples[1..]) {
            let ratios: Vec<f64> = samples
                .iter()
                .zip(untraced)
                .map(|(run, base)| run.per_second / base.per_second)
                .collect();
            let usage = samples
                .iter()
                .filter_map(|sample| sample.usage)
                .reduce(Usage::add);
            let programs = samples
                .iter()
                .filter_map(|sample| sample.programs.clone())
                .reduce(ProgramRuns::add);
            let goals = mode
                .goal
                .map(|goal| Check::at_least(median(ratios.iter().copied()), goal))
                .into_iter()
                .collect();
            rows.push(Row {
                scenario: self.name.clone(),
                mode: mode.name.clone(),
                result: self.workload.rate(samples),
                ratios,
                usage,
                workload_cpu: cpu_each(samples),
                programs,
                goals,
                note: mode.note,
                ..Row::default()
            });
        }
        rows
    }
}

/// The median of the runs' CPU seconds per thing done, where measured.
fn cpu_each(samples: &[Sample]) -> Option<f64> {
    let measured: Vec<f64> = samples
        .iter()
        .filter_map(|sample| sample.cpu_each)
        .collect();
    (!measured.is_empty()).then(|| median(measured.into_iter()))
}

impl Workload {
    /// The CPU the workload's tracer is to run on, if pinned.
    fn tracer_cpu(&self) -> Option<usize> {
        match self {
            Self::PingPong {
                placement: Placement::Pinned,
                ..
            } => Some(TRACER_CPU),
            _ => None,
        }
    }

    /// Runs the workload once behind `prefix` (strace, or nothing); a
    /// pinned workload pins itself, and the prefix, a tracer, goes beside
    /// it on the tracer's CPU.
    fn run(&self, programs: &Programs, prefix: &[&str], run_for: Duration) -> Result<Counted> {
        match self {
            Self::PingPong { size, placement } => {
                let mut args = vec![
                    "ping-pong".to_owned(),
                    format!("--size={size}"),
                    format!("--seconds={}", run_for.as_secs_f64()),
                ];
                if *placement == Placement::Pinned {
                    args.push(format!("--cpu={WORKLOAD_CPU}"));
                }
                let mut cmd = workload::command(&programs.xtask, prefix, &args);
                if !prefix.is_empty() {
                    placed(&mut cmd, self.tracer_cpu());
                }
                workload::counted(&mut cmd)
            }
            Self::Dd => run_dd(run_for),
        }
    }

    /// The median rate of `samples` in the workload's unit.
    fn rate(&self, samples: &[Sample]) -> String {
        let median = median(samples.iter().map(|sample| sample.per_second));
        match self {
            Self::PingPong { .. } => format!("{} round trips/s", rate(median)),
            Self::Dd => format!("{:.2} MB/s", median / 1e6),
        }
    }
}

/// Copies bytes with dd for `run_for`, then stops it with SIGINT, at which
/// dd prints what it copied and in how long.
fn run_dd(run_for: Duration) -> Result<Counted> {
    let mut cmd = Command::new("dd");
    cmd.args(["if=/dev/zero", "of=/dev/null", "bs=1"])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: signal is async-signal-safe. A shell that started the bench
    // in the background made it ignore SIGINT, which dd would inherit.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut dd = Running::spawn(&mut cmd)?;
    let mut stderr = dd.child().stderr.take().context("dd's stderr")?;
    std::thread::sleep(run_for);
    signal(dd.pid(), libc::SIGINT)?;
    dd.wait(Duration::from_secs(10))?;
    let mut said = String::new();
    stderr
        .read_to_string(&mut said)
        .context("reading dd's statistics")?;
    let copied = copied(&said).with_context(|| format!("no statistics from dd: {said}"))?;
    ensure!(copied.count > 0, "dd copied nothing: {said}");
    Ok(copied)
}

/// Bytes and seconds from dd's `N bytes (...) copied, T s, R MB/s`.
fn copied(said: &str) -> Option<Counted> {
    said.lines().find_map(|line| {
        let (bytes, rest) = line.split_once(" bytes")?;
        let (_, rest) = rest.split_once("copied, ")?;
        let (seconds, _) = rest.split_once(" s")?;
        Some(Counted {
            count: bytes.parse().ok()?,
            seconds: seconds.parse().ok()?,
            cpu: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dds_statistics() {
        let said = "1847064+0 records in\n1847064+0 records out\n\
                    1847064 bytes (1.8 MB, 1.8 MiB) copied, 1.00048 s, 1.8 MB/s\n";
        assert_eq!(
            copied(said),
            Some(Counted {
                count: 1847064,
                seconds: 1.00048,
                cpu: None,
            })
        );
        let small = "512+0 records in\n512+0 records out\n512 bytes copied, 0.00102 s, 502 kB/s\n";
        assert_eq!(copied(small).map(|c| c.count), Some(512));
        assert_eq!(copied("dd: invalid number"), None);
    }

    fn sample(per_second: f64, cpu_each: f64, events: Option<u64>) -> Sample {
        Sample {
            per_second,
            cpu_each: Some(cpu_each),
            usage: events.map(|events| Usage {
                events,
                ..Usage::default()
            }),
            programs: events.map(|_| ProgramRuns::default()),
        }
    }

    #[test]
    fn each_round_is_compared_with_its_own_untraced_run() {
        let scenario = ping_pong(64, Placement::Pinned, None);
        assert_eq!(scenario.name, "Unix ping-pong, 64 B messages, pinned");
        assert_eq!(scenario.workload.tracer_cpu(), Some(TRACER_CPU));
        let samples = vec![
            vec![
                sample(100_000.0, 10e-6, None),
                sample(80_000.0, 12e-6, None),
            ],
            vec![
                sample(99_000.0, 11e-6, Some(3)),
                sample(70_000.0, 15e-6, Some(4)),
            ],
        ];
        // Two samples: the untraced row and the first mode's.
        let rows = scenario.rows(&samples);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].baseline);
        assert_eq!(rows[0].result, "90,000 round trips/s");
        assert_eq!(rows[0].workload_cpu, Some(11e-6));
        assert_eq!(rows[1].ratios, [0.99, 0.875]);
        assert_eq!(rows[1].usage.map(|usage| usage.events), Some(7));
        let cpu = rows[1].workload_cpu.expect("the median CPU per round trip");
        assert!((cpu - 13e-6).abs() < 1e-12, "{cpu}");
        assert!(rows[1].programs.is_some());
        // The median of 0.99 and 0.875 is 0.9325: just over 0.93.
        assert_eq!(rows[1].goals[0].to_string(), "≥ 0.93 ✓");
        assert_eq!(rows[1].mode, "trace --unix");
    }

    #[test]
    fn every_ping_pong_has_the_programs_floor() {
        let scenario = ping_pong(4096, Placement::Unpinned, Some(&["sock:x".to_owned()]));
        let names: Vec<&str> = scenario
            .modes
            .iter()
            .map(|mode| mode.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "trace --unix",
                "trace --unix --data=256",
                "trace --unix --json --data=256",
                "strace -f",
                "trace --unix --pid 1",
                "perf stat counting trace's tracepoints",
            ]
        );
        assert_eq!(scenario.workload.tracer_cpu(), None);
        assert_eq!(dd(None).workload.tracer_cpu(), None);
    }
}
