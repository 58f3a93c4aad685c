//! Types shared by the kernel programs (sockspy-ebpf) and the loader (sockspy).
//!
//! Every record in the ring buffer starts with an [`EventHeader`]; its `kind`
//! says which body follows. Layouts are `#[repr(C)]` with explicit padding and
//! a compile-time size check, because the kernel side writes them as raw bytes
//! and userspace reads them back the same way. Kind numbers are never reused:
//! a recording made by one version must decode in the next.
#![no_std]

/// Length of a task command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Largest socket address carried in an event (`sizeof(struct sockaddr_storage)`).
pub const MAX_ADDR_LEN: usize = 128;

/// Largest payload snippet one event can carry (`--data` cap).
///
/// One per-CPU scratch buffer of this size plus a header is what the kernel
/// side needs, and one event of this size is what a ring buffer slot must hold.
pub const MAX_DATA_LEN: usize = 16384;

/// Record-building slots the kernel side needs per CPU (one per hook family
/// that can interrupt another); the loader sizes the scratch map with it.
pub const SCRATCH_SLOTS: u32 = 3;

/// Passed descriptors (`SCM_RIGHTS`) identified per `sendmsg`; the count of
/// all of them is in `SockEvent::passed_fds` regardless.
pub const MAX_PASSED_FILES: usize = 4;

/// Largest record the kernel side ever writes.
pub const MAX_EVENT_LEN: usize = size_of::<SockEvent>()
    + 2 * MAX_ADDR_LEN
    + MAX_PASSED_FILES * size_of::<PassedFile>()
    + MAX_DATA_LEN;

/// What happened. The numbers are part of the recording format: never reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `socket()` returned a new socket.
    Socket = 1,
    /// `bind()` gave a socket an address.
    Bind = 2,
    /// `listen()` made a socket a listener.
    Listen = 3,
    /// `connect()` finished (successfully or not).
    Connect = 4,
    /// `accept()`/`accept4()` returned a new connection.
    Accept = 5,
    /// `socketpair()` returned two connected sockets.
    Socketpair = 6,
    /// Data was handed to a socket (any send or write call).
    Send = 7,
    /// Data was taken from a socket (any receive or read call).
    Recv = 8,
    /// A file descriptor that referred to a socket was closed.
    Close = 9,
    /// A TCP connection changed state in a way that matters: it was
    /// established, or it closed (`ret` carries the socket error, e.g. a reset).
    State = 10,
    /// A process forked a new process (not a thread).
    Fork = 20,
    /// A process replaced its program image.
    Exec = 21,
    /// A process (thread group) ended.
    Exit = 22,
}

impl EventKind {
    /// Decodes a kind number, rejecting numbers this version does not know.
    pub const fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Socket,
            2 => Self::Bind,
            3 => Self::Listen,
            4 => Self::Connect,
            5 => Self::Accept,
            6 => Self::Socketpair,
            7 => Self::Send,
            8 => Self::Recv,
            9 => Self::Close,
            10 => Self::State,
            20 => Self::Fork,
            21 => Self::Exec,
            22 => Self::Exit,
            _ => return None,
        })
    }
}

/// The system call that produced an event, where the hook could tell.
///
/// `Unknown` is normal for `send`/`recv` events caused by `read`/`write` when
/// payload capture is off: the data tracepoints do not say which call ran, and
/// telling would mean hooking every `read`/`write` on the machine.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// The hook could not tell.
    Unknown = 0,
    Read = 1,
    Write = 2,
    Readv = 3,
    Writev = 4,
    Sendto = 5,
    Recvfrom = 6,
    Sendmsg = 7,
    Recvmsg = 8,
    Sendmmsg = 9,
    Recvmmsg = 10,
    Connect = 11,
    Accept = 12,
    Accept4 = 13,
    Socketpair = 14,
    Close = 15,
    Bind = 16,
    Listen = 17,
    Socket = 18,
}

impl Call {
    /// Decodes a call number; numbers this version does not know read as `Unknown`.
    pub const fn from_u16(value: u16) -> Self {
        match value {
            1 => Self::Read,
            2 => Self::Write,
            3 => Self::Readv,
            4 => Self::Writev,
            5 => Self::Sendto,
            6 => Self::Recvfrom,
            7 => Self::Sendmsg,
            8 => Self::Recvmsg,
            9 => Self::Sendmmsg,
            10 => Self::Recvmmsg,
            11 => Self::Connect,
            12 => Self::Accept,
            13 => Self::Accept4,
            14 => Self::Socketpair,
            15 => Self::Close,
            16 => Self::Bind,
            17 => Self::Listen,
            18 => Self::Socket,
            _ => Self::Unknown,
        }
    }

    /// The system call's name as `strace` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "",
            Self::Read => "read",
            Self::Write => "write",
            Self::Readv => "readv",
            Self::Writev => "writev",
            Self::Sendto => "sendto",
            Self::Recvfrom => "recvfrom",
            Self::Sendmsg => "sendmsg",
            Self::Recvmsg => "recvmsg",
            Self::Sendmmsg => "sendmmsg",
            Self::Recvmmsg => "recvmmsg",
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Accept4 => "accept4",
            Self::Socketpair => "socketpair",
            Self::Close => "close",
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Socket => "socket",
        }
    }
}

/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Bit in [`TraceConfig::families`] for Unix domain sockets.
pub const FAMILY_UNIX: u32 = 1 << 0;
/// Bit in [`TraceConfig::families`] for IPv4 sockets.
pub const FAMILY_INET: u32 = 1 << 1;
/// Bit in [`TraceConfig::families`] for IPv6 sockets.
pub const FAMILY_INET6: u32 = 1 << 2;

/// Bit in [`TraceConfig::families`] for TCP (IPv4 and IPv6 alike).
pub const PROTO_TCP: u32 = 1 << 3;
/// Bit in [`TraceConfig::families`] for UDP (IPv4 and IPv6 alike).
pub const PROTO_UDP: u32 = 1 << 4;

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u16 = 17;

/// Maps an IP protocol to its [`TraceConfig::families`] bit (0 if not traced).
pub const fn proto_bit(protocol: u16) -> u32 {
    match protocol {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => 0,
    }
}

/// Whether a socket of `family` and `protocol` is wanted by the `families` bits:
/// Unix sockets by family alone, IP sockets by family and protocol.
pub const fn wanted(families: u32, family: u16, protocol: u16) -> bool {
    family_bit(family) & families != 0 && (family == AF_UNIX || proto_bit(protocol) & families != 0)
}

/// Maps an address family to its [`TraceConfig::families`] bit (0 if not traced).
pub const fn family_bit(family: u16) -> u32 {
    match family {
        AF_UNIX => FAMILY_UNIX,
        AF_INET => FAMILY_INET,
        AF_INET6 => FAMILY_INET6,
        _ => 0,
    }
}

/// `SockEvent::flags`: the receive was `MSG_PEEK` (data stays queued).
pub const FLAG_PEEK: u16 = 1 << 0;
/// `SockEvent::flags`: an address was longer than [`MAX_ADDR_LEN`] and was cut.
pub const FLAG_ADDR_TRUNCATED: u16 = 1 << 1;
/// `SockEvent::flags`: a payload read from user memory failed; the payload is cut there.
pub const FLAG_DATA_FAULT: u16 = 1 << 2;
/// `SockEvent::flags`: a `sendmsg` passed credentials (`SCM_CREDENTIALS`).
pub const FLAG_CREDENTIALS: u16 = 1 << 3;
/// `SockEvent::flags`: the Unix peer is a connection not accepted yet (an
/// embryo socket in a listener's accept queue, which has no inode); the
/// peer address is the listener's name, as the kernel gave it to the embryo.
pub const FLAG_PEER_PENDING: u16 = 1 << 4;
/// `SockEvent::flags`: under `--cgroup`/`--container`, the task's cgroup
/// has no verdict in `FILTER_CGROUPS` yet (made since the loader filled
/// it): the record wakes the reader at once, whose verdict then stops the
/// cgroup's other records in the kernel.
pub const FLAG_CGROUP_UNDECIDED: u16 = 1 << 5;
/// `SockEvent::flags`, with [`FLAG_PEER_PENDING`]: the embryo is being
/// accepted as the record is written (Linux 6.10+ has unlinked it from its
/// listener and not yet given it its socket): the `accept` record names it.
pub const FLAG_PEER_ACCEPTING: u16 = 1 << 6;

/// Starts every record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] number.
    pub kind: u32,
    /// Bytes in the whole record, header and trailing bytes included.
    pub size: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Process id (thread group id) of the task that caused the event.
    pub pid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Its real user id.
    pub uid: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// The process's command: the thread group leader's `comm`, as `ps` and `ss -p` show it.
    pub comm: [u8; COMM_LEN],
    /// The calling thread's own `comm` (collectd names its threads `writer#0`, ...).
    pub tcomm: [u8; COMM_LEN],
}

/// Body of every socket event (`Socket` through `Close`).
///
/// Trailing bytes follow the fixed part, in this order: `addr_len` bytes of
/// the socket's own address, `peer_addr_len` bytes of the other end's address
/// (both raw `struct sockaddr_*`), `passed_files` [`PassedFile`] records,
/// then `data_len` bytes of payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEvent {
    /// Common header.
    pub header: EventHeader,
    /// Socket inode number: `socket:[N]` in /proc/PID/fd and `ss`. 0 if unknown.
    pub sock: u64,
    /// Inode number of the connected peer socket. 0 if none or not known yet
    /// (a Unix connection not yet accepted has no peer inode).
    pub peer_sock: u64,
    /// Kernel address of the socket's `struct sock`: an identity, never dereferenced.
    pub sk: u64,
    /// Kernel address of the peer's `struct sock`, 0 if none.
    pub peer_sk: u64,
    /// Inode number of the listening socket in whose accept queue the peer
    /// waits (with [`FLAG_PEER_PENDING`], on kernels whose `unix_sock` has
    /// a `listener` field, 6.10+); else 0.
    pub peer_listener: u64,
    /// The call's result: bytes moved, a new fd, 0, or a negative errno.
    /// For `State`, the socket's pending error as a negative errno (0 if none).
    pub ret: i64,
    /// File descriptor the call used, -1 if the hook could not tell.
    pub fd: i32,
    /// Second descriptor: the other end of a socketpair, or the listening fd of an accept; else -1.
    pub fd2: i32,
    /// Address family (`AF_UNIX`, ...).
    pub family: u16,
    /// Socket type (`SOCK_STREAM` = 1, `SOCK_DGRAM` = 2, `SOCK_SEQPACKET` = 5).
    pub sock_type: u16,
    /// Protocol number (`IPPROTO_TCP`, ...), 0 for Unix sockets.
    pub protocol: u16,
    /// Kernel socket state (`sk_state`); for `State`, the state entered.
    pub state: u16,
    /// A [`Call`] number.
    pub call: u16,
    /// Bytes of own address that follow.
    pub addr_len: u16,
    /// Bytes of peer address that follow the own address.
    pub peer_addr_len: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Bytes of payload that follow the addresses.
    pub data_len: u32,
    /// File descriptors passed along (`SCM_RIGHTS` on a `sendmsg`).
    pub passed_fds: u16,
    /// [`PassedFile`] records that follow the addresses (at most
    /// [`MAX_PASSED_FILES`] of the `passed_fds`).
    pub passed_files: u16,
    /// The calling task's cgroup v2 id (`bpf_get_current_cgroup_id`: the
    /// inode of its directory in the cgroup2 mount). For `State`, the task
    /// that happened to run, which userspace does not trust.
    pub cgroup: u64,
    /// An IP socket's network namespace (the inode of `/proc/PID/ns/net`);
    /// 0 for other families.
    pub netns: u32,
    /// The process id as its own pid namespace sees it, when that is not
    /// the initial one; else 0.
    pub nspid: u32,
}

/// A descriptor a `sendmsg` passed with `SCM_RIGHTS`, identified by the
/// kernel while the sender still held it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassedFile {
    /// Inode number of the file (`pipe:[N]`, `socket:[N]`, a file's inode).
    pub ino: u64,
    /// The sender's descriptor number.
    pub fd: i32,
    /// The inode's `i_mode` (its `S_IFMT` bits say pipe, socket, file, ...).
    pub mode: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
}

/// Body of process lifecycle events (`Fork`, `Exec`, `Exit`).
///
/// The loader needs them to know who holds a socket: a child inherits its
/// parent's descriptors, and an exec or exit changes or drops them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    /// Common header (`pid` is the parent for `Fork`).
    pub header: EventHeader,
    /// `Fork`: the new process's id; else 0.
    pub child_pid: u32,
    /// `Exit`: the exit code as `wait()` reports it; else 0.
    pub exit_code: i32,
}

/// Counters the kernel side keeps per CPU; indexes into the `STATS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Records written to the ring buffer.
    Emitted = 0,
    /// Socket event records dropped because the ring buffer was full.
    RingFull = 1,
    /// Kernel or user memory reads that failed (the event went out incomplete).
    ReadFailed = 2,
    /// Calls not followed because a thread whose id shares the low bits
    /// took their per-thread slot (`slots.rs` in sockspy-ebpf).
    CallSlotTaken = 3,
    /// Process event records (fork, exec, exit) dropped because the ring
    /// buffer was full: counted apart so that socket losses are exact.
    RingFullProc = 4,
}

/// Number of [`Stat`] counters.
pub const STAT_COUNT: u32 = 5;

/// A [`KernelOffsets`] field that this kernel's structs do not have.
pub const NO_FIELD: u32 = u32::MAX;

/// Where kernel struct fields are on the running kernel, in bytes.
///
/// Resolved from /sys/kernel/btf/vmlinux at start-up and handed to the
/// programs as a read-only global, so one binary fits many kernel builds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.group_leader`.
    pub task_group_leader: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.files`.
    pub task_files: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`.
    pub fdtable_fd: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `file.private_data`.
    pub file_private_data: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// Distance from a `struct socket` to its inode inside `struct socket_alloc`.
    pub socket_to_inode: u32,
    /// `sock.__sk_common.skc_family`.
    pub sock_family: u32,
    /// `sock.__sk_common.skc_state`.
    pub sock_state: u32,
    /// `sock.sk_type`.
    pub sock_type: u32,
    /// `sock.sk_protocol`.
    pub sock_protocol: u32,
    /// `sock.sk_socket`.
    pub sock_socket: u32,
    /// `unix_sock.addr`.
    pub unix_addr: u32,
    /// `unix_sock.peer`.
    pub unix_peer: u32,
    /// `unix_sock.listener` (Linux 6.10+), [`NO_FIELD`] on older kernels.
    pub unix_listener: u32,
    /// `unix_address.len`.
    pub unix_address_len: u32,
    /// `unix_address.name`.
    pub unix_address_name: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (IPv4 local address, network order).
    pub sock_rcv_saddr: u32,
    /// `sock.__sk_common.skc_num` (local port, host order).
    pub sock_num: u32,
    /// `sock.__sk_common.skc_daddr` (IPv4 remote address, network order).
    pub sock_daddr: u32,
    /// `sock.__sk_common.skc_dport` (remote port, network order).
    pub sock_dport: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (IPv6 local address).
    pub sock_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (IPv6 remote address).
    pub sock_v6_daddr: u32,
    /// `sock.sk_err` (pending socket error, positive errno).
    pub sock_err: u32,
    /// `socket.file`.
    pub socket_file: u32,
    /// `task_struct.cred`.
    pub task_cred: u32,
    /// `cred.uid`.
    pub cred_uid: u32,
    /// `sock.__sk_common.skc_net` (the `struct net *`).
    pub sock_net: u32,
    /// `net.ns.inum`: the namespace's inode number.
    pub net_inum: u32,
    /// `task_struct.thread_pid`.
    pub task_thread_pid: u32,
    /// `pid.level`: how deep the task's pid namespace is (0: the initial one).
    pub pid_level: u32,
    /// `pid.numbers`: one `struct upid` per level.
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    /// `upid.nr`.
    pub upid_nr: u32,
    /// `task_struct.cgroups` (the task's `css_set`).
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`: its cgroup in the v2 hierarchy.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`: the cgroup's kernfs node.
    pub cgroup_kn: u32,
    /// `kernfs_node.id`: the cgroup id (what `bpf_get_current_cgroup_id` gives).
    pub kernfs_node_id: u32,
}

/// Settings the loader gives the kernel programs before load (a read-only global).
///
/// Deciding here rather than in userspace means unwanted events cost a few
/// instructions, not a ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// `FAMILY_*` bits of the families to trace.
    pub families: u32,
    /// Payload bytes to capture per call (0: capture off; at most [`MAX_DATA_LEN`]).
    pub capture_bytes: u32,
    /// Ring buffer fill level, in bytes, from which each record wakes the reader.
    /// Below it records are written without a wake-up and the reader polls.
    pub wakeup_bytes: u64,
    /// The loader's own process id: its own socket traffic is not traced.
    pub self_pid: u32,
    /// `FILTER_*` bits: which of the filter maps the programs consult.
    pub filters: u32,
}

/// `TraceConfig::filters`: only processes in the `FILTER_PIDS` map are traced.
pub const FILTER_PID: u32 = 1 << 0;
/// `TraceConfig::filters`: a process forked by one in `FILTER_PIDS` joins it.
pub const FILTER_PID_TREE: u32 = 1 << 1;
/// `TraceConfig::filters`: only processes whose name is in `FILTER_COMMS` are traced.
pub const FILTER_COMM: u32 = 1 << 2;
/// `TraceConfig::filters`: only processes whose user id is in `FILTER_UIDS` are traced.
pub const FILTER_UID: u32 = 1 << 3;
/// `TraceConfig::filters`: an IP socket's traffic is traced only if its local
/// or remote port is in `FILTER_PORTS` (or it is not connected, and each
/// datagram's address decides, in userspace).
pub const FILTER_PORT: u32 = 1 << 4;
/// `TraceConfig::filters`: `--cgroup`/`--container`: the `FILTER_CGROUPS`
/// map says of each cgroup id it holds whether its tasks are traced; a
/// cgroup it does not hold yet (made after the loader filled it) is
/// traced, and userspace decides and adds its verdict.
pub const FILTER_CGROUP: u32 = 1 << 5;
/// Entries of the `FILTER_PIDS` map (the listed processes and their descendants).
pub const MAX_FILTER_PIDS: u32 = 4096;
/// Entries of the `FILTER_COMMS` map.
pub const MAX_FILTER_COMMS: u32 = 64;
/// Entries of the `FILTER_UIDS` map.
pub const MAX_FILTER_UIDS: u32 = 64;
/// Entries of the `FILTER_PORTS` map.
pub const MAX_FILTER_PORTS: u32 = 256;
/// Entries of the `FILTER_CGROUPS` map: a verdict per cgroup on the machine.
pub const MAX_FILTER_CGROUPS: u32 = 16384;

const _: () = assert!(size_of::<EventHeader>() == 64);
const _: () = assert!(size_of::<SockEvent>() == 160);
const _: () = assert!(size_of::<ProcEvent>() == 72);
const _: () = assert!(size_of::<PassedFile>() == 16);
const _: () = assert!(size_of::<KernelOffsets>() == 188);
const _: () = assert!(size_of::<TraceConfig>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::{KernelOffsets, TraceConfig};

    // SAFETY: plain `#[repr(C)]` integer structs with explicit padding.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TraceConfig {}
}
