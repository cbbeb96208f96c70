//! The MC146818 CMOS real-time clock behind ports 0x70 (index; bit 7 masks NMI)
//! and 0x71 (data): the date and time (BCD or binary, 12- or 24-hour, as register
//! B says), the century byte at 0x32 (named by the FADT), status registers A-D
//! with the update-ended and periodic flags and their IRQ 8, and the rest of the
//! 128 bytes as plain CMOS RAM.
//!
//! The clock starts at the Unix time the VMM gives it and runs with the guest's
//! TSC; a guest that sets the time moves its own clock only. A guest can write
//! any byte to any time register (an invalid BCD digit, century 0 or 0xff):
//! whatever date that makes is brought into FIRST_YEAR..=LAST_YEAR, and the
//! calendar arithmetic is total, so no value written can upset the host.

use crate::clock;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
pub const CENTURY: usize = 0x32;

const B_SET: u8 = 1 << 7;
const B_PIE: u8 = 1 << 6;
const B_AIE: u8 = 1 << 5;
const B_UIE: u8 = 1 << 4;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;
const C_IRQF: u8 = 1 << 7;
const C_PF: u8 = 1 << 6;
const C_UF: u8 = 1 << 4;
const D_VALID: u8 = 1 << 7;
/// The clock counts from the Unix epoch, so it cannot show an earlier year.
pub const FIRST_YEAR: u32 = 1970;
/// The last year a BCD century and year can show.
pub const LAST_YEAR: u32 = 9999;

/// A calendar date and time (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date. A month or day out of
/// range counts as the nearest valid one (day 31 of a shorter month runs into
/// the next), and a date before 1970 as 1970-01-01.
fn days_from_civil(year: u32, month: u32, day: u32) -> u64 {
    let (month, day) = (i64::from(month.clamp(1, 12)), i64::from(day.clamp(1, 31)));
    // Count years from March so the leap day ends the year.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era - 719_468).max(0) as u64
}

impl DateTime {
    pub fn from_unix(seconds: u64) -> DateTime {
        let days = seconds / 86_400;
        let secs = seconds % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let day_of_era = z - era * 146_097;
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (year_of_era + era * 400 + u64::from(month <= 2)).min(u32::MAX.into()) as u32;
        DateTime {
            year,
            month,
            day,
            hour: (secs / 3600) as u32,
            minute: (secs / 60 % 60) as u32,
            second: (secs % 60) as u32,
        }
    }

    pub fn to_unix(&self) -> u64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + self.hour as u64 * 3600
            + self.minute as u64 * 60
            + self.second as u64
    }

    /// 1 = Sunday, as the RTC counts.
    fn weekday(&self) -> u32 {
        // 1970-01-01 was a Thursday (5).
        ((days_from_civil(self.year, self.month, self.day) + 4) % 7) as u32 + 1
    }
}

pub fn from_bcd(value: u8) -> u32 {
    (value >> 4) as u32 * 10 + (value & 0xf) as u32
}

fn to_bcd(value: u32) -> u8 {
    ((((value / 10) % 10) << 4) | (value % 10)) as u8
}

pub struct Rtc {
    tsc_hz: u64,
    /// Unix time at TSC 0 (the guest's clock, with any time it set).
    base_unix: i128,
    index: u8,
    ram: [u8; 128],
    /// Last TSC at which register C's flags were brought up to date.
    flags_checked: u64,
}

impl Rtc {
    pub fn new(tsc_hz: u64, unix_now: u64, tsc_now: u64) -> Rtc {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        ram[REG_B] = B_24H;
        ram[REG_D] = D_VALID;
        let elapsed = (tsc_now / tsc_hz.max(1)) as i128;
        Rtc { tsc_hz, base_unix: unix_now as i128 - elapsed, index: 0, ram, flags_checked: tsc_now }
    }

    fn unix(&self, now: u64) -> u64 {
        (self.base_unix + (now / self.tsc_hz.max(1)) as i128).clamp(0, u64::MAX.into()) as u64
    }

    pub fn date_time(&self, now: u64) -> DateTime {
        DateTime::from_unix(self.unix(now))
    }

    fn encode(&self, value: u32) -> u8 {
        if self.ram[REG_B] & B_BINARY != 0 {
            value as u8
        } else {
            to_bcd(value)
        }
    }

    fn decode(&self, value: u8) -> u32 {
        if self.ram[REG_B] & B_BINARY != 0 {
            value as u32
        } else {
            from_bcd(value)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.ram[REG_B] & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | pm
    }

    fn decode_hour(&self, value: u8) -> u32 {
        if self.ram[REG_B] & B_24H != 0 {
            return self.decode(value);
        }
        let hour = self.decode(value & 0x7f) % 12;
        if value & 0x80 != 0 {
            hour + 12
        } else {
            hour
        }
    }

    /// Port 0x70 write: select a register (bit 7, the NMI mask, is not modelled).
    pub fn select(&mut self, value: u8) {
        self.index = value & 0x7f;
    }

    /// Whether a read of port 0x71 now clears the interrupt flags (register
    /// C), which moves when the next interrupt can come.
    pub fn read_clears_flags(&self) -> bool {
        self.index as usize == REG_C
    }

    /// Port 0x71 read.
    pub fn read(&mut self, now: u64) -> u8 {
        let t = self.date_time(now);
        match self.index as usize {
            SECONDS => self.encode(t.second),
            MINUTES => self.encode(t.minute),
            HOURS => self.encode_hour(t.hour),
            WEEKDAY => self.encode(t.weekday()),
            DAY => self.encode(t.day),
            MONTH => self.encode(t.month),
            YEAR => self.encode(t.year % 100),
            CENTURY => self.encode(t.year / 100),
            // Never mid-update: a reader waiting for UIP to clear goes on at once.
            REG_A => self.ram[REG_A] & 0x7f,
            REG_C => {
                self.update_flags(now);
                let flags = self.ram[REG_C];
                self.ram[REG_C] = 0;
                flags
            }
            i => self.ram[i],
        }
    }

    /// Port 0x71 write. Time registers move the guest's clock.
    pub fn write(&mut self, value: u8, now: u64) {
        let index = self.index as usize;
        let mut t = self.date_time(now);
        match index {
            SECONDS => t.second = self.decode(value).min(59),
            MINUTES => t.minute = self.decode(value).min(59),
            HOURS => t.hour = self.decode_hour(value).min(23),
            DAY => t.day = self.decode(value).clamp(1, 31),
            MONTH => t.month = self.decode(value).clamp(1, 12),
            YEAR => t.year = t.year / 100 * 100 + self.decode(value) % 100,
            CENTURY => t.year = self.decode(value) * 100 + t.year % 100,
            // The flags up to now come from the rate they ran at (the next
            // `poll` may be a while away: `Chipset::poll` skips the RTC until
            // its next interrupt is due).
            REG_A => {
                self.update_flags(now);
                self.ram[REG_A] = value & 0x7f;
            }
            REG_B => {
                self.update_flags(now);
                self.ram[REG_B] = value;
            }
            REG_C | REG_D | WEEKDAY => {}
            i => self.ram[i] = value,
        }
        if matches!(index, SECONDS | MINUTES | HOURS | DAY | MONTH | YEAR | CENTURY) {
            t.year = t.year.clamp(FIRST_YEAR, LAST_YEAR);
            let into_second = (now / self.tsc_hz.max(1)) as i128;
            self.base_unix = t.to_unix() as i128 - into_second;
        }
    }

    /// Periodic-interrupt period in TSC ticks (register A's rate), if any.
    fn periodic_period(&self) -> Option<u64> {
        let rate = self.ram[REG_A] & 0xf;
        if rate == 0 {
            return None;
        }
        let rate = if rate < 3 { rate + 7 } else { rate };
        // 32768 Hz >> (rate - 1).
        Some(clock::convert_up(1 << (rate - 1), 32_768, self.tsc_hz))
    }

    /// Sets register C's flags for what happened since the last check.
    fn update_flags(&mut self, now: u64) {
        let since = self.flags_checked;
        if now <= since {
            return;
        }
        let second = |t: u64| t / self.tsc_hz.max(1);
        if self.ram[REG_B] & B_SET == 0 && second(now) != second(since) {
            self.ram[REG_C] |= C_UF;
        }
        if let Some(period) = self.periodic_period() {
            if now / period != since / period {
                self.ram[REG_C] |= C_PF;
            }
        }
        let enabled = self.ram[REG_B] & (B_PIE | B_AIE | B_UIE);
        if self.ram[REG_C] & (enabled & (B_PIE | B_UIE)) != 0 {
            self.ram[REG_C] |= C_IRQF;
        }
        self.flags_checked = now;
    }

    /// Brings the flags up to date; true when IRQ 8 should be raised.
    pub fn poll(&mut self, now: u64) -> bool {
        let before = self.ram[REG_C] & C_IRQF;
        self.update_flags(now);
        before == 0 && self.ram[REG_C] & C_IRQF != 0
    }

    /// When the next enabled interrupt falls due. Until then `poll` raises
    /// nothing, and the flags it would set are worked out as well by the
    /// next `update_flags` (a later poll, a register C read or B write).
    pub fn next_event(&self) -> Option<u64> {
        if self.ram[REG_C] & C_IRQF != 0 {
            return None; // waiting for the guest to read register C
        }
        let b = self.ram[REG_B];
        // The first multiple of `period` after the last check, if time gets there.
        let after = |period: u64| self.flags_checked.checked_add(1)?.div_ceil(period).checked_mul(period);
        let update = (b & B_UIE != 0).then(|| after(self.tsc_hz.max(1))).flatten();
        let periodic = (b & B_PIE != 0).then(|| after(self.periodic_period()?)).flatten();
        update.into_iter().chain(periodic).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000;
    /// 2026-11-22 13:45:07 UTC, a Sunday.
    const NOW: u64 = 1_795_355_107;

    #[test]
    fn unix_time_round_trips_through_the_calendar() {
        let t = DateTime::from_unix(NOW);
        assert_eq!(t, DateTime { year: 2026, month: 11, day: 22, hour: 13, minute: 45, second: 7 });
        assert_eq!(t.to_unix(), NOW);
        assert_eq!(t.weekday(), 1);
        assert_eq!(
            DateTime::from_unix(951_782_400),
            DateTime { year: 2000, month: 2, day: 29, hour: 0, minute: 0, second: 0 }
        );
        for s in (0..4_000_000_000u64).step_by(86_400 * 37 + 1234) {
            assert_eq!(DateTime::from_unix(s).to_unix(), s);
        }
    }

    fn read(rtc: &mut Rtc, index: u8, now: u64) -> u8 {
        rtc.select(index);
        rtc.read(now)
    }

    #[test]
    fn registers_give_the_date_in_bcd_then_binary() {
        let mut rtc = Rtc::new(HZ, NOW, 5 * HZ);
        let at = 5 * HZ + 3 * HZ; // three seconds later
        let fields: Vec<u8> = [0x32, 9, 8, 7, 6, 4, 2, 0].iter().map(|&i| read(&mut rtc, i, at)).collect();
        assert_eq!(fields, vec![0x20, 0x26, 0x11, 0x22, 0x01, 0x13, 0x45, 0x10]);
        rtc.select(0x0b);
        rtc.write(B_24H | B_BINARY, at);
        assert_eq!(read(&mut rtc, 9, at), 26);
        assert_eq!(read(&mut rtc, 4, at), 13);
        assert_eq!(read(&mut rtc, 0x0d, at), D_VALID);
    }

    #[test]
    fn twelve_hour_mode_marks_pm() {
        let mut rtc = Rtc::new(HZ, NOW, 0);
        rtc.select(0x0b);
        rtc.write(0, 0);
        assert_eq!(read(&mut rtc, 4, 0), 0x81, "1 pm in BCD with the PM bit");
    }

    #[test]
    fn setting_the_time_moves_only_this_clock() {
        let mut rtc = Rtc::new(HZ, NOW, 0);
        rtc.select(9);
        rtc.write(0x30, 0);
        assert_eq!(rtc.date_time(10 * HZ).year, 2030);
        assert_eq!(rtc.date_time(10 * HZ).second, 17);
    }

    #[test]
    fn update_interrupt_fires_each_second_until_register_c_is_read() {
        let mut rtc = Rtc::new(HZ, NOW, 0);
        assert_eq!(rtc.next_event(), None);
        rtc.select(0x0a);
        rtc.write(0x20, 0); // no periodic rate, so only UF is set
        rtc.select(0x0b);
        rtc.write(B_24H | B_UIE, 100);
        assert_eq!(rtc.next_event(), Some(HZ));
        assert!(!rtc.poll(HZ - 1));
        assert!(rtc.poll(HZ));
        assert!(!rtc.poll(2 * HZ), "IRQF stays set until register C is read");
        assert_eq!(read(&mut rtc, 0x0c, 2 * HZ), C_IRQF | C_UF);
        assert_eq!(read(&mut rtc, 0x0c, 2 * HZ), 0);
    }

    #[test]
    fn nonsense_centuries_and_years_give_a_date_in_range() {
        for (register_b, century, year, expected) in [
            (0, 0x00, 0x69, FIRST_YEAR),
            (0, 0x19, 0x69, FIRST_YEAR),
            (0, 0xff, 0xff, LAST_YEAR),
            (0, 0x1f, 0x26, 2526),
            (B_BINARY, 0, 0, FIRST_YEAR),
            (B_BINARY, 255, 255, LAST_YEAR),
            (B_BINARY, 21, 5, 2105),
        ] {
            let mut rtc = Rtc::new(HZ, NOW, 0);
            rtc.select(0x0b);
            rtc.write(B_24H | register_b, 0);
            // Before 1970 for a moment: the century first, then the year.
            for (index, value) in [(0x32, century), (9, year), (0x32, century)] {
                rtc.select(index);
                rtc.write(value, 0);
            }
            assert_eq!(rtc.date_time(0).year, expected, "century {century:#x}, year {year:#x}");
            read(&mut rtc, 0x32, 0);
            read(&mut rtc, 9, 0);
        }
    }

    #[test]
    fn the_calendar_is_total() {
        assert_eq!(days_from_civil(0, 1, 1), 0, "before the epoch is the epoch");
        assert_eq!(days_from_civil(1969, 12, 31), 0);
        assert_eq!(days_from_civil(2026, 0, 0), days_from_civil(2026, 1, 1));
        assert_eq!(days_from_civil(2026, 2, 31), days_from_civil(2026, 3, 3));
        let far = DateTime { year: u32::MAX, month: 99, day: 99, hour: u32::MAX, minute: u32::MAX, second: u32::MAX };
        far.to_unix();
        far.weekday();
        assert_eq!(DateTime::from_unix(u64::MAX).year, u32::MAX, "years past u32 saturate");
    }

    #[test]
    fn timer_events_near_the_end_of_time_do_not_overflow() {
        let mut rtc = Rtc::new(HZ, NOW, 0);
        rtc.select(0x0b);
        rtc.write(B_24H | B_UIE | B_PIE, 0);
        assert!(rtc.poll(u64::MAX - 1));
        read(&mut rtc, 0x0c, u64::MAX);
        assert_eq!(rtc.next_event(), None, "no second and no period ends after u64::MAX");
        rtc.date_time(u64::MAX);
        let mut slow = Rtc::new(1, NOW, 0);
        slow.select(0);
        slow.write(0x30, u64::MAX);
        slow.read(u64::MAX);
    }

    #[test]
    fn cmos_ram_keeps_other_bytes_and_uip_is_clear() {
        let mut rtc = Rtc::new(HZ, NOW, 0);
        rtc.select(0x40);
        rtc.write(0xab, 0);
        assert_eq!(read(&mut rtc, 0x40, 0), 0xab);
        assert_eq!(read(&mut rtc, 0x0a, 0) & 0x80, 0);
    }
}
