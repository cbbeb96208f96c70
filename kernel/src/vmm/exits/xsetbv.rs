//! XSETBV: the guest chooses its XCR0 within what the host CPU supports; the
//! value is loaded whenever this vCPU runs.

use super::{inject_exception, skip_instruction, Outcome, GP};
use crate::vmm::vcpu::Vcpu;
use core::arch::x86_64::__cpuid_count;

pub fn handle(vcpu: &mut Vcpu) -> Outcome {
    let value = (vcpu.regs.rdx << 32) | (vcpu.regs.rax & 0xffff_ffff);
    // Leaf 0xD exists when XSAVE does, which an XSETBV exit implies.
    let leaf = __cpuid_count(0xd, 0);
    let supported = (((leaf.edx as u64) << 32) | leaf.eax as u64) & !super::cpuid::HIDDEN_XSTATE;
    const X87: u64 = 1;
    const SSE: u64 = 2;
    const AVX: u64 = 4;
    let valid = vcpu.regs.rcx as u32 == 0
        && value & X87 != 0
        && value & !supported == 0
        && (value & AVX == 0 || value & SSE != 0);
    if !valid {
        inject_exception(GP, Some(0));
        return Outcome::Resume;
    }
    // SAFETY: the value was checked against what the CPU supports.
    unsafe { core::arch::x86_64::_xsetbv(0, value) };
    vcpu.xcr0 = value;
    skip_instruction();
    Outcome::Resume
}
