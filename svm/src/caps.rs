//! What this CPU's SVM offers (CPUID Fn8000_000A, APM vol. 3 appendix E and
//! vol. 2 15.4) and whether firmware lets it be turned on (VM_CR). Basalt
//! needs only SVM itself and nested paging; everything else is used where it
//! exists, with the fallback each accessor below names. QEMU's TCG with
//! `-cpu EPYC` offers nothing but nested paging, so every fallback is on the
//! tested path.

use crate::vmcb::{tlb_control, CleanBits};
use bitflags::bitflags;

/// CPUID Fn8000_0001 ECX bit 2: the CPU has SVM at all.
pub const CPUID_EXT_ECX_SVM: u32 = 1 << 2;
/// The SVM feature leaf.
pub const CPUID_SVM_LEAF: u32 = 0x8000_000a;

pub const MSR_EFER: u32 = 0xc000_0080;
/// EFER.SVME: SVM instructions are enabled (host), and VMRUN requires it set
/// in the guest's save-area EFER too.
pub const EFER_SVME: u64 = 1 << 12;
pub const MSR_VM_CR: u32 = 0xc001_0114;
/// VM_CR.LOCK: SVMDIS can no longer be changed (until reset, or with the SVM key).
pub const VM_CR_LOCK: u64 = 1 << 3;
/// VM_CR.SVMDIS: setting EFER.SVME is refused.
pub const VM_CR_SVMDIS: u64 = 1 << 4;
/// Physical address of the 4 KiB area where VMRUN saves host state.
pub const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// The CPU has SVM, from CPUID Fn8000_0001 ECX.
pub const fn cpu_has_svm(ext_ecx: u32) -> bool {
    ext_ecx & CPUID_EXT_ECX_SVM != 0
}

bitflags! {
    /// CPUID Fn8000_000A EDX.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SvmFeatures: u32 {
        const NESTED_PAGING = 1 << 0;
        const LBR_VIRT = 1 << 1;
        /// SVM lock: VM_CR.LOCK can be undone with a key (SVM_KEY MSR).
        const SVM_LOCK = 1 << 2;
        /// The VMCB's next_rip is filled in on instruction intercepts.
        const NRIP_SAVE = 1 << 3;
        const TSC_RATE_MSR = 1 << 4;
        const VMCB_CLEAN = 1 << 5;
        const FLUSH_BY_ASID = 1 << 6;
        /// Decoded operands in EXITINFO1 and fetched instruction bytes.
        const DECODE_ASSISTS = 1 << 7;
        const PAUSE_FILTER = 1 << 10;
        const PAUSE_FILTER_THRESHOLD = 1 << 12;
        const AVIC = 1 << 13;
        /// Virtualised VMSAVE/VMLOAD (for nested guests).
        const VMSAVE_VIRT = 1 << 15;
        const VGIF = 1 << 16;
        const GMET = 1 << 17;
        const X2AVIC = 1 << 18;
        const SSS_CHECK = 1 << 19;
        const SPEC_CTRL = 1 << 20;
        const ROGPT = 1 << 21;
        const HOST_MCE_OVERRIDE = 1 << 23;
        const TLBI_CTL = 1 << 24;
        const VNMI = 1 << 25;
        const IBS_VIRT = 1 << 26;
    }
}

/// Why this CPU cannot run Basalt's guests with SVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmError {
    NotSupported,
    /// VM_CR.SVMDIS is set and locked, and the CPU has no SVM key to undo it:
    /// only a firmware setting changes it.
    DisabledByFirmware,
    /// VM_CR.SVMDIS is set and locked; the platform could unlock it with the
    /// SVM key, which Basalt does not know.
    DisabledWithKey,
    NoNestedPaging,
    /// CPUID reports fewer than two ASIDs: none is left for guests (0 is the host's).
    NoGuestAsids,
}

impl core::fmt::Display for SvmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SvmError::NotSupported => "this CPU has no AMD SVM (CPUID 8000_0001h:ECX.SVM = 0)",
            SvmError::DisabledByFirmware => {
                "SVM disabled by firmware (VM_CR.SVMDIS locked): enable SVM / AMD-V in the firmware setup"
            }
            SvmError::DisabledWithKey => "SVM disabled by firmware (VM_CR.SVMDIS locked with an SVM key)",
            SvmError::NoNestedPaging => "this CPU's SVM has no nested paging (CPUID 8000_000Ah:EDX.NP = 0)",
            SvmError::NoGuestAsids => "this CPU's SVM reports no ASIDs for guests (CPUID 8000_000Ah:EBX < 2)",
        })
    }
}

/// What to do with VM_CR before setting EFER.SVME.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmCrAction {
    /// SVM is allowed as it is.
    Ready,
    /// Firmware set SVMDIS but did not lock it, leaving the choice to the OS:
    /// clear SVMDIS, then set EFER.SVME.
    ClearSvmdis,
}

/// Decides from VM_CR whether SVM can be enabled (APM 15.4, "Enabling SVM").
pub const fn check_vm_cr(vm_cr: u64, features: SvmFeatures) -> Result<VmCrAction, SvmError> {
    if vm_cr & VM_CR_SVMDIS == 0 {
        Ok(VmCrAction::Ready)
    } else if vm_cr & VM_CR_LOCK == 0 {
        Ok(VmCrAction::ClearSvmdis)
    } else if features.contains(SvmFeatures::SVM_LOCK) {
        Err(SvmError::DisabledWithKey)
    } else {
        Err(SvmError::DisabledByFirmware)
    }
}

/// CPUID Fn8000_000A decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmCapabilities {
    /// EAX bits 7:0.
    pub revision: u8,
    /// EBX: ASIDs including the host's 0.
    pub asids: u32,
    pub features: SvmFeatures,
}

impl SvmCapabilities {
    pub const fn decode(eax: u32, ebx: u32, edx: u32) -> Self {
        SvmCapabilities { revision: eax as u8, asids: ebx, features: SvmFeatures::from_bits_retain(edx) }
    }

    /// What Basalt cannot do without.
    pub const fn check(&self) -> Result<(), SvmError> {
        if !self.features.contains(SvmFeatures::NESTED_PAGING) {
            Err(SvmError::NoNestedPaging)
        } else if self.asids < 2 {
            Err(SvmError::NoGuestAsids)
        } else {
            Ok(())
        }
    }

    /// The highest ASID a guest can have; guests use 1 ..= this.
    pub const fn max_guest_asid(&self) -> u32 {
        self.asids.saturating_sub(1)
    }

    /// `next_rip` is valid after instruction intercepts. Without it the VMM
    /// learns an instruction's length only by decoding it from guest memory
    /// (IOIO is the exception: its EXITINFO2 always holds the next RIP).
    pub const fn next_rip_saved(&self) -> bool {
        self.features.contains(SvmFeatures::NRIP_SAVE)
    }

    /// EXITINFO1 describes CR/DR accesses (register, MOV vs LMSW/CLTS) and the
    /// VMCB carries the bytes of the instruction behind a nested page fault.
    /// Without it the VMM fetches the instruction through the guest's page
    /// tables and decodes it.
    pub const fn decode_assists(&self) -> bool {
        self.features.contains(SvmFeatures::DECODE_ASSISTS)
    }

    /// The VMM must fetch and decode guest instructions for what the CPU would
    /// otherwise report: lengths (no NRIP save) or operands and bytes (no
    /// decode assists). True on QEMU TCG; false on real EPYC.
    pub const fn needs_instruction_decode(&self) -> bool {
        !self.next_rip_saved() || !self.decode_assists()
    }

    /// The TLB_CONTROL that drops one guest's stale translations: its own ASID
    /// where FlushByAsid exists, otherwise the whole TLB, every ASID's and the
    /// host's entries included (correct, only slower).
    pub const fn tlb_flush_guest(&self) -> u8 {
        if self.features.contains(SvmFeatures::FLUSH_BY_ASID) {
            tlb_control::FLUSH_GUEST
        } else {
            tlb_control::FLUSH_ALL
        }
    }

    /// The clean bits to write for groups the VMM knows unchanged. Without
    /// VmcbClean the field is not defined, so it is kept zero (nothing cached),
    /// which is always correct.
    pub const fn clean_bits(&self, unchanged: CleanBits) -> CleanBits {
        if self.features.contains(SvmFeatures::VMCB_CLEAN) {
            unchanged
        } else {
            CleanBits::empty()
        }
    }

    /// The CPU filters PAUSE loops itself before exiting on them.
    pub const fn pause_filter(&self) -> bool {
        self.features.contains(SvmFeatures::PAUSE_FILTER)
    }

    /// The filter's count restarts when PAUSEs come further apart than a
    /// threshold of cycles: only a tight loop exits.
    pub const fn pause_filter_threshold(&self) -> bool {
        self.features.contains(SvmFeatures::PAUSE_FILTER_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU's TCG reports with `-cpu EPYC` (PLATFORM.md): nested paging only.
    const TCG_EPYC_EDX: u32 = SvmFeatures::NESTED_PAGING.bits();
    fn full_edx() -> u32 {
        (SvmFeatures::NESTED_PAGING
            | SvmFeatures::LBR_VIRT
            | SvmFeatures::SVM_LOCK
            | SvmFeatures::NRIP_SAVE
            | SvmFeatures::TSC_RATE_MSR
            | SvmFeatures::VMCB_CLEAN
            | SvmFeatures::FLUSH_BY_ASID
            | SvmFeatures::DECODE_ASSISTS
            | SvmFeatures::PAUSE_FILTER
            | SvmFeatures::AVIC
            | SvmFeatures::VGIF)
            .bits()
    }

    #[test]
    fn feature_bits_sit_at_their_cpuid_positions() {
        let table: &[(SvmFeatures, u32)] = &[
            (SvmFeatures::NESTED_PAGING, 0),
            (SvmFeatures::SVM_LOCK, 2),
            (SvmFeatures::NRIP_SAVE, 3),
            (SvmFeatures::VMCB_CLEAN, 5),
            (SvmFeatures::FLUSH_BY_ASID, 6),
            (SvmFeatures::DECODE_ASSISTS, 7),
            (SvmFeatures::PAUSE_FILTER, 10),
            (SvmFeatures::AVIC, 13),
            (SvmFeatures::VGIF, 16),
            (SvmFeatures::VNMI, 25),
        ];
        for &(flag, bit) in table {
            assert_eq!(SvmCapabilities::decode(0, 0, 1 << bit).features, flag, "bit {bit}");
        }
    }

    #[test]
    fn tcg_epyc_takes_every_fallback() {
        let caps = SvmCapabilities::decode(1, 16, TCG_EPYC_EDX);
        assert_eq!(caps.check(), Ok(()));
        assert_eq!((caps.revision, caps.max_guest_asid()), (1, 15));
        assert!(caps.needs_instruction_decode());
        assert!(!caps.next_rip_saved() && !caps.decode_assists() && !caps.pause_filter());
        assert_eq!(caps.tlb_flush_guest(), tlb_control::FLUSH_ALL);
        assert_eq!(caps.clean_bits(CleanBits::all()), CleanBits::empty());
    }

    #[test]
    fn full_featured_cpu_uses_what_it_has() {
        let caps = SvmCapabilities::decode(0xffff_ff01, 0x8000, full_edx());
        assert_eq!(caps.revision, 1, "EAX bits above 7 are reserved");
        assert_eq!(caps.check(), Ok(()));
        assert!(!caps.needs_instruction_decode());
        assert_eq!(caps.tlb_flush_guest(), tlb_control::FLUSH_GUEST);
        let unchanged = CleanBits::INTERCEPTS | CleanBits::IOPM | CleanBits::NP;
        assert_eq!(caps.clean_bits(unchanged), unchanged);
        assert_eq!(caps.max_guest_asid(), 0x7fff);
    }

    #[test]
    fn either_missing_assist_means_decoding() {
        let nrip_only = SvmCapabilities::decode(1, 16, TCG_EPYC_EDX | SvmFeatures::NRIP_SAVE.bits());
        assert!(nrip_only.next_rip_saved() && nrip_only.needs_instruction_decode());
        let assists_only = SvmCapabilities::decode(1, 16, TCG_EPYC_EDX | SvmFeatures::DECODE_ASSISTS.bits());
        assert!(assists_only.decode_assists() && assists_only.needs_instruction_decode());
    }

    #[test]
    fn missing_requirements_are_named() {
        assert_eq!(SvmCapabilities::decode(1, 16, 0).check(), Err(SvmError::NoNestedPaging));
        assert_eq!(SvmCapabilities::decode(1, 1, TCG_EPYC_EDX).check(), Err(SvmError::NoGuestAsids));
        assert_eq!(SvmCapabilities::decode(1, 0, TCG_EPYC_EDX).max_guest_asid(), 0);
        assert!(cpu_has_svm(CPUID_EXT_ECX_SVM | 1));
        assert!(!cpu_has_svm(!CPUID_EXT_ECX_SVM));
    }

    #[test]
    fn vm_cr_decides_whether_svm_can_be_enabled() {
        let no_key = SvmFeatures::NESTED_PAGING;
        let key = SvmFeatures::NESTED_PAGING | SvmFeatures::SVM_LOCK;
        let table: &[(u64, SvmFeatures, Result<VmCrAction, SvmError>)] = &[
            (0, no_key, Ok(VmCrAction::Ready)),
            // Locked but enabled: firmware fixed the choice in SVM's favour.
            (VM_CR_LOCK, no_key, Ok(VmCrAction::Ready)),
            (VM_CR_SVMDIS, no_key, Ok(VmCrAction::ClearSvmdis)),
            (VM_CR_SVMDIS | VM_CR_LOCK, no_key, Err(SvmError::DisabledByFirmware)),
            (VM_CR_SVMDIS | VM_CR_LOCK, key, Err(SvmError::DisabledWithKey)),
            // Other VM_CR bits (DPD, R_INIT, DIS_A20M) do not matter.
            (0b111, no_key, Ok(VmCrAction::Ready)),
        ];
        for &(vm_cr, features, expected) in table {
            assert_eq!(check_vm_cr(vm_cr, features), expected, "VM_CR {vm_cr:#x}");
        }
    }

    #[test]
    fn errors_read_clearly() {
        let text = std::format!("{}", SvmError::DisabledByFirmware);
        assert!(text.starts_with("SVM disabled by firmware"), "{text}");
        assert!(std::format!("{}", SvmError::NoNestedPaging).contains("nested paging"));
    }
}
