//! #VMEXIT as `vmexit::Exit` values: the decoding is `svm::neutral`'s (pure,
//! host-tested); here what SVM leaves to the VMM and the vCPU keeps: an event
//! whose delivery the exit interrupted set up again, the next RIP, NMI
//! masking across IRET and the single step over it.

use super::vcpu::Vcpu;
use svm::neutral::NmiWindow;
use svm::Event;
use vmexit::Exit;

/// The exit that just happened, read from the vCPU's VMCB.
pub fn translate(vcpu: &mut Vcpu) -> Exit {
    let caps = super::cpu::capabilities().ok();
    // The IRET that ended the guest's NMI handler has run once RIP moved on.
    if vcpu.iret_in_flight.is_some_and(|at| at != vcpu.vmcb().save.rip) {
        vcpu.iret_in_flight = None;
        vcpu.nmi_masked = false;
    }
    // An event the exit interrupted is delivered again at the next entry; what
    // was in EVENTINJ has been consumed.
    let c = &mut vcpu.vmcb_mut().control;
    c.event_inj = match Event::decode(c.exit_int_info) {
        Some(event) => event.encode(),
        None => 0,
    };
    let t = svm::neutral::translate(vcpu.vmcb(), caps, vcpu.nmi_singlestep.is_some());
    vcpu.next_rip = t.next_rip;
    match t.nmi_window {
        Some(NmiWindow::SingleStep) => {
            // Basalt's own step over the IRET: the guest never sees it.
            if let Some((rflags, dr6)) = vcpu.nmi_singlestep.take() {
                vcpu.end_singlestep(rflags, dr6);
            }
        }
        Some(NmiWindow::Iret) => {
            // The guest's NMI handler returns: its IRET runs at the next entry,
            // and NMIs are unmasked once it has (see the top of this function).
            vcpu.iret_in_flight = Some(vcpu.vmcb().save.rip);
            vcpu.set_iret_intercept(false);
        }
        None => {}
    }
    t.exit
}
