//! Split virtqueues (virtio 1.x): the driver's descriptor table and available
//! ring, the device's used ring. Everything read from guest memory is checked
//! (indices, chain length, order of readable and writable parts, addresses), and
//! a violation is an error for the device to report, never a host fault.
//! Addresses are the guest's to choose, up to u64::MAX, so every sum of an
//! address and an offset or length is checked.

// Every value here comes from a hostile guest: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

use super::VirtioError;
use crate::GuestRam;
use alloc::vec::Vec;

const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const DESC_INDIRECT: u16 = 4;
/// Largest queue Basalt offers.
pub const MAX_SIZE: u16 = 256;
/// Largest total length of one chain; more is treated as malformed.
pub(super) const MAX_CHAIN_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, Default)]
pub struct Queue {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_avail: u16,
    next_used: u16,
    /// A chain the device has partly served: its head and where the device
    /// left off (see `Handled::Unfinished`).
    resume: Option<(u16, u64)>,
    /// The last call ran out of budget with work possibly left on this queue.
    pub backlog: bool,
}

/// One request: the buffers the device may read, then those it may write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<(u64, u32)>,
    pub writable: Vec<(u64, u32)>,
}

/// `base + offset` for a ring or table the driver placed at `base`.
fn ring_address(base: u64, offset: u64) -> Result<u64, VirtioError> {
    base.checked_add(offset).ok_or(VirtioError::RingPastAddressSpace { base })
}

/// Entry `index` (modulo the queue size) of a ring of `entry_size`-byte
/// entries after a `header`-byte header.
fn ring_entry(base: u64, header: u64, entry_size: u64, index: u16, size: u16) -> Result<u64, VirtioError> {
    let slot = index.checked_rem(size).ok_or(VirtioError::EmptyQueue)?;
    let offset = u64::from(slot).checked_mul(entry_size).and_then(|o| o.checked_add(header));
    ring_address(base, offset.ok_or(VirtioError::RingOffsetOverflow)?)
}

fn read_u16(ram: &dyn GuestRam, at: u64) -> Result<u16, VirtioError> {
    let mut b = [0u8; 2];
    ram.read(at, &mut b).map_err(|_| VirtioError::RingOutsideRam { at })?;
    Ok(u16::from_le_bytes(b))
}

impl Queue {
    pub fn reset(&mut self) {
        *self = Queue::default();
    }

    /// The next chain the driver made available, without taking it.
    pub fn peek(&self, ram: &dyn GuestRam) -> Result<Option<Chain>, VirtioError> {
        if !self.ready || self.size == 0 {
            return Ok(None);
        }
        let available = read_u16(ram, ring_address(self.avail, 2)?)?;
        let outstanding = available.wrapping_sub(self.next_avail);
        if outstanding == 0 {
            return Ok(None);
        }
        if outstanding > self.size {
            return Err(VirtioError::AvailableAhead { available, outstanding, size: self.size });
        }
        let slot = ring_entry(self.avail, 4, 2, self.next_avail, self.size)?;
        let head = read_u16(ram, slot)?;
        self.walk(ram, head).map(Some)
    }

    fn walk(&self, ram: &dyn GuestRam, head: u16) -> Result<Chain, VirtioError> {
        let mut chain = Chain { head, ..Chain::default() };
        let mut index = head;
        let mut total = 0u64;
        for _ in 0..self.size {
            if index >= self.size {
                return Err(VirtioError::DescriptorIndex { index, size: self.size });
            }
            let mut d = [0u8; 16];
            let at = ring_entry(self.desc, 0, 16, index, self.size)?;
            ram.read(at, &mut d).map_err(|_| VirtioError::DescriptorTableOutsideRam { at })?;
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & DESC_INDIRECT != 0 {
                return Err(VirtioError::IndirectDescriptor);
            }
            let end = addr.checked_add(len as u64).ok_or(VirtioError::BufferWraps)?;
            // Both ends in RAM means all of it is: a buffer across the RAM hole
            // below 4 GiB (1 GiB wide) would be longer than a whole chain may
            // be (MAX_CHAIN_BYTES, checked next), and guest memory refuses any
            // access that leaves a RAM range anyway.
            if len > 0 && (ram.read(addr, &mut [0]).is_err() || ram.read(end.saturating_sub(1), &mut [0]).is_err()) {
                return Err(VirtioError::BufferOutsideRam { addr, len });
            }
            total = total.saturating_add(u64::from(len));
            if total > MAX_CHAIN_BYTES {
                return Err(VirtioError::ChainTooLong);
            }
            if flags & DESC_WRITE != 0 {
                chain.writable.push((addr, len));
            } else if chain.writable.is_empty() {
                chain.readable.push((addr, len));
            } else {
                return Err(VirtioError::ReadableAfterWritable);
            }
            if flags & DESC_NEXT == 0 {
                return Ok(chain);
            }
            index = next;
        }
        Err(VirtioError::ChainLoops { head })
    }

    /// Where the device left off on the chain at `head` (0: a new chain).
    pub fn progress(&self, head: u16) -> u64 {
        match self.resume {
            Some((resumed, progress)) if resumed == head => progress,
            _ => 0,
        }
    }

    /// The device served part of the chain at `head`, up to `progress`.
    pub fn pause(&mut self, head: u16, progress: u64) {
        self.resume = Some((head, progress));
    }

    /// Takes the chain `peek` returned and reports it used with `written` bytes.
    pub fn complete(&mut self, ram: &mut dyn GuestRam, head: u16, written: u32) -> Result<(), VirtioError> {
        self.resume = None;
        let slot = ring_entry(self.used, 4, 8, self.next_used, self.size)?;
        let mut element = [0u8; 8];
        element[..4].copy_from_slice(&(head as u32).to_le_bytes());
        element[4..].copy_from_slice(&written.to_le_bytes());
        self.next_avail = self.next_avail.wrapping_add(1);
        self.next_used = self.next_used.wrapping_add(1);
        ram.write(slot, &element).map_err(|_| VirtioError::UsedRingOutsideRam { at: slot })?;
        let index_at = ring_address(self.used, 2)?;
        ram.write(index_at, &self.next_used.to_le_bytes()).map_err(|_| VirtioError::UsedIndexOutsideRam)
    }
}

/// Reads a chain's readable part and writes its writable part as two byte
/// streams, across however the driver split them into buffers.
pub struct ChainIo<'a> {
    pub chain: &'a Chain,
    pub ram: &'a mut dyn GuestRam,
    written: u32,
    progress: u64,
    budget: u64,
    moved: u64,
}

impl<'a> ChainIo<'a> {
    /// A chain served from its start, with all of one call's budget.
    pub fn new(chain: &'a Chain, ram: &'a mut dyn GuestRam) -> ChainIo<'a> {
        Self::resuming(chain, ram, 0, super::BYTES_PER_CALL)
    }

    /// A chain the device left at `progress` (0 if new), with `budget` bytes
    /// still to move in this call.
    pub fn resuming(chain: &'a Chain, ram: &'a mut dyn GuestRam, progress: u64, budget: u64) -> ChainIo<'a> {
        ChainIo { chain, ram, written: 0, progress, budget, moved: 0 }
    }

    /// Where the device left off on this chain in an earlier call (what it
    /// returned in `Handled::Unfinished`), 0 for a chain new to it.
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// Bytes the device may still move in this call, never 0: more data than
    /// that waits for a later call (`Handled::Unfinished`).
    pub fn budget(&self) -> u64 {
        self.budget.saturating_sub(self.moved).max(1)
    }

    /// Bytes read and written through this `ChainIo` so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    pub fn readable_len(&self) -> u64 {
        self.chain.readable.iter().map(|&(_, l)| l as u64).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.chain.writable.iter().map(|&(_, l)| l as u64).sum()
    }

    /// `buf.len()` bytes of the readable stream from `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VirtioError> {
        let ram = &*self.ram;
        let done = for_each_span(&self.chain.readable, offset, buf.len(), |addr, at, n| {
            ram.read(addr, &mut buf[at..][..n]).is_ok()
        })?;
        if done < buf.len() {
            return Err(VirtioError::RequestTooShort);
        }
        self.moved = self.moved.saturating_add(done as u64);
        Ok(())
    }

    /// Writes `data` into the writable stream at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VirtioError> {
        let ram = &mut *self.ram;
        let done = for_each_span(&self.chain.writable, offset, data.len(), |addr, at, n| {
            ram.write(addr, &data[at..][..n]).is_ok()
        })?;
        if done < data.len() {
            return Err(VirtioError::ResponseTooLong);
        }
        self.moved = self.moved.saturating_add(done as u64);
        // Only bytes that reached the driver count: an empty write anywhere,
        // past the buffers too, must not make the used length claim more.
        if done > 0 {
            let end = offset.saturating_add(done as u64);
            self.written = self.written.max(u32::try_from(end).unwrap_or(u32::MAX));
        }
        Ok(())
    }

    /// Bytes written to the driver's buffers (for the used ring).
    pub fn written(&self) -> u32 {
        self.written
    }
}

/// Calls `f(guest address, position in the caller's bytes, length)` for each
/// piece of `buffers` (one stream of bytes) covering `offset .. offset + len`;
/// returns how many bytes the buffers held. `f` returns false for an address
/// outside guest RAM.
fn for_each_span(
    buffers: &[(u64, u32)],
    mut offset: u64,
    len: usize,
    mut f: impl FnMut(u64, usize, usize) -> bool,
) -> Result<usize, VirtioError> {
    let mut done = 0;
    for &(addr, size) in buffers {
        if done == len {
            break;
        }
        if let Some(rest) = offset.checked_sub(u64::from(size)) {
            offset = rest;
            continue;
        }
        let n =
            usize::try_from(u64::from(size).saturating_sub(offset)).unwrap_or(usize::MAX).min(len.saturating_sub(done));
        let at = addr.checked_add(offset).ok_or(VirtioError::BufferWraps)?;
        if !f(at, done, n) {
            return Err(VirtioError::StreamOutsideRam);
        }
        done = done.saturating_add(n);
        offset = 0;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::tests::{Ram, AVAIL, DESC, USED};

    #[test]
    fn an_empty_write_claims_no_bytes() {
        let chain = Chain { head: 0, readable: Vec::new(), writable: alloc::vec![(0x100, 16)] };
        let mut ram = Ram(alloc::vec![0; 0x1000]);
        let mut io = ChainIo::new(&chain, &mut ram);
        // Past the end of the buffers (found by the virtio-queue fuzz target).
        io.write(512, &[]).unwrap();
        io.write(8, &[]).unwrap();
        assert_eq!(io.written(), 0);
        io.write(4, &[1, 2]).unwrap();
        io.write(15, &[]).unwrap();
        assert_eq!(io.written(), 6);
    }

    /// A ready 16-entry queue with its rings where the transport tests put
    /// them, descriptors (address, length, flags, next) from entry 0, and
    /// one chain made available, from `head`.
    fn queue(ram: &mut Ram, head: u16, descriptors: &[(u64, u32, u16, u16)]) -> Queue {
        for (at, &(addr, len, flags, next)) in (DESC..).step_by(16).zip(descriptors) {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            ram.write(at, &d).unwrap();
        }
        ram.write(AVAIL + 4, &head.to_le_bytes()).unwrap();
        ram.write(AVAIL + 2, &1u16.to_le_bytes()).unwrap();
        Queue { size: 16, ready: true, desc: DESC, avail: AVAIL, used: USED, ..Queue::default() }
    }

    #[test]
    fn each_violation_in_the_rings_is_reported_with_its_numbers() {
        const MIB: u32 = 1 << 20;
        let ram = || Ram(alloc::vec![0; 2 << 20]);
        let peek = |ram: &mut Ram, q: Queue| q.peek(ram).map(|chain| chain.map(|c| c.head));
        let mut r = ram();
        let q = queue(&mut r, 17, &[]);
        assert_eq!(peek(&mut r, q), Err(VirtioError::DescriptorIndex { index: 17, size: 16 }));
        let mut r = ram();
        let q = Queue { avail: 2 << 20, ..queue(&mut r, 0, &[(0x8000, 4, 0, 0)]) };
        assert_eq!(peek(&mut r, q), Err(VirtioError::RingOutsideRam { at: (2 << 20) + 2 }));
        let mut r = ram();
        let q = Queue { desc: (2 << 20) - 8, ..queue(&mut r, 0, &[]) };
        assert_eq!(peek(&mut r, q), Err(VirtioError::DescriptorTableOutsideRam { at: (2 << 20) - 8 }));
        let mut r = ram();
        let q = queue(&mut r, 0, &[(0x8000, 16, DESC_INDIRECT, 0)]);
        assert_eq!(peek(&mut r, q), Err(VirtioError::IndirectDescriptor));
        // One 2 MiB buffer chained to itself: too long before it is seen to loop.
        let mut r = ram();
        let q = queue(&mut r, 0, &[(0, 2 * MIB, DESC_NEXT, 0)]);
        assert_eq!(peek(&mut r, q), Err(VirtioError::ChainTooLong));
        let mut r = ram();
        let q = queue(&mut r, 0, &[(0x8000, 4, DESC_NEXT, 1), (0x9000, 4, 0, 0)]);
        assert_eq!(peek(&mut r, q), Ok(Some(0)));

        // Completions: a queue of size 0, a used ring outside guest RAM.
        let mut r = ram();
        let mut q = Queue { size: 0, ..queue(&mut r, 0, &[(0x8000, 4, 0, 0)]) };
        assert_eq!(q.complete(&mut r, 0, 0), Err(VirtioError::EmptyQueue));
        let mut q = Queue { used: 2 << 20, ..queue(&mut r, 0, &[(0x8000, 4, 0, 0)]) };
        assert_eq!(q.complete(&mut r, 0, 0), Err(VirtioError::UsedRingOutsideRam { at: (2 << 20) + 4 }));
    }

    #[test]
    fn each_violation_in_a_chains_streams_is_reported() {
        let mut ram = Ram(alloc::vec![0; 0x1000]);
        let chain = Chain { head: 0, readable: alloc::vec![(0x100, 4)], writable: alloc::vec![(0x200, 4)] };
        let mut io = ChainIo::new(&chain, &mut ram);
        assert_eq!(io.read(0, &mut [0; 8]), Err(VirtioError::RequestTooShort));
        assert_eq!(io.write(0, &[0; 8]), Err(VirtioError::ResponseTooLong));
        // Chains the queue never let through: past guest RAM, past u64::MAX.
        let chain = Chain { head: 0, readable: alloc::vec![(0x1000, 4)], writable: alloc::vec![(u64::MAX, 4)] };
        let mut io = ChainIo::new(&chain, &mut ram);
        assert_eq!(io.read(0, &mut [0; 4]), Err(VirtioError::StreamOutsideRam));
        assert_eq!(io.write(1, &[0; 2]), Err(VirtioError::BufferWraps));
    }
}
