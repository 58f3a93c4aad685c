//! Reading kernel structs through offsets resolved from BTF.
//!
//! Rust eBPF gets no CO-RE relocations, so `(*sk).field` would freeze one
//! kernel's layout. Instead every field read here adds an offset from the
//! `OFFSETS` global to a base address and goes through
//! `bpf_probe_read_kernel`, which also makes a bad pointer a failed read
//! rather than a rejected program.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use sockspy_common::{AF_INET, AF_INET6, AF_UNIX, COMM_LEN, NO_FIELD};

use crate::global;

/// A failed kernel read; the caller counts it.
pub struct ReadFailed;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.map_err(|_| ReadFailed)
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
pub fn sock_ino(sk: u64) -> Result<u64, ReadFailed> {
    let socket: u64 = read(sk, global!(OFFSETS.sock_socket))?;
    if socket == 0 {
        return Ok(0);
    }
    read(
        socket + u64::from(global!(OFFSETS.socket_to_inode)),
        global!(OFFSETS.inode_ino),
    )
}

/// Reads family, type, state and inode of `sk`.
#[inline(always)]
pub fn sock_info(sk: u64) -> Result<SockInfo, ReadFailed> {
    let family: u16 = read(sk, global!(OFFSETS.sock_family))?;
    let sock_type: u16 = read(sk, global!(OFFSETS.sock_type))?;
    let state: u8 = read(sk, global!(OFFSETS.sock_state))?;
    let protocol: u16 = if family == AF_UNIX {
        0
    } else {
        read(sk, global!(OFFSETS.sock_protocol))?
    };
    Ok(SockInfo {
        sk,
        ino: sock_ino(sk)?,
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
    socket_sock(read(file, global!(OFFSETS.file_private_data))?)
}

/// The `struct sock` of a `struct socket`, if it has one.
#[inline(always)]
pub fn socket_sock(socket: u64) -> Result<Option<u64>, ReadFailed> {
    let sk: u64 = read(socket, global!(OFFSETS.socket_sk))?;
    Ok((sk != 0).then_some(sk))
}

/// The `struct file` behind descriptor `fd` of the current task, if open.
#[inline(always)]
pub fn fd_to_file(fd: i64) -> Result<Option<u64>, ReadFailed> {
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
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
pub fn leader_comm() -> Result<[u8; COMM_LEN], ReadFailed> {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = read(task, global!(OFFSETS.task_group_leader))?;
    read(leader, global!(OFFSETS.task_comm))
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
pub fn unix_peer(sk: u64) -> Result<u64, ReadFailed> {
    read(sk, global!(OFFSETS.unix_peer))
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
pub fn unix_name(sk: u64) -> Result<Option<(u64, u32)>, ReadFailed> {
    let addr: u64 = read(sk, global!(OFFSETS.unix_addr))?;
    if addr == 0 {
        return Ok(None);
    }
    let len: i32 = read(addr, global!(OFFSETS.unix_address_len))?;
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
pub fn inet_ports(sk: u64) -> Result<(u16, u16), ReadFailed> {
    let local: u16 = read(sk, global!(OFFSETS.sock_num))?;
    let remote: u16 = read(sk, global!(OFFSETS.sock_dport))?;
    Ok((local, u16::from_be(remote)))
}

/// The local end of an IP socket: bound address and port.
#[inline(always)]
pub fn inet_local(sk: u64, family: u16) -> Result<InetEnd, ReadFailed> {
    let port: u16 = read(sk, global!(OFFSETS.sock_num))?;
    inet_end(
        sk,
        family,
        port.to_be(),
        global!(OFFSETS.sock_rcv_saddr),
        global!(OFFSETS.sock_v6_rcv_saddr),
    )
}

/// The remote end of an IP socket: where it is connected to (all zero if not).
#[inline(always)]
pub fn inet_remote(sk: u64, family: u16) -> Result<InetEnd, ReadFailed> {
    let port: u16 = read(sk, global!(OFFSETS.sock_dport))?;
    inet_end(
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
fn inet_end(
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
        let addr: [u8; 16] = read(sk, v6_offset)?;
        bytes[8..24].copy_from_slice(&addr);
        28
    } else {
        let addr: [u8; 4] = read(sk, v4_offset)?;
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
