//! External interrupts, NMIs and exceptions that exit, and delivering events to
//! the guest: a pending interrupt or NMI is injected at VM entry when the guest
//! can take it; otherwise an interrupt- or NMI-window exit is requested, which
//! comes the moment it can.

use super::{write, Outcome};
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::{Stop, Vm};
use vmx::exit::{interruption_type, InterruptionInfo};
use vmx::vmcs;

/// A host interrupt arrived while the guest ran. It is still pending in the local
/// APIC (exits do not acknowledge it): open a short window so the host's handler
/// takes it, then go back to the guest.
pub fn external() -> Outcome {
    x86_64::instructions::interrupts::enable();
    x86_64::instructions::nop();
    x86_64::instructions::interrupts::disable();
    Outcome::Resume
}

/// NMIs exit (NMI exiting is on); Basalt sends NMIs only to stop CPUs during a
/// host crash. Guest exceptions are not intercepted, so any other exit here is
/// unexpected and ends the VM.
pub fn exception_or_nmi() -> Outcome {
    let info = InterruptionInfo(read(vmcs::EXIT_INTERRUPTION_INFO) as u32);
    if info.kind() == interruption_type::NMI {
        if crate::crash::in_progress() {
            crate::crash::stopped_by_other_cpu();
        }
        log::warn!("NMI while a guest ran; ignored");
        return Outcome::Resume;
    }
    match info.vector() {
        DB => pass_back_debug_exception(info),
        AC => {
            // #AC's error code is always 0.
            pass_back(info, Some(0));
        }
        vector => {
            return Outcome::Stop(Stop::Unsupported(alloc::format!("unexpected exception exit, vector {vector}")));
        }
    }
    Outcome::Resume
}

const DB: u8 = 1;
const AC: u8 = 17;

/// Delivers an intercepted exception to the guest as the CPU would have. An
/// event whose delivery it interrupted (re-injected by the dispatcher) gives
/// way: #DB and #AC are benign, so the CPU would deliver them first and the
/// interrupted instruction raises its event again when it is retried.
fn pass_back(info: InterruptionInfo, error_code: Option<u32>) {
    // ICEBP's #DB is a privileged software exception: it needs its length.
    let software = info.kind() == interruption_type::PRIVILEGED_SOFTWARE_EXCEPTION;
    let kind =
        if software { interruption_type::PRIVILEGED_SOFTWARE_EXCEPTION } else { interruption_type::HARDWARE_EXCEPTION };
    inject(InterruptionInfo::inject(info.vector(), kind, error_code.is_some()));
    if let Some(code) = error_code {
        write(vmcs::ENTRY_EXCEPTION_ERROR_CODE, code as u64);
    }
    if software {
        write(vmcs::ENTRY_INSTRUCTION_LENGTH, read(vmcs::EXIT_INSTRUCTION_LENGTH));
    }
    // The exception hit an IRET that had unblocked NMIs: the IRET did not
    // complete, so NMIs stay blocked, as they were.
    const NMI_UNBLOCKED_BY_IRET: u32 = 1 << 12;
    if info.0 & NMI_UNBLOCKED_BY_IRET != 0 {
        let state = read(vmcs::GUEST_INTERRUPTIBILITY);
        write(vmcs::GUEST_INTERRUPTIBILITY, state | BLOCKED_BY_NMI);
    }
}

/// A #DB that exited has not updated DR6 (the exit qualification holds what
/// it would have set); DR6 is the guest's while its vCPU is on the core.
fn pass_back_debug_exception(info: InterruptionInfo) {
    let pending = read(vmcs::EXIT_QUALIFICATION);
    let dr6: u64;
    // SAFETY: DR6 is a status register; the guest's value is in it while its
    // vCPU runs on this core (see vcpu::DebugState), and only the guest reads it.
    unsafe {
        core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack, preserves_flags));
        let dr6 = arch::control::dr6_after_debug_exception(dr6, pending);
        core::arch::asm!("mov dr6, {}", in(reg) dr6, options(nomem, nostack, preserves_flags));
    }
    pass_back(info, None);
}

const PROC_INTERRUPT_WINDOW_EXITING: u64 = 1 << 2;
const PROC_NMI_WINDOW_EXITING: u64 = 1 << 22;
const RFLAGS_IF: u64 = 1 << 9;
/// Interruptibility: blocking by STI, by MOV SS, by NMI.
const BLOCKED_BY_STI_OR_MOV_SS: u64 = 3;
const BLOCKED_BY_NMI: u64 = 1 << 3;
const ACTIVITY_ACTIVE: u64 = 0;

fn window_exiting(control: u64, on: bool) {
    let primary = read(vmcs::PRIMARY_PROCESSOR_CONTROLS);
    write(vmcs::PRIMARY_PROCESSOR_CONTROLS, if on { primary | control } else { primary & !control });
}

/// Called before every entry: injects one pending event if the guest can take it
/// now, or asks for the window exit that says when it can. Events come from the
/// VM's interrupt controllers and from the vCPU's own queue (hypercalls).
pub fn deliver_pending(vm: &mut Vm, vcpu: &mut Vcpu) {
    let index = vcpu.index as usize;
    if vm.chipset.take_nmi(index) {
        vcpu.pending.nmi = true;
    }
    let from_chipset = vm.chipset.has_interrupt(index);
    if !vcpu.pending.nmi && !vcpu.pending.has_interrupt() && !from_chipset {
        return;
    }
    // A handler may already be injecting an event; the rest wait for the window.
    if InterruptionInfo(read(vmcs::ENTRY_INTERRUPTION_INFO) as u32).is_valid() {
        window_exiting(PROC_INTERRUPT_WINDOW_EXITING, true);
        return;
    }
    let interruptibility = read(vmcs::GUEST_INTERRUPTIBILITY);
    if vcpu.pending.nmi {
        if interruptibility & (BLOCKED_BY_NMI | BLOCKED_BY_STI_OR_MOV_SS) == 0 {
            vcpu.pending.nmi = false;
            inject(InterruptionInfo::inject(2, interruption_type::NMI, false));
            return;
        }
        window_exiting(PROC_NMI_WINDOW_EXITING, true);
    }
    if vcpu.pending.has_interrupt() || from_chipset {
        let open = read(vmcs::GUEST_RFLAGS) & RFLAGS_IF != 0 && interruptibility & BLOCKED_BY_STI_OR_MOV_SS == 0;
        if open {
            let vector = vm.chipset.take_interrupt(index).or_else(|| vcpu.pending.take_highest());
            if let Some(vector) = vector {
                inject(InterruptionInfo::inject(vector, interruption_type::EXTERNAL_INTERRUPT, false));
            }
        } else {
            window_exiting(PROC_INTERRUPT_WINDOW_EXITING, true);
        }
    }
}

/// An exit that interrupted the delivery of an event (IDT-vectoring information
/// valid) must not lose it: it is injected again at the next entry.
pub fn reinject_interrupted_event() {
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

fn inject(info: InterruptionInfo) {
    write(vmcs::ENTRY_INTERRUPTION_INFO, info.0 as u64);
    // An event ends a HLT.
    write(vmcs::GUEST_ACTIVITY_STATE, ACTIVITY_ACTIVE);
}

/// The guest can take interrupts again: stop asking; the next entry injects.
pub fn interrupt_window() -> Outcome {
    window_exiting(PROC_INTERRUPT_WINDOW_EXITING, false);
    Outcome::Resume
}

/// NMIs are unblocked again (the guest's NMI handler returned).
pub fn nmi_window() -> Outcome {
    window_exiting(PROC_NMI_WINDOW_EXITING, false);
    Outcome::Resume
}
