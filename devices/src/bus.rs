//! Port-I/O and MMIO buses: devices claim address ranges; an access goes to the
//! one device whose range holds the address. Unclaimed reads float high, as on a
//! real bus, and unclaimed writes are dropped but counted.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;

/// What a device asks of its VM as the result of an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Stop the VM with this exit status.
    Stop { status: u32 },
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a platform reset.
    Reset,
    /// The guest reached a point it wants measured (`BenchMarker`); it runs on.
    Marker { value: u8 },
}

/// A device reachable through I/O ports. `offset` is relative to the start of
/// its range; `size` is 1, 2 or 4 bytes.
pub trait PortDevice: Send {
    fn name(&self) -> &'static str;
    fn read(&mut self, offset: u16, size: u8) -> u32;
    fn write(&mut self, offset: u16, size: u8, value: u32) -> Option<Request>;
}

/// A device reachable through memory-mapped registers; `size` is 1, 2, 4 or 8.
pub trait MmioDevice: Send {
    fn name(&self) -> &'static str;
    fn read(&mut self, offset: u64, size: u8) -> u64;
    fn write(&mut self, offset: u64, size: u8, value: u64) -> Option<Request>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    EmptyRange,
    /// The range overlaps one already claimed by the named device.
    Overlap {
        existing: &'static str,
        existing_range: Range<u64>,
    },
}

/// Sorted, disjoint ranges, each owning a value.
struct RangeMap<V> {
    slots: Vec<(Range<u64>, V)>,
}

impl<V> RangeMap<V> {
    const fn new() -> Self {
        RangeMap { slots: Vec::new() }
    }

    fn insert(&mut self, range: Range<u64>, value: V, name: impl Fn(&V) -> &'static str) -> Result<(), BusError> {
        if range.is_empty() {
            return Err(BusError::EmptyRange);
        }
        let at = self.slots.partition_point(|(r, _)| r.start < range.start);
        // Sorted and disjoint, so only the neighbours can overlap.
        for neighbour in [at.checked_sub(1), Some(at)].into_iter().flatten() {
            if let Some((r, v)) = self.slots.get(neighbour) {
                if r.start < range.end && range.start < r.end {
                    return Err(BusError::Overlap { existing: name(v), existing_range: r.clone() });
                }
            }
        }
        self.slots.insert(at, (range, value));
        Ok(())
    }

    /// The value owning `address` and the offset into its range.
    fn find(&mut self, address: u64) -> Option<(&mut V, u64)> {
        let at = self.slots.partition_point(|(r, _)| r.start <= address);
        let (range, value) = self.slots.get_mut(at.checked_sub(1)?)?;
        (address < range.end).then_some((value, address - range.start))
    }
}

/// The value bits of a `size`-byte access (also what an unclaimed read returns).
pub const fn all_ones(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Accesses nothing claimed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unclaimed {
    pub reads: u64,
    pub writes: u64,
}

/// All port devices of one VM.
pub struct PortBus {
    devices: RangeMap<Box<dyn PortDevice>>,
    pub unclaimed: Unclaimed,
}

impl Default for PortBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PortBus {
    pub const fn new() -> Self {
        PortBus { devices: RangeMap::new(), unclaimed: Unclaimed { reads: 0, writes: 0 } }
    }

    /// Gives `device` the ports `base .. base + len`.
    pub fn register(&mut self, base: u16, len: u16, device: Box<dyn PortDevice>) -> Result<(), BusError> {
        self.devices.insert(base as u64..base as u64 + len as u64, device, |d| d.name())
    }

    /// A guest `in` of `size` bytes; all-ones when nothing claims the port.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match self.devices.find(port as u64) {
            Some((device, offset)) => device.read(offset as u16, size),
            None => {
                self.unclaimed.reads += 1;
                all_ones(size) as u32
            }
        }
    }

    /// A guest `out`; dropped (and counted) when nothing claims the port.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Option<Request> {
        match self.devices.find(port as u64) {
            Some((device, offset)) => device.write(offset as u16, size, value),
            None => {
                self.unclaimed.writes += 1;
                None
            }
        }
    }
}

/// All MMIO devices of one VM.
pub struct MmioBus {
    devices: RangeMap<Box<dyn MmioDevice>>,
    pub unclaimed: Unclaimed,
}

impl Default for MmioBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioBus {
    pub const fn new() -> Self {
        MmioBus { devices: RangeMap::new(), unclaimed: Unclaimed { reads: 0, writes: 0 } }
    }

    pub fn register(&mut self, base: u64, len: u64, device: Box<dyn MmioDevice>) -> Result<(), BusError> {
        let end = base.checked_add(len).ok_or(BusError::EmptyRange)?;
        self.devices.insert(base..end, device, |d| d.name())
    }

    pub fn read(&mut self, address: u64, size: u8) -> u64 {
        match self.devices.find(address) {
            Some((device, offset)) => device.read(offset, size),
            None => {
                self.unclaimed.reads += 1;
                all_ones(size)
            }
        }
    }

    pub fn write(&mut self, address: u64, size: u8, value: u64) -> Option<Request> {
        match self.devices.find(address) {
            Some((device, offset)) => device.write(offset, size, value),
            None => {
                self.unclaimed.writes += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// (read or write, offset, size, value) of each access.
    type AccessLog = Arc<Mutex<Vec<(char, u64, u8, u64)>>>;

    /// Records accesses; reads return offset * 0x11; writing 0xdead asks to stop.
    struct Probe {
        name: &'static str,
        log: AccessLog,
    }

    impl PortDevice for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn read(&mut self, offset: u16, size: u8) -> u32 {
            self.log.lock().unwrap().push(('r', offset as u64, size, 0));
            offset as u32 * 0x11
        }
        fn write(&mut self, offset: u16, size: u8, value: u32) -> Option<Request> {
            self.log.lock().unwrap().push(('w', offset as u64, size, value as u64));
            (value == 0xdead).then_some(Request::Stop { status: 7 })
        }
    }

    impl MmioDevice for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn read(&mut self, offset: u64, size: u8) -> u64 {
            self.log.lock().unwrap().push(('r', offset, size, 0));
            offset * 0x11
        }
        fn write(&mut self, offset: u64, size: u8, value: u64) -> Option<Request> {
            self.log.lock().unwrap().push(('w', offset, size, value));
            None
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
        assert_eq!(bus.write(0x3f8, 1, b'A' as u32), None);
        assert_eq!(bus.read(0x3fd, 1), 5 * 0x11);
        assert_eq!(*log.lock().unwrap(), vec![('w', 0, 1, 0x41), ('r', 5, 1, 0)]);
        assert_eq!(bus.write(0x3f9, 2, 0xdead), Some(Request::Stop { status: 7 }));
    }

    #[test]
    fn unclaimed_ports_float_high_and_writes_are_counted() {
        let mut bus = PortBus::new();
        bus.register(0x60, 1, probe("dev").0).unwrap();
        assert_eq!(bus.read(0x61, 1), 0xff);
        assert_eq!(bus.read(0x5f, 2), 0xffff);
        assert_eq!(bus.read(0xcfc, 4), 0xffff_ffff);
        bus.write(0x80, 1, 0);
        assert_eq!(bus.unclaimed, Unclaimed { reads: 3, writes: 1 });
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

    #[test]
    fn mmio_bus_routes_and_floats_high() {
        let mut bus = MmioBus::new();
        let (dev, log) = probe("virtio");
        bus.register(0xd000_0000, 0x200, dev).unwrap();
        assert_eq!(bus.read(0xd000_0010, 4), 0x110);
        bus.write(0xd000_01ff, 1, 9);
        assert_eq!(bus.read(0xd000_0200, 8), u64::MAX);
        bus.write(0xfee0_0000, 4, 1);
        assert_eq!(bus.unclaimed, Unclaimed { reads: 1, writes: 1 });
        assert_eq!(*log.lock().unwrap(), vec![('r', 0x10, 4, 0), ('w', 0x1ff, 1, 9)]);
        assert_eq!(bus.register(u64::MAX, 2, probe("wrap").0), Err(BusError::EmptyRange));
        assert!(matches!(bus.register(0xd000_0100, 0x10, probe("o").0), Err(BusError::Overlap { .. })));
    }
}
