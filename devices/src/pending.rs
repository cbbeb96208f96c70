//! Events raised for a vCPU and not yet delivered: interrupt vectors (highest
//! first, as an APIC would) and an NMI. Interrupt sources set them; the VMM
//! injects them when the guest can take them.

#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct PendingEvents {
    /// One bit per vector.
    interrupts: [u64; 4],
    pub nmi: bool,
}

impl PendingEvents {
    pub fn raise(&mut self, vector: u8) {
        self.interrupts[vector as usize / 64] |= 1 << (vector % 64);
    }

    /// The highest pending vector, taken off the list.
    pub fn take_highest(&mut self) -> Option<u8> {
        let word = (0..4).rev().find(|&w| self.interrupts[w] != 0)?;
        let bit = 63 - self.interrupts[word].leading_zeros() as usize;
        self.interrupts[word] &= !(1 << bit);
        Some((word * 64 + bit) as u8)
    }

    pub fn has_interrupt(&self) -> bool {
        self.interrupts.iter().any(|&w| w != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_vector_first_and_each_once() {
        let mut p = PendingEvents::default();
        assert!(!p.has_interrupt());
        for v in [0x30, 0xff, 0x41, 0x30, 0x80] {
            p.raise(v);
        }
        assert!(p.has_interrupt());
        let order: Vec<u8> = std::iter::from_fn(|| p.take_highest()).collect();
        assert_eq!(order, vec![0xff, 0x80, 0x41, 0x30]);
        assert!(!p.has_interrupt());
        assert_eq!(p.take_highest(), None);
    }
}
