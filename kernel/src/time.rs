//! Time: the TSC is the clock (uptime, delays); its frequency and the local APIC
//! timer's come from CPUID 0x15/0x16 when the CPU reports them, else they are
//! measured against the best reference the platform has: HPET, ACPI PM timer, or
//! the 8254 PIT, which every PC has.

use crate::apic;
use crate::memory::phys_to_virt;
use crate::platform::{Platform, PmTimerPort};
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static APIC_TIMER_HZ: AtomicU64 = AtomicU64::new(0);

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Called first thing on the BSP; the log's clock starts here.
pub fn mark_boot() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    if let Some(hz) = cpuid_tsc_hz() {
        TSC_HZ.store(hz, Ordering::Relaxed);
    }
}

/// Microseconds since boot; 0 until the TSC frequency is known.
pub fn micros_since_boot() -> u64 {
    tsc_to_micros(rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed)))
}

/// A span of TSC ticks in microseconds; 0 until the TSC frequency is known.
pub fn tsc_to_micros(ticks: u64) -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return 0;
    }
    (ticks as u128 * 1_000_000 / hz as u128) as u64
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

pub fn apic_timer_hz() -> u64 {
    APIC_TIMER_HZ.load(Ordering::Relaxed)
}

/// The TSC value `micros` microseconds from now.
pub fn deadline_after_us(micros: u64) -> u64 {
    rdtsc() + micros * (tsc_hz().max(1_000_000) / 1_000_000)
}

/// Busy-waits `micros` microseconds on the TSC.
pub fn delay_us(micros: u64) {
    let end = deadline_after_us(micros);
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

fn cpuid_tsc_hz() -> Option<u64> {
    let cpuid = raw_cpuid::CpuId::new();
    if let Some(hz) = cpuid.get_tsc_info().and_then(|t| t.tsc_frequency()) {
        return Some(hz);
    }
    let mhz = cpuid.get_processor_frequency_info()?.processor_base_frequency();
    (mhz != 0).then_some(mhz as u64 * 1_000_000)
}

/// The core crystal clock, which drives the local APIC timer on CPUs reporting it.
fn cpuid_crystal_hz() -> Option<u64> {
    let hz = raw_cpuid::CpuId::new().get_tsc_info()?.nominal_frequency() as u64;
    (hz != 0).then_some(hz)
}

/// A clock of known frequency to measure the others against.
#[derive(Debug, Clone, Copy)]
pub enum Reference {
    Hpet { registers: u64, femtos_per_tick: u64 },
    PmTimer { port: u16, bits32: bool },
    Pit,
}

/// A reference clock the boot command line can ask for (`clock=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    Hpet,
    PmTimer,
    Pit,
}

impl Reference {
    /// The reference asked for if the platform has it, else the best there is.
    pub fn choose(platform: &Platform, wanted: Option<ReferenceKind>) -> Reference {
        let asked = match wanted {
            Some(ReferenceKind::Hpet) => Self::hpet(platform),
            Some(ReferenceKind::PmTimer) => Self::pm_timer(platform),
            Some(ReferenceKind::Pit) => Some(Reference::Pit),
            None => None,
        };
        asked.unwrap_or_else(|| {
            if let Some(kind) = wanted {
                log::warn!("clock={kind:?} asked for, but this machine does not have it");
            }
            Self::hpet(platform).or_else(|| Self::pm_timer(platform)).unwrap_or(Reference::Pit)
        })
    }

    fn pm_timer(platform: &Platform) -> Option<Reference> {
        let PmTimerPort::Io { port, bits32 } = platform.pm_timer?;
        Some(Reference::PmTimer { port, bits32 })
    }

    fn hpet(platform: &Platform) -> Option<Reference> {
        if let Some(phys) = platform.hpet_address {
            let registers = phys_to_virt(phys);
            // SAFETY: the HPET block is MMIO inside the physical mapping (first 4 GiB).
            let caps = unsafe { core::ptr::read_volatile(registers as *const u64) };
            let femtos_per_tick = caps >> 32;
            if femtos_per_tick != 0 && femtos_per_tick <= 100_000_000 {
                // SAFETY: general configuration register, bit 0 = counter enable.
                unsafe {
                    let config = (registers + 0x10) as *mut u64;
                    core::ptr::write_volatile(config, core::ptr::read_volatile(config) | 1);
                }
                return Some(Reference::Hpet { registers, femtos_per_tick });
            }
        }
        None
    }

    pub fn name(&self) -> &'static str {
        match self {
            Reference::Hpet { .. } => "HPET",
            Reference::PmTimer { .. } => "ACPI PM timer",
            Reference::Pit => "PIT",
        }
    }

    /// Spins for about `micros` of reference time, sampling `sample` at the start
    /// and end; returns (start, end) samples and the exact reference nanoseconds.
    fn measure(&self, micros: u64, sample: impl Fn() -> (u64, u32)) -> ((u64, u32), (u64, u32), u64) {
        match *self {
            Reference::Hpet { registers, femtos_per_tick } => {
                // SAFETY: main counter register of the enabled HPET.
                let counter = || unsafe { core::ptr::read_volatile((registers + 0xf0) as *const u64) };
                let ticks = micros * 1_000_000_000 / femtos_per_tick;
                let t0 = counter();
                let s0 = sample();
                let mut t1 = t0;
                while t1.wrapping_sub(t0) < ticks {
                    t1 = counter();
                }
                let s1 = sample();
                (s0, s1, t1.wrapping_sub(t0) * femtos_per_tick / 1_000_000)
            }
            Reference::PmTimer { port, bits32 } => {
                const PM_HZ: u64 = 3_579_545;
                let mask: u32 = if bits32 { u32::MAX } else { 0x00ff_ffff };
                let mut io = Port::<u32>::new(port);
                // SAFETY: the FADT names this port as the PM timer.
                let mut counter = || unsafe { io.read() } & mask;
                let ticks = (micros * PM_HZ / 1_000_000) as u32;
                let t0 = counter();
                let s0 = sample();
                let mut elapsed = 0;
                while elapsed < ticks {
                    elapsed = counter().wrapping_sub(t0) & mask;
                }
                let s1 = sample();
                (s0, s1, elapsed as u64 * 1_000_000_000 / PM_HZ)
            }
            Reference::Pit => {
                const PIT_HZ: u64 = 1_193_182;
                let ticks = (micros * PIT_HZ / 1_000_000).min(0xffff) as u16;
                // SAFETY: PIT channel 2 with its gate on port 0x61, speaker output off;
                // nothing else in Basalt uses channel 2.
                unsafe {
                    let mut gate = Port::<u8>::new(0x61);
                    let value = (gate.read() & !0x02) | 0x01;
                    gate.write(value & !0x01);
                    Port::<u8>::new(0x43).write(0b1011_0000); // channel 2, lo/hi, mode 0
                    let mut data = Port::<u8>::new(0x42);
                    data.write(ticks as u8);
                    data.write((ticks >> 8) as u8);
                    gate.write(value);
                    let s0 = sample();
                    while gate.read() & 0x20 == 0 {}
                    let s1 = sample();
                    (s0, s1, ticks as u64 * 1_000_000_000 / PIT_HZ)
                }
            }
        }
    }
}

/// How the frequencies were obtained, for the boot log.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    pub tsc_hz: u64,
    pub tsc_from_cpuid: bool,
    pub apic_timer_hz: u64,
    pub apic_from_cpuid: bool,
    pub reference: &'static str,
}

/// Fixes the TSC and APIC timer frequencies. Runs on the BSP with its APIC on.
pub fn calibrate(reference: Reference) -> Calibration {
    apic::timer_start_free_running();
    let sample = || (rdtsc(), apic::timer_current());
    // Several 10 ms windows; the median resists emulator hiccups.
    let mut tsc = [0u64; 5];
    let mut lapic = [0u64; 5];
    for i in 0..5 {
        let ((tsc0, apic0), (tsc1, apic1), nanos) = reference.measure(10_000, sample);
        let nanos = nanos.max(1) as u128;
        tsc[i] = ((tsc1 - tsc0) as u128 * 1_000_000_000 / nanos) as u64;
        lapic[i] = ((apic0.wrapping_sub(apic1)) as u128 * apic::TIMER_DIVISOR as u128 * 1_000_000_000 / nanos) as u64;
    }
    apic::timer_stop();
    tsc.sort_unstable();
    lapic.sort_unstable();
    let (measured_tsc, measured_apic) = (tsc[2], lapic[2]);

    let cpuid_tsc = cpuid_tsc_hz();
    // Trust CPUID unless the measurement disagrees wildly (an emulator's CPUID
    // can name a model frequency its clock does not follow).
    let agrees = |claimed: u64, measured: u64| measured.abs_diff(claimed) <= claimed / 4;
    let (tsc_hz, tsc_from_cpuid) = match cpuid_tsc {
        Some(hz) if agrees(hz, measured_tsc) => (hz, true),
        _ => (measured_tsc, false),
    };
    let (apic_timer_hz, apic_from_cpuid) = match cpuid_crystal_hz() {
        Some(hz) if agrees(hz, measured_apic) => (hz, true),
        _ => (measured_apic, false),
    };
    TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    APIC_TIMER_HZ.store(apic_timer_hz, Ordering::Relaxed);
    Calibration { tsc_hz, tsc_from_cpuid, apic_timer_hz, apic_from_cpuid, reference: reference.name() }
}

/// The host's wall-clock time at `WALL_CLOCK_TSC` (seconds since 1970, UTC).
static WALL_CLOCK_UNIX: AtomicU64 = AtomicU64::new(0);
static WALL_CLOCK_TSC: AtomicU64 = AtomicU64::new(0);

/// Reads the host's CMOS clock once, on the BSP at boot. The CMOS index/data
/// port pair cannot be shared: VMs starting on several cores at once would
/// interleave their reads, so they use `wall_clock_unix` instead.
pub fn mark_wall_clock() {
    WALL_CLOCK_TSC.store(rdtsc(), Ordering::Relaxed);
    WALL_CLOCK_UNIX.store(read_host_rtc(), Ordering::Relaxed);
}

/// The host's wall-clock time now (seconds since 1970, UTC), which guests'
/// RTCs start from: the boot reading advanced by the TSC. 0 if the RTC read
/// as nonsense.
pub fn wall_clock_unix() -> u64 {
    let at_boot = WALL_CLOCK_UNIX.load(Ordering::Relaxed);
    if at_boot == 0 {
        return 0;
    }
    let ticks = rdtsc().saturating_sub(WALL_CLOCK_TSC.load(Ordering::Relaxed));
    at_boot + ticks / tsc_hz().max(1)
}

/// The host's CMOS RTC as Unix time; 0 if it reads as nonsense.
fn read_host_rtc() -> u64 {
    let read = |index: u8| {
        // SAFETY: the CMOS index/data ports; the kernel owns the RTC and reads
        // it only here, once, on the BSP at boot (`mark_wall_clock`).
        unsafe {
            Port::<u8>::new(0x70).write(index);
            Port::<u8>::new(0x71).read()
        }
    };
    // Wait out an update in progress (at most ~2 ms), then read twice until stable.
    let limit = deadline_after_us(10_000);
    while read(0x0a) & 0x80 != 0 && rdtsc() < limit {
        core::hint::spin_loop();
    }
    let snapshot = || [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(read);
    let mut fields = snapshot();
    for _ in 0..3 {
        let again = snapshot();
        if again == fields {
            break;
        }
        fields = again;
    }
    let status_b = read(0x0b);
    let binary = status_b & 0x04 != 0;
    let value = |v: u8| if binary { v as u32 } else { devices::rtc::from_bcd(v) };
    let hour = {
        let raw = fields[2];
        let h = value(raw & 0x7f);
        if status_b & 0x02 == 0 {
            h % 12 + if raw & 0x80 != 0 { 12 } else { 0 }
        } else {
            h
        }
    };
    let century = match value(fields[6]) {
        19..=21 => value(fields[6]),
        _ => 20,
    };
    let date = devices::rtc::DateTime {
        year: century * 100 + value(fields[5]),
        month: value(fields[4]),
        day: value(fields[3]),
        hour,
        minute: value(fields[1]),
        second: value(fields[0]),
    };
    let sane = (1..=12).contains(&date.month) && (1..=31).contains(&date.day) && date.hour < 24 && date.year >= 1970;
    if sane {
        date.to_unix()
    } else {
        0
    }
}
