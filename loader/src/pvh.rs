//! Linux's uncompressed kernel, the vmlinux ELF file, booted through its PVH
//! entry: the one Xen defined for guests without firmware, which Linux
//! declares with an ELF note (XEN_ELFNOTE_PHYS32_ENTRY) and which Firecracker
//! and cloud-hypervisor use for direct boots. It skips the bzImage's
//! decompressor, which is most of an emulated Linux boot's time before init.
//!
//! The protocol (Xen's public/arch-x86/hvm/start_info.h and docs/misc/pvh,
//! as Linux's arch/x86/platform/pvh reads it): the kernel's segments at their
//! physical addresses; the entry in 32-bit protected mode with paging off,
//! flat 4 GiB code and data segments, CR0.PE the only writable CR0 bit set,
//! CR4 clear, a 32-bit busy TSS, EFLAGS.IF/TF/VM clear, and EBX the
//! guest-physical address of an `hvm_start_info` block. That block, of
//! version 1, points at the command line, the module list (Linux takes its
//! first module as the initrd), the memory map (e820 types) and the ACPI
//! RSDP; Linux without Xen refuses to boot without the memory map.
//!
//! The start info, module list, memory map and command line are one block
//! placed as the Multiboot information is (`crate::place`): in conventional
//! memory where the kernel leaves room, else above it; the initrd as high in
//! low RAM as it fits, page-aligned, as Linux boot loaders place it. Every
//! address Linux reads from the block it keeps in 32 bits (the command line
//! and initrd addresses go into boot_params' 32-bit fields), so everything
//! stays below 4 GiB.
//!
//! Every value here comes from the image or the VM's description, so the
//! arithmetic is checked and every refusal names what is wrong.

use crate::image::{elf_headers, elf_segments, parse_elf, segment_bytes, ElfImage, EntryMode, ImageError, LoadPlan};
use crate::image::{Segment, SegmentData};
use crate::linux::{e820, LinuxBoot};
use crate::place::{kernel_taken, place, BootItem, End};
use alloc::vec;
use alloc::vec::Vec;

/// The note type of the PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY), in a note
/// named "Xen".
pub const PHYS32_ENTRY_NOTE: u64 = 18;
const NOTE_NAME: &[u8] = b"Xen";

/// hvm_start_info's magic ("xEn3" with the 0x80 bit of the "E" set).
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Version 1 added the memory map, which Linux needs when not under Xen.
pub const START_INFO_VERSION: u32 = 1;
/// hvm_start_info, version 1: magic, version, flags, nr_modules (u32 each),
/// modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr (u64 each),
/// memmap_entries, reserved (u32 each).
pub const START_INFO_SIZE: usize = 56;
/// hvm_modlist_entry: paddr, size, cmdline_paddr, reserved (u64 each).
pub const MODULE_ENTRY_SIZE: usize = 32;
/// hvm_memmap_table_entry: addr, size (u64 each), type, reserved (u32 each).
pub const MEMMAP_ENTRY_SIZE: usize = 24;

// Field offsets in hvm_start_info.
const MAGIC: usize = 0;
const VERSION: usize = 4;
const NR_MODULES: usize = 12;
const MODLIST_PADDR: usize = 16;
const CMDLINE_PADDR: usize = 24;
const RSDP_PADDR: usize = 32;
const MEMMAP_PADDR: usize = 40;
const MEMMAP_ENTRIES: usize = 48;

/// Linux on x86 copies at most COMMAND_LINE_SIZE (2048) bytes of the command
/// line, NUL included, and drops the rest without a word; a longer line is
/// refused here instead.
pub const COMMAND_LINE_MAX: usize = 2047;

/// Conventional memory as the memory map reports it (`linux::e820`), less
/// page 0: a zero address in the start info means "not there".
const CONVENTIONAL: (u64, u64) = (0x1000, 0x9_f000);
const EXTENDED_START: u64 = 0x10_0000;
/// Every address Linux keeps from the start info is 32 bits wide.
const ADDRESS_LIMIT: u64 = 1 << 32;

// The VMM writes the ACPI tables before the image; no boot data may go there.
const _: () = assert!(
    devices::layout::ACPI_TABLES >= CONVENTIONAL.1
        && devices::layout::ACPI_TABLES + devices::layout::ACPI_TABLES_SIZE <= EXTENDED_START
);

/// A checked vmlinux: its loadable segments and its PVH entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vmlinux<'a> {
    pub elf: ElfImage<'a>,
    /// From the PVH note (a 32-bit physical address); None: the kernel has
    /// no PVH entry and boots at its ELF entry (`crate::linux::plan_vmlinux`).
    pub entry: Option<u32>,
}

/// The ELF file `image`'s PVH entry point, from the first note of type
/// XEN_ELFNOTE_PHYS32_ENTRY named "Xen" in its PT_NOTE segments; None when
/// it has no such note. Errors for a damaged ELF header, a PT_NOTE segment
/// past the end of the file or notes running past their segment, and an
/// unusable entry note.
pub fn entry_note(image: &[u8]) -> Result<Option<u32>, ImageError> {
    let headers = elf_headers(image)?;
    for phdr in headers.program_headers.iter() {
        if phdr.p_type != elf::abi::PT_NOTE {
            continue;
        }
        let notes = segment_bytes(image, &phdr)
            .ok_or(ImageError::Truncated("a PT_NOTE segment (p_offset, p_filesz) lies past its end"))?;
        // Notes are padded to 4 bytes in ELF32 and ELF64 files alike (Linux,
        // GNU), to 8 only in segments whose p_align says so.
        let align = if phdr.p_align == 8 { 8 } else { 4 };
        if let Some(desc) = find_note(notes, align, NOTE_NAME, PHYS32_ENTRY_NOTE)? {
            return entry_from(desc).map(Some);
        }
    }
    Ok(None)
}

/// The description of the first note named `name` of type `kind` in
/// `notes`, each note padded to `align` bytes.
fn find_note<'a>(notes: &'a [u8], align: usize, name: &[u8], kind: u64) -> Result<Option<&'a [u8]>, ImageError> {
    const DAMAGED: ImageError = ImageError::Truncated("a note (n_namesz, n_descsz) runs past its PT_NOTE segment");
    let word = |at: usize| crate::image::u32_at(notes, at, "").map_err(|_| DAMAGED);
    let padded = |n: usize| n.checked_next_multiple_of(align).ok_or(DAMAGED);
    let mut at = 0usize;
    while at < notes.len() {
        let (name_size, desc_size, note_type) = (word(at)?, word(at + 4)?, word(at + 8)?);
        let name_at = at.checked_add(12).ok_or(DAMAGED)?;
        let name_size = usize::try_from(name_size).map_err(|_| DAMAGED)?;
        let desc_size = usize::try_from(desc_size).map_err(|_| DAMAGED)?;
        let name_end = name_at.checked_add(name_size).ok_or(DAMAGED)?;
        let desc_at = padded(name_end)?;
        let desc_end = desc_at.checked_add(desc_size).ok_or(DAMAGED)?;
        let note_name = notes.get(name_at..name_end).ok_or(DAMAGED)?;
        let desc = notes.get(desc_at..desc_end).ok_or(DAMAGED)?;
        // The name is NUL-terminated; its size counts the NUL.
        if note_name.strip_suffix(&[0]) == Some(name) && u64::from(note_type) == kind {
            return Ok(Some(desc));
        }
        // The last note's padding may be left out of the segment.
        at = padded(desc_end)?;
    }
    Ok(None)
}

/// The entry point a PHYS32_ENTRY note describes: a 32-bit address, written
/// as 4 bytes or, by 64-bit Linux before 6.13 (`_ASM_PTR`), as 8.
fn entry_from(desc: &[u8]) -> Result<u32, ImageError> {
    match *desc {
        [a, b, c, d] => Ok(u32::from_le_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => u32::try_from(u64::from_le_bytes([a, b, c, d, e, f, g, h])).map_err(|_| {
            ImageError::BadPvhNote("the entry point lies at or above 4 GiB, out of reach with paging off")
        }),
        _ => Err(ImageError::BadPvhNote("its description is neither 4 nor 8 bytes (a 32-bit address)")),
    }
}

/// Checks a vmlinux: an x86 ELF executable with loadable segments, and its
/// PVH entry note if it has one.
pub fn parse(image: &[u8]) -> Result<Vmlinux<'_>, ImageError> {
    let elf = parse_elf(image)?;
    let entry = entry_note(image)?;
    Ok(Vmlinux { elf, entry })
}

/// A vmlinux's segments and initrd placed in guest RAM, with what they take,
/// for either of its boot protocols to place its boot data around them.
pub(crate) struct Placed<'a> {
    pub segments: Vec<Segment<'a>>,
    pub taken: Vec<crate::place::Taken>,
    /// Where boot data may go, in order of preference: conventional memory,
    /// above the kernel, anywhere in extended memory.
    pub windows: [(u64, u64); 3],
    /// Below 4 GiB: every address Linux keeps from boot data is 32 bits wide
    /// (the zero page's initrd fields have high halves, the start info's not).
    pub top: u64,
    /// The initrd's (address, bytes).
    pub initrd: Option<(u64, u64)>,
}

/// Checks the command line's length and places the kernel's segments, then
/// the initrd as high in low RAM as it fits (page-aligned, above the kernel
/// where there is room), as Linux boot loaders place it.
pub(crate) fn place_kernel_and_initrd<'a>(
    kernel: &Vmlinux<'a>,
    boot: &LinuxBoot<'a>,
) -> Result<Placed<'a>, ImageError> {
    let cmdline = boot.cmdline.as_bytes();
    if cmdline.len() > COMMAND_LINE_MAX {
        return Err(ImageError::CommandLineTooLong { length: cmdline.len(), max: COMMAND_LINE_MAX });
    }
    let mut segments = elf_segments(&kernel.elf);
    let memory = boot.ram.low_ram_end;
    let mut taken = kernel_taken(&segments, memory)?;
    let top = memory.min(ADDRESS_LIMIT);
    let kernel_end = taken.iter().map(|t| t.end).max().unwrap_or(0);
    let above_kernel = (kernel_end.max(EXTENDED_START), top);
    let extended = (EXTENDED_START, top);

    // An empty initrd is no initrd: Linux would find one of no bytes.
    let initrd = boot.initrd.filter(|bytes| !bytes.is_empty());
    let initrd = match initrd {
        Some(bytes) => {
            let size = bytes.len() as u64;
            let at = place(&mut taken, size, &[above_kernel, extended], top, End::High, BootItem::Initrd)?;
            segments.push(Segment { guest_phys: at, data: SegmentData::Borrowed(bytes), zero_fill: 0 });
            Some((at, size))
        }
        None => None,
    };
    Ok(Placed { segments, taken, windows: [CONVENTIONAL, above_kernel, extended], top, initrd })
}

/// Plans the PVH boot of `kernel` with `boot` (the kernel must have the
/// entry note). `boot.rsdp` is passed on as it is; every other address in
/// the start info is one placed here.
pub fn plan<'a>(kernel: &Vmlinux<'a>, boot: &LinuxBoot<'a>) -> Result<LoadPlan<'a>, ImageError> {
    let entry = kernel.entry.ok_or(ImageError::NoPvhNote)?;
    let Placed { mut segments, mut taken, windows, top, initrd } = place_kernel_and_initrd(kernel, boot)?;
    let cmdline = boot.cmdline.as_bytes();
    let map = e820(&boot.ram, boot.acpi_tables);
    let layout = Layout::new(initrd.is_some(), map.len(), cmdline.len());
    let base = place(&mut taken, layout.size as u64, &windows, top, End::Low, BootItem::StartInfo)?;
    let block = layout.write(base, &map, initrd, cmdline, boot.rsdp);
    segments.push(Segment { guest_phys: base, data: SegmentData::Owned(block), zero_fill: 0 });
    Ok(LoadPlan { segments, entry: u64::from(entry), mode: EntryMode::Protected, rax: 0, rbx: base, rsi: 0 })
}

/// Where each part of the start-info block lies, as offsets in it: the
/// start info, the module list (the initrd, if any), the memory map, then
/// the command line and its NUL. Each part's size is a multiple of 8, so
/// every u64 field is aligned.
struct Layout {
    modules: usize,
    map_at: usize,
    map_entries: usize,
    cmdline_at: usize,
    size: usize,
}

impl Layout {
    /// `map_entries` and `cmdline` are bounded by the caller (a handful of
    /// map entries, `COMMAND_LINE_MAX`), so none of this can overflow.
    fn new(initrd: bool, map_entries: usize, cmdline: usize) -> Layout {
        let modules = usize::from(initrd);
        let map_at = START_INFO_SIZE + modules * MODULE_ENTRY_SIZE;
        let cmdline_at = map_at + map_entries * MEMMAP_ENTRY_SIZE;
        Layout { modules, map_at, map_entries, cmdline_at, size: cmdline_at + cmdline + 1 }
    }

    /// The block for guest address `base`, which `place` put below 4 GiB
    /// with the whole block.
    fn write(
        &self,
        base: u64,
        map: &[(u64, u64, u32)],
        initrd: Option<(u64, u64)>,
        cmdline: &[u8],
        rsdp: Option<u64>,
    ) -> Vec<u8> {
        let mut block = vec![0u8; self.size];
        let put = |block: &mut Vec<u8>, at: usize, bytes: &[u8]| block[at..at + bytes.len()].copy_from_slice(bytes);
        let address = |offset: usize| base + offset as u64;
        put(&mut block, MAGIC, &START_INFO_MAGIC.to_le_bytes());
        put(&mut block, VERSION, &START_INFO_VERSION.to_le_bytes());
        // flags stay 0: they describe Xen domains (privileged, initial domain).
        put(&mut block, NR_MODULES, &(self.modules as u32).to_le_bytes());
        if let Some((at, size)) = initrd {
            put(&mut block, MODLIST_PADDR, &address(START_INFO_SIZE).to_le_bytes());
            // The module's own command line stays 0: none.
            put(&mut block, START_INFO_SIZE, &at.to_le_bytes());
            put(&mut block, START_INFO_SIZE + 8, &size.to_le_bytes());
        }
        put(&mut block, CMDLINE_PADDR, &address(self.cmdline_at).to_le_bytes());
        put(&mut block, RSDP_PADDR, &rsdp.unwrap_or(0).to_le_bytes());
        put(&mut block, MEMMAP_PADDR, &address(self.map_at).to_le_bytes());
        put(&mut block, MEMMAP_ENTRIES, &(self.map_entries as u32).to_le_bytes());
        for (i, &(start, size, kind)) in map.iter().enumerate() {
            let at = self.map_at + i * MEMMAP_ENTRY_SIZE;
            put(&mut block, at, &start.to_le_bytes());
            put(&mut block, at + 8, &size.to_le_bytes());
            put(&mut block, at + 16, &kind.to_le_bytes());
        }
        // The NUL after it is the block's last byte, already zero.
        put(&mut block, self.cmdline_at, cmdline);
        block
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::tests::spec;
    use crate::image::{detect_format, load, Extras, GuestRam};
    use crate::linux::{E820_RAM, E820_RESERVED};
    use crate::manifest::Format;
    use alloc::string::ToString;

    const MIB: u64 = 1 << 20;

    /// One note: name (with its NUL), type and description, padded to 4.
    pub(crate) fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend(((name.len() + 1) as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.push(0);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// A vmlinux-shaped ELF64: one PT_LOAD segment of `code` at `paddr` with
    /// `bss` bytes of zero fill, then a PT_NOTE segment holding `notes`.
    pub(crate) fn vmlinux_with(paddr: u64, code: &[u8], bss: u64, notes: &[u8]) -> Vec<u8> {
        let headers = 64 + 2 * 56;
        let mut f = vec![0u8; headers];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4..7].copy_from_slice(&[2, 1, 1]);
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64

        // e_entry: the 64-bit entry's physical address (Linux links its
        // vmlinux with ENTRY(phys_startup_64)), at the start of the code.
        f[24..32].copy_from_slice(&paddr.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let code_at = headers as u64;
        let notes_at = code_at + code.len() as u64;
        let program_headers: [(u32, u64, u64, u64, u64, u64); 2] = [
            (1, code_at, paddr, code.len() as u64, code.len() as u64 + bss, 0x20_0000),
            (4, notes_at, 0, notes.len() as u64, notes.len() as u64, 4),
        ];
        for (i, (kind, offset, paddr, filesz, memsz, align)) in program_headers.into_iter().enumerate() {
            let p = 64 + i * 56;
            f[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&offset.to_le_bytes());
            f[p + 16..p + 24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
            f[p + 48..p + 56].copy_from_slice(&align.to_le_bytes());
        }
        f.extend_from_slice(code);
        f.extend_from_slice(notes);
        f
    }

    /// A vmlinux at 16 MiB whose PVH entry is 0x100_0040, behind a GNU note.
    pub(crate) fn vmlinux() -> Vec<u8> {
        let mut notes = note(b"GNU", 3, &[0xab; 20]);
        notes.extend(note(b"Xen", 18, &0x100_0040u32.to_le_bytes()));
        vmlinux_with(0x100_0000, &[0xf4; 0x80], 0x1000, &notes)
    }

    fn boot<'a>(image: &'a [u8], memory: u64, extras: Extras<'a>) -> Result<LoadPlan<'a>, ImageError> {
        load(image, &spec(Format::Linux), GuestRam::low(memory), extras)
    }

    /// The block at EBX.
    fn start_info<'p>(plan: &'p LoadPlan) -> &'p [u8] {
        let block = plan.segments.iter().find(|s| s.guest_phys == plan.rbx).expect("a segment at EBX");
        block.data.bytes()
    }

    /// The whole block, byte for byte, for a 256 MiB VM with an initrd, a
    /// command line and an RSDP.
    #[test]
    fn the_start_info_block_is_laid_out_byte_for_byte() {
        let image = vmlinux();
        let initrd = [7u8; 0x1801];
        let extras =
            Extras { initrd: Some(&initrd), cmdline: "console=ttyS0 quiet", rsdp: Some(0xe_0000), ..Extras::default() };
        let plan = boot(&image, 256 * MIB, extras).unwrap();
        assert_eq!((plan.entry, plan.mode, plan.rax, plan.rsi), (0x100_0040, EntryMode::Protected, 0, 0));
        assert_eq!(plan.rbx, 0x1000, "the first page of conventional memory");
        // The kernel, then the initrd: as high as it fits, page-aligned.
        assert_eq!(plan.segments[0].guest_phys, 0x100_0000);
        assert_eq!((plan.segments[0].data.bytes().len(), plan.segments[0].zero_fill), (0x80, 0x1000));
        let initrd_at = 256 * MIB - 0x2000;
        assert_eq!((plan.segments[1].guest_phys, plan.segments[1].data.bytes()), (initrd_at, &initrd[..]));
        assert_eq!(plan.segments.len(), 3);

        let mut expected = Vec::new();
        let u32s = |out: &mut Vec<u8>, values: &[u32]| values.iter().for_each(|v| out.extend(v.to_le_bytes()));
        let u64s = |out: &mut Vec<u8>, values: &[u64]| values.iter().for_each(|v| out.extend(v.to_le_bytes()));
        let (modules_at, map_at) = (0x1000 + 56, 0x1000 + 56 + 32);
        let cmdline_at = map_at + 4 * 24;
        // magic, version 1, flags, one module; modules, command line, RSDP, map.
        u32s(&mut expected, &[0x336e_c578, 1, 0, 1]);
        u64s(&mut expected, &[modules_at, cmdline_at, 0xe_0000, map_at]);
        u32s(&mut expected, &[4, 0]);
        assert_eq!(expected.len(), START_INFO_SIZE);
        u64s(&mut expected, &[initrd_at, 0x1801, 0, 0]);
        let low_end = 256 * MIB - 0x10_0000;
        for (start, size, kind) in
            [(0, 0x9fc00, E820_RAM), (0x9fc00, 0x400, E820_RESERVED), (0xe0000, 0x20000, E820_RESERVED)]
                .into_iter()
                .chain([(0x10_0000, low_end, E820_RAM)])
        {
            u64s(&mut expected, &[start, size]);
            u32s(&mut expected, &[kind, 0]);
        }
        expected.extend_from_slice(b"console=ttyS0 quiet\0");
        assert_eq!(start_info(&plan), &expected[..]);
    }

    #[test]
    fn without_initrd_or_rsdp_those_fields_are_zero() {
        let image = vmlinux();
        let empty: &[u8] = &[];
        for initrd in [None, Some(empty)] {
            let plan = boot(&image, 64 * MIB, Extras { initrd, ..Extras::default() }).unwrap();
            let block = start_info(&plan);
            assert_eq!(plan.segments.len(), 2, "kernel and block: an empty initrd is none");
            assert_eq!(&block[NR_MODULES..NR_MODULES + 4], &[0; 4]);
            assert_eq!(&block[MODLIST_PADDR..MODLIST_PADDR + 8], &[0; 8]);
            assert_eq!(&block[RSDP_PADDR..RSDP_PADDR + 8], &[0; 8]);
            let map_at = u64::from_le_bytes(block[MEMMAP_PADDR..MEMMAP_PADDR + 8].try_into().unwrap());
            assert_eq!(map_at, plan.rbx + START_INFO_SIZE as u64, "the map right after the start info");
            assert_eq!(*block.last().unwrap(), 0, "an empty command line is its NUL");
        }
    }

    #[test]
    fn the_memory_map_leaves_out_the_mmio_hole_and_reports_ram_above_4_gib() {
        use devices::layout::{RamMap, HIGH_RAM_BASE, RAM_HOLE_START};
        let image = vmlinux();
        let ram = GuestRam::new(&RamMap::new(4096 * MIB).unwrap(), 0x1_0000).unwrap();
        let plan = load(&image, &spec(Format::Linux), ram, Extras::default()).unwrap();
        let block = start_info(&plan);
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
        assert_eq!(u32::from_le_bytes(block[MEMMAP_ENTRIES..MEMMAP_ENTRIES + 4].try_into().unwrap()), 5);
        let map = (u64_at(MEMMAP_PADDR) - plan.rbx) as usize;
        assert_eq!((u64_at(map + 3 * 24), u64_at(map + 3 * 24 + 8)), (0x10_0000, RAM_HOLE_START - 0x1_0000 - MIB));
        assert_eq!((u64_at(map + 4 * 24), u64_at(map + 4 * 24 + 8)), (HIGH_RAM_BASE, 1 << 30));
    }

    #[test]
    fn vmlinux_files_are_told_from_bzimages_and_plain_elf_files() {
        assert_eq!(detect_format(&vmlinux()), Some(Format::Linux));
        let bare = vmlinux_with(0x100_0000, &[0xf4; 16], 0, &note(b"GNU", 3, &[1; 20]));
        assert_eq!(detect_format(&bare), Some(Format::Elf), "no PVH note: a plain ELF");
        assert!(matches!(crate::linux::parse_kernel(&vmlinux()), Ok(crate::linux::Kernel::Vmlinux(_))));
        let bz = crate::linux::tests::bzimage(100);
        assert!(matches!(crate::linux::parse_kernel(&bz), Ok(crate::linux::Kernel::BzImage(_))));
    }

    fn boot_through<'a>(
        image: &'a [u8],
        entry: crate::linux::VmlinuxEntry,
        extras: Extras<'a>,
    ) -> Result<LoadPlan<'a>, ImageError> {
        let vm = crate::manifest::VmSpec { vmlinux_entry: entry, ..spec(Format::Linux) };
        load(image, &vm, GuestRam::low(64 * MIB), extras)
    }

    #[test]
    fn without_the_note_a_vmlinux_boots_at_its_64_bit_entry_and_pvh_is_refused_by_name() {
        use crate::linux::VmlinuxEntry::{Preferred, Pvh};
        let bare = vmlinux_with(0x100_0000, &[0xf4; 16], 0, &note(b"Xen", 1, &[0; 8]));
        let plan = boot_through(&bare, Preferred, Extras::default()).unwrap();
        assert_eq!((plan.mode, plan.entry), (EntryMode::Long, 0x100_0000), "the 64-bit entry");
        let err = boot_through(&bare, Pvh, Extras::default()).unwrap_err();
        assert_eq!(err, ImageError::NoPvhNote);
        assert!(err.to_string().contains("XEN_ELFNOTE_PHYS32_ENTRY, type 18"), "{err}");
        assert!(err.to_string().contains("linux-entry=64bit"), "{err}");
        // The right type under another name is not it either.
        let other = vmlinux_with(0x100_0000, &[0xf4; 16], 0, &note(b"Xem", 18, &[0; 4]));
        assert_eq!(boot_through(&other, Pvh, Extras::default()).unwrap_err(), ImageError::NoPvhNote);
    }

    #[test]
    fn the_64_bit_entry_gets_a_zero_page_written_whole_with_the_command_line_after_it() {
        use crate::linux::{VmlinuxEntry::Boot64, E820_RAM};
        let initrd = vec![9u8; 0x2345];
        let extras =
            Extras { initrd: Some(&initrd), cmdline: "console=hvc0 quiet", rsdp: Some(0xe_0000), ..Extras::default() };
        // A kernel with the PVH note, booted at its 64-bit entry all the same.
        let image = vmlinux();
        let plan = boot_through(&image, Boot64, extras).unwrap();
        assert_eq!((plan.mode, plan.entry, plan.rbx), (EntryMode::Long, 0x100_0000, 0));
        assert_eq!(plan.rsi, 0x1000, "in conventional memory, like the PVH start info");
        let block = plan.segments.iter().find(|s| s.guest_phys == plan.rsi).unwrap().data.bytes();
        let u16_at = |at: usize| u16::from_le_bytes(block[at..at + 2].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
        assert_eq!((u16_at(0x1fe), &block[0x202..0x206], u16_at(0x206)), (0xaa55, &b"HdrS"[..], 0x020f));
        assert_eq!((block[0x210], block[0x211], u32_at(0x238)), (0xff, 1, 2047), "loader, LOADED_HIGH, limit");
        assert_eq!((u32_at(0x228), u32_at(0xc8)), (0x2000, 0), "the command line, right after the zero page");
        assert_eq!(&block[0x1000..], b"console=hvc0 quiet\0");
        let initrd_at = u64::from(u32_at(0x218));
        assert_eq!((u32_at(0x21c), u32_at(0xc0), u32_at(0xc4)), (0x2345, 0, 0));
        assert_eq!(initrd_at, (64 * MIB - 0x2345) & !0xfff, "as high as it fits");
        assert!(plan.segments.iter().any(|s| s.guest_phys == initrd_at && s.data.bytes() == &initrd[..]));
        assert_eq!(u64_at(0x70), 0xe_0000, "the RSDP");
        let entries = block[0x1e8] as usize;
        assert!(entries >= 3);
        let last = 0x2d0 + (entries - 1) * 20;
        assert_eq!((u64_at(last), u64_at(last + 8), u32_at(last + 16)), (0x10_0000, 63 * MIB, E820_RAM));
        // A command line as long as Linux takes still fits; one byte more is refused.
        let longest = "x".repeat(COMMAND_LINE_MAX);
        let extras = Extras { cmdline: &longest, ..Extras::default() };
        assert!(boot_through(&image, Boot64, extras).is_ok());
        let longer = "x".repeat(COMMAND_LINE_MAX + 1);
        let extras = Extras { cmdline: &longer, ..Extras::default() };
        assert_eq!(
            boot_through(&image, Boot64, extras).unwrap_err(),
            ImageError::CommandLineTooLong { length: COMMAND_LINE_MAX + 1, max: COMMAND_LINE_MAX }
        );
    }

    #[test]
    fn entry_notes_of_8_bytes_are_read_and_bad_ones_refused() {
        let with = |desc: &[u8]| vmlinux_with(0x100_0000, &[0xf4; 16], 0, &note(b"Xen", 18, desc));
        assert_eq!(entry_note(&with(&0x100_0008u64.to_le_bytes())), Ok(Some(0x100_0008)));
        assert_eq!(
            entry_note(&with(&0x1_0000_0000u64.to_le_bytes())).unwrap_err().to_string(),
            "unusable PVH entry note: the entry point lies at or above 4 GiB, out of reach with paging off"
        );
        assert_eq!(
            entry_note(&with(&[1, 2])).unwrap_err(),
            ImageError::BadPvhNote("its description is neither 4 nor 8 bytes (a 32-bit address)")
        );
        // An entry outside the kernel's segments.
        let outside = with(&0x200_0000u32.to_le_bytes());
        assert_eq!(
            boot(&outside, 64 * MIB, Extras::default()).unwrap_err(),
            ImageError::EntryOutside { entry: 0x200_0000 }
        );
    }

    #[test]
    fn damaged_notes_are_refused() {
        let mut notes = note(b"Xen", 18, &0x100_0000u32.to_le_bytes());
        notes[4..8].copy_from_slice(&u32::MAX.to_le_bytes()); // n_descsz
        let image = vmlinux_with(0x100_0000, &[0xf4; 16], 0, &notes);
        assert_eq!(
            entry_note(&image).unwrap_err().to_string(),
            "the image is truncated: a note (n_namesz, n_descsz) runs past its PT_NOTE segment"
        );
        // A note header cut short.
        let image = vmlinux_with(0x100_0000, &[0xf4; 16], 0, &[4, 0, 0, 0, 4, 0]);
        assert!(matches!(entry_note(&image), Err(ImageError::Truncated(_))));
        // The segment itself past the end of the file.
        let mut image = vmlinux();
        let filesz = 64 + 56 + 32;
        image[filesz..filesz + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_eq!(
            entry_note(&image).unwrap_err(),
            ImageError::Truncated("a PT_NOTE segment (p_offset, p_filesz) lies past its end")
        );
    }

    #[test]
    fn notes_padded_to_8_bytes_are_read_where_p_align_says_so() {
        // A note whose description ends at 20: the next starts at 24 when
        // notes are padded to 8, at 20 (in the padding) when padded to 4.
        let mut notes = Vec::new();
        for word in [4u32, 4, 3] {
            notes.extend(word.to_le_bytes());
        }
        notes.extend(b"GNU\0\x01\x02\x03\x04\0\0\0\0");
        for word in [4u32, 4, 18] {
            notes.extend(word.to_le_bytes());
        }
        notes.extend(b"Xen\0");
        notes.extend(0x100_0004u32.to_le_bytes());
        let mut image = vmlinux_with(0x100_0000, &[0xf4; 16], 0, &notes);
        assert_ne!(entry_note(&image), Ok(Some(0x100_0004)), "read with 4-byte padding");
        let align = 64 + 56 + 48;
        image[align..align + 8].copy_from_slice(&8u64.to_le_bytes());
        assert_eq!(entry_note(&image), Ok(Some(0x100_0004)));
    }

    #[test]
    fn a_kernel_over_conventional_memory_moves_the_block_above_it() {
        // A segment covering 0x1000..0x9f000 (bytes and zero fill).
        let mut notes = note(b"Xen", 18, &0x1000u32.to_le_bytes());
        notes.extend(note(b"GNU", 3, &[0; 4]));
        let image = vmlinux_with(0x1000, &[0xf4; 0x10], 0x9_e000 - 0x10, &notes);
        let plan = boot(&image, 16 * MIB, Extras { initrd: Some(&[1; 10]), ..Extras::default() }).unwrap();
        assert_eq!(plan.rbx, 0x10_0000, "the first page of extended memory");
        assert_eq!(plan.segments[1].guest_phys, 16 * MIB - 0x1000, "the initrd at the top");
    }

    #[test]
    fn what_does_not_fit_is_named() {
        let image = vmlinux();
        // The kernel itself: 16 MiB + 0x1080 in a 16 MiB VM.
        assert_eq!(
            boot(&image, 16 * MIB, Extras::default()).unwrap_err(),
            ImageError::DoesNotFit { start: 0x100_0000, end: 0x100_1080, memory: 16 * MIB }
        );
        // An initrd larger than the RAM left.
        let big = vec![0u8; (48 * MIB) as usize];
        let err = boot(&image, 64 * MIB, Extras { initrd: Some(&big), ..Extras::default() }).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "no room for the initrd (0x3000000 bytes, page-aligned) in guest RAM 0x100000..0x4000000: taken by \
                 the kernel's bytes 0x1000000..0x1000080"
            ),
            "{err}"
        );
        let long = "x".repeat(2048);
        assert_eq!(
            boot(&image, 64 * MIB, Extras { cmdline: &long, ..Extras::default() }).unwrap_err().to_string(),
            "the command line is 2048 bytes; this kernel takes at most 2047"
        );
        assert!(boot(&image, 64 * MIB, Extras { cmdline: &long[1..], ..Extras::default() }).is_ok());
    }

    #[test]
    fn nothing_goes_at_or_above_4_gib_whatever_the_ram() {
        let image = vmlinux();
        let initrd = [3u8; 0x2000];
        let plan = boot(&image, u64::MAX, Extras { initrd: Some(&initrd), ..Extras::default() }).unwrap();
        assert_eq!(plan.segments[1].guest_phys, (1 << 32) - 0x2000);
        for s in &plan.segments {
            assert!(s.checked_end().unwrap() <= 1 << 32, "{:#x}", s.guest_phys);
        }
    }
}
