//! `sockspy trace`: attach, snapshot, then read -> resolve -> print until told to stop.
//!
//! The kernel writes records without waking the reader until the ring
//! holds a good batch, so the loop wakes on that or on a short timer,
//! whichever comes first, and drains everything queued each time. Every way
//! of stopping (a signal, `--count`, `--duration`, a closed pipe) drains
//! what is left and reports the kernel-side counters, so nothing recorded
//! is lost silently.

use std::{
    io::{self, BufWriter, Write},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use sockspy_common::TraceConfig;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    cli::TraceOptions,
    events::{self, Record},
    loader::{self, KernelStats, Tracer},
    output::{Clock, PayloadStyle, Printer},
    procfs::{InetTable, Procfs},
    resolve::{Event, Resolver},
};

/// How long the reader may sleep with records queued below the wake-up mark.
const POLL: Duration = Duration::from_millis(50);

/// Why the trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Signal,
    Count,
    Duration,
    /// Whoever read our output went away.
    ClosedPipe,
}

/// Counts of what the reader did.
#[derive(Debug, Default)]
struct Tally {
    records: u64,
    printed: u64,
    undecodable: u64,
}

struct Session {
    resolver: Resolver,
    printer: Printer,
    out: BufWriter<io::Stdout>,
    tally: Tally,
    count: Option<u64>,
    /// `--port`: keep only events with one of these ports (empty: all).
    ports: Vec<u16>,
}

impl Session {
    /// Reads everything queued. Returns why to stop, if it is time to.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Option<Stop> {
        while let Some(item) = ring.next() {
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
                Record::Proc(rec) => self.resolver.apply_proc(&rec),
                Record::Sock(rec) => {
                    let event = self.resolver.apply(&rec);
                    if !self.wanted(&event) {
                        continue;
                    }
                    if self.printer.event(&mut self.out, &event).is_err() {
                        return Some(Stop::ClosedPipe);
                    }
                    self.tally.printed += 1;
                    if self.count.is_some_and(|count| self.tally.printed >= count) {
                        return Some(Stop::Count);
                    }
                }
            }
        }
        None
    }

    /// The `--port` filter, applied after the resolver has seen the event
    /// (its tables must stay whole).
    fn wanted(&self, event: &Event) -> bool {
        self.ports.is_empty()
            || [event.local, event.remote]
                .iter()
                .flatten()
                .any(|addr| self.ports.contains(&addr.port()))
    }

    /// Flushes output; a failure means the reader of our output is gone.
    fn flush(&mut self) -> Option<Stop> {
        self.out.flush().err().map(|_| Stop::ClosedPipe)
    }
}

/// Runs a trace.
pub fn run(options: &TraceOptions) -> anyhow::Result<ExitCode> {
    loader::check_privileges()?;
    let offsets = loader::kernel_offsets()?;
    let ring_bytes = loader::ring_size(options.buffer_bytes);
    let config = TraceConfig {
        families: options.families,
        capture_bytes: options.capture_bytes,
        wakeup_bytes: u64::from(ring_bytes / 8),
        self_pid: std::process::id(),
        _pad: 0,
    };
    let mut tracer = Tracer::attach(&offsets, &config, ring_bytes)?;
    let ring = tracer.take_events()?;

    // Attached first, then the snapshot: a socket made in between is in
    // both, which the resolver tolerates; none is in neither.
    let procfs = Procfs::default();
    let mut resolver = Resolver::new(procfs.clone());
    let scan = procfs.scan().context("cannot read /proc")?;
    let unix = procfs.unix_sockets().unwrap_or_default();
    resolver.seed(scan, unix);
    resolver.seed_inet(
        procfs.inet_sockets(InetTable::Tcp),
        procfs.inet_sockets(InetTable::Udp),
    );

    let mut session = Session {
        resolver,
        printer: Printer::new(
            options.format,
            Clock::now(),
            PayloadStyle {
                captured: options.capture_bytes > 0,
                hex: options.hex,
            },
        ),
        out: BufWriter::with_capacity(1 << 16, io::stdout()),
        tally: Tally::default(),
        count: options.count,
        ports: options.ports.clone(),
    };
    if session.printer.header(&mut session.out).is_err() || session.flush().is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "sockspy: tracing {} sockets (Ctrl-C to stop)",
        family_names(options.families)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    runtime.block_on(pump(&tracer, ring, &mut session, options))?;
    let stats = tracer.stats().unwrap_or_default();
    summary(&session.tally, &stats);
    // Every way to stop, a closed pipe included (as `| head` users expect), is a clean one.
    Ok(ExitCode::SUCCESS)
}

async fn pump(
    tracer: &Tracer,
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
                let stop = session.drain(guard.get_inner_mut());
                guard.clear_ready();
                stop
            }
            _ = poll.tick() => session.drain(ring.get_mut()),
            _ = stats_tick.tick(), if options.stats => {
                if let Ok(stats) = tracer.stats() {
                    eprintln!(
                        "sockspy: stats: {} records, {} lost (ring buffer full), {} read failures",
                        stats.emitted, stats.lost, stats.read_failed
                    );
                }
                None
            }
        };
        if let Some(stop) = stop.or_else(|| session.flush()) {
            break stop;
        }
    };
    // What the kernel queued before a signal or the deadline is still shown.
    if matches!(stop, Stop::Signal | Stop::Duration) {
        session.drain(ring.get_mut());
    }
    let _ = session.flush();
    Ok(())
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

fn summary(tally: &Tally, stats: &KernelStats) {
    let mut line = format!(
        "sockspy: {} events, {} lost (ring buffer full), {} read failures",
        tally.printed, stats.lost, stats.read_failed
    );
    if stats.call_table_full > 0 {
        line.push_str(&format!(
            ", {} calls not followed (call table full)",
            stats.call_table_full
        ));
    }
    if tally.undecodable > 0 {
        line.push_str(&format!(", {} undecodable records", tally.undecodable));
    }
    eprintln!("{line}");
}
