//! A list of encoded items in one frame (the arguments of a chunk, or its results), laid out
//! so that every item can be found without decoding the ones before it: a value that fails to
//! decode fails alone.
//!
//! Two layouts, chosen by the writer as it goes:
//! - `UNIFORM`: `u32` item length, then the items back to back. Every item succeeded and all
//!   have the same length, the common case of fixed-size values: no bytes per item.
//! - `TAGGED`: per item, a tag ([`ITEM_OK`], [`ITEM_PANIC`], [`ITEM_FAIL`]), a `u32` length and
//!   the bytes. Used from the first item of another length, or the first failure, on.

use crate::error::Error;

const UNIFORM: u8 = 0;
const TAGGED: u8 = 1;
/// The item is a value.
pub(crate) const ITEM_OK: u8 = 0;
/// The item panicked; a `PanicReport` follows.
pub(crate) const ITEM_PANIC: u8 = 1;
/// The item could not be made; a `FailReport` follows.
pub(crate) const ITEM_FAIL: u8 = 2;
/// Bytes an item costs in the tagged layout besides its own.
pub(crate) const TAG_LEN: usize = 5;

/// Appends a list of items to a buffer.
#[derive(Debug)]
pub(crate) struct ItemsWriter {
    mode_at: usize,
    /// Where the first item starts (after the uniform length, in the uniform layout).
    first: usize,
    tagged: bool,
    /// The length of every item so far, in the uniform layout.
    uniform: Option<usize>,
    /// Where the open item starts (its tag, in the tagged layout).
    open: usize,
    count: usize,
}

impl ItemsWriter {
    /// Starts a list at the end of `out`.
    pub(crate) fn new(out: &mut Vec<u8>) -> Self {
        let mode_at = out.len();
        out.push(UNIFORM);
        out.extend_from_slice(&0u32.to_le_bytes());
        let first = out.len();
        ItemsWriter { mode_at, first, tagged: false, uniform: None, open: first, count: 0 }
    }

    /// Items written so far.
    #[inline]
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Starts an item: its bytes are what gets appended to `out` until [`end`](Self::end).
    #[inline(always)]
    pub(crate) fn begin(&mut self, out: &mut Vec<u8>) {
        self.open = out.len();
        if self.tagged {
            out.push(ITEM_OK);
            out.extend_from_slice(&[0; 4]);
        }
    }

    /// Drops what the open item wrote.
    #[inline]
    pub(crate) fn cancel(&mut self, out: &mut Vec<u8>) {
        out.truncate(self.open);
    }

    /// The open item is complete.
    #[inline(always)]
    pub(crate) fn end(&mut self, out: &mut Vec<u8>) {
        if self.tagged {
            let len = out.len() - self.open - TAG_LEN;
            out[self.open + 1..self.open + TAG_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        } else {
            let len = out.len() - self.open;
            match self.uniform {
                None => {
                    self.uniform = Some(len);
                    out[self.mode_at + 1..self.first].copy_from_slice(&(len as u32).to_le_bytes());
                }
                Some(u) if u == len => {}
                Some(_) => {
                    self.retag(out, 1);
                    self.count += 1;
                    return;
                }
            }
        }
        self.count += 1;
    }

    /// Replaces the open item with a failure: `tag` and its report.
    #[inline]
    pub(crate) fn fail(&mut self, out: &mut Vec<u8>, tag: u8, report: &[u8]) {
        out.truncate(self.open);
        if !self.tagged {
            self.retag(out, 0);
        }
        out.push(tag);
        out.extend_from_slice(&(report.len() as u32).to_le_bytes());
        out.extend_from_slice(report);
        self.count += 1;
    }

    /// Switches to the tagged layout: rewrites the items so far, and the `open` ones after
    /// them (0 or 1, written untagged), each with its tag and length.
    #[cold]
    #[inline(never)]
    fn retag(&mut self, out: &mut Vec<u8>, open: usize) {
        self.tagged = true;
        out[self.mode_at] = TAGGED;
        let uniform = self.uniform.unwrap_or(0);
        let plain = out.split_off(self.first);
        out.truncate(self.mode_at + 1);
        let mut at = 0;
        for i in 0..self.count + open {
            let len = if i < self.count { uniform } else { plain.len() - at };
            out.push(ITEM_OK);
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&plain[at..at + len]);
            at += len;
        }
        self.first = self.mode_at + 1;
    }
}

/// Reads a list of `count` items written by [`ItemsWriter`].
#[derive(Debug)]
pub(crate) struct ItemsReader<'a> {
    rest: &'a [u8],
    /// The length of every item, in the uniform layout.
    uniform: Option<usize>,
    left: usize,
}

impl<'a> ItemsReader<'a> {
    /// Checks the layout of `bytes` for `count` items.
    pub(crate) fn new(bytes: &'a [u8], count: usize) -> Result<Self, Error> {
        let (&mode, rest) = bytes.split_first().ok_or_else(|| bad("no layout byte"))?;
        match mode {
            UNIFORM => {
                let len = rest.get(..4).ok_or_else(|| bad("no item length"))?;
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                let rest = &rest[4..];
                if len.checked_mul(count) != Some(rest.len()) {
                    return Err(bad(&format!("{count} items of {len} bytes announced, {} bytes present", rest.len())));
                }
                Ok(ItemsReader { rest, uniform: Some(len), left: count })
            }
            TAGGED => Ok(ItemsReader { rest, uniform: None, left: count }),
            other => Err(bad(&format!("unknown layout {other}"))),
        }
    }

    /// In the uniform layout, the items' length and the bytes of those not read yet, back to
    /// back: for a caller that reads them in one pass.
    #[inline]
    pub(crate) fn uniform(&self) -> Option<(usize, &'a [u8])> {
        self.uniform.map(|len| (len, self.rest))
    }

    /// The next item: its tag and bytes.
    #[inline]
    pub(crate) fn next_item(&mut self) -> Result<(u8, &'a [u8]), Error> {
        if self.left == 0 {
            return Err(bad("more items read than announced"));
        }
        self.left -= 1;
        if let Some(len) = self.uniform {
            let (item, rest) = self.rest.split_at(len);
            self.rest = rest;
            return Ok((ITEM_OK, item));
        }
        if self.rest.len() < TAG_LEN {
            return Err(bad("an item cut short"));
        }
        let tag = self.rest[0];
        let len = u32::from_le_bytes(self.rest[1..TAG_LEN].try_into().expect("4 bytes")) as usize;
        let item = self.rest.get(TAG_LEN..TAG_LEN + len).ok_or_else(|| bad("an item longer than the frame"))?;
        self.rest = &self.rest[TAG_LEN + len..];
        Ok((tag, item))
    }

    /// How many items fail, counted from the tags without decoding anything.
    pub(crate) fn failures(mut self) -> usize {
        let mut failed = 0;
        while self.left > 0 {
            match self.next_item() {
                Ok((tag, _)) => failed += (tag != ITEM_OK) as usize,
                Err(_) => return failed + self.left + 1,
            }
        }
        failed
    }
}

fn bad(reason: &str) -> Error {
    Error::BadFrame { reason: format!("item list: {reason}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(items: &[Result<&[u8], u8>]) -> Vec<u8> {
        let mut out = vec![9, 9]; // something before the list
        let mut w = ItemsWriter::new(&mut out);
        for item in items {
            w.begin(&mut out);
            match item {
                Ok(bytes) => {
                    out.extend_from_slice(bytes);
                    w.end(&mut out);
                }
                Err(tag) => {
                    out.extend_from_slice(b"half-written");
                    w.fail(&mut out, *tag, b"report");
                }
            }
        }
        assert_eq!(w.count(), items.len());
        out
    }

    fn read(bytes: &[u8], n: usize) -> (bool, Vec<(u8, Vec<u8>)>) {
        let mut r = ItemsReader::new(&bytes[2..], n).unwrap();
        let all_ok = r.uniform().is_some();
        let items = (0..n).map(|_| r.next_item().map(|(t, b)| (t, b.to_vec())).unwrap()).collect();
        assert!(r.next_item().is_err(), "no more than announced");
        (all_ok, items)
    }

    #[test]
    fn equal_lengths_cost_no_bytes_per_item() {
        let out = write(&[Ok(b"abcd"), Ok(b"efgh"), Ok(b"ijkl")]);
        assert_eq!(out.len(), 2 + 5 + 12);
        let (all_ok, items) = read(&out, 3);
        assert!(all_ok);
        assert_eq!(items, [(0, b"abcd".to_vec()), (0, b"efgh".to_vec()), (0, b"ijkl".to_vec())]);
        let (all_ok, items) = read(&write(&[]), 0);
        assert!(all_ok && items.is_empty());
    }

    #[test]
    fn another_length_or_a_failure_switches_to_tags_and_keeps_every_item() {
        let out = write(&[Ok(b"ab"), Ok(b"cd"), Ok(b"efg"), Ok(b""), Err(ITEM_PANIC), Ok(b"hi")]);
        let (all_ok, items) = read(&out, 6);
        assert!(!all_ok);
        let expected: [(u8, &[u8]); 6] =
            [(0, b"ab"), (0, b"cd"), (0, b"efg"), (0, b""), (ITEM_PANIC, b"report"), (0, b"hi")];
        assert_eq!(items, expected.map(|(t, b)| (t, b.to_vec())));
        assert_eq!(ItemsReader::new(&out[2..], 6).unwrap().failures(), 1);

        let out = write(&[Err(ITEM_FAIL), Ok(b"x")]);
        assert_eq!(read(&out, 2).1, [(ITEM_FAIL, b"report".to_vec()), (0, b"x".to_vec())]);
    }

    #[test]
    fn a_lying_layout_is_an_error_not_a_panic() {
        let out = write(&[Ok(b"abcd"), Ok(b"efgh")]);
        assert!(ItemsReader::new(&out[2..], 3).is_err(), "3 items announced, 2 present");
        assert!(ItemsReader::new(&[], 1).is_err());
        assert!(ItemsReader::new(&[7], 1).is_err());
        let mut r = ItemsReader::new(&[TAGGED, 0, 200, 0, 0, 0, 1, 2], 1).unwrap();
        assert!(r.next_item().is_err(), "an item longer than the frame");
    }
}
