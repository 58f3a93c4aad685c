//! Sustained load (scenario 4): small writes as fast as every core can
//! make them, traced with output to /dev/null and then recorded to a
//! file, to see whether sockspy keeps up (no loss) and what each event
//! costs it in CPU time. An untraced run of the same generator gives the
//! send rate tracing is compared with.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};

use super::{
    Programs,
    report::{Check, Row, rate, thousands},
    tracer::{Tracer, Usage},
    workload::{self, Counted},
};

/// Bytes in each write of the generator.
const SIZE: usize = 64;

/// The event rate sockspy should deliver without loss.
const RATE_GOAL: f64 = 500_000.0;

/// The CPU seconds sockspy should spend per million events.
const CPU_GOAL: f64 = 0.3;

/// The CPU seconds per million events that following conversations
/// (`--summaries`: every call goes through the tracker) may add.
const TRACKING_GOAL: f64 = 0.1;

/// The CPU seconds per million events that decoding (`--decode`: the
/// first bytes of every call captured, and each followed as Redis) may add.
const DECODING_GOAL: f64 = 0.2;

/// The plain row the others are compared with.
const PLAIN: &str = "trace --unix > /dev/null";

/// The generator, untraced, then traced to /dev/null and to a file.
pub fn run(programs: &Programs, run_for: Duration) -> Result<Vec<Row>> {
    // At least two, so that both cores of a small machine send.
    let senders = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let scenario = format!(
        "sustained load: {senders} senders of {SIZE} B writes, {:.0} s",
        run_for.as_secs_f64()
    );
    let flood = |programs: &Programs| {
        workload::counted(&mut workload::command(
            &programs.xtask,
            &[],
            &[
                "flood".to_owned(),
                format!("--senders={senders}"),
                format!("--size={SIZE}"),
                format!("--seconds={}", run_for.as_secs_f64()),
            ],
        ))
    };

    eprintln!("xtask bench: {scenario}: untraced");
    let untraced = flood(programs)?;
    let mut rows = vec![Row {
        scenario: scenario.clone(),
        mode: "untraced".to_owned(),
        result: format!("{} sends/s", rate(untraced.per_second())),
        baseline: true,
        ..Row::default()
    }];

    let scratch = Scratch::new()?;
    // Rotation bounds the disk a long recording takes, at the same cost
    // per event: every byte is still written.
    let recording = scratch.0.join("sustained.pcapng");
    let sinks = [
        (PLAIN, vec![]),
        // The same output, every call also followed by the conversation
        // tracker: the difference is what tracking costs.
        (
            "trace --unix --summaries > /dev/null",
            vec!["--summaries".to_owned()],
        ),
        // Every call's first bytes captured and decoded, a line for each
        // command under its call.
        (
            "trace --unix --decode > /dev/null",
            vec!["--decode".to_owned()],
        ),
        (
            "trace --unix -w FILE",
            vec![
                "-w".to_owned(),
                recording.display().to_string(),
                "-C".to_owned(),
                "200".to_owned(),
                "-W".to_owned(),
                "2".to_owned(),
            ],
        ),
    ];
    for (mode, extra) in sinks {
        eprintln!("xtask bench: {scenario}: {mode}");
        let mut args = vec!["trace".to_owned(), "--unix".to_owned()];
        args.extend(extra);
        let tracer = Tracer::start(&programs.sockspy, &args, None)?;
        let sent = flood(programs)?;
        let usage = tracer.stop()?;
        ensure!(
            usage.events + usage.lost > 0,
            "`sockspy {mode}` saw none of the generator's sends"
        );
        let mut row = sustained_row(&scenario, mode, &untraced, &sent, usage);
        let extra = [
            ("--summaries", "tracking", TRACKING_GOAL),
            ("--decode", "decoding", DECODING_GOAL),
        ];
        for (flag, what, goal) in extra {
            if mode.contains(flag)
                && let Some(added) = added_cost(&rows, &row)
            {
                row.result
                    .push_str(&format!(", {what} +{added:.2} CPU s per M events"));
                row.goals.push(Check::at_most(
                    added,
                    goal,
                    &format!("CPU s per M events added by {what}"),
                ));
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// What `row` (with the tracker, or decoding) cost per million events
/// beyond the plain `/dev/null` row before it.
fn added_cost(rows: &[Row], row: &Row) -> Option<f64> {
    let plain = rows
        .iter()
        .find(|r| r.mode == PLAIN)?
        .usage
        .as_ref()?
        .cpu_per_million()?;
    Some((row.usage.as_ref()?.cpu_per_million()? - plain).max(0.0))
}

fn sustained_row(
    scenario: &str,
    mode: &str,
    untraced: &Counted,
    sent: &Counted,
    usage: Usage,
) -> Row {
    let delivered = usage.events as f64 / sent.seconds;
    let mut missed = Vec::new();
    if usage.lost > 0 {
        missed.push(format!("{} lost", thousands(usage.lost)));
    }
    if delivered < RATE_GOAL {
        missed.push(format!("{} events/s short", rate(RATE_GOAL - delivered)));
    }
    let mut goals = vec![Check::new(
        format!("no loss at ≥ {} events/s", rate(RATE_GOAL)),
        missed.is_empty(),
        missed.join(", "),
    )];
    if let Some(cpu) = usage.cpu_per_million() {
        goals.push(Check::at_most(cpu, CPU_GOAL, "CPU s per M events"));
    }
    Row {
        scenario: scenario.to_owned(),
        mode: mode.to_owned(),
        result: format!(
            "{} events/s delivered, {} sends/s",
            rate(delivered),
            rate(sent.per_second())
        ),
        ratios: vec![sent.per_second() / untraced.per_second()],
        usage: Some(usage),
        goals,
        ..Row::default()
    }
}

/// A directory of the bench's own, removed with what is in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("sockspy-bench-{}", std::process::id()));
        // A leftover of a bench killed with this pid holds nothing to keep.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a temporary directory left behind is no failure.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(count: u64) -> Counted {
        Counted {
            count,
            seconds: 2.0,
            cpu: None,
        }
    }

    /// The goals of a row for 1,000,000 sends in 2 s (2,000,000 untraced).
    fn goals(events: u64, lost: u64, cpu_ms: u64) -> (String, Vec<String>) {
        let usage = Usage {
            events,
            lost,
            cpu: Duration::from_millis(cpu_ms),
            peak_rss: 0,
        };
        let row = sustained_row("s", "m", &counted(2_000_000), &counted(1_000_000), usage);
        assert_eq!(row.ratios, [0.5]);
        (
            row.result,
            row.goals.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn a_sustained_row_checks_loss_rate_and_cpu() {
        assert_eq!(
            goals(1_200_000, 0, 240),
            (
                "600,000 events/s delivered, 500,000 sends/s".to_owned(),
                vec![
                    "no loss at ≥ 500,000 events/s ✓".to_owned(),
                    "≤ 0.3 CPU s per M events ✓".to_owned()
                ]
            )
        );
        let (_, missed) = goals(800_000, 1234, 400);
        assert_eq!(
            missed,
            [
                "no loss at ≥ 500,000 events/s ✗ 1,234 lost, 100,000 events/s short",
                "≤ 0.3 CPU s per M events ✗ missed by 0.20 CPU s per M events"
            ]
        );
    }
}
