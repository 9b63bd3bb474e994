//! A recorded Postgres session as a timeline: what the client asked, what
//! policy decided, and what the client saw. Sans-IO and pure: frames in (in
//! `seq` order), entries out, decoded from the recorded bytes each way.
//!
//! - The client's bytes (after authentication) are Postgres frontend messages:
//!   a simple `Query` becomes one entry per statement it holds; an `Execute`
//!   becomes one entry with the text its portal's statement was prepared with
//!   and the portal's parameters (text as text, binary as hex, NULL as null).
//! - The server's bytes, as the client received them (masked values as they
//!   were sent), fill the entries in the order Postgres answers: columns, rows,
//!   the command tag, an error. `NoticeResponse`s are entries of their own.
//! - A `Decision` frame is attached to the statement it decided (the one whose
//!   text it names; a later decision on the same statement, such as a review's
//!   outcome, replaces an earlier one).
//!
//! Everything is bounded, whatever the bytes hold: a message is framed by its
//! declared length and one larger than [`MAX_MESSAGE_BYTES`] is skipped
//! unbuffered; an entry keeps at most [`MAX_ROWS`] rows (and
//! [`MAX_ENTRY_ROW_BYTES`] of them) with the full `row_count`; values and
//! statements are cut; prepared statements and portals are remembered up to
//! [`MAX_NAMES`] each (long names by a digest, a portal's parameters up to
//! 64 KiB), results owed to statements up to 16 Ki. A message split across
//! frames is put back together.
//! Malformed messages are skipped; a length that cannot be a message's stops the
//! decoding of that direction (the gateway would have ended such a session).

use std::collections::{HashMap, VecDeque};

use airlock_proto::v1::{self, frame::Body};
use serde::{Deserialize, Serialize};

/// The largest message buffered whole; a longer one is skipped (counted, not shown).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Rows kept per entry (`row_count` counts them all).
pub const MAX_ROWS: usize = 1000;
/// Bytes of rows kept per entry.
pub const MAX_ENTRY_ROW_BYTES: usize = 1 << 20;
/// Bytes of rows kept across every entry not yet handed out.
pub const MAX_RETAINED_ROW_BYTES: usize = 32 << 20;
/// What a kept value costs besides its bytes (an `Option<String>`), and a row besides its values.
pub const VALUE_OVERHEAD: usize = 24;
/// A value is cut after this many bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// A statement's text is cut after this many bytes.
pub const MAX_STATEMENT_BYTES: usize = 64 << 10;
/// Entries not yet complete; past this the oldest is handed out as it stands.
pub const MAX_PENDING: usize = 1024;
/// Prepared statements and portals remembered, each.
pub const MAX_NAMES: usize = 1024;
/// Names longer than this are remembered by a digest.
const MAX_NAME_KEY: usize = 64;
/// Bytes of parameters kept per portal (shown values; the rest are left out).
const MAX_PORTAL_PARAM_BYTES: usize = 64 << 10;
/// Results owed to statements (executed, not answered yet); past this the
/// oldest are given up.
const MAX_OWED: usize = 16 << 10;
/// Statements one simple query is split into; the rest stay with the last.
const MAX_STATEMENTS_PER_QUERY: usize = 256;
/// Parameters and columns shown per statement or row.
const MAX_FIELDS: usize = 1664;
/// Decisions waiting for a statement that has not been executed yet.
const MAX_UNATTACHED: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Statement,
    Notice,
    End,
}

/// One entry of a timeline, as the replay API and `airlock replay --json` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// The frame the entry starts at (for a statement, the one that completed its message).
    pub seq: u64,
    /// RFC 3339, microseconds.
    pub at: String,
    pub kind: Kind,
    pub statement: Option<String>,
    /// A Bind's parameters: text as text, binary as `\x` and hex, NULL as null.
    pub parameters: Option<Vec<Option<String>>>,
    pub decision: Option<DecisionView>,
    pub columns: Option<Vec<String>>,
    /// Rows as the client received them (masked values as they were sent).
    pub rows: Option<Vec<Vec<Option<String>>>>,
    pub row_count: Option<u64>,
    pub rows_truncated: bool,
    pub command_tag: Option<String>,
    /// The statement's error, or a notice's text.
    pub error: Option<ErrorView>,
    /// From the client's message to the statement's completion (its CommandComplete,
    /// error, or the ReadyForQuery after it).
    pub duration_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionView {
    /// `allow`, `deny`, `review` or `mask`.
    pub verdict: String,
    pub rule: String,
    pub reason: String,
    pub review_id: String,
    pub approver: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorView {
    pub severity: String,
    pub sqlstate: String,
    pub message: String,
}

/// A message as framed: whole, or too long to keep (its tag and declared body length).
enum Message {
    Whole(u8, Vec<u8>),
    Oversized(u8, usize),
}

/// One direction's bytes, framed by tag and declared length.
#[derive(Debug, Clone, Default)]
struct Framer {
    buf: Vec<u8>,
    pos: usize,
    /// Bytes of an oversized message still to skip.
    skip: usize,
    /// A length that cannot be a message's was read: nothing more is decoded.
    broken: bool,
}

impl Framer {
    fn push(&mut self, mut bytes: &[u8]) {
        if self.broken {
            return;
        }
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = bytes.get(n..).unwrap_or_default();
        }
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Option<Message> {
        if self.broken || self.skip > 0 {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        let (&tag, after) = rest.split_first()?;
        let len = u32::from_be_bytes(after.get(..4)?.try_into().ok()?) as usize;
        if !(4..=i32::MAX as usize).contains(&len) {
            self.broken = true;
            self.buf = Vec::new();
            self.pos = 0;
            return None;
        }
        let body_len = len - 4;
        if body_len > MAX_MESSAGE_BYTES {
            let available = rest.len().saturating_sub(5);
            if available >= body_len {
                self.pos += 5 + body_len;
            } else {
                self.skip = body_len - available;
                self.pos = self.buf.len();
            }
            return Some(Message::Oversized(tag, body_len));
        }
        let body = rest.get(5..5 + body_len)?.to_vec();
        self.pos += 5 + body_len;
        Some(Message::Whole(tag, body))
    }
}

/// Reads a message body; every read is bounded by what is there.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn i16(&mut self) -> Option<i16> {
        let bytes = self.take(2)?;
        Some(i16::from_be_bytes(bytes.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        let bytes = self.take(4)?;
        Some(i32::from_be_bytes(bytes.try_into().ok()?))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = self.take(end)?;
        self.u8()?;
        Some(s)
    }

    /// A length-prefixed value: `None` inside for NULL (-1).
    fn value(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.i32()?;
        if len < 0 {
            return Some(None);
        }
        self.take(len as usize).map(Some)
    }
}

/// Text, lossy, cut at `max` bytes on a character boundary (`…` marks a cut).
fn cut_text(bytes: &[u8], max: usize) -> String {
    let shown = bytes.get(..bytes.len().min(max + 3)).unwrap_or(bytes);
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if bytes.len() > max || text.len() > max {
        let mut end = max.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// `\x` and hex, cut.
fn hex_value(bytes: &[u8]) -> String {
    let max = MAX_VALUE_BYTES / 2;
    let mut text = format!("\\x{}", hex::encode(bytes.get(..bytes.len().min(max)).unwrap_or(bytes)));
    if bytes.len() > max {
        text.push('…');
    }
    text
}

/// A value in `format` (0 text, 1 binary; `None`: unknown, shown as text when it is UTF-8).
fn show_value(bytes: &[u8], format: Option<i16>) -> String {
    match format {
        Some(1) => hex_value(bytes),
        Some(_) => cut_text(bytes, MAX_VALUE_BYTES),
        None if std::str::from_utf8(bytes.get(..bytes.len().min(MAX_VALUE_BYTES)).unwrap_or(bytes)).is_ok()
            || bytes.len() > MAX_VALUE_BYTES =>
        {
            cut_text(bytes, MAX_VALUE_BYTES)
        }
        None => hex_value(bytes),
    }
}

/// The format of column `i` from a list of format codes as the protocol sends
/// them: none (all text), one (all the same), or one per column.
fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn format_micros(micros: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000) else {
        return String::new();
    };
    let (year, month, day) = t.to_calendar_date();
    let (hour, minute, second, micro) = t.to_hms_micro();
    format!("{year:04}-{:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micro:06}Z", u8::from(month))
}

/// Splits a simple query's text into its statements at the semicolons outside
/// quotes, dollar quotes and comments. Empty statements are dropped; a text
/// with none at all is one empty statement (the server answers it with
/// EmptyQueryResponse).
pub fn split_statements(sql: &str) -> Vec<String> {
    #[derive(PartialEq)]
    enum State {
        Normal,
        Quote { escapes: bool },
        Ident,
        Dollar(usize, usize),
        Line,
        Block(u32),
    }
    let bytes = sql.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut state = State::Normal;
    let mut start = 0usize;
    let mut i = 0usize;
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let push = |out: &mut Vec<String>, from: usize, to: usize| {
        let piece = sql.get(from..to).unwrap_or_default().trim();
        if piece.is_empty() {
            return;
        }
        if out.len() < MAX_STATEMENTS_PER_QUERY {
            out.push(piece.to_owned());
        } else if let Some(last) = out.last_mut() {
            last.push_str("; ");
            last.push_str(piece);
        }
    };
    while i < bytes.len() {
        let c = at(i);
        match state {
            State::Normal => match c {
                b'\'' => {
                    let prev = if i > 0 { at(i - 1) } else { 0 };
                    let before = if i > 1 { at(i - 2) } else { 0 };
                    let escapes = matches!(prev, b'e' | b'E') && !(before.is_ascii_alphanumeric() || before == b'_');
                    state = State::Quote { escapes };
                }
                b'"' => state = State::Ident,
                b'-' if at(i + 1) == b'-' => {
                    state = State::Line;
                    i += 1;
                }
                b'/' if at(i + 1) == b'*' => {
                    state = State::Block(1);
                    i += 1;
                }
                b'$' => {
                    // $tag$ where tag is empty or an identifier not starting with a digit.
                    let prev = if i > 0 { at(i - 1) } else { 0 };
                    if !(prev.is_ascii_alphanumeric() || prev == b'_') {
                        let mut j = i + 1;
                        while j < bytes.len() && (at(j).is_ascii_alphanumeric() || at(j) == b'_' || at(j) >= 0x80) {
                            j += 1;
                        }
                        if at(j) == b'$' && !at(i + 1).is_ascii_digit() {
                            state = State::Dollar(i, j + 1);
                            i = j;
                        }
                    }
                }
                b';' => {
                    push(&mut out, start, i);
                    start = i + 1;
                }
                _ => {}
            },
            State::Quote { escapes } => {
                if escapes && c == b'\\' {
                    i += 1;
                } else if c == b'\'' {
                    if at(i + 1) == b'\'' {
                        i += 1;
                    } else {
                        state = State::Normal;
                    }
                }
            }
            State::Ident => {
                if c == b'"' {
                    state = State::Normal;
                }
            }
            State::Dollar(from, to) => {
                let tag = bytes.get(from..to).unwrap_or_default();
                if c == b'$' && bytes.get(i..i + tag.len()) == Some(tag) {
                    i += tag.len() - 1;
                    state = State::Normal;
                }
            }
            State::Line => {
                if c == b'\n' {
                    state = State::Normal;
                }
            }
            State::Block(depth) => {
                if c == b'*' && at(i + 1) == b'/' {
                    i += 1;
                    state = if depth <= 1 { State::Normal } else { State::Block(depth - 1) };
                } else if c == b'/' && at(i + 1) == b'*' {
                    i += 1;
                    state = State::Block(depth.saturating_add(1));
                }
            }
        }
        i += 1;
    }
    push(&mut out, start, bytes.len());
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// An entry being built.
#[derive(Debug, Clone)]
struct Slot {
    entry: Entry,
    at_micros: i64,
    complete: bool,
    /// Left out: a statement of a query that an earlier error stopped.
    dropped: bool,
    /// The text a decision names for it: the whole query, or the prepared text.
    source: Option<String>,
    /// The simple query it belongs to.
    query: Option<u64>,
    /// Result formats, from its RowDescription or its Bind.
    formats: Vec<i16>,
    described: bool,
    row_bytes: usize,
}

/// What the server owes next, in order.
#[derive(Debug, Clone)]
enum Owed {
    /// The results of the statement in this slot.
    Results(u64),
    /// A ReadyForQuery. `text`: a statement prepared in the batch it ends, for an
    /// error that no executed statement takes.
    Ready { text: Option<String> },
}

#[derive(Debug, Clone)]
struct Portal {
    text: Option<String>,
    params: Vec<Option<String>>,
    formats: Vec<i16>,
}

/// The decoder. Feed it frames in `seq` order with [`Decoder::push`]; take the
/// entries that are complete with [`Decoder::pop`].
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    client: Framer,
    server: Framer,
    prepared: HashMap<Vec<u8>, Option<String>>,
    portals: HashMap<Vec<u8>, Portal>,
    /// Slots by id; ids are given in order, the front is the oldest not handed out.
    slots: VecDeque<Slot>,
    first_id: u64,
    owed: VecDeque<Owed>,
    next_query: u64,
    /// Text prepared since the last Sync.
    batch_text: Option<String>,
    /// The slot COPY FROM STDIN data goes to.
    copy_in: Option<u64>,
    /// Copy data from the server goes to the statement being answered.
    copy_out: bool,
    unattached: VecDeque<(String, DecisionView)>,
    retained: usize,
    ended: bool,
    last_seq: u64,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The session's end frame was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The last frame pushed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The `seq` of the oldest entry not handed out yet (still incomplete).
    pub fn pending_seq(&self) -> Option<u64> {
        self.slots.iter().find(|s| !s.dropped).map(|s| s.entry.seq)
    }

    /// The next complete entry, in order.
    pub fn pop(&mut self) -> Option<Entry> {
        loop {
            let front = self.slots.front()?;
            if !(front.complete || front.dropped) {
                return None;
            }
            let slot = self.slots.pop_front()?;
            self.first_id += 1;
            self.retained = self.retained.saturating_sub(slot.row_bytes);
            if !slot.dropped {
                return Some(slot.entry);
            }
        }
    }

    pub fn push(&mut self, frame: &v1::Frame) {
        if self.ended {
            return;
        }
        self.last_seq = frame.seq;
        let (seq, at) = (frame.seq, frame.at_unix_micros);
        match &frame.body {
            Some(Body::ClientBytes(bytes)) => {
                self.client.push(bytes);
                while let Some(message) = self.client.next() {
                    self.client_message(message, seq, at);
                }
            }
            Some(Body::ServerBytes(bytes)) => {
                self.server.push(bytes);
                while let Some(message) = self.server.next() {
                    self.server_message(message, seq, at);
                }
            }
            Some(Body::Decision(d)) => self.decision(d),
            Some(Body::End(_)) => self.end(seq, at),
            None => {}
        }
        while self.owed.len() > MAX_OWED {
            self.owed.pop_front();
        }
        // Bounded: past `MAX_PENDING`, the oldest entries are handed out as they stand.
        let pending = self.slots.iter().filter(|s| !s.dropped).count();
        let mut excess = pending.saturating_sub(MAX_PENDING);
        for slot in self.slots.iter_mut().filter(|s| !s.dropped) {
            if excess == 0 {
                break;
            }
            slot.complete = true;
            excess -= 1;
        }
    }

    fn end(&mut self, seq: u64, at: i64) {
        for slot in self.slots.iter_mut() {
            slot.complete = true;
        }
        self.owed.clear();
        let entry = new_entry(seq, at, Kind::End);
        self.add_slot(entry, at, true);
        self.ended = true;
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut Slot> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        self.slots.get_mut(index)
    }

    fn add_slot(&mut self, entry: Entry, at: i64, complete: bool) -> u64 {
        let id = self.first_id + self.slots.len() as u64;
        self.slots.push_back(Slot {
            entry,
            at_micros: at,
            complete,
            dropped: false,
            source: None,
            query: None,
            formats: Vec::new(),
            described: false,
            row_bytes: 0,
        });
        id
    }

    /// A statement entry, with any decision that came before it.
    fn add_statement(
        &mut self,
        seq: u64,
        at: i64,
        statement: Option<String>,
        source: Option<String>,
        query: Option<u64>,
    ) -> u64 {
        let mut entry = new_entry(seq, at, Kind::Statement);
        entry.statement = statement;
        if let Some(text) = &source
            && let Some(i) = self.unattached.iter().position(|(t, _)| t == text)
            && let Some((_, decision)) = self.unattached.remove(i)
        {
            entry.decision = Some(decision);
        }
        let id = self.add_slot(entry, at, false);
        if let Some(slot) = self.slot_mut(id) {
            slot.source = source;
            slot.query = query;
        }
        id
    }

    fn client_message(&mut self, message: Message, seq: u64, at: i64) {
        let (tag, body) = match message {
            Message::Whole(tag, body) => (tag, body),
            Message::Oversized(tag, len) => {
                match tag {
                    b'Q' => {
                        let text = format!("[a statement of {len} bytes, not shown]");
                        let id = self.add_statement(seq, at, Some(text), None, None);
                        self.owed.push_back(Owed::Results(id));
                        self.owed.push_back(Owed::Ready { text: None });
                    }
                    b'B' => {
                        self.portals.remove(&Vec::new());
                    }
                    b'd' => self.copy_row(self.copy_in, None),
                    _ => {}
                }
                return;
            }
        };
        let mut r = Reader(&body);
        match tag {
            b'Q' => {
                let Some(sql) = r.cstr() else { return };
                let text = cut_text(sql, MAX_STATEMENT_BYTES);
                let query = self.next_query;
                self.next_query += 1;
                for statement in split_statements(&text) {
                    let id = self.add_statement(seq, at, Some(statement), Some(text.clone()), Some(query));
                    self.owed.push_back(Owed::Results(id));
                }
                self.owed.push_back(Owed::Ready { text: None });
            }
            b'P' => {
                let (Some(name), Some(sql)) = (r.cstr(), r.cstr()) else { return };
                let text = cut_text(sql, MAX_STATEMENT_BYTES);
                self.batch_text = Some(text.clone());
                let key = name_key(name);
                if self.prepared.len() < MAX_NAMES || self.prepared.contains_key(&key) {
                    self.prepared.insert(key, Some(text));
                }
            }
            b'B' => {
                let Some(portal) = r.cstr() else { return };
                let Some(statement) = r.cstr() else { return };
                let text = self.prepared.get(&name_key(statement)).cloned().flatten();
                let mut formats = Vec::new();
                let Some(n) = r.i16() else { return };
                for _ in 0..n.max(0) {
                    let Some(f) = r.i16() else { return };
                    formats.push(f);
                }
                let Some(n) = r.i16() else { return };
                let mut params = Vec::new();
                let mut kept = 0;
                for i in 0..n.max(0) as usize {
                    let Some(value) = r.value() else { return };
                    if i < MAX_FIELDS && kept < MAX_PORTAL_PARAM_BYTES {
                        let shown = value.map(|v| show_value(v, Some(format_of(&formats, i))));
                        kept += shown.as_ref().map_or(4, String::len);
                        params.push(shown);
                    }
                }
                let mut results = Vec::new();
                if let Some(n) = r.i16() {
                    for _ in 0..n.max(0) {
                        let Some(f) = r.i16() else { break };
                        results.push(f);
                    }
                }
                let key = name_key(portal);
                if self.portals.len() < MAX_NAMES || self.portals.contains_key(&key) {
                    self.portals.insert(key, Portal { text, params, formats: results });
                }
            }
            b'E' => {
                let Some(name) = r.cstr() else { return };
                let portal = self.portals.get(&name_key(name)).cloned();
                let (text, params, formats) = match portal {
                    Some(p) => (p.text, Some(p.params), p.formats),
                    None => (None, None, Vec::new()),
                };
                let id = self.add_statement(seq, at, text.clone(), text, None);
                if let Some(slot) = self.slot_mut(id) {
                    slot.entry.parameters = params;
                    slot.formats = formats;
                }
                self.owed.push_back(Owed::Results(id));
                self.batch_text = None;
            }
            b'S' => {
                let text = self.batch_text.take();
                self.owed.push_back(Owed::Ready { text });
            }
            b'C' => {
                let (Some(kind), Some(name)) = (r.u8(), r.cstr()) else { return };
                match kind {
                    b'S' => {
                        self.prepared.remove(&name_key(name));
                    }
                    b'P' => {
                        self.portals.remove(&name_key(name));
                    }
                    _ => {}
                }
            }
            b'F' => {
                let oid = r.i32().unwrap_or_default();
                let text = format!("[function call, oid {oid}]");
                let id = self.add_statement(seq, at, Some(text), None, None);
                self.owed.push_back(Owed::Results(id));
                self.owed.push_back(Owed::Ready { text: None });
            }
            b'd' => self.copy_row(self.copy_in, Some(&body)),
            _ => {}
        }
    }

    /// The slot the server is answering now: the first owed, unless a ReadyForQuery comes first.
    fn answering(&self) -> Option<u64> {
        match self.owed.front()? {
            Owed::Results(id) => Some(*id),
            Owed::Ready { .. } => None,
        }
    }

    /// Completes the slot being answered and moves on.
    fn complete_answering(&mut self, at: i64) -> Option<u64> {
        let id = self.answering()?;
        self.owed.pop_front();
        self.complete(id, at);
        Some(id)
    }

    fn complete(&mut self, id: u64, at: i64) {
        if self.copy_in == Some(id) {
            self.copy_in = None;
        }
        self.copy_out = false;
        if let Some(slot) = self.slot_mut(id)
            && !slot.complete
        {
            slot.complete = true;
            slot.entry.duration_ms = Some(at.saturating_sub(slot.at_micros).max(0) as f64 / 1000.0);
        }
    }

    fn server_message(&mut self, message: Message, seq: u64, at: i64) {
        let (tag, body) = match message {
            Message::Whole(tag, body) => (tag, body),
            Message::Oversized(tag, _) => {
                if (tag == b'D' || (tag == b'd' && self.copy_out))
                    && let Some(id) = self.answering()
                    && let Some(slot) = self.slot_mut(id)
                {
                    *slot.entry.row_count.get_or_insert(0) += 1;
                    slot.entry.rows_truncated = true;
                }
                return;
            }
        };
        let mut r = Reader(&body);
        match tag {
            b'T' => {
                let Some(n) = r.i16() else { return };
                let mut columns = Vec::new();
                let mut formats = Vec::new();
                for _ in 0..n.max(0) {
                    let Some(name) = r.cstr() else { return };
                    // table oid, column number, type oid, size, modifier, format
                    let Some(_) = r.take(4 + 2 + 4 + 2 + 4) else { return };
                    let Some(format) = r.i16() else { return };
                    if columns.len() < MAX_FIELDS {
                        columns.push(cut_text(name, MAX_VALUE_BYTES));
                        formats.push(format);
                    }
                }
                if let Some(id) = self.answering()
                    && let Some(slot) = self.slot_mut(id)
                {
                    slot.entry.columns = Some(columns);
                    slot.entry.rows.get_or_insert_with(Vec::new);
                    slot.entry.row_count.get_or_insert(0);
                    slot.formats = formats;
                    slot.described = true;
                }
            }
            b'D' => {
                let Some(id) = self.answering() else { return };
                let retained = self.retained;
                let Some(slot) = self.slot_mut(id) else { return };
                let Some(n) = r.i16() else { return };
                *slot.entry.row_count.get_or_insert(0) += 1;
                let rows = slot.entry.rows.get_or_insert_with(Vec::new);
                if rows.len() >= MAX_ROWS || slot.row_bytes >= MAX_ENTRY_ROW_BYTES || retained >= MAX_RETAINED_ROW_BYTES
                {
                    slot.entry.rows_truncated = true;
                    return;
                }
                let mut row = Vec::new();
                let mut bytes = 0usize;
                for i in 0..n.max(0) as usize {
                    let Some(value) = r.value() else { break };
                    if i >= MAX_FIELDS {
                        break;
                    }
                    let format = slot.described.then(|| format_of(&slot.formats, i)).or_else(|| {
                        // Without a description, the Bind's result formats (if any said binary).
                        (!slot.formats.is_empty()).then(|| format_of(&slot.formats, i))
                    });
                    let shown = value.map(|v| show_value(v, format));
                    // What it costs in memory: the value and its `Option<String>`.
                    bytes += shown.as_ref().map_or(0, String::len) + VALUE_OVERHEAD;
                    row.push(shown);
                }
                bytes += VALUE_OVERHEAD;
                rows.push(row);
                slot.row_bytes += bytes;
                self.retained += bytes;
            }
            b'C' => {
                let tag = r.cstr().map(|t| cut_text(t, MAX_VALUE_BYTES));
                if let Some(id) = self.answering()
                    && let Some(slot) = self.slot_mut(id)
                {
                    slot.entry.command_tag = tag;
                }
                self.complete_answering(at);
            }
            b'I' | b's' | b'V' => {
                self.complete_answering(at);
            }
            b'E' => self.server_error(error_fields(&body), seq, at),
            b'N' => {
                let mut entry = new_entry(seq, at, Kind::Notice);
                entry.error = Some(error_fields(&body));
                self.add_slot(entry, at, true);
            }
            b'Z' => self.ready(at),
            b'G' | b'H' | b'W' => {
                if let Some(id) = self.answering() {
                    if tag == b'G' {
                        self.copy_in = Some(id);
                    } else {
                        self.copy_out = true;
                    }
                    if let Some(slot) = self.slot_mut(id) {
                        slot.entry.columns.get_or_insert_with(|| vec!["copy".to_owned()]);
                        slot.entry.rows.get_or_insert_with(Vec::new);
                        slot.entry.row_count.get_or_insert(0);
                    }
                }
            }
            b'd' if self.copy_out => {
                let id = self.answering();
                self.copy_row(id, Some(&body));
            }
            _ => {}
        }
    }

    /// COPY data as one-column rows, a line each (`None`: a message too long to keep).
    fn copy_row(&mut self, id: Option<u64>, data: Option<&[u8]>) {
        let Some(id) = id else { return };
        let mut retained = self.retained;
        let Some(slot) = self.slot_mut(id) else { return };
        let Some(data) = data else {
            *slot.entry.row_count.get_or_insert(0) += 1;
            slot.entry.rows_truncated = true;
            return;
        };
        let rows = slot.entry.rows.get_or_insert_with(Vec::new);
        let count = slot.entry.row_count.get_or_insert(0);
        // Text COPY data is lines; the end marker of psql's input is not data.
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty() && *l != b"\\.") {
            *count += 1;
            if rows.len() >= MAX_ROWS || slot.row_bytes >= MAX_ENTRY_ROW_BYTES || retained >= MAX_RETAINED_ROW_BYTES {
                slot.entry.rows_truncated = true;
                continue;
            }
            let shown = show_value(line, None);
            let bytes = shown.len() + 8;
            rows.push(vec![Some(shown)]);
            slot.row_bytes += bytes;
            retained += bytes;
        }
        self.retained = retained;
    }

    fn server_error(&mut self, error: ErrorView, seq: u64, at: i64) {
        if let Some(id) = self.answering() {
            if let Some(slot) = self.slot_mut(id) {
                slot.entry.error = Some(error);
            }
            let query = self.slot_mut(id).and_then(|s| s.query);
            self.owed.pop_front();
            self.complete(id, at);
            // Postgres runs nothing more of the query (simple protocol) or of the
            // batch up to its Sync (extended): those statements are left out.
            while let Some(Owed::Results(next)) = self.owed.front().cloned() {
                let same = match query {
                    Some(q) => self.slot_mut(next).is_some_and(|s| s.query == Some(q)),
                    None => true,
                };
                if !same {
                    break;
                }
                self.owed.pop_front();
                if let Some(slot) = self.slot_mut(next) {
                    slot.dropped = true;
                }
            }
            return;
        }
        // An error no executed statement takes: a Parse or Bind refused in a
        // batch with no Execute, or a FATAL between statements.
        if let Some(Owed::Ready { text }) = self.owed.front_mut() {
            let text = text.take();
            let id = self.add_statement(seq, at, text.clone(), text, None);
            if let Some(slot) = self.slot_mut(id) {
                slot.entry.error = Some(error);
            }
            self.complete(id, at);
            return;
        }
        let mut entry = new_entry(seq, at, Kind::Notice);
        entry.error = Some(error);
        self.add_slot(entry, at, true);
    }

    /// ReadyForQuery: everything owed up to it is answered.
    fn ready(&mut self, at: i64) {
        if !self.owed.iter().any(|o| matches!(o, Owed::Ready { .. })) {
            return;
        }
        while let Some(owed) = self.owed.pop_front() {
            match owed {
                Owed::Results(id) => self.complete(id, at),
                Owed::Ready { .. } => break,
            }
        }
        self.copy_in = None;
        self.copy_out = false;
    }

    fn decision(&mut self, d: &v1::Decision) {
        let verdict = match v1::Verdict::try_from(d.verdict) {
            Ok(v1::Verdict::Allow) => "allow",
            Ok(v1::Verdict::Deny) => "deny",
            Ok(v1::Verdict::Review) => "review",
            Ok(v1::Verdict::Mask) => "mask",
            _ => return,
        };
        let view = DecisionView {
            verdict: verdict.to_owned(),
            rule: cut_text(d.rule.as_bytes(), MAX_VALUE_BYTES),
            reason: cut_text(d.reason.as_bytes(), MAX_STATEMENT_BYTES),
            review_id: cut_text(d.review_id.as_bytes(), MAX_VALUE_BYTES),
            approver: cut_text(d.approver.as_bytes(), MAX_VALUE_BYTES),
        };
        let text = cut_text(d.statement.as_bytes(), MAX_STATEMENT_BYTES);
        let open = |s: &Slot| !s.dropped && s.entry.kind == Kind::Statement;
        let undecided = |s: &Slot| s.entry.decision.as_ref().is_none_or(|d| d.verdict == "review");
        let found = if text.is_empty() {
            self.slots.iter().rposition(|s| open(s) && undecided(s))
        } else {
            let same = |s: &Slot| s.source.as_deref() == Some(text.as_str());
            // The first of its statements not decided yet, else the latest decided.
            self.slots
                .iter()
                .position(|s| open(s) && same(s) && undecided(s))
                .or_else(|| self.slots.iter().rposition(|s| open(s) && same(s)))
        };
        let Some(index) = found else {
            // Prepared, not executed yet: kept for the statement that executes it.
            if self.unattached.len() >= MAX_UNATTACHED {
                self.unattached.pop_front();
            }
            self.unattached.push_back((text, view));
            return;
        };
        let Some(slot) = self.slots.get(index) else { return };
        // An allow after another decision on the same statement (its Bind after
        // its Parse) changes nothing.
        if verdict == "allow" && !undecided(slot) {
            return;
        }
        let query = slot.query;
        let id = self.first_id + index as u64;
        let ids: Vec<u64> = match query {
            // Every statement of a simple query shares the query's decision.
            Some(q) => self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.query == Some(q) && !s.dropped)
                .map(|(i, _)| self.first_id + i as u64)
                .collect(),
            None => vec![id],
        };
        let refused = verdict == "deny";
        if refused && ids.len() > 1 {
            // A refused query runs as one failing statement: show it whole.
            let whole = text.clone();
            let others: std::collections::HashSet<u64> = ids.iter().skip(1).copied().collect();
            self.owed.retain(|o| !matches!(o, Owed::Results(x) if others.contains(x)));
            for other in &others {
                if let Some(slot) = self.slot_mut(*other) {
                    slot.dropped = true;
                }
            }
            if let Some(slot) = self.slot_mut(id) {
                slot.entry.statement = Some(whole);
                slot.entry.decision = Some(view);
            }
            return;
        }
        for x in ids {
            if let Some(slot) = self.slot_mut(x) {
                slot.entry.decision = Some(view.clone());
            }
        }
    }
}

fn new_entry(seq: u64, at: i64, kind: Kind) -> Entry {
    Entry {
        seq,
        at: format_micros(at),
        kind,
        statement: None,
        parameters: None,
        decision: None,
        columns: None,
        rows: None,
        row_count: None,
        rows_truncated: false,
        command_tag: None,
        error: None,
        duration_ms: None,
    }
}

/// An ErrorResponse's or NoticeResponse's fields: severity (the untranslated one
/// when sent), SQLSTATE and message.
fn error_fields(body: &[u8]) -> ErrorView {
    let mut r = Reader(body);
    let (mut severity, mut plain, mut sqlstate, mut message) = (None, None, None, None);
    while let Some(code) = r.u8() {
        if code == 0 {
            break;
        }
        let Some(value) = r.cstr() else { break };
        match code {
            b'S' => severity = Some(value),
            b'V' => plain = Some(value),
            b'C' => sqlstate = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
    }
    let text = |v: Option<&[u8]>| v.map(|v| cut_text(v, MAX_STATEMENT_BYTES)).unwrap_or_default();
    ErrorView { severity: text(plain.or(severity)), sqlstate: text(sqlstate), message: text(message) }
}

/// A whole recording's entries, for tests and small sessions: every frame through one decoder.
pub fn decode_all<'a>(frames: impl IntoIterator<Item = &'a v1::Frame>) -> Vec<Entry> {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for frame in frames {
        decoder.push(frame);
        while let Some(entry) = decoder.pop() {
            out.push(entry);
        }
    }
    out
}

/// The key a statement or portal name is remembered by: the name, or past
/// `MAX_NAME_KEY` bytes its first bytes and a SHA-256 digest of it (a
/// recorded client may use names of up to a message's size).
fn name_key(name: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    if name.len() <= MAX_NAME_KEY {
        return name.to_vec();
    }
    let mut key = name.get(..MAX_NAME_KEY / 2).unwrap_or(name).to_vec();
    key.push(0);
    key.extend_from_slice(&Sha256::digest(name));
    key
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use bytes::Bytes;

    /// A capture of a real session (`testdata/timeline/*.frames`): records of
    /// direction (`c` or `s`), time (unix µs, i64) and length (u32), big-endian,
    /// then the bytes as they crossed the wire, from the end of the startup
    /// message on (where a gateway's recording starts).
    fn capture(name: &str) -> Vec<v1::Frame> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/timeline").join(name);
        let bytes = std::fs::read(&path).unwrap();
        let mut frames = Vec::new();
        let mut r = Reader(&bytes);
        while let Some(dir) = r.u8() {
            let at = i64::from_be_bytes(r.take(8).unwrap().try_into().unwrap());
            let len = u32::from_be_bytes(r.take(4).unwrap().try_into().unwrap()) as usize;
            let data = r.take(len).unwrap().to_vec();
            let body =
                if dir == b'c' { Body::ClientBytes(Bytes::from(data)) } else { Body::ServerBytes(Bytes::from(data)) };
            frames.push(frame(frames.len() as u64 + 1, at, body));
        }
        frames
    }

    fn frame(seq: u64, at: i64, body: Body) -> v1::Frame {
        v1::Frame { session_id: String::new(), seq, at_unix_micros: at, body: Some(body) }
    }

    /// Renumbers frames 1.. after frames were inserted.
    fn renumber(frames: &mut [v1::Frame]) {
        for (i, f) in frames.iter_mut().enumerate() {
            f.seq = i as u64 + 1;
        }
    }

    fn end(seq: u64, at: i64) -> v1::Frame {
        frame(seq, at, Body::End(v1::SessionEnd { reason: "client closed the session".into(), ..Default::default() }))
    }

    fn decision(statement: &str, verdict: v1::Verdict, rule: &str) -> Body {
        Body::Decision(v1::Decision {
            statement: statement.into(),
            verdict: verdict as i32,
            rule: rule.into(),
            reason: format!("{rule} says so"),
            ..Default::default()
        })
    }

    fn statements(entries: &[Entry]) -> Vec<Option<&str>> {
        entries.iter().filter(|e| e.kind == Kind::Statement).map(|e| e.statement.as_deref()).collect()
    }

    fn cells(rows: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
        rows.iter().map(|r| r.iter().map(|c| c.map(str::to_owned)).collect()).collect()
    }

    #[test]
    fn a_psql_session_reads_as_its_statements_rows_errors_notices_and_copies() {
        let mut frames = capture("psql.frames");
        let last = frames.last().unwrap().at_unix_micros;
        frames.push(end(0, last));
        renumber(&mut frames);
        let entries = decode_all(&frames);
        assert_eq!(
            statements(&entries),
            [
                Some("SELECT id, name, email FROM people ORDER BY id"),
                Some("SELECT 1 AS one"),
                Some("SELECT 'two;' AS \"semi;colon\""),
                Some("SELECT * FROM nope"),
                Some("DO $$ BEGIN RAISE NOTICE 'hello from %', 'do'; END $$"),
                Some("COPY (SELECT id, name FROM people ORDER BY id) TO STDOUT"),
                Some("CREATE TEMP TABLE t (a int, b text)"),
                Some("COPY t FROM STDIN"),
                Some("SELECT count(*) FROM t"),
                // psql 15 sent the line without `\bind`'s parameters.
                Some("SELECT $1::int + 1 AS next, $2::text AS label"),
            ]
        );
        let first = &entries[0];
        assert_eq!(first.columns.as_deref(), Some(&["id".to_owned(), "name".into(), "email".into()][..]));
        assert_eq!(
            first.rows,
            Some(cells(&[&[Some("1"), Some("café"), Some("[redacted]")], &[Some("2"), Some("Zoë"), None]]))
        );
        assert_eq!((first.row_count, first.rows_truncated), (Some(2), false));
        assert_eq!(first.command_tag.as_deref(), Some("SELECT 2"));
        assert!(first.duration_ms.unwrap() >= 0.0 && first.at.ends_with('Z') && first.at.len() == 27, "{first:?}");

        let second = &entries[2];
        assert_eq!(second.columns.as_deref(), Some(&["semi;colon".to_owned()][..]));
        assert_eq!(second.rows, Some(cells(&[&[Some("two;")]])));

        let failed = &entries[3];
        let error = failed.error.as_ref().unwrap();
        assert_eq!((error.severity.as_str(), error.sqlstate.as_str()), ("ERROR", "42P01"));
        assert_eq!(error.message, "relation \"nope\" does not exist");
        assert_eq!(failed.command_tag, None);

        // The notice comes as an entry of its own, after the DO that raised it.
        let notice = entries.iter().find(|e| e.kind == Kind::Notice).unwrap();
        assert_eq!(notice.error.as_ref().unwrap().message, "hello from do");
        assert_eq!(notice.error.as_ref().unwrap().severity, "NOTICE");

        let copy_out =
            entries.iter().find(|e| e.statement.as_deref().is_some_and(|s| s.ends_with("TO STDOUT"))).unwrap();
        assert_eq!(copy_out.rows, Some(cells(&[&[Some("1\tcafé")], &[Some("2\tZoë")]])));
        assert_eq!(copy_out.command_tag.as_deref(), Some("COPY 2"));
        let copy_in = entries.iter().find(|e| e.statement.as_deref() == Some("COPY t FROM STDIN")).unwrap();
        assert_eq!(copy_in.rows, Some(cells(&[&[Some("1\tone")], &[Some("2\ttwo")]])));
        assert_eq!(copy_in.command_tag.as_deref(), Some("COPY 2"));

        let counted = entries.iter().find(|e| e.statement.as_deref() == Some("SELECT count(*) FROM t")).unwrap();
        assert_eq!(counted.rows, Some(cells(&[&[Some("2")]])));
        assert_eq!(entries.last().unwrap().kind, Kind::End);
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "entries in seq order: {seqs:?}");
    }

    #[test]
    fn extended_protocol_statements_carry_their_parameters_named_or_not() {
        let mut frames = capture("psycopg.frames");
        frames.push(end(0, 0));
        renumber(&mut frames);
        let entries = decode_all(&frames);
        let stmts = statements(&entries);
        assert_eq!(
            stmts,
            [
                Some("SELECT $1::int + 1 AS next, $2::text AS label, $3::text AS nothing"),
                Some("SELECT name FROM people WHERE id = $1"),
                // Prepared once under a name, bound and executed again by that name.
                Some("SELECT name FROM people WHERE id = $1"),
                Some("SELECT $1::bytea AS b"),
                Some("SELECT 1/$1::int AS boom"),
            ]
        );
        let first = &entries[0];
        assert_eq!(first.parameters.as_ref().unwrap()[1].as_deref(), Some("x"));
        assert_eq!(first.parameters.as_ref().unwrap()[2], None);
        assert_eq!(first.rows, Some(cells(&[&[Some("42"), Some("x"), None]])));
        assert_eq!(entries[1].rows, Some(cells(&[&[Some("café")]])));
        assert_eq!(entries[2].rows, Some(cells(&[&[Some("Zoë")]])));
        assert_eq!(entries[2].command_tag.as_deref(), Some("SELECT 1"));
        // Binary parameters and results as hex.
        assert_eq!(entries[3].parameters, Some(vec![Some("\\x0001".to_owned())]));
        assert_eq!(entries[3].rows, Some(cells(&[&[Some("\\x0001")]])));
        assert_eq!(entries[4].error.as_ref().unwrap().sqlstate, "22012");
    }

    #[test]
    fn bytes_split_anywhere_across_frames_decode_the_same() {
        let frames = capture("psql.frames");
        let whole = decode_all(&frames);
        // Every frame cut into one-byte frames.
        let mut split = Vec::new();
        for f in &frames {
            let (bytes, client) = match f.body.as_ref().unwrap() {
                Body::ClientBytes(b) => (b, true),
                Body::ServerBytes(b) => (b, false),
                _ => unreachable!(),
            };
            for b in bytes {
                let body = if client {
                    Body::ClientBytes(Bytes::from(vec![*b]))
                } else {
                    Body::ServerBytes(Bytes::from(vec![*b]))
                };
                split.push(frame(0, f.at_unix_micros, body));
            }
        }
        renumber(&mut split);
        let pieces = decode_all(&split);
        let strip = |e: &[Entry]| -> Vec<Entry> {
            e.iter().map(|e| Entry { seq: 0, duration_ms: None, at: String::new(), ..e.clone() }).collect()
        };
        assert_eq!(strip(&whole), strip(&pieces));
        assert!(whole.len() >= 10);
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut q = vec![b'Q'];
        q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        q.extend_from_slice(sql.as_bytes());
        q.push(0);
        q
    }

    fn error(severity: &str, code: &str, message: &str) -> Vec<u8> {
        let body = format!("S{severity}\0V{severity}\0C{code}\0M{message}\0\0");
        let mut e = vec![b'E'];
        e.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        e.extend_from_slice(body.as_bytes());
        e
    }

    #[test]
    fn decisions_attach_to_their_statement_and_a_refused_query_shows_whole() {
        let mut frames = capture("psql.frames");
        // The gateway records a decision right after the client bytes it decided.
        frames.insert(
            2,
            frame(0, 0, decision("SELECT id, name, email FROM people ORDER BY id;", v1::Verdict::Allow, "")),
        );
        let multi = "SELECT 1; DELETE FROM people";
        let mut refused = error("ERROR", "42501", "permission denied: several statements in one query");
        refused.extend_from_slice(b"Z\0\0\0\x05I");
        frames.splice(
            4..4,
            [
                frame(0, 0, Body::ClientBytes(Bytes::from(query(multi)))),
                frame(0, 0, decision(multi, v1::Verdict::Deny, "builtin:multiple-statements")),
                frame(0, 0, Body::ServerBytes(Bytes::from(refused))),
            ],
        );
        renumber(&mut frames);
        let entries = decode_all(&frames);
        assert_eq!(entries[0].decision.as_ref().unwrap().verdict, "allow");
        assert_eq!(entries[0].rows.as_ref().unwrap().len(), 2);
        let refused = &entries[1];
        assert_eq!(refused.statement.as_deref(), Some(multi));
        let d = refused.decision.as_ref().unwrap();
        assert_eq!((d.verdict.as_str(), d.rule.as_str()), ("deny", "builtin:multiple-statements"));
        assert_eq!(refused.error.as_ref().unwrap().sqlstate, "42501");
        assert_eq!(entries[2].statement.as_deref(), Some("SELECT 1 AS one"));
        assert_eq!(entries[2].decision, None);
    }

    #[test]
    fn an_error_leaves_out_what_postgres_did_not_run_and_a_fatal_stands_alone() {
        let mut server = b"T\0\0\0\x1a\0\x01n\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0".to_vec();
        server.extend_from_slice(b"D\0\0\0\x0b\0\x01\0\0\0\x011C\0\0\0\x0dSELECT 1\0");
        server.extend(error("ERROR", "22012", "division by zero"));
        server.extend_from_slice(b"Z\0\0\0\x05I");
        let frames = [
            frame(1, 0, Body::ClientBytes(Bytes::from(query("SELECT 1; SELECT 1/0; SELECT 3")))),
            frame(2, 0, Body::ServerBytes(Bytes::from(server))),
            frame(3, 0, Body::ServerBytes(Bytes::from(error("FATAL", "42501", "access ended: grant revoked")))),
            end(4, 0),
        ];
        let entries = decode_all(&frames);
        assert_eq!(statements(&entries), [Some("SELECT 1"), Some("SELECT 1/0")]);
        assert_eq!(entries[0].rows, Some(cells(&[&[Some("1")]])));
        assert_eq!(entries[1].error.as_ref().unwrap().message, "division by zero");
        assert_eq!(entries[2].kind, Kind::Notice);
        assert_eq!(entries[2].error.as_ref().unwrap().severity, "FATAL");
        assert_eq!(entries[3].kind, Kind::End);
    }

    #[test]
    fn a_review_outcome_replaces_the_hold() {
        let q = b"DELETE FROM people WHERE id = 1";
        let mut query = vec![b'Q'];
        query.extend_from_slice(&((q.len() + 5) as u32).to_be_bytes());
        query.extend_from_slice(q);
        query.push(0);
        let text = std::str::from_utf8(q).unwrap();
        let mut frames = vec![
            frame(1, 1_000_000, Body::ClientBytes(Bytes::from(query))),
            frame(2, 1_000_010, decision(text, v1::Verdict::Review, "writes-need-review")),
        ];
        let mut approved = v1::Decision {
            statement: text.into(),
            verdict: v1::Verdict::Allow as i32,
            rule: "writes-need-review".into(),
            reason: "approved".into(),
            review_id: "r1".into(),
            approver: "alice".into(),
        };
        frames.push(frame(3, 3_000_000, Body::Decision(approved.clone())));
        frames.push(frame(4, 3_500_000, Body::ServerBytes(Bytes::from(b"C\0\0\0\x0dDELETE 1\0Z\0\0\0\x05I".to_vec()))));
        let entries = decode_all(&frames);
        assert_eq!(entries.len(), 1);
        let d = entries[0].decision.as_ref().unwrap();
        assert_eq!((d.verdict.as_str(), d.approver.as_str(), d.review_id.as_str()), ("allow", "alice", "r1"));
        assert_eq!(entries[0].command_tag.as_deref(), Some("DELETE 1"));
        assert_eq!(entries[0].duration_ms, Some(2500.0));
        approved.verdict = 99;
        assert!(decode_all(&[frame(1, 0, Body::Decision(approved))]).is_empty());
    }

    #[test]
    fn rows_are_kept_up_to_the_bound_and_counted_past_it() {
        let mut server = Vec::new();
        server.extend_from_slice(b"T\0\0\0\x1a\0\x01n\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
        for i in 0..(MAX_ROWS + 5) {
            let v = i.to_string();
            server.push(b'D');
            server.extend_from_slice(&((4 + 2 + 4 + v.len()) as u32).to_be_bytes());
            server.extend_from_slice(&1u16.to_be_bytes());
            server.extend_from_slice(&(v.len() as u32).to_be_bytes());
            server.extend_from_slice(v.as_bytes());
        }
        server.extend_from_slice(b"C\0\0\0\x0eSELECT 1005\0Z\0\0\0\x05I");
        let long = "x".repeat(MAX_STATEMENT_BYTES + 10);
        let mut query = vec![b'Q'];
        query.extend_from_slice(&((long.len() + 5) as u32).to_be_bytes());
        query.extend_from_slice(long.as_bytes());
        query.push(0);
        let entries = decode_all(&[
            frame(1, 0, Body::ClientBytes(Bytes::from(query))),
            frame(2, 0, Body::ServerBytes(Bytes::from(server))),
        ]);
        let e = &entries[0];
        assert_eq!(e.rows.as_ref().unwrap().len(), MAX_ROWS);
        assert_eq!((e.row_count, e.rows_truncated), (Some(MAX_ROWS as u64 + 5), true));
        assert!(e.statement.as_ref().unwrap().ends_with('…'));
        assert!(e.statement.as_ref().unwrap().len() <= MAX_STATEMENT_BYTES + 3);
    }

    #[test]
    fn an_oversized_message_is_skipped_unbuffered_and_decoding_goes_on() {
        let mut client = vec![b'Q'];
        let len = MAX_MESSAGE_BYTES + 100;
        client.extend_from_slice(&((len + 4) as u32).to_be_bytes());
        let mut frames = vec![frame(1, 0, Body::ClientBytes(Bytes::from(client)))];
        // Its body arrives over many frames.
        for _ in 0..(len / 65536) {
            frames.push(frame(0, 0, Body::ClientBytes(Bytes::from(vec![b'a'; 65536]))));
        }
        let mut tail = vec![b'a'; len % 65536];
        tail.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
        frames.push(frame(0, 0, Body::ClientBytes(Bytes::from(tail))));
        frames.push(frame(
            0,
            0,
            Body::ServerBytes(Bytes::from(
                b"C\0\0\0\x0bSELECT\0Z\0\0\0\x05IC\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I".to_vec(),
            )),
        ));
        renumber(&mut frames);
        let mut decoder = Decoder::new();
        let mut entries = Vec::new();
        for f in &frames {
            decoder.push(f);
            assert!(decoder.client.buf.len() <= 2 * 65536 + 64, "the oversized message is not buffered");
            entries.extend(std::iter::from_fn(|| decoder.pop()));
        }
        assert_eq!(
            statements(&entries),
            [Some(format!("[a statement of {len} bytes, not shown]").as_str()), Some("SELECT 1")]
        );
        assert_eq!(entries[1].command_tag.as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn garbage_never_panics_and_a_bad_length_stops_that_direction() {
        let frames = [
            frame(1, 0, Body::ClientBytes(Bytes::from(b"Q\0\0\0\x02garbage".to_vec()))),
            frame(2, 0, Body::ClientBytes(Bytes::from(b"Q\0\0\0\x0dSELECT 1\0".to_vec()))),
            frame(3, i64::MAX, Body::ServerBytes(Bytes::from(b"D\xff\xff\xff\xffT\0\0\0\x04".to_vec()))),
            frame(4, i64::MIN, end(4, 0).body.unwrap()),
        ];
        let entries = decode_all(&frames);
        assert_eq!(entries.iter().map(|e| e.kind).collect::<Vec<_>>(), [Kind::End]);
        for bytes in [
            &b"B\0\0\0\x08\0\0\xff\xff"[..],
            b"T\0\0\0\x06\x7f\xff",
            b"E\0\0\0\x05S",
            b"D\0\0\0\x0a\0\x05\xff\xff\xff\xf0",
        ] {
            let mut d = Decoder::new();
            d.push(&frame(1, 0, Body::ClientBytes(Bytes::from(b"Q\0\0\0\x05\0E\0\0\0\x05\0S\0\0\0\x04".to_vec()))));
            d.push(&frame(2, 0, Body::ClientBytes(Bytes::from(bytes.to_vec()))));
            d.push(&frame(3, 0, Body::ServerBytes(Bytes::from(bytes.to_vec()))));
            d.push(&end(4, 0));
            while d.pop().is_some() {}
        }
    }

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(split_statements("SELECT 1; SELECT 2;"), ["SELECT 1", "SELECT 2"]);
        assert_eq!(
            split_statements("SELECT ';' ; SELECT E'\\';' ; SELECT \"a;b\""),
            ["SELECT ';'", "SELECT E'\\';'", "SELECT \"a;b\""]
        );
        assert_eq!(split_statements("SELECT $x$;$x$; SELECT $$;$$"), ["SELECT $x$;$x$", "SELECT $$;$$"]);
        assert_eq!(
            split_statements("SELECT 1 -- ;\n; /* ; /* ; */ ; */ SELECT 2"),
            ["SELECT 1 -- ;", "/* ; /* ; */ ; */ SELECT 2"]
        );
        assert_eq!(split_statements(" ; ;"), [""]);
        assert_eq!(split_statements("SELECT 'it''s;'"), ["SELECT 'it''s;'"]);
        assert_eq!(split_statements("SELECT $1; SELECT a$b; SELECT 2"), ["SELECT $1", "SELECT a$b", "SELECT 2"]);
    }

    #[test]
    fn times_are_rfc3339_with_microseconds() {
        assert_eq!(format_micros(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000000Z");
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cstr(text: &[u8]) -> Vec<u8> {
        [text, b"\0"].concat()
    }

    #[test]
    fn statements_and_portals_with_names_of_any_length_are_found_again() {
        let (name, portal) = (vec![b'n'; 100_000], vec![b'p'; 100_000]);
        let parse = msg(b'P', &[cstr(&name), cstr(b"SELECT $1::int AS x"), vec![0, 0]].concat());
        let bind = [cstr(&portal), cstr(&name), vec![0, 0, 0, 1, 0, 0, 0, 2], b"42".to_vec(), vec![0, 0]].concat();
        let client = [parse, msg(b'B', &bind), msg(b'E', &[cstr(&portal), vec![0, 0, 0, 0]].concat()), msg(b'S', b"")];
        let server = [
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'D', &[vec![0, 1, 0, 0, 0, 2], b"42".to_vec()].concat()),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ];
        let frames = [
            frame(1, 10, Body::ClientBytes(Bytes::from(client.concat()))),
            frame(2, 20, Body::ServerBytes(Bytes::from(server.concat()))),
            end(3, 30),
        ];
        let entries = decode_all(&frames);
        let statement = &entries[0];
        assert_eq!(statement.statement.as_deref(), Some("SELECT $1::int AS x"));
        assert_eq!(statement.parameters, Some(vec![Some("42".to_owned())]));
        assert_eq!(statement.rows, Some(cells(&[&[Some("42")]])));
        assert_eq!(statement.command_tag.as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn thousands_of_queries_in_one_read_each_come_out() {
        let n = 3 * MAX_PENDING;
        let client: Vec<u8> = (0..n).flat_map(|i| msg(b'Q', &cstr(format!("SELECT {i}").as_bytes()))).collect();
        let server: Vec<u8> = (0..n).flat_map(|_| [msg(b'C', b"SELECT 0\0"), msg(b'Z', b"I")].concat()).collect();
        let frames = [
            frame(1, 10, Body::ClientBytes(Bytes::from(client))),
            frame(2, 20, Body::ServerBytes(Bytes::from(server))),
            end(3, 30),
        ];
        let entries = decode_all(&frames);
        let shown = statements(&entries);
        assert_eq!(shown.len(), n);
        assert!(shown.iter().enumerate().all(|(i, s)| *s == Some(format!("SELECT {i}").as_str())));
        // All from the one frame they were read in.
        assert!(entries.iter().filter(|e| e.kind == Kind::Statement).all(|e| e.seq == 1));
    }
}
