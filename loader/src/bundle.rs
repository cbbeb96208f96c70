//! The boot bundle: named byte strings packed into the boot image's ramdisk.
//!
//! Layout (little endian): magic `BSLTBNDL`, u32 version (1), u32 entry count,
//! then per entry: u32 name length, u64 data length, name (UTF-8), data.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: &[u8; 8] = b"BSLTBNDL";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    NotABundle,
    Version(u32),
    Truncated { entry: usize },
    BadName { entry: usize },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::NotABundle => write!(f, "the ramdisk is not a Basalt bundle (no BSLTBNDL magic)"),
            BundleError::Version(v) => write!(f, "bundle version {v} is not supported (this Basalt reads {VERSION})"),
            BundleError::Truncated { entry } => write!(f, "bundle entry {entry} runs past the end of the ramdisk"),
            BundleError::BadName { entry } => write!(f, "bundle entry {entry} has a name that is not UTF-8"),
        }
    }
}

/// A parsed bundle borrowing the ramdisk's bytes.
#[derive(Debug)]
pub struct Bundle<'a> {
    entries: Vec<(&'a str, &'a [u8])>,
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = bytes.split_at_checked(n)?;
    *bytes = tail;
    Some(head)
}

fn take_array<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = bytes.split_first_chunk::<N>()?;
    *bytes = tail;
    Some(*head)
}

impl<'a> Bundle<'a> {
    pub fn is_bundle(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    pub fn parse(mut bytes: &'a [u8]) -> Result<Self, BundleError> {
        if take(&mut bytes, 8) != Some(MAGIC.as_slice()) {
            return Err(BundleError::NotABundle);
        }
        let u32_at = |b: &mut &'a [u8]| take_array(b).map(u32::from_le_bytes);
        let version = u32_at(&mut bytes).ok_or(BundleError::NotABundle)?;
        if version != VERSION {
            return Err(BundleError::Version(version));
        }
        // Each entry takes at least 12 bytes, so a huge count fails quickly
        // instead of allocating for it.
        let count = u32_at(&mut bytes).ok_or(BundleError::NotABundle)? as usize;
        let mut entries = Vec::new();
        for entry in 0..count {
            let truncated = BundleError::Truncated { entry };
            let name_len = u32_at(&mut bytes).ok_or(truncated.clone())? as usize;
            let data_len = take_array(&mut bytes).map(u64::from_le_bytes).ok_or(truncated.clone())?;
            let name = take(&mut bytes, name_len).ok_or(truncated.clone())?;
            // A length past the address space is as truncated as one past the ramdisk.
            let data = usize::try_from(data_len).ok().and_then(|n| take(&mut bytes, n)).ok_or(truncated)?;
            let name = core::str::from_utf8(name).map_err(|_| BundleError::BadName { entry })?;
            entries.push((name, data));
        }
        Ok(Bundle { entries })
    }

    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.entries.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.entries.iter().map(|(n, _)| *n)
    }

    /// Every entry as (name, data), in order, repeated names included.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.entries.iter().copied()
    }
}

/// Packs entries into bundle bytes (used by `cargo xtask`).
pub fn write(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (name, data) in entries {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_bundles_read_back() {
        let bytes = write(&[("cmdline".into(), b"selftest".to_vec()), ("guest.bin".into(), vec![0xf4; 300])]);
        let b = Bundle::parse(&bytes).unwrap();
        assert_eq!(b.get("cmdline"), Some(&b"selftest"[..]));
        assert_eq!(b.get("guest.bin").unwrap().len(), 300);
        assert_eq!(b.get("missing"), None);
        assert_eq!(b.names().collect::<Vec<_>>(), ["cmdline", "guest.bin"]);
    }

    #[test]
    fn damaged_bundles_are_refused_with_a_reason() {
        assert_eq!(Bundle::parse(b"selftest exit=qemu").unwrap_err(), BundleError::NotABundle);
        let mut bytes = write(&[("a".into(), vec![1, 2, 3])]);
        bytes[8] = 9;
        assert_eq!(Bundle::parse(&bytes).unwrap_err(), BundleError::Version(9));
        let bytes = write(&[("a".into(), vec![1, 2, 3])]);
        for cut in 16..bytes.len() {
            assert_eq!(Bundle::parse(&bytes[..cut]).unwrap_err(), BundleError::Truncated { entry: 0 }, "cut at {cut}");
        }
        let mut bytes = write(&[("a".into(), vec![])]);
        bytes[28] = 0xff;
        assert_eq!(Bundle::parse(&bytes).unwrap_err(), BundleError::BadName { entry: 0 });
    }
}
