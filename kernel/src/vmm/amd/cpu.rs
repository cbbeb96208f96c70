//! Taking a CPU into SVM operation: the capabilities Basalt needs (nested
//! paging, ASIDs), EFER.SVME, the host save area VMRUN uses (VM_HSAVE_PA),
//! and a second per-core page for the host state VMSAVE/VMLOAD switch.

use crate::memory;
use core::arch::x86_64::__cpuid;
use core::sync::atomic::{AtomicU64, Ordering};
use svm::caps::{self, VmCrAction};
use svm::SvmCapabilities;
use x86_64::registers::control::Cr4;
use x86_64::registers::model_specific::Msr;

pub fn cpu_has_svm() -> bool {
    __cpuid(0x8000_0000).eax >= 0x8000_0001 && caps::cpu_has_svm(__cpuid(0x8000_0001).ecx)
}

/// What this CPU's SVM offers, or why Basalt cannot use it.
pub fn capabilities() -> Result<&'static SvmCapabilities, &'static str> {
    static CAPS: spin::Once<Result<SvmCapabilities, alloc::string::String>> = spin::Once::new();
    CAPS.call_once(|| {
        if !cpu_has_svm() || __cpuid(0x8000_0000).eax < caps::CPUID_SVM_LEAF {
            return Err(alloc::format!("{}", svm::SvmError::NotSupported));
        }
        let leaf = __cpuid(caps::CPUID_SVM_LEAF);
        let caps = SvmCapabilities::decode(leaf.eax, leaf.ebx, leaf.edx);
        caps.check().map(|()| caps).map_err(|e| alloc::format!("{e}"))
    })
    .as_ref()
    .map_err(|e| e.as_str())
}

/// Per core: the page VMSAVE fills with the host's FS/GS/TR/LDTR state and
/// syscall MSRs before a guest's are loaded (indexed by CPU index).
static HOST_SAVE_AREAS: [AtomicU64; crate::percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; crate::percpu::MAX_CPUS];

/// This core's VMSAVE/VMLOAD page for the host (set up by `enable_on_this_cpu`).
pub fn host_save_area() -> u64 {
    HOST_SAVE_AREAS[crate::percpu::current_index() as usize].load(Ordering::Relaxed)
}

/// Enables SVM on the calling CPU.
pub fn enable_on_this_cpu() -> Result<(), alloc::string::String> {
    let caps = capabilities()?;
    let mut vm_cr = Msr::new(caps::MSR_VM_CR);
    // SAFETY: VM_CR exists on every CPU with SVM; clearing an unlocked SVMDIS
    // is the documented way for the OS to allow SVM.
    unsafe {
        match caps::check_vm_cr(vm_cr.read(), caps.features) {
            Ok(VmCrAction::Ready) => {}
            Ok(VmCrAction::ClearSvmdis) => vm_cr.write(vm_cr.read() & !caps::VM_CR_SVMDIS),
            Err(e) => return Err(alloc::format!("{e}")),
        }
    }
    let hsave = memory::alloc_frame().ok_or("out of memory for the SVM host save area")?;
    let host_area = memory::alloc_frame().ok_or("out of memory for the SVM host state area")?;
    HOST_SAVE_AREAS[crate::percpu::current_index() as usize].store(host_area, Ordering::Relaxed);
    let xsave = crate::vmm::xstate::has_xsave();
    // SAFETY: EFER.SVME only enables the SVM instructions; the save area is a
    // fresh frame the CPU owns from now on. OSFXSR/OSXMMEXCPT/OSXSAVE let the
    // VMM switch the guests' FPU state; the soft-float host does not care.
    unsafe {
        let mut efer = Msr::new(caps::MSR_EFER);
        efer.write(efer.read() | caps::EFER_SVME);
        Msr::new(caps::MSR_VM_HSAVE_PA).write(hsave);
        let mut cr4 = Cr4::read_raw() | (1 << 9) | (1 << 10);
        if xsave {
            cr4 |= 1 << 18;
        }
        Cr4::write_raw(cr4);
    }
    Ok(())
}

/// Logs what SVM this CPU offers, or that it has none.
pub fn report_capabilities() {
    if !cpu_has_svm() {
        log::info!("svm: not available on this CPU (CPUID 8000_0001h:ECX.SVM = 0)");
        return;
    }
    match capabilities() {
        Ok(caps) => {
            log::info!(
                "svm: available; revision {}, {} ASIDs, nested paging yes, next-RIP save {}, decode assists {}, flush by ASID {}",
                caps.revision,
                caps.asids,
                yes_no(caps.next_rip_saved()),
                yes_no(caps.decode_assists()),
                yes_no(caps.features.contains(svm::SvmFeatures::FLUSH_BY_ASID)),
            );
        }
        Err(e) => log::info!("svm: present but unusable: {e}"),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
