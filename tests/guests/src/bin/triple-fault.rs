//! Loads an empty IDT and raises an exception: no handler, so a triple fault.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, println};

entry!(main);

fn main() -> ! {
    println!("triple fault guest: loading an empty IDT and faulting");
    let empty: [u16; 5] = [0; 5];
    // SAFETY: the point of this guest is to fault without a handler.
    unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &empty) };
    unreachable!()
}
