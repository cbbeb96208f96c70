//! WBINVD exits (secondary control "WBINVD exiting", where the CPU has it).
//! Executing it for the guest would stall the core and evict what every other
//! VM on it has cached. Guest RAM is ordinary write-back memory and no device
//! is assigned to a guest (every device is emulated, so nothing reads RAM
//! behind the caches), so there is nothing for the guest to write back: the
//! instruction completes as a no-op.

use super::{skip_instruction, Outcome};

pub fn wbinvd() -> Outcome {
    skip_instruction();
    Outcome::Resume
}
