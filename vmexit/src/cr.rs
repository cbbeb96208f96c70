//! Control-register accesses that exit: writes to CR0/CR4 bits the back end
//! owns, CLTS and LMSW, and CR8 when the CPU does not shadow the TPR. Every
//! write is checked as the CPU checks it (#GP for what it refuses); turning
//! paging on with EFER.LME set enters long mode. CR8 is the local APIC
//! model's TPR (in every APIC mode).
//!
//! Which writes reach this file, so that none the CPU would refuse slips
//! through to the next entry:
//! - CR4: every write on SVM; on VT-x every write that changes a bit the CR4
//!   guest/host mask owns, and the mask owns every bit outside
//!   `Host::guest_cr4_allowed` (reserved bits and hidden features alike), so
//!   a write with any bit the guest may not set exits and is refused here.
//! - CR0: on SVM every write that changes more than TS/MP; on VT-x the bits
//!   VMX fixes, CD/NW, and bits 63:32 (not "may be one") are owned.
//! - EFER is an MSR (`msr.rs`, always intercepted), checked the same way.
//! - CR3 is not intercepted on either vendor with nested paging: the guest's
//!   CPU checks its reserved bits itself, which is the same #GP.

use crate::{CrAccess, Host, Machine, Outcome, Stop, Vcpu, GP};
use arch::control::{cr0, efer};
use arch::decode::{CodeSize, CrInstruction};

pub fn handle(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, access: CrAccess) -> Outcome {
    match access {
        CrAccess::Undecoded { cr, write } => {
            let decoded = match crate::length::decode_at_rip(vcpu, vm, arch::decode::decode_cr_access) {
                Ok(decoded) => decoded,
                Err(outcome) => return outcome,
            };
            let access = match decoded {
                CrInstruction::Mov(m) if m.cr == cr && m.to_cr == write => {
                    if m.to_cr {
                        CrAccess::MovTo { cr, gpr: m.gpr }
                    } else {
                        CrAccess::MovFrom { cr, gpr: m.gpr }
                    }
                }
                CrInstruction::Clts { .. } if cr == 0 && write => CrAccess::Clts,
                CrInstruction::Lmsw { gpr, .. } if cr == 0 && write => CrAccess::Lmsw { source: vcpu.gpr(gpr) as u16 },
                // Not the instruction that exited (another vCPU rewrote it).
                other => {
                    return Outcome::Stop(Stop::Unsupported(alloc::format!(
                        "CR{cr} exit at RIP {:#x} by {other:?}",
                        vcpu.rip()
                    )))
                }
            };
            vcpu.set_instruction_length(decoded.length());
            return handle(vcpu, vm, host, access);
        }
        CrAccess::MovTo { cr: 0, gpr } => {
            let value = source(vcpu, gpr);
            if arch::control::check_cr0(value, vcpu.control()).is_err() {
                return refuse(vcpu);
            }
            write_cr0(vcpu, value);
        }
        CrAccess::MovTo { cr: 4, gpr } => {
            let value = source(vcpu, gpr);
            if arch::control::check_cr4(value, host.guest_cr4_allowed(), vcpu.control()).is_err() {
                return refuse(vcpu);
            }
            vcpu.set_cr4(value);
        }
        CrAccess::MovTo { cr: 8, gpr } => {
            let value = source(vcpu, gpr);
            // Bits 63:4 are reserved.
            if value >> 4 != 0 {
                return refuse(vcpu);
            }
            // CR8 = TPR[7:4]; the low bits of TPR (the sub-class) become 0.
            vm.chipset.set_tpr(vcpu.index(), (value as u8) << 4);
        }
        CrAccess::MovFrom { cr: 8, gpr } => {
            let tpr = vm.chipset.tpr(vcpu.index());
            vcpu.set_gpr(gpr, (tpr >> 4) as u64);
        }
        CrAccess::Clts => {
            const TS: u64 = 1 << 3;
            let value = vcpu.control().cr0 & !TS;
            write_cr0(vcpu, value);
        }
        CrAccess::Lmsw { source } => {
            // LMSW sets the low four bits and can set, but not clear, PE.
            let now = vcpu.control().cr0;
            let value = (now & !0xe) | (source as u64 & 0xf) | (now & cr0::PE);
            write_cr0(vcpu, value);
        }
        other => {
            return Outcome::Stop(Stop::Unsupported(alloc::format!("control-register access {other:?}")));
        }
    }
    crate::debug::skip(vcpu);
    Outcome::Resume
}

/// The operand of MOV to CRn: the whole register in 64-bit mode, its low half
/// otherwise. The instruction has no 64-bit operand outside 64-bit mode, and
/// the upper half is whatever 64-bit code left there: checking it would
/// refuse with #GP a write the guest's CPU accepts.
fn source(vcpu: &dyn Vcpu, gpr: u8) -> u64 {
    let value = vcpu.gpr(gpr);
    if vcpu.code_size() == CodeSize::Bits64 {
        value
    } else {
        value & 0xffff_ffff
    }
}

/// A write the CPU would refuse: #GP(0), as it would raise, and nothing changes.
fn refuse(vcpu: &mut dyn Vcpu) -> Outcome {
    vcpu.inject_exception(GP, Some(0));
    Outcome::Resume
}

/// CR0 as the guest wrote it; paging turned on or off enters or leaves long
/// mode when EFER.LME is set.
fn write_cr0(vcpu: &mut dyn Vcpu, value: u64) {
    let was_paging = vcpu.control().cr0 & cr0::PG != 0;
    vcpu.set_cr0(value);
    let paging = value & cr0::PG != 0;
    if paging != was_paging {
        let efer = vcpu.efer();
        vcpu.set_efer(with_long_mode(efer, paging && efer & efer::LME != 0));
    }
}

/// EFER with LMA (long mode active) set or clear.
pub fn with_long_mode(value: u64, active: bool) -> u64 {
    if active {
        value | efer::LMA
    } else {
        value & !efer::LMA
    }
}
