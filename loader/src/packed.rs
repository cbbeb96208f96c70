//! Bundle entries packed for the boot bundle: a header, then the bytes as
//! one LZ4 block. xtask packs an uncompressed Linux kernel (a vmlinux, about
//! 35 MB of Debian's) this way because the bootloader's BIOS stage reads its
//! FAT16 partition only while it has fewer than 65536 sectors (32 MiB), and
//! the whole boot bundle must fit there; packed, Debian's takes 17 MB. It
//! packs initrds and disks too: the BIOS boot reads the bundle at about a
//! second per MB under QEMU's TCG, and they pack well (a blank disk to almost
//! nothing). The kernel unpacks such an entry into host memory while it
//! builds the VM. LZ4 rather than a tighter format (zlib: 11 MB for the
//! vmlinux) for its speed: under Bochs, inflating the zlib stream took 74
//! emulated seconds at every VM start, LZ4 takes 20, against the 460 the
//! bzImage's own XZ decompressor costs the guest.
//!
//! ```text
//! magic "BASALTL4" (8 bytes) | unpacked size (u64, little-endian) | LZ4 block
//! ```
//!
//! The entry comes from the bundle, which the kernel checks like any guest
//! input: the size is bounded before anything is allocated, and a block that
//! is damaged, cut short or comes out at any other size is refused by name.
//! LZ4 blocks carry no checksum: the bundle is as trustworthy as the kernel
//! image read from the same disk, and an unpacked guest image is checked by
//! its loader as any other. The kernel unpacks into physically contiguous
//! host memory, so an entry unpacks to at most `MAX_UNPACKED` bytes.

use core::fmt;
use lz4_flex::block::DecompressError;

pub const MAGIC: [u8; 8] = *b"BASALTL4";
pub const HEADER_SIZE: usize = 16;
/// More than any guest image needs (a VM has at most 4 GiB, and the bundle
/// fits in 32 MiB); bounds what a damaged header makes the host allocate.
pub const MAX_UNPACKED: u64 = 512 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackError {
    /// Shorter than the header.
    Truncated,
    TooLarge {
        size: u64,
        max: u64,
    },
    /// The block is damaged or cut short.
    Damaged,
    /// The block came out at `got` bytes where the header says `expected`.
    WrongSize {
        expected: u64,
        got: u64,
    },
    /// The block holds more than the `expected` bytes the header says.
    LongerThanHeader {
        expected: u64,
    },
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::Truncated => write!(f, "the packed image is shorter than its {HEADER_SIZE}-byte header"),
            PackError::TooLarge { size, max } => {
                write!(f, "the packed image unpacks to {size} bytes, more than the {max} taken")
            }
            PackError::Damaged => write!(f, "the packed image's LZ4 block is damaged or cut short"),
            PackError::WrongSize { expected, got } => {
                write!(f, "the packed image unpacks to {got} bytes, but its header says {expected}")
            }
            PackError::LongerThanHeader { expected } => {
                write!(f, "the packed image unpacks to more than the {expected} bytes its header says")
            }
        }
    }
}

/// The header for an image of `size` bytes; the LZ4 block follows it.
pub fn header(size: u64) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header[..8].copy_from_slice(&MAGIC);
    header[8..].copy_from_slice(&size.to_le_bytes());
    header
}

/// The size `entry` unpacks to, or None when it is not packed (no magic).
pub fn unpacked_size(entry: &[u8]) -> Option<Result<u64, PackError>> {
    let rest = entry.strip_prefix(&MAGIC)?;
    let size = rest.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)).ok_or(PackError::Truncated);
    Some(size.and_then(|size| match size {
        0..=MAX_UNPACKED => Ok(size),
        _ => Err(PackError::TooLarge { size, max: MAX_UNPACKED }),
    }))
}

/// Unpacks `entry` into `out`, which must be exactly as long as
/// `unpacked_size` says (else `WrongSize`, naming `out`'s length).
pub fn unpack_into(entry: &[u8], out: &mut [u8]) -> Result<(), PackError> {
    let expected = match unpacked_size(entry) {
        Some(size) => size?,
        None => return Err(PackError::Truncated),
    };
    if expected != out.len() as u64 {
        return Err(PackError::WrongSize { expected, got: out.len() as u64 });
    }
    let block = entry.get(HEADER_SIZE..).ok_or(PackError::Truncated)?;
    match lz4_flex::block::decompress_into(block, out) {
        Ok(written) if written as u64 == expected => Ok(()),
        Ok(written) => Err(PackError::WrongSize { expected, got: written as u64 }),
        Err(DecompressError::OutputTooSmall { .. }) => Err(PackError::LongerThanHeader { expected }),
        Err(_) => Err(PackError::Damaged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn pack(data: &[u8]) -> Vec<u8> {
        let mut packed = header(data.len() as u64).to_vec();
        packed.extend(lz4_flex::block::compress(data));
        packed
    }

    fn unpack(entry: &[u8]) -> Result<Vec<u8>, PackError> {
        let size = unpacked_size(entry).expect("packed")?;
        let mut out = vec![0u8; size as usize];
        unpack_into(entry, &mut out).map(|()| out)
    }

    #[test]
    fn packed_images_unpack_to_themselves() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 / 13) as u8).collect();
        let packed = pack(&data);
        assert!(packed.len() < data.len() / 4);
        assert_eq!(unpack(&packed), Ok(data));
        assert_eq!(unpack(&pack(&[])), Ok(Vec::new()));
        assert_eq!(unpacked_size(b"\x7fELF\x02\x01\x01"), None, "not packed");
    }

    #[test]
    fn damaged_entries_say_what_is_wrong() {
        let data = vec![0x5au8; 5000];
        let packed = pack(&data);
        assert_eq!(unpacked_size(&packed[..12]), Some(Err(PackError::Truncated)));
        let mut huge = packed.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(unpacked_size(&huge), Some(Err(PackError::TooLarge { size: u64::MAX, max: MAX_UNPACKED })));
        // Cut short, a match reaching before the start, sizes that disagree.
        assert_eq!(unpack(&packed[..packed.len() - 3]), Err(PackError::Damaged));
        let mut far = header(100).to_vec();
        far.extend([0x1f, 0xaa, 0x40, 0x00]); // one literal, then a match 64 bytes back
        assert_eq!(unpack(&far), Err(PackError::Damaged));
        let mut wrong = packed.clone();
        wrong[8..16].copy_from_slice(&5001u64.to_le_bytes());
        assert_eq!(unpack(&wrong), Err(PackError::WrongSize { expected: 5001, got: 5000 }));
        wrong[8..16].copy_from_slice(&4999u64.to_le_bytes());
        assert_eq!(unpack(&wrong), Err(PackError::LongerThanHeader { expected: 4999 }));
        let mut out = vec![0u8; 10];
        assert_eq!(unpack_into(&packed, &mut out), Err(PackError::WrongSize { expected: 5000, got: 10 }));
        assert_eq!(
            PackError::WrongSize { expected: 5000, got: 10 }.to_string(),
            "the packed image unpacks to 10 bytes, but its header says 5000"
        );
    }

    #[test]
    fn mutants_never_panic() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let packed = pack(&data);
        let mut rng = basalt_fuzz::Rng::new(21);
        for _ in 0..20_000 {
            let mut entry = packed.clone();
            basalt_fuzz::mutate(&mut rng, &mut entry, &[(8, 8)]);
            if let Some(Ok(size)) = unpacked_size(&entry) {
                let mut out = vec![0u8; size.min(1 << 16) as usize];
                let _ = unpack_into(&entry, &mut out);
            }
        }
    }
}
