//! Spins in a PAUSE loop for ever, as a vCPU waiting for a lock whose holder
//! does not run: with PAUSE-loop exiting (VT-x) or the pause filter (SVM) it
//! gives its core to whoever else waits for it. Only its VM's time limit
//! stops it.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, println};

entry!(main);

fn main() -> ! {
    println!("spinner: waiting for a lock nobody releases");
    // Interrupts on, as the runaway guest: Bochs turns host interrupts into
    // exits only while the guest's IF is set.
    // SAFETY: Basalt injects nothing here, so no interrupt reaches the guest.
    unsafe { core::arch::asm!("sti") };
    loop {
        core::hint::spin_loop();
    }
}
