//! Figures the shell shows "since the last look" (`list`, `cores`, `top`):
//! counters that only grow, sampled at each command, shown as what they grew
//! by since the previous one, over the time between the two.

use alloc::vec::Vec;

/// The counters of each key (a VM, a core, a vCPU) at the last look.
pub struct Sampler<K, const N: usize> {
    /// When the last look was (0: none yet).
    at: u64,
    last: Vec<(K, u64, [u64; N])>,
}

/// What one key's counters grew by since its last look, and over how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Growth<K, const N: usize> {
    pub key: K,
    /// Time since its last look (or since the `since` it was first seen with).
    pub elapsed: u64,
    pub by: [u64; N],
}

impl<K: PartialEq, const N: usize> Sampler<K, N> {
    pub const fn new() -> Self {
        Sampler { at: 0, last: Vec::new() }
    }

    /// When the last look was, if there was one.
    pub fn last_look(&self) -> Option<u64> {
        (self.at != 0).then_some(self.at)
    }

    /// A look at `now`: each of `current` (key, counters) with what its
    /// counters grew by since the last look. A key not seen before counts
    /// from zero at the `since` given with it (when it started); a counter
    /// that went back (its owner restarted under the same key) counts from
    /// zero. Keys absent now are forgotten.
    pub fn look(&mut self, now: u64, current: impl IntoIterator<Item = (K, u64, [u64; N])>) -> Vec<Growth<K, N>>
    where
        K: Clone,
    {
        let mut next = Vec::new();
        let mut growth = Vec::new();
        for (key, since, counters) in current {
            let (at, before) = match self.last.iter().find(|(k, ..)| *k == key) {
                Some((_, at, before)) => (*at, *before),
                None => (since, [0; N]),
            };
            let mut by = [0; N];
            for ((by, now), before) in by.iter_mut().zip(counters).zip(before) {
                *by = if now >= before { now - before } else { now };
            }
            growth.push(Growth { key: key.clone(), elapsed: now.saturating_sub(at), by });
            next.push((key, now, counters));
        }
        self.at = now;
        self.last = next;
        growth
    }
}

impl<K: PartialEq, const N: usize> Default for Sampler<K, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// `part` of `whole` in permille; 0 of an empty whole. Over 1000 when the
/// part is larger (a VM with several vCPUs uses more than one CPU's time).
pub fn permille(part: u64, whole: u64) -> u32 {
    (part as u128 * 1000).checked_div(whole as u128).unwrap_or(0).min(u32::MAX as u128) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_look_shows_the_growth_since_the_one_before() {
        let mut s = Sampler::<&str, 2>::new();
        assert_eq!(s.last_look(), None);
        let first = s.look(100, [("a", 40, [10, 1]), ("b", 90, [0, 0])]);
        assert_eq!(
            first,
            [Growth { key: "a", elapsed: 60, by: [10, 1] }, Growth { key: "b", elapsed: 10, by: [0, 0] }]
        );
        assert_eq!(s.last_look(), Some(100));
        // "b" is gone, "c" is new (from its own start), "a" grew.
        let second = s.look(300, [("a", 40, [70, 1]), ("c", 250, [5, 5])]);
        assert_eq!(
            second,
            [Growth { key: "a", elapsed: 200, by: [60, 0] }, Growth { key: "c", elapsed: 50, by: [5, 5] }]
        );
        // "b" was forgotten: back, it counts from its start again.
        let third = s.look(400, [("b", 350, [3, 0])]);
        assert_eq!(third, [Growth { key: "b", elapsed: 50, by: [3, 0] }]);
    }

    #[test]
    fn a_counter_that_went_back_counts_from_zero() {
        let mut s = Sampler::<u32, 1>::new();
        s.look(10, [(0, 0, [500])]);
        assert_eq!(s.look(20, [(0, 0, [30])])[0].by, [30]);
    }

    #[test]
    fn permille_never_divides_by_zero_or_wraps() {
        assert_eq!((permille(1, 8), permille(5, 5), permille(9, 5), permille(3, 0)), (125, 1000, 1800, 0));
        assert_eq!((permille(u64::MAX, u64::MAX), permille(u64::MAX, 1)), (1000, u32::MAX));
    }
}
