//! The vCPU as handlers see it, whichever vendor runs it. A back end implements
//! this over its VMCS or VMCB; `fake::FakeVcpu` implements it for tests.
//!
//! Only what a handler may change can be written: there is no way to write an
//! exit's information (instruction length, qualification), which the CPU
//! reports read-only.

use arch::control::Context;
use arch::decode::CodeSize;
use arch::paging::Paging;
use devices::PendingEvents;

use crate::exit::SegmentRegister;

pub const RFLAGS_TF: u64 = 1 << 8;
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_DF: u64 = 1 << 10;
pub const RFLAGS_RF: u64 = 1 << 16;

/// The guest's breakpoint registers as its CPU compares them: DR0-DR3 (linear
/// addresses, or ports for I/O breakpoints) and DR7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegisters {
    pub dr: [u64; 4],
    pub dr7: u64,
}

pub trait Vcpu {
    /// Its index in the VM (also its APIC id).
    fn index(&self) -> usize;

    /// A general-purpose register by its instruction encoding (0 = RAX …
    /// 15 = R15; only the low four bits count).
    fn gpr(&self, index: u8) -> u64;
    fn set_gpr(&mut self, index: u8, value: u64);
    /// Sets RAX, RBX, RCX and RDX at once (CPUID's answer).
    fn set_abcd(&mut self, values: [u64; 4]) {
        for (gpr, value) in [0, 3, 1, 2].into_iter().zip(values) {
            self.set_gpr(gpr, value);
        }
    }
    fn rip(&self) -> u64;
    /// Moves RIP to `rip` (after an instruction the VMM emulated, whose length
    /// it decoded itself) and ends any STI / MOV SS interrupt shadow.
    fn set_rip(&mut self, rip: u64);
    /// Moves the guest past the instruction that exited, whose length the back
    /// end knows, and ends any STI / MOV SS interrupt shadow.
    fn skip_instruction(&mut self);
    /// The back end does not know where the exiting instruction ends (SVM
    /// without next-RIP save): `dispatch` decodes it and says, through
    /// `set_instruction_length`, before a handler can skip it.
    fn instruction_length_unknown(&self) -> bool {
        false
    }
    fn set_instruction_length(&mut self, _length: u8) {}
    /// The exit's string I/O address size and segment are the CPU's (VMX, SVM
    /// with decode assists); false makes the handler decode them at RIP.
    fn reports_string_io_operands(&self) -> bool {
        true
    }
    fn rflags(&self) -> u64;
    /// Sets RFLAGS after an instruction the VMM emulated (the status flags of
    /// an ALU operation on device memory); the caller keeps every other bit.
    fn set_rflags(&mut self, value: u64);
    /// The current privilege level (SS.DPL).
    fn cpl(&self) -> u8;
    fn segment_base(&self, segment: SegmentRegister) -> u64;
    /// The default operand and address size of the code running (CS.L, CS.D,
    /// CR0.PE, EFER.LMA).
    fn code_size(&self) -> CodeSize;

    /// The control registers as the guest sees them (its own values, not the
    /// bits a back end forces in the real ones).
    fn control(&self) -> Context;
    /// CR4 as the guest sees it: `control().cr4`, which a back end may read
    /// alone for less (CPUID's OSXSAVE and OSPKE follow it).
    fn cr4(&self) -> u64 {
        self.control().cr4
    }
    /// EFER as the guest sees it, LMA included.
    fn efer(&self) -> u64;
    /// How the CPU translates the guest's linear addresses now.
    fn paging(&self) -> Paging;
    /// Where the vCPU remembers its last MMIO instruction (`FetchMemo`):
    /// the next one from the same code page checks the page's table entries
    /// instead of walking them, and the same bytes are not decoded again.
    /// None: every fetch walks and decodes.
    fn fetch_memo(&mut self) -> Option<&mut crate::FetchMemo> {
        None
    }
    /// Sets the guest's CR0 (already checked); the back end adds what its CPU
    /// requires of the real register and keeps the guest's view.
    fn set_cr0(&mut self, value: u64);
    fn set_cr4(&mut self, value: u64);
    /// Sets the guest's EFER, LMA included (the handlers decide long mode).
    fn set_efer(&mut self, value: u64);
    fn set_cr2(&mut self, value: u64);
    /// The TSC offset: the guest's RDTSC and RDTSCP read the host's TSC plus
    /// this, modulo 2^64 (VT-x's TSC offsetting, SVM's VMCB TSC offset). 0
    /// when the vCPU is created.
    fn tsc_offset(&self) -> u64;
    fn set_tsc_offset(&mut self, offset: u64);

    /// DR0-DR3 and DR7 as the guest set them (DR0-DR3 are on the core while
    /// the vCPU runs; DR7 is in the VMCS or VMCB).
    fn debug_registers(&self) -> DebugRegisters;
    /// Delivers the trap-class #DB that an instruction the VMM completed
    /// raises, at the next entry: DR6 gets `conditions` (DR6's layout: B0-B3,
    /// BS) as the CPU writes them for a #DB, DR7.GD is cleared as delivering
    /// any #DB clears it, and the #DB goes in as a hardware exception.
    fn raise_debug_trap(&mut self, conditions: u64);

    /// The guest's XCR0, loaded on the core while this vCPU runs.
    fn xcr0(&self) -> u64;
    /// Sets XCR0 to a value already checked against what guests may enable.
    fn set_xcr0(&mut self, value: u64);

    /// Events raised for this vCPU (hypercalls) and not yet delivered.
    fn pending(&mut self) -> &mut PendingEvents;
    /// Delivers a hardware exception at the next entry (the faulting
    /// instruction is not skipped).
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// Delivers an exception the back end intercepted (#DB, #AC) as the CPU
    /// would have, with what that takes on this vendor (DR6, its kind).
    fn reflect_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// An event is already set up for the next entry.
    fn injection_pending(&self) -> bool;
    /// STI or MOV SS blocks interrupts for one instruction.
    fn interrupt_shadow(&self) -> bool;
    fn nmi_blocked(&self) -> bool;
    /// Injects an NMI / external interrupt at the next entry; either ends HLT.
    fn inject_nmi(&mut self);
    fn inject_interrupt(&mut self, vector: u8);
    /// Whether the CPU delivers the local APIC's interrupts itself while the
    /// APIC is in `mode` (VT-x virtual-interrupt delivery: the VMM posts
    /// vectors into the virtual-APIC page and the guest takes them, and ends
    /// them, without exits). Then only other sources are injected.
    fn delivers_apic_interrupts(&self, mode: devices::lapic::Mode) -> bool {
        let _ = mode;
        false
    }
    /// Asks for an exit as soon as the guest can take an interrupt (an NMI).
    fn request_interrupt_window(&mut self, on: bool);
    fn request_nmi_window(&mut self, on: bool);
    /// The vCPU waits in the halted state until an event is injected.
    fn halt(&mut self);
}
