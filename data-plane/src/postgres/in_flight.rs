//! The Parse, Bind and Close messages a session forwarded that the server has
//! not answered yet, in the order they went.
//!
//! The relay asks two things of them on every message: whether a name is
//! among them, and which of them an answer or a batch's end settles. A client
//! may pipeline thousands before reading an answer, and a session thread
//! serves many sessions, so neither looks through the whole list: names are
//! counted in a map, and batches, which only grow along the list, end from
//! its front. An answer goes to the oldest message of its kind, which is the
//! first in the list: the server answers in order, and every message that
//! gets a ParseComplete, BindComplete or CloseComplete is in the list (Binds
//! only where they are followed, see `Relay::expect_responses`; an answer of
//! a kind the list does not hold is not looked for). What a Parse or a
//! statement's Close does to its name goes with it (see `statements`), to be
//! applied when it is answered.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::statements::Change;

/// A Parse, Bind or Close forwarded and not yet answered.
#[derive(Debug)]
struct Owed {
    /// The tag of the answer owed: ParseComplete, BindComplete or CloseComplete.
    confirmation: u8,
    /// The statement or portal's name.
    name: Bytes,
    /// The batch it went in, as the number of the ReadyForQuery that ends it
    /// (counted as `Relay::ready_owed` counts them).
    batch: u64,
    /// Named for what it does to the name (a Parse, a statement's Close, a
    /// followed Bind), not only held for its place in the order (a portal's
    /// Close, whose name the relay does not follow).
    named: bool,
    /// Of a Parse or a statement's Close, what it does to the statement.
    change: Option<Change>,
}

/// A message that left the list, as the relay learns of it.
pub(crate) struct Settled {
    pub(crate) name: Bytes,
    pub(crate) change: Option<Change>,
}

#[derive(Debug, Default)]
pub(crate) struct InFlight {
    owed: VecDeque<Owed>,
    /// How many of them carry each non-empty name (statements and portals
    /// alike), and the batch of the last one.
    named: HashMap<Bytes, (usize, u64)>,
    /// How many await a ParseComplete, a BindComplete and a CloseComplete.
    kinds: [usize; 3],
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
        self.owed.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// Notes a message just forwarded. Batches never decrease along the
    /// list: a message goes in the batch the next ReadyForQuery ends or a
    /// later one.
    pub(crate) fn push(&mut self, confirmation: u8, name: Bytes, batch: u64, change: Option<Change>) {
        if !name.is_empty() {
            let (count, last) = self.named.entry(name.clone()).or_default();
            *count += 1;
            *last = batch;
        }
        self.push_owed(Owed { confirmation, name, batch, named: true, change });
    }

    /// Notes a message just forwarded only for its place in the order: its
    /// answer is not taken for another's.
    pub(crate) fn hold_place(&mut self, confirmation: u8, batch: u64) {
        self.push_owed(Owed { confirmation, name: Bytes::new(), batch, named: false, change: None });
    }

    fn push_owed(&mut self, o: Owed) {
        debug_assert!(self.owed.back().is_none_or(|last| last.batch <= o.batch), "batches go in order");
        if let Some(count) = kind(o.confirmation).and_then(|k| self.kinds.get_mut(k)) {
            *count += 1;
        }
        self.owed.push_back(o);
    }

    /// Whether a message naming `name` (not the unnamed statement or portal)
    /// awaits its answer.
    pub(crate) fn awaits_name(&self, name: &[u8]) -> bool {
        !name.is_empty() && self.named.contains_key(name)
    }

    /// Whether a message naming `name` that went before `batch` may still
    /// await its answer (a named one of `batch` too, if there are several).
    pub(crate) fn awaits_name_before(&self, name: &[u8], batch: u64) -> bool {
        !name.is_empty() && self.named.get(name).is_some_and(|(count, last)| *last < batch || *count > 1)
    }

    /// A ParseComplete, BindComplete or CloseComplete (`tag`) answers the
    /// oldest message of its kind: the first in the list (see above). Of one
    /// that names something, what it was.
    pub(crate) fn confirm(&mut self, tag: u8) -> Option<Settled> {
        if kind(tag).and_then(|k| self.kinds.get(k)).is_none_or(|count| *count == 0) {
            return None;
        }
        let i = self.owed.iter().position(|o| o.confirmation == tag)?;
        let o = self.owed.remove(i)?;
        self.forget(&o);
        o.named.then_some(Settled { name: o.name, change: o.change })
    }

    /// The batches up to `last` are over: the messages of theirs still here
    /// got no answer. They are dropped, and each that names something is
    /// passed to `unanswered` first.
    pub(crate) fn settle(&mut self, last: u64, mut unanswered: impl FnMut(Settled)) {
        while self.owed.front().is_some_and(|o| o.batch <= last) {
            let Some(o) = self.owed.pop_front() else { break };
            self.forget(&o);
            if o.named {
                unanswered(Settled { name: o.name, change: o.change });
            }
        }
    }

    /// Gives every message the batch `renumber` says instead of its own
    /// (which must keep them in order).
    pub(crate) fn renumber(&mut self, renumber: impl Fn(u64) -> u64) {
        for o in &mut self.owed {
            o.batch = renumber(o.batch);
        }
        for (_, last) in self.named.values_mut() {
            *last = renumber(*last);
        }
        debug_assert!(
            self.owed.iter().zip(self.owed.iter().skip(1)).all(|(a, b)| a.batch <= b.batch),
            "still in order"
        );
    }

    /// Drops what the indexes hold of a message leaving the list.
    fn forget(&mut self, o: &Owed) {
        if let Some(count) = kind(o.confirmation).and_then(|k| self.kinds.get_mut(k)) {
            *count -= 1;
        }
        if o.named
            && !o.name.is_empty()
            && let Some((count, _)) = self.named.get_mut(&o.name)
        {
            *count -= 1;
            if *count == 0 {
                self.named.remove(&o.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{InFlight, Settled};
    use crate::postgres::statements::Change;

    const PARSE_COMPLETE: u8 = b'1';
    const BIND_COMPLETE: u8 = b'2';
    const CLOSE_COMPLETE: u8 = b'3';

    fn name(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn names(settled: &[Settled]) -> Vec<Bytes> {
        settled.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn a_name_awaits_its_answer_until_every_message_naming_it_is_answered() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("s"), 1, None);
        f.push(CLOSE_COMPLETE, name("s"), 1, Some(Change::Closed));
        f.push(BIND_COMPLETE, name(""), 1, None);
        assert!(f.awaits_name(b"s"));
        assert!(!f.awaits_name(b"t"));
        // The unnamed statement and portal are never asked after by name.
        assert!(!f.awaits_name(b""));
        assert!(f.confirm(PARSE_COMPLETE).is_some_and(|s| s.name == "s" && s.change.is_none()));
        assert!(f.awaits_name(b"s"), "the Close of it is still unanswered");
        let closed = f.confirm(CLOSE_COMPLETE).expect("the Close");
        assert!(matches!(closed.change, Some(Change::Closed)), "its change comes back with its answer");
        assert!(!f.awaits_name(b"s"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn an_answer_goes_to_the_oldest_message_of_its_kind() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("a"), 1, None);
        f.push(BIND_COMPLETE, name("p"), 1, None);
        f.push(PARSE_COMPLETE, name("b"), 1, None);
        assert!(f.confirm(BIND_COMPLETE).is_some_and(|s| s.name == "p"));
        assert!(!f.awaits_name(b"p"));
        assert!(f.confirm(PARSE_COMPLETE).is_some_and(|s| s.name == "a"));
        assert!(!f.awaits_name(b"a"));
        assert!(f.awaits_name(b"b"));
        // An answer nothing awaits changes nothing.
        assert!(f.confirm(CLOSE_COMPLETE).is_none());
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn settling_leaves_later_batches_alone() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("a"), 1, None);
        f.push(BIND_COMPLETE, name("a"), 2, None);
        f.push(CLOSE_COMPLETE, name("b"), 4, None);
        let mut unanswered = Vec::new();
        f.settle(3, |s| unanswered.push(s));
        assert_eq!(names(&unanswered), vec![name("a"), name("a")]);
        assert!(!f.awaits_name(b"a"));
        assert!(f.awaits_name(b"b"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn renumbered_batches_are_settled_by_their_new_numbers() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name(""), 5, None);
        f.push(PARSE_COMPLETE, name("s"), 6, None);
        // Two Syncs turned out ignored: batches past them move down by two.
        f.renumber(|b| b.saturating_sub(2));
        assert!(f.awaits_name_before(b"s", 5), "sent in what is now the batch before");
        let mut unanswered = Vec::new();
        f.settle(3, |s| unanswered.push(s));
        assert_eq!(names(&unanswered), vec![name("")]);
        assert!(f.awaits_name(b"s"));
        f.settle(4, |_| {});
        assert!(f.is_empty());
    }

    #[test]
    fn a_portal_close_is_answered_in_its_place_and_names_nothing() {
        let mut f = InFlight::default();
        f.hold_place(CLOSE_COMPLETE, 1);
        f.push(CLOSE_COMPLETE, name("s"), 1, Some(Change::Closed));
        f.push(PARSE_COMPLETE, name(""), 2, None);
        // The portal's CloseComplete is not taken for the statement's.
        assert!(f.confirm(CLOSE_COMPLETE).is_none());
        assert!(f.awaits_name(b"s"));
        assert!(f.confirm(CLOSE_COMPLETE).is_some_and(|s| s.name == "s"));
        assert!(!f.awaits_name(b"s"));
        // Unanswered, it names nothing (the unnamed statement least of all).
        f.hold_place(CLOSE_COMPLETE, 2);
        let mut unanswered = Vec::new();
        f.settle(2, |s| unanswered.push(s));
        assert_eq!(names(&unanswered), vec![name("")], "the unnamed Parse's, and only it");
        assert!(f.is_empty());
    }

    #[test]
    fn an_answer_of_a_kind_not_followed_changes_nothing() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("s"), 1, None);
        // Binds are not followed here: a BindComplete takes nothing away.
        assert!(f.confirm(BIND_COMPLETE).is_none());
        assert_eq!(f.len(), 1);
        assert!(f.awaits_name(b"s"));
    }

    #[test]
    fn a_name_is_awaited_from_an_earlier_batch_until_answered() {
        let mut f = InFlight::default();
        f.push(BIND_COMPLETE, name("p"), 1, None);
        assert!(!f.awaits_name_before(b"p", 1), "its own batch");
        assert!(f.awaits_name_before(b"p", 2));
        f.push(BIND_COMPLETE, name("p"), 2, None);
        assert!(f.awaits_name_before(b"p", 2), "the first is still unanswered");
        f.confirm(BIND_COMPLETE);
        assert!(!f.awaits_name_before(b"p", 2));
        assert!(f.awaits_name_before(b"p", 3));
    }

    #[test]
    fn many_messages_of_one_name_are_counted() {
        let mut f = InFlight::default();
        for batch in 1..=1000 {
            f.push(BIND_COMPLETE, name("portal"), batch, None);
        }
        f.settle(999, |_| {});
        assert!(f.awaits_name(b"portal"));
        f.settle(1000, |_| {});
        assert!(!f.awaits_name(b"portal"));
    }
}
