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
//!
//! Every vCPU of a VM calls in at once, from its own core, through `&self`:
//! the chipset locks what each call touches and no more, so two vCPUs that
//! exit on different devices do not wait for each other. The locks, and the
//! one order in which a call may hold several:
//!
//! ```text
//! a device (PIT, RTC, PM block, COM1, a virtio slot, a bus)
//!   -> the interrupt routing (IOAPIC and 8259 pair)
//!     -> one vCPU's own state (local APIC, INIT/SIPI latch, MSRs)
//! ```
//!
//! A call never holds two vCPUs' states at once: a local APIC's IPI or EOI
//! leaves its own vCPU's lock before it reaches the others. Wake-ups are
//! atomic flags, and what the clocks' last full poll worked out is kept in
//! atomics (`PollCache`), so a vCPU's pre-entry look at them takes no lock
//! another vCPU could be holding.

use crate::acpi::{self, PowerManagement};
use crate::bus::{all_ones, MmioBus, PortBus, Request, Unclaimed};
use crate::ioapic::IoApic;
use crate::lapic::{self, DeliveryMode, Destination, LocalApic, Message};
use crate::layout;
use crate::pic::PicPair;
use crate::pit::Pit;
use crate::rtc::Rtc;
use crate::uart::{LineSink, Uart16550};
use crate::virtio::{Broken, VirtioDevice, VirtioMmio};
use crate::GuestRam;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::{Mutex, MutexGuard};

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

/// What the last full `poll` worked out about the platform's clocks, so
/// that the next ones (and `poll_due`, on every exit of every vCPU) can skip
/// what cannot have come due, without a lock. Valid until a port or MMIO
/// access that may reprogram the PIT or RTC, mask an IRQ or give a virtio
/// device work (`forget`), or a new device. The local APICs are not in it:
/// each vCPU looks at its own timer in every `poll`, cheaply.
///
/// Validity is a generation: `forget` counts `changes` up after the device
/// changed, and a full poll (one at a time, under `polling`) notes the count
/// before it reads the devices and publishes it with its figures. A change
/// that lands while a poll reads the devices leaves the figures invalid.
struct PollCache {
    changes: AtomicU64,
    /// `changes` as the figures below were worked out (`u64::MAX`: never).
    valid_at: AtomicU64,
    /// The earliest moment a full poll has work: the PIT's next terminal
    /// count (routed or not: `poll` raises its line either way), the RTC's
    /// next enabled interrupt, 0 while a virtio device has work.
    due: AtomicU64,
    /// `next_deadline` without the local APIC's: the routed PIT and RTC
    /// interrupts, 0 for a virtio backlog; `u64::MAX` for none.
    platform_deadline: AtomicU64,
    /// One full poll at a time.
    polling: Mutex<()>,
}

impl PollCache {
    fn new() -> PollCache {
        PollCache {
            changes: AtomicU64::new(0),
            valid_at: AtomicU64::new(u64::MAX),
            due: AtomicU64::new(0),
            platform_deadline: AtomicU64::new(u64::MAX),
            polling: Mutex::new(()),
        }
    }

    /// Called after a change that may move the clocks' next events.
    fn forget(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    fn is_valid(&self) -> bool {
        self.valid_at.load(Ordering::Acquire) == self.changes.load(Ordering::Acquire)
    }
}

/// What belongs to one vCPU and changes only under its lock.
struct VcpuState {
    apic: LocalApic,
    signals: StartupLatch,
    msrs: VcpuMsrs,
}

struct VcpuSlot {
    state: Mutex<VcpuState>,
    /// Something arrived for the vCPU (see `take_wakeup`).
    wakeup: AtomicBool,
}

/// The interrupt controllers every device line goes through.
struct Routing {
    ioapic: IoApic,
    pic: PicPair,
}

struct Com1 {
    uart: Uart16550,
    /// The level of its interrupt line, as the PIC and IOAPIC last saw it.
    line: bool,
}

/// A virtio-mmio device in its slot, with the level of its interrupt line.
struct VirtioSlot {
    device: VirtioMmio,
    line: bool,
}

/// The MSR numbers already logged as refused (the first
/// `REFUSED_MSRS_LOGGED`).
struct RefusedMsrs {
    seen: [u32; REFUSED_MSRS_LOGGED],
    count: usize,
}

/// A copy of the IOAPIC's register window where the guest reads it without
/// an exit: IOREGSEL at offset 0 and IOWIN at 0x10 of a page the VMM maps
/// read-only at the IOAPIC's address (writes still exit and come here). Each
/// read of IOWIN on an emulated page is an exit after the exit of the index
/// write: Linux reads every redirection entry several times while it sets the
/// IOAPIC up. The copy is kept under the routing lock, after anything that
/// changed the IOAPIC (a select, an entry, remote IRR).
pub trait IoApicWindow: Send + Sync {
    fn show(&self, select: u32, window: u32);
}

pub struct Chipset {
    vcpus: Vec<VcpuSlot>,
    routing: Mutex<Routing>,
    /// The page the guest reads the IOAPIC's window from (None: every
    /// access exits).
    ioapic_window: Option<Box<dyn IoApicWindow>>,
    /// The 8259 pair's INTR output as the routing lock last left it, so that
    /// vCPU 0 sees whether an ExtINT waits without taking that lock.
    pic_output: AtomicBool,
    pit: Mutex<Pit>,
    rtc: Mutex<Rtc>,
    pm: Mutex<PowerManagement>,
    /// The SCI's level as last routed.
    sci_line: AtomicBool,
    com1: Mutex<Com1>,
    /// INITs and SIPIs superseded or ignored in a vCPU's latch.
    dropped_signals: AtomicU64,
    refused_msrs: Mutex<RefusedMsrs>,
    /// Further port devices (debug exit, ...).
    pub ports: Mutex<PortBus>,
    /// virtio-mmio devices, slot i at `layout::virtio_slot(i)`.
    virtio: Vec<Mutex<VirtioSlot>>,
    /// A virtio device broke and `take_broken` has not reported it yet: the
    /// one thing it looks at first, so the MMIO exits that find nothing to
    /// report (all but a handful) lock no slot.
    unreported_breakage: AtomicBool,
    /// Further MMIO devices.
    pub mmio: Mutex<MmioBus>,
    poll_cache: PollCache,
}

impl Chipset {
    pub fn new(config: ChipsetConfig) -> Chipset {
        let vcpus = config.vcpus.max(1) as usize;
        // Periodic local APIC timers: at most 10 000 interrupts a second.
        // vCPU 0 is the bootstrap processor (IA32_APIC_BASE.BSP).
        let slot = |id: usize| {
            let apic = LocalApic::new(id as u8).with_min_timer_period(config.tsc_hz / 10_000);
            let apic = if id == 0 { apic.as_bootstrap() } else { apic };
            VcpuSlot {
                state: Mutex::new(VcpuState { apic, signals: StartupLatch::default(), msrs: VcpuMsrs::default() }),
                wakeup: AtomicBool::new(false),
            }
        };
        Chipset {
            vcpus: (0..vcpus).map(slot).collect(),
            routing: Mutex::new(Routing { ioapic: IoApic::new(vcpus as u8), pic: PicPair::new() }),
            ioapic_window: None,
            pic_output: AtomicBool::new(false),
            pit: Mutex::new(Pit::new(config.tsc_hz)),
            rtc: Mutex::new(Rtc::new(config.tsc_hz, config.unix_time, config.now)),
            pm: Mutex::new(PowerManagement::new(config.tsc_hz)),
            sci_line: AtomicBool::new(false),
            com1: Mutex::new(Com1 {
                uart: if config.com1_unbuffered {
                    Uart16550::unbuffered(config.com1_output)
                } else {
                    Uart16550::new(config.com1_output)
                },
                line: false,
            }),
            dropped_signals: AtomicU64::new(0),
            refused_msrs: Mutex::new(RefusedMsrs { seen: [0; REFUSED_MSRS_LOGGED], count: 0 }),
            ports: Mutex::new(PortBus::new()),
            virtio: Vec::new(),
            unreported_breakage: AtomicBool::new(false),
            mmio: Mutex::new(MmioBus::new()),
            poll_cache: PollCache::new(),
        }
    }

    /// From now on the guest reads the IOAPIC's window from `window` (see
    /// `IoApicWindow`); it shows the current one at once.
    pub fn mirror_ioapic_window(&mut self, window: Box<dyn IoApicWindow>) {
        let (select, value) = self.routing.get_mut().ioapic.window();
        window.show(select, value);
        self.ioapic_window = Some(window);
    }

    /// Plugs a virtio device into the next free slot; returns the slot.
    pub fn add_virtio(&mut self, device: alloc::boxed::Box<dyn VirtioDevice>) -> Result<usize, &'static str> {
        self.poll_cache.forget();
        if self.virtio.len() == layout::VIRTIO_SLOTS {
            return Err("all virtio slots are in use");
        }
        self.virtio.push(Mutex::new(VirtioSlot { device: VirtioMmio::new(device), line: false }));
        Ok(self.virtio.len() - 1)
    }

    /// virtio devices that broke since the last call: (slot, device, why).
    pub fn take_broken(&self) -> Vec<(usize, &'static str, Broken)> {
        let mut out = Vec::new();
        // Cleared before the slots are looked at: a device breaking on
        // another vCPU meanwhile sets it again, for the next call. Looked at
        // first without a write: every MMIO exit asks, and nearly always
        // nothing broke.
        if !self.unreported_breakage.load(Ordering::Acquire) || !self.unreported_breakage.swap(false, Ordering::AcqRel)
        {
            return out;
        }
        for (slot, virtio) in self.virtio.iter().enumerate() {
            let v = &mut virtio.lock().device;
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
    pub fn flush_output(&self) {
        self.com1.lock().uart.flush();
        for virtio in &self.virtio {
            virtio.lock().device.device_mut().flush();
        }
    }

    /// Host input bytes (typed at the console) that the guest did not take in
    /// time, over COM1 and its virtio consoles.
    pub fn dropped_input(&self) -> u64 {
        let virtio = self.virtio.iter().map(|v| v.lock().device.device().dropped_input());
        virtio.fold(self.com1.lock().uart.dropped_input(), u64::saturating_add)
    }

    /// Accesses no device claimed: on the port bus, on the MMIO bus.
    pub fn unclaimed(&self) -> (Unclaimed, Unclaimed) {
        (self.ports.lock().unclaimed, self.mmio.lock().unclaimed)
    }

    fn virtio_at(&self, address: u64) -> Option<(usize, u64)> {
        let offset = address.checked_sub(layout::VIRTIO_BASE)?;
        let slot = (offset / layout::VIRTIO_STRIDE) as usize;
        let within = offset % layout::VIRTIO_STRIDE;
        (slot < self.virtio.len() && within < layout::VIRTIO_SIZE).then_some((slot, within))
    }

    /// A virtio device's line follows its interrupt status (the slot is
    /// locked by the caller). Called after everything that may serve its
    /// queues (a write, a poll), which is also where a device breaks: noted
    /// for `take_broken`.
    fn update_virtio_line(&self, index: usize, slot: &mut VirtioSlot) {
        if slot.device.broken.is_some() && !slot.device.broken_reported {
            self.unreported_breakage.store(true, Ordering::Release);
        }
        let level = slot.device.irq_line();
        if level != slot.line {
            slot.line = level;
            let gsi = layout::virtio_slot(index).1 as usize;
            self.route(|routing| routing.ioapic.set_line(gsi, level));
        }
    }

    pub fn vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// One vCPU's own state, locked.
    fn vcpu(&self, vcpu: usize) -> MutexGuard<'_, VcpuState> {
        self.vcpus[vcpu].state.lock()
    }

    /// An operator pressed the VM's power button (a graceful shutdown): the
    /// SCI goes up once the guest's ACPI enabled the event.
    pub fn press_power_button(&self) {
        self.poll_cache.forget();
        let mut pm = self.pm.lock();
        pm.press_power_button();
        self.update_sci(pm.sci());
    }

    /// The SCI line follows the PM block's events (the PM block is locked by the caller).
    fn update_sci(&self, level: bool) {
        if self.sci_line.swap(level, Ordering::AcqRel) != level {
            self.set_isa_irq(layout::IRQ_SCI, level);
        }
    }

    /// Bytes typed for the guest's serial console.
    pub fn com1_input(&self, bytes: &[u8]) {
        self.poll_cache.forget();
        let mut com1 = self.com1.lock();
        com1.uart.push_input(bytes);
        self.update_com1_line(&mut com1);
    }

    pub fn port_read(&self, port: u16, size: u8, now: u64) -> u32 {
        use crate::bus::PortDevice;
        // Reads of the PIC and the PIT's counters drop the poll cache, as
        // their writes do: cheap, and a read-back or a PIC poll changes state.
        if matches!(port, layout::PIC_MASTER | 0x21 | layout::PIC_SLAVE | 0xa1 | 0x40..=0x42) {
            self.poll_cache.forget();
        }
        match port {
            layout::PIC_MASTER | 0x21 => self.routing.lock().pic.read(0, port - layout::PIC_MASTER) as u32,
            layout::PIC_SLAVE | 0xa1 => self.routing.lock().pic.read(1, port - layout::PIC_SLAVE) as u32,
            layout::PIC_ELCR | 0x4d1 => self.routing.lock().pic.read_elcr((port - layout::PIC_ELCR) as usize) as u32,
            0x40..=0x42 => self.pit.lock().read(port - layout::PIT, now) as u32,
            0x43 => 0xff,
            layout::SYSTEM_CONTROL => self.pit.lock().read_port61(now) as u32,
            0x71 => {
                let mut rtc = self.rtc.lock();
                // Reading register C clears the flags the next interrupt
                // waits on; the other registers change nothing.
                let clears_flags = rtc.read_clears_flags();
                let value = rtc.read(now) as u32;
                drop(rtc);
                if clears_flags {
                    self.poll_cache.forget();
                }
                value
            }
            0x3f8..=0x3ff => {
                let mut com1 = self.com1.lock();
                let value = com1.uart.read(port - layout::COM1, size);
                self.update_com1_line(&mut com1);
                value
            }
            p if (layout::PM_BASE..layout::PM_BASE + layout::PM_SIZE).contains(&p) => {
                self.pm.lock().read(p - layout::PM_BASE, size, now)
            }
            layout::RESET_CONTROL => 0,
            _ => self.ports.lock().read(port, size),
        }
    }

    pub fn port_write(&self, port: u16, size: u8, value: u32, now: u64) -> Option<Request> {
        use crate::bus::PortDevice;
        let byte = value as u8;
        match port {
            layout::PIC_MASTER | 0x21 => self.route(|r| {
                r.pic.write(0, port - layout::PIC_MASTER, byte);
                None
            }),
            layout::PIC_SLAVE | 0xa1 => self.route(|r| {
                r.pic.write(1, port - layout::PIC_SLAVE, byte);
                None
            }),
            layout::PIC_ELCR | 0x4d1 => self.route(|r| {
                r.pic.write_elcr((port - layout::PIC_ELCR) as usize, byte);
                None
            }),
            0x40..=0x43 => self.pit.lock().write(port - layout::PIT, byte, now),
            layout::SYSTEM_CONTROL => self.pit.lock().write_port61(byte, now),
            layout::RTC => self.rtc.lock().select(byte),
            0x71 => self.rtc.lock().write(byte, now),
            0x3f8..=0x3ff => {
                let mut com1 = self.com1.lock();
                let request = com1.uart.write(port - layout::COM1, size, value);
                self.update_com1_line(&mut com1);
                return request;
            }
            p if (layout::PM_BASE..layout::PM_BASE + layout::PM_SIZE).contains(&p) => {
                let mut pm = self.pm.lock();
                let request = pm.write(p - layout::PM_BASE, size, value);
                self.update_sci(pm.sci());
                return request;
            }
            layout::RESET_CONTROL => return acpi::reset_control_write(byte),
            _ => return self.ports.lock().write(port, size, value),
        }
        // The PIC's masks route IRQs; the PIT's and RTC's registers move
        // their next events (the RTC's index alone moves nothing, but costs
        // nothing to count).
        self.poll_cache.forget();
        None
    }

    /// An MMIO read by `vcpu` (the local APIC page is per vCPU, and only
    /// there while that APIC is in xAPIC mode: otherwise the address is
    /// nobody's).
    pub fn mmio_read(&self, vcpu: usize, address: u64, size: u8, now: u64) -> u64 {
        if let Some(offset) = offset_in(address, layout::LAPIC_BASE, layout::LAPIC_SIZE) {
            let state = self.vcpu(vcpu);
            if state.apic.decodes_mmio() {
                let value = state.apic.read(offset as u32 & !0xf, now) as u64;
                return value >> (8 * (offset & 3)) & all_ones(size);
            }
        }
        if let Some(offset) = offset_in(address, layout::IOAPIC_BASE, layout::IOAPIC_SIZE) {
            return self.routing.lock().ioapic.read(offset & !3) as u64 & all_ones(size);
        }
        if let Some((slot, offset)) = self.virtio_at(address) {
            return self.virtio[slot].lock().device.read(offset, size) as u64 & all_ones(size);
        }
        self.mmio.lock().read(address, size)
    }

    /// An MMIO write; `ram` is for devices that move data (virtio).
    pub fn mmio_write(
        &self,
        vcpu: usize,
        address: u64,
        size: u8,
        value: u64,
        now: u64,
        ram: &mut dyn GuestRam,
    ) -> Option<Request> {
        if let Some(offset) = offset_in(address, layout::LAPIC_BASE, layout::LAPIC_SIZE) {
            let mut state = self.vcpu(vcpu);
            if !state.apic.decodes_mmio() {
                // Unclaimed (below), but a CPU virtualising the page has already
                // stored the value there: the next mirror takes it out again.
                state.apic.page_written_while_undecoded();
            } else {
                // Registers are written whole, by aligned 32-bit stores; anything
                // else is model-specific on hardware and ignored here (a byte
                // written into a register's padding must not become a write of it).
                if size != 4 || offset & 0xf != 0 {
                    return None;
                }
                let effect = state.apic.write(offset as u32, value as u32, now);
                drop(state);
                self.act_on_lapic(vcpu, effect);
                return None;
            }
        }
        if let Some(offset) = offset_in(address, layout::IOAPIC_BASE, layout::IOAPIC_SIZE) {
            if offset & !3 == 0 {
                // IOREGSEL: half of the IOAPIC's writes, and they route nothing.
                let mut routing = self.routing.lock();
                routing.ioapic.write(0, value as u32);
                self.show_ioapic_window(&routing.ioapic);
                return None;
            }
            self.route(|r| r.ioapic.write(offset & !3, value as u32));
            // A pin may be masked or unmasked.
            self.poll_cache.forget();
            return None;
        }
        if let Some((index, offset)) = self.virtio_at(address) {
            let mut slot = self.virtio[index].lock();
            slot.device.write(offset, value as u32, ram);
            self.update_virtio_line(index, &mut slot);
            drop(slot);
            // A notification may leave a backlog.
            self.poll_cache.forget();
            return None;
        }
        self.mmio.lock().write(address, size, value)
    }

    /// What a local APIC register write asks of the platform (the vCPU's
    /// lock is no longer held: the message may be for any vCPU).
    fn act_on_lapic(&self, vcpu: usize, effect: Option<lapic::Effect>) {
        match effect {
            Some(lapic::Effect::Send(message)) => self.deliver(Some(vcpu), message),
            Some(lapic::Effect::LevelEoi(vector)) => self.route(|r| r.ioapic.end_of_interrupt(vector)),
            None => {}
        }
    }

    /// IA32_APIC_BASE of `vcpu`.
    pub fn apic_base(&self, vcpu: usize) -> u64 {
        self.vcpu(vcpu).apic.base()
    }

    /// WRMSR to IA32_APIC_BASE of `vcpu` (see `LocalApic::set_base`).
    pub fn set_apic_base(
        &self,
        vcpu: usize,
        value: u64,
        x2apic_offered: bool,
        phys_bits: u32,
    ) -> Result<(), lapic::BaseRefused> {
        self.vcpu(vcpu).apic.set_base(value, x2apic_offered, phys_bits)
    }

    /// The mode of `vcpu`'s local APIC (CPUID.1:EDX.APIC says whether it is on).
    pub fn apic_mode(&self, vcpu: usize) -> lapic::Mode {
        self.vcpu(vcpu).apic.mode()
    }

    /// RDMSR of an x2APIC MSR by `vcpu`.
    pub fn x2apic_read(&self, vcpu: usize, msr: u32, now: u64) -> Result<u64, lapic::MsrRefused> {
        self.vcpu(vcpu).apic.read_msr(msr, now)
    }

    /// WRMSR of an x2APIC MSR by `vcpu`; IPIs and EOIs go where they would
    /// from the page.
    pub fn x2apic_write(&self, vcpu: usize, msr: u32, value: u64, now: u64) -> Result<(), lapic::MsrRefused> {
        let effect = self.vcpu(vcpu).apic.write_msr(msr, value, now)?;
        self.act_on_lapic(vcpu, effect);
        Ok(())
    }

    /// `vcpu`'s task priority (CR8 is its bits 7:4), whatever the APIC's mode.
    pub fn tpr(&self, vcpu: usize) -> u8 {
        self.vcpu(vcpu).apic.tpr()
    }

    pub fn set_tpr(&self, vcpu: usize, tpr: u8) {
        self.vcpu(vcpu).apic.set_tpr(tpr);
    }

    /// `vcpu`'s MSRs kept with the platform.
    pub fn vcpu_msrs(&self, vcpu: usize) -> VcpuMsrs {
        self.vcpu(vcpu).msrs
    }

    /// Changes `vcpu`'s MSRs kept with the platform.
    pub fn update_vcpu_msrs<R>(&self, vcpu: usize, change: impl FnOnce(&mut VcpuMsrs) -> R) -> R {
        change(&mut self.vcpu(vcpu).msrs)
    }

    /// Whether the VM's log should name `msr` as answered with #GP: true the
    /// first time for each of the first `REFUSED_MSRS_LOGGED` numbers, false
    /// for a number already named and for every one past them.
    pub fn first_refusal_of_msr(&self, msr: u32) -> bool {
        let mut refused = self.refused_msrs.lock();
        let count = refused.count;
        if refused.seen[..count].contains(&msr) || count == REFUSED_MSRS_LOGGED {
            return false;
        }
        refused.seen[count] = msr;
        refused.count += 1;
        true
    }

    /// APIC virtualisation: a vCPU's local APIC state into its virtual-APIC
    /// page, when it changed since the last time or the page is `blank`.
    /// True when the page was written (the TPR threshold may have changed too).
    pub fn mirror_lapic(&self, vcpu: usize, page: &mut lapic::VirtualApicPage, blank: bool) -> bool {
        let apic = &mut self.vcpu(vcpu).apic;
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
    pub fn absorb_lapic(&self, vcpu: usize, page: &lapic::VirtualApicPage, delivery: bool) {
        self.vcpu(vcpu).apic.absorb(page, delivery);
    }

    /// Virtual-interrupt delivery: RVI and SVI for `vcpu`'s next entry.
    pub fn lapic_interrupt_status(&self, vcpu: usize) -> u16 {
        self.vcpu(vcpu).apic.interrupt_status()
    }

    /// Virtual-interrupt delivery: the vectors whose EOI must exit.
    pub fn lapic_eoi_exit_bitmap(&self, vcpu: usize) -> [u64; 4] {
        self.vcpu(vcpu).apic.eoi_exit_bitmap()
    }

    /// Virtual-interrupt delivery: `vcpu` ended a level-triggered `vector`.
    pub fn virtual_eoi(&self, vcpu: usize, vector: u8) {
        let effect = self.vcpu(vcpu).apic.virtual_eoi(vector);
        self.act_on_lapic(vcpu, effect);
    }

    /// APIC virtualisation: the TPR threshold for a vCPU's next entry.
    pub fn lapic_tpr_threshold(&self, vcpu: usize) -> u8 {
        self.vcpu(vcpu).apic.tpr_threshold()
    }

    /// Timer interrupts `vcpu`'s local APIC raised since the VM started.
    pub fn timer_interrupts(&self, vcpu: usize) -> u64 {
        self.vcpu(vcpu).apic.timer_interrupts
    }

    pub fn tsc_deadline(&self, vcpu: usize) -> u64 {
        self.vcpu(vcpu).apic.tsc_deadline()
    }

    pub fn set_tsc_deadline(&self, vcpu: usize, deadline: u64) {
        self.vcpu(vcpu).apic.set_tsc_deadline(deadline);
    }

    /// A TSC-deadline write from a guest whose TSC is offset from the host's:
    /// `deadline` in the guest's TSC, `fires_at` in the host's (see
    /// `LocalApic::arm_tsc_deadline`).
    pub fn arm_tsc_deadline(&self, vcpu: usize, deadline: u64, fires_at: u64) {
        self.vcpu(vcpu).apic.arm_tsc_deadline(deadline, fires_at);
    }

    /// Runs the clocks up to `now` for `vcpu` about to enter: its local
    /// APIC's timer, and the platform's timers and devices, which raise
    /// their interrupts for whichever vCPUs they are routed to.
    ///
    /// Most calls find nothing due but the local APIC's timer: the PIT, the
    /// RTC and the virtio devices are skipped until the moment the last full
    /// call worked out (`PollCache`), which is what they would have done.
    pub fn poll(&self, vcpu: usize, now: u64, ram: &mut dyn GuestRam) {
        self.vcpu(vcpu).apic.poll(now);
        if !self.platform_poll_due(now) {
            return;
        }
        let _polling = self.poll_cache.polling.lock();
        // Another vCPU may have done it while this one waited.
        if !self.platform_poll_due(now) {
            return;
        }
        let changes = self.poll_cache.changes.load(Ordering::Acquire);
        for (index, virtio) in self.virtio.iter().enumerate() {
            let mut slot = virtio.lock();
            slot.device.poll(ram);
            self.update_virtio_line(index, &mut slot);
        }
        let pit_fired = self.pit.lock().poll_irq0(now) > 0;
        if pit_fired {
            self.pulse_isa_irq(layout::IRQ_PIT);
        }
        let rtc_fired = self.rtc.lock().poll(now);
        if rtc_fired {
            self.pulse_isa_irq(layout::IRQ_RTC);
        }
        let pit_due = self.pit.lock().next_irq0().unwrap_or(u64::MAX);
        let rtc_due = self.rtc.lock().next_event().unwrap_or(u64::MAX);
        let virtio_work = self.virtio.iter().any(|v| v.lock().device.has_work());
        let due = if virtio_work { 0 } else { pit_due.min(rtc_due) };
        let cache = &self.poll_cache;
        cache.due.store(due, Ordering::Relaxed);
        cache.platform_deadline.store(self.platform_deadline().unwrap_or(u64::MAX), Ordering::Relaxed);
        cache.valid_at.store(changes, Ordering::Release);
    }

    /// Whether the platform's part of `poll` has work: a PIT or RTC event
    /// due, virtio work, or no valid figures to tell.
    fn platform_poll_due(&self, now: u64) -> bool {
        !self.poll_cache.is_valid() || now >= self.poll_cache.due.load(Ordering::Relaxed)
    }

    /// Whether `poll(vcpu, now)` would do anything: a timer due (the vCPU's
    /// local APIC's, the PIT's, the RTC's), virtio work, or no cache to
    /// tell. False lets the VMM skip it (the fast path).
    pub fn poll_due(&self, vcpu: usize, now: u64) -> bool {
        self.platform_poll_due(now) || self.vcpu(vcpu).apic.next_deadline().is_some_and(|at| now >= at)
    }

    /// The next moment a timer could interrupt `vcpu`: the VMM makes sure it gets
    /// control back by then. 0 (at once) while a virtio device has work left
    /// over from a call that reached its bound, for the next `poll` to go on
    /// with.
    pub fn next_deadline(&self, vcpu: usize) -> Option<u64> {
        let platform = if self.poll_cache.is_valid() {
            Some(self.poll_cache.platform_deadline.load(Ordering::Relaxed)).filter(|&at| at != u64::MAX)
        } else {
            self.platform_deadline()
        };
        [self.vcpu(vcpu).apic.next_deadline(), platform].into_iter().flatten().min()
    }

    /// `next_deadline` but for the local APICs' timers.
    fn platform_deadline(&self) -> Option<u64> {
        let (pit_routed, rtc_routed) = {
            let r = self.routing.lock();
            let routed =
                |irq: u8| r.ioapic.pin_unmasked(layout::gsi_of_isa_irq(irq) as usize) || r.pic.irq_unmasked(irq);
            (routed(layout::IRQ_PIT), routed(layout::IRQ_RTC))
        };
        let pit = self.pit.lock().next_irq0().filter(|_| pit_routed);
        let rtc = self.rtc.lock().next_event().filter(|_| rtc_routed);
        let device_work = self.virtio.iter().any(|v| v.lock().device.has_backlog()).then_some(0);
        [pit, rtc, device_work].into_iter().flatten().min()
    }

    /// Whether `vcpu` has an interrupt to take when it can.
    /// `vcpu`'s local APIC: the highest vector requested and in service, and
    /// its TPR (for reports).
    pub fn apic_vectors(&self, vcpu: usize) -> (Option<u8>, Option<u8>, u8) {
        let state = self.vcpu(vcpu);
        let (requested, in_service) = state.apic.highest_requested_and_in_service();
        (requested, in_service, state.apic.tpr())
    }

    pub fn has_interrupt(&self, vcpu: usize) -> bool {
        let state = self.vcpu(vcpu);
        state.apic.deliverable().is_some() || self.extint_pending_with(vcpu, &state.apic)
    }

    /// The vector to inject into `vcpu` now, acknowledged (it is in service
    /// from here on, so call this only when the guest can take it).
    pub fn take_interrupt(&self, vcpu: usize) -> Option<u8> {
        let mut state = self.vcpu(vcpu);
        if let Some(vector) = state.apic.deliverable() {
            state.apic.acknowledge(vector);
            return Some(vector);
        }
        drop(state);
        self.take_extint(vcpu)
    }

    /// The PIC's interrupt for `vcpu` (through LINT0 in ExtINT mode), acknowledged.
    pub fn take_extint(&self, vcpu: usize) -> Option<u8> {
        if !self.extint_pending(vcpu) {
            return None;
        }
        let mut vector = None;
        self.route(|r| {
            vector = r.pic.acknowledge();
            None
        });
        vector
    }

    /// Whether the PIC has an interrupt for `vcpu` (through LINT0 in ExtINT mode).
    pub fn extint_pending(&self, vcpu: usize) -> bool {
        vcpu == 0 && self.extint_pending_with(0, &self.vcpu(0).apic)
    }

    fn extint_pending_with(&self, vcpu: usize, apic: &LocalApic) -> bool {
        vcpu == 0 && apic.accepts_extint() && self.pic_output.load(Ordering::Acquire)
    }

    pub fn nmi_pending(&self, vcpu: usize) -> bool {
        self.vcpu(vcpu).apic.nmi_pending
    }

    pub fn take_nmi(&self, vcpu: usize) -> bool {
        core::mem::take(&mut self.vcpu(vcpu).apic.nmi_pending)
    }

    /// The next INIT or SIPI for `vcpu`: an INIT first, then the start-up
    /// vector that followed it (see `StartupLatch`).
    pub fn take_signal(&self, vcpu: usize) -> Option<StartupSignal> {
        self.vcpu(vcpu).signals.take()
    }

    /// Whether an INIT or SIPI waits for `vcpu` (`take_signal` would return one).
    pub fn signal_pending(&self, vcpu: usize) -> bool {
        let signals = self.vcpu(vcpu).signals;
        signals.init || signals.startup_vector.is_some()
    }

    /// INITs and SIPIs that arrived while an earlier one was still latched and
    /// that changed nothing (superseded by an INIT, or a second SIPI).
    pub fn dropped_startup_signals(&self) -> u64 {
        self.dropped_signals.load(Ordering::Relaxed)
    }

    /// Whether an interrupt, NMI, INIT or SIPI arrived for `vcpu` since the last
    /// call. A vCPU running on another core only sees it at its next exit, so
    /// the VMM makes that core exit when this says so. Timer interrupts do not
    /// count: each vCPU already comes back by its own `next_deadline`.
    pub fn take_wakeup(&self, vcpu: usize) -> bool {
        // The load first: the swap's write would take the flag's cache line
        // from the vCPU that sets it at every look.
        self.has_wakeup(vcpu) && self.vcpus[vcpu].wakeup.swap(false, Ordering::AcqRel)
    }

    /// `take_wakeup` without taking it.
    pub fn has_wakeup(&self, vcpu: usize) -> bool {
        self.vcpus[vcpu].wakeup.load(Ordering::Acquire)
    }

    /// APIC virtualisation: whether `vcpu`'s local APIC changed since its
    /// last mirror into the virtual-APIC page (anything but its timer's
    /// deadline: an interrupt arrived, a register was written).
    pub fn lapic_mirror_stale(&self, vcpu: usize) -> bool {
        self.vcpu(vcpu).apic.mirror_is_stale()
    }

    /// An INIT resets the vCPU's local APIC as well as the vCPU.
    pub fn reset_lapic(&self, vcpu: usize) {
        self.vcpu(vcpu).apic.init();
    }

    /// COM1's line follows its interrupt status (COM1 is locked by the caller).
    fn update_com1_line(&self, com1: &mut Com1) {
        let line = com1.uart.irq_line();
        if line != com1.line {
            com1.line = line;
            self.set_isa_irq(layout::IRQ_COM1, line);
        }
    }

    fn set_isa_irq(&self, irq: u8, level: bool) {
        self.route(|r| {
            r.pic.set_line(irq, level);
            r.ioapic.set_line(layout::gsi_of_isa_irq(irq) as usize, level)
        });
    }

    fn pulse_isa_irq(&self, irq: u8) {
        self.route(|r| {
            r.pic.pulse(irq);
            r.ioapic.pulse(layout::gsi_of_isa_irq(irq) as usize)
        });
    }

    /// Works on the interrupt controllers under their lock, then delivers the
    /// IOAPIC messages `work` returns, still under it (in order with the
    /// next change of a line); the PIC's output is published for vCPU 0,
    /// which is woken when an ExtINT waits for it.
    fn route<M: IntoIterator<Item = Message>>(&self, work: impl FnOnce(&mut Routing) -> M) {
        let mut routing = self.routing.lock();
        let messages = work(&mut routing);
        self.show_ioapic_window(&routing.ioapic);
        let output = routing.pic.interrupt_pending();
        self.pic_output.store(output, Ordering::Release);
        for message in messages {
            self.deliver(None, message);
        }
        // The PIC's INTR goes to vCPU 0 only.
        if output && self.vcpu(0).apic.accepts_extint() {
            self.vcpus[0].wakeup.store(true, Ordering::Release);
        }
    }

    /// Keeps the guest's copy of the IOAPIC window (if any) true; called
    /// with the routing lock held, after a change.
    fn show_ioapic_window(&self, ioapic: &IoApic) {
        if let Some(window) = &self.ioapic_window {
            let (select, value) = ioapic.window();
            window.show(select, value);
        }
    }

    /// Routes an APIC message from `source` (None: the IOAPIC) to its
    /// targets, one vCPU's lock at a time.
    fn deliver(&self, source: Option<usize>, message: Message) {
        for (i, slot) in self.vcpus.iter().enumerate() {
            let mut state = slot.state.lock();
            // A globally disabled APIC takes nothing, shorthands included.
            let enabled = state.apic.mode() != lapic::Mode::Disabled;
            let selected = match message.destination {
                Destination::SelfOnly => source == Some(i),
                Destination::AllIncludingSelf => true,
                Destination::AllExcludingSelf => source != Some(i),
                addressed => state.apic.is_addressed_by(addressed),
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
                    if !state.signals.latch(signal) {
                        self.dropped_signals.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => state.apic.receive(&message),
            }
            drop(state);
            slot.wakeup.store(true, Ordering::Release);
            // Lowest priority: any one of them will do; the first takes it.
            if message.mode == DeliveryMode::LowestPriority {
                return;
            }
        }
    }

    /// The ACPI tables for this VM, to be copied to `layout::ACPI_TABLES`.
    pub fn acpi_tables(&self) -> Vec<u8> {
        acpi::tables(layout::ACPI_TABLES, self.vcpus.len() as u32, self.virtio.len())
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
        c.poll(1, HZ, &mut NoRam);
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
        c.poll(0, 4_999, &mut NoRam);
        assert!(!c.has_interrupt(0));
        assert_eq!(c.timer_interrupts(0), 0);
        c.poll(0, 5_000, &mut NoRam);
        assert_eq!(c.take_interrupt(0), Some(0xec));
        assert_eq!(c.next_deadline(0), None);
        assert_eq!(c.timer_interrupts(0), 1);
        // A masked timer still expires but raises nothing to count.
        lapic_write(&mut c, 0, reg::LVT_TIMER, (2 << 17) | 1 << 16 | 0xec, 0);
        c.set_tsc_deadline(0, 6_000);
        c.poll(0, 6_000, &mut NoRam);
        assert_eq!(c.timer_interrupts(0), 1);
    }

    #[test]
    fn pit_ticks_through_pic_in_virtual_wire_mode() {
        let (c, _) = chipset(1);
        // The classic PIC set-up, IRQ0 unmasked; the APIC stays disabled.
        for (port, value) in [(0x20, 0x11), (0x21, 0x08), (0x21, 4), (0x21, 1), (0x21, 0xfe)] {
            c.port_write(port, 1, value, 0);
        }
        c.port_write(0x43, 1, 0x34, 0);
        c.port_write(0x40, 1, 0x9c, 0);
        c.port_write(0x40, 1, 0x2e, 0); // 100 Hz
        let first = c.next_deadline(0).unwrap();
        assert!((9_990_000..=10_010_000).contains(&first), "{first}");
        c.poll(0, first, &mut NoRam);
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
                        full.poll_cache.forget();
                        full.poll(0, now, &mut NoRam);
                        cached.poll(0, now, &mut NoRam);
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
        let (c, _) = chipset(1);
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
        let c = level_triggered_com1_with_two_bytes();
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

    /// The guest's copy of the IOAPIC window, as a page would hold it.
    #[derive(Clone, Default)]
    struct WindowCopy(Arc<Mutex<(u32, u32)>>);

    impl IoApicWindow for WindowCopy {
        fn show(&self, select: u32, window: u32) {
            *self.0.lock().unwrap() = (select, window);
        }
    }

    #[test]
    fn the_guests_copy_of_the_ioapic_window_follows_every_change() {
        let (mut c, _) = chipset(1);
        let copy = WindowCopy::default();
        c.mirror_ioapic_window(Box::new(copy.clone()));
        let shown = || *copy.0.lock().unwrap();
        assert_eq!(shown(), (0, 1 << 24), "at reset the ID register (APIC ID 1, after the vCPUs') is selected");
        let read = |c: &Chipset, offset: u64| c.mmio_read(0, layout::IOAPIC_BASE + offset, 4, 0) as u32;
        c.mmio_write(0, layout::IOAPIC_BASE, 4, 1, 0, &mut NoRam);
        assert_eq!(shown(), (1, read(&c, 0x10)), "a select shows the version register");
        assert_eq!(shown().1 & 0xff, 0x11);
        // An entry written shows as written; the remote IRR that a level
        // line sets and the EOI clears shows too, with no access by the guest.
        enable_apic(&mut c, 0);
        ioapic_route(&mut c, 4, 0x8000 | 0x34, 0);
        assert_eq!(shown(), (0x18, 0x8034));
        c.port_write(0x3fc, 1, 0x08, 0);
        c.com1_input(b"a");
        c.port_write(0x3f9, 1, 0x01, 0);
        assert_eq!(shown(), (0x18, 0x8034 | 1 << 14), "remote IRR while the vCPU handles it");
        assert_eq!(c.take_interrupt(0), Some(0x34));
        c.port_read(0x3f8, 1, 0);
        lapic_write(&mut c, 0, reg::EOI, 0, 0);
        assert_eq!(shown(), (0x18, 0x8034), "the EOI cleared it");
        assert_eq!((read(&c, 0), read(&c, 0x10)), shown(), "the copy is what an exit would read");
    }

    #[test]
    fn virtio_slots_are_mapped_and_described() {
        let (mut c, _) = chipset(1);
        let console = crate::virtio::console::Console::new(alloc::boxed::Box::new(|_: &[u8]| {}));
        assert_eq!(c.add_virtio(alloc::boxed::Box::new(console)), Ok(0));
        assert_eq!(c.mmio_read(0, layout::VIRTIO_BASE, 4, 0), 0x7472_6976);
        assert_eq!(c.mmio_read(0, layout::VIRTIO_BASE + 8, 4, 0), 3);
        assert_eq!(c.mmio_read(0, layout::VIRTIO_BASE + layout::VIRTIO_STRIDE, 4, 0), 0xffff_ffff);
        assert_eq!(c.unclaimed().1.reads, 1, "an empty slot is nobody's");
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
        assert_eq!(c.vcpu(0).apic.next_deadline(), None, "neither armed the timer");
        lapic_write(&mut c, 0, reg::TIMER_INITIAL, 1, 0);
        assert_eq!(c.vcpu(0).apic.next_deadline(), Some(HZ / 10_000), "periodic timers stop at 10 kHz");
    }

    #[test]
    fn input_nobody_takes_is_counted_over_com1_and_virtio_consoles() {
        let (mut c, _) = chipset(1);
        let console = crate::virtio::console::Console::new(alloc::boxed::Box::new(|_: &[u8]| {}));
        c.add_virtio(alloc::boxed::Box::new(console)).unwrap();
        assert_eq!(c.dropped_input(), 0);
        c.com1_input(&[b'x'; crate::uart::HOST_INPUT + 3]);
        assert_eq!(c.dropped_input(), 3);
        c.virtio[0].lock().device.device_mut().push_input(&[b'y'; crate::virtio::console::INPUT_LIMIT + 5]);
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
            c.poll(0, 0, &mut ram);
        }
        assert_eq!(c.next_deadline(0), None);
        let mut used = [0u8; 2];
        ram.read(0x3002, &mut used).unwrap();
        assert_eq!(u16::from_le_bytes(used), 1);
    }

    /// `take_broken` names a device that broke once, whichever call found
    /// it broken, and nothing on the calls before and after.
    #[test]
    fn a_broken_virtio_device_is_reported_once() {
        use crate::virtio::tests::Ram;
        let (mut c, _) = chipset(1);
        for _ in 0..2 {
            let console = crate::virtio::console::Console::new(alloc::boxed::Box::new(|_: &[u8]| {}));
            c.add_virtio(alloc::boxed::Box::new(console)).unwrap();
        }
        let mut ram = Ram(vec![0; 1 << 20]);
        let slot = layout::VIRTIO_BASE + layout::VIRTIO_STRIDE;
        let reg = |c: &mut Chipset, offset: u64, value: u32, ram: &mut Ram| {
            c.mmio_write(0, slot + offset, 4, value as u64, 0, ram);
        };
        for (offset, value) in
            [(0x70, 3), (0x24, 1), (0x20, 1), (0x70, 11), (0x30, 1), (0x38, 16), (0x80, 0x1000), (0x90, 0x2000)]
        {
            reg(&mut c, offset, value, &mut ram);
        }
        for (offset, value) in [(0xa0, 0x3000), (0x44, 1), (0x70, 15)] {
            reg(&mut c, offset, value, &mut ram);
        }
        assert!(c.take_broken().is_empty(), "set up, nothing broken");
        // A buffer past the end of RAM: the device breaks at the notify.
        let mut descriptor = [0u8; 16];
        descriptor[..8].copy_from_slice(&(2u64 << 20).to_le_bytes());
        descriptor[8..12].copy_from_slice(&64u32.to_le_bytes());
        ram.write(0x1000, &descriptor).unwrap();
        ram.write(0x2002, &1u16.to_le_bytes()).unwrap();
        reg(&mut c, 0x50, 1, &mut ram);
        let broken = c.take_broken();
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert_eq!((broken[0].0, broken[0].1), (1, "virtio-console"));
        // Queue 1, transmit, as the log line shows it.
        assert_eq!(broken[0].2.to_string(), "queue 1: buffer 0x200000+0x40 is outside guest RAM");
        assert!(c.take_broken().is_empty(), "reported once");
        reg(&mut c, 0x50, 1, &mut ram);
        c.poll(0, 0, &mut ram);
        assert!(c.take_broken().is_empty(), "still broken, already reported");
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
        assert_eq!(c.unclaimed().1.reads, 1);
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
        assert_eq!(c.unclaimed().1.writes, 1);
        assert!(c.mirror_lapic(1, &mut page, false), "stale after a write to the undecoded page");
        assert_eq!(c.apic_mode(1), lapic::Mode::Disabled);
    }

    #[test]
    fn refused_msrs_are_named_once_each_up_to_the_bound() {
        let (c, _) = chipset(1);
        let firsts: Vec<bool> = (0..20).chain(0..20).map(|msr| c.first_refusal_of_msr(msr)).collect();
        assert_eq!(firsts.iter().filter(|&&first| first).count(), REFUSED_MSRS_LOGGED);
        assert!(firsts[..REFUSED_MSRS_LOGGED].iter().all(|&first| first));
        assert!(!c.first_refusal_of_msr(0), "named already");
    }

    #[test]
    fn power_off_reset_and_other_ports() {
        let (c, _) = chipset(1);
        assert_eq!(c.port_write(layout::PM1_CONTROL, 2, (5 << 10) | (1 << 13), 0), Some(Request::PowerOff));
        assert_eq!(c.port_write(layout::RESET_CONTROL, 1, 0x06, 0), Some(Request::Reset));
        c.port_write(0x70, 1, 0x09, 0);
        assert_eq!(c.port_read(0x71, 1, 0), 0x26);
        let t0 = c.port_read(layout::PM_TIMER, 4, 0);
        let t1 = c.port_read(layout::PM_TIMER, 4, HZ);
        assert_eq!(t1 - t0, acpi::PM_TIMER_HZ as u32);
        assert_eq!(c.port_read(0xcfc, 4, 0), u32::MAX, "nothing there");
        assert_eq!(c.unclaimed().0.reads, 1);
        let tables = c.acpi_tables();
        assert_eq!(&tables[..8], b"RSD PTR ");
    }
}
