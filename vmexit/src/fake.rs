//! A vCPU, a VM and a host in plain memory, for running the handlers on the
//! host: tests set any register or guest byte they like (hostile values
//! included) and read back what the handlers did.

use crate::exit::SegmentRegister;
use crate::vcpu::DebugRegisters;
use crate::{GuestXstate, Host, Machine, Vcpu};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use arch::control::{cr0, efer, Context};
use arch::debug::{dr6, dr7};
use arch::decode::CodeSize;
use arch::paging::{Paging, PhysicalMemory};
use devices::{Chipset, ChipsetConfig, GuestRam, NotRam, PendingEvents};

/// An event the fake vCPU was asked to deliver. `DebugTrap` is the #DB after
/// an instruction the VMM completed, with the conditions DR6 was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Exception { vector: u8, error_code: Option<u32> },
    Reflected { vector: u8, error_code: Option<u32> },
    DebugTrap(u64),
    Nmi,
    Interrupt(u8),
}

#[derive(Debug, Clone)]
pub struct FakeVcpu {
    pub index: usize,
    pub gprs: [u64; 16],
    pub rip: u64,
    /// What `skip_instruction` adds to RIP: the back end's exit length, or
    /// the one a handler gave `set_instruction_length`.
    pub instruction_length: u64,
    /// Whether the back end knows the exiting instruction's length (VMX; SVM
    /// with next-RIP save). False plays SVM without next-RIP save:
    /// `instruction_length_unknown` says so until a handler calls
    /// `set_instruction_length`, and a skip before that panics (the real back
    /// end cannot move RIP then, and the guest would run the instruction again:
    /// a Basalt bug).
    pub length_known: bool,
    /// The length a handler last gave `set_instruction_length`. It replaces
    /// the exit's, as on SVM (VMX ignores it, and has no exit that sets one).
    pub length_set: Option<u8>,
    /// How many times the instruction was skipped.
    pub skipped: u32,
    pub rflags: u64,
    pub cpl: u8,
    /// ES, CS, SS, DS, FS, GS.
    pub segment_bases: [u64; 6],
    pub code_size: CodeSize,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub xcr0: u64,
    pub tsc_offset: u64,
    /// Whether instruction fetches go through `fetch_memo`, as on both real
    /// back ends (true unless a test turns it off).
    pub remember_fetches: bool,
    pub fetch_memo: crate::FetchMemo,
    /// DR0-DR3, DR6 and DR7.
    pub dr: [u64; 4],
    pub dr6: u64,
    pub dr7: u64,
    pub pending: PendingEvents,
    pub injected: Option<Injected>,
    pub interrupt_shadow: bool,
    pub nmi_blocked: bool,
    pub interrupt_window: bool,
    pub nmi_window: bool,
    pub halted: bool,
    /// Plays VT-x with virtual-interrupt delivery: the CPU delivers the
    /// local APIC's interrupts in xAPIC mode, the VMM injects none of them.
    pub apic_delivery: bool,
}

impl FakeVcpu {
    /// A vCPU in 64-bit mode at ring 0, identity-free (paging off is simpler
    /// for most tests: see `flat`), interrupts enabled.
    pub fn long_mode() -> FakeVcpu {
        FakeVcpu {
            cr0: cr0::PE | cr0::PG,
            cr4: arch::control::cr4::PAE,
            efer: efer::LME | efer::LMA,
            code_size: CodeSize::Bits64,
            ..FakeVcpu::flat()
        }
    }

    /// A vCPU in protected mode without paging (linear = physical), 32-bit
    /// code at ring 0, interrupts enabled.
    pub fn flat() -> FakeVcpu {
        FakeVcpu {
            index: 0,
            gprs: [0; 16],
            rip: 0x1000,
            instruction_length: 2,
            length_known: true,
            length_set: None,
            skipped: 0,
            rflags: 0x202,
            cpl: 0,
            segment_bases: [0; 6],
            code_size: CodeSize::Bits32,
            cr0: cr0::PE,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            xcr0: 1,
            tsc_offset: 0,
            remember_fetches: true,
            fetch_memo: crate::FetchMemo::default(),
            dr: [0; 4],
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            pending: PendingEvents::default(),
            injected: None,
            interrupt_shadow: false,
            nmi_blocked: false,
            interrupt_window: false,
            nmi_window: false,
            halted: false,
            apic_delivery: false,
        }
    }

    fn inject(&mut self, event: Injected) {
        // A second event for the same entry is a handler bug: the first would
        // be lost on real hardware.
        assert!(self.injected.is_none(), "two events injected for one entry: {:?} then {event:?}", self.injected);
        self.injected = Some(event);
    }
}

impl Vcpu for FakeVcpu {
    fn index(&self) -> usize {
        self.index
    }
    fn gpr(&self, index: u8) -> u64 {
        self.gprs[(index & 15) as usize]
    }
    fn set_gpr(&mut self, index: u8, value: u64) {
        self.gprs[(index & 15) as usize] = value;
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, rip: u64) {
        self.rip = rip;
        self.interrupt_shadow = false;
    }
    fn skip_instruction(&mut self) {
        assert!(self.length_known, "skip_instruction with the instruction's length unknown (RIP {:#x})", self.rip);
        self.rip = self.rip.wrapping_add(self.instruction_length);
        self.interrupt_shadow = false;
        self.skipped += 1;
    }
    fn instruction_length_unknown(&self) -> bool {
        !self.length_known
    }
    fn set_instruction_length(&mut self, length: u8) {
        // A length only a decoder can give: no x86 instruction is empty or
        // longer than 15 bytes.
        assert!((1..=15).contains(&length), "instruction length {length} set");
        self.instruction_length = length as u64;
        self.length_known = true;
        self.length_set = Some(length);
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rflags(&mut self, value: u64) {
        self.rflags = value;
    }
    fn cpl(&self) -> u8 {
        self.cpl
    }
    fn segment_base(&self, segment: SegmentRegister) -> u64 {
        self.segment_bases[segment as usize]
    }
    fn code_size(&self) -> CodeSize {
        self.code_size
    }
    fn control(&self) -> Context {
        Context {
            cr0: self.cr0,
            cr3: self.cr3,
            cr4: self.cr4,
            long_mode_enabled: self.efer & efer::LME != 0,
            long_mode_active: self.efer & efer::LMA != 0,
            code_64: self.code_size == CodeSize::Bits64,
        }
    }
    fn efer(&self) -> u64 {
        self.efer
    }
    fn fetch_memo(&mut self) -> Option<&mut crate::FetchMemo> {
        self.remember_fetches.then_some(&mut self.fetch_memo)
    }
    fn paging(&self) -> Paging {
        Paging { cr0: self.cr0, cr3: self.cr3, cr4: self.cr4, efer: self.efer, pdptes: None, max_phys_bits: 46 }
    }
    fn set_cr0(&mut self, value: u64) {
        self.cr0 = value;
    }
    fn set_cr4(&mut self, value: u64) {
        self.cr4 = value;
    }
    fn set_efer(&mut self, value: u64) {
        self.efer = value;
    }
    fn set_cr2(&mut self, value: u64) {
        self.cr2 = value;
    }
    fn xcr0(&self) -> u64 {
        self.xcr0
    }
    fn set_xcr0(&mut self, value: u64) {
        self.xcr0 = value;
    }
    fn tsc_offset(&self) -> u64 {
        self.tsc_offset
    }
    fn set_tsc_offset(&mut self, offset: u64) {
        self.tsc_offset = offset;
    }
    fn debug_registers(&self) -> DebugRegisters {
        DebugRegisters { dr: self.dr, dr7: self.dr7 }
    }
    fn raise_debug_trap(&mut self, conditions: u64) {
        // Only DR6's trap conditions: anything else is a handler bug.
        assert_eq!(conditions & !(dr6::BREAKPOINTS | dr6::BS), 0, "debug trap conditions {conditions:#x}");
        assert_ne!(conditions, 0, "a debug trap without a condition");
        self.dr6 = arch::control::dr6_after_debug_exception(self.dr6, conditions);
        self.dr7 &= !dr7::GD;
        self.inject(Injected::DebugTrap(conditions));
        self.halted = false;
    }
    fn pending(&mut self) -> &mut PendingEvents {
        &mut self.pending
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.inject(Injected::Exception { vector, error_code });
    }
    fn reflect_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.inject(Injected::Reflected { vector, error_code });
    }
    fn injection_pending(&self) -> bool {
        self.injected.is_some()
    }
    fn interrupt_shadow(&self) -> bool {
        self.interrupt_shadow
    }
    fn nmi_blocked(&self) -> bool {
        self.nmi_blocked
    }
    fn inject_nmi(&mut self) {
        self.inject(Injected::Nmi);
        self.halted = false;
    }
    fn inject_interrupt(&mut self, vector: u8) {
        self.inject(Injected::Interrupt(vector));
        self.halted = false;
    }
    fn delivers_apic_interrupts(&self, mode: devices::lapic::Mode) -> bool {
        self.apic_delivery && mode == devices::lapic::Mode::XApic
    }
    fn request_interrupt_window(&mut self, on: bool) {
        self.interrupt_window = on;
    }
    fn request_nmi_window(&mut self, on: bool) {
        self.nmi_window = on;
    }
    fn halt(&mut self) {
        self.halted = true;
    }
}

/// Guest RAM from guest-physical 0, `len` bytes; anything above is not RAM.
pub struct FakeMemory {
    pub bytes: Vec<u8>,
}

impl FakeMemory {
    pub fn new(len: usize) -> FakeMemory {
        FakeMemory { bytes: vec![0; len] }
    }

    fn range(&self, address: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(address).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }
}

impl GuestRam for FakeMemory {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let range = self.range(address, buf.len()).ok_or(NotRam)?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }
    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), NotRam> {
        let range = self.range(address, data.len()).ok_or(NotRam)?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }
}

impl PhysicalMemory for FakeMemory {
    fn read_u32(&self, physical: u64) -> Option<u32> {
        let mut b = [0; 4];
        GuestRam::read(self, physical, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn read_u64(&self, physical: u64) -> Option<u64> {
        let mut b = [0; 8];
        GuestRam::read(self, physical, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// A host with a fixed clock and CPUID answers a test chooses: by default an
/// Intel-like CPU with SSE, AVX and the usual CR4 features.
pub struct FakeHost {
    pub now: u64,
    pub tsc_hz: u64,
    pub cpuid: fn(u32, u32) -> [u32; 4],
    pub xstate: GuestXstate,
    pub host_interrupts: u32,
    pub host_nmis: u32,
}

/// A plausible host: vendor "GenuineIntel", max leaf 0xd, family 6 with
/// FPU/PSE/PAE/APIC/SSE2/…, XSAVE and AVX, VMX (to be hidden), extended leaves
/// to 0x80000008 with SVM (to be hidden) and 48-bit physical addresses.
pub fn intel_like_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match (leaf, subleaf) {
        (0, _) => [0xd, u32::from_le_bytes(*b"Genu"), u32::from_le_bytes(*b"ntel"), u32::from_le_bytes(*b"ineI")],
        // ECX: SSE3, VMX, SSSE3, SSE4.1/4.2, X2APIC, XSAVE, OSXSAVE, AVX. EDX: the usual base set.
        (1, _) => [0x000906ea, 0x0010_0800, 0x1ff8_2221 | (1 << 5), 0xbfeb_fbff],
        (7, 0) => [0, 0x0000_0381 | (1 << 7) | (1 << 20), 0, 1 << 29],
        (0xd, 0) => [0x7, 0x340, 0x340, 0],
        (0xd, 1) => [0x1, 0, 0, 0],
        (0xd, 2) => [0x100, 0x240, 0, 0],
        (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
        (0x8000_0001, _) => [0, 0, 0x121 | (1 << 2), 0x2c10_0800],
        (0x8000_0008, _) => [0x3030, 0, 0, 0],
        _ => [0; 4],
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            now: 1_000_000,
            tsc_hz: 2_000_000_000,
            cpuid: intel_like_cpuid,
            xstate: GuestXstate { allowed: 0x7, area_size: 0x340 },
            host_interrupts: 0,
            host_nmis: 0,
        }
    }
}

impl Host for FakeHost {
    fn now(&self) -> u64 {
        self.now
    }
    fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        (self.cpuid)(leaf, subleaf)
    }
    fn guest_xstate(&self) -> GuestXstate {
        self.xstate
    }
    fn take_host_interrupt(&mut self) {
        self.host_interrupts += 1;
    }
    fn take_host_nmi(&mut self) {
        self.host_nmis += 1;
    }
}

/// A VM's parts a test owns: the PC chipset for `vcpus` vCPUs, RAM, and what
/// its console printed.
pub struct FakeVm {
    pub chipset: Chipset,
    pub memory: FakeMemory,
    pub console: core::cell::RefCell<Vec<Vec<u8>>>,
}

impl FakeVm {
    pub fn new(vcpus: u32, ram: usize) -> FakeVm {
        let chipset = Chipset::new(ChipsetConfig {
            vcpus,
            tsc_hz: 2_000_000_000,
            unix_time: 1_700_000_000,
            now: 0,
            com1_output: Box::new(|_: &[u8]| {}),
            com1_unbuffered: false,
        });
        FakeVm { chipset, memory: FakeMemory::new(ram), console: core::cell::RefCell::new(Vec::new()) }
    }

    /// Runs `f` with the handlers' view of this VM.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Machine) -> R) -> R {
        let console = &self.console;
        let print = |line: &[u8]| console.borrow_mut().push(line.to_vec());
        let mut machine =
            Machine { name: "fake", chipset: &mut self.chipset, memory: &mut self.memory, console: &print };
        f(&mut machine)
    }
}
