//! Multiboot (v1) kernels, loaded and entered as QEMU's `-kernel` does: the
//! kernel from its header's address fields (flag 16) or else its ELF program
//! headers, then the boot data: the information structure with the memory
//! sizes, a memory map, the command line (the kernel's name, a space, then the
//! appended text, as QEMU writes it: kernels take the first word as argv[0]),
//! the modules (QEMU's `-initrd`) and the boot loader's name. Entered in 32-bit
//! protected mode, paging off, EAX = 0x2BADB002 and EBX = the structure.
//!
//! Kernels may be linked anywhere, low memory included, so no address for the
//! boot data is safe for all of them: each piece goes where none of the
//! kernel's segments (its bytes or its zero fill) and no earlier piece lies.
//! The information goes at 0x9000 where that is free (where QEMU puts it), else
//! elsewhere in conventional memory, else above the kernel; modules go above
//! the kernel, page-aligned, as QEMU and GRUB place them and kernels expect.
//! What else the VMM writes into a VM is outside every place used here: its
//! setup area lies above `GuestRam::low_ram_end`, the ACPI tables in the
//! legacy area between conventional and extended memory (checked below).
//! When nothing fits, the refusal names what takes up the room.
//!
//! Every header field and length comes from the image or the VM's
//! description, so arithmetic on them is checked.

use crate::bundle::Bundle;
use crate::image::{bytes_at, u32_at, EntryMode, GuestRam, ImageError, LoadPlan, Segment, SegmentData};
use crate::place::{kernel_taken, place, End};
// Where they were first defined; the PVH loader places its boot data the same way.
pub use crate::place::{BootItem, Taken};
use alloc::vec;
use alloc::vec::Vec;

const HEADER_MAGIC: u32 = 0x1bad_b002;
/// What EAX holds when a Multiboot kernel starts.
pub const BOOTLOADER_MAGIC: u64 = 0x2bad_b002;
/// The Multiboot header must lie in this many bytes at the start of the file.
const SEARCH: usize = 8192;
/// Where the information goes when the kernel leaves it free, as on QEMU.
pub const PREFERRED_INFO_ADDRESS: u64 = 0x9000;
/// What the information's boot_loader_name says.
pub const BOOT_LOADER_NAME: &str = "Basalt";
/// More modules than any kernel is booted with; bounds what a VM list can
/// make the loader build.
pub const MAX_MODULES: usize = 64;

/// Conventional memory as the memory map reports it, less page 0: a pointer
/// to it would read as null.
const CONVENTIONAL: (u64, u64) = (0x1000, 0x9_f000);
const EXTENDED_START: u64 = 0x10_0000;
/// Every address in the information is 32 bits wide, the exclusive ends of
/// modules included, so nothing placed here reaches past this.
const ADDRESS_LIMIT: u64 = u32::MAX as u64;

// The VMM writes the ACPI tables before the image; no boot data may go there.
const _: () = assert!(
    devices::layout::ACPI_TABLES >= CONVENTIONAL.1
        && devices::layout::ACPI_TABLES + devices::layout::ACPI_TABLES_SIZE <= EXTENDED_START
);

// The information structure's fields (Multiboot 0.6.96, section 3.3).
const INFO_SIZE: usize = 88;
const FLAGS: usize = 0;
const MEM_LOWER: usize = 4;
const MEM_UPPER: usize = 8;
const CMDLINE: usize = 16;
const MODS_COUNT: usize = 20;
const MODS_ADDR: usize = 24;
const MMAP_LENGTH: usize = 44;
const MMAP_ADDR: usize = 48;
const BOOT_LOADER_NAME_ADDR: usize = 64;
const FLAG_MEMORY: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODULES: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const FLAG_BOOT_LOADER_NAME: u32 = 1 << 9;
/// A memory map entry: size (u32, not counting itself), base, length, type.
const MMAP_ENTRY: usize = 24;
/// A module entry: mod_start, mod_end, string, reserved.
const MODULE_ENTRY: usize = 16;

/// A module as the kernel gets it: its bytes and its string (QEMU passes the
/// `-initrd` item as written: the file name, then any arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    pub data: &'a [u8],
    pub string: &'a str,
}

/// The modules as one bundle entry carries them: packed in the bundle format
/// (`crate::bundle`), each module's string as its entry name, in order.
pub fn pack_modules(modules: &[(alloc::string::String, Vec<u8>)]) -> Vec<u8> {
    crate::bundle::write(modules)
}

/// The modules `pack_modules` packed, borrowing their bytes.
pub fn unpack_modules(packed: &[u8]) -> Result<Vec<Module<'_>>, ImageError> {
    let bundle = Bundle::parse(packed).map_err(ImageError::ModuleList)?;
    let modules: Vec<Module> = bundle.entries().map(|(string, data)| Module { data, string }).collect();
    if modules.len() > MAX_MODULES {
        return Err(ImageError::TooManyModules { count: modules.len(), max: MAX_MODULES });
    }
    Ok(modules)
}

/// What a Multiboot boot needs besides the kernel image.
#[derive(Clone, Copy, Debug, Default)]
pub struct Boot<'a> {
    /// The kernel's name: the command line's first word.
    pub name: &'a str,
    /// What follows the name on the command line.
    pub cmdline: &'a str,
    pub modules: &'a [Module<'a>],
}

/// The offset of the Multiboot header in the first 8 KiB of `image`.
pub fn header_offset(image: &[u8]) -> Result<usize, ImageError> {
    let search = &image[..image.len().min(SEARCH)];
    // The magic, flags and checksum must all lie in the searched bytes.
    let header = (0..search.len().saturating_sub(11))
        .step_by(4)
        .find(|&at| bytes_at(search, at).map(u32::from_le_bytes) == Some(HEADER_MAGIC))
        .ok_or(ImageError::NoMultibootHeader)?;
    let flags = u32_at(image, header + 4, "Multiboot header")?;
    let checksum = u32_at(image, header + 8, "Multiboot header")?;
    if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        return Err(ImageError::BadMultibootChecksum);
    }
    Ok(header)
}

/// Whether `image` carries a Multiboot header (magic and a right checksum).
pub fn is_multiboot(image: &[u8]) -> bool {
    header_offset(image).is_ok()
}

/// Plans the boot of the Multiboot kernel `image` into `ram` with `boot`.
pub(crate) fn plan<'a>(image: &'a [u8], ram: &GuestRam, boot: &Boot<'a>) -> Result<LoadPlan<'a>, ImageError> {
    if boot.modules.len() > MAX_MODULES {
        return Err(ImageError::TooManyModules { count: boot.modules.len(), max: MAX_MODULES });
    }
    let mut plan = kernel(image)?;
    let memory = ram.low_ram_end;
    let mut taken = kernel_taken(&plan.segments, memory)?;
    let top = memory.min(ADDRESS_LIMIT);
    let kernel_end = taken.iter().map(|t| t.end).max().unwrap_or(0);
    let above_kernel = (kernel_end.max(EXTENDED_START), top);
    let extended = (EXTENDED_START, top);

    let mut module_addresses = Vec::with_capacity(boot.modules.len());
    for (i, module) in boot.modules.iter().enumerate() {
        let size = module.data.len() as u64;
        let at = place(&mut taken, size, &[above_kernel, extended, CONVENTIONAL], top, End::Low, BootItem::Module(i))?;
        module_addresses.push(at);
    }
    let layout = Layout::new(ram, boot)?;
    let windows =
        [(PREFERRED_INFO_ADDRESS, CONVENTIONAL.1), (CONVENTIONAL.0, PREFERRED_INFO_ADDRESS), above_kernel, extended];
    let info_at = place(&mut taken, layout.size as u64, &windows, top, End::Low, BootItem::Information)?;
    let info = layout.write(info_at, ram, boot, &module_addresses);

    for (module, &at) in boot.modules.iter().zip(&module_addresses) {
        if !module.data.is_empty() {
            plan.segments.push(Segment { guest_phys: at, data: SegmentData::Borrowed(module.data), zero_fill: 0 });
        }
    }
    plan.segments.push(Segment { guest_phys: info_at, data: SegmentData::Owned(info), zero_fill: 0 });
    plan.rax = BOOTLOADER_MAGIC;
    plan.rbx = info_at;
    Ok(plan)
}

/// The kernel's segments and entry point: the header's address fields when
/// flag 16 is set, else the ELF program headers.
fn kernel(image: &[u8]) -> Result<LoadPlan<'_>, ImageError> {
    let header = header_offset(image)?;
    let flags = u32_at(image, header + 4, "Multiboot header")?;
    if flags & (1 << 2) != 0 {
        return Err(ImageError::UnsupportedMultiboot("a video mode is requested (flag 2)"));
    }
    if flags & (1 << 16) == 0 {
        let plan = crate::image::elf(image)?;
        if plan.mode != EntryMode::Protected {
            return Err(ImageError::UnsupportedMultiboot("the kernel is ELF64; Multiboot v1 kernels are 32-bit"));
        }
        return Ok(plan);
    }
    let field = |n: usize| u32_at(image, header + 12 + 4 * n, "Multiboot address fields").map(u64::from);
    let (header_addr, load_addr, load_end, bss_end, entry) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    // header_addr is where the header's file offset lands, which fixes the
    // file offset that goes to load_addr.
    let before_header = header_addr
        .checked_sub(load_addr)
        .ok_or(ImageError::UnsupportedMultiboot("load_addr lies above header_addr"))?;
    let file_start = (header as u64)
        .checked_sub(before_header)
        .ok_or(ImageError::UnsupportedMultiboot("load_addr lies before the start of the file (header_addr)"))?;
    let file_end = match load_end {
        0 => Some(image.len() as u64),
        _ => {
            let length = load_end
                .checked_sub(load_addr)
                .ok_or(ImageError::UnsupportedMultiboot("load_end_addr lies below load_addr"))?;
            file_start.checked_add(length)
        }
    };
    let data = usize::try_from(file_start)
        .ok()
        .zip(file_end.and_then(|end| usize::try_from(end).ok()))
        .and_then(|(start, end)| image.get(start..end))
        .ok_or(ImageError::Truncated("the Multiboot load range (load_end_addr) lies past its end"))?;
    let data_end = load_addr
        .checked_add(data.len() as u64)
        .ok_or(ImageError::UnsupportedMultiboot("the load range runs past the top of the address space"))?;
    let zero_fill = match bss_end {
        0 => 0,
        _ => bss_end
            .checked_sub(data_end)
            .ok_or(ImageError::UnsupportedMultiboot("bss_end_addr lies below load_end_addr"))?,
    };
    Ok(LoadPlan {
        segments: vec![Segment { guest_phys: load_addr, data: SegmentData::Borrowed(data), zero_fill }],
        entry,
        mode: EntryMode::Protected,
        rax: 0,
        rbx: 0,
        rsi: 0,
    })
}

/// Where each part of the information block lies, as offsets in it: the
/// structure, the memory map, the module list, then the strings.
struct Layout {
    map: Vec<(u64, u64)>,
    modules_at: usize,
    strings_at: usize,
    size: usize,
}

impl Layout {
    fn new(ram: &GuestRam, boot: &Boot) -> Result<Layout, ImageError> {
        // mem_upper is RAM from 1 MiB up to the first hole, so only low RAM;
        // the map also lists RAM above the hole.
        let extended = ram.low_ram_end.saturating_sub(EXTENDED_START);
        let map: Vec<(u64, u64)> =
            [(0, CONVENTIONAL.1), (EXTENDED_START, extended)].into_iter().chain(ram.high).collect();
        let too_long = ImageError::UnsupportedMultiboot("the command line and module strings are too long");
        let modules_at = INFO_SIZE + map.len() * MMAP_ENTRY;
        let strings_at = boot.modules.len().checked_mul(MODULE_ENTRY).and_then(|n| n.checked_add(modules_at));
        // Each string ends in a NUL; the command line's extra byte is the
        // space between the name and the rest.
        let strings = boot
            .modules
            .iter()
            .map(|m| m.string.len())
            .chain([boot.name.len(), boot.cmdline.len(), BOOT_LOADER_NAME.len()])
            .try_fold(0usize, |sum, n| sum.checked_add(n)?.checked_add(1));
        let strings_at = strings_at.ok_or(too_long.clone())?;
        let size = strings.and_then(|n| n.checked_add(strings_at)).ok_or(too_long)?;
        Ok(Layout { map, modules_at, strings_at, size })
    }

    /// The block for guest address `base`. `place` put it and every module
    /// below `ADDRESS_LIMIT`, so every address here fits 32 bits.
    fn write(&self, base: u64, ram: &GuestRam, boot: &Boot, module_addresses: &[u64]) -> Vec<u8> {
        let address = |offset: usize| (base + offset as u64) as u32;
        let mut block = vec![0u8; self.size];
        let put = |block: &mut Vec<u8>, at: usize, value: u32| block[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let flags = FLAG_MEMORY | FLAG_CMDLINE | FLAG_MODULES | FLAG_MMAP | FLAG_BOOT_LOADER_NAME;
        put(&mut block, FLAGS, flags);
        put(&mut block, MEM_LOWER, 640);
        let extended = ram.low_ram_end.saturating_sub(EXTENDED_START);
        put(&mut block, MEM_UPPER, u32::try_from(extended / 1024).unwrap_or(u32::MAX));
        put(&mut block, MMAP_LENGTH, (self.map.len() * MMAP_ENTRY) as u32);
        put(&mut block, MMAP_ADDR, address(INFO_SIZE));
        for (i, &(start, length)) in self.map.iter().enumerate() {
            let at = INFO_SIZE + i * MMAP_ENTRY;
            put(&mut block, at, (MMAP_ENTRY - 4) as u32);
            block[at + 4..at + 12].copy_from_slice(&start.to_le_bytes());
            block[at + 12..at + 20].copy_from_slice(&length.to_le_bytes());
            put(&mut block, at + 20, 1);
        }
        // The strings, each followed by a NUL (the block is zeroed).
        let mut next = self.strings_at;
        let mut string = |block: &mut Vec<u8>, parts: &[&str]| {
            let at = next;
            for part in parts {
                block[next..next + part.len()].copy_from_slice(part.as_bytes());
                next += part.len();
            }
            next += 1;
            address(at)
        };
        let cmdline = string(&mut block, &[boot.name, " ", boot.cmdline]);
        put(&mut block, CMDLINE, cmdline);
        put(&mut block, MODS_COUNT, boot.modules.len() as u32);
        put(&mut block, MODS_ADDR, address(self.modules_at));
        for (i, (module, &start)) in boot.modules.iter().zip(module_addresses).enumerate() {
            let at = self.modules_at + i * MODULE_ENTRY;
            // mod_end is exclusive, as QEMU and GRUB write it.
            put(&mut block, at, start as u32);
            put(&mut block, at + 4, (start + module.data.len() as u64) as u32);
            let text = string(&mut block, &[module.string]);
            put(&mut block, at + 8, text);
        }
        let name = string(&mut block, &[BOOT_LOADER_NAME]);
        put(&mut block, BOOT_LOADER_NAME_ADDR, name);
        block
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bundle::BundleError;
    use crate::image::tests::{elf_image, spec};
    use crate::image::{load, Extras};
    use crate::manifest::Format;
    use alloc::string::{String, ToString};

    const MIB: u64 = 1 << 20;

    /// A Multiboot kernel using the address fields (flag 16), as small test
    /// kernels do: header at `load_addr`, entry right after it.
    pub(crate) fn multiboot_aout(load_addr: u32, code: &[u8], bss: u32) -> Vec<u8> {
        let flags: u32 = (1 << 16) | 1;
        let mut img = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
            load_addr,                                // header_addr
            load_addr,                                // load_addr
            load_addr + 32 + code.len() as u32,       // load_end_addr
            load_addr + 32 + code.len() as u32 + bss, // bss_end_addr
            load_addr + 32,                           // entry
        ] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.extend_from_slice(code);
        img
    }

    /// A Multiboot ELF32 kernel with one PT_LOAD segment per (paddr, file
    /// bytes, memory size), the header at the start of the first; entered
    /// right after the header.
    fn multiboot_elf(segments: &[(u32, usize, u32)]) -> Vec<u8> {
        let (header_size, entry_size) = (52usize, 32usize);
        let table_end = header_size + entry_size * segments.len();
        let mut f = elf_image(false, 0, u64::from(segments[0].0) + 12, &[], 0);
        f.truncate(header_size);
        f[44..46].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        let mut offset = table_end;
        for &(paddr, file_size, memory_size) in segments {
            let mut ph = [0u8; 32];
            ph[0..4].copy_from_slice(&1u32.to_le_bytes());
            ph[4..8].copy_from_slice(&(offset as u32).to_le_bytes());
            ph[12..16].copy_from_slice(&paddr.to_le_bytes());
            ph[16..20].copy_from_slice(&(file_size as u32).to_le_bytes());
            ph[20..24].copy_from_slice(&memory_size.to_le_bytes());
            f.extend_from_slice(&ph);
            offset += file_size;
        }
        for (i, &(_, file_size, _)) in segments.iter().enumerate() {
            let mut bytes = vec![0xf4u8; file_size];
            if i == 0 {
                for (n, v) in [HEADER_MAGIC, 0, 0u32.wrapping_sub(HEADER_MAGIC)].into_iter().enumerate() {
                    bytes[4 * n..4 * n + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            f.extend_from_slice(&bytes);
        }
        f
    }

    fn boot<'a>(image: &'a [u8], memory: u64, extras: Extras<'a>) -> Result<LoadPlan<'a>, ImageError> {
        load(image, &spec(Format::Multiboot), GuestRam::low(memory), extras)
    }

    fn u32_in(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_in(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    /// The information block and where it lies.
    fn information<'p>(plan: &'p LoadPlan) -> (u64, &'p [u8]) {
        let block = plan.segments.iter().find(|s| s.guest_phys == plan.rbx).expect("a segment at EBX");
        (block.guest_phys, block.data.bytes())
    }

    /// The NUL-terminated string at guest address `at` in `block` (at `base`).
    fn string_in(block: &[u8], base: u64, at: u32) -> String {
        let from = (u64::from(at) - base) as usize;
        let length = block[from..].iter().position(|&b| b == 0).expect("a NUL");
        String::from_utf8(block[from..from + length].to_vec()).unwrap()
    }

    #[test]
    fn multiboot_kernels_load_like_qemu_loads_them() {
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0x40);
        let plan = boot(&img, 16 * MIB, Extras::default()).unwrap();
        assert_eq!((plan.entry, plan.mode), (0x10_0020, EntryMode::Protected));
        assert_eq!((plan.rax, plan.rbx), (0x2bad_b002, PREFERRED_INFO_ADDRESS));
        assert_eq!(plan.segments[0].guest_phys, 0x10_0000);
        assert_eq!(plan.segments[0].data.bytes().len(), 36);
        assert_eq!(plan.segments[0].zero_fill, 0x40);
        let (_, info) = information(&plan);
        assert_eq!(u32_in(info, FLAGS) & 1, 1, "memory fields valid");
        assert_eq!(u32_in(info, MEM_UPPER), 15 * 1024, "mem_upper in KiB");
    }

    #[test]
    fn multiboot_memory_info_leaves_out_the_mmio_hole() {
        use devices::layout::{RamMap, HIGH_RAM_BASE, RAM_HOLE_START};
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0);
        let ram = GuestRam::new(&RamMap::new(4096 * MIB).unwrap(), 0x1_0000).unwrap();
        let plan = load(&img, &spec(Format::Multiboot), ram, Extras::default()).unwrap();
        let (base, info) = information(&plan);
        let low_ram_end = RAM_HOLE_START - 0x1_0000;
        assert_eq!(
            u64::from(u32_in(info, MEM_UPPER)),
            (low_ram_end - 0x10_0000) / 1024,
            "mem_upper: 1 MiB up to the hole"
        );
        let (length, at) = (u32_in(info, MMAP_LENGTH) as usize, (u64::from(u32_in(info, MMAP_ADDR)) - base) as usize);
        assert_eq!(length, 3 * 24);
        let entries: Vec<_> =
            (0..3).map(|i| at + i * 24).map(|e| (u64_in(info, e + 4), u64_in(info, e + 12))).collect();
        assert_eq!(entries, [(0, 0x9f000), (0x10_0000, low_ram_end - 0x10_0000), (HIGH_RAM_BASE, 1 << 30)]);
    }

    #[test]
    fn multiboot_elf_kernels_and_bad_headers() {
        let flags: u32 = 0;
        let mut code = Vec::new();
        for v in [HEADER_MAGIC, flags, 0u32.wrapping_sub(HEADER_MAGIC)] {
            code.extend_from_slice(&v.to_le_bytes());
        }
        code.push(0xf4);
        let img = elf_image(false, 0x10_0000, 0x10_000c, &code, 0);
        let plan = boot(&img, 16 * MIB, Extras::default()).unwrap();
        assert_eq!(plan.entry, 0x10_000c);
        assert_eq!(boot(&[0x90; 64], 16 * MIB, Extras::default()).unwrap_err(), ImageError::NoMultibootHeader);
        let mut bad = multiboot_aout(0x10_0000, &[0xf4], 0);
        bad[8] ^= 1;
        assert_eq!(boot(&bad, 16 * MIB, Extras::default()).unwrap_err(), ImageError::BadMultibootChecksum);
        assert!(is_multiboot(&img) && !is_multiboot(&bad) && !is_multiboot(&[]));
    }

    /// The whole information block, byte for byte, for a kernel at 1 MiB with
    /// a command line and two modules (one of them empty).
    #[test]
    fn the_information_block_is_laid_out_byte_for_byte() {
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0x40);
        let modules = [Module { data: b"hello", string: "one.txt a,b" }, Module { data: b"", string: "empty" }];
        let extras = Extras { name: "kernel.elf", cmdline: "quiet x=1", modules: &modules, ..Extras::default() };
        let plan = boot(&img, 16 * MIB, extras).unwrap();
        // The kernel ends at 0x10_0064: the modules go on the pages after it,
        // the empty one on a page of its own.
        let module = |at: u64| plan.segments.iter().find(|s| s.guest_phys == at).map(|s| s.data.bytes());
        assert_eq!(module(0x10_1000), Some(&b"hello"[..]));
        assert_eq!(plan.segments.len(), 3, "kernel, one non-empty module, information");
        let (base, info) = information(&plan);
        assert_eq!(base, 0x9000);

        let mut expected = Vec::new();
        let u32s = |out: &mut Vec<u8>, values: &[u32]| values.iter().for_each(|v| out.extend(v.to_le_bytes()));
        let map_at = 0x9000 + 88;
        let modules_at = map_at + 2 * 24;
        let strings_at = modules_at + 2 * 16;
        let cmdline_at = strings_at;
        let one_at = cmdline_at + "kernel.elf quiet x=1\0".len() as u32;
        let empty_at = one_at + "one.txt a,b\0".len() as u32;
        let name_at = empty_at + "empty\0".len() as u32;
        // flags: memory, command line, modules, memory map, boot loader name.
        u32s(&mut expected, &[0b10_0100_1101, 640, (15 * 1024), 0, cmdline_at, 2, modules_at]);
        u32s(&mut expected, &[0; 4]); // symbols
        u32s(&mut expected, &[48, map_at, 0, 0, 0, name_at, 0]); // map, drives, config, name, APM
        expected.resize(88, 0); // VBE and framebuffer
        for (start, length) in [(0u64, 0x9f000u64), (0x10_0000, 15 * MIB)] {
            u32s(&mut expected, &[20]);
            expected.extend(start.to_le_bytes());
            expected.extend(length.to_le_bytes());
            u32s(&mut expected, &[1]);
        }
        u32s(&mut expected, &[0x10_1000, 0x10_1005, one_at, 0, 0x10_2000, 0x10_2000, empty_at, 0]);
        expected.extend_from_slice(b"kernel.elf quiet x=1\0one.txt a,b\0empty\0Basalt\0");
        assert_eq!(info, &expected[..]);
        assert_eq!(string_in(info, base, cmdline_at), "kernel.elf quiet x=1");
    }

    #[test]
    fn the_command_line_is_the_name_a_space_and_the_rest_as_qemu_writes_it() {
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0);
        for (name, cmdline, expected) in
            [("k.bin", "", "k.bin "), ("x86/apic.flat", "-smp 2 arg", "x86/apic.flat -smp 2 arg"), ("", "a", " a")]
        {
            let plan = boot(&img, 16 * MIB, Extras { name, cmdline, ..Extras::default() }).unwrap();
            let (base, info) = information(&plan);
            assert_ne!(u32_in(info, FLAGS) & FLAG_CMDLINE, 0);
            assert_eq!(string_in(info, base, u32_in(info, CMDLINE)), expected);
            assert_eq!(string_in(info, base, u32_in(info, BOOT_LOADER_NAME_ADDR)), "Basalt");
            assert_eq!((u32_in(info, MODS_COUNT), u32_in(info, FLAGS) & FLAG_MODULES), (0, FLAG_MODULES));
        }
    }

    /// The kernel from 0x8000 to 0xda30 that had its code clobbered: the
    /// information now goes on the first free page above it.
    #[test]
    fn a_kernel_over_0x9000_keeps_its_bytes() {
        let img = multiboot_aout(0x8000, &[0x90; 0x5a10], 0);
        let plan = boot(&img, 16 * MIB, Extras { name: "low", ..Extras::default() }).unwrap();
        assert_eq!(plan.segments[0].checked_end(), Some(0xda30));
        assert_eq!(plan.rbx, 0xe000);
        // With a zero fill up to 0x9f000: below the kernel; the module above 1 MiB.
        let img = multiboot_aout(0x8000, &[0x90; 0x5a10], 0x9f000 - 0xda30);
        let modules = [Module { data: &[1; 0x1800], string: "m" }];
        let plan = boot(&img, 16 * MIB, Extras { modules: &modules, ..Extras::default() }).unwrap();
        assert_eq!(plan.segments[1].guest_phys, 0x10_0000, "the module: the first page of extended memory");
        assert_eq!(plan.rbx, 0x1000, "the information: below the kernel");
        // Conventional memory full: the information goes above the kernel.
        let img = multiboot_elf(&[(0x1000, 0x100, 0x7000), (0x8000, 0x100, 0x9f000 - 0x8000), (0x10_0000, 0x10, 0x10)]);
        let plan = boot(&img, 16 * MIB, Extras::default()).unwrap();
        assert_eq!(plan.rbx, 0x10_1000);
        // The first gap large enough.
        let img = multiboot_elf(&[(0x3000, 0x100, 0x100), (0x9000, 0x100, 0x9f000 - 0x9000), (0x10_0000, 0x10, 0x10)]);
        let plan = boot(&img, 16 * MIB, Extras::default()).unwrap();
        assert_eq!(plan.rbx, 0x1000);
        let long_line = "x".repeat(0x2000);
        let plan = boot(&img, 16 * MIB, Extras { cmdline: &long_line, ..Extras::default() }).unwrap();
        assert_eq!(plan.rbx, 0x4000, "too long for 0x1000..0x3000");
    }

    #[test]
    fn modules_go_page_aligned_above_the_kernel_in_order() {
        let img = multiboot_elf(&[(0x20_0000, 0x100, 0x1_0123)]);
        let one = [7u8; 0x2001];
        let modules = [Module { data: &one, string: "one" }, Module { data: b"two", string: "two" }];
        let plan = boot(&img, 16 * MIB, Extras { modules: &modules, ..Extras::default() }).unwrap();
        let starts: Vec<u64> = plan.segments[1..3].iter().map(|s| s.guest_phys).collect();
        assert_eq!(starts, [0x21_1000, 0x21_4000]);
        let (base, info) = information(&plan);
        assert_eq!(base, 0x9000);
        let list = (u64::from(u32_in(info, MODS_ADDR)) - base) as usize;
        assert_eq!(u32_in(info, MODS_COUNT), 2);
        assert_eq!((u32_in(info, list), u32_in(info, list + 4)), (0x21_1000, 0x21_3001), "mod_end is exclusive");
        assert_eq!(string_in(info, base, u32_in(info, list + 8)), "one");
        assert_eq!(string_in(info, base, u32_in(info, list + 16 + 8)), "two");
        // Where the kernel leaves no room above it, below it (above 1 MiB).
        let img = multiboot_elf(&[(0x20_0000, 0x100, (14 * MIB) as u32)]);
        let plan = boot(&img, 16 * MIB, Extras { modules: &modules[1..], ..Extras::default() }).unwrap();
        assert_eq!(plan.segments[1].guest_phys, 0x10_0000);
    }

    #[test]
    fn a_kernel_covering_every_place_is_refused_naming_what_is_there() {
        // Conventional memory and extended memory up to the end of RAM.
        let img = multiboot_elf(&[(0x1000, 0x100, 0x9e000), (0x10_0000, 0x10, 15 * MIB as u32)]);
        let err = boot(&img, 16 * MIB, Extras::default()).unwrap_err();
        let ImageError::NoRoom { what, areas, taken, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*what, &areas[..]), (BootItem::Information, &[(0x1000, 0x9f000), (0x10_0000, 16 * MIB)][..]));
        assert_eq!(taken.len(), 4);
        assert_eq!(
            err.to_string(),
            "no room for the Multiboot information (0x91 bytes, page-aligned) in guest RAM 0x1000..0x9f000 or \
             0x100000..0x1000000: taken by the kernel's bytes 0x1000..0x1100, the kernel's zero fill (bss) \
             0x1100..0x9f000, the kernel's bytes 0x100000..0x100010, the kernel's zero fill (bss) 0x100010..0x1000000"
        );
        // A module that fits nowhere names the module; a module too large
        // for a free VM says so.
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0);
        let big = vec![0u8; (16 * MIB) as usize];
        let modules = [Module { data: b"a", string: "a" }, Module { data: &big, string: "big" }];
        let err = boot(&img, 16 * MIB, Extras { modules: &modules, ..Extras::default() }).unwrap_err();
        assert!(
            err.to_string().starts_with("no room for module 2 (0x1000000 bytes, page-aligned) in guest RAM 0x1000..0x9f000 or 0x100000..0x1000000: taken by the kernel's bytes 0x100000..0x100024, module 1 0x101000..0x101001"),
            "{err}"
        );
        // With extended memory full, a module goes in conventional memory.
        let plan = boot(&img, 0x10_0000 + 0x24, Extras { modules: &modules[..1], ..Extras::default() }).unwrap();
        assert_eq!((plan.segments[1].guest_phys, plan.rbx), (0x1000, 0x9000));
    }

    #[test]
    fn the_kernel_not_fitting_is_named_before_the_boot_data() {
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0x10_0000);
        assert_eq!(
            boot(&img, 0x18_0000, Extras::default()).unwrap_err(),
            ImageError::DoesNotFit { start: 0x10_0000, end: 0x20_0024, memory: 0x18_0000 }
        );
    }

    #[test]
    fn nothing_goes_at_or_above_4_gib_whatever_the_ram() {
        // A kernel filling everything below 4 GiB but the last page (less a byte).
        let img = multiboot_elf(&[(0x1000, 0x10, 0x9f000 - 0x1000), (0x10_0000, 0x10, 0xfff0_0000 - 0x1000)]);
        let plan = boot(&img, u64::MAX, Extras::default()).unwrap();
        assert_eq!(plan.rbx, 0xffff_f000);
        let modules = [Module { data: &[1; 0x10], string: "m" }];
        let err = boot(&img, u64::MAX, Extras { modules: &modules, ..Extras::default() }).unwrap_err();
        assert!(matches!(err, ImageError::NoRoom { what: BootItem::Information, .. }), "{err:?}");
    }

    #[test]
    fn modules_are_for_multiboot_kernels_and_at_most_max_modules() {
        let modules = [Module { data: b"x", string: "x" }];
        let extras = Extras { modules: &modules, ..Extras::default() };
        let elf = elf_image(true, 0x20_0000, 0x20_0000, &[0xf4], 0);
        assert_eq!(
            load(&elf, &spec(Format::Elf), GuestRam::low(16 * MIB), extras),
            Err(ImageError::ModulesNeedMultiboot)
        );
        let many = vec![Module { data: b"x", string: "x" }; MAX_MODULES + 1];
        let img = multiboot_aout(0x10_0000, &[0xf4; 4], 0);
        let err = boot(&img, 16 * MIB, Extras { modules: &many, ..Extras::default() }).unwrap_err();
        assert_eq!(err.to_string(), "65 modules; at most 64 are taken");
        assert!(boot(&img, 16 * MIB, Extras { modules: &many[1..], ..Extras::default() }).is_ok());
    }

    #[test]
    fn modules_pack_and_unpack_in_order_with_repeated_strings() {
        let packed = pack_modules(&[
            ("a.bin x=1".to_string(), b"first".to_vec()),
            ("a.bin x=1".to_string(), b"second".to_vec()),
            ("".to_string(), Vec::new()),
        ]);
        let modules = unpack_modules(&packed).unwrap();
        assert_eq!(
            modules,
            [
                Module { data: b"first", string: "a.bin x=1" },
                Module { data: b"second", string: "a.bin x=1" },
                Module { data: b"", string: "" }
            ]
        );
        assert_eq!(unpack_modules(b"not packed").unwrap_err(), ImageError::ModuleList(BundleError::NotABundle));
        assert_eq!(
            unpack_modules(&packed[..packed.len() - 1]).unwrap_err().to_string(),
            "the Multiboot module list is damaged: bundle entry 2 runs past the end of the ramdisk"
        );
        let many: Vec<(String, Vec<u8>)> = (0..=MAX_MODULES).map(|i| (i.to_string(), Vec::new())).collect();
        assert!(matches!(unpack_modules(&pack_modules(&many)), Err(ImageError::TooManyModules { count: 65, .. })));
    }

    #[test]
    fn formats_are_told_apart_from_the_file() {
        use crate::image::detect_format;
        let bz = crate::linux::tests::bzimage(100);
        assert_eq!(detect_format(&bz), Some(Format::Linux));
        assert_eq!(detect_format(&multiboot_aout(0x10_0000, &[0xf4], 0)), Some(Format::Multiboot));
        assert_eq!(detect_format(&multiboot_elf(&[(0x10_0000, 0x20, 0x20)])), Some(Format::Multiboot));
        assert_eq!(detect_format(&elf_image(false, 0x10_0000, 0x10_0000, &[0xf4], 0)), Some(Format::Elf));
        // A header past the first 8 KiB does not count.
        let mut late = vec![0u8; 8192];
        late.extend(multiboot_aout(0x10_0000, &[0xf4], 0));
        assert_eq!(detect_format(&late), None);
        assert_eq!(detect_format(b"MZ"), None);
        assert_eq!(detect_format(&[]), None);
    }
}
