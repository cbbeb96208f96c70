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
