//! What the run loop needs of a vendor's back end (VMX in `vmx/`, SVM in
//! `svm/`): enter the guest and say why it came back as a `vmexit::Exit`;
//! everything a handler may read or change goes through `vmexit::Vcpu`.

use super::counters::ExitCounters;
use super::vm::Stop;
use devices::Chipset;
use vmexit::Exit;

/// `Send`: the scheduler moves vCPUs between cores.
pub trait Backend: vmexit::Vcpu + Send {
    /// The vCPU starts running on this core: its control structure becomes
    /// current and the state exits do not switch is loaded (see `switch`).
    /// `vm_id` tells the core whether it changes VM.
    fn switch_in(&mut self, vm_id: u64) -> Result<(), Stop>;
    /// It leaves the core: the host's state is back, and its control
    /// structure is released (`release`), so any core may run it next.
    fn switch_out(&mut self);
    /// Its control structure is no longer current on this core (VMCLEAR on
    /// VT-x: a VMCS may be loaded on another core only once it is cleared on
    /// the one it was last current on), after its set-up here.
    fn release(&mut self) {}
    /// Its VM's clock runs `base` host TSC ticks behind the host's (the
    /// time it spent paused): the guest's TSC offset as `vmexit::Vcpu`
    /// reads and writes it stays the guest's, and the hardware's is that
    /// less `base`, so the guest's TSC did not move while it was paused.
    /// Set after `switch_in`.
    fn set_time_base(&mut self, base: u64);
    /// A PAUSE loop exited but no other vCPU waits for the core: as KVM
    /// does, the loop may spin longer before the next exit (each one is
    /// pure cost to a vCPU alone on its core).
    fn spin_alone(&mut self) {}
    /// A PAUSE loop gave the core to another vCPU: loops exit early again.
    fn spin_yielded(&mut self) {}
    /// The guest waits in the halted state (HLT, interrupts on).
    fn halted(&self) -> bool;
    /// The VMM must be back by host TSC `deadline` (a device timer, the time
    /// limit, or one host tick: the run loop caps it) even if the guest does
    /// not exit by itself.
    fn arm_timer(&mut self, now: u64, deadline: u64);
    /// Just before entry: what the guest sees of the
    /// platform without exiting (the virtual-APIC page) is brought up to date.
    fn sync_to_guest(&mut self, _chipset: &Chipset) {}
    /// Just after an exit: what the guest changed without
    /// exiting goes into the platform's models.
    fn sync_from_guest(&mut self, _chipset: &Chipset) {}
    /// Whether the guest can be entered again without
    /// `vmexit::events::deliver_pending` and `sync_to_guest` (and so without
    /// `sync_from_guest` either): what it sees of the platform is still
    /// current and the CPU delivers the APIC's interrupts itself, so only a
    /// change to the model (which makes it stale) would call for them. The
    /// TSC-deadline fast path asks; false sends every exit the long way.
    fn guest_view_current(&self, _chipset: &Chipset) -> bool {
        false
    }
    /// Runs the guest until it exits. An event whose delivery the exit
    /// interrupted is set up again for the next entry before this returns.
    /// Err when the CPU refused the entry instruction itself.
    fn enter(&mut self) -> Result<Exit, Stop>;
    fn counters(&mut self) -> &mut ExitCounters;
    /// With `profile=loop` (`run::profiling_loop`): the TSC just after the
    /// guest's last exit, before `enter` read what the exit was.
    fn left_guest_at(&self) -> Option<u64> {
        None
    }
}
