//! What a guest's transcript says: the harness's `@@vm-test` lines (the
//! guest's kernel, its sock tracepoints and hooks, how `sockspy check` and
//! each test binary ended, how the whole run ended) and the test
//! harness's own summary lines; and the table the matrix prints.

/// Everything the harness reads from one guest's output.
#[derive(Debug, Default, PartialEq)]
pub struct Transcript {
    /// `uname -r` in the guest.
    pub release: Option<String>,
    /// The guest's uptime in seconds when its init started.
    pub uptime_at_init: Option<f64>,
    /// The events under /sys/kernel/tracing/events/sock.
    pub sock_events: Vec<String>,
    /// Each hook type probed and what came of it (`ok` or why not).
    pub hooks: Vec<(String, String)>,
    pub check: Option<Section>,
    /// `sockspy trace` run where `check` failed.
    pub trace: Option<Section>,
    pub tests: Vec<TestBinary>,
    /// What the guest reported before it gave up (a module that did not
    /// load, a mount that failed).
    pub errors: Vec<String>,
    /// The exit status of the guest's run script, when it got that far.
    pub done: Option<i32>,
}

/// The output between `@@vm-test begin ...` and `@@vm-test end ... STATUS`.
#[derive(Debug, Default, PartialEq)]
pub struct Section {
    pub lines: Vec<String>,
    /// `None` while the section is open (the guest died inside it).
    pub status: Option<i32>,
}

/// One test binary's run.
#[derive(Debug, PartialEq)]
pub struct TestBinary {
    pub name: String,
    pub output: Section,
}

/// Counts from libtest's `test result:` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

const MARKER: &str = "@@vm-test ";

/// Reads a guest's output lines.
pub fn parse(lines: &[String]) -> Transcript {
    let mut transcript = Transcript::default();
    // The section lines are going to, while one is open.
    let mut open: Option<&mut Section> = None;
    for line in lines {
        let Some(said) = line.strip_prefix(MARKER) else {
            if let Some(section) = open.as_deref_mut() {
                section.lines.push(line.clone());
            }
            continue;
        };
        let (what, rest) = said.split_once(' ').unwrap_or((said, ""));
        match what {
            "booted" => transcript.uptime_at_init = rest.trim().parse().ok(),
            "kernel" => transcript.release = Some(rest.trim().to_owned()),
            "sock-events" => {
                transcript.sock_events = rest.split_whitespace().map(str::to_owned).collect()
            }
            "hook" => {
                let (hook, result) = rest.split_once(' ').unwrap_or((rest, ""));
                transcript
                    .hooks
                    .push((hook.to_owned(), result.trim().to_owned()));
            }
            "error" => transcript.errors.push(rest.to_owned()),
            "done" => transcript.done = rest.trim().parse().ok(),
            "begin" => {
                open = None;
                if rest == "check" {
                    open = Some(transcript.check.insert(Section::default()));
                } else if rest == "trace" {
                    open = Some(transcript.trace.insert(Section::default()));
                } else if let Some(name) = rest.strip_prefix("tests ") {
                    transcript.tests.push(TestBinary {
                        name: name.to_owned(),
                        output: Section::default(),
                    });
                    open = transcript.tests.last_mut().map(|binary| &mut binary.output);
                }
            }
            "end" => {
                if let Some(section) = open.take() {
                    section.status = rest.rsplit(' ').next().and_then(|s| s.parse().ok());
                }
            }
            _ => {}
        }
    }
    transcript
}

impl Section {
    /// What `sockspy check` reported as failing: its `FAIL` lines, by the
    /// name of the check.
    pub fn failed_checks(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|line| line.strip_prefix("FAIL"))
            .map(|rest| {
                // The name is padded to a column; the reason follows.
                let rest = rest.trim_start();
                rest.split("  ").next().unwrap_or(rest).trim().to_owned()
            })
            .collect()
    }

    /// Why `sockspy check` says `backend` cannot run: its first hook
    /// that did not attach (`no` lines), as `HOOK: REASON`.
    pub fn refusal(&self, backend: &str) -> Option<String> {
        let probes: &[&str] = match backend {
            "tracepoint" => &["tracepoint "],
            "fentry" => &["fexit "],
            _ => &["kprobe ", "kretprobe "],
        };
        self.lines
            .iter()
            .filter_map(|line| line.strip_prefix("no "))
            .map(str::trim_start)
            .find(|rest| probes.iter().any(|probe| rest.starts_with(probe)))
            .map(|rest| match rest.split_once("  ") {
                Some((hook, reason)) => format!("{hook}: {}", reason.trim()),
                None => rest.to_owned(),
            })
    }

    /// The backend `sockspy check` says `trace` would use.
    pub fn backend(&self) -> Option<&str> {
        self.lines.iter().find_map(|line| {
            let rest = line.strip_prefix("backend: ")?;
            Some(rest.split([';', ' ']).next().unwrap_or(rest))
        })
    }

    /// libtest's counts, summed over its `test result:` lines.
    pub fn counts(&self) -> Option<Counts> {
        let mut total: Option<Counts> = None;
        for line in &self.lines {
            let Some(result) = line.strip_prefix("test result: ") else {
                continue;
            };
            let sum = total.get_or_insert_with(Counts::default);
            for part in result.split([';', '.']) {
                let mut words = part.split_whitespace();
                let (Some(number), Some(label)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(number) = number.parse::<u32>() else {
                    continue;
                };
                match label {
                    "passed" => sum.passed += number,
                    "failed" => sum.failed += number,
                    "ignored" => sum.ignored += number,
                    _ => {}
                }
            }
        }
        total
    }

    /// The tests libtest reported as failed (`test NAME ... FAILED`).
    pub fn failed_tests(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|line| line.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn reads_a_passing_guest() {
        let transcript = parse(&lines(
            "@@vm-test booted 1.52\n\
             @@vm-test kernel 6.12.95+deb12-amd64\n\
             @@vm-test sock-events inet_sk_error_report inet_sock_set_state sock_recv_length sock_send_length\n\
             @@vm-test hook kprobe ok\n\
             @@vm-test hook fentry EPERM at load\n\
             @@vm-test begin check\n\
             ok    kernel                               6.12.95+deb12-amd64\n\
             backend: tracepoint; sockspy trace can run here\n\
             @@vm-test end check 0\n\
             @@vm-test begin tests unix\n\
             running 3 tests\n\
             test socketpair_fork_and_exec ... ok\n\
             test stream_server_and_client ... FAILED\n\
             test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 4 filtered out; finished in 9.10s\n\
             @@vm-test end tests unix 101\n\
             @@vm-test done 0\n",
        ));
        assert_eq!(transcript.release.as_deref(), Some("6.12.95+deb12-amd64"));
        assert_eq!(transcript.uptime_at_init, Some(1.52));
        assert_eq!(transcript.sock_events.len(), 4);
        assert_eq!(
            transcript.hooks,
            [
                ("kprobe".into(), "ok".into()),
                ("fentry".into(), "EPERM at load".into())
            ]
        );
        let check = transcript.check.as_ref().expect("check ran");
        assert_eq!(check.status, Some(0));
        assert_eq!(check.backend(), Some("tracepoint"));
        assert!(check.failed_checks().is_empty());
        let unix = &transcript.tests[0];
        assert_eq!(unix.name, "unix");
        assert_eq!(unix.output.status, Some(101));
        let counts = unix.output.counts().expect("a result line");
        assert_eq!((counts.passed, counts.failed, counts.ignored), (2, 1, 0));
        assert_eq!(unix.output.failed_tests(), ["stream_server_and_client"]);
        assert_eq!(transcript.done, Some(0));
    }

    #[test]
    fn reads_what_check_found_missing() {
        let transcript = parse(&lines(
            "@@vm-test begin check\n\
             ok    BTF                                  all struct fields found\n\
             FAIL  tracepoint sock:sock_send_length     no such tracepoint\n\
             FAIL  tracepoint sock:sock_recv_length     no such tracepoint\n\
             sockspy trace cannot run here: ...\n\
             @@vm-test end check 2\n\
             @@vm-test begin trace\n\
             sockspy: this kernel has no tracepoint sock:sock_send_length\n\
             @@vm-test end trace 2\n\
             @@vm-test done 0\n",
        ));
        let trace = transcript.trace.expect("trace ran");
        assert_eq!(trace.status, Some(2));
        assert_eq!(trace.lines.len(), 1);
        let check = transcript.check.expect("check ran");
        assert_eq!(check.status, Some(2));
        assert_eq!(check.backend(), None);
        assert_eq!(
            check.failed_checks(),
            [
                "tracepoint sock:sock_send_length",
                "tracepoint sock:sock_recv_length"
            ]
        );
        assert!(transcript.tests.is_empty());
    }

    #[test]
    fn a_guest_that_died_inside_a_section_leaves_it_open() {
        let transcript = parse(&lines(
            "@@vm-test begin tests inet\nrunning 9 tests\ntest tcp_over_ipv4_loopback ... ok\n",
        ));
        assert_eq!(transcript.tests[0].output.status, None);
        assert_eq!(transcript.tests[0].output.counts(), None);
        assert_eq!(transcript.done, None);
    }

    #[test]
    fn sums_several_result_lines() {
        let section = Section {
            lines: lines(
                "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s\n\
                 test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.00s\n",
            ),
            status: Some(0),
        };
        assert_eq!(
            section.counts(),
            Some(Counts {
                passed: 5,
                failed: 0,
                ignored: 1
            })
        );
    }

    #[test]
    fn errors_before_the_tests_are_kept() {
        let transcript = parse(&lines(
            "@@vm-test booted 0.9\n@@vm-test error insmod 9p failed\n@@vm-test done 125\n",
        ));
        assert_eq!(transcript.errors, ["insmod 9p failed"]);
        assert_eq!(transcript.done, Some(125));
    }
}
