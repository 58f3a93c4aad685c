//! `sockspy top`: a live capture (`live`) into `top`'s rows, refreshed on
//! the screen, or printed as plain text or JSON snapshots (`-b`); or a
//! recording's events into one table over all of it (`-r FILE`).

use std::{
    io::{self, BufWriter, IsTerminal, Write},
    ops::ControlFlow,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use super::{
    live::{self, Consumer, Pipeline, Stop},
    read,
};
use crate::{
    capture::{
        events::clock_ns,
        loader::{self, Tracer},
    },
    cli::{DECODE_CAPTURE, TopOptions},
    filter::Filter,
    output::{
        record::Item,
        top::{
            Queues, Row, RowsBy, Top, by_server,
            screen::{Asked, Screen},
            sort,
            table::{self, Interval},
        },
    },
    table::resolve::Event,
};

/// How often the screen looks at the keyboard.
const KEYS: Duration = Duration::from_millis(50);

/// Where each refresh goes.
enum View {
    Screen(Box<Screen>),
    Text(BufWriter<io::Stdout>),
    Json(BufWriter<io::Stdout>),
}

struct Session<'a> {
    options: &'a TopOptions,
    top: Top,
    view: View,
    /// When the interval being counted began.
    since: Instant,
    /// When the next refresh is due.
    due: Instant,
    refreshes: u64,
}

impl Session<'_> {
    /// Ends the interval: its rows to the view.
    fn refresh(&mut self) -> ControlFlow<Stop> {
        let now = Instant::now();
        let interval = Interval {
            secs: now.duration_since(self.since).as_secs_f64(),
            wall_ns: clock_ns(libc::CLOCK_REALTIME),
        };
        self.since = now;
        self.due = now + self.options.delay;
        let queues = Queues::read(self.options.select.families);
        let rows = self.top.refresh(Some(&queues));
        let mut rows = grouped(rows, self.options.by);
        let (by, column) = (self.options.by, self.options.sort);
        let shown = match &mut self.view {
            View::Screen(screen) => screen.show(rows, interval),
            View::Text(out) => {
                sort(&mut rows, column);
                table::write_text(out, &rows, &interval, by, column)
            }
            View::Json(out) => {
                sort(&mut rows, column);
                table::write_json(out, &rows, &interval, by)
            }
        };
        if shown.is_err() {
            return ControlFlow::Break(Stop::ClosedPipe);
        }
        self.refreshes += 1;
        if self
            .options
            .iterations
            .is_some_and(|count| self.refreshes >= count)
        {
            return ControlFlow::Break(Stop::Count);
        }
        ControlFlow::Continue(())
    }
}

impl Consumer for Session<'_> {
    fn event(&mut self, event: &Event) -> ControlFlow<Stop> {
        self.top.event(event);
        ControlFlow::Continue(())
    }

    fn flush(&mut self) -> Option<Stop> {
        match &mut self.view {
            View::Screen(_) => None,
            View::Text(out) | View::Json(out) => out.flush().err().map(|_| Stop::ClosedPipe),
        }
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(match self.view {
            View::Screen(_) => KEYS,
            View::Text(_) | View::Json(_) => self.options.delay,
        })
    }

    fn tick(&mut self, _tracer: &Tracer, _pipeline: &Pipeline) -> ControlFlow<Stop> {
        if let View::Screen(screen) = &mut self.view {
            match screen.keys() {
                Ok(Asked::Nothing) => {}
                // The terminal went away.
                Ok(Asked::Quit) | Err(_) => return ControlFlow::Break(Stop::Quit),
            }
            if Instant::now() < self.due {
                return ControlFlow::Continue(());
            }
        }
        self.refresh()
    }

    fn finish(&mut self, _stop: Stop) {
        let _ = self.flush();
    }
}

/// A refresh's rows (per connection, or per connection and kind), added
/// up as `by` asks.
fn grouped(rows: Vec<Row>, by: RowsBy) -> Vec<Row> {
    match by {
        RowsBy::Connection => rows,
        RowsBy::Server | RowsBy::Kind => by_server(rows),
    }
}

/// `top`'s rows as `options` ask: decoded, per kind.
fn new_top(options: &TopOptions) -> Top {
    Top::with(options.decode.clone(), options.by == RowsBy::Kind)
}

/// Runs `top`, live or over a recording.
pub fn run(options: &TopOptions) -> anyhow::Result<ExitCode> {
    if let Some(file) = &options.read {
        return recording(options, file);
    }
    loader::check_privileges()?;
    let interactive = !options.batch && !options.json;
    if interactive && !io::stdout().is_terminal() {
        eprintln!("sockspy: top's live view needs a terminal; -b prints plain text snapshots");
        return Ok(ExitCode::from(2));
    }
    let capture = live::attach(&live::Request {
        select: &options.select,
        buffer_bytes: options.buffer_bytes,
        // The decoders need the start of each message; nothing is shown.
        capture_bytes: if options.decode.is_some() {
            DECODE_CAPTURE
        } else {
            0
        },
        backend: options.backend,
        kernel_log: false,
    })?;
    let families = live::family_names(options.select.families);
    let view = if interactive {
        let waiting = format!(
            "sockspy top: tracing {families} sockets, first refresh in {:.1}s",
            options.delay.as_secs_f64()
        );
        View::Screen(Box::new(Screen::open(options.sort, options.by, waiting)?))
    } else {
        eprintln!("sockspy: tracing {families} sockets (Ctrl-C to stop)");
        let out = BufWriter::with_capacity(1 << 16, io::stdout());
        if options.json {
            View::Json(out)
        } else {
            View::Text(out)
        }
    };
    let now = Instant::now();
    let mut session = Session {
        options,
        top: new_top(options),
        view,
        since: now,
        due: now + options.delay,
        refreshes: 0,
    };
    let ran = capture.run(&mut session, None);
    // The terminal is the user's again before anything more is said.
    drop(session);
    let (stats, _) = ran?;
    if stats.lost > 0 {
        eprintln!(
            "sockspy: {} records lost (ring buffer full): the rates and latencies shown missed some calls",
            stats.lost
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `top -r FILE`: one table over the whole recording, its rates over the
/// time from its first event to its last.
fn recording(options: &TopOptions, file: &Path) -> anyhow::Result<ExitCode> {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout());
    let mut top = new_top(options);
    let mut filter = Filter::new(options.select.clone());
    let mut span: Option<(u64, u64)> = None;
    let each = |item: Item, _: &mut BufWriter<io::Stdout>| {
        if let Item::Event(event) = item
            && filter.keeps(&event)
        {
            let (first, last) = span.get_or_insert((event.ts_ns, event.ts_ns));
            *first = (*first).min(event.ts_ns);
            *last = (*last).max(event.ts_ns);
            top.event(&event);
        }
        Ok(())
    };
    if let Some(code) = read::each_item(&[file.to_path_buf()], &mut out, each) {
        return Ok(code);
    }
    top.finish();
    let mut rows = grouped(top.refresh(None), options.by);
    sort(&mut rows, options.sort);
    let (first, last) = span.unwrap_or_default();
    let interval = Interval {
        // A recording of one instant counts as a millisecond's.
        secs: ((last - first) as f64 / 1e9).max(1e-3),
        // A recording's times are wall-clock times.
        wall_ns: i128::from(last),
    };
    let written = if options.json {
        table::write_json(&mut out, &rows, &interval, options.by)
    } else {
        table::write_text(&mut out, &rows, &interval, options.by, options.sort)
    };
    // A closed pipe is a clean end.
    let _ = written.and_then(|()| out.flush());
    Ok(ExitCode::SUCCESS)
}
