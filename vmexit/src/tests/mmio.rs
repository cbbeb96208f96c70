//! Device memory: the instruction at RIP is fetched as the guest's CPU would,
//! decoded, done against the chipset, and RIP moved by the decoded length.

use super::*;
use crate::exit::SegmentRegister;
use crate::{PF, UD};
use arch::decode::CodeSize;
use devices::layout::LAPIC_BASE;

/// Nothing claims this guest-physical address.
const UNCLAIMED: u64 = 0xd800_0000;
/// Where the probe sits (a page, outside RAM and the chipset's windows).
const PROBE: u64 = 0xd900_0000;
const TPR: u64 = LAPIC_BASE + 0x80;

fn device_memory(address: u64) -> Exit {
    Exit::DeviceMemory { address, fetch: false }
}

/// A VM with `code` at the vCPU's RIP (flat: linear = physical) and a probe
/// MMIO device whose reads give `read_value`.
fn with_code(vcpu: &FakeVcpu, code: &[u8], read_value: u64) -> (FakeVm, FakeHost, AccessLog) {
    let (mut vm, host) = machine();
    let at = (vcpu.segment_bases[SegmentRegister::Cs as usize] + vcpu.rip) as usize;
    vm.memory.bytes[at..at + code.len()].copy_from_slice(code);
    let (probe, log) = Probe::new(read_value);
    vm.chipset.mmio.lock().register(PROBE, 0x1000, probe).unwrap();
    (vm, host, log)
}

/// Asserts the instruction was emulated: RIP moved by `length` (not by the
/// back end's exit length), nothing injected.
#[track_caller]
fn assert_emulated(vcpu: &FakeVcpu, outcome: &Outcome, rip: u64, length: u64) {
    assert_eq!(*outcome, Outcome::Resume);
    assert_eq!(vcpu.injected, None);
    assert_eq!(vcpu.rip, rip + length, "RIP moves by the decoded length");
    assert_eq!(vcpu.skipped, 0, "no exit length for these exits");
}

/// Asserts the guest gets `vector` and RIP stays on the instruction.
#[track_caller]
fn assert_fault(vcpu: &FakeVcpu, outcome: &Outcome, rip: u64, vector: u8, error_code: Option<u32>) {
    assert_eq!(*outcome, Outcome::Resume);
    assert_eq!(exception(vcpu), Some((vector, error_code)));
    assert_eq!((vcpu.rip, vcpu.skipped), (rip, 0));
}

#[test]
fn a_read_nobody_claims_is_all_ones_zero_extended_into_eax() {
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RAX as usize] = 0x1234_5678_9abc_def0;
    let (mut vm, mut host, _) = with_code(&vcpu, &[0x8b, 0x03], 0); // mov eax, [ebx]
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    assert_eq!(vcpu.gprs[RAX as usize], 0xffff_ffff);
    assert_eq!(vm.chipset.unclaimed().1.reads, 1);
}

#[test]
fn reads_merge_into_the_destination_as_the_cpu_writes_registers() {
    let old = 0x1122_3344_5566_7788u64;
    for (code, mode, dest, expected) in [
        (&[0x8a, 0x03][..], CodeSize::Bits32, RAX, 0x1122_3344_5566_77ef), // mov al, [ebx]
        (&[0x8a, 0x23], CodeSize::Bits32, RAX, 0x1122_3344_5566_ef88),     // mov ah, [ebx]
        (&[0x66, 0x8b, 0x0b], CodeSize::Bits32, RCX, 0x1122_3344_5566_cdef), // mov cx, [ebx]
        (&[0x0f, 0xb6, 0x13], CodeSize::Bits32, RDX, 0xef),                // movzx edx, byte [ebx]
        (&[0x0f, 0xb7, 0x33], CodeSize::Bits32, RSI, 0xcdef),              // movzx esi, word [ebx]
        (&[0x48, 0x8b, 0x03], CodeSize::Bits64, RAX, 0x0123_4567_89ab_cdef), // mov rax, [rbx]
        (&[0x44, 0x8b, 0x0b], CodeSize::Bits64, 9, 0x89ab_cdef),           // mov r9d, [rbx]
        (&[0x8b, 0x07], CodeSize::Bits16, RAX, 0x1122_3344_5566_cdef),     // mov ax, [bx]
        (&[0xa1, 0, 0, 0, 0xd9], CodeSize::Bits32, RAX, 0x89ab_cdef),      // mov eax, [moffs32]
    ] {
        let mut vcpu = FakeVcpu { code_size: mode, gprs: [old; 16], ..FakeVcpu::flat() };
        if mode == CodeSize::Bits16 {
            vcpu.segment_bases[SegmentRegister::Cs as usize] = 0x1_0000;
            vcpu.rip = 0x100;
        }
        let (mut vm, mut host, log) = with_code(&vcpu, code, 0x0123_4567_89ab_cdef);
        let rip = vcpu.rip;
        let outcome = run(device_memory(PROBE + 8), &mut vcpu, &mut vm, &mut host);
        assert_emulated(&vcpu, &outcome, rip, code.len() as u64);
        assert_eq!(vcpu.gprs[dest as usize], expected, "{code:02x?}");
        assert_eq!(reads(&log), 1);
        let changed = vcpu.gprs.iter().enumerate().filter(|&(i, &v)| i != dest as usize && v != old).count();
        assert_eq!(changed, 0, "{code:02x?}: only the destination changes");
    }
}

#[test]
fn writes_take_the_register_or_immediate_and_the_access_size() {
    let rax = 0xfedc_ba98_7654_3210u64;
    for (code, mode, size, value) in [
        (&[0x89, 0x03][..], CodeSize::Bits32, 4, 0x7654_3210), // mov [ebx], eax
        (&[0x88, 0x23], CodeSize::Bits32, 1, 0x32),            // mov [ebx], ah
        (&[0x66, 0x89, 0x03], CodeSize::Bits32, 2, 0x3210),    // mov [ebx], ax
        (&[0x48, 0x89, 0x03], CodeSize::Bits64, 8, rax),       // mov [rbx], rax
        (&[0x44, 0x89, 0x03], CodeSize::Bits64, 4, 0x7654_3210), // mov [rbx], r8d
        (&[0xc6, 0x43, 0x10, 0x5a], CodeSize::Bits32, 1, 0x5a), // mov byte [ebx+0x10], 0x5a
        (&[0x66, 0xc7, 0x03, 0x34, 0x12], CodeSize::Bits32, 2, 0x1234), // mov word [ebx], 0x1234
        (&[0xc7, 0x03, 0x78, 0x56, 0x34, 0x12], CodeSize::Bits32, 4, 0x1234_5678),
        (&[0x48, 0xc7, 0x03, 0xfe, 0xff, 0xff, 0xff], CodeSize::Bits64, 8, u64::MAX - 1), // sign-extended
        (&[0xa3, 0, 0, 0, 0xd9], CodeSize::Bits32, 4, 0x7654_3210),                       // mov [moffs32], eax
    ] {
        let mut vcpu = FakeVcpu { code_size: mode, gprs: [rax; 16], ..FakeVcpu::flat() };
        let (mut vm, mut host, log) = with_code(&vcpu, code, 0);
        let outcome = run(device_memory(PROBE + 0x10), &mut vcpu, &mut vm, &mut host);
        assert_emulated(&vcpu, &outcome, 0x1000, code.len() as u64);
        assert_eq!(*log.lock().unwrap(), [(true, 0x10, size, value)], "{code:02x?}");
        assert_eq!(vcpu.gprs, [rax; 16], "a store changes no register");
    }
}

#[test]
fn a_store_to_the_local_apic_changes_the_model_and_reads_back() {
    let mut vcpu = FakeVcpu::flat();
    // mov dword [ebx], 0x20 ; mov ecx, [ebx]
    let (mut vm, mut host, _) = with_code(&vcpu, &[0xc7, 0x03, 0x20, 0, 0, 0, 0x8b, 0x0b], 0);
    let outcome = run(device_memory(TPR), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 6);
    assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0x20);
    let outcome = run(device_memory(TPR), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1006, 2);
    assert_eq!(vcpu.gprs[RCX as usize], 0x20);
}

#[test]
fn a_byte_store_into_an_apic_register_is_ignored_but_completes() {
    let mut vcpu = FakeVcpu::flat();
    let (mut vm, mut host, _) = with_code(&vcpu, &[0xc6, 0x03, 0x30], 0); // mov byte [ebx], 0x30
    let outcome = run(device_memory(TPR), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 3);
    assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0);
}

#[test]
fn the_local_apic_page_is_the_vcpus_own() {
    let mut vcpu = FakeVcpu { index: 1, ..FakeVcpu::flat() };
    let mut host = FakeHost::default();
    let mut vm = FakeVm::new(2, RAM);
    vm.memory.bytes[0x1000..0x1006].copy_from_slice(&[0xc7, 0x03, 0x40, 0, 0, 0]);
    run(device_memory(TPR), &mut vcpu, &mut vm, &mut host);
    assert_eq!(vm.chipset.mmio_read(1, TPR, 4, 0), 0x40);
    assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0);
}

#[test]
fn a_device_request_ends_the_emulated_instruction() {
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RAX as usize] = 0xdead;
    let (mut vm, mut host) = machine();
    vm.memory.bytes[0x1000..0x1002].copy_from_slice(&[0x89, 0x03]);
    let (mut probe, log) = Probe::new(0);
    probe.request_on = Some((0xdead, devices::Request::Stop { status: 9 }));
    vm.chipset.mmio.lock().register(PROBE, 0x1000, probe).unwrap();
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Stop(crate::Stop::ExitDevice { status: 9 }));
    assert_eq!(vcpu.rip, 0x1002);
    assert_eq!(writes(&log), [0xdead]);
}

#[test]
fn bytes_the_cpu_refuses_are_ud_and_touch_nothing() {
    for code in [
        &[0xf0, 0x89, 0x03][..],               // lock mov [ebx], eax
        &[0xf0, 0x8b, 0x03],                   // lock mov eax, [ebx]
        &[0xc7, 0x0b, 0x78, 0x56, 0x34, 0x12], // c7 /1
        &[0xc6, 0x3b, 0x12],                   // c6 /7
    ] {
        let mut vcpu = FakeVcpu::flat();
        let (mut vm, mut host, log) = with_code(&vcpu, code, 0);
        let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
        assert_fault(&vcpu, &outcome, 0x1000, UD, None);
        assert!(log.lock().unwrap().is_empty(), "{code:02x?}");
        assert_eq!(vcpu.gprs, [0; 16]);
    }
}

#[test]
fn instructions_basalt_cannot_emulate_are_ud_and_touch_nothing() {
    // As a CPU raises #UD for an instruction it does not know: the guest's
    // handler decides, where a stop would end the VM.
    for code in [
        &[0x0f, 0xc1, 0x03][..], // xadd [ebx], eax
        &[0x89, 0xd8],           // mov eax, ebx: no memory operand
        &[0x01, 0xd8],           // add eax, ebx: none either
        &[0xa7],                 // cmpsd
        &[0x0f, 0x0b],           // ud2
        &[0xff, 0x13],           // call [ebx]
        &[0xd1, 0x23],           // shl dword [ebx], 1
        &[0xf7, 0x23],           // mul dword [ebx]
        &[0x0f, 0x10, 0x03],     // movups xmm0, [ebx]
    ] {
        let mut vcpu = FakeVcpu::flat();
        let (mut vm, mut host, log) = with_code(&vcpu, code, 0);
        let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
        assert_fault(&vcpu, &outcome, 0x1000, UD, None);
        assert!(log.lock().unwrap().is_empty(), "{code:02x?}");
        assert_eq!((vcpu.gprs, vcpu.rflags), ([0; 16], 0x202));
    }
}

#[test]
fn an_instruction_fetch_from_device_memory_stops_the_vm() {
    let mut vcpu = FakeVcpu::flat();
    let (mut vm, mut host, log) = with_code(&vcpu, &[0x89, 0x03], 0);
    let outcome = run(Exit::DeviceMemory { address: PROBE, fetch: true }, &mut vcpu, &mut vm, &mut host);
    assert!(is_unsupported(&outcome), "{outcome:?}");
    assert_eq!((vcpu.rip, vcpu.injected), (0x1000, None));
    assert!(log.lock().unwrap().is_empty());
}

#[test]
fn an_instruction_at_the_end_of_ram_is_fetched_as_far_as_ram_goes() {
    // Two bytes before the end: a two-byte instruction is all there.
    let mut vcpu = FakeVcpu { rip: RAM as u64 - 2, ..FakeVcpu::flat() };
    let (mut vm, mut host, _) = with_code(&vcpu, &[0x8b, 0x03], 0);
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, RAM as u64 - 2, 2);
    assert_eq!(vcpu.gprs[RAX as usize], 0xffff_ffff);

    // A three-byte one runs past it: not fetchable, not emulated.
    let mut vcpu = FakeVcpu { rip: RAM as u64 - 2, ..FakeVcpu::flat() };
    let (mut vm, mut host, log) = with_code(&vcpu, &[0x89, 0x43], 0);
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert!(is_unsupported(&outcome), "{outcome:?}");
    assert_eq!((vcpu.rip, vcpu.injected), (RAM as u64 - 2, None));
    assert!(log.lock().unwrap().is_empty());

    // RIP outside RAM altogether.
    let mut vcpu = FakeVcpu { rip: RAM as u64 + 0x10, ..FakeVcpu::flat() };
    let (mut vm, mut host) = machine();
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert!(is_unsupported(&outcome), "{outcome:?}");
}

#[test]
fn the_fetch_goes_through_cs_in_protected_mode() {
    let mut vcpu = FakeVcpu::flat();
    vcpu.segment_bases[SegmentRegister::Cs as usize] = 0x2000;
    vcpu.rip = 0x10;
    let (mut vm, mut host, _) = with_code(&vcpu, &[0x8a, 0x03], 0x77); // at 0x2010
    vm.memory.bytes[0x10..0x12].copy_from_slice(&[0x89, 0x03]); // at RIP with base 0: a store
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x10, 2);
    assert_eq!(vcpu.gprs[RAX as usize], 0x77);
}

#[test]
fn the_cs_base_does_not_count_in_64_bit_mode() {
    let (mut vcpu, mut vm, mut host, _) = long_mode_vm();
    let (probe, log) = Probe::new(0x66);
    vm.chipset.mmio.lock().register(PROBE, 0x1000, probe).unwrap();
    vm.memory.bytes[0x1000..0x1002].copy_from_slice(&[0x8a, 0x03]); // mov al, [rbx]
    vm.memory.bytes[0x5000..0x5002].copy_from_slice(&[0x89, 0x03]); // mov [rbx], eax at CS base + RIP
    vcpu.segment_bases[SegmentRegister::Cs as usize] = 0x4000;
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    assert_eq!((vcpu.gprs[RAX as usize], reads(&log), writes(&log).len()), (0x66, 1, 0));
}

#[test]
fn the_fetch_follows_the_guest_page_tables() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x40_0000, 0x3000, PRESENT);
    vm.memory.bytes[0x3000..0x3002].copy_from_slice(&[0x8b, 0x03]);
    vcpu.rip = 0x40_0000;
    vcpu.gprs[RAX as usize] = 5;
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x40_0000, 2);
    assert_eq!(vcpu.gprs[RAX as usize], 0xffff_ffff);
}

#[test]
fn a_remapped_or_rewritten_instruction_is_fetched_and_decoded_afresh() {
    // The vCPU remembers the last fetch's translation; a guest that points
    // its page table elsewhere (no INVLPG: the VMM sees none) is fetched
    // from where the tables now say, as a fresh walk would.
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x40_0000, 0x3000, PRESENT);
    vm.memory.bytes[0x3000..0x3002].copy_from_slice(&[0x8b, 0x03]); // mov eax, [rbx]
    vm.memory.bytes[0x5000..0x5003].copy_from_slice(&[0x66, 0x8b, 0x03]); // mov ax, [rbx]
    for (frame, rax, length) in [(0x3000, 0xffff_ffff, 2), (0x3000, 0xffff_ffff, 2), (0x5000, 0x1_ffff, 3)] {
        tables.map(&mut vm.memory, 0x40_0000, frame, PRESENT);
        vcpu.rip = 0x40_0000;
        vcpu.gprs[RAX as usize] = 0x1_0000;
        let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
        assert_emulated(&vcpu, &outcome, 0x40_0000, length);
        assert_eq!(vcpu.gprs[RAX as usize], rax, "fetched from {frame:#x}");
        assert_ne!(vcpu.fetch_memo, crate::FetchMemo::default());
    }
    // Rewritten in place (as by another vCPU): the new bytes are decoded.
    vm.memory.bytes[0x5000..0x5003].copy_from_slice(&[0x8a, 0x03, 0x90]); // mov al, [rbx]
    vcpu.rip = 0x40_0000;
    vcpu.gprs[RAX as usize] = 0x1_0000;
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x40_0000, 2);
    assert_eq!(vcpu.gprs[RAX as usize], 0x1_00ff);
}

#[test]
fn fetching_from_a_page_the_guest_cannot_execute_is_its_page_fault() {
    const FETCH: u32 = 1 << 4;
    for (flags, cpl, error_code) in [
        (PRESENT | WRITABLE | NO_EXECUTE, 0, FETCH | 1),
        (0, 0, FETCH),
        (PRESENT | WRITABLE, 3, FETCH | 4 | 1), // user fetch from a supervisor page
    ] {
        let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
        tables.map(&mut vm.memory, 0x1000, 0x1000, flags);
        vm.memory.bytes[0x1000..0x1002].copy_from_slice(&[0x89, 0x03]);
        vcpu.cpl = cpl;
        let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
        assert_fault(&vcpu, &outcome, 0x1000, PF, Some(error_code));
        assert_eq!(vcpu.cr2, 0x1000);
        assert_eq!(vm.chipset.unclaimed().1.writes, 0);
    }
}

#[test]
fn an_instruction_running_into_a_page_the_guest_cannot_fetch_faults_there() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x2000, 0x2000, 0);
    vm.memory.bytes[0x1ffe..0x2001].copy_from_slice(&[0x89, 0x43, 0x10]); // mov [rbx+0x10], eax
    vcpu.rip = 0x1ffe;
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert_fault(&vcpu, &outcome, 0x1ffe, PF, Some(1 << 4));
    assert_eq!(vcpu.cr2, 0x2000, "CR2 names the first byte the CPU could not fetch");
    assert_eq!(vm.chipset.unclaimed().1.writes, 0);

    // One that ends right before that page is fine.
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x2000, 0x2000, 0);
    vm.memory.bytes[0x1ffe..0x2000].copy_from_slice(&[0x89, 0x03]);
    vcpu.rip = 0x1ffe;
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1ffe, 2);
    assert_eq!(vm.chipset.unclaimed().1.writes, 1);
}

#[test]
fn apic_writes_reach_the_model_without_moving_rip() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::flat();
    let outcome = run(Exit::ApicWrite { offset: 0x80, value: 0x50 }, &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!((vcpu.rip, vcpu.skipped, vcpu.injected), (0x1000, 0, None), "the CPU already completed it");
    assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0x50);
    // Offsets are of 16-byte registers: 0x83 is TPR too.
    run(Exit::ApicWrite { offset: 0x83, value: 0x60 }, &mut vcpu, &mut vm, &mut host);
    assert_eq!(vm.chipset.mmio_read(0, TPR, 4, 0), 0x60);
    // Enable the APIC, then a self-IPI through ICR arrives.
    run(Exit::ApicWrite { offset: 0xf0, value: 0x1ff }, &mut vcpu, &mut vm, &mut host);
    run(Exit::ApicWrite { offset: 0x80, value: 0 }, &mut vcpu, &mut vm, &mut host);
    assert!(!vm.chipset.has_interrupt(0));
    run(Exit::ApicWrite { offset: 0x300, value: (1 << 18) | 0x45 }, &mut vcpu, &mut vm, &mut host);
    assert_eq!(vm.chipset.take_interrupt(0), Some(0x45));
    // Hostile offsets stay in the page.
    for offset in [0xfff, 0x1000, u32::MAX] {
        assert_eq!(run(Exit::ApicWrite { offset, value: u32::MAX }, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
    }
}

// The instructions beyond MOV: each does its reads and writes on the device
// in the CPU's order and at its size, sets RFLAGS as the CPU would (checked
// against the host CPU in arch/tests/alu_differential.rs) and moves RIP by
// its decoded length.

use arch::alu::{AF, CF, OF, SF, ZF};
/// The parity flag (`PF` here is the page-fault vector).
const PARITY: u64 = arch::alu::PF;

/// Runs `code` (32-bit, flat) against the probe at PROBE + 0x10, whose reads
/// give `read_value`, with `rax`/`rcx` set: the vCPU after and the probe's log.
fn alu_case(code: &[u8], read_value: u64, rax: u64, rcx: u64, rflags: u64) -> (FakeVcpu, Vec<(bool, u64, u8, u64)>) {
    let mut vcpu = FakeVcpu { rflags, ..FakeVcpu::flat() };
    vcpu.gprs[RAX as usize] = rax;
    vcpu.gprs[RCX as usize] = rcx;
    let (mut vm, mut host, log) = with_code(&vcpu, code, read_value);
    let outcome = run(device_memory(PROBE + 0x10), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, code.len() as u64);
    let log = log.lock().unwrap().clone();
    (vcpu, log)
}

#[test]
fn an_alu_operation_on_device_memory_is_one_read_one_write_and_the_flags() {
    const IF: u64 = 0x202;
    let read = (false, 0x10, 4, 0);
    for (code, read_value, rflags, written, flags) in [
        // add [ebx], eax: 0xffffffff + 1 carries
        (&[0x01, 0x03][..], 0xffff_ffff, IF, Some(0), CF | ZF | PARITY | AF),
        // lock or [ebx], eax: LOCK changes nothing on the bus
        (&[0xf0, 0x09, 0x03], 0x8000_0000, IF | CF | OF, Some(0x8000_0001), SF),
        // adc [ebx], eax with CF in
        (&[0x11, 0x03], 5, IF | CF, Some(7), 0),
        // sbb [ebx], eax: 1 - 1 - 1 borrows
        (&[0x19, 0x03], 1, IF | CF, Some(0xffff_ffff), CF | SF | PARITY | AF),
        // and dword [ebx], 0xf0 (83 /4, sign-extended 0xfffffff0)
        (&[0x83, 0x23, 0xf0], 0x1234_5678, IF, Some(0x1234_5670), 0),
        // sub dword [ebx], 0x10000 (81 /5 id)
        (&[0x81, 0x2b, 0, 0, 1, 0], 0x10000, IF, Some(0), ZF | PARITY),
        // xor [ebx], eax
        (&[0x31, 0x03], 0x1, IF, Some(0), ZF | PARITY),
        // cmp [ebx], eax: flags only
        (&[0x39, 0x03], 0, IF, None, CF | SF | PARITY | AF),
        // test dword [ebx], 0x80000000: flags only
        (&[0xf7, 0x03, 0, 0, 0, 0x80], 0x8000_0000, IF | CF, None, SF | PARITY),
        // not dword [ebx]: no flags change
        (&[0xf7, 0x13], 0x0f0f_0f0f, IF | ZF | CF, Some(0xf0f0_f0f0), ZF | CF),
        // neg dword [ebx]
        (&[0xf7, 0x1b], 1, IF, Some(0xffff_ffff), CF | SF | PARITY | AF),
        // inc dword [ebx] keeps CF; dec dword [ebx] to zero
        (&[0xff, 0x03], 0x7fff_ffff, IF | CF, Some(0x8000_0000), CF | OF | SF | PARITY | AF),
        (&[0xff, 0x0b], 1, IF, Some(0), ZF | PARITY),
    ] {
        let (vcpu, log) = alu_case(code, read_value, 1, 0, rflags);
        let mut expected = vec![read];
        expected.extend(written.map(|v| (true, 0x10, 4, v)));
        assert_eq!(log, expected, "{code:02x?}");
        assert_eq!(vcpu.rflags, IF | flags, "{code:02x?}: RFLAGS");
        assert_eq!(vcpu.gprs[RAX as usize], 1, "{code:02x?}: no register written");
    }
}

#[test]
fn byte_and_word_operations_work_at_their_size() {
    // add byte [ebx], ah (AH = 0x01): 0xff + 1
    let (vcpu, log) = alu_case(&[0x00, 0x23], 0xff, 0x0100, 0, 0x2);
    assert_eq!(log, [(false, 0x10, 1, 0), (true, 0x10, 1, 0)]);
    assert_eq!(vcpu.rflags, 0x2 | CF | ZF | PARITY | AF);
    // or word [ebx], 0x8000
    let (vcpu, log) = alu_case(&[0x66, 0x81, 0x0b, 0x00, 0x80], 0x1, 0, 0, 0x2);
    assert_eq!(log, [(false, 0x10, 2, 0), (true, 0x10, 2, 0x8001)]);
    assert_eq!(vcpu.rflags, 0x2 | SF);
    // inc byte [ebx]: 0x7f + 1 overflows
    let (vcpu, log) = alu_case(&[0xfe, 0x03], 0x7f, 0, 0, 0x2);
    assert_eq!(log[1], (true, 0x10, 1, 0x80));
    assert_eq!(vcpu.rflags, 0x2 | OF | SF | AF);
}

#[test]
fn register_destinations_merge_as_the_cpu_writes_registers() {
    let rax = 0x1122_3344_5566_7788;
    // add eax, [ebx]: a 32-bit result zero-extends
    let (vcpu, log) = alu_case(&[0x03, 0x03], 0x8, rax, 0, 0x2);
    assert_eq!((vcpu.gprs[RAX as usize], log.len()), (0x5566_7790, 1));
    // sub al, [ebx]; or ah, [ebx]: bytes merge
    let (vcpu, _) = alu_case(&[0x2a, 0x03], 0x88, rax, 0, 0x2);
    assert_eq!((vcpu.gprs[RAX as usize], vcpu.rflags), (0x1122_3344_5566_7700, 0x2 | ZF | PARITY));
    let (vcpu, _) = alu_case(&[0x0a, 0x23], 0x01, rax, 0, 0x2);
    assert_eq!(vcpu.gprs[RAX as usize], 0x1122_3344_5566_7788 | 0x100);
    // cmp eax, [ebx]: flags only
    let (vcpu, log) = alu_case(&[0x3b, 0x03], 0x5566_7789, rax, 0, 0x2);
    assert_eq!((vcpu.gprs[RAX as usize], log.len()), (rax, 1));
    assert_eq!(vcpu.rflags, 0x2 | CF | SF | PARITY | AF);
}

#[test]
fn movsx_and_movsxd_sign_extend() {
    // The page tables of a 64-bit vCPU, copied into each case's RAM.
    let (mut vcpu, vm, _, _) = long_mode_vm();
    let vm_memory = vm.memory.bytes.clone();
    let old = 0x1122_3344_5566_7788u64;
    vcpu.gprs = [old; 16];
    for (code, read_value, expected) in [
        (&[0x0f, 0xbe, 0x03][..], 0x80, 0xffff_ff80), // movsx eax, byte [rbx]
        (&[0x66, 0x0f, 0xbe, 0x03], 0xff, 0x1122_3344_5566_ffff), // movsx ax, byte [rbx]
        (&[0x48, 0x0f, 0xbf, 0x03], 0x8000, 0xffff_ffff_ffff_8000), // movsx rax, word [rbx]
        (&[0x48, 0x63, 0x03], 0x8000_0000, 0xffff_ffff_8000_0000), // movsxd rax, dword [rbx]
        (&[0x63, 0x03], 0x8000_0000, 0x8000_0000),    // movsxd eax, dword [rbx]
    ] {
        let (mut vcpu, mut vm, mut host) = (vcpu.clone(), FakeVm::new(1, RAM), FakeHost::default());
        vm.memory.bytes.copy_from_slice(&vm_memory);
        vm.memory.bytes[0x1000..][..code.len()].copy_from_slice(code);
        vm.chipset.mmio.lock().register(PROBE, 0x1000, Probe::new(read_value).0).unwrap();
        let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
        assert_emulated(&vcpu, &outcome, 0x1000, code.len() as u64);
        assert_eq!(vcpu.gprs[RAX as usize], expected, "{code:02x?}");
    }
}

#[test]
fn xchg_reads_then_writes_the_register() {
    // lock xchg [ebx], ecx
    let (vcpu, log) = alu_case(&[0xf0, 0x87, 0x0b], 0xaaaa_bbbb, 0, 0x1_2345_6789, 0x2);
    assert_eq!(log, [(false, 0x10, 4, 0), (true, 0x10, 4, 0x2345_6789)]);
    assert_eq!(vcpu.gprs[RCX as usize], 0xaaaa_bbbb);
    assert_eq!(vcpu.rflags, 0x2, "XCHG sets no flags");
}

#[test]
fn cmpxchg_stores_the_source_if_equal_else_loads_the_accumulator() {
    // lock cmpxchg [ebx], ecx with EAX equal: ZF, the source written, RAX kept
    let rax = 0xffff_ffff_0000_1234;
    let (vcpu, log) = alu_case(&[0xf0, 0x0f, 0xb1, 0x0b], 0x1234, rax, 0x5678, 0x2);
    assert_eq!(log, [(false, 0x10, 4, 0), (true, 0x10, 4, 0x5678)]);
    assert_eq!((vcpu.gprs[RAX as usize], vcpu.rflags & ZF), (rax, ZF));
    // not equal: the value read goes to EAX (zero-extended) and is written back unchanged
    let (vcpu, log) = alu_case(&[0x0f, 0xb1, 0x0b], 0x9999, rax, 0x5678, 0x2 | ZF);
    assert_eq!(log, [(false, 0x10, 4, 0), (true, 0x10, 4, 0x9999)]);
    assert_eq!((vcpu.gprs[RAX as usize], vcpu.rflags & ZF), (0x9999, 0));
}

#[test]
fn bit_tests_read_and_write_back_only_when_they_change_something() {
    // bt [ebx], ecx with ECX = 33: bit 1 of the operand the exit names
    let (vcpu, log) = alu_case(&[0x0f, 0xa3, 0x0b], 0b10, 0, 33, 0x2 | ZF);
    assert_eq!((log.len(), vcpu.rflags), (1, 0x2 | ZF | CF));
    // A negative offset: its low five bits still pick the bit (31).
    let (vcpu, _) = alu_case(&[0x0f, 0xa3, 0x0b], 0x8000_0000, 0, (-1i64) as u64, 0x2);
    assert_eq!(vcpu.rflags, 0x2 | CF);
    // lock bts dword [ebx], 4; btr [ebx], ecx; btc word [ebx], 15
    let (vcpu, log) = alu_case(&[0xf0, 0x0f, 0xba, 0x2b, 4], 0, 0, 0, 0x2 | CF);
    assert_eq!((log[1], vcpu.rflags), ((true, 0x10, 4, 0x10), 0x2));
    let (_, log) = alu_case(&[0x0f, 0xb3, 0x0b], 0xff, 0, 3, 0x2);
    assert_eq!(log[1], (true, 0x10, 4, 0xf7));
    let (vcpu, log) = alu_case(&[0x66, 0x0f, 0xba, 0x3b, 15], 0x8000, 0, 0, 0x2);
    assert_eq!((log[1], vcpu.rflags), ((true, 0x10, 2, 0), 0x2 | CF));
}

#[test]
fn an_alu_operation_on_the_local_apic_reads_back() {
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RAX as usize] = 0x20;
    // mov dword [ebx], 0x10; add [ebx], eax; sub dword [ebx], 0x30
    let code = [0xc7, 0x03, 0x10, 0, 0, 0, 0x01, 0x03, 0x83, 0x2b, 0x30];
    let (mut vm, mut host, _) = with_code(&vcpu, &code, 0);
    for (length, tpr, flags) in [(6, 0x10, 0x202), (2, 0x30, 0x202 | PARITY), (3, 0, 0x202 | ZF | PARITY)] {
        let rip = vcpu.rip;
        let outcome = run(device_memory(TPR), &mut vcpu, &mut vm, &mut host);
        assert_emulated(&vcpu, &outcome, rip, length);
        assert_eq!((vm.chipset.mmio_read(0, TPR, 4, 0), vcpu.rflags), (tpr, flags));
    }
}

/// A flat 32-bit vCPU whose string operands are at `rsi`/`rdi` (linear =
/// physical), `rcx` elements, with `code` at RIP.
fn string_case(code: &[u8], rsi: u64, rdi: u64, rcx: u64, read_value: u64) -> (FakeVcpu, FakeVm, FakeHost, AccessLog) {
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RSI as usize] = rsi;
    vcpu.gprs[RDI as usize] = rdi;
    vcpu.gprs[RCX as usize] = rcx;
    let (vm, host, log) = with_code(&vcpu, code, read_value);
    (vcpu, vm, host, log)
}

#[test]
fn rep_movs_from_a_device_to_ram_reads_each_element() {
    // rep movsd: four elements from the probe into RAM at 0x8000
    let (mut vcpu, mut vm, mut host, log) = string_case(&[0xf3, 0xa5], PROBE + 0x20, 0x8000, 4, 0xdead_beef);
    let outcome = run(device_memory(PROBE + 0x20), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    let offsets: Vec<u64> = log.lock().unwrap().iter().map(|a| a.1).collect();
    assert_eq!(offsets, [0x20, 0x24, 0x28, 0x2c]);
    assert_eq!(&vm.memory.bytes[0x8000..0x8010], &0xdead_beefu32.to_le_bytes().repeat(4)[..]);
    assert_eq!(vcpu.gprs[RSI as usize..=RDI as usize], [PROBE + 0x30, 0x8010]);
    assert_eq!(vcpu.gprs[RCX as usize], 0);
}

#[test]
fn movs_from_ram_to_a_device_goes_backwards_with_df() {
    // std; rep movsw: three words from RAM at 0x8004 down to the probe
    let (mut vcpu, mut vm, mut host, log) = string_case(&[0x66, 0xf3, 0xa5], 0x8004, PROBE + 0x44, 3, 0);
    vm.memory.bytes[0x8000..0x8006].copy_from_slice(&[0x11, 0x11, 0x22, 0x22, 0x33, 0x33]);
    vcpu.rflags |= crate::vcpu::RFLAGS_DF;
    let outcome = run(device_memory(PROBE + 0x44), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 3);
    assert_eq!(*log.lock().unwrap(), [(true, 0x44, 2, 0x3333), (true, 0x42, 2, 0x2222), (true, 0x40, 2, 0x1111)]);
    assert_eq!(vcpu.gprs[RSI as usize..=RDI as usize], [0x7ffe, PROBE + 0x3e]);
}

#[test]
fn stos_and_lods_use_the_accumulator() {
    // rep stosb: 0x5a three times to the device
    let (mut vcpu, mut vm, mut host, log) = string_case(&[0xf3, 0xaa], 0, PROBE, 3, 0);
    vcpu.gprs[RAX as usize] = 0x1234_565a;
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    assert_eq!(writes(&log), [0x5a, 0x5a, 0x5a]);
    assert_eq!((vcpu.gprs[RDI as usize], vcpu.gprs[RCX as usize]), (PROBE + 3, 0));
    // lodsw: one element into AX, RSI moves, RCX does not
    let (mut vcpu, mut vm, mut host, log) = string_case(&[0x66, 0xad], PROBE + 8, 0, 7, 0xabcd);
    vcpu.gprs[RAX as usize] = 0xffff_0000;
    let outcome = run(device_memory(PROBE + 8), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    assert_eq!((reads(&log), vcpu.gprs[RAX as usize]), (1, 0xffff_abcd));
    assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize]), (PROBE + 10, 7));
}

#[test]
fn a_long_rep_string_is_bounded_per_exit_and_resumes() {
    let total = crate::io::MAX_REP_PER_EXIT + 5;
    let (mut vcpu, mut vm, mut host, log) = string_case(&[0xf3, 0xaa], 0, PROBE, total, 0);
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_eq!((outcome, vcpu.injected, vcpu.rip), (Outcome::Resume, None, 0x1000), "runs again for the rest");
    assert_eq!(writes(&log).len() as u64, crate::io::MAX_REP_PER_EXIT);
    assert_eq!(vcpu.gprs[RCX as usize], 5);
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    // The probe's window is one page: the last five land past it, unclaimed.
    assert_eq!(writes(&log).len() as u64 + vm.chipset.unclaimed().1.writes, total);
    // 16-bit addresses (67 in 32-bit code) wrap in DI and count in CX only.
    let (mut vcpu, mut vm, mut host, log) = string_case(&[0x67, 0xf3, 0xaa], 0, 0xffff, 0x1_0002, 0);
    vcpu.gprs[RDI as usize] = 0xabcd_ffff;
    let outcome = run(device_memory(0xffff), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 3);
    assert_eq!((vcpu.gprs[RDI as usize], vcpu.gprs[RCX as usize]), (0xabcd_0001, 0x1_0000));
    assert_eq!(&vm.memory.bytes[0xffff..0x10001], [0, 0], "DI wrapped to 0");
    let _ = log;
}

#[test]
fn a_string_element_the_guest_cannot_access_is_its_page_fault_and_touches_nothing() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, PROBE, PROBE, PRESENT | WRITABLE);
    tables.map(&mut vm.memory, 0x40_0000, 0x8000, PRESENT); // read-only for the destination
    vcpu.cr0 |= arch::paging::CR0_WP;
    let (probe, log) = Probe::new(0x77);
    vm.chipset.mmio.lock().register(PROBE, 0x1000, probe).unwrap();
    vm.memory.bytes[0x1000..0x1003].copy_from_slice(&[0xf3, 0x48, 0xa5]); // rep movsq
    vcpu.gprs[RSI as usize] = PROBE;
    vcpu.gprs[RDI as usize] = 0x40_0000;
    vcpu.gprs[RCX as usize] = 2;
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_fault(&vcpu, &outcome, 0x1000, PF, Some(0x3));
    assert_eq!(vcpu.cr2, 0x40_0000);
    assert!(log.lock().unwrap().is_empty(), "the device is not read before the store is known to fault");
    assert_eq!(vcpu.gprs[RCX as usize], 2);
}

#[test]
fn a_device_element_split_across_two_pages_is_ud() {
    // movsd whose source runs from RAM's last page into device memory: the
    // four bytes are neither all RAM nor one device access.
    let (mut vcpu, mut vm, mut host, _) = string_case(&[0xa5], RAM as u64 - 2, 0x8000, 0, 0);
    let outcome = run(device_memory(RAM as u64), &mut vcpu, &mut vm, &mut host);
    assert_fault(&vcpu, &outcome, 0x1000, UD, None);
    assert_eq!(vcpu.gprs[RSI as usize], RAM as u64 - 2);
}

#[test]
fn push_and_pop_move_between_the_device_and_the_stack() {
    // push dword [ebx]: the value read goes to the new top of the stack
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[4] = 0x9000;
    let (mut vm, mut host, log) = with_code(&vcpu, &[0xff, 0x33], 0xcafe_f00d);
    let outcome = run(device_memory(PROBE + 4), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    assert_eq!((vcpu.gprs[4], reads(&log)), (0x8ffc, 1));
    assert_eq!(&vm.memory.bytes[0x8ffc..0x9000], &0xcafe_f00du32.to_le_bytes());
    // pop qword [rbx] in 64-bit mode: the stack's top goes to the device
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, PROBE, PROBE, PRESENT | WRITABLE);
    let (probe, log) = Probe::new(0);
    vm.chipset.mmio.lock().register(PROBE, 0x1000, probe).unwrap();
    vm.memory.bytes[0x1000..0x1002].copy_from_slice(&[0x8f, 0x03]);
    vm.memory.bytes[0x8ff8..0x9000].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    vcpu.gprs[4] = 0x8ff8;
    let outcome = run(device_memory(PROBE + 8), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1000, 2);
    assert_eq!(*log.lock().unwrap(), [(true, 8, 8, 0x0102_0304_0506_0708)]);
    assert_eq!(vcpu.gprs[4], 0x9000);
}

#[test]
fn a_stack_the_guest_cannot_write_faults_before_the_device_is_read() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x40_0000, 0x8000, PRESENT); // read-only stack page
    vcpu.cr0 |= arch::paging::CR0_WP;
    let (probe, log) = Probe::new(0x55);
    vm.chipset.mmio.lock().register(PROBE, 0x1000, probe).unwrap();
    vm.memory.bytes[0x1000..0x1002].copy_from_slice(&[0xff, 0x33]); // push qword [rbx]
    vcpu.gprs[4] = 0x40_0010;
    let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
    assert_fault(&vcpu, &outcome, 0x1000, PF, Some(0x3));
    assert_eq!((vcpu.cr2, vcpu.gprs[4]), (0x40_0008, 0x40_0010));
    assert!(log.lock().unwrap().is_empty());
    // A stack in device memory: #UD (the exit's address could be the stack's).
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[4] = PROBE + 0x100;
    let (mut vm, mut host, log) = with_code(&vcpu, &[0xff, 0x33], 0);
    let outcome = run(device_memory(PROBE + 0xfc), &mut vcpu, &mut vm, &mut host);
    assert_fault(&vcpu, &outcome, 0x1000, UD, None);
    assert!(log.lock().unwrap().is_empty());
}
