//! The trap-class #DB of instructions Basalt completes: the single step of
//! RFLAGS.TF, data breakpoints on the memory it accesses, I/O breakpoints on
//! its ports, with DR6, DR7.GD and RFLAGS.RF as the CPU would leave them.

use super::*;
use crate::exit::{CrAccess, PortIo, SegmentRegister, StringIo};
use crate::fake::Injected;
use crate::vcpu::{RFLAGS_RF, RFLAGS_TF};
use crate::GP;
use arch::control::cr4;
use arch::debug::{dr6, dr7};

const DR6_RESET: u64 = 0xffff_0ff0;
/// Ports and device memory nobody claims.
const PORT: u16 = 0x510;
const DEVICE: u64 = 0xe000_0000;
/// Where long-mode tests map `DEVICE`, and a second mapping of it.
const DEVICE_LINEAR: u64 = 0x40_0000;
const ALIAS_LINEAR: u64 = 0x50_0000;

/// DR7 enabling breakpoint `index` globally with R/W and LEN fields.
fn breakpoint(index: u64, rw: u64, len: u64) -> u64 {
    0x400 | (2 << (index * 2)) | (rw << (16 + index * 4)) | (len << (18 + index * 4))
}

fn single_stepped(vcpu: FakeVcpu) -> FakeVcpu {
    FakeVcpu { rflags: vcpu.rflags | RFLAGS_TF, ..vcpu }
}

#[track_caller]
fn assert_trap(vcpu: &FakeVcpu, conditions: u64) {
    assert_eq!(vcpu.injected, Some(Injected::DebugTrap(conditions)));
    assert_eq!(vcpu.dr6 & 0x400f, conditions, "DR6 has this #DB's conditions");
}

#[test]
fn every_instruction_basalt_completes_single_steps() {
    let exits = [
        Exit::Cpuid,
        Exit::Rdmsr,
        Exit::Wrmsr,
        Exit::Cr(CrAccess::MovTo { cr: 8, gpr: RAX }),
        Exit::Cr(CrAccess::Clts),
        Exit::Xsetbv,
        Exit::CacheFlush,
        Exit::Hypercall,
        Exit::Hlt,
        Exit::Io(PortIo { port: PORT, size: 1, is_in: false, string: None }),
        Exit::Io(PortIo { port: PORT, size: 4, is_in: true, string: None }),
    ];
    for exit in exits {
        for tf in [false, true] {
            let (mut vm, mut host) = machine();
            let mut vcpu = FakeVcpu::flat();
            // TSC_ADJUST for the MSRs; XCR0 = x87, hypercall 0, CR8 = 0.
            vcpu.gprs[RCX as usize] = if exit == Exit::Xsetbv { 0 } else { 0x3b };
            vcpu.gprs[RAX as usize] = if exit == Exit::Xsetbv { 1 } else { 0 };
            // Whatever RF was, the instruction completes and RF is clear.
            vcpu.rflags |= RFLAGS_RF;
            if tf {
                vcpu = single_stepped(vcpu);
            }
            let outcome = run(exit.clone(), &mut vcpu, &mut vm, &mut host);
            assert_eq!(outcome, Outcome::Resume, "{exit:?}");
            assert_eq!(vcpu.rip, 0x1000 + vcpu.instruction_length, "{exit:?} completed");
            assert_eq!(vcpu.rflags & RFLAGS_RF, 0, "{exit:?}: RF clear after it");
            if tf {
                assert_trap(&vcpu, dr6::BS);
                assert_eq!(vcpu.dr6, DR6_RESET | dr6::BS, "{exit:?}");
                assert!(!vcpu.halted, "HLT with TF takes its #DB at once");
            } else {
                assert_eq!(vcpu.injected, None, "{exit:?}");
                assert_eq!(vcpu.dr6, DR6_RESET);
            }
        }
    }
}

#[test]
fn a_faulting_instruction_raises_its_fault_not_the_step() {
    let (mut vm, mut host) = machine();
    let mut vcpu = single_stepped(FakeVcpu::flat());
    vcpu.gprs[RCX as usize] = 0x4b56_4d00;
    let outcome = run(Exit::Rdmsr, &mut vcpu, &mut vm, &mut host);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.dr6, DR6_RESET);
    let mut vcpu = single_stepped(FakeVcpu::flat());
    vcpu.gprs[RCX as usize] = 1; // XCR1 does not exist
    run(Exit::Xsetbv, &mut vcpu, &mut vm, &mut host);
    assert_eq!(vcpu.injected, Some(Injected::Exception { vector: GP, error_code: Some(0) }));
}

#[test]
fn the_trap_keeps_bs_but_replaces_b0_b3_and_clears_gd() {
    let (mut vm, mut host) = machine();
    let mut vcpu = single_stepped(FakeVcpu::flat());
    vcpu.dr6 = DR6_RESET | 0b0101 | 1 << 13;
    vcpu.dr7 = 0x400 | dr7::GD;
    run(Exit::Cpuid, &mut vcpu, &mut vm, &mut host);
    assert_trap(&vcpu, dr6::BS);
    assert_eq!(vcpu.dr6, DR6_RESET | dr6::BS | 1 << 13, "B0-B3 describe this #DB only; BD stays");
    assert_eq!(vcpu.dr7, 0x400, "GD cleared");
}

#[test]
fn io_breakpoints_fire_on_port_io_with_cr4_de() {
    // Breakpoint 1 on ports 0x510-0x513 (LEN 4).
    for (de, port, size, tf, expected) in [
        (true, PORT, 1, false, 0b10),
        (true, PORT + 3, 4, false, 0b10),
        (true, PORT + 4, 1, false, 0),
        (true, PORT - 1, 2, true, dr6::BS | 0b10),
        (false, PORT, 1, false, 0),
        (false, PORT, 1, true, dr6::BS),
    ] {
        for is_in in [false, true] {
            let (mut vm, mut host) = machine();
            let mut vcpu = FakeVcpu::flat();
            vcpu.dr[1] = PORT as u64;
            vcpu.dr7 = breakpoint(1, 2, 3);
            if de {
                vcpu.cr4 |= cr4::DE;
            }
            if tf {
                vcpu = single_stepped(vcpu);
            }
            let outcome = run(Exit::Io(PortIo { port, size, is_in, string: None }), &mut vcpu, &mut vm, &mut host);
            assert_eq!((outcome, vcpu.rip), (Outcome::Resume, 0x1002));
            let context = format!("DE {de}, port {port:#x}/{size}, TF {tf}");
            if expected == 0 {
                assert_eq!(vcpu.injected, None, "{context}");
            } else {
                assert_eq!(vcpu.injected, Some(Injected::DebugTrap(expected)), "{context}");
            }
        }
    }
}

/// REP OUTSB/INSB of `count` bytes at 0x8000 on `PORT` (flat, 32-bit).
fn rep_string(vcpu: &mut FakeVcpu, is_in: bool, count: u64) -> Exit {
    vcpu.gprs[RCX as usize] = count;
    vcpu.gprs[RSI as usize] = 0x8000;
    vcpu.gprs[RDI as usize] = 0x8000;
    let string = Some(StringIo { rep: true, address_size: 4, segment: SegmentRegister::Ds });
    Exit::Io(PortIo { port: PORT, size: 1, is_in, string })
}

#[test]
fn a_single_stepped_rep_string_traps_after_each_element() {
    let (mut vm, mut host) = machine();
    let mut vcpu = single_stepped(FakeVcpu::flat());
    let exit = rep_string(&mut vcpu, false, 3);
    for element in 1..=3u64 {
        vcpu.injected = None;
        let outcome = run(exit.clone(), &mut vcpu, &mut vm, &mut host);
        assert_eq!(outcome, Outcome::Resume);
        assert_trap(&vcpu, dr6::BS);
        assert_eq!(vcpu.gprs[RCX as usize], 3 - element, "one element per exit");
        assert_eq!(vcpu.gprs[RSI as usize], 0x8000 + element);
        if element < 3 {
            // RIP stays on the string; an event before it goes on pushes RF = 1.
            assert_eq!((vcpu.rip, vcpu.rflags & RFLAGS_RF), (0x1000, RFLAGS_RF));
        } else {
            assert_eq!((vcpu.rip, vcpu.rflags & RFLAGS_RF), (0x1002, 0));
        }
    }
    // RCX = 0: nothing moves, the instruction completes, and traps.
    let mut vcpu = single_stepped(FakeVcpu::flat());
    let exit = rep_string(&mut vcpu, true, 0);
    run(exit, &mut vcpu, &mut vm, &mut host);
    assert_trap(&vcpu, dr6::BS);
    assert_eq!(vcpu.rip, 0x1002);
}

#[test]
fn a_data_breakpoint_ends_a_rep_string_after_the_element_that_hit_it() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::flat();
    // A write breakpoint on the fourth byte INSB stores.
    vcpu.dr[0] = 0x8003;
    vcpu.dr7 = breakpoint(0, 1, 0);
    let exit = rep_string(&mut vcpu, true, 8);
    let outcome = run(exit.clone(), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_trap(&vcpu, 0b1);
    assert_eq!((vcpu.gprs[RCX as usize], vcpu.gprs[RDI as usize]), (4, 0x8004), "stopped after element 4");
    assert_eq!((vcpu.rip, vcpu.rflags & RFLAGS_RF), (0x1000, RFLAGS_RF));
    // Resumed (RF set, as the #DB handler's IRET returns it), the rest goes
    // through without another hit.
    vcpu.injected = None;
    run(exit, &mut vcpu, &mut vm, &mut host);
    assert_eq!((vcpu.injected, vcpu.gprs[RCX as usize], vcpu.rip), (None, 0, 0x1002));
    assert_eq!(vcpu.rflags & RFLAGS_RF, 0);
    // OUTSB reads memory: a write breakpoint does not see it, a read/write one does.
    for (rw, expected) in [(1, None), (3, Some(Injected::DebugTrap(0b1)))] {
        let mut vcpu = FakeVcpu { dr: [0x8003, 0, 0, 0], dr7: breakpoint(0, rw, 0), ..FakeVcpu::flat() };
        let exit = rep_string(&mut vcpu, false, 8);
        run(exit, &mut vcpu, &mut vm, &mut host);
        assert_eq!(vcpu.injected, expected, "R/W {rw}");
    }
}

/// A long-mode vCPU with `code` at RIP 0x1000 and `DEVICE` mapped at
/// `DEVICE_LINEAR` and `ALIAS_LINEAR`, RBX pointing at the first.
fn mmio_vm(code: &[u8]) -> (FakeVcpu, FakeVm, FakeHost) {
    let (mut vcpu, mut vm, host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, DEVICE_LINEAR, DEVICE, PRESENT | WRITABLE);
    tables.map(&mut vm.memory, ALIAS_LINEAR, DEVICE, PRESENT | WRITABLE);
    vm.memory.bytes[0x1000..0x1000 + code.len()].copy_from_slice(code);
    vcpu.gprs[RBX as usize] = DEVICE_LINEAR;
    (vcpu, vm, host)
}

fn device() -> Exit {
    Exit::DeviceMemory { address: DEVICE, fetch: false }
}

#[test]
fn an_emulated_mmio_instruction_single_steps() {
    let (vcpu, mut vm, mut host) = mmio_vm(&[0x8b, 0x03]); // mov eax, [rbx]
    let mut vcpu = single_stepped(vcpu);
    let outcome = run(device(), &mut vcpu, &mut vm, &mut host);
    assert_eq!((outcome, vcpu.rip, vcpu.gprs[RAX as usize]), (Outcome::Resume, 0x1002, 0xffff_ffff));
    assert_trap(&vcpu, dr6::BS);
}

#[test]
fn data_breakpoints_see_the_device_operand_through_the_guests_tables() {
    let load = [0x8b, 0x03]; // mov eax, [rbx]
    let store = [0x89, 0x03]; // mov [rbx], eax
    let compare = [0x39, 0x03]; // cmp [rbx], eax
    let add = [0x01, 0x03]; // add [rbx], eax
    for (code, address, rw, len, hit) in [
        (&load, DEVICE_LINEAR, 3, 3, true),
        (&load, DEVICE_LINEAR + 2, 3, 0, true),
        (&load, DEVICE_LINEAR + 4, 3, 3, false),
        (&load, DEVICE_LINEAR, 1, 3, false),
        (&store, DEVICE_LINEAR, 1, 3, true),
        (&compare, DEVICE_LINEAR, 1, 3, false),
        (&compare, DEVICE_LINEAR, 3, 3, true),
        (&add, DEVICE_LINEAR + 3, 1, 0, true),
        // Not mapped at all: no match.
        (&load, 0x60_0000, 3, 3, false),
        // Another mapping of the same device page matches too (a limit:
        // only the operand's guest-physical address is known).
        (&load, ALIAS_LINEAR, 3, 3, true),
    ] {
        let (mut vcpu, mut vm, mut host) = mmio_vm(code);
        vcpu.dr[2] = address;
        vcpu.dr7 = breakpoint(2, rw, len);
        let outcome = run(device(), &mut vcpu, &mut vm, &mut host);
        assert_eq!((outcome, vcpu.rip), (Outcome::Resume, 0x1002));
        let expected = hit.then_some(Injected::DebugTrap(0b100));
        assert_eq!(vcpu.injected, expected, "{code:02x?} with breakpoint at {address:#x} R/W {rw} LEN {len}");
    }
}

#[test]
fn string_and_stack_operands_match_by_their_linear_addresses() {
    // rep movsd from RAM at 0x8000 to the device; breakpoint on the third
    // source element: three elements, then the #DB.
    let (mut vcpu, mut vm, mut host) = mmio_vm(&[0xf3, 0xa5]);
    vcpu.gprs[RSI as usize] = 0x8000;
    vcpu.gprs[RDI as usize] = DEVICE_LINEAR;
    vcpu.gprs[RCX as usize] = 10;
    vcpu.dr[3] = 0x8008;
    vcpu.dr7 = breakpoint(3, 3, 3);
    run(device(), &mut vcpu, &mut vm, &mut host);
    assert_eq!(vcpu.injected, Some(Injected::DebugTrap(0b1000)));
    assert_eq!((vcpu.gprs[RCX as usize], vcpu.rip, vcpu.rflags & RFLAGS_RF), (7, 0x1000, RFLAGS_RF));
    // Single-stepped, one element per exit.
    let (vcpu, mut vm, mut host) = mmio_vm(&[0xf3, 0xab]); // rep stosd
    let mut vcpu = single_stepped(vcpu);
    vcpu.gprs[RDI as usize] = DEVICE_LINEAR;
    vcpu.gprs[RCX as usize] = 2;
    run(device(), &mut vcpu, &mut vm, &mut host);
    assert_trap(&vcpu, dr6::BS);
    assert_eq!((vcpu.gprs[RCX as usize], vcpu.rip), (1, 0x1000));
    vcpu.injected = None;
    run(device(), &mut vcpu, &mut vm, &mut host);
    assert_trap(&vcpu, dr6::BS);
    assert_eq!((vcpu.gprs[RCX as usize], vcpu.rip), (0, 0x1002));
    // push qword [rbx]: the stack write at RSP - 8 hits a write breakpoint.
    let (mut vcpu, mut vm, mut host) = mmio_vm(&[0xff, 0x33]);
    vcpu.gprs[4] = 0x9000;
    vcpu.dr[0] = 0x8ff8;
    vcpu.dr7 = breakpoint(0, 1, 2);
    run(device(), &mut vcpu, &mut vm, &mut host);
    assert_eq!((vcpu.injected, vcpu.rip, vcpu.gprs[4]), (Some(Injected::DebugTrap(0b1)), 0x1002, 0x8ff8));
}
