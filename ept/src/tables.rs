//! The tree itself, for any [`Format`]: walking, allocating, splitting, freeing.

use core::marker::PhantomData;

use crate::{EptError, Format, Mapping, PageSize, Perms, TableMemory, Translation};

/// Four levels of 512 entries translate 48 bits.
const MAX_GUEST_PHYS: u64 = 1 << 48;
/// Both formats keep the address in bits 51:12; anything above would land in
/// other fields (NPT's bit 63 is no-execute, EPT's is suppress-#VE).
const MAX_HOST_PHYS: u64 = 1 << 52;

fn index(gpa: u64, level: usize) -> usize {
    ((gpa >> (12 + 9 * level)) & 0x1ff) as usize
}

/// Bytes a leaf at `level` maps.
const fn page_bytes(level: usize) -> u64 {
    1 << (12 + 9 * level)
}

/// One guest's second-level tree (guest-physical to host-physical), encoded
/// as `F` says. The tables live in a [`TableMemory`] the caller passes to every
/// call, so this value is only the root.
pub struct SecondLevel<F: Format> {
    root: u64,
    format: PhantomData<F>,
}

impl<F: Format> SecondLevel<F> {
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, EptError> {
        Ok(SecondLevel { root: mem.alloc_table().ok_or(EptError::OutOfMemory)?, format: PhantomData })
    }

    /// What the CPU is given to find this tree (see [`Format::root_pointer`]).
    pub fn root_pointer(&self) -> u64 {
        F::root_pointer(self.root)
    }

    /// Adds `mapping`; on error nothing of it is mapped.
    pub fn map(&mut self, mem: &mut impl TableMemory, mapping: &Mapping) -> Result<(), EptError> {
        let Mapping { guest_phys, host_phys, size, page_size: page, perms, memory_type } = *mapping;
        let step = page.bytes();
        if !guest_phys.is_multiple_of(step) || !host_phys.is_multiple_of(step) || !size.is_multiple_of(step) {
            return Err(EptError::Misaligned);
        }
        let beyond = |start: u64, max| start.checked_add(size).is_none_or(|end| end > max);
        if beyond(guest_phys, MAX_GUEST_PHYS) || beyond(host_phys, MAX_HOST_PHYS) {
            return Err(EptError::OutOfRange);
        }
        if !F::supports(perms) {
            return Err(EptError::UnsupportedPerms);
        }
        let level = page.level();
        // Check the whole range first so a failed map leaves nothing behind.
        for offset in (0..size).step_by(step as usize) {
            if !self.slot_is_free(mem, guest_phys + offset, level) {
                return Err(EptError::AlreadyMapped { guest_phys: guest_phys + offset });
            }
        }
        for offset in (0..size).step_by(step as usize) {
            let gpa = guest_phys + offset;
            let table = self.walk_create(mem, gpa, level)?;
            let old = mem.table(table)[index(gpa, level)];
            if F::is_present(old) {
                // An emptied table of smaller pages (slot_is_free checked it).
                Self::free_subtree(mem, F::address(old), level - 1);
            }
            mem.table(table)[index(gpa, level)] = F::leaf(host_phys + offset, perms, memory_type, level);
        }
        Ok(())
    }

    /// Removes every mapping in `[guest_phys, guest_phys + size)` (4 KiB granular).
    /// A large page only partly inside the range is split first, so the rest of it
    /// stays mapped. Returns how many bytes were mapped.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, guest_phys: u64, size: u64) -> Result<u64, EptError> {
        let mut unmapped = 0;
        self.for_each_leaf(mem, guest_phys, size, |_, level| {
            unmapped += page_bytes(level);
            0
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
        if !F::supports(perms) {
            return Err(EptError::UnsupportedPerms);
        }
        self.for_each_leaf(mem, guest_phys, size, |entry, level| {
            F::leaf(leaf_address::<F>(entry, level), perms, F::memory_type(entry, level), level)
        })
    }

    pub fn translate(&self, mem: &mut impl TableMemory, guest_phys: u64) -> Option<Translation> {
        let (table, level) = self.leaf(mem, guest_phys)?;
        let entry = mem.table(table)[index(guest_phys, level)];
        let page_size = match level {
            0 => PageSize::Size4K,
            1 => PageSize::Size2M,
            _ => PageSize::Size1G,
        };
        Some(Translation {
            host_phys: leaf_address::<F>(entry, level) + (guest_phys & (page_bytes(level) - 1)),
            perms: F::perms(entry),
            memory_type: F::memory_type(entry, level),
            page_size,
        })
    }

    /// Replaces every leaf entry inside the range with what `f` makes of it
    /// (given the entry and its level), splitting large pages that straddle the
    /// range's ends.
    fn for_each_leaf(
        &mut self,
        mem: &mut impl TableMemory,
        guest_phys: u64,
        size: u64,
        mut f: impl FnMut(u64, usize) -> u64,
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
            let page = page_bytes(level);
            let start = gpa & !(page - 1);
            if start < guest_phys || start + page > end {
                self.split(mem, table, gpa, level)?;
                continue;
            }
            let slot = &mut mem.table(table)[index(gpa, level)];
            *slot = f(*slot, level);
            gpa = start + page;
        }
        Ok(())
    }

    /// Replaces the large-page leaf at `level` covering `gpa` with a table of 512
    /// leaves one level down that map the same memory the same way.
    fn split(&mut self, mem: &mut impl TableMemory, table: u64, gpa: u64, level: usize) -> Result<(), EptError> {
        let entry = mem.table(table)[index(gpa, level)];
        let child = mem.alloc_table().ok_or(EptError::OutOfMemory)?;
        let base = leaf_address::<F>(entry, level);
        let (perms, memory_type) = (F::perms(entry), F::memory_type(entry, level));
        for (i, slot) in mem.table(child).iter_mut().enumerate() {
            *slot = F::leaf(base + i as u64 * page_bytes(level - 1), perms, memory_type, level - 1);
        }
        mem.table(table)[index(gpa, level)] = F::table_entry(child);
        Ok(())
    }

    /// Whether nothing is mapped in the page of `level` at `gpa`: no leaf above it
    /// covers it and its own entry is empty (no leaf, no table of smaller pages).
    fn slot_is_free(&self, mem: &mut impl TableMemory, gpa: u64, level: usize) -> bool {
        let mut table = self.root;
        for current in (level..4).rev() {
            let entry = mem.table(table)[index(gpa, current)];
            if !F::is_present(entry) {
                return true;
            }
            if F::is_leaf(entry, current) {
                return false;
            }
            if current == level {
                // A table of smaller pages: free if (after unmaps) it maps nothing.
                return self.subtree_is_empty(mem, F::address(entry), level - 1);
            }
            table = F::address(entry);
        }
        true
    }

    /// Whether the table (whose entries are at `level`) maps nothing at all.
    fn subtree_is_empty(&self, mem: &mut impl TableMemory, table: u64, level: usize) -> bool {
        (0..512).all(|i| {
            let entry = mem.table(table)[i];
            !F::is_present(entry)
                || (!F::is_leaf(entry, level) && self.subtree_is_empty(mem, F::address(entry), level - 1))
        })
    }

    /// Frees a table (entries at `level`) and every table below it.
    fn free_subtree(mem: &mut impl TableMemory, table: u64, level: usize) {
        for i in 0..512 {
            let entry = mem.table(table)[i];
            if F::is_present(entry) && !F::is_leaf(entry, level) {
                Self::free_subtree(mem, F::address(entry), level - 1);
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
            if !F::is_present(entry) {
                return None;
            }
            if F::is_leaf(entry, level) {
                return Some((table, level));
            }
            table = F::address(entry);
        }
        None
    }

    /// The table at `level` covering `gpa`, creating intermediate tables.
    fn walk_create(&mut self, mem: &mut impl TableMemory, gpa: u64, level: usize) -> Result<u64, EptError> {
        let mut table = self.root;
        for current in ((level + 1)..4).rev() {
            let entry = mem.table(table)[index(gpa, current)];
            table = if !F::is_present(entry) {
                let next = mem.alloc_table().ok_or(EptError::OutOfMemory)?;
                mem.table(table)[index(gpa, current)] = F::table_entry(next);
                next
            } else if F::is_leaf(entry, current) {
                return Err(EptError::AlreadyMapped { guest_phys: gpa });
            } else {
                F::address(entry)
            };
        }
        Ok(table)
    }
}

/// The page a leaf at `level` maps: its address bits below the page size
/// belong to other fields (NPT's large-page PAT bit is bit 12).
fn leaf_address<F: Format>(entry: u64, level: usize) -> u64 {
    F::address(entry) & !(page_bytes(level) - 1)
}
