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
mod shared;
mod switch;
pub mod vm;
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
        Some(Vendor::Amd) => amd::cpu::enable_on_this_cpu(),
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

/// Builds and runs one VM on this CPU to its end.
fn run_vm(guest: &GuestImages) -> VmReport {
    let spec = &guest.spec;
    let started = crate::time::micros_since_boot();
    let mut report = VmReport {
        name: spec.name.clone(),
        stop: Stop::Halted,
        cpu: crate::percpu::current_index(),
        exits: 0,
        summary: String::new(),
        loop_profile: None,
        timer_interrupts: 0,
        guest_mib: spec.memory_mib,
        overhead_kib: 0,
        elapsed_us: 0,
        unclaimed: Default::default(),
        output_dropped: (0, 0),
        input_dropped: 0,
        signals_dropped: 0,
    };
    // A reset restarts the VM from its images, as a machine reboots; a guest
    // that keeps resetting is stopped instead of looping forever.
    for restart in 0..=MAX_RESETS {
        match build_and_run(guest, &mut report) {
            Ok(stop) | Err(stop) => report.stop = stop,
        }
        if report.stop != Stop::Reset {
            break;
        }
        if restart < MAX_RESETS {
            log::info!("vm {}: reset; starting it again", spec.name);
        }
    }
    report.elapsed_us = crate::time::micros_since_boot() - started;
    report
}

fn build_and_run(guest: &GuestImages, report: &mut VmReport) -> Result<Stop, Stop> {
    let spec = &guest.spec;
    let vcpus = spec.cpus.max(1) as usize;
    let guest_cpus = crate::percpu::online().filter(|c| c.runs_guests.load(Ordering::Acquire)).count();
    if vcpus > guest_cpus {
        return Err(Stop::Unsupported(alloc::format!(
            "{vcpus} vCPUs asked, but only {guest_cpus} CPU(s) run VMs (each vCPU needs a CPU of its own)"
        )));
    }
    let mut vm = Vm::new(spec).map_err(Stop::Unsupported)?;
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

    let shared = Arc::new(SharedVm::new(vm, vcpus, spec.time_limit_ms));
    shared.place(0, true);
    if vcpus > 1 {
        // The application processors wait on other cores for their start-up IPI.
        let mut jobs = JOBS.lock();
        for index in (1..vcpus).rev() {
            jobs.push_front(Job::ApplicationProcessor { vm: shared.clone(), index });
        }
        drop(jobs);
        crate::smp::wake_all_aps();
    }
    match run::run(&mut *vcpu, &shared) {
        RunEnd::Stop(stop) => shared.stop(stop),
        // An application processor stopped the VM; its reason stands.
        RunEnd::VmStopped => {}
        // vCPU 0 neither takes INIT nor parks (exits/hlt.rs).
        RunEnd::Init | RunEnd::Parked => shared.stop(Stop::Unsupported("vCPU 0 left its run loop unexpectedly".into())),
    }
    if vcpus > 1 {
        log_vcpu(&spec.name, 0, vcpu.counters());
    }
    let mut counters = shared.wait_for_aps();
    counters.add(vcpu.counters());
    report.exits = counters.total();
    report.summary = counters.summary();
    report.loop_profile = counters.profile.summary();
    let vm = shared.vm();
    report.timer_interrupts = (0..vcpus).map(|index| vm.chipset.timer_interrupts(index)).sum();
    // Per vCPU: VMCS, MSR bitmap, XSAVE area and, with APIC virtualisation,
    // the virtual-APIC page; or VMCB and XSAVE area.
    let frames_per_vcpu = match vendor() {
        Some(Vendor::Amd) => 2,
        _ => 3 + vm.memory.apic_access_page().is_some() as u64,
    };
    report.overhead_kib =
        (vm.memory.overhead_bytes() + frames_per_vcpu * vcpus as u64 * crate::memory::FRAME_SIZE) / 1024;
    vm.chipset.flush_output();
    report.output_dropped = vm.output.dropped();
    report.input_dropped = vm.chipset.dropped_input();
    report.signals_dropped = vm.chipset.dropped_startup_signals();
    report.unclaimed = vm.chipset.unclaimed();
    Ok(shared.stop_reason().unwrap_or(Stop::Halted))
}

/// Runs application processor `index` of a VM on this core: it waits for a
/// start-up IPI, starts in real mode where the IPI says, goes back to waiting
/// on INIT, and ends when the VM stops. Halting with interrupts off parks it
/// (a guest parks CPUs that way before powering off), it does not stop the VM.
fn run_application_processor(shared: &SharedVm, index: usize) {
    if !shared.claim_ap(index) {
        return;
    }
    shared.place(index, true);
    let mut counters = ExitCounters::new();
    while let Some(vector) = wait_for_startup(shared, index) {
        let state = GuestState::after_startup_ipi(vector);
        let started = new_vcpu(index as u32, &state, &shared.vm().memory);
        let mut vcpu = match started {
            Ok(vcpu) => vcpu,
            Err(stop) => {
                shared.stop(stop);
                break;
            }
        };
        // INIT left its TSC (and TSC_ADJUST) as they were; the fresh VMCS or
        // VMCB (current on this core since its set-up) takes them over.
        vcpu.set_tsc_offset(shared.vm().chipset.vcpu_msrs(index).tsc_offset);
        let end = loop {
            match run::run(&mut *vcpu, shared) {
                RunEnd::Parked => match wait_while_parked(shared, index) {
                    Some(Unpark::Nmi) => continue,
                    Some(Unpark::Init) => break RunEnd::Init,
                    None => break RunEnd::VmStopped,
                },
                end => break end,
            }
        };
        counters.add(vcpu.counters());
        match end {
            RunEnd::Init | RunEnd::Parked => shared.vm().chipset.reset_lapic(index),
            RunEnd::Stop(stop) => {
                shared.stop(stop);
                break;
            }
            RunEnd::VmStopped => break,
        }
    }
    log_vcpu(&shared.vm().name, index, &counters);
    shared.finish_ap(index, &counters);
}

/// One vCPU's share of an SMP VM's exits (the VM's report has the sum).
fn log_vcpu(vm: &str, index: usize, counters: &ExitCounters) {
    log::info!("vm {vm} vcpu{index}: {} exits;{}", counters.total(), counters.summary());
}

enum Unpark {
    Nmi,
    Init,
}

/// A parked application processor waits for what can wake a CPU halted with
/// interrupts off: an NMI (it runs on and takes it) or an INIT; None when the
/// VM stops first.
fn wait_while_parked(shared: &SharedVm, index: usize) -> Option<Unpark> {
    wait_in_vmm(shared, index, |vm| {
        while let Some(signal) = vm.chipset.take_signal(index) {
            if signal == StartupSignal::Init {
                return Some(Unpark::Init);
            }
        }
        vm.chipset.nmi_pending(index).then_some(Unpark::Nmi)
    })
}

/// Waits until vCPU `index` gets a start-up IPI; None when the VM stops first.
/// An INIT resets its local APIC.
fn wait_for_startup(shared: &SharedVm, index: usize) -> Option<u8> {
    wait_in_vmm(shared, index, |vm| {
        while let Some(signal) = vm.chipset.take_signal(index) {
            match signal {
                StartupSignal::Init => vm.chipset.reset_lapic(index),
                StartupSignal::Startup { vector } => return Some(vector),
            }
        }
        None
    })
}

/// Waits in the VMM, halted between looks, until `look` finds what vCPU
/// `index` is waiting for; None when the VM stops first. Kicks end the HLT.
fn wait_in_vmm<T>(shared: &SharedVm, index: usize, mut look: impl FnMut(&Vm) -> Option<T>) -> Option<T> {
    use x86_64::instructions::interrupts;
    loop {
        interrupts::disable();
        shared.rearm_kick(index);
        if shared.is_stopping() {
            interrupts::enable();
            return None;
        }
        let vm = shared.vm();
        vm.chipset.take_wakeup(index);
        let found = look(vm);
        if found.is_some() {
            interrupts::enable();
            return found;
        }
        // A kick sent since `rearm_kick` is pending and ends the HLT at once.
        interrupts::enable_and_hlt();
        crate::log::pump();
    }
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

enum Job {
    /// A VM to build and run; its vCPU 0 runs on the core that takes the job.
    Vm { order: usize, guest: Box<GuestImages> },
    /// Another vCPU of a running VM, queued ahead of new VMs.
    ApplicationProcessor { vm: Arc<SharedVm>, index: usize },
}

static JOBS: Mutex<VecDeque<Job>> = Mutex::new(VecDeque::new());
static REPORTS: Mutex<Vec<(usize, VmReport)>> = Mutex::new(Vec::new());
static FINISHED: AtomicUsize = AtomicUsize::new(0);

/// Host tick while VMs run: the host keeps control of every core. While a
/// vCPU is on a core its back end's timer stands in for the tick (the
/// VMX-preemption timer, or SVM's one-shot APIC timer), set for the VM's next
/// deadline and never longer than one tick, so the guest's own timer ticks
/// cost no exits for the host's.
pub(crate) const HOST_TICK_HZ: u64 = 100;

/// Runs queued VMs on the calling CPU until the queue is empty. Every CPU with
/// VMX on calls this when woken, so VMs spread over the cores.
pub fn work() {
    if JOBS.lock().is_empty() {
        return;
    }
    crate::apic::timer_start_periodic(crate::time::apic_timer_hz(), HOST_TICK_HZ);
    loop {
        let Some(job) = JOBS.lock().pop_front() else {
            crate::apic::timer_stop();
            return;
        };
        match job {
            Job::Vm { order, guest } => {
                let report = run_vm(&guest);
                log_report(&report);
                REPORTS.lock().push((order, report));
                FINISHED.fetch_add(1, Ordering::AcqRel);
            }
            Job::ApplicationProcessor { vm, index } => run_application_processor(&vm, index),
        }
    }
}

/// Runs every VM, using all CPUs that have VMX on; returns the reports in the
/// order the VMs were given.
pub fn run_all(vms: Vec<GuestImages>) -> Vec<VmReport> {
    let total = vms.len();
    FINISHED.store(0, Ordering::Release);
    JOBS.lock().extend(vms.into_iter().enumerate().map(|(order, guest)| Job::Vm { order, guest: Box::new(guest) }));
    crate::smp::wake_all_aps();
    // This core keeps taking work too: a VM started elsewhere may queue its
    // application processors after the queue first ran dry.
    while FINISHED.load(Ordering::Acquire) < total {
        work();
        core::hint::spin_loop();
    }
    let mut reports = core::mem::take(&mut *REPORTS.lock());
    reports.sort_by_key(|(order, _)| *order);
    reports.into_iter().map(|(_, r)| r).collect()
}
