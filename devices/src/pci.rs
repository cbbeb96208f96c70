//! The PCI host bridge: configuration mechanism #1 at CONFIG_ADDRESS (0xcf8,
//! 32-bit) and CONFIG_DATA (0xcfc-0xcff, 8, 16 or 32 bits at any offset), with
//! one function on bus 0, the host bridge at 00:00.0. Every other bus, device
//! and function reads all-ones (nothing answers there) and takes no writes.
//!
//! The bridge says it is Intel's 82441FX, the host bridge of the i440FX
//! chipset (8086:1237): a plain PCI host bridge reached through mechanism #1
//! alone, which is exactly what Basalt offers. A Q35 host bridge (8086:29c0)
//! would claim PCI Express with an ECAM window (MCFG) that is not there; the
//! rest of Basalt's platform (8259 pair with ELCR, PIT, RTC, reset at 0xcf9)
//! is PIIX-era too, as QEMU's and Bochs' default `pc` machines are. Linux
//! knows the 82441FX (a quirk that only notes it) and needs no driver for it.
//!
//! Its registers are read-only but for those a host bridge lets software
//! change (see `write_config_byte`); a write to any other is ignored. Nothing
//! it holds is a resource: no BARs, no interrupt, no capabilities.
#![deny(clippy::arithmetic_side_effects)]

use crate::bus::{all_ones, PortDevice, Request};

/// Offsets from `layout::PCI_CONFIG_ADDRESS`: the address register (32-bit
/// accesses at offset 0 only) and the four data ports.
pub const ADDRESS: u16 = 0;
pub const DATA: u16 = 4;
/// The ports the host bridge decodes from `layout::PCI_CONFIG_ADDRESS`.
pub const PORTS: u16 = 8;

/// CONFIG_ADDRESS bit 31: accesses to CONFIG_DATA are configuration cycles.
const ENABLE: u32 = 1 << 31;
/// The bits CONFIG_ADDRESS keeps: enable, bus (23:16), device (15:11),
/// function (10:8) and the dword register number (7:2). Bits 30:24 are
/// reserved and bits 1:0 select type 0/1 cycles on the bus; both read 0.
const ADDRESS_BITS: u32 = ENABLE | 0x00ff_fffc;

pub const VENDOR_INTEL: u16 = 0x8086;
/// The 82441FX PMC, i440FX's host bridge.
pub const DEVICE_82441FX: u16 = 0x1237;
/// The revision QEMU's and Bochs' i440FX report.
const REVISION: u8 = 0x02;
/// Base class 0x06 (bridge), subclass 0x00 (host bridge), interface 0.
pub const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// Command register: memory space and bus master are always on (the bridge
/// is the path from the CPUs to memory); parity error response and SERR#
/// enable are the bits software may change.
const COMMAND_FIXED: u16 = (1 << 1) | (1 << 2);
const COMMAND_WRITABLE: u16 = (1 << 6) | (1 << 8);
/// Latency timer: bits 7:3 are the count software sets, 2:0 read 0.
const LATENCY_WRITABLE: u8 = 0xf8;

/// The configuration space of one bus as mechanism #1 reaches it.
pub struct PciHost {
    address: u32,
    command: u16,
    latency_timer: u8,
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    pub const fn new() -> PciHost {
        PciHost { address: 0, command: COMMAND_FIXED, latency_timer: 0 }
    }

    /// Byte `register` of the host bridge's configuration space (the 64-byte
    /// type 0 header; the chipset registers above it read 0 here).
    fn config_byte(&self, register: u8) -> u8 {
        let [vendor_lo, vendor_hi] = VENDOR_INTEL.to_le_bytes();
        let [device_lo, device_hi] = DEVICE_82441FX.to_le_bytes();
        let [command_lo, command_hi] = self.command.to_le_bytes();
        let [interface, subclass, class, _] = CLASS_HOST_BRIDGE.to_le_bytes();
        match register {
            0x00 => vendor_lo,
            0x01 => vendor_hi,
            0x02 => device_lo,
            0x03 => device_hi,
            0x04 => command_lo,
            0x05 => command_hi,
            0x08 => REVISION,
            0x09 => interface,
            0x0a => subclass,
            0x0b => class,
            0x0d => self.latency_timer,
            // Status (no capability list, no errors), cache line size, header
            // type 0 (one function), BIST, BARs, subsystem ids, expansion ROM,
            // capability pointer, interrupt line and pin: all 0.
            _ => 0,
        }
    }

    /// A byte written to `register` of the host bridge: only the command bits
    /// and the latency timer take it.
    fn write_config_byte(&mut self, register: u8, byte: u8) {
        let [writable_lo, writable_hi] = COMMAND_WRITABLE.to_le_bytes();
        match register {
            0x04 => self.command = (self.command & !u16::from(writable_lo)) | u16::from(byte & writable_lo),
            0x05 => {
                let high = u16::from(writable_hi) << 8;
                self.command = (self.command & !high) | (u16::from(byte) << 8 & high);
            }
            0x0d => self.latency_timer = byte & LATENCY_WRITABLE,
            _ => {}
        }
    }

    /// The register CONFIG_DATA reaches for a data port `offset` (4 to 7), or
    /// None when no configuration cycle happens or nothing answers it: the
    /// enable bit clear, or a bus, device or function other than 00:00.0.
    fn target(&self, offset: u16) -> Option<u8> {
        let bus_device_function = (self.address >> 8) & 0xffff;
        if self.address & ENABLE == 0 || bus_device_function != 0 {
            return None;
        }
        let byte_in_dword = offset.checked_sub(DATA).filter(|&b| b < 4)? as u8;
        // The dword's number (bits 7:2) plus 0-3 stays below 256.
        Some((self.address as u8 & 0xfc) | byte_in_dword)
    }

    /// The `size` bytes from `register` on: each byte past the 256-byte space
    /// (a wide access at 0xcfd-0xcff) reads as nothing there.
    fn read_config(&self, register: u8, size: u8) -> u32 {
        let mut bytes = [0xffu8; 4];
        for (i, byte) in bytes.iter_mut().enumerate().take(size.into()) {
            if let Some(at) = register.checked_add(i as u8) {
                *byte = self.config_byte(at);
            }
        }
        u32::from_le_bytes(bytes) & all_ones(size) as u32
    }
}

impl PortDevice for PciHost {
    fn name(&self) -> &'static str {
        "pci-host"
    }

    fn read(&mut self, offset: u16, size: u8) -> u32 {
        if offset == ADDRESS && size == 4 {
            return self.address;
        }
        match self.target(offset) {
            Some(register) => self.read_config(register, size),
            // Byte and word accesses to 0xcf8-0xcfb are not CONFIG_ADDRESS:
            // they go out as plain I/O that nothing claims, as does
            // CONFIG_DATA when no configuration cycle is made or answered.
            None => all_ones(size) as u32,
        }
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) -> Option<Request> {
        if offset == ADDRESS {
            if size == 4 {
                self.address = value & ADDRESS_BITS;
            }
            return None;
        }
        if let Some(register) = self.target(offset) {
            for (i, byte) in value.to_le_bytes().into_iter().enumerate().take(size.into()) {
                if let Some(at) = register.checked_add(i as u8) {
                    self.write_config_byte(at, byte);
                }
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn address(bus: u32, device: u32, function: u32, register: u32) -> u32 {
        ENABLE | bus << 16 | device << 11 | function << 8 | register
    }

    /// A 32-bit configuration read, as an OS does it.
    fn read32(pci: &mut PciHost, bus: u32, device: u32, function: u32, register: u32) -> u32 {
        pci.write(ADDRESS, 4, address(bus, device, function, register));
        pci.read(DATA, 4)
    }

    #[test]
    fn the_host_bridge_answers_at_00_00_0() {
        let mut pci = PciHost::new();
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x00), 0x1237_8086);
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x04), 0x0000_0006, "memory and bus master on; status 0");
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x08), 0x0600_0002, "host bridge, revision 2");
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x0c), 0, "header type 0, single function");
        for register in (0x10..0x100).step_by(4) {
            assert_eq!(read32(&mut pci, 0, 0, 0, register), 0, "register {register:#x}");
        }
    }

    #[test]
    fn narrow_data_reads_pick_bytes_of_the_dword() {
        let mut pci = PciHost::new();
        pci.write(ADDRESS, 4, address(0, 0, 0, 0x08));
        assert_eq!(pci.read(DATA + 2, 2), 0x0600, "class at 0x0a, as Linux's sanity check reads it");
        assert_eq!(pci.read(DATA + 3, 1), 0x06);
        assert_eq!(pci.read(DATA, 1), 0x02);
        pci.write(ADDRESS, 4, address(0, 0, 0, 0x00));
        assert_eq!(pci.read(DATA + 2, 2), 0x1237);
        assert_eq!(pci.read(DATA + 1, 2), 0x3780, "an unaligned word");
        assert_eq!(pci.read(DATA + 3, 4), 0x0000_0612, "a dword from 0xcff runs into the next register");
        pci.write(ADDRESS, 4, address(0, 0, 0, 0xfc));
        assert_eq!(pci.read(DATA + 3, 4), 0xffff_ff00, "bytes past the 256-byte space");
    }

    #[test]
    fn every_other_function_reads_all_ones_and_takes_no_writes() {
        let mut pci = PciHost::new();
        for (bus, device, function) in [(0, 0, 1), (0, 0, 7), (0, 1, 0), (0, 31, 0), (1, 0, 0), (255, 31, 7)] {
            assert_eq!(read32(&mut pci, bus, device, function, 0), u32::MAX, "{bus:02x}:{device:02x}.{function}");
            assert_eq!(pci.read(DATA + 2, 2), 0xffff);
            assert_eq!(pci.read(DATA + 1, 1), 0xff);
            pci.write(DATA, 4, 0);
            pci.write(DATA + 1, 1, 0);
        }
        assert_eq!(read32(&mut pci, 0, 0, 0, 0), 0x1237_8086, "the writes reached nothing");
        assert_eq!(read32(&mut pci, 0, 0, 0, 4), 0x0000_0006);
    }

    #[test]
    fn the_enable_bit_gates_configuration_cycles() {
        let mut pci = PciHost::new();
        pci.write(ADDRESS, 4, 0x0000_0000);
        assert_eq!(pci.read(DATA, 4), u32::MAX);
        assert_eq!(pci.read(DATA + 2, 2), 0xffff);
        pci.write(DATA + 1, 1, 0xff);
        pci.write(ADDRESS, 4, 0x0000_0004);
        pci.write(DATA, 2, 0xffff);
        assert_eq!(read32(&mut pci, 0, 0, 0, 4), 0x0000_0006, "no write got through");
    }

    #[test]
    fn config_address_keeps_its_defined_bits_and_only_32_bit_accesses() {
        let mut pci = PciHost::new();
        // Linux's check for mechanism #1: a byte to 0xcfb, then 0x80000000 read back.
        pci.write(3, 1, 0x01);
        pci.write(ADDRESS, 4, 0x8000_0000);
        assert_eq!(pci.read(ADDRESS, 4), 0x8000_0000);
        pci.write(ADDRESS, 4, 0xffff_ffff);
        assert_eq!(pci.read(ADDRESS, 4), 0x80ff_fffc, "reserved bits 30:24 and 1:0 read 0");
        pci.write(ADDRESS, 2, 0x1234);
        pci.write(2, 1, 0x12);
        assert_eq!(pci.read(ADDRESS, 4), 0x80ff_fffc, "narrow writes are not CONFIG_ADDRESS");
        assert_eq!(pci.read(ADDRESS, 2), 0xffff);
        assert_eq!(pci.read(2, 1), 0xff);
        // Register bits 1:0 are dropped: the data port offset picks the byte.
        pci.write(ADDRESS, 4, address(0, 0, 0, 0x0b));
        assert_eq!(pci.read(DATA, 4), 0x0600_0002);
    }

    /// The three port devices as the VMM registers them, on a real chipset:
    /// they fit beside each other and the chipset's own ports, and a byte at
    /// 0xcf9 is still the reset register inside the bridge's range.
    #[test]
    fn on_a_chipset_beside_the_reset_register_port_92_and_fw_cfg() {
        use crate::{fw_cfg, layout, Chipset, ChipsetConfig, FwCfg, SystemControlA};
        let config = ChipsetConfig {
            vcpus: 2,
            tsc_hz: 1_000_000_000,
            unix_time: 0,
            now: 0,
            com1_output: alloc::boxed::Box::new(|_: &[u8]| {}),
            com1_unbuffered: false,
        };
        let c = Chipset::new(config);
        c.ports.lock().register(layout::PCI_CONFIG_ADDRESS, PORTS, alloc::boxed::Box::new(PciHost::new())).unwrap();
        c.ports.lock().register(layout::SYSTEM_CONTROL_A, 1, alloc::boxed::Box::new(SystemControlA::new())).unwrap();
        c.ports
            .lock()
            .register(layout::FW_CFG, fw_cfg::PORTS, alloc::boxed::Box::new(FwCfg::new(2, 64 << 20)))
            .unwrap();

        c.port_write(layout::PCI_CONFIG_ADDRESS, 4, 0x8000_0008, 0);
        assert_eq!(c.port_read(layout::PCI_CONFIG_ADDRESS, 4, 0), 0x8000_0008);
        assert_eq!(c.port_read(layout::PCI_CONFIG_DATA, 4, 0), 0x0600_0002);
        assert_eq!(c.port_read(layout::PCI_CONFIG_DATA + 2, 2, 0), 0x0600);
        assert_eq!(c.port_write(layout::RESET_CONTROL, 1, 0x06, 0), Some(Request::Reset));
        assert_eq!(
            c.port_read(layout::PCI_CONFIG_ADDRESS, 4, 0),
            0x8000_0008,
            "the reset register is not CONFIG_ADDRESS"
        );

        assert_eq!(c.port_read(layout::SYSTEM_CONTROL_A, 1, 0), 0x02);
        assert_eq!(c.port_write(layout::SYSTEM_CONTROL_A, 1, 0x03, 0), Some(Request::Reset));

        c.port_write(layout::FW_CFG, 2, fw_cfg::FW_CFG_SIGNATURE as u32, 0);
        let signature: alloc::vec::Vec<u8> = (0..4).map(|_| c.port_read(layout::FW_CFG + 1, 1, 0) as u8).collect();
        assert_eq!(signature, b"QEMU");
        assert_eq!(c.port_read(0x514, 4, 0), u32::MAX, "no DMA register");
        assert_eq!(c.unclaimed().0.reads, 1);
    }

    #[test]
    fn only_command_bits_and_the_latency_timer_are_writable() {
        let mut pci = PciHost::new();
        for register in (0..0x40).step_by(4) {
            pci.write(ADDRESS, 4, address(0, 0, 0, register));
            pci.write(DATA, 4, 0xffff_ffff);
        }
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x00), 0x1237_8086);
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x04), 0x0000_0146, "status stays 0");
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x08), 0x0600_0002);
        assert_eq!(read32(&mut pci, 0, 0, 0, 0x0c), 0x0000_f800, "latency timer bits 7:3");
        for register in (0x10..0x40).step_by(4) {
            assert_eq!(read32(&mut pci, 0, 0, 0, register), 0, "BARs, ROM, ids, interrupt: {register:#x}");
        }
        // Memory space and bus master cannot be turned off.
        pci.write(ADDRESS, 4, address(0, 0, 0, 0x04));
        pci.write(DATA, 2, 0x0000);
        assert_eq!(pci.read(DATA, 2), 0x0006);
        pci.write(DATA + 1, 1, 0x01);
        assert_eq!(pci.read(DATA, 2), 0x0106, "SERR# enable through the high byte alone");
    }
}
