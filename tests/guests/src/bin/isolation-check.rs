//! Second half of the isolation case: runs on the core where isolation-dirty
//! just ran and checks that every register it filled is at its architectural
//! reset value: x87, MXCSR and XMM before any XSETBV, then the AVX and AVX-512
//! state once enabled, the debug registers and CR8.
#![no_std]
#![no_main]

use basalt_test_guests::{check, entry, exit, println, xstate};
use core::arch::asm;

entry!(main);

#[repr(C, align(64))]
struct Area([u8; 512]);

macro_rules! all_zero {
    ($instruction:literal, $register:literal, $bytes:literal, $($i:literal)*) => {{
        let mut area = Area([0xff; 512]);
        let mut zero = true;
        $(
            // SAFETY: stores one vector register into the 512-byte area.
            unsafe { asm!(concat!($instruction, " [{p}], ", $register, $i), p = in(reg) area.0.as_mut_ptr()) };
            zero &= area.0[..$bytes].iter().all(|&b| b == 0);
        )*
        zero
    }};
}

fn main() -> ! {
    let mut ok = true;
    // SAFETY: OSFXSR lets SSE instructions and FXSAVE run; no XSETBV yet.
    unsafe { asm!("mov {t}, cr4", "or {t}, 0x600", "mov cr4, {t}", t = out(reg) _) };
    let mut area = Area([0xff; 512]);
    // SAFETY: FXSAVE into a 512-byte, 16-byte-aligned area.
    unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr()) };
    let a = &area.0;
    let u16_at = |at: usize| u16::from_le_bytes([a[at], a[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]]);
    ok &= check("x87 control word at reset", u16_at(0) == 0x037f);
    ok &= check("x87 status and tags at reset", u16_at(2) == 0 && a[4] == 0);
    ok &= check("mxcsr at reset", u32_at(24) == 0x1f80);
    // Each register is the first 10 bytes of a 16-byte slot; CPUs need not
    // write the other 6 (QEMU does not), so they keep this area's 0xff.
    ok &= check("x87 registers zero", a[32..160].chunks(16).all(|slot| slot[..10].iter().all(|&b| b == 0)));
    ok &= check("xmm registers zero", a[160..416].iter().all(|&b| b == 0));

    let dr: [u64; 5];
    let cr8: u64;
    // SAFETY: reading debug registers and CR8 has no side effects.
    unsafe {
        let (d0, d1, d2, d3, d6): (u64, u64, u64, u64, u64);
        asm!("mov {0}, dr0", "mov {1}, dr1", "mov {2}, dr2", "mov {3}, dr3", "mov {4}, dr6",
             out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3, out(reg) d6);
        dr = [d0, d1, d2, d3, d6];
        asm!("mov {0}, cr8", out(reg) cr8);
    }
    ok &= check("dr0-dr3 zero", dr[..4].iter().all(|&d| d == 0));
    ok &= check("dr6 at reset", dr[4] == 0xffff_0ff0);
    ok &= check("cr8 zero", cr8 == 0);

    let components = xstate::enable_all();
    println!("isolation-check: xcr0 {components:#x}");
    if components & xstate::AVX != 0 {
        ok &= check("ymm registers zero", all_zero!("vmovdqu", "ymm", 32, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15));
    }
    if components & xstate::AVX512 == xstate::AVX512 {
        ok &= check(
            "zmm registers zero",
            all_zero!("vmovdqu64", "zmm", 64, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31),
        );
        let mut masks = 0u64;
        // SAFETY: reads opmask registers.
        unsafe {
            asm!("kmovq {t}, k1", "or {m}, {t}", "kmovq {t}, k2", "or {m}, {t}", "kmovq {t}, k3", "or {m}, {t}",
                 "kmovq {t}, k4", "or {m}, {t}", "kmovq {t}, k5", "or {m}, {t}", "kmovq {t}, k6", "or {m}, {t}",
                 "kmovq {t}, k7", "or {m}, {t}", t = out(reg) _, m = inout(reg) masks);
        }
        ok &= check("opmask registers zero", masks == 0);
    }
    println!("isolation-check: {}", if ok { "nothing leaked" } else { "state LEAKED" });
    exit(if ok { 0x10 } else { 0x11 })
}
