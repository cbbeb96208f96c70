//! QEMU's firmware configuration device (fw_cfg), the port-I/O form x86 guests
//! find at 0x510 (selector) and 0x511 (data), following QEMU's
//! docs/specs/fw_cfg.rst. Test kernels written for QEMU's `-kernel` read it to
//! learn how many CPUs to start and how much RAM they have; without it they
//! read all-ones and wait for 65,535 CPUs.
//!
//! A 16-bit write to the selector picks an item and rewinds its data offset;
//! each read of the data port returns the item's next bytes, and 0 once past
//! its end (an unknown item has no bytes, so it reads 0 throughout). Items are
//! read-only: data writes are ignored, as QEMU has ignored them since v2.4
//! outside its DMA interface, which Basalt does not offer (bit 1 of
//! `FW_CFG_ID` is clear and the DMA address port 0x514 is left unclaimed).
//!
//! Basalt has no guest firmware, so none of the files QEMU lists for its
//! firmware (ACPI tables and their loader script, e820, boot order, SMBIOS)
//! has a reader here: a VM's file directory is empty unless the VMM adds a
//! file with `add_file`.
#![deny(clippy::arithmetic_side_effects)]

use crate::bus::{all_ones, PortDevice, Request};
use alloc::vec::Vec;

/// Item keys: the generic items QEMU's spec and its `fw_cfg` key list name.
pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// The first key files get (the directory lists them).
pub const FW_CFG_FILE_FIRST: u16 = 0x20;

/// Selector bit 14: "write this item". Writes are ignored, so it selects the
/// same item as without it.
const WRITE_CHANNEL: u16 = 0x4000;
/// `FW_CFG_ID` bit 0: the selector/data interface (always). Bit 1 (DMA) stays clear.
const ID_TRADITIONAL: u32 = 1 << 0;
/// What `FW_CFG_SIGNATURE` holds.
pub const SIGNATURE: &[u8; 4] = b"QEMU";

/// Files a VM may have: QEMU's minimum number of file slots, far more than
/// Basalt adds, and a bound on what the directory costs.
pub const MAX_FILES: usize = 16;
/// A directory entry's name field, terminating NUL included.
pub const FILE_NAME_BYTES: usize = 56;
/// One directory entry: size (BE32), select (BE16), reserved (16 bits), name.
const DIR_ENTRY_BYTES: usize = 4 + 2 + 2 + FILE_NAME_BYTES;

/// The selector port's offset from `layout::FW_CFG`, and the data port's.
pub const SELECTOR: u16 = 0;
pub const DATA: u16 = 1;
/// The ports fw_cfg decodes from `layout::FW_CFG`.
pub const PORTS: u16 = 2;

/// Why `add_file` refused a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileError {
    /// MAX_FILES already.
    DirectoryFull,
    /// Empty, not printable ASCII, or no room for the NUL in FILE_NAME_BYTES.
    BadName,
    /// A file of that name is listed already.
    Duplicate,
    /// Larger than the directory's 32-bit size field.
    TooLarge,
}

struct Item {
    /// The key, with the write bit cleared (see `WRITE_CHANNEL`).
    key: u16,
    data: Vec<u8>,
}

/// One VM's fw_cfg: its items and what the guest selected.
pub struct FwCfg {
    items: Vec<Item>,
    /// Names of the files, in key order (FW_CFG_FILE_FIRST + index).
    files: Vec<Vec<u8>>,
    /// Index into `items` of the selected item; None for a key with no item.
    selected: Option<usize>,
    /// The next byte the data port returns; it stops at the item's end.
    offset: usize,
}

impl FwCfg {
    /// The items for a VM with `cpus` vCPUs (APIC ids 0 to cpus - 1, none
    /// hot-pluggable, so the maximum is the count) and `ram_bytes` of RAM.
    pub fn new(cpus: u16, ram_bytes: u64) -> FwCfg {
        let mut fw_cfg = FwCfg { items: Vec::new(), files: Vec::new(), selected: None, offset: 0 };
        fw_cfg.set(FW_CFG_SIGNATURE, SIGNATURE.to_vec());
        fw_cfg.set(FW_CFG_ID, ID_TRADITIONAL.to_le_bytes().to_vec());
        fw_cfg.set(FW_CFG_RAM_SIZE, ram_bytes.to_le_bytes().to_vec());
        fw_cfg.set(FW_CFG_NB_CPUS, cpus.to_le_bytes().to_vec());
        fw_cfg.set(FW_CFG_MAX_CPUS, cpus.to_le_bytes().to_vec());
        fw_cfg.set(FW_CFG_FILE_DIR, fw_cfg.directory());
        fw_cfg
    }

    /// Adds a file (for the VMM, never the guest); returns its key.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FileError> {
        if self.files.len() >= MAX_FILES {
            return Err(FileError::DirectoryFull);
        }
        let printable = name.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if name.is_empty() || name.len() >= FILE_NAME_BYTES || !printable {
            return Err(FileError::BadName);
        }
        if self.files.iter().any(|f| f.as_slice() == name.as_bytes()) {
            return Err(FileError::Duplicate);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FileError::TooLarge);
        }
        let key = file_key(self.files.len());
        self.files.push(name.as_bytes().to_vec());
        self.set(key, data);
        let directory = self.directory();
        self.set(FW_CFG_FILE_DIR, directory);
        Ok(key)
    }

    /// Sets (or replaces) an item. Replacing keeps the guest's selection and
    /// offset, which only matters for the directory while files are added.
    fn set(&mut self, key: u16, data: Vec<u8>) {
        match self.items.iter_mut().find(|item| item.key == key) {
            Some(item) => item.data = data,
            None => self.items.push(Item { key, data }),
        }
    }

    /// The directory: the file count (BE32), then per file its size (BE32),
    /// key (BE16), two reserved bytes and its name, NUL-padded to 56 bytes.
    fn directory(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DIR_ENTRY_BYTES.saturating_mul(self.files.len()).saturating_add(4));
        // Both bounded by MAX_FILES and add_file's checks.
        out.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (index, name) in self.files.iter().enumerate() {
            let key = file_key(index);
            let size = self.items.iter().find(|item| item.key == key).map_or(0, |item| item.data.len());
            out.extend_from_slice(&(size as u32).to_be_bytes());
            out.extend_from_slice(&key.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            let mut field = [0u8; FILE_NAME_BYTES];
            field[..name.len()].copy_from_slice(name);
            out.extend_from_slice(&field);
        }
        out
    }

    /// A selector write: the item `key` names (bit 14 ignored, bit 15 kept:
    /// architecture-specific keys are items of their own, none here), from its
    /// first byte.
    pub fn select(&mut self, key: u16) {
        let key = key & !WRITE_CHANNEL;
        self.selected = self.items.iter().position(|item| item.key == key);
        self.offset = 0;
    }

    /// The next byte of the selected item: 0 past its end or with no item.
    pub fn read_byte(&mut self) -> u8 {
        let Some(data) = self.selected.and_then(|index| self.items.get(index)).map(|item| &item.data) else {
            return 0;
        };
        match data.get(self.offset) {
            Some(&byte) => {
                // Below data.len(), so it cannot overflow.
                self.offset = self.offset.saturating_add(1);
                byte
            }
            None => 0,
        }
    }
}

/// The key of file `index`; MAX_FILES keeps it below 0x30.
fn file_key(index: usize) -> u16 {
    FW_CFG_FILE_FIRST.saturating_add(u16::try_from(index).unwrap_or(u16::MAX))
}

impl PortDevice for FwCfg {
    fn name(&self) -> &'static str {
        "fw_cfg"
    }

    /// The data port: `size` successive bytes, the first in the low byte (the
    /// spec's "string-preserving" order, as memory holds them). QEMU's port
    /// takes byte reads only; a wider read here simply returns more bytes, so
    /// a kernel that reads a 16-bit count with one `in` still gets the count.
    /// The selector is write-only and reads 0.
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        if offset != DATA {
            return 0;
        }
        let mut bytes = [0u8; 4];
        for byte in bytes.iter_mut().take(size.into()) {
            *byte = self.read_byte();
        }
        u32::from_le_bytes(bytes) & all_ones(size) as u32
    }

    /// Only a 16-bit write to the selector does anything: the selector is 16
    /// bits wide, QEMU ignores other widths there, and data writes are ignored.
    fn write(&mut self, offset: u16, size: u8, value: u32) -> Option<Request> {
        if offset == SELECTOR && size == 2 {
            self.select(value as u16);
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// Selects `key` with a 16-bit write and reads `n` bytes a byte at a time,
    /// as QEMU's guests do.
    fn item(fw: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        assert_eq!(fw.write(SELECTOR, 2, key as u32), None);
        (0..n).map(|_| fw.read(DATA, 1) as u8).collect()
    }

    #[test]
    fn signature_id_cpus_and_ram_read_byte_exact() {
        let mut fw = FwCfg::new(2, 256 << 20);
        assert_eq!(item(&mut fw, FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(item(&mut fw, FW_CFG_ID, 4), [1, 0, 0, 0], "traditional interface, no DMA");
        assert_eq!(item(&mut fw, FW_CFG_NB_CPUS, 2), [2, 0]);
        assert_eq!(item(&mut fw, FW_CFG_MAX_CPUS, 2), [2, 0]);
        assert_eq!(item(&mut fw, FW_CFG_RAM_SIZE, 8), [0, 0, 0, 0x10, 0, 0, 0, 0]);
        let big = FwCfg::new(300, 0x1_2345_6789_abcd).items.into_iter().map(|i| (i.key, i.data)).collect::<Vec<_>>();
        assert!(big.contains(&(FW_CFG_NB_CPUS, vec![0x2c, 0x01])));
        assert!(big.contains(&(FW_CFG_RAM_SIZE, vec![0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01, 0x00])));
    }

    #[test]
    fn past_the_end_and_unknown_keys_read_zero() {
        let mut fw = FwCfg::new(1, 16 << 20);
        assert_eq!(item(&mut fw, FW_CFG_SIGNATURE, 7), [b'Q', b'E', b'M', b'U', 0, 0, 0]);
        for _ in 0..10_000 {
            assert_eq!(fw.read(DATA, 1), 0);
        }
        for key in [0x02, 0x04, 0x18, 0x1a, 0x20, 0x3fff, 0x8000, 0x8003, 0xffff] {
            assert_eq!(item(&mut fw, key, 8), [0; 8], "key {key:#x}");
        }
        // Nothing selected yet reads 0 too.
        assert_eq!(FwCfg::new(1, 0).read(DATA, 1), 0);
    }

    #[test]
    fn a_selector_write_rewinds_and_the_write_bit_selects_the_same_item() {
        let mut fw = FwCfg::new(4, 0);
        assert_eq!(item(&mut fw, FW_CFG_SIGNATURE, 2), b"QE");
        assert_eq!(item(&mut fw, FW_CFG_SIGNATURE, 4), b"QEMU", "from the start again");
        assert_eq!(item(&mut fw, WRITE_CHANNEL | FW_CFG_NB_CPUS, 2), [4, 0]);
        // Bit 15 makes it an architecture-specific key, which is another item.
        assert_eq!(item(&mut fw, 0x8000 | FW_CFG_NB_CPUS, 2), [0, 0]);
    }

    #[test]
    fn wider_data_reads_return_successive_bytes_low_byte_first() {
        let mut fw = FwCfg::new(2, 0);
        fw.write(SELECTOR, 2, FW_CFG_SIGNATURE as u32);
        assert_eq!(fw.read(DATA, 2), u32::from_le_bytes(*b"QE\0\0"));
        assert_eq!(fw.read(DATA, 4), u32::from_le_bytes(*b"MU\0\0"), "two bytes left, then zeros");
        fw.write(SELECTOR, 2, FW_CFG_NB_CPUS as u32);
        assert_eq!(fw.read(DATA, 2), 2, "a 16-bit count read in one go");
    }

    #[test]
    fn only_16_bit_selector_writes_select_and_data_writes_change_nothing() {
        let mut fw = FwCfg::new(2, 0);
        fw.write(SELECTOR, 2, FW_CFG_SIGNATURE as u32);
        assert_eq!(fw.read(DATA, 1), b'Q' as u32);
        assert_eq!(fw.write(SELECTOR, 1, FW_CFG_NB_CPUS as u32), None);
        assert_eq!(fw.write(SELECTOR, 4, FW_CFG_NB_CPUS as u32), None);
        assert_eq!(fw.write(DATA, 1, 0x55), None);
        assert_eq!(fw.write(DATA, 4, 0x5555_5555), None);
        assert_eq!(fw.read(DATA, 1), b'E' as u32, "still the signature, where it was");
        assert_eq!(fw.read(SELECTOR, 2), 0, "the selector is write-only");
        assert_eq!(fw.read(SELECTOR, 1), 0);
        assert_eq!(fw.read(DATA, 1), b'M' as u32, "a selector read takes no data byte");
    }

    #[test]
    fn an_empty_directory_is_a_zero_count() {
        let mut fw = FwCfg::new(1, 0);
        assert_eq!(item(&mut fw, FW_CFG_FILE_DIR, 6), [0; 6]);
    }

    #[test]
    fn the_directory_lists_files_byte_exact() {
        let mut fw = FwCfg::new(1, 0);
        assert_eq!(fw.add_file("etc/boot-fail-wait", vec![5, 0, 0, 0]), Ok(0x20));
        let name55 = "n".repeat(55);
        assert_eq!(fw.add_file(&name55, vec![0xab; 300]), Ok(0x21));

        let dir = item(&mut fw, FW_CFG_FILE_DIR, 4 + 2 * 64 + 4);
        let mut expected = vec![0, 0, 0, 2];
        expected.extend_from_slice(&[0, 0, 0, 4, 0x00, 0x20, 0, 0]);
        let mut name = [0u8; 56];
        name[..18].copy_from_slice(b"etc/boot-fail-wait");
        expected.extend_from_slice(&name);
        expected.extend_from_slice(&[0, 0, 0x01, 0x2c, 0x00, 0x21, 0, 0]);
        expected.extend_from_slice(&[b'n'; 55]);
        expected.push(0);
        expected.extend_from_slice(&[0; 4]);
        assert_eq!(dir, expected);

        assert_eq!(item(&mut fw, 0x20, 6), [5, 0, 0, 0, 0, 0]);
        assert_eq!(item(&mut fw, 0x21, 301)[299..], [0xab, 0]);
    }

    #[test]
    fn files_are_checked_and_bounded() {
        let mut fw = FwCfg::new(1, 0);
        assert_eq!(fw.add_file("", vec![]), Err(FileError::BadName));
        assert_eq!(fw.add_file(&"x".repeat(56), vec![]), Err(FileError::BadName), "no room for the NUL");
        assert_eq!(fw.add_file("a\0b", vec![]), Err(FileError::BadName));
        assert_eq!(fw.add_file("caf\u{e9}", vec![]), Err(FileError::BadName));
        assert_eq!(fw.add_file("etc/x", vec![]), Ok(0x20));
        assert_eq!(fw.add_file("etc/x", vec![]), Err(FileError::Duplicate));
        for i in 1..MAX_FILES {
            assert_eq!(fw.add_file(&alloc::format!("opt/f{i}"), vec![i as u8]), Ok(0x20 + i as u16));
        }
        assert_eq!(fw.add_file("opt/one-more", vec![]), Err(FileError::DirectoryFull));
        assert_eq!(item(&mut fw, FW_CFG_FILE_DIR, 4), [0, 0, 0, MAX_FILES as u8]);
        assert_eq!(item(&mut fw, 0x2f, 2), [15, 0]);
    }
}
