//! I/O instructions, all of which exit (unconditional I/O exiting): IN/OUT go to
//! the VM's chipset; INS/OUTS (with or without REP) move data between the port
//! and guest memory, following the guest's segments and page tables with the
//! access rights its CPU enforces (a denied element is the guest's #PF).

use super::{skip_instruction, translation_failed, Outcome};
use crate::time;
use crate::vmm::guest_paging;
use crate::vmm::vcpu::{read, Vcpu};
use crate::vmm::vm::{Stop, Vm};
use arch::paging::AccessKind;
use devices::Request;
use vmx::exit::IoQualification;
use vmx::vmcs;

/// At most this many REP iterations per exit, so a long string does not hold
/// the CPU; the instruction simply runs again for the rest.
const MAX_REP_PER_EXIT: u64 = 4096;
const RFLAGS_DF: u64 = 1 << 10;

pub fn handle(vm: &mut Vm, vcpu: &mut Vcpu) -> Outcome {
    let q = IoQualification::decode(read(vmcs::EXIT_QUALIFICATION));
    let mask = match q.size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    if q.is_string {
        return string(vm, vcpu, q, mask);
    }
    if q.is_in {
        let value = vm.chipset.port_read(q.port, q.size, time::rdtsc()) as u64 & mask;
        // A 32-bit IN zero-extends into RAX; 8/16-bit ones keep the upper bits.
        vcpu.regs.rax = if q.size == 4 { value } else { (vcpu.regs.rax & !mask) | value };
    } else if let Some(request) = vm.chipset.port_write(q.port, q.size, (vcpu.regs.rax & mask) as u32, time::rdtsc()) {
        skip_instruction();
        return act_on(request, vm, vcpu);
    }
    skip_instruction();
    Outcome::Resume
}

/// What a device asked for, once the instruction that asked is done.
pub fn act_on(request: Request, vm: &Vm, vcpu: &Vcpu) -> Outcome {
    match request {
        Request::Stop { status } => Outcome::Stop(Stop::ExitDevice { status }),
        Request::PowerOff => Outcome::Stop(Stop::PowerOff),
        Request::Reset => Outcome::Stop(Stop::Reset),
        Request::Marker { value } => {
            // The bench reads this line: guest time since the VM was built and
            // this vCPU's exits so far.
            let micros = time::tsc_to_micros(time::rdtsc().saturating_sub(vm.started));
            let c = &vcpu.counters;
            log::info!(
                "vm {} marker {value} on vcpu{} at {micros} us: {} exits;{}",
                vm.name,
                vcpu.index,
                c.total(),
                c.summary()
            );
            Outcome::Resume
        }
    }
}

fn string(vm: &mut Vm, vcpu: &mut Vcpu, q: IoQualification, mask: u64) -> Outcome {
    // Instruction information: address size in bits 9:7, segment in 17:15 (OUTS).
    let info = read(vmcs::EXIT_INSTRUCTION_INFO);
    let address_mask: u64 = match (info >> 7) & 7 {
        0 => 0xffff,
        1 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let segment_base = if q.is_in {
        read(vmcs::GUEST_ES_BASE)
    } else {
        let bases = [
            vmcs::GUEST_ES_BASE,
            vmcs::GUEST_CS_BASE,
            vmcs::GUEST_SS_BASE,
            vmcs::GUEST_DS_BASE,
            vmcs::GUEST_FS_BASE,
            vmcs::GUEST_GS_BASE,
        ];
        read(bases[((info >> 15) & 7).min(5) as usize])
    };
    let step = if read(vmcs::GUEST_RFLAGS) & RFLAGS_DF != 0 { (q.size as u64).wrapping_neg() } else { q.size as u64 };
    let mut count = if q.has_rep { vcpu.regs.rcx & address_mask } else { 1 };
    let mut done = 0;
    let n = q.size as usize;
    // INS stores to memory, OUTS loads from it.
    let translation = guest_paging::Translation::current(if q.is_in { AccessKind::Write } else { AccessKind::Read });
    while count > 0 && done < MAX_REP_PER_EXIT {
        let index = if q.is_in { vcpu.regs.rdi } else { vcpu.regs.rsi };
        let linear = segment_base.wrapping_add(index & address_mask);
        // Every byte of the element is checked before the port is touched; a
        // fault leaves RSI/RDI/RCX at this element and the instruction
        // unfinished, so the guest's handler can fix the page and resume it.
        let pieces = match translation.range(&vm.memory, linear, n) {
            Ok(pieces) => pieces,
            Err(e) => return translation_failed(vcpu, e),
        };
        // Reading the element first (OUTS's data; for INS only a check) makes
        // memory that is not RAM stop the VM before the port is touched.
        let mut bytes = [0u8; 4];
        let mut at = 0;
        for p in pieces.as_slice() {
            if vm.memory.read(p.physical, &mut bytes[at..at + p.len]).is_err() {
                let (verb, direction) = if q.is_in { ("INS", "to") } else { ("OUTS", "from") };
                return Outcome::Stop(Stop::Unsupported(alloc::format!(
                    "{verb} {direction} non-RAM address {:#x}",
                    p.physical
                )));
            }
            at += p.len;
        }
        let mut request = None;
        if q.is_in {
            let value = vm.chipset.port_read(q.port, q.size, time::rdtsc()) as u64 & mask;
            bytes[..n].copy_from_slice(&value.to_le_bytes()[..n]);
            let mut from = 0;
            for p in pieces.as_slice() {
                // RAM: read above.
                let _ = vm.memory.write(p.physical, &bytes[from..from + p.len]);
                from += p.len;
            }
        } else {
            request = vm.chipset.port_write(q.port, q.size, u32::from_le_bytes(bytes), time::rdtsc());
        }
        let next = (index & !address_mask) | (index.wrapping_add(step) & address_mask);
        if q.is_in {
            vcpu.regs.rdi = next;
        } else {
            vcpu.regs.rsi = next;
        }
        count -= 1;
        done += 1;
        if q.has_rep {
            vcpu.regs.rcx = (vcpu.regs.rcx & !address_mask) | count;
        }
        if let Some(request) = request {
            skip_instruction();
            return act_on(request, vm, vcpu);
        }
    }
    if count == 0 {
        skip_instruction();
    }
    Outcome::Resume
}
