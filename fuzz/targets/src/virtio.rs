//! Targets for virtio: the split virtqueue on its own, and the console and
//! block devices behind the MMIO transport as a guest driver reaches them.

use crate::ram::Ram;
use crate::{feature, heap, kind_of};
use basalt_fuzz::Reader;
use devices::virtio::blk::{Block, BlockStore};
use devices::virtio::console::{Console, TRANSMIT_PER_CALL};
use devices::virtio::queue::{Chain, ChainIo, Queue, MAX_SIZE};
use devices::virtio::{VirtioMmio, BYTES_PER_CALL};
use devices::GuestRam;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Operations one input may make: enough to build rings and use them, few
/// enough that every run stays short.
const MAX_OPS: usize = 256;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
/// Largest chain a queue accepts (queue.rs MAX_CHAIN_BYTES).
const MAX_CHAIN_BYTES: u64 = 16 << 20;
/// Host memory a device may hold above what it held before the guest began.
const HEAP_LIMIT: usize = 512 * 1024;

const QUEUE_SIZES: [u16; 10] = [0, 1, 2, 4, 8, 16, 32, 64, 128, MAX_SIZE];

/// A buffer length: empty, small, page-sized, the size of RAM, or near u32::MAX.
fn length(r: &mut Reader, ram: &Ram) -> u32 {
    match r.u8() % 7 {
        0 => 0,
        1 => r.below(64) as u32,
        2 => r.below(0x1001) as u32,
        3 => ram.ranges()[0].1 as u32 - r.below(16) as u32,
        4 => u32::MAX - r.below(16) as u32,
        5 => 16 + r.below(2) as u32,
        _ => r.u32(),
    }
}

fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

fn write_at(ram: &mut Ram, base: u64, offset: u64, bytes: &[u8]) {
    if let Some(at) = base.checked_add(offset) {
        let _ = ram.write(at, bytes);
    }
}

fn read_u16(ram: &Ram, at: Option<u64>) -> u16 {
    let mut b = [0u8; 2];
    at.map(|at| ram.read(at, &mut b));
    u16::from_le_bytes(b)
}

/// The byte at `pos` of the stream that `buffers` make, read from RAM.
fn stream_byte(buffers: &[(u64, u32)], ram: &dyn GuestRam, mut pos: u64) -> u8 {
    for &(addr, len) in buffers {
        if pos < len as u64 {
            let mut b = [0u8];
            ram.read(addr + pos, &mut b).expect("a checked buffer is RAM");
            return b[0];
        }
        pos -= len as u64;
    }
    panic!("position past the stream");
}

fn total(buffers: &[(u64, u32)]) -> u64 {
    buffers.iter().map(|&(_, len)| len as u64).sum()
}

/// What `peek` promises of a chain it returns.
fn check_chain(chain: &Chain, size: u16, ram: &Ram) {
    assert!(chain.head < size, "head {} of a {size}-entry queue", chain.head);
    assert!(chain.readable.len() + chain.writable.len() <= size as usize, "more buffers than descriptors");
    for &(addr, len) in chain.readable.iter().chain(&chain.writable) {
        assert!(len == 0 || ram.holds(addr, len as u64), "buffer {addr:#x}+{len:#x} is not all RAM");
    }
    assert!(total(&chain.readable) + total(&chain.writable) <= MAX_CHAIN_BYTES);
}

/// An offset into a stream of `len` bytes: at its start, near its end, past it.
fn stream_offset(r: &mut Reader, len: u64) -> u64 {
    match r.u8() % 4 {
        0 => r.below(16),
        1 => len.saturating_sub(r.below(64)),
        2 => r.below(len.saturating_add(1)),
        _ => r.edge(),
    }
}

/// Reads and writes through a chain's streams; each must succeed exactly
/// when it lies inside the stream, and move the bytes the stream holds.
fn chain_io(r: &mut Reader, io: &mut ChainIo, signal: &mut u64) {
    let mut buf = [0u8; 4096];
    let mut moved = 0u64;
    for _ in 0..1 + r.index(4) {
        let n = r.index(buf.len() + 1);
        let fits = |offset: u64, len: u64| offset.checked_add(n as u64).is_some_and(|end| end <= len);
        if r.bool() {
            let len = io.readable_len();
            let offset = stream_offset(r, len);
            let result = io.read(offset, &mut buf[..n]);
            feature(signal, 0x10 | result.is_ok() as u64);
            if n > 0 {
                assert_eq!(result.is_ok(), fits(offset, len), "read of {n} at {offset} from {len}: {result:?}");
            }
            if result.is_ok() {
                moved += n as u64;
                for i in [0, n / 2, n.saturating_sub(1)].into_iter().filter(|&i| i < n) {
                    assert_eq!(buf[i], stream_byte(&io.chain.readable, io.ram, offset + i as u64), "byte {i}");
                }
            }
        } else {
            let len = io.writable_len();
            let offset = stream_offset(r, len);
            let fill = r.u8();
            buf[..n].iter_mut().enumerate().for_each(|(i, b)| *b = fill.wrapping_add(i as u8));
            let before = io.written();
            let result = io.write(offset, &buf[..n]);
            feature(signal, 0x20 | result.is_ok() as u64);
            // Writing nothing moves nothing and claims nothing, wherever.
            if n > 0 {
                assert_eq!(result.is_ok(), fits(offset, len), "write of {n} at {offset} to {len}: {result:?}");
            }
            if result.is_ok() {
                moved += n as u64;
                let end = if n == 0 { 0 } else { u32::try_from(offset + n as u64).unwrap_or(u32::MAX) };
                assert_eq!(io.written(), before.max(end), "written after {n} bytes at {offset}");
                // Buffers may overlap; the last byte written is the one that stays.
                if n > 0 {
                    let last = stream_byte(&io.chain.writable, io.ram, offset + n as u64 - 1);
                    assert_eq!(last, buf[n - 1], "the last byte written");
                }
            }
        }
        assert!(io.written() as u64 <= io.writable_len());
        assert_eq!(io.moved(), moved);
    }
}

/// Input: RAM placement, a queue's size and ring addresses, then operations
/// that write descriptors and ring entries, take chains and complete them.
pub fn queue(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let mut ram = Ram::from_input(&mut r);
    let mut q = Queue::default();
    (q.size, q.ready) = (r.pick(&QUEUE_SIZES), true);
    (q.desc, q.avail, q.used) = (ram.address(&mut r), ram.address(&mut r), ram.address(&mut r));
    // The used index the queue keeps to itself, kept here too.
    let mut used = 0u16;
    let mut signal = 0;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8() % 8;
        feature(&mut signal, op as u64);
        let size = q.size;
        match op {
            0 => {
                let index = r.below(size as u64 + 1);
                let (addr, len) = (ram.address(&mut r), length(&mut r, &ram));
                let flags = match r.u8() % 5 {
                    0 => DESC_NEXT,
                    1 => DESC_NEXT | DESC_WRITE,
                    2 => DESC_WRITE,
                    3 => 0,
                    _ => r.u16(),
                };
                let next = r.below(size as u64 + 2) as u16;
                write_at(&mut ram, q.desc, 16 * index, &descriptor(addr, len, flags, next));
            }
            1 => {
                let index = read_u16(&ram, q.avail.checked_add(2));
                let head = r.below(size as u64 + 1) as u16;
                if size > 0 {
                    write_at(&mut ram, q.avail, 4 + 2 * (index % size) as u64, &head.to_le_bytes());
                }
                let published = if r.one_in(8) { r.u16() } else { index.wrapping_add(1) };
                write_at(&mut ram, q.avail, 2, &published.to_le_bytes());
            }
            2 => {
                let at = ram.address(&mut r);
                let n = r.index(64);
                let bytes = r.bytes(n).to_vec();
                let _ = ram.write(at, &bytes);
            }
            3..=5 => {
                let peeked = q.peek(&ram);
                let chain = match peeked {
                    Ok(Some(chain)) => chain,
                    Ok(None) => {
                        feature(&mut signal, 0x100);
                        continue;
                    }
                    Err(why) => {
                        feature(&mut signal, kind_of(&why.to_string()));
                        continue;
                    }
                };
                check_chain(&chain, size, &ram);
                feature(&mut signal, 0x300 | (chain.readable.len() as u64) << 4 | chain.writable.len() as u64);
                if op == 3 {
                    continue;
                }
                let progress = if op == 5 {
                    let progress = r.edge();
                    q.pause(chain.head, progress);
                    assert_eq!(q.progress(chain.head), progress);
                    assert_eq!(q.progress(chain.head.wrapping_add(1)), 0);
                    progress
                } else {
                    q.progress(chain.head)
                };
                let budget = r.edge();
                let mut io = ChainIo::resuming(&chain, &mut ram, progress, budget);
                assert_eq!(io.progress(), progress);
                assert!(io.budget() >= 1 && io.budget() <= budget.max(1));
                chain_io(&mut r, &mut io, &mut signal);
                let written = if r.one_in(8) { r.u32() } else { io.written() };
                let result = q.complete(&mut ram, chain.head, written);
                used = used.wrapping_add(1);
                feature(&mut signal, 0x400 | result.is_ok() as u64);
                if result.is_err() {
                    // The transport marks the device broken: nothing more
                    // happens on the queue until the driver resets it.
                    let (desc, avail, used_ring) = (q.desc, q.avail, q.used);
                    q.reset();
                    used = 0;
                    (q.size, q.ready) = (size, true);
                    (q.desc, q.avail, q.used) = (desc, avail, used_ring);
                } else {
                    // The element is at the slot of the used index before it.
                    let slot = 4 + 8 * (used.wrapping_sub(1) % size) as u64;
                    let mut element = [0u8; 8];
                    ram.read(q.used + slot, &mut element).unwrap();
                    assert_eq!(element[..4], (chain.head as u32).to_le_bytes());
                    assert_eq!(element[4..], written.to_le_bytes());
                    assert_eq!(read_u16(&ram, Some(q.used + 2)), used);
                }
            }
            6 => match r.u8() % 5 {
                0 => q.desc = ram.address(&mut r),
                1 => q.avail = ram.address(&mut r),
                2 => q.used = ram.address(&mut r),
                3 => q.size = r.pick(&QUEUE_SIZES),
                _ => q.ready = r.bool(),
            },
            _ => {
                // What a driver does after a device reset: the same rings again.
                let (desc, avail, used_ring) = (q.desc, q.avail, q.used);
                q.reset();
                used = 0;
                (q.size, q.ready) = (r.pick(&QUEUE_SIZES), true);
                (q.desc, q.avail, q.used) = (desc, avail, used_ring);
            }
        }
    }
    signal
}

/// The virtio-mmio registers, and those a driver writes.
mod regs {
    pub use devices::virtio::reg::*;
    pub const ALL: [u64; 18] = [
        DEVICE_FEATURES_SELECT,
        DRIVER_FEATURES,
        DRIVER_FEATURES_SELECT,
        QUEUE_SELECT,
        QUEUE_NUM,
        QUEUE_READY,
        QUEUE_NOTIFY,
        INTERRUPT_ACK,
        STATUS,
        QUEUE_DESC,
        QUEUE_DESC_HIGH,
        QUEUE_AVAIL,
        QUEUE_AVAIL_HIGH,
        QUEUE_USED,
        QUEUE_USED_HIGH,
        CONFIG,
        CONFIG_GENERATION,
        0x1fc,
    ];
}

/// A 64-bit queue address from its two registers.
fn queue_address(dev: &mut VirtioMmio, low: u64) -> u64 {
    (dev.read(low + 4, 4) as u64) << 32 | dev.read(low, 4) as u64
}

/// The driver side of a device: the standard bring-up, and chains posted on
/// wherever the device's registers say the rings are.
fn bring_up(r: &mut Reader, dev: &mut VirtioMmio, ram: &mut Ram, queues: u32) {
    use regs::*;
    dev.write(STATUS, 0, ram);
    dev.write(STATUS, 1 | 2, ram);
    dev.write(DRIVER_FEATURES_SELECT, 1, ram);
    dev.write(DRIVER_FEATURES, 1, ram);
    dev.write(STATUS, 1 | 2 | 8, ram);
    for q in 0..queues {
        dev.write(QUEUE_SELECT, q, ram);
        dev.write(QUEUE_NUM, r.pick(&QUEUE_SIZES[1..]) as u32, ram);
        for reg in [QUEUE_DESC, QUEUE_AVAIL, QUEUE_USED] {
            let at = ram.address(r);
            dev.write(reg, at as u32, ram);
            dev.write(reg + 4, (at >> 32) as u32, ram);
        }
        dev.write(QUEUE_READY, 1, ram);
    }
    dev.write(STATUS, 1 | 2 | 8 | 4, ram);
}

/// Kinds of block request (virtio-blk type field).
const BLK_KINDS: [u32; 4] = [0, 1, 4, 8];

fn post(r: &mut Reader, dev: &mut VirtioMmio, ram: &mut Ram, queue: u32, block: bool) {
    use regs::*;
    dev.write(QUEUE_SELECT, queue, ram);
    let size = dev.read(QUEUE_NUM, 4) as u16;
    let (desc, avail) = (queue_address(dev, QUEUE_DESC), queue_address(dev, QUEUE_AVAIL));
    if size == 0 {
        return;
    }
    let count = 1 + r.index(6);
    let first = r.below(size as u64) as u16;
    for i in 0..count {
        let index = (first as usize + i) % size as usize;
        let (addr, len) = (ram.address(r), length(r, ram));
        let last = i + 1 == count;
        let writable = if block { last || r.one_in(8) } else { r.bool() };
        let mut flags = if writable { DESC_WRITE } else { 0 } | if last { 0 } else { DESC_NEXT };
        if r.one_in(8) {
            flags = r.u16();
        }
        let next = if r.one_in(8) { r.u16() } else { ((index + 1) % size as usize) as u16 };
        write_at(ram, desc, 16 * index as u64, &descriptor(addr, len, flags, next));
        if block && i == 0 {
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&if r.bool() { r.pick(&BLK_KINDS) } else { r.u32() }.to_le_bytes());
            header[8..].copy_from_slice(&if r.bool() { r.below(64) } else { r.edge() }.to_le_bytes());
            let _ = ram.write(addr, &header);
        }
    }
    let index = read_u16(ram, avail.checked_add(2));
    write_at(ram, avail, 4 + 2 * (index % size) as u64, &first.to_le_bytes());
    write_at(ram, avail, 2, &index.wrapping_add(1).to_le_bytes());
    if !r.one_in(8) {
        dev.write(QUEUE_NOTIFY, queue, ram);
    }
}

/// One virtio device driven by a guest: the input sets up RAM, then makes
/// register writes and reads, bring-ups, posted chains, polls, host input,
/// interrupt acknowledgements, resets and scribbles over RAM. After each
/// step the transport's fixed registers read right, the interrupt line
/// matches the status, a broken device says so, the console's output per
/// call stays within the per-call bound, and the host memory the device
/// holds stays bounded.
fn drive(data: &[u8], dev: &mut VirtioMmio, queues: u32, id: u32, output: Option<&AtomicU64>) -> u64 {
    use regs::*;
    let mut r = Reader::new(data);
    let mut ram = Ram::from_input(&mut r);
    let block = id == 2;
    let mut signal = 0;
    let start = heap::mark();
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8() % 10;
        feature(&mut signal, op as u64);
        let printed = output.map_or(0, |o| o.load(Ordering::Relaxed));
        match op {
            0 => {
                let offset = match r.u8() % 4 {
                    0 => r.below(0x200),
                    1 => r.edge(),
                    _ => r.pick(&ALL),
                };
                let value = if r.bool() { r.below(4) as u32 } else { r.edge() as u32 };
                dev.write(offset, value, &mut ram);
            }
            1 => {
                let offset = if r.bool() { r.pick(&ALL) } else { r.edge() };
                let _ = dev.read(offset, r.pick(&[1, 2, 4, 8]));
            }
            2 => bring_up(&mut r, dev, &mut ram, queues),
            3 | 4 => {
                // Now and then a queue the device does not have.
                let queue = r.below(queues as u64 + 1) as u32;
                post(&mut r, dev, &mut ram, queue, block);
            }
            5 => dev.poll(&mut ram),
            6 => {
                let n = r.index(128);
                let bytes = r.bytes(n);
                dev.device_mut().push_input(bytes);
                if r.bool() {
                    dev.poll(&mut ram);
                }
            }
            7 => {
                let at = ram.address(&mut r);
                let n = r.index(32);
                let bytes = r.bytes(n).to_vec();
                let _ = ram.write(at, &bytes);
            }
            8 => dev.write(INTERRUPT_ACK, r.u32(), &mut ram),
            _ => dev.write(STATUS, 0, &mut ram),
        }
        assert_eq!(
            [dev.read(MAGIC, 4), dev.read(VERSION, 4), dev.read(DEVICE_ID, 4), dev.read(VENDOR, 4)],
            [0x7472_6976, 2, id, 0x544c_5342]
        );
        let status = dev.read(INTERRUPT_STATUS, 4);
        assert_eq!(dev.irq_line(), status != 0, "interrupt line and status {status:#x}");
        if let Some(why) = dev.broken.clone() {
            assert_ne!(dev.read(STATUS, 4) & NEEDS_RESET, 0, "broken ({why}) without DEVICE_NEEDS_RESET");
            feature(&mut signal, kind_of(&why.to_string()));
        }
        feature(&mut signal, 0x200 | status as u64);
        if let Some(output) = output {
            // One call moves at most BYTES_PER_CALL, in pieces of at most
            // TRANSMIT_PER_CALL; a line the sink had waiting may come with it.
            let printed = output.load(Ordering::Relaxed) - printed;
            assert!(printed <= BYTES_PER_CALL + TRANSMIT_PER_CALL, "{printed} bytes printed in one call");
        }
        let held = heap::peak_since(start);
        assert!(held < HEAP_LIMIT, "the device held {held} bytes");
    }
    signal
}

pub fn console(data: &[u8]) -> u64 {
    let printed = Arc::new(AtomicU64::new(0));
    let sink = printed.clone();
    let console = Console::new(Box::new(move |line: &[u8]| {
        sink.fetch_add(line.len() as u64, Ordering::Relaxed);
    }));
    let mut dev = VirtioMmio::new(Box::new(console));
    drive(data, &mut dev, 2, 3, Some(&printed))
}

/// A disk that checks every access the device makes is inside it.
struct Disk(Vec<u8>);

impl Disk {
    fn span(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let start = usize::try_from(offset).ok();
        let range = start.and_then(|s| Some(s..s.checked_add(len)?)).filter(|r| r.end <= self.0.len());
        range.unwrap_or_else(|| panic!("disk access {offset:#x}+{len:#x} outside {} bytes", self.0.len()))
    }
}

impl BlockStore for Disk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        buf.copy_from_slice(&self.0[self.span(offset, buf.len())]);
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        let span = self.span(offset, data.len());
        self.0[span].copy_from_slice(data);
    }
}

pub fn blk(data: &[u8]) -> u64 {
    // Disk sizes: empty, a sector, odd sizes, a few sectors (the first byte).
    let size = match data.first().copied().unwrap_or(0) % 4 {
        0 => 0,
        1 => 512,
        2 => 4096 + 100,
        _ => 16 * 1024,
    };
    let mut dev = VirtioMmio::new(Box::new(Block::new(Box::new(Disk(vec![0x5a; size])), "fuzz")));
    let signal = drive(data.get(1..).unwrap_or_default(), &mut dev, 1, 2, None);
    assert_eq!(dev.read(regs::CONFIG, 4) as usize, size / 512, "capacity in sectors");
    signal
}
