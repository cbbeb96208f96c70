//! VMCALL: Basalt's hypercall interface. RAX holds the call number, arguments go
//! in RBX, RCX, RDX; the result comes back in RAX. Only ring 0 may call.
//!
//! | RAX | call | arguments | result |
//! | --- | --- | --- | --- |
//! | 0 | version | | 0x0001_0000 (major.minor in 16-bit halves) |
//! | 1 | print | RBX = guest-physical address, RCX = length (at most 256) | bytes printed |
//! | 2 | exit | RBX = status | (does not return) |
//! | 3 | tsc-khz | | TSC frequency in kHz |
//! | 4 | raise-interrupt | RBX = vector (32-255) | 0, or u64::MAX for a bad vector |
//! | 5 | raise-nmi | | 0 |
//!
//! Calls 4 and 5 queue an event for the calling vCPU, delivered as soon as it
//! can take it (a self-interrupt; guests use them to test their handlers).
//!
//! Any other number stops the VM: a guest that does not know the interface is
//! stopped rather than left to guess.

use super::{guest_cpl, inject_exception, skip_instruction, Outcome, UD};
use crate::vmm::vcpu::Vcpu;
use crate::vmm::vm::{Stop, Vm};

pub const VERSION: u64 = 0x0001_0000;
const PRINT_MAX: u64 = 256;

pub fn handle(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    if guest_cpl() != 0 {
        inject_exception(UD, None);
        return Outcome::Resume;
    }
    let result = match vcpu.regs.rax {
        0 => VERSION,
        1 => {
            let len = vcpu.regs.rcx.min(PRINT_MAX);
            let mut text = [0u8; PRINT_MAX as usize];
            match vm.memory.read(vcpu.regs.rbx, &mut text[..len as usize]) {
                Ok(()) => {
                    vm.output.line(format_args!("vm {}", vm.name), &text[..len as usize]);
                    len
                }
                Err(_) => u64::MAX,
            }
        }
        2 => {
            skip_instruction();
            return Outcome::Stop(Stop::ExitHypercall { status: vcpu.regs.rbx });
        }
        3 => crate::time::tsc_hz() / 1000,
        4 => match u8::try_from(vcpu.regs.rbx) {
            Ok(vector) if vector >= 32 => {
                vcpu.pending.raise(vector);
                0
            }
            _ => u64::MAX,
        },
        5 => {
            vcpu.pending.nmi = true;
            0
        }
        number => return Outcome::Stop(Stop::UnknownHypercall { number }),
    };
    vcpu.regs.rax = result;
    skip_instruction();
    Outcome::Resume
}
