//! Idle as most VMs are most of the time: wakes from HLT on a 100 Hz local
//! APIC timer and goes back to sleep, 300 times (3 s), then prints how late
//! its wake-ups came and exits with 33. The idle case runs eight of these on
//! two CPUs and checks the cores stayed halted.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, timer};

entry!(main);

fn main() -> ! {
    let late = timer::sleep(10_000, 300);
    println!("sleeper: worst lateness {} us, mean {} us", late.worst_us, late.mean_us);
    exit(0x10)
}
