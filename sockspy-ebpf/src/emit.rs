//! Building records and handing them to the ring buffer.
//!
//! A socket record is built in a per-CPU scratch buffer (it can be up to
//! 16 KiB, far over the 512-byte BPF stack) and copied out with one
//! `bpf_ringbuf_output` of its real length, so records without payload stay
//! small. Wake-ups are batched: the reader is only woken once the ring holds
//! `wakeup_bytes`; below that it polls on a short timer.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
};
use sockspy_common::{
    Call, EventHeader, EventKind, FILTER_COMM, FILTER_PID, FILTER_PID_TREE, FILTER_PORT,
    FILTER_UID, FLAG_PEER_ACCEPTING, FLAG_PEER_PENDING, MAX_ADDR_LEN, MAX_DATA_LEN,
    MAX_PASSED_FILES, PassedFile, ProcEvent, SockEvent, Stat,
};

pub use crate::kernel::Current;
use crate::{
    EVENTS, FILTER_COMMS, FILTER_PIDS, FILTER_PORTS, FILTER_UIDS, SCRATCH, STATS, diag, global,
    kernel::{self, Reader},
};

/// Room for the two addresses and the passed files; a power of two so that
/// a mask bounds offsets into it.
const ADDR_AREA: usize = 4 * MAX_ADDR_LEN;
const _: () = assert!(2 * MAX_ADDR_LEN + MAX_PASSED_FILES * size_of::<PassedFile>() <= ADDR_AREA);
/// Bytes after the fixed part: own address, peer address, payload. Twice the
/// payload cap, because the verifier bounds a chunk's offset and length
/// separately, not their sum.
pub const TAIL_LEN: usize = ADDR_AREA + 2 * MAX_DATA_LEN;

/// One record under construction.
#[repr(C)]
pub struct Scratch {
    pub ev: SockEvent,
    pub tail: [u8; TAIL_LEN],
}

/// Scratch slots per CPU: one for the syscall hooks, one for the data hooks.
pub const SCRATCH_SLOTS: u32 = sockspy_common::SCRATCH_SLOTS;
/// Slot of the syscall hooks.
pub const SLOT_SYSCALL: u32 = 0;
/// Slot of the data hooks.
pub const SLOT_DATA: u32 = 1;
/// Slot of the TCP state hook, which runs in softirq context and can
/// interrupt either of the others.
pub const SLOT_STATE: u32 = 2;

/// Hides `value` from the optimizer. The verifier checks bounds on the
/// register a helper receives; without this, LLVM folds a clamp it can
/// prove into earlier arithmetic and the program is rejected. In loops it
/// also makes the values coming out of different branches look alike to the
/// verifier, which can then prune instead of exploring every combination.
#[inline(always)]
pub fn opaque<T: Copy>(value: T) -> T {
    // SAFETY: reads a local.
    unsafe { core::ptr::read_volatile(&value) }
}

/// Adds one to a kernel-side counter.
#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot only this CPU writes, with preemption off in the program.
        unsafe { *counter += 1 };
    }
}

/// Header for an event caused by the current task.
#[inline(always)]
fn header<R: Reader>(kind: EventKind, me: Current) -> EventHeader {
    let tcomm = R::thread_comm(me);
    // The main thread is its own group leader: no need to read the leader's
    // name (two reads on every event of a single-threaded process).
    let comm = if me.is_main_thread() {
        tcomm
    } else {
        match kernel::leader_comm::<R>(me) {
            Ok(comm) => comm,
            Err(kernel::ReadFailed) => {
                diag::read_failed(diag::Site::Comm);
                tcomm
            }
        }
    };
    EventHeader {
        kind: kind as u32,
        size: 0,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid: me.tgid(),
        tid: me.tid(),
        uid: R::uid(me),
        _pad: 0,
        comm,
        tcomm,
    }
}

/// Whether the current process's socket calls are not to be traced: it is
/// sockspy itself (whose output must not feed back into the trace), or the
/// `--pid`/`--uid`/`--comm` filters leave it out. Deciding here costs an
/// unrelated process one or two map lookups instead of a whole event.
#[inline(always)]
pub fn skip_task<R: Reader>(me: Current) -> bool {
    let tgid = me.tgid();
    if tgid == global!(CONFIG.self_pid) || crate::container::cgroup_excluded() {
        return true;
    }
    let filters = global!(CONFIG.filters);
    if filters & FILTER_PID != 0 && FILTER_PIDS.get_ptr(tgid).is_none() {
        return true;
    }
    if filters & FILTER_UID != 0 && FILTER_UIDS.get_ptr(R::uid(me)).is_none() {
        return true;
    }
    if filters & FILTER_COMM != 0 {
        let comm = if me.is_main_thread() {
            Ok(R::thread_comm(me))
        } else {
            kernel::leader_comm::<R>(me)
        };
        let Ok(comm) = comm else {
            return false;
        };
        return FILTER_COMMS.get_ptr(comm).is_none();
    }
    false
}

/// Whether `--port` leaves out the traffic of socket `info`: an IP socket
/// connected to a remote end, neither of whose ports is wanted. A socket
/// that is not connected (UDP's `sendto`/`recvfrom`) is left to userspace,
/// which sees each datagram's address, and so is one whose local port is
/// gone (a closed TCP socket is unhashed; userspace knows what it was);
/// other families have no ports, and the loader does not ask for them
/// under `--port`.
#[inline(always)]
pub fn port_excluded<R: Reader>(info: &kernel::SockInfo) -> Result<bool, kernel::ReadFailed> {
    if global!(CONFIG.filters) & FILTER_PORT == 0 || !kernel::is_inet(info.family) {
        return Ok(false);
    }
    let (local, remote) = kernel::inet_ports::<R>(info.sk)?;
    Ok(remote != 0
        && local != 0
        && FILTER_PORTS.get_ptr(local).is_none()
        && FILTER_PORTS.get_ptr(remote).is_none())
}

/// Process `me` forked: under `--pid-tree`, a child of a traced process is traced.
#[inline(always)]
pub fn follow_fork(child_tgid: u32, me: Current) {
    if global!(CONFIG.filters) & FILTER_PID_TREE == 0 {
        return;
    }
    if FILTER_PIDS.get_ptr(me.tgid()).is_some() {
        let _ = FILTER_PIDS.insert(child_tgid, 1, 0);
    }
}

/// Flags for a ring buffer write: wake the reader only once enough is queued.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= global!(CONFIG.wakeup_bytes) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Counts the outcome of one ring buffer write of a record of `kind`,
/// `len` bytes; a loss as `lost`.
#[inline(always)]
fn counted(result: Result<(), i32>, lost: Stat, kind: u32, len: usize) {
    match result {
        Ok(()) => count(Stat::Emitted),
        Err(_) => {
            count(lost);
            diag::sockspy_dropped(kind, len as u64, 1);
        }
    }
}

/// Sends a process event about the current thread `me`.
#[inline(always)]
pub fn proc_event(kind: EventKind, child_pid: u32, exit_code: i32, me: Current) {
    let mut ev = ProcEvent {
        header: header::<kernel::Probe>(kind, me),
        child_pid,
        exit_code,
    };
    ev.header.size = size_of::<ProcEvent>() as u32;
    counted(
        EVENTS.output::<ProcEvent>(&ev, wakeup_flags()),
        Stat::RingFullProc,
        kind as u32,
        size_of::<ProcEvent>(),
    );
}

/// Stores `field = value`, each with a volatile write, into a `SockEvent`.
macro_rules! fill {
    ($ev:expr, $($field:ident = $value:expr),* $(,)?) => {{
        let ev: *mut SockEvent = $ev;
        // SAFETY: fields of a valid record, exclusively ours.
        $(unsafe { core::ptr::write_volatile(&raw mut (*ev).$field, $value) };)*
    }};
}

/// A socket record being filled in a scratch slot.
pub struct Record {
    scratch: *mut Scratch,
}

impl Record {
    /// Starts a record of `kind` by the current thread `me` in `slot`, with
    /// every field at its "unknown" value.
    #[inline(always)]
    pub fn begin<R: Reader>(slot: u32, kind: EventKind, call: Call, me: Current) -> Option<Self> {
        // SAFETY: helper without preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let scratch = SCRATCH.get_ptr_mut(cpu * SCRATCH_SLOTS + slot)?;
        // SAFETY: a valid per-CPU map value.
        let ev = unsafe { &mut (*scratch).ev };
        ev.header = header::<R>(kind, me);
        // Volatile stores: LLVM turns a run of plain zero stores into a
        // call to a memset that writes a byte per loop step, which made
        // these 38 bytes cost as much as the rest of the record.
        fill!(
            ev,
            sock = 0,
            peer_sock = 0,
            sk = 0,
            peer_sk = 0,
            peer_listener = 0,
            ret = 0,
            fd = -1,
            fd2 = -1,
            family = 0,
            sock_type = 0,
            protocol = 0,
            state = 0,
            call = call as u16,
            addr_len = 0,
            peer_addr_len = 0,
            flags = 0,
            data_len = 0,
            passed_fds = 0,
            passed_files = 0,
        );
        if crate::container::task_facts::<R>(ev, me).is_err() {
            count(Stat::ReadFailed);
        }
        Some(Self { scratch })
    }

    /// The fixed part, to fill in.
    #[inline(always)]
    pub fn ev(&mut self) -> &mut SockEvent {
        // SAFETY: valid per-CPU map value, exclusively ours for the program's run.
        unsafe { &mut (*self.scratch).ev }
    }

    /// Describes the socket `info` as the record's own socket.
    #[inline(always)]
    pub fn set_sock(&mut self, info: &kernel::SockInfo) {
        let ev = self.ev();
        ev.sk = info.sk;
        ev.sock = info.ino;
        ev.family = info.family;
        ev.sock_type = info.sock_type;
        ev.protocol = info.protocol;
        ev.state = info.state;
        if kernel::is_inet(info.family) {
            match crate::container::netns(info.sk) {
                Ok(netns) => self.ev().netns = netns,
                Err(kernel::ReadFailed) => count(Stat::ReadFailed),
            }
        }
    }

    /// Names `peer` (a `struct sock`, 0 for none) as the other end.
    #[inline(always)]
    pub fn set_peer<R: Reader>(&mut self, peer: u64) -> Result<(), kernel::ReadFailed> {
        if peer != 0 {
            // Only the peer's identity: its other fields would cost reads
            // on every send and receive.
            let ino = kernel::sock_ino::<R>(peer)?;
            let ev = self.ev();
            ev.peer_sk = peer;
            ev.peer_sock = ino;
            if ino == 0 {
                self.embryo_peer(peer)?;
            }
        }
        Ok(())
    }

    /// A Unix peer without an inode is an embryo in a listener's accept
    /// queue (connected, not accepted yet) or a socket already released
    /// (closed). For an embryo: the flag, its listener's inode where the
    /// kernel keeps the link (or, where it keeps one but the link is gone,
    /// the flag that it is being accepted), and the name it carries (the
    /// listener's), so that userspace can name who will accept it before
    /// anyone has.
    #[inline(always)]
    fn embryo_peer(&mut self, peer: u64) -> Result<(), kernel::ReadFailed> {
        let state: u8 = kernel::read(peer, global!(OFFSETS.sock_state))?;
        if u32::from(state) != kernel::TCP_ESTABLISHED {
            return Ok(());
        }
        let listener = kernel::unix_listener(peer)?;
        let listener_ino = if listener == 0 {
            0
        } else {
            kernel::sock_ino::<kernel::Probe>(listener)?
        };
        let ev = self.ev();
        ev.flags |= FLAG_PEER_PENDING;
        if listener == 0 && kernel::names_listeners() {
            ev.flags |= FLAG_PEER_ACCEPTING;
        }
        ev.peer_listener = listener_ino;
        if let Some((name, len)) = kernel::unix_name::<kernel::Probe>(peer)? {
            self.peer_addr_kernel(name, len);
        }
        Ok(())
    }

    /// Sets the own address to an IP socket's end (the first address in the tail).
    #[inline(always)]
    pub fn own_addr_inet(&mut self, end: &kernel::InetEnd) {
        let copied = self.put_inet(0, end);
        self.ev().addr_len = copied;
    }

    /// Sets the peer address to an IP socket's end (after the own address).
    #[inline(always)]
    pub fn peer_addr_inet(&mut self, end: &kernel::InetEnd) {
        let at = u32::from(self.ev().addr_len);
        let copied = self.put_inet(at, end);
        self.ev().peer_addr_len = copied;
    }

    /// Writes a socket address built on the stack into the tail at `at`.
    #[inline(always)]
    fn put_inet(&mut self, at: u32, end: &kernel::InetEnd) -> u16 {
        let at = opaque(at as usize);
        if at > MAX_ADDR_LEN {
            return 0;
        }
        // SAFETY: `at + INET_END_LEN <= MAX_ADDR_LEN + 28 <= TAIL_LEN`, checked above.
        unsafe {
            (*self.scratch)
                .tail
                .as_mut_ptr()
                .add(at)
                .cast::<[u8; kernel::INET_END_LEN]>()
                .write_unaligned(end.bytes)
        };
        end.len as u16
    }

    /// Copies up to [`MAX_ADDR_LEN`] bytes of the own address from kernel memory.
    #[inline(always)]
    pub fn own_addr_kernel(&mut self, src: u64, len: u32) {
        let copied = self.copy_addr(0, src, len, false);
        self.ev().addr_len = copied;
    }

    /// Copies the peer address from kernel memory (after the own address).
    #[inline(always)]
    pub fn peer_addr_kernel(&mut self, src: u64, len: u32) {
        let at = u32::from(self.ev().addr_len);
        let copied = self.copy_addr(at, src, len, false);
        self.ev().peer_addr_len = copied;
    }

    /// Copies the peer address from user memory (a `sockaddr` a call was
    /// given); no address (a null pointer) leaves the record's as it is.
    #[inline(always)]
    pub fn peer_addr_user(&mut self, src: u64, len: u32) {
        if src == 0 {
            return;
        }
        let at = u32::from(self.ev().addr_len);
        let copied = self.copy_addr(at, src, len, true);
        self.ev().peer_addr_len = copied;
    }

    /// Copies an address of `len` bytes into the tail at `at`, cut to
    /// [`MAX_ADDR_LEN`]; returns the bytes copied (0 when the read failed).
    #[inline(always)]
    fn copy_addr(&mut self, at: u32, src: u64, len: u32, user: bool) -> u16 {
        if src == 0 || len == 0 {
            return 0;
        }
        let mut len = len as usize;
        if len > MAX_ADDR_LEN {
            len = MAX_ADDR_LEN;
            self.ev().flags |= sockspy_common::FLAG_ADDR_TRUNCATED;
        }
        let (at, len) = (opaque(at as usize), opaque(len));
        if at > MAX_ADDR_LEN || len > MAX_ADDR_LEN {
            return 0;
        }
        // SAFETY: `at + len <= 2 * MAX_ADDR_LEN <= TAIL_LEN`, checked above.
        let dst = unsafe { (*self.scratch).tail.as_mut_ptr().add(at) };
        // SAFETY: the helpers check `src` and fail rather than fault.
        let ret = unsafe {
            if user {
                bpf_probe_read_user(dst.cast(), len as u32, src as *const _)
            } else {
                bpf_probe_read_kernel(dst.cast(), len as u32, src as *const _)
            }
        };
        if ret < 0 {
            diag::note_failure(src, ret);
            diag::read_failed(diag::Site::Address);
            return 0;
        }
        len as u16
    }

    /// Appends the identity of a passed descriptor after the addresses; the
    /// payload, which follows, must not have started yet.
    #[inline(always)]
    pub fn passed_file(&mut self, file: PassedFile) {
        let ev = self.ev();
        let n = usize::from(ev.passed_files);
        if n >= MAX_PASSED_FILES || ev.data_len != 0 {
            return;
        }
        let at = opaque(
            usize::from(ev.addr_len) + usize::from(ev.peer_addr_len) + n * size_of::<PassedFile>(),
        );
        if at > ADDR_AREA - size_of::<PassedFile>() {
            return;
        }
        // SAFETY: `at + size_of::<PassedFile>() <= ADDR_AREA`, checked above.
        unsafe {
            (*self.scratch)
                .tail
                .as_mut_ptr()
                .add(at)
                .cast::<PassedFile>()
                .write_unaligned(file)
        };
        self.ev().passed_files += 1;
    }

    /// Bytes of the tail before the payload: addresses and passed files.
    #[inline(always)]
    fn before_data(ev: &SockEvent) -> usize {
        usize::from(ev.addr_len)
            + usize::from(ev.peer_addr_len)
            + usize::from(ev.passed_files) * size_of::<PassedFile>()
    }

    /// Appends up to `len` bytes of user memory at `src` to the payload, within
    /// [`MAX_DATA_LEN`] in all. Returns the bytes appended; a failed read marks
    /// the record (`FLAG_DATA_FAULT`) and appends nothing.
    #[inline(always)]
    pub fn data_user(&mut self, src: u64, len: u32) -> u32 {
        let ev = self.ev();
        let have = ev.data_len as usize;
        if have >= MAX_DATA_LEN {
            return 0;
        }
        let at = Self::before_data(ev) + have;
        let mut len = len as usize;
        if len > MAX_DATA_LEN - have {
            len = MAX_DATA_LEN - have;
        }
        let (at, len) = (opaque(at), opaque(len));
        if at >= ADDR_AREA + MAX_DATA_LEN || len == 0 {
            return 0;
        }
        // A clamp, not a third way out: LLVM folds `len == 0 || len > MAX`
        // into one range check on a copy of `len`, and Linux 6.1's verifier
        // does not carry that copy's bounds back to `len` (it rejected
        // `sys_exit_recvmsg`: "R2 min value is negative").
        let len = if len > MAX_DATA_LEN {
            MAX_DATA_LEN
        } else {
            len
        };
        // SAFETY: at < ADDR_AREA + MAX_DATA_LEN and len <= MAX_DATA_LEN, so
        // the write ends inside TAIL_LEN.
        let dst = unsafe { (*self.scratch).tail.as_mut_ptr().add(at) };
        // SAFETY: the helper checks `src` and fails rather than fault.
        let code = unsafe { bpf_probe_read_user(dst.cast(), len as u32, src as *const _) };
        if code < 0 {
            diag::note_failure(src, code);
            diag::read_failed(diag::Site::Payload);
            self.ev().flags |= sockspy_common::FLAG_DATA_FAULT;
            return 0;
        }
        self.ev().data_len += len as u32;
        opaque(len as u32)
    }

    /// Writes the record to the ring buffer.
    #[inline(always)]
    pub fn submit(self) {
        let ev = self.ev_ref();
        let len = opaque(size_of::<SockEvent>() + Self::before_data(ev) + ev.data_len as usize);
        if len > size_of::<Scratch>() {
            diag::sockspy_dropped(ev.header.kind, len as u64, 0);
            return;
        }
        let wakeup = if ev.flags & sockspy_common::FLAG_CGROUP_UNDECIDED != 0 {
            u64::from(BPF_RB_FORCE_WAKEUP)
        } else {
            wakeup_flags()
        };
        // SAFETY: as for `ev`.
        unsafe { (*self.scratch).ev.header.size = len as u32 };
        // SAFETY: `len` is within the scratch value, checked above.
        let bytes = unsafe { core::slice::from_raw_parts(self.scratch.cast::<u8>(), len) };
        let kind = self.ev_ref().header.kind;
        counted(
            EVENTS.output::<[u8]>(bytes, wakeup),
            Stat::RingFull,
            kind,
            len,
        );
    }

    #[inline(always)]
    fn ev_ref(&self) -> &SockEvent {
        // SAFETY: as for `ev`.
        unsafe { &(*self.scratch).ev }
    }
}
