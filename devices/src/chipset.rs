//! The platform of one VM: the PC devices at their `layout` addresses and the
//! wiring between them. Device models stay pure; this file is the only place
//! that knows which line goes where:
//!
//! ```text
//! PIT ch0 --IRQ0--> PIC IR0, IOAPIC pin 2      COM1 --IRQ4--> PIC IR4, IOAPIC pin 4
//! RTC ----IRQ8--> PIC IR8, IOAPIC pin 8        IOAPIC --messages--> local APICs
//! PIC INTR --> LINT0 of vCPU 0 (ExtINT)        local APIC ICR --IPIs--> local APICs
//! ```
//!
//! The VMM calls in with every port and MMIO access it does not handle itself,
//! with `poll` before entering a vCPU, and asks what to inject with
//! `take_interrupt`. `now` is always the guest's TSC.

use crate::acpi::{self, PowerManagement};
use crate::bus::{all_ones, MmioBus, PortBus, Request};
use crate::ioapic::IoApic;
use crate::lapic::{self, DeliveryMode, Destination, LocalApic, Message};
use crate::layout;
use crate::pic::PicPair;
use crate::pit::Pit;
use crate::rtc::Rtc;
use crate::uart::{LineSink, Uart16550};
use crate::virtio::{VirtioDevice, VirtioMmio};
use crate::GuestRam;
use alloc::vec::Vec;

/// INIT and SIPI messages for a vCPU, which only the VMM can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupSignal {
    Init,
    Startup { vector: u8 },
}

/// The INIT and SIPI a vCPU has yet to act on, latched as a CPU latches them
/// rather than queued, so that a guest sending them in a loop holds no host
/// memory: at most one INIT and, after it, one start-up vector. An INIT
/// supersedes whatever came before it (the CPU resets either way), and a SIPI
/// while one waits is one a CPU ignores (it is no longer waiting for a SIPI
/// once it has taken the first). The usual INIT, SIPI, SIPI therefore reads
/// as INIT, then the first SIPI.
#[derive(Clone, Copy, Debug, Default)]
struct StartupLatch {
    init: bool,
    startup_vector: Option<u8>,
}

impl StartupLatch {
    /// Latches `signal`; false when it changed nothing a vCPU will see.
    fn latch(&mut self, signal: StartupSignal) -> bool {
        match signal {
            StartupSignal::Init => {
                let superseded = self.init || self.startup_vector.is_some();
                *self = StartupLatch { init: true, startup_vector: None };
                !superseded
            }
            StartupSignal::Startup { vector } => {
                let ignored = self.startup_vector.is_some();
                self.startup_vector.get_or_insert(vector);
                !ignored
            }
        }
    }

    fn take(&mut self) -> Option<StartupSignal> {
        if core::mem::take(&mut self.init) {
            return Some(StartupSignal::Init);
        }
        self.startup_vector.take().map(|vector| StartupSignal::Startup { vector })
    }
}

/// How many distinct MSR numbers answered with #GP a VM's log names (see
/// `Chipset::first_refusal_of_msr`): enough to see what a guest probes, few
/// enough that a guest walking the MSR space cannot flood the log.
pub const REFUSED_MSRS_LOGGED: usize = 8;

/// A vCPU's MSR state that lives with the platform rather than in the VMCS or
/// VMCB (the exit layer's `msr.rs` owns the rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuMsrs {
    /// IA32_MISC_ENABLE as the guest last wrote it; None until it writes it
    /// (the reset value is the exit layer's).
    pub misc_enable: Option<u64>,
    /// The vCPU's TSC offset (= IA32_TSC_ADJUST) as the guest last set it.
    /// The VMCS or VMCB holds the live one; this copy outlives it when INIT
    /// sends an application processor back to wait for a start-up IPI and it
    /// starts again in a fresh one (INIT changes neither the TSC nor
    /// TSC_ADJUST).
    pub tsc_offset: u64,
}

pub struct ChipsetConfig {
    pub vcpus: u32,
    pub tsc_hz: u64,
    /// Wall-clock time for the RTC (seconds since 1970) at TSC `now`.
    pub unix_time: u64,
    pub now: u64,
    pub com1_output: LineSink,
    /// COM1 output byte by byte instead of in lines (an interactive console).
    pub com1_unbuffered: bool,
}

/// What the last full `poll` worked out about the clocks, so that the
/// next ones can skip what cannot have come due: valid until a port or MMIO
/// access (which may reprogram the PIT or RTC, mask an IRQ, or give a virtio
/// device work) or a new device. The local APICs are not in it: their
/// timers are looked at in every `poll`, cheaply.
#[derive(Clone, Copy, Debug)]
struct PollCache {
    /// The PIT's next terminal count (routed or not: `poll` raises its line
    /// either way) and the RTC's next enabled interrupt (the flags of the
    /// others come out the same whenever they are next worked out).
    pit_due: u64,
    rtc_due: u64,
    /// A virtio device has work a `poll` would do (a backlog, input).
    virtio_work: bool,
    /// `next_deadline` without the local APIC's: the routed PIT and RTC
    /// interrupts, 0 for a virtio backlog.
    platform_deadline: Option<u64>,
}

pub struct Chipset {
    lapics: Vec<LocalApic>,
    ioapic: IoApic,
    pic: PicPair,
    pit: Pit,
    rtc: Rtc,
    pm: PowerManagement,
    com1: Uart16550,
    com1_line: bool,
    signals: Vec<StartupLatch>,
    /// INITs and SIPIs superseded or ignored in `signals`.
    dropped_signals: u64,
    /// Per vCPU: something arrived for it (see `take_wakeup`).
    wakeups: Vec<bool>,
    msrs: Vec<VcpuMsrs>,
    /// MSR numbers already logged as refused (the first `REFUSED_MSRS_LOGGED`).
    refused_msrs: [u32; REFUSED_MSRS_LOGGED],
    refused_msrs_seen: usize,
    /// Further port devices (debug exit, ...).
    pub ports: PortBus,
    /// virtio-mmio devices, slot i at `layout::virtio_slot(i)`, with the level
    /// of their interrupt line.
    virtio: Vec<(VirtioMmio, bool)>,
    /// Further MMIO devices.
    pub mmio: MmioBus,
    /// None: worked out again at the next `poll` (see `PollCache`).
    poll_cache: Option<PollCache>,
}

impl Chipset {
    pub fn new(config: ChipsetConfig) -> Chipset {
        let vcpus = config.vcpus.max(1) as usize;
        Chipset {
            // Periodic local APIC timers: at most 10 000 interrupts a second.
            // vCPU 0 is the bootstrap processor (IA32_APIC_BASE.BSP).
            lapics: (0..vcpus)
                .map(|id| {
                    let apic = LocalApic::new(id as u8).with_min_timer_period(config.tsc_hz / 10_000);
                    if id == 0 {
                        apic.as_bootstrap()
                    } else {
                        apic
                    }
                })
                .collect(),
            ioapic: IoApic::new(vcpus as u8),
            pic: PicPair::new(),
            pit: Pit::new(config.tsc_hz),
            rtc: Rtc::new(config.tsc_hz, config.unix_time, config.now),
            pm: PowerManagement::new(config.tsc_hz),
            com1: if config.com1_unbuffered {
                Uart16550::unbuffered(config.com1_output)
            } else {
                Uart16550::new(config.com1_output)
            },
            com1_line: false,
            signals: alloc::vec![StartupLatch::default(); vcpus],
            dropped_signals: 0,
            wakeups: alloc::vec![false; vcpus],
            msrs: alloc::vec![VcpuMsrs::default(); vcpus],
            refused_msrs: [0; REFUSED_MSRS_LOGGED],
            refused_msrs_seen: 0,
            ports: PortBus::new(),
            virtio: Vec::new(),
            mmio: MmioBus::new(),
            poll_cache: None,
        }
    }

    /// Plugs a virtio device into the next free slot; returns the slot.
    pub fn add_virtio(&mut self, device: alloc::boxed::Box<dyn VirtioDevice>) -> Result<usize, &'static str> {
        self.poll_cache = None;
        if self.virtio.len() == layout::VIRTIO_SLOTS {
            return Err("all virtio slots are in use");
        }
        self.virtio.push((VirtioMmio::new(device), false));
        Ok(self.virtio.len() - 1)
    }

    /// virtio devices that broke since the last call: (slot, device, why).
    pub fn take_broken(&mut self) -> Vec<(usize, &'static str, alloc::string::String)> {
        let mut out = Vec::new();
        for (slot, (v, _)) in self.virtio.iter_mut().enumerate() {
            if let Some(why) = v.broken.as_ref() {
                if !v.broken_reported {
                    v.broken_reported = true;
                    out.push((slot, v.name(), why.clone()));
                }
            }
        }
        out
    }

    /// Passes on partial output lines (when the VM stops).
    pub fn flush_output(&mut self) {
        self.com1.flush();
        for (v, _) in &mut self.virtio {
            v.device_mut().flush();
        }
    }

    /// Host input bytes (typed at the console) that the guest did not take in
    /// time, over COM1 and its virtio consoles.
    pub fn dropped_input(&self) -> u64 {
        let virtio = self.virtio.iter().map(|(v, _)| v.device().dropped_input());
        virtio.fold(self.com1.dropped_input(), u64::saturating_add)
    }

    fn virtio_at(&self, address: u64) -> Option<(usize, u64)> {
        let offset = address.checked_sub(layout::VIRTIO_BASE)?;
        let slot = (offset / layout::VIRTIO_STRIDE) as usize;
        let within = offset % layout::VIRTIO_STRIDE;
        (slot < self.virtio.len() && within < layout::VIRTIO_SIZE).then_some((slot, within))
    }

    fn update_virtio_line(&mut self, slot: usize) {
        let (device, line) = &mut self.virtio[slot];
        let level = device.irq_line();
        if level != *line {
            *line = level;
            let gsi = layout::virtio_slot(slot).1 as usize;
            if let Some(message) = self.ioapic.set_line(gsi, level) {
                self.deliver(None, message);
            }
        }
    }

    pub fn vcpus(&self) -> usize {
        self.lapics.len()
    }

    pub fn com1(&mut self) -> &mut Uart16550 {
        &mut self.com1
    }

    /// Bytes typed for the guest's serial console.
    pub fn com1_input(&mut self, bytes: &[u8]) {
        self.poll_cache = None;
        self.com1.push_input(bytes);
        self.update_com1_line();
    }

    pub fn port_read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        use crate::bus::PortDevice;
        self.forget_poll_cache_for(port);
        match port {
            layout::PIC_MASTER | 0x21 => self.pic.read(0, port - layout::PIC_MASTER) as u32,
            layout::PIC_SLAVE | 0xa1 => self.pic.read(1, port - layout::PIC_SLAVE) as u32,
            layout::PIC_ELCR | 0x4d1 => self.pic.read_elcr((port - layout::PIC_ELCR) as usize) as u32,
            0x40..=0x42 => self.pit.read(port - layout::PIT, now) as u32,
            0x43 => 0xff,
            layout::SYSTEM_CONTROL => self.pit.read_port61(now) as u32,
            0x71 => self.rtc.read(now) as u32,
            0x3f8..=0x3ff => {
                let value = self.com1.read(port - layout::COM1, size);
                self.update_com1_line();
                value
            }
            p if (layout::PM_BASE..layout::PM_BASE + layout::PM_SIZE).contains(&p) => {
                self.pm.read(p - layout::PM_BASE, size, now)
            }
            layout::RESET_CONTROL => 0,
            _ => self.ports.read(port, size),
        }
    }

    pub fn port_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Option<Request> {
        use crate::bus::PortDevice;
        let byte = value as u8;
        self.forget_poll_cache_for(port);
        match port {
            layout::PIC_MASTER | 0x21 => self.pic.write(0, port - layout::PIC_MASTER, byte),
            layout::PIC_SLAVE | 0xa1 => self.pic.write(1, port - layout::PIC_SLAVE, byte),
            layout::PIC_ELCR | 0x4d1 => self.pic.write_elcr((port - layout::PIC_ELCR) as usize, byte),
            0x40..=0x43 => self.pit.write(port - layout::PIT, byte, now),
            layout::SYSTEM_CONTROL => self.pit.write_port61(byte, now),
            layout::RTC => self.rtc.select(byte),
            0x71 => self.rtc.write(byte, now),
            0x3f8..=0x3ff => {
                let request = self.com1.write(port - layout::COM1, size, value);
                self.update_com1_line();
                return request;
            }
            p if (layout::PM_BASE..layout::PM_BASE + layout::PM_SIZE).contains(&p) => {
                return self.pm.write(p - layout::PM_BASE, size, value);
            }
            layout::RESET_CONTROL => return acpi::reset_control_write(byte),
            _ => return self.ports.write(port, size, value),
        }
        None
    }

    /// The ports whose accesses can move the PIT's or the RTC's next event
    /// or mask an IRQ (a read too: a PIT read-back, RTC register C) drop
    /// the poll cache; the rest (COM1, the PM timer, the buses) cannot.
    fn forget_poll_cache_for(&mut self, port: u16) {
        if matches!(
            port,
            layout::PIC_MASTER | 0x21 | layout::PIC_SLAVE | 0xa1 | layout::PIC_ELCR | 0x4d1 | 0x40
                ..=0x43 | layout::SYSTEM_CONTROL | layout::RTC | 0x71
        ) {
            self.poll_cache = None;
        }
    }

    /// An MMIO read by `vcpu` (the local APIC page is per vCPU, and only
    /// there while that APIC is in xAPIC mode: otherwise the address is
    /// nobody's).
    pub fn mmio_read(&mut self, vcpu: usize, address: u64, size: u8, now: u64) -> u64 {
        let lapic = offset_in(address, layout::LAPIC_BASE, layout::LAPIC_SIZE);
        if let Some(offset) = lapic.filter(|_| self.lapics[vcpu].decodes_mmio()) {
            let value = self.lapics[vcpu].read(offset as u32 & !0xf, now) as u64;
            return value >> (8 * (offset & 3)) & all_ones(size);
        }
        if let Some(offset) = offset_in(address, layout::IOAPIC_BASE, layout::IOAPIC_SIZE) {
            return self.ioapic.read(offset & !3) as u64 & all_ones(size);
        }
        if let Some((slot, offset)) = self.virtio_at(address) {
            return self.virtio[slot].0.read(offset, size) as u64 & all_ones(size);
        }
        self.mmio.read(address, size)
    }

    /// An MMIO write; `ram` is for devices that move data (virtio).
    pub fn mmio_write(
        &mut self,
        vcpu: usize,
        address: u64,
        size: u8,
        value: u64,
        now: u64,
        ram: &mut dyn GuestRam,
    ) -> Option<Request> {
        let lapic = offset_in(address, layout::LAPIC_BASE, layout::LAPIC_SIZE);
        if lapic.is_some() && !self.lapics[vcpu].decodes_mmio() {
            // Unclaimed (below), but a CPU virtualising the page has already
            // stored the value there: the next mirror takes it out again.
            self.lapics[vcpu].page_written_while_undecoded();
        }
        if let Some(offset) = lapic.filter(|_| self.lapics[vcpu].decodes_mmio()) {
            // Registers are written whole, by aligned 32-bit stores; anything
            // else is model-specific on hardware and ignored here (a byte
            // written into a register's padding must not become a write of it).
            if size != 4 || offset & 0xf != 0 {
                return None;
            }
            let effect = self.lapics[vcpu].write(offset as u32, value as u32, now);
            self.act_on_lapic(vcpu, effect);
            return None;
        }
        if let Some(offset) = offset_in(address, layout::IOAPIC_BASE, layout::IOAPIC_SIZE) {
            // A pin may be masked or unmasked.
            self.poll_cache = None;
            if let Some(message) = self.ioapic.write(offset & !3, value as u32) {
                self.deliver(None, message);
            }
            return None;
        }
        if let Some((slot, offset)) = self.virtio_at(address) {
            // A notification may leave a backlog.
            self.poll_cache = None;
            self.virtio[slot].0.write(offset, value as u32, ram);
            self.update_virtio_line(slot);
            return None;
        }
        self.mmio.write(address, size, value)
    }

    /// What a local APIC register write asks of the platform.
    fn act_on_lapic(&mut self, vcpu: usize, effect: Option<lapic::Effect>) {
        match effect {
            Some(lapic::Effect::Send(message)) => self.deliver(Some(vcpu), message),
            Some(lapic::Effect::LevelEoi(vector)) => {
                for message in self.ioapic.end_of_interrupt(vector) {
                    self.deliver(None, message);
                }
            }
            None => {}
        }
    }

    /// IA32_APIC_BASE of `vcpu`.
    pub fn apic_base(&self, vcpu: usize) -> u64 {
        self.lapics[vcpu].base()
    }

    /// WRMSR to IA32_APIC_BASE of `vcpu` (see `LocalApic::set_base`).
    pub fn set_apic_base(
        &mut self,
        vcpu: usize,
        value: u64,
        x2apic_offered: bool,
        phys_bits: u32,
    ) -> Result<(), lapic::BaseRefused> {
        self.lapics[vcpu].set_base(value, x2apic_offered, phys_bits)
    }

    /// The mode of `vcpu`'s local APIC (CPUID.1:EDX.APIC says whether it is on).
    pub fn apic_mode(&self, vcpu: usize) -> lapic::Mode {
        self.lapics[vcpu].mode()
    }

    /// RDMSR of an x2APIC MSR by `vcpu`.
    pub fn x2apic_read(&self, vcpu: usize, msr: u32, now: u64) -> Result<u64, lapic::MsrRefused> {
        self.lapics[vcpu].read_msr(msr, now)
    }

    /// WRMSR of an x2APIC MSR by `vcpu`; IPIs and EOIs go where they would
    /// from the page.
    pub fn x2apic_write(&mut self, vcpu: usize, msr: u32, value: u64, now: u64) -> Result<(), lapic::MsrRefused> {
        let effect = self.lapics[vcpu].write_msr(msr, value, now)?;
        self.act_on_lapic(vcpu, effect);
        Ok(())
    }

    /// `vcpu`'s task priority (CR8 is its bits 7:4), whatever the APIC's mode.
    pub fn tpr(&self, vcpu: usize) -> u8 {
        self.lapics[vcpu].tpr()
    }

    pub fn set_tpr(&mut self, vcpu: usize, tpr: u8) {
        self.lapics[vcpu].set_tpr(tpr);
    }

    /// `vcpu`'s MSRs kept with the platform.
    pub fn vcpu_msrs(&mut self, vcpu: usize) -> &mut VcpuMsrs {
        &mut self.msrs[vcpu]
    }

    /// Whether the VM's log should name `msr` as answered with #GP: true the
    /// first time for each of the first `REFUSED_MSRS_LOGGED` numbers, false
    /// for a number already named and for every one past them.
    pub fn first_refusal_of_msr(&mut self, msr: u32) -> bool {
        let seen = &self.refused_msrs[..self.refused_msrs_seen];
        if seen.contains(&msr) || self.refused_msrs_seen == REFUSED_MSRS_LOGGED {
            return false;
        }
        self.refused_msrs[self.refused_msrs_seen] = msr;
        self.refused_msrs_seen += 1;
        true
    }

    /// APIC virtualisation: a vCPU's local APIC state into its virtual-APIC
    /// page, when it changed since the last time or the page is `blank`.
    /// True when the page was written (the TPR threshold may have changed too).
    pub fn mirror_lapic(&mut self, vcpu: usize, page: &mut lapic::VirtualApicPage, blank: bool) -> bool {
        let apic = &mut self.lapics[vcpu];
        if !blank && !apic.mirror_is_stale() {
            return false;
        }
        if blank {
            apic.mirror(page);
        } else {
            apic.mirror_changes(page);
        }
        true
    }

    /// APIC virtualisation: what the guest wrote to its page without exiting.
    /// With `delivery` (virtual-interrupt delivery) the CPU's changes to IRR
    /// and ISR come in too.
    pub fn absorb_lapic(&mut self, vcpu: usize, page: &lapic::VirtualApicPage, delivery: bool) {
        self.lapics[vcpu].absorb(page, delivery);
    }

    /// Virtual-interrupt delivery: RVI and SVI for `vcpu`'s next entry.
    pub fn lapic_interrupt_status(&self, vcpu: usize) -> u16 {
        self.lapics[vcpu].interrupt_status()
    }

    /// Virtual-interrupt delivery: the vectors whose EOI must exit.
    pub fn lapic_eoi_exit_bitmap(&self, vcpu: usize) -> [u64; 4] {
        self.lapics[vcpu].eoi_exit_bitmap()
    }

    /// Virtual-interrupt delivery: `vcpu` ended a level-triggered `vector`.
    pub fn virtual_eoi(&mut self, vcpu: usize, vector: u8) {
        let effect = self.lapics[vcpu].virtual_eoi(vector);
        self.act_on_lapic(vcpu, effect);
    }

    /// APIC virtualisation: the TPR threshold for a vCPU's next entry.
    pub fn lapic_tpr_threshold(&self, vcpu: usize) -> u8 {
        self.lapics[vcpu].tpr_threshold()
    }

    /// Timer interrupts `vcpu`'s local APIC raised since the VM started.
    pub fn timer_interrupts(&self, vcpu: usize) -> u64 {
        self.lapics[vcpu].timer_interrupts
    }

    pub fn tsc_deadline(&self, vcpu: usize) -> u64 {
        self.lapics[vcpu].tsc_deadline()
    }

    pub fn set_tsc_deadline(&mut self, vcpu: usize, deadline: u64) {
        self.lapics[vcpu].set_tsc_deadline(deadline);
    }

    /// A TSC-deadline write from a guest whose TSC is offset from the host's:
    /// `deadline` in the guest's TSC, `fires_at` in the host's (see
    /// `LocalApic::arm_tsc_deadline`).
    pub fn arm_tsc_deadline(&mut self, vcpu: usize, deadline: u64, fires_at: u64) {
        self.lapics[vcpu].arm_tsc_deadline(deadline, fires_at);
    }

    /// Runs the clocks up to `now`: timers that expired raise their interrupts;
    /// devices with input waiting deliver it.
    ///
    /// Most calls find nothing due but a local APIC's timer: the PIT, the RTC
    /// and the virtio devices are skipped until the moment the last full
    /// call worked out (`PollCache`), which is what they would have done.
    pub fn poll(&mut self, now: u64, ram: &mut dyn GuestRam) {
        for apic in &mut self.lapics {
            apic.poll(now);
        }
        if let Some(cache) = self.poll_cache {
            if !cache.virtio_work && now < cache.pit_due && now < cache.rtc_due {
                return;
            }
        }
        for slot in 0..self.virtio.len() {
            self.virtio[slot].0.poll(ram);
            self.update_virtio_line(slot);
        }
        for _ in 0..self.pit.poll_irq0(now).min(1) {
            self.pulse_isa_irq(layout::IRQ_PIT);
        }
        if self.rtc.poll(now) {
            self.pulse_isa_irq(layout::IRQ_RTC);
        }
        self.poll_cache = Some(PollCache {
            pit_due: self.pit.next_irq0().unwrap_or(u64::MAX),
            rtc_due: self.rtc.next_event().unwrap_or(u64::MAX),
            virtio_work: self.virtio.iter().any(|(v, _)| v.has_work()),
            platform_deadline: self.platform_deadline(),
        });
    }

    /// Whether `poll(now)` would do anything: a timer due (any local APIC's,
    /// the PIT's, the RTC's), virtio work, or no cache to tell. False lets
    /// the VMM skip it (the TSC-deadline fast path).
    pub fn poll_due(&self, now: u64) -> bool {
        let Some(cache) = self.poll_cache else { return true };
        cache.virtio_work
            || now >= cache.pit_due
            || now >= cache.rtc_due
            || self.lapics.iter().any(|apic| apic.next_deadline().is_some_and(|at| now >= at))
    }

    /// The next moment a timer could interrupt `vcpu`: the VMM makes sure it gets
    /// control back by then. 0 (at once) while a virtio device has work left
    /// over from a call that reached its bound, for the next `poll` to go on
    /// with.
    pub fn next_deadline(&self, vcpu: usize) -> Option<u64> {
        let platform = match self.poll_cache {
            Some(cache) => cache.platform_deadline,
            None => self.platform_deadline(),
        };
        [self.lapics[vcpu].next_deadline(), platform].into_iter().flatten().min()
    }

    /// `next_deadline` but for the local APICs' timers.
    fn platform_deadline(&self) -> Option<u64> {
        let routed =
            |irq: u8| self.ioapic.pin_unmasked(layout::gsi_of_isa_irq(irq) as usize) || self.pic.irq_unmasked(irq);
        let pit = self.pit.next_irq0().filter(|_| routed(layout::IRQ_PIT));
        let rtc = self.rtc.next_event().filter(|_| routed(layout::IRQ_RTC));
        let device_work = self.virtio.iter().any(|(v, _)| v.has_backlog()).then_some(0);
        [pit, rtc, device_work].into_iter().flatten().min()
    }

    /// Whether `vcpu` has an interrupt to take when it can.
    pub fn has_interrupt(&self, vcpu: usize) -> bool {
        self.lapics[vcpu].deliverable().is_some() || self.extint_pending(vcpu)
    }

    /// The vector to inject into `vcpu` now, acknowledged (it is in service
    /// from here on, so call this only when the guest can take it).
    pub fn take_interrupt(&mut self, vcpu: usize) -> Option<u8> {
        if let Some(vector) = self.lapics[vcpu].deliverable() {
            self.lapics[vcpu].acknowledge(vector);
            return Some(vector);
        }
        if self.extint_pending(vcpu) {
            return self.pic.acknowledge();
        }
        None
    }

    /// The PIC's interrupt for `vcpu` (through LINT0 in ExtINT mode), acknowledged.
    pub fn take_extint(&mut self, vcpu: usize) -> Option<u8> {
        if self.extint_pending(vcpu) {
            self.pic.acknowledge()
        } else {
            None
        }
    }

    /// Whether the PIC has an interrupt for `vcpu` (through LINT0 in ExtINT mode).
    pub fn extint_pending(&self, vcpu: usize) -> bool {
        vcpu == 0 && self.lapics[0].accepts_extint() && self.pic.interrupt_pending()
    }

    pub fn nmi_pending(&self, vcpu: usize) -> bool {
        self.lapics[vcpu].nmi_pending
    }

    pub fn take_nmi(&mut self, vcpu: usize) -> bool {
        core::mem::take(&mut self.lapics[vcpu].nmi_pending)
    }

    /// The next INIT or SIPI for `vcpu`: an INIT first, then the start-up
    /// vector that followed it (see `StartupLatch`).
    pub fn take_signal(&mut self, vcpu: usize) -> Option<StartupSignal> {
        self.signals[vcpu].take()
    }

    /// INITs and SIPIs that arrived while an earlier one was still latched and
    /// that changed nothing (superseded by an INIT, or a second SIPI).
    pub fn dropped_startup_signals(&self) -> u64 {
        self.dropped_signals
    }

    /// Whether an interrupt, NMI, INIT or SIPI arrived for `vcpu` since the last
    /// call. A vCPU running on another core only sees it at its next exit, so
    /// the VMM makes that core exit when this says so. Timer interrupts do not
    /// count: each vCPU already comes back by its own `next_deadline`.
    pub fn take_wakeup(&mut self, vcpu: usize) -> bool {
        core::mem::take(&mut self.wakeups[vcpu])
    }

    /// `take_wakeup` without taking it.
    pub fn has_wakeup(&self, vcpu: usize) -> bool {
        self.wakeups[vcpu]
    }

    /// APIC virtualisation: whether `vcpu`'s local APIC changed since its
    /// last mirror into the virtual-APIC page (anything but its timer's
    /// deadline: an interrupt arrived, a register was written).
    pub fn lapic_mirror_stale(&self, vcpu: usize) -> bool {
        self.lapics[vcpu].mirror_is_stale()
    }

    /// An INIT resets the vCPU's local APIC as well as the vCPU.
    pub fn reset_lapic(&mut self, vcpu: usize) {
        self.lapics[vcpu].init();
    }

    fn update_com1_line(&mut self) {
        let line = self.com1.irq_line();
        if line != self.com1_line {
            self.com1_line = line;
            self.set_isa_irq(layout::IRQ_COM1, line);
        }
    }

    fn set_isa_irq(&mut self, irq: u8, level: bool) {
        self.pic.set_line(irq, level);
        self.wake_pic_target();
        if let Some(message) = self.ioapic.set_line(layout::gsi_of_isa_irq(irq) as usize, level) {
            self.deliver(None, message);
        }
    }

    fn pulse_isa_irq(&mut self, irq: u8) {
        self.pic.pulse(irq);
        self.wake_pic_target();
        if let Some(message) = self.ioapic.pulse(layout::gsi_of_isa_irq(irq) as usize) {
            self.deliver(None, message);
        }
    }

    /// The PIC's INTR goes to vCPU 0 only.
    fn wake_pic_target(&mut self) {
        if self.extint_pending(0) {
            self.wakeups[0] = true;
        }
    }

    /// Routes an APIC message from `source` (None: the IOAPIC) to its targets.
    fn deliver(&mut self, source: Option<usize>, message: Message) {
        for i in 0..self.lapics.len() {
            // A globally disabled APIC takes nothing, shorthands included.
            let enabled = self.lapics[i].mode() != lapic::Mode::Disabled;
            let selected = match message.destination {
                Destination::SelfOnly => source == Some(i),
                Destination::AllIncludingSelf => true,
                Destination::AllExcludingSelf => source != Some(i),
                addressed => self.lapics[i].is_addressed_by(addressed),
            };
            if !selected || !enabled {
                continue;
            }
            let signal = match message.mode {
                DeliveryMode::Init => Some(StartupSignal::Init),
                DeliveryMode::Startup => Some(StartupSignal::Startup { vector: message.vector }),
                _ => None,
            };
            match signal {
                Some(signal) => {
                    if !self.signals[i].latch(signal) {
                        self.dropped_signals += 1;
                    }
                }
                None => self.lapics[i].receive(&message),
            }
            self.wakeups[i] = true;
            // Lowest priority: any one of them will do; the first takes it.
            if message.mode == DeliveryMode::LowestPriority {
                return;
            }
        }
    }

    /// The ACPI tables for this VM, to be copied to `layout::ACPI_TABLES`.
    pub fn acpi_tables(&self) -> Vec<u8> {
        acpi::tables(layout::ACPI_TABLES, self.lapics.len() as u32, self.virtio.len())
    }
}

fn offset_in(address: u64, base: u64, size: u64) -> Option<u64> {
    address.checked_sub(base).filter(|&o| o < size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapic::reg;
    use std::sync::{Arc, Mutex};

    use crate::NotRam;

    const HZ: u64 = 1_000_000_000;

    /// For tests without DMA devices.
    struct NoRam;
    impl GuestRam for NoRam {
        fn read(&self, _: u64, _: &mut [u8]) -> Result<(), NotRam> {
            Err(NotRam)
        }
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), NotRam> {
            Err(NotRam)
        }
    }

    fn chipset(vcpus: u32) -> (Chipset, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let config = ChipsetConfig {
            vcpus,
            tsc_hz: HZ,
            unix_time: 1_795_355_107,
            now: 0,
            com1_output: alloc::boxed::Box::new(move |l: &[u8]| {
                sink.lock().unwrap().push(String::from_utf8_lossy(l).into())
            }),
            com1_unbuffered: false,
        };
        (Chipset::new(config), lines)
    }

    fn lapic_write(c: &mut Chipset, vcpu: usize, register: u32, value: u32, now: u64) {
        c.mmio_write(vcpu, layout::LAPIC_BASE + register as u64, 4, value as u64, now, &mut NoRam);
    }

    fn ioapic_route(c: &mut Chipset, pin: u32, low: u32, dest: u8) {
        c.mmio_write(0, layout::IOAPIC_BASE, 4, 0x11 + 2 * pin as u64, 0, &mut NoRam);
        c.mmio_write(0, layout::IOAPIC_BASE + 0x10, 4, (dest as u64) << 24, 0, &mut NoRam);
        c.mmio_write(0, layout::IOAPIC_BASE, 4, 0x10 + 2 * pin as u64, 0, &mut NoRam);
        c.mmio_write(0, layout::IOAPIC_BASE + 0x10, 4, low as u64, 0, &mut NoRam);
    }

    fn enable_apic(c: &mut Chipset, vcpu: usize) {
        lapic_write(c, vcpu, reg::SVR, 0x1ff, 0);
    }

    #[test]
    fn com1_transmit_interrupt_reaches_the_cpu_through_the_ioapic() {
        let (mut c, lines) = chipset(1);
        enable_apic(&mut c, 0);
        ioapic_route(&mut c, 4, 0x24, 0);
        c.port_write(0x3fc, 1, 0x08, 0); // OUT2
        assert!(!c.has_interrupt(0));
        c.port_write(0x3f9, 1, 0x02, 0); // IER: THR empty
        assert_eq!(c.take_interrupt(0), Some(0x24));
        assert_eq!(c.port_read(0x3fa, 1, 0) & 0x0f, 0x02, "IIR says THR empty");
        // The driver writes a byte: THR empty again is a new edge once EOI'd.
        for b in b"hi\n" {
            c.port_write(0x3f8, 1, *b as u32, 0);
        }
        lapic_write(&mut c, 0, reg::EOI, 0, 0);
        assert_eq!(c.take_interrupt(0), Some(0x24));
        assert_eq!(*lines.lock().unwrap(), vec!["hi"]);
    }

    #[test]
    fn lapic_page_is_per_vcpu_and_ipis_cross() {
        let (mut c, _) = chipset(2);
        enable_apic(&mut c, 0);
        enable_apic(&mut c, 1);
        assert_eq!(c.mmio_read(1, layout::LAPIC_BASE + 0x20, 4, 0), 1 << 24);
        assert_eq!(c.mmio_read(0, layout::LAPIC_BASE + 0x20, 4, 0), 0);
        assert_eq!(c.mmio_read(0, layout::LAPIC_BASE + 0x23, 1, 0), 0, "byte reads of the ID");
        lapic_write(&mut c, 0, reg::ICR_HIGH, 1 << 24, 0);
        lapic_write(&mut c, 0, reg::ICR_LOW, 0xfb, 0);
        assert!(!c.has_interrupt(0));
        assert_eq!(c.take_interrupt(1), Some(0xfb));
        // INIT and SIPI are signals for the VMM.
        lapic_write(&mut c, 0, reg::ICR_LOW, 0x4500, 0);
        lapic_write(&mut c, 0, reg::ICR_LOW, 0x4610, 0);
        assert_eq!(c.take_signal(1), Some(StartupSignal::Init));
        assert_eq!(c.take_signal(1), Some(StartupSignal::Startup { vector: 0x10 }));
        assert_eq!(c.take_signal(1), None);
        // NMI to all others.
        lapic_write(&mut c, 1, reg::ICR_LOW, 0x000c_0400, 0);
        assert!(c.take_nmi(0));
        assert!(!c.take_nmi(1));
    }

    #[test]
    fn startup_signals_are_latched_not_queued() {
        let (mut c, _) = chipset(2);
        enable_apic(&mut c, 0);
        lapic_write(&mut c, 0, reg::ICR_HIGH, 1 << 24, 0);
        // The MP start-up sequence: INIT, SIPI, SIPI (the second a retry).
        for command in [0x4500, 0x4608, 0x4608] {
            lapic_write(&mut c, 0, reg::ICR_LOW, command, 0);
        }
        assert_eq!(c.take_signal(1), Some(StartupSignal::Init));
        assert_eq!(c.take_signal(1), Some(StartupSignal::Startup { vector: 0x08 }));
        assert_eq!(c.take_signal(1), None);
        assert_eq!(c.dropped_startup_signals(), 1);
        // A SIPI, then an INIT: the INIT resets the CPU whatever came before.
        lapic_write(&mut c, 0, reg::ICR_LOW, 0x4609, 0);
        lapic_write(&mut c, 0, reg::ICR_LOW, 0x4500, 0);
        assert_eq!(c.take_signal(1), Some(StartupSignal::Init));
        assert_eq!(c.take_signal(1), None);
        // A flood keeps the last INIT and the first SIPI after it.
        for vector in 0x10..0x90 {
            lapic_write(&mut c, 0, reg::ICR_LOW, 0x4500, 0);
            lapic_write(&mut c, 0, reg::ICR_LOW, 0x4600 | vector, 0);
            lapic_write(&mut c, 0, reg::ICR_LOW, 0x4601 | vector, 0);
        }
        assert_eq!(c.take_signal(1), Some(StartupSignal::Init));
        assert_eq!(c.take_signal(1), Some(StartupSignal::Startup { vector: 0x8f }));
        assert_eq!(c.take_signal(1), None);
        // Each round's second SIPI is ignored; each INIT but the first
        // supersedes what the round before latched.
        assert_eq!(c.dropped_startup_signals(), 2 + 0x80 + 0x7f);
    }

    #[test]
    fn messages_for_a_vcpu_mark_it_for_wakeup_once() {
        let (mut c, _) = chipset(2);
        enable_apic(&mut c, 0);
        enable_apic(&mut c, 1);
        assert!(!c.take_wakeup(0) && !c.take_wakeup(1));
        // A fixed IPI from vCPU 0 to vCPU 1 wakes only vCPU 1, and only once.
        lapic_write(&mut c, 0, reg::ICR_HIGH, 1 << 24, 0);
        lapic_write(&mut c, 0, reg::ICR_LOW, 0xfb, 0);
        assert!(!c.take_wakeup(0));
        assert!(c.take_wakeup(1));
        assert!(!c.take_wakeup(1));
        // INIT and SIPI wake their target too.
        lapic_write(&mut c, 0, reg::ICR_LOW, 0x4500, 0);
        assert!(c.take_wakeup(1));
        // A device interrupt routed by the IOAPIC to vCPU 1 wakes vCPU 1.
        ioapic_route(&mut c, 4, 0x24, 1);
        c.port_write(0x3fc, 1, 0x08, 0); // OUT2
        c.port_write(0x3f9, 1, 0x02, 0); // IER: THR empty
        assert!(c.take_wakeup(1));
        assert!(!c.take_wakeup(0));
        // A local timer does not: the vCPU comes back by its own deadline.
        lapic_write(&mut c, 1, reg::LVT_TIMER, 0x30, 0);
        lapic_write(&mut c, 1, reg::TIMER_INITIAL, 10, 0);
        c.poll(HZ, &mut NoRam);
        assert!(c.has_interrupt(1));
        assert!(!c.take_wakeup(1));
    }

    #[test]
    fn lapic_timer_deadline_is_reported_and_fires_on_poll() {
        let (mut c, _) = chipset(1);
        enable_apic(&mut c, 0);
        lapic_write(&mut c, 0, reg::LVT_TIMER, (2 << 17) | 0xec, 0);
        c.set_tsc_deadline(0, 5_000);
        assert_eq!(c.next_deadline(0), Some(5_000));
        c.poll(4_999, &mut NoRam);
        assert!(!c.has_interrupt(0));
        assert_eq!(c.timer_interrupts(0), 0);
        c.poll(5_000, &mut NoRam);
        assert_eq!(c.take_interrupt(0), Some(0xec));
        assert_eq!(c.next_deadline(0), None);
        assert_eq!(c.timer_interrupts(0), 1);
        // A masked timer still expires but raises nothing to count.
        lapic_write(&mut c, 0, reg::LVT_TIMER, (2 << 17) | 1 << 16 | 0xec, 0);
        c.set_tsc_deadline(0, 6_000);
        c.poll(6_000, &mut NoRam);
        assert_eq!(c.timer_interrupts(0), 1);
    }

    #[test]
    fn pit_ticks_through_pic_in_virtual_wire_mode() {
        let (mut c, _) = chipset(1);
        // The classic PIC set-up, IRQ0 unmasked; the APIC stays disabled.
        for (port, value) in [(0x20, 0x11), (0x21, 0x08), (0x21, 4), (0x21, 1), (0x21, 0xfe)] {
            c.port_write(port, 1, value, 0);
        }
        c.port_write(0x43, 1, 0x34, 0);
        c.port_write(0x40, 1, 0x9c, 0);
        c.port_write(0x40, 1, 0x2e, 0); // 100 Hz
        let first = c.next_deadline(0).unwrap();
        assert!((9_990_000..=10_010_000).contains(&first), "{first}");
        c.poll(first, &mut NoRam);
        assert_eq!(c.take_interrupt(0), Some(0x08));
        assert_eq!(c.take_interrupt(0), None);
    }

    /// `poll` skipping what is not due (`PollCache`) changes nothing: a
    /// chipset whose cache is dropped before every poll (every device polled
    /// each time, as before the cache) and one that keeps it see the same
    /// interrupts, deadlines and RTC flags through random PIT, RTC, PIC,
    /// IOAPIC and local APIC timer programming and random steps of time.
    #[test]
    fn polls_skipping_what_is_not_due_match_polling_everything() {
        for seed in 0..40 {
            let mut rng = basalt_fuzz::Rng::new(seed);
            let (mut cached, _) = chipset(1);
            let (mut full, _) = chipset(1);
            let mut now = 0u64;
            for step in 0..600 {
                let op = rng.below(14);
                let mut both = |f: &mut dyn FnMut(&mut Chipset)| {
                    f(&mut cached);
                    f(&mut full);
                };
                match op {
                    0 => {
                        // PIT channel 0: mode 2 or 3 (periodic) or 0 (one-shot).
                        let mode = rng.pick(&[0x30u32, 0x34, 0x36]);
                        let reload = rng.below(0x4000) as u32 + 1;
                        both(&mut |c| {
                            c.port_write(0x43, 1, mode, now);
                            c.port_write(0x40, 1, reload & 0xff, now);
                            c.port_write(0x40, 1, reload >> 8, now);
                        });
                    }
                    1 => {
                        // RTC register A (periodic rate) or B (enables, SET).
                        let (register, value) = if rng.chance(2) {
                            (0x0a, 0x20 | rng.below(16) as u32)
                        } else {
                            (0x0b, rng.below(256) as u32 & 0xf2)
                        };
                        both(&mut |c| {
                            c.port_write(0x70, 1, register, now);
                            c.port_write(0x71, 1, value, now);
                        });
                    }
                    2 => {
                        // Read (and so clear) register C.
                        let (a, b) = (
                            {
                                cached.port_write(0x70, 1, 0x0c, now);
                                cached.port_read(0x71, 1, now)
                            },
                            {
                                full.port_write(0x70, 1, 0x0c, now);
                                full.port_read(0x71, 1, now)
                            },
                        );
                        assert_eq!(a, b, "seed {seed} step {step}: register C");
                    }
                    3 => {
                        let init: [(u16, u32); 5] = [(0x20, 0x11), (0x21, 0x08), (0x21, 4), (0x21, 1), (0x21, 0)];
                        let mask = rng.below(256) as u32;
                        both(&mut |c| {
                            for (port, value) in init {
                                c.port_write(port, 1, value, now);
                            }
                            c.port_write(0x21, 1, mask, now);
                        });
                    }
                    4 => {
                        let pin = rng.pick(&[2u32, 8]);
                        let low = (0x30 + pin) | if rng.chance(3) { 1 << 16 } else { 0 };
                        both(&mut |c| {
                            enable_apic(c, 0);
                            ioapic_route(c, pin, low, 0);
                        });
                    }
                    5 => {
                        let deadline = now + rng.below(5_000_000);
                        both(&mut |c| {
                            lapic_write(c, 0, reg::LVT_TIMER, (2 << 17) | 0xec, now);
                            c.set_tsc_deadline(0, deadline);
                        });
                    }
                    7 => {
                        // COM1 (its interrupt on IRQ 4) and the PM timer: no clock of `poll`'s.
                        let (port, value) = (rng.pick(&[0x3f8u16, 0x3f9, 0x3fc]), rng.below(16) as u32);
                        both(&mut |c| {
                            c.port_write(port, 1, value, now);
                            c.port_read(0x608, 4, now);
                        });
                    }
                    6 => {
                        // End whatever is in service.
                        both(&mut |c| {
                            lapic_write(c, 0, reg::EOI, 0, now);
                            c.port_write(0x20, 1, 0x20, now);
                        });
                    }
                    _ => {
                        now += rng.pick(&[1u64, 1_000, 100_000, 1_000_000, 20_000_000]) * (1 + rng.below(3));
                        full.poll_cache = None;
                        full.poll(now, &mut NoRam);
                        cached.poll(now, &mut NoRam);
                        assert_eq!(cached.next_deadline(0), full.next_deadline(0), "seed {seed} step {step}");
                        for _ in 0..3 {
                            assert_eq!(cached.take_interrupt(0), full.take_interrupt(0), "seed {seed} step {step}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn masked_sources_do_not_wake_the_vcpu() {
        let (mut c, _) = chipset(1);
        c.port_write(0x43, 1, 0x34, 0);
        c.port_write(0x40, 1, 0x00, 0);
        c.port_write(0x40, 1, 0x10, 0);
        c.port_write(0x21, 1, 0xff, 0);
        assert_eq!(c.next_deadline(0), None, "PIT counting but IRQ0 masked everywhere");
    }

    /// COM1 on a level-triggered IOAPIC pin (vector 0x34), its received-data
    /// interrupt on, two bytes waiting: the line stays up until both are read.
    fn level_triggered_com1_with_two_bytes() -> Chipset {
        let (mut c, _) = chipset(1);
        enable_apic(&mut c, 0);
        ioapic_route(&mut c, 4, 0x8000 | 0x34, 0); // level-triggered COM1
        c.port_write(0x3fc, 1, 0x08, 0);
        c.com1_input(b"ab");
        c.port_write(0x3f9, 1, 0x01, 0); // IER: received data
        c
    }

    #[test]
    fn with_virtual_interrupt_delivery_a_level_pin_redelivers_after_the_eoi_exit() {
        let mut c = level_triggered_com1_with_two_bytes();
        let mut page: lapic::VirtualApicPage = [0; 1024];
        assert!(c.mirror_lapic(0, &mut page, true));
        assert_eq!(c.lapic_interrupt_status(0), 0x34, "posted as RVI");
        assert_eq!(c.lapic_eoi_exit_bitmap(0), [1 << 0x34, 0, 0, 0], "its EOI must exit");
        // The CPU delivers it (IRR to ISR in the page), the guest reads a
        // byte and ends it (ISR cleared), and the EOI exits.
        let (irr, isr) = ((reg::IRR + 0x10) as usize / 4, (reg::ISR + 0x10) as usize / 4);
        page[irr] &= !(1 << (0x34 - 32));
        page[isr] |= 1 << (0x34 - 32);
        c.port_read(0x3f8, 1, 0);
        page[isr] = 0;
        c.absorb_lapic(0, &page, true);
        assert_eq!(c.lapic_interrupt_status(0), 0, "nothing requested or in service yet");
        c.virtual_eoi(0, 0x34);
        // One byte still waiting: the IOAPIC sends the pin's vector again.
        assert_eq!(c.lapic_interrupt_status(0), 0x34);
        assert!(c.has_interrupt(0));
        assert!(!c.extint_pending(0), "nothing from the PIC to inject");
    }

    #[test]
    fn level_triggered_ioapic_pin_redelivers_after_eoi() {
        let mut c = level_triggered_com1_with_two_bytes();
        assert_eq!(c.take_interrupt(0), Some(0x34));
        c.port_read(0x3f8, 1, 0);
        lapic_write(&mut c, 0, reg::EOI, 0, 0);
        assert_eq!(c.take_interrupt(0), Some(0x34), "one byte still waiting");
        c.port_read(0x3f8, 1, 0);
        lapic_write(&mut c, 0, reg::EOI, 0, 0);
        assert_eq!(c.take_interrupt(0), None);
    }

    #[test]
    fn virtio_slots_are_mapped_and_described() {
        let (mut c, _) = chipset(1);
        let console = crate::virtio::console::Console::new(alloc::boxed::Box::new(|_: &[u8]| {}));
        assert_eq!(c.add_virtio(alloc::boxed::Box::new(console)), Ok(0));
        assert_eq!(c.mmio_read(0, layout::VIRTIO_BASE, 4, 0), 0x7472_6976);
        assert_eq!(c.mmio_read(0, layout::VIRTIO_BASE + 8, 4, 0), 3);
        assert_eq!(c.mmio_read(0, layout::VIRTIO_BASE + layout::VIRTIO_STRIDE, 4, 0), 0xffff_ffff);
        assert_eq!(c.mmio.unclaimed.reads, 1, "an empty slot is nobody's");
        let tables = c.acpi_tables();
        assert_eq!(tables.windows(8).filter(|w| *w == b"LNRO0005").count(), 1);
        assert!(c.take_broken().is_empty());
    }

    #[test]
    fn local_apic_takes_only_aligned_32_bit_writes() {
        let (mut c, _) = chipset(1);
        enable_apic(&mut c, 0);
        lapic_write(&mut c, 0, reg::LVT_TIMER, (1 << 17) | 0x40, 0);
        // A byte into the padding after the initial count, and a 16-bit write of it.
        c.mmio_write(0, layout::LAPIC_BASE + reg::TIMER_INITIAL as u64 + 8, 1, 1, 0, &mut NoRam);
        c.mmio_write(0, layout::LAPIC_BASE + reg::TIMER_INITIAL as u64, 2, 1, 0, &mut NoRam);
        assert_eq!(c.lapics[0].next_deadline(), None, "neither armed the timer");
        lapic_write(&mut c, 0, reg::TIMER_INITIAL, 1, 0);
        assert_eq!(c.lapics[0].next_deadline(), Some(HZ / 10_000), "periodic timers stop at 10 kHz");
    }

    #[test]
    fn input_nobody_takes_is_counted_over_com1_and_virtio_consoles() {
        let (mut c, _) = chipset(1);
        let console = crate::virtio::console::Console::new(alloc::boxed::Box::new(|_: &[u8]| {}));
        c.add_virtio(alloc::boxed::Box::new(console)).unwrap();
        assert_eq!(c.dropped_input(), 0);
        c.com1_input(&[b'x'; crate::uart::HOST_INPUT + 3]);
        assert_eq!(c.dropped_input(), 3);
        c.virtio[0].0.device_mut().push_input(&[b'y'; crate::virtio::console::INPUT_LIMIT + 5]);
        assert_eq!(c.dropped_input(), 8);
    }

    #[test]
    fn virtio_work_left_over_brings_the_vmm_back_at_once() {
        use crate::virtio::tests::Ram;
        let (mut c, _) = chipset(1);
        let console = crate::virtio::console::Console::new(alloc::boxed::Box::new(|_: &[u8]| {}));
        c.add_virtio(alloc::boxed::Box::new(console)).unwrap();
        let mut ram = Ram(vec![0; 1 << 20]);
        let reg = |c: &mut Chipset, offset: u64, value: u32, ram: &mut Ram| {
            c.mmio_write(0, layout::VIRTIO_BASE + offset, 4, value as u64, 0, ram);
        };
        // A driver's set-up of the transmit queue: descriptors at 0x1000, rings after.
        for (offset, value) in
            [(0x70, 3), (0x24, 1), (0x20, 1), (0x70, 11), (0x30, 1), (0x38, 16), (0x80, 0x1000), (0x90, 0x2000)]
        {
            reg(&mut c, offset, value, &mut ram);
        }
        for (offset, value) in [(0xa0, 0x3000), (0x44, 1), (0x70, 15)] {
            reg(&mut c, offset, value, &mut ram);
        }
        let long = 4 * crate::virtio::console::TRANSMIT_PER_CALL as u32;
        let mut descriptor = [0u8; 16];
        descriptor[..8].copy_from_slice(&0x8000u64.to_le_bytes());
        descriptor[8..12].copy_from_slice(&long.to_le_bytes());
        ram.write(0x1000, &descriptor).unwrap();
        ram.write(0x2002, &1u16.to_le_bytes()).unwrap();
        assert_eq!(c.next_deadline(0), None);
        reg(&mut c, 0x50, 1, &mut ram);
        assert_eq!(c.next_deadline(0), Some(0), "a page went out; three wait");
        for _ in 0..3 {
            c.poll(0, &mut ram);
        }
        assert_eq!(c.next_deadline(0), None);
        let mut used = [0u8; 2];
        ram.read(0x3002, &mut used).unwrap();
        assert_eq!(u16::from_le_bytes(used), 1);
    }

    #[test]
    fn x2apic_ipis_cross_between_vcpus_and_the_page_is_gone() {
        use crate::lapic::apic_base::{EN, EXTD};
        let (mut c, _) = chipset(3);
        for vcpu in 0..3 {
            enable_apic(&mut c, vcpu);
            c.set_apic_base(vcpu, layout::LAPIC_BASE | EN | EXTD, true, 48).unwrap();
        }
        assert_eq!(c.mmio_read(1, layout::LAPIC_BASE + 0x20, 4, 0), 0xffff_ffff, "unclaimed");
        assert_eq!(c.mmio.unclaimed.reads, 1);
        // Physical IPI 0 -> 2, then a logical one to cluster 0, members 0 and 1.
        c.x2apic_write(0, 0x830, 2 << 32 | 0x45, 0).unwrap();
        assert_eq!((c.take_interrupt(2), c.has_interrupt(1)), (Some(0x45), false));
        c.x2apic_write(2, 0x830, 0b11 << 32 | 1 << 11 | 0x46, 0).unwrap();
        assert_eq!((c.take_interrupt(0), c.take_interrupt(1), c.has_interrupt(2)), (Some(0x46), Some(0x46), false));
        assert!(c.take_wakeup(1));
        // Level-triggered EOI through MSR 0x80b reaches the IOAPIC as from the page.
        assert_eq!(c.x2apic_write(0, 0x80b, 0, 0), Ok(()));
        assert_eq!(c.x2apic_write(0, 0x80b, 1, 0), Err(lapic::MsrRefused));
        // CR8's TPR in x2APIC mode.
        c.set_tpr(1, 0x70);
        assert_eq!(c.x2apic_read(1, 0x808, 0), Ok(0x70));
    }

    #[test]
    fn a_disabled_apic_is_not_on_the_bus() {
        let (mut c, _) = chipset(2);
        enable_apic(&mut c, 0);
        enable_apic(&mut c, 1);
        c.set_apic_base(1, layout::LAPIC_BASE, true, 48).unwrap();
        lapic_write(&mut c, 0, reg::ICR_LOW, 0x000c_0033, 0);
        lapic_write(&mut c, 0, reg::ICR_HIGH, 1 << 24, 0);
        lapic_write(&mut c, 0, reg::ICR_LOW, 0x4500, 0);
        assert!(!c.has_interrupt(1) && c.take_signal(1).is_none() && !c.take_wakeup(1));
        // Its page writes are nobody's, and the mirror must undo them.
        let mut page: lapic::VirtualApicPage = [0; 1024];
        assert!(c.mirror_lapic(1, &mut page, false));
        lapic_write(&mut c, 1, reg::SVR, 0x1ff, 0);
        assert_eq!(c.mmio.unclaimed.writes, 1);
        assert!(c.mirror_lapic(1, &mut page, false), "stale after a write to the undecoded page");
        assert_eq!(c.apic_mode(1), lapic::Mode::Disabled);
    }

    #[test]
    fn refused_msrs_are_named_once_each_up_to_the_bound() {
        let (mut c, _) = chipset(1);
        let firsts: Vec<bool> = (0..20).chain(0..20).map(|msr| c.first_refusal_of_msr(msr)).collect();
        assert_eq!(firsts.iter().filter(|&&first| first).count(), REFUSED_MSRS_LOGGED);
        assert!(firsts[..REFUSED_MSRS_LOGGED].iter().all(|&first| first));
        assert!(!c.first_refusal_of_msr(0), "named already");
    }

    #[test]
    fn power_off_reset_and_other_ports() {
        let (mut c, _) = chipset(1);
        assert_eq!(c.port_write(layout::PM1_CONTROL, 2, (5 << 10) | (1 << 13), 0), Some(Request::PowerOff));
        assert_eq!(c.port_write(layout::RESET_CONTROL, 1, 0x06, 0), Some(Request::Reset));
        c.port_write(0x70, 1, 0x09, 0);
        assert_eq!(c.port_read(0x71, 1, 0), 0x26);
        let t0 = c.port_read(layout::PM_TIMER, 4, 0);
        let t1 = c.port_read(layout::PM_TIMER, 4, HZ);
        assert_eq!(t1 - t0, acpi::PM_TIMER_HZ as u32);
        assert_eq!(c.port_read(0xcfc, 4, 0), u32::MAX, "nothing there");
        assert_eq!(c.ports.unclaimed.reads, 1);
        let tables = c.acpi_tables();
        assert_eq!(&tables[..8], b"RSD PTR ");
    }
}
