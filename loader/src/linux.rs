//! Linux's x86 boot protocol (Documentation/arch/x86/boot.rst): checking a bzImage
//! and planning a 64-bit boot: the protected-mode kernel where it prefers to run,
//! the zero page (boot_params) with the e820 map, the command line and the
//! initrd, and the 64-bit entry point with RSI pointing at the zero page.
//!
//! A Linux kernel may also come uncompressed, as the vmlinux ELF file, which
//! `crate::pvh` boots through its PVH entry. Both are `format=linux`: what
//! makes a VM a Linux VM (initrd, command line, console, devices) is the
//! same, and the file says which protocol it speaks (`parse_kernel`), as
//! QEMU's `-kernel` tells them apart.
//!
//! The setup header comes from the guest image, so arithmetic on its fields is
//! checked: a field that would wrap or point outside the image or the VM's
//! memory is an error, never a panic.

use crate::image::{bytes_at, EntryMode, GuestRam, ImageError, LoadPlan, Segment, SegmentData};
use crate::place::BootItem;
use alloc::vec;
use alloc::vec::Vec;

/// The setup-header fields that locate a bzImage's parts, for whoever reads
/// one (xtask unpacks the compressed payload with them). Offsets in the
/// image and in the zero page: the header starts at 0x1f1 in both.
pub mod header {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    /// payload_offset and payload_length came with boot protocol 2.08.
    pub const PAYLOAD_OFFSET: usize = 0x248;
    pub const PAYLOAD_LENGTH: usize = 0x24c;
}

use header::{HEADER, SETUP_SECTS, VERSION};
const SYSSIZE: usize = 0x1f4;
const BOOT_FLAG: usize = 0x1fe;
const JUMP: usize = 0x200;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
const ACPI_RSDP_ADDR: usize = 0x070;
const EXT_RAMDISK_IMAGE: usize = 0x0c0;
const EXT_RAMDISK_SIZE: usize = 0x0c4;
const EXT_CMD_LINE_PTR: usize = 0x0c8;
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;

const LOADED_HIGH: u8 = 1 << 0;
const XLF_KERNEL_64: u16 = 1 << 0;
/// Protocol 2.12 brought xloadflags, which says whether the 64-bit entry exists.
const MIN_VERSION: u16 = 0x020c;
/// The 64-bit entry point's offset in the protected-mode kernel.
const ENTRY_64: u64 = 0x200;
/// Where a kernel goes at the lowest: below is the BIOS and legacy area.
const LOWEST_LOAD: u64 = 0x10_0000;

/// Where the VMM puts the zero page and the command line (low memory Linux
/// leaves alone until it has read them).
pub const ZERO_PAGE: u64 = 0x7000;
pub const COMMAND_LINE: u64 = 0x20000;
const ZERO_PAGE_SIZE: usize = 4096;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;

// Offsets up to INIT_SIZE + 4 are in every image `parse` accepts and in the
// zero page; these return 0 past the end rather than panic.
fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    bytes_at(b, at).map_or(0, u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    bytes_at(b, at).map_or(0, u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    bytes_at(b, at).map_or(0, u64::from_le_bytes)
}
fn put32(b: &mut [u8; ZERO_PAGE_SIZE], at: usize, v: u32) {
    put(b, at, &v.to_le_bytes());
}
fn put(b: &mut [u8; ZERO_PAGE_SIZE], at: usize, bytes: &[u8]) {
    if let Some(to) = b.get_mut(at..).and_then(|rest| rest.get_mut(..bytes.len())) {
        to.copy_from_slice(bytes);
    }
}

/// A checked bzImage.
#[derive(Debug, Clone, Copy)]
pub struct BzImage<'a> {
    image: &'a [u8],
    /// The 32/64-bit kernel after the real-mode setup sectors.
    pub kernel: &'a [u8],
    pub version: u16,
    pub pref_address: u64,
    pub init_size: u64,
    pub alignment: u64,
    pub relocatable: bool,
    pub cmdline_max: u32,
    pub initrd_max: u64,
}

/// Whether `image` has the boot sector's flag and the boot-protocol header
/// ("HdrS") a Linux kernel image carries; `parse` checks the rest.
pub fn has_boot_header(image: &[u8]) -> bool {
    u16_at(image, BOOT_FLAG) == 0xaa55 && image.get(HEADER..HEADER + 4) == Some(b"HdrS")
}

pub fn parse(image: &[u8]) -> Result<BzImage<'_>, ImageError> {
    if image.len() < INIT_SIZE + 4 {
        return Err(ImageError::NotBzImage("shorter than a setup header"));
    }
    if !has_boot_header(image) {
        return Err(ImageError::NotBzImage("no boot-protocol header (HdrS)"));
    }
    let version = u16_at(image, VERSION);
    if version < MIN_VERSION {
        return Err(ImageError::NotBzImage("boot protocol older than 2.12 (no 64-bit entry)"));
    }
    if u8_at(image, LOADFLAGS) & LOADED_HIGH == 0 {
        return Err(ImageError::NotBzImage("a zImage, not a bzImage (not loaded high)"));
    }
    if u16_at(image, XLOADFLAGS) & XLF_KERNEL_64 == 0 {
        return Err(ImageError::NotBzImage("the kernel has no 64-bit entry point"));
    }
    let setup_sects = match u8_at(image, SETUP_SECTS) {
        0 => 4,
        n => usize::from(n),
    };
    let kernel_start = (setup_sects + 1) * 512;
    let kernel = image
        .get(kernel_start..)
        .filter(|k| !k.is_empty())
        .ok_or(ImageError::Truncated("the bzImage kernel (setup_sects) lies past its end"))?;
    // The file may carry more (a signature), never less.
    if u64::from(u32_at(image, SYSSIZE)) * 16 > kernel.len() as u64 {
        return Err(ImageError::Truncated("the bzImage kernel (syssize) runs past its end"));
    }
    Ok(BzImage {
        image,
        kernel,
        version,
        pref_address: u64_at(image, PREF_ADDRESS),
        init_size: u32_at(image, INIT_SIZE).into(),
        alignment: u64::from(u32_at(image, KERNEL_ALIGNMENT)).max(0x1000),
        relocatable: u8_at(image, RELOCATABLE) != 0,
        cmdline_max: u32_at(image, CMDLINE_SIZE),
        initrd_max: u32_at(image, INITRD_ADDR_MAX).into(),
    })
}

/// A Linux kernel, as its file says it boots.
#[derive(Debug, Clone)]
pub enum Kernel<'a> {
    /// The compressed kernel with its real-mode setup, booted at its 64-bit entry.
    BzImage(BzImage<'a>),
    /// The uncompressed ELF kernel, booted at its PVH entry or its 64-bit
    /// one (`VmlinuxEntry`).
    Vmlinux(crate::pvh::Vmlinux<'a>),
}

/// Which entry a vmlinux boots through (`linux-entry=` in the manifest); a
/// bzImage always boots at its 64-bit entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmlinuxEntry {
    /// The PVH entry where the kernel has the note, as Firecracker and
    /// cloud-hypervisor prefer it; else the 64-bit one.
    #[default]
    Preferred,
    /// The PVH entry (`linux-entry=pvh`): a kernel without the note is refused.
    Pvh,
    /// The 64-bit boot protocol at the ELF entry (`linux-entry=64bit`). Linux
    /// entered through PVH looks for Xen first, 256 more CPUID exits.
    Boot64,
}

/// Plans the boot of a Linux kernel of either kind through the entry `entry`
/// picks.
pub fn plan_kernel<'a>(
    kernel: &Kernel<'a>,
    entry: VmlinuxEntry,
    boot: &LinuxBoot<'a>,
) -> Result<LoadPlan<'a>, ImageError> {
    match (kernel, entry) {
        (Kernel::BzImage(bz), _) => plan(bz, boot),
        (Kernel::Vmlinux(vmlinux), VmlinuxEntry::Boot64) => plan_vmlinux(vmlinux, boot),
        (Kernel::Vmlinux(vmlinux), VmlinuxEntry::Preferred) if vmlinux.entry.is_none() => plan_vmlinux(vmlinux, boot),
        (Kernel::Vmlinux(vmlinux), _) => crate::pvh::plan(vmlinux, boot),
    }
}

/// Which Linux kernel `image` is: an ELF file is a vmlinux; anything else
/// must be a bzImage.
pub fn parse_kernel(image: &[u8]) -> Result<Kernel<'_>, ImageError> {
    if image.starts_with(&elf::abi::ELFMAGIC) {
        crate::pvh::parse(image).map(Kernel::Vmlinux)
    } else {
        parse(image).map(Kernel::BzImage)
    }
}

/// What the VMM knows about the VM a Linux kernel is booted into.
pub struct LinuxBoot<'a> {
    /// The kernel, initrd and boot data go below `ram.low_ram_end`; the e820
    /// map reports all of it.
    pub ram: GuestRam,
    pub cmdline: &'a str,
    pub initrd: Option<&'a [u8]>,
    /// Guest-physical address of the ACPI RSDP, if the VM has ACPI tables.
    pub rsdp: Option<u64>,
    /// Ranges of RAM to mark ACPI (table memory) in the e820 map.
    pub acpi_tables: Option<(u64, u64)>,
}

/// Plans a 64-bit boot of `bz`. The kernel goes to its preferred address (where
/// it runs without relocating) when that fits, else to the lowest aligned
/// address above 1 MiB if it can relocate.
pub fn plan<'a>(bz: &BzImage<'a>, boot: &LinuxBoot<'a>) -> Result<LoadPlan<'a>, ImageError> {
    // The kernel decompresses in place and needs init_size bytes from where it is loaded.
    let footprint = bz.init_size.max(bz.kernel.len() as u64);
    let memory = boot.ram.low_ram_end;
    let kernel_end = |load: u64| load.checked_add(footprint).filter(|&end| end <= memory);
    let preferred = bz.pref_address.max(LOWEST_LOAD);
    let load = match kernel_end(preferred) {
        None if bz.relocatable => LOWEST_LOAD.checked_next_multiple_of(bz.alignment).unwrap_or(u64::MAX),
        _ => preferred,
    };
    let kernel_end =
        kernel_end(load).ok_or(ImageError::DoesNotFit { start: load, end: load.saturating_add(footprint), memory })?;
    let cmdline = boot.cmdline.as_bytes();
    if cmdline.len() as u64 >= u64::from(bz.cmdline_max) {
        return Err(ImageError::CommandLineTooLong { length: cmdline.len(), max: bz.cmdline_max as usize });
    }
    let entry = load.checked_add(ENTRY_64).ok_or(ImageError::EntryOutside { entry: u64::MAX })?;
    let mut segments = vec![Segment { guest_phys: load, data: SegmentData::Borrowed(bz.kernel), zero_fill: 0 }];

    // The zero page: a copy of the setup header plus what a boot loader fills in.
    let mut zero_page = [0u8; ZERO_PAGE_SIZE];
    // The jump at 0x200 skips the rest of the setup header, so it gives its length.
    let header_end = (HEADER + usize::from(u8_at(bz.image, JUMP + 1))).min(ZERO_PAGE_SIZE);
    let header = bz.image.get(SETUP_SECTS..header_end).ok_or(ImageError::Truncated("the setup header"))?;
    put(&mut zero_page, SETUP_SECTS, header);
    let mut initrd_at = None;
    if let Some(initrd) = boot.initrd {
        // As high as possible below the kernel's limit and the end of RAM, page aligned.
        let limit = bz.initrd_max.saturating_add(1).min(memory);
        let size = initrd.len() as u64;
        let start = limit.checked_sub(size).map(|a| a & !0xfff).filter(|&a| a >= kernel_end);
        let Some(start) = start else {
            return Err(ImageError::DoesNotFit {
                start: kernel_end,
                end: kernel_end.saturating_add(size),
                memory: limit,
            });
        };
        segments.push(Segment { guest_phys: start, data: SegmentData::Borrowed(initrd), zero_fill: 0 });
        initrd_at = Some((start, size));
    }
    fill_boot_params(&mut zero_page, COMMAND_LINE, initrd_at, boot);
    segments.push(Segment { guest_phys: ZERO_PAGE, data: SegmentData::Owned(zero_page.to_vec()), zero_fill: 0 });
    let mut line = cmdline.to_vec();
    line.push(0);
    segments.push(Segment { guest_phys: COMMAND_LINE, data: SegmentData::Owned(line), zero_fill: 0 });
    Ok(LoadPlan { segments, entry, mode: EntryMode::Long, rax: 0, rbx: 0, rsi: ZERO_PAGE })
}

/// What a boot loader writes into the zero page besides the setup header:
/// who loaded the kernel, where its command line and initrd are, the ACPI
/// RSDP and the memory map.
fn fill_boot_params(zero_page: &mut [u8; ZERO_PAGE_SIZE], cmdline: u64, initrd: Option<(u64, u64)>, boot: &LinuxBoot) {
    zero_page[TYPE_OF_LOADER] = 0xff;
    put32(zero_page, CMD_LINE_PTR, cmdline as u32);
    put32(zero_page, EXT_CMD_LINE_PTR, (cmdline >> 32) as u32);
    if let Some((start, size)) = initrd {
        put32(zero_page, RAMDISK_IMAGE, start as u32);
        put32(zero_page, EXT_RAMDISK_IMAGE, (start >> 32) as u32);
        put32(zero_page, RAMDISK_SIZE, size as u32);
        put32(zero_page, EXT_RAMDISK_SIZE, (size >> 32) as u32);
    }
    if let Some(rsdp) = boot.rsdp {
        put(zero_page, ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
    }
    let map = e820(&boot.ram, boot.acpi_tables);
    zero_page[E820_ENTRIES] = map.len() as u8;
    for (i, (base, size, kind)) in map.iter().enumerate() {
        let at = E820_TABLE + i * 20;
        put(zero_page, at, &base.to_le_bytes());
        put(zero_page, at + 8, &size.to_le_bytes());
        put32(zero_page, at + 16, *kind);
    }
}

/// The setup-header version a vmlinux's zero page claims: 2.15, the
/// current one, whose fields (64-bit command line and initrd addresses)
/// Basalt fills in.
const VMLINUX_HEADER_VERSION: u16 = 0x020f;

/// Plans a boot of `kernel` (a vmlinux) through the 64-bit boot protocol, as
/// a bzImage's decompressor hands over to the kernel it unpacked: the
/// segments at their physical addresses, the entry at the ELF entry point
/// (`startup_64`) in long mode, RSI at a zero page. A vmlinux has no setup
/// header to copy, so the zero page gets one written here with what the
/// kernel itself reads of it (the boot flag, the "HdrS" magic and version,
/// the loader type, the command-line limit) and the boot loader's fields.
/// Any vmlinux boots this way, with or without the PVH note. The zero page
/// and the command line go together where the PVH start info would.
pub fn plan_vmlinux<'a>(kernel: &crate::pvh::Vmlinux<'a>, boot: &LinuxBoot<'a>) -> Result<LoadPlan<'a>, ImageError> {
    let crate::pvh::Placed { mut segments, mut taken, windows, top, initrd } =
        crate::pvh::place_kernel_and_initrd(kernel, boot)?;
    let cmdline = boot.cmdline.as_bytes();
    // The command line follows the zero page; its length was checked.
    let size = (ZERO_PAGE_SIZE + cmdline.len() + 1) as u64;
    let base = crate::place::place(&mut taken, size, &windows, top, crate::place::End::Low, BootItem::ZeroPage)?;
    let mut zero_page = [0u8; ZERO_PAGE_SIZE];
    put(&mut zero_page, BOOT_FLAG, &0xaa55u16.to_le_bytes());
    put(&mut zero_page, HEADER, b"HdrS");
    put(&mut zero_page, VERSION, &VMLINUX_HEADER_VERSION.to_le_bytes());
    zero_page[LOADFLAGS] = LOADED_HIGH;
    put32(&mut zero_page, CMDLINE_SIZE, crate::pvh::COMMAND_LINE_MAX as u32);
    // Below 4 GiB (`top`), with its command line: no overflow.
    fill_boot_params(&mut zero_page, base + ZERO_PAGE_SIZE as u64, initrd, boot);
    let mut block = zero_page.to_vec();
    block.extend_from_slice(cmdline);
    block.push(0);
    segments.push(Segment { guest_phys: base, data: SegmentData::Owned(block), zero_fill: 0 });
    Ok(LoadPlan { segments, entry: kernel.elf.entry, mode: EntryMode::Long, rax: 0, rbx: 0, rsi: base })
}

/// The guest's memory map: conventional memory, the legacy BIOS/VGA hole,
/// extended memory up to the end of usable low RAM with ACPI table memory carved
/// out of it, and the RAM above the MMIO hole. What lies between is left out, so
/// the guest takes it for neither RAM nor anything it may claim.
pub fn e820(ram: &GuestRam, acpi_tables: Option<(u64, u64)>) -> Vec<(u64, u64, u32)> {
    let memory = ram.low_ram_end;
    let mut map = vec![(0, 0x9fc00, E820_RAM), (0x9fc00, 0x400, E820_RESERVED), (0xe0000, 0x20000, E820_RESERVED)];
    match acpi_tables {
        Some((start, end)) if start >= 0x10_0000 && end <= memory && start < end => {
            map.push((0x10_0000, start - 0x10_0000, E820_RAM));
            map.push((start, end - start, E820_ACPI));
            if end < memory {
                map.push((end, memory - end, E820_RAM));
            }
        }
        _ => map.push((0x10_0000, memory.saturating_sub(0x10_0000), E820_RAM)),
    }
    map.extend(ram.high.map(|(base, size)| (base, size, E820_RAM)));
    map
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::string::ToString;

    /// A bzImage-shaped file: 4 setup sectors + `kernel_len` bytes of kernel.
    pub(crate) fn set32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bzimage(kernel_len: usize) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + kernel_len];
        img[SETUP_SECTS] = 4;
        set32(&mut img, SYSSIZE, (kernel_len / 16) as u32);
        img[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[JUMP] = 0xeb;
        img[JUMP + 1] = 0x6a; // header ends at 0x26c
        img[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
        img[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[LOADFLAGS] = LOADED_HIGH;
        set32(&mut img, INITRD_ADDR_MAX, 0x7fff_ffff);
        set32(&mut img, KERNEL_ALIGNMENT, 0x20_0000);
        img[RELOCATABLE] = 1;
        img[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&(XLF_KERNEL_64 | 2).to_le_bytes());
        set32(&mut img, CMDLINE_SIZE, 2047);
        img[PREF_ADDRESS..PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        set32(&mut img, INIT_SIZE, 0x200_0000);
        if kernel_len > 0 {
            img[5 * 512] = 0x90;
        }
        img
    }

    pub(crate) fn boot<'a>(memory: u64, cmdline: &'a str, initrd: Option<&'a [u8]>) -> LinuxBoot<'a> {
        LinuxBoot { ram: GuestRam::low(memory), cmdline, initrd, rsdp: Some(0xe_0000), acpi_tables: None }
    }

    #[test]
    fn a_bzimage_loads_at_its_preferred_address_with_a_zero_page() {
        let img = bzimage(1000);
        let bz = parse(&img).unwrap();
        assert_eq!((bz.version, bz.kernel.len(), bz.pref_address), (0x020f, 1000, 0x100_0000));
        let initrd = vec![7u8; 5000];
        let plan = plan(&bz, &boot(256 << 20, "console=ttyS0 quiet", Some(&initrd))).unwrap();
        assert_eq!((plan.entry, plan.mode, plan.rsi), (0x100_0200, EntryMode::Long, ZERO_PAGE));
        assert_eq!(plan.segments[0].guest_phys, 0x100_0000);
        let initrd_at = plan.segments[1].guest_phys;
        assert!(initrd_at.is_multiple_of(4096) && initrd_at + 5000 <= 256 << 20 && initrd_at > 0x300_0000);
        let zp = plan.segments.iter().find(|s| s.guest_phys == ZERO_PAGE).unwrap().data.bytes();
        assert_eq!(&zp[HEADER..HEADER + 4], b"HdrS", "setup header copied");
        assert_eq!(zp[TYPE_OF_LOADER], 0xff);
        assert_eq!(u32_at(zp, CMD_LINE_PTR) as u64, COMMAND_LINE);
        assert_eq!((u32_at(zp, RAMDISK_IMAGE) as u64, u32_at(zp, RAMDISK_SIZE)), (initrd_at, 5000));
        assert_eq!(u64_at(zp, ACPI_RSDP_ADDR), 0xe_0000);
        assert_eq!(zp[E820_ENTRIES], 4);
        assert_eq!(u64_at(zp, E820_TABLE + 3 * 20 + 8), (256 << 20) - 0x10_0000, "extended memory size");
        let line = plan.segments.iter().find(|s| s.guest_phys == COMMAND_LINE).unwrap().data.bytes();
        assert_eq!(line, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn small_vms_relocate_and_too_small_ones_are_refused() {
        let img = bzimage(1000);
        let bz = parse(&img).unwrap();
        // 40 MiB: the preferred 16 MiB + 32 MiB init size does not fit; relocate to 2 MiB.
        let plan = plan(&bz, &boot(40 << 20, "", None)).unwrap();
        assert_eq!(plan.segments[0].guest_phys, 0x20_0000);
        let err = super::plan(&bz, &boot(20 << 20, "", None)).unwrap_err();
        assert!(matches!(err, ImageError::DoesNotFit { .. }), "{err:?}");
        let long = "x".repeat(3000);
        assert_eq!(
            super::plan(&bz, &boot(256 << 20, &long, None)).unwrap_err().to_string(),
            "the command line is 3000 bytes; this kernel takes at most 2047"
        );
    }

    #[test]
    fn anything_but_a_usable_bzimage_says_why() {
        let e = |img: &[u8]| parse(img).unwrap_err().to_string();
        assert_eq!(e(&[0u8; 100]), "not a usable bzImage: shorter than a setup header");
        let mut img = bzimage(10);
        img[HEADER] = b'X';
        assert_eq!(e(&img), "not a usable bzImage: no boot-protocol header (HdrS)");
        let mut img = bzimage(10);
        img[VERSION..VERSION + 2].copy_from_slice(&0x0204u16.to_le_bytes());
        assert_eq!(e(&img), "not a usable bzImage: boot protocol older than 2.12 (no 64-bit entry)");
        let mut img = bzimage(10);
        img[XLOADFLAGS] = 0;
        assert_eq!(e(&img), "not a usable bzImage: the kernel has no 64-bit entry point");
        let img = bzimage(0);
        assert_eq!(e(&img), "the image is truncated: the bzImage kernel (setup_sects) lies past its end");
    }

    #[test]
    fn e820_carves_out_acpi_tables() {
        let map = e820(&GuestRam::low(64 << 20), Some((0x3ff_0000, 0x400_0000)));
        assert_eq!(map.last(), Some(&(0x3ff_0000, 0x1_0000, E820_ACPI)));
        assert_eq!(map[3], (0x10_0000, 0x3ff_0000 - 0x10_0000, E820_RAM));
    }

    /// The e820 map of a VM of `mib` MiB whose top 64 KiB of low RAM the VMM keeps.
    fn e820_of(mib: u64) -> Vec<(u64, u64, u32)> {
        let map = devices::layout::RamMap::new(mib << 20).unwrap();
        e820(&GuestRam::new(&map, 0x1_0000).unwrap(), None)
    }

    #[test]
    fn e820_keeps_ram_out_of_the_mmio_hole_and_reports_ram_above_4_gib() {
        use devices::layout::{HIGH_RAM_BASE, RAM_HOLE_START};
        let map = e820_of(4096);
        for &(base, size, kind) in &map {
            let end = base + size;
            assert!(end <= RAM_HOLE_START || base >= HIGH_RAM_BASE, "{base:#x}..{end:#x} ({kind}) in the hole");
        }
        assert_eq!(map.iter().filter(|e| e.2 == E820_RAM && e.0 >= HIGH_RAM_BASE).count(), 1);
        assert_eq!(map.last(), Some(&(HIGH_RAM_BASE, 1 << 30, E820_RAM)), "1 GiB at 4 GiB");
        assert_eq!(map[3], (0x10_0000, RAM_HOLE_START - 0x1_0000 - 0x10_0000, E820_RAM), "low RAM up to the hole");
        // All but the VMM's 64 KiB and the legacy area below 1 MiB is RAM.
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, (4096 << 20) - 0x1_0000 - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn e820_of_a_vm_below_the_hole_is_as_it_always_was() {
        assert_eq!(
            e820_of(256),
            [
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0xe0000, 0x20000, E820_RESERVED),
                (0x10_0000, (256 << 20) - 0x1_0000 - 0x10_0000, E820_RAM)
            ]
        );
        assert_eq!(e820_of(3072).len(), 4, "exactly up to the hole: nothing above 4 GiB");
    }

    #[test]
    fn a_4_gib_vm_boots_with_everything_below_the_hole() {
        let img = bzimage(1000);
        let bz = parse(&img).unwrap();
        let initrd = vec![7u8; 5000];
        let ram = GuestRam::new(&devices::layout::RamMap::new(4096 << 20).unwrap(), 0x1_0000).unwrap();
        let boot = LinuxBoot { ram, cmdline: "", initrd: Some(&initrd), rsdp: None, acpi_tables: None };
        let plan = plan(&bz, &boot).unwrap();
        for s in &plan.segments {
            assert!(s.checked_end().unwrap() <= devices::layout::RAM_HOLE_START - 0x1_0000, "{:#x}", s.guest_phys);
        }
        let zp = plan.segments.iter().find(|s| s.guest_phys == ZERO_PAGE).unwrap().data.bytes();
        assert_eq!(zp[E820_ENTRIES], 5);
        assert_eq!(u64_at(zp, E820_TABLE + 4 * 20), 1 << 32, "the high RAM entry in the zero page");
        assert_eq!(u64_at(zp, E820_TABLE + 4 * 20 + 8), 1 << 30);
    }
}
