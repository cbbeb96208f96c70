//! CPUID: the host's answers, edited into a virtual CPU: the hypervisor bit set,
//! VMX hidden, a Basalt signature at 0x40000000, and the TSC frequency in leaves
//! 0x15/0x16 (and 0x40000010) so guests need not calibrate against timers.

use super::{skip_instruction, Outcome};
use crate::time;
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::xstate;
use core::arch::x86_64::__cpuid_count;
use vmx::vmcs;

/// "BasaltHVisor" as the three signature registers.
pub const SIGNATURE: [u32; 3] =
    [u32::from_le_bytes(*b"Basa"), u32::from_le_bytes(*b"ltHV"), u32::from_le_bytes(*b"isor")];
const HYPERVISOR_MAX_LEAF: u32 = 0x4000_0010;
/// Leaf 0x15/0x16 are synthesised, so the maximum basic leaf is at least 0x16.
const MIN_MAX_BASIC_LEAF: u32 = 0x16;

pub fn handle(vcpu: &mut Vcpu) -> Outcome {
    let leaf = vcpu.regs.rax as u32;
    let subleaf = vcpu.regs.rcx as u32;
    let [a, b, c, d] = virtual_cpuid(leaf, subleaf, vcpu.index, read(vmcs::GUEST_CR4));
    vcpu.regs.rax = a as u64;
    vcpu.regs.rbx = b as u64;
    vcpu.regs.rcx = c as u64;
    vcpu.regs.rdx = d as u64;
    skip_instruction();
    Outcome::Resume
}

/// The CR4 bits guests may set: those whose CPUID feature they see (MOV to
/// CR4 with any other bit is #GP, see arch::control).
/// The same for every guest on this host: worked out once.
pub fn guest_cr4_allowed() -> u64 {
    static ALLOWED: spin::Once<u64> = spin::Once::new();
    *ALLOWED.call_once(|| {
        let [_, _, leaf1_ecx, leaf1_edx] = virtual_cpuid(1, 0, 0, 0);
        let [_, leaf7_ebx, leaf7_ecx, _] = virtual_cpuid(7, 0, 0, 0);
        arch::control::cr4_allowed(arch::control::Cr4Features { leaf1_ecx, leaf1_edx, leaf7_ebx, leaf7_ecx })
    })
}

/// CPUID as the guest sees it. Bits that mirror control registers (OSXSAVE,
/// OSPKE) follow the guest's CR4, not the host's.
fn virtual_cpuid(leaf: u32, subleaf: u32, vcpu: u32, guest_cr4: u64) -> [u32; 4] {
    const CR4_OSXSAVE: u64 = 1 << 18;
    const CR4_PKE: u64 = 1 << 22;
    let tsc_hz = time::tsc_hz();
    match leaf {
        0x4000_0000 => return [HYPERVISOR_MAX_LEAF, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]],
        // TSC and local APIC timer frequency in kHz (the common hypervisor leaf);
        // the virtual APIC timer counts at the TSC rate.
        0x4000_0010 => return [(tsc_hz / 1000) as u32, (tsc_hz / 1000) as u32, 0, 0],
        0x4000_0001..=0x4000_ffff => return [0; 4],
        // TSC = crystal * EBX / EAX: report the TSC itself as a 1:1 "crystal".
        0x15 => return [1, 1, tsc_hz as u32, 0],
        0x16 => {
            let mhz = (tsc_hz / 1_000_000) as u32;
            return [mhz, mhz, 100, 0];
        }
        _ => {}
    }
    let host = __cpuid_count(leaf, subleaf);
    let xstate = xstate::guest();
    let [mut a, mut b, mut c, mut d] = arch::xstate::hide_features_without_state(
        leaf,
        subleaf,
        [host.eax, host.ebx, host.ecx, host.edx],
        xstate.allowed,
    );
    match leaf {
        0 => a = a.max(MIN_MAX_BASIC_LEAF),
        1 => {
            const ECX_VMX: u32 = 1 << 5;
            const ECX_MONITOR: u32 = 1 << 3;
            // GETSEC exits unconditionally and gets #UD (see exits/mod.rs).
            const ECX_SMX: u32 = 1 << 6;
            const ECX_X2APIC: u32 = 1 << 21;
            const ECX_TSC_DEADLINE: u32 = 1 << 24;
            const ECX_HYPERVISOR: u32 = 1 << 31;
            const ECX_OSXSAVE: u32 = 1 << 27;
            // Debug store, thermal and power management: MSR-backed, not emulated.
            const ECX_DTES64_DSCPL_EST_TM2_PDCM: u32 = (1 << 2) | (1 << 4) | (1 << 7) | (1 << 8) | (1 << 15);
            c &= !(ECX_VMX | ECX_MONITOR | ECX_SMX | ECX_X2APIC | ECX_OSXSAVE | ECX_DTES64_DSCPL_EST_TM2_PDCM);
            // The virtual local APIC has the TSC-deadline timer whatever the host has.
            c |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
            if guest_cr4 & CR4_OSXSAVE != 0 {
                c |= ECX_OSXSAVE;
            }
            // No machine-check architecture: its MSRs are not emulated.
            const EDX_MCE: u32 = 1 << 7;
            const EDX_MCA: u32 = 1 << 14;
            const EDX_DS_ACPI_TM_PBE: u32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
            d &= !(EDX_MCE | EDX_MCA | EDX_DS_ACPI_TM_PBE);
            // Initial APIC id = vCPU index; one logical processor per package.
            b = (b & 0x0000_ffff) | (vcpu << 24) | (1 << 16);
        }
        7 if subleaf == 0 => {
            // No IA32_ARCH_CAPABILITIES (not emulated). IA32_TSC_ADJUST is
            // emulated (msr.rs) and stays: with an invariant TSC it tells Linux
            // the TSC needs no watchdog.
            d &= !(1 << 29);
            // Protection keys are hidden (PKRU is not a guest XSAVE component,
            // see arch::xstate::GUEST_COMPONENTS); OSPKE would follow CR4.
            const ECX_PKU: u32 = 1 << 3;
            const ECX_OSPKE: u32 = 1 << 4;
            c &= !(ECX_PKU | ECX_OSPKE);
            if guest_cr4 & CR4_PKE != 0 {
                c |= ECX_OSPKE;
            }
        }
        // Only the components guests may enable, in the standard format (Bochs
        // also misreports the compacted size).
        0xd => [a, b, c, d] = arch::xstate::cpuid_leaf_0xd(subleaf, [a, b, c, d], xstate.allowed, xstate.area_size),
        // No thermal or power management but an always-running APIC timer (ARAT:
        // the virtual timer does not stop in deep C-states; there are none).
        6 => (a, b, c, d) = (1 << 2, 0, 0, 0),
        // No performance counters.
        0xa => (a, b, c, d) = (0, 0, 0, 0),
        // Caches: each shared by one logical processor, one core per package
        // (matching leaf 1), whatever the host's topology.
        4 => a &= 0x3fff,
        // Topology: one thread in one core; x2APIC id = vCPU index.
        0xb | 0x1f => {
            (a, b, c) = (0, if subleaf == 0 { 1 } else { 0 }, subleaf & 0xff);
            d = vcpu;
        }
        // Invariant TSC: the guest's TSC is the host's, constant and never stopped.
        0x8000_0007 => d |= 1 << 8,
        0x8000_0001 => {
            const ECX_SVM: u32 = 1 << 2;
            c &= !ECX_SVM;
        }
        _ => {}
    }
    [a, b, c, d]
}
