//! The VM-exit dispatcher: every exit reason goes to exactly one handler, one
//! file per reason family. Handlers return what happens next; none of them can
//! stop anything but their own VM.

mod apic;
mod cache;
pub(super) mod cpuid;
mod cr;
mod fatal;
mod hlt;
mod interrupts;
mod io;
mod mmio;
mod msr;
mod timer;
mod vmcall;
mod xsetbv;

use super::vcpu::{read, Vcpu};
use super::vm::{Stop, Vm};
use arch::paging::{PageFault, WalkError};
use vmx::exit::{interruption_type, reason, InterruptionInfo};
use vmx::vmcs;
use vmx::ExitReason;

pub use interrupts::deliver_pending;

pub enum Outcome {
    Resume,
    /// An application processor halted with interrupts off: it waits in the
    /// VMM (not in the guest) for an NMI, INIT or the VM's end.
    Park,
    Stop(Stop),
}

pub fn dispatch(vm: &mut Vm, vcpu: &mut Vcpu, exit: ExitReason) -> Outcome {
    if exit.is_entry_failure() {
        return fatal::entry_failure(exit);
    }
    interrupts::reinject_interrupted_event();
    match exit.basic() {
        reason::CPUID => cpuid::handle(vcpu),
        reason::HLT => hlt::handle(vcpu),
        reason::IO_INSTRUCTION => io::handle(vm, vcpu),
        reason::EPT_VIOLATION => mmio::handle(vm, vcpu),
        reason::APIC_ACCESS => apic::access(vm, vcpu),
        reason::APIC_WRITE => apic::write(vm, vcpu),
        reason::TPR_BELOW_THRESHOLD => apic::tpr_below_threshold(),
        reason::RDMSR => msr::rdmsr(vm, vcpu),
        reason::WRMSR => msr::wrmsr(vm, vcpu),
        reason::CR_ACCESS => cr::handle(vm, vcpu),
        reason::XSETBV => xsetbv::handle(vcpu),
        reason::WBINVD => cache::wbinvd(),
        reason::INVD => cache::invd(),
        reason::VMCALL => vmcall::handle(vm, vcpu),
        reason::EXTERNAL_INTERRUPT => interrupts::external(),
        reason::EXCEPTION_OR_NMI => interrupts::exception_or_nmi(),
        reason::INTERRUPT_WINDOW => interrupts::interrupt_window(),
        reason::NMI_WINDOW => interrupts::nmi_window(),
        reason::PREEMPTION_TIMER => timer::handle(),
        reason::TRIPLE_FAULT => Outcome::Stop(Stop::TripleFault),
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
        | reason::MWAIT => {
            // VMX, SMX and MONITOR/MWAIT are hidden from guests (CPUID); their
            // instructions are undefined for them.
            inject_exception(UD, None);
            Outcome::Resume
        }
        reason::RDPMC => {
            // No performance counters are offered (CPUID leaf 0xA is empty).
            inject_exception(GP, Some(0));
            Outcome::Resume
        }
        _ => fatal::unhandled(exit),
    }
}

pub const UD: u8 = 6;
pub const GP: u8 = 13;
pub const PF: u8 = 14;

/// Moves the guest past the instruction that exited.
pub fn skip_instruction() {
    let length = read(vmcs::EXIT_INSTRUCTION_LENGTH);
    let rip = read(vmcs::GUEST_RIP);
    write(vmcs::GUEST_RIP, rip.wrapping_add(length));
    // Any STI / MOV SS blocking ends with the instruction.
    let interruptibility = read(vmcs::GUEST_INTERRUPTIBILITY);
    if interruptibility & 3 != 0 {
        write(vmcs::GUEST_INTERRUPTIBILITY, interruptibility & !3);
    }
}

/// Delivers a hardware exception to the guest at the next entry (the faulting
/// instruction is not skipped).
pub fn inject_exception(vector: u8, error_code: Option<u32>) {
    let info = InterruptionInfo::inject(vector, interruption_type::HARDWARE_EXCEPTION, error_code.is_some());
    write(vmcs::ENTRY_INTERRUPTION_INFO, info.0 as u64);
    if let Some(code) = error_code {
        write(vmcs::ENTRY_EXCEPTION_ERROR_CODE, code as u64);
    }
}

/// A page fault at `fault.linear`, as the guest's CPU raises it: CR2 holds the
/// address (the entry stub loads it from the saved registers), the error code
/// says why. The faulting instruction is not skipped.
pub fn inject_page_fault(vcpu: &mut Vcpu, fault: PageFault) {
    vcpu.regs.cr2 = fault.linear;
    inject_exception(PF, Some(fault.error_code));
}

/// What the guest gets when the VMM cannot follow one of its linear addresses:
/// the #PF or #GP its CPU would raise, or, for page tables outside its RAM
/// (where the CPU would take an EPT violation on the table itself), a stop.
pub fn translation_failed(vcpu: &mut Vcpu, error: WalkError) -> Outcome {
    match error {
        WalkError::PageFault(fault) => inject_page_fault(vcpu, fault),
        WalkError::NonCanonical { .. } => inject_exception(GP, Some(0)),
        WalkError::TableNotInMemory { physical } => {
            return Outcome::Stop(Stop::Unsupported(alloc::format!(
                "guest page-table entry at non-RAM guest-physical {physical:#x}"
            )));
        }
        WalkError::RangeTooLong { len } => {
            return Outcome::Stop(Stop::Unsupported(alloc::format!(
                "Basalt asked to translate {len} guest bytes at once (a Basalt bug)"
            )));
        }
    }
    Outcome::Resume
}

/// VMWRITE for handlers, which always run with the exiting vCPU's VMCS
/// current; a failure is logged with the field's name (see `vcpu::write`).
pub use super::vcpu::write;

/// A guest register by its instruction encoding (0 = RAX … 15 = R15). RSP
/// (4) lives in the VMCS, the others in the registers the exit stub saved.
pub fn gpr(vcpu: &Vcpu, index: u8) -> u64 {
    if index & 15 == 4 {
        read(vmcs::GUEST_RSP)
    } else {
        vcpu.regs.get(index)
    }
}

pub fn set_gpr(vcpu: &mut Vcpu, index: u8, value: u64) {
    if index & 15 == 4 {
        write(vmcs::GUEST_RSP, value);
    } else {
        vcpu.regs.set(index, value);
    }
}

/// The guest's privilege level (SS.DPL).
pub fn guest_cpl() -> u8 {
    ((read(vmcs::GUEST_SS_ACCESS_RIGHTS) >> 5) & 3) as u8
}
