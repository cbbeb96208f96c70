//! What the hostile-input tests of every crate share: a seeded generator (a
//! failure repeats exactly from its seed and case number) and mutations aimed
//! at the places where address and length arithmetic goes wrong. With the
//! `std` feature, also the in-process fuzzing engine behind `cargo xtask fuzz`
//! (`engine`), and `Reader`, which turns a fuzzer's bytes into the choices of
//! a structured input.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod engine;
#[cfg(feature = "std")]
pub mod heap;
mod reader;

pub use reader::Reader;

use alloc::vec::Vec;

/// splitmix64: tiny, and spreads even consecutive seeds well.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Below `n`, which must not be 0; the modulo bias does not matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index below `n` (not 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.index(from.len())]
    }

    /// True once in `one_in` times on average.
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// A header field: its offset and width in bytes (1, 2, 4 or 8).
pub type Field = (usize, usize);

/// A value where arithmetic wraps or a bounds check is off by one: zero, the
/// tops of the integer types, and values near `len` (the input's length).
pub fn edge_value(rng: &mut Rng, len: usize) -> u64 {
    let small = rng.below(4097);
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::MAX - small,
        4 => u32::MAX.into(),
        5 => u64::from(u32::MAX) - small,
        6 => 1 << 63,
        7 => 0x8000_0000,
        8 => (len as u64).wrapping_add(small).wrapping_sub(2048),
        9 => small,
        10 => u64::from(u16::MAX) - small.min(0xffff),
        _ => rng.next_u64(),
    }
}

/// Writes the low `width` bytes of `value` at `at`, if they fit.
pub fn put(bytes: &mut [u8], (at, width): Field, value: u64) {
    if let Some(to) = bytes.get_mut(at..).and_then(|b| b.get_mut(..width)) {
        to.copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

/// One to four mutations: bit flips, random bytes, edge values in `fields` or
/// anywhere, truncation and extension.
pub fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, fields: &[Field]) {
    for _ in 0..1 + rng.index(4) {
        let len = bytes.len();
        if len == 0 {
            return;
        }
        match rng.below(8) {
            0 => {
                let at = rng.index(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.index(len);
                bytes[at] = rng.next_u64() as u8;
            }
            // Named fields most often: that is where the arithmetic is.
            2..=4 => {
                let field = rng.pick(fields);
                let value = edge_value(rng, len);
                put(bytes, field, value);
            }
            5 => {
                let field = (rng.index(len), rng.pick(&[1, 2, 4, 8]));
                let value = edge_value(rng, len);
                put(bytes, field, value);
            }
            6 => bytes.truncate(rng.index(len)),
            _ => {
                let more = rng.index(64);
                bytes.extend((0..more).map(|_| rng.next_u64() as u8));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_stream_and_seeds_differ() {
        let (mut a, mut b, mut c) = (Rng::new(1), Rng::new(1), Rng::new(2));
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());
    }

    #[test]
    fn put_writes_only_what_fits() {
        let mut bytes = [0u8; 4];
        put(&mut bytes, (2, 4), u64::MAX);
        assert_eq!(bytes, [0; 4]);
        put(&mut bytes, (2, 2), 0x1234);
        assert_eq!(bytes, [0, 0, 0x34, 0x12]);
    }
}
