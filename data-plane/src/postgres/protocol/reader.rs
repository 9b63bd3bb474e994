//! A cursor over one message body that never reads past it.

use bytes::Bytes;

use super::{ProtocolError, Tag};

pub(crate) struct Reader {
    tag: Tag,
    body: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(tag: u8, body: Bytes) -> Self {
        Reader { tag: Tag(tag), body, pos: 0 }
    }

    pub(crate) fn malformed(&self, what: &'static str) -> ProtocolError {
        ProtocolError::Malformed { tag: self.tag, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, or `what` when the body is shorter.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, ProtocolError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.body.len()).ok_or_else(|| self.malformed(what))?;
        let out = self.body.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let b = self.body.get(self.pos).copied().ok_or_else(|| self.malformed(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let b = self.bytes(N, what)?;
        <[u8; N]>::try_from(b.as_ref()).map_err(|_| self.malformed(what))
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, ProtocolError> {
        self.array::<2>(what).map(i16::from_be_bytes)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        self.array::<2>(what).map(u16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        self.array::<4>(what).map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        self.array::<4>(what).map(u32::from_be_bytes)
    }

    /// A NUL-terminated string, without its terminator; the terminator must lie
    /// inside the body.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        let rest = self.body.get(self.pos..).unwrap_or_default();
        let nul = rest.iter().position(|b| *b == 0).ok_or_else(|| self.malformed(what))?;
        let out = self.bytes(nul, what)?;
        self.pos += 1;
        Ok(out)
    }

    /// Everything left in the body.
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.body.slice(self.pos.min(self.body.len())..);
        self.pos = self.body.len();
        out
    }

    /// Refuses bytes after the last field.
    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(ProtocolError::TrailingBytes { tag: self.tag, extra }),
        }
    }
}
