//! Throughput scenarios: a workload run untraced and then in each mode
//! (under sockspy, or strace), round after round, each mode's ratio taken
//! against the untraced run of its own round.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use super::{
    Programs,
    floor::Counter,
    process::{Running, signal},
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
    PingPong { size: usize },
    /// `dd if=/dev/zero of=/dev/null bs=1`: system calls, no socket.
    Dd,
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

/// Scenario 1: the ping-pong with `size`-byte messages, traced for
/// metadata, with payload capture, as JSON, and under strace; and the
/// kernel's floor under `tracepoints`.
pub fn ping_pong(size: usize, tracepoints: Option<&[String]>) -> Scenario {
    Scenario {
        name: format!("Unix ping-pong, {size} B messages"),
        workload: Workload::PingPong { size },
        modes: [
            sockspy(&["trace", "--unix"], Expect::Events, Some(0.95)),
            sockspy(
                &["trace", "--unix", "--data=256"],
                Expect::Events,
                Some(0.90),
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

/// Scenario 3: a ping-pong the kernel-side `--pid` filter leaves out.
pub fn excluded() -> Scenario {
    Scenario {
        name: "Unix ping-pong, 64 B, unrelated to the trace".to_owned(),
        workload: Workload::PingPong { size: 64 },
        modes: vec![sockspy(
            &["trace", "--unix", "--pid", "1"],
            Expect::Excluded,
            Some(0.97),
        )],
    }
}

/// One run of a workload in one mode.
struct Sample {
    per_second: f64,
    usage: Option<Usage>,
}

/// Runs every scenario `rounds` times, each round every scenario's
/// untraced run followed by its modes, and makes their rows.
pub fn run(
    programs: &Programs,
    scenarios: &[Scenario],
    rounds: usize,
    run_for: Duration,
) -> Result<Vec<Row>> {
    // samples[scenario][0] is untraced, [1..] the modes.
    let mut samples: Vec<Vec<Vec<Sample>>> = scenarios
        .iter()
        .map(|scenario| (0..=scenario.modes.len()).map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=rounds {
        for (scenario, samples) in scenarios.iter().zip(&mut samples) {
            eprintln!("xtask bench: round {round} of {rounds}: {}", scenario.name);
            samples[0].push(scenario.untraced(programs, run_for)?);
            for (mode, samples) in scenario.modes.iter().zip(&mut samples[1..]) {
                samples.push(scenario.measure(programs, mode, run_for)?);
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
    fn untraced(&self, programs: &Programs, run_for: Duration) -> Result<Sample> {
        Ok(Sample {
            per_second: self.workload.run(programs, &[], run_for)?.per_second(),
            usage: None,
        })
    }

    fn measure(&self, programs: &Programs, mode: &Mode, run_for: Duration) -> Result<Sample> {
        let (args, expect) = match &mode.run {
            Under::Strace => {
                return Ok(Sample {
                    per_second: self.workload.run(programs, STRACE, run_for)?.per_second(),
                    usage: None,
                });
            }
            Under::Floor(tracepoints) => {
                let counter = Counter::start(tracepoints)?;
                let counted = self.workload.run(programs, &[], run_for)?;
                counter.stop()?;
                return Ok(Sample {
                    per_second: counted.per_second(),
                    usage: None,
                });
            }
            Under::Sockspy { args, expect } => (args, *expect),
        };
        let tracer = Tracer::start(&programs.sockspy, args)?;
        let counted = self.workload.run(programs, &[], run_for)?;
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
            per_second: counted.per_second(),
            usage: Some(usage),
        })
    }

    fn rows(&self, samples: &[Vec<Sample>]) -> Vec<Row> {
        let untraced = &samples[0];
        let mut rows = vec![Row {
            scenario: self.name.clone(),
            mode: "untraced".to_owned(),
            result: self.workload.rate(untraced),
            baseline: true,
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
                goals,
                note: mode.note,
                ..Row::default()
            });
        }
        rows
    }
}

impl Workload {
    /// Runs the workload once behind `prefix` (strace, or nothing).
    fn run(&self, programs: &Programs, prefix: &[&str], run_for: Duration) -> Result<Counted> {
        match self {
            Self::PingPong { size } => workload::counted(&mut workload::command(
                &programs.xtask,
                prefix,
                &[
                    "ping-pong".to_owned(),
                    format!("--size={size}"),
                    format!("--seconds={}", run_for.as_secs_f64()),
                ],
            )),
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
                seconds: 1.00048
            })
        );
        let small = "512+0 records in\n512+0 records out\n512 bytes copied, 0.00102 s, 502 kB/s\n";
        assert_eq!(copied(small).map(|c| c.count), Some(512));
        assert_eq!(copied("dd: invalid number"), None);
    }

    fn sample(per_second: f64, events: u64) -> Sample {
        Sample {
            per_second,
            usage: Some(Usage {
                events,
                ..Usage::default()
            }),
        }
    }

    #[test]
    fn each_round_is_compared_with_its_own_untraced_run() {
        let scenario = excluded();
        let samples = vec![
            vec![
                Sample {
                    per_second: 100_000.0,
                    usage: None,
                },
                Sample {
                    per_second: 80_000.0,
                    usage: None,
                },
            ],
            vec![sample(99_000.0, 3), sample(70_000.0, 4)],
        ];
        let rows = scenario.rows(&samples);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].baseline);
        assert_eq!(rows[0].result, "90,000 round trips/s");
        assert_eq!(rows[1].ratios, [0.99, 0.875]);
        assert_eq!(rows[1].usage.map(|usage| usage.events), Some(7));
        // The median of 0.99 and 0.875 is 0.9325: short of 0.97 by 0.0375.
        assert_eq!(rows[1].goals[0].to_string(), "≥ 0.97 ✗ missed by 0.04");
        assert_eq!(rows[1].mode, "trace --unix --pid 1");
    }
}
