//! The intercept vectors of the VMCB control area (APM vol. 2, 15.9–15.13 and
//! table B-1) and the set Basalt runs guests with. SVM's default is the reverse
//! of VMX's: everything not intercepted runs in the guest, including things
//! that act on the physical core (INIT, shutdown, INVD), so the set below
//! errs on the side of exiting.

use crate::vmcb::ControlArea;
use bitflags::bitflags;

bitflags! {
    /// Offset 0x000: reads of CRn are bit n, writes bit 16 + n. Only the
    /// registers Basalt can want are named.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct CrIntercepts: u32 {
        const READ_CR0 = 1 << 0;
        const READ_CR3 = 1 << 3;
        const READ_CR4 = 1 << 4;
        const READ_CR8 = 1 << 8;
        const WRITE_CR0 = 1 << 16;
        const WRITE_CR3 = 1 << 19;
        const WRITE_CR4 = 1 << 20;
        const WRITE_CR8 = 1 << 24;
    }
}

bitflags! {
    /// Offset 0x00c: events and legacy instructions.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Misc1: u32 {
        const INTR = 1 << 0;
        const NMI = 1 << 1;
        const SMI = 1 << 2;
        const INIT = 1 << 3;
        /// Exit when the guest is about to take a virtual interrupt (V_IRQ).
        const VINTR = 1 << 4;
        /// Writes to CR0 that change any bit other than TS and MP.
        const CR0_SEL_WRITE = 1 << 5;
        const IDTR_READ = 1 << 6;
        const GDTR_READ = 1 << 7;
        const LDTR_READ = 1 << 8;
        const TR_READ = 1 << 9;
        const IDTR_WRITE = 1 << 10;
        const GDTR_WRITE = 1 << 11;
        const LDTR_WRITE = 1 << 12;
        const TR_WRITE = 1 << 13;
        const RDTSC = 1 << 14;
        const RDPMC = 1 << 15;
        const PUSHF = 1 << 16;
        const POPF = 1 << 17;
        const CPUID = 1 << 18;
        const RSM = 1 << 19;
        const IRET = 1 << 20;
        const INTN = 1 << 21;
        const INVD = 1 << 22;
        const PAUSE = 1 << 23;
        const HLT = 1 << 24;
        const INVLPG = 1 << 25;
        const INVLPGA = 1 << 26;
        /// Port I/O through the I/O permission map.
        const IOIO_PROT = 1 << 27;
        /// RDMSR/WRMSR through the MSR permission map.
        const MSR_PROT = 1 << 28;
        const TASK_SWITCH = 1 << 29;
        const FERR_FREEZE = 1 << 30;
        /// Shutdown (triple fault) in the guest.
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// Offset 0x010: the SVM instructions and later additions.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Misc2: u32 {
        /// VMRUN fails (VMEXIT_INVALID) unless this is set.
        const VMRUN = 1 << 0;
        const VMMCALL = 1 << 1;
        const VMLOAD = 1 << 2;
        const VMSAVE = 1 << 3;
        const STGI = 1 << 4;
        const CLGI = 1 << 5;
        const SKINIT = 1 << 6;
        const RDTSCP = 1 << 7;
        const ICEBP = 1 << 8;
        /// WBINVD and WBNOINVD.
        const WBINVD = 1 << 9;
        /// MONITOR and MONITORX.
        const MONITOR = 1 << 10;
        /// MWAIT and MWAITX, unconditionally.
        const MWAIT = 1 << 11;
        /// MWAIT and MWAITX, only when a monitor is armed.
        const MWAIT_ARMED = 1 << 12;
        const XSETBV = 1 << 13;
        const RDPRU = 1 << 14;
        /// Trap (after the write) on EFER writes; SEV-ES only.
        const EFER_WRITE_TRAP = 1 << 15;
    }
}

bitflags! {
    /// Offset 0x014: the third instruction intercept word, present on newer
    /// CPUs (reserved and zero on older ones, so Basalt sets none of it).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Misc3: u32 {
        const INVLPGB = 1 << 0;
        const INVLPGB_ILLEGAL = 1 << 1;
        const INVPCID = 1 << 2;
        const MCOMMIT = 1 << 3;
        const TLBSYNC = 1 << 4;
    }
}

/// The exception-intercept bit of a vector (offset 0x008).
pub const fn exception(vector: u8) -> u32 {
    1 << (vector & 31)
}

/// Every intercept vector of a VMCB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intercepts {
    pub cr: CrIntercepts,
    /// Bit n: reads of DRn; bit 16 + n: writes.
    pub dr: u32,
    pub exceptions: u32,
    pub misc1: Misc1,
    pub misc2: Misc2,
    pub misc3: Misc3,
}

/// What varies per vCPU and over time in Basalt's intercept set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// An interrupt waits for the guest to become interruptible: with V_IRQ
    /// requested, VINTR makes the guest exit at that moment (the VMX
    /// interrupt-window exit's counterpart).
    pub interrupt_window: bool,
    /// Exit on writes to CR8. V_INTR_MASKING already keeps the guest's CR8 off
    /// the host's TPR, so this is only for when the APIC model must see a TPR
    /// change at once (an interrupt it holds back because of the TPR).
    pub cr8_writes: bool,
}

impl Intercepts {
    /// The set that makes SVM exit where Basalt's VMX controls exit
    /// (kernel/src/vmm/cpu.rs), plus what SVM alone needs.
    pub const fn basalt(wants: Wants) -> Self {
        let mut cr = CrIntercepts::WRITE_CR4.bits();
        if wants.cr8_writes {
            cr |= CrIntercepts::WRITE_CR8.bits();
        }
        let mut misc1 = Misc1::INTR.bits()
            // The host's own NMIs and SMIs are taken in the host, not in a guest's context.
            | Misc1::NMI.bits()
            | Misc1::SMI.bits()
            // Not intercepted, an INIT resets the physical core under the host.
            | Misc1::INIT.bits()
            // Mode changes (PE, PG) and cache control (CD, NW) exit; the TS/MP
            // flips of lazy FPU switching do not.
            | Misc1::CR0_SEL_WRITE.bits()
            // Would read the host's performance counters.
            | Misc1::RDPMC.bits()
            | Misc1::CPUID.bits()
            // Would drop dirty cache lines the host and other VMs own.
            | Misc1::INVD.bits()
            | Misc1::HLT.bits()
            // INVLPGA names any ASID, another VM's included.
            | Misc1::INVLPGA.bits()
            | Misc1::IOIO_PROT.bits()
            | Misc1::MSR_PROT.bits()
            // Not intercepted, a guest's triple fault shuts the physical core down.
            | Misc1::SHUTDOWN.bits();
        if wants.interrupt_window {
            misc1 |= Misc1::VINTR.bits();
        }
        // SVM is hidden from guests; its instructions act on physical addresses
        // and the core's global interrupt flag, so each exits (and the guest gets
        // #UD) whatever the guest's EFER.SVME says.
        let misc2 = Misc2::VMRUN.bits()
            | Misc2::VMMCALL.bits()
            | Misc2::VMLOAD.bits()
            | Misc2::VMSAVE.bits()
            | Misc2::STGI.bits()
            | Misc2::CLGI.bits()
            | Misc2::SKINIT.bits()
            // Caches are shared with other VMs: WBINVD exits and does nothing.
            | Misc2::WBINVD.bits()
            // Would park the core in a state the guest chooses.
            | Misc2::MONITOR.bits()
            | Misc2::MWAIT.bits()
            | Misc2::MWAIT_ARMED.bits()
            // XCR0 is checked against what CPUID offers the guest. QEMU 7.2's TCG
            // appears not to honour this intercept; the back end must not rely
            // on seeing every XSETBV there.
            | Misc2::XSETBV.bits();
        Intercepts {
            cr: CrIntercepts::from_bits_retain(cr),
            dr: 0,
            // As on VMX: exceptions stay in the guest, but for #DB and #AC,
            // which a guest can make recur during their own delivery; a CPU in
            // that loop never exits and the core hangs (CVE-2015-8104,
            // CVE-2015-5307). The back end passes them back.
            exceptions: exception(1) | exception(17),
            misc1: Misc1::from_bits_retain(misc1),
            misc2: Misc2::from_bits_retain(misc2),
            misc3: Misc3::empty(),
        }
    }

    pub fn write_to(&self, control: &mut ControlArea) {
        control.intercept_cr = self.cr.bits();
        control.intercept_dr = self.dr;
        control.intercept_exceptions = self.exceptions;
        control.intercept_misc1 = self.misc1.bits();
        control.intercept_misc2 = self.misc2.bits();
        control.intercept_misc3 = self.misc3.bits();
    }

    pub fn read_from(control: &ControlArea) -> Self {
        Intercepts {
            cr: CrIntercepts::from_bits_retain(control.intercept_cr),
            dr: control.intercept_dr,
            exceptions: control.intercept_exceptions,
            misc1: Misc1::from_bits_retain(control.intercept_misc1),
            misc2: Misc2::from_bits_retain(control.intercept_misc2),
            misc3: Misc3::from_bits_retain(control.intercept_misc3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::code;

    #[test]
    fn intercept_bits_sit_where_the_apm_puts_them() {
        // Misc1 bit n exits with code 0x60 + n, Misc2 bit n with 0x80 + n: the
        // APM numbers both in the same order, which pins every flag at once.
        let misc1: &[(Misc1, u64)] = &[
            (Misc1::INTR, code::INTR),
            (Misc1::VINTR, code::VINTR),
            (Misc1::CR0_SEL_WRITE, code::CR0_SEL_WRITE),
            (Misc1::RDPMC, code::RDPMC),
            (Misc1::CPUID, code::CPUID),
            (Misc1::INVD, code::INVD),
            (Misc1::HLT, code::HLT),
            (Misc1::INVLPGA, code::INVLPGA),
            (Misc1::IOIO_PROT, code::IOIO),
            (Misc1::MSR_PROT, code::MSR),
            (Misc1::SHUTDOWN, code::SHUTDOWN),
        ];
        for &(flag, exit) in misc1 {
            assert_eq!(flag.bits(), 1 << (exit - code::INTR), "{flag:?}");
        }
        let misc2: &[(Misc2, u64)] = &[
            (Misc2::VMRUN, code::VMRUN),
            (Misc2::VMMCALL, code::VMMCALL),
            (Misc2::SKINIT, code::SKINIT),
            (Misc2::WBINVD, code::WBINVD),
            (Misc2::MONITOR, code::MONITOR),
            (Misc2::MWAIT, code::MWAIT),
            (Misc2::MWAIT_ARMED, code::MWAIT_CONDITIONAL),
            (Misc2::XSETBV, code::XSETBV),
            (Misc2::EFER_WRITE_TRAP, code::EFER_WRITE_TRAP),
        ];
        for &(flag, exit) in misc2 {
            assert_eq!(flag.bits(), 1 << (exit - code::VMRUN), "{flag:?}");
        }
        // CR intercept bits follow the CR exit codes in the same way.
        assert_eq!(CrIntercepts::WRITE_CR4.bits(), 1 << code::CR4_WRITE);
        assert_eq!(CrIntercepts::WRITE_CR8.bits(), 1 << code::CR8_WRITE);
        assert_eq!(CrIntercepts::READ_CR3.bits(), 1 << code::CR3_READ);
        assert_eq!(exception(14), 1 << 14);
    }

    #[test]
    fn basalt_set_always_has_what_vmrun_and_host_safety_need() {
        for interrupt_window in [false, true] {
            for cr8_writes in [false, true] {
                let set = Intercepts::basalt(Wants { interrupt_window, cr8_writes });
                assert!(set.misc2.contains(Misc2::VMRUN), "VMRUN refuses a VMCB without it");
                assert!(set.misc2.contains(
                    Misc2::VMMCALL
                        | Misc2::VMLOAD
                        | Misc2::VMSAVE
                        | Misc2::STGI
                        | Misc2::CLGI
                        | Misc2::SKINIT
                        | Misc2::WBINVD
                        | Misc2::MONITOR
                        | Misc2::MWAIT
                        | Misc2::MWAIT_ARMED
                        | Misc2::XSETBV
                ));
                assert!(set.misc1.contains(
                    Misc1::INTR
                        | Misc1::NMI
                        | Misc1::SMI
                        | Misc1::INIT
                        | Misc1::CR0_SEL_WRITE
                        | Misc1::RDPMC
                        | Misc1::CPUID
                        | Misc1::INVD
                        | Misc1::HLT
                        | Misc1::INVLPGA
                        | Misc1::IOIO_PROT
                        | Misc1::MSR_PROT
                        | Misc1::SHUTDOWN
                ));
                assert!(set.cr.contains(CrIntercepts::WRITE_CR4));
                assert_eq!(set.misc1.contains(Misc1::VINTR), interrupt_window);
                assert_eq!(set.cr.contains(CrIntercepts::WRITE_CR8), cr8_writes);
                // With nested paging, CR3 and page faults stay in the guest;
                // a full CR0 write intercept would shadow the selective one.
                assert!(!set.cr.intersects(CrIntercepts::READ_CR3 | CrIntercepts::WRITE_CR3 | CrIntercepts::WRITE_CR0));
                assert_eq!(set.exceptions, exception(1) | exception(17), "only #DB and #AC");
                assert!(set.misc3.is_empty());
            }
        }
    }

    #[test]
    fn intercepts_land_in_their_vmcb_words_and_read_back() {
        let set = Intercepts::basalt(Wants { interrupt_window: true, cr8_writes: true });
        let mut control = ControlArea::new();
        set.write_to(&mut control);
        assert_eq!(control.intercept_cr, (1 << 20) | (1 << 24));
        assert_eq!(control.intercept_misc1 & (1 << 4), 1 << 4, "VINTR");
        assert_eq!(control.intercept_misc2 & 1, 1, "VMRUN");
        assert_eq!(control.intercept_misc1 >> 31, 1, "SHUTDOWN");
        assert_eq!(Intercepts::read_from(&control), set);
        // Turning the window off clears only VINTR.
        let quiet = Intercepts::basalt(Wants { interrupt_window: false, cr8_writes: true });
        quiet.write_to(&mut control);
        assert_eq!(control.intercept_misc1, set.misc1.bits() & !(1 << 4));
    }
}
