//! Control-register accesses that exit: writes touching CR0/CR4 bits VMX pins,
//! and CR8 when there is no TPR shadow. The guest keeps its own view of CR0/CR4
//! (the read shadow); the real register gets the pinned bits. Turning paging on
//! with EFER.LME set enters long mode. CR8 is the local APIC model's TPR.

use super::{gpr, inject_exception, set_gpr, skip_instruction, write, Outcome, GP};
use crate::vmm::cpu::{self, ENTRY_IA32E_MODE_GUEST};
use crate::vmm::vcpu::{read, Vcpu, CR0_CD, CR0_NW};
use crate::vmm::vm::{Stop, Vm};
use vmx::exit::CrAccess;
use vmx::guest_state::{CR0_PG, EFER_LMA, EFER_LME};
use vmx::vmcs;

/// The local APIC's task-priority register, which CR8 mirrors (CR8 = TPR[7:4]).
const APIC_TPR: u64 = devices::layout::LAPIC_BASE + 0x80;

pub fn handle(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    let Ok(vmx) = cpu::vmx() else { return Outcome::Stop(Stop::Unsupported("no VMX".into())) };
    match CrAccess::decode(read(vmcs::EXIT_QUALIFICATION)) {
        CrAccess::MovToCr { cr: 0, gpr: g } => {
            let value = gpr(vcpu, g);
            if let Err(why) = arch::control::check_cr0(value, context()) {
                return refuse(why);
            }
            write_cr0(vcpu, value, vmx);
        }
        CrAccess::MovToCr { cr: 4, gpr: g } => {
            let value = gpr(vcpu, g);
            if let Err(why) = arch::control::check_cr4(value, super::cpuid::guest_cr4_allowed(), context()) {
                return refuse(why);
            }
            write(vmcs::CR4_READ_SHADOW, value);
            write(vmcs::GUEST_CR4, vmx.caps.cr4.apply(value));
        }
        CrAccess::MovToCr { cr: 8, gpr: g } => {
            let value = gpr(vcpu, g);
            // Bits 63:4 are reserved.
            if value >> 4 != 0 {
                inject_exception(GP, Some(0));
                return Outcome::Resume;
            }
            let now = crate::time::rdtsc();
            vm.chipset.mmio_write(vcpu.index as usize, APIC_TPR, 4, value << 4, now, &mut vm.memory);
        }
        CrAccess::MovFromCr { cr: 8, gpr: g } => {
            let now = crate::time::rdtsc();
            let tpr = vm.chipset.mmio_read(vcpu.index as usize, APIC_TPR, 4, now);
            let value = (tpr >> 4) & 0xf;
            set_gpr(vcpu, g, value);
        }
        CrAccess::Clts => {
            let shadow = read(vmcs::CR0_READ_SHADOW) & !(1 << 3);
            write_cr0(vcpu, shadow, vmx);
        }
        CrAccess::Lmsw { source } => {
            // LMSW sets the low four bits and can set, but not clear, PE.
            let shadow = read(vmcs::CR0_READ_SHADOW);
            let value = (shadow & !0xe) | (source as u64 & 0xf) | (shadow & 1);
            write_cr0(vcpu, value, vmx);
        }
        other => {
            return Outcome::Stop(Stop::Unsupported(alloc::format!("control-register access {other:?}")));
        }
    }
    skip_instruction();
    Outcome::Resume
}

/// The guest's control registers as it sees them (its CR0/CR4 read shadows
/// for the bits Basalt owns), for the architectural checks of a write.
pub(super) fn context() -> arch::control::Context {
    let visible = |actual, shadow, mask| {
        let mask = read(mask);
        (read(actual) & !mask) | (read(shadow) & mask)
    };
    let efer = read(vmcs::GUEST_IA32_EFER);
    const CS_LONG: u64 = 1 << 13;
    arch::control::Context {
        cr0: visible(vmcs::GUEST_CR0, vmcs::CR0_READ_SHADOW, vmcs::CR0_GUEST_HOST_MASK),
        cr3: read(vmcs::GUEST_CR3),
        cr4: visible(vmcs::GUEST_CR4, vmcs::CR4_READ_SHADOW, vmcs::CR4_GUEST_HOST_MASK),
        long_mode_enabled: efer & EFER_LME != 0,
        long_mode_active: efer & EFER_LMA != 0,
        code_64: read(vmcs::GUEST_CS_ACCESS_RIGHTS) & CS_LONG != 0,
    }
}

/// A write the CPU would refuse: #GP(0), as it would raise, and nothing changes.
fn refuse(_why: arch::control::Refused) -> Outcome {
    inject_exception(GP, Some(0));
    Outcome::Resume
}

fn write_cr0(vcpu: &mut Vcpu, value: u64, vmx: &cpu::Vmx) {
    let was_paging = read(vmcs::GUEST_CR0) & CR0_PG != 0;
    write(vmcs::CR0_READ_SHADOW, value);
    // The guest's CD/NW live only in its shadow; the host's caches stay on.
    write(vmcs::GUEST_CR0, vmx.caps.cr0.for_unrestricted_guest_cr0().apply(value) & !(CR0_CD | CR0_NW));
    let paging = value & CR0_PG != 0;
    if paging != was_paging {
        let efer = read(vmcs::GUEST_IA32_EFER);
        set_long_mode(vcpu, efer, paging && efer & EFER_LME != 0);
    }
}

/// Writes the guest's EFER with LMA (long mode active) set or clear, and the
/// "IA-32e mode guest" entry control to match; the only place either changes.
pub(super) fn set_long_mode(vcpu: &mut Vcpu, efer: u64, active: bool) {
    write(vmcs::GUEST_IA32_EFER, if active { efer | EFER_LMA } else { efer & !EFER_LMA });
    let entry = read(vmcs::ENTRY_CONTROLS);
    let ia32e = ENTRY_IA32E_MODE_GUEST as u64;
    write(vmcs::ENTRY_CONTROLS, if active { entry | ia32e } else { entry & !ia32e });
    vcpu.ia32e = active;
}
