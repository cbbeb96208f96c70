//! What happens after an exit: the vCPU resumes, parks, or its VM stops for
//! a reason the operator can read.

use alloc::string::String;

/// What a handler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Resume,
    /// An application processor halted with interrupts off: it waits in the
    /// VMM (not in the guest) for an NMI, INIT or the VM's end.
    Park,
    /// Resume, after the run loop reports this bench marker (the guest's time
    /// so far and this vCPU's exits).
    Marker(u8),
    /// Resume, but first offer the core to another vCPU: this one spins in a
    /// PAUSE loop, waiting for something another vCPU (perhaps of its own VM,
    /// perhaps off its core) must do.
    Yield,
    Stop(Stop),
}

/// Why a VM stopped. Every way a guest can end is one of these; none of them
/// affects the host or other VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The guest wrote its exit status to the debug-exit port.
    ExitDevice {
        status: u32,
    },
    /// The guest asked to stop through the exit hypercall.
    ExitHypercall {
        status: u64,
    },
    /// The guest powered off through ACPI (S5).
    PowerOff,
    /// The guest reset the platform; the VMM restarts it (see `mod.rs`).
    Reset,
    /// HLT with interrupts disabled: nothing can wake it.
    Halted,
    /// The VM used up its time limit.
    TimeLimit {
        ms: u64,
    },
    TripleFault,
    /// The guest state cannot be entered; names the VMCS field and the rule.
    InvalidGuestState(String),
    /// VMLAUNCH/VMRESUME failed (decoded VM-instruction error).
    EntryFailed(String),
    /// Guest behaviour Basalt does not emulate; says what it was.
    Unsupported(String),
    /// An operator stopped it from the management shell; says how
    /// ("powered off from the console", ...).
    Operator(String),
    /// An operator reset it from the management shell: it starts again.
    ResetByOperator,
}

impl Stop {
    /// Whether the VM crashed (what its `on-crash` policy acts on), rather
    /// than ending as asked: by the guest (power-off, exit, a halt for
    /// good), its time limit, or an operator.
    pub fn is_crash(&self) -> bool {
        matches!(self, Stop::TripleFault | Stop::InvalidGuestState(_) | Stop::EntryFailed(_) | Stop::Unsupported(_))
    }
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Stop::ExitDevice { status } => write!(f, "exit device, status {status}"),
            Stop::ExitHypercall { status } => write!(f, "exit hypercall, status {status}"),
            Stop::PowerOff => write!(f, "powered off"),
            Stop::Reset => write!(f, "reset"),
            Stop::Halted => write!(f, "halted with interrupts disabled"),
            Stop::TimeLimit { ms } => write!(f, "time limit of {ms} ms reached"),
            Stop::TripleFault => write!(f, "triple fault"),
            Stop::InvalidGuestState(why) => write!(f, "invalid guest state: {why}"),
            Stop::EntryFailed(why) => write!(f, "VM entry failed: {why}"),
            Stop::Unsupported(what) => write!(f, "unsupported guest behaviour: {what}"),
            Stop::Operator(how) => write!(f, "{how}"),
            Stop::ResetByOperator => write!(f, "reset from the console"),
        }
    }
}
