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
    /// `apicv=off`: no APIC virtualisation even where the CPU has it (every
    /// APIC access is emulated, CR8 exits), to compare or to test that path.
    pub no_apic_virtualization: bool,
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
            ("apicv", "off") => options.no_apic_virtualization = true,
            ("apicv", "on") => options.no_apic_virtualization = false,
            _ => log::warn!("ignoring unknown boot option '{word}'"),
        }
    }
    options
}
