//! Port I/O: IN/OUT into RAX, and INS/OUTS through the guest's segments and
//! page tables, element by element.

use super::*;
use crate::exit::{PortIo, SegmentRegister, StringIo};
use crate::io::MAX_REP_PER_EXIT;
use crate::vcpu::RFLAGS_DF;
use crate::{Stop, GP, PF};
use devices::layout;

/// Where the probe sits in tests (4 ports, unclaimed by the PC chipset).
const PROBE: u16 = 0x510;

/// A VM with a probe on `PROBE` whose reads give `read_value`.
fn probe_vm(read_value: u64) -> (FakeVm, FakeHost, AccessLog) {
    let (vm, host) = machine();
    let (probe, log) = Probe::new(read_value);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    (vm, host, log)
}

fn port(port: u16, size: u8, is_in: bool) -> Exit {
    Exit::Io(PortIo { port, size, is_in, string: None })
}

fn string(size: u8, is_in: bool, rep: bool, address_size: u8, segment: SegmentRegister) -> Exit {
    Exit::Io(PortIo { port: PROBE, size, is_in, string: Some(StringIo { rep, address_size, segment }) })
}

fn rep_outs(size: u8, address_size: u8) -> Exit {
    string(size, false, true, address_size, SegmentRegister::Ds)
}

fn rep_ins(size: u8, address_size: u8) -> Exit {
    string(size, true, true, address_size, SegmentRegister::Ds)
}

#[test]
fn in_merges_8_and_16_bits_and_zero_extends_32() {
    for (size, expected) in [(1, 0xffff_ffff_ffff_ff21), (2, 0xffff_ffff_ffff_4321), (4, 0x8765_4321)] {
        let (mut vm, mut host, log) = probe_vm(0x8765_4321);
        let mut vcpu = FakeVcpu::flat();
        vcpu.gprs[RAX as usize] = u64::MAX;
        let outcome = run(port(PROBE, size, true), &mut vcpu, &mut vm, &mut host);
        assert_done(&vcpu, &outcome, 0x1000);
        assert_eq!(vcpu.gprs[RAX as usize], expected, "IN of {size} bytes");
        assert_eq!(*log.lock().unwrap(), [(false, 0, size, 0)]);
    }
}

#[test]
fn in_from_an_unclaimed_port_reads_all_ones_of_its_size() {
    for (size, expected) in [(1, 0x1234_5678_9abc_deff), (2, 0x1234_5678_9abc_ffff), (4, 0xffff_ffff)] {
        let (mut vm, mut host) = machine();
        let mut vcpu = FakeVcpu::flat();
        vcpu.gprs[RAX as usize] = 0x1234_5678_9abc_def0;
        let outcome = run(port(0x9990, size, true), &mut vcpu, &mut vm, &mut host);
        assert_done(&vcpu, &outcome, 0x1000);
        assert_eq!(vcpu.gprs[RAX as usize], expected);
    }
}

#[test]
fn out_writes_the_low_bytes_of_rax() {
    for (size, expected) in [(1u8, 0xbe), (2, 0xbabe), (4, 0xcafe_babe)] {
        let (mut vm, mut host, log) = probe_vm(0);
        let mut vcpu = FakeVcpu::flat();
        vcpu.gprs[RAX as usize] = 0xdead_beef_cafe_babe;
        let outcome = run(port(PROBE + 2, size, false), &mut vcpu, &mut vm, &mut host);
        assert_done(&vcpu, &outcome, 0x1000);
        assert_eq!(*log.lock().unwrap(), [(true, 2, size, expected)]);
        assert_eq!(vcpu.gprs[RAX as usize], 0xdead_beef_cafe_babe, "OUT leaves RAX");
    }
}

#[test]
fn out_to_the_debug_exit_port_stops_the_vm_past_the_instruction() {
    let (mut vm, mut host) = machine();
    vm.chipset.ports.lock().register(layout::DEBUG_EXIT, 4, Box::new(devices::DebugExit)).unwrap();
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RAX as usize] = 0xffff_ff10;
    let outcome = run(port(layout::DEBUG_EXIT, 1, false), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Stop(Stop::ExitDevice { status: 0x21 }), "(0x10 << 1) | 1");
    assert_eq!((vcpu.skipped, vcpu.rip), (1, 0x1002));
}

#[test]
fn reset_power_off_and_bench_markers_from_port_writes() {
    let (mut vm, mut host) = machine();
    vm.chipset.ports.lock().register(layout::BENCH_MARKER, 1, Box::new(devices::BenchMarker)).unwrap();
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RAX as usize] = 0x0106;
    assert_eq!(run(port(layout::RESET_CONTROL, 1, false), &mut vcpu, &mut vm, &mut host), Outcome::Stop(Stop::Reset));
    vcpu.gprs[RAX as usize] = (5 << 10) | (1 << 13);
    assert_eq!(run(port(layout::PM1_CONTROL, 2, false), &mut vcpu, &mut vm, &mut host), Outcome::Stop(Stop::PowerOff));
    vcpu.gprs[RAX as usize] = 0x1_2345;
    assert_eq!(run(port(layout::BENCH_MARKER, 1, false), &mut vcpu, &mut vm, &mut host), Outcome::Marker(0x45));
    assert_eq!(vcpu.skipped, 3, "each of them completed");
}

#[test]
fn a_port_access_of_an_odd_size_stops_without_touching_anything() {
    for size in [0, 3, 5, 8, 255] {
        let (mut vm, mut host, log) = probe_vm(0);
        let mut vcpu = FakeVcpu::flat();
        let outcome = run(port(PROBE, size, true), &mut vcpu, &mut vm, &mut host);
        assert!(is_unsupported(&outcome), "{size}: {outcome:?}");
        assert_eq!((vcpu.skipped, vcpu.gprs[RAX as usize]), (0, 0));
        assert!(log.lock().unwrap().is_empty());
    }
}

#[test]
fn rep_outsb_sends_the_string_through_ds_and_advances_rsi() {
    let (mut vm, mut host, log) = probe_vm(0);
    vm.memory.bytes[0x2100..0x2105].copy_from_slice(b"hello");
    let mut vcpu = FakeVcpu::flat();
    vcpu.segment_bases[SegmentRegister::Ds as usize] = 0x100;
    vcpu.gprs[RSI as usize] = 0x2000;
    vcpu.gprs[RCX as usize] = 5;
    let outcome = run(rep_outs(1, 4), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(writes(&log), b"hello".map(u64::from));
    assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize]), (0x2005, 0));
}

#[test]
fn outs_takes_its_segment_override() {
    let (mut vm, mut host, log) = probe_vm(0);
    vm.memory.bytes[0x7010] = 0x5a;
    let mut vcpu = FakeVcpu::flat();
    vcpu.segment_bases = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x7000];
    vcpu.gprs[RSI as usize] = 0x10;
    let outcome = run(string(1, false, false, 4, SegmentRegister::Gs), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(writes(&log), [0x5a]);
}

#[test]
fn rep_outsw_with_df_set_steps_down() {
    let (mut vm, mut host, log) = probe_vm(0);
    for (i, word) in [0x1111u16, 0x2222, 0x3333].iter().enumerate() {
        vm.memory.bytes[0x3000 + 2 * i..0x3002 + 2 * i].copy_from_slice(&word.to_le_bytes());
    }
    let mut vcpu = FakeVcpu::flat();
    vcpu.rflags |= RFLAGS_DF;
    vcpu.gprs[RSI as usize] = 0x3004;
    vcpu.gprs[RCX as usize] = 3;
    let outcome = run(rep_outs(2, 4), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(writes(&log), [0x3333, 0x2222, 0x1111]);
    assert_eq!(vcpu.gprs[RSI as usize], 0x2ffe);
}

#[test]
fn rep_insd_stores_through_es_whatever_the_segment_field_says() {
    let (mut vm, mut host, log) = probe_vm(0xaabb_ccdd);
    let mut vcpu = FakeVcpu::flat();
    vcpu.segment_bases[SegmentRegister::Es as usize] = 0x4000;
    vcpu.segment_bases[SegmentRegister::Ds as usize] = 0x8000;
    vcpu.gprs[RDI as usize] = 0x20;
    vcpu.gprs[RCX as usize] = 2;
    let outcome = run(rep_ins(4, 4), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vm.memory.bytes[0x4020..0x4028], [0xdd, 0xcc, 0xbb, 0xaa, 0xdd, 0xcc, 0xbb, 0xaa]);
    assert!(vm.memory.bytes[0x8000..0x8100].iter().all(|&b| b == 0), "nothing through DS");
    assert_eq!(reads(&log), 2);
    assert_eq!((vcpu.gprs[RDI as usize], vcpu.gprs[RCX as usize]), (0x28, 0));
}

#[test]
fn ins_without_rep_moves_one_element_and_leaves_rcx() {
    let (mut vm, mut host, log) = probe_vm(0x77);
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RDI as usize] = 0x5000;
    vcpu.gprs[RCX as usize] = 0;
    let outcome = run(string(1, true, false, 4, SegmentRegister::Ds), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vm.memory.bytes[0x5000], 0x77);
    assert_eq!(reads(&log), 1);
    assert_eq!((vcpu.gprs[RDI as usize], vcpu.gprs[RCX as usize]), (0x5001, 0));
}

#[test]
fn rep_with_rcx_zero_does_nothing_but_completes() {
    let (mut vm, mut host, log) = probe_vm(0);
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RSI as usize] = 0x2000;
    vcpu.gprs[RCX as usize] = 0xffff_0000; // zero in the 16-bit count
    let outcome = run(rep_outs(1, 2), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert!(log.lock().unwrap().is_empty());
    assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize]), (0x2000, 0xffff_0000));
}

#[test]
fn a_16_bit_address_wraps_and_keeps_the_upper_bits_of_si_and_cx() {
    let (mut vm, mut host, log) = probe_vm(0);
    vm.memory.bytes[0xfffe] = 1;
    vm.memory.bytes[0xffff] = 2;
    vm.memory.bytes[0x0000] = 3;
    vm.memory.bytes[0x0001] = 4;
    vm.memory.bytes[0x10000] = 0xee; // where no wrap would read
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RSI as usize] = 0xdead_beef_0000_fffe;
    vcpu.gprs[RCX as usize] = 0x1234_0004;
    let outcome = run(rep_outs(1, 2), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(writes(&log), [1, 2, 3, 4]);
    assert_eq!(vcpu.gprs[RSI as usize], 0xdead_beef_0000_0002);
    assert_eq!(vcpu.gprs[RCX as usize], 0x1234_0000);

    // And down through 0 with DF set.
    let (mut vm2, mut host2, log2) = probe_vm(0);
    vm2.memory.bytes = vm.memory.bytes.clone();
    vcpu.rflags |= RFLAGS_DF;
    vcpu.gprs[RSI as usize] = 0xdead_beef_abcd_0001;
    vcpu.gprs[RCX as usize] = 0xffff_ffff_ffff_0004;
    run(rep_outs(1, 2), &mut vcpu, &mut vm2, &mut host2);
    assert_eq!(writes(&log2), [4, 3, 2, 1]);
    assert_eq!(vcpu.gprs[RSI as usize], 0xdead_beef_abcd_fffd);
    assert_eq!(vcpu.gprs[RCX as usize], 0xffff_ffff_ffff_0000);
}

#[test]
fn a_32_bit_address_wraps_at_4_gib_outside_long_mode() {
    let (mut vm, mut host, log) = probe_vm(0);
    vm.memory.bytes[0x2fff] = 0x11;
    vm.memory.bytes[0x3000] = 0x22;
    let mut vcpu = FakeVcpu::flat();
    vcpu.segment_bases[SegmentRegister::Ds as usize] = 0x3000;
    vcpu.gprs[RSI as usize] = 0xffff_ffff;
    vcpu.gprs[RCX as usize] = 2;
    let outcome = run(rep_outs(1, 4), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(writes(&log), [0x11, 0x22]);
    assert_eq!(vcpu.gprs[RSI as usize], 1);
}

#[test]
fn a_32_bit_address_in_64_bit_mode_zero_extends_rsi_and_rcx() {
    // A 32-bit register result clears bits 63:32, as for any 32-bit write
    // (what Bochs and KVM's emulator do for ESI/EDI/ECX after a 67h string op).
    let (mut vcpu, mut vm, mut host, _) = long_mode_vm();
    let (probe, log) = Probe::new(0x99);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    vm.memory.bytes[0x2000..0x2003].copy_from_slice(&[7, 8, 9]);
    vcpu.gprs[RSI as usize] = 0x1234_5678_0000_2000;
    vcpu.gprs[RCX as usize] = 0xffff_ffff_0000_0003;
    let outcome = run(rep_outs(1, 4), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(writes(&log), [7, 8, 9], "the address is ESI, not RSI");
    assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize]), (0x2003, 0));

    vcpu.gprs[RDI as usize] = 0xffff_0000_0000_3000;
    vcpu.gprs[RCX as usize] = 0x8000_0000_0000_0002;
    let outcome = run(rep_ins(1, 4), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vm.memory.bytes[0x3000..0x3002], [0x99, 0x99]);
    assert_eq!((vcpu.gprs[RDI as usize], vcpu.gprs[RCX as usize]), (0x3002, 0));
}

#[test]
fn a_64_bit_address_uses_all_of_rsi_and_rcx() {
    let (mut vcpu, mut vm, mut host, _) = long_mode_vm();
    let (probe, log) = Probe::new(0);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    vm.memory.bytes[0x2000] = 0x42;
    vcpu.gprs[RSI as usize] = 0x2000;
    vcpu.gprs[RCX as usize] = 1 << 32 | 1;
    let outcome = run(rep_outs(1, 8), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.skipped, 0, "4 Gi elements are still to go");
    assert_eq!(writes(&log).len() as u64, MAX_REP_PER_EXIT);
    assert_eq!(vcpu.gprs[RCX as usize], (1 << 32 | 1) - MAX_REP_PER_EXIT);
    assert_eq!(vcpu.gprs[RSI as usize], 0x2000 + MAX_REP_PER_EXIT);
}

#[test]
fn segment_bases_other_than_fs_and_gs_do_not_count_in_64_bit_mode() {
    // A DS base left over from protected mode is ignored by the CPU in
    // 64-bit code; FS and GS bases still apply.
    let (mut vcpu, mut vm, mut host, _) = long_mode_vm();
    let (probe, log) = Probe::new(0x5c);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    vm.memory.bytes[0x2000] = 0x01;
    vm.memory.bytes[0x6000] = 0x02;
    vm.memory.bytes[0xa000] = 0x03;
    vcpu.segment_bases = [0x4000, 0x4000, 0x4000, 0x4000, 0x8000, 0x8000];
    vcpu.gprs[RSI as usize] = 0x2000;
    run(string(1, false, false, 8, SegmentRegister::Ds), &mut vcpu, &mut vm, &mut host);
    vcpu.gprs[RSI as usize] = 0x2000;
    run(string(1, false, false, 8, SegmentRegister::Fs), &mut vcpu, &mut vm, &mut host);
    vcpu.gprs[RDI as usize] = 0x7000;
    run(string(1, true, false, 8, SegmentRegister::Ds), &mut vcpu, &mut vm, &mut host);
    assert_eq!(writes(&log), [0x01, 0x03]);
    assert_eq!((vm.memory.bytes[0x7000], vm.memory.bytes[0xb000]), (0x5c, 0), "INS through ES, base 0");
}

#[test]
fn at_most_max_rep_per_exit_elements_and_the_instruction_runs_again_for_the_rest() {
    let (mut vm, mut host, log) = probe_vm(0);
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RSI as usize] = 0x1_0000;
    vcpu.gprs[RCX as usize] = MAX_REP_PER_EXIT + 10;
    let outcome = run(rep_outs(1, 4), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!((vcpu.rip, vcpu.skipped, vcpu.injected), (0x1000, 0, None), "not done: not skipped");
    assert_eq!(writes(&log).len() as u64, MAX_REP_PER_EXIT);
    assert_eq!(vcpu.gprs[RCX as usize], 10);
    assert_eq!(vcpu.gprs[RSI as usize], 0x1_0000 + MAX_REP_PER_EXIT);
    // The guest runs it again.
    let outcome = run(rep_outs(1, 4), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(writes(&log).len() as u64, MAX_REP_PER_EXIT + 10);
    assert_eq!(vcpu.gprs[RCX as usize], 0);
}

#[test]
fn a_hostile_rcx_is_bounded_per_exit() {
    for (address_size, rcx, left) in [
        (8, u64::MAX, u64::MAX - MAX_REP_PER_EXIT),
        (4, u64::MAX, 0xffff_ffff - MAX_REP_PER_EXIT),
        (2, u64::MAX, u64::MAX - MAX_REP_PER_EXIT),
    ] {
        let (mut vcpu, mut vm, mut host, _) = long_mode_vm();
        let (probe, log) = Probe::new(0);
        vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
        vcpu.gprs[RSI as usize] = 0x1000;
        vcpu.gprs[RCX as usize] = rcx;
        let outcome = run(rep_outs(1, address_size), &mut vcpu, &mut vm, &mut host);
        assert_eq!(outcome, Outcome::Resume);
        assert_eq!(vcpu.skipped, 0);
        assert_eq!(writes(&log).len() as u64, MAX_REP_PER_EXIT, "address size {address_size}");
        assert_eq!(vcpu.gprs[RCX as usize], left, "address size {address_size}");
    }
}

#[test]
fn a_page_fault_mid_string_leaves_the_registers_at_the_faulting_element() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    let (probe, log) = Probe::new(0);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    tables.map(&mut vm.memory, 0x5000, 0, 0);
    vm.memory.bytes[0x4ffd..0x5000].copy_from_slice(&[1, 2, 3]);
    vcpu.gprs[RSI as usize] = 0x4ffd;
    vcpu.gprs[RCX as usize] = 10;
    let outcome = run(rep_outs(1, 8), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(exception(&vcpu), Some((PF, Some(0))), "read, supervisor, not present");
    assert_eq!(vcpu.cr2, 0x5000);
    assert_eq!(writes(&log), [1, 2, 3], "the elements before the fault went out");
    assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize]), (0x5000, 7));
    assert_eq!((vcpu.rip, vcpu.skipped), (0x1000, 0));
}

#[test]
fn an_element_that_straddles_into_a_missing_page_faults_before_the_port_is_touched() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    let (probe, log) = Probe::new(0x1234_5678);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    tables.map(&mut vm.memory, 0x5000, 0, 0);
    for exit in [rep_outs(4, 8), rep_ins(4, 8)] {
        vcpu.injected = None;
        vcpu.gprs[RSI as usize] = 0x4ffe;
        vcpu.gprs[RDI as usize] = 0x4ffe;
        vcpu.gprs[RCX as usize] = 3;
        let outcome = run(exit.clone(), &mut vcpu, &mut vm, &mut host);
        assert_eq!(outcome, Outcome::Resume);
        let write = if matches!(exit, Exit::Io(PortIo { is_in: true, .. })) { 2 } else { 0 };
        assert_eq!(exception(&vcpu), Some((PF, Some(write))));
        assert_eq!(vcpu.cr2, 0x5000, "CR2 names the first byte of the missing page");
        assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RDI as usize], vcpu.gprs[RCX as usize]), (0x4ffe, 0x4ffe, 3));
    }
    assert!(log.lock().unwrap().is_empty(), "no port access for a faulting element");
    assert_eq!(vm.memory.bytes[0x4ffe..0x5000], [0, 0], "INS stored nothing");
}

#[test]
fn ins_into_a_read_only_page_faults_with_the_write_bit_and_reads_no_port() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    let (probe, log) = Probe::new(0x55);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    tables.map(&mut vm.memory, 0x6000, 0x6000, PRESENT);
    vcpu.cr0 |= arch::paging::CR0_WP;
    vcpu.gprs[RDI as usize] = 0x6000;
    vcpu.gprs[RCX as usize] = 4;
    let outcome = run(rep_ins(1, 8), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(exception(&vcpu), Some((PF, Some(3))), "present, write");
    assert_eq!(vcpu.cr2, 0x6000);
    assert_eq!(reads(&log), 0, "a port read has side effects: not before the check");
    assert_eq!(vm.memory.bytes[0x6000], 0);
    assert_eq!(vcpu.gprs[RCX as usize], 4);
}

#[test]
fn outs_at_cpl_3_from_a_supervisor_page_faults_with_the_user_bit() {
    let (mut vcpu, mut vm, mut host, mut tables) = long_mode_vm();
    let (probe, log) = Probe::new(0);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    tables.map(&mut vm.memory, 0x7000, 0x7000, PRESENT | WRITABLE | USER);
    vcpu.cpl = 3;
    vcpu.gprs[RSI as usize] = 0x7fff;
    vcpu.gprs[RCX as usize] = 2;
    let outcome = run(rep_outs(1, 8), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(writes(&log).len(), 1, "the user page's byte went out");
    assert_eq!(exception(&vcpu), Some((PF, Some(5))), "present, user");
    assert_eq!((vcpu.cr2, vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize]), (0x8000, 0x8000, 1));
}

#[test]
fn a_non_canonical_address_is_gp() {
    let (mut vcpu, mut vm, mut host, _) = long_mode_vm();
    let (probe, log) = Probe::new(0);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    vcpu.gprs[RSI as usize] = 0x0000_8000_0000_0000;
    vcpu.gprs[RCX as usize] = 1;
    let outcome = run(rep_outs(1, 8), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(exception(&vcpu), Some((GP, Some(0))));
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(vcpu.skipped, 0);
}

#[test]
fn an_element_outside_ram_stops_the_vm_before_the_port_is_touched() {
    let (mut vm, mut host, log) = probe_vm(0);
    vm.memory.bytes[RAM - 2..].copy_from_slice(&[0xa, 0xb]);
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RSI as usize] = RAM as u64 - 2;
    vcpu.gprs[RCX as usize] = 4;
    let outcome = run(rep_outs(1, 4), &mut vcpu, &mut vm, &mut host);
    assert!(is_unsupported(&outcome), "{outcome:?}");
    assert_eq!(writes(&log), [0xa, 0xb]);
    assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize], vcpu.skipped), (RAM as u64, 2, 0));

    // INS: the port is not read for an element that cannot be stored.
    let (mut vm, mut host, log) = probe_vm(0);
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RDI as usize] = RAM as u64 - 1;
    vcpu.gprs[RCX as usize] = 1;
    let outcome = run(rep_ins(2, 4), &mut vcpu, &mut vm, &mut host);
    assert!(is_unsupported(&outcome), "{outcome:?}");
    assert_eq!(reads(&log), 0);
    assert_eq!(vm.memory.bytes[RAM - 1], 0);
}

#[test]
fn page_tables_outside_ram_stop_the_vm() {
    let (mut vcpu, mut vm, mut host, _) = long_mode_vm();
    let (probe, log) = Probe::new(0);
    vm.chipset.ports.lock().register(PROBE, 4, probe).unwrap();
    vcpu.cr3 = 0x1_0000_0000;
    vcpu.gprs[RSI as usize] = 0x1000;
    vcpu.gprs[RCX as usize] = 1;
    let outcome = run(rep_outs(1, 8), &mut vcpu, &mut vm, &mut host);
    assert!(is_unsupported(&outcome), "{outcome:?}");
    assert_eq!((vcpu.injected, vcpu.skipped), (None, 0));
    assert!(log.lock().unwrap().is_empty());
}

#[test]
fn outs_to_the_debug_exit_port_stops_at_the_first_element() {
    let (mut vm, mut host) = machine();
    vm.chipset.ports.lock().register(layout::DEBUG_EXIT, 4, Box::new(devices::DebugExit)).unwrap();
    vm.memory.bytes[0x2000] = 3;
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RSI as usize] = 0x2000;
    vcpu.gprs[RCX as usize] = 5;
    let exit = Exit::Io(PortIo {
        port: layout::DEBUG_EXIT,
        size: 1,
        is_in: false,
        string: Some(StringIo { rep: true, address_size: 4, segment: SegmentRegister::Ds }),
    });
    assert_eq!(run(exit, &mut vcpu, &mut vm, &mut host), Outcome::Stop(Stop::ExitDevice { status: 7 }));
    assert_eq!((vcpu.gprs[RSI as usize], vcpu.gprs[RCX as usize]), (0x2001, 4));
}

#[test]
fn a_bench_marker_mid_string_resumes_the_rest_of_it() {
    // A marker is reported and the guest runs on: the elements after it must
    // still go out, so the instruction is not skipped until RCX is 0.
    let (mut vm, mut host) = machine();
    vm.chipset.ports.lock().register(layout::BENCH_MARKER, 1, Box::new(devices::BenchMarker)).unwrap();
    vm.memory.bytes[0x2000..0x2003].copy_from_slice(&[10, 11, 12]);
    let mut vcpu = FakeVcpu::flat();
    vcpu.gprs[RSI as usize] = 0x2000;
    vcpu.gprs[RCX as usize] = 3;
    let exit = Exit::Io(PortIo {
        port: layout::BENCH_MARKER,
        size: 1,
        is_in: false,
        string: Some(StringIo { rep: true, address_size: 4, segment: SegmentRegister::Ds }),
    });
    for (marker, rcx, skipped) in [(10, 2, 0), (11, 1, 0), (12, 0, 1)] {
        assert_eq!(run(exit.clone(), &mut vcpu, &mut vm, &mut host), Outcome::Marker(marker));
        assert_eq!((vcpu.gprs[RCX as usize], vcpu.skipped), (rcx, skipped), "after marker {marker}");
    }
    assert_eq!(vcpu.rip, 0x1002);
}

/// The run loop's port I/O fast path does what `dispatch` does (same
/// outcome, registers, device state and pending interrupts) for a plain
/// IN/OUT with no single step and no breakpoint, and declines, touching
/// nothing, everything else.
#[test]
fn the_fast_port_io_path_matches_dispatch() {
    const RF: u64 = 1 << 16;
    const TF: u64 = 1 << 8;
    // The 8259 initialised (vectors 0x20+, IRQ 4 unmasked) and COM1's OUT2
    // set: COM1's line reaches vCPU 0 as an interrupt.
    let set_up = |rflags: u64, dr7: u64, rax: u64| {
        let (mut vm, mut host, log) = probe_vm(0x8765_4321);
        vm.chipset.ports.lock().register(layout::DEBUG_EXIT, 4, Box::new(devices::DebugExit)).unwrap();
        vm.chipset.ports.lock().register(layout::BENCH_MARKER, 1, Box::new(devices::BenchMarker)).unwrap();
        let mut vcpu = FakeVcpu::flat();
        for (port, value) in
            [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xef), (layout::COM1 + 4, 0x08)]
        {
            vcpu.gprs[RAX as usize] = value;
            assert_eq!(run(self::port(port, 1, false), &mut vcpu, &mut vm, &mut host), Outcome::Resume);
        }
        vm.chipset.take_wakeup(0);
        vcpu.gprs[RAX as usize] = rax;
        vcpu.rflags = rflags;
        vcpu.dr7 = dr7;
        vcpu.dr[0] = 0x3f8;
        vcpu.cr4 |= arch::control::cr4::DE;
        (vm, host, vcpu, log)
    };
    let com1 = layout::COM1;
    let accesses = [
        (PROBE, 1, true, u64::MAX),
        (PROBE, 2, true, u64::MAX),
        (PROBE, 4, true, u64::MAX),
        (PROBE + 1, 4, false, 0xdead_beef_cafe_babe),
        (com1, 1, false, 0x41),
        (com1 + 5, 1, true, 0),
        (com1 + 2, 1, true, 0),
        // IER: the transmit interrupt, raised at once (THR is empty).
        (com1 + 1, 1, false, 0x02),
        (com1 + 4, 1, false, 0x00),
        (0x43, 1, false, 0x34),
        (0x9990, 2, true, 0),
        (layout::DEBUG_EXIT, 1, false, 0x10),
        (layout::BENCH_MARKER, 1, false, 0x45),
        (layout::RESET_CONTROL, 1, false, 0x06),
        (PROBE, 3, true, 0),
    ];
    // DR7: none; an I/O breakpoint on COM1 (L0, R/W0 = 10b); a disabled one.
    let io_breakpoint = 1 | (0b10 << 16);
    for (port, size, is_in, rax) in accesses {
        for (rflags, dr7) in [(2, 0), (2 | RF, 0), (2 | TF, 0), (2, io_breakpoint), (2, io_breakpoint & !1)] {
            for length_known in [true, false] {
                let exit = PortIo { port, size, is_in, string: None };
                let taken = rflags & TF == 0 && dr7 & 0xff == 0 && length_known && size != 3;
                let (fast_vm, fast_host, mut fast, fast_log) = set_up(rflags, dr7, rax);
                fast.length_known = length_known;
                let before = format!("{fast:?}");
                let outcome = crate::fast_port_io(&mut fast, &fast_vm.chipset, &fast_host, exit);
                let what = format!("port {port:#x} size {size} in {is_in} rflags {rflags:#x} dr7 {dr7:#x}");
                assert_eq!(outcome.is_some(), taken, "{what}");
                let Some(outcome) = outcome else {
                    assert_eq!(format!("{fast:?}"), before, "{what}");
                    assert!(fast_log.lock().unwrap().is_empty(), "{what}");
                    assert!(!fast_vm.chipset.has_wakeup(0), "{what}");
                    continue;
                };
                let (mut slow_vm, mut slow_host, mut slow, slow_log) = set_up(rflags, dr7, rax);
                let slow_outcome = run(Exit::Io(exit), &mut slow, &mut slow_vm, &mut slow_host);
                assert_eq!(outcome, slow_outcome, "{what}");
                assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{what}");
                assert_eq!(fast.rflags & RF, 0, "{what}");
                assert_eq!(*fast_log.lock().unwrap(), *slow_log.lock().unwrap(), "{what}");
                assert_eq!(fast_vm.chipset.has_wakeup(0), slow_vm.chipset.has_wakeup(0), "{what}");
                assert_eq!(fast_vm.chipset.has_interrupt(0), slow_vm.chipset.has_interrupt(0), "{what}");
                if port == com1 + 1 {
                    assert!(fast_vm.chipset.has_wakeup(0) && fast_vm.chipset.has_interrupt(0), "{what}: IRQ 4 raised");
                }
                assert_eq!(fast_vm.chipset.poll_due(0, 1), slow_vm.chipset.poll_due(0, 1), "{what}");
                assert_eq!(fast_vm.chipset.next_deadline(0), slow_vm.chipset.next_deadline(0), "{what}");
                // COM1 as the guest reads it next (IIR, LSR, IER).
                for p in [com1 + 2, com1 + 5, com1 + 1] {
                    assert_eq!(
                        fast_vm.chipset.port_read(p, 1, 0),
                        slow_vm.chipset.port_read(p, 1, 0),
                        "{what}: port {p:#x}"
                    );
                }
            }
        }
    }
}
