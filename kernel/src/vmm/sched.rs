//! The vCPU scheduler's mechanism: every core that runs guests loops here,
//! asking the policy (`basalt_sched::Eevdf`, pure and host-tested) which vCPU
//! to run and until when, switching vCPUs on and off the core, and feeding the
//! policy what happened (a slice ended, a vCPU halted with nothing to do, an
//! interrupt woke one, a VM stopped).
//!
//! - A vCPU runs in `run::run` until its slice ends (`Slice::until`, which the
//!   back end's timer honours), its core is asked to decide again (a kick:
//!   `RESCHEDULE` and a host IPI), it halts with nothing pending while another
//!   vCPU waits for the core (`RunEnd::Blocked`), or its VM stops. A vCPU
//!   alone on its core has no slice end at all and, halted, stays halted in
//!   the guest (VT-x's HLT state, SVM's wait in the host), as before the
//!   scheduler: its core has nothing else to do.
//! - A blocked vCPU wakes when something arrives for it (the chipset's
//!   wake-up, turned into `wake` by `SharedVm::kick`) or when its own next
//!   timer event comes (`timers`; whichever core decides next wakes it, and
//!   every core's slice or idle wait ends by the earliest of them).
//! - Moving: a vCPU's control structure is made current on the core it runs
//!   on each time it comes on (`Backend::switch_in`), and released when it
//!   leaves (`switch_out`: VMCLEAR on VT-x), so any core may run it next.
//! - The policy and this table sit behind one lock, taken only to decide
//!   (never while a guest runs); per-exit work takes none of it.

use super::backend::Backend;
use super::counters::ExitCounters;
use super::shared::SharedVm;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use basalt_sched::{CoreId, NotRunnable, Params, Policy, Refused, Tunables, VcpuId};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// Cores the scheduler can address (the kernel's CPU limit).
pub const MAX_CORES: usize = 64;

/// What a vCPU waits for while it is not runnable, so that it looks for the
/// right thing when it runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Nothing: it is runnable (or halted in the guest).
    Nothing,
    /// An interrupt or its timer, after a HLT with nothing pending.
    Interrupt,
    /// An NMI or INIT: halted with interrupts off (an application processor).
    Parked,
    /// A start-up IPI: an application processor before its first, or after INIT.
    Startup,
}

/// A vCPU as the scheduler holds it between its runs.
pub struct VcpuEntry {
    pub vm: Arc<SharedVm>,
    pub index: usize,
    pub id: VcpuId,
    /// None while an application processor waits for a start-up IPI: its
    /// back end is built on the core that runs it once one comes.
    pub backend: Mutex<Option<Box<dyn Backend>>>,
    /// Exits of the back ends it had before (an application processor after INIT).
    pub counters: Mutex<ExitCounters>,
    pub waiting: Mutex<Waiting>,
    /// The policy's figures, kept when the vCPU leaves it (its VM stopped).
    pub accounting: Mutex<Option<basalt_sched::Accounting>>,
    /// Its exits by kind as of its last run's end (the shell's `top` reads
    /// them without waiting for a running vCPU's back end).
    pub exits: Mutex<[u64; vmexit::Exit::KINDS]>,
    /// Host TSC ticks it ran on each core (its runs, switches included):
    /// where it ran, which its affinity must explain.
    pub ran_on: Mutex<[u64; MAX_CORES]>,
    /// How late it came back on a core after blocking until a timer event.
    pub timer_wakes: Mutex<TimerWakes>,
    /// Its parameters as its VM's configuration gives them.
    params: Params,
}

impl Drop for VcpuEntry {
    /// The back end (VMCS or VMCB, bitmaps, XSAVE area) goes back before the
    /// VM does: the end-of-run report waits only for the VM's memory
    /// (`guest_memory::live`), which the `vm` field may be the last to hold.
    fn drop(&mut self) {
        self.backend.get_mut().take();
    }
}

/// A blocked vCPU's timer wake-ups, end to end in host TSC ticks: from the
/// event's due time to the vCPU's guest entry, and the part of that before
/// any core noticed it (a running vCPU's exit for it, or an idle core's
/// wake-up: the timer's own delivery, which on an emulator is the
/// emulator's). The case `sched-latency-1cpu` reads them.
#[derive(Clone, Copy, Default)]
pub struct TimerWakes {
    /// The wake-up not yet run: when it was due, and when a core noticed it.
    pending: Option<(u64, u64)>,
    pub count: u64,
    pub late_total: u64,
    pub late_max: u64,
    /// The longest time from the due time to a core's noticing it.
    pub noticed_max: u64,
    /// The longest time from a core's noticing it to the guest entry: the
    /// policy's choice (a running vCPU's minimum run) and the VMM's work.
    pub after_noticed_max: u64,
}

impl TimerWakes {
    /// A core noticed at `now` that the timer event due at `due` came.
    fn noticed(&mut self, due: u64, now: u64) {
        self.pending = Some((due, now));
        self.noticed_max = self.noticed_max.max(now.saturating_sub(due));
    }

    /// Its run begins at `now`: the lateness of a timer wake-up is counted.
    pub fn ran(&mut self, now: u64) {
        if let Some((due, noticed)) = self.pending.take() {
            let late = now.saturating_sub(due);
            self.count += 1;
            self.late_total += late;
            self.late_max = self.late_max.max(late);
            self.after_noticed_max = self.after_noticed_max.max(now.saturating_sub(noticed));
        }
    }
}

struct Table {
    policy: basalt_sched::Eevdf,
    vcpus: Vec<Option<Arc<VcpuEntry>>>,
    /// Blocked vCPUs and the host TSC of their next timer event.
    timers: Vec<(VcpuId, u64)>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);
/// Per core: decide again at the next chance (set before the kick's IPI).
static RESCHEDULE: [AtomicBool; MAX_CORES] = [const { AtomicBool::new(false) }; MAX_CORES];
/// The earliest timer event of any blocked vCPU (`u64::MAX`: none), so a
/// running vCPU's loop can end its slice for it without the lock.
static EARLIEST_TIMER: AtomicU64 = AtomicU64::new(u64::MAX);
/// Per core: host TSC ticks spent halted while VMs run, idle or in a
/// guest's HLT (`add_halted`), for the end-of-run line.
static HALTED: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

/// `core` spent `ticks` halted: idle, or running a vCPU that waited in HLT.
pub fn add_halted(core: u32, ticks: u64) {
    if let Some(total) = HALTED.get(core as usize) {
        total.fetch_add(ticks, Ordering::Relaxed);
    }
}

/// Per core: host TSC ticks spent in guests (from entry to exit), and how
/// many times a vCPU was run there (each a switch in and out).
static IN_GUEST: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];
static RUNS: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

pub fn add_in_guest(core: u32, ticks: u64) {
    if let Some(total) = IN_GUEST.get(core as usize) {
        total.fetch_add(ticks, Ordering::Relaxed);
    }
}

/// Host TSC of the first vCPU run since `reset_figures` (0: none yet): the
/// figures count from there, so that building the VMs is not in them.
static FIRST_RUN: AtomicU64 = AtomicU64::new(0);

pub fn count_run(core: u32) {
    if FIRST_RUN.load(Ordering::Relaxed) == 0
        && FIRST_RUN.compare_exchange(0, crate::time::rdtsc(), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    {
        for table in [&HALTED, &IN_GUEST] {
            for total in table {
                total.store(0, Ordering::Relaxed);
            }
        }
    }
    if let Some(runs) = RUNS.get(core as usize) {
        runs.fetch_add(1, Ordering::Relaxed);
    }
}

/// When the first vCPU ran since `reset_figures` (host TSC; 0: none did).
pub fn first_run() -> u64 {
    FIRST_RUN.load(Ordering::Acquire)
}

/// A core's figures since the first vCPU run: TSC ticks halted (idle or in a
/// guest's HLT), TSC ticks in guests, vCPU runs.
pub fn core_figures(core: u32) -> (u64, u64, u64) {
    let load = |table: &[AtomicU64; MAX_CORES]| table.get(core as usize).map_or(0, |t| t.load(Ordering::Relaxed));
    (load(&HALTED), load(&IN_GUEST), load(&RUNS))
}

pub fn reset_figures() {
    FIRST_RUN.store(0, Ordering::Release);
    for table in [&HALTED, &IN_GUEST, &RUNS] {
        for total in table {
            total.store(0, Ordering::Relaxed);
        }
    }
}

/// The slice from the boot command line (`slice-us=`), 0 for the policy's default.
static SLICE_US: AtomicU64 = AtomicU64::new(0);
/// `migrate=every-slice` (test configuration): see `after_slice`.
static MIGRATE_EVERY_SLICE: AtomicBool = AtomicBool::new(false);

#[cfg(feature = "test-hooks")]
pub fn migrate_every_slice() {
    MIGRATE_EVERY_SLICE.store(true, Ordering::Relaxed);
}

/// A vCPU's slice on `core` ended. With `migrate=every-slice` it must move:
/// its CPUs are narrowed to the next one it may use after `core` (round
/// robin), which the policy carries out at `core`'s next decision.
pub fn after_slice(entry: &VcpuEntry, core: u32) {
    if !MIGRATE_EVERY_SLICE.load(Ordering::Relaxed) || entry.params.dedicated {
        return;
    }
    let allowed: Vec<CoreId> = entry.params.cpus.iter().collect();
    let Some(&next) = allowed.iter().find(|c| c.0 > core).or(allowed.first()).filter(|c| c.0 != core) else {
        return;
    };
    let params = Params { cpus: basalt_sched::CpuSet::only(next), ..entry.params.clone() };
    let kick = with_table(|t| t.policy.set_params(entry.id, params, now_ns()).ok().flatten());
    if let Some(kick) = kick.filter(|k| k.core.0 != core) {
        reschedule(kick.core);
    }
}

pub fn set_slice_us(micros: u64) {
    SLICE_US.store(micros, Ordering::Relaxed);
}

/// Host TSC ticks to the policy's nanoseconds, and back.
fn to_ns(tsc: u64) -> u64 {
    (tsc as u128 * 1_000_000_000 / crate::time::tsc_hz().max(1) as u128).min(u64::MAX as u128) as u64
}

fn to_tsc(ns: u64) -> u64 {
    (ns as u128 * crate::time::tsc_hz() as u128 / 1_000_000_000).min(u64::MAX as u128) as u64
}

fn now_ns() -> u64 {
    to_ns(crate::time::rdtsc())
}

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    let mut guard = TABLE.lock();
    let table = guard.get_or_insert_with(|| {
        let mut tunables = Tunables::default();
        let slice = SLICE_US.load(Ordering::Relaxed);
        if slice > 0 {
            // The other times scale with the slice: a longer slice is asked
            // for where the VMM's own work takes longer in guest time (an
            // emulator), and a shorter request than that work would cut
            // every wake-up's handler short.
            let default = Tunables::default();
            tunables.slice_ns = slice * 1000;
            tunables.min_run_ns = tunables.slice_ns * default.min_run_ns / default.slice_ns;
            tunables.min_request_ns = tunables.slice_ns * default.min_request_ns / default.slice_ns;
        }
        let cores = crate::percpu::online().count().clamp(1, MAX_CORES);
        Table { policy: basalt_sched::Eevdf::new(cores, tunables), vcpus: Vec::new(), timers: Vec::new() }
    });
    f(table)
}

/// The cores that run guests, as the policy's affinity set.
pub fn guest_cores() -> basalt_sched::CpuSet {
    let mut set = basalt_sched::CpuSet::empty();
    for cpu in crate::percpu::online().filter(|c| c.runs_guests.load(Ordering::Acquire)) {
        set.insert(CoreId(cpu.index));
    }
    set
}

/// Registers vCPU `index` of `vm`, not runnable until `wake`; returns it.
/// The lowest free number is reused, as the policy wants them dense.
pub fn add(
    vm: &Arc<SharedVm>,
    index: usize,
    backend: Option<Box<dyn Backend>>,
    params: Params,
) -> Result<Arc<VcpuEntry>, Refused> {
    with_table(|t| {
        let slot = t.vcpus.iter().position(Option::is_none).unwrap_or(t.vcpus.len());
        let id = VcpuId(slot as u32);
        t.policy.add(id, params.clone(), now_ns())?;
        let waiting = if backend.is_some() { Waiting::Nothing } else { Waiting::Startup };
        let entry = Arc::new(VcpuEntry {
            vm: vm.clone(),
            index,
            id,
            backend: Mutex::new(backend),
            counters: Mutex::new(ExitCounters::new()),
            waiting: Mutex::new(waiting),
            accounting: Mutex::new(None),
            exits: Mutex::new([0; vmexit::Exit::KINDS]),
            ran_on: Mutex::new([0; MAX_CORES]),
            timer_wakes: Mutex::new(TimerWakes::default()),
            params,
        });
        if slot == t.vcpus.len() {
            t.vcpus.push(Some(entry.clone()));
        } else {
            t.vcpus[slot] = Some(entry.clone());
        }
        Ok(entry)
    })
}

/// Takes a vCPU out for good (its VM stopped); returns the policy's figures.
pub fn remove(id: VcpuId) -> Option<basalt_sched::Accounting> {
    with_table(|t| {
        t.timers.retain(|&(v, _)| v != id);
        publish_earliest(t);
        let slot = t.vcpus.get_mut(id.0 as usize)?;
        slot.take();
        t.policy.remove(id, now_ns()).ok()
    })
}

/// The vCPU may run: it is queued, and its core kicked if it should preempt.
pub fn wake(id: VcpuId) {
    let kick = with_table(|t| {
        t.timers.retain(|&(v, _)| v != id);
        publish_earliest(t);
        t.policy.wake(id, now_ns())
    });
    if let Some(kick) = kick {
        reschedule(kick.core);
    }
}

/// The running vCPU `id` stops being runnable, waiting for `what`; with a
/// timer event at host TSC `timer`, it wakes by then anyway.
pub fn block(id: VcpuId, what: Waiting, timer: Option<u64>) {
    let why = match what {
        Waiting::Startup => NotRunnable::WaitingForSipi,
        _ => NotRunnable::Blocked,
    };
    with_table(|t| {
        t.policy.block(id, why, now_ns());
        if let Some(at) = timer {
            t.timers.push((id, at));
            publish_earliest(t);
        }
    });
}

fn publish_earliest(t: &Table) {
    let earliest = t.timers.iter().map(|&(_, at)| at).min().unwrap_or(u64::MAX);
    EARLIEST_TIMER.store(earliest, Ordering::Release);
}

/// Asks `core` to decide again: at once if it is this one (its loop looks
/// at the flag before the next entry), else by a host IPI.
pub fn reschedule(core: CoreId) {
    let Some(flag) = RESCHEDULE.get(core.0 as usize) else { return };
    flag.store(true, Ordering::Release);
    let me = crate::percpu::current_index();
    if core.0 != me {
        if let Some(cpu) = crate::percpu::online().find(|c| c.index == core.0) {
            crate::apic::send_fixed(cpu.apic_id, crate::trap::VECTOR_PING);
        }
    }
}

/// Whether this core was asked to decide again (the run loop leaves).
pub fn reschedule_requested(core: u32) -> bool {
    RESCHEDULE.get(core as usize).is_some_and(|f| f.load(Ordering::Acquire))
}

/// The earliest timer event of a blocked vCPU, host TSC.
pub fn earliest_timer() -> u64 {
    EARLIEST_TIMER.load(Ordering::Acquire)
}

/// Whether `core` should leave starting VMs to other cores: a dedicated vCPU
/// owns it (building a VM there would be that vCPU's steal), and some core
/// that runs guests is not dedicated.
pub fn leaves_vm_starts(core: u32) -> bool {
    with_table(|t| {
        t.policy.is_dedicated(CoreId(core)) && guest_cores().iter().any(|other| !t.policy.is_dedicated(other))
    })
}

/// Whether a vCPU other than the one running on `core` waits for it, so a
/// halted vCPU there should give the core up rather than wait on it.
pub fn others_want(core: u32) -> bool {
    with_table(|t| t.policy.runnable_on(CoreId(core)) > 1)
}

/// What `core` does next: wakes the vCPUs whose timers came, lets the
/// policy balance and pick; kicks the core it says. Returns the vCPU to
/// run and how long its slice is (TSC ticks; None: no end), which the run
/// counts from its start: the VMM's own work to get the vCPU on the core
/// (on an emulator, more than a short slice) is not taken from it, so every
/// run gets some guest time.
pub fn decide(core: u32) -> (Option<Arc<VcpuEntry>>, Option<u64>) {
    RESCHEDULE[core as usize].store(false, Ordering::Release);
    let now_tsc = crate::time::rdtsc();
    // No allocation on this path (the heap's allocator walks a free list):
    // the kicks are sent as they come, an IPI being only an APIC write.
    let kick = |k: basalt_sched::Kick| {
        if k.core.0 != core {
            reschedule(k.core);
        }
    };
    with_table(|t| {
        let now = to_ns(now_tsc);
        let mut woke = false;
        while let Some(at) = t.timers.iter().position(|&(_, at)| at <= now_tsc) {
            let (id, due) = t.timers.swap_remove(at);
            if let Some(entry) = t.vcpus.get(id.0 as usize).and_then(Option::as_ref) {
                entry.timer_wakes.lock().noticed(due, now_tsc);
            }
            if let Some(k) = t.policy.wake(id, now) {
                kick(k);
            }
            woke = true;
        }
        if woke {
            publish_earliest(t);
        }
        let _ = t.policy.balance(CoreId(core), now);
        let decision = t.policy.pick(CoreId(core), now);
        if let Some(k) = decision.kick {
            kick(k);
        }
        let entry = decision.run.and_then(|id| t.vcpus.get(id.0 as usize).cloned().flatten());
        let mut length = decision.until.map(|ns| to_tsc(ns).saturating_sub(now_tsc));
        if MIGRATE_EVERY_SLICE.load(Ordering::Relaxed) && length.is_none() && entry.is_some() {
            // Alone on its CPU it would get no slice end, and never move.
            length = Some(to_tsc(t.policy.tunables().slice_ns));
        }
        (entry, length)
    })
}

/// The vCPU, running, leaves its core for an operator's pause: it waits
/// until `wake` (`SharedVm::resume`). Looked at again after: a resume that
/// came while it was leaving must not be lost.
pub fn pause(entry: &VcpuEntry) {
    with_table(|t| t.policy.block(entry.id, NotRunnable::Paused, now_ns()));
    if !entry.vm.is_paused() {
        wake(entry.id);
    }
}

/// New parameters for every vCPU of a running VM (the shell's `set`).
pub fn set_params_of(vm: &SharedVm, params: &Params) -> Result<(), String> {
    let mut kicks = Vec::new();
    let result = with_table(|t| {
        for id in vm.sched_ids() {
            match t.policy.set_params(id, params.clone(), now_ns()) {
                Ok(kick) => kicks.extend(kick.map(|k| k.core)),
                Err(refused) => return Err(alloc::format!("{refused:?}")),
            }
        }
        Ok(())
    });
    for core in kicks {
        reschedule(core);
    }
    result
}

/// Nanoseconds the VM's vCPUs have run, all together.
pub fn run_ns_of(vm: &SharedVm) -> u64 {
    with_table(|t| vm.sched_ids().filter_map(|id| t.policy.accounting(id)).map(|a| a.run_ns).sum())
}

/// Per core that runs guests: its vCPUs that may run there, and the one
/// running now ("vm/vcpuN").
pub fn core_view() -> Vec<(u32, u32, Option<alloc::string::String>)> {
    with_table(|t| {
        guest_cores()
            .iter()
            .map(|core| {
                let running = t.policy.current(core).and_then(|id| t.vcpus.get(id.0 as usize).cloned().flatten());
                let running = running.map(|e| alloc::format!("{}/vcpu{}", e.vm.vm().name, e.index));
                (core.0, t.policy.runnable_on(core), running)
            })
            .collect()
    })
}

/// One vCPU as the shell's `top` sees it: its VM, number, state, core, the
/// policy's figures and its exits by kind.
pub struct VcpuView {
    pub vm: String,
    pub index: usize,
    pub state: &'static str,
    pub core: Option<u32>,
    pub accounting: basalt_sched::Accounting,
    pub exits: [u64; vmexit::Exit::KINDS],
}

pub fn vcpu_view() -> Vec<VcpuView> {
    use basalt_sched::VcpuState;
    // The entries' own locks are taken after the table's is released.
    type Seen = (Arc<VcpuEntry>, Option<VcpuState>, Option<CoreId>, Option<basalt_sched::Accounting>);
    let seen: Vec<Seen> = with_table(|t| {
        t.vcpus
            .iter()
            .flatten()
            .map(|e| (e.clone(), t.policy.state(e.id), t.policy.core_of(e.id), t.policy.accounting(e.id)))
            .collect()
    });
    seen.into_iter()
        .map(|(entry, state, core, accounting)| VcpuView {
            vm: entry.vm.vm().name.clone(),
            index: entry.index,
            state: match state {
                Some(VcpuState::Running) => "running",
                Some(VcpuState::Runnable) => "runnable",
                Some(VcpuState::Throttled) => "throttled",
                Some(VcpuState::Blocked) => "halted",
                Some(VcpuState::WaitingForSipi) => "wait-sipi",
                Some(VcpuState::Paused) => "paused",
                Some(VcpuState::Stopped) | None => "stopped",
            },
            core: core.map(|c| c.0),
            accounting: accounting.unwrap_or_default(),
            exits: *entry.exits.lock(),
        })
        .collect()
}

/// The VM's exits by kind so far, all its vCPUs together (as of each one's
/// last run's end).
pub fn exits_of(vm: &Arc<SharedVm>) -> [u64; vmexit::Exit::KINDS] {
    let entries: Vec<Arc<VcpuEntry>> =
        with_table(|t| t.vcpus.iter().flatten().filter(|e| Arc::ptr_eq(&e.vm, vm)).cloned().collect());
    let mut total = [0u64; vmexit::Exit::KINDS];
    for entry in entries {
        for (sum, n) in total.iter_mut().zip(entry.exits.lock().iter()) {
            *sum += n;
        }
    }
    total
}

/// The vCPU running on `core` spins in a PAUSE loop: it goes behind the
/// others at the core's next decision.
pub fn yield_core(core: u32) {
    with_table(|t| t.policy.yield_now(CoreId(core), now_ns()));
}
