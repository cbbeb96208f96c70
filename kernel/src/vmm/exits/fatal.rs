//! Exits that end the VM: failed entries and reasons Basalt does not handle.

use super::Outcome;
use crate::vmm::vcpu::read;
use crate::vmm::vm::Stop;
use vmx::exit::reason;
use vmx::{vmcs, ExitReason};

pub fn entry_failure(exit: ExitReason) -> Outcome {
    let qualification = read(vmcs::EXIT_QUALIFICATION);
    let detail = match (exit.basic(), qualification) {
        (reason::INVALID_GUEST_STATE, 2) => "PDPTE loading failed",
        (reason::INVALID_GUEST_STATE, 3) => "NMI injection blocked",
        (reason::INVALID_GUEST_STATE, 4) => "invalid VMCS link pointer",
        (reason::INVALID_GUEST_STATE, _) => "a guest-state check failed",
        (reason::MSR_LOADING, n) => return stop(alloc::format!("MSR-load entry {n} was refused")),
        (reason::MACHINE_CHECK_DURING_ENTRY, _) => "machine check during VM entry",
        _ => "unknown entry failure",
    };
    stop(alloc::format!("{} ({detail}; RIP {:#x})", exit.name(), read(vmcs::GUEST_RIP)))
}

fn stop(why: alloc::string::String) -> Outcome {
    Outcome::Stop(Stop::InvalidGuestState(why))
}

pub fn unhandled(exit: ExitReason) -> Outcome {
    Outcome::Stop(Stop::Unsupported(alloc::format!(
        "{} exit (reason {}) at RIP {:#x}",
        exit.name(),
        exit.basic(),
        read(vmcs::GUEST_RIP)
    )))
}
