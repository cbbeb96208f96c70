//! Decoding the guest instruction behind an MMIO exit. EPT violations and
//! nested page faults say which address was touched but not how; `decode`
//! says what the instruction does there: its operation, the size of each
//! memory access, its register and immediate operands and its length. It is
//! a pure description; `vmexit`'s MMIO handler carries it out (ALU results and
//! flags come from `alu`).
//!
//! The instructions decoded are those compilers and drivers use on memory:
//!
//! | class | opcodes |
//! |---|---|
//! | MOV | 88-8B, C6 /0, C7 /0, A0-A3 (moffs) |
//! | MOVZX, MOVSX, MOVSXD | 0F B6, 0F B7, 0F BE, 0F BF, 63 (64-bit mode; elsewhere ARPL) |
//! | ADD OR ADC SBB AND SUB XOR CMP | 00-3B (both directions), 80, 81, 83, 82 (not in 64-bit mode) |
//! | TEST, NOT, NEG | 84, 85, F6/F7 /0 /1 /2 /3 |
//! | INC, DEC | FE /0 /1, FF /0 /1 |
//! | XCHG, CMPXCHG | 86, 87, 0F B0, 0F B1 |
//! | BT BTS BTR BTC | 0F A3, 0F AB, 0F B3, 0F BB (register offset), 0F BA /4-/7 (imm8) |
//! | PUSH, POP of memory | FF /6, 8F /0 |
//! | MOVS, STOS, LODS (REP too) | A4, A5, AA, AB, AC, AD |
//!
//! LOCK is accepted where the CPU accepts it (a memory destination that is
//! read and written: the ALU group but CMP and TEST, XCHG, CMPXCHG, BTS, BTR,
//! BTC) and `Invalid` elsewhere, as the CPU's #UD.
//!
//! The instructions an SVM VMM intercepts and must step over, or whose control
//! register it must find, when the CPU does not say (no NRIP save, no decode
//! assists) are decoded in `intercepted`, with the prefixes read here.

// Every value here comes from a hostile guest: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

mod intercepted;

use crate::alu::{sign_extend, AluOp, BitOp};
pub use intercepted::{decode_cr_access, intercepted_length, CrInstruction, MovCr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSize {
    Bits16,
    Bits32,
    Bits64,
}

/// A general register as an instruction names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// 0 = RAX ... 15 = R15 (the `vmx::GuestRegisters::get` numbering).
    pub index: u8,
    /// AH/CH/DH/BH: bits 15:8 of register `index`.
    pub high_byte: bool,
}

/// The operand an instruction combines with memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// Its low `size` bytes (`size` of the instruction).
    Register(Register),
    /// Already extended to the operand size as the CPU extends it: a value
    /// of `size` bytes, or for 8-byte operands a sign-extended 32-bit one. The
    /// bit offset of BT.. imm8 is the raw byte.
    Immediate(u64),
}

/// What an instruction does with the memory it accesses (`size` bytes at the
/// exit's address unless said otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// MOV r, m; MOVZX; MOVSX; MOVSXD; MOV AL/eAX, moffs: load, zero- or
    /// sign-extend to `width` bytes and write `dest` as the CPU writes a
    /// register of that width (`merge_register`).
    Load { dest: Register, width: u8, sign_extend: bool },
    /// MOV m, r; MOV m, imm; MOV moffs, AL/eAX.
    Store { source: Operand },
    /// `m = m op source` (ADD m, r; ADD m, imm; TEST m, r; NOT m; INC m ...):
    /// one read, then one write unless `op` is CMP or TEST. `source` is None
    /// for NOT, NEG, INC and DEC.
    Alu { op: AluOp, source: Option<Operand> },
    /// `dest = dest op m` (ADD r, m ...): one read; CMP writes no register.
    AluToRegister { op: AluOp, dest: Register },
    /// XCHG m, r: a read, then the register written to memory.
    Xchg { register: Register },
    /// CMPXCHG m, r against the accumulator (AL/AX/EAX/RAX).
    Cmpxchg { source: Register },
    /// BT, BTS, BTR, BTC. A register offset is signed and may select another
    /// operand than the one the ModRM names; the CPU has then already
    /// accessed that one, so the exit's address is it, and the offset's low
    /// bits (modulo the operand's width) pick the bit. An immediate offset is
    /// taken modulo the width.
    BitTest { op: BitOp, offset: Operand },
    /// PUSH m: `size` bytes read, then stored at the new top of the stack.
    Push,
    /// POP m: `size` bytes from the top of the stack stored to memory.
    Pop,
    /// MOVS, STOS, LODS with elements of `size` bytes; with REP (F3, and F2,
    /// which the CPU takes as REP for these), RCX elements.
    String { op: StringOp, rep: bool, address_bytes: u8, segment: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringOp {
    /// [ES:RDI] = [segment:RSI]
    Movs,
    /// [ES:RDI] = AL/AX/EAX/RAX
    Stos,
    /// AL/AX/EAX/RAX = [segment:RSI]
    Lods,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioInstruction {
    pub length: u8,
    /// Bytes of each memory access: 1, 2, 4 or 8.
    pub size: u8,
    pub operation: Operation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Ran out of bytes: the fetch was cut short. `decode` says this too of an
    /// instruction longer than the 15 bytes a CPU accepts; the decoders of
    /// intercepted instructions say `Invalid` of one (the CPU raises #GP).
    Truncated,
    /// An instruction Basalt does not emulate against MMIO.
    Unsupported { opcode: u8 },
    /// The ModRM names a register, not memory, so it cannot be this access.
    NotMemory,
    /// Bytes the CPU would refuse: with #UD (LOCK where it is not allowed,
    /// C6/C7 with ModRM.reg other than 0, a CR that does not exist) or, as the
    /// decoders of intercepted instructions see it, with #GP for a length over
    /// 15. The exit cannot have come from them as they stand, so emulating them
    /// would do what the guest's CPU never would.
    Invalid,
}

/// What a string I/O instruction (INS, OUTS) works with, from its bytes:
/// for a CPU that reports a port access but not the operands' address size
/// or segment (SVM without decode assists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIo {
    /// 2, 4 or 8: the width of RSI/RDI/RCX the instruction uses.
    pub address_bytes: u8,
    /// The segment OUTS reads through (ES = 0 … GS = 5): DS unless
    /// overridden. INS always writes through ES, whatever the prefixes.
    pub segment: u8,
    pub length: u8,
}

/// INS (6C, 6D) or OUTS (6E, 6F) with its prefixes.
pub fn decode_string_io(bytes: &[u8], mode: CodeSize) -> Result<StringIo, DecodeError> {
    let mut c = Cursor::new(bytes);
    let (p, opcode) = Prefixes::read(&mut c, mode)?;
    if !matches!(opcode, 0x6c..=0x6f) {
        return Err(DecodeError::Unsupported { opcode });
    }
    if p.lock {
        return Err(DecodeError::Invalid);
    }
    const DS: u8 = 3;
    Ok(StringIo {
        address_bytes: address_bytes(mode, p.address_override),
        segment: p.segment.unwrap_or(DS),
        length: c.at as u8,
    })
}

/// The most bytes an instruction may have; a longer one raises #GP.
const MAX_LENGTH: usize = 15;

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Over the first `MAX_LENGTH` of `bytes`: no instruction reads beyond.
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes: &bytes[..bytes.len().min(MAX_LENGTH)], at: 0 }
    }
    fn next(&mut self) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.at).ok_or(DecodeError::Truncated)?;
        self.at = self.at.saturating_add(1);
        Ok(b)
    }
    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                self.at = end;
                Ok(())
            }
            _ => Err(DecodeError::Truncated),
        }
    }
    fn immediate(&mut self, n: usize) -> Result<u64, DecodeError> {
        let mut bytes = [0u8; 8];
        for byte in bytes.iter_mut().take(n) {
            *byte = self.next()?;
        }
        Ok(u64::from_le_bytes(bytes))
    }
}

/// The prefixes before an opcode, as the CPU reads them.
#[derive(Clone, Copy, Default)]
struct Prefixes {
    /// 66
    operand16: bool,
    /// 67
    address_override: bool,
    /// F0
    lock: bool,
    /// The last of F2 and F3, which is the one that selects an instruction
    /// (F3 0F 09 is WBNOINVD), or 0.
    repeat: u8,
    /// The REX prefix that counts, or 0: only in 64-bit mode, and only right
    /// before the opcode (the CPU ignores one that a legacy prefix follows;
    /// of two, the last counts).
    rex: u8,
    /// The last segment override (26, 2E, 36, 3E, 64, 65) as its 3-bit
    /// segment number (ES = 0 … GS = 5); in 64-bit mode the last FS or GS
    /// one if there is one.
    segment: Option<u8>,
}

impl Prefixes {
    /// Reads the prefixes at the cursor; returns them and the byte after them.
    fn read(c: &mut Cursor<'_>, mode: CodeSize) -> Result<(Self, u8), DecodeError> {
        let mut p = Prefixes::default();
        let mut byte = c.next()?;
        loop {
            match byte {
                0x66 => p.operand16 = true,
                0x67 => p.address_override = true,
                0xf0 => p.lock = true,
                0xf2 | 0xf3 => p.repeat = byte,
                // In 64-bit mode the CPU ignores ES, CS, SS and DS overrides:
                // one of them does not undo an FS or GS override before it.
                0x26 | 0x2e | 0x36 | 0x3e => {
                    if mode != CodeSize::Bits64 || !matches!(p.segment, Some(4 | 5)) {
                        p.segment = Some((byte >> 3) & 3);
                    }
                }
                0x64 => p.segment = Some(4),
                0x65 => p.segment = Some(5),
                0x40..=0x4f if mode == CodeSize::Bits64 => {
                    p.rex = byte;
                    byte = c.next()?;
                    continue;
                }
                _ => return Ok((p, byte)),
            }
            p.rex = 0;
            byte = c.next()?;
        }
    }
}

/// The width of RSI, RDI and RCX (and of a ModRM address) in `mode` with or
/// without the 67 prefix.
fn address_bytes(mode: CodeSize, address_override: bool) -> u8 {
    match (mode, address_override) {
        (CodeSize::Bits16, false) | (CodeSize::Bits32, true) => 2,
        (CodeSize::Bits64, false) => 8,
        _ => 4,
    }
}

/// What the ModRM's reg field and the opcode make of an instruction with a
/// ModRM byte: its memory access size, operation and immediate, and whether
/// LOCK may precede it.
struct Form {
    size: u8,
    operation: Operation,
    immediate: Immediate,
    lockable: bool,
}

/// The immediate after the ModRM, SIB and displacement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Immediate {
    None,
    /// One byte, taken as it is (an 8-bit operand, or BT's bit offset).
    Byte,
    /// One byte sign-extended to the operand size (83).
    SignedByte,
    /// 2 bytes for 16-bit operands, else 4, sign-extended for 8-byte ones.
    Full,
}

/// Decodes the instruction at the start of `bytes` (fetched at the guest's
/// CS:RIP; at most 15 looked at) that accessed device memory, in `mode`.
pub fn decode(bytes: &[u8], mode: CodeSize) -> Result<MmioInstruction, DecodeError> {
    let mut c = Cursor::new(bytes);
    let (p, first) = Prefixes::read(&mut c, mode)?;
    let rex = p.rex;
    let rex_w = rex & 8 != 0;
    let operand_size: u8 = match (mode, p.operand16, rex_w) {
        (CodeSize::Bits64, _, true) => 8,
        (CodeSize::Bits16, false, _) | (CodeSize::Bits32 | CodeSize::Bits64, true, _) => 2,
        _ => 4,
    };
    let address_size = address_bytes(mode, p.address_override);
    // A REX prefix (any) makes 4-7 of a byte register SPL..DIL, not AH..BH.
    let register = |index: u8, byte: bool| {
        if byte && rex == 0 && (4..8).contains(&index) {
            Register { index: index & 3, high_byte: true }
        } else {
            Register { index, high_byte: false }
        }
    };
    let unlocked = || if p.lock { Err(DecodeError::Invalid) } else { Ok(()) };
    let rax = Register { index: 0, high_byte: false };

    let two_byte = first == 0x0f;
    let opcode = if two_byte { c.next()? } else { first };
    let byte_op = opcode & 1 == 0;
    if !two_byte {
        match opcode {
            // MOV AL/eAX <-> moffs: no ModRM, an address-size offset.
            0xa0..=0xa3 => {
                unlocked()?;
                c.skip(address_size as usize)?;
                let size = if byte_op { 1 } else { operand_size };
                let operation = if opcode < 0xa2 {
                    Operation::Load { dest: rax, width: size, sign_extend: false }
                } else {
                    Operation::Store { source: Operand::Register(rax) }
                };
                return Ok(MmioInstruction { length: c.at as u8, size, operation });
            }
            // MOVS, STOS, LODS: the operands are implied (RSI, RDI, RAX).
            0xa4 | 0xa5 | 0xaa..=0xad => {
                unlocked()?;
                let op = match opcode {
                    0xa4 | 0xa5 => StringOp::Movs,
                    0xaa | 0xab => StringOp::Stos,
                    _ => StringOp::Lods,
                };
                const ES: u8 = 0;
                const DS: u8 = 3;
                // STOS reads no memory; its destination is ES whatever the prefixes.
                let segment = if op == StringOp::Stos { ES } else { p.segment.unwrap_or(DS) };
                let operation = Operation::String { op, rep: p.repeat != 0, address_bytes: address_size, segment };
                let size = if byte_op { 1 } else { operand_size };
                return Ok(MmioInstruction { length: c.at as u8, size, operation });
            }
            _ => {}
        }
    }
    let known = if two_byte {
        matches!(opcode, 0xa3 | 0xab | 0xb3 | 0xbb | 0xba | 0xb0 | 0xb1 | 0xb6 | 0xb7 | 0xbe | 0xbf)
    } else {
        matches!(opcode, 0x00..=0x3f if opcode & 7 < 4)
            || matches!(opcode, 0x63 | 0x80..=0x8b | 0x8f | 0xc6 | 0xc7 | 0xf6 | 0xf7 | 0xfe | 0xff)
    };
    if !known {
        return Err(DecodeError::Unsupported { opcode });
    }

    let modrm = c.next()?;
    let (md, group, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    let reg = group | ((rex & 4) << 1);
    let Form { size, operation, immediate, lockable } = form(two_byte, opcode, group, mode, |byte| {
        let size = if byte { 1 } else { operand_size };
        (size, register(reg, byte))
    })?;
    if md == 3 {
        return Err(DecodeError::NotMemory);
    }
    if p.lock && !lockable {
        return Err(DecodeError::Invalid);
    }
    // Skip SIB and displacement.
    if address_size == 2 {
        match md {
            0 if rm == 6 => c.skip(2)?,
            1 => c.skip(1)?,
            2 => c.skip(2)?,
            _ => {}
        }
    } else {
        let mut base = rm;
        if rm == 4 {
            base = c.next()? & 7;
        }
        match md {
            0 if base == 5 => c.skip(4)?,
            1 => c.skip(1)?,
            2 => c.skip(4)?,
            _ => {}
        }
    }
    let value = match immediate {
        Immediate::None => None,
        Immediate::Byte => Some(c.immediate(1)?),
        Immediate::SignedByte => Some(sign_extend(c.immediate(1)?, 1) & mask(size)),
        Immediate::Full => {
            let n = size.min(4);
            let value = c.immediate(n as usize)?;
            Some(if size == 8 { sign_extend(value, 4) } else { value })
        }
    };
    let operation = match (operation, value) {
        (Operation::Alu { op, .. }, Some(v)) => Operation::Alu { op, source: Some(Operand::Immediate(v)) },
        (Operation::Store { .. }, Some(v)) => Operation::Store { source: Operand::Immediate(v) },
        (Operation::BitTest { op, .. }, Some(v)) => Operation::BitTest { op, offset: Operand::Immediate(v) },
        (operation, _) => operation,
    };
    Ok(MmioInstruction { length: c.at as u8, size, operation })
}

/// All-ones in the low `size` bytes.
fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The operation of an opcode with a ModRM byte whose reg field is `group`
/// (part of the opcode for 80-83, 8F, C6, C7, F6, F7, FE, FF and 0F BA).
/// `operand(byte)` gives the memory access size and the register ModRM.reg
/// names, for a byte operation or not. An immediate operand is left as
/// `Immediate(0)` for the caller to read.
fn form(
    two_byte: bool,
    opcode: u8,
    group: u8,
    mode: CodeSize,
    operand: impl Fn(bool) -> (u8, Register),
) -> Result<Form, DecodeError> {
    let byte_op = opcode & 1 == 0;
    let (size, register) = operand(byte_op);
    let placeholder = Some(Operand::Immediate(0));
    let plain = |size, operation| Form { size, operation, immediate: Immediate::None, lockable: false };
    let alu = |op: AluOp, size, source, immediate| Form {
        size,
        operation: Operation::Alu { op, source },
        immediate,
        lockable: op.lockable(),
    };
    let long = mode == CodeSize::Bits64;
    if two_byte {
        let bit_op = |offset| {
            let op = match (opcode, group) {
                (0xa3, _) | (0xba, 4) => BitOp::Bt,
                (0xab, _) | (0xba, 5) => BitOp::Bts,
                (0xb3, _) | (0xba, 6) => BitOp::Btr,
                _ => BitOp::Btc,
            };
            let (size, _) = operand(false);
            let immediate = if opcode == 0xba { Immediate::Byte } else { Immediate::None };
            Form { size, operation: Operation::BitTest { op, offset }, immediate, lockable: op.writes_result() }
        };
        return Ok(match opcode {
            0xa3 | 0xab | 0xb3 | 0xbb => bit_op(Operand::Register(operand(false).1)),
            0xba if group >= 4 => bit_op(Operand::Immediate(0)),
            0xba => return Err(DecodeError::Invalid),
            0xb0 | 0xb1 => Form {
                size,
                operation: Operation::Cmpxchg { source: register },
                immediate: Immediate::None,
                lockable: true,
            },
            // MOVZX, MOVSX: the source is a byte (B6, BE) or a word (B7, BF),
            // the destination the operand size; never a high-byte register.
            _ => {
                let (width, dest) = operand(false);
                let size = if byte_op { 1 } else { 2 };
                plain(size, Operation::Load { dest, width, sign_extend: opcode >= 0xbe })
            }
        });
    }
    Ok(match opcode {
        // The ALU group's classic forms: bit 1 says a register is the
        // destination, bit 0 a full-size operand.
        0x00..=0x3f => {
            let op = AluOp::from_group1(opcode >> 3);
            if opcode & 2 == 0 {
                alu(op, size, Some(Operand::Register(register)), Immediate::None)
            } else {
                plain(size, Operation::AluToRegister { op, dest: register })
            }
        }
        // MOVSXD (64-bit mode only; elsewhere 63 is ARPL): a doubleword sign-
        // extended into a 64-bit register, or without REX.W a plain load.
        0x63 if long => {
            let (width, dest) = operand(false);
            plain(width.min(4), Operation::Load { dest, width, sign_extend: true })
        }
        0x63 => return Err(DecodeError::Unsupported { opcode }),
        // 82 is 80 outside 64-bit mode; in it, #UD.
        0x82 if long => return Err(DecodeError::Invalid),
        0x80 | 0x82 => alu(AluOp::from_group1(group), 1, placeholder, Immediate::Byte),
        0x81 => alu(AluOp::from_group1(group), size, placeholder, Immediate::Full),
        0x83 => alu(AluOp::from_group1(group), size, placeholder, Immediate::SignedByte),
        // TEST m, r writes nothing, so it cannot be locked.
        0x84 | 0x85 => alu(AluOp::Test, size, Some(Operand::Register(register)), Immediate::None),
        0x86 | 0x87 => Form { lockable: true, ..plain(size, Operation::Xchg { register }) },
        0x88 | 0x89 => plain(size, Operation::Store { source: Operand::Register(register) }),
        0x8a | 0x8b => plain(size, Operation::Load { dest: register, width: size, sign_extend: false }),
        // POP m and PUSH m move the stack's operand size: 8 bytes in 64-bit
        // mode (2 with 66; a 4-byte push does not exist there).
        0x8f if group == 0 => plain(stack_size(size, long), Operation::Pop),
        0xff if group == 6 => plain(stack_size(size, long), Operation::Push),
        // In C6/C7 ModRM.reg is part of the opcode, and only /0 is a MOV.
        0xc6 | 0xc7 if group == 0 => {
            let immediate = if byte_op { Immediate::Byte } else { Immediate::Full };
            Form { immediate, ..plain(size, Operation::Store { source: Operand::Immediate(0) }) }
        }
        0xf6 | 0xf7 => {
            let immediate = if byte_op { Immediate::Byte } else { Immediate::Full };
            match group {
                // F6/F7 /1 is the CPU's alias of /0.
                0 | 1 => alu(AluOp::Test, size, placeholder, immediate),
                2 => alu(AluOp::Not, size, None, Immediate::None),
                3 => alu(AluOp::Neg, size, None, Immediate::None),
                // MUL, IMUL, DIV, IDIV.
                _ => return Err(DecodeError::Unsupported { opcode }),
            }
        }
        0xfe | 0xff if group < 2 => {
            let op = if group == 0 { AluOp::Inc } else { AluOp::Dec };
            alu(op, size, None, Immediate::None)
        }
        // CALL, CALLF, JMP, JMPF through memory.
        0xff if group < 6 => return Err(DecodeError::Unsupported { opcode }),
        // 8F /1-/7 (XOP on AMD), C6/C7 /1-/7, FE /2-/7, FF /7.
        _ => return Err(DecodeError::Invalid),
    })
}

/// The bytes PUSH and POP move for an operand size: in 64-bit mode 8 unless
/// 66 makes it 2.
fn stack_size(operand_size: u8, long: bool) -> u8 {
    if long && operand_size == 4 {
        8
    } else {
        operand_size
    }
}

/// `old` with a value of `width` bytes written the way the CPU writes a register:
/// 1 and 2 bytes merge, 4 bytes zero-extend, 8 bytes replace.
pub fn merge_register(old: u64, value: u64, width: u8, high_byte: bool) -> u64 {
    match (width, high_byte) {
        (1, true) => (old & !0xff00) | ((value & 0xff) << 8),
        (1, false) => (old & !0xff) | (value & 0xff),
        (2, _) => (old & !0xffff) | (value & 0xffff),
        (4, _) => value & 0xffff_ffff,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CodeSize::*;

    fn reg(index: u8) -> Register {
        Register { index, high_byte: false }
    }

    #[test]
    fn common_64_bit_forms() {
        // mov dword [rdi+0x10], eax
        assert_eq!(
            decode(&[0x89, 0x47, 0x10], Bits64),
            Ok(MmioInstruction {
                length: 3,
                size: 4,
                operation: Operation::Store { source: Operand::Register(reg(0)) }
            })
        );
        // mov rcx, qword [rax]
        assert_eq!(
            decode(&[0x48, 0x8b, 0x08], Bits64),
            Ok(MmioInstruction {
                length: 3,
                size: 8,
                operation: Operation::Load { dest: reg(1), width: 8, sign_extend: false }
            })
        );
        // mov r9d, [rip+0x1234]
        assert_eq!(
            decode(&[0x44, 0x8b, 0x0d, 0x34, 0x12, 0, 0], Bits64).unwrap(),
            MmioInstruction {
                length: 7,
                size: 4,
                operation: Operation::Load { dest: reg(9), width: 4, sign_extend: false }
            }
        );
        // mov dword [rbx+rcx*4+0x100], 0xdeadbeef
        assert_eq!(
            decode(&[0xc7, 0x84, 0x8b, 0, 1, 0, 0, 0xef, 0xbe, 0xad, 0xde], Bits64),
            Ok(MmioInstruction {
                length: 11,
                size: 4,
                operation: Operation::Store { source: Operand::Immediate(0xdead_beef) }
            })
        );
        // mov qword [rax], -1 (imm32 sign-extended)
        assert_eq!(
            decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], Bits64).unwrap().operation,
            Operation::Store { source: Operand::Immediate(u64::MAX) }
        );
        // movzx eax, word [rdx]
        assert_eq!(
            decode(&[0x0f, 0xb7, 0x02], Bits64),
            Ok(MmioInstruction {
                length: 3,
                size: 2,
                operation: Operation::Load { dest: reg(0), width: 4, sign_extend: false }
            })
        );
        // mov word [rax], cx
        assert_eq!(decode(&[0x66, 0x89, 0x08], Bits64).unwrap().size, 2);
    }

    #[test]
    fn byte_registers_with_and_without_rex() {
        // mov [rax], ah
        assert_eq!(
            decode(&[0x88, 0x20], Bits64).unwrap().operation,
            Operation::Store { source: Operand::Register(Register { index: 0, high_byte: true }) }
        );
        // mov [rax], spl (REX makes 4 mean SPL, not AH)
        assert_eq!(
            decode(&[0x40, 0x88, 0x20], Bits64).unwrap().operation,
            Operation::Store { source: Operand::Register(reg(4)) }
        );
        // mov r8b, [rax]
        assert_eq!(
            decode(&[0x44, 0x8a, 0x00], Bits64).unwrap().operation,
            Operation::Load { dest: reg(8), width: 1, sign_extend: false }
        );
    }

    #[test]
    fn sixteen_and_thirty_two_bit_addressing() {
        // real mode: mov [0x1234], ax  (mod 00 rm 110 -> disp16)
        assert_eq!(
            decode(&[0x89, 0x06, 0x34, 0x12], Bits16),
            Ok(MmioInstruction {
                length: 4,
                size: 2,
                operation: Operation::Store { source: Operand::Register(reg(0)) }
            })
        );
        // real mode with 0x66: mov eax, [bx+si+0x10]
        assert_eq!(
            decode(&[0x66, 0x8b, 0x40, 0x10], Bits16).unwrap(),
            MmioInstruction {
                length: 4,
                size: 4,
                operation: Operation::Load { dest: reg(0), width: 4, sign_extend: false }
            }
        );
        // protected mode: mov byte [0xfee000b0], 0
        assert_eq!(
            decode(&[0xc6, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0x00], Bits32).unwrap(),
            MmioInstruction { length: 7, size: 1, operation: Operation::Store { source: Operand::Immediate(0) } }
        );
        // mov eax, [moffs32]
        assert_eq!(
            decode(&[0xa1, 0, 0, 0xc0, 0xfe], Bits32).unwrap(),
            MmioInstruction {
                length: 5,
                size: 4,
                operation: Operation::Load { dest: reg(0), width: 4, sign_extend: false }
            }
        );
        // 64-bit moffs has an 8-byte offset
        assert_eq!(decode(&[0xa2, 0, 0, 0, 0, 0, 0, 0, 0], Bits64).unwrap().length, 9);
    }

    fn imm(value: u64) -> Option<Operand> {
        Some(Operand::Immediate(value))
    }

    #[test]
    fn the_alu_group_in_each_direction() {
        let decoded = |bytes: &[u8], mode| decode(bytes, mode).map(|d| (d.length, d.size, d.operation));
        // add [rax], ecx; or cl, [rbx]; lock sub qword [rip+0], r9
        assert_eq!(
            decoded(&[0x01, 0x08], Bits64),
            Ok((2, 4, Operation::Alu { op: AluOp::Add, source: Some(Operand::Register(reg(1))) }))
        );
        assert_eq!(
            decoded(&[0x0a, 0x0b], Bits32),
            Ok((2, 1, Operation::AluToRegister { op: AluOp::Or, dest: reg(1) }))
        );
        assert_eq!(
            decoded(&[0xf0, 0x4c, 0x29, 0x0d, 0, 0, 0, 0], Bits64),
            Ok((8, 8, Operation::Alu { op: AluOp::Sub, source: Some(Operand::Register(reg(9))) }))
        );
        // and dword [ebx], 0xfffffff0 as 83 /4 ib; cmp word [bx], 0x1234; adc byte [eax], 0x80
        assert_eq!(
            decoded(&[0x83, 0x23, 0xf0], Bits32),
            Ok((3, 4, Operation::Alu { op: AluOp::And, source: imm(0xffff_fff0) }))
        );
        assert_eq!(
            decoded(&[0x81, 0x3f, 0x34, 0x12], Bits16),
            Ok((4, 2, Operation::Alu { op: AluOp::Cmp, source: imm(0x1234) }))
        );
        assert_eq!(
            decoded(&[0x80, 0x10, 0x80], Bits32),
            Ok((3, 1, Operation::Alu { op: AluOp::Adc, source: imm(0x80) }))
        );
        // or qword [rax], -2: imm32 sign-extended to 64 bits
        assert_eq!(
            decode(&[0x48, 0x81, 0x08, 0xfe, 0xff, 0xff, 0xff], Bits64).unwrap().operation,
            Operation::Alu { op: AluOp::Or, source: imm(u64::MAX - 1) }
        );
        // test byte [rax], 1; not dword [rax]; neg word [rax]; inc byte [rax]; dec qword [rax]
        assert_eq!(
            decoded(&[0xf6, 0x00, 0x01], Bits64),
            Ok((3, 1, Operation::Alu { op: AluOp::Test, source: imm(1) }))
        );
        assert_eq!(decoded(&[0xf7, 0x10], Bits64), Ok((2, 4, Operation::Alu { op: AluOp::Not, source: None })));
        assert_eq!(decoded(&[0x66, 0xf7, 0x18], Bits64), Ok((3, 2, Operation::Alu { op: AluOp::Neg, source: None })));
        assert_eq!(decoded(&[0xfe, 0x00], Bits64), Ok((2, 1, Operation::Alu { op: AluOp::Inc, source: None })));
        assert_eq!(decoded(&[0x48, 0xff, 0x08], Bits64), Ok((3, 8, Operation::Alu { op: AluOp::Dec, source: None })));
        // CMP, TEST and the register-destination forms cannot be locked.
        assert_eq!(decode(&[0xf0, 0x39, 0x00], Bits64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0xf0, 0x85, 0x00], Bits64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0xf0, 0x03, 0x00], Bits64), Err(DecodeError::Invalid));
        // MUL, CALL through memory: not emulated. FE /2, FF /7: no instruction.
        assert_eq!(decode(&[0xf7, 0x20], Bits64), Err(DecodeError::Unsupported { opcode: 0xf7 }));
        assert_eq!(decode(&[0xff, 0x10], Bits64), Err(DecodeError::Unsupported { opcode: 0xff }));
        assert_eq!(decode(&[0xfe, 0x10], Bits64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0xff, 0x38], Bits64), Err(DecodeError::Invalid));
        // 82 is 80 outside 64-bit mode only.
        assert_eq!(decode(&[0x82, 0x00, 1], Bits32).map(|d| d.length), Ok(3));
        assert_eq!(decode(&[0x82, 0x00, 1], Bits64), Err(DecodeError::Invalid));
    }

    #[test]
    fn exchanges_bit_tests_and_extensions() {
        let operation = |bytes: &[u8], mode| decode(bytes, mode).map(|d| (d.size, d.operation));
        // lock xchg [rax], bh; lock cmpxchg [rax], ecx; cmpxchg [rax], r8
        assert_eq!(
            operation(&[0xf0, 0x86, 0x38], Bits64),
            Ok((1, Operation::Xchg { register: Register { index: 3, high_byte: true } }))
        );
        assert_eq!(operation(&[0xf0, 0x0f, 0xb1, 0x08], Bits64), Ok((4, Operation::Cmpxchg { source: reg(1) })));
        assert_eq!(operation(&[0x4c, 0x0f, 0xb1, 0x00], Bits64), Ok((8, Operation::Cmpxchg { source: reg(8) })));
        // bt [rax], ecx; lock bts dword [rax], 33; btr word [bx], 3; BT cannot be locked
        assert_eq!(
            operation(&[0x0f, 0xa3, 0x08], Bits64),
            Ok((4, Operation::BitTest { op: BitOp::Bt, offset: Operand::Register(reg(1)) }))
        );
        assert_eq!(
            operation(&[0xf0, 0x0f, 0xba, 0x28, 33], Bits64),
            Ok((4, Operation::BitTest { op: BitOp::Bts, offset: Operand::Immediate(33) }))
        );
        assert_eq!(
            operation(&[0x0f, 0xba, 0x37, 3], Bits16),
            Ok((2, Operation::BitTest { op: BitOp::Btr, offset: Operand::Immediate(3) }))
        );
        assert_eq!(decode(&[0xf0, 0x0f, 0xa3, 0x08], Bits64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0x0f, 0xba, 0x08, 1], Bits64), Err(DecodeError::Invalid));
        // movsx ecx, byte [rax]; movsx rax, word [rax]; movsxd rax, dword [rax]; 63 is ARPL in 32-bit mode
        assert_eq!(
            operation(&[0x0f, 0xbe, 0x08], Bits64),
            Ok((1, Operation::Load { dest: reg(1), width: 4, sign_extend: true }))
        );
        assert_eq!(
            operation(&[0x48, 0x0f, 0xbf, 0x00], Bits64),
            Ok((2, Operation::Load { dest: reg(0), width: 8, sign_extend: true }))
        );
        assert_eq!(
            operation(&[0x48, 0x63, 0x00], Bits64),
            Ok((4, Operation::Load { dest: reg(0), width: 8, sign_extend: true }))
        );
        assert_eq!(decode(&[0x63, 0x00], Bits32), Err(DecodeError::Unsupported { opcode: 0x63 }));
    }

    #[test]
    fn stack_and_string_operations() {
        let operation = |bytes: &[u8], mode| decode(bytes, mode).map(|d| (d.length, d.size, d.operation));
        // push qword [rax]; push word [rax]; pop dword [eax]; push word [bx]; 8F /1 is no POP
        assert_eq!(operation(&[0xff, 0x30], Bits64), Ok((2, 8, Operation::Push)));
        assert_eq!(operation(&[0x66, 0xff, 0x30], Bits64), Ok((3, 2, Operation::Push)));
        assert_eq!(operation(&[0x48, 0x8f, 0x00], Bits64), Ok((3, 8, Operation::Pop)));
        assert_eq!(operation(&[0x8f, 0x00], Bits32), Ok((2, 4, Operation::Pop)));
        assert_eq!(operation(&[0xff, 0x37], Bits16), Ok((2, 2, Operation::Push)));
        assert_eq!(decode(&[0x8f, 0x08], Bits32), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0xf0, 0xff, 0x30], Bits64), Err(DecodeError::Invalid));
        // rep movsd in 32-bit code; fs movsb with 32-bit addresses in 64-bit code;
        // stos always through ES; lodsq
        let string = |op, rep, address_bytes, segment| Operation::String { op, rep, address_bytes, segment };
        assert_eq!(operation(&[0xf3, 0xa5], Bits32), Ok((2, 4, string(StringOp::Movs, true, 4, 3))));
        assert_eq!(operation(&[0x64, 0x67, 0xa4], Bits64), Ok((3, 1, string(StringOp::Movs, false, 4, 4))));
        assert_eq!(operation(&[0x64, 0xf2, 0x66, 0xab], Bits16), Ok((4, 4, string(StringOp::Stos, true, 2, 0))));
        assert_eq!(operation(&[0x48, 0xad], Bits64), Ok((2, 8, string(StringOp::Lods, false, 8, 3))));
        // In 64-bit mode an ES/CS/SS/DS override does not undo FS or GS.
        assert_eq!(operation(&[0x65, 0x26, 0xac], Bits64), Ok((3, 1, string(StringOp::Lods, false, 8, 5))));
        assert_eq!(operation(&[0x65, 0x26, 0xac], Bits32), Ok((3, 1, string(StringOp::Lods, false, 4, 0))));
        assert_eq!(decode(&[0xf0, 0xa5], Bits64), Err(DecodeError::Invalid));
    }

    #[test]
    fn what_is_not_emulated_says_so() {
        assert_eq!(decode(&[0x0f, 0x01, 0xd9], Bits64), Err(DecodeError::Unsupported { opcode: 0x01 }));
        assert_eq!(decode(&[0xa7], Bits64), Err(DecodeError::Unsupported { opcode: 0xa7 }));
        assert_eq!(decode(&[0x89, 0xc0], Bits64), Err(DecodeError::NotMemory));
        assert_eq!(decode(&[0x89, 0x84, 0x8b], Bits64), Err(DecodeError::Truncated));
        assert_eq!(decode(&[], Bits64), Err(DecodeError::Truncated));
    }

    #[test]
    fn what_the_cpu_refuses_is_refused() {
        // lock mov [rax], eax; lock mov al, [moffs]; lock movzx eax, byte [rax]
        assert_eq!(decode(&[0xf0, 0x89, 0x00], Bits64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0xf0, 0xa0, 0, 0, 0, 0], Bits32), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0x66, 0xf0, 0x0f, 0xb6, 0x00], Bits16), Err(DecodeError::Invalid));
        // C6 /1 and C7 /7 (REX.R does not make /0 out of them, nor they out of /0)
        assert_eq!(decode(&[0xc6, 0x08, 0x01], Bits64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0xc7, 0x38, 1, 0, 0, 0], Bits32), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0x44, 0xc7, 0x00, 1, 0, 0, 0], Bits64).unwrap().length, 7);
    }

    #[test]
    fn a_rex_before_a_legacy_prefix_is_ignored() {
        // REX.W, 66: mov [rax], ax -- the 66 counts, the REX does not
        assert_eq!(
            decode(&[0x48, 0x66, 0x89, 0x00], Bits64),
            Ok(MmioInstruction {
                length: 4,
                size: 2,
                operation: Operation::Store { source: Operand::Register(reg(0)) }
            })
        );
        // REX, 3E: mov [rax], ah (not SPL)
        assert_eq!(
            decode(&[0x40, 0x3e, 0x88, 0x20], Bits64).unwrap().operation,
            Operation::Store { source: Operand::Register(Register { index: 0, high_byte: true }) }
        );
        // Of two REX prefixes the last counts: mov r8, [rax]
        assert_eq!(
            decode(&[0x48, 0x4c, 0x8b, 0x00], Bits64).unwrap().operation,
            Operation::Load { dest: reg(8), width: 8, sign_extend: false }
        );
    }

    #[test]
    fn string_io_operands_come_from_mode_and_prefixes() {
        use super::{decode_string_io, StringIo};
        let io = |bytes: &[u8], mode| decode_string_io(bytes, mode);
        // rep outsb in real mode: 16-bit SI/CX through DS.
        assert_eq!(io(&[0xf3, 0x6e], CodeSize::Bits16), Ok(StringIo { address_bytes: 2, segment: 3, length: 2 }));
        // 67 switches 16 <-> 32, and 64 -> 32.
        assert_eq!(io(&[0x67, 0x6e], CodeSize::Bits16).map(|s| s.address_bytes), Ok(4));
        assert_eq!(io(&[0x67, 0x6e], CodeSize::Bits32).map(|s| s.address_bytes), Ok(2));
        assert_eq!(io(&[0x67, 0x6e], CodeSize::Bits64).map(|s| s.address_bytes), Ok(4));
        assert_eq!(io(&[0x6d], CodeSize::Bits64).map(|s| s.address_bytes), Ok(8));
        // The last segment override counts; REX and 66 are part of the length.
        let fs_outsd = io(&[0x26, 0x64, 0x66, 0xf3, 0x48, 0x6f], CodeSize::Bits64);
        assert_eq!(fs_outsd, Ok(StringIo { address_bytes: 8, segment: 4, length: 6 }));
        // Not string I/O, LOCK, and bytes that run out.
        assert_eq!(io(&[0xee], CodeSize::Bits32), Err(DecodeError::Unsupported { opcode: 0xee }));
        assert_eq!(io(&[0xf0, 0x6e], CodeSize::Bits32), Err(DecodeError::Invalid));
        assert_eq!(io(&[0xf3], CodeSize::Bits32), Err(DecodeError::Truncated));
    }

    #[test]
    fn register_writes_follow_cpu_rules() {
        let old = 0x1122_3344_5566_7788;
        assert_eq!(merge_register(old, 0xaa, 1, false), 0x1122_3344_5566_77aa);
        assert_eq!(merge_register(old, 0xaa, 1, true), 0x1122_3344_5566_aa88);
        assert_eq!(merge_register(old, 0xbbcc, 2, false), 0x1122_3344_5566_bbcc);
        assert_eq!(merge_register(old, 0xdead_beef, 4, false), 0xdead_beef);
        assert_eq!(merge_register(old, 7, 8, false), 7);
    }
}
