//! VMX exits as `vmexit::Exit` values: the exit reason with its qualification
//! and instruction information decoded, and an event whose delivery the exit
//! interrupted set up again for the next entry.

use super::vcpu::{read, write, Vcpu};
use devices::layout::LAPIC_BASE;
use vmexit::{CrAccess, Exit, PortIo, SegmentRegister, StringIo};
use vmx::exit::{reason, ApicAccess, EptViolation, InterruptionInfo, IoQualification};
use vmx::{vmcs, ExitReason};

/// The exit that just happened, read from the current VMCS.
pub fn translate(vcpu: &Vcpu) -> Exit {
    let exit = ExitReason(read(vmcs::EXIT_REASON) as u32);
    if exit.is_entry_failure() {
        return Exit::EntryFailed(entry_failure(exit));
    }
    reinject_interrupted_event();
    match exit.basic() {
        reason::CPUID => Exit::Cpuid,
        reason::HLT => Exit::Hlt,
        reason::IO_INSTRUCTION => Exit::Io(port_io()),
        reason::EPT_VIOLATION => {
            let violation = EptViolation::decode(read(vmcs::EXIT_QUALIFICATION));
            Exit::DeviceMemory { address: read(vmcs::GUEST_PHYSICAL_ADDRESS), fetch: violation.fetch }
        }
        reason::APIC_ACCESS => match ApicAccess::decode(read(vmcs::EXIT_QUALIFICATION)) {
            // Fault-like: emulated like any device access (the current count,
            // PPR, unaligned or wide accesses end up here).
            ApicAccess::Read { offset } | ApicAccess::Write { offset } => {
                Exit::DeviceMemory { address: LAPIC_BASE + offset as u64, fetch: false }
            }
            ApicAccess::Other { kind, offset } => Exit::Unhandled(alloc::format!(
                "local APIC access of type {kind} at offset {offset:#x} (not by an instruction's data access)"
            )),
        },
        reason::APIC_WRITE => {
            // Trap-like: the write is done (the value is in the page) and RIP is past it.
            let offset = read(vmcs::EXIT_QUALIFICATION) as u32 & 0xff0;
            match vcpu.virtual_apic_register(offset) {
                Some(value) => Exit::ApicWrite { offset, value },
                None => Exit::Unhandled("APIC-write exit without a virtual-APIC page".into()),
            }
        }
        reason::TPR_BELOW_THRESHOLD => Exit::TprBelowThreshold,
        reason::RDMSR => Exit::Rdmsr,
        reason::WRMSR => Exit::Wrmsr,
        reason::CR_ACCESS => Exit::Cr(match vmx::exit::CrAccess::decode(read(vmcs::EXIT_QUALIFICATION)) {
            vmx::exit::CrAccess::MovToCr { cr, gpr } => CrAccess::MovTo { cr, gpr },
            vmx::exit::CrAccess::MovFromCr { cr, gpr } => CrAccess::MovFrom { cr, gpr },
            vmx::exit::CrAccess::Clts => CrAccess::Clts,
            vmx::exit::CrAccess::Lmsw { source } => CrAccess::Lmsw { source },
        }),
        reason::XSETBV => Exit::Xsetbv,
        reason::WBINVD | reason::INVD => Exit::CacheFlush,
        reason::VMCALL => Exit::Hypercall,
        reason::EXTERNAL_INTERRUPT => Exit::HostInterrupt,
        reason::EXCEPTION_OR_NMI => {
            let info = InterruptionInfo(read(vmcs::EXIT_INTERRUPTION_INFO) as u32);
            if info.kind() == vmx::exit::interruption_type::NMI {
                Exit::HostNmi
            } else {
                let error_code = info.has_error_code().then(|| read(vmcs::EXIT_INTERRUPTION_ERROR_CODE) as u32);
                Exit::Exception { vector: info.vector(), error_code }
            }
        }
        reason::INTERRUPT_WINDOW => Exit::InterruptWindow,
        reason::NMI_WINDOW => Exit::NmiWindow,
        reason::PREEMPTION_TIMER => Exit::Timer,
        reason::TRIPLE_FAULT => Exit::Shutdown,
        reason::VMCLEAR
        | reason::VMLAUNCH
        | reason::VMPTRLD
        | reason::VMPTRST
        | reason::VMREAD
        | reason::VMRESUME
        | reason::VMWRITE
        | reason::VMXOFF
        | reason::VMXON
        | reason::INVEPT
        | reason::INVVPID
        | reason::VMFUNC
        | reason::GETSEC
        | reason::MONITOR
        | reason::MWAIT => Exit::UndefinedInstruction,
        reason::RDPMC => Exit::Rdpmc,
        _ => Exit::Unhandled(alloc::format!("{} (VMX reason {})", exit.name(), exit.basic())),
    }
}

fn port_io() -> PortIo {
    let q = IoQualification::decode(read(vmcs::EXIT_QUALIFICATION));
    let string = q.is_string.then(|| {
        // Instruction information: address size in bits 9:7, segment in 17:15 (OUTS).
        let info = read(vmcs::EXIT_INSTRUCTION_INFO);
        let address_size = match (info >> 7) & 7 {
            0 => 2,
            1 => 4,
            _ => 8,
        };
        let segment = SegmentRegister::from_encoding(((info >> 15) & 7) as u8).unwrap_or(SegmentRegister::Ds);
        StringIo { rep: q.has_rep, address_size, segment }
    });
    PortIo { port: q.port, size: q.size, is_in: q.is_in, string }
}

fn entry_failure(exit: ExitReason) -> alloc::string::String {
    let qualification = read(vmcs::EXIT_QUALIFICATION);
    let detail = match (exit.basic(), qualification) {
        (reason::INVALID_GUEST_STATE, 2) => "PDPTE loading failed",
        (reason::INVALID_GUEST_STATE, 3) => "NMI injection blocked",
        (reason::INVALID_GUEST_STATE, 4) => "invalid VMCS link pointer",
        (reason::INVALID_GUEST_STATE, _) => "a guest-state check failed",
        (reason::MSR_LOADING, n) => return alloc::format!("MSR-load entry {n} was refused"),
        (reason::MACHINE_CHECK_DURING_ENTRY, _) => "machine check during VM entry",
        _ => "unknown entry failure",
    };
    alloc::format!("{} ({detail}; RIP {:#x})", exit.name(), read(vmcs::GUEST_RIP))
}

/// An exit that interrupted the delivery of an event (IDT-vectoring information
/// valid) must not lose it: it is injected again at the next entry.
fn reinject_interrupted_event() {
    let info = InterruptionInfo(read(vmcs::IDT_VECTORING_INFO) as u32);
    if !info.is_valid() {
        return;
    }
    // Bit 12 is undefined in vectoring information and reserved at entry.
    write(vmcs::ENTRY_INTERRUPTION_INFO, (info.0 & !(1 << 12)) as u64);
    if info.0 & (1 << 11) != 0 {
        write(vmcs::ENTRY_EXCEPTION_ERROR_CODE, read(vmcs::IDT_VECTORING_ERROR_CODE));
    }
    write(vmcs::ENTRY_INSTRUCTION_LENGTH, read(vmcs::EXIT_INSTRUCTION_LENGTH));
}
