//! Makes a hypercall Basalt does not define.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, vmcall};

entry!(main);

fn main() -> ! {
    println!("unknown hypercall guest: calling 0x999");
    vmcall(0x999, 0, 0);
    println!("unknown hypercall guest: still running (wrong)");
    exit(0x11)
}
