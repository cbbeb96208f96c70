//! VMX exits as `vmexit::Exit` values: the decoding is `vmx::neutral`'s (pure,
//! host-tested); here the VMCS is read for it, and an event whose delivery the
//! exit interrupted is set up again for the next entry.

use super::vcpu::{read, write, Vcpu};
use vmexit::Exit;
use vmx::exit::InterruptionInfo;
use vmx::vmcs;

/// The exit that just happened, read from the current VMCS (decoded by
/// `vmx::neutral`, host-tested); unless the entry failed, an event the exit
/// interrupted goes in again at the next entry.
pub fn translate(vcpu: &Vcpu) -> Exit {
    let exit = vmx::neutral::translate(read, |offset| vcpu.virtual_apic_register(offset));
    if !matches!(exit, Exit::EntryFailed(_)) {
        reinject_interrupted_event();
    }
    exit
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
