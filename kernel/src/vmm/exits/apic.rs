//! Exits of APIC virtualisation (see `cpu::APIC_VIRTUALIZATION`): a register
//! write the CPU put in the virtual-APIC page but the model must act on, an
//! access it did not virtualise, and the guest lowering its TPR past the
//! threshold. The page itself is kept current around every exit in vcpu.rs.

use super::io::act_on;
use super::{mmio, Outcome};
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::{Stop, Vm};
use devices::layout::LAPIC_BASE;
use vmx::exit::ApicAccess;
use vmx::vmcs;

/// Trap-like: the write is done (the value is in the page) and RIP is past it.
pub fn write(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    let offset = read(vmcs::EXIT_QUALIFICATION) as u32 & 0xff0;
    let Some(value) = vcpu.virtual_apic_register(offset) else {
        return Outcome::Stop(Stop::Unsupported("APIC-write exit without a virtual-APIC page".into()));
    };
    let now = crate::time::rdtsc();
    let address = LAPIC_BASE + offset as u64;
    match vm.chipset.mmio_write(vcpu.index as usize, address, 4, value as u64, now, &mut vm.memory) {
        Some(request) => act_on(request, vm, vcpu),
        None => Outcome::Resume,
    }
}

/// Fault-like: emulated like any device access (the current count, PPR,
/// unaligned or wide accesses end up here).
pub fn access(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    match ApicAccess::decode(read(vmcs::EXIT_QUALIFICATION)) {
        ApicAccess::Read { offset } | ApicAccess::Write { offset } => {
            mmio::emulate(vm, vcpu, LAPIC_BASE + offset as u64)
        }
        ApicAccess::Other { kind, offset } => Outcome::Stop(Stop::Unsupported(alloc::format!(
            "local APIC access of type {kind} at offset {offset:#x} (not by an instruction's data access) at RIP {:#x}",
            read(vmcs::GUEST_RIP)
        ))),
    }
}

/// Trap-like: the TPR the guest lowered was taken in on exit, so the interrupt
/// it held back is delivered at the next entry.
pub fn tpr_below_threshold() -> Outcome {
    Outcome::Resume
}
