//! The PC's two cascaded 8259A interrupt controllers (master at 0x20, slave at
//! 0xa0 on the master's IRQ2) and the edge/level control registers at 0x4d0.
//! Supports the initialisation sequence, masking, fixed priority, specific and
//! non-specific EOI, automatic EOI, and reading IRR/ISR through OCW3. Guests
//! that use the IOAPIC mask it entirely; it exists so they can probe and
//! program it as on real hardware.

#[derive(Clone, Copy, Debug, Default)]
struct Chip {
    imr: u8,
    irr: u8,
    isr: u8,
    /// Level-triggered inputs (ELCR).
    elcr: u8,
    /// Input line levels.
    lines: u8,
    vector_base: u8,
    /// Which initialisation word comes next on the data port (0: none).
    init_step: u8,
    needs_icw4: bool,
    single: bool,
    auto_eoi: bool,
    read_isr: bool,
}

impl Chip {
    fn set_line(&mut self, line: u8, level: bool) {
        let bit = 1 << line;
        let rising = level && self.lines & bit == 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.elcr & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if rising {
            self.irr |= bit;
        }
    }

    /// The request the chip would raise INTR for: unmasked, and of higher priority
    /// (lower number) than anything in service.
    fn highest_request(&self) -> Option<u8> {
        let requests = self.irr & !self.imr;
        let line = (0..8).find(|l| requests & (1 << l) != 0)?;
        let in_service = (0..8).find(|l| self.isr & (1 << l) != 0).unwrap_or(8);
        (line < in_service).then_some(line)
    }

    fn acknowledge(&mut self, line: u8) {
        let bit = 1 << line;
        if self.elcr & bit == 0 {
            self.irr &= !bit;
        }
        if !self.auto_eoi {
            self.isr |= bit;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: start initialisation.
            *self = Chip { elcr: self.elcr, lines: self.lines, ..Chip::default() };
            self.needs_icw4 = value & 1 != 0;
            self.single = value & 2 != 0;
            self.init_step = 2;
        } else if value & 0x08 != 0 {
            // OCW3: choose the register a command-port read returns.
            if value & 2 != 0 {
                self.read_isr = value & 1 != 0;
            }
        } else {
            // OCW2: EOI, non-specific (0x20, 0xa0) or specific (0x60, 0xe0).
            match value >> 5 {
                1 | 5 => {
                    if let Some(line) = (0..8).find(|l| self.isr & (1 << l) != 0) {
                        self.isr &= !(1 << line);
                    }
                }
                3 | 7 => self.isr &= !(1 << (value & 7)),
                _ => {}
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            2 => {
                self.vector_base = value & 0xf8;
                self.init_step = if !self.single {
                    3
                } else if self.needs_icw4 {
                    4
                } else {
                    0
                };
            }
            3 => self.init_step = if self.needs_icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = value & 2 != 0;
                self.init_step = 0;
            }
            _ => self.imr = value,
        }
    }

    fn read_command(&self) -> u8 {
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

#[derive(Default)]
pub struct PicPair {
    master: Chip,
    slave: Chip,
}

const CASCADE: u8 = 2;

impl PicPair {
    pub fn new() -> PicPair {
        PicPair::default()
    }

    /// Ports 0x20-0x21 (chip 0) and 0xa0-0xa1 (chip 1): offset 0 command, 1 data.
    pub fn read(&self, chip: usize, offset: u16) -> u8 {
        let c = if chip == 0 { &self.master } else { &self.slave };
        if offset == 0 {
            c.read_command()
        } else {
            c.imr
        }
    }

    pub fn write(&mut self, chip: usize, offset: u16, value: u8) {
        let c = if chip == 0 { &mut self.master } else { &mut self.slave };
        if offset == 0 {
            c.write_command(value)
        } else {
            c.write_data(value)
        }
        self.update_cascade();
    }

    /// ELCR at 0x4d0 (chip 0) and 0x4d1 (chip 1). IRQ 0, 1, 2, 8 and 13 are
    /// always edge-triggered.
    pub fn read_elcr(&self, chip: usize) -> u8 {
        if chip == 0 {
            self.master.elcr
        } else {
            self.slave.elcr
        }
    }

    pub fn write_elcr(&mut self, chip: usize, value: u8) {
        if chip == 0 {
            self.master.elcr = value & 0xf8;
        } else {
            self.slave.elcr = value & 0xde;
        }
    }

    /// A device drives ISA IRQ `irq` (0-15).
    pub fn set_line(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 if irq != CASCADE => self.master.set_line(irq, level),
            8..=15 => {
                self.slave.set_line(irq - 8, level);
                self.update_cascade();
            }
            _ => {}
        }
    }

    pub fn pulse(&mut self, irq: u8) {
        self.set_line(irq, false);
        self.set_line(irq, true);
        self.set_line(irq, false);
    }

    fn update_cascade(&mut self) {
        // The slave's INTR is a level on the master's IR2, whatever the ELCR says.
        if self.slave.highest_request().is_some() {
            self.master.irr |= 1 << CASCADE;
        } else {
            self.master.irr &= !(1 << CASCADE);
        }
    }

    /// Whether INTR is raised.
    pub fn interrupt_pending(&self) -> bool {
        self.master.highest_request().is_some()
    }

    /// Interrupt acknowledge: the vector for the CPU, with the request moved into
    /// service. None when INTR is not raised.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let line = self.master.highest_request()?;
        self.master.acknowledge(line);
        if line != CASCADE {
            return Some(self.master.vector_base + line);
        }
        let vector = match self.slave.highest_request() {
            Some(slave_line) => {
                self.slave.acknowledge(slave_line);
                self.slave.vector_base + slave_line
            }
            // The request went away: the slave's spurious IRQ 15.
            None => self.slave.vector_base + 7,
        };
        self.update_cascade();
        Some(vector)
    }

    /// Whether ISA IRQ `irq` is unmasked all the way to INTR.
    pub fn irq_unmasked(&self, irq: u8) -> bool {
        match irq {
            0..=7 => self.master.imr & (1 << irq) == 0,
            8..=15 => self.master.imr & (1 << CASCADE) == 0 && self.slave.imr & (1 << (irq - 8)) == 0,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The initialisation every PC OS does: master at 0x20, slave at 0x28.
    fn initialised() -> PicPair {
        let mut p = PicPair::new();
        for (chip, base, icw3) in [(0, 0x20, 4), (1, 0x28, 2)] {
            p.write(chip, 0, 0x11);
            p.write(chip, 1, base);
            p.write(chip, 1, icw3);
            p.write(chip, 1, 0x01);
        }
        p
    }

    #[test]
    fn imr_reads_back_what_was_written_so_probes_find_it() {
        let mut p = PicPair::new();
        p.write(1, 1, 0xff);
        p.write(0, 1, 0xfb);
        assert_eq!(p.read(0, 1), 0xfb);
        assert_eq!(p.read(1, 1), 0xff);
    }

    #[test]
    fn master_irq_is_delivered_with_its_vector_and_eoi_ends_it() {
        let mut p = initialised();
        p.write(0, 1, 0xfe);
        p.pulse(3);
        assert!(!p.interrupt_pending(), "IRQ3 is masked");
        p.pulse(0);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), Some(0x20));
        assert!(!p.interrupt_pending());
        // In service blocks an equal request until EOI.
        p.pulse(0);
        assert!(!p.interrupt_pending());
        p.write(0, 0, 0x0b);
        assert_eq!(p.read(0, 0), 1, "OCW3 selects ISR");
        p.write(0, 0, 0x20);
        assert!(p.interrupt_pending());
    }

    #[test]
    fn slave_irq_cascades_through_irq2() {
        let mut p = initialised();
        p.write(0, 1, 0xfb);
        p.write(1, 1, 0xfe);
        assert!(p.irq_unmasked(8));
        assert!(!p.irq_unmasked(9));
        p.pulse(8);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), Some(0x28));
        p.write(1, 0, 0x20);
        p.write(0, 0, 0x20);
        assert!(!p.interrupt_pending());
        assert_eq!(p.acknowledge(), None);
    }

    #[test]
    fn priority_lower_line_first() {
        let mut p = initialised();
        p.write(0, 1, 0x00);
        p.pulse(4);
        p.pulse(1);
        assert_eq!(p.acknowledge(), Some(0x21));
        // IRQ4 waits behind in-service IRQ1.
        assert_eq!(p.acknowledge(), None);
        p.write(0, 0, 0x61); // specific EOI for IRQ1
        assert_eq!(p.acknowledge(), Some(0x24));
    }

    #[test]
    fn level_triggered_lines_follow_the_level() {
        let mut p = initialised();
        p.write_elcr(1, 0x02); // IRQ9 level
        assert_eq!(p.read_elcr(1), 0x02);
        p.write(0, 1, 0xfb);
        p.write(1, 1, 0x00);
        p.set_line(9, true);
        assert!(p.interrupt_pending());
        p.set_line(9, false);
        assert!(!p.interrupt_pending());
        p.write_elcr(0, 0xff);
        assert_eq!(p.read_elcr(0), 0xf8, "IRQ 0-2 are always edge");
    }
}
