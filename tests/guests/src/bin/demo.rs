//! The built-in VM of `cargo xtask run`: says hello through its emulated UART.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, vmcall};
use core::arch::x86_64::__cpuid;

entry!(main);

fn main() -> ! {
    let hv = __cpuid(0x4000_0000);
    let mut signature = [0u8; 12];
    signature[..4].copy_from_slice(&hv.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    signature[8..].copy_from_slice(&hv.edx.to_le_bytes());
    println!("Hello from a Basalt guest!");
    println!("running in 64-bit mode under {}", core::str::from_utf8(&signature).unwrap_or("?"));
    println!("hypercall interface version {:#x}, TSC {} kHz", vmcall(0, 0, 0), vmcall(3, 0, 0));
    println!("goodbye");
    exit(0)
}
