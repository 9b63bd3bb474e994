//! Masking of what a session's statements return, row by row.
//!
//! Which result a server message belongs to is followed from the messages the
//! session forwarded ([`Responses`]): each simple query, Parse, Bind, Describe,
//! Execute, Close and Sync owes the client a known set of responses, in order.
//! Before every Execute the gateway adds a Describe of the portal of its own,
//! whose answer it keeps to itself: so every row arrives after a description
//! of its columns, whatever the client asked for.
//!
//! For each column of a result ([`shape`]): a plain column of a table (Postgres
//! names its table and number) is masked whole when a rule names it; a column
//! the statement computes is masked whole when its lineage reaches a masked
//! column; every other text value is read by the content detectors. A masked
//! text value is replaced per the rule's strategy; a masked value of any other
//! type becomes NULL, which every client can read whatever the format. A
//! binary-format column whose values the detectors cannot read (an array, a
//! record, a type the gateway does not know) refuses the whole result: for an
//! Execute, before it runs, by holding it until that Describe is answered
//! where its result may hold such a column ([`Responses::must_describe_first`]);
//! the client's own Describe of such a portal is held the same way, so that
//! nothing after it in its batch runs when it is refused.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use airlock_core::mask;
use airlock_core::policy::{MaskStrategy, ResultMask, WholeMask};
use bytes::{BufMut, Bytes, BytesMut};

use super::protocol::frame::HEADER_LEN;
use super::protocol::{FieldDescription, ProtocolError};
use super::statements::{Portals, Tracked};

/// The response a forwarded client message owes, in the order owed.
#[derive(Debug)]
pub enum Expect {
    /// A simple query (its text): its results, up to its ReadyForQuery.
    Query(Arc<ResultMask>, Bytes),
    /// A fast-path call: its result, up to its ReadyForQuery.
    FunctionCall,
    Parse,
    Bind,
    Close,
    /// ParameterDescription, then RowDescription or NoData; `described`
    /// takes what the answer says of the statement the gateway knows under
    /// that name, if it knows one (`Prepared::unreadable`).
    DescribeStatement {
        described: Option<Arc<OnceLock<bool>>>,
    },
    /// RowDescription or NoData for a portal; `hidden` when the gateway
    /// asked, not the client (its answer is passed on as the client's when
    /// the client's own Describe waits for it); the text of the statement the
    /// portal runs, if known.
    DescribePortal {
        hidden: bool,
        mask: Arc<ResultMask>,
        text: Option<Bytes>,
    },
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended;
    /// the text of the statement its portal runs, if the gateway knows it.
    Execute(Arc<ResultMask>, Option<Bytes>),
    Sync,
}

/// What a masked session keeps of a portal the server holds, from its Bind.
#[derive(Debug, Clone)]
pub(crate) struct BoundPortal {
    /// The mask its rows are read with: its statement's (that of one the
    /// gateway cannot read, when it does not know the statement).
    pub mask: Arc<ResultMask>,
    /// Its Bind asked for a result column in binary format.
    pub binary: bool,
    /// What the server said of its statement's columns, once it described
    /// them (`Prepared::unreadable`); `None` when the statement is unknown.
    pub described: Option<Arc<OnceLock<bool>>>,
    /// Its statement's text, if the gateway knows it.
    pub text: Option<Bytes>,
    /// Set once the server described this portal (this Bind of it) with a
    /// result the detectors can read, read with `mask`.
    pub readable: ReadableFlag,
}

/// Whether a portal's binding was described as readable ([`BoundPortal::readable`]).
pub(crate) type ReadableFlag = Arc<OnceLock<()>>;

/// What a message must wait for its portal's description with (see
/// [`Responses::must_describe_first`]).
#[derive(Debug)]
pub(crate) struct DescribeFirst {
    /// The mask the description is read with.
    pub mask: Arc<ResultMask>,
    /// The text of the portal's statement, if the gateway knows it.
    pub text: Option<Bytes>,
    /// The flag to set when the description is readable: that of the
    /// binding read with `mask`; none when the gateway does not know it.
    pub readable: Option<ReadableFlag>,
}

impl BoundPortal {
    /// Its result may hold a column the detectors cannot read: it asked for
    /// binary results, and neither it nor its statement was described as
    /// having no column of such a kind.
    fn may_be_unreadable(&self) -> bool {
        self.binary
            && self.readable.get().is_none()
            && self.described.as_ref().and_then(|d| d.get().copied()) != Some(false)
    }
}

/// What the server said to the Describe a message waits for (see
/// [`Responses::must_describe_first`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described {
    /// The portal's result can be masked, or it returns none.
    Readable,
    /// The server skipped the Describe (an error earlier in its batch): it
    /// skips the message held behind it too.
    Skipped,
    /// Its result holds a column the detectors cannot read: why.
    Unreadable(String),
}

/// The responses a session's server owes, and the masks they are read with.
#[derive(Debug, Default)]
pub struct Responses {
    pub queue: VecDeque<Expect>,
    /// What is kept of each portal the server holds, by name.
    pub(crate) portals: Portals,
    /// The columns of the result being relayed.
    pub current: Option<Arc<Shape>>,
    /// After a result is refused: server messages are dropped up to the next
    /// ReadyForQuery.
    pub dropping: bool,
    /// The result being relayed is a COPY in binary (its rows cannot be read).
    pub copy_binary: bool,
    /// The server failed a batch whose Sync has not been forwarded yet: it
    /// answers nothing the client sends until that Sync.
    pub skipping: bool,
    /// The answer to the Describe an Execute, or the client's Describe of a
    /// portal, is held behind (see [`Responses::must_describe_first`]).
    pub described: Option<Described>,
    /// The Execute about to be forwarded had its portal described already.
    pub pre_described: bool,
}

impl Responses {
    /// A Parse: its mask is kept with the statement (`statements`).
    pub fn parsed(&mut self) {
        self.queue.push_back(Expect::Parse);
    }

    /// A Bind forwarded in `batch`: the portal is kept (see [`BoundPortal`])
    /// once the server confirms it.
    pub(crate) fn bound(&mut self, portal: &Bytes, bound: BoundPortal, batch: u64) -> Option<Tracked> {
        self.queue.push_back(Expect::Bind);
        self.portals.hold(portal, bound, batch).map(Tracked::Portal)
    }

    /// The text of the statement `portal` was bound to, as a message
    /// forwarded in `batch` finds it, if the gateway knows it.
    pub fn bound_text(&self, portal: &[u8], batch: u64) -> Option<&Bytes> {
        self.portals.get(portal, batch)?.text.as_ref()
    }

    /// The mask an Execute or Describe of `portal` forwarded in `batch` reads
    /// rows with, or `unknown` when the gateway cannot know the portal; and
    /// the text of the statement it was bound to, if known. One lookup.
    pub fn portal(
        &self,
        portal: &Bytes,
        batch: u64,
        unknown: impl FnOnce() -> Arc<ResultMask>,
    ) -> (Arc<ResultMask>, Option<Bytes>) {
        match self.portals.get(portal, batch) {
            Some(bound) => (bound.mask.clone(), bound.text.clone()),
            None => (unknown(), None),
        }
    }

    /// Whether an Execute, or the client's Describe, of `portal` forwarded in
    /// `batch` must wait for the server to describe the portal before it is
    /// forwarded: when its result may hold a binary column the detectors
    /// cannot read, which refuses the result, and which must be refused
    /// before the statement runs (an `UPDATE … RETURNING` would commit
    /// otherwise) and before anything after it in its batch does. Of a portal
    /// the gateway does not know, nothing is known: its mask is `unknown`'s
    /// (see [`Responses::portal`]). `Some` when the message waits.
    pub(crate) fn must_describe_first(
        &self,
        portal: &Bytes,
        batch: u64,
        unknown: impl FnOnce() -> Arc<ResultMask>,
    ) -> Option<DescribeFirst> {
        let waits = match self.portals.get(portal, batch) {
            Some(bound) if !bound.may_be_unreadable() => return None,
            Some(bound) => DescribeFirst {
                mask: bound.mask.clone(),
                text: bound.text.clone(),
                readable: Some(bound.readable.clone()),
            },
            None => DescribeFirst { mask: unknown(), text: None, readable: None },
        };
        waits.mask.has_detectors().then_some(waits)
    }

    /// A Close (what it does to a portal's name goes with it, see `Relay::track_prepared`).
    pub fn closed(&mut self) {
        self.queue.push_back(Expect::Close);
    }

    /// A simple query replaces the unnamed portal.
    pub fn query(&mut self, mask: Arc<ResultMask>, sql: Bytes) {
        self.portals.query();
        self.queue.push_back(Expect::Query(mask, sql));
    }
}

/// What happens to one column's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    Pass,
    /// Read by the content detectors.
    Detect,
    /// A masked column's own value, masked per the rule's strategy.
    Whole(WholeMask),
    /// A value the statement computes from masked columns: always redacted,
    /// NULL too. A partial or hashed `substr(ssn, 1, 1)` would give the value
    /// away a character at a time, and NULL or not one bit per row.
    Computed(WholeMask),
}

/// How a column's values are written, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text in both formats: text, varchar, char, name, unknown.
    Text,
    Json,
    /// Binary: a version byte, then JSON text.
    Jsonb,
    /// Numbers, times, booleans, uuids, bytea, addresses: no text inside a
    /// binary value; a masked one becomes NULL.
    Scalar,
    /// Arrays, records, composites, enums, domains and types the gateway does
    /// not know: text inside, which the detectors read only in text format.
    Other,
}

pub fn value_kind(type_oid: u32) -> ValueKind {
    match type_oid {
        25 | 1043 | 1042 | 19 | 705 | 18 => ValueKind::Text,
        114 => ValueKind::Json,
        3802 => ValueKind::Jsonb,
        16 | 17 | 20 | 21 | 23 | 26 | 700 | 701 | 1700 | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 | 2950 | 869 | 650
        | 829 | 774 | 790 | 28 | 27 | 3220 | 1560 | 1562 => ValueKind::Scalar,
        _ => ValueKind::Other,
    }
}

/// A result's columns: what happens to each, how it is written, in which format.
#[derive(Debug)]
pub struct Shape {
    pub columns: Vec<(Column, ValueKind, bool)>,
    pub mask: Arc<ResultMask>,
    /// Nothing to change in any row.
    pub untouched: bool,
}

/// Why a result cannot be relayed masked.
pub fn unreadable(fields: &[FieldDescription], columns: &[(Column, ValueKind, bool)]) -> Option<String> {
    fields.iter().zip(columns).find_map(|(f, (column, kind, binary))| {
        (*binary && *column == Column::Detect && *kind == ValueKind::Other).then(|| {
            format!(
                "column {} is sent in binary format, in which masking cannot read it; request text format",
                String::from_utf8_lossy(&f.name)
            )
        })
    })
}

pub fn shape(columns: Vec<(Column, ValueKind, bool)>, mask: Arc<ResultMask>) -> Shape {
    let untouched = columns.iter().all(|(c, _, _)| *c == Column::Pass);
    Shape { columns, mask, untouched }
}

/// The DataRow `raw` (header included) with its values masked per `shape`, or
/// `None` when nothing in it changes.
pub fn mask_row(raw: &[u8], shape: &Shape, salt: &[u8]) -> Result<Option<BytesMut>, ProtocolError> {
    let mut out = BytesMut::new();
    Ok(mask_row_into(raw, shape, salt, &mut out)?.then_some(out))
}

/// Appends the DataRow `raw` to `out` with its values masked per `shape`, in
/// one pass and with no copy but the one into `out`; true when a value
/// changed. On an error nothing is appended.
pub fn mask_row_into(raw: &[u8], shape: &Shape, salt: &[u8], out: &mut BytesMut) -> Result<bool, ProtocolError> {
    if shape.untouched {
        out.extend_from_slice(raw);
        return Ok(false);
    }
    let start = out.len();
    let written = write_masked_row(raw, shape, salt, out);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn write_masked_row(raw: &[u8], shape: &Shape, salt: &[u8], out: &mut BytesMut) -> Result<bool, ProtocolError> {
    let malformed = |what| ProtocolError::Malformed { tag: super::protocol::Tag(b'D'), what };
    let body = raw.get(HEADER_LEN..).ok_or(malformed("truncated"))?;
    let count = body
        .get(..2)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_be_bytes)
        .ok_or(malformed("missing column count"))?;
    if usize::from(count) != shape.columns.len() {
        return Err(malformed("row does not match its description"));
    }
    let start = out.len();
    out.reserve(raw.len() + 16 * shape.columns.len());
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_u16(count);
    let mut changed = false;
    let mut at = 2usize;
    for (column, kind, binary) in &shape.columns {
        let len = body
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes)
            .ok_or(malformed("fewer columns than declared"))?;
        at += 4;
        let value = match usize::try_from(len) {
            Err(_) => None,
            Ok(len) => {
                let end = at
                    .checked_add(len)
                    .filter(|e| *e <= body.len())
                    .ok_or(malformed("column longer than the message"))?;
                let value = body.get(at..end);
                at = end;
                value
            }
        };
        let new = match (column, value) {
            // The common partial mask, written in place.
            (Column::Whole(m), Some(v)) if m.strategy == MaskStrategy::Partial && *kind == ValueKind::Text => {
                out.put_i32(i32::try_from(v.len()).map_err(|_| malformed("column too long"))?);
                mask::partial_into(v, out);
                changed = true;
                continue;
            }
            (Column::Computed(_), v) => Some(whole(v.unwrap_or_default(), *kind, *binary, MaskStrategy::Redact, salt)),
            (Column::Pass, _) | (_, None) => None,
            (Column::Whole(m), Some(v)) => Some(whole(v, *kind, *binary, m.strategy, salt)),
            (Column::Detect, Some(v)) => detect(v, *kind, *binary, &shape.mask, salt).map(|d| d.map(Cow::Owned)),
        };
        changed |= new.is_some();
        let value = match &new {
            Some(replaced) => replaced.as_deref(),
            None => value,
        };
        match value {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(i32::try_from(v.len()).map_err(|_| malformed("column too long"))?);
                out.extend_from_slice(v);
            }
        }
    }
    if at != body.len() {
        return Err(malformed("bytes after the last column"));
    }
    let len = i32::try_from(out.len() - start - 1).map_err(|_| malformed("row too long"))?;
    if let Some(b) = out.get_mut(start + 1..start + 5) {
        b.copy_from_slice(&len.to_be_bytes());
    }
    Ok(changed)
}

/// A value masked whole; `None` is NULL.
fn whole(
    value: &[u8],
    kind: ValueKind,
    binary: bool,
    strategy: MaskStrategy,
    salt: &[u8],
) -> Option<Cow<'static, [u8]>> {
    match kind {
        ValueKind::Text => Some(mask::replacement(value, strategy, salt)),
        ValueKind::Json | ValueKind::Jsonb => {
            // A JSON string: a partial mask of JSON text would keep its quotes and
            // escapes, and no longer be JSON.
            let strategy = if strategy == MaskStrategy::Partial { MaskStrategy::Redact } else { strategy };
            let mut out = Vec::new();
            if binary && kind == ValueKind::Jsonb {
                out.push(1);
            }
            out.push(b'"');
            out.extend_from_slice(&mask::replacement(value, strategy, salt));
            out.push(b'"');
            Some(Cow::Owned(out))
        }
        ValueKind::Scalar | ValueKind::Other => None,
    }
}

/// A value read by every rule's detectors: `None` when nothing was found,
/// `Some(None)` for NULL.
fn detect(value: &[u8], kind: ValueKind, binary: bool, m: &ResultMask, salt: &[u8]) -> Option<Option<Vec<u8>>> {
    let (prefix, text) = match (kind, binary) {
        (ValueKind::Jsonb, true) => value.split_at_checked(1)?,
        // Binary values of these hold no text; binary ones of `Other` were refused.
        (ValueKind::Scalar | ValueKind::Other, true) => return None,
        _ => (&[][..], value),
    };
    let mut current: Option<Vec<u8>> = None;
    for (rule, detectors) in m.detectors() {
        let input = current.as_deref().unwrap_or(text);
        if let Some(masked) = mask::mask(input, detectors, rule.strategy, salt) {
            current = Some(masked);
        }
    }
    let masked = current?;
    if kind == ValueKind::Scalar {
        // A number that holds a card number: text in its place would not parse.
        return Some(None);
    }
    let mut out = prefix.to_vec();
    out.extend_from_slice(&masked);
    Some(Some(out))
}

/// A CopyData message's rows read by the detectors; `None` when unchanged.
pub fn mask_copy_data(raw: &[u8], m: &ResultMask, salt: &[u8]) -> Option<BytesMut> {
    let body = raw.get(HEADER_LEN..)?;
    let masked = detect(body, ValueKind::Text, false, m, salt)??;
    let mut out = BytesMut::with_capacity(masked.len() + HEADER_LEN);
    out.put_u8(b'd');
    out.put_i32(i32::try_from(masked.len() + 4).ok()?);
    out.extend_from_slice(&masked);
    Some(out)
}

/// An ErrorResponse or NoticeResponse with its text read by the detectors and,
/// when the statement reads masked columns (`withhold`), its message, detail,
/// hint and context replaced: Postgres quotes values in them (`invalid input
/// syntax for type integer: "123-45-6789"`). Codes, severities and the names
/// of objects stay. `None` when unchanged.
pub fn mask_report(raw: &[u8], m: &ResultMask, withhold: bool, salt: &[u8]) -> Option<BytesMut> {
    let tag = *raw.first()?;
    let body = raw.get(HEADER_LEN..)?;
    let mut fields = Vec::new();
    let mut at = 0;
    while let Some(&code) = body.get(at) {
        if code == 0 {
            break;
        }
        let rest = body.get(at + 1..)?;
        let nul = rest.iter().position(|b| *b == 0)?;
        fields.push((code, rest.get(..nul)?));
        at += nul + 2;
    }
    let mut changed = false;
    let mut out = BytesMut::with_capacity(raw.len());
    out.put_u8(tag);
    out.put_i32(0);
    for (code, value) in fields {
        let text_field = matches!(code, b'M' | b'D' | b'H' | b'W' | b'q');
        let replaced: Option<Vec<u8>> = if withhold && text_field {
            match code {
                b'M' => Some(b"the message is withheld: the statement reads masked columns".to_vec()),
                _ => Some(Vec::new()),
            }
        } else if text_field {
            detect(value, ValueKind::Text, false, m, salt).flatten()
        } else {
            None
        };
        match replaced {
            Some(v) if v.is_empty() => changed = true,
            Some(v) => {
                changed = true;
                out.put_u8(code);
                out.extend(v.into_iter().filter(|b| *b != 0));
                out.put_u8(0);
            }
            None => {
                out.put_u8(code);
                out.extend_from_slice(value);
                out.put_u8(0);
            }
        }
    }
    out.put_u8(0);
    if !changed {
        return None;
    }
    let len = i32::try_from(out.len() - 1).ok()?;
    out.get_mut(1..5)?.copy_from_slice(&len.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::policy::Policy;

    fn result_mask() -> Arc<ResultMask> {
        let policy = Policy::parse(
            "version: 1\nmasking:\n  - name: pii\n    columns: ['*.*.email']\n    detectors: [credit_card]\n    strategy: partial\n",
        )
        .unwrap();
        Arc::new(ResultMask::unread(policy.masking))
    }

    /// The server's description of a statement: `None` not given yet.
    fn described(columns_unreadable: Option<bool>) -> Arc<OnceLock<bool>> {
        let cell = OnceLock::new();
        if let Some(unreadable) = columns_unreadable {
            cell.set(unreadable).unwrap();
        }
        Arc::new(cell)
    }

    #[test]
    fn an_execute_waits_for_a_description_unless_its_result_is_known_readable() {
        let mask = result_mask();
        let no_detectors = Arc::new(ResultMask::unread(Vec::new()));
        let mut r = Responses::default();
        let (unnamed, cursor) = (Bytes::new(), Bytes::from_static(b"cursor"));
        let waits =
            |r: &Responses, portal: &Bytes, batch| r.must_describe_first(portal, batch, || mask.clone()).is_some();
        let bound = |binary, described, text: Option<&'static [u8]>| BoundPortal {
            mask: mask.clone(),
            binary,
            described,
            text: text.map(Bytes::from_static),
            readable: Arc::default(),
        };
        // Nothing known of the portal: it may be binary.
        assert!(waits(&r, &unnamed, 1));
        assert!(r.must_describe_first(&unnamed, 1, || no_detectors.clone()).is_none(), "nothing to read with");
        r.bound(&unnamed, bound(false, None, None), 1);
        assert!(!waits(&r, &unnamed, 1), "text results are always readable");
        assert!(waits(&r, &cursor, 1), "a portal never bound may be binary");
        let change = r.bound(&cursor, bound(true, Some(described(Some(false))), Some(b"SELECT 1")), 1);
        assert!(!waits(&r, &cursor, 1), "binary, of a statement described with no unreadable column");
        assert!(!waits(&r, &unnamed, 1), "each portal keeps its own formats");
        assert_eq!(r.bound_text(b"cursor", 1).map(|t| &t[..]), Some(&b"SELECT 1"[..]));
        assert_eq!(r.bound_text(b"", 1), None);
        // In the next batch, the portal is known once the server confirmed its Bind.
        assert!(waits(&r, &cursor, 2), "its Bind not answered yet");
        let Some(Tracked::Portal(change)) = change else { panic!("the portal is followed") };
        r.portals.confirmed(&cursor, change);
        assert!(!waits(&r, &cursor, 2), "a cursor fetched batch after batch");

        let pending = described(None);
        r.bound(&unnamed, bound(true, Some(pending.clone()), None), 3);
        assert!(waits(&r, &unnamed, 3), "a statement not described yet");
        pending.set(false).unwrap();
        assert!(!waits(&r, &unnamed, 3), "described before the Execute");
        r.bound(&unnamed, bound(true, Some(described(Some(true))), None), 3);
        assert!(waits(&r, &unnamed, 3), "described with a column the detectors cannot read");
        r.bound(&unnamed, bound(true, None, None), 3);
        assert!(waits(&r, &unnamed, 3), "a statement the gateway does not know");
        let flag = r.must_describe_first(&unnamed, 3, || mask.clone()).and_then(|w| w.readable).unwrap();
        flag.set(()).unwrap();
        assert!(!waits(&r, &unnamed, 3), "the portal itself described as readable");
        r.bound(&unnamed, bound(true, None, None), 3);
        assert!(waits(&r, &unnamed, 3), "bound again: described anew");

        // Portals end with their transaction.
        assert!(!waits(&r, &cursor, 4));
        r.portals.transaction_ended();
        assert!(waits(&r, &cursor, 4), "a portal of a transaction that ended");
    }

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_u16(values.len() as u16);
        for v in values {
            match v {
                None => out.put_i32(-1),
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.extend_from_slice(v);
                }
            }
        }
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out.to_vec()
    }

    #[test]
    fn rows_are_masked_per_column_and_kept_well_formed() {
        let m = result_mask();
        let whole = WholeMask { rule: "pii".into(), strategy: MaskStrategy::Redact };
        let columns = vec![
            (Column::Pass, ValueKind::Scalar, false),
            (Column::Whole(whole.clone()), ValueKind::Text, false),
            (Column::Detect, ValueKind::Text, false),
            (Column::Whole(whole.clone()), ValueKind::Scalar, true),
            (Column::Detect, ValueKind::Scalar, false),
            (Column::Whole(whole.clone()), ValueKind::Jsonb, true),
            (Column::Detect, ValueKind::Text, false),
            (Column::Computed(WholeMask { strategy: MaskStrategy::Partial, ..whole }), ValueKind::Text, false),
        ];
        let s = shape(columns, m);
        let raw = row(&[
            Some(b"1"),
            Some(b"ana@example.com"),
            Some(b"card 4111 1111 1111 1111"),
            Some(&[0, 0, 0, 7]),
            Some(b"4111111111111111"),
            Some(b"\x01{\"a\": 1}"),
            None,
            None,
        ]);
        let out = mask_row(&raw, &s, b"t").unwrap().unwrap();
        let expected = row(&[
            Some(b"1"),
            Some(b"[redacted]"),
            Some(b"card **** **** **** 1111"),
            None,
            None,
            Some(b"\x01\"[redacted]\""),
            None,
            // Computed from a masked column: redacted whatever the rule's strategy, NULL too.
            Some(b"[redacted]"),
        ]);
        assert_eq!(out.to_vec(), expected);
        // Nothing found: the row is forwarded as it came.
        let clean = row(&[Some(b"2"), None, Some(b"hello"), None, Some(b"12"), None, None]);
        let s = shape(s.columns[..7].to_vec(), s.mask.clone());
        assert_eq!(mask_row(&clean, &s, b"t").unwrap(), None);
    }

    #[test]
    fn malformed_rows_are_refused() {
        let s = shape(vec![(Column::Detect, ValueKind::Text, false)], result_mask());
        let mut bad = row(&[Some(b"abc")]);
        bad[10] = 0xff; // length now negative
        assert!(mask_row(&bad, &s, b"t").is_err());
        let two = row(&[Some(b"a"), Some(b"b")]);
        assert!(mask_row(&two, &s, b"t").is_err(), "more columns than described");
        let mut long = row(&[Some(b"abc")]);
        long[10] = 9;
        assert!(mask_row(&long, &s, b"t").is_err());
    }

    #[test]
    fn error_text_is_withheld_or_read_by_the_detectors() {
        let m = result_mask();
        let mut raw = BytesMut::new();
        raw.put_u8(b'E');
        raw.put_i32(0);
        for (code, text) in [(b'S', "ERROR"), (b'C', "22P02"), (b'M', "invalid input: \"4111111111111111\"")] {
            raw.put_u8(code);
            raw.extend_from_slice(text.as_bytes());
            raw.put_u8(0);
        }
        raw.put_u8(0);
        let len = (raw.len() - 1) as i32;
        raw[1..5].copy_from_slice(&len.to_be_bytes());
        let read = mask_report(&raw, &m, false, b"t").unwrap();
        assert!(String::from_utf8_lossy(&read).contains("\"************1111\""));
        let withheld = mask_report(&raw, &m, true, b"t").unwrap();
        let text = String::from_utf8_lossy(&withheld);
        assert!(text.contains("withheld") && text.contains("22P02") && !text.contains("4111"), "{text}");
    }
}
