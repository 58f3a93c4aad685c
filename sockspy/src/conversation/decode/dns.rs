//! DNS over UDP (one message per datagram) and TCP (each message after
//! its two-byte length): a query's id, name and type; a response's
//! rcode and answer count. Responses are matched to queries by id, so a
//! resolver's A and AAAA queries answered in either order pair right.

use serde_json::{Map, Value};

use super::{Decoder, Message, Mismatch, Resync, Role, stream::Stream};
use crate::conversation::turns::REQUEST;

/// The header's size.
const HEADER: usize = 12;

#[derive(Debug, Default)]
pub struct Dns {
    /// Datagrams: each call is one message.
    datagram: bool,
    /// Each direction's offset (datagrams).
    offsets: [u64; 2],
    /// Each direction's bytes (TCP).
    streams: [Stream; 2],
    /// TCP: the length of the message being read, once its prefix was.
    lengths: [Option<u64>; 2],
}

/// A DNS header and question, parsed.
struct Parsed {
    id: u16,
    response: bool,
    rcode: u8,
    answers: u16,
    name: String,
    qtype: u16,
    /// One past the question (its type and class).
    question_end: usize,
}

fn parse(bytes: &[u8]) -> Option<Parsed> {
    if bytes.len() < HEADER {
        return None;
    }
    let word = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let flags = word(2);
    let opcode = (flags >> 11) & 0xf;
    let questions = word(4);
    if opcode > 5 || questions != 1 {
        return None;
    }
    let mut at = HEADER;
    let mut labels = Vec::new();
    loop {
        let len = *bytes.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        // Compression has no place in a message's first name.
        if len > 63 || labels.len() > 127 {
            return None;
        }
        let label = bytes.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += len;
    }
    let qtype = u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]);
    Some(Parsed {
        id: word(0),
        response: flags & 0x8000 != 0,
        rcode: (flags & 0xf) as u8,
        answers: word(6),
        name: if labels.is_empty() {
            ".".to_owned()
        } else {
            labels.join(".")
        },
        qtype,
        question_end: at + 4,
    })
}

fn type_name(qtype: u16) -> String {
    match qtype {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        other => format!("TYPE{other}"),
    }
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE{other}"),
    }
}

impl Dns {
    pub fn new(datagram: bool) -> Self {
        Self {
            datagram,
            ..Self::default()
        }
    }

    /// A client whose first message is a DNS query.
    pub fn detect(first: &[u8], datagram: bool) -> Option<Self> {
        let message = if datagram { first } else { first.get(2..)? };
        let parsed = parse(message)?;
        (!parsed.response).then(|| Self::new(datagram))
    }

    fn message(dir: usize, end: u64, bytes: &[u8]) -> Result<Message, Mismatch> {
        let parsed = parse(bytes).ok_or_else(|| Mismatch("not a DNS message".to_owned()))?;
        if parsed.response == (dir == REQUEST) {
            return Err(Mismatch("a DNS message the wrong way".to_owned()));
        }
        let qtype = type_name(parsed.qtype);
        let mut fields = Map::new();
        fields.insert("id".into(), parsed.id.into());
        fields.insert("name".into(), parsed.name.clone().into());
        fields.insert("qtype".into(), qtype.clone().into());
        let text = if parsed.response {
            let rcode = rcode_name(parsed.rcode);
            fields.insert("rcode".into(), rcode.clone().into());
            fields.insert("answers".into(), Value::from(parsed.answers));
            format!("{rcode} {} answers", parsed.answers)
        } else {
            format!("{qtype} {}", parsed.name)
        };
        Ok(Message {
            dir,
            end,
            text,
            fields,
            failed: parsed.response && parsed.rcode != 0,
            key: Some(u64::from(parsed.id)),
            role: Role::usual(dir),
            kind: (!parsed.response).then(|| super::kind(&qtype)),
        })
    }
}

impl Decoder for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn stream(&mut self, dir: usize) -> &mut Stream {
        &mut self.streams[dir]
    }

    /// TCP: each message after its two-byte length.
    fn consume(&mut self, dir: usize, found: &mut Vec<Message>) -> Result<(), Mismatch> {
        loop {
            let stream = &mut self.streams[dir];
            match self.lengths[dir] {
                None => {
                    let Some((prefix, _)) = stream.take(2) else {
                        return Ok(());
                    };
                    self.lengths[dir] = Some(u64::from(u16::from_be_bytes([prefix[0], prefix[1]])));
                }
                Some(length) => {
                    // The header and question are enough; the rest is passed over.
                    let wanted = (length as usize).min(512);
                    if stream.buffered() < wanted {
                        return Ok(());
                    }
                    let start = stream.pos();
                    let (bytes, _) = stream.take(wanted).expect("buffered");
                    let decoded = Self::message(dir, start + length, bytes)?;
                    stream.skip(length - wanted as u64);
                    self.lengths[dir] = None;
                    found.push(decoded);
                }
            }
        }
    }

    /// A query whose header and question are whole in the call, asking
    /// nothing odd (a standard query, no answers); over TCP, after a
    /// length prefix that holds them.
    fn resync(&mut self, call: &[u8]) -> Resync {
        let (message, length) = if self.datagram {
            (call, call.len())
        } else {
            let Some(prefix) = call.get(..2) else {
                return Resync::NotHere;
            };
            (
                &call[2..],
                usize::from(u16::from_be_bytes([prefix[0], prefix[1]])),
            )
        };
        let opcode = |bytes: &[u8]| (bytes[2] >> 3) & 0xf;
        match parse(message) {
            Some(parsed)
                if !parsed.response
                    && parsed.rcode == 0
                    && parsed.answers == 0
                    && opcode(message) == 0
                    && parsed.question_end <= length.min(message.len()) =>
            {
                Resync::Here
            }
            _ => Resync::NotHere,
        }
    }

    /// UDP: each call is one message; TCP: a stream.
    fn feed(
        &mut self,
        dir: usize,
        data: &[u8],
        len: u64,
        found: &mut Vec<Message>,
    ) -> Result<(), Mismatch> {
        if !self.datagram {
            return super::feed_stream(self, dir, data, len, found);
        }
        self.offsets[dir] += len;
        found.push(Self::message(dir, self.offsets[dir], data)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::turns::RESPONSE;

    /// A query (or, with `rcode`, a response) for `name`.
    fn message(id: u16, rcode: Option<u8>, name: &str, qtype: u16) -> Vec<u8> {
        let flags: u16 = match rcode {
            Some(rcode) => 0x8180 | u16::from(rcode),
            None => 0x0100,
        };
        let mut bytes = Vec::new();
        for word in [id, flags, 1, u16::from(rcode == Some(0)), 0, 0] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        for label in name.split('.') {
            bytes.push(label.len() as u8);
            bytes.extend_from_slice(label.as_bytes());
        }
        bytes.push(0);
        bytes.extend_from_slice(&qtype.to_be_bytes());
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes
    }

    #[test]
    fn queries_and_answers_over_udp_and_tcp() {
        let query = message(0x1234, None, "example.com", 28);
        let mut udp = Dns::detect(&query, true).unwrap();
        let mut found = Vec::new();
        udp.feed(REQUEST, &query, query.len() as u64, &mut found)
            .unwrap();
        let nx = message(0x1234, Some(3), "example.com", 28);
        udp.feed(RESPONSE, &nx, nx.len() as u64, &mut found)
            .unwrap();
        assert_eq!(found[0].text, "AAAA example.com");
        assert_eq!(found[0].key, Some(0x1234));
        assert_eq!(
            (found[0].kind.as_deref(), found[1].kind.as_deref()),
            (Some("AAAA"), None)
        );
        assert_eq!(found[1].text, "NXDOMAIN 0 answers");
        assert!(found[1].failed);
        assert_eq!(found[1].end, nx.len() as u64);

        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        let mut tcp = Dns::detect(&framed, false).unwrap();
        let mut found = Vec::new();
        tcp.feed(REQUEST, &framed[..5], 5, &mut found).unwrap();
        assert!(found.is_empty());
        tcp.feed(REQUEST, &framed[5..], framed.len() as u64 - 5, &mut found)
            .unwrap();
        assert_eq!(found[0].end, framed.len() as u64);
        assert_eq!(found[0].fields["name"], "example.com");
    }

    #[test]
    fn a_query_start_inside_a_stream() {
        let query = message(9, None, "example.com", 1);
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        let tcp = || Dns::new(false);
        assert_eq!(tcp().resync(&framed), Resync::Here);
        // A prefix too short for the question, the question cut, a
        // response, a message without its prefix.
        let mut short = framed.clone();
        short[1] = 12;
        assert_eq!(tcp().resync(&short), Resync::NotHere);
        assert_eq!(tcp().resync(&framed[..framed.len() - 3]), Resync::NotHere);
        let answer = message(9, Some(0), "example.com", 1);
        let mut framed_answer = (answer.len() as u16).to_be_bytes().to_vec();
        framed_answer.extend_from_slice(&answer);
        assert_eq!(tcp().resync(&framed_answer), Resync::NotHere);
        assert_eq!(tcp().resync(&query), Resync::NotHere);
        assert_eq!(Dns::new(true).resync(&query), Resync::Here);
    }

    #[test]
    fn what_is_not_dns() {
        assert!(Dns::detect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true).is_none());
        let answer = message(7, Some(0), "a.b", 1);
        assert!(Dns::detect(&answer, true).is_none(), "a response first");
    }
}
