//! External interrupts, NMIs and exceptions that exit, and interrupt windows.

use super::Outcome;
use crate::vmm::vcpu::read;
use crate::vmm::vm::Stop;
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
    Outcome::Stop(Stop::Unsupported(alloc::format!("unexpected exception exit, vector {}", info.vector())))
}

/// Window exits are only requested when an interrupt is to be injected; Basalt has
/// no virtual interrupt sources yet, so one arriving is a VMM bug, reported per VM.
pub fn window(exit: vmx::ExitReason) -> Outcome {
    Outcome::Stop(Stop::Unsupported(alloc::format!("{} exit without a pending injection", exit.name())))
}
