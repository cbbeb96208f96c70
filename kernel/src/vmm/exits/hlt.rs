//! HLT. With interrupts disabled nothing can wake the guest, so the VM stops;
//! otherwise the vCPU waits in the HLT activity state. The run loop arms the
//! preemption timer for the VM's next timer event, and injecting an interrupt
//! ends the wait.

use super::{skip_instruction, write, Outcome};
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::Stop;
use vmx::vmcs;

const RFLAGS_IF: u64 = 1 << 9;
const ACTIVITY_HLT: u64 = 1;

pub fn handle(vcpu: &mut Vcpu) -> Outcome {
    // Only an NMI wakes a CPU halted with interrupts off; without one on its way,
    // the VM is over.
    if read(vmcs::GUEST_RFLAGS) & RFLAGS_IF == 0 && !vcpu.pending.nmi {
        return Outcome::Stop(Stop::Halted);
    }
    skip_instruction();
    write(vmcs::GUEST_ACTIVITY_STATE, ACTIVITY_HLT);
    Outcome::Resume
}
