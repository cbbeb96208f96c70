//! The loop every vCPU runs on its core, whichever vendor's back end: look
//! for events and timers with the VM locked, enter the guest, hand the exit
//! to `vmexit::dispatch`, and act on what the handler decided.

use super::backend::Backend;
use super::host::KernelHost;
use super::shared::SharedVm;
use super::vm::{Stop, Vm};
use crate::time;
use devices::StartupSignal;
use vmexit::{Machine, Outcome};

/// Why a vCPU's run loop ended.
pub enum RunEnd {
    /// The vCPU stopped the VM, for this reason.
    Stop(Stop),
    /// Another vCPU stopped the VM.
    VmStopped,
    /// An application processor received an INIT: it waits for a start-up IPI.
    Init,
    /// An application processor halted with interrupts off (see vmexit's hlt.rs).
    Parked,
}

/// Runs the guest on this CPU until it stops, the VM is stopped, or (an
/// application processor) it receives an INIT.
pub fn run(vcpu: &mut dyn Backend, shared: &SharedVm) -> RunEnd {
    let me = vcpu.index();
    x86_64::instructions::interrupts::disable();
    if let Err(stop) = vcpu.switch_in(shared.id) {
        x86_64::instructions::interrupts::enable();
        return RunEnd::Stop(stop);
    }
    let output = shared.lock().output.clone();
    let mut host = KernelHost;
    let end = loop {
        if shared.is_stopping() {
            break RunEnd::VmStopped;
        }
        let now = time::rdtsc();
        if now >= shared.deadline {
            break RunEnd::Stop(Stop::TimeLimit { ms: shared.time_limit_ms });
        }
        shared.rearm_kick(me);
        {
            let mut guard = shared.lock();
            let vm = &mut *guard;
            vm.chipset.take_wakeup(me);
            if take_init(me, vm) {
                break RunEnd::Init;
            }
            vm.poll_host_console(now);
            // Timers that expired raise their interrupts; the back end's timer
            // brings the VMM back by the next one (or the time limit).
            vm.chipset.poll(now, &mut vm.memory);
            let wake = vm.chipset.next_deadline(me).map_or(shared.deadline, |d| d.min(shared.deadline));
            vcpu.arm_timer(now, wake);
            vmexit::events::deliver_pending(vcpu, &mut vm.chipset);
            vcpu.sync_to_guest(&mut vm.chipset);
            shared.wake_others(vm, me);
        }
        // Console lines waiting for the host's port go out as it takes
        // them, with no VM lock held and without waiting for it.
        crate::log::pump();
        let exit = match vcpu.enter() {
            Ok(exit) => exit,
            Err(stop) => break RunEnd::Stop(stop),
        };
        let exit_tsc = time::rdtsc();
        let kind = exit.kind();
        let outcome = {
            let mut guard = shared.lock();
            let vm = &mut *guard;
            vcpu.sync_from_guest(&mut vm.chipset);
            let (sink, name) = (&vm.output, vm.name.as_str());
            let console = |line: &[u8]| sink.line(format_args!("vm {name}"), line);
            let mut machine = Machine { name, chipset: &mut vm.chipset, memory: &mut vm.memory, console: &console };
            let outcome = vmexit::dispatch(exit, vcpu, &mut machine, &mut host);
            shared.wake_others(vm, me);
            if let Outcome::Marker(value) = outcome {
                report_marker(vm, vcpu, value);
            }
            outcome
        };
        vcpu.counters().record(kind, time::rdtsc() - exit_tsc);
        // A VM writing faster than the host's port waits for it here, with
        // no lock held: only its own vCPU is slowed. (Not counted as the
        // exit's VMM time: the guest is paced, the VMM does no work.)
        if output.must_wait() {
            while output.over_backlog() && !shared.is_stopping() && time::rdtsc() < shared.deadline {
                crate::log::pump();
                core::hint::spin_loop();
            }
        }
        match outcome {
            Outcome::Resume | Outcome::Marker(_) => {}
            Outcome::Park => break RunEnd::Parked,
            Outcome::Stop(stop) => break RunEnd::Stop(stop),
        }
    };
    vcpu.switch_out();
    x86_64::instructions::interrupts::enable();
    end
}

/// The bench reads this line: guest time since the VM was built and this
/// vCPU's exits so far.
fn report_marker(vm: &Vm, vcpu: &mut dyn Backend, value: u8) {
    let micros = time::tsc_to_micros(time::rdtsc().saturating_sub(vm.started));
    let index = vcpu.index();
    let ticks = vm.chipset.timer_interrupts(index);
    let c = vcpu.counters();
    log::info!(
        "vm {} marker {value} on vcpu{index} at {micros} us: {} exits;{}; {ticks} timer interrupts",
        vm.name,
        c.total(),
        c.summary()
    );
}

/// Start-up signals for a running vCPU: an INIT sends an application
/// processor back to waiting for a start-up IPI; a start-up IPI is ignored
/// by a CPU already running, as is an INIT to the bootstrap processor (the
/// platform has no INIT-reset path for it).
fn take_init(index: usize, vm: &mut Vm) -> bool {
    while let Some(signal) = vm.chipset.take_signal(index) {
        if signal == StartupSignal::Init && index != 0 {
            return true;
        }
    }
    false
}
