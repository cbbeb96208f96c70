//! Guest state neither vendor's VM entry and exit switch, and the host never
//! uses while a vCPU runs: XCR0 and the FPU/SIMD registers, DR0-DR3 and DR6,
//! and the MSRs a back end lists. It is loaded when a vCPU starts running on a
//! core and saved (the host's values restored) when it leaves, so nothing one
//! VM left in a register reaches another VM or the host.

use super::xstate;
use crate::memory;
use core::sync::atomic::Ordering;
use x86_64::registers::model_specific::Msr;

/// At most this many MSRs are switched per vCPU.
pub const MAX_SWITCHED_MSRS: usize = 8;

/// One vCPU's share of that state while it is off the core.
pub struct SwitchedState {
    /// One frame: the XSAVE area (standard format).
    xsave_area: u64,
    pub xcr0: u64,
    msrs: &'static [u32],
    guest_msrs: [u64; MAX_SWITCHED_MSRS],
    debug: DebugState,
}

/// The host's values while a vCPU runs, to put back when it leaves.
pub struct HostState {
    xcr0: u64,
    msrs: [u64; MAX_SWITCHED_MSRS],
}

impl SwitchedState {
    /// The reset state, switching `msrs` (at most MAX_SWITCHED_MSRS, each one
    /// the CPU has, their reset value 0) along with the rest.
    pub fn new(msrs: &'static [u32]) -> Option<SwitchedState> {
        assert!(msrs.len() <= MAX_SWITCHED_MSRS, "too many switched MSRs");
        let xsave_area = memory::alloc_frame()?;
        // SAFETY: a fresh zeroed frame owned by this vCPU, reached through the
        // physical mapping: x87 control word and MXCSR at their reset values.
        unsafe {
            let area = memory::phys_to_virt(xsave_area) as *mut u8;
            (area as *mut u16).write(0x37f);
            (area.add(24) as *mut u32).write(0x1f80);
        }
        Some(SwitchedState { xsave_area, xcr0: 1, msrs, guest_msrs: [0; MAX_SWITCHED_MSRS], debug: DebugState::RESET })
    }

    /// Loads the guest's XCR0, FPU/SIMD state, debug registers and switched
    /// MSRs; returns the host's. A core that last ran another VM first drops
    /// what that VM left in the branch predictors and CPU buffers.
    pub fn switch_in(&mut self, vm_id: u64) -> HostState {
        isolation_barrier_on_vm_change(vm_id);
        let xsave = xstate::has_xsave();
        let mut host = HostState {
            // SAFETY: XGETBV needs CR4.OSXSAVE, which the back end's per-core
            // set-up turned on where the CPU has XSAVE.
            xcr0: if xsave { unsafe { core::arch::x86_64::_xgetbv(0) } } else { 0 },
            msrs: [0; MAX_SWITCHED_MSRS],
        };
        for (value, &m) in host.msrs.iter_mut().zip(self.msrs) {
            // SAFETY: the back end lists only MSRs this CPU has.
            *value = unsafe { Msr::new(m).read() };
        }
        let area = memory::phys_to_virt(self.xsave_area) as *const u8;
        let all = xstate::guest().allowed;
        // SAFETY: the area is this vCPU's 4 KiB frame (64-byte aligned, zeroed
        // header at creation) and every component in `all` fits in it
        // (xstate::guest). XRSTOR with every component a guest may ever enable
        // loads each one, from the area or, never saved, in its initial state:
        // nothing another VM left in a register survives, whatever this guest's
        // XCR0 (SSE registers are usable even when XCR0 leaves them out). Both
        // XCR0 values were validated (host's own; the guest's by XSETBV).
        unsafe {
            if xsave {
                core::arch::x86_64::_xsetbv(0, all);
                core::arch::x86_64::_xrstor64(area, all);
                core::arch::x86_64::_xsetbv(0, self.xcr0);
            } else {
                core::arch::x86_64::_fxrstor64(area);
            }
            for (m, v) in self.msrs.iter().zip(self.guest_msrs) {
                Msr::new(*m).write(v);
            }
            self.debug.load();
        }
        host
    }

    pub fn switch_out(&mut self, host: HostState) {
        let area = memory::phys_to_virt(self.xsave_area) as *mut u8;
        let all = xstate::guest().allowed;
        if xstate::has_xsave() {
            // The guest's XCR0 is what the register holds: an emulator that
            // ignores the XSETBV intercept (QEMU's TCG with SVM) lets the
            // guest set it without the VMM seeing it.
            // SAFETY: XGETBV needs CR4.OSXSAVE, set where the CPU has XSAVE.
            self.xcr0 = unsafe { core::arch::x86_64::_xgetbv(0) };
        }
        // SAFETY: as in `switch_in`; saving every allowed component keeps state
        // the guest reached without naming it in XCR0 (XMM registers).
        unsafe {
            if xstate::has_xsave() {
                core::arch::x86_64::_xsetbv(0, all);
                core::arch::x86_64::_xsave64(area, all);
                core::arch::x86_64::_xsetbv(0, host.xcr0);
            } else {
                core::arch::x86_64::_fxsave64(area);
            }
            for (i, m) in self.msrs.iter().enumerate() {
                self.guest_msrs[i] = Msr::new(*m).read();
                Msr::new(*m).write(host.msrs[i]);
            }
            self.debug = DebugState::save_and_clear();
        }
    }

    /// XSETBV for the guest while its vCPU is on the core (its XCR0 is live).
    pub fn set_xcr0(&mut self, value: u64) {
        // SAFETY: the value is a valid XCR0 within what this CPU supports
        // (checked by the XSETBV handler against xstate::guest).
        unsafe { core::arch::x86_64::_xsetbv(0, value) };
        self.xcr0 = value;
    }
}

impl Drop for SwitchedState {
    fn drop(&mut self) {
        memory::free_frame(self.xsave_area);
    }
}

/// DR0-DR3 as the guest set them: on the core while its vCPU runs (loaded
/// at `switch_in`, saved at `switch_out`), for either back end to report.
pub fn guest_breakpoint_addresses() -> [u64; 4] {
    let (dr0, dr1, dr2, dr3): (u64, u64, u64, u64);
    // SAFETY: reading debug registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mov {0}, dr0", "mov {1}, dr1", "mov {2}, dr2", "mov {3}, dr3",
            out(reg) dr0, out(reg) dr1, out(reg) dr2, out(reg) dr3,
            options(nomem, nostack, preserves_flags)
        );
    }
    [dr0, dr1, dr2, dr3]
}

/// DR0-DR3 and DR6: VM entries and exits leave them as they are (DR7 is in the
/// VMCS or VMCB). The host uses none of them (its DR7 is 0x400 after every
/// exit), so they are switched only when a vCPU starts or stops running on a core.
#[derive(Clone, Copy)]
struct DebugState {
    dr: [u64; 4],
    dr6: u64,
}

impl DebugState {
    /// The architectural values after reset.
    const RESET: DebugState = DebugState { dr: [0; 4], dr6: 0xffff_0ff0 };

    /// # Safety
    /// Only with the host's DR7 disabling every breakpoint (as after a VM exit).
    unsafe fn load(&self) {
        // SAFETY: (the caller's) breakpoints are disabled, so addresses in
        // DR0-DR3 do nothing in the host; DR6 is a status register.
        unsafe {
            core::arch::asm!(
                "mov dr0, {0}", "mov dr1, {1}", "mov dr2, {2}", "mov dr3, {3}", "mov dr6, {4}",
                in(reg) self.dr[0], in(reg) self.dr[1], in(reg) self.dr[2], in(reg) self.dr[3],
                in(reg) self.dr6, options(nostack, preserves_flags)
            );
        }
    }

    /// # Safety
    /// As `load`.
    unsafe fn save_and_clear() -> DebugState {
        let (dr0, dr1, dr2, dr3, dr6): (u64, u64, u64, u64, u64);
        // SAFETY: reading debug registers has no side effects.
        unsafe {
            core::arch::asm!(
                "mov {0}, dr0", "mov {1}, dr1", "mov {2}, dr2", "mov {3}, dr3", "mov {4}, dr6",
                out(reg) dr0, out(reg) dr1, out(reg) dr2, out(reg) dr3, out(reg) dr6,
                options(nostack, preserves_flags)
            );
        }
        let saved = DebugState { dr: [dr0, dr1, dr2, dr3], dr6 };
        // SAFETY: as `load`; the reset values leave no guest address behind.
        unsafe { DebugState::RESET.load() };
        saved
    }
}

/// When this core last ran a different VM: IBPB (the previous VM's branch
/// predictions cannot steer this one), an L1D flush (L1TF) and VERW (MDS
/// buffers), each where the CPU has it. Runs once per switch of VM on a core,
/// not per exit.
fn isolation_barrier_on_vm_change(vm_id: u64) {
    let Some(cpu) = crate::percpu::current() else { return };
    if cpu.last_vm.swap(vm_id, Ordering::Relaxed) == vm_id {
        return;
    }
    let edx = core::arch::x86_64::__cpuid_count(7, 0).edx;
    const MD_CLEAR: u32 = 1 << 10;
    const IBRS_IBPB: u32 = 1 << 26;
    const L1D_FLUSH: u32 = 1 << 28;
    // AMD reports IBPB in CPUID 8000_0008h:EBX[12] instead.
    const AMD_IBPB: u32 = 1 << 12;
    let amd_ibpb = core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0008
        && core::arch::x86_64::__cpuid(0x8000_0008).ebx & AMD_IBPB != 0;
    const IA32_PRED_CMD: u32 = 0x49;
    const IA32_FLUSH_CMD: u32 = 0x10b;
    // SAFETY: each command MSR exists when its CPUID bit says so; writing 1
    // is the documented command and changes no other state.
    unsafe {
        if edx & IBRS_IBPB != 0 || amd_ibpb {
            Msr::new(IA32_PRED_CMD).write(1);
        }
        if edx & L1D_FLUSH != 0 {
            Msr::new(IA32_FLUSH_CMD).write(1);
        }
    }
    if edx & MD_CLEAR != 0 {
        let selector: u16 = crate::gdt::KERNEL_DATA.0;
        // SAFETY: VERW with a memory operand only checks the selector (setting
        // ZF) and, with MD_CLEAR, overwrites the CPU's internal buffers.
        unsafe { core::arch::asm!("verw word ptr [{0}]", in(reg) &selector, options(nostack, readonly)) };
    }
}
