//! The kernel's floor: `perf stat` counting, machine-wide, the tracepoints
//! a `sockspy trace` attaches, with no program on them. What a workload
//! loses then is what the kernel's hooks cost before any tracer built on
//! them does anything (syscall tracepoints also send every system call of
//! every process through the slow path), so a traced ratio can be read
//! against it.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, ensure};

use super::process::{Beside, placed};
use crate::exec;

/// How long perf may take to open its counters.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The tracepoints `sockspy trace` attaches without `--data`, as `sockspy
/// check` lists them; `None`, said on stderr, when perf cannot count here.
pub fn tracepoints(sockspy: &Path) -> Result<Option<Vec<String>>> {
    if !exec::works(Command::new("perf").arg("--version")) {
        eprintln!(
            "xtask bench: perf is not installed (cargo xtask setup installs it): no floor rows"
        );
        return Ok(None);
    }
    let check = exec::stdout(Command::new(sockspy).arg("check"))?;
    let names = attached(&check);
    ensure!(
        !names.is_empty(),
        "`sockspy check` listed no attached tracepoint: {check}"
    );
    Ok(Some(names))
}

/// The `ok    tracepoint NAME` lines of `sockspy check`, less the file
/// calls that only `--data` follows.
fn attached(check: &str) -> Vec<String> {
    const DATA_ONLY: [&str; 4] = ["read", "write", "readv", "writev"];
    check
        .lines()
        .filter_map(|line| line.strip_prefix("ok    tracepoint "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| {
            let call = name
                .strip_prefix("syscalls:sys_enter_")
                .or_else(|| name.strip_prefix("syscalls:sys_exit_"));
            !call.is_some_and(|call| DATA_ONLY.contains(&call))
        })
        .map(str::to_owned)
        .collect()
}

/// A `perf stat` counting the tracepoints until stopped.
pub struct Counter(Beside);

impl Counter {
    /// Starts counting, on `cpu` alone when given, and returns once
    /// perf's counters run: its first interval's counts, stamped 0.25 s,
    /// say so.
    pub fn start(tracepoints: &[String], cpu: Option<usize>) -> Result<Self> {
        let mut perf = Command::new("perf");
        perf.args(["stat", "-a", "-x", ",", "-I", "250", "-e"])
            .arg(tracepoints.join(","));
        placed(&mut perf, cpu);
        Ok(Self(Beside::start(&mut perf, "0.", START_TIMEOUT)?))
    }

    /// Stops perf with SIGINT, which, counting machine-wide with no
    /// command, it ends by.
    pub fn stop(self) -> Result<()> {
        self.0.interrupt(START_TIMEOUT, true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_trace_attaches_without_data() {
        let check = "ok    kernel                               6.18\n\
                     ok    tracepoint syscalls:sys_enter_read   attached (Linux 4.7+)\n\
                     ok    tracepoint syscalls:sys_exit_writev  attached (Linux 4.7+)\n\
                     ok    tracepoint syscalls:sys_enter_recvfrom attached (Linux 4.7+)\n\
                     ok    tracepoint sock:sock_send_length     attached (Linux 6.3+)\n\
                     no    tracepoint sock:sock_recv_length     this kernel has none\n\
                     no    kprobe unix_stream_sendmsg           cannot attach";
        assert_eq!(
            attached(check),
            ["syscalls:sys_enter_recvfrom", "sock:sock_send_length"]
        );
    }
}
