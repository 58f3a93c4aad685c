//! Protocol decoding: what was asked and what was answered.
//!
//! Takes each direction of a connection as a stream of bytes (what the
//! calls captured, and how many bytes each moved beyond that); hands on
//! messages: where each ends in its stream, a one-line summary, its fields
//! for JSON, and whether a response says its request failed. The turns of
//! `super::turns` follow those ends instead of direction changes, so
//! pipelined requests become exchanges of their own.
//!
//! Each protocol is a module behind [`Decoder`]. A decoder that meets
//! bytes it cannot follow says so ([`Mismatch`]) and the connection falls
//! back to plain turns.
//!
//! A connection older than the trace (no connect, accept or socketpair
//! seen) is joined mid-stream: its first bytes seen may be anywhere in a
//! message. Each protocol that can tells whether a call's bytes begin a
//! request ([`Decoder::resync`], stricter than detection); decoding
//! starts at the first call that does, within [`RESYNC_CALLS`] calls, and
//! the response direction where it stood when that request was sent.

pub mod dbus;
pub mod dns;
pub mod http;
pub mod postgresql;
pub mod redis;
pub mod rrdcached;
pub mod stream;

use std::fmt;

use serde_json::{Map, Value};

use self::stream::Stream;

/// One message, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// [`super::turns::REQUEST`] or [`super::turns::RESPONSE`].
    pub dir: usize,
    /// One past its last byte, as an offset in its direction's stream;
    /// `u64::MAX` for one that lasts until the connection ends.
    pub end: u64,
    /// One line for people: `update load.rrd`, `0 errors, enqueued 1 value(s)`.
    pub text: String,
    /// Its fields, the JSON `request` or `response` object.
    pub fields: Map<String, Value>,
    /// A response that says its request failed.
    pub failed: bool,
    /// What matches a response to its request when answers may come in
    /// another order (a DNS id, a D-Bus serial); `None` answers in order.
    pub key: Option<u64>,
    /// Whether it asks, answers, or expects no answer.
    pub role: Role,
    /// A request's kind, what `top --by kind` groups requests by: a few
    /// words that many requests share and that say what was asked,
    /// made with [`kind`]. HTTP: method and route (`GET /users/{id}`);
    /// Redis: the command; rrdcached: the command, upper-cased; DNS: the
    /// query type; PostgreSQL: the SQL verb (the query's first word,
    /// upper-cased; a Parse, Bind or Execute by its statement's query);
    /// D-Bus: `interface.member`. `None` for responses, and for a
    /// request a decoder cannot name.
    pub kind: Option<String>,
}

/// What a message is to the exchanges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It asks: what answers it comes the other way.
    Asks,
    /// It answers what the other way asked.
    Answers,
    /// It expects no answer (a D-Bus signal): an exchange of its own.
    OneWay,
}

impl Role {
    /// A message of direction `dir` where clients ask and servers answer.
    pub fn usual(dir: usize) -> Self {
        if dir == super::turns::REQUEST {
            Self::Asks
        } else {
            Self::Answers
        }
    }
}

impl Message {
    /// The message without its text and fields: where it ends and what
    /// pairs it, all that turns need of it.
    pub fn bare(&self) -> Self {
        Self {
            text: String::new(),
            fields: Map::new(),
            kind: None,
            ..*self
        }
    }
}

/// The most characters a request's kind keeps.
pub const MAX_KIND: usize = 80;

/// A request's kind, `text` cut to [`MAX_KIND`] characters: routes and
/// commands read from arbitrary bytes stay short.
pub fn kind(text: &str) -> String {
    match text.char_indices().nth(MAX_KIND) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// The bytes stopped matching the protocol: why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a call's bytes begin a request: [`Decoder::resync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resync {
    /// They do: decoding starts there.
    Here,
    /// They do not.
    NotHere,
    /// The protocol cannot be picked up mid-stream.
    Never,
}

impl Resync {
    /// [`Resync::Here`] when `starts`, [`Resync::NotHere`] otherwise.
    pub fn here_if(starts: bool) -> Self {
        if starts { Self::Here } else { Self::NotHere }
    }
}

/// Calls of the client's looked at for a request's start on a connection
/// joined mid-stream before it is left undecoded.
pub const RESYNC_CALLS: u32 = 16;

/// One protocol's decoder of one connection: it reads each direction
/// from a [`Stream`], which passes over what a length field said to skip.
pub trait Decoder: fmt::Debug {
    /// The protocol's name (`"app"` in JSON).
    fn name(&self) -> &'static str;

    /// Direction `dir`'s stream.
    fn stream(&mut self, dir: usize) -> &mut Stream;

    /// Consumes what direction `dir`'s stream holds; pushes the messages
    /// it completes.
    fn consume(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch>;

    /// On a connection joined mid-stream, whether `call` (the captured
    /// bytes of one call of the client's) begins a request; asked of a
    /// new decoder. The check is stricter than detection, since inside a
    /// stream bytes that merely look like a message's start are common.
    /// On [`Resync::Here`] the decoder is fed from `call`'s first byte
    /// on: one whose connections begin with a handshake (a startup
    /// message, an authentication) sets itself past it. A protocol whose
    /// message starts cannot be told from the middle of its messages
    /// says [`Resync::Never`] (the default).
    fn resync(&mut self, call: &[u8]) -> Resync {
        let _ = call;
        Resync::Never
    }

    /// What direction `dir`'s stream holds is all that was captured
    /// before bytes that were not: a decoder that can follow a message
    /// whose start it holds from its lengths alone finishes it now (by
    /// default what it holds waits, and the bytes not captured then end
    /// the decoding).
    fn truncated(&mut self, _dir: usize, _found: &mut Vec<Message>) -> Result<(), Mismatch> {
        Ok(())
    }

    /// Takes the next `len` bytes of direction `dir`, of which `data` (a
    /// prefix) was captured; pushes the messages they complete.
    fn feed(
        &mut self,
        dir: usize,
        data: &[u8],
        len: u64,
        found: &mut Vec<Message>,
    ) -> Result<(), Mismatch> {
        feed_stream(self, dir, data, len, found)
    }
}

/// What [`Decoder::feed`] does with a stream: the captured bytes are
/// consumed (a piece at a time, so that what stays buffered is one
/// message's start however much a call captured), then those not
/// captured passed over (a body being skipped may end there, so what
/// follows is consumed again).
pub fn feed_stream<D: Decoder + ?Sized>(
    decoder: &mut D,
    dir: usize,
    data: &[u8],
    len: u64,
    found: &mut Vec<Message>,
) -> Result<(), Mismatch> {
    for piece in data.chunks(stream::PIECE) {
        decoder.stream(dir).push(piece)?;
        decoder.consume(dir, found)?;
    }
    let missed = len - data.len() as u64;
    if missed > 0 {
        decoder.truncated(dir, found)?;
    }
    decoder.stream(dir).gap(missed)?;
    decoder.consume(dir, found)
}

/// The decoder for a connection whose client's first bytes are `first`
/// (a datagram's, when `datagram`), if a protocol recognises them.
pub fn detect(first: &[u8], datagram: bool) -> Option<Box<dyn Decoder>> {
    if let Some(decoder) = dns::Dns::detect(first, datagram) {
        return Some(Box::new(decoder));
    }
    if let Some(decoder) = postgresql::Postgresql::detect(first).filter(|_| !datagram) {
        return Some(Box::new(decoder));
    }
    if let Some(decoder) = http::Http::detect(first) {
        return Some(Box::new(decoder));
    }
    if let Some(decoder) = redis::Redis::detect(first) {
        return Some(Box::new(decoder));
    }
    if let Some(decoder) = dbus::Dbus::detect(first) {
        return Some(Box::new(decoder));
    }
    rrdcached::Rrdcached::detect(first).map(|d| Box::new(d) as Box<dyn Decoder>)
}

/// A connection's decoding.
#[derive(Debug, Default)]
pub enum Decoding {
    /// No bytes seen yet.
    #[default]
    Undecided,
    /// Joined mid-stream: looking for a call that begins a request.
    Resyncing {
        /// The protocol a `--decode-as` rule forces, `None` for any.
        protocol: Option<&'static str>,
        /// The client's calls looked at so far.
        tried: u32,
        /// How far each direction's bytes were seen.
        seen: [u64; 2],
    },
    Active {
        decoder: Box<dyn Decoder>,
        /// How far each direction's stream was fed: its sends and its
        /// reads carry the same bytes, and whichever comes first feeds.
        fed: [u64; 2],
        /// Where each direction's decoding began (the decoder counts its
        /// offsets from there): 0 at a connection's start.
        base: [u64; 2],
        /// Resynchronised at this request offset: said once.
        resynced: Option<u64>,
    },
    /// Not decoded, and why (said once, in the first exchange after).
    Plain(Option<String>),
}

/// Bytes `[offset, offset + len)` of direction `dir`'s stream, `data`
/// of them captured: one call's.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    pub dir: usize,
    pub offset: u64,
    pub data: &'a [u8],
    pub len: u64,
}

/// What the tracker knows of a connection when its first bytes come.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opening {
    /// What a `--decode-as` rule says of it (`Some(None)`: not to decode it).
    pub forced: Option<Option<&'static str>>,
    /// Each call is one message.
    pub datagram: bool,
    /// Its start was before the trace (no connect, accept or socketpair
    /// seen): its offsets count from the first byte seen.
    pub joined: bool,
}

/// What feeding changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// A protocol was recognised: turns follow its messages from these
    /// offsets (request, response) on.
    Started([u64; 2]),
    /// The bytes stopped matching: plain turns from here.
    Stopped,
}

impl Decoding {
    /// The protocol's name, while decoding.
    pub fn app(&self) -> Option<&'static str> {
        match self {
            Self::Active { decoder, .. } => Some(decoder.name()),
            _ => None,
        }
    }

    /// Why the connection went back to plain turns, once.
    pub fn take_reason(&mut self) -> Option<String> {
        match self {
            Self::Plain(reason) => reason.take(),
            _ => None,
        }
    }

    /// The request offset where decoding picked up a connection joined
    /// mid-stream, once.
    pub fn take_resynced(&mut self) -> Option<u64> {
        match self {
            Self::Active { resynced, .. } => resynced.take(),
            _ => None,
        }
    }

    /// Feeds what the decoder has not had yet of `piece`, from a
    /// connection that `opening` describes.
    pub fn feed(&mut self, opening: Opening, piece: Piece<'_>, found: &mut Vec<Message>) -> Change {
        let Piece {
            dir,
            offset,
            data,
            len,
        } = piece;
        let data = &data[..data.len().min(len as usize)];
        let mut change = Change::None;
        if let Self::Undecided = self {
            *self = Self::open(opening, dir, offset, data);
            if let Self::Active { .. } = self {
                change = Change::Started([0; 2]);
            }
        }
        if let Self::Resyncing { .. } = self {
            change = self.resync(dir, offset, data, len);
        }
        let Self::Active {
            decoder, fed, base, ..
        } = self
        else {
            return change;
        };
        let end = offset + len;
        if end <= fed[dir] {
            return change;
        }
        let missed = offset.saturating_sub(fed[dir]);
        let skip = fed[dir].saturating_sub(offset);
        let data = data.get(skip as usize..).unwrap_or_default();
        let first = found.len();
        // Bytes no record showed (lost records) go first, as a gap.
        let result = if missed > 0 {
            decoder.feed(dir, &[], missed, found)
        } else {
            Ok(())
        }
        .and_then(|()| decoder.feed(dir, data, len - skip, found));
        fed[dir] = end;
        for message in &mut found[first..] {
            if message.end != u64::MAX {
                message.end += base[dir];
            }
        }
        if let Err(mismatch) = result {
            let name = decoder.name();
            *self = Self::Plain(Some(format!("not {name} any more: {mismatch}")));
            return Change::Stopped;
        }
        change
    }

    /// A connection's first bytes: which protocol it speaks (its client's
    /// first bytes say, unless a rule did), or, joined mid-stream, a
    /// request's start to look for.
    fn open(opening: Opening, dir: usize, offset: u64, data: &[u8]) -> Self {
        let Opening {
            forced,
            datagram,
            joined,
        } = opening;
        // Every datagram starts a message: nothing to look for.
        if joined && !datagram && forced != Some(None) {
            return Self::Resyncing {
                protocol: forced.flatten(),
                tried: 0,
                seen: [0; 2],
            };
        }
        let decoder = match forced {
            Some(protocol) => protocol.and_then(|name| by_name(name, datagram)),
            None => (dir == super::turns::REQUEST && offset == 0)
                .then(|| detect(data, datagram))
                .flatten(),
        };
        match decoder {
            Some(decoder) => Self::Active {
                decoder,
                fed: [0; 2],
                base: [0; 2],
                resynced: None,
            },
            None => Self::Plain(None),
        }
    }

    /// Joined mid-stream: whether this call begins a request of the
    /// protocol looked for (or of any); decoding starts there, and the
    /// responses where they stood (those to earlier requests are not
    /// decoded). Gives up after [`RESYNC_CALLS`] of the client's calls, or
    /// at once for a protocol that cannot be picked up mid-stream.
    fn resync(&mut self, dir: usize, offset: u64, data: &[u8], len: u64) -> Change {
        let Self::Resyncing {
            protocol,
            tried,
            seen,
        } = self
        else {
            return Change::None;
        };
        // A call that begins where no call began before: its sender's
        // (or its reader's, whichever came first).
        let fresh = offset >= seen[dir];
        let responses = seen[super::turns::RESPONSE];
        seen[dir] = seen[dir].max(offset + len);
        if dir != super::turns::REQUEST || !fresh {
            return Change::None;
        }
        let names = match protocol {
            Some(name) => std::slice::from_ref(&*name),
            None => &PROTOCOLS[..],
        };
        let mut never = None;
        for name in names {
            let Some(mut decoder) = by_name(name, false) else {
                continue;
            };
            match decoder.resync(data) {
                Resync::Here => {
                    let at = [offset, responses];
                    *self = Self::Active {
                        decoder,
                        fed: at,
                        base: at,
                        resynced: Some(offset),
                    };
                    return Change::Started(at);
                }
                Resync::NotHere => {}
                Resync::Never => never = Some(*name),
            }
        }
        *tried += 1;
        let protocol = *protocol;
        if let (Some(name), Some(_)) = (protocol, never) {
            *self = Self::Plain(Some(format!(
                "joined mid-connection: {name} cannot be picked up mid-stream"
            )));
        } else if *tried >= RESYNC_CALLS {
            let what = protocol.unwrap_or("known");
            *self = Self::Plain(Some(format!(
                "joined mid-connection: no {what} request start in the first {RESYNC_CALLS} calls"
            )));
        }
        Change::None
    }
}

/// The protocols there are decoders for, by the names `--decode-as` and
/// the JSON's `"app"` use.
pub const PROTOCOLS: [&str; 6] = ["dbus", "dns", "http", "postgresql", "redis", "rrdcached"];

/// A decoder for protocol `name` (one of [`PROTOCOLS`]) on a stream, or
/// on datagrams.
pub fn by_name(name: &str, datagram: bool) -> Option<Box<dyn Decoder>> {
    match name {
        "dbus" => Some(Box::new(dbus::Dbus::default())),
        "dns" => Some(Box::new(dns::Dns::new(datagram))),
        "http" => Some(Box::new(http::Http::default())),
        "postgresql" => Some(Box::new(postgresql::Postgresql::default())),
        "redis" => Some(Box::new(redis::Redis::default())),
        "rrdcached" => Some(Box::new(rrdcached::Rrdcached::default())),
        _ => None,
    }
}

/// Where a `--decode-as` rule applies: a server's port, or its socket's
/// path (a glob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Port(u16),
    Path(String),
}

/// `--decode-as TARGET=NAME`: the protocol of connections to a server
/// there, `None` for `none` (left undecoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    pub protocol: Option<&'static str>,
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (target, name) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("`{text}` is not GLOB_OR_PORT=NAME"))?;
        let protocol = match name {
            "none" => None,
            _ => Some(
                *PROTOCOLS
                    .iter()
                    .find(|known| **known == name)
                    .ok_or_else(|| {
                        format!(
                            "`{name}` is not a protocol sockspy decodes ({}, or none)",
                            PROTOCOLS.join(", ")
                        )
                    })?,
            ),
        };
        let target = match target.parse::<u16>() {
            Ok(0) => return Err("port 0 is no port".to_owned()),
            Ok(port) => Target::Port(port),
            Err(_) if target.is_empty() => return Err(format!("`{text}` names no path or port")),
            Err(_) => Target::Path(target.to_owned()),
        };
        Ok(Self { target, protocol })
    }
}

impl Rule {
    /// Whether the rule is for a server at `path` or `port`.
    pub fn applies(&self, path: Option<&str>, port: Option<u16>) -> bool {
        match &self.target {
            Target::Port(wanted) => port == Some(*wanted),
            Target::Path(glob) => path.is_some_and(|path| crate::filter::glob(glob, path)),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A message of direction `dir` saying `text`, nothing more.
    pub fn message(dir: usize, text: &str) -> Message {
        Message {
            dir,
            end: 0,
            text: text.to_owned(),
            fields: Map::new(),
            failed: false,
            key: None,
            role: Role::usual(dir),
            kind: None,
        }
    }

    /// The messages `decoder` finds in the next `len` bytes of `dir`, of
    /// which `data` was captured; the bytes must match.
    pub fn fed(decoder: &mut dyn Decoder, dir: usize, data: &[u8], len: u64) -> Vec<Message> {
        let mut found = Vec::new();
        decoder.feed(dir, data, len, &mut found).unwrap();
        found
    }

    /// A new decoder for protocol `name` picks a connection up
    /// mid-stream at each of `starts`, and at none of `inside`.
    pub fn resyncs(name: &str, starts: &[&[u8]], inside: &[&[u8]]) {
        let new = || by_name(name, false).unwrap();
        for start in starts {
            assert_eq!(new().resync(start), Resync::Here, "{start:?}");
        }
        for bytes in inside {
            assert_eq!(new().resync(bytes), Resync::NotHere, "{bytes:?}");
        }
    }
}
