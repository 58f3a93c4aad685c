//! Fuzzes the protocol decoders: any bytes, cut into calls of any sizes,
//! each with any number of bytes beyond those captured, either way, fed
//! to every decoder by name (so a decoder added to `PROTOCOLS` is fuzzed
//! too), directly and as a connection's decoding (detection, or a
//! connection joined mid-stream looking for a request's start) with its
//! turns. None may panic, loop or keep more than `MAX_BUFFERED` bytes of
//! a direction.
//!
//! The input: one byte choosing the protocol (past the last, detection
//! chooses), whether the calls are datagrams and whether the connection
//! was joined mid-stream; then calls, each a byte (bit 0 the direction,
//! bit 1 a tail not captured follows), the captured length (two bytes,
//! at most what `--decode` captures), the tail's length (four bytes,
//! when there is one) and the captured bytes.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "../../sockspy/src/conversation"]
mod conversation {
    #[expect(dead_code, reason = "what only sockspy uses")]
    pub mod decode;
    #[expect(dead_code, reason = "what only sockspy uses")]
    pub mod turns;
}

/// `--decode-as` rules match paths with the filter's glob; no rule is
/// fuzzed here, so this stands in for it.
mod filter {
    pub fn glob(_pattern: &str, _text: &str) -> bool {
        false
    }
}

use conversation::{
    decode::{self, Decoder, Decoding, Message, Opening, PROTOCOLS, Piece, stream::MAX_BUFFERED},
    turns::Turns,
};

/// What `--decode` captures of a call.
const CAPTURED: usize = 1024;

/// One call: its direction, captured bytes, and length.
struct Call<'a> {
    dir: usize,
    data: &'a [u8],
    len: u64,
}

fn calls(mut input: &[u8]) -> Vec<Call<'_>> {
    let mut calls = Vec::new();
    let take = |input: &mut &[u8], n: usize| -> Option<u64> {
        let bytes = input.get(..n)?;
        *input = &input[n..];
        Some(bytes.iter().rev().fold(0, |n, &b| n << 8 | u64::from(b)))
    };
    while let Some(head) = take(&mut input, 1) {
        let Some(captured) = take(&mut input, 2) else {
            break;
        };
        let tail = if head & 2 != 0 {
            take(&mut input, 4).unwrap_or_default()
        } else {
            0
        };
        let captured = (captured as usize).min(CAPTURED).min(input.len());
        let (data, rest) = input.split_at(captured);
        input = rest;
        if data.is_empty() && tail == 0 {
            // A call moves at least a byte.
            continue;
        }
        calls.push(Call {
            dir: (head & 1) as usize,
            data,
            len: data.len() as u64 + tail,
        });
    }
    calls
}

fn within_bounds(decoder: &mut dyn Decoder) {
    for dir in 0..2 {
        let buffered = decoder.stream(dir).buffered();
        assert!(buffered <= MAX_BUFFERED, "{buffered} bytes buffered");
    }
}

/// Feeds `calls` to `decoder` until it stops matching.
fn fed_directly(decoder: &mut dyn Decoder, calls: &[Call<'_>]) {
    let mut found = Vec::new();
    for call in calls {
        let result = decoder.feed(call.dir, call.data, call.len, &mut found);
        within_bounds(decoder);
        if result.is_err() {
            return;
        }
        found.clear();
    }
}

/// Feeds `calls` as the tracker does: each call's sender's bytes to the
/// connection's decoding, then its turns.
fn fed_as_a_connection(opening: Opening, calls: &[Call<'_>]) {
    let mut decoding = Decoding::default();
    let mut turns = Turns::new(opening.datagram);
    let mut found: Vec<Message> = Vec::new();
    for call in calls {
        let piece = Piece {
            dir: call.dir,
            offset: turns.offset(call.dir, false),
            data: call.data,
            len: call.len,
        };
        match decoding.feed(opening, piece, &mut found) {
            decode::Change::Started(from) => turns.by_message(from),
            decode::Change::Stopped => turns.by_direction(),
            decode::Change::None => {}
        }
        if let Decoding::Active { decoder, .. } = &mut decoding {
            within_bounds(decoder.as_mut());
        }
        for message in found.drain(..) {
            turns.end_message(message.dir, message.end, message);
        }
        turns.data(
            call.dir,
            false,
            call.len,
            0,
            &Bytes::copy_from_slice(call.data),
        );
        while turns.next_finished().is_some() {}
    }
    let _ = decoding.take_reason();
    let _ = decoding.take_resynced();
    turns.drain().for_each(drop);
}

fuzz_target!(|input: &[u8]| {
    let Some((&choice, rest)) = input.split_first() else {
        return;
    };
    let datagram = choice & 0x40 != 0;
    let joined = choice & 0x80 != 0;
    let calls = calls(rest);
    for call in &calls {
        let _ = decode::detect(call.data, datagram);
    }
    let chosen = PROTOCOLS.get(usize::from(choice & 0x3f) % (PROTOCOLS.len() + 1));
    if let Some(name) = chosen {
        let new = || decode::by_name(name, datagram).expect("a protocol it names");
        for call in &calls {
            let _ = new().resync(call.data);
        }
        fed_directly(new().as_mut(), &calls);
    }
    let opening = Opening {
        forced: chosen.map(|name| Some(*name)),
        datagram,
        joined,
    };
    fed_as_a_connection(opening, &calls);
});
