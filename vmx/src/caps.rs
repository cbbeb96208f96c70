//! Decoding of the VMX capability MSRs into what Basalt needs to know.

use crate::controls::AllowedControls;
use crate::msr::{self, MsrReader};
use bitflags::bitflags;
use core::fmt;

/// IA32_VMX_BASIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxBasic {
    pub revision_id: u32,
    /// Bytes to allocate for the VMXON region and each VMCS.
    pub region_size: u16,
    /// Memory type the CPU uses to access the VMCS (6 = write-back).
    pub vmcs_memory_type: u8,
    /// VM exits for INS/OUTS report the instruction information field.
    pub ins_outs_info: bool,
    /// The IA32_VMX_TRUE_*_CTLS MSRs exist and should be used.
    pub true_controls: bool,
    /// Physical addresses of VMX structures are limited to 32 bits.
    pub addresses_32bit: bool,
}

impl VmxBasic {
    pub const fn decode(v: u64) -> Self {
        VmxBasic {
            revision_id: (v & 0x7fff_ffff) as u32,
            region_size: ((v >> 32) & 0x1fff) as u16,
            addresses_32bit: v & (1 << 48) != 0,
            vmcs_memory_type: ((v >> 50) & 0xf) as u8,
            ins_outs_info: v & (1 << 54) != 0,
            true_controls: v & (1 << 55) != 0,
        }
    }
}

/// IA32_VMX_MISC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxMisc {
    /// The preemption timer counts down once every 2^rate TSC ticks.
    pub preemption_timer_rate: u8,
    /// VM exits store EFER.LMA into the "IA-32e mode guest" entry control.
    pub stores_lma: bool,
    pub activity_hlt: bool,
    pub activity_shutdown: bool,
    pub activity_wait_for_sipi: bool,
    pub cr3_target_count: u16,
    pub max_msr_list_entries: u32,
}

impl VmxMisc {
    pub const fn decode(v: u64) -> Self {
        VmxMisc {
            preemption_timer_rate: (v & 0x1f) as u8,
            stores_lma: v & (1 << 5) != 0,
            activity_hlt: v & (1 << 6) != 0,
            activity_shutdown: v & (1 << 7) != 0,
            activity_wait_for_sipi: v & (1 << 8) != 0,
            cr3_target_count: ((v >> 16) & 0x1ff) as u16,
            max_msr_list_entries: 512 * (((v >> 25) & 0x7) as u32 + 1),
        }
    }
}

/// Bits of CR0 or CR4 that VMX operation pins: `must_be_one` from FIXED0, and
/// every bit clear in FIXED1 must be 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedBits {
    pub must_be_one: u64,
    pub may_be_one: u64,
}

impl FixedBits {
    /// `value` with the pinned bits forced to what VMX requires.
    pub const fn apply(&self, value: u64) -> u64 {
        (value | self.must_be_one) & self.may_be_one
    }

    /// Whether `value` is legal in VMX operation.
    pub const fn allows(&self, value: u64) -> bool {
        self.apply(value) == value
    }

    /// With unrestricted guest, a guest may run with CR0.PE and CR0.PG clear.
    pub const fn for_unrestricted_guest_cr0(self) -> Self {
        const PE: u64 = 1;
        const PG: u64 = 1 << 31;
        FixedBits { must_be_one: self.must_be_one & !(PE | PG), may_be_one: self.may_be_one }
    }
}

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EptVpidCaps: u64 {
        const EXECUTE_ONLY = 1 << 0;
        const PAGE_WALK_4 = 1 << 6;
        const PAGE_WALK_5 = 1 << 7;
        const MEMORY_TYPE_UC = 1 << 8;
        const MEMORY_TYPE_WB = 1 << 14;
        const PAGES_2M = 1 << 16;
        const PAGES_1G = 1 << 17;
        const INVEPT = 1 << 20;
        const ACCESSED_DIRTY = 1 << 21;
        const ADVANCED_EXIT_INFO = 1 << 22;
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        const INVEPT_ALL_CONTEXT = 1 << 26;
        const INVVPID = 1 << 32;
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        const INVVPID_ALL_CONTEXT = 1 << 42;
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls Basalt cares about.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SecondaryControls: u32 {
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        const ENABLE_EPT = 1 << 1;
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        const ENABLE_RDTSCP = 1 << 3;
        const VIRTUALIZE_X2APIC = 1 << 4;
        const ENABLE_VPID = 1 << 5;
        const WBINVD_EXITING = 1 << 6;
        const UNRESTRICTED_GUEST = 1 << 7;
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        const PAUSE_LOOP_EXITING = 1 << 10;
        const ENABLE_INVPCID = 1 << 12;
        const ENABLE_VMFUNC = 1 << 13;
        const VMCS_SHADOWING = 1 << 14;
        const ENABLE_PML = 1 << 17;
        const EPT_VIOLATION_VE = 1 << 18;
        const ENABLE_XSAVES = 1 << 20;
        const MODE_BASED_EXECUTE = 1 << 22;
        const TSC_SCALING = 1 << 25;
    }
}

/// Pin-based control bits read for the capability summary.
pub const PIN_VMX_PREEMPTION_TIMER: u32 = 1 << 6;
pub const PIN_POSTED_INTERRUPTS: u32 = 1 << 7;
/// Primary processor-based control that enables the secondary controls.
pub const PROC_ACTIVATE_SECONDARY: u32 = 1 << 31;
pub const PROC_USE_TPR_SHADOW: u32 = 1 << 21;
pub const PROC_USE_IO_BITMAPS: u32 = 1 << 25;
pub const PROC_USE_MSR_BITMAPS: u32 = 1 << 28;

/// Everything the capability MSRs say, decoded once per CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxCapabilities {
    pub basic: VmxBasic,
    pub misc: VmxMisc,
    pub pin_based: AllowedControls,
    pub proc_based: AllowedControls,
    /// All-zero when the CPU has no secondary controls.
    pub proc_based2: AllowedControls,
    pub exit: AllowedControls,
    pub entry: AllowedControls,
    pub cr0: FixedBits,
    pub cr4: FixedBits,
    pub ept_vpid: EptVpidCaps,
}

impl VmxCapabilities {
    /// Reads the capability MSRs. Only call on a CPU that reports VMX in CPUID,
    /// since the MSRs do not exist otherwise.
    pub fn read(msrs: &impl MsrReader) -> Self {
        let basic = VmxBasic::decode(msrs.read_msr(msr::IA32_VMX_BASIC));
        let ctl =
            |plain, true_| AllowedControls::from_msr(msrs.read_msr(if basic.true_controls { true_ } else { plain }));
        let pin_based = ctl(msr::IA32_VMX_PINBASED_CTLS, msr::IA32_VMX_TRUE_PINBASED_CTLS);
        let proc_based = ctl(msr::IA32_VMX_PROCBASED_CTLS, msr::IA32_VMX_TRUE_PROCBASED_CTLS);
        let exit = ctl(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS);
        let entry = ctl(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS);
        let has_secondary = proc_based.supports(PROC_ACTIVATE_SECONDARY);
        let proc_based2 = if has_secondary {
            AllowedControls::from_msr(msrs.read_msr(msr::IA32_VMX_PROCBASED_CTLS2))
        } else {
            AllowedControls { must_be_one: 0, may_be_one: 0 }
        };
        let secondary = SecondaryControls::from_bits_truncate(proc_based2.may_be_one);
        let ept_vpid = if secondary.intersects(SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID) {
            EptVpidCaps::from_bits_truncate(msrs.read_msr(msr::IA32_VMX_EPT_VPID_CAP))
        } else {
            EptVpidCaps::empty()
        };
        VmxCapabilities {
            basic,
            misc: VmxMisc::decode(msrs.read_msr(msr::IA32_VMX_MISC)),
            pin_based,
            proc_based,
            proc_based2,
            exit,
            entry,
            cr0: FixedBits {
                must_be_one: msrs.read_msr(msr::IA32_VMX_CR0_FIXED0),
                may_be_one: msrs.read_msr(msr::IA32_VMX_CR0_FIXED1),
            },
            cr4: FixedBits {
                must_be_one: msrs.read_msr(msr::IA32_VMX_CR4_FIXED0),
                may_be_one: msrs.read_msr(msr::IA32_VMX_CR4_FIXED1),
            },
            ept_vpid,
        }
    }

    pub fn secondary(&self) -> SecondaryControls {
        SecondaryControls::from_bits_truncate(self.proc_based2.may_be_one)
    }

    pub fn has_ept(&self) -> bool {
        self.secondary().contains(SecondaryControls::ENABLE_EPT)
            && self.ept_vpid.contains(EptVpidCaps::PAGE_WALK_4 | EptVpidCaps::MEMORY_TYPE_WB)
    }

    pub fn has_unrestricted_guest(&self) -> bool {
        self.has_ept() && self.secondary().contains(SecondaryControls::UNRESTRICTED_GUEST)
    }

    pub fn has_preemption_timer(&self) -> bool {
        self.pin_based.supports(PIN_VMX_PREEMPTION_TIMER)
    }
}

/// One line per fact, for the boot log: `name: value`.
impl fmt::Display for VmxCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let s = self.secondary();
        writeln!(
            f,
            "vmcs revision {} size {} memory type {} true-controls {} ins/outs-info {}",
            self.basic.revision_id,
            self.basic.region_size,
            self.basic.vmcs_memory_type,
            yes(self.basic.true_controls),
            yes(self.basic.ins_outs_info)
        )?;
        writeln!(
            f,
            "ept {} (2M {}, 1G {}, execute-only {}, A/D {}) vpid {} unrestricted-guest {}",
            yes(self.has_ept()),
            yes(self.ept_vpid.contains(EptVpidCaps::PAGES_2M)),
            yes(self.ept_vpid.contains(EptVpidCaps::PAGES_1G)),
            yes(self.ept_vpid.contains(EptVpidCaps::EXECUTE_ONLY)),
            yes(self.ept_vpid.contains(EptVpidCaps::ACCESSED_DIRTY)),
            yes(s.contains(SecondaryControls::ENABLE_VPID)),
            yes(self.has_unrestricted_guest()),
        )?;
        writeln!(
            f,
            "preemption-timer {} (rate 2^{}) io-bitmaps {} msr-bitmaps {} tpr-shadow {} posted-interrupts {} pause-loop-exiting {}",
            yes(self.has_preemption_timer()),
            self.misc.preemption_timer_rate,
            yes(self.proc_based.supports(PROC_USE_IO_BITMAPS)),
            yes(self.proc_based.supports(PROC_USE_MSR_BITMAPS)),
            yes(self.proc_based.supports(PROC_USE_TPR_SHADOW)),
            yes(self.pin_based.supports(PIN_POSTED_INTERRUPTS)),
            yes(s.contains(SecondaryControls::PAUSE_LOOP_EXITING)),
        )?;
        write!(
            f,
            "apic-access {} x2apic-virt {} apic-register-virt {} virtual-interrupt-delivery {} cr0-fixed {:#x}/{:#x} cr4-fixed {:#x}/{:#x}",
            yes(s.contains(SecondaryControls::VIRTUALIZE_APIC_ACCESSES)),
            yes(s.contains(SecondaryControls::VIRTUALIZE_X2APIC)),
            yes(s.contains(SecondaryControls::APIC_REGISTER_VIRTUALIZATION)),
            yes(s.contains(SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY)),
            self.cr0.must_be_one,
            self.cr0.may_be_one,
            self.cr4.must_be_one,
            self.cr4.may_be_one,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeMsrs(HashMap<u32, u64>);
    impl MsrReader for FakeMsrs {
        fn read_msr(&self, msr: u32) -> u64 {
            *self.0.get(&msr).unwrap_or_else(|| panic!("read of MSR {msr:#x} the test did not expect"))
        }
    }

    /// A CPU resembling Bochs' Ice Lake model: revision 4, 4 KiB regions, WB, true controls.
    fn icelake_like() -> FakeMsrs {
        let basic = 4 | (4096u64 << 32) | (6u64 << 50) | (1 << 54) | (1 << 55);
        let secondary_may =
            (SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID | SecondaryControls::UNRESTRICTED_GUEST)
                .bits() as u64;
        FakeMsrs(HashMap::from([
            (msr::IA32_VMX_BASIC, basic),
            (msr::IA32_VMX_TRUE_PINBASED_CTLS, (0x7fu64 << 32) | 0x16),
            (msr::IA32_VMX_TRUE_PROCBASED_CTLS, (0xfff9_fffeu64 << 32) | 0x0401_e172),
            (msr::IA32_VMX_TRUE_EXIT_CTLS, (0x003f_ffffu64 << 32) | 0x0003_6dfb),
            (msr::IA32_VMX_TRUE_ENTRY_CTLS, (0x0000_f3ffu64 << 32) | 0x0000_11fb),
            (msr::IA32_VMX_PROCBASED_CTLS2, secondary_may << 32),
            (
                msr::IA32_VMX_EPT_VPID_CAP,
                (EptVpidCaps::PAGE_WALK_4 | EptVpidCaps::MEMORY_TYPE_WB | EptVpidCaps::PAGES_2M).bits(),
            ),
            (msr::IA32_VMX_MISC, 0x1c0),
            (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
            (msr::IA32_VMX_CR0_FIXED1, 0xffff_ffff),
            (msr::IA32_VMX_CR4_FIXED0, 0x2000),
            (msr::IA32_VMX_CR4_FIXED1, 0x772fff),
        ]))
    }

    #[test]
    fn basic_fields_decode() {
        let b = VmxBasic::decode(4 | (4096u64 << 32) | (6u64 << 50) | (1 << 55));
        assert_eq!((b.revision_id, b.region_size, b.vmcs_memory_type), (4, 4096, 6));
        assert!(b.true_controls && !b.ins_outs_info && !b.addresses_32bit);
    }

    #[test]
    fn misc_decodes_timer_rate_and_activity_states() {
        let m = VmxMisc::decode(0x5 | (1 << 6) | (1 << 8) | (2 << 25));
        assert_eq!(m.preemption_timer_rate, 5);
        assert!(m.activity_hlt && !m.activity_shutdown && m.activity_wait_for_sipi);
        assert_eq!(m.max_msr_list_entries, 1536);
    }

    #[test]
    fn capabilities_use_true_control_msrs_and_find_features() {
        let caps = VmxCapabilities::read(&icelake_like());
        assert_eq!(caps.pin_based.must_be_one, 0x16);
        assert!(caps.has_ept());
        assert!(caps.has_unrestricted_guest());
        assert!(caps.has_preemption_timer());
        let report = caps.to_string();
        assert!(report.contains("vmcs revision 4 size 4096"), "{report}");
        assert!(report.contains("unrestricted-guest yes"), "{report}");
        assert!(report.contains("1G no"), "{report}");
    }

    #[test]
    fn without_secondary_controls_nothing_secondary_is_read() {
        let mut msrs = icelake_like();
        msrs.0.insert(msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0x7fff_ffffu64 << 32);
        msrs.0.remove(&msr::IA32_VMX_PROCBASED_CTLS2);
        msrs.0.remove(&msr::IA32_VMX_EPT_VPID_CAP);
        let caps = VmxCapabilities::read(&msrs);
        assert!(!caps.has_ept());
        assert!(!caps.has_unrestricted_guest());
    }

    #[test]
    fn fixed_bits_force_and_check_values() {
        let cr0 = FixedBits { must_be_one: 0x8000_0021, may_be_one: 0xffff_ffff };
        assert_eq!(cr0.apply(0x10), 0x8000_0031);
        assert!(!cr0.allows(0x11));
        assert!(cr0.allows(0x8000_0031));
        assert!(!cr0.allows(0x1_8000_0031), "bits outside FIXED1 must be 0");
        assert!(cr0.for_unrestricted_guest_cr0().allows(0x20));
    }
}
