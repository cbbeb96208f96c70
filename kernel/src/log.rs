//! The kernel log: `log` records to COM1, each tagged with the time since boot
//! and the CPU that wrote it.

use crate::{percpu, time};
use core::fmt::Write;
use spin::Mutex;
use uart_16550::SerialPort;

static COM1: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(0x3f8) });

struct KernelLog;
static LOGGER: KernelLog = KernelLog;

pub fn init() {
    COM1.lock().init();
    log::set_logger(&LOGGER).expect("logger set twice");
    log::set_max_level(log::LevelFilter::Info);
}

impl log::Log for KernelLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let micros = time::micros_since_boot();
        write_locked(format_args!(
            "[{:>4}.{:06} cpu{}] {:<5} {}\n",
            micros / 1_000_000,
            micros % 1_000_000,
            percpu::current_index(),
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Writes a whole line under the port lock with interrupts off, so lines from
/// different CPUs and interrupt handlers never interleave or deadlock.
pub fn write_locked(args: core::fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _ = COM1.lock().write_fmt(args);
    });
}

/// Guest console bytes for the host console, as they are (a VM that owns the
/// host console: see loader's `host_console`).
pub fn write_raw(bytes: &[u8]) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut port = COM1.lock();
        for &byte in bytes {
            port.send_raw(byte);
        }
    });
}

/// Bytes typed on the host console since the last call, up to `buffer`'s size.
pub fn read_input(buffer: &mut [u8]) -> usize {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut port = COM1.lock();
        let mut n = 0;
        while n < buffer.len() {
            match port.try_receive() {
                Ok(byte) => buffer[n] = byte,
                Err(_) => break,
            }
            n += 1;
        }
        n
    })
}

/// For the crash path only: the CPU that crashed may hold the lock already, and
/// every other CPU is being stopped, so take the port regardless.
pub fn write_crashing(args: core::fmt::Arguments) {
    // SAFETY: called once the other CPUs are told to halt; at worst a line that was
    // being written when the crash happened is cut short.
    unsafe { COM1.force_unlock() };
    let _ = COM1.lock().write_fmt(args);
}

/// Waits (bounded) until COM1 has sent every byte, so an emulator that stops
/// right after does not cut the last line.
pub fn drain() {
    const LINE_STATUS: u16 = 0x3f8 + 5;
    const TRANSMITTER_EMPTY: u8 = 1 << 6;
    let mut status = x86_64::instructions::port::PortReadOnly::<u8>::new(LINE_STATUS);
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { status.read() } & TRANSMITTER_EMPTY != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}
