//! Socket life cycle from the syscall tracepoints: `socket`, `bind`,
//! `listen`, `connect`, `accept`, `socketpair` and `close`.
//!
//! Hooks, one of two sets: the `syscalls:sys_enter_*`/`sys_exit_*`
//! tracepoints of each call sockspy follows (where the kernel has them,
//! `CONFIG_FTRACE_SYSCALLS`), so that other syscalls never run a program;
//! or else the raw tracepoints `sys_enter` and `sys_exit` (Linux 4.17+),
//! which every syscall on the machine passes through, so their common path
//! is a number compare and out. Either way the entry notes the arguments
//! in `CALLS`, keyed by thread, and the exit turns them and the result into
//! an event. The send/receive calls are only noted here (for their fd,
//! destination and buffers); `data.rs` emits their events.

use aya_ebpf::{
    EbpfContext,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sockspy_common::{AF_UNIX, Call, EventKind, family_bit, wanted};

use crate::{
    CALLS, arch, diag,
    emit::{self, Current, Record, SLOT_SYSCALL},
    global,
    kernel::{self, Probe, ReadFailed, Reader},
    slots,
};

/// A call between `sys_enter` and `sys_exit`.
///
/// `args` by call: `connect`/`bind`: sockaddr, addrlen. `socket`: domain,
/// type, protocol. `socketpair`: domain, type, protocol, sv. `sendto`/
/// `recvfrom`: buf, len, sockaddr, addrlen. `sendmsg`/`recvmsg`: msghdr.
/// `sendmmsg`/`recvmmsg`: mmsghdr vector, vlen. `read`/`write`: buf, len.
/// `readv`/`writev`: iovec, iovcnt.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallState {
    /// A [`Call`] number.
    pub call: u32,
    /// `sendmmsg`/`recvmmsg`: which message of the vector comes next.
    pub index: u32,
    /// The descriptor argument (-1 for calls without one).
    pub fd: i64,
    pub args: [u64; 4],
}

/// Which call a syscall number is, for the calls sockspy follows.
#[inline(always)]
fn call_of(nr: u64) -> Option<Call> {
    Some(match nr {
        arch::NR_READ => Call::Read,
        arch::NR_WRITE => Call::Write,
        arch::NR_READV => Call::Readv,
        arch::NR_WRITEV => Call::Writev,
        arch::NR_CLOSE => Call::Close,
        arch::NR_SOCKET => Call::Socket,
        arch::NR_CONNECT => Call::Connect,
        arch::NR_ACCEPT => Call::Accept,
        arch::NR_ACCEPT4 => Call::Accept4,
        arch::NR_SENDTO => Call::Sendto,
        arch::NR_RECVFROM => Call::Recvfrom,
        arch::NR_SENDMSG => Call::Sendmsg,
        arch::NR_RECVMSG => Call::Recvmsg,
        arch::NR_SENDMMSG => Call::Sendmmsg,
        arch::NR_RECVMMSG => Call::Recvmmsg,
        arch::NR_BIND => Call::Bind,
        arch::NR_LISTEN => Call::Listen,
        arch::NR_SOCKETPAIR => Call::Socketpair,
        _ => return None,
    })
}

/// `read`/`write`/`readv`/`writev` run on every kind of file; they are only
/// worth noting when payload capture needs their buffers.
#[inline(always)]
fn is_file_io(call: Call) -> bool {
    matches!(call, Call::Read | Call::Write | Call::Readv | Call::Writev)
}

/// Whether a socket is of a family (and, for IP, a protocol) the user asked for.
#[inline(always)]
pub fn traced(info: &kernel::SockInfo) -> bool {
    wanted(global!(CONFIG.families), info.family, info.protocol)
}

/// Whether `family` may hold sockets the user asked for (before the
/// protocol is known).
#[inline(always)]
fn traced_family(family: u16) -> bool {
    family_bit(family) & global!(CONFIG.families) != 0
}

/// Raw tracepoint `sys_enter` (args: `struct pt_regs *`, syscall number).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    if try_sys_enter(&ctx).is_err() {
        diag::read_failed(diag::Site::SysEnter);
    }
    0
}

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), ReadFailed> {
    let nr: u64 = ctx.arg(1);
    let Some(call) = call_of(nr) else {
        return Ok(());
    };
    let me = Probe::current();
    if !followed(call, me) {
        return Ok(());
    }
    let regs: [u64; arch::PT_REGS_WORDS] = kernel::read(ctx.arg(0), 0)?;
    if regs[arch::CS / 8] != arch::USER64_CS {
        return Ok(());
    }
    enter(call, arch::ARG_REGS.map(|offset| regs[offset / 8]), me)
}

/// Whether the current thread's `call` is one to follow: `read` and friends
/// only for payload capture, and only for processes the filters keep.
#[inline(always)]
fn followed(call: Call, me: Current) -> bool {
    !(is_file_io(call) && global!(CONFIG.capture_bytes) == 0) && !emit::skip_task::<Probe>(me)
}

/// A followed call begins, with its six arguments: `close` is handled
/// here; every other call is noted for its exit.
#[inline(always)]
fn enter(call: Call, arg: [u64; 6], me: Current) -> Result<(), ReadFailed> {
    let fd = arg[0] as i32 as i64;
    let state = match call {
        Call::Close => return close(fd, me),
        Call::Socket | Call::Socketpair => {
            if !traced_family(arg[0] as u16) {
                return Ok(());
            }
            CallState {
                call: call as u32,
                index: 0,
                fd: -1,
                args: [arg[0], arg[1], arg[2], arg[3]],
            }
        }
        Call::Sendto | Call::Recvfrom => CallState {
            call: call as u32,
            index: 0,
            fd,
            args: [arg[1], arg[2], arg[4], arg[5]],
        },
        _ => CallState {
            call: call as u32,
            index: 0,
            fd,
            args: [arg[1], arg[2], 0, 0],
        },
    };
    slots::put(&CALLS, me.tid(), state);
    Ok(())
}

/// Raw tracepoint `sys_exit` (args: `struct pt_regs *`, return value).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    if try_sys_exit(&ctx).is_err() {
        diag::read_failed(diag::Site::SysExit);
    }
    0
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), ReadFailed> {
    let regs: u64 = ctx.arg(0);
    let nr: u64 = kernel::read(regs, arch::ORIG_AX as u32)?;
    let Some(call) = call_of(nr) else {
        return Ok(());
    };
    exit(call, ctx.arg(1), Probe::current())
}

/// A call ends with `ret`: if its entry was noted, the event.
#[inline(always)]
fn exit(call: Call, ret: i64, me: Current) -> Result<(), ReadFailed> {
    if call == Call::Close || (is_file_io(call) && global!(CONFIG.capture_bytes) == 0) {
        return Ok(());
    }
    let Some(state) = slots::take(&CALLS, me.tid()) else {
        return Ok(());
    };
    if state.call != call as u32 {
        // A call whose exit we missed (the table was full, or sockspy
        // started in between); this entry is stale.
        return Ok(());
    }
    let mut done = Done {
        kind: EventKind::Connect,
        call,
        fd: state.fd,
        fd2: -1,
        ret,
        user_addr: (0, 0),
    };
    match call {
        Call::Socket if ret >= 0 => {
            done.kind = EventKind::Socket;
            done.fd = ret;
        }
        Call::Bind => {
            done.kind = EventKind::Bind;
            done.user_addr = (state.args[0], state.args[1] as u32);
        }
        Call::Listen => done.kind = EventKind::Listen,
        Call::Connect => done.user_addr = (state.args[0], state.args[1] as u32),
        // A non-blocking accept with nothing queued is not news.
        Call::Accept | Call::Accept4 if ret >= 0 => {
            done.kind = EventKind::Accept;
            done.fd = ret;
            done.fd2 = state.fd;
        }
        Call::Socketpair if ret == 0 => return socketpair(state.args[3], me),
        Call::Recvfrom | Call::Recvmsg => {
            return crate::probes::data::recv_at_exit(call, &state, ret, me);
        }
        _ => return Ok(()),
    }
    one_fd(&done, me)
}

/// Where a `syscalls:` tracepoint record keeps the arguments (`sys_enter_*`)
/// or the result (`sys_exit_*`): after the common header and `__syscall_nr`.
const SYSCALL_ARGS_AT: usize = 16;

/// Word `index` of a `syscalls:` tracepoint record's arguments (or result).
///
/// A plain load: a tracepoint program may read its record directly, which
/// costs nothing, where a probe read is a helper call.
#[inline(always)]
fn record_word(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: an aligned 8-byte read inside the record buffer, which the
    // verifier checks; the kernel checks at attach time that the record
    // is that long.
    unsafe {
        ctx.as_ptr()
            .cast::<u64>()
            .add(SYSCALL_ARGS_AT / 8 + index)
            .read()
    }
}

/// How many arguments `call` takes. Its `sys_enter_*` record holds no
/// more, and the kernel refuses to attach a program that may read past the
/// end of its record.
#[inline(always)]
fn arg_count(call: Call) -> usize {
    match call {
        Call::Close => 1,
        Call::Listen => 2,
        Call::Socketpair | Call::Accept4 | Call::Sendmmsg => 4,
        Call::Recvmmsg => 5,
        Call::Sendto | Call::Recvfrom => 6,
        _ => 3,
    }
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, call: Call) -> u32 {
    let me = Probe::current();
    // `call` is a constant in each program, so the count folds away and
    // only the record's own words are read.
    let args = core::array::from_fn(|i| {
        if i < arg_count(call) {
            record_word(ctx, i)
        } else {
            0
        }
    });
    if followed(call, me) && enter(call, args, me).is_err() {
        diag::read_failed(diag::Site::call(call));
    }
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, call: Call) -> u32 {
    if exit(call, record_word(ctx, 0) as i64, Probe::current()).is_err() {
        diag::read_failed(diag::Site::call(call));
    }
    0
}

/// The `syscalls:sys_enter_NAME` and `sys_exit_NAME` programs of each
/// call (Linux 4.7+ with `CONFIG_FTRACE_SYSCALLS`). Each is the shared
/// entry or exit with its call fixed, so the compiler keeps only that
/// call's path. The loader names them the same way.
macro_rules! syscall_programs {
    ($($enter:ident / $exit:ident => $call:ident),* $(,)?) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, Call::$call)
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, Call::$call)
        }
    )*};
}

syscall_programs!(
    sys_enter_read / sys_exit_read => Read,
    sys_enter_write / sys_exit_write => Write,
    sys_enter_readv / sys_exit_readv => Readv,
    sys_enter_writev / sys_exit_writev => Writev,
    sys_enter_socket / sys_exit_socket => Socket,
    sys_enter_socketpair / sys_exit_socketpair => Socketpair,
    sys_enter_bind / sys_exit_bind => Bind,
    sys_enter_listen / sys_exit_listen => Listen,
    sys_enter_connect / sys_exit_connect => Connect,
    sys_enter_accept / sys_exit_accept => Accept,
    sys_enter_accept4 / sys_exit_accept4 => Accept4,
    sys_enter_sendto / sys_exit_sendto => Sendto,
    sys_enter_recvfrom / sys_exit_recvfrom => Recvfrom,
    sys_enter_sendmsg / sys_exit_sendmsg => Sendmsg,
    sys_enter_recvmsg / sys_exit_recvmsg => Recvmsg,
    sys_enter_sendmmsg / sys_exit_sendmmsg => Sendmmsg,
    sys_enter_recvmmsg / sys_exit_recvmmsg => Recvmmsg,
);

/// `close` is finished at its entry: the exit has nothing to add.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, Call::Close)
}

/// A finished call about one descriptor.
struct Done {
    kind: EventKind,
    call: Call,
    /// The descriptor the event is about.
    fd: i64,
    /// The listening descriptor of an accept, else -1.
    fd2: i64,
    ret: i64,
    /// A `sockaddr` the call was given (pointer, length; 0 if none): the own
    /// address for `bind`, the peer address for `connect`.
    user_addr: (u64, u32),
}

/// Emits an event about one descriptor, if it is a socket of a traced family.
fn one_fd(done: &Done, me: Current) -> Result<(), ReadFailed> {
    let Some(sk) = kernel::fd_to_sock(done.fd)? else {
        return Ok(());
    };
    let info = kernel::sock_info::<Probe>(sk)?;
    if !traced(&info) {
        return Ok(());
    }
    let Some(mut rec) = Record::begin::<Probe>(SLOT_SYSCALL, done.kind, done.call, me) else {
        return Ok(());
    };
    rec.set_sock(&info);
    let ev = rec.ev();
    ev.fd = done.fd as i32;
    ev.fd2 = done.fd2 as i32;
    ev.ret = done.ret;
    let (addr, addr_len) = done.user_addr;
    if done.kind == EventKind::Bind && kernel::is_inet(info.family) && done.ret == 0 {
        // The port the kernel picked when asked for port 0.
        own_name::<Probe>(&mut rec, &info)?;
    } else if done.kind == EventKind::Bind {
        // The requested name, right even when the bind failed.
        rec.peer_addr_user(addr, addr_len);
        let ev = rec.ev();
        ev.addr_len = ev.peer_addr_len;
        ev.peer_addr_len = 0;
    } else {
        own_name::<Probe>(&mut rec, &info)?;
        let peer = if info.family == AF_UNIX {
            kernel::unix_peer::<Probe>(sk)?
        } else {
            0
        };
        rec.set_peer::<Probe>(peer)?;
        // An embryo's name (`set_peer`) is the listener's as the kernel has
        // it: right whatever name (a symlink, another mount) the caller used.
        // Where the kernel also names the listener (6.10+), userspace has
        // its name from that, and the name the caller used is worth more.
        if rec.ev().peer_addr_len == 0
            || (addr != 0 && done.kind == EventKind::Connect && kernel::names_listeners())
        {
            if addr != 0 {
                rec.peer_addr_user(addr, addr_len);
            } else if kernel::is_inet(info.family) {
                inet_remote::<Probe>(&mut rec, &info)?;
            } else if peer != 0
                && let Some((name, len)) = kernel::unix_name::<Probe>(peer)?
            {
                rec.peer_addr_kernel(name, len);
            }
        }
    }
    rec.submit();
    Ok(())
}

/// Copies the socket's own bound name (Unix) or local address and port (IP)
/// into the record.
#[inline(always)]
pub fn own_name<R: Reader>(rec: &mut Record, info: &kernel::SockInfo) -> Result<(), ReadFailed> {
    if info.family == AF_UNIX {
        if let Some((name, len)) = kernel::unix_name::<R>(info.sk)? {
            rec.own_addr_kernel(name, len);
        }
    } else if kernel::is_inet(info.family) {
        let local = kernel::inet_local::<R>(info.sk, info.family)?;
        if local.is_set() {
            rec.own_addr_inet(&local);
        }
    }
    Ok(())
}

/// Copies an IP socket's remote address and port into the record, if it
/// is connected.
#[inline(always)]
pub fn inet_remote<R: Reader>(rec: &mut Record, info: &kernel::SockInfo) -> Result<(), ReadFailed> {
    let remote = kernel::inet_remote::<R>(info.sk, info.family)?;
    if remote.has_port() {
        rec.peer_addr_inet(&remote);
    }
    Ok(())
}

/// Emits the two ends of a new socket pair as one event.
fn socketpair(sv: u64, me: Current) -> Result<(), ReadFailed> {
    let fds: [i32; 2] = kernel::read_user(sv)?;
    let (Some(sk0), Some(sk1)) = (
        kernel::fd_to_sock(i64::from(fds[0]))?,
        kernel::fd_to_sock(i64::from(fds[1]))?,
    ) else {
        return Ok(());
    };
    let info = kernel::sock_info::<Probe>(sk0)?;
    let Some(mut rec) =
        Record::begin::<Probe>(SLOT_SYSCALL, EventKind::Socketpair, Call::Socketpair, me)
    else {
        return Ok(());
    };
    rec.set_sock(&info);
    rec.set_peer::<Probe>(sk1)?;
    let ev = rec.ev();
    ev.fd = fds[0];
    ev.fd2 = fds[1];
    rec.submit();
    Ok(())
}

/// Emits a `close` of `fd` if it is a socket, before the kernel lets go of it.
fn close(fd: i64, me: Current) -> Result<(), ReadFailed> {
    let Some(sk) = kernel::fd_to_sock(fd)? else {
        return Ok(());
    };
    let info = kernel::sock_info::<Probe>(sk)?;
    if !traced(&info) {
        return Ok(());
    }
    let Some(mut rec) = Record::begin::<Probe>(SLOT_SYSCALL, EventKind::Close, Call::Close, me)
    else {
        return Ok(());
    };
    rec.set_sock(&info);
    if info.family == AF_UNIX {
        rec.set_peer::<Probe>(kernel::unix_peer::<Probe>(sk)?)?;
    } else {
        own_name::<Probe>(&mut rec, &info)?;
        inet_remote::<Probe>(&mut rec, &info)?;
    }
    rec.ev().fd = fd as i32;
    rec.submit();
    Ok(())
}
