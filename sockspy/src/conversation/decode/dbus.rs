//! D-Bus (system and session buses: dbus-daemon, sd-bus, GDBus): the
//! client's NUL byte and the authentication lines of both sides (`AUTH
//! EXTERNAL 30`, `OK <guid>`, `NEGOTIATE_UNIX_FD`, `AGREE_UNIX_FD`,
//! `BEGIN`), then binary messages each way: a 16-byte fixed header
//! (endianness, type, flags, body length, serial), an array of header
//! fields (path, interface, member, error name, reply serial,
//! destination, sender, signature), and a body passed over by its length,
//! so only the start of each message need be captured.
//!
//! Hands on calls and signals with their names, returns and errors
//! keyed by the serial they answer and the side that sent the call (each
//! side numbers its own), so answers in any order pair right, and so do
//! calls the bus passes to the client (a service's methods); signals,
//! calls that want no reply and `BEGIN` are one-way.

use serde_json::{Map, Value};

use super::{Decoder, Message, Mismatch, Resync, Role, stream::Stream};
use crate::conversation::turns::REQUEST;

/// The fixed header's size.
const FIXED: usize = 16;
/// The specification's bounds: a message, and its header fields' array.
const MAX_MESSAGE: u64 = 1 << 27;
const MAX_FIELDS: u64 = 1 << 26;
/// The most of one message kept to read its header fields (and an
/// error's message); the rest is passed over.
const KEPT_BYTES: u64 = 4096;
/// The longest name or text kept.
const KEPT_CHARS: usize = 255;

const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;
const NO_REPLY_EXPECTED: u8 = 0x1;

/// One direction: its bytes, and whether its authentication lines are over.
#[derive(Debug, Default)]
struct Side {
    stream: Stream,
    binary: bool,
}

#[derive(Debug, Default)]
pub struct Dbus {
    sides: [Side; 2],
}

/// Reads a message's numbers in its byte order; offsets are from its start.
struct Reader<'a> {
    bytes: &'a [u8],
    big: bool,
}

impl Reader<'_> {
    fn u32(&self, at: usize) -> Option<u32> {
        let word: [u8; 4] = self.bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big {
            u32::from_be_bytes(word)
        } else {
            u32::from_le_bytes(word)
        })
    }

    /// `len` bytes at `at` and a NUL after them, as text (at most
    /// [`KEPT_CHARS`]); the offset past the NUL.
    fn text(&self, at: usize, len: usize) -> Option<(String, usize)> {
        let end = at.checked_add(len)?;
        let text = String::from_utf8_lossy(self.bytes.get(at..end)?);
        Some((text.chars().take(KEPT_CHARS).collect(), end + 1))
    }
}

fn align(at: usize, to: usize) -> usize {
    at.div_ceil(to) * to
}

/// A message's fixed header, and where its parts end.
#[derive(Debug)]
struct Fixed {
    big: bool,
    kind: u8,
    flags: u8,
    serial: u32,
    body_bytes: u64,
    /// One past the header fields' array.
    fields_end: u64,
    /// Where the body starts (the array padded to 8).
    body_start: u64,
    total: u64,
}

impl Fixed {
    fn parse(head: &[u8]) -> Result<Self, Mismatch> {
        let big = match head[0] {
            b'l' => false,
            b'B' => true,
            other => return Err(Mismatch(format!("byte order `{}`", other.escape_ascii()))),
        };
        let (kind, flags, version) = (head[1], head[2], head[3]);
        if !(METHOD_CALL..=SIGNAL).contains(&kind) || version != 1 {
            return Err(Mismatch(format!("message type {kind}, version {version}")));
        }
        let reader = Reader { bytes: head, big };
        let word = |at| u64::from(reader.u32(at).expect("a fixed header's word"));
        let (body_bytes, serial, fields) = (word(4), word(8) as u32, word(12));
        let fields_end = FIXED as u64 + fields;
        let body_start = fields_end.div_ceil(8) * 8;
        let total = body_start + body_bytes;
        if serial == 0 || fields > MAX_FIELDS || total > MAX_MESSAGE {
            return Err(Mismatch(format!(
                "serial {serial}, {fields} B of header fields, {body_bytes} B of body"
            )));
        }
        Ok(Self {
            big,
            kind,
            flags,
            serial,
            body_bytes,
            fields_end,
            body_start,
            total,
        })
    }

    /// The bytes of the message its decoding reads: the header, and an
    /// error's message (the first string of its body).
    fn wanted(&self) -> u64 {
        let wanted = if self.kind == ERROR {
            self.body_start + 4 + KEPT_CHARS as u64
        } else {
            self.fields_end
        };
        wanted.min(self.total).min(KEPT_BYTES)
    }
}

/// The header fields a message has.
#[derive(Debug, Default)]
struct Fields {
    path: Option<String>,
    interface: Option<String>,
    member: Option<String>,
    error_name: Option<String>,
    reply_serial: Option<u32>,
    destination: Option<String>,
    sender: Option<String>,
    signature: Option<String>,
    unix_fds: Option<u32>,
}

impl Fields {
    /// The fields in `reader`'s bytes before `end`: each a byte code and
    /// a variant, aligned to 8. A field whose type is no basic type ends
    /// the reading (a header field's never is one).
    fn parse(reader: &Reader<'_>, end: usize) -> Self {
        let mut fields = Self::default();
        let mut at = FIXED;
        // Each field takes at least four bytes: this ends.
        while let Some(next) = fields.field(reader, align(at, 8), end) {
            at = next;
        }
        fields
    }

    /// Reads the field at `at`; the offset past it.
    fn field(&mut self, reader: &Reader<'_>, at: usize, end: usize) -> Option<usize> {
        if at + 4 > end {
            return None;
        }
        let code = *reader.bytes.get(at)?;
        let signature = reader.bytes.get(at + 1..at + 4)?;
        // A variant: its signature (length 1, the type, a NUL), then its value.
        let [1, kind, 0] = signature else {
            return None;
        };
        let at = at + 4;
        let (string, next) = match kind {
            b's' | b'o' => {
                let at = align(at, 4);
                let len = reader.u32(at)? as usize;
                let (text, next) = reader.text(at + 4, len)?;
                (Some(text), next)
            }
            b'g' => {
                let len = *reader.bytes.get(at)? as usize;
                let (text, next) = reader.text(at + 1, len)?;
                (Some(text), next)
            }
            b'u' => {
                let at = align(at, 4);
                let number = reader.u32(at)?;
                match code {
                    5 => self.reply_serial = Some(number),
                    9 => self.unix_fds = Some(number),
                    _ => {}
                }
                (None, at + 4)
            }
            b'y' => (None, at + 1),
            b'n' | b'q' => (None, align(at, 2) + 2),
            b'i' | b'b' | b'h' => (None, align(at, 4) + 4),
            b'x' | b't' | b'd' => (None, align(at, 8) + 8),
            _ => return None,
        };
        let slot = match code {
            1 => &mut self.path,
            2 => &mut self.interface,
            3 => &mut self.member,
            4 => &mut self.error_name,
            6 => &mut self.destination,
            7 => &mut self.sender,
            8 => &mut self.signature,
            _ => return Some(next),
        };
        if string.is_some() {
            *slot = string;
        }
        Some(next)
    }
}

/// What answers a call sent by direction `sender` with serial `serial`
/// carries: the same key (each side numbers its own calls).
fn key(sender: usize, serial: u32) -> u64 {
    ((sender as u64) << 32) | u64::from(serial)
}

/// The message of direction `dir` that ends at `end`, from its first
/// bytes (`bytes`, at least its fixed header).
fn message(dir: usize, end: u64, fixed: &Fixed, bytes: &[u8]) -> Message {
    let reader = Reader {
        bytes,
        big: fixed.big,
    };
    let header = Fields::parse(&reader, (fixed.fields_end as usize).min(bytes.len()));
    let name = match (&header.interface, &header.member) {
        (Some(interface), Some(member)) => format!("{interface}.{member}"),
        (None, Some(member)) => member.clone(),
        (_, None) => "?".to_owned(),
    };
    // The bus marks its returns so too: it means something on calls.
    let no_reply = fixed.kind == METHOD_CALL && fixed.flags & NO_REPLY_EXPECTED != 0;
    let other = 1 - dir;
    let answers = header.reply_serial.map(|serial| key(other, serial));
    let (kind, text, role, key) = match fixed.kind {
        METHOD_CALL if no_reply => (
            "method_call",
            format!("call {name} (no reply expected)"),
            Role::OneWay,
            None,
        ),
        METHOD_CALL => (
            "method_call",
            format!("call {name}"),
            Role::Asks,
            Some(key(dir, fixed.serial)),
        ),
        METHOD_RETURN => ("method_return", "return".to_owned(), Role::Answers, answers),
        ERROR => (
            "error",
            format!("error {}", header.error_name.as_deref().unwrap_or("?")),
            Role::Answers,
            answers,
        ),
        _ => ("signal", format!("signal {name}"), Role::OneWay, None),
    };
    // An error's first argument is its message, when it was captured.
    let error_message = (fixed.kind == ERROR
        && header
            .signature
            .as_deref()
            .is_some_and(|s| s.starts_with('s')))
    .then(|| {
        let at = fixed.body_start as usize;
        let len = reader.u32(at)? as usize;
        let there = bytes.len().checked_sub(at + 4)?;
        reader.text(at + 4, len.min(there)).map(|(text, _)| text)
    })
    .flatten();
    let mut fields = Map::new();
    let text_field = |value: Option<String>| value.map_or(Value::Null, Value::from);
    fields.insert("type".into(), kind.into());
    fields.insert("serial".into(), fixed.serial.into());
    fields.insert("reply_serial".into(), header.reply_serial.into());
    fields.insert("sender".into(), text_field(header.sender));
    fields.insert("destination".into(), text_field(header.destination));
    fields.insert("path".into(), text_field(header.path));
    fields.insert("interface".into(), text_field(header.interface));
    fields.insert("member".into(), text_field(header.member));
    fields.insert("error_name".into(), text_field(header.error_name));
    fields.insert("signature".into(), text_field(header.signature));
    fields.insert("body_bytes".into(), fixed.body_bytes.into());
    fields.insert("unix_fds".into(), header.unix_fds.into());
    fields.insert("no_reply_expected".into(), no_reply.into());
    if fixed.kind == ERROR {
        fields.insert("message".into(), text_field(error_message));
    }
    Message {
        dir,
        end,
        text,
        fields,
        failed: fixed.kind == ERROR,
        key,
        // A call or a signal is of the kind its interface and member say.
        kind: (role != Role::Answers).then(|| super::kind(&name)),
        role,
    }
}

/// An authentication line of direction `dir`, ending at `end`.
fn auth(dir: usize, line: &[u8], end: u64) -> Result<Message, Mismatch> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches(['\r', '\n']);
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    if command.is_empty() || !command.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        let shown: String = line.chars().take(40).collect();
        return Err(Mismatch(format!("`{shown}` is no authentication command")));
    }
    let rest: String = rest.chars().take(KEPT_CHARS).collect();
    // AUTH's initial response and DATA are the credentials: not shown.
    let argument = match command {
        "AUTH" => rest.split(' ').next().unwrap_or_default().to_owned(),
        "DATA" => String::new(),
        _ => rest,
    };
    let client = dir == REQUEST;
    let role = match command {
        "BEGIN" if client => Role::OneWay,
        _ if client => Role::Asks,
        _ => Role::Answers,
    };
    let failed = !client && matches!(command, "REJECTED" | "ERROR");
    let text = match command {
        "AUTH" | "REJECTED" | "ERROR" if !argument.is_empty() => format!("{command} {argument}"),
        _ => command.to_owned(),
    };
    let mut fields = Map::new();
    fields.insert("type".into(), "auth".into());
    fields.insert("command".into(), command.into());
    fields.insert(
        "argument".into(),
        (!argument.is_empty())
            .then_some(argument)
            .map_or(Value::Null, Value::from),
    );
    Ok(Message {
        dir,
        end,
        text,
        fields,
        failed,
        key: None,
        kind: (role != Role::Answers).then(|| super::kind(command)),
        role,
    })
}

impl Dbus {
    /// A client whose first bytes are D-Bus's NUL and `AUTH` (libdbus
    /// sends the NUL alone: a first call of one NUL byte is taken for it).
    pub fn detect(first: &[u8]) -> Option<Self> {
        let auth = first.strip_prefix(b"\0AUTH").is_some_and(|rest| {
            rest.first()
                .is_none_or(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        });
        (first == b"\0" || auth).then(Self::default)
    }

    /// Consumes what direction `dir` holds; `truncated`: nothing more of
    /// it was captured, so a message whose fixed header is here is read
    /// from what is, and the rest passed over.
    fn run(
        &mut self,
        dir: usize,
        truncated: bool,
        found: &mut Vec<Message>,
    ) -> Result<(), Mismatch> {
        loop {
            let side = &mut self.sides[dir];
            let stream = &mut side.stream;
            let buf = stream.peek();
            if !side.binary {
                if dir == REQUEST && stream.pos() == 0 && buf.first() == Some(&0) {
                    // The byte that carries the client's credentials.
                    stream.skip(1);
                    continue;
                }
                match buf {
                    [] | [b'l' | b'B'] => return Ok(()),
                    [b'l' | b'B', METHOD_CALL..=SIGNAL, ..] => {
                        side.binary = true;
                        continue;
                    }
                    _ => {}
                }
                let Some((line, end)) = stream.line() else {
                    return Ok(());
                };
                found.push(auth(dir, line, end)?);
                continue;
            }
            if buf.len() < FIXED {
                return Ok(());
            }
            let fixed = Fixed::parse(&buf[..FIXED])?;
            let wanted = fixed.wanted();
            let buffered = buf.len() as u64;
            if buffered < wanted && !truncated {
                return Ok(());
            }
            let kept = wanted.min(buffered);
            let start = stream.pos();
            let (bytes, _) = stream.take(kept as usize).expect("buffered");
            let decoded = message(dir, start + fixed.total, &fixed, bytes);
            stream.skip(fixed.total - kept);
            found.push(decoded);
        }
    }
}

impl Decoder for Dbus {
    fn name(&self) -> &'static str {
        "dbus"
    }

    fn stream(&mut self, dir: usize) -> &mut Stream {
        &mut self.sides[dir].stream
    }

    fn consume(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        self.run(dir, false, found)
    }

    fn truncated(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        self.run(dir, true, found)
    }

    /// A method call's fixed header (byte order, type, version 1, a
    /// serial, lengths within the specification's) and the start of its
    /// first header field (a known code, a one-type signature). Both
    /// sides are then past their authentication lines.
    fn resync(&mut self, call: &[u8]) -> Resync {
        let Some(head) = call.get(..FIXED + 2) else {
            return Resync::NotHere;
        };
        let call_header = Fixed::parse(&head[..FIXED]).is_ok_and(|fixed| fixed.kind == METHOD_CALL);
        let field = (1..=9).contains(&head[FIXED]) && head[FIXED + 1] == 1;
        if call_header && field {
            for side in &mut self.sides {
                side.binary = true;
            }
        }
        Resync::here_if(call_header && field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::turns::RESPONSE;

    /// A header field's value.
    enum V<'a> {
        S(&'a str),
        O(&'a str),
        G(&'a str),
        U(u32),
    }

    /// A message of type `kind` in either byte order, its header fields
    /// given as (code, value), its body `body`.
    fn build(
        big: bool,
        kind: u8,
        flags: u8,
        serial: u32,
        header: &[(u8, V)],
        body: &[u8],
    ) -> Vec<u8> {
        let word = |n: u32| {
            if big {
                n.to_be_bytes()
            } else {
                n.to_le_bytes()
            }
        };
        let mut fields = Vec::new();
        let pad = |bytes: &mut Vec<u8>, to: usize| {
            // Offsets count from the message's start, 16 bytes before the array.
            while !(bytes.len() + FIXED).is_multiple_of(to) {
                bytes.push(0);
            }
        };
        for (code, value) in header {
            pad(&mut fields, 8);
            fields.push(*code);
            let (kind, text) = match value {
                V::S(s) => (b's', Some(*s)),
                V::O(s) => (b'o', Some(*s)),
                V::G(s) => (b'g', Some(*s)),
                V::U(_) => (b'u', None),
            };
            fields.extend_from_slice(&[1, kind, 0]);
            match (value, text) {
                (V::G(s), _) => {
                    fields.push(s.len() as u8);
                    fields.extend_from_slice(s.as_bytes());
                    fields.push(0);
                }
                (V::U(n), _) => {
                    pad(&mut fields, 4);
                    fields.extend_from_slice(&word(*n));
                }
                (_, Some(s)) => {
                    pad(&mut fields, 4);
                    fields.extend_from_slice(&word(s.len() as u32));
                    fields.extend_from_slice(s.as_bytes());
                    fields.push(0);
                }
                _ => unreachable!(),
            }
        }
        let mut bytes = vec![if big { b'B' } else { b'l' }, kind, flags, 1];
        bytes.extend_from_slice(&word(body.len() as u32));
        bytes.extend_from_slice(&word(serial));
        bytes.extend_from_slice(&word(fields.len() as u32));
        bytes.extend_from_slice(&fields);
        while !bytes.len().is_multiple_of(8) {
            bytes.push(0);
        }
        bytes.extend_from_slice(body);
        bytes
    }

    fn call(big: bool, serial: u32, interface: &str, member: &str) -> Vec<u8> {
        build(
            big,
            METHOD_CALL,
            0,
            serial,
            &[
                (1, V::O("/org/freedesktop/DBus")),
                (6, V::S("org.freedesktop.DBus")),
                (2, V::S(interface)),
                (3, V::S(member)),
            ],
            &[],
        )
    }

    fn feed(dbus: &mut Dbus, dir: usize, data: &[u8]) -> Vec<Message> {
        crate::conversation::decode::tests::fed(dbus, dir, data, data.len() as u64)
    }

    fn texts(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.text.as_str()).collect()
    }

    /// The client's side of a connection to the bus: authentication, Hello.
    fn client_start(big: bool) -> Vec<u8> {
        let mut bytes = b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n".to_vec();
        bytes.extend(call(big, 1, "org.freedesktop.DBus", "Hello"));
        bytes
    }

    fn server_start(big: bool) -> Vec<u8> {
        let mut bytes = b"OK 1234deadbeef\r\nAGREE_UNIX_FD\r\n".to_vec();
        bytes.extend(build(
            big,
            METHOD_RETURN,
            1,
            1,
            &[
                (5, V::U(1)),
                (6, V::S(":1.7")),
                (8, V::G("s")),
                (7, V::S("org.freedesktop.DBus")),
            ],
            b"\x05\0\0\0:1.7\0",
        ));
        bytes.extend(build(
            big,
            SIGNAL,
            1,
            2,
            &[
                (1, V::O("/org/freedesktop/DBus")),
                (2, V::S("org.freedesktop.DBus")),
                (3, V::S("NameAcquired")),
                (6, V::S(":1.7")),
            ],
            &[],
        ));
        bytes
    }

    #[test]
    fn authentication_then_messages_both_byte_orders() {
        for big in [false, true] {
            let asked = client_start(big);
            let mut dbus = Dbus::detect(&asked).unwrap();
            let requests = feed(&mut dbus, REQUEST, &asked);
            assert_eq!(
                texts(&requests),
                [
                    "AUTH EXTERNAL",
                    "NEGOTIATE_UNIX_FD",
                    "BEGIN",
                    "call org.freedesktop.DBus.Hello"
                ]
            );
            assert_eq!(requests[0].fields["type"], "auth");
            assert_eq!(requests[0].end, 19, "the NUL and the line");
            assert_eq!(requests[2].role, Role::OneWay);
            let hello = &requests[3];
            assert_eq!(hello.end, asked.len() as u64);
            assert_eq!(hello.role, Role::Asks);
            assert_eq!(hello.key, Some(key(REQUEST, 1)));
            for (field, value) in [
                ("type", "method_call"),
                ("destination", "org.freedesktop.DBus"),
                ("path", "/org/freedesktop/DBus"),
                ("interface", "org.freedesktop.DBus"),
                ("member", "Hello"),
            ] {
                assert_eq!(hello.fields[field], value, "{field}");
            }
            assert_eq!(hello.fields["serial"], 1);
            assert_eq!(hello.kind.as_deref(), Some("org.freedesktop.DBus.Hello"));
            assert_eq!(requests[0].kind.as_deref(), Some("AUTH"));

            let answered = server_start(big);
            let responses = feed(&mut dbus, RESPONSE, &answered);
            assert_eq!(
                texts(&responses),
                [
                    "OK",
                    "AGREE_UNIX_FD",
                    "return",
                    "signal org.freedesktop.DBus.NameAcquired"
                ]
            );
            assert_eq!(responses[0].fields["argument"], "1234deadbeef");
            let hello_return = &responses[2];
            assert_eq!(hello_return.key, hello.key, "answers the client's serial 1");
            assert_eq!(hello_return.fields["reply_serial"], 1);
            assert_eq!(hello_return.fields["type"], "method_return");
            assert_eq!(hello_return.fields["signature"], "s");
            assert_eq!(hello_return.fields["body_bytes"], 9);
            assert_eq!(responses[3].role, Role::OneWay);
            assert_eq!(hello_return.kind, None, "an answer has no kind");
            assert_eq!(
                responses[3].kind.as_deref(),
                Some("org.freedesktop.DBus.NameAcquired")
            );
            assert_eq!(responses[3].end, answered.len() as u64);
        }
    }

    #[test]
    fn split_at_every_byte() {
        let asked = client_start(false);
        let mut whole = Dbus::default();
        let want = feed(&mut whole, REQUEST, &asked);
        let mut dbus = Dbus::default();
        let mut found = Vec::new();
        for byte in asked.chunks(1) {
            found.extend(feed(&mut dbus, REQUEST, byte));
        }
        assert_eq!(found, want);
    }

    #[test]
    fn errors_carry_their_name_and_message() {
        for big in [false, true] {
            let text = "No such method \u{201c}Nope\u{201d}";
            let mut body = if big {
                (text.len() as u32).to_be_bytes()
            } else {
                (text.len() as u32).to_le_bytes()
            }
            .to_vec();
            body.extend_from_slice(text.as_bytes());
            body.push(0);
            let error = build(
                big,
                ERROR,
                1,
                9,
                &[
                    (4, V::S("org.freedesktop.DBus.Error.UnknownMethod")),
                    (5, V::U(3)),
                    (8, V::G("s")),
                ],
                &body,
            );
            let found = feed(&mut Dbus::default(), RESPONSE, &error);
            assert_eq!(found.len(), 1);
            let error = &found[0];
            assert_eq!(error.text, "error org.freedesktop.DBus.Error.UnknownMethod");
            assert!(error.failed);
            assert_eq!(error.role, Role::Answers);
            assert_eq!(error.key, Some(key(REQUEST, 3)));
            assert_eq!(error.fields["message"], text);
            assert_eq!(
                error.fields["error_name"],
                "org.freedesktop.DBus.Error.UnknownMethod"
            );
        }
    }

    #[test]
    fn calls_from_the_bus_and_calls_without_reply() {
        // A service's connection: the bus passes it a call (serial 5 of
        // the bus's side); it answers, and sends a call wanting no reply.
        let mut dbus = Dbus::default();
        let incoming = call(false, 5, "org.example.Foo", "Bar");
        let found = feed(&mut dbus, RESPONSE, &incoming);
        assert_eq!(found[0].key, Some(key(RESPONSE, 5)));
        assert_eq!(found[0].role, Role::Asks);
        let mut answer = build(false, METHOD_RETURN, 1, 2, &[(5, V::U(5))], &[]);
        answer.extend(build(
            false,
            METHOD_CALL,
            NO_REPLY_EXPECTED,
            3,
            &[(3, V::S("Ping"))],
            &[],
        ));
        let found = feed(&mut dbus, REQUEST, &answer);
        assert_eq!(found[0].key, Some(key(RESPONSE, 5)), "answers the bus's 5");
        assert_eq!(found[0].role, Role::Answers);
        assert_eq!(found[1].text, "call Ping (no reply expected)");
        assert_eq!(found[1].role, Role::OneWay);
        assert_eq!(found[1].fields["no_reply_expected"], true);
    }

    #[test]
    fn a_message_larger_than_the_capture_is_passed_over() {
        let mut dbus = Dbus::default();
        let mut big = build(
            false,
            METHOD_CALL,
            0,
            7,
            &[
                (2, V::S("org.example.Blob")),
                (3, V::S("Put")),
                (8, V::G("ay")),
            ],
            &vec![0xab; 100_000],
        );
        let next = call(false, 8, "org.example.Blob", "Get");
        big.extend_from_slice(&next);
        let mut found = Vec::new();
        // One call of which 1024 bytes were captured, then the next.
        let first = (big.len() - next.len()) as u64;
        dbus.feed(REQUEST, &big[..1024], first, &mut found).unwrap();
        dbus.feed(REQUEST, &next, next.len() as u64, &mut found)
            .unwrap();
        assert_eq!(
            texts(&found),
            ["call org.example.Blob.Put", "call org.example.Blob.Get"]
        );
        assert_eq!(found[0].end, first);
        assert_eq!(found[0].fields["body_bytes"], 100_000);
        assert_eq!(found[1].end, big.len() as u64);
    }

    #[test]
    fn a_header_longer_than_the_capture_is_followed_by_its_lengths() {
        let path = format!("/{}", "p".repeat(3000));
        let long = build(
            true,
            METHOD_CALL,
            0,
            4,
            &[
                (2, V::S("org.example.Deep")),
                (3, V::S("Walk")),
                (1, V::O(&path)),
            ],
            &[1, 2, 3, 4],
        );
        let next = call(true, 5, "org.example.Deep", "Up");
        let mut dbus = Dbus::default();
        let mut found = Vec::new();
        dbus.feed(REQUEST, &long[..1024], long.len() as u64, &mut found)
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "call org.example.Deep.Walk");
        assert_eq!(found[0].end, long.len() as u64);
        assert_eq!(found[0].fields["path"], Value::Null, "not captured");
        dbus.feed(REQUEST, &next, next.len() as u64, &mut found)
            .unwrap();
        assert_eq!(found[1].text, "call org.example.Deep.Up");
        // Only 10 bytes of a header captured: its length is unknown.
        let mut dbus = Dbus::default();
        let mut found = Vec::new();
        feed(&mut dbus, REQUEST, b"BEGIN\r\n");
        assert!(dbus.feed(REQUEST, &next[..10], 100, &mut found).is_err());
    }

    #[test]
    fn a_call_start_inside_a_stream() {
        let hello = call(false, 2, "org.freedesktop.DBus", "Hello");
        let big = call(true, 3, "org.example.Foo", "Bar");
        let mut signal = hello.clone();
        signal[1] = SIGNAL;
        let mut no_serial = hello.clone();
        no_serial[8..12].fill(0);
        crate::conversation::decode::tests::resyncs(
            "dbus",
            &[&hello, &big, &hello[..FIXED + 2]],
            // Inside a message, the header cut before its first field, a
            // signal (not a call), no serial, authentication.
            &[
                &hello[1..],
                &hello[..FIXED],
                &signal,
                &no_serial,
                b"AUTH EXTERNAL 30\r\n",
            ],
        );
        // Picked up there, past the authentication: the call is decoded.
        let mut dbus = Dbus::default();
        assert_eq!(dbus.resync(&big), Resync::Here);
        assert_eq!(
            texts(&feed(&mut dbus, REQUEST, &big)),
            ["call org.example.Foo.Bar"]
        );
    }

    #[test]
    fn what_is_not_dbus() {
        assert!(Dbus::detect(b"\0AUTH EXTERNAL 30\r\n").is_some());
        assert!(Dbus::detect(b"\0").is_some());
        assert!(Dbus::detect(b"\0AUTHORITY").is_none());
        assert!(Dbus::detect(b"GET / HTTP/1.1\r\n").is_none());
        let mut dbus = Dbus::default();
        let mut found = Vec::new();
        let version_2 = [b'l', 1, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert!(dbus.feed(RESPONSE, &version_2, 16, &mut found).is_err());
        let huge = [
            b'l', 1, 0, 1, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(
            Dbus::default()
                .feed(RESPONSE, &huge, 16, &mut found)
                .is_err()
        );
        let text = b"hello there\r\n";
        assert!(
            Dbus::default()
                .feed(RESPONSE, text, 13, &mut found)
                .is_err()
        );
    }

    #[test]
    fn any_bytes_end_in_messages_or_a_mismatch() {
        // Arbitrary bytes after a valid start, in arbitrary pieces: no
        // panic, and every message ends past the one before.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut bytes = if next() % 2 == 0 {
                call(next() % 2 == 0, 1, "a.b", "C")
            } else {
                b"BEGIN\r\n".to_vec()
            };
            let valid = bytes.len();
            let cut = next() as usize % valid;
            bytes.truncate(cut.max(1));
            for _ in 0..(next() % 64) {
                bytes.push(next() as u8);
            }
            let mut dbus = Dbus::default();
            let mut found = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let len = (next() as usize % 40 + 1).min(bytes.len() - at);
                let piece = &bytes[at..at + len];
                let captured = &piece[..piece.len().min(next() as usize % 48)];
                if dbus
                    .feed(REQUEST, captured, len as u64, &mut found)
                    .is_err()
                {
                    break;
                }
                at += len;
            }
            assert!(found.windows(2).all(|w| w[0].end < w[1].end), "{found:?}");
        }
    }
}
