//! Per-vCPU exit counters: how many exits of each kind (the names both
//! vendors share, `vmexit::Exit::KIND_NAMES`), and TSC cycles spent in the
//! hypervisor handling them (from the exit to the next entry); with
//! `profile=loop`, the run loop's own work per entry, phase by phase.

use alloc::string::String;
use core::fmt::Write;
use vmexit::Exit;

pub struct ExitCounters {
    pub exits: [u64; Exit::KINDS],
    pub cycles: [u64; Exit::KINDS],
    /// Filled only with `profile=loop`.
    pub profile: LoopProfile,
}

impl ExitCounters {
    pub const fn new() -> Self {
        ExitCounters { exits: [0; Exit::KINDS], cycles: [0; Exit::KINDS], profile: LoopProfile::new() }
    }

    /// One exit of `kind` (`Exit::kind`).
    pub fn record(&mut self, kind: usize, cycles: u64) {
        let slot = kind.min(Exit::KINDS - 1);
        self.exits[slot] += 1;
        self.cycles[slot] += cycles;
    }

    /// Adds another vCPU's counts, for a VM-wide report.
    pub fn add(&mut self, other: &ExitCounters) {
        for (mine, theirs) in self.exits.iter_mut().zip(other.exits) {
            *mine += theirs;
        }
        for (mine, theirs) in self.cycles.iter_mut().zip(other.cycles) {
            *mine += theirs;
        }
        self.profile.add(&other.profile);
    }

    pub fn total(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// `kind=count/cycles-per-exit` for every kind seen, for the log and bench.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (name, (&n, &c)) in Exit::KIND_NAMES.iter().zip(self.exits.iter().zip(self.cycles.iter())) {
            if let Some(per_exit) = c.checked_div(n) {
                let _ = write!(out, " {name}={n}/{per_exit}");
            }
        }
        out
    }
}

/// The run loop's phases, in the order one round goes through them (see
/// `run.rs`). Each is timed from the end of the one before.
#[derive(Clone, Copy)]
pub enum Phase {
    /// Stop and time-limit checks, rearming the kick.
    Checks,
    /// Start-up signals, host console input, the chipset's timers (`poll`).
    Poll,
    /// The next deadline and the back end's timer.
    Arm,
    /// `vmexit::events::deliver_pending`.
    Deliver,
    /// The back end's `sync_to_guest` (VT-x: the virtual-APIC page mirrored).
    SyncIn,
    /// Kicking other vCPUs something was raised for (both times).
    Wake,
    /// The host console's queue (`log::pump`).
    Pump,
    /// From the guest's exit to the `Exit` value (VMCS/VMCB reads, re-injection).
    Translate,
    /// The back end's `sync_from_guest` (VT-x: the virtual-APIC page absorbed).
    SyncOut,
    /// `vmexit::dispatch`, with any marker report.
    Dispatch,
    /// Counting the exit, the output backlog check.
    Count,
    /// A TSC-deadline write done on the fast path (`run.rs`), instead of
    /// the other phases from the exit to the entry.
    Fast,
}

impl Phase {
    pub const COUNT: usize = 12;
    pub const NAMES: [&'static str; Self::COUNT] = [
        "checks",
        "poll",
        "arm",
        "deliver",
        "sync-in",
        "wake",
        "pump",
        "translate",
        "sync-out",
        "dispatch",
        "count",
        "fast",
    ];
}

/// `profile=loop`: cycles of the run loop's fixed work, summed over entries.
#[derive(Clone, Copy)]
pub struct LoopProfile {
    /// Rounds of the loop that entered the guest.
    pub entries: u64,
    pub phases: [u64; Phase::COUNT],
    /// From the guest's exit to the next entry, by the kind of that exit:
    /// how many such round trips, and their cycles.
    pub trips: [u64; Exit::KINDS],
    pub trip_cycles: [u64; Exit::KINDS],
}

impl LoopProfile {
    pub const fn new() -> Self {
        LoopProfile { entries: 0, phases: [0; Phase::COUNT], trips: [0; Exit::KINDS], trip_cycles: [0; Exit::KINDS] }
    }

    pub fn add(&mut self, other: &LoopProfile) {
        self.entries += other.entries;
        for (mine, theirs) in self.phases.iter_mut().zip(other.phases) {
            *mine += theirs;
        }
        for (mine, theirs) in self.trips.iter_mut().zip(other.trips) {
            *mine += theirs;
        }
        for (mine, theirs) in self.trip_cycles.iter_mut().zip(other.trip_cycles) {
            *mine += theirs;
        }
    }

    /// `N entries; round-trip=.. checks=.. ...; by kind: cpuid=../..`: cycles
    /// per entry for each phase (summed over all entries, so a phase only some
    /// rounds go through counts at its share), the round trip from an exit to
    /// the next entry, overall and by exit kind (count/cycles per trip).
    /// None when nothing was profiled.
    pub fn summary(&self) -> Option<String> {
        let entries = self.entries;
        if entries == 0 {
            return None;
        }
        let (trips, trip_cycles): (u64, u64) = (self.trips.iter().sum(), self.trip_cycles.iter().sum());
        let mut out = String::new();
        let _ = write!(out, "{entries} entries; round-trip={}", trip_cycles.checked_div(trips).unwrap_or(0));
        for (name, cycles) in Phase::NAMES.iter().zip(self.phases) {
            let _ = write!(out, " {name}={}", cycles / entries);
        }
        out.push_str("; round trip by kind:");
        for (name, (&n, &c)) in Exit::KIND_NAMES.iter().zip(self.trips.iter().zip(self.trip_cycles.iter())) {
            if let Some(per_trip) = c.checked_div(n) {
                let _ = write!(out, " {name}={n}/{per_trip}");
            }
        }
        Some(out)
    }
}
