//! PostgreSQL's frontend/backend protocol, version 3 (its Unix socket,
//! 5432): the client's untyped startup packets (startup, SSLRequest,
//! GSSENCRequest, CancelRequest), then typed messages each way, a type
//! byte and a four-byte length. Hands on one request per point where the
//! client waits for the server (a simple Query, an extended-protocol batch
//! up to its Sync, the startup packet, a password) and one response per
//! point where the server waits for the client (ReadyForQuery, an
//! authentication request, CopyInResponse), with the request's SQL and the
//! response's command tag, row count and error.
//!
//! Bodies are passed over by their lengths, so only each message's start
//! need be captured. Where a call's capture ends before a message's
//! header, that side's boundaries are lost until the other side speaks:
//! the protocol is one turn at a time, so the other side's next message
//! means this side's message ended where its bytes so far end.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{
    Decoder, Message, Mismatch, Resync, Role,
    stream::{PIECE, Stream},
};
use crate::conversation::turns::{REQUEST, RESPONSE};

/// The most of a message's body kept to read it (SQL, an error's fields,
/// a startup packet's parameters); the rest is passed over.
const HEAD: u64 = 512;
/// The most of a query's SQL kept in `query`, in bytes.
const QUERY_KEPT: usize = 256;
/// The most of a query's SQL shown on the text line, in characters.
const QUERY_SHOWN: usize = 64;
/// The most message types listed in a request's `batch`.
const BATCH_KEPT: usize = 16;
/// The most prepared statements remembered per connection (their SQL
/// names an `execute` of a statement parsed in an earlier batch).
const STATEMENTS_KEPT: usize = 64;
/// A startup packet's most and least length (the server's own limits).
const STARTUP_LEN: std::ops::RangeInclusive<u32> = 8..=10_000;

/// Protocol 3.0, the startup packet's code.
const PROTOCOL_3: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Where one direction is.
#[derive(Debug, Default, Clone, Copy)]
enum At {
    /// Before a message's header.
    #[default]
    Header,
    /// After an untyped packet's length and its code's first byte.
    Code { len: u64, first: u8 },
    /// After the header of a message of type `kind` (0 for the client's
    /// untyped packets, whose `code` follows their length) with `len`
    /// bytes of body.
    Body { kind: u8, code: u32, len: u64 },
}

#[derive(Debug, Default)]
struct Side {
    stream: Stream,
    /// The direction's offset of the stream's first byte (a stream picked
    /// up again after its boundaries were lost starts afresh).
    base: u64,
    /// Bytes of the direction fed so far.
    fed: u64,
    at: At,
    /// The boundaries were lost (a header not captured): bytes are counted,
    /// not read, until the other side speaks.
    lost: bool,
}

impl Side {
    /// The direction's offset past the current message, once its body's
    /// passing over has been set.
    fn end(&self) -> u64 {
        self.base + self.stream.pos() + self.stream.skipping()
    }

    /// Picks the stream up again at a message boundary, where its bytes so
    /// far end.
    fn resync(&mut self) {
        self.stream = Stream::default();
        self.base = self.fed;
        self.at = At::Header;
        self.lost = false;
    }
}

/// The client's messages since its last request ended.
#[derive(Debug, Default)]
struct Batch {
    types: Vec<&'static str>,
    query: Option<String>,
    /// A prepared statement's name (Parse or Bind).
    statement: Option<String>,
    /// Startup parameters and the like, added to the fields as they are.
    extra: Map<String, Value>,
    truncated: bool,
}

/// An ErrorResponse's fields.
#[derive(Debug, Default)]
struct Error {
    severity: String,
    sqlstate: String,
    message: String,
}

/// The server's messages since its last response ended.
#[derive(Debug, Default)]
struct Answer {
    begun: bool,
    tag: Option<String>,
    commands: u64,
    data_rows: u64,
    error: Option<Error>,
    /// The last message worth naming when there is no tag or error.
    note: Option<&'static str>,
    auth: Option<&'static str>,
    status: Option<&'static str>,
    channel: Option<String>,
    truncated: bool,
    /// The answer to an SSLRequest or GSSENCRequest: what will encrypt.
    encryption: Option<&'static str>,
    /// Sent while no request waited (a notification): answers none.
    unasked: bool,
}

#[derive(Debug, Default)]
pub struct Postgresql {
    sides: [Side; 2],
    batch: Batch,
    answer: Answer,
    /// The client's packets are untyped until its startup packet.
    typed: bool,
    /// SSLRequests and GSSENCRequests waiting for their one-byte answer.
    encryption_asked: u32,
    /// The server agreed to encrypt: nothing more can be read.
    encrypted: Option<&'static str>,
    /// The last request was a simple Query: a COPY it started ends at
    /// CopyDone (after an extended batch, at the Sync that follows).
    simple: bool,
    /// Requests sent and answered, to tell an asynchronous notification
    /// while the connection is idle from part of a response.
    asked: u64,
    answered: u64,
    /// The last authentication request's code: what a `p` message is.
    auth: u32,
    /// Prepared statements' SQL by name.
    statements: HashMap<String, String>,
}

/// The message types each way, by type byte.
fn type_name(dir: usize, kind: u8) -> Option<&'static str> {
    Some(if dir == REQUEST {
        match kind {
            b'Q' => "query",
            b'P' => "parse",
            b'B' => "bind",
            b'D' => "describe",
            b'E' => "execute",
            b'S' => "sync",
            b'H' => "flush",
            b'C' => "close",
            b'F' => "function_call",
            b'p' => "password",
            b'X' => "terminate",
            b'd' => "copy_data",
            b'c' => "copy_done",
            b'f' => "copy_fail",
            _ => return None,
        }
    } else {
        match kind {
            b'R' => "Authentication",
            b'S' => "ParameterStatus",
            b'K' => "BackendKeyData",
            b'Z' => "ReadyForQuery",
            b'C' => "CommandComplete",
            b'D' => "DataRow",
            b'T' => "RowDescription",
            b'E' => "ErrorResponse",
            b'N' => "NoticeResponse",
            b'1' => "ParseComplete",
            b'2' => "BindComplete",
            b'3' => "CloseComplete",
            b'n' => "NoData",
            b'I' => "EmptyQueryResponse",
            b't' => "ParameterDescription",
            b's' => "PortalSuspended",
            b'G' => "CopyInResponse",
            b'H' => "CopyOutResponse",
            b'W' => "CopyBothResponse",
            b'd' => "CopyData",
            b'c' => "CopyDone",
            b'A' => "NotificationResponse",
            b'V' => "FunctionCallResponse",
            b'v' => "NegotiateProtocolVersion",
            _ => return None,
        }
    })
}

/// Whether `len` (counting itself) is a length type `kind` can have:
/// the messages without a body have exactly 4, ReadyForQuery 5.
fn plausible(dir: usize, kind: u8, len: u32) -> bool {
    let fixed = match (dir, kind) {
        (REQUEST, b'S' | b'H' | b'X' | b'c') => Some(4),
        (RESPONSE, b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c') => Some(4),
        (RESPONSE, b'Z') => Some(5),
        _ => None,
    };
    fixed.map_or(len >= 4 && len <= i32::MAX as u32, |fixed| len == fixed)
}

/// Whether a message of type `kind` is read (its first [`HEAD`] bytes
/// kept) or passed over whole.
fn wanted(dir: usize, kind: u8) -> bool {
    if dir == REQUEST {
        matches!(kind, 0 | b'Q' | b'P' | b'B' | b'C')
    } else {
        matches!(kind, b'R' | b'Z' | b'C' | b'E' | b'A')
    }
}

/// What an authentication request asks, by its code: as `auth` says it,
/// and as the text line does.
fn auth_names(code: u32) -> (&'static str, &'static str) {
    match code {
        0 => ("ok", "AuthenticationOk"),
        2 => ("kerberos_v5", "AuthenticationKerberosV5"),
        3 => ("cleartext_password", "AuthenticationCleartextPassword"),
        5 => ("md5_password", "AuthenticationMD5Password"),
        7 => ("gss", "AuthenticationGSS"),
        8 => ("gss_continue", "AuthenticationGSSContinue"),
        9 => ("sspi", "AuthenticationSSPI"),
        10 => ("sasl", "AuthenticationSASL"),
        11 => ("sasl_continue", "AuthenticationSASLContinue"),
        12 => ("sasl_final", "AuthenticationSASLFinal"),
        _ => ("other", "Authentication"),
    }
}

/// The request types, the most telling of a batch first (a batch is
/// named by the first of these it holds), with their names on the text
/// line.
const REQUEST_TYPES: [(&str, &str); 20] = [
    ("startup", "Startup"),
    ("ssl_request", "SSLRequest"),
    ("gssenc_request", "GSSENCRequest"),
    ("cancel", "CancelRequest"),
    ("query", "Query"),
    ("execute", "Execute"),
    ("bind", "Bind"),
    ("parse", "Parse"),
    ("describe", "Describe"),
    ("close", "Close"),
    ("function_call", "FunctionCall"),
    ("copy_fail", "CopyFail"),
    ("copy_done", "CopyDone"),
    ("copy_data", "CopyData"),
    ("password", "PasswordMessage"),
    ("sasl", "SASLResponse"),
    ("gss", "GSSResponse"),
    ("terminate", "Terminate"),
    ("sync", "Sync"),
    ("flush", "Flush"),
];

/// The NUL-terminated strings of `bytes` (the last may be cut short).
fn strings(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    bytes
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// SQL as kept in `query`: its first [`QUERY_KEPT`] bytes, cut at a
/// character's boundary.
fn kept_query(sql: String) -> String {
    if sql.len() <= QUERY_KEPT {
        return sql;
    }
    let mut end = QUERY_KEPT;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    sql[..end].to_owned()
}

/// SQL for the text line: on one line, at most [`QUERY_SHOWN`] characters.
fn shown_query(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let line = words.join(" ");
    if line.chars().count() <= QUERY_SHOWN {
        return line;
    }
    let cut: String = line.chars().take(QUERY_SHOWN).collect();
    format!("{cut}...")
}

/// The number a command tag ends with, for the commands that count rows
/// (`SELECT 3`, `INSERT 0 1`, `UPDATE 2`).
fn tag_rows(tag: &str) -> Option<u64> {
    let verb = tag.split(' ').next()?;
    const COUNTED: [&str; 8] = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY",
    ];
    if !COUNTED.contains(&verb) {
        return None;
    }
    tag.rsplit(' ').next()?.parse().ok()
}

/// The request type that tells most of what a batch did, and its name
/// on the text line.
fn telling(types: &[&'static str]) -> (&'static str, &'static str) {
    REQUEST_TYPES
        .into_iter()
        .find(|(kind, _)| types.contains(kind))
        .unwrap_or(("unknown", "?"))
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The SQL of a Query or Parse message of type `kind` whose body is
/// `whole` bytes, `body` of them captured; `None` when the body is not
/// one (a Query's one string must end where its length says).
fn resync_sql(kind: u8, body: &[u8], whole: usize) -> Option<&[u8]> {
    let captured = &body[..body.len().min(whole)];
    let nul = |bytes: &[u8]| bytes.iter().position(|&b| b == 0);
    match kind {
        b'Q' => match nul(captured) {
            Some(at) => (at + 1 == whole).then_some(&captured[..at]),
            None => (body.len() < whole).then_some(captured),
        },
        b'P' => {
            let rest = &captured[nul(captured)? + 1..];
            Some(&rest[..nul(rest).unwrap_or(rest.len())])
        }
        _ => None,
    }
}

impl Postgresql {
    /// A client whose first bytes are a startup packet of protocol 3.0,
    /// an SSLRequest or a GSSENCRequest.
    pub fn detect(first: &[u8]) -> Option<Self> {
        let (len, code) = (be32(first.get(..4)?), be32(first.get(4..8)?));
        let known = match code {
            PROTOCOL_3 => STARTUP_LEN.contains(&len),
            SSL_REQUEST | GSSENC_REQUEST => len == 8,
            _ => false,
        };
        known.then(Self::default)
    }

    /// Consumes what `dir`'s stream holds. `cut`: no more captured bytes
    /// come before a gap, so a body's start is read as far as it was
    /// captured.
    fn run(&mut self, dir: usize, cut: bool, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        loop {
            let side = &mut self.sides[dir];
            if side.stream.skipping() > 0 {
                return Ok(());
            }
            match side.at {
                At::Header => {
                    if !self.header(dir, found)? {
                        return Ok(());
                    }
                }
                At::Code { len, first } => {
                    let Some((rest, _)) = side.stream.take(3) else {
                        return Ok(());
                    };
                    let code = u32::from_be_bytes([first, rest[0], rest[1], rest[2]]);
                    side.at = At::Body { kind: 0, code, len };
                }
                At::Body { kind, code, len } => {
                    let want = if wanted(dir, kind) { len.min(HEAD) } else { 0 };
                    let buffered = side.stream.buffered() as u64;
                    let take = match want {
                        _ if buffered >= want => want,
                        _ if cut => buffered,
                        _ => return Ok(()),
                    };
                    let head = side
                        .stream
                        .take(take as usize)
                        .expect("buffered")
                        .0
                        .to_vec();
                    side.stream.skip(len - take);
                    side.at = At::Header;
                    let end = side.end();
                    let truncated = take < want;
                    if dir == REQUEST {
                        self.request(kind, code, &head, end, truncated, found)?;
                    } else {
                        self.response(kind, &head, end, truncated, found)?;
                    }
                }
            }
        }
    }

    /// Reads a message's header; false when it is not all here.
    fn header(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<bool, Mismatch> {
        if dir == RESPONSE && self.encryption_asked > 0 {
            // The one-byte answer to an SSLRequest or GSSENCRequest.
            let Some(byte) = self.sides[dir].stream.take(1).map(|(byte, _)| byte[0]) else {
                return Ok(false);
            };
            self.encryption_asked -= 1;
            self.begin_answer(found);
            let what = match byte {
                b'N' => "nothing",
                b'S' => "tls",
                b'G' => "gssapi",
                other => {
                    return Err(Mismatch(format!(
                        "{other:#04x} answers no SSLRequest or GSSENCRequest"
                    )));
                }
            };
            let end = self.sides[dir].end();
            self.answer.encryption = Some(what);
            self.finish_answer(end, found);
            if what != "nothing" {
                self.encrypted = Some(what);
            }
            return Ok(true);
        }
        let side = &mut self.sides[dir];
        let Some((bytes, _)) = side.stream.take(5) else {
            return Ok(false);
        };
        if dir == REQUEST && !self.typed && bytes[0] == 0 {
            // An untyped packet: its length, then a code (one byte of it here).
            let len = be32(&bytes[..4]);
            if !STARTUP_LEN.contains(&len) {
                return Err(Mismatch(format!("a startup packet of {len} bytes")));
            }
            side.at = At::Code {
                len: u64::from(len) - 8,
                first: bytes[4],
            };
            return Ok(true);
        }
        let (kind, len) = (bytes[0], be32(&bytes[1..]));
        if type_name(dir, kind).is_none() || !plausible(dir, kind, len) {
            return Err(Mismatch(format!(
                "{:?} with length {len} starts no PostgreSQL {} message",
                kind as char,
                if dir == REQUEST { "client" } else { "server" }
            )));
        }
        // Typed from here (a connection picked up after its startup, by
        // `--decode-as`, starts typed).
        self.typed |= dir == REQUEST;
        side.at = At::Body {
            kind,
            code: 0,
            len: u64::from(len) - 4,
        };
        Ok(true)
    }

    /// A new request begins: a response whose end was not captured ended
    /// where the server's bytes so far end.
    fn begin_batch(&mut self, found: &mut Vec<Message>) {
        if self.batch.types.is_empty() && self.sides[RESPONSE].lost {
            self.answer.truncated = true;
            let end = self.sides[RESPONSE].fed;
            self.finish_answer(end, found);
            self.sides[RESPONSE].resync();
        }
    }

    /// A new response begins: a request whose end was not captured ended
    /// where the client's bytes so far end.
    fn begin_answer(&mut self, found: &mut Vec<Message>) {
        if !self.answer.begun && self.sides[REQUEST].lost {
            self.batch.truncated = true;
            let end = self.sides[REQUEST].fed;
            self.finish_batch(end, true, found);
            self.sides[REQUEST].resync();
        }
        self.answer.begun = true;
    }

    /// One client message.
    fn request(
        &mut self,
        kind: u8,
        code: u32,
        head: &[u8],
        end: u64,
        truncated: bool,
        found: &mut Vec<Message>,
    ) -> Result<(), Mismatch> {
        self.begin_batch(found);
        self.batch.truncated |= truncated;
        if kind == 0 {
            return self.untyped(code, head, end, found);
        }
        let name = match (kind, self.auth) {
            (b'p', 10 | 11) => "sasl",
            (b'p', 7..=9) => "gss",
            _ => type_name(REQUEST, kind).expect("checked in header"),
        };
        if self.batch.types.len() < BATCH_KEPT {
            self.batch.types.push(name);
        }
        let mut parts = strings(head);
        let batch = &mut self.batch;
        match kind {
            b'Q' => batch.query = parts.next().map(kept_query),
            b'P' => {
                let statement = parts.next().unwrap_or_default();
                let sql = kept_query(parts.next().unwrap_or_default());
                if !statement.is_empty()
                    && (self.statements.len() < STATEMENTS_KEPT
                        || self.statements.contains_key(&statement))
                {
                    self.statements.insert(statement.clone(), sql.clone());
                }
                if !statement.is_empty() {
                    batch.statement.get_or_insert(statement);
                }
                batch.query.get_or_insert(sql);
            }
            b'B' => {
                let _portal = parts.next();
                let statement = parts.next().unwrap_or_default();
                if let Some(sql) = self.statements.get(&statement) {
                    batch.query.get_or_insert_with(|| sql.clone());
                }
                if !statement.is_empty() {
                    batch.statement.get_or_insert(statement);
                }
            }
            b'C' if head.first() == Some(&b'S') => {
                let statement = String::from_utf8_lossy(&head[1..]);
                self.statements.remove(statement.trim_end_matches('\0'));
            }
            _ => {}
        }
        let ends = match kind {
            b'Q' | b'F' => {
                self.simple = true;
                true
            }
            b'S' => {
                self.simple = false;
                true
            }
            b'p' | b'X' => true,
            b'c' | b'f' => self.simple,
            _ => false,
        };
        if ends {
            self.finish_batch(end, kind != b'X', found);
        }
        Ok(())
    }

    /// A startup packet, SSLRequest, GSSENCRequest or CancelRequest.
    fn untyped(
        &mut self,
        code: u32,
        head: &[u8],
        end: u64,
        found: &mut Vec<Message>,
    ) -> Result<(), Mismatch> {
        let (name, answered) = match code {
            SSL_REQUEST => ("ssl_request", true),
            GSSENC_REQUEST => ("gssenc_request", true),
            CANCEL_REQUEST => ("cancel", false),
            _ if code >> 16 == 3 => ("startup", true),
            _ => {
                return Err(Mismatch(format!(
                    "protocol {}.{} is not PostgreSQL's 3",
                    code >> 16,
                    code & 0xffff
                )));
            }
        };
        self.batch.types.push(name);
        match name {
            "ssl_request" | "gssenc_request" => self.encryption_asked += 1,
            "cancel" if head.len() >= 8 => {
                self.batch
                    .extra
                    .insert("pid".into(), be32(&head[..4]).into());
            }
            "startup" => {
                self.typed = true;
                let mut parts = strings(head);
                while let (Some(key), Some(value)) = (parts.next(), parts.next()) {
                    if matches!(key.as_str(), "user" | "database" | "application_name") {
                        self.batch.extra.insert(key, value.into());
                    }
                }
            }
            _ => {}
        }
        self.finish_batch(end, answered, found);
        Ok(())
    }

    /// The request ends at `end`; `answered`: a response is to come.
    fn finish_batch(&mut self, end: u64, answered: bool, found: &mut Vec<Message>) {
        let batch = std::mem::take(&mut self.batch);
        let (kind, name) = telling(&batch.types);
        let mut fields = Map::new();
        fields.insert("type".into(), kind.into());
        fields.insert("query".into(), batch.query.clone().into());
        fields.insert("batch".into(), batch.types.clone().into());
        if let Some(statement) = &batch.statement {
            fields.insert("statement".into(), statement.clone().into());
        }
        let mut text = name.to_owned();
        if kind == "startup" {
            for key in ["user", "database"] {
                if let Some(Value::String(value)) = batch.extra.get(key) {
                    text.push_str(&format!(" {key}={value}"));
                }
            }
        }
        if let Some(sql) = &batch.query {
            text.push_str(&format!(" \"{}\"", shown_query(sql)));
        }
        if batch.truncated {
            fields.insert("truncated".into(), true.into());
            text.push_str(" (not all captured)");
        }
        fields.extend(batch.extra);
        if answered {
            self.asked += 1;
        }
        // The SQL verb, or what the request is when it carries no SQL.
        let verb = batch.query.as_deref().and_then(|sql| {
            sql.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
                .find(|word| !word.is_empty())
        });
        let request_kind = verb.map_or_else(|| name.to_owned(), str::to_ascii_uppercase);
        found.push(Message {
            dir: REQUEST,
            end,
            text,
            fields,
            failed: false,
            key: None,
            kind: Some(super::kind(&request_kind)),
            // A Terminate gets no answer.
            role: if answered { Role::Asks } else { Role::OneWay },
        });
    }

    /// One server message.
    fn response(
        &mut self,
        kind: u8,
        head: &[u8],
        end: u64,
        truncated: bool,
        found: &mut Vec<Message>,
    ) -> Result<(), Mismatch> {
        let idle = !self.answer.begun && self.answered >= self.asked;
        self.begin_answer(found);
        let answer = &mut self.answer;
        answer.truncated |= truncated;
        let note = type_name(RESPONSE, kind).expect("checked in header");
        let ends = match kind {
            b'Z' => {
                answer.status = head.first().map(|status| match status {
                    b'I' => "idle",
                    b'T' => "transaction",
                    b'E' => "failed_transaction",
                    _ => "unknown",
                });
                true
            }
            b'R' if head.len() >= 4 => {
                let code = be32(head);
                self.auth = code;
                answer.auth = Some(auth_names(code).0);
                answer.note = Some(note);
                // The client is asked for something, but for Ok and a
                // SASL exchange's last word.
                !matches!(code, 0 | 12)
            }
            b'C' => {
                answer.tag = strings(head).next();
                answer.commands += 1;
                false
            }
            b'D' => {
                answer.data_rows += 1;
                false
            }
            b'E' => {
                let mut error = Error::default();
                for field in head.split(|&b| b == 0) {
                    let Some((&code, value)) = field.split_first() else {
                        break;
                    };
                    let value = String::from_utf8_lossy(value).into_owned();
                    match code {
                        b'V' => error.severity = value,
                        b'S' if error.severity.is_empty() => error.severity = value,
                        b'C' => error.sqlstate = value,
                        b'M' => error.message = value,
                        _ => {}
                    }
                }
                let fatal = matches!(error.severity.as_str(), "FATAL" | "PANIC");
                answer.error.get_or_insert(error);
                // The server closes the connection after a fatal error.
                fatal
            }
            b'A' => {
                let mut parts = strings(head.get(4..).unwrap_or_default());
                answer.channel = parts.next();
                answer.note = Some(note);
                // While the connection is idle a notification is a message
                // of its own, not part of the next response.
                idle
            }
            b'G' | b'W' => {
                answer.note = Some(note);
                true
            }
            b'T' | b't' | b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'H' | b'V' => {
                answer.note = Some(note);
                false
            }
            _ => false,
        };
        if ends {
            // A notification while idle answers nothing.
            self.answer.unasked = idle && kind == b'A';
            self.finish_answer(end, found);
        }
        Ok(())
    }

    /// The response ends at `end`.
    fn finish_answer(&mut self, end: u64, found: &mut Vec<Message>) {
        let answer = std::mem::take(&mut self.answer);
        let rows = answer
            .tag
            .as_deref()
            .and_then(tag_rows)
            .or((answer.data_rows > 0).then_some(answer.data_rows));
        let mut fields = Map::new();
        fields.insert("tag".into(), answer.tag.clone().into());
        fields.insert("rows".into(), rows.into());
        fields.insert("commands".into(), answer.commands.into());
        let error = answer.error.as_ref();
        fields.insert("sqlstate".into(), error.map(|e| e.sqlstate.clone()).into());
        fields.insert("message".into(), error.map(|e| e.message.clone()).into());
        if let Some(error) = error {
            fields.insert("severity".into(), error.severity.clone().into());
        }
        fields.insert("status".into(), answer.status.into());
        if let Some(auth) = answer.auth {
            fields.insert("auth".into(), auth.into());
        }
        if let Some(channel) = &answer.channel {
            fields.insert("channel".into(), channel.clone().into());
        }
        if let Some(what) = answer.encryption {
            fields.insert("encryption".into(), what.into());
        }
        let mut text = match (error, &answer.tag, answer.note) {
            _ if answer.encryption.is_some() => match answer.encryption {
                Some("tls") => "S (TLS from here)",
                Some("gssapi") => "G (GSSAPI encryption from here)",
                _ => "N (no encryption)",
            }
            .to_owned(),
            (Some(e), _, _) => format!("{} {} {}", e.severity, e.sqlstate, e.message),
            (None, Some(tag), _) => tag.clone(),
            (None, None, Some("Authentication")) => auth_names(self.auth).1.to_owned(),
            (None, None, Some("NotificationResponse")) => format!(
                "NotificationResponse {}",
                answer.channel.as_deref().unwrap_or_default()
            ),
            (None, None, Some(note)) => note.to_owned(),
            (None, None, None) => "ReadyForQuery".to_owned(),
        };
        if answer.truncated {
            fields.insert("truncated".into(), true.into());
            if answer.tag.is_none() && error.is_none() {
                text = format!("{} DataRows seen", answer.data_rows);
            }
            text.push_str(" (not all captured)");
        }
        if !answer.unasked {
            self.answered += 1;
        }
        found.push(Message {
            dir: RESPONSE,
            end,
            text,
            fields,
            failed: error.is_some(),
            key: None,
            kind: None,
            // A notification while idle answers nothing.
            role: if answer.unasked {
                Role::OneWay
            } else {
                Role::Answers
            },
        });
    }
}

impl Decoder for Postgresql {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn stream(&mut self, dir: usize) -> &mut Stream {
        &mut self.sides[dir].stream
    }

    fn consume(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        self.run(dir, false, found)
    }

    /// A simple Query (`Q`, its length, its SQL ending in a NUL where the
    /// length says) or a Parse (`P`, a statement's name, its SQL), as
    /// far as it was captured: the client is then past its startup.
    fn resync(&mut self, call: &[u8]) -> Resync {
        let here = call.get(..5).is_some_and(|head| {
            let (kind, len) = (head[0], be32(&head[1..]));
            plausible(REQUEST, kind, len)
                && resync_sql(kind, &call[5..], (len as usize).saturating_sub(4)).is_some_and(
                    |sql| {
                        !sql.is_empty()
                            && std::str::from_utf8(sql).is_ok_and(|sql| {
                                sql.chars().all(|c| !c.is_control() || c.is_whitespace())
                            })
                    },
                )
        });
        self.typed |= here;
        Resync::here_if(here)
    }

    /// As [`super::feed_stream`], but a message's start cut short by the
    /// capture is read as far as it goes, and a header not captured loses
    /// this side's boundaries until the other side speaks (the module's
    /// header) instead of ending the decoding.
    fn feed(
        &mut self,
        dir: usize,
        data: &[u8],
        len: u64,
        found: &mut Vec<Message>,
    ) -> Result<(), Mismatch> {
        if let Some(what) = self.encrypted {
            return Err(Mismatch(format!("encrypted ({what}) from here")));
        }
        let side = &mut self.sides[dir];
        side.fed += len;
        if side.lost {
            return Ok(());
        }
        // A piece at a time: what is buffered stays a message's start,
        // however much a call captured.
        for piece in data.chunks(PIECE) {
            self.sides[dir].stream.push(piece)?;
            self.run(dir, false, found)?;
        }
        let uncaptured = len - data.len() as u64;
        if uncaptured == 0 {
            return Ok(());
        }
        self.run(dir, true, found)?;
        let side = &mut self.sides[dir];
        if side.stream.buffered() > 0 || side.stream.skipping() < uncaptured {
            side.lost = true;
            return Ok(());
        }
        side.stream.gap(uncaptured)?;
        self.run(dir, false, found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::conversation::decode::tests::fed;

    /// A typed message: its type, length and body.
    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// NUL-terminated strings, one after the other.
    fn cstrings(parts: &[&str]) -> Vec<u8> {
        parts
            .iter()
            .flat_map(|p| [p.as_bytes(), b"\0"].concat())
            .collect()
    }

    fn startup(pairs: &[&str]) -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        body.extend(cstrings(pairs));
        body.push(0);
        let mut bytes = (body.len() as u32 + 4).to_be_bytes().to_vec();
        bytes.extend(body);
        bytes
    }

    fn untyped(code: u32) -> Vec<u8> {
        [8u32.to_be_bytes(), code.to_be_bytes()].concat()
    }

    fn auth(code: u32) -> Vec<u8> {
        msg(b'R', &code.to_be_bytes())
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &cstrings(&[tag]))
    }

    fn error(sqlstate: &str, message: &str) -> Vec<u8> {
        let fields = [
            "SERROR".to_owned(),
            "VERROR".to_owned(),
            format!("C{sqlstate}"),
            format!("M{message}"),
            "Fscan.l".to_owned(),
        ];
        let mut body: Vec<u8> = fields
            .iter()
            .flat_map(|f| [f.as_bytes(), b"\0"].concat())
            .collect();
        body.push(0);
        msg(b'E', &body)
    }

    fn data_row(len: usize) -> Vec<u8> {
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend((len as u32).to_be_bytes());
        body.extend(vec![b'x'; len]);
        msg(b'D', &body)
    }

    /// The messages of `bytes` fed whole, all captured.
    fn feed(pg: &mut Postgresql, dir: usize, bytes: &[u8]) -> Vec<Message> {
        fed(pg, dir, bytes, bytes.len() as u64)
    }

    /// The messages of `bytes` fed in calls of `size` bytes of which at
    /// most `capture` each were captured.
    fn feed_calls(
        pg: &mut Postgresql,
        dir: usize,
        bytes: &[u8],
        size: usize,
        capture: usize,
    ) -> Vec<Message> {
        let mut found = Vec::new();
        for call in bytes.chunks(size) {
            let captured = &call[..call.len().min(capture)];
            found.extend(fed(pg, dir, captured, call.len() as u64));
        }
        found
    }

    /// The messages of a simple Query of `sql`, sent whole.
    fn query(pg: &mut Postgresql, sql: &str) -> Vec<Message> {
        feed(pg, REQUEST, &msg(b'Q', &cstrings(&[sql])))
    }

    fn texts(found: &[Message]) -> Vec<&str> {
        found.iter().map(|m| m.text.as_str()).collect()
    }

    /// A trusting server's answer to a startup packet.
    fn greeting() -> Vec<u8> {
        [
            auth(0),
            msg(b'S', &cstrings(&["server_version", "15.18"])),
            msg(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]),
            ready(),
        ]
        .concat()
    }

    /// A connection after a trusted startup.
    fn started() -> Postgresql {
        let packet = startup(&["user", "alice", "database", "app"]);
        let mut pg = Postgresql::detect(&packet).unwrap();
        feed(&mut pg, REQUEST, &packet);
        feed(&mut pg, RESPONSE, &greeting());
        pg
    }

    #[test]
    fn a_query_start_inside_a_stream() {
        let query = msg(b'Q', b"select 1\0");
        let parse = msg(b'P', b"\0select $1\0\0\0");
        let long = msg(b'Q', &[b"select '".repeat(100), b"'\0".to_vec()].concat());
        crate::conversation::decode::tests::resyncs(
            "postgresql",
            // Whole, or cut by the capture.
            &[&query, &parse, &long[..40]],
            // Not at a type byte, no NUL where the length says, control
            // bytes, no SQL, a type the client does not send, a startup.
            &[
                &query[1..],
                &msg(b'Q', b"select 1"),
                &msg(b'Q', b"sel\0ect 1\0"),
                &msg(b'Q', b"\x01\x02\0"),
                &msg(b'Q', b"\0"),
                &msg(b'T', b"select 1\0"),
                &startup(&["user", "alice"]),
            ],
        );
        // Picked up there, it decodes from that Query on.
        let mut pg = Postgresql::default();
        assert_eq!(pg.resync(&query), Resync::Here);
        assert_eq!(
            texts(&feed(&mut pg, REQUEST, &query)),
            ["Query \"select 1\""]
        );
        let answer = [complete("SELECT 1"), ready()].concat();
        assert_eq!(texts(&feed(&mut pg, RESPONSE, &answer)), ["SELECT 1"]);
    }

    #[test]
    fn startup_and_trusted_authentication() {
        let packet = startup(&[
            "user",
            "alice",
            "database",
            "app",
            "application_name",
            "psql",
        ]);
        let mut pg = Postgresql::detect(&packet).unwrap();
        let asked = feed(&mut pg, REQUEST, &packet);
        assert_eq!(texts(&asked), ["Startup user=alice database=app"]);
        assert_eq!(asked[0].fields["type"], "startup");
        assert_eq!(asked[0].fields["user"], "alice");
        assert_eq!(asked[0].fields["database"], "app");
        assert_eq!(asked[0].fields["application_name"], "psql");
        assert_eq!(asked[0].end, packet.len() as u64);
        let greeting = greeting();
        // Split one byte a call: nothing is lost across calls.
        let answered = feed_calls(&mut pg, RESPONSE, &greeting, 1, 1);
        assert_eq!(texts(&answered), ["AuthenticationOk"]);
        assert_eq!(answered[0].fields["auth"], "ok");
        assert_eq!(answered[0].fields["status"], "idle");
        assert_eq!(answered[0].end, greeting.len() as u64);
        assert!(!answered[0].failed);
    }

    #[test]
    fn simple_queries_their_rows_and_errors() {
        let mut pg = started();
        let asked = query(&mut pg, "select *\n  from generate_series(1, 3)");
        assert_eq!(
            texts(&asked),
            ["Query \"select * from generate_series(1, 3)\""]
        );
        assert_eq!(
            asked[0].fields["query"],
            "select *\n  from generate_series(1, 3)"
        );
        assert_eq!(asked[0].fields["batch"], serde_json::json!(["query"]));
        assert_eq!(asked[0].kind.as_deref(), Some("SELECT"), "the SQL verb");
        let rows = [
            msg(b'T', b"\0\x01generate_series\0"),
            data_row(1),
            data_row(1),
            data_row(1),
            complete("SELECT 3"),
            ready(),
        ]
        .concat();
        let answered = feed_calls(&mut pg, RESPONSE, &rows, 7, 7);
        assert_eq!(texts(&answered), ["SELECT 3"]);
        assert_eq!(answered[0].fields["rows"], 3);
        assert_eq!(answered[0].fields["tag"], "SELECT 3");
        assert_eq!(answered[0].fields["sqlstate"], Value::Null);

        let asked = query(&mut pg, "selec 1");
        assert_eq!(asked[0].text, "Query \"selec 1\"");
        let failure = [error("42601", "syntax error at or near \"selec\""), ready()].concat();
        let answered = feed(&mut pg, RESPONSE, &failure);
        assert_eq!(
            texts(&answered),
            ["ERROR 42601 syntax error at or near \"selec\""]
        );
        assert!(answered[0].failed);
        assert_eq!(answered[0].fields["sqlstate"], "42601");
        assert_eq!(answered[0].fields["severity"], "ERROR");
        assert_eq!(
            answered[0].fields["message"],
            "syntax error at or near \"selec\""
        );
        assert_eq!(answered[0].fields["rows"], Value::Null);

        // A tag without a count: no rows.
        query(&mut pg, "begin");
        let answered = feed(
            &mut pg,
            RESPONSE,
            &[complete("BEGIN"), msg(b'Z', b"T")].concat(),
        );
        assert_eq!(answered[0].fields["rows"], Value::Null);
        assert_eq!(answered[0].fields["status"], "transaction");
    }

    #[test]
    fn an_extended_batch_is_one_request_to_its_sync() {
        let mut pg = started();
        let batch = [
            msg(
                b'P',
                &[cstrings(&["", "select $1::int"]), vec![0, 0]].concat(),
            ),
            msg(
                b'B',
                &[
                    cstrings(&["", ""]),
                    vec![0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0],
                ]
                .concat(),
            ),
            msg(b'D', b"P\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        let base = pg.sides[REQUEST].fed;
        // Each message in a call of its own until the Sync ends the batch.
        let asked = feed_calls(&mut pg, REQUEST, &batch, 5, 5);
        assert_eq!(texts(&asked), ["Execute \"select $1::int\""]);
        assert_eq!(asked[0].fields["type"], "execute");
        assert_eq!(
            asked[0].fields["batch"],
            serde_json::json!(["parse", "bind", "describe", "execute", "sync"])
        );
        assert_eq!(asked[0].end, base + batch.len() as u64);
        let answer = [
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'T', b"\0\x01int4\0"),
            data_row(1),
            complete("SELECT 1"),
            ready(),
        ]
        .concat();
        let answered = feed(&mut pg, RESPONSE, &answer);
        assert_eq!(texts(&answered), ["SELECT 1"]);
        assert_eq!(answered[0].fields["rows"], 1);

        // A named statement prepared in one batch, executed in the next:
        // the execute names its SQL.
        let prepare = [
            msg(
                b'P',
                &[cstrings(&["s1", "update t set n = n + 1"]), vec![0, 0]].concat(),
            ),
            msg(b'S', b""),
        ]
        .concat();
        let asked = feed(&mut pg, REQUEST, &prepare);
        assert_eq!(asked[0].fields["type"], "parse");
        assert_eq!(asked[0].fields["statement"], "s1");
        assert_eq!(
            texts(&feed(
                &mut pg,
                RESPONSE,
                &[msg(b'1', b""), ready()].concat()
            )),
            ["ParseComplete"]
        );
        let execute = [
            msg(b'B', &[cstrings(&["", "s1"]), vec![0; 6]].concat()),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        let asked = feed(&mut pg, REQUEST, &execute);
        assert_eq!(asked[0].text, "Execute \"update t set n = n + 1\"");
        assert_eq!(
            asked[0].kind.as_deref(),
            Some("UPDATE"),
            "the statement's verb"
        );
        let answered = feed(
            &mut pg,
            RESPONSE,
            &[msg(b'2', b""), complete("UPDATE 4"), ready()].concat(),
        );
        assert_eq!(answered[0].fields["rows"], 4);
    }

    #[test]
    fn passwords_and_sasl_end_at_what_the_server_asks() {
        let packet = startup(&["user", "bob"]);
        let mut pg = Postgresql::default();
        feed(&mut pg, REQUEST, &packet);
        let answered = feed(
            &mut pg,
            RESPONSE,
            &msg(b'R', &[0, 0, 0, 10, b'S', b'C', b'R', b'A', b'M', 0, 0]),
        );
        assert_eq!(texts(&answered), ["AuthenticationSASL"]);
        let asked = feed(
            &mut pg,
            REQUEST,
            &msg(b'p', b"SCRAM-SHA-256\0\0\0\0\x04n,,x"),
        );
        assert_eq!(asked[0].fields["type"], "sasl");
        let answered = feed(&mut pg, RESPONSE, &msg(b'R', &[0, 0, 0, 11, b'r', b'=']));
        assert_eq!(answered[0].fields["auth"], "sasl_continue");
        feed(&mut pg, REQUEST, &msg(b'p', b"c=biws"));
        let answered = feed(
            &mut pg,
            RESPONSE,
            &[msg(b'R', &[0, 0, 0, 12, b'v']), auth(0), ready()].concat(),
        );
        assert_eq!(texts(&answered), ["AuthenticationOk"]);
        // A wrong password: the fatal error ends the answer (the server closes).
        let mut pg = Postgresql::default();
        feed(&mut pg, REQUEST, &packet);
        assert_eq!(
            texts(&feed(&mut pg, RESPONSE, &auth(5))),
            ["AuthenticationMD5Password"]
        );
        let asked = feed(&mut pg, REQUEST, &msg(b'p', b"md5abc\0"));
        assert_eq!(asked[0].text, "PasswordMessage");
        let mut fatal = error("28P01", "password authentication failed for user \"bob\"");
        fatal[6..12].copy_from_slice(b"FATAL\0");
        fatal[12..18].copy_from_slice(b"VFATAL");
        fatal[18] = 0;
        let answered = feed(&mut pg, RESPONSE, &fatal);
        assert_eq!(answered.len(), 1, "{answered:?}");
        assert!(answered[0].failed);
        assert_eq!(answered[0].fields["sqlstate"], "28P01");
    }

    #[test]
    fn ssl_refused_then_startup_and_ssl_accepted() {
        let ssl = untyped(SSL_REQUEST);
        let mut pg = Postgresql::detect(&ssl).unwrap();
        assert_eq!(texts(&feed(&mut pg, REQUEST, &ssl)), ["SSLRequest"]);
        // 'N' here is the one-byte answer, not a NoticeResponse.
        let answered = feed(&mut pg, RESPONSE, b"N");
        assert_eq!(texts(&answered), ["N (no encryption)"]);
        assert_eq!(answered[0].end, 1);
        let packet = startup(&["user", "alice"]);
        assert_eq!(feed(&mut pg, REQUEST, &packet)[0].fields["type"], "startup");
        let answered = feed(&mut pg, RESPONSE, &[auth(0), ready()].concat());
        assert_eq!(answered[0].end, 1 + 9 + 6);

        // A CancelRequest (its own connection, decoded when a rule says):
        // the backend's pid and key, answered by nothing.
        let cancel = [16u32, CANCEL_REQUEST, 4242, 7]
            .map(u32::to_be_bytes)
            .concat();
        let mut pg = Postgresql::default();
        let asked = feed(&mut pg, REQUEST, &cancel);
        assert_eq!(texts(&asked), ["CancelRequest"]);
        assert_eq!(asked[0].fields["pid"], 4242);

        let mut pg = Postgresql::detect(&untyped(GSSENC_REQUEST)).unwrap();
        feed(&mut pg, REQUEST, &untyped(GSSENC_REQUEST));
        assert_eq!(
            feed(&mut pg, RESPONSE, b"G")[0].fields["encryption"],
            "gssapi"
        );
        let mut found = Vec::new();
        let err = pg
            .feed(REQUEST, b"\x16\x03\x01", 3, &mut found)
            .unwrap_err();
        assert!(err.0.contains("encrypted"), "{err}");
    }

    #[test]
    fn what_is_not_postgresql() {
        assert!(Postgresql::detect(b"GET / HTTP/1.1\r\n").is_none());
        assert!(Postgresql::detect(&untyped(CANCEL_REQUEST)).is_none());
        // Protocol 2 is not detected.
        assert!(Postgresql::detect(&[0, 0, 0, 8, 0, 2, 0, 0]).is_none());
        let mut found = Vec::new();
        let mut pg = started();
        assert!(
            pg.feed(REQUEST, b"GET / HTTP/1.1\r\n", 16, &mut found)
                .is_err()
        );
        let mut pg = started();
        // A Sync's length is 4, nothing else.
        assert!(
            pg.feed(REQUEST, &[b'S', 0, 0, 1, 0], 5, &mut found)
                .is_err()
        );
        let mut pg = started();
        assert!(
            pg.feed(RESPONSE, &[b'Z', 0xff, 0, 0, 5, b'I'], 6, &mut found)
                .is_err()
        );
    }

    #[test]
    fn long_messages_not_captured_are_passed_over() {
        let mut pg = started();
        // 5000 bytes of SQL, 1024 captured: the query kept is its start.
        let base = [pg.sides[REQUEST].fed, pg.sides[RESPONSE].fed];
        let sql = format!("select '{}'", "a".repeat(5000));
        let query = msg(b'Q', &cstrings(&[&sql]));
        let mut found = Vec::new();
        pg.feed(REQUEST, &query[..1024], query.len() as u64, &mut found)
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].fields["query"].as_str().unwrap().len(), QUERY_KEPT);
        assert!(found[0].text.ends_with("...\""), "{}", found[0].text);
        assert_eq!(found[0].end, base[REQUEST] + query.len() as u64);
        // A 100,000-byte row, then the rest of the answer in later calls.
        let row = data_row(100_000);
        let answered = feed_calls(&mut pg, RESPONSE, &row, 8192, 1024);
        assert!(answered.is_empty());
        let tail = [complete("SELECT 1"), ready()].concat();
        let answered = feed(&mut pg, RESPONSE, &tail);
        assert_eq!(texts(&answered), ["SELECT 1"]);
        assert_eq!(
            answered[0].end,
            base[RESPONSE] + (row.len() + tail.len()) as u64
        );
    }

    #[test]
    fn boundaries_lost_beyond_the_capture_are_found_again_when_the_other_side_speaks() {
        let mut pg = started();
        let base = pg.sides[RESPONSE].fed;
        query(&mut pg, "select * from big");
        // 200 rows of 100 bytes in calls of 8192, 1024 of each captured:
        // the headers past the capture are not seen, nor is the end.
        let rows: Vec<u8> = (0..200).flat_map(|_| data_row(100)).collect();
        let answer = [rows, complete("SELECT 200"), ready()].concat();
        let answered = feed_calls(&mut pg, RESPONSE, &answer, 8192, 1024);
        assert!(answered.is_empty(), "{answered:?}");
        // The client's next query says the answer ended.
        let next = query(&mut pg, "select 1");
        assert_eq!(next.len(), 2, "{next:?}");
        assert_eq!(next[0].dir, RESPONSE);
        assert_eq!(next[0].end, base + answer.len() as u64);
        assert_eq!(next[0].fields["truncated"], true);
        assert!(
            next[0].text.ends_with("(not all captured)"),
            "{}",
            next[0].text
        );
        assert_eq!(next[1].text, "Query \"select 1\"");
        let answered = feed(
            &mut pg,
            RESPONSE,
            &[data_row(1), complete("SELECT 1"), ready()].concat(),
        );
        assert_eq!(texts(&answered), ["SELECT 1"]);
        assert_eq!(answered[0].fields["rows"], 1);
    }

    #[test]
    fn a_call_captured_whole_is_read_however_long() {
        // `--data=65536`: more than a stream buffers, in one call.
        let mut pg = started();
        query(&mut pg, "select n from t");
        let rows: Vec<u8> = (0..5000).flat_map(|_| data_row(4)).collect();
        let answer = [rows, complete("SELECT 5000"), ready()].concat();
        let answered = feed(&mut pg, RESPONSE, &answer);
        assert_eq!(texts(&answered), ["SELECT 5000"]);
    }

    #[test]
    fn a_request_whose_end_was_not_captured_ends_when_the_server_answers() {
        let mut pg = started();
        let base = pg.sides[REQUEST].fed;
        // A Bind with a 3000-byte parameter: the Execute and Sync after it
        // are past the 1024 bytes captured.
        let bind = [
            cstrings(&["", ""]),
            vec![0, 0, 0, 1],
            3000u32.to_be_bytes().to_vec(),
            vec![b'v'; 3000],
            vec![0, 0],
        ]
        .concat();
        let batch = [
            msg(
                b'P',
                &[cstrings(&["", "insert into t values ($1)"]), vec![0, 0]].concat(),
            ),
            msg(b'B', &bind),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        let asked = feed_calls(&mut pg, REQUEST, &batch, batch.len(), 1024);
        assert!(asked.is_empty(), "{asked:?}");
        let answer = [
            msg(b'1', b""),
            msg(b'2', b""),
            complete("INSERT 0 1"),
            ready(),
        ]
        .concat();
        let found = feed(&mut pg, RESPONSE, &answer);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].dir, REQUEST);
        assert_eq!(found[0].end, base + batch.len() as u64);
        assert_eq!(found[0].fields["truncated"], true);
        assert_eq!(found[0].fields["query"], "insert into t values ($1)");
        assert_eq!(found[1].text, "INSERT 0 1");
        assert_eq!(found[1].fields["rows"], 1);
        // The client's next request is read again.
        let asked = query(&mut pg, "commit");
        assert_eq!(texts(&asked), ["Query \"commit\""]);
    }

    #[test]
    fn copy_in_and_notifications() {
        let mut pg = started();
        query(&mut pg, "copy t from stdin");
        let answered = feed(&mut pg, RESPONSE, &msg(b'G', &[0, 0, 1, 0, 0]));
        assert_eq!(texts(&answered), ["CopyInResponse"]);
        let data = [msg(b'd', b"1\n"), msg(b'd', b"2\n"), msg(b'c', b"")].concat();
        let asked = feed(&mut pg, REQUEST, &data);
        assert_eq!(texts(&asked), ["CopyDone"]);
        assert_eq!(
            asked[0].fields["batch"],
            serde_json::json!(["copy_data", "copy_data", "copy_done"])
        );
        let answered = feed(&mut pg, RESPONSE, &[complete("COPY 2"), ready()].concat());
        assert_eq!(answered[0].fields["rows"], 2);
        // While idle, a notification is a message of its own.
        let note = msg(
            b'A',
            &[vec![0, 0, 0, 7], cstrings(&["jobs", "42"])].concat(),
        );
        let answered = feed(&mut pg, RESPONSE, &note);
        assert_eq!(texts(&answered), ["NotificationResponse jobs"]);
        assert_eq!(answered[0].fields["channel"], "jobs");
        feed(&mut pg, REQUEST, &msg(b'X', b""));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small generator, so the test is the same on every run.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [
            startup(&["user", "x"]),
            untyped(SSL_REQUEST),
            msg(b'Q', b"x\0"),
        ];
        for round in 0..2000 {
            let mut pg = Postgresql::default();
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 64) {
                // Mostly plausible headers, sometimes noise.
                let kind = b"QPBDESHCpXdcRZTNA1n\0\xff"[(next() % 21) as usize];
                bytes.push(kind);
                bytes.extend(((next() % 40) as u32).to_be_bytes());
                bytes.extend((0..next() % 8).map(|_| next() as u8));
            }
            let mut ends = [0; 2];
            for call in bytes.chunks(1 + (next() % 9) as usize) {
                let dir = (next() % 2) as usize;
                let captured = &call[..call.len().min((next() % 10) as usize)];
                let len = call.len() as u64 + next() % 3 * (next() % 100_000);
                let mut found = Vec::new();
                if pg.feed(dir, captured, len, &mut found).is_err() {
                    break;
                }
                // Messages end in order, and not past the bytes a body's
                // length said were to come.
                for message in found {
                    let side = &pg.sides[message.dir];
                    assert!(message.end >= ends[message.dir], "{message:?}");
                    assert!(message.end <= side.fed.max(side.end()), "{message:?}");
                    ends[message.dir] = message.end;
                }
            }
        }
    }
}
