//! A virtual machine: its RAM and EPT, its device buses, and why it stopped.

use super::guest_memory::GuestMemory;
use alloc::boxed::Box;
use alloc::string::String;
use devices::{DebugExit, MmioBus, PortBus, Uart16550};
use loader::VmSpec;

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
    UnknownHypercall {
        number: u64,
    },
    /// Guest behaviour Basalt does not emulate; says what it was.
    Unsupported(String),
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Stop::ExitDevice { status } => write!(f, "exit device, status {status}"),
            Stop::ExitHypercall { status } => write!(f, "exit hypercall, status {status}"),
            Stop::Halted => write!(f, "halted with interrupts disabled"),
            Stop::TimeLimit { ms } => write!(f, "time limit of {ms} ms reached"),
            Stop::TripleFault => write!(f, "triple fault"),
            Stop::InvalidGuestState(why) => write!(f, "invalid guest state: {why}"),
            Stop::EntryFailed(why) => write!(f, "VM entry failed: {why}"),
            Stop::UnknownHypercall { number } => write!(f, "unknown hypercall {number:#x}"),
            Stop::Unsupported(what) => write!(f, "unsupported guest behaviour: {what}"),
        }
    }
}

/// QEMU-compatible debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const COM1_PORT: u16 = 0x3f8;

pub struct Vm {
    pub name: String,
    pub memory: GuestMemory,
    pub ports: PortBus,
    pub mmio: MmioBus,
}

impl Vm {
    /// A VM with RAM and the standard devices: COM1 (output on the host log,
    /// prefixed with the VM's name) and the debug-exit port.
    pub fn new(spec: &VmSpec) -> Result<Vm, String> {
        let bytes = spec.memory_mib as u64 * 1024 * 1024;
        let memory = GuestMemory::new(bytes)
            .ok_or_else(|| alloc::format!("not enough host memory for {} MiB of guest RAM", spec.memory_mib))?;
        let mut ports = PortBus::new();
        let name = spec.name.clone();
        let sink = Box::new(move |line: &[u8]| {
            log::info!("vm {name} | {}", String::from_utf8_lossy(line));
        });
        ports.register(COM1_PORT, 8, Box::new(Uart16550::new(sink))).map_err(|e| alloc::format!("{e:?}"))?;
        ports.register(DEBUG_EXIT_PORT, 4, Box::new(DebugExit)).map_err(|e| alloc::format!("{e:?}"))?;
        Ok(Vm { name: spec.name.clone(), memory, ports, mmio: MmioBus::new() })
    }
}
