//! XSETBV: XCR0 among the components guests may enable.

use super::*;
use arch::xstate::{AVX, AVX512, SSE, X87};

/// XSETBV of EDX:EAX = `value` to XCR`xcr`, on a host that lets guests enable
/// x87, SSE and AVX.
fn xsetbv(vcpu: &mut FakeVcpu, xcr: u64, value: u64) -> Outcome {
    let (mut vm, mut host) = machine();
    vcpu.gprs[RCX as usize] = xcr;
    vcpu.gprs[RAX as usize] = 0xdead_0000_0000_0000 | (value & 0xffff_ffff);
    vcpu.gprs[RDX as usize] = value >> 32;
    run(Exit::Xsetbv, vcpu, &mut vm, &mut host)
}

#[test]
fn a_valid_xcr0_is_loaded_and_the_instruction_completes() {
    for value in [X87, X87 | SSE, X87 | SSE | AVX] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = xsetbv(&mut vcpu, 0, value);
        assert_done(&vcpu, &outcome, 0x1000);
        assert_eq!(vcpu.xcr0, value);
    }
}

#[test]
fn only_ecx_names_the_register() {
    let mut vcpu = FakeVcpu::flat();
    let outcome = xsetbv(&mut vcpu, 0xffff_ffff_0000_0000, X87 | SSE);
    assert_done(&vcpu, &outcome, 0x1000);
    assert_eq!(vcpu.xcr0, X87 | SSE);
}

#[test]
fn what_the_cpu_or_the_host_forbids_is_gp_without_skip() {
    for (xcr, value) in [
        (1, X87), // XCR1 is not writable
        (0xffff_ffff, X87),
        (0, 0), // x87 must stay set
        (0, SSE),
        (0, X87 | AVX),                // AVX needs SSE
        (0, X87 | SSE | AVX | AVX512), // not offered by this host
        (0, X87 | 1 << 3),             // MPX, not offered
        (0, X87 | 1 << 9),             // PKRU
        (0, X87 | SSE | 1 << 32),      // EDX bit 0
        (0, X87 | 1 << 63),
    ] {
        let mut vcpu = FakeVcpu::flat();
        let outcome = xsetbv(&mut vcpu, xcr, value);
        assert_gp(&vcpu, &outcome, 0x1000);
        assert_eq!(vcpu.xcr0, X87, "XCR{xcr} = {value:#x}: XCR0 unchanged");
    }
}

#[test]
fn avx512_goes_in_only_as_a_whole_when_the_host_offers_it() {
    let (mut vm, _) = machine();
    let mut host = FakeHost {
        xstate: crate::GuestXstate { allowed: X87 | SSE | AVX | AVX512, area_size: 0xa80 },
        ..FakeHost::default()
    };
    for (value, ok) in
        [(X87 | SSE | AVX | AVX512, true), (X87 | SSE | AVX | 1 << 5, false), (X87 | SSE | AVX512, false)]
    {
        let mut vcpu = FakeVcpu::flat();
        vcpu.gprs[RAX as usize] = value;
        let outcome = run(Exit::Xsetbv, &mut vcpu, &mut vm, &mut host);
        if ok {
            assert_done(&vcpu, &outcome, 0x1000);
            assert_eq!(vcpu.xcr0, value);
        } else {
            assert_gp(&vcpu, &outcome, 0x1000);
        }
    }
}
