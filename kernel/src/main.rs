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
mod smp;
mod time;
mod trap;
mod vmx_host;

use ::log::{error, info, warn};
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
    info!("Basalt {} starting", env!("CARGO_PKG_VERSION"));

    let options = cmdline::parse(boot_command_line(boot_info));
    if let Some(method) = options.exit {
        platform_exit::set_method(method);
    }

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

    vmx_host::report_capabilities();

    #[cfg(feature = "test-hooks")]
    if let Some(injection) = options.inject {
        selftest::inject(injection);
    }
    #[cfg(not(feature = "test-hooks"))]
    if options.inject.is_some() {
        warn!("fault injection is only built into the test configuration; ignoring it");
    }

    if options.selftest {
        let passed = selftest::run(&memory_map, &smp);
        platform_exit::exit(if passed { Status::Success } else { Status::Failure });
    }
    info!("ready: {} CPUs online; no guests configured yet", smp.online);
    idle()
}

/// The boot command line is the ramdisk's text, if there is a ramdisk.
fn boot_command_line(boot_info: &BootInfo) -> &'static str {
    let Some(addr) = boot_info.ramdisk_addr.into_option() else { return "" };
    let len = boot_info.ramdisk_len.min(4096) as usize;
    // SAFETY: the bootloader maps the ramdisk at `addr` for `ramdisk_len` bytes and
    // never unmaps it.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
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
