//! Spins forever; only its VM's time limit stops it.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, println};

entry!(main);

fn main() -> ! {
    println!("runaway guest: spinning");
    loop {
        core::hint::spin_loop();
    }
}
