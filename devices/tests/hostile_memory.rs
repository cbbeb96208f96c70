//! Guests are hostile, and the host kernel's heap is 16 MiB for every VM it
//! runs: a device that lets a guest grow host memory lets one VM kill them all.
//! Each scenario here drives a device with millions of accesses a hostile guest
//! could make and measures, with a counting global allocator, the most host
//! memory the device held at once. The bound asserted is far below 1 MiB.
//!
//! Register-level scenarios make 10 M accesses (the randomized chipset ones 4 M
//! and 1 M). Those that post virtio chains make 20 000 to 100 000 notifies
//! instead, each with up to 256 buffers of up to a MiB: every notify may move a
//! MiB of guest data, and the binary must stay quick in a debug build.
//!
//! Scenarios run one at a time (`ONE_AT_A_TIME`) because the allocator counts
//! every thread of this test binary.

use basalt_fuzz::{heap, Rng};
use devices::bus::PortDevice;
use devices::uart::LineSink;
use devices::virtio::blk::Block;
use devices::virtio::console::Console;
use devices::virtio::{reg, VirtioMmio};
use devices::{layout, Chipset, ChipsetConfig, GuestRam, NotRam, PendingEvents, StartupSignal, Uart16550};
use std::sync::Mutex;
use std::time::Instant;

/// The most a device may hold while a hostile guest drives it.
const PEAK_LIMIT: usize = 256 * 1024;

#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Builds a device and what drives it with `setup`, then runs `scenario` on
/// them and asserts that the host memory allocated during the scenario, above
/// what was held when it started, peaked below the limit. Returns the state
/// for checks after the measurement.
fn assert_bounded<S>(name: &str, setup: impl FnOnce() -> S, scenario: impl FnOnce(&mut S)) -> S {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut state = setup();
    let before = heap::mark();
    let started = Instant::now();
    scenario(&mut state);
    let peak = heap::peak_since(before);
    eprintln!("{name}: peak {peak} bytes in {:.2?}", started.elapsed());
    assert!(peak < PEAK_LIMIT, "{name}: peak of {peak} bytes of host memory (limit {PEAK_LIMIT})");
    state
}

/// Guest RAM: a vector from guest-physical 0.
struct Ram(Vec<u8>);

impl Ram {
    fn span(&self, at: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(at).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.0.len()).then_some(start..end)
    }
}

impl GuestRam for Ram {
    fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let span = self.span(at, buf.len()).ok_or(NotRam)?;
        buf.copy_from_slice(&self.0[span]);
        Ok(())
    }
    fn write(&mut self, at: u64, data: &[u8]) -> Result<(), NotRam> {
        let span = self.span(at, data.len()).ok_or(NotRam)?;
        self.0[span].copy_from_slice(data);
        Ok(())
    }
}

fn discard() -> LineSink {
    Box::new(|_: &[u8]| {})
}

mod uart_regs {
    pub const DATA: u16 = 0;
    pub const FIFO_CONTROL: u16 = 2;
    pub const MODEM_CONTROL: u16 = 4;
    pub const LINE_STATUS: u16 = 5;
    pub const MCR_LOOPBACK: u32 = 1 << 4;
}

#[test]
fn uart_loopback_flood() {
    use uart_regs::*;
    let uart = assert_bounded(
        "uart loopback flood",
        || Uart16550::new(discard()),
        |uart| {
            uart.write(MODEM_CONTROL, 1, MCR_LOOPBACK);
            for i in 0..10_000_000u32 {
                uart.write(DATA, 1, i);
            }
        },
    );
    assert_eq!(uart.dropped_input(), 10_000_000 - devices::uart::RX_FIFO as u64);
}

#[test]
fn uart_host_input_flood() {
    use uart_regs::*;
    let mut uart = assert_bounded(
        "uart host input flood",
        || Uart16550::new(discard()),
        |uart| {
            let typed = [b'y'; 16];
            for round in 0..10_000_000 / typed.len() {
                uart.push_input(&typed);
                // Now and then the guest reads a little, or resets its FIFO.
                if round % 1000 == 0 {
                    uart.read(DATA, 1);
                    uart.read(LINE_STATUS, 1);
                }
                if round % 100_000 == 0 {
                    uart.write(FIFO_CONTROL, 1, 0x07);
                }
            }
        },
    );
    assert!(uart.dropped_input() > 9_000_000, "{}", uart.dropped_input());
    assert_eq!(uart.read(LINE_STATUS, 1) & 3, 3, "data ready, overrun");
}

#[test]
fn uart_output_without_newlines() {
    use uart_regs::*;
    assert_bounded(
        "uart output without newlines",
        || Uart16550::new(discard()),
        |uart| {
            for _ in 0..10_000_000 {
                uart.write(DATA, 1, u32::from(b'x'));
            }
        },
    );
}

#[test]
fn uart_random_register_sequences() {
    assert_bounded(
        "uart random registers",
        || (Uart16550::new(discard()), Rng::new(17)),
        |(uart, rng)| {
            for _ in 0..10_000_000 {
                let offset = rng.below(10) as u16;
                let size = 1 << rng.below(3);
                if rng.chance(2) {
                    uart.read(offset, size);
                } else {
                    uart.write(offset, size, rng.next_u64() as u32);
                }
                if rng.chance(64) {
                    uart.push_input(&[b'r'; 40]);
                }
            }
        },
    );
}

#[test]
fn pending_events_flood() {
    assert_bounded(
        "pending events flood",
        || (PendingEvents::default(), Rng::new(7)),
        |(events, rng)| {
            for _ in 0..10_000_000 {
                match rng.below(4) {
                    0 => {
                        let _ = events.take_highest();
                    }
                    1 => events.nmi = !events.nmi,
                    _ => events.raise(rng.next_u64() as u8),
                }
            }
        },
    );
}

mod apic_regs {
    pub const SVR: u64 = 0xf0;
    pub const ICR_LOW: u64 = 0x300;
    pub const ICR_HIGH: u64 = 0x310;
    /// INIT, level assert; SIPI; both to the destination in ICR high.
    pub const ICR_INIT: u64 = 0x4500;
    pub const ICR_STARTUP: u64 = 0x4600;
    /// Shorthand "all excluding self".
    pub const ICR_ALL_OTHERS: u64 = 3 << 18;
}

fn chipset(vcpus: u32) -> Chipset {
    Chipset::new(ChipsetConfig {
        vcpus,
        tsc_hz: 1_000_000_000,
        unix_time: 1_795_355_107,
        now: 0,
        com1_output: discard(),
        com1_unbuffered: false,
    })
}

#[test]
fn chipset_init_and_sipi_flood() {
    use apic_regs::*;
    let lapic = |register: u64| layout::LAPIC_BASE + register;
    let (c, ..) = assert_bounded(
        "chipset INIT/SIPI flood",
        || (chipset(4), Ram(Vec::new()), Rng::new(11)),
        |(c, ram, rng)| {
            for vcpu in 0..4 {
                c.mmio_write(vcpu, lapic(SVR), 4, 0x1ff, 0, ram);
            }
            c.mmio_write(0, lapic(ICR_HIGH), 4, 1 << 24, 0, ram);
            for i in 0..10_000_000u64 {
                let vector = rng.next_u64() & 0xff;
                let command = match i % 4 {
                    0 => ICR_INIT,
                    1 => ICR_STARTUP | vector,
                    2 => ICR_INIT | ICR_ALL_OTHERS,
                    _ => ICR_STARTUP | ICR_ALL_OTHERS | vector,
                };
                c.mmio_write(0, lapic(ICR_LOW), 4, command, i, ram);
            }
        },
    );
    assert!(c.dropped_startup_signals() > 1_000_000, "{}", c.dropped_startup_signals());
    // What a waiting application processor finds: the last INIT, then the
    // start-up IPI that followed it.
    assert_eq!(c.take_signal(1), Some(StartupSignal::Init));
    assert!(matches!(c.take_signal(1), Some(StartupSignal::Startup { .. })));
    assert_eq!(c.take_signal(1), None);
}

const QUEUE_SIZE: u16 = 256;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
/// Guest RAM of the virtio scenarios; rings at the bottom, data above `DATA`.
const RAM_SIZE: usize = 1 << 20;
const DATA: u64 = 0x4_0000;

/// Where queue `q`'s descriptor table, available and used rings are.
fn rings(queue: u32) -> (u64, u64, u64) {
    let base = 0x1_0000 * (queue as u64 + 1);
    (base, base + 0x1000, base + 0x2000)
}

/// A driver that sets queues up properly and then posts what it likes.
struct Driver {
    ram: Ram,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
}

impl Driver {
    fn new() -> Driver {
        Driver { ram: Ram(vec![0; RAM_SIZE]), next_desc: [0; 2], avail_idx: [0; 2] }
    }

    fn bring_up(&mut self, dev: &mut VirtioMmio, queues: u32) {
        use reg::*;
        let ram = &mut self.ram;
        dev.write(STATUS, 0, ram);
        dev.write(STATUS, 1 | 2, ram);
        dev.write(DEVICE_FEATURES_SELECT, 1, ram);
        dev.write(DRIVER_FEATURES_SELECT, 1, ram);
        dev.write(DRIVER_FEATURES, 1, ram); // VERSION_1
        dev.write(STATUS, 1 | 2 | 8, ram);
        for q in 0..queues {
            let (desc, avail, used) = rings(q);
            for at in [avail, used] {
                ram.write(at, &[0; 4]).unwrap();
            }
            dev.write(QUEUE_SELECT, q, ram);
            dev.write(QUEUE_NUM, QUEUE_SIZE as u32, ram);
            dev.write(QUEUE_DESC, desc as u32, ram);
            dev.write(QUEUE_AVAIL, avail as u32, ram);
            dev.write(QUEUE_USED, used as u32, ram);
            dev.write(QUEUE_READY, 1, ram);
        }
        dev.write(STATUS, 1 | 2 | 8 | 4, ram);
        self.next_desc = [0; 2];
        self.avail_idx = [0; 2];
    }

    /// Posts a chain of (address, length, writable) on `queue`, and notifies.
    fn post(&mut self, dev: &mut VirtioMmio, queue: u32, buffers: &[(u64, u32, bool)]) {
        let q = queue as usize;
        let (desc, avail, _) = rings(queue);
        let head = self.next_desc[q];
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = self.next_desc[q];
            self.next_desc[q] = (index + 1) % QUEUE_SIZE;
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            let more = i + 1 < buffers.len();
            let flags = if writable { DESC_WRITE } else { 0 } | if more { DESC_NEXT } else { 0 };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&self.next_desc[q].to_le_bytes());
            self.ram.write(desc + 16 * index as u64, &d).unwrap();
        }
        let slot = avail + 4 + 2 * (self.avail_idx[q] % QUEUE_SIZE) as u64;
        self.ram.write(slot, &head.to_le_bytes()).unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.ram.write(avail + 2, &self.avail_idx[q].to_le_bytes()).unwrap();
        dev.write(reg::QUEUE_NOTIFY, queue, &mut self.ram);
    }

    /// A broken device is reset and set up again, as a driver would.
    fn recover(&mut self, dev: &mut VirtioMmio, queues: u32) -> bool {
        let broken = dev.read(reg::STATUS, 4) & reg::NEEDS_RESET != 0;
        if broken {
            self.bring_up(dev, queues);
        }
        dev.write(reg::INTERRUPT_ACK, 3, &mut self.ram);
        broken
    }
}

/// A hostile chain: up to `max_buffers` buffers, all over guest RAM, lengths
/// from 0 to "much more than the RAM".
fn hostile_chain(rng: &mut Rng, max_buffers: u64, writable_from: Option<usize>) -> Vec<(u64, u32, bool)> {
    let count = 1 + rng.below(max_buffers) as usize;
    (0..count)
        .map(|i| {
            let len = match rng.below(16) {
                0 => 0,
                1 => u32::MAX - rng.below(4096) as u32,
                2 => (RAM_SIZE as u64 - DATA) as u32,
                3..=9 => 512 * rng.below(128) as u32,
                _ => rng.below(64 * 1024) as u32,
            };
            let addr = DATA + rng.below((RAM_SIZE as u64 - DATA).saturating_sub(len as u64).max(1));
            let writable = writable_from.is_some_and(|from| i >= from);
            (addr, len, writable)
        })
        .collect()
}

#[test]
fn virtio_console_transmit_flood() {
    assert_bounded(
        "virtio-console transmit flood",
        || (VirtioMmio::new(Box::new(Console::new(discard()))), Driver::new(), Rng::new(3)),
        |(dev, drv, rng)| {
            drv.bring_up(dev, 2);
            for _ in 0..20_000 {
                // The longest chain a queue holds, every buffer the same 64 KiB.
                let chain = if rng.chance(4) {
                    vec![(DATA, 64 * 1024, false); QUEUE_SIZE as usize]
                } else {
                    hostile_chain(rng, QUEUE_SIZE as u64, None)
                };
                drv.post(dev, 1, &chain);
                dev.poll(&mut drv.ram);
                drv.recover(dev, 2);
            }
        },
    );
}

#[test]
fn virtio_console_receive_flood() {
    let (mut dev, ..) = assert_bounded(
        "virtio-console receive flood",
        || (VirtioMmio::new(Box::new(Console::new(discard()))), Driver::new(), Rng::new(5)),
        |(dev, drv, rng)| {
            drv.bring_up(dev, 2);
            let typed = [b'z'; 64];
            for round in 0..10_000_000 {
                dev.device_mut().push_input(&typed[..round % typed.len()]);
                // Now and then the guest offers a receive buffer.
                if round % 5000 == 0 {
                    let chain = hostile_chain(rng, 4, Some(0));
                    drv.post(dev, 0, &chain);
                    dev.poll(&mut drv.ram);
                    drv.recover(dev, 2);
                }
            }
        },
    );
    assert!(dev.device_mut().dropped_input() > 0);
}

mod blk_request {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

#[test]
fn virtio_blk_hostile_requests() {
    let disk = || Box::new(vec![0u8; 128 * 1024]);
    assert_bounded(
        "virtio-blk hostile requests",
        || (VirtioMmio::new(Box::new(Block::new(disk(), "hostile"))), Driver::new(), Rng::new(9)),
        |(dev, drv, rng)| {
            drv.bring_up(dev, 1);
            let header = DATA - 0x100;
            for _ in 0..100_000 {
                let kind = match rng.below(6) {
                    0 => blk_request::IN,
                    1 => blk_request::OUT,
                    2 => blk_request::FLUSH,
                    3 => blk_request::GET_ID,
                    _ => rng.next_u64() as u32,
                };
                let sector = match rng.below(6) {
                    0 => u64::MAX - rng.below(8),
                    1 => u64::MAX / 512 - rng.below(8),
                    2 => rng.next_u64(),
                    _ => rng.below(300),
                };
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&kind.to_le_bytes());
                h[8..].copy_from_slice(&sector.to_le_bytes());
                drv.ram.write(header, &h).unwrap();
                let mut chain = vec![(header, 16, false)];
                chain.extend(hostile_chain(rng, 64, (kind == blk_request::IN).then_some(0)));
                chain.push((header + 0x80, 1, true));
                drv.post(dev, 0, &chain);
                dev.poll(&mut drv.ram);
                drv.recover(dev, 1);
            }
        },
    );
}

#[test]
fn virtio_register_pokes() {
    assert_bounded(
        "virtio register pokes",
        || (VirtioMmio::new(Box::new(Console::new(discard()))), Ram(vec![0; 64 * 1024]), Rng::new(13)),
        |(dev, ram, rng)| {
            for _ in 0..10_000_000 {
                let offset = match rng.below(4) {
                    0 => rng.below(0x200),
                    1 => rng.next_u64(),
                    _ => rng.below(0x2a) * 4,
                };
                let value = match rng.below(4) {
                    0 => u32::MAX - rng.below(64) as u32,
                    1 => rng.below(4) as u32,
                    _ => rng.next_u64() as u32,
                };
                if rng.chance(2) {
                    dev.read(offset, 1 << rng.below(3));
                } else {
                    dev.write(offset, value, ram);
                }
                if rng.chance(16) {
                    dev.poll(ram);
                }
            }
        },
    );
}

/// Guest RAM of the chipset scenario: small, so that random ring addresses
/// often land in it and virtio devices find (garbage) work.
const CHIPSET_RAM: usize = 64 * 1024;

/// An MMIO address a guest might touch: a register of a device window (each
/// `stride` bytes), anywhere in it or just past it, or anywhere at all.
fn mmio_address(rng: &mut Rng) -> u64 {
    let in_window = |rng: &mut Rng, base: u64, size: u64, stride: u64| match rng.below(4) {
        0 => base + rng.below(size + 16),
        _ => base + rng.below(size / stride) * stride,
    };
    match rng.below(8) {
        0 | 1 => in_window(rng, layout::LAPIC_BASE, layout::LAPIC_SIZE, 16),
        2 => in_window(rng, layout::IOAPIC_BASE, 0x20, 16),
        3 | 4 => {
            // Mostly the two slots in use, sometimes an empty one.
            let slot = if rng.chance(8) { rng.below(layout::VIRTIO_SLOTS as u64) } else { rng.below(2) };
            in_window(rng, layout::virtio_slot(slot as usize).0, 0x100, 4)
        }
        5 => u64::MAX - rng.below(64),
        _ => rng.next_u64(),
    }
}

/// A value a guest might write: small numbers and addresses that land in
/// guest RAM (for the virtio queue registers), the extremes, or anything.
fn register_value(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 | 1 => rng.below(CHIPSET_RAM as u64),
        2 => rng.below(16),
        3 => u64::MAX - rng.below(16),
        4 => 1 << rng.below(10),
        5 => 1 << rng.below(64),
        _ => rng.next_u64(),
    }
}

/// A write a virtio driver could make: a real register and a value that makes
/// sense for some register (a queue index or size, a flag, an address in RAM).
fn virtio_driver_write(c: &mut Chipset, rng: &mut Rng, now: u64, ram: &mut Ram) {
    use reg::*;
    const REGISTERS: [u64; 14] = [
        DEVICE_FEATURES_SELECT,
        DRIVER_FEATURES,
        DRIVER_FEATURES_SELECT,
        QUEUE_SELECT,
        QUEUE_NUM,
        QUEUE_READY,
        QUEUE_NOTIFY,
        QUEUE_NOTIFY,
        INTERRUPT_ACK,
        STATUS,
        QUEUE_DESC,
        QUEUE_AVAIL,
        QUEUE_USED,
        QUEUE_USED_HIGH,
    ];
    let register = REGISTERS[rng.below(REGISTERS.len() as u64) as usize];
    let value = match rng.below(4) {
        0 => rng.below(3),
        1 => 1 << rng.below(9),
        _ => rng.below(CHIPSET_RAM as u64),
    };
    let slot = layout::virtio_slot(rng.below(2) as usize).0;
    c.mmio_write(0, slot + register, 4, value, now, ram);
}

/// The chipset driven by random port and MMIO accesses, the VMM's own calls in
/// between as its run loop makes them, and time that runs in random steps.
fn chipset_random_sequences(seed: u64, operations: u64, start: u64) {
    use devices::{BenchMarker, DebugExit};
    let setup = || {
        let mut c = chipset(2);
        c.ports.lock().register(layout::DEBUG_EXIT, 4, Box::new(DebugExit)).unwrap();
        c.ports.lock().register(layout::BENCH_MARKER, 1, Box::new(BenchMarker)).unwrap();
        c.add_virtio(Box::new(Console::new(discard()))).unwrap();
        c.add_virtio(Box::new(Block::new(Box::new(vec![0u8; 16 * 1024]), "random"))).unwrap();
        let mut ram = Ram(vec![0; CHIPSET_RAM]);
        let mut rng = Rng::new(seed);
        for byte in ram.0.iter_mut() {
            *byte = rng.next_u64() as u8;
        }
        (c, ram, rng, start)
    };
    assert_bounded(&format!("chipset random sequences from {start:#x}"), setup, |(c, ram, rng, now)| {
        for _ in 0..operations {
            let size = 1 << rng.below(3);
            match rng.below(16) {
                0..=3 => {
                    let _ = c.port_read(rng.next_u64() as u16, size, *now);
                }
                4..=7 => {
                    let _ = c.port_write(rng.next_u64() as u16, size, register_value(rng) as u32, *now);
                }
                8..=9 => {
                    let _ = c.mmio_read(rng.below(2) as usize, mmio_address(rng), size << rng.below(2), *now);
                }
                10..=12 => {
                    let (vcpu, address, value) = (rng.below(2) as usize, mmio_address(rng), register_value(rng));
                    let _ = c.mmio_write(vcpu, address, size << rng.below(2), value, *now, ram);
                }
                13 => {
                    virtio_driver_write(c, rng, *now, ram);
                    // The guest scribbles over its own memory (rings included).
                    let at = rng.below(CHIPSET_RAM as u64 - 8);
                    ram.write(at, &register_value(rng).to_le_bytes()).unwrap();
                }
                14 => {
                    *now = match rng.below(8) {
                        0 => now.saturating_add(rng.next_u64() >> rng.below(64)),
                        _ => now.saturating_add(rng.below(1 << 24)),
                    };
                    c.poll(0, *now, ram);
                }
                _ => {
                    // What the VMM's run loop asks between entries.
                    let vcpu = rng.below(2) as usize;
                    let _ = c.next_deadline(vcpu);
                    if c.has_interrupt(vcpu) {
                        let _ = c.take_interrupt(vcpu);
                    }
                    let _ = (c.take_nmi(vcpu), c.take_signal(vcpu), c.take_wakeup(vcpu));
                    if rng.chance(4) {
                        c.set_tsc_deadline(vcpu, register_value(rng));
                        let _ = c.tsc_deadline(vcpu);
                    }
                    if rng.chance(8) {
                        c.com1_input(b"typed\n");
                    }
                    if rng.chance(64) {
                        let _ = c.take_broken();
                        c.flush_output();
                    }
                }
            }
        }
    });
}

#[test]
fn chipset_random_register_sequences() {
    chipset_random_sequences(1, 4_000_000, 0);
}

#[test]
fn chipset_random_register_sequences_near_the_end_of_time() {
    chipset_random_sequences(2, 1_000_000, u64::MAX - (1 << 40));
}
