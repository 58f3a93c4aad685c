//! rrdcached's protocol (collectd, `rrdtool --daemon`): a request is one
//! line, `COMMAND args...`; a response is a status line `N message`,
//! followed by N more lines when N is positive (STATS, HELP, a batch's
//! errors); a negative N is a failure. `BATCH` starts a batch: its answer
//! `0 Go ahead`, then command lines until a line `.`, answered once.

use serde_json::{Map, Value};

use super::{Decoder, Message, Mismatch, Resync, Role, stream::Stream};
use crate::conversation::turns::{REQUEST, RESPONSE};

/// Commands rrdcached knows (`HELP` lists them).
const COMMANDS: [&str; 20] = [
    "UPDATE",
    "FLUSH",
    "FLUSHALL",
    "PENDING",
    "FORGET",
    "QUEUE",
    "HELP",
    "STATS",
    "BATCH",
    "WROTE",
    "FIRST",
    "LAST",
    "LASTUPDATE",
    "INFO",
    "CREATE",
    "FETCH",
    "FETCHBIN",
    "LIST",
    "SUSPEND",
    "RESUME",
];

#[derive(Debug, Default)]
pub struct Rrdcached {
    streams: [Stream; 2],
    /// Inside a batch: the commands sent so far.
    batch: Option<u64>,
    /// A response's status line was read; this many lines still follow.
    lines_left: u64,
    /// That response's status and message.
    status: Option<(i64, String)>,
}

/// The command word of a request line, if rrdcached knows it.
fn command(line: &str) -> Option<&str> {
    let word = line.split_whitespace().next()?;
    COMMANDS
        .iter()
        .any(|known| known.eq_ignore_ascii_case(word))
        .then_some(word)
}

impl Rrdcached {
    /// A client whose first bytes are an rrdcached command.
    pub fn detect(first: &[u8]) -> Option<Self> {
        let head = &first[..first.len().min(32)];
        let text = std::str::from_utf8(head).ok()?;
        let word_end = text.find([' ', '\n'])?;
        command(&text[..=word_end]).map(|_| Self::default())
    }

    fn request(&mut self, line: &str, end: u64, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(count) = &mut self.batch {
            if line == "." {
                let count = *count;
                self.batch = None;
                found.push(Message {
                    dir: REQUEST,
                    end,
                    text: format!("BATCH of {count} commands ."),
                    fields: fields([
                        ("command", Value::from("BATCH")),
                        ("commands", Value::from(count)),
                    ]),
                    failed: false,
                    key: None,
                    role: Role::Asks,
                    kind: Some(super::kind("BATCH")),
                });
            } else {
                command(line).ok_or_else(|| Mismatch(format!("`{line}` in a batch")))?;
                *count += 1;
            }
            return Ok(());
        }
        let word = command(line).ok_or_else(|| Mismatch(format!("unknown command `{line}`")))?;
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let mut text = word.to_owned();
        if let Some(first) = args.first() {
            // A file's name says enough on one line; JSON has the whole path.
            text.push(' ');
            text.push_str(first.rsplit('/').next().unwrap_or(first));
        }
        if word.eq_ignore_ascii_case("BATCH") {
            self.batch = Some(0);
        }
        found.push(Message {
            dir: REQUEST,
            end,
            text,
            fields: fields([("command", Value::from(word)), ("args", Value::from(args))]),
            failed: false,
            key: None,
            role: Role::Asks,
            kind: Some(super::kind(&word.to_ascii_uppercase())),
        });
        Ok(())
    }

    fn response(&mut self, line: &str, end: u64, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        let line = line.trim_end_matches(['\n', '\r']);
        if self.status.is_none() {
            let (number, message) = line.split_once(' ').unwrap_or((line, ""));
            let status: i64 = number
                .parse()
                .map_err(|_| Mismatch(format!("`{line}` is not a status line")))?;
            self.lines_left = status.max(0) as u64;
            self.status = Some((status, message.to_owned()));
        } else {
            self.lines_left -= 1;
        }
        if self.lines_left == 0
            && let Some((status, message)) = self.status.take()
        {
            found.push(Message {
                dir: RESPONSE,
                end,
                text: format!("{status} {message}"),
                fields: fields([
                    ("status", Value::from(status)),
                    ("message", Value::from(message)),
                ]),
                failed: status < 0,
                key: None,
                role: Role::Answers,
                kind: None,
            });
        }
        Ok(())
    }
}

fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

impl Decoder for Rrdcached {
    fn name(&self) -> &'static str {
        "rrdcached"
    }

    fn stream(&mut self, dir: usize) -> &mut Stream {
        &mut self.streams[dir]
    }

    /// A whole command line: one of rrdcached's commands, printable
    /// text to its `\n`. (A line inside a `BATCH` looks the same: joined
    /// mid-batch, decoding stops at the batch's `.`.)
    fn resync(&mut self, call: &[u8]) -> Resync {
        let Some(end) = call.iter().position(|&b| b == b'\n') else {
            return Resync::NotHere;
        };
        let line = call[..end].strip_suffix(b"\r").unwrap_or(&call[..end]);
        let printable = line
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
        let known = std::str::from_utf8(line).ok().and_then(command).is_some();
        Resync::here_if(printable && known)
    }

    fn consume(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        while let Some((line, end)) = self.streams[dir].line() {
            let line = String::from_utf8_lossy(line).into_owned();
            if dir == REQUEST {
                self.request(&line, end, found)?;
            } else {
                self.response(&line, end, found)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::decode::tests::resyncs;

    fn feed(decoder: &mut Rrdcached, dir: usize, bytes: &[u8]) -> Vec<Message> {
        crate::conversation::decode::tests::fed(decoder, dir, bytes, bytes.len() as u64)
    }

    #[test]
    fn updates_and_their_answers() {
        let update =
            b"update /var/lib/collectd/rrd/host/load/load.rrd 1796562583.3:3.39:2.16:1.9\n";
        let mut decoder = Rrdcached::detect(update).expect("an rrdcached command");
        let requests = feed(&mut decoder, REQUEST, update);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].text, "update load.rrd");
        assert_eq!(requests[0].end, update.len() as u64);
        assert_eq!(requests[0].fields["command"], "update");
        assert_eq!(requests[0].kind.as_deref(), Some("UPDATE"));
        assert_eq!(
            requests[0].fields["args"][0],
            "/var/lib/collectd/rrd/host/load/load.rrd"
        );
        // The answer in two calls.
        assert!(feed(&mut decoder, RESPONSE, b"0 errors, enq").is_empty());
        let answers = feed(&mut decoder, RESPONSE, b"ueued 1 value(s).\n");
        assert_eq!(answers[0].text, "0 errors, enqueued 1 value(s).");
        assert_eq!(answers[0].fields["status"], 0);
        assert!(!answers[0].failed);
        assert_eq!(answers[0].end, 31);
    }

    #[test]
    fn multi_line_answers_failures_and_batches() {
        let mut decoder = Rrdcached::default();
        feed(&mut decoder, REQUEST, b"STATS\nforget /x.rrd\n");
        let answers = feed(
            &mut decoder,
            RESPONSE,
            b"2 Statistics follow\nQueueLength: 0\nUpdatesReceived: 3\n-1 No such file or directory\n",
        );
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].fields["status"], 2);
        assert!(answers[1].failed);
        let batch = feed(
            &mut decoder,
            REQUEST,
            b"BATCH\nupdate a.rrd N:1\nupdate b.rrd N:2\n.\n",
        );
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].text, "BATCH");
        assert_eq!(batch[1].text, "BATCH of 2 commands .");
        assert_eq!(batch[1].fields["commands"], 2);
        assert_eq!(batch[1].kind.as_deref(), Some("BATCH"));
        let answers = feed(
            &mut decoder,
            RESPONSE,
            b"0 Go ahead.  Send me some updates.\n1 errors\n2 No such file: b.rrd\n",
        );
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[1].fields["status"], 1);
    }

    #[test]
    fn a_command_start_inside_a_stream() {
        resyncs(
            "rrdcached",
            &[
                b"update /x/load.rrd 1796562583:1:2:3\nupdate",
                b"FLUSHALL\r\n",
            ],
            // The rest of a line, a line not whole, not a command, binary.
            &[
                b"load.rrd 1796562583:1:2:3\n",
                b"update /x/load.rrd 17965",
                b"updates x\n",
                b"update \x00\x01\n",
                b"0 errors, enqueued 1 value(s).\n",
                b"",
            ],
        );
    }

    #[test]
    fn what_is_not_rrdcached() {
        assert!(Rrdcached::detect(b"GET / HTTP/1.1\r\n").is_none());
        assert!(Rrdcached::detect(b"*2\r\n$3\r\nGET\r\n").is_none());
        let mut decoder = Rrdcached::default();
        let mut found = Vec::new();
        assert!(
            decoder
                .feed(REQUEST, b"HELLO there\n", 12, &mut found)
                .is_err()
        );
        assert!(decoder.feed(RESPONSE, b"OK\n", 3, &mut found).is_err());
    }
}
