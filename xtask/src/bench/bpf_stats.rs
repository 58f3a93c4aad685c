//! The kernel's own account of a tracer's eBPF programs (`bpf_stats`):
//! while `kernel.bpf_stats_enabled` is 1 the kernel times every run of
//! every program. Takes a tracer's process id, finds the programs it
//! holds in /proc/PID/fdinfo and their names and counters in `bpftool
//! prog show --json`, and hands on, per program, the runs and nanoseconds
//! between two readings: the time a program costs, which neither idle
//! CPUs nor the scheduler distort.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{Context, Result};

use crate::exec;

/// The switch; the kernel reads it on every program run.
const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// bpf_stats turned on; dropping it turns the switch back to what it was,
/// and so does a signal that ends the bench before (`restore_and_die`).
pub struct Enabled {
    was: String,
}

/// What the switch said before the bench turned it on (`b'0'` or
/// `b'1'`), for the signal handler to write back; [`NOTHING`] when there is
/// nothing to put back.
static WAS: AtomicU8 = AtomicU8::new(NOTHING);
const NOTHING: u8 = 0;

/// The signals that end the bench without running its destructors:
/// Ctrl-C, Ctrl-\, a closed terminal, `kill`.
const FATAL: [libc::c_int; 4] = [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM];

/// Puts the switch back as it was and dies of `signal`, as the bench would
/// have without this handler. Only async-signal-safe calls.
extern "C" fn restore_and_die(signal: libc::c_int) {
    let was = WAS.swap(NOTHING, Ordering::SeqCst);
    // SAFETY: open, write, close, signal and raise are async-signal-safe;
    // the buffers are a static string and a local byte.
    unsafe {
        if was != NOTHING {
            let fd = libc::open(
                c"/proc/sys/kernel/bpf_stats_enabled".as_ptr(),
                libc::O_WRONLY,
            );
            if fd >= 0 {
                libc::write(fd, (&raw const was).cast(), 1);
                libc::close(fd);
            }
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Makes each of [`FATAL`] restore the switch before it ends the bench,
/// except a signal the bench was told to ignore (a shell's background
/// job ignores SIGINT), which stays ignored.
fn restore_on_signals() {
    for signal in FATAL {
        // SAFETY: sigaction with zeroed, then filled, plain structs; the
        // handler only makes async-signal-safe calls.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction == libc::SIG_IGN
            {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = restore_and_die as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

impl Enabled {
    /// Turns bpf_stats on; `None`, said on stderr, where bpftool, which
    /// names the programs, is missing.
    pub fn start() -> Result<Option<Self>> {
        if !exec::works(Command::new("bpftool").arg("version")) {
            eprintln!(
                "xtask bench: bpftool is not installed (cargo xtask setup installs it): no kernel time per program run"
            );
            return Ok(None);
        }
        let was = std::fs::read_to_string(SWITCH).with_context(|| format!("reading {SWITCH}"))?;
        let was = was.trim().to_owned();
        if let [byte @ (b'0' | b'1')] = was.as_bytes() {
            WAS.store(*byte, Ordering::SeqCst);
            restore_on_signals();
        }
        std::fs::write(SWITCH, "1").with_context(|| format!("writing 1 to {SWITCH}"))?;
        Ok(Some(Self { was }))
    }

    /// The counters of the programs process `pid` holds, as they stand now.
    pub fn read(&self, pid: libc::pid_t) -> Result<ProgramRuns> {
        let dir = format!("/proc/{pid}/fdinfo");
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
            // A descriptor closed since the listing has nothing to say.
            if let Ok(fdinfo) = entry.and_then(|entry| std::fs::read_to_string(entry.path())) {
                ids.extend(prog_id(&fdinfo));
            }
        }
        let shown = exec::stdout(Command::new("bpftool").args(["prog", "show", "--json"]))?;
        ProgramRuns::parse(&shown, &ids).context("reading `bpftool prog show --json`")
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        WAS.store(NOTHING, Ordering::SeqCst);
        if let Err(err) = std::fs::write(SWITCH, &self.was) {
            eprintln!(
                "xtask bench: could not turn {SWITCH} back to {}: {err}",
                self.was
            );
        }
    }
}

/// The program a descriptor's fdinfo names (`prog_id:\t1238`): a program's
/// own descriptor or the link that attaches it.
fn prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|line| {
        let id = line.strip_prefix("prog_id:")?;
        id.trim().parse().ok()
    })
}

/// How often a program ran and for how long in all.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Runs {
    pub count: u64,
    pub ns: u64,
}

/// Per program name, its runs: one reading, or what ran between two.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgramRuns(BTreeMap<String, Runs>);

impl ProgramRuns {
    /// The programs with these ids in bpftool's JSON listing. bpftool
    /// leaves the counters out of a program that has not run yet.
    fn parse(json: &str, ids: &BTreeSet<u32>) -> Result<Self> {
        let listing: Vec<serde_json::Value> = serde_json::from_str(json)?;
        let mut programs = Self::default();
        for program in listing {
            let field = |name| program.get(name).and_then(serde_json::Value::as_u64);
            let id = field("id").context("a program without an id")?;
            if !u32::try_from(id).is_ok_and(|id| ids.contains(&id)) {
                continue;
            }
            let name = program.get("name").and_then(serde_json::Value::as_str);
            let runs = Runs {
                count: field("run_cnt").unwrap_or(0),
                ns: field("run_time_ns").unwrap_or(0),
            };
            programs.add_runs(name.unwrap_or("(no name)"), runs);
        }
        Ok(programs)
    }

    fn add_runs(&mut self, name: &str, runs: Runs) {
        let sum = self.0.entry(name.to_owned()).or_default();
        sum.count += runs.count;
        sum.ns += runs.ns;
    }

    /// What ran from `earlier` to this reading; programs that did not run
    /// are left out.
    pub fn since(&self, earlier: &Self) -> Self {
        let ran = self.0.iter().filter_map(|(name, now)| {
            let before = earlier.0.get(name).copied().unwrap_or_default();
            let count = now.count.saturating_sub(before.count);
            let ns = now.ns.saturating_sub(before.ns);
            (count > 0).then(|| (name.clone(), Runs { count, ns }))
        });
        Self(ran.collect())
    }

    /// Two runs' programs together, a mode's runs summed.
    pub fn add(mut self, other: Self) -> Self {
        for (name, runs) in other.0 {
            self.add_runs(&name, runs);
        }
        self
    }

    /// `sock_send_length 740 ns (1,200,000 runs), ...`, the programs that
    /// ran most first; those that ran less than a hundredth as often as
    /// the first are summed at the end, so the rare paths do not crowd out
    /// the hot ones.
    pub fn describe(&self) -> String {
        let mut programs: Vec<(&String, &Runs)> = self.0.iter().collect();
        programs.sort_by_key(|(_, runs)| std::cmp::Reverse(runs.count));
        let Some(most) = programs.first().map(|(_, runs)| runs.count) else {
            return "none ran".to_owned();
        };
        let (hot, rare): (Vec<_>, Vec<_>) = programs
            .into_iter()
            .partition(|(_, runs)| runs.count * 100 >= most);
        let cell = |runs: &Runs| {
            format!(
                "{:.0} ns ({} runs)",
                runs.ns as f64 / runs.count as f64,
                super::report::thousands(runs.count)
            )
        };
        let mut parts: Vec<String> = hot
            .iter()
            .map(|(name, runs)| format!("{name} {}", cell(runs)))
            .collect();
        if !rare.is_empty() {
            let sum = rare.iter().fold(Runs::default(), |sum, (_, runs)| Runs {
                count: sum.count + runs.count,
                ns: sum.ns + runs.ns,
            });
            parts.push(format!("{} more together {}", rare.len(), cell(&sum)));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_program_a_descriptor_holds() {
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_tag:\t45c08ae3bf86c8a7\n\
                    prog_id:\t1238\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(prog_id(prog), Some(1238));
        let link = "pos:\t0\nlink_type:\tperf\nlink_id:\t1110\nprog_id:\t1239\ntp_name:\tsys_enter_close\n";
        assert_eq!(prog_id(link), Some(1239));
        let map = "pos:\t0\nmap_type:\t27\nmap_id:\t406\n";
        assert_eq!(prog_id(map), None);
    }

    fn runs(programs: &[(&str, u64, u64)]) -> ProgramRuns {
        let mut runs = ProgramRuns::default();
        for &(name, count, ns) in programs {
            runs.add_runs(name, Runs { count, ns });
        }
        runs
    }

    #[test]
    fn reads_the_programs_of_one_process_from_bpftool() {
        let json = r#"[{"id":7,"type":"tracepoint","name":"sys_enter_close","run_time_ns":500,"run_cnt":10},
            {"id":8,"type":"raw_tracepoint","name":"sock_send_length","run_time_ns":7400,"run_cnt":10},
            {"id":9,"type":"raw_tracepoint","name":"sock_recv_length"},
            {"id":99,"type":"tracepoint","name":"someone_elses","run_time_ns":1,"run_cnt":1}]"#;
        let ids = BTreeSet::from([7, 8, 9]);
        assert_eq!(
            ProgramRuns::parse(json, &ids).expect("a listing"),
            runs(&[
                ("sys_enter_close", 10, 500),
                ("sock_send_length", 10, 7400),
                ("sock_recv_length", 0, 0),
            ])
        );
        assert!(ProgramRuns::parse("not json", &ids).is_err());
    }

    #[test]
    fn a_runs_programs_are_the_difference_of_two_readings() {
        let before = runs(&[
            ("send", 100, 70_000),
            ("recv", 100, 75_000),
            ("close", 5, 50),
        ]);
        let after = runs(&[
            ("send", 1_100, 810_000),
            ("recv", 1_100, 827_000),
            ("close", 5, 50),
            ("socket", 2, 300),
        ]);
        let ran = after.since(&before);
        assert_eq!(
            ran,
            runs(&[
                ("send", 1_000, 740_000),
                ("recv", 1_000, 752_000),
                ("socket", 2, 300)
            ])
        );
        assert_eq!(
            ran.describe(),
            "recv 752 ns (1,000 runs), send 740 ns (1,000 runs), 1 more together 150 ns (2 runs)"
        );
        let both = ran.clone().add(runs(&[("send", 1_000, 760_000)]));
        assert!(
            both.describe().contains("send 750 ns (2,000 runs)"),
            "{both:?}"
        );
        assert_eq!(ProgramRuns::default().describe(), "none ran");
    }
}
