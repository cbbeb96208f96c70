//! HLT. The vCPU waits in the halted state: the run loop arms its timer for the
//! VM's next timer event, and injecting an interrupt ends the wait. With
//! interrupts disabled only an NMI (or, for an application processor, an INIT)
//! can wake it: on vCPU 0 that ends the VM; an application processor is parked
//! in the VMM, as guests park CPUs before powering off. (Parked outside the
//! guest because Bochs does not let external interrupts end a guest's HLT while
//! its IF is clear, so the VMM could not reach it.)
//!
//! HLT with RFLAGS.TF set raises its single-step #DB at once and does not
//! wait, as KVM does: the handler returns after the HLT, which a HLT loop
//! takes as any wake-up. (VT-x would refuse to enter a guest halted with TF
//! set and no single step pending.)

use crate::vcpu::RFLAGS_IF;
use crate::{Outcome, Stop, Vcpu};
use devices::Chipset;

pub fn handle(vcpu: &mut dyn Vcpu, chipset: &Chipset) -> Outcome {
    // Only an NMI wakes a CPU halted with interrupts off; without one on its way,
    // a VM whose bootstrap processor does that is over. One on its way may
    // still be in the local APIC (sent while this vCPU ran; the next entry
    // takes it).
    let nmi = vcpu.pending().nmi || chipset.nmi_pending(vcpu.index());
    if vcpu.rflags() & RFLAGS_IF == 0 && !nmi {
        if vcpu.index() == 0 {
            return Outcome::Stop(Stop::Halted);
        }
        crate::debug::skip(vcpu);
        return Outcome::Park;
    }
    if !crate::debug::skip(vcpu) {
        vcpu.halt();
    }
    Outcome::Resume
}
