//! Printing resolved events: a text table for people, JSON Lines for scripts.
//!
//! Both printers write to a buffered writer that the caller flushes after
//! each batch; the JSON field names are a published contract (docs/events.md).

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
    ops::Range,
};

use serde::Serialize;
use sockspy_common::{EventKind, FLAG_CREDENTIALS};

use crate::{
    capture::events::{
        UnixName, clock_ns, comm_text, family_name, kind_name, proto_name, tcp_state_name,
        type_name,
    },
    conversation::{CallDecoding, Decoded},
    output::{conversation::said_text, side::BySocket},
    table::container::Context,
    table::resolve::{Event, Peer, PeerHolder},
};

/// Converts kernel `CLOCK_MONOTONIC` stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock minus monotonic, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset now.
    pub fn now() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// For stamps that are wall-clock time already (events read back from
    /// a recording).
    pub fn epoch() -> Self {
        Self { offset_ns: 0 }
    }

    /// Wall-clock nanoseconds since the Unix epoch.
    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.offset_ns
    }
}

/// Which printer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// How captured payload is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadStyle {
    /// Payload capture is on: data events carry `data`, `captured`, `truncated`.
    pub captured: bool,
    /// Always a hex dump on the terminal, even for text.
    pub hex: bool,
}

/// Writes events in one format.
pub struct Printer {
    pub(super) format: Format,
    pub(super) clock: Clock,
    pub(super) payload: PayloadStyle,
    pub(super) line: String,
    pub(super) memo: LineMemo,
    /// `--wide`: the text has a CGROUP column.
    wide: bool,
}

impl Printer {
    pub fn new(format: Format, clock: Clock, payload: PayloadStyle) -> Self {
        Self {
            format,
            clock,
            payload,
            line: String::with_capacity(256),
            memo: LineMemo::default(),
            wide: false,
        }
    }

    /// With `wide`, the text shows each event's cgroup path in a column
    /// of its own (`--wide`).
    pub fn wide(mut self, wide: bool) -> Self {
        self.wide = wide;
        self
    }

    /// Writes the header row (text only).
    pub fn header(&self, out: &mut impl Write) -> io::Result<()> {
        if self.format == Format::Text {
            write!(out, "{:<15} {:<7} {:<15} ", "TIME", "PID", "COMM")?;
            if self.wide {
                write!(out, "{:<CGROUP_WIDTH$} ", "CGROUP")?;
            }
            writeln!(
                out,
                "{:<4} {:<10} {:>6}  {:<9} {:<8} {:<25} PEER",
                "FD", "EVENT", "RESULT", "TYPE", "SOCK", "PATH"
            )?;
        }
        Ok(())
    }

    /// One event with what decoding made of its call (`--decode`): in
    /// text, a line under the event's for each message it completed, and
    /// for what decoding says once; in JSON, the protocol (`app`) and the
    /// first message's fields (`message`), all of them in `messages` when
    /// there are several, and `undecoded` or `resync_offset`.
    pub fn call(
        &mut self,
        out: &mut impl Write,
        event: &Event,
        decoded: &CallDecoding,
    ) -> io::Result<()> {
        match self.format {
            Format::Text => {
                self.line.clear();
                text_line(
                    &mut self.line,
                    event,
                    &self.clock,
                    &mut self.memo,
                    self.wide,
                );
                if self.payload.captured && is_data(event) && event.ret > 0 {
                    payload_text(&mut self.line, &event.data, event.ret, self.payload.hex);
                }
                for Decoded { app, message } in &decoded.messages {
                    let _ = write!(self.line, "    = {app}: ");
                    push_one_line(&mut self.line, &message.text);
                    let failed = if message.failed { " (failed)" } else { "" };
                    let _ = writeln!(self.line, "{failed}");
                }
                said_text(
                    &mut self.line,
                    decoded.resync_offset,
                    decoded.undecoded.as_deref(),
                );
                out.write_all(self.line.as_bytes())
            }
            Format::Json => {
                self.line.clear();
                rfc3339(&mut self.line, self.clock.wall_ns(event.ts_ns));
                let json = JsonEvent::new(event, &self.line, self.payload.captured);
                if *decoded == CallDecoding::NONE {
                    serde_json::to_writer(&mut *out, &json)?;
                } else {
                    let messages = &decoded.messages;
                    serde_json::to_writer(
                        &mut *out,
                        &JsonCall {
                            event: json,
                            app: messages.first().map(|first| first.app),
                            message: messages.first().map(|first| &first.message.fields),
                            messages: (messages.len() > 1)
                                .then(|| messages.iter().map(|d| &d.message.fields).collect()),
                            undecoded: decoded.undecoded.as_deref(),
                            resync_offset: decoded.resync_offset,
                        },
                    )?;
                }
                out.write_all(b"\n")
            }
        }
    }
}

fn text_line(line: &mut String, event: &Event, clock: &Clock, memo: &mut LineMemo, wide: bool) {
    let (time, micros) = memo.time.of(clock.wall_ns(event.ts_ns));
    line.push_str(time);
    push_decimal(line, micros, 6);
    line.push(' ');
    // A socket's events mostly repeat its last one's process and socket
    // columns (a stream of sends and receives, often of one size): those
    // are rendered once and copied while everything they show stays the same.
    let start = line.len();
    if let Some(repeat) = memo.find(event) {
        let call = (event.kind, event.ret, event.state);
        if repeat.call == call {
            line.push_str(&repeat.text);
            return;
        }
        line.push_str(&repeat.text[..repeat.calls.start]);
        call_columns(line, event);
        let calls = repeat.calls.start..line.len() - start;
        line.push_str(&repeat.text[repeat.calls.end..]);
        repeat.call = call;
        repeat.calls = calls;
        repeat.text.clear();
        repeat.text.push_str(&line[start..]);
        return;
    }
    who_columns(line, event, wide);
    let calls = line.len() - start..;
    call_columns(line, event);
    let calls = calls.start..line.len() - start;
    socket_columns(line, event);
    memo.remember(event, &line[start..], calls);
}

/// Width of the `--wide` CGROUP column (longer paths push the rest along).
const CGROUP_WIDTH: usize = 32;

/// PID, COMM (`comm@container` in a container), CGROUP with `wide`, and
/// FD, each column written in place and padded, as `{:<N}` would: an event
/// line costs no allocation.
fn who_columns(line: &mut String, event: &Event, wide: bool) {
    column(line, 7, |l| push_decimal(l, event.pid.into(), 1));
    column(line, 15, |l| {
        l.push_str(&event.comm);
        container_suffix(l, &event.context);
    });
    if wide {
        column(line, CGROUP_WIDTH, |l| match &event.context.cgroup {
            Some(cgroup) => l.push_str(&cgroup.path),
            None => l.push('-'),
        });
    }
    column(line, 4, |l| match event.fd {
        Some(fd) => push_signed(l, fd.into()),
        None => l.push('-'),
    });
}

/// EVENT and RESULT (right-aligned in 6 characters).
fn call_columns(line: &mut String, event: &Event) {
    column(line, 10, |l| l.push_str(kind_name(event.kind)));
    let errno;
    let bytes;
    let result = if event.ret < 0 {
        errno = errno_name(-event.ret);
        &errno
    } else if event.kind == EventKind::State {
        tcp_state_name(event.state)
    } else if is_data(event) {
        bytes = Decimal::new(event.ret.unsigned_abs(), 1);
        bytes.as_str()
    } else {
        ""
    };
    // Every result is ASCII: its length is its width.
    line.push_str(&SPACES[..6usize.saturating_sub(result.len())]);
    line.push_str(result);
    line.push_str("  ");
}

/// TYPE, SOCK, PATH and PEER, what was passed, and the line's end.
fn socket_columns(line: &mut String, event: &Event) {
    use std::fmt::Write as _;
    column(line, 9, |l| {
        l.push_str(proto_name(event.family, event.protocol).unwrap_or(type_name(event.sock_type)));
    });
    column(line, 8, |l| match event.sock {
        Some(sock) => push_decimal(l, sock, 1),
        None => l.push('-'),
    });
    column(line, 25, |l| {
        let _ = where_text(l, event);
    });
    if let Some(peer) = &event.peer {
        peer_text(line, peer);
    }
    if event.passed_fds > 0 {
        let _ = write!(line, " [passes {} fds", event.passed_fds);
        for (i, file) in event.passed.iter().enumerate() {
            let _ = write!(
                line,
                "{} fd {} {}",
                if i == 0 { ":" } else { "," },
                file.fd,
                file.kind
            );
            if file.ino != 0 {
                let _ = write!(line, ":[{}]", file.ino);
            }
            if let Some(path) = &file.path {
                let _ = write!(line, " {path}");
            }
        }
        line.push(']');
    }
    if event.flags & FLAG_CREDENTIALS != 0 {
        line.push_str(" [passes credentials]");
    }
    // Trailing pad of an empty last column is noise (TYPE is never empty,
    // so this trims these columns only).
    let trimmed = line.trim_end().len();
    line.truncate(trimmed);
    line.push('\n');
}

/// What the text printer remembers between events: the time of day of the
/// last second, and each busy socket's last line.
#[derive(Debug, Default)]
pub(super) struct LineMemo {
    pub(super) time: TimeOfDay,
    repeats: BySocket<Repeat>,
}

/// A socket's last line from PID on, and the call it showed.
#[derive(Debug)]
struct Repeat {
    /// The kind, result and TCP state the call columns show.
    call: (EventKind, i64, u16),
    /// The line from PID to its end.
    text: String,
    /// Where the call columns (EVENT and RESULT) are in `text`.
    calls: Range<usize>,
}

impl LineMemo {
    /// The last line of `event`'s socket, if everything but the call
    /// columns would be the same (passed credentials are shown, not kept).
    fn find(&mut self, event: &Event) -> Option<&mut Repeat> {
        if event.flags & FLAG_CREDENTIALS != 0 {
            return None;
        }
        self.repeats.find(event)
    }

    fn remember(&mut self, event: &Event, text: &str, calls: Range<usize>) {
        if event.flags & FLAG_CREDENTIALS != 0 {
            return;
        }
        let repeat = Repeat {
            call: (event.kind, event.ret, event.state),
            text: text.to_owned(),
            calls,
        };
        self.repeats.keep(event, repeat);
    }
}

/// The PATH column: a Unix socket's name, or an IP socket's
/// `laddr:lport -> raddr:rport` (`*` for an end not known or not bound).
fn where_text(line: &mut String, event: &Event) -> std::fmt::Result {
    use std::fmt::Write as _;
    if event.local.is_none() && event.remote.is_none() {
        return match &event.path {
            Some(path) => write!(line, "{path}"),
            None => Ok(()),
        };
    }
    match event.local {
        Some(local) => write!(line, "{local}")?,
        None => line.push('*'),
    }
    match event.remote {
        Some(remote) => write!(line, " -> {remote}"),
        None => Ok(()),
    }
}

/// Spaces to pad the widest column with.
const SPACES: &str = "                                ";

/// Writes one column with `fill`, padded with spaces to `width`
/// (at most 32) characters, and the space after it.
fn column(line: &mut String, width: usize, fill: impl FnOnce(&mut String)) {
    let start = line.len();
    fill(line);
    let filled = &line[start..];
    let chars = if filled.is_ascii() {
        filled.len()
    } else {
        filled.chars().count()
    };
    line.push_str(&SPACES[..width.saturating_sub(chars)]);
    line.push(' ');
}

/// Appends `value` in decimal, with leading zeros to `width` digits: what
/// `{value:0width$}` writes, without the formatting machinery, which took
/// a tenth of sockspy's time printing a busy trace.
pub(super) fn push_decimal(line: &mut String, value: u64, width: usize) {
    line.push_str(Decimal::new(value, width).as_str());
}

/// "00" to "99", for [`Decimal::new`].
const PAIRS: [u8; 200] = {
    let mut pairs = [0; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// A number's decimal digits, zero-padded, on the stack.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut value: u64, width: usize) -> Self {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        // Two digits a step: half the chain of dependent divisions.
        while value >= 10 {
            let pair = (value % 100) as usize * 2;
            value /= 100;
            start -= 2;
            digits[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if value > 0 || start == digits.len() {
            start -= 1;
            digits[start] = b'0' + value as u8;
        }
        let start = start.min(digits.len().saturating_sub(width));
        Self { digits, start }
    }

    fn as_str(&self) -> &str {
        // SAFETY: `digits` holds only the ASCII bytes b'0' to b'9'. (Checking
        // that, or pushing digit by digit, cost as much as the rest of a line.)
        unsafe { std::str::from_utf8_unchecked(&self.digits[self.start..]) }
    }
}

/// Appends each `(value, width, after)`: the value zero-padded to `width`
/// digits, then `after` (a date's or a time's fields and separators).
fn push_fields<const N: usize>(line: &mut String, fields: [(u64, usize, char); N]) {
    for (value, width, after) in fields {
        push_decimal(line, value, width);
        line.push(after);
    }
}

/// Appends `value` in decimal, with its sign.
pub(super) fn push_signed(line: &mut String, value: i64) {
    if value < 0 {
        line.push('-');
    }
    push_decimal(line, value.unsigned_abs(), 1);
}

/// `text` on a line of its own kind: what decoders read from arbitrary
/// bytes may hold line breaks and control characters, shown escaped
/// (`\n`, `\u{1b}`) so that every record stays one line.
pub fn push_one_line(line: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
}

fn is_data(event: &Event) -> bool {
    matches!(event.kind, EventKind::Send | EventKind::Recv)
}

/// Indent of payload lines under their event.
const INDENT: &str = "    ";

/// Renders payload under its event line: text as text (`tcpdump -A` style,
/// control bytes escaped), anything else as a hex and ASCII dump (`-X` style).
pub(super) fn payload_text(line: &mut String, data: &[u8], moved: i64, hex: bool) {
    use std::fmt::Write as _;
    if hex || !looks_like_text(data) {
        for (row, chunk) in data.chunks(16).enumerate() {
            let _ = write!(line, "{INDENT}0x{:04x}:  ", row * 16);
            for i in 0..16 {
                match chunk.get(i) {
                    Some(byte) => {
                        let _ = write!(line, "{byte:02x}");
                    }
                    None => line.push_str("  "),
                }
                if i % 2 == 1 {
                    line.push(' ');
                }
            }
            line.push(' ');
            line.extend(chunk.iter().map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            }));
            line.push('\n');
        }
    } else {
        for text_line in data.split_inclusive(|&b| b == b'\n') {
            line.push_str(INDENT);
            for &byte in text_line {
                match byte {
                    b'\n' => line.push_str("\\n"),
                    b'\r' => line.push_str("\\r"),
                    b'\t' => line.push('\t'),
                    b'\\' => line.push_str("\\\\"),
                    0x20..=0x7e => line.push(byte as char),
                    _ => {
                        let _ = write!(line, "\\x{byte:02x}");
                    }
                }
            }
            line.push('\n');
        }
    }
    let missing = moved - data.len() as i64;
    if missing > 0 {
        let _ = writeln!(line, "{INDENT}[{missing} more bytes not captured]");
    }
}

/// Mostly printable ASCII (with tabs and line ends): show as text.
fn looks_like_text(data: &[u8]) -> bool {
    let printable = data
        .iter()
        .filter(|&&b| matches!(b, 0x20..=0x7e | b'\n' | b'\r' | b'\t'))
        .count();
    !data.is_empty() && printable * 10 >= data.len() * 9
}

/// `comm[pid]`.
pub(super) fn process_text(line: &mut String, comm: &str, pid: u32) {
    line.push_str(comm);
    line.push('[');
    push_decimal(line, pid.into(), 1);
    line.push(']');
}

/// `@3f2a9c`, the short container id, after a process in a container.
fn container_suffix(line: &mut String, context: &Context) {
    if let Some(id) = context.short_container() {
        line.push('@');
        line.push_str(id);
    }
}

fn peer_text(line: &mut String, peer: &Peer) {
    use std::fmt::Write as _;
    let start = line.len();
    let sep = |line: &mut String| {
        if line.len() > start {
            line.push(' ');
        }
    };
    if peer.pending {
        // Nobody holds the connection yet: who will accept it, and where.
        for (i, holder) in peer.holders.iter().enumerate() {
            if i > 0 {
                line.push_str(", ");
            }
            process_text(line, &holder.comm, holder.pid);
        }
        sep(line);
        line.push_str("listener");
        if let Some(fd) = peer.listen_fd {
            line.push_str(" fd ");
            push_signed(line, fd.into());
        }
        line.push_str(" (not yet accepted)");
    } else if let Some(pid) = peer.pid {
        process_text(line, peer.comm.as_deref().unwrap_or_default(), pid);
        container_suffix(line, &peer.context);
    }
    if let Some(fd) = peer.fd {
        sep(line);
        line.push_str("fd ");
        push_signed(line, fd.into());
    }
    if let Some(sock) = peer.sock {
        sep(line);
        line.push_str("sock ");
        push_decimal(line, sock, 1);
    }
    if let Some(path) = &peer.path {
        sep(line);
        let _ = write!(line, "{path}");
    }
    if let Some(via) = &peer.via {
        sep(line);
        let _ = write!(line, "(via {via})");
    }
    // An IP peer's address is in the PATH column already; say it here only
    // when no local process is known, so the column still names the other end.
    if line.len() == start
        && let Some(addr) = peer.addr
    {
        let _ = write!(line, "{addr}");
    }
}

/// The local time of day of the last second converted, as text
/// (`HH:MM:SS.`): events come many to a second, and `localtime_r` (or
/// even a 128-bit division) is not free.
#[derive(Debug, Default)]
pub(super) struct TimeOfDay {
    /// Where that second starts, wall-clock nanoseconds.
    start: Option<i128>,
    text: String,
}

impl TimeOfDay {
    /// The time of day of `wall_ns` to the second, and the microseconds past it.
    pub(super) fn of(&mut self, wall_ns: i128) -> (&str, u64) {
        let start = match self.start {
            Some(start) if (0..1_000_000_000).contains(&(wall_ns - start)) => start,
            _ => {
                let (secs, _) = seconds_and_micros(wall_ns);
                let (hour, minute, second) = local_time_of_day(secs);
                self.text.clear();
                push_fields(
                    &mut self.text,
                    [
                        (hour as u64, 2, ':'),
                        (minute as u64, 2, ':'),
                        (second as u64, 2, '.'),
                    ],
                );
                let start = i128::from(secs) * 1_000_000_000;
                self.start = Some(start);
                start
            }
        };
        (&self.text, (wall_ns - start) as u64 / 1000)
    }
}

fn local_time_of_day(secs: i64) -> (i32, i32, i32) {
    // SAFETY: zeroed tm is a valid out-parameter for localtime_r.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t = secs as libc::time_t;
    // SAFETY: valid pointers to a time_t and a tm.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        let day = secs.rem_euclid(86_400);
        return (
            (day / 3600) as i32,
            (day / 60 % 60) as i32,
            (day % 60) as i32,
        );
    }
    (tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// Whole seconds since the epoch and the microseconds past them; the
/// second is rounded down, so the microseconds are never negative, before
/// the epoch too.
fn seconds_and_micros(wall_ns: i128) -> (i64, i128) {
    (
        wall_ns.div_euclid(1_000_000_000) as i64,
        wall_ns.rem_euclid(1_000_000_000) / 1000,
    )
}

/// Appends RFC 3339 UTC with microseconds, e.g. `2026-11-23T07:41:02.114823Z`.
pub(super) fn rfc3339(out: &mut String, wall_ns: i128) {
    let (secs, micros) = seconds_and_micros(wall_ns);
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        out.push('-');
    }
    push_fields(
        out,
        [
            (year.unsigned_abs(), 4, '-'),
            (month.into(), 2, '-'),
            (day.into(), 2, 'T'),
            (day_secs as u64 / 3600, 2, ':'),
            (day_secs as u64 / 60 % 60, 2, ':'),
            (day_secs as u64 % 60, 2, '.'),
            (micros as u64, 6, 'Z'),
        ],
    );
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The symbolic name of an errno, as `strace` prints it.
pub fn errno_name(errno: i64) -> String {
    let name = match i32::try_from(errno).unwrap_or(0) {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("E{errno}"),
    };
    name.to_owned()
}

/// The JSON object of one event; field names are docs/events.md's schema.
/// An event whose call completed decoded messages.
#[derive(Serialize)]
struct JsonCall<'a> {
    #[serde(flatten)]
    event: JsonEvent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<&'a serde_json::Map<String, serde_json::Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    undecoded: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resync_offset: Option<u64>,
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    ts: &'a str,
    event: &'static str,
    family: &'static str,
    #[serde(rename = "type")]
    sock_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<&'static str>,
    #[serde(flatten)]
    ends: JsonEnds,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    pid: u32,
    tid: u32,
    comm: &'a str,
    thread: Cow<'a, str>,
    uid: u32,
    fd: Option<i32>,
    sock: Option<u64>,
    path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ret: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    captured: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    passed_fds: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    passed_files: Vec<JsonPassed>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    credentials: bool,
    #[serde(flatten)]
    context: JsonContext<'a>,
    peer: Option<JsonPeer<'a>>,
}

/// One end's container context, as `trace --json` and `pairs --json` name
/// it: `cgroup`, and where they apply `container`, `pod`, `netns`, `nspid`.
#[derive(Serialize)]
pub struct JsonContext<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nspid: Option<u32>,
}

impl<'a> JsonContext<'a> {
    pub fn new(context: &'a Context) -> Self {
        let cgroup = context.cgroup.as_deref();
        Self {
            cgroup: cgroup.map(|c| &*c.path),
            container: cgroup.and_then(|c| c.container.as_deref()),
            pod: cgroup.and_then(|c| c.pod.as_deref()),
            netns: context.netns,
            nspid: context.nspid,
        }
    }
}

/// An IP socket's two ends, as `trace --json` and `pairs --json` name them.
#[derive(Serialize)]
pub struct JsonEnds {
    #[serde(skip_serializing_if = "Option::is_none")]
    laddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rport: Option<u16>,
}

impl JsonEnds {
    pub fn new(local: Option<std::net::SocketAddr>, remote: Option<std::net::SocketAddr>) -> Self {
        Self {
            laddr: local.map(|a| a.ip().to_string()),
            lport: local.map(|a| a.port()),
            raddr: remote.map(|a| a.ip().to_string()),
            rport: remote.map(|a| a.port()),
        }
    }
}

#[derive(Serialize)]
struct JsonPassed {
    fd: i32,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ino: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

#[derive(Serialize)]
struct JsonPeer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sock: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pending: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_fd: Option<i32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    holders: &'a [PeerHolder],
    #[serde(flatten)]
    name: JsonPeerName,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<String>,
    #[serde(flatten)]
    context: JsonContext<'a>,
}

/// What a peer is called: a Unix socket's `path`, an IP peer's `addr` and
/// `port` (`trace --json` and `pairs --json` alike).
#[derive(Serialize)]
pub struct JsonPeerName {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl JsonPeerName {
    pub fn new(path: Option<&UnixName>, addr: Option<std::net::SocketAddr>) -> Self {
        Self {
            path: path.map(ToString::to_string),
            addr: addr.map(|a| a.ip().to_string()),
            port: addr.map(|a| a.port()),
        }
    }
}

impl<'a> JsonEvent<'a> {
    /// `ts`: the event's time, as [`rfc3339`] writes it.
    fn new(event: &'a Event, ts: &'a str, captured: bool) -> Self {
        use base64::Engine as _;
        let failed = event.ret < 0;
        let data_event = is_data(event);
        let payload = captured && data_event && !failed;
        Self {
            ts,
            event: kind_name(event.kind),
            family: family_name(event.family),
            sock_type: type_name(event.sock_type),
            proto: proto_name(event.family, event.protocol),
            ends: JsonEnds::new(event.local, event.remote),
            state: (event.kind == EventKind::State).then(|| tcp_state_name(event.state)),
            pid: event.pid,
            tid: event.tid,
            comm: &event.comm,
            thread: comm_text(&event.thread),
            uid: event.uid,
            fd: event.fd,
            sock: event.sock,
            path: event.path.as_deref().map(UnixName::text),
            call: Some(event.call.name()).filter(|name| !name.is_empty()),
            bytes: (data_event && !failed).then_some(event.ret),
            ret: failed.then_some(event.ret),
            error: failed.then(|| errno_name(-event.ret)),
            listen_fd: event.listen_fd,
            data: payload.then(|| base64::engine::general_purpose::STANDARD.encode(&event.data)),
            captured: payload.then_some(event.data.len()),
            truncated: payload.then_some((event.data.len() as i64) < event.ret),
            passed_fds: (event.passed_fds > 0).then_some(event.passed_fds),
            passed_files: event
                .passed
                .iter()
                .map(|file| JsonPassed {
                    fd: file.fd,
                    kind: file.kind,
                    ino: (file.ino != 0).then_some(file.ino),
                    path: file.path.as_ref().map(|p| p.to_string()),
                })
                .collect(),
            credentials: event.flags & FLAG_CREDENTIALS != 0,
            context: JsonContext::new(&event.context),
            peer: event.peer.as_ref().map(|peer| JsonPeer {
                sock: peer.sock,
                pid: peer.pid,
                comm: peer.comm.as_deref(),
                fd: peer.fd,
                pending: peer.pending,
                listen_fd: peer.listen_fd,
                holders: &peer.holders,
                name: JsonPeerName::new(peer.path.as_deref(), peer.addr),
                via: peer.via.as_ref().map(ToString::to_string),
                context: JsonContext::new(&peer.context),
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::rc::Rc;

    use bytes::Bytes;
    use sockspy_common::Call;

    use super::*;
    use crate::table::resolve::tests::make_pending;

    /// collectd[10] fd 9 (sock 100) sends 97 bytes to rrdcached[20] fd 12
    /// (sock 101, /run/rrdcached.sock).
    pub fn send_event() -> Event {
        let mut thread = [0u8; 16];
        thread[..8].copy_from_slice(b"writer#0");
        Event {
            kind: EventKind::Send,
            ts_ns: 5_000,
            pid: 10,
            tid: 11,
            uid: 0,
            comm: "collectd".into(),
            thread,
            family: 1,
            sock_type: 1,
            protocol: 0,
            state: 0,
            local: None,
            remote: None,
            call: Call::Sendto,
            fd: Some(9),
            listen_fd: None,
            sock: Some(100),
            path: None,
            ret: 97,
            flags: 0,
            data: Bytes::new(),
            passed_fds: 0,
            passed: Vec::new(),
            context: Context::default(),
            peer: Some(Peer {
                sock: Some(101),
                pid: Some(20),
                comm: Some("rrdcached".into()),
                fd: Some(12),
                path: Some(Rc::new(UnixName::Path("/run/rrdcached.sock".into()))),
                addr: None,
                ..Peer::default()
            }),
            unresolved: false,
            released: false,
        }
    }

    pub fn tcp_event() -> Event {
        let mut event = send_event();
        event.family = sockspy_common::AF_INET6;
        event.protocol = sockspy_common::IPPROTO_TCP;
        event.local = Some("[::ffff:127.0.0.1]:8080".parse().unwrap());
        event.remote = Some("[::ffff:127.0.0.1]:41000".parse().unwrap());
        event.peer = Some(Peer {
            sock: Some(7),
            pid: Some(30),
            comm: Some("curl".into()),
            fd: Some(5),
            addr: event.remote,
            ..Peer::default()
        });
        event
    }

    #[test]
    fn inet_json_fields() {
        let mut printer = Printer::new(Format::Json, Clock::now(), PayloadStyle::default());
        let mut out = Vec::new();
        printer
            .call(&mut out, &tcp_event(), &CallDecoding::NONE)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["family"], "inet6");
        assert_eq!(value["proto"], "tcp");
        assert_eq!(value["laddr"], "::ffff:127.0.0.1");
        assert_eq!(value["lport"], 8080);
        assert_eq!(value["raddr"], "::ffff:127.0.0.1");
        assert_eq!(value["rport"], 41000);
        assert_eq!(
            value["peer"],
            serde_json::json!({"sock": 7, "pid": 30, "comm": "curl", "fd": 5, "addr": "::ffff:127.0.0.1", "port": 41000})
        );
        // Unix events carry none of the IP keys.
        let mut out = Vec::new();
        printer
            .call(&mut out, &send_event(), &CallDecoding::NONE)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(value.get("proto").is_none() && value.get("lport").is_none());
    }

    /// A call that completed decoded messages carries them: `app` and the
    /// first one's fields as `message`, all in `messages` when several;
    /// in text, a line each under the call's.
    #[test]
    fn calls_carry_the_messages_they_completed() {
        let decoded = |command: &str| Decoded {
            app: "redis",
            message: crate::conversation::decode::Message {
                fields: serde_json::json!({"command": command, "key": "k"})
                    .as_object()
                    .cloned()
                    .unwrap(),
                ..crate::conversation::decode::tests::message(0, &format!("{command} k"))
            },
        };
        let of = |messages: &[Decoded]| CallDecoding {
            messages: messages.to_vec(),
            ..CallDecoding::NONE
        };
        let json_of = |decoding: &CallDecoding| {
            let mut printer = Printer::new(Format::Json, Clock::now(), PayloadStyle::default());
            let mut out = Vec::new();
            printer.call(&mut out, &send_event(), decoding).unwrap();
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let json = |messages: &[Decoded]| json_of(&of(messages));
        let one = json(&[decoded("GET")]);
        assert_eq!(one["event"], "send");
        assert_eq!(one["app"], "redis");
        assert_eq!(
            one["message"],
            serde_json::json!({"command": "GET", "key": "k"})
        );
        assert!(one.get("messages").is_none(), "{one}");
        let two = json(&[decoded("SET"), decoded("GET")]);
        assert_eq!(two["message"]["command"], "SET");
        assert_eq!(two["messages"][1]["command"], "GET");
        assert_eq!(two["messages"].as_array().map(Vec::len), Some(2));
        let plain = json(&[]);
        assert!(plain.get("app").is_none() && plain.get("message").is_none());
        // What decoding says once goes with the call it happened at, with
        // or without a message.
        let said = CallDecoding {
            undecoded: Some("not http any more: no request line".to_owned()),
            ..of(&[])
        };
        let fell_back = json_of(&said);
        assert_eq!(fell_back["undecoded"], "not http any more: no request line");
        assert!(fell_back.get("app").is_none() && fell_back.get("resync_offset").is_none());
        let resynced = json_of(&CallDecoding {
            resync_offset: Some(431),
            ..of(&[decoded("GET")])
        });
        assert_eq!(
            (resynced["resync_offset"].as_u64(), &resynced["app"]),
            (Some(431), &"redis".into())
        );
        let mut printer = Printer::new(Format::Text, Clock::now(), PayloadStyle::default());
        let mut out = Vec::new();
        printer.call(&mut out, &send_event(), &said).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().nth(1),
            Some("    (not http any more: no request line; plain turns from here)")
        );

        let mut printer = Printer::new(Format::Text, Clock::now(), PayloadStyle::default());
        let mut out = Vec::new();
        printer
            .call(
                &mut out,
                &send_event(),
                &of(&[decoded("SET"), decoded("GET")]),
            )
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1..], ["    = redis: SET k", "    = redis: GET k"]);
        // What a decoder read from arbitrary bytes stays on its line.
        let mut odd = decoded("GET");
        odd.message.text = "bulk a\nb\u{1b}[2J".to_owned();
        let mut out = Vec::new();
        printer.call(&mut out, &send_event(), &of(&[odd])).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().nth(1),
            Some("    = redis: bulk a\\nb\\u{1b}[2J")
        );
    }

    #[test]
    fn inet_text_shows_both_ends() {
        let mut printer = Printer::new(Format::Text, Clock::now(), PayloadStyle::default());
        let mut out = Vec::new();
        let mut remote_only = tcp_event();
        remote_only.peer = Some(Peer {
            addr: Some("192.0.2.7:443".parse().unwrap()),
            ..Peer::default()
        });
        printer
            .call(&mut out, &tcp_event(), &CallDecoding::NONE)
            .unwrap();
        printer
            .call(&mut out, &remote_only, &CallDecoding::NONE)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(" tcp ")
                && lines[0].contains("[::ffff:127.0.0.1]:8080 -> [::ffff:127.0.0.1]:41000")
                && lines[0].ends_with("curl[30] fd 5 sock 7"),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with("192.0.2.7:443"), "{}", lines[1]);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let clock = Clock {
            offset_ns: 1_000_000_000,
        };
        let mut printer = Printer::new(Format::Json, clock, PayloadStyle::default());
        let mut out = Vec::new();
        printer
            .call(&mut out, &send_event(), &CallDecoding::NONE)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["ts"], "1970-01-01T00:00:01.000005Z");
        assert_eq!(value["event"], "send");
        assert_eq!(value["family"], "unix");
        assert_eq!(value["type"], "stream");
        assert_eq!(value["comm"], "collectd");
        assert_eq!(value["thread"], "writer#0");
        assert_eq!(value["fd"], 9);
        assert_eq!(value["sock"], 100);
        assert_eq!(value["path"], serde_json::Value::Null);
        assert_eq!(value["bytes"], 97);
        assert_eq!(value["call"], "sendto");
        assert!(value.get("error").is_none());
        assert_eq!(
            value["peer"],
            serde_json::json!({"sock": 101, "pid": 20, "comm": "rrdcached", "fd": 12, "path": "/run/rrdcached.sock"})
        );
    }

    #[test]
    fn failures_carry_errno_names() {
        let mut event = send_event();
        event.kind = EventKind::Connect;
        event.ret = -i64::from(libc::ECONNREFUSED);
        let mut printer = Printer::new(Format::Json, Clock::now(), PayloadStyle::default());
        let mut out = Vec::new();
        printer.call(&mut out, &event, &CallDecoding::NONE).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["error"], "ECONNREFUSED");
        assert_eq!(value["ret"], -111);
        assert!(value.get("bytes").is_none());
        let mut printer = Printer::new(Format::Text, Clock::now(), PayloadStyle::default());
        let mut out = Vec::new();
        printer.call(&mut out, &event, &CallDecoding::NONE).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("connect") && text.contains("ECONNREFUSED"),
            "{text}"
        );
    }

    #[test]
    fn text_line_shows_peer_process() {
        let mut printer = Printer::new(Format::Text, Clock::now(), PayloadStyle::default());
        let mut out = Vec::new();
        printer.header(&mut out).unwrap();
        printer
            .call(&mut out, &send_event(), &CallDecoding::NONE)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME"));
        assert!(
            lines[1].ends_with("rrdcached[20] fd 12 sock 101 /run/rrdcached.sock"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(" 97 "));
    }

    /// Both ends in containers: `comm@id` and `comm[pid]@id` in the text,
    /// the CGROUP column with `--wide`, every fact in the JSON.
    #[test]
    fn containers_are_named_at_both_ends() {
        use crate::table::container::{Cgroup, Context};
        const ID: &str = "3f2a9c0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3";
        let mut event = send_event();
        event.context = Context {
            cgroup: Some(Rc::new(Cgroup::new(7, &format!("/docker/{ID}")))),
            netns: None,
            nspid: Some(1),
        };
        let peer = event.peer.as_mut().unwrap();
        peer.context = Context {
            cgroup: Some(Rc::new(Cgroup::new(8, "/machine.slice/machine-db.scope"))),
            netns: Some(4026531840),
            nspid: Some(42),
        };
        peer.via = Some(Rc::new(UnixName::Path("/var/run/rrd.sock".into())));
        let mut out = Vec::new();
        let mut printer =
            Printer::new(Format::Text, Clock::now(), PayloadStyle::default()).wide(true);
        printer.header(&mut out).unwrap();
        printer.call(&mut out, &event, &CallDecoding::NONE).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(" COMM            CGROUP "),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(&format!(" 10      collectd@3f2a9c /docker/{ID} 9    send ")),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with(
                "rrdcached[20]@db fd 12 sock 101 /run/rrdcached.sock (via /var/run/rrd.sock)"
            ),
            "{}",
            lines[1]
        );
        let mut out = Vec::new();
        let mut printer = Printer::new(Format::Json, Clock::now(), PayloadStyle::default());
        printer.call(&mut out, &event, &CallDecoding::NONE).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["cgroup"], format!("/docker/{ID}"));
        assert_eq!(value["container"], ID);
        assert_eq!(value["nspid"], 1);
        assert!(value.get("netns").is_none() && value.get("pod").is_none());
        assert_eq!(value["peer"]["container"], "db");
        assert_eq!(value["peer"]["netns"], 4026531840u32);
        assert_eq!(value["peer"]["nspid"], 42);
        assert_eq!(value["peer"]["via"], "/var/run/rrd.sock");
    }

    /// A connection not accepted yet: who holds the listener, its fd, the
    /// name; in JSON `pending`, `listen_fd` and every holder.
    #[test]
    fn a_pending_peer_names_the_listeners_holders() {
        let mut event = send_event();
        make_pending(event.peer.as_mut().unwrap(), &[20, 21]);
        let print = |format| {
            let mut printer = Printer::new(format, Clock::now(), PayloadStyle::default());
            let mut out = Vec::new();
            printer.call(&mut out, &event, &CallDecoding::NONE).unwrap();
            String::from_utf8(out).unwrap()
        };
        let text = print(Format::Text);
        assert!(
            text.trim_end().ends_with(
                "rrdcached[20], rrdcached[21] listener fd 4 (not yet accepted) /run/rrdcached.sock"
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&print(Format::Json)).unwrap();
        let peer = &json["peer"];
        assert_eq!(peer["pending"], true);
        assert_eq!(peer["listen_fd"], 4);
        assert_eq!(peer["pid"], 20);
        assert!(peer["fd"].is_null() && peer["sock"].is_null(), "{peer}");
        assert_eq!(peer["holders"][1]["pid"], 21);
        assert_eq!(peer["holders"][1]["fd"], 4);
        assert_eq!(peer["path"], "/run/rrdcached.sock");
    }

    fn captured(data: &[u8], moved: i64, style: PayloadStyle, format: Format) -> String {
        let mut event = send_event();
        event.data = Bytes::copy_from_slice(data);
        event.ret = moved;
        let mut printer = Printer::new(format, Clock::now(), style);
        let mut out = Vec::new();
        printer.call(&mut out, &event, &CallDecoding::NONE).unwrap();
        String::from_utf8(out).unwrap()
    }

    const CAPTURE: PayloadStyle = PayloadStyle {
        captured: true,
        hex: false,
    };

    #[test]
    fn text_payload_is_indented_and_escaped() {
        let text = captured(b"update a 1:2\r\nsecond\x01", 40, CAPTURE, Format::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "    update a 1:2\\r\\n");
        assert_eq!(lines[2], "    second\\x01");
        assert_eq!(lines[3], "    [19 more bytes not captured]");
    }

    #[test]
    fn binary_payload_is_a_hex_dump() {
        let all: Vec<u8> = (0..=255).collect();
        let text = captured(&all, 256, CAPTURE, Format::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 17);
        assert_eq!(
            lines[1],
            "    0x0000:  0001 0203 0405 0607 0809 0a0b 0c0d 0e0f  ................"
        );
        assert_eq!(
            lines[5],
            "    0x0040:  4041 4243 4445 4647 4849 4a4b 4c4d 4e4f  @ABCDEFGHIJKLMNO"
        );
        let hex = captured(
            b"hi",
            2,
            PayloadStyle {
                captured: true,
                hex: true,
            },
            Format::Text,
        );
        assert!(
            hex.lines()
                .nth(1)
                .unwrap()
                .starts_with("    0x0000:  6869 "),
            "{hex}"
        );
    }

    #[test]
    fn json_payload_round_trips() {
        use base64::Engine as _;
        let all: Vec<u8> = (0..=255).collect();
        let json = captured(&all, 300, CAPTURE, Format::Json);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let data = base64::engine::general_purpose::STANDARD
            .decode(value["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, all);
        assert_eq!(value["captured"], 256);
        assert_eq!(value["truncated"], true);
        assert_eq!(value["bytes"], 300);
        let off = captured(b"x", 1, PayloadStyle::default(), Format::Json);
        assert!(!off.contains("\"data\""), "{off}");
    }

    #[test]
    fn decimals_are_padded_and_signed() {
        let mut line = String::new();
        push_decimal(&mut line, 7, 2);
        push_decimal(&mut line, 0, 1);
        push_decimal(&mut line, 1234, 2);
        push_decimal(&mut line, u64::MAX, 6);
        push_signed(&mut line, -42);
        assert_eq!(line, "070123418446744073709551615-42");
        for value in [5, 10, 99, 100, 101, 999_999, 1_000_000] {
            let mut line = String::new();
            push_decimal(&mut line, value, 1);
            assert_eq!(line, value.to_string());
        }
        let mut line = String::new();
        push_decimal(&mut line, 42, 6);
        assert_eq!(line, "000042");
    }

    /// The printer copies a socket's columns from its last line while they
    /// stay the same: every line must still be what a printer that never
    /// saw the events before writes.
    #[test]
    fn repeated_lines_are_rendered_afresh_when_anything_changes() {
        let clock = Clock::now();
        let mut events = vec![send_event(); 3];
        let mut recv = send_event();
        recv.kind = EventKind::Recv;
        recv.ret = 12;
        events.push(recv.clone());
        recv.ret = -i64::from(libc::EAGAIN);
        events.push(recv);
        events.push(send_event());
        let changes: [fn(&mut Event); 8] = [
            |e| e.pid = 11,
            |e| e.comm = "collectd-2".into(),
            |e| e.fd = None,
            |e| e.path = Some(Rc::new(UnixName::Abstract("x".into()))),
            |e| e.peer.as_mut().unwrap().fd = Some(13),
            |e| e.peer.as_mut().unwrap().comm = Some("other".into()),
            |e| e.peer = None,
            |e| e.flags = FLAG_CREDENTIALS,
        ];
        for change in changes {
            let mut event = send_event();
            change(&mut event);
            events.push(event);
            events.push(send_event());
        }
        let mut tcp = tcp_event();
        tcp.sock = Some(100);
        events.push(tcp);
        events.push(send_event());
        let mut printer = Printer::new(Format::Text, clock, PayloadStyle::default());
        for event in &events {
            let mut repeated = Vec::new();
            printer
                .call(&mut repeated, event, &CallDecoding::NONE)
                .unwrap();
            let mut fresh = Vec::new();
            Printer::new(Format::Text, clock, PayloadStyle::default())
                .call(&mut fresh, event, &CallDecoding::NONE)
                .unwrap();
            assert_eq!(
                String::from_utf8(repeated).unwrap(),
                String::from_utf8(fresh).unwrap()
            );
        }
    }

    #[test]
    fn dates_are_gregorian() {
        let rfc3339 = |wall_ns| {
            let mut text = String::new();
            super::rfc3339(&mut text, wall_ns);
            text
        };
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T12:00:00Z, a leap day.
        assert_eq!(
            rfc3339(1_709_208_000_000_000_000),
            "2024-02-29T12:00:00.000000Z"
        );
        assert_eq!(rfc3339(-1_000), "1969-12-31T23:59:59.999999Z");
    }
}
