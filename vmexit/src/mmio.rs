//! Accesses to guest-physical memory that is not RAM: a device register (local
//! APIC, IOAPIC, the chipset's MMIO bus) or nothing at all. The instruction is
//! fetched and decoded to learn the access; reads nobody claims return all-ones
//! and writes nobody claims are dropped (both counted by the bus). Executing
//! from such an address, or an instruction Basalt cannot emulate there, stops
//! the VM. The fetch follows the guest's page tables with its CPU's rules:
//! bytes it could not fetch (another vCPU changed the tables) are the guest's #PF.

use crate::io::act_on;
use crate::{access_rights, translation_failed, Host, Machine, Outcome, Stop, Vcpu, UD};
use arch::decode::{self, Access as Operand};
use arch::paging::{self, AccessKind, WalkError};
use devices::layout::LAPIC_BASE;

pub fn handle(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, address: u64, fetch: bool) -> Outcome {
    if fetch {
        return unsupported(alloc::format!(
            "instruction fetch from unmapped guest-physical {address:#x} (RIP {:#x})",
            vcpu.rip()
        ));
    }
    emulate(vcpu, vm, host, address)
}

/// APIC-register virtualisation wrote `value` to the register at `offset` in
/// the virtual-APIC page and moved past the instruction: the model acts on it.
pub fn apic_write(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, offset: u32, value: u32) -> Outcome {
    let address = LAPIC_BASE + (offset & 0xff0) as u64;
    match vm.chipset.mmio_write(vcpu.index(), address, 4, value as u64, host.now(), &mut *vm.memory) {
        Some(request) => act_on(request),
        None => Outcome::Resume,
    }
}

/// Emulates the instruction at RIP, which accesses device memory at `address`
/// and has not executed: fetch, decode, do the access on the chipset, step RIP.
pub fn emulate(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, address: u64) -> Outcome {
    let rip = vcpu.rip();
    let fetched = match fetch_instruction(vcpu, vm) {
        Ok(f) if f.len > 0 => f,
        Ok(_) => {
            return unsupported(alloc::format!(
                "cannot fetch the instruction at RIP {rip:#x} that accessed {address:#x}"
            ))
        }
        Err(e) => return translation_failed(vcpu, e),
    };
    let decoded = match (decode::decode(&fetched.bytes[..fetched.len], vcpu.code_size()), fetched.beyond) {
        (Ok(d), _) => d,
        // The instruction runs on into a page the guest's CPU cannot fetch from.
        (Err(decode::DecodeError::Truncated), Some(e)) => return translation_failed(vcpu, e),
        // Bytes the CPU refuses (LOCK MOV, C6/C7 /1-/7) cannot have made this
        // access as they stand (another vCPU may have rewritten them since):
        // the guest gets the #UD its CPU would raise.
        (Err(decode::DecodeError::Invalid), _) => {
            vcpu.inject_exception(UD, None);
            return Outcome::Resume;
        }
        (Err(e), _) => {
            return unsupported(alloc::format!(
                "MMIO access to {address:#x} by an instruction Basalt cannot emulate ({e:?}) at RIP {rip:#x}"
            ));
        }
    };
    let size_mask = devices::bus::all_ones(decoded.size);
    let now = host.now();
    let index = vcpu.index();
    let written = match decoded.access {
        Operand::Read { dest, width } => {
            let value = vm.chipset.mmio_read(index, address, decoded.size, now) & size_mask;
            let old = vcpu.gpr(dest.index);
            vcpu.set_gpr(dest.index, decode::merge_register(old, value, width, dest.high_byte));
            None
        }
        Operand::WriteRegister { source } => {
            let register = vcpu.gpr(source.index);
            Some(if source.high_byte { register >> 8 } else { register })
        }
        Operand::WriteImmediate { value } => Some(value),
    };
    let request = written
        .and_then(|value| vm.chipset.mmio_write(index, address, decoded.size, value & size_mask, now, &mut *vm.memory));
    for (slot, device, why) in vm.chipset.take_broken() {
        log::warn!("vm {}: {device} in virtio slot {slot} is broken until the guest resets it: {why}", vm.name);
    }
    // Neither vendor reports a usable length for these exits: step RIP by the
    // decoder's.
    vcpu.set_rip(rip.wrapping_add(decoded.length as u64));
    match request {
        Some(r) => act_on(r),
        None => Outcome::Resume,
    }
}

fn unsupported(what: alloc::string::String) -> Outcome {
    Outcome::Stop(Stop::Unsupported(what))
}

/// The bytes at CS:RIP, fetched as the guest's CPU would fetch them.
pub struct Fetched {
    pub bytes: [u8; 15],
    /// How many of `bytes` were read: fewer than 15 at the end of guest RAM or
    /// before a page the guest cannot execute from.
    pub len: usize,
    /// Why the bytes after `len` could not be fetched, when the guest's CPU
    /// would fault there: only if the instruction turns out to need them.
    pub beyond: Option<WalkError>,
}

/// An execute access at the guest's privilege level. A failure on the first
/// byte means the guest's tables no longer map the instruction that just ran
/// (another vCPU changed them): the caller raises what the CPU would.
pub fn fetch_instruction(vcpu: &dyn Vcpu, vm: &Machine) -> Result<Fetched, WalkError> {
    const MAX: usize = 15;
    let linear = crate::io::effective_base(vcpu, crate::SegmentRegister::Cs).wrapping_add(vcpu.rip());
    let in_first_page = (0x1000 - (linear & 0xfff) as usize).min(MAX);
    let paging = vcpu.paging();
    let rights = access_rights(vcpu, AccessKind::Execute);
    let memory = &*vm.memory;
    let (pieces, beyond) = match paging::translate_range(memory, &paging, rights, linear, MAX) {
        Ok(pieces) => (pieces, None),
        // The instruction may end before the page that failed.
        Err(e) => (paging::translate_range(memory, &paging, rights, linear, in_first_page)?, Some(e)),
    };
    let mut fetched = Fetched { bytes: [0; MAX], len: 0, beyond };
    for piece in pieces.as_slice() {
        let to = &mut fetched.bytes[fetched.len..fetched.len + piece.len];
        if memory.read(piece.physical, to).is_err() {
            // Not RAM: what is there is not fetched (below, "cannot emulate").
            fetched.beyond = None;
            break;
        }
        fetched.len += piece.len;
    }
    Ok(fetched)
}
