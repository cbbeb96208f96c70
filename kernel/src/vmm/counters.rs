//! Per-vCPU exit counters: how many exits of each kind (the names both
//! vendors share, `vmexit::Exit::KIND_NAMES`), and TSC cycles spent in the
//! hypervisor handling them (from the exit to the next entry).

use alloc::string::String;
use core::fmt::Write;
use vmexit::Exit;

pub struct ExitCounters {
    pub exits: [u64; Exit::KINDS],
    pub cycles: [u64; Exit::KINDS],
}

impl ExitCounters {
    pub const fn new() -> Self {
        ExitCounters { exits: [0; Exit::KINDS], cycles: [0; Exit::KINDS] }
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
