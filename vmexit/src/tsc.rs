//! The guest's time-stamp counter. Each vCPU's TSC is the host's plus an
//! offset the CPU adds to RDTSC and RDTSCP (`Vcpu::tsc_offset`), modulo 2^64
//! as the CPU adds it. The offset starts at 0 and IA32_TSC_ADJUST reads it
//! (SDM vol. 3, 18.17.3: TSC_ADJUST starts at 0 and moves by exactly what
//! the TSC is moved by): writing TSC_ADJUST sets it, so the TSC moves by the
//! difference; writing the TSC moves it so that the TSC reads the value,
//! and TSC_ADJUST follows. Device models keep counting in the host's TSC
//! (the PM timer, RTC, PIT and the local APIC's timers): only values the
//! guest reads or writes in its own TSC are converted.

/// The guest's TSC when the host's reads `host`.
pub fn guest(host: u64, offset: u64) -> u64 {
    host.wrapping_add(offset)
}

/// The offset that makes the guest's TSC read `value` when the host's reads
/// `host`.
pub fn offset_for(value: u64, host: u64) -> u64 {
    value.wrapping_sub(host)
}

/// The host TSC at which the guest's TSC reaches `deadline` (a TSC-deadline
/// write), given the host's TSC `now`. The timer fires when the guest's TSC
/// is at or past the deadline, unsigned as the CPU compares them: a deadline
/// not ahead of the guest's TSC fires at once (`now`); one ahead fires that
/// many ticks from now, or never before the host's TSC runs out (a deadline
/// further than the host's TSC can count is centuries away).
pub fn deadline_on_host(deadline: u64, offset: u64, now: u64) -> u64 {
    match deadline.checked_sub(guest(now, offset)) {
        Some(ahead) => now.saturating_add(ahead),
        None => now,
    }
}
