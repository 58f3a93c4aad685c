//! Kernel-side diagnostics of the rare paths, for `sockspy trace
//! --kernel-log`: a read that failed and why, a per-thread call slot taken
//! by another thread, a record the ring buffer had no room for or that did
//! not fit the scratch buffer. Each is also counted in `STATS`; these say
//! which and why, as aya-log records in a ring buffer of their own.
//!
//! Off unless asked for: the loader sets the read-only global
//! `AYA_LOG_LEVEL` to 0, which the verifier reads as a constant, so it
//! removes every log statement as dead code before the program runs. A
//! failed read notes where and why in `FAILED` as it happens, and the
//! hook logs it once it counts the failure. Each function that logs is a
//! global subprogram off the hot path, which the verifier checks once on
//! its own, and each log statement has a literal format and numbers only:
//! a string picked at run time (a hook's name) is copied in a loop the
//! verifier walks byte by byte, which took it to 3-7 million instructions
//! in all with logging on, against 1.2 million now.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::{
    macro_support::{Level, level_enabled},
    warn,
};
use sockspy_common::{Call, Stat};

use crate::emit;

/// The last failed read on this CPU.
#[derive(Clone, Copy)]
pub struct Failure {
    /// Where.
    addr: u64,
    /// The helper's error, a negative errno.
    code: i64,
}

/// The last failed read per CPU, for [`read_failed`]. A map value, also
/// because the verifier does not track what is stored in one: an address
/// that was a BTF-typed pointer comes back a plain number, which the
/// formatting may shift (a pointer may not be).
#[map]
static FAILED: PerCpuArray<Failure> = PerCpuArray::with_max_entries(1, 0);

/// Notes a read at `addr` that failed with `code`; nothing when the
/// diagnostics are off.
#[inline(always)]
pub fn note_failure(addr: u64, code: i64) {
    if level_enabled(Level::Warn)
        && let Some(failure) = FAILED.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU value only this CPU writes, with preemption off.
        unsafe { *failure = Failure { addr, code } };
    }
}

/// Where a read failed, for [`read_failed`].
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Site {
    Send,
    Recv,
    Iovec,
    PassedFile,
    Socket,
    State,
    SysEnter,
    SysExit,
    Address,
    Payload,
    Comm,
    Fork,
    Exit,
    /// A syscall tracepoint: `Call as u32` in the bits above the first 8.
    Call,
}

impl Site {
    /// The site of the syscall tracepoints of `call`.
    #[inline(always)]
    pub fn call(call: Call) -> u32 {
        Site::Call as u32 | (call as u32) << 8
    }
}

/// Counts a failed read at `site` (a [`Site`], or [`Site::call`]).
#[inline(always)]
pub fn read_failed(site: impl Into<u32>) {
    sockspy_read_failed(site.into());
}

impl From<Site> for u32 {
    #[inline(always)]
    fn from(site: Site) -> u32 {
        site as u32
    }
}

/// [`read_failed`]: counts the failure and says what failed; its argument
/// is a plain number, as a global function's must be. Each site has a log
/// statement of its own, with its name in the literal format (see the
/// module header). Kernel addresses are the high ones (`ffff...`), user
/// addresses the low ones.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sockspy_read_failed(site: u32) -> u32 {
    emit::count(Stat::ReadFailed);
    if !level_enabled(Level::Warn) {
        return 0;
    }
    let Some(failure) = FAILED.get_ptr(0) else {
        return 0;
    };
    // SAFETY: as in `note_failure`.
    let Failure { addr, code } = unsafe { *failure };
    match site & 0xff {
        0 => warn!(
            &(),
            "send: reading memory at {:x} failed with error {}", addr, code
        ),
        1 => warn!(
            &(),
            "recv: reading memory at {:x} failed with error {}", addr, code
        ),
        2 => warn!(
            &(),
            "iovec: reading memory at {:x} failed with error {}", addr, code
        ),
        3 => warn!(
            &(),
            "SCM_RIGHTS: reading memory at {:x} failed with error {}", addr, code
        ),
        4 => warn!(
            &(),
            "socket: reading memory at {:x} failed with error {}", addr, code
        ),
        5 => warn!(
            &(),
            "inet_sock_set_state: reading memory at {:x} failed with error {}", addr, code
        ),
        6 => warn!(
            &(),
            "sys_enter: reading memory at {:x} failed with error {}", addr, code
        ),
        7 => warn!(
            &(),
            "sys_exit: reading memory at {:x} failed with error {}", addr, code
        ),
        8 => warn!(
            &(),
            "address: reading memory at {:x} failed with error {}", addr, code
        ),
        9 => warn!(
            &(),
            "payload: reading memory at {:x} failed with error {}", addr, code
        ),
        10 => warn!(
            &(),
            "comm: reading memory at {:x} failed with error {}", addr, code
        ),
        11 => warn!(
            &(),
            "sched_process_fork: reading memory at {:x} failed with error {}", addr, code
        ),
        12 => warn!(
            &(),
            "sched_process_exit: reading memory at {:x} failed with error {}", addr, code
        ),
        _ => warn!(
            &(),
            "syscall hook of call {}: reading memory at {:x} failed with error {}",
            site >> 8,
            addr,
            code
        ),
    }
    0
}

/// Thread `tid` took the call slot that thread `held` still had: the
/// call of `held` in flight is not followed. Global, as `read_failed`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sockspy_slot_taken(tid: u32, held: u32) -> u32 {
    warn!(
        &(),
        "thread {} took the call slot of thread {}, whose call in flight is not followed",
        tid,
        held
    );
    0
}

/// A record of `len` bytes of event kind `kind` was dropped: the ring
/// buffer was full (`full` is 1), or it did not fit the scratch buffer.
/// Global, as `read_failed`: every path to a record's end reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sockspy_dropped(kind: u32, len: u64, full: u32) -> u32 {
    if full != 0 {
        warn!(
            &(),
            "ring buffer full: a record of kind {} ({} bytes) was dropped", kind, len
        );
    } else {
        warn!(
            &(),
            "a record of kind {} ({} bytes) does not fit the scratch buffer and was dropped",
            kind,
            len
        );
    }
    0
}
