//! HLT. With interrupts disabled nothing can wake the guest (Basalt has no virtual
//! interrupt sources yet), so the VM stops; otherwise the vCPU waits in the HLT
//! activity state until an event or its time limit.

use super::{skip_instruction, write, Outcome};
use crate::vmm::vcpu::read;
use crate::vmm::vm::Stop;
use vmx::vmcs;

const RFLAGS_IF: u64 = 1 << 9;
const ACTIVITY_HLT: u64 = 1;

pub fn handle() -> Outcome {
    if read(vmcs::GUEST_RFLAGS) & RFLAGS_IF == 0 {
        return Outcome::Stop(Stop::Halted);
    }
    skip_instruction();
    write(vmcs::GUEST_ACTIVITY_STATE, ACTIVITY_HLT);
    Outcome::Resume
}
