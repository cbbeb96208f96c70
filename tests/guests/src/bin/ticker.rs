//! A 1 kHz timer workload: 1000 wake-ups from HLT on its local APIC timer,
//! then it prints how late the worst and the average one came (the
//! scheduler's latency case runs it next to CPU hogs) and exits with 33.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, timer};

entry!(main);

fn main() -> ! {
    println!("ticker: 1000 ticks at 1 kHz");
    let late = timer::sleep(1000, 1000);
    println!("ticker: worst lateness {} us, mean {} us", late.worst_us, late.mean_us);
    exit(0x10)
}
