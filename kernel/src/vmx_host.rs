//! The kernel side of VT-x: reading the CPU's capabilities through real MSRs.

use x86_64::registers::model_specific::Msr;

struct HostMsrs;

impl vmx::MsrReader for HostMsrs {
    fn read_msr(&self, msr: u32) -> u64 {
        // SAFETY: only called after CPUID reported VMX, so the VMX MSRs exist.
        unsafe { Msr::new(msr).read() }
    }
}

pub fn cpu_has_vmx() -> bool {
    raw_cpuid::CpuId::new().get_feature_info().is_some_and(|f| f.has_vmx())
}

/// Logs what VT-x this CPU offers, or that it has none.
pub fn report_capabilities() {
    if !cpu_has_vmx() {
        log::info!("vmx: not available on this CPU (CPUID.1:ECX.VMX = 0)");
        return;
    }
    use vmx::msr::*;
    let feature_control = vmx::MsrReader::read_msr(&HostMsrs, IA32_FEATURE_CONTROL);
    let locked = feature_control & FEATURE_CONTROL_LOCKED != 0;
    let allowed = feature_control & FEATURE_CONTROL_VMXON_OUTSIDE_SMX != 0;
    log::info!(
        "vmx: available; IA32_FEATURE_CONTROL {:#x} ({})",
        feature_control,
        match (locked, allowed) {
            (true, true) => "locked, VMXON allowed",
            (true, false) => "locked with VMX disabled by firmware",
            (false, _) => "unlocked, Basalt will enable it",
        }
    );
    let caps = vmx::VmxCapabilities::read(&HostMsrs);
    for line in alloc::format!("{caps}").lines() {
        log::info!("vmx: {line}");
    }
}
