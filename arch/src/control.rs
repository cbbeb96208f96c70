//! Which CR0 and CR4 values a MOV to CR0/CR4 accepts, as the SDM states it
//! for a CPU whose features are the guest's CPUID. A write the CPU would refuse
//! with #GP must be refused by the hypervisor the same way before the value
//! reaches the guest-state area: there it would fail the next VM entry (the
//! whole VM stops) or enable a feature whose state nobody switches.

// Every value here comes from a hostile guest: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

/// CR0 bits by name.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const WP: u64 = 1 << 16;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits by name.
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
    pub const CET: u64 = 1 << 23;
}

/// IA32_EFER bits by name.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// The CPUID words CR4's reserved bits depend on, as the guest sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cr4Features {
    pub leaf1_ecx: u32,
    pub leaf1_edx: u32,
    pub leaf7_ebx: u32,
    pub leaf7_ecx: u32,
}

/// The CR4 bits a guest with these features may set; every other bit is
/// reserved (#GP). Features whose state Basalt does not switch (CET, key
/// locker, user interrupts, supervisor protection keys, LAM) stay reserved
/// whatever CPUID says: their control bits must never reach the CPU for a
/// guest.
pub fn cr4_allowed(f: Cr4Features) -> u64 {
    let has = |word: u32, bit: u32| word & (1 << bit) != 0;
    let mut allowed = cr4::PCE;
    for (present, bits) in [
        (has(f.leaf1_edx, 1), cr4::VME | cr4::PVI),
        (has(f.leaf1_edx, 4), cr4::TSD),
        (has(f.leaf1_edx, 2), cr4::DE),
        (has(f.leaf1_edx, 3), cr4::PSE),
        (has(f.leaf1_edx, 6), cr4::PAE),
        (has(f.leaf1_edx, 7), cr4::MCE),
        (has(f.leaf1_edx, 13), cr4::PGE),
        (has(f.leaf1_edx, 24), cr4::OSFXSR),
        (has(f.leaf1_edx, 25), cr4::OSXMMEXCPT),
        (has(f.leaf7_ecx, 2), cr4::UMIP),
        (has(f.leaf7_ecx, 16), cr4::LA57),
        (has(f.leaf1_ecx, 5), cr4::VMXE),
        (has(f.leaf1_ecx, 6), cr4::SMXE),
        (has(f.leaf7_ebx, 0), cr4::FSGSBASE),
        (has(f.leaf1_ecx, 17), cr4::PCIDE),
        (has(f.leaf1_ecx, 26), cr4::OSXSAVE),
        (has(f.leaf7_ebx, 7), cr4::SMEP),
        (has(f.leaf7_ebx, 20), cr4::SMAP),
        (has(f.leaf7_ecx, 3), cr4::PKE),
    ] {
        if present {
            allowed |= bits;
        }
    }
    allowed
}

/// What the guest was running with when it wrote a control register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// EFER.LME and EFER.LMA.
    pub long_mode_enabled: bool,
    pub long_mode_active: bool,
    /// CS.L: the write comes from 64-bit code (not compatibility mode).
    pub code_64: bool,
}

/// Why a write is refused with #GP(0), for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    ReservedBits,
    PagingWithoutProtection,
    NotWriteThroughWithoutCacheDisable,
    LongModePagingWithoutPae,
    PagingOffIn64BitCode,
    WriteProtectOffWithCet,
    PaeOffInLongMode,
    La57ChangedInLongMode,
    PcidOutsideLongMode,
    PcidWithNonzeroCr3Pcid,
    CetWithoutWriteProtect,
    LongModeEnableChangedUnderPaging,
}

/// MOV to CR0 of `value` (the full 64-bit operand).
pub fn check_cr0(value: u64, now: Context) -> Result<(), Refused> {
    let set = |bit: u64| value & bit != 0;
    if value >> 32 != 0 {
        return Err(Refused::ReservedBits);
    }
    if set(cr0::PG) && !set(cr0::PE) {
        return Err(Refused::PagingWithoutProtection);
    }
    if set(cr0::NW) && !set(cr0::CD) {
        return Err(Refused::NotWriteThroughWithoutCacheDisable);
    }
    let paging_was_on = now.cr0 & cr0::PG != 0;
    if set(cr0::PG) && !paging_was_on && now.long_mode_enabled && now.cr4 & cr4::PAE == 0 {
        return Err(Refused::LongModePagingWithoutPae);
    }
    if !set(cr0::PG) && paging_was_on && now.long_mode_active && now.code_64 {
        return Err(Refused::PagingOffIn64BitCode);
    }
    if !set(cr0::WP) && now.cr4 & cr4::CET != 0 {
        return Err(Refused::WriteProtectOffWithCet);
    }
    Ok(())
}

/// MOV to CR4 of `value`, for a guest that may set the bits in `allowed`
/// (see `cr4_allowed`).
pub fn check_cr4(value: u64, allowed: u64, now: Context) -> Result<(), Refused> {
    let set = |bit: u64| value & bit != 0;
    if value & !allowed != 0 {
        return Err(Refused::ReservedBits);
    }
    if now.long_mode_active && !set(cr4::PAE) {
        return Err(Refused::PaeOffInLongMode);
    }
    if now.long_mode_active && (value ^ now.cr4) & cr4::LA57 != 0 {
        return Err(Refused::La57ChangedInLongMode);
    }
    if set(cr4::PCIDE) && now.cr4 & cr4::PCIDE == 0 {
        if !now.long_mode_active {
            return Err(Refused::PcidOutsideLongMode);
        }
        if now.cr3 & 0xfff != 0 {
            return Err(Refused::PcidWithNonzeroCr3Pcid);
        }
    }
    if set(cr4::CET) && now.cr0 & cr0::WP == 0 {
        return Err(Refused::CetWithoutWriteProtect);
    }
    Ok(())
}

/// WRMSR to IA32_EFER of `value`, for a guest that may set the bits in
/// `allowed` (LMA is read-only: what is written there is ignored, never
/// refused). LME cannot change while paging is on: long mode is entered and
/// left only by turning paging on or off.
pub fn check_efer(value: u64, allowed: u64, now: Context) -> Result<(), Refused> {
    if value & !(allowed | efer::LMA) != 0 {
        return Err(Refused::ReservedBits);
    }
    if now.cr0 & cr0::PG != 0 && (value & efer::LME != 0) != now.long_mode_enabled {
        return Err(Refused::LongModeEnableChangedUnderPaging);
    }
    Ok(())
}

/// DR6 after a #DB whose conditions are `pending` (in DR6's layout: B0-B3,
/// BD, BS, and RTM which is active-low): what the CPU would have written had
/// the exception not exited to the hypervisor. B0-B3 describe only this #DB;
/// the other bits accumulate until the guest clears them.
pub fn dr6_after_debug_exception(dr6: u64, pending: u64) -> u64 {
    const BREAKPOINTS: u64 = 0xf;
    const RTM: u64 = 1 << 16;
    const CONDITIONS: u64 = BREAKPOINTS | (1 << 13) | (1 << 14) | RTM;
    let pending = pending & CONDITIONS;
    ((dr6 & !BREAKPOINTS) | pending) ^ (pending & RTM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest in 64-bit mode with paging, PAE and SSE on.
    fn long_mode() -> Context {
        Context {
            cr0: cr0::PE | cr0::PG | cr0::WP | (1 << 4),
            cr3: 0x1000,
            cr4: cr4::PAE | cr4::OSFXSR,
            long_mode_enabled: true,
            long_mode_active: true,
            code_64: true,
        }
    }

    fn features() -> Cr4Features {
        // VME DE PSE TSC PAE MCE PGE FXSR SSE; PCID OSXSAVE; FSGSBASE SMEP SMAP; UMIP.
        Cr4Features {
            leaf1_edx: (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 13) | (3 << 24),
            leaf1_ecx: (1 << 17) | (1 << 26),
            leaf7_ebx: 1 | (1 << 7) | (1 << 20),
            leaf7_ecx: 1 << 2,
        }
    }

    #[test]
    fn cr4_bits_follow_cpuid_and_unswitched_state_stays_reserved() {
        let allowed = cr4_allowed(features());
        for bit in [cr4::PAE, cr4::PGE, cr4::OSXSAVE, cr4::SMEP, cr4::SMAP, cr4::FSGSBASE, cr4::UMIP, cr4::PCE] {
            assert_ne!(allowed & bit, 0, "{bit:#x}");
        }
        for bit in [cr4::VMXE, cr4::SMXE, cr4::LA57, cr4::PKE, cr4::CET, 1 << 19, 1 << 24, 1 << 25, 1 << 28, 1 << 32] {
            assert_eq!(allowed & bit, 0, "{bit:#x}");
        }
        let everything =
            Cr4Features { leaf1_ecx: u32::MAX, leaf1_edx: u32::MAX, leaf7_ebx: u32::MAX, leaf7_ecx: u32::MAX };
        assert_eq!(cr4_allowed(everything) & (cr4::CET | (1 << 19) | (1 << 24) | (1 << 25)), 0);
        assert_eq!(cr4_allowed(Cr4Features::default()), cr4::PCE);
    }

    #[test]
    fn cr4_writes_as_the_sdm_lists_them() {
        let allowed = cr4_allowed(features());
        let now = long_mode();
        let ok = now.cr4 | cr4::PGE | cr4::OSXSAVE;
        assert_eq!(check_cr4(ok, allowed, now), Ok(()));
        assert_eq!(check_cr4(ok | cr4::VMXE, allowed, now), Err(Refused::ReservedBits));
        assert_eq!(check_cr4(u64::MAX, allowed, now), Err(Refused::ReservedBits));
        assert_eq!(check_cr4(ok | (1 << 63), allowed, now), Err(Refused::ReservedBits));
        assert_eq!(check_cr4(ok & !cr4::PAE, allowed, now), Err(Refused::PaeOffInLongMode));
        let with_la57 = cr4_allowed(Cr4Features { leaf7_ecx: 1 << 16, ..features() });
        assert_eq!(check_cr4(ok | cr4::LA57, with_la57, now), Err(Refused::La57ChangedInLongMode));
        let cr3_pcid_5 = Context { cr3: 0x1005, ..now };
        assert_eq!(check_cr4(ok | cr4::PCIDE, allowed, cr3_pcid_5), Err(Refused::PcidWithNonzeroCr3Pcid));
        assert_eq!(check_cr4(ok | cr4::PCIDE, allowed, now), Ok(()));
        // Outside long mode: PAE may go, PCIDE may not come.
        let protected = Context { cr0: cr0::PE, cr4: 0, long_mode_enabled: false, long_mode_active: false, ..now };
        assert_eq!(check_cr4(cr4::PSE, allowed, protected), Ok(()));
        assert_eq!(check_cr4(cr4::PCIDE, allowed, protected), Err(Refused::PcidOutsideLongMode));
        let everything = cr4_allowed(Cr4Features { leaf7_ecx: 1 << 7, ..features() }) | cr4::CET;
        let no_wp = Context { cr0: now.cr0 & !cr0::WP, ..now };
        assert_eq!(check_cr4(ok | cr4::CET, everything, no_wp), Err(Refused::CetWithoutWriteProtect));
    }

    #[test]
    fn dr6_gets_what_the_cpu_would_have_written() {
        const RESET: u64 = 0xffff_0ff0;
        assert_eq!(dr6_after_debug_exception(RESET, 0b0100), RESET | 0b0100, "breakpoint 2 hit");
        assert_eq!(dr6_after_debug_exception(RESET | 0b0001, 0b1000), RESET | 0b1000, "B0-B3 describe this #DB only");
        assert_eq!(dr6_after_debug_exception(RESET, 1 << 14), RESET | 1 << 14, "single step");
        assert_eq!(dr6_after_debug_exception(RESET | 1 << 14, 1 << 13), RESET | 1 << 14 | 1 << 13, "BS stays set");
        assert_eq!(dr6_after_debug_exception(RESET, 1 << 16), RESET & !(1 << 16), "RTM is active-low");
        assert_eq!(dr6_after_debug_exception(RESET, u64::MAX), (RESET | 0x600f) & !(1 << 16), "only DR6's conditions");
    }

    #[test]
    fn efer_writes_as_the_sdm_lists_them() {
        let allowed = efer::SCE | efer::LME | efer::NXE;
        let now = long_mode();
        let current = efer::LME | efer::LMA;
        assert_eq!(check_efer(current | efer::NXE | efer::SCE, allowed, now), Ok(()));
        assert_eq!(check_efer(efer::LME, allowed, now), Ok(()), "LMA written as 0 is ignored");
        assert_eq!(check_efer(efer::SCE | efer::LMA, allowed, now), Err(Refused::LongModeEnableChangedUnderPaging));
        assert_eq!(check_efer(current | 1 << 9, allowed, now), Err(Refused::ReservedBits));
        assert_eq!(check_efer(u64::MAX, allowed, now), Err(Refused::ReservedBits));
        let no_paging = Context { cr0: cr0::PE, long_mode_enabled: false, long_mode_active: false, ..now };
        assert_eq!(check_efer(efer::LME, allowed, no_paging), Ok(()), "LME set before paging is on");
        assert_eq!(check_efer(efer::NXE, efer::SCE | efer::LME, no_paging), Err(Refused::ReservedBits));
    }

    #[test]
    fn cr0_writes_as_the_sdm_lists_them() {
        let now = long_mode();
        assert_eq!(check_cr0(now.cr0 | cr0::CD, now), Ok(()));
        assert_eq!(check_cr0(now.cr0 | cr0::CD | cr0::NW, now), Ok(()));
        assert_eq!(check_cr0(now.cr0 | cr0::NW, now), Err(Refused::NotWriteThroughWithoutCacheDisable));
        assert_eq!(check_cr0(now.cr0 | 1 << 32, now), Err(Refused::ReservedBits));
        assert_eq!(check_cr0(u64::MAX, now), Err(Refused::ReservedBits));
        assert_eq!(check_cr0(now.cr0 & !cr0::PE, now), Err(Refused::PagingWithoutProtection));
        assert_eq!(check_cr0(now.cr0 & !cr0::PG, now), Err(Refused::PagingOffIn64BitCode));
        // From compatibility mode, paging off leaves long mode (allowed).
        assert_eq!(check_cr0(now.cr0 & !cr0::PG, Context { code_64: false, ..now }), Ok(()));
        // Turning paging on with LME set needs PAE.
        let before = Context { cr0: cr0::PE, cr4: 0, long_mode_active: false, code_64: false, ..now };
        assert_eq!(check_cr0(cr0::PE | cr0::PG, before), Err(Refused::LongModePagingWithoutPae));
        assert_eq!(check_cr0(cr0::PE | cr0::PG, Context { cr4: cr4::PAE, ..before }), Ok(()));
        let cet = Context { cr4: now.cr4 | cr4::CET, ..now };
        assert_eq!(check_cr0(now.cr0 & !cr0::WP, cet), Err(Refused::WriteProtectOffWithCet));
    }
}
