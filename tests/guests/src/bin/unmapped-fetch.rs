//! Jumps into guest-physical space where there is neither RAM nor a device.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, println};

entry!(main);

fn main() -> ! {
    println!("unmapped fetch guest: jumping to 0xe0000000");
    // SAFETY: the point of this guest is to execute from unmapped memory.
    unsafe { core::arch::asm!("jmp {}", in(reg) 0xe000_0000u64, options(noreturn)) }
}
