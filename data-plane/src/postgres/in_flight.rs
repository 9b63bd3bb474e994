//! The Parse, Bind and Close messages a session forwarded that the server has
//! not answered yet, in the order they went.
//!
//! The relay asks three things of them on every message: whether a name is
//! among them (a Parse of a name still in flight cannot be known to hold its
//! text), which batch the last unnamed Parse went in, and which of them an
//! answer or a batch's end settles. A client may pipeline thousands before
//! reading an answer, and a session thread serves many sessions, so none of
//! these looks through the whole list: names are counted in a map, the
//! unnamed Parses kept apart, and batches, which only grow along the list,
//! end from its front. An answer goes to the oldest message of its kind,
//! which is the first in the list: the server answers in order, and every
//! message that gets a ParseComplete, BindComplete or CloseComplete is in
//! the list (Binds only where they are followed, see `Relay::expect_responses`;
//! an answer of a kind the list does not hold is not looked for).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// The answer that confirms a Parse.
pub(crate) const PARSE_COMPLETE: u8 = b'1';

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
}

#[derive(Debug, Default)]
pub(crate) struct InFlight {
    owed: VecDeque<Owed>,
    /// How many of them carry each non-empty name (statements and portals alike).
    named: HashMap<Bytes, usize>,
    /// The batches of the unnamed Parses among them, oldest first.
    unnamed_parses: VecDeque<u64>,
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
    pub(crate) fn push(&mut self, confirmation: u8, name: Bytes, batch: u64) {
        if confirmation == PARSE_COMPLETE && name.is_empty() {
            self.unnamed_parses.push_back(batch);
        }
        if !name.is_empty() {
            *self.named.entry(name.clone()).or_default() += 1;
        }
        self.push_owed(Owed { confirmation, name, batch, named: true });
    }

    /// Notes a message just forwarded only for its place in the order: its
    /// answer is not taken for another's.
    pub(crate) fn hold_place(&mut self, confirmation: u8, batch: u64) {
        self.push_owed(Owed { confirmation, name: Bytes::new(), batch, named: false });
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

    /// The batch of the last unnamed Parse still unanswered.
    pub(crate) fn last_unnamed_parse(&self) -> Option<u64> {
        self.unnamed_parses.back().copied()
    }

    /// A ParseComplete, BindComplete or CloseComplete (`tag`) answers the
    /// oldest message of its kind: the first in the list (see above).
    pub(crate) fn confirm(&mut self, tag: u8) {
        if kind(tag).and_then(|k| self.kinds.get(k)).is_none_or(|count| *count == 0) {
            return;
        }
        if let Some(i) = self.owed.iter().position(|o| o.confirmation == tag)
            && let Some(o) = self.owed.remove(i)
        {
            self.forget(&o);
        }
    }

    /// The batches up to `last` are over: the messages of theirs still here
    /// got no answer. They are dropped, and each that names something is
    /// passed to `unanswered` first.
    pub(crate) fn settle(&mut self, last: u64, mut unanswered: impl FnMut(&Bytes)) {
        while self.owed.front().is_some_and(|o| o.batch <= last) {
            let Some(o) = self.owed.pop_front() else { break };
            if o.named {
                unanswered(&o.name);
            }
            self.forget(&o);
        }
    }

    /// Gives every message the batch `renumber` says instead of its own
    /// (which must keep them in order).
    pub(crate) fn renumber(&mut self, renumber: impl Fn(u64) -> u64) {
        for o in &mut self.owed {
            o.batch = renumber(o.batch);
        }
        debug_assert!(
            self.owed.iter().zip(self.owed.iter().skip(1)).all(|(a, b)| a.batch <= b.batch),
            "still in order"
        );
        for batch in &mut self.unnamed_parses {
            *batch = renumber(*batch);
        }
    }

    /// Drops what the indexes hold of a message leaving the list.
    fn forget(&mut self, o: &Owed) {
        if let Some(count) = kind(o.confirmation).and_then(|k| self.kinds.get_mut(k)) {
            *count -= 1;
        }
        if !o.named {
            return;
        }
        if o.confirmation == PARSE_COMPLETE && o.name.is_empty() {
            // The oldest Parse left, or the front of the list: the oldest unnamed one.
            let oldest = self.unnamed_parses.pop_front();
            debug_assert_eq!(oldest, Some(o.batch));
        }
        if !o.name.is_empty()
            && let Some(count) = self.named.get_mut(&o.name)
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

    use super::{InFlight, PARSE_COMPLETE};

    const BIND_COMPLETE: u8 = b'2';
    const CLOSE_COMPLETE: u8 = b'3';

    fn name(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_name_awaits_its_answer_until_every_message_naming_it_is_answered() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("s"), 1);
        f.push(CLOSE_COMPLETE, name("s"), 1);
        f.push(BIND_COMPLETE, name(""), 1);
        assert!(f.awaits_name(b"s"));
        assert!(!f.awaits_name(b"t"));
        // The unnamed statement and portal are never asked after by name.
        assert!(!f.awaits_name(b""));
        f.confirm(PARSE_COMPLETE);
        assert!(f.awaits_name(b"s"), "the Close of it is still unanswered");
        f.confirm(CLOSE_COMPLETE);
        assert!(!f.awaits_name(b"s"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn an_answer_goes_to_the_oldest_message_of_its_kind() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("a"), 1);
        f.push(BIND_COMPLETE, name("p"), 1);
        f.push(PARSE_COMPLETE, name("b"), 1);
        f.confirm(BIND_COMPLETE);
        assert!(!f.awaits_name(b"p"));
        f.confirm(PARSE_COMPLETE);
        assert!(!f.awaits_name(b"a"));
        assert!(f.awaits_name(b"b"));
        // An answer nothing awaits changes nothing.
        f.confirm(CLOSE_COMPLETE);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn the_last_unnamed_parse_is_followed_through_answers_and_batch_ends() {
        let mut f = InFlight::default();
        assert_eq!(f.last_unnamed_parse(), None);
        f.push(PARSE_COMPLETE, name(""), 1);
        f.push(PARSE_COMPLETE, name("named"), 2);
        f.push(PARSE_COMPLETE, name(""), 3);
        assert_eq!(f.last_unnamed_parse(), Some(3));
        f.confirm(PARSE_COMPLETE);
        assert_eq!(f.last_unnamed_parse(), Some(3));
        let mut unanswered = Vec::new();
        f.settle(2, |n| unanswered.push(n.clone()));
        assert_eq!(unanswered, vec![name("named")]);
        assert_eq!(f.last_unnamed_parse(), Some(3));
        f.settle(3, |_| {});
        assert_eq!(f.last_unnamed_parse(), None);
        assert!(f.is_empty());
    }

    #[test]
    fn settling_leaves_later_batches_alone() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("a"), 1);
        f.push(BIND_COMPLETE, name("a"), 2);
        f.push(CLOSE_COMPLETE, name("b"), 4);
        let mut unanswered = Vec::new();
        f.settle(3, |n| unanswered.push(n.clone()));
        assert_eq!(unanswered, vec![name("a"), name("a")]);
        assert!(!f.awaits_name(b"a"));
        assert!(f.awaits_name(b"b"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn renumbered_batches_are_settled_by_their_new_numbers() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name(""), 5);
        f.push(PARSE_COMPLETE, name("s"), 6);
        // Two Syncs turned out ignored: batches past them move down by two.
        f.renumber(|b| b.saturating_sub(2));
        assert_eq!(f.last_unnamed_parse(), Some(3));
        let mut unanswered = Vec::new();
        f.settle(3, |n| unanswered.push(n.clone()));
        assert_eq!(unanswered, vec![name("")]);
        assert!(f.awaits_name(b"s"));
        f.settle(4, |_| {});
        assert!(f.is_empty());
    }

    #[test]
    fn a_portal_close_is_answered_in_its_place_and_forgets_no_name() {
        let mut f = InFlight::default();
        f.hold_place(CLOSE_COMPLETE, 1);
        f.push(CLOSE_COMPLETE, name("s"), 1);
        f.push(PARSE_COMPLETE, name(""), 2);
        // The portal's CloseComplete is not taken for the statement's.
        f.confirm(CLOSE_COMPLETE);
        assert!(f.awaits_name(b"s"));
        f.confirm(CLOSE_COMPLETE);
        assert!(!f.awaits_name(b"s"));
        // Unanswered, it names nothing (the unnamed statement least of all).
        f.hold_place(CLOSE_COMPLETE, 2);
        let mut unanswered = Vec::new();
        f.settle(2, |n| unanswered.push(n.clone()));
        assert_eq!(unanswered, vec![name("")], "the unnamed Parse's, and only it");
        assert!(f.is_empty());
    }

    #[test]
    fn an_answer_of_a_kind_not_followed_changes_nothing() {
        let mut f = InFlight::default();
        f.push(PARSE_COMPLETE, name("s"), 1);
        // Binds are not followed here: a BindComplete takes nothing away.
        f.confirm(BIND_COMPLETE);
        assert_eq!(f.len(), 1);
        assert!(f.awaits_name(b"s"));
    }

    #[test]
    fn many_messages_of_one_name_are_counted() {
        let mut f = InFlight::default();
        for batch in 1..=1000 {
            f.push(BIND_COMPLETE, name("portal"), batch);
        }
        f.settle(999, |_| {});
        assert!(f.awaits_name(b"portal"));
        f.settle(1000, |_| {});
        assert!(!f.awaits_name(b"portal"));
    }
}
