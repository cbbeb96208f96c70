//! WBINVD exits (secondary control "WBINVD exiting", where the CPU has it);
//! INVD always exits.
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

/// INVD would throw away dirty lines of every VM on the core (and the host's),
/// so it must never run for a guest. For the same reason as WBINVD there is
/// nothing of the guest's own to discard: it completes as a no-op (what the
/// guest sees is a cache that happened to hold nothing dirty).
pub fn invd() -> Outcome {
    skip_instruction();
    Outcome::Resume
}
