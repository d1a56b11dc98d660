//! `put_many`'s blocks: a run of small items in one ring record, so that a stream of them
//! costs one record header, one publishing store and one take per block rather than per item.
//!
//! ```text
//! body:  n: u32 (items)   size: u32 (each item's bytes; 0: they differ, and their ends follow)
//!        first: u32 (the lane's item count before the block, low 24 bits)   0: u32
//!        [n ends: u32, from the data's start, zeros to a multiple of 8]   (size 0 only)
//!        data: the items' encodings, one after another
//! ```
//!
//! **Taking part of a block.** A lane's head is one word, the item count and the byte position
//! (see `layout.rs`). While a block is being taken, the head's position stays at the block and
//! its count moves on, one per item taken: the items of the block already taken are the head's
//! count minus `first`. The head moves past the block with its last item. So one store of the
//! head still takes one item or several, and a consumer killed before it took none of them.

use crate::channel::queue::layout::INLINE_MAX;
use crate::error::{Error, Result};

/// The bytes before a block's ends (or data).
pub(crate) const BLOCK_HEADER: usize = 16;
/// The largest body of a block record.
pub(crate) const BLOCK_MAX: usize = 64 * 1024;

/// The items of one `put_many`, encoded one after another, with where each ends.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    data: Vec<u8>,
    /// Each item's end in `data`, kept only once the items' sizes differ (`size` is `None`).
    ends: Vec<usize>,
    /// The size of every item so far, while they are all the same.
    size: Option<usize>,
    items: usize,
}

impl Batch {
    /// Room for about `items` items of 8 bytes.
    pub(crate) fn with_capacity(items: usize) -> Self {
        Batch { data: Vec::with_capacity(items.saturating_mul(8).min(1 << 20)), ..Batch::default() }
    }

    /// Appends `item`'s encoding.
    #[inline]
    pub(crate) fn push<T: serde::Serialize + ?Sized>(&mut self, item: &T) -> Result<()> {
        let at = self.data.len();
        crate::wire::codec::encode_plain("item", item, &mut self.data)?;
        let len = self.data.len() - at;
        if let Err(e) = crate::wire::frame::check_len(len, crate::wire::frame::MAX_FRAME_LEN) {
            self.data.truncate(at);
            return Err(e);
        }
        match self.size {
            Some(size) if size == len => {}
            // (items of no bytes, like `()`, keep their ends: a size of 0 means "they differ")
            None if self.items == 0 && len > 0 => self.size = Some(len),
            Some(size) => {
                // the first item of another size: from here on, each item's end is kept
                self.ends.extend((1..=self.items).map(|k| k * size));
                self.size = None;
                self.ends.push(at + len);
            }
            None => self.ends.push(at + len),
        }
        self.items += 1;
        Ok(())
    }

    /// The items whose encodings are `bytes`, `size` bytes each (plain numbers: see
    /// `codec::is_plain_number`), without going through `Serialize`.
    pub(crate) fn plain(bytes: &[u8], size: usize) -> Self {
        debug_assert!(size > 0 && bytes.len().is_multiple_of(size));
        let items = bytes.len() / size;
        Batch { data: bytes.to_vec(), ends: Vec::new(), size: (items > 0).then_some(size), items }
    }

    /// How many items.
    pub(crate) fn len(&self) -> usize {
        self.items
    }

    fn start(&self, k: usize) -> usize {
        match (self.size, k) {
            (_, 0) => 0,
            (Some(size), k) => k * size,
            (None, k) => self.ends[k - 1],
        }
    }

    fn end(&self, k: usize) -> usize {
        match self.size {
            Some(size) => (k + 1) * size,
            None => self.ends[k],
        }
    }

    /// Item `k`'s encoding.
    pub(crate) fn item(&self, k: usize) -> &[u8] {
        &self.data[self.start(k)..self.end(k)]
    }

    /// Whether item `k` is too large for a ring record (it goes alone, stored apart).
    pub(crate) fn is_large(&self, k: usize) -> bool {
        self.end(k) - self.start(k) > INLINE_MAX
    }

    /// How many items from `from` one block of at most `max_body` bytes holds (stopping before
    /// a large item), and that block's body length.
    pub(crate) fn fit(&self, from: usize, max_body: usize) -> (usize, usize) {
        let max_body = max_body.min(BLOCK_MAX);
        if max_body <= BLOCK_HEADER {
            return (0, 0);
        }
        let start = self.start(from);
        if let Some(size) = self.size {
            if size > INLINE_MAX {
                return (0, 0);
            }
            let n = ((max_body - BLOCK_HEADER) / size.max(1)).min(self.items - from);
            return (n, BLOCK_HEADER + n * size);
        }
        let (mut n, mut body) = (0, 0);
        while from + n < self.items && !self.is_large(from + n) {
            let next = BLOCK_HEADER + ends_len(n + 1) + (self.ends[from + n] - start);
            if next > max_body {
                break;
            }
            (n, body) = (n + 1, next);
        }
        (n, body)
    }

    /// Writes the body of the block of items `from..from + n` (`body` bytes, as [`fit`]
    /// measured) through `write`, in pieces; `first` is the lane's item count before it.
    pub(crate) fn write_block(&self, from: usize, n: usize, first: u64, mut write: impl FnMut(&[u8])) {
        let size = self.size.unwrap_or(0) as u32;
        let mut header = [0u8; BLOCK_HEADER];
        header[..4].copy_from_slice(&(n as u32).to_le_bytes());
        header[4..8].copy_from_slice(&size.to_le_bytes());
        header[8..12].copy_from_slice(&((first & 0xff_ffff) as u32).to_le_bytes());
        write(&header);
        let start = self.start(from);
        if self.size.is_none() {
            let mut ends = Vec::with_capacity(ends_len(n));
            for k in from..from + n {
                ends.extend_from_slice(&((self.ends[k] - start) as u32).to_le_bytes());
            }
            ends.resize(ends_len(n), 0);
            write(&ends);
        }
        write(&self.data[start..self.end(from + n - 1)]);
    }
}

/// The bytes of `n` items' ends, with the zeros after them.
fn ends_len(n: usize) -> usize {
    (4 * n).next_multiple_of(8)
}

/// A block's header, read from the first [`BLOCK_HEADER`] bytes of its body and checked
/// against the body's length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockInfo {
    pub(crate) n: u64,
    size: usize,
    first: u64,
    len: usize,
}

impl BlockInfo {
    /// The size of each of its items, when they all have one (0: they differ).
    pub(crate) fn fixed_size(&self) -> usize {
        self.size
    }

    /// Reads a block's header; `len` is the body's length (the record header's).
    pub(crate) fn parse(header: &[u8; BLOCK_HEADER], len: usize) -> Result<Self, String> {
        let word = |k: usize| u32::from_le_bytes(header[k..k + 4].try_into().expect("4 bytes"));
        let (n, size, first) = (word(0) as usize, word(4) as usize, word(8) as u64);
        let bad = |why: &str| Err(format!("a block of {n} items of size {size} in a record of {len} bytes: {why}"));
        if n == 0 {
            return bad("no items");
        }
        if !(BLOCK_HEADER..=BLOCK_MAX).contains(&len) {
            return bad("a block's body is 16 bytes to 64 KiB long");
        }
        let need = match size {
            0 => BLOCK_HEADER.checked_add(ends_len(n)),
            size => n.checked_mul(size).and_then(|d| d.checked_add(BLOCK_HEADER)),
        };
        match need {
            Some(need) if (size == 0 && need <= len) || need == len => {}
            _ => return bad("the items do not fit the record"),
        }
        Ok(BlockInfo { n: n as u64, size, first, len })
    }

    /// How many of the block's items a head whose count is `count` has taken.
    pub(crate) fn taken(&self, count: u64) -> Result<u64, String> {
        let k = count.wrapping_sub(self.first) & 0xff_ffff;
        match k < self.n {
            true => Ok(k),
            false => Err(format!("the head has taken {k} items of a block of {}", self.n)),
        }
    }

    /// Where item `k` lies in the body (offset, length); for a block of items of different
    /// sizes, `ends` reads the ends `k - 1` and `k` (`k - 1` is asked only when `k > 0`) from
    /// the body offset given.
    pub(crate) fn item(&self, k: u64, mut ends: impl FnMut(usize) -> u32) -> Result<(usize, usize), String> {
        let k = k as usize;
        if self.size != 0 {
            return Ok((BLOCK_HEADER + k * self.size, self.size));
        }
        let data_at = BLOCK_HEADER + ends_len(self.n as usize);
        let start = if k == 0 { 0 } else { ends(BLOCK_HEADER + 4 * (k - 1)) as usize };
        let end = ends(BLOCK_HEADER + 4 * k) as usize;
        if start > end || data_at + end > self.len || end - start > INLINE_MAX {
            return Err(format!("item {k} of a block ends at {end}, after {start}, in {} bytes", self.len - data_at));
        }
        Ok((data_at + start, end - start))
    }
}

/// Reads the block whose whole body is `body`: calls `read` with items `from..` (at most `max`,
/// until it returns `false`). Returns how many it was given, and why it stopped early if an
/// item's place does not read (the items before it were given).
pub(crate) fn read_items(
    info: &BlockInfo,
    body: &[u8],
    from: u64,
    max: u64,
    mut read: impl FnMut(&[u8]) -> bool,
) -> (u64, Result<(), String>) {
    let last = from.saturating_add(max).min(info.n);
    let end_word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let mut given = 0;
    // (one call of `read`, so that it is inlined into this loop)
    for k in from..last {
        let (at, len) = match info.size {
            0 => match info.item(k, end_word) {
                Ok(place) => place,
                Err(why) => return (given, Err(why)),
            },
            size => (BLOCK_HEADER + k as usize * size, size),
        };
        given += 1;
        if !read(&body[at..at + len]) {
            break;
        }
    }
    (given, Ok(()))
}

/// The error for a lane whose records do not read (a block's, or any other).
pub(crate) fn corrupt(lane: usize, why: String) -> Error {
    Error::BadFrame { reason: format!("a queue's lane {lane} is corrupt: {why}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(batch: &Batch, from: usize, n: usize, first: u64) -> Vec<u8> {
        let mut out = Vec::new();
        batch.write_block(from, n, first, |piece| out.extend_from_slice(piece));
        out
    }

    fn items(b: &[u8], first_count: u64) -> Vec<Vec<u8>> {
        let info = BlockInfo::parse(b[..16].try_into().unwrap(), b.len()).unwrap();
        let from = info.taken(first_count).unwrap();
        let mut got = Vec::new();
        read_items(&info, b, from, u64::MAX, |item| {
            got.push(item.to_vec());
            true
        })
        .1
        .unwrap();
        got
    }

    #[test]
    fn a_block_of_items_of_one_size_reads_back_from_any_item() {
        let mut batch = Batch::with_capacity(10);
        for x in 0u64..10 {
            batch.push(&x).unwrap();
        }
        let (n, len) = batch.fit(2, 1 << 20);
        assert_eq!((n, len), (8, 16 + 64));
        let b = body(&batch, 2, n, 100);
        assert_eq!(b.len(), len);
        let want: Vec<Vec<u8>> = (2u64..10).map(|x| x.to_le_bytes().to_vec()).collect();
        assert_eq!(items(&b, 100), want);
        assert_eq!(items(&b, 103), want[3..]);
        // a head past the block, or before it, is corruption, not a wrong item
        let info = BlockInfo::parse(b[..16].try_into().unwrap(), b.len()).unwrap();
        assert!(info.taken(108).is_err() && info.taken(99).is_err());
        // a small room holds fewer
        assert_eq!(batch.fit(0, 16 + 8 * 3 + 7), (3, 16 + 24));
    }

    #[test]
    fn a_block_of_items_of_different_sizes_keeps_their_ends() {
        let mut batch = Batch::with_capacity(4);
        let words = ["a", "a", "bcd", "", "efghij"];
        for w in words {
            batch.push(w).unwrap();
        }
        let (n, len) = batch.fit(1, 1 << 20);
        assert_eq!(n, 4);
        let b = body(&batch, 1, n, (1 << 24) - 2); // the count wraps inside the block
        assert_eq!(b.len(), len);
        let got: Vec<String> =
            items(&b, (1 << 24) - 2).iter().map(|e| crate::wire::codec::decode_plain(e).unwrap()).collect();
        assert_eq!(got, ["a", "bcd", "", "efghij"]);
        let got: Vec<String> = items(&b, 1).iter().map(|e| crate::wire::codec::decode_plain(e).unwrap()).collect();
        assert_eq!(got, ["efghij"]);
    }

    #[test]
    fn a_large_item_ends_a_block() {
        let mut batch = Batch::with_capacity(3);
        batch.push(&vec![1u8; 10]).unwrap();
        batch.push(&vec![2u8; INLINE_MAX + 1]).unwrap();
        batch.push(&vec![3u8; 10]).unwrap();
        assert_eq!(batch.fit(0, 1 << 20).0, 1);
        assert!(batch.is_large(1));
        assert_eq!(batch.fit(1, 1 << 20).0, 0);
        assert_eq!(batch.fit(2, 1 << 20).0, 1);
        let mut want = Vec::new();
        crate::wire::codec::encode_to("item", &vec![3u8; 10], &mut want).unwrap();
        assert_eq!(batch.item(2), &want[..]);
    }

    #[test]
    fn a_block_that_lies_about_its_items_is_refused() {
        let mut batch = Batch::with_capacity(3);
        for w in ["ab", "c", "def"] {
            batch.push(w).unwrap();
        }
        let good = body(&batch, 0, 3, 0);
        let parse = |b: &[u8]| BlockInfo::parse(b[..16].try_into().unwrap(), b.len());
        // more items than the record holds
        let mut b = good.clone();
        b[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse(&b).is_err());
        // no items
        b[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse(&b).is_err());
        // a size that does not match the length
        let mut b = good.clone();
        b[4..8].copy_from_slice(&5u32.to_le_bytes());
        assert!(parse(&b).is_err());
        // an end past the data, or before the end before it
        // (the second item's end: 500, or 0 after the first's 10, running backwards)
        for bad_end in [500u32, 0] {
            let mut b = good.clone();
            b[20..24].copy_from_slice(&bad_end.to_le_bytes());
            let info = parse(&b).unwrap();
            let (given, r) = read_items(&info, &b, 0, 3, |_| true);
            assert!(r.is_err() && given == 1, "{given} {r:?}");
        }
    }
}
