//! #VMEXIT as types: the exit code (APM vol. 2, appendix C), the EXITINFO1/2
//! layouts Basalt decodes (15.7–15.10, 15.12, 15.25.6, 15.33), and the event
//! format shared by EXITINTINFO and EVENTINJ (15.20, 15.7.2).

/// The EXITCODE field. Architecturally 64 bits wide so that -1 (VMRUN refused
/// the VMCB) fits; every real exit code is below 0x1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCode(pub u64);

pub mod code {
    pub const CR0_READ: u64 = 0x00;
    pub const CR3_READ: u64 = 0x03;
    pub const CR4_READ: u64 = 0x04;
    pub const CR8_READ: u64 = 0x08;
    pub const CR0_WRITE: u64 = 0x10;
    pub const CR3_WRITE: u64 = 0x13;
    pub const CR4_WRITE: u64 = 0x14;
    pub const CR8_WRITE: u64 = 0x18;
    pub const DR0_READ: u64 = 0x20;
    pub const DR0_WRITE: u64 = 0x30;
    /// EXCP_BASE + vector, for vectors 0–31.
    pub const EXCP_BASE: u64 = 0x40;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const SMI: u64 = 0x62;
    pub const INIT: u64 = 0x63;
    pub const VINTR: u64 = 0x64;
    pub const CR0_SEL_WRITE: u64 = 0x65;
    pub const IDTR_READ: u64 = 0x66;
    pub const GDTR_READ: u64 = 0x67;
    pub const LDTR_READ: u64 = 0x68;
    pub const TR_READ: u64 = 0x69;
    pub const IDTR_WRITE: u64 = 0x6a;
    pub const GDTR_WRITE: u64 = 0x6b;
    pub const LDTR_WRITE: u64 = 0x6c;
    pub const TR_WRITE: u64 = 0x6d;
    pub const RDTSC: u64 = 0x6e;
    pub const RDPMC: u64 = 0x6f;
    pub const PUSHF: u64 = 0x70;
    pub const POPF: u64 = 0x71;
    pub const CPUID: u64 = 0x72;
    pub const RSM: u64 = 0x73;
    pub const IRET: u64 = 0x74;
    pub const SWINT: u64 = 0x75;
    pub const INVD: u64 = 0x76;
    pub const PAUSE: u64 = 0x77;
    pub const HLT: u64 = 0x78;
    pub const INVLPG: u64 = 0x79;
    pub const INVLPGA: u64 = 0x7a;
    pub const IOIO: u64 = 0x7b;
    pub const MSR: u64 = 0x7c;
    pub const TASK_SWITCH: u64 = 0x7d;
    pub const FERR_FREEZE: u64 = 0x7e;
    pub const SHUTDOWN: u64 = 0x7f;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const VMLOAD: u64 = 0x82;
    pub const VMSAVE: u64 = 0x83;
    pub const STGI: u64 = 0x84;
    pub const CLGI: u64 = 0x85;
    pub const SKINIT: u64 = 0x86;
    pub const RDTSCP: u64 = 0x87;
    pub const ICEBP: u64 = 0x88;
    pub const WBINVD: u64 = 0x89;
    pub const MONITOR: u64 = 0x8a;
    pub const MWAIT: u64 = 0x8b;
    pub const MWAIT_CONDITIONAL: u64 = 0x8c;
    pub const XSETBV: u64 = 0x8d;
    pub const RDPRU: u64 = 0x8e;
    pub const EFER_WRITE_TRAP: u64 = 0x8f;
    /// CR0_WRITE_TRAP + n, for CR0–CR15.
    pub const CR0_WRITE_TRAP: u64 = 0x90;
    pub const INVLPGB: u64 = 0xa0;
    pub const INVLPGB_ILLEGAL: u64 = 0xa1;
    pub const INVPCID: u64 = 0xa2;
    pub const MCOMMIT: u64 = 0xa3;
    pub const TLBSYNC: u64 = 0xa4;
    pub const NPF: u64 = 0x400;
    pub const AVIC_INCOMPLETE_IPI: u64 = 0x401;
    pub const AVIC_NOACCEL: u64 = 0x402;
    pub const VMGEXIT: u64 = 0x403;
    /// VMRUN found the VMCB's guest state or controls illegal (the VMX
    /// "invalid guest state" counterpart); nothing ran.
    pub const INVALID: u64 = u64::MAX;
    /// VMRUN found the VMSA busy (SEV-ES only).
    pub const BUSY: u64 = u64::MAX - 1;
}

impl ExitCode {
    /// VMRUN did not enter the guest. QEMU's TCG stores VMEXIT_INVALID as
    /// a 32-bit -1 (0xffff_ffff, zero-extended); no real exit code is that high.
    pub const fn is_invalid(self) -> bool {
        self.0 == code::INVALID || self.0 == code::BUSY || self.0 == code::INVALID as u32 as u64
    }

    /// The vector of an intercepted exception.
    pub const fn exception(self) -> Option<u8> {
        if self.0 >= code::EXCP_BASE && self.0 < code::EXCP_BASE + 32 {
            Some((self.0 - code::EXCP_BASE) as u8)
        } else {
            None
        }
    }

    /// The register of an intercepted MOV from CRn.
    pub const fn cr_read(self) -> Option<u8> {
        if self.0 < 0x10 {
            Some(self.0 as u8)
        } else {
            None
        }
    }

    /// The register of an intercepted write to CRn (MOV, and LMSW/CLTS for CR0).
    pub const fn cr_write(self) -> Option<u8> {
        if self.0 >= 0x10 && self.0 < 0x20 {
            Some((self.0 - 0x10) as u8)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        code_name(self.0)
    }
}

/// A name for logs and exit counters. Families with one handler (CR and DR
/// accesses, exceptions, the SVM instructions hidden from guests) share one.
pub fn code_name(exit_code: u64) -> &'static str {
    use code::*;
    match exit_code {
        0x00..=0x0f => "cr-read",
        0x10..=0x1f => "cr-write",
        0x20..=0x2f => "dr-read",
        0x30..=0x3f => "dr-write",
        0x40..=0x5f => "exception",
        INTR => "intr",
        NMI => "nmi",
        SMI => "smi",
        INIT => "init",
        VINTR => "vintr",
        CR0_SEL_WRITE => "cr0-selective-write",
        IDTR_READ | GDTR_READ | LDTR_READ | TR_READ => "descriptor-table-read",
        IDTR_WRITE | GDTR_WRITE | LDTR_WRITE | TR_WRITE => "descriptor-table-write",
        RDTSC => "rdtsc",
        RDPMC => "rdpmc",
        PUSHF => "pushf",
        POPF => "popf",
        CPUID => "cpuid",
        RSM => "rsm",
        IRET => "iret",
        SWINT => "software-interrupt",
        INVD => "invd",
        PAUSE => "pause",
        HLT => "hlt",
        INVLPG => "invlpg",
        IOIO => "io",
        MSR => "msr",
        TASK_SWITCH => "task-switch",
        FERR_FREEZE => "ferr-freeze",
        SHUTDOWN => "shutdown",
        VMMCALL => "vmmcall",
        VMRUN | VMLOAD | VMSAVE | STGI | CLGI | SKINIT | INVLPGA => "svm-instruction",
        RDTSCP => "rdtscp",
        ICEBP => "icebp",
        WBINVD => "wbinvd",
        MONITOR => "monitor",
        MWAIT | MWAIT_CONDITIONAL => "mwait",
        XSETBV => "xsetbv",
        RDPRU => "rdpru",
        EFER_WRITE_TRAP => "efer-write-trap",
        0x90..=0x9f => "cr-write-trap",
        INVLPGB | INVLPGB_ILLEGAL | TLBSYNC => "invlpgb",
        INVPCID => "invpcid",
        MCOMMIT => "mcommit",
        NPF => "npf",
        AVIC_INCOMPLETE_IPI | AVIC_NOACCEL => "avic",
        VMGEXIT => "vmgexit",
        INVALID => "invalid-vmcb",
        BUSY => "vmsa-busy",
        _ => "other",
    }
}

/// A segment register named by a 3-bit field (ES = 0 … GS = 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentRegister {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

impl SegmentRegister {
    pub const fn decode(n: u64) -> Option<Self> {
        match n & 7 {
            0 => Some(SegmentRegister::Es),
            1 => Some(SegmentRegister::Cs),
            2 => Some(SegmentRegister::Ss),
            3 => Some(SegmentRegister::Ds),
            4 => Some(SegmentRegister::Fs),
            5 => Some(SegmentRegister::Gs),
            _ => None,
        }
    }
}

/// EXITINFO1 of an IOIO exit (APM 15.10.2). EXITINFO2 holds the RIP after the
/// instruction on every SVM CPU, so port I/O never needs NRIPS to be skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoInfo {
    pub port: u16,
    /// 1, 2 or 4 bytes; 0 if the CPU set no size bit (never seen; a handler
    /// should treat it as malformed rather than guess).
    pub size: u8,
    pub is_in: bool,
    /// INS/OUTS.
    pub is_string: bool,
    pub has_rep: bool,
    /// 16, 32 or 64 (the string instruction's address size); 0 if unset.
    pub address_size: u8,
    /// The segment of a string instruction's memory operand (bits 12:10). The
    /// APM ties it to decode assists; a CPU without them may leave it 0 (ES),
    /// so for OUTS (default DS, overridable) trust it only where
    /// `SvmCapabilities::decode_assists()` holds.
    pub segment: Option<SegmentRegister>,
}

impl IoInfo {
    pub const fn decode(info1: u64) -> Self {
        let size = if info1 & (1 << 4) != 0 {
            1
        } else if info1 & (1 << 5) != 0 {
            2
        } else if info1 & (1 << 6) != 0 {
            4
        } else {
            0
        };
        let address_size = if info1 & (1 << 7) != 0 {
            16
        } else if info1 & (1 << 8) != 0 {
            32
        } else if info1 & (1 << 9) != 0 {
            64
        } else {
            0
        };
        IoInfo {
            port: (info1 >> 16) as u16,
            size,
            is_in: info1 & 1 != 0,
            is_string: info1 & (1 << 2) != 0,
            has_rep: info1 & (1 << 3) != 0,
            address_size,
            segment: SegmentRegister::decode(info1 >> 10),
        }
    }
}

/// EXITINFO1 of an MSR exit: which of RDMSR/WRMSR; the MSR number is the
/// guest's ECX, which the VMCB does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAccess {
    Read,
    Write,
}

impl MsrAccess {
    pub const fn decode(info1: u64) -> Self {
        if info1 & 1 != 0 {
            MsrAccess::Write
        } else {
            MsrAccess::Read
        }
    }
}

/// EXITINFO1 of a nested page fault (APM 15.25.6): a #PF-style error code plus
/// where in the translation the fault happened. EXITINFO2 is the faulting
/// guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpfInfo {
    /// The nested entry was present: a permission fault, not a missing mapping.
    pub present: bool,
    pub write: bool,
    pub user: bool,
    /// A reserved bit was set in a nested entry: Basalt's own table is corrupt
    /// (the EPT-misconfiguration counterpart), never the guest's doing.
    pub reserved_bit: bool,
    pub fetch: bool,
    /// The fault hit the guest's final physical address: a real data or code
    /// access, such as MMIO.
    pub final_address: bool,
    /// The fault hit while the CPU walked the guest's own page tables: those
    /// tables live in memory the nested table does not map.
    pub page_table_walk: bool,
}

impl NpfInfo {
    pub const fn decode(info1: u64) -> Self {
        NpfInfo {
            present: info1 & (1 << 0) != 0,
            write: info1 & (1 << 1) != 0,
            user: info1 & (1 << 2) != 0,
            reserved_bit: info1 & (1 << 3) != 0,
            fetch: info1 & (1 << 4) != 0,
            final_address: info1 & (1 << 32) != 0,
            page_table_walk: info1 & (1 << 33) != 0,
        }
    }
}

/// EXITINFO1 of a CR access intercept, filled in only by CPUs with decode
/// assists (APM 15.33.1); without them the field is zero and the VMM must
/// decode the instruction itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessInfo {
    /// MOV to or from the CR through this general register (0 = RAX … 15 = R15).
    Mov { gpr: u8 },
    /// LMSW or CLTS (CR0 writes only), or no decode assists: the instruction
    /// is not described.
    LmswOrClts,
}

impl CrAccessInfo {
    pub const fn decode(info1: u64) -> Self {
        if info1 & (1 << 63) != 0 {
            CrAccessInfo::Mov { gpr: (info1 & 0xf) as u8 }
        } else {
            CrAccessInfo::LmswOrClts
        }
    }
}

/// Whether an exception pushes an error code: #DF, #TS, #NP, #SS, #GP, #PF,
/// #AC, #CP, #VC, #SX. Injection must agree with it, or the guest's handler
/// pops the wrong stack slot.
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// An intercepted exception: EXITINFO1 holds its error code (when it has one)
/// and EXITINFO2 the faulting address of a #PF (APM 15.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionExit {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// CR2 for a #PF; the guest's CR2 is not yet written.
    pub fault_address: Option<u64>,
}

impl ExceptionExit {
    pub const fn decode(exit_code: ExitCode, info1: u64, info2: u64) -> Option<Self> {
        let Some(vector) = exit_code.exception() else {
            return None;
        };
        Some(ExceptionExit {
            vector,
            error_code: if exception_has_error_code(vector) { Some(info1 as u32) } else { None },
            fault_address: if vector == 14 { Some(info2) } else { None },
        })
    }
}

/// The TYPE field of EVENTINJ and EXITINTINFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    ExternalInterrupt,
    Nmi,
    Exception,
    /// INTn. The CPU needs the RIP after the instruction to push; without NRIPS
    /// the VMM must advance RIP past the INTn itself before injecting.
    SoftwareInterrupt,
    /// Types 1, 5, 6, 7: reserved. Kept, not dropped, so that an EXITINTINFO
    /// the CPU wrote is re-injected unchanged; injecting one makes VMRUN fail.
    Reserved(u8),
}

impl EventType {
    const fn bits(self) -> u64 {
        match self {
            EventType::ExternalInterrupt => 0,
            EventType::Nmi => 2,
            EventType::Exception => 3,
            EventType::SoftwareInterrupt => 4,
            EventType::Reserved(n) => (n & 7) as u64,
        }
    }

    const fn from_bits(n: u64) -> Self {
        match n & 7 {
            0 => EventType::ExternalInterrupt,
            2 => EventType::Nmi,
            3 => EventType::Exception,
            4 => EventType::SoftwareInterrupt,
            other => EventType::Reserved(other as u8),
        }
    }
}

/// An event in the EVENTINJ / EXITINTINFO format (one layout for both): bits
/// 7:0 vector, 10:8 type, 11 error code valid, 31 valid, 63:32 error code.
/// EXITINTINFO names an event whose delivery the exit interrupted: the VMM
/// must inject it again or the guest loses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub vector: u8,
    pub kind: EventType,
    pub error_code: Option<u32>,
}

const EVENT_ERROR_CODE_VALID: u64 = 1 << 11;
const EVENT_VALID: u64 = 1 << 31;

impl Event {
    pub const fn external_interrupt(vector: u8) -> Self {
        Event { vector, kind: EventType::ExternalInterrupt, error_code: None }
    }

    /// The vector of an NMI is ignored by the CPU; 2 keeps logs readable.
    pub const fn nmi() -> Self {
        Event { vector: 2, kind: EventType::Nmi, error_code: None }
    }

    /// A hardware exception; `error_code` is used only for the vectors that
    /// push one, so a caller cannot inject a mismatched frame.
    pub const fn exception(vector: u8, error_code: u32) -> Self {
        Event {
            vector,
            kind: EventType::Exception,
            error_code: if exception_has_error_code(vector) { Some(error_code) } else { None },
        }
    }

    /// The EVENTINJ value (valid bit set).
    pub const fn encode(self) -> u64 {
        let error = match self.error_code {
            Some(code) => EVENT_ERROR_CODE_VALID | (code as u64) << 32,
            None => 0,
        };
        EVENT_VALID | error | self.kind.bits() << 8 | self.vector as u64
    }

    /// None when the valid bit is clear (no event).
    pub const fn decode(raw: u64) -> Option<Self> {
        if raw & EVENT_VALID == 0 {
            return None;
        }
        Some(Event {
            vector: raw as u8,
            kind: EventType::from_bits(raw >> 8),
            error_code: if raw & EVENT_ERROR_CODE_VALID != 0 { Some((raw >> 32) as u32) } else { None },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_have_names_and_families() {
        let table: &[(u64, &str)] = &[
            (code::CR0_READ, "cr-read"),
            (code::CR4_WRITE, "cr-write"),
            (0x27, "dr-read"),
            (0x37, "dr-write"),
            (code::EXCP_BASE + 14, "exception"),
            (code::INTR, "intr"),
            (code::VINTR, "vintr"),
            (code::CR0_SEL_WRITE, "cr0-selective-write"),
            (code::CPUID, "cpuid"),
            (code::HLT, "hlt"),
            (code::IOIO, "io"),
            (code::MSR, "msr"),
            (code::SHUTDOWN, "shutdown"),
            (code::VMMCALL, "vmmcall"),
            (code::VMRUN, "svm-instruction"),
            (code::CLGI, "svm-instruction"),
            (code::WBINVD, "wbinvd"),
            (code::MWAIT_CONDITIONAL, "mwait"),
            (code::XSETBV, "xsetbv"),
            (0x94, "cr-write-trap"),
            (code::NPF, "npf"),
            (code::INVALID, "invalid-vmcb"),
            (0x3ff, "other"),
        ];
        for &(c, name) in table {
            assert_eq!(ExitCode(c).name(), name, "{c:#x}");
        }
        // The architectural numbers the kernel will dispatch on.
        assert_eq!((code::IOIO, code::MSR, code::VMRUN, code::XSETBV, code::NPF), (0x7b, 0x7c, 0x80, 0x8d, 0x400));
    }

    #[test]
    fn exit_code_families_decode() {
        assert_eq!(ExitCode(0x4e).exception(), Some(14));
        assert_eq!(ExitCode(0x5f).exception(), Some(31));
        assert_eq!(ExitCode(0x60).exception(), None);
        assert_eq!(ExitCode(0x04).cr_read(), Some(4));
        assert_eq!(ExitCode(0x18).cr_write(), Some(8));
        assert_eq!(ExitCode(0x18).cr_read(), None);
        assert_eq!(ExitCode(0x20).cr_write(), None);
        assert!(ExitCode(u64::MAX).is_invalid());
        assert!(ExitCode(-1i64 as u64).is_invalid());
        assert!(ExitCode(0xffff_ffff).is_invalid(), "QEMU's TCG writes -1 as 32 bits");
        assert!(!ExitCode(code::SHUTDOWN).is_invalid());
    }

    #[test]
    fn ioio_decodes() {
        // out dx, al to 0x3f8
        let out = IoInfo::decode((0x3f8 << 16) | (1 << 4));
        assert_eq!(
            out,
            IoInfo {
                port: 0x3f8,
                size: 1,
                is_in: false,
                is_string: false,
                has_rep: false,
                address_size: 0,
                segment: Some(SegmentRegister::Es),
            }
        );
        // rep insw, 64-bit addressing, ES
        let ins = IoInfo::decode((0x1f0 << 16) | (1 << 9) | (1 << 5) | (1 << 3) | (1 << 2) | 1);
        assert_eq!((ins.port, ins.size, ins.is_in, ins.is_string, ins.has_rep), (0x1f0, 2, true, true, true));
        assert_eq!(ins.address_size, 64);
        // in eax, dx from 0xcfc
        let inl = IoInfo::decode((0xcfc << 16) | (1 << 6) | 1);
        assert_eq!((inl.port, inl.size, inl.is_in), (0xcfc, 4, true));
        // outsb with an FS override, 32-bit addressing
        let outs = IoInfo::decode((0x80 << 16) | (4 << 10) | (1 << 8) | (1 << 4) | (1 << 2));
        assert_eq!((outs.segment, outs.address_size, outs.is_in), (Some(SegmentRegister::Fs), 32, false));
        // Reserved segment numbers and a missing size bit are visible, not guessed.
        let odd = IoInfo::decode((0xffff << 16) | (7 << 10));
        assert_eq!((odd.port, odd.size, odd.segment), (0xffff, 0, None));
    }

    #[test]
    fn msr_access_decodes() {
        assert_eq!(MsrAccess::decode(0), MsrAccess::Read);
        assert_eq!(MsrAccess::decode(1), MsrAccess::Write);
    }

    #[test]
    fn npf_decodes() {
        // A write to unmapped MMIO space.
        let mmio = NpfInfo::decode((1 << 32) | (1 << 1) | (1 << 2));
        assert!(mmio.write && mmio.user && mmio.final_address);
        assert!(!mmio.present && !mmio.fetch && !mmio.page_table_walk && !mmio.reserved_bit);
        // A fetch from a mapped, non-executable page.
        let nx = NpfInfo::decode((1 << 32) | (1 << 4) | 1);
        assert!(nx.present && nx.fetch && !nx.write);
        // A guest page-table walk into unmapped memory.
        let walk = NpfInfo::decode(1 << 33);
        assert!(walk.page_table_walk && !walk.final_address);
        assert!(NpfInfo::decode(1 << 3).reserved_bit);
    }

    #[test]
    fn cr_access_decodes_with_decode_assists() {
        assert_eq!(CrAccessInfo::decode((1 << 63) | 3), CrAccessInfo::Mov { gpr: 3 });
        assert_eq!(CrAccessInfo::decode((1 << 63) | 15), CrAccessInfo::Mov { gpr: 15 });
        // Only the low 4 bits name the register.
        assert_eq!(CrAccessInfo::decode((1 << 63) | 0x1f2), CrAccessInfo::Mov { gpr: 2 });
        assert_eq!(CrAccessInfo::decode(0), CrAccessInfo::LmswOrClts);
    }

    #[test]
    fn exception_exits_decode() {
        let pf = ExceptionExit::decode(ExitCode(code::EXCP_BASE + 14), 0x6, 0xdead_b000).unwrap();
        assert_eq!(pf, ExceptionExit { vector: 14, error_code: Some(6), fault_address: Some(0xdead_b000) });
        let gp = ExceptionExit::decode(ExitCode(code::EXCP_BASE + 13), 0x1_0000_0018, 0).unwrap();
        assert_eq!((gp.error_code, gp.fault_address), (Some(0x18), None));
        let ud = ExceptionExit::decode(ExitCode(code::EXCP_BASE + 6), 0x1234, 0).unwrap();
        assert_eq!(ud.error_code, None);
        assert_eq!(ExceptionExit::decode(ExitCode(code::CPUID), 0, 0), None);
    }

    #[test]
    fn error_code_vectors_are_the_architectural_ones() {
        let with: Vec<u8> = (0..=31).filter(|&v| exception_has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }

    #[test]
    fn events_encode_to_the_architectural_bits() {
        assert_eq!(Event::exception(13, 0x18).encode(), 0x0000_0018_8000_0b0d);
        assert_eq!(Event::exception(6, 0x18).encode(), 0x8000_0306);
        assert_eq!(Event::external_interrupt(0x30).encode(), 0x8000_0030);
        assert_eq!(Event::nmi().encode(), 0x8000_0202);
        let int3 = Event { vector: 3, kind: EventType::SoftwareInterrupt, error_code: None };
        assert_eq!(int3.encode(), 0x8000_0403);
        assert_eq!(Event::decode(0), None);
        assert_eq!(Event::decode(0x0000_0018_0000_0b0d), None, "valid bit clear");
    }

    #[test]
    fn events_round_trip() {
        let kinds = [
            EventType::ExternalInterrupt,
            EventType::Nmi,
            EventType::Exception,
            EventType::SoftwareInterrupt,
            EventType::Reserved(1),
            EventType::Reserved(5),
            EventType::Reserved(6),
            EventType::Reserved(7),
        ];
        for kind in kinds {
            for vector in [0u8, 2, 8, 14, 31, 32, 0x80, 0xff] {
                for error_code in [None, Some(0), Some(0xffff_ffff), Some(0x1234_5678)] {
                    let e = Event { vector, kind, error_code };
                    let raw = e.encode();
                    assert_eq!(Event::decode(raw), Some(e));
                    // Reserved bits 30:12 are never set.
                    assert_eq!(raw & 0x7fff_f000, 0);
                }
            }
        }
        // And raw → event → raw for values the CPU could write.
        for raw in [0x8000_0b0e_u64 | 0x2 << 32, 0x8000_0030, 0x8000_0202, 0x8000_0403] {
            assert_eq!(Event::decode(raw).unwrap().encode(), raw);
        }
    }
}
