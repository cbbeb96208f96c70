//! System control port A (port 0x92, "fast A20 and init" on PCs since the PS/2).
//!
//! Bit 1 gates address line 20. Basalt's guests always have A20 enabled (guest
//! RAM is mapped without the 1 MiB wrap), so the bit reads 1 whatever is
//! written: a guest that enables A20 here sees it enabled, and one that tries
//! to disable it sees that it could not, as on the many chipsets that no
//! longer gate A20 at all.
//!
//! Bit 0 resets the processors when it goes from 0 to 1 (software must write
//! 0 before it can reset again). With no firmware to run through, a reset is
//! a restart of the VM from its images, the same request as the reset control
//! register at 0xcf9. The bit reads back as written.
//!
//! The other bits (CMOS lock, disk activity lights) have nothing behind them
//! and read 0.

use crate::bus::{all_ones, PortDevice, Request};

const RESET: u8 = 1 << 0;
const A20: u8 = 1 << 1;

#[derive(Default)]
pub struct SystemControlA {
    /// Bit 0 as last written.
    reset: bool,
}

impl SystemControlA {
    pub const fn new() -> SystemControlA {
        SystemControlA { reset: false }
    }
}

impl PortDevice for SystemControlA {
    fn name(&self) -> &'static str {
        "system-control-a"
    }

    /// The port is one byte: the rest of a wider read is the unclaimed ports
    /// after it.
    fn read(&mut self, _offset: u16, size: u8) -> u32 {
        let value = A20 | if self.reset { RESET } else { 0 };
        (all_ones(size) as u32 & !0xff) | value as u32
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> Option<Request> {
        let reset = value as u8 & RESET != 0;
        let rising = reset && !self.reset;
        self.reset = reset;
        rising.then_some(Request::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_always_reads_enabled() {
        let mut port = SystemControlA::new();
        assert_eq!(port.read(0, 1), 0x02);
        assert_eq!(port.write(0, 1, 0x00), None, "disabling A20 is not a reset");
        assert_eq!(port.read(0, 1), 0x02, "and does not take");
        assert_eq!(port.write(0, 1, 0xfe), None);
        assert_eq!(port.read(0, 1), 0x02, "other bits read 0");
        assert_eq!(port.read(0, 2), 0xff02, "port 0x93 is not this one");
    }

    #[test]
    fn bit_0_resets_on_its_rising_edge() {
        let mut port = SystemControlA::new();
        assert_eq!(port.write(0, 1, 0x03), Some(Request::Reset));
        assert_eq!(port.read(0, 1), 0x03);
        assert_eq!(port.write(0, 1, 0x01), None, "still set: no new reset");
        assert_eq!(port.write(0, 1, 0x02), None);
        assert_eq!(port.read(0, 1), 0x02);
        assert_eq!(port.write(0, 1, 0x01), Some(Request::Reset), "cleared, then set again");
        assert_eq!(SystemControlA::new().write(0, 2, 0xff01), Some(Request::Reset), "the low byte of a wider write");
    }
}
