//! TCP connection state: the `state` event.
//!
//! Hook: raw tracepoint `inet_sock_set_state` (args: `const struct sock *`,
//! old state, new state; Linux 4.16+). It fires for every TCP state change,
//! often in softirq context on behalf of whichever task happened to run, so
//! the record names the socket (inode, addresses) and userspace names its
//! holder. Only the changes an operator asks about are kept: a connection
//! became established, or it closed (with the pending error, which says
//! reset or refused).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sockspy_common::{Call, EventKind, IPPROTO_TCP};

use crate::{
    diag,
    emit::{self, Record, SLOT_STATE},
    kernel::{self, Probe, ReadFailed, Reader, TCP_ESTABLISHED},
    probes::syscalls::{inet_remote, own_name, traced},
};

/// `TCP_CLOSE`.
const TCP_CLOSE: u32 = 7;

/// Raw tracepoint `inet_sock_set_state`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if try_state(&ctx).is_err() {
        diag::read_failed(diag::Site::State);
    }
    0
}

fn try_state(ctx: &RawTracePointContext) -> Result<(), ReadFailed> {
    let sk: u64 = ctx.arg(0);
    let new = ctx.arg::<u64>(2) as u32;
    if new != TCP_ESTABLISHED && new != TCP_CLOSE {
        return Ok(());
    }
    let info = kernel::sock_info::<Probe>(sk)?;
    if info.protocol != IPPROTO_TCP || !traced(&info) || emit::port_excluded::<Probe>(&info)? {
        return Ok(());
    }
    let error = kernel::sock_error(sk)?;
    let me = Probe::current();
    let Some(mut rec) = Record::begin::<Probe>(SLOT_STATE, EventKind::State, Call::Unknown, me)
    else {
        return Ok(());
    };
    rec.set_sock(&info);
    let ev = rec.ev();
    ev.state = new as u16;
    ev.ret = -i64::from(error);
    own_name::<Probe>(&mut rec, &info)?;
    inet_remote::<Probe>(&mut rec, &info)?;
    rec.submit();
    Ok(())
}
