//! Instructions the back end could not measure or decode (SVM without
//! next-RIP save or decode assists): `dispatch` measures the instruction at
//! CS:RIP before its handler can skip it, a CR access that arrives
//! `Undecoded` is decoded there, and an intercepted #UD on VMCALL or VMMCALL
//! is the hypercall. The bytes are fetched as the guest's CPU fetched them. A
//! back end that knows the length (VMX) never has them fetched.

use super::*;
use crate::exit::CrAccess;
use crate::vmcall::VERSION;
use crate::{PF, UD};
use arch::control::{cr0, cr4};
use arch::decode::CodeSize;
use devices::layout::LAPIC_BASE;

const TPR: u64 = LAPIC_BASE + 0x80;
/// #PF error code: an instruction fetch (P = 1, W = 2, U = 4 as usual).
const FETCH: u32 = 1 << 4;
const TS: u64 = 1 << 3;
const MP: u64 = 1 << 1;
const EM: u64 = 1 << 2;
const ET: u64 = 1 << 4;
const NE: u64 = 1 << 5;

/// `vcpu` on a back end that does not know how long the exiting instruction
/// is: skipping before a handler says so panics in the fake.
fn unmeasured(vcpu: FakeVcpu) -> FakeVcpu {
    FakeVcpu { length_known: false, instruction_length: 0, ..vcpu }
}

/// `vcpu` on the two kinds of SVM back end: without next-RIP save, and with
/// it but with a length (2) that the instruction decoded at RIP overrides.
fn both(vcpu: FakeVcpu) -> [FakeVcpu; 2] {
    [unmeasured(vcpu.clone()), vcpu]
}

/// `code` at guest-physical `at`.
fn put(vm: &mut FakeVm, at: u64, code: &[u8]) {
    vm.memory.bytes[at as usize..][..code.len()].copy_from_slice(code);
}

fn ud() -> Exit {
    Exit::Exception { vector: UD, error_code: None }
}

/// Asserts the instruction completed and RIP moved past its decoded `length`.
#[track_caller]
fn assert_measured(vcpu: &FakeVcpu, outcome: &Outcome, rip: u64, length: u8) {
    assert_eq!(*outcome, Outcome::Resume);
    assert_eq!(vcpu.injected, None);
    assert_eq!(vcpu.length_set, Some(length), "the decoded length");
    assert_eq!((vcpu.rip, vcpu.skipped), (rip + length as u64, 1), "moved past the instruction once");
}

/// Asserts the instruction had no effect on the vCPU (RIP included).
#[track_caller]
fn assert_untouched(vcpu: &FakeVcpu, before: &FakeVcpu) {
    assert_eq!((vcpu.rip, vcpu.skipped), (before.rip, 0), "RIP stays on the instruction");
    assert_eq!(vcpu.gprs, before.gprs);
    assert_eq!((vcpu.cr0, vcpu.cr4, vcpu.efer, vcpu.xcr0), (before.cr0, before.cr4, before.efer, before.xcr0));
    assert_eq!(vcpu.halted, before.halted);
    assert_eq!(vcpu.length_set, None);
}

/// Asserts the guest gets #PF for a fetch at `linear` with `error_code`.
#[track_caller]
fn assert_fetch_fault(vcpu: &FakeVcpu, before: &FakeVcpu, outcome: &Outcome, linear: u64, error_code: u32) {
    assert_eq!(*outcome, Outcome::Resume);
    assert_eq!(exception(vcpu), Some((PF, Some(error_code))));
    assert_eq!(vcpu.cr2, linear, "CR2 names the byte the CPU could not fetch");
    assert_untouched(vcpu, before);
}

#[test]
#[should_panic(expected = "length unknown")]
fn the_fake_refuses_a_skip_before_the_length_is_known() {
    // What keeps every test here honest: the real back end could not move RIP.
    crate::Vcpu::skip_instruction(&mut unmeasured(FakeVcpu::flat()));
}

// The exits `dispatch` measures.

/// The exits whose handler skips the instruction, each with an encoding.
fn measured_exits() -> [(Exit, &'static [u8]); 7] {
    [
        (Exit::Cpuid, &[0x0f, 0xa2]),
        (Exit::Hlt, &[0xf4]),
        (Exit::Rdmsr, &[0x0f, 0x32]),
        (Exit::Wrmsr, &[0x0f, 0x30]),
        (Exit::Xsetbv, &[0x0f, 0x01, 0xd1]),
        (Exit::CacheFlush, &[0x0f, 0x09]),
        (Exit::Hypercall, &[0x0f, 0x01, 0xd9]),
    ]
}

/// PAUSE (F3 90, the pause filter's intercept on SVM) is measured like the
/// others, then offers the core.
#[test]
fn a_pause_is_measured_and_yields() {
    for bytes in [&[0xf3, 0x90][..], &[0x66, 0xf3, 0x90]] {
        let (vcpu, mut vm, _, _) = long_mode_vm();
        let (vcpu, outcome) = run_at(&Exit::Pause, &unmeasured(vcpu), &mut vm, 0x1000, bytes);
        assert_eq!(outcome, Outcome::Yield);
        assert_eq!(vcpu.length_set, Some(bytes.len() as u8));
        assert_eq!((vcpu.rip, vcpu.skipped), (0x1000 + bytes.len() as u64, 1));
    }
}

/// Registers for `exit` to complete: CPUID leaf 0, MISC_ENABLE read, an
/// MTRR default-type write, XCR0 = 3, the version hypercall (HLT halts with
/// IF set, a cache flush needs nothing).
fn ready(exit: &Exit, vcpu: &mut FakeVcpu) {
    let gprs = &mut vcpu.gprs;
    match exit {
        Exit::Cpuid | Exit::Hypercall => gprs[RAX as usize] = 0,
        Exit::Rdmsr => gprs[RCX as usize] = 0x1a0,
        Exit::Wrmsr => (gprs[RCX as usize], gprs[RAX as usize], gprs[RDX as usize]) = (0x2ff, 0x806, 0),
        Exit::Xsetbv => (gprs[RCX as usize], gprs[RAX as usize], gprs[RDX as usize]) = (0, 3, 0),
        _ => {}
    }
}

/// Asserts `exit`'s handler did what `ready` set it up for.
#[track_caller]
fn assert_handled(exit: &Exit, vcpu: &FakeVcpu) {
    match exit {
        Exit::Cpuid => assert_eq!(vcpu.gprs[RBX as usize], u32::from_le_bytes(*b"Genu") as u64),
        Exit::Hlt => assert!(vcpu.halted),
        Exit::Rdmsr => {
            assert_eq!((vcpu.gprs[RAX as usize], vcpu.gprs[RDX as usize]), (crate::msr::misc_enable::RESET, 0))
        }
        Exit::Xsetbv => assert_eq!(vcpu.xcr0, 3),
        Exit::Hypercall => assert_eq!(vcpu.gprs[RAX as usize], VERSION),
        _ => {}
    }
}

/// Runs `exit` on a fresh copy of `vcpu` with `code` at guest-physical
/// `at` (where its CS:RIP leads).
fn run_at(exit: &Exit, vcpu: &FakeVcpu, vm: &mut FakeVm, at: u64, code: &[u8]) -> (FakeVcpu, Outcome) {
    let mut vcpu = vcpu.clone();
    ready(exit, &mut vcpu);
    put(vm, at, code);
    let outcome = run(exit.clone(), &mut vcpu, vm, &mut FakeHost::default());
    (vcpu, outcome)
}

#[test]
fn each_measured_exit_moves_rip_by_the_decoded_length_prefixes_included() {
    // Prefixes every one of these takes: segment overrides and 67; and 66,
    // F2, F3 but on XSETBV (#UD with them).
    let any: [&[u8]; 4] = [&[], &[0x2e], &[0x67, 0x3e], &[0x26, 0x36, 0x64, 0x65]];
    let repeat: [&[u8]; 3] = [&[0x66], &[0xf3], &[0xf2, 0x66]];
    let real = FakeVcpu { cr0: 0, code_size: CodeSize::Bits16, ..FakeVcpu::flat() };
    for (mode, paged) in [(real, false), (FakeVcpu::flat(), false), (long_mode_vm().0, true)] {
        for (exit, code) in measured_exits() {
            let mut prefixes = any.to_vec();
            if exit != Exit::Xsetbv {
                prefixes.extend(repeat);
            }
            for prefix in prefixes {
                let bytes = [prefix, code].concat();
                let mut vm = if paged { long_mode_vm().1 } else { machine().0 };
                let (vcpu, outcome) = run_at(&exit, &unmeasured(mode.clone()), &mut vm, 0x1000, &bytes);
                let context = format!("{exit:?} {bytes:02x?} in {:?}", mode.code_size);
                assert_eq!(vcpu.length_set, Some(bytes.len() as u8), "{context}");
                assert_measured(&vcpu, &outcome, 0x1000, bytes.len() as u8);
                assert_handled(&exit, &vcpu);
            }
        }
    }
}

#[test]
fn rex_and_other_forms_count_in_64_bit_mode() {
    // Fourteen prefixes and HLT: 15 bytes, the most there may be.
    let fifteen = [[0x2e; 14].as_slice(), &[0xf4]].concat();
    for (exit, bytes) in [
        (Exit::Cpuid, &[0x48, 0x0f, 0xa2][..]),
        // A REX that a legacy prefix follows still counts in the length.
        (Exit::Cpuid, &[0x48, 0x66, 0x0f, 0xa2]),
        (Exit::Wrmsr, &[0x4f, 0x0f, 0x30]),
        (Exit::Hlt, &[0x66, 0x48, 0xf4]),
        (Exit::Hlt, &fifteen),
        (Exit::Hypercall, &[0x41, 0x0f, 0x01, 0xd9]),
        (Exit::Hypercall, &[0x0f, 0x01, 0xc1]),
        (Exit::Hypercall, &[0x64, 0x0f, 0x01, 0xc1]),
        // F3 0F 01 D9 is VMGEXIT, which exits as VMMCALL outside SEV-ES.
        (Exit::Hypercall, &[0xf3, 0x0f, 0x01, 0xd9]),
        (Exit::CacheFlush, &[0x0f, 0x08]),
        (Exit::CacheFlush, &[0xf3, 0x0f, 0x09]),
    ] {
        let (vcpu, mut vm, _, _) = long_mode_vm();
        let (vcpu, outcome) = run_at(&exit, &unmeasured(vcpu), &mut vm, 0x1000, bytes);
        assert_measured(&vcpu, &outcome, 0x1000, bytes.len() as u8);
        assert_handled(&exit, &vcpu);
    }
}

#[test]
fn with_the_length_known_nothing_is_fetched() {
    // VMX (and SVM with next-RIP save): RIP moves by the exit's length, and
    // bytes at RIP that decode as nothing, or no page at all, change nothing.
    for (exit, _) in measured_exits() {
        let (vcpu, mut vm, _, mut tables) = long_mode_vm();
        let (done, outcome) = run_at(&exit, &vcpu, &mut vm, 0x1000, &[0xff; 15]);
        assert_done(&done, &outcome, 0x1000);
        assert_eq!(done.length_set, None, "{exit:?}");
        assert_handled(&exit, &done);

        tables.map(&mut vm.memory, 0x1000, 0x1000, 0);
        let (done, outcome) = run_at(&exit, &vcpu, &mut vm, 0x1000, &[0x90]);
        assert_done(&done, &outcome, 0x1000);
        assert_eq!((done.length_set, done.cr2), (None, 0), "{exit:?}");
    }
}

#[test]
fn the_fetch_goes_through_cs_outside_64_bit_mode() {
    let (mut vm, _) = machine();
    let mut vcpu = unmeasured(FakeVcpu::flat());
    vcpu.segment_bases[crate::SegmentRegister::Cs as usize] = 0x2000;
    vcpu.rip = 0x10;
    put(&mut vm, 0x10, &[0x0f, 0xa2]); // what RIP alone points at
    let (vcpu, outcome) = run_at(&Exit::Cpuid, &vcpu, &mut vm, 0x2010, &[0x66, 0x0f, 0xa2]);
    assert_measured(&vcpu, &outcome, 0x10, 3);
}

#[test]
fn an_instruction_that_is_not_one_the_cpu_intercepts_stops_the_vm() {
    // Another vCPU rewrote it, or the back end is wrong about the exit: no
    // length to move RIP by, so nothing happens and the VM stops.
    let sixteen = [[0x66; 15].as_slice(), &[0xf4]].concat();
    let cases: [&[u8]; 8] = [
        &[0x90],                   // NOP
        &[0x0f, 0x01, 0xd8],       // VMRUN
        &[0x0f, 0x0b],             // UD2
        &[0xf0, 0x0f, 0xa2],       // LOCK CPUID: #UD
        &[0x66, 0x0f, 0x01, 0xc1], // 66 VMCALL: #UD
        &[0x48, 0x0f, 0xa2],       // DEC EAX outside 64-bit mode
        &[0x0f, 0x01, 0x30],       // LMSW from memory
        &sixteen,                  // too long: #GP
    ];
    for (exit, _) in measured_exits() {
        for code in cases {
            let (mut vm, _) = machine();
            let before = unmeasured(FakeVcpu::flat());
            let (vcpu, outcome) = run_at(&exit, &before, &mut vm, 0x1000, code);
            assert!(is_unsupported(&outcome), "{exit:?} {code:02x?}: {outcome:?}");
            assert_eq!(vcpu.injected, None);
            let mut ready_before = before.clone();
            ready(&exit, &mut ready_before);
            assert_untouched(&vcpu, &ready_before);
        }
    }
}

#[test]
fn an_instruction_running_off_the_end_of_ram_is_measured_as_far_as_it_goes() {
    let (mut vm, _) = machine();
    let end = RAM as u64;
    // HLT in the last byte is all there.
    let (vcpu, outcome) =
        run_at(&Exit::Hlt, &unmeasured(FakeVcpu { rip: end - 1, ..FakeVcpu::flat() }), &mut vm, end - 1, &[0xf4]);
    assert_measured(&vcpu, &outcome, end - 1, 1);
    // CPUID is not: no fault the guest's CPU would take, and no length.
    let before = unmeasured(FakeVcpu { rip: end - 1, ..FakeVcpu::flat() });
    let (vcpu, outcome) = run_at(&Exit::Cpuid, &before, &mut vm, end - 1, &[0x0f]);
    assert!(is_unsupported(&outcome), "{outcome:?}");
    assert_eq!(vcpu.rip, end - 1);
    assert_eq!(vcpu.injected, None);
}

#[test]
fn a_fetch_the_guest_cannot_make_is_its_page_fault() {
    for (exit, code) in measured_exits() {
        for (flags, cpl, error_code) in [
            (0, 0, FETCH),
            (PRESENT | WRITABLE | NO_EXECUTE, 0, FETCH | 1),
            (PRESENT | WRITABLE, 3, FETCH | 4 | 1), // user fetch from a supervisor page
        ] {
            let (vcpu, mut vm, _, mut tables) = long_mode_vm();
            tables.map(&mut vm.memory, 0x40_0000, 0x3000, flags);
            let before = unmeasured(FakeVcpu { rip: 0x40_0000, cpl, ..vcpu });
            let (vcpu, outcome) = run_at(&exit, &before, &mut vm, 0x3000, code);
            let mut ready_before = before.clone();
            ready(&exit, &mut ready_before);
            assert_fetch_fault(&vcpu, &ready_before, &outcome, 0x40_0000, error_code);
        }
        // The same page executable: measured.
        let (vcpu, mut vm, _, mut tables) = long_mode_vm();
        tables.map(&mut vm.memory, 0x40_0000, 0x3000, PRESENT);
        let before = unmeasured(FakeVcpu { rip: 0x40_0000, ..vcpu });
        let (vcpu, outcome) = run_at(&exit, &before, &mut vm, 0x3000, code);
        assert_measured(&vcpu, &outcome, 0x40_0000, code.len() as u8);
    }
}

#[test]
fn a_non_canonical_rip_is_gp() {
    let (vcpu, mut vm, _, _) = long_mode_vm();
    let before = unmeasured(FakeVcpu { rip: 0x0000_8000_0000_0000, ..vcpu });
    let (vcpu, outcome) = run_at(&Exit::Cpuid, &before, &mut vm, 0x1000, &[0x0f, 0xa2]);
    assert_gp(&vcpu, &outcome, before.rip);
    assert_eq!(vcpu.length_set, None);
}

#[test]
fn an_instruction_running_into_a_page_the_guest_cannot_fetch_faults_there() {
    for (flags, error_code) in [(0, FETCH), (PRESENT | WRITABLE | NO_EXECUTE, FETCH | 1)] {
        for (exit, code) in measured_exits() {
            // The last byte runs into the next page.
            let (vcpu, mut vm, _, mut tables) = long_mode_vm();
            tables.map(&mut vm.memory, 0x2000, 0x2000, flags);
            let at = 0x2000 - code.len() as u64 + 1;
            let before = unmeasured(FakeVcpu { rip: at, ..vcpu.clone() });
            let (after, outcome) = run_at(&exit, &before, &mut vm, at, code);
            let mut ready_before = before.clone();
            ready(&exit, &mut ready_before);
            assert_fetch_fault(&after, &ready_before, &outcome, 0x2000, error_code);

            // One that ends right before that page needs none of it.
            let at = 0x2000 - code.len() as u64;
            let before = unmeasured(FakeVcpu { rip: at, ..vcpu });
            let (after, outcome) = run_at(&exit, &before, &mut vm, at, code);
            assert_measured(&after, &outcome, at, code.len() as u8);
        }
        // Prefixes count: 66 0F A2 from two bytes before the page needs it.
        let (vcpu, mut vm, _, mut tables) = long_mode_vm();
        tables.map(&mut vm.memory, 0x2000, 0x2000, flags);
        let before = unmeasured(FakeVcpu { rip: 0x1ffe, ..vcpu });
        let (after, outcome) = run_at(&Exit::Cpuid, &before, &mut vm, 0x1ffe, &[0x66, 0x0f, 0xa2]);
        let mut ready_before = before.clone();
        ready(&Exit::Cpuid, &mut ready_before);
        assert_fetch_fault(&after, &ready_before, &outcome, 0x2000, error_code);
    }
}

#[test]
fn a_cr_access_the_cpu_decoded_is_measured_when_its_length_is_not_known() {
    // SVM with decode assists but without next-RIP save names the register
    // but not the length.
    let (mut vm, mut host) = machine();
    for (access, code) in [
        (CrAccess::MovTo { cr: 4, gpr: RAX }, &[0x0f, 0x22, 0xe0][..]),
        (CrAccess::MovTo { cr: 4, gpr: RAX }, &[0x66, 0x0f, 0x22, 0xe0]),
        (CrAccess::MovFrom { cr: 8, gpr: RBX }, &[0xf0, 0x0f, 0x20, 0xc3]),
        (CrAccess::Clts, &[0x0f, 0x06]),
        (CrAccess::Lmsw { source: 1 }, &[0x0f, 0x01, 0xf0]),
    ] {
        let mut vcpu = unmeasured(FakeVcpu { cr4: cr4::PSE, ..FakeVcpu::flat() });
        vcpu.gprs[RAX as usize] = cr4::PSE;
        put(&mut vm, 0x1000, code);
        let outcome = run(Exit::Cr(access), &mut vcpu, &mut vm, &mut host);
        assert_measured(&vcpu, &outcome, 0x1000, code.len() as u8);
    }
}

// Control-register accesses decoded at RIP.

/// Runs an `Undecoded` access of CR`cr` with `code` at RIP 0x1000 (flat).
fn undecoded(vcpu: &mut FakeVcpu, vm: &mut FakeVm, cr: u8, write: bool, code: &[u8]) -> Outcome {
    put(vm, 0x1000, code);
    run(Exit::Cr(CrAccess::Undecoded { cr, write }), vcpu, vm, &mut FakeHost::default())
}

#[test]
fn an_undecoded_cr4_write_applies_the_register_it_names() {
    let value = cr4::PAE | cr4::PSE | cr4::OSFXSR;
    for (code, gpr) in [(&[0x0f, 0x22, 0xe0][..], RAX), (&[0x66, 0x0f, 0x22, 0xe3], RBX), (&[0x0f, 0x22, 0xe6], RSI)] {
        for mut vcpu in both(FakeVcpu::flat()) {
            let (mut vm, _) = machine();
            vcpu.gprs = [u64::MAX; 16];
            vcpu.gprs[gpr as usize] = value;
            let outcome = undecoded(&mut vcpu, &mut vm, 4, true, code);
            assert_measured(&vcpu, &outcome, 0x1000, code.len() as u8);
            assert_eq!(vcpu.cr4, value, "{code:02x?}");
        }
    }
    // In 64-bit mode REX.B names R8..R15: mov cr4, r8.
    let (vcpu, mut vm, _, _) = long_mode_vm();
    let mut vcpu = unmeasured(vcpu);
    vcpu.gprs[8] = cr4::PAE | cr4::PGE;
    let outcome = undecoded(&mut vcpu, &mut vm, 4, true, &[0x41, 0x0f, 0x22, 0xe0]);
    assert_measured(&vcpu, &outcome, 0x1000, 4);
    assert_eq!(vcpu.cr4, cr4::PAE | cr4::PGE);
}

#[test]
fn an_undecoded_cr4_write_of_bits_guests_may_not_set_is_gp_and_not_skipped() {
    for bit in [cr4::VMXE, cr4::SMXE, cr4::PKE, 1 << 24] {
        for mut vcpu in both(FakeVcpu { cr4: cr4::PAE, ..FakeVcpu::flat() }) {
            let (mut vm, _) = machine();
            vcpu.gprs[RAX as usize] = cr4::PAE | bit;
            let outcome = undecoded(&mut vcpu, &mut vm, 4, true, &[0x0f, 0x22, 0xe0]);
            assert_gp(&vcpu, &outcome, 0x1000);
            assert_eq!(vcpu.cr4, cr4::PAE, "bit {bit:#x}: CR4 unchanged");
        }
    }
}

#[test]
fn outside_64_bit_mode_a_cr_write_takes_the_registers_low_half() {
    // MOV to CRn has only a 32-bit operand there (as `arch::decode::MovCr`
    // says); the upper half of the register is whatever 64-bit code or the
    // VMM left in it, and the CPU neither looks at it nor faults on it.
    let real = FakeVcpu { cr0: 0, code_size: CodeSize::Bits16, ..FakeVcpu::flat() };
    for mode in [real, FakeVcpu::flat()] {
        for mut vcpu in both(mode.clone()) {
            let (mut vm, _) = machine();
            vcpu.gprs[RAX as usize] = 0xdead_beef_0000_0000 | cr4::PAE | cr4::PSE;
            let outcome = undecoded(&mut vcpu, &mut vm, 4, true, &[0x0f, 0x22, 0xe0]);
            assert_measured(&vcpu, &outcome, 0x1000, 3);
            assert_eq!(vcpu.cr4, cr4::PAE | cr4::PSE, "{:?}", mode.code_size);
        }
        for mut vcpu in both(mode.clone()) {
            let (mut vm, _) = machine();
            vcpu.gprs[RDX as usize] = 0xffff_ffff_0000_0007;
            let outcome = undecoded(&mut vcpu, &mut vm, 8, true, &[0xf0, 0x0f, 0x22, 0xc2]);
            assert_measured(&vcpu, &outcome, 0x1000, 4);
            assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0x70, "{:?}", mode.code_size);
        }
    }
    // The same for an access the CPU decoded (VMX).
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RBX as usize] = 1 << 32 | cr0::PE | TS;
    let outcome = run(Exit::Cr(CrAccess::MovTo { cr: 0, gpr: RBX }), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, cr0::PE | TS);
    // In 64-bit mode the whole register is the operand: its bit 32 is #GP.
    let (vcpu, mut vm, _, _) = long_mode_vm();
    let mut vcpu = unmeasured(vcpu);
    vcpu.gprs[RAX as usize] = 1 << 32 | cr4::PAE;
    let outcome = undecoded(&mut vcpu, &mut vm, 4, true, &[0x0f, 0x22, 0xe0]);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr4, cr4::PAE);
}

#[test]
fn an_undecoded_cr0_write_enters_long_mode_as_a_decoded_one_does() {
    for mut vcpu in both(FakeVcpu { cr4: cr4::PAE, efer: arch::control::efer::LME, ..FakeVcpu::flat() }) {
        let (mut vm, _) = machine();
        vcpu.gprs[RBX as usize] = cr0::PE | cr0::PG;
        let outcome = undecoded(&mut vcpu, &mut vm, 0, true, &[0x0f, 0x22, 0xc3]); // mov cr0, ebx
        assert_measured(&vcpu, &outcome, 0x1000, 3);
        assert_eq!(vcpu.cr0, cr0::PE | cr0::PG);
        assert_ne!(vcpu.efer & arch::control::efer::LMA, 0);
    }
}

#[test]
fn lock_mov_cr0_is_cr8_and_reaches_the_local_apic_tpr() {
    let readers = both(FakeVcpu { gprs: [u64::MAX; 16], ..FakeVcpu::flat() });
    for (mut vcpu, mut reader) in both(FakeVcpu::flat()).into_iter().zip(readers) {
        let (mut vm, _) = machine();
        // lock mov cr0, eax: AMD's CR8 outside 64-bit mode.
        vcpu.gprs[RAX as usize] = 0x9;
        let outcome = undecoded(&mut vcpu, &mut vm, 8, true, &[0xf0, 0x0f, 0x22, 0xc0]);
        assert_measured(&vcpu, &outcome, 0x1000, 4);
        assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0x90, "TPR[7:4] = CR8");
        // cs lock mov ebx, cr0 reads it back.
        let outcome = undecoded(&mut reader, &mut vm, 8, false, &[0x2e, 0xf0, 0x0f, 0x20, 0xc3]);
        assert_measured(&reader, &outcome, 0x1000, 5);
        assert_eq!(reader.gprs[RBX as usize], 9, "the whole register");
    }
    // In 64-bit mode, REX.R: mov rcx, cr8.
    let (vcpu, mut vm, _, _) = long_mode_vm();
    vm.chipset.mmio_write(0, TPR, 4, 0x5f, 0, &mut vm.memory);
    let mut vcpu = unmeasured(vcpu);
    vcpu.gprs[RCX as usize] = u64::MAX;
    let outcome = undecoded(&mut vcpu, &mut vm, 8, false, &[0x44, 0x0f, 0x20, 0xc1]);
    assert_measured(&vcpu, &outcome, 0x1000, 4);
    assert_eq!(vcpu.gprs[RCX as usize], 5);
}

#[test]
fn an_undecoded_cr8_write_with_reserved_bits_is_gp() {
    for mut vcpu in both(FakeVcpu::flat()) {
        let (mut vm, _) = machine();
        vm.chipset.mmio_write(0, TPR, 4, 0x30, 0, &mut vm.memory);
        vcpu.gprs[RDX as usize] = 0x10;
        let outcome = undecoded(&mut vcpu, &mut vm, 8, true, &[0xf0, 0x0f, 0x22, 0xc2]);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0x30, "TPR unchanged");
    }
}

#[test]
fn clts_and_lmsw_come_as_undecoded_cr0_writes() {
    for mut vcpu in both(FakeVcpu { cr0: cr0::PE | TS | MP | ET | NE, ..FakeVcpu::flat() }) {
        let (mut vm, _) = machine();
        let outcome = undecoded(&mut vcpu, &mut vm, 0, true, &[0x0f, 0x06]);
        assert_measured(&vcpu, &outcome, 0x1000, 2);
        assert_eq!(vcpu.cr0, cr0::PE | MP | ET | NE, "CLTS clears TS alone");
    }
    for mut vcpu in both(FakeVcpu { cr0: cr0::PE | MP | TS | ET | NE, ..FakeVcpu::flat() }) {
        let (mut vm, _) = machine();
        // lmsw si: PE cannot be cleared, MP and TS follow the source, EM set.
        vcpu.gprs[RSI as usize] = 0xffff_0000_0000_fff4;
        let outcome = undecoded(&mut vcpu, &mut vm, 0, true, &[0x66, 0x0f, 0x01, 0xf6]);
        assert_measured(&vcpu, &outcome, 0x1000, 4);
        assert_eq!(vcpu.cr0, cr0::PE | EM | ET | NE);
    }
    // LMSW from real mode enters protected mode; lmsw r11w in 64-bit mode.
    let mut vcpu = unmeasured(FakeVcpu { cr0: ET, code_size: CodeSize::Bits16, ..FakeVcpu::flat() });
    let (mut vm, _) = machine();
    vcpu.gprs[RAX as usize] = 1;
    let outcome = undecoded(&mut vcpu, &mut vm, 0, true, &[0x0f, 0x01, 0xf0]);
    assert_measured(&vcpu, &outcome, 0x1000, 3);
    assert_eq!(vcpu.cr0, cr0::PE | ET);
    let (vcpu, mut vm, _, _) = long_mode_vm();
    let mut vcpu = unmeasured(FakeVcpu { cr0: vcpu.cr0 | TS, ..vcpu });
    vcpu.gprs[11] = 0;
    let outcome = undecoded(&mut vcpu, &mut vm, 0, true, &[0x41, 0x0f, 0x01, 0xf3]);
    assert_measured(&vcpu, &outcome, 0x1000, 4);
    assert_eq!(vcpu.cr0 & (TS | cr0::PE), cr0::PE);
}

#[test]
fn an_instruction_that_is_not_the_access_that_exited_stops_the_vm() {
    let cases: [(u8, bool, &[u8]); 13] = [
        (4, true, &[0x0f, 0x22, 0xc0]),        // the exit says CR4, the bytes CR0
        (0, true, &[0x0f, 0x22, 0xe0]),        // and the other way round
        (0, true, &[0x0f, 0x20, 0xc0]),        // a read for a write
        (8, false, &[0xf0, 0x0f, 0x22, 0xc0]), // a write for a read
        (8, true, &[0x0f, 0x22, 0xc0]),        // CR0 without LOCK
        (4, true, &[0x0f, 0x06]),              // CLTS writes CR0 only
        (0, false, &[0x0f, 0x06]),             // and never reads it
        (4, true, &[0x0f, 0x01, 0xf0]),        // nor does LMSW write CR4
        (0, true, &[0x0f, 0xa2]),              // CPUID
        (0, true, &[0x90]),                    // NOP
        (0, true, &[0x0f, 0x01, 0x30]),        // LMSW from memory
        (0, true, &[0xf0, 0x0f, 0x06]),        // LOCK CLTS: #UD
        (0, true, &[0x0f, 0x22, 0xc8]),        // CR1 does not exist
    ];
    for (cr, write, code) in cases {
        for before in both(FakeVcpu { cr0: cr0::PE | TS, ..FakeVcpu::flat() }) {
            let (mut vm, _) = machine();
            let mut before = before;
            before.gprs = [cr0::PE; 16];
            let mut vcpu = before.clone();
            let outcome = undecoded(&mut vcpu, &mut vm, cr, write, code);
            assert!(is_unsupported(&outcome), "CR{cr} write {write} by {code:02x?}: {outcome:?}");
            assert_eq!(vcpu.injected, None);
            assert_untouched(&vcpu, &before);
            assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0, "TPR untouched");
        }
    }
}

#[test]
fn an_undecoded_access_whose_bytes_cannot_be_fetched_is_the_guests_page_fault() {
    // RIP on a page that is not present.
    let (vcpu, mut vm, _, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x1000, 0x1000, 0);
    let before = unmeasured(vcpu);
    let mut vcpu = before.clone();
    let outcome = undecoded(&mut vcpu, &mut vm, 4, true, &[0x0f, 0x22, 0xe0]);
    assert_fetch_fault(&vcpu, &before, &outcome, 0x1000, FETCH);

    // MOV CR4 whose ModRM is on the next page, which is not executable.
    let (vcpu, mut vm, _, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x2000, 0x2000, PRESENT | WRITABLE | NO_EXECUTE);
    put(&mut vm, 0x1ffe, &[0x0f, 0x22, 0xe0]);
    let before = unmeasured(FakeVcpu { rip: 0x1ffe, ..vcpu });
    let mut vcpu = before.clone();
    let outcome =
        run(Exit::Cr(CrAccess::Undecoded { cr: 4, write: true }), &mut vcpu, &mut vm, &mut FakeHost::default());
    assert_fetch_fault(&vcpu, &before, &outcome, 0x2000, FETCH | 1);

    // CLTS ends before it: done.
    let (vcpu, mut vm, _, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x2000, 0x2000, 0);
    put(&mut vm, 0x1ffe, &[0x0f, 0x06]);
    let mut vcpu = unmeasured(FakeVcpu { rip: 0x1ffe, cr0: vcpu.cr0 | TS, ..vcpu });
    let outcome =
        run(Exit::Cr(CrAccess::Undecoded { cr: 0, write: true }), &mut vcpu, &mut vm, &mut FakeHost::default());
    assert_measured(&vcpu, &outcome, 0x1ffe, 2);
    assert_eq!(vcpu.cr0 & TS, 0);
}

// An intercepted #UD.

#[test]
fn vmcall_and_vmmcall_under_ud_are_the_hypercall() {
    for code in [[0x0f, 0x01, 0xc1], [0x0f, 0x01, 0xd9]] {
        for mode in [FakeVcpu::flat(), FakeVcpu { cr0: 0, code_size: CodeSize::Bits16, ..FakeVcpu::flat() }] {
            for mut vcpu in both(mode) {
                let (mut vm, mut host) = machine();
                put(&mut vm, 0x1000, &code);
                vcpu.gprs[RAX as usize] = 0;
                let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
                assert_measured(&vcpu, &outcome, 0x1000, 3);
                assert_eq!(vcpu.gprs[RAX as usize], VERSION, "{code:02x?}");
            }
        }
        // In 64-bit mode through the page tables, and the exit hypercall.
        let (vcpu, mut vm, mut host, mut tables) = long_mode_vm();
        tables.map(&mut vm.memory, 0x40_0000, 0x3000, PRESENT);
        put(&mut vm, 0x3000, &code);
        let mut vcpu = unmeasured(FakeVcpu { rip: 0x40_0000, ..vcpu });
        vcpu.gprs[RAX as usize] = 2;
        vcpu.gprs[RBX as usize] = 7;
        let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
        assert_eq!(outcome, Outcome::Stop(crate::Stop::ExitHypercall { status: 7 }));
        assert_eq!((vcpu.rip, vcpu.skipped), (0x40_0003, 1));
    }
}

#[test]
fn a_hypercall_under_ud_outside_ring_0_answers_eperm() {
    for mut vcpu in both(FakeVcpu { cpl: 3, ..FakeVcpu::flat() }) {
        let (mut vm, mut host) = machine();
        put(&mut vm, 0x1000, &[0x0f, 0x01, 0xc1]);
        let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
        assert_eq!(outcome, Outcome::Resume);
        assert_eq!(vcpu.injected, None);
        assert_eq!((vcpu.rip, vcpu.skipped, vcpu.gprs[RAX as usize]), (0x1003, 1, crate::vmcall::EPERM));
    }
}

#[test]
fn any_other_ud_goes_back_to_the_guest() {
    let cases: [&[u8]; 11] = [
        &[0x66, 0x0f, 0x01, 0xc1], // prefixed: not what the other vendor runs
        &[0xf3, 0x0f, 0x01, 0xd9],
        &[0x2e, 0x0f, 0x01, 0xc1],
        &[0xf0, 0x0f, 0x01, 0xd9],
        &[0x0f, 0x0b],       // UD2
        &[0x0f, 0x01, 0xc2], // VMLAUNCH
        &[0x0f, 0x01, 0xd8], // VMRUN
        &[0x0f, 0x01, 0xd1], // XSETBV
        &[0x0f, 0xa2],
        &[0xff; 15],
        &[0x90],
    ];
    for code in cases {
        for before in both(FakeVcpu::flat()) {
            let (mut vm, mut host) = machine();
            put(&mut vm, 0x1000, code);
            let mut vcpu = before.clone();
            let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
            assert_eq!(outcome, Outcome::Resume, "{code:02x?}");
            assert_eq!(vcpu.injected, Some(Injected::Reflected { vector: UD, error_code: None }), "{code:02x?}");
            assert_untouched(&vcpu, &before);
        }
    }
    // REX before VMMCALL in 64-bit mode is a prefix too.
    let (vcpu, mut vm, mut host, _) = long_mode_vm();
    put(&mut vm, 0x1000, &[0x48, 0x0f, 0x01, 0xd9]);
    let before = unmeasured(vcpu);
    let mut vcpu = before.clone();
    let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.injected, Some(Injected::Reflected { vector: UD, error_code: None }));
    assert_untouched(&vcpu, &before);
}

#[test]
fn a_ud_whose_bytes_cannot_be_fetched_is_the_guests_page_fault() {
    // RIP on a page the guest cannot execute.
    let (vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x1000, 0x1000, PRESENT | WRITABLE | NO_EXECUTE);
    put(&mut vm, 0x1000, &[0x0f, 0x01, 0xc1]);
    let before = unmeasured(vcpu);
    let mut vcpu = before.clone();
    let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
    assert_fetch_fault(&vcpu, &before, &outcome, 0x1000, FETCH | 1);

    // VMCALL across a page boundary, the page after gone: the guest's CPU
    // would fault on it before it could tell the instruction apart.
    for split in 1..3 {
        let (vcpu, mut vm, mut host, mut tables) = long_mode_vm();
        tables.map(&mut vm.memory, 0x2000, 0x2000, 0);
        let at = 0x2000 - split;
        put(&mut vm, at, &[0x0f, 0x01, 0xd9]);
        let before = unmeasured(FakeVcpu { rip: at, ..vcpu });
        let mut vcpu = before.clone();
        let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
        assert_fetch_fault(&vcpu, &before, &outcome, 0x2000, FETCH);
    }

    // UD2 ends before that page: its #UD is the guest's.
    let (vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x2000, 0x2000, 0);
    put(&mut vm, 0x1ffe, &[0x0f, 0x0b]);
    let before = unmeasured(FakeVcpu { rip: 0x1ffe, ..vcpu });
    let mut vcpu = before.clone();
    let outcome = run(ud(), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.injected, Some(Injected::Reflected { vector: UD, error_code: None }));
    assert_untouched(&vcpu, &before);
}

#[test]
fn other_exits_never_fetch_with_the_length_unknown() {
    // Exits with no instruction to skip, or whose handler moves RIP itself,
    // run as with the length known: bytes at RIP that decode as nothing
    // change nothing.
    for exit in [
        Exit::HostInterrupt,
        Exit::InterruptWindow,
        Exit::Timer,
        Exit::UndefinedInstruction,
        Exit::Rdpmc,
        Exit::Exception { vector: crate::DB, error_code: None },
        Exit::ApicWrite { offset: 0x80, value: 0x20 },
    ] {
        let (mut vm, mut host) = machine();
        put(&mut vm, 0x1000, &[0xff; 15]);
        let mut vcpu = unmeasured(FakeVcpu::flat());
        let outcome = run(exit.clone(), &mut vcpu, &mut vm, &mut host);
        assert_eq!(outcome, Outcome::Resume, "{exit:?}");
        assert_eq!((vcpu.rip, vcpu.skipped, vcpu.length_set), (0x1000, 0, None), "{exit:?}");
        assert!(!matches!(exception(&vcpu), Some((PF, _))), "{exit:?}");
    }
}

#[test]
fn random_bytes_at_rip_are_measured_as_the_decoder_reads_them() {
    // Only the bytes vary: each measured exit completes past the length the
    // decoder gives them or stops the VM with nothing done, and a #UD is the
    // hypercall exactly for VMCALL and VMMCALL.
    let mut rng = basalt_fuzz::Rng::new(0x6c65_6e67);
    let (template, mut vm, mut host, _) = long_mode_vm();
    let exits = measured_exits();
    for case in 0..20_000 {
        let exit = if rng.chance(4) { ud() } else { exits[rng.index(exits.len())].0.clone() };
        let mut vcpu = unmeasured(template.clone());
        vcpu.code_size = rng.pick(&[CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64]);
        ready(&exit, &mut vcpu);
        // Within a page, across a page boundary, and running off the end of RAM.
        let near_end = RAM as u64 - 1 - rng.below(15);
        let rip = rng.pick(&[0x1000, 0x1ff8, near_end]);
        vcpu.rip = rip;
        let mut code = [0u8; 15];
        for byte in &mut code {
            *byte = match rng.below(3) {
                0 => rng.pick(&[0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x41, 0x48, 0x0f, 0x0f, 0x01, 0xf4]),
                1 => rng.pick(&[0xa2, 0x32, 0x30, 0x08, 0x09, 0xd1, 0xd9, 0xc1, 0x06, 0x20, 0x22]),
                _ => rng.next_u64() as u8,
            };
        }
        // Half of the time the instruction itself, after prefixes that may or
        // may not suit it.
        if rng.chance(2) {
            let mut planted = Vec::new();
            for _ in 0..rng.below(3) {
                planted.push(rng.pick(&[0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x41, 0x48]));
            }
            let instruction = match &exit {
                Exit::Exception { .. } => [[0x0f, 0x01, 0xc1], [0x0f, 0x01, 0xd9]][rng.index(2)].as_slice(),
                exit => exits.iter().find(|(e, _)| e == exit).unwrap().1,
            };
            planted.extend(instruction);
            code[..planted.len()].copy_from_slice(&planted);
        }
        let available = (RAM - rip as usize).min(15);
        put(&mut vm, rip, &code[..available]);
        let before = vcpu.clone();
        let outcome = run(exit.clone(), &mut vcpu, &mut vm, &mut host);
        let context =
            format!("case {case}: {exit:?} {:02x?} in {:?} -> {outcome:?}", &code[..available], before.code_size);
        if exit == ud() {
            if available >= 3 && [[0x0f, 0x01, 0xc1], [0x0f, 0x01, 0xd9]].contains(&[code[0], code[1], code[2]]) {
                assert_measured(&vcpu, &outcome, rip, 3);
                assert_eq!(vcpu.gprs[RAX as usize], VERSION, "{context}");
            } else {
                assert_eq!(outcome, Outcome::Resume, "{context}");
                assert_eq!(vcpu.injected, Some(Injected::Reflected { vector: UD, error_code: None }), "{context}");
                assert_untouched(&vcpu, &before);
            }
            continue;
        }
        match arch::decode::intercepted_length(&code[..available], before.code_size) {
            Ok(length) => {
                assert_eq!((&outcome, vcpu.length_set), (&Outcome::Resume, Some(length)), "{context}");
                assert_measured(&vcpu, &outcome, rip, length);
                assert_handled(&exit, &vcpu);
            }
            Err(_) => {
                assert!(is_unsupported(&outcome), "{context}");
                assert_eq!(vcpu.injected, None, "{context}");
                assert_untouched(&vcpu, &before);
            }
        }
    }
}
