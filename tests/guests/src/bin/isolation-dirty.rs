//! First half of the isolation case: fills every SIMD, x87 and debug register
//! it can reach, and CR8, with a pattern, then stops. The VM that runs next on
//! the same core (isolation-check) must see none of it.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, xstate};
use core::arch::asm;

entry!(main);

const PATTERN: [u8; 64] = [0xa5; 64];

macro_rules! fill {
    ($instruction:literal, $register:literal, $($i:literal)*) => {
        // SAFETY: loads vector registers from a 64-byte pattern; the guest is
        // soft-float, so the compiler keeps nothing in them.
        $( unsafe { asm!(concat!($instruction, " ", $register, $i, ", [{p}]"), p = in(reg) PATTERN.as_ptr()) }; )*
    };
}

fn main() -> ! {
    let components = xstate::enable_all();
    println!("isolation-dirty: xcr0 {components:#x}");
    fill!("movdqu", "xmm", 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    if components & xstate::AVX != 0 {
        fill!("vmovdqu", "ymm", 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }
    if components & xstate::AVX512 == xstate::AVX512 {
        fill!("vmovdqu64", "zmm", 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
        // SAFETY: opmask registers hold no compiler state.
        unsafe {
            asm!("kmovq k1, {0}", "kmovq k2, {0}", "kmovq k3, {0}", "kmovq k4, {0}", "kmovq k5, {0}",
                 "kmovq k6, {0}", "kmovq k7, {0}", in(reg) 0xa5a5_a5a5_a5a5_a5a5u64);
        }
    }
    let control: u16 = 0x027f;
    let mxcsr: u32 = 0xff80;
    // SAFETY: x87 and MXCSR changes only affect floating point, which this
    // guest does not otherwise use. DR0-DR3 hold addresses that match nothing
    // while DR7 leaves every breakpoint disabled; DR6 bits 0-3 are writable.
    unsafe {
        asm!("fninit", "fldcw [{c}]", "fldpi", "fldpi", "fld1", "ldmxcsr [{m}]", c = in(reg) &control, m = in(reg) &mxcsr);
        asm!("mov dr0, {0}", "mov dr1, {0}", "mov dr2, {0}", "mov dr3, {0}", in(reg) 0xdead_beef_0000u64);
        asm!("mov dr6, {0}", in(reg) 0xffff_0ff0u64 | 0xf);
        asm!("mov cr8, {0}", in(reg) 15u64);
    }
    println!("isolation-dirty: registers filled");
    exit(0x10)
}
