//! Basalt: a bare-metal hypervisor. This is the kernel's entry and boot sequence;
//! each step lives in its own module.
#![no_std]
#![no_main]

extern crate alloc;

mod apic;
mod cmdline;
mod crash;
mod gdt;
mod log;
mod memory;
mod percpu;
mod pic;
mod platform;
mod platform_exit;
mod selftest;
mod shell;
mod smp;
mod time;
mod trap;
mod vmm;

use ::log::{error, info, warn};
use alloc::string::ToString;
use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::BootInfo;
use platform_exit::Status;

pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    // Keep the bootloader's own placements out of the areas memory.rs uses.
    config.mappings.dynamic_range_start = Some(0xffff_8000_0000_0000);
    config.mappings.dynamic_range_end = Some(0xffff_bfff_ffff_ffff);
    config
};

bootloader_api::entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    time::mark_boot();
    log::init();
    percpu::init_bsp(apic::id());
    trap::load_idt();
    let cr0_found = set_control_registers();
    info!("Basalt {} starting (CR0 {:#x} as found)", env!("CARGO_PKG_VERSION"), cr0_found);
    // Where the kernel's ELF addresses are in memory: what turns a RIP of a
    // crash report, or of an emulator's register dump, into a symbol.
    info!("kernel image at {:#x}", boot_info.kernel_image_offset);

    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        fail("the bootloader did not map physical memory")
    };
    let memory_map = memory::init(phys_offset, &boot_info.memory_regions);
    info!(
        "memory: {} MiB usable in {} of {} regions, heap {} MiB",
        memory_map.usable_bytes >> 20,
        memory_map.usable_regions,
        memory_map.regions,
        memory::HEAP_SIZE >> 20
    );

    // The bundle parser allocates, so this comes after the heap.
    let ramdisk = ramdisk(boot_info);
    let bundle = match ramdisk {
        Some(bytes) if loader::Bundle::is_bundle(bytes) => match loader::Bundle::parse(bytes) {
            Ok(b) => Some(b),
            Err(e) => fail_fmt(format_args!("the boot bundle is damaged: {e}")),
        },
        _ => None,
    };
    let command_line = match (&bundle, ramdisk) {
        (Some(b), _) => b.get("cmdline").unwrap_or(&[]),
        // A ramdisk that is not a bundle is taken as a plain command line.
        (None, Some(bytes)) => &bytes[..bytes.len().min(4096)],
        (None, None) => &[],
    };
    let options = cmdline::parse(text_of(command_line));
    vmm::intel::cpu::limit_apic_virtualization(options.apic_virtualization);
    vmm::run::set_profile_loop(options.profile_loop);
    if let Some(micros) = options.slice_us {
        vmm::set_slice_us(micros);
    }
    if let Some(method) = options.exit {
        platform_exit::set_method(method);
    }

    let platform = match platform::discover(boot_info.rsdp_addr.into_option()) {
        Ok(p) => p,
        Err(e) => fail_fmt(format_args!("cannot read the ACPI tables: {e:?}")),
    };
    info!(
        "acpi: {} CPUs, {} I/O APIC(s){}, local APIC at {:#x}, HPET {}, PM timer {}",
        platform.cpus.len(),
        platform.io_apics.len(),
        platform.io_apics.iter().fold(alloc::string::String::new(), |s, a| s + &alloc::format!(
            " [id {} at {:#x}, GSI {}+]",
            a.id,
            a.address,
            a.gsi_base
        )),
        platform.local_apic_address,
        if platform.hpet_address.is_some() { "yes" } else { "no" },
        if platform.pm_timer.is_some() { "yes" } else { "no" },
    );

    pic::remap_and_mask();
    let mode = apic::init_bsp(platform.local_apic_address);
    let clock = time::calibrate(time::Reference::choose(&platform, options.clock));
    time::mark_wall_clock();
    info!(
        "apic: {:?} mode, id {}; TSC {} MHz ({}), APIC timer {} MHz ({})",
        mode,
        apic::id(),
        clock.tsc_hz / 1_000_000,
        if clock.tsc_from_cpuid { "CPUID" } else { clock.reference },
        clock.apic_timer_hz / 1_000_000,
        if clock.apic_from_cpuid { "CPUID" } else { clock.reference },
    );
    x86_64::instructions::interrupts::enable();

    let smp = match smp::start_aps(&platform) {
        Ok(r) => r,
        Err(e) => fail_fmt(format_args!("cannot start the other CPUs: {e}")),
    };
    if smp.online == smp.expected {
        info!("all {} CPUs online", smp.online);
    } else {
        error!("only {} of {} CPUs online; missing APIC ids {:?}", smp.online, smp.expected, smp.failed_apic_ids);
    }

    vmm::report_capabilities();
    let guests_here = enable_virtualization_here();

    #[cfg(feature = "test-hooks")]
    if let Some(injection) = options.inject {
        selftest::inject(injection);
    }
    #[cfg(not(feature = "test-hooks"))]
    if options.inject.is_some() {
        warn!("fault injection is only built into the test configuration; ignoring it");
    }
    #[cfg(feature = "test-hooks")]
    if options.migrate_every_slice {
        warn!("moving every vCPU to another CPU at every slice, as the boot options ask");
        vmm::migrate_every_slice();
    }
    #[cfg(not(feature = "test-hooks"))]
    if options.migrate_every_slice {
        warn!("migrate=every-slice is only built into the test configuration; ignoring it");
    }
    #[cfg(feature = "test-hooks")]
    if options.early_one_shot {
        warn!("the one-shot APIC timer fires a tenth early, as the boot options ask");
        apic::fire_one_shots_early();
    }
    #[cfg(not(feature = "test-hooks"))]
    if options.early_one_shot {
        warn!("one-shot=early is only built into the test configuration; ignoring it");
    }

    if options.selftest && !selftest::run(&memory_map, &smp) {
        platform_exit::exit(Status::Failure);
    }
    let vms = match bundle.as_ref().map(guest_list).transpose() {
        Ok(vms) => vms.unwrap_or_default(),
        Err(e) => fail_fmt(format_args!("{e}")),
    };
    if !vms.is_empty() || options.shell {
        if !guests_here {
            fail("there are VMs to run but this CPU cannot run guests (see the vmx and svm lines above)");
        }
        let online = percpu::online().filter(|c| c.runs_guests.load(core::sync::atomic::Ordering::Acquire)).count();
        info!("vmm: running {} VM(s) on {} CPU(s)", vms.len(), online);
        let free_before = memory::free_frame_count();
        let runs = vmm::run_all(vms, options.shell);
        // Every VM's frames (RAM, nested page tables, control structures,
        // disks) go back when it ends: a host that starts and stops VMs
        // for ever must not lose memory to them.
        let free_after = memory::free_frame_count();
        let kept = match free_before.checked_sub(free_after) {
            Some(0) | None => "all given back".into(),
            Some(lost) => alloc::format!("{lost} not given back"),
        };
        info!("vmm: all {runs} VM(s) stopped; host frames free: {free_before} before, {free_after} after ({kept})");
    }
    if options.exit.is_some_and(|m| m != platform_exit::ExitMethod::Halt) {
        if options.selftest {
            info!("selftest: PASS");
        }
        platform_exit::exit(Status::Success);
    }
    info!("ready: {} CPUs online; nothing left to run", smp.online);
    idle()
}

/// Puts CR0 in the state Basalt runs in, whatever firmware left: caches on
/// (CD and NW clear; Bochs' BIOS leaves both set), native x87 errors (NE) and
/// MP. APs copy the BSP's CR0. Returns CR0 as found.
fn set_control_registers() -> u64 {
    use x86_64::registers::control::Cr0;
    const MP: u64 = 1 << 1;
    const NE: u64 = 1 << 5;
    const NW: u64 = 1 << 29;
    const CD: u64 = 1 << 30;
    let found = Cr0::read_raw();
    // SAFETY: enabling caching and setting MP/NE does not change the memory the
    // kernel sees or how its (soft-float) code runs.
    unsafe { Cr0::write_raw((found & !(CD | NW)) | MP | NE) };
    found
}

/// Turns VT-x or SVM on for the calling CPU if it has either; false (and why,
/// logged) if not.
pub fn enable_virtualization_here() -> bool {
    let Some(vendor) = vmm::vendor() else { return false };
    match vmm::enable_on_this_cpu() {
        Ok(()) => {
            if let Some(cpu) = percpu::current() {
                cpu.runs_guests.store(true, core::sync::atomic::Ordering::Release);
            }
            true
        }
        Err(e) => {
            let name = if vendor == vmm::Vendor::Intel { "vmx" } else { "svm" };
            error!("{name}: cannot enable on cpu{}: {e}", percpu::current_index());
            false
        }
    }
}

/// The VMs the bundle lists, each with its images; errors name what is wrong.
fn guest_list(bundle: &loader::Bundle<'static>) -> Result<alloc::vec::Vec<vmm::GuestImages>, alloc::string::String> {
    let Some(list) = bundle.get("vms") else { return Ok(alloc::vec::Vec::new()) };
    let text = core::str::from_utf8(list).map_err(|_| "the bundle's VM list is not UTF-8".to_string())?;
    let specs = loader::parse_manifest(text).map_err(|e| alloc::format!("{e}"))?;
    let entry = |vm: &str, what: &str, name: &str| {
        bundle.get(name).ok_or_else(|| alloc::format!("VM '{vm}' names {what} '{name}', which is not in the bundle"))
    };
    specs
        .into_iter()
        .map(|spec| {
            let image = entry(&spec.name, "image", &spec.image)?;
            let initrd = spec.initrd.as_deref().map(|n| entry(&spec.name, "initrd", n)).transpose()?;
            let cmdline = match spec.kernel_cmdline.as_deref() {
                Some(n) => core::str::from_utf8(entry(&spec.name, "kernel command line", n)?)
                    .map_err(|_| alloc::format!("VM '{}': the kernel command line is not UTF-8", spec.name))?,
                None => "",
            };
            let disks = spec.disks.iter().map(|n| entry(&spec.name, "disk", n)).collect::<Result<_, _>>()?;
            Ok(vmm::GuestImages { spec, image, initrd, cmdline, disks })
        })
        .collect()
}

/// The boot image's ramdisk: a bundle (command line, VM list, guest images), or
/// for hand-made images a plain command line.
fn ramdisk(boot_info: &BootInfo) -> Option<&'static [u8]> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    // SAFETY: the bootloader maps the ramdisk at `addr` for `ramdisk_len` bytes and
    // never unmaps it.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, boot_info.ramdisk_len as usize) })
}

fn text_of(bytes: &'static [u8]) -> &'static str {
    let text = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
    core::str::from_utf8(text).unwrap_or_else(|_| {
        warn!("the boot command line is not UTF-8; ignoring it");
        ""
    })
}

/// Where every CPU rests when it has nothing to do: interrupts on, halted.
pub fn idle() -> ! {
    loop {
        x86_64::instructions::interrupts::enable_and_hlt();
        crate::log::pump();
    }
}

fn fail(reason: &str) -> ! {
    fail_fmt(format_args!("{reason}"))
}

fn fail_fmt(reason: core::fmt::Arguments) -> ! {
    error!("{reason}");
    log::write_locked(format_args!("basalt: FAILED: {reason}\n"));
    platform_exit::exit(Status::Failure)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crash::panic(info)
}
