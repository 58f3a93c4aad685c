//! Per-thread slots: what one hook of a call leaves for a later hook of the
//! same call on the same thread (`sys_enter` for the data hook and
//! `sys_exit`; a kprobe for its kretprobe).
//!
//! A plain array indexed by the low bits of the thread id, each slot tagged
//! with its thread. A hash map did this before; its insert, lookup and
//! delete (bucket lock, free list) cost about 250 ns per system call here
//! (`sys_exit_sendto`, which does little else, took 365 ns a run under
//! `bpf_stats` with the hash map and 139 ns with slots). An array lookup is
//! a bounds check and an add, which the verifier inlines.
//!
//! Thread ids below `THREAD_SLOTS` (all of them where `pid_max` is the
//! default 32768) never share a slot. Above it, two threads whose ids share
//! their low bits and that are inside a followed call at the same moment
//! do: the later one takes the slot, the earlier one's call is not
//! followed, and `Stat::CallSlotTaken` counts it. Should the later one's
//! entry write the slot while a hook of the earlier one is reading it (a
//! window of nanoseconds, as the tag is written after the value), that
//! read may take the other call's values.

use aya_ebpf::maps::Array;
use sockspy_common::Stat;

use crate::{diag, emit};

/// Slots per table: a power of two, so that the index is a mask.
pub const THREAD_SLOTS: u32 = 1 << 16;

/// One thread's value, or none.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot<T> {
    /// The thread whose value this is; 0 when free (thread 0, the idle
    /// task, makes no system calls).
    tid: u32,
    value: T,
}

/// Runs `f` on the slot of thread `tid`, whoever holds it now.
#[inline(always)]
fn with_slot<T, R>(
    table: &Array<Slot<T>>,
    tid: u32,
    f: impl FnOnce(&mut Slot<T>) -> R,
) -> Option<R> {
    let slot = table.get_ptr_mut(tid & (THREAD_SLOTS - 1))?;
    // SAFETY: a valid map value; only the threads sharing this slot write it.
    Some(f(unsafe { &mut *slot }))
}

/// Keeps `value` for thread `tid`, replacing what it kept before.
#[inline(always)]
pub fn put<T>(table: &Array<Slot<T>>, tid: u32, value: T) {
    with_slot(table, tid, |slot| {
        if slot.tid != 0 && slot.tid != tid {
            emit::count(Stat::CallSlotTaken);
            diag::sockspy_slot_taken(tid, slot.tid);
        }
        slot.value = value;
        slot.tid = tid;
    });
}

/// Runs `f` on thread `tid`'s value, left in place.
#[inline(always)]
pub fn with<T, R>(
    table: &Array<Slot<T>>,
    tid: u32,
    f: impl FnOnce(&mut T) -> Option<R>,
) -> Option<R> {
    with_slot(table, tid, |slot| {
        if slot.tid == tid {
            f(&mut slot.value)
        } else {
            None
        }
    })?
}

/// Thread `tid`'s value, taken out.
#[inline(always)]
pub fn take<T: Copy>(table: &Array<Slot<T>>, tid: u32) -> Option<T> {
    with_slot(table, tid, |slot| {
        if slot.tid != tid {
            return None;
        }
        slot.tid = 0;
        Some(slot.value)
    })?
}
