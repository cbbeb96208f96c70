//! RDMSR/WRMSR for the MSRs the bitmap intercepts (all but a pass-through list in
//! vcpu.rs). A few are emulated; any other access raises #GP in the guest, as a
//! real CPU does for an MSR it does not have.

use super::{inject_exception, skip_instruction, Outcome, GP};
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::Vm;
use vmx::guest_state::{CR0_PG, EFER_LMA, EFER_LME};
use vmx::vmcs;

const IA32_TSC: u32 = 0x10;
const IA32_APIC_BASE: u32 = 0x1b;
const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// Microcode revision: written with 0, then CPUID, then read (revision in EDX).
const IA32_BIOS_SIGN_ID: u32 = 0x8b;
const MICROCODE_REVISION: u64 = 1 << 32;
const IA32_MTRRCAP: u32 = 0xfe;
const IA32_MISC_ENABLE: u32 = 0x1a0;
const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const IA32_TSC_ADJUST: u32 = 0x3b;
const IA32_EFER: u32 = 0xc000_0080;
const EFER_WRITABLE: u64 = 1 | EFER_LME | (1 << 11); // SCE, LME, NXE

pub fn rdmsr(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    let msr = vcpu.regs.rcx as u32;
    let value = match msr {
        IA32_TSC_DEADLINE => vm.chipset.tsc_deadline(vcpu.index as usize),
        // The guest's TSC is never adjusted (see wrmsr).
        IA32_TSC_ADJUST => 0,
        IA32_TSC => crate::time::rdtsc(),
        // Enabled, xAPIC at the default address; the BSP bit for vCPU 0.
        IA32_APIC_BASE => 0xfee0_0000 | (1 << 11) | if vcpu.index == 0 { 1 << 8 } else { 0 },
        // Locked with VMX off: guests see no VT-x.
        IA32_FEATURE_CONTROL => 1,
        IA32_BIOS_SIGN_ID => MICROCODE_REVISION,
        IA32_MTRRCAP => 0,
        IA32_MISC_ENABLE => 1,
        IA32_MTRR_DEF_TYPE => 0x806,
        IA32_EFER => read(vmcs::GUEST_IA32_EFER),
        _ => {
            inject_exception(GP, Some(0));
            return Outcome::Resume;
        }
    };
    vcpu.regs.rax = value & 0xffff_ffff;
    vcpu.regs.rdx = value >> 32;
    skip_instruction();
    Outcome::Resume
}

pub fn wrmsr(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    let msr = vcpu.regs.rcx as u32;
    let value = (vcpu.regs.rdx << 32) | (vcpu.regs.rax & 0xffff_ffff);
    match msr {
        IA32_TSC_DEADLINE => vm.chipset.set_tsc_deadline(vcpu.index as usize, value),
        // Guests see the host's TSC unoffset, so only "no adjustment" can be
        // written; software writes TSC_ADJUST only to undo a nonzero value it read.
        IA32_TSC_ADJUST if value == 0 => {}
        IA32_EFER => {
            // LMA follows LME only while paging is on; cr.rs handles the switch.
            if arch::control::check_efer(value, EFER_WRITABLE, super::cr::context()).is_err() {
                inject_exception(GP, Some(0));
                return Outcome::Resume;
            }
            let paging = read(vmcs::GUEST_CR0) & CR0_PG != 0;
            let active = paging && read(vmcs::GUEST_IA32_EFER) & EFER_LMA != 0;
            super::cr::set_long_mode(vcpu, value & EFER_WRITABLE, active);
        }
        // Accepted and ignored: timing, MTRRs and APIC relocation are not modelled.
        IA32_TSC | IA32_APIC_BASE | IA32_MTRR_DEF_TYPE | IA32_MISC_ENABLE | IA32_BIOS_SIGN_ID => {}
        0x200..=0x26f => {}
        _ => {
            inject_exception(GP, Some(0));
            return Outcome::Resume;
        }
    }
    skip_instruction();
    Outcome::Resume
}
