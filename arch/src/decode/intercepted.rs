//! The instructions an SVM VMM intercepts and must step over itself, and the
//! control-register accesses among them it must decode itself, when the CPU
//! does not do it: without NRIP save (QEMU's TCG, older AMD parts) the VMCB
//! has no next RIP, and without decode assists no CR number or register. The
//! VMM fetches up to 15 bytes at CS:RIP and asks here.
//!
//! These are called after the CPU has intercepted the instruction, so the
//! bytes were a valid instruction when it ran. They need not still be (another
//! vCPU may have rewritten them): bytes the CPU would refuse are `Invalid`, and
//! bytes that are some other instruction `Unsupported`, never a guess.
//!
//! One decoder (`classify`) serves both entry points, so the length of a
//! control-register access is found in one place:
//!
//! - `intercepted_length`: the length of any instruction of the list below.
//! - `decode_cr_access`: MOV to/from CRn, CLTS and LMSW as one enum, because an
//!   SVM CR0-write intercept is taken by all three and its handler must know
//!   which it has (and a CR3/CR4/CR8 handler must see that it has a MOV).

// Every value here comes from a hostile guest: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

use super::{CodeSize, Cursor, DecodeError, Prefixes, MAX_LENGTH};

/// MOV to CRn (0F 22 /r) or MOV from CRn (0F 20 /r).
///
/// The general register is used 64 bits wide in 64-bit mode and 32 bits wide
/// otherwise, whatever the operand-size prefixes say: a value moved to a CR
/// outside 64-bit mode is the register's low half, and one moved from a CR
/// is written zero-extended (as `merge_register` with width 4 does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovCr {
    /// 0, 2, 3, 4 or 8; CR8 by REX.R in 64-bit mode or by AMD's LOCK MOV CR0
    /// in any mode. No other CR exists (the CPU raises #UD).
    pub cr: u8,
    /// 0 = RAX ... 15 = R15 (the `Register::index` numbering); 8..15 only with
    /// REX.B in 64-bit mode.
    pub gpr: u8,
    /// MOV to CRn (a write of the CR) rather than from it.
    pub to_cr: bool,
    pub length: u8,
}

/// An instruction that reads or writes a control register. SVM's CR0-write
/// intercept (and the selective one) is taken by MOV to CR0, CLTS and LMSW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrInstruction {
    Mov(MovCr),
    /// CLTS (0F 06): clears CR0.TS.
    Clts {
        length: u8,
    },
    /// LMSW from a register (0F 01 /6, ModRM.mod = 3): loads CR0 bits 3:0
    /// (PE, MP, EM, TS) from the low 16 bits of `gpr`, and cannot clear PE.
    /// LMSW from memory is `Unsupported`.
    Lmsw {
        gpr: u8,
        length: u8,
    },
}

impl CrInstruction {
    pub fn length(self) -> u8 {
        match self {
            CrInstruction::Mov(m) => m.length,
            CrInstruction::Clts { length } | CrInstruction::Lmsw { length, .. } => length,
        }
    }
}

/// The length of the instruction at the start of `bytes` (fetched at the
/// guest's CS:RIP, at most 15 of them looked at), when it is one that SVM
/// intercepts and the VMM steps over:
///
/// | instruction | bytes | notes |
/// |---|---|---|
/// | HLT | F4 | |
/// | PAUSE | F3 90 | NOP with F3 |
/// | CPUID, RDMSR, WRMSR, RDPMC | 0F A2, 0F 32, 0F 30, 0F 33 | |
/// | INVD, WBINVD | 0F 08, 0F 09 | F3 0F 09 is WBNOINVD, which the WBINVD intercept also takes |
/// | VMMCALL | 0F 01 D9 | F2/F3 0F 01 D9 is VMGEXIT, a REP VMMCALL: outside an SEV-ES guest it exits as VMMCALL |
/// | VMCALL, XSETBV | 0F 01 C1, 0F 01 D1 | no 66/F2/F3 |
/// | MONITOR, MWAIT | 0F 01 C8, 0F 01 C9 | no 66/F2/F3; MONITORX, MWAITX (0F 01 FA, FB) too, which the same intercepts take |
/// | MOV CR, CLTS, LMSW reg | 0F 20, 0F 22, 0F 06, 0F 01 /6 | as `decode_cr_access` |
///
/// Legacy prefixes (66, 67, F0, F2, F3, segment overrides) and a REX prefix
/// (64-bit mode only) count in the length, however many; a REX that a legacy
/// prefix follows counts in the length but not in the decoding, as on the CPU.
///
/// Errors: `Truncated` if `bytes` ends (under 15 of them) before the
/// instruction does; `Invalid` for what the CPU would refuse: a length over 15
/// (#GP), LOCK on anything but MOV CR (#UD), a 66/F2/F3 where none is allowed;
/// `Unsupported` for any other instruction, with its opcode byte (the one after
/// 0F for two-byte opcodes).
pub fn intercepted_length(bytes: &[u8], mode: CodeSize) -> Result<u8, DecodeError> {
    classify(bytes, mode).map(|i| match i {
        Intercepted::Other { length, .. } => length,
        Intercepted::Cr(cr) => cr.length(),
    })
}

/// Decodes the control-register access at the start of `bytes`: MOV to/from
/// CRn, CLTS, or LMSW from a register. ModRM.mod of a MOV CR is ignored (the
/// CPU treats every form as a register form); ModRM.reg is the CR, plus 8 with
/// REX.R or (AMD) with LOCK; ModRM.rm the register, plus 8 with REX.B.
///
/// Errors as `intercepted_length`, and also: `Invalid` for a CR other than 0,
/// 2, 3, 4 and 8 or LOCK together with REX.R (#UD); `Unsupported` for LMSW
/// from memory and for every other instruction (those `intercepted_length`
/// accepts included).
pub fn decode_cr_access(bytes: &[u8], mode: CodeSize) -> Result<CrInstruction, DecodeError> {
    match classify(bytes, mode)? {
        Intercepted::Cr(cr) => Ok(cr),
        Intercepted::Other { opcode, .. } => Err(DecodeError::Unsupported { opcode }),
    }
}

enum Intercepted {
    /// Any of the others, with its opcode byte (after 0F for two-byte ones).
    Other {
        opcode: u8,
        length: u8,
    },
    Cr(CrInstruction),
}

/// The one decoder behind both entry points.
fn classify(bytes: &[u8], mode: CodeSize) -> Result<Intercepted, DecodeError> {
    let mut c = Cursor::new(bytes);
    match classify_at(&mut c, mode) {
        // The cursor stops at 15 bytes: running past them when there were that
        // many is an instruction the CPU refuses for its length, not a short fetch.
        Err(DecodeError::Truncated) if bytes.len() >= MAX_LENGTH => Err(DecodeError::Invalid),
        result => result,
    }
}

fn classify_at(c: &mut Cursor<'_>, mode: CodeSize) -> Result<Intercepted, DecodeError> {
    let (p, first) = Prefixes::read(c, mode)?;
    let (rex_r, rex_b) = (p.rex & 4 != 0, p.rex & 1 != 0);
    // LOCK is #UD on all of these but MOV CR (AMD's CR8), which checks it itself.
    let unlocked = || if p.lock { Err(DecodeError::Invalid) } else { Ok(()) };
    // Forms the manuals mark NP: #UD with 66, F2 or F3.
    let no_mandatory_prefix = || if p.operand16 || p.repeat != 0 { Err(DecodeError::Invalid) } else { Ok(()) };

    if first == 0xf4 {
        unlocked()?;
        return Ok(Intercepted::Other { opcode: first, length: c.at as u8 });
    }
    // PAUSE is NOP with F3 (the last of F2/F3 counts), REX.B or not (as iced
    // decodes it; XCHG r8, rAX would be as long anyway).
    if first == 0x90 && p.repeat == 0xf3 {
        unlocked()?;
        return Ok(Intercepted::Other { opcode: first, length: c.at as u8 });
    }
    if first != 0x0f {
        return Err(DecodeError::Unsupported { opcode: first });
    }
    let opcode = c.next()?;
    let other = |c: &Cursor<'_>| Ok(Intercepted::Other { opcode, length: c.at as u8 });
    match opcode {
        // CPUID, RDMSR, WRMSR, RDPMC, INVD, WBINVD (F3: WBNOINVD).
        0xa2 | 0x32 | 0x30 | 0x33 | 0x08 | 0x09 => {
            unlocked()?;
            other(c)
        }
        0x06 => {
            unlocked()?;
            Ok(Intercepted::Cr(CrInstruction::Clts { length: c.at as u8 }))
        }
        0x20 | 0x22 => {
            let modrm = c.next()?;
            let mut cr = ((modrm >> 3) & 7) | if rex_r { 8 } else { 0 };
            if p.lock {
                // AMD's alternative encoding of CR8, for modes without REX:
                // LOCK adds 8 to ModRM.reg; it and REX.R together are #UD.
                if rex_r {
                    return Err(DecodeError::Invalid);
                }
                cr |= 8;
            }
            if !matches!(cr, 0 | 2 | 3 | 4 | 8) {
                return Err(DecodeError::Invalid);
            }
            let gpr = (modrm & 7) | if rex_b { 8 } else { 0 };
            Ok(Intercepted::Cr(CrInstruction::Mov(MovCr { cr, gpr, to_cr: opcode == 0x22, length: c.at as u8 })))
        }
        0x01 => {
            let modrm = c.next()?;
            match modrm {
                // VMMCALL; with F2 or F3 it is VMGEXIT, and 66 does not change it.
                0xd9 => {
                    unlocked()?;
                    other(c)
                }
                // F3 0F 01 FA is MCOMMIT, another instruction.
                0xfa if p.repeat == 0xf3 => Err(DecodeError::Unsupported { opcode }),
                // VMCALL, MONITOR, MWAIT, XSETBV, MONITORX, MWAITX.
                0xc1 | 0xc8 | 0xc9 | 0xd1 | 0xfa | 0xfb => {
                    unlocked()?;
                    no_mandatory_prefix()?;
                    other(c)
                }
                // LMSW (/6) from a register; from memory it would need the
                // guest's memory and its addressing, which Basalt does not do here.
                0xf0..=0xf7 => {
                    unlocked()?;
                    let gpr = (modrm & 7) | if rex_b { 8 } else { 0 };
                    Ok(Intercepted::Cr(CrInstruction::Lmsw { gpr, length: c.at as u8 }))
                }
                _ => Err(DecodeError::Unsupported { opcode }),
            }
        }
        _ => Err(DecodeError::Unsupported { opcode }),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;
    use CodeSize::*;
    use DecodeError::*;

    const MODES: [CodeSize; 3] = [Bits16, Bits32, Bits64];

    /// Every instruction `intercepted_length` claims, without prefixes.
    const PLAIN: [&[u8]; 17] = [
        &[0xf4],
        &[0xf3, 0x90],
        &[0x0f, 0xa2],
        &[0x0f, 0x32],
        &[0x0f, 0x30],
        &[0x0f, 0x33],
        &[0x0f, 0x08],
        &[0x0f, 0x09],
        &[0x0f, 0x01, 0xd9],
        &[0x0f, 0x01, 0xc1],
        &[0x0f, 0x01, 0xd1],
        &[0x0f, 0x01, 0xc8],
        &[0x0f, 0x01, 0xc9],
        &[0x0f, 0x01, 0xfa],
        &[0x0f, 0x01, 0xfb],
        &[0x0f, 0x06],
        &[0x0f, 0x01, 0xf0],
    ];

    fn mov(cr: u8, gpr: u8, to_cr: bool, length: u8) -> Result<CrInstruction, DecodeError> {
        Ok(CrInstruction::Mov(MovCr { cr, gpr, to_cr, length }))
    }

    fn with(prefixes: &[u8], instruction: &[u8]) -> Vec<u8> {
        [prefixes, instruction].concat()
    }

    #[test]
    fn each_instruction_in_each_mode() {
        for mode in MODES {
            for bytes in PLAIN {
                assert_eq!(intercepted_length(bytes, mode), Ok(bytes.len() as u8), "{bytes:02x?} {mode:?}");
                // What follows the instruction changes nothing.
                let longer = with(bytes, &[0x0f; 16]);
                assert_eq!(intercepted_length(&longer, mode), Ok(bytes.len() as u8), "{bytes:02x?} {mode:?}");
            }
        }
    }

    #[test]
    fn prefixes_count_in_the_length() {
        for mode in MODES {
            // Prefixes every one of them takes: 67 and the segment overrides.
            for bytes in PLAIN {
                let prefixed = with(&[0x67, 0x2e, 0x26, 0x36, 0x3e, 0x64, 0x65], bytes);
                assert_eq!(intercepted_length(&prefixed, mode), Ok(prefixed.len() as u8), "{bytes:02x?} {mode:?}");
            }
            // 66, F2, F3 where they change nothing (F3 0F 09 is WBNOINVD, F3 0F 01 D9 VMGEXIT).
            for bytes in [&[0xf4][..], &[0x0f, 0xa2], &[0x0f, 0x30], &[0x0f, 0x09], &[0x0f, 0x01, 0xd9], &[0x0f, 0x06]]
            {
                for prefix in [0x66, 0xf2, 0xf3] {
                    let prefixed = with(&[prefix], bytes);
                    assert_eq!(intercepted_length(&prefixed, mode), Ok(prefixed.len() as u8), "{prefixed:02x?}");
                }
            }
            // mov cr0, eax with 66 67 F3
            assert_eq!(intercepted_length(&[0x66, 0x67, 0xf3, 0x0f, 0x22, 0xc0], mode), Ok(6));
            // lmsw ax with 66
            assert_eq!(intercepted_length(&[0x66, 0x0f, 0x01, 0xf0], mode), Ok(4));
        }
        // Fourteen prefixes and HLT make 15 bytes: accepted.
        let fifteen = with(&[0x2e; 14], &[0xf4]);
        assert_eq!(intercepted_length(&fifteen, Bits32), Ok(15));
    }

    #[test]
    fn rex_counts_in_64_bit_mode_only() {
        // rex.w cpuid; rex.wrxb wrmsr; vmmcall with REX; REX then 66 (the REX is ignored but counts)
        assert_eq!(intercepted_length(&[0x48, 0x0f, 0xa2], Bits64), Ok(3));
        assert_eq!(intercepted_length(&[0x4f, 0x0f, 0x30], Bits64), Ok(3));
        assert_eq!(intercepted_length(&[0x41, 0x0f, 0x01, 0xd9], Bits64), Ok(4));
        assert_eq!(intercepted_length(&[0x48, 0x66, 0x0f, 0xa2], Bits64), Ok(4));
        assert_eq!(intercepted_length(&[0x66, 0x48, 0xf4], Bits64), Ok(3));
        // Outside 64-bit mode 40..4F are INC and DEC.
        for mode in [Bits16, Bits32] {
            assert_eq!(intercepted_length(&[0x48, 0x0f, 0xa2], mode), Err(Unsupported { opcode: 0x48 }));
            assert_eq!(decode_cr_access(&[0x44, 0x0f, 0x20, 0xc0], mode), Err(Unsupported { opcode: 0x44 }));
        }
    }

    #[test]
    fn what_the_cpu_refuses_is_invalid() {
        for mode in MODES {
            // LOCK on anything but MOV CR.
            for bytes in PLAIN {
                assert_eq!(intercepted_length(&with(&[0xf0], bytes), mode), Err(Invalid), "lock {bytes:02x?}");
            }
            // 66, F2 or F3 on the NP forms.
            for modrm in [0xc1, 0xc8, 0xc9, 0xd1, 0xfa, 0xfb] {
                for prefix in [0x66, 0xf2, 0xf3] {
                    let bytes = [prefix, 0x0f, 0x01, modrm];
                    let expected = if (prefix, modrm) == (0xf3, 0xfa) { Unsupported { opcode: 1 } } else { Invalid };
                    assert_eq!(intercepted_length(&bytes, mode), Err(expected), "{bytes:02x?}");
                }
            }
            // An F2 before the F3 makes MCOMMIT all the same; an F3 before an F2 an NP violation.
            assert_eq!(intercepted_length(&[0xf2, 0xf3, 0x0f, 0x01, 0xfa], mode), Err(Unsupported { opcode: 1 }));
            assert_eq!(intercepted_length(&[0xf3, 0xf2, 0x0f, 0x01, 0xfa], mode), Err(Invalid));
        }
        // Fifteen prefixes and HLT make 16 bytes: #GP, whatever follows.
        let sixteen = with(&[0x66; 15], &[0xf4]);
        assert_eq!(intercepted_length(&sixteen, Bits64), Err(Invalid));
        assert_eq!(intercepted_length(&sixteen[..15], Bits64), Err(Invalid));
        assert_eq!(decode_cr_access(&with(&[0x3e; 13], &[0x0f, 0x20, 0xc0]), Bits32), Err(Invalid));
        assert_eq!(decode_cr_access(&with(&[0x3e; 12], &[0x0f, 0x20, 0xc0]), Bits32), mov(0, 0, false, 15));
    }

    #[test]
    fn short_fetches_are_truncated() {
        for mode in MODES {
            for bytes in PLAIN {
                for len in 0..bytes.len() {
                    assert_eq!(intercepted_length(&bytes[..len], mode), Err(Truncated), "{bytes:02x?}[..{len}]");
                }
            }
            assert_eq!(decode_cr_access(&[0x0f, 0x22], mode), Err(Truncated));
            assert_eq!(decode_cr_access(&[0xf0, 0x66], mode), Err(Truncated));
            assert_eq!(intercepted_length(&[0x2e; 14], mode), Err(Truncated));
        }
    }

    #[test]
    fn other_instructions_are_unsupported() {
        for mode in MODES {
            // NOP, INT3, MOV DR, RDTSC, SYSCALL, and 0F 01 neighbours: VMRUN,
            // VMLOAD, XGETBV, RDTSCP, SMSW, LMSW from memory.
            let cases: [(&[u8], u8); 10] = [
                (&[0x90], 0x90),
                (&[0xcc], 0xcc),
                (&[0x0f, 0x21, 0xc0], 0x21),
                (&[0x0f, 0x31], 0x31),
                (&[0x0f, 0x05], 0x05),
                (&[0x0f, 0x01, 0xd8], 0x01),
                (&[0x0f, 0x01, 0xda], 0x01),
                (&[0x0f, 0x01, 0xd0], 0x01),
                (&[0x0f, 0x01, 0xe0], 0x01),
                (&[0x0f, 0x01, 0x30], 0x01),
            ];
            for (bytes, opcode) in cases {
                assert_eq!(intercepted_length(bytes, mode), Err(Unsupported { opcode }), "{bytes:02x?}");
                assert_eq!(decode_cr_access(bytes, mode), Err(Unsupported { opcode }), "{bytes:02x?}");
                // LOCK does not make another instruction one of these.
                let locked = with(&[0xf0], bytes);
                assert_eq!(intercepted_length(&locked, mode), Err(Unsupported { opcode }), "{locked:02x?}");
            }
            // Instructions intercepted_length knows are not CR accesses.
            assert_eq!(decode_cr_access(&[0x0f, 0xa2], mode), Err(Unsupported { opcode: 0xa2 }));
            assert_eq!(decode_cr_access(&[0xf4], mode), Err(Unsupported { opcode: 0xf4 }));
            assert_eq!(decode_cr_access(&[0x0f, 0x01, 0xd9], mode), Err(Unsupported { opcode: 0x01 }));
            assert_eq!(decode_cr_access(&[], mode), Err(Truncated));
        }
    }

    #[test]
    fn mov_cr_in_each_mode() {
        for mode in MODES {
            // mov cr3, ebx / rbx; mov eax, cr0; mov esp, cr4
            assert_eq!(decode_cr_access(&[0x0f, 0x22, 0xdb], mode), mov(3, 3, true, 3));
            assert_eq!(decode_cr_access(&[0x0f, 0x20, 0xc0], mode), mov(0, 0, false, 3));
            assert_eq!(decode_cr_access(&[0x0f, 0x20, 0xe4], mode), mov(4, 4, false, 3));
            // ModRM.mod is ignored: 00, 01, 10 name registers too, with no SIB or displacement.
            assert_eq!(decode_cr_access(&[0x0f, 0x22, 0x04, 0x25], mode), mov(0, 4, true, 3));
            assert_eq!(decode_cr_access(&[0x0f, 0x22, 0x55], mode), mov(2, 5, true, 3));
            assert_eq!(decode_cr_access(&[0x0f, 0x20, 0x9f], mode), mov(3, 7, false, 3));
            // Operand-size and other prefixes change nothing but the length.
            assert_eq!(decode_cr_access(&[0x66, 0x67, 0xf3, 0x0f, 0x22, 0xe1], mode), mov(4, 1, true, 6));
            // AMD: LOCK MOV CR0 is CR8, in any mode.
            assert_eq!(decode_cr_access(&[0xf0, 0x0f, 0x22, 0xc2], mode), mov(8, 2, true, 4));
            assert_eq!(decode_cr_access(&[0x2e, 0xf0, 0x0f, 0x20, 0xc6], mode), mov(8, 6, false, 5));
            // CR1, CR5..CR7 (and LOCK with them: CR9, CR13..15) do not exist.
            for reg in [1, 5, 6, 7] {
                let modrm = 0xc0 | reg << 3;
                assert_eq!(decode_cr_access(&[0x0f, 0x22, modrm], mode), Err(Invalid), "CR{reg}");
                assert_eq!(decode_cr_access(&[0x0f, 0x20, modrm], mode), Err(Invalid), "CR{reg}");
                assert_eq!(decode_cr_access(&[0xf0, 0x0f, 0x20, modrm], mode), Err(Invalid), "CR{}", reg + 8);
            }
            // LOCK with CR2..CR4 would be CR10..CR12.
            assert_eq!(decode_cr_access(&[0xf0, 0x0f, 0x22, 0xd8], mode), Err(Invalid));
            assert_eq!(intercepted_length(&[0xf0, 0x0f, 0x22, 0xd8], mode), Err(Invalid));
        }
    }

    #[test]
    fn mov_cr_with_rex() {
        // mov cr8, rax; mov r15, cr8; mov cr3, r9 (REX.W changes nothing)
        assert_eq!(decode_cr_access(&[0x44, 0x0f, 0x22, 0xc0], Bits64), mov(8, 0, true, 4));
        assert_eq!(decode_cr_access(&[0x45, 0x0f, 0x20, 0xc7], Bits64), mov(8, 15, false, 4));
        assert_eq!(decode_cr_access(&[0x49, 0x0f, 0x22, 0xd9], Bits64), mov(3, 9, true, 4));
        // REX.R with any other CR is CR9..CR15.
        assert_eq!(decode_cr_access(&[0x44, 0x0f, 0x22, 0xd8], Bits64), Err(Invalid));
        // LOCK with REX.R is #UD, even for what would be CR8 either way; LOCK
        // with REX.B is LOCK's CR8 and R8.
        assert_eq!(decode_cr_access(&[0xf0, 0x44, 0x0f, 0x22, 0xc0], Bits64), Err(Invalid));
        assert_eq!(decode_cr_access(&[0xf0, 0x41, 0x0f, 0x22, 0xc0], Bits64), mov(8, 8, true, 5));
        // A REX that a legacy prefix follows is ignored: CR0, RAX.
        assert_eq!(decode_cr_access(&[0x4d, 0x66, 0x0f, 0x22, 0xc0], Bits64), mov(0, 0, true, 5));
        // ... so LOCK with it is plain LOCK's CR8.
        assert_eq!(decode_cr_access(&[0x44, 0xf0, 0x0f, 0x20, 0xc0], Bits64), mov(8, 0, false, 5));
        // Of two REX prefixes the last counts.
        assert_eq!(decode_cr_access(&[0x44, 0x41, 0x0f, 0x22, 0xc0], Bits64), mov(0, 8, true, 5));
    }

    #[test]
    fn clts_and_lmsw() {
        for mode in MODES {
            assert_eq!(decode_cr_access(&[0x0f, 0x06], mode), Ok(CrInstruction::Clts { length: 2 }));
            assert_eq!(decode_cr_access(&[0x66, 0x0f, 0x06], mode), Ok(CrInstruction::Clts { length: 3 }));
            assert_eq!(decode_cr_access(&[0xf0, 0x0f, 0x06], mode), Err(Invalid));
            // lmsw ax; lmsw si; 66 lmsw dx
            assert_eq!(decode_cr_access(&[0x0f, 0x01, 0xf0], mode), Ok(CrInstruction::Lmsw { gpr: 0, length: 3 }));
            assert_eq!(decode_cr_access(&[0x0f, 0x01, 0xf6], mode), Ok(CrInstruction::Lmsw { gpr: 6, length: 3 }));
            assert_eq!(
                decode_cr_access(&[0x66, 0x0f, 0x01, 0xf2], mode),
                Ok(CrInstruction::Lmsw { gpr: 2, length: 4 })
            );
            assert_eq!(decode_cr_access(&[0xf0, 0x0f, 0x01, 0xf0], mode), Err(Invalid));
            // lmsw [rax], lmsw [rsi+8]: memory forms
            assert_eq!(decode_cr_access(&[0x0f, 0x01, 0x30], mode), Err(Unsupported { opcode: 1 }));
            assert_eq!(decode_cr_access(&[0x0f, 0x01, 0x76, 0x08], mode), Err(Unsupported { opcode: 1 }));
        }
        // lmsw r11w
        assert_eq!(decode_cr_access(&[0x41, 0x0f, 0x01, 0xf3], Bits64), Ok(CrInstruction::Lmsw { gpr: 11, length: 4 }));
    }

    #[test]
    fn both_entry_points_agree_on_cr_accesses() {
        let cases: [&[u8]; 5] = [
            &[0x0f, 0x22, 0xd8],
            &[0xf0, 0x0f, 0x20, 0xc0],
            &[0x48, 0x0f, 0x20, 0xe0],
            &[0x26, 0x0f, 0x06],
            &[0x66, 0x0f, 0x01, 0xf1],
        ];
        for bytes in cases {
            let cr = decode_cr_access(bytes, Bits64).unwrap();
            assert_eq!(intercepted_length(bytes, Bits64), Ok(cr.length()));
            assert_eq!(cr.length() as usize, bytes.len());
        }
    }
}
