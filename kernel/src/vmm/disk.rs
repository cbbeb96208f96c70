//! A VM's disk: its image copied into host frames when the VM starts, so the
//! guest reads and writes it for the VM's life without touching the boot
//! bundle (which stays as shipped). Frames, not heap: disks can be larger than
//! the kernel heap.

use crate::memory::{self, FRAME_SIZE};
use alloc::vec::Vec;
use devices::virtio::blk::BlockStore;

pub struct HostDisk {
    frames: Vec<u64>,
    size: u64,
}

impl HostDisk {
    /// A disk holding `image`, rounded down to whole 512-byte sectors. None when
    /// the host is out of memory (what was taken is given back).
    pub fn from_image(image: &[u8]) -> Option<HostDisk> {
        let size = image.len() as u64 & !511;
        let mut disk = HostDisk { frames: Vec::new(), size };
        for _ in 0..size.div_ceil(FRAME_SIZE) {
            disk.frames.push(memory::alloc_frame()?);
        }
        disk.write_at(0, &image[..size as usize]);
        Some(disk)
    }

    /// Calls `f(frame pointer, offset into data, length)` for each piece of
    /// `offset .. offset + len`, which the caller has bounds-checked.
    fn pieces(&self, offset: u64, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let within = (at % FRAME_SIZE) as usize;
            let n = (FRAME_SIZE as usize - within).min(len - done);
            let frame = self.frames[(at / FRAME_SIZE) as usize];
            f((memory::phys_to_virt(frame) as *mut u8).wrapping_add(within), done, n);
            done += n;
        }
    }
}

impl BlockStore for HostDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        assert!(offset + buf.len() as u64 <= self.size, "virtio-blk checks ranges");
        // SAFETY: each piece lies inside one of this disk's frames.
        self.pieces(offset, buf.len(), |host, at, n| unsafe {
            core::ptr::copy_nonoverlapping(host, buf[at..].as_mut_ptr(), n)
        });
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) {
        assert!(offset + data.len() as u64 <= self.size, "virtio-blk checks ranges");
        // SAFETY: as in `read_at`.
        self.pieces(offset, data.len(), |host, at, n| unsafe {
            core::ptr::copy_nonoverlapping(data[at..].as_ptr(), host, n)
        });
    }
}

impl Drop for HostDisk {
    fn drop(&mut self) {
        for &frame in &self.frames {
            memory::free_frame(frame);
        }
    }
}
