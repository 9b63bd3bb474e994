//! What a session's server holds under each prepared statement's name, as far
//! as the gateway can tell: the text a Bind of a name runs, which the hook
//! judges and masking reads the rows of. The same, in a masked session, for
//! portals: the mask of the statement a portal was bound to, which its rows
//! are read with (a Bind and its BindComplete, a portal's Close, as a Parse
//! and a statement's Close below).
//!
//! The server takes a Parse or a Close only if nothing before it in its batch
//! failed, and answers each in order. So the relay learns a name's statement
//! from the answers, applied in the order they come: a ParseComplete means the
//! server now holds that Parse's text (a Parse of a taken name fails); a
//! CloseComplete that it holds nothing; an unanswered message changed nothing.
//! Until an answer comes, the name is unknown (a Bind of it in a later batch
//! waits for the answer, see `Relay::bind_awaits_answers`), with one
//! exception: within the batch the client has open, a Bind runs only if
//! every message before it succeeded, so it runs what the batch's last Parse
//! of the name prepared, whatever the server held before.
//!
//! A lone `DEALLOCATE name` closes the name, learned when its batch ends
//! without an error; it does not undo a change forwarded after it and
//! answered before that (`seq`). What else the relay cannot follow (a
//! statement that may run `DEALLOCATE`, `DISCARD`, `PREPARE` or `EXECUTE`,
//! see `keywords`) forgets every name, and no answer to a message sent
//! before it teaches anything.
//!
//! A name the gateway never saw prepared, or prepared past [`MAX_PREPARED`]
//! names or [`MAX_PREPARED_TEXT`] bytes of text, is as unknown as a forgotten
//! one: the server may hold anything under it (a statement prepared by SQL).

use std::collections::HashMap;
use std::sync::Arc;

use airlock_core::policy::ResultMask;
use bytes::Bytes;

use super::masking::BoundPortal;

/// Named prepared statements remembered per session; a Bind of one past this
/// has no text to check, which fails closed where command rules apply.
pub(crate) const MAX_PREPARED: usize = 10_000;

/// Bytes of named statements' text remembered per session (the unnamed
/// statement, one at a time and within the message cap, is not counted): a
/// statement prepared past this is not remembered, like one past
/// [`MAX_PREPARED`], so that a session cannot make the worker hold more of
/// its text than this.
pub(crate) const MAX_PREPARED_TEXT: usize = 16 << 20;

/// How much of the session's memory a remembered value holds, as far as the
/// budget above counts it.
pub(crate) trait Weighed {
    fn weight(&self) -> usize;
}

impl Weighed for Prepared {
    fn weight(&self) -> usize {
        self.text.len()
    }
}

impl Weighed for BoundPortal {
    /// Its text, which it may hold alone once its statement is closed; masks
    /// are shared with the policy and bounded by the count of names.
    fn weight(&self) -> usize {
        self.text.as_ref().map_or(0, Bytes::len)
    }
}

/// Postgres finds a statement or portal by the first 63 bytes of its name
/// (`NAMEDATALEN` - 1, in the server's encoding, into which it converts the
/// client's): names longer than that, or that conversion may change, could
/// stand for one another on the server. Only names shorter and in ASCII are
/// followed; a Bind or Execute of any other is of a statement or portal the
/// gateway does not know.
const FOLLOWED_NAME_LEN: usize = 63;

/// Whether the relay follows what a statement or portal of this name holds.
pub(crate) fn followed(name: &[u8]) -> bool {
    name.len() < FOLLOWED_NAME_LEN && name.is_ascii()
}

/// A statement the client prepared, as the gateway read it.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub(crate) text: Bytes,
    /// How its rows are masked, in a session whose results are masked.
    pub(crate) mask: Option<Arc<ResultMask>>,
    /// Once the server described it: whether a result column is of a kind
    /// the masking detectors cannot read in binary format (`masking`). Shared
    /// with the Describe awaiting its answer; a statement parsed again under
    /// the name is another, described anew.
    pub(crate) unreadable: Arc<std::sync::OnceLock<bool>>,
}

/// What a message forwarded does to a name, carried with it until the
/// server answers: it holds a value from now on (`Held`), or nothing. `seq`
/// numbers the changes in the order they were forwarded: a change learned
/// late (a `DEALLOCATE`, learned at the end of its batch) does not undo one
/// forwarded after it and already answered.
#[derive(Debug)]
pub(crate) enum Change<T> {
    Held { value: T, epoch: u64, seq: u64 },
    Closed { seq: u64 },
}

/// A change to a statement's name or to a portal's, as in-flight messages
/// carry them.
#[derive(Debug)]
pub(crate) enum Tracked {
    Statement(Change<Prepared>),
    Portal(Change<BoundPortal>),
}

/// The statements a session's server holds, by name.
pub(crate) type Statements = Names<Prepared>;

/// In a masked session, what is kept of each portal the server holds, by name.
pub(crate) type Portals = Names<BoundPortal>;

#[derive(Debug)]
pub(crate) struct Names<T> {
    /// By name, what the server holds (or, after a `DEALLOCATE` the relay
    /// could not see, none), as the answers read so far tell, and the `seq`
    /// of the change that put it there.
    settled: HashMap<Bytes, (T, u64)>,
    /// The changes made by the batch the client has open, by name, in effect
    /// for a message later in the batch: a value, or none (closed).
    open: HashMap<Bytes, Option<T>>,
    /// The batch `open` belongs to.
    open_batch: u64,
    /// Names with a change forwarded and not answered, and how many.
    pending: HashMap<Bytes, usize>,
    /// Counts calls to `forget_all`: an answer to a message forwarded before
    /// the last one teaches nothing.
    epoch: u64,
    /// The `seq` of the last change forwarded.
    seq: u64,
    /// The weight of the named values in `settled`.
    settled_weight: usize,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Self {
            settled: HashMap::new(),
            open: HashMap::new(),
            open_batch: 0,
            pending: HashMap::new(),
            epoch: 0,
            seq: 0,
            settled_weight: 0,
        }
    }
}

/// What a value held under `name` counts against the budget: nothing for
/// the unnamed statement or portal.
fn weight_of<T: Weighed>(name: &[u8], value: &T) -> usize {
    if name.is_empty() { 0 } else { value.weight() }
}

impl<T: Clone + Weighed> Names<T> {
    /// Nothing known and nothing awaited: a statement that may deallocate has
    /// nothing to forget.
    pub(crate) fn is_empty(&self) -> bool {
        self.settled.is_empty() && self.pending.is_empty()
    }

    /// A Parse (a Bind) forwarded in `batch`; the change goes with it until
    /// answered (none for a name not followed).
    pub(crate) fn hold(&mut self, name: &Bytes, value: T, batch: u64) -> Option<Change<T>> {
        if !followed(name) {
            return None;
        }
        let seq = self.note(name, Some(value.clone()), batch);
        Some(Change::Held { value, epoch: self.epoch, seq })
    }

    /// A Close forwarded in `batch`.
    pub(crate) fn close(&mut self, name: &Bytes, batch: u64) -> Option<Change<T>> {
        if !followed(name) {
            return None;
        }
        let seq = self.note(name, None, batch);
        Some(Change::Closed { seq })
    }

    fn note(&mut self, name: &Bytes, held: Option<T>, batch: u64) -> u64 {
        if self.open_batch != batch {
            self.clear_open();
            self.open_batch = batch;
        }
        self.open.insert(name.clone(), held);
        *self.pending.entry(name.clone()).or_default() += 1;
        self.seq += 1;
        self.seq
    }

    /// What a message naming `name` forwarded in `batch` uses, if it runs (the
    /// statement a Bind runs, the portal an Execute runs); `None` where the
    /// gateway cannot know it.
    pub(crate) fn get(&self, name: &[u8], batch: u64) -> Option<&T> {
        if !followed(name) {
            return None;
        }
        if self.open_batch == batch
            && !self.open.is_empty()
            && let Some(held) = self.open.get(name)
        {
            return held.as_ref();
        }
        if self.pending.contains_key(name) {
            // A change of an earlier batch, not answered yet: it may have
            // failed or been skipped, or not.
            return None;
        }
        self.settled.get(name).map(|(value, _)| value)
    }

    /// Whether what a message naming `name` forwarded in `batch` uses is not
    /// known only because a change of an earlier batch awaits its answer:
    /// once every earlier batch is answered, `get` knows.
    pub(crate) fn awaits_answer(&self, name: &[u8], batch: u64) -> bool {
        followed(name) && !(self.open_batch == batch && self.open.contains_key(name)) && self.pending.contains_key(name)
    }

    /// The server answered the message that carried `change`.
    pub(crate) fn confirmed(&mut self, name: &Bytes, change: Change<T>) {
        self.answered(name);
        match change {
            Change::Held { value, epoch, seq } if epoch == self.epoch => {
                let replaced = self.remove(name);
                let room = name.is_empty() || replaced || self.settled.len() < MAX_PREPARED;
                let weight = weight_of(name, &value);
                // Past either budget the server holds a text the relay does
                // not keep: the name is unknown (the old value went above).
                if room && self.settled_weight.saturating_add(weight) <= MAX_PREPARED_TEXT {
                    self.settled_weight += weight;
                    self.settled.insert(name.clone(), (value, seq));
                }
            }
            // Forgotten since it went: what the name holds is not known.
            Change::Held { .. } => {}
            // A Parse sent after it took the name again, and stands.
            Change::Closed { seq } if self.settled.get(name).is_some_and(|(_, since)| *since > seq) => {}
            Change::Closed { .. } => {
                self.remove(name);
            }
        }
    }

    /// Takes what `name` holds out of `settled`; whether it held anything.
    fn remove(&mut self, name: &[u8]) -> bool {
        match self.settled.remove(name) {
            Some((old, _)) => {
                self.settled_weight = self.settled_weight.saturating_sub(weight_of(name, &old));
                true
            }
            None => false,
        }
    }

    /// The weight of what `settled` holds (see [`MAX_PREPARED_TEXT`]).
    #[cfg(test)]
    pub(crate) fn settled_weight(&self) -> usize {
        self.settled_weight
    }

    /// The message that carried a change got no answer: the server skipped it
    /// after an error, or it failed, and the name holds what it held.
    pub(crate) fn unanswered(&mut self, name: &Bytes) {
        self.answered(name);
    }

    fn answered(&mut self, name: &Bytes) {
        if let Some(count) = self.pending.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(name);
            }
        }
    }

    /// A simple query forwarded: it destroys the unnamed statement (portal).
    pub(crate) fn query(&mut self) {
        self.remove(b"");
    }

    /// The server's transaction ended (a ReadyForQuery says it is idle): it
    /// destroyed every portal then. What batches forwarded since bind is
    /// answered later, and stands.
    pub(crate) fn transaction_ended(&mut self) {
        self.settled.clear();
        self.settled_weight = 0;
    }

    /// Something forwarded may have deallocated or prepared statements by
    /// SQL: no name is known any more, until a Parse sent after it is answered.
    pub(crate) fn forget_all(&mut self) {
        self.settled.clear();
        self.settled_weight = 0;
        self.clear_open();
        self.epoch += 1;
    }

    /// The client's open batch ended (its Sync went): what it changed counts
    /// for no later message, and is let go of now rather than at the next
    /// batch's first change.
    pub(crate) fn batch_closed(&mut self) {
        if !self.open.is_empty() {
            self.clear_open();
        }
    }

    /// Syncs turned out to be ignored (during a COPY): batches were not what
    /// they seemed, and what the open one prepared no longer counts.
    pub(crate) fn batches_renumbered(&mut self) {
        self.clear_open();
    }

    fn clear_open(&mut self) {
        // A map once grown for a long pipeline would cost its whole size to
        // clear on every batch after.
        if self.open.capacity() > 64 {
            self.open = HashMap::new();
        } else {
            self.open.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{Change, MAX_PREPARED_TEXT, Prepared, Statements};

    fn name(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn prepared(sql: &str) -> Prepared {
        Prepared { text: name(sql), mask: None, unreadable: std::sync::Arc::default() }
    }

    fn text(s: &Statements, n: &str, batch: u64) -> Option<String> {
        s.get(n.as_bytes(), batch).map(|p| String::from_utf8_lossy(&p.text).into_owned())
    }

    #[test]
    fn a_parse_counts_in_its_own_batch_and_once_answered() {
        let mut s = Statements::default();
        let change = s.hold(&name("s"), prepared("SELECT 1"), 1);
        assert_eq!(text(&s, "s", 1).as_deref(), Some("SELECT 1"), "a Bind later in the batch runs it");
        assert_eq!(text(&s, "s", 2), None, "the Parse may have failed: the name may hold anything");
        s.confirmed(&name("s"), change.unwrap());
        assert_eq!(text(&s, "s", 2).as_deref(), Some("SELECT 1"));
        assert_eq!(text(&s, "t", 2), None, "never prepared");
    }

    #[test]
    fn a_parse_that_got_no_answer_leaves_what_the_name_held() {
        let mut s = Statements::default();
        let first = s.hold(&name("s"), prepared("SELECT 1"), 1);
        s.confirmed(&name("s"), first.unwrap());
        // The name is taken: the server refuses this Parse.
        let _second = s.hold(&name("s"), prepared("DELETE FROM t"), 2);
        assert_eq!(text(&s, "s", 2).as_deref(), Some("DELETE FROM t"), "runs only if it succeeded");
        assert_eq!(text(&s, "s", 3), None, "not known until answered");
        s.unanswered(&name("s"));
        assert_eq!(text(&s, "s", 3).as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn only_a_change_of_an_earlier_batch_is_awaited() {
        let mut s = Statements::default();
        let change = s.hold(&name("s"), prepared("SELECT 1"), 1);
        assert!(!s.awaits_answer(b"s", 1), "known within its own batch");
        assert!(s.awaits_answer(b"s", 2), "the next batch waits for the answer");
        assert!(!s.awaits_answer(b"t", 2), "nothing to wait for: never prepared");
        s.confirmed(&name("s"), change.unwrap());
        assert!(!s.awaits_answer(b"s", 2));
        let _long = s.hold(&name(&"x".repeat(63)), prepared("SELECT 1"), 2);
        assert!(!s.awaits_answer("x".repeat(63).as_bytes(), 3), "not followed: no answer would tell");
    }

    #[test]
    fn a_close_learned_late_does_not_undo_a_parse_sent_after_it() {
        let mut s = Statements::default();
        let first = s.hold(&name("s"), prepared("SELECT 1"), 1);
        s.confirmed(&name("s"), first.unwrap());
        // `DEALLOCATE s` executed, then `s` prepared again, in one batch; the
        // DEALLOCATE is known to have run only at the batch's end.
        let closed = s.close(&name("s"), 2);
        let parsed = s.hold(&name("s"), prepared("SELECT 5"), 2);
        s.confirmed(&name("s"), parsed.unwrap());
        s.confirmed(&name("s"), closed.unwrap());
        assert_eq!(text(&s, "s", 3).as_deref(), Some("SELECT 5"));
    }

    #[test]
    fn a_close_empties_the_name_once_answered() {
        let mut s = Statements::default();
        let parsed = s.hold(&name("s"), prepared("SELECT 1"), 1);
        s.confirmed(&name("s"), parsed.unwrap());
        let closed = s.close(&name("s"), 2);
        assert_eq!(text(&s, "s", 2), None, "closed earlier in the batch");
        assert_eq!(text(&s, "s", 3), None, "the Close may have been skipped, or not");
        s.unanswered(&name("s"));
        assert_eq!(text(&s, "s", 3).as_deref(), Some("SELECT 1"), "skipped: the server still holds it");
        let closed_again = s.close(&name("s"), 3);
        drop(closed);
        s.confirmed(&name("s"), closed_again.unwrap());
        assert_eq!(text(&s, "s", 4), None);
    }

    #[test]
    fn forgetting_outlasts_answers_to_what_went_before() {
        let mut s = Statements::default();
        let before = s.hold(&name("s"), prepared("SELECT 1"), 1);
        assert!(!s.is_empty(), "a Parse awaited is something to forget");
        s.forget_all();
        s.confirmed(&name("s"), before.unwrap());
        assert_eq!(text(&s, "s", 3), None, "a DEALLOCATE and PREPARE after it may have replaced it");
        let after = s.hold(&name("s"), prepared("SELECT 2"), 3);
        s.confirmed(&name("s"), after.unwrap());
        assert_eq!(text(&s, "s", 4).as_deref(), Some("SELECT 2"));
    }

    #[test]
    fn forgetting_mid_batch_undoes_the_batch_so_far() {
        let mut s = Statements::default();
        let _parsed = s.hold(&name("s"), prepared("SELECT 1"), 1);
        s.forget_all();
        assert_eq!(text(&s, "s", 1), None);
    }

    #[test]
    fn the_open_batch_is_dropped_when_batches_move() {
        let mut s = Statements::default();
        let _parsed = s.hold(&name(""), prepared("SELECT 1"), 5);
        s.batches_renumbered();
        assert_eq!(text(&s, "", 5), None);
        assert!(matches!(s.close(&name(""), 5), Some(Change::Closed { .. })));
    }

    #[test]
    fn names_the_server_may_cut_or_convert_are_not_followed() {
        let mut s = Statements::default();
        let long = "x".repeat(63);
        for n in [long.as_str(), "caf\u{e9}"] {
            assert!(s.hold(&name(n), prepared("SELECT 1"), 1).is_none());
            assert_eq!(text(&s, n, 1), None, "{n}");
        }
        let change = s.hold(&name(&long[..62]), prepared("SELECT 1"), 1);
        s.confirmed(&name(&long[..62]), change.unwrap());
        assert_eq!(text(&s, &long[..62], 2).as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn a_query_destroys_the_unnamed_statement() {
        let mut s = Statements::default();
        let parsed = s.hold(&name(""), prepared("SELECT 1"), 1);
        s.confirmed(&name(""), parsed.unwrap());
        s.query();
        assert_eq!(text(&s, "", 3), None);
        assert!(s.is_empty());
    }

    /// Prepares `n` with `sql` in `batch`, answered.
    fn prepare(s: &mut Statements, n: &str, sql: &str, batch: u64) {
        let change = s.hold(&name(n), prepared(sql), batch).unwrap();
        s.confirmed(&name(n), change);
    }

    #[test]
    fn named_text_past_the_budget_is_not_remembered_and_leaves_its_name_unknown() {
        let mut s = Statements::default();
        let big = format!("SELECT '{}'", "x".repeat(MAX_PREPARED_TEXT - 20));
        prepare(&mut s, "big", &big, 1);
        assert_eq!(text(&s, "big", 2).as_deref(), Some(big.as_str()));
        let small = "SELECT 'a short statement'";
        prepare(&mut s, "small", small, 2);
        assert_eq!(text(&s, "small", 3), None, "past the budget: the server holds it, the relay does not");
        assert_eq!(s.settled_weight(), big.len());

        // Room made by a shorter text under the same name, or by a Close.
        prepare(&mut s, "big", "SELECT 1", 3);
        prepare(&mut s, "small", small, 4);
        assert_eq!(text(&s, "small", 5).as_deref(), Some(small));
        assert_eq!(s.settled_weight(), "SELECT 1".len() + small.len());
        let close = s.close(&name("small"), 5).unwrap();
        s.confirmed(&name("small"), close);
        assert_eq!(s.settled_weight(), "SELECT 1".len());

        // A name prepared again past the budget holds neither text: not the
        // old one, which the server no longer runs under it.
        prepare(&mut s, "other", &big, 6);
        prepare(&mut s, "big", &big, 7);
        assert_eq!(text(&s, "big", 8), None);
        assert_eq!(s.settled_weight(), big.len());

        // The unnamed statement is not counted, and always known.
        prepare(&mut s, "", &big, 8);
        assert_eq!(text(&s, "", 9).as_deref(), Some(big.as_str()));
        assert_eq!(s.settled_weight(), big.len());
        s.forget_all();
        assert_eq!(s.settled_weight(), 0);
    }
}
