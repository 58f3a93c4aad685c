//! Turns: where one side's request ends and the other side's response
//! begins, from the calls of both ends of one connection.
//!
//! The one place that decides exchange boundaries (a protocol decoder
//! refines them by calling [`Turns::boundary`]).
//!
//! Each direction is a stream of bytes. A send of n bytes covers the next
//! n bytes its direction has seen sent, a read the next n bytes it has
//! seen read; so a read belongs to the turn whose bytes it takes, whatever
//! order the records of two CPUs arrived in. A turn is a byte range of one
//! direction, open at its end until the other direction starts a turn of
//! its own. When the records show bytes read that no send has shown yet
//! (the sender's record is late), the read opens the turn the send will
//! join.
//!
//! Pipelining: several requests sent before the first response are one
//! request turn (`request_messages` counts their sends), and everything
//! the server sends until the client sends again is one response turn.
//! Datagrams are different: every datagram the client sends starts an
//! exchange of its own, and the replies until the next one are its
//! response.

use std::collections::VecDeque;

use bytes::Bytes;

use super::decode::Message;

/// Bytes from the client to the server.
pub const REQUEST: usize = 0;
/// Bytes from the server to the client.
pub const RESPONSE: usize = 1;

/// Exchanges kept open on one connection: past this, the oldest is handed
/// on as it stands (its reader never read all of it).
const OPEN_KEPT: usize = 8;

/// One turn: the bytes one side sent before the other answered, and when
/// each end touched them (`CLOCK_MONOTONIC` or wall-clock nanoseconds,
/// whichever the events carry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Byte range in its direction: `[start, end)`, open while the turn lasts.
    start: u64,
    end: Option<u64>,
    /// The turn has begun (a response that never came has not).
    begun: bool,
    pub sent_bytes: u64,
    pub sent_messages: u64,
    pub read_bytes: u64,
    pub read_messages: u64,
    pub first_send: Option<u64>,
    pub first_read: Option<u64>,
    pub last_read: Option<u64>,
    /// The first bytes captured of the turn: from its first send, or from
    /// its first read when no send of it was seen.
    pub data: Option<Bytes>,
    data_from_send: bool,
    /// What a decoder made of the turn's message (boxed: most turns have
    /// none, and a connection keeps a few turns).
    pub message: Option<Box<Message>>,
}

impl Span {
    fn contains(&self, offset: u64) -> bool {
        self.begun && offset >= self.start && self.end.is_none_or(|end| offset < end)
    }

    /// Bytes of the turn: as sent, or as read when the sender is not seen.
    pub fn bytes(&self) -> u64 {
        self.sent_bytes.max(self.read_bytes)
    }

    /// Messages (calls) of the turn: sends, or reads when no send was seen.
    pub fn messages(&self) -> u64 {
        if self.sent_messages > 0 {
            self.sent_messages
        } else {
            self.read_messages
        }
    }

    fn begin(&mut self, start: u64) {
        self.start = start;
        self.begun = true;
    }

    fn close(&mut self, at: u64) {
        if self.end.is_none() {
            if !self.begun {
                self.begin(at);
            }
            self.end = Some(at.max(self.start));
        }
    }

    fn note(&mut self, read: bool, len: u64, ts: u64, data: &Bytes) {
        let first = |slot: &mut Option<u64>| *slot = Some(slot.map_or(ts, |t| t.min(ts)));
        if read {
            self.read_bytes += len;
            self.read_messages += 1;
            first(&mut self.first_read);
            self.last_read = Some(self.last_read.map_or(ts, |t| t.max(ts)));
        } else {
            self.sent_bytes += len;
            self.sent_messages += 1;
            first(&mut self.first_send);
        }
        let better = !read && !self.data_from_send;
        if !data.is_empty() && (self.data.is_none() || better) {
            self.data = Some(data.clone());
            self.data_from_send = !read;
        }
    }
}

/// One request and its response, as their turns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    pub request: Span,
    pub response: Span,
}

impl Turn {
    fn get(&self, dir: usize) -> &Span {
        if dir == REQUEST {
            &self.request
        } else {
            &self.response
        }
    }

    fn span(&mut self, dir: usize) -> &mut Span {
        if dir == REQUEST {
            &mut self.request
        } else {
            &mut self.response
        }
    }
}

/// The turns of one connection.
#[derive(Debug, Default)]
pub struct Turns {
    /// Bytes seen sent and read, per direction.
    sent: [u64; 2],
    read: [u64; 2],
    /// Whether any send ([0]) or read ([1]) of each direction was seen:
    /// only the ends whose records were are waited for before a turn is
    /// handed on.
    seen: [[bool; 2]; 2],
    /// Every datagram of the client starts a turn.
    datagram: bool,
    /// Decoded: the message ends of each direction not applied yet (a
    /// turn ends at each); `None` for plain turns, by direction.
    bounds: Option<[VecDeque<(u64, Message)>; 2]>,
    /// Where the last closed turn of each direction ended: the next one
    /// starts there.
    ends: [Option<u64>; 2],
    open: VecDeque<Turn>,
    /// Turns handed on so far.
    pub finished: u64,
}

impl Turns {
    pub fn new(datagram: bool) -> Self {
        Self {
            datagram,
            // Most connections have one or two turns open; a deque's first
            // allocation would otherwise be four (over a kilobyte).
            open: VecDeque::with_capacity(2),
            ..Self::default()
        }
    }

    /// Bytes moved each way so far, as [`Span::bytes`] counts them.
    pub fn bytes(&self, dir: usize) -> u64 {
        self.sent[dir].max(self.read[dir])
    }

    /// Notes `len` bytes sent (or `read`) in direction `dir` at `ts`; a
    /// call whose bytes cross the end of a turn (a read that took the
    /// end of one response and the start of the next) counts in each.
    pub fn data(&mut self, dir: usize, read: bool, len: u64, ts: u64, data: &Bytes) {
        self.seen[dir][usize::from(read)] = true;
        let mut offset = self.counter(dir, read);
        let mut left = len;
        let mut captured = data.clone();
        // Every datagram of the client is a turn of its own.
        let mut new_datagram = self.datagram && dir == REQUEST && !read && self.bounds.is_none();
        loop {
            self.apply_bounds(dir);
            let found = if new_datagram {
                None
            } else {
                self.open
                    .iter()
                    .rposition(|turn| turn.get(dir).contains(offset))
            };
            let index = match found {
                Some(index) => Some(index),
                // Older than every turn still open: its turn was handed on.
                None if self.open.front().is_some_and(|turn| {
                    let span = turn.get(dir);
                    span.begun && offset < span.start
                }) =>
                {
                    None
                }
                None => {
                    new_datagram = false;
                    let index = self.open_span(dir, offset);
                    self.apply_bounds(dir);
                    let span = self.open[index].get(dir);
                    if span.contains(offset) {
                        Some(index)
                    } else if span.begun && span.start > offset {
                        // Bytes before every turn there is (their record
                        // came after their turn was handed on): counted,
                        // belonging to none.
                        let take = left.min(span.start - offset);
                        *self.counter_mut(dir, read) += take;
                        offset += take;
                        left -= take;
                        let _ = captured.split_to((take as usize).min(captured.len()));
                        if left == 0 {
                            return;
                        }
                        continue;
                    } else {
                        // A message ended before these bytes: the next one.
                        continue;
                    }
                }
            };
            let end = index.and_then(|index| self.open[index].get(dir).end);
            let take = end.map_or(left, |end| left.min(end - offset));
            *self.counter_mut(dir, read) += take;
            if let Some(index) = index {
                let piece = captured.split_to((take as usize).min(captured.len()));
                self.open[index].span(dir).note(read, take, ts, &piece);
            }
            offset += take;
            left -= take;
            if left == 0 {
                return;
            }
        }
    }

    /// Where the next send (or `read`) of direction `dir` starts in its stream.
    pub fn offset(&self, dir: usize, read: bool) -> u64 {
        self.counter(dir, read)
    }

    fn counter(&self, dir: usize, read: bool) -> u64 {
        if read { self.read[dir] } else { self.sent[dir] }
    }

    fn counter_mut(&mut self, dir: usize, read: bool) -> &mut u64 {
        if read {
            &mut self.read[dir]
        } else {
            &mut self.sent[dir]
        }
    }

    /// Begins the turn in direction `dir` that bytes at `offset` start:
    /// at a direction change (plain turns), or after the last message
    /// of that direction (decoded).
    fn open_span(&mut self, dir: usize, offset: u64) -> usize {
        if self.bounds.is_none() {
            self.boundary(dir);
            return self.open.len() - 1;
        }
        let start = self.ends[dir].unwrap_or(offset);
        // A response that names its request (a DNS id) answers that one;
        // the others answer the oldest request not answered.
        let key = self
            .bounds
            .as_ref()
            .and_then(|bounds| bounds[dir].front())
            .and_then(|(_, message)| message.key)
            .filter(|_| dir == RESPONSE);
        let keyed = key.and_then(|key| {
            self.open.iter().position(|turn| {
                !turn.response.begun
                    && turn.request.message.as_ref().and_then(|m| m.key) == Some(key)
            })
        });
        if let Some(index) =
            keyed.or_else(|| self.open.iter().position(|turn| !turn.get(dir).begun))
        {
            self.open[index].span(dir).begin(start);
            return index;
        }
        let mut turn = Turn::default();
        if dir == RESPONSE {
            // A message that answers nothing sent (a greeting).
            let at = self.edge(REQUEST);
            turn.request.begin(self.ends[REQUEST].unwrap_or(at));
            turn.request.close(self.ends[REQUEST].unwrap_or(at));
        }
        turn.span(dir).begin(start);
        self.open.push_back(turn);
        self.open.len() - 1
    }

    /// Decoded messages follow from offsets `from` (request, response)
    /// on: turns end where messages do, not where the direction changes.
    /// The plain turns still open end there (decoding picked up a
    /// connection joined mid-stream at a request: what came before is
    /// not its).
    pub fn by_message(&mut self, from: [u64; 2]) {
        if self.bounds.is_some() {
            return;
        }
        self.bounds = Some(Default::default());
        for turn in &mut self.open {
            for dir in [REQUEST, RESPONSE] {
                turn.span(dir).close(from[dir]);
            }
        }
        self.ends = from.map(Some);
    }

    /// The decoder could not follow: plain turns from here on.
    pub fn by_direction(&mut self) {
        self.bounds = None;
    }

    /// A message of direction `dir` ends at offset `end` in its stream.
    pub fn end_message(&mut self, dir: usize, end: u64, message: Message) {
        if let Some(bounds) = &mut self.bounds {
            bounds[dir].push_back((end, message));
            self.apply_bounds(dir);
        }
    }

    /// Ends the open turn of `dir` at the first message end past its start.
    fn apply_bounds(&mut self, dir: usize) {
        let Some(bounds) = &mut self.bounds else {
            return;
        };
        while let Some((end, _)) = bounds[dir].front() {
            let end = *end;
            let Some(turn) = self
                .open
                .iter_mut()
                .find(|turn| turn.get(dir).begun && turn.get(dir).end.is_none())
            else {
                return;
            };
            let (_, message) = bounds[dir].pop_front().expect("looked at");
            let span = turn.span(dir);
            if end == u64::MAX {
                // It lasts as long as the connection: the turn stays open.
                span.message = Some(Box::new(message));
                continue;
            }
            if end <= span.start {
                continue;
            }
            span.close(end);
            span.message = Some(Box::new(message));
            self.ends[dir] = Some(end);
        }
    }

    /// Where a turn in direction `dir` ends or the next one starts: past
    /// every byte seen sent or read that way.
    fn edge(&self, dir: usize) -> u64 {
        self.sent[dir].max(self.read[dir])
    }

    /// Closes `span` at the edge of its direction.
    fn close(span: &mut Span, at: u64, edges: &mut [Option<u64>; 2], dir: usize) {
        span.close(at);
        if span.begun {
            edges[dir] = span.end;
        }
    }

    /// Starts a turn in direction `dir` where the bytes seen so far end:
    /// the other direction's turn ends there.
    pub fn boundary(&mut self, dir: usize) {
        let request_at = self.edge(REQUEST);
        let response_at = self.edge(RESPONSE);
        let mut ends = self.ends;
        let answered = self.open.back().is_none_or(|turn| turn.response.begun);
        if let Some(last) = self.open.back_mut() {
            if dir == REQUEST || answered {
                Self::close(&mut last.response, response_at, &mut ends, RESPONSE);
            }
            Self::close(&mut last.request, request_at, &mut ends, REQUEST);
        }
        if dir == REQUEST || answered {
            // A new request; or the server speaks first (a greeting), or
            // again after a decoder ended its turn: a turn with no request.
            let mut turn = Turn::default();
            if dir == REQUEST {
                turn.request.begin(ends[REQUEST].unwrap_or(request_at));
            } else {
                Self::close(&mut turn.request, request_at, &mut ends, REQUEST);
                turn.response.begin(ends[RESPONSE].unwrap_or(response_at));
            }
            self.open.push_back(turn);
        } else {
            let start = ends[RESPONSE].unwrap_or(response_at);
            self.open
                .back_mut()
                .expect("answered is false")
                .response
                .begin(start);
        }
        self.ends = ends;
    }

    /// The oldest turn, once no record still to come can change it: the
    /// other side has answered, and every byte of it that a seen sender
    /// sent or a seen reader read has been accounted for. Past
    /// [`OPEN_KEPT`] open turns the oldest goes as it stands.
    pub fn next_finished(&mut self) -> Option<Turn> {
        let turn = self.open.front()?;
        // Answered: by a later turn (plain), or by its response's end (decoded).
        let answered = if self.bounds.is_some() {
            turn.request.end.is_some() && turn.response.end.is_some()
        } else {
            self.open.len() >= 2
        };
        if !answered && self.open.len() <= OPEN_KEPT {
            return None;
        }
        // An end whose records were seen sends one way and reads the
        // other: both are waited for.
        let client = self.seen[REQUEST][0] || self.seen[RESPONSE][1];
        let server = self.seen[RESPONSE][0] || self.seen[REQUEST][1];
        let settled = [(REQUEST, &turn.request), (RESPONSE, &turn.response)]
            .iter()
            .all(|(dir, span)| {
                let end = span.end.unwrap_or(u64::MAX);
                let (sender, reader) = if *dir == REQUEST {
                    (client, server)
                } else {
                    (server, client)
                };
                (!sender || self.sent[*dir] >= end) && (!reader || self.read[*dir] >= end)
            });
        if !settled && self.open.len() <= OPEN_KEPT {
            return None;
        }
        self.finished += 1;
        self.open.pop_front()
    }

    /// Every turn still open, oldest first (the connection ended, or the
    /// trace did); a turn with nothing in it is dropped.
    pub fn drain(&mut self) -> impl Iterator<Item = Turn> + '_ {
        let finished = &mut self.finished;
        self.open
            .drain(..)
            .filter(|turn| turn.request.messages() + turn.response.messages() > 0)
            .inspect(move |_| *finished += 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Bytes = Bytes::new();

    fn finished(turns: &mut Turns) -> Vec<Turn> {
        std::iter::from_fn(|| turns.next_finished()).collect()
    }

    #[test]
    fn request_and_response_in_order() {
        let mut turns = Turns::new(false);
        turns.data(REQUEST, false, 10, 100, &NONE);
        turns.data(REQUEST, true, 10, 150, &NONE);
        turns.data(RESPONSE, false, 4, 400, &NONE);
        turns.data(RESPONSE, true, 4, 420, &NONE);
        assert!(finished(&mut turns).is_empty(), "not answered yet");
        turns.data(REQUEST, false, 10, 1000, &NONE);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 1);
        let turn = &done[0];
        assert_eq!((turn.request.bytes(), turn.request.messages()), (10, 1));
        assert_eq!(turn.request.first_send, Some(100));
        assert_eq!(turn.request.first_read, Some(150));
        assert_eq!(turn.request.last_read, Some(150));
        assert_eq!(turn.response.first_send, Some(400));
        assert_eq!(turn.response.first_read, Some(420));
    }

    #[test]
    fn records_in_any_order_land_in_their_turns() {
        // The client read the response before the server's send record
        // came, and sent its next request before that record too.
        let mut turns = Turns::new(false);
        turns.data(REQUEST, false, 10, 100, &NONE);
        turns.data(RESPONSE, true, 4, 420, &NONE);
        turns.data(REQUEST, true, 10, 150, &NONE);
        turns.data(REQUEST, false, 7, 1000, &NONE);
        assert!(
            finished(&mut turns).is_empty(),
            "the server's send is still to come"
        );
        turns.data(RESPONSE, false, 4, 400, &NONE);
        turns.data(REQUEST, true, 7, 1010, &NONE);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 1);
        let turn = &done[0];
        assert_eq!(turn.request.bytes(), 10);
        assert_eq!(turn.request.first_read, Some(150));
        assert_eq!(turn.response.bytes(), 4);
        assert_eq!(turn.response.first_send, Some(400));
        assert_eq!(turn.response.first_read, Some(420));
        let rest: Vec<Turn> = turns.drain().collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].request.bytes(), 7);
        assert_eq!(rest[0].request.first_read, Some(1010));
        assert_eq!(turns.finished, 2);
    }

    #[test]
    fn pipelined_requests_are_one_turn_each_way() {
        let mut turns = Turns::new(false);
        for ts in [100, 110, 120] {
            turns.data(REQUEST, false, 5, ts, &NONE);
        }
        turns.data(REQUEST, true, 15, 130, &NONE);
        for ts in [200, 210, 220] {
            turns.data(RESPONSE, false, 3, ts, &NONE);
        }
        turns.data(RESPONSE, true, 9, 230, &NONE);
        turns.data(REQUEST, false, 5, 300, &NONE);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].request.messages(), done[0].response.messages()),
            (3, 3)
        );
        assert_eq!((done[0].request.bytes(), done[0].response.bytes()), (15, 9));
    }

    #[test]
    fn one_side_seen_is_enough() {
        // A remote client: only the server's reads and sends.
        let mut turns = Turns::new(false);
        turns.data(REQUEST, true, 8, 100, &NONE);
        turns.data(RESPONSE, false, 20, 300, &NONE);
        turns.data(REQUEST, true, 8, 900, &NONE);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].request.last_read, Some(100));
        assert_eq!(done[0].response.first_send, Some(300));
        assert_eq!(done[0].request.first_send, None);
    }

    #[test]
    fn a_greeting_is_a_turn_without_a_request() {
        let mut turns = Turns::new(false);
        turns.data(RESPONSE, false, 12, 100, &NONE);
        turns.data(REQUEST, false, 5, 200, &NONE);
        assert!(
            finished(&mut turns).is_empty(),
            "the client has not read it"
        );
        turns.data(RESPONSE, true, 12, 150, &NONE);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].request.messages(), 0);
        assert_eq!(done[0].response.bytes(), 12);
    }

    #[test]
    fn every_datagram_starts_an_exchange() {
        let mut turns = Turns::new(true);
        turns.data(REQUEST, false, 30, 100, &NONE);
        turns.data(REQUEST, false, 30, 110, &NONE);
        turns.data(REQUEST, true, 30, 120, &NONE);
        turns.data(RESPONSE, false, 50, 130, &NONE);
        turns.data(REQUEST, true, 30, 140, &NONE);
        turns.data(RESPONSE, true, 50, 150, &NONE);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 1, "the first datagram had no reply");
        assert_eq!(done[0].response.messages(), 0);
        assert_eq!(done[0].request.first_read, Some(120));
        let rest: Vec<Turn> = turns.drain().collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].request.first_read, Some(140));
        assert_eq!(rest[0].response.first_read, Some(150));
    }

    fn message(dir: usize, text: &str) -> Message {
        Message {
            dir,
            end: 0,
            text: text.to_owned(),
            fields: serde_json::Map::new(),
            failed: false,
            key: None,
        }
    }

    #[test]
    fn decoded_messages_split_pipelined_calls() {
        let mut turns = Turns::new(false);
        turns.by_message([0; 2]);
        // The decoder is fed each call's bytes before they are noted (as
        // the tracker does): two requests in one send, two answers in one.
        turns.end_message(REQUEST, 2, message(REQUEST, "a"));
        turns.end_message(REQUEST, 4, message(REQUEST, "b"));
        turns.data(REQUEST, false, 4, 100, &Bytes::from_static(b"a\nb\n"));
        turns.data(REQUEST, true, 4, 110, &NONE);
        turns.end_message(RESPONSE, 2, message(RESPONSE, "1"));
        turns.end_message(RESPONSE, 4, message(RESPONSE, "2"));
        turns.data(RESPONSE, false, 4, 200, &NONE);
        turns.data(RESPONSE, true, 4, 210, &NONE);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 2);
        for (turn, (asked, answered)) in done.iter().zip([("a", "1"), ("b", "2")]) {
            assert_eq!(turn.request.message.as_ref().unwrap().text, asked);
            assert_eq!(turn.response.message.as_ref().unwrap().text, answered);
            assert_eq!((turn.request.bytes(), turn.response.bytes()), (2, 2));
            assert_eq!(turn.request.first_send, Some(100));
            assert_eq!(turn.request.first_read, Some(110));
            assert_eq!(turn.response.first_send, Some(200));
            assert_eq!(turn.response.first_read, Some(210));
        }
        assert_eq!(done[1].request.data.as_deref(), Some(&b"b\n"[..]));
    }

    #[test]
    fn keyed_answers_pair_with_their_requests_in_any_order() {
        let mut turns = Turns::new(true);
        turns.by_message([0; 2]);
        let keyed = |dir, text, key| Message {
            key: Some(key),
            ..message(dir, text)
        };
        turns.end_message(REQUEST, 30, keyed(REQUEST, "A", 1));
        turns.data(REQUEST, false, 30, 100, &NONE);
        turns.end_message(REQUEST, 60, keyed(REQUEST, "AAAA", 2));
        turns.data(REQUEST, false, 30, 101, &NONE);
        turns.end_message(RESPONSE, 50, keyed(RESPONSE, "AAAA answer", 2));
        turns.data(RESPONSE, false, 50, 200, &NONE);
        turns.end_message(RESPONSE, 90, keyed(RESPONSE, "A answer", 1));
        turns.data(RESPONSE, false, 40, 300, &NONE);
        let done: Vec<Turn> = turns.drain().collect();
        fn text(span: &Span) -> &str {
            span.message.as_ref().unwrap().text.as_str()
        }
        let pairs: Vec<(&str, &str)> = done
            .iter()
            .map(|turn| (text(&turn.request), text(&turn.response)))
            .collect();
        assert_eq!(pairs, [("A", "A answer"), ("AAAA", "AAAA answer")]);
        assert_eq!(done[0].response.first_send, Some(300));
        assert_eq!(done[1].response.bytes(), 50);
    }

    #[test]
    fn the_first_send_gives_the_data() {
        let mut turns = Turns::new(false);
        turns.data(REQUEST, true, 3, 100, &Bytes::from_static(b"abc"));
        turns.data(REQUEST, false, 3, 90, &Bytes::from_static(b"ABC"));
        turns.data(REQUEST, false, 3, 95, &Bytes::from_static(b"DEF"));
        let rest: Vec<Turn> = turns.drain().collect();
        assert_eq!(rest[0].request.data.as_deref(), Some(&b"ABC"[..]));
        assert_eq!(rest[0].request.first_send, Some(90));
    }
}
