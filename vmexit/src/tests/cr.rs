//! Control-register exits: MOV to CR0/CR4/CR8, MOV from CR8, CLTS, LMSW.

use super::*;
use crate::CrAccess;
use arch::control::{cr0, cr4, efer};
use arch::decode::CodeSize;
use devices::layout::LAPIC_BASE;

const TS: u64 = 1 << 3;
const MP: u64 = 1 << 1;
const EM: u64 = 1 << 2;
const ET: u64 = 1 << 4;
const NE: u64 = 1 << 5;

/// MOV to CR`cr` of `value`, from RBX.
fn mov_to(vcpu: &mut FakeVcpu, vm: &mut FakeVm, cr: u8, value: u64) -> Outcome {
    vcpu.gprs[RBX as usize] = value;
    run(Exit::Cr(CrAccess::MovTo { cr, gpr: RBX }), vcpu, vm, &mut FakeHost::default())
}

#[test]
fn cr0_with_pg_but_not_pe_is_gp_and_not_skipped() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu { cr0: ET, ..FakeVcpu::flat() };
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PG | ET);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, ET, "CR0 unchanged");
}

#[test]
fn other_cr0_values_the_cpu_refuses_are_gp() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::flat();
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PE | cr0::NW);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, cr0::PE);
    // Bits 63:32, which only 64-bit code can write (elsewhere the operand is
    // the register's low half: see tests/decode.rs).
    for value in [1 << 32 | cr0::PE | cr0::PG, u64::MAX] {
        let mut vcpu = FakeVcpu::long_mode();
        let outcome = mov_to(&mut vcpu, &mut vm, 0, value);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!(vcpu.cr0, cr0::PE | cr0::PG, "{value:#x}");
    }
    // Long mode paging needs PAE.
    let mut vcpu = FakeVcpu { efer: efer::LME, ..FakeVcpu::flat() };
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PE | cr0::PG);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, efer::LME, "no long mode");
}

#[test]
fn paging_on_with_lme_enters_long_mode() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu { cr4: cr4::PAE, efer: efer::LME | efer::NXE, ..FakeVcpu::flat() };
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PE | cr0::PG | cr0::WP);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, cr0::PE | cr0::PG | cr0::WP);
    assert_eq!(vcpu.efer, efer::LME | efer::LMA | efer::NXE);
}

#[test]
fn paging_on_without_lme_is_not_long_mode() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu { cr4: cr4::PAE, ..FakeVcpu::flat() };
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PE | cr0::PG);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, 0);
}

#[test]
fn cr0_writes_that_keep_paging_leave_efer_alone() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PE | cr0::PG | TS | NE);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!((vcpu.cr0, vcpu.efer), (cr0::PE | cr0::PG | TS | NE, efer::LME | efer::LMA));
}

#[test]
fn paging_off_from_compatibility_mode_leaves_long_mode() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu { code_size: CodeSize::Bits32, ..FakeVcpu::long_mode() };
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PE);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, cr0::PE);
    assert_eq!(vcpu.efer, efer::LME, "LME stays armed, LMA goes");
}

#[test]
fn paging_off_from_64_bit_code_is_gp() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = mov_to(&mut vcpu, &mut vm, 0, cr0::PE);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.efer, efer::LME | efer::LMA);
}

#[test]
fn cr4_bits_guests_may_not_set_are_gp() {
    let (mut vm, _) = machine();
    for bit in [cr4::VMXE, cr4::SMXE, cr4::PKE, cr4::CET, cr4::MCE, 1 << 15, 1 << 19, 1 << 24] {
        let mut vcpu = FakeVcpu { cr4: cr4::PAE, ..FakeVcpu::flat() };
        let outcome = mov_to(&mut vcpu, &mut vm, 4, cr4::PAE | bit);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!(vcpu.cr4, cr4::PAE, "bit {bit:#x}: CR4 unchanged");
    }
    // Bit 32 and up, from 64-bit code (the only code whose operand has them).
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = mov_to(&mut vcpu, &mut vm, 4, cr4::PAE | 1 << 32);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr4, cr4::PAE);
}

#[test]
fn cr4_bits_guests_may_set_are_stored() {
    let (mut vm, _) = machine();
    let value = cr4::PAE | cr4::PSE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::OSXSAVE | cr4::SMEP;
    let mut vcpu = FakeVcpu::flat();
    let outcome = mov_to(&mut vcpu, &mut vm, 4, value);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr4, value);
}

#[test]
fn cr4_in_long_mode_keeps_pae() {
    let (mut vm, _) = machine();
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = mov_to(&mut vcpu, &mut vm, 4, cr4::PSE);
    assert_gp(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr4, cr4::PAE);
}

#[test]
fn cr8_is_the_local_apic_tpr_both_ways() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu::long_mode();
    let outcome = mov_to(&mut vcpu, &mut vm, 8, 0x9);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vm.chipset.mmio_read(0, LAPIC_BASE + 0x80, 4, 0), 0x90, "TPR[7:4] = CR8");
    // The TPR written through the APIC page reads back through CR8.
    vm.chipset.mmio_write(0, LAPIC_BASE + 0x80, 4, 0x5f, 0, &mut vm.memory);
    vcpu.gprs[RDX as usize] = u64::MAX;
    let outcome = run(Exit::Cr(CrAccess::MovFrom { cr: 8, gpr: RDX }), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.skipped, 2);
    assert_eq!(vcpu.gprs[RDX as usize], 5, "the whole register: TPR[7:4]");
    // Into R12 (a register index above 7).
    let outcome = run(Exit::Cr(CrAccess::MovFrom { cr: 8, gpr: 12 }), &mut vcpu, &mut vm, &mut host);
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vcpu.gprs[12], 5);
}

#[test]
fn cr8_is_per_vcpu() {
    let mut vm = FakeVm::new(2, RAM);
    let mut vcpu = FakeVcpu { index: 1, ..FakeVcpu::long_mode() };
    mov_to(&mut vcpu, &mut vm, 8, 0xf);
    assert_eq!(vm.chipset.mmio_read(1, LAPIC_BASE + 0x80, 4, 0), 0xf0);
    assert_eq!(vm.chipset.mmio_read(0, LAPIC_BASE + 0x80, 4, 0), 0);
}

#[test]
fn cr8_with_bits_63_to_4_set_is_gp() {
    for value in [0x10, 0x1f, 1 << 63, u64::MAX] {
        let (mut vm, _) = machine();
        vm.chipset.mmio_write(0, LAPIC_BASE + 0x80, 4, 0x30, 0, &mut vm.memory);
        let mut vcpu = FakeVcpu::long_mode();
        let outcome = mov_to(&mut vcpu, &mut vm, 8, value);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!(vm.chipset.mmio_read(0, LAPIC_BASE + 0x80, 4, 0), 0x30, "{value:#x}: TPR unchanged");
    }
}

#[test]
fn clts_clears_ts_and_nothing_else() {
    let (mut vm, mut host) = machine();
    let mut vcpu = FakeVcpu { cr0: cr0::PE | cr0::PG | TS | MP | NE | cr0::WP, ..FakeVcpu::long_mode() };
    let outcome = run(Exit::Cr(CrAccess::Clts), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, cr0::PE | cr0::PG | MP | NE | cr0::WP);
    assert_eq!(vcpu.efer, efer::LME | efer::LMA, "still in long mode");
}

#[test]
fn lmsw_loads_mp_em_ts_and_can_set_but_not_clear_pe() {
    let (mut vm, mut host) = machine();
    // Clearing PE is ignored; MP, EM and TS follow the source.
    let mut vcpu = FakeVcpu { cr0: cr0::PE | MP | TS | ET | NE, ..FakeVcpu::flat() };
    let outcome = run(Exit::Cr(CrAccess::Lmsw { source: 0xfff4 }), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, cr0::PE | EM | ET | NE, "PE kept, MP and TS cleared, EM set, bits above 3 untouched");

    // From real mode, LMSW 1 enters protected mode.
    let mut vcpu = FakeVcpu { cr0: ET, code_size: CodeSize::Bits16, ..FakeVcpu::flat() };
    let outcome = run(Exit::Cr(CrAccess::Lmsw { source: 1 }), &mut vcpu, &mut vm, &mut host);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.cr0, cr0::PE | ET);
}

#[test]
fn accesses_the_back_ends_do_not_intercept_stop_the_vm() {
    for access in [
        CrAccess::MovTo { cr: 3, gpr: 0 },
        CrAccess::MovTo { cr: 2, gpr: 0 },
        CrAccess::MovTo { cr: 15, gpr: 0 },
        CrAccess::MovFrom { cr: 0, gpr: 0 },
        CrAccess::MovFrom { cr: 3, gpr: 0 },
    ] {
        let (mut vm, mut host) = machine();
        let mut vcpu = FakeVcpu::flat();
        let outcome = run(Exit::Cr(access), &mut vcpu, &mut vm, &mut host);
        assert!(is_unsupported(&outcome), "{access:?}: {outcome:?}");
        assert_eq!((vcpu.skipped, vcpu.injected, vcpu.gprs[0]), (0, None, 0));
    }
}

#[test]
fn cr4_all_ones_is_gp_on_either_vendor_in_every_mode() {
    // What a test kernel wrote and a VM once triple-faulted on. VT-x reports
    // the register (the CR4 guest/host mask owns every bit outside
    // `guest_cr4_allowed`, so the write exits); SVM intercepts every CR4 write,
    // with the register decoded by the CPU or, without decode assists, by
    // Basalt from `mov cr4, rax` (0F 22 E0) at RIP.
    // Each mode with the RAM its code runs from (long mode: identity-mapped).
    let modes: [fn() -> (FakeVcpu, FakeVm); 4] = [
        || (FakeVcpu { cr4: cr4::PAE, ..FakeVcpu::flat() }, machine().0),
        || (FakeVcpu { code_size: CodeSize::Bits16, cr0: 0, ..FakeVcpu::flat() }, machine().0),
        || {
            let (vcpu, vm, _, _) = long_mode_vm();
            (vcpu, vm)
        },
        || {
            let (vcpu, vm, _, _) = long_mode_vm();
            (FakeVcpu { code_size: CodeSize::Bits32, ..vcpu }, vm)
        },
    ];
    for value in [0xffff_ffff, u64::MAX] {
        for mode in modes {
            for decoded in [true, false] {
                let (mut vcpu, mut vm) = mode();
                let before = vcpu.cr4;
                vm.memory.bytes[0x1000..0x1003].copy_from_slice(&[0x0f, 0x22, 0xe0]);
                vcpu.length_known = decoded;
                vcpu.gprs[RAX as usize] = value;
                let access = if decoded {
                    CrAccess::MovTo { cr: 4, gpr: RAX }
                } else {
                    CrAccess::Undecoded { cr: 4, write: true }
                };
                let outcome = run(Exit::Cr(access), &mut vcpu, &mut vm, &mut FakeHost::default());
                assert_gp(&vcpu, &outcome, 0x1000);
                assert_eq!(vcpu.cr4, before, "{value:#x} in {:?}, decoded {decoded}: CR4 unchanged", vcpu.code_size);
            }
        }
    }
}

#[test]
fn every_cr4_bit_a_guest_may_not_set_is_gp_alone() {
    // Bit by bit, so that no reserved bit is let through by another's check:
    // what the VT-x mask owns (everything not allowed) is exactly what this
    // handler refuses.
    let allowed = crate::Host::guest_cr4_allowed(&FakeHost::default());
    let mut refused = 0u64;
    for bit in 0..64 {
        let value = cr4::PAE | 1 << bit;
        let (mut vm, _) = machine();
        let mut vcpu = FakeVcpu::long_mode();
        let outcome = mov_to(&mut vcpu, &mut vm, 4, value);
        if vcpu.injected.is_some() {
            assert_gp(&vcpu, &outcome, 0x1000);
            refused |= 1 << bit;
        } else {
            assert_done(&vcpu, &outcome, 0x1000);
        }
    }
    // In long mode LA57 cannot change and PCIDE needs CR3[11:0] = 0 (it is):
    // beyond those, refused means not allowed.
    assert_eq!(refused & !cr4::LA57, !allowed & !cr4::LA57);
    assert_ne!(!allowed & 0xff00_0000, 0, "the test host leaves bits 24-31 reserved");
}
