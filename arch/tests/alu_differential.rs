//! `arch::alu` checked against the host CPU: each operation is executed for
//! real on a memory operand (`add dword ptr [mem], reg` between POPFQ and
//! PUSHFQ) with random operands and status flags, and the memory, the
//! accumulator (CMPXCHG) and the flags the SDM defines must agree with what
//! the MMIO emulator computes. Flags the SDM leaves undefined (AF after the
//! logical operations; OF, SF, AF, PF after the bit tests) are not compared.
//! `BASALT_DIFF_CASES` raises the number of cases.
#![cfg(target_arch = "x86_64")]

use arch::alu::{alu, bit_test, cmpxchg, AluOp, BitOp, STATUS_FLAGS};
use basalt_fuzz::Rng;
use core::arch::asm;

/// RFLAGS as POPFQ gets it: only the status flags vary (TF, DF, AC and the
/// others stay as the Rust ABI and a user process need them), bit 1 is set.
fn flags_in(rng: &mut Rng) -> u64 {
    0x2 | (rng.next_u64() & STATUS_FLAGS)
}

/// Operands that reach the edges often: 0, 1, the sign bit, all-ones, their
/// neighbours, small values, or anything.
fn operand(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => rng.pick(&[0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff]),
        1 => rng.pick(&[u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1, 0x0f, 0x10, 0xf0]),
        2 => rng.below(0x20),
        _ => rng.next_u64(),
    }
}

fn cases() -> u64 {
    std::env::var("BASALT_DIFF_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(3_000_000) / 100
}

/// A host function: (memory before, register operand, RFLAGS) -> (memory
/// after, RFLAGS after).
type Host = fn(u64, u64, u64) -> (u64, u64);

/// `mnemonic size ptr [mem], reg` for one operand size.
macro_rules! binary {
    ($name:ident, $mnemonic:literal, $ty:ty, $ptr:literal, $class:ident, $reg:literal) => {
        fn $name(memory: u64, source: u64, flags: u64) -> (u64, u64) {
            let mut memory = memory as $ty;
            let mut flags = flags;
            // SAFETY: the instruction reads and writes `memory`, a local of its
            // size, and changes only the status flags, which the PUSHFQ/POPFQ
            // pair brings back out; the stack is balanced.
            unsafe {
                asm!(
                    "push {flags}",
                    "popfq",
                    concat!($mnemonic, " ", $ptr, " ptr [{memory}], {source", $reg, "}"),
                    "pushfq",
                    "pop {flags}",
                    flags = inout(reg) flags,
                    memory = in(reg) &mut memory,
                    source = in($class) source as $ty,
                );
            }
            (memory as u64, flags)
        }
    };
}

/// `mnemonic size ptr [mem]` for one operand size.
macro_rules! unary {
    ($name:ident, $mnemonic:literal, $ty:ty, $ptr:literal) => {
        fn $name(memory: u64, _: u64, flags: u64) -> (u64, u64) {
            let mut memory = memory as $ty;
            let mut flags = flags;
            // SAFETY: as in `binary`.
            unsafe {
                asm!(
                    "push {flags}",
                    "popfq",
                    concat!($mnemonic, " ", $ptr, " ptr [{memory}]"),
                    "pushfq",
                    "pop {flags}",
                    flags = inout(reg) flags,
                    memory = in(reg) &mut memory,
                );
            }
            (memory as u64, flags)
        }
    };
}

/// One host function per operand size (1, 2, 4, 8 bytes).
macro_rules! binary_sizes {
    ($mnemonic:literal) => {{
        binary!(b, $mnemonic, u8, "byte", reg_byte, "");
        binary!(w, $mnemonic, u16, "word", reg, ":x");
        binary!(d, $mnemonic, u32, "dword", reg, ":e");
        binary!(q, $mnemonic, u64, "qword", reg, ":r");
        [b as Host, w, d, q]
    }};
}

macro_rules! unary_sizes {
    ($mnemonic:literal) => {{
        unary!(b, $mnemonic, u8, "byte");
        unary!(w, $mnemonic, u16, "word");
        unary!(d, $mnemonic, u32, "dword");
        unary!(q, $mnemonic, u64, "qword");
        [b as Host, w, d, q]
    }};
}

const SIZES: [u8; 4] = [1, 2, 4, 8];

fn mask(size: u8) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1 << (8 * size)) - 1
    }
}

#[test]
fn alu_operations_agree_with_the_cpu() {
    let table: [(AluOp, [Host; 4]); 13] = [
        (AluOp::Add, binary_sizes!("add")),
        (AluOp::Or, binary_sizes!("or")),
        (AluOp::Adc, binary_sizes!("adc")),
        (AluOp::Sbb, binary_sizes!("sbb")),
        (AluOp::And, binary_sizes!("and")),
        (AluOp::Sub, binary_sizes!("sub")),
        (AluOp::Xor, binary_sizes!("xor")),
        (AluOp::Cmp, binary_sizes!("cmp")),
        (AluOp::Test, binary_sizes!("test")),
        (AluOp::Not, unary_sizes!("not")),
        (AluOp::Neg, unary_sizes!("neg")),
        (AluOp::Inc, unary_sizes!("inc")),
        (AluOp::Dec, unary_sizes!("dec")),
    ];
    let mut rng = Rng::new(0xa1u64 << 56 | 0xd1ff);
    let mut failures = Vec::new();
    for (op, hosts) in table {
        for (size, host) in SIZES.into_iter().zip(hosts) {
            for _ in 0..cases() {
                let (dest, source, flags) = (operand(&mut rng) & mask(size), operand(&mut rng), flags_in(&mut rng));
                let (memory, host_flags) = host(dest, source, flags);
                let (result, ours) = alu(op, size, dest, source, flags);
                let stored = if op.writes_result() { result } else { dest };
                let differ = (host_flags ^ ours) & op.defined_flags();
                if stored != memory || differ != 0 || ours & !STATUS_FLAGS != flags & !STATUS_FLAGS {
                    failures.push(format!(
                        "{op:?} size {size}: {dest:#x}, {source:#x}, flags {flags:#x}: CPU {memory:#x} flags \
                         {host_flags:#x}, ours {stored:#x} flags {ours:#x}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements, e.g.\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// (memory, accumulator, source register, RFLAGS) -> (memory, RAX, RFLAGS).
type CmpxchgHost = fn(u64, u64, u64, u64) -> (u64, u64, u64);

/// `lock cmpxchg [mem], reg` with the accumulator in and out.
macro_rules! cmpxchg_host {
    ($name:ident, $ty:ty, $ptr:literal, $class:ident, $reg:literal) => {
        fn $name(memory: u64, accumulator: u64, source: u64, flags: u64) -> (u64, u64, u64) {
            let mut memory = memory as $ty;
            let mut flags = flags;
            let mut rax = accumulator;
            // SAFETY: as in `binary`; RAX is declared in and out.
            unsafe {
                asm!(
                    "push {flags}",
                    "popfq",
                    concat!("lock cmpxchg ", $ptr, " ptr [{memory}], {source", $reg, "}"),
                    "pushfq",
                    "pop {flags}",
                    flags = inout(reg) flags,
                    memory = in(reg) &mut memory,
                    source = in($class) source as $ty,
                    inout("rax") rax,
                );
            }
            (memory as u64, rax, flags)
        }
    };
}

#[test]
fn cmpxchg_agrees_with_the_cpu() {
    cmpxchg_host!(b, u8, "byte", reg_byte, "");
    cmpxchg_host!(w, u16, "word", reg, ":x");
    cmpxchg_host!(d, u32, "dword", reg, ":e");
    cmpxchg_host!(q, u64, "qword", reg, ":r");
    let hosts: [CmpxchgHost; 4] = [b, w, d, q];
    let mut rng = Rng::new(0xc3c3);
    for (size, host) in SIZES.into_iter().zip(hosts) {
        for _ in 0..cases() {
            let memory = operand(&mut rng) & mask(size);
            // Equal half of the time; the accumulator's upper bits vary either way.
            let accumulator = if rng.chance(2) { (rng.next_u64() & !mask(size)) | memory } else { operand(&mut rng) };
            let (source, flags) = (operand(&mut rng), flags_in(&mut rng));
            let (host_memory, host_rax, host_flags) = host(memory, accumulator, source, flags);
            let ours = cmpxchg(size, memory, accumulator, source, flags);
            // The accumulator is written as a register of the operand size is.
            let rax =
                ours.accumulator.map_or(accumulator, |v| arch::decode::merge_register(accumulator, v, size, false));
            let context = format!("size {size}: memory {memory:#x}, RAX {accumulator:#x}, source {source:#x}");
            assert_eq!(ours.memory, host_memory, "{context}: memory");
            assert_eq!(rax, host_rax, "{context}: RAX");
            assert_eq!(ours.rflags & STATUS_FLAGS, host_flags & STATUS_FLAGS, "{context}: flags");
        }
    }
}

/// `bt.. size ptr [mem], reg` with an offset inside the operand (one beyond
/// it would address other memory, which the emulator leaves to the exit's
/// address: see `Operation::BitTest`).
macro_rules! bit_host {
    ($name:ident, $mnemonic:literal, $ty:ty, $ptr:literal, $reg:literal) => {
        fn $name(memory: u64, offset: u64, flags: u64) -> (u64, u64) {
            let mut memory = memory as $ty;
            let mut flags = flags;
            // SAFETY: as in `binary`; the offset is below the operand's width,
            // so only `memory` is accessed.
            unsafe {
                asm!(
                    "push {flags}",
                    "popfq",
                    concat!($mnemonic, " ", $ptr, " ptr [{memory}], {offset", $reg, "}"),
                    "pushfq",
                    "pop {flags}",
                    flags = inout(reg) flags,
                    memory = in(reg) &mut memory,
                    offset = in(reg) offset as $ty,
                );
            }
            (memory as u64, flags)
        }
    };
}

macro_rules! bit_sizes {
    ($mnemonic:literal) => {{
        bit_host!(w, $mnemonic, u16, "word", ":x");
        bit_host!(d, $mnemonic, u32, "dword", ":e");
        bit_host!(q, $mnemonic, u64, "qword", ":r");
        [w as Host, d, q]
    }};
}

#[test]
fn bit_tests_agree_with_the_cpu() {
    let table: [(BitOp, [Host; 3]); 4] = [
        (BitOp::Bt, bit_sizes!("bt")),
        (BitOp::Bts, bit_sizes!("bts")),
        (BitOp::Btr, bit_sizes!("btr")),
        (BitOp::Btc, bit_sizes!("btc")),
    ];
    let mut rng = Rng::new(0xb17);
    for (op, hosts) in table {
        for (size, host) in [2u8, 4, 8].into_iter().zip(hosts) {
            for _ in 0..cases() {
                let memory = operand(&mut rng) & mask(size);
                let (offset, flags) = (rng.below(8 * size as u64), flags_in(&mut rng));
                let (host_memory, host_flags) = host(memory, offset, flags);
                let (value, ours) = bit_test(op, size, memory, offset, flags);
                let context = format!("{op:?} size {size}: {memory:#x} bit {offset}, flags {flags:#x}");
                assert_eq!(value, host_memory, "{context}: memory");
                assert_eq!(ours & BitOp::DEFINED_FLAGS, host_flags & BitOp::DEFINED_FLAGS, "{context}: flags");
            }
        }
    }
}
