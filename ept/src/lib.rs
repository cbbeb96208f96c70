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
    /// Gives back a table that no longer maps anything.
    fn free_table(&mut self, phys: u64);
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
/// Address bits of a leaf at each level (4 KiB, 2 MiB, 1 GiB).
const ADDRESS_MASK_FOR_LEVEL: [u64; 3] = [ADDR_MASK, ADDR_MASK & !0x1f_ffff, ADDR_MASK & !0x3fff_ffff];
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
            let old = mem.table(table)[index(gpa, page.level())];
            if old & PRESENT_MASK != 0 {
                // An emptied table of smaller pages (slot_is_free checked it).
                Self::free_subtree(mem, old & ADDR_MASK, page.level() - 1);
            }
            mem.table(table)[index(gpa, page.level())] = (host_phys + offset) | leaf_bits;
        }
        Ok(())
    }

    /// Removes every mapping in `[guest_phys, guest_phys + size)` (4 KiB granular).
    /// A large page only partly inside the range is split first, so the rest of it
    /// stays mapped. Returns how many bytes were mapped.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, guest_phys: u64, size: u64) -> Result<u64, EptError> {
        let mut unmapped = 0;
        self.for_each_leaf(mem, guest_phys, size, |entry, bytes| {
            *entry = 0;
            unmapped += bytes;
        })?;
        Ok(unmapped)
    }

    /// Sets the permissions of everything mapped in the range, splitting large
    /// pages that are only partly inside it. Unmapped holes are left alone.
    pub fn protect(
        &mut self,
        mem: &mut impl TableMemory,
        guest_phys: u64,
        size: u64,
        perms: Perms,
    ) -> Result<(), EptError> {
        self.for_each_leaf(mem, guest_phys, size, |entry, _| {
            *entry = (*entry & !Perms::RWX.bits()) | perms.bits();
        })
    }

    /// Calls `f` on every leaf entry inside the range (with the bytes it maps),
    /// splitting large pages that straddle the range's ends.
    fn for_each_leaf(
        &mut self,
        mem: &mut impl TableMemory,
        guest_phys: u64,
        size: u64,
        mut f: impl FnMut(&mut u64, u64),
    ) -> Result<(), EptError> {
        if !guest_phys.is_multiple_of(0x1000) || !size.is_multiple_of(0x1000) {
            return Err(EptError::Misaligned);
        }
        let end = guest_phys.checked_add(size).filter(|&e| e <= MAX_GUEST_PHYS).ok_or(EptError::OutOfRange)?;
        let mut gpa = guest_phys;
        while gpa < end {
            let Some((table, level)) = self.leaf(mem, gpa) else {
                gpa += 0x1000;
                continue;
            };
            let page = 1u64 << (12 + 9 * level);
            let start = gpa & !(page - 1);
            if start < guest_phys || start + page > end {
                self.split(mem, table, gpa, level)?;
                continue;
            }
            f(&mut mem.table(table)[index(gpa, level)], page);
            gpa = start + page;
        }
        Ok(())
    }

    /// Replaces the large-page leaf at `level` covering `gpa` with a table of 512
    /// leaves one level down that map the same memory the same way.
    fn split(&mut self, mem: &mut impl TableMemory, table: u64, gpa: u64, level: usize) -> Result<(), EptError> {
        let entry = mem.table(table)[index(gpa, level)];
        let child = mem.alloc_table().ok_or(EptError::OutOfMemory)?;
        let child_page = 1u64 << (12 + 9 * (level - 1));
        let base = entry & ADDRESS_MASK_FOR_LEVEL[level];
        let attributes = entry & (Perms::RWX.bits() | (7 << 3) | IGNORE_PAT);
        let large = if level - 1 > 0 { LARGE_PAGE } else { 0 };
        for (i, slot) in mem.table(child).iter_mut().enumerate() {
            *slot = (base + i as u64 * child_page) | attributes | large;
        }
        mem.table(table)[index(gpa, level)] = child | Perms::RWX.bits();
        Ok(())
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
            if entry & LARGE_PAGE != 0 || current == 0 {
                return false;
            }
            if current == level {
                // A table of smaller pages: free if (after unmaps) it maps nothing.
                return self.subtree_is_empty(mem, entry & ADDR_MASK, level - 1);
            }
            table = entry & ADDR_MASK;
        }
        true
    }

    /// Whether the table (whose entries are at `level`) maps nothing at all.
    fn subtree_is_empty(&self, mem: &mut impl TableMemory, table: u64, level: usize) -> bool {
        (0..512).all(|i| {
            let entry = mem.table(table)[i];
            entry & PRESENT_MASK == 0
                || (level > 0 && entry & LARGE_PAGE == 0 && self.subtree_is_empty(mem, entry & ADDR_MASK, level - 1))
        })
    }

    /// Frees a table (entries at `level`) and every table below it.
    fn free_subtree(mem: &mut impl TableMemory, table: u64, level: usize) {
        if level > 0 {
            for i in 0..512 {
                let entry = mem.table(table)[i];
                if entry & PRESENT_MASK != 0 && entry & LARGE_PAGE == 0 {
                    Self::free_subtree(mem, entry & ADDR_MASK, level - 1);
                }
            }
        }
        mem.free_table(table);
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
        freed: usize,
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
        fn free_table(&mut self, phys: u64) {
            // Poison it: a freed table must never be walked again.
            self.table(phys).fill(0xdead_0000_0000_0007);
            self.freed += 1;
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
    fn unmap_splits_large_pages_and_keeps_the_rest() {
        let (mut mem, mut ept) = setup();
        ept.map(&mut mem, &req(0, 0x10_0000, 0x8000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack)).unwrap();
        ept.map(&mut mem, &req(0x20_0000, 0x20_0000, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::Uncacheable))
            .unwrap();
        assert_eq!(ept.unmap(&mut mem, 0x2000, 0x2000), Ok(0x2000));
        assert!(ept.translate(&mut mem, 0x2000).is_none());
        assert!(ept.translate(&mut mem, 0x3fff).is_none());
        assert!(ept.translate(&mut mem, 0x4000).is_some());
        // One 4K page out of the middle of the 2M page.
        assert_eq!(ept.unmap(&mut mem, 0x30_0000, 0x1000), Ok(0x1000));
        assert!(ept.translate(&mut mem, 0x30_0000).is_none());
        let t = ept.translate(&mut mem, 0x30_1234).unwrap();
        assert_eq!((t.host_phys, t.page_size, t.memory_type), (0x30_1234, PageSize::Size4K, MemoryType::Uncacheable));
        assert_eq!(ept.translate(&mut mem, 0x20_0000).unwrap().host_phys, 0x20_0000);
        assert_eq!(ept.unmap(&mut mem, 0x20_0000, 0x20_0000), Ok(0x20_0000 - 0x1000));
        assert!(ept.translate(&mut mem, 0x3f_f000).is_none());
    }

    #[test]
    fn a_large_page_can_replace_an_emptied_table() {
        let (mut mem, mut ept) = setup();
        ept.map(&mut mem, &req(0xa0_0000, 0, 0x1000, PageSize::Size4K, Perms::READ, MemoryType::WriteBack)).unwrap();
        assert_eq!(ept.unmap(&mut mem, 0xa0_0000, 0x1000), Ok(0x1000));
        ept.map(&mut mem, &req(0xa0_0000, 0, 0x20_0000, PageSize::Size2M, Perms::READ, MemoryType::WriteBack)).unwrap();
        assert_eq!(mem.freed, 1, "the emptied page table was given back");
        assert_eq!(ept.translate(&mut mem, 0xbf_ffff).unwrap().page_size, PageSize::Size2M);
    }

    #[test]
    fn protect_changes_permissions_and_splits_only_what_it_must() {
        let (mut mem, mut ept) = setup();
        ept.map(
            &mut mem,
            &req(0x4000_0000, 0x8000_0000, 0x4000_0000, PageSize::Size1G, Perms::RWX, MemoryType::WriteBack),
        )
        .unwrap();
        ept.protect(&mut mem, 0x4020_0000, 0x1000, Perms::READ).unwrap();
        let changed = ept.translate(&mut mem, 0x4020_0fff).unwrap();
        assert_eq!((changed.perms, changed.page_size, changed.host_phys), (Perms::READ, PageSize::Size4K, 0x8020_0fff));
        let neighbour = ept.translate(&mut mem, 0x4020_1000).unwrap();
        assert_eq!((neighbour.perms, neighbour.page_size), (Perms::RWX, PageSize::Size4K));
        let far = ept.translate(&mut mem, 0x7000_0000).unwrap();
        assert_eq!((far.perms, far.page_size, far.host_phys), (Perms::RWX, PageSize::Size2M, 0xb000_0000));
        ept.protect(&mut mem, 0x4000_0000, 0x4000_0000, Perms::READ | Perms::EXECUTE).unwrap();
        assert_eq!(ept.translate(&mut mem, 0x4020_0000).unwrap().perms, Perms::READ | Perms::EXECUTE);
        assert_eq!(ept.protect(&mut mem, 0x123, 0x1000, Perms::READ), Err(EptError::Misaligned));
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
        mem.limit = None;
        m(&mut ept, &mut mem, 0x20_0000, 0, 0x20_0000, PageSize::Size2M).unwrap();
        mem.limit = Some(mem.tables.len());
        assert_eq!(ept.unmap(&mut mem, 0x20_0000, 0x1000), Err(EptError::OutOfMemory), "splitting needs a table");
        assert!(ept.translate(&mut mem, 0x20_0000).is_some(), "a failed split changes nothing");
    }

    #[test]
    fn eptp_names_root_walk_length_and_memory_type() {
        let (_, ept) = setup();
        assert_eq!(ept.eptp(), 0x1000 | 0x18 | 6);
    }

    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Map { gpa_2m: u64, large: bool, perms: u8 },
        Unmap { gpa_4k: u64, pages: u64 },
        Protect { gpa_4k: u64, pages: u64, perms: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        // A 16 MiB window, so operations collide often.
        prop_oneof![
            (0..8u64, any::<bool>(), 1..8u8).prop_map(|(gpa_2m, large, perms)| Op::Map { gpa_2m, large, perms }),
            (0..4096u64, 1..700u64).prop_map(|(gpa_4k, pages)| Op::Unmap { gpa_4k, pages }),
            (0..4096u64, 1..700u64, 1..8u8).prop_map(|(gpa_4k, pages, perms)| Op::Protect { gpa_4k, pages, perms }),
        ]
    }

    proptest! {
        /// Against a model of 4 KiB pages: translate after map gives the mapping
        /// back, unmapped stays unmapped, permissions are what was asked.
        #[test]
        fn ept_matches_a_page_model(ops in prop::collection::vec(op(), 1..40)) {
            let (mut mem, mut ept) = setup();
            let mut model: BTreeMap<u64, (u64, Perms)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Map { gpa_2m, large, perms } => {
                        let gpa = gpa_2m << 21;
                        let hpa = 0x1_0000_0000 + gpa;
                        let perms = Perms::from_bits_truncate(perms as u64);
                        let (size, page) = if large { (0x20_0000, PageSize::Size2M) } else { (0x1000, PageSize::Size4K) };
                        let free = (0..size / 0x1000).all(|p| !model.contains_key(&(gpa / 0x1000 + p)));
                        let result = ept.map(&mut mem, &req(gpa, hpa, size, page, perms, MemoryType::WriteBack));
                        prop_assert_eq!(result.is_ok(), free, "map of {:#x} ok iff free", gpa);
                        if free {
                            for p in 0..size / 0x1000 {
                                model.insert(gpa / 0x1000 + p, (hpa + p * 0x1000, perms));
                            }
                        }
                    }
                    Op::Unmap { gpa_4k, pages } => {
                        let removed = (gpa_4k..gpa_4k + pages).filter(|p| model.remove(p).is_some()).count() as u64;
                        prop_assert_eq!(ept.unmap(&mut mem, gpa_4k * 0x1000, pages * 0x1000), Ok(removed * 0x1000));
                    }
                    Op::Protect { gpa_4k, pages, perms } => {
                        let perms = Perms::from_bits_truncate(perms as u64);
                        ept.protect(&mut mem, gpa_4k * 0x1000, pages * 0x1000, perms).unwrap();
                        for p in gpa_4k..gpa_4k + pages {
                            if let Some(entry) = model.get_mut(&p) {
                                entry.1 = perms;
                            }
                        }
                    }
                }
            }
            for page in 0..4096 + 700 {
                let t = ept.translate(&mut mem, page * 0x1000 + 0x10);
                match model.get(&page) {
                    Some(&(hpa, perms)) => {
                        let t = t.expect("a mapped page translates");
                        prop_assert_eq!(t.host_phys, hpa + 0x10);
                        prop_assert_eq!(t.perms, perms);
                    }
                    None => prop_assert!(t.is_none(), "page {:#x} should be unmapped", page),
                }
            }
        }
    }
}
