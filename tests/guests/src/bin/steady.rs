//! The healthy neighbour: the same work twice, once while hostile-output (on
//! the other core) is still quiet and once while it floods, each round timed in
//! guest TSC. Passes when the second round takes at most twice the first.
#![no_std]
#![no_main]

use basalt_test_guests::{check, entry, exit, println, rdtsc, tsc_per_ms, vmcall};
use core::arch::x86_64::__cpuid;

entry!(main);

/// Exits of several kinds and a few log lines, as a guest doing ordinary work.
fn round(name: &str) -> u64 {
    let start = rdtsc();
    for i in 0..200u32 {
        let _ = __cpuid(0);
        basalt_test_guests::outb(0x80, i as u8);
        if i % 40 == 0 {
            let message = b"steady: working";
            vmcall(1, message.as_ptr() as u64, message.len() as u64);
        }
    }
    let took = rdtsc() - start;
    println!("steady: round {name} took {} us", took * 1000 / tsc_per_ms());
    took
}

fn main() -> ! {
    let ms = tsc_per_ms();
    let start = rdtsc();
    let alone = round("alone");
    let alone_done = rdtsc() - start;
    // The neighbour floods from 1000 ms to 3000 ms of its time.
    while rdtsc() < start + 1500 * ms {
        core::hint::spin_loop();
    }
    let flooded = round("flooded");
    println!("steady: flooded/alone = {}.{:02}", flooded / alone.max(1), flooded * 100 / alone.max(1) % 100);
    let ok = check("round alone finished before the flood", alone_done < 1000 * ms)
        & check("within 2x its time alone", flooded <= 2 * alone);
    exit(if ok { 0x10 } else { 0x11 })
}
