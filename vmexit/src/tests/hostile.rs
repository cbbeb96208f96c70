//! Hostile inputs: random exits (with the fields a back end decodes, garbage
//! included) on random vCPU states over random guest memory and page tables,
//! on back ends that know each exit's instruction length and on ones that do
//! not (SVM without next-RIP save). Nothing may panic, every outcome must be
//! one its exit can have, and RIP moves only when the instruction completed,
//! by the length the back end or the decoder gave it. A failure names its
//! seed and case, which replay exactly.

use super::*;
use crate::events::deliver_pending;
use crate::exit::{CrAccess, PortIo, SegmentRegister, StringIo};
use crate::fake::Injected;
use crate::vcpu::{RFLAGS_IF, RFLAGS_RF, RFLAGS_TF};
use crate::vmcall::{ENOSYS, EPERM};
use crate::{GuestXstate, Host, Stop, AC, DB, GP, PF, UD};
use arch::control::{cr0, cr4, efer};
use arch::debug::dr6;
use arch::decode::CodeSize;
use basalt_fuzz::{edge_value, Rng};
use devices::lapic::apic_base::{BSP, EN, EXTD};
use devices::layout;

/// RAM of these VMs: small, so that random addresses often land in it.
const HOSTILE_RAM: usize = 0x4_0000;
const HOSTILE_TABLES: u64 = 0x3_0000;
const PROBE_PORT: u16 = 0x510;
const PROBE_MMIO: u64 = 0xd900_0000;

/// A two-vCPU VM with every device a guest can reach, its first 48 pages
/// identity-mapped (tables above them), and random bytes below the tables.
fn hostile_vm(rng: &mut Rng) -> (FakeVm, u64) {
    let mut vm = FakeVm::new(2, HOSTILE_RAM);
    let mut tables = Tables::new(HOSTILE_TABLES);
    for page in 0..48u64 {
        let flags = match rng.below(8) {
            0 => 0,
            1 => PRESENT,
            2 => PRESENT | WRITABLE | NO_EXECUTE,
            3 => PRESENT | USER,
            _ => PRESENT | WRITABLE | USER,
        };
        tables.map(&mut vm.memory, page << 12, page << 12, flags);
    }
    for byte in &mut vm.memory.bytes[..HOSTILE_TABLES as usize] {
        // Mostly the opcodes and ModRMs the MMIO decoder knows, so that
        // emulation gets far; the rest anything.
        *byte = match rng.below(4) {
            0 => rng.pick(&[
                0x89, 0x8b, 0x88, 0x8a, 0xc7, 0xc6, 0x66, 0x48, 0xf0, 0x0f, 0xb6, 0xa1, 0x03, 0x43, 0x01, 0x81, 0xff,
                0x87, 0xb1, 0xa5, 0xf3, 0xab,
            ]),
            _ => rng.next_u64() as u8,
        };
    }
    let chipset = &vm.chipset;
    // Each vCPU's local APIC in one of its modes: the page decodes for some,
    // the x2APIC MSRs work for others, and a disabled one takes nothing.
    for vcpu in 0..2 {
        let bsp = if vcpu == 0 { BSP } else { 0 };
        let steps: &[u64] = match rng.below(4) {
            0 => &[EN | EXTD],
            1 => &[0],
            _ => &[],
        };
        for &bits in steps {
            chipset.set_apic_base(vcpu, layout::LAPIC_BASE | bsp | bits, true, 48).unwrap();
        }
    }
    chipset.ports.lock().register(layout::DEBUG_EXIT, 4, Box::new(devices::DebugExit)).unwrap();
    chipset.ports.lock().register(layout::BENCH_MARKER, 1, Box::new(devices::BenchMarker)).unwrap();
    chipset.ports.lock().register(PROBE_PORT, 4, Probe::new(0x1234_5678).0).unwrap();
    chipset.mmio.lock().register(PROBE_MMIO, 0x1000, Probe::new(0x1122_3344_5566_7788).0).unwrap();
    (vm, tables.cr3)
}

/// A random guest memory address: mostly in RAM, sometimes near its end or
/// anywhere at all.
fn address(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => edge_value(rng, HOSTILE_RAM),
        1 => HOSTILE_RAM as u64 - rng.below(32),
        2 => (rng.below(48) << 12) | 0xff0 | rng.below(16),
        _ => rng.below(HOSTILE_RAM as u64),
    }
}

/// A vCPU in one of the modes a guest can be in (so that the control
/// registers agree with each other), with random registers.
fn hostile_vcpu(rng: &mut Rng, cr3: u64, host: &FakeHost) -> FakeVcpu {
    let allowed_cr4 = host.guest_cr4_allowed();
    let mut vcpu = match rng.below(6) {
        0 => FakeVcpu { cr0: 0, code_size: CodeSize::Bits16, ..FakeVcpu::flat() },
        1 => FakeVcpu::flat(),
        2 => FakeVcpu { cr0: cr0::PE | cr0::PG, cr4: 0, ..FakeVcpu::flat() },
        3 => FakeVcpu { cr0: cr0::PE | cr0::PG, cr4: cr4::PAE, ..FakeVcpu::flat() },
        4 => FakeVcpu::long_mode(),
        _ => FakeVcpu { code_size: CodeSize::Bits32, ..FakeVcpu::long_mode() },
    };
    let long = vcpu.efer & efer::LMA != 0;
    vcpu.cr4 |= rng.next_u64() & allowed_cr4 & !(cr4::LA57 | cr4::PCIDE);
    if rng.chance(2) {
        vcpu.cr0 |= cr0::WP;
    }
    if rng.chance(2) {
        vcpu.efer |= efer::NXE;
    }
    if rng.chance(4) && !long && vcpu.cr0 & cr0::PG == 0 {
        vcpu.efer |= efer::LME; // armed, not active
    }
    vcpu.cr3 = if rng.chance(10) { edge_value(rng, HOSTILE_RAM) & !0xfff } else { cr3 };
    vcpu.index = rng.index(2);
    for gpr in &mut vcpu.gprs {
        *gpr = if rng.chance(2) { address(rng) } else { edge_value(rng, HOSTILE_RAM) };
    }
    vcpu.rip = address(rng);
    vcpu.instruction_length = 1 + rng.below(15);
    vcpu.rflags = 0x2 | (rng.next_u64() & (RFLAGS_IF | crate::vcpu::RFLAGS_DF | 1 << 18 | RFLAGS_RF));
    if rng.chance(4) {
        vcpu.rflags |= RFLAGS_TF;
    }
    // Breakpoints: often on what the exits touch (RAM, the probes, ports),
    // of every kind and length, locally or globally enabled; CR4.DE (I/O
    // breakpoints) comes with the random CR4 above.
    if rng.chance(3) {
        vcpu.dr7 = 0x400 | (rng.next_u64() & 0xffff_00ff) | if rng.chance(8) { arch::debug::dr7::GD } else { 0 };
        for dr in &mut vcpu.dr {
            *dr = match rng.below(4) {
                0 => PROBE_MMIO + rng.below(0x1000),
                1 => u64::from(PROBE_PORT) + rng.below(4),
                2 => edge_value(rng, HOSTILE_RAM),
                _ => address(rng),
            };
        }
        vcpu.dr6 = 0xffff_0ff0 | (rng.next_u64() & 0x600f);
    }
    // The TSC offset (= TSC_ADJUST) anywhere.
    vcpu.tsc_offset = if rng.chance(2) { 0 } else { edge_value(rng, HOSTILE_RAM) };
    vcpu.cpl = if rng.chance(3) { 3 } else { rng.below(3) as u8 };
    for base in &mut vcpu.segment_bases {
        *base = if rng.chance(4) { address(rng) } else { 0 };
    }
    vcpu.xcr0 = rng.pick(&[1, 3, 7]);
    vcpu.interrupt_shadow = rng.chance(8);
    vcpu.nmi_blocked = rng.chance(8);
    vcpu.pending.nmi = rng.chance(8);
    for _ in 0..rng.below(3) {
        vcpu.pending.raise(rng.next_u64() as u8);
    }
    vcpu
}

fn hostile_exit(rng: &mut Rng) -> Exit {
    match rng.below(33) {
        0 => Exit::Cpuid,
        1 => Exit::Hlt,
        2..=7 => {
            let port = match rng.below(4) {
                0 => rng.next_u64() as u16,
                1 => rng.pick(&[layout::DEBUG_EXIT, layout::BENCH_MARKER, layout::RESET_CONTROL, layout::PM1_CONTROL]),
                2 => rng.pick(&[0x20, 0x21, 0x40, 0x43, 0x61, 0x70, 0x71, 0x3f8, 0x3fd, 0xa0, 0x4d0, 0x608]),
                _ => PROBE_PORT + rng.below(4) as u16,
            };
            let size = if rng.chance(20) { rng.next_u64() as u8 } else { rng.pick(&[1, 2, 4]) };
            let string = rng.chance(2).then(|| StringIo {
                rep: rng.chance(2),
                address_size: if rng.chance(20) { rng.next_u64() as u8 } else { rng.pick(&[2, 4, 8]) },
                segment: SegmentRegister::from_encoding(rng.below(6) as u8).unwrap(),
            });
            Exit::Io(PortIo { port, size, is_in: rng.chance(2), string })
        }
        8..=13 => {
            let address = match rng.below(5) {
                0 => layout::LAPIC_BASE + rng.below(0x1000),
                1 => layout::IOAPIC_BASE + rng.below(0x40),
                2 => PROBE_MMIO + rng.below(0x1000),
                3 => layout::VIRTIO_BASE + rng.below(0x8000),
                _ => edge_value(rng, HOSTILE_RAM),
            };
            Exit::DeviceMemory { address, fetch: rng.chance(10) }
        }
        14 => Exit::ApicWrite { offset: rng.next_u64() as u32 & 0x3ff0, value: rng.next_u64() as u32 },
        15 => Exit::Rdmsr,
        16 => Exit::Wrmsr,
        17..=19 => {
            let cr = if rng.chance(4) { rng.next_u64() as u8 } else { rng.pick(&[0, 4, 8]) };
            let gpr = rng.next_u64() as u8;
            Exit::Cr(match rng.below(4) {
                0 => CrAccess::MovTo { cr, gpr },
                1 => CrAccess::MovFrom { cr, gpr },
                2 => CrAccess::Clts,
                _ => CrAccess::Lmsw { source: rng.next_u64() as u16 },
            })
        }
        // What SVM without decode assists reports: the CR and the direction.
        30 | 31 => {
            let cr = if rng.chance(4) { rng.next_u64() as u8 } else { rng.pick(&[0, 4, 8]) };
            Exit::Cr(CrAccess::Undecoded { cr, write: rng.chance(4) || cr != 8 })
        }
        32 => Exit::Exception { vector: UD, error_code: None },
        20 => Exit::Xsetbv,
        21 => Exit::CacheFlush,
        22 | 23 => Exit::Hypercall,
        24 => Exit::Exception {
            vector: if rng.chance(2) { rng.pick(&[DB, AC, UD]) } else { rng.next_u64() as u8 },
            error_code: rng.chance(2).then(|| rng.next_u64() as u32),
        },
        25 => [Exit::HostInterrupt, Exit::HostNmi, Exit::InterruptWindow, Exit::NmiWindow][rng.index(4)].clone(),
        26 => [Exit::Timer, Exit::TprBelowThreshold, Exit::Shutdown][rng.index(3)].clone(),
        27 => [Exit::UndefinedInstruction, Exit::Rdpmc][rng.index(2)].clone(),
        28 => Exit::EntryFailed("hostile".into()),
        _ => Exit::Unhandled("hostile".into()),
    }
}

/// MSRs `aim` names: each one Basalt emulates (the APIC base twice).
const AIMED_MSRS: [u64; 14] =
    [0x10, 0x1b, 0x1b, 0x3a, 0x3b, 0x8b, 0xfe, 0x179, 0x17a, 0x1a0, 0x200, 0x2ff, 0x6e0, 0xc000_0080];
/// x2APIC MSRs: read-only, write-only, read/write, ICR, and ones x2APIC lacks.
const AIMED_X2APIC_MSRS: [u64; 13] =
    [0x802, 0x803, 0x808, 0x80b, 0x80d, 0x80e, 0x80f, 0x828, 0x830, 0x832, 0x838, 0x839, 0x83f];

/// Registers that name something the handler knows, half of the time (random
/// ones almost never name an MSR, a valid XCR0 or a hypercall).
fn aim(rng: &mut Rng, exit: &Exit, vcpu: &mut FakeVcpu) {
    if rng.chance(2) {
        return;
    }
    let gprs = &mut vcpu.gprs;
    match exit {
        Exit::Rdmsr | Exit::Wrmsr => {
            // Half of them the local APIC's in x2APIC mode.
            let msr = if rng.chance(2) { rng.pick(&AIMED_MSRS) } else { rng.pick(&AIMED_X2APIC_MSRS) };
            gprs[RCX as usize] = msr;
            gprs[RDX as usize] &= 0xf;
            gprs[RAX as usize] &= 0xd01;
            if rng.chance(2) {
                gprs[RDX as usize] = 0;
            }
            // IA32_APIC_BASE: mostly the one base, in each of the four EN/EXTD
            // states (some transitions allowed, some not), sometimes with BSP
            // or a reserved bit.
            if msr == 0x1b && rng.chance(2) {
                let bits = rng.pick(&[0, EN, EN | EXTD, EXTD, EN | BSP, EN | 1, EN | (1 << 9)]);
                gprs[RAX as usize] = devices::layout::LAPIC_BASE | bits;
            }
        }
        // A breakpoint on what the exit touches: the device address (which
        // the guest's tables may or may not map at the same linear address),
        // or the port, with CR4.DE for I/O breakpoints.
        Exit::DeviceMemory { address, .. } => {
            vcpu.dr[0] = *address;
            vcpu.dr7 = 0x401 | rng.pick(&[1, 3]) << 16 | rng.below(4) << 18;
        }
        Exit::Io(PortIo { port, .. }) => {
            vcpu.dr[1] = u64::from(*port);
            vcpu.dr7 = 0x408 | 2 << 20 | rng.below(4) << 22;
            vcpu.cr4 |= cr4::DE;
        }
        Exit::Xsetbv => {
            gprs[RCX as usize] = rng.below(2);
            gprs[RDX as usize] = rng.below(2) * rng.below(4);
            gprs[RAX as usize] = rng.below(8);
        }
        Exit::Hypercall | Exit::Exception { vector: UD, .. } => {
            gprs[RAX as usize] = rng.below(7);
            gprs[RCX as usize] &= 0x3ff;
            vcpu.cpl = 0;
        }
        _ => {}
    }
}

/// Mostly, an instruction at CS:RIP that could have made `exit`
/// (random memory seldom holds one), with prefixes that may or may not suit
/// it; where RIP leads into the identity-mapped RAM below the tables.
fn plant(rng: &mut Rng, exit: &Exit, vcpu: &FakeVcpu, vm: &mut FakeVm) {
    let cr_access = |rng: &mut Rng| -> Vec<u8> {
        let reg = if rng.chance(8) { rng.below(8) as u8 } else { rng.pick(&[0, 4]) };
        match rng.below(4) {
            0 | 1 => vec![0x0f, rng.pick(&[0x20, 0x22]), 0xc0 | reg << 3 | rng.below(8) as u8],
            2 => vec![0x0f, 0x06],
            _ => vec![0x0f, 0x01, 0xf0 | rng.below(8) as u8],
        }
    };
    let code: Vec<u8> = match exit {
        Exit::Cpuid => vec![0x0f, 0xa2],
        Exit::Hlt => vec![0xf4],
        Exit::Rdmsr => vec![0x0f, 0x32],
        Exit::Wrmsr => vec![0x0f, 0x30],
        Exit::Xsetbv => vec![0x0f, 0x01, 0xd1],
        Exit::CacheFlush => vec![0x0f, rng.pick(&[0x08, 0x09])],
        Exit::Hypercall | Exit::Exception { vector: UD, .. } => {
            if rng.chance(6) {
                vec![0x0f, 0x0b] // UD2
            } else {
                vec![0x0f, 0x01, rng.pick(&[0xc1, 0xd9])]
            }
        }
        // Mostly the access the exit names, for the handler to get far.
        &Exit::Cr(CrAccess::Undecoded { cr, write }) if rng.chance(2) => {
            let (op, rm) = (if write { 0x22 } else { 0x20 }, rng.below(8) as u8);
            match cr {
                0 if write && rng.chance(2) => {
                    if rng.chance(2) {
                        vec![0x0f, 0x06]
                    } else {
                        vec![0x0f, 0x01, 0xf0 | rm]
                    }
                }
                8 => vec![0xf0, 0x0f, op, 0xc0 | rm],
                _ => vec![0x0f, op, 0xc0 | (cr & 7) << 3 | rm],
            }
        }
        Exit::Cr(_) => cr_access(rng),
        _ => return,
    };
    if rng.chance(4) {
        return;
    }
    let mut bytes = Vec::new();
    if rng.chance(3) {
        for _ in 0..=rng.below(3) {
            bytes.push(rng.pick(&[0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x3e, 0x64, 0x41, 0x44, 0x48]));
        }
    }
    bytes.extend(code);
    let linear = crate::io::effective_base(vcpu, SegmentRegister::Cs).wrapping_add(vcpu.rip);
    if linear.checked_add(bytes.len() as u64).is_some_and(|end| end <= HOSTILE_TABLES) {
        vm.memory.bytes[linear as usize..][..bytes.len()].copy_from_slice(&bytes);
    }
}

/// Whether `exit`'s instruction is measured at RIP before its handler runs
/// when the back end does not know its length.
fn measured(exit: &Exit) -> bool {
    matches!(
        exit,
        Exit::Cpuid
            | Exit::Hlt
            | Exit::Rdmsr
            | Exit::Wrmsr
            | Exit::Xsetbv
            | Exit::CacheFlush
            | Exit::Hypercall
            | Exit::Cr(_)
    )
}

/// Whether the handler of `exit` fetches the instruction at RIP: always for
/// an undecoded CR access or a #UD, for the measured exits with the length
/// unknown.
fn fetches(exit: &Exit, length_known: bool) -> bool {
    match exit {
        Exit::Cr(CrAccess::Undecoded { .. }) | Exit::Exception { vector: UD, .. } => true,
        _ => !length_known && measured(exit),
    }
}

/// Whether `outcome` is one that `exit` can have; `fetched` if its handler
/// fetched the instruction at RIP.
fn possible(exit: &Exit, outcome: &Outcome, fetched: bool) -> bool {
    use Outcome::{Marker, Park, Resume};
    let device = |s: &Stop| matches!(s, Stop::ExitDevice { .. } | Stop::PowerOff | Stop::Reset | Stop::Unsupported(_));
    let hypercall = |s: &Stop| matches!(s, Stop::ExitHypercall { .. });
    match (exit, outcome) {
        // Bytes at RIP that are no instruction the exit could have come from
        // (or page tables outside RAM) stop the VM.
        (_, Outcome::Stop(Stop::Unsupported(_))) if fetched => true,
        // VMCALL or VMMCALL under #UD: the hypercall.
        (Exit::Exception { vector: UD, .. }, Outcome::Stop(s)) if hypercall(s) => true,
        (Exit::Hlt, Resume | Park | Outcome::Stop(Stop::Halted)) => true,
        (Exit::Io(_) | Exit::DeviceMemory { .. }, Resume | Marker(_)) => true,
        (Exit::Io(_) | Exit::DeviceMemory { .. } | Exit::ApicWrite { .. }, Outcome::Stop(s)) => device(s),
        (Exit::Cr(_) | Exit::Exception { .. }, Resume | Outcome::Stop(Stop::Unsupported(_))) => true,
        (Exit::Hypercall, Resume | Outcome::Stop(Stop::ExitHypercall { .. })) => true,
        (Exit::Shutdown, Outcome::Stop(Stop::TripleFault)) => true,
        (Exit::EntryFailed(_), Outcome::Stop(Stop::InvalidGuestState(_))) => true,
        (Exit::Unhandled(_), Outcome::Stop(Stop::Unsupported(_))) => true,
        (Exit::Hlt | Exit::Io(_) | Exit::DeviceMemory { .. } | Exit::Cr(_) | Exit::Exception { .. }, _) => false,
        (Exit::Hypercall | Exit::Shutdown | Exit::EntryFailed(_) | Exit::Unhandled(_), _) => false,
        (_, Resume) => true,
        _ => false,
    }
}

/// The exceptions `exit` may raise in the guest; `fetched` if its handler
/// fetched the instruction at RIP (which may fault: #PF, or #GP for a
/// non-canonical RIP).
fn may_raise(exit: &Exit, fetched: bool) -> &'static [u8] {
    match exit {
        // A hypercall raises nothing, from any ring (it answers in RAX).
        _ if fetched => &[PF, GP],
        Exit::Io(_) => &[PF, GP],
        Exit::DeviceMemory { .. } => &[UD, PF, GP],
        Exit::Rdmsr | Exit::Wrmsr | Exit::Cr(_) | Exit::Xsetbv | Exit::Rdpmc => &[GP],
        Exit::UndefinedInstruction => &[UD],
        _ => &[],
    }
}

/// Checks one exit's effects on the vCPU against what its outcome says.
/// `length` is what the decoder makes of the bytes at CS:RIP before the exit
/// (`intercepted_length`), if they could be fetched.
fn check(
    exit: &Exit,
    outcome: &Outcome,
    before: &FakeVcpu,
    after: &FakeVcpu,
    host: &FakeHost,
    length: Option<u8>,
    apic_base: (u64, u64),
) -> Result<(), String> {
    let fetched = fetches(exit, before.length_known);
    if !possible(exit, outcome, fetched) {
        return Err(format!("impossible outcome {outcome:?}"));
    }
    if after.skipped > 1 {
        return Err(format!("skipped {} times", after.skipped));
    }
    // A length comes from the decoder, only for what it decoded, and only
    // where the back end needs one: never on the VMX-like path.
    if let Some(set) = after.length_set {
        if !fetched {
            return Err(format!("length {set} set for an instruction not decoded"));
        }
        if length != Some(set) {
            return Err(format!("length {set} set for bytes of length {length:?}"));
        }
    }
    let moved = after.rip != before.rip;
    // The fake's length is the exit's, or the one the handler set.
    let skip_rip = before.rip.wrapping_add(after.instruction_length * after.skipped as u64);
    match after.injected {
        None => {}
        Some(Injected::Exception { vector, error_code }) => {
            if !may_raise(exit, fetched).contains(&vector) {
                return Err(format!("raised vector {vector}"));
            }
            if moved || after.skipped != 0 {
                return Err(format!("vector {vector} raised but RIP moved to {:#x}", after.rip));
            }
            match vector {
                GP if error_code != Some(0) => return Err(format!("#GP with {error_code:?}")),
                PF if error_code.is_none_or(|c| c & !0x1f != 0) => return Err(format!("#PF with {error_code:?}")),
                UD if error_code.is_some() => return Err("#UD with an error code".into()),
                _ => {}
            }
        }
        // The #DB of a completed instruction (`check_debug`).
        Some(Injected::DebugTrap(_)) => {}
        // The exception that exited goes back (a #UD that was no hypercall).
        Some(Injected::Reflected { vector, .. })
            if matches!(exit, Exit::Exception { vector: v, .. } if *v == vector) && [DB, AC, UD].contains(&vector) => {}
        Some(other) => return Err(format!("injected {other:?}")),
    }
    let stopped_here = matches!(
        outcome,
        Outcome::Stop(Stop::Unsupported(_) | Stop::Halted | Stop::TripleFault | Stop::InvalidGuestState(_))
    );
    if stopped_here && (moved || after.skipped != 0) {
        return Err("RIP moved for an instruction that did not complete".into());
    }
    match exit {
        // The only exits whose RIP the handler computes itself.
        Exit::DeviceMemory { .. } => {
            let length = after.rip.wrapping_sub(before.rip);
            if after.skipped != 0 || (moved && !(1..=15).contains(&length)) {
                return Err(format!("MMIO moved RIP by {length:#x}"));
            }
            let completed = !faulted(after) && !stopped_here;
            // Only an unfinished REP string stays on its instruction without a
            // fault, and it moved RCX.
            let unfinished = completed && !moved && after.gprs[RCX as usize] != before.gprs[RCX as usize];
            if completed != moved && !unfinished {
                return Err(format!("MMIO instruction completed: {completed}, RIP moved: {moved}"));
            }
        }
        _ if after.rip != skip_rip => return Err(format!("RIP {:#x} not moved by skip_instruction", after.rip)),
        // Not skipped and resumed: an unfinished REP string, or a fault.
        Exit::Io(PortIo { string: Some(s), .. })
            if after.skipped == 0 && outcome == &Outcome::Resume && !faulted(after) && !s.rep =>
        {
            return Err("a single string element neither completed nor faulted".into());
        }
        Exit::Io(PortIo { string: None, size: 1 | 2 | 4, .. }) if after.skipped != 1 => {
            return Err("IN/OUT did not complete".into());
        }
        // CPUID always completes, once its length is known.
        Exit::Cpuid if after.skipped != 1 && !(fetched && (stopped_here || after.injected.is_some())) => {
            return Err("CPUID did not complete".into());
        }
        Exit::Cpuid if after.skipped == 1 && (0..4).any(|r| after.gprs[r] >> 32 != 0) => {
            return Err(format!("CPUID left {:x?}", &after.gprs[..4]));
        }
        Exit::Rdmsr if after.skipped == 1 && (after.gprs[0] >> 32 != 0 || after.gprs[2] >> 32 != 0) => {
            return Err("RDMSR left upper halves set".into());
        }
        Exit::ApicWrite { .. } | Exit::HostInterrupt | Exit::HostNmi | Exit::Timer if after.skipped != 0 => {
            return Err("an exit without an instruction skipped one".into());
        }
        _ => {}
    }
    // A hypercall that completed answered as its caller's ring and number say.
    if matches!(exit, Exit::Hypercall | Exit::Exception { vector: UD, .. }) && after.skipped == 1 {
        let expected = match (before.cpl, before.gprs[0]) {
            (1..=3, _) => Some(EPERM),
            (_, 6..) => Some(ENOSYS),
            _ => None,
        };
        if expected.is_some_and(|e| e != after.gprs[0]) {
            return Err(format!(
                "hypercall {:#x} from ring {} answered {:#x}",
                before.gprs[0], before.cpl, after.gprs[0]
            ));
        }
    }
    check_apic_base(exit, before, after, apic_base)?;
    check_debug(exit, outcome, before, after)?;
    check_tsc(exit, before, after, host)?;
    // The control registers stay a state the CPU could be in.
    let lma = after.efer & efer::LMA != 0;
    if lma != (after.cr0 & cr0::PG != 0 && after.efer & efer::LME != 0) {
        return Err(format!("EFER {:#x} with CR0 {:#x}", after.efer, after.cr0));
    }
    if after.cr0 & cr0::PG != 0 && after.cr0 & cr0::PE == 0 {
        return Err(format!("CR0 {:#x}", after.cr0));
    }
    if after.cr4 != before.cr4 && after.cr4 & !host.guest_cr4_allowed() != 0 {
        return Err(format!("CR4 {:#x}", after.cr4));
    }
    if after.efer & !(efer::SCE | efer::LME | efer::LMA | efer::NXE) != 0 {
        return Err(format!("EFER {:#x}", after.efer));
    }
    if after.xcr0 != before.xcr0 && !arch::xstate::xcr0_valid(after.xcr0, host.xstate.allowed) {
        return Err(format!("XCR0 {:#x}", after.xcr0));
    }
    Ok(())
}

/// A fault (or the reflected exception that exited) was injected: the
/// instruction did not complete.
fn faulted(vcpu: &FakeVcpu) -> bool {
    matches!(vcpu.injected, Some(Injected::Exception { .. } | Injected::Reflected { .. }))
}

/// The trap-class #DB of what Basalt completed: raised only after an
/// instruction or a REP iteration that completed, with BS exactly when
/// RFLAGS.TF was set and breakpoint bits only of enabled data or I/O
/// breakpoints; never missing when single-stepping; DR6 and DR7.GD as the
/// CPU leaves them; RF clear after a completed instruction and set while a
/// REP string is unfinished; a single-stepped REP string one element at a
/// time; and HLT with TF set does not wait.
fn check_debug(exit: &Exit, outcome: &Outcome, before: &FakeVcpu, after: &FakeVcpu) -> Result<(), String> {
    let single_step = before.rflags & RFLAGS_TF != 0;
    let moved = after.rip != before.rip;
    let completed = after.skipped == 1 || (matches!(exit, Exit::DeviceMemory { .. }) && moved && !faulted(after));
    let string = matches!(exit, Exit::Io(PortIo { string: Some(_), .. }) | Exit::DeviceMemory { .. });
    let rcx_moved = after.gprs[RCX as usize] != before.gprs[RCX as usize];
    let iterated = string && !completed && !faulted(after) && rcx_moved;
    if let Some(Injected::DebugTrap(conditions)) = after.injected {
        if !completed && !iterated {
            return Err(format!("#DB {conditions:#x} for an instruction that did not complete"));
        }
        if (conditions & dr6::BS != 0) != single_step {
            return Err(format!("#DB {conditions:#x} with RFLAGS {:#x}", before.rflags));
        }
        let io = before.cr4 & cr4::DE != 0;
        for index in 0..4 {
            if conditions & (1 << index) == 0 {
                continue;
            }
            match arch::debug::breakpoint(before.dr7, index) {
                Some((arch::debug::Watch::Write | arch::debug::Watch::ReadWrite, _)) => {}
                Some((arch::debug::Watch::Io, _)) if io => {}
                other => return Err(format!("#DB {conditions:#x}: breakpoint {index} is {other:?}")),
            }
        }
        if after.dr6 != arch::control::dr6_after_debug_exception(before.dr6, conditions) {
            return Err(format!("DR6 {:#x} -> {:#x} for #DB {conditions:#x}", before.dr6, after.dr6));
        }
        if after.dr7 != before.dr7 & !arch::debug::dr7::GD {
            return Err(format!("DR7 {:#x} -> {:#x}", before.dr7, after.dr7));
        }
    } else if (after.dr6, after.dr7) != (before.dr6, before.dr7) {
        return Err("DR6 or DR7 changed without a #DB".into());
    }
    let resumed = matches!(outcome, Outcome::Resume | Outcome::Marker(_) | Outcome::Park);
    if single_step && (completed || iterated) && resumed && !matches!(after.injected, Some(Injected::DebugTrap(_))) {
        return Err("an instruction completed single-stepped without its #DB".into());
    }
    if resumed && completed && after.rflags & RFLAGS_RF != 0 {
        return Err("RF left set after the instruction completed".into());
    }
    if resumed && iterated && after.rflags & RFLAGS_RF == 0 {
        return Err("RF clear on an unfinished REP string".into());
    }
    // (An MMIO instruction that completed may have loaded RCX.)
    let string_io = matches!(exit, Exit::Io(PortIo { string: Some(_), .. }));
    let elements = before.gprs[RCX as usize].wrapping_sub(after.gprs[RCX as usize]) & 0xffff;
    if single_step && (string_io || iterated) && elements > 1 {
        return Err("a single-stepped REP string went more than one element".into());
    }
    if single_step && matches!(exit, Exit::Hlt) && after.halted {
        return Err("HLT waits with its single step pending".into());
    }
    Ok(())
}

/// The TSC offset (= TSC_ADJUST) moves only by a WRMSR of the TSC or of
/// TSC_ADJUST that completed, which leaves the chipset's copy equal to it;
/// RDMSR of either reads the guest's view.
fn check_tsc(exit: &Exit, before: &FakeVcpu, after: &FakeVcpu, host: &FakeHost) -> Result<(), String> {
    let msr = before.gprs[RCX as usize] as u32;
    let completed = after.skipped == 1;
    if after.tsc_offset != before.tsc_offset {
        if !(matches!(exit, Exit::Wrmsr) && (msr == 0x10 || msr == 0x3b) && completed) {
            return Err(format!("TSC offset {:#x} -> {:#x}", before.tsc_offset, after.tsc_offset));
        }
        let written = (before.gprs[RDX as usize] << 32) | (before.gprs[RAX as usize] & 0xffff_ffff);
        let expected = if msr == 0x3b { written } else { written.wrapping_sub(host.now) };
        if after.tsc_offset != expected {
            return Err(format!("WRMSR {msr:#x} of {written:#x}: TSC offset {:#x}", after.tsc_offset));
        }
    }
    if matches!(exit, Exit::Rdmsr) && completed && (msr == 0x10 || msr == 0x3b) {
        let read = (after.gprs[RDX as usize] << 32) | after.gprs[RAX as usize];
        let expected = if msr == 0x3b { before.tsc_offset } else { host.now.wrapping_add(before.tsc_offset) };
        if read != expected {
            return Err(format!("RDMSR {msr:#x} read {read:#x}, not {expected:#x}"));
        }
    }
    Ok(())
}

/// IA32_APIC_BASE stays a state the SDM allows, changes only by a WRMSR of it
/// that completed and only along an allowed transition, and x2APIC MSRs
/// complete only in x2APIC mode.
fn check_apic_base(exit: &Exit, before: &FakeVcpu, after: &FakeVcpu, (old, new): (u64, u64)) -> Result<(), String> {
    let completed = after.skipped == 1;
    let msr = before.gprs[RCX as usize] as u32;
    let mode = |base: u64| (base & EN != 0, base & EXTD != 0);
    if new & !(EN | EXTD | BSP) != layout::LAPIC_BASE || mode(new) == (false, true) {
        return Err(format!("IA32_APIC_BASE {new:#x}"));
    }
    if (new & BSP != 0) != (before.index == 0) {
        return Err(format!("IA32_APIC_BASE {new:#x} on vCPU {}", before.index));
    }
    if new != old {
        if !(matches!(exit, Exit::Wrmsr) && msr == 0x1b && completed) {
            return Err(format!("IA32_APIC_BASE {old:#x} -> {new:#x} without a WRMSR of it"));
        }
        match (mode(old), mode(new)) {
            ((true, true), (true, false)) | ((false, false), (true, true)) => {
                return Err(format!("IA32_APIC_BASE {old:#x} -> {new:#x}: a transition the SDM forbids"));
            }
            _ => {}
        }
    }
    if matches!(exit, Exit::Rdmsr | Exit::Wrmsr)
        && (0x800..=0x8ff).contains(&msr)
        && completed
        && mode(old) != (true, true)
    {
        return Err(format!("x2APIC MSR {msr:#x} accessed with IA32_APIC_BASE {old:#x}"));
    }
    Ok(())
}

#[test]
fn random_exits_on_random_state_never_panic_and_keep_their_promises() {
    const BATCHES: u64 = 200;
    const CASES: u64 = 100;
    // What the cases reached, so that the test cannot pass by reaching nothing.
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for seed in 0..BATCHES {
        let mut rng = Rng::new(0xba5a17 ^ seed);
        let (mut vm, cr3) = hostile_vm(&mut rng);
        let mut host = FakeHost {
            now: rng.next_u64(),
            tsc_hz: rng.pick(&[0, 1, 1_000_000_000, 4_500_000_000, u64::MAX >> 20]),
            xstate: GuestXstate { allowed: rng.pick(&[1, 3, 7]), area_size: 0x340 },
            ..FakeHost::default()
        };
        for case in 0..CASES {
            // Memory keeps changing under the guest, page tables included.
            for _ in 0..rng.below(8) {
                let at = rng.index(HOSTILE_RAM);
                vm.memory.bytes[at] = rng.next_u64() as u8;
            }
            let mut vcpu = hostile_vcpu(&mut rng, cr3, &host);
            let exit = hostile_exit(&mut rng);
            aim(&mut rng, &exit, &mut vcpu);
            // Port I/O comes with its next RIP on either vendor (EXITINFO2).
            if !matches!(exit, Exit::Io(_)) && rng.chance(3) {
                vcpu.length_known = false;
            }
            // Fetches with and without a remembered translation.
            vcpu.remember_fetches = rng.chance(2);
            plant(&mut rng, &exit, &vcpu, &mut vm);
            let length = vm
                .with(|machine| crate::mmio::fetch_instruction(&mut vcpu, machine))
                .ok()
                .and_then(|f| arch::decode::intercepted_length(&f.bytes[..f.len], vcpu.code_size).ok());
            let before = vcpu.clone();
            let old_apic_base = vm.chipset.apic_base(vcpu.index);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                vm.with(|machine| dispatch(exit.clone(), &mut vcpu, machine, &mut host))
            }));
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(_) => panic!("seed {seed} case {case}: {exit:?} panicked on {before:?}"),
            };
            let apic_base = (old_apic_base, vm.chipset.apic_base(vcpu.index));
            if let Err(why) = check(&exit, &outcome, &before, &vcpu, &host, length, apic_base) {
                panic!("seed {seed} case {case}: {exit:?} -> {outcome:?}: {why}\nbefore {before:?}\nafter {vcpu:?}");
            }
            let result = match (&outcome, vcpu.injected) {
                (_, Some(Injected::Exception { vector, .. })) => format!("vector {vector}"),
                (_, Some(Injected::Reflected { vector, .. })) => format!("reflected {vector}"),
                (Outcome::Resume, _) if vcpu.rip != before.rip => "completed".into(),
                (Outcome::Resume, _) => "resumed".into(),
                (Outcome::Stop(stop), _) => format!("{stop:?}").split([' ', '(']).next().unwrap().into(),
                (other, _) => format!("{other:?}").split('(').next().unwrap().into(),
            };
            let msr = before.gprs[RCX as usize] as u32;
            let name = match exit {
                Exit::Cr(CrAccess::Undecoded { .. }) => "cr-access undecoded",
                Exit::Exception { vector: UD, .. } => "exception #UD",
                Exit::Rdmsr | Exit::Wrmsr if (0x800..=0x8ff).contains(&msr) => {
                    if matches!(exit, Exit::Rdmsr) {
                        "rdmsr x2apic"
                    } else {
                        "wrmsr x2apic"
                    }
                }
                Exit::Wrmsr if msr == 0x1b => "wrmsr apic-base",
                Exit::Hypercall if before.cpl != 0 => "hypercall from ring 1-3",
                _ => exit.name(),
            };
            let unknown = if before.length_known { "" } else { " (length unknown)" };
            *seen.entry(format!("{name}{unknown}: {result}")).or_default() += 1;
            if let Some(Injected::DebugTrap(conditions)) = vcpu.injected {
                let why = if conditions & dr6::BS != 0 { "single step" } else { "breakpoint" };
                *seen.entry(format!("{name}{unknown}: #DB {why}")).or_default() += 1;
            }
        }
    }
    for reached in [
        "io: completed",
        "io: resumed", // an unfinished REP string
        "io: vector 14",
        "io: vector 13",
        "io: Unsupported",
        "io: ExitDevice",
        "io: Marker",
        "device-memory: completed",
        "device-memory: vector 6",
        "device-memory: vector 14",
        "device-memory: Unsupported",
        "cr-access: completed",
        "cr-access: vector 13",
        "rdmsr: completed",
        "wrmsr: vector 13",
        "xsetbv: completed",
        "xsetbv: vector 13",
        "hypercall: completed",
        "hypercall from ring 1-3: completed",
        "hypercall: ExitHypercall",
        "rdmsr x2apic: completed",
        "rdmsr x2apic: vector 13",
        "wrmsr x2apic: completed",
        "wrmsr x2apic: vector 13",
        "wrmsr apic-base: completed",
        "wrmsr apic-base: vector 13",
        "hlt: Park",
        "hlt: Halted",
        // Back ends that leave the length to the decoder.
        "cpuid (length unknown): completed",
        "cpuid (length unknown): Unsupported",
        "cpuid (length unknown): vector 14",
        "hlt (length unknown): completed",
        "rdmsr (length unknown): completed",
        "wrmsr (length unknown): completed",
        "cache-flush (length unknown): completed",
        "hypercall (length unknown): completed",
        "cr-access (length unknown): completed",
        "cr-access undecoded: completed",
        "cr-access undecoded: vector 13",
        "cr-access undecoded: vector 14",
        "cr-access undecoded: Unsupported",
        "cr-access undecoded (length unknown): completed",
        "exception #UD: completed",
        "exception #UD: ExitHypercall",
        "exception #UD: reflected 6",
        "exception #UD: vector 14",
        "exception #UD (length unknown): completed",
        "exception: reflected 1",
        "exception: reflected 17",
        // The #DB after what Basalt completed, and its breakpoints.
        "cpuid: #DB single step",
        "hlt: #DB single step",
        "io: #DB single step",
        "io: #DB breakpoint",
        "device-memory: #DB single step",
        "device-memory: #DB breakpoint",
        "rdmsr: #DB single step",
        "cr-access: #DB single step",
        "hypercall: #DB single step",
    ] {
        assert!(seen.contains_key(reached), "no case reached {reached}: {seen:#?}");
    }
}

/// The registers an emulated operation may write.
fn written_registers(operation: arch::decode::Operation) -> Vec<usize> {
    use arch::decode::{Operation, StringOp};
    const RSP: usize = 4;
    match operation {
        Operation::Load { dest, .. } | Operation::AluToRegister { dest, .. } => vec![dest.index as usize],
        Operation::Xchg { register } => vec![register.index as usize],
        Operation::Cmpxchg { .. } => vec![RAX as usize],
        Operation::Store { .. } | Operation::Alu { .. } | Operation::BitTest { .. } => vec![],
        Operation::Push | Operation::Pop => vec![RSP],
        Operation::String { op: StringOp::Movs, .. } => vec![RSI as usize, RDI as usize, RCX as usize],
        Operation::String { op: StringOp::Stos, .. } => vec![RDI as usize, RCX as usize],
        Operation::String { op: StringOp::Lods, .. } => vec![RSI as usize, RCX as usize, RAX as usize],
    }
}

#[test]
fn random_mmio_instructions_are_emulated_as_the_decoder_reads_them() {
    // Only the instruction bytes, registers and flags vary. Each instruction is
    // carried out as the decoder reads it (RIP moved by its length, or left on
    // an unfinished REP string), faults on a stack or string operand as the
    // CPU would, is refused with #UD, or stops the VM when it runs on beyond
    // RAM; it writes only the registers its operation writes, and only the
    // status flags of RFLAGS.
    use arch::decode::{DecodeError, Operation};
    let mut rng = Rng::new(0x4d4d_494f);
    let (template, mut vm, mut host, _) = long_mode_vm();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for case in 0..40_000 {
        let mut vcpu = template.clone();
        vcpu.code_size = rng.pick(&[CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64]);
        for gpr in &mut vcpu.gprs {
            *gpr = rng.next_u64();
        }
        // String and stack operands: often in RAM clear of the code and the
        // tables, or in device memory; counts often small.
        for r in [RSI, RDI, 4] {
            match rng.below(4) {
                0 => vcpu.gprs[r as usize] = 0x8000 + rng.below(0x1000),
                1 => vcpu.gprs[r as usize] = rng.pick(&[layout::LAPIC_BASE + 0x80, 0xd800_0000]),
                _ => {}
            }
        }
        if rng.chance(2) {
            vcpu.gprs[RCX as usize] = rng.pick(&[0, 1, 2, 17, crate::io::MAX_REP_PER_EXIT + 1]);
        }
        vcpu.rflags = 0x202 | (rng.next_u64() & (arch::alu::STATUS_FLAGS | crate::vcpu::RFLAGS_DF | RFLAGS_RF));
        // Single-stepped now and then: every completed instruction or
        // iteration traps, and a REP string goes one element at a time.
        if rng.chance(4) {
            vcpu.rflags |= RFLAGS_TF;
        }
        // Within a page, across a page boundary, and running off the end of RAM.
        let near_end = RAM as u64 - 1 - rng.below(15);
        let rip = rng.pick(&[0x1000, 0x1ff8, near_end]);
        vcpu.rip = rip;
        let mut code = [0u8; 15];
        for byte in &mut code {
            *byte = match rng.below(3) {
                0 => rng.pick(&[
                    0x66, 0x67, 0x48, 0x44, 0xf0, 0xf3, 0x0f, 0x88, 0x89, 0x8a, 0x8b, 0xc6, 0xc7, 0xa1, 0xa3, 0x01,
                    0x0b, 0x39, 0x81, 0x83, 0x85, 0xf7, 0xff, 0x87, 0x8f, 0xb1, 0xba, 0xbe, 0x63, 0xa5, 0xaa, 0xad,
                ]),
                _ => rng.next_u64() as u8,
            };
        }
        let available = (RAM - rip as usize).min(15);
        vm.memory.bytes[rip as usize..][..available].copy_from_slice(&code[..available]);
        let address = rng.pick(&[layout::LAPIC_BASE + 0x80, layout::LAPIC_BASE + 0x3e0, 0xd800_0000]);
        let before = vcpu.clone();
        let outcome = run(Exit::DeviceMemory { address, fetch: false }, &mut vcpu, &mut vm, &mut host);
        let context = format!("case {case}: {:02x?} in {:?} -> {outcome:?}", &code[..available], before.code_size);
        let injected = exception(&vcpu).map(|(vector, _)| vector);
        let changed: Vec<usize> = (0..16).filter(|&r| vcpu.gprs[r] != before.gprs[r]).collect();
        let decoded = arch::decode::decode(&code[..available], before.code_size);
        let kind = match decoded {
            Ok(d) => format!("{:?}", d.operation).split([' ', '(']).next().unwrap().to_string(),
            Err(e) => format!("{e:?}").split(' ').next().unwrap().to_string(),
        };
        let result = match (&outcome, injected) {
            (_, Some(vector)) => format!("vector {vector}"),
            (Outcome::Resume, None) if vcpu.rip != rip => "completed".into(),
            (Outcome::Resume, None) => "unfinished".into(),
            (other, None) => format!("{other:?}").split('(').next().unwrap().into(),
        };
        *seen.entry(format!("{kind}: {result}")).or_default() += 1;
        match decoded {
            Ok(decoded) => {
                let writes = written_registers(decoded.operation);
                assert!(changed.iter().all(|r| writes.contains(r)), "{context}: registers {changed:?} changed");
                let flags = matches!(
                    decoded.operation,
                    Operation::Alu { .. }
                        | Operation::AluToRegister { .. }
                        | Operation::Cmpxchg { .. }
                        | Operation::BitTest { .. }
                );
                // RF is the CPU's after the instruction or iteration (debug.rs).
                let may_change = if flags { arch::alu::STATUS_FLAGS } else { 0 } | RFLAGS_RF;
                assert_eq!(vcpu.rflags & !may_change, before.rflags & !may_change, "{context}: RFLAGS");
                let single_step = before.rflags & RFLAGS_TF != 0;
                if outcome == Outcome::Resume && injected.is_none() {
                    let finished = vcpu.rip != rip;
                    assert_eq!(vcpu.rflags & RFLAGS_RF == 0, finished, "{context}: RF");
                    let trap = single_step.then_some(Injected::DebugTrap(dr6::BS));
                    assert_eq!(vcpu.injected, trap, "{context}: the single step");
                }
                let memory_operands =
                    matches!(decoded.operation, Operation::Push | Operation::Pop | Operation::String { .. });
                let rep = matches!(decoded.operation, Operation::String { rep: true, .. });
                if single_step && rep {
                    let elements = before.gprs[RCX as usize].wrapping_sub(vcpu.gprs[RCX as usize]) & 0xffff;
                    assert!(elements <= 1, "{context}: {elements} elements single-stepped");
                }
                match (&outcome, injected) {
                    (Outcome::Resume, None) if vcpu.rip == rip + decoded.length as u64 => {}
                    // An unfinished REP string: it went some way.
                    (Outcome::Resume, None) if rep && vcpu.rip == rip => {
                        assert!(changed.contains(&(RCX as usize)), "{context}: no progress");
                    }
                    // Its stack or string operands fault as the CPU's would.
                    (Outcome::Resume, Some(PF | GP | UD)) if memory_operands => {
                        assert_eq!(vcpu.rip, rip, "{context}");
                    }
                    _ => panic!("{context}: {:?}, RIP {:#x}", vcpu.injected, vcpu.rip),
                }
            }
            Err(DecodeError::Truncated) => {
                // Cut by a page it cannot fetch (#PF), at 15 bytes (#GP), or by
                // the end of RAM (a stop).
                let fault = matches!(injected, Some(PF | GP)) && outcome == Outcome::Resume;
                assert!(fault || is_unsupported(&outcome), "{context}");
                assert_eq!((vcpu.rip, vcpu.gprs, vcpu.rflags), (rip, before.gprs, before.rflags), "{context}");
            }
            Err(_) => {
                assert_eq!((&outcome, injected), (&Outcome::Resume, Some(UD)), "{context}");
                assert_eq!((vcpu.rip, vcpu.gprs, vcpu.rflags), (rip, before.gprs, before.rflags), "{context}");
            }
        }
    }
    for reached in [
        "Load: completed",
        "Store: completed",
        "Alu: completed",
        "AluToRegister: completed",
        "Xchg: completed",
        "Cmpxchg: completed",
        "BitTest: completed",
        "Push: completed",
        "Push: vector 14",
        "Pop: completed",
        "String: completed",
        "String: unfinished",
        "String: vector 14",
        "Invalid: vector 6",
        "Unsupported: vector 6",
        "NotMemory: vector 6",
        "Truncated: Stop",
    ] {
        assert!(seen.contains_key(reached), "no case reached {reached}: {seen:#?}");
    }
}

#[test]
fn event_delivery_never_injects_what_the_guest_cannot_take_nor_forgets_an_event() {
    let mut rng = Rng::new(0xe7e7);
    let mut completed = 0;
    for case in 0..20_000 {
        // RAM under RIP (0x1000), sometimes a HLT there: an STI shadow over
        // a HLT is completed (`complete_shadowed_hlt`).
        let mut vm = FakeVm::new(2, 0x2000);
        let hlt_at_rip = rng.chance(2);
        if hlt_at_rip {
            vm.memory.bytes[0x1000] = 0xf4;
        }
        let index = rng.index(2);
        if rng.chance(2) {
            vm.chipset.mmio_write(index, layout::LAPIC_BASE + 0xf0, 4, 0x1ff, 0, &mut vm.memory);
        }
        if rng.chance(3) {
            let tpr = rng.below(0x100);
            vm.chipset.mmio_write(index, layout::LAPIC_BASE + 0x80, 4, tpr, 0, &mut vm.memory);
        }
        for _ in 0..rng.below(3) {
            // Self-IPIs: fixed (any vector) or NMI.
            let mode = if rng.chance(4) { 4 << 8 } else { 0 };
            let icr = (1 << 18) | mode | rng.below(0x100);
            vm.chipset.mmio_write(index, layout::LAPIC_BASE + 0x300, 4, icr, 0, &mut vm.memory);
        }
        let already = rng.chance(5).then_some(Injected::Exception { vector: GP, error_code: Some(0) });
        const TF: u64 = 1 << 8;
        let mut vcpu = FakeVcpu {
            index,
            rflags: [0x2, 0x202, 0x202, 0x202 | TF][rng.index(4)],
            cpl: if rng.chance(4) { 3 } else { 0 },
            interrupt_shadow: rng.chance(4),
            nmi_blocked: rng.chance(4),
            injected: already,
            ..FakeVcpu::flat()
        };
        vcpu.pending.nmi = rng.chance(4);
        for _ in 0..rng.below(3) {
            vcpu.pending.raise(32 + rng.below(224) as u8);
        }
        let before = vcpu.clone();
        let interrupt_waiting = vcpu.pending.has_interrupt() || vm.chipset.has_interrupt(index);
        deliver_pending(&mut vcpu, &vm.chipset, &vm.memory);
        // The HLT an STI shadow covers completes only at CPL 0, with IF set
        // and TF clear, nothing being injected already and an interrupt
        // waiting; then the shadow is over for both kinds of event.
        let completes = before.interrupt_shadow
            && hlt_at_rip
            && before.cpl == 0
            && before.rflags & (RFLAGS_IF | TF) == RFLAGS_IF
            && already.is_none()
            && interrupt_waiting;
        assert_eq!(vcpu.rip, before.rip + u64::from(completes), "case {case}: RIP moved wrongly from {before:?}");
        if completes {
            completed += 1;
        }
        let shadow = before.interrupt_shadow && !completes;
        let can_take_nmi = !before.nmi_blocked && !shadow && already.is_none();
        let can_take_interrupt = before.rflags & RFLAGS_IF != 0 && !shadow && already.is_none();
        match vcpu.injected {
            i if i == already => {}
            Some(Injected::Nmi) => assert!(can_take_nmi, "case {case}: NMI into {before:?}"),
            Some(Injected::Interrupt(v)) => {
                assert!(can_take_interrupt, "case {case}: interrupt into {before:?}");
                assert!(v >= 16, "case {case}: vector {v}");
            }
            other => panic!("case {case}: {other:?}"),
        }
        if vcpu.pending.nmi {
            assert!(vcpu.nmi_window, "case {case}: an NMI waits without its window: {before:?}");
        }
        if vcpu.pending.has_interrupt() || vm.chipset.has_interrupt(index) {
            assert!(vcpu.interrupt_window, "case {case}: an interrupt waits without its window: {before:?}");
        }
        assert!(!vm.chipset.nmi_pending(index), "case {case}: the chipset's NMI was not taken over");
    }
    assert!(completed > 100, "only {completed} cases completed a shadowed HLT");
}
