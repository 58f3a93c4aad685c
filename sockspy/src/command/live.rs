//! A live capture, shared by `trace` and `top`: attach, snapshot, then
//! read -> resolve -> filter, handing every event kept to a [`Consumer`]
//! until told to stop.
//!
//! The kernel writes records without waking the reader until the ring
//! holds a good batch, so the loop wakes on that or on a short timer,
//! whichever comes first, and drains everything queued each time. A
//! signal or the deadline drains what is left before the consumer hears
//! of the stop, so nothing recorded is lost silently.

use std::{ops::ControlFlow, time::Duration};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use sockspy_common::{
    EventKind, FILTER_CGROUP, FILTER_COMM, FILTER_PID, FILTER_UID, IPPROTO_TCP, IPPROTO_UDP,
    TraceConfig,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    capture::events::{self, Record, clock_ns},
    capture::loader::{self, Backend, KernelStats, Tracer},
    filter::{Filter, Selection},
    table::diag,
    table::hold::{Hold, Waits},
    table::procfs::Procfs,
    table::resolve::{Event, Resolver},
};

/// How long the reader may sleep with records queued below the wake-up mark.
const POLL: Duration = Duration::from_millis(50);

/// Records read in one turn of the loop, between looks at signals, timers
/// and the consumer's ticks.
const BATCH: usize = 1024;

/// Why the capture ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Signal,
    /// The consumer has what it wanted (`--count`, `top -n`).
    Count,
    Duration,
    /// Whoever read our output went away.
    ClosedPipe,
    /// The recording could not be written.
    WriteFailed,
    /// The user asked to stop (`q` in `top`).
    Quit,
}

/// What a live capture hands its events to.
pub trait Consumer {
    /// One resolved event that the filter kept.
    fn event(&mut self, event: &Event) -> ControlFlow<Stop>;

    /// Writes out what is buffered, after each turn of the loop; a stop
    /// when that failed.
    fn flush(&mut self) -> Option<Stop>;

    /// How often [`Self::tick`] is called; never when `None`.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Called every [`Self::tick_every`], between batches of events.
    fn tick(&mut self, _tracer: &Tracer, _pipeline: &Pipeline) -> ControlFlow<Stop> {
        ControlFlow::Continue(())
    }

    /// The capture stopped; after a signal or the deadline every record
    /// the kernel had queued was delivered first.
    fn finish(&mut self, stop: Stop);
}

/// The userspace stages of a live capture: resolve, hold, filter.
pub struct Pipeline {
    pub resolver: Resolver,
    /// Records waiting for the record that names their peer.
    pub hold: Hold,
    /// What the user asked to see (the kernel has applied the families;
    /// the rest is applied here, after the resolver has seen every event).
    filter: Filter,
    /// Records read from the ring buffer.
    pub records: u64,
    pub undecodable: u64,
    /// Events kept whose peer is a socket here held by nobody known.
    pub unresolved: u64,
}

impl Pipeline {
    /// Reads what is queued, at most `limit` records, so that under a
    /// load that never lets the ring run dry, signals and timers still
    /// get their turn. Breaks with why to stop, if it is time to;
    /// continues with whether the ring was emptied.
    fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        limit: usize,
        consumer: &mut impl Consumer,
    ) -> ControlFlow<Stop, bool> {
        for _ in 0..limit {
            let Some(item) = ring.next() else {
                self.release(Waits::Until(monotonic_ns()), consumer)?;
                return ControlFlow::Continue(true);
            };
            self.records += 1;
            let record = match events::decode(&item) {
                Ok(record) => record,
                Err(_) => {
                    self.undecodable += 1;
                    continue;
                }
            };
            drop(item);
            match record {
                Record::Proc(rec) => {
                    if rec.kind == EventKind::Fork {
                        self.filter.forked(rec.ev.header.pid, rec.ev.child_pid);
                    }
                    if let Some(rec) = self.hold.admit_proc(rec) {
                        self.resolver.apply_proc(&rec);
                    }
                }
                Record::Sock(rec) => {
                    if let Some(rec) = self.hold.admit(rec, &mut self.resolver) {
                        let event = self.resolver.apply(&rec);
                        self.deliver(&event, consumer)?;
                    } else {
                        self.release(Waits::Read, consumer)?;
                    }
                }
            }
        }
        ControlFlow::Continue(false)
    }

    /// Hands on the held events that can be resolved now.
    fn release(&mut self, waits: Waits, consumer: &mut impl Consumer) -> ControlFlow<Stop> {
        if self.hold.is_empty() {
            return ControlFlow::Continue(());
        }
        while let Some(event) = self.hold.next(&mut self.resolver, waits) {
            self.deliver(&event, consumer)?;
        }
        ControlFlow::Continue(())
    }

    /// Filters and counts one event, and hands it on.
    fn deliver(&mut self, event: &Event, consumer: &mut impl Consumer) -> ControlFlow<Stop> {
        if !self.filter.keeps(event) {
            return ControlFlow::Continue(());
        }
        if event.unresolved {
            self.unresolved += 1;
        }
        consumer.event(event)
    }
}

/// The programs attached and the table seeded: ready to pump.
pub struct Capture {
    pub tracer: Tracer,
    ring: RingBuf<MapData>,
    ring_bytes: u32,
    /// Where sends and receives are traced from.
    pub backend: Backend,
    pub pipeline: Pipeline,
}

/// What to capture.
pub struct Request<'a> {
    pub select: &'a Selection,
    pub buffer_bytes: u64,
    /// Payload bytes to capture per call; 0 when capture is off.
    pub capture_bytes: u32,
    /// `None` for the first backend that works.
    pub backend: Option<Backend>,
    /// `--kernel-log`: the programs' diagnostics to stderr.
    pub kernel_log: bool,
}

/// Attaches the programs, then takes the snapshot of existing sockets.
pub fn attach(request: &Request) -> anyhow::Result<Capture> {
    let offsets = loader::kernel_offsets()?;
    let ring_bytes = loader::ring_size(request.buffer_bytes);
    let kernel_filter = request.select.kernel();
    let config = TraceConfig {
        families: kernel_filter.families,
        capture_bytes: request.capture_bytes,
        wakeup_bytes: u64::from(ring_bytes / 8),
        self_pid: std::process::id(),
        filters: kernel_filter.bits,
    };
    let (mut tracer, backend) = Tracer::attach(
        &offsets,
        &config,
        ring_bytes,
        &kernel_filter,
        request.backend,
        request.kernel_log,
    )?;
    let ring = tracer.take_events()?;

    // Attached first, then the snapshot: a socket made in between is in
    // both, which the resolver tolerates; none is in neither.
    let procfs = Procfs::default();
    let mut resolver = Resolver::new(procfs.clone());
    let scan = procfs.scan().context("cannot read /proc")?;
    // The same list `sockspy pairs` shows, so that both agree on names.
    let unix = diag::unix_sockets_everywhere(&procfs).unwrap_or_default();
    resolver.seed(scan, unix);
    for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
        resolver.seed_inet(diag::inet_sockets_everywhere(&procfs, protocol).unwrap_or_default());
    }
    let mut filter = Filter::new(request.select.clone());
    if kernel_filter.bits & FILTER_CGROUP != 0
        && let Some(verdicts) = tracer.take_cgroup_verdicts()
    {
        filter.tell_kernel(verdicts);
    }
    // The caller says it is tracing before the capture runs, and a script
    // may stop it the moment it does: a stop signal waits for the capture
    // to be ready to hear it, rather than ending sockspy with no summary.
    mask_stop_signals(libc::SIG_BLOCK);
    Ok(Capture {
        tracer,
        ring,
        ring_bytes,
        backend,
        pipeline: Pipeline {
            resolver,
            hold: Hold::new(
                kernel_filter.bits & (FILTER_PID | FILTER_COMM | FILTER_UID | FILTER_CGROUP) != 0,
            ),
            filter,
            records: 0,
            undecodable: 0,
            unresolved: 0,
        },
    })
}

impl Capture {
    /// Pumps events into `consumer` until a signal, `duration` or the
    /// consumer stops it; then detaches. Returns the kernel's counters and
    /// the pipeline's.
    pub fn run(
        self,
        consumer: &mut impl Consumer,
        duration: Option<Duration>,
    ) -> anyhow::Result<(KernelStats, Pipeline)> {
        let Capture {
            mut tracer,
            ring,
            ring_bytes,
            mut pipeline,
            ..
        } = self;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the event loop")?;
        let pumped = runtime.block_on(pump(
            &mut tracer,
            ring,
            ring_bytes,
            &mut pipeline,
            consumer,
            duration,
        ));
        let stats = tracer.stats().unwrap_or_default();
        tracer.detach();
        pumped?;
        Ok((stats, pipeline))
    }
}

async fn pump(
    tracer: &mut Tracer,
    ring: RingBuf<MapData>,
    ring_bytes: u32,
    pipeline: &mut Pipeline,
    consumer: &mut impl Consumer,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map descriptor until it is dropped,
    // which only happens with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("cannot poll the ring buffer")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Heard from here on; one that came since `attach` is delivered now.
    mask_stop_signals(libc::SIG_UNBLOCK);
    let mut poll = interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let every = consumer.tick_every();
    let mut tick = interval(every.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // An interval's first tick is at once; the consumer's comes a period on.
    tick.reset();
    let deadline = duration.map(|d| Instant::now() + d);
    let until_deadline = sleep_until(deadline.unwrap_or_else(Instant::now));
    tokio::pin!(until_deadline);

    let stop = loop {
        let stop = tokio::select! {
            _ = sigint.recv() => Some(Stop::Signal),
            _ = sigterm.recv() => Some(Stop::Signal),
            _ = sighup.recv() => Some(Stop::Signal),
            () = &mut until_deadline, if deadline.is_some() => Some(Stop::Duration),
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                match pipeline.drain(guard.get_inner_mut(), BATCH, consumer) {
                    ControlFlow::Break(stop) => Some(stop),
                    ControlFlow::Continue(true) => {
                        guard.clear_ready();
                        None
                    }
                    // Records remain: the ring stays ready, and the next
                    // turn reads on after the signals and timers have had
                    // theirs (a task that is always ready would never let
                    // the runtime look at them).
                    ControlFlow::Continue(false) => {
                        tokio::task::yield_now().await;
                        None
                    }
                }
            }
            _ = poll.tick() => {
                tracer.flush_kernel_log();
                pipeline.drain(ring.get_mut(), BATCH, consumer).break_value()
            }
            _ = tick.tick(), if every.is_some() => consumer.tick(tracer, pipeline).break_value(),
        };
        if let Some(stop) = stop.or_else(|| consumer.flush()) {
            break stop;
        }
    };
    // What the kernel queued before a signal or the deadline is still
    // delivered. The programs are detached first, so a load that goes on
    // does not keep sockspy from stopping; the bound (a ring's worth) is
    // for a program that could not be.
    if matches!(stop, Stop::Signal | Stop::Duration) {
        tracer.detach();
        // The smallest record: a process event and the ring's 8-byte header.
        let smallest = size_of::<sockspy_common::ProcEvent>() + 8;
        let queued = ring_bytes as usize / smallest;
        let _ = pipeline.drain(ring.get_mut(), queued, consumer);
        // Records still waiting for their peer's go out with what is known.
        let _ = pipeline.release(Waits::End, consumer);
    }
    tracer.flush_kernel_log();
    consumer.finish(stop);
    Ok(())
}

/// Blocks (`how` is `SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) the signals
/// that stop a capture, SIGINT, SIGTERM and SIGHUP, for this thread: the
/// one the event loop runs on (the others sockspy starts are scoped to a
/// call and take its mask).
fn mask_stop_signals(how: libc::c_int) {
    // SAFETY: the set is initialised by sigemptyset before it is used,
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Now on the records' clock (`CLOCK_MONOTONIC`), in nanoseconds.
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// What the family bits ask for, for the readiness line: `unix, tcp, udp`.
pub fn family_names(families: u32) -> String {
    use sockspy_common::{FAMILY_UNIX, PROTO_TCP, PROTO_UDP};
    [
        (FAMILY_UNIX, "unix"),
        (PROTO_TCP, "tcp"),
        (PROTO_UDP, "udp"),
    ]
    .iter()
    .filter(|(bit, _)| families & bit != 0)
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join(", ")
}
