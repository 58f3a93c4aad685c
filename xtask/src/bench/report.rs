//! The bench's tables: a row per scenario and mode, with the ratio to
//! the scenario's baseline, the workload's own CPU time, what sockspy
//! counted and cost, and the goal the row is held to; then, for the modes
//! that ran sockspy with bpf_stats on, the kernel's time per run of each
//! of its programs. Goals are printed, met or missed, never asserted.

use std::fmt;

use super::{bpf_stats::ProgramRuns, tracer::Usage};

/// One row of the table.
#[derive(Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub mode: String,
    /// The mode's own measurement, with its unit (`41,200 round trips/s`).
    pub result: String,
    /// The mode's throughput (or time) over the baseline's, one per round;
    /// empty for the baseline itself and where nothing is compared.
    pub ratios: Vec<f64>,
    /// Whether this row is the baseline the others are compared with.
    pub baseline: bool,
    /// What sockspy counted and used, where it ran.
    pub usage: Option<Usage>,
    /// The workload's own CPU seconds per round trip, where it measures them.
    pub workload_cpu: Option<f64>,
    /// What sockspy's programs ran, with bpf_stats on.
    pub programs: Option<ProgramRuns>,
    pub goals: Vec<Check>,
    /// Where there is a goal-like note rather than a goal (`for comparison`).
    pub note: &'static str,
}

/// A goal and whether the row met it.
#[derive(Debug, PartialEq)]
pub struct Check {
    goal: String,
    met: bool,
    /// By how much it was missed, for a missed goal.
    miss: String,
}

impl Check {
    pub fn new(goal: String, met: bool, miss: String) -> Self {
        Self { goal, met, miss }
    }

    /// A ratio that should be at least `goal`.
    pub fn at_least(ratio: f64, goal: f64) -> Self {
        Self::new(
            format!("≥ {goal:.2}"),
            ratio >= goal,
            format!("missed by {:.2}", goal - ratio),
        )
    }

    /// A ratio that should stay below `goal`.
    pub fn below(ratio: f64, goal: f64) -> Self {
        Self::new(
            format!("< {goal:.2}"),
            ratio < goal,
            format!("missed by {:.2}", ratio - goal),
        )
    }

    /// A cost that should be at most `goal` `unit`s.
    pub fn at_most(value: f64, goal: f64, unit: &str) -> Self {
        Self::new(
            format!("≤ {goal} {unit}"),
            value <= goal,
            format!("missed by {:.2} {unit}", value - goal),
        )
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.met {
            write!(f, "{} ✓", self.goal)
        } else {
            write!(f, "{} ✗ {}", self.goal, self.miss)
        }
    }
}

const HEADER: &str = "| scenario | mode | result | ratio | workload CPU µs per round trip | events | lost | sockspy CPU s per M events | sockspy peak RSS | goal |\n\
                      |---|---|---|---:|---:|---:|---:|---:|---:|---|\n";

const PROGRAMS_HEADER: &str = "| scenario | mode | kernel ns per program run (bpf_stats), runs |\n\
                               |---|---|---|\n";

/// The markdown table of `rows`, in their order.
pub fn table(rows: &[Row]) -> String {
    let mut text = String::from(HEADER);
    for row in rows {
        let ratio = if row.baseline {
            "baseline".to_owned()
        } else if row.ratios.is_empty() {
            "-".to_owned()
        } else {
            ratio_cell(&row.ratios)
        };
        let usage = row.usage.as_ref();
        let workload_cpu = row
            .workload_cpu
            .map_or_else(|| "-".to_owned(), |cpu| format!("{:.2}", cpu * 1e6));
        let count = |count: Option<u64>| count.map_or_else(|| "-".to_owned(), thousands);
        let cpu = usage
            .and_then(Usage::cpu_per_million)
            .map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.2}"));
        let peak = usage.map_or_else(|| "-".to_owned(), |usage| mib(usage.peak_rss));
        let goal = if row.goals.is_empty() {
            row.note.to_owned()
        } else {
            row.goals
                .iter()
                .map(Check::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        text.push_str(&format!(
            "| {} | {} | {} | {ratio} | {workload_cpu} | {} | {} | {cpu} | {peak} | {goal} |\n",
            row.scenario,
            row.mode,
            row.result,
            count(usage.map(|usage| usage.events)),
            count(usage.map(|usage| usage.lost)),
        ));
    }
    text
}

/// The table of the kernel's time per program run, a row per mode that
/// read it; empty when none did.
pub fn programs_table(rows: &[Row]) -> String {
    let mut text = String::new();
    for row in rows {
        if let Some(programs) = &row.programs {
            if text.is_empty() {
                text.push_str(PROGRAMS_HEADER);
            }
            let described = programs.describe();
            text.push_str(&format!(
                "| {} | {} | {described} |\n",
                row.scenario, row.mode
            ));
        }
    }
    text
}

/// `0.62x (0.60-0.65)`: the median ratio and, when the runs differ, their range.
pub fn ratio_cell(ratios: &[f64]) -> String {
    let median = median(ratios.iter().copied());
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if format!("{min:.2}") == format!("{max:.2}") {
        format!("{median:.2}x")
    } else {
        format!("{median:.2}x ({min:.2}-{max:.2})")
    }
}

/// The median (NaN when there is nothing to take it of).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `1,234,567`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut text = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// A rate rounded to a whole number, with thousands separators.
pub fn rate(per_second: f64) -> String {
    thousands(per_second.round() as u64)
}

/// Bytes as `23.4 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
        assert_eq!(ratio_cell(&[0.951, 0.949]), "0.95x");
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rate(41_199.6), "41,200");
        assert_eq!(mib(24 << 20), "24.0 MiB");
    }

    #[test]
    fn checks_say_by_how_much_a_goal_was_missed() {
        assert_eq!(Check::at_least(0.96, 0.95).to_string(), "≥ 0.95 ✓");
        assert_eq!(
            Check::at_least(0.91, 0.95).to_string(),
            "≥ 0.95 ✗ missed by 0.04"
        );
        assert_eq!(Check::below(0.5, 1.0).to_string(), "< 1.00 ✓");
        assert_eq!(
            Check::below(1.25, 1.0).to_string(),
            "< 1.00 ✗ missed by 0.25"
        );
        assert_eq!(
            Check::at_most(70.5, 64.0, "MiB").to_string(),
            "≤ 64 MiB ✗ missed by 6.50 MiB"
        );
    }

    #[test]
    fn a_row_per_mode_with_dashes_where_nothing_applies() {
        let rows = [
            Row {
                scenario: "ping-pong".into(),
                mode: "untraced".into(),
                result: "90,000 round trips/s".into(),
                baseline: true,
                workload_cpu: Some(10.5e-6),
                ..Row::default()
            },
            Row {
                scenario: "ping-pong".into(),
                mode: "trace --unix".into(),
                result: "53,000 round trips/s".into(),
                ratios: vec![0.5, 0.7, 0.6],
                usage: Some(Usage {
                    events: 2_000_000,
                    lost: 1,
                    cpu: Duration::from_millis(500),
                    peak_rss: 20 << 20,
                }),
                workload_cpu: Some(14.25e-6),
                programs: Some(ProgramRuns::default()),
                goals: vec![Check::at_least(0.6, 0.95)],
                ..Row::default()
            },
            Row {
                scenario: "ping-pong".into(),
                mode: "strace -f".into(),
                result: "9,000 round trips/s".into(),
                ratios: vec![0.1],
                note: "for comparison",
                ..Row::default()
            },
        ];
        let lines: Vec<String> = table(&rows).lines().skip(2).map(str::to_owned).collect();
        assert_eq!(
            lines,
            [
                "| ping-pong | untraced | 90,000 round trips/s | baseline | 10.50 | - | - | - | - |  |",
                "| ping-pong | trace --unix | 53,000 round trips/s | 0.60x (0.50-0.70) | 14.25 | 2,000,000 | 1 | 0.25 | 20.0 MiB | ≥ 0.95 ✗ missed by 0.35 |",
                "| ping-pong | strace -f | 9,000 round trips/s | 0.10x | - | - | - | - | - | for comparison |",
            ]
        );
        assert_eq!(
            programs_table(&rows).lines().skip(2).collect::<Vec<_>>(),
            ["| ping-pong | trace --unix | none ran |"]
        );
        assert_eq!(programs_table(&rows[..1]), "");
    }
}
