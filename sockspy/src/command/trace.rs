//! `sockspy trace`: a live capture (`live`) into the printer or a recording.
//!
//! Every way of stopping (a signal, `--count`, `--duration`, a closed
//! pipe) reports the kernel-side counters, so nothing recorded is lost
//! silently. With `-w` the events go to a recording instead of the
//! printer, and stderr shows a running count.

use std::{
    io::{self, BufWriter, IsTerminal, Write},
    ops::ControlFlow,
    process::ExitCode,
    time::Duration,
};

use super::live::{self, Consumer, Pipeline, Stop};
use crate::{
    capture::loader::{self, KernelStats, Tracer},
    cli::TraceOptions,
    conversation::{CallDecoding, Conversation},
    output::record::Recorder,
    output::{
        conversation::Output,
        print::{Clock, PayloadStyle, Printer},
    },
    table::resolve::Event,
};

/// Where resolved events go.
enum Sink {
    Print {
        printer: Printer,
        out: BufWriter<io::Stdout>,
    },
    Record(Box<Recorder>),
}

struct Session {
    /// `--exchanges`, `--summaries`: what the conversations are, and
    /// whether calls are printed as well.
    conversation: Option<Conversation>,
    sink: Sink,
    /// Events (or exchanges and summaries) printed or recorded.
    printed: u64,
    count: Option<u64>,
    /// Why the recording stopped, when it could not be written.
    failure: Option<anyhow::Error>,
    /// `--stats`.
    stats: bool,
    /// Recording to a file shows a running count where someone watches.
    live_count: bool,
}

impl Consumer for Session {
    /// Prints or records one event, or hands it to the conversations.
    fn event(&mut self, event: &Event) -> ControlFlow<Stop> {
        // Out of the session while the call is printed with the messages
        // it completed, which the conversation holds.
        if let Some(mut conversation) = self.conversation.take() {
            conversation.event(event);
            let flow = if conversation.calls_too() {
                self.emit(Output::Call(event, conversation.decoded()))
            } else {
                ControlFlow::Continue(())
            };
            self.conversation = Some(conversation);
            flow?;
            return self.emit_found();
        }
        self.emit(Output::Call(event, &CallDecoding::NONE))
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

    fn tick_every(&self) -> Option<Duration> {
        (self.stats || self.live_count).then_some(Duration::from_secs(1))
    }

    /// `--stats`, and the running count of a recording.
    fn tick(&mut self, tracer: &Tracer, pipeline: &Pipeline) -> ControlFlow<Stop> {
        let Ok(stats) = tracer.stats() else {
            return ControlFlow::Continue(());
        };
        if self.stats {
            let table = pipeline.resolver.size();
            eprintln!(
                "sockspy: stats: {} records, {} lost (ring buffer full), {} read failures, {} peers unresolved; table: {} sockets, {} processes, {} keys; {} records held",
                stats.emitted,
                stats.lost,
                stats.read_failed,
                pipeline.unresolved,
                table.sockets,
                table.processes,
                table.keys,
                pipeline.hold.len()
            );
        }
        if self.live_count
            && let Sink::Record(recorder) = &self.sink
        {
            eprint!(
                "\rsockspy: {} events recorded, {} lost, {} bytes",
                recorder.events, stats.lost, recorder.bytes
            );
        }
        ControlFlow::Continue(())
    }

    fn finish(&mut self, stop: Stop) {
        // What the conversations still hold: open exchanges, and a summary
        // of each connection still open.
        if matches!(stop, Stop::Signal | Stop::Duration)
            && let Some(conversation) = &mut self.conversation
        {
            conversation.finish();
            let _ = self.emit_found();
        }
        // A failure to write here is in `failure`, which `run` reports.
        if stop != Stop::WriteFailed {
            let _ = self.flush();
        }
        if self.live_count {
            eprintln!();
        }
    }
}

impl Session {
    /// Prints what the conversations found.
    fn emit_found(&mut self) -> ControlFlow<Stop> {
        let Some(conversation) = &mut self.conversation else {
            return ControlFlow::Continue(());
        };
        let found = conversation.take();
        let mut flow = ControlFlow::Continue(());
        for finding in &found {
            flow = self.emit(Output::Finding(finding));
            if flow.is_break() {
                break;
            }
        }
        if let Some(conversation) = &mut self.conversation {
            conversation.give_back(found);
        }
        flow
    }

    /// Prints or records one thing, and counts it.
    fn emit(&mut self, output: Output<'_>) -> ControlFlow<Stop> {
        let failed = match (&mut self.sink, output) {
            (Sink::Print { printer, out }, output) => {
                if output.print(printer, out).is_err() {
                    return ControlFlow::Break(Stop::ClosedPipe);
                }
                None
            }
            (Sink::Record(recorder), Output::Call(event, _)) => recorder.record(event).err(),
            // Conversations are not recorded: `read` finds them again.
            (Sink::Record(_), Output::Finding(_)) => None,
        };
        if let Some(err) = failed {
            return ControlFlow::Break(self.write_failed(err));
        }
        self.printed += 1;
        if self.count.is_some_and(|count| self.printed >= count) {
            return ControlFlow::Break(Stop::Count);
        }
        ControlFlow::Continue(())
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
                    captured: options.show_data,
                    hex: options.hex,
                },
            )
            .wide(options.wide),
            out: BufWriter::with_capacity(1 << 16, io::stdout()),
        },
    };
    let capture = live::attach(&live::Request {
        select: &options.select,
        buffer_bytes: options.buffer_bytes,
        capture_bytes: options.capture_bytes,
        backend: options.backend,
        kernel_log: options.kernel_log,
    })?;
    if options.stats {
        eprintln!(
            "sockspy: sends and receives from the {} backend",
            capture.backend.name()
        );
    }
    let live_count = matches!(sink, Sink::Record(_)) && io::stderr().is_terminal();
    let mut session = Session {
        conversation: options.conversation.clone().map(Conversation::new),
        sink,
        printed: 0,
        count: options.count,
        failure: None,
        stats: options.stats,
        live_count,
    };
    let families = live::family_names(options.select.families);
    let exchanges = session
        .conversation
        .as_ref()
        .is_some_and(|c| !c.calls_too());
    match &mut session.sink {
        Sink::Print { printer, out } => {
            let header = if exchanges {
                printer.exchange_header(out)
            } else {
                printer.header(out)
            };
            if header.is_err() || session.flush().is_some() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("sockspy: tracing {families} sockets (Ctrl-C to stop)");
        }
        Sink::Record(recorder) => eprintln!(
            "sockspy: tracing {families} sockets, recording to {} (Ctrl-C to stop)",
            recorder.current().display()
        ),
    }

    let (stats, pipeline) = capture.run(&mut session, options.duration)?;
    if let Some(err) = session.failure.take() {
        eprintln!("sockspy: {err:#}");
        summary(&session, &pipeline, &stats);
        return Ok(ExitCode::FAILURE);
    }
    summary(&session, &pipeline, &stats);
    // Every way to stop, a closed pipe included (as `| head` users expect), is a clean one.
    Ok(ExitCode::SUCCESS)
}

fn summary(session: &Session, pipeline: &Pipeline, stats: &KernelStats) {
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
            session.printed, stats.lost, stats.read_failed
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
    if pipeline.unresolved > 0 {
        line.push_str(&format!(", {} peers unresolved", pipeline.unresolved));
    }
    if pipeline.undecodable > 0 {
        line.push_str(&format!(", {} undecodable records", pipeline.undecodable));
    }
    // How much came through the kernel's own filters: events are what is
    // left after the rest, and the resolver's bookkeeping records.
    line.push_str(&format!(", {} records from the kernel", pipeline.records));
    eprintln!("{line}");
}
