//! Turning a guest image into a load plan: which bytes go where in guest-physical
//! memory, where execution starts, in which CPU mode and with which registers.
//! Nothing here touches guest memory; the VMM carries the plan out after checking
//! it fits the VM.
//!
//! Every address and length here comes from the guest image, so all arithmetic
//! on them is checked: a field that would wrap or point outside the image or
//! the VM's memory is an error, never a panic.

use crate::bundle::BundleError;
use crate::manifest::{Format, Mode, VmSpec};
use crate::multiboot::Module;
use crate::place::{BootItem, Taken};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use devices::layout::RamMap;
use elf::endian::LittleEndian;
use elf::file::{Class, FileHeader};
use elf::parse::{ParseAt, ParseError};
use elf::segment::{ProgramHeader, SegmentTable};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    Real,
    /// 32-bit protected mode, flat segments, paging off.
    Protected,
    /// 64-bit mode on identity-mapped page tables the VMM builds.
    Long,
}

/// Bytes to copy to `guest_phys`, followed by `zero_fill` zero bytes (BSS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub guest_phys: u64,
    pub data: SegmentData<'a>,
    pub zero_fill: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentData<'a> {
    Borrowed(&'a [u8]),
    /// Built by the loader (e.g. the Multiboot information structure).
    Owned(Vec<u8>),
}

impl SegmentData<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            SegmentData::Borrowed(b) => b,
            SegmentData::Owned(v) => v,
        }
    }
}

impl Segment<'_> {
    /// The address after the segment, or `None` if the segment runs past 2^64.
    pub fn checked_end(&self) -> Option<u64> {
        self.guest_phys.checked_add(self.data.bytes().len() as u64)?.checked_add(self.zero_fill)
    }

    /// Saturates instead of wrapping, so a segment running past 2^64 never
    /// looks like one that fits; `load` refuses such segments.
    pub fn end(&self) -> u64 {
        self.checked_end().unwrap_or(u64::MAX)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan<'a> {
    pub segments: Vec<Segment<'a>>,
    pub entry: u64,
    pub mode: EntryMode,
    pub rax: u64,
    pub rbx: u64,
    /// Linux's 64-bit entry takes the zero page in RSI.
    pub rsi: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    Empty,
    NotElf,
    UnsupportedElf(&'static str),
    /// Something runs past the end of the image: a header, or what a header
    /// field points at (the text names the field).
    Truncated(&'static str),
    NoMultibootHeader,
    BadMultibootChecksum,
    UnsupportedMultiboot(&'static str),
    /// A segment does not end at or below `memory`, where the RAM a loader may
    /// use ends (`end` is `u64::MAX` when it would run past 2^64).
    DoesNotFit {
        start: u64,
        end: u64,
        memory: u64,
    },
    /// Two segments would be written over each other.
    Overlap {
        first: (u64, u64),
        second: (u64, u64),
    },
    EntryOutside {
        entry: u64,
    },
    NotBzImage(&'static str),
    /// A vmlinux to boot through its PVH entry (`linux-entry=pvh`) has no
    /// PVH entry note.
    NoPvhNote,
    /// The PVH entry note is there but unusable (the text says why).
    BadPvhNote(&'static str),
    CommandLineTooLong {
        length: usize,
        max: usize,
    },
    /// Boot data (`what`, `size` bytes) fits in none of `areas` (the guest
    /// RAM it may go in), which `taken` occupy.
    NoRoom {
        what: BootItem,
        size: u64,
        areas: Vec<(u64, u64)>,
        taken: Vec<Taken>,
    },
    TooManyModules {
        count: usize,
        max: usize,
    },
    /// The packed Multiboot module list is damaged.
    ModuleList(BundleError),
    /// Modules were given for a kernel that is not a Multiboot kernel.
    ModulesNeedMultiboot,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Empty => write!(f, "the image is empty"),
            ImageError::NotElf => write!(f, "not an ELF file (bad magic)"),
            ImageError::UnsupportedElf(why) => write!(f, "unsupported ELF: {why}"),
            ImageError::Truncated(what) => write!(f, "the image is truncated: {what}"),
            ImageError::NoMultibootHeader => write!(f, "no Multiboot header in the first 8 KiB"),
            ImageError::BadMultibootChecksum => write!(f, "the Multiboot header's checksum is wrong"),
            ImageError::UnsupportedMultiboot(why) => write!(f, "unsupported Multiboot kernel: {why}"),
            ImageError::DoesNotFit { start, end, memory } => {
                write!(f, "bytes {start:#x}..{end:#x} do not fit in the VM's memory (loadable up to {memory:#x})")
            }
            ImageError::Overlap { first: (a, b), second: (c, d) } => {
                write!(f, "bytes {a:#x}..{b:#x} and {c:#x}..{d:#x} would overlap in guest memory")
            }
            ImageError::EntryOutside { entry } => write!(f, "entry point {entry:#x} is outside the loaded image"),
            ImageError::NotBzImage(why) => write!(f, "not a usable bzImage: {why}"),
            ImageError::NoPvhNote => write!(
                f,
                "linux-entry=pvh, but the kernel has no PVH entry note (Xen's XEN_ELFNOTE_PHYS32_ENTRY, type 18, \
                 in a PT_NOTE segment): boot it at its 64-bit entry instead (linux-entry=64bit)"
            ),
            ImageError::BadPvhNote(why) => write!(f, "unusable PVH entry note: {why}"),
            ImageError::CommandLineTooLong { length, max } => {
                write!(f, "the command line is {length} bytes; this kernel takes at most {max}")
            }
            ImageError::NoRoom { what, size, areas, taken } => {
                crate::place::describe_no_room(f, what, *size, areas, taken)
            }
            ImageError::TooManyModules { count, max } => write!(f, "{count} modules; at most {max} are taken"),
            ImageError::ModuleList(e) => write!(f, "the Multiboot module list is damaged: {e}"),
            ImageError::ModulesNeedMultiboot => write!(f, "modules are given, but only Multiboot kernels take them"),
        }
    }
}

/// `N` bytes at `at`; no arithmetic on `at`, so any offset is safe to ask for.
pub(crate) fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..).and_then(<[u8]>::first_chunk).copied()
}
pub(crate) fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, ImageError> {
    bytes_at(b, at).map(u32::from_le_bytes).ok_or(ImageError::Truncated(what))
}

pub use crate::multiboot::BOOTLOADER_MAGIC as MULTIBOOT_BOOTLOADER_MAGIC;

/// The top of every VM's low RAM the VMM keeps for itself (its setup area: a
/// GDT and identity-mapping page tables for guests started in protected or
/// long mode); loaders place nothing there (`GuestRam::new`).
pub const VMM_SETUP_AREA: u64 = 64 * 1024;

/// What a boot needs besides the kernel image.
#[derive(Default, Clone, Copy)]
pub struct Extras<'a> {
    /// Linux: the initrd.
    pub initrd: Option<&'a [u8]>,
    /// Linux: the command line. Multiboot: what follows `name` on it.
    pub cmdline: &'a str,
    /// Linux: where the ACPI RSDP is.
    pub rsdp: Option<u64>,
    /// Multiboot: the kernel's name, the command line's first word (QEMU
    /// puts the kernel's file name there).
    pub name: &'a str,
    /// Multiboot: the modules (QEMU's `-initrd`); refused for other formats.
    pub modules: &'a [Module<'a>],
}

/// The boot protocol `image` speaks, from its own bytes in the order QEMU's
/// `-kernel` tells them apart: a bzImage boot-protocol header, else a
/// Multiboot header in the first 8 KiB (an ELF file may carry one), else an
/// ELF file with Xen's PVH entry note (a Linux vmlinux), else the ELF magic.
/// None for anything else. Only identifies: loading checks the rest.
pub fn detect_format(image: &[u8]) -> Option<Format> {
    if crate::linux::has_boot_header(image) {
        Some(Format::Linux)
    } else if crate::multiboot::is_multiboot(image) {
        Some(Format::Multiboot)
    } else if matches!(crate::pvh::entry_note(image), Ok(Some(_))) {
        Some(Format::Linux)
    } else if image.starts_with(&elf::abi::ELFMAGIC) {
        Some(Format::Elf)
    } else {
        None
    }
}

/// The VM's RAM as a loader sees it: it places everything below `low_ram_end`,
/// and the memory maps it hands the guest report RAM up to there and `high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRam {
    /// Where the low RAM loaders may use ends: below the MMIO hole (so below
    /// 4 GiB, where 32-bit boot protocols can point) and below what the VMM
    /// keeps at the top of low RAM for itself.
    pub low_ram_end: u64,
    /// RAM above the hole, as (start, bytes): reported, never loaded into.
    pub high: Option<(u64, u64)>,
}

impl GuestRam {
    /// The RAM of `map` less `vmm_reserved` bytes at the top of low RAM; None
    /// when low RAM is smaller than that.
    pub fn new(map: &RamMap, vmm_reserved: u64) -> Option<GuestRam> {
        let low_ram_end = map.low_end().checked_sub(vmm_reserved)?;
        Some(GuestRam { low_ram_end, high: map.high().map(|r| (r.guest_phys, r.size)) })
    }

    /// The RAM of a VM of `bytes` as the kernel builds it, less
    /// `vmm_reserved` bytes at the top of low RAM; None as for `new`, or for
    /// a size whose RAM would run past 2^64.
    pub fn of_size(bytes: u64, vmm_reserved: u64) -> Option<GuestRam> {
        GuestRam::new(&RamMap::new(bytes)?, vmm_reserved)
    }

    /// Low RAM only, ending at `low_ram_end`.
    pub fn low(low_ram_end: u64) -> GuestRam {
        GuestRam { low_ram_end, high: None }
    }
}

/// Plans loading `image` for `vm` into `ram`. An `Ok` plan's segments all lie
/// below `ram.low_ram_end`, none overlaps another, and the entry point lies in
/// one of them.
pub fn load<'a>(image: &'a [u8], vm: &VmSpec, ram: GuestRam, extras: Extras<'a>) -> Result<LoadPlan<'a>, ImageError> {
    let memory = ram.low_ram_end;
    if image.is_empty() {
        return Err(ImageError::Empty);
    }
    if !extras.modules.is_empty() && vm.format != Format::Multiboot {
        return Err(ImageError::ModulesNeedMultiboot);
    }
    let plan = match vm.format {
        Format::Flat => LoadPlan {
            segments: vec![Segment { guest_phys: vm.load, data: SegmentData::Borrowed(image), zero_fill: 0 }],
            entry: vm.entry,
            mode: match vm.mode {
                Mode::Real => EntryMode::Real,
                Mode::Protected => EntryMode::Protected,
                Mode::Long => EntryMode::Long,
            },
            rax: 0,
            rbx: 0,
            rsi: 0,
        },
        Format::Elf => elf(image)?,
        Format::Multiboot => {
            let boot = crate::multiboot::Boot { name: extras.name, cmdline: extras.cmdline, modules: extras.modules };
            crate::multiboot::plan(image, &ram, &boot)?
        }
        Format::Linux => {
            let boot = crate::linux::LinuxBoot {
                ram,
                cmdline: extras.cmdline,
                initrd: extras.initrd,
                rsdp: extras.rsdp,
                acpi_tables: None,
            };
            // One format, three boot protocols: the file says which kind of
            // kernel it is, and a vmlinux's entry is the VM's choice.
            crate::linux::plan_kernel(&crate::linux::parse_kernel(image)?, vm.vmlinux_entry, &boot)?
        }
    };
    let mut ranges = Vec::with_capacity(plan.segments.len());
    for s in &plan.segments {
        let end = s.checked_end().filter(|&end| end <= memory);
        let end = end.ok_or(ImageError::DoesNotFit { start: s.guest_phys, end: s.end(), memory })?;
        if end > s.guest_phys {
            ranges.push((s.guest_phys, end));
        }
    }
    // Sorted by start, a range overlapping any later one overlaps its neighbour.
    ranges.sort_unstable();
    if let Some(pair) = ranges.windows(2).find(|pair| pair[1].0 < pair[0].1) {
        return Err(ImageError::Overlap { first: pair[0], second: pair[1] });
    }
    if !ranges.iter().any(|&(start, end)| (start..end).contains(&plan.entry)) {
        return Err(ImageError::EntryOutside { entry: plan.entry });
    }
    Ok(plan)
}

/// An ELF file's word size, which decides the CPU mode it is entered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfClass {
    Elf32,
    Elf64,
}

/// A PT_LOAD segment: `data` (inside the file) goes to `paddr`, followed by
/// zeros up to `memsz` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSegment<'a> {
    pub paddr: u64,
    pub data: &'a [u8],
    pub memsz: u64,
}

/// What loading an ELF executable needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage<'a> {
    pub class: ElfClass,
    pub entry: u64,
    /// In program-header order; never empty. Each has `memsz >= data.len()`
    /// and `paddr + memsz` below 2^64.
    pub segments: Vec<ElfSegment<'a>>,
}

/// An ELF file's header as far as loading needs it, and its program headers.
pub(crate) struct ElfHeaders<'a> {
    pub class: ElfClass,
    pub entry: u64,
    pub program_headers: SegmentTable<'a, LittleEndian>,
}

/// Checks the ELF header of a little-endian x86 (ELF32) or x86-64 (ELF64)
/// executable and finds its program headers. Section headers are not read:
/// they do not matter for loading, so damage there is no reason to refuse.
pub(crate) fn elf_headers(image: &[u8]) -> Result<ElfHeaders<'_>, ImageError> {
    use elf::abi;
    if !image.starts_with(&abi::ELFMAGIC) {
        return Err(ImageError::NotElf);
    }
    let header_error = |e| elf_error(e, "ELF header");
    let ident = image.get(..abi::EI_NIDENT).ok_or(ImageError::Truncated("ELF header"))?;
    let ident = elf::file::parse_ident::<LittleEndian>(ident).map_err(header_error)?;
    let (class, machine, tail) = match ident.1 {
        Class::ELF32 => (ElfClass::Elf32, abi::EM_386, elf::file::ELF32_EHDR_TAILSIZE),
        Class::ELF64 => (ElfClass::Elf64, abi::EM_X86_64, elf::file::ELF64_EHDR_TAILSIZE),
    };
    let tail = image.get(abi::EI_NIDENT..abi::EI_NIDENT + tail).ok_or(ImageError::Truncated("ELF header"))?;
    let header = FileHeader::parse_tail(ident, tail).map_err(header_error)?;
    if header.e_machine != machine {
        return Err(ImageError::UnsupportedElf("not an x86 executable"));
    }
    if header.e_type != abi::ET_EXEC {
        return Err(ImageError::UnsupportedElf("not an executable (ET_EXEC)"));
    }
    if header.e_phnum == 0 {
        return Err(ImageError::UnsupportedElf("no loadable segments"));
    }
    if header.e_phnum == abi::PN_XNUM {
        // The real count would be in a section header; no kernel has that many.
        return Err(ImageError::UnsupportedElf("more than 65534 program headers (e_phnum is PN_XNUM)"));
    }
    let entry_size = ProgramHeader::validate_entsize(header.class, header.e_phentsize.into())
        .map_err(|e| elf_error(e, "program headers"))?;
    let table_size = entry_size * usize::from(header.e_phnum);
    let table = usize::try_from(header.e_phoff)
        .ok()
        .and_then(|start| image.get(start..start.checked_add(table_size)?))
        .ok_or(ImageError::Truncated("the program headers (e_phoff, e_phnum) lie past its end"))?;
    let program_headers = SegmentTable::new(LittleEndian, header.class, table);
    Ok(ElfHeaders { class, entry: header.e_entry, program_headers })
}

/// The file bytes a program header describes (p_offset, p_filesz), or None
/// when they do not lie inside `image`.
pub(crate) fn segment_bytes<'a>(image: &'a [u8], phdr: &ProgramHeader) -> Option<&'a [u8]> {
    let start = usize::try_from(phdr.p_offset).ok()?;
    let size = usize::try_from(phdr.p_filesz).ok()?;
    image.get(start..start.checked_add(size)?)
}

/// Reads the loadable segments of a little-endian x86 (ELF32) or x86-64 (ELF64)
/// executable. Only the ELF header and program headers are read: section
/// headers do not matter for loading, so damage there is no reason to refuse.
pub fn parse_elf(image: &[u8]) -> Result<ElfImage<'_>, ImageError> {
    let headers = elf_headers(image)?;
    let mut segments = Vec::new();
    for phdr in headers.program_headers.iter() {
        if phdr.p_type != elf::abi::PT_LOAD {
            continue;
        }
        if phdr.p_memsz < phdr.p_filesz {
            return Err(ImageError::UnsupportedElf("a segment's memory size is below its file size"));
        }
        if phdr.p_paddr.checked_add(phdr.p_memsz).is_none() {
            return Err(ImageError::UnsupportedElf("a segment runs past the top of the address space"));
        }
        let data = segment_bytes(image, &phdr)
            .ok_or(ImageError::Truncated("a segment's data (p_offset, p_filesz) lies past its end"))?;
        segments.push(ElfSegment { paddr: phdr.p_paddr, data, memsz: phdr.p_memsz });
    }
    if segments.is_empty() {
        return Err(ImageError::UnsupportedElf("no loadable segments"));
    }
    Ok(ElfImage { class: headers.class, entry: headers.entry, segments })
}

fn elf_error(error: ParseError, reading: &'static str) -> ImageError {
    match error {
        ParseError::BadMagic(_) => ImageError::NotElf,
        ParseError::UnsupportedElfClass(_) => ImageError::UnsupportedElf("unknown class"),
        ParseError::UnsupportedElfEndianness(_) => ImageError::UnsupportedElf("not little-endian"),
        ParseError::UnsupportedVersion(_) => ImageError::UnsupportedElf("unknown ELF version (EI_VERSION is not 1)"),
        ParseError::BadEntsize(_) => {
            ImageError::UnsupportedElf("program headers of a size other than the standard one")
        }
        _ => ImageError::Truncated(reading),
    }
}

/// The segments of `parsed` at their physical addresses, each followed by
/// its zero fill.
pub(crate) fn elf_segments<'a>(parsed: &ElfImage<'a>) -> Vec<Segment<'a>> {
    parsed
        .segments
        .iter()
        .map(|s| Segment {
            guest_phys: s.paddr,
            data: SegmentData::Borrowed(s.data),
            zero_fill: s.memsz.saturating_sub(s.data.len() as u64),
        })
        .collect()
}

/// ELF64 images start in long mode, ELF32 in protected mode; segments go to
/// their physical addresses.
pub(crate) fn elf(image: &[u8]) -> Result<LoadPlan<'_>, ImageError> {
    let parsed = parse_elf(image)?;
    Ok(LoadPlan {
        segments: elf_segments(&parsed),
        entry: parsed.entry,
        mode: match parsed.class {
            ElfClass::Elf32 => EntryMode::Protected,
            ElfClass::Elf64 => EntryMode::Long,
        },
        rax: 0,
        rbx: 0,
        rsi: 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::string::ToString;

    pub(crate) fn spec(format: Format) -> VmSpec {
        crate::manifest::parse_manifest(&alloc::format!(
            "name=t image=t format={} load=0x1000",
            match format {
                Format::Flat => "flat",
                Format::Elf => "elf",
                Format::Multiboot => "multiboot",
                Format::Linux => "linux",
            }
        ))
        .unwrap()
        .remove(0)
    }

    /// A minimal ELF with one PT_LOAD segment of `code` at `paddr` (+ `bss` bytes).
    pub(crate) fn elf_image(is64: bool, paddr: u64, entry: u64, code: &[u8], bss: u64) -> Vec<u8> {
        let (ehsize, phsize) = if is64 { (64usize, 56usize) } else { (52, 32) };
        let mut f = vec![0u8; ehsize + phsize];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if is64 { 2 } else { 1 };
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&(if is64 { 62u16 } else { 3 }).to_le_bytes());
        let offset = (ehsize + phsize) as u64;
        let p = ehsize;
        if is64 {
            f[24..32].copy_from_slice(&entry.to_le_bytes());
            f[32..40].copy_from_slice(&(ehsize as u64).to_le_bytes());
            f[54..56].copy_from_slice(&(phsize as u16).to_le_bytes());
            f[56..58].copy_from_slice(&1u16.to_le_bytes());
            f[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&offset.to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
        } else {
            f[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            f[28..32].copy_from_slice(&(ehsize as u32).to_le_bytes());
            f[42..44].copy_from_slice(&(phsize as u16).to_le_bytes());
            f[44..46].copy_from_slice(&1u16.to_le_bytes());
            f[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
            f[p + 4..p + 8].copy_from_slice(&(offset as u32).to_le_bytes());
            f[p + 12..p + 16].copy_from_slice(&(paddr as u32).to_le_bytes());
            f[p + 16..p + 20].copy_from_slice(&(code.len() as u32).to_le_bytes());
            f[p + 20..p + 24].copy_from_slice(&((code.len() as u64 + bss) as u32).to_le_bytes());
        }
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn flat_images_load_where_asked() {
        let plan = load(&[0xf4; 16], &spec(Format::Flat), GuestRam::low(1 << 20), Extras::default()).unwrap();
        assert_eq!((plan.entry, plan.mode, plan.segments[0].guest_phys), (0x1000, EntryMode::Real, 0x1000));
        assert_eq!(
            load(&[], &spec(Format::Flat), GuestRam::low(1 << 20), Extras::default()).unwrap_err(),
            ImageError::Empty
        );
        let err = load(&[0; 16], &spec(Format::Flat), GuestRam::low(0x1008), Extras::default()).unwrap_err();
        assert_eq!(err.to_string(), "bytes 0x1000..0x1010 do not fit in the VM's memory (loadable up to 0x1008)");
    }

    #[test]
    fn elf64_enters_long_mode_and_elf32_protected_mode() {
        let img = elf_image(true, 0x20_0000, 0x20_0004, &[0x90; 8], 0x100);
        let plan = load(&img, &spec(Format::Elf), GuestRam::low(4 << 20), Extras::default()).unwrap();
        assert_eq!((plan.entry, plan.mode), (0x20_0004, EntryMode::Long));
        assert_eq!(plan.segments[0].data.bytes(), &[0x90; 8]);
        assert_eq!(plan.segments[0].zero_fill, 0x100);
        let img = elf_image(false, 0x10_0000, 0x10_0000, &[0xf4], 0);
        assert_eq!(
            load(&img, &spec(Format::Elf), GuestRam::low(4 << 20), Extras::default()).unwrap().mode,
            EntryMode::Protected
        );
    }

    #[test]
    fn bad_elf_files_say_what_is_wrong() {
        let e = |img: &[u8]| load(img, &spec(Format::Elf), GuestRam::low(4 << 20), Extras::default()).unwrap_err();
        assert_eq!(e(b"MZ\x90\x00"), ImageError::NotElf);
        let mut img = elf_image(true, 0x1000, 0x1000, &[0x90; 8], 0);
        img[18] = 40; // ARM
        assert_eq!(e(&img), ImageError::UnsupportedElf("not an x86 executable"));
        let img = elf_image(true, 0x1000, 0x1000, &[0x90; 8], 0);
        assert_eq!(
            e(&img[..img.len() - 4]).to_string(),
            "the image is truncated: a segment's data (p_offset, p_filesz) lies past its end"
        );
        assert_eq!(e(&img[..40]), ImageError::Truncated("ELF header"));
        let img = elf_image(true, 0x1000, 0x9999, &[0x90; 8], 0);
        assert_eq!(e(&img), ImageError::EntryOutside { entry: 0x9999 });
    }
}
