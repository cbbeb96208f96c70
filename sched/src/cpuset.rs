use alloc::vec;
use alloc::vec::Vec;

use crate::CoreId;

/// A set of cores as a bitmap: membership in O(1), and "first core in both
/// sets" in one pass over words (4 words for 256 cores), never over vCPUs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CpuSet {
    words: Vec<u64>,
}

impl CpuSet {
    pub fn empty() -> Self {
        CpuSet { words: Vec::new() }
    }

    /// Cores `0..cores`.
    pub fn all(cores: usize) -> Self {
        let mut set = CpuSet { words: vec![0; cores.div_ceil(64)] };
        for core in 0..cores {
            set.insert(CoreId(core as u32));
        }
        set
    }

    pub fn only(core: CoreId) -> Self {
        let mut set = CpuSet::empty();
        set.insert(core);
        set
    }

    pub fn from_cores(cores: impl IntoIterator<Item = CoreId>) -> Self {
        let mut set = CpuSet::empty();
        for core in cores {
            set.insert(core);
        }
        set
    }

    pub fn insert(&mut self, core: CoreId) {
        let (word, bit) = Self::position(core);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= bit;
    }

    pub fn remove(&mut self, core: CoreId) {
        let (word, bit) = Self::position(core);
        if let Some(w) = self.words.get_mut(word) {
            *w &= !bit;
        }
    }

    pub fn contains(&self, core: CoreId) -> bool {
        let (word, bit) = Self::position(core);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = CoreId> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            (0..64).filter(move |bit| word & (1 << bit) != 0).map(move |bit| CoreId((i * 64 + bit) as u32))
        })
    }

    /// The lowest core in `self` and `other` but not in `except`.
    pub fn first_common(&self, other: &CpuSet, except: &CpuSet) -> Option<CoreId> {
        for (i, (a, b)) in self.words.iter().zip(&other.words).enumerate() {
            let excluded = except.words.get(i).copied().unwrap_or(0);
            let word = a & b & !excluded;
            if word != 0 {
                return Some(CoreId((i * 64) as u32 + word.trailing_zeros()));
            }
        }
        None
    }

    /// Whether every core in `self` is also in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.words.iter().enumerate().all(|(i, w)| w & !other.words.get(i).copied().unwrap_or(0) == 0)
    }

    fn position(core: CoreId) -> (usize, u64) {
        (core.0 as usize / 64, 1 << (core.0 % 64))
    }
}
