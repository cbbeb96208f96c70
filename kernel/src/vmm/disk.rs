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
}

impl BlockStore for HostDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) {
        assert!(offset + buf.len() as u64 <= self.size, "virtio-blk checks ranges");
        memory::read_frames(&self.frames, offset, buf);
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) {
        assert!(offset + data.len() as u64 <= self.size, "virtio-blk checks ranges");
        memory::write_frames(&self.frames, offset, data);
    }
}

impl Drop for HostDisk {
    fn drop(&mut self) {
        for &frame in &self.frames {
            memory::free_frame(frame);
        }
    }
}
