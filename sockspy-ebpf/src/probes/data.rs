//! Data moving through sockets: `send` and `recv` events.
//!
//! Hooks of the two tracepoint backends: `sock_send_length` and
//! `sock_recv_length` (args: `struct sock *`, result, flags; Linux 6.3+),
//! as BTF-typed tracepoints (`tp_btf`), which read the socket and the
//! task with plain loads, or as raw tracepoints, which read them with a
//! helper call each. The kernel fires them from
//! `sock_sendmsg`/`sock_recvmsg` for every family and every way in
//! (`write`, `sendto`, `sendmmsg`, ...), so one pair of hooks sees all
//! socket I/O and nothing else. The function-probe backends
//! (`functions.rs`) hand the same three facts to [`on_data`] from the
//! functions those tracepoints follow. What the hook lacks (the
//! descriptor, the call, a datagram's destination) comes from the call
//! `sys_enter` noted in `CALLS`.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_loop,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use sockspy_common::{
    AF_UNIX, Call, EventKind, FLAG_CREDENTIALS, FLAG_PEEK, MAX_PASSED_FILES, PassedFile,
};

use crate::{
    CALLS, diag,
    emit::{self, Current, Record, SLOT_DATA, SLOT_SYSCALL, opaque},
    global,
    kernel::{self, Btf, Probe, ReadFailed, Reader, read_user},
    probes::syscalls::{CallState, inet_remote, own_name, traced},
    slots,
};

/// `EAGAIN`: an empty non-blocking socket, reported by event loops all day.
const EAGAIN: i32 = 11;
/// `MSG_PEEK`.
const MSG_PEEK: i32 = 2;
/// `SOCK_DGRAM`.
const SOCK_DGRAM: u16 = 2;
/// User-space `struct msghdr` layout (LP64 user ABI).
const MSGHDR_NAME: u64 = 0;
const MSGHDR_NAMELEN: u64 = 8;
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;
const MSGHDR_CONTROL: u64 = 32;
const MSGHDR_CONTROLLEN: u64 = 40;
/// Size of a user-space `struct mmsghdr` (LP64).
const MMSGHDR_SIZE: u64 = 64;
/// Size of a `struct cmsghdr` (LP64).
const CMSGHDR_SIZE: u64 = 16;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
const SCM_CREDENTIALS: i32 = 2;
/// iovecs followed per call: enough for any real `writev`; the rest of a
/// longer vector is not captured (the byte count stays exact).
const MAX_IOVECS: u32 = 64;
/// Control messages looked at per `sendmsg`.
const MAX_CMSGS: usize = 4;

/// BTF-typed tracepoint `sock_send_length` (`tp_btf`, Linux 6.3+).
#[btf_tracepoint(function = "sock_send_length")]
pub fn btf_sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_btf_data(&ctx, EventKind::Send);
    0
}

/// BTF-typed tracepoint `sock_recv_length` (`tp_btf`, Linux 6.3+).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn btf_sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_btf_data(&ctx, EventKind::Recv);
    0
}

/// A BTF-typed data tracepoint's socket, result and flags, to [`on_data`].
#[inline(always)]
fn on_btf_data(ctx: &BtfTracePointContext, kind: EventKind) {
    let sk: u64 = ctx.arg(0);
    // Some kernels type tracepoint arguments as maybe-null, and refuse a
    // load from one that was not checked.
    if sk != 0 {
        let (ret, flags) = (ctx.arg::<u64>(1) as i32, ctx.arg::<u64>(2) as i32);
        on_data::<Btf>(sk, ret, flags, kind, ANY_TYPE);
    }
}

/// Raw tracepoint `sock_send_length` (Linux 6.3+).
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    let (ret, flags) = (ctx.arg::<u64>(1) as i32, ctx.arg::<u64>(2) as i32);
    on_data::<Probe>(ctx.arg(0), ret, flags, EventKind::Send, ANY_TYPE);
    0
}

/// Raw tracepoint `sock_recv_length` (Linux 6.3+).
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let (ret, flags) = (ctx.arg::<u64>(1) as i32, ctx.arg::<u64>(2) as i32);
    on_data::<Probe>(ctx.arg(0), ret, flags, EventKind::Recv, ANY_TYPE);
    0
}

/// `on_data`'s `skip_type` when every socket type counts.
pub const ANY_TYPE: u16 = 0;

/// A send or receive on socket `sk` returned `ret` (`flags`: the receive
/// flags; 0 for a send, as the tracepoint has it): its event, unless the
/// socket is of type `skip_type`, which another hook reports. `R` reads
/// the socket and the task: [`Btf`] only where `sk` is BTF-typed.
#[inline(always)]
pub fn on_data<R: Reader>(sk: u64, ret: i32, flags: i32, kind: EventKind, skip_type: u16) {
    if data::<R>(sk, ret, flags, kind, skip_type).is_err() {
        diag::read_failed(if kind == EventKind::Send {
            diag::Site::Send
        } else {
            diag::Site::Recv
        });
    }
}

/// Whether `call` moves data in the direction of `kind`.
#[inline(always)]
fn direction_matches(call: Call, kind: EventKind) -> bool {
    match kind {
        EventKind::Send => matches!(
            call,
            Call::Write | Call::Writev | Call::Sendto | Call::Sendmsg | Call::Sendmmsg
        ),
        _ => matches!(
            call,
            Call::Read | Call::Readv | Call::Recvfrom | Call::Recvmsg | Call::Recvmmsg
        ),
    }
}

#[inline(always)]
fn data<R: Reader>(
    sk: u64,
    ret: i32,
    flags: i32,
    kind: EventKind,
    skip_type: u16,
) -> Result<(), ReadFailed> {
    let me = R::current();
    if ret == -EAGAIN || emit::skip_task::<R>(me) {
        return Ok(());
    }
    let info = kernel::sock_info::<R>(sk)?;
    if info.sock_type == skip_type || !traced(&info) || emit::port_excluded::<R>(&info)? {
        return Ok(());
    }
    let noted = noted_call(kind, me);
    if kind == EventKind::Recv
        && let Some((call, state)) = &noted
        && is_inet_datagram(&info)
        && source_buffer(*call, state)?.is_some()
    {
        // `recv_at_exit` reports it, with the source address.
        return Ok(());
    }
    let call = noted.map_or(Call::Unknown, |n| n.0);
    let Some(mut rec) = Record::begin::<R>(SLOT_DATA, kind, call, me) else {
        return Ok(());
    };
    rec.set_sock(&info);
    let inet = kernel::is_inet(info.family);
    if info.family == AF_UNIX {
        rec.set_peer::<R>(kernel::unix_peer::<R>(sk)?)?;
    } else {
        own_name::<R>(&mut rec, &info)?;
    }
    let ev = rec.ev();
    ev.ret = i64::from(ret);
    if flags & MSG_PEEK != 0 {
        ev.flags |= FLAG_PEEK;
    }
    if let Some((call, state)) = noted {
        rec.ev().fd = state.fd as i32;
        let msghdr = msghdr_of(call, &state);
        if kind == EventKind::Send {
            if call == Call::Sendto {
                rec.peer_addr_user(state.args[2], state.args[3] as u32);
            } else if msghdr != 0 {
                let name: u64 = read_user(msghdr + MSGHDR_NAME)?;
                let len: u32 = read_user(msghdr + MSGHDR_NAMELEN)?;
                rec.peer_addr_user(name, len);
            }
        }
        // No address given with the call: a connected socket's remote end.
        if inet && rec.ev().peer_addr_len == 0 {
            inet_remote::<R>(&mut rec, &info)?;
        }
        if kind == EventKind::Send && msghdr != 0 {
            ancillary(&mut rec, msghdr)?;
        }
        capture(&mut rec, call, &state, msghdr, ret)?;
    } else if inet {
        inet_remote::<R>(&mut rec, &info)?;
    }
    rec.submit();
    Ok(())
}

/// Copies the payload of a call, if capture is on.
#[inline(always)]
fn capture(
    rec: &mut Record,
    call: Call,
    state: &CallState,
    msghdr: u64,
    ret: i32,
) -> Result<(), ReadFailed> {
    let cap = global!(CONFIG.capture_bytes);
    if cap > 0 && ret > 0 {
        let want = if (ret as u32) < cap { ret as u32 } else { cap };
        if msghdr != 0 {
            let iov: u64 = read_user(msghdr + MSGHDR_IOV)?;
            let iovlen: u64 = read_user(msghdr + MSGHDR_IOVLEN)?;
            capture_iov(rec, iov, iovlen, want);
        } else if matches!(call, Call::Readv | Call::Writev) {
            capture_iov(rec, state.args[0], state.args[1], want);
        } else {
            rec.data_user(state.args[0], want);
        }
    }
    Ok(())
}

/// Whether `info` is an IP datagram socket, whose receives may ask for
/// each datagram's source address.
#[inline(always)]
fn is_inet_datagram(info: &kernel::SockInfo) -> bool {
    kernel::is_inet(info.family) && info.sock_type == SOCK_DGRAM
}

/// Where a receive's source address will be once the call returns: the
/// user buffer and the user length a `recvfrom`/`recvmsg` asked the kernel
/// to fill. `None` when the call has none.
///
/// The data tracepoint fires before the kernel copies the address out, and
/// does not see the kernel's copy, so such receives on IP datagram sockets
/// are reported at `sys_exit` instead, when the user's buffer holds it.
#[inline(always)]
fn source_buffer(call: Call, state: &CallState) -> Result<Option<(u64, u64)>, ReadFailed> {
    let (name, len_at) = match call {
        Call::Recvfrom => (state.args[2], state.args[3]),
        Call::Recvmsg => {
            let msghdr = state.args[0];
            (read_user(msghdr + MSGHDR_NAME)?, msghdr + MSGHDR_NAMELEN)
        }
        _ => return Ok(None),
    };
    Ok((name != 0 && len_at != 0).then_some((name, len_at)))
}

/// `sys_exit` of a `recvfrom`/`recvmsg` on an IP datagram socket that asked
/// for the source address: the `recv` event, with that address as the peer.
pub fn recv_at_exit(
    call: Call,
    state: &CallState,
    ret: i64,
    me: Current,
) -> Result<(), ReadFailed> {
    if ret == -i64::from(EAGAIN) {
        return Ok(());
    }
    // The buffer first: most receives ask for no address, and finding the
    // socket behind the descriptor takes a dozen reads.
    let Some((name, len_at)) = source_buffer(call, state)? else {
        return Ok(());
    };
    let Some(sk) = kernel::fd_to_sock(state.fd)? else {
        return Ok(());
    };
    let info = kernel::sock_info::<Probe>(sk)?;
    if !traced(&info) || !is_inet_datagram(&info) {
        return Ok(());
    }
    let Some(mut rec) = Record::begin::<Probe>(SLOT_SYSCALL, EventKind::Recv, call, me) else {
        return Ok(());
    };
    rec.set_sock(&info);
    own_name::<Probe>(&mut rec, &info)?;
    let ev = rec.ev();
    ev.ret = ret;
    ev.fd = state.fd as i32;
    if ret >= 0 {
        let len: u32 = read_user(len_at)?;
        rec.peer_addr_user(name, len);
    }
    if rec.ev().peer_addr_len == 0 {
        inet_remote::<Probe>(&mut rec, &info)?;
    }
    capture(&mut rec, call, state, msghdr_of(call, state), ret as i32)?;
    rec.submit();
    Ok(())
}

/// The call `sys_enter` noted for this thread, if it moves data in the
/// direction of `kind`; a copy, taken before a `*mmsg` call moves on to its
/// next message.
#[inline(always)]
fn noted_call(kind: EventKind, me: Current) -> Option<(Call, CallState)> {
    slots::with(&CALLS, me.tid(), |state| {
        let call = Call::from_u16(state.call as u16);
        if !direction_matches(call, kind) {
            return None;
        }
        let copy = *state;
        if matches!(call, Call::Sendmmsg | Call::Recvmmsg) {
            state.index += 1;
        }
        Some((call, copy))
    })
}

/// The user `struct msghdr` of a `*msg` call (for `*mmsg`, the current message's); 0 for other calls.
#[inline(always)]
fn msghdr_of(call: Call, state: &CallState) -> u64 {
    match call {
        Call::Sendmsg | Call::Recvmsg => state.args[0],
        Call::Sendmmsg | Call::Recvmmsg => state.args[0] + u64::from(state.index) * MMSGHDR_SIZE,
        _ => 0,
    }
}

/// One walk over a user `iovec` array, shared with [`iov_step`]. It does
/// not change from one step to the next: the bytes captured so far are
/// read back from the record, a map value whose contents the verifier does
/// not track, so every step starts from the same state and the verifier
/// checks the step once instead of once per possible count of bytes left.
struct IovWalk<'a> {
    rec: &'a mut Record,
    iov: u64,
    count: u64,
    /// Bytes wanted in all.
    want: u32,
}

/// Copies the first `want` bytes spread over a user `iovec` array.
///
/// The walk runs under `bpf_loop` (Linux 5.17, older than the data hooks):
/// the verifier checks [`iov_step`] once instead of every unrolled
/// iteration times every path around it, which overflowed its budget.
#[inline(always)]
fn capture_iov(rec: &mut Record, iov: u64, count: u64, want: u32) {
    let mut walk = IovWalk {
        rec,
        iov,
        count,
        want,
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = iov_step;
    // SAFETY: `step` has the callback signature bpf_loop expects and `walk`
    // outlives the call.
    unsafe { bpf_loop(MAX_IOVECS, step as *mut c_void, (&raw mut walk).cast(), 0) };
}

/// One iteration of [`capture_iov`]: returns 1 to stop the walk.
#[inline(never)]
extern "C" fn iov_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `IovWalk` capture_iov handed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<IovWalk>() };
    let index = index & 0xffff_ffff;
    let have = walk.rec.ev().data_len;
    if index >= walk.count || have >= walk.want {
        return 1;
    }
    let Ok([base, len]) = read_user::<[u64; 2]>(walk.iov + index * 16) else {
        diag::read_failed(diag::Site::Iovec);
        return 1;
    };
    let left = walk.want - have;
    let chunk = if len < u64::from(left) {
        len as u32
    } else {
        left
    };
    if walk.rec.data_user(base, chunk) < chunk {
        return 1;
    }
    0
}

/// Notes what a `sendmsg` passes besides data: descriptors (`SCM_RIGHTS`)
/// and credentials (`SCM_CREDENTIALS`).
#[inline(always)]
fn ancillary(rec: &mut Record, msghdr: u64) -> Result<(), ReadFailed> {
    let control: u64 = read_user(msghdr + MSGHDR_CONTROL)?;
    let control_len: u64 = read_user(msghdr + MSGHDR_CONTROLLEN)?;
    let mut next = 0u64;
    for _ in 0..MAX_CMSGS {
        let offset = opaque(next);
        if control == 0 || offset + CMSGHDR_SIZE > control_len {
            break;
        }
        let [len, kind]: [u64; 2] = read_user(control + offset)?;
        let (level, kind) = (kind as u32 as i32, (kind >> 32) as i32);
        if len < CMSGHDR_SIZE {
            break;
        }
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            let fds = (len - CMSGHDR_SIZE) / 4;
            let ev = rec.ev();
            ev.passed_fds = ev.passed_fds.saturating_add(fds as u16);
            identify_passed(rec, control + offset + CMSGHDR_SIZE, fds);
        } else if level == SOL_SOCKET && kind == SCM_CREDENTIALS {
            rec.ev().flags |= FLAG_CREDENTIALS;
        }
        // CMSG_NXTHDR: lengths are padded to 8 bytes.
        next = offset + ((len + 7) & !7);
    }
    Ok(())
}

/// Records which files the first descriptors of an `SCM_RIGHTS` array
/// (`count` ints at `fds` in user memory) are: the sender still holds them
/// while `sendmsg` runs, so this is the one cheap moment to tell.
#[inline(always)]
fn identify_passed(rec: &mut Record, fds: u64, count: u64) {
    for i in 0..MAX_PASSED_FILES as u64 {
        if i >= count {
            break;
        }
        let Ok(fd) = read_user::<i32>(fds + i * 4) else {
            diag::read_failed(diag::Site::PassedFile);
            break;
        };
        let identity = kernel::fd_to_file(i64::from(fd)).and_then(|file| match file {
            Some(file) => kernel::file_identity(file),
            None => Ok((0, 0)),
        });
        let Ok((ino, mode)) = identity else {
            diag::read_failed(diag::Site::PassedFile);
            break;
        };
        rec.passed_file(PassedFile {
            ino,
            fd,
            mode,
            _pad: 0,
        });
    }
}
