//! What the firmware's ACPI tables say about the machine: CPUs and I/O APICs from
//! the MADT, and the HPET and ACPI PM timer when present.

use crate::memory::phys_to_virt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, HpetInfo, PhysicalMapping};
use alloc::vec::Vec;
use core::ptr::NonNull;

#[derive(Clone)]
struct PhysMap;

impl AcpiHandler for PhysMap {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = NonNull::new(phys_to_virt(phys as u64) as *mut T).expect("ACPI table at a null address");
        // SAFETY: the bootloader's physical mapping covers all RAM and the first 4 GiB,
        // where firmware keeps ACPI tables; nothing needs unmapping.
        unsafe { PhysicalMapping::new(phys, virt, size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub apic_id: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct IoApic {
    pub id: u8,
    pub address: u64,
    pub gsi_base: u32,
}

#[derive(Debug, Clone, Copy)]
pub enum PmTimerPort {
    Io { port: u16, bits32: bool },
}

#[derive(Debug)]
pub struct Platform {
    pub local_apic_address: u64,
    /// Enabled (or online-capable) CPUs in MADT order; the BSP is among them.
    pub cpus: Vec<Cpu>,
    pub io_apics: Vec<IoApic>,
    pub hpet_address: Option<u64>,
    pub pm_timer: Option<PmTimerPort>,
}

#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug in the boot error message
pub enum PlatformError {
    NoRsdp,
    Tables(acpi::AcpiError),
    NoMadt,
}

/// Reads the ACPI tables at `rsdp` (from the boot information).
pub fn discover(rsdp: Option<u64>) -> Result<Platform, PlatformError> {
    let rsdp = rsdp.ok_or(PlatformError::NoRsdp)?;
    // SAFETY: the bootloader reports the firmware's RSDP address.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMap, rsdp as usize) }.map_err(PlatformError::Tables)?;
    let madt = tables.find_table::<Madt>().map_err(|_| PlatformError::NoMadt)?;
    let mut platform = Platform {
        local_apic_address: madt.get().local_apic_address as u64,
        cpus: Vec::new(),
        io_apics: Vec::new(),
        hpet_address: HpetInfo::new(&tables).ok().map(|h| h.base_address as u64),
        pm_timer: None,
    };
    // Bit 0 = enabled, bit 1 = online capable (may be brought up later).
    let usable = |flags: u32| flags & 0b11 != 0;
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) if usable(e.flags) => platform.cpus.push(Cpu { apic_id: e.apic_id as u32 }),
            MadtEntry::LocalX2Apic(e) if usable(e.flags) => {
                let id = { e.x2apic_id };
                if !platform.cpus.iter().any(|c| c.apic_id == id) {
                    platform.cpus.push(Cpu { apic_id: id });
                }
            }
            MadtEntry::IoApic(e) => platform.io_apics.push(IoApic {
                id: e.io_apic_id,
                address: { e.io_apic_address } as u64,
                gsi_base: { e.global_system_interrupt_base },
            }),
            MadtEntry::LocalApicAddressOverride(e) => platform.local_apic_address = e.local_apic_address,
            _ => {}
        }
    }
    if let Ok(fadt) = tables.find_table::<acpi::fadt::Fadt>() {
        if let Ok(Some(block)) = fadt.pm_timer_block() {
            if block.address_space == acpi::address::AddressSpace::SystemIo && block.address != 0 {
                let flags = fadt.flags;
                let bits32 = flags.pm_timer_is_32_bit();
                platform.pm_timer = Some(PmTimerPort::Io { port: block.address as u16, bits32 });
            }
        }
    }
    Ok(platform)
}
