//! Where every device of a Basalt VM sits: one table that the chipset, the ACPI
//! tables and the loaders all read, so what the guest is told and what it finds
//! cannot disagree.

pub const LAPIC_BASE: u64 = 0xfee0_0000;
pub const LAPIC_SIZE: u64 = 0x1000;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// The ACPI tables, RSDP first, in the BIOS area the e820 map reserves.
pub const ACPI_TABLES: u64 = 0xe_0000;
pub const ACPI_TABLES_SIZE: u64 = 0x1_0000;

/// virtio-mmio slots: slot i at VIRTIO_BASE + i * VIRTIO_STRIDE, interrupting
/// on IOAPIC pin VIRTIO_GSI_BASE + i (level, active high), as the DSDT says.
pub const VIRTIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_STRIDE: u64 = 0x1000;
pub const VIRTIO_SIZE: u64 = 0x200;
pub const VIRTIO_GSI_BASE: u8 = 16;
pub const VIRTIO_SLOTS: usize = 8;

pub fn virtio_slot(index: usize) -> (u64, u8) {
    (VIRTIO_BASE + index as u64 * VIRTIO_STRIDE, VIRTIO_GSI_BASE + index as u8)
}

pub const PIC_MASTER: u16 = 0x20;
pub const PIC_SLAVE: u16 = 0xa0;
pub const PIC_ELCR: u16 = 0x4d0;
pub const PIT: u16 = 0x40;
pub const SYSTEM_CONTROL: u16 = 0x61;
pub const RTC: u16 = 0x70;
pub const COM1: u16 = 0x3f8;
/// ACPI PM1a event block (status, enable), PM1a control and the PM timer.
pub const PM_BASE: u16 = 0x600;
pub const PM1_EVENT: u16 = PM_BASE;
pub const PM1_CONTROL: u16 = PM_BASE + 4;
pub const PM_TIMER: u16 = PM_BASE + 8;
pub const PM_SIZE: u16 = 12;
/// The reset control register the FADT names (0x06 resets).
pub const RESET_CONTROL: u16 = 0xcf9;
/// QEMU's isa-debug-exit port, which Basalt's test guests use.
pub const DEBUG_EXIT: u16 = 0xf4;
/// A guest writes a byte here to mark a moment for `cargo xtask bench` (a Linux
/// /init can reach it through /dev/port).
pub const BENCH_MARKER: u16 = 0xf8;

/// ISA IRQs. The PIT's IRQ 0 reaches IOAPIC pin 2 (the MADT says so); the
/// others keep their numbers.
pub const IRQ_PIT: u8 = 0;
pub const IRQ_COM1: u8 = 4;
pub const IRQ_RTC: u8 = 8;
pub const IRQ_SCI: u8 = 9;
pub const GSI_PIT: u8 = 2;

/// The S5 (soft-off) sleep type the DSDT's \_S5 names.
pub const SLP_TYP_S5: u16 = 5;

/// The IOAPIC pin an ISA IRQ arrives on.
pub fn gsi_of_isa_irq(irq: u8) -> u8 {
    if irq == IRQ_PIT {
        GSI_PIT
    } else {
        irq
    }
}
