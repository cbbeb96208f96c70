//! Port I/O: IN/OUT go to the VM's chipset; INS/OUTS (with or without REP)
//! move data between the port and guest memory, following the guest's
//! segments and page tables with the access rights its CPU enforces (a denied
//! element is the guest's #PF). Each completed instruction, or REP iteration,
//! gets the #DB its single step and breakpoints raise (`debug`): with
//! RFLAGS.TF set a REP string goes one element per exit, as the CPU traps
//! after each iteration, and a breakpoint hit ends the exit's elements there.

use crate::debug::{self, Touched, Watch};
use crate::exit::{PortIo, SegmentRegister, StringIo};
use crate::vcpu::RFLAGS_DF;
use crate::{access_rights, translation_failed, Host, Machine, Outcome, Stop, Vcpu};
use arch::debug::Touch;
use arch::paging::{self, AccessKind};
use devices::{Chipset, Request};

/// At most this many REP iterations per exit, so a long string does not hold
/// the CPU; the instruction simply runs again for the rest.
pub const MAX_REP_PER_EXIT: u64 = 4096;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RSI: u8 = 6;
const RDI: u8 = 7;

pub fn handle(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host, access: PortIo) -> Outcome {
    let size = match access.size {
        1 | 2 | 4 => access.size,
        other => return Outcome::Stop(Stop::Unsupported(alloc::format!("port access of {other} bytes"))),
    };
    let mask = devices::bus::all_ones(size);
    if let Some(string) = access.string {
        return self::string(vcpu, vm, host, access, string, mask);
    }
    let request = in_or_out(vcpu, vm.chipset, host, access.port, size, access.is_in);
    vcpu.skip_instruction();
    let touched = Touched::NONE.and(Touch::Port { port: access.port, len: size });
    let conditions = Watch::of(vcpu).conditions(&*vm.memory, &touched);
    debug::completed(vcpu, conditions);
    request.map_or(Outcome::Resume, act_on)
}

/// The enable bits of DR7's four breakpoints (L0-L3, G0-G3).
const DR7_ENABLES: u64 = 0xff;

/// The run loop's fast path for port I/O (with the VM locked): a plain IN
/// or OUT of 1, 2 or 4 bytes, with RFLAGS.TF clear and no breakpoint enabled
/// in DR7 (so it owes no #DB), done as `dispatch` does it: the access, the
/// instruction skipped, RF cleared, and the outcome of any device request.
/// None, having done nothing, for anything else (string I/O, a single
/// step, a breakpoint, an instruction whose length is unknown): that goes
/// through `dispatch`.
pub fn fast_port_io(vcpu: &mut dyn Vcpu, chipset: &Chipset, host: &dyn Host, access: PortIo) -> Option<Outcome> {
    let rflags = vcpu.rflags();
    if access.string.is_some()
        || !matches!(access.size, 1 | 2 | 4)
        || rflags & crate::vcpu::RFLAGS_TF != 0
        || vcpu.instruction_length_unknown()
        || vcpu.debug_registers().dr7 & DR7_ENABLES != 0
    {
        return None;
    }
    let request = in_or_out(vcpu, chipset, host, access.port, access.size, access.is_in);
    debug::skip_untraced(vcpu, rflags);
    Some(request.map_or(Outcome::Resume, act_on))
}

/// A plain IN (into RAX) or OUT (from RAX) of `size` bytes (1, 2 or 4) at
/// `port`; what the device asked for.
fn in_or_out(
    vcpu: &mut dyn Vcpu,
    chipset: &Chipset,
    host: &dyn Host,
    port: u16,
    size: u8,
    is_in: bool,
) -> Option<Request> {
    let mask = devices::bus::all_ones(size);
    let rax = vcpu.gpr(RAX);
    if is_in {
        let value = chipset.port_read(port, size, host.now()) as u64 & mask;
        // A 32-bit IN zero-extends into RAX; 8/16-bit ones keep the upper bits.
        vcpu.set_gpr(RAX, if size == 4 { value } else { (rax & !mask) | value });
        None
    } else {
        chipset.port_write(port, size, (rax & mask) as u32, host.now())
    }
}

/// What a device asked for, once the instruction that asked is done.
pub fn act_on(request: Request) -> Outcome {
    match request {
        Request::Stop { status } => Outcome::Stop(Stop::ExitDevice { status }),
        Request::PowerOff => Outcome::Stop(Stop::PowerOff),
        Request::Reset => Outcome::Stop(Stop::Reset),
        Request::Marker { value } => Outcome::Marker(value),
    }
}

fn string(
    vcpu: &mut dyn Vcpu,
    vm: &mut Machine,
    host: &dyn Host,
    access: PortIo,
    string: StringIo,
    mask: u64,
) -> Outcome {
    let string = if vcpu.reports_string_io_operands() {
        string
    } else {
        match crate::length::decode_at_rip(vcpu, vm, arch::decode::decode_string_io) {
            Ok(operands) => StringIo {
                rep: string.rep,
                address_size: operands.address_bytes,
                segment: SegmentRegister::from_encoding(operands.segment).unwrap_or(SegmentRegister::Ds),
            },
            Err(outcome) => return outcome,
        }
    };
    let address_mask: u64 = match string.address_size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    // INS stores through ES whatever the prefixes; OUTS loads through its segment.
    let segment = if access.is_in { SegmentRegister::Es } else { string.segment };
    let segment_base = effective_base(vcpu, segment);
    let size = access.size as u64;
    let step = if vcpu.rflags() & RFLAGS_DF != 0 { size.wrapping_neg() } else { size };
    let index_register = if access.is_in { RDI } else { RSI };
    let mut count = if string.rep { vcpu.gpr(RCX) & address_mask } else { 1 };
    let mut done = 0;
    let mut request = None;
    let n = access.size as usize;
    // INS stores to memory, OUTS loads from it. The paging state is read once
    // for all the elements of this exit.
    let paging = vcpu.paging();
    let kind = if access.is_in { AccessKind::Write } else { AccessKind::Read };
    let rights = access_rights(vcpu, kind);
    let watch = Watch::of(vcpu);
    // Single-stepped, the string traps after each element.
    let limit = if watch.single_step() { 1 } else { MAX_REP_PER_EXIT };
    // A REP string with RCX = 0 completes at once, and still traps.
    let mut conditions = watch.conditions(&*vm.memory, &Touched::NONE);
    while count > 0 && done < limit {
        let index = vcpu.gpr(index_register);
        let linear = segment_base.wrapping_add(index & address_mask);
        // Every byte of the element is checked before the port is touched; a
        // fault leaves RSI/RDI/RCX at this element and the instruction
        // unfinished, so the guest's handler can fix the page and resume it.
        let pieces = match paging::translate_range(&*vm.memory, &paging, rights, linear, n) {
            Ok(pieces) => pieces,
            Err(e) => return translation_failed(vcpu, e),
        };
        // Reading the element first (OUTS's data; for INS only a check) makes
        // memory that is not RAM stop the VM before the port is touched.
        let mut bytes = [0u8; 4];
        let mut at = 0;
        for p in pieces.as_slice() {
            if vm.memory.read(p.physical, &mut bytes[at..at + p.len]).is_err() {
                let (verb, direction) = if access.is_in { ("INS", "to") } else { ("OUTS", "from") };
                return Outcome::Stop(Stop::Unsupported(alloc::format!(
                    "{verb} {direction} non-RAM address {:#x}",
                    p.physical
                )));
            }
            at += p.len;
        }
        if access.is_in {
            let value = vm.chipset.port_read(access.port, access.size, host.now()) as u64 & mask;
            bytes[..n].copy_from_slice(&value.to_le_bytes()[..n]);
            let mut from = 0;
            for p in pieces.as_slice() {
                // RAM: read above.
                let _ = vm.memory.write(p.physical, &bytes[from..from + p.len]);
                from += p.len;
            }
        } else {
            request = vm.chipset.port_write(access.port, access.size, u32::from_le_bytes(bytes), host.now());
        }
        vcpu.set_gpr(index_register, with_address(index, index.wrapping_add(step), address_mask));
        count -= 1;
        done += 1;
        if string.rep {
            let rcx = vcpu.gpr(RCX);
            vcpu.set_gpr(RCX, with_address(rcx, count, address_mask));
        }
        let memory_touch = if access.is_in {
            Touch::Write { address: linear, len: access.size }
        } else {
            Touch::Read { address: linear, len: access.size }
        };
        let touched = Touched::NONE.and(Touch::Port { port: access.port, len: access.size }).and(memory_touch);
        conditions = watch.conditions(&*vm.memory, &touched);
        // A marker lets the guest run on: the rest of a REP string goes out
        // when it executes the instruction again. A breakpoint the element
        // hit traps after it, as after the CPU's iteration.
        if request.is_some() || conditions != 0 {
            break;
        }
    }
    if count == 0 {
        vcpu.skip_instruction();
        debug::completed(vcpu, conditions);
    } else {
        debug::unfinished(vcpu, conditions);
    }
    request.map_or(Outcome::Resume, act_on)
}

/// `old` with an address-size result written to it as the CPU writes RSI, RDI
/// and RCX: a 16-bit one keeps bits 63:16, a 32-bit one zero-extends (as every
/// 32-bit register write does in 64-bit mode), a 64-bit one replaces.
fn with_address(old: u64, value: u64, address_mask: u64) -> u64 {
    if address_mask == 0xffff {
        (old & !0xffff) | (value & 0xffff)
    } else {
        value & address_mask
    }
}

/// The base the CPU adds for `segment`: in 64-bit code only FS and GS have
/// one (a base CS, DS, ES or SS kept from protected mode counts as 0).
pub(crate) fn effective_base(vcpu: &dyn Vcpu, segment: SegmentRegister) -> u64 {
    match segment {
        SegmentRegister::Fs | SegmentRegister::Gs => vcpu.segment_base(segment),
        _ if vcpu.code_size() == arch::decode::CodeSize::Bits64 => 0,
        _ => vcpu.segment_base(segment),
    }
}
