//! The kernel log and every VM's console output, on COM1. Lines go into one
//! bounded queue (`devices::output`: each VM has its own quota, the host may use
//! the rest) and leave it as fast as the port takes them, sent by whoever passes
//! by (`pump`: after each line, in every vCPU's run loop outside the VM lock,
//! and in idle loops) without ever waiting for the port. So a VM that floods
//! its console loses its own lines and slows nobody, and no CPU spins on the
//! 38400-baud port with a lock held. Host lines are tagged with the time since
//! boot and the CPU that wrote them, and end in CR LF as serial terminals
//! expect; console output of a VM that owns the host console passes as it is.

use crate::{percpu, time};
use alloc::sync::Arc;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use devices::output::{OutputQueue, Source, HOST};
use spin::Mutex;
use uart_16550::SerialPort;
use x86_64::instructions::interrupts::without_interrupts;
use x86_64::instructions::port::{Port, PortReadOnly};

// SAFETY: 0x3f8 is COM1 on every PC Basalt boots on, and this is the only
// code that drives it.
static COM1: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(0x3f8) });

/// 128 KiB of lines waiting for the port (34 s of output at 38400 baud).
const QUEUE_BYTES: usize = 128 * 1024;
/// The host and up to 63 VMs with a quota of their own; further VMs share one.
const SOURCES: usize = 64;
/// Bytes of console output a VM may have waiting for the port; past that its
/// lines are dropped.
pub const VM_OUTPUT_QUOTA: usize = 16 * 1024;
/// Past this backlog a VM's vCPUs wait for the port after each exit (see
/// `GuestOutput::over_backlog`), as a guest waits for a real UART: its output
/// is paced, not lost, and no other VM waits with it.
const VM_OUTPUT_BACKLOG: usize = VM_OUTPUT_QUOTA / 2;
static QUEUE: Mutex<OutputQueue<QUEUE_BYTES, SOURCES>> = Mutex::new(OutputQueue::new());
/// Set while the queue may hold lines, so an empty queue costs `pump` one load.
static WAITING: AtomicBool = AtomicBool::new(false);
/// The source of VMs that found no slot of their own.
static SHARED_VM_SOURCE: spin::Once<Option<Source>> = spin::Once::new();

const COM1_DATA: u16 = 0x3f8;
const COM1_LINE_STATUS: u16 = 0x3f8 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;
/// The 16550A's transmit FIFO (enabled by `SerialPort::init`).
const TX_FIFO: usize = 16;

struct KernelLog;
static LOGGER: KernelLog = KernelLog;

pub fn init() {
    COM1.lock().init();
    log::set_logger(&LOGGER).expect("logger set twice");
    log::set_max_level(log::LevelFilter::Info);
}

/// A line formatted on the stack; what does not fit is cut.
struct LineBuf {
    bytes: [u8; devices::output::MAX_LINE],
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf { bytes: [0; devices::output::MAX_LINE], len: 0 }
    }

    /// A log line's start: time since boot, the CPU writing it, the level.
    fn with_prefix(level: log::Level) -> LineBuf {
        let mut line = LineBuf::new();
        let micros = time::micros_since_boot();
        let cpu = percpu::current_index();
        let _ = write!(line, "[{:>4}.{:06} cpu{cpu}] {level:<5} ", micros / 1_000_000, micros % 1_000_000);
        line
    }

    fn push(&mut self, data: &[u8]) {
        let n = data.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Host text with each LF written as CR LF. A bare LF moves a terminal's
/// cursor down but not back to the line's start: in the raw-mode terminal of
/// `cargo xtask run` host lines would staircase across the screen.
struct CrLf<W>(W);

impl<W: Write> Write for CrLf<W> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let mut lines = s.split('\n');
        self.0.write_str(lines.next().unwrap_or_default())?;
        for line in lines {
            self.0.write_str("\r\n")?;
            self.0.write_str(line)?;
        }
        Ok(())
    }
}

impl log::Log for KernelLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = LineBuf::with_prefix(record.level());
        let _ = writeln!(CrLf(&mut line), "{}", record.args());
        enqueue(HOST, line.as_bytes());
    }

    fn flush(&self) {}
}

/// Queues a host line (whole, so lines from different CPUs never interleave).
pub fn write_locked(args: core::fmt::Arguments) {
    let mut line = LineBuf::new();
    let _ = CrLf(&mut line).write_fmt(args);
    enqueue(HOST, line.as_bytes());
}

fn enqueue(source: Source, bytes: &[u8]) {
    if MANAGED.load(Ordering::Acquire) && managed_line(bytes) {
        return;
    }
    queue(source, bytes);
}

/// Into the port's queue as it is: no hold, not kept among the recent lines.
fn queue(source: Source, bytes: &[u8]) {
    without_interrupts(|| {
        if QUEUE.lock().push(source, bytes) {
            WAITING.store(true, Ordering::Release);
        }
    });
    pump();
}

/// With the management shell (`shell=on`), every line (Basalt's own and
/// VMs' prefixed lines; not a console's raw bytes, not the shell's own
/// output) is kept among the recent lines for `log`; while an operator is
/// attached to a VM's console, lines wait in the held ring instead of going
/// out, so the VM's screen is not interleaved with them. Returns whether the
/// line was held.
static MANAGED: AtomicBool = AtomicBool::new(false);
static HOLDING: AtomicBool = AtomicBool::new(false);
/// Basalt's recent lines (`log`), and the lines waiting while a console is attached.
static RECENT: Mutex<Option<basalt_manage::ring::ByteRing>> = Mutex::new(None);
static HELD: Mutex<Option<basalt_manage::ring::ByteRing>> = Mutex::new(None);
const RECENT_BYTES: usize = 32 * 1024;
const HELD_BYTES: usize = 32 * 1024;

/// A line went out over the shell's prompt since the shell last drew it.
static OVER_PROMPT: AtomicBool = AtomicBool::new(false);

/// Whether a line went out since the last call (the shell draws its prompt
/// and the half-typed line again below it).
pub fn line_went_out() -> bool {
    OVER_PROMPT.swap(false, Ordering::AcqRel)
}

fn managed_line(bytes: &[u8]) -> bool {
    without_interrupts(|| {
        if let Some(recent) = RECENT.lock().as_mut() {
            recent.push(bytes);
        }
        let holding = HOLDING.load(Ordering::Acquire);
        if !holding {
            OVER_PROMPT.store(true, Ordering::Release);
        }
        holding && {
            if let Some(held) = HELD.lock().as_mut() {
                held.push(bytes);
            }
            true
        }
    })
}

/// The management shell is on: lines are kept for `log` from now on.
pub fn start_managing() {
    without_interrupts(|| {
        *RECENT.lock() = Some(basalt_manage::ring::ByteRing::new(RECENT_BYTES));
        *HELD.lock() = Some(basalt_manage::ring::ByteRing::new(HELD_BYTES));
    });
    MANAGED.store(true, Ordering::Release);
}

/// An operator attached to a VM's console: lines wait from now on.
pub fn hold_lines() {
    HOLDING.store(true, Ordering::Release);
}

/// The operator left the console: lines go out again; returns those that
/// waited (whole lines) and how many bytes were lost past the ring's size.
pub fn release_lines() -> (alloc::vec::Vec<u8>, u64) {
    HOLDING.store(false, Ordering::Release);
    without_interrupts(|| {
        let mut held = HELD.lock();
        let Some(ring) = held.as_mut() else { return (alloc::vec::Vec::new(), 0) };
        let out = (ring.whole_lines(), ring.dropped());
        ring.clear();
        out
    })
}

/// Basalt's recent lines, whole, oldest first.
pub fn recent_lines() -> alloc::vec::Vec<u8> {
    without_interrupts(|| RECENT.lock().as_ref().map(|r| r.whole_lines()).unwrap_or_default())
}

/// The management shell's own output (prompt, echo, command results): out
/// at once, as it is, never held nor kept among the recent lines. Long
/// output goes in pieces the queue takes whole.
pub fn shell_output(bytes: &[u8]) {
    for piece in bytes.chunks(devices::output::MAX_LINE) {
        queue(HOST, piece);
    }
}

/// Sends queued bytes while the port can take them without waiting; returns
/// at once if another CPU is sending or nothing waits.
pub fn pump() {
    if !WAITING.load(Ordering::Acquire) {
        return;
    }
    without_interrupts(|| {
        let Some(_port) = COM1.try_lock() else { return };
        let mut status = PortReadOnly::<u8>::new(COM1_LINE_STATUS);
        let mut data = Port::<u8>::new(COM1_DATA);
        loop {
            // SAFETY: reading the line status register has no side effects.
            if unsafe { status.read() } & LSR_THR_EMPTY == 0 {
                return;
            }
            let mut chunk = [0u8; TX_FIFO];
            let n = {
                let mut queue = QUEUE.lock();
                let n = queue.take(&mut chunk);
                if queue.is_empty() {
                    WAITING.store(false, Ordering::Release);
                }
                n
            };
            if n == 0 {
                return;
            }
            for &byte in &chunk[..n] {
                // SAFETY: COM1 is ours (its lock is held) and its transmit FIFO
                // is empty, so it takes TX_FIFO bytes without overrun.
                unsafe { data.write(byte) };
            }
        }
    });
}

/// Console output of one VM: its own quota in the queue, released when the
/// VM (and every sink holding this) is gone.
pub struct GuestOutput {
    source: Source,
    /// The VM wrote since its vCPUs last looked at its backlog: only then can
    /// the backlog have grown, so only then is the queue's lock worth taking.
    wrote: AtomicBool,
}

impl GuestOutput {
    pub fn new() -> Arc<GuestOutput> {
        let own = without_interrupts(|| QUEUE.lock().register(VM_OUTPUT_QUOTA));
        let source = own
            .or_else(|| *SHARED_VM_SOURCE.call_once(|| without_interrupts(|| QUEUE.lock().register(VM_OUTPUT_QUOTA))));
        Arc::new(GuestOutput { source: source.unwrap_or(HOST), wrote: AtomicBool::new(false) })
    }

    /// One line of the guest's, after `prefix` and " | ", tagged like host lines.
    pub fn line(&self, prefix: core::fmt::Arguments, text: &[u8]) {
        let mut line = LineBuf::with_prefix(log::Level::Info);
        let _ = write!(line, "{prefix} | ");
        let _ = devices::output::write_printable(text, &mut line);
        line.push(b"\r\n");
        self.wrote.store(true, Ordering::Relaxed);
        enqueue(self.source, line.as_bytes());
    }

    /// Guest console bytes for the host console, as they are (a VM that owns
    /// the host console: see loader's `host_console`, or whose console an
    /// operator attached to): never held, not among the recent lines.
    pub fn raw(&self, bytes: &[u8]) {
        self.wrote.store(true, Ordering::Relaxed);
        queue(self.source, bytes);
    }

    /// After an exit: whether the VM wrote and now has more output waiting
    /// than it may before its vCPUs wait for the port. One load on the exit
    /// path when it wrote nothing.
    pub fn must_wait(&self) -> bool {
        self.wrote.load(Ordering::Relaxed) && {
            self.wrote.store(false, Ordering::Relaxed);
            self.over_backlog()
        }
    }

    /// Whether this VM has more output waiting than it may before its vCPUs
    /// wait for the port (cheap while nothing waits at all).
    pub fn over_backlog(&self) -> bool {
        WAITING.load(Ordering::Acquire) && without_interrupts(|| QUEUE.lock().queued(self.source)) > VM_OUTPUT_BACKLOG
    }

    /// Lines and bytes of this VM's output dropped so far.
    pub fn dropped(&self) -> (u64, u64) {
        without_interrupts(|| QUEUE.lock().dropped(self.source))
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        if Some(self.source) != SHARED_VM_SOURCE.get().copied().flatten() {
            without_interrupts(|| QUEUE.lock().release(self.source));
        }
    }
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

/// For the crash path only: the CPU that crashed may hold the locks already,
/// and every other CPU is being stopped, so take them regardless. What was
/// queued goes out first, so the report follows the lines before it.
pub fn write_crashing(args: core::fmt::Arguments) {
    // SAFETY: called once the other CPUs are told to halt; at worst a line that was
    // being queued or sent when the crash happened is cut short.
    unsafe {
        QUEUE.force_unlock();
        COM1.force_unlock();
    }
    flush_queue();
    let _ = CrLf(&mut *COM1.lock()).write_fmt(args);
}

/// Sends everything queued, waiting for the port (bounded by the queue's size).
fn flush_queue() {
    while WAITING.load(Ordering::Acquire) {
        pump();
        core::hint::spin_loop();
    }
}

/// Sends everything queued and waits (bounded) until COM1 has sent every byte,
/// so an emulator that stops right after does not cut the last line.
pub fn drain() {
    flush_queue();
    let mut status = PortReadOnly::<u8>::new(COM1_LINE_STATUS);
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { status.read() } & LSR_TRANSMITTER_EMPTY != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}
