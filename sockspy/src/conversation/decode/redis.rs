//! Redis's RESP, versions 2 and 3 (redis, valkey, on a Unix socket or
//! 6379): a request is an array of bulk strings (or an inline command
//! line); a reply one value, nested as deep as it goes. Each element
//! starts with a type byte and a line; bulk values are passed over by
//! their lengths, so only the start of each message need be captured.

use serde_json::Map;

use super::{Decoder, Message, Mismatch, Resync, Role, stream::Stream};
use crate::conversation::turns::{REQUEST, RESPONSE};

/// The longest value kept for a summary (a command, a key, a short reply).
const KEPT: usize = 64;

/// Commands that, first on a client's first line, say it speaks Redis
/// inline (other line protocols' words are left to them).
const INLINE: [&str; 42] = [
    "PING",
    "INFO",
    "APPEND",
    "AUTH",
    "BLPOP",
    "BRPOP",
    "CLIENT",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DECR",
    "DEL",
    "ECHO",
    "EVAL",
    "EXISTS",
    "EXPIRE",
    "FLUSHALL",
    "FLUSHDB",
    "GET",
    "HELLO",
    "HGET",
    "HGETALL",
    "HSET",
    "INCR",
    "KEYS",
    "LPUSH",
    "LRANGE",
    "MGET",
    "MSET",
    "PUBLISH",
    "RPUSH",
    "SADD",
    "SCAN",
    "SELECT",
    "SET",
    "SETEX",
    "SMEMBERS",
    "SUBSCRIBE",
    "TTL",
    "TYPE",
    "ZADD",
    "ZRANGE",
];

/// Aggregates nested deeper than this are no RESP a client or server
/// sends (and would make the levels kept grow with the bytes).
const MAX_DEPTH: usize = 128;

/// A bulk value's bytes (and their `\r\n`) are next.
#[derive(Debug, Clone, Copy)]
enum Bulk {
    /// Kept (a command, a key, a short reply) once all `len` are here.
    Keep(u64),
    /// Passed over.
    Skipping,
}

/// What an element's header line began.
enum Began {
    /// An aggregate with elements to come.
    Aggregate,
    Bulk(u64),
    /// A value complete in its line.
    Scalar,
    /// An empty inline line, which the server passes over: no message.
    Blank,
}

/// What is being read in one direction.
#[derive(Debug, Default)]
struct Side {
    /// Elements still to come at each level of the value being read.
    pending: Vec<u64>,
    bulk: Option<Bulk>,
    /// The top-level value's type.
    kind: Option<&'static str>,
    /// A request's first values (command, key), a reply's first scalar.
    values: Vec<String>,
    /// A reply's error text.
    error: Option<String>,
    /// The value read is an attribute (RESP3 `|`): the reply follows it.
    attribute: bool,
}

#[derive(Debug, Default)]
pub struct Redis {
    streams: [Stream; 2],
    sides: [Side; 2],
}

fn type_name(byte: u8) -> Option<&'static str> {
    Some(match byte {
        b'+' => "simple",
        b'-' => "error",
        b':' => "integer",
        b'$' => "bulk",
        b'*' => "array",
        b'_' => "null",
        b'#' => "boolean",
        b',' => "double",
        b'(' => "bignum",
        b'!' => "bulk_error",
        b'=' => "verbatim",
        b'%' => "map",
        b'~' => "set",
        b'>' => "push",
        b'|' => "attribute",
        _ => return None,
    })
}

impl Side {
    /// One element's header line.
    fn element(&mut self, dir: usize, line: &[u8]) -> Result<Began, Mismatch> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let Some(kind) = line.first().copied().and_then(type_name) else {
            if dir == REQUEST && self.pending.is_empty() {
                if text.trim().is_empty() {
                    return Ok(Began::Blank);
                }
                // An inline command: `PING`, `GET key`.
                self.kind = Some("inline");
                self.values = text.split_whitespace().take(2).map(str::to_owned).collect();
                return Ok(Began::Scalar);
            }
            return Err(Mismatch(format!("`{text}` is no RESP element")));
        };
        if self.pending.is_empty() {
            if kind == "attribute" {
                self.attribute = true;
            } else {
                self.kind = Some(kind);
            }
        }
        let arg = &text[1..];
        let number = || {
            arg.parse::<i64>()
                .map_err(|_| Mismatch(format!("`{text}` has no length")))
        };
        let short = || arg.chars().take(KEPT).collect::<String>();
        Ok(match kind {
            "array" | "set" | "push" | "map" | "attribute" => {
                let pairs = if matches!(kind, "map" | "attribute") {
                    2
                } else {
                    1
                };
                match number()?.saturating_mul(pairs) {
                    _ if self.pending.len() >= MAX_DEPTH => {
                        return Err(Mismatch(format!(
                            "aggregates nested deeper than {MAX_DEPTH}"
                        )));
                    }
                    count if count > 0 => {
                        self.pending.push(count as u64);
                        Began::Aggregate
                    }
                    _ => Began::Scalar,
                }
            }
            "bulk" | "bulk_error" | "verbatim" => match number()? {
                len if len >= 0 => Began::Bulk(len as u64),
                _ => Began::Scalar,
            },
            "error" => {
                self.error.get_or_insert_with(short);
                Began::Scalar
            }
            "null" => Began::Scalar,
            _ => {
                if !self.in_attribute() {
                    self.values.push(short());
                }
                Began::Scalar
            }
        })
    }

    /// Reading an attribute, before the reply it annotates.
    fn in_attribute(&self) -> bool {
        self.attribute && self.kind.is_none()
    }

    /// An element ended: counts it at its level; true when the whole
    /// message did.
    fn ended(&mut self) -> bool {
        while let Some(left) = self.pending.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.pending.pop();
        }
        // An attribute alone is not the reply: that comes next.
        !self.in_attribute()
    }
}

/// The decimal number `text` starts with, up to `\r\n`, and what follows.
fn number_line(text: &[u8]) -> Option<(u64, &[u8])> {
    let end = text.windows(2).position(|pair| pair == b"\r\n")?;
    let digits = &text[..end];
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((number, &text[end + 2..]))
}

/// `*N\r\n$M\r\nNAME\r\n`: an array of bulk strings whose first, the
/// command's name, is a word (letters, digits, `_`, `-`, `.`, `|`), whole
/// in the call; what a request's start inside a stream must look like.
fn strict_command(call: &[u8]) -> bool {
    let Some(rest) = call.strip_prefix(b"*") else {
        return false;
    };
    let Some((count, rest)) = number_line(rest) else {
        return false;
    };
    let Some((len, rest)) = rest.strip_prefix(b"$").and_then(number_line) else {
        return false;
    };
    let len = len as usize;
    let word = |b: &u8| b.is_ascii_alphanumeric() || b"_-.|".contains(b);
    count > 0
        && (1..=KEPT).contains(&len)
        && rest.len() >= len + 2
        && rest[..len].iter().all(word)
        && rest[0].is_ascii_alphabetic()
        && &rest[len..len + 2] == b"\r\n"
}

impl Redis {
    /// A client whose first bytes are a RESP array of bulk strings, or an
    /// inline command (`redis-cli --pipe`, telnet): a line ending in CRLF
    /// whose first word is a common Redis command.
    pub fn detect(first: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(&first[..first.len().min(64)]);
        let array = text.strip_prefix('*').and_then(|rest| {
            let (count, rest) = rest.split_once("\r\n")?;
            let count: u32 = count.parse().ok()?;
            (count > 0 && rest.starts_with('$')).then_some(())
        });
        let inline = || {
            let (line, _) = text.split_once("\r\n")?;
            if line.contains(" HTTP/") {
                return None;
            }
            let word = line.split(' ').next()?;
            INLINE
                .iter()
                .any(|command| command.eq_ignore_ascii_case(word))
                .then_some(())
        };
        array.or_else(inline).map(|()| Self::default())
    }

    fn finish(&mut self, dir: usize, end: u64, found: &mut Vec<Message>) {
        let side = &mut self.sides[dir];
        let kind = side.kind.take().unwrap_or("null");
        let error = side.error.take();
        side.attribute = false;
        // Drained, not taken: the list keeps its room for the next message.
        let mut values = side.values.drain(..);
        let mut fields = Map::new();
        let mut request_kind = None;
        let text = if dir == REQUEST {
            let mut command = values.next().unwrap_or_default();
            command.make_ascii_uppercase();
            let key = values.next();
            let mut text = command.clone();
            if let Some(key) = &key {
                text.push(' ');
                text.push_str(key);
            }
            request_kind = Some(super::kind(&command));
            fields.insert("command".into(), command.into());
            fields.insert("key".into(), key.into());
            text
        } else {
            let value = values.next();
            let text = match (kind, &error, &value) {
                (_, Some(error), _) => format!("-{error}"),
                ("simple", _, Some(v)) => format!("+{v}"),
                ("integer", _, Some(v)) => format!(":{v}"),
                (kind, _, Some(v)) => format!("{kind} {v}"),
                (kind, _, None) => kind.to_owned(),
            };
            fields.insert("type".into(), kind.into());
            fields.insert("value".into(), value.into());
            fields.insert("error".into(), error.clone().into());
            text
        };
        drop(values);
        found.push(Message {
            dir,
            end,
            text,
            fields,
            failed: dir == RESPONSE && error.is_some(),
            key: None,
            role: Role::usual(dir),
            kind: request_kind,
        });
    }

    fn run(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        loop {
            let (stream, side) = (&mut self.streams[dir], &mut self.sides[dir]);
            let end = match side.bulk {
                Some(Bulk::Keep(len)) => {
                    let Some((bytes, end)) = stream.take(len as usize + 2) else {
                        return Ok(());
                    };
                    let value = String::from_utf8_lossy(&bytes[..len as usize]).into_owned();
                    if side.kind.is_some_and(|k| k.ends_with("error")) {
                        side.error.get_or_insert(value);
                    } else if !side.in_attribute() {
                        side.values.push(value);
                    }
                    side.bulk = None;
                    end
                }
                Some(Bulk::Skipping) if stream.skipping() > 0 => return Ok(()),
                Some(Bulk::Skipping) => {
                    side.bulk = None;
                    stream.pos()
                }
                None => {
                    let Some((line, end)) = stream.line() else {
                        return Ok(());
                    };
                    match side.element(dir, line)? {
                        Began::Aggregate | Began::Blank => continue,
                        Began::Bulk(len) => {
                            side.bulk = Some(if side.values.len() < 2 && len as usize <= KEPT {
                                Bulk::Keep(len)
                            } else {
                                stream.skip(len + 2);
                                Bulk::Skipping
                            });
                            continue;
                        }
                        Began::Scalar => end,
                    }
                }
            };
            if self.sides[dir].ended() {
                self.finish(dir, end, found);
            }
        }
    }
}

impl Decoder for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn stream(&mut self, dir: usize) -> &mut Stream {
        &mut self.streams[dir]
    }

    fn consume(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        self.run(dir, found)
    }

    fn resync(&mut self, call: &[u8]) -> Resync {
        Resync::here_if(strict_command(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::decode::tests::resyncs;

    fn feed(redis: &mut Redis, dir: usize, data: &[u8]) -> Vec<Message> {
        crate::conversation::decode::tests::fed(redis, dir, data, data.len() as u64)
    }

    #[test]
    fn inline_commands_are_recognised_and_other_lines_are_not() {
        for first in [
            &b"SET p:1 one\r\nINCR p:1\r\n"[..],
            b"ping\r\n",
            b"*1\r\n$4\r\nPING\r\n",
        ] {
            assert!(Redis::detect(first).is_some(), "{first:?}");
        }
        for first in [
            &b"GET / HTTP/1.1"[..],
            b"UPDATE load.rrd N:1\n",
            b"PING\n",
            b"HELLO world\n",
            b"*0\r\n",
        ] {
            assert!(Redis::detect(first).is_none(), "{first:?}");
        }
        let mut redis = Redis::detect(b"SET p:1 one\r\n").unwrap();
        let asked = feed(&mut redis, REQUEST, b"SET p:1 one\r\nGET p:1\r\n");
        let commands: Vec<&str> = asked
            .iter()
            .map(|m| m.fields["command"].as_str().unwrap())
            .collect();
        assert_eq!(commands, ["SET", "GET"]);
    }

    #[test]
    fn commands_and_replies_pipelined() {
        let asked = b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$5\r\nalice\r\n*2\r\n$3\r\nget\r\n$6\r\nuser:1\r\nPING\r\n";
        let mut redis = Redis::detect(asked).unwrap();
        let requests = feed(&mut redis, REQUEST, asked);
        let texts: Vec<&str> = requests.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["SET user:1", "GET user:1", "PING"]);
        let kinds: Vec<Option<&str>> = requests.iter().map(|m| m.kind.as_deref()).collect();
        assert_eq!(kinds, [Some("SET"), Some("GET"), Some("PING")]);
        assert_eq!(requests[1].fields["key"], "user:1");
        assert_eq!(requests[2].end, asked.len() as u64);
        let replies = feed(
            &mut redis,
            RESPONSE,
            b"+OK\r\n$5\r\nalice\r\n-ERR unknown command\r\n*2\r\n:1\r\n*0\r\n%1\r\n+a\r\n:2\r\n|1\r\n+ttl\r\n:3\r\n_\r\n",
        );
        let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "+OK",
                "bulk alice",
                "-ERR unknown command",
                "array 1",
                "map a",
                "null"
            ]
        );
        assert!(replies[2].failed);
        assert_eq!(replies[2].fields["error"], "ERR unknown command");
        assert_eq!(replies[0].fields["type"], "simple");
        assert!(replies.iter().all(|reply| reply.kind.is_none()));
    }

    #[test]
    fn a_command_start_inside_a_stream() {
        resyncs(
            "redis",
            &[
                b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n",
                b"*1\r\n$4\r\nPING\r\n",
                b"*2\r\n$8\r\nJSON.GET\r\n",
            ],
            // What detection takes at a connection's start, but a value
            // might hold: a name not whole, not a word, no count.
            &[
                b"*2\r\n$3\r\nGE",
                b"*2\r\n$3\r\n\x00\x01\x02\r\n",
                b"*0\r\n$3\r\nGET\r\n",
                b"*2\r\n$3\r\nGET\n",
                b"*x\r\n$3\r\nGET\r\n",
                b"*2\r\n:3\r\n",
                b"$3\r\nGET\r\n",
                b"PING\r\n",
                b"",
            ],
        );
    }

    #[test]
    fn counts_and_depths_beyond_bounds() {
        // Found by fuzzing: a map's count doubled past what a number
        // holds; aggregates nested without end.
        let mut redis = Redis::default();
        let huge = format!("%{}\r\n", i64::MAX);
        assert!(feed(&mut redis, RESPONSE, huge.as_bytes()).is_empty());
        assert_eq!(redis.sides[RESPONSE].pending, [i64::MAX as u64]);
        let mut redis = Redis::default();
        let nested = b"*1\r\n".repeat(MAX_DEPTH + 1);
        let mut found = Vec::new();
        let error = redis
            .feed(RESPONSE, &nested, nested.len() as u64, &mut found)
            .unwrap_err();
        assert_eq!(error.0, "aggregates nested deeper than 128");
        assert!(redis.sides[RESPONSE].pending.len() <= MAX_DEPTH);
    }

    #[test]
    fn a_large_value_not_captured_is_passed_over() {
        let mut redis = Redis::default();
        let head = b"$100000\r\nxxxx";
        let mut found = Vec::new();
        redis
            .feed(RESPONSE, head, 9 + 100_000 + 2, &mut found)
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].fields["type"], "bulk");
        assert_eq!(found[0].end, 9 + 100_002);
        assert!(Redis::detect(b"GET / HTTP/1.1\r\n").is_none());
    }
}
