//! Basalt's hypercalls (VMCALL / VMMCALL).

use super::*;
use crate::vmcall::{ENOSYS, EPERM, VERSION};
use crate::Stop;

/// Hypercall `number` with RBX, RCX as given; returns the outcome.
fn call(vcpu: &mut FakeVcpu, vm: &mut FakeVm, number: u64, rbx: u64, rcx: u64) -> Outcome {
    vcpu.gprs[RAX as usize] = number;
    vcpu.gprs[RBX as usize] = rbx;
    vcpu.gprs[RCX as usize] = rcx;
    run(Exit::Hypercall, vcpu, vm, &mut FakeHost::default())
}

/// Asserts a call completed with `result` in RAX.
#[track_caller]
fn assert_result(vcpu: &FakeVcpu, outcome: &Outcome, result: u64) {
    assert_done(vcpu, outcome, 0x1000);
    assert_eq!(vcpu.gprs[RAX as usize], result);
}

#[test]
fn version() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = call(&mut vcpu, &mut vm, 0, u64::MAX, u64::MAX);
    assert_result(&vcpu, &outcome, VERSION);
    assert_eq!(VERSION, 0x0001_0000);
}

#[test]
fn tsc_khz() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    let outcome = call(&mut vcpu, &mut vm, 3, 0, 0);
    assert_result(&vcpu, &outcome, 2_000_000);
}

#[test]
fn print_sends_guest_memory_to_the_console() {
    let (mut vm, _) = machine();
    vm.memory.bytes[0x2000..0x200c].copy_from_slice(b"hello, world");
    let mut vcpu = FakeVcpu::flat();
    let outcome = call(&mut vcpu, &mut vm, 1, 0x2000, 5);
    assert_result(&vcpu, &outcome, 5);
    assert_eq!(*vm.console.borrow(), [b"hello".to_vec()]);
}

#[test]
fn print_clamps_the_length_at_256() {
    let (mut vm, _) = machine();
    for (i, byte) in vm.memory.bytes[0x3000..0x3400].iter_mut().enumerate() {
        *byte = b'a' + (i % 26) as u8;
    }
    for rcx in [257, 1000, u64::MAX] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = call(&mut vcpu, &mut vm, 1, 0x3000, rcx);
        assert_result(&vcpu, &outcome, 256);
    }
    let lines = vm.console.borrow();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| *l == vm.memory.bytes[0x3000..0x3100]));
}

#[test]
fn print_from_outside_ram_returns_all_ones_and_prints_nothing() {
    let (mut vm, _) = machine();
    for (address, len) in [
        (RAM as u64, 1),
        (RAM as u64 - 4, 5), // runs past the end
        (0xfee0_0000, 4),    // device memory
        (u64::MAX - 1, 4),   // wraps
        (u64::MAX, 256),
    ] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = call(&mut vcpu, &mut vm, 1, address, len);
        assert_result(&vcpu, &outcome, u64::MAX);
    }
    assert!(vm.console.borrow().is_empty());
}

#[test]
fn print_of_nothing_prints_an_empty_line() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    let outcome = call(&mut vcpu, &mut vm, 1, RAM as u64, 0);
    assert_result(&vcpu, &outcome, 0);
    assert_eq!(*vm.console.borrow(), [Vec::<u8>::new()]);
}

#[test]
fn exit_stops_the_vm_with_the_status_in_rbx() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    let outcome = call(&mut vcpu, &mut vm, 2, 0xdead_beef_0000_0042, 0);
    assert_eq!(outcome, Outcome::Stop(Stop::ExitHypercall { status: 0xdead_beef_0000_0042 }));
    assert_eq!(vcpu.skipped, 1);
}

#[test]
fn raise_interrupt_queues_a_vector_of_32_or_more() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    for vector in [32u64, 0x80, 255] {
        let outcome = call(&mut vcpu, &mut vm, 4, vector, 0);
        assert_eq!((outcome, vcpu.gprs[RAX as usize]), (Outcome::Resume, 0));
    }
    let mut queued = Vec::new();
    while let Some(v) = vcpu.pending.take_highest() {
        queued.push(v);
    }
    assert_eq!(queued, [255, 0x80, 32]);
    assert_eq!(vcpu.skipped, 3);
}

#[test]
fn raise_interrupt_refuses_exception_vectors_and_out_of_range_ones() {
    let (mut vm, _) = machine();
    for vector in [0u64, 2, 14, 31, 256, 0x1_0000_0040, u64::MAX] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = call(&mut vcpu, &mut vm, 4, vector, 0);
        assert_result(&vcpu, &outcome, u64::MAX);
        assert!(!vcpu.pending.has_interrupt(), "vector {vector:#x} was queued");
    }
}

#[test]
fn raise_nmi_queues_an_nmi() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    let outcome = call(&mut vcpu, &mut vm, 5, 0, 0);
    assert_result(&vcpu, &outcome, 0);
    assert!(vcpu.pending.nmi);
    assert_eq!(vcpu.injected, None, "delivered at the next entry, not from the handler");
}

#[test]
fn outside_ring_0_every_call_answers_eperm_and_does_nothing() {
    for cpl in [1, 2, 3] {
        for number in [0, 1, 2, 3, 4, 5, 6, 0x999, u64::MAX] {
            let (mut vm, _) = machine();
            vm.memory.bytes[0x2000] = b'x';
            let mut vcpu = FakeVcpu { cpl, ..FakeVcpu::flat() };
            let outcome = call(&mut vcpu, &mut vm, number, 0x40, 1);
            // Completes, -1 in RAX: neither a stop (a user cannot end the
            // VM) nor an exception.
            assert_result(&vcpu, &outcome, EPERM);
            assert_eq!(EPERM as i64, -1);
            assert!(vm.console.borrow().is_empty(), "ring {cpl}, call {number}: printed");
            assert!(!vcpu.pending.nmi && !vcpu.pending.has_interrupt(), "ring {cpl}, call {number}: raised an event");
            assert_eq!((vcpu.gprs[RBX as usize], vcpu.gprs[RCX as usize]), (0x40, 1), "arguments untouched");
        }
    }
}

#[test]
fn an_unknown_number_answers_enosys_and_the_vm_goes_on() {
    for number in [6, 0x100, 0x999, 1 << 32, u64::MAX] {
        let (mut vm, _) = machine();
        let mut vcpu = FakeVcpu::flat();
        let outcome = call(&mut vcpu, &mut vm, number, 0x2000, 5);
        assert_result(&vcpu, &outcome, ENOSYS);
        assert_eq!(ENOSYS as i64, -1000, "KVM's -KVM_ENOSYS");
        assert!(vm.console.borrow().is_empty());
        assert!(!vcpu.pending.nmi && !vcpu.pending.has_interrupt());
    }
}

#[test]
fn the_answers_are_the_same_through_the_other_vendors_instruction() {
    // VMMCALL on an Intel CPU or VMCALL on AMD: #UD, which Basalt takes as
    // the hypercall, with the same answers.
    for (cpl, number, result) in [(0, 0x999, ENOSYS), (3, 0, EPERM), (0, 0, VERSION)] {
        for bytes in [[0x0f, 0x01, 0xc1], [0x0f, 0x01, 0xd9]] {
            let (mut vm, mut host) = machine();
            vm.memory.bytes[0x1000..0x1003].copy_from_slice(&bytes);
            let mut vcpu = FakeVcpu { cpl, length_known: false, ..FakeVcpu::flat() };
            vcpu.gprs[RAX as usize] = number;
            let outcome = run(Exit::Exception { vector: crate::UD, error_code: None }, &mut vcpu, &mut vm, &mut host);
            assert_eq!(outcome, Outcome::Resume);
            assert_eq!(vcpu.injected, None);
            assert_eq!((vcpu.rip, vcpu.gprs[RAX as usize]), (0x1003, result), "ring {cpl}, {bytes:02x?}");
        }
    }
}

/// The run loop's fast path does what `dispatch` does for every call that
/// leaves nothing for the next round (version, print, tsc-khz, a refused
/// vector, unknown numbers, any call from ring 3), and declines, having
/// changed nothing, exit, the calls that queue an event, and a single step.
#[test]
fn the_hypercall_fast_path_matches_dispatch_or_declines() {
    const TF: u64 = 1 << 8;
    let set_up = |cpl: u8, rflags: u64, number: u64, rbx: u64, rcx: u64| {
        let (mut vm, _) = machine();
        vm.memory.bytes[0x2000..0x200c].copy_from_slice(b"hello, world");
        let mut vcpu = FakeVcpu { cpl, rflags, ..FakeVcpu::long_mode() };
        vcpu.gprs[RAX as usize] = number;
        vcpu.gprs[RBX as usize] = rbx;
        vcpu.gprs[RCX as usize] = rcx;
        (vm, vcpu)
    };
    let calls = [
        (0, 0, 0, true),
        (1, 0x2000, 5, true),
        (1, RAM as u64, 4, true),
        (3, 0, 0, true),
        (4, 3, 0, true),
        (4, 0x1_0040, 0, true),
        (6, 0, 0, true),
        (u64::MAX, 0, 0, true),
        (2, 7, 0, false),
        (4, 0x40, 0, false),
        (4, 255, 0, false),
        (5, 0, 0, false),
    ];
    for (number, rbx, rcx, taken_in_ring_0) in calls {
        for cpl in [0, 3] {
            for rflags in [2, 2 | TF] {
                let taken = (taken_in_ring_0 || cpl != 0) && rflags & TF == 0;
                let (mut fast_vm, mut fast) = set_up(cpl, rflags, number, rbx, rcx);
                let before = format!("{fast:?}");
                let mut host = FakeHost::default();
                // Unlocked, print (which reads guest memory) is declined.
                let mut unlocked = fast.clone();
                let done = crate::fast_hypercall(&mut unlocked, None, &host);
                assert_eq!(done, taken && (number != 1 || cpl != 0), "call {number} cpl {cpl} rflags {rflags:#x}");
                if !done {
                    assert_eq!(format!("{unlocked:?}"), before);
                }
                let done_unlocked = done;
                let done = fast_vm.with(|machine| crate::fast_hypercall(&mut fast, Some(machine), &host));
                if done_unlocked {
                    assert_eq!(format!("{unlocked:?}"), format!("{fast:?}"));
                }
                assert_eq!(done, taken, "call {number} cpl {cpl} rflags {rflags:#x}");
                if !taken {
                    assert_eq!(format!("{fast:?}"), before);
                    assert!(fast_vm.console.borrow().is_empty());
                    continue;
                }
                let (mut slow_vm, mut slow) = set_up(cpl, rflags, number, rbx, rcx);
                assert_eq!(run(Exit::Hypercall, &mut slow, &mut slow_vm, &mut host), Outcome::Resume);
                assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "call {number} cpl {cpl}");
                assert_eq!(*fast_vm.console.borrow(), *slow_vm.console.borrow());
            }
        }
    }
}
