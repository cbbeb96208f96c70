//! CPUID: the host's answers edited into Basalt's virtual CPU.

use super::*;
use crate::cpuid::{guest_cr4_allowed, SIGNATURE};
use crate::fake::intel_like_cpuid;
use arch::control::cr4;

/// Runs CPUID for `leaf`/`subleaf` on `vcpu` and returns EAX, EBX, ECX, EDX,
/// checking what every CPUID exit must do: the instruction skipped exactly
/// once and the four registers written as 32-bit values (upper halves clear).
fn cpuid_on(vcpu: &mut FakeVcpu, host: &mut FakeHost, leaf: u32, subleaf: u32) -> [u32; 4] {
    // A VM with this vCPU in it (its APIC state is part of leaf 1).
    let mut vm = FakeVm::new(vcpu.index as u32 + 1, 0x1000);
    cpuid_in(vcpu, &mut vm, host, leaf, subleaf)
}

/// `cpuid_on` in a VM the test set up.
fn cpuid_in(vcpu: &mut FakeVcpu, vm: &mut FakeVm, host: &mut FakeHost, leaf: u32, subleaf: u32) -> [u32; 4] {
    // Garbage in the upper halves: CPUID reads EAX/ECX and writes all four
    // registers zero-extended.
    vcpu.gprs[RAX as usize] = 0xdead_beef_0000_0000 | leaf as u64;
    vcpu.gprs[RCX as usize] = 0xfeed_f00d_0000_0000 | subleaf as u64;
    vcpu.gprs[RDX as usize] = u64::MAX;
    vcpu.gprs[RBX as usize] = u64::MAX;
    vcpu.gprs[RSI as usize] = 0x5555;
    let (rip, skipped) = (vcpu.rip, vcpu.skipped);
    let outcome = run(Exit::Cpuid, vcpu, vm, host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.injected, None);
    assert_eq!(vcpu.skipped, skipped + 1, "leaf {leaf:#x}: skipped exactly once");
    assert_eq!(vcpu.rip, rip + vcpu.instruction_length);
    assert_eq!(vcpu.gprs[RSI as usize], 0x5555, "other registers untouched");
    [RAX, RBX, RCX, RDX].map(|r| {
        let value = vcpu.gprs[r as usize];
        assert_eq!(value >> 32, 0, "leaf {leaf:#x}: register {r} has its upper half set: {value:#x}");
        value as u32
    })
}

fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    cpuid_on(&mut FakeVcpu::flat(), &mut FakeHost::default(), leaf, subleaf)
}

/// An AMD-like host: SVM in 8000_0001h ECX, SVM features in 8000_000Ah,
/// topology extensions and CMP legacy, 6 cores in 8000_0008h.
fn amd_like_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => [0x10, u32::from_le_bytes(*b"Auth"), u32::from_le_bytes(*b"cAMD"), u32::from_le_bytes(*b"enti")],
        0x8000_0000 => [0x8000_0021, 0, 0, 0],
        0x8000_0001 => [0x00a2_0f12, 0, (1 << 1) | (1 << 2) | (1 << 22) | 1, 0x2fd3_fbff],
        0x8000_0008 => [0x3030, 0, 0x5005, 0],
        0x8000_000a => [1, 0x8000, 0, 0x1ebf_bcff],
        _ => intel_like_cpuid(leaf, subleaf),
    }
}

const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_SMX: u32 = 1 << 6;
const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_APIC: u32 = 1 << 9;

#[test]
fn the_host_has_what_the_tests_expect_hidden() {
    // Otherwise the tests below would pass for the wrong reason.
    let [_, _, ecx, edx] = intel_like_cpuid(1, 0);
    assert_ne!(ecx & LEAF1_ECX_VMX, 0);
    assert_ne!(ecx & LEAF1_ECX_OSXSAVE, 0);
    assert_eq!(ecx & LEAF1_ECX_HYPERVISOR, 0);
    assert_ne!(edx & (1 << 7), 0, "MCE");
    assert_ne!(intel_like_cpuid(7, 0)[3] & (1 << 29), 0, "ARCH_CAPABILITIES");
    assert_ne!(intel_like_cpuid(0x8000_0001, 0)[2] & (1 << 2), 0, "SVM");
    assert_ne!(amd_like_cpuid(0x8000_000a, 0), [0; 4]);
}

#[test]
fn leaf_1_says_hypervisor_offers_x2apic_and_hides_vmx_smx_monitor() {
    let [eax, _, ecx, edx] = cpuid(1, 0);
    let [host_eax, _, host_ecx, host_edx] = intel_like_cpuid(1, 0);
    assert_eq!(eax, host_eax, "family, model, stepping are the host's");
    assert_ne!(ecx & LEAF1_ECX_HYPERVISOR, 0);
    assert_eq!(ecx & LEAF1_ECX_VMX, 0);
    assert_eq!(ecx & LEAF1_ECX_SMX, 0);
    assert_eq!(ecx & LEAF1_ECX_MONITOR, 0);
    assert_ne!(ecx & LEAF1_ECX_X2APIC, 0, "the virtual APIC has x2APIC mode");
    assert_ne!(edx & LEAF1_EDX_APIC, 0, "and is enabled");
    assert_ne!(ecx & LEAF1_ECX_TSC_DEADLINE, 0, "the virtual APIC has the TSC-deadline timer");
    assert_eq!(ecx & LEAF1_ECX_XSAVE, host_ecx & LEAF1_ECX_XSAVE, "XSAVE stays");
    assert_ne!(ecx & (1 << 28), 0, "AVX stays: guests may enable its state");
    assert_eq!(edx & ((1 << 7) | (1 << 14)), 0, "no MCE/MCA");
    assert_eq!(edx & 1, host_edx & 1, "FPU stays");
}

#[test]
fn avx_is_hidden_when_guests_may_not_enable_its_state() {
    let mut host = FakeHost { xstate: crate::GuestXstate { allowed: 0x3, area_size: 0x240 }, ..FakeHost::default() };
    let [_, _, ecx, _] = cpuid_on(&mut FakeVcpu::flat(), &mut host, 1, 0);
    assert_eq!(ecx & (1 << 28), 0);
    let [eax, _, ecx, _] = cpuid_on(&mut FakeVcpu::flat(), &mut host, 0xd, 0);
    assert_eq!((eax, ecx), (0x3, 0x240), "leaf 0xD names only what guests may enable");
}

#[test]
fn osxsave_follows_the_vcpus_cr4_not_the_hosts() {
    let mut vcpu = FakeVcpu::flat();
    let mut host = FakeHost::default();
    assert_eq!(cpuid_on(&mut vcpu, &mut host, 1, 0)[2] & LEAF1_ECX_OSXSAVE, 0);
    vcpu.cr4 |= cr4::OSXSAVE;
    assert_ne!(cpuid_on(&mut vcpu, &mut host, 1, 0)[2] & LEAF1_ECX_OSXSAVE, 0);
    vcpu.cr4 &= !cr4::OSXSAVE;
    assert_eq!(cpuid_on(&mut vcpu, &mut host, 1, 0)[2] & LEAF1_ECX_OSXSAVE, 0);
}

#[test]
fn ospke_follows_cr4_and_pku_is_hidden() {
    let mut vcpu = FakeVcpu::flat();
    let mut host = FakeHost {
        cpuid: |leaf, sub| match (leaf, sub) {
            (7, 0) => [0, 0, (1 << 3) | (1 << 4), 1 << 29],
            _ => intel_like_cpuid(leaf, sub),
        },
        ..FakeHost::default()
    };
    let [_, _, ecx, edx] = cpuid_on(&mut vcpu, &mut host, 7, 0);
    assert_eq!(ecx & 0x18, 0, "neither PKU nor OSPKE");
    assert_eq!(edx & (1 << 29), 0, "no IA32_ARCH_CAPABILITIES");
    vcpu.cr4 |= cr4::PKE;
    assert_eq!(cpuid_on(&mut vcpu, &mut host, 7, 0)[2] & 0x18, 1 << 4, "OSPKE mirrors CR4.PKE");
}

#[test]
fn initial_apic_id_is_the_vcpu_index_with_one_logical_processor() {
    for index in [0usize, 1, 7, 255] {
        let mut vcpu = FakeVcpu { index, ..FakeVcpu::flat() };
        let [_, ebx, _, _] = cpuid_on(&mut vcpu, &mut FakeHost::default(), 1, 0);
        assert_eq!(ebx >> 24, index as u32, "initial APIC id");
        assert_eq!((ebx >> 16) & 0xff, 1, "one logical processor per package");
        assert_eq!(ebx & 0xffff, intel_like_cpuid(1, 0)[1] & 0xffff, "brand index and CLFLUSH size stay");
        let [_, _, _, edx] = cpuid_on(&mut vcpu, &mut FakeHost::default(), 0xb, 0);
        assert_eq!(edx, index as u32, "x2APIC id in leaf 0xB");
    }
}

#[test]
fn svm_and_its_feature_leaf_are_hidden_on_amd_like_hosts() {
    let mut host = FakeHost { cpuid: amd_like_cpuid, ..FakeHost::default() };
    let mut vcpu = FakeVcpu::flat();
    let [_, _, ecx, edx] = cpuid_on(&mut vcpu, &mut host, 0x8000_0001, 0);
    assert_eq!(ecx & (1 << 2), 0, "SVM");
    assert_eq!(ecx & ((1 << 1) | (1 << 22)), 0, "CMP legacy and topology extensions");
    assert_eq!(ecx & 1, 1, "LAHF/SAHF stays");
    assert_eq!(edx, amd_like_cpuid(0x8000_0001, 0)[3]);
    assert_eq!(cpuid_on(&mut vcpu, &mut host, 0x8000_000a, 0), [0; 4]);
    assert_eq!(cpuid_on(&mut vcpu, &mut host, 0x8000_0008, 0)[2] & 0xf0ff, 0, "one core per package");
    assert_eq!(cpuid(0x8000_0001, 0)[2] & (1 << 2), 0, "SVM hidden on the Intel-like host too");
}

#[test]
fn the_basalt_leaves() {
    let [max, ebx, ecx, edx] = cpuid(0x4000_0000, 0);
    assert_eq!([ebx, ecx, edx], SIGNATURE);
    let mut name = Vec::new();
    for r in [ebx, ecx, edx] {
        name.extend_from_slice(&r.to_le_bytes());
    }
    assert_eq!(name, b"BasaltHVisor");
    assert!(max >= 0x4000_0010, "the TSC leaf is within range");
    assert_eq!(cpuid(0x4000_0010, 0), [2_000_000, 2_000_000, 0, 0], "TSC and APIC timer kHz");
    for leaf in [0x4000_0001, 0x4000_0002, 0x4000_0011, 0x4000_ffff] {
        assert_eq!(cpuid(leaf, 0), [0; 4], "leaf {leaf:#x}");
    }
}

#[test]
fn the_tsc_leaves_follow_the_host_tsc() {
    for tsc_hz in [1_000_000_000u64, 2_000_000_000, 2_893_437_000, 4_294_967_295, 4_500_000_000, 5_700_000_123] {
        let mut host = FakeHost { tsc_hz, ..FakeHost::default() };
        let mut vcpu = FakeVcpu::flat();
        let [denominator, numerator, crystal, _] = cpuid_on(&mut vcpu, &mut host, 0x15, 0);
        assert!(denominator != 0 && numerator != 0 && crystal != 0, "{tsc_hz}: leaf 0x15 enumerates the TSC");
        // TSC = crystal * EBX / EAX, to within a hertz per unit of the ratio.
        let tsc = crystal as u64 * numerator as u64 / denominator as u64;
        assert!(tsc.abs_diff(tsc_hz) < numerator as u64, "{tsc_hz} Hz reported as {tsc} Hz");
        // As Linux reads it: the crystal in kHz, times the ratio.
        let khz = (crystal as u64 / 1000) * numerator as u64 / denominator as u64;
        assert!(khz.abs_diff(tsc_hz / 1000) <= numerator as u64, "{tsc_hz} Hz read as {khz} kHz");
        let [base, max, bus, _] = cpuid_on(&mut vcpu, &mut host, 0x16, 0);
        assert_eq!((base as u64, max as u64, bus), (tsc_hz / 1_000_000, tsc_hz / 1_000_000, 100));
        let [tsc_khz, apic_khz, _, _] = cpuid_on(&mut vcpu, &mut host, 0x4000_0010, 0);
        assert_eq!((tsc_khz as u64, apic_khz as u64), (tsc_hz / 1000, tsc_hz / 1000));
    }
}

#[test]
fn leaf_0_reaches_the_synthesised_tsc_leaves_and_keeps_the_vendor() {
    let [max, ebx, ecx, edx] = cpuid(0, 0);
    assert!(max >= 0x16, "max basic leaf {max:#x}");
    assert_eq!([ebx, ecx, edx], intel_like_cpuid(0, 0)[1..]);
    // A host with more leaves keeps its maximum.
    let mut host = FakeHost {
        cpuid: |leaf, sub| if leaf == 0 { [0x20, 0, 0, 0] } else { intel_like_cpuid(leaf, sub) },
        ..FakeHost::default()
    };
    assert_eq!(cpuid_on(&mut FakeVcpu::flat(), &mut host, 0, 0)[0], 0x20);
}

#[test]
fn performance_thermal_and_topology_leaves() {
    assert_eq!(cpuid(0xa, 0), [0; 4], "no performance counters");
    assert_eq!(cpuid(6, 0), [1 << 2, 0, 0, 0], "ARAT only");
    assert_eq!(cpuid(0x8000_0007, 0)[3] & (1 << 8), 1 << 8, "invariant TSC");
    let [eax, ebx, ecx, _] = cpuid(0xb, 0);
    assert_eq!((eax, ebx, ecx & 0xff), (0, 1, 0), "one thread at level 0");
    let [eax, ebx, ecx, _] = cpuid(0xb, 1);
    assert_eq!((eax, ebx, ecx & 0xff), (0, 0, 1), "nothing above");
    let mut host = FakeHost {
        cpuid: |leaf, sub| if leaf == 4 { [0xfc00_4121, 1, 2, 3] } else { intel_like_cpuid(leaf, sub) },
        ..FakeHost::default()
    };
    let [eax, ebx, _, _] = cpuid_on(&mut FakeVcpu::flat(), &mut host, 4, 0);
    assert_eq!((eax, ebx), (0x0121, 1), "cache leaf: one core, one thread sharing");
}

#[test]
fn leaf_selection_ignores_the_upper_halves_of_rax_and_rcx() {
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RAX as usize] = 0xffff_ffff_4000_0000;
    let (mut vm, mut host) = machine();
    run(Exit::Cpuid, &mut vcpu, &mut vm, &mut host);
    assert_eq!(vcpu.gprs[RBX as usize], SIGNATURE[0] as u64);
}

#[test]
fn the_cr4_bits_guests_may_set_exclude_vmx_and_smx() {
    let allowed = guest_cr4_allowed(&FakeHost::default());
    assert_eq!(allowed & (cr4::VMXE | cr4::SMXE), 0);
    for bit in [cr4::PAE, cr4::PSE, cr4::PGE, cr4::OSFXSR, cr4::OSXMMEXCPT, cr4::OSXSAVE, cr4::FSGSBASE, cr4::SMEP] {
        assert_ne!(allowed & bit, 0, "{bit:#x}");
    }
    assert_eq!(allowed & cr4::PKE, 0, "protection keys are hidden");
    assert_eq!(allowed & cr4::MCE, 0, "no machine checks");
}

#[test]
fn no_leaf_shows_vmx_or_svm_whatever_the_subleaf() {
    let mut rng = basalt_fuzz::Rng::new(0xc1d);
    for host_cpuid in [intel_like_cpuid as fn(u32, u32) -> [u32; 4], amd_like_cpuid] {
        let mut host = FakeHost { cpuid: host_cpuid, ..FakeHost::default() };
        for _ in 0..2000 {
            let leaf = match rng.below(4) {
                0 => rng.below(0x20) as u32,
                1 => 0x4000_0000 + rng.below(0x20) as u32,
                2 => 0x8000_0000 + rng.below(0x20) as u32,
                _ => rng.next_u64() as u32,
            };
            let subleaf = if rng.chance(2) { rng.below(4) as u32 } else { rng.next_u64() as u32 };
            let mut vcpu = FakeVcpu { index: rng.index(300), cr4: rng.next_u64(), ..FakeVcpu::flat() };
            let regs = cpuid_on(&mut vcpu, &mut host, leaf, subleaf);
            match leaf {
                1 => assert_eq!(regs[2] & LEAF1_ECX_VMX, 0),
                0x8000_0001 => assert_eq!(regs[2] & (1 << 2), 0),
                0x8000_000a => assert_eq!(regs, [0; 4]),
                _ => {}
            }
        }
    }
}

#[test]
fn tsc_adjust_is_offered_whatever_the_host_has() {
    // The MSR is emulated (msr.rs); neither test host reports the bit.
    for cpuid_of in [intel_like_cpuid as fn(u32, u32) -> [u32; 4], amd_like_cpuid] {
        assert_eq!(cpuid_of(7, 0)[1] & (1 << 1), 0);
        let mut host = FakeHost { cpuid: cpuid_of, ..FakeHost::default() };
        let mut vcpu = FakeVcpu::long_mode();
        assert_ne!(cpuid_on(&mut vcpu, &mut host, 7, 0)[1] & (1 << 1), 0);
    }
}

#[test]
fn x2apic_and_the_apic_bit_are_offered_whatever_the_host_has() {
    // A host without either: the local APIC model has both.
    let mut host = FakeHost {
        cpuid: |leaf, sub| match leaf {
            1 => {
                let [a, b, c, d] = intel_like_cpuid(1, sub);
                [a, b, c & !LEAF1_ECX_X2APIC, d & !LEAF1_EDX_APIC]
            }
            _ => intel_like_cpuid(leaf, sub),
        },
        ..FakeHost::default()
    };
    let [_, _, ecx, edx] = cpuid_on(&mut FakeVcpu::flat(), &mut host, 1, 0);
    assert_ne!(ecx & LEAF1_ECX_X2APIC, 0);
    assert_ne!(edx & LEAF1_EDX_APIC, 0);
}

#[test]
fn the_apic_bit_follows_each_vcpus_apic_base() {
    use devices::lapic::apic_base::{BSP, EN, EXTD};
    use devices::layout::LAPIC_BASE;
    let mut vm = FakeVm::new(2, 0x1000);
    let mut host = FakeHost::default();
    let apic_bit = |vm: &mut FakeVm, host: &mut FakeHost, index: usize| {
        let mut vcpu = FakeVcpu { index, ..FakeVcpu::flat() };
        cpuid_in(&mut vcpu, vm, host, 1, 0)[3] & LEAF1_EDX_APIC != 0
    };
    assert!(apic_bit(&mut vm, &mut host, 0) && apic_bit(&mut vm, &mut host, 1));
    // vCPU 1 turns its APIC off: only its CPUID says so.
    vm.chipset.set_apic_base(1, LAPIC_BASE, true, 48).unwrap();
    assert!(apic_bit(&mut vm, &mut host, 0));
    assert!(!apic_bit(&mut vm, &mut host, 1));
    // Back on, and in x2APIC mode: present.
    vm.chipset.set_apic_base(1, LAPIC_BASE | EN, true, 48).unwrap();
    assert!(apic_bit(&mut vm, &mut host, 1));
    vm.chipset.set_apic_base(0, LAPIC_BASE | BSP | EN | EXTD, true, 48).unwrap();
    assert!(apic_bit(&mut vm, &mut host, 0));
    // Other leaves do not change with it.
    vm.chipset.set_apic_base(1, LAPIC_BASE, true, 48).unwrap();
    let mut vcpu = FakeVcpu { index: 1, ..FakeVcpu::flat() };
    assert_eq!(cpuid_in(&mut vcpu, &mut vm, &mut host, 7, 0), cpuid(7, 0));
}

/// A vendor's own leaves: leaf 0 and the brand string (8000_0002h-8000_0004h),
/// and 8000_0001h EDX (SYSCALL, NX, LM...).
fn vendor_leaves(host_cpuid: fn(u32, u32) -> [u32; 4]) -> [(u32, [u32; 4]); 5] {
    [0, 0x8000_0001, 0x8000_0002, 0x8000_0003, 0x8000_0004].map(|leaf| (leaf, host_cpuid(leaf, 0)))
}

#[test]
fn guests_see_the_hosts_vendor_so_vendor_specific_instructions_agree_with_it() {
    // SYSCALL from compatibility mode is #UD on Intel and a system call on
    // AMD, and the guest's own CPU runs it: what the guest is told (leaf 0)
    // must be that CPU's vendor, and 8000_0001h's SYSCALL bit that CPU's.
    fn amd_with_brand(leaf: u32, subleaf: u32) -> [u32; 4] {
        match leaf {
            0x8000_0002 => [u32::from_le_bytes(*b"AMD "), u32::from_le_bytes(*b"EPYC"), 0x20202020, 0x20202020],
            0x8000_0003 | 0x8000_0004 => [0x20202020; 4],
            _ => amd_like_cpuid(leaf, subleaf),
        }
    }
    for (host_cpuid, vendor) in
        [(intel_like_cpuid as fn(u32, u32) -> [u32; 4], b"GenuineIntel"), (amd_with_brand, b"AuthenticAMD")]
    {
        let mut host = FakeHost { cpuid: host_cpuid, ..FakeHost::default() };
        let mut vcpu = FakeVcpu::long_mode();
        let [_, ebx, ecx, edx] = cpuid_on(&mut vcpu, &mut host, 0, 0);
        let mut seen = Vec::new();
        for register in [ebx, edx, ecx] {
            seen.extend_from_slice(&register.to_le_bytes());
        }
        assert_eq!(seen, vendor, "leaf 0 names the host's vendor");
        for (leaf, host_regs) in vendor_leaves(host_cpuid) {
            let regs = cpuid_on(&mut vcpu, &mut host, leaf, 0);
            match leaf {
                0 => assert_eq!(regs[1..], host_regs[1..]),
                // SYSCALL/SYSRET (bit 11), NX, long mode: the host's.
                0x8000_0001 => assert_eq!(regs[3], host_regs[3], "8000_0001h EDX"),
                _ => assert_eq!(regs, host_regs, "brand leaf {leaf:#x}"),
            }
        }
    }
}

/// The run loop's fast path answers every leaf as `dispatch` does, whatever
/// the vCPU's CR4 and APIC state, and declines a single step (whose #DB the
/// long way delivers) having changed nothing.
#[test]
fn the_cpuid_fast_path_matches_dispatch_or_declines() {
    use devices::layout::LAPIC_BASE;
    const TF: u64 = 1 << 8;
    const RF: u64 = 1 << 16;
    let mut host = FakeHost::default();
    let load = |vcpu: &mut FakeVcpu, leaf: u32, subleaf: u32| {
        vcpu.gprs[RAX as usize] = 0xdead_beef_0000_0000 | leaf as u64;
        vcpu.gprs[RCX as usize] = 0xfeed_f00d_0000_0000 | subleaf as u64;
        vcpu.gprs[RDX as usize] = u64::MAX;
        vcpu.gprs[RBX as usize] = u64::MAX;
    };
    let leaves = (0..0x20).chain(0x4000_0000..0x4000_0012).chain(0x8000_0000..0x8000_0020).chain([0x4000_0100]);
    for leaf in leaves {
        for subleaf in [0, 1, 2, 3, 0x41] {
            for cr4 in [0, cr4::OSXSAVE, cr4::PKE, cr4::OSXSAVE | cr4::PKE] {
                for (index, apic_on) in [(0, true), (1, true), (1, false)] {
                    let mut vm = FakeVm::new(2, 0x1000);
                    if !apic_on {
                        vm.chipset.set_apic_base(index, LAPIC_BASE, true, 48).unwrap();
                    }
                    let mut fast = FakeVcpu { index, cr4, rflags: 2 | RF, ..FakeVcpu::flat() };
                    load(&mut fast, leaf, subleaf);
                    let mut slow = fast.clone();
                    // Unlocked, leaf 1 (the APIC's presence) is declined.
                    let mut unlocked = fast.clone();
                    let done = crate::fast_cpuid(&mut unlocked, None, &host);
                    assert_eq!(done, leaf != 1, "leaf {leaf:#x}");
                    if !done {
                        assert_eq!(format!("{unlocked:?}"), format!("{fast:?}"));
                    }
                    assert!(crate::fast_cpuid(&mut fast, Some(&vm.chipset), &host));
                    if done {
                        assert_eq!(format!("{unlocked:?}"), format!("{fast:?}"));
                    }
                    assert_eq!(run(Exit::Cpuid, &mut slow, &mut vm, &mut host), Outcome::Resume);
                    assert_eq!(
                        format!("{fast:?}"),
                        format!("{slow:?}"),
                        "leaf {leaf:#x}/{subleaf} cr4 {cr4:#x} vcpu {index} apic {apic_on}"
                    );
                    assert_eq!((fast.skipped, fast.rflags & RF, fast.injected), (1, 0, None));
                }
            }
        }
    }
    // Declined: a single step pending.
    let vm = FakeVm::new(1, 0x1000);
    let mut vcpu = FakeVcpu { rflags: 2 | TF, ..FakeVcpu::flat() };
    load(&mut vcpu, 1, 0);
    let before = format!("{vcpu:?}");
    assert!(!crate::fast_cpuid(&mut vcpu, Some(&vm.chipset), &host));
    assert_eq!(format!("{vcpu:?}"), before);
    load(&mut vcpu, 0, 0);
    let before = format!("{vcpu:?}");
    assert!(!crate::fast_cpuid(&mut vcpu, None, &host));
    assert_eq!(format!("{vcpu:?}"), before);
}
