//! Support for the hostile-input tests: a seeded generator, mutations aimed at
//! the places where address and length arithmetic goes wrong, and the checks
//! every accepted load plan must pass. Seeded, so a failure repeats exactly.

use crate::image::{LoadPlan, SegmentData};
use alloc::vec::Vec;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// splitmix64: tiny, and spreads even consecutive seeds well.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Below `n`, which must not be 0; the modulo bias does not matter here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// A header field: its offset and width in bytes (1, 2, 4 or 8).
pub type Field = (usize, usize);

/// A value where arithmetic wraps or a bounds check is off by one: zero, the
/// tops of the integer types, and values near the image's length.
pub fn edge_value(rng: &mut Rng, len: usize) -> u64 {
    let small = rng.below(4097) as u64;
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
        _ => rng.next(),
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
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        if len == 0 {
            return;
        }
        match rng.below(8) {
            0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(len);
                bytes[at] = rng.next() as u8;
            }
            // Named fields most often: that is where the arithmetic is.
            2..=4 => {
                let field = rng.pick(fields);
                let value = edge_value(rng, len);
                put(bytes, field, value);
            }
            5 => {
                let field = (rng.below(len), rng.pick(&[1, 2, 4, 8]));
                let value = edge_value(rng, len);
                put(bytes, field, value);
            }
            6 => bytes.truncate(rng.below(len)),
            _ => {
                let more = rng.below(64);
                bytes.extend((0..more).map(|_| rng.next() as u8));
            }
        }
    }
}

/// Whether `part` is a piece of `whole` (an empty slice is anywhere).
pub fn inside(part: &[u8], whole: &[u8]) -> bool {
    let (part_range, whole_range) = (part.as_ptr_range(), whole.as_ptr_range());
    part.is_empty() || (whole_range.start <= part_range.start && part_range.end <= whole_range.end)
}

/// What every accepted plan must satisfy, checked here independently of the
/// loader's own checks: each segment inside `memory`, without wrapping; image
/// bytes taken from one of `inputs`; no two segments overlapping; the entry
/// point in a segment.
pub fn check_plan(plan: &LoadPlan<'_>, memory: u64, inputs: &[&[u8]]) {
    let mut ranges = Vec::new();
    for s in &plan.segments {
        let len = s.data.bytes().len() as u64;
        let end = s.guest_phys.checked_add(len).and_then(|e| e.checked_add(s.zero_fill));
        let end = end.unwrap_or_else(|| panic!("segment at {:#x} wraps: {len:#x} + {:#x}", s.guest_phys, s.zero_fill));
        assert!(end <= memory, "segment {:#x}..{end:#x} outside {memory:#x} bytes of memory", s.guest_phys);
        if let SegmentData::Borrowed(data) = &s.data {
            assert!(
                inputs.iter().any(|input| inside(data, input)),
                "segment at {:#x} not from the inputs",
                s.guest_phys
            );
        }
        if end > s.guest_phys {
            ranges.push((s.guest_phys, end));
        }
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "segments {:x?} and {:x?} overlap", pair[0], pair[1]);
    }
    assert!(ranges.iter().any(|r| (r.0..r.1).contains(&plan.entry)), "entry {:#x} outside the segments", plan.entry);
}

/// Runs `check` on every prefix of each of `images`, then on `iterations`
/// mutants of them. `check` may adjust its input first (e.g. fix a checksum so
/// the mutant gets past it). A panic names the seed, the case and the input as
/// checked.
pub fn fuzz(
    seed: u64,
    iterations: usize,
    images: &[Vec<u8>],
    fields: &[Field],
    mut check: impl FnMut(&mut Rng, &mut Vec<u8>),
) {
    let mut rng = Rng::new(seed);
    let mut input = Vec::new();
    let mut run = |rng: &mut Rng, input: &mut Vec<u8>, case: &dyn core::fmt::Display| {
        if catch_unwind(AssertUnwindSafe(|| check(rng, input))).is_err() {
            panic!("seed {seed}, {case}: input {input:02x?}");
        }
    };
    for (n, image) in images.iter().enumerate() {
        for cut in 0..=image.len() {
            input.clear();
            input.extend_from_slice(&image[..cut]);
            run(&mut rng, &mut input, &format_args!("image {n} cut at {cut}"));
        }
    }
    for case in 0..iterations {
        input.clear();
        input.extend_from_slice(&images[case % images.len()]);
        mutate(&mut rng, &mut input, fields);
        run(&mut rng, &mut input, &format_args!("mutant {case}"));
    }
}
