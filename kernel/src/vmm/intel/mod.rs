//! The VT-x back end: VMX on each CPU (`cpu`), a vCPU's VMCS (`vcpu`), VMX
//! exits as `vmexit::Exit` values (`exit`), and here the vCPU as the run loop
//! (`Backend`) and the exit handlers (`vmexit::Vcpu`) see it.

pub mod cpu;
mod exit;
pub mod vcpu;

use crate::vmm::backend::Backend;
use crate::vmm::counters::ExitCounters;
use crate::vmm::vm::Stop;
use arch::control::cr0::{CD as CR0_CD, NW as CR0_NW};
use arch::control::{cr0, efer, Context};
use arch::decode::CodeSize;
use arch::paging::Paging;
use cpu::ENTRY_IA32E_MODE_GUEST;
use devices::{Chipset, PendingEvents};
use vcpu::{read, write};
use vmexit::vcpu::DebugRegisters;
use vmexit::{Exit, SegmentRegister};
use vmx::exit::{interruption_type, InterruptionInfo};
use vmx::vmcs;

pub use vcpu::Vcpu;

/// Interruptibility: blocking by STI, by MOV SS; by NMI.
const BLOCKED_BY_STI_OR_MOV_SS: u64 = 3;
const BLOCKED_BY_NMI: u64 = 1 << 3;
const ACTIVITY_ACTIVE: u64 = 0;
const ACTIVITY_HLT: u64 = 1;
const PROC_INTERRUPT_WINDOW_EXITING: u64 = 1 << 2;
const PROC_NMI_WINDOW_EXITING: u64 = 1 << 22;
/// Pending debug exceptions: B0-B3, "enabled breakpoint", BS.
const PENDING_DEBUG_TRAPS: u64 = 0xf | 1 << 12 | 1 << 14;
const CS_LONG: u64 = 1 << 13;
const CS_DEFAULT_32: u64 = 1 << 14;

fn window_exiting(control: u64, on: bool) {
    let primary = read(vmcs::PRIMARY_PROCESSOR_CONTROLS);
    write(vmcs::PRIMARY_PROCESSOR_CONTROLS, if on { primary | control } else { primary & !control });
}

fn inject(info: InterruptionInfo) {
    write(vmcs::ENTRY_INTERRUPTION_INFO, info.0 as u64);
    // An event ends a HLT.
    write(vmcs::GUEST_ACTIVITY_STATE, ACTIVITY_ACTIVE);
}

/// The guest's DR6 (on the core while its vCPU runs: VMX does not switch
/// it) as the CPU writes it for a #DB with `conditions`.
fn update_dr6(conditions: u64) {
    let dr6: u64;
    // SAFETY: DR6 is a status register; the guest's value is in it while
    // its vCPU runs on this core (see vmm::switch), and only the guest reads it.
    unsafe {
        core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack, preserves_flags));
        let dr6 = arch::control::dr6_after_debug_exception(dr6, conditions);
        core::arch::asm!("mov dr6, {}", in(reg) dr6, options(nomem, nostack, preserves_flags));
    }
}

/// Delivering a #DB clears DR7.GD (so the handler may use the debug
/// registers); neither an intercepted #DB nor an injected one does it.
fn clear_general_detect() {
    let dr7 = read(vmcs::GUEST_DR7);
    if dr7 & arch::debug::dr7::GD != 0 {
        write(vmcs::GUEST_DR7, dr7 & !arch::debug::dr7::GD);
    }
}

/// The guest's view of a control register: its read shadow for the bits
/// Basalt owns (the guest/host mask), the real register for the rest.
fn visible(actual: vmcs::Field, shadow: vmcs::Field, mask: vmcs::Field) -> u64 {
    let mask = read(mask);
    (read(actual) & !mask) | (read(shadow) & mask)
}

impl vmexit::Vcpu for Vcpu {
    fn index(&self) -> usize {
        self.index as usize
    }

    /// RSP (4) lives in the VMCS, the others in the registers the exit stub saved.
    fn gpr(&self, index: u8) -> u64 {
        if index & 15 == 4 {
            read(vmcs::GUEST_RSP)
        } else {
            self.regs.get(index)
        }
    }

    fn set_gpr(&mut self, index: u8, value: u64) {
        if index & 15 == 4 {
            write(vmcs::GUEST_RSP, value);
        } else {
            self.regs.set(index, value);
        }
    }

    /// None of them is RSP: all in the saved registers.
    fn set_abcd(&mut self, [rax, rbx, rcx, rdx]: [u64; 4]) {
        self.regs.set(0, rax);
        self.regs.set(3, rbx);
        self.regs.set(1, rcx);
        self.regs.set(2, rdx);
    }

    fn rip(&self) -> u64 {
        read(vmcs::GUEST_RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        write(vmcs::GUEST_RIP, rip);
        // Any STI / MOV SS blocking ends with the instruction.
        let interruptibility = read(vmcs::GUEST_INTERRUPTIBILITY);
        if interruptibility & BLOCKED_BY_STI_OR_MOV_SS != 0 {
            write(vmcs::GUEST_INTERRUPTIBILITY, interruptibility & !BLOCKED_BY_STI_OR_MOV_SS);
        }
    }

    fn skip_instruction(&mut self) {
        let length = read(vmcs::EXIT_INSTRUCTION_LENGTH);
        self.set_rip(read(vmcs::GUEST_RIP).wrapping_add(length));
    }

    fn rflags(&self) -> u64 {
        read(vmcs::GUEST_RFLAGS)
    }

    fn set_rflags(&mut self, value: u64) {
        write(vmcs::GUEST_RFLAGS, value);
    }

    fn cpl(&self) -> u8 {
        ((read(vmcs::GUEST_SS_ACCESS_RIGHTS) >> 5) & 3) as u8
    }

    fn segment_base(&self, segment: SegmentRegister) -> u64 {
        read(match segment {
            SegmentRegister::Es => vmcs::GUEST_ES_BASE,
            SegmentRegister::Cs => vmcs::GUEST_CS_BASE,
            SegmentRegister::Ss => vmcs::GUEST_SS_BASE,
            SegmentRegister::Ds => vmcs::GUEST_DS_BASE,
            SegmentRegister::Fs => vmcs::GUEST_FS_BASE,
            SegmentRegister::Gs => vmcs::GUEST_GS_BASE,
        })
    }

    fn code_size(&self) -> CodeSize {
        let cs_rights = read(vmcs::GUEST_CS_ACCESS_RIGHTS);
        if read(vmcs::GUEST_IA32_EFER) & efer::LMA != 0 && cs_rights & CS_LONG != 0 {
            CodeSize::Bits64
        } else if read(vmcs::GUEST_CR0) & cr0::PE != 0 && cs_rights & CS_DEFAULT_32 != 0 {
            CodeSize::Bits32
        } else {
            CodeSize::Bits16
        }
    }

    fn control(&self) -> Context {
        let efer = read(vmcs::GUEST_IA32_EFER);
        Context {
            cr0: visible(vmcs::GUEST_CR0, vmcs::CR0_READ_SHADOW, vmcs::CR0_GUEST_HOST_MASK),
            cr3: read(vmcs::GUEST_CR3),
            cr4: visible(vmcs::GUEST_CR4, vmcs::CR4_READ_SHADOW, vmcs::CR4_GUEST_HOST_MASK),
            long_mode_enabled: efer & efer::LME != 0,
            long_mode_active: efer & efer::LMA != 0,
            code_64: read(vmcs::GUEST_CS_ACCESS_RIGHTS) & CS_LONG != 0,
        }
    }

    fn cr4(&self) -> u64 {
        visible(vmcs::GUEST_CR4, vmcs::CR4_READ_SHADOW, vmcs::CR4_GUEST_HOST_MASK)
    }

    fn efer(&self) -> u64 {
        read(vmcs::GUEST_IA32_EFER)
    }

    fn fetch_memo(&mut self) -> Option<&mut vmexit::FetchMemo> {
        Some(&mut self.fetch_memo)
    }

    /// CR0 and CR4 are the values the CPU uses (not the guest's read shadows:
    /// the bits they differ in are VMX's fixed bits, none of which affect
    /// paging). With EPT the CPU keeps PAE paging's PDPTEs in the VMCS; they
    /// are read only when PAE paging is what the guest runs (any other mode
    /// never looks at them, and they are four VMREADs on every MMIO exit).
    fn paging(&self) -> Paging {
        let (cr0, cr4, efer) = (read(vmcs::GUEST_CR0), read(vmcs::GUEST_CR4), read(vmcs::GUEST_IA32_EFER));
        let pae_paging = cr0 & cr0::PG != 0 && cr4 & arch::control::cr4::PAE != 0 && efer & efer::LMA == 0;
        let pdptes = [vmcs::GUEST_PDPTE0, vmcs::GUEST_PDPTE1, vmcs::GUEST_PDPTE2, vmcs::GUEST_PDPTE3].map(|field| {
            if pae_paging {
                read(field)
            } else {
                0
            }
        });
        Paging {
            cr0,
            cr3: read(vmcs::GUEST_CR3),
            cr4,
            efer,
            pdptes: Some(pdptes),
            max_phys_bits: crate::vmm::host::max_phys_bits(),
        }
    }

    /// The guest keeps its own CR0 in the read shadow; the real register gets
    /// the bits VMX pins, and never CD/NW: entries and exits do not switch
    /// them, so a guest that set them would disable the host's caches.
    fn set_cr0(&mut self, value: u64) {
        let Ok(vmx) = cpu::vmx() else { return };
        write(vmcs::CR0_READ_SHADOW, value);
        write(vmcs::GUEST_CR0, vmx.caps.cr0.for_unrestricted_guest_cr0().apply(value) & !(CR0_CD | CR0_NW));
    }

    fn set_cr4(&mut self, value: u64) {
        let Ok(vmx) = cpu::vmx() else { return };
        write(vmcs::CR4_READ_SHADOW, value);
        write(vmcs::GUEST_CR4, vmx.caps.cr4.apply(value));
    }

    /// The "IA-32e mode guest" entry control follows EFER.LMA; the only place
    /// either changes.
    fn set_efer(&mut self, value: u64) {
        write(vmcs::GUEST_IA32_EFER, value);
        let entry = read(vmcs::ENTRY_CONTROLS);
        let ia32e = ENTRY_IA32E_MODE_GUEST as u64;
        write(vmcs::ENTRY_CONTROLS, if value & efer::LMA != 0 { entry | ia32e } else { entry & !ia32e });
    }

    /// The entry stub loads CR2 from the saved registers.
    fn set_cr2(&mut self, value: u64) {
        self.regs.cr2 = value;
    }

    fn xcr0(&self) -> u64 {
        self.switched.xcr0
    }

    fn set_xcr0(&mut self, value: u64) {
        self.switched.set_xcr0(value);
    }

    fn tsc_offset(&self) -> u64 {
        read(vmcs::TSC_OFFSET).wrapping_add(self.time_base)
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        write(vmcs::TSC_OFFSET, offset.wrapping_sub(self.time_base));
    }

    /// DR0-DR3 are the guest's on the core while its vCPU runs (vmm::switch);
    /// DR7 is in the VMCS.
    fn debug_registers(&self) -> DebugRegisters {
        DebugRegisters { dr: crate::vmm::switch::guest_breakpoint_addresses(), dr7: read(vmcs::GUEST_DR7) }
    }

    /// Injected as a hardware exception, with DR6 written as the CPU would
    /// (VM entry's event injection does not write it). A trap the exit left
    /// pending (the MOV SS before this instruction) is the same #DB: its
    /// conditions join this one's, and the field is cleared, since the CPU
    /// would deliver it again after the injected one.
    fn raise_debug_trap(&mut self, conditions: u64) {
        const CONDITIONS: u64 = arch::debug::dr6::BREAKPOINTS | arch::debug::dr6::BS;
        let pending = read(vmcs::GUEST_PENDING_DEBUG_EXCEPTIONS);
        if pending & PENDING_DEBUG_TRAPS != 0 {
            write(vmcs::GUEST_PENDING_DEBUG_EXCEPTIONS, 0);
        }
        update_dr6((conditions | pending) & CONDITIONS);
        clear_general_detect();
        inject(InterruptionInfo::inject(vmexit::DB, interruption_type::HARDWARE_EXCEPTION, false));
    }

    fn pending(&mut self) -> &mut PendingEvents {
        &mut self.pending
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let info = InterruptionInfo::inject(vector, interruption_type::HARDWARE_EXCEPTION, error_code.is_some());
        write(vmcs::ENTRY_INTERRUPTION_INFO, info.0 as u64);
        if let Some(code) = error_code {
            write(vmcs::ENTRY_EXCEPTION_ERROR_CODE, code as u64);
        }
    }

    /// An event whose delivery the exception interrupted (re-injected when the
    /// exit was read) gives way: #DB and #AC are benign, so the CPU would
    /// deliver them first and the interrupted instruction raises its event
    /// again when it is retried.
    fn reflect_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let info = InterruptionInfo(read(vmcs::EXIT_INTERRUPTION_INFO) as u32);
        if vector == vmexit::DB {
            // A #DB that exited has not updated DR6 (the exit qualification
            // holds what it would have set) nor cleared DR7.GD.
            update_dr6(read(vmcs::EXIT_QUALIFICATION));
            clear_general_detect();
        }
        // ICEBP's #DB is a privileged software exception: it needs its length.
        let software = info.kind() == interruption_type::PRIVILEGED_SOFTWARE_EXCEPTION;
        let kind = if software {
            interruption_type::PRIVILEGED_SOFTWARE_EXCEPTION
        } else {
            interruption_type::HARDWARE_EXCEPTION
        };
        inject(InterruptionInfo::inject(vector, kind, error_code.is_some()));
        if let Some(code) = error_code {
            write(vmcs::ENTRY_EXCEPTION_ERROR_CODE, code as u64);
        }
        if software {
            write(vmcs::ENTRY_INSTRUCTION_LENGTH, read(vmcs::EXIT_INSTRUCTION_LENGTH));
        }
        // The exception hit an IRET that had unblocked NMIs: the IRET did not
        // complete, so NMIs stay blocked, as they were.
        const NMI_UNBLOCKED_BY_IRET: u32 = 1 << 12;
        if info.0 & NMI_UNBLOCKED_BY_IRET != 0 {
            let state = read(vmcs::GUEST_INTERRUPTIBILITY);
            write(vmcs::GUEST_INTERRUPTIBILITY, state | BLOCKED_BY_NMI);
        }
    }

    /// A debug trap the CPU holds in the pending debug exceptions (one a
    /// trap-like exit or a MOV SS left) counts: it is delivered at entry, and
    /// an event injected at that entry would make the CPU drop it.
    fn injection_pending(&self) -> bool {
        InterruptionInfo(read(vmcs::ENTRY_INTERRUPTION_INFO) as u32).is_valid()
            || read(vmcs::GUEST_PENDING_DEBUG_EXCEPTIONS) & PENDING_DEBUG_TRAPS != 0
    }

    fn interrupt_shadow(&self) -> bool {
        read(vmcs::GUEST_INTERRUPTIBILITY) & BLOCKED_BY_STI_OR_MOV_SS != 0
    }

    fn nmi_blocked(&self) -> bool {
        read(vmcs::GUEST_INTERRUPTIBILITY) & BLOCKED_BY_NMI != 0
    }

    fn inject_nmi(&mut self) {
        inject(InterruptionInfo::inject(2, interruption_type::NMI, false));
    }

    fn inject_interrupt(&mut self, vector: u8) {
        inject(InterruptionInfo::inject(vector, interruption_type::EXTERNAL_INTERRUPT, false));
    }

    fn delivers_apic_interrupts(&self, mode: devices::lapic::Mode) -> bool {
        self.delivers_in(mode)
    }

    fn request_interrupt_window(&mut self, on: bool) {
        window_exiting(PROC_INTERRUPT_WINDOW_EXITING, on);
    }

    fn request_nmi_window(&mut self, on: bool) {
        window_exiting(PROC_NMI_WINDOW_EXITING, on);
    }

    fn halt(&mut self) {
        write(vmcs::GUEST_ACTIVITY_STATE, ACTIVITY_HLT);
        self.halt_requested = true;
    }
}

impl Backend for Vcpu {
    fn switch_in(&mut self, vm_id: u64) -> Result<(), Stop> {
        self.arrive()?;
        self.host = Some(self.switched.switch_in(vm_id));
        Ok(())
    }

    fn switch_out(&mut self) {
        if let Some(host) = self.host.take() {
            self.switched.switch_out(host);
        }
        self.leave();
    }

    fn release(&mut self) {
        self.leave();
    }

    fn spin_alone(&mut self) {
        self.set_ple_window(self.ple_window.saturating_mul(2).min(vcpu::PLE_WINDOW_MAX));
    }

    fn spin_yielded(&mut self) {
        self.set_ple_window(vcpu::PLE_WINDOW_FIRST);
    }

    fn set_time_base(&mut self, base: u64) {
        let offset = vmexit::Vcpu::tsc_offset(self);
        self.time_base = base;
        vmexit::Vcpu::set_tsc_offset(self, offset);
    }

    fn halted(&self) -> bool {
        read(vmcs::GUEST_ACTIVITY_STATE) == ACTIVITY_HLT
    }

    /// The VMX-preemption timer counts down at the TSC rate divided by 2^rate.
    fn arm_timer(&mut self, now: u64, deadline: u64) {
        let rate = cpu::vmx().map_or(0, |vmx| vmx.caps.misc.preemption_timer_rate);
        write(vmcs::PREEMPTION_TIMER_VALUE, (deadline.saturating_sub(now) >> rate).min(u32::MAX as u64));
    }

    fn sync_to_guest(&mut self, chipset: &Chipset) {
        self.mirror_local_apic(chipset);
    }

    fn sync_from_guest(&mut self, chipset: &Chipset) {
        self.absorb_local_apic(chipset);
    }

    fn guest_view_current(&self, chipset: &Chipset) -> bool {
        self.view_current(chipset)
    }

    fn enter(&mut self) -> Result<Exit, Stop> {
        // SAFETY: the VMCS is current (switch_in) and fully set up by `setup`.
        unsafe { vmx::instructions::enter(&mut self.regs, self.launched) }
            .map_err(|e| Stop::EntryFailed(alloc::format!("{e}")))?;
        if crate::vmm::run::profiling_loop() {
            self.left_guest_at = crate::time::rdtsc();
        }
        self.launched = true;
        Ok(exit::translate(self))
    }

    fn counters(&mut self) -> &mut ExitCounters {
        &mut self.counters
    }

    fn left_guest_at(&self) -> Option<u64> {
        Some(self.left_guest_at)
    }
}
