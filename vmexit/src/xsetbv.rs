//! XSETBV: the guest chooses its XCR0 among the components guests may enable
//! (`Host::guest_xstate`); anything the SDM or that list forbids is #GP in the
//! guest, never a value the host CPU would fault on.

use crate::{Host, Outcome, Vcpu, GP};

pub fn handle(vcpu: &mut dyn Vcpu, host: &dyn Host) -> Outcome {
    const RAX: u8 = 0;
    const RCX: u8 = 1;
    const RDX: u8 = 2;
    let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
    let xcr = vcpu.gpr(RCX) as u32;
    if xcr != 0 || !arch::xstate::xcr0_valid(value, host.guest_xstate().allowed) {
        vcpu.inject_exception(GP, Some(0));
        return Outcome::Resume;
    }
    vcpu.set_xcr0(value);
    crate::debug::skip(vcpu);
    Outcome::Resume
}
