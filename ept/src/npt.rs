//! AMD's nested page tables (APM vol. 2, "Nested Paging"): the ordinary x86-64
//! long-mode format, walked by the CPU for a guest-physical address.

use crate::{Format, MemoryType, Perms, SecondLevel};

/// One guest's nested page tables; the VMCB's N_CR3 takes [`Npt::ncr3`].
pub type Npt = SecondLevel<NptFormat>;

/// x86-64 page-table entries: present (0), writable (1), user (2), the PAT
/// index in PWT (3), PCD (4) and PAT (7 in a 4 KiB leaf, 12 in a large one),
/// large page (7 above the 4 KiB level), no-execute (63).
///
/// Memory types are PAT indices into the *host's* PAT (the value of the PAT
/// MSR at VMRUN), and only two are used, both chosen so that the PAT bit stays
/// clear (it moves between 4 KiB and large leaves):
///
/// | type | PAT | PCD | PWT | index | architectural default PAT entry |
/// | --- | --- | --- | --- | --- | --- |
/// | write-back | 0 | 0 | 0 | 0 | PA0 = WB |
/// | uncacheable | 0 | 1 | 1 | 3 | PA3 = UC (strong, unlike PA2's UC-) |
///
/// So the host must keep PA0 = WB and PA3 = UC, as they are from reset. Unlike
/// EPT's ignore-PAT, this type is combined with the one the guest's own tables
/// and guest PAT select: WB lets the guest choose, UC forces uncached.
///
/// Bit 63 only means no-execute while the host runs with EFER.NXE set; with it
/// clear the bit is reserved and every access through such a leaf faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NptFormat {}

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// The CPU's walk of nested tables is a user-mode access at every level, so a
/// supervisor-only entry would make everything under it fault.
const USER: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const LARGE_PAGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

impl Format for NptFormat {
    fn table_entry(next: u64) -> u64 {
        // PWT and PCD clear: the tables themselves are read write-back.
        next | PRESENT | WRITABLE | USER
    }

    fn leaf(host_phys: u64, perms: Perms, memory_type: MemoryType, level: usize) -> u64 {
        let mut entry = host_phys | USER;
        if perms.contains(Perms::READ) {
            entry |= PRESENT;
        }
        if perms.contains(Perms::WRITE) {
            entry |= WRITABLE;
        }
        if !perms.contains(Perms::EXECUTE) {
            entry |= NO_EXECUTE;
        }
        if memory_type == MemoryType::Uncacheable {
            entry |= PCD | PWT;
        }
        if level > 0 {
            entry |= LARGE_PAGE;
        }
        entry
    }

    fn is_present(entry: u64) -> bool {
        entry & PRESENT != 0
    }

    fn is_leaf(entry: u64, level: usize) -> bool {
        level == 0 || entry & LARGE_PAGE != 0
    }

    fn address(entry: u64) -> u64 {
        entry & ADDRESS
    }

    fn perms(entry: u64) -> Perms {
        if entry & PRESENT == 0 {
            return Perms::empty();
        }
        let mut perms = Perms::READ;
        perms.set(Perms::WRITE, entry & WRITABLE != 0);
        perms.set(Perms::EXECUTE, entry & NO_EXECUTE == 0);
        perms
    }

    fn memory_type(entry: u64, _level: usize) -> MemoryType {
        if entry & (PCD | PWT) == PCD | PWT {
            MemoryType::Uncacheable
        } else {
            MemoryType::WriteBack
        }
    }

    /// Present means readable: there is no write-only or execute-only page.
    fn supports(perms: Perms) -> bool {
        perms.is_empty() || perms.contains(Perms::READ)
    }

    /// N_CR3 is a plain CR3: the root, with PWT and PCD clear (PAT index 0,
    /// write-back) for the reads of the root table.
    fn root_pointer(root: u64) -> u64 {
        root
    }
}

impl Npt {
    /// The value for the VMCB's N_CR3 field.
    pub fn ncr3(&self) -> u64 {
        self.root_pointer()
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::{req, setup, HeapTables};
    use crate::*;

    // Spelled out again rather than imported, so a wrong constant above is caught.
    const P: u64 = 1;
    const RW: u64 = 1 << 1;
    const US: u64 = 1 << 2;
    const PWT: u64 = 1 << 3;
    const PCD: u64 = 1 << 4;
    const PS: u64 = 1 << 7;
    const PAT_LARGE: u64 = 1 << 12;
    const NX: u64 = 1 << 63;
    const TABLE: u64 = P | RW | US;

    /// What an x86-64 4-level walk (APM vol. 2, "Long-Mode Page Translation")
    /// finds for `addr` under `cr3`: every entry it read, then the result.
    struct Walk {
        entries: Vec<u64>,
        result: Option<Leaf>,
    }

    #[derive(Debug, PartialEq)]
    struct Leaf {
        phys: u64,
        writable: bool,
        executable: bool,
        user: bool,
        pat_index: u64,
        page: u64,
    }

    fn walk(mem: &mut HeapTables, cr3: u64, addr: u64) -> Walk {
        let address = |e: u64| e & 0x000f_ffff_ffff_f000;
        let mut table = address(cr3);
        let mut entries = Vec::new();
        let (mut writable, mut executable, mut user) = (true, true, true);
        for shift in [39, 30, 21, 12] {
            let entry = mem.table(table)[((addr >> shift) & 0x1ff) as usize];
            entries.push(entry);
            if entry & P == 0 {
                return Walk { entries, result: None };
            }
            writable &= entry & RW != 0;
            user &= entry & US != 0;
            executable &= entry & NX == 0;
            assert!(shift != 39 || entry & PS == 0, "PS is reserved in a PML4 entry");
            if shift == 12 || entry & PS != 0 {
                let page = 1u64 << shift;
                let pat_bit = if shift == 12 { entry & PS != 0 } else { entry & PAT_LARGE != 0 };
                let base = if shift == 12 { address(entry) } else { address(entry) & !PAT_LARGE };
                assert_eq!(base & (page - 1), 0, "reserved bits of a large leaf are clear: {entry:#x}");
                let pat_index = (pat_bit as u64) << 2 | ((entry & PCD != 0) as u64) << 1 | (entry & PWT != 0) as u64;
                let phys = base + (addr & (page - 1));
                return Walk { entries, result: Some(Leaf { phys, writable, executable, user, pat_index, page }) };
            }
            table = address(entry);
        }
        unreachable!("a 4 KiB entry always ends the walk")
    }

    #[test]
    fn ncr3_is_the_root_alone() {
        let (_, npt) = setup::<NptFormat>();
        assert_eq!(npt.ncr3(), 0x1000);
    }

    #[test]
    fn entries_have_exactly_the_x86_bits_for_every_size() {
        let (mut mem, mut npt) = setup::<NptFormat>();
        let rw_wb_4k =
            req(0x1000, 0x20_0000, 0x1000, PageSize::Size4K, Perms::READ | Perms::WRITE, MemoryType::WriteBack);
        let rwx_uc_2m = req(0x40_0000, 0x80_0000, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::Uncacheable);
        let rx_wb_1g = req(
            0x8000_0000,
            0x4000_0000,
            0x4000_0000,
            PageSize::Size1G,
            Perms::READ | Perms::EXECUTE,
            MemoryType::WriteBack,
        );
        let r_uc_4k = req(0x2000, 0x30_0000, 0x1000, PageSize::Size4K, Perms::READ, MemoryType::Uncacheable);
        for m in [rw_wb_4k, rwx_uc_2m, rx_wb_1g, r_uc_4k] {
            npt.map(&mut mem, &m).unwrap();
        }
        let cases = [
            (0x1000, [TABLE, TABLE, TABLE], 0x20_0000 | P | RW | US | NX),
            (0x40_0000, [TABLE, TABLE, 0], 0x80_0000 | P | RW | US | PCD | PWT | PS),
            (0x8000_0000, [TABLE, 0, 0], 0x4000_0000 | P | US | PS),
            (0x2000, [TABLE, TABLE, TABLE], 0x30_0000 | P | US | NX | PCD | PWT),
        ];
        for (gpa, tables, leaf) in cases {
            let w = walk(&mut mem, npt.ncr3(), gpa);
            let (last, above) = w.entries.split_last().unwrap();
            assert_eq!(*last, leaf, "leaf for {gpa:#x}");
            for (entry, flags) in above.iter().zip(tables) {
                assert_eq!(entry & 0xfff, flags, "tables grant everything, for {gpa:#x}");
                assert_eq!(entry >> 52, 0, "no NX or other high bits on tables");
            }
        }
        let mut pat = |gpa| walk(&mut mem, npt.ncr3(), gpa).result.unwrap().pat_index;
        assert_eq!((pat(0x1000), pat(0x8000_0000)), (0, 0), "write-back is PAT index 0");
        assert_eq!((pat(0x40_0000), pat(0x2000)), (3, 3), "uncacheable is PAT index 3");
    }

    #[test]
    fn unmap_clears_the_leaf_and_translate_reads_the_bits_back() {
        let (mut mem, mut npt) = setup::<NptFormat>();
        npt.map(&mut mem, &req(0x20_0000, 0x60_0000, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::Uncacheable))
            .unwrap();
        assert_eq!(npt.unmap(&mut mem, 0x20_0000, 0x20_0000), Ok(0x20_0000));
        assert_eq!(walk(&mut mem, npt.ncr3(), 0x20_0000).entries.last(), Some(&0));
        assert!(npt.translate(&mut mem, 0x20_0000).is_none());
        // The same slot again, after the unmap, as 4 KiB pages.
        npt.map(&mut mem, &req(0x20_0000, 0x70_0000, 0x2000, PageSize::Size4K, Perms::READ, MemoryType::WriteBack))
            .unwrap();
        let t = npt.translate(&mut mem, 0x20_1abc).unwrap();
        assert_eq!((t.host_phys, t.perms, t.memory_type), (0x70_1abc, Perms::READ, MemoryType::WriteBack));
    }

    #[test]
    fn rights_without_read_are_refused() {
        let (mut mem, mut npt) = setup::<NptFormat>();
        for perms in [Perms::WRITE, Perms::EXECUTE, Perms::WRITE | Perms::EXECUTE] {
            let m = req(0, 0, 0x1000, PageSize::Size4K, perms, MemoryType::WriteBack);
            assert_eq!(npt.map(&mut mem, &m), Err(EptError::UnsupportedPerms), "{perms:?}");
        }
        npt.map(&mut mem, &req(0, 0, 0x1000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack)).unwrap();
        assert_eq!(npt.protect(&mut mem, 0, 0x1000, Perms::EXECUTE), Err(EptError::UnsupportedPerms));
        assert_eq!(npt.translate(&mut mem, 0).unwrap().perms, Perms::RWX, "a refused protect changes nothing");
    }

    /// A VM's usual layout: RAM below 3 GiB in every page size, a hole with one
    /// uncached device page, RAM above 4 GiB; host frames are not identity.
    /// Then a split and a protect, as the kernel does for device pages.
    #[test]
    fn an_independent_x86_walk_agrees_with_the_mappings() {
        const RX: Perms = Perms::READ.union(Perms::EXECUTE);
        let regions = [
            // (guest, host, size, page, perms, type)
            (0x0, 0x1_0000_0000, 0x20_0000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack),
            (0x20_0000, 0x2_0020_0000, 0x3fe0_0000, PageSize::Size2M, Perms::RWX, MemoryType::WriteBack),
            (0x4000_0000, 0x3_0000_0000, 0x8000_0000, PageSize::Size1G, RX, MemoryType::WriteBack),
            (0xfee0_0000, 0xfee0_0000, 0x1000, PageSize::Size4K, Perms::READ | Perms::WRITE, MemoryType::Uncacheable),
            (0x1_0000_0000, 0x8_0000_0000, 0x4000_0000, PageSize::Size1G, Perms::RWX, MemoryType::WriteBack),
        ];
        let (mut mem, mut npt) = setup::<NptFormat>();
        for (gpa, hpa, size, page, perms, ty) in regions {
            npt.map(&mut mem, &req(gpa, hpa, size, page, perms, ty)).unwrap();
        }
        // Carve a read-only page out of a 1 GiB page and drop one below it.
        npt.protect(&mut mem, 0x4000_5000, 0x1000, Perms::READ).unwrap();
        npt.unmap(&mut mem, 0x4000_4000, 0x1000).unwrap();

        let expected = |gpa: u64| -> Option<(u64, Perms, MemoryType)> {
            if gpa & !0xfff == 0x4000_4000 {
                return None;
            }
            let (g, h, _, _, perms, ty) = *regions.iter().find(|r| (r.0..r.0 + r.2).contains(&gpa))?;
            let perms = if gpa & !0xfff == 0x4000_5000 { Perms::READ } else { perms };
            Some((h + (gpa - g), perms, ty))
        };
        let edges = [
            0,
            0xfff,
            0x1f_ffff,
            0x20_0000,
            0x3fff_ffff,
            0x4000_0000,
            0x4000_3fff,
            0x4000_4000,
            0x4000_4fff,
            0x4000_5000,
            0x4000_5fff,
            0x4000_6000,
            0xbfff_ffff,
            0xc000_0000,
            0xfedf_ffff,
            0xfee0_0000,
            0xfee0_0fff,
            0xfee0_1000,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_3fff_ffff,
            0x1_4000_0000,
            0xffff_ffff_ffff,
        ];
        // A fixed linear congruential sequence over the first 6 GiB.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let samples = (0..4000).map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 16) % 0x1_8000_0000
        });
        for gpa in edges.into_iter().chain(samples) {
            let leaf = walk(&mut mem, npt.ncr3(), gpa).result;
            match expected(gpa) {
                None => assert_eq!(leaf, None, "{gpa:#x} is a hole"),
                Some((hpa, perms, ty)) => {
                    let leaf = leaf.unwrap_or_else(|| panic!("{gpa:#x} is mapped"));
                    assert_eq!(leaf.phys, hpa, "{gpa:#x}");
                    assert!(leaf.user, "{gpa:#x}: nested walks are user accesses");
                    assert_eq!(leaf.writable, perms.contains(Perms::WRITE), "{gpa:#x}");
                    assert_eq!(leaf.executable, perms.contains(Perms::EXECUTE), "{gpa:#x}");
                    assert_eq!(leaf.pat_index, if ty == MemoryType::WriteBack { 0 } else { 3 }, "{gpa:#x}");
                    let t = npt.translate(&mut mem, gpa).unwrap();
                    assert_eq!((t.host_phys, t.perms, t.memory_type), (hpa, perms, ty), "{gpa:#x}");
                    assert_eq!(t.page_size.bytes(), leaf.page, "{gpa:#x}");
                }
            }
        }
    }
}
