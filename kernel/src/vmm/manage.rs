//! The VMs a host defines, and what an operator does with them from the
//! management shell (`crate::shell`): each VM's state, start, pause, resume,
//! reset, power-off and shutdown, its crash policy, and the figures `list`,
//! `info`, `cores` and `mem` print. The rules (which operation each state
//! allows, what follows a crash) and the output formats are the pure
//! `basalt_manage` crate's; a VM's runs are `mod.rs`'s jobs.
//!
//! Lock order: `DEFINED` before anything a VM's run takes (the job queue, the
//! scheduler); nothing holding those takes `DEFINED`.

use super::vm_console::VmConsole;
use super::{GuestImages, SharedVm, Stop, VmReport};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use basalt_manage::command::Setting;
use basalt_manage::format::{MemInfo, VmInfo, VmRow};
use basalt_manage::lifecycle::{self, AfterStop, Ending, Operation, State};
use basalt_manage::sample::{permille, Sampler};
use core::sync::atomic::{AtomicBool, Ordering};
use loader::manifest::{OnCrash, Scheduling};
use spin::Mutex;

/// One VM of the host's list, across its runs.
struct Defined {
    guest: Arc<GuestImages>,
    /// Managed hosts only (see `vm_console`).
    console: Option<Arc<VmConsole>>,
    /// As its configuration gives it, until `set` changes it.
    scheduling: Scheduling,
    state: State,
    /// Why its last run ended.
    stop: Option<Stop>,
    /// Times it was started (at boot, or from the shell).
    starts: u32,
    /// Crash restarts since it was last started.
    crash_restarts: u32,
    /// Its current run, once built.
    shared: Option<Arc<SharedVm>>,
    /// A stop asked while its run was being built; given to the run at once.
    stop_asked: Option<Stop>,
    /// Host TSC its current run started at.
    since: u64,
    /// Host TSC by which a `shutdown` must have ended it.
    shutdown_by: Option<(u64, u32)>,
    /// The last run's exits, by kind name.
    exits: u64,
    exits_by_reason: Vec<(String, u64)>,
}

static DEFINED: Mutex<Vec<Defined>> = Mutex::new(Vec::new());
static MANAGED: AtomicBool = AtomicBool::new(false);

/// The host's VMs, from the boot bundle; those marked autostart start now.
pub(super) fn define(vms: Vec<GuestImages>, managed: bool) {
    MANAGED.store(managed, Ordering::Release);
    let mut defined = DEFINED.lock();
    defined.clear();
    for (index, guest) in vms.into_iter().enumerate() {
        let guest = Arc::new(guest);
        let autostart = guest.spec.lifecycle.autostart;
        let name = guest.spec.name.clone();
        defined.push(Defined {
            console: managed.then(|| VmConsole::new(&name)),
            scheduling: guest.spec.scheduling,
            guest: guest.clone(),
            state: State::Defined,
            stop: None,
            starts: 0,
            crash_restarts: 0,
            shared: None,
            stop_asked: None,
            since: 0,
            shutdown_by: None,
            exits: 0,
            exits_by_reason: Vec::new(),
        });
        if autostart {
            let d = defined.last_mut().expect("just pushed");
            d.state = State::Running;
            d.starts = 1;
            super::queue_start(index, guest);
        } else {
            log::info!("vm {name}: defined, not started (autostart is off)");
        }
    }
}

pub(super) fn console(index: usize) -> Option<Arc<VmConsole>> {
    DEFINED.lock().get(index).and_then(|d| d.console.clone())
}

pub(super) fn scheduling(index: usize, spec: &loader::VmSpec) -> Scheduling {
    DEFINED.lock().get(index).map_or(spec.scheduling, |d| d.scheduling)
}

/// Its run is built and in the scheduler.
pub(super) fn started(index: usize, shared: &Arc<SharedVm>) {
    let mut defined = DEFINED.lock();
    let Some(d) = defined.get_mut(index) else { return };
    d.shared = Some(shared.clone());
    d.since = crate::time::rdtsc();
    if let Some(stop) = d.stop_asked.take() {
        shared.stop(stop);
    }
}

/// Its run ended and it starts again at once (a reset).
pub(super) fn starting_again(index: usize) {
    if let Some(d) = DEFINED.lock().get_mut(index) {
        d.shared = None;
        d.state = State::Running;
    }
}

/// Its run ended for good (`report`): true when its crash policy restarts it.
pub(super) fn ended(index: usize, report: &VmReport) -> bool {
    let mut defined = DEFINED.lock();
    let Some(d) = defined.get_mut(index) else { return false };
    d.shared = None;
    d.shutdown_by = None;
    d.exits = report.exits;
    d.exits_by_reason = exits_by_reason(&report.summary);
    let ending = if report.stop.is_crash() { Ending::Crash } else { Ending::Clean };
    let policy = match d.guest.spec.lifecycle.on_crash {
        OnCrash::Stop => lifecycle::OnCrash::Stop,
        OnCrash::Restart { limit } => lifecycle::OnCrash::Restart { limit },
    };
    let quitting = MANAGED.load(Ordering::Acquire) && crate::shell::quitting();
    let after = if quitting { AfterStop::Stopped } else { lifecycle::after_stop(ending, policy, d.crash_restarts) };
    d.stop = Some(report.stop.clone());
    match after {
        AfterStop::Restart => {
            d.crash_restarts += 1;
            d.state = State::Running;
            if let OnCrash::Restart { limit } = d.guest.spec.lifecycle.on_crash {
                log::info!("vm {}: crashed; restarting it ({} of {limit})", report.name, d.crash_restarts);
            }
            true
        }
        AfterStop::Crashed => {
            d.state = State::Crashed;
            if d.crash_restarts > 0 {
                log::info!("vm {}: crashed again after {} restart(s); left crashed", report.name, d.crash_restarts);
            }
            false
        }
        AfterStop::Stopped => {
            d.state = if report.stop.is_crash() { State::Crashed } else { State::Stopped };
            false
        }
    }
}

/// Whether a VM is starting, running, paused or stopping.
pub(super) fn any_active() -> bool {
    DEFINED.lock().iter().any(|d| matches!(d.state, State::Running | State::Paused | State::Stopping))
}

/// "hlt=12/345 io=3/99" (a report's summary) as (name, count) pairs.
fn exits_by_reason(summary: &str) -> Vec<(String, u64)> {
    summary
        .split_whitespace()
        .filter_map(|word| {
            let (name, rest) = word.split_once('=')?;
            let count = rest.split('/').next()?.parse().ok()?;
            Some((name.to_string(), count))
        })
        .collect()
}

/// The VM named `name`, with `f`; or the error line for an unknown name.
fn with_vm<R>(name: &str, f: impl FnOnce(usize, &mut Defined) -> R) -> Result<R, String> {
    let mut defined = DEFINED.lock();
    let Some(index) = defined.iter().position(|d| d.guest.spec.name == name) else {
        return Err(format!("no VM named '{}'; 'list' shows them", shortened(name)));
    };
    Ok(f(index, &mut defined[index]))
}

/// A name as echoed in an error line: never a huge one.
fn shortened(name: &str) -> &str {
    name.char_indices().nth(64).map_or(name, |(at, _)| &name[..at])
}

fn allowed(op: Operation, name: &str, d: &Defined) -> Result<(), String> {
    lifecycle::check(op, d.state).map_err(|e| e.describe(name))
}

/// The commands below that set something going (a VM starting, stopping,
/// pressing its button) say so through `announce` before they do it, under
/// the VM list's lock: what it causes (the VM's output, its stop line) can
/// come at once on another core, and the operator's answer comes first.
/// Refusals are the `Err`, said by the caller.
pub fn start(name: &str, announce: &dyn Fn(&str)) -> Result<(), String> {
    with_vm(name, |index, d| {
        allowed(Operation::Start, name, d)?;
        announce(&format!("starting {name}"));
        d.state = State::Running;
        d.starts += 1;
        d.crash_restarts = 0;
        d.stop = None;
        super::queue_start(index, d.guest.clone());
        Ok(())
    })?
}

/// Stops the VM's run with `stop` (a run not built yet: once it is; one
/// still queued: at once).
fn stop_run(index: usize, d: &mut Defined, stop: Stop) {
    if let Some(shared) = &d.shared {
        shared.stop(stop);
        d.state = State::Stopping;
    } else if super::unqueue(index) {
        d.state = State::Stopped;
        d.stop = Some(stop);
    } else {
        d.stop_asked = Some(stop);
        d.state = State::Stopping;
    }
}

pub fn poweroff(name: &str, announce: &dyn Fn(&str)) -> Result<(), String> {
    with_vm(name, |index, d| {
        allowed(Operation::Poweroff, name, d)?;
        announce(&format!("powering {name} off"));
        stop_run(index, d, Stop::Operator("powered off from the console".into()));
        Ok(())
    })?
}

pub fn reset(name: &str, announce: &dyn Fn(&str)) -> Result<(), String> {
    with_vm(name, |index, d| {
        allowed(Operation::Reset, name, d)?;
        announce(&format!("resetting {name}"));
        stop_run(index, d, Stop::ResetByOperator);
        Ok(())
    })?
}

pub fn pause(name: &str) -> Result<String, String> {
    with_vm(name, |_, d| {
        allowed(Operation::Pause, name, d)?;
        let Some(shared) = &d.shared else { return Err(format!("'{name}' is still starting; try again")) };
        shared.pause();
        d.state = State::Paused;
        Ok(format!("{name} paused"))
    })?
}

pub fn resume(name: &str, announce: &dyn Fn(&str)) -> Result<(), String> {
    with_vm(name, |_, d| {
        allowed(Operation::Resume, name, d)?;
        announce(&format!("{name} resumed"));
        if let Some(shared) = &d.shared {
            shared.resume();
        }
        d.state = State::Running;
        Ok(())
    })?
}

/// Presses the VM's ACPI power button; powers it off if it is still running
/// `timeout_s` seconds later (`enforce_shutdowns`).
pub fn shutdown(name: &str, timeout_s: Option<u32>, announce: &dyn Fn(&str)) -> Result<(), String> {
    const DEFAULT_TIMEOUT_S: u32 = 30;
    with_vm(name, |_, d| {
        allowed(Operation::Shutdown, name, d)?;
        let Some(shared) = &d.shared else { return Err(format!("'{name}' is still starting; try again")) };
        let seconds = timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
        announce(&format!("pressed {name}'s power button; powering it off if it still runs in {seconds} s"));
        shared.vm().chipset.press_power_button();
        let by = crate::time::rdtsc().saturating_add(crate::time::tsc_hz().saturating_mul(seconds as u64));
        d.shutdown_by = Some((by, seconds));
        d.state = State::Stopping;
        Ok(())
    })?
}

/// Powers off the VMs whose shutdown took longer than they were given.
pub fn enforce_shutdowns(now: u64) {
    let mut defined = DEFINED.lock();
    for d in defined.iter_mut() {
        let Some((by, seconds)) = d.shutdown_by else { continue };
        if now < by {
            continue;
        }
        d.shutdown_by = None;
        if let Some(shared) = &d.shared {
            log::info!("vm {}: did not shut down within {seconds} s; powering it off", d.guest.spec.name);
            shared.stop(Stop::Operator(format!("did not shut down within {seconds} s; powered off from the console")));
        }
    }
}

pub fn set(name: &str, setting: Setting) -> Result<String, String> {
    with_vm(name, |_, d| {
        allowed(Operation::Set, name, d)?;
        let mut s = d.scheduling;
        match setting {
            Setting::Weight(weight) => s.weight = weight,
            Setting::Cap(cap) => s.cap = cap,
            Setting::Cpus(cpus) => s.affinity = cpus,
        }
        let params = super::scheduling_params(&s)?;
        if let Some(shared) = &d.shared {
            super::sched::set_params_of(shared, &params).map_err(|why| format!("cannot change {name}: {why}"))?;
        }
        d.scheduling = s;
        Ok(format!("{name}: {}", describe_scheduling(&s)))
    })?
}

fn describe_scheduling(s: &Scheduling) -> String {
    let cap = s.cap.map_or("no cap".into(), |c| format!("cap {c}%"));
    let cpus = s.affinity.map_or("all CPUs".into(), |set| format!("CPUs {}", loader::manifest::render_affinity(set)));
    format!("weight {}, {cap}, {cpus}", s.weight)
}

/// Every running VM is powered off (`quit`).
pub fn stop_all() {
    let mut defined = DEFINED.lock();
    for (index, d) in defined.iter_mut().enumerate() {
        if matches!(d.state, State::Running | State::Paused | State::Stopping) {
            stop_run(index, d, Stop::Operator("powered off: Basalt quits".into()));
        }
    }
}

/// The console of the VM named `name`.
pub fn console_of(name: &str) -> Result<Arc<VmConsole>, String> {
    with_vm(name, |_, d| d.console.clone().ok_or_else(|| "no console to attach to".to_string()))?
}

/// Typed bytes for the VM's COM1 (dropped when it does not run).
pub fn type_into(name: &str, bytes: &[u8]) {
    let shared = DEFINED.lock().iter().find(|d| d.guest.spec.name == name).and_then(|d| d.shared.clone());
    if let Some(shared) = shared {
        shared.vm().chipset.com1_input(bytes);
        shared.kick_all();
    }
}

/// The VM that owns the host console at boot (`host-console=1`): the shell attaches to it first.
pub fn first_console() -> Option<String> {
    DEFINED.lock().iter().find(|d| d.guest.spec.host_console).map(|d| d.guest.spec.name.clone())
}

/// `list`'s last look: each running VM's run time (ns), by name and start.
static LIST_SAMPLE: Mutex<Sampler<(String, u64), 1>> = Mutex::new(Sampler::new());

/// The VM's current run, while it is running or paused.
fn running(d: &Defined) -> Option<&Arc<SharedVm>> {
    d.shared.as_ref().filter(|_| matches!(d.state, State::Running | State::Paused))
}

/// `list`: each VM's row; its CPU share since the last `list` (or its start).
pub fn rows() -> Vec<VmRow> {
    let now = crate::time::rdtsc();
    let defined = DEFINED.lock();
    let runs = defined.iter().filter_map(|d| {
        let run_ns = super::sched::run_ns_of(running(d)?);
        Some(((d.guest.spec.name.clone(), d.since), d.since, [run_ns]))
    });
    let shares = LIST_SAMPLE.lock().look(now, runs);
    defined
        .iter()
        .map(|d| {
            let spec = &d.guest.spec;
            let running = running(d);
            let share = shares.iter().find(|g| g.key.0 == spec.name && g.key.1 == d.since);
            let cpu_permille = share.map_or(0, |g| {
                let wall_ns = crate::time::tsc_to_micros(g.elapsed).saturating_mul(1000);
                permille(g.by[0], wall_ns)
            });
            VmRow {
                name: spec.name.clone(),
                state: d.state,
                vcpus: spec.cpus,
                memory_mib: spec.memory_mib,
                cpu_permille,
                uptime_ms: running.map(|_| crate::time::tsc_to_micros(now.saturating_sub(d.since)) / 1000),
            }
        })
        .collect()
}

/// `info NAME`.
pub fn info(name: &str) -> Result<VmInfo, String> {
    with_vm(name, |_, d| {
        let spec = &d.guest.spec;
        // A running VM's exits so far; a stopped one's last run's.
        let (exits, exits_by_reason) = match &d.shared {
            Some(shared) => {
                let counts = super::sched::exits_of(shared);
                let by_reason = vmexit::Exit::KIND_NAMES
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| *n > 0)
                    .map(|(name, n)| (name.to_string(), n))
                    .collect();
                (counts.iter().sum(), by_reason)
            }
            None => (d.exits, d.exits_by_reason.clone()),
        };
        let mut devices: Vec<String> =
            ["COM1 (16550A)", "PIT", "RTC", "ACPI PM", "8259 PICs", "IOAPIC", "local APIC per vCPU", "virtio-console"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        devices.extend((0..spec.disks.len()).map(|i| format!("virtio-blk {i}")));
        VmInfo {
            name: spec.name.clone(),
            state: d.state,
            stop_reason: d.stop.as_ref().map(|s| s.to_string()),
            vcpus: spec.cpus,
            memory_mib: spec.memory_mib,
            image: spec.image.clone(),
            format: format!("{:?}", spec.format).to_lowercase(),
            disks: spec.disks.iter().zip(&d.guest.disks).map(|(n, b)| (n.clone(), disk_bytes(b))).collect(),
            devices,
            weight: d.scheduling.weight,
            cap: d.scheduling.cap,
            cpus: d.scheduling.affinity,
            dedicated: d.scheduling.dedicated,
            on_crash: match spec.lifecycle.on_crash {
                OnCrash::Stop => lifecycle::OnCrash::Stop,
                OnCrash::Restart { limit } => lifecycle::OnCrash::Restart { limit },
            },
            autostart: spec.lifecycle.autostart,
            starts: d.starts,
            restarts: d.crash_restarts,
            exits,
            exits_by_reason,
        }
    })
}

/// A disk's size: a packed image says its unpacked size.
fn disk_bytes(entry: &[u8]) -> u64 {
    match loader::packed::unpacked_size(entry) {
        Some(Ok(size)) => size,
        _ => entry.len() as u64,
    }
}

/// `mem`: the host's frames, and each running VM's RAM and VMM overhead.
pub fn mem() -> MemInfo {
    let frame = crate::memory::FRAME_SIZE;
    let per_vm = DEFINED
        .lock()
        .iter()
        .filter_map(|d| {
            let shared = d.shared.as_ref()?;
            let memory = &shared.vm().memory;
            let bytes = (d.guest.spec.memory_mib as u64 * 1024 * 1024).saturating_add(memory.overhead_bytes());
            Some((d.guest.spec.name.clone(), bytes.div_ceil(frame)))
        })
        .collect();
    MemInfo {
        frame_bytes: frame,
        total_frames: crate::memory::boot_free_frame_count() as u64,
        free_frames: crate::memory::free_frame_count() as u64,
        per_vm,
    }
}
