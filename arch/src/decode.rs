//! Decoding the guest instruction behind an MMIO exit. EPT violations and nested page faults say which
//! address was touched but not how; this finds the access size, direction, the
//! register or immediate involved and the instruction's length, for the MOV
//! forms that device drivers use (MOV r/m<->r, MOV r/m,imm, MOVZX, MOV moffs).
//!
//! The instructions an SVM VMM intercepts and must step over, or whose control
//! register it must find, when the CPU does not say (no NRIP save, no decode
//! assists) are decoded in `intercepted`, with the prefixes read here.

// Every value here comes from a hostile guest: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

mod intercepted;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Load `size` bytes and write them, zero-extended to `width` bytes, to `dest`.
    Read { dest: Register, width: u8 },
    /// Store the low `size` bytes of a register.
    WriteRegister { source: Register },
    /// Store an immediate.
    WriteImmediate { value: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioInstruction {
    pub length: u8,
    /// Bytes accessed in memory: 1, 2, 4 or 8.
    pub size: u8,
    pub access: Access,
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
    /// Bytes the CPU would refuse: with #UD (LOCK on a MOV, C6/C7 with
    /// ModRM.reg other than 0, a CR that does not exist) or, as the decoders
    /// of intercepted instructions see it, with #GP for a length over 15. The
    /// exit cannot have come from them as they stand, so emulating them would
    /// do what the guest's CPU never would.
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
    let address_bytes = match (mode, p.address_override) {
        (CodeSize::Bits16, false) | (CodeSize::Bits32, true) => 2,
        (CodeSize::Bits32, false) | (CodeSize::Bits16, true) | (CodeSize::Bits64, true) => 4,
        (CodeSize::Bits64, false) => 8,
    };
    const DS: u8 = 3;
    Ok(StringIo { address_bytes, segment: p.segment.unwrap_or(DS), length: c.at as u8 })
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
    /// segment number (ES = 0 … GS = 5).
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
                0x26 => p.segment = Some(0),
                0x2e => p.segment = Some(1),
                0x36 => p.segment = Some(2),
                0x3e => p.segment = Some(3),
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

pub fn decode(bytes: &[u8], mode: CodeSize) -> Result<MmioInstruction, DecodeError> {
    let mut c = Cursor::new(bytes);
    let (Prefixes { operand16, address_override, lock, rex, .. }, mut opcode) = Prefixes::read(&mut c, mode)?;
    let rex_w = rex & 8 != 0;
    let operand_size: u8 = match (mode, operand16, rex_w) {
        (CodeSize::Bits64, _, true) => 8,
        (CodeSize::Bits16, false, _) | (CodeSize::Bits32 | CodeSize::Bits64, true, _) => 2,
        _ => 4,
    };
    let address_size: u8 = match (mode, address_override) {
        (CodeSize::Bits16, false) | (CodeSize::Bits32, true) => 2,
        (CodeSize::Bits64, false) => 8,
        _ => 4,
    };
    let register = |index: u8, byte: bool| {
        if byte && rex == 0 && (4..8).contains(&index) {
            Register { index: index & 3, high_byte: true }
        } else {
            Register { index, high_byte: false }
        }
    };

    let two_byte = opcode == 0x0f;
    if two_byte {
        opcode = c.next()?;
    }
    let supported = if two_byte {
        matches!(opcode, 0xb6 | 0xb7)
    } else {
        matches!(opcode, 0x88..=0x8b | 0xa0..=0xa3 | 0xc6 | 0xc7)
    };
    if !supported {
        return Err(DecodeError::Unsupported { opcode });
    }
    // None of these MOVs can be locked.
    if lock {
        return Err(DecodeError::Invalid);
    }

    // MOV AL/eAX <-> moffs: no ModRM, an address-size offset.
    if !two_byte && (0xa0..=0xa3).contains(&opcode) {
        c.skip(address_size as usize)?;
        let size = if opcode & 1 == 0 { 1 } else { operand_size };
        let rax = Register { index: 0, high_byte: false };
        let access =
            if opcode < 0xa2 { Access::Read { dest: rax, width: size } } else { Access::WriteRegister { source: rax } };
        return Ok(MmioInstruction { length: c.at as u8, size, access });
    }

    let modrm = c.next()?;
    let (md, reg, rm) = (modrm >> 6, ((modrm >> 3) & 7) | ((rex & 4) << 1), modrm & 7);
    if md == 3 {
        return Err(DecodeError::NotMemory);
    }
    // In C6/C7 ModRM.reg is part of the opcode, and only /0 is a MOV.
    if !two_byte && matches!(opcode, 0xc6 | 0xc7) && modrm & 0x38 != 0 {
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
    let (size, access) = match (two_byte, opcode) {
        (false, 0x88) => (1, Access::WriteRegister { source: register(reg, true) }),
        (false, 0x89) => (operand_size, Access::WriteRegister { source: register(reg, false) }),
        (false, 0x8a) => (1, Access::Read { dest: register(reg, true), width: 1 }),
        (false, 0x8b) => (operand_size, Access::Read { dest: register(reg, false), width: operand_size }),
        (false, 0xc6) => (1, Access::WriteImmediate { value: c.immediate(1)? }),
        (false, 0xc7) => {
            let n = operand_size.min(4) as usize;
            let mut value = c.immediate(n)?;
            if operand_size == 8 {
                value = value as i32 as i64 as u64;
            }
            (operand_size, Access::WriteImmediate { value })
        }
        (true, 0xb6) => (1, Access::Read { dest: register(reg, false), width: operand_size }),
        (true, _) => (2, Access::Read { dest: register(reg, false), width: operand_size }),
        _ => unreachable!("checked above"),
    };
    Ok(MmioInstruction { length: c.at as u8, size, access })
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
            Ok(MmioInstruction { length: 3, size: 4, access: Access::WriteRegister { source: reg(0) } })
        );
        // mov rcx, qword [rax]
        assert_eq!(
            decode(&[0x48, 0x8b, 0x08], Bits64),
            Ok(MmioInstruction { length: 3, size: 8, access: Access::Read { dest: reg(1), width: 8 } })
        );
        // mov r9d, [rip+0x1234]
        assert_eq!(
            decode(&[0x44, 0x8b, 0x0d, 0x34, 0x12, 0, 0], Bits64).unwrap(),
            MmioInstruction { length: 7, size: 4, access: Access::Read { dest: reg(9), width: 4 } }
        );
        // mov dword [rbx+rcx*4+0x100], 0xdeadbeef
        assert_eq!(
            decode(&[0xc7, 0x84, 0x8b, 0, 1, 0, 0, 0xef, 0xbe, 0xad, 0xde], Bits64),
            Ok(MmioInstruction { length: 11, size: 4, access: Access::WriteImmediate { value: 0xdead_beef } })
        );
        // mov qword [rax], -1 (imm32 sign-extended)
        assert_eq!(
            decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], Bits64).unwrap().access,
            Access::WriteImmediate { value: u64::MAX }
        );
        // movzx eax, word [rdx]
        assert_eq!(
            decode(&[0x0f, 0xb7, 0x02], Bits64),
            Ok(MmioInstruction { length: 3, size: 2, access: Access::Read { dest: reg(0), width: 4 } })
        );
        // mov word [rax], cx
        assert_eq!(decode(&[0x66, 0x89, 0x08], Bits64).unwrap().size, 2);
    }

    #[test]
    fn byte_registers_with_and_without_rex() {
        // mov [rax], ah
        assert_eq!(
            decode(&[0x88, 0x20], Bits64).unwrap().access,
            Access::WriteRegister { source: Register { index: 0, high_byte: true } }
        );
        // mov [rax], spl (REX makes 4 mean SPL, not AH)
        assert_eq!(decode(&[0x40, 0x88, 0x20], Bits64).unwrap().access, Access::WriteRegister { source: reg(4) });
        // mov r8b, [rax]
        assert_eq!(decode(&[0x44, 0x8a, 0x00], Bits64).unwrap().access, Access::Read { dest: reg(8), width: 1 });
    }

    #[test]
    fn sixteen_and_thirty_two_bit_addressing() {
        // real mode: mov [0x1234], ax  (mod 00 rm 110 -> disp16)
        assert_eq!(
            decode(&[0x89, 0x06, 0x34, 0x12], Bits16),
            Ok(MmioInstruction { length: 4, size: 2, access: Access::WriteRegister { source: reg(0) } })
        );
        // real mode with 0x66: mov eax, [bx+si+0x10]
        assert_eq!(
            decode(&[0x66, 0x8b, 0x40, 0x10], Bits16).unwrap(),
            MmioInstruction { length: 4, size: 4, access: Access::Read { dest: reg(0), width: 4 } }
        );
        // protected mode: mov byte [0xfee000b0], 0
        assert_eq!(
            decode(&[0xc6, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0x00], Bits32).unwrap(),
            MmioInstruction { length: 7, size: 1, access: Access::WriteImmediate { value: 0 } }
        );
        // mov eax, [moffs32]
        assert_eq!(
            decode(&[0xa1, 0, 0, 0xc0, 0xfe], Bits32).unwrap(),
            MmioInstruction { length: 5, size: 4, access: Access::Read { dest: reg(0), width: 4 } }
        );
        // 64-bit moffs has an 8-byte offset
        assert_eq!(decode(&[0xa2, 0, 0, 0, 0, 0, 0, 0, 0], Bits64).unwrap().length, 9);
    }

    #[test]
    fn what_is_not_emulated_says_so() {
        assert_eq!(decode(&[0x0f, 0x01, 0xd9], Bits64), Err(DecodeError::Unsupported { opcode: 0x01 }));
        assert_eq!(decode(&[0xa5], Bits64), Err(DecodeError::Unsupported { opcode: 0xa5 }));
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
            Ok(MmioInstruction { length: 4, size: 2, access: Access::WriteRegister { source: reg(0) } })
        );
        // REX, 3E: mov [rax], ah (not SPL)
        assert_eq!(
            decode(&[0x40, 0x3e, 0x88, 0x20], Bits64).unwrap().access,
            Access::WriteRegister { source: Register { index: 0, high_byte: true } }
        );
        // Of two REX prefixes the last counts: mov r8, [rax]
        assert_eq!(decode(&[0x48, 0x4c, 0x8b, 0x00], Bits64).unwrap().access, Access::Read { dest: reg(8), width: 8 });
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
