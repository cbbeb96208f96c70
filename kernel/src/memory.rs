//! Host memory: a bitmap allocator over the physical frames the memory map calls
//! usable, the host page tables (the bootloader's, extended through an
//! `OffsetPageTable`), the kernel heap and guarded stacks.

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use spin::Mutex;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

pub const FRAME_SIZE: u64 = 4096;
/// General allocations stay above 1 MiB: low memory is kept for the AP start-up page.
const LOW_MEMORY_END: u64 = 0x10_0000;

const HEAP_START: u64 = 0xffff_c000_0000_0000;
pub const HEAP_SIZE: u64 = 16 * 1024 * 1024;
/// Kernel stacks for APs, each below an unmapped guard page.
const STACK_AREA_START: u64 = 0xffff_c800_0000_0000;
const STACK_SLOT: u64 = 1024 * 1024;

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

static PHYS_OFFSET: spin::Once<u64> = spin::Once::new();

/// The virtual address where physical address `phys` is mapped. The bootloader
/// maps all memory, and at least the first 4 GiB (MMIO included), at one offset.
pub fn phys_to_virt(phys: u64) -> u64 {
    phys + PHYS_OFFSET.get().expect("memory not initialised")
}

/// One bit per frame, 1 = free.
pub struct FrameBitmap {
    bits: &'static mut [u64],
    next_hint: usize,
    free: usize,
}

impl FrameBitmap {
    fn is_free(&self, frame: usize) -> bool {
        self.bits[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: usize, free: bool) {
        let word = &mut self.bits[frame / 64];
        let mask = 1 << (frame % 64);
        if free && *word & mask == 0 {
            *word |= mask;
            self.free += 1;
        } else if !free && *word & mask != 0 {
            *word &= !mask;
            self.free -= 1;
        }
    }

    fn take_in(&mut self, first: usize, end: usize) -> Option<u64> {
        let end = end.min(self.bits.len() * 64);
        let mut frame = first;
        while frame < end {
            let word = self.bits[frame / 64];
            if word == 0 {
                frame = (frame / 64 + 1) * 64;
                continue;
            }
            if self.is_free(frame) {
                self.set(frame, false);
                return Some(frame as u64 * FRAME_SIZE);
            }
            frame += 1;
        }
        None
    }

    /// `count` free frames in a row starting at a multiple of `align` frames.
    fn take_run(&mut self, count: usize, align: usize) -> Option<u64> {
        let low = (LOW_MEMORY_END / FRAME_SIZE) as usize;
        let total = self.bits.len() * 64;
        let mut start = low.next_multiple_of(align);
        while start + count <= total {
            match (start..start + count).find(|&f| !self.is_free(f)) {
                None => {
                    for f in start..start + count {
                        self.set(f, false);
                    }
                    return Some(start as u64 * FRAME_SIZE);
                }
                Some(used) => start = (used + 1).next_multiple_of(align),
            }
        }
        None
    }

    fn alloc(&mut self) -> Option<u64> {
        let low = (LOW_MEMORY_END / FRAME_SIZE) as usize;
        let start = self.next_hint.max(low);
        let found = self.take_in(start, usize::MAX).or_else(|| self.take_in(low, start))?;
        self.next_hint = (found / FRAME_SIZE) as usize + 1;
        Some(found)
    }
}

pub static FRAMES: Mutex<Option<FrameBitmap>> = Mutex::new(None);
static PAGE_TABLES: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

/// A zeroed 4 KiB frame above 1 MiB.
pub fn alloc_frame() -> Option<u64> {
    let frame = FRAMES.lock().as_mut()?.alloc()?;
    zero_frame(frame);
    Some(frame)
}

/// A zeroed 4 KiB frame from `[min, max)`, for memory with address constraints
/// (real-mode start-up code, 32-bit page-table roots).
pub fn alloc_frame_in(min: u64, max: u64) -> Option<u64> {
    let frame = FRAMES.lock().as_mut()?.take_in((min / FRAME_SIZE) as usize, (max / FRAME_SIZE) as usize)?;
    zero_frame(frame);
    Some(frame)
}

/// 2 MiB of zeroed, physically contiguous, 2 MiB-aligned memory, for guest RAM
/// that EPT maps with large pages. None when memory is too fragmented.
pub fn alloc_2m() -> Option<u64> {
    alloc_run(512, 512)
}

/// `count` zeroed, physically contiguous frames starting at a multiple of
/// `align` frames (guest RAM in large pages; SVM's I/O and MSR permission
/// maps). Freed frame by frame.
pub fn alloc_run(count: usize, align: usize) -> Option<u64> {
    let start = FRAMES.lock().as_mut()?.take_run(count, align)?;
    // SAFETY: the run was just taken from the allocator; the physical mapping covers it.
    unsafe { core::ptr::write_bytes(phys_to_virt(start) as *mut u8, 0, count * FRAME_SIZE as usize) };
    Some(start)
}

/// Memory made of frames, `frames[i]` holding bytes `i * FRAME_SIZE ..` (guest
/// RAM, disks): the one place that copies in and out of it. A range past the
/// last frame panics (callers check ranges first).
fn frame_pieces(frames: &[u64], offset: u64, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        let in_frame = (at % FRAME_SIZE) as usize;
        let n = (FRAME_SIZE as usize - in_frame).min(len - done);
        let host = phys_to_virt(frames[(at / FRAME_SIZE) as usize]) + in_frame as u64;
        f(host as *mut u8, done, n);
        done += n;
    }
}

pub fn read_frames(frames: &[u64], offset: u64, out: &mut [u8]) {
    let len = out.len();
    // SAFETY: each piece lies inside one frame of the list, which its owner keeps
    // allocated; the physical mapping covers it.
    frame_pieces(frames, offset, len, |host, at, n| unsafe {
        core::ptr::copy_nonoverlapping(host, out[at..].as_mut_ptr(), n)
    });
}

pub fn write_frames(frames: &[u64], offset: u64, data: &[u8]) {
    // SAFETY: as in `read_frames`.
    frame_pieces(frames, offset, data.len(), |host, at, n| unsafe {
        core::ptr::copy_nonoverlapping(data[at..].as_ptr(), host, n)
    });
}

pub fn zero_frames(frames: &[u64], offset: u64, len: usize) {
    // SAFETY: as in `read_frames`.
    frame_pieces(frames, offset, len, |host, _, n| unsafe { core::ptr::write_bytes(host, 0, n) });
}

pub fn free_frame(frame: u64) {
    if let Some(bitmap) = FRAMES.lock().as_mut() {
        bitmap.set((frame / FRAME_SIZE) as usize, true);
    }
}

/// Frames free once the kernel had set itself up: the host's memory for VMs.
static BOOT_FREE_FRAMES: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

pub fn boot_free_frame_count() -> usize {
    BOOT_FREE_FRAMES.load(core::sync::atomic::Ordering::Relaxed)
}

pub fn free_frame_count() -> usize {
    FRAMES.lock().as_ref().map_or(0, |b| b.free)
}

fn zero_frame(frame: u64) {
    // SAFETY: the frame was just taken from the allocator, so nothing else uses it,
    // and the physical mapping covers all RAM.
    unsafe { core::ptr::write_bytes(phys_to_virt(frame) as *mut u8, 0, FRAME_SIZE as usize) };
}

struct Frames;
// SAFETY: hands out frames nobody else owns.
unsafe impl FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        alloc_frame().map(|f| PhysFrame::containing_address(PhysAddr::new(f)))
    }
}

/// What the memory map said, for the boot self-check.
#[derive(Debug, Clone, Copy)]
pub struct MapSummary {
    pub regions: usize,
    pub usable_regions: usize,
    pub usable_bytes: u64,
    pub highest_usable: u64,
    /// Regions sorted by start and none overlapping.
    pub ordered_and_disjoint: bool,
}

pub fn summarize(regions: &MemoryRegions) -> MapSummary {
    let mut summary = MapSummary {
        regions: regions.len(),
        usable_regions: 0,
        usable_bytes: 0,
        highest_usable: 0,
        ordered_and_disjoint: true,
    };
    let mut previous_end = 0;
    let mut sorted: [(u64, u64); 256] = [(0, 0); 256];
    let n = regions.len().min(256);
    for (slot, r) in sorted.iter_mut().zip(regions.iter()) {
        *slot = (r.start, r.end);
    }
    sorted[..n].sort_unstable();
    for &(start, end) in &sorted[..n] {
        if start < previous_end || end < start {
            summary.ordered_and_disjoint = false;
        }
        previous_end = end;
    }
    for r in regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable) {
        summary.usable_regions += 1;
        summary.usable_bytes += r.end - r.start;
        summary.highest_usable = summary.highest_usable.max(r.end);
    }
    summary
}

/// Sets up frames, page tables and the heap.
pub fn init(phys_offset: u64, regions: &MemoryRegions) -> MapSummary {
    PHYS_OFFSET.call_once(|| phys_offset);
    let summary = summarize(regions);

    // The bitmap itself goes into the first usable region above 1 MiB big enough.
    let frame_count = (summary.highest_usable / FRAME_SIZE) as usize;
    let words = frame_count.div_ceil(64);
    let bitmap_bytes = (words * 8) as u64;
    let home = regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| (r.start.max(LOW_MEMORY_END).next_multiple_of(FRAME_SIZE), r.end))
        .find(|&(start, end)| end > start && end - start >= bitmap_bytes)
        .map(|(start, _)| start)
        .expect("no usable memory region can hold the frame bitmap");
    // SAFETY: `home` is usable RAM nobody else owns yet; the physical mapping covers it.
    let bits = unsafe { core::slice::from_raw_parts_mut(phys_to_virt(home) as *mut u64, words) };
    bits.fill(0);
    let mut bitmap = FrameBitmap { bits, next_hint: 0, free: 0 };
    for r in regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable) {
        let first = r.start.div_ceil(FRAME_SIZE);
        let end = r.end / FRAME_SIZE;
        for frame in first..end {
            bitmap.set(frame as usize, true);
        }
    }
    // Frame 0 is never handed out, and the bitmap's own frames are taken.
    bitmap.set(0, false);
    for frame in home / FRAME_SIZE..(home + bitmap_bytes).div_ceil(FRAME_SIZE) {
        bitmap.set(frame as usize, false);
    }
    BOOT_FREE_FRAMES.store(bitmap.free, core::sync::atomic::Ordering::Relaxed);
    *FRAMES.lock() = Some(bitmap);

    let (level4, _) = x86_64::registers::control::Cr3::read();
    // SAFETY: CR3 points at the active level-4 table, reachable through the offset.
    let mapper = unsafe {
        let table = &mut *(phys_to_virt(level4.start_address().as_u64()) as *mut PageTable);
        OffsetPageTable::new(table, VirtAddr::new(phys_offset))
    };
    *PAGE_TABLES.lock() = Some(mapper);

    map_fresh(HEAP_START, HEAP_SIZE, PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE)
        .expect("cannot map the kernel heap");
    // SAFETY: the heap range was just mapped and is used for nothing else.
    unsafe { HEAP.lock().init(HEAP_START as *mut u8, HEAP_SIZE as usize) };
    summary
}

/// Maps `size` bytes at `virt` to newly allocated frames.
fn map_fresh(virt: u64, size: u64, flags: PageTableFlags) -> Result<(), &'static str> {
    let mut guard = PAGE_TABLES.lock();
    let mapper = guard.as_mut().ok_or("page tables not initialised")?;
    for offset in (0..size).step_by(FRAME_SIZE as usize) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt + offset));
        let frame = Frames.allocate_frame().ok_or("out of memory")?;
        // SAFETY: the page is in a kernel-owned area and the frame is fresh.
        unsafe {
            mapper
                .map_to(page, frame, flags | PageTableFlags::PRESENT, &mut Frames)
                .map_err(|_| "page already mapped")?
                .flush();
        }
    }
    Ok(())
}

/// Maps the 4 KiB page at physical `phys` to the same virtual address, replacing
/// whatever was there (the AP start-up page must run at its physical address).
pub fn identity_map(phys: u64, flags: PageTableFlags) -> Result<(), &'static str> {
    let mut guard = PAGE_TABLES.lock();
    let mapper = guard.as_mut().ok_or("page tables not initialised")?;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(phys));
    if let Ok((_, flush)) = mapper.unmap(page) {
        flush.flush();
    }
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    // SAFETY: low memory identity mapping, used only by AP start-up.
    unsafe {
        mapper
            .map_to(page, frame, flags | PageTableFlags::PRESENT, &mut Frames)
            .map_err(|_| "cannot identity-map the page")?
            .flush();
    }
    Ok(())
}

pub fn unmap(virt: u64) {
    let mut guard = PAGE_TABLES.lock();
    if let Some(mapper) = guard.as_mut() {
        if let Ok((_, flush)) = mapper.unmap(Page::<Size4KiB>::containing_address(VirtAddr::new(virt))) {
            flush.flush();
        }
    }
}

/// Whether `virt` is mapped. Used by the crash path, so it must not block on a
/// lock the crashing CPU may hold.
pub fn is_mapped(virt: u64) -> bool {
    let Ok(virt) = VirtAddr::try_new(virt) else { return false };
    match PAGE_TABLES.try_lock() {
        Some(guard) => guard.as_ref().is_some_and(|m| m.translate_addr(virt).is_some()),
        None => false,
    }
}

/// A fresh kernel stack for CPU `index` with an unmapped guard page below it;
/// returns its top.
pub fn alloc_stack(index: u32, size: u64) -> Result<u64, &'static str> {
    assert!(size + FRAME_SIZE <= STACK_SLOT);
    let top = STACK_AREA_START + (index as u64 + 1) * STACK_SLOT;
    map_fresh(top - size, size, PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE)?;
    Ok(top)
}
