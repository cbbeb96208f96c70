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

    fn supports(_perms: Perms) -> bool {
        true
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
    use crate::tests::setup;
    use crate::*;

    #[test]
    fn eptp_names_root_walk_length_and_memory_type() {
        let (_, ept) = setup::<EptFormat>();
        assert_eq!(ept.eptp(), 0x1000 | 0x18 | 6);
    }
}
