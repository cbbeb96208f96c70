//! Control-register accesses that exit: writes to CR0/CR4 bits the back end
//! owns, CLTS and LMSW, and CR8 when the CPU does not shadow the TPR. Every
//! write is checked as the CPU checks it (#GP for what it refuses); turning
//! paging on with EFER.LME set enters long mode. CR8 is the local APIC
//! model's TPR.

use crate::{CrAccess, Host, Machine, Outcome, Stop, Vcpu, GP};
use arch::control::{cr0, efer};
use arch::decode::{CodeSize, CrInstruction};

/// The local APIC's task-priority register, which CR8 mirrors (CR8 = TPR[7:4]).
const APIC_TPR: u64 = devices::layout::LAPIC_BASE + 0x80;

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
            vm.chipset.mmio_write(vcpu.index(), APIC_TPR, 4, value << 4, host.now(), &mut *vm.memory);
        }
        CrAccess::MovFrom { cr: 8, gpr } => {
            let tpr = vm.chipset.mmio_read(vcpu.index(), APIC_TPR, 4, host.now());
            vcpu.set_gpr(gpr, (tpr >> 4) & 0xf);
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
    vcpu.skip_instruction();
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
