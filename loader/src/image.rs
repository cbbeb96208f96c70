//! Turning a guest image into a load plan: which bytes go where in guest-physical
//! memory, where execution starts, in which CPU mode and with which registers.
//! Nothing here touches guest memory; the VMM carries the plan out after checking
//! it fits the VM.
//!
//! Every address and length here comes from the guest image, so all arithmetic
//! on them is checked: a field that would wrap or point outside the image or
//! the VM's memory is an error, never a panic.

use crate::manifest::{Format, Mode, VmSpec};
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
    CommandLineTooLong {
        length: usize,
        max: usize,
    },
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
            ImageError::CommandLineTooLong { length, max } => {
                write!(f, "the command line is {length} bytes; this kernel takes at most {max}")
            }
        }
    }
}

/// `N` bytes at `at`; no arithmetic on `at`, so any offset is safe to ask for.
pub(crate) fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..).and_then(<[u8]>::first_chunk).copied()
}
fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, ImageError> {
    bytes_at(b, at).map(u32::from_le_bytes).ok_or(ImageError::Truncated(what))
}

/// Where the Multiboot information structure goes, as QEMU places it: low memory
/// that kernels leave alone.
pub const MULTIBOOT_INFO_ADDRESS: u64 = 0x9000;
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
pub const MULTIBOOT_BOOTLOADER_MAGIC: u64 = 0x2bad_b002;
/// The Multiboot header must lie in this many bytes at the start of the file.
const MULTIBOOT_SEARCH: usize = 8192;

/// What a Linux boot needs besides the kernel image.
#[derive(Default, Clone, Copy)]
pub struct Extras<'a> {
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    pub rsdp: Option<u64>,
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
        Format::Multiboot => multiboot(image, &ram)?,
        Format::Linux => {
            let bz = crate::linux::parse(image)?;
            let boot = crate::linux::LinuxBoot {
                ram,
                cmdline: extras.cmdline,
                initrd: extras.initrd,
                rsdp: extras.rsdp,
                acpi_tables: None,
            };
            crate::linux::plan(&bz, &boot)?
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

/// Reads the loadable segments of a little-endian x86 (ELF32) or x86-64 (ELF64)
/// executable. Only the ELF header and program headers are read: section
/// headers do not matter for loading, so damage there is no reason to refuse.
pub fn parse_elf(image: &[u8]) -> Result<ElfImage<'_>, ImageError> {
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
    let mut segments = Vec::new();
    for phdr in SegmentTable::new(LittleEndian, header.class, table).iter() {
        if phdr.p_type != abi::PT_LOAD {
            continue;
        }
        if phdr.p_memsz < phdr.p_filesz {
            return Err(ImageError::UnsupportedElf("a segment's memory size is below its file size"));
        }
        if phdr.p_paddr.checked_add(phdr.p_memsz).is_none() {
            return Err(ImageError::UnsupportedElf("a segment runs past the top of the address space"));
        }
        let data = usize::try_from(phdr.p_offset)
            .ok()
            .zip(usize::try_from(phdr.p_filesz).ok())
            .and_then(|(start, size)| image.get(start..start.checked_add(size)?))
            .ok_or(ImageError::Truncated("a segment's data (p_offset, p_filesz) lies past its end"))?;
        segments.push(ElfSegment { paddr: phdr.p_paddr, data, memsz: phdr.p_memsz });
    }
    if segments.is_empty() {
        return Err(ImageError::UnsupportedElf("no loadable segments"));
    }
    Ok(ElfImage { class, entry: header.e_entry, segments })
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

/// ELF64 images start in long mode, ELF32 in protected mode; segments go to
/// their physical addresses.
fn elf(image: &[u8]) -> Result<LoadPlan<'_>, ImageError> {
    let parsed = parse_elf(image)?;
    let segments = parsed
        .segments
        .iter()
        .map(|s| Segment {
            guest_phys: s.paddr,
            data: SegmentData::Borrowed(s.data),
            zero_fill: s.memsz.saturating_sub(s.data.len() as u64),
        })
        .collect();
    Ok(LoadPlan {
        segments,
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

/// Multiboot v1: the header's address fields when flag 16 is set, else the ELF
/// program headers; entered in protected mode with EAX = the bootloader magic and
/// EBX = the information structure.
fn multiboot<'a>(image: &'a [u8], ram: &GuestRam) -> Result<LoadPlan<'a>, ImageError> {
    let search = &image[..image.len().min(MULTIBOOT_SEARCH)];
    // The magic, flags and checksum must all lie in the searched bytes.
    let header = (0..search.len().saturating_sub(11))
        .step_by(4)
        .find(|&at| bytes_at(search, at).map(u32::from_le_bytes) == Some(MULTIBOOT_MAGIC))
        .ok_or(ImageError::NoMultibootHeader)?;
    let flags = u32_at(image, header + 4, "Multiboot header")?;
    let checksum = u32_at(image, header + 8, "Multiboot header")?;
    if MULTIBOOT_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        return Err(ImageError::BadMultibootChecksum);
    }
    if flags & (1 << 2) != 0 {
        return Err(ImageError::UnsupportedMultiboot("a video mode is requested (flag 2)"));
    }
    let mut plan = if flags & (1 << 16) != 0 {
        let field = |n: usize| u32_at(image, header + 12 + 4 * n, "Multiboot address fields").map(u64::from);
        let (header_addr, load_addr, load_end, bss_end, entry) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        if load_addr > header_addr {
            return Err(ImageError::UnsupportedMultiboot("load_addr lies above header_addr"));
        }
        // header_addr is where the header's file offset lands, which fixes
        // the file offset that goes to load_addr.
        let file_start = (header as u64)
            .checked_sub(header_addr - load_addr)
            .ok_or(ImageError::UnsupportedMultiboot("load_addr lies before the start of the file (header_addr)"))?;
        let file_end = match load_end {
            0 => image.len() as u64,
            _ if load_end < load_addr => {
                return Err(ImageError::UnsupportedMultiboot("load_end_addr lies below load_addr"))
            }
            _ => file_start + (load_end - load_addr),
        };
        let data = usize::try_from(file_start)
            .ok()
            .zip(usize::try_from(file_end).ok())
            .and_then(|(start, end)| image.get(start..end))
            .ok_or(ImageError::Truncated("the Multiboot load range (load_end_addr) lies past its end"))?;
        let data_end = load_addr + data.len() as u64;
        let zero_fill = match bss_end {
            0 => 0,
            _ if bss_end < data_end => {
                return Err(ImageError::UnsupportedMultiboot("bss_end_addr lies below load_end_addr"))
            }
            _ => bss_end - data_end,
        };
        LoadPlan {
            segments: vec![Segment { guest_phys: load_addr, data: SegmentData::Borrowed(data), zero_fill }],
            entry,
            mode: EntryMode::Protected,
            rax: 0,
            rbx: 0,
            rsi: 0,
        }
    } else {
        let plan = elf(image)?;
        if plan.mode != EntryMode::Protected {
            return Err(ImageError::UnsupportedMultiboot("the kernel is ELF64; Multiboot v1 kernels are 32-bit"));
        }
        plan
    };
    // Information structure: memory sizes (flag 0) and a memory map (flag 6).
    // mem_upper is RAM from 1 MiB up to the first hole, so only low RAM; the map
    // also lists RAM above the hole.
    const INFO_SIZE: usize = 0x58;
    let mut info = vec![0u8; INFO_SIZE];
    let mut put = |at: usize, v: u32| info[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(0, 1 | (1 << 6));
    put(4, 640);
    let extended = ram.low_ram_end.saturating_sub(0x10_0000);
    put(8, u32::try_from(extended / 1024).unwrap_or(u32::MAX));
    let map_at = MULTIBOOT_INFO_ADDRESS + INFO_SIZE as u64;
    let mut map = Vec::new();
    let low = [(0u64, 0x9f000u64, 1u32), (0x10_0000, extended, 1)];
    for (base, len, kind) in low.into_iter().chain(ram.high.map(|(base, len)| (base, len, 1))) {
        map.extend_from_slice(&20u32.to_le_bytes());
        map.extend_from_slice(&base.to_le_bytes());
        map.extend_from_slice(&len.to_le_bytes());
        map.extend_from_slice(&kind.to_le_bytes());
    }
    put(44, map.len() as u32);
    put(48, map_at as u32);
    info.extend_from_slice(&map);
    plan.segments.push(Segment { guest_phys: MULTIBOOT_INFO_ADDRESS, data: SegmentData::Owned(info), zero_fill: 0 });
    plan.rax = MULTIBOOT_BOOTLOADER_MAGIC;
    plan.rbx = MULTIBOOT_INFO_ADDRESS;
    Ok(plan)
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

    /// A Multiboot kernel using the address fields (flag 16), as small test kernels do.
    pub(crate) fn multiboot_aout(load_addr: u32, code: &[u8], bss: u32) -> Vec<u8> {
        let flags: u32 = (1 << 16) | 1;
        let mut img = Vec::new();
        for v in [
            MULTIBOOT_MAGIC,
            flags,
            0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags),
            load_addr,                                // header_addr
            load_addr,                                // load_addr
            load_addr + 32 + code.len() as u32,       // load_end_addr
            load_addr + 32 + code.len() as u32 + bss, // bss_end_addr
            load_addr + 32,                           // entry
            0,
        ] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.truncate(32);
        img.extend_from_slice(code);
        img
    }

    #[test]
    fn multiboot_kernels_load_like_qemu_loads_them() {
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0x40);
        let plan = load(&img, &spec(Format::Multiboot), GuestRam::low(16 << 20), Extras::default()).unwrap();
        assert_eq!((plan.entry, plan.mode), (0x10_0020, EntryMode::Protected));
        assert_eq!((plan.rax, plan.rbx), (0x2bad_b002, MULTIBOOT_INFO_ADDRESS));
        assert_eq!(plan.segments[0].guest_phys, 0x10_0000);
        assert_eq!(plan.segments[0].data.bytes().len(), 36);
        assert_eq!(plan.segments[0].zero_fill, 0x40);
        let info = plan.segments[1].data.bytes();
        assert_eq!(u32::from_le_bytes(info[0..4].try_into().unwrap()) & 1, 1, "memory fields valid");
        assert_eq!(u32::from_le_bytes(info[8..12].try_into().unwrap()), 15 * 1024, "mem_upper in KiB");
    }

    #[test]
    fn multiboot_memory_info_leaves_out_the_mmio_hole() {
        use devices::layout::{RamMap, HIGH_RAM_BASE, RAM_HOLE_START};
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0);
        let ram = GuestRam::new(&RamMap::new(4096 << 20).unwrap(), 0x1_0000).unwrap();
        let plan = load(&img, &spec(Format::Multiboot), ram, Extras::default()).unwrap();
        let info = plan.segments[1].data.bytes();
        let u32_at = |at: usize| u32::from_le_bytes(info[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(info[at..at + 8].try_into().unwrap());
        let low_ram_end = RAM_HOLE_START - 0x1_0000;
        assert_eq!(u64::from(u32_at(8)), (low_ram_end - 0x10_0000) / 1024, "mem_upper: 1 MiB up to the hole");
        let (length, at) = (u32_at(44) as usize, u32_at(48) as u64 - MULTIBOOT_INFO_ADDRESS);
        assert_eq!(length, 3 * 24);
        let entries: Vec<_> = (0..3).map(|i| at as usize + i * 24).map(|e| (u64_at(e + 4), u64_at(e + 12))).collect();
        assert_eq!(entries, [(0, 0x9f000), (0x10_0000, low_ram_end - 0x10_0000), (HIGH_RAM_BASE, 1 << 30)]);
    }

    #[test]
    fn multiboot_elf_kernels_and_bad_headers() {
        let flags: u32 = 0;
        let mut code = Vec::new();
        for v in [MULTIBOOT_MAGIC, flags, 0u32.wrapping_sub(MULTIBOOT_MAGIC)] {
            code.extend_from_slice(&v.to_le_bytes());
        }
        code.push(0xf4);
        let img = elf_image(false, 0x10_0000, 0x10_000c, &code, 0);
        let plan = load(&img, &spec(Format::Multiboot), GuestRam::low(16 << 20), Extras::default()).unwrap();
        assert_eq!(plan.entry, 0x10_000c);
        assert_eq!(
            load(&[0x90; 64], &spec(Format::Multiboot), GuestRam::low(16 << 20), Extras::default()).unwrap_err(),
            ImageError::NoMultibootHeader
        );
        let mut bad = multiboot_aout(0x10_0000, &[0xf4], 0);
        bad[8] ^= 1;
        assert_eq!(
            load(&bad, &spec(Format::Multiboot), GuestRam::low(16 << 20), Extras::default()).unwrap_err(),
            ImageError::BadMultibootChecksum
        );
    }
}
