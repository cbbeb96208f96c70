//! Support for the hostile-input tests: a runner over every prefix and seeded mutants of an image
//! (the generator and mutations are `basalt_fuzz`'s). Seeded, so a failure
//! repeats exactly.

use alloc::vec::Vec;
use basalt_fuzz::{mutate, Field, Rng};
use std::panic::{catch_unwind, AssertUnwindSafe};

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
