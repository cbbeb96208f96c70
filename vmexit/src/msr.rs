//! RDMSR/WRMSR for the MSRs the back end intercepts (all but a pass-through
//! list). A few are emulated; any other access raises #GP in the guest, as a
//! real CPU does for an MSR it does not have. The first few MSR numbers each
//! VM is refused are logged (once each, `REFUSED_MSRS_LOGGED` per VM), so
//! that what a guest probes and misses can be seen without a flood.
//!
//! IA32_APIC_BASE and the x2APIC MSRs (0x800-0x8ff) are the vCPU's local APIC
//! (`devices::lapic`): its mode, and its registers in x2APIC mode.
//!
//! IA32_TSC, IA32_TSC_ADJUST and IA32_TSC_DEADLINE are in the guest's own TSC,
//! the host's plus the vCPU's offset (`tsc`): TSC_ADJUST is that offset, and
//! writing either of the first two moves it.

use crate::cr::with_long_mode;
use crate::{tsc, Host, Machine, Outcome, Vcpu, GP};
use arch::control::{cr0, efer};
use devices::chipset::REFUSED_MSRS_LOGGED;
use devices::Chipset;

const IA32_TSC: u32 = 0x10;
const IA32_APIC_BASE: u32 = 0x1b;
const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// Microcode revision: written with 0, then CPUID, then read (revision in EDX).
const IA32_BIOS_SIGN_ID: u32 = 0x8b;
const MICROCODE_REVISION: u64 = 1 << 32;
const IA32_MTRRCAP: u32 = 0xfe;
const IA32_MISC_ENABLE: u32 = 0x1a0;
/// Machine-check capabilities and status: no banks, nothing to report (CPUID
/// hides MCE/MCA, but some kernels read them regardless, as KVM lets them).
const IA32_MCG_CAP: u32 = 0x179;
const IA32_MCG_STATUS: u32 = 0x17a;
const X2APIC_MSRS: core::ops::RangeInclusive<u32> = 0x800..=0x8ff;
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

/// IA32_MISC_ENABLE, per vCPU. The SDM's read/write bits whose effect is
/// only the CPU's speed (fast strings, the thermal control circuit) are kept
/// as written. The read-only bits say what is there: no performance
/// monitoring, no branch trace store, no PEBS; a write may repeat them (and
/// bit 7's is ignored, as the SDM marks it read-only), not change 11 or 12.
/// The read/write bits that change what CPUID reports or what the CPU does
/// (EIST, MONITOR/MWAIT, the CPUID limit, XD disable, turbo...) stay 0: a
/// write that sets one is #GP, as on a CPU without the feature.
pub mod misc_enable {
    pub const FAST_STRINGS: u64 = 1 << 0;
    pub const AUTOMATIC_THERMAL_CONTROL: u64 = 1 << 3;
    pub const PERFORMANCE_MONITORING_AVAILABLE: u64 = 1 << 7;
    pub const BTS_UNAVAILABLE: u64 = 1 << 11;
    pub const PEBS_UNAVAILABLE: u64 = 1 << 12;
    pub const RESET: u64 = FAST_STRINGS | BTS_UNAVAILABLE | PEBS_UNAVAILABLE;
    pub const WRITABLE: u64 = FAST_STRINGS | AUTOMATIC_THERMAL_CONTROL;
    /// Read-only bits whose written value is ignored rather than checked.
    pub const IGNORED: u64 = PERFORMANCE_MONITORING_AVAILABLE;
}

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;

pub fn rdmsr(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host) -> Outcome {
    let msr = vcpu.gpr(RCX) as u32;
    let value = match msr {
        // As the guest wrote it, in its own TSC (0 once it fired).
        IA32_TSC_DEADLINE => vm.chipset.tsc_deadline(vcpu.index()),
        // The offset starts at 0 and moves exactly as TSC_ADJUST does.
        IA32_TSC_ADJUST => vcpu.tsc_offset(),
        IA32_TSC => tsc::guest(host.now(), vcpu.tsc_offset()),
        // The mode and the BSP bit (vCPU 0) at the one base Basalt models.
        IA32_APIC_BASE => vm.chipset.apic_base(vcpu.index()),
        // Locked with VMX off: guests see no VT-x.
        IA32_FEATURE_CONTROL => 1,
        IA32_BIOS_SIGN_ID => MICROCODE_REVISION,
        IA32_MTRRCAP => 0,
        IA32_MISC_ENABLE => vm.chipset.vcpu_msrs(vcpu.index()).misc_enable.unwrap_or(misc_enable::RESET),
        IA32_MCG_CAP | IA32_MCG_STATUS => 0,
        IA32_MTRR_DEF_TYPE => 0x806,
        IA32_EFER => vcpu.efer(),
        AMD_HWCR if guest_is_amd(host) => AMD_HWCR_TSC_FREQ_SEL,
        AMD_NB_CFG if guest_is_amd(host) => 0,
        _ if X2APIC_MSRS.contains(&msr) => match vm.chipset.x2apic_read(vcpu.index(), msr, host.now()) {
            Ok(value) => value,
            Err(_) => return refuse(vcpu, vm, "RDMSR", msr),
        },
        _ => return refuse(vcpu, vm, "RDMSR", msr),
    };
    vcpu.set_gpr(RAX, value & 0xffff_ffff);
    vcpu.set_gpr(RDX, value >> 32);
    crate::debug::skip(vcpu);
    Outcome::Resume
}

pub fn wrmsr(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host) -> Outcome {
    let msr = vcpu.gpr(RCX) as u32;
    let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
    let index = vcpu.index();
    match msr {
        IA32_TSC_DEADLINE => {
            let fires_at = tsc::deadline_on_host(value, vcpu.tsc_offset(), host.now());
            vm.chipset.arm_tsc_deadline(index, value, fires_at);
        }
        // The TSC moves by what TSC_ADJUST does.
        IA32_TSC_ADJUST => set_tsc_offset(vcpu, vm, host, value),
        // The TSC reads `value` from now on; TSC_ADJUST moves by as much.
        IA32_TSC => set_tsc_offset(vcpu, vm, host, tsc::offset_for(value, host.now())),
        IA32_EFER => {
            let now = vcpu.control();
            if arch::control::check_efer(value, EFER_WRITABLE, now).is_err() {
                return refuse(vcpu, vm, "WRMSR", msr);
            }
            // LME cannot change under paging (checked above), so long mode
            // stays as it is; turning paging on or off switches it (cr.rs).
            let active = now.cr0 & cr0::PG != 0 && now.long_mode_active;
            vcpu.set_efer(with_long_mode(value & EFER_WRITABLE, active));
        }
        IA32_APIC_BASE => {
            let offered = crate::cpuid::X2APIC_OFFERED;
            let phys_bits = crate::cpuid::guest_phys_bits(host);
            if vm.chipset.set_apic_base(index, value, offered, phys_bits).is_err() {
                return refuse(vcpu, vm, "WRMSR", msr);
            }
        }
        IA32_MISC_ENABLE => {
            let now = vm.chipset.vcpu_msrs(index).misc_enable.unwrap_or(misc_enable::RESET);
            if (value ^ now) & !(misc_enable::WRITABLE | misc_enable::IGNORED) != 0 {
                return refuse(vcpu, vm, "WRMSR", msr);
            }
            let written = (now & !misc_enable::WRITABLE) | (value & misc_enable::WRITABLE);
            vm.chipset.update_vcpu_msrs(index, |msrs| msrs.misc_enable = Some(written));
        }
        // No banks: a handler clearing MCIP after a machine check writes 0.
        IA32_MCG_STATUS if value == 0 => {}
        // Accepted and ignored: MTRRs are not modelled, nor microcode updates.
        IA32_MTRR_DEF_TYPE | IA32_BIOS_SIGN_ID => {}
        0x200..=0x26f => {}
        AMD_HWCR | AMD_NB_CFG if guest_is_amd(host) => {}
        _ if X2APIC_MSRS.contains(&msr) => {
            if vm.chipset.x2apic_write(index, msr, value, host.now()).is_err() {
                return refuse(vcpu, vm, "WRMSR", msr);
            }
        }
        _ => return refuse(vcpu, vm, "WRMSR", msr),
    }
    crate::debug::skip(vcpu);
    Outcome::Resume
}

/// The run loop's fast path for a WRMSR exit, before `dispatch`: a write
/// of IA32_TSC_DEADLINE (one per guest timer tick) with RFLAGS.TF clear and
/// a deadline ahead of the host's `now` (or 0, disarming) is done here as
/// `wrmsr` does it: the vCPU's timer armed in the guest's TSC, the
/// instruction completed (RF cleared). Returns whether it was; if not,
/// nothing changed and the exit goes to `dispatch` (a passed deadline
/// fires there and in the poll that follows; TF owes a #DB).
pub fn fast_tsc_deadline(vcpu: &mut dyn Vcpu, chipset: &Chipset, now: u64) -> bool {
    if vcpu.gpr(RCX) as u32 != IA32_TSC_DEADLINE || vcpu.rflags() & crate::vcpu::RFLAGS_TF != 0 {
        return false;
    }
    let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
    let fires_at = tsc::deadline_on_host(value, vcpu.tsc_offset(), now);
    if value != 0 && fires_at <= now {
        return false;
    }
    chipset.arm_tsc_deadline(vcpu.index(), value, fires_at);
    crate::debug::skip(vcpu);
    true
}

/// Sets the vCPU's TSC offset (= TSC_ADJUST). An armed TSC deadline stays
/// where the guest put it in its own TSC, which now reaches it at another
/// host time. The chipset keeps a copy for a vCPU started afresh after INIT.
fn set_tsc_offset(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, offset: u64) {
    let index = vcpu.index();
    vcpu.set_tsc_offset(offset);
    vm.chipset.update_vcpu_msrs(index, |msrs| msrs.tsc_offset = offset);
    let deadline = vm.chipset.tsc_deadline(index);
    if deadline != 0 {
        vm.chipset.arm_tsc_deadline(index, deadline, tsc::deadline_on_host(deadline, offset, host.now()));
    }
}

/// #GP(0) for an access the CPU would refuse; the instruction is not
/// skipped. The VM's log names the MSR the first time (for the first
/// `REFUSED_MSRS_LOGGED` numbers), so a guest missing an MSR shows which.
fn refuse(vcpu: &mut dyn Vcpu, vm: &mut Machine, instruction: &str, msr: u32) -> Outcome {
    if vm.chipset.first_refusal_of_msr(msr) {
        log::info!(
            "vm {}: {instruction} of MSR {msr:#x} raised #GP (each of the first {REFUSED_MSRS_LOGGED} such MSRs is named once)",
            vm.name
        );
    }
    vcpu.inject_exception(GP, Some(0));
    Outcome::Resume
}

/// Guests see the host's CPU vendor (CPUID leaf 0): AMD's own MSRs exist for
/// them only on an AMD host, as on real hardware.
fn guest_is_amd(host: &dyn Host) -> bool {
    let [_, ebx, ecx, edx] = host.cpuid(0, 0);
    [ebx, edx, ecx] == [u32::from_le_bytes(*b"Auth"), u32::from_le_bytes(*b"enti"), u32::from_le_bytes(*b"cAMD")]
}
