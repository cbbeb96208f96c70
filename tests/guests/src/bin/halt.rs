//! Halts with interrupts disabled: nothing can wake it, so its VM stops.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, println};

entry!(main);

fn main() -> ! {
    println!("halt guest: cli; hlt");
    loop {
        // SAFETY: halting is the point.
        unsafe { core::arch::asm!("cli", "hlt") }
    }
}
