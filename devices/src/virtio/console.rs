//! virtio-console with one port (no multiport): what the guest writes to its
//! transmit queue goes to a line sink (the host log, prefixed with the VM's
//! name); bytes pushed by the host fill the guest's receive buffers.
//!
//! Neither direction holds more host memory than a fixed amount, whatever
//! lengths the guest's buffers claim: output is copied through a small buffer
//! on the stack, at most TRANSMIT_PER_CALL bytes of it per call, and host input
//! waits for receive buffers up to INPUT_LIMIT bytes (more is dropped and
//! counted).

use super::queue::ChainIo;
use super::{Handled, VirtioDevice, VirtioError};
use crate::uart::{LineBuffer, LineSink};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

const RECEIVE: usize = 0;
const TRANSMIT: usize = 1;
/// Guest output taken from a transmit chain per call; a longer chain goes on
/// in later calls, so the host log is written a bounded amount at a time.
/// 1 KiB: binary output is escaped to up to three times its size in the log,
/// and a call's worth must fit in what a VM may queue beyond the point where
/// its vCPUs start waiting for the port (16 - 8 KiB), so that pacing, not
/// dropping, is what a fast writer meets.
pub const TRANSMIT_PER_CALL: u64 = 1024;
/// Host input held until the guest offers receive buffers.
pub const INPUT_LIMIT: usize = 4096;
/// Output moves from guest memory to the line buffer in pieces of this size.
const TRANSMIT_PIECE: usize = 256;

pub struct Console {
    input: VecDeque<u8>,
    dropped_input: u64,
    output: LineBuffer,
}

impl Console {
    pub fn new(sink: LineSink) -> Console {
        Console { input: VecDeque::new(), dropped_input: 0, output: LineBuffer::new(sink) }
    }

    /// Passes on up to TRANSMIT_PER_CALL bytes of the chain's output from
    /// where the last call left off.
    fn transmit(&mut self, io: &mut ChainIo) -> Result<Handled, VirtioError> {
        let total = io.readable_len();
        let start = io.progress().min(total);
        let end = start.saturating_add(TRANSMIT_PER_CALL.min(io.budget())).min(total);
        let mut piece = [0u8; TRANSMIT_PIECE];
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).unwrap_or(usize::MAX).min(piece.len());
            io.read(at, &mut piece[..n])?;
            piece[..n].iter().for_each(|&b| self.output.push(b));
            at += n as u64;
        }
        Ok(if at < total { Handled::Unfinished { progress: at } } else { Handled::Used(0) })
    }

    /// Fills the chain's receive buffers with what input there is.
    fn receive(&mut self, io: &mut ChainIo) -> Result<Handled, VirtioError> {
        let room = io.writable_len().min(io.budget());
        let n = usize::try_from(room).unwrap_or(usize::MAX).min(self.input.len());
        let (first, second) = self.input.as_slices();
        let from_first = n.min(first.len());
        io.write(0, &first[..from_first])?;
        io.write(from_first as u64, &second[..n - from_first])?;
        self.input.drain(..n);
        Ok(Handled::Used(n as u32))
    }
}

impl VirtioDevice for Console {
    fn name(&self) -> &'static str {
        "virtio-console"
    }
    fn device_id(&self) -> u32 {
        3
    }
    fn features(&self) -> u64 {
        0
    }
    fn queues(&self) -> usize {
        2
    }
    fn config(&self) -> Vec<u8> {
        // cols, rows, max_nr_ports, emerg_wr: meaningful only with features
        // this device does not offer.
        alloc::vec![0; 12]
    }
    fn handle(&mut self, queue: usize, io: &mut ChainIo) -> Result<Handled, VirtioError> {
        match queue {
            TRANSMIT => self.transmit(io),
            RECEIVE if self.input.is_empty() => Ok(Handled::Later),
            RECEIVE => self.receive(io),
            _ => Err(VirtioError::NoQueue { queue }),
        }
    }
    fn push_input(&mut self, bytes: &[u8]) {
        let room = INPUT_LIMIT.saturating_sub(self.input.len());
        let taken = bytes.len().min(room);
        self.input.extend(&bytes[..taken]);
        self.dropped_input += (bytes.len() - taken) as u64;
    }
    fn dropped_input(&self) -> u64 {
        self.dropped_input
    }
    fn flush(&mut self) {
        self.output.flush();
    }
    fn ready_queues(&self) -> Vec<usize> {
        if self.input.is_empty() {
            Vec::new()
        } else {
            alloc::vec![RECEIVE]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Driver;
    use super::super::VirtioMmio;
    use super::*;
    use crate::GuestRam;
    use alloc::boxed::Box;
    use std::sync::{Arc, Mutex};

    #[test]
    fn transmit_goes_to_the_sink_and_input_fills_receive_buffers() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let console =
            Console::new(Box::new(move |l: &[u8]| sink.lock().unwrap().push(String::from_utf8_lossy(l).into())));
        let mut dev = VirtioMmio::new(Box::new(console));
        let mut drv = Driver::bring_up(&mut dev, 2);
        assert_eq!(dev.read(0x8, 4), 3);

        drv.ram.write(0x8000, b"hvc says hi\r\n").unwrap();
        drv.post_on(&mut dev, 1, &[(0x8000, 13, false)]);
        assert_eq!(*lines.lock().unwrap(), vec!["hvc says hi"]);
        assert_eq!(drv.used(1).0, 1);

        // A receive buffer waits until there is input.
        drv.post_on(&mut dev, 0, &[(0x9000, 64, true)]);
        assert_eq!(drv.used(0).0, 0);
        dev.device_mut().push_input(b"ls\n");
        dev.poll(&mut drv.ram);
        assert_eq!(drv.used(0).0, 1);
        assert_eq!(drv.used(0).2, 3);
        let mut got = [0u8; 3];
        drv.ram.read(0x9000, &mut got).unwrap();
        assert_eq!(&got, b"ls\n");
        assert!(dev.irq_line());
    }

    fn console() -> (VirtioMmio, Driver, Arc<Mutex<Vec<u8>>>) {
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        let console = Console::new(Box::new(move |l: &[u8]| sink.lock().unwrap().extend_from_slice(l)));
        let mut dev = VirtioMmio::new(Box::new(console));
        let drv = Driver::bring_up(&mut dev, 2);
        (dev, drv, output)
    }

    #[test]
    fn a_long_transmit_chain_is_passed_on_a_piece_per_call() {
        let (mut dev, mut drv, output) = console();
        let text: Vec<u8> = (0..3 * TRANSMIT_PER_CALL + 100).map(|i| b'a' + (i % 26) as u8).collect();
        drv.ram.write(0x8000, &text).unwrap();
        // The same text twice, split unevenly.
        let buffers = [(0x8000, 1000, false), (0x8000 + 1000, text.len() as u32 - 1000, false), (0x8000, 2000, false)];
        drv.post_on(&mut dev, 1, &buffers);
        assert_eq!(output.lock().unwrap().len() as u64, TRANSMIT_PER_CALL, "TRANSMIT_PER_CALL per call");
        assert!(dev.has_backlog());
        assert_eq!(drv.used(1).0, 0, "not done yet");
        let mut calls = 1;
        while dev.has_backlog() {
            dev.poll(&mut drv.ram);
            calls += 1;
        }
        assert_eq!(calls, (text.len() as u64 + 2000).div_ceil(TRANSMIT_PER_CALL));
        assert_eq!(drv.used(1).0, 1);
        dev.device_mut().flush();
        let mut expected = text.clone();
        expected.extend_from_slice(&text[..2000]);
        let output = output.lock().unwrap();
        assert!(*output == expected, "{} bytes passed on, {} sent", output.len(), expected.len());
    }

    #[test]
    fn a_reset_forgets_a_half_sent_chain() {
        let (mut dev, mut drv, output) = console();
        drv.ram.write(0x8000, &[b'x'; 3 * TRANSMIT_PER_CALL as usize]).unwrap();
        drv.post_on(&mut dev, 1, &[(0x8000, 3 * TRANSMIT_PER_CALL as u32, false)]);
        assert!(dev.has_backlog());
        dev.write(0x70, 0, &mut drv.ram);
        assert!(!dev.has_backlog());
        let mut drv = Driver::bring_up(&mut dev, 2);
        drv.ram.write(0x8000, b"new\n").unwrap();
        drv.post_on(&mut dev, 1, &[(0x8000, 4, false)]);
        assert_eq!(drv.used(1).0, 1);
        assert!(output.lock().unwrap().ends_with(b"new"), "sent from its start");
    }

    #[test]
    fn host_input_beyond_the_limit_is_dropped_and_counted() {
        let (mut dev, mut drv, _) = console();
        dev.device_mut().push_input(&[b'1'; INPUT_LIMIT - 2]);
        dev.device_mut().push_input(b"2345");
        assert_eq!(dev.device_mut().dropped_input(), 2);
        // The input wraps inside its queue: both halves arrive, in order.
        drv.post_on(&mut dev, 0, &[(0x9000, 100, true)]);
        dev.device_mut().push_input(b"67");
        drv.post_on(&mut dev, 0, &[(0xa000, INPUT_LIMIT as u32, true)]);
        let mut got = vec![0u8; INPUT_LIMIT - 100 + 2];
        drv.ram.read(0xa000, &mut got).unwrap();
        assert!(got.ends_with(b"2367"), "{:?}", &got[got.len() - 4..]);
        assert_eq!(drv.used(0).2 as usize, got.len());
        assert_eq!(dev.device_mut().dropped_input(), 2);
    }

    #[test]
    fn a_chain_for_a_queue_the_console_lacks_is_refused() {
        let mut console = Console::new(Box::new(|_: &[u8]| {}));
        let chain = crate::virtio::queue::Chain::default();
        let mut ram = crate::virtio::tests::Ram(Vec::new());
        let result = console.handle(2, &mut ChainIo::new(&chain, &mut ram));
        assert_eq!(result.err(), Some(VirtioError::NoQueue { queue: 2 }));
    }
}
