//! The host as the exit handlers see it (`vmexit::Host`): the TSC, this
//! CPU's CPUID, and what guests may enable of its XSAVE state.

use super::xstate;
use vmexit::GuestXstate;

/// `time_base`: host TSC ticks the VM spent paused; its devices' clocks
/// run that much behind the host's (see `SharedVm::time_base`).
#[derive(Default)]
pub struct KernelHost {
    pub time_base: u64,
}

impl vmexit::Host for KernelHost {
    fn now(&self) -> u64 {
        crate::time::rdtsc().wrapping_sub(self.time_base)
    }

    fn tsc_hz(&self) -> u64 {
        crate::time::tsc_hz()
    }

    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn guest_xstate(&self) -> GuestXstate {
        let x = xstate::guest();
        GuestXstate { allowed: x.allowed, area_size: x.area_size }
    }

    /// The same for every guest on this host: worked out once.
    fn guest_cr4_allowed(&self) -> u64 {
        static ALLOWED: spin::Once<u64> = spin::Once::new();
        *ALLOWED.call_once(|| vmexit::cpuid::guest_cr4_allowed(self))
    }

    /// The interrupt is still pending in the local APIC (the exit did not
    /// acknowledge it): open a short window so the host's handler takes it.
    fn take_host_interrupt(&mut self) {
        x86_64::instructions::interrupts::enable();
        x86_64::instructions::nop();
        x86_64::instructions::interrupts::disable();
    }

    fn take_host_nmi(&mut self) {
        if crate::crash::in_progress() {
            crate::crash::stopped_by_other_cpu();
        }
        log::warn!("NMI while a guest ran; ignored");
    }
}

/// The CR4 bits guests may set on this host (back ends own the others).
pub fn guest_cr4_allowed() -> u64 {
    vmexit::Host::guest_cr4_allowed(&KernelHost::default())
}

/// MAXPHYADDR as guests see it (CPUID 0x80000008 is passed through), asked
/// of the CPU once.
pub fn max_phys_bits() -> u8 {
    use core::arch::x86_64::__cpuid;
    static BITS: spin::Once<u8> = spin::Once::new();
    *BITS.call_once(|| if __cpuid(0x8000_0000).eax >= 0x8000_0008 { __cpuid(0x8000_0008).eax as u8 } else { 36 })
}
