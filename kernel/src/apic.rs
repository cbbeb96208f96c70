//! The local APIC, in x2APIC mode (MSRs) when the CPU has it, else xAPIC (MMIO).
//! Everything else in the kernel uses the functions here and never cares which.

use crate::memory::phys_to_virt;
use crate::trap;
#[cfg(feature = "test-hooks")]
use core::sync::atomic::AtomicBool;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
const APIC_X2_ENABLE: u64 = 1 << 10;

// Register offsets in the xAPIC page; x2APIC MSR = 0x800 + offset / 16.
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SPURIOUS: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

const TIMER_MASKED: u32 = 1 << 16;
const TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 16".
const TIMER_DIVIDE_16: u32 = 0b0011;
pub const TIMER_DIVISOR: u64 = 16;

const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_NMI: u32 = 0b100 << 8;
const ICR_ALL_EXCLUDING_SELF: u32 = 0b11 << 18;

const MODE_NONE: u8 = 0;
const MODE_XAPIC: u8 = 1;
const MODE_X2APIC: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_NONE);
static XAPIC_VIRT: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    XApic,
    X2Apic,
}

fn read(reg: u32) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC registers are architectural MSRs once x2APIC is enabled.
        MODE_X2APIC => unsafe { Msr::new(0x800 + (reg >> 4)).read() as u32 },
        // SAFETY: the xAPIC page is mapped through the physical mapping.
        MODE_XAPIC => unsafe {
            core::ptr::read_volatile((XAPIC_VIRT.load(Ordering::Relaxed) + reg as u64) as *const u32)
        },
        _ => 0,
    }
}

fn write(reg: u32, value: u32) {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: as in `read`.
        MODE_X2APIC => unsafe { Msr::new(0x800 + (reg >> 4)).write(value as u64) },
        // SAFETY: as in `read`.
        MODE_XAPIC => unsafe {
            core::ptr::write_volatile((XAPIC_VIRT.load(Ordering::Relaxed) + reg as u64) as *mut u32, value)
        },
        _ => {}
    }
}

/// Chooses the mode (on the BSP) and enables this CPU's APIC.
pub fn init_bsp(mmio_phys: u64) -> Mode {
    let x2 = raw_cpuid::CpuId::new().get_feature_info().is_some_and(|f| f.has_x2apic());
    XAPIC_VIRT.store(phys_to_virt(mmio_phys), Ordering::Relaxed);
    MODE.store(if x2 { MODE_X2APIC } else { MODE_XAPIC }, Ordering::Release);
    enable_this_cpu();
    if x2 {
        Mode::X2Apic
    } else {
        Mode::XApic
    }
}

/// Enables the calling CPU's local APIC in the mode the BSP chose.
pub fn enable_this_cpu() {
    let mut base = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; enabling the APIC (and
    // x2APIC when CPUID has it) does not move the MMIO page.
    unsafe {
        let mut value = base.read() | APIC_GLOBAL_ENABLE;
        if MODE.load(Ordering::Relaxed) == MODE_X2APIC {
            value |= APIC_X2_ENABLE;
        }
        base.write(value);
    }
    write(REG_TPR, 0);
    write(REG_SPURIOUS, 0x100 | trap::VECTOR_SPURIOUS as u32);
    write(REG_LVT_TIMER, TIMER_MASKED | trap::VECTOR_TIMER as u32);
}

pub fn is_enabled() -> bool {
    MODE.load(Ordering::Relaxed) != MODE_NONE
}

pub fn id() -> u32 {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => read(REG_ID),
        MODE_XAPIC => read(REG_ID) >> 24,
        // Before the APIC is set up, CPUID's initial APIC ID says the same.
        _ => raw_cpuid::CpuId::new().get_feature_info().map_or(0, |f| f.initial_local_apic_id() as u32),
    }
}

pub fn end_of_interrupt() {
    write(REG_EOI, 0);
}

fn send_ipi(destination: u32, command: u32) {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: the x2APIC ICR takes the destination in its high half.
        MODE_X2APIC => unsafe { Msr::new(0x830).write(((destination as u64) << 32) | command as u64) },
        MODE_XAPIC => {
            write(REG_ICR_HIGH, destination << 24);
            write(REG_ICR_LOW, command);
            while read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
                core::hint::spin_loop();
            }
        }
        _ => {}
    }
}

pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

pub fn send_startup(apic_id: u32, page: u8) {
    send_ipi(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | page as u32);
}

pub fn send_fixed(apic_id: u32, vector: u8) {
    send_ipi(apic_id, ICR_LEVEL_ASSERT | vector as u32);
}

/// NMI to every other CPU: they halt, since a crash is in progress.
pub fn stop_other_cpus() {
    if is_enabled() && crate::percpu::online().nth(1).is_some() {
        send_ipi(0, ICR_ALL_EXCLUDING_SELF | ICR_NMI | ICR_LEVEL_ASSERT);
    }
}

/// Starts the timer counting down from the maximum, masked, for calibration.
pub fn timer_start_free_running() {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, TIMER_MASKED | trap::VECTOR_TIMER as u32);
    write(REG_TIMER_INITIAL, u32::MAX);
}

pub fn timer_current() -> u32 {
    read(REG_TIMER_CURRENT)
}

/// Periodic timer interrupts at `hz`, given the timer's input frequency.
/// The timer is stopped first: a change of mode applies to the count
/// already loaded, and a one-shot's small count (1 for a deadline already
/// passed) made periodic would interrupt every few nanoseconds until the
/// new count is written (on QEMU's TCG, for ever: its main loop keeps
/// firing that timer, and the CPU that would write the count waits for it).
pub fn timer_start_periodic(timer_input_hz: u64, hz: u64) {
    let count = (timer_input_hz / TIMER_DIVISOR / hz).clamp(1, u32::MAX as u64) as u32;
    write(REG_TIMER_INITIAL, 0);
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, TIMER_PERIODIC | trap::VECTOR_TIMER as u32);
    write(REG_TIMER_INITIAL, count);
}

/// One timer interrupt after `ticks` of the timer's input clock (at least
/// one count): how a back end without a preemption timer (SVM) gets the core
/// back from a guest by a deadline.
pub fn timer_one_shot(ticks: u64) {
    let count = ticks.div_ceil(TIMER_DIVISOR).clamp(1, u32::MAX as u64) as u32;
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, trap::VECTOR_TIMER as u32);
    write(REG_TIMER_INITIAL, count);
}

/// `timer_one_shot` after `tsc_ticks` of the host's TSC, rounded up so that
/// it does not fire before them by the rounding (it still may, by the
/// calibration's error).
pub fn timer_one_shot_tsc(tsc_ticks: u64) {
    let ticks =
        (tsc_ticks as u128 * crate::time::apic_timer_hz() as u128).div_ceil(crate::time::tsc_hz().max(1) as u128);
    #[cfg(feature = "test-hooks")]
    let ticks = if EARLY_ONE_SHOTS.load(Ordering::Relaxed) { ticks * 9 / 10 } else { ticks };
    timer_one_shot(ticks.min(u64::MAX as u128) as u64);
}

/// `one-shot=early` (test configuration): see `fire_one_shots_early`.
#[cfg(feature = "test-hooks")]
static EARLY_ONE_SHOTS: AtomicBool = AtomicBool::new(false);

/// From now on every TSC-timed one-shot fires a tenth before its time.
#[cfg(feature = "test-hooks")]
pub fn fire_one_shots_early() {
    EARLY_ONE_SHOTS.store(true, Ordering::Relaxed);
}

pub fn timer_stop() {
    write(REG_LVT_TIMER, TIMER_MASKED | trap::VECTOR_TIMER as u32);
    write(REG_TIMER_INITIAL, 0);
}
