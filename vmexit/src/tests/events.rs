//! Event delivery before each entry, the window exits, and the exceptions
//! Basalt intercepts.

use super::*;
use crate::events::deliver_pending;
use crate::fake::Injected;
use crate::vcpu::RFLAGS_IF;
use crate::{Stop, AC, DB, GP, PF};
use devices::layout::LAPIC_BASE;

/// Enables vCPU `index`'s local APIC (TPR 0) and sends it `icr_low` as a
/// self-IPI.
fn self_ipi(vm: &mut FakeVm, index: usize, icr_low: u32) {
    vm.chipset.mmio_write(index, LAPIC_BASE + 0xf0, 4, 0x1ff, 0, &mut vm.memory);
    vm.chipset.mmio_write(index, LAPIC_BASE + 0x300, 4, (1 << 18) | icr_low as u64, 0, &mut vm.memory);
}

const FIXED: u32 = 0;
const NMI: u32 = 4 << 8;

#[test]
fn nothing_pending_asks_for_nothing() {
    let (vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!((vcpu.injected, vcpu.interrupt_window, vcpu.nmi_window), (None, false, false));
}

#[test]
fn with_virtual_interrupt_delivery_apic_vectors_are_left_to_the_cpu() {
    let (mut vm, _) = machine();
    self_ipi(&mut vm, 0, FIXED | 0x41);
    let mut vcpu = FakeVcpu { apic_delivery: true, ..FakeVcpu::flat() };
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    // Neither injected nor waited for: the vector stays requested in the
    // APIC, for the back end to post (RVI) and the CPU to deliver.
    assert_eq!((vcpu.injected, vcpu.interrupt_window), (None, false));
    assert_eq!(vm.chipset.lapic_interrupt_status(0), 0x0041);
    // With IF clear the CPU waits by itself: still no window exit.
    let mut vcpu = FakeVcpu { apic_delivery: true, rflags: 0x2, ..FakeVcpu::flat() };
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!((vcpu.injected, vcpu.interrupt_window), (None, false));
    // The vCPU's own (hypercall) interrupts are still injected.
    let mut vcpu = FakeVcpu { apic_delivery: true, ..FakeVcpu::flat() };
    vcpu.pending.raise(0x50);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Interrupt(0x50)));
    // Outside xAPIC mode the model delivers as before.
    let mut vcpu = FakeVcpu { apic_delivery: false, ..FakeVcpu::flat() };
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Interrupt(0x41)));
}

#[test]
fn a_virtual_eoi_exit_resumes_the_guest() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu { apic_delivery: true, ..FakeVcpu::flat() };
    // Not in service anywhere (a hostile or confused exit): nothing breaks.
    let outcome = run(Exit::VirtualEoi { vector: 0x61 }, &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.skipped, 0, "trap-like: the CPU is already past the write");
    assert_eq!(vm.chipset.lapic_interrupt_status(0), 0);
}

#[test]
fn an_nmi_goes_before_interrupts_which_wait_for_their_window() {
    let (vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    vcpu.pending.nmi = true;
    vcpu.pending.raise(0x40);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Nmi));
    assert!(!vcpu.pending.nmi);
    assert!(vcpu.pending.has_interrupt(), "the interrupt is still pending");
    // It goes in as soon as the guest can take it: the window is asked for
    // now rather than at some unrelated later exit.
    assert!(vcpu.interrupt_window);
}

#[test]
fn an_nmi_from_the_chipset_is_taken_and_injected() {
    let (mut vm, _) = machine();
    self_ipi(&mut vm, 0, NMI);
    assert!(vm.chipset.nmi_pending(0));
    let mut vcpu = FakeVcpu { rflags: 0x2, ..FakeVcpu::flat() };
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Nmi), "NMIs ignore IF");
    assert!(!vm.chipset.nmi_pending(0));
}

#[test]
fn a_blocked_nmi_waits_for_the_nmi_window_and_interrupts_may_go_first() {
    let (vm, _) = machine();
    let mut vcpu = FakeVcpu { nmi_blocked: true, ..FakeVcpu::flat() };
    vcpu.pending.nmi = true;
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, None);
    assert!(vcpu.nmi_window && vcpu.pending.nmi);
    assert!(!vcpu.interrupt_window, "no interrupt is pending");

    vcpu.pending.raise(0x33);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Interrupt(0x33)));
    assert!(vcpu.nmi_window && vcpu.pending.nmi);
}

#[test]
fn an_nmi_in_an_interrupt_shadow_waits() {
    let (vm, _) = machine();
    let mut vcpu = FakeVcpu { interrupt_shadow: true, ..FakeVcpu::flat() };
    vcpu.pending.nmi = true;
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, None);
    assert!(vcpu.nmi_window && vcpu.pending.nmi);
}

#[test]
fn interrupts_wait_while_if_is_clear_or_in_a_shadow() {
    for (rflags, shadow) in [(0x2, false), (0x202, true), (0x2, true)] {
        let (mut vm, _) = machine();
        let mut vcpu = FakeVcpu { rflags, interrupt_shadow: shadow, ..FakeVcpu::flat() };
        vcpu.pending.raise(0x41);
        self_ipi(&mut vm, 0, FIXED | 0x51);
        deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
        assert_eq!(vcpu.injected, None, "IF {} shadow {shadow}", rflags & RFLAGS_IF != 0);
        assert!(vcpu.interrupt_window);
        assert!(!vcpu.nmi_window);
        assert!(vcpu.pending.has_interrupt() && vm.chipset.has_interrupt(0), "nothing taken");
    }
}

#[test]
fn an_interrupt_waiting_on_the_hlt_an_sti_shadows_completes_the_hlt_and_goes_in() {
    // sti; hlt entered between the two with the interrupt waiting: the CPU
    // would halt and wake at once, the handler returning after the HLT.
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu { interrupt_shadow: true, ..FakeVcpu::flat() };
    vm.memory.bytes[0x1000] = 0xf4;
    vcpu.pending.raise(0x41);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Interrupt(0x41)));
    assert_eq!((vcpu.rip, vcpu.interrupt_shadow, vcpu.interrupt_window), (0x1001, false, false));
    // Not when the HLT would fault (CPL 3), when single-stepping (its #DB
    // comes first), with IF clear, or when RIP is not at a HLT: the window.
    const TF: u64 = 1 << 8;
    for (rflags, cpl, byte) in [(0x202, 3, 0xf4), (0x202 | TF, 0, 0xf4), (0x2, 0, 0xf4), (0x202, 0, 0x90)] {
        let (mut vm, _) = machine();
        let mut vcpu = FakeVcpu { interrupt_shadow: true, rflags, cpl, ..FakeVcpu::flat() };
        vm.memory.bytes[0x1000] = byte;
        vcpu.pending.raise(0x41);
        deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
        assert_eq!(
            (vcpu.injected, vcpu.rip, vcpu.interrupt_window),
            (None, 0x1000, true),
            "{rflags:#x} {cpl} {byte:#x}"
        );
    }
}

#[test]
fn a_handler_already_injecting_gets_windows_and_no_second_event() {
    let (mut vm, _) = machine();
    // The fake vCPU panics on a second injection.
    let first = Injected::Exception { vector: GP, error_code: Some(0) };
    let mut vcpu = FakeVcpu { injected: Some(first), ..FakeVcpu::flat() };
    vcpu.pending.raise(0x40);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(first));
    assert!(vcpu.interrupt_window);
    assert!(vcpu.pending.has_interrupt());

    // An NMI: its own window, which (unlike the interrupt window) comes even
    // while the guest keeps IF clear.
    let mut vcpu = FakeVcpu { injected: Some(first), rflags: 0x2, ..FakeVcpu::flat() };
    vcpu.pending.nmi = true;
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(first));
    assert!(vcpu.nmi_window && vcpu.pending.nmi);

    // From the chipset: nothing is acknowledged.
    let mut vcpu = FakeVcpu { injected: Some(first), ..FakeVcpu::flat() };
    self_ipi(&mut vm, 0, FIXED | 0x60);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(first));
    assert_eq!(vm.chipset.take_interrupt(0), Some(0x60), "still there");
}

#[test]
fn own_vectors_go_highest_first() {
    let (vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    for v in [0x30, 0x80, 0x41, 0xff, 0x30] {
        vcpu.pending.raise(v);
    }
    let mut order = Vec::new();
    for _ in 0..6 {
        vcpu.injected = None;
        deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
        if let Some(Injected::Interrupt(v)) = vcpu.injected {
            order.push(v);
        }
    }
    assert_eq!(order, [0xff, 0x80, 0x41, 0x30]);
}

#[test]
fn more_vectors_left_after_an_injection_ask_for_the_window() {
    let (vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    vcpu.pending.raise(0x30);
    vcpu.pending.raise(0x31);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Interrupt(0x31)));
    assert!(vcpu.interrupt_window, "0x30 goes in as soon as the guest can take it");

    let mut vcpu = FakeVcpu::flat();
    vcpu.pending.raise(0x30);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Interrupt(0x30)));
    assert!(!vcpu.interrupt_window, "nothing left: no window");
}

#[test]
fn a_chipset_interrupt_is_acknowledged_when_injected() {
    let (mut vm, _) = machine();
    self_ipi(&mut vm, 0, FIXED | 0x55);
    let mut vcpu = FakeVcpu::flat();
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Interrupt(0x55)));
    assert!(!vm.chipset.has_interrupt(0));
    let isr = vm.chipset.mmio_read(0, LAPIC_BASE + 0x100 + 0x10 * (0x55 / 32), 4, 0);
    assert_eq!(isr, 1 << (0x55 % 32), "in service");
}

#[test]
fn interrupts_are_per_vcpu() {
    let mut vm = FakeVm::new(2, RAM);
    self_ipi(&mut vm, 1, FIXED | 0x70);
    let mut vcpu0 = FakeVcpu::flat();
    deliver_pending(&mut vcpu0, &vm.chipset, &vm.memory);
    assert_eq!((vcpu0.injected, vcpu0.interrupt_window), (None, false));
    let mut vcpu1 = FakeVcpu { index: 1, ..FakeVcpu::flat() };
    deliver_pending(&mut vcpu1, &vm.chipset, &vm.memory);
    assert_eq!(vcpu1.injected, Some(Injected::Interrupt(0x70)));
}

#[test]
fn an_injected_interrupt_ends_hlt() {
    let (vm, _) = machine();
    let mut vcpu = FakeVcpu { halted: true, ..FakeVcpu::flat() };
    vcpu.pending.raise(0x40);
    deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert!(!vcpu.halted);
}

#[test]
fn window_exits_stop_asking() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu { interrupt_window: true, nmi_window: true, ..FakeVcpu::flat() };
    assert_eq!(run(Exit::InterruptWindow, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
    assert!(!vcpu.interrupt_window && vcpu.nmi_window);
    assert_eq!(run(Exit::NmiWindow, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
    assert!(!vcpu.nmi_window);
    assert_eq!((vcpu.rip, vcpu.skipped, vcpu.injected), (0x1000, 0, None));
}

#[test]
fn db_and_ac_are_reflected_as_the_cpu_delivers_them() {
    for (vector, error_code, reflected) in
        [(DB, None, None), (DB, Some(5), None), (AC, Some(0), Some(0)), (AC, None, Some(0)), (AC, Some(7), Some(0))]
    {
        let (mut vm, mut host) = machine();
        let mut vcpu = FakeVcpu::flat();
        let outcome = run(Exit::Exception { vector, error_code }, &mut vcpu, &mut vm, &mut host);
        assert_eq!(outcome, Outcome::Resume);
        assert_eq!(vcpu.injected, Some(Injected::Reflected { vector, error_code: reflected }));
        assert_eq!((vcpu.rip, vcpu.skipped), (0x1000, 0));
    }
}

#[test]
fn any_other_intercepted_exception_stops_the_vm() {
    for (vector, error_code) in [(0, None), (PF, Some(2)), (GP, Some(0)), (18, None), (255, Some(u32::MAX))] {
        let (mut vm, mut host) = machine();
        let mut vcpu = FakeVcpu::flat();
        let outcome = run(Exit::Exception { vector, error_code }, &mut vcpu, &mut vm, &mut host);
        let Outcome::Stop(Stop::Unsupported(why)) = outcome else { panic!("vector {vector}: {outcome:?}") };
        assert!(why.contains(&format!("vector {vector}")), "{why}");
        assert_eq!(vcpu.injected, None);
    }
}
