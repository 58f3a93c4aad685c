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

use super::{Column, Row, RowsBy};
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

/// A column's header.
pub fn title(column: Column) -> &'static str {
    match column {
        Column::Client => "CLIENT",
        Column::Server => "SERVER",
        Column::Kind => "KIND",
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

/// A number column's width; none for the two ends and the kind, which
/// take the rest.
pub fn width(column: Column) -> Option<usize> {
    match column {
        Column::Client | Column::Server | Column::Kind => None,
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
    if row.client.pid.is_none() && row.connections > 1 {
        let _ = write!(line, "{}", plural(row.clients, "client"));
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
        Column::Kind => row.request_kind.as_deref().unwrap_or("-").to_owned(),
        Column::Connections => row.connections.to_string(),
        Column::Requests => per_second(row.requests),
        Column::Sent => per_second(row.bytes[0]),
        Column::Received => per_second(row.bytes[1]),
        Column::P50 => micros(row.wait.percentile(50)),
        Column::P99 => micros(row.wait.percentile(99)),
        Column::Max => micros(row.wait.max()),
        // A count, not a rate: whole below a thousand.
        Column::Queued => row.queued.map_or_else(
            || "-".to_owned(),
            |bytes| match bytes {
                0..1000 => bytes.to_string(),
                _ => rate_text(bytes as f64),
            },
        ),
        Column::Errors => row.errors.to_string(),
    }
}

/// `1 connection`, `2 connections`.
fn plural(count: u64, what: &str) -> String {
    format!("{count} {what}{}", if count == 1 { "" } else { "s" })
}

/// What a refresh covered: `12 connections, 3 servers  over 1.00s`, or
/// for kinds' rows `4 request kinds  over 1.00s` (a connection may
/// count in several).
pub fn status_line(rows: &[Row], interval: &Interval, by: RowsBy) -> String {
    let connections: u64 = rows.iter().map(|row| row.connections).sum();
    let mut line = match by {
        RowsBy::Connection => plural(connections, "connection"),
        RowsBy::Server => format!(
            "{}, {}",
            plural(connections, "connection"),
            plural(rows.len() as u64, "server")
        ),
        RowsBy::Kind => plural(rows.len() as u64, "request kind"),
    };
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
    by: RowsBy,
    sort: Column,
) -> io::Result<()> {
    let columns = Column::shown(by);
    // The numbers have widths of their own; the ends are measured first,
    // so that a table of many rows is written a line at a time.
    let mut widths: Vec<usize> = columns
        .iter()
        .map(|column| title(*column).len().max(width(*column).unwrap_or(0)))
        .collect();
    for row in rows {
        for (at, column) in columns.iter().enumerate() {
            if width(*column).is_none() {
                let text = cell(row, *column, interval.secs);
                widths[at] = widths[at].max(text.chars().count());
            }
        }
    }
    let line_of = |line: &mut String, words: &mut dyn Iterator<Item = String>| {
        line.clear();
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
    let mut line = format!(
        "sockspy top {}  {}  sorted by {}\n",
        time_text(interval, false),
        status_line(rows, interval, by),
        sort.name()
    );
    out.write_all(line.as_bytes())?;
    line_of(&mut line, &mut columns.iter().map(|c| title(*c).to_owned()));
    out.write_all(line.as_bytes())?;
    for row in rows {
        line_of(
            &mut line,
            &mut columns.iter().map(|c| cell(row, *c, interval.secs)),
        );
        out.write_all(line.as_bytes())?;
    }
    out.write_all(b"\n")
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
    /// Kinds' rows only.
    #[serde(flatten)]
    request: Option<JsonRequestKind<'a>>,
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

/// What a kind's row (`--by kind`) is of: `app` and `kind`, null for
/// exchanges not decoded.
#[derive(Serialize)]
struct JsonRequestKind<'a> {
    app: Option<&'a str>,
    kind: Option<&'a str>,
}

/// One JSON object per row, a line each.
pub fn write_json(
    out: &mut impl Write,
    rows: &[Row],
    interval: &Interval,
    by: RowsBy,
) -> io::Result<()> {
    let mut ts = String::new();
    rfc3339(&mut ts, interval.wall_ns);
    let rate = |count: u64| count as f64 / interval.secs;
    for row in rows {
        let json = JsonRow {
            ts: &ts,
            interval_s: interval.secs,
            connection: row.connection,
            kind: JsonKind::new(&row.kind),
            request: (by == RowsBy::Kind).then_some(JsonRequestKind {
                app: row.app,
                kind: row.request_kind.as_deref(),
            }),
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

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::capture::events::UnixName;

    #[test]
    fn numbers_keep_three_digits_in_six_characters() {
        let cases = [
            (rate_text(0.0), "0"),
            (rate_text(0.5), "0.50"),
            (rate_text(12.46), "12.5"),
            (rate_text(125.0), "125"),
            (rate_text(999.4), "999"),
            (rate_text(999.6), "1.00k"),
            (rate_text(12_345.0), "12.3k"),
            (rate_text(123_456_789.0), "123M"),
            (micros_text(0), "0us"),
            (micros_text(999), "999us"),
            (micros_text(1_234), "1.23ms"),
            (micros_text(9_996), "10.0ms"),
            (micros_text(12_345), "12.3ms"),
            (micros_text(123_456), "123ms"),
            (micros_text(999_600), "1.00s"),
            (micros_text(12_345_678), "12.3s"),
            (micros_text(123_456_789), "123s"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        // Just below each step up, where rounding would make a seventh.
        let edges = [0.001, 9.994, 99.94, 999.4, 5e5, 9.99e8, 1e12].map(rate_text);
        let us_edges = [9_994, 99_949, 999_499, 9_994_999, 99_949_999].map(micros_text);
        for text in edges.iter().chain(&us_edges) {
            assert!(text.len() <= 6, "{text}");
        }
    }

    #[test]
    fn fitting_cuts_the_middle() {
        assert_eq!(fit("python3[7493] /tmp/pp.sock", 16), "python3…/pp.sock");
        assert_eq!(fit("short", 16), "short");
        assert_eq!(fit("abc", 1), "a");
        assert_eq!(fit("abcdef", 5).chars().count(), 5);
    }

    fn row() -> Row {
        let mut row = Row {
            client: End {
                pid: Some(10),
                comm: Some("collectd".into()),
                fd: Some(9),
                sock: Some(100),
                ..End::default()
            },
            server: End {
                pid: Some(20),
                comm: Some("rrdcached".into()),
                fd: Some(12),
                sock: Some(101),
                path: Some(Rc::new(UnixName::Path("/run/rrdcached.sock".into()))),
                ..End::default()
            },
            kind: crate::conversation::Kind {
                family: 1,
                sock_type: 1,
                protocol: 0,
            },
            connection: Some(7),
            connections: 1,
            clients: 1,
            requests: 30,
            bytes: [3000, 600],
            errors: 1,
            queued: Some(42),
            ..Row::default()
        };
        for us in [1_000, 2_000, 50_000] {
            row.wait.add(us);
        }
        row
    }

    /// Two seconds, ending at 2023-11-14T22:13:20Z.
    const INTERVAL: Interval = Interval {
        secs: 2.0,
        wall_ns: 1_700_000_000_000_000_000,
    };

    #[test]
    fn a_text_snapshot_lines_up_its_columns() {
        let mut out = Vec::new();
        write_text(
            &mut out,
            &[row()],
            &INTERVAL,
            RowsBy::Connection,
            Column::P99,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "sockspy top 2023-11-14T22:13:20.000000Z  1 connection  over 2.00s  sorted by p99"
        );
        assert_eq!(
            lines[1],
            "CLIENT       SERVER                             REQ/S SENT/S RECV/S    P50    P99    MAX QUEUED  ERR"
        );
        assert_eq!(
            lines[2],
            "collectd[10] rrdcached[20] /run/rrdcached.sock   15.0  1.50k    300 2.00ms 50.0ms 50.0ms     42    1"
        );
        assert_eq!(lines[3..], [""], "an empty line after each snapshot");
    }

    #[test]
    fn json_rows_use_the_contract_names() {
        let mut out = Vec::new();
        write_json(&mut out, &[row()], &INTERVAL, RowsBy::Connection).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let expect = serde_json::json!({
            "ts": "2023-11-14T22:13:20.000000Z",
            "interval_s": 2.0,
            "connection": 7,
            "family": "unix",
            "type": "stream",
            "client": {"pid": 10, "comm": "collectd", "fd": 9, "sock": 100},
            "server": {"pid": 20, "comm": "rrdcached", "fd": 12, "sock": 101, "path": "/run/rrdcached.sock"},
            "connections": 1,
            "clients": 1,
            "requests": 30,
            "requests_per_s": 15.0,
            "sent_bytes": 3000,
            "sent_bytes_per_s": 1500.0,
            "received_bytes": 600,
            "received_bytes_per_s": 300.0,
            "wait_p50_us": 2000,
            "wait_p99_us": 50000,
            "wait_max_us": 50000,
            "queued_bytes": 42,
            "errors": 1,
        });
        assert_eq!(json, expect);
    }
}
