//! Targets for what Basalt reads from its boot image: guest kernels (ELF,
//! Multiboot, bzImage), the boot bundle and the VM list.

use crate::{feature, kind_of};
use basalt_fuzz::Reader;
use devices::layout::{RamMap, RAM_HOLE_START};
use loader::image::{Segment, SegmentData, MULTIBOOT_BOOTLOADER_MAGIC};
use loader::linux::{self, LinuxBoot, ZERO_PAGE};
use loader::manifest::{self, MAX_DISKS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use loader::plan_check::{check_plan, inside};
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

/// Input: RAM choice, initrd size, command line, ACPI placement, then the file.
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
    let extras = Extras { initrd, cmdline, rsdp, ..Extras::default() };
    let plan = load(image, &spec("linux"), ram, extras);
    outcome(&mut signal, &plan);
    if let Ok(plan) = plan {
        let inputs: [&[u8]; 2] = [image, &initrd_bytes];
        check_plan(&plan, ram.low_ram_end, &inputs);
        assert_eq!((plan.mode, plan.rsi), (EntryMode::Long, ZERO_PAGE));
        assert_eq!(plan.entry, plan.segments[0].guest_phys + 0x200, "the 64-bit entry");
    }
    check_e820(&ram, acpi_tables);
    signal
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
