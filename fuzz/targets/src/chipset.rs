//! A VM's whole chipset driven as a guest and its VMM drive it, with the port
//! devices the kernel registers beside it (`Vm::new`: debug exit, bench
//! marker, system control port A, the PCI host bridge, fw_cfg). After every
//! step the chipset must agree with `platform`'s statements of those devices,
//! of each local APIC's mode (IA32_APIC_BASE writes and x2APIC MSRs as the
//! exit layer passes them on) and of the logs of unclaimed addresses and
//! refused MSRs.

use crate::platform::{self, RefusedMsrs, UnclaimedLog, FW_CFG_DATA, FW_CFG_KEYS, FW_CFG_SELECTOR, X2APIC_MSRS};
use crate::ram::Ram;
use crate::{feature, heap, kind_of};
use basalt_fuzz::Reader;
use devices::bus::all_ones;
use devices::lapic::{apic_base, reg, Mode, VirtualApicPage};
use devices::virtio::blk::Block;
use devices::virtio::console::Console;
use devices::{
    fw_cfg, layout, pci, BenchMarker, Chipset, ChipsetConfig, DebugExit, FwCfg, GuestRam, PciHost, PortDevice, Request,
    SystemControlA, UnclaimedAddresses,
};

const MAX_OPS: usize = 512;
/// Host memory the chipset may take above what it held once set up.
const HEAP_LIMIT: usize = 512 * 1024;
/// 9999-12-31T23:59:59Z: the host clock is somewhere before.
const LAST_UNIX_TIME: u64 = 253_402_300_799;
/// The virtio devices plugged in, in slots 0 and 1.
const VIRTIO_DEVICES: usize = 2;
/// IA32_APIC_BASE's number, as the exit layer names it when it refuses a write.
const IA32_APIC_BASE: u32 = 0x1b;
/// The unclaimed-address report at its longest: 2 * UNCLAIMED_ADDRESSES
/// entries ("MMIO 0x" and 16 digits, eight sizes, a 20-digit count) and the
/// two "more accesses elsewhere" tails.
const REPORT_LIMIT: usize = 2 * devices::bus::UNCLAIMED_ADDRESSES * 96 + 2 * 64;

/// Ports with a device behind them, and a few around them. New ports go at
/// the end, so that a seed's port choices keep their meaning.
pub const PORTS: [u16; 51] = [
    0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc,
    0x3fd, 0x3fe, 0x3ff, 0x600, 0x602, 0x604, 0x608, 0x60b, 0x60c, 0xcf9, 0xf4, 0xf5, 0xf7, 0xf8, 0xf9, 0x80,
    // System control port A, the PCI host bridge and fw_cfg, and the ports
    // around them that nothing claims (0x514: fw_cfg's DMA address, absent).
    0x92, 0xcf8, 0xcfa, 0xcfb, 0xcfc, 0xcfd, 0xcfe, 0xcff, 0x510, 0x511, 0x91, 0x93, 0xcf7, 0xd00, 0x50f, 0x512, 0x514,
];

/// Ports next to the new devices that no device claims: every access to one
/// is unclaimed.
const NOBODYS_PORTS: [u16; 8] = [0x91, 0x93, 0xcf7, 0xd00, 0x50f, 0x512, 0x513, 0x514];

fn port(r: &mut Reader) -> u16 {
    if r.one_in(4) {
        r.u16()
    } else {
        r.pick(&PORTS)
    }
}

/// An MMIO address: a register of a device window, anywhere in or just past
/// it, or anywhere at all.
fn address(r: &mut Reader) -> u64 {
    let window = |r: &mut Reader, base: u64, size: u64, stride: u64| {
        if r.one_in(4) {
            base + r.below(size + 16)
        } else {
            base + r.below(size / stride) * stride
        }
    };
    match r.u8() % 8 {
        0 | 1 => window(r, layout::LAPIC_BASE, layout::LAPIC_SIZE, 16),
        2 => window(r, layout::IOAPIC_BASE, 0x20, 16),
        3 | 4 => {
            let slot = if r.one_in(8) { r.below(layout::VIRTIO_SLOTS as u64) } else { r.below(2) };
            window(r, layout::virtio_slot(slot as usize).0, layout::VIRTIO_SIZE, 4)
        }
        5 => u64::MAX - r.below(64),
        _ => r.edge(),
    }
}

fn value(r: &mut Reader, ram: &Ram) -> u64 {
    match r.u8() % 4 {
        0 => r.below(16),
        1 => ram.address(r),
        2 => 1 << r.below(64),
        _ => r.edge(),
    }
}

/// A WRMSR to IA32_APIC_BASE: mostly the fixed base with a mode (EN and
/// EXTD, each combination) and the BSP bit either way; then one bit flipped
/// (reserved, relocating, a mode bit), junk in the low bits, or any value.
fn apic_base_value(r: &mut Reader) -> u64 {
    let mode = r.pick(&[0, apic_base::EN, apic_base::EN | apic_base::EXTD, apic_base::EXTD]);
    let bsp = if r.bool() { apic_base::BSP } else { 0 };
    let value = layout::LAPIC_BASE | mode | bsp;
    match r.u8() % 8 {
        0..=4 => value,
        5 => value ^ 1 << r.below(64),
        6 => value ^ r.below(0x1000),
        _ => r.edge(),
    }
}

/// A value for a WRMSR of x2APIC register `msr`: for the ICR, an IPI (any
/// vector, delivery mode and shorthand, to a vCPU, to all, to cluster
/// members, or to anything), now and then with a reserved bit; otherwise a
/// register value or anything.
fn x2apic_value(r: &mut Reader, msr: u32, vcpus: usize) -> u64 {
    if msr != 0x830 {
        return match r.u8() % 4 {
            0 => 0,
            1 => r.u8().into(),
            2 => r.u32().into(),
            _ => r.edge(),
        };
    }
    let low = r.u8() as u64
        | r.below(8) << 8
        | (r.bool() as u64) << 11
        | (r.bool() as u64) << 14
        | (r.bool() as u64) << 15
        | r.below(4) << 18;
    let destination = match r.u8() % 4 {
        0 => r.below(vcpus as u64),
        1 => u32::MAX.into(),
        2 => r.below(2) << 16 | 1 << r.below(16),
        _ => r.u32().into(),
    };
    let reserved = if r.one_in(8) { 1 << r.pick(&[12, 13, 16, 17, 20, 24, 31]) } else { 0 };
    destination << 32 | low | reserved
}

/// A request names what its port does, and only that port makes it.
fn check_request(port: u16, value: u32, request: Option<Request>) {
    let Some(request) = request else { return };
    let ok = match request {
        Request::Stop { status } => {
            (layout::DEBUG_EXIT..layout::DEBUG_EXIT + 4).contains(&port) && status == value << 1 | 1
        }
        Request::Marker { value: marker } => port == layout::BENCH_MARKER && marker == value as u8,
        Request::PowerOff => {
            let control = value as u16;
            port == layout::PM1_CONTROL && control >> 10 & 7 == layout::SLP_TYP_S5 && control & 1 << 13 != 0
        }
        Request::Reset => {
            (port == layout::RESET_CONTROL && value & 4 != 0) || (port == layout::SYSTEM_CONTROL_A && value & 1 != 0)
        }
    };
    assert!(ok, "{request:?} from a write of {value:#x} to port {port:#x}");
}

/// What the checks expect of the VM.
struct Expected {
    fw_cfg: platform::FwCfg,
    pci: platform::PciHost,
    port_92: platform::SystemControlA,
    /// Each vCPU's APIC mode.
    modes: Vec<Mode>,
    ports: UnclaimedLog,
    mmio: UnclaimedLog,
    refused: RefusedMsrs,
}

/// The chipset under test beside what it should hold.
struct Vm {
    c: Chipset,
    x: Expected,
    signal: u64,
}

impl Vm {
    fn feature(&mut self, value: u64) {
        feature(&mut self.signal, value);
    }

    /// Whether `port` belongs to the port devices `Vm::new` registers beside
    /// the chipset's own (but for the debug exit and bench marker, which were
    /// here before them); 0xcf9 inside the bridge's range stays the reset
    /// control register.
    fn new_device_port(port: u16) -> bool {
        matches!(port, layout::SYSTEM_CONTROL_A | FW_CFG_SELECTOR | FW_CFG_DATA | 0xcf8 | 0xcfa..=0xcff)
    }

    /// A guest `in`, checked against the new devices' statements and the
    /// unclaimed-port log.
    fn port_read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        let before = self.c.unclaimed().0;
        let value = self.c.port_read(port, size, now);
        let unclaimed = self.c.unclaimed().0.reads != before.reads;
        if unclaimed {
            self.x.ports.record(port.into(), size, false);
            assert_eq!(value, all_ones(size) as u32, "an unclaimed {size}-byte read of port {port:#x}");
        }
        assert!(!(unclaimed && Self::new_device_port(port)), "port {port:#x} unclaimed");
        assert!(unclaimed || !NOBODYS_PORTS.contains(&port), "port {port:#x} answered a read");
        let expected = match port {
            layout::SYSTEM_CONTROL_A => self.x.port_92.read(size),
            FW_CFG_SELECTOR | FW_CFG_DATA => {
                let key = self.x.fw_cfg.selected_key();
                let (expected, past_end) = self.x.fw_cfg.read(port, size);
                self.feature(0x500 | (key.is_some() as u64) << 1 | (past_end != 0) as u64);
                assert_eq!(value, expected, "a {size}-byte read of fw_cfg port {port:#x}, item {key:?}");
                return value;
            }
            0xcf8 | 0xcfa..=0xcff => {
                // No cycle, a function that is not there, or the bridge.
                let (enabled, bdf) = self.x.pci.target();
                self.feature(0x600 | if enabled { 1 + (bdf == 0) as u64 } else { 0 });
                self.x.pci.read(port, size)
            }
            layout::RESET_CONTROL => 0,
            _ => return value,
        };
        assert_eq!(value, expected, "a {size}-byte read of port {port:#x} (PCI address {:?})", self.x.pci.target());
        value
    }

    /// A guest `out`, checked in the same way; its request must be one the
    /// port makes.
    fn port_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Option<Request> {
        let before = self.c.unclaimed().0;
        let request = self.c.port_write(port, size, value, now);
        let unclaimed = self.c.unclaimed().0.writes != before.writes;
        if unclaimed {
            self.x.ports.record(port.into(), size, true);
            assert_eq!(request, None, "an unclaimed write to port {port:#x}");
        }
        assert!(!(unclaimed && Self::new_device_port(port)), "port {port:#x} unclaimed");
        assert!(unclaimed || !NOBODYS_PORTS.contains(&port), "port {port:#x} took a write");
        check_request(port, value, request);
        let expected = match port {
            layout::SYSTEM_CONTROL_A => self.x.port_92.write(value),
            FW_CFG_SELECTOR | FW_CFG_DATA => {
                self.x.fw_cfg.write(port, size, value);
                None
            }
            0xcf8 | 0xcfa..=0xcff => {
                self.x.pci.write(port, size, value);
                None
            }
            _ => return request,
        };
        assert_eq!(request, expected, "a {size}-byte write of {value:#x} to port {port:#x}");
        request
    }

    /// Whether an MMIO access by `vcpu` at `address` reaches a device: its
    /// local APIC's page only in xAPIC mode, the IOAPIC, a virtio slot with
    /// a device in it. Nothing else is on the MMIO bus.
    fn mmio_claimed(&self, vcpu: usize, address: u64) -> bool {
        let within = |base: u64, size: u64| address.checked_sub(base).is_some_and(|offset| offset < size);
        if within(layout::LAPIC_BASE, layout::LAPIC_SIZE) {
            return self.x.modes[vcpu] == Mode::XApic;
        }
        within(layout::IOAPIC_BASE, layout::IOAPIC_SIZE)
            || (0..VIRTIO_DEVICES).any(|slot| within(layout::virtio_slot(slot).0, layout::VIRTIO_SIZE))
    }

    fn mmio_read(&mut self, vcpu: usize, address: u64, size: u8, now: u64) -> u64 {
        let before = self.c.unclaimed().1;
        let read = self.c.mmio_read(vcpu, address, size, now);
        assert!(read <= all_ones(size), "{read:#x} from a {size}-byte read of {address:#x}");
        let unclaimed = self.c.unclaimed().1.reads != before.reads;
        let mode = self.x.modes[vcpu];
        assert_eq!(
            unclaimed,
            !self.mmio_claimed(vcpu, address),
            "unclaimed: a read of {address:#x} by {mode:?} vCPU {vcpu}"
        );
        if unclaimed {
            self.x.mmio.record(address, size, false);
            assert_eq!(read, all_ones(size), "an unclaimed read of {address:#x}");
        }
        read
    }

    fn mmio_write(&mut self, vcpu: usize, address: u64, size: u8, value: u64, now: u64, ram: &mut Ram) {
        let before = self.c.unclaimed().1;
        let request = self.c.mmio_write(vcpu, address, size, value, now, ram);
        assert_eq!(request, None, "a request from MMIO at {address:#x}");
        let unclaimed = self.c.unclaimed().1.writes != before.writes;
        let mode = self.x.modes[vcpu];
        assert_eq!(
            unclaimed,
            !self.mmio_claimed(vcpu, address),
            "unclaimed: a write to {address:#x} by {mode:?} vCPU {vcpu}"
        );
        if unclaimed {
            self.x.mmio.record(address, size, true);
        }
    }

    /// The exit layer's #GP for an MSR access: the VM's log names `msr` the
    /// first time, for the first few numbers.
    fn refuse(&mut self, msr: u32) {
        let named = self.c.first_refusal_of_msr(msr);
        assert_eq!(named, self.x.refused.first(msr), "whether MSR {msr:#x}'s refusal is logged");
    }

    /// WRMSR to IA32_APIC_BASE: the mode changes only as the SDM allows, and
    /// every other write is #GP.
    fn set_apic_base(&mut self, vcpu: usize, value: u64, x2apic_offered: bool, phys_bits: u32) {
        let old = self.x.modes[vcpu];
        let result = self.c.set_apic_base(vcpu, value, x2apic_offered, phys_bits);
        let expected = platform::apic_base_write(old, value, x2apic_offered, phys_bits);
        let new = result.ok().map(|()| self.c.apic_mode(vcpu));
        assert_eq!(
            new, expected,
            "WRMSR IA32_APIC_BASE {value:#x} on vCPU {vcpu} in {old:?} (x2APIC offered: {x2apic_offered}, MAXPHYADDR {phys_bits}): {result:?}"
        );
        match (result, expected) {
            (Err(why), _) => {
                self.feature(0xc00 | why as u64);
                self.refuse(IA32_APIC_BASE);
            }
            (Ok(()), Some(mode)) => {
                self.feature(if mode == old { 0x700 } else { 0x700 | (old as u64) << 2 | mode as u64 });
                self.x.modes[vcpu] = mode;
                // Turning it off resets it: no priority, no timer.
                if mode == Mode::Disabled && old != Mode::Disabled {
                    assert_eq!((self.c.tpr(vcpu), self.c.tsc_deadline(vcpu)), (0, 0), "vCPU {vcpu} disabled");
                }
            }
            (Ok(()), None) => unreachable!(),
        }
    }

    /// RDMSR of `msr` (the exit layer passes 0x800-0x8ff; other numbers
    /// too, to the chipset directly): only in x2APIC mode, only registers
    /// x2APIC mode has that are readable; the ID is the vCPU's index and the
    /// logical ID follows from it.
    fn x2apic_read(&mut self, vcpu: usize, msr: u32, now: u64) {
        let result = self.c.x2apic_read(vcpu, msr, now);
        let x2apic = self.x.modes[vcpu] == Mode::X2Apic;
        let allowed = platform::x2apic_readable(msr).map(|readable| readable && x2apic);
        let mode = self.x.modes[vcpu];
        assert!(
            allowed.is_none_or(|allowed| allowed == result.is_ok()) && (x2apic || result.is_err()),
            "RDMSR {msr:#x} on {mode:?} vCPU {vcpu}: {result:?}"
        );
        self.feature(0x800 | (x2apic as u64) << 1 | result.is_ok() as u64);
        let Ok(value) = result else { return self.refuse(msr) };
        let expected = match msr {
            0x802 => Some(vcpu as u64),
            0x80d => Some(platform::x2apic_ldr(vcpu as u32).into()),
            0x808 => Some(self.c.tpr(vcpu).into()),
            _ => None,
        };
        assert!(
            expected.is_none_or(|expected| expected == value),
            "RDMSR {msr:#x} on vCPU {vcpu}: {value:#x}, not {expected:#x?}"
        );
        assert!(msr == 0x830 || value >> 32 == 0, "RDMSR {msr:#x} on vCPU {vcpu}: {value:#x}");
    }

    /// WRMSR of `value` to `msr`: as for reads, and each register takes
    /// only what the SDM lets it.
    fn x2apic_write(&mut self, vcpu: usize, msr: u32, value: u64, now: u64) {
        let result = self.c.x2apic_write(vcpu, msr, value, now);
        let x2apic = self.x.modes[vcpu] == Mode::X2Apic;
        let allowed = platform::x2apic_writable(msr, value).map(|writable| writable && x2apic);
        let mode = self.x.modes[vcpu];
        assert!(
            allowed.is_none_or(|allowed| allowed == result.is_ok()) && (x2apic || result.is_err()),
            "WRMSR {msr:#x} <- {value:#x} on {mode:?} vCPU {vcpu}: {result:?}"
        );
        self.feature(0x804 | (x2apic as u64) << 1 | result.is_ok() as u64);
        if result.is_err() {
            return self.refuse(msr);
        }
        if msr == 0x808 {
            assert_eq!(self.c.tpr(vcpu) as u64, value & 0xff, "TPR after WRMSR {value:#x}");
        }
    }

    /// After each step: every APIC in the mode it was put in, with the base
    /// register saying so; a disabled one holding nothing; the logs as
    /// stated.
    fn check(&self) {
        for (vcpu, &mode) in self.x.modes.iter().enumerate() {
            assert_eq!(self.c.apic_mode(vcpu), mode, "vCPU {vcpu}'s APIC mode");
            assert_eq!(self.c.apic_base(vcpu), platform::apic_base_value(vcpu, mode), "vCPU {vcpu}'s IA32_APIC_BASE");
            if mode == Mode::Disabled {
                assert_eq!(self.c.tsc_deadline(vcpu), 0, "a disabled APIC's TSC deadline on vCPU {vcpu}");
                // vCPU 0 takes the 8259's INTR through LINT0 whatever the APIC's mode.
                assert!(vcpu == 0 || !self.c.has_interrupt(vcpu), "an interrupt for disabled vCPU {vcpu}");
            }
        }
        self.x.ports.check(&self.c.unclaimed().0, "ports");
        self.x.mmio.check(&self.c.unclaimed().1, "MMIO");
    }

    /// The report line the VM's log gets when it stops: bounded, naming
    /// every address kept.
    fn check_report(&self) {
        let report = UnclaimedAddresses { ports: &self.c.unclaimed().0, mmio: &self.c.unclaimed().1 };
        let text = report.to_string();
        assert!(text.len() <= REPORT_LIMIT, "an unclaimed-address report of {} bytes: {text}", text.len());
        assert_eq!(report.is_empty(), text.is_empty(), "{text:?}");
        let named = |bus: &str, address: u64| text.contains(&format!("{bus} {address:#x} "));
        assert!(self.x.ports.addresses().all(|a| named("port", a)), "{text}");
        assert!(self.x.mmio.addresses().all(|a| named("MMIO", a)), "{text}");
    }
}

/// Input: the VM's shape (vCPUs, clock rate, time), its RAM, then guest port
/// and MMIO accesses, time passing, the calls the VMM's run loop makes, and
/// the MSR and CR8 accesses the exit layer passes on.
pub fn chipset(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let vcpus = if r.one_in(8) { 1 + r.below(16) } else { 1 + r.below(4) } as usize;
    let tsc_hz = match r.u8() % 4 {
        0 => 1_000_000_000,
        1 => 2_100_000_000,
        2 => 1 + r.below(10_000_000_000),
        _ => r.edge().max(1),
    };
    let unix_time = if r.bool() { 1_795_355_107 } else { r.below(LAST_UNIX_TIME + 1) };
    let mut now = if r.bool() { r.below(1 << 40) } else { r.edge() };
    let mut c = Chipset::new(ChipsetConfig {
        vcpus: vcpus as u32,
        tsc_hz,
        unix_time,
        now,
        com1_output: Box::new(|_: &[u8]| {}),
        com1_unbuffered: r.bool(),
    });
    let mut ram = Ram::from_input(&mut r);
    let ram_bytes = ram.ranges().iter().map(|&(_, len)| len).sum();
    // The port devices as `Vm::new` registers them.
    let cpus = u16::try_from(vcpus).unwrap_or(u16::MAX);
    let ports: [(u16, u16, Box<dyn PortDevice>); 5] = [
        (layout::DEBUG_EXIT, 4, Box::new(DebugExit)),
        (layout::BENCH_MARKER, 1, Box::new(BenchMarker)),
        (layout::SYSTEM_CONTROL_A, 1, Box::new(SystemControlA::new())),
        (layout::PCI_CONFIG_ADDRESS, pci::PORTS, Box::new(PciHost::new())),
        (layout::FW_CFG, fw_cfg::PORTS, Box::new(FwCfg::new(cpus, ram_bytes))),
    ];
    for (base, len, device) in ports {
        c.ports.lock().register(base, len, device).unwrap();
    }
    c.add_virtio(Box::new(Console::new(Box::new(|_: &[u8]| {})))).unwrap();
    c.add_virtio(Box::new(Block::new(Box::new(vec![0u8; 16 * 1024]), "fuzz"))).unwrap();
    let mut page: Box<VirtualApicPage> = Box::new([0; 1024]);
    let tables = c.acpi_tables();
    assert!(tables.len() as u64 <= layout::ACPI_TABLES_SIZE, "ACPI tables of {} bytes", tables.len());
    drop(tables);
    let x = Expected {
        fw_cfg: platform::FwCfg::new(cpus, ram_bytes),
        pci: platform::PciHost::new(),
        port_92: platform::SystemControlA::default(),
        modes: vec![Mode::XApic; vcpus],
        ports: UnclaimedLog::default(),
        mmio: UnclaimedLog::default(),
        refused: RefusedMsrs::default(),
    };
    let mut vm = Vm { c, x, signal: 0 };
    vm.check();

    let start = heap::mark();
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8() % 19;
        vm.feature(op as u64);
        let vcpu = r.index(vcpus);
        match op {
            0 | 1 => {
                vm.port_read(port(&mut r), r.pick(&[1, 2, 4]), now);
            }
            2 | 3 => {
                let (port, size, value) = (port(&mut r), r.pick(&[1, 2, 4]), value(&mut r, &ram) as u32);
                let request = vm.port_write(port, size, value, now);
                vm.feature(request.map_or(0, |q| kind_of(&format!("{q:?}"))));
            }
            4 => {
                let (address, size) = (address(&mut r), r.pick(&[1, 2, 4, 8]));
                vm.mmio_read(vcpu, address, size, now);
            }
            5 => {
                let (address, size, value) = (address(&mut r), r.pick(&[1, 2, 4, 8]), value(&mut r, &ram));
                vm.mmio_write(vcpu, address, size, value, now, &mut ram);
            }
            6 => {
                let step = match r.u8() % 4 {
                    0 => r.below(1 << 16),
                    1 => r.below(1 << 32),
                    2 => r.u64() >> r.below(64),
                    _ => r.edge(),
                };
                now = now.saturating_add(step);
                // Every vCPU comes by before its next entry.
                for each in 0..vm.c.vcpus() {
                    vm.c.poll(each, now, &mut ram);
                }
            }
            7 => {
                let c = &mut vm.c;
                let _ = c.next_deadline(vcpu);
                if c.has_interrupt(vcpu) {
                    let vector = c.take_interrupt(vcpu);
                    vm.feature(0x200 | vector.map_or(0, |v| 1 + (v >> 4) as u64));
                }
                let c = &mut vm.c;
                let _ = (c.nmi_pending(vcpu), c.take_nmi(vcpu), c.take_signal(vcpu), c.take_wakeup(vcpu));
            }
            8 => {
                vm.c.set_tsc_deadline(vcpu, value(&mut r, &ram));
                let c = &vm.c;
                let _ = (c.tsc_deadline(vcpu), c.lapic_tpr_threshold(vcpu), c.next_deadline(vcpu));
            }
            9 => {
                let n = r.index(64);
                vm.c.com1_input(r.bytes(n));
            }
            10 => {
                // The VM stops: broken devices and the unclaimed addresses reported.
                for (slot, device, _) in vm.c.take_broken() {
                    feature(&mut vm.signal, 0x300 | slot as u64 | (device.len() as u64) << 4);
                }
                vm.c.flush_output();
                vm.check_report();
            }
            11 => {
                if r.bool() {
                    if vm.c.mirror_lapic(vcpu, &mut page, r.bool()) && vm.x.modes[vcpu] != Mode::XApic {
                        // No page outside xAPIC mode: unclaimed memory, but for CR8's TPR.
                        let (id, tpr) = (page[reg::ID as usize / 4], page[reg::TPR as usize / 4]);
                        assert_eq!(
                            (id, tpr),
                            (u32::MAX, vm.c.tpr(vcpu).into()),
                            "the page of a {:?} APIC",
                            vm.x.modes[vcpu]
                        );
                    }
                } else {
                    for _ in 0..r.index(8) {
                        page[r.index(1024)] = r.u32();
                    }
                    // Either way hostile: what a CPU with virtual-interrupt
                    // delivery leaves in IRR and ISR is taken in too.
                    vm.c.absorb_lapic(vcpu, &page, r.index(2) == 1);
                }
            }
            12 => vm.c.reset_lapic(vcpu),
            13 => {
                // A virtio driver's write: a real register, a sensible value.
                let slot = layout::virtio_slot(r.index(2)).0;
                let register = r.pick(&[0x14, 0x20, 0x24, 0x30, 0x38, 0x44, 0x50, 0x64, 0x70, 0x80, 0x90, 0xa0, 0xa4]);
                let value = match r.u8() % 3 {
                    0 => r.below(3),
                    1 => 1 << r.below(9),
                    _ => ram.address(&mut r),
                };
                vm.mmio_write(vcpu, slot + register, 4, value, now, &mut ram);
            }
            14 => {
                let at = ram.address(&mut r);
                let n = r.index(32);
                let _ = ram.write(at, r.bytes(n));
            }
            15 => {
                let _ = vm.c.acpi_tables();
            }
            16 => {
                let value = apic_base_value(&mut r);
                let x2apic_offered = !r.one_in(8);
                let phys_bits = match r.u8() % 4 {
                    0 | 1 => 48,
                    2 => r.pick(&[36, 39, 40, 46, 52]),
                    _ => r.u8().into(),
                };
                vm.set_apic_base(vcpu, value, x2apic_offered, phys_bits);
            }
            17 => {
                let msr = match r.u8() % 8 {
                    0..=5 => r.pick(&X2APIC_MSRS),
                    6 => 0x800 + r.below(0x100) as u32,
                    _ => r.u32(),
                };
                match r.u8() % 3 {
                    0 => vm.x2apic_read(vcpu, msr, now),
                    1 => {
                        let value = x2apic_value(&mut r, msr, vcpus);
                        vm.x2apic_write(vcpu, msr, value, now);
                    }
                    _ => {
                        // MOV to CR8: the TPR in every mode.
                        let tpr = (r.u8() & 0xf) << 4;
                        vm.c.set_tpr(vcpu, tpr);
                        assert_eq!(vm.c.tpr(vcpu), tpr, "CR8 on vCPU {vcpu}");
                    }
                }
            }
            _ => driver(&mut r, &mut vm, now),
        }
        vm.check();
        let held = heap::peak_since(start);
        assert!(held < HEAP_LIMIT, "the chipset held {held} bytes");
    }
    vm.signal
}

/// What a guest's drivers and probes do with the new port devices: read an
/// fw_cfg item (and past its end), a PCI configuration access through
/// CONFIG_ADDRESS, port 0x92 written and read back, or a run of ports looked
/// at one after another.
fn driver(r: &mut Reader, vm: &mut Vm, now: u64) {
    match r.u8() % 4 {
        0 => {
            let key = if r.one_in(4) { r.u16() } else { r.pick(&FW_CFG_KEYS) | if r.one_in(8) { 0x4000 } else { 0 } };
            vm.port_write(FW_CFG_SELECTOR, 2, key.into(), now);
            for _ in 0..r.index(16) {
                vm.port_read(FW_CFG_DATA, r.pick(&[1, 1, 2, 4]), now);
            }
        }
        1 => {
            let enable = if r.one_in(8) { 0 } else { 1 << 31 };
            let bus_device_function = if r.one_in(4) { r.below(1 << 16) as u32 } else { 0 };
            let register = (r.below(64) as u32 * 4) | if r.one_in(8) { r.below(4) as u32 } else { 0 };
            vm.port_write(layout::PCI_CONFIG_ADDRESS, 4, enable | bus_device_function << 8 | register, now);
            let (port, size) = (layout::PCI_CONFIG_DATA + r.below(4) as u16, r.pick(&[1, 2, 4]));
            if r.bool() {
                vm.port_read(port, size, now);
            } else {
                vm.port_write(port, size, r.u32(), now);
            }
        }
        2 => {
            let request = vm.port_write(layout::SYSTEM_CONTROL_A, 1, r.u8().into(), now);
            vm.feature(0x400 | request.is_some() as u64);
            vm.port_read(layout::SYSTEM_CONTROL_A, 1, now);
        }
        _ => {
            let base = r.u16();
            for i in 0..r.below(24) as u16 {
                let port = base.wrapping_add(i);
                if r.bool() {
                    vm.port_read(port, 1, now);
                } else {
                    vm.port_write(port, 1, 0, now);
                }
            }
        }
    }
}
