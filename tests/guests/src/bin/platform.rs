//! What a test kernel booted like QEMU's `-kernel` probes before it starts:
//! fw_cfg (signature, features, CPU count, RAM size, file directory), PCI bus 0
//! through configuration mechanism #1, and system control port A. Prints each
//! finding, exits with status 33 when every check holds.
#![no_std]
#![no_main]

use basalt_test_guests::{check, entry, exit, inb, outb, println};
use core::arch::asm;

entry!(main);

const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
const FW_CFG_DMA: u16 = 0x514;
const PCI_ADDRESS: u16 = 0xcf8;
const PCI_DATA: u16 = 0xcfc;
const SYSTEM_CONTROL_A: u16 = 0x92;

fn outw(port: u16, value: u16) {
    // SAFETY: port I/O in a guest; Basalt emulates every port.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack)) }
}

fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as in `outw`.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack)) }
    value
}

fn outl(port: u16, value: u32) {
    // SAFETY: as in `outw`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) }
}

fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `outw`.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack)) }
    value
}

/// Reads fw_cfg item `key` into `out` a byte at a time, as QEMU's guests do.
fn fw_cfg(key: u16, out: &mut [u8]) {
    outw(FW_CFG_SELECTOR, key);
    for byte in out {
        *byte = inb(FW_CFG_DATA);
    }
}

fn fw_cfg_le(key: u16, bytes: usize) -> u64 {
    let mut buf = [0u8; 8];
    fw_cfg(key, &mut buf[..bytes]);
    u64::from_le_bytes(buf)
}

fn fw_cfg_checks() -> bool {
    let mut ok = true;
    let mut signature = [0u8; 6];
    fw_cfg(0x00, &mut signature);
    println!("fw_cfg signature {}", core::str::from_utf8(&signature[..4]).unwrap_or("?"));
    ok &= check("fw_cfg signature", &signature[..4] == b"QEMU");
    ok &= check("fw_cfg reads 0 past an item's end", signature[4..] == [0, 0]);
    let id = fw_cfg_le(0x01, 4);
    println!("fw_cfg id {id:#x}");
    ok &= check("fw_cfg traditional interface, no DMA", id == 1);
    let cpus = fw_cfg_le(0x05, 2);
    println!("fw_cfg cpus {cpus}");
    ok &= check("fw_cfg cpus", cpus == 2);
    let max_cpus = fw_cfg_le(0x0f, 2);
    println!("fw_cfg max cpus {max_cpus}");
    ok &= check("fw_cfg max cpus", max_cpus == 2);
    let ram = fw_cfg_le(0x03, 8);
    println!("fw_cfg ram {} MiB", ram >> 20);
    ok &= check("fw_cfg ram", ram == 32 << 20);
    let mut count = [0u8; 4];
    fw_cfg(0x19, &mut count);
    println!("fw_cfg files {}", u32::from_be_bytes(count));
    ok &= check("fw_cfg file directory", u32::from_be_bytes(count) == 0);
    ok &= check("fw_cfg unknown item reads 0", fw_cfg_le(0x3fff, 8) == 0);
    // The count again with one 16-bit read, as some kernels read it.
    outw(FW_CFG_SELECTOR, 0x05);
    ok &= check("fw_cfg cpus in one 16-bit read", inw(FW_CFG_DATA) == 2);
    // QEMU's DMA address register; not offered, so nothing answers there.
    ok &= check("fw_cfg dma register absent", inl(FW_CFG_DMA) == 0xffff_ffff);
    ok
}

fn pci_read(bus: u32, device: u32, function: u32, register: u32) -> u32 {
    outl(PCI_ADDRESS, 1 << 31 | bus << 16 | device << 11 | function << 8 | register);
    inl(PCI_DATA)
}

fn pci_checks() -> bool {
    let mut ok = true;
    outl(PCI_ADDRESS, 0x8000_0000);
    ok &= check("pci config address reads back", inl(PCI_ADDRESS) == 0x8000_0000);
    let mut found = 0;
    for device in 0..32 {
        for function in 0..8 {
            let id = pci_read(0, device, function, 0);
            if id == 0xffff_ffff {
                if function == 0 {
                    break;
                }
                continue;
            }
            let class = pci_read(0, device, function, 8) >> 8;
            println!("pci 00:{device:02x}.{function} {:04x}:{:04x} class {class:06x}", id & 0xffff, id >> 16);
            found += 1;
            ok &= check("pci host bridge", (device, function, id, class) == (0, 0, 0x1237_8086, 0x06_0000));
            let header_type = pci_read(0, device, function, 0x0c) >> 16 & 0xff;
            if function == 0 && header_type & 0x80 == 0 {
                break;
            }
        }
    }
    println!("pci bus 0: {found} function(s)");
    ok &= check("pci bus 0 holds only the host bridge", found == 1);
    // The class as Linux's sanity check reads it: 16 bits at register 0x0a.
    outl(PCI_ADDRESS, 0x8000_0008);
    ok &= check("pci 16-bit class read", inw(PCI_DATA + 2) == 0x0600);
    // Vendor and device ids are read-only.
    outl(PCI_ADDRESS, 0x8000_0000);
    outl(PCI_DATA, 0);
    ok &= check("pci ids are read-only", inl(PCI_DATA) == 0x1237_8086);
    outl(PCI_ADDRESS, 0);
    ok &= check("pci data reads all-ones with the enable bit clear", inl(PCI_DATA) == 0xffff_ffff);
    ok
}

fn system_control_checks() -> bool {
    let value = inb(SYSTEM_CONTROL_A);
    println!("port 0x92 {value:#04x}");
    let mut ok = check("port 0x92 a20 on", value & 2 != 0);
    // Clearing the A20 bit does not take: A20 stays enabled.
    outb(SYSTEM_CONTROL_A, 0);
    ok &= check("port 0x92 a20 stays on", inb(SYSTEM_CONTROL_A) == 2);
    ok
}

fn main() -> ! {
    println!("platform guest: hello");
    let mut ok = fw_cfg_checks();
    ok &= pci_checks();
    ok &= system_control_checks();
    println!("platform guest: {}", if ok { "all checks passed" } else { "some checks FAILED" });
    exit(if ok { 0x10 } else { 0x11 })
}
