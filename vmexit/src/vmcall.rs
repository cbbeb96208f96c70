//! VMCALL (Intel) / VMMCALL (AMD): Basalt's hypercall interface. RAX holds the call number, arguments go
//! in RBX, RCX, RDX; the result comes back in RAX. Only ring 0 may call (see below).
//!
//! | RAX | call | arguments | result |
//! | --- | --- | --- | --- |
//! | 0 | version | | 0x0001_0000 (major.minor in 16-bit halves) |
//! | 1 | print | RBX = guest-physical address, RCX = length (at most 256) | bytes printed, or u64::MAX if not all in RAM |
//! | 2 | exit | RBX = status | (does not return) |
//! | 3 | tsc-khz | | TSC frequency in kHz |
//! | 4 | raise-interrupt | RBX = vector (32-255) | 0, or u64::MAX for a bad vector |
//! | 5 | raise-nmi | | 0 |
//! | any other | | | `ENOSYS` (-1000) |
//!
//! From ring 1-3 every call returns `EPERM` (-1) and does nothing else.
//!
//! Calls 4 and 5 queue an event for the calling vCPU, delivered as soon as it
//! can take it (a self-interrupt; guests use them to test their handlers).
//!
//! Either instruction works on either vendor: the one the CPU does not have
//! raises #UD, which the back end intercepts where that can happen (SVM), and
//! `undefined_opcode` treats as the hypercall it was meant to be, as KVM does.
//!
//! Errors are KVM's numbers, negated in RAX as KVM returns them (-KVM_ENOSYS,
//! -KVM_EPERM), so a guest that probes with a number Basalt lacks, or a user
//! program that executes VMCALL, gets an answer it may already know, and the
//! instruction completes: neither ends the VM nor raises an exception.

use crate::{Host, Machine, Outcome, Stop, Vcpu, UD};

pub const VERSION: u64 = 0x0001_0000;
const PRINT_MAX: u64 = 256;
/// An unknown call number: -1000 (KVM_ENOSYS) in RAX.
pub const ENOSYS: u64 = (-1000i64) as u64;
/// A call from outside ring 0: -1 (KVM_EPERM) in RAX.
pub const EPERM: u64 = (-1i64) as u64;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RBX: u8 = 3;

/// VMCALL (0F 01 C1) and VMMCALL (0F 01 D9).
const HYPERCALLS: [[u8; 3]; 2] = [[0x0f, 0x01, 0xc1], [0x0f, 0x01, 0xd9]];

/// An intercepted #UD: the other vendor's hypercall instruction is a
/// hypercall; anything else gets its #UD.
pub fn undefined_opcode(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host) -> Outcome {
    let fetched = match crate::mmio::fetch_instruction(vcpu, vm) {
        Ok(fetched) => fetched,
        Err(e) => return crate::translation_failed(vcpu, e),
    };
    if fetched.len >= 3 && HYPERCALLS.iter().any(|h| fetched.bytes[..3] == *h) {
        vcpu.set_instruction_length(3);
        return handle(vcpu, vm, host);
    }
    // The start of a hypercall running into a page the guest cannot fetch
    // from now (another vCPU changed its tables): the guest's CPU would fault
    // there before it could tell the instruction apart, so that fault is the
    // guest's, not a #UD it would never have seen.
    if let Some(e) = fetched.beyond {
        if fetched.len < 3 && HYPERCALLS.iter().any(|h| fetched.bytes[..fetched.len] == h[..fetched.len]) {
            return crate::translation_failed(vcpu, e);
        }
    }
    vcpu.reflect_exception(UD, None);
    Outcome::Resume
}

/// The run loop's fast path for a VMCALL exit, before `dispatch`: a call
/// that leaves nothing for the loop's next round to do (version, print,
/// tsc-khz, a refused vector, an unknown number, any call from outside ring
/// 0) with RFLAGS.TF clear is done here as `handle` does it. Only print
/// needs the VM: without `vm` (the VM not locked) it is declined. Returns
/// whether the call was done; if not, nothing changed and the exit goes to
/// `dispatch`: exit stops the VM, raise-interrupt and raise-nmi queue an
/// event the next round delivers, and TF owes a #DB.
pub fn fast_hypercall(vcpu: &mut dyn Vcpu, vm: Option<&mut Machine>, host: &dyn Host) -> bool {
    let rflags = vcpu.rflags();
    if rflags & crate::vcpu::RFLAGS_TF != 0 || vcpu.instruction_length_unknown() {
        return false;
    }
    let ring_0 = vcpu.cpl() == 0;
    let (number, rbx) = (vcpu.gpr(RAX), vcpu.gpr(RBX));
    if ring_0 && !queues_nothing(number, rbx) {
        return false;
    }
    let result = match vm {
        _ if !ring_0 => EPERM,
        Some(vm) if number == 1 => print(vcpu, vm, rbx),
        None if number == 1 => return false,
        _ => result(vcpu, host, number, rbx),
    };
    vcpu.set_gpr(RAX, result);
    crate::debug::skip_untraced(vcpu, rflags);
    true
}

/// A call from ring 0 that neither stops the VM nor queues an event.
fn queues_nothing(number: u64, rbx: u64) -> bool {
    match number {
        2 | 5 => false,
        4 => !u8::try_from(rbx).is_ok_and(|vector| vector >= 32),
        _ => true,
    }
}

pub fn handle(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host) -> Outcome {
    let ring_0 = vcpu.cpl() == 0;
    let (number, rbx) = (vcpu.gpr(RAX), vcpu.gpr(RBX));
    if ring_0 && number == 2 {
        crate::debug::skip(vcpu);
        return Outcome::Stop(Stop::ExitHypercall { status: rbx });
    }
    call(vcpu, vm, host, ring_0, number, rbx);
    crate::debug::skip(vcpu);
    Outcome::Resume
}

/// Every call but exit (`number` from RAX, its argument in RBX): RAX gets
/// its result (EPERM outside ring 0).
fn call(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, ring_0: bool, number: u64, rbx: u64) {
    let result = if !ring_0 {
        // The interface is the kernel's: a user program only learns it may
        // not (as KVM answers), and nothing it passed is looked at.
        EPERM
    } else if number == 1 {
        print(vcpu, vm, rbx)
    } else {
        result(vcpu, host, number, rbx)
    };
    vcpu.set_gpr(RAX, result);
}

/// The result of a call from ring 0 other than exit and print.
fn result(vcpu: &mut dyn Vcpu, host: &dyn Host, number: u64, rbx: u64) -> u64 {
    match number {
        0 => VERSION,
        3 => host.tsc_hz() / 1000,
        4 => match u8::try_from(rbx) {
            Ok(vector) if vector >= 32 => {
                vcpu.pending().raise(vector);
                0
            }
            _ => u64::MAX,
        },
        5 => {
            vcpu.pending().nmi = true;
            0
        }
        _ => ENOSYS,
    }
}

/// Print: RCX bytes (at most 256) of guest memory at RBX to the console.
fn print(vcpu: &dyn Vcpu, vm: &mut Machine, address: u64) -> u64 {
    let len = vcpu.gpr(RCX).min(PRINT_MAX);
    let mut text = [0u8; PRINT_MAX as usize];
    match vm.memory.read(address, &mut text[..len as usize]) {
        Ok(()) => {
            (vm.console)(&text[..len as usize]);
            len
        }
        Err(_) => u64::MAX,
    }
}
