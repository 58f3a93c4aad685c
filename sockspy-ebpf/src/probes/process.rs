//! Process life cycle: `fork`, `exec`, `exit`.
//!
//! Hooks: raw tracepoints `sched_process_fork` (args: parent, child task),
//! `sched_process_exec` and `sched_process_exit` (Linux 4.17+ as raw
//! tracepoints). The loader needs them to keep its table of who holds which
//! socket right: a forked child holds its parent's sockets, an exec renames
//! the holder, an exit drops them. Threads are not processes and are skipped.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sockspy_common::EventKind;

use crate::{
    diag, emit, global,
    kernel::{self, Probe, ReadFailed, Reader},
};

/// Raw tracepoint `sched_process_fork`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    if try_fork(&ctx).is_err() {
        diag::read_failed(diag::Site::Fork);
    }
    0
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), ReadFailed> {
    let child: u64 = ctx.arg(1);
    let (tgid, pid) = kernel::task_ids(child)?;
    if tgid == pid {
        let me = Probe::current();
        emit::follow_fork(tgid, me);
        emit::proc_event(EventKind::Fork, tgid, 0, me);
    }
    Ok(())
}

/// Raw tracepoint `sched_process_exec`; the header carries the new command name.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    emit::proc_event(EventKind::Exec, 0, 0, Probe::current());
    0
}

/// Raw tracepoint `sched_process_exit`: reported when the thread group leader exits.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    if try_exit(&ctx).is_err() {
        diag::read_failed(diag::Site::Exit);
    }
    0
}

fn try_exit(ctx: &RawTracePointContext) -> Result<(), ReadFailed> {
    let me = Probe::current();
    if !me.is_main_thread() {
        return Ok(());
    }
    let task: u64 = ctx.arg(0);
    let exit_code: i32 = kernel::read(task, global!(OFFSETS.task_exit_code))?;
    emit::proc_event(EventKind::Exit, 0, exit_code, me);
    Ok(())
}
