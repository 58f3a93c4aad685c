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
//!
//! Decoded, each message is a turn of its own, and its [`Role`] says
//! where it goes: a message that asks starts an exchange, from either
//! side (a D-Bus bus passes its client calls to answer: that exchange is
//! asked by the server, [`Turn::asker`]); an answer joins the oldest
//! exchange asked the other way and not answered, or the one whose
//! request has its key; a one-way message is an exchange with no answer,
//! handed on as soon as its bytes are in, past exchanges still waiting.
//! A message's bytes may come before the decoder finished it (its header
//! split across calls): they open a turn where the usual role puts them,
//! which moves when the message says otherwise.

use std::collections::VecDeque;

use bytes::Bytes;

use super::decode::{Message, Role};

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

    /// A datagram's span that the other end's record of it began: it
    /// starts at `offset`, and no send (or `read`) of it was seen.
    fn awaits(&self, offset: u64, read: bool) -> bool {
        let seen = if read {
            self.read_messages
        } else {
            self.sent_messages
        };
        self.begun && self.start == offset && seen == 0
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
    /// What was asked, and its answer: in the direction [`Self::asker`]
    /// sends, and the other.
    pub request: Span,
    pub response: Span,
    /// The direction of the request: [`REQUEST`], or [`RESPONSE`] for an
    /// exchange the server asked (decoded D-Bus).
    pub asker: usize,
    /// A request that expects no answer (decoded: a D-Bus signal).
    pub one_way: bool,
}

impl Turn {
    fn get(&self, dir: usize) -> &Span {
        if dir == self.asker {
            &self.request
        } else {
            &self.response
        }
    }

    fn span(&mut self, dir: usize) -> &mut Span {
        if dir == self.asker {
            &mut self.request
        } else {
            &mut self.response
        }
    }

    /// The server asked, the client answered.
    pub fn asked_by_server(&self) -> bool {
        self.asker == RESPONSE
    }

    /// A turn that asks `dir`'s way: a new exchange.
    fn asking(dir: usize, one_way: bool) -> Self {
        Self {
            asker: dir,
            one_way,
            ..Self::default()
        }
    }

    /// Nothing in it but `dir`'s span (left empty): removable.
    fn empty_but(&self, dir: usize) -> bool {
        let other = self.get(1 - dir);
        other.bytes() == 0 && other.messages() == 0 && other.message.is_none()
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
        // Every datagram of the client is a turn of its own: its send and
        // its read find it at the same place in their direction's bytes,
        // whichever of their records came first.
        let mut datagram = self.datagram && dir == REQUEST && self.bounds.is_none();
        loop {
            self.apply_bounds(dir);
            let found = if datagram {
                self.open
                    .iter()
                    .rposition(|turn| turn.request.awaits(offset, read))
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
                    datagram = false;
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
            datagram = false;
        }
    }

    /// Whether bytes sent in direction `dir` are still to be read (by a
    /// reader whose records are seen: the caller knows).
    pub fn unread(&self, dir: usize) -> bool {
        self.read[dir] < self.sent[dir]
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
    /// of that direction (decoded), where that message goes (as its
    /// direction's messages usually do while it is not decoded yet).
    fn open_span(&mut self, dir: usize, offset: u64) -> usize {
        let Some(bounds) = &self.bounds else {
            self.boundary(dir);
            return self.open.len() - 1;
        };
        let start = self.ends[dir].unwrap_or(offset);
        let (role, key) = bounds[dir]
            .front()
            .map_or((Role::usual(dir), None), |(_, message)| {
                (message.role, message.key)
            });
        let index = self.place(dir, role, key, None);
        self.open[index].span(dir).begin(start);
        index
    }

    /// The open exchange a message of direction `dir` answers: the one
    /// whose request has its key (a DNS id, a D-Bus serial), or else the
    /// oldest not answered, asked the other way, whose request has no key
    /// to disagree with the answer's (an answer to a request handed on
    /// already answers none of the others). `current`: the turn holding
    /// the message's span now, taken as not answered.
    fn answered(&self, dir: usize, key: Option<u64>, current: Option<usize>) -> Option<usize> {
        let waiting = |(index, turn): &(usize, &Turn)| {
            turn.asker != dir && !turn.one_way && (!turn.get(dir).begun || Some(*index) == current)
        };
        let request_key = |turn: &Turn| turn.request.message.as_ref().and_then(|m| m.key);
        let mut candidates = self.open.iter().enumerate().filter(waiting);
        let keyed = key.and_then(|key| {
            candidates
                .clone()
                .find(|(_, turn)| request_key(turn) == Some(key))
        });
        keyed
            .or_else(|| candidates.find(|(_, turn)| key.is_none() || request_key(turn).is_none()))
            .map(|(index, _)| index)
    }

    /// The turn whose span of `dir` a message of that direction with
    /// `role` and `key` takes, made if need be (not begun yet).
    fn place(&mut self, dir: usize, role: Role, key: Option<u64>, current: Option<usize>) -> usize {
        if role == Role::Answers
            && let Some(index) = self.answered(dir, key, current)
        {
            return index;
        }
        let turn = match role {
            Role::Answers => self.unasked(dir),
            _ => Turn::asking(dir, role == Role::OneWay),
        };
        self.open.push_back(turn);
        self.open.len() - 1
    }

    /// A turn for an answer to nothing asked (a greeting): its request
    /// is empty, where the other direction stands.
    fn unasked(&self, dir: usize) -> Turn {
        let other = 1 - dir;
        let mut turn = Turn::asking(other, false);
        let at = self.ends[other].unwrap_or_else(|| self.edge(other));
        turn.request.begin(at);
        turn.request.close(at);
        turn
    }

    /// The open span of `dir` in turn `index` holds `message`'s bytes:
    /// the turn it belongs in, moved there if the span was opened before
    /// the message was decoded and went elsewhere.
    fn rehome(&mut self, index: usize, dir: usize, message: &Message) -> usize {
        let asker = self.open[index].asker;
        let fits = match message.role {
            Role::Asks | Role::OneWay => asker == dir,
            Role::Answers => {
                asker != dir && self.answered(dir, message.key, Some(index)) == Some(index)
            }
        };
        let turn = &mut self.open[index];
        if fits {
            turn.one_way = message.role == Role::OneWay;
            return index;
        }
        let span = std::mem::take(turn.span(dir));
        if turn.empty_but(dir) {
            self.open.remove(index);
        }
        let to = self.place(dir, message.role, message.key, None);
        *self.open[to].span(dir) = span;
        to
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

    /// Ends the open turn of `dir` at the first message end past its
    /// start, in the exchange the message belongs to.
    fn apply_bounds(&mut self, dir: usize) {
        loop {
            let Some(bounds) = &mut self.bounds else {
                return;
            };
            let Some((end, _)) = bounds[dir].front() else {
                return;
            };
            let end = *end;
            let Some(index) = self
                .open
                .iter()
                .position(|turn| turn.get(dir).begun && turn.get(dir).end.is_none())
            else {
                return;
            };
            let (_, message) = bounds[dir].pop_front().expect("looked at");
            if end <= self.open[index].get(dir).start {
                continue;
            }
            let index = self.rehome(index, dir, &message);
            let span = self.open[index].span(dir);
            if end == u64::MAX {
                // It lasts as long as the connection: the turn stays open.
                span.message = Some(Box::new(message));
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
        // By direction: after decoding stopped, the last turn may be one
        // the server asked.
        let answered = self.open.back().is_none_or(|turn| turn.get(RESPONSE).begun);
        if let Some(last) = self.open.back_mut() {
            if dir == REQUEST || answered {
                Self::close(last.span(RESPONSE), response_at, &mut ends, RESPONSE);
            }
            Self::close(last.span(REQUEST), request_at, &mut ends, REQUEST);
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
                .span(RESPONSE)
                .begin(start);
        }
        self.ends = ends;
    }

    /// The oldest turn, once no record still to come can change it: the
    /// other side has answered, and every byte of it that a seen sender
    /// sent or a seen reader read has been accounted for. A one-way turn
    /// (decoded) waits for no answer, nor for older turns: it goes as
    /// soon as its bytes are in. Past [`OPEN_KEPT`] open turns the oldest
    /// goes as it stands.
    pub fn next_finished(&mut self) -> Option<Turn> {
        let front = self.open.front()?;
        let index = if self.done(front, true) {
            0
        } else if let Some(index) = self
            .open
            .iter()
            .position(|turn| turn.one_way && self.done(turn, false))
        {
            index
        } else if self.open.len() > OPEN_KEPT {
            0
        } else {
            return None;
        };
        self.finished += 1;
        self.open.remove(index)
    }

    /// `turn` (the oldest open, when `oldest`) is answered, and settled.
    fn done(&self, turn: &Turn, oldest: bool) -> bool {
        // Answered: by a later turn (plain), or by its response's end
        // (decoded), unless it wants no answer.
        let answered = if self.bounds.is_some() {
            turn.request.end.is_some() && (turn.one_way || turn.response.end.is_some())
        } else {
            oldest && self.open.len() >= 2
        };
        // An end whose records were seen sends one way and reads the
        // other: both are waited for.
        let client = self.seen[REQUEST][0] || self.seen[RESPONSE][1];
        let server = self.seen[RESPONSE][0] || self.seen[REQUEST][1];
        answered
            && [REQUEST, RESPONSE]
                .into_iter()
                .filter(|&dir| !turn.one_way || dir == turn.asker)
                .all(|dir| {
                    let end = turn.get(dir).end.unwrap_or(u64::MAX);
                    let (sender, reader) = if dir == REQUEST {
                        (client, server)
                    } else {
                        (server, client)
                    };
                    (!sender || self.sent[dir] >= end) && (!reader || self.read[dir] >= end)
                })
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

    use crate::conversation::decode::tests::message;

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

    /// An answer whose key no open request has (its request was handed on
    /// as eight more waited) is an exchange of its own, not the answer to
    /// the oldest request waiting; one without a key still pairs in order.
    #[test]
    fn a_keyed_answer_to_no_open_request_takes_none() {
        let mut turns = Turns::new(true);
        turns.by_message([0; 2]);
        let keyed = |dir, text, key| Message {
            key,
            ..message(dir, text)
        };
        turns.end_message(REQUEST, 30, keyed(REQUEST, "A", Some(1)));
        turns.data(REQUEST, false, 30, 100, &NONE);
        turns.end_message(RESPONSE, 40, keyed(RESPONSE, "lost answer", Some(9)));
        turns.data(RESPONSE, false, 40, 200, &NONE);
        turns.end_message(RESPONSE, 90, keyed(RESPONSE, "A answer", Some(1)));
        turns.data(RESPONSE, false, 50, 300, &NONE);
        turns.end_message(REQUEST, 60, keyed(REQUEST, "B", Some(2)));
        turns.data(REQUEST, false, 30, 400, &NONE);
        turns.end_message(RESPONSE, 120, keyed(RESPONSE, "unkeyed", None));
        turns.data(RESPONSE, false, 30, 500, &NONE);
        let done: Vec<Turn> = turns.drain().collect();
        let text = |span: &Span| span.message.as_ref().map(|m| m.text.clone());
        let pairs: Vec<_> = done
            .iter()
            .map(|turn| (text(&turn.request), text(&turn.response)))
            .collect();
        let pair = |request: Option<&str>, response: &str| {
            (request.map(str::to_owned), Some(response.to_owned()))
        };
        assert_eq!(
            pairs,
            [
                pair(Some("A"), "A answer"),
                pair(None, "lost answer"),
                pair(Some("B"), "unkeyed"),
            ]
        );
    }

    /// A decoded message that asks, answers or is one-way, with `key`.
    fn dbus(dir: usize, text: &str, role: Role, key: Option<u64>) -> Message {
        Message {
            role,
            key,
            ..message(dir, text)
        }
    }

    fn texts(turn: &Turn) -> (&str, Option<&str>) {
        fn text(span: &Span) -> Option<&str> {
            span.message.as_ref().map(|m| m.text.as_str())
        }
        (text(&turn.request).unwrap(), text(&turn.response))
    }

    /// A decoded connection whose client sent a call of 30 bytes (its
    /// serial `serial`) at 100, read at 110.
    fn calling(text: &str, serial: u64) -> Turns {
        let mut turns = Turns::new(false);
        turns.by_message([0; 2]);
        let call = dbus(REQUEST, text, Role::Asks, Some(serial));
        sent_and_read(&mut turns, REQUEST, 30, 100, call);
        turns
    }

    /// The client answers the bus's call `asked`, then the bus answers
    /// the client's serial 1 (`answer`): both exchanges are finished,
    /// the client's first, as these texts say.
    fn answered(turns: &mut Turns, asked: u32, answer: &str, ts: u64) -> Vec<Turn> {
        let key = Some(1 << 32 | u64::from(asked));
        let answer_asked = dbus(REQUEST, "return", Role::Answers, key);
        sent_and_read(turns, REQUEST, 10, ts, answer_asked);
        assert!(finished(turns).is_empty(), "in order, after the call");
        let decoded = dbus(RESPONSE, answer, Role::Answers, Some(1));
        sent_and_read(turns, RESPONSE, 10, ts + 100, decoded);
        let done = finished(turns);
        let pairs: Vec<_> = done.iter().map(texts).collect();
        assert_eq!(
            pairs,
            [("call A", Some(answer)), ("call B", Some("return"))]
        );
        done
    }

    /// One message of `len` bytes, sent at `ts` and read 10 ns later.
    fn sent_and_read(turns: &mut Turns, dir: usize, len: u64, ts: u64, decoded: Message) {
        let end = turns.offset(dir, false) + len;
        turns.end_message(dir, end, decoded);
        turns.data(dir, false, len, ts, &NONE);
        turns.data(dir, true, len, ts + 10, &NONE);
    }

    #[test]
    fn calls_either_way_pair_by_serial_and_signals_wait_for_nothing() {
        // A bus connection: the client calls (its serial 1); the bus sends
        // a signal, then passes the client a call (the bus's serial 5),
        // which the client answers before the bus answers its call.
        let mut turns = calling("call A", 1);
        let signal = dbus(RESPONSE, "signal S", Role::OneWay, None);
        sent_and_read(&mut turns, RESPONSE, 50, 200, signal);
        let done = finished(&mut turns);
        assert_eq!(done.len(), 1, "the signal goes past the call waiting");
        assert_eq!(texts(&done[0]), ("signal S", None));
        assert!(done[0].one_way && done[0].asked_by_server());
        assert_eq!((done[0].request.bytes(), done[0].response.bytes()), (50, 0));
        let asked = dbus(RESPONSE, "call B", Role::Asks, Some(1 << 32 | 5));
        sent_and_read(&mut turns, RESPONSE, 80, 300, asked);
        let done = answered(&mut turns, 5, "error E", 400);
        assert!(!done[0].asked_by_server());
        let by_server = &done[1];
        assert!(by_server.asked_by_server() && !by_server.one_way);
        assert_eq!(
            (by_server.request.bytes(), by_server.response.bytes()),
            (80, 10)
        );
        // Timed from the server's side: it sent at 300, the client read
        // at 310, answered at 400, and the server read that at 410.
        assert_eq!(by_server.request.first_send, Some(300));
        assert_eq!(by_server.request.last_read, Some(310));
        assert_eq!(by_server.response.first_send, Some(400));
        assert_eq!(by_server.response.first_read, Some(410));
        assert_eq!(done[0].response.first_send, Some(500));
        assert_eq!(turns.finished, 3);
    }

    #[test]
    fn one_way_messages_never_hold_the_queue() {
        let mut turns = calling("call", 9);
        for ts in 0..(OPEN_KEPT as u64 * 3) {
            let signal = dbus(RESPONSE, "signal", Role::OneWay, None);
            sent_and_read(&mut turns, RESPONSE, 60, 200 + ts, signal);
            let done = finished(&mut turns);
            assert_eq!(done.len(), 1, "each signal as it is read");
            assert!(done[0].one_way);
        }
        let client_signal = dbus(REQUEST, "signal mine", Role::OneWay, None);
        sent_and_read(&mut turns, REQUEST, 20, 900, client_signal);
        assert_eq!(texts(&finished(&mut turns)[0]), ("signal mine", None));
        let answer = dbus(RESPONSE, "return", Role::Answers, Some(9));
        sent_and_read(&mut turns, RESPONSE, 20, 1000, answer);
        let done = finished(&mut turns);
        assert_eq!(texts(&done[0]), ("call", Some("return")));
        assert_eq!(done[0].response.first_send, Some(1000));
    }

    #[test]
    fn bytes_before_their_message_join_its_exchange() {
        // The client's read of the bus's first 16 bytes comes before the
        // decoder has the message (its header fields were in the rest): a
        // call from the bus, not the answer to the client's call.
        let mut turns = calling("call A", 1);
        turns.data(RESPONSE, true, 16, 200, &NONE);
        let asked = dbus(RESPONSE, "call B", Role::Asks, Some(1 << 32 | 7));
        turns.end_message(RESPONSE, 80, asked);
        turns.data(RESPONSE, true, 64, 210, &NONE);
        turns.data(RESPONSE, false, 80, 190, &NONE);
        let done = answered(&mut turns, 7, "return A", 300);
        let by_server = &done[1];
        assert_eq!(by_server.request.bytes(), 80);
        assert_eq!(by_server.request.first_read, Some(200));
        assert_eq!(by_server.request.first_send, Some(190));
        assert_eq!(done[0].response.bytes(), 10);
        assert_eq!(done[0].response.first_send, Some(400));
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
