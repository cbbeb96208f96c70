//! Accesses to guest-physical memory that is not RAM: a device register (local
//! APIC, IOAPIC, the chipset's MMIO bus) or nothing at all. The instruction is
//! fetched and decoded (`arch::decode`) to learn what it does, then carried out
//! here against the chipset: loads and stores, the ALU group with RFLAGS
//! (`arch::alu`), XCHG, CMPXCHG, the bit tests, PUSH/POP of memory and the
//! string moves. Reads nobody claims return all-ones and writes nobody claims
//! are dropped (both counted by the bus).
//!
//! Each memory operand is accessed once per element, at its size: a
//! read-modify-write is one read and then one write (LOCK changes nothing on
//! an emulated bus: no other vCPU runs the device model meanwhile).
//!
//! An instruction Basalt does not emulate, or bytes the CPU would refuse,
//! raise #UD in the guest, as a CPU does for an instruction it does not know;
//! executing from device memory stops the VM. The fetch, the stack of
//! PUSH/POP and the operands of MOVS/STOS/LODS follow the guest's page tables
//! with its CPU's rules: what it could not access is the guest's #PF.
//!
//! A completed instruction, or REP iteration, gets the #DB its single step
//! and data breakpoints raise (`debug`), from the accesses it made: the device
//! operand by its guest-physical address, the string and stack operands by
//! their linear ones. With RFLAGS.TF set a REP string goes one element per
//! exit; a breakpoint hit ends the exit's elements after the one that hit.

use crate::debug::{self, Touched, Watch};
use crate::exit::SegmentRegister;
use crate::io::{act_on, effective_base, MAX_REP_PER_EXIT};
use crate::vcpu::RFLAGS_DF;
use crate::{access_rights, translation_failed, Host, Machine, Outcome, Stop, Vcpu, GP, UD};
use arch::alu::{self, sign_extend};
use arch::debug::Touch;
use arch::decode::{self, CodeSize, DecodeError, MmioInstruction, Operand, Operation, Register, StringOp};
use arch::paging::{self, AccessKind, Pieces, WalkError};
use devices::bus::all_ones;
use devices::layout::LAPIC_BASE;
use devices::Request;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RSP: u8 = 4;
const RSI: u8 = 6;
const RDI: u8 = 7;

pub fn handle(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, address: u64, fetch: bool) -> Outcome {
    if fetch {
        return unsupported(alloc::format!(
            "instruction fetch from unmapped guest-physical {address:#x} (RIP {:#x})",
            vcpu.rip()
        ));
    }
    emulate(vcpu, vm, host, address)
}

/// APIC-register virtualisation wrote `value` to the register at `offset` in
/// the virtual-APIC page and moved past the instruction: the model acts on it.
pub fn apic_write(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, offset: u32, value: u32) -> Outcome {
    let address = LAPIC_BASE + (offset & 0xff0) as u64;
    match vm.chipset.mmio_write(vcpu.index(), address, 4, value as u64, host.now(), &mut *vm.memory) {
        Some(request) => act_on(request),
        None => Outcome::Resume,
    }
}

/// Emulates the instruction at RIP, which accesses device memory at `address`
/// and has not executed: fetch, decode, do the accesses, step RIP.
pub fn emulate(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, address: u64) -> Outcome {
    let rip = vcpu.rip();
    let fetched = match fetch_instruction(vcpu, vm) {
        Ok(f) if f.len > 0 => f,
        Ok(_) => {
            return unsupported(alloc::format!(
                "cannot fetch the instruction at RIP {rip:#x} that accessed {address:#x}"
            ))
        }
        Err(e) => return translation_failed(vcpu, e),
    };
    let decoded = match (decode_fetched(vcpu, &fetched), fetched.beyond) {
        (Ok(d), _) => d,
        // The instruction runs on into a page the guest's CPU cannot fetch from.
        (Err(DecodeError::Truncated), Some(e)) => return translation_failed(vcpu, e),
        // Fifteen bytes and no end: the CPU refuses an instruction that long
        // with #GP (another vCPU may have rewritten the one that exited).
        (Err(DecodeError::Truncated), None) if fetched.len == fetched.bytes.len() => {
            vcpu.inject_exception(GP, Some(0));
            return Outcome::Resume;
        }
        // It runs on past RAM, into memory the CPU would have to execute
        // from device memory: Basalt does not, as for a fetch exit.
        (Err(DecodeError::Truncated), None) => {
            return unsupported(alloc::format!(
                "the instruction at RIP {rip:#x} that accessed {address:#x} runs on beyond RAM"
            ))
        }
        // An instruction Basalt does not emulate, or bytes the CPU refuses
        // (LOCK MOV, C6/C7 /1-/7, or a register form where the exit says
        // memory: another vCPU rewrote them). The guest gets the #UD its CPU
        // raises for an instruction it does not know; that ends only this
        // instruction, where a stop would end the VM.
        (Err(e), _) => {
            log::debug!(
                "vm {}: #UD for the instruction at RIP {rip:#x} that accessed {address:#x}: {e:?} ({:02x?})",
                vm.name,
                &fetched.bytes[..fetched.len]
            );
            vcpu.inject_exception(UD, None);
            return Outcome::Resume;
        }
    };
    let watch = Watch::of(vcpu);
    let step =
        Emulation { index: vcpu.index(), now: host.now(), address, size: decoded.size, watch }.run(vcpu, vm, decoded);
    for (slot, device, why) in vm.chipset.take_broken() {
        log::warn!("vm {}: {device} in virtio slot {slot} is broken until the guest resets it: {why}", vm.name);
    }
    let request = match step {
        // Neither vendor reports a usable length for these exits: step RIP by
        // the decoder's.
        Step::Done(request, conditions) => {
            vcpu.set_rip(rip.wrapping_add(decoded.length as u64));
            debug::completed(vcpu, conditions);
            request
        }
        // A REP string stopped early runs again for the rest; RSI/RDI/RCX say
        // where it is.
        Step::Partial(request, conditions) => {
            debug::unfinished(vcpu, conditions);
            request
        }
        Step::Ended(outcome) => return outcome,
    };
    match request {
        Some(r) => act_on(r),
        None => Outcome::Resume,
    }
}

/// How far an emulated instruction got, with the DR6 conditions of the #DB
/// after it (`Watch::conditions`, 0 for none).
enum Step {
    /// It completed (a device may have asked for something on the way).
    Done(Option<Request>, u64),
    /// A REP string stopped before its end: at the per-exit bound, after an
    /// element a device asked for something on, or one that traps.
    Partial(Option<Request>, u64),
    /// It did not complete: an exception is injected (RIP stays on it) or the
    /// VM stops.
    Ended(Outcome),
}

/// Where one memory operand of a string or stack access is.
enum Place {
    /// Guest RAM, in one or two physical pieces.
    Ram(Pieces),
    /// Device memory at this guest-physical address.
    Device(u64),
}

/// One MMIO exit's instruction being carried out.
struct Emulation {
    index: usize,
    now: u64,
    /// The exit's guest-physical address: the memory operand's (for a bit
    /// test with a register offset, the one the offset selected).
    address: u64,
    /// Bytes of each access.
    size: u8,
    /// The guest's single step and breakpoints.
    watch: Watch,
}

impl Emulation {
    fn read(&self, vm: &mut Machine, address: u64) -> u64 {
        vm.chipset.mmio_read(self.index, address, self.size, self.now) & all_ones(self.size)
    }

    fn write(&self, vm: &mut Machine, address: u64, value: u64) -> Option<Request> {
        let value = value & all_ones(self.size);
        vm.chipset.mmio_write(self.index, address, self.size, value, self.now, &mut *vm.memory)
    }

    /// An access of `self.size` bytes at `address`.
    fn touch(&self, address: u64, write: bool) -> Touch {
        if write {
            Touch::Write { address, len: self.size }
        } else {
            Touch::Read { address, len: self.size }
        }
    }

    fn run(&self, vcpu: &mut dyn Vcpu, vm: &mut Machine, decoded: MmioInstruction) -> Step {
        let size = self.size;
        let at = self.address;
        let value = |vcpu: &dyn Vcpu, operand: Operand| match operand {
            Operand::Register(r) => register(vcpu, r),
            Operand::Immediate(v) => v,
        };
        let request = match decoded.operation {
            Operation::Load { dest, width, sign_extend: extend } => {
                let loaded = self.read(vm, at);
                let loaded = if extend { sign_extend(loaded, size) } else { loaded };
                set_register(vcpu, dest, loaded, width);
                None
            }
            Operation::Store { source } => self.write(vm, at, value(vcpu, source)),
            Operation::Alu { op, source } => {
                let source = source.map_or(0, |s| value(vcpu, s));
                let old = self.read(vm, at);
                let (result, rflags) = alu::alu(op, size, old, source, vcpu.rflags());
                let request = if op.writes_result() { self.write(vm, at, result) } else { None };
                vcpu.set_rflags(rflags);
                request
            }
            Operation::AluToRegister { op, dest } => {
                let loaded = self.read(vm, at);
                let (result, rflags) = alu::alu(op, size, register(vcpu, dest), loaded, vcpu.rflags());
                if op.writes_result() {
                    set_register(vcpu, dest, result, size);
                }
                vcpu.set_rflags(rflags);
                None
            }
            // A read, then the register's value written: the CPU's locked
            // read and write, in that order.
            Operation::Xchg { register: r } => {
                let stored = register(vcpu, r);
                let loaded = self.read(vm, at);
                let request = self.write(vm, at, stored);
                set_register(vcpu, r, loaded, size);
                request
            }
            Operation::Cmpxchg { source } => {
                let (accumulator, source) = (vcpu.gpr(RAX), register(vcpu, source));
                let loaded = self.read(vm, at);
                let result = alu::cmpxchg(size, loaded, accumulator, source, vcpu.rflags());
                // Written back whether or not it matched, as the CPU's bus sees it.
                let request = self.write(vm, at, result.memory);
                if let Some(loaded) = result.accumulator {
                    set_register(vcpu, Register { index: RAX, high_byte: false }, loaded, size);
                }
                vcpu.set_rflags(result.rflags);
                request
            }
            Operation::BitTest { op, offset } => {
                let offset = match offset {
                    Operand::Register(r) => vcpu.gpr(r.index),
                    Operand::Immediate(v) => v,
                };
                let old = self.read(vm, at);
                let (new, rflags) = alu::bit_test(op, size, old, offset, vcpu.rflags());
                let request = if op.writes_result() { self.write(vm, at, new) } else { None };
                vcpu.set_rflags(rflags);
                request
            }
            Operation::Push | Operation::Pop => return self.stack(vcpu, vm, decoded.operation),
            Operation::String { op, rep, address_bytes, segment } => {
                let source = SegmentRegister::from_encoding(segment).unwrap_or(SegmentRegister::Ds);
                return self.string(vcpu, vm, op, rep, address_bytes, source);
            }
        };
        // Whether the device operand was written (CMP, TEST and BT only read).
        let writes = match decoded.operation {
            Operation::Load { .. } | Operation::AluToRegister { .. } => false,
            Operation::Alu { op, .. } => op.writes_result(),
            Operation::BitTest { op, .. } => op.writes_result(),
            _ => true,
        };
        let touched = Touched::NONE.and_device(self.touch(at, writes));
        Step::Done(request, self.watch.conditions(&*vm.memory, &touched))
    }

    /// PUSH m and POP m: the memory operand is the exit's, the stack is at
    /// SS:RSP in the guest's RAM. The stack is translated, with the rights of
    /// the access, before the device is touched, so a #PF on it has no side
    /// effect on the device. A stack in device memory is #UD: the exit's
    /// address would then be the stack's, and the memory operand's is not
    /// known without computing its effective address.
    fn stack(&self, vcpu: &mut dyn Vcpu, vm: &mut Machine, operation: Operation) -> Step {
        // The stack's address size is SS.B outside 64-bit mode, which the
        // vCPU interface does not give; it is taken as the code's (they agree
        // in every flat set-up, and in real mode both are 16-bit).
        let width = match vcpu.code_size() {
            CodeSize::Bits16 => 0xffff,
            CodeSize::Bits32 => 0xffff_ffff,
            CodeSize::Bits64 => u64::MAX,
        };
        let size = u64::from(self.size);
        let rsp = vcpu.gpr(RSP);
        let push = operation == Operation::Push;
        let top = if push { rsp.wrapping_sub(size) } else { rsp };
        let linear = effective_base(vcpu, SegmentRegister::Ss).wrapping_add(top & width);
        let kind = if push { AccessKind::Write } else { AccessKind::Read };
        let pieces = match locate(vcpu, vm, linear, self.size, kind) {
            Ok(Place::Ram(pieces)) => pieces,
            Ok(Place::Device(_)) => return undefined(vcpu),
            Err(step) => return step,
        };
        let mut bytes = [0u8; 8];
        let n = self.size as usize;
        let request = if push {
            let value = self.read(vm, self.address);
            bytes[..n].copy_from_slice(&value.to_le_bytes()[..n]);
            copy_to_ram(vm, &pieces, &bytes[..n]);
            vcpu.set_gpr(RSP, with_address(rsp, top, width));
            None
        } else {
            copy_from_ram(vm, &pieces, &mut bytes[..n]);
            let request = self.write(vm, self.address, u64::from_le_bytes(bytes));
            vcpu.set_gpr(RSP, with_address(rsp, rsp.wrapping_add(size), width));
            request
        };
        // PUSH reads the device and writes the stack; POP the other way.
        let touched = Touched::NONE.and(self.touch(linear, push)).and_device(self.touch(self.address, !push));
        Step::Done(request, self.watch.conditions(&*vm.memory, &touched))
    }

    /// MOVS, STOS, LODS, with or without REP: element by element, each
    /// operand in RAM or device memory as the guest's page tables say (one
    /// side of a MOVS may be either), at most `MAX_REP_PER_EXIT` elements per
    /// exit. RSI, RDI and RCX move per element as the CPU moves them (DF
    /// says which way); a fault leaves them at the faulting element.
    fn string(
        &self,
        vcpu: &mut dyn Vcpu,
        vm: &mut Machine,
        op: StringOp,
        rep: bool,
        address_bytes: u8,
        source_segment: SegmentRegister,
    ) -> Step {
        let width: u64 = match address_bytes {
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        };
        let size = u64::from(self.size);
        let step = if vcpu.rflags() & RFLAGS_DF != 0 { size.wrapping_neg() } else { size };
        let source_base = effective_base(vcpu, source_segment);
        let destination_base = effective_base(vcpu, SegmentRegister::Es);
        let mut count = if rep { vcpu.gpr(RCX) & width } else { 1 };
        let mut done = 0;
        // Single-stepped, the string traps after each element.
        let limit = if self.watch.single_step() { 1 } else { MAX_REP_PER_EXIT };
        // A REP string with RCX = 0 completes at once, and still traps.
        let mut conditions = self.watch.conditions(&*vm.memory, &Touched::NONE);
        while count > 0 && done < limit {
            let (rsi, rdi) = (vcpu.gpr(RSI), vcpu.gpr(RDI));
            let (source_linear, destination_linear) =
                (source_base.wrapping_add(rsi & width), destination_base.wrapping_add(rdi & width));
            // Both operands are translated before either is accessed: a fault
            // on the destination must not follow a device read.
            let source = match op {
                StringOp::Movs | StringOp::Lods => match locate(vcpu, vm, source_linear, self.size, AccessKind::Read) {
                    Ok(place) => Some(place),
                    Err(step) => return step,
                },
                StringOp::Stos => None,
            };
            let destination = match op {
                StringOp::Movs | StringOp::Stos => {
                    match locate(vcpu, vm, destination_linear, self.size, AccessKind::Write) {
                        Ok(place) => Some(place),
                        Err(step) => return step,
                    }
                }
                StringOp::Lods => None,
            };
            // Both operands by their linear addresses, device or RAM.
            let mut touched = Touched::NONE;
            if source.is_some() {
                touched = touched.and(self.touch(source_linear, false));
            }
            if destination.is_some() {
                touched = touched.and(self.touch(destination_linear, true));
            }
            let value = match source {
                Some(Place::Device(physical)) => self.read(vm, physical),
                Some(Place::Ram(pieces)) => {
                    let mut bytes = [0u8; 8];
                    copy_from_ram(vm, &pieces, &mut bytes[..self.size as usize]);
                    u64::from_le_bytes(bytes)
                }
                None => vcpu.gpr(RAX) & all_ones(self.size),
            };
            let request = match destination {
                Some(Place::Device(physical)) => self.write(vm, physical, value),
                Some(Place::Ram(pieces)) => {
                    copy_to_ram(vm, &pieces, &value.to_le_bytes()[..self.size as usize]);
                    None
                }
                None => {
                    set_register(vcpu, Register { index: RAX, high_byte: false }, value, self.size);
                    None
                }
            };
            if source.is_some() {
                vcpu.set_gpr(RSI, with_address(rsi, rsi.wrapping_add(step), width));
            }
            if destination.is_some() {
                vcpu.set_gpr(RDI, with_address(rdi, rdi.wrapping_add(step), width));
            }
            count -= 1;
            done += 1;
            if rep {
                let rcx = vcpu.gpr(RCX);
                vcpu.set_gpr(RCX, with_address(rcx, count, width));
            }
            conditions = self.watch.conditions(&*vm.memory, &touched);
            // A device's request ends this exit after its element, and so does
            // a #DB the element raises; a REP string goes on when the guest
            // runs it again.
            if request.is_some() || conditions != 0 {
                return if count == 0 { Step::Done(request, conditions) } else { Step::Partial(request, conditions) };
            }
        }
        if count == 0 {
            Step::Done(None, conditions)
        } else {
            Step::Partial(None, conditions)
        }
    }
}

/// Where the `size` bytes at `linear` are, with the rights of a `kind`
/// access at the guest's privilege level. A translation fault is the guest's
/// (#PF, #GP); an operand that is split across two pages and is not all RAM
/// is #UD (a device access split in two is not one Basalt makes).
fn locate(vcpu: &mut dyn Vcpu, vm: &Machine, linear: u64, size: u8, kind: AccessKind) -> Result<Place, Step> {
    let rights = access_rights(vcpu, kind);
    let pieces = match paging::translate_range(&*vm.memory, &vcpu.paging(), rights, linear, size as usize) {
        Ok(pieces) => pieces,
        Err(e) => return Err(Step::Ended(translation_failed(vcpu, e))),
    };
    let mut scratch = [0u8; 8];
    let in_ram = pieces.as_slice().iter().all(|p| vm.memory.read(p.physical, &mut scratch[..p.len]).is_ok());
    match pieces.as_slice() {
        _ if in_ram => Ok(Place::Ram(pieces)),
        [one] => Ok(Place::Device(one.physical)),
        _ => Err(undefined(vcpu)),
    }
}

fn undefined(vcpu: &mut dyn Vcpu) -> Step {
    vcpu.inject_exception(UD, None);
    Step::Ended(Outcome::Resume)
}

/// Copies RAM the caller found to be RAM (`locate`) into `bytes`.
fn copy_from_ram(vm: &Machine, pieces: &Pieces, bytes: &mut [u8]) {
    let mut at = 0;
    for p in pieces.as_slice() {
        // RAM: checked by `locate` in this exit.
        let _ = vm.memory.read(p.physical, &mut bytes[at..at + p.len]);
        at += p.len;
    }
}

fn copy_to_ram(vm: &mut Machine, pieces: &Pieces, bytes: &[u8]) {
    let mut at = 0;
    for p in pieces.as_slice() {
        // RAM: checked by `locate` in this exit.
        let _ = vm.memory.write(p.physical, &bytes[at..at + p.len]);
        at += p.len;
    }
}

/// A register's value as an operand: AH..BH are bits 15:8.
fn register(vcpu: &dyn Vcpu, r: Register) -> u64 {
    let value = vcpu.gpr(r.index);
    if r.high_byte {
        value >> 8
    } else {
        value
    }
}

/// Writes `value` to a register `width` bytes wide, as the CPU writes one.
fn set_register(vcpu: &mut dyn Vcpu, r: Register, value: u64, width: u8) {
    let old = vcpu.gpr(r.index);
    vcpu.set_gpr(r.index, decode::merge_register(old, value, width, r.high_byte));
}

/// `old` with an address-size result written to it as the CPU writes RSI, RDI,
/// RCX and RSP: a 16-bit one keeps bits 63:16, a 32-bit one zero-extends, a
/// 64-bit one replaces.
fn with_address(old: u64, value: u64, width: u64) -> u64 {
    if width == 0xffff {
        (old & !0xffff) | (value & 0xffff)
    } else {
        value & width
    }
}

fn unsupported(what: alloc::string::String) -> Outcome {
    Outcome::Stop(Stop::Unsupported(what))
}

/// How many decoded MMIO instructions a vCPU remembers: a driver's accessors
/// cycle through a few (Linux's IOAPIC code: the index write of a read, and
/// the index and data writes of a write, since the data reads no longer
/// exit), and a memo shorter than the cycle never hits.
const DECODED: usize = 4;

/// A vCPU's last MMIO instructions: the translation of their code page and
/// the last `DECODED` as decoded. A driver's register accessors exit from the
/// same few instructions again and again, from one page; both are used again only
/// when they are exactly what a fresh walk and decode would give (the page's
/// table entries unchanged, the same bytes in the same mode), so the memo
/// changes nothing a guest can see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchMemo {
    translation: Option<paging::Remembered>,
    decoded: [Option<Decoded>; DECODED],
    /// Which of `decoded` the next new instruction replaces.
    next: usize,
}

/// An instruction as `decode` gave it, with its own bytes (little-endian,
/// the rest zero) and the mode it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decoded {
    bytes: u128,
    mode: CodeSize,
    instruction: MmioInstruction,
}

/// The first `length` of the fetched bytes as a number (`Decoded::bytes`).
fn leading_bytes(fetched: &Fetched, length: usize) -> u128 {
    let mut bytes = [0u8; 16];
    bytes[..15].copy_from_slice(&fetched.bytes);
    let all = u128::from_le_bytes(bytes);
    match length {
        0..=15 => all & ((1u128 << (8 * length)) - 1),
        _ => all,
    }
}

impl FetchMemo {
    /// The decoded instruction at the start of `fetched`, if it is one
    /// remembered: decoding reads only the instruction's own bytes.
    fn decoded(&self, fetched: &Fetched, mode: CodeSize) -> Option<MmioInstruction> {
        self.decoded.iter().flatten().find_map(|d| {
            let length = usize::from(d.instruction.length);
            let same = d.mode == mode && fetched.len >= length && leading_bytes(fetched, length) == d.bytes;
            same.then_some(d.instruction)
        })
    }

    fn remember(&mut self, fetched: &Fetched, mode: CodeSize, instruction: MmioInstruction) {
        let bytes = leading_bytes(fetched, usize::from(instruction.length));
        self.decoded[self.next] = Some(Decoded { bytes, mode, instruction });
        self.next = (self.next + 1) % DECODED;
    }
}

/// `decode` of the fetched bytes, through the vCPU's memo when it has one.
fn decode_fetched(vcpu: &mut dyn Vcpu, fetched: &Fetched) -> Result<MmioInstruction, DecodeError> {
    let mode = vcpu.code_size();
    if let Some(instruction) = vcpu.fetch_memo().and_then(|memo| memo.decoded(fetched, mode)) {
        return Ok(instruction);
    }
    let instruction = decode::decode(&fetched.bytes[..fetched.len], mode)?;
    if let Some(memo) = vcpu.fetch_memo() {
        memo.remember(fetched, mode, instruction);
    }
    Ok(instruction)
}

/// The bytes at CS:RIP, fetched as the guest's CPU would fetch them.
pub struct Fetched {
    pub bytes: [u8; 15],
    /// How many of `bytes` were read: fewer than 15 at the end of guest RAM or
    /// before a page the guest cannot execute from.
    pub len: usize,
    /// Why the bytes after `len` could not be fetched, when the guest's CPU
    /// would fault there: only if the instruction turns out to need them.
    pub beyond: Option<WalkError>,
}

/// An execute access at the guest's privilege level. A failure on the first
/// byte means the guest's tables no longer map the instruction that just ran
/// (another vCPU changed them): the caller raises what the CPU would.
pub fn fetch_instruction(vcpu: &mut dyn Vcpu, vm: &Machine) -> Result<Fetched, WalkError> {
    const MAX: usize = 15;
    let linear = crate::io::effective_base(vcpu, crate::SegmentRegister::Cs).wrapping_add(vcpu.rip());
    let in_first_page = (0x1000 - (linear & 0xfff) as usize).min(MAX);
    let paging = vcpu.paging();
    let rights = access_rights(vcpu, AccessKind::Execute);
    let memory = &*vm.memory;
    // Within one page (nearly always), through the vCPU's remembered translation.
    if in_first_page == MAX {
        if let Some(memo) = vcpu.fetch_memo() {
            let physical = paging::translate_remembered(memory, &paging, rights, linear, &mut memo.translation)?;
            let mut fetched = Fetched { bytes: [0; MAX], len: 0, beyond: None };
            // Not RAM: nothing fetched (the caller says it cannot emulate).
            if memory.read(physical, &mut fetched.bytes).is_ok() {
                fetched.len = MAX;
            }
            return Ok(fetched);
        }
    }
    let (pieces, beyond) = match paging::translate_range(memory, &paging, rights, linear, MAX) {
        Ok(pieces) => (pieces, None),
        // The instruction may end before the page that failed.
        Err(e) => (paging::translate_range(memory, &paging, rights, linear, in_first_page)?, Some(e)),
    };
    let mut fetched = Fetched { bytes: [0; MAX], len: 0, beyond };
    for piece in pieces.as_slice() {
        let to = &mut fetched.bytes[fetched.len..fetched.len + piece.len];
        if memory.read(piece.physical, to).is_err() {
            // Not RAM: what is there is not fetched (below, "cannot emulate").
            fetched.beyond = None;
            break;
        }
        fetched.len += piece.len;
    }
    Ok(fetched)
}

#[cfg(test)]
mod memo_tests {
    use super::*;

    fn fetched(code: &[u8]) -> Fetched {
        let mut bytes = [0x90; 15];
        bytes[..code.len()].copy_from_slice(code);
        Fetched { bytes, len: 15, beyond: None }
    }

    #[test]
    fn a_cycle_of_three_accessors_is_decoded_once_each() {
        // Linux's IOAPIC accesses: the index write (read and write paths
        // have their own) and the data write.
        let code: [&[u8]; 3] = [&[0x89, 0x0a], &[0x89, 0x3a], &[0x89, 0x72, 0x10]];
        let mut memo = FetchMemo::default();
        for c in code {
            let instruction = decode::decode(&fetched(c).bytes, CodeSize::Bits64).unwrap();
            assert_eq!(memo.decoded(&fetched(c), CodeSize::Bits64), None);
            memo.remember(&fetched(c), CodeSize::Bits64, instruction);
        }
        for round in 0..3 {
            for c in code {
                let fresh = decode::decode(&fetched(c).bytes, CodeSize::Bits64).unwrap();
                assert_eq!(memo.decoded(&fetched(c), CodeSize::Bits64), Some(fresh), "round {round}");
            }
        }
        // The same bytes in another mode are another instruction.
        assert_eq!(memo.decoded(&fetched(code[0]), CodeSize::Bits32), None);
    }
}
