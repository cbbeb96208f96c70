//! A fuzzer's bytes read as the choices of a structured input.

/// Reads bytes as a sequence of choices. Past the end every read gives zeros,
/// so any input is a complete one (a target never has "too few bytes" to
/// handle) and a shorter input is a simpler one: mutations that cut an input
/// still give something the target runs.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    /// Up to `n` bytes, fewer at the end of the input.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let rest = self.rest();
        let taken = &rest[..n.min(rest.len())];
        self.at += taken.len();
        taken
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.le::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// Below `n` (0 when `n` is 0), from as few bytes as `n` needs, so a
    /// byte flip changes one choice rather than shifting every later one.
    pub fn below(&mut self, n: u64) -> u64 {
        let raw = match n {
            0 => return 0,
            1..=0x100 => self.u8().into(),
            0x101..=0x1_0000 => self.u16().into(),
            0x1_0001..=0x1_0000_0000 => self.u32().into(),
            _ => self.u64(),
        };
        raw % n
    }

    /// True once in `n` times for evenly spread bytes (`n` not 0).
    pub fn one_in(&mut self, n: u8) -> bool {
        self.u8().is_multiple_of(n)
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// One of `from`, which must not be empty.
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.index(from.len())]
    }

    /// A number where arithmetic tends to go wrong, most often: zero, small
    /// numbers, the tops of the integer types and just below them, powers of
    /// two; otherwise any 64-bit value. One byte says which kind.
    pub fn edge(&mut self) -> u64 {
        match self.u8() % 10 {
            0 => 0,
            1 => self.u8().into(),
            2 => self.u16().into(),
            3 => u64::MAX - u64::from(self.u8()),
            4 => u64::from(u32::MAX) - u64::from(self.u8()),
            5 => u64::from(u16::MAX) - u64::from(self.u8()),
            6 => 1 << (self.u8() % 64),
            7 => (1 << (self.u8() % 64)) - 1,
            8 => self.u32().into(),
            _ => self.u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn reads_past_the_end_are_zero() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), 0x0201);
        assert!(!r.is_empty());
        assert_eq!(r.u32(), 3);
        assert!(r.is_empty());
        assert_eq!((r.u8(), r.u64(), r.below(7), r.bytes(4)), (0, 0, 0, &[][..]));
    }

    #[test]
    fn choices_stay_in_range() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut r = Reader::new(&bytes);
        while !r.is_empty() {
            assert!(r.below(3) < 3);
            assert!(r.below(300) < 300);
            assert_eq!(r.below(0), 0);
            assert!(r.index(5) < 5);
        }
    }
}
