//! virtio over MMIO (virtio 1.x, the modern register layout, version 2): the
//! transport every Basalt virtio device sits behind, and the devices (block,
//! console). A device only sees whole request chains; the transport owns
//! feature negotiation, queues and the interrupt status. A malformed queue
//! marks the device broken for that VM (DEVICE_NEEDS_RESET): it stops
//! answering until the driver resets it.
//!
//! The work of one call (a notify, or a `poll`) is bounded, since it runs with
//! the VM locked and host interrupts off, and a driver can post chains as fast
//! as the device completes them: at most CHAINS_PER_CALL chains and about
//! BYTES_PER_CALL bytes moved per queue. What is left (`has_backlog`) is done
//! by later `poll`s, which the chipset asks the VMM to make at once.

pub mod blk;
pub mod console;
mod error;
pub mod queue;

pub use error::{Broken, VirtioError};

use crate::GuestRam;
use alloc::boxed::Box;
use alloc::vec::Vec;
use queue::{Chain, ChainIo, Queue};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x544c_5342; // "BSLT"
pub const F_VERSION_1: u64 = 1 << 32;

/// The virtio-mmio (version 2) register offsets: one table for the device,
/// the hostile-input tests and the fuzz targets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SELECT: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SELECT: u64 = 0x024;
    pub const QUEUE_SELECT: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    /// Ring addresses: the low half, then the high half 4 bytes on.
    pub const QUEUE_DESC: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
    /// In STATUS: the device hit an error and waits for a reset.
    pub const NEEDS_RESET: u32 = 0x40;
}

const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = reg::NEEDS_RESET;
const INTERRUPT_USED_BUFFER: u32 = 1;
const INTERRUPT_CONFIG_CHANGE: u32 = 2;
/// Bytes a device may move for one queue in one call (`ChainIo::budget`).
pub const BYTES_PER_CALL: u64 = 1 << 20;
/// Chains served from one queue in one call, however small.
pub const CHAINS_PER_CALL: usize = queue::MAX_SIZE as usize;

/// What a device did with a request chain.
pub enum Handled {
    /// Done: the chain goes to the used ring with this many bytes written.
    Used(u32),
    /// Not now (a receive buffer with nothing to receive): it stays queued.
    Later,
    /// Served up to `progress` (the device's own measure), and the call's
    /// budget is spent: the chain stays at the head of its queue, and a later
    /// call hands `progress` back (`ChainIo::progress`) to go on from there.
    Unfinished { progress: u64 },
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    fn name(&self) -> &'static str;
    fn device_id(&self) -> u32;
    /// Device-specific feature bits (the transport adds VERSION_1).
    fn features(&self) -> u64;
    fn queues(&self) -> usize;
    /// The device-specific configuration space.
    fn config(&self) -> Vec<u8>;
    /// Serves one request chain from queue `queue`. An error means the driver
    /// broke the protocol; the device is then marked broken.
    fn handle(&mut self, queue: usize, io: &mut ChainIo) -> Result<Handled, VirtioError>;
    /// Queues with work the device can do without a notification (input
    /// arrived for a receive queue).
    fn ready_queues(&self) -> Vec<usize> {
        Vec::new()
    }
    /// Host input for devices that take it (consoles); others ignore it.
    fn push_input(&mut self, _bytes: &[u8]) {}
    /// Host input bytes dropped because the guest did not take them in time.
    fn dropped_input(&self) -> u64 {
        0
    }
    /// Passes on buffered output (when the VM stops).
    fn flush(&mut self) {}
}

/// How a call to serve a queue ended.
enum Served {
    /// Nothing more the device can do until the driver or the host adds some.
    All,
    /// The call's budget ran out; there may be more.
    OutOfBudget,
}

pub struct VirtioMmio {
    device: Box<dyn VirtioDevice>,
    status: u32,
    device_features_select: u32,
    driver_features: u64,
    driver_features_select: u32,
    queue_select: u32,
    queues: Vec<Queue>,
    interrupt_status: u32,
    /// Why the device stopped serving, once it is broken.
    pub broken: Option<Broken>,
    /// Whether the VMM has been told (the chipset reports each breakage once).
    pub broken_reported: bool,
}

impl VirtioMmio {
    pub fn new(device: Box<dyn VirtioDevice>) -> VirtioMmio {
        let queues = alloc::vec![Queue::default(); device.queues()];
        VirtioMmio {
            device,
            status: 0,
            device_features_select: 0,
            driver_features: 0,
            driver_features_select: 0,
            queue_select: 0,
            queues,
            interrupt_status: 0,
            broken: None,
            broken_reported: false,
        }
    }

    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    fn offered(&self) -> u64 {
        self.device.features() | F_VERSION_1
    }

    /// The interrupt line: any interrupt status bit set.
    pub fn irq_line(&self) -> bool {
        self.interrupt_status != 0
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    pub fn read(&mut self, offset: u64, size: u8) -> u32 {
        if let Some(at) = offset.checked_sub(reg::CONFIG) {
            let config = self.device.config();
            let mut bytes = [0u8; 4];
            for (i, b) in (0u64..).zip(bytes.iter_mut().take(size as usize)) {
                let byte = at.checked_add(i).and_then(|at| usize::try_from(at).ok()).and_then(|at| config.get(at));
                *b = byte.copied().unwrap_or(0);
            }
            return u32::from_le_bytes(bytes);
        }
        let queue = self.queues.get(self.queue_select as usize).copied();
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |_| queue::MAX_SIZE as u32),
            reg::QUEUE_NUM => queue.map_or(0, |q| q.size as u32),
            reg::QUEUE_READY => queue.map_or(0, |q| q.ready as u32),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::QUEUE_DESC => queue.map_or(0, |q| q.desc as u32),
            reg::QUEUE_DESC_HIGH => queue.map_or(0, |q| (q.desc >> 32) as u32),
            reg::QUEUE_AVAIL => queue.map_or(0, |q| q.avail as u32),
            reg::QUEUE_AVAIL_HIGH => queue.map_or(0, |q| (q.avail >> 32) as u32),
            reg::QUEUE_USED => queue.map_or(0, |q| q.used as u32),
            reg::QUEUE_USED_HIGH => queue.map_or(0, |q| (q.used >> 32) as u32),
            reg::CONFIG_GENERATION => 0, // the config never changes
            _ => 0,
        }
    }

    pub fn write(&mut self, offset: u64, value: u32, ram: &mut dyn GuestRam) {
        let set_low = |v: &mut u64| *v = (*v & !0xffff_ffff) | value as u64;
        let set_high = |v: &mut u64| *v = (*v & 0xffff_ffff) | (value as u64) << 32;
        match offset {
            reg::DEVICE_FEATURES_SELECT => self.device_features_select = value,
            reg::DRIVER_FEATURES => match self.driver_features_select {
                0 => set_low(&mut self.driver_features),
                1 => set_high(&mut self.driver_features),
                _ => {}
            },
            reg::DRIVER_FEATURES_SELECT => self.driver_features_select = value,
            reg::QUEUE_SELECT => self.queue_select = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.queue() {
                    // Sizes must be powers of two up to the maximum; others are ignored.
                    if value.is_power_of_two() && value <= queue::MAX_SIZE as u32 {
                        q.size = value as u16;
                    }
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queue() {
                    q.ready = value & 1 != 0;
                }
            }
            reg::QUEUE_NOTIFY => self.notify(value as usize, ram),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.write_status(value),
            reg::QUEUE_DESC => self.queue().into_iter().for_each(|q| set_low(&mut q.desc)),
            reg::QUEUE_DESC_HIGH => self.queue().into_iter().for_each(|q| set_high(&mut q.desc)),
            reg::QUEUE_AVAIL => self.queue().into_iter().for_each(|q| set_low(&mut q.avail)),
            reg::QUEUE_AVAIL_HIGH => self.queue().into_iter().for_each(|q| set_high(&mut q.avail)),
            reg::QUEUE_USED => self.queue().into_iter().for_each(|q| set_low(&mut q.used)),
            reg::QUEUE_USED_HIGH => self.queue().into_iter().for_each(|q| set_high(&mut q.used)),
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            // Reset: back to the state at power-on, broken or not.
            self.status = 0;
            self.driver_features = 0;
            self.interrupt_status = 0;
            self.queues.iter_mut().for_each(Queue::reset);
            self.broken = None;
            self.broken_reported = false;
            return;
        }
        let mut value = value | (self.status & STATUS_DEVICE_NEEDS_RESET);
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // Only features offered, and the modern interface, are acceptable.
            let acceptable = self.driver_features & !self.offered() == 0 && self.driver_features & F_VERSION_1 != 0;
            if !acceptable {
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
    }

    fn notify(&mut self, queue: usize, ram: &mut dyn GuestRam) {
        if queue < self.queues.len() {
            self.serve(queue, ram);
        }
    }

    /// Serves what `ready_queues` says the device can do now (input arrived),
    /// and goes on with work an earlier call left (`has_backlog`).
    pub fn poll(&mut self, ram: &mut dyn GuestRam) {
        let ready = self.device.ready_queues();
        for queue in 0..self.queues.len() {
            if self.queues[queue].backlog || ready.contains(&queue) {
                self.serve(queue, ram);
            }
        }
    }

    /// Whether `poll` would do anything now: a backlog, or input a queue
    /// could take.
    pub fn has_work(&self) -> bool {
        self.broken.is_none() && (self.queues.iter().any(|q| q.backlog) || !self.device.ready_queues().is_empty())
    }

    /// Whether an earlier call left work for `poll` to go on with.
    pub fn has_backlog(&self) -> bool {
        self.broken.is_none() && self.queues.iter().any(|q| q.backlog)
    }

    fn serve(&mut self, index: usize, ram: &mut dyn GuestRam) {
        if self.broken.is_some() {
            return;
        }
        let served = self.serve_chains(index, ram);
        self.queues[index].backlog = matches!(served, Ok(Served::OutOfBudget));
        if let Err(error) = served {
            self.broken = Some(Broken { queue: index, error });
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            self.interrupt_status |= INTERRUPT_CONFIG_CHANGE;
        }
    }

    fn serve_chains(&mut self, index: usize, ram: &mut dyn GuestRam) -> Result<Served, VirtioError> {
        let mut moved = 0u64;
        for _ in 0..CHAINS_PER_CALL {
            if moved >= BYTES_PER_CALL {
                break;
            }
            let Some(chain): Option<Chain> = self.queues[index].peek(ram)? else { return Ok(Served::All) };
            let progress = self.queues[index].progress(chain.head);
            let mut io = ChainIo::resuming(&chain, ram, progress, BYTES_PER_CALL - moved);
            let handled = self.device.handle(index, &mut io)?;
            moved = moved.saturating_add(io.moved());
            match handled {
                Handled::Later => return Ok(Served::All),
                Handled::Used(written) => {
                    self.queues[index].complete(ram, chain.head, written)?;
                    self.interrupt_status |= INTERRUPT_USED_BUFFER;
                }
                Handled::Unfinished { progress } => {
                    self.queues[index].pause(chain.head, progress);
                    break;
                }
            }
        }
        Ok(Served::OutOfBudget)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::NotRam;

    /// Guest RAM for tests: a flat vector from guest-physical 0.
    pub struct Ram(pub Vec<u8>);

    fn span(at: u64, len: usize) -> Result<core::ops::Range<usize>, NotRam> {
        let start = usize::try_from(at).map_err(|_| NotRam)?;
        Ok(start..start.checked_add(len).ok_or(NotRam)?)
    }

    impl GuestRam for Ram {
        fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), NotRam> {
            let src = self.0.get(span(at, buf.len())?).ok_or(NotRam)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write(&mut self, at: u64, data: &[u8]) -> Result<(), NotRam> {
            self.0.get_mut(span(at, data.len())?).ok_or(NotRam)?.copy_from_slice(data);
            Ok(())
        }
    }

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;

    /// A driver's view of one queue, enough to post chains and read completions.
    pub struct Driver {
        pub ram: Ram,
        next_desc: [u16; 4],
        avail_idx: [u16; 4],
    }

    impl Driver {
        /// Negotiates features and sets up queue 0..queues as a driver would.
        pub fn bring_up(dev: &mut VirtioMmio, queues: u32) -> Driver {
            let mut ram = Ram(vec![0; 1 << 20]);
            assert_eq!(dev.read(0, 4), MAGIC);
            assert_eq!(dev.read(4, 4), 2);
            dev.write(0x70, 1 | 2, &mut ram);
            dev.write(0x14, 1, &mut ram);
            assert_eq!(dev.read(0x10, 4), 1, "VERSION_1 offered");
            dev.write(0x24, 1, &mut ram);
            dev.write(0x20, 1, &mut ram);
            dev.write(0x70, 1 | 2 | 8, &mut ram);
            assert_eq!(dev.read(0x70, 4) & 8, 8, "FEATURES_OK accepted");
            for q in 0..queues {
                let base = q as u64 * 0x10000;
                dev.write(0x30, q, &mut ram);
                assert_eq!(dev.read(0x34, 4), 256);
                dev.write(0x38, 16, &mut ram);
                dev.write(0x80, (DESC + base) as u32, &mut ram);
                dev.write(0x90, (AVAIL + base) as u32, &mut ram);
                dev.write(0xa0, (USED + base) as u32, &mut ram);
                dev.write(0x44, 1, &mut ram);
            }
            dev.write(0x70, 1 | 2 | 8 | 4, &mut ram);
            Driver { ram, next_desc: [0; 4], avail_idx: [0; 4] }
        }

        /// Posts a chain of (address, length, writable) on queue 0 and notifies.
        pub fn post(&mut self, dev: &mut VirtioMmio, buffers: &[(u64, u32, bool)]) -> u16 {
            self.post_on(dev, 0, buffers)
        }

        pub fn post_on(&mut self, dev: &mut VirtioMmio, queue: u64, buffers: &[(u64, u32, bool)]) -> u16 {
            let base = queue * 0x10000;
            let q = queue as usize;
            let head = self.next_desc[q];
            for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
                let index = self.next_desc[q];
                self.next_desc[q] = (index + 1) % 16;
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                let flags = if writable { DESC_WRITE_FLAG } else { 0 } | if i + 1 < buffers.len() { 1 } else { 0 };
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&self.next_desc[q].to_le_bytes());
                self.ram.write(DESC + base + 16 * index as u64, &d).unwrap();
            }
            let slot = AVAIL + base + 4 + 2 * (self.avail_idx[q] % 16) as u64;
            self.ram.write(slot, &head.to_le_bytes()).unwrap();
            self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
            self.ram.write(AVAIL + base + 2, &self.avail_idx[q].to_le_bytes()).unwrap();
            dev.write(0x50, queue as u32, &mut self.ram);
            head
        }

        /// (used index, last used element's id and length) on `queue`.
        pub fn used(&self, queue: u64) -> (u16, u32, u32) {
            let base = queue * 0x10000;
            let r = |at: u64, n: usize| {
                let mut b = [0u8; 4];
                self.ram.read(USED + base + at, &mut b[..n]).unwrap();
                u32::from_le_bytes(b)
            };
            let idx = r(2, 2) as u16;
            let slot = 4 + 8 * (idx.wrapping_sub(1) % 16) as u64;
            (idx, r(slot, 4), r(slot + 4, 4))
        }
    }

    const DESC_WRITE_FLAG: u16 = 2;

    /// A device that echoes its readable bytes into its writable buffer.
    struct Echo;
    impl VirtioDevice for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn device_id(&self) -> u32 {
            0x7f
        }
        fn features(&self) -> u64 {
            0
        }
        fn queues(&self) -> usize {
            1
        }
        fn config(&self) -> Vec<u8> {
            vec![0xaa, 0xbb, 0xcc, 0xdd]
        }
        fn handle(&mut self, _queue: usize, io: &mut ChainIo) -> Result<Handled, VirtioError> {
            let mut data = vec![0u8; io.readable_len() as usize];
            io.read(0, &mut data)?;
            io.write(0, &data)?;
            Ok(Handled::Used(io.written()))
        }
    }

    #[test]
    fn a_request_is_served_across_split_buffers_and_interrupts() {
        let mut dev = VirtioMmio::new(Box::new(Echo));
        let mut drv = Driver::bring_up(&mut dev, 1);
        drv.ram.write(0x8000, b"hello").unwrap();
        drv.ram.write(0x8100, b" world").unwrap();
        let head = drv.post(&mut dev, &[(0x8000, 5, false), (0x8100, 6, false), (0x9000, 4, true), (0x9100, 16, true)]);
        assert_eq!(drv.used(0), (1, head as u32, 11));
        let mut out = [0u8; 11];
        drv.ram.read(0x9000, &mut out[..4]).unwrap();
        drv.ram.read(0x9100, &mut out[4..]).unwrap();
        assert_eq!(&out, b"hello world");
        assert!(dev.irq_line());
        dev.write(0x64, 1, &mut drv.ram);
        assert!(!dev.irq_line());
        assert_eq!(dev.read(0x100, 4), 0xddccbbaa);
        assert_eq!(dev.read(0x102, 1), 0xcc);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut dev = VirtioMmio::new(Box::new(Echo));
        let mut ram = Ram(vec![0; 4096]);
        dev.write(0x70, 3, &mut ram);
        dev.write(0x70, 3 | 8, &mut ram);
        assert_eq!(dev.read(0x70, 4) & 8, 0);
        assert_eq!(dev.read(0x8, 4), 0x7f);
        assert_eq!(dev.read(0xc, 4), VENDOR);
    }

    #[test]
    fn malformed_chains_break_the_device_not_the_host() {
        for (bad, error) in [
            // A buffer past the end of guest RAM.
            (vec![(0xfff_fff0, 64, false)], VirtioError::BufferOutsideRam { addr: 0xfff_fff0, len: 64 }),
            // Readable after writable.
            (vec![(0x8000, 4, true), (0x8100, 4, false)], VirtioError::ReadableAfterWritable),
        ] {
            let mut dev = VirtioMmio::new(Box::new(Echo));
            let mut drv = Driver::bring_up(&mut dev, 1);
            drv.post(&mut dev, &bad);
            assert_eq!(dev.broken, Some(Broken { queue: 0, error }), "{bad:?}");
            assert_eq!(dev.read(0x70, 4) & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
            assert_eq!(dev.read(0x60, 4) & INTERRUPT_CONFIG_CHANGE, INTERRUPT_CONFIG_CHANGE);
            assert_eq!(drv.used(0).0, 0, "nothing completed");
            // A reset makes it usable again.
            dev.write(0x70, 0, &mut drv.ram);
            assert!(dev.broken.is_none());
        }
    }

    #[test]
    fn rings_at_the_top_of_the_address_space_break_the_device_not_the_host() {
        // Descriptor table, available ring, used ring: (its address
        // registers, low half) so that its last entries wrap. The head is
        // descriptor 1, whose place in the table wraps too, an empty buffer
        // the echo device completes.
        for (low_register, low) in [(0x80, 0xffff_fff0), (0x90, 0xffff_fffe), (0xa0, 0xffff_fffc)] {
            let mut dev = VirtioMmio::new(Box::new(Echo));
            let mut drv = Driver::bring_up(&mut dev, 1);
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&0x8000u64.to_le_bytes());
            drv.ram.write(DESC + 16, &d).unwrap();
            drv.ram.write(AVAIL + 4, &1u16.to_le_bytes()).unwrap();
            drv.ram.write(AVAIL + 2, &1u16.to_le_bytes()).unwrap();
            dev.write(low_register, low, &mut drv.ram);
            dev.write(low_register + 4, u32::MAX, &mut drv.ram);
            dev.write(0x50, 0, &mut drv.ram);
            let base = u64::from(u32::MAX) << 32 | u64::from(low);
            assert_eq!(dev.broken, Some(Broken { queue: 0, error: VirtioError::RingPastAddressSpace { base } }));
        }
    }

    #[test]
    fn a_buffer_wrapping_the_address_space_is_refused() {
        let mut dev = VirtioMmio::new(Box::new(Echo));
        let mut drv = Driver::bring_up(&mut dev, 1);
        drv.post(&mut dev, &[(u64::MAX - 2, 8, false)]);
        assert_eq!(dev.broken, Some(Broken { queue: 0, error: VirtioError::BufferWraps }));
    }

    #[test]
    fn config_reads_at_any_offset_are_zero_past_the_config() {
        let mut dev = VirtioMmio::new(Box::new(Echo));
        assert_eq!(dev.read(0x103, 4), 0xdd);
        assert_eq!(dev.read(u64::MAX, 4), 0);
        assert_eq!(dev.read(u64::MAX - 1, 8), 0);
    }

    #[test]
    fn a_driver_reposting_as_fast_as_chains_complete_gets_bounded_calls() {
        let mut dev = VirtioMmio::new(Box::new(Echo));
        let mut drv = Driver::bring_up(&mut dev, 1);
        // Sixteen chains of 256 KiB each: more than one call may move.
        let chain = [(0x1_0000u64, 0x4_0000u32, false), (0x1_0000, 0x4_0000, true)];
        let mut d = [0u8; 16];
        for (index, &(addr, len, writable)) in chain.iter().enumerate() {
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            let flags: u16 = if writable { DESC_WRITE_FLAG } else { 1 };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(index as u16 + 1).to_le_bytes());
            drv.ram.write(DESC + 16 * index as u64, &d).unwrap();
        }
        drv.ram.write(AVAIL + 2, &16u16.to_le_bytes()).unwrap();
        dev.write(0x50, 0, &mut drv.ram);
        let used_after = |drv: &Driver| drv.used(0).0;
        // Each chain moves 512 KiB (read, then written back): two per call.
        assert_eq!(used_after(&drv), 2);
        assert!(dev.has_backlog());
        dev.poll(&mut drv.ram);
        assert_eq!(used_after(&drv), 4);
    }

    #[test]
    fn looping_chain_and_runaway_index_are_caught() {
        let mut dev = VirtioMmio::new(Box::new(Echo));
        let mut drv = Driver::bring_up(&mut dev, 1);
        // Descriptor 0 chains to itself.
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&0x8000u64.to_le_bytes());
        d[8..12].copy_from_slice(&4u32.to_le_bytes());
        d[12..14].copy_from_slice(&1u16.to_le_bytes());
        drv.ram.write(DESC, &d).unwrap();
        drv.ram.write(AVAIL + 2, &1u16.to_le_bytes()).unwrap();
        dev.write(0x50, 0, &mut drv.ram);
        assert_eq!(dev.broken, Some(Broken { queue: 0, error: VirtioError::ChainLoops { head: 0 } }));

        let mut dev = VirtioMmio::new(Box::new(Echo));
        let mut drv = Driver::bring_up(&mut dev, 1);
        drv.ram.write(AVAIL + 2, &100u16.to_le_bytes()).unwrap();
        dev.write(0x50, 0, &mut drv.ram);
        let error = VirtioError::AvailableAhead { available: 100, outstanding: 100, size: 16 };
        assert_eq!(dev.broken, Some(Broken { queue: 0, error }));
    }
}
