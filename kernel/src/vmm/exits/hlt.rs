//! HLT. The vCPU waits in the HLT activity state: the run loop arms the
//! preemption timer for the VM's next timer event, and injecting an interrupt
//! ends the wait. With interrupts disabled only an NMI (or, for an application
//! processor, an INIT) can wake it: on vCPU 0 that ends the VM; an application
//! processor is parked in the VMM, as guests park CPUs before powering off.
//! (Parked outside the guest because Bochs does not let external interrupts
//! end a guest's HLT while its IF is clear, so the VMM could not reach it.)

use super::{skip_instruction, write, Outcome};
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::Stop;
use vmx::vmcs;

const RFLAGS_IF: u64 = 1 << 9;
const ACTIVITY_HLT: u64 = 1;

pub fn handle(vcpu: &mut Vcpu) -> Outcome {
    // Only an NMI wakes a CPU halted with interrupts off; without one on its way,
    // a VM whose bootstrap processor does that is over.
    if read(vmcs::GUEST_RFLAGS) & RFLAGS_IF == 0 && !vcpu.pending.nmi {
        if vcpu.index == 0 {
            return Outcome::Stop(Stop::Halted);
        }
        skip_instruction();
        return Outcome::Park;
    }
    skip_instruction();
    write(vmcs::GUEST_ACTIVITY_STATE, ACTIVITY_HLT);
    Outcome::Resume
}
