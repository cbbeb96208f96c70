//! virtio-console with one port (no multiport): what the guest writes to its
//! transmit queue goes to a line sink (the host log, prefixed with the VM's
//! name); bytes pushed by the host fill the guest's receive buffers.

use super::queue::ChainIo;
use super::{Handled, VirtioDevice};
use crate::uart::{LineBuffer, LineSink};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

const RECEIVE: usize = 0;
const TRANSMIT: usize = 1;

pub struct Console {
    input: VecDeque<u8>,
    output: LineBuffer,
}

impl Console {
    pub fn new(sink: LineSink) -> Console {
        Console { input: VecDeque::new(), output: LineBuffer::new(sink) }
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
    fn handle(&mut self, queue: usize, io: &mut ChainIo) -> Result<Handled, String> {
        match queue {
            TRANSMIT => {
                let mut bytes = alloc::vec![0u8; io.readable_len() as usize];
                io.read(0, &mut bytes)?;
                bytes.iter().for_each(|&b| self.output.push(b));
                Ok(Handled::Used(0))
            }
            RECEIVE if self.input.is_empty() => Ok(Handled::Later),
            RECEIVE => {
                let n = (io.writable_len() as usize).min(self.input.len());
                let bytes: Vec<u8> = self.input.drain(..n).collect();
                io.write(0, &bytes)?;
                Ok(Handled::Used(n as u32))
            }
            _ => Err(alloc::format!("no queue {queue}")),
        }
    }
    fn push_input(&mut self, bytes: &[u8]) {
        self.input.extend(bytes);
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
}
