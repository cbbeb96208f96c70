//! Per-vCPU exit counters: how many exits of each reason, and TSC cycles spent in
//! the hypervisor handling them (from the exit to the next entry).

use alloc::string::String;
use core::fmt::Write;
use vmx::exit::{reason, reason_name};

pub struct ExitCounters {
    pub exits: [u64; reason::COUNT],
    pub cycles: [u64; reason::COUNT],
}

impl ExitCounters {
    pub const fn new() -> Self {
        ExitCounters { exits: [0; reason::COUNT], cycles: [0; reason::COUNT] }
    }

    pub fn record(&mut self, basic_reason: u16, cycles: u64) {
        let slot = (basic_reason as usize).min(reason::COUNT - 1);
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
    }

    pub fn total(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// `reason=count/cycles-per-exit` for every reason seen, for the log and bench.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (r, (&n, &c)) in self.exits.iter().zip(self.cycles.iter()).enumerate() {
            if n > 0 {
                let _ = write!(out, " {}={}/{}", reason_name(r as u16), n, c / n);
            }
        }
        out
    }
}
