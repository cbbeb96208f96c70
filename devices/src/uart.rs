//! A 16550A UART as the guest sees it at COM1. Output goes to a sink one line at a
//! time (the VMM prefixes it with the VM's name); input is queued by the host.
//! Interrupt state is computed (`interrupt_pending`) for the VMM to deliver.
//!
//! Input is bounded as on hardware, since a guest (loopback) or a fast host
//! (a paste) could otherwise grow it without end: the receive FIFO holds
//! RX_FIFO bytes, and host input may wait behind it up to HOST_INPUT bytes in
//! all. A byte beyond either is dropped, counted (`dropped_input`) and
//! reported to the guest as an overrun error in the line status.

use crate::bus::{PortDevice, Request};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

const IER_RECEIVED_DATA: u8 = 1 << 0;
const IER_TRANSMIT_EMPTY: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;
const IER_LINE_STATUS: u8 = 1 << 2;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_OVERRUN: u8 = 1 << 1;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;
const IIR_NONE: u8 = 0x01;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_RECEIVED_DATA: u8 = 0x04;
const IIR_LINE_STATUS: u8 = 0x06;
const IIR_FIFO_ENABLED: u8 = 0xc0;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOPBACK: u8 = 1 << 4;
/// A line longer than this is passed on without waiting for its newline.
const MAX_LINE: usize = 256;
/// The 16550A's receive FIFO: what the guest's own loopback output may fill.
pub const RX_FIFO: usize = 16;
/// Received bytes the UART holds in all, counting host input still waiting
/// behind the FIFO: a paste of a few lines survives a guest that reads slowly.
pub const HOST_INPUT: usize = 4096;

pub type LineSink = Box<dyn FnMut(&[u8]) + Send>;

/// Guest console output collected into lines for a sink: a newline ends a line,
/// carriage returns are dropped, and a line longer than MAX_LINE is passed on
/// without waiting for its newline.
pub struct LineBuffer {
    line: Vec<u8>,
    sink: LineSink,
    /// Every byte goes to the sink as it comes, unchanged (an interactive
    /// console: prompts have no newline and echo must show at once).
    unbuffered: bool,
}

impl LineBuffer {
    pub fn new(sink: LineSink) -> LineBuffer {
        LineBuffer { line: Vec::new(), sink, unbuffered: false }
    }

    pub fn unbuffered(sink: LineSink) -> LineBuffer {
        LineBuffer { line: Vec::new(), sink, unbuffered: true }
    }

    pub fn push(&mut self, byte: u8) {
        if self.unbuffered {
            (self.sink)(&[byte]);
            return;
        }
        match byte {
            b'\n' => self.emit(),
            b'\r' => {}
            _ => {
                self.line.push(byte);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }

    /// Passes on a partial line (when the VM stops).
    pub fn flush(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }

    fn emit(&mut self) {
        (self.sink)(&self.line);
        self.line.clear();
    }
}

pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scratch: u8,
    divisor: u16,
    fifo_control: u8,
    /// The transmit-empty interrupt is raised once per THR write, until IIR is read.
    thr_empty_pending: bool,
    /// The receive FIFO, followed by host input waiting to enter it: the guest
    /// sees one stream, so one queue (never longer than HOST_INPUT).
    input: VecDeque<u8>,
    /// A received byte was lost since the guest last read the line status.
    overrun: bool,
    dropped_input: u64,
    output: LineBuffer,
}

impl Uart16550 {
    pub fn new(sink: LineSink) -> Self {
        Self::with_output(LineBuffer::new(sink))
    }

    /// A UART whose output is passed on byte by byte (see `LineBuffer::unbuffered`).
    pub fn unbuffered(sink: LineSink) -> Self {
        Self::with_output(LineBuffer::unbuffered(sink))
    }

    fn with_output(output: LineBuffer) -> Self {
        Uart16550 {
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            scratch: 0,
            divisor: 12,
            fifo_control: 0,
            thr_empty_pending: false,
            input: VecDeque::new(),
            overrun: false,
            dropped_input: 0,
            output,
        }
    }

    /// Bytes typed on the host console for the guest; what does not fit in
    /// HOST_INPUT is dropped (see `dropped_input`).
    pub fn push_input(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.receive(byte, HOST_INPUT);
        }
    }

    /// Received bytes dropped because the guest did not read them in time.
    pub fn dropped_input(&self) -> u64 {
        self.dropped_input
    }

    /// A byte arriving at the receiver while `limit` bytes are already held.
    fn receive(&mut self, byte: u8, limit: usize) {
        if self.input.len() < limit {
            self.input.push_back(byte);
        } else {
            self.overrun = true;
            self.dropped_input += 1;
        }
    }

    /// Whether the UART's interrupt line is asserted.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_id() != IIR_NONE
    }

    /// The IRQ line as the PC wires it: the interrupt output gated by MCR OUT2.
    pub fn irq_line(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && self.interrupt_pending()
    }

    /// Passes on a partial line (when the VM stops).
    pub fn flush(&mut self) {
        self.output.flush();
    }

    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_LINE_STATUS != 0 && self.overrun {
            IIR_LINE_STATUS
        } else if self.ier & IER_RECEIVED_DATA != 0 && !self.input.is_empty() {
            IIR_RECEIVED_DATA
        } else if self.ier & IER_TRANSMIT_EMPTY != 0 && self.thr_empty_pending {
            IIR_THR_EMPTY
        } else {
            IIR_NONE
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOPBACK != 0 {
            self.receive(byte, RX_FIFO);
        } else {
            self.output.push(byte);
        }
        self.thr_empty_pending = true;
    }
}

impl PortDevice for Uart16550 {
    fn name(&self) -> &'static str {
        "uart-16550a"
    }

    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        let dlab = self.lcr & LCR_DLAB != 0;
        (match offset {
            0 if dlab => self.divisor as u8,
            0 => self.input.pop_front().unwrap_or(0),
            1 if dlab => (self.divisor >> 8) as u8,
            1 => self.ier,
            2 => {
                let id = self.interrupt_id();
                if id == IIR_THR_EMPTY {
                    self.thr_empty_pending = false;
                }
                id | if self.fifo_control & 1 != 0 { IIR_FIFO_ENABLED } else { 0 }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                // Reading the line status clears its error bits.
                let overrun = if core::mem::take(&mut self.overrun) { LSR_OVERRUN } else { 0 };
                let data_ready = if self.input.is_empty() { 0 } else { LSR_DATA_READY };
                LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY | overrun | data_ready
            }
            // Modem status: in loopback the outputs reflect back; otherwise DCD, DSR and CTS are up.
            6 if self.mcr & MCR_LOOPBACK != 0 => (self.mcr & 0x0f) << 4,
            6 => 0xb0,
            7 => self.scratch,
            _ => 0xff,
        }) as u32
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> Option<Request> {
        let value = value as u8;
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor = (self.divisor & 0xff00) | value as u16,
            0 => self.transmit(value),
            1 if dlab => self.divisor = (self.divisor & 0x00ff) | (value as u16) << 8,
            1 => {
                // Enabling the transmit interrupt with THR empty raises it at once.
                if value & IER_TRANSMIT_EMPTY != 0 && self.ier & IER_TRANSMIT_EMPTY == 0 {
                    self.thr_empty_pending = true;
                }
                self.ier = value & 0x0f;
            }
            2 => {
                self.fifo_control = value;
                if value & 0x02 != 0 {
                    self.input.clear();
                }
            }
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scratch = value,
            _ => {}
        }
        None
    }
}

/// QEMU's isa-debug-exit: a write of `value` stops the VM with status
/// `(value << 1) | 1`, so existing test kernels work unmodified.
pub struct DebugExit;

impl PortDevice for DebugExit {
    fn name(&self) -> &'static str {
        "debug-exit"
    }
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        0
    }
    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> Option<Request> {
        Some(Request::Stop { status: (value << 1) | 1 })
    }
}

/// Marks moments in a guest's run for the bench: a byte written here is passed
/// to the VMM, which logs the VM's time and exits so far; reads give 0.
pub struct BenchMarker;

impl PortDevice for BenchMarker {
    fn name(&self) -> &'static str {
        "bench-marker"
    }
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        0
    }
    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> Option<Request> {
        Some(Request::Marker { value: value as u8 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn uart() -> (Uart16550, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let uart =
            Uart16550::new(Box::new(move |l: &[u8]| sink.lock().unwrap().push(String::from_utf8_lossy(l).into())));
        (uart, lines)
    }

    fn say(u: &mut Uart16550, text: &str) {
        for b in text.bytes() {
            u.write(0, 1, b as u32);
        }
    }

    #[test]
    fn output_arrives_a_line_at_a_time_without_carriage_returns() {
        let (mut u, lines) = uart();
        say(&mut u, "hello\r\nwor");
        assert_eq!(*lines.lock().unwrap(), vec!["hello"]);
        say(&mut u, "ld\n");
        u.flush();
        assert_eq!(*lines.lock().unwrap(), vec!["hello", "world"]);
        say(&mut u, "tail");
        u.flush();
        assert_eq!(lines.lock().unwrap().last().unwrap(), "tail");
    }

    #[test]
    fn unbuffered_output_passes_every_byte_at_once() {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let mut u = Uart16550::unbuffered(Box::new(move |b: &[u8]| sink.lock().unwrap().extend_from_slice(b)));
        say(&mut u, "~ # ");
        assert_eq!(*bytes.lock().unwrap(), b"~ # ", "a prompt shows without its newline");
        say(&mut u, "\r\n");
        assert_eq!(*bytes.lock().unwrap(), b"~ # \r\n", "carriage returns are kept");
    }

    #[test]
    fn line_status_says_transmitter_ready_and_data_ready() {
        let (mut u, _) = uart();
        assert_eq!(u.read(5, 1) as u8, LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY);
        u.push_input(b"ab");
        assert_eq!(u.read(5, 1) as u8 & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(u.read(0, 1), b'a' as u32);
        assert_eq!(u.read(0, 1), b'b' as u32);
        assert_eq!(u.read(5, 1) as u8 & LSR_DATA_READY, 0);
    }

    #[test]
    fn divisor_latch_shadows_data_and_ier() {
        let (mut u, lines) = uart();
        u.write(3, 1, 0x83);
        u.write(0, 1, 0x01);
        u.write(1, 1, 0x00);
        assert_eq!((u.read(0, 1), u.read(1, 1)), (1, 0));
        u.write(3, 1, 0x03);
        u.write(7, 1, 0x5a);
        assert_eq!(u.read(7, 1), 0x5a);
        assert!(lines.lock().unwrap().is_empty(), "divisor writes are not output");
    }

    #[test]
    fn interrupts_follow_ier_and_clear_on_iir_read() {
        let (mut u, _) = uart();
        assert!(!u.interrupt_pending());
        u.write(1, 1, IER_TRANSMIT_EMPTY as u32);
        assert!(u.interrupt_pending());
        assert_eq!(u.read(2, 1) as u8, IIR_THR_EMPTY);
        assert!(!u.interrupt_pending());
        u.write(1, 1, (IER_TRANSMIT_EMPTY | IER_RECEIVED_DATA) as u32);
        u.push_input(b"x");
        assert_eq!(u.read(2, 1) as u8, IIR_RECEIVED_DATA, "received data outranks THR empty");
    }

    #[test]
    fn loopback_reflects_output_into_input() {
        let (mut u, lines) = uart();
        u.write(4, 1, MCR_LOOPBACK as u32);
        u.write(0, 1, 0xae);
        assert_eq!(u.read(0, 1), 0xae);
        assert!(lines.lock().unwrap().is_empty());
    }

    #[test]
    fn loopback_overflows_the_receive_fifo_as_hardware_does() {
        let (mut u, _) = uart();
        u.write(4, 1, MCR_LOOPBACK as u32);
        for byte in 0..RX_FIFO as u32 + 3 {
            u.write(0, 1, byte);
        }
        assert_eq!(u.dropped_input(), 3);
        assert_eq!(u.read(5, 1) as u8 & (LSR_OVERRUN | LSR_DATA_READY), LSR_OVERRUN | LSR_DATA_READY);
        assert_eq!(u.read(5, 1) as u8 & LSR_OVERRUN, 0, "reading the line status clears the error");
        let received: Vec<u32> = (0..RX_FIFO).map(|_| u.read(0, 1)).collect();
        assert_eq!(received, (0..RX_FIFO as u32).collect::<Vec<_>>(), "the FIFO keeps the first bytes");
        assert_eq!(u.read(5, 1) as u8 & LSR_DATA_READY, 0);
    }

    #[test]
    fn host_input_waits_behind_the_fifo_up_to_a_bound() {
        let (mut u, _) = uart();
        u.push_input(&[b'a'; HOST_INPUT]);
        assert_eq!(u.dropped_input(), 0);
        assert_eq!(u.read(5, 1) as u8 & LSR_OVERRUN, 0);
        u.push_input(b"lost");
        assert_eq!(u.dropped_input(), 4);
        assert_eq!(u.read(5, 1) as u8 & LSR_OVERRUN, LSR_OVERRUN);
        // Loopback bytes find the FIFO full of host input.
        u.write(4, 1, MCR_LOOPBACK as u32);
        u.write(0, 1, b'x' as u32);
        assert_eq!(u.dropped_input(), 5);
        // Reading makes room again.
        u.read(0, 1);
        u.push_input(b"b");
        assert_eq!(u.dropped_input(), 5);
    }

    #[test]
    fn an_overrun_raises_the_line_status_interrupt_until_lsr_is_read() {
        let (mut u, _) = uart();
        u.write(1, 1, (IER_RECEIVED_DATA | IER_LINE_STATUS) as u32);
        u.write(4, 1, MCR_LOOPBACK as u32);
        for _ in 0..=RX_FIFO {
            u.write(0, 1, b'o' as u32);
        }
        assert_eq!(u.read(2, 1) as u8, IIR_LINE_STATUS, "line status outranks received data");
        u.read(5, 1);
        assert_eq!(u.read(2, 1) as u8, IIR_RECEIVED_DATA);
    }

    #[test]
    fn debug_exit_status_matches_qemu() {
        assert_eq!(DebugExit.write(0, 4, 0x10), Some(Request::Stop { status: 33 }));
        assert_eq!(DebugExit.write(0, 1, 0), Some(Request::Stop { status: 1 }));
    }

    #[test]
    fn bench_marker_passes_the_byte_on() {
        assert_eq!(BenchMarker.write(0, 1, 0x101), Some(Request::Marker { value: 1 }));
        assert_eq!(BenchMarker.read(0, 1), 0);
    }
}
