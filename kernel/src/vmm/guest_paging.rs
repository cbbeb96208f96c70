//! Guest linear → guest physical, for the few places the VMM must follow a guest
//! pointer (string I/O, instruction fetch for MMIO decoding). Walks the guest's own
//! page tables in its memory: paging off, 32-bit, PAE and 4-level.

use super::guest_memory::GuestMemory;
use super::vcpu::read;
use vmx::guest_state::{CR0_PG, CR4_PAE, EFER_LMA};
use vmx::vmcs;

const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// The guest-physical address of `linear`, or None if the guest has not mapped it.
pub fn translate(memory: &GuestMemory, linear: u64) -> Option<u64> {
    let cr0 = read(vmcs::GUEST_CR0);
    if cr0 & CR0_PG == 0 {
        return Some(linear & 0xffff_ffff);
    }
    let cr3 = read(vmcs::GUEST_CR3);
    let cr4 = read(vmcs::GUEST_CR4);
    let efer = read(vmcs::GUEST_IA32_EFER);
    if efer & EFER_LMA != 0 {
        walk(memory, cr3 & ADDRESS, linear, &[39, 30, 21, 12])
    } else if cr4 & CR4_PAE != 0 {
        let pdpte = memory.read_u64((cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8).ok()?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        walk(memory, pdpte & ADDRESS, linear, &[21, 12])
    } else {
        // 32-bit paging: 4-byte entries, 4 MiB pages when PSE.
        let mut bytes = [0u8; 4];
        memory.read((cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4, &mut bytes).ok()?;
        let pde = u32::from_le_bytes(bytes) as u64;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & LARGE != 0 {
            return Some((pde & 0xffc0_0000) | (linear & 0x3f_ffff));
        }
        memory.read((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4, &mut bytes).ok()?;
        let pte = u32::from_le_bytes(bytes) as u64;
        (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (linear & 0xfff))
    }
}

/// Walks 8-byte-entry tables, one level per shift in `shifts`.
fn walk(memory: &GuestMemory, mut table: u64, linear: u64, shifts: &[u32]) -> Option<u64> {
    for (level, &shift) in shifts.iter().enumerate() {
        let entry = memory.read_u64(table + ((linear >> shift) & 0x1ff) * 8).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        let last = level + 1 == shifts.len();
        if last || (entry & LARGE != 0 && shift <= 30) {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDRESS & !page_mask) | (linear & page_mask));
        }
        table = entry & ADDRESS;
    }
    None
}
