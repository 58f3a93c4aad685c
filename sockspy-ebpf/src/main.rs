//! sockspy's kernel programs.
//!
//! Most hooks are tracepoints, the one hook type every kernel offers (this
//! project's reference kernel refuses fentry and has no kprobes). Sends
//! and receives come from one of three backends, which the loader picks:
//! the `sock:` tracepoints of Linux 6.3+ (`probes/data.rs`), or fexit or
//! kprobe programs on the functions behind them (`probes/functions.rs`).
//! Hooks live in `probes/`, one file per area; they read
//! kernel structs through offsets the loader resolved from BTF
//! (`kernel.rs`), and write records through `emit.rs` into one ring buffer.
#![no_std]
#![no_main]

mod arch;
mod container;
mod diag;
mod emit;
mod kernel;
mod probes;
mod slots;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use sockspy_common::{
    COMM_LEN, KernelOffsets, MAX_FILTER_CGROUPS, MAX_FILTER_COMMS, MAX_FILTER_PIDS,
    MAX_FILTER_PORTS, MAX_FILTER_UIDS, STAT_COUNT, TraceConfig,
};

/// Kernel struct offsets, filled in by the loader from BTF before load.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_group_leader: 0,
    task_comm: 0,
    task_files: 0,
    task_real_parent: 0,
    task_exit_code: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    inode_ino: 0,
    socket_sk: 0,
    socket_to_inode: 0,
    sock_family: 0,
    sock_state: 0,
    sock_type: 0,
    sock_protocol: 0,
    sock_socket: 0,
    unix_addr: 0,
    unix_peer: 0,
    unix_listener: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    sock_rcv_saddr: 0,
    sock_num: 0,
    sock_daddr: 0,
    sock_dport: 0,
    sock_v6_rcv_saddr: 0,
    sock_v6_daddr: 0,
    sock_err: 0,
    socket_file: 0,
    task_cred: 0,
    cred_uid: 0,
    sock_net: 0,
    net_inum: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
};

/// What to trace, filled in by the loader before load.
#[unsafe(no_mangle)]
static CONFIG: TraceConfig = TraceConfig {
    families: 0,
    capture_bytes: 0,
    wakeup_bytes: 0,
    self_pid: 0,
    filters: 0,
};

/// The one channel to userspace; the loader sets its size.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU counters of what the kernel side did and failed to do (`Stat`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// System calls in flight, by thread (`slots.rs`): what `sys_enter` saw,
/// for `sys_exit` and the data hooks to finish the event.
#[map]
static CALLS: Array<slots::Slot<probes::syscalls::CallState>> =
    Array::with_max_entries(slots::THREAD_SLOTS, 0);

/// Send and receive calls in flight, by thread, for the kprobe backend:
/// what the entry probe saw, for the return probe.
#[map]
static PROBED: Array<slots::Slot<probes::functions::Probed>> =
    Array::with_max_entries(slots::THREAD_SLOTS, 0);

/// `--pid`/`--pid-tree`: the processes to trace (with `FILTER_PID`).
#[map]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_PIDS, 0);

/// `--comm`: the process names to trace (with `FILTER_COMM`).
#[map]
static FILTER_COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(MAX_FILTER_COMMS, 0);

/// `--uid`: the user ids to trace (with `FILTER_UID`).
#[map]
static FILTER_UIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_UIDS, 0);

/// `--port`: the ports, in host order, whose IP traffic is traced (with `FILTER_PORT`).
#[map]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_FILTER_PORTS, 0);

/// `--cgroup`/`--container`: cgroup id -> whether its tasks are traced
/// (with `FILTER_CGROUP`; see `container.rs`).
#[map]
static FILTER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_FILTER_CGROUPS, 0);

/// Space to build one record in: `SCRATCH_SLOTS` entries per CPU (the
/// loader sizes it), one per hook family, so that a hook interrupting another
/// on the same CPU does not scribble on its record. A plain array rather than
/// a per-CPU one, whose values are limited to 32 KiB.
#[map]
static SCRATCH: Array<emit::Scratch> = Array::with_max_entries(emit::SCRATCH_SLOTS, 0);

/// Reads one field of a global the loader rewrote before load. A plain read
/// could be folded to the compile-time initial value, so it is a volatile load.
macro_rules! global {
    ($global:ident . $field:ident) => {
        // SAFETY: a field of a valid static.
        unsafe { core::ptr::read_volatile(&raw const $crate::$global.$field) }
    };
}
pub(crate) use global;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach a real panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
