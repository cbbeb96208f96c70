//! Taking a CPU into VMX root operation, and the VM-execution controls every
//! vCPU uses, computed once from the boot CPU's capabilities.

use crate::cmdline::ApicVirtualization;
use crate::memory;
use vmx::caps::{PIN_VMX_PREEMPTION_TIMER, PROC_ACTIVATE_SECONDARY, PROC_USE_MSR_BITMAPS, PROC_USE_TPR_SHADOW};
use vmx::{SecondaryControls, VmxCapabilities};
use x86_64::registers::control::{Cr0, Cr4};
use x86_64::registers::model_specific::Msr;

struct HostMsrs;
impl vmx::MsrReader for HostMsrs {
    fn read_msr(&self, msr: u32) -> u64 {
        // SAFETY: only called after CPUID reported VMX, so the VMX MSRs exist.
        unsafe { Msr::new(msr).read() }
    }
}

pub fn cpu_has_vmx() -> bool {
    raw_cpuid::CpuId::new().get_feature_info().is_some_and(|f| f.has_vmx())
}

// Pin-based controls.
const PIN_EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
const PIN_NMI_EXITING: u32 = 1 << 3;
const PIN_VIRTUAL_NMIS: u32 = 1 << 5;
// Primary processor-based controls.
const PROC_USE_TSC_OFFSETTING: u32 = 1 << 3;
const PROC_HLT_EXITING: u32 = 1 << 7;
const PROC_MWAIT_EXITING: u32 = 1 << 10;
const PROC_RDPMC_EXITING: u32 = 1 << 11;
const PROC_MONITOR_EXITING: u32 = 1 << 29;
const PROC_CR8_LOAD_EXITING: u32 = 1 << 19;
const PROC_CR8_STORE_EXITING: u32 = 1 << 20;
const PROC_UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
// Exit controls.
const EXIT_SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
const EXIT_HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
const EXIT_SAVE_PAT: u32 = 1 << 18;
const EXIT_LOAD_PAT: u32 = 1 << 19;
const EXIT_SAVE_EFER: u32 = 1 << 20;
const EXIT_LOAD_EFER: u32 = 1 << 21;
// Entry controls.
const ENTRY_LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
pub const ENTRY_IA32E_MODE_GUEST: u32 = 1 << 9;
const ENTRY_LOAD_PAT: u32 = 1 << 14;
const ENTRY_LOAD_EFER: u32 = 1 << 15;

/// The control words every VMCS gets (the IA-32e entry control varies per guest).
#[derive(Debug, Clone, Copy)]
pub struct Controls {
    pub pin: u32,
    pub primary: u32,
    pub secondary: u32,
    pub exit: u32,
    pub entry: u32,
    /// APIC virtualisation is on (see `APIC_VIRTUALIZATION`).
    pub apic_virtualization: bool,
    /// And the CPU can deliver the APIC's interrupts itself (virtual-interrupt
    /// delivery), which each vCPU turns on while its APIC is in xAPIC mode.
    pub virtual_interrupt_delivery: bool,
}

/// APIC virtualisation, used when the CPU has all of it: the guest's xAPIC page
/// is backed by a per-vCPU virtual-APIC page the VMM keeps current, so register
/// reads and TPR writes need no exit and other writes exit after the fact with
/// the register and value known (no instruction decoding). Otherwise every
/// access to the page is an EPT violation that is decoded and emulated.
const APIC_VIRTUALIZATION: SecondaryControls =
    SecondaryControls::VIRTUALIZE_APIC_ACCESSES.union(SecondaryControls::APIC_REGISTER_VIRTUALIZATION);

pub struct Vmx {
    pub caps: VmxCapabilities,
    pub controls: Controls,
}

static VMX: spin::Once<Result<Vmx, alloc::string::String>> = spin::Once::new();
static APIC_VIRTUALIZATION_LIMIT: spin::Once<ApicVirtualization> = spin::Once::new();

/// The boot option `apicv=`: taken before any CPU turns VMX on.
pub fn limit_apic_virtualization(limit: ApicVirtualization) {
    APIC_VIRTUALIZATION_LIMIT.call_once(|| limit);
}

fn apic_virtualization_limit() -> ApicVirtualization {
    APIC_VIRTUALIZATION_LIMIT.get().copied().unwrap_or_default()
}

/// What Basalt needs of VT-x, or why this CPU cannot run guests.
pub fn vmx() -> Result<&'static Vmx, &'static str> {
    VMX.call_once(|| {
        if !cpu_has_vmx() {
            return Err("this CPU has no VT-x (CPUID.1:ECX.VMX = 0)".into());
        }
        let caps = VmxCapabilities::read(&HostMsrs);
        compute_controls(&caps).map(|controls| Vmx { caps, controls })
    })
    .as_ref()
    .map_err(|e| e.as_str())
}

fn compute_controls(caps: &VmxCapabilities) -> Result<Controls, alloc::string::String> {
    use alloc::string::ToString;
    let required2 = SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST;
    let wanted2 = SecondaryControls::ENABLE_VPID
        | SecondaryControls::ENABLE_RDTSCP
        | SecondaryControls::ENABLE_INVPCID
        | SecondaryControls::ENABLE_XSAVES
        // A guest's WBINVD would write back and invalidate every cache of the
        // core, which other VMs share: it exits and does nothing (exits/cache.rs).
        | SecondaryControls::WBINVD_EXITING
        // A vCPU spinning in a PAUSE loop (waiting for a lock another vCPU
        // holds, which may be off its core) gives the core up (exits/`Yield`).
        | SecondaryControls::PAUSE_LOOP_EXITING
        | APIC_VIRTUALIZATION;
    let controls = Controls {
        pin: caps
            .pin_based
            .adjust(
                "pin-based",
                PIN_EXTERNAL_INTERRUPT_EXITING | PIN_NMI_EXITING | PIN_VMX_PREEMPTION_TIMER,
                PIN_VIRTUAL_NMIS,
            )
            .map_err(|e| e.to_string())?,
        primary: caps
            .proc_based
            .adjust(
                "primary processor-based",
                // MONITOR/MWAIT would park the core in a C-state the guest
                // chooses; RDPMC would read the host's performance counters.
                // TSC offsetting gives each vCPU its own TSC (TSC_ADJUST and
                // TSC writes move it) without an exit per RDTSC; every VT-x
                // CPU has it.
                PROC_USE_TSC_OFFSETTING
                    | PROC_HLT_EXITING
                    | PROC_MWAIT_EXITING
                    | PROC_RDPMC_EXITING
                    | PROC_MONITOR_EXITING
                    | PROC_UNCONDITIONAL_IO_EXITING
                    | PROC_USE_MSR_BITMAPS
                    | PROC_ACTIVATE_SECONDARY,
                PROC_USE_TPR_SHADOW,
            )
            .map_err(|e| e.to_string())?,
        secondary: caps
            .proc_based2
            .adjust("secondary processor-based", required2.bits(), wanted2.bits())
            .map_err(|e| e.to_string())?,
        // The guest's DR7 and IA32_DEBUGCTL live in the VMCS: saved at every
        // exit (which sets DR7 to 0x400 for the host) and loaded at every
        // entry. A CPU with the "true" control MSRs may leave both controls
        // 0, and the guest's breakpoints would then vanish at its first exit.
        exit: caps
            .exit
            .adjust(
                "VM-exit",
                EXIT_SAVE_DEBUG_CONTROLS
                    | EXIT_HOST_ADDRESS_SPACE_SIZE
                    | EXIT_SAVE_EFER
                    | EXIT_LOAD_EFER
                    | EXIT_SAVE_PAT
                    | EXIT_LOAD_PAT,
                0,
            )
            .map_err(|e| e.to_string())?,
        entry: caps
            .entry
            .adjust("VM-entry", ENTRY_LOAD_DEBUG_CONTROLS | ENTRY_LOAD_EFER | ENTRY_LOAD_PAT, 0)
            .map_err(|e| e.to_string())?,
        apic_virtualization: false,
        virtual_interrupt_delivery: false,
    };
    // All of it or none: register virtualisation needs the TPR shadow.
    let limit = apic_virtualization_limit();
    let has_all = controls.primary & PROC_USE_TPR_SHADOW != 0
        && controls.secondary & APIC_VIRTUALIZATION.bits() == APIC_VIRTUALIZATION.bits()
        && limit != ApicVirtualization::Off;
    // Delivery needs external interrupts to exit (they do, always) and is
    // only allowed on top of the rest.
    let delivery = has_all
        && caps.secondary().contains(SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY)
        && controls.pin & PIN_EXTERNAL_INTERRUPT_EXITING != 0
        && limit == ApicVirtualization::Full;
    Ok(if has_all {
        Controls { apic_virtualization: true, virtual_interrupt_delivery: delivery, ..controls }
    } else {
        controls.without_apic_virtualization()
    })
}

impl Controls {
    /// The same controls with APIC virtualisation off (the CPU lacks part of it,
    /// or a VM has no APIC-access page). Without the TPR shadow a guest's
    /// `mov cr8` would reach the core's own TPR and could mask the host's timer
    /// and wake-up vectors, so CR8 accesses exit and go to the APIC model.
    pub fn without_apic_virtualization(self) -> Controls {
        Controls {
            primary: (self.primary & !PROC_USE_TPR_SHADOW) | PROC_CR8_LOAD_EXITING | PROC_CR8_STORE_EXITING,
            secondary: self.secondary & !APIC_VIRTUALIZATION.bits(),
            apic_virtualization: false,
            virtual_interrupt_delivery: false,
            ..self
        }
    }
}

/// Enables VMX on the calling CPU and enters VMX root operation.
pub fn enable_on_this_cpu() -> Result<(), &'static str> {
    let vmx = vmx()?;
    use vmx::msr::{FEATURE_CONTROL_LOCKED, FEATURE_CONTROL_VMXON_OUTSIDE_SMX, IA32_FEATURE_CONTROL};
    let mut feature_control = Msr::new(IA32_FEATURE_CONTROL);
    // SAFETY: the MSR exists on VMX-capable CPUs; locking it with VMXON allowed is
    // what firmware normally does.
    unsafe {
        let value = feature_control.read();
        if value & FEATURE_CONTROL_LOCKED == 0 {
            feature_control.write(value | FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMXON_OUTSIDE_SMX);
        } else if value & FEATURE_CONTROL_VMXON_OUTSIDE_SMX == 0 {
            return Err("VT-x is disabled in the firmware (IA32_FEATURE_CONTROL locked without VMXON)");
        }
    }
    // The guest's FPU/SSE/AVX state is switched with XSAVE, which needs OSXSAVE.
    let xsave = crate::vmm::xstate::has_xsave();
    // SAFETY: setting VMXE and the bits VMX pins, plus OSFXSR/OSXSAVE, does not
    // change how the (soft-float) host kernel runs.
    unsafe {
        Cr0::write_raw(vmx.caps.cr0.apply(Cr0::read_raw()));
        let mut cr4 = Cr4::read_raw() | vmx::guest_state::CR4_VMXE | (1 << 9) | (1 << 10);
        if xsave {
            cr4 |= 1 << 18;
        }
        Cr4::write_raw(vmx.caps.cr4.apply(cr4));
    }
    let region = memory::alloc_frame().ok_or("out of memory for the VMXON region")?;
    // SAFETY: the region is a fresh frame; its first word must be the revision id.
    unsafe {
        (memory::phys_to_virt(region) as *mut u32).write(vmx.caps.basic.revision_id);
        vmx::instructions::vmxon(region).map_err(|_| "VMXON failed")?;
    }
    Ok(())
}

/// Logs what VT-x this CPU offers, or that it has none.
pub fn report_capabilities() {
    if !cpu_has_vmx() {
        log::info!("vmx: not available on this CPU (CPUID.1:ECX.VMX = 0)");
        return;
    }
    use vmx::msr::*;
    let feature_control = vmx::MsrReader::read_msr(&HostMsrs, IA32_FEATURE_CONTROL);
    let locked = feature_control & FEATURE_CONTROL_LOCKED != 0;
    let allowed = feature_control & FEATURE_CONTROL_VMXON_OUTSIDE_SMX != 0;
    log::info!(
        "vmx: available; IA32_FEATURE_CONTROL {:#x} ({})",
        feature_control,
        match (locked, allowed) {
            (true, true) => "locked, VMXON allowed",
            (true, false) => "locked with VMX disabled by firmware",
            (false, _) => "unlocked, Basalt will enable it",
        }
    );
    let caps = VmxCapabilities::read(&HostMsrs);
    for line in alloc::format!("{caps}").lines() {
        log::info!("vmx: {line}");
    }
}
