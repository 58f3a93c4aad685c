//! The pcapng container: building and parsing blocks, nothing about events.
//!
//! Recordings are pcapng so that tshark and Wireshark open them as they are.
//! Only the blocks sockspy writes are built here (Section Header, Interface
//! Description, Enhanced Packet); the parser reads those and steps over any
//! other block, in either byte order. The parser checks every length before
//! it trusts it and reports where a file stops making sense, so a damaged
//! file is an error with an offset, never a panic.
//! Format: <https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-03.html>.

use std::io::{self, Read};

/// Block types.
const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 0x0000_0001;
const EPB: u32 = 0x0000_0006;
/// Written in native order; a reader learns the order from it.
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

/// `opt_endofopt`.
const OPT_END: u16 = 0;
/// `opt_comment`: UTF-8 text, valid on every block.
pub const OPT_COMMENT: u16 = 1;
/// `shb_userappl`.
pub const SHB_USERAPPL: u16 = 4;
/// `if_name`.
pub const IF_NAME: u16 = 2;
/// `if_tsresol`.
const IF_TSRESOL: u16 = 9;

/// The largest block the parser accepts; sockspy's blocks are far smaller,
/// so a larger length means damage, not a big packet.
const MAX_BLOCK: usize = 1 << 20;

/// Appends an option (code, length, value padded to 4 bytes).
fn put_option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_ne_bytes());
    out.extend_from_slice(&(value.len() as u16).to_ne_bytes());
    out.extend_from_slice(value);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Frames `body` (options included) as a block of `kind`.
fn block(out: &mut Vec<u8>, kind: u32, body: &[u8], options: &[(u16, &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(body);
    pad(out);
    if !options.is_empty() {
        for (code, value) in options {
            put_option(out, *code, value);
        }
        put_option(out, OPT_END, &[]);
    }
    let total = (out.len() - start + 4) as u32;
    out[start + 4..start + 8].copy_from_slice(&total.to_ne_bytes());
    out.extend_from_slice(&total.to_ne_bytes());
}

/// Appends a Section Header Block.
pub fn section_header(out: &mut Vec<u8>, options: &[(u16, &[u8])]) {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_ne_bytes());
    body.extend_from_slice(&1u16.to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes());
    // Section length unknown: the file is written as it goes.
    body.extend_from_slice(&(-1i64).to_ne_bytes());
    block(out, SHB, &body, options);
}

/// Appends an Interface Description Block with nanosecond timestamps.
pub fn interface(out: &mut Vec<u8>, link_type: u16, name: &str) {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&link_type.to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes());
    // Snap length 0: no limit declared (sockspy's own cap is per event).
    body.extend_from_slice(&0u32.to_ne_bytes());
    block(
        out,
        IDB,
        &body,
        &[(IF_NAME, name.as_bytes()), (IF_TSRESOL, &[9])],
    );
}

/// An Enhanced Packet Block's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub interface: u32,
    /// Nanoseconds since the Unix epoch (every interface sockspy writes says so).
    pub ts_ns: u64,
    pub data: &'a [u8],
    /// How long the packet was before capture cut it.
    pub orig_len: u32,
    /// `opt_comment`, if any.
    pub comment: Option<&'a str>,
}

/// Appends an Enhanced Packet Block.
pub fn packet(out: &mut Vec<u8>, packet: &Packet<'_>) {
    let mut body = Vec::with_capacity(20 + packet.data.len());
    body.extend_from_slice(&packet.interface.to_ne_bytes());
    body.extend_from_slice(&((packet.ts_ns >> 32) as u32).to_ne_bytes());
    body.extend_from_slice(&(packet.ts_ns as u32).to_ne_bytes());
    body.extend_from_slice(&(packet.data.len() as u32).to_ne_bytes());
    body.extend_from_slice(&packet.orig_len.max(packet.data.len() as u32).to_ne_bytes());
    body.extend_from_slice(packet.data);
    let comment = packet.comment.map(|c| (OPT_COMMENT, c.as_bytes()));
    block(out, EPB, &body, comment.as_slice());
}

/// Where and why a file stops being pcapng.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: {what}")]
pub struct ParseError {
    /// Byte offset of the block that is damaged.
    pub offset: u64,
    pub what: String,
    /// The file ends inside this block (a capture cut short), as opposed to
    /// bytes that are wrong.
    pub torn: bool,
}

/// A block, parsed as far as sockspy needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Block {
    Section {
        options: Vec<(u16, Vec<u8>)>,
    },
    Interface {
        link_type: u16,
        options: Vec<(u16, Vec<u8>)>,
    },
    Packet(ReadPacket),
    /// A block type sockspy does not write.
    Other(u32),
}

/// An Enhanced Packet Block as read.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadPacket {
    pub interface: u32,
    pub ts_ns: u64,
    pub data: Vec<u8>,
    pub orig_len: u32,
    pub comment: Option<String>,
}

/// Reads the blocks of a pcapng stream one at a time, so a recording of any
/// size (or one still being written into a pipe) needs one block of memory.
pub struct BlockReader<R> {
    input: R,
    offset: u64,
    big_endian: bool,
    started: bool,
    failed: bool,
    buf: Vec<u8>,
}

/// Reads until `buf` is full or the input ends; how many bytes came.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(got)
}

impl<R: Read> BlockReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            offset: 0,
            big_endian: cfg!(target_endian = "big"),
            started: false,
            failed: false,
            buf: Vec::new(),
        }
    }

    /// Byte offset of the next block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn u16_at(&self, bytes: &[u8], at: usize) -> u16 {
        let raw = [bytes[at], bytes[at + 1]];
        if self.big_endian {
            u16::from_be_bytes(raw)
        } else {
            u16::from_le_bytes(raw)
        }
    }

    fn u32_at(&self, bytes: &[u8], at: usize) -> u32 {
        let raw = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if self.big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        }
    }

    fn fail(&mut self, what: impl Into<String>, torn: bool) -> Option<Result<Block, ParseError>> {
        self.failed = true;
        Some(Err(ParseError {
            offset: self.offset,
            what: what.into(),
            torn,
        }))
    }

    /// Options from `bytes` (which starts at the first option).
    fn options(&self, bytes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, String> {
        let mut options = Vec::new();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let code = self.u16_at(bytes, at);
            let len = usize::from(self.u16_at(bytes, at + 2));
            if code == OPT_END {
                return Ok(options);
            }
            let end = at + 4 + len;
            if end > bytes.len() {
                return Err(format!("option {code} runs past the end of its block"));
            }
            options.push((code, bytes[at + 4..end].to_vec()));
            at = end.next_multiple_of(4);
        }
        Ok(options)
    }

    /// Parses a whole block's body (between the lengths).
    fn parse(&self, kind: u32, body: &[u8]) -> Result<Block, String> {
        match kind {
            SHB => {
                if body.len() < 16 {
                    return Err("section header too short".into());
                }
                self.options(&body[16..])
                    .map(|options| Block::Section { options })
            }
            IDB => {
                if body.len() < 8 {
                    return Err("interface description too short".into());
                }
                let link_type = self.u16_at(body, 0);
                self.options(&body[8..])
                    .map(|options| Block::Interface { link_type, options })
            }
            EPB => {
                if body.len() < 20 {
                    return Err("packet block too short".into());
                }
                let interface = self.u32_at(body, 0);
                let ts_ns =
                    (u64::from(self.u32_at(body, 4)) << 32) | u64::from(self.u32_at(body, 8));
                let captured = self.u32_at(body, 12) as usize;
                let orig_len = self.u32_at(body, 16);
                let data_end = 20usize.saturating_add(captured);
                if data_end > body.len() {
                    return Err("packet data runs past the end of its block".into());
                }
                let options_at = data_end.next_multiple_of(4).min(body.len());
                let options = self.options(&body[options_at..])?;
                let comment = match options.into_iter().find(|(code, _)| *code == OPT_COMMENT) {
                    Some((_, text)) => {
                        Some(String::from_utf8(text).map_err(|_| "packet comment is not UTF-8")?)
                    }
                    None => None,
                };
                Ok(Block::Packet(ReadPacket {
                    interface,
                    ts_ns,
                    data: body[20..data_end].to_vec(),
                    orig_len,
                    comment,
                }))
            }
            other => Ok(Block::Other(other)),
        }
    }
}

impl<R: Read> Iterator for BlockReader<R> {
    type Item = Result<Block, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut head = [0u8; 12];
        let got = match read_full(&mut self.input, &mut head) {
            Ok(got) => got,
            Err(err) => return self.fail(format!("read error: {err}"), false),
        };
        if got == 0 {
            if !self.started {
                return self.fail("empty file, not a pcapng recording", false);
            }
            return None;
        }
        if got < 12 {
            if !self.started {
                return self.fail("too short for a pcapng file", true);
            }
            return self.fail("the file ends inside a block header", true);
        }
        let kind = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if kind == SHB {
            // The byte order magic says how to read this section.
            self.big_endian = match u32::from_le_bytes([head[8], head[9], head[10], head[11]]) {
                BYTE_ORDER_MAGIC => false,
                m if m.swap_bytes() == BYTE_ORDER_MAGIC => true,
                _ => return self.fail("section header with a bad byte-order magic", false),
            };
        } else if !self.started {
            return self.fail("not a pcapng file (no section header at the start)", false);
        }
        self.started = true;
        let kind = self.u32_at(&head, 0);
        let len = self.u32_at(&head, 4) as usize;
        if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK {
            return self.fail(format!("block length {len} is not valid"), false);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(len, 0);
        let got = match read_full(&mut self.input, &mut buf[12..]) {
            Ok(got) => got,
            Err(err) => return self.fail(format!("read error: {err}"), false),
        };
        let result = if got < len - 12 {
            Err((
                format!(
                    "the file ends inside a block ({} of {len} bytes present)",
                    12 + got
                ),
                true,
            ))
        } else if self.u32_at(&buf, len - 4) as usize != len {
            Err((
                "block lengths at its start and end differ".to_owned(),
                false,
            ))
        } else {
            self.parse(kind, &buf[8..len - 4])
                .map_err(|what| (what, false))
        };
        self.buf = buf;
        match result {
            Ok(block) => {
                self.offset += len as u64;
                Some(Ok(block))
            }
            Err((what, torn)) => self.fail(what, torn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        section_header(&mut out, &[(SHB_USERAPPL, b"sockspy test")]);
        interface(&mut out, 147, "unix");
        packet(
            &mut out,
            &Packet {
                interface: 0,
                ts_ns: 1_700_000_000_123_456_789,
                data: b"hello",
                orig_len: 9,
                comment: Some("{\"event\":\"send\"}"),
            },
        );
        packet(
            &mut out,
            &Packet {
                interface: 0,
                ts_ns: 5,
                data: b"",
                orig_len: 0,
                comment: None,
            },
        );
        out
    }

    #[test]
    fn blocks_round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let blocks: Vec<Block> = BlockReader::new(&bytes[..]).map(Result::unwrap).collect();
        assert_eq!(blocks.len(), 4);
        assert_eq!(
            blocks[0],
            Block::Section {
                options: vec![(SHB_USERAPPL, b"sockspy test".to_vec())]
            }
        );
        let Block::Interface { link_type, options } = &blocks[1] else {
            panic!("{:?}", blocks[1])
        };
        assert_eq!(*link_type, 147);
        assert!(options.contains(&(IF_NAME, b"unix".to_vec())));
        let Block::Packet(first) = &blocks[2] else {
            panic!("{:?}", blocks[2])
        };
        assert_eq!(first.data, b"hello");
        assert_eq!(first.ts_ns, 1_700_000_000_123_456_789);
        assert_eq!(first.orig_len, 9);
        assert_eq!(first.comment.as_deref(), Some("{\"event\":\"send\"}"));
        let Block::Packet(second) = &blocks[3] else {
            panic!("{:?}", blocks[3])
        };
        assert_eq!(second.comment, None);
        assert!(second.data.is_empty());
    }

    #[test]
    fn every_prefix_is_complete_blocks_then_a_torn_one() {
        let bytes = sample();
        for len in 1..bytes.len() {
            let mut parser = BlockReader::new(&bytes[..len]);
            let results: Vec<_> = parser.by_ref().collect();
            let last = results.last().unwrap();
            if let Err(err) = last {
                assert!(err.torn || len < 12, "prefix {len}: {err}");
                assert!(err.offset <= len as u64);
            }
            assert!(results[..results.len() - 1].iter().all(Result::is_ok));
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert!(BlockReader::new(&b""[..]).next().unwrap().is_err());
        // A classic pcap file header.
        let pcap = [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let err = BlockReader::new(&pcap[..]).next().unwrap().unwrap_err();
        assert!(err.what.contains("not a pcapng"), "{err}");
        // Pseudo-random bytes, and every single-byte corruption of a good file.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut noise = vec![0u8; 4096];
        for byte in &mut noise {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        assert!(BlockReader::new(&noise[..]).count() >= 1);
        let good = sample();
        for at in 0..good.len() {
            for value in [0u8, 0xff, 0x7f, good[at].wrapping_add(1)] {
                let mut bad = good.clone();
                bad[at] = value;
                let mut prefixed = good[..28].to_vec();
                prefixed.extend_from_slice(&noise[..at % 64]);
                for input in [&bad, &prefixed] {
                    for block in BlockReader::new(&input[..]) {
                        let _ = block;
                    }
                }
            }
        }
    }

    #[test]
    fn reads_the_other_byte_order() {
        // A big-endian SHB followed by an empty big-endian IDB.
        let mut be = Vec::new();
        be.extend_from_slice(&SHB.to_be_bytes());
        be.extend_from_slice(&28u32.to_be_bytes());
        be.extend_from_slice(&BYTE_ORDER_MAGIC.to_be_bytes());
        be.extend_from_slice(&1u16.to_be_bytes());
        be.extend_from_slice(&0u16.to_be_bytes());
        be.extend_from_slice(&(-1i64).to_be_bytes());
        be.extend_from_slice(&28u32.to_be_bytes());
        be.extend_from_slice(&IDB.to_be_bytes());
        be.extend_from_slice(&20u32.to_be_bytes());
        be.extend_from_slice(&147u16.to_be_bytes());
        be.extend_from_slice(&0u16.to_be_bytes());
        be.extend_from_slice(&0u32.to_be_bytes());
        be.extend_from_slice(&20u32.to_be_bytes());
        let blocks: Vec<_> = BlockReader::new(&be[..]).map(Result::unwrap).collect();
        assert_eq!(
            blocks[1],
            Block::Interface {
                link_type: 147,
                options: vec![]
            }
        );
    }
}
