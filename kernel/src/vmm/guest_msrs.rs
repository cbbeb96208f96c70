//! Which MSRs guests reach without an exit, the same on both vendors: the
//! back ends open these in their MSR bitmap or permission map and switch
//! whatever their entry and exit leave alone (`switch.rs`).

pub const IA32_PAT: u32 = 0x277;
pub const IA32_SPEC_CTRL: u32 = 0x48;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;
/// The PAT every guest starts with (the architectural reset value).
pub const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

/// SYSENTER_CS/ESP/EIP, PAT, FS/GS base, STAR, LSTAR, CSTAR, SFMASK,
/// KERNEL_GS_BASE, TSC_AUX: state the CPU keeps per vCPU (in the VMCS or VMCB,
/// or switched by the back end), so the guest may write it freely.
const PASSTHROUGH: [u32; 12] = [
    0x174,
    0x175,
    0x176,
    IA32_PAT,
    0xc000_0100,
    0xc000_0101,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0102,
    IA32_TSC_AUX,
];
/// Speculation-control commands (IBPB, L1D flush): no state, safe to pass through.
const COMMANDS: [u32; 2] = [0x49, 0x10b];

/// CPUID.7.EDX[26]: IBRS/IBPB, with IA32_SPEC_CTRL and IA32_PRED_CMD.
pub fn has_spec_ctrl() -> bool {
    core::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 26) != 0
}

/// Every MSR the guest reaches directly on this CPU (SPEC_CTRL only where it
/// exists, since it is switched per vCPU).
pub fn passthrough() -> impl Iterator<Item = u32> {
    let spec_ctrl: &[u32] = if has_spec_ctrl() { &[IA32_SPEC_CTRL] } else { &[] };
    PASSTHROUGH.into_iter().chain(COMMANDS).chain(spec_ctrl.iter().copied())
}

/// A back end's list of MSRs to switch per vCPU, which ends with SPEC_CTRL,
/// without it on CPUs that do not have it.
pub fn switched(list: &'static [u32]) -> &'static [u32] {
    match list.split_last() {
        Some((&IA32_SPEC_CTRL, rest)) if !has_spec_ctrl() => rest,
        _ => list,
    }
}
