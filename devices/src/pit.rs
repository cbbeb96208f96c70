//! The 8254 programmable interval timer (ports 0x40-0x43) and the system control
//! port 0x61 that gates its channel 2 and shows channel 2's output. Channel 0
//! drives IRQ 0. Counters run from the guest's TSC: `now` is a TSC value and the
//! PIT's 1.193182 MHz is derived from the TSC frequency given at creation.

use crate::clock;

pub const PIT_HZ: u64 = 1_193_182;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Latch,
    Low,
    High,
    LowHigh,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    mode: u8,
    access: Access,
    /// The count written (0 means 65536).
    reload: u32,
    /// PIT tick at which counting began; None until a count is written.
    start: Option<u64>,
    /// LowHigh writes: the low byte waiting for its high byte.
    pending_low: Option<u8>,
    /// LowHigh reads: next read returns the high byte.
    read_high: bool,
    latched: Option<u16>,
    /// Channel 0: how many terminal counts have raised IRQ 0 since `start`.
    irqs_raised: u64,
}

impl Channel {
    const fn new() -> Channel {
        Channel {
            mode: 0,
            access: Access::LowHigh,
            reload: 0x10000,
            start: None,
            pending_low: None,
            read_high: false,
            latched: None,
            irqs_raised: 0,
        }
    }

    fn periodic(&self) -> bool {
        matches!(self.mode, 2 | 3 | 6 | 7)
    }

    fn count(&self, tick: u64) -> u16 {
        let Some(start) = self.start else { return 0 };
        let elapsed = tick.saturating_sub(start);
        if self.periodic() {
            (self.reload as u64 - elapsed % self.reload as u64) as u16
        } else {
            // One-shot modes keep counting down through zero (wrapping).
            (self.reload as u64).wrapping_sub(elapsed) as u16
        }
    }

    fn output(&self, tick: u64) -> bool {
        let Some(start) = self.start else { return true };
        let elapsed = tick.saturating_sub(start);
        match self.mode {
            2 | 6 => elapsed % self.reload as u64 != self.reload as u64 - 1,
            3 | 7 => elapsed % (self.reload as u64) < self.reload.div_ceil(2) as u64,
            _ => elapsed >= self.reload as u64,
        }
    }

    /// Terminal counts reached by `tick` since counting began.
    fn terminal_counts(&self, tick: u64) -> u64 {
        let Some(start) = self.start else { return 0 };
        let elapsed = tick.saturating_sub(start);
        if self.periodic() {
            elapsed / self.reload as u64
        } else {
            (elapsed >= self.reload as u64) as u64
        }
    }

    /// The PIT tick of the next terminal count not yet raised.
    fn next_terminal_count(&self) -> Option<u64> {
        let start = self.start?;
        // A tick past u64::MAX never comes.
        if self.periodic() {
            let periods = self.irqs_raised.checked_add(1)?;
            periods.checked_mul(self.reload as u64).and_then(|after| start.checked_add(after))
        } else {
            (self.irqs_raised == 0).then(|| start.checked_add(self.reload as u64)).flatten()
        }
    }
}

pub struct Pit {
    tsc_hz: u64,
    channels: [Channel; 3],
    /// Port 0x61 bits 0 (channel 2 gate) and 1 (speaker data).
    port61: u8,
}

impl Pit {
    pub fn new(tsc_hz: u64) -> Pit {
        Pit { tsc_hz, channels: [Channel::new(); 3], port61: 0 }
    }

    fn tick(&self, now: u64) -> u64 {
        clock::convert(now, self.tsc_hz, PIT_HZ)
    }

    /// Ports 0x40-0x42 read: a latched value if there is one, else the live count.
    pub fn read(&mut self, offset: u16, now: u64) -> u8 {
        let tick = self.tick(now);
        let Some(ch) = self.channels.get_mut(offset as usize) else { return 0xff };
        let value = ch.latched.unwrap_or_else(|| ch.count(tick));
        let byte = match ch.access {
            Access::Low => value as u8,
            Access::High => (value >> 8) as u8,
            _ => {
                let high = ch.read_high;
                ch.read_high = !high;
                if high {
                    ch.latched = None;
                    (value >> 8) as u8
                } else {
                    value as u8
                }
            }
        };
        if ch.access != Access::LowHigh && ch.access != Access::Latch {
            ch.latched = None;
        }
        byte
    }

    /// Ports 0x40-0x43 write.
    pub fn write(&mut self, offset: u16, value: u8, now: u64) {
        let tick = self.tick(now);
        if offset == 3 {
            return self.control(value, tick);
        }
        let Some(ch) = self.channels.get_mut(offset as usize) else { return };
        let count = match ch.access {
            Access::Low => Some(value as u32),
            Access::High => Some((value as u32) << 8),
            _ => match ch.pending_low.take() {
                Some(low) => Some(low as u32 | (value as u32) << 8),
                None => {
                    ch.pending_low = Some(value);
                    None
                }
            },
        };
        if let Some(count) = count {
            ch.reload = if count == 0 { 0x10000 } else { count };
            ch.start = Some(tick);
            ch.irqs_raised = 0;
        }
    }

    fn control(&mut self, value: u8, tick: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: latch the counts of the selected channels (bit 5 clear).
            if value & 0x20 == 0 {
                for (i, ch) in self.channels.iter_mut().enumerate() {
                    if value & (2 << i) != 0 {
                        ch.latched = Some(ch.count(tick));
                    }
                }
            }
            return;
        }
        let ch = &mut self.channels[select as usize];
        let access = match (value >> 4) & 3 {
            0 => {
                if ch.latched.is_none() {
                    ch.latched = Some(ch.count(tick));
                    ch.read_high = false;
                }
                return;
            }
            1 => Access::Low,
            2 => Access::High,
            _ => Access::LowHigh,
        };
        *ch = Channel { mode: (value >> 1) & 7, access, ..Channel::new() };
    }

    /// Port 0x61: gate and speaker bits as written; bit 4 toggles every 15 us
    /// (DRAM refresh) and bit 5 is channel 2's output.
    pub fn read_port61(&self, now: u64) -> u8 {
        let refresh = (clock::convert(now, self.tsc_hz, 1_000_000) / 15) & 1 != 0;
        let out2 = self.port61 & 1 != 0 && self.channels[2].output(self.tick(now));
        self.port61 | (refresh as u8) << 4 | (out2 as u8) << 5
    }

    pub fn write_port61(&mut self, value: u8, now: u64) {
        let gate_rising = value & 1 != 0 && self.port61 & 1 == 0;
        self.port61 = value & 3;
        // A rising gate (re)starts channel 2 in the gate-triggered modes, and
        // starts a counter that was waiting for its gate in mode 0.
        let tick = self.tick(now);
        let ch = &mut self.channels[2];
        if gate_rising && ch.start.is_some() {
            ch.start = Some(tick);
        }
    }

    /// How many times IRQ 0 fired since the last call (channel 0's terminal counts).
    pub fn poll_irq0(&mut self, now: u64) -> u64 {
        let tick = self.tick(now);
        let ch = &mut self.channels[0];
        let total = ch.terminal_counts(tick);
        let new = total.saturating_sub(ch.irqs_raised);
        ch.irqs_raised = total;
        new
    }

    /// The TSC value at which IRQ 0 next fires, if channel 0 is counting.
    pub fn next_irq0(&self) -> Option<u64> {
        let tick = self.channels[0].next_terminal_count()?;
        Some(clock::convert_up(tick, PIT_HZ, self.tsc_hz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TSC at 100 x the PIT rate keeps the arithmetic exact.
    const TSC_HZ: u64 = PIT_HZ * 100;

    fn at(pit_ticks: u64) -> u64 {
        pit_ticks * 100
    }

    #[test]
    fn channel0_rate_generator_raises_irq0_each_period() {
        let mut pit = Pit::new(TSC_HZ);
        assert_eq!(pit.next_irq0(), None);
        pit.write(3, 0x34, 0); // ch0, lo/hi, mode 2
        pit.write(0, 0x9c, 0);
        pit.write(0, 0x2e, at(10)); // 11932: 100 Hz
        assert_eq!(pit.next_irq0(), Some(at(10 + 11932)));
        assert_eq!(pit.poll_irq0(at(10 + 11931)), 0);
        assert_eq!(pit.poll_irq0(at(10 + 3 * 11932 + 5)), 3);
        assert_eq!(pit.next_irq0(), Some(at(10 + 4 * 11932)));
    }

    #[test]
    fn latched_count_reads_low_then_high() {
        let mut pit = Pit::new(TSC_HZ);
        pit.write(3, 0x30, 0); // ch0, lo/hi, mode 0
        pit.write(0, 0x00, 0);
        pit.write(0, 0x10, 0); // 0x1000
        pit.write(3, 0x00, at(0x100)); // latch ch0
        let low = pit.read(0, at(0x800));
        let high = pit.read(0, at(0x800));
        assert_eq!(u16::from_le_bytes([low, high]), 0x0f00, "the latched value, not the live one");
        // Mode 0 raises IRQ 0 once at terminal count.
        assert_eq!(pit.poll_irq0(at(0x1000)), 1);
        assert_eq!(pit.poll_irq0(at(0x5000)), 0);
        assert_eq!(pit.next_irq0(), None);
    }

    #[test]
    fn port61_shows_channel2_output_behind_its_gate() {
        let mut pit = Pit::new(TSC_HZ);
        pit.write_port61(0x01, 0);
        pit.write(3, 0xb0, 0); // ch2, lo/hi, mode 0
        pit.write(2, 0xe8, 0);
        pit.write(2, 0x03, 0); // 1000 ticks
        assert_eq!(pit.read_port61(at(999)) & 0x20, 0);
        assert_eq!(pit.read_port61(at(1000)) & 0x20, 0x20);
        pit.write_port61(0x00, at(1000));
        assert_eq!(pit.read_port61(at(1000)) & 0x21, 0, "gate low hides the output");
    }

    #[test]
    fn refresh_bit_toggles() {
        let pit = Pit::new(1_000_000_000);
        let a = pit.read_port61(0) & 0x10;
        let b = pit.read_port61(15_000) & 0x10;
        assert_ne!(a, b);
    }

    #[test]
    fn a_count_that_ends_past_the_end_of_time_never_fires() {
        let mut pit = Pit::new(PIT_HZ);
        pit.write(3, 0x34, u64::MAX - 10); // ch0, lo/hi, mode 2
        pit.write(0, 0, u64::MAX - 10);
        pit.write(0, 0, u64::MAX - 10); // 65536 ticks
        assert_eq!(pit.next_irq0(), None);
        assert_eq!(pit.poll_irq0(u64::MAX), 0);
        pit.write(3, 0x30, u64::MAX - 10); // mode 0: one-shot
        pit.write(0, 0, u64::MAX - 10);
        pit.write(0, 0, u64::MAX - 10);
        assert_eq!(pit.next_irq0(), None);
    }

    #[test]
    fn square_wave_counts_and_readback_latch() {
        let mut pit = Pit::new(TSC_HZ);
        pit.write(3, 0x36, 0); // ch0 mode 3
        pit.write(0, 100, 0);
        pit.write(0, 0, 0);
        assert!(pit.channels[0].output(10));
        assert!(!pit.channels[0].output(60));
        pit.write(3, 0xc2, at(30)); // read-back: latch ch0 count
        assert_eq!(pit.read(0, at(90)), 70);
    }
}
