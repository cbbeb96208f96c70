//! RDMSR/WRMSR for the MSRs the back end intercepts (all but a pass-through
//! list). A few are emulated; any other access raises #GP in the guest, as a
//! real CPU does for an MSR it does not have.

use crate::cr::with_long_mode;
use crate::{Host, Machine, Outcome, Vcpu, GP};
use arch::control::{cr0, efer};

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
/// AMD's hardware configuration register. Bit 24 (TscFreqSel): the TSC counts
/// at the P0 frequency, which Linux checks on AMD CPUs (KVM reports it too).
const AMD_HWCR: u32 = 0xc001_0015;
const AMD_HWCR_TSC_FREQ_SEL: u64 = 1 << 24;
/// AMD's northbridge configuration: Linux sets its extended-config-space bit
/// (a PCI detail with no effect here).
const AMD_NB_CFG: u32 = 0xc001_001f;
/// What a guest may set in EFER: SCE, LME, NXE (LMA follows long mode).
pub const EFER_WRITABLE: u64 = efer::SCE | efer::LME | efer::NXE;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;

pub fn rdmsr(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host) -> Outcome {
    let msr = vcpu.gpr(RCX) as u32;
    let value = match msr {
        IA32_TSC_DEADLINE => vm.chipset.tsc_deadline(vcpu.index()),
        // The guest's TSC is never adjusted (see wrmsr).
        IA32_TSC_ADJUST => 0,
        IA32_TSC => host.now(),
        // Enabled, xAPIC at the default address; the BSP bit for vCPU 0.
        IA32_APIC_BASE => 0xfee0_0000 | (1 << 11) | if vcpu.index() == 0 { 1 << 8 } else { 0 },
        // Locked with VMX off: guests see no VT-x.
        IA32_FEATURE_CONTROL => 1,
        IA32_BIOS_SIGN_ID => MICROCODE_REVISION,
        IA32_MTRRCAP => 0,
        IA32_MISC_ENABLE => 1,
        IA32_MTRR_DEF_TYPE => 0x806,
        IA32_EFER => vcpu.efer(),
        AMD_HWCR if guest_is_amd(host) => AMD_HWCR_TSC_FREQ_SEL,
        AMD_NB_CFG if guest_is_amd(host) => 0,
        _ => {
            vcpu.inject_exception(GP, Some(0));
            return Outcome::Resume;
        }
    };
    vcpu.set_gpr(RAX, value & 0xffff_ffff);
    vcpu.set_gpr(RDX, value >> 32);
    vcpu.skip_instruction();
    Outcome::Resume
}

pub fn wrmsr(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host) -> Outcome {
    let msr = vcpu.gpr(RCX) as u32;
    let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
    match msr {
        IA32_TSC_DEADLINE => vm.chipset.set_tsc_deadline(vcpu.index(), value),
        // Guests see the host's TSC unoffset, so only "no adjustment" can be
        // written; software writes TSC_ADJUST only to undo a nonzero value it read.
        IA32_TSC_ADJUST if value == 0 => {}
        IA32_EFER => {
            let now = vcpu.control();
            if arch::control::check_efer(value, EFER_WRITABLE, now).is_err() {
                vcpu.inject_exception(GP, Some(0));
                return Outcome::Resume;
            }
            // LME cannot change under paging (checked above), so long mode
            // stays as it is; turning paging on or off switches it (cr.rs).
            let active = now.cr0 & cr0::PG != 0 && now.long_mode_active;
            vcpu.set_efer(with_long_mode(value & EFER_WRITABLE, active));
        }
        // Accepted and ignored: timing, MTRRs and APIC relocation are not modelled.
        IA32_TSC | IA32_APIC_BASE | IA32_MTRR_DEF_TYPE | IA32_MISC_ENABLE | IA32_BIOS_SIGN_ID => {}
        0x200..=0x26f => {}
        AMD_HWCR | AMD_NB_CFG if guest_is_amd(host) => {}
        _ => {
            vcpu.inject_exception(GP, Some(0));
            return Outcome::Resume;
        }
    }
    vcpu.skip_instruction();
    Outcome::Resume
}

/// Guests see the host's CPU vendor (CPUID leaf 0): AMD's own MSRs exist for
/// them only on an AMD host, as on real hardware.
fn guest_is_amd(host: &dyn Host) -> bool {
    let [_, ebx, ecx, edx] = host.cpuid(0, 0);
    [ebx, edx, ecx] == [u32::from_le_bytes(*b"Auth"), u32::from_le_bytes(*b"enti"), u32::from_le_bytes(*b"cAMD")]
}
