//! virtio-blk: one request queue; reads, writes, flushes and the device ID
//! against a byte store the VMM provides (the VM's disk image, kept in host
//! memory, read-write for the VM's life). Requests outside the disk fail with
//! an I/O error status, as on real hardware; only protocol violations break
//! the device.
//!
//! A request moves at most one call's budget of data (`ChainIo::budget`); a
//! longer one goes on from there in later calls, its status written when the
//! last of its data has moved.

use super::queue::ChainIo;
use super::{Handled, VirtioDevice, VirtioError};
use alloc::boxed::Box;
use alloc::vec::Vec;

const SECTOR: u64 = 512;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const F_FLUSH: u64 = 1 << 9;
/// Data moves through the host in pieces of this size.
const PIECE: usize = 64 * 1024;

/// The bytes behind a disk.
pub trait BlockStore: Send {
    fn size(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]);
    fn write_at(&mut self, offset: u64, data: &[u8]);
}

impl BlockStore for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        buf.copy_from_slice(&self[offset as usize..offset as usize + buf.len()]);
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        self[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }
}

pub struct Block {
    store: Box<dyn BlockStore>,
    /// The serial number GET_ID returns (20 bytes, NUL-padded).
    id: [u8; 20],
    /// The piece data moves through, kept between requests: grown to the
    /// longest piece moved so far (at most `PIECE`), so a request does not
    /// allocate and zero a buffer of its length each time.
    piece: Vec<u8>,
}

impl Block {
    pub fn new(store: Box<dyn BlockStore>, serial: &str) -> Block {
        let mut id = [0u8; 20];
        let n = serial.len().min(20);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Block { store, id, piece: Vec::new() }
    }

    fn capacity_sectors(&self) -> u64 {
        self.store.size() / SECTOR
    }

    /// Runs one request, or this call's part of it.
    fn serve(&mut self, kind: u32, sector: u64, io: &mut ChainIo) -> Result<Step, VirtioError> {
        let in_len = io.writable_len() - 1;
        let out_len = io.readable_len() - 16;
        let span = |len: u64| {
            let start = sector.checked_mul(SECTOR)?;
            let end = start.checked_add(len)?;
            (len.is_multiple_of(SECTOR) && end <= self.capacity_sectors() * SECTOR).then_some(start)
        };
        Ok(match kind {
            T_IN => {
                let Some(start) = span(in_len) else { return Ok(Step::Done(S_IOERR)) };
                self.move_data(io, in_len, |store, io, done, piece| {
                    store.read_at(start + done, piece);
                    io.write(done, piece)
                })?
            }
            T_OUT => {
                let Some(start) = span(out_len) else { return Ok(Step::Done(S_IOERR)) };
                self.move_data(io, out_len, |store, io, done, piece| {
                    io.read(16 + done, piece)?;
                    store.write_at(start + done, piece);
                    Ok(())
                })?
            }
            // Writes land in the store at once; there is nothing to flush.
            T_FLUSH => Step::Done(S_OK),
            T_GET_ID => {
                let n = usize::try_from(in_len).unwrap_or(usize::MAX).min(self.id.len());
                io.write(0, &self.id[..n])?;
                Step::Done(S_OK)
            }
            _ => Step::Done(S_UNSUPP),
        })
    }

    /// Moves the request's `len` data bytes, from where an earlier call left
    /// off and as far as this call's budget goes, a PIECE at a time:
    /// `transfer(store, io, offset, piece)` moves `piece.len()` bytes at
    /// `offset` into the data.
    fn move_data(
        &mut self,
        io: &mut ChainIo,
        len: u64,
        mut transfer: impl FnMut(&mut dyn BlockStore, &mut ChainIo, u64, &mut [u8]) -> Result<(), VirtioError>,
    ) -> Result<Step, VirtioError> {
        let mut done = io.progress().min(len);
        let until = done.saturating_add(io.budget()).min(len);
        let piece_len = usize::try_from(until - done).unwrap_or(usize::MAX).min(PIECE);
        if self.piece.len() < piece_len {
            self.piece.resize(piece_len, 0);
        }
        while done < until {
            let n = usize::try_from(until - done).unwrap_or(usize::MAX).min(PIECE);
            transfer(self.store.as_mut(), io, done, &mut self.piece[..n])?;
            done += n as u64;
        }
        Ok(if done < len { Step::Unfinished(done) } else { Step::Done(S_OK) })
    }
}

/// Where a request stands after a call.
enum Step {
    /// Finished with this status.
    Done(u8),
    /// Data moved up to here; the rest is for later calls.
    Unfinished(u64),
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }
    fn device_id(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        F_FLUSH
    }
    fn queues(&self) -> usize {
        1
    }
    fn config(&self) -> Vec<u8> {
        // capacity (sectors); the rest of the layout is for features not offered.
        self.capacity_sectors().to_le_bytes().to_vec()
    }
    fn handle(&mut self, _queue: usize, io: &mut ChainIo) -> Result<Handled, VirtioError> {
        if io.readable_len() < 16 || io.writable_len() < 1 {
            return Err(VirtioError::BlockRequestMalformed);
        }
        let mut header = [0u8; 16];
        io.read(0, &mut header)?;
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        match self.serve(kind, sector, io)? {
            Step::Unfinished(progress) => Ok(Handled::Unfinished { progress }),
            Step::Done(status) => {
                let status_at = io.writable_len() - 1;
                io.write(status_at, &[status])?;
                Ok(Handled::Used(io.written()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Driver, Ram};
    use super::super::VirtioMmio;
    use super::*;
    use crate::GuestRam;

    fn disk() -> (VirtioMmio, Driver) {
        let store: Vec<u8> = (0..64 * 1024u32).map(|i| (i / 512) as u8).collect();
        let mut dev = VirtioMmio::new(Box::new(Block::new(Box::new(store), "basalt-disk0")));
        let drv = Driver::bring_up(&mut dev, 1);
        (dev, drv)
    }

    fn header(ram: &mut Ram, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        ram.write(at, &h).unwrap();
    }

    fn status(ram: &Ram, at: u64) -> u8 {
        let mut s = [0u8];
        ram.read(at, &mut s).unwrap();
        s[0]
    }

    #[test]
    fn capacity_is_in_sectors() {
        let (mut dev, _) = disk();
        assert_eq!(dev.read(0x100, 4), 128);
        assert_eq!(dev.read(0x8, 4), 2);
    }

    #[test]
    fn write_then_read_back() {
        let (mut dev, mut drv) = disk();
        header(&mut drv.ram, 0x8000, T_OUT, 3);
        drv.ram.write(0x9000, &[0x5a; 1024]).unwrap();
        drv.post(&mut dev, &[(0x8000, 16, false), (0x9000, 1024, false), (0xa000, 1, true)]);
        assert_eq!(status(&drv.ram, 0xa000), S_OK);
        assert_eq!(drv.used(0).2, 1, "only the status byte was written");

        header(&mut drv.ram, 0x8000, T_IN, 2);
        drv.post(&mut dev, &[(0x8000, 16, false), (0xb000, 2048, true), (0xa000, 1, true)]);
        assert_eq!(status(&drv.ram, 0xa000), S_OK);
        assert_eq!(drv.used(0).2, 2049);
        let mut back = vec![0u8; 2048];
        drv.ram.read(0xb000, &mut back).unwrap();
        assert!(back[..512].iter().all(|&b| b == 2), "sector 2 untouched");
        assert!(back[512..1536].iter().all(|&b| b == 0x5a), "sectors 3-4 written");
        assert!(back[1536..].iter().all(|&b| b == 5));
    }

    #[test]
    fn out_of_range_and_unknown_requests_fail_politely() {
        let (mut dev, mut drv) = disk();
        header(&mut drv.ram, 0x8000, T_IN, 127);
        drv.post(&mut dev, &[(0x8000, 16, false), (0xb000, 1024, true), (0xa000, 1, true)]);
        assert_eq!(status(&drv.ram, 0xa000), S_IOERR);
        header(&mut drv.ram, 0x8000, 77, 0);
        drv.post(&mut dev, &[(0x8000, 16, false), (0xa000, 1, true)]);
        assert_eq!(status(&drv.ram, 0xa000), S_UNSUPP);
        header(&mut drv.ram, 0x8000, T_IN, u64::MAX / 2);
        drv.post(&mut dev, &[(0x8000, 16, false), (0xb000, 512, true), (0xa000, 1, true)]);
        assert_eq!(status(&drv.ram, 0xa000), S_IOERR, "sector overflow");
        // The first byte's offset fits in a u64, the last one's does not.
        header(&mut drv.ram, 0x8000, T_OUT, u64::MAX / SECTOR);
        drv.post(&mut dev, &[(0x8000, 16, false), (0xb000, 1024, false), (0xa000, 1, true)]);
        assert_eq!(status(&drv.ram, 0xa000), S_IOERR, "end overflow");
        assert!(dev.broken.is_none());
    }

    #[test]
    fn a_long_request_moves_one_budget_per_call() {
        let store: Vec<u8> = (0..8 << 20).map(|i: u32| (i / 512) as u8).collect();
        let mut dev = VirtioMmio::new(Box::new(Block::new(Box::new(store), "big")));
        let mut drv = Driver::bring_up(&mut dev, 1);
        let len = 3 * crate::virtio::BYTES_PER_CALL as u32 / 2;
        drv.ram.0.resize(4 << 20, 0);
        header(&mut drv.ram, 0x8000, T_IN, 2);
        drv.post(&mut dev, &[(0x8000, 16, false), (0x10_0000, len, true), (0xa000, 1, true)]);
        assert!(dev.has_backlog());
        assert_eq!(drv.used(0).0, 0);
        dev.poll(&mut drv.ram);
        assert!(!dev.has_backlog());
        assert_eq!(drv.used(0), (1, 0, len + 1));
        assert_eq!(status(&drv.ram, 0xa000), S_OK);
        let mut back = vec![0u8; len as usize];
        drv.ram.read(0x10_0000, &mut back).unwrap();
        assert!(back.iter().enumerate().all(|(i, &b)| b == (i / 512 + 2) as u8));
        // Written back elsewhere, in two calls too.
        header(&mut drv.ram, 0x8000, T_OUT, 5000);
        drv.post(&mut dev, &[(0x8000, 16, false), (0x10_0000, len, false), (0xa000, 1, true)]);
        assert!(dev.has_backlog());
        dev.poll(&mut drv.ram);
        assert_eq!(drv.used(0), (2, 3, 1));
        header(&mut drv.ram, 0x8000, T_IN, 5000);
        drv.post(&mut dev, &[(0x8000, 16, false), (0x20_0000, 512, true), (0xa000, 1, true)]);
        dev.poll(&mut drv.ram);
        let mut sector = [0u8; 512];
        drv.ram.read(0x20_0000, &mut sector).unwrap();
        assert_eq!(sector, [2; 512]);
    }

    #[test]
    fn get_id_and_flush() {
        let (mut dev, mut drv) = disk();
        header(&mut drv.ram, 0x8000, T_GET_ID, 0);
        drv.post(&mut dev, &[(0x8000, 16, false), (0xb000, 20, true), (0xa000, 1, true)]);
        let mut id = [0u8; 12];
        drv.ram.read(0xb000, &mut id).unwrap();
        assert_eq!(&id, b"basalt-disk0");
        header(&mut drv.ram, 0x8000, T_FLUSH, 0);
        drv.post(&mut dev, &[(0x8000, 16, false), (0xa000, 1, true)]);
        assert_eq!(status(&drv.ram, 0xa000), S_OK);
    }

    #[test]
    fn a_request_without_status_byte_breaks_the_device() {
        let (mut dev, mut drv) = disk();
        header(&mut drv.ram, 0x8000, T_IN, 0);
        drv.post(&mut dev, &[(0x8000, 16, false)]);
        let broken = dev.broken.as_ref().unwrap();
        assert_eq!(broken.error, VirtioError::BlockRequestMalformed);
        assert_eq!(broken.to_string(), "queue 0: block request without a header or a status byte");
    }
}
