//! Which Syncs the server ignores around a COPY FROM STDIN.
//!
//! The relay counts the ReadyForQuery messages the server owes (one per Sync
//! and per simple query) and numbers batches by them; what it remembers of
//! statements and portals is retired by that count, so the count must never
//! run behind the server's. A COPY FROM STDIN is where it could: while the
//! server reads copy data it ignores Sync messages, and drivers send one with
//! the Execute that starts the copy. Which Syncs were read during the copy
//! depends on where the copy ended:
//!
//! - at the client's CopyDone (the server answers CommandComplete): every Sync
//!   sent before that CopyDone was ignored;
//! - at an error (bad data, a cancel, a trigger raising before any data was
//!   read): the Syncs read before it were ignored, the others are answered, and
//!   the client cannot know where the server was. When any Sync was sent
//!   before the copy's end, the relay asks the server: see [`Probe`].
//!
//! Everything here is about one copy: the one started by the last message
//! forwarded that can start one (a Query, an Execute, a FunctionCall). A copy
//! that another statement started, or one among other messages the server
//! would refuse to read as copy data, ends the session with an error that
//! says so; no driver sends such pipelines.

/// What the relay forwarded since the last message that could start a COPY.
#[derive(Debug, Default)]
pub(crate) struct CopyWatch {
    /// That message. `None` once its copy ended.
    anchor: Option<Anchor>,
    /// Executes forwarded since the last Sync.
    executes: u32,
    /// Executes and simple-query statements the server completed since its
    /// last ReadyForQuery.
    completed: u32,
    /// The server is reading copy data for the anchor (a CopyInResponse came).
    reading: bool,
    /// Syncs forwarded after the anchor, up to the first CopyDone or CopyFail.
    syncs: u64,
    /// A CopyDone or CopyFail was forwarded after the anchor.
    end_sent: bool,
    /// A message was forwarded after that CopyDone or CopyFail.
    after_end: bool,
    /// A Sync was forwarded after it.
    synced_after_end: bool,
    /// An extended-protocol message was forwarded after it, and no Sync since.
    open_after_end: bool,
    /// Nothing but copy data, Syncs and Flushes went between the anchor and
    /// the first CopyDone or CopyFail.
    clean: bool,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// The batch it went in, numbered as the relay numbers ReadyForQuery.
    batch: u64,
    /// For an Execute, its place among the Executes of that batch (1 for the
    /// first); 0 for a Query or FunctionCall, each a batch of its own.
    index: u32,
}

impl Anchor {
    /// The number the relay gave the first Sync sent after the statement.
    fn first_sync(self) -> u64 {
        if self.index == 0 { self.batch + 1 } else { self.batch }
    }
}

/// How a copy ended, for the relay's count.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CopyEnd {
    /// The first `ignored` of the Syncs sent after the statement (numbered
    /// from `from`) were read during the copy and get no ReadyForQuery. The
    /// statement was an Execute (`extended`): its batch is still open if no
    /// Sync ended it.
    Settled { from: u64, ignored: u64, extended: bool },
    /// Some of the `window` Syncs sent after the statement (numbered from
    /// `from`), and before the copy's end, were ignored: how many, only the
    /// server knows. `synced_after`: a Sync went after the copy's end.
    Unsure { from: u64, window: u64, extended: bool, synced_after: bool },
}

/// Why the relay cannot follow a copy.
pub(crate) const PIPELINED_COPY: &str = "a COPY FROM STDIN began while later statements were already sent; \
     the gateway cannot follow such a pipeline: wait for the copy's CopyInResponse before sending more";
pub(crate) const FAILED_AMID_MESSAGES: &str = "a COPY FROM STDIN failed after the client sent, along with its data, \
     messages the gateway cannot follow (statements among the data, or a batch left without its Sync); the gateway \
     cannot tell which of them the server ignored";
pub(crate) const NOT_COPY_DATA: &str = "only CopyData, CopyDone, CopyFail, Flush and Sync may be sent while the \
     server reads COPY data";

impl CopyWatch {
    /// A client message just forwarded, in the batch numbered `batch` (the
    /// ReadyForQuery that will end it). Syncs included.
    pub(crate) fn forwarded(&mut self, tag: u8, batch: u64) {
        if self.end_sent {
            self.after_end = true;
            match tag {
                b'S' => (self.synced_after_end, self.open_after_end) = (true, false),
                b'P' | b'B' | b'E' | b'D' | b'C' => self.open_after_end = true,
                _ => {}
            }
        }
        match tag {
            b'S' => {
                self.executes = 0;
                if !self.end_sent {
                    self.syncs += 1;
                }
            }
            b'c' | b'f' => self.end_sent = true,
            b'd' | b'H' => {}
            b'E' | b'Q' | b'F' => {
                let index = if tag == b'E' {
                    self.executes = self.executes.saturating_add(1);
                    self.executes
                } else {
                    0
                };
                if self.reading {
                    self.clean &= self.end_sent;
                } else {
                    *self = CopyWatch {
                        anchor: Some(Anchor { batch, index }),
                        executes: self.executes,
                        completed: self.completed,
                        clean: true,
                        ..CopyWatch::default()
                    };
                }
            }
            _ => self.clean &= self.end_sent,
        }
    }

    /// Whether a client message may go to the server now: while the server
    /// reads copy data, any other message would end the copy with an error,
    /// after an unknown number of ignored Syncs.
    pub(crate) fn admits(&self, tag: u8) -> bool {
        !self.reading || self.end_sent || matches!(tag, b'd' | b'c' | b'f' | b'H' | b'S' | b'X')
    }

    /// A server message that ends a statement (CommandComplete,
    /// EmptyQueryResponse, PortalSuspended) or a batch (ReadyForQuery).
    pub(crate) fn answered(&mut self, tag: u8) {
        match tag {
            b'Z' => self.completed = 0,
            b'C' | b'I' | b's' => self.completed = self.completed.saturating_add(1),
            _ => {}
        }
    }

    /// A CopyInResponse, in the batch `server_batch` (the ReadyForQuery the
    /// server sends next). `Err` when the copy was not started by the anchor.
    pub(crate) fn began(&mut self, server_batch: u64) -> Result<(), &'static str> {
        let ours =
            self.anchor.is_some_and(|a| a.batch == server_batch && (a.index == 0 || a.index == self.completed + 1));
        if !ours {
            return Err(PIPELINED_COPY);
        }
        self.reading = true;
        Ok(())
    }

    /// A CommandComplete: when it ends a copy, the server read the first
    /// CopyDone after the anchor, and every Sync before it.
    pub(crate) fn done(&mut self) -> Option<CopyEnd> {
        if !self.reading {
            return None;
        }
        let anchor = self.anchor?;
        let end = CopyEnd::Settled { from: anchor.first_sync(), ignored: self.syncs, extended: anchor.index != 0 };
        self.reading = false;
        if self.after_end {
            self.anchor = None;
        } else {
            // A simple query may hold another COPY: it reads what comes next.
            (self.syncs, self.end_sent, self.clean) = (0, false, true);
        }
        Some(end)
    }

    /// An ErrorResponse: when it ends a copy, the Syncs sent before the copy's
    /// end may have been read before the error or after it.
    pub(crate) fn failed(&mut self) -> Option<Result<CopyEnd, &'static str>> {
        if !self.reading {
            return None;
        }
        let anchor = self.anchor?;
        let (from, window, extended) = (anchor.first_sync(), self.syncs, anchor.index != 0);
        // A probe's first Sync would end a batch the client left open after the copy.
        let clean = self.clean && !self.open_after_end;
        let synced_after = self.synced_after_end;
        self.reading = false;
        self.anchor = None;
        Some(if window == 0 {
            Ok(CopyEnd::Settled { from, ignored: 0, extended })
        } else if clean {
            Ok(CopyEnd::Unsure { from, window, extended, synced_after })
        } else {
            Err(FAILED_AMID_MESSAGES)
        })
    }
}

/// The number a batch numbered `batch` has once the `ignored` Syncs numbered
/// from `from` turn out to have been ignored: they ended no batch, and what
/// was to go before their ReadyForQuery goes before the next one.
pub(crate) fn renumber(batch: u64, from: u64, ignored: u64) -> u64 {
    if batch >= from + ignored { batch - ignored } else { batch.min(from) }
}

/// The relay's question to the server after a copy failed with Syncs in
/// flight: a Sync (which ends the discarding after the error, if no Sync of
/// the client's has), a Describe of a portal no client can name, and a
/// Sync. The error the Describe gets carries that name, so its answers are
/// told apart from the answers to the client's messages, which come before
/// them: the relay holds those back, counts the ReadyForQuery among them, and
/// then handles them as if they had just come, with the count put right.
#[derive(Debug)]
pub struct Probe {
    /// The copy, as in [`CopyEnd::Unsure`].
    pub(crate) from: u64,
    pub(crate) window: u64,
    pub(crate) extended: bool,
    pub(crate) synced_after: bool,
    /// ReadyForQuery messages the relay counted as owed when it asked.
    owed: u64,
    name: String,
    /// The server's messages, held back until the probe's error.
    held: Vec<u8>,
    /// ReadyForQuery messages among them.
    readies: u64,
    /// Where the last ReadyForQuery among them starts, and its length, if
    /// only asynchronous messages came after it.
    last_ready: Option<(usize, usize)>,
    /// The probe's error came: the next ReadyForQuery is the probe's last.
    answered: bool,
    pub(crate) sent: bool,
}

/// What a server message is during a probe.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeStep {
    /// Held back, or dropped (the probe's error).
    Held,
    /// The probe's last ReadyForQuery: the count is known.
    Finished,
    /// More was held back than a probe may hold, or the answers do not fit
    /// what was sent.
    Lost,
}

/// How much of the server's answers a probe holds back: those to what the
/// client pipelined after the failed copy, before the probe.
pub const PROBE_HOLD_LIMIT: usize = 4 * 1024 * 1024;

impl Probe {
    pub fn new(from: u64, window: u64, extended: bool, synced_after: bool, owed: u64) -> Self {
        let name = format!("airlock_probe_{:032x}", rand::random::<u128>());
        Probe {
            from,
            window,
            extended,
            synced_after,
            owed,
            name,
            held: Vec::new(),
            readies: 0,
            last_ready: None,
            answered: false,
            sent: false,
        }
    }

    /// The name of the portal the probe describes, which its error carries.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The messages to send.
    pub fn messages(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.name.len());
        out.extend_from_slice(b"S\0\0\0\x04");
        let len = i32::try_from(4 + 1 + self.name.len() + 1).unwrap_or(i32::MAX);
        out.push(b'D');
        out.extend_from_slice(&len.to_be_bytes());
        // A portal: a pgbouncer that tracks prepared statements ends the
        // connection on an unknown statement's name.
        out.push(b'P');
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        out.extend_from_slice(b"S\0\0\0\x04");
        out
    }

    /// Places one server message (`raw`: tag, length and body).
    pub fn step(&mut self, tag: u8, raw: &[u8]) -> ProbeStep {
        // A COPY the client pipelined would read the probe's Describe as copy
        // data, and no answer to the probe would come.
        if tag == b'G' {
            return ProbeStep::Lost;
        }
        // A notice, a notification or a setting may come at any point.
        let asynchronous = matches!(tag, b'N' | b'A' | b'S');
        if self.answered {
            if tag == b'Z' {
                return ProbeStep::Finished;
            }
            if !asynchronous {
                return ProbeStep::Lost;
            }
        } else if tag == b'E' && contains(raw, self.name.as_bytes()) {
            // After the ReadyForQuery that answers the probe's first Sync.
            let Some((at, len)) = self.last_ready else { return ProbeStep::Lost };
            self.held.drain(at..at + len);
            self.readies -= 1;
            self.answered = true;
            return ProbeStep::Held;
        }
        if self.held.len() + raw.len() > PROBE_HOLD_LIMIT {
            return ProbeStep::Lost;
        }
        if tag == b'Z' {
            self.last_ready = Some((self.held.len(), raw.len()));
            self.readies += 1;
        } else if !asynchronous {
            self.last_ready = None;
        }
        self.held.extend_from_slice(raw);
        ProbeStep::Held
    }

    /// Once finished, with `seen` ReadyForQuery counted before the probe
    /// began: the messages held back, and how many of the Syncs in the window
    /// the server ignored. `None` when the answers do not fit what was sent.
    pub fn outcome(self, seen: u64) -> Option<(Vec<u8>, u64)> {
        let ignored = self.owed.checked_sub(seen)?.checked_sub(self.readies)?;
        (self.answered && ignored <= self.window).then_some((self.held, ignored))
    }
}

/// Whether `needle` (not empty) occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_before_the_copy_done_are_ignored_and_those_after_it_are_not() {
        let mut w = CopyWatch::default();
        // Parse, Bind, Execute, Sync in batch 3: the Execute starts the copy.
        for tag in [b'P', b'B', b'E', b'S'] {
            w.forwarded(tag, 3);
        }
        w.answered(b'1');
        assert_eq!(w.began(3), Ok(()));
        for tag in [b'd', b'S', b'c', b'S', b'S', b'c'] {
            assert!(w.admits(tag));
            w.forwarded(tag, 4);
        }
        assert_eq!(w.done(), Some(CopyEnd::Settled { from: 3, ignored: 2, extended: true }));
        assert_eq!(w.done(), None, "the copy is over");
    }

    #[test]
    fn a_copy_started_by_an_earlier_statement_than_the_last_is_refused() {
        let mut w = CopyWatch::default();
        for tag in [b'E', b'E', b'S'] {
            w.forwarded(tag, 1);
        }
        // The first Execute's CopyInResponse: the second was sent already.
        assert_eq!(w.began(1), Err(PIPELINED_COPY));
        let mut w = CopyWatch::default();
        w.forwarded(b'Q', 1);
        w.forwarded(b'Q', 2);
        assert_eq!(w.began(1), Err(PIPELINED_COPY));
        assert_eq!(w.began(2), Ok(()));
    }

    #[test]
    fn the_second_execute_of_a_batch_is_known_by_the_completions_before_it() {
        let mut w = CopyWatch::default();
        for tag in [b'E', b'E', b'S'] {
            w.forwarded(tag, 1);
        }
        w.answered(b'C');
        assert_eq!(w.began(1), Ok(()));
    }

    #[test]
    fn a_failed_copy_is_settled_only_without_syncs_before_its_end() {
        let mut w = CopyWatch::default();
        w.forwarded(b'Q', 1);
        w.began(1).unwrap();
        w.forwarded(b'd', 2);
        assert_eq!(w.failed(), Some(Ok(CopyEnd::Settled { from: 2, ignored: 0, extended: false })));

        let mut w = CopyWatch::default();
        for tag in [b'E', b'S'] {
            w.forwarded(tag, 5);
        }
        w.began(5).unwrap();
        for tag in [b'd', b'S', b'c', b'S'] {
            w.forwarded(tag, 6);
        }
        assert_eq!(w.failed(), Some(Ok(CopyEnd::Unsure { from: 5, window: 2, extended: true, synced_after: true })));
        assert_eq!(w.failed(), None);
    }

    #[test]
    fn messages_other_than_copy_data_are_refused_while_the_server_reads_it() {
        let mut w = CopyWatch::default();
        w.forwarded(b'E', 1);
        w.forwarded(b'S', 1);
        w.began(1).unwrap();
        assert!(!w.admits(b'P'));
        assert!(!w.admits(b'Q'));
        w.forwarded(b'c', 2);
        assert!(w.admits(b'P'), "after the CopyDone, the next statements may follow");
        w.forwarded(b'P', 2);
        w.forwarded(b'S', 2);
        assert_eq!(w.failed(), Some(Ok(CopyEnd::Unsure { from: 1, window: 1, extended: true, synced_after: true })));
        // A batch left open after the copy: the probe's Sync would end it.
        let mut w = CopyWatch::default();
        for tag in [b'E', b'S'] {
            w.forwarded(tag, 1);
        }
        w.began(1).unwrap();
        for tag in [b'c', b'P', b'B'] {
            w.forwarded(tag, 2);
        }
        assert_eq!(w.failed(), Some(Err(FAILED_AMID_MESSAGES)));
        // Sent before the server began reading, a message other than copy data
        // ends the copy at an unknown point among the Syncs.
        let mut w = CopyWatch::default();
        for tag in [b'E', b'S', b'P', b'S'] {
            w.forwarded(tag, 1);
        }
        w.began(1).unwrap();
        assert_eq!(w.failed(), Some(Err(FAILED_AMID_MESSAGES)));
    }

    #[test]
    fn a_simple_query_with_two_copies_reads_the_second_after_the_first() {
        let mut w = CopyWatch::default();
        w.forwarded(b'Q', 1);
        w.began(1).unwrap();
        w.forwarded(b'c', 2);
        assert_eq!(w.done(), Some(CopyEnd::Settled { from: 2, ignored: 0, extended: false }));
        w.answered(b'C');
        assert_eq!(w.began(1), Ok(()));
        w.forwarded(b'c', 2);
        w.forwarded(b'S', 2);
        assert_eq!(w.done(), Some(CopyEnd::Settled { from: 2, ignored: 0, extended: false }));
        assert_eq!(w.began(1), Err(PIPELINED_COPY), "a Sync went after the second copy's end");
    }

    #[test]
    fn ignored_syncs_end_no_batch() {
        // An Execute in batch 4; Syncs numbered 4, 5 and 6 were sent after it,
        // and the first two were ignored: the third ends batch 4.
        assert_eq!(renumber(3, 4, 2), 3);
        assert_eq!(renumber(4, 4, 2), 4);
        assert_eq!(renumber(5, 4, 2), 4);
        assert_eq!(renumber(6, 4, 2), 4);
        assert_eq!(renumber(7, 4, 2), 5);
        assert_eq!(renumber(7, 4, 0), 7);
        // A simple query's own ReadyForQuery is number 4; Syncs 5 and 6 after it
        // were ignored, and 7 is answered as number 5.
        assert_eq!(renumber(4, 5, 2), 4);
        assert_eq!(renumber(6, 5, 2), 5);
        assert_eq!(renumber(7, 5, 2), 5);
        assert_eq!(renumber(8, 5, 2), 6);
    }

    #[test]
    fn a_probe_is_answered_after_the_clients_messages() {
        let mut p = Probe::new(2, 3, true, false, 10);
        let ready = b"Z\0\0\0\x05I".as_slice();
        let close_complete = b"3\0\0\0\x04".as_slice();
        assert_eq!(p.step(b'Z', ready), ProbeStep::Held);
        assert_eq!(p.step(b'3', close_complete), ProbeStep::Held);
        assert_eq!(Probe::new(2, 3, true, false, 10).step(b'G', b"G\0\0\0\x07\0\0\0"), ProbeStep::Lost);
        assert_eq!(p.step(b'Z', ready), ProbeStep::Held);
        // The ReadyForQuery of the probe's first Sync, then its error, with
        // notifications around them.
        let notification = b"A\0\0\0\x0e\0\0\0\x01ch\0hi\0".as_slice();
        assert_eq!(p.step(b'Z', ready), ProbeStep::Held);
        assert_eq!(p.step(b'A', notification), ProbeStep::Held);
        let mut error = b"E....Mportal \"".to_vec();
        error.extend_from_slice(p.name.as_bytes());
        error.extend_from_slice(b"\" does not exist\0\0");
        assert_eq!(p.step(b'E', &error), ProbeStep::Held);
        assert_eq!(p.step(b'A', notification), ProbeStep::Held);
        assert_eq!(p.step(b'Z', ready), ProbeStep::Finished);
        // Owed 10, seen 5 before: five outstanding and two answered, so three ignored.
        let (held, ignored) = p.outcome(5).unwrap();
        assert_eq!(held, [ready, close_complete, ready, notification, notification].concat());
        assert_eq!(ignored, 3);
    }

    #[test]
    fn a_probe_whose_answers_do_not_fit_is_lost() {
        let ready = b"Z\0\0\0\x05I".as_slice();
        let error = |p: &Probe| [b"E....M\"".as_slice(), p.name.as_bytes(), b"\"\0\0"].concat();
        let mut p = Probe::new(2, 1, true, false, 10);
        // Its error must follow a ReadyForQuery.
        assert_eq!(p.step(b'3', b"3\0\0\0\x04"), ProbeStep::Held);
        assert_eq!(p.step(b'E', &error(&p)), ProbeStep::Lost);
        assert_eq!(p.step(b'Z', ready), ProbeStep::Held);
        assert_eq!(p.step(b'E', &error(&p)), ProbeStep::Held);
        assert_eq!(p.step(b'1', b"1\0\0\0\x04"), ProbeStep::Lost);
        // Two ignored, where only one Sync was in the window.
        let mut p = Probe::new(2, 1, true, false, 10);
        p.step(b'Z', ready);
        p.step(b'E', &error(&p));
        assert_eq!(p.step(b'Z', ready), ProbeStep::Finished);
        assert!(p.outcome(8).is_none());
        let mut p = Probe::new(2, 1, true, false, 10);
        assert_eq!(p.step(b'D', &vec![0; PROBE_HOLD_LIMIT + 1]), ProbeStep::Lost);
    }

    #[test]
    fn a_probe_asks_with_two_syncs_around_a_describe() {
        let p = Probe::new(2, 1, true, false, 10);
        let m = p.messages();
        assert!(m.starts_with(b"S\0\0\0\x04D"));
        assert!(m.ends_with(b"\0S\0\0\0\x04"));
        assert_eq!(i32::from_be_bytes(m[6..10].try_into().unwrap()) as usize, m.len() - 5 - 1 - 5);
        assert!(contains(&m, p.name.as_bytes()));
    }
}
