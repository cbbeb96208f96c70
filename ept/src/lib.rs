//! Extended page tables (Intel SDM vol. 3, 29.3): a 4-level tree that translates
//! guest-physical to host-physical addresses with read/write/execute permissions
//! and a memory type. The tree is reached through [`TableMemory`], so the kernel
//! backs it with real frames and the host tests back it with plain memory.
#![cfg_attr(not(test), no_std)]

use bitflags::bitflags;

bitflags! {
    /// Access rights of a mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Perms: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXECUTE = 1 << 2;
        const RWX = Self::READ.bits() | Self::WRITE.bits() | Self::EXECUTE.bits();
    }
}

/// EPT memory type of a leaf entry (bits 5:3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    Uncacheable = 0,
    WriteBack = 6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// Tree level whose entry maps a page of this size (PML4 = 3, PT = 0).
    const fn level(self) -> usize {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
            PageSize::Size1G => 2,
        }
    }
}

/// Memory that holds the tables: a source of zeroed 4 KiB tables and a way to
/// reach a table by its host-physical address.
pub trait TableMemory {
    /// A new zeroed, 4 KiB-aligned table, or `None` when memory is exhausted.
    fn alloc_table(&mut self) -> Option<u64>;
    /// The table at `phys`, which `alloc_table` returned earlier.
    fn table(&mut self, phys: u64) -> &mut [u64; 512];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// An address or size is not aligned to the page size asked for.
    Misaligned,
    /// Part of the range is already mapped.
    AlreadyMapped { guest_phys: u64 },
    /// No memory left for another table.
    OutOfMemory,
    /// The address is beyond what 4-level EPT can translate (48 bits).
    OutOfRange,
}

/// A request to map `size` bytes at `guest_phys` to `host_phys` with pages of
/// `page_size`, each with `perms` and `memory_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub guest_phys: u64,
    pub host_phys: u64,
    pub size: u64,
    pub page_size: PageSize,
    pub perms: Perms,
    pub memory_type: MemoryType,
}

/// What a guest-physical address translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub host_phys: u64,
    pub perms: Perms,
    pub memory_type: MemoryType,
    pub page_size: PageSize,
}

const PRESENT_MASK: u64 = Perms::RWX.bits();
const LARGE_PAGE: u64 = 1 << 7;
const IGNORE_PAT: u64 = 1 << 6;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const MAX_GUEST_PHYS: u64 = 1 << 48;

fn index(gpa: u64, level: usize) -> usize {
    ((gpa >> (12 + 9 * level)) & 0x1ff) as usize
}

/// One guest's EPT tree.
pub struct Ept {
    root: u64,
}

impl Ept {
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, EptError> {
        Ok(Ept { root: mem.alloc_table().ok_or(EptError::OutOfMemory)? })
    }

    /// The EPT pointer for the VMCS: root table, write-back paging structures,
    /// 4-level walk.
    pub fn eptp(&self) -> u64 {
        self.root | (3 << 3) | MemoryType::WriteBack as u64
    }

    /// Adds `mapping`; on error nothing of it is mapped.
    pub fn map(&mut self, mem: &mut impl TableMemory, mapping: &Mapping) -> Result<(), EptError> {
        let Mapping { guest_phys, host_phys, size, page_size: page, perms, memory_type } = *mapping;
        let step = page.bytes();
        if !guest_phys.is_multiple_of(step) || !host_phys.is_multiple_of(step) || !size.is_multiple_of(step) {
            return Err(EptError::Misaligned);
        }
        if guest_phys.checked_add(size).is_none_or(|end| end > MAX_GUEST_PHYS) {
            return Err(EptError::OutOfRange);
        }
        // Check the whole range first so a failed map leaves nothing behind.
        for offset in (0..size).step_by(step as usize) {
            if !self.slot_is_free(mem, guest_phys + offset, page.level()) {
                return Err(EptError::AlreadyMapped { guest_phys: guest_phys + offset });
            }
        }
        let leaf_bits = perms.bits()
            | ((memory_type as u64) << 3)
            | IGNORE_PAT
            | if page == PageSize::Size4K { 0 } else { LARGE_PAGE };
        for offset in (0..size).step_by(step as usize) {
            let gpa = guest_phys + offset;
            let table = self.walk_create(mem, gpa, page.level())?;
            mem.table(table)[index(gpa, page.level())] = (host_phys + offset) | leaf_bits;
        }
        Ok(())
    }

    /// Removes leaf mappings in the range; returns how many bytes were mapped.
    /// A large page only partly inside the range is left in place.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, guest_phys: u64, size: u64) -> u64 {
        let mut unmapped = 0;
        let mut gpa = guest_phys & !0xfff;
        let end = guest_phys.saturating_add(size);
        while gpa < end {
            match self.leaf(mem, gpa) {
                Some((table, level)) => {
                    let page = 1u64 << (12 + 9 * level);
                    let start = gpa & !(page - 1);
                    if start >= guest_phys && start + page <= end {
                        mem.table(table)[index(gpa, level)] = 0;
                        unmapped += page;
                    }
                    gpa = start + page;
                }
                None => gpa += 0x1000,
            }
        }
        unmapped
    }

    pub fn translate(&self, mem: &mut impl TableMemory, guest_phys: u64) -> Option<Translation> {
        let (table, level) = self.leaf(mem, guest_phys)?;
        let entry = mem.table(table)[index(guest_phys, level)];
        let page_size = match level {
            0 => PageSize::Size4K,
            1 => PageSize::Size2M,
            _ => PageSize::Size1G,
        };
        let offset = guest_phys & (page_size.bytes() - 1);
        Some(Translation {
            host_phys: (entry & ADDR_MASK & !(page_size.bytes() - 1)) + offset,
            perms: Perms::from_bits_truncate(entry),
            memory_type: if (entry >> 3) & 7 == 6 { MemoryType::WriteBack } else { MemoryType::Uncacheable },
            page_size,
        })
    }

    /// Whether nothing is mapped in the page of `level` at `gpa`: no leaf above it
    /// covers it and its own entry is empty (no leaf, no table of smaller pages).
    fn slot_is_free(&self, mem: &mut impl TableMemory, gpa: u64, level: usize) -> bool {
        let mut table = self.root;
        for current in (level..4).rev() {
            let entry = mem.table(table)[index(gpa, current)];
            if entry & PRESENT_MASK == 0 {
                return true;
            }
            if current == level || entry & LARGE_PAGE != 0 {
                return false;
            }
            table = entry & ADDR_MASK;
        }
        true
    }

    /// The table and level holding the leaf entry for `gpa`, if it is mapped.
    fn leaf(&self, mem: &mut impl TableMemory, gpa: u64) -> Option<(u64, usize)> {
        if gpa >= MAX_GUEST_PHYS {
            return None;
        }
        let mut table = self.root;
        for level in (0..4).rev() {
            let entry = mem.table(table)[index(gpa, level)];
            if entry & PRESENT_MASK == 0 {
                return None;
            }
            if level == 0 || entry & LARGE_PAGE != 0 {
                return Some((table, level));
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// The table at `level` covering `gpa`, creating intermediate tables.
    fn walk_create(&mut self, mem: &mut impl TableMemory, gpa: u64, level: usize) -> Result<u64, EptError> {
        let mut table = self.root;
        for current in ((level + 1)..4).rev() {
            let entry = mem.table(table)[index(gpa, current)];
            table = if entry & PRESENT_MASK == 0 {
                let next = mem.alloc_table().ok_or(EptError::OutOfMemory)?;
                // Non-leaf entries grant everything; leaves restrict.
                mem.table(table)[index(gpa, current)] = next | Perms::RWX.bits();
                next
            } else if entry & LARGE_PAGE != 0 {
                return Err(EptError::AlreadyMapped { guest_phys: gpa });
            } else {
                entry & ADDR_MASK
            };
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables in a Vec; "physical" address = (index + 1) * 4096.
    #[derive(Default)]
    struct HeapTables {
        tables: Vec<Box<[u64; 512]>>,
        limit: Option<usize>,
    }

    impl TableMemory for HeapTables {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.tables.len() >= l) {
                return None;
            }
            self.tables.push(Box::new([0; 512]));
            Some(self.tables.len() as u64 * 4096)
        }
        fn table(&mut self, phys: u64) -> &mut [u64; 512] {
            &mut self.tables[(phys / 4096 - 1) as usize]
        }
    }

    fn req(
        guest_phys: u64,
        host_phys: u64,
        size: u64,
        page_size: PageSize,
        perms: Perms,
        memory_type: MemoryType,
    ) -> Mapping {
        Mapping { guest_phys, host_phys, size, page_size, perms, memory_type }
    }

    fn setup() -> (HeapTables, Ept) {
        let mut mem = HeapTables::default();
        let ept = Ept::new(&mut mem).unwrap();
        (mem, ept)
    }

    #[test]
    fn translate_after_map_gives_the_mapping_back_for_every_size() {
        let (mut mem, mut ept) = setup();
        let cases = [
            (0x1000, 0x20_0000, PageSize::Size4K, Perms::READ),
            (0x40_0000, 0x80_0000, PageSize::Size2M, Perms::RWX),
            (0x8000_0000, 0x4000_0000, PageSize::Size1G, Perms::READ | Perms::EXECUTE),
        ];
        for (gpa, hpa, size, perms) in cases {
            ept.map(&mut mem, &req(gpa, hpa, size.bytes(), size, perms, MemoryType::WriteBack)).unwrap();
            let t = ept.translate(&mut mem, gpa + 0x123).unwrap();
            assert_eq!(t.host_phys, hpa + 0x123);
            assert_eq!(t.perms, perms);
            assert_eq!(t.page_size, size);
            assert_eq!(t.memory_type, MemoryType::WriteBack);
        }
        assert!(ept.translate(&mut mem, 0x2000).is_none());
        assert!(ept.translate(&mut mem, 0x60_0000).is_none());
    }

    #[test]
    fn overlapping_map_is_refused_and_leaves_nothing_behind() {
        let (mut mem, mut ept) = setup();
        ept.map(&mut mem, &req(0x5000, 0x5000, 0x1000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack)).unwrap();
        let err = ept.map(&mut mem, &req(0x3000, 0x9000, 0x4000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack));
        assert_eq!(err, Err(EptError::AlreadyMapped { guest_phys: 0x5000 }));
        assert!(ept.translate(&mut mem, 0x3000).is_none());
        // A large page over the 4K mapping collides at the large page's start.
        ept.map(&mut mem, &req(0x80_0000, 0, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::WriteBack)).unwrap();
        let err = ept.map(&mut mem, &req(0x60_0000, 0, 0x40_0000, PageSize::Size2M, Perms::RWX, MemoryType::WriteBack));
        assert_eq!(err, Err(EptError::AlreadyMapped { guest_phys: 0x80_0000 }));
        assert!(ept.translate(&mut mem, 0x60_0000).is_none(), "nothing half-mapped");
        let err = ept.map(&mut mem, &req(0, 0, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::WriteBack));
        assert_eq!(err, Err(EptError::AlreadyMapped { guest_phys: 0 }));
    }

    #[test]
    fn unmap_removes_only_whole_pages_inside_the_range() {
        let (mut mem, mut ept) = setup();
        ept.map(&mut mem, &req(0, 0x10_0000, 0x8000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack)).unwrap();
        ept.map(&mut mem, &req(0x20_0000, 0x20_0000, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::Uncacheable))
            .unwrap();
        assert_eq!(ept.unmap(&mut mem, 0x2000, 0x2000), 0x2000);
        assert!(ept.translate(&mut mem, 0x2000).is_none());
        assert!(ept.translate(&mut mem, 0x3fff).is_none());
        assert!(ept.translate(&mut mem, 0x4000).is_some());
        assert_eq!(ept.unmap(&mut mem, 0x20_0000, 0x1000), 0, "half a large page stays");
        assert_eq!(ept.translate(&mut mem, 0x20_0000).unwrap().memory_type, MemoryType::Uncacheable);
        assert_eq!(ept.unmap(&mut mem, 0x20_0000, 0x20_0000), 0x20_0000);
        assert!(ept.translate(&mut mem, 0x30_0000).is_none());
    }

    #[test]
    fn bad_arguments_and_exhaustion_are_errors() {
        let (mut mem, mut ept) = setup();
        let m = |ept: &mut Ept, mem: &mut HeapTables, gpa, hpa, size, page| {
            ept.map(mem, &req(gpa, hpa, size, page, Perms::RWX, MemoryType::WriteBack))
        };
        assert_eq!(m(&mut ept, &mut mem, 0x1000, 0, 0x20_0000, PageSize::Size2M), Err(EptError::Misaligned));
        assert_eq!(m(&mut ept, &mut mem, 1 << 48, 0, 0x1000, PageSize::Size4K), Err(EptError::OutOfRange));
        mem.limit = Some(2);
        assert_eq!(m(&mut ept, &mut mem, 0, 0, 0x1000, PageSize::Size4K), Err(EptError::OutOfMemory));
    }

    #[test]
    fn eptp_names_root_walk_length_and_memory_type() {
        let (_, ept) = setup();
        assert_eq!(ept.eptp(), 0x1000 | 0x18 | 6);
    }

    #[test]
    fn many_random_mappings_translate_back() {
        // A small deterministic property test: distinct 4K pages map and translate.
        let (mut mem, mut ept) = setup();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut mapped = std::collections::BTreeMap::new();
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let gpa = (x % (1 << 36)) & !0xfff;
            let hpa = (x.rotate_left(17) % (1 << 40)) & !0xfff;
            if ept.map(&mut mem, &req(gpa, hpa, 0x1000, PageSize::Size4K, Perms::READ, MemoryType::WriteBack)).is_ok() {
                mapped.insert(gpa, hpa);
            }
        }
        assert!(mapped.len() > 490);
        for (gpa, hpa) in &mapped {
            assert_eq!(ept.translate(&mut mem, gpa + 8).unwrap().host_phys, hpa + 8);
            assert!(ept.translate(&mut mem, gpa ^ 0x1000).is_none() || mapped.contains_key(&(gpa ^ 0x1000)));
        }
    }
}
