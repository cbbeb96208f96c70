//! RDMSR and WRMSR: the few MSRs Basalt emulates, and #GP for the rest.

use super::*;
use crate::fast_tsc_deadline;
use crate::msr::misc_enable;
use arch::control::{cr0, efer};
use devices::lapic::apic_base::{BSP, EN, EXTD};
use devices::layout::LAPIC_BASE;

const IA32_APIC_BASE: u32 = 0x1b;
const IA32_TSC_ADJUST: u32 = 0x3b;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const IA32_EFER: u32 = 0xc000_0080;
const IA32_MISC_ENABLE: u32 = 0x1a0;

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

/// The run loop's fast path does what `wrmsr` does for a TSC-deadline write
/// it takes, and leaves everything else (other MSRs, a single step, a
/// deadline not ahead) untouched for `dispatch`.
#[test]
fn the_tsc_deadline_fast_path_matches_wrmsr_or_declines() {
    let now = 1_000_000u64;
    let set_up = |offset: u64, rflags: u64| {
        let (mut vm, _) = machine();
        vm.chipset.mmio_write(0, LAPIC_BASE + 0xf0, 4, 0x1ff, 0, &mut vm.memory);
        vm.chipset.mmio_write(0, LAPIC_BASE + 0x320, 4, (2 << 17) | 0xef, 0, &mut vm.memory);
        let vcpu = FakeVcpu { tsc_offset: offset, rflags, ..FakeVcpu::flat() };
        (vm, vcpu)
    };
    let load = |vcpu: &mut FakeVcpu, msr: u32, value: u64| {
        vcpu.gprs[RCX as usize] = 0xabcd_0000_0000_0000 | msr as u64;
        vcpu.gprs[RAX as usize] = 0x5555_5555_0000_0000 | (value & 0xffff_ffff);
        vcpu.gprs[RDX as usize] = 0xaaaa_aaaa_0000_0000 | (value >> 32);
    };
    const RF: u64 = 1 << 16;
    const TF: u64 = 1 << 8;
    for offset in [0u64, 5_000, 0u64.wrapping_sub(600_000)] {
        let guest_now = now.wrapping_add(offset);
        for (value, taken) in [
            (guest_now + 1, true),
            (guest_now + 777_777, true),
            (0, true),
            (guest_now, false),
            (guest_now.wrapping_sub(1), false),
        ] {
            let (fast_vm, mut fast) = set_up(offset, 2 | RF);
            load(&mut fast, IA32_TSC_DEADLINE, value);
            let before = (fast.rip, fast.rflags, fast.skipped);
            assert_eq!(fast_tsc_deadline(&mut fast, &fast_vm.chipset, now), taken, "{value:#x} offset {offset:#x}");
            if !taken {
                assert_eq!((fast.rip, fast.rflags, fast.skipped), before);
                continue;
            }
            let (mut slow_vm, mut slow) = set_up(offset, 2 | RF);
            load(&mut slow, IA32_TSC_DEADLINE, value);
            let mut host = FakeHost { now, ..FakeHost::default() };
            assert_eq!(run(Exit::Wrmsr, &mut slow, &mut slow_vm, &mut host), Outcome::Resume);
            assert_eq!(
                (fast.rip, fast.rflags, fast.skipped, fast.injected),
                (slow.rip, slow.rflags, slow.skipped, None)
            );
            assert_eq!(fast.rflags & RF, 0);
            assert_eq!(fast_vm.chipset.tsc_deadline(0), slow_vm.chipset.tsc_deadline(0));
            assert_eq!(fast_vm.chipset.next_deadline(0), slow_vm.chipset.next_deadline(0));
        }
    }
    // Declined: another MSR, or a single step pending.
    let (vm, mut vcpu) = set_up(0, 2);
    load(&mut vcpu, IA32_TSC_ADJUST, now + 10);
    assert!(!fast_tsc_deadline(&mut vcpu, &vm.chipset, now));
    let (vm, mut vcpu) = set_up(0, 2 | TF);
    load(&mut vcpu, IA32_TSC_DEADLINE, now + 10);
    assert!(!fast_tsc_deadline(&mut vcpu, &vm.chipset, now));
    assert_eq!((vcpu.skipped, vm.chipset.tsc_deadline(0)), (0, 0));
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
fn tsc_adjust_moves_the_tsc_and_a_tsc_write_moves_tsc_adjust() {
    const IA32_TSC: u32 = 0x10;
    let now = FakeHost::default().now;
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    assert_eq!((rdmsr(&mut vcpu, &mut vm, IA32_TSC), rdmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST)), (now, 0));
    // TSC_ADJUST by d: the TSC moves by d, in the CPU's offset.
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, 5000);
    assert_eq!((outcome, vcpu.injected, vcpu.skipped), (Outcome::Resume, None, 3));
    assert_eq!(vcpu.tsc_offset, 5000, "RDTSC reads it through the offset");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC), now + 5000);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST), 5000);
    assert_eq!(vm.chipset.vcpu_msrs(0).tsc_offset, 5000, "kept for a restart after INIT");
    // Negative adjustments, down past 0: the TSC wraps as the CPU's does.
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, -3000i64 as u64);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC), now - 3000);
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, i64::MIN as u64);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC), now.wrapping_add(i64::MIN as u64));
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, u64::MAX);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC), now - 1);
    // A TSC write: the TSC reads the value, TSC_ADJUST moves by as much as it.
    let adjust = rdmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST);
    let tsc = rdmsr(&mut vcpu, &mut vm, IA32_TSC);
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_TSC, 10);
    assert_eq!((outcome, vcpu.injected), (Outcome::Resume, None));
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC), 10);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST), adjust.wrapping_add(10u64.wrapping_sub(tsc)));
    for value in [0, 1, u64::MAX, 1 << 63, now] {
        wrmsr(&mut vcpu, &mut vm, IA32_TSC, value);
        assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC), value);
        assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST), value.wrapping_sub(now));
        assert_eq!(vm.chipset.vcpu_msrs(0).tsc_offset, vcpu.tsc_offset);
    }
    // Per vCPU: another one's TSC stays the host's.
    let mut vm = FakeVm::new(2, RAM);
    let mut first = FakeVcpu::flat();
    let mut second = FakeVcpu { index: 1, ..FakeVcpu::flat() };
    wrmsr(&mut first, &mut vm, IA32_TSC_ADJUST, 77);
    assert_eq!((rdmsr(&mut first, &mut vm, IA32_TSC), rdmsr(&mut second, &mut vm, IA32_TSC)), (now + 77, now));
    assert_eq!((vm.chipset.vcpu_msrs(0).tsc_offset, vm.chipset.vcpu_msrs(1).tsc_offset), (77, 0));
}

/// vCPU 0's local APIC in TSC-deadline mode, vector 0xef.
fn tsc_deadline_mode(vm: &mut FakeVm) {
    vm.chipset.mmio_write(0, LAPIC_BASE + 0xf0, 4, 0x1ff, 0, &mut vm.memory);
    vm.chipset.mmio_write(0, LAPIC_BASE + 0x320, 4, (2 << 17) | 0xef, 0, &mut vm.memory);
}

#[test]
fn the_tsc_deadline_is_in_the_guests_tsc_and_the_timer_in_the_hosts() {
    let now = FakeHost::default().now;
    let (mut vm, _) = machine();
    tsc_deadline_mode(&mut vm);
    let mut vcpu = FakeVcpu::flat();
    // The guest's TSC 1000 ahead: a deadline 100_000 ahead of it is 100_000
    // host ticks away, and reads back as written.
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, 1000);
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, now + 1000 + 100_000);
    assert_eq!(vm.chipset.next_deadline(0), Some(now + 100_000));
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE), now + 101_000);
    // Moving the TSC moves the host time the armed deadline falls at: 500
    // further ahead, 500 host ticks sooner.
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_ADJUST, 1500);
    assert_eq!(vm.chipset.next_deadline(0), Some(now + 99_500));
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE), now + 101_000, "the guest's value stays");
    vm.chipset.poll(0, now + 99_499, &mut vm.memory);
    assert!(!vm.chipset.has_interrupt(0));
    vm.chipset.poll(0, now + 99_500, &mut vm.memory);
    assert_eq!(vm.chipset.take_interrupt(0), Some(0xef));
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE), 0, "disarmed once it fired");
    // A deadline in the guest's past fires at once, however far back.
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, 1);
    assert_eq!(vm.chipset.next_deadline(0), Some(now));
    // 0 disarms.
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, 0);
    assert_eq!((vm.chipset.next_deadline(0), rdmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE)), (None, 0));
    // The guest's TSC set back to 0: u64::MAX is further than the host's TSC
    // can count, so it saturates there, and still reads back as written.
    wrmsr(&mut vcpu, &mut vm, 0x10, 0);
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, u64::MAX);
    assert_eq!(vm.chipset.next_deadline(0), Some(u64::MAX));
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE), u64::MAX);
    // The guest's TSC about to wrap: a small deadline is behind it (the CPU
    // compares unsigned), u64::MAX ten ticks ahead.
    wrmsr(&mut vcpu, &mut vm, 0x10, u64::MAX - 10);
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, 5);
    assert_eq!(vm.chipset.next_deadline(0), Some(now));
    wrmsr(&mut vcpu, &mut vm, IA32_TSC_DEADLINE, u64::MAX);
    assert_eq!(vm.chipset.next_deadline(0), Some(now + 10));
}

#[test]
fn tsc_conversions_take_any_value() {
    use crate::tsc::{deadline_on_host, guest, offset_for};
    let values = [0, 1, 2, 1000, 1 << 32, i64::MAX as u64, 1 << 63, u64::MAX - 1, u64::MAX];
    for &host in &values {
        for &offset in &values {
            let g = guest(host, offset);
            assert_eq!(offset_for(g, host), offset, "the offset is what makes the TSC read its value");
            for &deadline in &values {
                let at = deadline_on_host(deadline, offset, host);
                assert!(at >= host, "never in the host's past");
                if deadline <= g {
                    assert_eq!(at, host, "{deadline:#x} behind {g:#x} fires at once");
                } else {
                    // The guest's TSC reaches the deadline at `at`, unless that
                    // is past the host's last tick.
                    let ahead = (deadline - g) as u128;
                    assert_eq!(at as u128, (host as u128 + ahead).min(u64::MAX as u128));
                }
            }
        }
    }
}

#[test]
fn apic_base_has_the_bsp_bit_only_on_vcpu_0() {
    let mut vm = FakeVm::new(3, RAM);
    for (index, expected) in [(0, 0xfee0_0900u64), (1, 0xfee0_0800), (2, 0xfee0_0800)] {
        let mut vcpu = FakeVcpu { index, ..FakeVcpu::flat() };
        assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_APIC_BASE), expected, "vCPU {index}");
    }
    // BSP is the vCPU's, whatever is written.
    let mut vcpu = FakeVcpu { index: 1, ..FakeVcpu::flat() };
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, LAPIC_BASE | EN | BSP);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_APIC_BASE), LAPIC_BASE | EN);
    let mut vcpu = FakeVcpu::flat();
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, LAPIC_BASE | EN);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, IA32_APIC_BASE), LAPIC_BASE | EN | BSP);
}

/// WRMSR of IA32_APIC_BASE on vCPU 0 of `vm`: whether it completed (else
/// #GP, and the instruction was not skipped).
fn set_apic_base(vm: &mut FakeVm, value: u64) -> bool {
    let mut vcpu = FakeVcpu::flat();
    let outcome = wrmsr(&mut vcpu, vm, IA32_APIC_BASE, value);
    if vcpu.injected.is_some() {
        assert_gp(&vcpu, &outcome, 0x1000);
        return false;
    }
    assert_done(&vcpu, &outcome, 0x1000);
    true
}

fn apic_base(vm: &mut FakeVm) -> u64 {
    rdmsr(&mut FakeVcpu::flat(), vm, IA32_APIC_BASE)
}

#[test]
fn apic_base_writes_with_reserved_bits_or_another_base_are_gp() {
    let (mut vm, _) = machine();
    let base = LAPIC_BASE | BSP | EN;
    // Bits 0-7 and 9; from MAXPHYADDR (48 on the fake host) up; bits of the
    // address: relocation is refused, not ignored.
    for bad in [1, 1 << 7, 1 << 9, 1 << 48, 1 << 63, 1 << 12, 1 << 32, 1 << 40] {
        assert!(!set_apic_base(&mut vm, base | bad), "{bad:#x}");
        assert_eq!(apic_base(&mut vm), base, "{bad:#x}: unchanged");
    }
    for relocated in [0, 0xfed0_0000, 0xfee0_1000, 0x1_fee0_0000] {
        assert!(!set_apic_base(&mut vm, relocated | BSP | EN), "{relocated:#x}");
    }
    // What is there already is taken.
    assert!(set_apic_base(&mut vm, base));
    assert!(set_apic_base(&mut vm, base & !BSP), "BSP is read-only, not reserved");
}

#[test]
fn apic_base_moves_between_modes_only_as_the_sdm_allows() {
    let xapic = LAPIC_BASE | BSP | EN;
    let x2apic = xapic | EXTD;
    let disabled = LAPIC_BASE | BSP;
    let invalid = LAPIC_BASE | BSP | EXTD;
    // (from, to, allowed), from every state (the SDM's "x2APIC State Transitions").
    for (from, to, allowed) in [
        (xapic, x2apic, true),
        (xapic, disabled, true),
        (xapic, invalid, false),
        (x2apic, xapic, false),
        (x2apic, disabled, true),
        (x2apic, invalid, false),
        (disabled, xapic, true),
        (disabled, x2apic, false),
        (disabled, invalid, false),
    ] {
        let (mut vm, _) = machine();
        let path: &[u64] = match from {
            f if f == x2apic => &[x2apic],
            f if f == disabled => &[disabled],
            _ => &[],
        };
        for &step in path {
            assert!(set_apic_base(&mut vm, step));
        }
        assert_eq!(apic_base(&mut vm), from);
        assert_eq!(set_apic_base(&mut vm, to), allowed, "{from:#x} -> {to:#x}");
        assert_eq!(apic_base(&mut vm), if allowed { to } else { from }, "{from:#x} -> {to:#x}");
    }
}

#[test]
fn a_disabled_apic_has_no_page_and_comes_back_reset() {
    let (mut vm, _) = machine();
    let svr = LAPIC_BASE + 0xf0;
    vm.chipset.mmio_write(0, svr, 4, 0x1ff, 0, &mut vm.memory);
    vm.chipset.mmio_write(0, LAPIC_BASE + 0x80, 4, 0x20, 0, &mut vm.memory);
    assert!(set_apic_base(&mut vm, LAPIC_BASE | BSP));
    // Unclaimed memory: all ones, writes dropped, both counted.
    let unclaimed = vm.chipset.unclaimed().1;
    assert_eq!(vm.chipset.mmio_read(0, svr, 4, 0), 0xffff_ffff);
    vm.chipset.mmio_write(0, svr, 4, 0x1ff, 0, &mut vm.memory);
    assert_eq!(
        (vm.chipset.unclaimed().1.reads, vm.chipset.unclaimed().1.writes),
        (unclaimed.reads + 1, unclaimed.writes + 1)
    );
    // An IPI to it (from vCPU 1 of a two-vCPU VM) is lost.
    let mut vm2 = FakeVm::new(2, 0x1000);
    vm2.chipset.mmio_write(0, svr, 4, 0x1ff, 0, &mut vm2.memory);
    vm2.chipset.mmio_write(1, svr, 4, 0x1ff, 0, &mut vm2.memory);
    set_apic_base(&mut vm2, LAPIC_BASE | BSP);
    vm2.chipset.mmio_write(1, LAPIC_BASE + 0x300, 4, 0x000c_0041, 0, &mut vm2.memory);
    assert!(!vm2.chipset.has_interrupt(0), "all-excluding-self reached a disabled APIC");
    // Back on: the power-up state (software-disabled, TPR 0).
    assert!(set_apic_base(&mut vm, LAPIC_BASE | BSP | EN));
    assert_eq!(vm.chipset.mmio_read(0, svr, 4, 0), 0xff);
    assert_eq!(vm.chipset.mmio_read(0, LAPIC_BASE + 0x80, 4, 0), 0);
}

#[test]
fn x2apic_msrs_are_the_apic_registers_in_x2apic_mode_only() {
    let mut vm = FakeVm::new(2, 0x1000);
    let mut vcpu = FakeVcpu { index: 1, ..FakeVcpu::long_mode() };
    // xAPIC mode: every x2APIC MSR is #GP, both ways.
    for msr in [0x802, 0x808, 0x80b, 0x830, 0x83f] {
        let mut probe = vcpu.clone();
        probe.gprs[RCX as usize] = msr;
        let outcome = run(Exit::Rdmsr, &mut probe, &mut vm, &mut FakeHost::default());
        assert_gp(&probe, &outcome, 0x1000);
        let mut probe = vcpu.clone();
        let outcome = wrmsr(&mut probe, &mut vm, msr as u32, 0);
        assert_gp(&probe, &outcome, 0x1000);
    }
    assert!(wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, LAPIC_BASE | EN | EXTD) == Outcome::Resume);
    assert_eq!(vcpu.injected, None);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x802), 1, "ID: the full x2APIC ID");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x80d), 1 << 1, "LDR: cluster 0, member 1");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x803) & 0xff, 0x14, "version");
    // The page is gone: unclaimed.
    assert_eq!(vm.chipset.mmio_read(1, LAPIC_BASE + 0x20, 4, 0), 0xffff_ffff);
    // SVR on, TPR through MSR 0x808, which CR8 reads too.
    for (msr, value) in [(0x80f, 0x1ff), (0x808, 0x30)] {
        let skipped = vcpu.skipped;
        assert_eq!(wrmsr(&mut vcpu, &mut vm, msr, value), Outcome::Resume);
        assert_eq!((vcpu.injected, vcpu.skipped), (None, skipped + 1), "WRMSR {msr:#x}");
    }
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x808), 0x30);
    assert_eq!(vm.chipset.tpr(1), 0x30);
    // SELF IPI and ICR (64 bits: the destination in the upper half).
    wrmsr(&mut vcpu, &mut vm, 0x83f, 0x41);
    assert_eq!(vm.chipset.take_interrupt(1), Some(0x41));
    wrmsr(&mut vcpu, &mut vm, 0x80b, 0);
    wrmsr(&mut vcpu, &mut vm, 0x830, 1 << 32 | 0x52);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x830), 1 << 32 | 0x52);
    assert_eq!(vm.chipset.take_interrupt(1), Some(0x52), "physical destination 1 is this vCPU");
    assert!(!vm.chipset.has_interrupt(0));
    // Refused: read-only registers, write-only ones read, registers x2APIC
    // mode lacks, reserved bits, EOI and ESR with anything but 0.
    for (exit, msr, value) in [
        (Exit::Wrmsr, 0x802, 0),
        (Exit::Wrmsr, 0x80d, 0),
        (Exit::Wrmsr, 0x803, 0),
        (Exit::Wrmsr, 0x839, 0),
        (Exit::Rdmsr, 0x80b, 0),
        (Exit::Rdmsr, 0x83f, 0),
        (Exit::Rdmsr, 0x80e, 0),
        (Exit::Rdmsr, 0x809, 0),
        (Exit::Rdmsr, 0x831, 0),
        (Exit::Rdmsr, 0x8ff, 0),
        (Exit::Wrmsr, 0x808, 1 << 32),
        (Exit::Wrmsr, 0x830, 1 << 16),
        (Exit::Wrmsr, 0x830, 1 << 31),
        (Exit::Wrmsr, 0x80b, 1),
        (Exit::Wrmsr, 0x828, 4),
    ] {
        let mut probe = FakeVcpu { index: 1, ..FakeVcpu::long_mode() };
        probe.gprs[RCX as usize] = msr;
        probe.gprs[RAX as usize] = value & 0xffff_ffff;
        probe.gprs[RDX as usize] = value >> 32;
        let outcome = run(exit.clone(), &mut probe, &mut vm, &mut FakeHost::default());
        assert_gp(&probe, &outcome, 0x1000);
    }
    // Back to xAPIC only through disabled; the page then answers again.
    assert_eq!(wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, LAPIC_BASE | EN), Outcome::Resume);
    assert!(vcpu.injected.take().is_some());
    wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, LAPIC_BASE);
    wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, LAPIC_BASE | EN);
    assert_eq!(vcpu.injected, None);
    assert_eq!(vm.chipset.mmio_read(1, LAPIC_BASE + 0x20, 4, 0), 1 << 24);
}

#[test]
fn cr8_is_the_tpr_in_x2apic_mode_too() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::long_mode();
    wrmsr(&mut vcpu, &mut vm, IA32_APIC_BASE, LAPIC_BASE | BSP | EN | EXTD);
    vcpu.gprs[RBX as usize] = 0x7;
    run(Exit::Cr(crate::CrAccess::MovTo { cr: 8, gpr: RBX }), &mut vcpu, &mut vm, &mut host);
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x808), 0x70);
    wrmsr(&mut vcpu, &mut vm, 0x808, 0x90);
    run(Exit::Cr(crate::CrAccess::MovFrom { cr: 8, gpr: RDX }), &mut vcpu, &mut vm, &mut host);
    assert_eq!(vcpu.gprs[RDX as usize], 9);
    assert_eq!(vcpu.injected, None);
}

#[test]
fn machine_check_msrs_read_as_no_banks() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x179), 0, "MCG_CAP: no banks");
    assert_eq!(rdmsr(&mut vcpu, &mut vm, 0x17a), 0, "MCG_STATUS");
    let mut vcpu = FakeVcpu::flat();
    let outcome = wrmsr(&mut vcpu, &mut vm, 0x17a, 0);
    assert_done(&vcpu, &outcome, 0x1000);
    for (msr, value) in [(0x17a, 1), (0x17a, 1 << 40), (0x179, 0), (0x179, 1)] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = wrmsr(&mut vcpu, &mut vm, msr, value);
        assert_gp(&vcpu, &outcome, 0x1000);
    }
}

#[test]
fn misc_enable_keeps_its_writable_bits_per_vcpu() {
    let mut vm = FakeVm::new(2, 0x1000);
    let mut first = FakeVcpu::flat();
    let mut second = FakeVcpu { index: 1, ..FakeVcpu::flat() };
    let reset = misc_enable::RESET;
    assert_eq!(reset, 0x1801, "fast strings on; no BTS, no PEBS; no performance monitoring");
    assert_eq!(rdmsr(&mut first, &mut vm, IA32_MISC_ENABLE), reset);
    // Fast strings off and the thermal control circuit on: kept, for this vCPU.
    let written = (reset & !misc_enable::FAST_STRINGS) | misc_enable::AUTOMATIC_THERMAL_CONTROL;
    let mut vcpu = FakeVcpu::flat();
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_MISC_ENABLE, written);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(rdmsr(&mut first, &mut vm, IA32_MISC_ENABLE), written);
    assert_eq!(rdmsr(&mut second, &mut vm, IA32_MISC_ENABLE), reset);
    // Bit 7 (performance monitoring available) is read-only: ignored.
    let mut vcpu = FakeVcpu::flat();
    let outcome = wrmsr(&mut vcpu, &mut vm, IA32_MISC_ENABLE, written | misc_enable::PERFORMANCE_MONITORING_AVAILABLE);
    assert_eq!((outcome, vcpu.injected), (Outcome::Resume, None));
    assert_eq!(rdmsr(&mut first, &mut vm, IA32_MISC_ENABLE), written);
    // BTS/PEBS unavailable cannot change; EIST (16), MONITOR (18), the CPUID
    // limit (22), XD disable (34) and reserved bits cannot be set.
    for bit in [11, 12, 16, 18, 22, 34, 1, 63] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = wrmsr(&mut vcpu, &mut vm, IA32_MISC_ENABLE, written ^ 1 << bit);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!(rdmsr(&mut first, &mut vm, IA32_MISC_ENABLE), written, "bit {bit}");
    }
}

/// Log lines of the VMs these tests name `msr-log-*` (other tests' lines are
/// not kept).
static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = record.args().to_string();
        if line.contains("vm msr-log-") {
            LOGGED.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

#[test]
fn the_first_msrs_refused_are_logged_once_each_per_vm() {
    static CAPTURE: Capture = Capture;
    // Another test may have set it first: it is this one either way.
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Info);
    let mut host = FakeHost::default();
    for name in ["msr-log-a", "msr-log-b"] {
        let mut vm = FakeVm::new(1, 0x1000);
        // Twenty distinct MSRs, each refused three times, both ways.
        for round in 0..3 {
            for msr in 0x4b56_4d00..0x4b56_4d14u64 {
                for exit in [Exit::Rdmsr, Exit::Wrmsr] {
                    let mut vcpu = FakeVcpu::flat();
                    vcpu.gprs[RCX as usize] = msr;
                    let outcome = {
                        let console = |_: &[u8]| {};
                        let mut machine =
                            crate::Machine { name, chipset: &vm.chipset, memory: &mut vm.memory, console: &console };
                        crate::dispatch(exit, &mut vcpu, &mut machine, &mut host)
                    };
                    assert_gp(&vcpu, &outcome, 0x1000);
                    let _ = round;
                }
            }
        }
    }
    let logged = LOGGED.lock().unwrap();
    for name in ["msr-log-a", "msr-log-b"] {
        let lines: Vec<_> = logged.iter().filter(|l| l.starts_with(&format!("vm {name}:"))).collect();
        assert_eq!(lines.len(), devices::chipset::REFUSED_MSRS_LOGGED, "{name}: {lines:#?}");
        for (i, line) in lines.iter().enumerate() {
            assert!(line.contains(&format!("MSR {:#x} raised #GP", 0x4b56_4d00 + i)), "{line}");
        }
    }
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
    for msr in [0x10, 0x200, 0x26f, 0x2ff, 0x8b] {
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
