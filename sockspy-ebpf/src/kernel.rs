//! Reading kernel structs through offsets resolved from BTF.
//!
//! Rust eBPF gets no CO-RE relocations, so `(*sk).field` would freeze one
//! kernel's layout. Instead every field read here adds an offset from the
//! `OFFSETS` global to a base address, through one of two [`Reader`]s:
//! [`Probe`] calls `bpf_probe_read_kernel`, which takes any address and
//! turns a bad one into a failed read; [`Btf`] is a plain load, which the
//! verifier allows only on pointers it knows the BTF type of (the
//! arguments of a BTF-typed hook, and the pointers read from them) and
//! checks against that type. A helper call costs tens of nanoseconds
//! here (each return goes through the CPU's return-stack mitigation); a
//! plain load costs what a load costs. The offsets are read-only
//! globals, which the verifier reads as constants.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_get_current_uid_gid, bpf_probe_read_kernel, bpf_probe_read_user,
    generated::{bpf_get_current_task_btf, bpf_skc_to_unix_sock},
};
use sockspy_common::{AF_INET, AF_INET6, AF_UNIX, COMM_LEN, NO_FIELD};

use crate::global;

/// A failed read; the caller counts it (`diag::read_failed`). Where and
/// why are noted aside (`diag::note_failure`), not carried here: a Rust
/// enum that carries data has no BTF the kernel accepts, and `Result`s of
/// this one are in the signatures of subprograms.
pub struct ReadFailed;

/// Reads a `T` at `base + offset` in kernel memory with a helper call.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
    let addr = base + u64::from(offset);
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|code| {
        crate::diag::note_failure(addr, code.into());
        ReadFailed
    })
}

/// Reads a `T` from user memory at `addr`.
#[inline(always)]
pub fn read_user<T>(addr: u64) -> Result<T, ReadFailed> {
    // SAFETY: bpf_probe_read_user checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const T) }.map_err(|code| {
        crate::diag::note_failure(addr, code.into());
        ReadFailed
    })
}

/// How a hook reads the kernel's structs and learns who is running.
pub trait Reader {
    /// Reads a `T` at `base + offset`, `base` being a pointer to a struct
    /// that holds the field.
    fn read<T>(base: u64, offset: u32) -> Result<T, ReadFailed>;
    /// The current thread.
    fn current() -> Current;
    /// The current thread's `task_struct`.
    fn task(me: Current) -> u64;
    /// The current thread's own command name.
    fn thread_comm(me: Current) -> [u8; COMM_LEN];
    /// The current thread's real user id.
    fn uid(me: Current) -> u32;
    /// The current thread's cgroup v2 id.
    fn cgroup_id(me: Current) -> u64;
    /// The `unix_sock` around a Unix socket's `struct sock`, whose fields
    /// lie past the end of `struct sock`.
    fn unix_sock(sk: u64) -> u64;
    /// The inode number of a `struct socket`.
    fn socket_ino(socket: u64) -> Result<u64, ReadFailed>;
}

/// Reads through `bpf_probe_read_kernel` and the current-task helpers:
/// every hook can, whatever its arguments.
pub struct Probe;

impl Reader for Probe {
    #[inline(always)]
    fn read<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
        read(base, offset)
    }

    #[inline(always)]
    fn current() -> Current {
        Current {
            pid_tgid: bpf_get_current_pid_tgid(),
            task: 0,
        }
    }

    #[inline(always)]
    fn task(_me: Current) -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_task() }
    }

    #[inline(always)]
    fn thread_comm(_me: Current) -> [u8; COMM_LEN] {
        bpf_get_current_comm().unwrap_or([0; COMM_LEN])
    }

    #[inline(always)]
    fn uid(_me: Current) -> u32 {
        bpf_get_current_uid_gid() as u32
    }

    #[inline(always)]
    fn cgroup_id(_me: Current) -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn unix_sock(sk: u64) -> u64 {
        // `struct unix_sock` starts with its `struct sock`.
        sk
    }

    #[inline(always)]
    fn socket_ino(socket: u64) -> Result<u64, ReadFailed> {
        read(
            socket + u64::from(global!(OFFSETS.socket_to_inode)),
            global!(OFFSETS.inode_ino),
        )
    }
}

/// Reads with plain loads, for BTF-typed hooks (`tp_btf`), whose socket
/// argument the verifier knows as a `struct sock`; the current task comes
/// from `bpf_get_current_task_btf` (Linux 5.11), typed the same way.
pub struct Btf;

impl Reader for Btf {
    #[inline(always)]
    fn read<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
        Ok(load(base, offset))
    }

    #[inline(always)]
    fn current() -> Current {
        // SAFETY: helper without preconditions; never null in a task's context.
        let task = unsafe { bpf_get_current_task_btf() } as u64;
        let tgid: i32 = load(task, global!(OFFSETS.task_tgid));
        let pid: i32 = load(task, global!(OFFSETS.task_pid));
        Current {
            pid_tgid: (u64::from(tgid as u32) << 32) | u64::from(pid as u32),
            task,
        }
    }

    #[inline(always)]
    fn task(me: Current) -> u64 {
        me.task
    }

    #[inline(always)]
    fn thread_comm(me: Current) -> [u8; COMM_LEN] {
        load(me.task, global!(OFFSETS.task_comm))
    }

    #[inline(always)]
    fn uid(me: Current) -> u32 {
        let cred: u64 = load(me.task, global!(OFFSETS.task_cred));
        load(cred, global!(OFFSETS.cred_uid))
    }

    /// The id `bpf_get_current_cgroup_id` gives, by four loads (the task's
    /// `css_set`, its v2 cgroup, that cgroup's kernfs node, its id)
    /// instead of a helper call.
    #[inline(always)]
    fn cgroup_id(me: Current) -> u64 {
        let css_set: u64 = load(me.task, global!(OFFSETS.task_cgroups));
        let cgroup: u64 = load(css_set, global!(OFFSETS.css_set_dfl_cgrp));
        let kn: u64 = load(cgroup, global!(OFFSETS.cgroup_kn));
        load(kn, global!(OFFSETS.kernfs_node_id))
    }

    #[inline(always)]
    fn unix_sock(sk: u64) -> u64 {
        // SAFETY: the helper checks the family; null for any but AF_UNIX.
        unsafe { bpf_skc_to_unix_sock(sk as *mut _) as u64 }
    }

    /// Through the socket's file, whose inode is the socket's: three
    /// loads instead of a helper call. A kernel socket has no file; its
    /// inode is read the long way.
    #[inline(always)]
    fn socket_ino(socket: u64) -> Result<u64, ReadFailed> {
        let file: u64 = load(socket, global!(OFFSETS.socket_file));
        if file == 0 {
            return Probe::socket_ino(socket);
        }
        let inode: u64 = load(file, global!(OFFSETS.file_inode));
        Ok(load(inode, global!(OFFSETS.inode_ino)))
    }
}

/// A plain load of a `T` at `base + offset`, for [`Btf`]. Volatile, so
/// that LLVM neither merges loads of neighbouring fields into one that
/// crosses a field's end nor splits one, either of which the verifier's
/// check against the BTF type would refuse; 16 bytes (a command name, an
/// IPv6 address) are two 8-byte loads rather than sixteen of a byte.
#[inline(always)]
fn load<T>(base: u64, offset: u32) -> T {
    let at = base + u64::from(offset);
    // SAFETY: the verifier checks each load against the BTF type of `base`
    // and makes it one that cannot fault (a bad address reads as 0); the
    // two-word load is taken only where `T` is 16 bytes of plain data.
    unsafe {
        if size_of::<T>() == 16 {
            core::mem::transmute_copy(&core::ptr::read_volatile(at as *const [u64; 2]))
        } else {
            core::ptr::read_volatile(at as *const T)
        }
    }
}

/// The current thread's ids, asked of the kernel once per program run and
/// handed down: each helper call costs tens of nanoseconds on the path
/// every send and receive takes.
#[derive(Clone, Copy)]
pub struct Current {
    pid_tgid: u64,
    /// Its `task_struct`, where a [`Btf`] reader found it; else 0.
    task: u64,
}

impl Current {
    /// The process id (the kernel's tgid).
    #[inline(always)]
    pub fn tgid(self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }

    /// The thread id (the kernel's pid).
    #[inline(always)]
    pub fn tid(self) -> u32 {
        self.pid_tgid as u32
    }

    /// Whether this is the process's main thread, its group leader.
    #[inline(always)]
    pub fn is_main_thread(self) -> bool {
        self.tgid() == self.tid()
    }
}

/// `TCP_ESTABLISHED`: also the state of a connected Unix socket.
pub const TCP_ESTABLISHED: u32 = 1;

/// `S_IFMT` and `S_IFSOCK` from `stat.h`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// What the probes need to know of one socket.
#[derive(Clone, Copy, Default)]
pub struct SockInfo {
    /// `struct sock` address.
    pub sk: u64,
    /// Inode number, 0 if the socket has no `struct socket` (yet, or any more).
    pub ino: u64,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    pub state: u16,
}

/// The inode number of `sk`'s socket, 0 if it has none (yet, or any more).
#[inline(always)]
pub fn sock_ino<R: Reader>(sk: u64) -> Result<u64, ReadFailed> {
    let socket: u64 = R::read(sk, global!(OFFSETS.sock_socket))?;
    if socket == 0 {
        return Ok(0);
    }
    R::socket_ino(socket)
}

/// Reads family, type, state and inode of `sk`.
#[inline(always)]
pub fn sock_info<R: Reader>(sk: u64) -> Result<SockInfo, ReadFailed> {
    let family: u16 = R::read(sk, global!(OFFSETS.sock_family))?;
    let sock_type: u16 = R::read(sk, global!(OFFSETS.sock_type))?;
    let state: u8 = R::read(sk, global!(OFFSETS.sock_state))?;
    let protocol: u16 = if family == AF_UNIX {
        0
    } else {
        R::read(sk, global!(OFFSETS.sock_protocol))?
    };
    Ok(SockInfo {
        sk,
        ino: sock_ino::<R>(sk)?,
        family,
        sock_type,
        protocol,
        state: u16::from(state),
    })
}

/// The `struct sock` behind descriptor `fd` of the current task, if it is a socket.
#[inline(always)]
pub fn fd_to_sock(fd: i64) -> Result<Option<u64>, ReadFailed> {
    let Some(file) = fd_to_file(fd)? else {
        return Ok(None);
    };
    let (_, mode) = file_identity(file)?;
    if mode & S_IFMT != S_IFSOCK {
        return Ok(None);
    }
    socket_sock::<Probe>(read(file, global!(OFFSETS.file_private_data))?)
}

/// The `struct sock` of a `struct socket`, if it has one.
#[inline(always)]
pub fn socket_sock<R: Reader>(socket: u64) -> Result<Option<u64>, ReadFailed> {
    let sk: u64 = R::read(socket, global!(OFFSETS.socket_sk))?;
    Ok((sk != 0).then_some(sk))
}

/// The `struct file` behind descriptor `fd` of the current task, if open.
#[inline(always)]
pub fn fd_to_file(fd: i64) -> Result<Option<u64>, ReadFailed> {
    if fd < 0 {
        return Ok(None);
    }
    let task = Probe::task(Probe::current());
    let files: u64 = read(task, global!(OFFSETS.task_files))?;
    if files == 0 {
        return Ok(None);
    }
    let fdt: u64 = read(files, global!(OFFSETS.files_fdt))?;
    let max_fds: u32 = read(fdt, global!(OFFSETS.fdtable_max_fds))?;
    if fd as u64 >= u64::from(max_fds) {
        return Ok(None);
    }
    let fd_array: u64 = read(fdt, global!(OFFSETS.fdtable_fd))?;
    let file: u64 = read(fd_array + (fd as u64) * 8, 0)?;
    Ok((file != 0).then_some(file))
}

/// Inode number and mode of a `struct file`.
#[inline(always)]
pub fn file_identity(file: u64) -> Result<(u64, u16), ReadFailed> {
    let inode: u64 = read(file, global!(OFFSETS.file_inode))?;
    Ok((
        read(inode, global!(OFFSETS.inode_ino))?,
        read(inode, global!(OFFSETS.inode_mode))?,
    ))
}

/// The command name of the current task's thread group leader: the process
/// name `ps` shows, which a thread's own `comm` may not be.
#[inline(always)]
pub fn leader_comm<R: Reader>(me: Current) -> Result<[u8; COMM_LEN], ReadFailed> {
    let leader: u64 = R::read(R::task(me), global!(OFFSETS.task_group_leader))?;
    R::read(leader, global!(OFFSETS.task_comm))
}

/// Process and thread ids of a task (for fork and exit).
#[inline(always)]
pub fn task_ids(task: u64) -> Result<(u32, u32), ReadFailed> {
    let tgid: i32 = read(task, global!(OFFSETS.task_tgid))?;
    let pid: i32 = read(task, global!(OFFSETS.task_pid))?;
    Ok((tgid as u32, pid as u32))
}

/// Unix sockets: the connected peer's `struct sock` (0 if none).
#[inline(always)]
pub fn unix_peer<R: Reader>(sk: u64) -> Result<u64, ReadFailed> {
    let unix = R::unix_sock(sk);
    if unix == 0 {
        return Ok(0);
    }
    R::read(unix, global!(OFFSETS.unix_peer))
}

/// Unix sockets: the listener in whose accept queue the embryo `sk` waits
/// (Linux 6.10+; 0 on older kernels, or once accepted).
#[inline(always)]
pub fn unix_listener(sk: u64) -> Result<u64, ReadFailed> {
    let offset = global!(OFFSETS.unix_listener);
    if offset == NO_FIELD {
        return Ok(0);
    }
    read(sk, offset)
}

/// Whether this kernel's `unix_sock` names an embryo's listener (6.10+).
#[inline(always)]
pub fn names_listeners() -> bool {
    global!(OFFSETS.unix_listener) != NO_FIELD
}

/// Unix sockets: where the bound name (`struct unix_address`) is, and its length.
/// `None` for an unnamed socket.
#[inline(always)]
pub fn unix_name<R: Reader>(sk: u64) -> Result<Option<(u64, u32)>, ReadFailed> {
    let unix = R::unix_sock(sk);
    if unix == 0 {
        return Ok(None);
    }
    let addr: u64 = R::read(unix, global!(OFFSETS.unix_addr))?;
    if addr == 0 {
        return Ok(None);
    }
    let len: i32 = R::read(addr, global!(OFFSETS.unix_address_len))?;
    Ok(Some((
        addr + u64::from(global!(OFFSETS.unix_address_name)),
        len as u32,
    )))
}

/// One end of an IP socket as a raw `sockaddr_in` (16 bytes) or
/// `sockaddr_in6` (28 bytes), the layout userspace decodes for every family.
pub struct InetEnd {
    pub bytes: [u8; INET_END_LEN],
    pub len: u32,
}

impl InetEnd {
    /// Whether there is anything to show: a port or an address.
    #[inline(always)]
    pub fn is_set(&self) -> bool {
        self.bytes[2..].iter().any(|&b| b != 0)
    }

    /// Whether it has a port: a remote end without one is not connected.
    #[inline(always)]
    pub fn has_port(&self) -> bool {
        self.bytes[2] != 0 || self.bytes[3] != 0
    }
}

/// `sizeof(struct sockaddr_in6)`, the larger of the two.
pub const INET_END_LEN: usize = 28;

/// Whether `family` is IPv4 or IPv6.
#[inline(always)]
pub fn is_inet(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

/// An IP socket's local and remote ports, in host order (0: none yet).
#[inline(always)]
pub fn inet_ports<R: Reader>(sk: u64) -> Result<(u16, u16), ReadFailed> {
    let local: u16 = R::read(sk, global!(OFFSETS.sock_num))?;
    let remote: u16 = R::read(sk, global!(OFFSETS.sock_dport))?;
    Ok((local, u16::from_be(remote)))
}

/// The local end of an IP socket: bound address and port.
#[inline(always)]
pub fn inet_local<R: Reader>(sk: u64, family: u16) -> Result<InetEnd, ReadFailed> {
    let port: u16 = R::read(sk, global!(OFFSETS.sock_num))?;
    inet_end::<R>(
        sk,
        family,
        port.to_be(),
        global!(OFFSETS.sock_rcv_saddr),
        global!(OFFSETS.sock_v6_rcv_saddr),
    )
}

/// The remote end of an IP socket: where it is connected to (all zero if not).
#[inline(always)]
pub fn inet_remote<R: Reader>(sk: u64, family: u16) -> Result<InetEnd, ReadFailed> {
    let port: u16 = R::read(sk, global!(OFFSETS.sock_dport))?;
    inet_end::<R>(
        sk,
        family,
        port,
        global!(OFFSETS.sock_daddr),
        global!(OFFSETS.sock_v6_daddr),
    )
}

/// Builds a `sockaddr_in`/`sockaddr_in6` from a port in network order and
/// the offsets of the IPv4 and IPv6 address fields.
#[inline(always)]
fn inet_end<R: Reader>(
    sk: u64,
    family: u16,
    port_be: u16,
    v4_offset: u32,
    v6_offset: u32,
) -> Result<InetEnd, ReadFailed> {
    let mut bytes = [0u8; INET_END_LEN];
    bytes[..2].copy_from_slice(&family.to_ne_bytes());
    bytes[2..4].copy_from_slice(&port_be.to_ne_bytes());
    let len = if family == AF_INET6 {
        let addr: [u8; 16] = R::read(sk, v6_offset)?;
        bytes[8..24].copy_from_slice(&addr);
        28
    } else {
        let addr: [u8; 4] = R::read(sk, v4_offset)?;
        bytes[4..8].copy_from_slice(&addr);
        16
    };
    Ok(InetEnd { bytes, len })
}

/// The socket's pending error (`sk_err`, a positive errno; 0 if none).
#[inline(always)]
pub fn sock_error(sk: u64) -> Result<i32, ReadFailed> {
    read(sk, global!(OFFSETS.sock_err))
}
