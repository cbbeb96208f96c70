//! The vendor-neutral exit layer. Each back end (VMX, SVM) turns what its CPU
//! reports into one [`Exit`] and hands it to [`dispatch`], which sends it to
//! exactly one handler. Handlers see the vCPU only through the [`Vcpu`] trait,
//! the VM through [`Machine`] (its chipset and RAM) and the host through
//! [`Host`] (time, the host CPU's CPUID), so every one of them runs in
//! `cargo test` against the fakes in [`fake`] with hostile inputs.
//!
//! A handler never writes state the CPU reports read-only: the back end owns
//! its exit information, and the trait has no way to write it.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod exit;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod outcome;
pub mod vcpu;

mod cache;
pub mod cpuid;
mod cr;
pub mod debug;
pub mod events;
mod hlt;
pub mod io;
mod length;
mod mmio;
mod msr;
pub mod tsc;
pub mod vmcall;
mod xsetbv;

pub use cpuid::fast_cpuid;
pub use exit::{CrAccess, Exit, PortIo, SegmentRegister, StringIo};
pub use io::fast_port_io;
pub use mmio::FetchMemo;
pub use msr::fast_tsc_deadline;
pub use outcome::{Outcome, Stop};
pub use vcpu::Vcpu;
pub use vmcall::fast_hypercall;

use arch::paging::{Access, AccessKind, PageFault, PhysicalMemory, WalkError};
use devices::{Chipset, GuestRam};

/// Exception vectors the handlers raise.
pub const DB: u8 = 1;
pub const UD: u8 = 6;
pub const GP: u8 = 13;
pub const PF: u8 = 14;
pub const AC: u8 = 17;

/// Guest RAM as handlers use it: bounds-checked copies (device DMA, the print
/// hypercall, string I/O) and the reads of a guest page walk.
pub trait GuestMemory: GuestRam + PhysicalMemory {}
impl<T: GuestRam + PhysicalMemory> GuestMemory for T {}

/// The VM an exit happened in, as its handlers see it.
pub struct Machine<'a> {
    pub name: &'a str,
    pub chipset: &'a Chipset,
    pub memory: &'a mut dyn GuestMemory,
    /// The VM's console: one line printed by the print hypercall.
    pub console: &'a dyn Fn(&[u8]),
}

/// What the handlers need of the host: its clock and its CPU's identity.
/// Inputs, so that tests choose them.
pub trait Host {
    /// The host TSC now: device models count time in it.
    fn now(&self) -> u64;
    fn tsc_hz(&self) -> u64;
    /// CPUID as the host CPU answers it.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// The XSAVE components guests may enable (XCR0), and the standard-format
    /// size of their save area.
    fn guest_xstate(&self) -> GuestXstate;
    /// The CR4 bits guests may set: `cpuid::guest_cr4_allowed(self)`, which
    /// the host may compute once and keep.
    fn guest_cr4_allowed(&self) -> u64 {
        cpuid::guest_cr4_allowed(self)
    }
    /// A host interrupt made the guest exit: let the host take it.
    fn take_host_interrupt(&mut self);
    /// An NMI made the guest exit (Basalt sends them only to stop CPUs during
    /// a host crash).
    fn take_host_nmi(&mut self);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestXstate {
    pub allowed: u64,
    pub area_size: u32,
}

/// Sends `exit` to its handler: one hop from a reason to the code for it.
pub fn dispatch(exit: Exit, vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &mut dyn Host) -> Outcome {
    if vcpu.instruction_length_unknown() {
        if let Err(outcome) = length::measure(vcpu, vm, &exit) {
            return outcome;
        }
    }
    match exit {
        Exit::Cpuid => cpuid::handle(vcpu, vm, host),
        Exit::Hlt => hlt::handle(vcpu, vm.chipset),
        Exit::Io(access) => io::handle(vcpu, vm, host, access),
        Exit::DeviceMemory { address, fetch } => mmio::handle(vcpu, vm, host, address, fetch),
        Exit::ApicWrite { offset, value } => mmio::apic_write(vcpu, vm, host, offset, value),
        Exit::VirtualEoi { vector } => events::virtual_eoi(vcpu, vm.chipset, vector),
        Exit::Rdmsr => msr::rdmsr(vcpu, vm, host),
        Exit::Wrmsr => msr::wrmsr(vcpu, vm, host),
        Exit::Cr(access) => cr::handle(vcpu, vm, host, access),
        Exit::Xsetbv => xsetbv::handle(vcpu, host),
        Exit::CacheFlush => cache::flush(vcpu),
        Exit::Hypercall => vmcall::handle(vcpu, vm, host),
        Exit::HostInterrupt => {
            host.take_host_interrupt();
            Outcome::Resume
        }
        Exit::HostNmi => {
            host.take_host_nmi();
            Outcome::Resume
        }
        Exit::Exception { vector: UD, .. } => vmcall::undefined_opcode(vcpu, vm, host),
        Exit::Exception { vector, error_code } => events::exception(vcpu, vector, error_code),
        Exit::InterruptWindow => events::interrupt_window(vcpu),
        Exit::NmiWindow => events::nmi_window(vcpu),
        // The next entry re-evaluates pending events and timers: nothing else to do.
        Exit::Timer | Exit::TprBelowThreshold => Outcome::Resume,
        Exit::Shutdown => Outcome::Stop(Stop::TripleFault),
        Exit::UndefinedInstruction => {
            // VMX, SVM, SMX and MONITOR/MWAIT are hidden from guests (CPUID);
            // their instructions are undefined for them.
            vcpu.inject_exception(UD, None);
            Outcome::Resume
        }
        Exit::Rdpmc => {
            // No performance counters are offered (CPUID leaf 0xA is empty).
            vcpu.inject_exception(GP, Some(0));
            Outcome::Resume
        }
        Exit::Pause => {
            // The PAUSE completes (the CPU leaves RIP on it).
            debug::skip(vcpu);
            Outcome::Yield
        }
        Exit::EntryFailed(why) => Outcome::Stop(Stop::InvalidGuestState(why)),
        Exit::Unhandled(what) => {
            Outcome::Stop(Stop::Unsupported(alloc::format!("{what} exit at RIP {:#x}", vcpu.rip())))
        }
    }
}

/// An access the VMM makes for the guest, with the rights its CPU would check
/// now: its privilege level and RFLAGS.AC (SMAP's override).
pub fn access_rights(vcpu: &dyn Vcpu, kind: AccessKind) -> Access {
    const RFLAGS_AC: u64 = 1 << 18;
    Access::new(kind, vcpu.cpl() == 3, vcpu.rflags() & RFLAGS_AC != 0)
}

/// A page fault at `fault.linear`, as the guest's CPU raises it: CR2 holds the
/// address, the error code says why. The faulting instruction is not skipped.
pub fn inject_page_fault(vcpu: &mut dyn Vcpu, fault: PageFault) {
    vcpu.set_cr2(fault.linear);
    vcpu.inject_exception(PF, Some(fault.error_code));
}

/// What the guest gets when the VMM cannot follow one of its linear addresses:
/// the #PF or #GP its CPU would raise, or, for page tables outside its RAM
/// (where the CPU would take a nested fault on the table itself), a stop.
pub fn translation_failed(vcpu: &mut dyn Vcpu, error: WalkError) -> Outcome {
    match error {
        WalkError::PageFault(fault) => inject_page_fault(vcpu, fault),
        WalkError::NonCanonical { .. } => vcpu.inject_exception(GP, Some(0)),
        WalkError::TableNotInMemory { physical } => {
            return Outcome::Stop(Stop::Unsupported(alloc::format!(
                "guest page-table entry at non-RAM guest-physical {physical:#x}"
            )));
        }
        WalkError::RangeTooLong { len } => {
            return Outcome::Stop(Stop::Unsupported(alloc::format!(
                "Basalt asked to translate {len} guest bytes at once (a Basalt bug)"
            )));
        }
    }
    Outcome::Resume
}

#[cfg(test)]
mod tests;
