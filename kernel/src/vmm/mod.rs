//! Virtual machines: VMs and their memory (`vm`, `guest_memory`), the vendor
//! back ends (`intel` for VT-x, `amd` for SVM; each implements
//! `backend::Backend`), the run loop every
//! vCPU runs (`run`), which hands each exit to the vendor-neutral handlers of
//! the `vmexit` crate. This file builds VMs from their specs and runs them on
//! the CPUs.

pub mod amd;
mod backend;
pub mod counters;
mod disk;
mod guest_memory;
mod guest_msrs;
mod host;
pub mod intel;
pub mod run;
mod sched;
#[cfg(feature = "test-hooks")]
pub use sched::migrate_every_slice;
pub use sched::set_slice_us;
pub mod manage;
mod shared;
mod switch;
pub mod vm;
pub mod vm_console;
pub(crate) mod xstate;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use backend::Backend;
use core::sync::atomic::{AtomicUsize, Ordering};
use counters::ExitCounters;
use devices::StartupSignal;
use loader::image::EntryMode;
use loader::VmSpec;
use run::RunEnd;
use shared::SharedVm;
use spin::Mutex;
use vm::{Stop, Vm};
use vmx::guest_state::{GuestState, Mode, GUEST_GDT};

/// The top 64 KiB of every VM's low RAM (below the MMIO hole, so below 4 GiB
/// where a 32-bit CR3 reaches) hold what the VMM sets up for a guest that starts
/// in protected or long mode: a GDT and identity-mapping page tables. The
/// loader's constant, so that xtask's early check of a plan sees the same RAM.
const SETUP_AREA: u64 = loader::image::VMM_SETUP_AREA;

/// Resets a VM may do before it is stopped (its stop reason stays `Reset`).
const MAX_RESETS: u32 = 3;

/// Whose virtualisation extensions run guests on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// VT-x (`intel`).
    Intel,
    /// SVM (`amd`).
    Amd,
}

/// The back end for this CPU: VT-x where it is usable, else SVM with nested
/// paging; None when neither is (the reasons are in the capability lines).
pub fn vendor() -> Option<Vendor> {
    static VENDOR: spin::Once<Option<Vendor>> = spin::Once::new();
    *VENDOR.call_once(|| {
        if intel::cpu::vmx().is_ok() {
            Some(Vendor::Intel)
        } else if amd::cpu::capabilities().is_ok() {
            Some(Vendor::Amd)
        } else {
            None
        }
    })
}

/// Logs what each vendor's extensions offer on this CPU.
pub fn report_capabilities() {
    intel::cpu::report_capabilities();
    amd::cpu::report_capabilities();
}

/// Turns the back end on for the calling CPU; Err says why it cannot run guests.
pub fn enable_on_this_cpu() -> Result<(), String> {
    match vendor() {
        Some(Vendor::Intel) => intel::cpu::enable_on_this_cpu().map_err(String::from),
        Some(Vendor::Amd) => amd::cpu::enable_on_this_cpu().and_then(|()| amd::vcpu::make_permission_maps()),
        None => Err("this CPU has neither usable VT-x nor usable SVM with nested paging".into()),
    }
}

/// A vCPU of the VM whose RAM is `memory`, set up to start in `state`.
fn new_vcpu(index: u32, state: &GuestState, memory: &guest_memory::GuestMemory) -> Result<Box<dyn Backend>, Stop> {
    match vendor() {
        Some(Vendor::Intel) => {
            let mut vcpu = intel::Vcpu::new(index)?;
            vcpu.setup(memory.nested_root(), memory.apic_access_page(), state)?;
            Ok(Box::new(vcpu))
        }
        Some(Vendor::Amd) => {
            let mut vcpu = amd::Vcpu::new(index)?;
            vcpu.setup(memory.nested_root(), state)?;
            Ok(Box::new(vcpu))
        }
        None => Err(Stop::Unsupported("this CPU cannot run guests".into())),
    }
}

/// How a VM ended and what it cost, for the log and `cargo xtask bench`.
pub struct VmReport {
    pub name: String,
    pub stop: Stop,
    pub cpu: u32,
    pub exits: u64,
    pub summary: String,
    /// With `profile=loop`: the run loop's work per entry (`LoopProfile::summary`).
    pub loop_profile: Option<String>,
    /// Timer interrupts the VM's local APICs raised, all vCPUs.
    pub timer_interrupts: u64,
    pub guest_mib: u32,
    pub overhead_kib: u64,
    pub elapsed_us: u64,
    /// Accesses no device claimed, on the port bus and on the MMIO bus: counts
    /// and the first few addresses.
    pub unclaimed: (devices::Unclaimed, devices::Unclaimed),
    /// Console lines and bytes dropped because its output quota was full.
    pub output_dropped: (u64, u64),
    /// Host input bytes the guest did not take in time, and INIT/SIPIs that
    /// arrived while an earlier one was still pending (both dropped).
    pub input_dropped: u64,
    pub signals_dropped: u64,
}

/// A VM to run: its spec and the bundle entries it names.
pub struct GuestImages {
    pub spec: VmSpec,
    pub image: &'static [u8],
    /// Linux: the initrd. Multiboot: the modules, packed
    /// (`loader::multiboot::pack_modules`).
    pub initrd: Option<&'static [u8]>,
    pub cmdline: &'static str,
    /// Disk images, in the order of the spec's `disks`.
    pub disks: Vec<&'static [u8]>,
}

/// Builds a VM from its images: the VM, shared, and its vCPU 0 ready to run
/// (its control structure released, so any core may run it).
fn build(
    guest: &GuestImages,
    console: Option<&Arc<vm_console::VmConsole>>,
) -> Result<(Arc<SharedVm>, Box<dyn Backend>), Stop> {
    let spec = &guest.spec;
    let vcpus = spec.cpus.max(1) as usize;
    let mut vm = Vm::new(spec, console).map_err(Stop::Unsupported)?;
    // Disks may come packed (a blank one packs to almost nothing): each is
    // unpacked for the copy the VM keeps, then given back.
    let disks = guest.disks.iter().map(|&disk| Unpacked::of(disk)).collect::<Result<Vec<_>, _>>();
    let disks = disks.map_err(|e| Stop::Unsupported(alloc::format!("cannot load a disk of '{}': {e}", spec.name)))?;
    let disk_bytes: Vec<&[u8]> = disks.iter().map(Unpacked::bytes).collect();
    vm.add_virtio_devices(spec, &disk_bytes).map_err(Stop::Unsupported)?;
    drop(disk_bytes);
    drop(disks);
    // Loaders use low RAM only, up to the setup area; RAM above the hole is
    // reported to the guest but nothing is placed there.
    let ram = loader::GuestRam::new(vm.memory.map(), SETUP_AREA)
        .ok_or_else(|| Stop::Unsupported("guest RAM too small for the VMM's setup area".into()))?;
    let low_ram_end = ram.low_ram_end;
    // ACPI tables live in the BIOS area below 1 MiB, which no guest image uses
    // and every memory map reserves.
    let tables = vm.chipset.acpi_tables();
    vm.memory
        .write(devices::layout::ACPI_TABLES, &tables)
        .map_err(|_| Stop::Unsupported("guest RAM too small for the ACPI tables".into()))?;
    let rsdp = Some(devices::layout::ACPI_TABLES);
    let cmdline = linux_command_line(spec, guest.cmdline);
    let cannot_load =
        |e: loader::ImageError| Stop::Unsupported(alloc::format!("cannot load image '{}': {e}", spec.image));
    // A Multiboot kernel's "initrd" entry is its module list; it sees the
    // image's name as its command line's first word, as QEMU gives it the
    // kernel's file name.
    // An initrd or image may come packed (`Unpacked`).
    let unpack = |entry: &'static [u8], what: &str| {
        Unpacked::of(entry).map_err(|e| Stop::Unsupported(alloc::format!("cannot load {what} '{}': {e}", spec.image)))
    };
    let (initrd, modules) = match (spec.format, guest.initrd) {
        (loader::Format::Multiboot, Some(packed)) => {
            (None, loader::multiboot::unpack_modules(packed).map_err(cannot_load)?)
        }
        (_, initrd) => (initrd.map(|initrd| unpack(initrd, "the initrd of image")).transpose()?, Vec::new()),
    };
    let initrd_bytes = initrd.as_ref().map(Unpacked::bytes);
    let extras = loader::Extras { initrd: initrd_bytes, cmdline: &cmdline, rsdp, name: &spec.image, modules: &modules };
    let image = unpack(guest.image, "image")?;
    let plan = loader::load(image.bytes(), spec, ram, extras).map_err(cannot_load)?;
    // Which entry a kernel was given (a vmlinux has two) shows in its mode.
    let mode_name = match plan.mode {
        EntryMode::Real => "real",
        EntryMode::Protected => "protected",
        EntryMode::Long => "long",
    };
    log::info!("vm {}: {} entered at {:#x} in {mode_name} mode", spec.name, spec.image, plan.entry);
    for segment in &plan.segments {
        let bytes = segment.data.bytes();
        vm.memory.write(segment.guest_phys, bytes).map_err(|_| Stop::Unsupported("image outside RAM".into()))?;
        vm.memory
            .fill_zero(segment.guest_phys + bytes.len() as u64, segment.zero_fill)
            .map_err(|_| Stop::Unsupported("image outside RAM".into()))?;
    }
    // The image is in guest RAM now: what the VM starts with is kept, and
    // unpacked copies go back to the host.
    let plan = loader::LoadPlan {
        segments: Vec::new(),
        entry: plan.entry,
        mode: plan.mode,
        rax: plan.rax,
        rbx: plan.rbx,
        rsi: plan.rsi,
    };
    drop(image);
    drop(initrd);
    // Protected mode is what a PVH entry (a Linux vmlinux) requires: CR0.PE
    // the only writable CR0 bit, CR4 clear, flat 4 GiB 32-bit code and data
    // segments, a busy 32-bit TSS of limit 0x67, IF/TF/VM clear, and EBX the
    // start info (the plan's RBX, set below); Multiboot kernels and ELF32
    // images start in the same state. The GDT behind it is in the setup area
    // and the guest loads its own before using a selector.
    let mode = match plan.mode {
        EntryMode::Real => Mode::Real,
        EntryMode::Protected => Mode::Protected,
        EntryMode::Long => Mode::Long,
    };
    let (gdt, page_tables) = write_setup_area(&vm, low_ram_end);
    let stack = if mode == Mode::Real { plan.entry.min(0xfffe) & !1 } else { low_ram_end };
    #[allow(unused_mut)]
    let mut state = GuestState::initial(mode, plan.entry, stack, gdt, page_tables);
    #[cfg(feature = "test-hooks")]
    if spec.corrupt_state {
        log::warn!("vm {}: corrupting TR's access rights as the VM list asks", spec.name);
        state.tr.access_rights = 0x89;
    }
    let mut vcpu = new_vcpu(0, &state, &vm.memory)?;
    const RAX: u8 = 0;
    const RBX: u8 = 3;
    const RSI: u8 = 6;
    vcpu.set_gpr(RAX, plan.rax);
    vcpu.set_gpr(RBX, plan.rbx);
    vcpu.set_gpr(RSI, plan.rsi);
    vcpu.release();
    Ok((Arc::new(SharedVm::new(vm, vcpus, spec.time_limit_ms)), vcpu))
}

/// A VM to start: its images, where its report goes, and how often it was
/// reset (a reset starts it again from its images, as a machine reboots; a
/// guest that keeps resetting is stopped instead of looping forever).
struct VmJob {
    /// Its place in the VM list (`manage::DEFINED`).
    index: usize,
    guest: Arc<GuestImages>,
    resets: u32,
    report: VmReport,
}

/// A VM whose vCPUs are in the scheduler, until the last of them leaves.
struct Running {
    shared: Arc<SharedVm>,
    vcpus: Vec<Arc<sched::VcpuEntry>>,
    /// vCPUs not yet retired.
    live: usize,
    job: VmJob,
}

static JOBS: Mutex<VecDeque<VmJob>> = Mutex::new(VecDeque::new());
static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());
/// Runs of VMs that ended (a restart is a new run).
static FINISHED: AtomicUsize = AtomicUsize::new(0);

fn new_report(spec: &VmSpec) -> VmReport {
    VmReport {
        name: spec.name.clone(),
        stop: Stop::Halted,
        cpu: crate::percpu::current_index(),
        exits: 0,
        summary: String::new(),
        loop_profile: None,
        timer_interrupts: 0,
        guest_mib: spec.memory_mib,
        overhead_kib: 0,
        elapsed_us: crate::time::micros_since_boot(),
        unclaimed: Default::default(),
        output_dropped: (0, 0),
        input_dropped: 0,
        signals_dropped: 0,
    }
}

/// Builds a VM on this core and hands its vCPUs to the scheduler: vCPU 0
/// runnable, the others waiting for their start-up IPI. A VM that cannot be
/// built, or whose vCPUs the scheduler refuses (a dedicated core taken),
/// ends at once with the reason.
fn start_vm(mut job: VmJob) {
    if job.resets == 0 {
        // Where and when it started: the report's "ran on cpuN for T us".
        job.report.cpu = crate::percpu::current_index();
        job.report.elapsed_us = crate::time::micros_since_boot();
    }
    let console = manage::console(job.index);
    let (shared, vcpu0) = match build(&job.guest, console.as_ref()) {
        Ok(built) => built,
        Err(stop) => return finish_unstarted(job, stop),
    };
    let params = match scheduling_params(&manage::scheduling(job.index, &job.guest.spec)) {
        Ok(params) => params,
        Err(why) => return finish_unstarted(job, Stop::Unsupported(why)),
    };
    let count = job.guest.spec.cpus.max(1) as usize;
    let mut vcpus = Vec::with_capacity(count);
    let mut first = Some(vcpu0);
    for index in 0..count {
        match sched::add(&shared, index, first.take(), params.clone()) {
            Ok(entry) => {
                shared.set_sched_id(index, entry.id);
                vcpus.push(entry);
            }
            Err(refused) => {
                for entry in &vcpus {
                    sched::remove(entry.id);
                }
                let why = alloc::format!("vCPU {index} cannot be scheduled: {}", refusal(&refused));
                return finish_unstarted(job, Stop::Unsupported(why));
            }
        }
    }
    let first = vcpus[0].id;
    manage::started(job.index, &shared);
    RUNNING.lock().push(Running { shared, live: vcpus.len(), vcpus, job });
    sched::wake(first);
}

/// The policy's parameters for each of a VM's vCPUs, from its VM list
/// entry (already checked there); its affinity narrowed to the host CPUs
/// that run guests, which must leave one.
fn scheduling_params(s: &loader::manifest::Scheduling) -> Result<basalt_sched::Params, String> {
    let s = *s;
    let guest_cores = sched::guest_cores();
    let cpus = match s.affinity {
        None => guest_cores,
        Some(set) => basalt_sched::CpuSet::from_cores(
            guest_cores.iter().filter(|core| set >> core.0 & 1 != 0).collect::<Vec<_>>(),
        ),
    };
    if cpus.is_empty() {
        return Err(alloc::format!(
            "affinity {} names no host CPU that runs guests",
            loader::manifest::render_affinity(s.affinity.unwrap_or(0))
        ));
    }
    Ok(basalt_sched::Params { weight: s.weight, cap: s.cap, cpus, dedicated: s.dedicated })
}

/// Why the policy would not take a vCPU, for the VM's stop reason.
fn refusal(refused: &basalt_sched::Refused) -> String {
    use basalt_sched::Refused;
    match refused {
        Refused::CoreTaken { core, dedicated_to: Some(_), .. } => {
            alloc::format!("dedicated, but every CPU it may run on is taken (cpu{} is another vCPU's)", core.0)
        }
        Refused::CoreTaken { core, runnable, .. } => {
            alloc::format!("dedicated, but every CPU it may run on is in use (cpu{} has {runnable} vCPU(s))", core.0)
        }
        Refused::NoUsableCore => "every CPU it may run on is dedicated to another VM's vCPU".into(),
        Refused::WouldStrand { core, vcpu } => {
            alloc::format!("dedicating cpu{} would leave vCPU #{} with no CPU to run on", core.0, vcpu.0)
        }
        other => alloc::format!("{other:?}"),
    }
}

/// A VM that never ran ends with `stop`.
fn finish_unstarted(mut job: VmJob, stop: Stop) {
    job.report.stop = stop;
    report_finished(job);
}

/// The run of one vCPU the scheduler picked, on this core, until its slice
/// ends or it stops being runnable; then what it waits for goes to the
/// scheduler. A vCPU that was not runnable first looks for what it waited
/// for, and blocks again if that is not there (a wake-up may be for
/// something else). `slice`: its length (TSC ticks; None: no end), from
/// the run's start.
fn run_picked(entry: &Arc<sched::VcpuEntry>, slice: Option<u64>, core: u32) {
    let shared = &entry.vm;
    let index = entry.index;
    if shared.is_stopping() {
        return retire(entry);
    }
    if shared.is_paused() {
        return sched::pause(entry);
    }
    let mut backend = entry.backend.lock();
    let waiting = *entry.waiting.lock();
    let vm = shared.vm();
    match waiting {
        sched::Waiting::Startup => {
            let mut vector = None;
            while let Some(signal) = vm.chipset.take_signal(index) {
                match signal {
                    StartupSignal::Init => vm.chipset.reset_lapic(index),
                    StartupSignal::Startup { vector: v } => vector = Some(v),
                }
            }
            let Some(vector) = vector else {
                drop(backend);
                return block(entry, sched::Waiting::Startup, None);
            };
            let state = GuestState::after_startup_ipi(vector);
            match new_vcpu(index as u32, &state, &vm.memory) {
                Ok(mut vcpu) => {
                    // INIT left its TSC (and TSC_ADJUST) as they were; the
                    // fresh VMCS or VMCB (current here since its set-up)
                    // takes them over.
                    vcpu.set_tsc_offset(vm.chipset.vcpu_msrs(index).tsc_offset);
                    *backend = Some(vcpu);
                }
                Err(stop) => {
                    shared.stop(stop);
                    drop(backend);
                    return retire(entry);
                }
            }
        }
        sched::Waiting::Parked => {
            // Only an NMI or an INIT wakes a CPU halted with interrupts off.
            while let Some(signal) = vm.chipset.take_signal(index) {
                if signal == StartupSignal::Init {
                    drop(backend);
                    return init(entry);
                }
            }
            if !vm.chipset.nmi_pending(index) {
                drop(backend);
                return block(entry, sched::Waiting::Parked, None);
            }
        }
        sched::Waiting::Interrupt | sched::Waiting::Nothing => {}
    }
    *entry.waiting.lock() = sched::Waiting::Nothing;
    let Some(vcpu) = backend.as_mut() else {
        drop(backend);
        return block(entry, sched::Waiting::Startup, None);
    };
    shared.start_clock();
    sched::count_run(core);
    shared.place(index, true);
    let ran_from = crate::time::rdtsc();
    entry.timer_wakes.lock().ran(ran_from);
    let until = slice.map(|length| ran_from.saturating_add(length));
    let end = run::run(&mut **vcpu, shared, run::Slice { core, until });
    shared.place(index, false);
    *entry.exits.lock() = vcpu.counters().exits;
    if let Some(ticks) = entry.ran_on.lock().get_mut(core as usize) {
        *ticks += crate::time::rdtsc().saturating_sub(ran_from);
    }
    drop(backend);
    match end {
        RunEnd::Preempted => sched::after_slice(entry, core),
        RunEnd::Paused => sched::pause(entry),
        RunEnd::Yielded => sched::yield_core(core),
        RunEnd::Blocked { timer } => block(entry, sched::Waiting::Interrupt, Some(timer)),
        // vCPU 0 neither takes INIT nor parks (exits/hlt.rs).
        RunEnd::Parked if index == 0 => {
            shared.stop(Stop::Unsupported("vCPU 0 parked".into()));
            retire(entry);
        }
        RunEnd::Parked => block(entry, sched::Waiting::Parked, None),
        RunEnd::Init => init(entry),
        RunEnd::Stop(stop) => {
            shared.stop(stop);
            retire(entry);
        }
        RunEnd::VmStopped => retire(entry),
    }
}

/// An INIT sends an application processor back to waiting for a start-up
/// IPI: its back end goes (its exits kept for the report), its local APIC
/// resets.
fn init(entry: &Arc<sched::VcpuEntry>) {
    if let Some(mut vcpu) = entry.backend.lock().take() {
        entry.counters.lock().add(vcpu.counters());
    }
    entry.vm.vm().chipset.reset_lapic(entry.index);
    block(entry, sched::Waiting::Startup, None);
}

/// The vCPU stops being runnable until what it waits for comes. Looked for
/// once more after the scheduler has it as blocked: a wake-up sent while it
/// was still leaving its core found it placed and only kicked the core.
fn block(entry: &Arc<sched::VcpuEntry>, waiting: sched::Waiting, timer: Option<u64>) {
    *entry.waiting.lock() = waiting;
    sched::block(entry.id, waiting, timer);
    let chipset = &entry.vm.vm().chipset;
    let i = entry.index;
    let arrived = match waiting {
        sched::Waiting::Startup => chipset.signal_pending(i),
        sched::Waiting::Parked => chipset.signal_pending(i) || chipset.nmi_pending(i),
        _ => chipset.has_interrupt(i) || chipset.nmi_pending(i) || chipset.signal_pending(i),
    };
    if arrived || entry.vm.is_stopping() {
        sched::wake(entry.id);
    }
}

/// The vCPU's VM stopped: it leaves the scheduler, and the last of the VM's
/// vCPUs to leave ends the VM.
fn retire(entry: &Arc<sched::VcpuEntry>) {
    *entry.accounting.lock() = sched::remove(entry.id);
    let finished = {
        let mut running = RUNNING.lock();
        let Some(at) = running.iter().position(|r| r.shared.id == entry.vm.id) else { return };
        running[at].live -= 1;
        (running[at].live == 0).then(|| running.swap_remove(at))
    };
    if let Some(running) = finished {
        finish(running);
    }
}

/// A VM's last vCPU left: its report, or a restart after a reset.
fn finish(running: Running) {
    let Running { shared, vcpus, mut job, .. } = running;
    let mut counters = ExitCounters::new();
    for entry in &vcpus {
        let mut own = ExitCounters::new();
        own.add(&entry.counters.lock());
        if let Some(vcpu) = entry.backend.lock().as_mut() {
            own.add(vcpu.counters());
        }
        if vcpus.len() > 1 {
            log_vcpu(&job.report.name, entry.index, &own);
        }
        if let Some(figures) = *entry.accounting.lock() {
            log_scheduling(&job.report.name, entry, &figures);
        }
        counters.add(&own);
    }
    let report = &mut job.report;
    report.exits = counters.total();
    report.summary = counters.summary();
    report.loop_profile = counters.profile.summary();
    let vm = shared.vm();
    report.timer_interrupts = (0..vcpus.len()).map(|index| vm.chipset.timer_interrupts(index)).sum();
    // Per vCPU: VMCS, MSR bitmap, XSAVE area and, with APIC virtualisation,
    // the virtual-APIC page; or VMCB and XSAVE area.
    let frames_per_vcpu = match vendor() {
        Some(Vendor::Amd) => 2,
        _ => 3 + vm.memory.apic_access_page().is_some() as u64,
    };
    report.overhead_kib =
        (vm.memory.overhead_bytes() + frames_per_vcpu * vcpus.len() as u64 * crate::memory::FRAME_SIZE) / 1024;
    vm.chipset.flush_output();
    report.output_dropped = vm.output.dropped();
    report.input_dropped = vm.chipset.dropped_input();
    report.signals_dropped = vm.chipset.dropped_startup_signals();
    report.unclaimed = vm.chipset.unclaimed();
    report.stop = shared.stop_reason().unwrap_or(Stop::Halted);
    // The VM's memory and vCPUs go back to the host before anything starts again.
    drop(vcpus);
    drop(shared);
    if report.stop == Stop::Reset && job.resets < MAX_RESETS {
        log::info!("vm {}: reset; starting it again", report.name);
        job.resets += 1;
        JOBS.lock().push_front(job);
        return;
    }
    if report.stop == Stop::ResetByOperator {
        log::info!("vm {}: reset from the console; starting it again", report.name);
        manage::starting_again(job.index);
        requeue(job);
        return;
    }
    report_finished(job);
}

/// A VM starts again from its images, with a fresh report.
fn requeue(job: VmJob) {
    let report = new_report(&job.guest.spec);
    JOBS.lock().push_front(VmJob { report, ..job });
}

/// A VM's run ended for good: its report, then what its crash policy says.
fn report_finished(mut job: VmJob) {
    let report = &mut job.report;
    report.elapsed_us = crate::time::micros_since_boot() - report.elapsed_us;
    log_report(report);
    let restart = manage::ended(job.index, report);
    FINISHED.fetch_add(1, Ordering::AcqRel);
    if restart {
        requeue(VmJob { resets: 0, ..job });
        crate::smp::wake_all_aps();
    } else {
        crate::shell::vm_stopped(&job.report.name);
    }
}

/// Queues the VM at `index` of the list to start (`manage` calls this).
fn queue_start(index: usize, guest: Arc<GuestImages>) {
    let report = new_report(&guest.spec);
    JOBS.lock().push_back(VmJob { index, guest, resets: 0, report });
    crate::smp::wake_all_aps();
}

/// Takes a VM's start off the queue if it has not begun; whether it was there.
fn unqueue(index: usize) -> bool {
    let mut jobs = JOBS.lock();
    let before = jobs.len();
    jobs.retain(|job| job.index != index);
    jobs.len() != before
}

/// What the scheduler saw of one vCPU (times in microseconds).
fn log_scheduling(vm: &str, entry: &sched::VcpuEntry, a: &basalt_sched::Accounting) {
    let index = entry.index;
    let us = |ns: u64| ns / 1000;
    let mean_wake = a.wake_latency_total_ns.checked_div(a.wakeups).unwrap_or(0);
    // Where it ran: every core it spent time on.
    let mut cores = String::new();
    for (core, &ticks) in entry.ran_on.lock().iter().enumerate().filter(|(_, &t)| t > 0) {
        let sep = if cores.is_empty() { "" } else { "," };
        cores.push_str(&alloc::format!("{sep} cpu{core} {} us", crate::time::tsc_to_micros(ticks)));
    }
    log::info!(
        "vm {vm} vcpu{index} scheduling: run {} us, waiting {} us, blocked {} us, throttled {} us, {} slices, {} migrations, {} wake-ups (latency mean {} us, max {} us); on{cores}",
        us(a.run_ns),
        us(a.wait_ns),
        us(a.blocked_ns),
        us(a.throttled_ns),
        a.slices,
        a.migrations,
        a.wakeups,
        us(mean_wake),
        us(a.wake_latency_max_ns)
    );
    let timers = *entry.timer_wakes.lock();
    if timers.count > 0 {
        let us = crate::time::tsc_to_micros;
        log::info!(
            "vm {vm} vcpu{index} timer wake-ups: {}, from the due time to the guest late by mean {} us, max {} us; noticed by max {} us, in the guest max {} us after",
            timers.count,
            us(timers.late_total / timers.count),
            us(timers.late_max),
            us(timers.noticed_max),
            us(timers.after_noticed_max)
        );
    }
}

/// One vCPU's share of an SMP VM's exits (the VM's report has the sum).
fn log_vcpu(vm: &str, index: usize, counters: &ExitCounters) {
    log::info!("vm {vm} vcpu{index}: {} exits;{}", counters.total(), counters.summary());
}

/// A bundle entry as the VM is built from it: the entry itself, or what a
/// packed entry holds (`loader::packed`: an uncompressed Linux kernel, too
/// large for the bundle as it is; initrds and disks, which pack well),
/// unpacked into a run of host frames that is freed when this is dropped.
/// Frames, not heap: such an image is larger than the kernel heap.
enum Unpacked {
    Entry(&'static [u8]),
    Frames { start: u64, frames: usize, len: usize },
}

impl Unpacked {
    fn of(entry: &'static [u8]) -> Result<Unpacked, String> {
        let Some(size) = loader::packed::unpacked_size(entry) else { return Ok(Unpacked::Entry(entry)) };
        // At most loader::packed::MAX_UNPACKED, so this fits a usize.
        let len = size.map_err(|e| alloc::format!("{e}"))? as usize;
        let frames = len.div_ceil(crate::memory::FRAME_SIZE as usize).max(1);
        let start = crate::memory::alloc_run(frames, 1)
            .ok_or_else(|| alloc::format!("not enough contiguous host memory to unpack it ({} KiB)", frames * 4))?;
        // Owns the run from here: an error below frees it.
        let unpacked = Unpacked::Frames { start, frames, len };
        // SAFETY: the run was just taken from the allocator for this value
        // alone, the physical mapping covers it, and nothing else refers to it
        // while it is written.
        let out = unsafe { core::slice::from_raw_parts_mut(crate::memory::phys_to_virt(start) as *mut u8, len) };
        loader::packed::unpack_into(entry, out).map_err(|e| alloc::format!("{e}"))?;
        Ok(unpacked)
    }

    fn bytes(&self) -> &[u8] {
        match *self {
            Unpacked::Entry(bytes) => bytes,
            // SAFETY: the run belongs to this value until it is dropped, the
            // physical mapping covers it, and it is only read from now on.
            Unpacked::Frames { start, len, .. } => unsafe {
                core::slice::from_raw_parts(crate::memory::phys_to_virt(start) as *const u8, len)
            },
        }
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        if let Unpacked::Frames { start, frames, .. } = *self {
            for i in 0..frames as u64 {
                crate::memory::free_frame(start + i * crate::memory::FRAME_SIZE);
            }
        }
    }
}

/// A Linux guest's command line. Linux believes the TSC frequency that
/// CPUID leaf 0x15 reports only on Intel CPUs; on AMD it calibrates the TSC
/// against the emulated PIT and PM timer, reading them through exits, which
/// fails when exits are slow (QEMU's TCG) and leaves it without its best
/// clock. There it is told the frequency (`tsc_early_khz`), unless its
/// command line already says.
fn linux_command_line(spec: &VmSpec, given: &str) -> String {
    let amd = vendor() == Some(Vendor::Amd);
    if spec.format != loader::manifest::Format::Linux || !amd || given.contains("tsc_early_khz=") {
        return given.into();
    }
    let khz = crate::time::tsc_hz() / 1000;
    if given.is_empty() {
        alloc::format!("tsc_early_khz={khz}")
    } else {
        alloc::format!("{given} tsc_early_khz={khz}")
    }
}

/// Writes the GDT and 4 GiB of 2 MiB identity mappings into the setup area;
/// returns their guest-physical addresses.
fn write_setup_area(vm: &Vm, base: u64) -> (u64, u64) {
    let gdt = base;
    let pml4 = base + 0x1000;
    let pdpt = base + 0x2000;
    let pds = base + 0x3000;
    let write = |at: u64, value: u64| {
        let _ = vm.memory.write(at, &value.to_le_bytes());
    };
    for (i, entry) in GUEST_GDT.iter().enumerate() {
        write(gdt + i as u64 * 8, *entry);
    }
    const PRESENT_WRITABLE: u64 = 0x3;
    const LARGE: u64 = 0x80;
    write(pml4, pdpt | PRESENT_WRITABLE);
    for gib in 0..4u64 {
        write(pdpt + gib * 8, (pds + gib * 0x1000) | PRESENT_WRITABLE);
        for entry in 0..512u64 {
            let address = (gib << 30) | (entry << 21);
            write(pds + gib * 0x1000 + entry * 8, address | PRESENT_WRITABLE | LARGE);
        }
    }
    (gdt, pml4)
}

pub fn log_report(r: &VmReport) {
    log::info!("vm {} stopped: {}", r.name, r.stop);
    log::info!(
        "vm {} ran on cpu{} for {} us: {} exits;{}; {} timer interrupts; {} MiB RAM + {} KiB VMM overhead",
        r.name,
        r.cpu,
        r.elapsed_us,
        r.exits,
        r.summary,
        r.timer_interrupts,
        r.guest_mib,
        r.overhead_kib
    );
    if let Some(profile) = &r.loop_profile {
        log::info!("vm {} loop: {profile}", r.name);
    }
    let (ports, mmio) = &r.unclaimed;
    let (pr, pw, mr, mw) = (ports.reads, ports.writes, mmio.reads, mmio.writes);
    if pr + pw + mr + mw > 0 {
        log::info!(
            "vm {} unclaimed accesses: ports {pr} read(s) {pw} write(s), MMIO {mr} read(s) {mw} write(s)",
            r.name
        );
    }
    // Where they went: what a guest looked for and did not find.
    let addresses = devices::UnclaimedAddresses { ports, mmio };
    if !addresses.is_empty() {
        log::info!("vm {} unclaimed addresses: {addresses}", r.name);
    }
    let (lines, bytes) = r.output_dropped;
    if lines + bytes > 0 {
        log::info!(
            "vm {} console output dropped: {lines} line(s), {bytes} byte(s) (more than the host's serial port could take)",
            r.name
        );
    }
    if r.input_dropped > 0 {
        log::info!("vm {} console input dropped: {} byte(s) (typed faster than it read)", r.name, r.input_dropped);
    }
    if r.signals_dropped > 0 {
        log::info!("vm {} INIT/SIPI dropped: {} (sent while an earlier one was pending)", r.name, r.signals_dropped);
    }
}

/// Host tick while VMs run: the host keeps control of every core. While a
/// vCPU is on a core its back end's timer stands in for the tick (the
/// VMX-preemption timer, or SVM's one-shot APIC timer), set for the VM's next
/// deadline and never longer than one tick, so the guest's own timer ticks
/// cost no exits for the host's.
pub const HOST_TICK_HZ: u64 = 100;

/// Runs VMs on the calling core until none is left to start or run: starts
/// queued VMs, and runs what the scheduler picks for this core, halting
/// when it picks nothing. Every CPU with VT-x or SVM on calls this when
/// woken (a kick from the scheduler wakes an idle one).
pub fn work() {
    let core = crate::percpu::current_index();
    crate::apic::timer_start_periodic(crate::time::apic_timer_hz(), HOST_TICK_HZ);
    loop {
        crate::shell::run_pending();
        // The scheduler's lock only when there is a VM to start.
        let queued = !JOBS.lock().is_empty();
        let job = if queued && !sched::leaves_vm_starts(core) { JOBS.lock().pop_front() } else { None };
        if let Some(job) = job {
            start_vm(job);
            continue;
        }
        if RUNNING.lock().is_empty() {
            crate::apic::timer_stop();
            return;
        }
        match sched::decide(core) {
            (Some(entry), slice) => run_picked(&entry, slice, core),
            (None, _) => idle(core),
        }
    }
}

/// Nothing to run on this core: it halts with interrupts on until a kick,
/// the host tick, or the next timer event of a blocked vCPU.
fn idle(core: u32) {
    use x86_64::instructions::interrupts;
    interrupts::disable();
    if sched::reschedule_requested(core) || !JOBS.lock().is_empty() {
        interrupts::enable();
        return;
    }
    let now = crate::time::rdtsc();
    let tick = crate::time::tsc_hz().max(1) / HOST_TICK_HZ;
    let timer = sched::earliest_timer();
    let soon = timer.saturating_sub(now) < tick;
    if soon {
        crate::apic::timer_one_shot_tsc(timer.saturating_sub(now));
    }
    let halted_at = crate::time::rdtsc();
    interrupts::enable_and_hlt();
    sched::add_halted(core, crate::time::rdtsc() - halted_at);
    crate::log::pump();
    crate::shell::poll(crate::time::rdtsc());
    if soon {
        crate::apic::timer_start_periodic(crate::time::apic_timer_hz(), HOST_TICK_HZ);
    }
}

/// How each core spent the VMs' run (from the first vCPU run on): halted (idle, or in a guest's HLT: an
/// idle host should cost next to nothing), in guests, and how many vCPU runs
/// (switches) it made, with the cycles per run neither in a guest nor halted
/// (the VMM's work: switches, decisions, exits).
fn log_halted(run: u64) {
    let percent = |ticks: u64| {
        let permille = (ticks as u128 * 1000 / run.max(1) as u128).min(1000) as u64;
        alloc::format!("{}.{}%", permille / 10, permille % 10)
    };
    let mut halted = String::new();
    let mut busy = String::new();
    for core in sched::guest_cores().iter() {
        let (idle, guest, runs) = sched::core_figures(core.0);
        let vmm = run.saturating_sub(idle).saturating_sub(guest);
        if !halted.is_empty() {
            halted.push_str(", ");
            busy.push_str(", ");
        }
        halted.push_str(&alloc::format!("cpu{} {}", core.0, percent(idle)));
        busy.push_str(&alloc::format!(
            "cpu{} {} in guests, {runs} vCPU runs, {} VMM cycles per run",
            core.0,
            percent(guest),
            vmm / runs.max(1)
        ));
    }
    let ms = crate::time::tsc_to_micros(run) / 1000;
    log::info!("vmm: cores halted while VMs ran: {halted} of {ms} ms");
    log::info!("vmm: cores while VMs ran: {busy}");
}

/// Runs the VMs, using every CPU that runs guests: those marked autostart
/// at once. Without the management shell it returns once none is left to
/// run; with it (`managed`), once the operator quits and every VM stopped,
/// serving the shell meanwhile. Returns how many VM runs ended.
pub fn run_all(vms: Vec<GuestImages>, managed: bool) -> usize {
    FINISHED.store(0, Ordering::Release);
    manage::define(vms, managed);
    if managed {
        crate::shell::start();
    }
    sched::reset_figures();
    crate::smp::wake_all_aps();
    loop {
        // This core keeps taking work too.
        work();
        // Not "no jobs and nothing running": a VM between its end and its
        // restart is neither for a moment.
        let idle = !manage::any_active();
        if idle && (!managed || crate::shell::quitting()) {
            break;
        }
        if managed {
            // Nothing to run here: the shell still needs this core.
            crate::shell::serve_while_idle();
        }
        core::hint::spin_loop();
    }
    await_memory_given_back();
    // The run's figures cover the VMs' time; a managed host idles in its
    // shell between them (the shell's `cores` gives the figures live).
    if !managed && sched::first_run() != 0 {
        log_halted(crate::time::rdtsc().saturating_sub(sched::first_run()));
    }
    FINISHED.load(Ordering::Acquire)
}

/// A VM's memory goes back when the last core lets go of it, which can be a
/// moment after the VM's end was reported on another core: waits for that
/// (at most a second), so that the host's free memory afterwards is true.
fn await_memory_given_back() {
    let deadline = crate::time::deadline_after_us(1_000_000);
    while guest_memory::live() != 0 {
        if crate::time::rdtsc() >= deadline {
            log::warn!("vmm: {} VM memories still held a second after their VMs ended", guest_memory::live());
            return;
        }
        core::hint::spin_loop();
    }
}

/// For the shell's `cores`: per core that runs guests, its runnable vCPUs,
/// the one running ("vm/vcpuN"), and its TSC ticks halted and in guests
/// since the first vCPU run.
pub fn core_view() -> Vec<(u32, u32, Option<String>, u64, u64)> {
    sched::core_view()
        .into_iter()
        .map(|(core, runnable, running)| {
            let (halted, in_guest, _) = sched::core_figures(core);
            (core, runnable, running, halted, in_guest)
        })
        .collect()
}

/// When the first vCPU ran (host TSC; 0: none yet).
pub fn first_run() -> u64 {
    sched::first_run()
}

/// Counters per vCPU for `top`: run and wait time (ns), then exits by kind.
const TOP_COUNTERS: usize = 2 + vmexit::Exit::KINDS;

/// For the shell's `top`: each vCPU since the last `top` (or its start).
pub fn top() -> String {
    use basalt_manage::format::VcpuRow;
    use basalt_manage::sample::{permille, Sampler};
    static LAST: Mutex<Sampler<(String, usize), TOP_COUNTERS>> = Mutex::new(Sampler::new());
    let now = crate::time::rdtsc();
    let views = sched::vcpu_view();
    let mut last = LAST.lock();
    let since = last.last_look().unwrap_or(sched::first_run().max(1));
    let counters = |v: &sched::VcpuView| {
        let mut c = [0; TOP_COUNTERS];
        c[0] = v.accounting.run_ns;
        c[1] = v.accounting.wait_ns;
        c[2..].copy_from_slice(&v.exits);
        c
    };
    let growth = last.look(now, views.iter().map(|v| ((v.vm.clone(), v.index), since, counters(v))));
    let elapsed_ns = crate::time::tsc_to_micros(now.saturating_sub(since)).saturating_mul(1000).max(1);
    let rows = views
        .into_iter()
        .zip(growth)
        .map(|(v, g)| {
            let mut reasons: Vec<(String, u64)> = vmexit::Exit::KIND_NAMES
                .iter()
                .zip(&g.by[2..])
                .map(|(name, &n)| (String::from(*name), n))
                .filter(|(_, n)| *n > 0)
                .collect();
            reasons.sort_by_key(|r| core::cmp::Reverse(r.1));
            let total: u64 = reasons.iter().map(|(_, n)| n).sum();
            VcpuRow {
                vm: v.vm,
                index: v.index as u32,
                state: v.state,
                core: v.core,
                cpu_permille: permille(g.by[0], elapsed_ns).min(1000),
                steal_permille: permille(g.by[1], elapsed_ns).min(1000),
                exits_per_s: (total as u128 * 1_000_000_000 / elapsed_ns as u128) as u64,
                top_reasons: reasons,
            }
        })
        .collect::<Vec<_>>();
    basalt_manage::format::top(&rows, elapsed_ns / 1_000_000)
}
