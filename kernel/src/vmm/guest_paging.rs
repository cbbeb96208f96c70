//! The VMX side of the guest page walk (the walk itself and its access rights
//! are `arch::paging`): the current vCPU's paging registers, privilege level
//! and RFLAGS.AC from its VMCS, and its RAM as the memory the tables live in.

use super::guest_memory::GuestMemory;
use super::vcpu::read;
use arch::paging::{self, Access, AccessKind, Paging, PhysicalMemory, Pieces, WalkError};
use core::arch::x86_64::__cpuid;
use vmx::vmcs;

const RFLAGS_AC: u64 = 1 << 18;

impl PhysicalMemory for GuestMemory {
    fn read_u32(&self, physical: u64) -> Option<u32> {
        let mut bytes = [0; 4];
        self.read(physical, &mut bytes).ok()?;
        Some(u32::from_le_bytes(bytes))
    }

    fn read_u64(&self, physical: u64) -> Option<u64> {
        GuestMemory::read_u64(self, physical).ok()
    }
}

/// How the current vCPU translates. CR0 and CR4 are the values the CPU uses
/// (not the guest's read shadows: the bits they differ in are VMX's fixed
/// bits, none of which affect paging).
fn registers() -> Paging {
    Paging {
        cr0: read(vmcs::GUEST_CR0),
        cr3: read(vmcs::GUEST_CR3),
        cr4: read(vmcs::GUEST_CR4),
        efer: read(vmcs::GUEST_IA32_EFER),
        // With EPT the CPU keeps PAE paging's PDPTEs in the VMCS across exits.
        pdptes: Some([
            read(vmcs::GUEST_PDPTE0),
            read(vmcs::GUEST_PDPTE1),
            read(vmcs::GUEST_PDPTE2),
            read(vmcs::GUEST_PDPTE3),
        ]),
        max_phys_bits: max_phys_bits(),
    }
}

/// MAXPHYADDR as guests see it (CPUID 0x80000008 is passed through), asked
/// of the CPU once.
fn max_phys_bits() -> u8 {
    static BITS: spin::Once<u8> = spin::Once::new();
    *BITS.call_once(|| if __cpuid(0x8000_0000).eax >= 0x8000_0008 { __cpuid(0x8000_0008).eax as u8 } else { 36 })
}

/// An access made for the guest at its current privilege level (SS.DPL).
fn access(kind: AccessKind) -> Access {
    let cpl = (read(vmcs::GUEST_SS_ACCESS_RIGHTS) >> 5) & 3;
    Access::new(kind, cpl == 3, read(vmcs::GUEST_RFLAGS) & RFLAGS_AC != 0)
}

/// How the current vCPU translates for one kind of access, read from its
/// VMCS once: a REP string instruction translates up to thousands of
/// elements with it in one exit.
pub struct Translation {
    paging: Paging,
    access: Access,
}

impl Translation {
    pub fn current(kind: AccessKind) -> Translation {
        Translation { paging: registers(), access: access(kind) }
    }

    /// The guest-physical pieces of `len` bytes at `linear` (at most
    /// `paging::MAX_RANGE`), as the guest's CPU would check them.
    pub fn range(&self, memory: &GuestMemory, linear: u64, len: usize) -> Result<Pieces, WalkError> {
        paging::translate_range(memory, &self.paging, self.access, linear, len)
    }
}
