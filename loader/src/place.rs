//! Where boot data goes: around a kernel's segments (its bytes and its zero
//! fill) and around each other, in windows of guest RAM a boot protocol
//! allows, a page at a time. Multiboot and PVH kernels may be linked
//! anywhere, so no fixed address is safe for every one of them; and when
//! nothing fits, the refusal names what takes up the room.
//!
//! The sizes come from the VM's description and the addresses from the
//! image, so the arithmetic is checked.

use crate::image::{ImageError, Segment};
use alloc::vec::Vec;
use core::fmt;

pub(crate) const PAGE: u64 = 0x1000;

/// What occupies guest memory, as a refusal names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootItem {
    KernelBytes,
    KernelZeroFill,
    /// Counted from 0; shown counted from 1.
    Module(usize),
    /// The information block: the structure, memory map, module list and
    /// strings, kept together.
    Information,
    /// PVH: the start info with its module list, memory map and command
    /// line, kept together.
    StartInfo,
    /// PVH: the initrd (the kernel's first and only module).
    Initrd,
    /// Linux's 64-bit boot protocol: the zero page and the command line.
    ZeroPage,
}

impl fmt::Display for BootItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootItem::KernelBytes => write!(f, "the kernel's bytes"),
            BootItem::KernelZeroFill => write!(f, "the kernel's zero fill (bss)"),
            BootItem::Module(i) => write!(f, "module {}", i.saturating_add(1)),
            BootItem::Information => write!(f, "the Multiboot information"),
            BootItem::StartInfo => write!(f, "the PVH start info (with memory map and command line)"),
            BootItem::Initrd => write!(f, "the initrd"),
            BootItem::ZeroPage => write!(f, "the zero page (boot_params) and command line"),
        }
    }
}

/// Guest-physical bytes `start..end` taken by `by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub start: u64,
    pub end: u64,
    pub by: BootItem,
}

/// What a kernel's `segments` take, each split into its bytes and its zero
/// fill, once each is known to end at or below `memory`. The kernel must fit
/// before its boot data is placed: otherwise the boot data would be refused
/// for want of room when the kernel itself is what does not fit.
pub(crate) fn kernel_taken(segments: &[Segment<'_>], memory: u64) -> Result<Vec<Taken>, ImageError> {
    let mut taken = Vec::with_capacity(segments.len().saturating_mul(2));
    for s in segments {
        let end = s.checked_end().filter(|&end| end <= memory);
        let end = end.ok_or(ImageError::DoesNotFit { start: s.guest_phys, end: s.end(), memory })?;
        // At or below `end`, so no overflow.
        let data_end = s.guest_phys + s.data.bytes().len() as u64;
        taken.push(Taken { start: s.guest_phys, end: data_end, by: BootItem::KernelBytes });
        taken.push(Taken { start: data_end, end, by: BootItem::KernelZeroFill });
    }
    taken.retain(|t| t.end > t.start);
    Ok(taken)
}

/// Why `what` did not fit: the areas it may go in and what takes them up.
pub(crate) fn describe_no_room(
    f: &mut fmt::Formatter<'_>,
    what: &BootItem,
    size: u64,
    areas: &[(u64, u64)],
    taken: &[Taken],
) -> fmt::Result {
    write!(f, "no room for {what} ({size:#x} bytes, page-aligned) in guest RAM ")?;
    for (i, (start, end)) in areas.iter().enumerate() {
        let joint = match i {
            0 => "",
            _ if i + 1 == areas.len() => " or ",
            _ => ", ",
        };
        write!(f, "{joint}{start:#x}..{end:#x}")?;
    }
    if areas.is_empty() {
        write!(f, "(the VM has none below 4 GiB)")?;
    }
    if taken.is_empty() {
        return write!(f, ": too small");
    }
    write!(f, ": taken by ")?;
    const SHOWN: usize = 6;
    for (i, t) in taken.iter().take(SHOWN).enumerate() {
        write!(f, "{}{} {:#x}..{:#x}", if i == 0 { "" } else { ", " }, t.by, t.start, t.end)?;
    }
    if taken.len() > SHOWN {
        write!(f, " and {} more", taken.len() - SHOWN)?;
    }
    Ok(())
}

/// Which end of a window an item goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The lowest free address: boot data that belongs near the kernel.
    Low,
    /// The highest free address: an initrd, kept out of the way of the
    /// memory right above the kernel, as Linux boot loaders place it.
    High,
}

/// A multiple of a page where `size` bytes fit in one of `windows` (tried in
/// order, each cut at `top`) without touching anything `taken`, at the `end`
/// of the first window that has room; records it there as `by`. An empty item
/// still gets a byte of its own, so no two items share an address.
pub(crate) fn place(
    taken: &mut Vec<Taken>,
    size: u64,
    windows: &[(u64, u64)],
    top: u64,
    end: End,
    by: BootItem,
) -> Result<u64, ImageError> {
    let size = size.max(1);
    taken.sort_unstable_by_key(|t| t.start);
    for &(low, high) in windows {
        let high = high.min(top);
        let found = match end {
            End::Low => lowest_fit(taken, size, low, high),
            End::High => highest_fit(taken, size, low, high),
        };
        if let Some(at) = found {
            // Inside the window, so below `top`: no overflow.
            taken.push(Taken { start: at, end: at + size, by });
            return Ok(at);
        }
    }
    let areas = merged(windows.iter().map(|&(low, high)| (low, high.min(top))).filter(|(low, high)| low < high));
    let in_areas = |t: &&Taken| areas.iter().any(|&(low, high)| t.start < high && low < t.end);
    let colliding: Vec<Taken> = taken.iter().filter(in_areas).copied().collect();
    Err(ImageError::NoRoom { what: by, size, areas, taken: colliding })
}

/// The lowest page-aligned `at` in `low..high` where `size` bytes touch
/// nothing in `taken` (sorted by start).
fn lowest_fit(taken: &[Taken], size: u64, low: u64, high: u64) -> Option<u64> {
    let mut at = low.checked_next_multiple_of(PAGE)?;
    // Sorted by start: once an item starts at or after the end of the
    // candidate, none later can overlap it.
    for t in taken {
        let end = at.checked_add(size).filter(|&end| end <= high)?;
        if t.end <= at {
            continue;
        }
        if t.start >= end {
            break;
        }
        at = t.end.checked_next_multiple_of(PAGE)?;
    }
    at.checked_add(size).filter(|&end| end <= high).map(|_| at)
}

/// The highest page-aligned `at` in `low..high` where `size` bytes touch
/// nothing in `taken`.
fn highest_fit(taken: &[Taken], size: u64, low: u64, high: u64) -> Option<u64> {
    let mut limit = high;
    // Each round moves `limit` below the start of an item in the way, so
    // there are at most as many rounds as items, plus one.
    loop {
        let at = limit.checked_sub(size)? & !(PAGE - 1);
        if at < low {
            return None;
        }
        // `at + size <= limit`, so no overflow.
        let end = at + size;
        match taken.iter().filter(|t| t.start < end && at < t.end).map(|t| t.start).min() {
            None => return Some(at),
            Some(blocked) => limit = blocked,
        }
    }
}

/// The union of `ranges`, sorted, with touching ranges joined.
fn merged(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = ranges.collect();
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match out.last_mut() {
            Some(last) if low <= last.1 => last.1 = last.1.max(high),
            _ => out.push((low, high)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(start: u64, end: u64) -> Taken {
        Taken { start, end, by: BootItem::KernelBytes }
    }

    #[test]
    fn the_low_end_takes_the_first_gap_and_the_high_end_the_last() {
        let mut taken = vec![item(0x1000, 0x2800), item(0x5000, 0x6000)];
        let low = place(&mut taken, 0x1000, &[(0x1000, 0x10000)], u64::MAX, End::Low, BootItem::Initrd).unwrap();
        assert_eq!(low, 0x3000);
        let high = place(&mut taken, 0x1000, &[(0, 0x10000)], u64::MAX, End::High, BootItem::Initrd).unwrap();
        assert_eq!(high, 0xf000);
        // Cut at `top`, below an item at the top, and with an odd size.
        let mut taken = vec![item(0xe000, 0x10000)];
        assert_eq!(place(&mut taken, 0x1800, &[(0, 0x10000)], 0xf000, End::High, BootItem::Initrd), Ok(0xc000));
        // Nothing between the items: the refusal names them.
        let mut taken = vec![item(0x1000, 0x2000), item(0x2800, 0x4000)];
        let err = place(&mut taken, 0x1000, &[(0x1000, 0x4000)], u64::MAX, End::High, BootItem::Initrd);
        let Err(ImageError::NoRoom { areas, taken, .. }) = err else { panic!("{err:?}") };
        assert_eq!((areas, taken.len()), (vec![(0x1000, 0x4000)], 2));
    }

    #[test]
    fn sizes_near_the_top_of_the_address_space_do_not_wrap() {
        let mut taken = vec![item(0x1000, 0x2000)];
        for end in [End::Low, End::High] {
            let err = place(&mut taken, u64::MAX, &[(0, u64::MAX)], u64::MAX, end, BootItem::Initrd);
            assert!(matches!(err, Err(ImageError::NoRoom { .. })), "{err:?}");
        }
        assert_eq!(
            place(&mut taken, 1, &[(u64::MAX - 0x1800, u64::MAX)], u64::MAX, End::High, BootItem::Initrd),
            Ok(u64::MAX - 0xfff)
        );
    }
}
