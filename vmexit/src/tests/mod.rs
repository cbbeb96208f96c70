//! Every handler on the fake vCPU, VM and host, with hostile inputs.
//!
//! The helpers here build what several files need: a run of one exit through
//! `dispatch`, guest page tables in `FakeMemory`, and devices that record what
//! the handlers did to them.

mod cpuid;
mod cr;
mod debug;
mod decode;
mod events;
mod hostile;
mod hypercall;
mod io;
mod misc;
mod mmio;
mod msr;
mod xsetbv;

use crate::fake::{FakeHost, FakeMemory, FakeVcpu, FakeVm, Injected};
use crate::{dispatch, Exit, Outcome};
use devices::{GuestRam, MmioDevice, PortDevice, Request};
use std::sync::{Arc, Mutex};

/// RAM of most tests: 1 MiB from guest-physical 0.
pub const RAM: usize = 0x10_0000;

/// Register numbers as instructions encode them.
pub const RAX: u8 = 0;
pub const RCX: u8 = 1;
pub const RDX: u8 = 2;
pub const RBX: u8 = 3;
pub const RSI: u8 = 6;
pub const RDI: u8 = 7;

/// Runs one exit through `dispatch`, as a back end would.
pub fn run(exit: Exit, vcpu: &mut FakeVcpu, vm: &mut FakeVm, host: &mut FakeHost) -> Outcome {
    vm.with(|machine| dispatch(exit, vcpu, machine, host))
}

/// A one-vCPU VM with `RAM` bytes and the default host.
pub fn machine() -> (FakeVm, FakeHost) {
    (FakeVm::new(1, RAM), FakeHost::default())
}

/// The exception the vCPU was asked to raise, if any.
pub fn exception(vcpu: &FakeVcpu) -> Option<(u8, Option<u32>)> {
    match vcpu.injected {
        Some(Injected::Exception { vector, error_code }) => Some((vector, error_code)),
        _ => None,
    }
}

/// Asserts the guest gets #GP(0) for the instruction, which is not skipped.
#[track_caller]
pub fn assert_gp(vcpu: &FakeVcpu, outcome: &Outcome, rip: u64) {
    assert_eq!(*outcome, Outcome::Resume);
    assert_eq!(exception(vcpu), Some((crate::GP, Some(0))));
    assert_eq!((vcpu.rip, vcpu.skipped), (rip, 0), "a faulting instruction is not skipped");
}

/// Asserts the instruction completed: skipped exactly once, nothing injected.
#[track_caller]
pub fn assert_done(vcpu: &FakeVcpu, outcome: &Outcome, rip: u64) {
    assert_eq!(*outcome, Outcome::Resume);
    assert_eq!(vcpu.injected, None);
    assert_eq!(vcpu.skipped, 1, "skipped exactly once");
    assert_eq!(vcpu.rip, rip + vcpu.instruction_length);
}

/// Whether a stop is the "Basalt does not emulate this" kind.
pub fn is_unsupported(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Stop(crate::Stop::Unsupported(_)))
}

// Guest page tables (4-level, 4 KiB pages) in FakeMemory.

pub const PRESENT: u64 = 1;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const NO_EXECUTE: u64 = 1 << 63;

/// Page tables built from `cr3` upwards, one fresh page per table; the
/// tables above the last level grant everything, so each page's own entry
/// decides its rights.
pub struct Tables {
    pub cr3: u64,
    next: u64,
}

impl Tables {
    /// Tables in the RAM from `at` (page-aligned, zeroed) up.
    pub fn new(at: u64) -> Tables {
        Tables { cr3: at, next: at + 0x1000 }
    }

    /// Maps the 4 KiB page at `linear` to `physical` with `flags` in its
    /// last-level entry (0 leaves it not present).
    pub fn map(&mut self, memory: &mut FakeMemory, linear: u64, physical: u64, flags: u64) {
        let mut table = self.cr3;
        for level in (2..=4).rev() {
            let at = table + ((linear >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let entry = read_u64(memory, at);
            table = if entry & PRESENT != 0 {
                entry & 0x000f_ffff_ffff_f000
            } else {
                let new = self.next;
                self.next += 0x1000;
                write_u64(memory, at, new | PRESENT | WRITABLE | USER);
                new
            };
        }
        write_u64(memory, table + ((linear >> 12) & 0x1ff) * 8, (physical & !0xfff) | flags);
    }

    /// Identity-maps `pages` pages from 0 with `flags`.
    pub fn identity(&mut self, memory: &mut FakeMemory, pages: u64, flags: u64) {
        for page in 0..pages {
            self.map(memory, page << 12, page << 12, flags);
        }
    }
}

pub fn read_u64(memory: &FakeMemory, at: u64) -> u64 {
    let mut bytes = [0; 8];
    memory.read(at, &mut bytes).expect("page tables in RAM");
    u64::from_le_bytes(bytes)
}

pub fn write_u64(memory: &mut FakeMemory, at: u64, value: u64) {
    memory.write(at, &value.to_le_bytes()).expect("page tables in RAM");
}

/// Where the tables of `long_mode_vm` start: above everything tests use.
pub const TABLES: u64 = 0xc_0000;

/// A 64-bit vCPU and a VM whose first 512 pages (2 MiB, past the 1 MiB of
/// RAM: the rest are simply not RAM) are identity-mapped, writable, with
/// EFER.NXE on so execute rights count.
pub fn long_mode_vm() -> (FakeVcpu, FakeVm, FakeHost, Tables) {
    let (mut vm, host) = machine();
    let mut tables = Tables::new(TABLES);
    tables.identity(&mut vm.memory, 512, PRESENT | WRITABLE);
    let mut vcpu = FakeVcpu::long_mode();
    vcpu.cr3 = tables.cr3;
    vcpu.efer |= arch::control::efer::NXE;
    (vcpu, vm, host, tables)
}

// Devices that record what the handlers did to them.

/// (write?, offset, size, value) of each access a `Probe` saw.
pub type AccessLog = Arc<Mutex<Vec<(bool, u64, u8, u64)>>>;

/// Records every access; reads return `read_value` masked to the size.
pub struct Probe {
    pub log: AccessLog,
    pub read_value: u64,
    /// A write of this value asks for this request.
    pub request_on: Option<(u64, Request)>,
}

impl Probe {
    pub fn new(read_value: u64) -> (Box<Probe>, AccessLog) {
        let log = AccessLog::default();
        (Box::new(Probe { log: log.clone(), read_value, request_on: None }), log)
    }
}

impl PortDevice for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        self.log.lock().unwrap().push((false, offset as u64, size, 0));
        (self.read_value & devices::bus::all_ones(size)) as u32
    }
    fn write(&mut self, offset: u16, size: u8, value: u32) -> Option<Request> {
        self.log.lock().unwrap().push((true, offset as u64, size, value as u64));
        self.request_on.filter(|&(on, _)| on == value as u64).map(|(_, r)| r)
    }
}

impl MmioDevice for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        self.log.lock().unwrap().push((false, offset, size, 0));
        self.read_value & devices::bus::all_ones(size)
    }
    fn write(&mut self, offset: u64, size: u8, value: u64) -> Option<Request> {
        self.log.lock().unwrap().push((true, offset, size, value));
        self.request_on.filter(|&(on, _)| on == value).map(|(_, r)| r)
    }
}

/// The values written, in order.
pub fn writes(log: &AccessLog) -> Vec<u64> {
    log.lock().unwrap().iter().filter(|a| a.0).map(|a| a.3).collect()
}

pub fn reads(log: &AccessLog) -> usize {
    log.lock().unwrap().iter().filter(|a| !a.0).count()
}

#[test]
fn the_test_page_tables_translate_as_built() {
    use arch::paging::{translate, Access, AccessKind, PageFault, WalkError};
    let (mut vcpu, mut vm, _, mut tables) = long_mode_vm();
    tables.map(&mut vm.memory, 0x40_0000, 0x5000, PRESENT);
    tables.map(&mut vm.memory, 0x40_1000, 0, 0);
    vcpu.cr0 |= arch::paging::CR0_WP;
    let paging = crate::Vcpu::paging(&vcpu);
    let read = Access::new(AccessKind::Read, false, false);
    let write = Access::new(AccessKind::Write, false, false);
    assert_eq!(translate(&vm.memory, &paging, read, 0x1234), Ok(0x1234));
    assert_eq!(translate(&vm.memory, &paging, read, 0x40_0123), Ok(0x5123));
    let fault = |linear, error_code| Err(WalkError::PageFault(PageFault { linear, error_code }));
    assert_eq!(translate(&vm.memory, &paging, write, 0x40_0123), fault(0x40_0123, 3));
    assert_eq!(translate(&vm.memory, &paging, read, 0x40_1000), fault(0x40_1000, 0));
}

#[test]
fn every_exit_kind_has_its_own_name() {
    let mut names = crate::Exit::KIND_NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), crate::Exit::KINDS);
}
