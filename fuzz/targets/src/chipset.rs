//! A VM's whole chipset driven as a guest and its VMM drive it.

use crate::ram::Ram;
use crate::{feature, heap, kind_of};
use basalt_fuzz::Reader;
use devices::bus::all_ones;
use devices::lapic::VirtualApicPage;
use devices::virtio::blk::Block;
use devices::virtio::console::Console;
use devices::{layout, BenchMarker, Chipset, ChipsetConfig, DebugExit, GuestRam, Request};

const MAX_OPS: usize = 512;
/// Host memory the chipset may take above what it held once set up.
const HEAP_LIMIT: usize = 512 * 1024;
/// 9999-12-31T23:59:59Z: the host clock is somewhere before.
const LAST_UNIX_TIME: u64 = 253_402_300_799;

/// Ports with a device behind them, and a few around them.
const PORTS: [u16; 34] = [
    0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc,
    0x3fd, 0x3fe, 0x3ff, 0x600, 0x602, 0x604, 0x608, 0x60b, 0x60c, 0xcf9, 0xf4, 0xf5, 0xf7, 0xf8, 0xf9, 0x80,
];

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
        Request::Reset => port == layout::RESET_CONTROL && value & 4 != 0,
    };
    assert!(ok, "{request:?} from a write of {value:#x} to port {port:#x}");
}

/// Input: the VM's shape (vCPUs, clock rate, time), its RAM, then guest port
/// and MMIO accesses, time passing, and the calls the VMM's run loop makes.
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
    c.ports.register(layout::DEBUG_EXIT, 4, Box::new(DebugExit)).unwrap();
    c.ports.register(layout::BENCH_MARKER, 1, Box::new(BenchMarker)).unwrap();
    c.add_virtio(Box::new(Console::new(Box::new(|_: &[u8]| {})))).unwrap();
    c.add_virtio(Box::new(Block::new(Box::new(vec![0u8; 16 * 1024]), "fuzz"))).unwrap();
    let mut ram = Ram::from_input(&mut r);
    let mut page: Box<VirtualApicPage> = Box::new([0; 1024]);
    let tables = c.acpi_tables();
    assert!(tables.len() as u64 <= layout::ACPI_TABLES_SIZE, "ACPI tables of {} bytes", tables.len());
    drop(tables);

    let start = heap::mark();
    let mut signal = 0;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8() % 16;
        feature(&mut signal, op as u64);
        let vcpu = r.index(vcpus);
        match op {
            0 | 1 => {
                let _ = c.port_read(port(&mut r), r.pick(&[1, 2, 4]), now);
            }
            2 | 3 => {
                let (port, size, value) = (port(&mut r), r.pick(&[1, 2, 4]), value(&mut r, &ram) as u32);
                let request = c.port_write(port, size, value, now);
                feature(&mut signal, request.map_or(0, |q| kind_of(&format!("{q:?}"))));
                check_request(port, value, request);
            }
            4 => {
                let (address, size) = (address(&mut r), r.pick(&[1, 2, 4, 8]));
                let read = c.mmio_read(vcpu, address, size, now);
                assert!(read <= all_ones(size), "{read:#x} from a {size}-byte read of {address:#x}");
            }
            5 => {
                let (address, size, value) = (address(&mut r), r.pick(&[1, 2, 4, 8]), value(&mut r, &ram));
                let request = c.mmio_write(vcpu, address, size, value, now, &mut ram);
                assert_eq!(request, None, "a request from MMIO at {address:#x}");
            }
            6 => {
                let step = match r.u8() % 4 {
                    0 => r.below(1 << 16),
                    1 => r.below(1 << 32),
                    2 => r.u64() >> r.below(64),
                    _ => r.edge(),
                };
                now = now.saturating_add(step);
                c.poll(now, &mut ram);
            }
            7 => {
                let _ = c.next_deadline(vcpu);
                if c.has_interrupt(vcpu) {
                    let vector = c.take_interrupt(vcpu);
                    feature(&mut signal, 0x200 | vector.map_or(0, |v| 1 + (v >> 4) as u64));
                }
                let _ = (c.nmi_pending(vcpu), c.take_nmi(vcpu), c.take_signal(vcpu), c.take_wakeup(vcpu));
            }
            8 => {
                c.set_tsc_deadline(vcpu, value(&mut r, &ram));
                let _ = (c.tsc_deadline(vcpu), c.lapic_tpr_threshold(vcpu), c.next_deadline(vcpu));
            }
            9 => {
                let n = r.index(64);
                c.com1_input(r.bytes(n));
            }
            10 => {
                for (slot, device, _) in c.take_broken() {
                    feature(&mut signal, 0x300 | slot as u64 | (device.len() as u64) << 4);
                }
                c.flush_output();
            }
            11 => {
                if r.bool() {
                    let _ = c.mirror_lapic(vcpu, &mut page, r.bool());
                } else {
                    for _ in 0..r.index(8) {
                        page[r.index(1024)] = r.u32();
                    }
                    c.absorb_lapic(vcpu, &page);
                }
            }
            12 => c.reset_lapic(vcpu),
            13 => {
                // A virtio driver's write: a real register, a sensible value.
                let slot = layout::virtio_slot(r.index(2)).0;
                let register = r.pick(&[0x14, 0x20, 0x24, 0x30, 0x38, 0x44, 0x50, 0x64, 0x70, 0x80, 0x90, 0xa0, 0xa4]);
                let value = match r.u8() % 3 {
                    0 => r.below(3),
                    1 => 1 << r.below(9),
                    _ => ram.address(&mut r),
                };
                let _ = c.mmio_write(vcpu, slot + register, 4, value, now, &mut ram);
            }
            14 => {
                let at = ram.address(&mut r);
                let n = r.index(32);
                let _ = ram.write(at, r.bytes(n));
            }
            _ => {
                let _ = c.acpi_tables();
            }
        }
        let held = heap::peak_since(start);
        assert!(held < HEAP_LIMIT, "the chipset held {held} bytes");
    }
    signal
}
