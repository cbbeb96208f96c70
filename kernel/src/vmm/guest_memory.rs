//! A VM's RAM: host frames, one per guest page, mapped in the VM's own nested
//! page tables (EPT on VT-x, NPT on SVM) where `devices::layout::RamMap` puts
//! RAM (below the MMIO hole, the rest from 4 GiB).
//! Everything the VMM reads or writes in a guest goes through the bounds-checked
//! accessors here, which translate guest-physical addresses through that map.

use crate::memory::{self, FRAME_SIZE};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use devices::layout::RamMap;
use ept::{Ept, EptError, Mapping, MemoryType, Npt, PageSize, Perms, TableMemory};

/// The nested page-table format of the back end that runs the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedFormat {
    Ept,
    Npt,
}

/// A VM's nested page tables, in its back end's format: the ept crate builds
/// both from the same mappings.
enum NestedTables {
    Ept(Ept),
    Npt(Npt),
}

impl NestedTables {
    fn new(format: NestedFormat, tables: &mut HostTables) -> Option<NestedTables> {
        Some(match format {
            NestedFormat::Ept => NestedTables::Ept(Ept::new(tables).ok()?),
            NestedFormat::Npt => NestedTables::Npt(Npt::new(tables).ok()?),
        })
    }

    fn map(&mut self, tables: &mut HostTables, mapping: &Mapping) -> Result<(), EptError> {
        match self {
            NestedTables::Ept(t) => t.map(tables, mapping),
            NestedTables::Npt(t) => t.map(tables, mapping),
        }
    }
}

/// Nested page tables in host frames, remembered so they are freed with the VM.
struct HostTables {
    frames: Vec<u64>,
}

impl TableMemory for HostTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let frame = memory::alloc_frame()?;
        self.frames.push(frame);
        Some(frame)
    }

    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` is one of our zeroed table frames (the ept crate only asks
        // for tables it got from alloc_table), reachable through the physical mapping.
        unsafe { &mut *(memory::phys_to_virt(phys) as *mut [u64; 512]) }
    }

    fn free_table(&mut self, phys: u64) {
        self.frames.retain(|&f| f != phys);
        memory::free_frame(phys);
    }
}

/// How many VMs' memories exist: a VM's memory goes back when the last core
/// lets go of the VM, which can be a moment after its end is reported.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// VM memories not yet given back to the host.
pub fn live() -> usize {
    LIVE.load(Ordering::Acquire)
}

pub struct GuestMemory {
    map: RamMap,
    /// Host frame of each page of RAM, by offset in RAM (low RAM, then high).
    frames: Vec<u64>,
    /// What was allocated, for freeing: 2 MiB chunks and single frames.
    large_chunks: Vec<u64>,
    single_frames: Vec<u64>,
    tables: HostTables,
    nested: NestedTables,
    /// APIC virtualisation: the frame mapped where the guest's local APIC is.
    apic_access_page: Option<u64>,
    /// A page the guest reads a device's registers from without an exit
    /// (the IOAPIC's window), kept by the device model.
    device_window_page: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    pub guest_phys: u64,
}

impl GuestMemory {
    /// `bytes` of zeroed RAM where the memory map puts it, or None when the host
    /// is out of memory (anything already allocated is given back). Whole 2 MiB
    /// pieces come from contiguous host memory and are mapped with 2 MiB EPT
    /// pages; the rest page by page.
    pub fn new(bytes: u64, format: NestedFormat) -> Option<Self> {
        let map = RamMap::new(bytes.checked_next_multiple_of(FRAME_SIZE)?)?;
        let mut tables = HostTables { frames: Vec::new() };
        let nested = NestedTables::new(format, &mut tables)?;
        let mut memory = GuestMemory {
            map,
            frames: Vec::new(),
            large_chunks: Vec::new(),
            single_frames: Vec::new(),
            tables,
            nested,
            apic_access_page: None,
            device_window_page: None,
        };
        LIVE.fetch_add(1, Ordering::AcqRel);
        // One entry per page (8 MiB for 4 GiB, half the kernel heap): reserved
        // exactly and up front, so a large VM fails cleanly here instead of the
        // heap running out while the list grows.
        let pages = usize::try_from(map.size() / FRAME_SIZE).ok()?;
        memory.frames.try_reserve_exact(pages).ok()?;
        for range in map.ranges() {
            memory.add_ram(range.guest_phys, range.size)?;
        }
        Some(memory)
    }

    /// Backs and maps `size` bytes from `start`, appending their frames (the
    /// map's ranges come in RAM-offset order and are whole pages).
    fn add_ram(&mut self, start: u64, size: u64) -> Option<()> {
        const LARGE: u64 = 2 * 1024 * 1024;
        let mut done = 0;
        while done < size {
            let guest_phys = start + done;
            let whole_chunk_left = guest_phys.is_multiple_of(LARGE) && size - done >= LARGE;
            let (host_phys, chunk, page_size) = match whole_chunk_left.then(memory::alloc_2m).flatten() {
                Some(host) => {
                    self.large_chunks.push(host);
                    (host, LARGE, PageSize::Size2M)
                }
                None => {
                    let frame = memory::alloc_frame()?;
                    self.single_frames.push(frame);
                    (frame, FRAME_SIZE, PageSize::Size4K)
                }
            };
            self.frames.extend((0..chunk / FRAME_SIZE).map(|i| host_phys + i * FRAME_SIZE));
            let mapping = Mapping {
                guest_phys,
                host_phys,
                size: chunk,
                page_size,
                perms: Perms::RWX,
                memory_type: MemoryType::WriteBack,
            };
            self.nested.map(&mut self.tables, &mapping).ok()?;
            done += chunk;
        }
        Some(())
    }

    /// Where the RAM lies in guest-physical space (and how much there is).
    pub fn map(&self) -> &RamMap {
        &self.map
    }

    /// The root of the nested page tables as the back end's control
    /// structure takes it: the EPT pointer (VMCS) or nCR3 (VMCB).
    pub fn nested_root(&self) -> u64 {
        match &self.nested {
            NestedTables::Ept(t) => t.eptp(),
            NestedTables::Npt(t) => t.ncr3(),
        }
    }

    /// For APIC virtualisation: maps a frame at the guest's local APIC page
    /// (`guest_phys`). The CPU never lets the guest reach the frame itself; an
    /// access there is virtualised or exits. Returns the frame, for the VMCS.
    pub fn map_apic_access_page(&mut self, guest_phys: u64) -> Option<u64> {
        if let Some(frame) = self.apic_access_page {
            return Some(frame);
        }
        let frame = self.map_own_frame(guest_phys, Perms::READ | Perms::WRITE, MemoryType::Uncacheable)?;
        self.apic_access_page = Some(frame);
        Some(frame)
    }

    /// Maps a zeroed frame read-only at `guest_phys` (a device's page whose
    /// reads need no exit; writes still exit) and returns it (the one mapped
    /// before, if any), or None when the host is out of memory.
    pub fn map_device_window_page(&mut self, guest_phys: u64) -> Option<u64> {
        if let Some(frame) = self.device_window_page {
            return Some(frame);
        }
        let frame = self.map_own_frame(guest_phys, Perms::READ, MemoryType::WriteBack)?;
        self.device_window_page = Some(frame);
        Some(frame)
    }

    /// A fresh zeroed frame mapped at `guest_phys` (4 KiB), or None (with
    /// nothing kept) when the host has no frame or table for it. The caller
    /// keeps it, for `drop` to free.
    fn map_own_frame(&mut self, guest_phys: u64, perms: Perms, memory_type: MemoryType) -> Option<u64> {
        let frame = memory::alloc_frame()?;
        memory::zero_frames(&[frame], 0, FRAME_SIZE as usize);
        let mapping =
            Mapping { guest_phys, host_phys: frame, size: FRAME_SIZE, page_size: PageSize::Size4K, perms, memory_type };
        if self.nested.map(&mut self.tables, &mapping).is_err() {
            memory::free_frame(frame);
            return None;
        }
        Some(frame)
    }

    pub fn apic_access_page(&self) -> Option<u64> {
        self.apic_access_page
    }

    /// Host memory used beyond the guest's RAM (EPT tables, the APIC-access
    /// and device-window pages).
    pub fn overhead_bytes(&self) -> u64 {
        let pages = [self.apic_access_page, self.device_window_page].iter().flatten().count() as u64;
        (self.tables.frames.len() as u64 + pages) * FRAME_SIZE
    }

    /// The offset in RAM of the `len` bytes at `guest_phys`: an access touching
    /// the MMIO hole or anything past RAM fails whole, nothing is done in part.
    fn offset(&self, guest_phys: u64, len: usize) -> Result<u64, OutOfRange> {
        self.map.offset_of(guest_phys, len as u64).ok_or(OutOfRange { guest_phys })
    }

    /// Where the `len` bytes at `guest_phys` are in the host's physical
    /// mapping, when they are RAM within one host frame (a page-table entry,
    /// an instruction, most device DMA): one pointer instead of a walk over
    /// the frame list. None sends the caller to the general path, which
    /// checks the range again and copies frame by frame.
    #[inline]
    fn within_one_frame(&self, guest_phys: u64, len: usize) -> Option<*mut u8> {
        let (page, in_page) = self.map.within_one_page(guest_phys, len as u64)?;
        let frame = *self.frames.get(usize::try_from(page).ok()?)?;
        Some(memory::phys_to_virt(frame + in_page) as *mut u8)
    }

    pub fn read(&self, guest_phys: u64, out: &mut [u8]) -> Result<(), OutOfRange> {
        if let Some(host) = self.within_one_frame(guest_phys, out.len()) {
            // SAFETY: `out.len()` bytes of one of this VM's frames, which it
            // keeps allocated; a raw copy, as `read_frames` makes (the
            // guest's vCPUs may be writing them).
            unsafe { core::ptr::copy_nonoverlapping(host, out.as_mut_ptr(), out.len()) };
            return Ok(());
        }
        let offset = self.offset(guest_phys, out.len())?;
        memory::read_frames(&self.frames, offset, out);
        Ok(())
    }

    /// Through `&self`: every vCPU of the VM writes its RAM (device DMA,
    /// emulated instructions) as its guest code does, without a lock; the
    /// frames are reached through raw copies, never Rust references.
    pub fn write(&self, guest_phys: u64, data: &[u8]) -> Result<(), OutOfRange> {
        if let Some(host) = self.within_one_frame(guest_phys, data.len()) {
            // SAFETY: as in `read`.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), host, data.len()) };
            return Ok(());
        }
        let offset = self.offset(guest_phys, data.len())?;
        memory::write_frames(&self.frames, offset, data);
        Ok(())
    }

    pub fn fill_zero(&mut self, guest_phys: u64, len: u64) -> Result<(), OutOfRange> {
        let len = usize::try_from(len).map_err(|_| OutOfRange { guest_phys })?;
        let offset = self.offset(guest_phys, len)?;
        memory::zero_frames(&self.frames, offset, len);
        Ok(())
    }

    /// A little-endian u64 (a page-table entry), read whole when it lies
    /// in one frame, as the entries of a page walk always do.
    #[inline]
    pub fn read_u64(&self, guest_phys: u64) -> Result<u64, OutOfRange> {
        if let Some(host) = self.within_one_frame(guest_phys, 8) {
            // SAFETY: 8 bytes of one of this VM's frames (as in `read`).
            return Ok(u64::from_le(unsafe { host.cast::<u64>().read_unaligned() }));
        }
        let mut bytes = [0; 8];
        self.read(guest_phys, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// A little-endian u32 (a 32-bit paging entry), as `read_u64`.
    #[inline]
    pub fn read_u32(&self, guest_phys: u64) -> Result<u32, OutOfRange> {
        if let Some(host) = self.within_one_frame(guest_phys, 4) {
            // SAFETY: 4 bytes of one of this VM's frames (as in `read`).
            return Ok(u32::from_le(unsafe { host.cast::<u32>().read_unaligned() }));
        }
        let mut bytes = [0; 4];
        self.read(guest_phys, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        let chunk_frames = self.large_chunks.iter().flat_map(|&c| (0..512).map(move |i| c + i * FRAME_SIZE));
        let pages = self.apic_access_page.iter().chain(&self.device_window_page);
        let others = self.single_frames.iter().chain(&self.tables.frames).chain(pages).copied();
        for frame in chunk_frames.chain(others) {
            memory::free_frame(frame);
        }
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A vCPU's handle on its VM's RAM, as devices and the exit handlers use it
/// (their `GuestRam` writes through `&mut`, which each vCPU has of its own
/// handle while the RAM itself is shared).
pub struct RamHandle<'a>(pub &'a GuestMemory);

impl devices::GuestRam for RamHandle<'_> {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), devices::NotRam> {
        self.0.read(address, buf).map_err(|_| devices::NotRam)
    }
    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), devices::NotRam> {
        self.0.write(address, data).map_err(|_| devices::NotRam)
    }
}

/// The guest's page tables are read from its RAM (`arch::paging` walks them).
impl arch::paging::PhysicalMemory for RamHandle<'_> {
    fn read_u32(&self, physical: u64) -> Option<u32> {
        self.0.read_u32(physical).ok()
    }

    fn read_u64(&self, physical: u64) -> Option<u64> {
        self.0.read_u64(physical).ok()
    }
}
