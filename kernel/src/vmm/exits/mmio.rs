//! EPT violations, and (through `emulate`) local-APIC accesses that APIC
//! virtualisation leaves to the VMM. RAM is mapped in full, so a violation is an access outside it:
//! a device register (local APIC, IOAPIC, the chipset's MMIO bus) or nothing at
//! all. The instruction is fetched and decoded to learn the access; reads nobody claims return all-ones
//! and writes nobody claims are dropped (both counted by the bus). Executing from
//! such an address, or an instruction Basalt cannot emulate there, stops the VM.
//! The fetch follows the guest's page tables with its CPU's rules: bytes it
//! could not fetch (another vCPU changed the tables) are the guest's #PF.

use super::io::act_on;
use super::{gpr, inject_exception, set_gpr, translation_failed, write, Outcome, UD};
use crate::vmm::guest_paging;
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::{Stop, Vm};
use arch::decode::{self, Access, CodeSize};
use arch::paging::{AccessKind, WalkError};
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
    let fetched = match fetch_instruction(vm) {
        Ok(f) if f.len > 0 => f,
        Ok(_) => {
            return unsupported(alloc::format!(
                "cannot fetch the instruction at RIP {rip:#x} that accessed {address:#x}"
            ))
        }
        Err(e) => return translation_failed(vcpu, e),
    };
    let decoded = match (decode::decode(&fetched.bytes[..fetched.len], code_size()), fetched.beyond) {
        (Ok(d), _) => d,
        // The instruction runs on into a page the guest's CPU cannot fetch from.
        (Err(decode::DecodeError::Truncated), Some(e)) => return translation_failed(vcpu, e),
        // Bytes the CPU refuses (LOCK MOV, C6/C7 /1-/7) cannot have made this
        // access as they stand (another vCPU may have rewritten them since):
        // the guest gets the #UD its CPU would raise.
        (Err(decode::DecodeError::Invalid), _) => {
            inject_exception(UD, None);
            return Outcome::Resume;
        }
        (Err(e), _) => {
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

/// The bytes at CS:RIP, fetched as the guest's CPU would fetch them.
struct Fetched {
    bytes: [u8; 15],
    /// How many of `bytes` were read: fewer than 15 at the end of guest RAM or
    /// before a page the guest cannot execute from.
    len: usize,
    /// Why the bytes after `len` could not be fetched, when the guest's CPU
    /// would fault there: only if the instruction turns out to need them.
    beyond: Option<WalkError>,
}

/// An execute access at the guest's privilege level. A failure on the first
/// byte means the guest's tables no longer map the instruction that just ran
/// (another vCPU changed them): the caller raises what the CPU would.
fn fetch_instruction(vm: &Vm) -> Result<Fetched, WalkError> {
    const MAX: usize = 15;
    let linear = read(vmcs::GUEST_CS_BASE).wrapping_add(read(vmcs::GUEST_RIP));
    let in_first_page = (0x1000 - (linear & 0xfff) as usize).min(MAX);
    let translation = guest_paging::Translation::current(AccessKind::Execute);
    let (pieces, beyond) = match translation.range(&vm.memory, linear, MAX) {
        Ok(pieces) => (pieces, None),
        // The instruction may end before the page that failed.
        Err(e) => (translation.range(&vm.memory, linear, in_first_page)?, Some(e)),
    };
    let mut fetched = Fetched { bytes: [0; MAX], len: 0, beyond };
    for piece in pieces.as_slice() {
        let to = &mut fetched.bytes[fetched.len..fetched.len + piece.len];
        if vm.memory.read(piece.physical, to).is_err() {
            // Not RAM: what is there is not fetched (below, "cannot emulate").
            fetched.beyond = None;
            break;
        }
        fetched.len += piece.len;
    }
    Ok(fetched)
}
