//! The Parse, Bind and Close messages a session forwarded that the server has
//! not answered yet, in the order they went.
//!
//! An answer goes to the oldest message of its kind, which is the first in
//! the list: the server answers in order, and every message that gets a
//! ParseComplete, BindComplete or CloseComplete is in the list (Binds only in
//! a masked session, see `Relay::expect_responses`; an answer of a kind the
//! list does not hold is not looked for). A batch's end drops its messages
//! left unanswered from the front: batches only grow along the list. A
//! statement that changes a name (`DEALLOCATE name`, a query or an Execute)
//! took effect when its batch ends without an error ([`QUERY_DONE`]): those
//! wait in a list of their own, which answers never look through. What a
//! message does to a statement's or a portal's name goes with it (see
//! `statements`), to be applied when it is answered. A client may pipeline
//! thousands before reading an answer, and a session thread serves many
//! sessions, so nothing here looks through the whole list.

use std::collections::VecDeque;

use bytes::Bytes;

use super::statements::{Change, Tracked};

/// What a statement that changes a name (a query, or the Execute of a
/// portal) is owed: the ReadyForQuery that ends its batch, with no error in
/// the batch before it.
pub(crate) const QUERY_DONE: u8 = b'Z';

/// A Parse, Bind or Close forwarded and not yet answered, or a statement
/// that changes a name ([`QUERY_DONE`]).
#[derive(Debug)]
struct Owed {
    /// The tag of the answer owed: ParseComplete, BindComplete, CloseComplete
    /// or [`QUERY_DONE`].
    confirmation: u8,
    /// The statement or portal's name.
    name: Bytes,
    /// The batch it went in, as the number of the ReadyForQuery that ends it
    /// (counted as `Relay::ready_owed` counts them).
    batch: u64,
    /// What it does to the name, where the relay follows the name.
    change: Option<Tracked>,
}

#[derive(Debug, Default)]
pub(crate) struct InFlight {
    owed: VecDeque<Owed>,
    /// The [`QUERY_DONE`] changes, in order.
    done: VecDeque<Owed>,
    /// How many await a ParseComplete, a BindComplete and a CloseComplete.
    kinds: [usize; 3],
    /// The bytes of names and statement text the list holds.
    bytes: usize,
}

/// The bytes a message in the list holds: its name, and a Parse's text.
fn bytes_of(name: &[u8], change: Option<&Tracked>) -> usize {
    let text = match change {
        Some(Tracked::Statement(Change::Held { value, .. })) => value.text.len(),
        _ => 0,
    };
    name.len().saturating_add(text)
}

/// Where `kinds` counts the messages an answer `tag` confirms.
fn kind(tag: u8) -> Option<usize> {
    match tag {
        b'1' => Some(0),
        b'2' => Some(1),
        b'3' => Some(2),
        _ => None,
    }
}

impl InFlight {
    pub(crate) fn len(&self) -> usize {
        self.owed.len() + self.done.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.owed.is_empty() && self.done.is_empty()
    }

    /// The bytes of names and statement text held until answered.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Notes a message just forwarded. Batches never decrease along the
    /// list: a message goes in the batch the next ReadyForQuery ends or a
    /// later one.
    pub(crate) fn push(&mut self, confirmation: u8, name: Bytes, batch: u64, change: Option<Tracked>) {
        let list = if confirmation == QUERY_DONE { &mut self.done } else { &mut self.owed };
        debug_assert!(list.back().is_none_or(|last| last.batch <= batch), "batches go in order");
        self.bytes = self.bytes.saturating_add(bytes_of(&name, change.as_ref()));
        list.push_back(Owed { confirmation, name, batch, change });
        if let Some(count) = kind(confirmation).and_then(|k| self.kinds.get_mut(k)) {
            *count += 1;
        }
    }

    /// A ParseComplete, BindComplete or CloseComplete (`tag`) answers the
    /// oldest message of its kind: the first in the list (see above). Of one
    /// that changes a name, the name and the change.
    pub(crate) fn confirm(&mut self, tag: u8) -> Option<(Bytes, Tracked)> {
        if kind(tag).and_then(|k| self.kinds.get(k)).is_none_or(|count| *count == 0) {
            return None;
        }
        let i = self.owed.iter().position(|o| o.confirmation == tag)?;
        let o = self.owed.remove(i)?;
        self.left(&o);
        Some((o.name, o.change?))
    }

    /// The batches up to `last` are over, by their ReadyForQuery (`ready`) or
    /// by an error: the messages of theirs still here are dropped, and each
    /// that changes a name is passed to `settled` with whether it took effect.
    /// Only a [`QUERY_DONE`] change does, and only at a ReadyForQuery: the
    /// other messages left got no answer.
    pub(crate) fn settle(&mut self, last: u64, ready: bool, mut settled: impl FnMut(Bytes, Tracked, bool)) {
        while self.owed.front().is_some_and(|o| o.batch <= last) {
            let Some(o) = self.owed.pop_front() else { break };
            self.left(&o);
            if let Some(change) = o.change {
                settled(o.name, change, false);
            }
        }
        while self.done.front().is_some_and(|o| o.batch <= last) {
            let Some(o) = self.done.pop_front() else { break };
            self.left(&o);
            if let Some(change) = o.change {
                settled(o.name, change, ready);
            }
        }
    }

    /// Gives every message the batch `renumber` says instead of its own
    /// (which must keep them in order).
    pub(crate) fn renumber(&mut self, renumber: impl Fn(u64) -> u64) {
        for o in self.owed.iter_mut().chain(self.done.iter_mut()) {
            o.batch = renumber(o.batch);
        }
        debug_assert!(
            self.owed.iter().zip(self.owed.iter().skip(1)).all(|(a, b)| a.batch <= b.batch),
            "still in order"
        );
    }

    fn left(&mut self, o: &Owed) {
        if let Some(count) = kind(o.confirmation).and_then(|k| self.kinds.get_mut(k)) {
            *count -= 1;
        }
        self.bytes = self.bytes.saturating_sub(bytes_of(&o.name, o.change.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{InFlight, QUERY_DONE};
    use crate::postgres::statements::{Change, Prepared, Tracked};

    const PARSE_COMPLETE: u8 = b'1';
    const BIND_COMPLETE: u8 = b'2';
    const CLOSE_COMPLETE: u8 = b'3';

    fn name(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn closed() -> Option<Tracked> {
        Some(Tracked::Statement(Change::Closed { seq: 0 }))
    }

    #[test]
    fn an_answer_goes_to_the_oldest_message_of_its_kind() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("a"), 1, closed());
        f.push(BIND_COMPLETE, name("p"), 1, closed());
        f.push(PARSE_COMPLETE, name("b"), 1, closed());
        assert_eq!(f.confirm(BIND_COMPLETE).map(|(n, _)| n), Some(name("p")));
        assert_eq!(f.confirm(PARSE_COMPLETE).map(|(n, _)| n), Some(name("a")));
        // An answer nothing awaits changes nothing.
        assert!(f.confirm(CLOSE_COMPLETE).is_none());
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_message_held_for_its_place_is_answered_there_and_changes_nothing() {
        let mut f = InFlight::default();
        // A portal's Close, in a session that does not follow portals.
        f.push(CLOSE_COMPLETE, name("p"), 1, None);
        f.push(CLOSE_COMPLETE, name("s"), 1, closed());
        f.push(PARSE_COMPLETE, name(""), 2, closed());
        // The portal's CloseComplete is not taken for the statement's.
        assert!(f.confirm(CLOSE_COMPLETE).is_none());
        assert_eq!(f.confirm(CLOSE_COMPLETE).map(|(n, _)| n), Some(name("s")));
        f.push(CLOSE_COMPLETE, name("q"), 2, None);
        let mut unanswered = Vec::new();
        f.settle(2, true, |n, _, _| unanswered.push(n));
        assert_eq!(unanswered, vec![name("")], "the unnamed Parse's, and only it");
        assert!(f.is_empty());
    }

    #[test]
    fn settling_leaves_later_batches_alone() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("a"), 1, closed());
        f.push(BIND_COMPLETE, name("a"), 2, closed());
        f.push(CLOSE_COMPLETE, name("b"), 4, closed());
        let mut unanswered = Vec::new();
        f.settle(3, true, |n, _, _| unanswered.push(n));
        assert_eq!(unanswered, vec![name("a"), name("a")]);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn renumbered_batches_are_settled_by_their_new_numbers() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name(""), 5, closed());
        f.push(PARSE_COMPLETE, name("s"), 6, closed());
        // Two Syncs turned out ignored: batches past them move down by two.
        f.renumber(|b| b.saturating_sub(2));
        let mut unanswered = Vec::new();
        f.settle(3, true, |n, _, _| unanswered.push(n));
        assert_eq!(unanswered, vec![name("")]);
        f.settle(4, true, |_, _, _| {});
        assert!(f.is_empty());
    }

    #[test]
    fn a_query_takes_effect_when_its_batch_ends_without_an_error() {
        let mut f = InFlight::default();
        f.push(QUERY_DONE, name("s"), 1, closed());
        f.push(QUERY_DONE, name("t"), 2, closed());
        assert!(f.confirm(QUERY_DONE).is_none(), "no message answers a query's change");
        let mut settled = Vec::new();
        f.settle(1, true, |n, _, took| settled.push((n, took)));
        // The second query failed: its error ends its batch.
        f.settle(2, false, |n, _, took| settled.push((n, took)));
        assert_eq!(settled, vec![(name("s"), true), (name("t"), false)]);
        assert!(f.is_empty());
    }

    #[test]
    fn an_answer_of_a_kind_not_followed_changes_nothing() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("s"), 1, closed());
        // Binds are not followed here: a BindComplete takes nothing away.
        assert!(f.confirm(BIND_COMPLETE).is_none());
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn names_and_texts_count_until_answered_or_settled() {
        let mut f = InFlight::default();
        let parse = |sql: &str| {
            Some(Tracked::Statement(Change::Held {
                value: Prepared { text: name(sql), mask: None, unreadable: std::sync::Arc::default() },
                epoch: 0,
                seq: 1,
            }))
        };
        f.push(PARSE_COMPLETE, name("s1"), 1, parse("SELECT 1"));
        f.push(PARSE_COMPLETE, name("s2"), 1, parse("SELECT 22"));
        f.push(CLOSE_COMPLETE, name("portal"), 1, None);
        f.push(QUERY_DONE, name("q"), 2, closed());
        assert_eq!(f.bytes(), 2 + 8 + 2 + 9 + 6 + 1);
        f.confirm(PARSE_COMPLETE);
        assert_eq!(f.bytes(), 2 + 9 + 6 + 1);
        f.settle(1, false, |_, _, _| {});
        assert_eq!(f.bytes(), 1, "the second Parse and the Close went unanswered");
        f.settle(2, true, |_, _, _| {});
        assert_eq!(f.bytes(), 0);
    }
}
