//! The port-I/O bus: devices claim port ranges; an access goes to the one device
//! whose range holds the port. Unclaimed reads float high, as on a real ISA bus,
//! and unclaimed writes are dropped but counted.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;

/// A device reachable through I/O ports. `offset` is relative to the start of the
/// range the device was registered at; `size` is 1, 2 or 4 bytes.
pub trait PortDevice: Send {
    fn name(&self) -> &'static str;
    fn read(&mut self, offset: u16, size: u8) -> u32;
    fn write(&mut self, offset: u16, size: u8, value: u32);
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    EmptyRange,
    /// The range overlaps one already claimed by the named device.
    Overlap {
        existing: &'static str,
        existing_range: Range<u32>,
    },
}

struct Slot {
    range: Range<u32>,
    device: Box<dyn PortDevice>,
}

/// All port devices of one VM, kept sorted by range start.
#[derive(Default)]
pub struct PortBus {
    slots: Vec<Slot>,
    /// Writes no device claimed.
    pub unclaimed_writes: u64,
    /// Reads no device claimed.
    pub unclaimed_reads: u64,
}

impl PortBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `device` the ports `base .. base + len`.
    pub fn register(&mut self, base: u16, len: u16, device: Box<dyn PortDevice>) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange);
        }
        let range = base as u32..base as u32 + len as u32;
        let at = self.slots.partition_point(|s| s.range.start < range.start);
        // Sorted and disjoint, so only the neighbours can overlap.
        for neighbour in [at.checked_sub(1), Some(at)].into_iter().flatten() {
            if let Some(s) = self.slots.get(neighbour) {
                if s.range.start < range.end && range.start < s.range.end {
                    return Err(BusError::Overlap { existing: s.device.name(), existing_range: s.range.clone() });
                }
            }
        }
        self.slots.insert(at, Slot { range, device });
        Ok(())
    }

    fn find(&mut self, port: u16) -> Option<&mut Slot> {
        let port = port as u32;
        let at = self.slots.partition_point(|s| s.range.start <= port);
        let slot = self.slots.get_mut(at.checked_sub(1)?)?;
        (port < slot.range.end).then_some(slot)
    }

    /// A guest `in` of `size` bytes; all-ones when nothing claims the port.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match self.find(port) {
            Some(slot) => {
                let offset = (port as u32 - slot.range.start) as u16;
                slot.device.read(offset, size)
            }
            None => {
                self.unclaimed_reads += 1;
                match size {
                    1 => 0xff,
                    2 => 0xffff,
                    _ => 0xffff_ffff,
                }
            }
        }
    }

    /// A guest `out`; dropped (and counted) when nothing claims the port.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        match self.find(port) {
            Some(slot) => {
                let offset = (port as u32 - slot.range.start) as u16;
                slot.device.write(offset, size, value)
            }
            None => self.unclaimed_writes += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// (read or write, offset, size, value) of each access.
    type AccessLog = Arc<Mutex<Vec<(char, u16, u8, u32)>>>;

    /// Records accesses; reads return offset * 0x11.
    struct Probe {
        name: &'static str,
        log: AccessLog,
    }

    impl PortDevice for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn read(&mut self, offset: u16, size: u8) -> u32 {
            self.log.lock().unwrap().push(('r', offset, size, 0));
            offset as u32 * 0x11
        }
        fn write(&mut self, offset: u16, size: u8, value: u32) {
            self.log.lock().unwrap().push(('w', offset, size, value));
        }
    }

    fn probe(name: &'static str) -> (Box<Probe>, AccessLog) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (Box::new(Probe { name, log: log.clone() }), log)
    }

    #[test]
    fn accesses_reach_the_device_with_offsets_relative_to_its_base() {
        let mut bus = PortBus::new();
        let (uart, log) = probe("uart");
        bus.register(0x3f8, 8, uart).unwrap();
        bus.write(0x3f8, 1, b'A' as u32);
        assert_eq!(bus.read(0x3fd, 1), 5 * 0x11);
        assert_eq!(*log.lock().unwrap(), vec![('w', 0, 1, 0x41), ('r', 5, 1, 0)]);
    }

    #[test]
    fn unclaimed_ports_float_high_and_writes_are_counted() {
        let mut bus = PortBus::new();
        let (dev, _) = probe("dev");
        bus.register(0x60, 1, dev).unwrap();
        assert_eq!(bus.read(0x61, 1), 0xff);
        assert_eq!(bus.read(0x5f, 2), 0xffff);
        assert_eq!(bus.read(0xcfc, 4), 0xffff_ffff);
        bus.write(0x80, 1, 0);
        assert_eq!((bus.unclaimed_reads, bus.unclaimed_writes), (3, 1));
    }

    #[test]
    fn overlapping_ranges_are_refused_naming_the_owner() {
        let mut bus = PortBus::new();
        bus.register(0x40, 4, probe("pit").0).unwrap();
        bus.register(0x20, 2, probe("pic").0).unwrap();
        assert_eq!(
            bus.register(0x43, 2, probe("x").0),
            Err(BusError::Overlap { existing: "pit", existing_range: 0x40..0x44 })
        );
        assert_eq!(
            bus.register(0x1f, 2, probe("y").0),
            Err(BusError::Overlap { existing: "pic", existing_range: 0x20..0x22 })
        );
        assert_eq!(bus.register(0x44, 0, probe("z").0), Err(BusError::EmptyRange));
        // Adjacent is fine, including the top of the port space.
        bus.register(0x44, 1, probe("a").0).unwrap();
        bus.register(0xffff, 1, probe("top").0).unwrap();
        assert_eq!(bus.read(0xffff, 1), 0);
    }
}
