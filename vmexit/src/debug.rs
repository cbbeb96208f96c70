//! The debug exceptions of instructions Basalt completes for the guest. An
//! instruction that exits never ran on the CPU, so the CPU never raised the
//! trap-class #DB it owed: the single step of RFLAGS.TF and the data and I/O
//! breakpoints of DR7 (instruction breakpoints are faults, taken before the
//! exit). Every handler path that completes an instruction, or one iteration
//! of a REP string, ends here; `arch::debug` decides which DR6 conditions the
//! #DB reports, the back end delivers it (`Vcpu::raise_debug_trap`).
//!
//! RFLAGS.RF follows the SDM (18.3.1.1): the CPU clears it once an
//! instruction completes; after an iteration of a REP string that is not the
//! last, any event delivered before the string goes on pushes RF = 1 (so an
//! instruction breakpoint on it does not fire again when it resumes), so RF
//! is set in the guest's RFLAGS while the string is unfinished.
//!
//! Breakpoints match linear addresses. Basalt knows the linear address of
//! every access it emulates but one: the memory operand of an MMIO
//! instruction, of which the exit gives only the guest-physical address. For
//! it, each data breakpoint's address is translated through the guest's page
//! tables and compared with that (a breakpoint on another linear alias of
//! the same device page would match too, where the CPU's would not).

use crate::vcpu::{DebugRegisters, RFLAGS_RF, RFLAGS_TF};
use crate::{GuestMemory, Vcpu};
use arch::control::cr4;
use arch::debug::{self, dr6, Touch, Watch as Kind};
use arch::paging::{self, Access, AccessKind, Paging};

/// What one instruction, or one iteration of a REP string, accessed.
#[derive(Clone, Copy, Debug)]
pub struct Touched {
    /// Ports, and memory at linear addresses (string operands, the stack);
    /// `count` of them.
    touches: [Touch; 3],
    count: usize,
    /// The memory operand an MMIO exit names, at its guest-physical address.
    device: Option<Touch>,
}

impl Touched {
    /// Nothing: CPUID, MSRs, control registers...
    pub const NONE: Touched = Touched { touches: [Touch::Port { port: 0, len: 0 }; 3], count: 0, device: None };

    /// With a port, or memory at a linear address. No instruction Basalt
    /// emulates makes more than three such accesses per element.
    pub fn and(mut self, touch: Touch) -> Touched {
        match self.touches.get_mut(self.count) {
            Some(slot) => {
                *slot = touch;
                self.count += 1;
            }
            None => debug_assert!(false, "more than three accesses recorded for one instruction"),
        }
        self
    }

    /// With the device operand of an MMIO instruction, by its guest-physical
    /// address.
    pub fn and_device(self, touch: Touch) -> Touched {
        Touched { device: Some(touch), ..self }
    }
}

/// The guest's single step and breakpoints, read once per exit (a REP string
/// checks each element against them).
pub struct Watch {
    single_step: bool,
    registers: DebugRegisters,
    /// CR4.DE: I/O breakpoints are defined.
    io: bool,
    /// How to translate the breakpoints' addresses for a guest-physical
    /// touch; None when no data breakpoint is enabled.
    paging: Option<Paging>,
}

impl Watch {
    pub fn of(vcpu: &dyn Vcpu) -> Watch {
        let single_step = vcpu.rflags() & RFLAGS_TF != 0;
        let registers = vcpu.debug_registers();
        let (mut io_watched, mut data_watched) = (false, false);
        // With none of DR7's eight enable bits set (as nearly always) no
        // breakpoint is looked at.
        let enabled = registers.dr7 & 0xff != 0;
        let kinds =
            (0..4).filter(|_| enabled).filter_map(|i| debug::breakpoint(registers.dr7, i)).map(|(kind, _)| kind);
        for kind in kinds {
            io_watched |= kind == Kind::Io;
            data_watched |= matches!(kind, Kind::Write | Kind::ReadWrite);
        }
        Watch {
            single_step,
            registers,
            io: io_watched && vcpu.control().cr4 & cr4::DE != 0,
            paging: data_watched.then(|| vcpu.paging()),
        }
    }

    /// RFLAGS.TF was set: a REP string goes one element per exit, each
    /// followed by its #DB.
    pub fn single_step(&self) -> bool {
        self.single_step
    }

    /// The DR6 conditions of the #DB after an instruction (or iteration) that
    /// made `touched`; 0 for none. `memory` translates the breakpoints for a
    /// guest-physical touch.
    pub fn conditions(&self, memory: &dyn GuestMemory, touched: &Touched) -> u64 {
        let mut conditions = if self.single_step { dr6::BS } else { 0 };
        let dr7 = self.registers.dr7;
        if !debug::watches_accesses(dr7, self.io) {
            return conditions;
        }
        let touches = &touched.touches[..touched.count];
        conditions |= debug::trap_conditions(false, dr7, self.io, self.registers.dr.map(Some), touches);
        if let (Some(touch), Some(paging)) = (touched.device, &self.paging) {
            // A supervisor read with SMAP overridden: whether the address is
            // mapped at all, not who may access it.
            let rights = Access::new(AccessKind::Read, false, true);
            let mut addresses = [None; 4];
            for (index, (address, linear)) in addresses.iter_mut().zip(self.registers.dr).enumerate() {
                if matches!(debug::breakpoint(dr7, index), Some((Kind::Write | Kind::ReadWrite, _))) {
                    *address = paging::translate(memory, paging, rights, linear).ok();
                }
            }
            conditions |= debug::trap_conditions(false, dr7, self.io, addresses, &[touch]);
        }
        conditions
    }
}

/// The instruction that exited is complete and RIP is past it: RF is
/// cleared, and the #DB with `conditions` (from `Watch::conditions`) is
/// delivered if there are any. Returns whether it was.
pub fn completed(vcpu: &mut dyn Vcpu, conditions: u64) -> bool {
    let rflags = vcpu.rflags();
    if rflags & RFLAGS_RF != 0 {
        vcpu.set_rflags(rflags & !RFLAGS_RF);
    }
    deliver(vcpu, conditions)
}

/// An iteration of a REP string is done and more remain (RIP stays on the
/// instruction): RF is set, and the #DB with `conditions` delivered if there
/// are any. Returns whether it was.
pub fn unfinished(vcpu: &mut dyn Vcpu, conditions: u64) -> bool {
    let rflags = vcpu.rflags();
    if rflags & RFLAGS_RF == 0 {
        vcpu.set_rflags(rflags | RFLAGS_RF);
    }
    deliver(vcpu, conditions)
}

/// `Vcpu::skip_instruction` for an instruction that touched nothing a
/// breakpoint can watch (CPUID, RDMSR, MOV to CR...): it completes, then its
/// single step if RFLAGS.TF was set. Returns whether a #DB was raised.
pub fn skip(vcpu: &mut dyn Vcpu) -> bool {
    vcpu.skip_instruction();
    let conditions = if vcpu.rflags() & RFLAGS_TF != 0 { dr6::BS } else { 0 };
    completed(vcpu, conditions)
}

/// `skip` for a fast path that read RFLAGS (`rflags`) and found TF clear:
/// the instruction completes (RF cleared) and owes no #DB.
pub fn skip_untraced(vcpu: &mut dyn Vcpu, rflags: u64) {
    debug_assert_eq!(rflags & RFLAGS_TF, 0);
    vcpu.skip_instruction();
    if rflags & RFLAGS_RF != 0 {
        vcpu.set_rflags(rflags & !RFLAGS_RF);
    }
}

fn deliver(vcpu: &mut dyn Vcpu, conditions: u64) -> bool {
    if conditions == 0 {
        return false;
    }
    vcpu.raise_debug_trap(conditions);
    true
}
