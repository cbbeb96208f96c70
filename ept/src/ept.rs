//! Intel's extended page tables (SDM vol. 3, "EPT Translation Mechanism").

use crate::{Format, MemoryType, Perms, SecondLevel};

/// One guest's EPT tree; the VMCS takes [`Ept::eptp`].
pub type Ept = SecondLevel<EptFormat>;

/// EPT entries: read/write/execute in bits 2:0 (any of them makes an entry
/// present), the memory type in bits 5:3 of a leaf, ignore-PAT in bit 6, and
/// bit 7 for a leaf above the 4 KiB level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptFormat {}

const RWX: u64 = Perms::RWX.bits();
const MEMORY_TYPE_SHIFT: u64 = 3;
/// The leaf's memory type is final: the guest's PAT cannot make RAM uncached or
/// device memory cached behind the hypervisor's back.
const IGNORE_PAT: u64 = 1 << 6;
const LARGE_PAGE: u64 = 1 << 7;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// EPTP bits 5:3: the walk length minus one.
const FOUR_LEVEL_WALK: u64 = 3 << 3;

impl Format for EptFormat {
    fn table_entry(next: u64) -> u64 {
        next | RWX
    }

    fn leaf(host_phys: u64, perms: Perms, memory_type: MemoryType, level: usize) -> u64 {
        host_phys
            | perms.bits()
            | ((memory_type as u64) << MEMORY_TYPE_SHIFT)
            | IGNORE_PAT
            | if level > 0 { LARGE_PAGE } else { 0 }
    }

    fn is_present(entry: u64) -> bool {
        entry & RWX != 0
    }

    fn is_leaf(entry: u64, level: usize) -> bool {
        level == 0 || entry & LARGE_PAGE != 0
    }

    fn address(entry: u64) -> u64 {
        entry & ADDRESS
    }

    fn perms(entry: u64) -> Perms {
        Perms::from_bits_truncate(entry & RWX)
    }

    fn memory_type(entry: u64, _level: usize) -> MemoryType {
        if (entry >> MEMORY_TYPE_SHIFT) & 7 == MemoryType::WriteBack as u64 {
            MemoryType::WriteBack
        } else {
            MemoryType::Uncacheable
        }
    }

    /// Write without read is an EPT misconfiguration (an exit on every access,
    /// not a fault the guest could be given). Execute-only is left to the
    /// caller, who knows whether the CPU offers it.
    fn supports(perms: Perms) -> bool {
        !perms.contains(Perms::WRITE) || perms.contains(Perms::READ)
    }

    /// The root, walked with write-back caching, four levels deep.
    fn root_pointer(root: u64) -> u64 {
        root | FOUR_LEVEL_WALK | MemoryType::WriteBack as u64
    }
}

impl Ept {
    /// The EPT pointer for the VMCS.
    pub fn eptp(&self) -> u64 {
        self.root_pointer()
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::{req, setup, HeapTables};
    use crate::*;

    #[test]
    fn eptp_names_root_walk_length_and_memory_type() {
        let (_, ept) = setup::<EptFormat>();
        assert_eq!(ept.eptp(), 0x1000 | 0x18 | 6);
    }

    /// The entries from the root down to the leaf for `gpa`, by address bits alone.
    fn entries(mem: &mut HeapTables, root: u64, gpa: u64, leaf_shift: u64) -> Vec<u64> {
        let mut table = root;
        let mut path = Vec::new();
        for shift in (leaf_shift..=39).rev().step_by(9) {
            let entry = mem.table(table)[((gpa >> shift) & 0x1ff) as usize];
            path.push(entry);
            table = entry & 0x000f_ffff_ffff_f000;
        }
        path
    }

    #[test]
    fn entries_have_exactly_the_sdm_bits_for_every_size() {
        let (mut mem, mut ept) = setup::<EptFormat>();
        let (read, write, execute, ignore_pat, large) = (1, 2, 4, 1 << 6, 1 << 7);
        let (wb, uc) = (6 << 3, 0);
        let cases = [
            (0x1000, 0x20_0000, PageSize::Size4K, Perms::READ | Perms::WRITE, MemoryType::WriteBack, read | write | wb),
            (0x40_0000, 0x80_0000, PageSize::Size2M, Perms::RWX, MemoryType::Uncacheable, 7 | uc | large),
            (0x8000_0000, 0x4000_0000, PageSize::Size1G, Perms::EXECUTE, MemoryType::WriteBack, execute | wb | large),
        ];
        for (gpa, hpa, page, perms, ty, bits) in cases {
            ept.map(&mut mem, &req(gpa, hpa, page.bytes(), page, perms, ty)).unwrap();
            let shift = 12 + 9 * page.level() as u64;
            let path = entries(&mut mem, ept.eptp() & !0xfff, gpa, shift);
            let (leaf, tables) = path.split_last().unwrap();
            assert_eq!(*leaf, hpa | bits | ignore_pat, "leaf for {gpa:#x}");
            assert!(tables.iter().all(|t| t & 0xfff == 7 && t >> 52 == 0), "tables grant RWX only: {tables:x?}");
        }
    }

    #[test]
    fn write_without_read_is_refused() {
        let (mut mem, mut ept) = setup::<EptFormat>();
        for perms in [Perms::WRITE, Perms::WRITE | Perms::EXECUTE] {
            let m = req(0, 0, 0x1000, PageSize::Size4K, perms, MemoryType::WriteBack);
            assert_eq!(ept.map(&mut mem, &m), Err(EptError::UnsupportedPerms), "{perms:?}");
        }
    }
}
