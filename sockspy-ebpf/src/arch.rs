//! What the syscall tracepoints look like on this CPU architecture.
//!
//! `sys_enter`/`sys_exit` hand over the raw `struct pt_regs` and syscall
//! number. Both are user ABI (the register layout is in uapi
//! `asm/ptrace.h`, the numbers in `unistd_64.h`), so unlike kernel struct
//! offsets they are fixed per architecture and safe to write down here.

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!("sockspy's syscall hooks know only x86_64 so far");

/// Byte offsets of the argument registers in `struct pt_regs`, in argument order
/// (`rdi, rsi, rdx, r10, r8, r9`).
pub const ARG_REGS: [usize; 6] = [112, 104, 96, 56, 72, 64];
/// Offset of `orig_ax`: the syscall number, as `sys_exit` needs it.
pub const ORIG_AX: usize = 120;
/// Offset of `cs`: tells 64-bit syscalls from 32-bit compat ones.
pub const CS: usize = 136;
/// `__USER_CS`: the code segment of 64-bit user mode. A compat (ia32) task
/// uses other syscall numbers, which would be misread, so it is skipped.
pub const USER64_CS: u64 = 0x33;
/// `struct pt_regs` in 64-bit words: read whole with one helper call,
/// which costs less than one call per register.
pub const PT_REGS_WORDS: usize = 21;

pub const NR_READ: u64 = 0;
pub const NR_WRITE: u64 = 1;
pub const NR_CLOSE: u64 = 3;
pub const NR_READV: u64 = 19;
pub const NR_WRITEV: u64 = 20;
pub const NR_SOCKET: u64 = 41;
pub const NR_CONNECT: u64 = 42;
pub const NR_ACCEPT: u64 = 43;
pub const NR_SENDTO: u64 = 44;
pub const NR_RECVFROM: u64 = 45;
pub const NR_SENDMSG: u64 = 46;
pub const NR_RECVMSG: u64 = 47;
pub const NR_BIND: u64 = 49;
pub const NR_LISTEN: u64 = 50;
pub const NR_SOCKETPAIR: u64 = 53;
pub const NR_ACCEPT4: u64 = 288;
pub const NR_RECVMMSG: u64 = 299;
pub const NR_SENDMMSG: u64 = 307;
