//! `sockspy trace`: attach, snapshot, then read -> resolve -> print until told to stop.
//!
//! The kernel writes records without waking the reader until the ring
//! holds a good batch, so the loop wakes on that or on a short timer,
//! whichever comes first, and drains everything queued each time. Every way
//! of stopping (a signal, `--count`, `--duration`, a closed pipe) drains
//! what is left and reports the kernel-side counters, so nothing recorded
//! is lost silently. With `-w` the events go to a recording instead of the
//! printer, and stderr shows a running count.

use std::{
    io::{self, BufWriter, IsTerminal, Write},
    ops::ControlFlow,
    process::ExitCode,
    time::Duration,
};

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
    capture::loader::{self, KernelStats, Tracer},
    cli::TraceOptions,
    filter::Filter,
    output::print::{Clock, PayloadStyle, Printer},
    output::record::Recorder,
    table::diag,
    table::hold::{Hold, Waits},
    table::procfs::Procfs,
    table::resolve::{Event, Resolver},
};

/// How long the reader may sleep with records queued below the wake-up mark.
const POLL: Duration = Duration::from_millis(50);

/// Records read in one turn of the loop, between looks at signals, timers
/// and `--stats`.
const BATCH: usize = 1024;

/// Why the trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Signal,
    Count,
    Duration,
    /// Whoever read our output went away.
    ClosedPipe,
    /// The recording could not be written (see [`Session::failure`]).
    WriteFailed,
}

/// Where resolved events go.
enum Sink {
    Print {
        printer: Printer,
        out: BufWriter<io::Stdout>,
    },
    Record(Box<Recorder>),
}

/// Counts of what the reader did.
#[derive(Debug, Default)]
struct Tally {
    records: u64,
    printed: u64,
    undecodable: u64,
    /// Events printed whose peer is a socket here held by nobody known.
    unresolved: u64,
}

struct Session {
    resolver: Resolver,
    /// Records waiting for the record that names their peer.
    hold: Hold,
    sink: Sink,
    tally: Tally,
    count: Option<u64>,
    /// Why the recording stopped, when it could not be written.
    failure: Option<anyhow::Error>,
    /// What the user asked to see (the kernel has applied the families;
    /// the rest is applied here, after the resolver has seen every event).
    filter: Filter,
}

impl Session {
    /// Reads what is queued, at most `limit` records, so that under a
    /// load that never lets the ring run dry, signals, timers and
    /// `--stats` still get their turn. Breaks with why to stop, if it is
    /// time to; continues with whether the ring was emptied.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, limit: usize) -> ControlFlow<Stop, bool> {
        for _ in 0..limit {
            let Some(item) = ring.next() else {
                self.release(Waits::Until(monotonic_ns()))?;
                return ControlFlow::Continue(true);
            };
            self.tally.records += 1;
            let record = match events::decode(&item) {
                Ok(record) => record,
                Err(_) => {
                    self.tally.undecodable += 1;
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
                        self.deliver(&event)?;
                    } else {
                        self.release(Waits::Read)?;
                    }
                }
            }
        }
        ControlFlow::Continue(false)
    }

    /// Hands on the held events that can be resolved now.
    fn release(&mut self, waits: Waits) -> ControlFlow<Stop> {
        if self.hold.is_empty() {
            return ControlFlow::Continue(());
        }
        while let Some(event) = self.hold.next(&mut self.resolver, waits) {
            self.deliver(&event)?;
        }
        ControlFlow::Continue(())
    }

    /// Filters, prints or records, and counts one event.
    fn deliver(&mut self, event: &Event) -> ControlFlow<Stop> {
        if !self.filter.keeps(event) {
            return ControlFlow::Continue(());
        }
        if let Some(stop) = self.emit(event) {
            return ControlFlow::Break(stop);
        }
        self.tally.printed += 1;
        if event.unresolved {
            self.tally.unresolved += 1;
        }
        if self.count.is_some_and(|count| self.tally.printed >= count) {
            return ControlFlow::Break(Stop::Count);
        }
        ControlFlow::Continue(())
    }

    fn emit(&mut self, event: &Event) -> Option<Stop> {
        match &mut self.sink {
            Sink::Print { printer, out } => {
                printer.event(out, event).err().map(|_| Stop::ClosedPipe)
            }
            Sink::Record(recorder) => {
                let err = recorder.record(event).err()?;
                Some(self.write_failed(err))
            }
        }
    }

    /// Flushes output; a failure to print means the reader of our output is gone.
    fn flush(&mut self) -> Option<Stop> {
        match &mut self.sink {
            Sink::Print { out, .. } => out.flush().err().map(|_| Stop::ClosedPipe),
            Sink::Record(recorder) => {
                let err = recorder.flush().err()?;
                Some(self.write_failed(err.into()))
            }
        }
    }

    fn write_failed(&mut self, err: anyhow::Error) -> Stop {
        let Sink::Record(recorder) = &self.sink else {
            return Stop::ClosedPipe;
        };
        if recorder.current() == std::path::Path::new("-")
            && err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        {
            return Stop::ClosedPipe;
        }
        let file = recorder.current().display().to_string();
        self.failure = Some(err.context(format!(
            "cannot write {file}; recording stopped (what was written stays readable)"
        )));
        Stop::WriteFailed
    }
}

/// Runs a trace.
pub fn run(options: &TraceOptions) -> anyhow::Result<ExitCode> {
    loader::check_privileges()?;
    let clock = Clock::now();
    // The output is opened before any work: a bad path fails fast.
    let sink = match &options.record {
        Some(record) => Sink::Record(Box::new(Recorder::create(record.clone(), clock)?)),
        None => Sink::Print {
            printer: Printer::new(
                options.format,
                clock,
                PayloadStyle {
                    captured: options.capture_bytes > 0,
                    hex: options.hex,
                },
            )
            .wide(options.wide),
            out: BufWriter::with_capacity(1 << 16, io::stdout()),
        },
    };
    let offsets = loader::kernel_offsets()?;
    let ring_bytes = loader::ring_size(options.buffer_bytes);
    let kernel_filter = options.select.kernel();
    let config = TraceConfig {
        families: kernel_filter.families,
        capture_bytes: options.capture_bytes,
        wakeup_bytes: u64::from(ring_bytes / 8),
        self_pid: std::process::id(),
        filters: kernel_filter.bits,
    };
    let (mut tracer, backend) = Tracer::attach(
        &offsets,
        &config,
        ring_bytes,
        &kernel_filter,
        options.backend,
    )?;
    if options.stats {
        eprintln!(
            "sockspy: sends and receives from the {} backend",
            backend.name()
        );
    }
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

    let mut session = Session {
        resolver,
        hold: Hold::new(
            kernel_filter.bits & (FILTER_PID | FILTER_COMM | FILTER_UID | FILTER_CGROUP) != 0,
        ),
        sink,
        tally: Tally::default(),
        count: options.count,
        failure: None,
        filter: Filter::new(options.select.clone()),
    };
    if kernel_filter.bits & FILTER_CGROUP != 0
        && let Some(verdicts) = tracer.take_cgroup_verdicts()
    {
        session.filter.tell_kernel(verdicts);
    }
    let families = family_names(options.select.families);
    match &mut session.sink {
        Sink::Print { printer, out } => {
            if printer.header(out).is_err() || session.flush().is_some() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("sockspy: tracing {families} sockets (Ctrl-C to stop)");
        }
        Sink::Record(recorder) => eprintln!(
            "sockspy: tracing {families} sockets, recording to {} (Ctrl-C to stop)",
            recorder.current().display()
        ),
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    runtime.block_on(pump(&mut tracer, ring, &mut session, options))?;
    let stats = tracer.stats().unwrap_or_default();
    tracer.detach();
    if let Some(err) = session.failure.take() {
        eprintln!("sockspy: {err:#}");
        summary(&session, &stats);
        return Ok(ExitCode::FAILURE);
    }
    summary(&session, &stats);
    // Every way to stop, a closed pipe included (as `| head` users expect), is a clean one.
    Ok(ExitCode::SUCCESS)
}

async fn pump(
    tracer: &mut Tracer,
    ring: RingBuf<MapData>,
    session: &mut Session,
    options: &TraceOptions,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map descriptor until it is dropped,
    // which only happens with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("cannot poll the ring buffer")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut poll = interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Recording to a file shows a running count where someone watches.
    let live_count = matches!(session.sink, Sink::Record(_)) && io::stderr().is_terminal();
    let mut stats_tick = interval(Duration::from_secs(1));
    stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = options.duration.map(|d| Instant::now() + d);
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
                match session.drain(guard.get_inner_mut(), BATCH) {
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
            _ = poll.tick() => session.drain(ring.get_mut(), BATCH).break_value(),
            _ = stats_tick.tick(), if options.stats || live_count => {
                if let Ok(stats) = tracer.stats() {
                    if options.stats {
                        let table = session.resolver.size();
                        eprintln!(
                            "sockspy: stats: {} records, {} lost (ring buffer full), {} read failures, {} peers unresolved; table: {} sockets, {} processes, {} keys; {} records held",
                            stats.emitted, stats.lost, stats.read_failed, session.tally.unresolved,
                            table.sockets, table.processes, table.keys, session.hold.len()
                        );
                    }
                    if live_count && let Sink::Record(recorder) = &session.sink {
                        eprint!(
                            "\rsockspy: {} events recorded, {} lost, {} bytes",
                            recorder.events, stats.lost, recorder.bytes
                        );
                    }
                }
                None
            }
        };
        if let Some(stop) = stop.or_else(|| session.flush()) {
            break stop;
        }
    };
    // What the kernel queued before a signal or the deadline is still
    // shown. The programs are detached first, so a load that goes on does
    // not keep sockspy from stopping; the bound (a ring's worth) is for a
    // program that could not be.
    if matches!(stop, Stop::Signal | Stop::Duration) {
        tracer.detach();
        // The smallest record: a process event and the ring's 8-byte header.
        let smallest = size_of::<sockspy_common::ProcEvent>() + 8;
        let queued = loader::ring_size(options.buffer_bytes) as usize / smallest;
        let _ = session.drain(ring.get_mut(), queued);
    }
    // Records still waiting for their peer's go out with what is known.
    if matches!(stop, Stop::Signal | Stop::Duration) {
        let _ = session.release(Waits::End);
    }
    // A failure to write here is in `session.failure`, which the caller reports.
    if stop != Stop::WriteFailed {
        let _ = session.flush();
    }
    if live_count {
        eprintln!();
    }
    Ok(())
}

/// Now on the records' clock (`CLOCK_MONOTONIC`), in nanoseconds.
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// What the family bits ask for, for the readiness line: `unix, tcp, udp`.
fn family_names(families: u32) -> String {
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

fn summary(session: &Session, stats: &KernelStats) {
    let tally = &session.tally;
    if stats.lost > 0 {
        eprintln!(
            "sockspy: lost records: {} socket events, {} process events",
            stats.lost - stats.lost_proc,
            stats.lost_proc
        );
    }
    let mut line = match &session.sink {
        Sink::Print { .. } => format!(
            "sockspy: {} events, {} lost (ring buffer full), {} read failures",
            tally.printed, stats.lost, stats.read_failed
        ),
        Sink::Record(recorder) => format!(
            "sockspy: {} events recorded ({} bytes, last file {}), {} lost (ring buffer full), {} read failures",
            recorder.events,
            recorder.bytes,
            recorder.current().display(),
            stats.lost,
            stats.read_failed
        ),
    };
    if stats.call_slot_taken > 0 {
        line.push_str(&format!(
            ", {} calls not followed (their thread's slot was taken)",
            stats.call_slot_taken
        ));
    }
    if tally.unresolved > 0 {
        line.push_str(&format!(", {} peers unresolved", tally.unresolved));
    }
    if tally.undecodable > 0 {
        line.push_str(&format!(", {} undecodable records", tally.undecodable));
    }
    // How much came through the kernel's own filters: events are what is
    // left after the rest, and the resolver's bookkeeping records.
    line.push_str(&format!(", {} records from the kernel", tally.records));
    eprintln!("{line}");
}
