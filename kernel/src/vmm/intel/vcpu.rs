//! A VT-x vCPU: its VMCS (controls, host state, the guest's initial state),
//! MSR bitmap, virtual-APIC page, and the guest registers the entry stub
//! switches.

use super::cpu::{self, ENTRY_IA32E_MODE_GUEST};
use crate::memory;
use crate::vmm::counters::ExitCounters;
use crate::vmm::guest_msrs::{self, DEFAULT_PAT, IA32_PAT, IA32_SPEC_CTRL, IA32_TSC_AUX};
use crate::vmm::switch::SwitchedState;
use crate::vmm::vm::Stop;
use arch::control::cr0::{CD as CR0_CD, NW as CR0_NW};
use core::sync::atomic::{AtomicU16, Ordering};
use devices::PendingEvents;
use vmx::guest_state::GuestState;
use vmx::instructions::{self as vmxi, GuestRegisters};
use vmx::vmcs::{self, Field};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, GsBase, Msr};

/// MSRs VMX does not switch but a guest may write freely: saved and restored
/// around each run of a vCPU, so no value leaks between VMs or into the host.
/// IA32_SPEC_CTRL (last) joins them on CPUs that have it.
static SWITCHED_MSRS: [u32; 7] =
    [0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102, IA32_TSC_AUX, IA32_SPEC_CTRL];
const EXCEPTION_DB: u64 = 1 << 1;
const EXCEPTION_AC: u64 = 1 << 17;

static NEXT_VPID: AtomicU16 = AtomicU16::new(1);

/// PAUSE-loop exiting's window (TSC cycles of spinning before the exit):
/// KVM's first value, doubled while the vCPU is alone on its core when its
/// loops exit, up to KVM's limit, and back to the first after a yield.
pub(super) const PLE_WINDOW_FIRST: u32 = 4096;
pub(super) const PLE_WINDOW_MAX: u32 = 1 << 30;

pub struct Vcpu {
    pub index: u32,
    /// Its PAUSE-loop window now (see `PLE_WINDOW_FIRST`).
    pub(super) ple_window: u32,
    /// Host TSC ticks its VM spent paused: the hardware TSC offset is the
    /// guest's (as `tsc_offset` gives it) less this (see `Backend::set_time_base`).
    pub(super) time_base: u64,
    vmcs: u64,
    msr_bitmap: u64,
    /// APIC virtualisation: this vCPU's virtual-APIC page, when the VMCS uses it.
    virtual_apic: Option<u64>,
    /// The virtual-APIC page has never been written: the next mirror is whole.
    virtual_apic_blank: bool,
    /// The CPU can deliver this vCPU's APIC interrupts (virtual-interrupt
    /// delivery), and does while the APIC is in xAPIC mode (`delivery_on`).
    delivery_capable: bool,
    delivery_on: bool,
    /// The EOI-exit bitmap last written (the level-triggered vectors).
    eoi_exit_bitmap: [u64; 4],
    /// Virtual-interrupt delivery: RVI and SVI as last written or read.
    interrupt_status: u16,
    /// The guest was put in the HLT activity state since the last mirror.
    pub(super) halt_requested: bool,
    pub(super) launched: bool,
    /// The core it last ran on: host state is per core (GS base, TR, GDTR,
    /// IDTR), and translations cached under its VPID on a core it left may
    /// be stale when it comes back (the guest flushed elsewhere).
    pub(super) last_core: Option<u32>,
    /// What `flush_cached_translations` needs: EPTP, VPID, secondary controls.
    tags: (u64, u16, u32),
    pub regs: GuestRegisters,
    pub counters: ExitCounters,
    /// `profile=loop`: the TSC when the guest last exited.
    pub(super) left_guest_at: u64,
    /// Guest state VMX does not switch and the host never uses: loaded when the
    /// vCPU starts running on a core, saved and cleared when it leaves.
    pub(super) switched: SwitchedState,
    /// The host's share of it while this vCPU is on the core.
    pub(super) host: Option<crate::vmm::switch::HostState>,
    /// Events waiting to be delivered (vmexit::events::deliver_pending).
    pub pending: PendingEvents,
    /// Its last MMIO instruction's translation and decoding (`vmexit::FetchMemo`).
    pub(super) fetch_memo: vmexit::FetchMemo,
}

/// VMWRITE to the current VMCS. A failure (a read-only field, a field this CPU
/// lacks) is a Basalt bug: logged, never silently dropped. Inline, as
/// `read`: both are on every exit's path, a few instructions each.
#[inline]
pub fn write(field: Field, value: u64) {
    // SAFETY: called with this vCPU's VMCS current (setup, the run loop and the
    // exit handlers); the values are consistent with the controls set in `setup`.
    if let Err(e) = unsafe { vmxi::vmwrite(field, value) } {
        log::error!("VMWRITE {} = {value:#x} failed: {e}", vmcs::name(field));
    }
}

#[inline]
pub fn read(field: Field) -> u64 {
    // SAFETY: called with a current VMCS; unsupported fields read as 0.
    unsafe { vmxi::vmread(field) }.unwrap_or(0)
}

/// The CPU caches guest translations tagged by EPTP and VPID. A new VM's EPT root
/// may sit in a frame an earlier VM used, and VPIDs wrap, so drop anything cached
/// under either tag before the first entry.
fn flush_cached_translations(caps: &vmx::VmxCapabilities, eptp: u64, vpid: u16, secondary: u32) {
    use vmx::instructions::{invept, invvpid, InvEptType, InvVpidType};
    use vmx::EptVpidCaps;
    let ept = if caps.ept_vpid.contains(EptVpidCaps::INVEPT_SINGLE_CONTEXT) {
        InvEptType::SingleContext
    } else {
        InvEptType::AllContexts
    };
    // SAFETY: in VMX root operation; INVEPT is required for EPT, which setup requires.
    if let Err(e) = unsafe { invept(ept, eptp) } {
        log::warn!("INVEPT failed: {e}");
    }
    let vpid_on = secondary & vmx::SecondaryControls::ENABLE_VPID.bits() != 0;
    if vpid_on && caps.ept_vpid.contains(EptVpidCaps::INVVPID) {
        let kind = if caps.ept_vpid.contains(EptVpidCaps::INVVPID_SINGLE_CONTEXT) {
            InvVpidType::SingleContext
        } else {
            InvVpidType::AllContexts
        };
        // SAFETY: as above; the CPU reports INVVPID support.
        if let Err(e) = unsafe { invvpid(kind, vpid, 0) } {
            log::warn!("INVVPID failed: {e}");
        }
    }
}

impl Vcpu {
    /// A new PAUSE-loop window, into the VMCS (current while the vCPU runs).
    pub(super) fn set_ple_window(&mut self, window: u32) {
        if window != self.ple_window {
            self.ple_window = window;
            write(vmcs::PLE_WINDOW, window as u64);
        }
    }

    /// A vCPU with its frames, to be set up (`setup`) before it runs.
    pub fn new(index: u32) -> Result<Vcpu, Stop> {
        let vmx = cpu::vmx().map_err(|e| Stop::Unsupported(e.into()))?;
        let out_of_memory = || Stop::Unsupported("out of host memory".into());
        let frame = || memory::alloc_frame().ok_or_else(out_of_memory);
        let vcpu = Vcpu {
            index,
            ple_window: PLE_WINDOW_FIRST,
            time_base: 0,
            vmcs: frame()?,
            msr_bitmap: frame()?,
            virtual_apic: None,
            virtual_apic_blank: false,
            delivery_capable: false,
            delivery_on: false,
            eoi_exit_bitmap: [0; 4],
            interrupt_status: 0,
            halt_requested: false,
            launched: false,
            last_core: None,
            tags: (0, 0, 0),
            regs: GuestRegisters::default(),
            counters: ExitCounters::new(),
            left_guest_at: 0,
            switched: SwitchedState::new(guest_msrs::switched(&SWITCHED_MSRS)).ok_or_else(out_of_memory)?,
            host: None,
            pending: PendingEvents::default(),
            fetch_memo: vmexit::FetchMemo::default(),
        };
        // SAFETY: fresh frames owned by this vCPU.
        unsafe {
            (memory::phys_to_virt(vcpu.vmcs) as *mut u32).write(vmx.caps.basic.revision_id);
            // Intercept every MSR, then open the pass-through ones.
            let bitmap = core::slice::from_raw_parts_mut(memory::phys_to_virt(vcpu.msr_bitmap) as *mut u8, 4096);
            bitmap.fill(0xff);
            for msr in guest_msrs::passthrough() {
                let (base, bit) = if msr >= 0xc000_0000 { (1024, msr - 0xc000_0000) } else { (0, msr) };
                for offset in [base, base + 2048] {
                    bitmap[offset + (bit / 8) as usize] &= !(1 << (bit % 8));
                }
            }
        }
        Ok(vcpu)
    }

    pub(super) fn make_current(&self) -> Result<(), Stop> {
        // SAFETY: the VMCS region is ours with the revision id written.
        unsafe { vmxi::vmptrld(self.vmcs) }.map_err(|e| Stop::EntryFailed(alloc::format!("VMPTRLD: {e}")))
    }

    /// Makes the VMCS current on this core; on a core other than the last,
    /// with this core's host state and no translation cached under its
    /// tags from an earlier stay here.
    pub(super) fn arrive(&mut self) -> Result<(), Stop> {
        self.make_current()?;
        let core = crate::percpu::current_index();
        if self.last_core != Some(core) {
            self.write_host_state();
            if let Ok(vmx) = cpu::vmx() {
                let (eptp, vpid, secondary) = self.tags;
                flush_cached_translations(&vmx.caps, eptp, vpid, secondary);
            }
            self.last_core = Some(core);
        }
        Ok(())
    }

    /// VMCLEAR: the VMCS's state goes to memory and it is no longer active
    /// on this core; the next entry, on any core, is a VMLAUNCH.
    pub(super) fn leave(&mut self) {
        // SAFETY: the region is ours and holds a VMCS (set up before).
        if let Err(e) = unsafe { vmxi::vmclear(self.vmcs) } {
            log::error!("VMCLEAR failed: {e}");
        }
        self.launched = false;
    }

    /// Writes the whole VMCS: controls, host state and the guest's initial state.
    /// With `apic_access_page` (the VM's, see `GuestMemory::map_apic_access_page`)
    /// the vCPU gets APIC virtualisation.
    pub fn setup(&mut self, eptp: u64, apic_access_page: Option<u64>, state: &GuestState) -> Result<(), Stop> {
        let vmx = cpu::vmx().map_err(|e| Stop::Unsupported(e.into()))?;
        let unrestricted_cr0 = vmx.caps.cr0.for_unrestricted_guest_cr0();
        let mut fixed = *state;
        fixed.cr0 = unrestricted_cr0.apply(state.cr0) & !(CR0_CD | CR0_NW);
        fixed.cr4 = vmx.caps.cr4.apply(state.cr4);
        fixed.check(&vmx.caps, true).map_err(|e| Stop::InvalidGuestState(alloc::format!("{e}")))?;

        // SAFETY: the region is ours; VMCLEAR initialises it before first use.
        unsafe { vmxi::vmclear(self.vmcs) }.map_err(|e| Stop::EntryFailed(alloc::format!("VMCLEAR: {e}")))?;
        self.make_current()?;
        self.launched = false;

        let mut c = vmx.controls;
        let vpid = NEXT_VPID.fetch_add(1, Ordering::Relaxed);
        if vpid == 0 {
            c.secondary &= !vmx::SecondaryControls::ENABLE_VPID.bits();
        }
        match apic_access_page.filter(|_| c.apic_virtualization) {
            Some(page) => {
                let frame = match self.virtual_apic {
                    Some(frame) => frame,
                    None => memory::alloc_frame().ok_or_else(|| Stop::Unsupported("out of host memory".into()))?,
                };
                self.virtual_apic = Some(frame);
                self.virtual_apic_blank = true;
                // Turned on at the first entry in xAPIC mode (`mirror_local_apic`).
                self.delivery_capable = c.virtual_interrupt_delivery;
                self.delivery_on = false;
                write(vmcs::APIC_ACCESS_ADDRESS, page);
                write(vmcs::VIRTUAL_APIC_ADDRESS, frame);
                write(vmcs::TPR_THRESHOLD, 0);
            }
            None => c = c.without_apic_virtualization(),
        }
        write(vmcs::PIN_BASED_CONTROLS, c.pin as u64);
        write(vmcs::PRIMARY_PROCESSOR_CONTROLS, c.primary as u64);
        write(vmcs::SECONDARY_PROCESSOR_CONTROLS, c.secondary as u64);
        if c.secondary & vmx::SecondaryControls::PAUSE_LOOP_EXITING.bits() != 0 {
            // KVM's defaults: PAUSEs at most 128 TSC cycles apart are one loop,
            // and a loop longer than 4096 cycles exits.
            write(vmcs::PLE_GAP, 128);
            write(vmcs::PLE_WINDOW, PLE_WINDOW_FIRST as u64);
        }
        write(vmcs::EXIT_CONTROLS, c.exit as u64);
        write(vmcs::ENTRY_CONTROLS, (c.entry | if state.ia32e { ENTRY_IA32E_MODE_GUEST } else { 0 }) as u64);
        write(vmcs::VPID, vpid as u64);
        // The guest's TSC starts as the host's (TSC_ADJUST = 0).
        write(vmcs::TSC_OFFSET, 0);
        // #DB and #AC exit (and are passed back, exits/interrupts.rs): a guest
        // can make either recur forever during its own delivery (a breakpoint
        // on the #DB handler's stack, a misaligned #AC stack), and a CPU
        // caught in that loop never exits, hanging the core for every VM.
        write(vmcs::EXCEPTION_BITMAP, EXCEPTION_DB | EXCEPTION_AC);
        write(vmcs::CR3_TARGET_COUNT, 0);
        write(vmcs::MSR_BITMAP, self.msr_bitmap);
        write(vmcs::EPT_POINTER, eptp);
        flush_cached_translations(&vmx.caps, eptp, vpid, c.secondary);
        self.tags = (eptp, vpid, c.secondary);
        self.last_core = Some(crate::percpu::current_index());
        write(vmcs::VMCS_LINK_POINTER, u64::MAX);

        // CR0/CR4 bits VMX pins are owned by Basalt: the guest sees its own value
        // (the read shadow) and writes to them exit.
        // CD and NW too: VM entries and exits do not switch them, so a guest that
        // set them would disable the host's caches. The guest keeps its view.
        write(vmcs::CR0_GUEST_HOST_MASK, unrestricted_cr0.must_be_one | !unrestricted_cr0.may_be_one | CR0_CD | CR0_NW);
        write(vmcs::CR0_READ_SHADOW, state.cr0);
        // So are the CR4 bits of features guests do not see: the CPU would
        // accept them, so cr.rs must refuse them.
        let hidden_cr4 = !crate::vmm::host::guest_cr4_allowed();
        write(vmcs::CR4_GUEST_HOST_MASK, vmx.caps.cr4.must_be_one | !vmx.caps.cr4.may_be_one | hidden_cr4);
        write(vmcs::CR4_READ_SHADOW, state.cr4);

        self.write_host_state();
        self.write_guest_state(&fixed);
        Ok(())
    }

    fn write_host_state(&self) {
        let gdt = x86_64::instructions::tables::sgdt();
        let idt = x86_64::instructions::tables::sidt();
        let tr: u16;
        // SAFETY: STR only reads the task register's selector.
        unsafe { core::arch::asm!("str {0:x}", out(reg) tr, options(nomem, nostack, preserves_flags)) };
        // SAFETY: reading the current TSS descriptor out of our own GDT to get its base.
        let tr_base = unsafe {
            let descriptor = (gdt.base.as_u64() + (tr & !7) as u64) as *const u64;
            let low = descriptor.read();
            let high = descriptor.add(1).read();
            ((low >> 16) & 0xff_ffff) | ((low >> 32) & 0xff00_0000) | (high << 32)
        };
        write(vmcs::HOST_CR0, Cr0::read_raw());
        write(vmcs::HOST_CR3, Cr3::read_raw().0.start_address().as_u64());
        write(vmcs::HOST_CR4, Cr4::read_raw());
        write(vmcs::HOST_CS_SELECTOR, crate::gdt::KERNEL_CODE.0 as u64);
        for f in [vmcs::HOST_SS_SELECTOR, vmcs::HOST_DS_SELECTOR, vmcs::HOST_ES_SELECTOR] {
            write(f, crate::gdt::KERNEL_DATA.0 as u64);
        }
        write(vmcs::HOST_FS_SELECTOR, 0);
        write(vmcs::HOST_GS_SELECTOR, 0);
        write(vmcs::HOST_TR_SELECTOR, tr as u64);
        write(vmcs::HOST_FS_BASE, 0);
        write(vmcs::HOST_GS_BASE, GsBase::read().as_u64());
        write(vmcs::HOST_TR_BASE, tr_base);
        write(vmcs::HOST_GDTR_BASE, gdt.base.as_u64());
        write(vmcs::HOST_IDTR_BASE, idt.base.as_u64());
        write(vmcs::HOST_SYSENTER_CS, 0);
        write(vmcs::HOST_SYSENTER_ESP, 0);
        write(vmcs::HOST_SYSENTER_EIP, 0);
        write(vmcs::HOST_IA32_EFER, Efer::read_raw());
        // SAFETY: IA32_PAT exists on every x86-64 CPU.
        write(vmcs::HOST_IA32_PAT, unsafe { Msr::new(IA32_PAT).read() });
    }

    fn write_guest_state(&self, s: &GuestState) {
        write(vmcs::GUEST_CR0, s.cr0);
        write(vmcs::GUEST_CR3, s.cr3);
        write(vmcs::GUEST_CR4, s.cr4);
        write(vmcs::GUEST_IA32_EFER, s.efer);
        write(vmcs::GUEST_IA32_PAT, DEFAULT_PAT);
        write(vmcs::GUEST_IA32_DEBUGCTL, 0);
        write(vmcs::GUEST_DR7, 0x400);
        write(vmcs::GUEST_RIP, s.rip);
        write(vmcs::GUEST_RSP, s.rsp);
        write(vmcs::GUEST_RFLAGS, s.rflags);
        let segments = [
            (s.es, vmcs::GUEST_ES_SELECTOR, vmcs::GUEST_ES_BASE, vmcs::GUEST_ES_LIMIT, vmcs::GUEST_ES_ACCESS_RIGHTS),
            (s.cs, vmcs::GUEST_CS_SELECTOR, vmcs::GUEST_CS_BASE, vmcs::GUEST_CS_LIMIT, vmcs::GUEST_CS_ACCESS_RIGHTS),
            (s.ss, vmcs::GUEST_SS_SELECTOR, vmcs::GUEST_SS_BASE, vmcs::GUEST_SS_LIMIT, vmcs::GUEST_SS_ACCESS_RIGHTS),
            (s.ds, vmcs::GUEST_DS_SELECTOR, vmcs::GUEST_DS_BASE, vmcs::GUEST_DS_LIMIT, vmcs::GUEST_DS_ACCESS_RIGHTS),
            (s.fs, vmcs::GUEST_FS_SELECTOR, vmcs::GUEST_FS_BASE, vmcs::GUEST_FS_LIMIT, vmcs::GUEST_FS_ACCESS_RIGHTS),
            (s.gs, vmcs::GUEST_GS_SELECTOR, vmcs::GUEST_GS_BASE, vmcs::GUEST_GS_LIMIT, vmcs::GUEST_GS_ACCESS_RIGHTS),
            (s.tr, vmcs::GUEST_TR_SELECTOR, vmcs::GUEST_TR_BASE, vmcs::GUEST_TR_LIMIT, vmcs::GUEST_TR_ACCESS_RIGHTS),
            (
                s.ldtr,
                vmcs::GUEST_LDTR_SELECTOR,
                vmcs::GUEST_LDTR_BASE,
                vmcs::GUEST_LDTR_LIMIT,
                vmcs::GUEST_LDTR_ACCESS_RIGHTS,
            ),
        ];
        for (seg, selector, base, limit, rights) in segments {
            write(selector, seg.selector as u64);
            write(base, seg.base);
            write(limit, seg.limit as u64);
            write(rights, seg.access_rights as u64);
        }
        write(vmcs::GUEST_GDTR_BASE, s.gdtr_base);
        write(vmcs::GUEST_GDTR_LIMIT, s.gdtr_limit as u64);
        write(vmcs::GUEST_IDTR_BASE, s.idtr_base);
        write(vmcs::GUEST_IDTR_LIMIT, s.idtr_limit as u64);
        write(vmcs::GUEST_ACTIVITY_STATE, 0);
        write(vmcs::GUEST_INTERRUPTIBILITY, 0);
        write(vmcs::GUEST_PENDING_DEBUG_EXCEPTIONS, 0);
        write(vmcs::GUEST_SYSENTER_CS, 0);
        write(vmcs::GUEST_SYSENTER_ESP, 0);
        write(vmcs::GUEST_SYSENTER_EIP, 0);
    }

    /// This vCPU's virtual-APIC page, when it has one.
    fn virtual_apic_page(&self) -> Option<&devices::lapic::VirtualApicPage> {
        // SAFETY: the frame is this vCPU's, 4 KiB, reached through the physical
        // mapping; the CPU writes it only while this vCPU's guest runs, and then
        // no reference to it is held.
        self.virtual_apic
            .map(|frame| unsafe { &*(memory::phys_to_virt(frame) as *const devices::lapic::VirtualApicPage) })
    }

    fn virtual_apic_page_mut(&mut self) -> Option<&mut devices::lapic::VirtualApicPage> {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        self.virtual_apic
            .map(|frame| unsafe { &mut *(memory::phys_to_virt(frame) as *mut devices::lapic::VirtualApicPage) })
    }

    /// A register as the guest left it in the virtual-APIC page (APIC-write exits).
    pub(super) fn virtual_apic_register(&self, offset: u32) -> Option<u32> {
        self.virtual_apic_page().map(|page| page[offset as usize / 4])
    }

    /// After an exit: what the guest wrote to its virtual-APIC page without
    /// exiting (TPR, ICR high) into the model, before anything looks at it.
    /// With virtual-interrupt delivery, also the vectors the guest took and
    /// ended there.
    ///
    /// The CPU changes the page's IRR and ISR only by taking a vector (RVI
    /// then becomes the next one in IRR, never the one it took: nothing adds
    /// to IRR while the guest runs) or ending one (SVI then drops to the next
    /// one in ISR): when the guest interrupt status is as it was at the
    /// entry, neither happened and only TPR and ICR high are looked at.
    pub(super) fn absorb_local_apic(&mut self, chipset: &devices::Chipset) {
        let delivery = self.delivery_on && {
            let status = read(vmcs::GUEST_INTERRUPT_STATUS) as u16;
            core::mem::replace(&mut self.interrupt_status, status) != status
        };
        if let Some(page) = self.virtual_apic_page() {
            chipset.absorb_lapic(self.index as usize, page, delivery);
        }
    }

    /// With virtual-interrupt delivery on: the model has not changed since
    /// its last mirror (a stale model, a blank page or a HLT to check are
    /// the mirror's work), so the page, RVI/SVI and the EOI-exit bitmap are
    /// what the model would write, and everything the guest does there the
    /// CPU does; skipping the absorb too leaves the model as it was, with
    /// the page ahead of it as after any exit, until the next absorb.
    pub(super) fn view_current(&self, chipset: &devices::Chipset) -> bool {
        let index = self.index as usize;
        self.delivery_on
            && !self.virtual_apic_blank
            && !self.halt_requested
            && self.delivers_in(chipset.apic_mode(index))
            && !chipset.lapic_mirror_stale(index)
    }

    /// Whether the CPU delivers the APIC's interrupts while it is in `mode`:
    /// only the xAPIC's page is virtualised (an x2APIC guest's EOIs and IPIs
    /// are MSR exits the model handles, so it keeps IRR and ISR itself).
    pub(super) fn delivers_in(&self, mode: devices::lapic::Mode) -> bool {
        self.delivery_capable && mode == devices::lapic::Mode::XApic
    }

    /// Before an entry: the model's registers into the virtual-APIC page when
    /// the model changed; then either the TPR threshold that brings the guest
    /// back when lowering its TPR unblocks a pending interrupt, or (with
    /// virtual-interrupt delivery) RVI/SVI and the EOI-exit bitmap, with
    /// which the CPU takes and ends the interrupts itself.
    pub(super) fn mirror_local_apic(&mut self, chipset: &devices::Chipset) {
        let index = self.index as usize;
        let delivery = self.delivers_in(chipset.apic_mode(index));
        if delivery != self.delivery_on {
            self.delivery_on = delivery;
            let control = vmx::SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY.bits() as u64;
            let secondary = read(vmcs::SECONDARY_PROCESSOR_CONTROLS);
            write(
                vmcs::SECONDARY_PROCESSOR_CONTROLS,
                if delivery { secondary | control } else { secondary & !control },
            );
            // IRR and ISR in the page become the model's again (either way).
            self.virtual_apic_blank = true;
            self.eoi_exit_bitmap = [u64::MAX; 4];
        }
        let blank = core::mem::take(&mut self.virtual_apic_blank);
        let Some(page) = self.virtual_apic_page_mut() else { return };
        let written = chipset.mirror_lapic(index, page, blank);
        if !delivery {
            if written {
                write(vmcs::TPR_THRESHOLD, chipset.lapic_tpr_threshold(index) as u64);
            }
            return;
        }
        // A vCPU halted with IF set (vmexit's hlt.rs) wakes for the vector
        // the CPU is about to deliver, as injecting one would wake it. Only a
        // HLT since the last entry or a new vector can make that so.
        let halted = core::mem::take(&mut self.halt_requested);
        if !written {
            // Nothing changed in the model since the last mirror, and the
            // absorb made it the page's again: RVI and SVI, which the CPU
            // keeps as the highest vectors in the page's IRR and ISR, are
            // what the model would write, and the TMR (the EOI-exit bitmap)
            // is unchanged.
            if halted {
                self.wake_if_interrupt(chipset);
            }
            return;
        }
        // The CPU moves RVI and SVI as the guest takes and ends vectors; the
        // model has caught up with it (absorb), and may have more to ask.
        self.interrupt_status = chipset.lapic_interrupt_status(index);
        write(vmcs::GUEST_INTERRUPT_STATUS, self.interrupt_status as u64);
        let bitmap = chipset.lapic_eoi_exit_bitmap(index);
        if bitmap != self.eoi_exit_bitmap {
            let fields =
                [vmcs::EOI_EXIT_BITMAP0, vmcs::EOI_EXIT_BITMAP1, vmcs::EOI_EXIT_BITMAP2, vmcs::EOI_EXIT_BITMAP3];
            for (field, word) in fields.into_iter().zip(bitmap) {
                write(field, word);
            }
            self.eoi_exit_bitmap = bitmap;
        }
        self.wake_if_interrupt(chipset);
    }

    fn wake_if_interrupt(&self, chipset: &devices::Chipset) {
        if read(vmcs::GUEST_ACTIVITY_STATE) == super::ACTIVITY_HLT && chipset.has_interrupt(self.index as usize) {
            write(vmcs::GUEST_ACTIVITY_STATE, super::ACTIVITY_ACTIVE);
        }
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // SAFETY: the VMCS is not current on any other CPU (a vCPU runs on one CPU
        // at a time); VMCLEAR makes the region ordinary memory again.
        let _ = unsafe { vmxi::vmclear(self.vmcs) };
        for frame in [self.vmcs, self.msr_bitmap].into_iter().chain(self.virtual_apic) {
            memory::free_frame(frame);
        }
    }
}
