//! Printing what `conversation` found: one line (or JSON object) per
//! exchange and per connection summary, with the names `trace --json`
//! gives a socket's holder.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Write},
};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use super::print::{
    Format, JsonPeerName, Printer, errno_name, payload_text, process_text, push_decimal,
    push_one_line, push_signed, rfc3339,
};
use crate::{
    capture::events::{family_name, proto_name, type_name},
    conversation::{
        CallDecoding, End, Exchange, Finding, Kind, Summary, Times, decode::Message, turns::Span,
    },
    table::resolve::Event,
};

/// One thing to print: a call (with the messages it completed), or what
/// the conversations found.
#[derive(Clone, Copy)]
pub enum Output<'a> {
    Call(&'a Event, &'a CallDecoding),
    Finding(&'a Finding),
}

impl Output<'_> {
    pub fn print(self, printer: &mut Printer, out: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Call(event, decoded) => printer.call(out, event, decoded),
            Self::Finding(Finding::Exchange(exchange)) => printer.exchange(out, exchange),
            Self::Finding(Finding::Summary(summary)) => printer.summary(out, summary),
        }
    }
}

/// `1.23ms`, `250us`, `2.50s`: three significant digits from milliseconds on.
pub fn duration_text(line: &mut String, us: u64) {
    match us {
        0..1_000 => {
            push_decimal(line, us, 1);
            line.push_str("us");
        }
        1_000..1_000_000 => {
            let _ = write!(line, "{:.2}ms", us as f64 / 1e3);
        }
        _ => {
            let _ = write!(line, "{:.2}s", us as f64 / 1e6);
        }
    }
}

/// `comm[pid] fd N`, the socket's name or address; what is known of one end.
pub fn end_text(line: &mut String, end: &End, with_name: bool) {
    let start = line.len();
    let sep = |line: &mut String| {
        if line.len() > start {
            line.push(' ');
        }
    };
    if let Some(pid) = end.pid {
        process_text(line, end.comm.as_deref().unwrap_or("?"), pid);
    }
    if let Some(fd) = end.fd {
        sep(line);
        line.push_str("fd ");
        push_signed(line, fd.into());
    }
    if with_name {
        if let Some(path) = &end.path {
            sep(line);
            let _ = write!(line, "{path}");
        } else if let Some(addr) = end.addr {
            sep(line);
            let _ = write!(line, "{addr}");
        }
    }
    if line.len() == start {
        match end.sock {
            Some(sock) => {
                line.push_str("sock ");
                push_decimal(line, sock, 1);
            }
            None => line.push('?'),
        }
    }
}

/// `89 B` or `89 B/3` (bytes, and the calls they took when more than one).
fn turn_text(line: &mut String, bytes: u64, messages: u64) {
    push_decimal(line, bytes, 1);
    line.push_str(" B");
    if messages > 1 {
        line.push('/');
        push_decimal(line, messages, 1);
    }
}

/// `wait W = queue Q + ...`; a one-way exchange waits for nothing.
fn times_text(line: &mut String, times: &Times, one_way: bool) {
    let parts = [
        ("queue", times.queue_us),
        ("read", times.read_us),
        ("server", times.server_us),
        ("return", times.return_us),
    ];
    match times.wait_us {
        Some(wait) => {
            line.push_str("wait ");
            duration_text(line, wait);
        }
        None if one_way => line.push_str("one-way"),
        None => line.push_str("wait ?"),
    }
    let mut first = true;
    for (name, value) in parts {
        let Some(value) = value else { continue };
        line.push_str(if first { " = " } else { " + " });
        first = false;
        line.push_str(name);
        line.push(' ');
        duration_text(line, value);
    }
}

/// The one-line text of an exchange, without its time. The ends stay
/// client first; one the server asked reads `client <- server (asked by
/// server)`, its request the server's.
fn exchange_line(line: &mut String, exchange: &Exchange) {
    let turn = &exchange.turn;
    end_text(line, &exchange.client, true);
    line.push_str(if turn.asked_by_server() {
        " <- "
    } else {
        " -> "
    });
    end_text(line, &exchange.server, true);
    if turn.asked_by_server() {
        line.push_str(" (asked by server)");
    }
    line.push_str("  ");
    let (request, response) = (&turn.request, &turn.response);
    turn_text(line, request.bytes(), request.messages());
    line.push_str(" -> ");
    turn_text(line, response.bytes(), response.messages());
    line.push_str("  ");
    times_text(line, &exchange.times, turn.one_way);
    if let Some(app) = exchange.app {
        let _ = write!(line, "  {app}: ");
        fn text(message: Option<&Message>) -> &str {
            message.map_or("?", |m| m.text.as_str())
        }
        push_one_line(line, text(request.message.as_deref()));
        if !turn.one_way {
            line.push_str(" -> ");
            push_one_line(line, text(response.message.as_deref()));
        }
        if exchange.failed() {
            line.push_str(" (failed)");
        }
    }
    line.push('\n');
    said_text(line, exchange.resync_offset, exchange.undecoded.as_deref());
}

/// The lines decoding says once per connection, under an exchange or a
/// call: where it picked the connection up mid-stream, or why it went back
/// to plain turns.
pub fn said_text(line: &mut String, resync_offset: Option<u64>, undecoded: Option<&str>) {
    if let Some(offset) = resync_offset {
        let _ = writeln!(
            line,
            "    (joined mid-connection: resynchronised at byte offset {offset} of its requests)"
        );
    }
    if let Some(reason) = undecoded {
        line.push_str("    (");
        push_one_line(line, reason);
        line.push_str("; plain turns from here)\n");
    }
}

fn summary_line(line: &mut String, summary: &Summary) {
    line.push_str("summary ");
    end_text(line, &summary.client, true);
    line.push_str(" -> ");
    end_text(line, &summary.server, true);
    line.push_str("  ");
    duration_text(line, summary.duration_us());
    line.push_str("  ");
    push_decimal(line, summary.exchanges, 1);
    line.push_str(" exchanges  ");
    turn_text(line, summary.bytes[0], summary.messages[0]);
    line.push_str(" -> ");
    turn_text(line, summary.bytes[1], summary.messages[1]);
    if summary.wait.count() > 0 {
        for (name, percent) in [("p50", 50), ("p90", 90), ("p99", 99)] {
            let _ = write!(line, "  {name} ");
            duration_text(line, summary.wait.percentile(percent).unwrap_or_default());
        }
        line.push_str("  max ");
        duration_text(line, summary.wait.max().unwrap_or_default());
    }
    if let Some(by) = summary.closed_by {
        let _ = write!(line, "  closed by {by}");
    }
    for (errno, count) in &summary.errors {
        let _ = write!(line, "  {} x{count}", errno_name(*errno));
    }
    if summary.open {
        line.push_str("  (open)");
    }
    line.push('\n');
}

/// One end, as the `client` and `server` objects of the JSON.
#[derive(Serialize)]
pub struct JsonEnd<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sock: Option<u64>,
    #[serde(flatten)]
    name: JsonPeerName,
}

impl<'a> JsonEnd<'a> {
    pub fn new(end: &'a End) -> Self {
        Self {
            pid: end.pid,
            comm: end.comm.as_deref(),
            fd: end.fd,
            sock: end.sock,
            name: JsonPeerName::new(end.path.as_deref(), end.addr),
        }
    }
}

/// The socket kind fields every object has, as `trace --json` names them.
#[derive(Serialize)]
pub struct JsonKind {
    family: &'static str,
    #[serde(rename = "type")]
    sock_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<&'static str>,
}

impl JsonKind {
    pub fn new(kind: &Kind) -> Self {
        Self {
            family: family_name(kind.family),
            sock_type: type_name(kind.sock_type),
            proto: proto_name(kind.family, kind.protocol),
        }
    }
}

/// What exchange and summary records begin with.
#[derive(Serialize)]
struct JsonHead<'a> {
    ts: &'a str,
    event: &'static str,
    connection: u64,
    #[serde(flatten)]
    kind: JsonKind,
    client: JsonEnd<'a>,
    server: JsonEnd<'a>,
    start: &'a str,
}

impl<'a> JsonHead<'a> {
    fn new(
        ts: &'a str,
        event: &'static str,
        connection: u64,
        kind: &Kind,
        client: &'a End,
        server: &'a End,
        start: &'a str,
    ) -> Self {
        Self {
            ts,
            event,
            connection,
            kind: JsonKind::new(kind),
            client: JsonEnd::new(client),
            server: JsonEnd::new(server),
            start,
        }
    }
}

#[derive(Serialize)]
struct JsonExchange<'a> {
    #[serde(flatten)]
    head: JsonHead<'a>,
    request_bytes: u64,
    request_messages: u64,
    response_bytes: u64,
    response_messages: u64,
    queue_us: Option<u64>,
    read_us: Option<u64>,
    server_us: Option<u64>,
    return_us: Option<u64>,
    wait_us: Option<u64>,
    /// `server` for an exchange the server asked (decoded D-Bus).
    #[serde(skip_serializing_if = "Option::is_none")]
    asked_by: Option<&'static str>,
    /// A request that expects no answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    one_way: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    undecoded: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resync_offset: Option<u64>,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    #[serde(flatten)]
    head: JsonHead<'a>,
    duration_us: u64,
    sent_bytes: u64,
    sent_messages: u64,
    received_bytes: u64,
    received_messages: u64,
    exchanges: u64,
    wait_p50_us: Option<u64>,
    wait_p90_us: Option<u64>,
    wait_p99_us: Option<u64>,
    wait_max_us: Option<u64>,
    closed_by: Option<&'static str>,
    errors: u64,
    error_names: BTreeMap<String, u64>,
    open: bool,
}

fn base64(data: Option<&Bytes>) -> Option<String> {
    data.map(|data| base64::engine::general_purpose::STANDARD.encode(data))
}

impl Summary {
    pub fn duration_us(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns) / 1000
    }
}

impl Printer {
    /// Writes the header row of `--exchanges` (text only).
    pub fn exchange_header(&self, out: &mut impl Write) -> io::Result<()> {
        if self.format == Format::Text {
            writeln!(
                out,
                "{:<15} CLIENT -> SERVER  REQUEST -> RESPONSE  WAIT = QUEUE + READ + SERVER + RETURN",
                "START"
            )?;
        }
        Ok(())
    }

    /// The time column, or the JSON `ts` text, of a record at `ns`.
    fn stamp(&mut self, ns: u64) {
        self.line.clear();
        match self.format {
            Format::Text => {
                let (time, micros) = self.memo.time.of(self.clock.wall_ns(ns));
                self.line.push_str(time);
                push_decimal(&mut self.line, micros, 6);
                self.line.push(' ');
            }
            Format::Json => rfc3339(&mut self.line, self.clock.wall_ns(ns)),
        }
    }

    pub fn exchange(&mut self, out: &mut impl Write, exchange: &Exchange) -> io::Result<()> {
        self.stamp(exchange.start_ns);
        let (request, response) = (&exchange.turn.request, &exchange.turn.response);
        match self.format {
            Format::Text => {
                exchange_line(&mut self.line, exchange);
                if self.payload.captured {
                    for span in [request, response] {
                        if let Some(data) = &span.data {
                            payload_text(&mut self.line, data, data.len() as i64, self.payload.hex);
                        }
                    }
                }
                out.write_all(self.line.as_bytes())
            }
            Format::Json => {
                let captured = |span: &'_ Span| {
                    self.payload
                        .captured
                        .then(|| base64(span.data.as_ref()))
                        .flatten()
                };
                let json = JsonExchange {
                    head: JsonHead::new(
                        &self.line,
                        "exchange",
                        exchange.connection,
                        &exchange.kind,
                        &exchange.client,
                        &exchange.server,
                        &self.line,
                    ),
                    request_bytes: request.bytes(),
                    request_messages: request.messages(),
                    response_bytes: response.bytes(),
                    response_messages: response.messages(),
                    queue_us: exchange.times.queue_us,
                    read_us: exchange.times.read_us,
                    server_us: exchange.times.server_us,
                    return_us: exchange.times.return_us,
                    wait_us: exchange.times.wait_us,
                    asked_by: exchange.turn.asked_by_server().then_some("server"),
                    one_way: exchange.turn.one_way,
                    request_data: captured(request),
                    response_data: captured(response),
                    app: exchange.app,
                    failed: exchange.app.map(|_| exchange.failed()),
                    request: request.message.as_ref().map(|m| &m.fields),
                    response: response.message.as_ref().map(|m| &m.fields),
                    undecoded: exchange.undecoded.as_deref(),
                    resync_offset: exchange.resync_offset,
                };
                serde_json::to_writer(&mut *out, &json)?;
                out.write_all(b"\n")
            }
        }
    }

    pub fn summary(&mut self, out: &mut impl Write, summary: &Summary) -> io::Result<()> {
        match self.format {
            Format::Text => {
                self.stamp(summary.end_ns);
                summary_line(&mut self.line, summary);
                out.write_all(self.line.as_bytes())
            }
            Format::Json => {
                self.stamp(summary.start_ns);
                let start = std::mem::take(&mut self.line);
                self.stamp(summary.end_ns);
                let wait = &summary.wait;
                let json = JsonSummary {
                    head: JsonHead::new(
                        &self.line,
                        "summary",
                        summary.connection,
                        &summary.kind,
                        &summary.client,
                        &summary.server,
                        &start,
                    ),
                    duration_us: summary.duration_us(),
                    sent_bytes: summary.bytes[0],
                    sent_messages: summary.messages[0],
                    received_bytes: summary.bytes[1],
                    received_messages: summary.messages[1],
                    exchanges: summary.exchanges,
                    wait_p50_us: wait.percentile(50),
                    wait_p90_us: wait.percentile(90),
                    wait_p99_us: wait.percentile(99),
                    wait_max_us: wait.max(),
                    closed_by: summary.closed_by,
                    errors: summary.errors.iter().map(|(_, count)| count).sum(),
                    error_names: summary
                        .errors
                        .iter()
                        .map(|(errno, count)| (errno_name(*errno), *count))
                        .collect(),
                    open: summary.open,
                };
                serde_json::to_writer(&mut *out, &json)?;
                out.write_all(b"\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::{
        capture::events::UnixName,
        conversation::turns::{REQUEST, RESPONSE, Turns},
        output::print::{Clock, PayloadStyle},
    };

    /// collectd's update to rrdcached, as the README shows it.
    fn update() -> Exchange {
        let mut turns = Turns::new(false);
        let ms = 1_000_000;
        turns.data(REQUEST, false, 81, 100 * ms, &Bytes::new());
        turns.data(REQUEST, true, 81, 100 * ms + 30_000, &Bytes::new());
        turns.data(RESPONSE, false, 31, 100 * ms + 98_000, &Bytes::new());
        turns.data(RESPONSE, true, 31, 100 * ms + 104_000, &Bytes::new());
        turns.boundary(REQUEST);
        let turn = turns.next_finished().unwrap();
        let end = |pid, comm: &str, fd, path: Option<&str>| End {
            pid: Some(pid),
            comm: Some(Rc::from(comm)),
            fd: Some(fd),
            sock: Some(u64::from(pid)),
            path: path.map(|p| Rc::new(UnixName::Path(p.into()))),
            addr: None,
            seen: true,
        };
        Exchange {
            connection: 1,
            kind: Kind {
                family: libc::AF_UNIX as u16,
                sock_type: libc::SOCK_STREAM as u16,
                protocol: 0,
            },
            client: end(24861, "collectd", 3, None),
            server: end(24853, "rrdcached", 5, Some("/run/rrdcached.sock")),
            start_ns: turn.request.first_send.unwrap(),
            times: Times::of(&turn),
            turn,
            app: None,
            undecoded: None,
            resync_offset: None,
        }
    }

    fn printed(format: Format, exchange: &Exchange) -> String {
        let mut printer = Printer::new(format, Clock::epoch(), PayloadStyle::default());
        let mut out = Vec::new();
        printer.exchange(&mut out, exchange).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_exchange_in_text_and_json() {
        let exchange = update();
        let text = printed(Format::Text, &exchange);
        assert!(
            text.ends_with(
                "collectd[24861] fd 3 -> rrdcached[24853] fd 5 /run/rrdcached.sock  \
                 81 B -> 31 B  wait 104us = queue 30us + read 0us + server 68us + return 6us\n"
            ),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&printed(Format::Json, &exchange)).unwrap();
        assert_eq!(json["event"], "exchange");
        assert_eq!(json["client"]["comm"], "collectd");
        assert_eq!(json["server"]["path"], "/run/rrdcached.sock");
        assert_eq!(json["family"], "unix");
        for (field, value) in [
            ("request_bytes", 81),
            ("response_bytes", 31),
            ("request_messages", 1),
            ("queue_us", 30),
            ("read_us", 0),
            ("server_us", 68),
            ("return_us", 6),
            ("wait_us", 104),
        ] {
            assert_eq!(json[field], value, "{field}");
        }
        assert!(json.get("request_data").is_none());
    }

    fn decoded(dir: usize, text: &str) -> Option<Box<Message>> {
        Some(Box::new(crate::conversation::decode::tests::message(
            dir, text,
        )))
    }

    #[test]
    fn exchanges_the_server_asked_and_one_way_ones() {
        let mut exchange = update();
        exchange.app = Some("dbus");
        exchange.turn.asker = RESPONSE;
        exchange.turn.request.message = decoded(RESPONSE, "call org.example.Foo.Bar");
        exchange.turn.response.message = decoded(REQUEST, "return");
        let text = printed(Format::Text, &exchange);
        assert!(
            text.contains(
                "collectd[24861] fd 3 <- rrdcached[24853] fd 5 /run/rrdcached.sock (asked by server)  \
                 81 B -> 31 B  wait 104us"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("dbus: call org.example.Foo.Bar -> return\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&printed(Format::Json, &exchange)).unwrap();
        assert_eq!(json["asked_by"], "server");
        assert_eq!(json["client"]["comm"], "collectd", "the ends stay");
        assert!(json.get("one_way").is_none());

        exchange.turn.one_way = true;
        exchange.turn.response = Span::default();
        exchange.turn.request.message = decoded(RESPONSE, "signal org.example.Foo.Changed");
        exchange.times = Times::of(&exchange.turn);
        let text = printed(Format::Text, &exchange);
        assert!(
            text.ends_with(
                "81 B -> 0 B  one-way = queue 30us + read 0us  \
                 dbus: signal org.example.Foo.Changed\n"
            ),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&printed(Format::Json, &exchange)).unwrap();
        assert_eq!(json["one_way"], true);
        assert_eq!(json["response_bytes"], 0);
        assert!(json["response"].is_null());
        assert_eq!(json["failed"], false);
    }

    #[test]
    fn durations_keep_three_digits() {
        let text = |us| {
            let mut line = String::new();
            duration_text(&mut line, us);
            line
        };
        assert_eq!(text(7), "7us");
        assert_eq!(text(1_234), "1.23ms");
        assert_eq!(text(2_500_000), "2.50s");
    }
}
