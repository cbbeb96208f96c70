//! A local APIC, one per vCPU: interrupt acceptance and priority (IRR, ISR, TMR,
//! TPR, PPR), EOI, the timer in one-shot, periodic and TSC-deadline modes, and
//! the interrupt command register. IPIs are handed back to the caller (the
//! chipset), which routes them.
//!
//! IA32_APIC_BASE selects its mode (`set_base`): xAPIC (the 4 KiB register
//! page at 0xfee0_0000), x2APIC (the same registers as MSRs 0x800-0x8ff, see
//! `read_msr`/`write_msr`; the page no longer decodes) or globally disabled (no
//! page, no messages; turning it off resets it). The base address is fixed:
//! relocation is refused, as nothing in the platform could follow it.
//!
//! Time is the guest's TSC: the timer counts at the TSC rate before its divider,
//! which is what CPUID leaf 0x15 tells the guest, so no conversion is needed.
//! A deadline that would fall past u64::MAX never comes: the timer is disarmed.

/// Register offsets within the page.
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    pub const RRD: u32 = 0xc0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2f0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// x2APIC mode only (MSR 0x83f): a fixed self-IPI by vector.
    pub const SELF_IPI: u32 = 0x3f0;
}

/// IA32_APIC_BASE (MSR 0x1b) bits.
pub mod apic_base {
    /// This processor is the bootstrap processor (fixed per vCPU: writes keep it).
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode (with EN).
    pub const EXTD: u64 = 1 << 10;
    /// The APIC is enabled; clear, it is globally disabled.
    pub const EN: u64 = 1 << 11;
    /// Bits 0-7 and 9, reserved on every CPU.
    pub const RESERVED_LOW: u64 = 0x2ff;
    /// The first x2APIC MSR: register offset `o` of the page is MSR 0x800 + o / 16.
    pub const X2APIC_MSR_BASE: u32 = 0x800;
}

/// The mode IA32_APIC_BASE's EN and EXTD bits select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Globally disabled (EN = 0): neither the page nor the MSRs respond, and
    /// no interrupt message reaches it.
    Disabled,
    XApic,
    X2Apic,
}

/// Why a write to IA32_APIC_BASE is refused: each is #GP(0) on a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseRefused {
    /// Bits 0-7, 9, or from MAXPHYADDR up.
    ReservedBits,
    /// EXTD on a CPU whose CPUID does not offer x2APIC (the bit is reserved there).
    X2ApicNotOffered,
    /// A base other than 0xfee0_0000: the platform does not model relocation.
    Relocation,
    /// EXTD without EN: the state the SDM calls invalid.
    Invalid,
    /// x2APIC straight back to xAPIC: only through disabled.
    X2ApicToXApic,
    /// Disabled straight to x2APIC: only through xAPIC.
    DisabledToX2Apic,
}

/// An x2APIC MSR access the CPU refuses with #GP(0): not in x2APIC mode, a
/// register x2APIC mode does not have, a read of a write-only register or a
/// write of a read-only one, or reserved bits set where the SDM checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrRefused;

/// x2APIC ICR bits that are reserved (WRMSR with any of them set is #GP, as
/// KVM checks too): 31:20, 17:16 and 13.
const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | 0x2000;

/// The registers a CPU with APIC-register virtualisation reads straight from
/// the virtual-APIC page, without an exit (Intel SDM, "Virtualizing Reads from
/// the APIC-Access Page"). Any other offset still exits; the current count, for
/// one, is computed at the time of the read.
pub const VIRTUALIZED_READS: [u32; 43] = [
    reg::ID,
    reg::VERSION,
    reg::TPR,
    reg::EOI,
    reg::LDR,
    reg::DFR,
    reg::SVR,
    reg::ISR,
    reg::ISR + 0x10,
    reg::ISR + 0x20,
    reg::ISR + 0x30,
    reg::ISR + 0x40,
    reg::ISR + 0x50,
    reg::ISR + 0x60,
    reg::ISR + 0x70,
    reg::TMR,
    reg::TMR + 0x10,
    reg::TMR + 0x20,
    reg::TMR + 0x30,
    reg::TMR + 0x40,
    reg::TMR + 0x50,
    reg::TMR + 0x60,
    reg::TMR + 0x70,
    reg::IRR,
    reg::IRR + 0x10,
    reg::IRR + 0x20,
    reg::IRR + 0x30,
    reg::IRR + 0x40,
    reg::IRR + 0x50,
    reg::IRR + 0x60,
    reg::IRR + 0x70,
    reg::ESR,
    reg::ICR_LOW,
    reg::ICR_HIGH,
    reg::LVT_TIMER,
    reg::LVT_THERMAL,
    reg::LVT_PERF,
    reg::LVT_LINT0,
    reg::LVT_LINT1,
    reg::LVT_ERROR,
    reg::TIMER_INITIAL,
    reg::TIMER_DIVIDE,
    reg::APR,
];

/// A virtual-APIC page as 32-bit words (register at offset `o` is word `o / 4`).
pub type VirtualApicPage = [u32; 1024];

/// Version 0x14 (integrated APIC), six LVT entries (max LVT index 5).
const VERSION: u32 = 0x0005_0014;
const SVR_ENABLE: u32 = 1 << 8;
pub const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_MODE_SHIFT: u32 = 17;
const LVT_DELIVERY_MODE_SHIFT: u32 = 8;
const LVT_LEVEL: u32 = 1 << 15;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_ASSERT: u32 = 1 << 14;

/// Delivery modes of ICR, LVT and IOAPIC entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    Startup,
    ExtInt,
    Reserved,
}

impl DeliveryMode {
    pub fn from_bits(bits: u32) -> DeliveryMode {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::Startup,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// Who an interrupt message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One APIC by ID (0xff: all): xAPIC ICRs and IOAPIC redirections.
    Physical(u8),
    /// APICs whose logical ID matches the mask (flat or cluster model).
    Logical(u8),
    /// An x2APIC ICR's 32-bit physical destination (0xffff_ffff: all).
    X2Physical(u32),
    /// An x2APIC ICR's logical destination: cluster in bits 31:16, a bitmap
    /// of the cluster's 16 members below (0xffff_ffff: all).
    X2Logical(u32),
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An interrupt message between APICs: an IPI from an ICR write, or an IOAPIC
/// redirection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub vector: u8,
    pub mode: DeliveryMode,
    pub destination: Destination,
    pub level_triggered: bool,
}

/// What a register write asks of the rest of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// An IPI to route.
    Send(Message),
    /// A level-triggered interrupt ended: IOAPICs clear Remote IRR for this vector.
    LevelEoi(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// A 256-bit vector set (IRR, ISR, TMR), as eight 32-bit registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorSet([u32; 8]);

impl VectorSet {
    fn set(&mut self, v: u8) {
        self.0[v as usize / 32] |= 1 << (v % 32);
    }
    fn clear(&mut self, v: u8) {
        self.0[v as usize / 32] &= !(1 << (v % 32));
    }
    fn contains(&self, v: u8) -> bool {
        self.0[v as usize / 32] & (1 << (v % 32)) != 0
    }
    fn highest(&self) -> Option<u8> {
        let word = (0..8).rev().find(|&w| self.0[w] != 0)?;
        Some((word * 32 + 31 - self.0[word].leading_zeros() as usize) as u8)
    }
}

#[derive(Clone)]
pub struct LocalApic {
    id: u8,
    /// The ID at power-up (the vCPU index): the x2APIC ID, and what a
    /// disabled-and-re-enabled APIC starts from again.
    initial_id: u8,
    mode: Mode,
    /// IA32_APIC_BASE.BSP.
    bsp: bool,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    irr: VectorSet,
    isr: VectorSet,
    tmr: VectorSet,
    esr: u32,
    icr_low: u32,
    icr_high: u32,
    lvt_cmci: u32,
    lvt_timer: u32,
    lvt_thermal: u32,
    lvt_perf: u32,
    lvt_lint0: u32,
    lvt_lint1: u32,
    lvt_error: u32,
    divide_config: u32,
    initial_count: u32,
    /// When the timer next reaches zero (any mode).
    timer_deadline: Option<u64>,
    /// TSC-deadline mode: the armed deadline (0 = disarmed).
    tsc_deadline: u64,
    /// Set by an NMI message or LINT1 in NMI mode; taken by the VMM.
    pub nmi_pending: bool,
    /// The shortest period the periodic timer runs at, in TSC ticks: a guest
    /// asking for a period of one tick would otherwise make its vCPU exit
    /// after every few instructions (see `with_min_timer_period`).
    min_timer_period: u64,
    /// A register `mirror` writes may have changed since the last mirror.
    mirror_stale: bool,
    /// Only IRR and TMR may have changed (an interrupt arrived): the next
    /// mirror writes just those, the common case each timer tick.
    vectors_stale: bool,
    /// Virtual-interrupt delivery: IRR as the virtual-APIC page last held it
    /// (written by `mirror`, read by `absorb`). The guest's CPU only clears
    /// bits there (taking a vector into service); what it cleared is what
    /// the guest took, even if the VMM raised more since.
    page_irr: VectorSet,
    /// The page holds this APIC's state (a `mirror` since power-up): only
    /// then is what the CPU changed there worth taking in.
    page_in_sync: bool,
    /// Timer interrupts raised (the LVT unmasked) since the VM started; an
    /// INIT does not reset it. The bench's exits per guest timer tick.
    pub timer_interrupts: u64,
}

impl LocalApic {
    /// An APIC in its power-up state: software-disabled, all LVTs masked.
    pub fn new(id: u8) -> LocalApic {
        LocalApic {
            id,
            initial_id: id,
            mode: Mode::XApic,
            bsp: false,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            irr: VectorSet::default(),
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            esr: 0,
            icr_low: 0,
            icr_high: 0,
            lvt_cmci: LVT_MASKED,
            lvt_timer: LVT_MASKED,
            lvt_thermal: LVT_MASKED,
            lvt_perf: LVT_MASKED,
            lvt_lint0: LVT_MASKED,
            lvt_lint1: LVT_MASKED,
            lvt_error: LVT_MASKED,
            divide_config: 0,
            initial_count: 0,
            timer_deadline: None,
            tsc_deadline: 0,
            nmi_pending: false,
            mirror_stale: true,
            vectors_stale: false,
            min_timer_period: 0,
            timer_interrupts: 0,
            page_irr: VectorSet::default(),
            page_in_sync: false,
        }
    }

    /// The same APIC whose periodic timer never fires more often than every
    /// `ticks` TSC ticks (as KVM bounds it too; guests ask for 1 ms or more).
    pub fn with_min_timer_period(self, ticks: u64) -> LocalApic {
        LocalApic { min_timer_period: ticks, ..self }
    }

    /// The same APIC as the bootstrap processor's (IA32_APIC_BASE.BSP).
    pub fn as_bootstrap(self) -> LocalApic {
        LocalApic { bsp: true, ..self }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the register page answers at 0xfee0_0000 (xAPIC mode only: in
    /// x2APIC mode and while disabled, accesses there reach no device).
    pub fn decodes_mmio(&self) -> bool {
        self.mode == Mode::XApic
    }

    /// IA32_APIC_BASE as RDMSR reads it.
    pub fn base(&self) -> u64 {
        let mut value = crate::layout::LAPIC_BASE;
        if self.bsp {
            value |= apic_base::BSP;
        }
        match self.mode {
            Mode::Disabled => {}
            Mode::XApic => value |= apic_base::EN,
            Mode::X2Apic => value |= apic_base::EN | apic_base::EXTD,
        }
        value
    }

    /// WRMSR to IA32_APIC_BASE, checked as the SDM's state rules say
    /// ("x2APIC State Transitions"): EN and EXTD pick the mode; EXTD alone is
    /// invalid; x2APIC goes back to xAPIC only through disabled, and disabled
    /// reaches x2APIC only through xAPIC. `x2apic_offered`: CPUID.1:ECX.x2APIC
    /// as the guest sees it (without it EXTD is reserved); `phys_bits`: the
    /// guest's MAXPHYADDR (bits from it up are reserved). The BSP bit is this
    /// vCPU's and keeps its value whatever is written.
    pub fn set_base(&mut self, value: u64, x2apic_offered: bool, phys_bits: u32) -> Result<(), BaseRefused> {
        // A MAXPHYADDR below 36 or above 52 is no CPU's: keep the mask sane.
        let above = u64::MAX.checked_shl(phys_bits.clamp(36, 52)).unwrap_or(0);
        if value & (above | apic_base::RESERVED_LOW) != 0 {
            return Err(BaseRefused::ReservedBits);
        }
        if value & apic_base::EXTD != 0 && !x2apic_offered {
            return Err(BaseRefused::X2ApicNotOffered);
        }
        if value & !0xfff != crate::layout::LAPIC_BASE {
            return Err(BaseRefused::Relocation);
        }
        let mode = match (value & apic_base::EN != 0, value & apic_base::EXTD != 0) {
            (false, false) => Mode::Disabled,
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
            (false, true) => return Err(BaseRefused::Invalid),
        };
        match (self.mode, mode) {
            (old, new) if old == new => {}
            (Mode::X2Apic, Mode::XApic) => return Err(BaseRefused::X2ApicToXApic),
            (Mode::Disabled, Mode::X2Apic) => return Err(BaseRefused::DisabledToX2Apic),
            // Off: the SDM lets the APIC lose its state, and forgetting it is
            // what keeps a disabled APIC from holding interrupts, a timer or a
            // software-enabled SVR for when it comes back.
            (_, Mode::Disabled) => self.power_up(Mode::Disabled),
            (_, Mode::XApic) => {
                self.mode = Mode::XApic;
                self.mirror_stale = true;
            }
            // xAPIC to x2APIC keeps every register but the ID, which becomes
            // the initial (x2APIC) ID; LDR follows from it (`x2apic_ldr`).
            (_, Mode::X2Apic) => {
                self.mode = Mode::X2Apic;
                self.id = self.initial_id;
                self.mirror_stale = true;
            }
        }
        Ok(())
    }

    /// Every register to its power-up value (the ID to the initial one), in `mode`.
    fn power_up(&mut self, mode: Mode) {
        let fresh = LocalApic::new(self.initial_id).with_min_timer_period(self.min_timer_period);
        *self = LocalApic { mode, bsp: self.bsp, timer_interrupts: self.timer_interrupts, ..fresh };
    }

    /// The x2APIC logical ID, which x2APIC mode derives from the x2APIC ID:
    /// cluster (ID / 16) in bits 31:16, one bit for the ID's place in it.
    fn x2apic_ldr(&self) -> u32 {
        let id = self.id as u32;
        ((id >> 4) << 16) | (1 << (id & 0xf))
    }

    /// RDMSR of an x2APIC MSR (0x800-0x8ff). Only in x2APIC mode; ID is the
    /// full 32-bit x2APIC ID, ICR one 64-bit register; EOI, SELF IPI and
    /// registers x2APIC mode lacks (APR, RRD, DFR, ICR high) are refused.
    pub fn read_msr(&self, msr: u32, now: u64) -> Result<u64, MsrRefused> {
        let offset = x2apic_offset(msr).ok_or(MsrRefused)?;
        if self.mode != Mode::X2Apic {
            return Err(MsrRefused);
        }
        let value = match offset {
            reg::ID => self.id as u32,
            reg::LDR => self.x2apic_ldr(),
            reg::ICR_LOW => return Ok((self.icr_high as u64) << 32 | self.icr_low as u64),
            reg::VERSION | reg::TPR | reg::PPR | reg::SVR | reg::ESR | reg::LVT_CMCI => self.read(offset, now),
            reg::ISR..=0x270 | reg::LVT_TIMER..=reg::LVT_ERROR => self.read(offset, now),
            reg::TIMER_INITIAL | reg::TIMER_CURRENT | reg::TIMER_DIVIDE => self.read(offset, now),
            _ => return Err(MsrRefused),
        };
        Ok(value as u64)
    }

    /// WRMSR of an x2APIC MSR; returns what the platform must do about it.
    /// Bits 63:32 are reserved in every register but ICR; EOI and ESR take
    /// only 0; read-only registers (ID, LDR, PPR, ISR/TMR/IRR, version,
    /// current count) refuse writes.
    pub fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<Option<Effect>, MsrRefused> {
        let offset = x2apic_offset(msr).ok_or(MsrRefused)?;
        if self.mode != Mode::X2Apic {
            return Err(MsrRefused);
        }
        if offset == reg::ICR_LOW {
            if value & X2APIC_ICR_RESERVED != 0 {
                return Err(MsrRefused);
            }
            // The destination first: the low half's write sends the IPI.
            self.icr_high = (value >> 32) as u32;
            return Ok(self.write(reg::ICR_LOW, value as u32, now));
        }
        let value = u32::try_from(value).map_err(|_| MsrRefused)?;
        match offset {
            reg::TPR | reg::SVR | reg::LVT_CMCI | reg::LVT_TIMER..=reg::LVT_ERROR => Ok(self.write(offset, value, now)),
            reg::TIMER_INITIAL | reg::TIMER_DIVIDE => Ok(self.write(offset, value, now)),
            reg::EOI | reg::ESR if value == 0 => Ok(self.write(offset, 0, now)),
            reg::SELF_IPI => Ok(Some(Effect::Send(Message {
                vector: value as u8,
                mode: DeliveryMode::Fixed,
                destination: Destination::SelfOnly,
                level_triggered: false,
            }))),
            _ => Err(MsrRefused),
        }
    }

    /// The task-priority register, as CR8 reads it (TPR[7:4]) in every mode.
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// A TPR written through CR8.
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr as u32;
        self.mirror_stale = true;
    }

    /// Whether a message addressed to `destination` (not a shorthand) selects
    /// this APIC. A disabled APIC is on nobody's bus. xAPIC-format messages
    /// (IOAPIC redirections) reach x2APIC-mode APICs by the low 8 bits of the
    /// ID, and a logical one by cluster 0's members, which is as far as 8
    /// bits reach; x2APIC-format ones reach only x2APIC-mode APICs, but for
    /// their broadcast.
    pub fn is_addressed_by(&self, destination: Destination) -> bool {
        const ALL: u32 = u32::MAX;
        match (self.mode, destination) {
            (Mode::Disabled, _) => false,
            (_, Destination::SelfOnly | Destination::AllIncludingSelf | Destination::AllExcludingSelf) => false,
            (_, Destination::Physical(id)) => id == 0xff || id == self.id,
            (Mode::XApic, Destination::Logical(mask)) => self.matches_logical(mask),
            (Mode::X2Apic, Destination::Logical(mask)) => {
                let ldr = self.x2apic_ldr();
                ldr >> 16 == 0 && (mask as u32) & ldr != 0
            }
            (_, Destination::X2Physical(ALL) | Destination::X2Logical(ALL)) => true,
            (Mode::XApic, Destination::X2Physical(_) | Destination::X2Logical(_)) => false,
            (Mode::X2Apic, Destination::X2Physical(id)) => id == self.id as u32,
            (Mode::X2Apic, Destination::X2Logical(destination)) => {
                let ldr = self.x2apic_ldr();
                destination >> 16 == ldr >> 16 && destination & ldr & 0xffff != 0
            }
        }
    }

    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Whether LINT0 passes the 8259's INTR through (virtual-wire mode): unmasked
    /// ExtINT, or the APIC software-disabled (then LINT0 behaves as a plain wire).
    pub fn accepts_extint(&self) -> bool {
        !self.software_enabled()
            || (self.lvt_lint0 & LVT_MASKED == 0
                && DeliveryMode::from_bits(self.lvt_lint0 >> LVT_DELIVERY_MODE_SHIFT) == DeliveryMode::ExtInt)
    }

    /// Whether a logical destination mask selects this APIC.
    pub fn matches_logical(&self, mask: u8) -> bool {
        let logical = (self.ldr >> 24) as u8;
        if self.dfr >> 28 == 0xf {
            logical & mask != 0
        } else {
            // Cluster model: high nibble is the cluster, low nibble the members.
            (mask >> 4 == 0xf || logical >> 4 == mask >> 4) && logical & mask & 0xf != 0
        }
    }

    /// Takes an interrupt into IRR. A software-disabled APIC drops fixed
    /// interrupts, as hardware does.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) {
        self.vectors_stale = true;
        if !self.software_enabled() || vector < 16 {
            if vector < 16 {
                self.mirror_stale = true;
                self.esr |= 1 << 6; // received illegal vector
            }
            return;
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
    }

    fn ppr(&self) -> u32 {
        let isr_class = self.isr.highest().map_or(0, |v| v as u32 & 0xf0);
        if (self.tpr & 0xf0) >= isr_class {
            self.tpr & 0xff
        } else {
            isr_class
        }
    }

    /// The vector the CPU would take next, if its priority class beats PPR.
    pub fn deliverable(&self) -> Option<u8> {
        let vector = self.irr.highest()?;
        ((vector as u32 & 0xf0) > self.ppr()).then_some(vector)
    }

    /// The CPU took `vector` (interrupt acknowledge): IRR to ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        self.mirror_stale = true;
        self.irr.clear(vector);
        self.isr.set(vector);
    }

    pub fn has_pending_irr(&self) -> bool {
        self.irr.highest().is_some()
    }

    /// The highest vector requested (IRR) and in service (ISR): what a
    /// report shows of a vCPU that waits for an interrupt that never comes.
    pub fn highest_requested_and_in_service(&self) -> (Option<u8>, Option<u8>) {
        (self.irr.highest(), self.isr.highest())
    }

    /// Writes the registers the CPU reads without exiting into the vCPU's
    /// virtual-APIC page, so what the guest reads there is this model's state.
    ///
    /// Outside xAPIC mode the page is no device's, so it reads as unclaimed
    /// memory does (all ones), but for TPR: a CPU shadowing the TPR keeps CR8
    /// there, and CR8 is the TPR in every mode. (So on such a CPU an MMIO read
    /// of offset 0x80 shows the TPR where hardware would read nothing.)
    pub fn mirror(&mut self, page: &mut VirtualApicPage) {
        for offset in VIRTUALIZED_READS {
            // None of them depends on the time (the current count is not there).
            page[offset as usize / 4] = match self.mode {
                Mode::XApic => self.read(offset, 0),
                _ if offset == reg::TPR => self.tpr,
                _ => u32::MAX,
            };
        }
        self.mirrored();
    }

    /// `mirror`, but when only interrupts arrived since the last one (and the
    /// page holds it), only IRR and TMR are written.
    pub fn mirror_changes(&mut self, page: &mut VirtualApicPage) {
        if self.mirror_stale || !self.page_in_sync || self.mode != Mode::XApic {
            self.mirror(page);
            return;
        }
        for i in 0..8 {
            page[reg::IRR as usize / 4 + i * 4] = self.irr.0[i];
            page[reg::TMR as usize / 4 + i * 4] = self.tmr.0[i];
        }
        self.mirrored();
    }

    fn mirrored(&mut self) {
        self.page_irr = self.irr;
        self.page_in_sync = true;
        self.mirror_stale = false;
        self.vectors_stale = false;
    }

    /// A write to the page outside xAPIC mode, which no device took: the next
    /// `mirror` must undo what the CPU stored there.
    pub fn page_written_while_undecoded(&mut self) {
        self.mirror_stale = true;
    }

    /// Whether a mirrored register (or the TPR threshold) may have changed
    /// since the last `mirror`: most exits change none, and then the page
    /// needs no rewriting.
    pub fn mirror_is_stale(&self) -> bool {
        self.mirror_stale || self.vectors_stale
    }

    /// Takes in what the guest wrote to the virtual-APIC page without an exit:
    /// TPR (TPR shadowing) and ICR high (only an ICR low write sends the IPI).
    /// Outside xAPIC mode only the TPR is taken (CR8); an ICR high written
    /// there is unclaimed memory, undone by the next mirror.
    ///
    /// With `delivery` (virtual-interrupt delivery: the CPU took vectors from
    /// the page's IRR into its ISR and ended them there) IRR and ISR are
    /// taken in too: the vectors the CPU took leave IRR (any raised since
    /// stay), and ISR is the page's. (The VT-x back end asks for it only when
    /// the guest interrupt status moved, the one sign the CPU took or ended
    /// a vector.)
    pub fn absorb(&mut self, page: &VirtualApicPage, delivery: bool) {
        if delivery && self.mode == Mode::XApic && self.page_in_sync {
            let word = |base: u32, i: usize| page[base as usize / 4 + i * 4];
            for i in 0..8 {
                let (irr, isr) = (word(reg::IRR, i), word(reg::ISR, i));
                self.irr.0[i] &= !(self.page_irr.0[i] & !irr);
                self.page_irr.0[i] = irr;
                self.isr.0[i] = isr;
            }
        }
        if self.mode != Mode::XApic {
            let tpr = page[reg::TPR as usize / 4] & 0xff;
            if tpr != self.tpr || page[reg::ICR_HIGH as usize / 4] != u32::MAX {
                self.tpr = tpr;
                self.mirror_stale = true;
            }
            return;
        }
        let (tpr, icr_high) = (page[reg::TPR as usize / 4] & 0xff, page[reg::ICR_HIGH as usize / 4] & 0xff00_0000);
        if (tpr, icr_high) != (self.tpr, self.icr_high) {
            (self.tpr, self.icr_high) = (tpr, icr_high);
            self.mirror_stale = true;
        }
    }

    /// Virtual-interrupt delivery: the guest interrupt status for the next
    /// entry, RVI (the highest vector requested) in bits 7:0 and SVI (the
    /// highest in service) in bits 15:8; the CPU delivers RVI when its class
    /// beats the guest's PPR.
    pub fn interrupt_status(&self) -> u16 {
        let (rvi, svi) = (self.irr.highest().unwrap_or(0), self.isr.highest().unwrap_or(0));
        (svi as u16) << 8 | rvi as u16
    }

    /// Virtual-interrupt delivery: the vectors whose EOI must exit, so the
    /// IOAPIC hears of it (the level-triggered ones, TMR), as four 64-bit words.
    pub fn eoi_exit_bitmap(&self) -> [u64; 4] {
        let t = &self.tmr.0;
        core::array::from_fn(|i| t[2 * i] as u64 | (t[2 * i + 1] as u64) << 32)
    }

    /// Virtual-interrupt delivery: the guest ended `vector` and the CPU has
    /// already taken it out of service (IRR and ISR come in by `absorb`);
    /// what the EOI asks of the platform.
    pub fn virtual_eoi(&mut self, vector: u8) -> Option<Effect> {
        self.isr.clear(vector);
        self.tmr.contains(vector).then_some(Effect::LevelEoi(vector))
    }

    /// For TPR shadowing: the priority class the guest's TPR must drop below
    /// before the highest pending interrupt can be taken (the CPU exits then),
    /// or 0 when no pending interrupt waits on TPR. Never above TPR's class.
    pub fn tpr_threshold(&self) -> u8 {
        match self.irr.highest() {
            Some(vector) if vector as u32 & 0xf0 <= self.tpr & 0xf0 => vector >> 4,
            _ => 0,
        }
    }

    /// Register read at `offset` into the page (32-bit aligned registers).
    pub fn read(&self, offset: u32, now: u64) -> u32 {
        let index = |base: u32| ((offset - base) / 0x10) as usize;
        match offset {
            reg::ID => (self.id as u32) << 24,
            reg::VERSION => VERSION,
            reg::TPR => self.tpr,
            reg::APR => 0,
            reg::PPR => self.ppr(),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr.0[index(reg::ISR)],
            0x180..=0x1f0 => self.tmr.0[index(reg::TMR)],
            0x200..=0x270 => self.irr.0[index(reg::IRR)],
            reg::ESR => self.esr,
            reg::LVT_CMCI => self.lvt_cmci,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            reg::LVT_TIMER => self.lvt_timer,
            reg::LVT_THERMAL => self.lvt_thermal,
            reg::LVT_PERF => self.lvt_perf,
            reg::LVT_LINT0 => self.lvt_lint0,
            reg::LVT_LINT1 => self.lvt_lint1,
            reg::LVT_ERROR => self.lvt_error,
            reg::TIMER_INITIAL => self.initial_count,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.divide_config,
            _ => 0,
        }
    }

    /// Register write; returns what the platform must do about it.
    pub fn write(&mut self, offset: u32, value: u32, now: u64) -> Option<Effect> {
        self.mirror_stale = true;
        // LVT writes while software-disabled keep the mask bit set.
        let lvt = |value: u32, enabled: bool| if enabled { value } else { value | LVT_MASKED };
        let enabled = self.software_enabled();
        match offset {
            reg::ID => self.id = (value >> 24) as u8,
            reg::TPR => self.tpr = value & 0xff,
            reg::EOI => return self.eoi(),
            reg::LDR => self.ldr = value & 0xff00_0000,
            reg::DFR => self.dfr = value | 0x0fff_ffff,
            reg::SVR => {
                self.svr = value & 0x13ff;
                if !self.software_enabled() {
                    for entry in [
                        &mut self.lvt_cmci,
                        &mut self.lvt_timer,
                        &mut self.lvt_thermal,
                        &mut self.lvt_perf,
                        &mut self.lvt_lint0,
                        &mut self.lvt_lint1,
                        &mut self.lvt_error,
                    ] {
                        *entry |= LVT_MASKED;
                    }
                }
            }
            // Writing ESR latches the errors seen since the last write.
            reg::ESR => self.esr = 0,
            reg::LVT_CMCI => self.lvt_cmci = lvt(value & 0x1_07ff, enabled),
            reg::ICR_HIGH => self.icr_high = value & 0xff00_0000,
            reg::ICR_LOW => {
                self.icr_low = value & !ICR_DELIVERY_PENDING & 0x000c_dfff;
                let message = self.ipi();
                // INIT level de-assert only synchronises arbitration IDs.
                let deassert = message.mode == DeliveryMode::Init && self.icr_low & ICR_ASSERT == 0;
                return (!deassert).then_some(Effect::Send(message));
            }
            reg::LVT_TIMER => {
                let old_mode = self.timer_mode();
                self.lvt_timer = lvt(value & 0x7_10ff, enabled);
                if self.timer_mode() != old_mode {
                    // Switching modes disarms the timer.
                    self.timer_deadline = None;
                    self.tsc_deadline = 0;
                    self.initial_count = 0;
                }
            }
            reg::LVT_THERMAL => self.lvt_thermal = lvt(value & 0x1_07ff, enabled),
            reg::LVT_PERF => self.lvt_perf = lvt(value & 0x1_07ff, enabled),
            reg::LVT_LINT0 => self.lvt_lint0 = lvt(value & 0x1_a7ff, enabled),
            reg::LVT_LINT1 => self.lvt_lint1 = lvt(value & 0x1_a7ff, enabled),
            reg::LVT_ERROR => self.lvt_error = lvt(value & 0x1_00ff, enabled),
            // The initial count is ignored in TSC-deadline mode.
            reg::TIMER_INITIAL if self.timer_mode() != TimerMode::TscDeadline => {
                self.initial_count = value;
                self.timer_deadline = (value != 0).then(|| now.checked_add(self.timer_ticks(value))).flatten();
            }
            reg::TIMER_DIVIDE => self.divide_config = value & 0xb,
            _ => {}
        }
        None
    }

    fn eoi(&mut self) -> Option<Effect> {
        let vector = self.isr.highest()?;
        self.isr.clear(vector);
        self.tmr.contains(vector).then_some(Effect::LevelEoi(vector))
    }

    fn ipi(&self) -> Message {
        let shorthand = (self.icr_low >> 18) & 3;
        let target = (self.icr_high >> 24) as u8;
        let logical = self.icr_low & (1 << 11) != 0;
        let destination = match shorthand {
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            3 => Destination::AllExcludingSelf,
            // x2APIC mode: ICR high is the whole 32-bit destination.
            _ if self.mode == Mode::X2Apic && logical => Destination::X2Logical(self.icr_high),
            _ if self.mode == Mode::X2Apic => Destination::X2Physical(self.icr_high),
            _ if logical => Destination::Logical(target),
            _ => Destination::Physical(target),
        };
        Message {
            vector: self.icr_low as u8,
            mode: DeliveryMode::from_bits(self.icr_low >> 8),
            destination,
            level_triggered: self.icr_low & LVT_LEVEL != 0,
        }
    }

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt_timer >> LVT_TIMER_MODE_SHIFT) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    fn divisor(&self) -> u64 {
        let code = (self.divide_config & 3) | ((self.divide_config >> 1) & 4);
        if code == 7 {
            1
        } else {
            2 << code
        }
    }

    /// TSC ticks until a count of `count` runs out (a periodic timer's at
    /// least its minimum period).
    fn timer_ticks(&self, count: u32) -> u64 {
        let ticks = count as u64 * self.divisor();
        if self.timer_mode() == TimerMode::Periodic {
            ticks.max(self.min_timer_period)
        } else {
            ticks
        }
    }

    fn current_count(&self, now: u64) -> u32 {
        match self.timer_deadline {
            Some(deadline) if now < deadline => {
                ((deadline - now) / self.divisor()).min(self.initial_count as u64) as u32
            }
            _ => 0,
        }
    }

    /// IA32_TSC_DEADLINE read.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// IA32_TSC_DEADLINE write from a guest whose TSC is the host's: ignored
    /// outside TSC-deadline mode; 0 disarms.
    pub fn set_tsc_deadline(&mut self, deadline: u64) {
        self.arm_tsc_deadline(deadline, deadline);
    }

    /// IA32_TSC_DEADLINE write from a guest whose TSC runs at an offset from
    /// the host's: `deadline` is the value in the guest's TSC (what it reads
    /// back), `fires_at` the host TSC at which the guest's reaches it (the
    /// timer, like every device model, counts in the host's). Ignored outside
    /// TSC-deadline mode; a `deadline` of 0 disarms.
    pub fn arm_tsc_deadline(&mut self, deadline: u64, fires_at: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline = deadline;
            self.timer_deadline = (deadline != 0).then_some(fires_at);
        }
    }

    /// When the timer next fires, if it is armed (masked timers still count).
    pub fn next_deadline(&self) -> Option<u64> {
        self.timer_deadline
    }

    /// Fires the timer if its deadline has passed.
    pub fn poll(&mut self, now: u64) {
        let Some(deadline) = self.timer_deadline else { return };
        if now < deadline {
            return;
        }
        match self.timer_mode() {
            TimerMode::Periodic if self.initial_count != 0 => {
                let period = self.timer_ticks(self.initial_count);
                // Catch up without firing once per missed period.
                let missed = (now - deadline) / period;
                self.timer_deadline = missed
                    .checked_add(1)
                    .and_then(|periods| periods.checked_mul(period))
                    .and_then(|after| deadline.checked_add(after));
            }
            TimerMode::TscDeadline => {
                self.tsc_deadline = 0;
                self.timer_deadline = None;
            }
            _ => self.timer_deadline = None,
        }
        if self.lvt_timer & LVT_MASKED == 0 {
            self.timer_interrupts += 1;
            self.accept(self.lvt_timer as u8, false);
        }
    }

    /// An edge on LINT1 (wired to NMI on PCs) or LINT0.
    pub fn local_interrupt(&mut self, lint: usize) {
        let lvt = if lint == 0 { self.lvt_lint0 } else { self.lvt_lint1 };
        if lvt & LVT_MASKED != 0 {
            return;
        }
        match DeliveryMode::from_bits(lvt >> LVT_DELIVERY_MODE_SHIFT) {
            DeliveryMode::Nmi => self.nmi_pending = true,
            DeliveryMode::Fixed => self.accept(lvt as u8, lvt & LVT_LEVEL != 0),
            _ => {}
        }
    }

    /// Delivery of a message that selected this APIC.
    pub fn receive(&mut self, message: &Message) {
        match message.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => self.accept(message.vector, message.level_triggered),
            DeliveryMode::Nmi => self.nmi_pending = true,
            _ => {}
        }
    }

    /// INIT: every register to its power-up value except the ID; the mode
    /// (IA32_APIC_BASE) stays as it is, as the SDM says for INIT.
    pub fn init(&mut self) {
        let (id, mode) = (self.id, self.mode);
        self.power_up(mode);
        self.id = id;
    }
}

/// The register offset an x2APIC MSR names, for MSRs 0x800-0x8ff (the page's
/// first 4 KiB in 16-byte steps).
fn x2apic_offset(msr: u32) -> Option<u32> {
    let index = msr.checked_sub(apic_base::X2APIC_MSR_BASE).filter(|&i| i < 0x100)?;
    Some(index << 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(id: u8) -> LocalApic {
        let mut apic = LocalApic::new(id);
        apic.write(reg::SVR, SVR_ENABLE | 0xff, 0);
        apic
    }

    #[test]
    fn disabled_apic_drops_interrupts_and_masks_lvts() {
        let mut apic = LocalApic::new(0);
        apic.accept(0x40, false);
        assert_eq!(apic.deliverable(), None);
        apic.write(reg::LVT_TIMER, 0x30, 0);
        assert_eq!(apic.read(reg::LVT_TIMER, 0) & LVT_MASKED, LVT_MASKED);
        assert_eq!(apic.read(reg::VERSION, 0), VERSION);
        assert_eq!(apic.read(reg::DFR, 0), 0xffff_ffff);
    }

    #[test]
    fn priority_isr_and_eoi() {
        let mut apic = enabled(0);
        apic.accept(0x31, false);
        apic.accept(0x52, false);
        assert_eq!(apic.deliverable(), Some(0x52));
        apic.acknowledge(0x52);
        // 0x31 is a lower class than the in-service 0x52.
        assert_eq!(apic.deliverable(), None);
        assert_eq!(apic.read(reg::PPR, 0), 0x50);
        assert_eq!(apic.read(reg::ISR + 0x20, 0), 1 << (0x52 - 0x40));
        assert_eq!(apic.write(reg::EOI, 0, 0), None);
        assert_eq!(apic.deliverable(), Some(0x31));
        // TPR blocks its class and below.
        apic.write(reg::TPR, 0x30, 0);
        assert_eq!(apic.deliverable(), None);
        apic.write(reg::TPR, 0x20, 0);
        assert_eq!(apic.deliverable(), Some(0x31));
    }

    #[test]
    fn the_virtual_apic_page_mirrors_the_registers_read_without_exits() {
        let mut apic = enabled(3);
        apic.write(reg::LDR, 0x0400_0000, 0);
        apic.write(reg::LVT_TIMER, 0x2_00ef, 0);
        apic.write(reg::TIMER_INITIAL, 5000, 0);
        apic.accept(0x41, false);
        apic.accept(0x62, true);
        apic.acknowledge(0x62);
        let mut page: VirtualApicPage = [0xdead_beef; 1024];
        apic.mirror(&mut page);
        for offset in VIRTUALIZED_READS {
            assert_eq!(page[offset as usize / 4], apic.read(offset, 0), "offset {offset:#x}");
        }
        assert_eq!(page[reg::ID as usize / 4], 3 << 24);
        assert_eq!(page[(reg::IRR + 0x20) as usize / 4], 1 << 1);
        assert_eq!(page[(reg::ISR + 0x30) as usize / 4], 1 << 2);
        assert_eq!(page[(reg::TMR + 0x30) as usize / 4], 1 << 2);
        assert_eq!(page[reg::TIMER_INITIAL as usize / 4], 5000);
        // The current count is computed on each read, so it stays out of the page.
        assert!(!VIRTUALIZED_READS.contains(&reg::TIMER_CURRENT));
        assert_eq!(page[reg::TIMER_CURRENT as usize / 4], 0xdead_beef);
    }

    #[test]
    fn writes_the_guest_made_in_the_page_are_absorbed() {
        let mut apic = enabled(0);
        let mut page: VirtualApicPage = [0; 1024];
        apic.mirror(&mut page);
        page[reg::TPR as usize / 4] = 0x20;
        page[reg::ICR_HIGH as usize / 4] = 0x0200_0000;
        apic.absorb(&page, false);
        assert_eq!(apic.read(reg::TPR, 0), 0x20);
        assert_eq!(apic.read(reg::ICR_HIGH, 0), 0x0200_0000);
        // The IPI an ICR low write then sends goes where ICR high says.
        match apic.write(reg::ICR_LOW, 0x40, 0) {
            Some(Effect::Send(message)) => assert_eq!(message.destination, Destination::Physical(2)),
            other => panic!("expected an IPI, got {other:?}"),
        }
    }

    /// What a CPU with virtual-interrupt delivery does to the page: takes
    /// `vector` from IRR into ISR (delivery), or ends the highest in service.
    fn cpu_delivers(page: &mut VirtualApicPage, vector: u8) {
        let word = |base: u32| (base as usize + (vector as usize / 32) * 0x10) / 4;
        page[word(reg::IRR)] &= !(1 << (vector % 32));
        page[word(reg::ISR)] |= 1 << (vector % 32);
    }

    #[test]
    fn with_virtual_interrupt_delivery_the_cpu_takes_and_ends_vectors_in_the_page() {
        let mut apic = enabled(0);
        let mut page: VirtualApicPage = [0; 1024];
        apic.accept(0x41, false);
        apic.mirror(&mut page);
        assert_eq!(apic.interrupt_status(), 0x0041, "RVI = 0x41, nothing in service");
        // The guest takes 0x41; meanwhile another vCPU raises 0x51 (the
        // model only), and a second 0x41 arrives after the first was taken.
        cpu_delivers(&mut page, 0x41);
        apic.accept(0x51, false);
        apic.absorb(&page, true);
        assert_eq!(apic.isr.highest(), Some(0x41));
        assert_eq!(apic.irr.highest(), Some(0x51), "what the VMM raised since stays requested");
        assert!(apic.mirror_is_stale());
        apic.mirror(&mut page);
        assert_eq!(apic.interrupt_status(), 0x4151);
        assert_eq!(apic.deliverable(), Some(0x51));
        // The guest takes 0x51, then ends it and 0x41 in the page (EOI
        // virtualisation): nothing left anywhere, nothing for the VMM to do.
        cpu_delivers(&mut page, 0x51);
        page[(reg::ISR as usize + 2 * 0x10) / 4] = 0;
        apic.absorb(&page, true);
        assert_eq!((apic.irr.highest(), apic.isr.highest()), (None, None));
        assert_eq!(apic.interrupt_status(), 0);
        assert!(!apic.mirror_is_stale(), "the page already says so");
        // Without delivery (or outside xAPIC mode) the page's IRR and ISR are
        // only the mirror's: the model keeps its own.
        apic.accept(0x61, false);
        apic.mirror(&mut page);
        cpu_delivers(&mut page, 0x61);
        apic.absorb(&page, false);
        assert_eq!(apic.irr.highest(), Some(0x61));
    }

    #[test]
    fn level_triggered_vectors_make_their_virtual_eoi_exit() {
        let mut apic = enabled(0);
        apic.accept(0x61, true);
        apic.accept(0x91, false);
        assert_eq!(apic.eoi_exit_bitmap(), [0, 1 << 33, 0, 0]);
        let mut page: VirtualApicPage = [0; 1024];
        apic.mirror(&mut page);
        cpu_delivers(&mut page, 0x61);
        apic.absorb(&page, true);
        // The CPU ended it and exited: the IOAPIC must hear of it.
        page[(reg::ISR as usize + 3 * 0x10) / 4] = 0;
        apic.absorb(&page, true);
        assert_eq!(apic.virtual_eoi(0x61), Some(Effect::LevelEoi(0x61)));
        assert_eq!(apic.virtual_eoi(0x91), None);
    }

    #[test]
    fn the_page_of_an_apic_reset_since_its_last_mirror_is_not_taken_in() {
        let mut apic = enabled(0);
        let mut page: VirtualApicPage = [0; 1024];
        apic.accept(0x41, false);
        apic.mirror(&mut page);
        cpu_delivers(&mut page, 0x41);
        apic.init();
        apic.absorb(&page, true);
        assert_eq!((apic.irr.highest(), apic.isr.highest()), (None, None));
    }

    #[test]
    fn the_mirror_goes_stale_exactly_when_a_mirrored_register_may_change() {
        let mut apic = enabled(0);
        let mut page: VirtualApicPage = [0; 1024];
        assert!(apic.mirror_is_stale(), "a new APIC was never mirrored");
        apic.mirror(&mut page);
        assert!(!apic.mirror_is_stale());
        // Taking back what the page already holds changes nothing.
        apic.absorb(&page, false);
        assert!(!apic.mirror_is_stale());
        // A TPR the guest wrote in the page changes the threshold: stale.
        page[reg::TPR as usize / 4] = 0x30;
        apic.absorb(&page, false);
        assert!(apic.mirror_is_stale());
        apic.mirror(&mut page);
        // Each way an interrupt arrives, is taken or is written about.
        apic.write(reg::LVT_TIMER, 0x40, 0);
        assert!(apic.mirror_is_stale());
        apic.mirror(&mut page);
        apic.write(reg::TIMER_INITIAL, 1, 0);
        apic.mirror(&mut page);
        apic.poll(1 << 20);
        assert!(apic.mirror_is_stale(), "the timer fired into IRR");
        apic.mirror(&mut page);
        apic.acknowledge(0x40);
        assert!(apic.mirror_is_stale());
        apic.mirror(&mut page);
        apic.receive(&Message {
            vector: 0x51,
            mode: DeliveryMode::Fixed,
            destination: Destination::SelfOnly,
            level_triggered: false,
        });
        assert!(apic.mirror_is_stale());
        apic.mirror(&mut page);
        apic.init();
        assert!(apic.mirror_is_stale());
    }

    #[test]
    fn tpr_threshold_is_the_class_of_an_interrupt_tpr_holds_back() {
        let mut apic = enabled(0);
        assert_eq!(apic.tpr_threshold(), 0);
        apic.write(reg::TPR, 0x50, 0);
        apic.accept(0x41, false);
        // 0x41 (class 4) waits until TPR drops below class 4.
        assert_eq!(apic.deliverable(), None);
        assert_eq!(apic.tpr_threshold(), 4);
        // A higher class is deliverable now: nothing waits on TPR for it.
        apic.accept(0x71, false);
        assert_eq!(apic.deliverable(), Some(0x71));
        assert_eq!(apic.tpr_threshold(), 0);
    }

    #[test]
    fn level_triggered_eoi_is_reported_for_the_ioapic() {
        let mut apic = enabled(0);
        apic.accept(0x61, true);
        apic.acknowledge(0x61);
        assert_eq!(apic.write(reg::EOI, 0, 0), Some(Effect::LevelEoi(0x61)));
    }

    #[test]
    fn one_shot_timer_counts_down_with_the_divider_and_fires_once() {
        let mut apic = enabled(0);
        apic.write(reg::LVT_TIMER, 0xec, 0);
        apic.write(reg::TIMER_DIVIDE, 0x3, 0); // divide by 16
        apic.write(reg::TIMER_INITIAL, 1000, 100);
        assert_eq!(apic.next_deadline(), Some(100 + 16_000));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 100 + 1600), 900);
        apic.poll(16_099);
        assert_eq!(apic.deliverable(), None);
        apic.poll(16_100);
        assert_eq!(apic.deliverable(), Some(0xec));
        assert_eq!(apic.next_deadline(), None);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 20_000), 0);
    }

    #[test]
    fn periodic_timer_rearms_and_skips_missed_periods() {
        let mut apic = enabled(0);
        apic.write(reg::LVT_TIMER, (1 << 17) | 0x40, 0);
        apic.write(reg::TIMER_DIVIDE, 0xb, 0); // divide by 1
        apic.write(reg::TIMER_INITIAL, 100, 0);
        apic.poll(350);
        assert_eq!(apic.next_deadline(), Some(400));
        assert_eq!(apic.deliverable(), Some(0x40));
    }

    #[test]
    fn periodic_timer_never_runs_faster_than_its_minimum_period() {
        let mut apic = LocalApic::new(0).with_min_timer_period(1000);
        apic.write(reg::SVR, SVR_ENABLE | 0xff, 0);
        apic.write(reg::LVT_TIMER, (1 << 17) | 0x40, 0);
        apic.write(reg::TIMER_DIVIDE, 0xb, 0); // divide by 1
        apic.write(reg::TIMER_INITIAL, 1, 0);
        assert_eq!(apic.next_deadline(), Some(1000), "a one-tick period is stretched");
        assert_eq!(apic.read(reg::TIMER_CURRENT, 10), 1, "the count read never exceeds the initial count");
        apic.poll(1000);
        assert_eq!(apic.next_deadline(), Some(2000));
        apic.init();
        apic.write(reg::SVR, SVR_ENABLE | 0xff, 0);
        apic.write(reg::TIMER_DIVIDE, 0xb, 0);
        apic.write(reg::TIMER_INITIAL, 1, 0);
        assert_eq!(apic.next_deadline(), Some(1), "one-shot counts are not stretched");
        apic.write(reg::LVT_TIMER, 1 << 17, 0);
        apic.write(reg::TIMER_INITIAL, 1, 0);
        assert_eq!(apic.next_deadline(), Some(1000), "the minimum survives INIT");
    }

    #[test]
    fn timers_armed_near_the_end_of_time_saturate() {
        let mut apic = enabled(0);
        apic.write(reg::LVT_TIMER, (1 << 17) | 0x40, 0);
        apic.write(reg::TIMER_DIVIDE, 0xa, 0); // divide by 128
        apic.write(reg::TIMER_INITIAL, u32::MAX, u64::MAX - 5);
        assert_eq!(apic.next_deadline(), None, "a count that ends past u64::MAX never ends");
        assert_eq!(apic.read(reg::TIMER_CURRENT, u64::MAX - 5), 0);
        apic.write(reg::TIMER_INITIAL, 1, u64::MAX - 128);
        assert_eq!(apic.next_deadline(), Some(u64::MAX));
        apic.poll(u64::MAX);
        assert_eq!(apic.deliverable(), Some(0x40));
        assert_eq!(apic.next_deadline(), None, "nor does the next period");
    }

    #[test]
    fn tsc_deadline_mode_fires_at_the_deadline_and_disarms() {
        let mut apic = enabled(0);
        apic.set_tsc_deadline(500);
        assert_eq!(apic.next_deadline(), None, "ignored outside TSC-deadline mode");
        apic.write(reg::LVT_TIMER, (2 << 17) | 0xef, 0);
        apic.write(reg::TIMER_INITIAL, 5, 0);
        assert_eq!(apic.next_deadline(), None, "initial count is ignored in TSC-deadline mode");
        apic.set_tsc_deadline(500);
        assert_eq!(apic.tsc_deadline(), 500);
        apic.poll(499);
        assert_eq!(apic.deliverable(), None);
        apic.poll(600);
        assert_eq!(apic.deliverable(), Some(0xef));
        assert_eq!(apic.tsc_deadline(), 0);
        assert_eq!(apic.next_deadline(), None);
    }

    #[test]
    fn an_offset_tsc_deadline_reads_as_written_and_fires_on_the_host_clock() {
        let mut apic = enabled(0);
        apic.write(reg::LVT_TIMER, (2 << 17) | 0xef, 0);
        // The guest's TSC runs 1000 ahead of the host's.
        apic.arm_tsc_deadline(1500, 500);
        assert_eq!((apic.tsc_deadline(), apic.next_deadline()), (1500, Some(500)));
        apic.poll(499);
        assert_eq!(apic.deliverable(), None);
        apic.poll(500);
        assert_eq!(apic.deliverable(), Some(0xef));
        assert_eq!(apic.tsc_deadline(), 0, "disarmed once it fired");
        // 0 disarms whatever the host time given.
        apic.arm_tsc_deadline(0, 7);
        assert_eq!((apic.tsc_deadline(), apic.next_deadline()), (0, None));
    }

    #[test]
    fn masked_timer_expires_silently() {
        let mut apic = enabled(0);
        apic.write(reg::LVT_TIMER, LVT_MASKED | 0x40, 0);
        apic.write(reg::TIMER_INITIAL, 10, 0);
        apic.poll(1000);
        assert_eq!(apic.deliverable(), None);
    }

    #[test]
    fn icr_write_produces_the_ipi() {
        let mut apic = enabled(0);
        apic.write(reg::ICR_HIGH, 1 << 24, 0);
        // INIT, level assert, physical.
        assert_eq!(apic.write(reg::ICR_LOW, 0x0000_8500, 0), None, "INIT de-assert is not sent");
        let effect = apic.write(reg::ICR_LOW, 0x0000_4500, 0);
        assert_eq!(
            effect,
            Some(Effect::Send(Message {
                vector: 0,
                mode: DeliveryMode::Init,
                destination: Destination::Physical(1),
                level_triggered: false
            }))
        );
        let Some(Effect::Send(sipi)) = apic.write(reg::ICR_LOW, 0x0000_0609, 0) else { panic!() };
        assert_eq!((sipi.mode, sipi.vector), (DeliveryMode::Startup, 0x09));
        let Some(Effect::Send(all)) = apic.write(reg::ICR_LOW, 0x000c_00fd, 0) else { panic!() };
        assert_eq!(all.destination, Destination::AllExcludingSelf);
        assert_eq!(apic.read(reg::ICR_LOW, 0) & ICR_DELIVERY_PENDING, 0, "delivery is instant");
    }

    #[test]
    fn logical_destinations_flat_and_cluster() {
        let mut apic = enabled(0);
        apic.write(reg::LDR, 0x0400_0000, 0);
        assert!(apic.matches_logical(0x06));
        assert!(!apic.matches_logical(0x01));
        apic.write(reg::DFR, 0x0fff_ffff, 0);
        apic.write(reg::LDR, 0x2100_0000, 0);
        assert!(apic.matches_logical(0x21));
        assert!(!apic.matches_logical(0x11));
    }

    const BASE: u64 = crate::layout::LAPIC_BASE;
    const EN: u64 = apic_base::EN;
    const EXTD: u64 = apic_base::EXTD;

    fn x2apic(id: u8) -> LocalApic {
        let mut apic = enabled(id);
        apic.set_base(BASE | EN | EXTD, true, 48).unwrap();
        apic
    }

    #[test]
    fn apic_base_reads_the_mode_and_refuses_what_the_sdm_refuses() {
        let mut apic = LocalApic::new(0).as_bootstrap();
        assert_eq!(apic.base(), BASE | apic_base::BSP | EN);
        assert_eq!(LocalApic::new(1).base(), BASE | EN);
        assert_eq!(apic.set_base(BASE | EN | 1 << 36, true, 36), Err(BaseRefused::ReservedBits));
        assert_eq!(apic.set_base(BASE | EN | 1 << 36, true, 40), Err(BaseRefused::Relocation));
        assert_eq!(apic.set_base(BASE | EN | EXTD, false, 40), Err(BaseRefused::X2ApicNotOffered));
        assert_eq!(apic.set_base(BASE | EXTD, true, 40), Err(BaseRefused::Invalid));
        assert_eq!(apic.set_base(0xfec0_0000 | EN, true, 40), Err(BaseRefused::Relocation));
        // A MAXPHYADDR no CPU has still leaves the default base writable.
        assert_eq!(apic.set_base(BASE | EN, true, 0), Ok(()));
        assert_eq!(apic.set_base(BASE | EN, true, 200), Ok(()));
        assert_eq!(apic.mode(), Mode::XApic);
    }

    #[test]
    fn disabling_resets_the_apic_and_it_takes_nothing_while_off() {
        let mut apic = enabled(3);
        apic.write(reg::ID, 7 << 24, 0);
        apic.write(reg::LVT_TIMER, (1 << 17) | 0x40, 0);
        apic.write(reg::TIMER_INITIAL, 100, 0);
        apic.accept(0x50, false);
        apic.set_base(BASE, true, 48).unwrap();
        assert_eq!(apic.mode(), Mode::Disabled);
        assert!(!apic.decodes_mmio());
        assert_eq!((apic.deliverable(), apic.next_deadline()), (None, None), "nothing pending, no timer");
        for destination in [Destination::Physical(3), Destination::Physical(0xff), Destination::X2Physical(u32::MAX)] {
            assert!(!apic.is_addressed_by(destination), "{destination:?}");
        }
        assert!(apic.accepts_extint(), "LINT0 is a plain INTR wire while the APIC is off");
        apic.set_base(BASE | EN, true, 48).unwrap();
        assert_eq!(apic.read(reg::ID, 0), 3 << 24, "the initial ID again");
        assert!(!apic.software_enabled(), "back in the power-up state");
        assert_eq!(apic.read(reg::LVT_TIMER, 0), LVT_MASKED);
    }

    #[test]
    fn x2apic_mode_has_the_registers_as_msrs_and_no_page() {
        let mut apic = enabled(0x13);
        apic.write(reg::ID, 0x55 << 24, 0);
        apic.write(reg::TPR, 0x20, 0);
        apic.set_base(BASE | EN | EXTD, true, 48).unwrap();
        assert!(!apic.decodes_mmio());
        assert_eq!(apic.read_msr(0x802, 0), Ok(0x13), "the x2APIC ID is the initial ID");
        assert_eq!(apic.read_msr(0x80d, 0), Ok(1 << 16 | 1 << 3), "cluster 1, member 3");
        assert_eq!(apic.read_msr(0x808, 0), Ok(0x20), "registers kept across the switch");
        assert_eq!(apic.read_msr(0x80f, 0), Ok(0x1ff));
        assert_eq!(apic.write_msr(0x808, 0x40, 0), Ok(None));
        assert_eq!(apic.tpr(), 0x40);
        // ICR: one 64-bit write sends, with the 32-bit destination.
        for reserved in [1 << 13, 1 << 16, 1 << 31] {
            assert_eq!(apic.write_msr(0x830, 1 << 32 | reserved | 0x41, 0), Err(MsrRefused), "{reserved:#x}");
        }
        let Ok(Some(Effect::Send(m))) = apic.write_msr(0x830, 0x0000_0123_0000_0841, 0) else { panic!() };
        assert_eq!((m.vector, m.destination), (0x41, Destination::X2Logical(0x123)));
        assert_eq!(apic.read_msr(0x830, 0), Ok(0x0000_0123_0000_0841));
        let Ok(Some(Effect::Send(m))) = apic.write_msr(0x83f, 0x61, 0) else { panic!() };
        assert_eq!((m.vector, m.destination, m.mode), (0x61, Destination::SelfOnly, DeliveryMode::Fixed));
        // Nothing of this in xAPIC mode, and nothing outside 0x800-0x8ff.
        let mut xapic = enabled(0);
        assert_eq!(xapic.read_msr(0x802, 0), Err(MsrRefused));
        assert_eq!(xapic.write_msr(0x808, 0, 0), Err(MsrRefused));
        assert_eq!(apic.read_msr(0x900, 0), Err(MsrRefused));
        assert_eq!(apic.read_msr(0x7ff, 0), Err(MsrRefused));
    }

    #[test]
    fn x2apic_destinations() {
        let apic = x2apic(0x21);
        // Physical by the full ID, and the broadcast.
        assert!(apic.is_addressed_by(Destination::X2Physical(0x21)));
        assert!(!apic.is_addressed_by(Destination::X2Physical(0x121)));
        assert!(apic.is_addressed_by(Destination::X2Physical(u32::MAX)));
        // Logical: cluster 2, member 1.
        assert!(apic.is_addressed_by(Destination::X2Logical(0x0002_0002)));
        assert!(apic.is_addressed_by(Destination::X2Logical(0x0002_ffff)));
        assert!(!apic.is_addressed_by(Destination::X2Logical(0x0001_0002)));
        assert!(!apic.is_addressed_by(Destination::X2Logical(0x0002_0001)));
        // IOAPIC-format messages reach it by the low 8 bits of its ID.
        assert!(apic.is_addressed_by(Destination::Physical(0x21)));
        assert!(apic.is_addressed_by(Destination::Physical(0xff)));
        assert!(x2apic(1).is_addressed_by(Destination::Logical(0x02)));
        // An xAPIC-mode APIC takes x2APIC-format messages only as broadcasts.
        let xapic = enabled(0x21);
        assert!(!xapic.is_addressed_by(Destination::X2Physical(0x21)));
        assert!(xapic.is_addressed_by(Destination::X2Logical(u32::MAX)));
    }

    #[test]
    fn init_keeps_the_mode_and_the_id() {
        let mut apic = x2apic(5);
        apic.init();
        assert_eq!((apic.mode(), apic.read_msr(0x802, 0)), (Mode::X2Apic, Ok(5)));
        assert!(!apic.software_enabled());
        let mut apic = enabled(5);
        apic.set_base(BASE, true, 48).unwrap();
        apic.init();
        assert_eq!(apic.mode(), Mode::Disabled);
    }

    #[test]
    fn outside_xapic_mode_the_page_mirrors_as_nothing_but_the_tpr() {
        for mut apic in [x2apic(2), {
            let mut off = enabled(2);
            off.set_base(BASE, true, 48).unwrap();
            off
        }] {
            apic.set_tpr(0x30);
            let mut page: VirtualApicPage = [0; 1024];
            apic.mirror(&mut page);
            for offset in VIRTUALIZED_READS {
                let expected = if offset == reg::TPR { 0x30 } else { u32::MAX };
                assert_eq!(page[offset as usize / 4], expected, "offset {offset:#x} in {:?}", apic.mode());
            }
            // CR8 through the TPR shadow is taken; an ICR high stored in the
            // page is not, and the next mirror takes it out again.
            page[reg::TPR as usize / 4] = 0x50;
            page[reg::ICR_HIGH as usize / 4] = 0x0100_0000;
            apic.absorb(&page, false);
            assert_eq!(apic.tpr(), 0x50);
            assert!(apic.mirror_is_stale());
            apic.mirror(&mut page);
            assert_eq!(page[reg::ICR_HIGH as usize / 4], u32::MAX);
            assert!(!apic.mirror_is_stale());
            apic.page_written_while_undecoded();
            assert!(apic.mirror_is_stale());
        }
    }

    #[test]
    fn mirroring_only_the_changes_leaves_the_page_as_a_whole_mirror_would() {
        // A small deterministic walk over what changes an APIC between entries.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut apic = enabled(1);
        let (mut page, mut whole): (VirtualApicPage, VirtualApicPage) = ([0; 1024], [0; 1024]);
        apic.mirror(&mut page);
        for step in 0..2000 {
            let r = next();
            let vector = (r >> 8) as u8;
            match r % 6 {
                0 | 1 => apic.accept(vector, r & 0x100 != 0),
                2 => {
                    if let Some(v) = apic.deliverable() {
                        apic.acknowledge(v);
                    }
                }
                3 => drop(apic.write(reg::EOI, 0, 0)),
                4 => apic.set_tpr(vector & 0xf0),
                _ => drop(apic.write(reg::LVT_TIMER, vector as u32 | LVT_MASKED, 0)),
            }
            apic.mirror_changes(&mut page);
            let mut fresh = apic.clone();
            fresh.mirror(&mut whole);
            for offset in VIRTUALIZED_READS {
                let at = offset as usize / 4;
                assert_eq!(page[at], whole[at], "step {step}: register {offset:#x}");
            }
        }
    }

    #[test]
    fn lint0_extint_and_lint1_nmi() {
        let mut apic = LocalApic::new(0);
        assert!(apic.accepts_extint(), "a disabled APIC passes INTR through");
        apic.write(reg::SVR, SVR_ENABLE, 0);
        assert!(!apic.accepts_extint());
        apic.write(reg::LVT_LINT0, 0x700, 0);
        assert!(apic.accepts_extint());
        apic.write(reg::LVT_LINT1, 0x400, 0);
        apic.local_interrupt(1);
        assert!(apic.nmi_pending);
    }
}
