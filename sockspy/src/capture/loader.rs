//! Loading the kernel programs and attaching them to their tracepoints.
//!
//! Everything that can make tracing impossible is found here, before any
//! event flows: missing privileges, a kernel without BTF, a missing struct
//! field or tracepoint. Each becomes an [`Unfit`] error with one line that
//! says what is missing and what to do, which `main` turns into exit code 2.

use std::{fs, io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::Program,
};
use sockspy_common::{
    COMM_LEN, FAMILY_INET, FAMILY_INET6, FAMILY_UNIX, FILTER_CGROUP, FILTER_COMM, FILTER_PID,
    FILTER_PID_TREE, FILTER_PORT, FILTER_UID, KernelOffsets, MAX_DATA_LEN, MAX_EVENT_LEN,
    PROTO_TCP, PROTO_UDP, SCRATCH_SLOTS, STAT_COUNT, Stat, TraceConfig,
};

use aya_log::{EbpfLogger, Level};

use crate::{capture::btf::Btf, capture::offsets};

/// The compiled kernel programs (built by build.rs).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockspy"));

/// The environment cannot trace; the message says why and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unfit(pub String);

/// Where `send` and `recv` events come from: every other hook is a
/// tracepoint that all supported kernels have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The `sock:sock_send_length`/`sock_recv_length` tracepoints (Linux
    /// 6.3+) as BTF-typed tracepoints, which read the socket with plain loads.
    TpBtf,
    /// The same tracepoints as raw tracepoints, for kernels that refuse
    /// BTF-typed ones.
    Tracepoint,
    /// fexit programs on the send and receive function of each family.
    Fentry,
    /// kprobes and kretprobes on the same functions.
    Kprobe,
}

impl Backend {
    /// Every backend, in the order `auto` tries them: the tracepoints are a
    /// stable interface and one pair covers every family, and BTF-typed,
    /// they read the kernel's structs without a helper call per field (a
    /// send took 640 ns per run as a raw tracepoint here); a trampoline
    /// (fexit) costs about what a raw tracepoint does; a kprobe adds a
    /// breakpoint or ftrace hop at entry, a return trampoline, and a map
    /// round trip between the two.
    pub const ALL: [Backend; 4] = [
        Backend::TpBtf,
        Backend::Tracepoint,
        Backend::Fentry,
        Backend::Kprobe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::TpBtf => "tp-btf",
            Backend::Tracepoint => "tracepoint",
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
        }
    }
}

/// How a hook is attached, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A raw tracepoint, always.
    Raw,
    /// Raw `sys_enter`/`sys_exit`: only where the kernel has no per-syscall
    /// tracepoints.
    RawSyscalls,
    /// A `syscalls:` tracepoint, where the kernel has them; the ones of
    /// `read` and friends (`file_io`) only for payload capture.
    Syscall { file_io: bool },
    /// A send or receive hook of one backend.
    Data(Backend),
}

/// One hook: program name in the object file, and what it attaches to.
pub struct Hook {
    pub program: &'static str,
    /// The tracepoint, or the kernel function of a function probe.
    pub target: &'static str,
    /// The tracepoint's system (`sock:sock_send_length`), or the kind of
    /// function probe (`fexit`, `kprobe`, `kretprobe`).
    pub system: &'static str,
    /// Oldest kernel that has the hook.
    pub since: &'static str,
    pub kind: Kind,
}

impl Hook {
    /// How messages name the hook: `tracepoint sock:sock_send_length`,
    /// `tp_btf sock:sock_send_length`, `fexit inet_sendmsg`.
    pub fn name(&self) -> String {
        if self.probes_function() {
            format!("{} {}", self.system, self.target)
        } else if self.kind == Kind::Data(Backend::TpBtf) {
            format!("tp_btf {}:{}", self.system, self.target)
        } else {
            format!("tracepoint {}:{}", self.system, self.target)
        }
    }

    /// Whether the hook is a function probe (fentry or kprobe backend)
    /// rather than a tracepoint.
    fn probes_function(&self) -> bool {
        matches!(self.kind, Kind::Data(Backend::Fentry | Backend::Kprobe))
    }

    /// The `FAMILY_*` bits of the sockets the hook sees: a function
    /// probe's function serves one family; a tracepoint, all.
    fn families(&self) -> u32 {
        let function = self.probes_function();
        match self.target {
            target if function && target.starts_with("unix_") => FAMILY_UNIX,
            target if function && target.starts_with("inet6_") => FAMILY_INET6,
            target if function && target.starts_with("inet_") => FAMILY_INET,
            _ => u32::MAX,
        }
    }
}

const fn raw(program: &'static str, system: &'static str, since: &'static str, kind: Kind) -> Hook {
    Hook {
        program,
        target: program,
        system,
        since,
        kind,
    }
}

/// `syscalls:NAME`, whose program has the same name.
const fn syscall(name: &'static str, file_io: bool) -> Hook {
    Hook {
        program: name,
        target: name,
        system: "syscalls",
        since: "4.7",
        kind: Kind::Syscall { file_io },
    }
}

/// BTF-typed program `btf_TRACEPOINT` on `sock:TRACEPOINT`.
const fn btf_sock(program: &'static str, tracepoint: &'static str) -> Hook {
    Hook {
        program,
        target: tracepoint,
        system: "sock",
        since: "6.3",
        kind: Kind::Data(Backend::TpBtf),
    }
}

/// fexit program `fexit_FUNCTION` on `function`.
const fn fexit(program: &'static str, function: &'static str) -> Hook {
    Hook {
        program,
        target: function,
        system: "fexit",
        since: "5.5",
        kind: Kind::Data(Backend::Fentry),
    }
}

/// One of the kprobe backend's programs (`system`: `kprobe` or
/// `kretprobe`) on `function`.
const fn kprobe(program: &'static str, system: &'static str, function: &'static str) -> Hook {
    Hook {
        program,
        target: function,
        system,
        since: "4.1",
        kind: Kind::Data(Backend::Kprobe),
    }
}

/// Every hook of every backend.
pub const HOOKS: &[Hook] = &[
    raw("sys_enter", "raw_syscalls", "4.17", Kind::RawSyscalls),
    raw("sys_exit", "raw_syscalls", "4.17", Kind::RawSyscalls),
    syscall("sys_enter_read", true),
    syscall("sys_exit_read", true),
    syscall("sys_enter_write", true),
    syscall("sys_exit_write", true),
    syscall("sys_enter_readv", true),
    syscall("sys_exit_readv", true),
    syscall("sys_enter_writev", true),
    syscall("sys_exit_writev", true),
    syscall("sys_enter_close", false),
    syscall("sys_enter_socket", false),
    syscall("sys_exit_socket", false),
    syscall("sys_enter_socketpair", false),
    syscall("sys_exit_socketpair", false),
    syscall("sys_enter_bind", false),
    syscall("sys_exit_bind", false),
    syscall("sys_enter_listen", false),
    syscall("sys_exit_listen", false),
    syscall("sys_enter_connect", false),
    syscall("sys_exit_connect", false),
    syscall("sys_enter_accept", false),
    syscall("sys_exit_accept", false),
    syscall("sys_enter_accept4", false),
    syscall("sys_exit_accept4", false),
    syscall("sys_enter_sendto", false),
    syscall("sys_exit_sendto", false),
    syscall("sys_enter_recvfrom", false),
    syscall("sys_exit_recvfrom", false),
    syscall("sys_enter_sendmsg", false),
    syscall("sys_exit_sendmsg", false),
    syscall("sys_enter_recvmsg", false),
    syscall("sys_exit_recvmsg", false),
    syscall("sys_enter_sendmmsg", false),
    syscall("sys_exit_sendmmsg", false),
    syscall("sys_enter_recvmmsg", false),
    syscall("sys_exit_recvmmsg", false),
    btf_sock("btf_sock_send_length", "sock_send_length"),
    btf_sock("btf_sock_recv_length", "sock_recv_length"),
    raw(
        "sock_send_length",
        "sock",
        "6.3",
        Kind::Data(Backend::Tracepoint),
    ),
    raw(
        "sock_recv_length",
        "sock",
        "6.3",
        Kind::Data(Backend::Tracepoint),
    ),
    fexit("fexit_unix_stream_sendmsg", "unix_stream_sendmsg"),
    fexit("fexit_unix_dgram_sendmsg", "unix_dgram_sendmsg"),
    fexit("fexit_unix_seqpacket_sendmsg", "unix_seqpacket_sendmsg"),
    fexit("fexit_inet_sendmsg", "inet_sendmsg"),
    fexit("fexit_inet6_sendmsg", "inet6_sendmsg"),
    fexit("fexit_unix_stream_recvmsg", "unix_stream_recvmsg"),
    fexit("fexit_unix_dgram_recvmsg", "unix_dgram_recvmsg"),
    fexit("fexit_unix_seqpacket_recvmsg", "unix_seqpacket_recvmsg"),
    fexit("fexit_inet_recvmsg", "inet_recvmsg"),
    fexit("fexit_inet6_recvmsg", "inet6_recvmsg"),
    kprobe("kprobe_sock_io", "kprobe", "unix_stream_sendmsg"),
    kprobe("kprobe_sock_io", "kprobe", "unix_dgram_sendmsg"),
    kprobe("kprobe_sock_io", "kprobe", "unix_seqpacket_sendmsg"),
    kprobe("kprobe_sock_io", "kprobe", "inet_sendmsg"),
    kprobe("kprobe_sock_io", "kprobe", "inet6_sendmsg"),
    kprobe("kprobe_sock_io", "kprobe", "unix_stream_recvmsg"),
    kprobe("kprobe_sock_io", "kprobe", "unix_dgram_recvmsg"),
    kprobe("kprobe_sock_io", "kprobe", "unix_seqpacket_recvmsg"),
    kprobe("kprobe_sock_io", "kprobe", "inet_recvmsg"),
    kprobe("kprobe_sock_io", "kprobe", "inet6_recvmsg"),
    kprobe("kretprobe_sendmsg", "kretprobe", "unix_stream_sendmsg"),
    kprobe("kretprobe_sendmsg", "kretprobe", "unix_dgram_sendmsg"),
    kprobe("kretprobe_sendmsg", "kretprobe", "unix_seqpacket_sendmsg"),
    kprobe("kretprobe_sendmsg", "kretprobe", "inet_sendmsg"),
    kprobe("kretprobe_sendmsg", "kretprobe", "inet6_sendmsg"),
    kprobe("kretprobe_recvmsg", "kretprobe", "unix_stream_recvmsg"),
    kprobe("kretprobe_recvmsg", "kretprobe", "unix_dgram_recvmsg"),
    kprobe("kretprobe_recvmsg", "kretprobe", "unix_seqpacket_recvmsg"),
    kprobe("kretprobe_recvmsg", "kretprobe", "inet_recvmsg"),
    kprobe("kretprobe_recvmsg", "kretprobe", "inet6_recvmsg"),
    raw("inet_sock_set_state", "sock", "4.16", Kind::Raw),
    raw("sched_process_fork", "sched", "4.17", Kind::Raw),
    raw("sched_process_exec", "sched", "4.17", Kind::Raw),
    raw("sched_process_exit", "sched", "4.17", Kind::Raw),
];

/// Where tracefs is mounted, or should be.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Whether this kernel has per-syscall tracepoints, whose programs run only
/// for the calls sockspy follows (unlike raw `sys_enter`, which runs for
/// every syscall). Finding them needs tracefs; sockspy mounts it where
/// the kernel offers the mount point but nobody has mounted it yet.
/// `SOCKSPY_RAW_SYSCALLS` in the environment chooses the raw ones.
pub fn has_syscall_tracepoints() -> bool {
    // For tests and for kernels whose syscall tracepoints misbehave.
    if std::env::var_os("SOCKSPY_RAW_SYSCALLS").is_some() {
        return false;
    }
    let events = |root: &str| std::path::Path::new(root).join("events/syscalls/sys_enter_connect");
    if events(TRACEFS).exists() || events("/sys/kernel/debug/tracing").exists() {
        return true;
    }
    let empty = fs::read_dir(TRACEFS).is_ok_and(|mut dir| dir.next().is_none());
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let mounted = empty
        && unsafe {
            libc::mount(
                c"tracefs".as_ptr(),
                c"/sys/kernel/tracing".as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        } == 0;
    mounted && events(TRACEFS).exists()
}

/// The hooks every backend attaches, given what the kernel has and
/// whether payload is captured.
pub fn hooks(per_syscall: bool, capture: bool) -> impl Iterator<Item = &'static Hook> {
    HOOKS.iter().filter(move |hook| match hook.kind {
        Kind::Raw => true,
        Kind::RawSyscalls => !per_syscall,
        Kind::Syscall { file_io } => per_syscall && (capture || !file_io),
        Kind::Data(_) => false,
    })
}

/// The send and receive hooks of `backend` that see sockets of `families`
/// (`FAMILY_*` bits): `--unix` leaves the IP functions unprobed.
pub fn data_hooks(backend: Backend, families: u32) -> impl Iterator<Item = &'static Hook> {
    HOOKS
        .iter()
        .filter(move |hook| hook.kind == Kind::Data(backend) && hook.families() & families != 0)
}

/// Loaded and attached programs; dropping this detaches them.
pub struct Tracer {
    ebpf: Ebpf,
    /// The kernel programs' diagnostics, with `--kernel-log`.
    kernel_log: Option<EbpfLogger<KernelLog>>,
}

/// Prints the kernel programs' diagnostics (aya-log records) to stderr,
/// one line each.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = record.level().as_str().to_ascii_lowercase();
        eprintln!("sockspy: kernel {level}: {}", record.args());
    }

    fn flush(&self) {}
}

/// `AYA_LOG_LEVEL` of the kernel programs: which of their diagnostics
/// they write; 0 removes every one as dead code at load.
fn log_level(kernel_log: bool) -> u8 {
    if kernel_log { Level::Trace as u8 } else { 0 }
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Records written to the ring buffer.
    pub emitted: u64,
    /// Records dropped because the ring buffer was full.
    pub lost: u64,
    /// Of those, process (fork, exec, exit) records; the rest were socket events.
    pub lost_proc: u64,
    /// Kernel or user memory reads that failed.
    pub read_failed: u64,
    /// Calls not followed because another thread took their per-thread slot.
    pub call_slot_taken: u64,
}

/// Checks that the process may load tracing programs: root, or
/// `CAP_BPF` + `CAP_PERFMON`, or `CAP_SYS_ADMIN`.
pub fn check_privileges() -> Result<(), Unfit> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(Unfit(
            "sockspy needs root to load eBPF programs (or CAP_BPF and CAP_PERFMON): run it with sudo"
                .into(),
        ))
    }
}

/// Reads the running kernel's BTF and resolves the offsets the programs need.
/// Environment variable naming a BTF file to use instead of the kernel's.
pub const BTF_ENV: &str = "SOCKSPY_BTF";

pub fn kernel_offsets() -> Result<KernelOffsets, Unfit> {
    // A kernel whose BTF lives elsewhere (and the tests of a BTF-less or
    // broken kernel) name the file instead.
    let path = std::env::var_os(BTF_ENV).map_or_else(|| Btf::VMLINUX.into(), PathBuf::from);
    if !path.exists() {
        return Err(Unfit(format!(
            "this kernel has no BTF ({} is missing): sockspy needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            path.display()
        )));
    }
    let btf =
        Btf::from_file(&path).map_err(|err| Unfit(format!("cannot use kernel BTF: {err}")))?;
    offsets::resolve(&btf).map_err(|err| Unfit(format!("unsupported kernel: {err}")))
}

/// What the kernel programs filter on by themselves: `families` and
/// `bits` go into [`TraceConfig`], the rest into the filter maps the bits
/// switch on.
#[derive(Clone, Debug, Default)]
pub struct KernelFilter {
    /// `FAMILY_*` and `PROTO_*` bits.
    pub families: u32,
    /// `FILTER_*` bits.
    pub bits: u32,
    pub pids: Vec<u32>,
    /// Process names, NUL-padded as the kernel keeps them.
    pub comms: Vec<[u8; COMM_LEN]>,
    pub uids: Vec<u32>,
    pub ports: Vec<u16>,
    /// `--cgroup`/`--container`: a verdict (1 traced, 0 not) for each
    /// cgroup id that existed at start-up.
    pub cgroups: Vec<(u64, u8)>,
}

impl Tracer {
    /// Loads the programs with `config`, fills the filter maps and attaches
    /// every hook: the common ones, then the send and receive hooks of
    /// `backend`, or (`None`, `--backend auto`) of the first backend in
    /// [`Backend::ALL`] whose hooks all attach. Returns the backend used.
    pub fn attach(
        offsets: &KernelOffsets,
        config: &TraceConfig,
        ring_bytes: u32,
        filter: &KernelFilter,
        backend: Option<Backend>,
        kernel_log: bool,
    ) -> Result<(Self, Backend), Unfit> {
        let mut ebpf = load(offsets, config, ring_bytes, log_level(kernel_log))?;
        let kernel_log = if kernel_log {
            Some(
                EbpfLogger::init_with_logger(&mut ebpf, KernelLog)
                    .map_err(|err| Unfit(format!("cannot read the kernel's diagnostics: {err}")))?,
            )
        } else {
            None
        };
        fill_filters(&mut ebpf, filter)?;
        // Dropped at the end of this function: read only while loading.
        let mut btf = FunctionBtf::default();
        for hook in hooks(has_syscall_tracepoints(), config.capture_bytes > 0) {
            attach_hook(&mut ebpf, hook, &mut btf)?;
        }
        let families = config.families;
        let chosen = match backend {
            Some(backend) => attach_backend(&mut ebpf, backend, families, &mut btf)
                .map(|()| backend)
                .map_err(|err| {
                    Unfit(format!(
                        "the {} backend cannot run here: {err}",
                        backend.name()
                    ))
                })?,
            None => auto(&mut ebpf, families, &mut btf)?,
        };
        Ok((Self { ebpf, kernel_log }, chosen))
    }

    /// Prints what the kernel programs logged since the last call
    /// (`--kernel-log`; nothing otherwise).
    pub fn flush_kernel_log(&mut self) {
        if let Some(logger) = &mut self.kernel_log {
            logger.flush();
        }
    }

    /// Detaches every program, so that nothing more is queued; the maps,
    /// the ring buffer and the counters stay readable. Best effort: a
    /// program that cannot be unloaded goes with the process.
    ///
    /// Each detach waits for an RCU grace period in the kernel (tens of
    /// milliseconds on a virtual machine), so they run side by side: one
    /// after the other, forty hooks took over two seconds to let go.
    pub fn detach(&mut self) {
        std::thread::scope(|scope| {
            // Programs never loaded, or already detached, have nothing to let go.
            let loaded = self.ebpf.programs_mut().filter(|(_, p)| p.fd().is_ok());
            for (_, program) in loaded {
                scope.spawn(move || unload(program));
            }
        });
    }

    /// Takes the cgroup filter's map (once), for verdicts on cgroups made
    /// while tracing.
    pub fn take_cgroup_verdicts(&mut self) -> Option<CgroupVerdicts> {
        let map = self.ebpf.take_map("FILTER_CGROUPS")?;
        HashMap::try_from(map).ok().map(CgroupVerdicts)
    }

    /// Takes the ring buffer the events arrive in (once).
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow::anyhow!("kernel programs have no EVENTS map"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Reads the kernel-side counters.
    pub fn stats(&self) -> anyhow::Result<KernelStats> {
        let map = self
            .ebpf
            .map("STATS")
            .ok_or_else(|| anyhow::anyhow!("kernel programs have no STATS map"))?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let mut sums = [0u64; STAT_COUNT as usize];
        for (index, sum) in sums.iter_mut().enumerate() {
            *sum = stats.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(KernelStats {
            emitted: sums[Stat::Emitted as usize],
            lost: sums[Stat::RingFull as usize] + sums[Stat::RingFullProc as usize],
            lost_proc: sums[Stat::RingFullProc as usize],
            read_failed: sums[Stat::ReadFailed as usize],
            call_slot_taken: sums[Stat::CallSlotTaken as usize],
        })
    }
}

fn fill_filters(ebpf: &mut Ebpf, filter: &KernelFilter) -> Result<(), Unfit> {
    fill_set(ebpf, "FILTER_PIDS", "pid", &filter.pids)?;
    fill_set(ebpf, "FILTER_COMMS", "comm", &filter.comms)?;
    fill_set(ebpf, "FILTER_UIDS", "uid", &filter.uids)?;
    fill_set(ebpf, "FILTER_PORTS", "port", &filter.ports)?;
    let broken = |err: aya::maps::MapError| {
        Unfit(format!(
            "cannot set up the cgroup filter: {}",
            describe(&err)
        ))
    };
    let map = ebpf
        .map_mut("FILTER_CGROUPS")
        .ok_or_else(|| Unfit("kernel programs lack FILTER_CGROUPS".into()))?;
    let mut verdicts: HashMap<_, u64, u8> = HashMap::try_from(map).map_err(broken)?;
    for (id, verdict) in &filter.cgroups {
        // A full map leaves the rest to userspace, which decides them too.
        if verdicts.insert(id, verdict, 0).is_err() {
            break;
        }
    }
    Ok(())
}

/// The kernel's `FILTER_CGROUPS` map, for verdicts on cgroups made while
/// tracing: a full map leaves the rest to userspace, which is only slower.
pub struct CgroupVerdicts(HashMap<MapData, u64, u8>);

impl std::fmt::Debug for CgroupVerdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CgroupVerdicts")
    }
}

impl CgroupVerdicts {
    /// Tells the kernel whether the tasks of cgroup `id` are traced.
    pub fn insert(&mut self, id: u64, verdict: u8) {
        let _ = self.0.insert(id, verdict, 0);
    }
}

/// Puts each of `keys` into the set (a hash map to 1) named `map`.
fn fill_set<K: aya::Pod>(ebpf: &mut Ebpf, map: &str, what: &str, keys: &[K]) -> Result<(), Unfit> {
    let broken = |err: aya::maps::MapError| {
        Unfit(format!(
            "cannot set up the {what} filter: {}",
            describe(&err)
        ))
    };
    let map = ebpf
        .map_mut(map)
        .ok_or_else(|| Unfit(format!("kernel programs lack {map}")))?;
    let mut set: HashMap<_, K, u8> = HashMap::try_from(map).map_err(broken)?;
    for key in keys {
        set.insert(key, 1, 0).map_err(broken)?;
    }
    Ok(())
}

/// The first backend whose send and receive hooks all attach, in the
/// order of [`Backend::ALL`]; if none, an error naming what each lacks.
fn auto(ebpf: &mut Ebpf, families: u32, btf: &mut FunctionBtf) -> Result<Backend, Unfit> {
    let mut reasons = Vec::new();
    for backend in Backend::ALL {
        match attach_backend(ebpf, backend, families, btf) {
            Ok(()) => return Ok(backend),
            Err(err) => reasons.push(format!("{}: {err}", backend.name())),
        }
    }
    Err(Unfit(format!(
        "no backend can trace sends and receives on this kernel ({})",
        reasons.join("; ")
    )))
}

/// Attaches every send and receive hook of `backend` for `families`, or
/// none: a backend that fails half way is taken down again.
fn attach_backend(
    ebpf: &mut Ebpf,
    backend: Backend,
    families: u32,
    btf: &mut FunctionBtf,
) -> Result<(), Unfit> {
    let attached = data_hooks(backend, families).try_for_each(|hook| attach_hook(ebpf, hook, btf));
    if attached.is_err() {
        for hook in data_hooks(backend, families) {
            if let Some(program) = ebpf.program_mut(hook.program)
                && program.fd().is_ok()
            {
                unload(program);
            }
        }
    }
    attached
}

/// Unloads a program and detaches its links.
fn unload(program: &mut Program) {
    let _ = match program {
        Program::RawTracePoint(program) => program.unload(),
        Program::TracePoint(program) => program.unload(),
        Program::BtfTracePoint(program) => program.unload(),
        Program::FExit(program) => program.unload(),
        Program::KProbe(program) => program.unload(),
        _ => Ok(()),
    };
}

/// What [`probe`] found.
pub struct Probe {
    /// Each hook with the outcome of attaching it.
    pub hooks: Vec<(&'static Hook, Result<(), Unfit>)>,
    /// The program the verifier spent most instructions on, with that
    /// count and the count for all programs loaded; `None` where the kernel
    /// does not say (before Linux 5.16).
    pub verified: Option<Verified>,
}

/// How much of the verifier's budget the programs took.
pub struct Verified {
    pub most: u32,
    pub program: String,
    pub total: u64,
}

/// The verifier's instruction counts of the programs loaded in `ebpf`.
fn verified(ebpf: &Ebpf) -> Option<Verified> {
    let counts: Vec<(&str, u32)> = ebpf
        .programs()
        .filter_map(|(name, program)| {
            let info = program.info().ok()?;
            Some((name, info.verified_instruction_count()?))
        })
        .collect();
    let (program, most) = counts.iter().max_by_key(|(_, count)| *count)?;
    Some(Verified {
        most: *most,
        program: (*program).to_owned(),
        total: counts.iter().map(|(_, count)| u64::from(*count)).sum(),
    })
}

/// Loads the programs and tries to attach every hook of the syscall set
/// `per_syscall` picks, then every backend's send and receive hooks, for
/// `sockspy check`.
///
/// The configuration asks for everything (all families, the largest payload,
/// every filter):
/// the verifier skips code that read-only settings make unreachable, so a
/// smaller one would leave paths unchecked.
pub fn probe(offsets: &KernelOffsets, per_syscall: bool) -> Result<Probe, Unfit> {
    let config = TraceConfig {
        families: FAMILY_UNIX | FAMILY_INET | FAMILY_INET6 | PROTO_TCP | PROTO_UDP,
        capture_bytes: MAX_DATA_LEN as u32,
        wakeup_bytes: 0,
        self_pid: std::process::id(),
        filters: FILTER_PID
            | FILTER_PID_TREE
            | FILTER_COMM
            | FILTER_UID
            | FILTER_PORT
            | FILTER_CGROUP,
    };
    // Logging on, so that the verifier checks the diagnostics' code too.
    let mut ebpf = load(offsets, &config, ring_size(0), log_level(true))?;
    let data = Backend::ALL
        .into_iter()
        .flat_map(|backend| data_hooks(backend, config.families));
    let mut btf = FunctionBtf::default();
    let hooks = hooks(per_syscall, true)
        .chain(data)
        .map(|hook| (hook, attach_hook(&mut ebpf, hook, &mut btf)))
        .collect();
    Ok(Probe {
        hooks,
        verified: verified(&ebpf),
    })
}

fn load(
    offsets: &KernelOffsets,
    config: &TraceConfig,
    ring_bytes: u32,
    log_level: u8,
) -> Result<Ebpf, Unfit> {
    EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .override_global("CONFIG", config, true)
        .override_global(aya_log::LEVEL, &log_level, true)
        .map_max_entries("EVENTS", ring_bytes)
        .map_max_entries("SCRATCH", SCRATCH_SLOTS * possible_cpus()?)
        .load(PROGRAMS)
        .map_err(|err| load_error(&err))
}

/// How many CPUs the kernel may bring up (what per-CPU indexes range over).
fn possible_cpus() -> Result<u32, Unfit> {
    aya::util::nr_cpus()
        .map(|n| n as u32)
        .map_err(|(what, err)| Unfit(format!("cannot count CPUs ({what}): {err}")))
}

/// Ring buffer size for a requested number of bytes: a power of two of
/// pages, and large enough for the biggest record.
pub fn ring_size(requested: u64) -> u32 {
    let floor = (MAX_EVENT_LEN as u64 * 4).next_power_of_two();
    requested.clamp(floor, 1 << 30).next_power_of_two() as u32
}

fn attach_hook(ebpf: &mut Ebpf, hook: &Hook, btf: &mut FunctionBtf) -> Result<(), Unfit> {
    let refused = |err: &aya::programs::ProgramError| {
        Unfit(format!(
            "the kernel refused program {}: {}",
            hook.program,
            describe(err)
        ))
    };
    let attached = match ebpf.program_mut(hook.program) {
        Some(Program::RawTracePoint(program)) => {
            program.load().map_err(|err| refused(&err))?;
            program.attach(hook.target).map(drop)
        }
        Some(Program::TracePoint(program)) => {
            program.load().map_err(|err| refused(&err))?;
            program.attach(hook.system, hook.target).map(drop)
        }
        Some(Program::BtfTracePoint(program)) => {
            program.load(hook.target, btf.get()?).map_err(|err| {
                // The kernel's BTF names each tracepoint it has.
                if describe(&err).contains("unknown BTF type") {
                    missing_tracepoint(hook)
                } else {
                    refused(&err)
                }
            })?;
            program.attach().map(drop)
        }
        Some(Program::FExit(program)) => {
            program
                .load(hook.target, btf.get()?)
                .map_err(|err| function_error(hook, &err))?;
            program.attach().map(drop)
        }
        Some(Program::KProbe(program)) => {
            // One program serves several functions: loaded with the first.
            if program.fd().is_err() {
                program.load().map_err(|err| refused(&err))?;
            }
            program.attach(hook.target, 0).map(drop)
        }
        _ => return Err(Unfit(format!("kernel programs lack {}", hook.program))),
    };
    attached.map_err(|err| {
        if hook.probes_function() {
            function_error(hook, &err)
        } else if io_errno(&err) == Some(libc::ENOENT) {
            missing_tracepoint(hook)
        } else {
            Unfit(format!(
                "cannot attach to {}: {}",
                hook.name(),
                describe(&err)
            ))
        }
    })
}

/// A hook whose tracepoint this kernel does not have.
fn missing_tracepoint(hook: &Hook) -> Unfit {
    Unfit(format!(
        "this kernel has no tracepoint {}:{} (needs Linux {} or later)",
        hook.system, hook.target, hook.since
    ))
}

/// The kernel's "operation not supported" (not in the C library's errno
/// list): what a kernel without BPF trampolines answers an fexit with.
const ENOTSUPP: i32 = 524;

/// Why a function probe did not load or attach, in an operator's words
/// where the cause is a known one.
fn function_error(hook: &Hook, err: &aya::programs::ProgramError) -> Unfit {
    let why = match (hook.kind, io_errno(err)) {
        (Kind::Data(Backend::Kprobe), _)
            if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() =>
        {
            "this kernel has no kprobes (CONFIG_KPROBES is off)".to_owned()
        }
        (_, Some(libc::ENOENT)) => format!("this kernel has no function {}", hook.target),
        (Kind::Data(Backend::Fentry), Some(libc::EPERM)) => {
            "the kernel refuses fentry programs even to root (lockdown or a hypervisor's policy)"
                .to_owned()
        }
        (Kind::Data(Backend::Fentry), Some(ENOTSUPP | libc::EOPNOTSUPP | libc::EINVAL)) => {
            format!(
                "this kernel does not support BPF trampolines: {}",
                describe(err)
            )
        }
        _ => describe(err),
    };
    Unfit(format!("cannot attach {}: {why}", hook.name()))
}

/// The kernel's own BTF, in the form aya loads BTF-typed programs with:
/// read once per attach, from the file `kernel_offsets` reads, and let go
/// once the programs are loaded (parsed, it takes over ten megabytes).
#[derive(Default)]
struct FunctionBtf(Option<aya::Btf>);

impl FunctionBtf {
    fn get(&mut self) -> Result<&aya::Btf, Unfit> {
        if self.0.is_none() {
            let path = std::env::var_os(BTF_ENV).map_or_else(|| Btf::VMLINUX.into(), PathBuf::from);
            let btf = aya::Btf::parse_file(&path, aya::Endianness::default())
                .map_err(|err| Unfit(format!("cannot read BTF from {}: {err}", path.display())))?;
            self.0 = Some(btf);
        }
        Ok(self.0.as_ref().expect("parsed above"))
    }
}

fn load_error(err: &aya::EbpfError) -> Unfit {
    let text = describe(err);
    if text.contains("Operation not permitted") {
        Unfit(
            "the kernel refused to load eBPF programs (permission denied): run sockspy as root"
                .into(),
        )
    } else {
        Unfit(format!("cannot load the kernel programs: {text}"))
    }
}

/// An error with its causes, on one line.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let Some((head, log)) = text.split_once('\n') else {
        return text;
    };
    // A verifier log runs to thousands of lines: keep it in a file and name
    // its verdict, the last line before the statistics.
    let verdict = log
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| {
            !line.is_empty()
                && !line.starts_with("processed ")
                && !line.starts_with("verification time")
                && !line.starts_with("stack depth")
        })
        .unwrap_or("");
    let saved = std::env::temp_dir().join("sockspy-verifier.log");
    match std::fs::write(&saved, log) {
        Ok(()) => format!("{head} {verdict} (verifier log in {})", saved.display()),
        Err(_) => format!("{head} {verdict}"),
    }
}

/// The OS error number somewhere in an error's chain.
fn io_errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        current = err.source();
    }
    None
}
