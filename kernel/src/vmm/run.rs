//! The loop every vCPU runs on its core, whichever vendor's back end: look
//! for events and timers, enter the guest, hand the exit to
//! `vmexit::dispatch`, and act on what the handler decided. No lock is the
//! loop's own: the chipset locks the devices an access touches (see
//! `devices::chipset`), so vCPUs of one VM exiting at once on different
//! devices go on side by side.

use super::backend::Backend;
use super::counters::{LoopProfile, Phase};
use super::guest_memory::RamHandle;
use super::host::KernelHost;
use super::shared::SharedVm;
use super::vm::{Stop, Vm};
use crate::log::GuestOutput;
use crate::time;
use core::sync::atomic::{AtomicBool, Ordering};
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
    /// Its slice ended, or its core was asked to decide again.
    Preempted,
    /// An operator paused its VM.
    Paused,
    /// It spins in a PAUSE loop while another vCPU waits for the core.
    Yielded,
    /// It halted with nothing pending while another vCPU waits for the
    /// core; its next timer event is at host TSC `timer`.
    Blocked { timer: u64 },
}

/// The scheduler's terms for one run: the core, and when the slice ends
/// (host TSC; None: not until something else asks).
#[derive(Clone, Copy)]
pub struct Slice {
    pub core: u32,
    pub until: Option<u64>,
}

impl Slice {
    /// Whether the vCPU should leave the core now: its slice is over, its
    /// core was asked to decide again, or a blocked vCPU's timer came.
    fn over(&self, now: u64) -> bool {
        self.until.is_some_and(|until| now >= until)
            || super::sched::reschedule_requested(self.core)
            || now >= super::sched::earliest_timer()
    }

    /// The deadline the back end's timer must also honour.
    fn end(&self) -> u64 {
        self.until.unwrap_or(u64::MAX).min(super::sched::earliest_timer())
    }
}

/// `profile=loop` (read once at boot): the run loop times its phases.
static PROFILE_LOOP: AtomicBool = AtomicBool::new(false);

pub fn set_profile_loop(on: bool) {
    PROFILE_LOOP.store(on, Ordering::Relaxed);
}

/// Whether the loop is profiled; the back ends then note when the guest
/// exited (`Backend::left_guest_at`).
pub fn profiling_loop() -> bool {
    PROFILE_LOOP.load(Ordering::Relaxed)
}

/// Runs the guest on this CPU until it stops, the VM is stopped, or (an
/// application processor) it receives an INIT.
///
/// The loop exists twice, with and without its profile: decided once here,
/// so an unprofiled loop carries no timing code at all.
pub fn run(vcpu: &mut dyn Backend, shared: &SharedVm, slice: Slice) -> RunEnd {
    if profiling_loop() {
        run_loop::<true>(vcpu, shared, slice)
    } else {
        run_loop::<false>(vcpu, shared, slice)
    }
}

/// Times the loop's phases into a `LoopProfile` when `ON`; nothing otherwise.
struct Stopwatch<const ON: bool> {
    last: u64,
    profile: LoopProfile,
}

impl<const ON: bool> Stopwatch<ON> {
    /// The time since the last lap goes to `phase`.
    #[inline(always)]
    fn lap(&mut self, phase: Phase) {
        if ON {
            let now = time::rdtsc();
            self.profile.phases[phase as usize] += now.wrapping_sub(self.last);
            self.last = now;
        }
    }

    /// Starts timing at `at` without counting what came before.
    #[inline(always)]
    fn restart(&mut self, at: u64) {
        if ON {
            self.last = at;
        }
    }
}

fn run_loop<const PROFILE: bool>(vcpu: &mut dyn Backend, shared: &SharedVm, slice: Slice) -> RunEnd {
    let me = vcpu.index();
    x86_64::instructions::interrupts::disable();
    if let Err(stop) = vcpu.switch_in(shared.id) {
        x86_64::instructions::interrupts::enable();
        return RunEnd::Stop(stop);
    }
    // The VM's clocks run `base` behind the host's (its pauses): the
    // platform gets the VM's time, the back end's timer the host's.
    let base = shared.time_base();
    vcpu.set_time_base(base);
    // While the vCPU is on the core the back end's timer (`arm_timer`, never
    // longer than one host tick) stands in for the host's periodic tick, so
    // a guest's timer ticks cost no exits for the host's.
    crate::apic::timer_stop();
    let host_tick = time::tsc_hz().max(1) / super::HOST_TICK_HZ;
    // The back end's timer: for `deadline`, but never longer than one host
    // tick, so the host's own periodic work (console input) goes on, nor
    // past the slice.
    let arm = |vcpu: &mut dyn Backend, now: u64, deadline: u64| {
        vcpu.arm_timer(now, deadline.min(now.saturating_add(host_tick)).min(slice.end()));
    };
    let vm = shared.vm();
    let output = &vm.output;
    let mut host = KernelHost { time_base: base };
    let mut watch = Stopwatch::<PROFILE> { last: time::rdtsc(), profile: LoopProfile::new() };
    // The last exit's kind and when the guest left, for its round trip.
    let mut trip: Option<(usize, u64)> = None;
    // The last exit went the fast way and did what the next entry needs.
    let mut fast = false;
    // The guest waits in HLT at this entry: the time until its exit is the
    // core's halted time (the bench and the idle case read it).
    let mut halted = false;
    let end = loop {
        if !core::mem::take(&mut fast) {
            if shared.is_stopping() {
                break RunEnd::VmStopped;
            }
            // (A resume that came before this vCPU noticed the pause moved the base.)
            if shared.is_paused() || shared.time_base() != base {
                break RunEnd::Paused;
            }
            let now = time::rdtsc();
            if now >= shared.deadline() {
                log_at_time_limit(vcpu, vm, me, now.wrapping_sub(base));
                break RunEnd::Stop(Stop::TimeLimit { ms: shared.time_limit_ms });
            }
            // A halted vCPU is looked at below, once its events are in.
            let over = slice.over(now);
            if over && !vcpu.halted() {
                break RunEnd::Preempted;
            }
            shared.rearm_kick(me);
            watch.lap(Phase::Checks);
            vm.chipset.take_wakeup(me);
            if take_init(me, vm) {
                break RunEnd::Init;
            }
            vm.poll_host_console(now);
            // A command for the management shell: the core's loop runs it.
            if crate::shell::poll(now) {
                break RunEnd::Preempted;
            }
            // Timers that expired raise their interrupts; the back end's timer
            // brings the VMM back by the next one (or the time limit).
            vm.chipset.poll(me, now.wrapping_sub(base), &mut RamHandle(&vm.memory));
            watch.lap(Phase::Poll);
            let wake = next_wake(vm, me, base, shared);
            arm(vcpu, now, wake);
            watch.lap(Phase::Arm);
            vmexit::events::deliver_pending(vcpu, &vm.chipset, &RamHandle(&vm.memory));
            watch.lap(Phase::Deliver);
            vcpu.sync_to_guest(&vm.chipset);
            watch.lap(Phase::SyncIn);
            shared.wake_others(me);
            watch.lap(Phase::Wake);
            // Halted with nothing to take: the core goes to another vCPU
            // if one waits for it; otherwise the vCPU waits on it, halted.
            halted = vcpu.halted() && nothing_pending(vcpu, vm, me);
            // Halted with nothing to take, it is not runnable: when the core
            // must decide (its slice is over, or another vCPU's timer came)
            // or another vCPU waits for it, it blocks until its own next
            // event rather than stay in the queue to be switched back to
            // only to halt again: one switch per wake-up, not two.
            if halted && (over || super::sched::others_want(slice.core)) {
                break RunEnd::Blocked { timer: wake };
            }
            if over {
                // Halted, but an event came for it: it runs, when its turn comes.
                break RunEnd::Preempted;
            }
        }
        // Console lines waiting for the host's port go out as it takes
        // them, with no VM lock held and without waiting for it.
        crate::log::pump();
        watch.lap(Phase::Pump);
        if PROFILE {
            watch.profile.entries += 1;
            if let Some((kind, left)) = trip.take() {
                watch.profile.trips[kind] += 1;
                watch.profile.trip_cycles[kind] += watch.last.wrapping_sub(left);
            }
        }
        let entered = time::rdtsc();
        let exit = match vcpu.enter() {
            Ok(exit) => exit,
            Err(stop) => break RunEnd::Stop(stop),
        };
        let exit_tsc = time::rdtsc();
        // The core's time, for the end-of-run figures: waiting in a guest's
        // HLT, or running guest code (with the entry and exit themselves).
        if halted {
            super::sched::add_halted(slice.core, exit_tsc - entered);
        } else {
            super::sched::add_in_guest(slice.core, exit_tsc - entered);
        }
        let kind = exit.kind();
        if PROFILE {
            // The guest's time is nobody's phase; the exit's translation is.
            let left = vcpu.left_guest_at().unwrap_or(exit_tsc);
            watch.restart(left);
            watch.lap(Phase::Translate);
            trip = Some((kind.min(vmexit::Exit::KINDS - 1), left));
        }
        // The outcome of an exit the fast path handled (and counted).
        let mut handled = None;
        if fast_candidate(&exit, vcpu) {
            match fast_path(&exit, vcpu, shared, me, &mut host, (kind, exit_tsc), &slice) {
                Fast::Declined => {}
                Fast::Handled(outcome) => handled = Some(outcome),
                Fast::Resume { now, wake } => {
                    // As after the long way, the timer for the next entry
                    // is not the exit's work.
                    arm(vcpu, now, wake);
                    watch.lap(Phase::Fast);
                    fast = true;
                    halted = false;
                    // A print may have filled the port's backlog: paced as below.
                    if output.must_wait() {
                        pace(output, shared);
                        watch.restart(time::rdtsc());
                    }
                    continue;
                }
            }
            watch.lap(Phase::Fast);
        }
        let counted = handled.is_some();
        vcpu.sync_from_guest(&vm.chipset);
        watch.lap(Phase::SyncOut);
        // An exit the fast path handled (and counted) only needs the round.
        let outcome = match handled {
            Some(outcome) => outcome,
            None => vmexit::dispatch(exit, vcpu, &mut machine(vm, &mut RamHandle(&vm.memory)), &mut host),
        };
        watch.lap(Phase::Dispatch);
        shared.wake_others(me);
        watch.lap(Phase::Wake);
        if let Outcome::Marker(value) = outcome {
            report_marker(vm, vcpu, value);
        }
        watch.lap(Phase::Dispatch);
        if !counted {
            vcpu.counters().record(kind, time::rdtsc() - exit_tsc);
        }
        watch.lap(Phase::Count);
        // A VM writing faster than the host's port waits for it here, with
        // no lock held: only its own vCPU is slowed. (Not counted as the
        // exit's VMM time: the guest is paced, the VMM does no work.)
        if output.must_wait() {
            pace(output, shared);
            // Pacing is no phase's work.
            watch.restart(time::rdtsc());
        }
        match outcome {
            Outcome::Resume | Outcome::Marker(_) => {}
            Outcome::Park => break RunEnd::Parked,
            // Alone on its core, a spinning vCPU has no one to give it to:
            // its PAUSE loops may run longer before they exit again.
            Outcome::Yield if !super::sched::others_want(slice.core) => vcpu.spin_alone(),
            Outcome::Yield => {
                vcpu.spin_yielded();
                break RunEnd::Yielded;
            }
            Outcome::Stop(stop) => break RunEnd::Stop(stop),
        }
    };
    vcpu.switch_out();
    crate::apic::timer_start_periodic(crate::time::apic_timer_hz(), super::HOST_TICK_HZ);
    x86_64::instructions::interrupts::enable();
    if PROFILE {
        vcpu.counters().profile.add(&watch.profile);
    }
    end
}

/// The VM as the exit handlers see it, with the console line of its print
/// hypercall.
fn machine<'a>(vm: &'a Vm, ram: &'a mut RamHandle<'a>) -> Machine<'a> {
    Machine { name: &vm.name, chipset: &vm.chipset, memory: ram, console: &*vm.console }
}

/// Whether the exit may take `fast_path`, from its kind and the guest's
/// registers alone (before looking at the VM): a WRMSR of IA32_TSC_DEADLINE, a CPUID,
/// a hypercall (`vmexit::fast_hypercall` declines the calls that queue
/// an event), a port access but INS/OUTS.
#[inline(always)]
fn fast_candidate(exit: &vmexit::Exit, vcpu: &dyn Backend) -> bool {
    const RCX: u8 = 1;
    const IA32_TSC_DEADLINE: u64 = 0x6e0;
    match exit {
        vmexit::Exit::Wrmsr => vcpu.gpr(RCX) & 0xffff_ffff == IA32_TSC_DEADLINE,
        vmexit::Exit::Cpuid | vmexit::Exit::Hypercall => true,
        vmexit::Exit::Io(access) => access.string.is_none(),
        _ => false,
    }
}

/// Waits, with no lock held, while the VM's console output is over the
/// host port's backlog (or the VM stops or runs out of time).
fn pace(output: &GuestOutput, shared: &SharedVm) {
    while output.over_backlog() && !shared.is_stopping() && time::rdtsc() < shared.deadline() {
        crate::log::pump();
        core::hint::spin_loop();
    }
}

/// What `fast_path` did with an exit.
enum Fast {
    /// Nothing: the exit goes the long way.
    Declined,
    /// The exit is handled and counted, with this outcome, but the next
    /// entry needs the loop's round (the long way without `dispatch`).
    Handled(Outcome),
    /// The exit is handled and counted and the guest may be entered again
    /// at once, once the back end's timer is armed for `wake` (the
    /// VMX-preemption timer starts over at each entry).
    Resume { now: u64, wake: u64 },
}

/// An exit handled right after it, with no dispatch: a
/// WRMSR of IA32_TSC_DEADLINE (one per guest timer tick), a CPUID, or a
/// hypercall that queues nothing (see `vmexit::fast_hypercall`), with no
/// absorb either; or a plain IN/OUT (`vmexit::fast_port_io`: no single
/// step, no breakpoint), after the absorb, since the device may raise an
/// interrupt; once `fast_candidate` said so; and, when nothing else needs
/// doing before the next entry, without the loop's round either.
///
/// The exit is handled only when the back end's view of the platform is
/// current (see `Backend::guest_view_current`: what the guest did without
/// exiting needs no absorb, and the events delivered at the last full round
/// still stand), and counted (`kind`, from the exit's TSC) as soon as it is;
/// a CPUID of a leaf, or a hypercall, that needs nothing of the VM is
/// handled first, before the view is looked at, and takes the long way
/// without dispatch (where the absorb is) when the view is not current.
/// The round is skipped (as `Slice::over` also asks) when the exit's outcome is to resume (a device's
/// request goes the long way) and the view is still current (a port access
/// that raised an interrupt made the model stale), the VM goes on, within its time limit; no
/// timer of the platform is due (so `poll` would do nothing; a new TSC
/// deadline is ahead); and nothing arrived for this vCPU (no wake-up: an
/// interrupt, NMI, INIT or SIPI from another vCPU or device). The kick is
/// rearmed first, under the same rule as the loop's: whatever arrives for
/// this vCPU from then on sends the IPI, which, pending while the host runs
/// with interrupts off, makes the guest exit right after the entry.
fn fast_path(
    exit: &vmexit::Exit,
    vcpu: &mut dyn Backend,
    shared: &SharedVm,
    me: usize,
    host: &mut KernelHost,
    (kind, exit_tsc): (usize, u64),
    slice: &Slice,
) -> Fast {
    const RAX: u8 = 0;
    const PRINT: u64 = 1;
    // A CPUID of any leaf but 1, a hypercall other than print, need nothing
    // of the VM: done before the view of it is looked at.
    let early = match exit {
        vmexit::Exit::Cpuid => vmexit::fast_cpuid(vcpu, None, host),
        // Declined for good: only print needs the VM.
        vmexit::Exit::Hypercall if vcpu.gpr(RAX) != PRINT => {
            if !vmexit::fast_hypercall(vcpu, None, host) {
                return Fast::Declined;
            }
            true
        }
        _ => false,
    };
    if early {
        vcpu.counters().record(kind, time::rdtsc() - exit_tsc);
    }
    shared.rearm_kick(me);
    let vm = shared.vm();
    if !vcpu.guest_view_current(&vm.chipset) {
        return if early { Fast::Handled(Outcome::Resume) } else { Fast::Declined };
    }
    let now = time::rdtsc();
    let vm_now = now.wrapping_sub(host.time_base);
    if !early {
        let outcome = match exit {
            vmexit::Exit::Wrmsr => vmexit::fast_tsc_deadline(vcpu, &vm.chipset, vm_now).then_some(Outcome::Resume),
            vmexit::Exit::Cpuid => vmexit::fast_cpuid(vcpu, Some(&vm.chipset), host).then_some(Outcome::Resume),
            vmexit::Exit::Io(access) => {
                // The absorb comes first, as on the long way: an interrupt
                // the access raises must find the model caught up with what
                // the CPU took since the last entry.
                vcpu.sync_from_guest(&vm.chipset);
                vmexit::fast_port_io(vcpu, &vm.chipset, host, *access)
            }
            _ => vmexit::fast_hypercall(vcpu, Some(&mut machine(vm, &mut RamHandle(&vm.memory))), host)
                .then_some(Outcome::Resume),
        };
        let Some(outcome) = outcome else { return Fast::Declined };
        vcpu.counters().record(kind, time::rdtsc() - exit_tsc);
        if matches!(exit, vmexit::Exit::Io(_)) {
            // A device's request (a stop, a marker), or a change to the APIC
            // model (an interrupt the access raised, a register the absorb
            // took in) that the page must get back: the round.
            if outcome != Outcome::Resume || !vcpu.guest_view_current(&vm.chipset) {
                return Fast::Handled(outcome);
            }
            // Another vCPU the device interrupted is kicked, as after a dispatch.
            shared.wake_others(me);
        }
    }
    if shared.is_stopping()
        || shared.is_paused()
        || now >= shared.deadline()
        || slice.over(now)
        || vm.chipset.has_wakeup(me)
        || vm.chipset.poll_due(me, vm_now)
    {
        return Fast::Handled(Outcome::Resume);
    }
    Fast::Resume { now, wake: next_wake(vm, me, host.time_base, shared) }
}

/// When the VMM must be back for vCPU `me` (host TSC): the platform's next
/// event for it (in the VM's time, `base` behind the host's), or the VM's
/// time limit.
fn next_wake(vm: &Vm, me: usize, base: u64, shared: &SharedVm) -> u64 {
    let limit = shared.deadline();
    vm.chipset.next_deadline(me).map_or(limit, |d| d.saturating_add(base).min(limit))
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

/// What a vCPU was doing when its VM's time limit came: a guest that should
/// have ended by then but waits (for a timer that never came, an interrupt
/// never raised) shows it here. `vm_now`: the VM's clock.
fn log_at_time_limit(vcpu: &mut dyn Backend, vm: &Vm, me: usize, vm_now: u64) {
    let (halted, injecting) = (vcpu.halted(), vcpu.injection_pending());
    let queued = vcpu.pending();
    let (queued_interrupt, queued_nmi) = (queued.has_interrupt(), queued.nmi);
    let timer = match vm.chipset.next_deadline(me) {
        Some(at) if at > vm_now => alloc::format!("in {} us", time::tsc_to_micros(at - vm_now)),
        Some(at) => alloc::format!("{} us overdue", time::tsc_to_micros(vm_now - at)),
        None => "none".into(),
    };
    let (requested, in_service, tpr) = vm.chipset.apic_vectors(me);
    let vector = |v: Option<u8>| v.map_or("none".into(), |v| alloc::format!("{v:#x}"));
    log::info!(
        "vm {} vcpu{me} at its time limit: halted {}, next timer event {timer}, interrupt pending {}, NMI pending {}; APIC requested {}, in service {}, TPR {tpr:#x}",
        vm.name,
        halted,
        injecting || queued_interrupt || vm.chipset.has_interrupt(me),
        queued_nmi || vm.chipset.nmi_pending(me),
        vector(requested),
        vector(in_service)
    );
}

/// Whether a halted vCPU has nothing to take: no event injected or queued,
/// no interrupt or NMI in the platform for it.
fn nothing_pending(vcpu: &mut dyn Backend, vm: &Vm, me: usize) -> bool {
    let queued = vcpu.pending();
    let (nmi, interrupt) = (queued.nmi, queued.has_interrupt());
    !vcpu.injection_pending() && !nmi && !interrupt && !vm.chipset.has_interrupt(me) && !vm.chipset.nmi_pending(me)
}

/// Start-up signals for a running vCPU: an INIT sends an application
/// processor back to waiting for a start-up IPI; a start-up IPI is ignored
/// by a CPU already running, as is an INIT to the bootstrap processor (the
/// platform has no INIT-reset path for it).
fn take_init(index: usize, vm: &Vm) -> bool {
    while let Some(signal) = vm.chipset.take_signal(index) {
        if signal == StartupSignal::Init && index != 0 {
            return true;
        }
    }
    false
}
