//! `top`'s table as text: the cells of a row (the same for the batch
//! snapshots and the screen), a plain-text snapshot, and JSON rows.
//!
//! Numbers keep three significant digits in at most six characters, so
//! that every column but the two ends fits in 80 columns: rates with
//! `k`, `M`, `G` (thousands), durations with `us`, `ms`, `s`.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use serde::Serialize;

use super::{Column, Row};
use crate::{
    conversation::End,
    output::{
        conversation::{JsonEnd, JsonKind},
        print::{process_text, push_decimal, rfc3339},
    },
};

/// One refresh: how long its interval was and when it ended.
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    pub secs: f64,
    /// Wall-clock nanoseconds at its end.
    pub wall_ns: i128,
}

/// The columns shown: a connection count only for server rows.
pub fn columns(by_server: bool) -> Vec<Column> {
    use clap::ValueEnum;
    Column::value_variants()
        .iter()
        .copied()
        .filter(|column| by_server || *column != Column::Connections)
        .collect()
}

/// A column's header.
pub fn title(column: Column) -> &'static str {
    match column {
        Column::Client => "CLIENT",
        Column::Server => "SERVER",
        Column::Connections => "CONNS",
        Column::Requests => "REQ/S",
        Column::Sent => "SENT/S",
        Column::Received => "RECV/S",
        Column::P50 => "P50",
        Column::P99 => "P99",
        Column::Max => "MAX",
        Column::Queued => "QUEUED",
        Column::Errors => "ERR",
    }
}

/// A number column's width; none for the two ends, which take the rest.
pub fn width(column: Column) -> Option<usize> {
    match column {
        Column::Client | Column::Server => None,
        Column::Connections => Some(5),
        Column::Errors => Some(4),
        _ => Some(6),
    }
}

/// `comm[pid]`, or what else is known of an end.
fn process_or_name(line: &mut String, end: &End) {
    match (end.pid, &end.comm) {
        (Some(pid), comm) => process_text(line, comm.as_deref().unwrap_or("?"), pid),
        (None, Some(comm)) => line.push_str(comm),
        (None, None) => name(line, end),
    }
}

/// The end's socket name or address, else its socket.
fn name(line: &mut String, end: &End) {
    if let Some(path) = &end.path {
        let _ = write!(line, "{path}");
    } else if let Some(addr) = end.addr {
        let _ = write!(line, "{addr}");
    } else if let Some(sock) = end.sock {
        line.push_str("sock ");
        push_decimal(line, sock, 1);
    } else {
        line.push('?');
    }
}

/// The client column: its process, or with several, how many.
pub fn client_text(row: &Row) -> String {
    let mut line = String::new();
    if row.clients > 1 && row.client.pid.is_none() {
        let _ = write!(line, "{} clients", row.clients);
    } else {
        process_or_name(&mut line, &row.client);
    }
    line
}

/// The server column: its process and its socket's name or address.
pub fn server_text(row: &Row) -> String {
    let mut line = String::new();
    let server = &row.server;
    if server.pid.is_some() || server.comm.is_some() {
        process_or_name(&mut line, server);
        line.push(' ');
    }
    name(&mut line, server);
    line
}

/// `0`, `0.50`, `12.5`, `125`, `1.25k`, `12.5M`: three significant digits.
pub fn rate_text(value: f64) -> String {
    let mut value = value.max(0.0);
    let mut unit = "";
    for next in ["k", "M", "G", "T"] {
        if value < 999.5 {
            break;
        }
        value /= 1000.0;
        unit = next;
    }
    if value == 0.0 {
        "0".to_owned()
    } else if value < 9.995 {
        format!("{value:.2}{unit}")
    } else if value < 99.95 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// `250us`, `1.23ms`, `12.3ms`, `123ms`, `1.23s`: three significant digits.
pub fn micros_text(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..9_995 => format!("{:.2}ms", us as f64 / 1e3),
        9_995..99_950 => format!("{:.1}ms", us as f64 / 1e3),
        99_950..999_500 => format!("{:.0}ms", us as f64 / 1e3),
        999_500..9_995_000 => format!("{:.2}s", us as f64 / 1e6),
        9_995_000..99_950_000 => format!("{:.1}s", us as f64 / 1e6),
        _ => format!("{:.0}s", us as f64 / 1e6),
    }
}

/// A row's cell in `column`, over an interval of `secs`.
pub fn cell(row: &Row, column: Column, secs: f64) -> String {
    let per_second = |count: u64| rate_text(count as f64 / secs);
    let micros = |us: Option<u64>| us.map_or_else(|| "-".to_owned(), micros_text);
    match column {
        Column::Client => client_text(row),
        Column::Server => server_text(row),
        Column::Connections => row.connections.to_string(),
        Column::Requests => per_second(row.requests),
        Column::Sent => per_second(row.bytes[0]),
        Column::Received => per_second(row.bytes[1]),
        Column::P50 => micros(row.wait.percentile(50)),
        Column::P99 => micros(row.wait.percentile(99)),
        Column::Max => micros(row.wait.max()),
        Column::Queued => row
            .queued
            .map_or_else(|| "-".to_owned(), |bytes| rate_text(bytes as f64)),
        Column::Errors => row.errors.to_string(),
    }
}

/// What a refresh covered: `12 connections, 3 servers  over 1.00s`.
pub fn status_line(rows: &[Row], interval: &Interval, by_server: bool) -> String {
    let connections: u64 = rows.iter().map(|row| row.connections).sum();
    let mut line = format!("{connections} connections");
    if by_server {
        let _ = write!(line, ", {} servers", rows.len());
    }
    let _ = write!(line, "  over {:.2}s", interval.secs);
    line
}

/// The time a refresh ended: `2026-12-06T15:55:49.110949Z`, or with
/// `short`, `15:55:49`.
pub fn time_text(interval: &Interval, short: bool) -> String {
    let mut time = String::new();
    rfc3339(&mut time, interval.wall_ns);
    if short && let Some(clock) = time.get(11..19) {
        return clock.to_owned();
    }
    time
}

/// `text` in at most `width` characters: what does not fit is cut from
/// its middle (`python3…/pp.sock`), keeping a process's name and the end
/// of a path.
pub fn fit(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    if width < 2 {
        return text.chars().take(width).collect();
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let mut fitted: String = text.chars().take(head).collect();
    fitted.push('…');
    fitted.extend(text.chars().skip(count - tail));
    fitted
}

/// One snapshot as plain text: the status line, the header row, a line
/// per row and an empty line. The two ends are as wide as their widest
/// cell; the numbers are right-aligned.
pub fn write_text(
    out: &mut impl Write,
    rows: &[Row],
    interval: &Interval,
    by_server: bool,
    sort: Column,
) -> io::Result<()> {
    let columns = columns(by_server);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|column| cell(row, *column, interval.secs))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(at, column)| {
            let widest = cells.iter().map(|line| line[at].len()).max().unwrap_or(0);
            widest
                .max(title(*column).len())
                .max(width(*column).unwrap_or(0))
        })
        .collect();
    let mut text = format!(
        "sockspy top {}  {}  sorted by {}\n",
        time_text(interval, false),
        status_line(rows, interval, by_server),
        sort.name()
    );
    let line_of = |line: &mut String, words: &mut dyn Iterator<Item = &str>| {
        for (at, word) in words.enumerate() {
            if at > 0 {
                line.push(' ');
            }
            let wide = widths[at];
            if width(columns[at]).is_some() {
                let _ = write!(line, "{word:>wide$}");
            } else {
                let _ = write!(line, "{word:<wide$}");
            }
        }
        line.truncate(line.trim_end().len());
        line.push('\n');
    };
    line_of(&mut text, &mut columns.iter().map(|column| title(*column)));
    for line in &cells {
        line_of(&mut text, &mut line.iter().map(String::as_str));
    }
    text.push('\n');
    out.write_all(text.as_bytes())
}

/// One row of `top --json`.
#[derive(Serialize)]
struct JsonRow<'a> {
    ts: &'a str,
    /// Seconds the rates are over.
    interval_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<u64>,
    #[serde(flatten)]
    kind: JsonKind,
    client: JsonEnd<'a>,
    server: JsonEnd<'a>,
    connections: u64,
    clients: u64,
    requests: u64,
    requests_per_s: f64,
    sent_bytes: u64,
    sent_bytes_per_s: f64,
    received_bytes: u64,
    received_bytes_per_s: f64,
    wait_p50_us: Option<u64>,
    wait_p99_us: Option<u64>,
    wait_max_us: Option<u64>,
    queued_bytes: Option<u64>,
    errors: u64,
}

/// One JSON object per row, a line each.
pub fn write_json(out: &mut impl Write, rows: &[Row], interval: &Interval) -> io::Result<()> {
    let mut ts = String::new();
    rfc3339(&mut ts, interval.wall_ns);
    let rate = |count: u64| count as f64 / interval.secs;
    for row in rows {
        let json = JsonRow {
            ts: &ts,
            interval_s: interval.secs,
            connection: row.connection,
            kind: JsonKind::new(&row.kind),
            client: JsonEnd::new(&row.client),
            server: JsonEnd::new(&row.server),
            connections: row.connections,
            clients: row.clients,
            requests: row.requests,
            requests_per_s: rate(row.requests),
            sent_bytes: row.bytes[0],
            sent_bytes_per_s: rate(row.bytes[0]),
            received_bytes: row.bytes[1],
            received_bytes_per_s: rate(row.bytes[1]),
            wait_p50_us: row.wait.percentile(50),
            wait_p99_us: row.wait.percentile(99),
            wait_max_us: row.wait.max(),
            queued_bytes: row.queued,
            errors: row.errors,
        };
        serde_json::to_writer(&mut *out, &json)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
