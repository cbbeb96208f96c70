//! The I/O and MSR permission maps (APM vol. 2, 15.10.1 and 15.11): physically
//! contiguous, page-aligned bitmaps the CPU consults on every port access and
//! RDMSR/WRMSR while IOIO_PROT / MSR_PROT are intercepted. A set bit exits.
//! These builders work on the bytes only; the kernel owns the frames.

use crate::exit::MsrAccess;

/// I/O permission map: one bit per port (bit n of the map is port n).
pub mod io {
    /// 12 KiB although 64 Ki ports need only 8 KiB: the CPU checks one bit per
    /// byte accessed, so a 2- or 4-byte access at port 0xffff reads bits
    /// 0x10000–0x10002, which lie in the third page.
    pub const SIZE: usize = 12 * 1024;

    pub fn intercept_all(map: &mut [u8; SIZE]) {
        map.fill(0xff);
    }

    /// Lets single-byte accesses to `port` through; a wider access still exits
    /// unless every port it touches passes.
    pub fn pass_through(map: &mut [u8; SIZE], port: u16) {
        map[port as usize / 8] &= !(1 << (port % 8));
    }

    pub fn intercept(map: &mut [u8; SIZE], port: u16) {
        map[port as usize / 8] |= 1 << (port % 8);
    }

    /// Whether an access of `size` bytes at `port` exits, as the CPU decides
    /// it: any of the bits `port .. port + size` set. Sizes other than 1, 2
    /// and 4 cannot come from the CPU and are reported as intercepted.
    pub fn is_intercepted(map: &[u8; SIZE], port: u16, size: u8) -> bool {
        if !matches!(size, 1 | 2 | 4) {
            return true;
        }
        (port as usize..port as usize + size as usize).any(|bit| map[bit / 8] & (1 << (bit % 8)) != 0)
    }
}

/// MSR permission map: two bits per MSR (the lower for RDMSR, the upper for
/// WRMSR) over three ranges of 8 Ki MSRs each; the last 2 KiB are reserved.
pub mod msr {
    use super::MsrAccess;

    pub const SIZE: usize = 8 * 1024;

    /// (first MSR, byte offset of its bits) for each range the map covers.
    const RANGES: [(u32, usize); 3] = [(0, 0), (0xc000_0000, 0x800), (0xc001_0000, 0x1000)];
    const MSRS_PER_RANGE: u32 = 0x2000;

    /// An MSR the map cannot describe: the CPU always intercepts it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NotInMap(pub u32);

    impl core::fmt::Display for NotInMap {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "MSR {:#x} is outside the MSR permission map; it always exits", self.0)
        }
    }

    /// The map bit of the RDMSR intercept for `msr`; the WRMSR bit follows it.
    const fn read_bit(msr: u32) -> Option<usize> {
        let mut i = 0;
        while i < RANGES.len() {
            let (first, byte) = RANGES[i];
            if msr >= first && msr - first < MSRS_PER_RANGE {
                return Some(byte * 8 + (msr - first) as usize * 2);
            }
            i += 1;
        }
        None
    }

    pub fn intercept_all(map: &mut [u8; SIZE]) {
        map.fill(0xff);
    }

    /// Sets both bits of `msr`: `read` / `write` true lets that access run in
    /// the guest without an exit, false makes it exit.
    pub fn pass_through(map: &mut [u8; SIZE], msr: u32, read: bool, write: bool) -> Result<(), NotInMap> {
        let bit = read_bit(msr).ok_or(NotInMap(msr))?;
        for (bit, pass) in [(bit, read), (bit + 1, write)] {
            if pass {
                map[bit / 8] &= !(1 << (bit % 8));
            } else {
                map[bit / 8] |= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    pub fn is_intercepted(map: &[u8; SIZE], msr: u32, access: MsrAccess) -> bool {
        match read_bit(msr) {
            Some(bit) => {
                let bit = bit + matches!(access, MsrAccess::Write) as usize;
                map[bit / 8] & (1 << (bit % 8)) != 0
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_map() -> Box<[u8; io::SIZE]> {
        let mut map = Box::new([0u8; io::SIZE]);
        io::intercept_all(&mut map);
        map
    }

    fn msr_map() -> Box<[u8; msr::SIZE]> {
        let mut map = Box::new([0u8; msr::SIZE]);
        msr::intercept_all(&mut map);
        map
    }

    #[test]
    fn io_intercept_all_covers_every_port_and_size() {
        let map = io_map();
        for port in 0..=u16::MAX {
            for size in [1, 2, 4] {
                assert!(io::is_intercepted(&map, port, size), "{port:#x}/{size}");
            }
        }
    }

    #[test]
    fn io_wide_accesses_need_every_byte_passed() {
        let mut map = io_map();
        io::pass_through(&mut map, 0x3f8);
        assert!(!io::is_intercepted(&map, 0x3f8, 1));
        assert!(io::is_intercepted(&map, 0x3f8, 2), "0x3f9 still exits");
        assert!(io::is_intercepted(&map, 0x3f7, 2), "0x3f7 still exits");
        assert!(io::is_intercepted(&map, 0x3f9, 1));
        for port in 0xcfc..=0xcff {
            io::pass_through(&mut map, port);
        }
        assert!(!io::is_intercepted(&map, 0xcfc, 4));
        assert!(!io::is_intercepted(&map, 0xcfe, 2));
        assert!(io::is_intercepted(&map, 0xcfd, 4), "reaches 0xd00");
        io::intercept(&mut map, 0xcfe);
        assert!(io::is_intercepted(&map, 0xcfc, 4));
        assert!(!io::is_intercepted(&map, 0xcfc, 2));
        // Only the ports' own bits changed.
        assert_eq!(map[0x3f8 / 8], 0xfe);
        // Byte 0x19f: ports 0xcf8-0xcfb (bits 0-3) and 0xcfe (bit 6) exit.
        assert_eq!(map[0xcfc / 8], 0x0f | 0x40);
    }

    #[test]
    fn io_port_ffff_multi_byte_reads_the_extra_bits() {
        let mut map = io_map();
        io::pass_through(&mut map, 0xffff);
        assert!(!io::is_intercepted(&map, 0xffff, 1));
        assert!(io::is_intercepted(&map, 0xffff, 2));
        assert!(io::is_intercepted(&map, 0xffff, 4));
        assert!(io::is_intercepted(&map, 0xfffe, 2));
        // On an otherwise open map, bits 0x10000.. alone decide; they live at
        // byte 0x2000, past the 8 KiB the ports themselves need.
        let mut open = Box::new([0u8; io::SIZE]);
        assert!(!io::is_intercepted(&open, 0xffff, 4));
        open[0x2000] = 1 << 2; // bit 0x10002
        assert!(io::is_intercepted(&open, 0xffff, 4));
        assert!(!io::is_intercepted(&open, 0xffff, 2));
        assert!(!io::is_intercepted(&open, 0xfffe, 2));
    }

    #[test]
    fn io_impossible_sizes_are_intercepted() {
        let open = Box::new([0u8; io::SIZE]);
        for size in [0, 3, 5, 8, 255] {
            assert!(io::is_intercepted(&open, 0x80, size), "{size}");
        }
        assert!(!io::is_intercepted(&open, 0x80, 1));
    }

    #[test]
    fn msr_edges_of_each_range_map_to_their_bits() {
        // (MSR, byte holding its bits, bit of the read intercept in that byte)
        let table: &[(u32, usize, u8)] = &[
            (0x0000_0000, 0x000, 0),
            (0x0000_0010, 0x004, 0),
            (0x0000_1fff, 0x7ff, 6),
            (0xc000_0000, 0x800, 0),
            (0xc000_0080, 0x820, 0),
            (0xc000_1fff, 0xfff, 6),
            (0xc001_0000, 0x1000, 0),
            (0xc001_1fff, 0x17ff, 6),
        ];
        for &(m, byte, bit) in table {
            let mut map = msr_map();
            msr::pass_through(&mut map, m, true, false).unwrap();
            assert_eq!(map[byte], !(1u8 << bit), "read of {m:#x}");
            assert!(!msr::is_intercepted(&map, m, MsrAccess::Read));
            assert!(msr::is_intercepted(&map, m, MsrAccess::Write));
            msr::pass_through(&mut map, m, false, true).unwrap();
            assert_eq!(map[byte], !(1u8 << (bit + 1)), "write of {m:#x}");
            assert!(msr::is_intercepted(&map, m, MsrAccess::Read));
            assert!(!msr::is_intercepted(&map, m, MsrAccess::Write));
            // Every other byte is untouched.
            assert_eq!(map.iter().filter(|&&b| b != 0xff).count(), 1);
        }
    }

    #[test]
    fn msrs_outside_every_range_always_exit() {
        let mut open = Box::new([0u8; msr::SIZE]);
        for m in [0x2000, 0x4000_0000, 0xbfff_ffff, 0xc000_2000, 0xc000_ffff, 0xc001_2000, 0xc002_0000, u32::MAX] {
            assert_eq!(msr::pass_through(&mut open, m, true, true), Err(msr::NotInMap(m)));
            assert!(msr::is_intercepted(&open, m, MsrAccess::Read), "{m:#x}");
            assert!(msr::is_intercepted(&open, m, MsrAccess::Write), "{m:#x}");
        }
        assert!(open.iter().all(|&b| b == 0), "a refused MSR changed nothing");
    }

    #[test]
    fn msr_map_never_touches_the_reserved_tail() {
        let mut map = msr_map();
        for first in [0, 0xc000_0000u32, 0xc001_0000] {
            for m in first..first + 0x2000 {
                msr::pass_through(&mut map, m, true, true).unwrap();
            }
        }
        assert!(map[..0x1800].iter().all(|&b| b == 0));
        assert!(map[0x1800..].iter().all(|&b| b == 0xff));
    }
}
