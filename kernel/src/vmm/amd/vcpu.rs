//! An SVM vCPU: its VMCB (intercepts, nested paging, the guest's initial
//! state), the guest registers VMRUN does not switch, and the stub that runs
//! the guest. The I/O and MSR permission maps are the same for every vCPU and
//! made once.

use super::cpu;
use crate::memory::{self, FRAME_SIZE};
use crate::vmm::counters::ExitCounters;
use crate::vmm::guest_msrs::{self, DEFAULT_PAT, IA32_SPEC_CTRL, IA32_TSC_AUX};
use crate::vmm::switch::{HostState, SwitchedState};
use crate::vmm::vm::Stop;
use arch::control::cr0::{CD as CR0_CD, NW as CR0_NW};
use core::sync::atomic::{AtomicU32, Ordering};
use devices::PendingEvents;
use svm::vmcb::{tlb_control, NP_ENABLE};
use svm::{maps, Intercepts, Segment, Vmcb, Wants};
use vmx::guest_state::GuestState;

/// What neither VMRUN nor VMLOAD/VMSAVE switch (the SYSCALL MSRs and
/// KERNEL_GS_BASE are VMLOAD/VMSAVE's); SPEC_CTRL (last) where the CPU has it.
static SWITCHED_MSRS: [u32; 2] = [IA32_TSC_AUX, IA32_SPEC_CTRL];

/// The permission maps every vCPU uses: every port intercepted; every MSR
/// but the pass-through ones. Made once, when SVM is turned on for the
/// first core (`make_permission_maps`), so no VM's start takes host memory
/// it does not give back; never written again, never freed.
struct PermissionMaps {
    io: u64,
    msr: u64,
}

/// Makes the permission maps if they are not made yet.
pub fn make_permission_maps() -> Result<(), alloc::string::String> {
    permission_maps().map(|_| ()).map_err(|stop| alloc::format!("{stop}"))
}

fn permission_maps() -> Result<&'static PermissionMaps, Stop> {
    static MAPS: spin::Once<Option<PermissionMaps>> = spin::Once::new();
    MAPS.call_once(|| {
        let io = memory::alloc_run(maps::io::SIZE / FRAME_SIZE as usize, 1)?;
        let msr = memory::alloc_run(maps::msr::SIZE / FRAME_SIZE as usize, 1)?;
        // SAFETY: both runs are fresh, contiguous and exactly the maps' sizes,
        // reached through the physical mapping; nothing else refers to them yet.
        let (io_map, msr_map) = unsafe {
            (
                &mut *(memory::phys_to_virt(io) as *mut [u8; maps::io::SIZE]),
                &mut *(memory::phys_to_virt(msr) as *mut [u8; maps::msr::SIZE]),
            )
        };
        maps::io::intercept_all(io_map);
        maps::msr::intercept_all(msr_map);
        for m in guest_msrs::passthrough() {
            maps::msr::pass_through(msr_map, m, true, true).ok()?;
        }
        Some(PermissionMaps { io, msr })
    })
    .as_ref()
    .ok_or_else(|| Stop::Unsupported("out of host memory for the SVM permission maps".into()))
}

/// The general-purpose registers VMRUN leaves alone (RAX and RSP are in the
/// VMCB), in the order the run stub saves them.
#[repr(C)]
#[derive(Default)]
pub struct GuestGprs {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

static NEXT_ASID: AtomicU32 = AtomicU32::new(1);

pub struct Vcpu {
    pub index: u32,
    /// Physical address of the VMCB (one frame).
    vmcb: u64,
    pub(super) gprs: GuestGprs,
    pub counters: ExitCounters,
    /// `profile=loop`: the TSC when the guest last exited.
    pub(super) left_guest_at: u64,
    pub(super) switched: SwitchedState,
    pub(super) host: Option<HostState>,
    pub pending: PendingEvents,
    /// Its last MMIO instruction's translation and decoding (`vmexit::FetchMemo`).
    pub(super) fetch_memo: vmexit::FetchMemo,
    /// The intercepts that vary: the interrupt window, and IRET while the
    /// guest's NMI handler runs with another NMI waiting.
    pub(super) wants: Wants,
    pub(super) iret_intercept: bool,
    /// An NMI was injected and its handler has not returned (SVM without
    /// virtual NMIs does not track this itself).
    pub(super) nmi_masked: bool,
    /// The guest's IRET that ends its NMI handler, at this RIP, is about to
    /// run: NMIs are unmasked at the first exit with RIP elsewhere.
    pub(super) iret_in_flight: Option<u64>,
    /// Single-stepping over that IRET because an NMI waits: the guest's
    /// RFLAGS and DR6 from before the step, to put back after it.
    pub(super) nmi_singlestep: Option<(u64, u64)>,
    /// The guest executed HLT and waits for an event (SVM has no halted
    /// state to enter the guest in).
    pub(super) halted: bool,
    /// RIP after the instruction that exited, when known at the exit (IOIO,
    /// next-RIP save); otherwise `skip_instruction` decodes it.
    pub(super) next_rip: Option<u64>,
    /// Host TSC at which the one-shot host APIC timer armed for this vCPU
    /// fires (0: none armed since it came onto the core).
    pub(super) timer_fires_at: u64,
    /// Host TSC ticks its VM spent paused: the VMCB's TSC offset is the
    /// guest's (as `tsc_offset` gives it) less this (see `Backend::set_time_base`).
    pub(super) time_base: u64,
}

impl Vcpu {
    pub fn new(index: u32) -> Result<Vcpu, Stop> {
        cpu::capabilities().map_err(|e| Stop::Unsupported(e.into()))?;
        let out_of_memory = || Stop::Unsupported("out of host memory".into());
        Ok(Vcpu {
            index,
            vmcb: memory::alloc_frame().ok_or_else(out_of_memory)?,
            gprs: GuestGprs::default(),
            counters: ExitCounters::new(),
            left_guest_at: 0,
            switched: SwitchedState::new(guest_msrs::switched(&SWITCHED_MSRS)).ok_or_else(out_of_memory)?,
            host: None,
            pending: PendingEvents::default(),
            fetch_memo: vmexit::FetchMemo::default(),
            wants: Wants::default(),
            iret_intercept: false,
            nmi_masked: false,
            iret_in_flight: None,
            nmi_singlestep: None,
            halted: false,
            next_rip: None,
            timer_fires_at: 0,
            time_base: 0,
        })
    }

    pub(super) fn vmcb(&self) -> &Vmcb {
        // SAFETY: the frame is this vCPU's VMCB, reached through the physical
        // mapping; the CPU writes it only inside VMRUN, when no reference is held.
        unsafe { &*(memory::phys_to_virt(self.vmcb) as *const Vmcb) }
    }

    pub(super) fn vmcb_mut(&mut self) -> &mut Vmcb {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { &mut *(memory::phys_to_virt(self.vmcb) as *mut Vmcb) }
    }

    /// Writes the whole VMCB: intercepts, permission maps, nested paging with
    /// `ncr3` as its root, a fresh ASID, and the guest's initial state.
    pub fn setup(&mut self, ncr3: u64, state: &GuestState) -> Result<(), Stop> {
        let caps = cpu::capabilities().map_err(|e| Stop::Unsupported(e.into()))?;
        let maps = permission_maps()?;
        let asid = loop {
            let asid = NEXT_ASID.fetch_add(1, Ordering::Relaxed) % (caps.max_guest_asid() + 1);
            if asid != 0 {
                break asid;
            }
        };
        let vmcb = self.vmcb_mut();
        *vmcb = Vmcb::new();
        let c = &mut vmcb.control;
        c.iopm_base_pa = maps.io;
        c.msrpm_base_pa = maps.msr;
        c.guest_asid = asid;
        // ASIDs are reused (they wrap, and VMs end): nothing cached under this
        // one may survive into the first run (see also switch_in).
        c.tlb_control = tlb_control::FLUSH_ALL;
        c.nested_control = NP_ENABLE;
        c.n_cr3 = ncr3;
        // The guest's IF and CR8 act on virtual copies: it cannot mask the
        // host's interrupts, which exit (INTR).
        c.vintr = c.vintr.with_masking(true);
        // A vCPU spinning in a PAUSE loop gives its core up (`Outcome::Yield`),
        // where the CPU can tell a loop from a PAUSE: with the pause filter
        // (KVM's defaults: 3000 PAUSEs, at most 128 cycles apart if it can
        // time them). Without it every PAUSE would exit, so none does.
        if caps.pause_filter() {
            c.pause_filter_count = 3000;
            c.pause_filter_threshold = if caps.pause_filter_threshold() { 128 } else { 0 };
        }

        let s = &mut vmcb.save;
        let segment =
            |seg: &vmx::guest_state::Segment| Segment::from_vmx(seg.selector, seg.access_rights, seg.limit, seg.base);
        s.es = segment(&state.es);
        s.cs = segment(&state.cs);
        s.ss = segment(&state.ss);
        s.ds = segment(&state.ds);
        s.fs = segment(&state.fs);
        s.gs = segment(&state.gs);
        s.tr = segment(&state.tr);
        s.ldtr = segment(&state.ldtr);
        s.gdtr = Segment::new(0, 0, state.gdtr_limit, state.gdtr_base);
        s.idtr = Segment::new(0, 0, state.idtr_limit, state.idtr_base);
        s.cpl = if state.cr0 & 1 != 0 { ((state.ss.access_rights >> 5) & 3) as u8 } else { 0 };
        // VMRUN requires SVME in the guest's EFER; the guest never sees it.
        s.efer = state.efer | svm::caps::EFER_SVME;
        // Caches on, as firmware leaves them.
        s.cr0 = state.cr0 & !(CR0_CD | CR0_NW);
        s.cr3 = state.cr3;
        s.cr4 = state.cr4;
        s.dr6 = 0xffff_0ff0;
        s.dr7 = 0x400;
        s.rflags = state.rflags;
        s.rip = state.rip;
        s.rsp = state.rsp;
        s.rax = 0;
        s.g_pat = DEFAULT_PAT;
        self.gprs = GuestGprs::default();
        (self.wants, self.iret_intercept) = (Wants::default(), false);
        self.write_intercepts();
        (self.nmi_masked, self.iret_in_flight, self.nmi_singlestep) = (false, None, None);
        (self.halted, self.next_rip) = (false, None);
        Ok(())
    }

    /// Basalt's intercept set with what varies, CR8 accesses, and #UD: a
    /// guest's VMCALL (Intel's hypercall instruction) raises it on AMD, and
    /// the exit layer makes it the hypercall it was meant to be.
    pub(super) fn write_intercepts(&mut self) {
        let mut intercepts = Intercepts::basalt(Wants { cr8_writes: true, ..self.wants });
        intercepts.exceptions |= svm::intercepts::exception(vmexit::UD);
        // CR8 reads too: the local APIC model's TPR is the guest's, and V_TPR
        // (which V_INTR_MASKING gives the guest's CR8) would drift from it.
        intercepts.cr |= svm::intercepts::CrIntercepts::READ_CR8;
        if self.iret_intercept {
            intercepts.misc1 |= svm::intercepts::Misc1::IRET;
        }
        if self.vmcb().control.pause_filter_count != 0 {
            intercepts.misc1 |= svm::intercepts::Misc1::PAUSE;
        }
        intercepts.write_to(&mut self.vmcb_mut().control);
    }

    /// Runs the guest once (VMRUN to #VMEXIT).
    pub(super) fn run_guest(&mut self) {
        let host_area = cpu::host_save_area();
        // SAFETY: the VMCB is set up (`setup`), SVM is on (EFER.SVME) with a
        // host save area on this core, and `host_area` is this core's VMSAVE
        // page. Called with interrupts disabled; the stub keeps interrupts and
        // NMIs held (GIF = 0) while the guest's segment state is loaded, and
        // restores the host's, with IF clear again, before it sets GIF.
        unsafe { basalt_svm_run(&mut self.gprs, self.vmcb, host_area) };
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        memory::free_frame(self.vmcb);
    }
}

extern "sysv64" {
    /// Saves the host's VMSAVE state to `host_area`, loads the guest's (VMLOAD),
    /// runs it (VMRUN) with the registers in `gprs`, saves its VMLOAD state
    /// back to the VMCB and its registers to `gprs`, and restores the host's.
    fn basalt_svm_run(gprs: *mut GuestGprs, vmcb: u64, host_area: u64);
}

core::arch::global_asm!(
    ".global basalt_svm_run",
    "basalt_svm_run:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    // [rsp+16] = gprs, [rsp+8] = host area, [rsp] = VMCB.
    "push rdi",
    "push rdx",
    "push rsi",
    "clgi",
    // With V_INTR_MASKING the host's IF at VMRUN is what lets a physical
    // interrupt make the guest exit: it must be set, and GIF = 0 holds every
    // interrupt off until VMRUN sets GIF for the guest. Set here, well before
    // VMRUN: QEMU's TCG before 9.1 carries an STI's one-instruction shadow
    // into the guest (its VMRUN neither clears it nor loads the VMCB's), and
    // a guest entered at its own STI would then get no shadow of its own.
    // (A guest entered inside its own shadow is `events::complete_shadowed_hlt`'s.)
    "sti",
    "mov rax, rdx",
    "vmsave rax",
    "mov rax, rsi",
    "vmload rax",
    "mov rbx, [rdi + 0]",
    "mov rcx, [rdi + 8]",
    "mov rdx, [rdi + 16]",
    "mov rsi, [rdi + 24]",
    "mov rbp, [rdi + 40]",
    "mov r8, [rdi + 48]",
    "mov r9, [rdi + 56]",
    "mov r10, [rdi + 64]",
    "mov r11, [rdi + 72]",
    "mov r12, [rdi + 80]",
    "mov r13, [rdi + 88]",
    "mov r14, [rdi + 96]",
    "mov r15, [rdi + 104]",
    "mov rdi, [rdi + 32]",
    "vmrun rax",
    "cli",
    // #VMEXIT: RSP is the host's again; every other register but RAX holds
    // the guest's value. [rsp] = guest RDI after this push.
    "push rdi",
    "mov rax, [rsp + 8]",
    "vmsave rax",
    "mov rdi, [rsp + 24]",
    "mov [rdi + 0], rbx",
    "mov [rdi + 8], rcx",
    "mov [rdi + 16], rdx",
    "mov [rdi + 24], rsi",
    "mov [rdi + 40], rbp",
    "mov [rdi + 48], r8",
    "mov [rdi + 56], r9",
    "mov [rdi + 64], r10",
    "mov [rdi + 72], r11",
    "mov [rdi + 80], r12",
    "mov [rdi + 88], r13",
    "mov [rdi + 96], r14",
    "mov [rdi + 104], r15",
    "pop rax",
    "mov [rdi + 32], rax",
    "mov rax, [rsp + 8]",
    "vmload rax",
    "stgi",
    "add rsp, 24",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
);
