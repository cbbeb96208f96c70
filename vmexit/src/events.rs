//! Delivering events to the guest, and the exits that belong to it: a pending
//! interrupt or NMI is injected at the next entry when the guest can take it;
//! otherwise the back end is asked for the window exit that comes the moment
//! it can. Exceptions Basalt intercepts go back to the guest.

use crate::vcpu::RFLAGS_IF;
use crate::{Outcome, Stop, Vcpu, AC, DB};
use devices::Chipset;

/// Called before every entry: injects one pending event if the guest can take
/// it now, or asks for the window exit that says when it can. Events come from
/// the VM's interrupt controllers and from the vCPU's own queue (hypercalls).
pub fn deliver_pending(vcpu: &mut dyn Vcpu, chipset: &Chipset) {
    let index = vcpu.index();
    if chipset.take_nmi(index) {
        vcpu.pending().nmi = true;
    }
    // With virtual-interrupt delivery the APIC's vectors reach the guest
    // through the virtual-APIC page (the back end's sync before entry); only
    // the PIC's go in by injection.
    let by_cpu = vcpu.delivers_apic_interrupts(chipset.apic_mode(index));
    let from_chipset = if by_cpu { chipset.extint_pending(index) } else { chipset.has_interrupt(index) };
    let own = vcpu.pending().has_interrupt();
    let nmi = vcpu.pending().nmi;
    if !nmi && !own && !from_chipset {
        return;
    }
    // A handler may already be injecting an event; the rest wait for their
    // windows. An NMI waits for its own: an interrupt window would not come
    // while the guest keeps IF clear, and the NMI would wait for an unrelated exit.
    if vcpu.injection_pending() {
        if nmi {
            vcpu.request_nmi_window(true);
        }
        if own || from_chipset {
            vcpu.request_interrupt_window(true);
        }
        return;
    }
    let shadow = vcpu.interrupt_shadow();
    if nmi {
        if !vcpu.nmi_blocked() && !shadow {
            vcpu.pending().nmi = false;
            vcpu.inject_nmi();
            // Interrupts go in as soon as the NMI handler lets them (nothing
            // else may make the guest exit soon).
            if own || from_chipset {
                vcpu.request_interrupt_window(true);
            }
            return;
        }
        vcpu.request_nmi_window(true);
    }
    if own || from_chipset {
        if vcpu.rflags() & RFLAGS_IF != 0 && !shadow {
            let from_chipset = if by_cpu { chipset.take_extint(index) } else { chipset.take_interrupt(index) };
            if let Some(vector) = from_chipset.or_else(|| vcpu.pending().take_highest()) {
                vcpu.inject_interrupt(vector);
            }
            // The next one goes in as soon as the guest can take it.
            let more = if by_cpu { chipset.extint_pending(index) } else { chipset.has_interrupt(index) };
            if vcpu.pending().has_interrupt() || more {
                vcpu.request_interrupt_window(true);
            }
        } else {
            vcpu.request_interrupt_window(true);
        }
    }
}

/// Virtual-interrupt delivery: the guest ended a level-triggered interrupt
/// (the CPU has already taken it out of service); the interrupt controllers
/// hear of it as of any EOI.
pub fn virtual_eoi(vcpu: &mut dyn Vcpu, chipset: &Chipset, vector: u8) -> Outcome {
    chipset.virtual_eoi(vcpu.index(), vector);
    Outcome::Resume
}

/// The guest can take interrupts again: stop asking; the next entry injects.
pub fn interrupt_window(vcpu: &mut dyn Vcpu) -> Outcome {
    vcpu.request_interrupt_window(false);
    Outcome::Resume
}

/// NMIs are unblocked again (the guest's NMI handler returned).
pub fn nmi_window(vcpu: &mut dyn Vcpu) -> Outcome {
    vcpu.request_nmi_window(false);
    Outcome::Resume
}

/// #DB and #AC are intercepted so that no guest can make either recur forever
/// during its own delivery (a breakpoint on the #DB handler's stack, a
/// misaligned #AC stack), a loop in which the CPU never exits and the core
/// hangs for every VM. Each goes back to the guest as the CPU would have
/// delivered it. Nothing else is intercepted: any other vector is a Basalt bug
/// for this VM alone.
pub fn exception(vcpu: &mut dyn Vcpu, vector: u8, error_code: Option<u32>) -> Outcome {
    match vector {
        DB => vcpu.reflect_exception(DB, None),
        // #AC's error code is always 0.
        AC => vcpu.reflect_exception(AC, Some(0)),
        _ => {
            let code = error_code.map_or(alloc::string::String::new(), |c| alloc::format!(", error code {c:#x}"));
            return Outcome::Stop(Stop::Unsupported(alloc::format!(
                "unexpected exception exit, vector {vector}{code}"
            )));
        }
    }
    Outcome::Resume
}
