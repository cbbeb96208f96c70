//! A guest's architectural starting state for each entry mode, and a checker for
//! the VM-entry rules on guest state (Intel SDM vol. 3, 27.3.1) that matter to
//! Basalt. The CPU reports only "invalid guest state"; the checker names the
//! field, so a VM that cannot start gets a useful reason.

use crate::caps::VmxCapabilities;
use crate::vmcs::{self, Field};

/// A segment register's full (hidden) state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub access_rights: u32,
}

/// Access rights value marking a segment unusable.
pub const UNUSABLE: u32 = 1 << 16;

impl Segment {
    const fn real_mode(selector: u16, access_rights: u32) -> Self {
        Segment { selector, base: (selector as u64) << 4, limit: 0xffff, access_rights }
    }
    const fn flat(selector: u16, access_rights: u32) -> Self {
        Segment { selector, base: 0, limit: 0xffff_ffff, access_rights }
    }
    pub const fn is_usable(&self) -> bool {
        self.access_rights & UNUSABLE == 0
    }
    const fn kind(&self) -> u32 {
        self.access_rights & 0xf
    }
    const fn present(&self) -> bool {
        self.access_rights & (1 << 7) != 0
    }
    const fn dpl(&self) -> u32 {
        (self.access_rights >> 5) & 3
    }
    const fn granularity(&self) -> bool {
        self.access_rights & (1 << 15) != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Real,
    Protected,
    Long,
}

/// Guest register state written into the VMCS before the first entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr_base: u64,
    pub gdtr_limit: u32,
    pub idtr_base: u64,
    pub idtr_limit: u32,
    /// The "IA-32e mode guest" entry control.
    pub ia32e: bool,
}

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_VMXE: u64 = 1 << 13;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

/// The flat GDT protected- and long-mode guests start with, laid out as Linux's
/// 64-bit boot protocol requires (__BOOT_CS = 0x10, __BOOT_DS = 0x18): null,
/// null, 64-bit code (0x10), data (0x18), 32-bit code (0x20). The VMM puts it in
/// guest memory.
pub const GUEST_GDT: [u64; 5] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x00cf_9b00_0000_ffff];
pub const GUEST_CODE64: u16 = 0x10;
pub const GUEST_DATA: u16 = 0x18;
pub const GUEST_CODE32: u16 = 0x20;

impl GuestState {
    /// The state a guest starts in. `gdt` is where the VMM placed [`GUEST_GDT`]
    /// and `page_tables` the identity map (long mode only).
    pub fn initial(mode: Mode, entry: u64, stack: u64, gdt: u64, page_tables: u64) -> Self {
        let unusable = Segment { selector: 0, base: 0, limit: 0, access_rights: UNUSABLE };
        let busy_tss = Segment { selector: 0, base: 0, limit: 0x67, access_rights: 0x8b };
        match mode {
            Mode::Real => {
                // Code below 1 MiB: CS covers the 64 KiB containing the entry point.
                let cs = ((entry >> 4) & 0xf000) as u16;
                GuestState {
                    cr0: CR0_ET,
                    cr3: 0,
                    cr4: 0,
                    efer: 0,
                    rip: entry & 0xffff,
                    rsp: stack,
                    rflags: 2,
                    cs: Segment::real_mode(cs, 0x9b),
                    ss: Segment::real_mode(0, 0x93),
                    ds: Segment::real_mode(0, 0x93),
                    es: Segment::real_mode(0, 0x93),
                    fs: Segment::real_mode(0, 0x93),
                    gs: Segment::real_mode(0, 0x93),
                    tr: busy_tss,
                    ldtr: unusable,
                    gdtr_base: 0,
                    gdtr_limit: 0xffff,
                    idtr_base: 0,
                    idtr_limit: 0x3ff,
                    ia32e: false,
                }
            }
            Mode::Protected | Mode::Long => {
                let long = mode == Mode::Long;
                let data = Segment::flat(GUEST_DATA, 0xc093);
                GuestState {
                    cr0: CR0_PE | CR0_ET | if long { CR0_PG } else { 0 },
                    cr3: if long { page_tables } else { 0 },
                    cr4: if long { CR4_PAE } else { 0 },
                    efer: if long { EFER_LME | EFER_LMA } else { 0 },
                    rip: entry,
                    rsp: stack,
                    rflags: 2,
                    cs: if long { Segment::flat(GUEST_CODE64, 0xa09b) } else { Segment::flat(GUEST_CODE32, 0xc09b) },
                    ss: data,
                    ds: data,
                    es: data,
                    fs: data,
                    gs: data,
                    tr: busy_tss,
                    ldtr: unusable,
                    gdtr_base: gdt,
                    gdtr_limit: (GUEST_GDT.len() * 8 - 1) as u32,
                    idtr_base: 0,
                    idtr_limit: 0,
                    ia32e: long,
                }
            }
        }
    }

    /// An application processor as a start-up IPI leaves it: real mode at
    /// CS = `vector` << 8, IP 0 (so code at `vector` << 12 runs with offsets
    /// from its own start), everything else at its INIT value.
    pub fn after_startup_ipi(vector: u8) -> Self {
        let mut state = Self::initial(Mode::Real, 0, 0, 0, 0);
        state.cs = Segment::real_mode((vector as u16) << 8, 0x9b);
        state.rip = 0;
        state
    }

    /// Checks the rules a VM entry enforces on this state, naming the first field
    /// that breaks one. `unrestricted` says whether unrestricted guest is on.
    pub fn check(&self, caps: &VmxCapabilities, unrestricted: bool) -> Result<(), InvalidGuestState> {
        let bad = |field: Field, rule: &'static str| Err(InvalidGuestState { field, rule });
        let cr0_rules = if unrestricted { caps.cr0.for_unrestricted_guest_cr0() } else { caps.cr0 };
        if !cr0_rules.allows(self.cr0) {
            return bad(vmcs::GUEST_CR0, "CR0 breaks the fixed bits VMX requires");
        }
        if self.cr0 & CR0_PG != 0 && self.cr0 & CR0_PE == 0 {
            return bad(vmcs::GUEST_CR0, "CR0.PG set without CR0.PE");
        }
        if !caps.cr4.allows(self.cr4) {
            return bad(vmcs::GUEST_CR4, "CR4 breaks the fixed bits VMX requires");
        }
        if self.ia32e && (self.cr0 & CR0_PG == 0 || self.cr4 & CR4_PAE == 0) {
            return bad(vmcs::GUEST_CR4, "an IA-32e mode guest needs CR0.PG and CR4.PAE");
        }
        if self.ia32e != (self.efer & EFER_LMA != 0) {
            return bad(vmcs::GUEST_IA32_EFER, "EFER.LMA must equal the IA-32e mode entry control");
        }
        if self.cr0 & CR0_PG != 0 && (self.efer & EFER_LMA != 0) != (self.efer & EFER_LME != 0) {
            return bad(vmcs::GUEST_IA32_EFER, "with paging on, EFER.LMA must equal EFER.LME");
        }
        if self.rflags & 2 == 0 || self.rflags & 0xffff_ffff_ffc0_8028 != 0 {
            return bad(vmcs::GUEST_RFLAGS, "RFLAGS bit 1 must be 1 and reserved bits 0");
        }
        if !self.ia32e && self.rip >> 32 != 0 {
            return bad(vmcs::GUEST_RIP, "outside IA-32e mode RIP must fit in 32 bits");
        }
        let real = self.cr0 & CR0_PE == 0;
        let cs = self.cs;
        let cs_ok = match cs.kind() {
            9 | 11 | 13 | 15 => true,
            3 => unrestricted,
            _ => false,
        };
        if !cs.is_usable() || !cs_ok {
            return bad(vmcs::GUEST_CS_ACCESS_RIGHTS, "CS must be a usable accessed code segment");
        }
        if !cs.present() || cs.access_rights & (1 << 4) == 0 {
            return bad(vmcs::GUEST_CS_ACCESS_RIGHTS, "CS must be present and a code/data (S=1) segment");
        }
        if self.ia32e && cs.access_rights & (1 << 13) != 0 && cs.access_rights & (1 << 14) != 0 {
            return bad(vmcs::GUEST_CS_ACCESS_RIGHTS, "CS.L and CS.D cannot both be set");
        }
        if self.ss.is_usable() && self.ss.dpl() != cs.dpl() && !(real || cs.kind() == 3) {
            return bad(vmcs::GUEST_SS_ACCESS_RIGHTS, "SS.DPL must equal CS.DPL");
        }
        for (segment, field, limit_field) in [
            (&self.cs, vmcs::GUEST_CS_ACCESS_RIGHTS, vmcs::GUEST_CS_LIMIT),
            (&self.ss, vmcs::GUEST_SS_ACCESS_RIGHTS, vmcs::GUEST_SS_LIMIT),
            (&self.ds, vmcs::GUEST_DS_ACCESS_RIGHTS, vmcs::GUEST_DS_LIMIT),
            (&self.es, vmcs::GUEST_ES_ACCESS_RIGHTS, vmcs::GUEST_ES_LIMIT),
            (&self.fs, vmcs::GUEST_FS_ACCESS_RIGHTS, vmcs::GUEST_FS_LIMIT),
            (&self.gs, vmcs::GUEST_GS_ACCESS_RIGHTS, vmcs::GUEST_GS_LIMIT),
        ] {
            if !segment.is_usable() {
                continue;
            }
            if segment.access_rights & 0xfffe_0f00 != 0 {
                return bad(field, "reserved access-rights bits must be 0");
            }
            if !segment.present() {
                return bad(field, "a usable segment must be present");
            }
            // Granularity must agree with the limit's low and high bits.
            let g = segment.granularity();
            if (segment.limit & 0xfff != 0xfff && g) || (segment.limit >> 20 != 0 && !g) {
                return bad(limit_field, "the limit does not agree with the granularity bit");
            }
        }
        let tr = self.tr;
        let tr_type_ok = if self.ia32e { tr.kind() == 11 } else { tr.kind() == 3 || tr.kind() == 11 };
        if !tr.is_usable() || !tr_type_ok || !tr.present() || tr.access_rights & (1 << 4) != 0 {
            return bad(vmcs::GUEST_TR_ACCESS_RIGHTS, "TR must be a usable, present, busy TSS");
        }
        if self.ldtr.is_usable() && (self.ldtr.kind() != 2 || !self.ldtr.present()) {
            return bad(vmcs::GUEST_LDTR_ACCESS_RIGHTS, "a usable LDTR must be a present LDT");
        }
        if self.gdtr_limit > 0xffff || self.idtr_limit > 0xffff {
            return bad(vmcs::GUEST_GDTR_LIMIT, "descriptor-table limits are 16 bits");
        }
        Ok(())
    }
}

/// A guest-state field that VM entry would reject, and the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidGuestState {
    pub field: Field,
    pub rule: &'static str,
}

impl core::fmt::Display for InvalidGuestState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", vmcs::name(self.field), self.rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{EptVpidCaps, FixedBits, VmxBasic, VmxMisc};
    use crate::controls::AllowedControls;

    fn caps() -> VmxCapabilities {
        let any = AllowedControls { must_be_one: 0, may_be_one: u32::MAX };
        VmxCapabilities {
            basic: VmxBasic::decode(4 | (4096 << 32) | (6 << 50) | (1 << 55)),
            misc: VmxMisc::decode(0x1c0),
            pin_based: any,
            proc_based: any,
            proc_based2: any,
            exit: any,
            entry: any,
            cr0: FixedBits { must_be_one: 0x8000_0021, may_be_one: 0xffff_ffff },
            cr4: FixedBits { must_be_one: 0x2000, may_be_one: 0x772fff },
            ept_vpid: EptVpidCaps::all(),
        }
    }

    /// What the VMM writes: the initial state with VMX's fixed bits applied.
    fn fixed(mut s: GuestState) -> GuestState {
        let c = caps();
        s.cr0 = c.cr0.for_unrestricted_guest_cr0().apply(s.cr0);
        s.cr4 = c.cr4.apply(s.cr4);
        s
    }

    #[test]
    fn every_initial_mode_passes_the_checks() {
        for mode in [Mode::Real, Mode::Protected, Mode::Long] {
            let s = fixed(GuestState::initial(mode, 0x7c00, 0x7000, 0x500, 0x1000));
            assert_eq!(s.check(&caps(), true), Ok(()), "{mode:?}");
        }
    }

    #[test]
    fn real_mode_entry_above_64k_uses_cs_base() {
        let s = GuestState::initial(Mode::Real, 0x1_2345, 0, 0, 0);
        assert_eq!((s.cs.selector, s.cs.base, s.rip), (0x1000, 0x1_0000, 0x2345));
    }

    #[test]
    fn startup_ipi_starts_at_the_vectors_page_with_ip_zero() {
        let s = GuestState::after_startup_ipi(0x9a);
        assert_eq!((s.cs.selector, s.cs.base, s.rip), (0x9a00, 0x9_a000, 0));
        assert_eq!(s.cr0 & CR0_PE, 0, "real mode");
        assert_eq!(fixed(s).check(&caps(), true), Ok(()));
    }

    #[test]
    fn broken_states_name_the_field() {
        let good = fixed(GuestState::initial(Mode::Long, 0x10_0000, 0, 0x500, 0x1000));
        let field = |s: GuestState| s.check(&caps(), true).unwrap_err().field;
        let mut s = good;
        s.cs.access_rights = 0xc091; // read-only data: never a legal CS
        assert_eq!(field(s), vmcs::GUEST_CS_ACCESS_RIGHTS);
        let mut s = good;
        s.efer &= !EFER_LMA;
        assert_eq!(field(s), vmcs::GUEST_IA32_EFER);
        let mut s = good;
        s.rflags = 0;
        assert_eq!(field(s), vmcs::GUEST_RFLAGS);
        let mut s = good;
        s.tr.access_rights = 0x89;
        assert_eq!(field(s), vmcs::GUEST_TR_ACCESS_RIGHTS);
        let mut s = good;
        s.ds.limit = 0x10_0000; // 1 MiB or more needs G=1
        s.ds.access_rights = 0x93;
        assert_eq!(field(s), vmcs::GUEST_DS_LIMIT);
        let mut s = good;
        s.cr4 &= !CR4_VMXE;
        let err = s.check(&caps(), true).unwrap_err();
        assert_eq!(err.to_string(), "GUEST_CR4: CR4 breaks the fixed bits VMX requires");
        let mut s = fixed(GuestState::initial(Mode::Real, 0x7c00, 0, 0, 0));
        assert_eq!(s.check(&caps(), false).unwrap_err().field, vmcs::GUEST_CR0, "real mode needs unrestricted guest");
        s.cr0 |= CR0_PG;
        assert_eq!(s.check(&caps(), true).unwrap_err().rule, "CR0.PG set without CR0.PE");
    }
}
