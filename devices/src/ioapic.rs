//! An 82093AA-style I/O APIC with 24 pins: the index/data window (IOREGSEL at
//! 0x00, IOWIN at 0x10), ID, version and arbitration registers, and one 64-bit
//! redirection entry per pin. Input lines are driven by the chipset; what a pin
//! delivers comes back as an APIC message for the chipset to route.

use crate::lapic::{DeliveryMode, Destination, Message};

pub const PINS: usize = 24;
const VERSION: u32 = 0x11 | ((PINS as u32 - 1) << 16);
const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
#[cfg(test)]
const ACTIVE_LOW: u64 = 1 << 13;
const LOGICAL: u64 = 1 << 11;
/// Bits software may write (delivery status and remote IRR are read-only).
const WRITABLE: u64 = 0xff00_0000_0001_afff;

pub struct IoApic {
    id: u32,
    select: u32,
    redirection: [u64; PINS],
    /// Input line levels as the devices drive them (before polarity).
    lines: u32,
}

impl IoApic {
    /// Every pin masked, as after reset.
    pub fn new(id: u8) -> IoApic {
        IoApic { id: (id as u32) << 24, select: 0, redirection: [MASKED; PINS], lines: 0 }
    }

    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            0x00 => self.select,
            0x10 => self.read_register(self.select),
            _ => 0,
        }
    }

    /// A write to the window; unmasking a pin whose level-triggered line is
    /// asserted delivers at once.
    pub fn write(&mut self, offset: u64, value: u32) -> Option<Message> {
        match offset {
            0x00 => self.select = value & 0xff,
            0x10 => return self.write_register(self.select, value),
            _ => {}
        }
        None
    }

    /// What the guest would read now at IOREGSEL and at IOWIN.
    pub fn window(&self) -> (u32, u32) {
        (self.select, self.read_register(self.select))
    }

    fn read_register(&self, index: u32) -> u32 {
        match index {
            0 => self.id,
            1 => VERSION,
            2 => self.id,
            0x10..=0x3f => {
                let entry = self.redirection[(index as usize - 0x10) / 2];
                if index.is_multiple_of(2) {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, index: u32, value: u32) -> Option<Message> {
        match index {
            0 => self.id = value & 0x0f00_0000,
            0x10..=0x3f => {
                let pin = (index as usize - 0x10) / 2;
                let entry = &mut self.redirection[pin];
                let merged = if index.is_multiple_of(2) {
                    (*entry & !0xffff_ffff) | value as u64
                } else {
                    (*entry & 0xffff_ffff) | (value as u64) << 32
                };
                *entry = (*entry & !WRITABLE) | (merged & WRITABLE);
                if *entry & LEVEL == 0 {
                    *entry &= !REMOTE_IRR;
                }
                return self.level_delivery(pin);
            }
            _ => {}
        }
        None
    }

    /// Lines carry assertion, not voltage: the chipset drives them logically, so
    /// the polarity bit is kept for the guest but does not invert them.
    fn asserted(&self, pin: usize) -> bool {
        self.lines & (1 << pin) != 0
    }

    /// A level-triggered pin delivers while asserted, unmasked and not waiting
    /// for an EOI.
    fn level_delivery(&mut self, pin: usize) -> Option<Message> {
        let entry = self.redirection[pin];
        if entry & LEVEL == 0 || entry & (MASKED | REMOTE_IRR) != 0 || !self.asserted(pin) {
            return None;
        }
        self.redirection[pin] |= REMOTE_IRR;
        Some(message(entry))
    }

    /// A device drives input `pin` to `level`. Edge-triggered pins deliver on the
    /// asserting edge, level-triggered ones while asserted.
    pub fn set_line(&mut self, pin: usize, level: bool) -> Option<Message> {
        if pin >= PINS {
            return None;
        }
        let was = self.asserted(pin);
        if level {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        let entry = self.redirection[pin];
        if entry & LEVEL != 0 {
            return self.level_delivery(pin);
        }
        (!was && self.asserted(pin) && entry & MASKED == 0).then(|| message(entry))
    }

    /// A pin pulsed (an edge-triggered device's tick).
    pub fn pulse(&mut self, pin: usize) -> Option<Message> {
        self.set_line(pin, false);
        let message = self.set_line(pin, true);
        self.set_line(pin, false);
        message
    }

    /// An EOI for `vector` reached the IOAPIC: Remote IRR clears on the pins
    /// using it, and a line still asserted delivers again.
    pub fn end_of_interrupt(&mut self, vector: u8) -> alloc::vec::Vec<Message> {
        let mut again = alloc::vec::Vec::new();
        for pin in 0..PINS {
            let entry = self.redirection[pin];
            if entry & REMOTE_IRR != 0 && entry as u8 == vector {
                self.redirection[pin] &= !REMOTE_IRR;
                again.extend(self.level_delivery(pin));
            }
        }
        again
    }

    /// Whether `pin` is unmasked (a device's timer need not wake anyone otherwise).
    pub fn pin_unmasked(&self, pin: usize) -> bool {
        pin < PINS && self.redirection[pin] & MASKED == 0
    }
}

fn message(entry: u64) -> Message {
    let target = (entry >> 56) as u8;
    Message {
        vector: entry as u8,
        mode: DeliveryMode::from_bits((entry >> 8) as u32),
        destination: if entry & LOGICAL != 0 { Destination::Logical(target) } else { Destination::Physical(target) },
        level_triggered: entry & LEVEL != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: u32, low: u32, high: u32) -> Option<Message> {
        io.write(0, 0x10 + 2 * pin + 1);
        io.write(0x10, high);
        io.write(0, 0x10 + 2 * pin);
        io.write(0x10, low)
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(2);
        io.write(0, 1);
        assert_eq!(io.read(0x10), 0x0017_0011, "24 entries, version 0x11");
        io.write(0, 0);
        assert_eq!(io.read(0x10), 2 << 24);
        assert_eq!(io.read(0), 0);
        io.write(0, 0x10);
        assert_eq!(io.read(0x10) as u64, MASKED);
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge_only_when_unmasked() {
        let mut io = IoApic::new(0);
        assert_eq!(io.pulse(4), None, "masked after reset");
        program(&mut io, 4, 0x24, 0x0100_0000);
        let m = io.pulse(4).unwrap();
        assert_eq!(m.vector, 0x24);
        assert_eq!(m.destination, Destination::Physical(1));
        assert!(!m.level_triggered);
        assert!(io.set_line(4, true).is_some());
        assert_eq!(io.set_line(4, true), None, "no edge while held high");
    }

    #[test]
    fn level_pin_waits_for_eoi_and_redelivers_while_asserted() {
        let mut io = IoApic::new(0);
        program(&mut io, 9, (LEVEL | ACTIVE_LOW) as u32 | 0x39, 0);
        assert_eq!(io.set_line(9, false), None);
        let m = io.set_line(9, true).unwrap();
        assert!(m.level_triggered);
        assert_eq!(io.set_line(9, true), None, "remote IRR set");
        io.write(0, 0x10 + 18);
        assert_ne!(io.read(0x10) as u64 & REMOTE_IRR, 0);
        assert_eq!(io.end_of_interrupt(0x39).len(), 1, "still asserted: delivered again");
        io.set_line(9, false);
        assert!(io.end_of_interrupt(0x39).is_empty());
        assert_eq!(io.end_of_interrupt(0x39), vec![]);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = IoApic::new(0);
        program(&mut io, 5, (LEVEL | MASKED) as u32 | 0x45, 0);
        assert_eq!(io.set_line(5, true), None);
        assert!(program(&mut io, 5, LEVEL as u32 | 0x45, 0).is_some());
        assert!(io.pin_unmasked(5));
    }

    #[test]
    fn read_only_bits_are_kept() {
        let mut io = IoApic::new(0);
        program(&mut io, 1, 0xffff_ffff, 0xffff_ffff);
        io.write(0, 0x12);
        assert_eq!(io.read(0x10) as u64 & REMOTE_IRR, 0);
        assert_eq!(io.read(0x10) & (1 << 12), 0, "delivery status is read-only");
    }
}
