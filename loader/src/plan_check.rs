//! What every load plan the loaders accept must satisfy, checked
//! independently of the loaders' own checks: by the hostile-input tests here
//! and by the fuzz targets (feature `plan-check`).

use crate::image::{LoadPlan, SegmentData};
use alloc::vec::Vec;

/// Whether `part` is a piece of `whole` (an empty slice is anywhere).
pub fn inside(part: &[u8], whole: &[u8]) -> bool {
    let (part_range, whole_range) = (part.as_ptr_range(), whole.as_ptr_range());
    part.is_empty() || (whole_range.start <= part_range.start && part_range.end <= whole_range.end)
}

/// What every accepted plan must satisfy, checked here independently of the
/// loader's own checks: each segment inside `memory`, without wrapping; image
/// bytes taken from one of `inputs`; no two segments overlapping; the entry
/// point in a segment.
pub fn check_plan(plan: &LoadPlan<'_>, memory: u64, inputs: &[&[u8]]) {
    let mut ranges = Vec::new();
    for s in &plan.segments {
        let len = s.data.bytes().len() as u64;
        let end = s.guest_phys.checked_add(len).and_then(|e| e.checked_add(s.zero_fill));
        let end = end.unwrap_or_else(|| panic!("segment at {:#x} wraps: {len:#x} + {:#x}", s.guest_phys, s.zero_fill));
        assert!(end <= memory, "segment {:#x}..{end:#x} outside {memory:#x} bytes of memory", s.guest_phys);
        if let SegmentData::Borrowed(data) = &s.data {
            assert!(
                inputs.iter().any(|input| inside(data, input)),
                "segment at {:#x} not from the inputs",
                s.guest_phys
            );
        }
        if end > s.guest_phys {
            ranges.push((s.guest_phys, end));
        }
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "segments {:x?} and {:x?} overlap", pair[0], pair[1]);
    }
    assert!(ranges.iter().any(|r| (r.0..r.1).contains(&plan.entry)), "entry {:#x} outside the segments", plan.entry);
}

/// A 64-bit boot of a vmlinux (`linux::plan_vmlinux`): long mode, RSI at
/// an owned block of the zero page (boot flag, "HdrS", loader 0xff) with
/// `cmdline` and its NUL right after it, below 4 GiB; the initrd fields
/// point at a page-aligned segment of `initrd`'s bytes (empty: none).
pub fn check_zero_page(plan: &LoadPlan<'_>, cmdline: &str, initrd: Option<&[u8]>) {
    use crate::image::EntryMode;
    assert_eq!((plan.mode, plan.rax, plan.rbx), (EntryMode::Long, 0, 0));
    let at_rsi = |s: &&crate::image::Segment| s.guest_phys == plan.rsi && matches!(s.data, SegmentData::Owned(_));
    let block = plan.segments.iter().find(at_rsi).expect("a zero page at RSI");
    assert!(plan.rsi >= 0x1000 && block.end() <= 1 << 32, "zero page at {:#x}", plan.rsi);
    let block = block.data.bytes();
    assert_eq!(block.len(), 4096 + cmdline.len() + 1, "the zero page, then the command line");
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(block[at..at + 4].try_into().unwrap()));
    assert_eq!((&block[0x1fe..0x200], &block[0x202..0x206], block[0x210]), (&[0x55, 0xaa][..], &b"HdrS"[..], 0xff));
    assert_eq!(u32_at(0x228) | u32_at(0xc8) << 32, plan.rsi + 4096, "the command line's address");
    assert_eq!(&block[4096..], [cmdline.as_bytes(), &[0]].concat());
    let (start, size) = (u32_at(0x218) | u32_at(0xc0) << 32, u32_at(0x21c) | u32_at(0xc4) << 32);
    match initrd.filter(|i| !i.is_empty()) {
        Some(initrd) => {
            assert!(start.is_multiple_of(0x1000) && size == initrd.len() as u64, "initrd {start:#x}+{size:#x}");
            assert!(start + size <= 1 << 32, "the initrd past 4 GiB");
            let segment = plan.segments.iter().find(|s| s.guest_phys == start && !s.data.bytes().is_empty());
            assert_eq!(segment.expect("the initrd's segment").data.bytes(), initrd);
        }
        None => assert_eq!((start, size), (0, 0), "no initrd"),
    }
}
