//! `sockspy check`: what this kernel and this process offer for tracing.
//!
//! It runs the same steps as `trace` (privileges, BTF offsets, loading the
//! programs, attaching each hook) but reports each one instead of stopping
//! at the first failure, so an operator sees everything that is missing at once.

use std::{io::Write, process::ExitCode};

use crate::loader::{self, HOOKS};

/// `println!` that does not panic when stdout is a closed pipe
/// (`sockspy check | head`): the report just stops.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints one line per check; exits 2 (an unfit environment, as `trace`
/// would) when tracing cannot work.
pub fn run() -> ExitCode {
    let mut failures = Vec::new();
    let mut report = |what: &str, result: Result<String, String>| match result {
        Ok(detail) => say!("ok    {what:<36} {detail}"),
        Err(reason) => {
            say!("FAIL  {what:<36} {reason}");
            failures.push(format!("{what}: {reason}"));
        }
    };
    report("kernel", Ok(kernel_release()));
    let privileged = loader::check_privileges().map_err(|e| e.to_string());
    report(
        "privileges",
        privileged.clone().map(|()| "may load eBPF programs".into()),
    );
    let offsets = loader::kernel_offsets();
    report(
        "BTF",
        offsets
            .as_ref()
            .map(|_| "all struct fields found".into())
            .map_err(|e| e.to_string()),
    );
    let per_syscall = loader::has_syscall_tracepoints();
    let syscall_hooks = if per_syscall {
        "per-syscall tracepoints"
    } else {
        "raw sys_enter/sys_exit"
    };
    report(
        "syscall hooks",
        Ok(if per_syscall {
            "syscalls:sys_enter_*/sys_exit_* of the calls followed; other syscalls run no program"
                .into()
        } else {
            "raw_syscalls:sys_enter/sys_exit (this kernel has no syscalls: tracepoints); every syscall runs them"
                .into()
        }),
    );
    match (&privileged, &offsets) {
        (Ok(()), Ok(offsets)) => match loader::probe(offsets, per_syscall) {
            Ok(results) => {
                report("eBPF programs and ring buffer", Ok("loaded".into()));
                for (hook, result) in results {
                    report(
                        &format!("tracepoint {}:{}", hook.system, hook.tracepoint),
                        result
                            .map(|()| format!("attached (Linux {}+)", hook.since))
                            .map_err(|e| e.to_string()),
                    );
                }
            }
            Err(err) => report("eBPF programs and ring buffer", Err(err.to_string())),
        },
        _ => {
            for hook in HOOKS {
                say!(
                    "skip  {:<36} not tried (needs privileges and BTF)",
                    format!("tracepoint {}:{}", hook.system, hook.tracepoint)
                );
            }
        }
    }
    if failures.is_empty() {
        say!("backend: tracepoint ({syscall_hooks}); sockspy trace can run here");
        ExitCode::SUCCESS
    } else {
        eprintln!("sockspy trace cannot run here: {}", failures.join("; "));
        ExitCode::from(2)
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
