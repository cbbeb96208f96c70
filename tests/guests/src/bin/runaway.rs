//! Spins forever; only its VM's time limit stops it.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, println};

entry!(main);

fn main() -> ! {
    println!("runaway guest: spinning");
    // With interrupts enabled: Bochs 2.7 only turns host interrupts into VM exits
    // while the guest's IF is set (the SDM says IF does not matter with
    // external-interrupt exiting), and this guest should see the host's tick.
    // SAFETY: Basalt injects nothing here, so no interrupt reaches the guest.
    unsafe { core::arch::asm!("sti") };
    // A plain loop, not PAUSE: this is a CPU hog, not a vCPU waiting for
    // another (a PAUSE loop exits to be yielded; see the spinner guest).
    loop {
        // SAFETY: NOP does nothing.
        unsafe { core::arch::asm!("nop") };
    }
}
