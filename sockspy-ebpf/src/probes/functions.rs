//! The function-probe backends: `send` and `recv` events on kernels
//! without the `sock:sock_send_length`/`sock_recv_length` tracepoints
//! (older than 6.3), from the functions those tracepoints follow.
//!
//! `sock_sendmsg`/`sock_recvmsg` hand every send and receive to the
//! socket's `proto_ops`: `unix_stream_*`, `unix_dgram_*`,
//! `unix_seqpacket_*`, `inet_*` and `inet6_*`. Called through a pointer,
//! these functions always exist out of line, and they have kept their
//! arguments for as long as BPF has existed. The tracepoints fire the
//! moment they return, with the same socket, result and receive flags,
//! so all backends hand the same facts to [`on_data`] and the events
//! cannot differ.
//!
//! `unix_seqpacket_*` call `unix_dgram_*`, or have them inlined (6.12
//! inlines `unix_dgram_recvmsg`), so a seqpacket call may or may not pass
//! through the dgram function too. Each fexit therefore reports its own
//! sockets: the dgram ones skip seqpacket sockets. The kprobe backend needs
//! no such care: an inner entry probe takes over the outer one's slot in
//! `PROBED`, so the outer return finds nothing.
//!
//! - fentry (here fexit: a BPF trampoline, Linux 5.5+) sees the arguments
//!   and the result at once. One program per function: a trampoline
//!   program is verified for one function's BTF signature.
//! - kprobe: a kretprobe sees only the result, so a kprobe at entry keeps
//!   the socket and flags per thread in `PROBED`, and the kretprobe takes
//!   them. The kernel keeps a bounded number of return probes in flight
//!   (`maxactive`, at least 10): receives blocked beyond that return
//!   unseen, which is one reason `auto` prefers the other backends.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use sockspy_common::{EventKind, Stat};

use crate::{
    PROBED, diag, emit,
    kernel::{self, Probe, ReadFailed, Reader},
    probes::data::{ANY_TYPE, on_data},
    slots,
};

/// `SOCK_SEQPACKET`.
const SOCK_SEQPACKET: u16 = 5;

/// A `struct socket *` argument's sock, and the event for it, unless the
/// socket is of type `skip_type`.
#[inline(always)]
fn socket_data(socket: u64, ret: i32, flags: i32, kind: EventKind, skip_type: u16) {
    match kernel::socket_sock::<Probe>(socket) {
        Ok(Some(sk)) => on_data::<Probe>(sk, ret, flags, kind, skip_type),
        Ok(None) => {}
        Err(ReadFailed) => diag::read_failed(diag::Site::Socket),
    }
}

/// fexit programs of the send functions (`socket`, `msghdr`, `len`;
/// result after them) and of the receive functions (the same and `flags`),
/// each with the socket type it leaves to another hook.
macro_rules! fexit_programs {
    (
        send: [$($send:ident => $send_function:literal, $send_skip:expr;)*]
        recv: [$($recv:ident => $recv_function:literal, $recv_skip:expr;)*]
    ) => {
        $(
            #[fexit(function = $send_function)]
            pub fn $send(ctx: FExitContext) -> i32 {
                let ret = ctx.arg::<u64>(3) as i32;
                socket_data(ctx.arg(0), ret, 0, EventKind::Send, $send_skip);
                0
            }
        )*
        $(
            #[fexit(function = $recv_function)]
            pub fn $recv(ctx: FExitContext) -> i32 {
                let (flags, ret) = (ctx.arg::<u64>(3) as i32, ctx.arg::<u64>(4) as i32);
                socket_data(ctx.arg(0), ret, flags, EventKind::Recv, $recv_skip);
                0
            }
        )*
    };
}

fexit_programs!(
    send: [
        fexit_unix_stream_sendmsg => "unix_stream_sendmsg", ANY_TYPE;
        fexit_unix_dgram_sendmsg => "unix_dgram_sendmsg", SOCK_SEQPACKET;
        fexit_unix_seqpacket_sendmsg => "unix_seqpacket_sendmsg", ANY_TYPE;
        fexit_inet_sendmsg => "inet_sendmsg", ANY_TYPE;
        fexit_inet6_sendmsg => "inet6_sendmsg", ANY_TYPE;
    ]
    recv: [
        fexit_unix_stream_recvmsg => "unix_stream_recvmsg", ANY_TYPE;
        fexit_unix_dgram_recvmsg => "unix_dgram_recvmsg", SOCK_SEQPACKET;
        fexit_unix_seqpacket_recvmsg => "unix_seqpacket_recvmsg", ANY_TYPE;
        fexit_inet_recvmsg => "inet_recvmsg", ANY_TYPE;
        fexit_inet6_recvmsg => "inet6_recvmsg", ANY_TYPE;
    ]
);

/// What the entry kprobe keeps for the return probe.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Probed {
    pub socket: u64,
    /// The receive flags (the fourth argument; unused for a send).
    pub flags: u64,
}

/// kprobe at the entry of every send and receive function: keeps the
/// socket and flags of a call the filters keep.
#[kprobe]
pub fn kprobe_sock_io(ctx: ProbeContext) -> u32 {
    let me = Probe::current();
    if emit::skip_task::<Probe>(me) {
        return 0;
    }
    let (Some(socket), Some(flags)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3)) else {
        emit::count(Stat::ReadFailed);
        return 0;
    };
    slots::put(&PROBED, me.tid(), Probed { socket, flags });
    0
}

/// The call `kprobe_sock_io` kept for this thread, taken out.
#[inline(always)]
fn take_probed() -> Option<Probed> {
    slots::take(&PROBED, Probe::current().tid())
}

/// kretprobe of the send functions.
#[kretprobe]
pub fn kretprobe_sendmsg(ctx: RetProbeContext) -> u32 {
    if let Some(probed) = take_probed() {
        socket_data(
            probed.socket,
            ctx.ret::<u64>() as i32,
            0,
            EventKind::Send,
            ANY_TYPE,
        );
    }
    0
}

/// kretprobe of the receive functions.
#[kretprobe]
pub fn kretprobe_recvmsg(ctx: RetProbeContext) -> u32 {
    if let Some(probed) = take_probed() {
        let flags = probed.flags as i32;
        socket_data(
            probed.socket,
            ctx.ret::<u64>() as i32,
            flags,
            EventKind::Recv,
            ANY_TYPE,
        );
    }
    0
}
