//! The virtual machine control block (AMD64 APM vol. 2, appendix B, tables B-1
//! and B-2): one 4 KiB page, the control area in its first 1 KiB and the guest's
//! state save area after it. The CPU reads and writes it in memory, so the
//! layout is the contract: every field sits at its architectural offset and the
//! tests pin each one.
//!
//! Fields the CPU does not use unless a feature is on (AVIC, SEV, LBR
//! virtualisation) are kept as named or reserved space so that offsets after
//! them stay right; Basalt leaves them zero.

use bitflags::bitflags;

/// The whole VMCB. VMRUN takes its physical address, which must be 4 KiB aligned.
#[repr(C, align(4096))]
pub struct Vmcb {
    pub control: ControlArea,
    pub save: SaveArea,
}

impl Vmcb {
    /// An all-zero VMCB: no intercepts, no events, ASID 0 (which VMRUN refuses,
    /// so a VMCB nobody configured cannot run by accident).
    pub const fn new() -> Self {
        Vmcb { control: ControlArea::new(), save: SaveArea::new() }
    }
}

impl Default for Vmcb {
    fn default() -> Self {
        Self::new()
    }
}

/// The control area, offsets 0x000–0x3ff.
#[repr(C)]
pub struct ControlArea {
    /// 0x000: bits 0–15 intercept reads of CR0–CR15, bits 16–31 writes.
    pub intercept_cr: u32,
    /// 0x004: bits 0–15 intercept reads of DR0–DR15, bits 16–31 writes.
    pub intercept_dr: u32,
    /// 0x008: one bit per exception vector.
    pub intercept_exceptions: u32,
    /// 0x00c: see [`crate::intercepts::Misc1`].
    pub intercept_misc1: u32,
    /// 0x010: see [`crate::intercepts::Misc2`].
    pub intercept_misc2: u32,
    /// 0x014: see [`crate::intercepts::Misc3`] (newer CPUs; reserved, zero, on older ones).
    pub intercept_misc3: u32,
    _reserved_018: [u8; 0x24],
    /// 0x03c: cycles between PAUSEs that reset the filter count (PauseFilterThreshold).
    pub pause_filter_threshold: u16,
    /// 0x03e: PAUSEs allowed before an intercepted PAUSE exits (PauseFilter).
    pub pause_filter_count: u16,
    /// 0x040: physical address of the I/O permission map (4 KiB aligned).
    pub iopm_base_pa: u64,
    /// 0x048: physical address of the MSR permission map (4 KiB aligned).
    pub msrpm_base_pa: u64,
    /// 0x050: added to the TSC the guest reads.
    pub tsc_offset: u64,
    /// 0x058: the guest's ASID; 0 is the host's and makes VMRUN fail.
    pub guest_asid: u32,
    /// 0x05c: see [`tlb_control`].
    pub tlb_control: u8,
    _reserved_05d: [u8; 3],
    /// 0x060: V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR.
    pub vintr: VirtualInterrupt,
    /// 0x068: bit 0 the guest is in an interrupt shadow (after STI or MOV SS);
    /// bit 1 (read at exit) the guest's RFLAGS.IF as the CPU saw it.
    pub interrupt_shadow: u64,
    /// 0x070: why the guest exited; see [`crate::exit::ExitCode`].
    pub exit_code: u64,
    /// 0x078
    pub exit_info1: u64,
    /// 0x080
    pub exit_info2: u64,
    /// 0x088: an event whose delivery the exit interrupted; see [`crate::exit::Event`].
    pub exit_int_info: u64,
    /// 0x090: bit 0 NP_ENABLE (nested paging); bits 1–2 SEV, unused.
    pub nested_control: u64,
    /// 0x098: AVIC only.
    pub avic_apic_bar: u64,
    _reserved_0a0: u64,
    /// 0x0a8: the event to inject at the next VMRUN; see [`crate::exit::Event`].
    pub event_inj: u64,
    /// 0x0b0: physical address of the nested page table root.
    pub n_cr3: u64,
    /// 0x0b8: bit 0 LBR virtualisation, bit 1 virtual VMSAVE/VMLOAD.
    pub virt_ext: u64,
    /// 0x0c0: see [`CleanBits`]; zero (nothing cached) is always correct.
    pub clean_bits: u32,
    _reserved_0c4: u32,
    /// 0x0c8: the RIP after the exiting instruction (NRIPS only).
    pub next_rip: u64,
    /// 0x0d0: how many of `guest_instruction_bytes` the CPU fetched (decode assists only).
    pub guest_instruction_count: u8,
    /// 0x0d1
    pub guest_instruction_bytes: [u8; 15],
    /// 0x0e0: AVIC only.
    pub avic_backing_page: u64,
    _reserved_0e8: u64,
    /// 0x0f0: AVIC only.
    pub avic_logical_table: u64,
    /// 0x0f8: AVIC only.
    pub avic_physical_table: u64,
    _reserved_100: [u8; 0x2e0],
    /// 0x3e0: the CPU never touches these bytes; they are the hypervisor's.
    pub software: [u8; 0x20],
}

impl ControlArea {
    pub const fn new() -> Self {
        ControlArea {
            intercept_cr: 0,
            intercept_dr: 0,
            intercept_exceptions: 0,
            intercept_misc1: 0,
            intercept_misc2: 0,
            intercept_misc3: 0,
            _reserved_018: [0; 0x24],
            pause_filter_threshold: 0,
            pause_filter_count: 0,
            iopm_base_pa: 0,
            msrpm_base_pa: 0,
            tsc_offset: 0,
            guest_asid: 0,
            tlb_control: 0,
            _reserved_05d: [0; 3],
            vintr: VirtualInterrupt(0),
            interrupt_shadow: 0,
            exit_code: 0,
            exit_info1: 0,
            exit_info2: 0,
            exit_int_info: 0,
            nested_control: 0,
            avic_apic_bar: 0,
            _reserved_0a0: 0,
            event_inj: 0,
            n_cr3: 0,
            virt_ext: 0,
            clean_bits: 0,
            _reserved_0c4: 0,
            next_rip: 0,
            guest_instruction_count: 0,
            guest_instruction_bytes: [0; 15],
            avic_backing_page: 0,
            _reserved_0e8: 0,
            avic_logical_table: 0,
            avic_physical_table: 0,
            _reserved_100: [0; 0x2e0],
            software: [0; 0x20],
        }
    }

    /// The instruction bytes the CPU fetched for this exit, if it has decode
    /// assists; empty otherwise (the VMM then reads guest memory itself).
    pub fn instruction_bytes(&self) -> &[u8] {
        let n = (self.guest_instruction_count as usize).min(self.guest_instruction_bytes.len());
        &self.guest_instruction_bytes[..n]
    }
}

impl Default for ControlArea {
    fn default() -> Self {
        Self::new()
    }
}

/// Bit 0 of `nested_control`.
pub const NP_ENABLE: u64 = 1 << 0;
/// Bit 0 of `interrupt_shadow`.
pub const INTERRUPT_SHADOW: u64 = 1 << 0;
/// Bit 1 of `interrupt_shadow`: RFLAGS.IF the guest had at the exit.
pub const GUEST_INTERRUPT_MASK: u64 = 1 << 1;

/// Values of `tlb_control`, applied by the next VMRUN.
pub mod tlb_control {
    pub const DO_NOTHING: u8 = 0;
    /// Flushes every ASID's entries: the one choice every SVM CPU has.
    pub const FLUSH_ALL: u8 = 1;
    /// Flushes the guest's ASID only (FlushByAsid).
    pub const FLUSH_GUEST: u8 = 3;
    /// Flushes the guest's non-global entries only (FlushByAsid).
    pub const FLUSH_GUEST_NON_GLOBAL: u8 = 7;
}

/// The virtual interrupt word at 0x060. With V_INTR_MASKING set, the guest's
/// RFLAGS.IF and CR8 act on these virtual copies instead of the host's real
/// interrupt flag and TPR: a guest cannot mask the host's interrupts.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualInterrupt(pub u64);

impl VirtualInterrupt {
    const V_IRQ: u64 = 1 << 8;
    const V_IGN_TPR: u64 = 1 << 20;
    const V_INTR_MASKING: u64 = 1 << 24;

    /// The guest's virtual TPR (its CR8), bits 3:0.
    pub const fn tpr(self) -> u8 {
        (self.0 & 0xf) as u8
    }
    pub const fn with_tpr(self, tpr: u8) -> Self {
        VirtualInterrupt((self.0 & !0xff) | (tpr & 0xf) as u64)
    }
    /// A virtual interrupt is pending; the CPU clears it when the guest takes it.
    pub const fn irq_pending(self) -> bool {
        self.0 & Self::V_IRQ != 0
    }
    pub const fn priority(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    pub const fn ignores_tpr(self) -> bool {
        self.0 & Self::V_IGN_TPR != 0
    }
    pub const fn masking(self) -> bool {
        self.0 & Self::V_INTR_MASKING != 0
    }
    pub const fn with_masking(self, on: bool) -> Self {
        VirtualInterrupt(if on { self.0 | Self::V_INTR_MASKING } else { self.0 & !Self::V_INTR_MASKING })
    }
    /// V_INTR_VECTOR, bits 39:32.
    pub const fn vector(self) -> u8 {
        (self.0 >> 32) as u8
    }

    /// Asks the CPU for a virtual interrupt. Basalt uses it with the VINTR
    /// intercept as SVM's interrupt window: the guest exits as soon as it could
    /// take an interrupt, and the VMM injects the real one through EVENTINJ.
    pub const fn with_irq(self, vector: u8, priority: u8, ignore_tpr: bool) -> Self {
        let cleared = self.0 & !(Self::V_IRQ | (0xf << 16) | Self::V_IGN_TPR | (0xff << 32));
        VirtualInterrupt(
            cleared
                | Self::V_IRQ
                | ((priority & 0xf) as u64) << 16
                | if ignore_tpr { Self::V_IGN_TPR } else { 0 }
                | (vector as u64) << 32,
        )
    }
    pub const fn without_irq(self) -> Self {
        VirtualInterrupt(self.0 & !Self::V_IRQ)
    }
}

bitflags! {
    /// VMCB clean bits: a set bit tells VMRUN that group of fields is unchanged
    /// since the last VMRUN of this VMCB on this core, so it may use a cached
    /// copy. A CPU without VmcbClean ignores them; a VMCB moved to another core
    /// or freshly written must have them all clear.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct CleanBits: u32 {
        /// Intercept vectors, TSC offset, pause filter.
        const INTERCEPTS = 1 << 0;
        /// IOPM_BASE_PA, MSRPM_BASE_PA.
        const IOPM = 1 << 1;
        const ASID = 1 << 2;
        /// V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR.
        const TPR = 1 << 3;
        /// NP_ENABLE, N_CR3, G_PAT.
        const NP = 1 << 4;
        /// CR0, CR3, CR4, EFER.
        const CRX = 1 << 5;
        /// DR6, DR7.
        const DRX = 1 << 6;
        /// GDTR, IDTR.
        const DT = 1 << 7;
        /// CS, DS, SS, ES, CPL.
        const SEG = 1 << 8;
        const CR2 = 1 << 9;
        /// DBGCTL and the last-branch records.
        const LBR = 1 << 10;
        const AVIC = 1 << 11;
    }
}

/// A segment register in the save area (and GDTR/IDTR, which use only limit
/// and base). `attrib` packs descriptor bits 47:40 into bits 7:0 and bits
/// 55:52 into bits 11:8: type, S, DPL, P, then AVL, L, D/B, G.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

/// VMX's "segment unusable" access-rights bit.
const VMX_UNUSABLE: u32 = 1 << 16;
const ATTRIB_PRESENT: u16 = 1 << 7;

impl Segment {
    pub const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        Segment { selector, attrib, limit, base }
    }

    pub const fn present(&self) -> bool {
        self.attrib & ATTRIB_PRESENT != 0
    }

    /// VMCB attributes from VMX access rights (bits 7:0 and 15:12 of the same
    /// descriptor bits), so both back ends can start from one guest-state
    /// description. SVM has no "unusable" flag: an unusable segment becomes a
    /// not-present one, which is what the CPU itself keeps after loading a null
    /// selector.
    pub const fn attrib_from_vmx(access_rights: u32) -> u16 {
        if access_rights & VMX_UNUSABLE != 0 {
            return (access_rights & 0x7f) as u16;
        }
        ((access_rights & 0xff) | ((access_rights >> 4) & 0xf00)) as u16
    }

    /// VMX access rights from VMCB attributes; a not-present segment is
    /// reported unusable, since that is how VMX names the same state.
    pub const fn vmx_access_rights(&self) -> u32 {
        let attrib = self.attrib as u32;
        let rights = (attrib & 0xff) | ((attrib & 0xf00) << 4);
        if self.present() {
            rights
        } else {
            rights | VMX_UNUSABLE
        }
    }

    pub const fn from_vmx(selector: u16, access_rights: u32, limit: u32, base: u64) -> Self {
        Segment { selector, attrib: Self::attrib_from_vmx(access_rights), limit, base }
    }
}

/// The state save area, offsets 0x400–0xfff of the VMCB (0x000–0xbff here).
/// VMRUN loads the guest from it and #VMEXIT stores the guest into it. The
/// fields marked "VMLOAD/VMSAVE" are not switched by VMRUN or #VMEXIT at all:
/// the VMM moves them with VMLOAD/VMSAVE, or the host's values leak into the
/// guest and back.
#[repr(C)]
pub struct SaveArea {
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    /// VMLOAD/VMSAVE (hidden state: base and attributes).
    pub fs: Segment,
    /// VMLOAD/VMSAVE (hidden state: base and attributes).
    pub gs: Segment,
    /// Limit and base only.
    pub gdtr: Segment,
    /// VMLOAD/VMSAVE.
    pub ldtr: Segment,
    /// Limit and base only.
    pub idtr: Segment,
    /// VMLOAD/VMSAVE.
    pub tr: Segment,
    _reserved_0a0: [u8; 0x2b],
    /// 0x0cb: outside real and virtual-8086 mode VMRUN takes the CPL from here,
    /// not from SS.DPL, so the VMM keeps the two equal.
    pub cpl: u8,
    _reserved_0cc: u32,
    /// 0x0d0: SVME must be set here or VMRUN fails.
    pub efer: u64,
    _reserved_0d8: [u8; 0x70],
    /// 0x148
    pub cr4: u64,
    pub cr3: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    /// 0x178
    pub rip: u64,
    _reserved_180: [u8; 0x58],
    /// 0x1d8
    pub rsp: u64,
    /// 0x1e0–0x1f7: shadow-stack state (CET), unused.
    _reserved_1e0: [u64; 3],
    /// 0x1f8: RAX is the only general register VMRUN switches; the entry stub
    /// switches the rest.
    pub rax: u64,
    /// 0x200: STAR through SYSENTER_EIP are VMLOAD/VMSAVE state.
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    /// 0x240
    pub cr2: u64,
    _reserved_248: [u8; 0x20],
    /// 0x268: the guest's PAT, used by nested paging only.
    pub g_pat: u64,
    /// 0x270: used with LBR virtualisation only.
    pub dbgctl: u64,
    pub br_from: u64,
    pub br_to: u64,
    pub last_excp_from: u64,
    pub last_excp_to: u64,
    _reserved_298: [u8; 0x48],
    /// 0x2e0: the guest's SPEC_CTRL, on CPUs that switch it.
    pub spec_ctrl: u64,
    _reserved_2e8: [u8; 0xc00 - 0x2e8],
}

impl SaveArea {
    pub const fn new() -> Self {
        let null = Segment::new(0, 0, 0, 0);
        SaveArea {
            es: null,
            cs: null,
            ss: null,
            ds: null,
            fs: null,
            gs: null,
            gdtr: null,
            ldtr: null,
            idtr: null,
            tr: null,
            _reserved_0a0: [0; 0x2b],
            cpl: 0,
            _reserved_0cc: 0,
            efer: 0,
            _reserved_0d8: [0; 0x70],
            cr4: 0,
            cr3: 0,
            cr0: 0,
            dr7: 0,
            dr6: 0,
            rflags: 0,
            rip: 0,
            _reserved_180: [0; 0x58],
            rsp: 0,
            _reserved_1e0: [0; 3],
            rax: 0,
            star: 0,
            lstar: 0,
            cstar: 0,
            sfmask: 0,
            kernel_gs_base: 0,
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            cr2: 0,
            _reserved_248: [0; 0x20],
            g_pat: 0,
            dbgctl: 0,
            br_from: 0,
            br_to: 0,
            last_excp_from: 0,
            last_excp_to: 0,
            _reserved_298: [0; 0x48],
            spec_ctrl: 0,
            _reserved_2e8: [0; 0xc00 - 0x2e8],
        }
    }
}

impl Default for SaveArea {
    fn default() -> Self {
        Self::new()
    }
}

/// The PAT value after reset; nested paging guests start with it in `g_pat`.
pub const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn vmcb_is_one_aligned_page_with_the_save_area_at_0x400() {
        assert_eq!(size_of::<Vmcb>(), 4096);
        assert_eq!(align_of::<Vmcb>(), 4096);
        assert_eq!(size_of::<ControlArea>(), 0x400);
        assert_eq!(offset_of!(Vmcb, save), 0x400);
        assert_eq!(size_of::<Segment>(), 16);
    }

    #[test]
    fn control_area_offsets_match_table_b1() {
        let table: &[(&str, usize, usize)] = &[
            ("intercept_cr", offset_of!(Vmcb, control.intercept_cr), 0x000),
            ("intercept_dr", offset_of!(Vmcb, control.intercept_dr), 0x004),
            ("intercept_exceptions", offset_of!(Vmcb, control.intercept_exceptions), 0x008),
            ("intercept_misc1", offset_of!(Vmcb, control.intercept_misc1), 0x00c),
            ("intercept_misc2", offset_of!(Vmcb, control.intercept_misc2), 0x010),
            ("intercept_misc3", offset_of!(Vmcb, control.intercept_misc3), 0x014),
            ("pause_filter_threshold", offset_of!(Vmcb, control.pause_filter_threshold), 0x03c),
            ("pause_filter_count", offset_of!(Vmcb, control.pause_filter_count), 0x03e),
            ("iopm_base_pa", offset_of!(Vmcb, control.iopm_base_pa), 0x040),
            ("msrpm_base_pa", offset_of!(Vmcb, control.msrpm_base_pa), 0x048),
            ("tsc_offset", offset_of!(Vmcb, control.tsc_offset), 0x050),
            ("guest_asid", offset_of!(Vmcb, control.guest_asid), 0x058),
            ("tlb_control", offset_of!(Vmcb, control.tlb_control), 0x05c),
            ("vintr", offset_of!(Vmcb, control.vintr), 0x060),
            ("interrupt_shadow", offset_of!(Vmcb, control.interrupt_shadow), 0x068),
            ("exit_code", offset_of!(Vmcb, control.exit_code), 0x070),
            ("exit_info1", offset_of!(Vmcb, control.exit_info1), 0x078),
            ("exit_info2", offset_of!(Vmcb, control.exit_info2), 0x080),
            ("exit_int_info", offset_of!(Vmcb, control.exit_int_info), 0x088),
            ("nested_control", offset_of!(Vmcb, control.nested_control), 0x090),
            ("avic_apic_bar", offset_of!(Vmcb, control.avic_apic_bar), 0x098),
            ("event_inj", offset_of!(Vmcb, control.event_inj), 0x0a8),
            ("n_cr3", offset_of!(Vmcb, control.n_cr3), 0x0b0),
            ("virt_ext", offset_of!(Vmcb, control.virt_ext), 0x0b8),
            ("clean_bits", offset_of!(Vmcb, control.clean_bits), 0x0c0),
            ("next_rip", offset_of!(Vmcb, control.next_rip), 0x0c8),
            ("guest_instruction_count", offset_of!(Vmcb, control.guest_instruction_count), 0x0d0),
            ("guest_instruction_bytes", offset_of!(Vmcb, control.guest_instruction_bytes), 0x0d1),
            ("avic_backing_page", offset_of!(Vmcb, control.avic_backing_page), 0x0e0),
            ("avic_logical_table", offset_of!(Vmcb, control.avic_logical_table), 0x0f0),
            ("avic_physical_table", offset_of!(Vmcb, control.avic_physical_table), 0x0f8),
            ("software", offset_of!(Vmcb, control.software), 0x3e0),
        ];
        for &(name, actual, expected) in table {
            assert_eq!(actual, expected, "{name}");
        }
    }

    #[test]
    fn save_area_offsets_match_table_b2() {
        let table: &[(&str, usize, usize)] = &[
            ("es", offset_of!(Vmcb, save.es), 0x400),
            ("cs", offset_of!(Vmcb, save.cs), 0x410),
            ("ss", offset_of!(Vmcb, save.ss), 0x420),
            ("ds", offset_of!(Vmcb, save.ds), 0x430),
            ("fs", offset_of!(Vmcb, save.fs), 0x440),
            ("gs", offset_of!(Vmcb, save.gs), 0x450),
            ("gdtr", offset_of!(Vmcb, save.gdtr), 0x460),
            ("ldtr", offset_of!(Vmcb, save.ldtr), 0x470),
            ("idtr", offset_of!(Vmcb, save.idtr), 0x480),
            ("tr", offset_of!(Vmcb, save.tr), 0x490),
            ("tr.attrib", offset_of!(Vmcb, save.tr.attrib), 0x492),
            ("tr.limit", offset_of!(Vmcb, save.tr.limit), 0x494),
            ("tr.base", offset_of!(Vmcb, save.tr.base), 0x498),
            ("cpl", offset_of!(Vmcb, save.cpl), 0x4cb),
            ("efer", offset_of!(Vmcb, save.efer), 0x4d0),
            ("cr4", offset_of!(Vmcb, save.cr4), 0x548),
            ("cr3", offset_of!(Vmcb, save.cr3), 0x550),
            ("cr0", offset_of!(Vmcb, save.cr0), 0x558),
            ("dr7", offset_of!(Vmcb, save.dr7), 0x560),
            ("dr6", offset_of!(Vmcb, save.dr6), 0x568),
            ("rflags", offset_of!(Vmcb, save.rflags), 0x570),
            ("rip", offset_of!(Vmcb, save.rip), 0x578),
            ("rsp", offset_of!(Vmcb, save.rsp), 0x5d8),
            ("rax", offset_of!(Vmcb, save.rax), 0x5f8),
            ("star", offset_of!(Vmcb, save.star), 0x600),
            ("lstar", offset_of!(Vmcb, save.lstar), 0x608),
            ("cstar", offset_of!(Vmcb, save.cstar), 0x610),
            ("sfmask", offset_of!(Vmcb, save.sfmask), 0x618),
            ("kernel_gs_base", offset_of!(Vmcb, save.kernel_gs_base), 0x620),
            ("sysenter_cs", offset_of!(Vmcb, save.sysenter_cs), 0x628),
            ("sysenter_esp", offset_of!(Vmcb, save.sysenter_esp), 0x630),
            ("sysenter_eip", offset_of!(Vmcb, save.sysenter_eip), 0x638),
            ("cr2", offset_of!(Vmcb, save.cr2), 0x640),
            ("g_pat", offset_of!(Vmcb, save.g_pat), 0x668),
            ("dbgctl", offset_of!(Vmcb, save.dbgctl), 0x670),
            ("br_from", offset_of!(Vmcb, save.br_from), 0x678),
            ("br_to", offset_of!(Vmcb, save.br_to), 0x680),
            ("last_excp_from", offset_of!(Vmcb, save.last_excp_from), 0x688),
            ("last_excp_to", offset_of!(Vmcb, save.last_excp_to), 0x690),
            ("spec_ctrl", offset_of!(Vmcb, save.spec_ctrl), 0x6e0),
        ];
        for &(name, actual, expected) in table {
            assert_eq!(actual, expected, "{name}");
        }
    }

    #[test]
    fn new_vmcb_is_all_zero() {
        let vmcb = Box::new(Vmcb::new());
        let ptr = &*vmcb as *const Vmcb as *const u8;
        // SAFETY: Vmcb is 4096 bytes of integers and byte arrays with no padding
        // (the offset tests pin every gap as an explicit reserved field).
        let bytes = unsafe { core::slice::from_raw_parts(ptr, size_of::<Vmcb>()) };
        assert!(bytes.iter().all(|&b| b == 0));
        assert_eq!(ptr as usize % 4096, 0);
    }

    #[test]
    fn instruction_bytes_are_bounded_by_the_buffer() {
        let mut c = ControlArea::new();
        assert!(c.instruction_bytes().is_empty());
        c.guest_instruction_bytes[..3].copy_from_slice(&[0x0f, 0x01, 0xd9]);
        c.guest_instruction_count = 3;
        assert_eq!(c.instruction_bytes(), &[0x0f, 0x01, 0xd9]);
        // A count the CPU never writes must not read past the 15 bytes.
        c.guest_instruction_count = 200;
        assert_eq!(c.instruction_bytes().len(), 15);
    }

    #[test]
    fn segment_attributes_convert_both_ways() {
        // (VMX access rights, VMCB attributes)
        let table: &[(u32, u16)] = &[
            (0xa09b, 0x0a9b), // 64-bit code: L, P, DPL 0, accessed execute/read
            (0xc09b, 0x0c9b), // 32-bit code: D, G
            (0xc093, 0x0c93), // flat data
            (0x0093, 0x0093), // real-mode data
            (0x008b, 0x008b), // busy 64-bit TSS
            (0x0082, 0x0082), // LDT
            (0x10f3, 0x01f3), // AVL, DPL 3 data
        ];
        for &(rights, attrib) in table {
            assert_eq!(Segment::attrib_from_vmx(rights), attrib, "{rights:#x}");
            let s = Segment::from_vmx(0x10, rights, 0xffff_ffff, 0);
            assert_eq!(s.attrib, attrib);
            assert_eq!(s.vmx_access_rights(), rights, "{attrib:#x}");
        }
    }

    #[test]
    fn unusable_vmx_segment_becomes_not_present_and_back() {
        let s = Segment::from_vmx(0, VMX_UNUSABLE | 0x93, 0, 0);
        assert!(!s.present());
        assert_eq!(s.attrib, 0x13);
        assert_ne!(s.vmx_access_rights() & VMX_UNUSABLE, 0);
        assert_eq!(Segment::default().vmx_access_rights(), VMX_UNUSABLE);
    }

    #[test]
    fn virtual_interrupt_fields_pack_into_their_bits() {
        let v = VirtualInterrupt(0).with_masking(true).with_tpr(0x1f).with_irq(0x30, 2, true);
        assert_eq!(v.0, (1 << 24) | 0xf | (1 << 8) | (2 << 16) | (1 << 20) | (0x30 << 32));
        assert!(v.masking() && v.irq_pending() && v.ignores_tpr());
        assert_eq!((v.tpr(), v.priority(), v.vector()), (0xf, 2, 0x30));
        let cleared = v.without_irq();
        assert!(!cleared.irq_pending() && cleared.masking());
        assert_eq!(cleared.with_masking(false).0 & (1 << 24), 0);
        // Asking again replaces vector and priority instead of or-ing them.
        let again = v.with_irq(0x41, 1, false);
        assert_eq!((again.vector(), again.priority(), again.ignores_tpr()), (0x41, 1, false));
    }
}
