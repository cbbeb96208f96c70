//! Resets its machine through system control port A (bit 0 of port 0x92), as
//! old boot code does: Basalt restarts the VM from its images, each time, and
//! stops it once it has reset too often.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, inb, outb, println};

entry!(main);

fn main() -> ! {
    let value = inb(0x92);
    println!("fast reset guest: port 0x92 {value:#04x}, setting bit 0");
    outb(0x92, value | 1);
    println!("fast reset guest: still running after the reset (wrong)");
    exit(0x11)
}
