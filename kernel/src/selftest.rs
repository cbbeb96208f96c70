//! Boot self-checks (`selftest` on the command line): each check logs one line
//! starting `selftest: ok` or `selftest: FAIL`, and the run ends with the verdict.
//! The integration tests in `tests/cases.toml` assert on these lines.

use crate::memory::{self, MapSummary};
use crate::smp::SmpResult;
use crate::{apic, percpu, time, trap};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// A passing check's detail, or why it failed.
type CheckResult = Result<String, String>;

pub fn run(map: &MapSummary, smp: &SmpResult) -> bool {
    let checks: [(&str, &dyn Fn() -> CheckResult); 8] = [
        ("boot options", &check_boot_options),
        ("cpus", &|| check_cpus(smp)),
        ("memory map", &|| check_memory_map(map)),
        ("frames", &check_frames),
        ("heap", &check_heap),
        ("timer", &check_timer),
        ("timer modes", &check_timer_mode_switch),
        ("ipi", &check_ipi),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(detail) => log::info!("selftest: ok {name}: {detail}"),
            Err(why) => {
                failed += 1;
                log::error!("selftest: FAIL {name}: {why}");
            }
        }
    }
    if failed == 0 {
        log::info!("selftest: all checks passed");
    } else {
        log::error!("selftest: FAILED {failed} check(s)");
    }
    failed == 0
}

/// The parser of the boot command line, on words whose meaning is known
/// (unknown ones only log a warning).
fn check_boot_options() -> CheckResult {
    use crate::cmdline::{parse, ApicVirtualization};
    let cases: [(&str, bool, ApicVirtualization); 6] = [
        ("", false, ApicVirtualization::Full),
        ("profile=loop", true, ApicVirtualization::Full),
        ("selftest profile=loop apicv=off", true, ApicVirtualization::Off),
        ("profile=loop profile=off", false, ApicVirtualization::Full),
        ("profile=off profile=loop", true, ApicVirtualization::Full),
        ("apicv=registers  selftest", false, ApicVirtualization::Registers),
    ];
    for (text, profile_loop, apicv) in cases {
        let options = parse(text);
        if (options.profile_loop, options.apic_virtualization) != (profile_loop, apicv) {
            return Err(format!(
                "'{text}' gave profile_loop={} apicv={:?}, expected {profile_loop} and {apicv:?}",
                options.profile_loop, options.apic_virtualization
            ));
        }
    }
    Ok(format!("{} command lines parsed as expected", cases.len()))
}

fn check_cpus(smp: &SmpResult) -> CheckResult {
    let online = percpu::online().count();
    if online != smp.expected {
        return Err(format!("{online} of {} CPUs online", smp.expected));
    }
    let mut ids: Vec<u32> = percpu::online().map(|c| c.apic_id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != online {
        return Err(format!("APIC ids are not distinct: {ids:?}"));
    }
    Ok(format!("{online} CPUs online, APIC ids {ids:?}"))
}

fn check_memory_map(map: &MapSummary) -> CheckResult {
    if !map.ordered_and_disjoint {
        return Err("regions overlap".into());
    }
    if map.usable_bytes < 32 << 20 {
        return Err(format!("only {} KiB usable", map.usable_bytes >> 10));
    }
    Ok(format!(
        "{} regions, {} MiB usable, highest usable address {:#x}",
        map.regions,
        map.usable_bytes >> 20,
        map.highest_usable
    ))
}

fn check_frames() -> CheckResult {
    let before = memory::free_frame_count();
    let frames: Vec<u64> = (0..256).map_while(|_| memory::alloc_frame()).collect();
    if frames.len() != 256 {
        return Err(format!("only {} of 256 frames could be allocated", frames.len()));
    }
    let mut sorted = frames.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != frames.len() || frames.iter().any(|f| f % memory::FRAME_SIZE != 0 || *f < 0x10_0000) {
        return Err("frames repeat, are misaligned or lie below 1 MiB".into());
    }
    // Allocated frames are zeroed and writable through the physical mapping.
    for &f in &frames {
        let p = memory::phys_to_virt(f) as *mut u64;
        // SAFETY: the frame is ours until freed below.
        unsafe {
            if p.read_volatile() != 0 {
                return Err(format!("frame {f:#x} was not zeroed"));
            }
            p.write_volatile(f);
        }
    }
    for &f in &frames {
        // SAFETY: as above.
        if unsafe { (memory::phys_to_virt(f) as *const u64).read_volatile() } != f {
            return Err(format!("frame {f:#x} did not keep its contents"));
        }
        memory::free_frame(f);
    }
    let after = memory::free_frame_count();
    if after != before {
        return Err(format!("{before} free frames before, {after} after"));
    }
    Ok(format!("256 distinct zeroed frames allocated and returned, {} MiB free", (after * 4096) >> 20))
}

fn check_heap() -> CheckResult {
    let big: Vec<u64> = (0..200_000u64).collect();
    if big.iter().sum::<u64>() != 199_999 * 200_000 / 2 {
        return Err("a large vector lost its contents".into());
    }
    let mut map = BTreeMap::new();
    for i in 0..5_000u32 {
        map.insert(i.wrapping_mul(2_654_435_761), i);
    }
    if map.len() != 5_000 || map.values().map(|&v| v as u64).sum::<u64>() != 4_999 * 5_000 / 2 {
        return Err("a B-tree map lost entries".into());
    }
    drop(big);
    drop(map);
    // After freeing, a block as large as the first must fit again.
    let again: Vec<u64> = Vec::with_capacity(200_000);
    Ok(format!("1.6 MB vector, 5000-entry map, space reused ({} bytes)", again.capacity() * 8))
}

fn check_timer() -> CheckResult {
    let cpu = percpu::current().ok_or("no per-CPU data")?;
    const HZ: u64 = 100;
    const WANTED: u64 = 10;
    let start = cpu.timer_ticks.load(Ordering::Relaxed);
    let tsc_start = time::rdtsc();
    apic::timer_start_periodic(time::apic_timer_hz(), HZ);
    // Ten ticks are 100 ms; allow twenty times that for slow emulation.
    let deadline = tsc_start + 2 * time::tsc_hz();
    while cpu.timer_ticks.load(Ordering::Relaxed) - start < WANTED && time::rdtsc() < deadline {
        x86_64::instructions::interrupts::enable_and_hlt();
    }
    apic::timer_stop();
    let ticks = cpu.timer_ticks.load(Ordering::Relaxed) - start;
    let elapsed_ms = (time::rdtsc() - tsc_start) * 1000 / time::tsc_hz().max(1);
    if ticks < WANTED {
        return Err(format!("{ticks} timer interrupts in {elapsed_ms} ms, wanted {WANTED}"));
    }
    Ok(format!("{ticks} interrupts at {HZ} Hz in {elapsed_ms} ms of TSC time"))
}

/// The timer goes from a one-shot about to fire (count 1, as a deadline
/// already passed arms it) to the periodic tick, as a core does when a vCPU
/// leaves it, many times. It must never be periodic with the small count in
/// between: an interrupt every few nanoseconds, which on QEMU's TCG keeps
/// its main loop firing that timer for ever while the CPUs wait for it (two
/// CI runs hung so). Then the tick runs at its rate, not as a storm.
fn check_timer_mode_switch() -> CheckResult {
    let cpu = percpu::current().ok_or("no per-CPU data")?;
    const HZ: u64 = 100;
    const SWITCHES: u32 = 2000;
    x86_64::instructions::interrupts::disable();
    for _ in 0..SWITCHES {
        apic::timer_one_shot(1);
        apic::timer_start_periodic(time::apic_timer_hz(), HZ);
    }
    let start = cpu.timer_ticks.load(Ordering::Relaxed);
    let tsc_start = time::rdtsc();
    // 50 ms: five ticks at 100 Hz, and the one-shots' last interrupt.
    while time::rdtsc() < tsc_start + time::tsc_hz() / 20 {
        x86_64::instructions::interrupts::enable_and_hlt();
    }
    apic::timer_stop();
    let ticks = cpu.timer_ticks.load(Ordering::Relaxed) - start;
    if ticks > 20 {
        return Err(format!("{ticks} timer interrupts in 50 ms after {SWITCHES} switches, wanted about 5"));
    }
    Ok(format!("{SWITCHES} one-shot to periodic switches, then {ticks} interrupts in 50 ms"))
}

fn check_ipi() -> CheckResult {
    let others: Vec<_> = percpu::online().filter(|c| c.index != percpu::current_index()).collect();
    for cpu in &others {
        apic::send_fixed(cpu.apic_id, trap::VECTOR_PING);
    }
    let deadline = time::rdtsc() + time::tsc_hz();
    while time::rdtsc() < deadline {
        if others.iter().all(|c| c.ipis_received.load(Ordering::Acquire) >= 1) {
            return Ok(format!("{} of {} CPUs answered", others.len(), others.len()));
        }
        core::hint::spin_loop();
    }
    let silent: Vec<u32> =
        others.iter().filter(|c| c.ipis_received.load(Ordering::Acquire) == 0).map(|c| c.index).collect();
    Err(format!("CPUs {silent:?} did not take the IPI"))
}

/// Test configuration only: misbehave on purpose, so the test runner can prove it
/// notices crashes and hangs.
#[cfg(feature = "test-hooks")]
pub fn inject(injection: crate::cmdline::Injection) {
    use crate::cmdline::Injection;
    log::warn!("injecting {injection:?} as the boot command line asks");
    match injection {
        // SAFETY: deliberately touches an unmapped address to raise #PF.
        Injection::PageFault => unsafe {
            core::ptr::write_volatile(0xdead_b000 as *mut u64, 1);
        },
        Injection::Panic => panic!("injected panic"),
        Injection::StackOverflow => {
            log::warn!("recursing until the kernel stack's guard page is hit");
            recurse(0);
        }
        Injection::Hang => loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        },
    }
}

/// Uses stack without end. `black_box` keeps `pad` alive across the call, so the
/// compiler can neither turn the recursion into a loop nor shrink the frame.
#[cfg(feature = "test-hooks")]
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut pad = [depth; 64];
    core::hint::black_box(&mut pad);
    let below = recurse(pad[0] + 1);
    core::hint::black_box(&pad);
    below
}
