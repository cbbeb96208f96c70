//! One value per thing a guest did that its CPU handed to the VMM, with the
//! details each back end decodes from its own exit information.

use alloc::string::String;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Cpuid,
    Hlt,
    /// IN, OUT, INS or OUTS.
    Io(PortIo),
    /// An access to guest-physical memory that is not RAM (EPT violation,
    /// nested page fault, or an APIC access the CPU did not virtualise). The
    /// instruction has not run; `fetch` says it was an instruction fetch.
    DeviceMemory {
        address: u64,
        fetch: bool,
    },
    /// APIC-register virtualisation: the guest wrote `value` to the local APIC
    /// register at `offset` and the instruction is done; the model acts on it.
    ApicWrite {
        offset: u32,
        value: u32,
    },
    /// Virtual-interrupt delivery: the guest ended the interrupt `vector`,
    /// one the VMM asked to hear about (level-triggered), and the CPU has
    /// already taken it out of service.
    VirtualEoi {
        vector: u8,
    },
    Rdmsr,
    Wrmsr,
    /// MOV to or from a control register, CLTS or LMSW.
    Cr(CrAccess),
    Xsetbv,
    /// WBINVD or INVD.
    CacheFlush,
    /// VMCALL or VMMCALL.
    Hypercall,
    /// A host interrupt arrived while the guest ran.
    HostInterrupt,
    /// An NMI arrived while the guest ran.
    HostNmi,
    /// A guest exception Basalt intercepts (#DB, #AC), not yet delivered.
    Exception {
        vector: u8,
        error_code: Option<u32>,
    },
    /// The guest can take an interrupt now (a window the VMM asked for).
    InterruptWindow,
    /// The guest can take an NMI now.
    NmiWindow,
    /// The VMM's timer for this vCPU expired (a device deadline or the time
    /// limit): the run loop looks at both before the next entry.
    Timer,
    /// The guest lowered its TPR below the threshold the VMM set: a held-back
    /// interrupt can go in at the next entry.
    TprBelowThreshold,
    /// Triple fault (shutdown).
    Shutdown,
    /// An instruction the guest's CPU does not have (virtualisation, SMX,
    /// MONITOR/MWAIT): #UD.
    UndefinedInstruction,
    /// RDPMC: no performance counters are offered, #GP.
    Rdpmc,
    /// A PAUSE loop (VT-x's PAUSE-loop exiting, SVM's filtered PAUSE
    /// intercept): the guest spins waiting for another vCPU, which may be
    /// waiting for this vCPU's core.
    Pause,
    /// The CPU refused to enter the guest; says why.
    EntryFailed(String),
    /// An exit Basalt does not handle; names it.
    Unhandled(String),
}

/// A port access. Every field comes from the CPU's own decoding (VMX exit
/// qualification, SVM EXITINFO1), never from guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortIo {
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    pub is_in: bool,
    /// INS/OUTS: the data moves between the port and guest memory.
    pub string: Option<StringIo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringIo {
    pub rep: bool,
    /// Address size in bytes (2, 4 or 8): the width of RSI/RDI/RCX used.
    pub address_size: u8,
    /// OUTS reads through this segment (DS unless overridden); INS always
    /// writes through ES.
    pub segment: SegmentRegister,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentRegister {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

impl SegmentRegister {
    /// By the 3-bit encoding of instructions and exit information (0 = ES …
    /// 5 = GS); 6 and 7 do not name a segment.
    pub fn from_encoding(value: u8) -> Option<SegmentRegister> {
        use SegmentRegister::*;
        [Es, Cs, Ss, Ds, Fs, Gs].get(value as usize).copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccess {
    /// MOV to CRn from the register with encoding `gpr` (0 = RAX … 15 = R15).
    MovTo {
        cr: u8,
        gpr: u8,
    },
    MovFrom {
        cr: u8,
        gpr: u8,
    },
    Clts,
    /// LMSW with its 16-bit source operand.
    Lmsw {
        source: u16,
    },
    /// A write (or read) of CRn by an instruction the CPU did not decode (SVM
    /// without decode assists): the handler decodes it from guest memory.
    Undecoded {
        cr: u8,
        write: bool,
    },
}

impl Exit {
    /// Names of the kinds of exit, for counters and logs (`kind` indexes it).
    /// The same on both vendors, so one test expectation fits both.
    pub const KIND_NAMES: [&'static str; 25] = [
        "cpuid",
        "hlt",
        "io",
        "device-memory",
        "apic-write",
        "apic-eoi",
        "rdmsr",
        "wrmsr",
        "cr-access",
        "xsetbv",
        "cache-flush",
        "hypercall",
        "external-interrupt",
        "nmi",
        "exception",
        "interrupt-window",
        "nmi-window",
        "timer",
        "tpr-below-threshold",
        "shutdown",
        "undefined-instruction",
        "rdpmc",
        "pause",
        "entry-failed",
        "unhandled",
    ];
    pub const KINDS: usize = Self::KIND_NAMES.len();

    /// Which kind of exit this is: an index into `KIND_NAMES`.
    pub fn kind(&self) -> usize {
        match self {
            Exit::Cpuid => 0,
            Exit::Hlt => 1,
            Exit::Io(_) => 2,
            Exit::DeviceMemory { .. } => 3,
            Exit::ApicWrite { .. } => 4,
            Exit::VirtualEoi { .. } => 5,
            Exit::Rdmsr => 6,
            Exit::Wrmsr => 7,
            Exit::Cr(_) => 8,
            Exit::Xsetbv => 9,
            Exit::CacheFlush => 10,
            Exit::Hypercall => 11,
            Exit::HostInterrupt => 12,
            Exit::HostNmi => 13,
            Exit::Exception { .. } => 14,
            Exit::InterruptWindow => 15,
            Exit::NmiWindow => 16,
            Exit::Timer => 17,
            Exit::TprBelowThreshold => 18,
            Exit::Shutdown => 19,
            Exit::UndefinedInstruction => 20,
            Exit::Rdpmc => 21,
            Exit::Pause => 22,
            Exit::EntryFailed(_) => 23,
            Exit::Unhandled(_) => 24,
        }
    }

    pub fn name(&self) -> &'static str {
        Self::KIND_NAMES[self.kind()]
    }
}
