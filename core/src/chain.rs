//! The hash chain over a tenant's log.
//!
//! `hash = SHA-256(domain tag || prev_hash || canonical header || payload)`, where
//! the payload is the stored protobuf bytes of the event and the header is a
//! fixed, length-prefixed encoding of the record's metadata. Because the hash is
//! computed over stored bytes, re-encoding an event differently can never change
//! a verdict. The first event of a tenant chains to [`GENESIS`].

use sha2::{Digest, Sha256};

/// The `prev_hash` of a tenant's first event.
pub const GENESIS: [u8; 32] = [0; 32];

const DOMAIN: &[u8] = b"airlock.event.v1\0";

/// Everything in a record that the hash covers besides the payload.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    pub tenant_id: &'a str,
    pub seq: u64,
    pub stream: &'a str,
    pub stream_version: u64,
    pub occurred_at_unix_ms: i64,
    pub actor: &'a str,
}

/// The hash of one record given the hash of the record before it.
pub fn link(prev_hash: &[u8], header: &Header<'_>, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    put_bytes(&mut h, prev_hash);
    put_bytes(&mut h, header.tenant_id.as_bytes());
    h.update(header.seq.to_be_bytes());
    put_bytes(&mut h, header.stream.as_bytes());
    h.update(header.stream_version.to_be_bytes());
    h.update(header.occurred_at_unix_ms.to_be_bytes());
    put_bytes(&mut h, header.actor.as_bytes());
    put_bytes(&mut h, payload);
    h.finalize().into()
}

fn put_bytes(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Why a chain does not verify, naming the first record that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event seq {seq}: expected seq {expected} (a gap or a reordering)")]
    Gap { seq: u64, expected: u64 },
    #[error("event seq {seq}: prev_hash does not match the hash of seq {prev}")]
    BrokenLink { seq: u64, prev: u64 },
    #[error("event seq {seq}: hash does not match its contents")]
    BadHash { seq: u64 },
}

impl ChainError {
    /// The first `seq` that fails.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Gap { seq, .. } | ChainError::BrokenLink { seq, .. } | ChainError::BadHash { seq } => *seq,
        }
    }
}

/// Incremental verifier: feed records in order from seq 1.
#[derive(Debug, Clone)]
pub struct Verifier {
    next_seq: u64,
    prev_hash: [u8; 32],
}

impl Default for Verifier {
    fn default() -> Self {
        Self { next_seq: 1, prev_hash: GENESIS }
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one record; on success it becomes the link the next one must follow.
    pub fn check(
        &mut self,
        header: &Header<'_>,
        payload: &[u8],
        prev_hash: &[u8],
        hash: &[u8],
    ) -> Result<(), ChainError> {
        if header.seq != self.next_seq {
            return Err(ChainError::Gap { seq: header.seq, expected: self.next_seq });
        }
        if prev_hash != self.prev_hash {
            return Err(ChainError::BrokenLink { seq: header.seq, prev: header.seq.saturating_sub(1) });
        }
        let computed = link(prev_hash, header, payload);
        if hash != computed {
            return Err(ChainError::BadHash { seq: header.seq });
        }
        self.prev_hash = computed;
        self.next_seq += 1;
        Ok(())
    }

    /// How many records verified so far.
    pub fn verified(&self) -> u64 {
        self.next_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> Header<'static> {
        Header { tenant_id: "t", seq, stream: "s", stream_version: seq, occurred_at_unix_ms: 1, actor: "a" }
    }

    #[test]
    fn a_chain_verifies_and_an_edit_names_its_seq() {
        let mut prev = GENESIS;
        let mut records = Vec::new();
        for seq in 1..=3 {
            let payload = vec![seq as u8];
            let hash = link(&prev, &header(seq), &payload);
            records.push((seq, payload, prev, hash));
            prev = hash;
        }
        let mut v = Verifier::new();
        for (seq, payload, prev, hash) in &records {
            v.check(&header(*seq), payload, prev, hash).unwrap();
        }
        assert_eq!(v.verified(), 3);

        let mut v = Verifier::new();
        let (seq, _, prev, hash) = &records[0];
        v.check(&header(*seq), b"changed", prev, hash).unwrap_err();
        let mut v = Verifier::new();
        let (seq, payload, prev, hash) = &records[0];
        v.check(&header(*seq), payload, prev, hash).unwrap();
        let (_, payload, prev, hash) = &records[2];
        assert_eq!(v.check(&header(3), payload, prev, hash), Err(ChainError::Gap { seq: 3, expected: 2 }));
    }

    #[test]
    fn fields_are_length_prefixed_so_boundaries_cannot_shift() {
        let a = Header { stream: "ab", actor: "c", ..header(1) };
        let b = Header { stream: "a", actor: "bc", ..header(1) };
        assert_ne!(link(&GENESIS, &a, b""), link(&GENESIS, &b, b""));
    }
}
