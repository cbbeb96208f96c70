//! A noisy neighbour: quiet (busy, no exits) for its first second, then for two
//! seconds of guest time floods the print hypercall and COM1 as fast as it can.
//! Its own output may be paced or dropped; nobody else's may suffer.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, rdtsc, tsc_per_ms, vmcall};
use core::arch::asm;

entry!(main);

fn main() -> ! {
    let ms = tsc_per_ms();
    let start = rdtsc();
    println!("hostile-output: quiet for 1000 ms");
    while rdtsc() < start + 1000 * ms {
        core::hint::spin_loop();
    }
    let line = [b'#'; 200];
    let com1_line = b"hostile-output: flooding COM1 with a line that is long enough to matter to a slow serial port\n";
    let mut rounds = 0u64;
    while rdtsc() < start + 3000 * ms {
        vmcall(1, line.as_ptr() as u64, line.len() as u64);
        // SAFETY: REP OUTSB from our own buffer to COM1.
        unsafe {
            asm!("rep outsb", in("dx") 0x3f8u16, inout("rsi") com1_line.as_ptr() => _, inout("rcx") com1_line.len() => _)
        };
        rounds += 1;
    }
    println!("hostile-output: done after {rounds} rounds");
    exit(0x10)
}
