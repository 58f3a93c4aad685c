//! `cargo xtask bench`: what tracing costs, as ratios of a workload's
//! throughput traced to its throughput untraced (the ping-pong pinned and
//! unpinned), beside two costs idle CPUs do not distort: the workload's
//! own CPU time and the kernel's time per program run. Plus what sockspy
//! itself spends (CPU per event, memory) under sustained load and with many
//! connections, and how `sockspy pairs` compares with `ss -xp`. Every
//! comparison is made within one invocation, the modes taking turns round
//! by round, because these machines are shared and noisy: only numbers
//! measured side by side mean anything. Goals are printed beside the
//! numbers, never asserted; the bench fails only when the harness itself
//! did not work (a workload that moved nothing, a trace that saw nothing).
//! It is not a test, but `cargo xtask test` runs it with `--quick` so
//! that it keeps working.

mod bpf_stats;
mod connections;
mod floor;
mod process;
mod report;
mod sustained;
mod throughput;
mod tracer;
pub mod workload;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

/// What `cargo xtask bench` measures, and for how long.
#[derive(clap::Args, Default)]
pub struct Options {
    /// Run every scenario briefly (runs of 0.3 s, one round, the ping-pong
    /// with 64 B only, 2 s of sustained load, 1,000 connections over 20
    /// processes): proof that the harness works, not a measurement
    #[arg(long)]
    quick: bool,
    /// Run only this scenario (repeatable); every one when not given
    #[arg(long = "scenario", value_enum, value_name = "NAME")]
    scenarios: Vec<Scenario>,
    /// Seconds each throughput run lasts [default: 2]
    #[arg(long)]
    seconds: Option<f64>,
    /// Rounds of the throughput scenarios and of the listing; the table
    /// shows medians [default: 3]
    #[arg(long)]
    rounds: Option<usize>,
    /// Message size of the ping-pong, bytes (repeatable) [default: 64 and
    /// 4096; 64 with --quick]
    #[arg(long = "size", value_name = "BYTES")]
    sizes: Vec<usize>,
    /// Seconds of each sustained-load run [default: 30]
    #[arg(long)]
    sustained_seconds: Option<f64>,
    /// Connected Unix socket pairs of the memory and listing scenarios
    /// [default: 10000]
    #[arg(long)]
    connections: Option<usize>,
    /// Processes holding those connections [default: 200]
    #[arg(long)]
    holders: Option<usize>,
}

/// The scenarios, by the names `--scenario` takes.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Scenario {
    /// Unix stream ping-pong, pinned and unpinned: `trace --unix`,
    /// `--data=256`, `--json`, strace, and the floors (`trace --unix --pid
    /// 1`, which leaves it out, and perf)
    PingPong,
    /// `dd bs=1`, no sockets, under `trace`
    Dd,
    /// Small writes on every core, traced to /dev/null and to a file
    Sustained,
    /// sockspy's memory with 10,000 connections
    Memory,
    /// `sockspy pairs --unix` against `ss -xp`
    Pairs,
}

/// The options with every default filled in.
#[derive(Debug, PartialEq)]
struct Plan {
    scenarios: Vec<Scenario>,
    run_for: Duration,
    rounds: usize,
    sizes: Vec<usize>,
    sustained: Duration,
    layout: (usize, usize),
}

impl Plan {
    fn new(options: &Options) -> Result<Self> {
        let quick = options.quick;
        let pick = |given: Option<f64>, full: f64, brief: f64| {
            positive_seconds(given.unwrap_or(if quick { brief } else { full }))
        };
        let plan = Self {
            scenarios: if options.scenarios.is_empty() {
                vec![
                    Scenario::PingPong,
                    Scenario::Dd,
                    Scenario::Sustained,
                    Scenario::Memory,
                    Scenario::Pairs,
                ]
            } else {
                options.scenarios.clone()
            },
            run_for: pick(options.seconds, 2.0, 0.3)?,
            rounds: options.rounds.unwrap_or(if quick { 1 } else { 3 }),
            sizes: if !options.sizes.is_empty() {
                options.sizes.clone()
            } else if quick {
                vec![64]
            } else {
                vec![64, 4096]
            },
            sustained: pick(options.sustained_seconds, 30.0, 2.0)?,
            layout: (
                options
                    .connections
                    .unwrap_or(if quick { 1_000 } else { 10_000 }),
                options.holders.unwrap_or(if quick { 20 } else { 200 }),
            ),
        };
        ensure!(plan.rounds > 0, "--rounds must be positive");
        ensure!(
            plan.sizes.iter().all(|&size| size > 0),
            "--size must be positive"
        );
        let (pairs, processes) = plan.layout;
        ensure!(
            processes > 0 && pairs >= processes,
            "--connections ({pairs}) must be at least --holders ({processes}), which must be positive"
        );
        Ok(plan)
    }

    fn runs(&self, scenario: Scenario) -> bool {
        self.scenarios.contains(&scenario)
    }
}

/// `seconds` as a duration, which must be positive.
fn positive_seconds(seconds: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{seconds} is not a positive number of seconds"))
}

/// The programs the scenarios run.
pub struct Programs {
    /// The sockspy binary measured.
    sockspy: PathBuf,
    /// This program, which runs the workloads (`xtask workload ...`).
    xtask: PathBuf,
}

/// Runs the scenarios the options ask for, prints the table and writes
/// it, as markdown a note can quote, to `bench.md` in `target` (a quick
/// run to `bench-quick.md`, leaving a real measurement in place).
pub fn run(sockspy: &Path, target: &Path, options: &Options) -> Result<()> {
    let plan = Plan::new(options)?;
    let report = target.join(if options.quick {
        "bench-quick.md"
    } else {
        "bench.md"
    });
    let programs = Programs {
        sockspy: sockspy.to_owned(),
        xtask: std::env::current_exe().context("cannot find xtask's own executable")?,
    };
    let started = std::time::Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tracers = other_tracers();
    if !tracers.is_empty() {
        eprintln!(
            "xtask bench: warning: already tracing this machine: {}; every traced ratio will be lower than sockspy's own cost",
            tracers.join(", ")
        );
    }

    let floor = if plan.runs(Scenario::PingPong) || plan.runs(Scenario::Dd) {
        floor::tracepoints(&programs.sockspy)?
    } else {
        None
    };
    let floor = floor.as_deref();
    let mut throughput = Vec::new();
    if plan.runs(Scenario::PingPong) {
        for placement in throughput::Placement::available() {
            throughput.extend(
                plan.sizes
                    .iter()
                    .map(|&size| throughput::ping_pong(size, placement, floor)),
            );
        }
    }
    if plan.runs(Scenario::Dd) {
        throughput.push(throughput::dd(floor));
    }
    let mut rows = if throughput.is_empty() {
        Vec::new()
    } else {
        // On only while the throughput runs: the sustained load and the
        // memory scenarios measure sockspy without the kernel's timing.
        let stats = bpf_stats::Enabled::start()?;
        throughput::run(
            &programs,
            &throughput,
            plan.rounds,
            plan.run_for,
            stats.as_ref(),
        )?
    };
    if plan.runs(Scenario::Sustained) {
        rows.extend(sustained::run(&programs, plan.sustained)?);
    }
    let (pairs, processes) = plan.layout;
    let layout = connections::Layout { pairs, processes };
    if plan.runs(Scenario::Memory) {
        rows.extend(connections::memory(&programs, layout)?);
    }
    if plan.runs(Scenario::Pairs) {
        rows.extend(connections::pairs(&programs, layout, plan.rounds)?);
    }

    let kernel = report::programs_table(&rows);
    let text = format!(
        "{}\n\n{}\n{}{}",
        caption(&plan),
        report::table(&rows),
        if kernel.is_empty() {
            String::new()
        } else {
            format!("{kernel}\n")
        },
        footer(started.elapsed(), &load, &tracers)
    );
    print!("{text}");
    std::fs::write(&report, &text).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("xtask bench: table written to {}", report.display());
    Ok(())
}

fn caption(plan: &Plan) -> String {
    format!(
        "Throughput runs of {} s, {} round{}, each round an untraced run then every mode; \
         a ratio is a run's throughput over the untraced run of its round (for the \
         listing, sockspy's time over ss's), median and range in brackets. \
         Pinned, both ping-pong processes run on CPU 0 and the tracer on CPU 1; \
         unpinned, the scheduler places them (an idle CPU's wake-up then dominates a \
         round trip). Workload CPU is the ping-pong's own user + system time per round \
         trip, median of the rounds; the second table is the kernel's time per run of \
         each sockspy program over the traced runs (bpf_stats, on during the throughput \
         runs, adds two clock reads to every run it times). events and lost are \
         sockspy's summary line, summed over a mode's runs; CPU per M events is \
         sockspy's user + system time once tracing (start-up left out; shown from \
         100,000 events on); peak RSS is its VmHWM. sockspy traces the whole machine: \
         run it on a quiet one. Goals are printed, not asserted.",
        plan.run_for.as_secs_f64(),
        plan.rounds,
        if plan.rounds == 1 { "" } else { "s" }
    )
}

/// Tracers other than the bench's own that were running when it started
/// (`sockspy [1234]`): their kernel programs run on the workloads' system
/// calls too, so every traced ratio is lower than sockspy's own cost.
fn other_tracers() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut tracers: Vec<String> = dir
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim_end();
            ["sockspy", "bpftrace", "strace"]
                .contains(&comm)
                .then(|| format!("{comm} [{pid}]"))
        })
        .collect();
    tracers.sort();
    tracers
}

fn footer(took: Duration, load: &str, tracers: &[String]) -> String {
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut text = format!(
        "{cores} cores, load average {load} at the start; the bench took {:.0} s.\n",
        took.as_secs_f64()
    );
    if !tracers.is_empty() {
        text.push_str(&format!(
            "Already tracing when the bench started (their programs slow the workloads too): {}.\n",
            tracers.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_shortens_what_is_not_given() {
        let quick = Plan::new(&Options {
            quick: true,
            connections: Some(500),
            ..Options::default()
        })
        .expect("a plan");
        assert_eq!(quick.run_for, Duration::from_millis(300));
        assert_eq!(quick.rounds, 1);
        assert_eq!(quick.sustained, Duration::from_secs(2));
        assert_eq!(quick.layout, (500, 20));
        assert_eq!(quick.scenarios.len(), 5);
        assert_eq!(quick.sizes, [64]);

        let full = Plan::new(&Options {
            scenarios: vec![Scenario::Memory],
            ..Options::default()
        })
        .expect("a plan");
        assert_eq!(full.run_for, Duration::from_secs(2));
        assert_eq!(full.rounds, 3);
        assert_eq!(full.sizes, [64, 4096]);
        assert_eq!(full.sustained, Duration::from_secs(30));
        assert_eq!(full.layout, (10_000, 200));
        assert!(full.runs(Scenario::Memory) && !full.runs(Scenario::Pairs));
    }

    #[test]
    fn refuses_plans_that_measure_nothing() {
        for options in [
            Options {
                seconds: Some(0.0),
                ..Options::default()
            },
            Options {
                rounds: Some(0),
                ..Options::default()
            },
            Options {
                connections: Some(10),
                holders: Some(20),
                ..Options::default()
            },
        ] {
            assert!(Plan::new(&options).is_err());
        }
    }
}
