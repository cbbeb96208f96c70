//! HLT, WBINVD/INVD, and the exits `dispatch` answers itself.

use super::*;
use crate::fake::Injected;
use crate::{SegmentRegister, Stop, GP, UD};
use devices::layout::LAPIC_BASE;

fn hlt(vcpu: &mut FakeVcpu, vm: &mut FakeVm) -> Outcome {
    run(Exit::Hlt, vcpu, vm, &mut FakeHost::default())
}

#[test]
fn hlt_with_if_clear_on_vcpu_0_ends_the_vm() {
    let mut vm = FakeVm::new(2, RAM);
    let mut vcpu = FakeVcpu { rflags: 0x2, ..FakeVcpu::flat() };
    assert_eq!(hlt(&mut vcpu, &mut vm), Outcome::Stop(Stop::Halted));
    assert!(!vcpu.halted);
}

#[test]
fn hlt_with_if_clear_parks_an_application_processor_past_the_instruction() {
    let mut vm = FakeVm::new(2, RAM);
    let mut vcpu = FakeVcpu { index: 1, rflags: 0x2, ..FakeVcpu::flat() };
    assert_eq!(hlt(&mut vcpu, &mut vm), Outcome::Park);
    assert_eq!((vcpu.skipped, vcpu.rip), (1, 0x1002), "an NMI or INIT resumes it after the HLT");
}

#[test]
fn hlt_with_if_set_halts_in_the_guest() {
    for index in [0, 1] {
        let mut vm = FakeVm::new(2, RAM);
        let mut vcpu = FakeVcpu { index, ..FakeVcpu::flat() };
        let outcome = hlt(&mut vcpu, &mut vm);
        assert_done(&vcpu, &outcome, 0x1000);
        assert!(vcpu.halted);
    }
}

#[test]
fn hlt_with_if_clear_and_an_nmi_on_its_way_halts_instead_of_stopping() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu { rflags: 0x2, ..FakeVcpu::flat() };
    vcpu.pending.nmi = true;
    let outcome = hlt(&mut vcpu, &mut vm);
    assert_done(&vcpu, &outcome, 0x1000);
    assert!(vcpu.halted && vcpu.pending.nmi);
}

#[test]
fn hlt_with_if_clear_and_an_nmi_waiting_in_the_chipset_halts_too() {
    // Another vCPU's NMI IPI arrived while this one ran into CLI; HLT: it is
    // in the local APIC until the next entry moves it over, and will wake it.
    let mut vm = FakeVm::new(2, RAM);
    vm.chipset.mmio_write(1, LAPIC_BASE + 0x310, 4, 0, 0, &mut vm.memory);
    vm.chipset.mmio_write(1, LAPIC_BASE + 0x300, 4, 4 << 8, 0, &mut vm.memory);
    assert!(vm.chipset.nmi_pending(0));
    let mut vcpu = FakeVcpu { rflags: 0x2, ..FakeVcpu::flat() };
    let outcome = hlt(&mut vcpu, &mut vm);
    assert_done(&vcpu, &outcome, 0x1000);
    assert!(vcpu.halted);
    crate::events::deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
    assert_eq!(vcpu.injected, Some(Injected::Nmi));
    assert!(!vcpu.halted, "the NMI ends the HLT");
}

#[test]
fn cache_flushes_complete_as_no_ops() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::flat();
    vm.memory.bytes[0x1234] = 0x56;
    let before = vcpu.clone();
    let outcome = run(Exit::CacheFlush, &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!((vcpu.gprs, vcpu.cr0, vcpu.rflags), (before.gprs, before.cr0, before.rflags));
    assert_eq!(vm.memory.bytes[0x1234], 0x56);
}

#[test]
fn a_pause_loop_completes_the_pause_and_offers_the_core() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::flat();
    let before = vcpu.clone();
    let outcome = run(Exit::Pause, &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Yield);
    assert_eq!(vcpu.skipped, 1, "the PAUSE is done: the guest goes on after it");
    assert_eq!((vcpu.gprs, vcpu.injected), (before.gprs, None));
}

#[test]
fn host_interrupts_and_nmis_go_to_the_host() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::flat();
    assert_eq!(run(Exit::HostInterrupt, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
    assert_eq!(run(Exit::HostInterrupt, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
    assert_eq!(run(Exit::HostNmi, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
    assert_eq!((host.host_interrupts, host.host_nmis), (2, 1));
    assert_eq!((vcpu.rip, vcpu.skipped, vcpu.injected), (0x1000, 0, None), "the guest sees nothing");
}

#[test]
fn timer_and_tpr_exits_just_resume() {
    for exit in [Exit::Timer, Exit::TprBelowThreshold] {
        let (mut vm, mut host) = machine();
        let mut vcpu = FakeVcpu::flat();
        assert_eq!(run(exit, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
        assert_eq!((vcpu.rip, vcpu.skipped, vcpu.injected), (0x1000, 0, None));
    }
}

#[test]
fn hidden_instructions_are_ud_and_rdpmc_is_gp() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::flat();
    assert_eq!(run(Exit::UndefinedInstruction, &mut vcpu, &mut vm, &mut host), Outcome::Resume);
    assert_eq!(exception(&vcpu), Some((UD, None)));
    assert_eq!((vcpu.rip, vcpu.skipped), (0x1000, 0));
    let mut vcpu = FakeVcpu::flat();
    let outcome = run(Exit::Rdpmc, &mut vcpu, &mut vm, &mut host);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(exception(&vcpu), Some((GP, Some(0))));
}

#[test]
fn the_exits_that_end_a_vm() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu { rip: 0xabc, ..FakeVcpu::flat() };
    assert_eq!(run(Exit::Shutdown, &mut vcpu, &mut vm, &mut host), Outcome::Stop(Stop::TripleFault));
    let outcome = run(Exit::EntryFailed("GUEST_CR0: PG without PE".into()), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Stop(Stop::InvalidGuestState("GUEST_CR0: PG without PE".into())));
    let Outcome::Stop(Stop::Unsupported(why)) = run(Exit::Unhandled("MONITOR".into()), &mut vcpu, &mut vm, &mut host)
    else {
        panic!("not a stop")
    };
    assert!(why.contains("MONITOR") && why.contains("0xabc"), "{why}");
    assert_eq!((vcpu.skipped, vcpu.injected), (0, None));
}

#[test]
fn exit_kinds_and_names_agree() {
    let exits = [
        Exit::Cpuid,
        Exit::Hlt,
        Exit::Io(crate::PortIo { port: 0, size: 1, is_in: true, string: None }),
        Exit::DeviceMemory { address: 0, fetch: false },
        Exit::ApicWrite { offset: 0, value: 0 },
        Exit::VirtualEoi { vector: 0x20 },
        Exit::Rdmsr,
        Exit::Wrmsr,
        Exit::Cr(crate::CrAccess::Clts),
        Exit::Xsetbv,
        Exit::CacheFlush,
        Exit::Hypercall,
        Exit::HostInterrupt,
        Exit::HostNmi,
        Exit::Exception { vector: 1, error_code: None },
        Exit::InterruptWindow,
        Exit::NmiWindow,
        Exit::Timer,
        Exit::TprBelowThreshold,
        Exit::Shutdown,
        Exit::UndefinedInstruction,
        Exit::Rdpmc,
        Exit::Pause,
        Exit::EntryFailed(String::new()),
        Exit::Unhandled(String::new()),
    ];
    assert_eq!(exits.len(), Exit::KINDS);
    for (i, exit) in exits.iter().enumerate() {
        assert_eq!(exit.kind(), i);
        assert_eq!(exit.name(), Exit::KIND_NAMES[i]);
    }
}

#[test]
fn segment_encodings() {
    use SegmentRegister::*;
    let decoded: Vec<_> = (0..=255).map(SegmentRegister::from_encoding).collect();
    assert_eq!(decoded[..7], [Some(Es), Some(Cs), Some(Ss), Some(Ds), Some(Fs), Some(Gs), None]);
    assert!(decoded[6..].iter().all(Option::is_none));
}

#[test]
fn every_stop_reads_as_a_sentence() {
    for stop in [
        Stop::ExitDevice { status: 1 },
        Stop::ExitHypercall { status: 2 },
        Stop::PowerOff,
        Stop::Reset,
        Stop::Halted,
        Stop::TimeLimit { ms: 3 },
        Stop::TripleFault,
        Stop::InvalidGuestState("x".into()),
        Stop::EntryFailed("y".into()),
        Stop::Unsupported("z".into()),
    ] {
        let text = stop.to_string();
        assert!(!text.is_empty() && !text.contains('{'), "{stop:?}: {text}");
    }
}
