//! The VMX-preemption timer: set before each entry to the time the VM has left.
//! Expiring means the time limit is used up (the run loop checks the deadline).

use super::Outcome;

pub fn handle() -> Outcome {
    Outcome::Resume
}
