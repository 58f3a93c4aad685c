//! `sockspy check`: what this kernel and this process offer for tracing.
//!
//! It runs the same steps as `trace` (privileges, BTF offsets, loading the
//! programs, attaching each hook) but reports each one instead of stopping
//! at the first failure, so an operator sees everything that is missing at once.

use std::{io::Write, process::ExitCode};

use crate::capture::loader::{self, Backend, HOOKS, Kind};

/// `println!` that does not panic when stdout is a closed pipe
/// (`sockspy check | head`): the report just stops.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints one line per check; exits 2 (an unfit environment, as `trace`
/// would) when tracing cannot work: a common hook is missing, or no
/// backend (`backend`, or any for `auto`) can attach all its hooks.
pub fn run(backend: Option<Backend>) -> ExitCode {
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
    let mut working = Vec::new();
    match (&privileged, &offsets) {
        (Ok(()), Ok(offsets)) => match loader::probe(offsets, per_syscall) {
            Ok(probe) => {
                report("eBPF programs and ring buffer", Ok("loaded".into()));
                if let Some(verified) = &probe.verified {
                    report(
                        "verifier",
                        Ok(format!(
                            "{} instructions checked in all; the most, {}, for {} (the kernel's \
                             limit is {VERIFIER_LIMIT} per program)",
                            verified.total, verified.most, verified.program
                        )),
                    );
                }
                let mut broken = Vec::new();
                for (hook, result) in &probe.hooks {
                    let result = result
                        .as_ref()
                        .map(|()| format!("attached (Linux {}+)", hook.since))
                        .map_err(|e| e.to_string());
                    match (hook.kind, result) {
                        // A backend's hook that fails is news, not yet a failure.
                        (Kind::Data(backend), Err(reason)) => {
                            say!("no    {:<36} {reason}", hook.name());
                            broken.push((backend, hook.name()));
                        }
                        (_, result) => report(&hook.name(), result),
                    }
                }
                for candidate in Backend::ALL {
                    let missing: Vec<&str> = broken
                        .iter()
                        .filter(|(backend, _)| *backend == candidate)
                        .map(|(_, hook)| hook.as_str())
                        .collect();
                    let what = format!("backend {}", candidate.name());
                    if missing.is_empty() {
                        report(&what, Ok("every send and receive hook attached".into()));
                        working.push(candidate);
                    } else if missing.len() == loader::data_hooks(candidate, u32::MAX).count() {
                        say!(
                            "no    {what:<36} could not attach any of its {} hooks",
                            missing.len()
                        );
                    } else {
                        say!("no    {what:<36} could not attach {}", missing.join(", "));
                    }
                }
            }
            Err(err) => report("eBPF programs and ring buffer", Err(err.to_string())),
        },
        _ => {
            for hook in HOOKS {
                say!(
                    "skip  {:<36} not tried (needs privileges and BTF)",
                    hook.name()
                );
            }
        }
    }
    let picked = match backend {
        Some(backend) => working.contains(&backend).then_some(backend),
        None => working.first().copied(),
    };
    if picked.is_none() {
        report(
            "backend",
            Err(match backend {
                Some(backend) => format!("the {} backend cannot attach here", backend.name()),
                None => "no backend can attach its send and receive hooks here".into(),
            }),
        );
    }
    if let (true, Some(picked)) = (failures.is_empty(), picked) {
        let why = match backend {
            Some(_) => "asked for with --backend".to_owned(),
            None => {
                let names: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
                format!("auto: the first of {} that works here", names.join(", "))
            }
        };
        say!(
            "backend: {} ({why}; {syscall_hooks}); sockspy trace can run here",
            picked.name()
        );
        return ExitCode::SUCCESS;
    }
    eprintln!("sockspy trace cannot run here: {}", failures.join("; "));
    ExitCode::from(2)
}

/// The most instructions the kernel's verifier checks in one program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`) before it rejects it.
const VERIFIER_LIMIT: u32 = 1_000_000;

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
