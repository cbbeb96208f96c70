//! A noisy neighbour: quiet (busy, no exits) for its first second, then for two
//! seconds of guest time floods the print hypercall, COM1 and its virtio
//! console as fast as it can. Its own output may be paced or dropped; nobody
//! else's may suffer.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, rdtsc, tsc_per_ms, vmcall};
use core::arch::asm;
use core::mem::offset_of;
use core::ptr::{addr_of, addr_of_mut};

entry!(main);

fn main() -> ! {
    let ms = tsc_per_ms();
    let start = rdtsc();
    println!("hostile-output: quiet for 1000 ms");
    while rdtsc() < start + 1000 * ms {
        core::hint::spin_loop();
    }
    let line = [b'#'; 200];
    let mut hvc = VirtioConsole::bring_up();
    let com1_line = b"hostile-output: flooding COM1 with a line that is long enough to matter to a slow serial port\n";
    let mut rounds = 0u64;
    while rdtsc() < start + 3000 * ms {
        vmcall(1, line.as_ptr() as u64, line.len() as u64);
        hvc.send(HVC_LINE);
        // SAFETY: REP OUTSB from our own buffer to COM1.
        unsafe {
            asm!("rep outsb", in("dx") 0x3f8u16, inout("rsi") com1_line.as_ptr() => _, inout("rcx") com1_line.len() => _)
        };
        rounds += 1;
    }
    println!("hostile-output: done after {rounds} rounds ({} virtio-console lines)", hvc.sent);
    exit(0x10)
}

const HVC_LINE: &[u8] = b"hostile-output: flooding the virtio console with a line as long as the others\n";

/// Just enough of a virtio-console driver to transmit: the device in virtio
/// slot 0, its transmit queue (1) with one descriptor reused for every line.
struct VirtioConsole {
    sent: u64,
}

const VIRTIO_CONSOLE: u64 = 0xd000_0000;
const QUEUE_SIZE: u16 = 8;

#[repr(C, align(4096))]
struct Queue {
    descriptors: [[u64; 2]; QUEUE_SIZE as usize],
    available: [u16; 2 + QUEUE_SIZE as usize],
    _pad: [u8; 4096 - 16 * QUEUE_SIZE as usize - 2 * (2 + QUEUE_SIZE as usize)],
    used: [u32; 1 + 2 * QUEUE_SIZE as usize],
}

static mut TRANSMIT: Queue = Queue {
    descriptors: [[0; 2]; QUEUE_SIZE as usize],
    available: [0; 2 + QUEUE_SIZE as usize],
    _pad: [0; 4096 - 16 * QUEUE_SIZE as usize - 2 * (2 + QUEUE_SIZE as usize)],
    used: [0; 1 + 2 * QUEUE_SIZE as usize],
};

fn register(offset: u64, value: u32) {
    // SAFETY: a virtio-mmio register of the console Basalt gives every VM.
    unsafe { ((VIRTIO_CONSOLE + offset) as *mut u32).write_volatile(value) }
}

impl VirtioConsole {
    fn bring_up() -> VirtioConsole {
        let queue = addr_of!(TRANSMIT) as u64;
        register(0x70, 0);
        register(0x70, 1 | 2);
        register(0x24, 1);
        register(0x20, 1); // VERSION_1
        register(0x24, 0);
        register(0x20, 0);
        register(0x70, 1 | 2 | 8);
        register(0x30, 1);
        register(0x38, QUEUE_SIZE as u32);
        for (at, address) in [
            (0x80, queue),
            (0x90, queue + offset_of!(Queue, available) as u64),
            (0xa0, queue + offset_of!(Queue, used) as u64),
        ] {
            register(at, address as u32);
            register(at + 4, (address >> 32) as u32);
        }
        register(0x44, 1);
        register(0x70, 1 | 2 | 4 | 8);
        VirtioConsole { sent: 0 }
    }

    /// Posts `line` and notifies; the device consumes it before the notify
    /// returns (or drops it: only the flood matters here).
    fn send(&mut self, line: &'static [u8]) {
        // SAFETY: the queue is this guest's own memory; the device reads it
        // only during the notify below.
        let queue = unsafe { &mut *addr_of_mut!(TRANSMIT) };
        queue.descriptors[0] = [line.as_ptr() as u64, line.len() as u64];
        let index = queue.available[1];
        queue.available[2 + (index % QUEUE_SIZE) as usize] = 0;
        queue.available[1] = index.wrapping_add(1);
        register(0x50, 1);
        self.sent += 1;
    }
}
