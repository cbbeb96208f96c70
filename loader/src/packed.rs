//! Guest images packed for the boot bundle: a header, then the image as a
//! zlib stream (deflate with an Adler-32 check). xtask packs an uncompressed
//! Linux kernel (a vmlinux, about 35 MB of Debian's) this way because the
//! bootloader's BIOS stage reads its FAT16 partition only while it has fewer
//! than 65536 sectors (32 MiB), and the whole boot bundle must fit there;
//! packed, Debian's takes 11 MB. The kernel unpacks an entry with the header
//! into host memory before loading it; inflating costs the host a fraction
//! of what the bzImage's own XZ decompressor costs the guest.
//!
//! ```text
//! magic "BASALTZ1" (8 bytes) | unpacked size (u64, little-endian) | zlib stream
//! ```
//!
//! The entry comes from the bundle, which the kernel checks like any guest
//! input: the size is bounded before anything is allocated, and a stream
//! that is damaged, cut short, fails its check or comes out at any other
//! size is refused by name.

use core::fmt;
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

pub const MAGIC: [u8; 8] = *b"BASALTZ1";
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
    /// The stream is damaged, cut short or fails its Adler-32 check.
    Damaged,
    /// The stream came out at `got` bytes where the header says `expected`.
    WrongSize {
        expected: u64,
        got: u64,
    },
    /// The stream holds more than the `expected` bytes the header says.
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
            PackError::Damaged => write!(f, "the packed image's zlib stream is damaged or cut short"),
            PackError::WrongSize { expected, got } => {
                write!(f, "the packed image unpacks to {got} bytes, but its header says {expected}")
            }
            PackError::LongerThanHeader { expected } => {
                write!(f, "the packed image unpacks to more than the {expected} bytes its header says")
            }
        }
    }
}

/// The header for an image of `size` bytes; the zlib stream follows it.
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
    let stream = entry.get(HEADER_SIZE..).ok_or(PackError::Truncated)?;
    // All the input at once into one flat buffer; the zlib header and the
    // Adler-32 check are verified. About 11 KiB of state: on the heap.
    let flags = inflate_flags::TINFL_FLAG_PARSE_ZLIB_HEADER
        | inflate_flags::TINFL_FLAG_COMPUTE_ADLER32
        | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let mut state = alloc::boxed::Box::<DecompressorOxide>::default();
    let (status, _, written) = decompress(&mut state, stream, out, 0, flags);
    match status {
        TINFLStatus::Done if written as u64 == expected => Ok(()),
        TINFLStatus::Done => Err(PackError::WrongSize { expected, got: written as u64 }),
        // The buffer full with the stream not at its end.
        TINFLStatus::HasMoreOutput => Err(PackError::LongerThanHeader { expected }),
        _ => Err(PackError::Damaged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn pack(data: &[u8]) -> Vec<u8> {
        let mut packed = header(data.len() as u64).to_vec();
        packed.extend(miniz_oxide::deflate::compress_to_vec_zlib(data, 9));
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
        // Cut short, a flipped byte (the Adler-32 check catches what inflates), sizes that disagree.
        assert_eq!(unpack(&packed[..packed.len() - 3]), Err(PackError::Damaged));
        let mut flipped = packed.clone();
        let at = packed.len() - 1;
        flipped[at] ^= 1;
        assert_eq!(unpack(&flipped), Err(PackError::Damaged));
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
