//! Which container a record comes from: the calling task's cgroup and pid
//! namespace, an IP socket's network namespace, and the `--cgroup` /
//! `--container` filter.
//!
//! Kept apart from `emit.rs` so that these facts cost one place to read:
//! a helper call for the cgroup id, two or three reads for the pid
//! namespace level (and one more inside a container), and two reads for an
//! IP socket's namespace. Unix sockets skip the namespace: their peers are
//! found by the kernel's peer pointer, never by address.

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use sockspy_common::{FILTER_CGROUP, FLAG_CGROUP_UNDECIDED, SockEvent};

use crate::{
    FILTER_CGROUPS,
    emit::Current,
    global,
    kernel::{self, ReadFailed, Reader},
};

/// Deepest pid namespace nesting the kernel allows (`MAX_PID_NS_LEVEL`).
const MAX_PID_NS_LEVEL: u32 = 32;

/// The current task's cgroup v2 id.
#[inline(always)]
fn cgroup_id() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Fills in the calling task's cgroup id and, inside a pid namespace, its
/// process id as that namespace sees it: with `R`'s reads (plain loads in
/// BTF-typed hooks), but for the pid at the namespace's level, whose
/// offset is known only at run time, which is read the long way.
#[inline(always)]
pub fn task_facts<R: Reader>(ev: &mut SockEvent, me: Current) -> Result<(), ReadFailed> {
    ev.cgroup = R::cgroup_id(me);
    if global!(CONFIG.filters) & FILTER_CGROUP != 0
        // SAFETY: a plain value of the map's type.
        && unsafe { FILTER_CGROUPS.get(ev.cgroup) }.is_none()
    {
        ev.flags |= FLAG_CGROUP_UNDECIDED;
    }
    ev.nspid = 0;
    ev.netns = 0;
    let mut task = R::task(me);
    if !me.is_main_thread() {
        // The process's id is its leader's; a thread's own would be its tid.
        task = R::read(task, global!(OFFSETS.task_group_leader))?;
    }
    let pid: u64 = R::read(task, global!(OFFSETS.task_thread_pid))?;
    let level: u32 = R::read(pid, global!(OFFSETS.pid_level))?;
    if level == 0 || level > MAX_PID_NS_LEVEL {
        return Ok(());
    }
    let at = global!(OFFSETS.pid_numbers)
        + level * global!(OFFSETS.upid_size)
        + global!(OFFSETS.upid_nr);
    let nr: i32 = kernel::read(pid, at)?;
    ev.nspid = nr as u32;
    Ok(())
}

/// The network namespace (its inode number) of IP socket `sk`.
#[inline(always)]
pub fn netns(sk: u64) -> Result<u32, ReadFailed> {
    let net: u64 = kernel::read(sk, global!(OFFSETS.sock_net))?;
    if net == 0 {
        return Ok(0);
    }
    kernel::read(net, global!(OFFSETS.net_inum))
}

/// Whether `--cgroup`/`--container` leave the current task out: its
/// cgroup has a verdict of "no" in `FILTER_CGROUPS`. A cgroup without a
/// verdict (one made since the loader listed them) goes to userspace,
/// which decides and enters it.
#[inline(always)]
pub fn cgroup_excluded() -> bool {
    if global!(CONFIG.filters) & FILTER_CGROUP == 0 {
        return false;
    }
    // SAFETY: a plain value of the map's type; the map holds u8 verdicts.
    matches!(unsafe { FILTER_CGROUPS.get(cgroup_id()) }, Some(0))
}
