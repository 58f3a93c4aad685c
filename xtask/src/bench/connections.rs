//! Scenarios with many Unix connections held by many processes (as on a
//! busy server), made by `xtask workload hold`: sockspy's memory while it
//! traces them (scenario 5), and `sockspy pairs` against `ss -xp` listing
//! them (issue #6).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use super::{
    Programs,
    report::{Check, Row, median, mib, thousands},
    tracer::{Tracer, Usage},
    workload::HoldProcess,
};
use crate::exec;

/// The peak resident memory sockspy should stay under, MiB.
const MEMORY_GOAL: f64 = 64.0;

/// How long a traced run goes on after the connections carried their
/// bytes, for sockspy to take in what the kernel queued (it polls every
/// 50 ms).
const SETTLE: Duration = Duration::from_millis(500);

/// How many connections and processes holding them.
#[derive(Clone, Copy)]
pub struct Layout {
    pub pairs: usize,
    pub processes: usize,
}

impl Layout {
    fn describe(&self) -> String {
        format!(
            "{} Unix connections held by {} processes",
            thousands(self.pairs as u64),
            self.processes
        )
    }
}

/// sockspy's memory tracing nothing in particular, then while the
/// connections are made under its eyes, then when they existed before it
/// started (it snapshots them at start-up) and each carries a byte.
pub fn memory(programs: &Programs, layout: Layout) -> Result<Vec<Row>> {
    let scenario = format!("memory: {}", layout.describe());
    let trace = ["trace".to_owned(), "--unix".to_owned()];
    let mut rows = Vec::new();

    eprintln!("xtask bench: {scenario}: no connections");
    let tracer = Tracer::start(&programs.sockspy, &trace, None)?;
    std::thread::sleep(SETTLE);
    let (at_stop, _) = tracer.memory()?;
    rows.push(memory_row(
        &scenario,
        "trace --unix, nothing held",
        at_stop,
        tracer.stop()?,
        None,
    ));

    for made_before in [false, true] {
        let when = if made_before {
            "made before it started"
        } else {
            "made while tracing"
        };
        eprintln!("xtask bench: {scenario}: {when}");
        let (at_stop, usage) = with_connections(programs, layout, made_before)?;
        rows.push(memory_row(
            &scenario,
            &format!("trace --unix, connections {when}"),
            at_stop,
            usage,
            Some(MEMORY_GOAL),
        ));
    }
    Ok(rows)
}

/// sockspy's memory when it is stopped, and its usage, with the
/// connections made while it traces, or before it started (then a byte
/// crosses each once it traces).
fn with_connections(
    programs: &Programs,
    layout: Layout,
    made_before: bool,
) -> Result<(u64, Usage)> {
    let trace = ["trace".to_owned(), "--unix".to_owned()];
    let hold = || HoldProcess::start(&programs.xtask, layout.pairs, layout.processes);
    let (tracer, holders) = if made_before {
        let mut holders = hold()?;
        let tracer = Tracer::start(&programs.sockspy, &trace, None)?;
        holders.poke()?;
        (tracer, holders)
    } else {
        let tracer = Tracer::start(&programs.sockspy, &trace, None)?;
        (tracer, hold()?)
    };
    std::thread::sleep(SETTLE);
    let (at_stop, _) = tracer.memory()?;
    let usage = tracer.stop()?;
    holders.stop()?;
    ensure_saw(&usage, layout)?;
    Ok((at_stop, usage))
}

/// Every connection carried a byte while traced: at least a send event each.
fn ensure_saw(usage: &Usage, layout: Layout) -> Result<()> {
    ensure!(
        usage.events + usage.lost >= layout.pairs as u64,
        "sockspy reported {} events for {} connections that each carried a byte",
        usage.events,
        layout.pairs
    );
    Ok(())
}

fn memory_row(scenario: &str, mode: &str, at_stop: u64, usage: Usage, goal: Option<f64>) -> Row {
    let peak = usage.peak_rss as f64 / f64::from(1 << 20);
    Row {
        scenario: scenario.to_owned(),
        mode: mode.to_owned(),
        result: format!("RSS at stop {}", mib(at_stop)),
        usage: Some(usage),
        goals: goal
            .map(|goal| Check::at_most(peak, goal, "MiB"))
            .into_iter()
            .collect(),
        ..Row::default()
    }
}

/// `sockspy pairs --unix` and `ss -xp` listing the connections, taking
/// turns, `rounds` times each: the time of each, and sockspy's over ss's.
pub fn pairs(programs: &Programs, layout: Layout, rounds: usize) -> Result<Vec<Row>> {
    let scenario = format!("listing: {}", layout.describe());
    eprintln!("xtask bench: {scenario}");
    let holders = HoldProcess::start(&programs.xtask, layout.pairs, layout.processes)?;
    let mut sockspy = Command::new(&programs.sockspy);
    sockspy.args(["pairs", "--unix"]);
    let mut ss = Command::new("ss");
    ss.arg("-xp");
    // Once untimed, with the output read, to be sure both see them all.
    ensure_lists(&mut sockspy, &mut ss, layout.pairs)?;
    let mut times = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        times.0.push(time(&mut sockspy)?);
        times.1.push(time(&mut ss)?);
    }
    holders.stop()?;
    let ratios: Vec<f64> = times.0.iter().zip(&times.1).map(|(a, b)| a / b).collect();
    let seconds = |times: &[f64]| format!("{:.3} s", median(times.iter().copied()));
    Ok(vec![
        Row {
            scenario: scenario.clone(),
            mode: "ss -xp".to_owned(),
            result: seconds(&times.1),
            baseline: true,
            ..Row::default()
        },
        Row {
            scenario,
            mode: "sockspy pairs --unix".to_owned(),
            result: seconds(&times.0),
            goals: vec![Check::below(median(ratios.iter().copied()), 1.0)],
            ratios,
            ..Row::default()
        },
    ])
}

/// Checks that `sockspy pairs` counts at least `pairs` connections (its
/// last stderr line, `sockspy: N connections, M listeners`) and that `ss`
/// prints at least a line for each.
fn ensure_lists(sockspy: &mut Command, ss: &mut Command, pairs: usize) -> Result<()> {
    let out = exec::capture(sockspy)?;
    ensure!(
        out.status.success(),
        "`{}` failed ({})",
        exec::describe(sockspy),
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let connections = stderr
        .lines()
        .find_map(connections)
        .with_context(|| format!("no count from `{}`: {stderr}", exec::describe(sockspy)))?;
    ensure!(
        connections >= pairs,
        "`{}` listed {connections} connections of the {pairs} held",
        exec::describe(sockspy)
    );
    let lines = exec::stdout(ss)?.lines().count();
    ensure!(
        lines >= pairs,
        "`{}` printed {lines} lines for {pairs} connections",
        exec::describe(ss)
    );
    Ok(())
}

/// N from `sockspy: N connections, M listeners`.
fn connections(line: &str) -> Option<usize> {
    let (count, _) = line.strip_prefix("sockspy: ")?.split_once(" connections")?;
    count.parse().ok()
}

/// Seconds `cmd` takes, its output thrown away.
fn time(cmd: &mut Command) -> Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    exec::run(cmd)?;
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pairs_count() {
        assert_eq!(
            connections("sockspy: 10012 connections, 7 listeners"),
            Some(10012)
        );
        assert_eq!(
            connections(
                "sockspy: 6 connections, 1 listeners; the descriptors of 3 processes were not readable"
            ),
            Some(6)
        );
        assert_eq!(connections("stream LISTEN x"), None);
    }

    #[test]
    fn a_memory_row_holds_the_peak_to_the_goal() {
        let usage = Usage {
            peak_rss: 80 << 20,
            ..Default::default()
        };
        let row = memory_row("m", "live", 70 << 20, usage, Some(MEMORY_GOAL));
        assert_eq!(row.result, "RSS at stop 70.0 MiB");
        assert_eq!(row.goals, [Check::at_most(80.0, 64.0, "MiB")]);
        assert!(memory_row("m", "idle", 0, usage, None).goals.is_empty());
    }
}
