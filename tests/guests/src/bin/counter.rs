//! A progress counter for the management cases: counts up every 100 ms of
//! its own time (local APIC timer in TSC-deadline mode, HLT between ticks)
//! and prints each value with its guest time, forever. Its time is the
//! guest TSC: a pause that stops the VM's clock leaves no gap in it; a gap
//! of more than a second is reported as a jump.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, println, rdtsc, timer, tsc_per_ms};

entry!(main);

const PERIOD_US: u64 = 100_000;
/// A step this much longer than the period is a jump in guest time.
const JUMP_MS: u64 = 1_000;

fn main() -> ! {
    let per_ms = tsc_per_ms();
    let start = rdtsc();
    let mut last = start;
    let mut count: u64 = 0;
    loop {
        println!("counter: {count} at {} ms", (last - start) / per_ms);
        timer::sleep(PERIOD_US, 1);
        let now = rdtsc();
        let step_ms = now.wrapping_sub(last) / per_ms;
        if step_ms > JUMP_MS {
            println!("counter: guest time jumped {step_ms} ms");
        }
        last = now;
        count += 1;
    }
}
