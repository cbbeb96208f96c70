//! The AMD SVM back end: SVM on each CPU (`cpu`), a vCPU's VMCB and the run
//! stub (`vcpu`), #VMEXIT as `vmexit::Exit` values (`exit`), and here the vCPU
//! as the run loop (`Backend`) and the exit handlers (`vmexit::Vcpu`) see it.
//!
//! Where SVM differs from VMX in what it does for the VMM: no halted state
//! (HLT waits in the host, `enter`), no preemption timer (the host's local
//! APIC timer, `arm_timer`), no NMI-window exit (the IRET intercept, then a
//! single step over the IRET), no read shadows (guests see their own
//! CR0/CR4; EFER.SVME is hidden), no XSETBV exits on QEMU's TCG (it ignores
//! the intercept; XCR0 stays within what the CPU allows either way), and on
//! CPUs without next-RIP save or decode assists the length and operands of an
//! intercepted instruction come from decoding it (`vmexit` does, through
//! `instruction_length_unknown` and `reports_string_io_operands`).

pub mod cpu;
mod exit;
pub mod vcpu;

use crate::vmm::backend::Backend;
use crate::vmm::counters::ExitCounters;
use crate::vmm::vm::Stop;
use arch::control::{cr0, efer, Context};
use arch::decode::CodeSize;
use arch::paging::Paging;
use devices::PendingEvents;
use svm::vmcb::{tlb_control, INTERRUPT_SHADOW};
use svm::Event;
use vmexit::vcpu::DebugRegisters;
use vmexit::{Exit, SegmentRegister};

pub use vcpu::Vcpu;

const EVENT_VALID: u64 = 1 << 31;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_RF: u64 = 1 << 16;
/// VMCB segment attributes: CS.L and CS.D.
const ATTRIB_LONG: u16 = 1 << 9;
const ATTRIB_DEFAULT_32: u16 = 1 << 10;

impl Vcpu {
    /// Intercepts IRET (the NMI window's first half) or stops.
    fn set_iret_intercept(&mut self, on: bool) {
        if self.iret_intercept != on {
            self.iret_intercept = on;
            self.write_intercepts();
        }
    }

    /// Steps the guest over one instruction (the IRET of its NMI handler):
    /// the #DB after it brings the VMM back whatever the guest's IF.
    fn begin_singlestep(&mut self) {
        if self.nmi_singlestep.is_none() {
            let s = &mut self.vmcb_mut().save;
            let saved = (s.rflags, s.dr6);
            s.rflags |= RFLAGS_TF | RFLAGS_RF;
            self.nmi_singlestep = Some(saved);
        }
    }

    /// After the step: TF and RF as the guest had them (unless its IRET set
    /// them), DR6 without the single-step status the guest did not cause.
    pub(super) fn end_singlestep(&mut self, rflags_before: u64, dr6_before: u64) {
        let s = &mut self.vmcb_mut().save;
        for flag in [RFLAGS_TF, RFLAGS_RF] {
            if rflags_before & flag == 0 {
                s.rflags &= !flag;
            }
        }
        s.dr6 = dr6_before;
    }

    /// The guest's TLB entries go at the next entry, as the instruction the
    /// VMM emulated (a CR0/CR4 write) would have flushed them.
    fn flush_guest_tlb(&mut self) {
        if let Ok(caps) = cpu::capabilities() {
            self.vmcb_mut().control.tlb_control = caps.tlb_flush_guest();
        }
    }
}

impl vmexit::Vcpu for Vcpu {
    fn index(&self) -> usize {
        self.index as usize
    }

    fn gpr(&self, index: u8) -> u64 {
        let g = &self.gprs;
        match index & 15 {
            0 => self.vmcb().save.rax,
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => self.vmcb().save.rsp,
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8 => g.r8,
            9 => g.r9,
            10 => g.r10,
            11 => g.r11,
            12 => g.r12,
            13 => g.r13,
            14 => g.r14,
            _ => g.r15,
        }
    }

    fn set_gpr(&mut self, index: u8, value: u64) {
        let g = &mut self.gprs;
        let slot = match index & 15 {
            0 => {
                self.vmcb_mut().save.rax = value;
                return;
            }
            4 => {
                self.vmcb_mut().save.rsp = value;
                return;
            }
            1 => &mut g.rcx,
            2 => &mut g.rdx,
            3 => &mut g.rbx,
            5 => &mut g.rbp,
            6 => &mut g.rsi,
            7 => &mut g.rdi,
            8 => &mut g.r8,
            9 => &mut g.r9,
            10 => &mut g.r10,
            11 => &mut g.r11,
            12 => &mut g.r12,
            13 => &mut g.r13,
            14 => &mut g.r14,
            _ => &mut g.r15,
        };
        *slot = value;
    }

    fn rip(&self) -> u64 {
        self.vmcb().save.rip
    }

    fn set_rip(&mut self, rip: u64) {
        let vmcb = self.vmcb_mut();
        vmcb.save.rip = rip;
        vmcb.control.interrupt_shadow &= !INTERRUPT_SHADOW;
    }

    fn skip_instruction(&mut self) {
        match self.next_rip {
            Some(next) => self.set_rip(next),
            // vmexit decodes the length first where the CPU did not say
            // (`instruction_length_unknown`); reaching here without it is a
            // Basalt bug, and not moving RIP repeats the instruction.
            None => log::error!("svm: vCPU {} skipped an instruction of unknown length", self.index),
        }
    }

    fn instruction_length_unknown(&self) -> bool {
        self.next_rip.is_none()
    }

    fn set_instruction_length(&mut self, length: u8) {
        self.next_rip = Some(self.rip().wrapping_add(length as u64));
    }

    /// EXITINFO1's address-size and segment fields are defined only with
    /// decode assists (QEMU's TCG fills them wrongly without).
    fn reports_string_io_operands(&self) -> bool {
        cpu::capabilities().is_ok_and(|caps| caps.decode_assists())
    }

    fn rflags(&self) -> u64 {
        self.vmcb().save.rflags
    }

    /// RFLAGS is not in a VMCB clean-bits group: VMRUN always loads it.
    fn set_rflags(&mut self, value: u64) {
        self.vmcb_mut().save.rflags = value;
    }

    fn cpl(&self) -> u8 {
        self.vmcb().save.cpl & 3
    }

    fn segment_base(&self, segment: SegmentRegister) -> u64 {
        let s = &self.vmcb().save;
        match segment {
            SegmentRegister::Es => s.es.base,
            SegmentRegister::Cs => s.cs.base,
            SegmentRegister::Ss => s.ss.base,
            SegmentRegister::Ds => s.ds.base,
            SegmentRegister::Fs => s.fs.base,
            SegmentRegister::Gs => s.gs.base,
        }
    }

    fn code_size(&self) -> CodeSize {
        let s = &self.vmcb().save;
        if s.efer & efer::LMA != 0 && s.cs.attrib & ATTRIB_LONG != 0 {
            CodeSize::Bits64
        } else if s.cr0 & cr0::PE != 0 && s.cs.attrib & ATTRIB_DEFAULT_32 != 0 {
            CodeSize::Bits32
        } else {
            CodeSize::Bits16
        }
    }

    fn cr4(&self) -> u64 {
        self.vmcb().save.cr4
    }

    fn control(&self) -> Context {
        let s = &self.vmcb().save;
        Context {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            long_mode_enabled: s.efer & efer::LME != 0,
            long_mode_active: s.efer & efer::LMA != 0,
            code_64: s.cs.attrib & ATTRIB_LONG != 0,
        }
    }

    /// Without SVME, which VMRUN requires and guests do not see.
    fn efer(&self) -> u64 {
        self.vmcb().save.efer & !svm::caps::EFER_SVME
    }

    fn fetch_memo(&mut self) -> Option<&mut vmexit::FetchMemo> {
        Some(&mut self.fetch_memo)
    }

    /// Nested paging loads PAE paging's PDPTEs from guest memory (`None`).
    fn paging(&self) -> Paging {
        let s = &self.vmcb().save;
        Paging {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer & !svm::caps::EFER_SVME,
            pdptes: None,
            max_phys_bits: crate::vmm::host::max_phys_bits(),
        }
    }

    /// SVM has no read shadows and no bits it forces: the guest's CR0 is the
    /// real one while it runs (VMRUN and #VMEXIT switch CR0, so its CD/NW act
    /// on its own accesses only).
    fn set_cr0(&mut self, value: u64) {
        self.vmcb_mut().save.cr0 = value;
        self.flush_guest_tlb();
    }

    fn set_cr4(&mut self, value: u64) {
        self.vmcb_mut().save.cr4 = value;
        self.flush_guest_tlb();
    }

    fn set_efer(&mut self, value: u64) {
        self.vmcb_mut().save.efer = value | svm::caps::EFER_SVME;
        self.flush_guest_tlb();
    }

    fn set_cr2(&mut self, value: u64) {
        self.vmcb_mut().save.cr2 = value;
    }

    fn xcr0(&self) -> u64 {
        self.switched.xcr0
    }

    fn set_xcr0(&mut self, value: u64) {
        self.switched.set_xcr0(value);
    }

    /// VMRUN adds the VMCB's TSC offset to RDTSC and RDTSCP (RDMSR of the
    /// TSC is intercepted anyway). No clean bits are used, so a change is
    /// loaded at the next VMRUN.
    fn tsc_offset(&self) -> u64 {
        self.vmcb().control.tsc_offset.wrapping_add(self.time_base)
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        self.vmcb_mut().control.tsc_offset = offset.wrapping_sub(self.time_base);
    }

    /// DR0-DR3 are the guest's on the core while its vCPU runs (vmm::switch);
    /// DR7 is in the VMCB.
    fn debug_registers(&self) -> DebugRegisters {
        DebugRegisters { dr: crate::vmm::switch::guest_breakpoint_addresses(), dr7: self.vmcb().save.dr7 }
    }

    /// DR6 and DR7 are in the VMCB: written as the CPU would for the #DB,
    /// which goes in through EVENTINJ (and ends a HLT).
    fn raise_debug_trap(&mut self, conditions: u64) {
        let s = &mut self.vmcb_mut().save;
        s.dr6 = arch::control::dr6_after_debug_exception(s.dr6, conditions);
        s.dr7 &= !arch::debug::dr7::GD;
        self.inject_exception(vmexit::DB, None);
        self.halted = false;
    }

    fn pending(&mut self) -> &mut PendingEvents {
        &mut self.pending
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.vmcb_mut().control.event_inj = Event::exception(vector, error_code.unwrap_or(0)).encode();
    }

    /// The CPU has already updated DR6 in the VMCB for an intercepted #DB;
    /// both go back as the hardware exceptions they were (a #DB clearing
    /// DR7.GD as its delivery would).
    fn reflect_exception(&mut self, vector: u8, error_code: Option<u32>) {
        if vector == vmexit::DB {
            self.vmcb_mut().save.dr7 &= !arch::debug::dr7::GD;
        }
        self.inject_exception(vector, error_code);
        self.halted = false;
    }

    fn injection_pending(&self) -> bool {
        self.vmcb().control.event_inj & EVENT_VALID != 0
    }

    fn interrupt_shadow(&self) -> bool {
        self.vmcb().control.interrupt_shadow & INTERRUPT_SHADOW != 0
    }

    fn nmi_blocked(&self) -> bool {
        self.nmi_masked
    }

    fn inject_nmi(&mut self) {
        self.vmcb_mut().control.event_inj = Event::nmi().encode();
        self.nmi_masked = true;
        self.halted = false;
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.vmcb_mut().control.event_inj = Event::external_interrupt(vector).encode();
        self.halted = false;
    }

    /// A virtual interrupt request (V_IRQ) the guest takes as soon as it can,
    /// with VINTR intercepted: the exit comes at that moment, before any
    /// vector is delivered, and the VMM injects the real one.
    fn request_interrupt_window(&mut self, on: bool) {
        let c = &mut self.vmcb_mut().control;
        c.vintr = if on { c.vintr.with_irq(0, 0xf, true) } else { c.vintr.without_irq() };
        if self.wants.interrupt_window != on {
            self.wants.interrupt_window = on;
            self.write_intercepts();
        }
    }

    /// NMIs unblock when the guest's NMI handler returns: its IRET exits,
    /// then the guest is stepped over it (SVM has no NMI-window exit).
    fn request_nmi_window(&mut self, on: bool) {
        if on && self.iret_in_flight.is_some() {
            self.begin_singlestep();
        } else {
            self.set_iret_intercept(on && self.nmi_masked);
        }
    }

    fn halt(&mut self) {
        self.halted = true;
    }
}

impl Backend for Vcpu {
    fn switch_in(&mut self, vm_id: u64) -> Result<(), Stop> {
        self.host = Some(self.switched.switch_in(vm_id));
        self.timer_fires_at = 0;
        // The core's TLB may hold this ASID's entries from another vCPU that
        // had it before (ASIDs wrap) or from this vCPU's last stay here.
        self.flush_guest_tlb();
        Ok(())
    }

    fn switch_out(&mut self) {
        if let Some(host) = self.host.take() {
            self.switched.switch_out(host);
        }
    }

    fn set_time_base(&mut self, base: u64) {
        let offset = vmexit::Vcpu::tsc_offset(self);
        self.time_base = base;
        vmexit::Vcpu::set_tsc_offset(self, offset);
    }

    fn halted(&self) -> bool {
        self.halted
    }

    /// The host's local APIC timer, one-shot, brings the core back by the
    /// deadline (the guest exits on the interrupt).
    /// Reprogrammed only when the timer already armed would fire after the
    /// new wake-up, or is no longer counting: most exits leave the deadline
    /// as it was, and an earlier expiry only brings one more exit. The count
    /// is looked at, not only the TSC it was armed for: the APIC timer's
    /// clock and the TSC are calibrated against each other, so it may fire
    /// a little before that TSC, and a vCPU halted alone on its core would
    /// then wait in the host with no timer at all.
    fn arm_timer(&mut self, now: u64, deadline: u64) {
        let tsc_ticks = deadline.saturating_sub(now);
        let wake = now.saturating_add(tsc_ticks);
        if self.timer_fires_at > now && self.timer_fires_at <= wake && crate::apic::timer_current() != 0 {
            return;
        }
        crate::apic::timer_one_shot_tsc(tsc_ticks);
        self.timer_fires_at = wake;
    }

    fn enter(&mut self) -> Result<Exit, Stop> {
        if self.halted {
            if !vmexit::Vcpu::injection_pending(self) {
                // Waits in the host for what can end the HLT: the timer armed
                // for the VM's next deadline, a kick from another vCPU, the
                // host's tick. The run loop then looks for events again.
                x86_64::instructions::interrupts::enable_and_hlt();
                x86_64::instructions::interrupts::disable();
                return Ok(Exit::Timer);
            }
            self.halted = false;
        }
        self.run_guest();
        if crate::vmm::run::profiling_loop() {
            self.left_guest_at = crate::time::rdtsc();
        }
        self.vmcb_mut().control.tlb_control = tlb_control::DO_NOTHING;
        Ok(exit::translate(self))
    }

    fn counters(&mut self) -> &mut ExitCounters {
        &mut self.counters
    }

    /// None after a HLT waited in the host: the wait is not the VMM's work.
    fn left_guest_at(&self) -> Option<u64> {
        Some(self.left_guest_at).filter(|_| !self.halted)
    }
}
