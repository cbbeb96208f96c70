//! Delivering events to the guest, and the exits that belong to it: a pending
//! interrupt or NMI is injected at the next entry when the guest can take it;
//! otherwise the back end is asked for the window exit that comes the moment
//! it can. Exceptions Basalt intercepts go back to the guest.

use crate::exit::SegmentRegister;
use crate::vcpu::{RFLAGS_IF, RFLAGS_TF};
use crate::{access_rights, Outcome, Stop, Vcpu, AC, DB};
use arch::paging::{self, AccessKind, PhysicalMemory};
use devices::Chipset;

const HLT: u8 = 0xf4;

/// Called before every entry: injects one pending event if the guest can take
/// it now, or asks for the window exit that says when it can. Events come from
/// the VM's interrupt controllers and from the vCPU's own queue (hypercalls).
/// `memory` is the guest's RAM, for one case: see `complete_shadowed_hlt`.
pub fn deliver_pending(vcpu: &mut dyn Vcpu, chipset: &Chipset, memory: &dyn PhysicalMemory) {
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
        let shadow = shadow && !complete_shadowed_hlt(vcpu, memory);
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

/// An interrupt waits, the guest has IF set, and the instruction its STI
/// (or MOV SS) shadow covers is HLT (`sti; hlt`, the idle loop's wait): the
/// CPU would run the HLT, then wake at once for the interrupt, which returns
/// to the instruction after the HLT. That is done here: the HLT completed
/// (RIP past it, the shadow over), so the interrupt goes in at this entry.
/// Asking for an interrupt window instead relies on the CPU keeping the
/// shadow across the entry, which QEMU's TCG before 9.1 does not: it would
/// take the interrupt before the HLT, whose wake-up is then lost. (The vCPU
/// is not marked halted: should the interrupt be gone by the time it would
/// go in, the guest runs on past its HLT, a spurious wake-up idle loops
/// allow for. Halting it there, and moving this before the NMI decision,
/// was tried and a Linux SMP boot on SVM hung once in CI; not understood,
/// so left out.)
/// Only at CPL 0 (HLT is #GP elsewhere) and without single-stepping (whose
/// #DB after the HLT comes first); false with nothing changed otherwise.
fn complete_shadowed_hlt(vcpu: &mut dyn Vcpu, memory: &dyn PhysicalMemory) -> bool {
    if vcpu.rflags() & (RFLAGS_IF | RFLAGS_TF) != RFLAGS_IF || vcpu.cpl() != 0 {
        return false;
    }
    let linear = crate::io::effective_base(vcpu, SegmentRegister::Cs).wrapping_add(vcpu.rip());
    let rights = access_rights(vcpu, AccessKind::Execute);
    let Ok(physical) = paging::translate(memory, &vcpu.paging(), rights, linear) else { return false };
    let byte = memory.read_u32(physical & !3).map(|word| (word >> (8 * (physical & 3))) as u8);
    if byte != Some(HLT) {
        return false;
    }
    // set_rip ends the shadow, as the HLT's completion does.
    vcpu.set_rip(vcpu.rip().wrapping_add(1));
    true
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
