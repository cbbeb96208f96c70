//! Targets for what Basalt reads from its boot image: guest kernels (ELF,
//! Multiboot, Linux as a bzImage or as a vmlinux booted through its PVH
//! entry), the boot bundle and the VM list.

use crate::{feature, kind_of};
use basalt_fuzz::Reader;
use devices::layout::{RamMap, RAM_HOLE_START};
use loader::image::{Segment, SegmentData, MULTIBOOT_BOOTLOADER_MAGIC};
use loader::linux::{self, Kernel, LinuxBoot, ZERO_PAGE};
use loader::manifest::{self, MAX_DISKS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use loader::plan_check::{check_plan, check_zero_page, inside};
use loader::pvh;
use loader::{
    load, parse_elf, parse_manifest, Bundle, ElfClass, EntryMode, Extras, GuestRam, LoadPlan, Module, VmSpec,
};

/// The first input bytes pick the VM's RAM: low RAM of a typical, tight,
/// odd or unbounded size, or the map a VM of some size gets (RAM below the
/// hole and above 4 GiB) less what the VMM keeps.
fn guest_ram(r: &mut Reader) -> GuestRam {
    match r.u8() % 3 {
        0 => GuestRam::low(r.pick(&[1 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 32, u64::MAX])),
        1 => GuestRam::low(r.edge()),
        _ => {
            let bytes = if r.bool() { (1 + r.below(8192)) << 20 } else { r.edge() };
            let reserved = r.pick(&[0, 2 << 20, 16 << 20]);
            let ram = RamMap::new(bytes).and_then(|map| GuestRam::new(&map, reserved));
            let ram = ram.unwrap_or(GuestRam::low(16 << 20));
            assert!(ram.low_ram_end <= RAM_HOLE_START, "loads may reach into the MMIO hole");
            ram
        }
    }
}

fn spec(format: &str) -> VmSpec {
    parse_manifest(&format!("name=fuzz image=fuzz format={format}")).unwrap().remove(0)
}

fn outcome<T, E: core::fmt::Debug>(signal: &mut u64, result: &Result<T, E>) {
    let kind = match result {
        Ok(_) => 0,
        // The variant and its text name the check that refused.
        Err(e) => 1 + kind_of(&format!("{e:?}")),
    };
    feature(signal, kind);
}

/// Input: RAM choice, then the file.
pub fn elf(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let ram = guest_ram(&mut r);
    let image = r.rest();
    let mut signal = 0;
    let parsed = parse_elf(image);
    outcome(&mut signal, &parsed);
    if let Ok(parsed) = &parsed {
        assert!(!parsed.segments.is_empty());
        for s in &parsed.segments {
            assert!(inside(s.data, image), "segment data outside the file");
            assert!(s.memsz >= s.data.len() as u64);
            assert!(s.paddr.checked_add(s.memsz).is_some());
        }
    }
    let plan = load(image, &spec("elf"), ram, Extras::default());
    outcome(&mut signal, &plan);
    if let Ok(plan) = plan {
        check_plan(&plan, ram.low_ram_end, &[image]);
        let parsed = parsed.expect("a loaded ELF parses");
        let mode = if parsed.class == ElfClass::Elf64 { EntryMode::Long } else { EntryMode::Protected };
        assert_eq!((plan.mode, plan.entry), (mode, parsed.entry));
        assert_eq!(plan.segments.len(), parsed.segments.len());
        for (planned, s) in plan.segments.iter().zip(&parsed.segments) {
            assert_eq!(planned.guest_phys, s.paddr);
            assert_eq!(planned.data.bytes().len() as u64 + planned.zero_fill, s.memsz);
        }
    }
    signal
}

const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;

/// Input: RAM choice, whether to fix the header's checksum (most mutants
/// would fail it otherwise and test nothing past it), the number of modules
/// (0 to 3) and each one's size, the command line's length, then the file.
/// Besides the plan's own checks, the information at EBX must describe what
/// was asked for: the command line "NAME REST", each module's bytes where
/// its entry says, page-aligned, with its string; all of it below 4 GiB.
pub fn multiboot(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let ram = guest_ram(&mut r);
    let fix_checksum = !r.one_in(4);
    let module_bytes: Vec<u8> = (0..0x3000u32).map(|i| i as u8).collect();
    let strings = ["", "mod", "mod.bin a=1 b"];
    let modules: Vec<Module> = (0..r.index(4))
        .map(|i| Module { data: &module_bytes[..r.index(module_bytes.len() + 1)], string: strings[i % 3] })
        .collect();
    let cmdline = "c".repeat(r.index(0x2000));
    let mut image = r.rest().to_vec();
    if fix_checksum {
        let search = image.len().min(8192);
        let header =
            (0..search.saturating_sub(11)).step_by(4).find(|&at| image[at..at + 4] == MULTIBOOT_MAGIC.to_le_bytes());
        if let Some(at) = header {
            let flags = u32::from_le_bytes(image[at + 4..at + 8].try_into().unwrap());
            let checksum = 0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags);
            image[at + 8..at + 12].copy_from_slice(&checksum.to_le_bytes());
        }
    }
    let mut signal = 0;
    let extras = Extras { name: "fuzz", cmdline: &cmdline, modules: &modules, ..Extras::default() };
    let plan = load(&image, &spec("multiboot"), ram, extras);
    outcome(&mut signal, &plan);
    if let Ok(plan) = plan {
        check_plan(&plan, ram.low_ram_end, &[&image, &module_bytes]);
        assert_eq!((plan.mode, plan.rax), (EntryMode::Protected, MULTIBOOT_BOOTLOADER_MAGIC));
        // An empty kernel segment may share the address.
        let info = plan.segments.iter().find(|s| s.guest_phys == plan.rbx && matches!(s.data, SegmentData::Owned(_)));
        let info = info.expect("an information block at EBX");
        assert!(info.end() <= 1 << 32, "information at {:#x} past 4 GiB", plan.rbx);
        check_information(&plan, info.data.bytes(), &cmdline, &modules);
        feature(&mut signal, 0x200 | modules.len() as u64);
        feature(&mut signal, 0x300 | u64::from(plan.rbx < 0x10_0000));
    }
    signal
}

/// The information block `block` (at EBX) against what the kernel was given.
fn check_information(plan: &LoadPlan, block: &[u8], cmdline: &str, modules: &[Module]) {
    let base = plan.rbx;
    let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().unwrap());
    // A pointer into the block, as an offset; every one must land inside it.
    let offset = |address: u32| {
        let at = u64::from(address).checked_sub(base).filter(|&at| at < block.len() as u64);
        at.unwrap_or_else(|| panic!("{address:#x} outside the block at {base:#x}")) as usize
    };
    let string = |address: u32| {
        let from = offset(address);
        let length = block[from..].iter().position(|&b| b == 0).expect("a NUL-terminated string");
        &block[from..from + length]
    };
    let flags = u32_at(0);
    assert_eq!(flags & 0b10_0100_1101, 0b10_0100_1101, "memory, command line, modules, map, loader name");
    assert_eq!(string(u32_at(16)), format!("fuzz {cmdline}").as_bytes());
    assert_eq!(u32_at(20) as usize, modules.len());
    let list = if modules.is_empty() { 0 } else { offset(u32_at(24)) };
    for (i, module) in modules.iter().enumerate() {
        let entry = list + 16 * i;
        let (start, end) = (u64::from(u32_at(entry)), u64::from(u32_at(entry + 4)));
        assert!(
            start.is_multiple_of(0x1000) && end - start == module.data.len() as u64,
            "module {i}: {start:#x}..{end:#x}"
        );
        assert_eq!(string(u32_at(entry + 8)), module.string.as_bytes());
        if !module.data.is_empty() {
            // An empty kernel segment may share the address.
            let at_start = |s: &&Segment| s.guest_phys == start && !s.data.bytes().is_empty();
            let segment = plan.segments.iter().find(at_start).expect("the module's segment");
            assert_eq!(segment.data.bytes(), module.data, "module {i}'s bytes");
        }
    }
    let (map_length, map) = (u32_at(44) as usize, offset(u32_at(48)));
    assert!(map_length.is_multiple_of(24) && map + map_length <= block.len(), "the memory map runs past the block");
    assert_eq!(string(u32_at(64)), b"Basalt");
}

/// Input: RAM choice, initrd size, command line, ACPI placement, then the
/// file: a Linux kernel in either form `format=linux` takes, a bzImage or
/// (an ELF file) a vmlinux with the PVH entry note; the corpus has seeds of
/// both (`seed-*` bzImages, `vmlinux-*` from [`vmlinux_seeds`]).
pub fn bzimage(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let ram = guest_ram(&mut r);
    let initrd_bytes = vec![0x55u8; 0x3000];
    let initrd = match r.u8() % 3 {
        0 => None,
        1 => Some(&initrd_bytes[..]),
        _ => Some(&initrd_bytes[..r.index(initrd_bytes.len() + 1)]),
    };
    let long_line = "x".repeat(r.index(5000));
    let cmdline = match r.u8() % 3 {
        0 => "",
        1 => "console=ttyS0",
        _ => &long_line,
    };
    let rsdp = r.bool().then(|| r.edge());
    let acpi_tables = r.bool().then(|| (r.edge(), r.edge()));
    let image = r.rest();
    let mut signal = 0;
    let parsed = linux::parse(image);
    outcome(&mut signal, &parsed);
    if let Ok(bz) = &parsed {
        assert!(!bz.kernel.is_empty() && image.ends_with(bz.kernel), "the kernel is the file's tail");
        assert!(bz.alignment >= 0x1000);
        let boot = LinuxBoot { ram, cmdline, initrd, rsdp, acpi_tables };
        let plan = linux::plan(bz, &boot);
        outcome(&mut signal, &plan);
        if let Ok(plan) = plan {
            let kernel = &plan.segments[0];
            assert_eq!(kernel.data.bytes(), bz.kernel);
            let kernel_end = kernel.checked_end().expect("the kernel does not wrap");
            assert!(kernel_end <= ram.low_ram_end);
            assert!(kernel.guest_phys.saturating_add(bz.init_size) <= ram.low_ram_end, "no room to decompress");
            if initrd.is_some() {
                let initrd = &plan.segments[1];
                assert!(initrd.checked_end().is_some_and(|end| end <= ram.low_ram_end), "initrd past RAM");
                assert!(kernel.guest_phys.saturating_add(bz.init_size) <= initrd.guest_phys, "initrd in the kernel");
            }
        }
    }
    let vmlinux = pvh::parse(image);
    outcome(&mut signal, &vmlinux);
    if let Ok(vmlinux) = &vmlinux {
        let boot = LinuxBoot { ram, cmdline, initrd, rsdp, acpi_tables };
        let plan = pvh::plan(vmlinux, &boot);
        outcome(&mut signal, &plan);
        if let Ok(plan) = plan {
            check_start_info(&plan, &boot);
        }
        let plan = linux::plan_vmlinux(vmlinux, &boot);
        outcome(&mut signal, &plan);
        if let Ok(plan) = plan {
            assert_eq!(plan.entry, vmlinux.elf.entry, "the ELF entry");
            check_zero_page(&plan, cmdline, initrd);
        }
    }
    let extras = Extras { initrd, cmdline, rsdp, ..Extras::default() };
    let plan = load(image, &spec("linux"), ram, extras);
    outcome(&mut signal, &plan);
    if let Ok(plan) = plan {
        let inputs: [&[u8]; 2] = [image, &initrd_bytes];
        check_plan(&plan, ram.low_ram_end, &inputs);
        match linux::parse_kernel(image).expect("a kernel that loads parses") {
            Kernel::BzImage(_) => {
                assert_eq!((plan.mode, plan.rsi), (EntryMode::Long, ZERO_PAGE));
                assert_eq!(plan.entry, plan.segments[0].guest_phys + 0x200, "the 64-bit entry");
            }
            Kernel::Vmlinux(vmlinux) if vmlinux.entry.is_none() => {
                assert_eq!(plan.entry, vmlinux.elf.entry, "no PVH note: the 64-bit entry");
                check_zero_page(&plan, cmdline, initrd);
            }
            Kernel::Vmlinux(vmlinux) => {
                assert_eq!(Some(plan.entry), vmlinux.entry.map(u64::from), "the PVH entry");
                // load() hands the loader no ACPI table range.
                check_start_info(&plan, &LinuxBoot { ram, cmdline, initrd, rsdp, acpi_tables: None });
                feature(&mut signal, 0x400 | u64::from(initrd.is_some_and(|i| !i.is_empty())));
            }
        }
    }
    check_e820(&ram, acpi_tables);
    signal
}

/// A PVH plan against what the kernel was given: entered in protected mode
/// with EBX at a start info (version 1, the magic) whose command line,
/// module list and memory map are what `boot` asked for, every address in it
/// below 4 GiB and, but the RSDP's, inside the block or on the initrd.
fn check_start_info(plan: &LoadPlan, boot: &LinuxBoot) {
    assert_eq!((plan.mode, plan.rax, plan.rsi), (EntryMode::Protected, 0, 0));
    let at_ebx = |s: &&Segment| s.guest_phys == plan.rbx && matches!(s.data, SegmentData::Owned(_));
    let block = plan.segments.iter().find(at_ebx).expect("a start info block at EBX");
    assert!(block.end() <= 1 << 32 && plan.rbx >= 0x1000, "start info at {:#x}", plan.rbx);
    let block = block.data.bytes();
    let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
    // A pointer into the block, as an offset; every one must land inside it.
    let offset = |address: u64| {
        let at = address.checked_sub(plan.rbx).filter(|&at| at < block.len() as u64);
        at.unwrap_or_else(|| panic!("{address:#x} outside the block at {:#x}", plan.rbx)) as usize
    };
    assert_eq!((u32_at(0), u32_at(4), u32_at(8)), (pvh::START_INFO_MAGIC, 1, 0), "magic, version, flags");
    let line = offset(u64_at(24));
    let length = block[line..].iter().position(|&b| b == 0).expect("a NUL-terminated command line");
    assert_eq!(&block[line..line + length], boot.cmdline.as_bytes());
    assert_eq!(u64_at(32), boot.rsdp.unwrap_or(0), "the RSDP as given");
    let initrd = boot.initrd.filter(|i| !i.is_empty());
    assert_eq!(u32_at(12), u32::from(initrd.is_some()), "one module: the initrd");
    if let Some(initrd) = initrd {
        let entry = offset(u64_at(16));
        let (start, size) = (u64_at(entry), u64_at(entry + 8));
        assert!(start.is_multiple_of(0x1000) && size == initrd.len() as u64, "initrd {start:#x}+{size:#x}");
        assert!(start.checked_add(size).is_some_and(|end| end <= 1 << 32), "the initrd past 4 GiB");
        let segment = plan.segments.iter().find(|s| s.guest_phys == start && !s.data.bytes().is_empty());
        assert_eq!(segment.expect("the initrd's segment").data.bytes(), initrd);
    } else {
        assert_eq!(u64_at(16), 0, "no module list");
    }
    let map = linux::e820(&boot.ram, boot.acpi_tables);
    let (map_at, entries) = (offset(u64_at(40)), u32_at(48) as usize);
    assert_eq!(entries, map.len());
    assert!(map_at + 24 * entries <= block.len(), "the memory map runs past the block");
    for (i, &(start, size, kind)) in map.iter().enumerate() {
        let e = map_at + 24 * i;
        assert_eq!((u64_at(e), u64_at(e + 8), u32_at(e + 16), u32_at(e + 20)), (start, size, kind, 0), "entry {i}");
    }
}

/// A vmlinux-shaped ELF64 file: one PT_LOAD segment of `code` (`bss` more
/// bytes of zero fill) at `paddr`, and a PT_NOTE segment of `notes`
/// (each: name with its NUL, type, description).
fn vmlinux_file(paddr: u64, code: &[u8], bss: u64, notes: &[(&[u8], u32, &[u8])]) -> Vec<u8> {
    let mut note_bytes = Vec::new();
    for (name, kind, desc) in notes {
        for word in [name.len() as u32 + 1, desc.len() as u32, *kind] {
            note_bytes.extend(word.to_le_bytes());
        }
        note_bytes.extend(*name);
        note_bytes.push(0);
        note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
        note_bytes.extend(*desc);
        note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
    }
    let mut f = vec![0u8; 64 + 2 * 56];
    f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    let code_at = f.len() as u64;
    let headers = [
        (1u32, code_at, paddr, code.len() as u64, code.len() as u64 + bss),
        (4, code_at + code.len() as u64, 0, note_bytes.len() as u64, note_bytes.len() as u64),
    ];
    for (i, (kind, offset, paddr, filesz, memsz)) in headers.into_iter().enumerate() {
        let p = 64 + 56 * i;
        f[p..p + 4].copy_from_slice(&kind.to_le_bytes());
        f[p + 8..p + 16].copy_from_slice(&offset.to_le_bytes());
        f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
        f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
        f[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        f[p + 48..p + 56].copy_from_slice(&4u64.to_le_bytes());
    }
    f.extend_from_slice(code);
    f.extend_from_slice(&note_bytes);
    f
}

/// Corpus seeds of vmlinux files for [`bzimage`], as `fuzz/corpus/bzimage/
/// vmlinux-NN` holds them (the test below keeps the two the same): a 256 MiB
/// VM with an initrd, a console and an RSDP, booting a kernel at 16 MiB with
/// a 4-byte entry note behind other notes; a 64 MiB VM with part of the
/// initrd and a long command line, the note 8 bytes (as Linux before 6.13
/// writes it); a kernel over conventional memory in a tight VM.
pub fn vmlinux_seeds() -> Vec<Vec<u8>> {
    let code = [0xf4u8; 64];
    let build_id: &[u8] = &[0xab; 20];
    let inputs: [(&[u8], Vec<u8>); 3] = [
        (
            // low RAM, 256 MiB; all the initrd; a 0-byte long line; the console; an RSDP; no ACPI range
            &[0, 3, 1, 0, 0, 1, 1, 1, 0xe0, 0],
            vmlinux_file(
                0x100_0000,
                &code,
                0x2000,
                &[(b"GNU", 3, build_id), (b"Xen", 18, &0x100_0010u32.to_le_bytes()), (b"Linux", 0, &[0; 4])],
            ),
        ),
        (
            // low RAM, 64 MiB; 0x1234 bytes of initrd; a 2000-byte line; no RSDP; no ACPI range
            &[0, 2, 2, 0x34, 0x12, 0xd0, 0x07, 2, 0, 0],
            vmlinux_file(0x20_0000, &code, 0, &[(b"Xen", 18, &0x20_0000u64.to_le_bytes())]),
        ),
        (
            // low RAM, 16 MiB; no initrd; no line; no RSDP; no ACPI range
            &[0, 1, 0, 0, 0, 0, 0, 0],
            vmlinux_file(0x1000, &code, 0x9_e000 - 64, &[(b"Xen", 18, &0x1000u32.to_le_bytes())]),
        ),
    ];
    inputs.into_iter().map(|(choices, file)| [choices, &file[..]].concat()).collect()
}

/// The memory map Linux gets: sorted, no overlaps, and (for a VM of at least
/// 1 MiB, as every VM is) RAM only where the VM has RAM.
fn check_e820(ram: &GuestRam, acpi_tables: Option<(u64, u64)>) {
    let map = linux::e820(ram, acpi_tables);
    let mut previous_end = 0;
    for &(base, size, kind) in &map {
        let end = base.checked_add(size).unwrap_or_else(|| panic!("e820 entry {base:#x}+{size:#x} wraps"));
        assert!(base >= previous_end, "e820 entries out of order or overlapping: {map:x?}");
        previous_end = end;
        let is_ram = kind == linux::E820_RAM || kind == linux::E820_ACPI;
        let in_low = end <= ram.low_ram_end;
        let in_high = ram.high.is_some_and(|(start, len)| base >= start && end - start <= len);
        if is_ram && size > 0 && ram.low_ram_end >= 1 << 20 {
            assert!(in_low || in_high, "e820 RAM {base:#x}..{end:#x} outside the VM's RAM ({ram:x?})");
        }
    }
}

/// Input: the bundle's bytes.
pub fn bundle(data: &[u8]) -> u64 {
    let mut signal = 0;
    let parsed = Bundle::parse(data);
    outcome(&mut signal, &parsed);
    if let Ok(bundle) = parsed {
        let mut entries = Vec::new();
        for name in bundle.names() {
            let bytes = bundle.get(name).unwrap();
            assert!(inside(name.as_bytes(), data) && inside(bytes, data), "an entry outside the bundle");
            entries.push((name.to_string(), bytes.to_vec()));
        }
        // `get` finds the first of repeated names, so only bundles with unique
        // names can be rebuilt from what the parser offers.
        let unique = entries.iter().enumerate().all(|(i, (name, _))| entries[..i].iter().all(|(n, _)| n != name));
        if unique {
            let written = loader::bundle::write(&entries);
            assert!(data.starts_with(&written), "what parsed does not write back the same bytes");
        }
        feature(&mut signal, 0x100 | entries.len().min(8) as u64);
    }
    signal
}

/// Input: the VM list's text (bytes that are not UTF-8 are replaced).
pub fn manifest(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let mut signal = 0;
    let parsed = parse_manifest(&text);
    outcome(&mut signal, &parsed);
    if let Err(e) = &parsed {
        assert!(e.line >= 1, "an error on line {}", e.line);
    }
    let Ok(vms) = parsed else { return signal };
    for (i, vm) in vms.iter().enumerate() {
        assert!(!vm.name.is_empty() && !vm.image.is_empty(), "VM {i}: an empty name or image");
        assert!((MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&vm.memory_mib), "VM {i}: memory {}", vm.memory_mib);
        assert!((1..=MAX_VCPUS).contains(&vm.cpus), "VM {i}: {} vCPUs", vm.cpus);
        assert!(vm.time_limit_ms > 0 && vm.disks.len() <= MAX_DISKS, "VM {i}: limits");
        assert!(vms[..i].iter().all(|v| v.name != vm.name), "VM {i}: the name {:?} again", vm.name);
    }
    assert!(vms.iter().filter(|v| v.host_console).count() <= 1, "two VMs own the host console");
    let rendered: Vec<String> = vms.iter().map(manifest::render).collect();
    assert_eq!(parse_manifest(&rendered.join("\n")).as_ref(), Ok(&vms), "rendered back: {rendered:?}");
    feature(&mut signal, 0x100 | vms.len().min(8) as u64);
    signal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corpus holds exactly what `vmlinux_seeds` makes (`cargo test`
    /// replays it with every target's corpus), and each seed boots.
    #[test]
    fn the_vmlinux_seeds_are_in_the_corpus_and_boot() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/bzimage");
        for (i, seed) in vmlinux_seeds().iter().enumerate() {
            let path = dir.join(format!("vmlinux-{i:02}"));
            let stored = std::fs::read(&path).unwrap_or_default();
            if std::env::var_os("BASALT_WRITE_VMLINUX_SEEDS").is_some() {
                std::fs::write(&path, seed).unwrap();
            } else {
                assert!(
                    stored == *seed,
                    "{} differs from vmlinux_seeds() (BASALT_WRITE_VMLINUX_SEEDS=1 rewrites it)",
                    path.display()
                );
            }
            assert!(seed.len() < 4096);
            // Each reaches a PVH plan, with its initrd where it has one.
            let signal = bzimage(seed);
            let mut expected = 0;
            feature(&mut expected, 0x400 | u64::from(i < 2));
            assert_eq!(signal & expected, expected, "seed {i} does not boot through PVH");
        }
    }
}
