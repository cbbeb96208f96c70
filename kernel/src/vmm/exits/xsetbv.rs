//! XSETBV: the guest chooses its XCR0 among the components guests may enable
//! (`vmm::xstate`); anything the SDM or that list forbids is #GP in the guest,
//! never a value the host CPU would fault on. The value is loaded whenever this
//! vCPU runs.

use super::{inject_exception, skip_instruction, Outcome, GP};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::xstate;

pub fn handle(vcpu: &mut Vcpu) -> Outcome {
    let value = (vcpu.regs.rdx << 32) | (vcpu.regs.rax & 0xffff_ffff);
    let xcr = vcpu.regs.rcx as u32;
    if xcr != 0 || !arch::xstate::xcr0_valid(value, xstate::guest().allowed) {
        inject_exception(GP, Some(0));
        return Outcome::Resume;
    }
    // SAFETY: the value is a valid XCR0 within what this CPU supports.
    unsafe { core::arch::x86_64::_xsetbv(0, value) };
    vcpu.xcr0 = value;
    skip_instruction();
    Outcome::Resume
}
