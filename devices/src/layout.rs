//! Where every device of a Basalt VM sits: one table that the chipset, the ACPI
//! tables and the loaders all read, so what the guest is told and what it finds
//! cannot disagree.

pub const LAPIC_BASE: u64 = 0xfee0_0000;
pub const LAPIC_SIZE: u64 = 0x1000;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// The ACPI tables, RSDP first, in the BIOS area the e820 map reserves.
pub const ACPI_TABLES: u64 = 0xe_0000;
pub const ACPI_TABLES_SIZE: u64 = 0x1_0000;

/// virtio-mmio slots: slot i at VIRTIO_BASE + i * VIRTIO_STRIDE, interrupting
/// on IOAPIC pin VIRTIO_GSI_BASE + i (level, active high), as the DSDT says.
pub const VIRTIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_STRIDE: u64 = 0x1000;
pub const VIRTIO_SIZE: u64 = 0x200;
pub const VIRTIO_GSI_BASE: u8 = 16;
pub const VIRTIO_SLOTS: usize = 8;

pub fn virtio_slot(index: usize) -> (u64, u8) {
    (VIRTIO_BASE + index as u64 * VIRTIO_STRIDE, VIRTIO_GSI_BASE + index as u8)
}

/// Guest RAM stops here and goes on at `HIGH_RAM_BASE`, as on a PC: the hole
/// between holds every device window (virtio slots, IOAPIC, LAPIC) with room to
/// spare, so no RAM ever sits under a device whatever the VM's size.
pub const RAM_HOLE_START: u64 = 0xc000_0000;
pub const HIGH_RAM_BASE: u64 = 1 << 32;

/// Where a VM's RAM lies in guest-physical space: low RAM from 0 up to the hole,
/// the rest from 4 GiB. The kernel keeps RAM as one run of pages, so each range
/// also has an offset in that run: low RAM first, high RAM right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamMap {
    low: u64,
    high: u64,
}

/// One piece of RAM: `size` bytes at `guest_phys`, at `offset` in the VM's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub guest_phys: u64,
    pub size: u64,
    pub offset: u64,
}

impl RamRange {
    pub fn end(&self) -> u64 {
        // RamMap::new checked that no range's end passes 2^64.
        self.guest_phys + self.size
    }
}

impl RamMap {
    /// The map for `bytes` of RAM; None for a size so large that high RAM would
    /// run past 2^64.
    pub fn new(bytes: u64) -> Option<RamMap> {
        let low = bytes.min(RAM_HOLE_START);
        let high = bytes - low;
        HIGH_RAM_BASE.checked_add(high)?;
        Some(RamMap { low, high })
    }

    /// All of the VM's RAM, in bytes.
    pub fn size(&self) -> u64 {
        self.low + self.high
    }

    /// Where low RAM ends: everything a loader places, and anything that must
    /// lie below 4 GiB, goes under this.
    pub fn low_end(&self) -> u64 {
        self.low
    }

    /// The RAM above the hole, if the VM has more than fits below it.
    #[inline]
    pub fn high(&self) -> Option<RamRange> {
        (self.high > 0).then_some(RamRange { guest_phys: HIGH_RAM_BASE, size: self.high, offset: self.low })
    }

    /// Low RAM (always, possibly empty), then high RAM if any.
    #[inline]
    pub fn ranges(&self) -> impl Iterator<Item = RamRange> {
        let low = RamRange { guest_phys: 0, size: self.low, offset: 0 };
        core::iter::once(low).chain(self.high())
    }

    /// The offset in RAM of the `len` bytes at `guest_phys`, when all of them
    /// are RAM of one range: an access that runs from RAM into the hole, or past
    /// the end, is refused as a whole rather than cut short. An empty access may
    /// sit at a range's end.
    #[inline]
    pub fn offset_of(&self, guest_phys: u64, len: u64) -> Option<u64> {
        let end = guest_phys.checked_add(len)?;
        self.ranges()
            .find(|r| r.guest_phys <= guest_phys && end <= r.end())
            .map(|r| r.offset + (guest_phys - r.guest_phys))
    }

    /// The page of RAM (its index in RAM: low RAM's pages, then high RAM's)
    /// and the offset in it of the `len` bytes at `guest_phys`, when they
    /// are RAM within one 4 KiB page: a reader may then take them from one
    /// host frame (a page-table entry, an instruction). None when they are
    /// not all RAM (as `offset_of`) or cross a page boundary.
    #[inline]
    pub fn within_one_page(&self, guest_phys: u64, len: u64) -> Option<(u64, u64)> {
        const PAGE: u64 = 4096;
        let offset = self.offset_of(guest_phys, len)?;
        let in_page = offset % PAGE;
        (len <= PAGE - in_page).then_some((offset / PAGE, in_page))
    }
}

pub const PIC_MASTER: u16 = 0x20;
pub const PIC_SLAVE: u16 = 0xa0;
pub const PIC_ELCR: u16 = 0x4d0;
pub const PIT: u16 = 0x40;
pub const SYSTEM_CONTROL: u16 = 0x61;
pub const RTC: u16 = 0x70;
pub const COM1: u16 = 0x3f8;
/// ACPI PM1a event block (status, enable), PM1a control and the PM timer.
pub const PM_BASE: u16 = 0x600;
pub const PM1_EVENT: u16 = PM_BASE;
pub const PM1_CONTROL: u16 = PM_BASE + 4;
pub const PM_TIMER: u16 = PM_BASE + 8;
pub const PM_SIZE: u16 = 12;
/// The reset control register the FADT names (0x06 resets).
pub const RESET_CONTROL: u16 = 0xcf9;
/// System control port A: fast A20 (always on) and the fast reset bit.
pub const SYSTEM_CONTROL_A: u16 = 0x92;
/// The PCI host bridge's CONFIG_ADDRESS; CONFIG_DATA is at + 4. The bridge
/// decodes 0xcf8-0xcff, but a byte at 0xcf9 is the reset control register
/// (the chipset answers it first), as PIIX decodes it: only 32-bit accesses at
/// 0xcf8 are CONFIG_ADDRESS.
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
pub const PCI_CONFIG_DATA: u16 = PCI_CONFIG_ADDRESS + 4;
/// QEMU's fw_cfg selector; its data port is + 1. The DMA address register QEMU
/// has at 0x514 is not offered.
pub const FW_CFG: u16 = 0x510;
/// QEMU's isa-debug-exit port, which Basalt's test guests use.
pub const DEBUG_EXIT: u16 = 0xf4;
/// A guest writes a byte here to mark a moment for `cargo xtask bench` (a Linux
/// /init can reach it through /dev/port).
pub const BENCH_MARKER: u16 = 0xf8;

/// ISA IRQs. The PIT's IRQ 0 reaches IOAPIC pin 2 (the MADT says so); the
/// others keep their numbers.
pub const IRQ_PIT: u8 = 0;
pub const IRQ_COM1: u8 = 4;
pub const IRQ_RTC: u8 = 8;
pub const IRQ_SCI: u8 = 9;
pub const GSI_PIT: u8 = 2;

/// The S5 (soft-off) sleep type the DSDT's \_S5 names.
pub const SLP_TYP_S5: u16 = 5;

/// The IOAPIC pin an ISA IRQ arrives on.
pub fn gsi_of_isa_irq(irq: u8) -> u8 {
    if irq == IRQ_PIT {
        GSI_PIT
    } else {
        irq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// Every MMIO window a VM has, as (name, start, size).
    fn device_windows() -> alloc::vec::Vec<(&'static str, u64, u64)> {
        let mut windows = alloc::vec![("LAPIC", LAPIC_BASE, LAPIC_SIZE), ("IOAPIC", IOAPIC_BASE, IOAPIC_SIZE)];
        windows.extend((0..VIRTIO_SLOTS).map(|i| ("virtio", virtio_slot(i).0, VIRTIO_SIZE)));
        windows
    }

    /// `within_one_page` is `offset_of` split into page and offset, for
    /// exactly the accesses that stay in one page: at RAM's edges, the
    /// hole's, page boundaries and the top of the address space.
    #[test]
    fn within_one_page_agrees_with_offset_of() {
        for bytes in [16 * MIB, RAM_HOLE_START, 4096 * MIB + 4096] {
            let map = RamMap::new(bytes).unwrap();
            let edges = [0, 4096, map.low_end(), HIGH_RAM_BASE, HIGH_RAM_BASE + 4096, 4 * GIB + map.size(), u64::MAX];
            for edge in edges {
                for delta in [-4097i64, -4096, -4095, -16, -9, -8, -7, -1, 0, 1, 7, 8, 4088, 4089, 4095] {
                    let at = edge.wrapping_add_signed(delta);
                    for len in [0, 1, 2, 4, 8, 15, 16, 4095, 4096, 4097, u64::MAX] {
                        let expected =
                            map.offset_of(at, len).filter(|o| o % 4096 + len <= 4096).map(|o| (o / 4096, o % 4096));
                        assert_eq!(map.within_one_page(at, len), expected, "{bytes:#x}: {len} at {at:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn four_gib_is_three_below_the_hole_and_one_at_4_gib() {
        let map = RamMap::new(4096 * MIB).unwrap();
        assert_eq!((map.size(), map.low_end()), (4 * GIB, 3 * GIB));
        let ranges: alloc::vec::Vec<_> = map.ranges().collect();
        assert_eq!(
            ranges,
            [
                RamRange { guest_phys: 0, size: 3 * GIB, offset: 0 },
                RamRange { guest_phys: 4 * GIB, size: GIB, offset: 3 * GIB }
            ]
        );
    }

    #[test]
    fn ram_that_fits_below_the_hole_is_all_low() {
        for bytes in [16 * MIB, 256 * MIB, RAM_HOLE_START] {
            let map = RamMap::new(bytes).unwrap();
            assert_eq!((map.low_end(), map.high()), (bytes, None), "{bytes:#x}");
            assert_eq!(map.ranges().count(), 1);
        }
        let map = RamMap::new(RAM_HOLE_START + MIB).unwrap();
        assert_eq!(map.high(), Some(RamRange { guest_phys: HIGH_RAM_BASE, size: MIB, offset: RAM_HOLE_START }));
    }

    #[test]
    fn device_windows_are_in_the_hole_and_no_ram_meets_them() {
        for (name, start, size) in device_windows() {
            assert!(RAM_HOLE_START <= start && start + size <= HIGH_RAM_BASE, "{name} at {start:#x} not in the hole");
        }
        for mib in [1, 16, 256, 3071, 3072, 3073, 4096, 64 * 1024] {
            let map = RamMap::new(mib * MIB).unwrap();
            assert_eq!(map.ranges().map(|r| r.size).sum::<u64>(), mib * MIB);
            for r in map.ranges() {
                for (name, start, size) in device_windows() {
                    assert!(r.end() <= start || start + size <= r.guest_phys, "{mib} MiB: RAM {r:x?} meets {name}");
                }
            }
            // The ACPI tables are written into RAM (the e820 map reserves them).
            assert_eq!(map.offset_of(ACPI_TABLES, ACPI_TABLES_SIZE), Some(ACPI_TABLES), "{mib} MiB");
        }
    }

    #[test]
    fn guest_physical_addresses_translate_only_inside_one_range() {
        let map = RamMap::new(4096 * MIB).unwrap();
        let hole = RAM_HOLE_START;
        assert_eq!(map.offset_of(0, 8), Some(0));
        assert_eq!(map.offset_of(hole - 8, 8), Some(hole - 8), "the last bytes of low RAM");
        assert_eq!(map.offset_of(hole - 4, 8), None, "running from low RAM into the hole");
        assert_eq!(map.offset_of(hole, 1), None);
        assert_eq!(map.offset_of(LAPIC_BASE, 4), None);
        assert_eq!(map.offset_of(HIGH_RAM_BASE - 1, 2), None, "running from the hole into high RAM");
        assert_eq!(map.offset_of(HIGH_RAM_BASE, 8), Some(hole), "high RAM follows low RAM");
        assert_eq!(map.offset_of(5 * GIB - 8, 8), Some(4 * GIB - 8), "the last bytes of RAM");
        assert_eq!(map.offset_of(5 * GIB - 8, 9), None, "past the end");
        assert_eq!(map.offset_of(5 * GIB, 0), Some(4 * GIB), "empty, at the end");
        assert_eq!(map.offset_of(hole, 0), Some(hole), "empty, at the end of low RAM");
        assert_eq!(map.offset_of(u64::MAX, 2), None, "wrapping");
        assert_eq!(map.offset_of(8, u64::MAX), None, "wrapping");

        let small = RamMap::new(16 * MIB).unwrap();
        assert_eq!(small.offset_of(16 * MIB - 1, 1), Some(16 * MIB - 1));
        assert_eq!(small.offset_of(16 * MIB - 1, 2), None);
        assert_eq!(small.offset_of(HIGH_RAM_BASE, 1), None, "no high RAM");
    }

    #[test]
    fn sizes_that_would_wrap_are_refused() {
        assert_eq!(RamMap::new(u64::MAX), None);
        assert_eq!(RamMap::new(u64::MAX - HIGH_RAM_BASE + RAM_HOLE_START + 1), None);
        let largest = RamMap::new(u64::MAX - HIGH_RAM_BASE + RAM_HOLE_START).unwrap();
        assert_eq!(largest.high().unwrap().end(), u64::MAX);
        assert_eq!(RamMap::new(0).unwrap().ranges().count(), 1);
        assert_eq!(RamMap::new(0).unwrap().offset_of(0, 1), None);
    }
}
