//! Hostile-input tests. Every loader and parser, fed mutants of valid inputs,
//! must return an error rather than panic or wrap, and whatever it accepts must
//! be consistent. Most named tests pin cases that panicked, wrapped or were
//! wrongly accepted before the arithmetic was checked; the rest keep edges that
//! were already handled from regressing.

use crate::bundle::{self, Bundle, BundleError};
use crate::fuzz::fuzz;
use crate::image::tests::{elf_image, spec};
use crate::image::{
    load, parse_elf, ElfClass, EntryMode, Extras, GuestRam, ImageError, LoadPlan, MULTIBOOT_BOOTLOADER_MAGIC,
};
use crate::image::{Segment, SegmentData};
use crate::linux::tests::{boot, bzimage, set32};
use crate::linux::{self, COMMAND_LINE, ZERO_PAGE};
use crate::manifest::{self, parse_manifest, Format, MAX_DISKS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::multiboot::tests::multiboot_aout;
use crate::multiboot::Module;
use crate::plan_check::{check_plan, inside};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use basalt_fuzz::{edge_value, put, Field, Rng};

const ITERATIONS: usize = 100_000;
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// Guest memory sizes to load into: typical, tight, 4 GiB, and unbounded (so
/// only wrapping can stop a segment).
const MEMORIES: [u64; 4] = [16 << 20, 1 << 20, 1 << 32, u64::MAX];

fn elf_fields(is64: bool) -> Vec<Field> {
    let ident = [(4, 1), (5, 1), (6, 1), (16, 2), (18, 2)];
    let (header, p): (&[Field], usize) =
        if is64 { (&[(24, 8), (32, 8), (54, 2), (56, 2)], 64) } else { (&[(24, 4), (28, 4), (42, 2), (44, 2)], 52) };
    let program_header: Vec<Field> = if is64 {
        vec![(p, 4), (p + 8, 8), (p + 24, 8), (p + 32, 8), (p + 40, 8)]
    } else {
        vec![(p, 4), (p + 4, 4), (p + 12, 4), (p + 16, 4), (p + 20, 4)]
    };
    ident.iter().chain(header).chain(&program_header).copied().collect()
}

/// An ELF64 executable with one PT_LOAD segment per (paddr, bytes, memsz).
fn elf64_segments(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
    let mut f = elf_image(true, 0, entry, &[], 0);
    f.truncate(64);
    f[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    let mut offset = (64 + 56 * segments.len()) as u64;
    for &(paddr, bytes, memsz) in segments {
        let mut ph = [0u8; 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        f.extend_from_slice(&ph);
        offset += bytes.len() as u64;
    }
    for (_, bytes, _) in segments {
        f.extend_from_slice(bytes);
    }
    f
}

/// A Multiboot ELF32 kernel: the header at the start of its one segment.
fn multiboot_elf() -> Vec<u8> {
    let mut code = Vec::new();
    for v in [MULTIBOOT_MAGIC, 0, 0u32.wrapping_sub(MULTIBOOT_MAGIC)] {
        code.extend_from_slice(&v.to_le_bytes());
    }
    code.extend_from_slice(&[0xf4; 20]);
    elf_image(false, 0x10_0000, 0x10_000c, &code, 0x100)
}

/// A Multiboot a.out-kludge kernel whose header sits `skip` bytes into the file.
fn multiboot_aout_at(skip: u32, load_addr: u32) -> Vec<u8> {
    let mut img = vec![0x90; skip as usize];
    img.extend(multiboot_aout(load_addr, &[0xf4; 40], 0x80));
    // header_addr, load_end_addr, bss_end_addr and entry move with the header.
    for field in [0, 2, 3, 4] {
        let at = skip as usize + 12 + 4 * field;
        let v = u32::from_le_bytes(img[at..at + 4].try_into().unwrap());
        img[at..at + 4].copy_from_slice(&(v + skip).to_le_bytes());
    }
    img
}

/// The Multiboot header's fields (magic to entry) at file offset `at`.
fn multiboot_fields(at: usize) -> Vec<Field> {
    (0..8).map(|n| (at + 4 * n, 4)).collect()
}

/// Sets the Multiboot address field `n` (0 = header_addr .. 4 = entry).
fn set_multiboot_field(img: &mut [u8], header: usize, n: usize, value: u32) {
    put(img, (header + 12 + 4 * n, 4), value.into());
}

/// Most mutants get a correct checksum, so they reach the field checks.
fn fix_multiboot_checksum(rng: &mut Rng, bytes: &mut [u8], header: usize) {
    if rng.index(4) != 0 {
        if let Some(flags) = bytes.get(header + 4..header + 8) {
            let flags = u32::from_le_bytes(flags.try_into().unwrap());
            put(bytes, (header + 8, 4), 0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags).into());
        }
    }
}

fn load_elf(img: &[u8], memory: u64) -> Result<LoadPlan<'_>, ImageError> {
    load(img, &spec(Format::Elf), GuestRam::low(memory), Extras::default())
}

fn load_multiboot(img: &[u8], memory: u64) -> Result<LoadPlan<'_>, ImageError> {
    load(img, &spec(Format::Multiboot), GuestRam::low(memory), Extras::default())
}

mod elf {
    use super::*;

    fn check_elf(rng: &mut Rng, bytes: &[u8], vm: &manifest::VmSpec) {
        if let Ok(parsed) = parse_elf(bytes) {
            assert!(!parsed.segments.is_empty());
            for s in &parsed.segments {
                assert!(inside(s.data, bytes), "segment data outside the file");
                assert!(s.memsz >= s.data.len() as u64);
                assert!(s.paddr.checked_add(s.memsz).is_some());
            }
        }
        let memory = rng.pick(&MEMORIES);
        if let Ok(plan) = load(bytes, vm, GuestRam::low(memory), Extras::default()) {
            check_plan(&plan, memory, &[bytes]);
            let class = parse_elf(bytes).unwrap().class;
            assert_eq!(plan.mode, if class == ElfClass::Elf64 { EntryMode::Long } else { EntryMode::Protected });
        }
    }

    #[test]
    fn elf64_mutants_never_panic_and_plans_stay_inside() {
        let images = [
            elf_image(true, 0x20_0000, 0x20_0004, &[0x90; 64], 0x100),
            elf64_segments(0x1000, &[(0x1000, &[0x90; 16], 0x800), (0x3000, &[0xcc; 8], 8), (0x8000, &[], 0x2000)]),
        ];
        let vm = spec(Format::Elf);
        fuzz(1, ITERATIONS, &images, &elf_fields(true), |rng, bytes| check_elf(rng, bytes, &vm));
    }

    #[test]
    fn elf32_mutants_never_panic_and_plans_stay_inside() {
        let images = [elf_image(false, 0x10_0000, 0x10_0000, &[0xf4; 64], 0x40)];
        let vm = spec(Format::Elf);
        fuzz(2, ITERATIONS, &images, &elf_fields(false), |rng, bytes| check_elf(rng, bytes, &vm));
    }

    #[test]
    fn e_phoff_near_u64_max_is_an_error() {
        for phoff in [u64::MAX, u64::MAX - 3, u64::MAX - 55, 1 << 63] {
            let mut img = elf_image(true, 0x1000, 0x1000, &[0x90; 8], 0);
            img[32..40].copy_from_slice(&phoff.to_le_bytes());
            assert_eq!(
                load_elf(&img, 16 << 20).unwrap_err().to_string(),
                "the image is truncated: the program headers (e_phoff, e_phnum) lie past its end"
            );
        }
    }

    #[test]
    fn e_phoff_of_u32_max_in_elf32_is_an_error() {
        let mut img = elf_image(false, 0x1000, 0x1000, &[0x90; 8], 0);
        img[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(load_elf(&img, 16 << 20), Err(ImageError::Truncated(_))));
    }

    #[test]
    fn program_header_entries_of_an_odd_size_are_refused() {
        let mut img = elf_image(true, 0x1000, 0x1000, &[0x90; 8], 0);
        img[54..56].copy_from_slice(&u16::MAX.to_le_bytes());
        img[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            load_elf(&img, 16 << 20).unwrap_err(),
            ImageError::UnsupportedElf("more than 65534 program headers (e_phnum is PN_XNUM)")
        );
        img[56..58].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            load_elf(&img, 16 << 20).unwrap_err(),
            ImageError::UnsupportedElf("program headers of a size other than the standard one")
        );
    }

    #[test]
    fn p_offset_plus_p_filesz_wrapping_is_an_error() {
        let mut img = elf_image(true, 0x1000, 0x1000, &[0x90; 8], 0);
        img[64 + 8..64 + 16].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(matches!(load_elf(&img, 16 << 20), Err(ImageError::Truncated(_))));
    }

    #[test]
    fn a_segment_at_the_top_of_the_address_space_is_an_error() {
        // paddr + memsz wraps: the old check computed the end unchecked.
        let img = elf_image(true, u64::MAX - 3, u64::MAX - 3, &[0x90; 8], 0);
        assert_eq!(
            load_elf(&img, u64::MAX).unwrap_err(),
            ImageError::UnsupportedElf("a segment runs past the top of the address space")
        );
        // paddr + memsz is exactly 2^64 - 1 but the end is still past memory.
        let img = elf_image(true, u64::MAX - 9, u64::MAX - 9, &[0x90; 8], 1);
        assert!(matches!(load_elf(&img, 16 << 20), Err(ImageError::DoesNotFit { .. })));
        // p_memsz alone huge (BSS).
        let img = elf_image(true, 0x1000, 0x1000, &[0x90; 8], u64::MAX - 8);
        assert!(load_elf(&img, u64::MAX).is_err());
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let img = elf64_segments(0x1000, &[(0x1000, &[0x90; 16], 0x100), (0x10f0, &[0xcc; 8], 8)]);
        assert_eq!(
            load_elf(&img, 16 << 20).unwrap_err().to_string(),
            "bytes 0x1000..0x1100 and 0x10f0..0x10f8 would overlap in guest memory"
        );
        let img = elf64_segments(0x1000, &[(0x1000, &[0x90; 16], 0x100), (0x1100, &[0xcc; 8], 8)]);
        assert_eq!(load_elf(&img, 16 << 20).unwrap().segments.len(), 2, "touching is fine");
    }
}

mod multiboot {
    use super::*;

    /// Also gives the kernel up to three modules of random sizes and a
    /// command line, whose bytes must all land inside RAM and below 4 GiB,
    /// clear of the kernel and of each other.
    fn check_multiboot(rng: &mut Rng, bytes: &mut [u8], header: usize, vm: &manifest::VmSpec) {
        fix_multiboot_checksum(rng, bytes, header);
        let memory = rng.pick(&MEMORIES);
        let module_bytes = [0x5au8; 0x3000];
        let count = rng.index(4);
        let modules: Vec<Module> = (0..count)
            .map(|i| Module {
                data: &module_bytes[..rng.index(module_bytes.len() + 1)],
                string: ["", "m", "a b"][i % 3],
            })
            .collect();
        let long_line = "x".repeat(rng.index(0x2000));
        let extras = Extras { name: "kernel", cmdline: &long_line, modules: &modules, ..Extras::default() };
        if let Ok(plan) = load(bytes, vm, GuestRam::low(memory), extras) {
            check_plan(&plan, memory, &[bytes, &module_bytes]);
            assert_eq!((plan.mode, plan.rax), (EntryMode::Protected, MULTIBOOT_BOOTLOADER_MAGIC));
            // An empty kernel segment may share the address.
            let is_info = |s: &&Segment| s.guest_phys == plan.rbx && matches!(s.data, SegmentData::Owned(_));
            let info = plan.segments.iter().find(is_info).expect("information at EBX");
            assert!(info.end() <= 1 << 32, "information at {:#x} past 4 GiB", plan.rbx);
            let is_module = |s: &&Segment| !s.data.bytes().is_empty() && inside(s.data.bytes(), &module_bytes);
            let module_segments = plan.segments.iter().filter(is_module);
            assert!(module_segments.into_iter().all(|s| s.end() <= 1 << 32 && s.guest_phys.is_multiple_of(0x1000)));
        }
    }

    #[test]
    fn aout_kludge_mutants_never_panic_and_plans_stay_inside() {
        let vm = spec(Format::Multiboot);
        let images = [multiboot_aout_at(0, 0x10_0000)];
        fuzz(3, ITERATIONS / 2, &images, &multiboot_fields(0), |rng, b| check_multiboot(rng, b, 0, &vm));
        // The header further in, so load_addr lies below header_addr.
        let images = [multiboot_aout_at(0x40, 0x10_0000)];
        fuzz(4, ITERATIONS / 2, &images, &multiboot_fields(0x40), |rng, b| check_multiboot(rng, b, 0x40, &vm));
    }

    #[test]
    fn multiboot_elf_mutants_never_panic_and_plans_stay_inside() {
        let vm = spec(Format::Multiboot);
        let header = 52 + 32;
        let mut fields = elf_fields(false);
        fields.extend(multiboot_fields(header).into_iter().take(3));
        let images = [multiboot_elf()];
        assert!(load_multiboot(&images[0], 16 << 20).is_ok());
        fuzz(5, ITERATIONS, &images, &fields, |rng, b| check_multiboot(rng, b, header, &vm));
    }

    #[test]
    fn header_addr_far_above_load_addr_is_an_error() {
        // header_addr - load_addr says the load starts before the file does.
        let mut img = multiboot_aout_at(0x40, 0x10_0000);
        set_multiboot_field(&mut img, 0x40, 1, 0x10_0000 - 0x1000);
        assert_eq!(
            load_multiboot(&img, 16 << 20).unwrap_err(),
            ImageError::UnsupportedMultiboot("load_addr lies before the start of the file (header_addr)")
        );
        let mut img = multiboot_aout_at(0, 0x10_0000);
        set_multiboot_field(&mut img, 0, 0, u32::MAX);
        set_multiboot_field(&mut img, 0, 1, 0);
        assert!(load_multiboot(&img, 16 << 20).is_err());
    }

    #[test]
    fn load_end_addr_below_load_addr_is_an_error() {
        let mut img = multiboot_aout_at(0, 0x10_0000);
        set_multiboot_field(&mut img, 0, 2, 0x10_0000 - 1);
        assert_eq!(
            load_multiboot(&img, 16 << 20).unwrap_err(),
            ImageError::UnsupportedMultiboot("load_end_addr lies below load_addr")
        );
    }

    #[test]
    fn load_end_addr_past_the_file_is_an_error() {
        let mut img = multiboot_aout_at(0, 0x10_0000);
        set_multiboot_field(&mut img, 0, 2, u32::MAX);
        assert_eq!(
            load_multiboot(&img, u64::MAX).unwrap_err().to_string(),
            "the image is truncated: the Multiboot load range (load_end_addr) lies past its end"
        );
    }

    #[test]
    fn bss_end_addr_below_load_end_addr_is_an_error() {
        let mut img = multiboot_aout_at(0, 0x10_0000);
        set_multiboot_field(&mut img, 0, 3, 0x10_0001);
        assert_eq!(
            load_multiboot(&img, 16 << 20).unwrap_err(),
            ImageError::UnsupportedMultiboot("bss_end_addr lies below load_end_addr")
        );
    }

    #[test]
    fn bss_end_addr_past_memory_is_an_error() {
        let mut img = multiboot_aout_at(0, 0x10_0000);
        set_multiboot_field(&mut img, 0, 3, u32::MAX);
        assert_eq!(
            load_multiboot(&img, 16 << 20).unwrap_err(),
            ImageError::DoesNotFit { start: 0x10_0000, end: u32::MAX.into(), memory: 16 << 20 }
        );
    }

    #[test]
    fn an_entry_point_outside_the_kernel_is_an_error() {
        let mut img = multiboot_aout_at(0, 0x10_0000);
        set_multiboot_field(&mut img, 0, 4, u32::MAX);
        assert_eq!(load_multiboot(&img, 16 << 20).unwrap_err(), ImageError::EntryOutside { entry: u32::MAX.into() });
    }

    #[test]
    fn a_kernel_over_the_information_structure_keeps_its_bytes() {
        let img = multiboot_aout_at(0, 0x8000);
        let mut img2 = img.clone();
        // Code from 0x8000 to past 0x9000, where the information structure went.
        img2.extend_from_slice(&[0x90; 0x1000]);
        let load_end = 0x8000 + img2.len() as u32;
        set_multiboot_field(&mut img2, 0, 2, load_end);
        set_multiboot_field(&mut img2, 0, 3, 0);
        let plan = load_multiboot(&img, 16 << 20).unwrap();
        assert_eq!(plan.rbx, 0x9000);
        let plan = load_multiboot(&img2, 16 << 20).unwrap();
        check_plan(&plan, 16 << 20, &[&img2]);
        assert_eq!(plan.rbx, 0xa000, "the first free page above the kernel");
    }
}

mod bzimage {
    use super::*;

    /// (offset, width) of the setup header fields the loader reads.
    const FIELDS: [Field; 14] = [
        (0x1f1, 1), // setup_sects
        (0x1f4, 4), // syssize
        (0x1fe, 2), // boot_flag
        (0x201, 1), // the jump's length: the header's end
        (0x202, 4), // "HdrS"
        (0x206, 2), // version
        (0x211, 1), // loadflags
        (0x22c, 4), // initrd_addr_max
        (0x230, 4), // kernel_alignment
        (0x234, 1), // relocatable_kernel
        (0x236, 2), // xloadflags
        (0x238, 4), // cmdline_size
        (0x258, 8), // pref_address
        (0x260, 4), // init_size
    ];

    #[test]
    fn bzimage_mutants_never_panic_and_plans_stay_inside() {
        let vm = spec(Format::Linux);
        let initrd_bytes = vec![0x55u8; 0x3000];
        let long_line = "x".repeat(3000);
        let images = [bzimage(1000), bzimage(16)];
        fuzz(6, ITERATIONS, &images, &FIELDS, |rng, bytes| {
            let memory = rng.pick(&[64 << 20, 256 << 20, 1 << 32, u64::MAX]);
            let initrd = [None, Some(&initrd_bytes[..rng.index(0x3000)])][rng.index(2)];
            let cmdline = rng.pick(&["", "console=ttyS0", &long_line]);
            let extras = Extras { initrd, cmdline, rsdp: Some(0xe_0000), ..Extras::default() };
            if let Ok(plan) = load(bytes, &vm, GuestRam::low(memory), extras) {
                check_plan(&plan, memory, &[bytes, &initrd_bytes]);
                assert!(bytes.ends_with(plan.segments[0].data.bytes()), "the kernel is the image's tail");
                assert_eq!((plan.mode, plan.rsi), (EntryMode::Long, ZERO_PAGE));
            }
        });
    }

    /// `BzImage`'s fields are public, so `plan` must survive any values in them.
    #[test]
    fn plan_survives_any_bzimage_fields() {
        let img = bzimage(1000);
        let initrd = vec![1u8; 0x2000];
        let mut rng = Rng::new(7);
        for _ in 0..ITERATIONS {
            let mut bz = linux::parse(&img).unwrap();
            let len = img.len();
            match rng.index(6) {
                0 => bz.pref_address = edge_value(&mut rng, len),
                1 => bz.init_size = edge_value(&mut rng, len),
                2 => bz.alignment = edge_value(&mut rng, len),
                3 => bz.initrd_max = edge_value(&mut rng, len),
                4 => bz.cmdline_max = edge_value(&mut rng, len) as u32,
                _ => bz.kernel = &bz.kernel[..rng.index(bz.kernel.len() + 1)],
            }
            bz.relocatable = rng.index(2) == 0;
            let odd_memory = edge_value(&mut rng, len);
            let memory = rng.pick(&[64 << 20, 1 << 32, u64::MAX, odd_memory]);
            let Ok(plan) = linux::plan(&bz, &boot(memory, "console=ttyS0", Some(&initrd))) else { continue };
            // The kernel and the initrd are placed inside memory, apart; load()
            // checks the rest.
            let (kernel, initrd) = (&plan.segments[0], &plan.segments[1]);
            assert!(kernel.checked_end().is_some_and(|end| end <= memory));
            assert!(initrd.checked_end().is_some_and(|end| end <= memory));
            assert!(kernel.guest_phys.saturating_add(bz.init_size) <= initrd.guest_phys);
        }
    }

    #[test]
    fn pref_address_near_u64_max_is_an_error() {
        let mut img = bzimage(1000);
        img[0x258..0x260].copy_from_slice(&(u64::MAX - 0x1000).to_le_bytes());
        img[0x234] = 0; // not relocatable
        let err = load(&img, &spec(Format::Linux), GuestRam::low(256 << 20), Extras::default()).unwrap_err();
        assert_eq!(err, ImageError::DoesNotFit { start: u64::MAX - 0x1000, end: u64::MAX, memory: 256 << 20 });
        // Relocatable, it goes to the lowest aligned address instead.
        img[0x234] = 1;
        let plan = load(&img, &spec(Format::Linux), GuestRam::low(256 << 20), Extras::default()).unwrap();
        assert_eq!(plan.segments[0].guest_phys, 0x20_0000);
    }

    #[test]
    fn initrd_addr_max_of_u64_max_is_clamped_to_memory() {
        let img = bzimage(1000);
        let mut bz = linux::parse(&img).unwrap();
        bz.initrd_max = u64::MAX;
        let initrd = [7u8; 100];
        let plan = linux::plan(&bz, &boot(256 << 20, "", Some(&initrd))).unwrap();
        assert_eq!(plan.segments[1].guest_phys, (256 << 20) - 0x1000);
    }

    #[test]
    fn a_kernel_alignment_of_zero_is_an_error_not_a_division_by_zero() {
        let img = bzimage(1000);
        let mut bz = linux::parse(&img).unwrap();
        bz.alignment = 0;
        // 40 MiB: the kernel must relocate, which needs the alignment.
        let err = linux::plan(&bz, &boot(40 << 20, "", None)).unwrap_err();
        assert!(matches!(err, ImageError::DoesNotFit { .. }), "{err:?}");
    }

    #[test]
    fn init_size_of_u32_max_does_not_fit() {
        let mut img = bzimage(1000);
        set32(&mut img, 0x260, u32::MAX);
        let err = load(&img, &spec(Format::Linux), GuestRam::low(256 << 20), Extras::default()).unwrap_err();
        assert!(matches!(err, ImageError::DoesNotFit { .. }), "{err:?}");
    }

    #[test]
    fn syssize_past_the_end_of_the_file_is_an_error() {
        let mut img = bzimage(1000);
        set32(&mut img, 0x1f4, 1000 / 16 + 1);
        assert_eq!(
            linux::parse(&img).unwrap_err().to_string(),
            "the image is truncated: the bzImage kernel (syssize) runs past its end"
        );
        set32(&mut img, 0x1f4, u32::MAX);
        assert!(linux::parse(&img).is_err());
    }

    #[test]
    fn setup_sects_past_the_end_of_the_file_is_an_error() {
        let mut img = bzimage(1000);
        img[0x1f1] = 0xff;
        assert!(matches!(linux::parse(&img), Err(ImageError::Truncated(_))));
    }

    #[test]
    fn a_command_line_running_into_the_kernel_is_refused() {
        let mut img = bzimage(1000);
        set32(&mut img, 0x238, u32::MAX);
        img[0x258..0x260].copy_from_slice(&0x10_0000u64.to_le_bytes());
        let line = "x".repeat(0x10_0000 - COMMAND_LINE as usize);
        let extras = Extras { cmdline: &line, ..Extras::default() };
        let err = load(&img, &spec(Format::Linux), GuestRam::low(256 << 20), extras).unwrap_err();
        assert!(matches!(err, ImageError::Overlap { .. }), "{err:?}");
    }
}

mod pvh {
    use super::*;
    use crate::pvh::tests::{note, vmlinux, vmlinux_with};
    use crate::pvh::{START_INFO_MAGIC, START_INFO_SIZE};

    /// The ELF header, both program headers and the first two notes' headers
    /// of `vmlinux()`: where a mutant changes the most.
    fn fields() -> Vec<Field> {
        let mut fields = elf_fields(true);
        let p = 64 + 56;
        fields.extend([(p, 4), (p + 8, 8), (p + 32, 8), (p + 48, 8)]);
        let notes = p + 56 + 0x80;
        let second = notes + 12 + 4 + 20;
        fields.extend([(notes, 4), (notes + 4, 4), (notes + 8, 4), (second, 4), (second + 4, 4), (second + 8, 4)]);
        fields.push((second + 16, 4)); // the entry point
        fields
    }

    #[test]
    fn vmlinux_mutants_never_panic_and_plans_stay_inside() {
        let preferred = spec(Format::Linux);
        let boot64 = manifest::VmSpec { vmlinux_entry: crate::linux::VmlinuxEntry::Boot64, ..preferred.clone() };
        let initrd_bytes = vec![0x55u8; 0x3000];
        let long_line = "x".repeat(3000);
        let eight_byte_entry =
            vmlinux_with(0x10_0000, &[0xf4; 64], 0x100, &note(b"Xen", 18, &0x10_0000u64.to_le_bytes()));
        let images = [vmlinux(), eight_byte_entry];
        fuzz(11, ITERATIONS, &images, &fields(), |rng, bytes| {
            let memory = rng.pick(&[16 << 20, 64 << 20, 1 << 32, u64::MAX]);
            let initrd = [None, Some(&initrd_bytes[..rng.index(0x3000)])][rng.index(2)];
            let cmdline = rng.pick(&["", "console=ttyS0", &long_line]);
            let extras = Extras { initrd, cmdline, rsdp: Some(0xe_0000), ..Extras::default() };
            let entry = crate::pvh::entry_note(bytes);
            let vm = [&preferred, &boot64][rng.index(2)];
            if let Ok(plan) = load(bytes, vm, GuestRam::low(memory), extras) {
                check_plan(&plan, memory, &[bytes, &initrd_bytes]);
                if vm.vmlinux_entry == crate::linux::VmlinuxEntry::Boot64 || entry == Ok(None) {
                    assert_eq!(plan.entry, parse_elf(bytes).unwrap().entry, "entered at the ELF entry");
                    crate::plan_check::check_zero_page(&plan, cmdline, initrd);
                    return;
                }
                assert_eq!(plan.mode, EntryMode::Protected);
                assert_eq!(Ok(Some(plan.entry as u32)), entry, "entered where the note says");
                let block = plan.segments.iter().find(|s| s.guest_phys == plan.rbx).expect("a block at EBX");
                let block = block.data.bytes();
                assert!(block.len() >= START_INFO_SIZE && block.starts_with(&START_INFO_MAGIC.to_le_bytes()));
                assert!(plan.rbx >= 0x1000 && plan.rbx + block.len() as u64 <= 1 << 32, "EBX {:#x}", plan.rbx);
                if initrd.is_some_and(|i| !i.is_empty()) {
                    let address = u64::from_le_bytes(block[START_INFO_SIZE..START_INFO_SIZE + 8].try_into().unwrap());
                    let at_initrd = |s: &&Segment| s.guest_phys == address && inside(s.data.bytes(), &initrd_bytes);
                    assert!(plan.segments.iter().any(|s| at_initrd(&s)), "the module list points at the initrd");
                    assert!(address.is_multiple_of(0x1000) && address < 1 << 32);
                }
            }
        });
    }
}

mod flat {
    use super::*;

    #[test]
    fn a_flat_image_at_the_top_of_the_address_space_is_an_error() {
        let vm = parse_manifest("name=t image=t format=flat load=0xfffffffffffffff8").unwrap().remove(0);
        let err = load(&[0xf4; 16], &vm, GuestRam::low(u64::MAX), Extras::default()).unwrap_err();
        assert_eq!(err, ImageError::DoesNotFit { start: 0xffff_ffff_ffff_fff8, end: u64::MAX, memory: u64::MAX });
    }
}

mod bundles {
    use super::*;

    fn entries() -> Vec<(String, Vec<u8>)> {
        vec![
            ("cmdline".into(), b"selftest".to_vec()),
            ("vms".into(), b"name=a image=a.img format=flat".to_vec()),
            ("a.img".into(), vec![0xf4; 300]),
            (String::new(), Vec::new()),
        ]
    }

    #[test]
    fn bundle_mutants_never_panic_and_entries_stay_inside() {
        let entries = entries();
        let mut fields = vec![(8, 4), (12, 4)];
        let mut at = 16;
        for (name, data) in &entries {
            fields.extend([(at, 4), (at + 4, 8)]);
            at += 12 + name.len() + data.len();
        }
        let images = [bundle::write(&entries)];
        fuzz(8, ITERATIONS, &images, &fields, |_, bytes| {
            let Ok(parsed) = Bundle::parse(bytes) else { return };
            let mut used = 16;
            for name in parsed.names() {
                let data = parsed.get(name).unwrap();
                assert!(inside(name.as_bytes(), bytes) && inside(data, bytes));
                used += 12 + name.len() + data.len();
            }
            assert!(used <= bytes.len(), "entries claim {used} of {} bytes", bytes.len());
        });
    }

    #[test]
    fn lengths_of_u32_max_and_u64_max_are_truncation_errors() {
        let bytes = bundle::write(&entries());
        for (field, value) in [((12, 4), u64::from(u32::MAX)), ((16, 4), u32::MAX.into()), ((20, 8), u64::MAX)] {
            let mut bad = bytes.clone();
            put(&mut bad, field, value);
            let err = Bundle::parse(&bad).unwrap_err();
            assert!(matches!(err, BundleError::Truncated { .. }), "{field:?}: {err:?}");
        }
    }
}

mod vm_list {
    use super::*;

    const TEXT: &str = "# VMs\n\
        name=a image=a.bin format=flat mode=real load=0x7c00 entry=0x7c00 memory=16\n\
        name=b image=b.elf format=elf memory=64 cpus=2 time-limit-ms=500 corrupt-guest-state=1\n\
        name=m image=m.img format=multiboot memory=4096 cpus=16\n\
        name=l image=vmlinuz format=linux initrd=l.initrd kernel-cmdline=l.cmdline disk=d0 disk=d1 host-console=1\n";

    /// Pieces of VM-list syntax and numbers at the limits, to splice in.
    const TOKENS: [&str; 29] = [
        " ",
        "=",
        "\n",
        "#",
        "0x",
        "0xffffffffffffffff",
        "0x10000000000000000",
        "18446744073709551615",
        "18446744073709551616",
        "4294967296",
        "-1",
        "name=",
        "name=z",
        "memory=",
        "memory=0",
        "memory=15",
        "memory=4097",
        "cpus=0",
        "cpus=17",
        "format=linux",
        "format=elf",
        "disk=d",
        "host-console=1",
        "initrd=i",
        "entry=",
        "load=",
        "time-limit-ms=0",
        "\u{e9}",
        "\r\n",
    ];

    fn mutate_text(rng: &mut Rng, text: &mut Vec<u8>) {
        for _ in 0..1 + rng.index(4) {
            let at = rng.index(text.len() + 1);
            match rng.index(6) {
                0 | 1 => {
                    let token = rng.pick(&TOKENS);
                    text.splice(at..at, token.bytes());
                }
                2 => {
                    let end = (at + rng.index(12)).min(text.len());
                    text.drain(at..end);
                }
                3 if at < text.len() => text[at] = rng.next_u64() as u8,
                // A line again: repeated names and host consoles.
                4 => {
                    let line = text.split(|&b| b == b'\n').nth(rng.index(5)).unwrap_or_default().to_vec();
                    text.push(b'\n');
                    text.extend(line);
                }
                5 => text.truncate(at),
                _ => {}
            }
        }
    }

    #[test]
    fn vm_list_mutants_never_panic_and_accepted_lists_hold_their_limits() {
        let mut rng = Rng::new(9);
        let mut text = Vec::new();
        for case in 0..ITERATIONS {
            text.clear();
            text.extend_from_slice(TEXT.as_bytes());
            mutate_text(&mut rng, &mut text);
            let text = String::from_utf8_lossy(&text);
            let Ok(vms) = parse_manifest(&text) else { continue };
            for (i, vm) in vms.iter().enumerate() {
                let named = |what: &str| alloc::format!("case {case}, vm {}: {what} in {text:?}", vm.name);
                assert!(!vm.name.is_empty() && !vm.image.is_empty(), "{}", named("empty name or image"));
                assert!((MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&vm.memory_mib), "{}", named("memory"));
                assert!((1..=MAX_VCPUS).contains(&vm.cpus), "{}", named("cpus"));
                assert!(vm.time_limit_ms > 0 && vm.disks.len() <= MAX_DISKS, "{}", named("limits"));
                assert!(vms[..i].iter().all(|v| v.name != vm.name), "{}", named("a repeated name"));
            }
            assert!(vms.iter().filter(|v| v.host_console).count() <= 1);
            let rendered: Vec<_> = vms.iter().map(manifest::render).collect();
            assert_eq!(parse_manifest(&rendered.join("\n")).as_ref(), Ok(&vms), "case {case}: {text:?}");
        }
    }

    #[test]
    fn numbers_past_u64_are_errors_not_wraps() {
        let err = parse_manifest("name=x image=i format=flat load=0x10000000000000000").unwrap_err();
        assert_eq!(err.to_string(), "VM list line 1 (vm 'x'): load: '0x10000000000000000' is not a number");
        let err = parse_manifest("name=x image=i format=flat memory=4294967312").unwrap_err();
        assert!(err.to_string().contains("memory must be 16 to 4096 MiB"), "{err}");
    }
}
