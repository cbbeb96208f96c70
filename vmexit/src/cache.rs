//! WBINVD and INVD.
//! Executing either for the guest would stall the core and write back (WBINVD)
//! or throw away (INVD) what every other VM and the host have cached on it.
//! Guest RAM is ordinary write-back memory and no device is assigned to a guest
//! (every device is emulated, so nothing reads RAM behind the caches), so there
//! is nothing of the guest's own to write back or discard: both complete as
//! no-ops (what the guest sees is a cache that happened to hold nothing dirty).

use crate::{Outcome, Vcpu};

pub fn flush(vcpu: &mut dyn Vcpu) -> Outcome {
    crate::debug::skip(vcpu);
    Outcome::Resume
}
