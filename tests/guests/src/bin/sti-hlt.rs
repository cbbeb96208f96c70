//! STI; HLT right after an exit, with its timer interrupt already waiting:
//! the interrupt must wake the HLT, not slip in before it (the shadow STI
//! casts over the next instruction). 100 rounds, then it exits with 33.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, timer};

entry!(main);

fn main() -> ! {
    timer::wake_after_sti(100);
    println!("sti-hlt: 100 wake-ups after STI; HLT");
    exit(0x10)
}
