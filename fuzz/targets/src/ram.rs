//! Guest RAM for the device targets: two ranges, as a VM has below and above
//! its MMIO hole, placed by the input anywhere in the address space (from 0,
//! at 4 GiB, touching u64::MAX), so accesses that run off a range, across the
//! gap between them or past 2^64 all get tried.

use basalt_fuzz::Reader;
use devices::{GuestRam, NotRam};

pub struct Ram {
    ranges: [(u64, Vec<u8>); 2],
}

impl Ram {
    /// `low` bytes from 0 and `high` bytes at `high_base` (which must leave
    /// room for them below 2^64 and lie above the low range).
    pub fn new(low: usize, high_base: u64, high: usize) -> Ram {
        assert!(high == 0 || high_base >= low as u64 && high_base.checked_add(high as u64 - 1).is_some());
        Ram { ranges: [(0, vec![0; low]), (high_base, vec![0; high])] }
    }

    /// Sizes and place from the input: up to 64 KiB below, and up to 16 KiB
    /// above a hole (as narrow as a hole may be, as at 4 GiB, or anywhere), at
    /// 4 GiB, at the top of the address space.
    ///
    /// A VM's hole is 1 GiB (layout::RAM_HOLE_START to HIGH_RAM_BASE), and
    /// virtqueues rely on holes being no narrower than the longest chain they
    /// take (16 MiB): then a buffer whose first and last bytes are RAM is RAM
    /// throughout. So the hole here is never narrower than that.
    pub fn from_input(r: &mut Reader) -> Ram {
        const NARROWEST_HOLE: u64 = 16 << 20;
        let low = 0x1000 * (1 + r.index(16));
        let high = 0x400 * r.index(17);
        if high == 0 {
            return Ram::new(low, low as u64, 0);
        }
        let first_start = low as u64 + NARROWEST_HOLE;
        // The last place `high` bytes fit below 2^64.
        let last_start = u64::MAX - high as u64 + 1;
        let high_base = match r.u8() % 5 {
            0 => first_start,
            1 => first_start + 0x1000 * r.below(16),
            2 => 1 << 32,
            3 => last_start,
            _ => r.u64().clamp(first_start, last_start),
        };
        Ram::new(low, high_base, high)
    }

    /// Where the RAM is: (start, length) of each range, empty ones included.
    pub fn ranges(&self) -> [(u64, u64); 2] {
        [(self.ranges[0].0, self.ranges[0].1.len() as u64), (self.ranges[1].0, self.ranges[1].1.len() as u64)]
    }

    /// Whether all of `at .. at + len` is RAM of one range.
    pub fn holds(&self, at: u64, len: u64) -> bool {
        self.ranges().iter().any(|&(start, size)| {
            at.checked_sub(start).is_some_and(|offset| offset.checked_add(len).is_some_and(|end| end <= size))
        })
    }

    /// An address a guest might give: in a range, at or past its end, just
    /// before the other, at the top of the address space, or anything.
    pub fn address(&self, r: &mut Reader) -> u64 {
        let [(low, low_len), (high, high_len)] = self.ranges();
        match r.u8() % 8 {
            0..=2 => low + r.below(low_len.max(1)),
            3 => high + r.below(high_len.max(1)),
            4 => (low + low_len).wrapping_sub(r.below(64)),
            // A range may end at 2^64, which wraps to 0 here; so be it.
            5 => high.wrapping_add(high_len).wrapping_sub(r.below(64)),
            6 => u64::MAX - r.below(64),
            _ => r.edge(),
        }
    }

    fn span(&self, at: u64, len: usize) -> Option<(usize, usize)> {
        self.ranges.iter().enumerate().find_map(|(i, (start, bytes))| {
            let offset = usize::try_from(at.checked_sub(*start)?).ok()?;
            (offset.checked_add(len)? <= bytes.len()).then_some((i, offset))
        })
    }
}

impl GuestRam for Ram {
    fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let (range, offset) = self.span(at, buf.len()).ok_or(NotRam)?;
        buf.copy_from_slice(&self.ranges[range].1[offset..offset + buf.len()]);
        Ok(())
    }

    fn write(&mut self, at: u64, data: &[u8]) -> Result<(), NotRam> {
        let (range, offset) = self.span(at, data.len()).ok_or(NotRam)?;
        self.ranges[range].1[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}
