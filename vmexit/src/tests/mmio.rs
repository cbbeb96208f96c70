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
    vm.chipset.mmio.register(PROBE, 0x1000, probe).unwrap();
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
    assert_eq!(vm.chipset.mmio.unclaimed.reads, 1);
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
    vm.chipset.mmio.register(PROBE, 0x1000, probe).unwrap();
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
fn instructions_basalt_cannot_emulate_stop_the_vm() {
    for code in [
        &[0x01, 0x03][..], // add [ebx], eax
        &[0x89, 0xd8],     // mov eax, ebx: no memory operand
        &[0xa5],           // movsd
        &[0x0f, 0x0b],     // ud2
        &[0xff, 0x13],     // call [ebx]
    ] {
        let mut vcpu = FakeVcpu::flat();
        let (mut vm, mut host, log) = with_code(&vcpu, code, 0);
        let outcome = run(device_memory(PROBE), &mut vcpu, &mut vm, &mut host);
        assert!(is_unsupported(&outcome), "{code:02x?}: {outcome:?}");
        assert_eq!((vcpu.rip, vcpu.skipped, vcpu.injected), (0x1000, 0, None));
        assert!(log.lock().unwrap().is_empty());
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
    vm.chipset.mmio.register(PROBE, 0x1000, probe).unwrap();
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
        assert_eq!(vm.chipset.mmio.unclaimed.writes, 0);
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
    assert_eq!(vm.chipset.mmio.unclaimed.writes, 0);

    // One that ends right before that page is fine.
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x2000, 0x2000, 0);
    vm.memory.bytes[0x1ffe..0x2000].copy_from_slice(&[0x89, 0x03]);
    vcpu.rip = 0x1ffe;
    let outcome = run(device_memory(UNCLAIMED), &mut vcpu, &mut vm, &mut host);
    assert_emulated(&vcpu, &outcome, 0x1ffe, 2);
    assert_eq!(vm.chipset.mmio.unclaimed.writes, 1);
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
