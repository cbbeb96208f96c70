//! Bounded byte rings: a VM's recent console output, Basalt's recent log.
//!
//! Output arrives whether or not anyone reads it, and a chatty guest must not
//! be able to grow the host's heap; so a ring allocates its buffer once, keeps
//! the newest bytes, and counts what it had to overwrite so a reader can be
//! told that something was lost rather than silently shown a gap.

use alloc::vec;
use alloc::vec::Vec;

/// The newest `capacity` bytes written, and how many older ones were lost.
#[derive(Clone, Debug)]
pub struct ByteRing {
    /// Allocated once, at `capacity` bytes; never resized, so a push cannot fail.
    buffer: Vec<u8>,
    /// Index of the oldest byte held.
    start: usize,
    /// Bytes held, at most `buffer.len()`.
    len: usize,
    /// Bytes overwritten since `new` or `clear`, saturating.
    dropped: u64,
    /// The oldest byte held continues a line whose beginning was lost, so a
    /// reader who wants whole lines must skip to the next newline. Tracked
    /// rather than inferred from `dropped`, so that a loss ending exactly at a
    /// newline does not cost the first complete line.
    starts_mid_line: bool,
}

/// A byte count as the `u64` the counters use; saturating, since a `usize`
/// wider than 64 bits is the only way this could fail.
fn count(bytes: usize) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

impl ByteRing {
    /// A ring keeping the newest `capacity` bytes; 0 is allowed and keeps
    /// nothing (every byte pushed is counted as dropped).
    pub fn new(capacity: usize) -> ByteRing {
        ByteRing { buffer: vec![0; capacity], start: 0, len: 0, dropped: 0, starts_mid_line: false }
    }

    /// Appends `bytes`, overwriting the oldest bytes held when there is no
    /// room. Costs O(`bytes.len()`) and never reallocates.
    pub fn push(&mut self, bytes: &[u8]) {
        let capacity = self.buffer.len();
        let Some(&last_pushed) = bytes.last() else {
            return;
        };
        if capacity == 0 {
            self.dropped = self.dropped.saturating_add(count(bytes.len()));
            self.starts_mid_line = last_pushed != b'\n';
            return;
        }
        if bytes.len() >= capacity {
            // Everything held, and the head of `bytes`, is lost: keep the tail.
            let skipped = bytes.len() - capacity;
            let last_lost = match skipped.checked_sub(1) {
                Some(index) => bytes.get(index).copied(),
                None => self.newest(),
            };
            self.dropped = self.dropped.saturating_add(count(self.len)).saturating_add(count(skipped));
            if let Some(byte) = last_lost {
                self.starts_mid_line = byte != b'\n';
            }
            if let Some(tail) = bytes.get(skipped..) {
                self.buffer.copy_from_slice(tail);
            }
            self.start = 0;
            self.len = capacity;
            return;
        }
        // `bytes` fits: make room by dropping the oldest bytes held, then copy
        // it in, in at most two pieces around the end of the buffer.
        let free = capacity - self.len;
        let lost = bytes.len().saturating_sub(free);
        if lost > 0 {
            if let Some(byte) = self.byte_at(lost - 1) {
                self.starts_mid_line = byte != b'\n';
            }
            // Both terms are below `capacity`, which a Vec keeps below
            // isize::MAX, so the sum cannot wrap.
            self.start = (self.start + lost) % capacity;
            self.len -= lost;
            self.dropped = self.dropped.saturating_add(count(lost));
        }
        let end = (self.start + self.len) % capacity;
        let first_piece = bytes.len().min(capacity - end);
        let (head, rest) = bytes.split_at(first_piece);
        if let Some(slot) = self.buffer.get_mut(end..end + first_piece) {
            slot.copy_from_slice(head);
        }
        if let Some(slot) = self.buffer.get_mut(..rest.len()) {
            slot.copy_from_slice(rest);
        }
        self.len += bytes.len();
    }

    /// The `offset`-th oldest byte held.
    fn byte_at(&self, offset: usize) -> Option<u8> {
        if offset >= self.len {
            return None;
        }
        self.buffer.get((self.start + offset) % self.buffer.len()).copied()
    }

    /// The newest byte held.
    fn newest(&self) -> Option<u8> {
        self.byte_at(self.len.checked_sub(1)?)
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most bytes the ring holds.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes lost to overwrite since `new` or `clear` (saturating).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The bytes held, oldest first, as two slices (the second is empty
    /// unless the contents wrap around the end of the buffer).
    pub fn contents(&self) -> (&[u8], &[u8]) {
        let capacity = self.buffer.len();
        let first_len = self.len.min(capacity - self.start.min(capacity));
        let wrapped_len = self.len - first_len;
        let first = self.buffer.get(self.start..self.start + first_len).unwrap_or(&[]);
        let wrapped = self.buffer.get(..wrapped_len).unwrap_or(&[]);
        (first, wrapped)
    }

    /// The bytes held, oldest first, in one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let (first, wrapped) = self.contents();
        let mut all = Vec::with_capacity(self.len);
        all.extend_from_slice(first);
        all.extend_from_slice(wrapped);
        all
    }

    /// The contents from the first byte after the first '\n' when bytes were
    /// lost (so a reader never starts mid-line); all when none were.
    ///
    /// When the loss ended exactly at a newline, the oldest byte held already
    /// starts a line and everything is returned. When bytes were lost and no
    /// newline is held, every byte belongs to a line whose start is gone, and
    /// the result is empty.
    pub fn whole_lines(&self) -> Vec<u8> {
        let all = self.to_vec();
        if !self.starts_mid_line {
            return all;
        }
        match all.iter().position(|&byte| byte == b'\n') {
            Some(newline) => all.get(newline + 1..).map(<[u8]>::to_vec).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Forgets every byte held and the count of those lost; keeps the buffer.
    pub fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
        self.dropped = 0;
        self.starts_mid_line = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(ring: &ByteRing) -> Vec<u8> {
        let (first, second) = ring.contents();
        [first, second].concat()
    }

    #[test]
    fn a_new_ring_is_empty() {
        let ring = ByteRing::new(8);
        assert_eq!(ring.len(), 0);
        assert!(ring.is_empty());
        assert_eq!(ring.capacity(), 8);
        assert_eq!(ring.dropped(), 0);
        assert_eq!(ring.contents(), (&[][..], &[][..]));
        assert_eq!(ring.to_vec(), b"");
        assert_eq!(ring.whole_lines(), b"");
    }

    #[test]
    fn pushes_that_fit_are_kept_in_order() {
        let mut ring = ByteRing::new(8);
        ring.push(b"abc");
        ring.push(b"");
        ring.push(b"de");
        assert_eq!(ring.len(), 5);
        assert!(!ring.is_empty());
        assert_eq!(ring.to_vec(), b"abcde");
        assert_eq!(ring.contents(), (&b"abcde"[..], &[][..]));
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn an_exact_capacity_write_fills_without_loss() {
        let mut ring = ByteRing::new(4);
        ring.push(b"wxyz");
        assert_eq!(ring.to_vec(), b"wxyz");
        assert_eq!(ring.dropped(), 0);
        assert_eq!(ring.len(), 4);
        // Filling up to capacity in pieces is the same.
        let mut pieces = ByteRing::new(4);
        pieces.push(b"wx");
        pieces.push(b"yz");
        assert_eq!(pieces.to_vec(), b"wxyz");
        assert_eq!(pieces.dropped(), 0);
        // A second exact-capacity write replaces all of the first.
        ring.push(b"1234");
        assert_eq!(ring.to_vec(), b"1234");
        assert_eq!(ring.dropped(), 4);
    }

    #[test]
    fn wrap_around_keeps_the_newest_and_counts_the_rest() {
        let mut ring = ByteRing::new(5);
        ring.push(b"abcd");
        ring.push(b"efg");
        assert_eq!(ring.to_vec(), b"cdefg");
        assert_eq!(ring.dropped(), 2);
        assert_eq!(ring.len(), 5);
        // The contents now wrap: two slices, oldest first.
        let (first, second) = ring.contents();
        assert_eq!(first, b"cde");
        assert_eq!(second, b"fg");
        ring.push(b"h");
        assert_eq!(ring.to_vec(), b"defgh");
        assert_eq!(ring.dropped(), 3);
        assert_eq!(joined(&ring), ring.to_vec());
    }

    #[test]
    fn a_push_larger_than_capacity_keeps_its_tail() {
        let mut ring = ByteRing::new(4);
        ring.push(b"ab");
        ring.push(b"0123456789");
        assert_eq!(ring.to_vec(), b"6789");
        // The two bytes held and the first six pushed.
        assert_eq!(ring.dropped(), 8);
        assert_eq!(ring.contents(), (&b"6789"[..], &[][..]));
        // And the ring keeps working after it.
        ring.push(b"x");
        assert_eq!(ring.to_vec(), b"789x");
        assert_eq!(ring.dropped(), 9);
    }

    #[test]
    fn zero_capacity_keeps_nothing_and_counts_everything() {
        let mut ring = ByteRing::new(0);
        ring.push(b"hello\n");
        ring.push(b"x");
        assert_eq!(ring.capacity(), 0);
        assert_eq!(ring.len(), 0);
        assert!(ring.is_empty());
        assert_eq!(ring.dropped(), 7);
        assert_eq!(ring.contents(), (&[][..], &[][..]));
        assert_eq!(ring.to_vec(), b"");
        assert_eq!(ring.whole_lines(), b"");
        ring.clear();
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn whole_lines_is_everything_when_nothing_was_lost() {
        let mut ring = ByteRing::new(17);
        ring.push(b"partial");
        assert_eq!(ring.whole_lines(), b"partial");
        ring.push(b" line\nnext");
        assert_eq!(ring.whole_lines(), b"partial line\nnext");
    }

    #[test]
    fn whole_lines_skips_the_cut_line_after_a_loss() {
        let mut ring = ByteRing::new(10);
        ring.push(b"first line\nsecond\nthird");
        assert_eq!(ring.to_vec(), b"cond\nthird");
        assert_eq!(ring.whole_lines(), b"third");
        ring.push(b"\n");
        assert_eq!(ring.whole_lines(), b"third\n");
    }

    #[test]
    fn whole_lines_keeps_a_line_when_the_loss_ended_at_a_newline() {
        let mut ring = ByteRing::new(6);
        ring.push(b"ab\n");
        ring.push(b"cd");
        ring.push(b"efgh");
        // "ab\n" went: the oldest byte held starts a line.
        assert_eq!(ring.to_vec(), b"cdefgh");
        assert_eq!(ring.dropped(), 3);
        assert_eq!(ring.whole_lines(), b"cdefgh");

        // One byte fewer lost, and the oldest byte held is that newline.
        let mut short = ByteRing::new(6);
        short.push(b"ab\n");
        short.push(b"cdef\n");
        assert_eq!(short.to_vec(), b"\ncdef\n");
        assert_eq!(short.dropped(), 2);
        assert_eq!(short.whole_lines(), b"cdef\n");

        let mut exact = ByteRing::new(5);
        exact.push(b"ab\n");
        exact.push(b"cdefg");
        assert_eq!(exact.to_vec(), b"cdefg");
        assert_eq!(exact.dropped(), 3);
        assert_eq!(exact.whole_lines(), b"cdefg");

        // The same through the path for a push larger than the ring.
        let mut large = ByteRing::new(4);
        large.push(b"xx\nline");
        assert_eq!(large.whole_lines(), b"line");
        // Exactly capacity, replacing a held line that ended with a newline.
        let mut replaced = ByteRing::new(3);
        replaced.push(b"ab\n");
        replaced.push(b"cde");
        assert_eq!(replaced.whole_lines(), b"cde");
        replaced.push(b"fgh");
        assert_eq!(replaced.whole_lines(), b"");
    }

    #[test]
    fn whole_lines_is_empty_when_only_part_of_one_line_is_held() {
        let mut ring = ByteRing::new(4);
        ring.push(b"a very long line without end");
        assert_eq!(ring.to_vec(), b" end");
        assert_eq!(ring.whole_lines(), b"");
    }

    #[test]
    fn whole_lines_across_the_wrap() {
        let mut ring = ByteRing::new(8);
        ring.push(b"aaaaaa");
        ring.push(b"b\ncc\n");
        assert_eq!(ring.to_vec(), b"aaab\ncc\n");
        let (first, second) = ring.contents();
        assert!(!second.is_empty(), "the contents should wrap here");
        assert_eq!([first, second].concat(), b"aaab\ncc\n");
        assert_eq!(ring.whole_lines(), b"cc\n");
    }

    #[test]
    fn clear_forgets_contents_and_losses_but_keeps_capacity() {
        let mut ring = ByteRing::new(3);
        ring.push(b"abcdef");
        assert_eq!(ring.dropped(), 3);
        ring.clear();
        assert!(ring.is_empty());
        assert_eq!(ring.dropped(), 0);
        assert_eq!(ring.capacity(), 3);
        ring.push(b"xy");
        assert_eq!(ring.to_vec(), b"xy");
        assert_eq!(ring.whole_lines(), b"xy");
    }

    #[test]
    fn the_buffer_is_never_reallocated() {
        let mut ring = ByteRing::new(7);
        let before = ring.buffer.as_ptr();
        for size in 0..40 {
            ring.push(&alloc::vec![b'q'; size]);
        }
        assert_eq!(ring.buffer.as_ptr(), before);
        assert_eq!(ring.buffer.len(), 7);
        assert_eq!(ring.buffer.capacity(), 7);
    }

    /// Every push sequence leaves the ring holding exactly the newest bytes,
    /// compared with a plain vector that keeps everything.
    #[test]
    fn random_pushes_match_a_model() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for capacity in [0usize, 1, 2, 3, 7, 16, 64] {
            let mut ring = ByteRing::new(capacity);
            let mut everything: Vec<u8> = Vec::new();
            for _ in 0..500 {
                let size = (next() % 20) as usize;
                let bytes: Vec<u8> = (0..size).map(|_| if next() % 5 == 0 { b'\n' } else { b'a' }).collect();
                ring.push(&bytes);
                everything.extend_from_slice(&bytes);
                let kept = everything.len().min(capacity);
                let tail = &everything[everything.len() - kept..];
                assert_eq!(ring.to_vec(), tail);
                assert_eq!(joined(&ring), tail);
                assert_eq!(ring.len(), kept);
                assert_eq!(ring.dropped(), (everything.len() - kept) as u64);
                // The model of whole_lines: skip to after the first newline
                // unless the byte before the tail was a newline.
                let lost = everything.len() - kept;
                let expected: &[u8] = if lost == 0 || everything[lost - 1] == b'\n' {
                    tail
                } else {
                    match tail.iter().position(|&b| b == b'\n') {
                        Some(newline) => &tail[newline + 1..],
                        None => &[],
                    }
                };
                assert_eq!(ring.whole_lines(), expected);
            }
        }
    }
}
