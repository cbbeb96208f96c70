//! VM exits as types: the basic exit reason and the exit qualifications Basalt
//! decodes (Intel SDM vol. 3, 28.2 and appendix C).

/// The EXIT_REASON field: basic reason plus the entry-failure flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason(pub u32);

impl ExitReason {
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }

    /// Bit 31: the VM entry failed (invalid guest state, MSR loading, machine check).
    pub const fn is_entry_failure(self) -> bool {
        self.0 & (1 << 31) != 0
    }

    pub fn name(self) -> &'static str {
        reason_name(self.basic())
    }
}

pub mod reason {
    pub const EXCEPTION_OR_NMI: u16 = 0;
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    pub const TRIPLE_FAULT: u16 = 2;
    pub const INIT_SIGNAL: u16 = 3;
    pub const STARTUP_IPI: u16 = 4;
    pub const INTERRUPT_WINDOW: u16 = 7;
    pub const NMI_WINDOW: u16 = 8;
    pub const TASK_SWITCH: u16 = 9;
    pub const CPUID: u16 = 10;
    pub const GETSEC: u16 = 11;
    pub const HLT: u16 = 12;
    pub const INVD: u16 = 13;
    pub const INVLPG: u16 = 14;
    pub const RDPMC: u16 = 15;
    pub const RDTSC: u16 = 16;
    pub const VMCALL: u16 = 18;
    pub const VMCLEAR: u16 = 19;
    pub const VMLAUNCH: u16 = 20;
    pub const VMPTRLD: u16 = 21;
    pub const VMPTRST: u16 = 22;
    pub const VMREAD: u16 = 23;
    pub const VMRESUME: u16 = 24;
    pub const VMWRITE: u16 = 25;
    pub const VMXOFF: u16 = 26;
    pub const VMXON: u16 = 27;
    pub const CR_ACCESS: u16 = 28;
    pub const DR_ACCESS: u16 = 29;
    pub const IO_INSTRUCTION: u16 = 30;
    pub const RDMSR: u16 = 31;
    pub const WRMSR: u16 = 32;
    pub const INVALID_GUEST_STATE: u16 = 33;
    pub const MSR_LOADING: u16 = 34;
    pub const MWAIT: u16 = 36;
    pub const MONITOR_TRAP_FLAG: u16 = 37;
    pub const MONITOR: u16 = 39;
    pub const PAUSE: u16 = 40;
    pub const MACHINE_CHECK_DURING_ENTRY: u16 = 41;
    pub const TPR_BELOW_THRESHOLD: u16 = 43;
    pub const APIC_ACCESS: u16 = 44;
    pub const VIRTUALIZED_EOI: u16 = 45;
    pub const GDTR_IDTR_ACCESS: u16 = 46;
    pub const LDTR_TR_ACCESS: u16 = 47;
    pub const EPT_VIOLATION: u16 = 48;
    pub const EPT_MISCONFIGURATION: u16 = 49;
    pub const INVEPT: u16 = 50;
    pub const RDTSCP: u16 = 51;
    pub const PREEMPTION_TIMER: u16 = 52;
    pub const INVVPID: u16 = 53;
    pub const WBINVD: u16 = 54;
    pub const XSETBV: u16 = 55;
    pub const APIC_WRITE: u16 = 56;
    pub const RDRAND: u16 = 57;
    pub const INVPCID: u16 = 58;
    pub const VMFUNC: u16 = 59;
    pub const RDSEED: u16 = 61;
    pub const XSAVES: u16 = 63;
    pub const XRSTORS: u16 = 64;
    /// One past the highest reason Basalt names; counters are sized by it.
    pub const COUNT: usize = 70;
}

pub fn reason_name(basic: u16) -> &'static str {
    use reason::*;
    match basic {
        EXCEPTION_OR_NMI => "exception-or-nmi",
        EXTERNAL_INTERRUPT => "external-interrupt",
        TRIPLE_FAULT => "triple-fault",
        INIT_SIGNAL => "init",
        STARTUP_IPI => "sipi",
        INTERRUPT_WINDOW => "interrupt-window",
        NMI_WINDOW => "nmi-window",
        TASK_SWITCH => "task-switch",
        CPUID => "cpuid",
        GETSEC => "getsec",
        HLT => "hlt",
        INVD => "invd",
        INVLPG => "invlpg",
        RDPMC => "rdpmc",
        RDTSC => "rdtsc",
        VMCALL => "vmcall",
        VMCLEAR | VMLAUNCH | VMPTRLD | VMPTRST | VMREAD | VMRESUME | VMWRITE | VMXOFF | VMXON | INVEPT | INVVPID
        | VMFUNC => "vmx-instruction",
        CR_ACCESS => "cr-access",
        DR_ACCESS => "dr-access",
        IO_INSTRUCTION => "io",
        RDMSR => "rdmsr",
        WRMSR => "wrmsr",
        INVALID_GUEST_STATE => "invalid-guest-state",
        MSR_LOADING => "msr-loading",
        MWAIT => "mwait",
        MONITOR_TRAP_FLAG => "monitor-trap-flag",
        MONITOR => "monitor",
        PAUSE => "pause",
        MACHINE_CHECK_DURING_ENTRY => "machine-check-during-entry",
        TPR_BELOW_THRESHOLD => "tpr-below-threshold",
        APIC_ACCESS => "apic-access",
        VIRTUALIZED_EOI => "virtualized-eoi",
        GDTR_IDTR_ACCESS => "gdtr-idtr-access",
        LDTR_TR_ACCESS => "ldtr-tr-access",
        EPT_VIOLATION => "ept-violation",
        EPT_MISCONFIGURATION => "ept-misconfiguration",
        RDTSCP => "rdtscp",
        PREEMPTION_TIMER => "preemption-timer",
        WBINVD => "wbinvd",
        XSETBV => "xsetbv",
        APIC_WRITE => "apic-write",
        RDRAND => "rdrand",
        INVPCID => "invpcid",
        RDSEED => "rdseed",
        XSAVES => "xsaves",
        XRSTORS => "xrstors",
        _ => "other",
    }
}

/// Exit qualification of an I/O instruction exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    /// 1, 2 or 4 bytes.
    pub size: u8,
    pub is_in: bool,
    /// INS/OUTS.
    pub is_string: bool,
    pub has_rep: bool,
    pub port: u16,
}

impl IoQualification {
    pub const fn decode(q: u64) -> Self {
        IoQualification {
            size: (q & 7) as u8 + 1,
            is_in: q & (1 << 3) != 0,
            is_string: q & (1 << 4) != 0,
            has_rep: q & (1 << 5) != 0,
            port: (q >> 16) as u16,
        }
    }
}

/// Exit qualification of a control-register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccess {
    MovToCr { cr: u8, gpr: u8 },
    MovFromCr { cr: u8, gpr: u8 },
    Clts,
    Lmsw { source: u16 },
}

impl CrAccess {
    pub const fn decode(q: u64) -> Self {
        let cr = (q & 0xf) as u8;
        let gpr = ((q >> 8) & 0xf) as u8;
        match (q >> 4) & 3 {
            0 => CrAccess::MovToCr { cr, gpr },
            1 => CrAccess::MovFromCr { cr, gpr },
            2 => CrAccess::Clts,
            _ => CrAccess::Lmsw { source: (q >> 16) as u16 },
        }
    }
}

/// Exit qualification of an EPT violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolation {
    pub read: bool,
    pub write: bool,
    pub fetch: bool,
    /// What the EPT entry allowed (all false: not mapped at all).
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    pub linear_address_valid: bool,
}

impl EptViolation {
    pub const fn decode(q: u64) -> Self {
        EptViolation {
            read: q & 1 != 0,
            write: q & 2 != 0,
            fetch: q & 4 != 0,
            readable: q & 8 != 0,
            writable: q & 16 != 0,
            executable: q & 32 != 0,
            linear_address_valid: q & 128 != 0,
        }
    }

    pub const fn was_mapped(&self) -> bool {
        self.readable || self.writable || self.executable
    }
}

/// Exit qualification of an APIC-access exit (an access to the APIC-access page
/// the CPU did not virtualise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicAccess {
    /// An instruction read at this page offset (fault-like: not executed yet).
    Read { offset: u32 },
    /// An instruction wrote at this page offset (likewise).
    Write { offset: u32 },
    /// Anything else: an instruction fetch, or an access during event delivery
    /// or by a guest-physical address (type in the qualification's bits 15:12).
    Other { kind: u8, offset: u32 },
}

impl ApicAccess {
    pub const fn decode(q: u64) -> Self {
        let offset = (q & 0xfff) as u32;
        match (q >> 12) & 0xf {
            0 => ApicAccess::Read { offset },
            1 => ApicAccess::Write { offset },
            kind => ApicAccess::Other { kind: kind as u8, offset },
        }
    }
}

/// VM-exit / IDT-vectoring / VM-entry interruption information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo(pub u32);

pub mod interruption_type {
    pub const EXTERNAL_INTERRUPT: u8 = 0;
    pub const NMI: u8 = 2;
    pub const HARDWARE_EXCEPTION: u8 = 3;
    pub const SOFTWARE_INTERRUPT: u8 = 4;
    pub const PRIVILEGED_SOFTWARE_EXCEPTION: u8 = 5;
    pub const SOFTWARE_EXCEPTION: u8 = 6;
}

impl InterruptionInfo {
    pub const fn is_valid(self) -> bool {
        self.0 & (1 << 31) != 0
    }
    pub const fn vector(self) -> u8 {
        self.0 as u8
    }
    pub const fn kind(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    pub const fn has_error_code(self) -> bool {
        self.0 & (1 << 11) != 0
    }

    /// Information for injecting `vector` of `kind` at VM entry.
    pub const fn inject(vector: u8, kind: u8, error_code: bool) -> Self {
        InterruptionInfo((1 << 31) | ((error_code as u32) << 11) | ((kind as u32) << 8) | vector as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reason_splits_basic_reason_and_entry_failure() {
        let r = ExitReason(0x8000_0021);
        assert!(r.is_entry_failure());
        assert_eq!(r.basic(), reason::INVALID_GUEST_STATE);
        assert_eq!(r.name(), "invalid-guest-state");
        assert_eq!(ExitReason(30).name(), "io");
        assert_eq!(ExitReason(999).name(), "other");
    }

    #[test]
    fn io_qualification_decodes() {
        // rep outsb to port 0x3f8
        let q = IoQualification::decode((0x3f8 << 16) | (1 << 5) | (1 << 4));
        assert_eq!(q, IoQualification { size: 1, is_in: false, is_string: true, has_rep: true, port: 0x3f8 });
        // in eax, dx with dx = 0xcfc
        let q = IoQualification::decode((0xcfc << 16) | (1 << 3) | 3);
        assert_eq!((q.size, q.is_in, q.port), (4, true, 0xcfc));
    }

    #[test]
    fn cr_access_decodes() {
        assert_eq!(CrAccess::decode(0x0300), CrAccess::MovToCr { cr: 0, gpr: 3 });
        assert_eq!(CrAccess::decode(0x0b14), CrAccess::MovFromCr { cr: 4, gpr: 11 });
        assert_eq!(CrAccess::decode(0x20), CrAccess::Clts);
        assert_eq!(CrAccess::decode(0x0011_0030), CrAccess::Lmsw { source: 0x11 });
    }

    #[test]
    fn ept_violation_decodes() {
        let v = EptViolation::decode(0x2 | 0x80);
        assert!(v.write && !v.read && !v.fetch && v.linear_address_valid && !v.was_mapped());
        assert!(EptViolation::decode(0x1 | 0x8 | 0x20).was_mapped());
    }

    #[test]
    fn apic_access_decodes() {
        assert_eq!(ApicAccess::decode(0x390), ApicAccess::Read { offset: 0x390 });
        assert_eq!(ApicAccess::decode(0x10b0), ApicAccess::Write { offset: 0xb0 });
        assert_eq!(ApicAccess::decode(0x3080), ApicAccess::Other { kind: 3, offset: 0x80 });
    }

    #[test]
    fn interruption_info_round_trips() {
        let gp = InterruptionInfo::inject(13, interruption_type::HARDWARE_EXCEPTION, true);
        assert_eq!(gp.0, 0x8000_0b0d);
        assert!(gp.is_valid() && gp.has_error_code());
        assert_eq!((gp.vector(), gp.kind()), (13, 3));
    }
}
