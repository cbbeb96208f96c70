//! The one thing EPT and NPT disagree on: what the bits of an entry mean.

use crate::{MemoryType, Perms};

/// The encoding of one kind of second-level table. [`crate::SecondLevel`] walks,
/// allocates, splits and frees tables without looking at a single entry bit;
/// everything it needs to know about an entry it asks here. Levels count from
/// the leaves: 0 is the 4 KiB page table, 3 the root.
pub trait Format {
    /// A non-leaf entry pointing at the table `next`. It grants every access so
    /// that the leaves alone decide (both walks intersect the rights on the way).
    fn table_entry(next: u64) -> u64;

    /// A leaf at `level` mapping the page at `host_phys`, which is aligned to
    /// that level's page size; `perms` has passed [`Format::supports`].
    fn leaf(host_phys: u64, perms: Perms, memory_type: MemoryType, level: usize) -> u64;

    /// Whether the walk continues through (or stops successfully at) `entry`.
    fn is_present(entry: u64) -> bool;

    /// Whether a present `entry` at `level` maps a page rather than a table.
    fn is_leaf(entry: u64, level: usize) -> bool;

    /// The address bits of a present entry: the next table, or the mapped page
    /// (the caller masks to the page size; bits below it are not address bits
    /// in a large leaf).
    fn address(entry: u64) -> u64;

    /// The rights a leaf grants, as [`Format::leaf`] was given them.
    fn perms(entry: u64) -> Perms;

    /// The memory type of a leaf at `level`, as [`Format::leaf`] was given it.
    fn memory_type(entry: u64, level: usize) -> MemoryType;

    /// Whether a leaf can grant exactly `perms`. A combination the hardware
    /// cannot express is refused rather than widened to one it can.
    fn supports(perms: Perms) -> bool;

    /// What the CPU is given to find a tree whose root table is at `root`.
    fn root_pointer(root: u64) -> u64;
}
