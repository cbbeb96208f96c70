//! Second-level page tables: the 4-level tree that translates a guest's
//! physical addresses to host-physical ones with read/write/execute rights and
//! a memory type. The walking, allocating, splitting and freeing live once, in
//! [`SecondLevel`]; what an entry's bits mean is a [`Format`]:
//!
//! - [`EptFormat`] / [`Ept`]: Intel's extended page tables, for VT-x.
//! - [`NptFormat`] / [`Npt`]: AMD's nested page tables, for SVM.
//!
//! The crate is still called `ept` because the kernel depends on it by that
//! name; it covers both vendors. The tree is reached through [`TableMemory`],
//! so the kernel backs it with real frames and the host tests back it with
//! plain memory.
#![cfg_attr(not(test), no_std)]

use bitflags::bitflags;

mod ept;
mod format;
mod npt;
mod tables;
#[cfg(test)]
mod tests;

pub use ept::{Ept, EptFormat};
pub use format::Format;
pub use npt::{Npt, NptFormat};
pub use tables::SecondLevel;

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

/// Memory type of a mapping. The values are EPT's encoding; each [`Format`]
/// encodes them its own way.
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
    pub(crate) const fn level(self) -> usize {
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
    /// The guest address is beyond what a 4-level tree can translate (48 bits),
    /// or the host address beyond what an entry can hold (52 bits).
    OutOfRange,
    /// The format cannot grant exactly these rights (see [`Format::supports`]).
    UnsupportedPerms,
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
