//! ACPI for a Basalt VM: the tables a guest reads at boot (RSDP, XSDT, RSDT,
//! FADT, FACS, MADT and a DSDT with \_S5), built per VM from `layout`, and the
//! fixed-hardware registers the FADT points at (PM1 event and control blocks
//! and the 32-bit PM timer at 3.579545 MHz). Writing SLP_EN with the S5 sleep
//! type is the guest's power-off.
//!
//! S5 is the only sleep state offered: there is no \_S1 to \_S4 in the DSDT
//! (an OS learns a state's SLP_TYP only from those packages, so it never tries
//! to enter one), and neither the FADT nor the FACS claims a way to wake from
//! one (no RTC_S4, no low-power S0 idle, no S4BIOS). A VM that suspended would
//! need its waking vector run after a resume, which Basalt does not do; a
//! guest that writes SLP_EN with another sleep type anyway finds WAK_STS set
//! at once, as if it had slept and woken, rather than waiting forever.

use crate::bus::Request;
use crate::clock;
use crate::layout;
use alloc::vec;
use alloc::vec::Vec;

pub const PM_TIMER_HZ: u64 = 3_579_545;
const OEM_ID: &[u8; 6] = b"BASALT";
const OEM_TABLE_ID: &[u8; 8] = b"BASALTVM";

const PM1_CNT_SCI_EN: u16 = 1 << 0;
const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// Enable bits the guest may set: timer, global lock, power and sleep buttons,
/// RTC alarm. Only the power button's event ever fires (an operator's
/// `shutdown`), but ACPI checks the others stick.
const PM1_ENABLE_BITS: u16 = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10);
const PM1_STS_WAK: u16 = 1 << 15;
/// The fixed-feature power button: its status and enable bits.
const PM1_PWRBTN: u16 = 1 << 8;

/// PM1a status/enable/control and the PM timer.
pub struct PowerManagement {
    tsc_hz: u64,
    status: u16,
    enable: u16,
    control: u16,
}

impl PowerManagement {
    /// ACPI mode already on (SCI_EN set): there is no SMI command port to switch it.
    pub fn new(tsc_hz: u64) -> PowerManagement {
        PowerManagement { tsc_hz, status: 0, enable: 0, control: PM1_CNT_SCI_EN }
    }

    /// `offset` from `layout::PM_BASE`.
    pub fn read(&self, offset: u16, size: u8, now: u64) -> u32 {
        let value = match offset {
            0 => self.status as u32 | (self.enable as u32) << 16,
            2 => self.enable as u32,
            4 => self.control as u32,
            8 => clock::convert(now, self.tsc_hz, PM_TIMER_HZ) as u32,
            _ => return u32::MAX,
        };
        match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        }
    }

    pub fn write(&mut self, offset: u16, size: u8, value: u32) -> Option<Request> {
        match (offset, size) {
            // Status bits clear when written with 1.
            (0, 4) => {
                self.status &= !(value as u16);
                self.enable = (value >> 16) as u16 & PM1_ENABLE_BITS;
            }
            (0, _) => self.status &= !(value as u16),
            (2, _) => self.enable = value as u16 & PM1_ENABLE_BITS,
            (4, _) => {
                let value = value as u16;
                self.control = (value & !PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN;
                let sleep_type = (value >> 10) & 7;
                if value & PM1_CNT_SLP_EN != 0 && sleep_type == layout::SLP_TYP_S5 {
                    return Some(Request::PowerOff);
                }
                if value & PM1_CNT_SLP_EN != 0 {
                    // Other sleep states are not offered; the guest wakes at once.
                    self.status |= PM1_STS_WAK;
                }
            }
            _ => {}
        }
        None
    }
}

impl PowerManagement {
    /// The power button was pressed (an operator's graceful shutdown): its
    /// status bit is set until the guest clears it.
    pub fn press_power_button(&mut self) {
        self.status |= PM1_PWRBTN;
    }

    /// The SCI's level: an event whose enable bit is set has its status bit set.
    pub fn sci(&self) -> bool {
        self.status & self.enable & PM1_PWRBTN != 0
    }
}

/// The reset control register: writing 0x06 (full reset) or 0x04 restarts the VM.
pub fn reset_control_write(value: u8) -> Option<Request> {
    (value & 0x04 != 0).then_some(Request::Reset)
}

/// A generic address structure for a system I/O register.
fn io_gas(port: u16, bits: u8, access: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bits;
    g[3] = access;
    g[4..12].copy_from_slice(&(port as u64).to_le_bytes());
    g
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)).wrapping_neg()
}

/// A table: standard header (checksum filled in) followed by `body`.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"BSLT");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// An AML PkgLength for `content` bytes that follow it.
fn pkg_length(content: usize) -> Vec<u8> {
    let total = |k: usize| content + k;
    if total(1) <= 0x3f {
        vec![total(1) as u8]
    } else if total(2) <= 0xfff {
        let t = total(2);
        vec![0x40 | (t & 0xf) as u8, (t >> 4) as u8]
    } else {
        let t = total(3);
        vec![0x80 | (t & 0xf) as u8, (t >> 4) as u8, (t >> 12) as u8]
    }
}

/// `opcode PkgLength body`.
fn aml_package(opcode: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = opcode.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend_from_slice(body);
    out
}

fn aml_name(name: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x08];
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out
}

/// A virtio-mmio device as Linux's ACPI binding expects: _HID LNRO0005, its
/// register window and its level-triggered, active-high interrupt.
fn aml_virtio_device(index: usize) -> Vec<u8> {
    let (base, gsi) = layout::virtio_slot(index);
    let mut resources = vec![0x86, 0x09, 0x00, 0x01]; // Memory32Fixed, read-write
    resources.extend_from_slice(&(base as u32).to_le_bytes());
    resources.extend_from_slice(&(layout::VIRTIO_SIZE as u32).to_le_bytes());
    // Extended interrupt: consumer, level, active high, exclusive; one GSI.
    resources.extend_from_slice(&[0x89, 0x06, 0x00, 0x01, 0x01]);
    resources.extend_from_slice(&(gsi as u32).to_le_bytes());
    resources.extend_from_slice(&[0x79, 0x00]); // end tag
    let mut buffer_body = vec![0x0a, resources.len() as u8];
    buffer_body.extend_from_slice(&resources);
    let mut body = alloc::format!("VR{index:02X}").into_bytes();
    body.extend(aml_name(b"_HID", b"\x0dLNRO0005\x00"));
    body.extend(aml_name(b"_UID", &[0x0a, index as u8]));
    body.extend(aml_name(b"_CRS", &aml_package(&[0x11], &buffer_body)));
    aml_package(&[0x5b, 0x82], &body)
}

/// DSDT: `\_S5` (how to power off) and the virtio-mmio devices under \_SB.
/// The legacy devices are found by their fixed addresses.
fn dsdt(virtio_devices: usize) -> Vec<u8> {
    let s5 = layout::SLP_TYP_S5 as u8;
    let mut aml = aml_name(b"_S5_", &[0x12, 0x08, 0x04, 0x0a, s5, 0x0a, s5, 0x00, 0x00]);
    if virtio_devices > 0 {
        let mut scope = b"\\_SB_".to_vec();
        for i in 0..virtio_devices {
            scope.extend(aml_virtio_device(i));
        }
        aml.extend(aml_package(&[0x10], &scope));
    }
    table(b"DSDT", 2, &aml)
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// FADT flags: WBINVD works (bit 0), C1 (HLT) on all CPUs (2), a fixed
/// power button (bit 4 clear: the PM1 block's PWRBTN bits, which an
/// operator's `shutdown` presses) and no sleep button (5), 32-bit PM timer
/// (8), reset register (10). Nothing about waking from sleep is claimed (see
/// the module comment).
const FADT_FLAGS: u32 = (1 << 0) | (1 << 2) | (1 << 5) | (1 << 8) | (1 << 10);

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; 276 - 36];
    let mut put = |offset: usize, bytes: &[u8]| b[offset - 36..offset - 36 + bytes.len()].copy_from_slice(bytes);
    put(36, &(facs as u32).to_le_bytes());
    put(40, &(dsdt as u32).to_le_bytes());
    put(46, &(layout::IRQ_SCI as u16).to_le_bytes());
    put(56, &(layout::PM1_EVENT as u32).to_le_bytes());
    put(64, &(layout::PM1_CONTROL as u32).to_le_bytes());
    put(76, &(layout::PM_TIMER as u32).to_le_bytes());
    put(88, &[4, 2, 0, 4]); // PM1 event, PM1 control, PM2 control, PM timer lengths
    put(96, &101u16.to_le_bytes()); // no C2
    put(98, &1001u16.to_le_bytes()); // no C3
    put(108, &[crate::rtc::CENTURY as u8]);
    // Legacy ISA devices present, no VGA, no 8042.
    put(109, &0x0005u16.to_le_bytes());
    put(112, &FADT_FLAGS.to_le_bytes());
    put(116, &io_gas(layout::RESET_CONTROL, 8, 1));
    put(128, &[0x06]);
    put(131, &[1]); // FADT minor version (6.1)
    put(132, &facs.to_le_bytes());
    put(140, &dsdt.to_le_bytes());
    put(148, &io_gas(layout::PM1_EVENT, 32, 2));
    put(172, &io_gas(layout::PM1_CONTROL, 16, 2));
    put(208, &io_gas(layout::PM_TIMER, 32, 3));
    put(268, b"Basalt\0\0");
    table(b"FACP", 6, &b)
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(layout::LAPIC_BASE as u32).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PC-AT compatible: 8259s present
    for cpu in 0..vcpus {
        // Processor local APIC: UID, APIC ID, enabled.
        b.extend_from_slice(&[0, 8, cpu as u8, cpu as u8, 1, 0, 0, 0]);
    }
    // I/O APIC: ID = vCPU count (after the local APICs), address, GSI base 0.
    b.extend_from_slice(&[1, 12, vcpus as u8, 0]);
    b.extend_from_slice(&(layout::IOAPIC_BASE as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // IRQ 0 -> GSI 2 (edge, high); SCI: level, active high.
    b.extend_from_slice(&[2, 10, 0, layout::IRQ_PIT]);
    b.extend_from_slice(&(layout::GSI_PIT as u32).to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&[2, 10, 0, layout::IRQ_SCI]);
    b.extend_from_slice(&(layout::IRQ_SCI as u32).to_le_bytes());
    b.extend_from_slice(&0x000du16.to_le_bytes());
    // LINT1 of every processor is the NMI input.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    table(b"APIC", 5, &b)
}

/// All tables for a VM with `vcpus` processors and `virtio_devices` virtio-mmio
/// slots in use, laid out from guest-physical `base` (RSDP at `base`). Returns
/// the bytes to copy there.
pub fn tables(base: u64, vcpus: u32, virtio_devices: usize) -> Vec<u8> {
    let mut blob = vec![0u8; 64];
    let place = |blob: &mut Vec<u8>, bytes: &[u8]| {
        let at = blob.len().next_multiple_of(64);
        blob.resize(at, 0);
        blob.extend_from_slice(bytes);
        base + at as u64
    };
    let dsdt_at = place(&mut blob, &dsdt(virtio_devices));
    let facs_at = place(&mut blob, &facs());
    let fadt_at = place(&mut blob, &fadt(facs_at, dsdt_at));
    let madt_at = place(&mut blob, &madt(vcpus));
    let mut xsdt_body = Vec::new();
    let mut rsdt_body = Vec::new();
    for at in [fadt_at, madt_at] {
        xsdt_body.extend_from_slice(&at.to_le_bytes());
        rsdt_body.extend_from_slice(&(at as u32).to_le_bytes());
    }
    let xsdt_at = place(&mut blob, &table(b"XSDT", 1, &xsdt_body));
    let rsdt_at = place(&mut blob, &table(b"RSDT", 1, &rsdt_body));
    let mut rsdp = [0u8; 36];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 2;
    rsdp[16..20].copy_from_slice(&(rsdt_at as u32).to_le_bytes());
    rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
    rsdp[24..32].copy_from_slice(&xsdt_at.to_le_bytes());
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    blob[..36].copy_from_slice(&rsdp);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = layout::ACPI_TABLES;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }
    /// The table at guest-physical `at`, checked for a valid checksum.
    fn table_at<'a>(blob: &'a [u8], at: u64, signature: &[u8; 4]) -> &'a [u8] {
        let start = (at - BASE) as usize;
        let len = u32_at(blob, start + 4) as usize;
        let t = &blob[start..start + len];
        assert_eq!(&t[..4], signature);
        assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(signature));
        t
    }

    #[test]
    fn rsdp_leads_to_every_table_with_valid_checksums() {
        let blob = tables(BASE, 2, 0);
        assert!(blob.len() as u64 <= layout::ACPI_TABLES_SIZE);
        assert_eq!(&blob[..8], b"RSD PTR ");
        assert_eq!(sum(&blob[..20]), 0);
        assert_eq!(sum(&blob[..36]), 0);
        let xsdt = table_at(&blob, u64_at(&blob, 24), b"XSDT");
        let rsdt = table_at(&blob, u32_at(&blob, 16) as u64, b"RSDT");
        let entries: Vec<u64> = (36..xsdt.len()).step_by(8).map(|i| u64_at(xsdt, i)).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(u32_at(rsdt, 36) as u64, entries[0]);
        let fadt = table_at(&blob, entries[0], b"FACP");
        assert_eq!(fadt.len(), 276);
        let dsdt = table_at(&blob, u64_at(fadt, 140), b"DSDT");
        assert_eq!(u32_at(fadt, 40) as u64, u64_at(fadt, 140));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        let facs_at = (u64_at(fadt, 132) - BASE) as usize;
        assert_eq!(&blob[facs_at..facs_at + 4], b"FACS");
        assert_eq!(facs_at % 64, 0, "FACS is 64-byte aligned");
        table_at(&blob, entries[1], b"APIC");
    }

    #[test]
    fn fadt_names_the_pm_blocks_and_reset_register() {
        let blob = tables(BASE, 1, 0);
        let xsdt = table_at(&blob, u64_at(&blob, 24), b"XSDT");
        let fadt = table_at(&blob, u64_at(xsdt, 36), b"FACP");
        assert_eq!(u32_at(fadt, 76), layout::PM_TIMER as u32);
        assert_eq!(u32_at(fadt, 56), layout::PM1_EVENT as u32);
        assert_eq!(u32_at(fadt, 64), layout::PM1_CONTROL as u32);
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
        assert_eq!(u64_at(fadt, 120), layout::RESET_CONTROL as u64);
        assert_eq!(fadt[128], 6);
        assert_eq!(u32_at(fadt, 112) & (1 << 8), 1 << 8, "32-bit PM timer");
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 0, "not hardware-reduced");
    }

    #[test]
    fn s5_is_the_only_sleep_state_offered() {
        for virtio in [0, 3] {
            let blob = tables(BASE, 2, virtio);
            let xsdt = table_at(&blob, u64_at(&blob, 24), b"XSDT");
            let fadt = table_at(&blob, u64_at(xsdt, 36), b"FACP");
            let dsdt = table_at(&blob, u64_at(fadt, 140), b"DSDT");
            let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
            // \_S5 is Name(_S5_, Package(4) { 5, 5, 0, 0 }).
            assert_eq!(count(b"\x08_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00"), 1);
            // No \_S0 to \_S4, as a name or a method, anywhere in the table.
            for state in [b"_S0_", b"_S1_", b"_S2_", b"_S3_", b"_S4_"] {
                assert_eq!(count(state), 0, "{}", String::from_utf8_lossy(state));
            }

            let flags = u32_at(fadt, 112);
            assert_eq!(flags, 0x0000_0525, "bit 4 clear: the power button is a fixed feature");
            for (bit, what) in [
                (7, "RTC_S4: the RTC wakes from S4"),
                (9, "DCK_CAP: docking"),
                (14, "PCI_EXP_WAK"),
                (16, "S4_RTC_STS_VALID"),
                (17, "REMOTE_POWER_ON_CAPABLE"),
                (20, "HW_REDUCED_ACPI: sleep registers instead of PM1"),
                (21, "LOW_POWER_S0_IDLE_CAPABLE"),
            ] {
                assert_eq!(flags & (1 << bit), 0, "{what}");
            }
            // No SMI command port, so no S4BIOS request and no ACPI enable dance.
            assert_eq!(u32_at(fadt, 48), 0, "SMI_CMD");
            assert_eq!(fadt[54], 0, "S4BIOS_REQ");
            // The FACS: no S4BIOS, no 64-bit waking vector, none set.
            let facs_at = (u64_at(fadt, 132) - BASE) as usize;
            let facs = &blob[facs_at..facs_at + 64];
            assert_eq!(u32_at(facs, 16), 0, "FACS flags");
            assert_eq!(u32_at(facs, 12), 0, "firmware waking vector");
            assert_eq!(u64_at(facs, 24), 0, "X firmware waking vector");
        }
    }

    #[test]
    fn a_sleep_type_other_than_s5_wakes_at_once() {
        let mut pm = PowerManagement::new(1_000_000);
        for sleep_type in [0, 1, 2, 3, 4, 6, 7] {
            let control = (sleep_type << 10) | PM1_CNT_SLP_EN as u32;
            assert_eq!(pm.write(4, 2, control), None, "SLP_TYP {sleep_type}");
            assert_ne!(pm.read(0, 2, 0) as u16 & PM1_STS_WAK, 0, "woken at once from SLP_TYP {sleep_type}");
            assert_eq!(pm.read(4, 2, 0) as u16 & PM1_CNT_SLP_EN, 0, "SLP_EN reads 0");
            pm.write(0, 2, PM1_STS_WAK as u32);
            assert_eq!(pm.read(0, 2, 0), 0);
        }
    }

    #[test]
    fn the_power_button_raises_the_sci_while_enabled_and_not_cleared() {
        let mut pm = PowerManagement::new(1_000_000);
        pm.press_power_button();
        assert!(!pm.sci(), "not enabled yet: no SCI");
        assert_ne!(pm.read(0, 2, 0) as u16 & PM1_PWRBTN, 0, "the status bit is set anyway");
        pm.write(2, 2, PM1_PWRBTN as u32);
        assert!(pm.sci());
        pm.write(0, 2, PM1_PWRBTN as u32);
        assert!(!pm.sci(), "writing 1 to the status bit clears it, and the SCI");
        pm.press_power_button();
        assert!(pm.sci());
        pm.write(2, 2, 0);
        assert!(!pm.sci(), "disabled again");
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(10), vec![11]);
        assert_eq!(pkg_length(62), vec![63]);
        assert_eq!(pkg_length(63), vec![0x41, 0x04], "65 = 0x41: low nibble 1, then 4");
        assert_eq!(pkg_length(5000), vec![0x8b, 0x38, 0x01]);
    }

    #[test]
    fn dsdt_describes_each_virtio_device() {
        let blob = tables(BASE, 1, 2);
        let xsdt = table_at(&blob, u64_at(&blob, 24), b"XSDT");
        let fadt = table_at(&blob, u64_at(xsdt, 36), b"FACP");
        let dsdt = table_at(&blob, u64_at(fadt, 140), b"DSDT");
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005\0"), 2);
        assert_eq!(count(b"VR00"), 1);
        assert_eq!(count(b"VR01"), 1);
        // Slot 1's window and GSI.
        assert_eq!(count(&0xd000_1000u32.to_le_bytes()), 1);
        assert_eq!(count(&[0x89, 0x06, 0x00, 0x01, 0x01, 17, 0, 0, 0]), 1);
        // The scope's PkgLength covers exactly the rest of the table.
        let scope_at = 36 + dsdt[36..].iter().position(|&b| b == 0x10).unwrap();
        let len = (dsdt[scope_at + 1] & 0xf) as usize | (dsdt[scope_at + 2] as usize) << 4;
        assert_eq!(scope_at + 1 + len, dsdt.len());
    }

    #[test]
    fn madt_lists_each_vcpu_the_ioapic_and_the_timer_override() {
        let blob = tables(BASE, 3, 0);
        let xsdt = table_at(&blob, u64_at(&blob, 24), b"XSDT");
        let madt = table_at(&blob, u64_at(xsdt, 44), b"APIC");
        assert_eq!(u32_at(madt, 36) as u64, layout::LAPIC_BASE);
        let mut at = 44;
        let mut lapic_ids = Vec::new();
        let mut overrides = Vec::new();
        let mut ioapic = None;
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => lapic_ids.push(madt[at + 3]),
                1 => ioapic = Some((madt[at + 2], u32_at(madt, at + 4))),
                2 => overrides.push((madt[at + 3], u32_at(madt, at + 4))),
                _ => {}
            }
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(lapic_ids, vec![0, 1, 2]);
        assert_eq!(ioapic, Some((3, layout::IOAPIC_BASE as u32)));
        assert_eq!(overrides, vec![(0, 2), (9, 9)]);
    }

    #[test]
    fn pm_timer_runs_at_its_frequency_and_s5_powers_off() {
        let tsc_hz = 2_000_000_000;
        let mut pm = PowerManagement::new(tsc_hz);
        assert_eq!(pm.read(8, 4, tsc_hz), PM_TIMER_HZ as u32);
        assert_eq!(pm.read(4, 2, 0) & 1, 1, "SCI_EN: ACPI mode");
        assert_eq!(pm.write(4, 2, (1 << 10) | PM1_CNT_SLP_EN as u32), None, "S1 is not offered");
        assert_ne!(pm.read(0, 2, 0) as u16 & PM1_STS_WAK, 0);
        pm.write(0, 2, PM1_STS_WAK as u32);
        pm.write(2, 2, 0xffff);
        assert_eq!(pm.read(2, 2, 0), PM1_ENABLE_BITS as u32, "enable bits stick");
        assert_eq!(pm.read(0, 2, 0), 0);
        assert_eq!(pm.write(4, 2, (5 << 10) | PM1_CNT_SLP_EN as u32), Some(Request::PowerOff));
        assert_eq!(reset_control_write(0x06), Some(Request::Reset));
        assert_eq!(reset_control_write(0x02), None);
    }
}
