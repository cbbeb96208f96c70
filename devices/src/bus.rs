//! Port-I/O and MMIO buses: devices claim address ranges; an access goes to the
//! one device whose range holds the address. Unclaimed reads float high, as on a
//! real bus, and unclaimed writes are dropped; both are counted, and the first
//! few addresses they went to are remembered for the VM's report, so that a
//! guest looking for a device Basalt lacks says which.

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

/// How many distinct unclaimed addresses a bus remembers: the first ones,
/// which say what a guest looked for; a guest probing everything cannot make
/// the report (or the host memory behind it) grow.
pub const UNCLAIMED_ADDRESSES: usize = 8;

/// One address nothing claimed, and how the guest accessed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnclaimedAddress {
    pub address: u64,
    /// Bit n: a read of 2^n bytes; bit 4 + n: a write of 2^n bytes (n = 0-3).
    kinds: u8,
    /// Accesses to it, saturating.
    pub count: u64,
}

impl UnclaimedAddress {
    /// The kind bit of an access, None for a size other than 1, 2, 4 or 8.
    fn kind(write: bool, size: u8) -> Option<u8> {
        let n = match size {
            1 => 0,
            2 => 1,
            4 => 2,
            8 => 3,
            _ => return None,
        };
        Some(1 << (n + if write { 4 } else { 0 }))
    }

    /// Whether it saw a read (or write) of `size` bytes.
    pub fn saw(&self, write: bool, size: u8) -> bool {
        Self::kind(write, size).is_some_and(|bit| self.kinds & bit != 0)
    }
}

/// "r1 w4 (3 accesses)": the sizes read and written, then the count.
impl core::fmt::Display for UnclaimedAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (write, letter) in [(false, 'r'), (true, 'w')] {
            for size in [1, 2, 4, 8] {
                if self.saw(write, size) {
                    write!(f, "{letter}{size} ")?;
                }
            }
        }
        let plural = if self.count == 1 { "" } else { "es" };
        write!(f, "({} access{plural})", self.count)
    }
}

/// Accesses nothing claimed: counts, and the first distinct addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unclaimed {
    pub reads: u64,
    pub writes: u64,
    /// The first UNCLAIMED_ADDRESSES addresses, in the order first accessed.
    first: [Option<UnclaimedAddress>; UNCLAIMED_ADDRESSES],
    /// Accesses to addresses beyond those (not remembered), saturating.
    pub elsewhere: u64,
}

impl Unclaimed {
    pub const fn new() -> Self {
        Unclaimed { reads: 0, writes: 0, first: [None; UNCLAIMED_ADDRESSES], elsewhere: 0 }
    }

    /// Counts an access of `size` bytes at `address` and remembers the address
    /// if it is new and there is room.
    fn record(&mut self, address: u64, size: u8, write: bool) {
        let counter = if write { &mut self.writes } else { &mut self.reads };
        *counter = counter.saturating_add(1);
        let kind = UnclaimedAddress::kind(write, size).unwrap_or(0);
        for slot in &mut self.first {
            match slot {
                Some(seen) if seen.address == address => {
                    seen.kinds |= kind;
                    seen.count = seen.count.saturating_add(1);
                    return;
                }
                Some(_) => {}
                None => {
                    *slot = Some(UnclaimedAddress { address, kinds: kind, count: 1 });
                    return;
                }
            }
        }
        self.elsewhere = self.elsewhere.saturating_add(1);
    }

    /// The remembered addresses, in the order first accessed.
    pub fn addresses(&self) -> impl Iterator<Item = &UnclaimedAddress> {
        self.first.iter().flatten()
    }
}

/// The unclaimed addresses of a VM's two buses as one report line's text:
/// "port 0x80 r1 (1 access), MMIO 0xe0000000 r4 w4 (2 accesses)", then how
/// many accesses went to addresses not remembered.
pub struct UnclaimedAddresses<'a> {
    pub ports: &'a Unclaimed,
    pub mmio: &'a Unclaimed,
}

impl UnclaimedAddresses<'_> {
    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        self.ports.addresses().chain(self.mmio.addresses()).next().is_none()
    }
}

impl core::fmt::Display for UnclaimedAddresses<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ports = self.ports.addresses().map(|a| ("port", a));
        let mmio = self.mmio.addresses().map(|a| ("MMIO", a));
        for (i, (bus, access)) in ports.chain(mmio).enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{bus} {:#x} {access}", access.address)?;
        }
        for (bus, unclaimed) in [("port", self.ports), ("MMIO", self.mmio)] {
            if unclaimed.elsewhere > 0 {
                let plural = if unclaimed.elsewhere == 1 { "" } else { "es" };
                write!(f, "; {} more {bus} access{plural} elsewhere", unclaimed.elsewhere)?;
            }
        }
        Ok(())
    }
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
        PortBus { devices: RangeMap::new(), unclaimed: Unclaimed::new() }
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
                self.unclaimed.record(port.into(), size, false);
                all_ones(size) as u32
            }
        }
    }

    /// A guest `out`; dropped (and counted) when nothing claims the port.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Option<Request> {
        match self.devices.find(port as u64) {
            Some((device, offset)) => device.write(offset as u16, size, value),
            None => {
                self.unclaimed.record(port.into(), size, true);
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
        MmioBus { devices: RangeMap::new(), unclaimed: Unclaimed::new() }
    }

    pub fn register(&mut self, base: u64, len: u64, device: Box<dyn MmioDevice>) -> Result<(), BusError> {
        let end = base.checked_add(len).ok_or(BusError::EmptyRange)?;
        self.devices.insert(base..end, device, |d| d.name())
    }

    pub fn read(&mut self, address: u64, size: u8) -> u64 {
        match self.devices.find(address) {
            Some((device, offset)) => device.read(offset, size),
            None => {
                self.unclaimed.record(address, size, false);
                all_ones(size)
            }
        }
    }

    pub fn write(&mut self, address: u64, size: u8, value: u64) -> Option<Request> {
        match self.devices.find(address) {
            Some((device, offset)) => device.write(offset, size, value),
            None => {
                self.unclaimed.record(address, size, true);
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
        assert_eq!((bus.unclaimed.reads, bus.unclaimed.writes), (3, 1));
    }

    #[test]
    fn unclaimed_addresses_are_remembered_with_how_they_were_accessed() {
        let mut bus = PortBus::new();
        bus.register(0x60, 1, probe("dev").0).unwrap();
        bus.read(0x60, 1);
        bus.write(0x80, 1, 0);
        bus.read(0x514, 4);
        bus.write(0x80, 1, 1);
        bus.read(0x80, 2);
        let seen: Vec<_> = bus.unclaimed.addresses().map(|a| (a.address, a.count)).collect();
        assert_eq!(seen, [(0x80, 3), (0x514, 1)], "claimed ports are not listed; order of first access");
        let port80 = bus.unclaimed.addresses().next().unwrap();
        assert!(port80.saw(true, 1) && port80.saw(false, 2));
        assert!(!port80.saw(false, 1) && !port80.saw(true, 2));
        assert_eq!(port80.to_string(), "r2 w1 (3 accesses)");
        assert_eq!((bus.unclaimed.reads, bus.unclaimed.writes, bus.unclaimed.elsewhere), (2, 2, 0));
    }

    #[test]
    fn only_the_first_distinct_addresses_are_kept_the_rest_is_counted() {
        let mut bus = MmioBus::new();
        for i in 0..1000u64 {
            bus.read(0xe000_0000 + (i % 20) * 0x10, 4);
        }
        let kept: Vec<u64> = bus.unclaimed.addresses().map(|a| a.address).collect();
        assert_eq!(kept, (0..UNCLAIMED_ADDRESSES as u64).map(|i| 0xe000_0000 + i * 0x10).collect::<Vec<_>>());
        assert_eq!(bus.unclaimed.addresses().map(|a| a.count).sum::<u64>(), 50 * UNCLAIMED_ADDRESSES as u64);
        assert_eq!(bus.unclaimed.elsewhere, 1000 - 50 * UNCLAIMED_ADDRESSES as u64);
        assert_eq!(bus.unclaimed.reads, 1000);
        // A size no access has still counts, with no kind to show.
        bus.write(0xe000_0000, 16, 0);
        let first = bus.unclaimed.addresses().next().unwrap();
        assert_eq!((first.count, first.to_string().as_str()), (51, "r4 (51 accesses)"));
    }

    #[test]
    fn the_report_text_names_each_bus_and_address() {
        let (mut ports, mut mmio) = (PortBus::new(), MmioBus::new());
        let none = UnclaimedAddresses { ports: &ports.unclaimed, mmio: &mmio.unclaimed };
        assert!(none.is_empty());
        assert_eq!(none.to_string(), "");
        ports.read(0x80, 1);
        mmio.write(0xe000_0000, 4, 0);
        mmio.read(0xe000_0000, 4);
        mmio.read(0xfed0_0000, 8);
        let text = UnclaimedAddresses { ports: &ports.unclaimed, mmio: &mmio.unclaimed };
        assert!(!text.is_empty());
        assert_eq!(
            text.to_string(),
            "port 0x80 r1 (1 access), MMIO 0xe0000000 r4 w4 (2 accesses), MMIO 0xfed00000 r8 (1 access)"
        );
        for port in 0x100..0x100 + UNCLAIMED_ADDRESSES as u16 + 2 {
            ports.write(port, 1, 0);
        }
        let text = UnclaimedAddresses { ports: &ports.unclaimed, mmio: &mmio.unclaimed }.to_string();
        assert!(text.ends_with("MMIO 0xfed00000 r8 (1 access); 3 more port accesses elsewhere"), "{text}");
        assert!(text.contains("port 0x106 w1 (1 access), MMIO"), "{text}");
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
        assert_eq!((bus.unclaimed.reads, bus.unclaimed.writes), (1, 1));
        assert_eq!(*log.lock().unwrap(), vec![('r', 0x10, 4, 0), ('w', 0x1ff, 1, 9)]);
        assert_eq!(bus.register(u64::MAX, 2, probe("wrap").0), Err(BusError::EmptyRange));
        assert!(matches!(bus.register(0xd000_0100, 0x10, probe("o").0), Err(BusError::Overlap { .. })));
    }
}
