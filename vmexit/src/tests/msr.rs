//! RDMSR and WRMSR: the few MSRs Basalt emulates, and #GP for the rest.

use super::*;
use arch::control::{cr0, efer};
use devices::layout::LAPIC_BASE;

const IA32_APIC_BASE: u32 = 0x1b;
const IA32_TSC_ADJUST: u32 = 0x3b;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const IA32_EFER: u32 = 0xc000_0080;

/// RDMSR of `msr`: the value from EDX:EAX, checking both were written as
/// 32-bit halves and the instruction completed.
fn rdmsr(vcpu: &mut FakeVcpu, vm: &mut FakeVm, msr: u32) -> u64 {
    let mut host = FakeHost::default();
    vcpu.gprs[RCX as usize] = 0xffff_ffff_0000_0000 | msr as u64;
    vcpu.gprs[RAX as usize] = u64::MAX;
    vcpu.gprs[RDX as usize] = u64::MAX;
    let (rip, skipped) = (vcpu.rip, vcpu.skipped);
    let outcome = run(Exit::Rdmsr, vcpu, vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.injected, None, "RDMSR {msr:#x}");
    assert_eq!((vcpu.rip, vcpu.skipped), (rip + vcpu.instruction_length, skipped + 1));
    let (eax, edx) = (vcpu.gprs[RAX as usize], vcpu.gprs[RDX as usize]);
    assert_eq!((eax >> 32, edx >> 32), (0, 0), "RDMSR {msr:#x} writes 32-bit halves");
    edx << 32 | eax
}

/// WRMSR of `value` to `msr`, with garbage in the upper halves of RAX/RDX
/// (WRMSR takes EDX:EAX).
fn wrmsr(vcpu: &mut FakeVcpu, vm: &mut FakeVm, msr: u32, value: u64) -> Outcome {
    let mut host = FakeHost::default();
    vcpu.gprs[RCX as usize] = 0xabcd_0000_0000_0000 | msr as u64;
    vcpu.gprs[RAX as usize] = 0x5555_5555_0000_0000 | (value & 0xffff_ffff);
    vcpu.gprs[RDX as usize] = 0xaaaa_aaaa_0000_0000 | (value >> 32);
    run(Exit::Wrmsr, vcpu, vm, &mut host)
}

#[test]
fn tsc_deadline_round_trips_through_the_local_apic() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    // Outside TSC-deadline mode the MSR reads 0 and writes are ignored.
    assert_eq!(wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, 0x1234), Outcome::Resume);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE), 0);
    // LVT timer: TSC-deadline mode, vector 0xef.
    vm.chipset.mmio_write(0, LAPIC_BASE + 0xf0, 4, 0x1ff, 0, &mut vm.memory);
    vm.chipset.mmio_write(0, LAPIC_BASE + 0x320, 4, (2 << 17) | 0xef, 0, &mut vm.memory);
    let deadline = 0x0000_0123_4567_89ab;
    let skipped = vcpu.skipped;
    assert_eq!(wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, deadline), Outcome::Resume);
    assert_eq!((vcpu.skipped, vcpu.injected), (skipped + 1, None));
    assert_eq!(vm.chipset.tsc_deadline(0), deadline, "the chipset has the value");
    assert_eq!(vm.chipset.next_deadline(0), Some(deadline), "and the timer is armed");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE), deadline);
    // Each vCPU has its own.
    let mut vm2 = FakeVm::new(2, RAM);
    let mut other = FakeVcpu { index: 1, ..FakeVcpu::flat() };
    vm2.chipset.mmio_write(1, LAPIC_BASE + 0x320, 4, 2 << 17, 0, &mut vm2.memory);
    wrmsr(&mut other, &mut vm2, IA32_TSC_DEADLINE, 77);
    assert_eq!((vm2.chipset.tsc_deadline(1), vm2.chipset.tsc_deadline(0)), (77, 0));
}

#[test]
fn unknown_msrs_are_gp_and_not_skipped() {
    for msr in [0u32, 0x1, 0x3a + 0x100, 0x8b + 1, 0x270, 0x480, 0xc000_0081, 0xc000_0100, 0x4000_0000, u32::MAX] {
        let (mut vm, mut host) = machine();
        let mut vcpu = FakeVcpu::flat();
        vcpu.gprs[RCX as usize] = msr as u64;
        vcpu.gprs[RAX as usize] = 0x1111;
        vcpu.gprs[RDX as usize] = 0x2222;
        let outcome = run(Exit::Rdmsr, &mut vcpu, &mut vm, &mut host);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!((vcpu.gprs[RAX as usize], vcpu.gprs[RDX as usize]), (0x1111, 0x2222), "RDMSR {msr:#x}");
        let mut vcpu = FakeVcpu::flat();
        vcpu.gprs[RCX as usize] = msr as u64;
        let outcome = run(Exit::Wrmsr, &mut vcpu, &mut vm, &mut host);
        assert_gp(&vcpu, &outcome, 0x1000);
    }
}

#[test]
fn the_emulated_msrs_read_what_basalt_offers() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x10), FakeHost::default().now, "TSC is the host's clock");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x3a), 1, "feature control locked, VMX off");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x8b) >> 32, 1, "a microcode revision");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0xfe), 0, "no MTRRs to report");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST), 0);
}

#[test]
fn tsc_adjust_takes_only_zero() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    assert_eq!(wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, 0), Outcome::Resume);
    assert_eq!((vcpu.skipped, vcpu.injected), (1, None));
    let mut vcpu = FakeVcpu::flat();
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, 1 << 40);
    assert_gp(&vcpu, &outcome, 0x1000);
}

#[test]
fn apic_base_has_the_bsp_bit_only_on_vcpu_0() {
    let mut vm = FakeVm::new(3, RAM);
    for (index, expected) in [(0, 0xfee0_0900u64), (1, 0xfee0_0800), (2, 0xfee0_0800)] {
        let mut vcpu = FakeVcpu { index, ..FakeVcpu::flat() };
        assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_APIC_BASE), expected, "vCPU {index}");
    }
    // Relocation is not modelled: the write is accepted and changes nothing.
    let mut vcpu = FakeVcpu::flat();
    assert_eq!(wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, 0xfed0_0900), Outcome::Resume);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_APIC_BASE), 0xfee0_0900);
}

#[test]
fn efer_reads_what_the_vcpu_has() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::long_mode();
    vcpu.efer |= efer::NXE | efer::SCE;
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_EFER), efer::LME | efer::LMA | efer::NXE | efer::SCE);
}

#[test]
fn efer_writes_with_reserved_bits_are_gp() {
    // SVME (12), LMSLE (13), FFXSR (14), TCE (15), bit 1, and the top.
    for bit in [1, 2, 9, 12, 13, 14, 15, 16, 32, 63] {
        let (mut vm, _) = machine();
        let mut vcpu = FakeVcpu::flat();
        let outcome = wrmsr(&mut vcpu, &mut vm, IA32_EFER, efer::SCE | 1 << bit);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!(vcpu.efer, 0, "bit {bit}: EFER unchanged");
    }
}

#[test]
fn efer_writes_keep_long_mode_as_it_is() {
    let (mut vm, _) = machine();
    // In long mode, a write without LMA (it is read-only) keeps it set.
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_EFER, efer::LME | efer::NXE | efer::SCE);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, efer::LME | efer::LMA | efer::NXE | efer::SCE);

    // Without paging, LME is only armed: LMA written or not, long mode is off.
    let mut vcpu = FakeVcpu::flat();
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_EFER, efer::LME | efer::LMA);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, efer::LME);

    // LME cannot change while paging is on, either way.
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_EFER, efer::NXE);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, efer::LME | efer::LMA);
    let mut vcpu = FakeVcpu { cr0: cr0::PE | cr0::PG, ..FakeVcpu::flat() };
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_EFER, efer::LME);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, 0);

    // 32-bit paging may turn on NXE (and the PAE tables then honour XD).
    let mut vcpu = FakeVcpu { cr0: cr0::PE | cr0::PG, ..FakeVcpu::flat() };
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_EFER, efer::NXE);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, efer::NXE);
}

#[test]
fn mtrr_and_other_ignored_writes_complete() {
    let (mut vm, _) = machine();
    for msr in [0x10, 0x200, 0x26f, 0x2ff, 0x1a0, 0x8b] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = wrmsr(&mut vcpu, &mut vm, msr, 0x1234_5678_9abc);
        assert_done(&vcpu, &outcome, 0x1000);
    }
}

/// An AMD host: vendor "AuthenticAMD" in leaf 0, the rest as the default.
fn amd_host() -> FakeHost {
    fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
        match leaf {
            0 => [0xd, u32::from_le_bytes(*b"Auth"), u32::from_le_bytes(*b"cAMD"), u32::from_le_bytes(*b"enti")],
            _ => crate::fake::intel_like_cpuid(leaf, subleaf),
        }
    }
    FakeHost { cpuid, ..FakeHost::default() }
}

#[test]
fn amd_msrs_exist_only_for_guests_on_amd() {
    const HWCR: u32 = 0xc001_0015;
    const NB_CFG: u32 = 0xc001_001f;
    let msr = |host: &mut FakeHost, exit: Exit, msr: u32, value: u64| {
        let (mut vcpu, mut vm) = (FakeVcpu::long_mode(), FakeVm::new(1, 0x1000));
        vcpu.gprs[RCX as usize] = msr as u64;
        vcpu.gprs[RAX as usize] = value & 0xffff_ffff;
        vcpu.gprs[RDX as usize] = value >> 32;
        let rip = vcpu.rip;
        let outcome = run(exit, &mut vcpu, &mut vm, host);
        (outcome, vcpu, rip)
    };
    // On AMD: HWCR reads with TscFreqSel (Linux checks that the TSC runs at
    // P0), NB_CFG reads 0, and writes to both are taken.
    let mut amd = amd_host();
    let (outcome, vcpu, rip) = msr(&mut amd, Exit::Rdmsr, HWCR, 0);
    assert_done(&vcpu, &outcome, rip);
    assert_eq!(vcpu.gprs[RAX as usize] | vcpu.gprs[RDX as usize] << 32, 1 << 24);
    let (outcome, vcpu, rip) = msr(&mut amd, Exit::Rdmsr, NB_CFG, 0);
    assert_done(&vcpu, &outcome, rip);
    assert_eq!(vcpu.gprs[RAX as usize] | vcpu.gprs[RDX as usize], 0);
    for target in [HWCR, NB_CFG] {
        let (outcome, vcpu, rip) = msr(&mut amd, Exit::Wrmsr, target, 1 << 46);
        assert_done(&vcpu, &outcome, rip);
    }
    // On Intel they do not exist: #GP, as the CPU would raise.
    let mut intel = FakeHost::default();
    for (exit, target) in [(Exit::Rdmsr, HWCR), (Exit::Rdmsr, NB_CFG), (Exit::Wrmsr, HWCR), (Exit::Wrmsr, NB_CFG)] {
        let (outcome, vcpu, rip) = msr(&mut intel, exit, target, 0);
        assert_gp(&vcpu, &outcome, rip);
    }
}
