//! HTTP/1.0 and 1.1 (container engine APIs on Unix sockets, loopback web
//! servers): a request line or status line, headers, and a body whose
//! length `Content-Length` gives, or chunked encoding, or (a response
//! without either) the rest of the connection. Bodies are passed over
//! by their lengths, so only the start of each message need be captured.

use std::collections::VecDeque;

use serde_json::Map;

use super::{Decoder, Message, Mismatch, Resync, Role, stream::Stream};
use crate::conversation::turns::{REQUEST, RESPONSE};

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Where one direction is in its current message.
#[derive(Debug, Default)]
enum State {
    /// Before a request or status line.
    #[default]
    Start,
    /// Reading headers.
    Headers,
    /// Passing over a body of known length.
    Body,
    /// Chunked: the next line is a chunk's size.
    ChunkSize,
    /// Passing over a chunk's bytes, then its line end.
    ChunkData,
    /// After the last chunk: trailers until an empty line.
    Trailers,
    /// A response body that lasts until the connection closes.
    UntilClose,
}

/// What the headers of the current message said.
#[derive(Debug, Default)]
struct Head {
    first: String,
    content_length: Option<u64>,
    chunked: bool,
    host: Option<String>,
    body_bytes: u64,
}

#[derive(Debug, Default)]
struct Side {
    stream: Stream,
    state: State,
    head: Head,
}

#[derive(Debug, Default)]
pub struct Http {
    sides: [Side; 2],
    /// Methods of requests not answered yet (a HEAD's answer has no body).
    methods: VecDeque<String>,
}

/// `GET /x HTTP/1.1`: the method, if it is one.
fn method(line: &str) -> Option<&str> {
    let (word, rest) = line.split_once(' ')?;
    (METHODS.contains(&word) && rest.trim_end().rsplit(' ').next()?.starts_with("HTTP/1."))
        .then_some(word)
}

/// `GET /x HTTP/1.1\r\n` and nothing looser: a known method, a target
/// of the forms clients send (a path, `*`, an absolute URL, CONNECT's
/// `host:port`) in visible characters, HTTP/1.0 or 1.1, the line's
/// `\r\n`; what a request's start inside a stream must look like.
fn strict_request_line(call: &[u8]) -> bool {
    let Some(end) = call.windows(2).position(|pair| pair == b"\r\n") else {
        return false;
    };
    let Ok(line) = std::str::from_utf8(&call[..end]) else {
        return false;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let target_ok = !target.is_empty()
        && target.bytes().all(|b| b.is_ascii_graphic())
        && (target.starts_with('/')
            || target == "*"
            || target.starts_with("http://")
            || target.starts_with("https://")
            || (method == "CONNECT" && target.contains(':')));
    METHODS.contains(&method) && target_ok && matches!(version, "HTTP/1.0" | "HTTP/1.1")
}

/// A request target's route: its path without the query, each segment
/// that names one thing of many (a number, a UUID, a long hex id such as
/// a container's) made `{id}`, so that requests of one kind group.
pub fn route(target: &str) -> String {
    // The absolute form (`http://host/path`, to a proxy) has a path too.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| if is_id(segment) { "{id}" } else { segment })
        .collect();
    segments.join("/")
}

/// A path segment that names one thing: a number, a UUID, or eight or
/// more hex digits with a digit among them (a word like `deadbeef` is
/// not taken for one).
fn is_id(segment: &str) -> bool {
    let hex = |part: &str| part.bytes().all(|b| b.is_ascii_hexdigit());
    let number = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    let uuid = segment.len() == 36
        && segment.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && segment.split('-').all(hex);
    let long_hex =
        segment.len() >= 8 && hex(segment) && segment.bytes().any(|b| b.is_ascii_digit());
    number || uuid || long_hex
}

impl Http {
    /// A client whose first line is an HTTP/1 request line.
    pub fn detect(first: &[u8]) -> Option<Self> {
        let end = first.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&first[..end]).ok()?;
        method(line).map(|_| Self::default())
    }

    /// Turns the finished message of `dir` into its [`Message`].
    fn finish(&mut self, dir: usize, end: u64, found: &mut Vec<Message>) {
        let side = &mut self.sides[dir];
        side.state = State::Start;
        let head = std::mem::take(&mut side.head);
        let mut fields = Map::new();
        let mut parts = head.first.splitn(3, ' ');
        let (a, b, c) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let kind = (dir == REQUEST).then(|| super::kind(&format!("{a} {}", route(b))));
        let (text, failed) = if dir == REQUEST {
            fields.insert("method".into(), a.into());
            fields.insert("target".into(), b.into());
            fields.insert("host".into(), head.host.clone().into());
            fields.insert("body_bytes".into(), head.body_bytes.into());
            (format!("{a} {b}"), false)
        } else {
            let status: u16 = b.parse().unwrap_or_default();
            fields.insert("status".into(), status.into());
            fields.insert("reason".into(), c.into());
            fields.insert("body_bytes".into(), head.body_bytes.into());
            if (400..500).contains(&status) {
                fields.insert("client_error".into(), true.into());
            }
            (format!("{status} {c} {} B", head.body_bytes), status >= 500)
        };
        found.push(Message {
            dir,
            end,
            text,
            fields,
            failed,
            key: None,
            role: Role::usual(dir),
            kind,
        });
    }

    /// A header line, or the empty line that ends them.
    fn header(&mut self, dir: usize, line: &str, end: u64, found: &mut Vec<Message>) {
        let side = &mut self.sides[dir];
        if !line.is_empty() {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    side.head.content_length = value.parse().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    side.head.chunked = value.to_ascii_lowercase().contains("chunked");
                } else if name.eq_ignore_ascii_case("host") {
                    side.head.host = Some(value.to_owned());
                }
            }
            return;
        }
        // The headers' end: is there a body, and how long?
        let status: u16 = side
            .head
            .first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        if dir == RESPONSE && (100..200).contains(&status) {
            // An interim answer (100 Continue): the real one follows.
            side.head = Head::default();
            side.state = State::Start;
            return;
        }
        let bodiless = dir == RESPONSE
            && (status == 204
                || status == 304
                || self.methods.front().is_some_and(|m| m == "HEAD"));
        if dir == RESPONSE {
            self.methods.pop_front();
        }
        let side = &mut self.sides[dir];
        if bodiless {
            self.finish(dir, end, found);
        } else if side.head.chunked {
            side.state = State::ChunkSize;
        } else if let Some(length) = side.head.content_length {
            side.head.body_bytes = length;
            side.stream.skip(length);
            side.state = State::Body;
        } else if dir == RESPONSE {
            // No length: the body lasts until the connection closes, and
            // so does the message.
            self.finish(dir, end, found);
            if let Some(message) = found.last_mut() {
                message.end = u64::MAX;
                message.text = message.text.replace(" 0 B", " (body until close)");
            }
            self.sides[dir].state = State::UntilClose;
        } else {
            self.finish(dir, end, found);
        }
    }

    /// Consumes what `dir`'s stream holds.
    fn run(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        loop {
            let side = &mut self.sides[dir];
            match side.state {
                State::Body | State::ChunkData if side.stream.skipping() > 0 => return Ok(()),
                State::Body => {
                    let end = side.stream.pos();
                    self.finish(dir, end, found);
                    continue;
                }
                State::UntilClose => {
                    // Everything from here is body.
                    side.stream.skip(u64::MAX / 2);
                    return Ok(());
                }
                _ => {}
            }
            let Some((line, end)) = side.stream.line() else {
                return Ok(());
            };
            let line = String::from_utf8_lossy(line).into_owned();
            let line = line.trim_end_matches(['\r', '\n']);
            match side.state {
                State::Start => {
                    let ok = if dir == REQUEST {
                        method(line).map(|m| self.methods.push_back(m.to_owned()))
                    } else {
                        line.starts_with("HTTP/1.").then_some(())
                    };
                    if ok.is_none() {
                        return Err(Mismatch(format!("`{line}` starts no HTTP/1 message")));
                    }
                    let side = &mut self.sides[dir];
                    side.head.first = line.to_owned();
                    side.state = State::Headers;
                }
                State::Headers => self.header(dir, line, end, found),
                State::ChunkSize => {
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| Mismatch(format!("`{line}` is no chunk size")))?;
                    if size == 0 {
                        side.state = State::Trailers;
                    } else {
                        side.head.body_bytes = side.head.body_bytes.saturating_add(size);
                        // The chunk and the line end after it.
                        side.stream.skip(size.saturating_add(2));
                        side.state = State::ChunkData;
                    }
                }
                State::ChunkData => unreachable!("handled above"),
                State::Trailers => {
                    if line.is_empty() {
                        self.finish(dir, end, found);
                    }
                }
                State::Body | State::UntilClose => unreachable!("handled above"),
            }
            if let State::ChunkData = self.sides[dir].state
                && self.sides[dir].stream.skipping() == 0
            {
                self.sides[dir].state = State::ChunkSize;
            }
        }
    }
}

impl Decoder for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn stream(&mut self, dir: usize) -> &mut Stream {
        &mut self.sides[dir].stream
    }

    fn consume(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        self.run(dir, found)
    }

    fn resync(&mut self, call: &[u8]) -> Resync {
        Resync::here_if(strict_request_line(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::conversation::decode::tests::{fed as feed, resyncs};

    #[test]
    fn a_request_and_its_answer_with_a_body_not_captured() {
        let request =
            b"GET /v1.43/containers/json HTTP/1.1\r\nHost: docker\r\nUser-Agent: curl\r\n\r\n";
        let mut http = Http::detect(request).unwrap();
        let asked = feed(&mut http, REQUEST, request, request.len() as u64);
        assert_eq!(asked[0].text, "GET /v1.43/containers/json");
        assert_eq!(asked[0].fields["host"], "docker");
        assert_eq!(asked[0].kind.as_deref(), Some("GET /v1.43/containers/json"));
        assert_eq!(asked[0].end, request.len() as u64);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
        // 24 bytes of the body captured, the rest not.
        let mut call = head.to_vec();
        call.extend_from_slice(&[b'x'; 24]);
        let answered = feed(&mut http, RESPONSE, &call, head.len() as u64 + 5000);
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].text, "200 OK 5000 B");
        assert_eq!(answered[0].end, head.len() as u64 + 5000);
        assert!(!answered[0].failed);
        assert_eq!(answered[0].kind, None, "a response has no kind");
    }

    #[test]
    fn routes_group_requests_for_different_things() {
        for (target, want) in [
            ("/users/42?full=1", "/users/{id}"),
            ("/users/42/posts/7#top", "/users/{id}/posts/{id}"),
            (
                "/v1.43/containers/3f2a9c1b7d4e/json",
                "/v1.43/containers/{id}/json",
            ),
            ("/items/123e4567-e89b-12d3-a456-426614174000", "/items/{id}"),
            ("http://example.com/a/1?x", "/a/{id}"),
            ("http://example.com", "/"),
            ("/deadbeef/cafe/", "/deadbeef/cafe/"),
            ("/", "/"),
            ("*", "*"),
        ] {
            assert_eq!(route(target), want, "{target}");
        }
        let request = b"DELETE /v1.43/containers/3f2a9c1b7d4e?force=1 HTTP/1.1\r\n\r\n";
        let asked = feed(&mut Http::default(), REQUEST, request, request.len() as u64);
        assert_eq!(
            asked[0].kind.as_deref(),
            Some("DELETE /v1.43/containers/{id}")
        );
    }

    #[test]
    fn pipelined_chunked_head_and_failures() {
        let mut http = Http::default();
        let requests = b"HEAD / HTTP/1.1\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let asked = feed(&mut http, REQUEST, requests, requests.len() as u64);
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[1].fields["body_bytes"], 3);
        let answers = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwait\r\n0\r\n\r\n";
        let answered = feed(&mut http, RESPONSE, answers, answers.len() as u64);
        assert_eq!(answered.len(), 2, "{answered:?}");
        // HEAD's answer has no body, whatever its length says.
        assert_eq!(answered[0].fields["status"], 200);
        assert_eq!(answered[1].text, "503 Busy 4 B");
        assert!(answered[1].failed);
        assert_eq!(answered[1].end, answers.len() as u64);
    }

    #[test]
    fn a_request_start_inside_a_stream() {
        resyncs(
            "http",
            &[
                b"GET /v1.43/containers/json HTTP/1.1\r\nHost: x\r\n",
                b"OPTIONS * HTTP/1.1\r\n",
                b"CONNECT example.com:443 HTTP/1.1\r\n",
                b"POST http://api/x HTTP/1.0\r\n",
            ],
            // What detection takes at a connection's start, but a body
            // might hold: a bare `\n`, another version, odd targets.
            &[
                b"GET /x HTTP/1.1\n",
                b"GET /x HTTP/1.9\r\n",
                b"GET x HTTP/1.1\r\n",
                b"GET /a b HTTP/1.1\r\n",
                b"GET /x HTTP/1.1",
                b"ET /x HTTP/1.1\r\n",
                b"HTTP/1.1 200 OK\r\n",
                b"\x00\x01\x02",
                b"",
            ],
        );
    }

    #[test]
    fn lengths_beyond_what_a_number_holds() {
        // Found by fuzzing: chunk sizes that overflow when added up, and
        // a body until close that goes on for many calls.
        let mut http = Http::default();
        let chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
        let answered = feed(&mut http, RESPONSE, chunks, chunks.len() as u64);
        assert!(answered.is_empty());
        assert_eq!(http.sides[RESPONSE].stream.skipping(), u64::MAX);
        let mut http = Http::default();
        let answered = feed(&mut http, RESPONSE, b"HTTP/1.0 200 OK\r\n\r\n", 19);
        assert_eq!(answered[0].end, u64::MAX);
        for _ in 0..4 {
            assert!(feed(&mut http, RESPONSE, b"body", 1 << 40).is_empty());
        }
        assert_eq!(http.sides[RESPONSE].stream.skipping(), u64::MAX);
    }

    #[test]
    fn what_is_not_http() {
        assert!(Http::detect(b"update x.rrd N:1\n").is_none());
        assert!(Http::detect(b"GET key\r\n").is_none());
        let mut http = Http::default();
        let mut found = Vec::new();
        assert!(
            http.feed(RESPONSE, b"SSH-2.0-x\r\n", 11, &mut found)
                .is_err()
        );
    }
}
