//! The boot command line: `key=value` words from the start of the boot image's
//! ramdisk (the bootloader has no command line of its own). `cargo xtask` writes it.

/// Boot options Basalt understands. Unknown words are reported, not fatal.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    pub exit: Option<crate::platform_exit::ExitMethod>,
    /// Run the boot self-checks and end the run with their result.
    pub selftest: bool,
    /// Test-configuration only: deliberately misbehave to prove the runner notices.
    pub inject: Option<Injection>,
    /// Reference clock for calibration; the best available when not given.
    pub clock: Option<crate::time::ReferenceKind>,
    /// How much of the CPU's APIC virtualisation to use, at most (`apicv=`),
    /// to compare or to test the other paths.
    pub apic_virtualization: ApicVirtualization,
    /// `profile=loop`: the run loop times its fixed work per entry, phase by
    /// phase, and each VM's report gets a line with the averages.
    pub profile_loop: bool,
    /// `slice-us=N`: the scheduler's time slice for a CPU-bound vCPU that
    /// shares its core, in microseconds (100 to 1000000); the policy's
    /// default (500) when not given. Emulators whose guest time runs far
    /// faster per instruction than hardware's want a longer one.
    pub slice_us: Option<u64>,
    /// Test-configuration only (`migrate=every-slice`): every vCPU moves to
    /// another CPU at the end of every slice, and a vCPU alone on its CPU
    /// gets slices too, so the cases prove a vCPU survives any move.
    pub migrate_every_slice: bool,
    /// Test-configuration only (`one-shot=early`): the host's one-shot APIC
    /// timer fires a tenth early, as against a TSC it was calibrated badly
    /// against, so the cases prove no wait relies on it firing on time.
    pub early_one_shot: bool,
    /// `shell=on`: the management shell has the console (see `shell.rs`);
    /// the VMs run until the operator's `quit`.
    pub shell: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ApicVirtualization {
    /// `apicv=on`: all the CPU has, virtual-interrupt delivery included.
    #[default]
    Full,
    /// `apicv=registers`: the virtual-APIC page and register virtualisation,
    /// but interrupts are injected and EOIs exit.
    Registers,
    /// `apicv=off`: none; every APIC access is emulated, CR8 exits.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    PageFault,
    Panic,
    Hang,
    StackOverflow,
}

pub fn parse(text: &str) -> Options {
    use crate::platform_exit::ExitMethod;
    use crate::time::ReferenceKind;
    let mut options = Options::default();
    for word in text.split_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        match (key, value) {
            ("exit", "qemu") => options.exit = Some(ExitMethod::QemuDebugExit),
            ("exit", "bochs") => options.exit = Some(ExitMethod::Bochs),
            ("exit", "none") => options.exit = Some(ExitMethod::Halt),
            ("selftest", "") | ("selftest", "1") => options.selftest = true,
            ("inject", "page-fault") => options.inject = Some(Injection::PageFault),
            ("inject", "panic") => options.inject = Some(Injection::Panic),
            ("inject", "hang") => options.inject = Some(Injection::Hang),
            ("inject", "stack-overflow") => options.inject = Some(Injection::StackOverflow),
            ("clock", "hpet") => options.clock = Some(ReferenceKind::Hpet),
            ("clock", "pm-timer") => options.clock = Some(ReferenceKind::PmTimer),
            ("clock", "pit") => options.clock = Some(ReferenceKind::Pit),
            ("apicv", "off") => options.apic_virtualization = ApicVirtualization::Off,
            ("apicv", "registers") => options.apic_virtualization = ApicVirtualization::Registers,
            ("apicv", "on") => options.apic_virtualization = ApicVirtualization::Full,
            ("profile", "loop") => options.profile_loop = true,
            ("profile", "off") => options.profile_loop = false,
            ("migrate", "every-slice") => options.migrate_every_slice = true,
            ("one-shot", "early") => options.early_one_shot = true,
            ("shell", "on") => options.shell = true,
            ("shell", "off") => options.shell = false,
            ("slice-us", n) => match n.parse::<u64>() {
                Ok(micros @ 100..=1_000_000) => options.slice_us = Some(micros),
                _ => log::warn!("ignoring '{word}': the slice is 100 to 1000000 microseconds"),
            },
            _ => log::warn!("ignoring unknown boot option '{word}'"),
        }
    }
    options
}
