//! EPT violations, and (through `emulate`) local-APIC accesses that APIC
//! virtualisation leaves to the VMM. RAM is mapped in full, so a violation is an access outside it:
//! a device register (local APIC, IOAPIC, the chipset's MMIO bus) or nothing at
//! all. The instruction is fetched and decoded to learn the access; reads nobody claims return all-ones
//! and writes nobody claims are dropped (both counted by the bus). Executing from
//! such an address, or an instruction Basalt cannot emulate there, stops the VM.

use super::io::act_on;
use super::{gpr, inject_exception, set_gpr, write, Outcome, UD};
use crate::vmm::guest_paging;
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::{Stop, Vm};
use vmx::decode::{self, Access, CodeSize};
use vmx::exit::EptViolation;
use vmx::guest_state::EFER_LMA;
use vmx::vmcs;

pub fn handle(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    let violation = EptViolation::decode(read(vmcs::EXIT_QUALIFICATION));
    let address = read(vmcs::GUEST_PHYSICAL_ADDRESS);
    let rip = read(vmcs::GUEST_RIP);
    if violation.fetch {
        return unsupported(alloc::format!(
            "instruction fetch from unmapped guest-physical {address:#x} (RIP {rip:#x})"
        ));
    }
    emulate(vm, vcpu, address)
}

/// Emulates the instruction at RIP, which accesses device memory at `address`
/// and has not executed: fetch, decode, do the access on the chipset, step RIP.
pub fn emulate(vm: &mut Vm, vcpu: &mut Vcpu, address: u64) -> Outcome {
    let rip = read(vmcs::GUEST_RIP);
    let Some((instruction, fetched)) = fetch_instruction(vm) else {
        return unsupported(alloc::format!("cannot fetch the instruction at RIP {rip:#x} that accessed {address:#x}"));
    };
    let decoded = match decode::decode(&instruction[..fetched], code_size()) {
        Ok(d) => d,
        // Bytes the CPU refuses (LOCK MOV, C6/C7 /1-/7) cannot have made this
        // access as they stand (another vCPU may have rewritten them since):
        // the guest gets the #UD its CPU would raise.
        Err(decode::DecodeError::Invalid) => {
            inject_exception(UD, None);
            return Outcome::Resume;
        }
        Err(e) => {
            return unsupported(alloc::format!(
                "MMIO access to {address:#x} by an instruction Basalt cannot emulate ({e:?}) at RIP {rip:#x}"
            ));
        }
    };
    let size_mask = devices::bus::all_ones(decoded.size);
    let now = crate::time::rdtsc();
    let written = match decoded.access {
        Access::Read { dest, width } => {
            let value = vm.chipset.mmio_read(vcpu.index as usize, address, decoded.size, now) & size_mask;
            let old = gpr(vcpu, dest.index);
            set_gpr(vcpu, dest.index, decode::merge_register(old, value, width, dest.high_byte));
            None
        }
        Access::WriteRegister { source } => {
            let register = gpr(vcpu, source.index);
            Some(if source.high_byte { register >> 8 } else { register })
        }
        Access::WriteImmediate { value } => Some(value),
    };
    let request = written.and_then(|value| {
        vm.chipset.mmio_write(vcpu.index as usize, address, decoded.size, value & size_mask, now, &mut vm.memory)
    });
    for (slot, device, why) in vm.chipset.take_broken() {
        log::warn!("vm {}: {device} in virtio slot {slot} is broken until the guest resets it: {why}", vm.name);
    }
    // The exit's instruction length is undefined for EPT violations (and
    // read-only): step RIP by the decoder's length.
    write(vmcs::GUEST_RIP, rip.wrapping_add(decoded.length as u64));
    match request {
        Some(r) => act_on(r, vm, vcpu),
        None => Outcome::Resume,
    }
}

fn unsupported(what: alloc::string::String) -> Outcome {
    Outcome::Stop(Stop::Unsupported(what))
}

fn code_size() -> CodeSize {
    let cs_rights = read(vmcs::GUEST_CS_ACCESS_RIGHTS);
    if read(vmcs::GUEST_IA32_EFER) & EFER_LMA != 0 && cs_rights & (1 << 13) != 0 {
        CodeSize::Bits64
    } else if read(vmcs::GUEST_CR0) & 1 != 0 && cs_rights & (1 << 14) != 0 {
        CodeSize::Bits32
    } else {
        CodeSize::Bits16
    }
}

/// Up to 15 bytes at CS:RIP and how many could be read (fewer at the end of
/// guest RAM or before an unmapped page; the decoder reports it if it needed more).
fn fetch_instruction(vm: &Vm) -> Option<([u8; 15], usize)> {
    let linear = read(vmcs::GUEST_CS_BASE).wrapping_add(read(vmcs::GUEST_RIP));
    let mut bytes = [0u8; 15];
    let mut fetched = 0;
    for byte in bytes.iter_mut() {
        let Some(physical) = guest_paging::translate(&vm.memory, linear + fetched as u64) else { break };
        let mut one = [0u8];
        if vm.memory.read(physical, &mut one).is_err() {
            break;
        }
        *byte = one[0];
        fetched += 1;
    }
    (fetched > 0).then_some((bytes, fetched))
}
