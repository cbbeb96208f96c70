//! Behaviour every format must share, run once per format, and the tables the
//! host tests keep in plain memory.

use crate::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Tables in a Vec; "physical" address = (index + 1) * 4096.
#[derive(Default)]
pub(crate) struct HeapTables {
    pub tables: Vec<Box<[u64; 512]>>,
    pub limit: Option<usize>,
    pub freed: usize,
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

pub(crate) fn req(
    guest_phys: u64,
    host_phys: u64,
    size: u64,
    page_size: PageSize,
    perms: Perms,
    memory_type: MemoryType,
) -> Mapping {
    Mapping { guest_phys, host_phys, size, page_size, perms, memory_type }
}

pub(crate) fn setup<F: Format>() -> (HeapTables, SecondLevel<F>) {
    let mut mem = HeapTables::default();
    let tree = SecondLevel::new(&mut mem).unwrap();
    (mem, tree)
}

/// Each scenario below runs as `<format>::<scenario>`, one test per format.
macro_rules! for_each_format {
    ($($scenario:ident),* $(,)?) => {
        mod ept {
            $(#[test]
            fn $scenario() {
                super::$scenario::<crate::EptFormat>()
            })*
        }
        mod npt {
            $(#[test]
            fn $scenario() {
                super::$scenario::<crate::NptFormat>()
            })*
        }
    };
}

for_each_format!(
    translate_after_map_gives_the_mapping_back_for_every_size,
    overlapping_map_is_refused_and_leaves_nothing_behind,
    unmap_splits_large_pages_and_keeps_the_rest,
    a_large_page_can_replace_an_emptied_table,
    protect_changes_permissions_and_splits_only_what_it_must,
    bad_arguments_and_exhaustion_are_errors,
    host_addresses_beyond_52_bits_are_refused,
);

fn translate_after_map_gives_the_mapping_back_for_every_size<F: Format>() {
    let (mut mem, mut tree) = setup::<F>();
    let cases = [
        (0x1000, 0x20_0000, PageSize::Size4K, Perms::READ),
        (0x40_0000, 0x80_0000, PageSize::Size2M, Perms::RWX),
        (0x8000_0000, 0x4000_0000, PageSize::Size1G, Perms::READ | Perms::EXECUTE),
    ];
    for (gpa, hpa, size, perms) in cases {
        tree.map(&mut mem, &req(gpa, hpa, size.bytes(), size, perms, MemoryType::WriteBack)).unwrap();
        let t = tree.translate(&mut mem, gpa + 0x123).unwrap();
        assert_eq!(t.host_phys, hpa + 0x123);
        assert_eq!(t.perms, perms);
        assert_eq!(t.page_size, size);
        assert_eq!(t.memory_type, MemoryType::WriteBack);
    }
    assert!(tree.translate(&mut mem, 0x2000).is_none());
    assert!(tree.translate(&mut mem, 0x60_0000).is_none());
}

fn overlapping_map_is_refused_and_leaves_nothing_behind<F: Format>() {
    let (mut mem, mut tree) = setup::<F>();
    tree.map(&mut mem, &req(0x5000, 0x5000, 0x1000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack)).unwrap();
    let err = tree.map(&mut mem, &req(0x3000, 0x9000, 0x4000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack));
    assert_eq!(err, Err(EptError::AlreadyMapped { guest_phys: 0x5000 }));
    assert!(tree.translate(&mut mem, 0x3000).is_none());
    // A large page over the 4K mapping collides at the large page's start.
    tree.map(&mut mem, &req(0x80_0000, 0, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::WriteBack)).unwrap();
    let err = tree.map(&mut mem, &req(0x60_0000, 0, 0x40_0000, PageSize::Size2M, Perms::RWX, MemoryType::WriteBack));
    assert_eq!(err, Err(EptError::AlreadyMapped { guest_phys: 0x80_0000 }));
    assert!(tree.translate(&mut mem, 0x60_0000).is_none(), "nothing half-mapped");
    let err = tree.map(&mut mem, &req(0, 0, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::WriteBack));
    assert_eq!(err, Err(EptError::AlreadyMapped { guest_phys: 0 }));
}

fn unmap_splits_large_pages_and_keeps_the_rest<F: Format>() {
    let (mut mem, mut tree) = setup::<F>();
    tree.map(&mut mem, &req(0, 0x10_0000, 0x8000, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack)).unwrap();
    tree.map(&mut mem, &req(0x20_0000, 0x20_0000, 0x20_0000, PageSize::Size2M, Perms::RWX, MemoryType::Uncacheable))
        .unwrap();
    assert_eq!(tree.unmap(&mut mem, 0x2000, 0x2000), Ok(0x2000));
    assert!(tree.translate(&mut mem, 0x2000).is_none());
    assert!(tree.translate(&mut mem, 0x3fff).is_none());
    assert!(tree.translate(&mut mem, 0x4000).is_some());
    // One 4K page out of the middle of the 2M page.
    assert_eq!(tree.unmap(&mut mem, 0x30_0000, 0x1000), Ok(0x1000));
    assert!(tree.translate(&mut mem, 0x30_0000).is_none());
    let t = tree.translate(&mut mem, 0x30_1234).unwrap();
    assert_eq!((t.host_phys, t.page_size, t.memory_type), (0x30_1234, PageSize::Size4K, MemoryType::Uncacheable));
    assert_eq!(tree.translate(&mut mem, 0x20_0000).unwrap().host_phys, 0x20_0000);
    assert_eq!(tree.unmap(&mut mem, 0x20_0000, 0x20_0000), Ok(0x20_0000 - 0x1000));
    assert!(tree.translate(&mut mem, 0x3f_f000).is_none());
}

fn a_large_page_can_replace_an_emptied_table<F: Format>() {
    let (mut mem, mut tree) = setup::<F>();
    tree.map(&mut mem, &req(0xa0_0000, 0, 0x1000, PageSize::Size4K, Perms::READ, MemoryType::WriteBack)).unwrap();
    assert_eq!(tree.unmap(&mut mem, 0xa0_0000, 0x1000), Ok(0x1000));
    tree.map(&mut mem, &req(0xa0_0000, 0, 0x20_0000, PageSize::Size2M, Perms::READ, MemoryType::WriteBack)).unwrap();
    assert_eq!(mem.freed, 1, "the emptied page table was given back");
    assert_eq!(tree.translate(&mut mem, 0xbf_ffff).unwrap().page_size, PageSize::Size2M);
}

fn protect_changes_permissions_and_splits_only_what_it_must<F: Format>() {
    let (mut mem, mut tree) = setup::<F>();
    tree.map(
        &mut mem,
        &req(0x4000_0000, 0x8000_0000, 0x4000_0000, PageSize::Size1G, Perms::RWX, MemoryType::WriteBack),
    )
    .unwrap();
    tree.protect(&mut mem, 0x4020_0000, 0x1000, Perms::READ).unwrap();
    let changed = tree.translate(&mut mem, 0x4020_0fff).unwrap();
    assert_eq!((changed.perms, changed.page_size, changed.host_phys), (Perms::READ, PageSize::Size4K, 0x8020_0fff));
    let neighbour = tree.translate(&mut mem, 0x4020_1000).unwrap();
    assert_eq!((neighbour.perms, neighbour.page_size), (Perms::RWX, PageSize::Size4K));
    let far = tree.translate(&mut mem, 0x7000_0000).unwrap();
    assert_eq!((far.perms, far.page_size, far.host_phys), (Perms::RWX, PageSize::Size2M, 0xb000_0000));
    tree.protect(&mut mem, 0x4000_0000, 0x4000_0000, Perms::READ | Perms::EXECUTE).unwrap();
    assert_eq!(tree.translate(&mut mem, 0x4020_0000).unwrap().perms, Perms::READ | Perms::EXECUTE);
    assert_eq!(tree.protect(&mut mem, 0x123, 0x1000, Perms::READ), Err(EptError::Misaligned));
}

fn bad_arguments_and_exhaustion_are_errors<F: Format>() {
    let (mut mem, mut tree) = setup::<F>();
    let m = |tree: &mut SecondLevel<F>, mem: &mut HeapTables, gpa, hpa, size, page| {
        tree.map(mem, &req(gpa, hpa, size, page, Perms::RWX, MemoryType::WriteBack))
    };
    assert_eq!(m(&mut tree, &mut mem, 0x1000, 0, 0x20_0000, PageSize::Size2M), Err(EptError::Misaligned));
    assert_eq!(m(&mut tree, &mut mem, 1 << 48, 0, 0x1000, PageSize::Size4K), Err(EptError::OutOfRange));
    mem.limit = Some(2);
    assert_eq!(m(&mut tree, &mut mem, 0, 0, 0x1000, PageSize::Size4K), Err(EptError::OutOfMemory));
    mem.limit = None;
    m(&mut tree, &mut mem, 0x20_0000, 0, 0x20_0000, PageSize::Size2M).unwrap();
    mem.limit = Some(mem.tables.len());
    assert_eq!(tree.unmap(&mut mem, 0x20_0000, 0x1000), Err(EptError::OutOfMemory), "splitting needs a table");
    assert!(tree.translate(&mut mem, 0x20_0000).is_some(), "a failed split changes nothing");
}

fn host_addresses_beyond_52_bits_are_refused<F: Format>() {
    let (mut mem, mut tree) = setup::<F>();
    let top = 1u64 << 52;
    let m = |tree: &mut SecondLevel<F>, mem: &mut HeapTables, hpa, size| {
        tree.map(mem, &req(0, hpa, size, PageSize::Size4K, Perms::RWX, MemoryType::WriteBack))
    };
    assert_eq!(m(&mut tree, &mut mem, top, 0x1000), Err(EptError::OutOfRange));
    assert_eq!(m(&mut tree, &mut mem, 1 << 63, 0x1000), Err(EptError::OutOfRange));
    assert_eq!(m(&mut tree, &mut mem, top - 0x1000, 0x2000), Err(EptError::OutOfRange), "the end counts too");
    assert_eq!(m(&mut tree, &mut mem, !0xfff, 0x2000), Err(EptError::OutOfRange), "no wrap");
    assert!(tree.translate(&mut mem, 0).is_none());
    m(&mut tree, &mut mem, top - 0x1000, 0x1000).unwrap();
    let t = tree.translate(&mut mem, 0xabc).unwrap();
    assert_eq!((t.host_phys, t.perms), (top - 0x1000 + 0xabc, Perms::RWX));
}

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

/// Against a model of 4 KiB pages: translate after map gives the mapping back,
/// unmapped stays unmapped, permissions are what was asked, and rights the
/// format cannot express are refused without changing anything.
fn matches_a_page_model<F: Format>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (mut mem, mut tree) = setup::<F>();
    let mut model: BTreeMap<u64, (u64, Perms)> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Map { gpa_2m, large, perms } => {
                let gpa = gpa_2m << 21;
                let hpa = 0x1_0000_0000 + gpa;
                let perms = Perms::from_bits_truncate(perms as u64);
                let (size, page) = if large { (0x20_0000, PageSize::Size2M) } else { (0x1000, PageSize::Size4K) };
                let free = (0..size / 0x1000).all(|p| !model.contains_key(&(gpa / 0x1000 + p)));
                let result = tree.map(&mut mem, &req(gpa, hpa, size, page, perms, MemoryType::WriteBack));
                if !F::supports(perms) {
                    prop_assert_eq!(result, Err(EptError::UnsupportedPerms));
                    continue;
                }
                prop_assert_eq!(result.is_ok(), free, "map of {:#x} ok iff free", gpa);
                if free {
                    for p in 0..size / 0x1000 {
                        model.insert(gpa / 0x1000 + p, (hpa + p * 0x1000, perms));
                    }
                }
            }
            Op::Unmap { gpa_4k, pages } => {
                let removed = (gpa_4k..gpa_4k + pages).filter(|p| model.remove(p).is_some()).count() as u64;
                prop_assert_eq!(tree.unmap(&mut mem, gpa_4k * 0x1000, pages * 0x1000), Ok(removed * 0x1000));
            }
            Op::Protect { gpa_4k, pages, perms } => {
                let perms = Perms::from_bits_truncate(perms as u64);
                let result = tree.protect(&mut mem, gpa_4k * 0x1000, pages * 0x1000, perms);
                if !F::supports(perms) {
                    prop_assert_eq!(result, Err(EptError::UnsupportedPerms));
                    continue;
                }
                prop_assert_eq!(result, Ok(()));
                for p in gpa_4k..gpa_4k + pages {
                    if let Some(entry) = model.get_mut(&p) {
                        entry.1 = perms;
                    }
                }
            }
        }
    }
    for page in 0..4096 + 700 {
        let t = tree.translate(&mut mem, page * 0x1000 + 0x10);
        match model.get(&page) {
            Some(&(hpa, perms)) => {
                let t = t.expect("a mapped page translates");
                prop_assert_eq!(t.host_phys, hpa + 0x10);
                prop_assert_eq!(t.perms, perms);
            }
            None => prop_assert!(t.is_none(), "page {:#x} should be unmapped", page),
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn ept_matches_a_page_model(ops in prop::collection::vec(op(), 1..40)) {
        matches_a_page_model::<EptFormat>(ops)?;
    }

    #[test]
    fn npt_matches_a_page_model(ops in prop::collection::vec(op(), 1..40)) {
        matches_a_page_model::<NptFormat>(ops)?;
    }
}
